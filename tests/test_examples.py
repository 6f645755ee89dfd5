"""Worked examples of SETTLEMENT.md section 8, through the public API and the Cython kernel.

Every expected figure is the section's own (in fen), not the program's output.
"""
import datetime as dt

import msgspec
import pyarrow as pa
import pytest

from kernel.api import Settler, shipped_pack_path
from kernel.catalogue import load_catalogue
from kernel.layout import FLAGS
from kernel.policy import load_pack, pack_from_raw

Y = 100  # fen per yuan
FLAG = {name: 1 << i for i, name in enumerate(FLAGS)}


def inscope_selfpay(r):
    """In-scope self-pay after the basic fund and large-amount layers (SETTLEMENT.md section 4 step 7)."""
    return r["inscp_scp_amt"] - r["hosp_part_amt"] - r["hifp_pay"] - r["hifob_pay"]


def rh(x):
    """Round fen*bp half-up to fen (section 2)."""
    return (x + 5000) // 10000


def visit(mdtrt_id, psn_no="P1", insutype="rural", level="2", med_type="21", end=(2013, 6, 15), cats="",
          diag=None, amounts=None, **extra):
    v = {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": insutype, "medins_lv": level,
         "med_type": med_type, "begndate": dt.date(*end) - dt.timedelta(days=10), "enddate": dt.date(*end),
         "setl_time": dt.datetime(*end, 12, 0), "psn_cats": cats, "dise_codg": diag}
    if amounts is not None:   # precomputed visit-level amounts: all class A unless said otherwise
        v.update({"fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0,
                  "inscp_scp_amt": amounts, "inscp_essential_amt": 0})
    v.update(extra)
    return v


def settle(settler, visits, lines=None):
    table = pa.Table.from_pylist(visits)
    line_table = pa.Table.from_pylist(lines) if lines is not None else None
    rows = settler.settle_table(table, line_table).table.to_pylist()
    return {r["mdtrt_id"]: r for r in rows}


@pytest.fixture(scope="module")
def example_catalogue(tmp_path_factory):
    path = tmp_path_factory.mktemp("cat") / "catalogue.csv"
    path.write_text("code,name,class,prepay_bp,ceiling_price,essential\n"
                    "DRUG-A,甲类药品,A,0,0,0\n"
                    "DRUG-B,乙类药品,B,1000,0,0\n"
                    "SVC-CEIL,限价项目,A,0,300000,0\n"
                    "ITEM-C,丙类项目,C,0,0,0\n"
                    "SVC-A,甲类服务,A,0,0,0\n")
    return load_catalogue(path)


def test_example_a_from_line_items_then_b(example_catalogue):
    settler = Settler(load_pack(shipped_pack_path("sample_rural")), example_catalogue)
    a = visit("A", end=(2013, 6, 15), medfee_sumamt=60_000 * Y)
    lines = [{"mdtrt_id": "A", "line_no": k, "hilist_code": code, "cnt": cnt, "pric": price,
              "det_item_fee_sumamt": cnt * price}
             for k, (code, cnt, price) in enumerate([("DRUG-A", 100, 200 * Y), ("DRUG-B", 50, 200 * Y),
                                                     ("SVC-CEIL", 1, 3_500 * Y), ("ITEM-C", 10, 500 * Y),
                                                     ("SVC-A", 1, 21_500 * Y)], 1)]
    b = visit("B", level="3", end=(2013, 7, 20), diag="I21.901", medfee_sumamt=80_000 * Y)
    lines += [{"mdtrt_id": "B", "line_no": 1, "hilist_code": "SVC-A", "cnt": 1, "pric": 80_000 * Y,
               "det_item_fee_sumamt": 80_000 * Y}]
    r = settle(settler, [a, b], lines)
    ra, rb = r["A"], r["B"]
    assert (ra["fulamt_ownpay_amt"], ra["overlmt_selfpay"], ra["preselfpay_amt"], ra["inscp_scp_amt"]) == \
        (5_000 * Y, 500 * Y, 1_000 * Y, 53_500 * Y)
    assert ra["act_pay_dedc"] == 300 * Y
    assert ra["pool_prop_selfpay"] == 8500
    assert ra["hifp_pay"] == 45_220 * Y
    assert inscope_selfpay(ra) == 8_280 * Y
    assert ra["hifmi_pay"] == 4_140 * Y
    assert ra["fund_pay_sumamt"] == 49_360 * Y
    assert ra["psn_part_amt"] == 10_640 * Y
    # B: same person, city hospital, I21 floor 70% over 65%, cap left 8,156.00
    assert rb["act_pay_dedc"] == 800 * Y
    assert rb["pool_prop_selfpay"] == 7000
    # uncapped basic: the ratio applied to the eligible amount, 70% x (80,000 - 800) = 55,440.00,
    # above the cap left, so the cap decided the payment
    assert rh((rb["inscp_scp_amt"] - rb["act_pay_dedc"]) * rb["pool_prop_selfpay"]) == 55_440 * Y
    assert rb["flags"] & FLAG["F_HIFP_CAPPED"] and rb["flags"] & FLAG["F_FLOOR"]
    assert rb["hifp_pay"] == 8_156 * Y
    assert rb["hifp_lmt"] == 8_156 * Y
    assert inscope_selfpay(rb) == 71_844 * Y
    assert rb["hifmi_pay"] == 40_106_40
    assert rb["psn_part_amt"] == 31_737_60


def test_example_c_cap_then_august(rural):
    visits = [visit("C1", psn_no="P3", level="3", end=(2013, 6, 10), diag="C34.901", amounts=600_000 * Y),
              visit("C2", psn_no="P3", level="3", end=(2013, 7, 25), diag="C34.901", amounts=20_000 * Y),
              visit("C3", psn_no="P3", level="3", end=(2013, 8, 5), diag="C34.901", amounts=20_000 * Y)]
    r = settle(rural, visits)
    assert r["C1"]["hifp_pay"] == 53_376 * Y
    # the bands' 369,636.80 on the in-scope self-pay 600,000 - 53,376 = 546,624 is above the
    # 250,000 left: 50% x 30,000 + 60% x 70,000 + 70% x 446,624 = 15,000 + 42,000 + 312,636.80
    assert inscope_selfpay(r["C1"]) == 546_624 * Y
    assert r["C1"]["hifmi_lmt"] == 250_000 * Y and r["C1"]["flags"] & FLAG["F_MI_CAPPED"]
    assert r["C1"]["hifmi_pay"] == 250_000 * Y
    assert r["C1"]["psn_part_amt"] == 296_624 * Y
    assert (r["C2"]["hifp_pay"], r["C2"]["hifmi_pay"], r["C2"]["psn_part_amt"]) == (0, 0, 20_000 * Y)
    assert r["C3"]["hifmi_pay"] == 10_000 * Y
    assert r["C3"]["policy_version"].endswith("2013-aug")
    assert r["C1"]["policy_version"].endswith("2013-h1")


def test_example_c_resettled_without_cap_owes_129_636_80(rural, tmp_path):
    """The same visits under a version with no serious-illness cap from 1 January."""
    raw = msgspec.toml.decode(shipped_pack_path("sample_rural").read_bytes())
    for scheme in raw["schemes"]:
        for version in scheme["versions"]:
            if "serious_illness" in version:
                version["serious_illness"]["cap"] = "none"
    uncapped = Settler(pack_from_raw(raw, "uncapped"), rural.catalogue)
    visits = [visit(f"C{k}", psn_no="P3", level="3", end=end, diag="C34.901", amounts=amount * Y)
              for k, (end, amount) in enumerate([((2013, 6, 10), 600_000), ((2013, 7, 25), 20_000),
                                                 ((2013, 8, 5), 20_000)], 1)]
    old, new = settle(rural, visits), settle(uncapped, visits)
    assert new["C1"]["hifmi_pay"] == 369_636_80 and new["C1"]["hifmi_lmt"] == -1   # the bands' figure
    owed = {k: new[k]["fund_pay_sumamt"] - old[k]["fund_pay_sumamt"] for k in old}
    assert owed == {"C1": 119_636_80, "C2": 10_000 * Y, "C3": 0}
    assert sum(owed.values()) == 129_636_80


def test_example_f_low_income(rural):
    r = settle(rural, [visit("F", cats="low_income", amounts=20_000 * Y)])["F"]
    assert r["act_pay_dedc"] == 0
    assert r["hifp_pay"] == 17_000 * Y
    assert r["hifmi_pay"] == 1_500 * Y
    assert r["maf_pay"] == 750 * Y
    assert r["psn_part_amt"] == 750 * Y


def test_example_h_single_disease_quota(rural):
    r = settle(rural, [visit("H1", psn_no="H1", diag="K35.801", amounts=7_200 * Y),
                       visit("H2", psn_no="H2", diag="K35.801", amounts=5_000 * Y)])
    assert (r["H1"]["hifp_pay"], r["H1"]["psn_part_amt"], r["H1"]["hosp_part_amt"]) == (5_100 * Y, 900 * Y, 1_200 * Y)
    assert (r["H2"]["hifp_pay"], r["H2"]["psn_part_amt"], r["H2"]["hosp_part_amt"]) == (4_250 * Y, 750 * Y, 0)


def test_example_i_per_bed_day(rural):
    r = settle(rural, [visit("I", diag="F20.001", ipt_days=30, amounts=5_400 * Y)])["I"]
    assert (r["hifp_pay"], r["psn_part_amt"], r["hosp_part_amt"]) == (4_050 * Y, 450 * Y, 900 * Y)


def test_example_d_resident_outpatient_pool(city):
    visits = [visit(f"D{k}", psn_no="D", insutype="resident", med_type="11", level="1",
                    end=(2013, 3, k + 1), amounts=amount * Y)
              for k, amount in enumerate([30, 100, 400, 80])]
    r = settle(city, visits)
    assert [r[f"D{k}"]["hifp_pay"] for k in range(4)] == [0, 40 * Y, 160 * Y, 0]


def test_example_e_retired_employee_large_amount(city):
    r = settle(city, [visit("E", insutype="employee", level="3", cats="retired", amounts=150_000 * Y,
                            acct_balc=2_000 * Y, acct_used_flag=True)])["E"]
    assert r["pool_prop_selfpay"] == 9000
    assert r["act_pay_dedc"] == 1_000 * Y
    assert r["hifp_pay"] == 120_000 * Y and r["hifp_lmt"] == 120_000 * Y
    assert r["flags"] & FLAG["F_HIFP_CAPPED"] and r["flags"] & FLAG["F_HIFOB"]
    # covered cost: the cap left over the ratio, round_half_up(120,000 / 90%) = 133,333.33;
    # overflow: eligible 150,000 - 1,000 = 149,000 less covered = 15,666.67; 90% of it 14,100.00
    covered = (r["hifp_lmt"] * 10000 + r["pool_prop_selfpay"] // 2) // r["pool_prop_selfpay"]
    assert covered == 133_333_33
    overflow = r["inscp_scp_amt"] - r["act_pay_dedc"] - covered
    assert overflow == 15_666_67
    assert rh(overflow * 9000) == r["hifob_pay"] == 14_100 * Y
    assert r["psn_part_amt"] == 15_900 * Y
    assert (r["acct_pay"], r["psn_cash_pay"], r["balc"]) == (2_000 * Y, 13_900 * Y, 0)


def test_fund_rows_name_rule_and_version(rural):
    """Issue 3: every fund row of a result names the rule and the pack version that produced it."""
    v = visit("A", amounts=53_500 * Y, fulamt_ownpay_amt=5_000 * Y, overlmt_selfpay=500 * Y,
              preselfpay_amt=1_000 * Y)
    rows = {d.fund_pay_type: d for d in rural.settle_one(v).setldetail}
    assert rows["hifp"].fund_payamt == 45_220 * Y and rows["hifmi"].fund_payamt == 4_140 * Y
    assert rows["hifp"].crt_payb_lmt_amt == 53_376 * Y
    for d in rows.values():
        assert "sample-rural/rural/2013-h1" in d.setl_proc_info and "county" in d.setl_proc_info
    assert "85%" in rows["hifp"].setl_proc_info and "45,220.00" in rows["hifp"].setl_proc_info
