"""Batch re-settlement after a policy change (重新结算), and policy impact before enactment (基金测算).

SETTLEMENT.md section 6: a period's visits are recomputed under another version (or another pack,
or a draft) and the difference per fund is reported per visit and per person. Both sides are
settled by the same Settler.settle_table (the Cython kernel); the old side may instead be a results
file written by ``medsettle settle`` for the same visits (row for row).

Bounded memory: the input is read in Parquet row groups and split by a hash of psn_no into
partitions (pass 1), so that all of a person's visits are in one partition; each partition is then
settled whole, old and new, and its deltas written (pass 2). A person's accumulators never cross a
partition, so any partition count, and any worker (kernel/scaleout.py runs pass 2 on Dask), gives
the same results.

    medsettle resettle VISITS.parquet --new-version 2013-aug --out out/resettle
    medsettle resettle VISITS.parquet --old-results results.parquet --new-pack draft.toml --out DIR

Outputs in DIR (written under a temporary name and renamed: a refused input leaves nothing):
    visits/part-NNNN.parquet   per visit: old_/new_/delta_ per fund and for the patient
    persons/part-NNNN.parquet  per person: deltas, owed (补付) and recovered (追回)
    summary.parquet            by region, scheme, level, med type and settlement month
    report.html                the report a person reads (charts when matplotlib is installed)
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError
from .layout import OUT_COLS
from .schema import LINE_FIELDS, PRECOMPUTED_FIELDS, VISIT_FIELDS

# The fund columns compared, old against new: every fund of section 7 (their sum is
# fund_pay_sumamt), then the patient's share and its split, and the hospital's part.
FUNDS = ["hifp_pay", "hifob_pay", "hifmi_pay", "cvlserv_pay", "hifes_pay", "maf_pay", "oth_pay"]
COMPARED = FUNDS + ["fund_pay_sumamt", "psn_part_amt", "acct_pay", "psn_cash_pay", "hosp_part_amt"]
# Summary keys: where the insured lives (参保地), scheme, the person's categories (psn_cats as given:
# null for none), hospital level, med type, settlement month.
KEYS = ["region", "insutype", "psn_cats", "medins_lv", "med_type", "month"]
# Who gains: persons by where they are insured and their categories.
GAIN_KEYS = ["region", "psn_cats"]
# The layers the scheme's pooled fund finances, for the surplus ratios (assistance and the
# civil-servant subsidy are separate budgets); --fund-layers changes it.
DEFAULT_FUND_LAYERS = ["hifp_pay", "hifob_pay", "hifmi_pay"]
# Limits of the fund's balance (SOURCE-FIGURES.md): current-year surplus <= 15%, cumulative <= 25%.
SURPLUS_LIMIT_BP, CUMULATIVE_LIMIT_BP = 1500, 2500
# Patients' gain per person, in fen: the histogram's lower edges (report: how many gain how much).
GAIN_EDGES = [1, 100_00, 1_000_00, 10_000_00, 100_000_00]
DEFAULT_PARTITION_ROWS = 500_000

_ROW = "_row"       # 1-based row of the visit in the input file, carried through the partitions
_LINE = "_line"     # 1-based line of a line item in the lines file


# --- which policy: a pack, a draft over a pack, a version forced over the whole period ----------

@dataclass(frozen=True)
class PolicySpec:
    """A Settler described by paths, so a Dask worker can build (and cache) the same one."""
    pack: str | None = None          # pack or draft TOML; None: the shipped sample rural pack
    version: str | None = None       # "ID" or "SCHEME:ID": that version governs every date
    catalogue: str | None = None     # None: the shipped catalogue

    def settler(self):
        return _settler(self)

    def label(self) -> str:
        from .api import shipped_pack_path
        name = Path(self.pack).name if self.pack else shipped_pack_path().name
        return name + (f" version {self.version} over the whole period" if self.version else "")


@functools.lru_cache(maxsize=8)
def _settler(spec: PolicySpec):
    from .api import Settler, shipped_catalogue_path, shipped_pack_path
    from .catalogue import load_catalogue
    path = Path(spec.pack) if spec.pack else shipped_pack_path()
    pack = load_policy(path)
    if spec.version:
        pack = force_version(pack, spec.version, path)
    catalogue = load_catalogue(spec.catalogue or shipped_catalogue_path())
    return Settler(pack, catalogue, path)


def load_policy(path):
    """A pack, or a draft: a TOML with ``base = "<pack>.toml"`` whose schemes' versions replace the
    base's from their first effective_from (earlier base versions are cut off the day before).
    A draft version may inherit from any base version. Drafts are how a change is costed before
    anyone enacts it (基金测算)."""
    from .policy import PolicyError, is_draft, pack_from_raw
    path = Path(path)
    try:
        raw = msgspec.toml.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as e:
        raise PolicyError(path, "", f"cannot read the pack: {e}") from None
    return pack_from_raw(_draft_over_base(raw, path) if is_draft(raw) else raw, path)


def _draft_over_base(raw: dict, path: Path) -> dict:
    from .policy import PolicyError, _merge
    base_path = (path.parent / raw["base"]).resolve()
    if not base_path.exists():
        from .api import shipped_pack_path
        shipped = shipped_pack_path(Path(raw["base"]).stem)
        base_path = shipped if shipped.exists() else base_path
    try:
        base = msgspec.toml.decode(base_path.read_bytes())
    except (OSError, msgspec.DecodeError) as e:
        raise PolicyError(path, "$.base", f"cannot read the base pack {base_path}: {e}") from None
    if "base" in base:
        raise PolicyError(path, "$.base", "the base of a draft must be a pack, not another draft")
    out = {**base, **{k: v for k, v in raw.items() if k not in ("base", "schemes")}}
    drafts = {s.get("code"): (i, s) for i, s in enumerate(raw.get("schemes", []))}
    schemes = []

    def inherit(version, known, where):
        if version.get("inherits") is None:
            return version
        parent = known.get(version["inherits"])
        if parent is None:
            raise PolicyError(path, f"{where}.inherits", f"no version {version['inherits']!r} in the base or the draft")
        merged = _merge({k: v for k, v in parent.items() if k not in ("id", "effective_from", "effective_to")}, version)
        merged.pop("inherits")
        return merged

    for scheme in base.get("schemes", []):
        i, draft = drafts.pop(scheme.get("code"), (None, None))
        if draft is None:
            schemes.append(scheme)
            continue
        known, base_versions = {}, []
        for k, v in enumerate(scheme.get("versions", [])):
            v = inherit(v, known, f"base $.schemes[..].versions[{k}]")
            known[v["id"]] = v
            base_versions.append(v)
        new_versions = []
        for k, v in enumerate(draft.get("versions", [])):
            v = inherit(v, known, f"$.schemes[{i}].versions[{k}]")
            known[v["id"]] = v
            new_versions.append(v)
        if not new_versions:
            raise PolicyError(path, f"$.schemes[{i}].versions", "a draft scheme needs at least one version")
        start = min(v["effective_from"] for v in new_versions)
        kept = []
        for v in base_versions:
            if v["effective_from"] >= start:
                continue
            if v.get("effective_to") is None or v["effective_to"] >= start:
                v = {**v, "effective_to": start - datetime.timedelta(days=1)}
            kept.append(v)
        schemes.append({**scheme, **{k: v for k, v in draft.items() if k != "versions"},
                        "versions": kept + new_versions})
    if drafts:
        code, (i, _) = next(iter(drafts.items()))
        raise PolicyError(path, f"$.schemes[{i}].code", f"scheme {code!r} is not in the base pack")
    out["schemes"] = schemes
    return out


def force_version(pack, version: str, source="<pack>"):
    """The pack with one version governing every date of its scheme ("ID" or "SCHEME:ID"):
    re-settlement "under another version" (e.g. the August rules applied from 1 January)."""
    from msgspec.structs import replace
    from .policy import PolicyError
    scheme_code, _, vid = version.rpartition(":")
    schemes, found = [], False
    for s in pack.schemes:
        match = [v for v in s.versions if v.id == vid and scheme_code in ("", s.code)]
        if match:
            found = True
            s = replace(s, versions=[replace(match[0], effective_from=datetime.date(1900, 1, 1),
                                             effective_to=None, inherits=None)])
        schemes.append(s)
    if not found:
        known = [f"{s.code}:{v.id}" for s in pack.schemes for v in s.versions]
        raise PolicyError(source, "version", f"no version {version!r} (known: {', '.join(known)})")
    return replace(pack, schemes=schemes)


# --- the plan: what to compare, where things are ---------------------------------------------

@dataclass
class Plan:
    visits: str
    new: PolicySpec
    old: PolicySpec | None = None          # None: old_results gives the old side
    old_results: str | None = None
    lines: str | None = None
    partition_rows: int = DEFAULT_PARTITION_ROWS
    n_partitions: int = 0                  # 0: from the row count and partition_rows
    processes: int = 0                     # worker processes of a single-machine run; 0: one per core
    fund_layers: list = field(default_factory=lambda: list(DEFAULT_FUND_LAYERS))

    def as_dict(self):
        return asdict(self)


def n_partitions_for(n_rows: int, partition_rows: int) -> int:
    return max(1, math.ceil(n_rows / max(1, partition_rows)))


# --- string hash: psn_no -> partition, vectorised over the Arrow buffers ------------------------

_K = np.uint64(0x9E3779B97F4A7C15)
_M = np.uint64(0xBF58476D1CE4E5B9)


def hash_strings(arr) -> np.ndarray:
    """uint64 hash of every string: its bytes as little-endian 64-bit words (the last zero-padded),
    folded with multiply-xor from the length, then a 64-bit finaliser.

    Deterministic across processes and machines (unlike Python's hash), so every worker puts a
    person in the same partition. Vectorised per distinct string length (person numbers usually
    have one or a few): no per-byte arrays."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        return hash_strings(arr.dictionary)[np.asarray(arr.indices.fill_null(0))]
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    n = len(arr)
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    offs = offs[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offs)
    h = lengths.astype(np.uint64) * _K
    with np.errstate(over="ignore"):
        distinct = np.unique(lengths).tolist() if n else []
        for length in distinct:
            if length == 0:
                continue
            words = (length + 7) // 8
            if len(distinct) == 1:
                rows = slice(None)              # every string this long: the bytes are an n x length matrix
                mat = data[offs[0]:offs[-1]].reshape(n, length)
            else:
                rows = np.flatnonzero(lengths == length)
                mat = data[offs[rows][:, None] + np.arange(length)]
            padded = np.zeros((mat.shape[0], words * 8), np.uint8)
            padded[:, :length] = mat
            w = padded.view("<u8")
            hh = h[rows]
            for k in range(words):
                hh = (hh ^ w[:, k]) * _M
                hh ^= hh >> np.uint64(31)
            h[rows] = hh
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


def partition_of(psn_no, n_partitions: int) -> np.ndarray:
    return (hash_strings(psn_no) % np.uint64(n_partitions)).astype(np.int32)


# --- pass 1: split the input by person --------------------------------------------------------

def _shift(e: InputError, row=None, line=None, source=None) -> InputError:
    """The same error with the row (line) numbered in the whole file, not in a batch or partition."""
    return InputError(e.field, e.rule, e.value, row=row if row is not None else e.row,
                      line=line if line is not None else e.line, mdtrt_id=e.mdtrt_id,
                      source=source or e.source)


def _check_columns(batch: pa.Table, fields, first_row: int, source: str, mapper=None):
    """Required columns present, every column castable, no missing required value: else InputError
    with the file's row number (first_row = the batch's first row, 1-based)."""
    from .adapter import _column
    out = {}
    for name, typ, required, _ in fields:
        try:
            col = _column(batch, name, typ, required, source, combine=False)
        except InputError as e:
            raise _shift(e, row=None if e.row is None else e.row + first_row - 1) from None
        if col is not None:
            out[name] = col
    return out


def chunks_of(path, rows_per_chunk: int):
    """Runs of whole row groups of about rows_per_chunk rows: [(first_group, stop_group, first_row)]."""
    meta = pq.ParquetFile(path).metadata
    chunks, start, first_row, rows = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= rows_per_chunk or g == meta.num_row_groups - 1:
            chunks.append((start, g + 1, first_row))
            start, first_row, rows = g + 1, first_row + rows, 0
    return chunks


def _read_rows(path, first_row: int, n: int, columns=None) -> pa.Table:
    """Rows [first_row, first_row + n) of a Parquet file, reading only the row groups that hold them."""
    f = pq.ParquetFile(path)
    meta = f.metadata
    groups, at, skip = [], 0, 0
    for g in range(meta.num_row_groups):
        size = meta.row_group(g).num_rows
        if at + size > first_row and at < first_row + n:
            if not groups:
                skip = first_row - at
            groups.append(g)
        at += size
    if not groups:
        return f.schema_arrow.empty_table() if columns is None else f.read_row_groups([], columns=columns)
    return f.read_row_groups(groups, columns=columns).slice(skip, n)


# Columns of the visit schema the re-settlement does not use: checked for their type from the
# file's schema, read only when that type is not already the schema's (to name a bad value).
_UNUSED = {"fixmedins_code"}
# Pass-1 files: Arrow IPC, LZ4 (written and read at memory speed; they live for one run).
_IPC_WRITE = pa.ipc.IpcWriteOptions(compression="lz4")


def _columns_to_read(f: pq.ParquetFile, fields) -> list:
    schema = f.schema_arrow
    have = set(schema.names)
    return [name for name, typ, _, _ in fields
            if name in have and not (name in _UNUSED and schema.field(name).type == typ)]


# String columns of few distinct values (codes, regions, diagnoses) travel through pass 1 as
# dictionaries: read as such from the Parquet pages, moved as indices, decoded in pass 2.
_ID_COLUMNS = ("mdtrt_id", "psn_no")
_DICT_STRING = pa.dictionary(pa.int32(), pa.string())


def _dictionary_columns(f: pq.ParquetFile, fields) -> list:
    schema = f.schema_arrow
    return [name for name, typ, _, _ in fields if typ == pa.string() and name not in _ID_COLUMNS
            and name in schema.names and schema.field(name).type == pa.string()]


def partition_chunk(plan: Plan, work: str, chunk: tuple, n_parts: int, index: int, threads: bool = True) -> dict:
    """Pass 1 for one run of row groups: check the columns, attach the old results, write each
    partition's share to work/pNNNN/cNNNNN.arrow. Returns counts and the chunk's rows."""
    g0, g1, first_row = chunk
    fields = VISIT_FIELDS + (PRECOMPUTED_FIELDS if plan.lines is None else [])
    f = pq.ParquetFile(plan.visits)
    as_dict = _dictionary_columns(f, fields)
    f = pq.ParquetFile(plan.visits, read_dictionary=as_dict)
    table = f.read_row_groups(list(range(g0, g1)), columns=_columns_to_read(f, fields), use_threads=threads)
    n = table.num_rows
    src = str(plan.visits)
    checked = [(name, _DICT_STRING if name in as_dict else typ, required, doc) for name, typ, required, doc in fields]
    cols = _check_columns(table, checked, first_row + 1, src)
    for name in _UNUSED:
        cols.pop(name, None)
    del table
    table = pa.table({**cols, _ROW: pa.array(np.arange(first_row + 1, first_row + n + 1, dtype=np.int64))})
    del cols
    if as_dict:
        table = table.unify_dictionaries()
    if plan.old_results:
        table = _attach_old(table, plan.old_results, first_row, src)
    part = partition_of(table.column("psn_no"), n_parts)
    _write_visit_ids(work, index, table.column("mdtrt_id"), table.column(_ROW), part)
    order = np.argsort(part.astype(np.int16) if n_parts < 2**15 else part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
    sorted_table = table.take(pa.array(order))
    del table
    counts = []
    for p in range(n_parts):
        piece = sorted_table.slice(bounds[p], bounds[p + 1] - bounds[p])
        counts.append(piece.num_rows)
        if piece.num_rows:
            d = Path(work) / f"p{p:04d}"
            d.mkdir(parents=True, exist_ok=True)
            with pa.ipc.new_file(d / f"c{index:05d}.arrow", piece.schema, options=_IPC_WRITE) as w:
                w.write_table(piece)
    return {"rows": n, "counts": counts}


# --- visit ids across partitions: a mdtrt_id repeated for two persons lands in two partitions -------

def _write_visit_ids(work: str, index: int, mdtrt_id, rows, part: np.ndarray) -> None:
    """work/ids/cNNNNN.arrow: the chunk's visit-id hashes, sorted, with each visit's row and partition
    (a check task reads one range of hashes from every chunk: no id string leaves pass 1)."""
    h = hash_strings(mdtrt_id)
    order = np.argsort(h)
    d = Path(work) / "ids"
    d.mkdir(exist_ok=True)
    table = pa.table({"hash": h[order], "row": np.asarray(rows, dtype=np.int64)[order], "part": part[order]})
    with pa.ipc.new_file(d / f"c{index:05d}.arrow", table.schema) as w:
        w.write_table(table)


def _bucket_bounds(bucket: int, n_buckets: int) -> tuple[int, int]:
    """The hash range [lo, hi) of a bucket: the 64-bit hash space cut into n_buckets equal ranges."""
    return -(-bucket * 2**64 // n_buckets), -(-(bucket + 1) * 2**64 // n_buckets)


def _bucket_ids(work: str, bucket: int, n_buckets: int) -> dict:
    """Every visit of the bucket's hash range from every pass-1 chunk: hash, row, partition (by hash)."""
    lo, hi = _bucket_bounds(bucket, n_buckets)
    parts = {"hash": [], "row": [], "part": []}
    for f in sorted((Path(work) / "ids").glob("c*.arrow")):
        with pa.memory_map(str(f)) as source:
            t = pa.ipc.open_file(source).read_all()
            h = np.asarray(t.column("hash"))
            a = int(np.searchsorted(h, np.uint64(lo))) if lo < 2**64 else len(h)
            b = int(np.searchsorted(h, np.uint64(hi))) if hi < 2**64 else len(h)
            for name in parts:
                parts[name].append(np.array(t.column(name).slice(a, b - a)))
    out = {name: (np.concatenate(v) if v else np.zeros(0, np.int64)) for name, v in parts.items()}
    order = np.argsort(out["hash"], kind="stable")
    return {name: v[order] for name, v in out.items()}


def _values_at_rows(path: str, column: str, rows: np.ndarray) -> list:
    """column's values at 1-based rows of a Parquet file, reading only the row groups that hold them."""
    f = pq.ParquetFile(path)
    sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    group = np.searchsorted(starts, rows - 1, side="right") - 1
    values = [None] * len(rows)
    for g in np.unique(group).tolist():
        col = f.read_row_group(g, columns=[column]).column(column)
        for k in np.flatnonzero(group == g).tolist():
            values[k] = col[int(rows[k] - 1 - starts[g])].as_py()
    return values


def _bucket_of(h: np.ndarray, n_buckets: int) -> np.ndarray:
    """The hash bucket of every hash (_bucket_bounds' ranges)."""
    lows = np.array([_bucket_bounds(b, n_buckets)[0] for b in range(1, n_buckets)], dtype=np.uint64)
    return np.searchsorted(lows, h, side="right").astype(np.int32)


def check_bucket(plan: Plan, work: str, bucket: int, n_buckets: int) -> dict:
    """One hash bucket of visit ids (mdtrt_id), from every run of the visits and of the line items:

    - "repeat": (row of the repeat, row of the first, id) of the earliest visit id repeated anywhere in
      the file, or None; repeated hashes are compared as strings (read from the input for those rows);
    - "orphan": (line, id) of the earliest line item whose visit is not in the visits, or None;
    - the bucket's line items are written to their visit's partition (work/pNNNN/lBBBBB.arrow)."""
    ids = _bucket_ids(work, bucket, n_buckets)
    h = ids["hash"]
    same = np.flatnonzero(h[1:] == h[:-1]) if h.size > 1 else np.zeros(0, np.int64)
    found, value_at = None, {}
    if same.size:
        candidates = np.unique(np.concatenate([same, same + 1]))
        rows = ids["row"][candidates]
        value_at = dict(zip(candidates.tolist(), _values_at_rows(plan.visits, "mdtrt_id", rows)))
        first_by_value = {}
        for row, value in sorted((int(ids["row"][k]), v) for k, v in value_at.items()):
            if value in first_by_value:
                if found is None or row < found[0]:
                    found = (row, first_by_value[value], value)
            else:
                first_by_value[value] = row
    orphan = _route_lines(work, bucket, ids, value_at) if plan.lines else None
    return {"repeat": found, "orphan": orphan}


def _route_lines(work: str, bucket: int, ids: dict, value_at: dict):
    """The bucket's line items to their visit's partition; (line, id) of the earliest without a visit."""
    files = sorted((Path(work) / f"lb{bucket:04d}").glob("c*.arrow"))
    if not files:
        return None
    lines = _read_ipc(files, threads=False)
    lh = np.asarray(lines.column("_hash"))
    h = ids["hash"]
    pos = np.minimum(np.searchsorted(h, lh), max(len(h) - 1, 0))
    known = (h[pos] == lh) if len(h) else np.zeros(len(lh), bool)
    part = ids["part"][pos] if len(h) else np.zeros(len(lh), np.int32)
    if value_at:
        # two visit ids with one hash (or one id twice, refused anyway): the line goes by its string
        collided = np.unique(h[list(value_at)])
        for k in np.flatnonzero(np.isin(lh, collided)).tolist():
            line_id = lines.column("mdtrt_id")[k].as_py()
            match = [j for j, v in value_at.items() if h[j] == lh[k] and v == line_id]
            known[k] = bool(match)
            part[k] = ids["part"][match[0]] if match else part[k]
    if not known.all():
        k = int(np.flatnonzero(~known)[0])
        return int(lines.column(_LINE)[k].as_py()), lines.column("mdtrt_id")[k].as_py()
    lines = lines.drop_columns(["_hash"])
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(int(part.max(initial=0)) + 2))
    lines = lines.take(pa.array(order))
    for p in np.unique(part).tolist():
        piece = lines.slice(bounds[p], bounds[p + 1] - bounds[p])
        d = Path(work) / f"p{p:04d}"
        d.mkdir(parents=True, exist_ok=True)
        with pa.ipc.new_file(d / f"l{bucket:05d}.arrow", piece.schema, options=_IPC_WRITE) as w:
            w.write_table(piece)
    return None


def raise_bucket_errors(results: list, plan: Plan) -> None:
    """The earliest repeated visit id over every bucket, then the earliest line item of no visit
    (the same errors whatever the partition count)."""
    repeats = [r["repeat"] for r in results if r["repeat"] is not None]
    if repeats:
        row, first, value = min(repeats)
        raise InputError("mdtrt_id", f"duplicate visit id (the same as row {first})", value,
                         row=row, source=str(plan.visits))
    orphans = [r["orphan"] for r in results if r["orphan"] is not None]
    if orphans:
        line, value = min(orphans)
        raise InputError("mdtrt_id", "line of a visit not in the visits", value, line=line, source=str(plan.lines))


def _attach_old(table: pa.Table, results_path: str, first_row: int, source: str) -> pa.Table:
    """The old results of these rows (the results file is row for row the visits file)."""
    n = table.num_rows
    old = _read_rows(results_path, first_row, n)
    if old.num_rows != n:
        raise InputError("mdtrt_id", "the results file has fewer rows than the visits file", None,
                         row=first_row + old.num_rows + 1, source=str(results_path))
    res_fields = [("mdtrt_id", pa.string(), True, ""), ("policy_version", pa.string(), False, ""),
                  ("status", pa.string(), False, "")] + [(c, pa.int64(), True, "") for c in COMPARED + ["medfee_sumamt"]]
    cols = _check_columns(old, res_fields, first_row + 1, str(results_path))
    differ = np.flatnonzero(~np.asarray(pc.equal(cols["mdtrt_id"], table.column("mdtrt_id")), dtype=bool))
    if differ.size:
        i = int(differ[0])
        raise InputError("mdtrt_id", f"the results row is for another visit than the visits row "
                         f"({table.column('mdtrt_id')[i].as_py()})", cols["mdtrt_id"][i].as_py(),
                         row=first_row + i + 1, source=str(results_path))
    extra = {"old_medfee_sumamt": cols["medfee_sumamt"]}
    extra.update({f"old_{c}": cols[c] for c in COMPARED})
    extra["old_version"] = cols.get("policy_version", pa.nulls(n, pa.string()))
    extra["old_status"] = cols.get("status", pa.nulls(n, pa.string()))
    for name, col in extra.items():
        table = table.append_column(name, col)
    return table


def split_lines_chunk(plan: Plan, work: str, chunk: tuple, n_buckets: int, index: int, threads: bool = True) -> int:
    """Line items, one run of row groups: check the columns, number each line in the file and write
    it to the hash bucket of its visit id (work/lbBBBB/cNNNNN.arrow), where check_bucket finds its
    visit's partition. Line items thus follow their visit's person without any process holding
    every visit id. Returns the run's line count."""
    g0, g1, first = chunk
    src = str(plan.lines)
    table = pq.ParquetFile(plan.lines).read_row_groups(list(range(g0, g1)), use_threads=threads)
    n = table.num_rows
    cols = _check_columns(table, LINE_FIELDS, first + 1, src)
    del table
    h = hash_strings(cols["mdtrt_id"])
    table = pa.table({**cols, _LINE: pa.array(np.arange(first + 1, first + n + 1, dtype=np.int64)), "_hash": h})
    bucket = _bucket_of(h, n_buckets)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
    table = table.take(pa.array(order))
    for b in range(n_buckets):
        if bounds[b + 1] > bounds[b]:
            d = Path(work) / f"lb{b:04d}"
            d.mkdir(parents=True, exist_ok=True)
            piece = table.slice(bounds[b], bounds[b + 1] - bounds[b])
            with pa.ipc.new_file(d / f"c{index:05d}.arrow", piece.schema, options=_IPC_WRITE) as w:
                w.write_table(piece)
    return n


# --- pass 2: settle a partition, old and new ------------------------------------------------

def _month(days) -> pa.Array:
    """yyyymm of int64 days since 1970-01-01."""
    from .adapter import _civil
    y, m, _ = _civil(days)
    return pa.array((y * 100 + m).astype(np.int32))


def _check_order(visits: pa.Table, source: str) -> None:
    """A person's visits must come in settlement-time order (the order they were settled in):
    a file where they do not is not a settlement log, and replaying it would move deductibles
    and caps between visits. Duplicated visit rows are refused by the adapter (mdtrt_id)."""
    n = visits.num_rows
    if n < 2:
        return
    psn = np.asarray(visits.column("psn_no").combine_chunks().dictionary_encode().indices, dtype=np.int64)
    rows = np.asarray(visits.column(_ROW), dtype=np.int64)
    t = np.asarray(visits.column("setl_time").cast(pa.timestamp("s")).cast(pa.int64()))
    order = np.lexsort((rows, psn))
    same = psn[order][1:] == psn[order][:-1]
    back = np.flatnonzero(same & (t[order][1:] < t[order][:-1]))
    if back.size:
        # report the earliest row (in the file) that goes back in time
        bad = order[back + 1]
        i = int(bad[np.argmin(rows[bad])])
        raise InputError("setl_time", "visits of a person are not in settlement-time order "
                         "(earlier than the person's previous visit in the file)",
                         str(visits.column("setl_time")[i].as_py()), row=int(rows[i]),
                         mdtrt_id=visits.column("mdtrt_id")[i].as_py(), source=source)


def _in_file_order(batch) -> bool:
    """The prepared processing order (person, settlement time, row) keeps every person's rows in
    file order, i.e. no person's visit is settled earlier than their previous row (rows ascend)."""
    if batch.n < 2:
        return True
    same = batch.psn_slot[1:] == batch.psn_slot[:-1]
    return not np.any(same & (batch.order[1:] < batch.order[:-1]))


_OUT = {name: k for k, name in enumerate(OUT_COLS)}
_COMPARED_ROWS = [_OUT[c] for c in COMPARED]


def _side(settler, raw, inverse):
    """(compared columns (len(COMPARED), n) in processing order, version labels, status names in
    input order) of one side. Labels are dictionary arrays over every label of the pack (status:
    every status), so any partition of any run has the same dictionaries."""
    from .api import _STATUS_NAMES
    values = raw.out[_COMPARED_ROWS]
    version = pa.DictionaryArray.from_arrays(pa.array(raw.prep.version[inverse]),
                                             pa.array(settler._labels, pa.string()))
    names = pa.array([_STATUS_NAMES[i] for i in range(len(_STATUS_NAMES))], pa.string())
    status = pa.DictionaryArray.from_arrays(pa.array(raw.status[inverse].astype(np.int32)), names)
    return values, version, status


def _to_input_order(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rows of values (processing order) in input order: a scatter per row (faster than a 2-D gather)."""
    out = np.empty_like(values)
    for k in range(values.shape[0]):
        out[k][order] = values[k]
    return out


def settle_partition(plan: Plan, visits: pa.Table, lines: pa.Table | None = None):
    """(per-visit deltas, per-person totals, summary partial, gain histogram, gains partial) of one partition.

    All of a person's visits are in ``visits``, in file order; row numbers of errors are the
    input file's. The visits are prepared once (Settler.prepare) and settled under each side."""
    src = str(plan.visits)
    rows = np.asarray(visits.column(_ROW), dtype=np.int64)
    line_no = np.asarray(lines.column(_LINE), dtype=np.int64) if lines is not None else None

    def shifted(e):
        return _shift(e, row=None if e.row is None else int(rows[e.row - 1]),
                      line=None if e.line is None or line_no is None else int(line_no[e.line - 1]))

    if rows.size > 1 and not np.all(rows[1:] > rows[:-1]):
        order = np.argsort(rows, kind="stable")
        visits, rows = visits.take(pa.array(order)), rows[order]
    new_settler = plan.new.settler()
    try:
        batch = new_settler.prepare(visits, lines, source=src, line_source=str(plan.lines or "lines"))
    except InputError as e:
        _check_order(visits, src)           # unsorted visits are reported first, as always
        raise shifted(e) from None
    if not _in_file_order(batch):
        _check_order(visits, src)

    def settle(settler, out):
        try:
            return settler.settle_raw(batch, out=out)
        except InputError as e:
            raise shifted(e) from None

    n, order = batch.n, batch.order
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    raw = settle(new_settler, None)
    medfee = np.empty(n, np.int64)
    medfee[order] = raw.out[_OUT["medfee_sumamt"]]
    new_p, new_version, new_status = _side(new_settler, raw, inverse)
    buffer = raw.out
    del raw
    if plan.old is not None:
        old_settler = plan.old.settler()
        raw = settle(old_settler, buffer)
        old_p, old_version, old_status = _side(old_settler, raw, inverse)
        del raw
    else:
        old_settler = None
        fee = np.asarray(visits.column("old_medfee_sumamt"))
        bad = np.flatnonzero(fee != medfee)
        if bad.size:
            i = int(np.argmin(rows[bad]))
            i = int(bad[i])
            raise InputError("medfee_sumamt", "the old result's total differs from the visit's "
                             f"({int(medfee[i])})", int(fee[i]),
                             row=int(rows[i]), mdtrt_id=visits.column("mdtrt_id")[i].as_py(),
                             source=str(plan.old_results))
        old_version, old_status = visits.column("old_version"), visits.column("old_status")
        old_p = np.empty((len(COMPARED), n), np.int64)
        for k, c in enumerate(COMPARED):
            old_p[k] = np.asarray(visits.column(f"old_{c}"), dtype=np.int64)[order]
    del buffer
    delta_p = new_p - old_p
    region = (visits.column("insu_admdvs").fill_null(new_settler.pack.region) if "insu_admdvs" in visits.column_names
              else pa.repeat(pa.scalar(new_settler.pack.region, pa.string()), n))
    region = region.combine_chunks() if isinstance(region, pa.ChunkedArray) else region
    psn_cats = (visits.column("psn_cats").combine_chunks() if "psn_cats" in visits.column_names
                else pa.nulls(n, pa.string()))
    persons = _person_totals(batch, delta_p, region, psn_cats)
    new_v = _to_input_order(new_p, order)
    del new_p
    old_v = _to_input_order(old_p, order)
    del old_p
    delta = _to_input_order(delta_p, order)
    del delta_p
    cols = {"mdtrt_id": visits.column("mdtrt_id"), "psn_no": visits.column("psn_no"),
            "insutype": visits.column("insutype"), "region": region, "psn_cats": psn_cats,
            "medins_lv": visits.column("medins_lv"), "med_type": visits.column("med_type"),
            "month": _month(batch.setl), "row": visits.column(_ROW),
            "medfee_sumamt": pa.array(medfee),
            "old_version": old_version, "old_status": old_status,
            "new_version": new_version, "new_status": new_status}
    for k, c in enumerate(COMPARED):
        cols[f"old_{c}"] = pa.array(old_v[k])
        cols[f"new_{c}"] = pa.array(new_v[k])
        cols[f"delta_{c}"] = pa.array(delta[k])
    per_visit = pa.table(cols)
    return per_visit, persons, summary_partial(per_visit), gain_histogram(persons), gains_partial(persons)


def _rank(strings: pa.Array) -> np.ndarray:
    """Position of each string in binary (UTF-8 byte) order."""
    rank = np.empty(len(strings), dtype=np.int64)
    rank[np.asarray(pc.sort_indices(strings))] = np.arange(len(strings))
    return rank


def _person_totals(batch, delta: np.ndarray, region: pa.Array, psn_cats: pa.Array) -> pa.Table:
    """Per person from the prepared batch (visits grouped by person in processing order) and
    the deltas (len(COMPARED), n) in processing order: no string grouping, no Python per person.
    region, psn_cats: per visit in input order; a person's are those of their first visit."""
    n = batch.n
    if n == 0:
        return _empty_persons()
    ins_dict, ins_idx = batch.codes["insutype"]
    n_ins = len(ins_dict)
    order = batch.order
    key = batch.psn_slot.astype(np.int64) * n_ins + ins_idx[order]
    if np.all(key[1:] >= key[:-1]):                # one scheme per person: already grouped
        ks, srt = key, order
    else:
        srt = np.argsort(key, kind="stable")
        ks, delta, srt = key[srt], np.take(delta, srt, axis=1), order[srt]
    starts = np.flatnonzero(np.concatenate(([True], ks[1:] != ks[:-1])))
    sums = np.add.reduceat(delta, starts, axis=1)
    changed = np.add.reduceat((delta[COMPARED.index("fund_pay_sumamt")] != 0).astype(np.int64), starts)
    visits = np.diff(np.append(starts, n))
    g_psn, g_ins = ks[starts] // n_ins, ks[starts] % n_ins
    final = np.lexsort((_rank(ins_dict)[g_ins], _rank(batch.psn_names)[g_psn]))
    first_visit = pa.array(srt[starts][final])
    cols = {"psn_no": batch.psn_names.take(pa.array(g_psn[final])),
            "insutype": ins_dict.take(pa.array(g_ins[final])),
            "region": region.take(first_visit), "psn_cats": psn_cats.take(first_visit),
            "visits": pa.array(visits[final].astype(np.int64)), "visits_changed": pa.array(changed[final])}
    for k, c in enumerate(COMPARED):
        cols[f"delta_{c}"] = pa.array(sums[k][final])
    net = -sums[COMPARED.index("psn_part_amt")][final]
    cols["owed"] = pa.array(np.maximum(net, 0))
    cols["recovered"] = pa.array(np.maximum(-net, 0))
    return pa.table(cols)


def _empty_persons() -> pa.Table:
    cols = {"psn_no": pa.array([], pa.string()), "insutype": pa.array([], pa.string()),
            "region": pa.array([], pa.string()), "psn_cats": pa.array([], pa.string()),
            "visits": pa.array([], pa.int64()), "visits_changed": pa.array([], pa.int64())}
    cols.update({f"delta_{c}": pa.array([], pa.int64()) for c in COMPARED})
    cols.update({"owed": pa.array([], pa.int64()), "recovered": pa.array([], pa.int64())})
    return pa.table(cols)


def summary_partial(per_visit: pa.Table) -> pa.Table:
    """Sums by KEYS: visits, cost, and per compared column old/new/delta and person-times > 0."""
    cols = {k: per_visit.column(k) for k in KEYS}
    cols["visits"] = pa.array(np.ones(per_visit.num_rows, np.int64))
    cols["medfee_sumamt"] = per_visit.column("medfee_sumamt")
    for c in COMPARED:
        o, w = np.asarray(per_visit.column(f"old_{c}")), np.asarray(per_visit.column(f"new_{c}"))
        cols[f"old_{c}"], cols[f"new_{c}"] = per_visit.column(f"old_{c}"), per_visit.column(f"new_{c}")
        cols[f"delta_{c}"] = per_visit.column(f"delta_{c}")
        if c in FUNDS or c == "fund_pay_sumamt":
            cols[f"old_n_{c}"] = pa.array((o > 0).astype(np.int64))
            cols[f"new_n_{c}"] = pa.array((w > 0).astype(np.int64))
    return combine_summaries([pa.table(cols)])


def combine_summaries(parts: list, keys=KEYS) -> pa.Table:
    """Partial sums (summaries, or gains with GAIN_KEYS) added up by their keys."""
    parts = [p for p in parts if p is not None and p.num_rows]
    if not parts:
        return None
    t = pa.concat_tables(parts)
    values = [c for c in t.column_names if c not in keys]
    g = t.group_by(keys, use_threads=False).aggregate([(c, "sum") for c in values])
    g = g.rename_columns([c[:-4] if c.endswith("_sum") and c[:-4] in values else c for c in g.column_names])
    return g.select(keys + values).sort_by([(k, "ascending") for k in keys])


def gains_partial(persons: pa.Table) -> pa.Table:
    """Who gains: by GAIN_KEYS, persons, persons owed and the sum owed (补付), persons recovered from
    and the sum recovered (追回)."""
    owed, recovered = np.asarray(persons.column("owed")), np.asarray(persons.column("recovered"))
    t = pa.table({"region": persons.column("region"), "psn_cats": persons.column("psn_cats"),
                  "persons": pa.array(np.ones(len(owed), np.int64)),
                  "persons_owed": pa.array((owed > 0).astype(np.int64)), "owed": persons.column("owed"),
                  "persons_recovered": pa.array((recovered > 0).astype(np.int64)),
                  "recovered": persons.column("recovered")})
    return combine_summaries([t], GAIN_KEYS)


def gain_histogram(p: pa.Table) -> dict:
    """Persons (the per-person table) by net gain (owed) and by net loss (recovered), bucketed by GAIN_EDGES."""
    return {"owed": np.histogram(np.asarray(p.column("owed")), bins=GAIN_EDGES + [2**62])[0].tolist(),
            "recovered": np.histogram(np.asarray(p.column("recovered")), bins=GAIN_EDGES + [2**62])[0].tolist(),
            "persons": p.num_rows,
            "owed_total": int(pc.sum(p.column("owed")).as_py() or 0),
            "recovered_total": int(pc.sum(p.column("recovered")).as_py() or 0),
            "persons_owed": int(np.count_nonzero(np.asarray(p.column("owed")))),
            "persons_recovered": int(np.count_nonzero(np.asarray(p.column("recovered"))))}


def add_histograms(hists: list) -> dict:
    out = None
    for h in hists:
        if out is None:
            out = {k: (list(v) if isinstance(v, list) else v) for k, v in h.items()}
            continue
        for k, v in h.items():
            out[k] = [a + b for a, b in zip(out[k], v)] if isinstance(v, list) else out[k] + v
    return out or {"owed": [0] * len(GAIN_EDGES), "recovered": [0] * len(GAIN_EDGES), "persons": 0,
                   "owed_total": 0, "recovered_total": 0, "persons_owed": 0, "persons_recovered": 0}


# Output Parquet (measured in docs/resettle.md): integers delta-encoded without dictionaries (an
# amount rarely repeats enough to pay for the hash; runs of zeros and the ascending row pack to
# a few bits), the string keys with dictionaries, LZ4.
_DICT_COLUMNS = ["insutype", "region", "psn_cats", "medins_lv", "med_type", "old_version", "old_status", "new_version",
                 "new_status"]


def _write_options(table: pa.Table, row_group_size=None) -> dict:
    ints = [f.name for f in table.schema if pa.types.is_integer(f.type)]
    strings = [f.name for f in table.schema if f.name in _DICT_COLUMNS]
    opts = {"compression": "lz4", "use_dictionary": strings,
            "column_encoding": {name: "DELTA_BINARY_PACKED" for name in ints}}
    if row_group_size:
        opts["row_group_size"] = row_group_size
    return opts


def _read_ipc(files, threads=True) -> pa.Table:
    options = pa.ipc.IpcReadOptions(use_threads=threads)
    tables = []
    for f in files:
        with pa.memory_map(str(f)) as source:
            t = pa.ipc.open_file(source, options=options).read_all()
        # decode the dictionary columns of pass 1: the partition is the visits as checked
        tables.append(t.cast(pa.schema([pa.field(x.name, x.type.value_type) if pa.types.is_dictionary(x.type) else x
                                        for x in t.schema])))
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def settle_part_files(plan: Plan, work: str, part: int, threads: bool = True) -> tuple:
    """Pass 2 for one partition, from its pass-1 files to its output parts. Returns the small
    results (summary partial, histogram, gains partial); the per-visit and per-person tables go to files."""
    d = Path(work) / f"p{part:04d}"
    files = sorted(d.glob("c*.arrow")) if d.exists() else []
    if not files:
        return None, add_histograms([]), None
    visits = _read_ipc(files, threads)
    lines = None
    if plan.lines:
        line_files = sorted(d.glob("l*.arrow"))
        lines = _read_ipc(line_files, threads).sort_by(_LINE) if line_files else _empty_lines()
    per_visit, persons, summary, hist, gains = settle_partition(plan, visits, lines)
    del visits, lines
    out = Path(work) / "out"
    (out / "visits").mkdir(parents=True, exist_ok=True)
    (out / "persons").mkdir(parents=True, exist_ok=True)
    pq.write_table(per_visit, out / "visits" / f"part-{part:04d}.parquet", **_write_options(per_visit, 256_000))
    del per_visit
    pq.write_table(persons, out / "persons" / f"part-{part:04d}.parquet", **_write_options(persons))
    return summary, hist, gains


def _empty_lines():
    return pa.table({name: pa.array([], typ) for name, typ, _, _ in LINE_FIELDS} | {_LINE: pa.array([], pa.int64())})


# --- the whole run, in one process ----------------------------------------------------------

@dataclass
class Outcome:
    """What a run produced: the output directory, the summary and the persons' histogram."""
    out: Path
    summary: pa.Table
    histogram: dict
    rows: int
    partitions: int
    gains: pa.Table | None = None      # who gains, by region and categories (GAIN_KEYS)


def prepare_work(out_dir) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    work.mkdir()
    return out, work


def finish(work: Path, out: Path, plan: Plan, results: list, rows: int, n_parts: int, report=None) -> Outcome:
    """Combine the partitions' small results (summary, histogram, gains), write summary.parquet,
    gains.parquet and meta, then move out/ into place (replacing an older run)."""
    summary = combine_summaries([r[0] for r in results])
    hist = add_histograms([r[1] for r in results])
    gains = combine_summaries([r[2] for r in results], GAIN_KEYS)
    final = work / "out"
    (final / "visits").mkdir(parents=True, exist_ok=True)
    (final / "persons").mkdir(parents=True, exist_ok=True)
    if summary is None:
        summary = empty_summary()
    if gains is None:
        gains = empty_gains()
    pq.write_table(summary, final / "summary.parquet")
    pq.write_table(gains, final / "gains.parquet")
    (final / "meta.json").write_text(json.dumps({"plan": plan.as_dict(), "rows": rows, "partitions": n_parts,
                                                 "histogram": hist}, indent=1, default=str))
    if report is not None:
        report(final)
    if out.exists():
        shutil.rmtree(out)
    final.replace(out)
    shutil.rmtree(work, ignore_errors=True)
    return Outcome(out, summary, hist, rows, n_parts, gains)


def empty_gains() -> pa.Table:
    return pa.table(
        {"region": pa.array([], pa.string()), "psn_cats": pa.array([], pa.string())}
        | {c: pa.array([], pa.int64()) for c in ("persons", "persons_owed", "owed", "persons_recovered", "recovered")})


def empty_summary() -> pa.Table:
    cols = {k: pa.array([], pa.string()) for k in KEYS if k != "month"} | {"month": pa.array([], pa.int32())}
    cols["visits"] = pa.array([], pa.int64())
    cols["medfee_sumamt"] = pa.array([], pa.int64())
    for c in COMPARED:
        for p in ("old_", "new_", "delta_"):
            cols[p + c] = pa.array([], pa.int64())
        if c in FUNDS or c == "fund_pay_sumamt":
            cols[f"old_n_{c}"] = pa.array([], pa.int64())
            cols[f"new_n_{c}"] = pa.array([], pa.int64())
    return pa.table({k: cols[k] for k in KEYS} | {k: v for k, v in cols.items() if k not in KEYS})


def check_plan(plan: Plan) -> tuple[int, int, list]:
    """Refuse a plan that cannot run, before anything is written: files, packs (compiled here),
    the old results' row count. Returns (rows, partitions, pass-1 chunks) of the visits file."""
    if (plan.old is None) == (plan.old_results is None):
        raise ValueError("give either the old policy or the old results, not both or neither")
    for p in (plan.visits, plan.old_results, plan.lines):
        if p and not Path(p).exists():
            raise InputError("path", "no such file", str(p))
    if Path(plan.visits).suffix.lower() != ".parquet":
        raise InputError("path", "re-settlement reads Parquet (row groups bound its memory)", str(plan.visits))
    plan.new.settler()                      # a bad pack fails here, before any work starts
    if plan.old is not None:
        plan.old.settler()
    n_rows = pq.ParquetFile(plan.visits).metadata.num_rows
    if plan.old_results:
        n_old = pq.ParquetFile(plan.old_results).metadata.num_rows
        if n_old != n_rows:
            raise InputError("mdtrt_id", f"the results file has {n_old} rows, the visits file {n_rows}",
                             None, source=str(plan.old_results))
    n_parts = plan.n_partitions or n_partitions_for(n_rows, plan.partition_rows)
    return n_rows, n_parts, chunks_of(plan.visits, max(1, plan.partition_rows))


# Below this many visits a run stays in one process (starting workers costs more than it saves).
MIN_ROWS_PER_PROCESS = 250_000


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def processes_for(plan: Plan, n_rows: int, n_parts: int) -> int:
    """Worker processes of a single-machine run: plan.processes, else one per usable core, at most
    one per partition and one per MIN_ROWS_PER_PROCESS visits."""
    if plan.processes:
        return max(1, plan.processes)
    return max(1, min(usable_cpus(), n_parts, n_rows // MIN_ROWS_PER_PROCESS))


def _carried(fn, *args):
    """Run fn; an InputError comes back as its fields (it does not survive pickling as an exception)."""
    try:
        return {"ok": fn(*args)}
    except InputError as e:
        return {"error": (e.field, e.rule, e.value, e.row, e.line, e.mdtrt_id, e.source)}


def _raise_carried(result):
    if "error" in result:
        field, rule, value, row, line, mdtrt_id, source = result["error"]
        raise InputError(field, rule, value, row=row, line=line, mdtrt_id=mdtrt_id, source=source)
    return result["ok"]


def _settle_and_clean(plan, work, part, threads=True):
    result = settle_part_files(plan, work, part, threads)
    shutil.rmtree(Path(work) / f"p{part:04d}", ignore_errors=True)
    return result


def _check_and_clean(plan, work, bucket, n_buckets):
    result = check_bucket(plan, work, bucket, n_buckets)
    shutil.rmtree(Path(work) / f"lb{bucket:04d}", ignore_errors=True)
    return result


def line_chunks(plan: Plan) -> list:
    """Runs of the line items' row groups, one task each (as many lines a run as visits a partition)."""
    return chunks_of(plan.lines, max(1, plan.partition_rows)) if plan.lines else []


def run_tasks(pool, fn, tasks: list, advance=None) -> list:
    """fn(*args) for every args in tasks, in the pool (or here, in order, when pool is None).
    Results in task order. An InputError is raised for the first failing task in task order (the
    error a run one task after another reports); tasks after it are cancelled, every task already
    running is waited for (none may still write into the work directory when it is removed)."""
    if pool is None:
        results = []
        for args in tasks:
            results.append(fn(*args))
            if advance:
                advance()
        return results
    from concurrent.futures import as_completed
    futures = {pool.submit(_carried, fn, *args): k for k, args in enumerate(tasks)}
    by_index = {k: f for f, k in futures.items()}
    results, failed = [None] * len(tasks), None
    for f in as_completed(futures):
        if f.cancelled():
            continue
        k = futures[f]
        r = f.result()
        if "error" in r:
            if failed is None or k < failed:
                failed = k
                for j in range(k + 1, len(tasks)):
                    by_index[j].cancel()
            continue
        results[k] = r["ok"]
        if advance:
            advance()
    if failed is not None:
        _raise_carried(by_index[failed].result())
    return results


def _pool(processes: int):
    """A process pool of `processes` workers, or None for one (the run stays in this process).
    Workers are forked where the platform allows it: they inherit the compiled packs."""
    if processes <= 1:
        return contextlib.nullcontext(None)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(method))


def run_passes(plan: Plan, work: Path, n_parts: int, chunks: list, stage, threads: bool) -> list:
    """The re-settlement's task stages in order, each run by stage(label, fn, tasks) -> results in
    task order (raising the first task's error in task order): split visits by person, split line
    items by visit, check visit ids (and route lines) per bucket, settle each partition old and new.
    The partitions' results, for finish(). One sequence for worker processes and for Dask."""
    stage("split by person", partition_chunk,
          [(plan, str(work), c, n_parts, k, threads) for k, c in enumerate(chunks)])
    if plan.lines:
        stage("split line items by visit", split_lines_chunk,
              [(plan, str(work), c, n_parts, k, threads) for k, c in enumerate(line_chunks(plan))])
    checked = stage("check visit ids" + (", route lines" if plan.lines else ""), _check_and_clean,
                    [(plan, str(work), b, n_parts) for b in range(n_parts)])
    raise_bucket_errors(checked, plan)
    return stage(f"settle old and new, {n_parts} partitions", _settle_and_clean,
                 [(plan, str(work), p, threads) for p in range(n_parts)])


def resettle(plan: Plan, out_dir, progress=None, report=None) -> Outcome:
    """Run both passes on this machine: in this process, or in plan.processes worker processes
    (default: one per core for a large file). progress: optional rich Progress."""
    n_rows, n_parts, chunks = check_plan(plan)
    out, work = prepare_work(out_dir)
    try:
        processes = processes_for(plan, n_rows, n_parts)
        threads = processes == 1           # one worker per core: no Arrow threads within a task
        with _pool(processes) as pool:
            def stage(label, fn, tasks):
                if processes > 1 and fn is partition_chunk:
                    label += f" ({processes} processes)"
                task = progress.add_task(label, total=len(tasks)) if progress else None
                return run_tasks(pool, fn, tasks, (lambda: progress.update(task, advance=1)) if progress else None)
            results = run_passes(plan, work, n_parts, chunks, stage, threads)
        return finish(work, out, plan, results, n_rows, n_parts, report)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def resettle_tables(new, visits: pa.Table, old=None, old_results: pa.Table | None = None,
                    lines: pa.Table | None = None):
    """In memory, for a table that fits: (per-visit, per-person, summary, histogram, gains).

    new/old: PolicySpec. old_results: a results table row for row with visits (instead of old)."""
    plan = Plan(visits="<table>", new=new, old=old, old_results="<table>" if old_results is not None else None,
                lines="<table>" if lines is not None else None)
    n = visits.num_rows
    cols = _check_columns(visits, VISIT_FIELDS + (PRECOMPUTED_FIELDS if lines is None else []), 1, "visits")
    table = pa.table({**cols, _ROW: pa.array(np.arange(1, n + 1, dtype=np.int64))})
    if old_results is not None:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            pq.write_table(old_results, Path(d) / "old.parquet")
            table = _attach_old(table, str(Path(d) / "old.parquet"), 0, "visits")
    if lines is not None:
        lines = lines.append_column(_LINE, pa.array(np.arange(1, lines.num_rows + 1, dtype=np.int64)))
    return settle_partition(plan, table, lines)


# --- fund figures: ratios and surplus ------------------------------------------------------

def totals(summary: pa.Table) -> dict:
    """Column sums of a summary (or of a filtered one)."""
    return {c: int(pc.sum(summary.column(c)).as_py() or 0) for c in summary.column_names if c not in KEYS}


def surplus(spent_old: int, spent_new: int, income: int, carried: int = 0) -> dict:
    """Current-year and cumulative surplus ratios (bp) before and after, against 15% / 25%.

    current = (income - spending) / income; cumulative = (carried + income - spending) / income."""
    def ratio(x):
        return (x * 10000) // income if income else 0
    out = {}
    for side, spent in (("old", spent_old), ("new", spent_new)):
        cur, cum = ratio(income - spent), ratio(carried + income - spent)
        out[side] = {"spent": spent, "current_bp": cur, "cumulative_bp": cum}
    warnings = []
    for side, word in (("old", "before"), ("new", "after")):
        cur, cum = out[side]["current_bp"], out[side]["cumulative_bp"]
        if cur > SURPLUS_LIMIT_BP:
            warnings.append(f"{word} the change: current-year surplus {cur / 100:.2f}% is above the 15% limit")
        if cum > CUMULATIVE_LIMIT_BP:
            warnings.append(f"{word} the change: cumulative surplus {cum / 100:.2f}% is above the 25% limit")
        if cur < 0:
            warnings.append(f"{word} the change: the fund spends more than its income (current-year deficit "
                            f"{-cur / 100:.2f}%)")
        if cum < 0:
            warnings.append(f"{word} the change: the accumulated balance is exhausted ({cum / 100:.2f}%)")
    out["warnings"] = warnings
    return out


# --- CLI --------------------------------------------------------------------------------------

def add_subcommands(sub) -> None:
    r = sub.add_parser("resettle", help="re-settle visits under another version, pack or draft: deltas and fund impact",
                       description=__doc__.split("\n\n")[0])
    r.add_argument("visits", help="visits Parquet (precomputed amounts, or with --lines)")
    r.add_argument("--lines", help="line items Parquet")
    r.add_argument("--old-results", help="results Parquet of `medsettle settle` for the same visits (the old side)")
    r.add_argument("--old-pack", help="pack (or draft) of the old side, when no --old-results (default: sample rural)")
    r.add_argument("--old-version", help="version (ID or SCHEME:ID) governing every date on the old side")
    r.add_argument("--new-pack", help="pack or draft TOML of the new side (default: the old pack)")
    r.add_argument("--new-version", help="version (ID or SCHEME:ID) governing every date on the new side")
    r.add_argument("--catalogue", help="catalogue CSV/Parquet (default: the shipped sample)")
    r.add_argument("--out", default="out/resettle", help="output directory (default %(default)s)")
    r.add_argument("--partition-rows", type=int, default=DEFAULT_PARTITION_ROWS,
                   help="visits per partition: bounds memory (default %(default)s)")
    r.add_argument("--processes", type=int, default=0,
                   help="worker processes on this machine (default 0: one per core for a large file, else 1)")
    r.add_argument("--fund-income", type=yuan_arg(), help="the fund's income for the year, yuan (at most 2 decimals): "
                   "surplus ratios")
    r.add_argument("--carried-surplus", type=yuan_arg(signed=True), default=0,
                   help="accumulated balance at the start of the year, yuan (negative: a deficit carried)")
    r.add_argument("--enrollees", type=int, help="persons enrolled: benefit coverage (person-times / enrollees)")
    r.add_argument("--region", help="region.json of `medsettle synth`: county names, enrollees per county (coverage "
                   "by county) and, unless given, --enrollees and --fund-income")
    r.add_argument("--fund-layers", default=",".join(DEFAULT_FUND_LAYERS),
                   help="fund columns the pooled fund pays, for the surplus (default %(default)s)")
    r.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786), or 'local' for a LocalCluster")
    r.add_argument("--workers", type=int, default=2, help="workers of a local Dask cluster (default %(default)s)")
    r.add_argument("--report", choices=["html", "png", "both", "none"], default="html",
                   help="report file(s) in the output directory (default %(default)s)")
    r.set_defaults(func=cmd_resettle)

    from .region import add_subcommands as add_region
    add_region(sub)


def yuan_arg(signed=False):
    """An argparse type: yuan written as decimals ("648000000", "1234.5", "-90000.25") to exact fen;
    more than two decimals, or a sign where none may be, is refused (money never passes a float)."""
    import argparse
    from .policy import fen_of_yuan

    def parse(text: str) -> int:
        text = text.strip().replace(",", "")
        negative = signed and text.startswith("-")
        try:
            fen = fen_of_yuan(text[1:] if negative else text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"yuan with at most two decimals, e.g. 648000000 or 1234.56, "
                                             f"got {text!r}") from None
        return -fen if negative else fen
    return parse


def plan_from_args(args) -> Plan:
    catalogue = args.catalogue
    new_pack = args.new_pack or args.old_pack
    if args.old_results and (args.old_pack or args.old_version):
        raise InputError("--old-results", "give the old results or the old pack/version, not both", args.old_results)
    if not args.new_pack and not args.new_version:
        raise InputError("--new-pack", "say what to re-settle under: --new-pack and/or --new-version", None)
    old = None if args.old_results else PolicySpec(args.old_pack, args.old_version, catalogue)
    layers = [c.strip() for c in args.fund_layers.split(",") if c.strip()]
    for c in layers:
        if c not in FUNDS:
            raise InputError("--fund-layers", f"not a fund column (known: {', '.join(FUNDS)})", c)
    return Plan(visits=args.visits, new=PolicySpec(new_pack, args.new_version, catalogue), old=old,
                old_results=args.old_results, lines=args.lines, partition_rows=args.partition_rows,
                processes=max(0, args.processes), fund_layers=layers)


def cmd_resettle(args) -> int:
    from .cli import _phases, console, err
    from . import report as rep
    plan = plan_from_args(args)
    region = (rep.read_region(args.region) if args.region
              else {"counties": [], "enrollees": None, "fund_income": None})
    income = args.fund_income if args.fund_income is not None else region["fund_income"]
    funding = rep.Funding(income=income, carried=args.carried_surplus, enrollees=args.enrollees or region["enrollees"],
                          layers=plan.fund_layers, counties=region["counties"])
    kinds = {"html": ["html"], "png": ["png"], "both": ["html", "png"], "none": []}[args.report]

    def write_report(final: Path):
        rep.write_reports(final, kinds, plan, funding)

    with _phases(0) as progress:
        if args.scheduler:
            from .scaleout import resettle_dask
            outcome = resettle_dask(plan, args.out, args.scheduler, n_workers=args.workers,
                                    progress=progress, report=write_report)
        else:
            outcome = resettle(plan, args.out, progress=progress, report=write_report)
    rep.print_summary(console, outcome, plan, funding)
    err.print(f"written to {outcome.out}/ ({outcome.rows:,} visits, {outcome.partitions} partitions)")
    return 0
