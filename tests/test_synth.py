"""Synthetic visits: schema, determinism, and every validity rule the kernel's input must meet."""
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kernel.catalogue import default_catalogue
from kernel.policy import pack_from_raw
from kernel.schema import LINE_SCHEMA, PRECOMPUTED_FIELDS, VISIT_SCHEMA
from kernel.synth import PRECOMPUTED_SCHEMA, synth_precomputed, synth_visits

RATIOS = {"1": "90%", "2": "80%", "3": "60%"}
RAW = {
    "name": "synth-test", "region": "530300",
    "levels": [{"code": "1", "name": "乡镇"}, {"code": "2", "name": "县区"}, {"code": "3", "name": "市"}],
    "med_types": [{"code": "11", "name": "普通门诊", "pool": "outpatient"},
                  {"code": "14", "name": "门诊慢特病", "pool": "inpatient"},
                  {"code": "21", "name": "普通住院", "pool": "inpatient", "admission": True}],
    "disease_groups": [{"code": "lung", "name": "肺癌", "icd10": ["C34"]},
                       {"code": "uremia", "name": "尿毒症", "icd10": ["N18.5", "N18.6", "N19"]}],
    "schemes": [
        {"code": "rural", "name": "新农合", "versions": [
            {"id": "r-h1", "effective_from": dt.date(2013, 1, 1), "effective_to": dt.date(2013, 7, 31),
             "excluded_causes": ["traffic", "fight"],
             "med_types": {"11": {"ratio": RATIOS}, "21": {"ratio": RATIOS}}},
            {"id": "r-h2", "inherits": "r-h1", "effective_from": dt.date(2013, 8, 1)}]},
        {"code": "employee", "name": "职工", "personal_account": True, "governing_date": "settlement",
         "versions": [{"id": "e", "effective_from": dt.date(2013, 3, 1), "effective_to": dt.date(2013, 10, 31),
                       "med_types": {"11": {"ratio": RATIOS}, "21": {"ratio": RATIOS}}}]},
        {"code": "resident", "name": "居民", "governing_date": "admission",
         "versions": [{"id": "c", "effective_from": dt.date(2012, 1, 1),
                       "med_types": {"11": {"ratio": RATIOS}, "14": {"ratio": RATIOS},
                                     "21": {"ratio": RATIOS}}}]},
    ],
}
PACK = pack_from_raw(RAW)
CAT = default_catalogue()
N = 20_000


@pytest.fixture(scope="module")
def data():
    return synth_visits(PACK, CAT, N, seed=7)


def np_(col):
    return col.to_numpy(zero_copy_only=False)


def test_schema_and_size(data):
    visits, lines = data
    assert visits.schema.equals(VISIT_SCHEMA) and lines.schema.equals(LINE_SCHEMA)
    assert visits.num_rows == N and N <= lines.num_rows <= 12 * N
    for name, _, required, _ in [f for f in __import__("kernel.schema").schema.VISIT_FIELDS]:
        if required:
            assert visits.column(name).null_count == 0, name


def test_deterministic_for_a_seed(data):
    again = synth_visits(PACK, CAT, N, seed=7)
    assert again[0].equals(data[0]) and again[1].equals(data[1])
    other = synth_visits(PACK, CAT, N, seed=8)
    assert not other[0].equals(data[0])


def test_lines_add_up(data):
    visits, lines = data
    cnt, pric, amount = np_(lines["cnt"]), np_(lines["pric"]), np_(lines["det_item_fee_sumamt"])
    assert (cnt >= 1).all() and (pric >= 1).all() and np.array_equal(amount, cnt * pric)
    visit_of_line = pc.index_in(lines["mdtrt_id"], value_set=visits["mdtrt_id"]).to_numpy()
    assert (visit_of_line >= 0).all() and (np.diff(visit_of_line) >= 0).all()
    total = np.zeros(N, dtype=np.int64)
    np.add.at(total, visit_of_line, amount)
    assert np.array_equal(total, np_(visits["medfee_sumamt"]))
    # line numbers run 1..k within each visit
    k = np.bincount(visit_of_line, minlength=N)
    assert k.min() >= 1 and k.max() <= 12
    starts = np.repeat(np.cumsum(k) - k, k)
    assert np.array_equal(np_(lines["line_no"]), np.arange(len(starts)) - starts + 1)


def test_ids_unique_and_codes_known(data):
    visits, lines = data
    assert pc.count_distinct(visits["mdtrt_id"]).as_py() == N
    assert (CAT.lookup(lines["hilist_code"]) >= 0).all()


def test_codes_are_the_packs(data):
    visits, _ = data
    assert set(pc.unique(visits["insutype"]).to_pylist()) == {"rural", "employee", "resident"}
    assert set(pc.unique(visits["medins_lv"]).to_pylist()) == {"1", "2", "3"}
    assert set(pc.unique(visits["med_type"]).to_pylist()) <= {"11", "14", "21"}
    cats = {c for s in pc.unique(visits["psn_cats"]).to_pylist() if s for c in s.split(",")}
    assert cats and cats <= set(PACK.categories)
    causes = set(pc.unique(visits["inj_cause"]).to_pylist()) - {None}
    assert causes == {"traffic", "fight"}                     # excluded ones; never "pending"
    rural = pc.equal(visits["insutype"], "rural")
    assert pc.all(pc.or_kleene(pc.is_null(visits["inj_cause"]), rural)).as_py()


def test_realistic_mix(data):
    visits, _ = data
    mt = np_(visits["med_type"])
    fee = np_(visits["medfee_sumamt"])
    assert (mt == "11").sum() > 3 * (mt == "21").sum()       # outpatient much more frequent
    assert 5_000_00 < fee[mt == "21"].mean() < 14_000_00     # inpatient around 9,000 yuan
    assert 60_00 < fee[mt == "11"].mean() < 160_00           # outpatient around 100 yuan
    dise = visits["dise_codg"]
    hits = pc.sum(pc.or_(pc.starts_with(dise, "C34"), pc.starts_with(dise, "N1"))).as_py()
    assert 0.02 * N < hits < 0.3 * N
    assert 0 < pc.sum(visits["refl_flag"]).as_py() < 0.2 * N
    out = pc.is_valid(visits["mdtrt_admdvs"])
    assert 0 < pc.sum(out).as_py() < 0.1 * N
    assert pc.all(pc.or_(out, pc.invert(visits["out_filing_flag"]))).as_py()


def test_dates_and_governing_versions(data):
    visits, _ = data
    begn = np_(visits["begndate"]).astype("datetime64[D]")
    end = np_(visits["enddate"]).astype("datetime64[D]")
    setl = np_(visits["setl_time"]).astype("datetime64[s]")
    assert (begn >= np.datetime64("2013-01-01")).all() and (setl < np.datetime64("2014-01-01")).all()
    assert (begn <= end).all() and (setl >= end.astype("datetime64[s]")).all()
    assert (np.diff(setl.astype(np.int64)) >= 0).all()        # file in settlement-time order
    assert (np_(visits["brdy"]).astype("datetime64[D]") < begn).all()
    inpatient = np_(visits["med_type"]) == "21"
    days = np_(visits["ipt_days"])
    stay = (end - begn).astype(np.int64)
    assert np.array_equal(days[inpatient].astype(np.int64), np.maximum(stay[inpatient], 1))
    assert visits["ipt_days"].filter(pa.array(~inpatient)).null_count == int((~inpatient).sum())
    scheme = np_(visits["insutype"])
    gov = {"rural": end, "employee": setl.astype("datetime64[D]"), "resident": begn}
    for code, lo, hi in [("rural", "2013-01-01", "2013-12-31"), ("employee", "2013-03-01", "2013-10-31"),
                         ("resident", "2012-01-01", "2013-12-31")]:
        g = gov[code][scheme == code]
        assert len(g) and (g >= np.datetime64(lo)).all() and (g <= np.datetime64(hi)).all(), code


def test_personal_accounts(data):
    visits, _ = data
    employee = np_(visits["insutype"]) == "employee"
    balc = visits["acct_balc"]
    assert pc.all(pc.equal(pc.is_valid(balc), pa.array(employee))).as_py()
    used = np_(visits["acct_used_flag"])
    assert not used[~employee].any() and 0.5 < used[employee].mean() < 0.95
    # one balance per person
    per_person = visits.filter(pa.array(employee)).group_by("psn_no").aggregate([("acct_balc", "count_distinct")])
    assert pc.max(per_person["acct_balc_count_distinct"]).as_py() == 1


def test_persons_keep_their_attributes(data):
    visits, _ = data
    g = visits.group_by("psn_no").aggregate([("insutype", "count_distinct"), ("brdy", "count_distinct"),
                                             ("psn_cats", "count_distinct")])
    for col in ("insutype_count_distinct", "brdy_count_distinct", "psn_cats_count_distinct"):
        assert pc.max(g[col]).as_py() == 1
    assert N / 4 < g.num_rows < N                             # about 2.5 visits a person


def test_parameters():
    visits, lines = synth_visits(PACK, CAT, 500, seed=1, n_persons=10, year=2013,
                                 lines_per_visit=(2, 3), schemes=["resident"], pending_share=0.2)
    assert set(pc.unique(visits["insutype"]).to_pylist()) == {"resident"}
    assert pc.count_distinct(visits["psn_no"]).as_py() <= 10
    k = np.bincount(pc.index_in(lines["mdtrt_id"], value_set=visits["mdtrt_id"]).to_numpy())
    assert k.min() == 2 and k.max() == 3
    assert 50 < pc.sum(pc.equal(visits["inj_cause"], "pending")).as_py() < 150
    empty_v, empty_l = synth_visits(PACK, CAT, 0)
    assert empty_v.num_rows == 0 and empty_l.num_rows == 0 and empty_v.schema.equals(VISIT_SCHEMA)
    with pytest.raises(ValueError, match="not in pack"):
        synth_visits(PACK, CAT, 10, schemes=["nope"])
    with pytest.raises(ValueError, match="in force in 2011"):
        synth_visits(PACK, CAT, 10, year=2011)
    with pytest.raises(ValueError, match="lines_per_visit"):
        synth_visits(PACK, CAT, 10, lines_per_visit=(0, 3))


def test_precomputed_matches_visits(data):
    pre = synth_precomputed(PACK, N, seed=7)
    assert pre.schema.equals(PRECOMPUTED_SCHEMA)
    assert [f.name for f in pre.schema][-len(PRECOMPUTED_FIELDS):] == [f[0] for f in PRECOMPUTED_FIELDS]
    same = [f.name for f in VISIT_SCHEMA if f.name != "medfee_sumamt"]
    assert pre.select(same).equals(data[0].select(same))     # same visits, other amounts
    f, o, p, i, e = (np_(pre[name]) for name, *_ in PRECOMPUTED_FIELDS)
    assert np.array_equal(np_(pre["medfee_sumamt"]), f + o + p + i)
    assert (f >= 0).all() and (o >= 0).all() and (p >= 0).all() and (i > 0).all()
    assert (e >= 0).all() and (e <= i).all() and 0.2 < (o > 0).mean() < 0.4
    assert synth_precomputed(PACK, N, seed=7).equals(pre)


def test_persons_are_the_visits_persons_with_or_without_a_visit(data):
    """synth_persons draws the persons synth_visits draws for the same seed: every person of a visit,
    with the visit's scheme, categories and birth date, and the persons without a visit too."""
    from kernel.synth import synth_persons
    visits, _ = data
    persons = synth_persons(PACK, N * 2 // 5, seed=7)         # synth_visits' default: n_visits / 2.5
    assert persons.num_rows == N * 2 // 5 == pc.count_distinct(persons["psn_no"]).as_py()
    j = visits.select(["psn_no", "insutype", "psn_cats", "brdy", "acct_balc"]).join(
        persons, "psn_no", join_type="left outer", right_suffix="_p")
    assert j.num_rows == N
    for c in ("insutype", "brdy"):
        assert pc.all(pc.equal(j[c], j[c + "_p"])).as_py()
    assert j["psn_cats"].fill_null("").equals(j["psn_cats_p"].fill_null(""))
    assert pc.count_distinct(visits["psn_no"]).as_py() < persons.num_rows


def test_first_visit_and_person_numbers_continue_the_ids():
    visits, lines = synth_visits(PACK, CAT, 50, seed=2, n_persons=20, first_visit=1_000, first_person=300)
    assert visits["mdtrt_id"][0].as_py() == "MD201300001000" and visits["mdtrt_id"][-1].as_py() == "MD201300001049"
    numbers = sorted(int(p[1:]) for p in pc.unique(visits["psn_no"]).to_pylist())
    assert 300 <= numbers[0] and numbers[-1] < 320
    assert set(pc.unique(lines["mdtrt_id"]).to_pylist()) == set(visits["mdtrt_id"].to_pylist())
    same = synth_visits(PACK, CAT, 50, seed=2, n_persons=20)[0]
    assert same.drop(["mdtrt_id", "psn_no"]).equals(visits.drop(["mdtrt_id", "psn_no"]))
