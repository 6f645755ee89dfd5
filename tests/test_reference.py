"""The reference chain (kernel/reference.py) against SETTLEMENT.md section 8 and the section 7 identities.

The packs are built here with pack_from_raw, independent of the shipped pack files: the sample rural
pack of section 8 (with its 2013-h1 and 2013-aug versions), an employee scheme (example E) and a
resident scheme with outpatient pooling (example D).
"""
import copy
import datetime
import random

import pytest

from kernel.errors import InputError
from kernel.layout import ACC_COLS, FLAGS, OUT_COLS, STATUS
from kernel.policy import pack_from_raw
from kernel.reference import (Accumulators, CatalogueEntry, disease_group, explain, itemize,
                              select_version, settle_batch, settle_many, settle_visit)

D = datetime.date
FLAG = {name: 1 << i for i, name in enumerate(FLAGS)}


def yuan(text):
    """"45,220.00" -> 4522000 fen (the figures of section 8 as written)."""
    whole, _, frac = text.replace(",", "").partition(".")
    return int(whole) * 100 + int(frac.ljust(2, "0"))


# --- the packs -------------------------------------------------------------------------------------

MAJOR20 = ["C50", "C53", "C34", "C15", "C16", "C18", "C20", "C92.1", "I21",
           "I63", "D66", "D67", "D68", "E10", "E05", "Q35", "Q36", "Q37", "B20", "B21", "B22", "B23",
           "B24"]

RURAL_H1 = {
    "id": "2013-h1",
    "effective_from": D(2013, 1, 1),
    "effective_to": D(2013, 7, 31),
    "excluded_causes": ["traffic", "fight", "drunkenness", "self_harm", "crime", "work_injury",
                        "maternity", "cosmetic"],
    "med_types": {
        "21": {
            "ratio": {"1": "95%", "2": "85%", "3": "65%"},
            "deductible": {"kind": "per_admission", "amount": {"1": "100", "2": "300", "3": "800"},
                           "waived_categories": ["five_guarantee", "low_income"]},
        },
    },
    "pools": {"inpatient": {"cap_formula": {"multiplier": 6, "benchmark": "8896", "floor": "50000"}}},
    "diseases": [
        {"groups": ["major20", "child_leukaemia"], "floor": "70%"},
        {"groups": ["uremia"], "override": "90%"},
        {"groups": ["severe_mental"], "override": "90%", "deductible_once_a_year": True,
         "quota": {"mode": "per_bed_day", "amount": {"2": "150"}}},
        {"groups": ["appendicitis"], "quota": {"mode": "single_disease", "amount": {"2": "6000"}}},
    ],
    "serious_illness": {
        "med_types": ["21"], "trigger": "per_admission", "threshold": "10000",
        "base": "inscope_selfpay",
        "bands": [{"start": "0", "ratio": "50%"}, {"start": "30000", "ratio": "60%"},
                  {"start": "100000", "ratio": "70%"}],
        "cap": "250000",
    },
    "assistance": {"categories": ["low_income", "five_guarantee"], "ratio": "50%", "cap": "30000"},
}

RURAL_AUG = {"id": "2013-aug", "inherits": "2013-h1", "effective_from": D(2013, 8, 1),
             "serious_illness": {"cap": "none"}}

EMPLOYEE_2013 = {
    "id": "2013",
    "effective_from": D(2013, 1, 1),
    "excluded_causes": ["traffic", "fight", "work_injury"],
    "med_types": {
        "21": {"ratio": {"1": "90%", "2": "88%", "3": "85%"},
               "deductible": {"amount": {"1": "300", "2": "600", "3": "1000"}}},
        "11": {"ratio": {"1": "60%", "2": "60%", "3": "60%"},
               "deductible": {"kind": "annual", "amount": {"1": "1000", "2": "1000", "3": "1000"}}},
    },
    "pools": {"inpatient": {"cap": "120000"}, "outpatient": {"cap": "3000"}},
    "adjustments": {"categories": {"retired": "+5%"}},
    "large_amount": {"ratio": "90%", "cap": "200000", "med_types": ["21"]},
}

RESIDENT_2013 = {
    "id": "2013",
    "effective_from": D(2013, 1, 1),
    "med_types": {
        "11": {"bands": [{"start": "0", "ratio": "0%"}, {"start": "50", "ratio": "50%"},
                         {"start": "450", "ratio": "0%"}],
               "band_origin": "year"},
        "21": {"ratio": {"1": "80%", "2": "70%", "3": "60%"}, "essential_drugs": "+15%",
               "deductible": {"amount": {"1": "200", "2": "400", "3": "700"}}},
    },
    "pools": {"inpatient": {"cap": "90000"}},
    "guaranteed_minimum": {"ratio": "35%", "med_types": ["21"]},
}


def base_raw():
    return {
        "name": "sample-rural",
        "region": "530300",
        "levels": [{"code": "1", "name": "township"}, {"code": "2", "name": "county"},
                   {"code": "3", "name": "city"}],
        "med_types": [{"code": "11", "name": "outpatient", "pool": "outpatient"},
                      {"code": "21", "name": "inpatient", "pool": "inpatient", "admission": True}],
        "disease_groups": [
            {"code": "major20", "name": "20 major diseases", "icd10": MAJOR20},
            {"code": "child_leukaemia", "name": "childhood leukaemia",
             "icd10": ["C91", "C92", "C93", "C94", "C95"], "max_age": 14},
            {"code": "uremia", "name": "uremia", "icd10": ["N18.5", "N18.6", "N19"]},
            {"code": "severe_mental", "name": "severe mental illness", "icd10": ["F20", "F25", "F31"]},
            {"code": "appendicitis", "name": "appendicitis", "icd10": ["K35"]},
        ],
        "schemes": [
            {"code": "rural", "name": "rural cooperative scheme", "governing_date": "discharge",
             "versions": [copy.deepcopy(RURAL_H1), copy.deepcopy(RURAL_AUG)]},
            {"code": "employee", "name": "employee basic insurance", "personal_account": True,
             "versions": [copy.deepcopy(EMPLOYEE_2013)]},
            {"code": "resident", "name": "resident basic insurance",
             "versions": [copy.deepcopy(RESIDENT_2013)]},
        ],
    }


def make_pack(edit=None):
    raw = base_raw()
    if edit is not None:
        edit(raw)
    return pack_from_raw(raw)


def rural_version(raw, i=0):
    return raw["schemes"][0]["versions"][i]


PACK = make_pack()

CATALOGUE = {
    "DRUG-A": CatalogueEntry("A", 0, 0, False),
    "DRUG-B": CatalogueEntry("B", 1000, 0, False),
    "SVC-CEIL": CatalogueEntry("A", 0, 300000, False),
    "ITEM-C": CatalogueEntry("C", 0, 0, False),
    "SVC-A": CatalogueEntry("A", 0, 0, False),
    "ESS-A": CatalogueEntry("A", 0, 0, True),
    "ESS-B": CatalogueEntry("B", 500, 2000, True),
}


def visit(mdtrt_id, psn_no="P1", insutype="rural", med_type="21", lv="2", enddate=D(2013, 6, 15),
          inscp=None, **kw):
    v = {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": insutype, "med_type": med_type,
         "medins_lv": lv, "enddate": enddate,
         "setl_time": datetime.datetime.combine(enddate, datetime.time(12, 0))}
    if inscp is not None:
        v.update(fulamt_ownpay_amt=0, overlmt_selfpay=0, preselfpay_amt=0, inscp_scp_amt=inscp)
    v.update(kw)
    return v


def line(mdtrt_id, no, code, cnt, pric):
    return {"mdtrt_id": mdtrt_id, "line_no": no, "hilist_code": code, "cnt": cnt, "pric": pric,
            "det_item_fee_sumamt": cnt * pric}


def settle_one(v, acc=None, balance=0, lines=None, mode="settle", pack=PACK):
    return settle_visit(pack, CATALOGUE, v, lines, acc, balance, mode)


def check_identities(r):
    """Section 7, exact to the fen."""
    assert r["medfee_sumamt"] == (r["fulamt_ownpay_amt"] + r["overlmt_selfpay"] + r["preselfpay_amt"]
                                  + r["inscp_scp_amt"])
    assert r["fund_pay_sumamt"] == (r["hifp_pay"] + r["hifob_pay"] + r["hifmi_pay"] + r["cvlserv_pay"]
                                    + r["hifes_pay"] + r["maf_pay"] + r["oth_pay"])
    assert r["medfee_sumamt"] == r["fund_pay_sumamt"] + r["psn_part_amt"] + r["hosp_part_amt"]
    assert r["psn_part_amt"] == r["acct_pay"] + r["psn_cash_pay"]
    for name in OUT_COLS:
        assert isinstance(r[name], int)
        if not name.endswith("_lmt"):
            assert r[name] >= 0, name
        else:
            assert r[name] >= -1, name
    for pay, lmt in (("hifp_pay", "hifp_lmt"), ("hifob_pay", "hifob_lmt"), ("hifmi_pay", "hifmi_lmt"),
                     ("cvlserv_pay", "cvlserv_lmt"), ("maf_pay", "maf_lmt")):
        if r[lmt] >= 0:
            assert r[pay] <= r[lmt], (pay, r[pay], r[lmt])
    assert r["act_pay_dedc"] <= r["inscp_scp_amt"]
    assert r["status"] in STATUS
    assert 0 <= r["pool_prop_selfpay"] <= 10000


# --- section 8: worked examples ----------------------------------------------------------------------

def example_a_lines(mdtrt_id):
    return [line(mdtrt_id, 1, "DRUG-A", 1, yuan("20000")),
            line(mdtrt_id, 2, "DRUG-B", 10, yuan("1000")),
            line(mdtrt_id, 3, "SVC-CEIL", 1, yuan("3500")),
            line(mdtrt_id, 4, "ITEM-C", 2, yuan("2500")),
            line(mdtrt_id, 5, "SVC-A", 1, yuan("21500"))]


def test_example_a_itemize():
    items = itemize(PACK, CATALOGUE, example_a_lines("A"))
    assert items == {"medfee_sumamt": yuan("60000"), "fulamt_ownpay_amt": yuan("5000"),
                     "overlmt_selfpay": yuan("500"), "preselfpay_amt": yuan("1000"),
                     "inscp_scp_amt": yuan("53500"), "inscp_essential_amt": 0}


def test_examples_a_and_b_in_sequence():
    visits = [visit("A", lv="2", enddate=D(2013, 6, 15)),
              visit("B", lv="3", enddate=D(2013, 7, 20), dise_codg="I21.901", inscp=yuan("80000"))]
    batch = settle_batch(PACK, CATALOGUE, visits, {"A": example_a_lines("A")})
    a, b = batch.results
    assert a["status"] == "OK" and a["policy_version"] == "sample-rural/rural/2013-h1"
    assert a["medfee_sumamt"] == yuan("60000")
    assert a["fulamt_ownpay_amt"] == yuan("5000") and a["overlmt_selfpay"] == yuan("500")
    assert a["preselfpay_amt"] == yuan("1000") and a["inscp_scp_amt"] == yuan("53500")
    assert a["act_pay_dedc"] == yuan("300")
    assert a["hifp_pay"] == yuan("45220") and a["pool_prop_selfpay"] == 8500
    assert a["hifp_lmt"] == yuan("53376")
    assert a["hifmi_pay"] == yuan("4140")
    assert a["fund_pay_sumamt"] == yuan("49360") and a["psn_part_amt"] == yuan("10640")
    assert a["psn_cash_pay"] == yuan("10640") and a["hosp_part_amt"] == 0
    assert a["maf_lmt"] == -1 and a["hifob_lmt"] == -1 and a["hifmi_lmt"] == yuan("250000")
    assert ("Step 5 basic fund (rule sample-rural/rural/2013-h1, inpatient, county): eligible "
            "53,200.00 x 85% = 45,220.00; annual cap 53,376.00, 53,376.00 left before this visit"
            in batch.traces[0])

    assert b["act_pay_dedc"] == yuan("800")
    assert b["pool_prop_selfpay"] == 7000 and b["flags"] & FLAG["F_FLOOR"]
    assert b["hifp_lmt"] == yuan("8156") and b["hifp_pay"] == yuan("8156")
    assert b["flags"] & FLAG["F_HIFP_CAPPED"]
    assert any("55,440.00" in t for t in batch.traces[1])        # basic uncapped
    assert b["inscp_scp_amt"] - b["hifp_pay"] == yuan("71844")    # in-scope self-pay
    assert b["hifmi_pay"] == yuan("40106.40")
    assert b["psn_part_amt"] == yuan("31737.60")
    for r in batch.results:
        check_identities(r)

    acc = batch.accumulators[("P1", "rural", 2013)]
    assert acc.hifp_inp == yuan("53376") and acc.admissions == 2
    assert acc.ded_paid_inp == yuan("1100") and acc.hifmi == yuan("44246.40")
    assert acc.as_layout_dict()["A_HIFP_INP"] == yuan("53376")
    assert list(acc.as_layout_dict()) == ACC_COLS


def example_c_visits():
    return [visit("C1", psn_no="P2", lv="3", enddate=D(2013, 6, 10), dise_codg="C34.901",
                  inscp=yuan("600000")),
            visit("C2", psn_no="P2", lv="3", enddate=D(2013, 7, 25), dise_codg="C34.901",
                  inscp=yuan("20000")),
            visit("C3", psn_no="P2", lv="3", enddate=D(2013, 8, 5), dise_codg="C34.901",
                  inscp=yuan("20000"))]


def test_example_c_cap_abolished_from_august():
    c1, c2, c3 = settle_many(PACK, CATALOGUE, example_c_visits())
    assert c1["policy_version"] == "sample-rural/rural/2013-h1"
    assert c1["pool_prop_selfpay"] == 7000
    assert c1["hifp_pay"] == yuan("53376") and c1["flags"] & FLAG["F_HIFP_CAPPED"]
    assert c1["hifmi_pay"] == yuan("250000") and c1["flags"] & FLAG["F_MI_CAPPED"]
    assert c1["psn_part_amt"] == yuan("296624")
    assert c2["policy_version"] == "sample-rural/rural/2013-h1"
    assert c2["hifp_pay"] == 0 and c2["hifp_lmt"] == 0
    assert c2["hifmi_pay"] == 0 and c2["hifmi_lmt"] == 0
    assert c2["psn_part_amt"] == yuan("20000")
    assert c3["policy_version"] == "sample-rural/rural/2013-aug"
    assert c3["hifp_pay"] == 0
    assert c3["hifmi_pay"] == yuan("10000") and c3["hifmi_lmt"] == -1
    for r in (c1, c2, c3):
        check_identities(r)


def test_example_c_resettlement_without_cap_from_january():
    def no_cap(raw):
        v = rural_version(raw, 0)
        v.update(id="2013-nocap", effective_to=None)
        v["serious_illness"].pop("cap")
        raw["schemes"][0]["versions"] = [v]

    visits = example_c_visits()
    before = settle_many(PACK, CATALOGUE, visits)
    after = settle_many(make_pack(no_cap), CATALOGUE, visits)
    assert after[0]["hifmi_pay"] == yuan("369636.80")
    diffs = [a["hifmi_pay"] - b["hifmi_pay"] for a, b in zip(after, before)]
    assert diffs == [yuan("119636.80"), yuan("10000"), 0]
    assert sum(diffs) == yuan("129636.80")
    owed = sum(b["psn_part_amt"] - a["psn_part_amt"] for a, b in zip(after, before))
    assert owed == yuan("129636.80")


def test_example_d_resident_outpatient_band():
    visits = [visit(f"D{i}", psn_no="P4", insutype="resident", med_type="11", lv="1",
                    enddate=D(2013, 3, 1 + i), inscp=yuan(amount))
              for i, amount in enumerate(["30", "100", "400", "80"])]
    batch = settle_batch(PACK, CATALOGUE, visits)
    assert [r["hifp_pay"] for r in batch.results] == [0, yuan("40"), yuan("160"), 0]
    assert all(r["flags"] & FLAG["F_BANDED"] for r in batch.results)
    assert [r["pool_prop_selfpay"] for r in batch.results] == [0, 0, 5000, 0]
    acc = batch.accumulators[("P4", "resident", 2013)]
    assert acc.elig_out == yuan("610") and acc.hifp_out == yuan("200") and acc.admissions == 0
    for r in batch.results:
        check_identities(r)


def test_example_e_retired_employee_large_amount_and_account():
    v = visit("E", psn_no="P5", insutype="employee", lv="3", psn_cats="retired",
              acct_balc=yuan("2000"), acct_used_flag=True, inscp=yuan("150000"))
    [e] = settle_many(PACK, CATALOGUE, [v])
    r, acc, bal, trace = settle_one(v, balance=yuan("2000"))
    assert r == e
    assert r["act_pay_dedc"] == yuan("1000") and r["pool_prop_selfpay"] == 9000
    assert r["hifp_pay"] == yuan("120000")
    assert any("133,333.33" in t and "15,666.67" in t for t in trace)
    assert r["hifob_pay"] == yuan("14100") and r["hifob_lmt"] == yuan("200000")
    assert r["psn_part_amt"] == yuan("15900")
    assert r["acct_pay"] == yuan("2000") and r["psn_cash_pay"] == yuan("13900")
    assert r["balc"] == 0 and bal == 0
    assert r["flags"] & FLAG["F_ACCT"] and r["flags"] & FLAG["F_HIFOB"]
    assert acc.hifob == yuan("14100") and acc.hifp_inp == yuan("120000")
    check_identities(r)


def test_example_f_low_income_assistance():
    r, acc, _, _ = settle_one(visit("F", psn_no="P6", psn_cats="low_income", inscp=yuan("20000")))
    assert r["act_pay_dedc"] == 0 and r["flags"] & FLAG["F_DED_WAIVED"]
    assert r["hifp_pay"] == yuan("17000")
    assert r["hifmi_pay"] == yuan("1500")
    assert r["maf_pay"] == yuan("750") and r["maf_lmt"] == yuan("30000")
    assert r["psn_part_amt"] == yuan("750")
    assert acc.maf == yuan("750")
    check_identities(r)


@pytest.mark.parametrize("inscp, fund, patient, hospital", [
    ("7200", "5100", "900", "1200"),
    ("5000", "4250", "750", "0"),
])
def test_example_h_single_disease_quota(inscp, fund, patient, hospital):
    r, acc, _, _ = settle_one(visit("H", psn_no="P7", dise_codg="K35.800", inscp=yuan(inscp)))
    assert r["flags"] & FLAG["F_QUOTA"] and r["act_pay_dedc"] == 0
    assert r["hifp_pay"] == yuan(fund) and r["pool_prop_selfpay"] == 8500
    assert r["psn_part_amt"] == yuan(patient)
    assert r["hosp_part_amt"] == yuan(hospital)
    assert acc.admissions == 1 and acc.hifp_inp == yuan(fund)
    check_identities(r)


def test_example_i_per_bed_day():
    r, acc, _, trace = settle_one(visit("I", psn_no="P8", dise_codg="F20.001", ipt_days=30,
                                        inscp=yuan("5400")))
    assert r["flags"] & FLAG["F_BEDDAY"] and r["flags"] & FLAG["F_OVERRIDE"]
    assert r["pool_prop_selfpay"] == 9000
    assert r["hifp_pay"] == yuan("4050")
    assert r["psn_part_amt"] == yuan("450")
    assert r["hosp_part_amt"] == yuan("900")
    assert acc.ded_once == 1                 # severe_mental: the pack's first once-a-year group, bit 0
    check_identities(r)


# --- steps 2 to 11, one rule each ----------------------------------------------------------------------

def test_excluded_cause_account_still_pays():
    acc0 = Accumulators(hifp_inp=5, admissions=1)
    v = visit("X", psn_no="P9", insutype="employee", inj_cause="traffic", acct_used_flag=True,
              inscp=yuan("5000"))
    r, acc, bal, trace = settle_one(v, acc=acc0, balance=yuan("1200"))
    assert r["status"] == "EXCLUDED" and r["reason"] == "excluded_cause:traffic"
    assert r["fund_pay_sumamt"] == 0 and r["act_pay_dedc"] == 0 and r["hosp_part_amt"] == 0
    assert r["acct_pay"] == yuan("1200") and r["psn_cash_pay"] == yuan("3800") and bal == 0
    assert acc == acc0 and acc is not acc0
    assert acc0 == Accumulators(hifp_inp=5, admissions=1)
    check_identities(r)


def test_pending_cause_refused_on_settle_provisional_on_presettle():
    acc0 = Accumulators(hifp_inp=yuan("1000"), admissions=1, ded_paid_inp=yuan("300"))
    pending = visit("P", psn_no="P10", insutype="employee", inj_cause="pending", acct_used_flag=True,
                    inscp=yuan("20000"))
    r, acc, bal, _ = settle_one(pending, acc=acc0, balance=yuan("500"))
    assert r["status"] == "REFUSED" and r["reason"] == "pending_cause"
    assert r["fund_pay_sumamt"] == 0 and r["acct_pay"] == 0
    assert r["psn_part_amt"] == r["psn_cash_pay"] == yuan("20000")
    assert r["balc"] == yuan("500") and bal == yuan("500") and acc == acc0
    check_identities(r)

    p, p_acc, p_bal, _ = settle_one(pending, acc=acc0, balance=yuan("500"), mode="presettle")
    plain, plain_acc, plain_bal, _ = settle_one(dict(pending, inj_cause="none"), acc=acc0,
                                                balance=yuan("500"))
    assert p["status"] == "PROVISIONAL" and p["reason"] == "pending_cause"
    assert plain["status"] == "OK"
    assert {k: p[k] for k in OUT_COLS} == {k: plain[k] for k in OUT_COLS}
    assert p["hifp_pay"] > 0 and p_acc == plain_acc and p_bal == plain_bal
    check_identities(p)


def test_not_covered_med_type():
    r, acc, _, _ = settle_one(visit("N", med_type="11", inscp=yuan("300")))
    assert r["status"] == "NOT_COVERED" and r["reason"] == "not_covered"
    assert r["fund_pay_sumamt"] == 0 and r["psn_part_amt"] == yuan("300")
    assert all(r[name] == -1 for name in OUT_COLS if name.endswith("_lmt"))   # every layer off
    assert acc == Accumulators()
    check_identities(r)
    # a pending cause on a med type the version does not settle: provisional, and still self-paid
    p, p_acc, _, _ = settle_one(visit("N", med_type="11", inj_cause="pending", inscp=yuan("300")),
                                mode="presettle")
    assert p["status"] == "PROVISIONAL" and p["fund_pay_sumamt"] == 0 and p_acc == Accumulators()


def test_nth_admission_deductible():
    def nth(raw):
        rural_version(raw)["med_types"]["21"]["deductible"]["nth_admission"] = ["100%", "50%", "0%"]

    pack = make_pack(nth)
    visits = [visit(f"N{i}", psn_no="P11", enddate=D(2013, 2, 1 + i), inscp=yuan("2000"))
              for i in range(4)]
    batch = settle_batch(pack, CATALOGUE, visits)
    assert [r["act_pay_dedc"] for r in batch.results] == [yuan("300"), yuan("150"), 0, 0]
    assert [bool(r["flags"] & FLAG["F_DED_NTH"]) for r in batch.results] == [False, True, True, True]
    assert batch.accumulators[("P11", "rural", 2013)].admissions == 4
    # a new year starts again at the first admission
    visits.append(visit("N5", psn_no="P11", enddate=D(2014, 1, 5), inscp=yuan("2000")))
    batch = settle_batch(pack, CATALOGUE, visits)
    assert batch.results[-1]["act_pay_dedc"] == yuan("300")
    assert batch.results[-1]["policy_version"] == "sample-rural/rural/2013-aug"
    assert batch.accumulators[("P11", "rural", 2014)].admissions == 1


def test_deductible_once_a_year_for_psychiatric_patients():
    visits = [visit(f"M{i}", psn_no="P12", lv="3", dise_codg="F20.0", enddate=D(2013, 3, 1 + i),
                    inscp=yuan("4000")) for i in range(2)]
    r1, r2 = settle_many(PACK, CATALOGUE, visits)
    assert r1["act_pay_dedc"] == yuan("800") and r2["act_pay_dedc"] == 0
    assert r2["flags"] & FLAG["F_DED_ONCE"]
    assert r1["pool_prop_selfpay"] == r2["pool_prop_selfpay"] == 9000   # override, no quota at city


def test_annual_deductible_across_visits():
    visits = [visit(f"O{i}", psn_no="P13", insutype="employee", med_type="11", lv="1",
                    enddate=D(2013, 5, 1 + i), inscp=yuan(x)) for i, x in enumerate(["600", "700", "500"])]
    batch = settle_batch(PACK, CATALOGUE, visits)
    assert [r["act_pay_dedc"] for r in batch.results] == [yuan("600"), yuan("400"), 0]
    assert [r["hifp_pay"] for r in batch.results] == [0, yuan("180"), yuan("300")]
    acc = batch.accumulators[("P13", "employee", 2013)]
    assert acc.ded_paid_out == yuan("1000") and acc.ded_paid_inp == 0
    assert acc.hifp_out == yuan("480") and acc.admissions == 0


def both_paths(pack, visits):
    """(reference results, kernel results, reference accumulators, kernel accumulator rows) of a batch."""
    import pyarrow as pa

    from kernel.api import Settler
    from kernel.catalogue import default_catalogue
    batch = settle_batch(pack, CATALOGUE, visits)
    kernel = Settler(pack, default_catalogue()).settle_table(pa.Table.from_pylist(visits))
    kernel_acc = {(a.pop("psn_no"), a.pop("insutype"), a.pop("year")): a for a in kernel.accumulators.to_pylist()}
    return batch.results, kernel.table.to_pylist(), batch.accumulators, kernel_acc


def test_annual_outpatient_deductible_ignores_the_inpatient_deductible():
    """Deductibles are kept per pool: an admission's deductible does not pay off the outpatient
    pool's annual one (employee scheme: inpatient level 3 per admission 1,000, 85%; outpatient
    annual 1,000, 60%)."""
    visits = [visit("IN", psn_no="P20", insutype="employee", lv="3", enddate=D(2013, 3, 10),
                    inscp=yuan("20000")),
              visit("OUT1", psn_no="P20", insutype="employee", med_type="11", lv="1",
                    enddate=D(2013, 4, 2), inscp=yuan("1500")),
              visit("OUT2", psn_no="P20", insutype="employee", med_type="11", lv="1",
                    enddate=D(2013, 4, 9), inscp=yuan("800"))]
    ref, kernel, ref_acc, kernel_acc = both_paths(PACK, visits)
    for results in (ref, kernel):
        # IN: deductible 1,000; 85% x (20,000 - 1,000) = 16,150
        # OUT1: the outpatient pool's annual 1,000 is still due; 60% x (1,500 - 1,000) = 300
        # OUT2: 1,000 paid in the outpatient pool this year: none; 60% x 800 = 480
        assert [r["act_pay_dedc"] for r in results] == [yuan("1000"), yuan("1000"), 0]
        assert [r["hifp_pay"] for r in results] == [yuan("16150"), yuan("300"), yuan("480")]
    acc = ref_acc[("P20", "employee", 2013)]
    assert (acc.ded_paid_inp, acc.ded_paid_out) == (yuan("1000"), yuan("1000"))
    assert kernel_acc[("P20", "employee", 2013)] == acc.as_layout_dict()


def test_once_a_year_deductible_is_kept_per_group():
    """Two groups with one deductible a year each: an admission in one does not waive the other's
    (rural city level: per admission 800, 65%; severe mental illness at 90%, no quota at level 3)."""
    def edit(raw):
        raw["disease_groups"].append({"code": "tb", "name": "tuberculosis", "icd10": ["A15"]})
        rural_version(raw)["diseases"].append({"groups": ["tb"], "deductible_once_a_year": True})
    pack = make_pack(edit)
    visits = [visit(f"T{i}", psn_no="P21", lv="3", dise_codg=diag, enddate=D(2013, 2, 1 + 7 * i),
                    inscp=yuan("2000")) for i, diag in enumerate(["F20.0", "A15.0", "F20.0", "A15.0"])]
    ref, kernel, ref_acc, kernel_acc = both_paths(pack, visits)
    for results in (ref, kernel):
        # F20: 800, 90% x 1,200 = 1,080; A15: its own 800, 65% x 1,200 = 780;
        # then each group's second admission: none, 90% x 2,000 = 1,800 and 65% x 2,000 = 1,300
        assert [r["act_pay_dedc"] for r in results] == [yuan("800"), yuan("800"), 0, 0]
        assert [r["hifp_pay"] for r in results] == [yuan("1080"), yuan("780"), yuan("1800"), yuan("1300")]
        assert [bool(r["flags"] & FLAG["F_DED_ONCE"]) for r in results] == [False, False, True, True]
    # severe_mental is the first once-a-year group of the pack (bit 1), tb the second (bit 2)
    assert ref_acc[("P21", "rural", 2013)].ded_once == 0b11
    assert kernel_acc[("P21", "rural", 2013)]["A_DED_ONCE"] == 0b11


def test_essential_uplift_deductible_consumed_from_non_essential_first():
    def uplift(raw):
        rural_version(raw)["med_types"]["21"]["essential_drugs"] = "+8%"

    pack = make_pack(uplift)
    # deductible 300 fully from the non-essential 6,000: 5,700 x 85% + 4,000 x 93%
    r, *_ = settle_one(visit("U1", inscp=yuan("10000"), inscp_essential_amt=yuan("4000")), pack=pack)
    assert r["act_pay_dedc"] == yuan("300")
    assert r["hifp_pay"] == yuan("4845") + yuan("3720") and r["flags"] & FLAG["F_ESS_UPLIFT"]
    # only 100 non-essential: the deductible takes it, then 200 of the essential drugs
    r, *_ = settle_one(visit("U2", inscp=yuan("1000"), inscp_essential_amt=yuan("900")), pack=pack)
    assert r["hifp_pay"] == yuan("651")
    # essential lines through itemize: ESS-B is class B 5%, ceiling 20.00
    lines = [line("U3", 1, "ESS-A", 10, yuan("100")), line("U3", 2, "ESS-B", 10, yuan("25")),
             line("U3", 3, "SVC-A", 1, yuan("1000"))]
    items = itemize(pack, CATALOGUE, lines)
    assert items["overlmt_selfpay"] == yuan("50") and items["preselfpay_amt"] == yuan("10")
    assert items["inscp_essential_amt"] == yuan("1000") + yuan("190")
    r, *_ = settle_one(visit("U3"), lines=lines, pack=pack)
    # deductible 300 from the 1,000 non-essential: 700 x 85% + 1,190 x 93%
    assert r["hifp_pay"] == (70000 * 8500 + 119000 * 9300 + 5000) // 10000
    check_identities(r)
    # without the uplift the essential part is paid at the plain ratio
    r, *_ = settle_one(visit("U4", inscp=yuan("10000"), inscp_essential_amt=yuan("4000")))
    assert r["hifp_pay"] == yuan("8245") and not r["flags"] & FLAG["F_ESS_UPLIFT"]


def test_out_of_area_and_referral_adjustments():
    def adjust(raw):
        rural_version(raw)["adjustments"] = {
            "out_of_area_filed": "-10%", "out_of_area_unfiled": "deny",
            "referral_required_levels": ["3"], "no_referral": "deny"}

    pack = make_pack(adjust)
    home = visit("L0", inscp=yuan("10300"))
    filed = visit("L1", inscp=yuan("10300"), mdtrt_admdvs="110000", out_filing_flag=True)
    unfiled = visit("L2", inscp=yuan("10300"), mdtrt_admdvs="110000")
    r0, r1, r2 = (settle_one(v, pack=pack)[0] for v in (home, filed, unfiled))
    assert r0["pool_prop_selfpay"] == 8500 and r0["hifp_pay"] == yuan("8500")
    assert r1["pool_prop_selfpay"] == 7500 and r1["hifp_pay"] == yuan("7500")
    assert r1["flags"] & FLAG["F_OUT_AREA"]
    assert r2["hifp_pay"] == 0 and r2["pool_prop_selfpay"] == 0 and r2["flags"] & FLAG["F_DENIED"]
    assert r2["status"] == "OK"
    # the denied basic fund leaves the whole in-scope self-pay to serious illness (T > 10,000)
    assert r2["hifmi_pay"] == yuan("5150")
    _, acc, _, _ = settle_one(unfiled, pack=pack)
    assert acc.hifp_inp == 0 and acc.admissions == 1 and acc.elig_inp == yuan("10000")
    city = visit("L3", lv="3", inscp=yuan("5000"))
    assert settle_one(city, pack=pack)[0]["hifp_pay"] == 0
    assert settle_one(dict(city, refl_flag=True), pack=pack)[0]["hifp_pay"] == yuan("2730")
    # in the insured region written explicitly
    r, *_ = settle_one(dict(home, insu_admdvs="530300", mdtrt_admdvs="530300"), pack=pack)
    assert r["hifp_pay"] == yuan("8500") and not r["flags"] & FLAG["F_OUT_AREA"]


def test_denial_holds_in_quota_mode_and_against_the_guaranteed_minimum():
    def deny(raw):
        for version in (rural_version(raw), raw["schemes"][2]["versions"][0]):
            version["adjustments"] = {"out_of_area_unfiled": "deny"}
        rural_version(raw)["diseases"][3]["quota"]["ratio"] = "80%"

    pack = make_pack(deny)
    quota = visit("QD", dise_codg="K35", inscp=yuan("7200"))
    r, *_ = settle_one(quota, pack=pack)
    assert r["hifp_pay"] == yuan("4800") and r["hosp_part_amt"] == yuan("1200")
    r, *_ = settle_one(dict(quota, mdtrt_admdvs="110000"), pack=pack)
    assert r["hifp_pay"] == 0 and r["flags"] & FLAG["F_DENIED"] and r["hosp_part_amt"] == yuan("1200")
    gm = visit("GD", insutype="resident", lv="1", mdtrt_admdvs="110000", fulamt_ownpay_amt=yuan("8000"),
               overlmt_selfpay=0, preselfpay_amt=0, inscp_scp_amt=yuan("2200"))
    r, *_ = settle_one(gm, pack=pack)
    assert r["hifp_pay"] == 0 and not r["flags"] & FLAG["F_GM_TOPUP"]
    check_identities(r)


def test_guaranteed_minimum_tops_up_the_basic_fund():
    v = visit("G", psn_no="P14", insutype="resident", lv="1",
              fulamt_ownpay_amt=yuan("8000"), overlmt_selfpay=0, preselfpay_amt=0,
              inscp_scp_amt=yuan("2200"))
    r, acc, _, _ = settle_one(v)
    # basic (2,200 - 200) x 80% = 1,600; 35% of 10,200 = 3,570 -> top-up 1,970
    assert r["hifp_pay"] == yuan("3570") and r["flags"] & FLAG["F_GM_TOPUP"]
    assert acc.hifp_inp == yuan("3570")
    check_identities(r)


def test_serious_illness_annual_trigger_and_effective_ratio():
    def annual(raw):
        rural_version(raw)["serious_illness"].update(trigger="annual", threshold="10000")

    pack = make_pack(annual)
    visits = [visit(f"Y{i}", psn_no="P15", lv="3", enddate=D(2013, 4, 1 + i), inscp=yuan("8000"))
              for i in range(2)]
    r1, r2 = settle_many(pack, CATALOGUE, visits)
    # in-scope self-pay 8,000 - 800 deductible... = 8,000 - 4,680 = 3,320 each visit
    assert r1["hifp_pay"] == yuan("4680") and r1["hifmi_pay"] == 0
    assert r2["hifmi_pay"] == 0
    visits.append(visit("Y3", psn_no="P15", lv="3", enddate=D(2013, 4, 9), inscp=yuan("8000")))
    *_, r3 = settle_many(pack, CATALOGUE, visits)
    # year base 6,640 + 3,320 = 9,960: still under; a fourth visit crosses by 3,280
    visits.append(visit("Y4", psn_no="P15", lv="3", enddate=D(2013, 4, 19), inscp=yuan("8000")))
    *_, r4 = settle_many(pack, CATALOGUE, visits)
    assert r3["hifmi_pay"] == 0 and r4["hifmi_pay"] == yuan("1640")

    def effective(raw):
        rural_version(raw)["serious_illness"] = {
            "form": "effective_ratio", "threshold": "5000", "base": "all_selfpay",
            "effective_ratio": "80%", "category_ratio": {"low_income": "90%"}, "med_types": ["21"]}
        rural_version(raw).pop("assistance")

    pack = make_pack(effective)
    r, *_ = settle_one(visit("Z1", lv="3", inscp=yuan("20000")), pack=pack)
    assert r["hifp_pay"] == yuan("12480") and r["hifmi_pay"] == yuan("3520")
    assert r["flags"] & FLAG["F_MI_EFFECTIVE"]
    r, *_ = settle_one(visit("Z2", lv="3", inscp=yuan("20000"), psn_cats="low_income"), pack=pack)
    assert r["hifp_pay"] == yuan("13000") and r["hifmi_pay"] == yuan("5000")
    r, *_ = settle_one(visit("Z3", lv="1", inscp=yuan("6000")), pack=pack)
    assert r["hifmi_pay"] == 0     # self-pay 100 + 5% of 5,900 = 395 is not above 5,000


def test_civil_servant_subsidy():
    def cvl(raw):
        raw["schemes"][1]["versions"][0]["civil_servant"] = {"ratio": "50%", "cap": "1000"}

    pack = make_pack(cvl)
    v = visit("CV", insutype="employee", lv="3", psn_cats="civil_servant", inscp=yuan("11000"))
    r, acc, _, _ = settle_one(v, pack=pack)
    # basic (11,000 - 1,000) x 85% = 8,500; remaining 2,500 x 50% = 1,250 -> cap 1,000
    assert r["hifp_pay"] == yuan("8500") and r["cvlserv_pay"] == yuan("1000")
    assert r["cvlserv_lmt"] == yuan("1000") and r["flags"] & FLAG["F_CVL_CAPPED"]
    assert acc.cvl == yuan("1000")
    r, *_ = settle_one(v, acc=acc, pack=pack)
    assert r["cvlserv_pay"] == 0 and r["cvlserv_lmt"] == 0
    r, *_ = settle_one(dict(v, psn_cats=""), pack=pack)
    assert r["cvlserv_pay"] == 0 and r["cvlserv_lmt"] == -1


# --- versions, disease groups, bad input -------------------------------------------------------------------

def test_select_version_and_disease_groups():
    assert select_version(PACK, "rural", visit("V", enddate=D(2013, 7, 31)))[1].id == "2013-h1"
    assert select_version(PACK, "rural", visit("V", enddate=D(2013, 8, 1)))[1].id == "2013-aug"
    with pytest.raises(InputError) as e:
        select_version(PACK, "rural", visit("V", enddate=D(2012, 12, 31)))
    assert e.value.field == "enddate"
    with pytest.raises(InputError) as e:
        select_version(PACK, "nobody", visit("V"))
    assert e.value.field == "insutype"
    assert disease_group(PACK, "C34.901", None).code == "major20"
    assert disease_group(PACK, "N18.501", 40).code == "uremia"
    assert disease_group(PACK, "C91.0", 10).code == "child_leukaemia"
    assert disease_group(PACK, "C91.0", 14).code == "child_leukaemia"
    assert disease_group(PACK, "C91.0", 15) is None
    assert disease_group(PACK, "C91.0", None) is None
    assert disease_group(PACK, "C92.101", 8).code == "major20"    # longest prefix C92.1
    assert disease_group(PACK, "C92.0", 8).code == "child_leukaemia"
    assert disease_group(PACK, "J18.9", 30) is None and disease_group(PACK, None, 30) is None
    # age in whole years at the governing date (discharge 2013-06-15); childhood leukaemia up to 14
    kid = visit("K", lv="3", dise_codg="C91.0", brdy=D(1999, 6, 15), inscp=yuan("5000"))
    assert settle_one(kid)[0]["pool_prop_selfpay"] == 7000                       # 14
    assert settle_one(dict(kid, brdy=D(1998, 6, 16)))[0]["pool_prop_selfpay"] == 7000  # 14 tomorrow 15
    assert settle_one(dict(kid, brdy=D(1998, 6, 15)))[0]["pool_prop_selfpay"] == 6500  # 15
    assert settle_one(dict(kid, brdy=None))[0]["pool_prop_selfpay"] == 6500
    r = settle_one(visit("U", lv="3", dise_codg="N18.6", inscp=yuan("5000")))[0]
    assert r["pool_prop_selfpay"] == 9000 and r["flags"] & FLAG["F_OVERRIDE"]


def test_bad_input():
    lines = [line("B", 1, "DRUG-A", 1, 100), line("B", 2, "NOPE", 2, 50)]
    with pytest.raises(InputError) as e:
        itemize(PACK, CATALOGUE, lines)
    assert (e.value.field, e.value.line, e.value.value) == ("hilist_code", 2, "NOPE")
    selfpay = make_pack(lambda raw: raw.update(unknown_codes="selfpay"))
    assert itemize(selfpay, CATALOGUE, lines)["fulamt_ownpay_amt"] == 100
    with pytest.raises(InputError) as e:
        itemize(PACK, CATALOGUE, [line("B", 1, "DRUG-A", 1, 100), line("B", 1, "DRUG-A", 1, 100)])
    assert e.value.field == "line_no"
    with pytest.raises(InputError) as e:
        itemize(PACK, CATALOGUE, [dict(line("B", 1, "DRUG-A", 1, 100), det_item_fee_sumamt=99)])
    assert e.value.field == "det_item_fee_sumamt"
    with pytest.raises(InputError) as e:
        itemize(PACK, CATALOGUE, [line("B", 1, "DRUG-A", -1, 100)])
    assert e.value.field == "cnt"
    with pytest.raises(InputError) as e:
        settle_one(visit("B", medfee_sumamt=101), lines=[line("B", 1, "DRUG-A", 1, 100)])
    assert e.value.field == "medfee_sumamt"
    for field, value in (("medins_lv", "9"), ("med_type", "99"), ("inj_cause", "alien"),
                         ("psn_cats", "king"), ("inscp_scp_amt", -5)):
        with pytest.raises(InputError) as e:
            settle_one(visit("B", inscp=100, **{field: value}))
        assert e.value.field == field
    with pytest.raises(InputError) as e:
        settle_many(PACK, CATALOGUE, [visit("B1", inscp=100), visit("B2", lv="7", inscp=100)])
    assert e.value.field == "medins_lv" and e.value.row == 1


def test_settle_many_order_and_start_state():
    # given out of order: settled by setl_time per person, returned in input order
    visits = [visit("B", lv="3", enddate=D(2013, 7, 20), dise_codg="I21", inscp=yuan("80000")),
              visit("Q", psn_no="P0", inscp=yuan("1000")),
              visit("A", lv="2", enddate=D(2013, 6, 15), inscp=yuan("53500"))]
    b, q, a = settle_many(PACK, CATALOGUE, visits)
    assert (a["mdtrt_id"], b["mdtrt_id"], q["mdtrt_id"]) == ("A", "B", "Q")
    assert a["hifp_pay"] == yuan("45220") and b["hifp_pay"] == yuan("8156")
    # accumulators handed in: the cap is already spent
    start = {("P1", "rural", 2013): Accumulators(hifp_inp=yuan("53376"))}
    a2 = settle_many(PACK, CATALOGUE, [visits[2]], start_acc=start)[0]
    assert a2["hifp_pay"] == 0 and start[("P1", "rural", 2013)].hifp_inp == yuan("53376")
    # balance: acct_balc of the person's first visit, carried; start_balance wins
    emp = [visit(f"E{i}", psn_no="P3", insutype="employee", med_type="11", lv="1",
                 enddate=D(2013, 5, 1 + i), acct_used_flag=True, acct_balc=yuan("100"),
                 inscp=yuan("70")) for i in range(2)]
    batch = settle_batch(PACK, CATALOGUE, emp)
    assert [r["acct_pay"] for r in batch.results] == [yuan("70"), yuan("30")]
    assert [r["balc"] for r in batch.results] == [yuan("30"), 0] and batch.balances["P3"] == 0
    batch = settle_batch(PACK, CATALOGUE, emp, start_balance={"P3": yuan("500")})
    assert [r["balc"] for r in batch.results] == [yuan("430"), yuan("360")]


def test_explain_gives_the_trace_after_earlier_visits():
    visits = [visit("B", lv="3", enddate=D(2013, 7, 20), dise_codg="I21", inscp=yuan("80000")),
              visit("A", lv="2", enddate=D(2013, 6, 15), inscp=yuan("53500"))]
    trace = explain(PACK, CATALOGUE, visits, None, "B")
    assert trace[0].startswith("Step 1 itemize: total 80,000.00")
    assert any("annual cap 53,376.00, 8,156.00 left before this visit" in t for t in trace)
    assert any(t.startswith("Step 7 serious illness") and "pays 40,106.40" in t for t in trace)


def test_inputs_not_mutated():
    v = visit("A", lv="2")
    lines = example_a_lines("A")
    v0, lines0, acc0 = copy.deepcopy(v), copy.deepcopy(lines), Accumulators(admissions=2)
    r, acc, _, _ = settle_visit(PACK, CATALOGUE, v, lines, acc0, 0)
    assert v == v0 and lines == lines0 and acc0 == Accumulators(admissions=2)
    assert acc.admissions == 3


# --- section 7: identities on varied visits ------------------------------------------------------------

def varied_pack():
    def edit(raw):
        raw["unknown_codes"] = "selfpay"
        rv = rural_version(raw)
        rv["med_types"]["21"]["essential_drugs"] = "+8%"
        rv["med_types"]["21"]["deductible"]["nth_admission"] = ["100%", "80%", "50%"]
        rv["adjustments"] = {"categories": {"veteran": "+5%"}, "out_of_area_filed": "-10%",
                             "out_of_area_unfiled": "deny", "referral_required_levels": ["3"],
                             "no_referral": "-15%"}
        rv["med_types"]["11"] = {"bands": [{"start": "0", "ratio": "0%"}, {"start": "50", "ratio": "50%"},
                                           {"start": "450", "ratio": "0%"}],
                                 "band_origin": "visit"}
        rv["pools"]["outpatient"] = {"cap": "400"}
        rv["pending_causes"] = ["pending"]
        emp = raw["schemes"][1]["versions"][0]
        emp["civil_servant"] = {"ratio": "60%", "cap": "5000"}
        emp["serious_illness"] = {"form": "effective_ratio", "threshold": "5000", "base": "all_selfpay",
                                  "effective_ratio": "80%", "category_ratio": {"low_income": "90%"}}
        emp["assistance"] = {"categories": ["low_income"], "ratio": "50%", "deductible": "100"}
        res = raw["schemes"][2]["versions"][0]
        res["serious_illness"] = {"trigger": "annual", "threshold": "3000", "base": "all_selfpay",
                                  "bands": [{"start": "0", "ratio": "30%"}, {"start": "1000", "ratio": "40%"},
                                            {"start": "20000", "ratio": "60%"}],
                                  "cap": "30000", "med_types": ["21"]}
        res["assistance"] = {"categories": ["five_guarantee", "low_income"], "ratio": "70%",
                             "cap": "8000"}
    return make_pack(edit)


def random_visits(rng, n):
    visits, lines_by_visit = [], {}
    codes = sorted(CATALOGUE) + ["UNKNOWN-1"]
    diagnoses = [None, "C34.901", "I21.0", "N18.5", "F20.0", "K35.8", "C91.0", "J18.9"]
    causes = ["none"] * 12 + ["traffic", "pending", "maternity"]
    cats = ["", "", "", "retired", "low_income", "five_guarantee", "civil_servant", "veteran",
            "retired,civil_servant", "low_income,veteran"]
    for i in range(n):
        insutype = rng.choice(["rural", "employee", "resident"])
        end = D(2013, 1, 1) + datetime.timedelta(days=rng.randrange(0, 500))
        v = visit(f"V{i}", psn_no=f"P{rng.randrange(12)}", insutype=insutype,
                  med_type=rng.choice(["11", "21", "21"]), lv=rng.choice("123"), enddate=end,
                  psn_cats=rng.choice(cats), dise_codg=rng.choice(diagnoses),
                  brdy=rng.choice([None, D(2005, 3, 1), D(1950, 7, 1)]),
                  inj_cause=rng.choice(causes), ipt_days=rng.randrange(0, 40),
                  refl_flag=rng.random() < 0.5, acct_used_flag=rng.random() < 0.7,
                  acct_balc=rng.choice([0, 50000, 5000000]))
        v["setl_time"] += datetime.timedelta(minutes=rng.randrange(600))
        if rng.random() < 0.3:
            v["mdtrt_admdvs"] = "110000"
            v["out_filing_flag"] = rng.random() < 0.5
        if rng.random() < 0.5:
            scale = rng.choice([10, 1000, 100000])
            lines = [line(v["mdtrt_id"], k, rng.choice(codes), rng.randrange(1, 5),
                          rng.randrange(1, 50 * scale)) for k in range(rng.randrange(1, 6))]
            lines_by_visit[v["mdtrt_id"]] = lines
        else:
            scale = rng.choice([5000, 100000, 3000000, 80000000])
            inscp = rng.randrange(0, scale)
            v.update(fulamt_ownpay_amt=rng.randrange(0, scale // 3), overlmt_selfpay=rng.randrange(0, 500),
                     preselfpay_amt=rng.randrange(0, scale // 10), inscp_scp_amt=inscp,
                     inscp_essential_amt=rng.randrange(0, inscp + 1) if rng.random() < 0.4 else 0)
        visits.append(v)
    return visits, lines_by_visit


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["settle", "presettle"])
def test_section7_identities_on_varied_visits(seed, mode):
    for pack in (make_pack(lambda raw: raw.update(unknown_codes="selfpay")), varied_pack()):
        rng = random.Random(seed)
        visits, lines_by_visit = random_visits(rng, 300)
        batch = settle_batch(pack, CATALOGUE, visits, lines_by_visit, mode=mode)
        statuses = set()
        for v, r, trace in zip(visits, batch.results, batch.traces):
            assert r["mdtrt_id"] == v["mdtrt_id"]
            check_identities(r)
            statuses.add(r["status"])
            assert r["policy_version"].startswith(pack.name + "/" + v["insutype"] + "/")
            assert trace[0].startswith("Step 1") and trace[1].startswith("Step 2")
            if r["status"] in ("EXCLUDED", "NOT_COVERED", "REFUSED"):
                assert r["fund_pay_sumamt"] == 0 and r["hosp_part_amt"] == 0
            if r["status"] == "REFUSED":
                assert r["psn_cash_pay"] == r["medfee_sumamt"]
        assert {"OK", "EXCLUDED"} <= statuses
        assert ("REFUSED" in statuses) == (mode == "settle")
        # no layer exceeds its annual cap over the year
        for (psn, scheme, year), acc in batch.accumulators.items():
            assert all(x >= 0 for x in acc.as_layout_dict().values())
            if scheme == "rural":
                assert acc.hifp_inp <= yuan("53376") and acc.maf <= yuan("30000")
            if scheme == "employee":
                assert acc.hifp_inp <= yuan("120000") and acc.hifob <= yuan("200000")
                assert acc.hifp_out <= yuan("3000")
            if scheme == "resident":
                assert acc.hifp_inp <= yuan("90000")
        for bal in batch.balances.values():
            assert bal >= 0
