"""Random policy packs for tests: every layer of the chain switched on or off by a seed.

The packs are raw TOML-shaped dicts turned into Pack Structs by kernel.policy.pack_from_raw, so the
compiler, the kernel and the reference implementation all see the same, valid, policy.
"""
import datetime as dt
import random

LEVELS = ["1", "2", "3"]
CATEGORIES = ["retired", "civil_servant", "low_income", "five_guarantee", "veteran", "severe_disability"]
EXCLUDABLE = ["traffic", "fight", "drunkenness", "self_harm", "crime", "work_injury", "maternity", "cosmetic"]
# (code, ICD-10 prefixes, min_age, max_age, required secondary diagnosis): age conditions with a
# fallback group of a shorter prefix (C92.1 -> cml at any age; I63 at 65+ -> stroke_elderly, younger
# -> stroke), an age range, and a group that needs a secondary diagnosis (drug-resistant TB)
GROUPS = [("lung_cancer", ["C34"], None, None, []), ("uremia", ["N18.5", "N18.6", "N19"], None, None, []),
          ("child_leukaemia", ["C91", "C92", "C93", "C94", "C95"], None, 17, []),
          ("cml", ["C92.1"], None, None, []), ("appendicitis", ["K35"], None, None, []),
          ("schizophrenia", ["F20"], None, None, []), ("ami", ["I21"], None, None, []),
          ("stroke", ["I6"], None, None, []), ("stroke_elderly", ["I63"], 65, None, []),
          ("young_asthma", ["J45"], 10, 30, []), ("mdr_tb", ["A15", "A16"], None, None, ["U84.3", "Z16"])]


def _yuan(r, lo, hi):
    return str(r.randint(lo, hi))


def _cap(r, small, large):
    """An annual cap in yuan: mostly small enough that a person's visits in a year reach it."""
    return _yuan(r, *(small if r.random() < 0.7 else large))


def _pct(r, lo, hi):
    return f"{r.randint(lo, hi)}%"


def _delta(r, lo, hi, deny_share=0.0):
    if r.random() < deny_share:
        return "deny"
    v = r.randint(lo, hi)
    return f"+{v}%" if v >= 0 else f"{v}%"


def _bands(r, top_yuan):
    edges = sorted(r.sample(range(1, top_yuan), r.randint(0, 4)))
    return [{"start": "0", "ratio": _pct(r, 0, 100)}] + [{"start": str(e), "ratio": _pct(r, 0, 100)} for e in edges]


def _version_body(r, on):
    body = {"excluded_causes": r.sample(EXCLUDABLE, r.randint(0, 4)) if on("exclusions") else [],
            "pending_causes": ["pending"]}
    med = {}
    for code, pool in (("11", "outpatient"), ("14", "inpatient"), ("21", "inpatient")):
        if r.random() < 0.1:
            continue                                  # not covered in this version
        rule = {}
        if code == "11" and on("outpatient_bands"):
            rule["bands"] = _bands(r, 2000)
            rule["band_origin"] = r.choice(["visit", "year"])
        else:
            rule["ratio"] = {lv: _pct(r, 30, 100) for lv in LEVELS}
            if on("essential"):
                rule["essential_drugs"] = _delta(r, 0, 20)
        if on("deductible"):
            ded = {"kind": r.choice(["per_admission", "annual"]),
                   "amount": {lv: _yuan(r, 0, 1500) for lv in LEVELS}}
            if on("nth_admission"):
                ded["nth_admission"] = [_pct(r, 0, 100) for _ in range(r.randint(1, 3))]
            if on("waivers"):
                ded["waived_categories"] = r.sample(CATEGORIES, r.randint(1, 3))
            rule["deductible"] = ded
        med[code] = rule
    body["med_types"] = med
    pools = {}
    for pool in ("inpatient", "outpatient"):
        if on("basic_cap"):
            if r.random() < 0.5:
                pools[pool] = {"cap": _cap(r, (100, 5_000), (5_000, 80_000))}
            else:
                pools[pool] = {"cap_formula": {"multiplier": r.randint(1, 6), "benchmark": _yuan(r, 100, 9000),
                                               "floor": _cap(r, (0, 5_000), (5_000, 50_000))}}
    body["pools"] = pools
    adj = {}
    if on("category_deltas"):
        adj["categories"] = {c: _delta(r, -10, 10) for c in r.sample(CATEGORIES, r.randint(1, 3))}
    if on("out_of_area"):
        adj["out_of_area_filed"] = _delta(r, -20, 0, 0.1)
        adj["out_of_area_unfiled"] = _delta(r, -40, 0, 0.4)
    if on("referral"):
        adj["referral_required_levels"] = r.sample(LEVELS, r.randint(1, 2))
        adj["no_referral"] = _delta(r, -30, 0, 0.3)
    body["adjustments"] = adj
    diseases = []
    if on("disease_groups"):
        for code, *_ in r.sample(GROUPS, r.randint(1, len(GROUPS))):
            rule = {"groups": [code]}
            kind = r.choice(["floor", "override", "once", "quota", "bedday"])
            if kind in ("floor", "override") and r.random() < 0.8:
                rule["deductible_once_a_year"] = True          # and one deductible a year (psychiatric rule)
            if kind == "floor":
                rule["floor"] = _pct(r, 50, 95)
            elif kind == "override":
                rule["override"] = _pct(r, 50, 100)
            elif kind == "once":
                rule["deductible_once_a_year"] = True
                rule["floor"] = _pct(r, 50, 95)
            else:
                rule["quota"] = {"mode": "single_disease" if kind == "quota" else "per_bed_day",
                                 "amount": {lv: _yuan(r, 50, 8000) for lv in r.sample(LEVELS, r.randint(1, 3))}}
                if r.random() < 0.5:
                    rule["quota"]["ratio"] = _pct(r, 50, 100)
                if r.random() < 0.3:
                    rule["quota"]["deductible"] = _yuan(r, 0, 500)
            diseases.append(rule)
    body["diseases"] = diseases
    if on("large_amount"):
        body["large_amount"] = {"ratio": _pct(r, 50, 95), "med_types": ["21", "14"]}
        if r.random() < 0.7:
            body["large_amount"]["cap"] = _cap(r, (10, 3_000), (3_000, 200_000))
    if on("serious_illness"):
        if r.random() < 0.6:
            mi = {"form": "bands", "trigger": r.choice(["per_admission", "annual"]),
                  "threshold": _yuan(r, 0, 20_000), "base": r.choice(["inscope_selfpay", "all_selfpay"]),
                  "bands": _bands(r, 150_000)}
        else:
            mi = {"form": "effective_ratio", "threshold": _yuan(r, 0, 10_000),
                  "base": r.choice(["inscope_selfpay", "all_selfpay"]),
                  "effective_ratio": _pct(r, 50, 95),
                  # one ratio for the listed categories (the assistance-recipient ratio of the sources)
                  "category_ratio": dict.fromkeys(r.sample(CATEGORIES, r.randint(0, 2)), _pct(r, 60, 100))}
        if r.random() < 0.7:
            mi["cap"] = _cap(r, (10, 3_000), (3_000, 250_000))
        if r.random() < 0.5:
            mi["med_types"] = ["21"]
        body["serious_illness"] = mi
    if on("civil_servant"):
        # the retired as well as civil servants, so that enough persons of a scheme are eligible
        body["civil_servant"] = {"ratio": _pct(r, 10, 90), "categories": r.sample(CATEGORIES, r.randint(1, 3))}
        if r.random() < 0.7:
            body["civil_servant"]["cap"] = _cap(r, (10, 500), (500, 50_000))
    if on("assistance"):
        body["assistance"] = {"categories": r.sample(CATEGORIES, r.randint(1, 3)), "ratio": _pct(r, 30, 90),
                              "deductible": _yuan(r, 0, r.choice([50, 500]))}
        if r.random() < 0.6:
            body["assistance"]["cap"] = _cap(r, (10, 300), (300, 30_000))
    if on("guaranteed_minimum"):
        body["guaranteed_minimum"] = {"ratio": _pct(r, 10, 60), "med_types": ["21"]}
    return body


LAYERS = ["exclusions", "outpatient_bands", "essential", "deductible", "nth_admission", "waivers",
          "basic_cap", "category_deltas", "out_of_area", "referral", "disease_groups", "large_amount",
          "serious_illness", "civil_servant", "assistance", "guaranteed_minimum"]


def random_pack_raw(seed: int, layers=None, year=2013) -> dict:
    """A valid pack; `layers` (a set of LAYERS names) forces which are on, else each is on by chance."""
    r = random.Random(seed)

    def on(name):
        return name in layers if layers is not None else r.random() < 0.6

    schemes = []
    for code, account in (("employee", True), ("resident", False)):
        first = _version_body(r, on)
        second = _version_body(r, on)
        split = dt.date(year, r.randint(2, 11), 1)
        schemes.append({"code": code, "name": code, "personal_account": account,
                        "governing_date": r.choice(["admission", "discharge", "settlement"]),
                        "versions": [{"id": "v1", "effective_from": dt.date(year - 1, 1, 1),
                                      "effective_to": split - dt.timedelta(days=1), **first},
                                     {"id": "v2", "effective_from": split, **second}]})
    return {"name": f"random-{seed}", "region": "530300", "unknown_codes": "selfpay",
            "levels": [{"code": lv, "name": f"level {lv}"} for lv in LEVELS],
            "med_types": [{"code": "11", "name": "outpatient", "pool": "outpatient"},
                          {"code": "14", "name": "special outpatient", "pool": "inpatient"},
                          {"code": "21", "name": "inpatient", "pool": "inpatient", "admission": True}],
            "disease_groups": [{"code": c, "name": c, "icd10": p, **({"min_age": lo} if lo else {}),
                                **({"max_age": hi} if hi else {}), **({"secondary": sec} if sec else {})}
                               for c, p, lo, hi, sec in GROUPS],
            "schemes": schemes}


def chronic_patients(visits, pack, share: float, seed: int):
    """The visits with `share` of the persons given one disease-group diagnosis on every visit (a
    chronic patient admitted again and again for the same illness), so that once-a-year
    deductibles and annual caps are reached often; the other persons' diagnoses are kept."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    codes = [p + ("00" if "." in p else ".900") + suffix for g in pack.disease_groups for p in g.icd10
             for suffix in ([""] + [f",{m}" for m in g.secondary] if g.secondary else [""])]
    persons = pc.unique(visits.column("psn_no"))
    chronic = rng.random(len(persons)) < share
    assigned = pa.array(np.array(codes, dtype=object)[rng.integers(0, len(codes), len(persons))],
                        pa.string()).filter(pa.array(chronic))
    index = pc.index_in(visits.column("psn_no"), value_set=persons.filter(pa.array(chronic)))
    diagnosis = pc.if_else(pc.is_valid(index), pc.take(assigned, index), visits.column("dise_codg"))
    return visits.set_column(visits.schema.get_field_index("dise_codg"), "dise_codg", diagnosis)
