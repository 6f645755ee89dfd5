"""setldetail: one row per fund that applies to a visit (kernel/detail.py, docs/data.md).

Expected bases and payments are computed by hand from SETTLEMENT.md section 8 and the shipped
packs' TOML (the arithmetic is in the comments), never taken from the program's output.
"""
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.api import Settler, shipped_pack_path
from kernel.detail import DETAIL_SCHEMA, FUND_CODES, fen, fen_text
from kernel.layout import ACC_COLS
from kernel.synth import synth_visits

Y = 100  # fen per yuan


def visit(mdtrt_id, psn_no="P1", insutype="rural", level="2", med_type="21", end=(2013, 6, 15), cats="",
          diag=None, amount=0, essential=0, **extra):
    v = {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": insutype, "medins_lv": level,
         "med_type": med_type, "enddate": dt.date(*end), "setl_time": dt.datetime(*end, 12),
         "psn_cats": cats, "dise_codg": diag, "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0,
         "preselfpay_amt": 0, "inscp_scp_amt": amount, "inscp_essential_amt": essential}
    v.update(extra)
    return v


def detail_of(settler, visits):
    """{mdtrt_id: {fund: row}} of settle_table's detail table."""
    detail = settler.settle_table(pa.Table.from_pylist(visits), detail=True).detail
    out = {}
    for row in detail.to_pylist():
        out.setdefault(row["mdtrt_id"], {})[row["fund_pay_type"]] = row
    return out


def amounts(row):
    return row["inscp_scp_amt"], row["crt_payb_lmt_amt"], row["fund_payamt"]


def test_fen_text_is_fen():
    values = [0, 1, 99, 100, 101, 99_999, 100_000, 123_456_789, 100_000_000, 999_999_999_999, 10**12,
              10**15 + 7, -1, -5, -99_999, -100_000, -123_456_789]
    assert fen_text(np.array(values)).to_pylist() == [fen(v) for v in values]
    assert fen(123_456_789) == "1,234,567.89" and fen(-100_000) == "-1,000.00"


def test_fen_over_int64_and_integer_types():
    """fen is written in C (kernel/_text): the whole int64 range, by Python's own grouping format,
    and numpy integers as Python ints."""
    def spec(v):
        return ("-" if v < 0 else "") + f"{abs(v) // 100:,}.{abs(v) % 100:02d}"
    edges = [2**63 - 1, -2**63, -2**63 + 1, 10**18, -(10**18), 999, 1000, 100_000, 99_999_999]
    rng = np.random.default_rng(7)
    randoms = [int(x) for x in rng.integers(-2**63, 2**63 - 1, size=2000, dtype=np.int64)]
    for v in edges + randoms + [int(x) for x in rng.integers(-10**7, 10**7, size=2000)]:
        assert fen(v) == spec(v), v
    assert fen(np.int64(-123_456)) == "-1,234.56" and fen(np.int32(5)) == "0.05"
    with pytest.raises(OverflowError):
        fen(2**63)


def test_examples_a_and_b_each_fund_works_on_its_own_base(rural):
    """A: in scope 53,500 - deductible 300 = 53,200 eligible, basic 85% = 45,220; in-scope self-pay
    53,500 - 45,220 = 8,280, serious illness 50% = 4,140. B (same person): 80,000 - 800 = 79,200
    eligible, cap left 53,376 - 45,220 = 8,156; self-pay 80,000 - 8,156 = 71,844; serious-illness
    cap left 250,000 - 4,140 = 245,860, paid 15,000 + 60% x 41,844 = 40,106.40."""
    rows = detail_of(rural, [visit("A", amount=53_500 * Y, fulamt_ownpay_amt=5_000 * Y,
                                   overlmt_selfpay=500 * Y, preselfpay_amt=1_000 * Y),
                             visit("B", level="3", end=(2013, 7, 20), diag="I21.901", amount=80_000 * Y)])
    assert set(rows["A"]) == {"hifp", "hifmi"}
    assert amounts(rows["A"]["hifp"]) == (53_200 * Y, 53_376 * Y, 45_220 * Y)
    assert amounts(rows["A"]["hifmi"]) == (8_280 * Y, 250_000 * Y, 4_140 * Y)
    assert amounts(rows["B"]["hifp"]) == (79_200 * Y, 8_156 * Y, 8_156 * Y)
    assert amounts(rows["B"]["hifmi"]) == (71_844 * Y, 245_860 * Y, 40_106_40)
    info = rows["B"]["hifp"]["setl_proc_info"]
    for words in ("sample-rural/rural/2013-h1", "city or province", "deductible 800.00", "eligible 79,200.00",
                  "ratio 70%", "base 65%", "disease group ami", "not below 70% (applied)",
                  "capped by the annual cap", "8,156.00 of the annual cap left"):
        assert words in info, words
    info = rows["B"]["hifmi"]["setl_proc_info"]
    for words in ("in-scope self-pay", "71,844.00", "above 10,000.00", "[0.00, 30,000.00) 50%",
                  "[30,000.00, 100,000.00) 60%", "from 100,000.00 70%", "paid 40,106.40"):
        assert words in info, words
    assert all(r["policy_version"] == "sample-rural/rural/2013-h1" for v in rows.values() for r in v.values())


def test_example_c_serious_illness_base_is_not_the_visit_in_scope_amount(rural):
    """C1: 600,000 - 800 = 599,200 eligible, basic capped at 53,376; serious-illness base
    600,000 - 53,376 = 546,624 (bands 369,636.80, capped at 250,000). C2: base 20,000 (basic paid 0),
    cap spent. C3 (August version, no cap): 50% x 20,000 = 10,000."""
    rows = detail_of(rural, [visit(c, level="3", end=end, diag="C34.901", amount=amount * Y)
                             for c, end, amount in [("C1", (2013, 6, 10), 600_000), ("C2", (2013, 7, 25), 20_000),
                                                    ("C3", (2013, 8, 5), 20_000)]])
    assert amounts(rows["C1"]["hifp"]) == (599_200 * Y, 53_376 * Y, 53_376 * Y)
    assert amounts(rows["C1"]["hifmi"]) == (546_624 * Y, 250_000 * Y, 250_000 * Y)
    assert amounts(rows["C2"]["hifmi"]) == (20_000 * Y, 0, 0)
    assert amounts(rows["C3"]["hifmi"]) == (20_000 * Y, -1, 10_000 * Y)
    assert "no annual cap" in rows["C3"]["hifmi"]["setl_proc_info"]
    assert rows["C3"]["hifmi"]["policy_version"] == "sample-rural/rural/2013-aug"
    assert "2013-aug" in rows["C3"]["hifmi"]["setl_proc_info"]


def test_example_e_large_amount_base_is_the_overflow(city):
    """E: retired employee, level 3: 85% + 5 = 90%; 150,000 - 1,000 = 149,000 eligible; basic capped
    at 120,000; covered round_half_up(120,000 / 90%) = 133,333.33; overflow 149,000 - 133,333.33 =
    15,666.67; large-amount 90% = 14,100.00 (cap 200,000 left)."""
    rows = detail_of(city, [visit("E", insutype="employee", level="3", cats="retired", amount=150_000 * Y)])["E"]
    assert set(rows) == {"hifp", "hifob"}
    assert amounts(rows["hifp"]) == (149_000 * Y, 120_000 * Y, 120_000 * Y)
    assert amounts(rows["hifob"]) == (15_666_67, 200_000 * Y, 14_100 * Y)
    assert "category retired +5%" in rows["hifp"]["setl_proc_info"]
    assert "base 85%" in rows["hifp"]["setl_proc_info"] and "ratio 90%" in rows["hifp"]["setl_proc_info"]
    assert "15,666.67 x 90%" in rows["hifob"]["setl_proc_info"]


def test_example_f_assistance_base_is_what_is_left_in_scope(rural):
    """F: 低保, county, 20,000: deductible waived; basic 85% = 17,000; self-pay 3,000; serious
    illness 50% = 1,500; assistance 50% of 3,000 - 1,500 = 1,500 -> 750."""
    rows = detail_of(rural, [visit("F", cats="low_income", amount=20_000 * Y)])["F"]
    assert amounts(rows["hifp"]) == (20_000 * Y, 53_376 * Y, 17_000 * Y)
    assert amounts(rows["hifmi"]) == (3_000 * Y, 250_000 * Y, 1_500 * Y)
    assert amounts(rows["maf"]) == (1_500 * Y, 30_000 * Y, 750 * Y)
    assert "waived for category low_income" in rows["hifp"]["setl_proc_info"]
    assert "category low_income" in rows["maf"]["setl_proc_info"]


def test_guaranteed_minimum_top_up_is_not_in_the_serious_illness_base(city):
    """Resident inpatient, city level 3 (60%, deductible 500, essential drugs +15%), 1,000 in scope of
    which 100 essential: the deductible comes from the 900 non-essential; basic 400 x 60% + 100 x 75%
    = 315; funds must pay 35% x 1,000 = 350: top-up 35, hifp_pay 350. Serious illness (annual) saw
    in-scope self-pay 1,000 - 315 = 685, before the top-up (step 10 comes after step 7)."""
    rows = detail_of(city, [visit("G", insutype="resident", level="3", amount=1_000 * Y, essential=100 * Y)])["G"]
    assert amounts(rows["hifp"]) == (500 * Y, 108_000 * Y, 350 * Y)     # cap max(6 x 18,000, 90,000)
    assert amounts(rows["hifmi"]) == (685 * Y, -1, 0)
    info = rows["hifp"]["setl_proc_info"]
    assert "essential drugs +15%" in info and "top-up" in info and "35% of the total) 35.00" in info


def test_a_negative_essential_uplift_stops_at_0_percent(tmp_path):
    """The city pack with the residents' essential-drug uplift at -70% (a pack may say so): the same
    resident visit as above pays the essential 100 at max(0, 60% - 70%) = 0%, so basic 400 x 60% = 240;
    the top-up to 35% x 1,000 = 350 is 110, and serious illness saw 1,000 - 240 = 760."""
    text = shipped_pack_path("sample_city").read_text(encoding="utf-8")
    assert text.count('essential_drugs = "+15%"') == 1
    pack = tmp_path / "city_negative.toml"
    pack.write_text(text.replace('essential_drugs = "+15%"', 'essential_drugs = "-70%"'), encoding="utf-8")
    settler = Settler.from_files(pack)
    rows = detail_of(settler, [visit("G", insutype="resident", level="3", amount=1_000 * Y, essential=100 * Y)])["G"]
    assert amounts(rows["hifp"])[2] == 350 * Y
    assert amounts(rows["hifmi"]) == (760 * Y, -1, 0)
    assert "35% of the total) 110.00" in rows["hifp"]["setl_proc_info"]


def test_words_for_bands_denial_exclusion(city, rural):
    """Outpatient pooling bands name their edges; an unfiled out-of-area visit is denied (city
    resident: deny); an excluded injury cause names the cause; a quota names the group."""
    d = detail_of(city, [visit("D", insutype="resident", med_type="11", level="1", amount=100 * Y,
                               mdtrt_admdvs=None),
                         visit("X", psn_no="P2", insutype="resident", level="2", amount=1_000 * Y,
                               mdtrt_admdvs="110000")])
    assert "bands on the year's cumulative eligible amount: [0.00, 50.00) 0%, [50.00, 450.00) 50%, " \
           "from 450.00 0%" in d["D"]["hifp"]["setl_proc_info"]
    assert "denied (out of area, not filed)" in d["X"]["hifp"]["setl_proc_info"]
    r = detail_of(rural, [visit("T", amount=1_000 * Y, inj_cause="traffic"),
                          visit("H", psn_no="P3", diag="K35.8", amount=7_200 * Y)])
    assert "injury cause 'traffic' is excluded" in r["T"]["hifp"]["setl_proc_info"]
    assert amounts(r["T"]["hifp"])[0] == 0 and amounts(r["T"]["hifp"])[2] == 0
    # H: quota 6,000 at county: base 6,000 (no deductible in quota mode), 85% = 5,100, hospital 1,200
    assert amounts(r["H"]["hifp"]) == (6_000 * Y, 53_376 * Y, 5_100 * Y)
    assert "single-disease quota 6,000.00 for disease group appendicitis" in r["H"]["hifp"]["setl_proc_info"]
    assert "the hospital bears what is above it 1,200.00" in r["H"]["hifp"]["setl_proc_info"]


def test_detail_table_layout(city):
    """By visit in input order (not settlement order), then funds in FUNDS order; every visit has
    a basic-fund row; the table casts to DETAIL_SCHEMA."""
    visits = [visit("V2", psn_no="Q", insutype="employee", level="3", cats="civil_servant,retired",
                    end=(2013, 5, 2), amount=200_000 * Y),
              visit("V1", psn_no="Q", insutype="employee", level="3", end=(2013, 5, 1), amount=10 * Y),
              visit("V3", psn_no="R", insutype="resident", level="2", cats="low_income", amount=5_000 * Y)]
    detail = city.settle_table(pa.Table.from_pylist(visits), detail=True).detail
    assert detail.cast(DETAIL_SCHEMA).schema == DETAIL_SCHEMA
    got = list(zip(detail.column("mdtrt_id").to_pylist(), detail.column("fund_pay_type").to_pylist()))
    assert got == [("V2", "hifp"), ("V2", "hifob"), ("V2", "cvlserv"), ("V1", "hifp"), ("V1", "hifob"),
                   ("V3", "hifp"), ("V3", "hifmi"), ("V3", "maf")]
    assert detail.column("psn_no").to_pylist() == ["Q"] * 5 + ["R"] * 3


# --- the real-time rows are the batch rows -----------------------------------------------------------

@st.composite
def city_or_rural_visit(draw):
    pack = draw(st.sampled_from(["sample_city", "sample_rural"]))
    if pack == "sample_rural":
        insutype, levels, med_types = "rural", ["1", "2", "3"], ["11", "21"]
    else:
        insutype = draw(st.sampled_from(["employee", "resident"]))
        levels, med_types = ["1", "2", "3", "4"], ["11", "14", "21"]
    end = dt.date(2013, 1, 1) + dt.timedelta(days=draw(st.integers(0, 364)))
    inscp = draw(st.integers(0, 80_000_000))
    v = {"mdtrt_id": "V1", "psn_no": "P1", "insutype": insutype, "medins_lv": draw(st.sampled_from(levels)),
         "med_type": draw(st.sampled_from(med_types)), "enddate": end,
         "setl_time": dt.datetime.combine(end, dt.time(10)),
         "psn_cats": draw(st.sampled_from(["", "low_income", "retired", "civil_servant", "civil_servant,retired",
                                           "five_guarantee,veteran"])),
         "dise_codg": draw(st.sampled_from([None, "C34.9", "K35.8", "F20.0", "I21.0", "N18.5", "J18.9"])),
         "inj_cause": draw(st.sampled_from([None, "none", "traffic", "pending"])),
         "mdtrt_admdvs": draw(st.sampled_from([None, "530300", "420600", "110000"])),
         "out_filing_flag": draw(st.booleans()), "refl_flag": draw(st.booleans()),
         "ipt_days": draw(st.integers(0, 40)), "acct_used_flag": draw(st.booleans()),
         "fulamt_ownpay_amt": draw(st.integers(0, 5_000_000)), "overlmt_selfpay": draw(st.integers(0, 500_000)),
         "preselfpay_amt": draw(st.integers(0, 500_000)), "inscp_scp_amt": inscp,
         "inscp_essential_amt": draw(st.integers(0, inscp))}
    return pack, v


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=city_or_rural_visit(), mode=st.sampled_from(["settle", "presettle"]),
       acc=st.fixed_dictionaries({name: st.integers(0, 30_000_000) for name in ACC_COLS}),
       balance=st.integers(0, 1_000_000))
def test_real_time_rows_equal_batch_rows(rural, city, case, mode, acc, balance):
    pack, v = case
    s = {"sample_rural": rural, "sample_city": city}[pack]
    one = s.settle_one(dict(v), None, acc, balance, mode)
    key = (v["psn_no"], v["insutype"], v["enddate"].year)
    batch = s.settle_table(pa.Table.from_pylist([{**v, "acct_balc": balance}]), mode=mode,
                           opening_acc={key: acc}, detail=True)
    rows = [tuple(r[k] for k in ("fund_pay_type", "inscp_scp_amt", "crt_payb_lmt_amt", "fund_payamt",
                                 "setl_proc_info")) for r in batch.detail.to_pylist()]
    assert [(d.fund_pay_type, d.inscp_scp_amt, d.crt_payb_lmt_amt, d.fund_payamt, d.setl_proc_info)
            for d in one.setldetail] == rows


# --- the bases reproduce the payments, on generated visits -------------------------------------------

def rh(x):
    return (x + 5000) // 10000


def capped(pay, limit):
    return pay if limit < 0 else min(pay, limit)


def band_pay(base, bands):
    """Round-half-up of the banded amount of [0, base): bands [(lower edge fen, rate bp)]."""
    total = 0
    for k, (lo, rate) in enumerate(bands):
        hi = bands[k + 1][0] if k + 1 < len(bands) else None
        total += max(0, (base if hi is None else min(base, hi)) - lo) * rate
    return rh(total)


@pytest.mark.parametrize("pack", ["sample_rural", "sample_city"])
def test_bases_reproduce_each_layers_payment(rural, city, pack):
    """On 3,000 synthetic visits, each layer's payment follows from the base its row reports, by the
    formulas of docs/design.md with the pack's numbers read off its TOML: large-amount 90% (city
    employee), civil servant 50% (city), assistance 50% with no deductible (both), rural serious
    illness per admission above 10,000 on bands 0 50% / 30,000 60% / 100,000 70%."""
    s = {"sample_rural": rural, "sample_city": city}[pack]
    visits, lines = synth_visits(s.pack, s.catalogue, 3_000, seed=7)
    result = s.settle_table(visits, lines, detail=True)
    total = dict(zip(result.table.column("mdtrt_id").to_pylist(), result.table.column("medfee_sumamt").to_pylist()))
    seen = {code: 0 for code in FUND_CODES}
    for row in result.detail.to_pylist():
        code, base, limit, paid = row["fund_pay_type"], row["inscp_scp_amt"], row["crt_payb_lmt_amt"], row["fund_payamt"]
        seen[code] += paid > 0
        if code == "hifob":
            assert paid == capped(rh(base * 9000), limit), row
        elif code == "cvlserv":
            assert paid == capped(rh(base * 5000), limit), row
        elif code == "maf":
            assert paid == capped(rh(base * 5000), limit), row
        elif code == "hifmi" and pack == "sample_rural":
            triggered = total[row["mdtrt_id"]] > 10_000 * Y
            expected = band_pay(base, [(0, 5000), (30_000 * Y, 6000), (100_000 * Y, 7000)]) if triggered else 0
            assert paid == capped(expected, limit), row
    paying = {"sample_rural": ("hifp", "hifmi", "maf"), "sample_city": ("hifp", "cvlserv", "hifmi", "maf")}   # hifob: see example E
    assert all(seen[code] > 0 for code in paying[pack]), seen


def test_every_visit_has_a_basic_fund_row_naming_its_version(city):
    visits, lines = synth_visits(city.pack, city.catalogue, 2_000, seed=3)
    result = city.settle_table(visits, lines, detail=True)
    detail = result.detail
    hifp = detail.filter(pc.equal(detail.column("fund_pay_type"), "hifp"))
    assert hifp.column("mdtrt_id").to_pylist() == visits.column("mdtrt_id").to_pylist()
    versions = result.table.column("policy_version").to_pylist()
    assert hifp.column("policy_version").to_pylist() == versions
    for info, version in zip(hifp.column("setl_proc_info").to_pylist(), versions):
        assert info.startswith(version + ", ")
