"""The medical-insurance catalogue (医保目录): per code its class, pre-pay share, ceiling price, essential flag.

A catalogue is a CSV or Parquet file with one row per code and these columns (extra columns are
ignored; the format is documented in docs/data.md):

    code           str   catalogue code (医保目录编码) as line items carry it in hilist_code
    name           str   name, for people
    class          str   "A" 甲 (fully in scope), "B" 乙 (in scope after a pre-pay share), "C" 丙 (self-paid)
    prepay_bp      int   class B pre-pay share (先行自付) in basis points, 0..10000; 0 on A and C
    ceiling_price  int   ceiling price (限价) in fen per unit; 0 = none
    essential      bool  essential drug (基本药物): true/false or 1/0

Everything is validated vectorised with pyarrow.compute; the first bad value raises InputError
naming the file, the 1-based data row (the header is not counted), the column and the value.
Codes are interned once: line items are mapped to row numbers by ``lookup`` and the kernel reads
the class/prepay/ceiling/essential arrays by row (SETTLEMENT.md section 3, design.md step 1).
"""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import InputError

COLUMNS = ["code", "name", "class", "prepay_bp", "ceiling_price", "essential"]
CLASSES = ["A", "B", "C"]                      # index = the kernel's class code: 0 A, 1 B, 2 C
_INT = r"^[+-]?[0-9]{1,18}$"                   # 18 digits: never overflows int64
_TRUE, _FALSE = ["1", "true"], ["0", "false"]


class Catalogue:
    """Interned catalogue arrays, one row per code, in file order.

    codes: pa.StringArray; names: pa.StringArray; cls: int8 (0 A, 1 B, 2 C); prepay: int64 bp;
    ceiling: int64 fen per unit (0 none); essential: int8 (0/1). The numpy arrays are read-only.
    """

    def __init__(self, codes, names, cls, prepay, ceiling, essential, source=None):
        self.codes, self.names, self.source = codes, names, source
        self.cls, self.prepay, self.ceiling, self.essential = cls, prepay, ceiling, essential
        for a in (cls, prepay, ceiling, essential):
            a.setflags(write=False)
        self._value_set = pc.SetLookupOptions(value_set=codes, skip_nulls=True)

    def __len__(self):
        return len(self.codes)

    def __repr__(self):
        counts = np.bincount(self.cls, minlength=3)
        return (f"Catalogue({len(self)} codes: A {counts[0]}, B {counts[1]}, C {counts[2]}"
                f"{', from ' + str(self.source) if self.source else ''})")

    def lookup(self, codes) -> np.ndarray:
        """Row of each code (np.int32), -1 for a code not in the catalogue (or null).

        codes: pa.Array or pa.ChunkedArray of strings (anything pa.array accepts also works).
        """
        if not isinstance(codes, (pa.Array, pa.ChunkedArray)):
            codes = pa.array(codes, type=pa.string())
        rows = pc.fill_null(pc.index_in(codes, options=self._value_set), -1)
        return np.asarray(rows.to_numpy(), dtype=np.int32)

    def as_dict(self) -> dict[str, tuple[str, int, int, bool]]:
        """code -> (class "A"/"B"/"C", prepay_bp, ceiling fen, essential): the reference implementation's form."""
        return {code: (CLASSES[c], int(p), int(ceil), bool(e)) for code, c, p, ceil, e in zip(
            self.codes.to_pylist(), self.cls.tolist(), self.prepay.tolist(),
            self.ceiling.tolist(), self.essential.tolist())}


def _read(path: Path) -> pa.Table:
    """The raw table with every column as a string, so a bad value can be reported as written."""
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pq.read_table(path)
        return pa.table({name: pc.cast(col, pa.string()) if col.type != pa.string() else col
                         for name, col in zip(table.column_names, table.columns)})
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in COLUMNS},
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        raise InputError("file", "not a readable CSV", str(e), source=path) from None


def _fail(path, mask, column, values, rule):
    """Raise for the first row where mask is true (the mask has no nulls)."""
    row = int(np.flatnonzero(np.asarray(mask))[0])
    raise InputError(column, rule, values[row].as_py(), row=row + 1, source=path)


def _check(path, ok, column, values, rule):
    """ok: boolean array, true where the value is good (null counts as bad)."""
    bad = pc.invert(pc.fill_null(ok, False))
    if pc.any(bad).as_py():
        _fail(path, bad.to_numpy(zero_copy_only=False), column, values, rule)


def _integers(path, column, values):
    _check(path, pc.match_substring_regex(values, _INT), column, values, "must be a whole number")
    return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)


def load_catalogue(path) -> Catalogue:
    """Read and validate a catalogue (CSV, or Parquet by the .parquet suffix); InputError on bad data."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file", "no such catalogue file", str(path), source=path)
    table = _read(path)
    for name in COLUMNS:
        if name not in table.column_names:
            raise InputError(name, "missing column", f"columns are {table.column_names}", source=path)
    n = table.num_rows
    if n == 0:
        raise InputError("file", "the catalogue has no rows", None, source=path)
    col = {name: pc.utf8_trim_whitespace(table.column(name).combine_chunks()) for name in COLUMNS}

    codes = col["code"]
    _check(path, pc.greater(pc.utf8_length(codes), 0), "code", codes, "must not be empty")
    # duplicates: a row whose code was seen on an earlier row
    first = np.unique(pc.dictionary_encode(codes).indices.to_numpy(), return_index=True)[1]
    if len(first) < n:
        seen = np.zeros(n, dtype=bool)
        seen[first] = True
        dup = int(np.flatnonzero(~seen)[0])
        earlier = int(np.flatnonzero(pc.equal(codes, codes[dup]).to_numpy(zero_copy_only=False))[0])
        raise InputError("code", f"duplicate code (first on row {earlier + 1})", codes[dup].as_py(),
                         row=dup + 1, source=path)
    names = col["name"]
    _check(path, pc.is_valid(names), "name", names, "must be given")

    klass = col["class"]
    cls = pc.index_in(klass, value_set=pa.array(CLASSES))
    _check(path, pc.is_valid(cls), "class", klass, "must be A, B or C")
    cls = cls.to_numpy(zero_copy_only=False).astype(np.int8)

    prepay = _integers(path, "prepay_bp", col["prepay_bp"])
    _check(path, pa.array((prepay >= 0) & (prepay <= 10000)), "prepay_bp", col["prepay_bp"],
           "must be 0..10000 basis points")
    _check(path, pa.array((prepay == 0) | (cls == 1)), "prepay_bp", col["prepay_bp"],
           "a pre-pay share is only for class B items")

    ceiling = _integers(path, "ceiling_price", col["ceiling_price"])
    _check(path, pa.array(ceiling >= 0), "ceiling_price", col["ceiling_price"],
           "must not be negative (fen per unit, 0 = none)")

    flag = pc.utf8_lower(col["essential"])
    is_true = pc.is_in(flag, value_set=pa.array(_TRUE))
    _check(path, pc.or_(is_true, pc.is_in(flag, value_set=pa.array(_FALSE))), "essential",
           col["essential"], "must be true/false or 1/0")
    essential = is_true.to_numpy(zero_copy_only=False).astype(np.int8)

    return Catalogue(codes, names, cls, prepay.astype(np.int64), ceiling.astype(np.int64),
                     essential, source=path)


@functools.lru_cache(maxsize=1)
def default_catalogue() -> Catalogue:
    """The sample catalogue shipped as kernel/data/catalogue.csv (made by scripts/make_catalogue.py)."""
    resource = importlib.resources.files("kernel") / "data" / "catalogue.csv"
    with importlib.resources.as_file(resource) as path:
        return load_catalogue(path)
