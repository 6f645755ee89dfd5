"""Settling a file in chunks (Settler.settle_file, `medsettle settle`): bounded memory, progress
that tracks the work, and the results of one settle_table call over the whole file.

A chunk is a run of chunk_rows rows of the visits file (Parquet is read batch by batch). Each
person's accumulators (per scheme and year) and account balance are carried from one chunk to the
next (Carry), so a person whose visits span chunks is settled as in one call, as long as no
person's visit in a later chunk has an earlier settlement time than one of theirs already settled
(true of a file in settlement-time order, as the generator and hospital exports write it). When it
is not, Carry raises OutOfOrder before anything of that chunk is settled and the file is settled
again in one call. Visit ids are checked for duplicates across chunks; line items are split by
their visit's chunk (spilled to Arrow files beside the output when they come from Parquet).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import _pool
from .adapter import ascends, first_index, slot_key, slot_parts
from .errors import InputError
from .layout import ACC_COLS

DEFAULT_CHUNK_ROWS = 500_000
_READ_ROWS = 65_536          # Parquet read batch: chunks are assembled from these
_LINE = "_line"              # a line's 1-based number in the lines file, through the spill files


class OutOfOrder(Exception):
    """A person's visit in this chunk is earlier than one of theirs settled in an earlier chunk."""


def _positions(sorted_keys: np.ndarray, keys: np.ndarray, by: np.ndarray) -> np.ndarray:
    """np.searchsorted(sorted_keys, keys) with the keys taken in ascending order (by: their
    argsort). numpy starts each search where the last ended, so half a million keys in a run of
    millions cost 0.04 s instead of 0.5 s of cache misses."""
    lo = np.empty(len(keys), np.int64)
    lo[by] = np.searchsorted(sorted_keys, keys[by])
    return lo


class SortedRuns:
    """Keys in sorted runs, each key with a payload row (a number, a row of accumulators). Adding a
    chunk's keys makes a new run, and the last two runs merge while the earlier is not larger, as
    a binary counter carries: over a file, each key is copied about log2(chunks) times, where one
    sorted array with insertions would copy every key at every chunk (quadratic in the file)."""

    def __init__(self):
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, keys: np.ndarray, payload: np.ndarray) -> None:
        if len(keys) == 0:
            return
        # numpy's own allocator: these arrays outlive the batch, and grow
        with _pool.bypassed():
            order = np.argsort(keys, kind="stable")
            self.runs.append((keys[order], payload[order]))
            # the trailing runs a binary counter would merge one pair at a time, merged at once
            merged, size = 1, len(keys)
            while merged < len(self.runs) and len(self.runs[-merged - 1][0]) <= size:
                merged += 1
                size += len(self.runs[-merged][0])
            if merged > 1:
                tail = self.runs[-merged:]
                keys = np.concatenate([k for k, _ in tail])
                order = np.argsort(keys, kind="stable")      # sorted runs: a merge
                self.runs[-merged:] = [(keys[order], np.concatenate([p for _, p in tail])[order])]

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(run, position) of each key's first entry; run -1 for a key not present."""
        run = np.full(len(keys), -1, np.int64)
        at = np.zeros(len(keys), np.int64)
        by = np.argsort(keys) if self.runs else None
        for r, (k, _) in enumerate(self.runs):
            lo = _positions(k, keys, by)
            hit = np.flatnonzero((run < 0) & (lo < len(k)))
            hit = hit[k[lo[hit]] == keys[hit]]
            run[hit], at[hit] = r, lo[hit]
        return run, at

    def take(self, run: np.ndarray, at: np.ndarray, out: np.ndarray) -> None:
        """out[i] = the payload row of key i found by find() (run, at); rows with run -1 untouched."""
        for r, (_, payload) in enumerate(self.runs):
            rows = np.flatnonzero(run == r)
            out[rows] = payload[at[rows]]

    def put(self, run: np.ndarray, at: np.ndarray, values: np.ndarray) -> None:
        """The payload row of each key found by find() (run, at) becomes values[i]; run -1 ignored."""
        for r, (_, payload) in enumerate(self.runs):
            rows = np.flatnonzero(run == r)
            payload[at[rows]] = values[rows]

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, payload) of every run, in key order (an empty index: two empty 1-D arrays)."""
        if not self.runs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = np.concatenate([k for k, _ in self.runs])
        order = np.argsort(keys, kind="stable")
        return keys[order], np.concatenate([p for _, p in self.runs])[order]


class StringIndex:
    """Strings numbered 0, 1, ... in the order added, found again by a 64-bit hash of their bytes
    (kernel.resettle.hash_strings), the string itself compared to rule out a collision. Strings are
    hashed into the index at the first lookup after they were added, so a file whose visit ids
    ascend is checked for repeats across chunks (follows) without hashing any."""

    def __init__(self):
        self.hashes = SortedRuns()               # hash -> the string's number
        self.strings: list[pa.Array] = []       # in the order added
        self.size = 0
        self.ascending = True                    # every string added is greater than the one before
        self._indexed = 0                        # strings[:_indexed] are in hashes
        self._indexed_rows = 0

    def follows(self, strings) -> bool:
        """Whether the strings ascend and the first is greater than every string added so far:
        then none of them was added (one Arrow comparison per string, no hashing)."""
        strings = _array(strings)
        if not self.ascending or len(strings) == 0:
            return self.ascending
        if self.size and not strings[0].as_py() > self.strings[-1][-1].as_py():
            return False
        return ascends(strings)

    def _index_added(self) -> None:
        from .resettle import hash_strings
        for strings in self.strings[self._indexed:]:
            self.hashes.add(hash_strings(strings),
                            self._indexed_rows + np.arange(len(strings), dtype=np.int64))
            self._indexed_rows += len(strings)
        self._indexed = len(self.strings)

    def lookup(self, strings) -> np.ndarray:
        """int64 number of each string, -1 for one never added."""
        from .resettle import hash_strings
        strings = _array(strings)
        number = np.full(len(strings), -1, np.int64)
        if self.size == 0 or len(strings) == 0:
            return number
        self._index_added()
        h = hash_strings(strings)
        by = np.argsort(h)
        for hashes, numbers in self.hashes.runs:        # each string is in one run at most
            lo = _positions(hashes, h, by)
            hit = np.flatnonzero((number < 0) & (lo < len(hashes)))
            hit = hit[hashes[lo[hit]] == h[hit]]
            if not hit.size:
                continue
            candidate = numbers[lo[hit]]
            same = np.asarray(pc.equal(strings.take(pa.array(hit)), self.take(candidate)), dtype=bool)
            number[hit[same]] = candidate[same]
            for i in hit[~same]:                 # a hash shared by different strings: compare them all
                hi = np.searchsorted(hashes, h[i], side="right")
                candidates = numbers[lo[i]:hi]
                match = np.flatnonzero(np.asarray(pc.equal(self.take(candidates), strings[int(i)]), dtype=bool))
                if match.size:
                    number[i] = candidates[match[0]]
        return number

    def add(self, strings, follows: bool | None = None) -> None:
        """Number the strings (none of them added before) self.size, self.size + 1, ...
        follows: self.follows(strings), when the caller has it already."""
        strings = _array(strings)
        if len(strings) == 0:
            return
        self.ascending = self.follows(strings) if follows is None else follows
        self.strings.append(strings)
        self.size += len(strings)

    def take(self, numbers) -> pa.Array:
        return pa.chunked_array(self.strings, pa.string()).take(pa.array(np.asarray(numbers, np.int64))) \
            .combine_chunks()

    def all(self) -> pa.Array:
        return pa.chunked_array(self.strings, pa.string()).combine_chunks()


def _array(strings) -> pa.Array:
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    return strings.cast(pa.string()) if strings.type != pa.string() else strings


class Carry:
    """Year-to-date state carried from one chunk to the next: per person (numbered in order of first
    appearance in the file) the account balance and the last settlement time; per (person, scheme,
    year) the accumulators, keyed (person * n_schemes + scheme) * 10000 + year as the adapter's slots."""

    def __init__(self, n_schemes: int):
        self.n_schemes = n_schemes
        self.persons = StringIndex()
        self.balance = np.zeros(0, np.int64)     # per person number (room for more at the end)
        self.last_setl = np.zeros(0, np.int64)
        self.slots = SortedRuns()                # slot key -> its accumulators (a row of ACC_COLS)

    def opening(self, batch, prep):
        """(accumulators of prep's slots, balance per prep person, state for update): what a chunk
        starts from. Raises OutOfOrder before anything changes."""
        known = self.persons.lookup(prep.psn_names)
        setl = np.asarray(batch.col["setl_time"].cast(pa.timestamp("s")).cast(pa.int64()), np.int64)
        setl = setl if prep.in_input_order else setl[prep.order]
        persons = len(known)
        first = first_index(prep.psn_slot, persons)           # each person's first visit in processing order
        last = first_index(prep.psn_slot, persons, last=True)
        carried = np.flatnonzero(known >= 0)
        if np.any(setl[first[carried]] < self.last_setl[known[carried]]):
            raise OutOfOrder()
        balance = prep.balance.copy()
        balance[carried] = self.balance[known[carried]]
        new = known < 0
        number = known.copy()
        number[new] = self.persons.size + np.arange(int(new.sum()))
        key = slot_key(number[prep.slot_psn], prep.slot_scheme, prep.slot_year, self.n_schemes)
        run, at = self.slots.find(key)
        acc = np.zeros((len(key), len(ACC_COLS)), np.int64)
        self.slots.take(run, at, acc)
        return acc, balance, (prep.psn_names, new, number, setl[last], key, run, at)

    def update(self, state, acc, balance) -> None:
        """Take in a settled chunk's accumulators and balances (after the kernel)."""
        names, new, number, latest, key, run, at = state
        self.persons.add(names.filter(pa.array(new)))
        self.balance = _room(self.balance, self.persons.size)
        self.last_setl = _room(self.last_setl, self.persons.size)
        self.balance[number] = balance
        self.last_setl[number] = latest
        self.slots.put(run, at, acc)
        added = run < 0
        self.slots.add(key[added], acc[added])

    def accumulators(self, scheme_codes) -> pa.Table:
        """The accumulators after the file, as settle_table's BatchResult.accumulators."""
        keys, acc = self.slots.merged()
        acc = acc.reshape(len(keys), len(ACC_COLS))
        person, scheme, year = slot_parts(keys, self.n_schemes)
        cols = {"psn_no": self.persons.take(person),
                "insutype": pa.array(scheme_codes, pa.string()).take(pa.array(scheme)),
                "year": pa.array(year, pa.int32())}
        for k, name in enumerate(ACC_COLS):
            cols[name] = pa.array(acc[:, k])
        return pa.table(cols)

    def balances(self) -> pa.Table:
        return pa.table({"psn_no": self.persons.all(), "balc": pa.array(self.balance[:self.persons.size])})


def _room(a: np.ndarray, n: int) -> np.ndarray:
    """a, or a copy with room for at least n values (doubling: amortised O(1) per person added)."""
    if len(a) >= n:
        return a
    with _pool.bypassed():
        grown = np.zeros(max(n, 2 * len(a)), a.dtype)
    grown[:len(a)] = a
    return grown


# --- reading ---------------------------------------------------------------------------------------

def is_csv(path) -> bool:
    return Path(path).suffix.lower() == ".csv"


def count_rows(source) -> int:
    if isinstance(source, pa.Table):
        return source.num_rows
    if is_csv(source):
        raise ValueError("count_rows of a CSV file reads it: read it as a table")
    return pq.ParquetFile(source).metadata.num_rows


def visit_chunks(source, chunk_rows: int):
    """(table, first_row 0-based) of chunk_rows rows each (the last may be shorter; an empty input
    gives one empty chunk): slices of a table, or a Parquet file read batch by batch."""
    if isinstance(source, pa.Table):
        for start in range(0, max(source.num_rows, 1), chunk_rows):
            yield source.slice(start, chunk_rows), start
        return
    f = pq.ParquetFile(source)
    buffered, have, first_row = [], 0, 0
    for b in f.iter_batches(batch_size=min(chunk_rows, _READ_ROWS)):
        buffered.append(b)
        have += b.num_rows
        while have >= chunk_rows:
            table = pa.Table.from_batches(buffered)
            yield table.slice(0, chunk_rows), first_row
            first_row += chunk_rows
            have -= chunk_rows
            buffered = table.slice(chunk_rows).to_batches()
    if have or first_row == 0:
        yield pa.Table.from_batches(buffered, f.schema_arrow), first_row


def check_new_ids(index: StringIndex, ids, first_row: int, source) -> None:
    """No visit id of this chunk was in an earlier one (SETTLEMENT.md section 9); then add them."""
    ids = _array(ids)
    follows = index.follows(ids)
    seen = np.zeros(0, np.int64) if follows else np.flatnonzero(index.lookup(ids) >= 0)
    if seen.size:
        i = int(seen[0])
        raise InputError("mdtrt_id", "duplicate visit id", ids[i].as_py(), row=first_row + i + 1,
                         source=str(source))
    index.add(ids, follows)


def visit_ids(source, chunk_rows: int, label) -> StringIndex:
    """Every visit id of the file, numbered by row (the line items' visits are found in it);
    duplicates are refused here, naming the later row."""
    from .adapter import _column
    index = StringIndex()
    if isinstance(source, pa.Table):
        table = source.select(["mdtrt_id"]) if "mdtrt_id" in source.column_names else source.select([])
    else:
        f = pq.ParquetFile(source)
        table = f.read(columns=["mdtrt_id"]) if "mdtrt_id" in f.schema_arrow.names else pa.table({})
    try:
        ids = _column(table, "mdtrt_id", pa.string(), True, str(label))
    except InputError as e:
        if e.field == "mdtrt_id" and e.row is None and table.num_columns == 0:
            return None                         # the column is missing: the first chunk says so
        raise
    for start in range(0, len(ids), chunk_rows):
        check_new_ids(index, ids.slice(start, chunk_rows), start, label)
    return index


class LineChunks:
    """The line items of each visit chunk, with each line's number in the lines file.

    A line's chunk is its visit's row // chunk_rows. Lines of a table are sorted by chunk once;
    lines of a Parquet file are read batch by batch and spilled to an Arrow file per chunk in
    `spill_dir` (deleted by the caller)."""

    def __init__(self, source, ids: StringIndex, chunk_rows: int, spill_dir: Path, label):
        self.label = str(label)
        self.table = None
        self.spill_dir = spill_dir
        self.schema = source.schema if isinstance(source, pa.Table) else pq.ParquetFile(source).schema_arrow
        if isinstance(source, pa.Table):
            chunk = self._chunk_of(source, ids, chunk_rows, 0)
            order = np.argsort(chunk, kind="stable")
            self.table = source.take(pa.array(order)).append_column(_LINE, pa.array(order + 1))
            self.bounds = np.searchsorted(chunk[order], np.arange(int(chunk.max(initial=0)) + 2))
            return
        writers = {}
        f = pq.ParquetFile(source)
        first_line = 0
        try:
            for b in f.iter_batches(batch_size=_READ_ROWS * 4):
                table = pa.Table.from_batches([b])
                chunk = self._chunk_of(table, ids, chunk_rows, first_line)
                table = table.append_column(_LINE, pa.array(np.arange(first_line + 1, first_line + len(table) + 1)))
                first_line += len(table)
                order = np.argsort(chunk, kind="stable")
                bounds = np.searchsorted(chunk[order], np.arange(int(chunk.max(initial=0)) + 2))
                table = table.take(pa.array(order))
                for k in np.flatnonzero(np.diff(bounds)):
                    piece = table.slice(bounds[k], bounds[k + 1] - bounds[k])
                    if k not in writers:
                        writers[k] = pa.ipc.new_file(spill_dir / f"lines-{k:06d}.arrow", piece.schema)
                    writers[k].write_table(piece)
        finally:
            for w in writers.values():
                w.close()

    def _chunk_of(self, table, ids: StringIndex, chunk_rows: int, first_line: int) -> np.ndarray:
        from .adapter import _column
        try:
            visit_id = _column(table, "mdtrt_id", pa.string(), True, self.label)
        except InputError as e:
            raise InputError(e.field, e.rule, e.value, line=None if e.row is None else first_line + e.row,
                             source=self.label) from None
        row = ids.lookup(visit_id)
        bad = np.flatnonzero(row < 0)
        if bad.size:
            i = int(bad[0])
            raise InputError("mdtrt_id", "line of a visit not in the visits", visit_id[i].as_py(),
                             line=first_line + i + 1, source=self.label)
        return row // chunk_rows

    def get(self, k: int):
        """(lines of chunk k without the line-number column, their numbers in the file)."""
        if self.table is not None:
            lo, hi = (self.bounds[k], self.bounds[k + 1]) if k + 1 < len(self.bounds) else (0, 0)
            piece = self.table.slice(lo, hi - lo)
        else:
            path = self.spill_dir / f"lines-{k:06d}.arrow"
            if not path.exists():                # no visit of the chunk has lines
                return self.schema.empty_table(), np.zeros(0, np.int64)
            with pa.OSFile(str(path)) as f:
                piece = pa.ipc.open_file(f).read_all()
        numbers = np.asarray(piece.column(_LINE), np.int64)
        return piece.drop_columns([_LINE]), numbers
