"""Policy compiler: a validated Pack -> dense int64 tables for the kernel, and the code maps the
Python adapter needs to turn visit columns into kernel inputs.

The tables are exactly those of docs/design.md "Compiled tables", with the columns of
kernel/layout.py:

- ``rules``     (n_versions * n_med_types * n_levels, N_RULE), row
  ``(version * n_med_types + med_type) * n_levels + level``;
- ``diseases``  (n_rules * n_groups, N_DIS), row ``rule * n_groups + group``; group 0 = none (zeros);
- ``bands``     (n_bandsets, 2 * BAND_MAX), pairs (lower edge fen, rate bp), unused edge BAND_UNUSED.
  When the pack has no bands at all the table holds one unused row, so it is never empty.

Everything a visit needs is looked up on the few distinct values of a column and spread back with
numpy, never with a Python loop per visit.
"""
from __future__ import annotations

import datetime
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .layout import BAND_MAX, BAND_UNUSED, DISEASE_COLS, RULE_COLS
from .policy import Pack, Version, once_a_year_bits

R = {name: i for i, name in enumerate(RULE_COLS)}
D = {name: i for i, name in enumerate(DISEASE_COLS)}
N_RULE, N_DIS = len(RULE_COLS), len(DISEASE_COLS)

_EPOCH = datetime.date(1970, 1, 1)
NO_DATE = np.iinfo(np.int64).min          # a missing date: no version is in force
_OPEN_END = np.iinfo(np.int64).max         # effective_to absent


class VersionInfo(NamedTuple):
    """One policy version in compiled order (index = version number in the rule rows)."""
    scheme: str
    id: str
    effective_from: datetime.date
    effective_to: datetime.date | None     # inclusive; None = open-ended
    governing_date: str                    # "admission" | "discharge" | "settlement"


def _days(d: datetime.date) -> int:
    return (d - _EPOCH).days


def _cap(cap, formula=None) -> int:
    """fen, -1 = none; a formula is max(multiplier * benchmark, floor) (design.md)."""
    if formula is not None:
        return max(formula.multiplier * formula.benchmark, formula.floor or 0)
    return -1 if cap is None else int(cap)


def _applies(layer, med_type: str) -> bool:
    """A layer is on for a med type unless its med_types list leaves it out."""
    return layer is not None and (layer.med_types is None or med_type in layer.med_types)


def _mask(names, bit_of) -> int:
    out = 0
    for name in names:
        out |= 1 << bit_of[name]
    return out


class CompiledPack:
    """The compiled tables of one pack and the maps from visit codes to kernel inputs.

    Attributes: ``pack``, ``rules``, ``diseases``, ``bands`` (int64, C-contiguous);
    ``n_versions``, ``n_med_types``, ``n_levels``, ``n_groups``, ``n_rules``, ``n_bandsets``;
    ``scheme_index``, ``med_type_index``, ``level_index``, ``category_bit``, ``cause_index``,
    ``group_index`` (code -> int); ``scheme_codes``, ``med_type_codes``, ``level_codes``,
    ``group_codes`` (index -> code; ``group_codes[0] == ""`` is "no group"); ``versions`` (list of
    VersionInfo in compiled order); ``version_scheme`` (int16 scheme index per version);
    ``scheme_governing_date``, ``scheme_personal_account`` (per scheme); ``med_type_pool``
    (0 inpatient, 1 outpatient, per med type); ``labels`` (str per version).
    """

    def __init__(self, pack: Pack):
        self.pack = pack
        self.scheme_codes = [s.code for s in pack.schemes]
        self.med_type_codes = [m.code for m in pack.med_types]
        self.level_codes = [lv.code for lv in pack.levels]
        self.group_codes = [""] + [g.code for g in pack.disease_groups]
        self.scheme_index = {c: i for i, c in enumerate(self.scheme_codes)}
        self.med_type_index = {c: i for i, c in enumerate(self.med_type_codes)}
        self.level_index = {c: i for i, c in enumerate(self.level_codes)}
        self.category_bit = {c: i for i, c in enumerate(pack.categories)}
        self.cause_index = {c: i for i, c in enumerate(pack.injury_causes)}
        self.group_index = {c: i for i, c in enumerate(self.group_codes) if i}
        self.scheme_governing_date = [s.governing_date for s in pack.schemes]
        self.scheme_personal_account = [s.personal_account for s in pack.schemes]
        self.med_type_pool = np.array([0 if m.pool == "inpatient" else 1 for m in pack.med_types], np.int8)

        self.versions: list[VersionInfo] = []
        version_scheme = []
        for si, scheme in enumerate(pack.schemes):
            for v in scheme.versions:
                self.versions.append(VersionInfo(scheme.code, v.id, v.effective_from, v.effective_to,
                                                 scheme.governing_date))
                version_scheme.append(si)
        self.version_scheme = np.array(version_scheme, np.int16)
        self.labels = [f"{pack.name}/{v.scheme}/{v.id}" for v in self.versions]

        self.n_versions = len(self.versions)
        self.n_med_types = len(self.med_type_codes)
        self.n_levels = len(self.level_codes)
        self.n_groups = len(self.group_codes)
        self.n_rules = self.n_versions * self.n_med_types * self.n_levels

        # Per scheme: versions sorted by start, for version_index (validate forbids overlaps).
        self._spans = []
        base = 0
        for scheme in pack.schemes:
            order = sorted(range(len(scheme.versions)), key=lambda i: scheme.versions[i].effective_from)
            starts = np.array([_days(scheme.versions[i].effective_from) for i in order], np.int64)
            ends = np.array([_OPEN_END if scheme.versions[i].effective_to is None
                             else _days(scheme.versions[i].effective_to) for i in order], np.int64)
            self._spans.append((starts, ends, np.array([base + i for i in order], np.int32)))
            base += len(scheme.versions)

        # ICD-10 prefix -> [(group, min_age, max_age, required secondary prefixes)] in pack order.
        self._prefixes: dict[str, list[tuple[int, int | None, int | None, tuple[str, ...]]]] = {}
        for gi, g in enumerate(pack.disease_groups, start=1):
            for prefix in g.icd10:
                self._prefixes.setdefault(prefix.upper(), []).append(
                    (gi, g.min_age, g.max_age, tuple(p.upper() for p in g.secondary)))

        self._once_bit = once_a_year_bits(pack)
        self._bandsets: dict[tuple, int] = {}
        self.rules = np.zeros((self.n_rules, N_RULE), np.int64)
        self.diseases = np.zeros((self.n_rules * self.n_groups, N_DIS), np.int64)
        vi = 0
        for si, scheme in enumerate(pack.schemes):
            for version in scheme.versions:
                for mi, mt in enumerate(pack.med_types):
                    for li, level in enumerate(self.level_codes):
                        row = (vi * self.n_med_types + mi) * self.n_levels + li
                        self._fill_rule(self.rules[row], scheme, version, mt, level)
                        if self.rules[row, R["R_COVERED"]]:
                            self._fill_diseases(row, version, mt.code, level)
                vi += 1
        bands = np.zeros((max(1, len(self._bandsets)), 2 * BAND_MAX), np.int64)
        bands[:, 0::2] = BAND_UNUSED
        for key, b in self._bandsets.items():
            for k, (start, ratio) in enumerate(key):
                bands[b, 2 * k], bands[b, 2 * k + 1] = start, ratio
        self.bands = bands
        self.n_bandsets = len(self._bandsets)

    # --- compiling ----------------------------------------------------------------------------

    def _bandset(self, bands) -> int:
        key = tuple((int(b.start), int(b.ratio)) for b in bands)
        return self._bandsets.setdefault(key, len(self._bandsets))

    def _fill_rule(self, r, scheme, version: Version, mt, level: str) -> None:
        cat, cause = self.category_bit, self.cause_index
        r[R["R_POOL"]] = 0 if mt.pool == "inpatient" else 1
        r[R["R_COUNTS_ADMISSION"]] = int(mt.admission)
        r[R["R_EXCLUDED_CAUSES"]] = _mask(version.excluded_causes, cause)
        r[R["R_PENDING_CAUSES"]] = _mask(version.pending_causes, cause)
        r[R["R_ACCT"]] = int(scheme.personal_account)
        for name in ("R_DED_NTH_1", "R_DED_NTH_2", "R_DED_NTH_3"):
            r[R[name]] = 10000
        for name in ("R_CAP", "R_OB_CAP", "R_MI_CAP", "R_CVL_CAP", "R_MAF_CAP", "R_BANDSET", "R_MI_BANDSET"):
            r[R[name]] = -1
        rule = version.med_types.get(mt.code)
        if rule is None:
            return                                   # R_COVERED 0: every fund pays 0
        r[R["R_COVERED"]] = 1

        # step 4, deductible
        ded = rule.deductible
        r[R["R_DED_KIND"]] = 0 if ded.kind == "per_admission" else 1
        r[R["R_DED_AMOUNT"]] = ded.amount.get(level, 0)
        nth = list(ded.nth_admission) or [10000]
        for k, name in enumerate(("R_DED_NTH_1", "R_DED_NTH_2", "R_DED_NTH_3")):
            r[R[name]] = nth[min(k, len(nth) - 1)]   # missing entries repeat the last given
        r[R["R_DED_WAIVED_CATS"]] = _mask(ded.waived_categories, cat)

        # step 5, basic pooled fund
        if rule.bands:
            r[R["R_BANDSET"]] = self._bandset(rule.bands)
            r[R["R_BAND_ORIGIN"]] = 0 if rule.band_origin == "visit" else 1
        else:
            r[R["R_BASE_RATIO"]] = rule.ratio.get(level, 0)
        adj = version.adjustments
        for name, delta in adj.categories.items():
            r[R[f"R_CAT_DELTA_{cat[name]}"]] = delta
        r[R["R_ESS_UPLIFT"]] = rule.essential_drugs or 0
        r[R["R_OA_FILED_DELTA"]] = adj.out_of_area_filed or 0
        r[R["R_OA_UNFILED_DELTA"]] = adj.out_of_area_unfiled or 0
        r[R["R_REFERRAL_REQUIRED"]] = int(level in adj.referral_required_levels)
        r[R["R_NO_REFERRAL_DELTA"]] = adj.no_referral or 0
        pool = version.pools.get(mt.pool)
        if pool is not None:
            r[R["R_CAP"]] = _cap(pool.cap, pool.cap_formula)

        # step 6, large-amount subsidy
        la = version.large_amount
        if _applies(la, mt.code):
            r[R["R_OB_RATIO"]] = la.ratio
            r[R["R_OB_CAP"]] = _cap(la.cap)

        # step 7, serious illness
        mi = version.serious_illness
        if _applies(mi, mt.code):
            r[R["R_MI_TRIGGER"]] = 0 if mi.trigger == "per_admission" else 1
            r[R["R_MI_THRESHOLD"]] = mi.threshold
            r[R["R_MI_BASE"]] = 0 if mi.base == "inscope_selfpay" else 1
            r[R["R_MI_CAP"]] = _cap(mi.cap)
            if mi.form == "bands":
                r[R["R_MI_FORM"]] = 1
                r[R["R_MI_BANDSET"]] = self._bandset(mi.bands)
            else:
                r[R["R_MI_FORM"]] = 2
                r[R["R_MI_EFF_RATIO"]] = mi.effective_ratio
                r[R["R_MI_EFF_CATS"]] = _mask(mi.category_ratio, cat)
                r[R["R_MI_EFF_CAT_RATIO"]] = next(iter(mi.category_ratio.values()), 0)

        # step 8, civil-servant subsidy
        cvl = version.civil_servant
        if _applies(cvl, mt.code):
            r[R["R_CVL_CATS"]] = _mask(cvl.categories, cat)
            r[R["R_CVL_RATIO"]] = cvl.ratio
            r[R["R_CVL_CAP"]] = _cap(cvl.cap)

        # step 9, medical assistance
        maf = version.assistance
        if _applies(maf, mt.code):
            r[R["R_MAF_CATS"]] = _mask(maf.categories, cat)
            r[R["R_MAF_RATIO"]] = maf.ratio
            r[R["R_MAF_DED"]] = maf.deductible
            r[R["R_MAF_CAP"]] = _cap(maf.cap)

        # step 10, guaranteed minimum
        gm = version.guaranteed_minimum
        if _applies(gm, mt.code):
            r[R["R_GM_RATIO"]] = gm.ratio

    def _fill_diseases(self, rule_row: int, version: Version, med_type: str, level: str) -> None:
        for rule in version.diseases:
            if not _applies(rule, med_type):
                continue
            for code in rule.groups:
                d = self.diseases[rule_row * self.n_groups + self.group_index[code]]
                if rule.floor is not None:
                    d[D["D_FLOOR"]] = rule.floor
                if rule.override is not None:
                    d[D["D_OVERRIDE"]] = rule.override
                if rule.deductible_once_a_year:
                    d[D["D_DED_ONCE_A_YEAR"]] = self._once_bit[code]
                quota = rule.quota
                if quota is not None and level in quota.amount:   # no amount at this level: fee-for-item
                    d[D["D_QUOTA_MODE"]] = 1 if quota.mode == "single_disease" else 2
                    d[D["D_QUOTA_AMOUNT"]] = quota.amount[level]
                    d[D["D_QUOTA_RATIO"]] = quota.ratio or 0
                    d[D["D_QUOTA_DED"]] = quota.deductible or 0

    # --- visit columns -> kernel inputs ----------------------------------------------------------

    def version_index(self, scheme_idx, gov_date) -> np.ndarray:
        """int32 version per visit, -1 where the scheme is unknown (-1) or no version is in force.

        gov_date: numpy datetime64 (any unit; NaT = missing), int days since 1970-01-01, or a
        pyarrow date32/timestamp array (null = missing).
        """
        scheme = np.asarray(scheme_idx).astype(np.int64, copy=False)
        days = as_days(gov_date)
        n, n_schemes = len(days), len(self._spans)
        if n >= 4096 and scheme.size and 0 <= scheme.min() and scheme.max() < n_schemes:
            # a batch: every (scheme, day) of the days' range looked up once, then gathered (a
            # batch's dates span a few years; a missing date makes the range too wide for this)
            lo, hi = int(days.min()), int(days.max())
            span = hi - lo + 1
            if 0 < span <= 400_000 and n_schemes * span <= n:
                every_day = np.arange(lo, hi + 1, dtype=np.int64)
                table = np.concatenate([self._versions_on(np.full(span, si, np.int64), every_day)
                                        for si in range(n_schemes)])
                return table[scheme * span + (days - lo)]
        return self._versions_on(scheme, days)

    def _versions_on(self, scheme, days) -> np.ndarray:
        """version_index of int64 scheme indices and days, searched per scheme."""
        out = np.full(scheme.shape, -1, np.int32)
        for si in np.unique(scheme):
            if si < 0 or si >= len(self._spans):
                continue
            starts, ends, ids = self._spans[si]
            m = scheme == si
            d = days[m]
            pos = np.searchsorted(starts, d, side="right") - 1
            at = np.maximum(pos, 0)
            out[m] = np.where((pos >= 0) & (d <= ends[at]), ids[at], -1)
        return out

    def rule_index(self, version, med_type, level) -> np.ndarray:
        """int32 rule row: (version * n_med_types + med_type) * n_levels + level; -1 if any is -1."""
        v = np.asarray(version).astype(np.int64)
        m = np.asarray(med_type).astype(np.int64)
        lv = np.asarray(level).astype(np.int64)
        rule = (v * self.n_med_types + m) * self.n_levels + lv
        return np.where((v < 0) | (m < 0) | (lv < 0), -1, rule).astype(np.int32)

    def version_of_rule(self, rule):
        """The version index of a rule row (int or array); -1 stays -1."""
        r = np.asarray(rule)
        v = np.where(r < 0, -1, r // (self.n_med_types * self.n_levels))
        return int(v) if v.ndim == 0 else v.astype(np.int32)

    def version_label(self, version=None, *, rule=None):
        """Name of a version, e.g. "sample-rural/rural/2013-aug": from a version index (or
        ``rule=`` a rule row); an array gives an object array; -1 gives ""."""
        if rule is not None:
            version = self.version_of_rule(rule)
        labels = np.array(self.labels + [""], dtype=object)    # -1 -> ""
        v = np.asarray(version)
        out = labels[np.where(v < 0, -1, v)]
        return str(out) if v.ndim == 0 else out

    def resolve_groups(self, diag, age_years) -> np.ndarray:
        """int16 disease group per visit from the diagnoses (ICD-10) and age in whole years.

        dise_codg is the main diagnosis, then optional secondary diagnoses after commas. The
        longest prefix of the main diagnosis wins among the groups whose age condition (min_age /
        max_age, inclusive) holds and whose required secondary diagnosis (``secondary``), if any,
        the visit carries; a tie goes to the group listed first. 0 = no group. Codes are compared
        upper-case without surrounding blanks. An unknown age (negative or null) fails every age
        condition. Computed once per distinct (diagnosis, age) pair.
        """
        diag = _string_array(diag)
        n = len(diag)
        ages = _int_array(age_years, n)
        diag = pc.utf8_upper(pc.utf8_trim_whitespace(diag))
        enc = diag.dictionary_encode()
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        names = enc.dictionary.to_pylist()
        k = len(names)
        fixed = np.zeros(k + 1, np.int16)          # index k (= -1) is a null diagnosis
        candidates: dict[int, list] = {}
        for j, name in enumerate(names):
            main, *secondary = [c.strip() for c in name.split(",")]
            cands = [c[:3] for length in range(len(main), 0, -1) for c in self._prefixes.get(main[:length], ())
                     if not c[3] or any(s.startswith(p) for s in secondary for p in c[3])]
            if not cands:
                continue
            if cands[0][1] is None and cands[0][2] is None:
                fixed[j] = cands[0][0]             # the best match holds at every age
            else:
                candidates[j] = cands
        out = fixed[codes]
        if candidates:
            depends = np.zeros(k + 1, bool)
            depends[list(candidates)] = True
            rows = np.nonzero(depends[codes])[0]
            age = np.clip(ages[rows], -1, 200)
            pairs, inverse = np.unique(codes[rows] * 202 + (age + 1), return_inverse=True)
            resolved = np.zeros(len(pairs), np.int16)
            for p, key in enumerate(pairs.tolist()):
                j, a = divmod(key, 202)
                a -= 1
                for group, lo, hi in candidates[j]:
                    if lo is None and hi is None or a >= 0 and (lo is None or a >= lo) and (hi is None or a <= hi):
                        resolved[p] = group
                        break
            out[rows] = resolved[inverse.reshape(-1)]
        return out

    def _lookup(self, values, index: dict, dtype, null: int = -1) -> np.ndarray:
        """code -> index per visit, -1 for an unknown code, ``null`` for a null."""
        arr = _string_array(values)
        enc = arr.dictionary_encode()
        table = np.array([index.get(c, -1) for c in enc.dictionary.to_pylist()] + [null], dtype)
        return table[enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)]

    def scheme_of(self, values) -> np.ndarray:
        """int16 scheme index per visit (insutype), -1 unknown or null."""
        return self._lookup(values, self.scheme_index, np.int16)

    def med_type_of(self, values) -> np.ndarray:
        """int16 med type index per visit, -1 unknown or null."""
        return self._lookup(values, self.med_type_index, np.int16)

    def level_of(self, values) -> np.ndarray:
        """int16 level index per visit (medins_lv), -1 unknown or null."""
        return self._lookup(values, self.level_index, np.int16)

    def cause_of(self, values) -> np.ndarray:
        """int8 injury-cause index per visit; null or "" is "none"; -1 unknown."""
        none = self.cause_index["none"]
        return self._lookup(values, {**self.cause_index, "": none}, np.int8, null=none)

    def category_mask(self, values) -> np.ndarray:
        """int16 category mask per visit from comma-separated names ("retired,low_income");
        null or "" is 0; -1 where a name is unknown."""
        arr = _string_array(values)
        enc = arr.dictionary_encode()
        table = []
        for text in enc.dictionary.to_pylist():
            mask = 0
            for name in (t.strip() for t in text.split(",")):
                if not name:
                    continue
                if name not in self.category_bit:
                    mask = -1
                    break
                mask |= 1 << self.category_bit[name]
            table.append(mask)
        table = np.array(table + [0], np.int16)
        return table[enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)]

    def governing_days(self, scheme_idx, admission, discharge, settlement) -> np.ndarray:
        """int64 days since 1970-01-01 of each visit's governing date (the scheme's choice of
        admission, discharge or settlement date); missing where the chosen date is missing."""
        scheme = np.asarray(scheme_idx).astype(np.int64, copy=False)
        by_kind = {"admission": admission, "discharge": discharge, "settlement": settlement}
        out = np.full(scheme.shape, NO_DATE, np.int64)
        cache = {}
        for si in np.unique(scheme):
            if si < 0 or si >= len(self.scheme_governing_date):
                continue
            kind = self.scheme_governing_date[si]
            if kind not in cache:
                cache[kind] = as_days(by_kind[kind])
            m = scheme == si
            out[m] = cache[kind][m]
        return out


# --- array helpers --------------------------------------------------------------------------------

def _string_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(np.asarray(values, dtype=object) if not isinstance(values, list) else values,
                          type=pa.string())
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return values


def _int_array(values, n: int) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.fill_null(-1).to_numpy(zero_copy_only=False)
    out = np.asarray(values).astype(np.int64)
    if out.ndim == 0:
        out = np.full(n, out, np.int64)
    return out


def as_days(dates) -> np.ndarray:
    """int64 days since 1970-01-01; a missing date (NaT, null) becomes a value no version covers.

    Accepts numpy datetime64 arrays, integer day arrays, and pyarrow date32/date64/timestamp arrays.
    """
    if isinstance(dates, pa.ChunkedArray):
        dates = dates.combine_chunks()
    if isinstance(dates, pa.Array):
        if pa.types.is_timestamp(dates.type) or pa.types.is_date64(dates.type):
            dates = pc.cast(dates, pa.date32())
        if pa.types.is_date32(dates.type):
            dates = dates.cast(pa.int32())
        return dates.cast(pa.int64()).fill_null(NO_DATE).to_numpy(zero_copy_only=False)
    arr = np.asarray(dates)
    if np.issubdtype(arr.dtype, np.datetime64):
        days = arr.astype("datetime64[D]")
        out = days.astype(np.int64)
        out[np.isnat(days)] = NO_DATE
        return out
    return arr.astype(np.int64)


def age_in_years(birth, on) -> np.ndarray:
    """int16 whole years from birth to the date ``on`` (both as for as_days); -1 if either is missing."""
    b, d = as_days(birth), as_days(on)
    missing = (b == NO_DATE) | (d == NO_DATE)
    b = np.where(missing, 0, b).astype("datetime64[D]")
    d = np.where(missing, 0, d).astype("datetime64[D]")
    by, dy = b.astype("datetime64[Y]"), d.astype("datetime64[Y]")
    years = dy.astype(np.int64) - by.astype(np.int64)
    # not yet had the birthday this year: (month, day) of `on` before that of birth
    b_md = (b.astype("datetime64[M]") - by.astype("datetime64[M]")).astype(np.int64) * 32 + \
        (b - b.astype("datetime64[M]")).astype(np.int64)
    d_md = (d.astype("datetime64[M]") - dy.astype("datetime64[M]")).astype(np.int64) * 32 + \
        (d - d.astype("datetime64[M]")).astype(np.int64)
    years -= (d_md < b_md)
    return np.where(missing, -1, years).astype(np.int16)


def compile_pack(pack: Pack) -> CompiledPack:
    """The dense tables and code maps of a validated pack (kernel/policy.py load_pack)."""
    return CompiledPack(pack)
