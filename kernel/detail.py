"""setldetail (SETTLEMENT.md section 7): one row per fund that applies to a visit.

Each row gives the fund (fund_pay_type), the amount the fund worked on (inscp_scp_amt: its own
base, defined in docs/data.md), the annual limit left before the visit (crt_payb_lmt_amt, -1 no
cap), what it paid (fund_payamt) and setl_proc_info: in words, the rule and policy version, the
disease group, the ratio or bands and every adjustment that applied.

Everything is derived from the kernel's outputs (layout.OUT_COLS, status, flags), the visit's
kernel inputs (rule, disease group, categories, injury cause, essential-drug amount) and the
compiled tables. A batch is done with numpy and pyarrow.compute; Python runs once per distinct
combination of rule, group, flags and categories (a template of text with amount slots), never
per visit. One visit (the real-time path) fills the same templates, its amounts written in C
(kernel._text), so its rows are those of the batch (tests/test_detail.py proves it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import layout
from ._text import fen, render  # noqa: F401  (fen: the house format of an amount, in C)
from .adapter import first_index

# fund_pay_type, its pay column, its limit column, its name in words
FUNDS = [("hifp", "hifp_pay", "hifp_lmt", "basic pooled fund (统筹基金)"),
         ("hifob", "hifob_pay", "hifob_lmt", "large-amount subsidy (大额医疗补助)"),
         ("hifmi", "hifmi_pay", "hifmi_lmt", "serious-illness insurance (大病保险)"),
         ("cvlserv", "cvlserv_pay", "cvlserv_lmt", "civil-servant subsidy (公务员医疗补助)"),
         ("maf", "maf_pay", "maf_lmt", "medical assistance (医疗救助)")]
FUND_CODES = [f[0] for f in FUNDS]
# The amounts a fund's text quotes, in the order they appear in it.
_SLOTS = {"hifp": ("inscp", "hosp", "ded", "base", "pay", "topup", "lmt")}
_LAYER_SLOTS = ("base", "pay", "lmt")

DETAIL_SCHEMA = pa.schema([
    pa.field("mdtrt_id", pa.string()), pa.field("psn_no", pa.string()),
    pa.field("fund_pay_type", pa.string()), pa.field("inscp_scp_amt", pa.int64()),
    pa.field("crt_payb_lmt_amt", pa.int64()), pa.field("fund_payamt", pa.int64()),
    pa.field("policy_version", pa.string()), pa.field("setl_proc_info", pa.string())])

_C = layout.as_constants()
_O = {name: k for k, name in enumerate(layout.OUT_COLS)}
_SETTLED = (layout.STATUS["OK"], layout.STATUS["PROVISIONAL"])


def _bit(name):
    return 1 << _C[name]


# The flags a fund's text depends on (the rest do not change its words).
_HIFP_FLAGS = sum(map(_bit, ("F_DED_WAIVED", "F_DED_NTH", "F_DED_ONCE", "F_ESS_UPLIFT", "F_FLOOR",
                             "F_OVERRIDE", "F_OUT_AREA", "F_NO_REFERRAL", "F_DENIED", "F_BANDED",
                             "F_QUOTA", "F_BEDDAY", "F_HIFP_CAPPED", "F_GM_TOPUP")))
_AFTER_TOPUP = _bit("F_BANDED") | _bit("F_GM_TOPUP")     # both: later bases include the top-up
# what _values reads, looked up once (it runs per real-time call)
_QUOTA_FLAGS = _bit("F_QUOTA") | _bit("F_BEDDAY")
_GM_TOPUP, _HIFP_CAPPED = _bit("F_GM_TOPUP"), _bit("F_HIFP_CAPPED")
_R_ESS_UPLIFT, _R_MI_BASE, _R_OB_RATIO, _R_MI_FORM, _R_CVL_CATS, _R_MAF_CATS = (
    _C[name] for name in ("R_ESS_UPLIFT", "R_MI_BASE", "R_OB_RATIO", "R_MI_FORM", "R_CVL_CATS",
                          "R_MAF_CATS"))
_FUND_FLAGS = {"hifp": _HIFP_FLAGS,
               "hifob": _bit("F_HIFP_CAPPED") | _bit("F_HIFOB") | _bit("F_HIFOB_CAPPED"),
               "hifmi": _bit("F_MI_TRIGGERED") | _bit("F_MI_CAPPED") | _bit("F_MI_EFFECTIVE") | _AFTER_TOPUP,
               "cvlserv": _bit("F_CVL_CAPPED") | _AFTER_TOPUP,
               "maf": _bit("F_MAF_CAPPED") | _AFTER_TOPUP}


def pct(bp: int) -> str:
    """Basis points as a percentage: 8500 -> '85%', 8550 -> '85.50%'."""
    sign = "-" if bp < 0 else ""
    bp = abs(int(bp))
    return f"{sign}{bp // 100}%" if bp % 100 == 0 else f"{sign}{bp // 100}.{bp % 100:02d}%"


def limit_text(v: int) -> str:
    """A remaining limit (crt_payb_lmt_amt): yuan, or "none" for -1 (no cap, or the layer is off)."""
    return "none" if v < 0 else fen(v)


def fen_text(values) -> pa.Array:
    """fen() of every value, vectorised: an Arrow string array."""
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return pa.array([], pa.string())
    magnitude = np.abs(v)
    yuan, cents = np.divmod(magnitude, 100)
    groups = 1                                    # groups of three digits in the largest value
    while int(yuan.max()) >= 1000 ** groups:
        groups += 1
    lead = np.zeros(v.shape, np.int64)            # per value: index of its leading group
    for k in range(1, groups):
        lead += yuan >= 1000 ** k
    parts = [pc.if_else(pa.array(v < 0), "-", ""),
             pc.cast(pa.array(yuan // 1000 ** lead), pa.string())]
    for k in range(groups - 2, -1, -1):
        digits = pc.utf8_lpad(pc.cast(pa.array((yuan // 1000 ** k) % 1000), pa.string()), 3, "0")
        parts.append(pc.if_else(pa.array(lead > k), pc.binary_join_element_wise(",", digits, ""), ""))
    parts += [".", pc.utf8_lpad(pc.cast(pa.array(cents), pa.string()), 2, "0")]
    return pc.binary_join_element_wise(*parts, "")


@dataclass(frozen=True)
class Template:
    """A fund's text with amount slots: before[k] + the amount of slot k (when used[k]) ... + tail."""
    fund: str
    before: tuple
    used: tuple
    tail: str

    def render(self, amounts: dict) -> str:
        return render(self.before, self.used, _SLOTS.get(self.fund, _LAYER_SLOTS), self.tail, amounts)


def _template(fund: str, parts: list) -> Template:
    """Template of a list of text and slot names (("slot",) tuples), slots in the fund's order."""
    slots = _SLOTS.get(fund, _LAYER_SLOTS)
    before, used, text, k = [""] * len(slots), [False] * len(slots), [], 0
    for part in parts:
        if isinstance(part, str):
            text.append(part)
            continue
        name = part[0]
        at = slots.index(name, k)
        before[at], used[at], k, text = "".join(text), True, at + 1, []
    return Template(fund, tuple(before), tuple(used), "".join(text))


@dataclass
class FundColumns:
    """One fund over the visits of a batch (processing order)."""
    code: str
    applies: np.ndarray          # bool: the fund has a row for the visit
    base: np.ndarray             # int64: inscp_scp_amt of the row
    limit: np.ndarray            # int64: crt_payb_lmt_amt
    paid: np.ndarray             # int64: fund_payamt
    amounts: dict                # slot -> int64 per visit
    template: np.ndarray         # int per visit: index into templates
    templates: list


def _distinct(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, one row of each code): rows equal in every column share a code."""
    n = len(columns[0])
    if n <= 1:
        return np.zeros(n, np.int64), np.zeros(min(n, 1), np.int64)
    code, width = np.zeros(n, np.int64), 1
    for col in columns:
        col = np.asarray(col, np.int64)
        lo = int(col.min())
        span = int(col.max()) - lo + 1
        if width * span >= 2**62:             # re-number before the combined key overflows
            code, width = _dense(code)
        code = code * span + (col - lo)
        width *= span
    code, _ = _dense(code)
    return code, first_index(code, int(code.max()) + 1)


def _dense(key: np.ndarray) -> tuple[np.ndarray, int]:
    enc = pa.array(key).dictionary_encode()
    return np.asarray(enc.indices).astype(np.int64), len(enc.dictionary)


class DetailBuilder:
    """setldetail rows of a compiled pack's settlements."""

    def __init__(self, compiled):
        self.cp = compiled
        self.pack = compiled.pack
        self._versions = compiled.labels
        self._rule_labels: dict = {}         # rule row -> its words
        self._cache: dict = {}               # (fund, key values) -> Template
        self._rules_ints = compiled.rules.tolist()   # the rules as Python ints, for one visit

    # --- labels ---------------------------------------------------------------------------------

    def rule_label(self, rule: int) -> str:
        """The rule row in words: pack/scheme/version, med type, level."""
        label = self._rule_labels.get(rule)
        if label is None:
            cp = self.cp
            level = self.pack.levels[rule % cp.n_levels]
            med_type = self.pack.med_types[(rule // cp.n_levels) % cp.n_med_types]
            label = f"{self._versions[rule // (cp.n_levels * cp.n_med_types)]}, {med_type.name} at {level.name}"
            self._rule_labels[rule] = label
        return label

    def _cats(self, mask: int) -> list[str]:
        return [c for i, c in enumerate(self.pack.categories) if mask >> i & 1]

    def _group(self, group: int) -> str:
        g = self.pack.disease_groups[group - 1]
        return f"disease group {g.code} ({g.name})"

    def _bands(self, bandset: int) -> str:
        row = self.cp.bands[bandset]
        edges = [(int(row[2 * k]), int(row[2 * k + 1])) for k in range(layout.BAND_MAX)
                 if row[2 * k] != layout.BAND_UNUSED]
        words = []
        for k, (lo, rate) in enumerate(edges):
            span = f"[{fen(lo)}, {fen(edges[k + 1][0])})" if k + 1 < len(edges) else f"from {fen(lo)}"
            words.append(f"{span} {pct(rate)}")
        return ", ".join(words)

    # --- per visit values -----------------------------------------------------------------------

    def _values(self, col: dict, status, flags, rule, cats, inscp_ess, xp) -> dict:
        """Per fund: (applies, base, limit, paid, slot amounts) from the kernel's outputs (docs/data.md
        defines each base). The same arithmetic for a batch (numpy arrays, xp = _Vector) and for one
        visit (Python ints, xp = _Scalar)."""
        R = self._rules_ints if xp is _Scalar else self.cp.rules
        settled = xp.isin(status, _SETTLED)
        inscp, hosp, ded, hifp, ratio = (col["inscp_scp_amt"], col["hosp_part_amt"], col["act_pay_dedc"],
                                         col["hifp_pay"], col["pool_prop_selfpay"])
        hifob, hifmi, cvl, cap_left = col["hifob_pay"], col["hifmi_pay"], col["cvlserv_pay"], col["hifp_lmt"]
        eligible = xp.where(settled, inscp - hosp - ded, 0)
        # hifp_pay before the guaranteed-minimum top-up (step 10, paid after steps 7-9): unbanded and
        # quota payments recomputed from the reported ratio (docs/design.md steps 3-5); a banded
        # payment cannot be told from its top-up and stays as paid (the texts say so)
        ded_non = xp.minimum(ded, inscp - inscp_ess)           # the deductible eats non-essential first
        elig_ess = inscp_ess - (ded - ded_non)
        uplift = xp.rules(R, rule, _R_ESS_UPLIFT)
        quota = (flags & _QUOTA_FLAGS) != 0
        raw = xp.where(quota, eligible * ratio,
                       (eligible - elig_ess) * ratio
                       + elig_ess * xp.maximum(0, xp.minimum(10000, ratio + uplift)))   # as the chain clamps
        recomputed = (raw + 5000) // 10000
        recomputed = xp.where(cap_left >= 0, xp.minimum(recomputed, xp.maximum(cap_left, 0)), recomputed)
        before_topup = xp.where((flags & _AFTER_TOPUP) == _GM_TOPUP, recomputed, hifp)
        capped = ((flags & _HIFP_CAPPED) != 0) & (ratio > 0) & settled
        # the eligible cost the basic fund covered at its cap: round_half_up(cap_left * 10000 / r)
        covered = (xp.maximum(cap_left, 0) * 10000 + ratio // 2) // xp.maximum(ratio, 1)
        overflow = xp.where(capped, xp.maximum(0, eligible - covered), 0)
        scope_self = xp.where(settled, inscp - hosp - before_topup - hifob, 0)
        all_self = xp.where(settled, col["medfee_sumamt"] - hosp - before_topup - hifob, 0)
        mi_base = xp.where(xp.rules(R, rule, _R_MI_BASE) == 0, scope_self, all_self)
        applies = {"hifp": settled | True,                      # every visit has a basic-fund row
                   "hifob": xp.rules(R, rule, _R_OB_RATIO) > 0,
                   "hifmi": xp.rules(R, rule, _R_MI_FORM) > 0,
                   "cvlserv": (cats & xp.rules(R, rule, _R_CVL_CATS)) != 0,
                   "maf": (cats & xp.rules(R, rule, _R_MAF_CATS)) != 0}
        bases = {"hifp": eligible, "hifob": overflow, "hifmi": mi_base,
                 "cvlserv": xp.maximum(0, scope_self - hifmi), "maf": xp.maximum(0, scope_self - hifmi - cvl)}
        values = {}
        for code, pay, lmt, _ in FUNDS:
            amounts = {"base": bases[code], "pay": col[pay], "lmt": col[lmt]}
            if code == "hifp":
                amounts.update(inscp=inscp, hosp=hosp, ded=ded, topup=hifp - before_topup)
            values[code] = (applies[code], bases[code], col[lmt], col[pay], amounts)
        return values

    @staticmethod
    def _keys(code, rule, status, cause, flags, limit, group, cats, out_area, ratio) -> list:
        """What a fund's words depend on (arrays or ints): equal keys, equal template."""
        # the injury cause matters only when it excluded the visit
        excluded_cause = (cause + 1) * (status == layout.STATUS["EXCLUDED"]) - 1
        keys = [rule, status, excluded_cause, limit >= 0, flags & _FUND_FLAGS[code]]
        if code == "hifp":
            keys += [group, cats, out_area, ratio]
        elif code in ("hifmi", "maf"):
            keys.append(cats)
        return keys

    def funds(self, out, status, flags, rule, group, cats, cause, out_area, inscp_ess) -> list[FundColumns]:
        """Every fund's columns for n visits (arrays of n in one order; out is (len(OUT_COLS), n))."""
        i64 = [np.asarray(a, np.int64) for a in (status, flags, rule, group, cats, cause, out_area, inscp_ess)]
        status, flags, rule, group, cats, cause, out_area, inscp_ess = i64
        cats = cats & 0xFF
        col = {name: out[k] for name, k in _O.items()}
        values = self._values(col, status, flags, rule, cats, inscp_ess, _Vector)
        result = []
        for code, _, _, _ in FUNDS:
            applies, base, limit, paid, amounts = values[code]
            keys = self._keys(code, rule, status, cause, flags, limit, group, cats, out_area,
                              col["pool_prop_selfpay"])
            chosen = np.flatnonzero(applies)
            template = np.zeros(len(rule), np.int64)
            templates = []
            if chosen.size:
                index, first = _distinct([k[chosen] for k in keys])
                template[chosen] = index
                templates = [self._template_for(code, tuple(int(k[chosen[i]]) for k in keys)) for i in first]
            result.append(FundColumns(code, applies, base, limit, paid, amounts, template, templates))
        return result

    def rows_of_one(self, col: dict, status, flags, rule, group, cats, cause, out_area, inscp_ess) -> list[tuple]:
        """The rows of one visit, as funds() and table() give them for it in a batch:
        (fund_pay_type, inscp_scp_amt, crt_payb_lmt_amt, fund_payamt, setl_proc_info).
        col: the visit's out columns by name; the rest its kernel inputs; all Python ints."""
        cats &= 0xFF
        values = self._values(col, status, flags, rule, cats, inscp_ess, _Scalar)
        rows = []
        for code, _, _, _ in FUNDS:
            applies, base, limit, paid, amounts = values[code]
            if applies:
                keys = self._keys(code, rule, status, cause, flags, limit, group, cats, out_area,
                                  col["pool_prop_selfpay"])
                # ints and bools already (True keys the same template as 1)
                rows.append((code, base, limit, paid, self._template_for(code, tuple(keys)).render(amounts)))
        return rows

    # --- words ----------------------------------------------------------------------------------

    def _template_for(self, code, key: tuple) -> Template:
        cached = self._cache.get((code, key))
        if cached is None:
            cached = _template(code, self._words(code, *key))
            if len(self._cache) >= 100_000:        # a long-running server: keep the cache bounded
                self._cache.clear()
            self._cache[(code, key)] = cached
        return cached

    def _words(self, code, rule, status, cause, has_limit, flags, *rest) -> list:
        R = self.cp.rules[rule]
        name = dict((f[0], f[3]) for f in FUNDS)[code]
        head = f"{self.rule_label(rule)}: {name}"
        limit = ["; ", ("lmt",), " of the annual cap left before this visit"] if has_limit else ["; no annual cap"]
        if status not in _SETTLED:
            why = {layout.STATUS["REFUSED"]: "the injury cause awaits confirmation: Settle refuses the visit",
                   layout.STATUS["NOT_COVERED"]: "this version does not settle this med type",
                   layout.STATUS["EXCLUDED"]: f"injury cause {self.pack.injury_causes[cause]!r} is excluded: "
                   "the whole visit is self-paid"}[status]
            return [f"{head}: pays nothing: {why}"] + limit
        if status == layout.STATUS["PROVISIONAL"]:
            head += " (provisional: the injury cause awaits confirmation)"

        def has(flag):
            return bool(flags & _bit(flag))

        capped = " (capped by the annual cap)"
        after_topup = (" (after the guaranteed-minimum top-up, which cannot be told from a banded basic "
                       "payment)") if flags & _AFTER_TOPUP == _AFTER_TOPUP else ""
        if code == "hifp":
            return [f"{head}: in scope ", ("inscp",)] + self._hifp_words(R, rule, has, *rest) \
                + ["; paid ", ("pay",)] + ([capped] if has("F_HIFP_CAPPED") else []) \
                + ([f", of which guaranteed-minimum top-up (兜底: funds pay at least {pct(R[_C['R_GM_RATIO']])} "
                    "of the total) ", ("topup",)] if has("F_GM_TOPUP") else []) + limit
        if code == "hifob":
            if not has("F_HIFP_CAPPED"):
                return [f"{head}: the basic fund's annual cap was not reached: nothing above it to pay; paid ",
                        ("pay",)] + limit
            return [f"{head}: eligible cost above what the basic fund covered at its cap ", ("base",),
                    f" x {pct(R[_C['R_OB_RATIO']])}; paid ", ("pay",)] \
                + ([capped] if has("F_HIFOB_CAPPED") else []) + limit
        if code == "hifmi":
            return self._mi_words(R, head, has, rest[0], after_topup) + ["; paid ", ("pay",)] \
                + ([capped] if has("F_MI_CAPPED") else []) + limit
        if code == "cvlserv":
            return [f"{head}: in-scope self-pay left after serious illness{after_topup} ", ("base",),
                    f" x {pct(R[_C['R_CVL_RATIO']])}; paid ", ("pay",)] \
                + ([capped] if has("F_CVL_CAPPED") else []) + limit
        who = ", ".join(c for c in self._cats(rest[0] & R[_C["R_MAF_CATS"]]))
        ded = R[_C["R_MAF_DED"]]
        return [f"{head}, category {who}: in-scope self-pay left after the insurance layers{after_topup} ",
                ("base",), (f" less its deductible {fen(ded)}" if ded else "")
                + f" x {pct(R[_C['R_MAF_RATIO']])}; paid ", ("pay",)] \
            + ([capped] if has("F_MAF_CAPPED") else []) + limit

    def _hifp_words(self, R, rule, has, group, cats, out_area, ratio) -> list:
        D = self.cp.diseases[rule * self.cp.n_groups + group]
        words = []
        quota = has("F_QUOTA") or has("F_BEDDAY")
        if quota:
            amount = fen(D[_C["D_QUOTA_AMOUNT"]])
            what = f"single-disease quota {amount}" if has("F_QUOTA") else f"per bed-day quota {amount} a day"
            words += [f", {what} for {self._group(group)}, the hospital bears what is above it ", ("hosp",)]
        words += [", deductible ", ("ded",)]
        if has("F_DED_WAIVED"):
            words.append(f" (waived for category {', '.join(self._cats(cats & R[_C['R_DED_WAIVED_CATS']]))})")
        elif has("F_DED_ONCE"):
            words.append(f" (once a year for {self._group(group)}: already paid this year)")
        elif has("F_DED_NTH"):
            words.append(" (reduced for a repeat admission this year)")
        elif quota and D[_C["D_QUOTA_DED"]]:
            words.append(" (the quota's own)")
        words += [", eligible ", ("base",), f"; ratio {pct(ratio)}"]
        how = []
        if has("F_DENIED"):
            denied = []
            if has("F_OUT_AREA") and R[_C["R_OA_FILED_DELTA" if out_area == 1 else "R_OA_UNFILED_DELTA"]] == layout.DENY:
                denied.append("out of area, " + ("filed" if out_area == 1 else "not filed"))
            if has("F_NO_REFERRAL") and R[_C["R_NO_REFERRAL_DELTA"]] == layout.DENY:
                denied.append("no referral")
            how.append(f"denied ({', '.join(denied)}): the basic fund pays nothing")
        elif quota and D[_C["D_QUOTA_RATIO"]]:
            how.append(f"the quota's own ratio {pct(D[_C['D_QUOTA_RATIO']])}")
        else:
            if has("F_BANDED"):
                origin = "the year's cumulative" if R[_C["R_BAND_ORIGIN"]] else "this visit's"
                how.append(f"bands on {origin} eligible amount: {self._bands(R[_C['R_BANDSET']])}")
            else:
                level = self.pack.levels[rule % self.cp.n_levels]
                how.append(f"base {pct(R[_C['R_BASE_RATIO']])} at {level.name}")
            for bit, cat in enumerate(self.pack.categories):
                delta = R[_C[f"R_CAT_DELTA_{bit}"]] if bit < 8 else 0
                if cats >> bit & 1 and delta:
                    how.append(f"category {cat} {_signed(delta)}")
            if has("F_OUT_AREA"):
                filed = out_area == 1
                delta = R[_C["R_OA_FILED_DELTA" if filed else "R_OA_UNFILED_DELTA"]]
                if delta:
                    how.append(f"out of area, {'filed' if filed else 'not filed'} {_signed(delta)}")
            if has("F_NO_REFERRAL") and R[_C["R_NO_REFERRAL_DELTA"]]:
                how.append(f"no referral {_signed(R[_C['R_NO_REFERRAL_DELTA']])}")
            if group:
                floor, override = D[_C["D_FLOOR"]], D[_C["D_OVERRIDE"]]
                if override:
                    how.append(f"{self._group(group)}: ratio set to {pct(override)}")
                elif floor:
                    how.append(f"{self._group(group)}: not below {pct(floor)}"
                               + (" (applied)" if has("F_FLOOR") else " (not needed)"))
                elif not quota:
                    how.append(f"{self._group(group)}: no ratio rule")
            if has("F_ESS_UPLIFT"):
                how.append(f"essential drugs {_signed(R[_C['R_ESS_UPLIFT']])}")
        return words + [f" ({'; '.join(how)})"]

    def _mi_words(self, R, head, has, cats, after_topup) -> list:
        base = "in-scope self-pay" if R[_C["R_MI_BASE"]] == 0 else "all self-pay"
        words = [f"{head}: {base} after the basic fund and the large-amount subsidy{after_topup} ", ("base",)]
        threshold = fen(R[_C["R_MI_THRESHOLD"]])
        triggered = has("F_MI_TRIGGERED")
        if R[_C["R_MI_FORM"]] == 2:
            ratio = R[_C["R_MI_EFF_CAT_RATIO"]] if cats & R[_C["R_MI_EFF_CATS"]] else R[_C["R_MI_EFF_RATIO"]]
            return words + [f"; above {threshold}, all funds together reach {pct(ratio)} of the total"
                            + ("" if triggered else ": not above, not triggered")]
        if R[_C["R_MI_TRIGGER"]] == 0:
            trigger = (f"; the visit's total is above {threshold}" if triggered
                       else f"; not triggered (the visit's total is not above {threshold})")
        else:
            trigger = (f"; the year's cumulative base above {threshold} is paid"
                       + ("" if triggered else " (not reached yet)"))
        return words + [trigger + f"; bands {self._bands(R[_C['R_MI_BANDSET']])}"]

    # --- output ---------------------------------------------------------------------------------

    def table(self, funds: list[FundColumns], input_row: np.ndarray, n_input: int, id_columns,
              version: np.ndarray) -> pa.Table:
        """The detail table: per visit in input order, its funds' rows in FUNDS order.
        input_row: the input row of each visit of the funds' order; version: compiled version per visit."""
        present = np.stack([f.applies for f in funds])               # (funds, n)
        per_visit = np.zeros(n_input, np.int64)
        per_visit[input_row] = present.sum(axis=0)
        start = np.zeros(n_input, np.int64)
        np.cumsum(per_visit[:-1], out=start[1:])
        rank = np.cumsum(present, axis=0) - 1                          # the row's place among its visit's
        total = int(per_visit.sum())
        position, texts, source_row = [], [], []
        for k, f in enumerate(funds):
            chosen = np.flatnonzero(f.applies)
            position.append(start[input_row[chosen]] + rank[k, chosen])
            source_row.append(chosen)
            texts.append(self._render(f, chosen))
        position = np.concatenate(position)
        source_row = np.concatenate(source_row)
        into = np.empty(total, np.int64)                            # concatenated row -> final position
        into[position] = np.arange(total)

        def gather(values):
            out = np.empty(total, np.int64)
            out[position] = values
            return out

        fund_of = np.concatenate([np.full(int(f.applies.sum()), k, np.int8) for k, f in enumerate(funds)])
        rows = pa.array(input_row[source_row][into])
        mdtrt_id, psn_no = (c.take(rows) for c in id_columns)
        return pa.table({
            "mdtrt_id": mdtrt_id, "psn_no": psn_no,
            "fund_pay_type": pa.DictionaryArray.from_arrays(pa.array(fund_of[into].astype(np.int32)),
                                                            pa.array(FUND_CODES)),
            "inscp_scp_amt": pa.array(gather(np.concatenate([f.base[f.applies] for f in funds]))),
            "crt_payb_lmt_amt": pa.array(gather(np.concatenate([f.limit[f.applies] for f in funds]))),
            "fund_payamt": pa.array(gather(np.concatenate([f.paid[f.applies] for f in funds]))),
            "policy_version": pa.DictionaryArray.from_arrays(
                pa.array(np.asarray(version, np.int32)[source_row][into]), pa.array(self._versions, pa.string())),
            "setl_proc_info": pa.concat_arrays(texts).take(pa.array(into)),
        })

    def _render(self, f: FundColumns, chosen: np.ndarray) -> pa.Array:
        """The fund's texts of the chosen visits: each visit's template filled with its amounts."""
        if chosen.size == 0:
            return pa.array([], pa.string())
        index = f.template[chosen]
        code = pa.array(index)

        def piece(texts):
            # a piece every template shares is a scalar: no per-row strings to gather
            return texts[0] if len(set(texts)) == 1 else pa.array(texts, pa.string()).take(code)

        parts = []
        for k, slot in enumerate(_SLOTS.get(f.code, _LAYER_SLOTS)):
            parts.append(piece([t.before[k] for t in f.templates]))
            used = np.array([t.used[k] for t in f.templates], bool)
            if used.all():
                parts.append(fen_text(f.amounts[slot][chosen]))
            elif used.any():
                parts.append(pc.if_else(pa.array(used[index]), fen_text(f.amounts[slot][chosen]), ""))
        parts.append(piece([t.tail for t in f.templates]))
        if all(isinstance(p, str) for p in parts):        # one template, no amount: the same text for all
            return pa.array(["".join(parts)] * len(chosen), pa.string())
        return pc.binary_join_element_wise(*parts, "")


def _signed(bp: int) -> str:
    return ("+" if bp >= 0 else "") + pct(bp)


class _Vector:
    """numpy over a batch's arrays (DetailBuilder._values)."""
    where, minimum, maximum, isin = np.where, np.minimum, np.maximum, np.isin

    @staticmethod
    def rules(R, rule, column):
        return R[rule, column]


class _Scalar:
    """The same operations on one visit's Python ints (no numpy per call: the real-time path)."""
    minimum, maximum = min, max

    @staticmethod
    def where(condition, a, b):
        return a if condition else b

    @staticmethod
    def isin(value, values):
        return value in values

    @staticmethod
    def rules(R, rule, column):              # R: the rules table as lists of ints
        return R[rule][column]
