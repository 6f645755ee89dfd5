"""Synthetic visits and line items that are valid for a policy pack and a catalogue.

For tests (the section 7 identities are checked over generated visits), for benchmarks, and for a
bureau trying a pack on data that looks like a region's (figures from SOURCE-FIGURES.md: inpatient
stays around 9,000 yuan, outpatient visits around 100 yuan, about 2.5 visits a person a year).
Everything is vectorised numpy and deterministic for a seed; the same seed gives the same visits
in ``synth_visits`` and ``synth_precomputed`` (only the amounts differ). How the data is drawn is
documented in docs/data.md.

Valid means: every code a visit carries (scheme, level, med type, category, injury cause) is one the
pack defines; the governing date (admission, discharge or settlement, per scheme) of every visit
has a version of its scheme in force; all dates lie in the year, begndate <= enddate <= setl_time;
ipt_days = enddate - begndate (at least 1) for admissions; every line amount is cnt x pric, line
numbers run 1..k within a visit, codes come from the catalogue, medfee_sumamt is the sum of the
visit's lines; mdtrt_id is unique; no pending injury cause unless ``pending_share`` asks for some.
"""
from __future__ import annotations

import datetime
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .policy import Pack
from .schema import LINE_SCHEMA, PRECOMPUTED_FIELDS, VISIT_SCHEMA

PRECOMPUTED_SCHEMA = pa.schema(list(VISIT_SCHEMA) + [pa.field(n, t) for n, t, _, _ in PRECOMPUTED_FIELDS])

# Share of persons by scheme code (others: 0.3 each); employees are few but visit more.
SCHEME_WEIGHT = {"employee": 0.2, "resident": 0.45, "rural": 0.35}
# Probability that a person has a category: (scheme without accounts, scheme with personal accounts).
CATEGORY_P = {"retired": (0.0, 0.30), "civil_servant": (0.0, 0.06), "low_income": (0.04, 0.005),
              "five_guarantee": (0.01, 0.0), "veteran": (0.01, 0.01), "severe_disability": (0.01, 0.005)}
OTHER_CATEGORY_P = 0.02

# Visit profiles: what a med type looks like. An admission is inpatient; a non-admission med type
# on the inpatient pool is a special outpatient (门诊慢特病); the rest is ordinary outpatient.
OUTPATIENT, SPECIAL, INPATIENT = 0, 1, 2
PROFILE_WEIGHT = [0.85, 0.04, 0.11]              # of all visits
MAX_QUANTITY = 500                               # a line's quantity stays below this where prices allow
MEDIAN_FEN = [7_500, 30_000, 620_000]            # median visit total: 75, 300, 6,200 yuan
SIGMA = [0.85, 0.7, 0.8]                         # lognormal spread: inpatient mean about 9,000 yuan
LEVEL_WEIGHT_3 = [[0.60, 0.28, 0.12], [0.30, 0.40, 0.30], [0.30, 0.45, 0.25]]   # township/county/city
LEVEL_COST_3 = [[0.7, 1.0, 1.6], [0.8, 1.0, 1.3], [0.45, 1.0, 1.9]]
INSTITUTIONS_3 = [60, 12, 6]                     # institutions per level in the region
GROUP_HIT = [0.05, 0.5, 0.3]                     # share of visits whose diagnosis is in a disease group
EXCLUDED_SHARE = [0.005, 0.0, 0.03]              # share of visits with an excluded injury cause
OUT_OF_AREA_SHARE, OUT_FILED_SHARE = 0.03, 0.6
REFERRAL_SHARE = [0.02, 0.05, 0.15]
ACCT_USED_SHARE = 0.75
OTHER_REGIONS = ["530100", "510100", "440300", "110000", "310000", "500000"]
COMMON_DIAGNOSES = [
    "J06.900", "J20.900", "J18.900", "J44.100", "J45.900", "I10.x00", "I25.100", "I50.900",
    "E11.900", "E78.500", "K29.700", "K21.000", "K80.200", "K35.800", "K59.000", "M54.500",
    "M17.900", "M81.000", "N39.000", "N20.000", "R50.900", "R51.x00", "S72.000", "S82.200",
    "H26.900", "L23.900", "A09.900", "B34.900", "O80.000", "Z00.000",
]


def _streams(seed):
    """Independent generators: persons, visits, lines, precomputed amounts."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _ids(prefix, numbers, width):
    """prefix + the number zero-padded to width digits: one fixed-width byte matrix, no Python strings."""
    numbers = np.asarray(numbers, dtype=np.int64)
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    size = len(head) + width
    text = np.empty((len(numbers), size), dtype=np.uint8)
    text[:, :len(head)] = head
    rest = numbers.copy()
    for k in range(size - 1, len(head) - 1, -1):
        text[:, k] = 48 + rest % 10
        rest //= 10
    offsets = np.arange(0, (len(numbers) + 1) * size, size, dtype=np.int32)
    return pa.StringArray.from_buffers(len(numbers), pa.py_buffer(offsets), pa.py_buffer(text))


def _pick(pool, index):
    """pool[index] as a string array, null where index < 0."""
    index = np.asarray(index)
    return pa.array(pool, type=pa.string()).take(pa.array(index, mask=index < 0))


def _weighted(rng, weights, n, dtype=np.int16):
    """n draws of indices 0..len(weights)-1 with the given weights."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.minimum(np.searchsorted(cum / cum[-1], rng.random(n), side="right"),
                      len(cum) - 1).astype(dtype)


def _diagnosis(prefix, variant):
    """An ICD-10 code under a group prefix: "C34" -> "C34.901"; "N18.5" -> "N18.501"."""
    if "." in prefix:
        return prefix + ["00", "01", "02"][variant]
    if len(prefix) < 3:
        prefix = prefix + "0" * (3 - len(prefix))
    return f"{prefix}.{['900', '001', '101'][variant]}"


def _profile(med_type):
    if med_type.admission:
        return INPATIENT
    return SPECIAL if med_type.pool == "inpatient" else OUTPATIENT


def _scheme_plan(pack, scheme, year):
    """Per scheme: the day offsets of the year with a version in force, med type weights, causes."""
    jan1 = datetime.date(year, 1, 1)
    n_days = (datetime.date(year + 1, 1, 1) - jan1).days
    covered = np.zeros(n_days, dtype=bool)
    excluded, pending = set(), set()
    for version in scheme.versions:
        lo = max((version.effective_from - jan1).days, 0)
        hi = min(((version.effective_to - jan1).days if version.effective_to else n_days - 1), n_days - 1)
        if lo > hi:
            continue
        covered[lo:hi + 1] = True
        excluded.update(version.excluded_causes)
        pending.update(version.pending_causes)
    # every med type of the pack, its profile's weight shared equally: a med type a version does
    # not settle still occurs (NOT_COVERED; e.g. employee outpatient visits paid from the account)
    profiles = [_profile(m) for m in pack.med_types]
    count = np.bincount(profiles, minlength=3)
    weight = [PROFILE_WEIGHT[p] / count[p] for p in profiles]
    causes = pack.injury_causes
    anywhere_pending = {c for s in pack.schemes for v in s.versions for c in v.pending_causes}
    return {
        "days": np.flatnonzero(covered).astype(np.int32),
        "med_type_weight": weight,
        "excluded": [i for i, c in enumerate(causes)
                     if c in excluded and c not in anywhere_pending and c != "none"],
        "pending": [i for i, c in enumerate(causes) if c in pending],
    }


def _usable_schemes(pack: Pack, year, schemes):
    """(schemes by code, per-scheme plans, the codes with a version in force in the year)."""
    by_code = {s.code: s for s in pack.schemes}
    wanted = list(by_code) if schemes is None else list(schemes)
    for code in wanted:
        if code not in by_code:
            raise ValueError(f"scheme {code!r} is not in pack {pack.name!r} (it has {list(by_code)})")
    plans = {code: _scheme_plan(pack, by_code[code], year) for code in wanted}
    usable = [code for code in wanted if len(plans[code]["days"])]
    if not usable:
        raise ValueError(f"no version of schemes {wanted} of pack {pack.name!r} is in force in {year}")
    return by_code, plans, usable


def _person_columns(pack: Pack, by_code, usable, n_persons, rng_person, jan1):
    """Every person's scheme, categories (bit mask), birth day, account balance and visit frequency:
    the first draws of the person stream, so the persons of a seed are the same with or without visits."""
    p_scheme = _weighted(rng_person, [SCHEME_WEIGHT.get(c, 0.3) for c in usable], n_persons, np.int8)
    has_acct = np.array([by_code[c].personal_account for c in usable])[p_scheme]
    cats = np.zeros(n_persons, dtype=np.int16)
    for bit, name in enumerate(pack.categories):
        p_no, p_acct = CATEGORY_P.get(name, (OTHER_CATEGORY_P, OTHER_CATEGORY_P))
        hit = rng_person.random(n_persons, dtype=np.float32) < np.where(has_acct, p_acct, p_no)
        cats |= (hit.astype(np.int16) << bit)
    retired = np.zeros(n_persons, dtype=bool)
    if "retired" in pack.categories:
        retired = (cats >> pack.categories.index("retired")) & 1 > 0
    age_band = _weighted(rng_person, [0.2, 0.5, 0.3], n_persons, np.int8)   # child, adult, elderly
    age = np.choose(age_band, [rng_person.integers(0, 18, n_persons), rng_person.integers(18, 60, n_persons),
                               rng_person.integers(60, 91, n_persons)])
    age = np.where(has_acct & ~retired, np.clip(age, 20, 59), age)
    age = np.where(retired, rng_person.integers(55, 96, n_persons), age)
    brdy = (jan1 - np.round(age * 365.25).astype(np.int64) - rng_person.integers(0, 365, n_persons)).astype(np.int32)
    balance = np.rint(rng_person.lognormal(np.log(150_000), 1.0, n_persons)).astype(np.int64)
    balance[rng_person.random(n_persons) < 0.03] = 0
    frequency = rng_person.gamma(0.7, 1.0, n_persons)
    return {"scheme": p_scheme, "acct": has_acct, "cats": cats, "brdy": brdy, "balance": balance,
            "frequency": frequency}


def _n_persons(n_visits: int, n_persons) -> int:
    n_persons = max(1, round(n_visits / 2.5)) if n_persons is None else int(n_persons)
    if n_persons < 1:
        raise ValueError(f"n_persons must be at least 1, got {n_persons}")
    return n_persons


def _visit_columns(pack: Pack, n_visits, rng_person, rng, n_persons, year, schemes, pending_share):
    """Every visit attribute as numpy arrays (and the target total in fen), in setl_time order."""
    if n_visits < 0:
        raise ValueError(f"n_visits must not be negative, got {n_visits}")
    if not 0.0 <= pending_share <= 1.0:
        raise ValueError(f"pending_share must be within 0..1, got {pending_share}")
    by_code, plans, usable = _usable_schemes(pack, year, schemes)
    if pending_share > 0 and not all(plans[c]["pending"] for c in usable):
        raise ValueError("pending_share > 0 but a scheme has no pending injury cause in the pack")
    n = int(n_visits)
    n_persons = _n_persons(n, n_persons)

    jan1 = int(np.datetime64(f"{year}-01-01", "D").astype(np.int64))   # days since 1970-01-01

    # persons: scheme, categories, birth date, account balance, how often they visit
    p = _person_columns(pack, by_code, usable, n_persons, rng_person, jan1)
    p_scheme, cats, brdy, balance, frequency = p["scheme"], p["cats"], p["brdy"], p["balance"], p["frequency"]

    # visits: how many each person makes, then per scheme the med type and governing day
    person = np.repeat(np.arange(n_persons, dtype=np.int32),
                       rng.multinomial(n, frequency / frequency.sum()) if n else 0)
    scheme = p_scheme[person]
    med_type = np.zeros(n, dtype=np.int16)
    gday = np.zeros(n, dtype=np.int32)
    governing = np.zeros(n, dtype=np.int8)                     # 0 admission, 1 discharge, 2 settlement
    for s, code in enumerate(usable):
        rows = np.flatnonzero(scheme == s)
        plan = plans[code]
        med_type[rows] = _weighted(rng, plan["med_type_weight"], len(rows))
        gday[rows] = plan["days"][rng.integers(0, len(plan["days"]), len(rows))]
        governing[rows] = ["admission", "discharge", "settlement"].index(by_code[code].governing_date)
    profiles = np.array([_profile(m) for m in pack.med_types], dtype=np.int8)
    profile = profiles[med_type]

    # dates: length of stay and settlement lag around the governing day, shortened to fit the year
    last = int(np.datetime64(f"{year}-12-31", "D").astype(np.int64) - jan1)
    inpatient = profile == INPATIENT
    los = np.where(inpatient, np.clip(np.rint(rng.lognormal(np.log(8), 0.6, n)), 1, 180), 0).astype(np.int32)
    lag = np.where(inpatient, _weighted(rng, [0.5, 0.3, 0.15, 0.05], n, np.int32), 0)
    before, after = gday, last - gday                          # days of the year around the governing day
    admission, discharge = governing == 0, governing == 1
    lag = np.minimum(lag, np.where(governing == 2, before, after))
    los = np.minimum(los, np.where(admission, after - lag, np.where(discharge, before, before - lag)))
    begn = gday - np.where(admission, 0, np.where(discharge, los, los + lag))
    setl_day = (begn + los + lag).astype(np.uint16)

    # settlement-time order: sort by day (a radix sort), then give each day's visits sorted times
    # between 8:00 and 18:00 (uniform order statistics from exponential gaps), so no full sort
    order = np.argsort(setl_day, kind="stable")
    person, scheme, med_type, profile = person[order], scheme[order], med_type[order], profile[order]
    begn, los, setl_day = begn[order], los[order], setl_day[order]
    per_day = np.bincount(setl_day, minlength=last + 1)
    first = np.repeat(np.cumsum(per_day) - per_day, per_day)
    gaps = np.cumsum(rng.exponential(1.0, n))
    within = gaps - np.concatenate([[0.0], gaps])[first]
    span = np.concatenate([[0.0], gaps])[np.cumsum(per_day)] - np.concatenate([[0.0], gaps])[np.cumsum(per_day) - per_day]
    span += rng.exponential(1.0, last + 1)
    seconds = 8 * 3600 + (within / span[setl_day] * (10 * 3600)).astype(np.int64)
    setl_time = (jan1 + setl_day.astype(np.int64)) * 86400 + seconds
    inpatient = profile == INPATIENT

    # injury causes: a few excluded ones, pending ones only when asked for
    cause = np.full(n, -1, dtype=np.int8)
    for s, code in enumerate(usable):
        plan = plans[code]
        rows = np.flatnonzero(scheme == s)
        if plan["excluded"]:
            hit = rng.random(len(rows)) < np.array(EXCLUDED_SHARE)[profile[rows]]
            cause[rows[hit]] = np.array(plan["excluded"])[rng.integers(0, len(plan["excluded"]), hit.sum())]
        if pending_share > 0:
            hit = rng.random(len(rows)) < pending_share
            cause[rows[hit]] = np.array(plan["pending"])[rng.integers(0, len(plan["pending"]), hit.sum())]

    # level and institution
    n_levels = len(pack.levels)
    if n_levels == 3:
        level_w, cost, inst = LEVEL_WEIGHT_3, np.array(LEVEL_COST_3), INSTITUTIONS_3
    else:
        level_w = [list(range(n_levels, 0, -1)), [1] * n_levels, [1] * n_levels]
        cost, inst = np.ones((3, n_levels)), [20] * n_levels
    level = np.zeros(n, dtype=np.int16)
    for p in (OUTPATIENT, SPECIAL, INPATIENT):
        rows = np.flatnonzero(profile == p)
        level[rows] = _weighted(rng, level_w[p], len(rows))
    inst_start = np.concatenate([[0], np.cumsum(inst)])
    institution = inst_start[level] + (rng.random(n) * np.array(inst)[level]).astype(np.int64)

    # diagnosis: a disease group's prefix and a suffix sometimes, a common diagnosis otherwise
    groups = [[p for p in grp.icd10 if re.fullmatch(r"[A-Z][0-9A-Z.]*", p)] for grp in pack.disease_groups]
    groups = [g for g in groups if g]
    group_codes, group_start, group_len = [], [], []
    for prefixes in groups:
        group_start.append(len(group_codes))
        group_codes += [_diagnosis(p, v) for p in prefixes for v in range(3)]
        group_len.append(len(prefixes) * 3)
    all_prefixes = tuple(p for prefixes in groups for p in prefixes)
    common = [c for c in COMMON_DIAGNOSES if not c.startswith(all_prefixes)] if all_prefixes else COMMON_DIAGNOSES
    diagnosis = len(group_codes) + rng.integers(0, len(common), n)
    if groups:
        hit = rng.random(n) < np.array(GROUP_HIT)[profile]
        grp = rng.integers(0, len(groups), hit.sum())
        diagnosis[hit] = np.array(group_start)[grp] + (rng.random(hit.sum()) * np.array(group_len)[grp]).astype(np.int64)

    # flags and the target total
    out_area = rng.random(n) < OUT_OF_AREA_SHARE
    filed = out_area & (rng.random(n) < OUT_FILED_SHARE)
    other_regions = [r for r in OTHER_REGIONS if r != pack.region]
    region = np.where(out_area, rng.integers(0, len(other_regions), n), -1)
    referral = rng.random(n) < np.array(REFERRAL_SHARE)[profile] * (level > 0)
    acct = np.array([by_code[c].personal_account for c in usable])[scheme]
    acct_used = acct & (rng.random(n) < ACCT_USED_SHARE)
    median = np.array(MEDIAN_FEN, dtype=np.float64)[profile] * cost[profile, level]
    total = np.clip(np.rint(np.exp(np.array(SIGMA)[profile] * rng.standard_normal(n)) * median),
                    100, 300_000_000).astype(np.int64)
    return {
        "person": person, "scheme": scheme, "cats": cats[person], "brdy": brdy[person],
        "balance": balance[person], "acct": acct, "institution": institution, "level": level,
        "region": region, "filed": filed, "med_type": med_type, "begn": (jan1 + begn).astype(np.int32),
        "end": (jan1 + begn + los).astype(np.int32), "setl_time": setl_time, "diagnosis": diagnosis,
        "referral": referral, "cause": cause,
        "ipt_days": np.where(inpatient, np.maximum(los, 1), -1).astype(np.int32),
        "acct_used": acct_used, "total": total, "profile": profile,
        "pools": {"schemes": usable, "group_codes": group_codes, "common": common,
                  "regions": other_regions, "inst": inst},
        "year": year, "n_persons": n_persons,
    }


def _id_width(first: int, n: int) -> int:
    """Digits of the numbers of visit and person ids: at least 8, enough for the last one."""
    return max(8, len(str(max(first + n - 1, 0))))


def _category_strings(pack: Pack) -> list:
    """psn_cats of every category bit mask: the names joined by commas, None for none."""
    return [",".join(name for bit, name in enumerate(pack.categories) if mask >> bit & 1) or None
            for mask in range(1 << len(pack.categories))]


def _visit_table(pack: Pack, v, medfee, extra=None, schema=VISIT_SCHEMA, first_visit=0, first_person=0) -> pa.Table:
    n = len(v["person"])
    pools = v["pools"]
    width = _id_width(first_visit, n)
    pwidth = _id_width(first_person, v["n_persons"])
    cat_strings = _category_strings(pack)
    inst_codes = [f"H{pack.region}{lv + 1}{i + 1:04d}" for lv, k in enumerate(pools["inst"]) for i in range(k)]
    # each person's first-visit (首诊/签约) institution is a township one (the first level's); four
    # in five of their township visits are there (no draw: the other columns keep their values)
    first_inst = (first_person + v["person"].astype(np.int64)) % pools["inst"][0]
    own = (v["level"] == 0) & ((first_visit + np.arange(n)) % 5 != 0)
    institution = np.where(own, first_inst, v["institution"])
    # the institution kind: the first a med type is settled at, when the pack names kinds
    kinds = [(m.kinds or pack.institution_kinds or [None])[0] for m in pack.med_types]
    acct = v["acct"]
    cols = {
        "mdtrt_id": _ids(f"MD{v['year']}", first_visit + np.arange(n, dtype=np.int64), width),
        "psn_no": _ids("P", first_person + v["person"].astype(np.int64), pwidth),
        "insutype": _pick(pools["schemes"], v["scheme"]),
        "psn_cats": _pick(cat_strings, v["cats"]),
        "brdy": pa.array(v["brdy"], type=pa.date32()),
        "insu_admdvs": pa.nulls(n, pa.string()),
        "acct_balc": pa.array(v["balance"], mask=~acct, type=pa.int64()),
        "fixmedins_code": _pick(inst_codes, institution),
        "fixmedins_type": _pick(kinds, v["med_type"]),
        "psn_fst_medins_code": _pick(inst_codes, first_inst),
        "medins_lv": _pick([lv.code for lv in pack.levels], v["level"]),
        "mdtrt_admdvs": _pick(pools["regions"], v["region"]),
        "out_filing_flag": pa.array(v["filed"]),
        "med_type": _pick([m.code for m in pack.med_types], v["med_type"]),
        "begndate": pa.array(v["begn"], type=pa.date32()),
        "enddate": pa.array(v["end"], type=pa.date32()),
        "setl_time": pa.array(v["setl_time"], type=pa.timestamp("s")),
        "dise_codg": _pick(pools["group_codes"] + pools["common"], v["diagnosis"]),
        "refl_flag": pa.array(v["referral"]),
        "inj_cause": _pick(pack.injury_causes, v["cause"]),
        "ipt_days": pa.array(v["ipt_days"], mask=v["ipt_days"] < 0, type=pa.int32()),
        "acct_used_flag": pa.array(v["acct_used"]),
        "medfee_sumamt": pa.array(medfee, type=pa.int64()),
    }
    cols.update(extra or {})
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def _prices(catalogue, rng):
    """A unit price per catalogue row (fen): the ceiling where there is one, else drawn by kind."""
    service = pc.match_substring_regex(catalogue.codes, r"^[0-9]").to_numpy(zero_copy_only=False)
    drawn = np.where(service, rng.lognormal(np.log(3_000), 1.2, len(catalogue)),
                     rng.lognormal(np.log(1_200), 1.1, len(catalogue)))
    price = np.where(catalogue.ceiling > 0, catalogue.ceiling, np.maximum(np.rint(drawn), 1))
    return price.astype(np.int64)


def synth_persons(pack: Pack, n_persons: int, seed: int = 0, year: int = 2013, schemes=None,
                  first_person: int = 0) -> pa.Table:
    """Every person ``synth_visits`` draws for the same seed, n_persons, year and schemes (with a visit
    or not): psn_no, insutype, psn_cats, brdy, acct_balc (schemes with accounts)."""
    by_code, _, usable = _usable_schemes(pack, year, schemes)
    n_persons = _n_persons(0, n_persons)
    jan1 = int(np.datetime64(f"{year}-01-01", "D").astype(np.int64))
    p = _person_columns(pack, by_code, usable, n_persons, _streams(seed)[0], jan1)
    return pa.table({
        "psn_no": _ids("P", first_person + np.arange(n_persons, dtype=np.int64), _id_width(first_person, n_persons)),
        "insutype": _pick(usable, p["scheme"]),
        "psn_cats": _pick(_category_strings(pack), p["cats"]),
        "brdy": pa.array(p["brdy"], type=pa.date32()),
        "acct_balc": pa.array(p["balance"], mask=~p["acct"], type=pa.int64()),
    })


def synth_visits(pack: Pack, catalogue, n_visits: int, seed: int = 0, n_persons: int | None = None,
                 year: int = 2013, lines_per_visit: tuple[int, int] = (1, 12), schemes=None,
                 pending_share: float = 0.0, first_visit: int = 0,
                 first_person: int = 0) -> tuple[pa.Table, pa.Table]:
    """(visits with VISIT_SCHEMA, lines with LINE_SCHEMA), valid for ``pack`` and ``catalogue``.

    n_persons: default n_visits / 2.5; year: every date lies in it; lines_per_visit: inclusive range
    of the number of lines of a visit (uniform); schemes: scheme codes to draw from (default all
    with a version in force in the year); pending_share: share of visits given a pending injury
    cause (refused by Settle); first_visit, first_person: the numbers of the first visit id and
    person number (a region drawn in several calls keeps its ids unique). Visits are in setl_time
    order; lines follow their visits.
    """
    lo, hi = lines_per_visit
    if not 1 <= lo <= hi:
        raise ValueError(f"lines_per_visit must be (lo, hi) with 1 <= lo <= hi, got {lines_per_visit}")
    if len(catalogue) == 0:
        raise ValueError("the catalogue is empty")
    rng_person, rng_visit, rng_line, _ = _streams(seed)
    v = _visit_columns(pack, n_visits, rng_person, rng_visit, n_persons, year, schemes, pending_share)
    n = len(v["person"])

    k = rng_line.integers(lo, hi + 1, n).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(k)])
    m = int(offsets[-1])
    visit_of_line = np.repeat(np.arange(n, dtype=np.int64), k)
    line_no = (np.arange(m, dtype=np.int64) - np.repeat(offsets[:-1], k) + 1).astype(np.int32)
    # split the visit's target total over its lines, then give each line an item whose unit price
    # fits its share (drawn among the items not dearer than the share, or the cheapest few, and
    # not so cheap that the quantity would exceed MAX_QUANTITY);
    # quantities are whole numbers, so the real total (the sum of cnt x pric) is near the target
    weight = rng_line.exponential(1.0, m)
    visit_sum = np.add.reduceat(weight, offsets[:-1]) if m else np.ones(0)
    share = weight * (v["total"] / visit_sum)[visit_of_line]
    catalogue_price = _prices(catalogue, rng_line)
    by_price = np.argsort(catalogue_price, kind="stable")
    sorted_price = catalogue_price[by_price]
    fits = np.maximum(np.searchsorted(sorted_price, share, side="right"), min(20, len(catalogue)))
    cheapest = np.minimum(np.searchsorted(sorted_price, share / MAX_QUANTITY), fits - 1)
    code = by_price[cheapest + (rng_line.random(m) * (fits - cheapest)).astype(np.int64)].astype(np.int32)
    price = catalogue_price[code]
    # a share of lines on ceiling-priced items is billed above the ceiling (over-limit self-pay)
    over = (catalogue.ceiling[code] > 0) & (rng_line.random(m) < 0.08)
    price[over] = np.rint(price[over] * rng_line.uniform(1.05, 1.4, over.sum())).astype(np.int64)
    cnt = np.maximum(np.rint(share / price), 1).astype(np.int64)
    amount = cnt * price
    medfee = np.add.reduceat(amount, offsets[:-1]) if m else np.zeros(0, np.int64)

    visits = _visit_table(pack, v, medfee, first_visit=first_visit, first_person=first_person)
    lines = pa.Table.from_arrays([
        visits.column("mdtrt_id").take(pa.array(visit_of_line)),
        pa.array(line_no, type=pa.int32()),
        catalogue.codes.take(pa.array(code)),
        pa.array(cnt), pa.array(price), pa.array(amount),
    ], schema=LINE_SCHEMA)
    return visits, lines


def synth_precomputed(pack: Pack, n_visits: int, seed: int = 0, n_persons: int | None = None,
                      year: int = 2013, schemes=None, pending_share: float = 0.0, first_visit: int = 0,
                      first_person: int = 0) -> pa.Table:
    """Visits with the step-1 amounts (PRECOMPUTED_FIELDS) instead of lines: the benchmark's input.

    The same visits as ``synth_visits`` for the same arguments; the amounts split the target total:
    class C about 11%, over-ceiling on 30% of visits, class B pre-pay about 4.5%, the rest in
    scope, of which about 22% essential drugs. medfee_sumamt = the four parts exactly.
    """
    rng_person, rng_visit, _, rng = _streams(seed)
    v = _visit_columns(pack, n_visits, rng_person, rng_visit, n_persons, year, schemes, pending_share)
    total = v.pop("total")
    n = len(total)
    # shares of the total (cheap draws rather than beta ones: this runs for 10M visits)
    u = rng.random((4, n), dtype=np.float32)
    fulamt = (total * (0.45 * u[0] ** 3)).astype(np.int64)                       # mean 11%
    overlmt = np.where(u[1] < 0.3, total * (0.08 * (u[1] / 0.3) ** 3), 0).astype(np.int64)  # 30% of visits
    preselfpay = (total * (0.01 + 0.07 * u[2])).astype(np.int64)                  # mean 4.5%
    inscp = total - fulamt - overlmt - preselfpay                                 # > 0: the shares sum below 0.61
    essential = (inscp * (0.45 * u[3])).astype(np.int64)                          # mean 22%
    del u
    extra = {"fulamt_ownpay_amt": pa.array(fulamt), "overlmt_selfpay": pa.array(overlmt),
             "preselfpay_amt": pa.array(preselfpay), "inscp_scp_amt": pa.array(inscp),
             "inscp_essential_amt": pa.array(essential)}
    return _visit_table(pack, v, total, extra, PRECOMPUTED_SCHEMA, first_visit, first_person)
