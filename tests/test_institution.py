"""SETTLEMENT.md section 3's institution inputs: the person's first-visit / contracted institution
(首诊/签约机构) stands in for a referral there, and the institution's kind decides which med types it
settles (a pharmacy admits nobody). Hand-computed on the city pack, through the batch kernel, the
real-time path and the reference implementation; refusals through both paths."""
import datetime as dt

import pyarrow as pa
import pytest

from kernel import reference
from kernel.errors import InputError

Y = 100


def province_admission(mdtrt_id, psn_no, **over):
    """Employee inpatient at level 4 (province, outside the city), discharged 10 June 2012 (version
    2011), 20,000.00 all in scope."""
    v = {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": "employee", "medins_lv": "4", "med_type": "21",
         "fixmedins_code": "H4201", "fixmedins_type": "hospital", "begndate": dt.date(2012, 6, 1),
         "enddate": dt.date(2012, 6, 10), "setl_time": dt.datetime(2012, 6, 10, 9),
         "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0, "inscp_scp_amt": 20000 * Y}
    v.update(over)
    return v


# deductible 1,500 (level 4) leaves 18,500 eligible; level-4 ratio 80%, without a referral -10 points
CASES = {
    "no referral": ({}, 7000, 12950 * Y),                       # 70% x 18,500
    "referred": ({"refl_flag": True}, 8000, 14800 * Y),         # 80% x 18,500
    "at the first-visit institution": ({"psn_fst_medins_code": "H4201"}, 8000, 14800 * Y),
    "first-visit institution elsewhere": ({"psn_fst_medins_code": "H1007"}, 7000, 12950 * Y),
}


@pytest.mark.parametrize("case", CASES)
def test_first_visit_institution_needs_no_referral(city, case):
    over, ratio, hifp = CASES[case]
    visit = province_admission("V1", "P1", **over)
    row = city.settle_table(pa.Table.from_pylist([visit])).table.to_pylist()[0]
    assert (row["pool_prop_selfpay"], row["hifp_pay"]) == (ratio, hifp)
    one = city.settle_one(visit, None, {}, 0)
    assert (one.amounts["pool_prop_selfpay"], one.amounts["hifp_pay"]) == (ratio, hifp)
    result, _, _, _ = reference.settle_visit(city.pack, {}, visit, None, None, 0)
    assert (result["pool_prop_selfpay"], result["hifp_pay"]) == (ratio, hifp)


def test_a_pharmacy_settles_outpatient_purchases_only(city):
    outpatient = province_admission("V1", "P1", med_type="11", medins_lv="1", fixmedins_type="pharmacy")
    assert city.settle_table(pa.Table.from_pylist([outpatient])).table.num_rows == 1
    admission = province_admission("V2", "P2", fixmedins_type="pharmacy")
    batch = (lambda: city.settle_table(pa.Table.from_pylist([outpatient, admission])), 2)
    one = (lambda: city.settle_one(admission, None, {}, 0), 1)
    for settle, row in (batch, one):
        with pytest.raises(InputError) as e:
            settle()
        err = e.value
        assert (err.field, err.value, err.row) == ("fixmedins_type", "pharmacy", row)
        assert "med type 21 is not settled at this kind of institution (settled at: hospital)" in str(err)


def test_unknown_institution_kind(city):
    visit = province_admission("V1", "P1", fixmedins_type="clinic")
    with pytest.raises(InputError, match="unknown institution kind") as e:
        city.settle_table(pa.Table.from_pylist([visit]))
    assert (e.value.field, e.value.value, e.value.row) == ("fixmedins_type", "clinic", 1)
    with pytest.raises(InputError, match="unknown institution kind"):
        city.settle_one(visit, None, {}, 0)
