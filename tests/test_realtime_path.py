"""The real-time path (settle_one: a dict, plain-Python checks) agrees with the batch path
(settle_table: Arrow columns, vectorised checks): same results, same accumulators, same errors."""
import datetime as dt

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.api import Settler, shipped_pack_path
from kernel.errors import InputError
from kernel.layout import ACC_COLS, OUT_COLS

SETTLER = None


def settler():
    global SETTLER
    if SETTLER is None:
        SETTLER = Settler.from_files(shipped_pack_path("sample_rural"))
    return SETTLER


def codes():
    c = settler().catalogue
    return c.codes.to_pylist()[:200]


def birth_dates(end):
    """Any date of birth; a leap day; or an 17th or 18th birthday within two days of the visit (the
    child disease groups end at 17: the one-visit age must agree with the batch's to the day)."""
    near = st.builds(lambda years, shift: dt.date(end.year - years, end.month, min(end.day, 28))
                     + dt.timedelta(days=shift), st.integers(17, 18), st.integers(-2, 2))
    return st.one_of(st.dates(dt.date(1940, 1, 1), dt.date(2012, 12, 31)),
                     st.sampled_from([1992, 1996, 2000]).map(lambda y: dt.date(y, 2, 29)), near)


@st.composite
def visit_and_lines(draw):
    end = dt.date(2013, 1, 1) + dt.timedelta(days=draw(st.integers(0, 364)))
    v = {"mdtrt_id": "V1", "psn_no": "P1", "insutype": "rural",
         "medins_lv": draw(st.sampled_from(["1", "2", "3"])), "med_type": draw(st.sampled_from(["11", "21"])),
         "begndate": end - dt.timedelta(days=draw(st.integers(0, 30))), "enddate": end,
         "setl_time": dt.datetime.combine(end, dt.time(10)),
         "psn_cats": draw(st.sampled_from(["", "low_income", "five_guarantee,veteran", "retired"])),
         "brdy": draw(birth_dates(end)),
         "dise_codg": draw(st.sampled_from([None, "C34.9", "K35.8", "F20.0", "C92.1", "C91.0", "J18.9"])),
         "inj_cause": draw(st.sampled_from([None, "none", "traffic", "pending"])),
         "insu_admdvs": draw(st.sampled_from([None, "530300", "530321"])),
         "mdtrt_admdvs": draw(st.sampled_from([None, "530300", "530302", "530100"])),
         "out_filing_flag": draw(st.booleans()), "refl_flag": draw(st.booleans()),
         "ipt_days": draw(st.integers(0, 40)), "acct_used_flag": draw(st.booleans())}
    if draw(st.booleans()):
        lines = []
        for k in range(draw(st.integers(1, 8))):
            cnt, price = draw(st.integers(0, 20)), draw(st.integers(0, 2_000_000))
            lines.append({"mdtrt_id": "V1", "line_no": k + 1, "hilist_code": draw(st.sampled_from(codes())),
                          "cnt": cnt, "pric": price, "det_item_fee_sumamt": cnt * price})
        v["medfee_sumamt"] = sum(x["det_item_fee_sumamt"] for x in lines)
    else:
        lines = None
        inscp = draw(st.integers(0, 50_000_000))
        v.update(fulamt_ownpay_amt=draw(st.integers(0, 10_000_000)), overlmt_selfpay=draw(st.integers(0, 1_000_000)),
                 preselfpay_amt=draw(st.integers(0, 1_000_000)), inscp_scp_amt=inscp,
                 inscp_essential_amt=draw(st.integers(0, inscp)))
    return v, lines


MUTATIONS = [
    ("visit", "insutype", "martian"), ("visit", "med_type", "99"), ("visit", "medins_lv", "7"),
    ("visit", "inj_cause", "meteor"), ("visit", "psn_cats", "astronaut"), ("visit", "psn_no", None),
    ("visit", "insu_admdvs", "ZZZ"), ("visit", "insu_admdvs", "110000"), ("visit", "mdtrt_admdvs", "QQQ"),
    ("visit", "enddate", dt.date(2009, 1, 1)), ("visit", "ipt_days", -1), ("visit", "medfee_sumamt", "total+1"),
    ("visit", "medfee_sumamt", -5), ("pre", "inscp_scp_amt", -1), ("pre", "inscp_scp_amt", 12.5),
    ("pre", "fulamt_ownpay_amt", 10**13), ("pre", "inscp_essential_amt", 10**11),
    ("line", "cnt", -1), ("line", "pric", -3), ("line", "det_item_fee_sumamt", 7), ("line", "line_no", 1),
    ("line", "hilist_code", "NOT-A-CODE"), ("line", "mdtrt_id", "V2"),
    ("line", "cnt", 10**10), ("line", "pric", 10**13), ("line", "pric", None),
    ("line", "det_item_fee_sumamt", -7), ("line", "line_no", None),
]


def both(v, lines, acc, balance, mode):
    """(result or error) of each path."""
    s = settler()
    try:
        one = s.settle_one(dict(v), [dict(x) for x in lines] if lines is not None else None, acc, balance, mode)
        one = ({k: one.amounts[k] for k in OUT_COLS}, one.status, one.reason, one.policy_version,
               one.acc_after, one.balance_after)
    except InputError as e:
        one = ("error", e.field, e.row, e.line, e.value, str(e).split(": ", 1)[-1])
    table = pa.Table.from_pylist([{**v, "acct_balc": balance}])
    try:
        key = (v["psn_no"], v["insutype"], v["enddate"].year)
        batch = s.settle_table(table, pa.Table.from_pylist(lines) if lines is not None else None, mode,
                               opening_acc={key: acc}, source="visit", line_source="lines")
        row = batch.table.to_pylist()[0]
        accs = batch.accumulators.to_pylist()[0]
        many = ({k: row[k] for k in OUT_COLS}, row["status"], row["reason"], row["policy_version"],
                {k: accs[k] for k in ACC_COLS}, row["balc"])
    except InputError as e:
        many = ("error", e.field, e.row, e.line, e.value, str(e).split(": ", 1)[-1])
    return one, many


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=visit_and_lines(), mode=st.sampled_from(["settle", "presettle"]),
       acc=st.fixed_dictionaries({name: st.integers(0, 6_000_000) for name in ACC_COLS}),
       balance=st.integers(0, 1_000_000))
def test_same_result(case, mode, acc, balance):
    v, lines = case
    one, many = both(v, lines, acc, balance, mode)
    assert one == many


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=visit_and_lines(), mutation=st.sampled_from(MUTATIONS), data=st.data())
def test_same_error(case, mutation, data):
    v, lines = case
    where, field, value = mutation
    if where == "line":
        if lines is None or (field == "line_no" and len(lines) < 2):
            return
        k = data.draw(st.integers(0, len(lines) - 1))
        if field == "line_no" and k == 0:
            k = 1
        if lines[k][field] == value:
            return                                   # the "bad" value is the one already there
        lines[k][field] = value
    elif where == "pre":
        if lines is not None:
            return
        v[field] = value
    elif value == "total+1":
        v[field] = (sum(x["det_item_fee_sumamt"] for x in lines) if lines is not None else
                    sum(v[k] for k in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt"))) + 1
    else:
        v[field] = value
    one, many = both(v, lines, {}, 0, "settle")
    assert one[0] == "error", "a bad input was accepted"
    assert one == many
