"""The public Python face of medsettle: load a pack and a catalogue, settle visits, explain one.

    from kernel.api import Settler
    settler = Settler.from_files()                     # shipped sample pack and catalogue
    result = settler.settle_table(visits, lines)       # Arrow tables in, Arrow table of results out
    one = settler.settle_one(visit, lines, acc, balance, mode="presettle")   # real time

One code path serves both: a real-time call is a batch of one with the person's accumulators
passed in and returned.
"""
from __future__ import annotations

import msgspec

from .layout import ACC_COLS, OUT_COLS


class SetlDetail(msgspec.Struct):
    """One fund's row of a settlement (setldetail)."""
    fund_pay_type: str           # hifp, hifob, hifmi, cvlserv, maf
    inscp_scp_amt: int           # the in-scope amount the fund worked on
    crt_payb_lmt_amt: int        # remaining annual limit before this visit, -1 no cap
    fund_payamt: int             # paid
    setl_proc_info: str          # the rule and the policy version, in words


class OneResult(msgspec.Struct):
    """A settled visit, as the real-time path returns it."""
    mdtrt_id: str
    psn_no: str
    insutype: str
    year: int                    # calendar year of the governing date: the accumulator year
    status: str                  # a key of layout.STATUS
    reason: str
    policy_version: str
    amounts: dict[str, int]      # every layout.OUT_COLS name -> fen (bp for pool_prop_selfpay)
    flags: int
    acc_after: dict[str, int]    # layout.ACC_COLS name -> value after this visit
    balance_after: int
    setldetail: list[SetlDetail]


__all__ = ["Settler", "OneResult", "SetlDetail", "BatchResult", "FileResult", "ACC_COLS", "OUT_COLS"]


# --- implementation ------------------------------------------------------------------------------

import contextlib
import functools
import os
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import _pool, layout
from ._chain import settle_one as _settle_one
from .adapter import (_GOVERNING_FIELD, OneVisitAdapter, Prepared, VisitBatch, empty_large, prepare_for_pack,
                      prepare_visits)
from .catalogue import Catalogue, load_catalogue
from .chunks import DEFAULT_CHUNK_ROWS
from .compile import compile_pack
from .detail import DetailBuilder, fen, limit_text, pct  # noqa: F401  (fen, pct: the house formats)
from .errors import InputError
from .policy import Pack

_STATUS_NAMES = {v: k for k, v in layout.STATUS.items()}
# a real-time result's reason by status (EXCLUDED: the excluded cause, written per visit)
_EXCLUDED = layout.STATUS["EXCLUDED"]
_REASONS = {layout.STATUS["REFUSED"]: "pending_cause", layout.STATUS["PROVISIONAL"]: "pending_cause",
            layout.STATUS["NOT_COVERED"]: "not_covered"}
_N_ACC = len(ACC_COLS)
_MODES = {"settle": layout.MODE_SETTLE, "presettle": layout.MODE_PRESETTLE}

# The batch path's large numpy blocks are kept mapped between calls (kernel/_pool: first touch of
# fresh memory costs more than the settling on these VMs), up to a quarter of physical memory (a
# 10M-visit batch maps ~5 GB); kernel._pool.release() unmaps them, set_limit() changes the bound.
_pool.set_limit(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)

# Arrow's buffers the same way, with Arrow's own means: during a batch call Arrow allocates from its
# jemalloc pool, which keeps freed pages for ARROW_DECAY_MS before it returns them (the default pool
# here, mimalloc, returns them at once), so a batch right after another reuses warm pages. The
# process's default pool is restored after each call. Left alone when the user chose a pool
# (ARROW_DEFAULT_MEMORY_POOL) or this pyarrow build has no jemalloc.
ARROW_DECAY_MS = 10_000
_ARROW_POOL = None
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and "jemalloc" in pa.supported_memory_backends():
    pa.jemalloc_set_decay_ms(ARROW_DECAY_MS)
    _ARROW_POOL = pa.jemalloc_memory_pool()


class _ArrowPoolInUse:
    """Context manager: Arrow's default memory pool is _ARROW_POOL while at least one batch call,
    on any thread, is inside; the pool the process had before is restored when the last one leaves
    (a batch call ending while another runs restores nothing, so no thread ends up setting the
    process's default for good)."""

    _lock = threading.Lock()
    _users = 0
    _previous = None

    def __enter__(self):
        cls = type(self)
        with cls._lock:
            if cls._users == 0:
                cls._previous = pa.default_memory_pool()
                pa.set_memory_pool(_ARROW_POOL)
            cls._users += 1
        return self

    def __exit__(self, *exc):
        cls = type(self)
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                pa.set_memory_pool(cls._previous)
                cls._previous = None
        return False


def _pooled(method):
    """The method with numpy's allocations served by kernel._pool and Arrow's by its jemalloc pool
    (batch path only)."""
    @functools.wraps(method)
    def pooled(*args, **kwargs):
        with _pool.installed(), (_ArrowPoolInUse() if _ARROW_POOL is not None else contextlib.nullcontext()):
            return method(*args, **kwargs)
    return pooled


def shipped_pack_path(name="sample_rural") -> Path:
    return Path(str(resources.files("kernel") / "packs" / f"{name}.toml"))


def shipped_catalogue_path() -> Path:
    return Path(str(resources.files("kernel") / "data" / "catalogue.csv"))


@dataclass
class BatchResult:
    """Results in input order, each (person, scheme, year)'s accumulators and each person's account
    balance after the batch."""
    table: pa.Table
    accumulators: pa.Table
    balances: pa.Table
    detail: pa.Table | None = None   # setldetail rows (kernel.detail.DETAIL_SCHEMA), when asked for


@dataclass
class FileResult:
    """What settle_file settled: the totals the summary prints, and the state after the file."""
    visits: int
    totals: dict                 # OUT_COLS name -> sum over the visits (fen)
    statuses: dict               # status name -> visits
    accumulators: pa.Table       # as BatchResult.accumulators
    balances: pa.Table           # as BatchResult.balances
    chunks: int                  # chunks settled
    one_pass: bool               # settled in one call (a person's visits went back in time across chunks)


class _Summary:
    """Sums of every output column and visits per status, chunk after chunk."""

    def __init__(self):
        self.totals = dict.fromkeys(layout.OUT_COLS, 0)
        self.by_status = np.zeros(len(_STATUS_NAMES), np.int64)

    def add(self, out, status):
        for k, name in enumerate(layout.OUT_COLS):
            self.totals[name] += int(out[k].sum())          # int64 per chunk, Python int across chunks
        self.by_status += np.bincount(status.astype(np.int64), minlength=len(_STATUS_NAMES))

    def statuses(self) -> dict:
        return {_STATUS_NAMES[i]: int(c) for i, c in enumerate(self.by_status) if c}


class PartialParquet:
    """A Parquet file written table by table under a temporary name beside the target, renamed
    on commit: no partial output is ever left."""

    def __init__(self, path, row_group_size=1_000_000):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.row_group_size = row_group_size
        self.writer = None

    def write(self, table: pa.Table):
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table, row_group_size=self.row_group_size)

    def commit(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.tmp.replace(self.path)

    def discard(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


@dataclass
class RawSettlement:
    """The kernel's outputs for a prepared batch, in processing order (prep.order: position -> row)."""
    prep: Prepared
    out: np.ndarray              # (len(OUT_COLS), n) int64
    status: np.ndarray           # int8
    flags: np.ndarray            # int32
    acc: np.ndarray              # (slots, len(ACC_COLS)) after the batch
    balance: np.ndarray          # per person after the batch


class Settler:
    """A compiled pack and a catalogue, ready to settle visits."""

    def __init__(self, pack: Pack, catalogue: Catalogue, pack_source="<pack>"):
        self.pack = pack
        self.catalogue = catalogue
        self.compiled = compile_pack(pack)
        self.pack_source = str(pack_source)
        self._labels = [self.compiled.version_label(v) for v in range(len(self.compiled.versions))]
        self._reference_catalogue = None
        self._one = OneVisitAdapter(self.compiled, catalogue)
        self._detail = DetailBuilder(self.compiled)
        # acc_key's look-up: scheme code -> the field of its governing date
        self._governing = {s.code: _GOVERNING_FIELD[s.governing_date] for s in pack.schemes}

    @classmethod
    def from_files(cls, pack_path=None, catalogue_path=None) -> "Settler":
        """A pack (or a draft over its base pack) and a catalogue; the shipped samples by default."""
        from .resettle import load_policy
        pack_path = Path(pack_path) if pack_path else shipped_pack_path()
        catalogue = load_catalogue(catalogue_path) if catalogue_path else load_catalogue(shipped_catalogue_path())
        return cls(load_policy(pack_path), catalogue, pack_path)

    # --- batch ---------------------------------------------------------------------------------

    @_pooled
    def settle_table(self, visits: pa.Table, lines: pa.Table | None = None, mode="settle",
                     opening_acc: dict | None = None, source="visits", line_source="lines",
                     detail=False) -> BatchResult:
        """Settle every visit; a person's visits in settlement-time order, accumulators carried.

        opening_acc: optional {(psn_no, insutype, year): {ACC name: value}} to start from (the
        ledger's totals); absent rows start at zero. detail: also build the setldetail table (one
        row per fund that applies to a visit, docs/data.md). Bad input raises InputError before
        anything runs. The same as settle_prepared(prepare(visits, lines)).
        """
        return self.settle_prepared(self.prepare(visits, lines, source, line_source), mode, opening_acc, detail)

    @_pooled
    def prepare(self, visits: pa.Table, lines: pa.Table | None = None, source="visits",
                line_source="lines") -> VisitBatch:
        """The pack-independent part of settle_table (column checks, dates, amounts, processing
        order), done once for a batch that is then settled under one or more packs
        (settle_prepared of this or another Settler). Raises the errors settle_table raises before
        any pack lookup; the others are raised by settle_prepared, in settle_table's order."""
        return prepare_visits(visits, lines, source, line_source)

    @_pooled
    def settle_prepared(self, batch: VisitBatch, mode="settle", opening_acc: dict | None = None,
                        detail=False) -> BatchResult:
        """settle_table of a prepared batch under this Settler's pack."""
        return self._batch_result(batch, self.settle_raw(batch, mode, opening_acc), detail)

    def _batch_result(self, batch: VisitBatch, raw: "RawSettlement", detail: bool) -> BatchResult:
        return BatchResult(self._result_table(batch.id_columns, raw.prep, raw.out, raw.status, raw.flags),
                           self._acc_table(raw.prep, raw.acc),
                           pa.table({"psn_no": raw.prep.psn_names, "balc": pa.array(raw.balance)}),
                           self.detail_table(batch.id_columns, raw) if detail else None)

    @_pooled
    def detail_table(self, id_columns, raw: "RawSettlement") -> pa.Table:
        """The setldetail rows of a settled batch, by visit in input order (kernel.detail)."""
        prep = raw.prep
        funds = self._detail.funds(raw.out, raw.status, raw.flags, prep.rule, prep.group, prep.cats,
                                   prep.cause, prep.out_area, prep.item[_INSCP_ESS])
        return self._detail.table(funds, prep.order, len(prep.order), id_columns, prep.version)

    @_pooled
    def settle_raw(self, batch: VisitBatch, mode="settle", opening_acc: dict | None = None,
                   out: np.ndarray | None = None, carry=None) -> "RawSettlement":
        """settle_prepared without building the result table: the kernel's arrays, in processing order.
        out: an int64 (len(OUT_COLS), n) array to write into (reused between settlements of a batch).
        carry: a kernel.chunks.Carry: start from the totals and balances it carries from earlier
        chunks of the file (instead of opening_acc and acct_balc), and take in this batch's after."""
        from ._chain import settle

        prep = prepare_for_pack(self.compiled, self.catalogue, batch)
        acc = np.zeros((len(prep.slot_psn), len(layout.ACC_COLS)), dtype=np.int64)
        balance = prep.balance.copy()
        if carry is not None:
            acc, balance, carried = carry.opening(batch, prep)
        elif opening_acc:
            names = prep.psn_names.to_pylist()
            schemes = [s.code for s in self.pack.schemes]
            for slot, (p, s, y) in enumerate(zip(prep.slot_psn.tolist(), prep.slot_scheme.tolist(),
                                                 prep.slot_year.tolist())):
                row = opening_acc.get((names[p], schemes[s], y))
                if row:
                    acc[slot] = [int(row.get(name, 0)) for name in layout.ACC_COLS]
        n = batch.n
        if out is None or out.shape != (len(layout.OUT_COLS), n) or out.dtype != np.int64 \
                or not out.flags.c_contiguous:
            out = empty_large((len(layout.OUT_COLS), n), np.int64)
        status = empty_large(n, np.int8)
        flags = empty_large(n, np.int32)
        cp = self.compiled
        settle(cp.rules, cp.diseases, cp.bands, cp.n_groups, prep.item, prep.rule, prep.group,
               prep.cats, prep.cause, prep.out_area, prep.referral, prep.bed_days, prep.acct_used,
               prep.acc_slot, prep.psn_slot, acc, balance, _MODES[mode], out, status, flags)
        if carry is not None:
            carry.update(carried, acc, balance)
        return RawSettlement(prep, out, status, flags, acc, balance)

    @_pooled
    def _result_table(self, id_columns, prep, out, status, flags) -> pa.Table:
        n = len(prep.order)

        def in_input_order(a, dtype=None):
            # zero-copy when nothing was permuted: Arrow wraps the kernel's rows as they are
            if prep.in_input_order:
                return a if dtype is None else a.astype(dtype, copy=False)
            res = np.empty(n, dtype=dtype or a.dtype)
            res[prep.order] = a
            return res

        causes = self.pack.injury_causes
        # reason: index into [""] + fixed reasons + "excluded_cause:<cause>" for each cause
        fixed = ["", "pending_cause", "not_covered"]
        reason_of_status = np.zeros(max(_STATUS_NAMES) + 1, dtype=np.int32)
        reason_of_status[[layout.STATUS["REFUSED"], layout.STATUS["PROVISIONAL"]]] = 1
        reason_of_status[layout.STATUS["NOT_COVERED"]] = 2
        status32 = status.astype(np.int32)
        reason = reason_of_status[status32]
        excl = np.flatnonzero(status32 == layout.STATUS["EXCLUDED"])
        reason[excl] = len(fixed) + prep.cause[excl]
        del excl
        reason_dict = pa.array(fixed + [f"excluded_cause:{c}" for c in causes])
        status_dict = pa.array([_STATUS_NAMES[i] for i in range(len(_STATUS_NAMES))])
        cols = {
            "mdtrt_id": id_columns[0],
            "psn_no": id_columns[1],
            "status": pa.DictionaryArray.from_arrays(pa.array(in_input_order(status32)), status_dict),
            "reason": pa.DictionaryArray.from_arrays(pa.array(in_input_order(reason)), reason_dict),
        }
        del status32, reason
        for k, name in enumerate(layout.OUT_COLS):
            cols[name] = pa.array(in_input_order(out[k]))
        cols["flags"] = pa.array(in_input_order(flags))
        cols["policy_version"] = pa.DictionaryArray.from_arrays(
            pa.array(in_input_order(prep.version)), pa.array(self._labels))
        return pa.table(cols)

    def _acc_table(self, prep, acc) -> pa.Table:
        schemes = pa.array([s.code for s in self.pack.schemes], pa.string())
        # slots ascend by person and every person has one: as many slots as persons is one each
        one_each = len(prep.slot_psn) == len(prep.psn_names)
        cols = {"psn_no": prep.psn_names if one_each else prep.psn_names.take(pa.array(prep.slot_psn)),
                "insutype": schemes.take(pa.array(prep.slot_scheme)),
                "year": pa.array(prep.slot_year, pa.int32())}
        for name, column in zip(layout.ACC_COLS, _by_column(acc)):
            cols[name] = pa.array(column)
        return pa.table(cols)

    def settle_file(self, visits, out_path, lines=None, mode="settle", detail_path=None,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS, progress=None) -> "FileResult":
        """Visits [+ line items] -> Parquet results [+ setldetail rows], chunk by chunk.

        visits, lines: a Parquet or CSV path, or an Arrow table. Parquet is read chunk_rows rows
        at a time and each person's totals and balance carried between chunks, so the results are
        those of one settle_table call over the whole input (kernel/chunks.py: when a person's
        visits go back in time across chunks, the input is settled again in one call).
        progress(done, total, what) is called as the visits are settled. Written only if everything
        settles: a refused input leaves no output file (and nothing beside it)."""
        from . import chunks
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")

        def notify(done, total, what):
            if progress is not None:
                progress(done, total, what)

        labels = [str(x) if isinstance(x, (str, Path)) else name
                  for x, name in ((visits, "visits"), (lines, "lines"))]
        visits, lines = (read_table(x) if isinstance(x, (str, Path)) and chunks.is_csv(x) else x
                         for x in (visits, lines))
        total = chunks.count_rows(visits)
        outputs = [PartialParquet(out_path)] + ([PartialParquet(detail_path)] if detail_path else [])
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(dir=Path(out_path).parent, prefix=".medsettle-spill-") as spill:
                try:
                    result = self._settle_chunks(visits, lines, mode, outputs, chunk_rows, total, labels,
                                                 Path(spill), notify)
                except chunks.OutOfOrder:
                    for o in outputs:
                        o.discard()
                    notify(0, total, "a person's visits go back in time across chunks: settling in one pass")
                    result = self._settle_whole(visits, lines, mode, outputs, chunk_rows, labels)
                    notify(total, total, "settled in one pass")
            for o in outputs:
                o.commit()
            return result
        finally:
            for o in outputs:
                o.discard()

    def _settle_chunks(self, visits, lines, mode, outputs, chunk_rows, total, labels, spill, notify):
        from . import chunks
        from .resettle import _shift
        carry = chunks.Carry(len(self.pack.schemes))
        ids, line_chunks = chunks.StringIndex(), None
        if lines is not None:
            notify(0, total, "finding each line item's visit")
            ids = chunks.visit_ids(visits, chunk_rows, labels[0])
            if ids is not None:
                line_chunks = chunks.LineChunks(lines, ids, chunk_rows, spill, labels[1])
        summary = _Summary()
        done = 0
        for k, (table, first_row) in enumerate(chunks.visit_chunks(visits, chunk_rows)):
            chunk_lines, numbers = line_chunks.get(k) if line_chunks is not None else (None, None)
            try:
                batch = self.prepare(table, chunk_lines, labels[0], labels[1])
                raw = self.settle_raw(batch, mode, carry=carry)
            except InputError as e:
                raise _shift(e, row=None if e.row is None else e.row + first_row,
                             line=None if e.line is None or numbers is None else int(numbers[e.line - 1])) from None
            if lines is None:                    # (with lines, visit_ids checked every id beforehand)
                chunks.check_new_ids(ids, batch.id_columns[0], first_row, labels[0])
            outputs[0].write(self._result_table(batch.id_columns, raw.prep, raw.out, raw.status, raw.flags))
            if len(outputs) > 1:
                outputs[1].write(self.detail_table(batch.id_columns, raw))
            summary.add(raw.out, raw.status)
            done += batch.n
            notify(done, total, "settling" if done < total else "settled")
            del batch, raw
        codes = [s.code for s in self.pack.schemes]
        return FileResult(done, summary.totals, summary.statuses(), carry.accumulators(codes), carry.balances(),
                          chunks=k + 1, one_pass=False)

    def _settle_whole(self, visits, lines, mode, outputs, chunk_rows, labels):
        visits, lines = (pq.read_table(x) if isinstance(x, (str, Path)) else x for x in (visits, lines))
        batch = self.prepare(visits, lines, labels[0], labels[1])
        raw = self.settle_raw(batch, mode)
        result = self._batch_result(batch, raw, detail=len(outputs) > 1)
        for output, table in zip(outputs, (result.table, result.detail)):
            for start in range(0, max(table.num_rows, 1), chunk_rows):
                output.write(table.slice(start, chunk_rows))
        summary = _Summary()
        summary.add(raw.out, raw.status)
        return FileResult(batch.n, summary.totals, summary.statuses(), result.accumulators, result.balances,
                          chunks=1, one_pass=True)

    # --- real time -----------------------------------------------------------------------------

    def acc_key(self, visit: dict) -> tuple[str, str, int]:
        """(psn_no, insutype, year of the governing date): the accumulator row a visit uses."""
        insutype = visit.get("insutype")
        field = self._governing.get(insutype) if isinstance(insutype, str) else None
        if field is None:
            raise InputError("insutype", "unknown scheme", insutype)
        if not visit.get("psn_no"):
            raise InputError("psn_no", "required value is missing", visit.get("psn_no"))
        when = visit.get(field) or (visit.get("enddate") if field == "begndate" else None)
        if when is None:
            raise InputError(field, "required value is missing", None)
        return visit["psn_no"], insutype, when.year

    def settle_one(self, visit: dict, lines: list | None = None, acc: dict | None = None,
                   balance: int = 0, mode="settle") -> OneResult:
        """One visit with the person's current totals; returns the result and the totals after.

        The same kernel as settle_table, on a batch of one; only the conversion differs (plain
        Python values instead of Arrow columns, with the same checks and the same messages).
        """
        one, item, version, year = self._one.prepare(visit, lines, int(balance))
        cp = self.compiled
        before = [0] * _N_ACC if not acc else [int(acc.get(name, 0)) for name in ACC_COLS]
        out, code, flags, acc_after, balance_after = _settle_one(
            cp.rules, cp.diseases, cp.bands, cp.n_groups, item, *one, before, int(balance),
            _MODES[mode])
        amounts = dict(zip(OUT_COLS, out))
        reason = _REASONS.get(code, "")
        if code == _EXCLUDED:
            reason = f"excluded_cause:{self.pack.injury_causes[one.cause]}"
        return OneResult(
            mdtrt_id=visit["mdtrt_id"], psn_no=visit["psn_no"], insutype=visit["insutype"], year=year,
            status=_STATUS_NAMES[code], reason=reason, policy_version=self._labels[version],
            amounts=amounts, flags=flags, acc_after=dict(zip(ACC_COLS, acc_after)),
            balance_after=balance_after,
            setldetail=[SetlDetail(*row) for row in self._detail.rows_of_one(
                amounts, code, flags, one.rule, one.group, one.cats, one.cause, one.out_area,
                item[_INSCP_ESS])])

    def rule_label(self, rule: int) -> str:
        """The rule row in words: pack/scheme/version, med type, level."""
        return self._detail.rule_label(rule)

    # --- explain -------------------------------------------------------------------------------

    def explain(self, visits: pa.Table, lines: pa.Table | None, mdtrt_id: str) -> tuple[dict, list[str]]:
        """The kernel's result for one visit and the reference implementation's step trace of it.

        The person's earlier visits in the table are settled first (same order as the batch), so the
        trace starts from the same year-to-date totals the kernel used. The result row carries the
        visit's setldetail rows (dicts of kernel.detail.DETAIL_SCHEMA) under "setldetail".
        """
        import pyarrow.compute as pc

        from . import reference

        hit = pc.index(visits.column("mdtrt_id"), mdtrt_id).as_py() if visits.num_rows else -1
        if hit < 0:
            raise InputError("mdtrt_id", "no such visit in the file", mdtrt_id)
        # a person's settlement depends on that person's visits only
        psn = visits.column("psn_no")[hit].as_py()
        person_visits = visits.filter(pc.equal(visits.column("psn_no"), psn))
        person_lines = None
        if lines is not None:
            person_lines = lines.filter(pc.is_in(lines.column("mdtrt_id"),
                                                 value_set=person_visits.column("mdtrt_id")))
        settled = self.settle_table(person_visits, person_lines, detail=True)
        table, detail = settled.table, settled.detail
        kernel_row = table.filter(pc.equal(table.column("mdtrt_id"), mdtrt_id)).to_pylist()[0]
        kernel_row["setldetail"] = detail.filter(pc.equal(detail.column("mdtrt_id"), mdtrt_id)).to_pylist()
        person = person_visits.to_pylist()
        by_visit = None
        if person_lines is not None:
            by_visit = {v["mdtrt_id"]: [] for v in person}
            for line in person_lines.to_pylist():
                by_visit[line["mdtrt_id"]].append(line)
        trace = reference.explain(self.pack, self.reference_catalogue(), person, by_visit, mdtrt_id)
        return kernel_row, trace

    def reference_catalogue(self) -> dict:
        if self._reference_catalogue is None:
            self._reference_catalogue = self.catalogue.as_dict()
        return self._reference_catalogue


def _by_column(rows: np.ndarray, block: int = 4096) -> np.ndarray:
    """The transpose of a (n, k) array, contiguous, copied a block of rows at a time (one pass over
    memory, where k strided column copies make k)."""
    out = np.empty((rows.shape[1], rows.shape[0]), rows.dtype)
    for start in range(0, rows.shape[0], block):
        out[:, start:start + block] = rows[start:start + block].T
    return out


_INSCP_ESS = layout.ITEM_COLS.index("I_INSCP_ESS")


def read_table(path) -> pa.Table:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        from pyarrow import csv
        return csv.read_csv(path)
    return pq.read_table(path)


def write_atomic(table: pa.Table, path, row_group_size=1_000_000) -> None:
    """Write a whole table under a temporary name beside the target and rename: no partial output."""
    out = PartialParquet(path, row_group_size)
    try:
        out.write(table)
        out.commit()
    finally:
        out.discard()
