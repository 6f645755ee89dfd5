"""Dated versions (SETTLEMENT.md section 6) by hand: the governing date (admission, discharge or
settlement) picks both the version and the accumulator year, for a stay that crosses a year end,
through the Cython kernel and the reference alike.

The pack: one scheme, level 1 inpatient, annual inpatient cap 10,000 in both versions;
version "2012" (2012-01-01 to 2012-12-31) pays 80% after a deductible of 100 an admission,
version "2013" (from 2013-01-01) pays 90% after 200.
"""
import datetime as dt

import pyarrow as pa
import pytest

from kernel import reference
from kernel.api import Settler
from kernel.catalogue import default_catalogue
from kernel.policy import pack_from_raw

Y = 100


def pack(governing_date):
    def version(vid, start, end, ratio, deductible):
        return {"id": vid, "effective_from": start, **({"effective_to": end} if end else {}),
                "med_types": {"21": {"ratio": {"1": ratio},
                                     "deductible": {"amount": {"1": deductible}}}},
                "pools": {"inpatient": {"cap": "10000"}}}
    return pack_from_raw({
        "name": "dated", "region": "530300",
        "levels": [{"code": "1", "name": "township"}],
        "med_types": [{"code": "21", "name": "inpatient", "admission": True}],
        "schemes": [{"code": "rural", "name": "rural", "governing_date": governing_date,
                     "versions": [version("2012", dt.date(2012, 1, 1), dt.date(2012, 12, 31), "80%", "100"),
                                  version("2013", dt.date(2013, 1, 1), None, "90%", "200")]}]})


def stay(mdtrt_id, admitted, discharged, settled, inscp):
    return {"mdtrt_id": mdtrt_id, "psn_no": "P1", "insutype": "rural", "medins_lv": "1", "med_type": "21",
            "begndate": admitted, "enddate": discharged, "setl_time": dt.datetime.combine(settled, dt.time(9)),
            "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0, "inscp_scp_amt": inscp}


# June 2012 under every governing date: deductible 100, 80% x 10,000 = 8,000; 2,000 of the cap left
JUNE = stay("JUNE", dt.date(2012, 6, 1), dt.date(2012, 6, 10), dt.date(2012, 6, 10), 10_100 * Y)
# Admitted 20 December 2012, discharged 5 January 2013, settled 8 January 2013
ACROSS = stay("ACROSS", dt.date(2012, 12, 20), dt.date(2013, 1, 5), dt.date(2013, 1, 8), 5_100 * Y)
# Admitted and discharged in December 2012, settled 2 January 2013
LATE = stay("LATE", dt.date(2012, 12, 20), dt.date(2012, 12, 30), dt.date(2013, 1, 2), 5_100 * Y)

# What the second stay gets when its governing date falls in 2012: version 2012, deductible 100,
# 80% x 5,000 = 4,000 cut to the 2,000 left of 2012's cap, year 2012 (2 admissions, 10,000 paid).
# In 2013: version 2013, deductible 200, 90% x 4,900 = 4,410 with 2013's cap untouched, year 2013.
IN_2012 = ("dated/rural/2012", 100 * Y, 2_000 * Y, 2_000 * Y, 2012)
IN_2013 = ("dated/rural/2013", 200 * Y, 10_000 * Y, 4_410 * Y, 2013)


def settle_both(governing_date, visits):
    """(kernel rows, kernel accumulators by (psn, scheme, year), reference results, reference
    accumulators)."""
    p = pack(governing_date)
    settler = Settler(p, default_catalogue())
    batch = settler.settle_table(pa.Table.from_pylist(visits))
    acc = {(a.pop("psn_no"), a.pop("insutype"), a.pop("year")): a for a in batch.accumulators.to_pylist()}
    ref = reference.settle_batch(p, settler.reference_catalogue(), visits)
    return batch.table.to_pylist(), acc, ref.results, ref.accumulators


@pytest.mark.parametrize("governing_date, second, expected", [
    ("admission", ACROSS, IN_2012),       # admitted in 2012
    ("discharge", ACROSS, IN_2013),       # discharged in 2013
    ("settlement", ACROSS, IN_2013),      # settled in 2013
    ("admission", LATE, IN_2012),
    ("discharge", LATE, IN_2012),         # discharged 30 December
    ("settlement", LATE, IN_2013),        # settled 2 January: the settlement date alone decides
])
def test_governing_date_picks_version_and_year(governing_date, second, expected):
    version, ded, lmt, hifp, year = expected
    kernel, kernel_acc, ref, ref_acc = settle_both(governing_date, [JUNE, second])
    for rows in (kernel, ref):
        first, other = rows
        assert (first["policy_version"], first["act_pay_dedc"], first["hifp_pay"]) == \
            ("dated/rural/2012", 100 * Y, 8_000 * Y)
        assert (other["policy_version"], other["act_pay_dedc"], other["hifp_lmt"], other["hifp_pay"]) == \
            (version, ded, lmt, hifp)
    a2012 = ref_acc[("P1", "rural", 2012)]
    if year == 2012:
        assert (a2012.admissions, a2012.hifp_inp, a2012.ded_paid_inp) == (2, 10_000 * Y, 200 * Y)
        assert set(ref_acc) == {("P1", "rural", 2012)}
    else:
        assert (a2012.admissions, a2012.hifp_inp, a2012.ded_paid_inp) == (1, 8_000 * Y, 100 * Y)
        a2013 = ref_acc[("P1", "rural", 2013)]
        assert (a2013.admissions, a2013.hifp_inp, a2013.ded_paid_inp) == (1, 4_410 * Y, 200 * Y)
    assert kernel_acc == {key: acc.as_layout_dict() for key, acc in ref_acc.items()}


def test_real_time_path_uses_the_same_year():
    """settle_one reports the accumulator year the ledger files the visit under."""
    settler = Settler(pack("admission"), default_catalogue())
    one = settler.settle_one(ACROSS, acc={"A_HIFP_INP": 8_000 * Y, "A_ADMISSIONS": 1})
    assert (one.year, one.policy_version) == (2012, "dated/rural/2012")
    assert one.amounts["hifp_pay"] == 2_000 * Y and one.acc_after["A_HIFP_INP"] == 10_000 * Y
    assert settler.acc_key(ACROSS) == ("P1", "rural", 2012)
    settler = Settler(pack("settlement"), default_catalogue())
    one = settler.settle_one(LATE)
    assert (one.year, one.policy_version, one.amounts["hifp_pay"]) == (2013, "dated/rural/2013", 4_410 * Y)
    assert settler.acc_key(LATE) == ("P1", "rural", 2013)
