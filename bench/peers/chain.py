"""The chain every peer implements: the pack subset, its parameter table, the visits, the check.

The kernel settles any pack; the peers (plain-Python reference, Polars, DuckDB SQL) settle the
part of the chain all of them can express, so they are timed on exactly the same work:

- step 4, deductible per admission by (version, med type, level), waived for listed categories:
  ``ded = 0 if waived else min(amount, I)``; ``elig = I - ded``;
- step 5, basic fund: ``raw = rh(elig * ratio)``, annual cap per (person, year, pool);
- step 7, serious illness: per-admission trigger ``T > threshold``, bands over ``[0, S)`` where
  ``S = I - hifp`` (in-scope self-pay after the capped basic fund), ``raw = rh(sum overlap * rate)``,
  annual cap per (person, year) (none in some versions);
- step 9, assistance for listed categories: ``raw = rh(max(0, S - hifmi - ded) * ratio)``, annual cap;
- totals: ``fund = hifp + hifmi + maf``, ``psn_part = psn_cash = T - fund``.

Money is int64 fen, ratios bp, ``rh(x) = (x + 5000) // 10000``, no floats anywhere.

Annual caps without a loop (the peers are set-based). Sequentially, with raw_k >= 0 the k-th
visit's raw amount in a person's year (settlement-time order), cap_k >= 0 the cap in force at
visit k and P_k the amount paid so far (P_0 = 0), a capped layer pays
``pay_k = min(raw_k, max(0, cap_k - P_{k-1}))``. If the caps never fall within a year
(cap_k <= cap_{k+1}; "no cap" is +infinity), then

    P_k = R_k + min(0, min_{j <= k} (cap_j - R_j)),  R_k = raw_1 + ... + raw_k,
    pay_k = P_k - P_{k-1}.

Proof: by induction P_{k-1} <= cap_{k-1} <= cap_k, so the max(0, .) never bites and
P_k = P_{k-1} + min(raw_k, cap_k - P_{k-1}) = min(P_{k-1} + raw_k, cap_k) <= cap_k. Unrolling
P_k = min(cap_k, P_{k-1} + raw_k) gives P_k = min(R_k, min_j (cap_j + R_k - R_j)): the last
visit j at which the cap bound, plus everything raw since. For a constant cap this is the
familiar ``min(cap, cumsum(raw))`` (R is non-decreasing, so the minimum is at j = k). Both
peers compute it with a running sum and a running minimum over the person's window, ordered by
settlement time (ties by input row, as the kernel and the reference order them). A layer whose
input depends on an earlier capped output (S depends on hifp; assistance on hifmi) is a later
stage: its window runs over the finished column of the stage before. ``check_pack`` refuses a
pack whose caps fall from one version to the next, or that uses any layer outside this subset.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from kernel.policy import Pack, load_pack

PACK_PATH = Path(__file__).with_name("bench_pack.toml")
NO_CAP = 2**62                  # "no annual cap": larger than any cumulative amount
BAND_SLOTS = 4                  # serious-illness bands per version the parameter table holds
_EPOCH_ORD = 719163             # datetime.date(1970, 1, 1).toordinal()

# The result columns every implementation produces, compared to the fen.
COMPARED = ["act_pay_dedc", "pool_prop_selfpay", "hifp_pay", "hifmi_pay", "maf_pay",
            "fund_pay_sumamt", "psn_part_amt", "psn_cash_pay"]
# The visit columns the peers read.
INPUT_COLUMNS = ["mdtrt_id", "psn_no", "insutype", "psn_cats", "medins_lv", "med_type", "enddate",
                 "setl_time", "inj_cause", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                 "inscp_scp_amt"]


class OutsideSubset(ValueError):
    """The pack uses something the peers do not implement."""


def bench_pack() -> Pack:
    return load_pack(PACK_PATH)


def bench_visits(pack: Pack, n: int, seed: int = 0, n_persons: int | None = None) -> pa.Table:
    """Visits with precomputed step-1 amounts (kernel.synth), valid for the pack."""
    from kernel.synth import synth_precomputed
    return synth_precomputed(pack, n, seed=seed, n_persons=n_persons)


def _cap(cap) -> int:
    return NO_CAP if cap is None else int(cap)


def _pool_cap(pool) -> int:
    if pool is None:
        return NO_CAP
    if pool.cap_formula is not None:
        f = pool.cap_formula
        return max(f.multiplier * f.benchmark, f.floor or 0)
    return _cap(pool.cap)


def check_pack(pack: Pack) -> None:
    """Raise OutsideSubset unless the peers settle this pack exactly as the kernel does."""
    def no(cond, what):
        if cond:
            raise OutsideSubset(f"pack {pack.name}: {what} is outside the peers' chain")
    no(len(pack.schemes) != 1, "more than one scheme")
    no(pack.disease_groups, "disease groups")
    scheme = pack.schemes[0]
    no(scheme.personal_account, "personal accounts")
    no(scheme.governing_date != "discharge", "a governing date other than discharge")
    versions = sorted(scheme.versions, key=lambda v: v.effective_from)
    for v in versions:
        no(v.excluded_causes, f"version {v.id}: excluded injury causes")
        no(v.diseases, f"version {v.id}: disease rules")
        adj = v.adjustments
        no(adj.categories or adj.out_of_area_filed is not None or adj.out_of_area_unfiled is not None
           or adj.referral_required_levels or adj.no_referral is not None, f"version {v.id}: ratio adjustments")
        no(v.large_amount or v.civil_servant or v.guaranteed_minimum,
           f"version {v.id}: large-amount, civil-servant or guaranteed-minimum layers")
        for m in pack.med_types:
            rule = v.med_types.get(m.code)
            no(rule is None, f"version {v.id}: med type {m.code} not covered")
            no(rule.bands or rule.essential_drugs is not None, f"version {v.id}: basic-fund bands or uplift")
            d = rule.deductible
            no(d.kind != "per_admission" or d.nth_admission, f"version {v.id}: annual or nth deductible")
        mi = v.serious_illness
        if mi is not None:
            no(mi.form != "bands" or mi.trigger != "per_admission" or mi.base != "inscope_selfpay",
               f"version {v.id}: serious illness other than per-admission bands on in-scope self-pay")
            no(len(mi.bands) > BAND_SLOTS, f"version {v.id}: more than {BAND_SLOTS} bands")
    # the closed form of the annual caps needs caps that never fall within a year
    for a, b in zip(versions, versions[1:]):
        for pool in ("inpatient", "outpatient"):
            no(_pool_cap(b.pools.get(pool)) < _pool_cap(a.pools.get(pool)), f"{pool} cap falling at {b.id}")
        for name in ("serious_illness", "assistance"):
            la, lb = getattr(a, name), getattr(b, name)
            no(lb is not None and la is not None and _cap(lb.cap) < _cap(la.cap), f"{name} cap falling at {b.id}")
        no(a.effective_to is None, f"open-ended version {a.id} before {b.id}")


def params(pack: Pack) -> pa.Table:
    """One row per (version, med type, level): every number the peers' chain reads, from the Structs."""
    check_pack(pack)
    bit = {c: i for i, c in enumerate(pack.categories)}

    def mask(names):
        return sum(1 << bit[c] for c in names)

    scheme = pack.schemes[0]
    rows = []
    for vi, v in enumerate(sorted(scheme.versions, key=lambda v: v.effective_from)):
        mi, maf = v.serious_illness, v.assistance
        for m in pack.med_types:
            rule = v.med_types[m.code]
            for lv in pack.levels:
                row = {
                    "version": vi,
                    "eff_from": v.effective_from.toordinal() - _EPOCH_ORD,
                    "eff_to": (v.effective_to.toordinal() - _EPOCH_ORD) if v.effective_to else NO_CAP,
                    "med_type": m.code, "medins_lv": lv.code,
                    "pool": 0 if m.pool == "inpatient" else 1,
                    "ded_amount": int(rule.deductible.amount.get(lv.code, 0)),
                    "ded_waived_mask": mask(rule.deductible.waived_categories),
                    "ratio": int(rule.ratio.get(lv.code, 0)),
                    "hifp_cap": _pool_cap(v.pools.get(m.pool)),
                }
                mi_on = mi is not None and (mi.med_types is None or m.code in mi.med_types)
                bands = sorted(mi.bands, key=lambda b: b.start) if mi_on else []
                row.update(mi_on=int(mi_on), mi_threshold=int(mi.threshold) if mi_on else 0,
                           mi_cap=_cap(mi.cap) if mi is not None else NO_CAP)
                for k in range(BAND_SLOTS):
                    lo = int(bands[k].start) if k < len(bands) else NO_CAP
                    hi = int(bands[k + 1].start) if k + 1 < len(bands) else NO_CAP
                    row.update({f"b{k}_lo": lo, f"b{k}_hi": hi,
                                f"b{k}_rate": int(bands[k].ratio) if k < len(bands) else 0})
                maf_on = maf is not None and (maf.med_types is None or m.code in maf.med_types)
                row.update(maf_mask=mask(maf.categories) if maf_on else 0,
                           maf_ratio=int(maf.ratio) if maf_on else 0,
                           maf_ded=int(maf.deductible) if maf_on else 0,
                           maf_cap=_cap(maf.cap) if maf is not None else NO_CAP)
                rows.append(row)
    table = pa.Table.from_pylist(rows)
    return table.set_column(table.column_names.index("version"), "version",
                            table.column("version").cast(pa.int32()))


def category_bits(pack: Pack, table: pa.Table) -> dict[str, int]:
    """The categories the parameter table refers to -> their bit (the peers test only these)."""
    used = 0
    for name in ("ded_waived_mask", "maf_mask"):
        for m in table.column(name).to_pylist():
            used |= m
    return {c: i for i, c in enumerate(pack.categories) if used >> i & 1}


def check_visits(visits: pa.Table) -> None:
    """The peers implement no injury-cause rules: every visit must have none."""
    import pyarrow.compute as pc
    if "inj_cause" in visits.column_names:
        bad = pc.sum(pc.invert(pc.equal(visits.column("inj_cause").fill_null("none"), "none"))).as_py()
        if bad:
            raise OutsideSubset(f"{bad} visits carry an injury cause")


def kernel_columns(result_table: pa.Table) -> dict[str, np.ndarray]:
    """The compared columns of Settler.settle_table's result, as numpy, input order."""
    return {c: result_table.column(c).to_numpy() for c in COMPARED}


def disagreements(expected: dict, got: dict, limit: int = 5) -> list[str]:
    """Where two results differ (empty when equal to the fen): column, row, both values."""
    out = []
    for c in COMPARED:
        a, b = np.asarray(expected[c]), np.asarray(got[c])
        if a.shape != b.shape:
            out.append(f"{c}: {a.shape[0]} rows against {b.shape[0]}")
            continue
        bad = np.flatnonzero(a != b)
        if bad.size:
            rows = ", ".join(f"row {i}: {int(a[i])} != {int(b[i])}" for i in bad[:limit])
            out.append(f"{c}: {bad.size} rows differ ({rows})")
    return out
