"""Quick micro-benchmark of the Cython kernels against a numpy copy of the same bytes, in one run.

    python bench/bench_kernel_quick.py [n_visits]

settle: n visits (default 10M) over three hand-built rule rows (rural county inpatient with serious
illness and assistance; employee level 3 with large-amount subsidy and account; resident outpatient
with year-origin bands), ~5 visits per person in slot order. itemize: 5 lines per visit over a
10,000-code catalogue. The peer is np.copyto of a buffer holding as many bytes as the kernel reads
(its input columns) plus writes (its output columns); ratio = kernel time / copy time.
Best of 5 each, interleaved; these machines are shared and noisy, so compare the ratio, not the absolute rate.
"""
import sys
import time

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, no install

from kernel import layout
from kernel._chain import settle
from kernel._itemize import itemize

K = layout.as_constants()
N_RULE, N_DIS, N_ACC, N_ITEM, N_OUT = K["N_RULE"], K["N_DIS"], K["N_ACC"], K["N_ITEM"], K["N_OUT"]
BAND_MAX, BAND_UNUSED = K["BAND_MAX"], K["BAND_UNUSED"]


def best_of(fns, repeat=5):
    """Best time of each function, run interleaved so that both see the same machine load."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def rule_row(**cols):
    row = np.zeros(N_RULE, np.int64)
    base = dict(R_COVERED=1, R_DED_NTH_1=10000, R_DED_NTH_2=10000, R_DED_NTH_3=10000, R_BANDSET=-1,
                R_CAP=-1, R_OB_CAP=-1, R_MI_CAP=-1, R_CVL_CAP=-1, R_MAF_CAP=-1)
    for name, value in {**base, **cols}.items():
        row[K[name]] = value
    return row


def band_row(*pairs):
    row = np.zeros(2 * BAND_MAX, np.int64)
    row[0::2] = BAND_UNUSED
    for k, (edge, rate) in enumerate(pairs):
        row[2 * k], row[2 * k + 1] = edge, rate
    return row


def tables():
    rules = np.array([
        rule_row(R_COUNTS_ADMISSION=1, R_EXCLUDED_CAUSES=0b10, R_PENDING_CAUSES=1 << 9,
                 R_DED_AMOUNT=30_000, R_DED_WAIVED_CATS=0b1100, R_BASE_RATIO=8500, R_CAP=5_337_600,
                 R_MI_FORM=1, R_MI_THRESHOLD=1_000_000, R_MI_BANDSET=0, R_MI_CAP=25_000_000,
                 R_MAF_CATS=0b1100, R_MAF_RATIO=5000, R_MAF_CAP=3_000_000),
        rule_row(R_COUNTS_ADMISSION=1, R_DED_AMOUNT=100_000, R_BASE_RATIO=8500, R_CAT_DELTA_0=500,
                 R_ESS_UPLIFT=1000, R_CAP=12_000_000, R_OB_RATIO=9000, R_OB_CAP=20_000_000, R_ACCT=1),
        rule_row(R_POOL=1, R_BANDSET=1, R_BAND_ORIGIN=1),
    ])
    n_groups = 2
    diseases = np.zeros((len(rules) * n_groups, N_DIS), np.int64)
    diseases[0 * n_groups + 1, K["D_FLOOR"]] = 7000
    diseases[1 * n_groups + 1, K["D_QUOTA_MODE"]] = 1
    diseases[1 * n_groups + 1, K["D_QUOTA_AMOUNT"]] = 600_000
    bands = np.array([band_row((0, 5000), (3_000_000, 6000), (10_000_000, 7000)),
                      band_row((0, 0), (5_000, 5000), (45_000, 0))])
    return rules, diseases, bands, n_groups


def bench_settle(n):
    rng = np.random.default_rng(1)
    rules, diseases, bands, n_groups = tables()
    item = np.zeros((N_ITEM, n), np.int64)
    item[1] = rng.integers(0, 500_000, n)
    item[2] = rng.integers(0, 50_000, n) * (rng.random(n) < 0.2)
    item[3] = rng.integers(0, 100_000, n)
    item[4] = rng.integers(0, 5_000_000, n)
    item[5] = item[4] // 4
    item[0] = item[1:5].sum(axis=0)
    cols = dict(
        rule=rng.integers(0, len(rules), n).astype(np.int32),
        group=rng.integers(0, n_groups, n).astype(np.int16),
        cats=rng.choice([0, 0, 0, 1, 4], n).astype(np.int16),
        cause=rng.choice([0] * 50 + [1, 9], n).astype(np.int8),
        out_area=np.zeros(n, np.int8),
        referral=np.ones(n, np.int8),
        bed_days=rng.integers(1, 30, n).astype(np.int32),
        acct_used=rng.integers(0, 2, n).astype(np.int8),
    )
    n_psn = max(1, n // 5)
    acc_slot = np.sort(rng.integers(0, n_psn, n)).astype(np.int32)
    psn_slot = acc_slot.copy()
    acc = np.zeros((n_psn, N_ACC), np.int64)
    balance = np.full(n_psn, 1_000_000, np.int64)
    out = np.empty((N_OUT, n), np.int64)
    status = np.empty(n, np.int8)
    flags = np.empty(n, np.int32)

    def run():
        acc[:] = 0          # a fresh year each repeat (outside the timing would be fairer, but it is small)
        balance[:] = 1_000_000
        settle(rules, diseases, bands, n_groups, item, cols["rule"], cols["group"], cols["cats"],
               cols["cause"], cols["out_area"], cols["referral"], cols["bed_days"], cols["acct_used"],
               acc_slot, psn_slot, acc, balance, K["MODE_SETTLE"], out, status, flags)

    def reset_only():
        acc[:] = 0
        balance[:] = 1_000_000

    in_bytes = item.nbytes + sum(a.nbytes for a in cols.values()) + acc_slot.nbytes + psn_slot.nbytes
    out_bytes = out.nbytes + status.nbytes + flags.nbytes
    src = np.ones(in_bytes + out_bytes, np.uint8)
    dst = np.empty_like(src)
    t_copy, t_run, t_reset = best_of([lambda: np.copyto(dst, src), run, reset_only])
    t_kernel = t_run - t_reset
    return n, t_kernel, t_copy, in_bytes, out_bytes, status


def bench_itemize(n, lines_per_visit=5, k=10_000):
    rng = np.random.default_rng(2)
    m = n * lines_per_visit
    cat_class = rng.integers(0, 3, k).astype(np.int8)
    cat_prepay = rng.choice([0, 1000, 2000], k).astype(np.int64)
    cat_ceiling = np.where(rng.random(k) < 0.3, rng.integers(100, 10_000, k), 0)
    cat_essential = (rng.random(k) < 0.2).astype(np.int8)
    code = rng.integers(-1, k, m).astype(np.int32)
    qty = rng.integers(1, 10, m)
    price = rng.integers(1, 20_000, m)
    amount = qty * price
    offsets = np.arange(0, m + 1, lines_per_visit, dtype=np.int64)
    out = np.empty((N_ITEM, n), np.int64)

    def run():
        itemize(offsets, code, qty, price, amount, cat_class, cat_prepay, cat_ceiling, cat_essential,
                out)

    in_bytes = offsets.nbytes + code.nbytes + qty.nbytes + price.nbytes + amount.nbytes
    src = np.ones(in_bytes + out.nbytes, np.uint8)
    dst = np.empty_like(src)
    t_copy, t_kernel = best_of([lambda: np.copyto(dst, src), run])
    return m, t_kernel, t_copy, in_bytes, out.nbytes


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    n, t, t_copy, in_b, out_b, status = bench_settle(n)
    print(f"settle : {n:,} visits in {t:.3f} s = {n / t / 1e6:.1f} M visits/s; "
          f"numpy copy of the same {(in_b + out_b) / n:.0f} B/visit ({(in_b + out_b) / 1e9:.2f} GB) "
          f"{t_copy:.3f} s = {(in_b + out_b) / t_copy / 1e9:.1f} GB/s; kernel/copy = {t / t_copy:.2f}")
    print(f"         statuses {np.bincount(status, minlength=5).tolist()}")
    m, t, t_copy, in_b, out_b = bench_itemize(n)
    print(f"itemize: {m:,} lines in {t:.3f} s = {m / t / 1e6:.1f} M lines/s; "
          f"numpy copy of the same {(in_b + out_b) / m:.0f} B/line ({(in_b + out_b) / 1e9:.2f} GB) "
          f"{t_copy:.3f} s; kernel/copy = {t / t_copy:.2f}")


if __name__ == "__main__":
    main()
