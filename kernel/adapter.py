"""Visits and line items (Arrow) -> validated, typed column arrays the Cython kernel takes.

Everything here is vectorised (numpy / pyarrow.compute) or loops over distinct values only; the
per-visit work is the kernel's. Every check of SETTLEMENT.md section 9 that a file can fail is
made here, before anything is computed, and raises InputError naming the field, the row (1-based
visit row) or line, the rule and the value.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import mmap
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _pool
from ._itemize import itemize_one
from .compile import NO_DATE, as_days
from .errors import InputError
from .layout import ITEM_COLS
from .policy import ADMDVS
from .schema import LINE_FIELDS, PRECOMPUTED_FIELDS, VISIT_FIELDS

# Largest amount accepted, in fen (10 billion yuan): amount * 10000 bp stays far inside int64.
MAX_MONEY = 10**12
MAX_COUNT = 10**9

_I = {name: i for i, name in enumerate(ITEM_COLS)}
_GOVERNING_FIELD = {"admission": "begndate", "discharge": "enddate", "settlement": "setl_time"}
N_ITEM = len(ITEM_COLS)


@dataclass
class Prepared:
    """Kernel inputs for n visits, in processing order (each person's visits in settlement-time order)."""
    order: np.ndarray            # int64: processing position -> input row
    in_input_order: bool         # order is the identity: no permutation anywhere
    item: np.ndarray             # int64 (N_ITEM, n)
    rule: np.ndarray             # int32
    group: np.ndarray            # int16
    cats: np.ndarray             # int16
    cause: np.ndarray            # int8
    out_area: np.ndarray         # int8
    referral: np.ndarray         # int8
    bed_days: np.ndarray         # int32
    acct_used: np.ndarray        # int8
    acc_slot: np.ndarray         # int32
    psn_slot: np.ndarray         # int32
    balance: np.ndarray          # int64 per person slot: the opening balance
    psn_names: pa.Array          # psn slot -> psn_no
    slot_psn: np.ndarray         # acc slot -> psn slot
    slot_scheme: np.ndarray      # acc slot -> scheme index
    slot_year: np.ndarray        # acc slot -> calendar year
    version: np.ndarray          # int32 compiled version per visit
    year: np.ndarray             # int32 accumulator year per visit


# --- large arrays ----------------------------------------------------------------------------------

_HUGE_BYTES = 1 << 24


def empty_large(shape, dtype) -> np.ndarray:
    """np.empty, on transparent huge pages when large. A large batch's arrays are written once,
    front to back (the kernel's out columns with streaming stores): first touch of 4 KiB pages
    costs more than the writing itself on these VMs, and THP is madvise-only. Inside the batch
    path numpy allocates from kernel._pool instead (blocks kept for the next batch)."""
    if _pool.active():
        return np.empty(shape, dtype)
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    nbytes = count * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < _HUGE_BYTES or advice is None:
        return np.empty(shape, dtype)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(advice)
    return np.frombuffer(region, dtype, count=count).reshape(shape)


class _Background:
    """fn() on another thread, for a large batch (the string hashing releases the GIL): prepare
    overlaps its string hashings (visit ids, persons, code columns) with its numpy work."""

    def __init__(self, fn, background: bool):
        self._value = self._error = None
        # in a copy of the caller's context: numpy allocates from the caller's allocator (kernel._pool)
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run, fn),
                                        daemon=True) if background else None
        if self._thread is None:
            self._run(fn)
        else:
            self._thread.start()

    def _run(self, fn):
        try:
            self._value = fn()
        except BaseException as e:      # re-raised on the caller's thread
            self._error = e

    def result(self):
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


_BACKGROUND_ROWS = 200_000


# --- column access -------------------------------------------------------------------------------

# A number column (money in fen, a quantity, days, a flag) given as floating point: refused even when
# every value is whole (10000.0), since a float near money is a bug (SETTLEMENT.md section 2).
FLOAT_RULE = "must be a whole number (int64), not floating point: a float near money is a bug"


def _column(table: pa.Table, name, typ, required, source, default=None, combine=True, numbered="row"):
    """The column as a combined Array of `typ` (as a ChunkedArray when not combine), or None when
    optional and absent. Errors name the field, the value and its row (numbered="line": its line)."""
    if name not in table.column_names:
        if required:
            raise InputError(name, "required column is missing", None, source=source)
        return None
    col = table.column(name)
    if pa.types.is_floating(col.type) and (pa.types.is_integer(typ) or pa.types.is_boolean(typ)):
        i = int(np.flatnonzero(~np.asarray(col.is_null(), dtype=bool))[0]) if col.null_count < len(col) else 0
        raise InputError(name, FLOAT_RULE, col[i].as_py(), **{numbered: i + 1}, source=source)
    if col.type != typ:
        try:
            col = col.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            at, value = _first_uncastable(col, typ)
            raise InputError(name, f"must be {typ}", value, **{numbered: at}, source=source) from None
    if combine and isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()     # one chunk: no copy
    if required and col.null_count:
        at = int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise InputError(name, "required value is missing", None, **{numbered: at + 1}, source=source)
    return col


def _first_uncastable(col, typ):
    for i, v in enumerate(col.to_pylist()):
        try:
            pa.array([v]).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return i + 1, v
    return None, None


def _ints(col, dtype, default=0):
    """Arrow integer/bool column -> numpy, nulls -> default."""
    if col is None:
        return None
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    if col.null_count:                      # else the column's own buffer, read-only, no copy
        col = col.fill_null(default)
    return np.asarray(col, dtype=dtype)


def _money_rule(v):
    return "must not be negative" if v < 0 else f"overflow: above {MAX_MONEY} fen"


class _OneBased:
    """Row (or line) numbers 1..n without allocating them: number[i] == i + 1."""
    def __getitem__(self, i):
        return i + 1


ONE_BASED = _OneBased()


def _check_money(values, name, source, rows=None, lines=None):
    if values.dtype == np.int64:        # one pass: a negative amount is above MAX_MONEY as unsigned
        bad = np.flatnonzero(values.view(np.uint64) > MAX_MONEY)
    else:
        bad = np.flatnonzero((values < 0) | (values > MAX_MONEY))
    if bad.size:
        i = int(bad[0])
        v = int(values[i])
        raise InputError(name, _money_rule(v), v, row=None if rows is None else int(rows[i]),
                         line=None if lines is None else int(lines[i]), source=source)


def _check_money_one(v, name, source, row=None, line=None):
    if v < 0 or v > MAX_MONEY:
        raise InputError(name, _money_rule(v), int(v), row=row, line=line, source=source)


def _known(index, col, name, mapping, source):
    """index (from the compiled pack's lookups, -1 = unknown) or InputError at the first unknown."""
    bad = np.flatnonzero(index < 0)
    if bad.size:
        i = int(bad[0])
        raise InputError(name, f"unknown code (known: {', '.join(map(str, mapping))})", col[i].as_py(),
                         row=i + 1, source=source)
    return index


# --- visits ---------------------------------------------------------------------------------------
# prepare() = prepare_for_pack(prepare_visits()). The first part does everything a pack does not
# change (column checks, duplicate ids, dates, amounts, processing order), once; the second maps the
# codes of one pack (schemes, med types, levels, causes, categories, versions, rules, disease groups,
# accumulator slots). A re-settlement prepares a batch once and settles it under two packs.
# The checks are made in the order prepare() has always made them: an error of the first part that
# comes after a pack check in that order is held and raised by the second part at its place.

_CODE_COLUMNS = ("insutype", "med_type", "medins_lv", "inj_cause", "psn_cats", "insu_admdvs", "mdtrt_admdvs",
                 "fixmedins_type")


@dataclass
class VisitBatch:
    """The pack-independent part of prepare(): checked columns, dates, amounts, processing order."""
    n: int
    source: str
    line_source: str
    col: dict                    # name -> typed Arrow Array (None when an optional column is absent)
    codes: dict                  # code column -> (dictionary, int32 indices with -1 for null)
    lines: pa.Table | None
    end: np.ndarray              # int64 days
    begin: np.ndarray
    setl: np.ndarray
    birth: tuple | None          # (year, month * 32 + day, missing) of brdy, or None
    begin_after_end: int         # first row (0-based) with begndate > enddate, or -1
    filed: np.ndarray | None
    tail_error: InputError | None    # ipt_days, acct_balc, then (without lines) amounts and total
    item: np.ndarray | None      # (N_ITEM, n) in processing order (precomputed amounts), else None
    order: np.ndarray            # processing position -> input row
    in_input_order: bool         # order is the identity (settlement times never go back in the input)
    psn_idx: np.ndarray          # int64 person per visit (input order)
    psn_names: pa.Array
    balance: np.ndarray
    psn_slot: np.ndarray         # processing order
    referral: np.ndarray
    bed_days: np.ndarray
    acct_used: np.ndarray
    cache: dict                  # per-gov and per-key results shared between packs
    id_columns: tuple = ()       # the input's mdtrt_id and psn_no columns, as given (for results)


def prepare(compiled, catalogue, visits: pa.Table, lines: pa.Table | None, source="visits",
            line_source="lines", opening_acc=None) -> Prepared:
    """Validate and convert; raises InputError on the first bad value, before anything is computed."""
    return prepare_for_pack(compiled, catalogue, prepare_visits(visits, lines, source, line_source))


def _encode(arr):
    """(dictionary, int32 indices with -1 for null) of a string column, as dictionary_encode gives them."""
    enc = arr.dictionary_encode()
    return enc.dictionary, _indices(enc.indices)


def _indices(idx) -> np.ndarray:
    return np.asarray(idx.fill_null(-1) if idx.null_count else idx).astype(np.int32, copy=False)


def ascends(arr) -> bool:
    """Whether every string of arr (an Array) is greater than the one before, with no null: then no
    two are equal. One Arrow comparison per row (25 ms at 10M), no hashing."""
    n = len(arr)
    return arr.null_count == 0 and (n < 2 or pc.all(pc.greater(arr.slice(1), arr.slice(0, n - 1))).as_py())


def _all_distinct(arr) -> bool:
    """Whether no string of arr (without nulls) repeats. A file whose visit ids ascend (ids given
    out in sequence, an extract sorted by id) needs no hash table of every id (1.2 s at 10M)."""
    return ascends(arr) or len(pc.unique(arr)) == len(arr)


def string_codes(arr):
    """(int32 code per row, -1 for null; first row of each distinct string) of a string Array: the
    indices and dictionary order of arr.dictionary_encode(). Its codes are numbered in order of first
    appearance, so a code's first row is where the running maximum of the codes reaches it."""
    idx = _indices(arr.dictionary_encode().indices)
    if idx.size == 0:
        return idx, np.zeros(0, np.int64)
    running = np.maximum.accumulate(idx)
    first = np.flatnonzero(running > np.concatenate(([-1], running[:-1])))
    return idx, first


def _civil_arith(days):
    """(year, month, day) of int64 days since 1970-01-01, proleptic Gregorian (as numpy's datetime64)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = yoe + era * 400 + (m <= 2)
    return y, m, d


def _civil(days, small=False):
    """(year, month, day) of int64 days since 1970-01-01: computed once per day of the range the
    dates span (visit dates span a year or a few, birth dates a century), then looked up.
    small: int16 arrays where they fit (prepare's own arithmetic), else int64."""
    days = np.asarray(days, dtype=np.int64)
    if days.size < 4096:
        return _civil_arith(days)
    lo, hi = int(days.min()), int(days.max())
    if hi - lo > 400_000:
        return _civil_arith(days)
    y, m, d = _civil_arith(np.arange(lo, hi + 1, dtype=np.int64))
    at = days - lo
    if small and 0 <= y[0] and y[-1] < 10000:
        # int16 for the per-visit gathers: years 0..9999 (and their differences), month * 32 + day fit
        y, m, d = y.astype(np.int16), m.astype(np.int16), d.astype(np.int16)
    return y[at], m[at], d[at]


def _processing_order(psn_idx, setl_sec):
    """(order, is the identity). The kernel needs each person's visits in (settlement time, input
    row) order and nothing else: when settlement times never go back in the input (a file in time
    order) or the input is already by person then time, input order is that order and nothing is
    permuted; otherwise lexsort((arange, setl_sec, psn_idx)): person, then time, ties in input order."""
    n = len(psn_idx)
    identity = np.arange(n, dtype=np.int64)
    if n < 2 or not np.any(setl_sec[1:] < setl_sec[:-1]):
        return identity, True
    same = psn_idx[1:] == psn_idx[:-1]
    if np.all(psn_idx[1:] >= psn_idx[:-1]) and not np.any(same & (setl_sec[1:] < setl_sec[:-1])):
        return identity, True
    del same
    return _person_time_order(psn_idx, setl_sec), False


def _person_time_order(psn_idx, setl_sec):
    n = len(psn_idx)
    if n:
        lo, hi = int(setl_sec.min()), int(setl_sec.max())
        span = hi - lo + 1
        if 0 < span and (int(psn_idx.max()) + 1) * span < 2**62:
            return np.argsort(psn_idx * span + (setl_sec - lo), kind="stable")
    return np.lexsort((np.arange(n), setl_sec, psn_idx))


def prepare_visits(visits: pa.Table, lines: pa.Table | None = None, source="visits",
                   line_source="lines") -> VisitBatch:
    """The pack-independent part of prepare(). Raises the errors that prepare() raises before any
    pack lookup (a missing or mistyped column, a missing required value, a duplicate visit id);
    later ones are held for prepare_for_pack."""
    n = visits.num_rows
    col = {name: _column(visits, name, typ, required, source) for name, typ, required, _ in VISIT_FIELDS}

    ids = col["mdtrt_id"]
    # the duplicate-id check and the person numbering hash strings on other threads; nothing
    # between here and the check's result raises (later errors are held), so the order of errors stands
    background = n >= _BACKGROUND_ROWS
    psn_encoded = _Background(lambda: string_codes(col["psn_no"]), background)
    distinct = _Background(lambda: n if _all_distinct(ids) else -1, background)
    # so do the code columns' dictionaries (read by prepare_for_pack only; _encode never raises)
    encoded = _Background(lambda: {name: _encode(col[name]) for name in _CODE_COLUMNS if col[name] is not None},
                          background)

    end = as_days(col["enddate"])
    begin = end if col["begndate"] is None else as_days(col["begndate"])
    begin = np.where(begin == NO_DATE, end, begin)
    setl = as_days(col["setl_time"])
    bad = np.flatnonzero(begin > end)
    birth = None
    if col["brdy"] is not None:
        b = as_days(col["brdy"])
        missing = b == NO_DATE
        by, bm, bd = _civil(np.where(missing, 0, b), small=True)
        birth = (by, bm * 32 + bd, missing)

    filed = _ints(col["out_filing_flag"], np.int8)
    referral = _ints(col["refl_flag"], np.int8)
    referral = np.zeros(n, np.int8) if referral is None else referral
    if col["psn_fst_medins_code"] is not None and col["fixmedins_code"] is not None:
        # at the person's own first-visit institution (首诊/签约机构) no referral is needed
        at_first = pc.fill_null(pc.equal(col["fixmedins_code"], col["psn_fst_medins_code"]), False)
        referral = referral | np.asarray(at_first, np.int8)
    bed_days = _ints(col["ipt_days"], np.int32)
    bed_days = np.zeros(n, np.int32) if bed_days is None else bed_days
    acct_used = _ints(col["acct_used_flag"], np.int8)
    acct_used = np.zeros(n, np.int8) if acct_used is None else acct_used
    opening = _ints(col["acct_balc"], np.int64)
    opening = np.zeros(n, np.int64) if opening is None else opening

    # held errors, in prepare()'s order: bed days, opening balance, then the amounts and the total
    item, tail_error = None, None
    try:
        bad_days = np.flatnonzero(bed_days < 0)
        if bad_days.size:
            raise InputError("ipt_days", "must not be negative", int(bed_days[bad_days[0]]),
                             row=int(bad_days[0]) + 1, source=source)
        _check_money(opening, "acct_balc", source, rows=ONE_BASED)
        if lines is None:
            item = _precomputed(visits, n, source)
            _check_declared(col, item, ids, n, source)
    except InputError as e:
        tail_error, item = e, None

    if distinct.result() != n:
        psn_encoded.result()
        encoded.result()
        counts = pc.value_counts(ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        row = int(np.flatnonzero(np.asarray(pc.equal(ids, dup)))[1]) + 1
        raise InputError("mdtrt_id", "duplicate visit id", dup.as_py() if hasattr(dup, "as_py") else dup,
                         row=row, source=source)

    # processing order: each person's visits in settlement-time order (ties keep input order)
    psn_codes, psn_first = psn_encoded.result()
    psn_idx = psn_codes.astype(np.int64)
    del psn_codes
    setl_sec = np.asarray(col["setl_time"].cast(pa.timestamp("s")).cast(pa.int64()))
    order, in_input_order = _processing_order(psn_idx, setl_sec)
    del setl_sec
    psn_names = col["psn_no"].take(pa.array(psn_first))
    # opening balance of a person: acct_balc on their first visit in processing order. In input
    # order that is the row where the person first appears (psn_first); otherwise the order groups
    # each person's visits, persons ascending, so a person's first is where their run starts.
    if in_input_order:
        first = psn_first
    else:
        starts = np.zeros(len(psn_names), np.int64)
        np.cumsum(np.bincount(psn_idx, minlength=len(psn_names))[:-1], out=starts[1:])
        first = order[starts]
    balance = opening[first].astype(np.int64)

    def take(a, dtype):
        return _in_order(a, order, in_input_order, dtype)

    return VisitBatch(
        n=n, source=source, line_source=line_source, col=col, codes=encoded.result(), lines=lines,
        end=end, begin=begin, setl=setl, birth=birth, begin_after_end=int(bad[0]) if bad.size else -1,
        filed=filed, tail_error=tail_error,
        item=None if item is None else _in_order(item, order, in_input_order), order=order,
        in_input_order=in_input_order, psn_idx=psn_idx,
        psn_names=psn_names, balance=balance, psn_slot=take(psn_idx, np.int32),
        referral=take(referral, np.int8), bed_days=take(bed_days, np.int32), acct_used=take(acct_used, np.int8),
        cache={}, id_columns=(visits.column("mdtrt_id"), visits.column("psn_no")))


def _in_order(a, order, in_input_order, dtype=None):
    """a (1-D, or 2-D by column) in processing order, contiguous; a itself when no permutation is needed."""
    if in_input_order:
        return np.ascontiguousarray(a, dtype=dtype)
    if a.ndim == 2:
        return np.take(a, order, axis=1)
    return np.ascontiguousarray(a[order], dtype=dtype)


def _check_declared(col, item, ids, n, source):
    """medfee_sumamt, when given: a valid amount, and the sum of the lines (or amounts)."""
    if col["medfee_sumamt"] is None:
        return
    given = ~np.asarray(col["medfee_sumamt"].is_null(), dtype=bool)
    declared = _ints(col["medfee_sumamt"], np.int64)
    _check_money(declared, "medfee_sumamt", source, rows=ONE_BASED)
    bad = np.flatnonzero(given & (declared != item[_I["I_MEDFEE"]]))
    if bad.size:
        i = int(bad[0])
        raise InputError("medfee_sumamt", f"total is not the sum of the lines ({int(item[_I['I_MEDFEE']][i])})",
                         int(declared[i]), row=i + 1, mdtrt_id=ids[i].as_py(), source=source)


def _codes_of(batch, name, lookup, mapping, null):
    """Per-visit index of a code column under one pack, from its dictionary; -1 unknown."""
    if name not in batch.codes:
        return None
    dictionary, idx = batch.codes[name]
    table = np.append(np.asarray(lookup(dictionary)).astype(np.int16), np.int16(null))   # a few codes: int16
    return table[idx]


def _known_codes(batch, name, lookup, mapping, null=-1):
    index = _codes_of(batch, name, lookup, mapping, null)
    return _known(index, batch.col[name], name, mapping, batch.source)


def prepare_for_pack(compiled, catalogue, batch: VisitBatch) -> Prepared:
    """The pack-dependent part of prepare(): codes, versions, rules, groups, accumulator slots."""
    n, source, col, pack = batch.n, batch.source, batch.col, compiled.pack
    order = batch.order

    scheme = _known_codes(batch, "insutype", compiled.scheme_of, compiled.scheme_index)
    med_type = _known_codes(batch, "med_type", compiled.med_type_of, compiled.med_type_index)
    level = _known_codes(batch, "medins_lv", compiled.level_of, compiled.level_index)
    _check_kinds(batch, pack, med_type)
    if col["inj_cause"] is None:
        cause = np.full(n, compiled.cause_index["none"], dtype=np.int16)
    else:
        cause = _known_codes(batch, "inj_cause", compiled.cause_of, compiled.cause_index,
                             null=compiled.cause_index["none"])
    if col["psn_cats"] is None:
        cats = np.zeros(n, dtype=np.int16)
    else:
        dictionary, idx = batch.codes["psn_cats"]
        cats = np.append(compiled.category_mask(dictionary), np.int16(0)).astype(np.int16)[idx]
    bad = np.flatnonzero(cats < 0)
    if bad.size:
        i = int(bad[0])
        name = next(t.strip() for t in col["psn_cats"][i].as_py().split(",")
                    if t.strip() and t.strip() not in compiled.category_bit)
        raise InputError("psn_cats", f"unknown person category (known: {', '.join(compiled.category_bit)})",
                         name, row=i + 1, source=source)

    away = _treated_away(batch, pack)

    # governing date per scheme (admission, discharge or settlement), then the version in force
    dictionary = batch.codes["insutype"][0]
    kinds = {compiled.scheme_governing_date[si] for si in np.asarray(compiled.scheme_of(dictionary)) if si >= 0}
    if len(kinds) == 1:         # every scheme in the batch governs by the same date: that column
        gov = {"admission": batch.begin, "discharge": batch.end, "settlement": batch.setl}[kinds.pop()]
    else:
        gov = compiled.governing_days(scheme, batch.begin, batch.end, batch.setl)
    if batch.begin_after_end >= 0:
        i = batch.begin_after_end
        raise InputError("begndate", "admission after discharge", str(np.datetime64(int(batch.begin[i]), "D")),
                         row=i + 1, source=source)
    version = compiled.version_index(scheme, gov)
    bad = np.flatnonzero(version < 0)
    if bad.size:
        i = int(bad[0])
        kind = compiled.scheme_governing_date[scheme[i]]
        raise InputError(_GOVERNING_FIELD[kind],
                         f"no policy version of scheme {pack.schemes[scheme[i]].code} in force on this date",
                         str(np.datetime64(int(gov[i]), "D")), row=i + 1, source=source)

    cached = batch.cache.get("gov")
    if cached is not None and np.array_equal(cached[0], gov):
        age, year = cached[1], cached[2]
    else:
        gy, gm, gd = _civil(gov, small=True)
        year = gy.astype(np.int32)
        if batch.birth is None:
            age = np.full(n, -1, np.int16)
        else:
            by, bmd, missing = batch.birth
            age = np.where(missing, -1, gy - by - ((gm * 32 + gd) < bmd)).astype(np.int16)
        batch.cache["gov"] = (gov, age, year)
    if pack.disease_groups:
        diag = col["dise_codg"] if col["dise_codg"] is not None else pa.nulls(n, pa.string())
        group = compiled.resolve_groups(diag, age).astype(np.int16)
    else:                       # no disease group in the pack: every visit is in none (0)
        group = np.zeros(n, np.int16)
    rule = compiled.rule_index(version, med_type, level).astype(np.int32)

    if away is None:
        out_area = np.zeros(n, np.int8)
    else:
        filed = batch.filed.astype(bool) if batch.filed is not None else False
        out_area = np.where(away, np.where(filed, 1, 2), 0).astype(np.int8)

    if batch.tail_error is not None:
        raise batch.tail_error
    item = batch.item
    if item is None:
        item = _itemize_lines(compiled, catalogue, col["mdtrt_id"], batch.lines, n, batch.line_source)
        _check_declared(col, item, col["mdtrt_id"], n, source)
        item = _in_order(item, order, batch.in_input_order)

    def take(a, dtype):
        return _in_order(a, order, batch.in_input_order, dtype)

    # accumulator slots: (person, scheme, year), numbered in that order
    n_schemes = len(compiled.scheme_index)
    scheme_p, year_p = take(scheme, np.int64), take(year, np.int32)
    cached = batch.cache.get("slots")
    if cached is not None and cached[0] == n_schemes and np.array_equal(cached[1], scheme_p) \
            and np.array_equal(cached[2], year_p):
        slot_of_key, acc_slot = cached[3], cached[4]
    else:
        slot_of_key, acc_slot = _slots(batch.psn_slot, scheme_p, year_p, len(batch.psn_names), n_schemes)
        batch.cache["slots"] = (n_schemes, scheme_p, year_p, slot_of_key, acc_slot)

    slot_psn, slot_scheme, slot_year = slot_parts(slot_of_key, n_schemes)
    return Prepared(
        order=order, in_input_order=batch.in_input_order, item=item, rule=take(rule, np.int32), group=take(group, np.int16),
        cats=take(cats, np.int16), cause=take(cause, np.int8), out_area=take(out_area, np.int8),
        referral=batch.referral, bed_days=batch.bed_days, acct_used=batch.acct_used, acc_slot=acc_slot,
        psn_slot=batch.psn_slot, balance=batch.balance, psn_names=batch.psn_names,
        slot_psn=slot_psn, slot_scheme=slot_scheme, slot_year=slot_year.astype(np.int32),
        version=take(version, np.int32),
        year=take(year, np.int32))


def kind_error(pack, med_type: int, kind: str, row, source) -> InputError | None:
    """fixmedins_type must be one of the pack's institution kinds (when it names any), and one
    that settles the visit's med type (when the med type lists kinds). None when it is good."""
    if not pack.institution_kinds:
        return None
    if kind not in pack.institution_kinds:
        return InputError("fixmedins_type", f"unknown institution kind (known: {', '.join(pack.institution_kinds)})",
                          kind, row=row, source=source)
    allowed = pack.med_types[med_type].kinds
    if allowed and kind not in allowed:
        return InputError("fixmedins_type", f"med type {pack.med_types[med_type].code} is not settled at "
                          f"this kind of institution (settled at: {', '.join(allowed)})", kind, row=row,
                          source=source)
    return None


def _check_kinds(batch, pack, med_type):
    """kind_error at the first visit (input order) whose institution kind is refused."""
    if not pack.institution_kinds or "fixmedins_type" not in batch.codes:
        return
    dictionary, idx = batch.codes["fixmedins_type"]
    kinds = dictionary.to_pylist()
    # (med type, kind) pairs are few: check each once into a table, then find the first visit of a
    # bad one without Python per visit (the last column, reached by a null kind's -1, is good)
    bad = np.zeros((len(pack.med_types), len(kinds) + 1), bool)
    for m in range(len(pack.med_types)):
        for k, kind in enumerate(kinds):
            bad[m, k] = kind_error(pack, m, kind, None, None) is not None
    rows = np.flatnonzero(bad[med_type, idx])
    if rows.size:
        i = int(rows[0])
        raise kind_error(pack, int(med_type[i]), kinds[idx[i]], i + 1, batch.source)


def region_error(pack, field, code, row, source) -> InputError | None:
    """SETTLEMENT.md section 9 "unknown region": the insured region (insu_admdvs) must be a code of
    the pack's pooling region; the treatment region (mdtrt_admdvs) may be anywhere (out-of-area
    care is legal) but must be an administrative division code. None when the code is good."""
    if field == "insu_admdvs" and code not in pack.regions:
        return InputError(field, f"unknown region: not in the pooling region of pack {pack.name} "
                          f"(known: {', '.join(pack.regions)})", code, row=row, source=source)
    if field == "mdtrt_admdvs" and not ADMDVS.match(code):
        return InputError(field, "unknown region: not a 6-digit administrative division code "
                          "(行政区划代码)", code, row=row, source=source)
    return None


def _treated_away(batch, pack):
    """Per visit (input order), True where treated outside the pack's pooling region, or None when
    no visit gives a treatment region; raises the first bad insured, then treatment, region."""
    for field in ("insu_admdvs", "mdtrt_admdvs"):
        if field not in batch.codes:
            continue
        dictionary, idx = batch.codes[field]
        bad = np.array([region_error(pack, field, code, None, None) is not None
                        for code in dictionary.to_pylist()] + [False])      # [-1]: a null is good
        rows = np.flatnonzero(bad[idx])
        if rows.size:
            i = int(rows[0])
            raise region_error(pack, field, dictionary[idx[i]].as_py(), i + 1, batch.source)
    if "mdtrt_admdvs" not in batch.codes:
        return None
    dictionary, idx = batch.codes["mdtrt_admdvs"]
    local = set(pack.regions)
    away = np.array([code not in local for code in dictionary.to_pylist()] + [False])  # null: local
    return away[idx]


def slot_key(person, scheme, year, n_schemes):
    """The key of an accumulator row: (person * n_schemes + scheme) * 10000 + year (ascending by
    person, then scheme, then year)."""
    return (person * n_schemes + scheme) * 10000 + year


def slot_parts(key, n_schemes):
    """(person, scheme, year) of slot keys."""
    person, scheme = np.divmod(key // 10000, n_schemes)
    return person, scheme, key % 10000


def first_index(key: np.ndarray, n_keys: int, last: bool = False) -> np.ndarray:
    """Per key 0..n_keys-1 the position of its first (last=True: last) occurrence in `key`, -1 where
    it does not occur. By ufunc.at: a fancy assignment with repeated keys has no defined order."""
    position = np.arange(len(key), dtype=np.int64)
    if last:
        out = np.full(n_keys, -1, np.int64)
        np.maximum.at(out, key, position)
        return out
    out = np.full(n_keys, len(key), np.int64)
    np.minimum.at(out, key, position)
    out[out == len(key)] = -1
    return out


def _slots(psn_slot, scheme, year, n_persons, n_schemes):
    """(slot keys (person * n_schemes + scheme) * 10000 + year, ascending; int32 slot per visit).
    Persons, schemes and the few years of a batch make a small dense key space: marking the keys
    present and counting them numbers the slots without sorting n keys (np.unique's way, kept for
    a batch whose years span too far)."""
    n = len(psn_slot)
    if n:
        year_lo = int(year.min())
        years = int(year.max()) - year_lo + 1
        width = n_schemes * years
        if width == 1:          # one scheme, one year: a slot per person, numbered as the persons
            person = np.arange(n_persons, dtype=np.int64)
            return slot_key(person, 0, year_lo, n_schemes), psn_slot.astype(np.int32, copy=False)
        if n_persons * width <= 4 * n + 4096:
            key = psn_slot.astype(np.int64)
            key *= width
            key += scheme * years
            key += year - year_lo
            present = np.zeros(n_persons * width, dtype=bool)
            present[key] = True
            dense = np.flatnonzero(present)
            number = np.cumsum(present, dtype=np.int32)
            del present
            number -= 1
            acc_slot = number[key]
            del key, number
            person, rest = np.divmod(dense, width)
            slot_of_key = slot_key(person, rest // years, rest % years + year_lo, n_schemes)
            return slot_of_key, acc_slot
    key = slot_key(psn_slot.astype(np.int64), scheme, year, n_schemes)
    slot_of_key, acc_slot = np.unique(key, return_inverse=True)
    return slot_of_key, acc_slot.reshape(-1).astype(np.int32)


# precomputed amount column -> its row of the item matrix
_PRECOMPUTED_ITEM = {"fulamt_ownpay_amt": _I["I_FULAMT"], "overlmt_selfpay": _I["I_OVERLMT"],
                     "preselfpay_amt": _I["I_PRESELFPAY"], "inscp_scp_amt": _I["I_INSCP"],
                     "inscp_essential_amt": _I["I_INSCP_ESS"]}


def _precomputed(visits, n, source):
    item = empty_large((N_ITEM, n), np.int64)
    item[:] = 0
    for name, typ, required, _ in PRECOMPUTED_FIELDS:
        col = _column(visits, name, typ, required, source)
        if col is None:
            continue
        values = _ints(col, np.int64)
        _check_money(values, name, source, rows=ONE_BASED)
        item[_PRECOMPUTED_ITEM[name]] = values
    bad = np.flatnonzero(item[_I["I_INSCP_ESS"]] > item[_I["I_INSCP"]])
    if bad.size:
        i = int(bad[0])
        raise InputError("inscp_essential_amt", "exceeds inscp_scp_amt", int(item[_I["I_INSCP_ESS"]][i]),
                         row=i + 1, source=source)
    medfee = item[_I["I_MEDFEE"]]
    np.add(item[_I["I_FULAMT"]], item[_I["I_OVERLMT"]], out=medfee)
    medfee += item[_I["I_PRESELFPAY"]]
    medfee += item[_I["I_INSCP"]]
    _check_money(item[_I["I_MEDFEE"]], "medfee_sumamt", source, rows=ONE_BASED)
    return item


# --- line items -----------------------------------------------------------------------------------

def _itemize_lines(compiled, catalogue, visit_ids, lines: pa.Table, n, source):
    from ._itemize import itemize

    col = {name: _column(lines, name, typ, required, source, numbered="line")
           for name, typ, required, _ in LINE_FIELDS}
    line_numbers = ONE_BASED
    visit = np.asarray(pc.index_in(col["mdtrt_id"], value_set=visit_ids).fill_null(-1), dtype=np.int64)
    bad = np.flatnonzero(visit < 0)
    if bad.size:
        i = int(bad[0])
        raise InputError("mdtrt_id", "line of a visit not in the visits", col["mdtrt_id"][i].as_py(),
                         line=i + 1, source=source)
    cnt, pric, amt = (_ints(col[k], np.int64) for k in ("cnt", "pric", "det_item_fee_sumamt"))
    bad = np.flatnonzero((cnt < 0) | (cnt > MAX_COUNT))
    if bad.size:
        i = int(bad[0])
        raise InputError("cnt", "quantity must be a whole number from 0 to 10^9", int(cnt[i]), line=i + 1,
                         mdtrt_id=col["mdtrt_id"][i].as_py(), source=source)
    for name, values in (("pric", pric), ("det_item_fee_sumamt", amt)):
        _check_money(values, name, source, lines=line_numbers)
    over = np.flatnonzero((pric > 0) & (cnt > MAX_MONEY // np.maximum(pric, 1)))
    if over.size:
        i = int(over[0])
        raise InputError("cnt", f"overflow: cnt x pric above {MAX_MONEY} fen", int(cnt[i]), line=i + 1,
                         mdtrt_id=col["mdtrt_id"][i].as_py(), source=source)
    bad = np.flatnonzero(cnt * pric != amt)
    if bad.size:
        i = int(bad[0])
        raise InputError("det_item_fee_sumamt", f"amount is not cnt x pric ({int(cnt[i] * pric[i])})",
                         int(amt[i]), line=i + 1, mdtrt_id=col["mdtrt_id"][i].as_py(), source=source)
    line_no = _ints(col["line_no"], np.int64)
    order = np.lexsort((line_no, visit))
    sv, sl = visit[order], line_no[order]
    dup = np.flatnonzero((sv[1:] == sv[:-1]) & (sl[1:] == sl[:-1]))
    if dup.size:
        i = int(order[dup[0] + 1])
        raise InputError("line_no", "duplicate line id within the visit", int(line_no[i]), line=i + 1,
                         mdtrt_id=col["mdtrt_id"][i].as_py(), source=source)
    code = catalogue.lookup(col["hilist_code"]).astype(np.int32)
    unknown = np.flatnonzero(code < 0)
    if unknown.size and compiled.pack.unknown_codes == "refuse":
        i = int(unknown[0])
        raise InputError("hilist_code", "not in the catalogue (the pack refuses unknown codes)",
                         col["hilist_code"][i].as_py(), line=i + 1, mdtrt_id=col["mdtrt_id"][i].as_py(),
                         source=source)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(visit, minlength=n), out=offsets[1:])
    item = np.zeros((N_ITEM, n), dtype=np.int64)
    itemize(offsets, np.ascontiguousarray(code[order]), np.ascontiguousarray(cnt[order]),
            np.ascontiguousarray(pric[order]), np.ascontiguousarray(amt[order]),
            catalogue.cls, catalogue.prepay, catalogue.ceiling, catalogue.essential, item)
    _check_money(item[_I["I_MEDFEE"]], "medfee_sumamt", source, rows=ONE_BASED)
    return item


# --- one visit (real time) -------------------------------------------------------------------------
# The same checks as prepare(), in the same order and with the same words, on plain Python values:
# a real-time call must not pay for dozens of Arrow calls on a table of one row.
# tests/test_realtime_path.py proves the two paths agree, result for result and error for error.

def _scalar_int(name, value, row=1, source="visit", default=None, line=None):
    """An int (or a bool flag) as given; a float or anything else is refused, naming its row or line."""
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    where = {"row": row} if line is None else {"line": line}
    if isinstance(value, float):
        raise InputError(name, FLOAT_RULE, value, **where, source=source)
    raise InputError(name, "must be int64", value, **where, source=source)


class OneVisit(NamedTuple):
    """One visit's kernel inputs besides its amounts, as Python ints (the columns of a batch)."""
    rule: int
    group: int
    cats: int
    cause: int
    out_area: int
    referral: int
    bed_days: int
    acct_used: int


class OneVisitAdapter:
    """Kernel inputs for a single visit given as a dict (the gRPC path)."""

    def __init__(self, compiled, catalogue):
        self.cp = compiled
        self.catalogue = catalogue
        self.code_index = {c: i for i, c in enumerate(catalogue.codes.to_pylist())}
        self.epoch = dt.date(1970, 1, 1)
        self.epoch_ordinal = self.epoch.toordinal()
        self.spans = {}              # scheme index -> [(from days, to days, version index)]
        for vi, v in enumerate(compiled.versions):
            to = (v.effective_to - self.epoch).days if v.effective_to else 10**9
            self.spans.setdefault(compiled.scheme_index[v.scheme], []).append(
                ((v.effective_from - self.epoch).days, to, vi))
        self.groups = {}             # (diagnosis, age) -> group
        # each visit field's kind, decided once (not per call: this is the real-time path)
        self.fields = [(name, "str" if pa.types.is_string(typ) else "date" if pa.types.is_date(typ)
                        else "time" if pa.types.is_timestamp(typ) else "int", required)
                       for name, typ, required, _ in VISIT_FIELDS]
        self.line_fields = [(name, pa.types.is_string(typ), pa.types.is_integer(typ))
                            for name, typ, _, _ in LINE_FIELDS]

    def _date(self, value, name, source, timestamp=False):
        """(days since the epoch, the value) of a present date or timestamp field."""
        if isinstance(value, dt.datetime):
            if not timestamp:
                value = value.date()
        elif isinstance(value, dt.date):
            pass
        else:
            raise InputError(name, f"must be {'timestamp[s]' if timestamp else 'date32[day]'}", value,
                             row=1, source=source)
        d = value.date() if isinstance(value, dt.datetime) else value
        return (d - self.epoch).days, value

    def _code(self, value, mapping, name, source):
        if value not in mapping:
            raise InputError(name, f"unknown code (known: {', '.join(map(str, mapping))})", value,
                             row=1, source=source)
        return mapping[value]

    def prepare(self, visit: dict, lines, balance: int, source="visit", line_source="lines"):
        """-> (OneVisit: the kernel's inputs, item: N_ITEM ints (layout.ITEM_COLS), version, year)."""
        cp, pack = self.cp, self.cp.pack
        # field presence and types, in schema order (as prepare() checks columns)
        strings = {}
        dates = {}
        for name, kind, required in self.fields:        # one loop, no call per field: per request
            value = visit.get(name)
            if value is None:
                if required:
                    raise InputError(name, "required value is missing", None, row=1, source=source)
                if kind == "str":
                    strings[name] = None
                elif kind != "int":
                    dates[name] = None
            elif kind == "str":
                if not isinstance(value, str):
                    raise InputError(name, "must be string", value, row=1, source=source)
                strings[name] = value
            elif kind == "int":
                _scalar_int(name, value, source=source)
            else:
                dates[name] = self._date(value, name, source, timestamp=kind == "time")
        scheme = self._code(strings["insutype"], cp.scheme_index, "insutype", source)
        med_type = self._code(strings["med_type"], cp.med_type_index, "med_type", source)
        level = self._code(strings["medins_lv"], cp.level_index, "medins_lv", source)
        if strings["fixmedins_type"] is not None:
            error = kind_error(pack, med_type, strings["fixmedins_type"], 1, source)
            if error is not None:
                raise error
        cause = self._code(strings["inj_cause"] or "none", cp.cause_index, "inj_cause", source)
        cats = 0
        for name in (strings["psn_cats"] or "").split(","):
            name = name.strip()
            if not name:
                continue
            if name not in cp.category_bit:
                raise InputError("psn_cats", f"unknown person category (known: {', '.join(cp.category_bit)})",
                                 name, row=1, source=source)
            cats |= 1 << cp.category_bit[name]
        for field in ("insu_admdvs", "mdtrt_admdvs"):
            if strings[field] is not None:
                error = region_error(pack, field, strings[field], 1, source)
                if error is not None:
                    raise error
        end = dates["enddate"][0]
        begin = dates["begndate"][0] if dates["begndate"] is not None else end
        setl = dates["setl_time"][0]
        kind = pack.schemes[scheme].governing_date
        gov = {"admission": begin, "discharge": end, "settlement": setl}[kind]
        if begin > end:
            raise InputError("begndate", "admission after discharge", str(np.datetime64(begin, "D")),
                             row=1, source=source)
        version = -1
        for lo, hi, vi in self.spans.get(scheme, ()):
            if lo <= gov <= hi:
                version = vi
                break
        if version < 0:
            raise InputError(_GOVERNING_FIELD[kind],
                             f"no policy version of scheme {pack.schemes[scheme].code} in force on this date",
                             str(np.datetime64(gov, "D")), row=1, source=source)
        on = dt.date.fromordinal(self.epoch_ordinal + gov)     # no timedelta, no numpy per call
        age = -1
        if dates["brdy"] is not None:                 # age_in_years of one visit, in whole years
            born = dates["brdy"][1]
            age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
        diag = strings["dise_codg"]
        group = self.groups.get((diag, age))
        if group is None:
            group = int(cp.resolve_groups(pa.array([diag], pa.string()), np.array([age], np.int32))[0])
            if len(self.groups) < 100_000:
                self.groups[(diag, age)] = group
        treated = strings["mdtrt_admdvs"]
        out_area = 0 if treated is None or treated in pack.regions else (1 if visit.get("out_filing_flag") else 2)
        bed_days = _scalar_int("ipt_days", visit.get("ipt_days"), source=source, default=0)
        if bed_days < 0:
            raise InputError("ipt_days", "must not be negative", bed_days, row=1, source=source)
        _check_money_one(balance, "acct_balc", source, row=1)
        item = (self._itemize(visit, lines, line_source) if lines is not None
                else self._precomputed(visit, source))
        declared = _scalar_int("medfee_sumamt", visit.get("medfee_sumamt"), source=source)
        if declared is not None:
            _check_money_one(declared, "medfee_sumamt", source, row=1)
            if declared != item[_I["I_MEDFEE"]]:
                raise InputError("medfee_sumamt",
                                 f"total is not the sum of the lines ({item[_I['I_MEDFEE']]})",
                                 declared, row=1, mdtrt_id=strings["mdtrt_id"], source=source)
        rule = (version * cp.n_med_types + med_type) * cp.n_levels + level
        year = on.year
        referral = 1 if visit.get("refl_flag") or (strings["psn_fst_medins_code"] is not None and
                                                   strings["psn_fst_medins_code"] == strings["fixmedins_code"]) else 0
        inputs = OneVisit(rule, group, cats, cause, out_area, referral, bed_days,
                          1 if visit.get("acct_used_flag") else 0)
        return inputs, item, version, year

    def _precomputed(self, visit, source):
        amount = [0] * N_ITEM                      # Python ints, as the kernel's settle_one takes them
        for name, typ, required, _ in PRECOMPUTED_FIELDS:
            value = visit.get(name)
            if value is None:
                if required:
                    raise InputError(name, "required column is missing" if name not in visit
                                     else "required value is missing", None,
                                     row=None if name not in visit else 1, source=source)
                continue
            value = _scalar_int(name, value, source=source)
            _check_money_one(value, name, source, row=1)
            amount[_PRECOMPUTED_ITEM[name]] = value
        if amount[_I["I_INSCP_ESS"]] > amount[_I["I_INSCP"]]:
            raise InputError("inscp_essential_amt", "exceeds inscp_scp_amt", amount[_I["I_INSCP_ESS"]],
                             row=1, source=source)
        amount[_I["I_MEDFEE"]] = sum(amount[_I[k]] for k in ("I_FULAMT", "I_OVERLMT", "I_PRESELFPAY", "I_INSCP"))
        _check_money_one(amount[_I["I_MEDFEE"]], "medfee_sumamt", source, row=1)
        return amount

    def _itemize(self, visit, lines, source):
        """The visit's N_ITEM totals from its lines (dicts), with prepare()'s checks in its order
        and its messages; plain ints and one call into the kernel, no arrays per call."""
        m = len(lines)
        mdtrt_id = visit.get("mdtrt_id")
        # checks in the order prepare() makes them, each over all lines before the next
        for k, line in enumerate(lines, 1):
            for name, is_string, is_integer in self.line_fields:
                value = line.get(name)
                if value is None:
                    raise InputError(name, "required value is missing", None, line=k, source=source)
                if is_string and not isinstance(value, str):
                    raise InputError(name, "must be string", value, line=k, source=source)
                if is_integer:
                    _scalar_int(name, value, line=k, source=source)
        for k, line in enumerate(lines, 1):
            if line["mdtrt_id"] != mdtrt_id:
                raise InputError("mdtrt_id", "line of a visit not in the visits", line["mdtrt_id"], line=k,
                                 source=source)
        cnt = [_scalar_int("cnt", line["cnt"]) for line in lines]          # a bool flag as its int
        pric = [_scalar_int("pric", line["pric"]) for line in lines]
        amt = [_scalar_int("det_item_fee_sumamt", line["det_item_fee_sumamt"]) for line in lines]
        for k in range(m):
            if cnt[k] < 0 or cnt[k] > MAX_COUNT:
                raise InputError("cnt", "quantity must be a whole number from 0 to 10^9", cnt[k],
                                 line=k + 1, mdtrt_id=mdtrt_id, source=source)
        for k in range(m):
            _check_money_one(pric[k], "pric", source, line=k + 1)
        for k in range(m):
            _check_money_one(amt[k], "det_item_fee_sumamt", source, line=k + 1)
        for k in range(m):
            if pric[k] > 0 and cnt[k] > MAX_MONEY // pric[k]:
                raise InputError("cnt", f"overflow: cnt x pric above {MAX_MONEY} fen", cnt[k], line=k + 1,
                                 mdtrt_id=mdtrt_id, source=source)
        for k in range(m):
            if cnt[k] * pric[k] != amt[k]:
                raise InputError("det_item_fee_sumamt", f"amount is not cnt x pric ({cnt[k] * pric[k]})",
                                 amt[k], line=k + 1, mdtrt_id=mdtrt_id, source=source)
        # duplicates are reported at the later line in (line_no, position) order, as prepare() does
        seen = set()
        for k in sorted(range(m), key=lambda k: (int(lines[k]["line_no"]), k)):
            key = int(lines[k]["line_no"])
            if key in seen:
                raise InputError("line_no", "duplicate line id within the visit", key, line=k + 1,
                                 mdtrt_id=mdtrt_id, source=source)
            seen.add(key)
        code = [self.code_index.get(line["hilist_code"], -1) for line in lines]
        if self.cp.pack.unknown_codes == "refuse":
            for k in range(m):
                if code[k] < 0:
                    raise InputError("hilist_code", "not in the catalogue (the pack refuses unknown codes)",
                                     lines[k]["hilist_code"], line=k + 1, mdtrt_id=mdtrt_id, source=source)
        c = self.catalogue
        item = itemize_one(code, cnt, pric, amt, c.cls, c.prepay, c.ceiling, c.essential)
        _check_money_one(item[_I["I_MEDFEE"]], "medfee_sumamt", source, row=1)
        return item
