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

from .layout import DENY


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
        m = _YUAN.match(obj) if isinstance(obj, str) else None
        if not m:
            raise ValueError(f"money must be yuan like \"300\" or \"300.50\", got {obj!r}")
        return Money(int(m[1]) * 100 + int((m[2] or "").ljust(2, "0")))
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


class DiseaseGroup(_S, kw_only=True):
    code: str
    name: str
    icd10: list[str]             # prefixes of the main diagnosis code ("C34" matches "C34.901")
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


class Pack(_S, kw_only=True):
    name: str
    region: str                  # pooling region code (统筹区)
    description: str = ""
    unknown_codes: Literal["refuse", "selfpay"] = "refuse"
    categories: list[str] = msgspec.field(default_factory=lambda: list(STANDARD_CATEGORIES))  # at most 8: bit i of a visit's category mask
    injury_causes: list[str] = msgspec.field(default_factory=lambda: list(STANDARD_CAUSES))  # at most 63
    levels: list[Level]
    med_types: list[MedType]
    disease_groups: list[DiseaseGroup] = []
    schemes: list[Scheme]


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


def load_pack(path) -> Pack:
    """Decode, merge inherited versions, validate: a Pack or a PolicyError naming file and key path."""
    path = Path(path)
    try:
        raw = msgspec.toml.decode(path.read_bytes())
    except msgspec.DecodeError as e:
        raise PolicyError(path, "", f"not valid TOML: {e}") from None
    return pack_from_raw(raw, path)


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
    try:
        pack = msgspec.convert(_strip_none(raw), Pack, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        where, what = _format_path(str(e))
        raise PolicyError(source, where, what) from None
    validate(pack, source)
    return pack


def validate(pack: Pack, source="<pack>") -> None:
    """Cross-references and ranges msgspec cannot check; raises PolicyError on the first problem."""
    # Filled in by the policy compiler work: names exist, dates do not overlap, bands ascend, ...
    return None
