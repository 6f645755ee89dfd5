"""Policy packs: the shipped packs load, and every kind of bad pack is refused with a PolicyError
naming the file, the key path and what is wrong (SETTLEMENT.md section 9, docs/policy.md)."""
from pathlib import Path

import pytest

from kernel.layout import DENY
from kernel.policy import PolicyError, load_pack

PACKS = Path(__file__).resolve().parents[1] / "kernel" / "packs"

# A small valid pack; each bad case below replaces one piece of text.
BASE = """\
name = "t"
region = "000000"
levels = [{ code = "1", name = "township" }, { code = "2", name = "county" }]
med_types = [
    { code = "11", name = "outpatient", pool = "outpatient" },
    { code = "21", name = "inpatient", admission = true },
]
disease_groups = [{ code = "lung", name = "lung cancer", icd10 = ["C34"] }]

[[schemes]]
code = "rural"
name = "rural"

[[schemes.versions]]
id = "v1"
effective_from = 2013-01-01
effective_to = 2013-07-31
excluded_causes = ["traffic"]

[schemes.versions.med_types.21]
ratio = { 1 = "95%", 2 = "85%" }
deductible = { amount = { 1 = "100", 2 = "300" }, waived_categories = ["low_income"] }

[schemes.versions.med_types.11]
bands = [{ start = 0, ratio = "0%" }, { start = 50, ratio = "50%" }]

[schemes.versions.pools.inpatient]
cap = "50000"

[[schemes.versions.diseases]]
groups = ["lung"]
floor = "70%"
quota = { mode = "single_disease", amount = { 2 = "6000" } }

[schemes.versions.serious_illness]
bands = [{ start = 0, ratio = "50%" }, { start = 30000, ratio = "60%" }]
cap = "250000"

[[schemes.versions]]
id = "v2"
inherits = "v1"
effective_from = 2013-08-01

[schemes.versions.med_types.21]
deductible = { amount = { 1 = "100", 2 = "300" } }
"""


def write(tmp_path, text, name="pack.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path, old, new):
    assert old in BASE, old
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    return path, info.value


@pytest.mark.parametrize("name", ["sample_rural.toml", "sample_city.toml"])
def test_shipped_packs_load(name):
    pack = load_pack(PACKS / name)
    assert pack.schemes and all(s.versions for s in pack.schemes)


def test_base_pack_loads_and_inherits(tmp_path):
    pack = load_pack(write(tmp_path, BASE))
    v1, v2 = pack.schemes[0].versions
    assert v2.med_types["21"].ratio == {"1": 9500, "2": 8500}          # inherited
    assert v2.med_types["21"].deductible.waived_categories == ["low_income"]   # tables merge key by key
    assert v2.serious_illness.cap == 25000000
    assert v2.effective_to is None


def test_rural_pack_figures():
    pack = load_pack(PACKS / "sample_rural.toml")
    (rural,) = pack.schemes
    h1, aug = rural.versions
    assert (h1.id, aug.id) == ("2013-h1", "2013-aug")
    assert str(h1.effective_to) == "2013-07-31" and str(aug.effective_from) == "2013-08-01"
    assert h1.serious_illness.cap == 250000_00 and aug.serious_illness.cap is None
    assert h1.med_types["21"].ratio == {"1": 9500, "2": 8500, "3": 6500}
    assert [b.start for b in aug.serious_illness.bands] == [0, 30000_00, 100000_00]
    assert len(pack.disease_groups) == 21                               # 20 major diseases + appendicitis


# SOURCE-FIGURES.md "20 major diseases", transcribed: (group, its ICD-10 prefixes, child only, ratio
# in bp). "not below 70%; uremia and severe mental illness 90%".
MAJOR_DISEASES = [
    ("uremia", ["N18.5", "N18.6", "N19"], False, 9000),
    ("child_leukaemia", ["C91", "C92", "C93", "C94", "C95"], True, 7000),
    ("child_chd", ["Q20", "Q21", "Q22", "Q23", "Q24", "Q25", "Q26"], True, 7000),
    ("breast_cancer", ["C50"], False, 7000),
    ("cervical_cancer", ["C53"], False, 7000),
    ("severe_mental", ["F20", "F25", "F31"], False, 9000),
    ("mdr_tb", ["A15", "A16", "A17", "A18", "A19"], False, 7000),     # with a resistance marker
    ("aids_oi", ["B20", "B21", "B22", "B23", "B24"], False, 7000),
    ("lung_cancer", ["C34"], False, 7000),
    ("oesophageal_cancer", ["C15"], False, 7000),
    ("gastric_cancer", ["C16"], False, 7000),
    ("colon_cancer", ["C18"], False, 7000),
    ("rectal_cancer", ["C20"], False, 7000),
    ("cml", ["C92.1"], False, 7000),
    ("ami", ["I21"], False, 7000),
    ("cerebral_infarction", ["I63"], False, 7000),
    ("haemophilia", ["D66", "D67", "D68"], False, 7000),
    ("t1_diabetes", ["E10"], False, 7000),
    ("hyperthyroidism", ["E05"], False, 7000),
    ("cleft_lip_palate", ["Q35", "Q36", "Q37"], False, 7000),
]


def test_twenty_major_diseases_map_to_their_group_and_ratio():
    """Every prefix of SOURCE-FIGURES.md reaches its group and its ratio through the kernel: at a
    city hospital (65%) a major disease is raised to its floor, 70%, or 90% for uremia and severe
    mental illness. Ordinary tuberculosis, a child's group at 30 and an unlisted code stay at 65%."""
    import datetime as dt

    import pyarrow as pa

    from kernel.api import Settler
    from kernel.reference import age_years, disease_group
    assert len(MAJOR_DISEASES) == 20
    settler = Settler.from_files(PACKS / "sample_rural.toml")
    pack = settler.pack
    end = dt.date(2013, 6, 15)
    cases = []       # (diagnosis, birth date, group expected or None, ratio expected)
    for group, prefixes, child, ratio in MAJOR_DISEASES:
        born = dt.date(2003, 1, 1) if child else dt.date(1960, 1, 1)
        for prefix in prefixes:
            code = prefix + ("01" if "." in prefix else ".901")
            if group == "mdr_tb":
                cases.append((code, born, None, 6500))                 # no resistance marker
                code += ",U84.3"
            cases.append((code, born, group, ratio))
    cases += [("C91.001", dt.date(1983, 1, 1), None, 6500),            # leukaemia at 30: no child group
              ("C92.101", dt.date(1983, 1, 1), "cml", 7000),
              ("A16.201,Z16.341", dt.date(1960, 1, 1), "mdr_tb", 7000),
              ("J18.901", dt.date(1960, 1, 1), None, 6500)]
    visits = [{"mdtrt_id": f"V{k}", "psn_no": f"P{k}", "insutype": "rural", "medins_lv": "3", "med_type": "21",
               "enddate": end, "setl_time": dt.datetime(2013, 6, 15, 12), "brdy": born, "dise_codg": code,
               "ipt_days": 10, "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0,
               "inscp_scp_amt": 1_000_000} for k, (code, born, _, _) in enumerate(cases)]
    rows = settler.settle_table(pa.Table.from_pylist(visits)).table.to_pylist()
    groups = settler.compiled.resolve_groups(pa.array([c[0] for c in cases]),
                                             [age_years(c[1], end) for c in cases])
    for (code, born, group, ratio), row, g in zip(cases, rows, groups.tolist()):
        assert settler.compiled.group_codes[g] == (group or ""), code
        ref = disease_group(pack, code, age_years(born, end))
        assert (ref.code if ref else None) == group, code
        assert row["pool_prop_selfpay"] == ratio, code


def test_city_pack_figures():
    pack = load_pack(PACKS / "sample_city.toml")
    employee, resident = pack.schemes
    assert employee.personal_account and not resident.personal_account
    assert employee.versions[-1].adjustments.categories == {"retired": 500}
    assert resident.versions[0].adjustments.out_of_area_unfiled == DENY
    assert resident.versions[1].pools["inpatient"].cap is None          # cap = "none" removed it
    assert resident.versions[1].pools["inpatient"].cap_formula.multiplier == 6


V0 = "$.schemes[0].versions[0]"
V1 = "$.schemes[0].versions[1]"

BAD = [
    # (case, old text, new text, key path, words the message contains)
    ("float money", 'cap = "50000"', "cap = 50000.5",
     f"{V0}.pools.inpatient.cap", ["money", "50000.5"]),
    ("negative money", 'cap = "50000"', "cap = -1", f"{V0}.pools.inpatient.cap", ["negative", "-1"]),
    ("ratio over 100%", 'ratio = { 1 = "95%", 2 = "85%" }', 'ratio = { 1 = "105%", 2 = "85%" }',
     f"{V0}.med_types.21.ratio.1", ["100%", "105%"]),
    ("ratio as a number", 'ratio = { 1 = "95%", 2 = "85%" }', 'ratio = { 1 = 0.95, 2 = "85%" }',
     f"{V0}.med_types.21.ratio.1", ["85%", "0.95"]),
    ("unknown level in a ratio dict", 'ratio = { 1 = "95%", 2 = "85%" }',
     'ratio = { 1 = "95%", 2 = "85%", 9 = "50%" }', f"{V0}.med_types.21.ratio.9", ["unknown level", "'9'"]),
    ("missing level in a ratio dict", 'ratio = { 1 = "95%", 2 = "85%" }', 'ratio = { 1 = "95%" }',
     f"{V0}.med_types.21.ratio", ["no ratio for level", "'2'"]),
    ("unknown level in an inherited deductible", 'deductible = { amount = { 1 = "100", 2 = "300" } }\n',
     'deductible = { amount = { 1 = "100", 9 = "300" } }\n',
     f"{V1}.med_types.21.deductible.amount.9", ["unknown level", "'9'"]),
    ("overlapping versions", "effective_from = 2013-08-01", "effective_from = 2013-07-01",
     f"{V1}.effective_from", ["overlaps", "'v2'", "'v1'", "2013-07-01"]),
    ("open-ended version overlaps", "effective_to = 2013-07-31\n", "",
     f"{V1}.effective_from", ["overlaps", "open-ended"]),
    ("effective_to before effective_from", "effective_to = 2013-07-31", "effective_to = 2012-07-31",
     f"{V0}.effective_to", ["before", "2012-07-31"]),
    ("inherits unknown", 'inherits = "v1"', 'inherits = "v0"', f"{V1}.inherits", ["'v0'"]),
    ("descending bands", '{ start = 30000, ratio = "60%" }',
     '{ start = 30000, ratio = "60%" }, { start = 20000, ratio = "70%" }',
     f"{V0}.serious_illness.bands[2].start", ["ascend", "20000.00 yuan after 30000.00 yuan"]),
    ("bands not from 0", 'bands = [{ start = 0, ratio = "0%" }', 'bands = [{ start = 10, ratio = "0%" }',
     f"{V0}.med_types.11.bands[0].start", ["start at 0", "10.00 yuan"]),
    ("too many bands", 'bands = [{ start = 0, ratio = "0%" }, { start = 50, ratio = "50%" }]',
     "bands = [" + ", ".join(f'{{ start = {k}, ratio = "1%" }}' for k in range(9)) + "]",
     f"{V0}.med_types.11.bands", ["at most 8", "9"]),
    ("unknown category", 'waived_categories = ["low_income"]', 'waived_categories = ["rich"]',
     f"{V0}.med_types.21.deductible.waived_categories[0]", ["unknown category", "'rich'"]),
    ("unknown field", 'excluded_causes = ["traffic"]', 'excluded_causes = ["traffic"]\nbogus = 1',
     V0, ["unknown field", "bogus"]),
    ("unknown cause", 'excluded_causes = ["traffic"]', 'excluded_causes = ["meteor"]',
     f"{V0}.excluded_causes[0]", ["unknown injury cause", "'meteor'"]),
    ("unknown med type", "[schemes.versions.med_types.11]", "[schemes.versions.med_types.99]",
     f"{V0}.med_types.99", ["unknown med type", "'99'"]),
    ("unknown disease group", 'groups = ["lung"]', 'groups = ["liver"]',
     f"{V0}.diseases[0].groups[0]", ["unknown disease group", "'liver'"]),
    ("quota for an unknown level", 'amount = { 2 = "6000" }', 'amount = { 7 = "6000" }',
     f"{V0}.diseases[0].quota.amount.7", ["unknown level", "'7'"]),
    ("unknown pool", "[schemes.versions.pools.inpatient]", "[schemes.versions.pools.dental]",
     f"{V0}.pools.dental", ["unknown pool", "'dental'"]),
    ("cap and cap_formula", 'cap = "50000"', 'cap = "50000"\ncap_formula = { multiplier = 6, benchmark = "8896" }',
     f"{V0}.pools.inpatient", ["not both"]),
    ("essential drugs with bands", "[schemes.versions.med_types.11]",
     '[schemes.versions.med_types.11]\nessential_drugs = "+8%"', f"{V0}.med_types.11.essential_drugs", ["bands"]),
    ("bands form without bands", 'bands = [{ start = 0, ratio = "50%" }, { start = 30000, ratio = "60%" }]',
     "", f"{V0}.serious_illness.bands", ["needs bands"]),
    ("effective-ratio form without ratio", "[schemes.versions.serious_illness]\nbands",
     '[schemes.versions.serious_illness]\nform = "effective_ratio"\nbands',
     f"{V0}.serious_illness.effective_ratio", ["needs effective_ratio"]),
    ("duplicate level code", '{ code = "2", name = "county" }', '{ code = "1", name = "county" }',
     "$.levels[1]", ["duplicate level code", "'1'"]),
    ("too many categories", 'region = "000000"',
     'region = "000000"\ncategories = ["a", "b", "c", "d", "e", "f", "g", "h", "low_income"]',
     "$.categories", ["at most 8", "9"]),
    ("category delta deny", "[schemes.versions.pools.inpatient]",
     '[schemes.versions.adjustments]\ncategories = { low_income = "deny" }\n[schemes.versions.pools.inpatient]',
     f"{V0}.adjustments.categories.low_income", ["deny"]),
    ("child older than adult", 'icd10 = ["C34"] }', 'icd10 = ["C34"], min_age = 18, max_age = 17 }',
     "$.disease_groups[0].max_age", ["below min_age", "17"]),
    ("region not a region code", 'region = "000000"', 'region = "Z00"', "$.region", ["6-digit", "'Z00'"]),
    ("regions without the region", 'region = "000000"', 'region = "000000"\nregions = ["000001"]',
     "$.regions", ["must include", "'000000'"]),
    ("63 once-a-year groups", 'disease_groups = [{ code = "lung", name = "lung cancer", icd10 = ["C34"] }]',
     "disease_groups = [" + ", ".join(f'{{ code = "g{k}", name = "g", icd10 = ["Z{k:02d}"] }}' for k in range(63))
     + ', { code = "lung", name = "lung cancer", icd10 = ["C34"] }]\n'
     + "[[schemes]]\ncode = \"other\"\nname = \"other\"\n[[schemes.versions]]\nid = \"o\"\n"
     + "effective_from = 2013-01-01\n[[schemes.versions.diseases]]\ndeductible_once_a_year = true\ngroups = ["
     + ", ".join(f'"g{k}"' for k in range(63)) + "]",
     "$.disease_groups", ["at most 62", "once-a-year", "63"]),
    ("two floors for one group", "[schemes.versions.serious_illness]",
     '[[schemes.versions.diseases]]\ngroups = ["lung"]\nfloor = "90%"\n\n[schemes.versions.serious_illness]',
     f"{V0}.diseases[1].floor", ["'lung'", "already has a floor"]),
]


@pytest.mark.parametrize("case, old, new, where, words", BAD, ids=[b[0] for b in BAD])
def test_bad_pack_is_refused(tmp_path, case, old, new, where, words):
    path, err = refused(tmp_path, old, new)
    assert err.file == str(path)
    assert err.path == where, str(err)
    text = str(err)
    assert text.startswith(f"{path}: {where}: ")
    for word in words:
        assert word in err.message, (word, err.message)


def test_not_toml(tmp_path):
    path = write(tmp_path, "name = ")
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)
