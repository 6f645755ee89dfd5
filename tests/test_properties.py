"""Section 7 identities, exact to the fen, on every visit: property tests over generated packs and visits."""
import datetime as dt

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.api import Settler
from kernel.catalogue import default_catalogue
from kernel.policy import pack_from_raw
from packgen import CATEGORIES, LAYERS, random_pack_raw

CAUSES = ["none", "none", "none", "traffic", "fight", "maternity", "pending"]
DIAGNOSES = [None, "C34.901", "N18.501", "C92.101", "K35.801", "F20.001", "I21.901", "J18.901"]
money = st.integers(min_value=0, max_value=400_000_00)


@st.composite
def visits(draw, max_visits=25):
    n = draw(st.integers(1, max_visits))
    rows = []
    for k in range(n):
        end = dt.date(2013, 1, 1) + dt.timedelta(days=draw(st.integers(0, 364)))
        inscp = draw(money)
        rows.append({
            "mdtrt_id": f"V{k}", "psn_no": f"P{draw(st.integers(0, 3))}",
            "insutype": draw(st.sampled_from(["employee", "resident"])),
            "psn_cats": ",".join(draw(st.lists(st.sampled_from(CATEGORIES), max_size=3, unique=True))),
            "brdy": dt.date(draw(st.integers(1930, 2012)), 6, 1),
            "insu_admdvs": "530300",
            "mdtrt_admdvs": draw(st.sampled_from(["530300", "530300", "530100"])),
            "out_filing_flag": draw(st.booleans()),
            "medins_lv": draw(st.sampled_from(["1", "2", "3"])),
            "med_type": draw(st.sampled_from(["11", "14", "21"])),
            "begndate": end - dt.timedelta(days=draw(st.integers(0, 40))), "enddate": end,
            "setl_time": dt.datetime.combine(end, dt.time(draw(st.integers(0, 23)))),
            "dise_codg": draw(st.sampled_from(DIAGNOSES)),
            "refl_flag": draw(st.booleans()),
            "inj_cause": draw(st.sampled_from(CAUSES)),
            "ipt_days": draw(st.integers(0, 60)),
            "acct_used_flag": draw(st.booleans()),
            "acct_balc": draw(st.integers(0, 5_000_00)),
            "fulamt_ownpay_amt": draw(money), "overlmt_selfpay": draw(money),
            "preselfpay_amt": draw(money), "inscp_scp_amt": inscp,
            "inscp_essential_amt": draw(st.integers(0, inscp)),
        })
    return pa.Table.from_pylist(rows)


_SETTLERS = {}


def settler_for(seed, all_layers):
    key = (seed, all_layers)
    if key not in _SETTLERS:
        raw = random_pack_raw(seed, layers=set(LAYERS) if all_layers else None)
        _SETTLERS[key] = Settler(pack_from_raw(raw, f"random-{seed}"), default_catalogue())
    return _SETTLERS[key]


def check_identities(t: pa.Table):
    c = {name: np.asarray(t.column(name)) for name in t.column_names
         if pa.types.is_integer(t.column(name).type)}
    assert (c["medfee_sumamt"] == c["fulamt_ownpay_amt"] + c["overlmt_selfpay"] + c["preselfpay_amt"]
            + c["inscp_scp_amt"]).all()
    assert (c["fund_pay_sumamt"] == c["hifp_pay"] + c["hifob_pay"] + c["hifmi_pay"] + c["cvlserv_pay"]
            + c["hifes_pay"] + c["maf_pay"] + c["oth_pay"]).all()
    assert (c["medfee_sumamt"] == c["fund_pay_sumamt"] + c["psn_part_amt"] + c["hosp_part_amt"]).all()
    assert (c["psn_part_amt"] == c["acct_pay"] + c["psn_cash_pay"]).all()
    for name in ["medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                 "act_pay_dedc", "hifp_pay", "pool_prop_selfpay", "cvlserv_pay", "hifes_pay", "hifmi_pay",
                 "hifob_pay", "maf_pay", "oth_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay",
                 "psn_cash_pay", "hosp_part_amt", "balc"]:
        assert (c[name] >= 0).all(), name
    assert (c["act_pay_dedc"] <= c["inscp_scp_amt"]).all()
    assert (c["pool_prop_selfpay"] <= 10000).all()
    for pay, lmt in [("hifp_pay", "hifp_lmt"), ("hifob_pay", "hifob_lmt"), ("hifmi_pay", "hifmi_lmt"),
                     ("cvlserv_pay", "cvlserv_lmt"), ("maf_pay", "maf_lmt")]:
        capped = c[lmt] >= 0
        assert (c[pay][capped] <= c[lmt][capped]).all(), f"{pay} above its remaining cap"
    assert (c["hifes_pay"] == 0).all() and (c["oth_pay"] == 0).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 40), table=visits())
def test_identities_random_layers(seed, table):
    check_identities(settler_for(seed, False).settle_table(table).table)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 40), table=visits(), mode=st.sampled_from(["settle", "presettle"]))
def test_identities_every_layer_on(seed, table, mode):
    check_identities(settler_for(seed, True).settle_table(table, mode=mode).table)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 40), table=visits(max_visits=40))
def test_year_totals_are_the_sum_of_visits(seed, table):
    """Accumulated fund payments per person equal the sum of that person's visit payments."""
    result = settler_for(seed, True).settle_table(table)
    t = result.table.to_pylist()
    acc = result.accumulators.to_pylist()
    for name, col in [("A_HIFOB", "hifob_pay"), ("A_HIFMI", "hifmi_pay"), ("A_CVL", "cvlserv_pay"),
                      ("A_MAF", "maf_pay")]:
        assert sum(a[name] for a in acc) == sum(r[col] for r in t)
    assert sum(a["A_HIFP_INP"] + a["A_HIFP_OUT"] for a in acc) == sum(r["hifp_pay"] for r in t)
    assert sum(a["A_DED_PAID_INP"] + a["A_DED_PAID_OUT"] for a in acc) == sum(r["act_pay_dedc"] for r in t)
