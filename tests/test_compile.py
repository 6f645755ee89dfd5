"""The policy compiler: table cells computed by hand from the shipped packs (docs/design.md
"Compiled tables"), version and disease-group lookup, and the figures of SETTLEMENT.md section 8
recomputed from the compiled cells."""
import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kernel.compile import D, R, age_in_years, as_days, compile_pack
from kernel.layout import BAND_MAX, BAND_UNUSED, DENY, DISEASE_COLS, RULE_COLS
from kernel.policy import load_pack

PACKS = Path(__file__).resolve().parents[1] / "kernel" / "packs"


@pytest.fixture(scope="module")
def rural():
    return compile_pack(load_pack(PACKS / "sample_rural.toml"))


@pytest.fixture(scope="module")
def city():
    return compile_pack(load_pack(PACKS / "sample_city.toml"))


def rule_row(cp, version_id, med_type, level, scheme=None):
    (v,) = [i for i, info in enumerate(cp.versions)
            if info.id == version_id and (scheme is None or info.scheme == scheme)]
    return int(cp.rule_index(v, cp.med_type_index[med_type], cp.level_index[level]))


def rule(cp, version_id, med_type, level, scheme=None):
    return cp.rules[rule_row(cp, version_id, med_type, level, scheme)]


def disease(cp, version_id, med_type, level, group, scheme=None):
    row = rule_row(cp, version_id, med_type, level, scheme)
    return cp.diseases[row * cp.n_groups + cp.group_index[group]]


def rh(x):
    return (x + 5000) // 10000


def band_pay(bands_row, lo, hi):
    """fen*bp of the amount [lo, hi) over one row of the bands table."""
    edges = [int(e) for e in bands_row[0::2] if e != BAND_UNUSED] + [2**62]
    rates = [int(r) for r in bands_row[1::2]]
    return sum(max(0, min(hi, edges[k + 1]) - max(lo, edges[k])) * rates[k] for k in range(len(edges) - 1))


# --- shapes and codes -------------------------------------------------------------------------------

def test_shapes_and_codes(rural):
    assert rural.n_versions == 2 and rural.n_med_types == 2 and rural.n_levels == 3
    assert rural.n_groups == 22 and rural.group_codes[0] == ""
    assert rural.rules.shape == (12, len(RULE_COLS)) and rural.rules.dtype == np.int64
    assert rural.diseases.shape == (12 * 22, len(DISEASE_COLS)) and rural.diseases.dtype == np.int64
    assert rural.bands.shape == (1, 2 * BAND_MAX)
    assert all(t.flags.c_contiguous for t in (rural.rules, rural.diseases, rural.bands))
    assert rural.scheme_index == {"rural": 0}
    assert rural.level_index == {"1": 0, "2": 1, "3": 2}
    assert rural.med_type_index == {"11": 0, "21": 1}
    assert rural.category_bit["low_income"] == 2 and rural.category_bit["five_guarantee"] == 3
    assert [(v.scheme, v.id, v.effective_from, v.effective_to, v.governing_date) for v in rural.versions] == [
        ("rural", "2013-h1", datetime.date(2013, 1, 1), datetime.date(2013, 7, 31), "discharge"),
        ("rural", "2013-aug", datetime.date(2013, 8, 1), None, "discharge"),
    ]


def test_rule_index_formula(rural):
    v = np.array([0, 1, 1, -1])
    m = np.array([1, 0, 1, 1])
    lv = np.array([2, 0, 1, 1])
    assert rural.rule_index(v, m, lv).tolist() == [(0 * 2 + 1) * 3 + 2, (1 * 2 + 0) * 3 + 0, 10, -1]
    assert rural.rule_index(v, m, lv).dtype == np.int32


# --- rule cells ------------------------------------------------------------------------------------

def test_county_inpatient_rule(rural):
    r = rule(rural, "2013-h1", "21", "2")
    assert r[R["R_COVERED"]] == 1 and r[R["R_POOL"]] == 0 and r[R["R_COUNTS_ADMISSION"]] == 1
    assert r[R["R_BASE_RATIO"]] == 8500
    assert r[R["R_DED_KIND"]] == 0 and r[R["R_DED_AMOUNT"]] == 30000
    assert [r[R[f"R_DED_NTH_{k}"]] for k in (1, 2, 3)] == [10000, 10000, 10000]
    assert r[R["R_DED_WAIVED_CATS"]] == (1 << 2) | (1 << 3)          # low_income, five_guarantee
    assert r[R["R_CAP"]] == 5337600                                    # max(6 x 8,896, 50,000) yuan
    assert r[R["R_BANDSET"]] == -1
    assert r[R["R_OB_RATIO"]] == 0 and r[R["R_OB_CAP"]] == -1
    assert r[R["R_MI_FORM"]] == 1 and r[R["R_MI_TRIGGER"]] == 0 and r[R["R_MI_THRESHOLD"]] == 1000000
    assert r[R["R_MI_CAP"]] == 25000000 and r[R["R_MI_BASE"]] == 0
    assert r[R["R_MAF_CATS"]] == 12 and r[R["R_MAF_RATIO"]] == 5000 and r[R["R_MAF_CAP"]] == 3000000
    assert r[R["R_CVL_CATS"]] == 0 and r[R["R_GM_RATIO"]] == 0 and r[R["R_ACCT"]] == 0
    causes = rural.cause_index
    excluded = sum(1 << causes[c] for c in ("traffic", "fight", "drunkenness", "self_harm", "crime",
                                            "work_injury", "maternity", "cosmetic"))
    assert r[R["R_EXCLUDED_CAUSES"]] == excluded and r[R["R_PENDING_CAUSES"]] == 1 << causes["pending"]


def test_august_version_only_drops_the_serious_illness_cap(rural):
    h1, aug = rule(rural, "2013-h1", "21", "3"), rule(rural, "2013-aug", "21", "3")
    assert aug[R["R_MI_CAP"]] == -1 and h1[R["R_MI_CAP"]] == 25000000
    same = [i for i in range(len(RULE_COLS)) if i != R["R_MI_CAP"]]
    assert (h1[same] == aug[same]).all()


def test_serious_illness_bands(rural):
    r = rule(rural, "2013-aug", "21", "1")
    row = rural.bands[r[R["R_MI_BANDSET"]]]
    assert row[:6].tolist() == [0, 5000, 3000000, 6000, 10000000, 7000]
    assert (row[6::2] == BAND_UNUSED).all() and (row[7::2] == 0).all()


def test_outpatient_rule_has_inpatient_layers_off(rural):
    r = rule(rural, "2013-h1", "11", "1")
    assert r[R["R_COVERED"]] == 1 and r[R["R_POOL"]] == 1 and r[R["R_COUNTS_ADMISSION"]] == 0
    assert r[R["R_BASE_RATIO"]] == 4000 and r[R["R_DED_AMOUNT"]] == 0 and r[R["R_CAP"]] == 30000
    assert r[R["R_MI_FORM"]] == 0 and r[R["R_MI_BANDSET"]] == -1 and r[R["R_MI_CAP"]] == -1
    assert r[R["R_MAF_CATS"]] == 0 and r[R["R_MAF_CAP"]] == -1
    # disease rules list med type 21 only: every outpatient disease row is zero
    row = rule_row(rural, "2013-h1", "11", "1")
    assert not rural.diseases[row * rural.n_groups:(row + 1) * rural.n_groups].any()


def test_uncovered_med_type(city):
    r = rule(city, "2013", "11", "1", scheme="employee")
    assert r[R["R_COVERED"]] == 0 and r[R["R_POOL"]] == 1 and r[R["R_ACCT"]] == 1
    assert r[R["R_BASE_RATIO"]] == 0 and r[R["R_CAP"]] == -1 and r[R["R_OB_RATIO"]] == 0


def test_city_employee_rule(city):
    r = rule(city, "2013", "21", "3", scheme="employee")
    assert r[R["R_BASE_RATIO"]] == 8500 and r[R["R_DED_AMOUNT"]] == 100000
    assert [r[R[f"R_DED_NTH_{k}"]] for k in (1, 2, 3)] == [10000, 5000, 5000]   # the last share repeats
    assert r[R[f"R_CAT_DELTA_{city.category_bit['retired']}"]] == 500
    assert r[R["R_CAP"]] == 12000000 and r[R["R_OB_RATIO"]] == 9000 and r[R["R_OB_CAP"]] == 20000000
    assert r[R["R_CVL_CATS"]] == 1 << city.category_bit["civil_servant"] and r[R["R_CVL_RATIO"]] == 5000
    assert r[R["R_OA_UNFILED_DELTA"]] == -1000 and r[R["R_REFERRAL_REQUIRED"]] == 0
    assert r[R["R_ACCT"]] == 1 and r[R["R_MI_FORM"]] == 0
    assert rule(city, "2011", "21", "3", scheme="employee")[R["R_OA_UNFILED_DELTA"]] == -2000
    level4 = rule(city, "2013", "21", "4", scheme="employee")
    assert level4[R["R_REFERRAL_REQUIRED"]] == 1 and level4[R["R_NO_REFERRAL_DELTA"]] == -1000
    special = rule(city, "2013", "14", "3", scheme="employee")
    assert special[R["R_POOL"]] == 0 and special[R["R_OB_RATIO"]] == 9000 and special[R["R_DED_AMOUNT"]] == 0


def test_city_resident_rules(city):
    out = rule(city, "2013", "11", "2", scheme="resident")
    assert out[R["R_POOL"]] == 1 and out[R["R_BAND_ORIGIN"]] == 1 and out[R["R_CAP"]] == -1
    assert city.bands[out[R["R_BANDSET"]]][:6].tolist() == [0, 0, 5000, 5000, 45000, 0]
    inp = rule(city, "2013", "21", "2", scheme="resident")
    assert inp[R["R_BASE_RATIO"]] == 7000 and inp[R["R_ESS_UPLIFT"]] == 1500
    assert inp[R["R_CAP"]] == 10800000                                   # max(6 x 18,000, 90,000)
    assert rule(city, "2011", "21", "2", scheme="resident")[R["R_CAP"]] == 9000000
    assert inp[R["R_OA_UNFILED_DELTA"]] == DENY and inp[R["R_GM_RATIO"]] == 3500
    assert inp[R["R_MI_FORM"]] == 1 and inp[R["R_MI_TRIGGER"]] == 1 and inp[R["R_MI_THRESHOLD"]] == 1000000
    assert city.bands[inp[R["R_MI_BANDSET"]]][:2].tolist() == [0, 3000]
    assert disease(city, "2013", "21", "2", "severe_mental", scheme="resident")[D["D_DED_ONCE_A_YEAR"]] == 1


# --- disease cells ---------------------------------------------------------------------------------

def test_lung_cancer_floor(rural):
    (g,) = rural.resolve_groups(pa.array(["C34.901"]), np.array([60]))
    assert rural.group_codes[g] == "lung_cancer"
    d = disease(rural, "2013-h1", "21", "3", "lung_cancer")
    assert d.tolist() == [7000, 0, 0, 0, 0, 0, 0]


def test_appendicitis_quota_at_county_only(rural):
    assert disease(rural, "2013-aug", "21", "2", "appendicitis").tolist() == [0, 0, 0, 1, 600000, 0, 0]
    assert not disease(rural, "2013-aug", "21", "1", "appendicitis").any()
    assert not disease(rural, "2013-aug", "21", "3", "appendicitis").any()


def test_severe_mental_floor_and_bed_day_quota(rural):
    (g,) = rural.resolve_groups(["F20.001"], [40])
    assert rural.group_codes[g] == "severe_mental"
    for level in "123":
        assert disease(rural, "2013-aug", "21", level, "severe_mental").tolist() == [9000, 0, 0, 2, 15000, 0, 0]
    assert disease(rural, "2013-aug", "21", "2", "uremia")[D["D_FLOOR"]] == 9000


def test_group_zero_rows_are_zero(rural, city):
    for cp in (rural, city):
        assert not cp.diseases[0::cp.n_groups].any()


# --- lookups ---------------------------------------------------------------------------------------

def test_version_index(rural):
    days = np.array(["2013-08-01", "2012-12-31", "2013-07-31", "2013-01-01", "2020-05-05", "NaT", "2013-03-03"],
                    dtype="datetime64[D]")
    scheme = np.array([0, 0, 0, 0, 0, 0, -1], np.int16)
    got = rural.version_index(scheme, days)
    assert got.dtype == np.int32
    assert got.tolist() == [1, -1, 0, 0, 1, -1, -1]
    assert rural.version_label(got[0]) == "sample-rural/rural/2013-aug"
    # int days and Arrow date32 give the same answer
    assert rural.version_index(scheme.astype(np.int8), days.astype(np.int64)).tolist()[:5] == got.tolist()[:5]
    arrow = pa.array([datetime.date(2013, 8, 1), None, datetime.date(2012, 12, 31)], pa.date32())
    assert rural.version_index(np.zeros(3, np.int16), arrow).tolist() == [1, -1, -1]


@pytest.mark.parametrize("name", ["rural", "city"])
def test_version_index_of_a_batch_is_the_per_visit_answer(name, request):
    # a batch of 4,096 visits or more is answered from a table of every (scheme, day) in its range:
    # each visit's version must be what each visit alone gets (version boundaries inside the range,
    # days before any version, every scheme of the pack)
    pack = request.getfixturevalue(name)
    rng = np.random.default_rng(3)
    n_schemes = len(pack.scheme_index)
    days = rng.integers(np.datetime64("2010-06-01", "D").astype(np.int64),
                        np.datetime64("2014-06-01", "D").astype(np.int64), 20_000)
    scheme = rng.integers(0, n_schemes, 20_000)
    batch = pack.version_index(scheme, days)
    one_by_one = [int(pack.version_index(scheme[k:k + 1], days[k:k + 1])[0]) for k in range(0, 20_000, 7)]
    assert batch[::7].tolist() == one_by_one
    assert (batch >= 0).any() and (batch < 0).any()      # in force and not, both in the range


def test_version_index_several_schemes(city):
    scheme = city.scheme_of(pa.array(["resident", "employee", "resident", "nobody", None]))
    assert scheme.tolist() == [1, 0, 1, -1, -1]
    days = np.array(["2013-12-31", "2011-06-01", "2012-06-01", "2013-01-01", "2013-01-01"], "datetime64[D]")
    got = city.version_index(scheme, days)
    assert [city.version_label(v) for v in got] == [
        "sample-city/resident/2013", "sample-city/employee/2011", "sample-city/resident/2011", "", ""]
    rules = city.rule_index(got, city.med_type_of(["21"] * 5), city.level_of(["3"] * 5))
    assert city.version_label(rule=rules).tolist() == [
        "sample-city/resident/2013", "sample-city/employee/2011", "sample-city/resident/2011", "", ""]


def test_resolve_groups_age_and_longest_prefix(rural):
    diag = pa.array(["C92.0", "C92.0", "C92.0", "C92.1", "C92.1", "q21.3 ", "Q21", None, "Z00", "N18.5", "N18.4"])
    age = np.array([10, 17, 18, 10, 50, 3, -1, 30, 30, 70, 70])
    got = [rural.group_codes[g] for g in rural.resolve_groups(diag, age)]
    assert got == ["child_leukaemia", "child_leukaemia", "", "cml", "cml", "child_chd", "", "", "", "uremia", ""]


def test_resolve_groups_on_many_rows_matches_row_by_row(rural):
    rng = np.random.default_rng(7)
    pool = ["C92.0", "C92.1", "Q21", "C34.9", "F20", "K35.8", "A00", "I21.0", None]
    diag = [pool[i] for i in rng.integers(0, len(pool), 5000)]
    age = rng.integers(-1, 90, 5000)
    whole = rural.resolve_groups(pa.chunked_array([pa.array(diag[:2000]), pa.array(diag[2000:])]), pa.array(age))
    assert whole.dtype == np.int16
    one_by_one = [int(rural.resolve_groups([d], [a])[0]) for d, a in zip(diag[:300], age[:300])]
    assert whole[:300].tolist() == one_by_one


def test_codes_of_visit_columns(rural):
    assert rural.category_mask(pa.array(["low_income, retired", None, "", "rich"])).tolist() == [5, 0, 0, -1]
    assert rural.cause_of(["traffic", None, "", "meteor"]).tolist() == [1, 0, 0, -1]
    assert rural.level_of(pa.array(["3", "9"]).dictionary_encode()).tolist() == [2, -1]
    birth = np.array(["2000-03-01", "2000-03-01", "NaT"], "datetime64[D]")
    on = np.array(["2013-02-28", "2013-03-01", "2013-01-01"], "datetime64[D]")
    assert age_in_years(birth, on).tolist() == [12, 13, -1]
    gov = rural.governing_days(np.array([0, -1]), on[:2], on[:2] + 5, on[:2] + 9)
    assert gov[0] == as_days(on[:1] + 5)[0] and gov[1] == as_days(np.array(["NaT"], "datetime64[D]"))[0]


# --- SETTLEMENT.md section 8, recomputed from compiled cells ----------------------------------------

def test_example_a_and_b_from_cells(rural):
    a = rule(rural, "2013-h1", "21", "2")
    hifp_a = rh((5350000 - a[R["R_DED_AMOUNT"]]) * a[R["R_BASE_RATIO"]])
    assert hifp_a == 4522000
    mi = rural.bands[a[R["R_MI_BANDSET"]]]
    assert rh(band_pay(mi, 0, 5350000 - hifp_a)) == 414000
    b = rule(rural, "2013-h1", "21", "3")
    ratio = max(b[R["R_BASE_RATIO"]], disease(rural, "2013-h1", "21", "3", "ami")[D["D_FLOOR"]])
    assert rh((8000000 - b[R["R_DED_AMOUNT"]]) * ratio) == 5544000
    cap_left = b[R["R_CAP"]] - hifp_a
    assert cap_left == 815600
    assert rh(band_pay(mi, 0, 8000000 - cap_left)) == 4010640


def test_example_c_from_cells(rural):
    c = rule(rural, "2013-h1", "21", "3")
    hifp = min(rh((60000000 - c[R["R_DED_AMOUNT"]]) * 7000), c[R["R_CAP"]])
    assert hifp == 5337600
    raw = rh(band_pay(rural.bands[c[R["R_MI_BANDSET"]]], 0, 60000000 - hifp))
    assert raw == 36963680 and min(raw, c[R["R_MI_CAP"]]) == 25000000


def test_example_d_from_cells(city):
    r = rule(city, "2013", "11", "1", scheme="resident")
    row, seen, paid = city.bands[r[R["R_BANDSET"]]], 0, []
    for visit in (3000, 10000, 40000, 8000):
        paid.append(rh(band_pay(row, seen, seen + visit)))
        seen += visit
    assert paid == [0, 4000, 16000, 0]


def test_example_e_from_cells(city):
    r = rule(city, "2013", "21", "3", scheme="employee")
    ratio = r[R["R_BASE_RATIO"]] + r[R[f"R_CAT_DELTA_{city.category_bit['retired']}"]]
    elig = 15000000 - r[R["R_DED_AMOUNT"]]
    hifp = min(rh(elig * ratio), r[R["R_CAP"]])
    covered = (hifp * 10000 + ratio // 2) // ratio
    hifob = rh((elig - covered) * r[R["R_OB_RATIO"]])
    assert (hifp, covered, hifob, 15000000 - hifp - hifob) == (12000000, 13333333, 1410000, 1590000)


def test_example_h_and_i_from_cells(rural):
    county = rule(rural, "2013-h1", "21", "2")
    h = disease(rural, "2013-h1", "21", "2", "appendicitis")
    for inscope, fund in ((720000, 510000), (500000, 425000)):
        assert rh(min(inscope, h[D["D_QUOTA_AMOUNT"]]) * county[R["R_BASE_RATIO"]]) == fund
    i = disease(rural, "2013-h1", "21", "2", "severe_mental")
    base = min(540000, i[D["D_QUOTA_AMOUNT"]] * 30)
    assert rh(base * max(county[R["R_BASE_RATIO"]], i[D["D_FLOOR"]])) == 405000 and 540000 - base == 90000
