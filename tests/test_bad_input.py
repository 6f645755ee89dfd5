"""SETTLEMENT.md section 9: bad input gets an error naming field, row or line, rule and value; nothing is written."""
import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernel.api import Settler, shipped_pack_path
from kernel.cli import main
from kernel.errors import InputError

Y = 100


def good_visit(mdtrt_id="V1", **over):
    v = {"mdtrt_id": mdtrt_id, "psn_no": "P1", "insutype": "rural", "medins_lv": "2", "med_type": "21",
         "begndate": dt.date(2013, 6, 1), "enddate": dt.date(2013, 6, 15),
         "setl_time": dt.datetime(2013, 6, 15, 10), "medfee_sumamt": 300 * Y}
    v.update(over)
    return v


def good_lines(mdtrt_id="V1", code=None):
    return [{"mdtrt_id": mdtrt_id, "line_no": 1, "hilist_code": code, "cnt": 2, "pric": 100 * Y,
             "det_item_fee_sumamt": 200 * Y},
            {"mdtrt_id": mdtrt_id, "line_no": 2, "hilist_code": code, "cnt": 1, "pric": 100 * Y,
             "det_item_fee_sumamt": 100 * Y}]


@pytest.fixture(scope="module")
def settler():
    return Settler.from_files(shipped_pack_path("sample_rural"))


@pytest.fixture(scope="module")
def code(settler):
    """A class A catalogue code: fully in scope."""
    import numpy as np
    return settler.catalogue.codes[int(np.flatnonzero(settler.catalogue.cls == 0)[0])].as_py()


def refuse(settler, visits, lines, field, words, value=None, line=None, row=None):
    with pytest.raises(InputError) as e:
        settler.settle_table(pa.Table.from_pylist(visits),
                             pa.Table.from_pylist(lines) if lines is not None else None)
    err = e.value
    assert err.field == field
    assert words in str(err)
    if value is not None:
        assert err.value == value
    if line is not None:
        assert err.line == line
    if row is not None:
        assert err.row == row
    return err


def test_a_good_visit_settles(settler, code):
    rows = settler.settle_table(pa.Table.from_pylist([good_visit()]),
                                pa.Table.from_pylist(good_lines(code=code))).table.to_pylist()
    assert rows[0]["medfee_sumamt"] == 300 * Y


def test_negative_price(settler, code):
    lines = good_lines(code=code)
    lines[1].update(pric=-100 * Y, det_item_fee_sumamt=-100 * Y)
    refuse(settler, [good_visit()], lines, "pric", "negative", value=-100 * Y, line=2)


def test_non_integer_money_in_a_visit(settler):
    v = good_visit(fulamt_ownpay_amt=0, overlmt_selfpay=0, preselfpay_amt=0, inscp_scp_amt=12.5)
    refuse(settler, [v], None, "inscp_scp_amt", "int64", value=12.5, row=1)


def test_negative_quantity(settler, code):
    lines = good_lines(code=code)
    lines[0].update(cnt=-2, det_item_fee_sumamt=-200 * Y)
    refuse(settler, [good_visit()], lines, "cnt", "whole number", value=-2, line=1)


def test_amount_not_cnt_times_price(settler, code):
    lines = good_lines(code=code)
    lines[0]["det_item_fee_sumamt"] = 199 * Y
    refuse(settler, [good_visit(medfee_sumamt=299 * Y)], lines, "det_item_fee_sumamt", "cnt x pric", line=1)


def test_total_not_sum_of_lines(settler, code):
    refuse(settler, [good_visit(medfee_sumamt=301 * Y)], good_lines(code=code), "medfee_sumamt",
           "not the sum of the lines", value=301 * Y, row=1)


def test_unknown_catalogue_code_refused(settler):
    refuse(settler, [good_visit()], good_lines(code="NO-SUCH-CODE"), "hilist_code", "not in the catalogue",
           value="NO-SUCH-CODE", line=1)


def test_date_with_no_version_in_force(settler, code):
    v = good_visit(begndate=dt.date(2011, 3, 1), enddate=dt.date(2011, 3, 5), setl_time=dt.datetime(2011, 3, 5))
    refuse(settler, [v], good_lines(code=code), "enddate", "no policy version", value="2011-03-05", row=1)


@pytest.mark.parametrize("field,value", [("insutype", "martian"), ("medins_lv", "9"), ("med_type", "99"),
                                         ("inj_cause", "meteor"), ("psn_cats", "astronaut")])
def test_unknown_codes(settler, code, field, value):
    refuse(settler, [good_visit(**{field: value})], good_lines(code=code), field, "unknown", value=value, row=1)


def refuse_one(settler, visit, lines, field, words, value=None, line=None, row=None):
    """The same refusal on the real-time path (settle_one, as the server calls it)."""
    with pytest.raises(InputError) as e:
        settler.settle_one(visit, lines)
    err = e.value
    assert (err.field, err.line, err.row) == (field, line, row) and words in str(err)
    if value is not None:
        assert err.value == value
    return err


def test_unknown_insured_region(settler, code):
    """SETTLEMENT.md section 9, unknown region: a person insured outside the pack's pooling region."""
    bad = good_visit("V2", insu_admdvs="ZZZ", mdtrt_admdvs="QQQ")
    first = good_visit(insu_admdvs="530300", mdtrt_admdvs=None)     # from_pylist takes row 1's columns
    err = refuse(settler, [first, bad], good_lines(code=code) + good_lines("V2", code=code),
                 "insu_admdvs", "unknown region", value="ZZZ", row=2)
    assert "530300" in str(err) and "530382" in str(err)         # the pack's codes are listed
    refuse_one(settler, bad, good_lines("V2", code=code), "insu_admdvs", "unknown region", value="ZZZ", row=1)
    # a code of another prefecture is as unknown as a malformed one
    refuse(settler, [good_visit(insu_admdvs="110000")], good_lines(code=code), "insu_admdvs",
           "unknown region", value="110000", row=1)


def test_treatment_region_must_be_a_region_code(settler, code):
    """Treatment may be anywhere (out of area is legal), but "QQQ" is no region at all."""
    bad = good_visit(mdtrt_admdvs="QQQ")
    refuse(settler, [bad], good_lines(code=code), "mdtrt_admdvs", "6-digit", value="QQQ", row=1)
    refuse_one(settler, bad, good_lines(code=code), "mdtrt_admdvs", "6-digit", value="QQQ", row=1)


def test_regions_of_the_pooling_region_are_local(settler, code):
    """A county of the prefecture is in the pooling region: treatment there is not out of area;
    treatment in another prefecture is (the rural pack has no out-of-area adjustment, only the flag)."""
    from kernel.layout import FLAGS
    out_area = 1 << FLAGS.index("F_OUT_AREA")
    visits = [good_visit("V1", insu_admdvs="530302", mdtrt_admdvs="530321"),
              good_visit("V2", psn_no="P2", insu_admdvs="530302", mdtrt_admdvs="530100"),
              good_visit("V3", psn_no="P3", mdtrt_admdvs="530300")]
    lines = good_lines("V1", code) + good_lines("V2", code) + good_lines("V3", code)
    rows = settler.settle_table(pa.Table.from_pylist(visits), pa.Table.from_pylist(lines)).table.to_pylist()
    assert [bool(r["flags"] & out_area) for r in rows] == [False, True, False]
    assert [bool(settler.settle_one(v, good_lines(v["mdtrt_id"], code)).flags & out_area)
            for v in visits] == [False, True, False]


def test_float_money_column_refused_even_when_whole(settler, code):
    """pric = 10000.0 is a float column: refused by name, not cast (a float near money is a bug)."""
    lines = good_lines(code=code)
    lines[0].update(pric=10000.0, det_item_fee_sumamt=20000.0)
    lines[1].update(pric=10000.0, det_item_fee_sumamt=10000.0)
    err = refuse(settler, [good_visit()], lines, "pric", "floating point", value=10000.0, line=1)
    assert str(err).startswith("lines, line 1: pric: ")
    refuse_one(settler, good_visit(), lines, "pric", "floating point", value=10000.0, line=1)
    v = good_visit(fulamt_ownpay_amt=0, overlmt_selfpay=0, preselfpay_amt=0, inscp_scp_amt=30000.0,
                   medfee_sumamt=None)
    refuse(settler, [v], None, "inscp_scp_amt", "floating point", value=30000.0, row=1)
    refuse_one(settler, v, None, "inscp_scp_amt", "floating point", value=30000.0, row=1)


def test_type_error_in_a_line_column_names_field_and_line(settler, code):
    table = pa.Table.from_pylist(good_lines(code=code)).set_column(
        3, "cnt", pa.array(["2", "two"]))           # a text column; line 2 is no number
    with pytest.raises(InputError) as e:
        settler.settle_table(pa.Table.from_pylist([good_visit()]), table)
    assert (e.value.field, e.value.line, e.value.row, e.value.value) == ("cnt", 2, None, "two")
    assert str(e.value) == "lines, line 2: cnt: must be int64 (value: 'two')"
    lines = good_lines(code=code)
    lines[1]["cnt"] = "two"
    refuse_one(settler, good_visit(), lines, "cnt", "must be int64", value="two", line=2)


@pytest.mark.parametrize("days, words", [(-1, "must not be negative"), (2.5, "floating point")])
def test_bad_bed_days(settler, code, days, words):
    bad = good_visit("V2", ipt_days=days)
    first = good_visit(ipt_days=3)
    refuse(settler, [first, bad], good_lines(code=code) + good_lines("V2", code=code), "ipt_days", words,
           value=days if days < 0 else 3.0, row=1 if days > 0 else 2)   # a float column: its first value
    refuse_one(settler, bad, good_lines("V2", code=code), "ipt_days", words, value=days, row=1)


def test_unknown_code_self_paid_when_the_pack_says_so(code):
    """unknown_codes = "selfpay": the line is settled as class C (fully self-paid), batch and real time.
    Township (95%, deductible 100): the known line's 200 in scope pays 95% x 100 = 95.00."""
    from kernel.api import shipped_pack_path as path
    from kernel.policy import load_pack, pack_from_raw
    import msgspec
    raw = msgspec.toml.decode(path("sample_rural").read_bytes())
    raw["unknown_codes"] = "selfpay"
    lenient = Settler(pack_from_raw(raw, "selfpay"), Settler.from_files(path("sample_rural")).catalogue)
    assert load_pack(path("sample_rural")).unknown_codes == "refuse"
    lines = good_lines(code=code)
    lines[1]["hilist_code"] = "NO-SUCH-CODE"                    # 1 x 100.00
    v = good_visit(medins_lv="1")
    row = lenient.settle_table(pa.Table.from_pylist([v]), pa.Table.from_pylist(lines)).table.to_pylist()[0]
    one = lenient.settle_one(v, lines).amounts
    for r in (row, one):
        assert (r["fulamt_ownpay_amt"], r["inscp_scp_amt"]) == (100 * Y, 200 * Y)
        assert (r["act_pay_dedc"], r["hifp_pay"], r["psn_part_amt"]) == (100 * Y, 95 * Y, 205 * Y)


def test_overflow(settler, code):
    lines = good_lines(code=code)
    lines[0].update(cnt=10**8, pric=10**8, det_item_fee_sumamt=10**16)
    refuse(settler, [good_visit()], lines, "det_item_fee_sumamt", "overflow", line=1)


def test_duplicate_line_ids(settler, code):
    lines = good_lines(code=code)
    lines[1]["line_no"] = 1
    refuse(settler, [good_visit()], lines, "line_no", "duplicate", value=1, line=2)


def test_duplicate_visit_ids(settler, code):
    refuse(settler, [good_visit(), good_visit()], good_lines(code=code), "mdtrt_id", "duplicate", row=2)


def test_missing_required_column(settler, code):
    v = good_visit()
    del v["med_type"]
    refuse(settler, [v], good_lines(code=code), "med_type", "missing")


def test_line_of_unknown_visit(settler, code):
    refuse(settler, [good_visit()], good_lines(code=code) + good_lines("V9", code=code), "mdtrt_id",
           "not in the visits", value="V9", line=3)


def test_pending_cause_is_refused_by_settle_and_provisional_in_presettle(settler, code):
    table = pa.Table.from_pylist([good_visit(inj_cause="pending", medins_lv="1")])   # township: deductible 100
    lines = pa.Table.from_pylist(good_lines(code=code))
    settled = settler.settle_table(table, lines, mode="settle")
    row = settled.table.to_pylist()[0]
    assert (row["status"], row["reason"], row["fund_pay_sumamt"]) == ("REFUSED", "pending_cause", 0)
    assert all(v == 0 for k, v in settled.accumulators.to_pylist()[0].items() if k.startswith("A_"))
    pre = settler.settle_table(table, lines, mode="presettle").table.to_pylist()[0]
    assert pre["status"] == "PROVISIONAL" and pre["fund_pay_sumamt"] > 0


def test_cli_writes_nothing_on_bad_input(tmp_path, code):
    visits, lines = tmp_path / "v.parquet", tmp_path / "l.parquet"
    pq.write_table(pa.Table.from_pylist([good_visit(medfee_sumamt=999 * Y)]), visits)
    pq.write_table(pa.Table.from_pylist(good_lines(code=code)), lines)
    out = tmp_path / "results.parquet"
    assert main(["settle", str(visits), "--lines", str(lines), "--out", str(out)]) == 2
    assert not out.exists()
    assert set(tmp_path.iterdir()) == {visits, lines}


def _batch(n, ids, med_type_at=None):
    """n precomputed visits of one rural person a day apart (visit ids given), one of them with an
    unknown med type (an error found with the pack's codes, after the duplicate-id check's place)."""
    days = [dt.date(2013, 1, 1) + dt.timedelta(days=i % 300) for i in range(n)]
    med = ["21"] * n
    if med_type_at is not None:
        med[med_type_at] = "99"
    zero = pa.array([0] * n, pa.int64())
    return pa.table({
        "mdtrt_id": ids, "psn_no": [f"P{i % 1000}" for i in range(n)], "insutype": ["rural"] * n,
        "medins_lv": ["2"] * n, "med_type": med, "begndate": pa.array(days, pa.date32()),
        "enddate": pa.array(days, pa.date32()),
        "setl_time": pa.array([dt.datetime.combine(d, dt.time(10)) for d in days], pa.timestamp("s")),
        "fulamt_ownpay_amt": zero, "overlmt_selfpay": zero, "preselfpay_amt": zero,
        "inscp_scp_amt": pa.array([300 * Y] * n, pa.int64())})


def _ids(n, ascending):
    """n distinct visit ids: zero-padded, so they ascend as strings, or not ("V10" < "V2")."""
    return [f"V{i:07d}" if ascending else f"V{i}" for i in range(n)]


@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("n", [5, 200_001])   # 200,001: the strings are hashed on other threads
def test_a_duplicate_visit_id_is_the_first_error(settler, n, ascending):
    """Found whether the ids ascend (one comparison per row) or not (a hash table), next to each
    other or far apart; its error comes before any error that the pack's code lookups find, and a
    batch with both returns nothing."""
    from kernel import adapter
    assert (n >= adapter._BACKGROUND_ROWS) == (n > 5)
    for first, again in [(n // 2, n - 1), (n // 2, n // 2 + 1)]:
        ids = _ids(n, ascending)
        ids[again] = ids[first]
        with pytest.raises(InputError) as e:
            settler.settle_table(_batch(n, ids, med_type_at=1))
        assert (e.value.field, e.value.row, e.value.value) == ("mdtrt_id", again + 1, ids[first])
        assert "duplicate visit id" in str(e.value)
    # distinct ids: the med type is the first error
    with pytest.raises(InputError) as e:
        settler.settle_table(_batch(n, _ids(n, ascending), med_type_at=1))
    assert (e.value.field, e.value.row, e.value.value) == ("med_type", 2, "99")
    # and with neither, it settles
    out = settler.settle_table(_batch(n, _ids(n, ascending))).table
    assert out.num_rows == n and out.column("mdtrt_id").to_pylist() == _ids(n, ascending)
