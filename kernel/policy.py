"""Policy packs: the human-edited TOML schema, decoded and validated with msgspec.

A pack holds one pooling region's rules: its levels, med types, person categories, injury causes,
disease groups, and per scheme a list of dated versions. A version may name another with
``inherits``; its tables are then deep-merged over the parent's (tables merge key by key, arrays
and values replace), so a version states only what changed. A value ``"none"`` removes a setting
(for example ``cap = "none"`` abolishes an inherited cap).

Money is written in yuan as a string (``"53376"``, ``"300.50"``) or an integer number of yuan and
held as int fen; ratios are written ``"85%"`` and held as int basis points; ratio deltas are
``"+5%"``, ``"-10%"`` or ``"deny"``. Floats are refused: a float near money is a bug.

The format is documented, with an annotated example, in docs/policy.md.
"""
from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Literal

import msgspec

from .layout import BAND_MAX, DENY, MAX_ONCE_A_YEAR_GROUPS


class PolicyError(ValueError):
    """A pack that cannot be used: names the file, the key path and what is wrong."""

    def __init__(self, file, path, message):
        self.file, self.path, self.message = str(file), path, message
        super().__init__(f"{file}: {path}: {message}" if path else f"{file}: {message}")


# --- value types -------------------------------------------------------------------------------

class Money(int):
    """Fen, written in yuan: "300", "300.5", "300.50" or an integer."""


class Ratio(int):
    """Basis points, written "85%" or "85.5%"; 0% to 100%."""


class Delta(int):
    """Basis points added to a ratio, written "+5%" / "-10%", or "deny" (the fund pays nothing)."""


_YUAN = re.compile(r"^(\d{1,13})(?:\.(\d{1,2}))?$")
_PCT = re.compile(r"^([+-]?)(\d{1,3})(?:\.(\d{1,2}))?%$")


def fen_of_yuan(text: str) -> int:
    """Fen of an amount written in yuan ("300", "300.5", "300.50"), exactly: at most two decimals."""
    m = _YUAN.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"money must be yuan like \"300\" or \"300.50\", got {text!r}")
    return int(m[1]) * 100 + int((m[2] or "").ljust(2, "0"))


def _bp(sign, whole, frac):
    bp = int(whole) * 100 + int((frac or "").ljust(2, "0"))
    return -bp if sign == "-" else bp


def _dec_hook(tp, obj):
    if tp is Money:
        if isinstance(obj, bool) or isinstance(obj, float):
            raise ValueError(f"money must be yuan as a string like \"300.00\" or an integer, got {obj!r}")
        if isinstance(obj, int):
            if obj < 0:
                raise ValueError(f"money must not be negative, got {obj!r}")
            return Money(obj * 100)
        return Money(fen_of_yuan(obj))
    if tp is Ratio:
        m = _PCT.match(obj) if isinstance(obj, str) else None
        if not m or m[1]:
            raise ValueError(f"a ratio is written like \"85%\", got {obj!r}")
        bp = _bp("", m[2], m[3])
        if bp > 10000:
            raise ValueError(f"a ratio cannot exceed 100%, got {obj!r}")
        return Ratio(bp)
    if tp is Delta:
        if obj == "deny":
            return Delta(DENY)
        m = _PCT.match(obj) if isinstance(obj, str) else None
        if not m or not m[1]:
            raise ValueError(f"a ratio change is written like \"+5%\", \"-10%\" or \"deny\", got {obj!r}")
        return Delta(_bp(m[1], m[2], m[3]))
    raise NotImplementedError(tp)


# --- schema --------------------------------------------------------------------------------------

class _S(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Level(_S, kw_only=True):
    code: str                    # as the visit's medins_lv carries it
    name: str


class MedType(_S, kw_only=True):
    code: str                    # as the visit's med_type carries it (national codes: 11, 14, 21, ...)
    name: str
    pool: Literal["inpatient", "outpatient"] = "inpatient"   # which basic-fund accumulator
    admission: bool = False      # counts as an admission (nth-admission deductible rules)
    kinds: list[str] = []        # institution kinds that settle it (a pharmacy: no admissions); [] any


class DiseaseGroup(_S, kw_only=True):
    code: str
    name: str
    icd10: list[str]             # prefixes of the main diagnosis code ("C34" matches "C34.901")
    secondary: list[str] = []    # if any: prefixes one of the visit's secondary diagnoses must match
    min_age: int | None = None   # inclusive, whole years at the governing date
    max_age: int | None = None   # inclusive


class Band(_S, kw_only=True):
    start: Money                 # lower edge of the band (the band runs to the next band's start)
    ratio: Ratio


class Deductible(_S, kw_only=True):
    kind: Literal["per_admission", "annual"] = "per_admission"
    amount: dict[str, Money] = {}                 # by level code; a level not listed has none
    nth_admission: list[Ratio] = []               # share charged on the 1st, 2nd, 3rd+ admission
    waived_categories: list[str] = []


class MedTypeRule(_S, kw_only=True):
    """How the basic fund settles one med type in one version (steps 4 and 5)."""
    ratio: dict[str, Ratio] = {}                  # by level code
    bands: list[Band] = []                        # rates by amount; replace `ratio`
    band_origin: Literal["visit", "year"] = "visit"
    essential_drugs: Delta | None = None          # uplift on essential drugs (not with bands)
    deductible: Deductible = msgspec.field(default_factory=Deductible)


class CapFormula(_S, kw_only=True):
    multiplier: int              # e.g. 6 x local average wage
    benchmark: Money
    floor: Money | None = None   # never below


class Pool(_S, kw_only=True):
    cap: Money | None = None
    cap_formula: CapFormula | None = None


class Adjustments(_S, kw_only=True):
    categories: dict[str, Delta] = {}             # e.g. retired = "+5%"
    out_of_area_filed: Delta | None = None
    out_of_area_unfiled: Delta | None = None
    referral_required_levels: list[str] = []
    no_referral: Delta | None = None


class Quota(_S, kw_only=True):
    mode: Literal["single_disease", "per_bed_day"]
    amount: dict[str, Money]     # by level code: the quota, or the daily rate
    ratio: Ratio | None = None   # default: the ratio of step 5
    deductible: Money | None = None


class DiseaseRule(_S, kw_only=True):
    groups: list[str]
    floor: Ratio | None = None
    override: Ratio | None = None
    deductible_once_a_year: bool = False
    quota: Quota | None = None
    med_types: list[str] | None = None            # None: every med type the version covers


class LargeAmount(_S, kw_only=True):
    ratio: Ratio
    cap: Money | None = None
    med_types: list[str] | None = None            # None: every med type


class SeriousIllness(_S, kw_only=True):
    form: Literal["bands", "effective_ratio"] = "bands"
    med_types: list[str] | None = None
    trigger: Literal["per_admission", "annual"] = "per_admission"
    threshold: Money = Money(0)
    base: Literal["inscope_selfpay", "all_selfpay"] = "inscope_selfpay"
    bands: list[Band] = []
    cap: Money | None = None
    effective_ratio: Ratio | None = None
    category_ratio: dict[str, Ratio] = {}


class CivilServant(_S, kw_only=True):
    ratio: Ratio
    categories: list[str] = msgspec.field(default_factory=lambda: ["civil_servant"])
    cap: Money | None = None
    med_types: list[str] | None = None


class Assistance(_S, kw_only=True):
    categories: list[str]
    ratio: Ratio
    deductible: Money = Money(0)
    cap: Money | None = None
    med_types: list[str] | None = None


class GuaranteedMinimum(_S, kw_only=True):
    ratio: Ratio
    med_types: list[str] | None = None


class Version(_S, kw_only=True):
    id: str
    inherits: str | None = None
    effective_from: datetime.date
    effective_to: datetime.date | None = None     # inclusive; None: open-ended
    excluded_causes: list[str] = []
    pending_causes: list[str] = msgspec.field(default_factory=lambda: ["pending"])
    med_types: dict[str, MedTypeRule] = {}        # by med type code; a med type not listed is not covered
    pools: dict[str, Pool] = {}                   # "inpatient" / "outpatient"
    adjustments: Adjustments = msgspec.field(default_factory=Adjustments)
    diseases: list[DiseaseRule] = []
    large_amount: LargeAmount | None = None
    serious_illness: SeriousIllness | None = None
    civil_servant: CivilServant | None = None
    assistance: Assistance | None = None
    guaranteed_minimum: GuaranteedMinimum | None = None


class Scheme(_S, kw_only=True):
    code: str                    # as the visit's insutype carries it
    name: str
    personal_account: bool = False
    governing_date: Literal["admission", "discharge", "settlement"] = "discharge"
    versions: list[Version]


STANDARD_CATEGORIES = ["retired", "civil_servant", "low_income", "five_guarantee", "veteran",
                       "severe_disability"]
STANDARD_CAUSES = ["none", "traffic", "fight", "drunkenness", "self_harm", "crime", "work_injury",
                   "maternity", "cosmetic", "pending"]


# An administrative division code (行政区划代码, GB/T 2260): the national platform's *_admdvs.
ADMDVS = re.compile(r"^[0-9]{6}$")


class Pack(_S, kw_only=True):
    name: str
    region: str                  # pooling region code (统筹区): the insured region of a visit without one
    regions: list[str] = []      # every code of the pooling region (its counties / districts); default [region]
    description: str = ""
    unknown_codes: Literal["refuse", "selfpay"] = "refuse"
    institution_kinds: list[str] = []   # kinds of institution (定点医药机构类别) a visit's fixmedins_type names
    categories: list[str] = msgspec.field(default_factory=lambda: list(STANDARD_CATEGORIES))  # at most 8: bit i of a visit's category mask
    injury_causes: list[str] = msgspec.field(default_factory=lambda: list(STANDARD_CAUSES))  # at most 63
    levels: list[Level]
    med_types: list[MedType]
    disease_groups: list[DiseaseGroup] = []
    schemes: list[Scheme]

    def __post_init__(self):
        if not self.regions:
            self.regions = [self.region]


def once_a_year_bits(pack: Pack) -> dict[str, int]:
    """Group code -> its bit in the once-a-year accumulator (A_DED_ONCE), for every group some
    disease rule marks deductible_once_a_year: bit k is the k-th such group in disease_groups order
    (so a group added later goes after them, or last years' ledger bits change meaning)."""
    marked = {g for s in pack.schemes for v in s.versions for rule in v.diseases
              if rule.deductible_once_a_year for g in rule.groups}
    ordered = [g.code for g in pack.disease_groups if g.code in marked]
    return {code: 1 << k for k, code in enumerate(ordered)}


# --- loading -------------------------------------------------------------------------------------

def _strip_none(obj):
    """Drop every key whose value is "none": the setting is absent (an inherited one is removed)."""
    if isinstance(obj, dict):
        return {k: _strip_none(v) for k, v in obj.items() if v != "none"}
    if isinstance(obj, list):
        return [_strip_none(v) for v in obj]
    return obj


def _merge(parent, child):
    """Deep merge of raw TOML tables: tables merge key by key, everything else replaces."""
    out = dict(parent)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_path(msg):
    """msgspec says "... - at `$.schemes[0].versions[1].cap`"; split into (path, message)."""
    if " - at `" in msg:
        text, _, path = msg.rpartition(" - at `")
        return path.rstrip("`"), text
    return "$", msg


_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _name_dict_keys(raw, where):
    """msgspec writes a dict key as `[...]`; find the key whose value fails and name it.

    Each dict on the path is cut down to one key at a time and the pack converted again: the key
    that still fails is the one. Returns the path with every `[...]` replaced by `.key`.
    """
    original = where
    while "[...]" in where:
        head, _, tail = where.partition("[...]")
        steps = [(m[1], m[2]) for m in _SEGMENT.finditer(head)]
        try:
            node = raw
            for name, index in steps:
                node = node[name] if name else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return where
        if not isinstance(node, dict):
            return where
        culprit = None
        for key in node:
            trial = _replace_at(raw, steps, {key: node[key]})
            try:
                msgspec.convert(trial, Pack, dec_hook=_dec_hook)
            except msgspec.ValidationError as e:
                if _format_path(str(e))[0] == original:
                    culprit = key
                    break
        if culprit is None:
            return where
        where = f"{head}.{culprit}{tail}"
        raw = _replace_at(raw, steps, {culprit: node[culprit]})
    return where


def _replace_at(obj, steps, value):
    """A copy of obj with the node at steps replaced by value (only the path is copied)."""
    if not steps:
        return value
    (name, index), rest = steps[0], steps[1:]
    if name:
        return {**obj, name: _replace_at(obj[name], rest, value)}
    i = int(index)
    return [*obj[:i], _replace_at(obj[i], rest, value), *obj[i + 1:]]


def load_pack(path) -> Pack:
    """Decode, merge inherited versions, validate: a Pack or a PolicyError naming file and key path.
    A draft (a TOML with ``base``) is refused with a message saying how to read it."""
    path = Path(path)
    try:
        raw = msgspec.toml.decode(path.read_bytes())
    except msgspec.DecodeError as e:
        raise PolicyError(path, "", f"not valid TOML: {e}") from None
    if is_draft(raw):
        raise PolicyError(path, "$.base", f"this is a draft over {raw['base']!r}, not a pack: read it over its "
                          "base with kernel.resettle.load_policy (`medsettle policy check` and "
                          "`medsettle resettle --new-pack` do)")
    return pack_from_raw(raw, path)


def is_draft(raw) -> bool:
    """A decoded TOML document that is a draft over a base pack (基金测算), not a pack itself."""
    return isinstance(raw, dict) and "base" in raw


def pack_from_raw(raw: dict, source="<pack>") -> Pack:
    """The Pack from a decoded TOML document (a dict), with version inheritance resolved."""
    if not isinstance(raw, dict):
        raise PolicyError(source, "$", "a pack is a TOML document")
    raw = dict(raw)
    schemes = raw.get("schemes", [])
    if isinstance(schemes, list):
        resolved = []
        for si, scheme in enumerate(schemes):
            if not isinstance(scheme, dict) or not isinstance(scheme.get("versions"), list):
                resolved.append(scheme)
                continue
            by_id, versions = {}, []
            for vi, version in enumerate(scheme["versions"]):
                if isinstance(version, dict) and version.get("inherits") is not None:
                    parent = by_id.get(version["inherits"])
                    if parent is None:
                        raise PolicyError(source, f"$.schemes[{si}].versions[{vi}].inherits",
                                          f"no earlier version {version['inherits']!r} in this scheme")
                    version = _merge({k: v for k, v in parent.items()
                                      if k not in ("id", "effective_from", "effective_to")}, version)
                if isinstance(version, dict) and "id" in version:
                    by_id[version["id"]] = version
                versions.append(version)
            resolved.append({**scheme, "versions": versions})
        raw["schemes"] = resolved
    raw = _strip_none(raw)
    try:
        pack = msgspec.convert(raw, Pack, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        where, what = _format_path(str(e))
        raise PolicyError(source, _name_dict_keys(raw, where), what) from None
    validate(pack, source)
    return pack


def validate(pack: Pack, source="<pack>") -> None:
    """Cross-references and ranges msgspec cannot check; raises PolicyError on the first problem.

    Key paths name dict entries by key (``$.schemes[0].versions[1].med_types.21.ratio.9``).
    """
    def fail(path, message):
        raise PolicyError(source, path, message)

    def unique(values, path, what):
        seen = set()
        for i, v in enumerate(values):
            if not v:
                fail(f"{path}[{i}]", f"{what} must not be empty")
            if v in seen:
                fail(f"{path}[{i}]", f"duplicate {what} {v!r}")
            seen.add(v)

    def known(value, allowed, path, what):
        if value not in allowed:
            fail(path, f"unknown {what} {value!r} (known: {', '.join(map(repr, allowed))})")

    def known_all(values, allowed, path, what):
        for i, v in enumerate(values or []):
            known(v, allowed, f"{path}[{i}]", what)

    def known_keys(mapping, allowed, path, what):
        for k in mapping:
            known(k, allowed, f"{path}.{k}", what)

    def check_bands(bands, path):
        if len(bands) > BAND_MAX:
            fail(path, f"at most {BAND_MAX} bands, got {len(bands)}")
        if bands and bands[0].start != 0:
            fail(f"{path}[0].start", f"the first band must start at 0, got {_yuan(bands[0].start)}")
        for i in range(1, len(bands)):
            if bands[i].start <= bands[i - 1].start:
                fail(f"{path}[{i}].start",
                     f"bands must ascend strictly: {_yuan(bands[i].start)} after {_yuan(bands[i - 1].start)}")

    def check_cap(obj, path):
        cap, formula = getattr(obj, "cap", None), getattr(obj, "cap_formula", None)
        if cap is not None and formula is not None:
            fail(path, "give `cap` or `cap_formula`, not both")
        if formula is not None and formula.multiplier < 1:
            fail(f"{path}.cap_formula.multiplier", f"must be at least 1, got {formula.multiplier}")

    levels = [lv.code for lv in pack.levels]
    med_types = [mt.code for mt in pack.med_types]
    groups = [g.code for g in pack.disease_groups]
    cats, causes = pack.categories, pack.injury_causes
    if not levels:
        fail("$.levels", "a pack needs at least one level")
    if not med_types:
        fail("$.med_types", "a pack needs at least one med type")
    if not pack.schemes:
        fail("$.schemes", "a pack needs at least one scheme")
    for path, code in [("$.region", pack.region)] + [(f"$.regions[{i}]", c) for i, c in enumerate(pack.regions)]:
        if not ADMDVS.match(code):
            fail(path, f"a region is a 6-digit administrative division code like \"530300\", got {code!r}")
    unique(pack.regions, "$.regions", "region")
    if pack.region not in pack.regions:
        fail("$.regions", f"must include the pack's region {pack.region!r}, got {pack.regions!r}")
    unique(levels, "$.levels", "level code")
    unique(med_types, "$.med_types", "med type code")
    unique(pack.institution_kinds, "$.institution_kinds", "institution kind")
    for i, mt in enumerate(pack.med_types):
        known_all(mt.kinds, pack.institution_kinds, f"$.med_types[{i}].kinds", "institution kind")
    unique(groups, "$.disease_groups", "disease group code")
    unique(cats, "$.categories", "category")
    unique(causes, "$.injury_causes", "injury cause")
    unique([s.code for s in pack.schemes], "$.schemes", "scheme code")
    if len(cats) > 8:
        fail("$.categories", f"at most 8 categories (bits of a visit's mask), got {len(cats)}")
    if len(causes) > 63:
        fail("$.injury_causes", f"at most 63 injury causes, got {len(causes)}")
    if "none" not in causes:
        fail("$.injury_causes", f"must include \"none\" (a visit without a cause), got {causes!r}")
    if len(groups) > 32000:
        fail("$.disease_groups", f"at most 32000 disease groups, got {len(groups)}")
    for gi, g in enumerate(pack.disease_groups):
        path = f"$.disease_groups[{gi}]"
        if not g.icd10:
            fail(f"{path}.icd10", f"group {g.code!r} lists no ICD-10 prefix")
        for field in ("icd10", "secondary"):
            for pi, prefix in enumerate(getattr(g, field)):
                if not prefix or prefix != prefix.strip() or " " in prefix or "," in prefix:
                    fail(f"{path}.{field}[{pi}]", f"an ICD-10 prefix like \"C34\", got {prefix!r}")
        for field in ("min_age", "max_age"):
            age = getattr(g, field)
            if age is not None and not 0 <= age <= 150:
                fail(f"{path}.{field}", f"an age in whole years 0..150, got {age}")
        if g.min_age is not None and g.max_age is not None and g.min_age > g.max_age:
            fail(f"{path}.max_age", f"max_age {g.max_age} is below min_age {g.min_age}")

    once = once_a_year_bits(pack)
    if len(once) > MAX_ONCE_A_YEAR_GROUPS:
        fail("$.disease_groups", f"at most {MAX_ONCE_A_YEAR_GROUPS} groups may have a once-a-year "
             f"deductible (bits of an accumulator), got {len(once)}")

    for si, scheme in enumerate(pack.schemes):
        spath = f"$.schemes[{si}]"
        if not scheme.versions:
            fail(f"{spath}.versions", f"scheme {scheme.code!r} has no version")
        unique([v.id for v in scheme.versions], f"{spath}.versions", "version id")
        ids = [v.id for v in scheme.versions]
        for vi, v in enumerate(scheme.versions):
            vpath = f"{spath}.versions[{vi}]"
            if v.inherits is not None:
                known(v.inherits, ids[:vi], f"{vpath}.inherits", "earlier version")
            if v.effective_to is not None and v.effective_to < v.effective_from:
                fail(f"{vpath}.effective_to",
                     f"effective_to {v.effective_to} is before effective_from {v.effective_from}")
            _validate_version(v, vpath, levels, med_types, groups, cats, causes, scheme, fail,
                              known, known_all, known_keys, check_bands, check_cap)
        spans = sorted(enumerate(scheme.versions), key=lambda iv: iv[1].effective_from)
        for (_, prev), (vi, v) in zip(spans, spans[1:]):
            if prev.effective_to is None or prev.effective_to >= v.effective_from:
                fail(f"{spath}.versions[{vi}].effective_from",
                     f"version {v.id!r} from {v.effective_from} overlaps version {prev.id!r} "
                     f"({prev.effective_from} to {prev.effective_to or 'open-ended'})")


def _yuan(fen):
    return f"{fen // 100}.{fen % 100:02d} yuan"


def _validate_version(v, vpath, levels, med_types, groups, cats, causes, scheme, fail,
                      known, known_all, known_keys, check_bands, check_cap):
    known_all(v.excluded_causes, causes, f"{vpath}.excluded_causes", "injury cause")
    known_all(v.pending_causes, causes, f"{vpath}.pending_causes", "injury cause")
    for name in ("excluded_causes", "pending_causes"):
        if "none" in getattr(v, name):
            fail(f"{vpath}.{name}", f"\"none\" (no injury) cannot be in {name}")
    both = sorted(set(v.excluded_causes) & set(v.pending_causes))
    if both:
        fail(f"{vpath}.pending_causes", f"cause {both[0]!r} is both excluded and pending")

    known_keys(v.med_types, med_types, f"{vpath}.med_types", "med type")
    for code, rule in v.med_types.items():
        rpath = f"{vpath}.med_types.{code}"
        known_keys(rule.ratio, levels, f"{rpath}.ratio", "level")
        if rule.bands:
            check_bands(rule.bands, f"{rpath}.bands")
            if rule.ratio:
                fail(f"{rpath}.ratio", "bands replace the ratio by level: give `bands` or `ratio`, "
                     f"not both (got ratio {dict(rule.ratio)!r})")
            if rule.essential_drugs is not None:
                fail(f"{rpath}.essential_drugs", "the essential-drug uplift does not apply with bands")
        else:
            for level in levels:
                if level not in rule.ratio:
                    fail(f"{rpath}.ratio", f"no ratio for level {level!r} of covered med type {code!r} "
                         f"(write \"0%\" to pay nothing there); got {dict(rule.ratio)!r}")
        if rule.essential_drugs == DENY:
            fail(f"{rpath}.essential_drugs", "an uplift in points like \"+15%\", not \"deny\"")
        ded = rule.deductible
        known_keys(ded.amount, levels, f"{rpath}.deductible.amount", "level")
        if len(ded.nth_admission) > 3:
            fail(f"{rpath}.deductible.nth_admission",
                 f"at most 3 shares (1st, 2nd, 3rd and later admission), got {len(ded.nth_admission)}")
        known_all(ded.waived_categories, cats, f"{rpath}.deductible.waived_categories", "category")

    for name, pool in v.pools.items():
        known(name, ["inpatient", "outpatient"], f"{vpath}.pools.{name}", "pool")
        check_cap(pool, f"{vpath}.pools.{name}")

    adj = v.adjustments
    known_keys(adj.categories, cats, f"{vpath}.adjustments.categories", "category")
    for cat, delta in adj.categories.items():
        if delta == DENY:
            fail(f"{vpath}.adjustments.categories.{cat}",
                 "a category changes the ratio in points like \"+5%\"; \"deny\" is not allowed here")
    known_all(adj.referral_required_levels, levels, f"{vpath}.adjustments.referral_required_levels", "level")

    seen = {}   # (group, field) -> (disease rule index, med types) for conflict checks
    for di, rule in enumerate(v.diseases):
        dpath = f"{vpath}.diseases[{di}]"
        if not rule.groups:
            fail(f"{dpath}.groups", "a disease rule lists at least one group")
        known_all(rule.groups, groups, f"{dpath}.groups", "disease group")
        known_all(rule.med_types, med_types, f"{dpath}.med_types", "med type")
        if rule.quota is not None:
            known_keys(rule.quota.amount, levels, f"{dpath}.quota.amount", "level")
        mts = set(med_types if rule.med_types is None else rule.med_types)
        for group in rule.groups:
            for field in ("floor", "override", "quota"):
                if getattr(rule, field) is None:
                    continue
                for dj, other in seen.get((group, field), []):
                    if mts & other:
                        fail(f"{dpath}.{field}", f"group {group!r} already has a {field} from "
                             f"{vpath}.diseases[{dj}] for med type {sorted(mts & other)[0]!r}")
                seen.setdefault((group, field), []).append((di, mts))

    for name in ("large_amount", "serious_illness", "civil_servant", "assistance", "guaranteed_minimum"):
        layer = getattr(v, name)
        if layer is not None:
            known_all(layer.med_types, med_types, f"{vpath}.{name}.med_types", "med type")
    mi = v.serious_illness
    if mi is not None:
        mpath = f"{vpath}.serious_illness"
        if mi.form == "bands":
            if not mi.bands:
                fail(f"{mpath}.bands", "form \"bands\" needs bands")
            check_bands(mi.bands, f"{mpath}.bands")
            if mi.effective_ratio is not None or mi.category_ratio:
                fail(mpath, "effective_ratio / category_ratio belong to form \"effective_ratio\"")
        else:
            if mi.effective_ratio is None:
                fail(f"{mpath}.effective_ratio", "form \"effective_ratio\" needs effective_ratio")
            if mi.bands:
                fail(f"{mpath}.bands", "form \"effective_ratio\" takes no bands")
            if mi.trigger != "per_admission":
                fail(f"{mpath}.trigger", f"form \"effective_ratio\" is triggered per visit, got {mi.trigger!r}")
            known_keys(mi.category_ratio, cats, f"{mpath}.category_ratio", "category")
            if len(set(mi.category_ratio.values())) > 1:
                fail(f"{mpath}.category_ratio", "one ratio for every listed category (the kernel has one), "
                     f"got {dict(mi.category_ratio)!r}")
    for name in ("civil_servant", "assistance"):
        layer = getattr(v, name)
        if layer is not None:
            known_all(layer.categories, cats, f"{vpath}.{name}.categories", "category")
            if not layer.categories:
                fail(f"{vpath}.{name}.categories", "list at least one category")
