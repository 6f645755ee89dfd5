"""The catalogue loader: the shipped sample, lookup, and every bad-input message (SETTLEMENT.md section 9)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernel.catalogue import Catalogue, default_catalogue, load_catalogue
from kernel.errors import InputError

HEADER = "code,name,class,prepay_bp,ceiling_price,essential\n"
GOOD = ["XJ01CAA001,阿莫西林胶囊(0.25g),A,0,0,1",
        "XJ01DDB002,头孢曲松注射用(1.0g),B,1000,0,0",
        "001205000010000,血常规,A,0,2000,0",
        "003301000010000,双眼重睑成形术,C,0,0,false"]


def write(tmp_path, rows, header=HEADER, name="cat.csv"):
    path = tmp_path / name
    path.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_shipped_catalogue_loads():
    cat = default_catalogue()
    assert isinstance(cat, Catalogue) and 2500 <= len(cat) <= 3500
    assert cat.codes.type == pa.string() and len(set(cat.codes.to_pylist())) == len(cat)
    assert cat.cls.dtype == np.int8 and cat.prepay.dtype == np.int64
    assert cat.ceiling.dtype == np.int64 and cat.essential.dtype == np.int8
    share = np.bincount(cat.cls, minlength=3) / len(cat)
    assert 0.40 < share[0] < 0.50 and 0.30 < share[1] < 0.40 and 0.15 < share[2] < 0.25
    b = cat.cls == 1
    assert ((cat.prepay[b] >= 500) & (cat.prepay[b] <= 2000)).all() and (cat.prepay[~b] == 0).all()
    assert np.median(cat.prepay[b]) == 1000
    assert (cat.ceiling > 0).any() and (cat.essential == 1).any()
    assert not cat.cls.flags.writeable                       # shared by every caller


def test_lookup_and_as_dict(tmp_path):
    cat = load_catalogue(write(tmp_path, GOOD))
    assert len(cat) == 4
    rows = cat.lookup(pa.array(["001205000010000", "nope", None, "XJ01CAA001"]))
    assert rows.dtype == np.int32 and rows.tolist() == [2, -1, -1, 0]
    chunked = pa.chunked_array([["XJ01DDB002"], ["003301000010000", "XJ01CAA001"]])
    assert cat.lookup(chunked).tolist() == [1, 3, 0]
    assert cat.cls.tolist() == [0, 1, 0, 2] and cat.prepay.tolist() == [0, 1000, 0, 0]
    assert cat.ceiling.tolist() == [0, 0, 2000, 0] and cat.essential.tolist() == [1, 0, 0, 0]
    assert cat.as_dict() == {
        "XJ01CAA001": ("A", 0, 0, True), "XJ01DDB002": ("B", 1000, 0, False),
        "001205000010000": ("A", 0, 2000, False), "003301000010000": ("C", 0, 0, False)}


def test_parquet_with_typed_columns(tmp_path):
    cat = default_catalogue()
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({
        "code": cat.codes, "name": cat.names, "class": pa.array(np.array(["A", "B", "C"])[cat.cls]),
        "prepay_bp": pa.array(cat.prepay), "ceiling_price": pa.array(cat.ceiling),
        "essential": pa.array(cat.essential.astype(bool)), "extra": pa.array(np.zeros(len(cat)))}), path)
    back = load_catalogue(path)
    assert back.codes.equals(cat.codes)
    for name in ("cls", "prepay", "ceiling", "essential"):
        assert np.array_equal(getattr(back, name), getattr(cat, name))


@pytest.mark.parametrize("rows, row, column, value, rule", [
    (GOOD[:2] + ["XJ01CAA001,dup,A,0,0,0"], 3, "code", "XJ01CAA001", "duplicate code (first on row 1)"),
    (GOOD[:1] + ["X1,x,D,0,0,0"], 2, "class", "D", "must be A, B or C"),
    (GOOD[:1] + ["X1,x,b,1000,0,0"], 2, "class", "b", "must be A, B or C"),
    (GOOD + ["X1,x,B,10001,0,0"], 5, "prepay_bp", "10001", "0..10000"),
    (GOOD + ["X1,x,B,-5,0,0"], 5, "prepay_bp", "-5", "0..10000"),
    (GOOD[:1] + ["X1,x,A,1000,0,0"], 2, "prepay_bp", "1000", "only for class B"),
    (GOOD[:1] + ["X1,x,B,10%,0,0"], 2, "prepay_bp", "10%", "whole number"),
    (GOOD + ["X1,x,A,0,-100,0"], 5, "ceiling_price", "-100", "must not be negative"),
    (GOOD + ["X1,x,A,0,12.5,0"], 5, "ceiling_price", "12.5", "whole number"),
    (GOOD + ["X1,x,A,0,,0"], 5, "ceiling_price", "", "whole number"),
    (GOOD[:1] + ["X1,x,A,0,0,yes"], 2, "essential", "yes", "true/false or 1/0"),
    (GOOD[:1] + [",x,A,0,0,0"], 2, "code", "", "must not be empty"),
])
def test_bad_values_name_file_row_column_value(tmp_path, rows, row, column, value, rule):
    path = write(tmp_path, rows)
    with pytest.raises(InputError) as err:
        load_catalogue(path)
    e = err.value
    assert (e.row, e.field, e.value) == (row, column, value)
    assert str(path) in str(e) and f"row {row}" in str(e) and column in str(e) and repr(value) in str(e)
    assert rule in str(e)


def test_missing_column(tmp_path):
    path = write(tmp_path, ["X1,x,A,0,1"], header="code,name,class,prepay_bp,essential\n")
    with pytest.raises(InputError, match="ceiling_price: missing column") as err:
        load_catalogue(path)
    assert str(path) in str(err.value)


def test_missing_file_and_ragged_csv(tmp_path):
    with pytest.raises(InputError, match="no such catalogue file"):
        load_catalogue(tmp_path / "absent.csv")
    with pytest.raises(InputError, match="not a readable CSV"):
        load_catalogue(write(tmp_path, GOOD[:1] + ["X1,x,A,0"]))


def test_null_in_parquet_is_refused(tmp_path):
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"code": ["A1", "A2"], "name": ["a", "b"], "class": ["A", None],
                             "prepay_bp": [0, 0], "ceiling_price": [0, 0], "essential": [True, False]}), path)
    with pytest.raises(InputError) as err:
        load_catalogue(path)
    assert (err.value.row, err.value.field, err.value.value) == (2, "class", None)
