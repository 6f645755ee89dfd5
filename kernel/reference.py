"""The reference settlement: the chain of docs/design.md in plain Python, over the Pack Structs.

This is the oracle the Cython kernel is tested against, visit by visit, to the fen. It reads the
policy Structs of ``kernel.policy`` directly (never the compiled tables), uses ints only (fen and
basis points), and writes one trace line per step in words a bureau auditor reads.

One function per layer; the order of the chain lives in ``_chain`` only.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import NamedTuple

from .errors import InputError
from .layout import ACC_COLS, DENY, FLAGS, OUT_COLS
from .policy import Band, DiseaseGroup, Pack, Scheme, Version, once_a_year_bits

__all__ = ["CatalogueEntry", "Accumulators", "itemize", "select_version", "governing_date",
           "age_years", "disease_group", "settle_visit", "settle_many", "settle_batch", "BatchResult",
           "explain"]

# An amount times a ratio in bp must stay inside int64 in the compiled kernel (section 9: overflow).
MAX_MONEY = (2**63 - 1) // 10000 // 2
FLAG_BIT = {name: 1 << i for i, name in enumerate(FLAGS)}
ITEM_NAMES = ["medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
              "inscp_scp_amt", "inscp_essential_amt"]


class CatalogueEntry(NamedTuple):
    """One catalogue code: class A 甲 / B 乙 / C 丙, class-B pre-pay share 先行自付 (bp), ceiling price
    限价 (fen per unit, 0 none), essential drug 基本药物."""
    cls: str
    prepay_bp: int
    ceiling: int
    essential: bool


@dataclasses.dataclass
class Accumulators:
    """Year-to-date totals of one (person, scheme, calendar year of the governing date) (section 5)."""
    ded_paid_inp: int = 0    # deductible paid, inpatient pool
    ded_paid_out: int = 0    # deductible paid, outpatient pool
    admissions: int = 0      # admissions counted
    ded_once: int = 0        # bitmask of once-a-year-deductible groups admitted (policy.once_a_year_bits)
    hifp_inp: int = 0        # basic fund paid, inpatient pool
    hifp_out: int = 0        # basic fund paid, outpatient pool (门诊统筹)
    elig_inp: int = 0        # eligible amount (in scope after deductible), inpatient pool
    elig_out: int = 0        # eligible amount, outpatient pool
    hifob: int = 0           # large-amount subsidy paid
    mi_base: int = 0         # serious-illness base accumulated
    hifmi: int = 0           # serious-illness paid
    cvl: int = 0             # civil-servant subsidy paid
    maf: int = 0             # medical assistance paid

    def as_layout_dict(self) -> dict[str, int]:
        """ACC_COLS name -> value (A_DED_PAID, ...), in the order of kernel.layout."""
        return {name: getattr(self, name[2:].lower()) for name in ACC_COLS}

    def copy(self) -> "Accumulators":
        return dataclasses.replace(self)


# --- formatting for the trace ----------------------------------------------------------------------

def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


def _pct(bp: int) -> str:
    whole, frac = divmod(abs(bp), 100)
    sign = "-" if bp < 0 else ""
    return f"{sign}{whole}%" if frac == 0 else f"{sign}{whole}.{frac:02d}".rstrip("0") + "%"


def _delta_text(bp: int) -> str:
    return "deny" if bp == DENY else ("+" if bp >= 0 else "") + _pct(bp)


def _cap_text(cap: int | None) -> str:
    return "none" if cap is None else _yuan(cap)


def _span(lo: int, hi: int | None) -> str:
    return f"[{_yuan(lo)}, {_yuan(hi)})" if hi is not None else f"[{_yuan(lo)} and above)"


def _rh(x: int) -> int:
    """Round an amount in fen*bp half-up to fen (section 2); x >= 0."""
    return (x + 5000) // 10000


# --- input checks ----------------------------------------------------------------------------------

def _money(value, field, *, line=None, mdtrt_id=None, rule="money must be a whole number of fen >= 0"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, "must be an integer (fen, quantity or days)", value, line=line,
                         mdtrt_id=mdtrt_id)
    if value < 0:
        raise InputError(field, rule, value, line=line, mdtrt_id=mdtrt_id)
    if value > MAX_MONEY:
        raise InputError(field, f"overflow: at most {MAX_MONEY}", value, line=line, mdtrt_id=mdtrt_id)
    return value


# --- step 1: itemize -------------------------------------------------------------------------------

def itemize(pack: Pack, catalogue: dict, lines: list[dict]) -> dict[str, int]:
    """Step 1: split each line into self-paid (class C / unknown), over-ceiling, class-B pre-pay and
    in-scope amounts; sums per visit, plus the in-scope amount of essential drugs."""
    out = dict.fromkeys(ITEM_NAMES, 0)
    seen = set()
    for line in lines:
        line_no = line.get("line_no")
        mdtrt_id = line.get("mdtrt_id")
        if line_no in seen:
            raise InputError("line_no", "duplicate line number in the visit", line_no, line=line_no,
                             mdtrt_id=mdtrt_id)
        seen.add(line_no)
        qty = _money(line.get("cnt"), "cnt", line=line_no, mdtrt_id=mdtrt_id)
        price = _money(line.get("pric"), "pric", line=line_no, mdtrt_id=mdtrt_id)
        amount = _money(line.get("det_item_fee_sumamt"), "det_item_fee_sumamt", line=line_no,
                        mdtrt_id=mdtrt_id)
        if amount != qty * price:
            raise InputError("det_item_fee_sumamt", f"must equal cnt x pric = {qty * price}", amount,
                             line=line_no, mdtrt_id=mdtrt_id)
        code = line.get("hilist_code")
        entry = catalogue.get(code)
        if entry is None and pack.unknown_codes != "selfpay":
            raise InputError("hilist_code", "not in the catalogue (the pack refuses unknown codes)",
                             code, line=line_no, mdtrt_id=mdtrt_id)
        out["medfee_sumamt"] += amount
        if entry is None or entry[0] == "C":
            out["fulamt_ownpay_amt"] += amount
            continue
        cls, prepay_bp, ceiling, essential = entry
        if ceiling > 0 and price > ceiling:
            out["overlmt_selfpay"] += (price - ceiling) * qty
            allowed = ceiling * qty
        else:
            allowed = amount
        if cls == "B":
            pre = _rh(allowed * prepay_bp)
            out["preselfpay_amt"] += pre
            in_scope = allowed - pre
        elif cls == "A":
            in_scope = allowed
        else:
            raise InputError("hilist_code", f"catalogue class must be A, B or C, got {cls!r}", code,
                             line=line_no, mdtrt_id=mdtrt_id)
        out["inscp_scp_amt"] += in_scope
        if essential:
            out["inscp_essential_amt"] += in_scope
    if out["medfee_sumamt"] > MAX_MONEY:
        raise InputError("medfee_sumamt", f"overflow: at most {MAX_MONEY}", out["medfee_sumamt"])
    return out


def _precomputed(visit: dict) -> dict[str, int]:
    """The step-1 amounts carried on the visit (kernel/schema.py PRECOMPUTED_FIELDS)."""
    mdtrt_id = visit.get("mdtrt_id")
    out = {}
    for name in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt"):
        if visit.get(name) is None:
            raise InputError(name, "required when the visit has no line items", None, mdtrt_id=mdtrt_id)
        out[name] = _money(visit[name], name, mdtrt_id=mdtrt_id)
    ess = visit.get("inscp_essential_amt")
    out["inscp_essential_amt"] = 0 if ess is None else _money(ess, "inscp_essential_amt",
                                                               mdtrt_id=mdtrt_id)
    if out["inscp_essential_amt"] > out["inscp_scp_amt"]:
        raise InputError("inscp_essential_amt", "must not exceed inscp_scp_amt",
                         out["inscp_essential_amt"], mdtrt_id=mdtrt_id)
    out["medfee_sumamt"] = (out["fulamt_ownpay_amt"] + out["overlmt_selfpay"] + out["preselfpay_amt"]
                            + out["inscp_scp_amt"])
    return out


# --- versions, disease groups ----------------------------------------------------------------------

def _scheme(pack: Pack, code) -> Scheme:
    for scheme in pack.schemes:
        if scheme.code == code:
            return scheme
    raise InputError("insutype", f"unknown scheme of pack {pack.name}", code)


def governing_date(scheme: Scheme, visit: dict) -> datetime.date:
    """The date that picks the version and the accumulator year (section 6)."""
    enddate = visit.get("enddate")
    if scheme.governing_date == "admission":
        day = visit.get("begndate") or enddate
    elif scheme.governing_date == "settlement":
        setl = visit.get("setl_time")
        day = setl.date() if isinstance(setl, datetime.datetime) else setl
    else:
        day = enddate
    if not isinstance(day, datetime.date):
        field = {"admission": "begndate", "settlement": "setl_time"}.get(scheme.governing_date, "enddate")
        raise InputError(field, "a date is required", day, mdtrt_id=visit.get("mdtrt_id"))
    return day


def select_version(pack: Pack, scheme_code: str, visit: dict) -> tuple[Scheme, Version]:
    """The scheme and its version in force on the governing date; the latest effective_from wins."""
    scheme = _scheme(pack, scheme_code)
    day = governing_date(scheme, visit)
    in_force = [v for v in scheme.versions
                if v.effective_from <= day and (v.effective_to is None or day <= v.effective_to)]
    if not in_force:
        raise InputError("enddate" if scheme.governing_date == "discharge" else
                         {"admission": "begndate", "settlement": "setl_time"}[scheme.governing_date],
                         f"no policy version of {pack.name}/{scheme.code} in force", day.isoformat(),
                         mdtrt_id=visit.get("mdtrt_id"))
    best = in_force[0]
    for v in in_force[1:]:
        if v.effective_from >= best.effective_from:
            best = v
    return scheme, best


def age_years(brdy: datetime.date | None, day: datetime.date) -> int | None:
    """Age in whole years on `day`; None without a birth date."""
    if brdy is None:
        return None
    return day.year - brdy.year - ((day.month, day.day) < (brdy.month, brdy.day))


def disease_group(pack: Pack, dise_codg: str | None, age_years: int | None) -> DiseaseGroup | None:
    """The group with the longest ICD-10 prefix matching the main diagnosis (the first code of
    dise_codg; secondary diagnoses follow after commas) among the groups whose age conditions hold
    (inclusive bounds; no age = conditions fail) and whose required secondary diagnosis, if any,
    is among the visit's; ties go to the group listed first."""
    if not dise_codg:
        return None
    code, *secondary = [c.strip() for c in dise_codg.upper().split(",")]
    best, best_len = None, -1
    for group in pack.disease_groups:
        if group.secondary and not any(s.startswith(p.upper()) for s in secondary for p in group.secondary):
            continue
        if group.min_age is not None or group.max_age is not None:
            if age_years is None:
                continue
            if group.min_age is not None and age_years < group.min_age:
                continue
            if group.max_age is not None and age_years > group.max_age:
                continue
        for prefix in group.icd10:
            p = prefix.strip().upper()
            if code.startswith(p) and len(p) > best_len:
                best, best_len = group, len(p)
    return best


# --- the visit's context ---------------------------------------------------------------------------

@dataclasses.dataclass
class _DiseaseTerms:
    """What the version's disease rules say for one group and med type (fields may come from
    several rules: one may set the floor, another the quota)."""
    floor: int | None = None
    override: int | None = None
    deductible_once_a_year: bool = False
    quota: object = None      # policy.Quota


def _disease_terms(version: Version, group: DiseaseGroup | None, med_type: str) -> _DiseaseTerms | None:
    if group is None:
        return None
    terms, found = _DiseaseTerms(), False
    for rule in version.diseases:
        if group.code not in rule.groups:
            continue
        if getattr(rule, "med_types", None) is not None and med_type not in rule.med_types:
            continue
        found = True
        if rule.floor is not None and terms.floor is None:
            terms.floor = int(rule.floor)
        if rule.override is not None and terms.override is None:
            terms.override = int(rule.override)
        if rule.quota is not None and terms.quota is None:
            terms.quota = rule.quota
        terms.deductible_once_a_year = terms.deductible_once_a_year or rule.deductible_once_a_year
    return terms if found else None


@dataclasses.dataclass
class _Ctx:
    """Everything the layers read about one visit, resolved from the Pack Structs."""
    pack: Pack
    scheme: Scheme
    version: Version
    med_type: object          # policy.MedType
    level: object             # policy.Level
    rule: object              # policy.MedTypeRule, or None when the version does not cover the med type
    group: DiseaseGroup | None
    disease: _DiseaseTerms | None
    cats: list[str]           # the person's categories, in pack order
    cause: str
    out_area: int             # 0 in the insured region, 1 out of area filed, 2 not filed
    referral: bool
    bed_days: int
    acct_used: bool
    label: str                # "pack/scheme/version, med type, level" for the trace
    policy_version: str

    def applies(self, layer) -> bool:
        """A layer is on for this med type: present, and its med_types list is None or names it."""
        return layer is not None and (layer.med_types is None or self.med_type.code in layer.med_types)

    @property
    def pool(self) -> str:
        return self.med_type.pool


def at_first_visit_institution(visit: dict) -> bool:
    """Treated at the person's own first-visit / contracted institution (首诊/签约机构): the visit
    needs no referral there."""
    first = visit.get("psn_fst_medins_code")
    return first is not None and first == visit.get("fixmedins_code")


def _context(pack: Pack, visit: dict) -> tuple[_Ctx, datetime.date]:
    mdtrt_id = visit.get("mdtrt_id")
    scheme, version = select_version(pack, visit.get("insutype"), visit)
    day = governing_date(scheme, visit)
    med_type = next((m for m in pack.med_types if m.code == visit.get("med_type")), None)
    if med_type is None:
        raise InputError("med_type", f"unknown med type of pack {pack.name}", visit.get("med_type"),
                         mdtrt_id=mdtrt_id)
    level = next((lv for lv in pack.levels if lv.code == visit.get("medins_lv")), None)
    if level is None:
        raise InputError("medins_lv", f"unknown institution level of pack {pack.name}",
                         visit.get("medins_lv"), mdtrt_id=mdtrt_id)
    raw_cats = visit.get("psn_cats") or ""
    names = {c.strip() for c in raw_cats.split(",") if c.strip()} if isinstance(raw_cats, str) \
        else set(raw_cats)
    for name in sorted(names):
        if name not in pack.categories:
            raise InputError("psn_cats", f"unknown person category of pack {pack.name}", name,
                             mdtrt_id=mdtrt_id)
    cats = [c for c in pack.categories if c in names]
    cause = visit.get("inj_cause") or "none"
    if cause not in pack.injury_causes:
        raise InputError("inj_cause", f"unknown injury cause of pack {pack.name}", cause,
                         mdtrt_id=mdtrt_id)
    bed_days = visit.get("ipt_days") or 0
    _money(bed_days, "ipt_days", mdtrt_id=mdtrt_id, rule="days must be >= 0")
    # the insured region must be the pack's (unknown region, section 9); treatment may be anywhere
    insured = visit.get("insu_admdvs")
    if insured is not None and insured not in pack.regions:
        raise InputError("insu_admdvs", f"unknown region of pack {pack.name}", insured, mdtrt_id=mdtrt_id)
    treated = visit.get("mdtrt_admdvs")
    if treated is not None and not (len(treated) == 6 and treated.isascii() and treated.isdigit()):
        raise InputError("mdtrt_admdvs", "unknown region: not a 6-digit code", treated, mdtrt_id=mdtrt_id)
    out_area = 0 if treated is None or treated in pack.regions else (1 if visit.get("out_filing_flag") else 2)
    group = disease_group(pack, visit.get("dise_codg"), age_years(visit.get("brdy"), day))
    disease = _disease_terms(version, group, med_type.code)
    rule = version.med_types.get(med_type.code)
    policy_version = f"{pack.name}/{scheme.code}/{version.id}"
    ctx = _Ctx(pack=pack, scheme=scheme, version=version, med_type=med_type, level=level, rule=rule,
               group=group, disease=disease, cats=cats, cause=cause, out_area=out_area,
               referral=bool(visit.get("refl_flag")) or at_first_visit_institution(visit), bed_days=bed_days,
               acct_used=bool(visit.get("acct_used_flag")),
               label=f"rule {policy_version}, {med_type.name}, {level.name}",
               policy_version=policy_version)
    return ctx, day


# --- caps ------------------------------------------------------------------------------------------

def _basic_cap(ctx: _Ctx) -> int | None:
    """The pool's annual cap 最高支付限额: fixed, or max(multiplier x benchmark, floor); None = no cap."""
    pool = ctx.version.pools.get(ctx.pool)
    if pool is None:
        return None
    if pool.cap is not None:
        return int(pool.cap)
    if pool.cap_formula is not None:
        f = pool.cap_formula
        return max(f.multiplier * f.benchmark, f.floor or 0)
    return None


def _left(cap: int | None, used: int) -> int | None:
    return None if cap is None else max(0, cap - used)


def _lmt(left: int | None) -> int:
    return -1 if left is None else left


def _hifp_used(acc: Accumulators, pool: str) -> int:
    return acc.hifp_inp if pool == "inpatient" else acc.hifp_out


def _elig_used(acc: Accumulators, pool: str) -> int:
    return acc.elig_inp if pool == "inpatient" else acc.elig_out


def _ded_paid(acc: Accumulators, pool: str) -> int:
    """Deductible paid this year in the pool: an annual deductible of one pool ignores the other's."""
    return acc.ded_paid_inp if pool == "inpatient" else acc.ded_paid_out


def _once_bit(ctx: _Ctx) -> int:
    """The visit's group's bit in Accumulators.ded_once when its rule says one deductible a year, else 0."""
    if ctx.disease is None or not ctx.disease.deductible_once_a_year:
        return 0
    return once_a_year_bits(ctx.pack)[ctx.group.code]


def _layer_eligible(ctx: _Ctx, layer) -> bool:
    """Civil-servant subsidy and assistance: on for the med type and the person is in a listed category."""
    return ctx.applies(layer) and any(c in layer.categories for c in ctx.cats)


def _limits(ctx: _Ctx, acc: Accumulators) -> dict[str, int]:
    """Remaining annual limits before the visit (crt_payb_lmt_amt); -1 = no cap or layer off.
    A med type the version does not settle has every layer off."""
    v = ctx.version
    if ctx.rule is None:
        return dict.fromkeys(("hifp_lmt", "hifob_lmt", "hifmi_lmt", "cvlserv_lmt", "maf_lmt"), -1)
    return {
        "hifp_lmt": _lmt(_left(_basic_cap(ctx), _hifp_used(acc, ctx.pool))),
        "hifob_lmt": _lmt(_left(v.large_amount.cap, acc.hifob)) if ctx.applies(v.large_amount) else -1,
        "hifmi_lmt": _lmt(_left(v.serious_illness.cap, acc.hifmi))
        if ctx.applies(v.serious_illness) else -1,
        "cvlserv_lmt": _lmt(_left(v.civil_servant.cap, acc.cvl))
        if _layer_eligible(ctx, v.civil_servant) else -1,
        "maf_lmt": _lmt(_left(v.assistance.cap, acc.maf)) if _layer_eligible(ctx, v.assistance) else -1,
    }


# --- bands -----------------------------------------------------------------------------------------

def _band_table(bands: list[Band]) -> list[tuple[int, int | None, int]]:
    """(lower edge, upper edge or None, rate bp), ascending from 0; below the first start the rate is 0%."""
    ordered = sorted(bands, key=lambda b: b.start)
    table = []
    if not ordered or ordered[0].start > 0:
        table.append((0, ordered[0].start if ordered else None, 0))
    for i, band in enumerate(ordered):
        upper = ordered[i + 1].start if i + 1 < len(ordered) else None
        table.append((int(band.start), upper, int(band.ratio)))
    return table


def _overlap(lo: int, hi: int | None, start: int, end: int) -> int:
    """Length of [start, end) inside [lo, hi)."""
    top = end if hi is None else min(end, hi)
    return max(0, top - max(start, lo))


def _band_rows(table, start: int, end: int):
    """The pieces of [start, end) falling in each band: (lower, upper, rate, amount)."""
    return [(lo, hi, rate, _overlap(lo, hi, start, end)) for lo, hi, rate in table
            if _overlap(lo, hi, start, end) > 0]


# --- step 2: exclusions ----------------------------------------------------------------------------

def _exclusion(ctx: _Ctx, mode: str) -> tuple[str, str, str, str]:
    """Step 2: (status, reason, what happens next, trace line); pending, then excluded, then not
    covered. Next is "refused" (nothing paid, nothing touched), "self_paid" (funds 0, the account
    may pay) or "chain" (steps 3 to 11)."""
    v = ctx.version
    head = f"Step 2 exclusions ({ctx.label}): "
    not_covered = (f"version {v.id} does not settle med type {ctx.med_type.code} "
                   f"({ctx.med_type.name}): no fund pays")
    if ctx.cause in v.pending_causes:
        if mode == "settle":
            return ("REFUSED", "pending_cause", "refused",
                    head + f"injury cause '{ctx.cause}' is pending confirmation; Settle refuses the "
                    f"visit: no fund pays, nothing is accumulated")
        words = (head + f"injury cause '{ctx.cause}' is pending confirmation; pre-settlement "
                 f"computed as if there were no injury cause, provisional, not committable")
        if ctx.rule is None:
            return "PROVISIONAL", "pending_cause", "self_paid", words + "; " + not_covered
        return "PROVISIONAL", "pending_cause", "chain", words
    if ctx.cause in v.excluded_causes:
        return ("EXCLUDED", f"excluded_cause:{ctx.cause}", "self_paid",
                head + f"injury cause '{ctx.cause}' is excluded by the version: the whole visit is "
                f"self-paid, no fund pays, nothing is accumulated")
    if ctx.rule is None:
        return "NOT_COVERED", "not_covered", "self_paid", head + not_covered
    return "OK", "", "chain", head + f"injury cause '{ctx.cause}', not excluded"


# --- step 5 ratio (shared with step 3) ---------------------------------------------------------------

@dataclasses.dataclass
class _Ratio:
    """The ratio adjustments of the visit: the delta in points, or a denial, and the disease floor/override."""
    delta: int
    denied: str               # "" or which adjustment denies
    floor: int
    override: int
    words: list[str]          # human-readable adjustments
    flags: int

    def f(self, x: int) -> tuple[int, int]:
        """(ratio, flags) for a base rate x: override, else max(x + delta, floor); clamped to 0..100%."""
        if self.override > 0:
            r, fl = self.override, FLAG_BIT["F_OVERRIDE"]
        else:
            r, fl = x + self.delta, 0
            if self.floor > 0 and self.floor > r:
                r, fl = self.floor, FLAG_BIT["F_FLOOR"]
        return min(10000, max(0, r)), fl


def _ratio_adjustments(ctx: _Ctx) -> _Ratio:
    adj = ctx.version.adjustments
    deltas, words, denied, flags = [], [], "", 0
    for cat in ctx.cats:
        d = adj.categories.get(cat)
        if d is not None:
            deltas.append((f"category {cat}", int(d)))
    if ctx.out_area:
        flags |= FLAG_BIT["F_OUT_AREA"]
        d = adj.out_of_area_filed if ctx.out_area == 1 else adj.out_of_area_unfiled
        if d is not None:
            deltas.append(("out of area, filed" if ctx.out_area == 1 else "out of area, not filed", int(d)))
    if ctx.level.code in adj.referral_required_levels and not ctx.referral:
        flags |= FLAG_BIT["F_NO_REFERRAL"]
        if adj.no_referral is not None:
            deltas.append(("no referral", int(adj.no_referral)))
    delta = 0
    for name, d in deltas:
        words.append(f"{name} {_delta_text(d)}")
        if d == DENY:
            denied = denied or name
        else:
            delta += d
    if denied:
        flags |= FLAG_BIT["F_DENIED"]
    dis = ctx.disease
    floor = int(dis.floor) if dis is not None and dis.floor is not None else 0
    override = int(dis.override) if dis is not None and dis.override is not None else 0
    if floor:
        words.append(f"disease group {ctx.group.code} not below {_pct(floor)}")
    if override:
        words.append(f"disease group {ctx.group.code} at {_pct(override)}")
    return _Ratio(delta, denied, floor, override, words, flags)


def _scalar_ratio(ctx: _Ctx, adj: _Ratio, acc: Accumulators) -> tuple[int, int, str]:
    """The single ratio of step 5 (unbanded: f(base); banded: f(rate of the band containing s))."""
    rule = ctx.rule
    if rule.bands:
        s = _elig_used(acc, ctx.pool) if rule.band_origin == "year" else 0
        rate = next(rt for lo, hi, rt in _band_table(rule.bands) if lo <= s and (hi is None or s < hi))
        r, fl = adj.f(rate)
        return r, fl, f"band rate at {_yuan(s)} {_pct(rate)}"
    base = int(rule.ratio.get(ctx.level.code, 0))
    r, fl = adj.f(base)
    return r, fl, f"base {_pct(base)}"


# --- step 3: quota modes ---------------------------------------------------------------------------

def _quota_applies(ctx: _Ctx) -> bool:
    d = ctx.disease
    return d is not None and d.quota is not None and ctx.level.code in d.quota.amount


def _quota(ctx: _Ctx, I: int, adj: _Ratio, acc: Accumulators):
    """Step 3: base = min(in scope, quota), the hospital bears the rest; own deductible; ratio.
    Returns (hosp_part, ded, elig, r, flags, trace)."""
    q = ctx.disease.quota
    amount = int(q.amount[ctx.level.code])
    if q.mode == "per_bed_day":
        quota, flags = amount * ctx.bed_days, FLAG_BIT["F_BEDDAY"]
        what = f"per bed-day {_yuan(amount)} x {ctx.bed_days} days = {_yuan(quota)}"
    else:
        quota, flags = amount, FLAG_BIT["F_QUOTA"]
        what = f"single-disease quota {_yuan(quota)}"
    base = min(I, quota)
    hosp_part = I - base
    ded = min(int(q.deductible or 0), base)
    elig = base - ded
    if adj.denied:
        r, how = 0, f"denied ({adj.denied})"
    elif q.ratio is not None and q.ratio > 0:
        r, how = int(q.ratio), f"quota ratio {_pct(q.ratio)}"
    else:
        r, fl, base_words = _scalar_ratio(ctx, adj, acc)
        flags |= fl
        how = f"ratio of step 5 ({', '.join([base_words] + adj.words)})"
    trace = (f"Step 3 payment mode ({ctx.label}, disease group {ctx.group.code}): {what}; "
             f"in scope {_yuan(I)}, base {_yuan(base)}, hospital bears {_yuan(hosp_part)}; "
             f"quota deductible {_yuan(ded)}; eligible {_yuan(elig)} at {_pct(r)}, {how}")
    return hosp_part, ded, elig, r, flags, trace


# --- step 4: deductible ----------------------------------------------------------------------------

def _deductible(ctx: _Ctx, I: int, E: int, acc: Accumulators):
    """Step 4: the deductible 起付线 charged, consumed first from non-essential in-scope amounts.
    Returns (ded, elig_non, elig_ess, flags, trace)."""
    d = ctx.rule.deductible
    flags = 0
    amount = int(d.amount.get(ctx.level.code, 0))
    waived = [c for c in ctx.cats if c in d.waived_categories]
    if waived:
        ded_full, flags = 0, FLAG_BIT["F_DED_WAIVED"]
        how = f"waived for category {', '.join(waived)}"
    elif acc.ded_once & _once_bit(ctx):
        ded_full, flags = 0, FLAG_BIT["F_DED_ONCE"]
        how = (f"disease group {ctx.group.code} pays one deductible a year, already paid at an "
               f"earlier admission this year")
    elif d.kind == "per_admission":
        n = acc.admissions + 1 if ctx.med_type.admission else 1
        k = min(n, 3)
        shares = [int(x) for x in d.nth_admission] or [10000]
        share = shares[min(k, len(shares)) - 1]
        ded_full = _rh(amount * share)
        if share < 10000:
            flags |= FLAG_BIT["F_DED_NTH"]
        nth = f"per admission (admission {n} of the year)" if ctx.med_type.admission else "per visit"
        how = f"{nth}: {_yuan(amount)} x {_pct(share)} = {_yuan(ded_full)}"
    else:
        paid = _ded_paid(acc, ctx.pool)
        ded_full = max(0, amount - paid)
        how = (f"annual {_yuan(amount)}, {_yuan(paid)} paid earlier this year in the {ctx.pool} "
               f"pool, {_yuan(ded_full)} left")
    ded = min(ded_full, I)
    ded_non = min(ded, I - E)
    ded_ess = ded - ded_non
    elig = I - ded
    elig_ess = E - ded_ess
    elig_non = elig - elig_ess
    trace = (f"Step 4 deductible ({ctx.label}): {how}; charged {_yuan(ded)} of in scope {_yuan(I)} "
             f"(non-essential {_yuan(ded_non)}, essential drugs {_yuan(ded_ess)}); "
             f"eligible {_yuan(elig)} (essential drugs {_yuan(elig_ess)})")
    return ded, elig_non, elig_ess, flags, trace


# --- step 5: basic pooled fund ---------------------------------------------------------------------

def _basic_fund(ctx: _Ctx, elig_non: int, elig_ess: int, adj: _Ratio, acc: Accumulators):
    """Step 5: ratio (with adjustments, floor, override, bands, essential uplift), before the cap.
    Returns (raw in fen*bp, r, flags, words)."""
    rule = ctx.rule
    elig = elig_non + elig_ess
    if adj.denied:
        return 0, 0, 0, f"denied ({adj.denied}): the basic fund pays nothing"
    flags = 0
    adjust = (" (" + ", ".join(adj.words) + ")") if adj.words else ""
    if rule.bands:
        flags |= FLAG_BIT["F_BANDED"]
        s = _elig_used(acc, ctx.pool) if rule.band_origin == "year" else 0
        raw, pieces = 0, []
        for lo, hi, rate, part in _band_rows(_band_table(rule.bands), s, s + elig):
            r_k, fl = adj.f(rate)
            flags |= fl
            raw += part * r_k
            pieces.append(f"{_yuan(part)} in {_span(lo, hi)} x {_pct(r_k)}")
        r, fl, _ = _scalar_ratio(ctx, adj, acc)
        flags |= fl
        origin = "the year's cumulative eligible amount" if rule.band_origin == "year" else "this visit"
        words = (f"eligible {_yuan(elig)} on bands of {origin}, from {_yuan(s)}{adjust}: "
                 + ("; ".join(pieces) if pieces else "no band") + f" = {_yuan(_rh(raw))}")
        return raw, r, flags, words
    base = int(rule.ratio.get(ctx.level.code, 0))
    r, fl = adj.f(base)
    flags |= fl
    uplift = int(rule.essential_drugs) if rule.essential_drugs is not None else 0
    r_ess = min(10000, max(0, r + uplift)) if uplift != DENY else 0
    raw = elig_non * r + elig_ess * r_ess
    if elig_ess > 0 and uplift:
        flags |= FLAG_BIT["F_ESS_UPLIFT"]
        words = (f"eligible {_yuan(elig_non)} x {_pct(r)} + essential drugs {_yuan(elig_ess)} x "
                 f"{_pct(r_ess)} (base {_pct(base)}{', ' if adj.words else ''}{', '.join(adj.words)}, "
                 f"essential {_delta_text(uplift)}) = {_yuan(_rh(raw))}")
    else:
        how = f" (base {_pct(base)}, {', '.join(adj.words)})" if adj.words else ""
        words = f"eligible {_yuan(elig)} x {_pct(r)}{how} = {_yuan(_rh(raw))}"
    return raw, r, flags, words


def _cap_basic(ctx: _Ctx, raw: int, acc: Accumulators):
    """Step 5 cap: hifp = min(rh(raw), cap left). Returns (hifp, cap_left or None, capped, words)."""
    cap = _basic_cap(ctx)
    cap_left = _left(cap, _hifp_used(acc, ctx.pool))
    uncapped = _rh(raw)
    if cap_left is None:
        return uncapped, None, False, f"no annual cap on the {ctx.pool} pool"
    capped = uncapped > cap_left
    words = f"annual cap {_yuan(cap)}, {_yuan(cap_left)} left before this visit"
    if capped:
        words += f"; capped: pays {_yuan(cap_left)}"
    return min(uncapped, cap_left), cap_left, capped, words


# --- step 6: large-amount subsidy ------------------------------------------------------------------

def _large_amount(ctx: _Ctx, elig: int, r: int, capped: bool, cap_left, acc: Accumulators):
    """Step 6: a ratio of the eligible cost the basic fund did not cover because its cap was reached.
    Returns (hifob, flags, trace)."""
    layer = ctx.version.large_amount
    if not ctx.applies(layer):
        return 0, 0, "Step 6 large-amount subsidy: not in this version for this med type"
    flags = 0
    if capped and r > 0:
        covered = (cap_left * 10000 + r // 2) // r
        overflow = max(0, elig - covered)
        how = (f"basic cap reached: cost covered by the basic fund {_yuan(cap_left)} / {_pct(r)} = "
               f"{_yuan(covered)}; overflow {_yuan(elig)} - {_yuan(covered)} = {_yuan(overflow)}")
    else:
        overflow = 0
        how = "basic cap not reached: no overflow"
    ob_left = _left(layer.cap, acc.hifob)
    raw = _rh(overflow * layer.ratio)
    hifob = raw if ob_left is None else min(raw, ob_left)
    if overflow > 0:
        flags |= FLAG_BIT["F_HIFOB"]
    if ob_left is not None and raw > ob_left:
        flags |= FLAG_BIT["F_HIFOB_CAPPED"]
    trace = (f"Step 6 large-amount subsidy ({ctx.label}): {how}; {_yuan(overflow)} x "
             f"{_pct(layer.ratio)} = {_yuan(raw)}; annual cap {_cap_text(layer.cap)}"
             + (f", {_yuan(ob_left)} left before this visit" if ob_left is not None else "")
             + f"; pays {_yuan(hifob)}")
    return hifob, flags, trace


# --- step 7: serious illness -----------------------------------------------------------------------

def _serious_illness(ctx: _Ctx, T: int, S: int, A: int, hifp: int, hifob: int, acc: Accumulators):
    """Step 7: serious-illness insurance 大病保险, bands on a per-admission or annual trigger, or the
    effective-ratio top-up. Returns (hifmi, base accumulated or 0 when off, flags, trace)."""
    layer = ctx.version.serious_illness
    if not ctx.applies(layer):
        return 0, 0, 0, "Step 7 serious illness: not in this version for this med type"
    flags = 0
    base = S if layer.base == "inscope_selfpay" else A
    base_name = "in-scope self-pay" if layer.base == "inscope_selfpay" else "all self-pay"
    thr = int(layer.threshold)
    raw = 0
    if layer.form == "effective_ratio":
        x = int(layer.effective_ratio or 0)
        cat_ratios = [int(layer.category_ratio[c]) for c in ctx.cats if c in layer.category_ratio]
        if cat_ratios:
            x = max(cat_ratios)
        if A > thr:
            flags |= FLAG_BIT["F_MI_TRIGGERED"] | FLAG_BIT["F_MI_EFFECTIVE"]
            raw = min(A, max(0, _rh(T * x) - hifp - hifob))
            how = (f"self-pay {_yuan(A)} above {_yuan(thr)}: funds reach {_pct(x)} of the total "
                   f"{_yuan(T)} = {_yuan(_rh(T * x))}, less basic {_yuan(hifp)} and large-amount "
                   f"{_yuan(hifob)} = {_yuan(raw)}")
        else:
            how = f"self-pay {_yuan(A)} not above {_yuan(thr)}: not triggered"
    else:
        table = _band_table(layer.bands)
        if layer.trigger == "per_admission":
            if T > thr:
                flags |= FLAG_BIT["F_MI_TRIGGERED"]
                start, end = 0, base
                how = f"total {_yuan(T)} above {_yuan(thr)}: {base_name} {_yuan(base)} on the bands"
            else:
                start = end = 0
                how = f"total {_yuan(T)} not above {_yuan(thr)}: not triggered"
        else:
            before, after = acc.mi_base, acc.mi_base + base
            if after > thr:
                flags |= FLAG_BIT["F_MI_TRIGGERED"]
                start, end = max(0, before - thr), after - thr
                how = (f"{base_name} this year {_yuan(before)} + {_yuan(base)} = {_yuan(after)} above "
                       f"{_yuan(thr)}: [{_yuan(start)}, {_yuan(end)}) above the threshold on the bands")
            else:
                start = end = 0
                how = (f"{base_name} this year {_yuan(before)} + {_yuan(base)} = {_yuan(after)} not "
                       f"above {_yuan(thr)}: not triggered")
        if end > start:
            pieces = []
            for lo, hi, rate, part in _band_rows(table, start, end):
                raw += part * rate
                pieces.append(f"{_yuan(part)} in {_span(lo, hi)} x {_pct(rate)}")
            raw = _rh(raw)
            how += ": " + "; ".join(pieces) + f" = {_yuan(raw)}"
    mi_left = _left(layer.cap, acc.hifmi)
    hifmi = raw if mi_left is None else min(raw, mi_left)
    if mi_left is not None and raw > mi_left:
        flags |= FLAG_BIT["F_MI_CAPPED"]
    trace = (f"Step 7 serious illness ({ctx.label}): {how}; annual cap {_cap_text(layer.cap)}"
             + (f", {_yuan(mi_left)} left before this visit" if mi_left is not None else "")
             + f"; pays {_yuan(hifmi)}")
    return hifmi, base, flags, trace


# --- step 8: civil servant -------------------------------------------------------------------------

def _civil_servant(ctx: _Ctx, S: int, hifmi: int, acc: Accumulators):
    """Step 8: civil-servant subsidy 公务员医疗补助 on the remaining in-scope self-pay."""
    layer = ctx.version.civil_servant
    if not _layer_eligible(ctx, layer):
        return 0, 0, "Step 8 civil-servant subsidy: not applicable"
    S2 = max(0, S - hifmi)
    raw = _rh(S2 * layer.ratio)
    left = _left(layer.cap, acc.cvl)
    cvl = raw if left is None else min(raw, left)
    flags = FLAG_BIT["F_CVL_CAPPED"] if left is not None and raw > left else 0
    trace = (f"Step 8 civil-servant subsidy ({ctx.label}): remaining in-scope self-pay {_yuan(S2)} x "
             f"{_pct(layer.ratio)} = {_yuan(raw)}; annual cap {_cap_text(layer.cap)}"
             + (f", {_yuan(left)} left before this visit" if left is not None else "")
             + f"; pays {_yuan(cvl)}")
    return cvl, flags, trace


# --- step 9: medical assistance --------------------------------------------------------------------

def _assistance(ctx: _Ctx, S: int, hifmi: int, cvl: int, acc: Accumulators):
    """Step 9: medical assistance 医疗救助 for listed categories, on what is left in scope."""
    layer = ctx.version.assistance
    if not _layer_eligible(ctx, layer):
        return 0, 0, "Step 9 medical assistance: not applicable"
    S3 = max(0, S - hifmi - cvl)
    ded = int(layer.deductible)
    raw = _rh(max(0, S3 - ded) * layer.ratio)
    left = _left(layer.cap, acc.maf)
    maf = raw if left is None else min(raw, left)
    flags = FLAG_BIT["F_MAF_CAPPED"] if left is not None and raw > left else 0
    who = ", ".join(c for c in ctx.cats if c in layer.categories)
    trace = (f"Step 9 medical assistance ({ctx.label}, category {who}): remaining in-scope self-pay "
             f"{_yuan(S3)} less assistance deductible {_yuan(ded)}, x {_pct(layer.ratio)} = "
             f"{_yuan(raw)}; annual cap {_cap_text(layer.cap)}"
             + (f", {_yuan(left)} left before this visit" if left is not None else "")
             + f"; pays {_yuan(maf)}")
    return maf, flags, trace


# --- step 10: guaranteed minimum -------------------------------------------------------------------

def _guaranteed_minimum(ctx: _Ctx, T: int, hosp_part: int, funds: int, hifp: int, cap_left,
                        denied: bool):
    """Step 10: top-up from the basic fund so that all funds pay at least a share of the total 兜底."""
    layer = ctx.version.guaranteed_minimum
    if not ctx.applies(layer):
        return 0, 0, "Step 10 guaranteed minimum: not in this version for this med type"
    if denied:
        return 0, 0, (f"Step 10 guaranteed minimum ({ctx.label}): the basic fund is denied for "
                      f"this visit: no top-up")
    target = min(_rh(T * layer.ratio), T - hosp_part)
    topup = max(0, target - funds)
    room = None if cap_left is None else max(0, cap_left - hifp)
    if room is not None:
        topup = min(topup, room)
    trace = (f"Step 10 guaranteed minimum ({ctx.label}): funds must pay {_pct(layer.ratio)} of "
             f"{_yuan(T)} = {_yuan(target)}; funds so far {_yuan(funds)}; top-up from the basic "
             f"fund {_yuan(topup)}" + (f" (basic cap room {_yuan(room)})" if room is not None else ""))
    return topup, FLAG_BIT["F_GM_TOPUP"] if topup > 0 else 0, trace


# --- step 11: personal account ---------------------------------------------------------------------

def _account(ctx: _Ctx, psn_part: int, balance: int):
    """Step 11: the personal account 个人账户 pays the patient's share up to the balance."""
    if ctx.scheme.personal_account and ctx.acct_used:
        acct = min(psn_part, balance)
        return acct, FLAG_BIT["F_ACCT"] if acct > 0 else 0, (
            f"Step 11 personal account: patient's share {_yuan(psn_part)}, balance "
            f"{_yuan(balance)}: account pays {_yuan(acct)}, cash {_yuan(psn_part - acct)}, balance "
            f"after {_yuan(balance - acct)}")
    why = "not used for this visit" if ctx.scheme.personal_account else "the scheme has no accounts"
    return 0, 0, (f"Step 11 personal account: {why}; patient pays {_yuan(psn_part)} in cash, "
                  f"balance {_yuan(balance)}")


# --- the chain -------------------------------------------------------------------------------------

def _chain(ctx: _Ctx, items: dict[str, int], acc: Accumulators, balance: int, mode: str):
    """Steps 2 to 11 in the order of SETTLEMENT.md section 4 / docs/design.md."""
    T, F, O, P, I, E = (items[n] for n in ITEM_NAMES)
    trace = [f"Step 1 itemize: total {_yuan(T)} = class C / not in catalogue {_yuan(F)} + over "
             f"ceiling {_yuan(O)} + class B pre-pay {_yuan(P)} + in scope {_yuan(I)} (essential "
             f"drugs {_yuan(E)} of it)"]
    out = dict.fromkeys(OUT_COLS, 0)
    out.update(medfee_sumamt=T, fulamt_ownpay_amt=F, overlmt_selfpay=O, preselfpay_amt=P,
               inscp_scp_amt=I)
    out.update(_limits(ctx, acc))
    flags = 0
    new_acc = acc.copy()

    status, reason, next_step, words = _exclusion(ctx, mode)
    trace.append(words)
    if next_step == "refused":
        out.update(psn_part_amt=T, psn_cash_pay=T, balc=balance)
        trace.append(f"Step 11 totals: funds 0.00; patient pays {_yuan(T)} in cash; "
                     f"balance {_yuan(balance)} unchanged")
        return out, status, reason, flags, acc.copy(), balance, trace
    if next_step == "self_paid":
        acct, fl, words = _account(ctx, T, balance)
        out.update(psn_part_amt=T, acct_pay=acct, psn_cash_pay=T - acct, balc=balance - acct)
        trace.append(words)
        return out, status, reason, flags | fl, new_acc, balance - acct, trace

    adj = _ratio_adjustments(ctx)
    flags |= adj.flags
    pool = ctx.pool
    hosp_part = 0
    if _quota_applies(ctx):
        # step 3: the quota replaces steps 4-5; the basic cap and accumulators are shared
        hosp_part, ded, elig, r, fl, words = _quota(ctx, I, adj, acc)
        flags |= fl
        trace.append(words)
        raw = elig * r
        basic_words = f"eligible {_yuan(elig)} x {_pct(r)} = {_yuan(_rh(raw))}"
    else:
        trace.append(f"Step 3 payment mode ({ctx.label}): fee-for-item")
        ded, elig_non, elig_ess, fl, words = _deductible(ctx, I, E, acc)
        flags |= fl
        trace.append(words)
        elig = elig_non + elig_ess
        raw, r, fl, basic_words = _basic_fund(ctx, elig_non, elig_ess, adj, acc)
        flags |= fl
    hifp, cap_left, capped, cap_words = _cap_basic(ctx, raw, acc)
    if capped:
        flags |= FLAG_BIT["F_HIFP_CAPPED"]
    trace.append(f"Step 5 basic fund ({ctx.label}): {basic_words}; {cap_words}")
    if ctx.med_type.admission:
        new_acc.admissions += 1
        new_acc.ded_once |= _once_bit(ctx)
    if pool == "inpatient":
        new_acc.ded_paid_inp += ded
        new_acc.elig_inp += elig
    else:
        new_acc.ded_paid_out += ded
        new_acc.elig_out += elig

    hifob, fl, words = _large_amount(ctx, elig, r, capped, cap_left, acc)
    flags |= fl
    trace.append(words)
    new_acc.hifob += hifob

    S = I - hosp_part - hifp - hifob
    A = T - hosp_part - hifp - hifob
    hifmi, mi_base, fl, words = _serious_illness(ctx, T, S, A, hifp, hifob, acc)
    flags |= fl
    trace.append(words)
    new_acc.mi_base += mi_base
    new_acc.hifmi += hifmi

    cvl, fl, words = _civil_servant(ctx, S, hifmi, acc)
    flags |= fl
    trace.append(words)
    new_acc.cvl += cvl

    maf, fl, words = _assistance(ctx, S, hifmi, cvl, acc)
    flags |= fl
    trace.append(words)
    new_acc.maf += maf

    topup, fl, words = _guaranteed_minimum(ctx, T, hosp_part, hifp + hifob + hifmi + cvl + maf,
                                           hifp, cap_left, bool(adj.denied))
    flags |= fl
    trace.append(words)
    hifp += topup
    if pool == "inpatient":
        new_acc.hifp_inp += hifp
    else:
        new_acc.hifp_out += hifp

    fund = hifp + hifob + hifmi + cvl + maf  # hifes_pay and oth_pay: no layer of this kernel pays them
    psn_part = T - hosp_part - fund
    acct, fl, words = _account(ctx, psn_part, balance)
    flags |= fl
    out.update(act_pay_dedc=ded, hifp_pay=hifp, pool_prop_selfpay=r, cvlserv_pay=cvl, hifmi_pay=hifmi,
               hifob_pay=hifob, maf_pay=maf, fund_pay_sumamt=fund, psn_part_amt=psn_part,
               acct_pay=acct, psn_cash_pay=psn_part - acct, hosp_part_amt=hosp_part,
               balc=balance - acct)
    trace.append(f"Step 11 totals: funds {_yuan(fund)} (basic {_yuan(hifp)}, large-amount "
                 f"{_yuan(hifob)}, serious illness {_yuan(hifmi)}, civil servant {_yuan(cvl)}, "
                 f"assistance {_yuan(maf)}); hospital bears {_yuan(hosp_part)}; patient "
                 f"{_yuan(psn_part)}")
    trace.append(words)
    return out, status, reason, flags, new_acc, balance - acct, trace


def settle_visit(pack: Pack, catalogue: dict, visit: dict, lines: list[dict] | None,
                 acc: Accumulators | None, balance: int, mode: str = "settle"):
    """Settle one visit: (result, accumulators after, balance after, trace).

    `acc` is the visit's (person, scheme, year) row before the visit; neither it nor `visit` nor
    `lines` is changed. Under "presettle" the accumulators after are those a Settle would leave
    (the caller does not commit them); a refused visit leaves them as they were.
    """
    if mode not in ("settle", "presettle"):
        raise InputError("mode", "must be settle or presettle", mode)
    mdtrt_id = visit.get("mdtrt_id")
    _money(balance, "acct_balc", mdtrt_id=mdtrt_id)
    acc = Accumulators() if acc is None else acc
    ctx, _day = _context(pack, visit)
    if lines is None:
        items = _precomputed(visit)
    else:
        try:
            items = itemize(pack, catalogue, lines)
        except InputError as e:
            if e.mdtrt_id is None and mdtrt_id is not None:
                raise InputError(e.field, e.rule, e.value, line=e.line, mdtrt_id=mdtrt_id) from None
            raise
    declared = visit.get("medfee_sumamt")
    if declared is not None and declared != items["medfee_sumamt"]:
        raise InputError("medfee_sumamt", f"must equal the sum of the lines {items['medfee_sumamt']}",
                         declared, mdtrt_id=mdtrt_id)
    out, status, reason, flags, acc_after, balance_after, trace = _chain(ctx, items, acc, balance, mode)
    if status == "OK" and mode == "presettle":
        trace[1] += "; pre-settlement: nothing is committed"
    result = {"mdtrt_id": mdtrt_id, "psn_no": visit.get("psn_no"), "status": status,
              "reason": reason, **out, "flags": flags, "policy_version": ctx.policy_version}
    return result, acc_after, balance_after, trace


# --- batch -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class BatchResult:
    results: list[dict]                                   # input order
    traces: list[list[str]]                               # input order
    accumulators: dict[tuple[str, str, int], Accumulators]  # (psn_no, scheme, year) -> after the batch
    balances: dict[str, int]                              # psn_no -> account balance after the batch


def settle_batch(pack: Pack, catalogue: dict, visits: list[dict], lines_by_visit: dict | None = None,
                 mode: str = "settle", start_acc: dict | None = None,
                 start_balance: dict | None = None) -> BatchResult:
    """Settle visits in (psn_no, setl_time) order (ties by input order), carrying accumulators per
    (psn_no, scheme, calendar year of the governing date) and the account balance per person.

    lines_by_visit maps mdtrt_id -> line dicts; a visit without an entry carries precomputed amounts.
    The starting balance is start_balance[psn_no], else acct_balc of the person's first visit, else 0.
    """
    order = sorted(range(len(visits)), key=lambda i: (visits[i]["psn_no"], visits[i]["setl_time"]))
    accs = {k: v.copy() for k, v in (start_acc or {}).items()}
    balances = dict(start_balance or {})
    results, traces = [None] * len(visits), [None] * len(visits)
    for i in order:
        visit = visits[i]
        psn = visit["psn_no"]
        if psn not in balances:
            balances[psn] = visit.get("acct_balc") or 0
        lines = (lines_by_visit or {}).get(visit.get("mdtrt_id"))
        try:
            scheme, _version = select_version(pack, visit.get("insutype"), visit)
            key = (psn, scheme.code, governing_date(scheme, visit).year)
            result, acc_after, bal_after, trace = settle_visit(
                pack, catalogue, visit, lines, accs.get(key), balances[psn], mode)
        except InputError as e:
            if e.row is None:
                raise InputError(e.field, e.rule, e.value, row=i, line=e.line,
                                 mdtrt_id=e.mdtrt_id) from None
            raise
        accs[key], balances[psn] = acc_after, bal_after
        results[i], traces[i] = result, trace
    return BatchResult(results, traces, accs, balances)


def settle_many(pack: Pack, catalogue: dict, visits: list[dict], lines_by_visit: dict | None = None,
                mode: str = "settle", start_acc: dict | None = None,
                start_balance: dict | None = None) -> list[dict]:
    """The results of settle_batch, in input order (settle_batch also gives the final accumulators)."""
    return settle_batch(pack, catalogue, visits, lines_by_visit, mode, start_acc,
                        start_balance).results


def explain(pack: Pack, catalogue: dict, visits: list[dict], lines_by_visit: dict | None,
            mdtrt_id: str, mode: str = "settle") -> list[str]:
    """The step trace of one visit, after the person's earlier visits among `visits` (same order as
    settle_batch, so the trace starts from the same year-to-date totals)."""
    batch = settle_batch(pack, catalogue, visits, lines_by_visit, mode)
    for visit, trace in zip(visits, batch.traces):
        if visit.get("mdtrt_id") == mdtrt_id:
            return trace
    raise InputError("mdtrt_id", "no such visit", mdtrt_id)
