"""Kernel speed: the chain at 1M and 10M visits and itemize at 10M lines, one core, against a
plain numpy copy moving the same bytes, measured in the same run.

Inputs are real: synthetic visits for the shipped packs go through the adapter once (outside the
timing); the 10M case repeats a 1M prepared block with distinct people. The input order matters:
grouped by person, each person's accumulator row is reused from cache; in settlement-time order
every visit reaches a random row of a large accumulator table (DRAM latency, about 3x slower). The limit moves the same
number of bytes as the kernel reads (its input columns) plus writes (every output column): a numpy
copy of (in + out) / 2 bytes reads and writes that many.
Targets (issue 2): >= 20M visits/s for the chain with every output column written, >= 20M lines/s
for itemize.
"""
import time

import numpy as np
import pytest

from kernel import layout
from kernel._chain import settle
from kernel._itemize import itemize
from kernel.adapter import prepare
from kernel.api import Settler, shipped_pack_path
from kernel.synth import synth_precomputed, synth_visits


def limit_copy(nbytes):
    """A numpy copy moving nbytes in total (nbytes/2 read, nbytes/2 written)."""
    src = np.ones(max(1, int(nbytes) // 16), dtype=np.int64)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def timed(fn, rounds=5, setup=None):
    best = float("inf")
    for _ in range(rounds):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.fixture(scope="module", params=[("sample_rural", "person"), ("sample_city", "person"),
                                        ("sample_rural", "time")], ids=lambda p: f"{p[0]}-{p[1]}-order")
def prepared(request, block):
    """A file grouped by person then settlement time (a person's accumulator row stays in cache),
    or in settlement-time order as a day's file comes (every visit reaches a far accumulator row).
    Both are settled in input order, with no permutation."""
    name, order = request.param
    settler = Settler.from_files(shipped_pack_path(name))
    visits = synth_precomputed(settler.pack, block, seed=11, n_persons=block // 3)
    if order == "person":
        visits = visits.sort_by([("psn_no", "ascending"), ("setl_time", "ascending")])
    return f"{name} {order} order", settler, prepare(settler.compiled, settler.catalogue, visits, None)


def tile(prep, copies):
    """copies x the prepared block, each copy with its own people (slots shifted)."""
    n_slots, n_psn = int(prep.acc_slot.max()) + 1, int(prep.psn_slot.max()) + 1
    shift = np.repeat(np.arange(copies, dtype=np.int32), len(prep.rule))
    return dict(
        item=np.ascontiguousarray(np.tile(prep.item, (1, copies))),
        **{k: np.tile(getattr(prep, k), copies) for k in
           ("rule", "group", "cats", "cause", "out_area", "referral", "bed_days", "acct_used")},
        acc_slot=np.tile(prep.acc_slot, copies) + shift * n_slots,
        psn_slot=np.tile(prep.psn_slot, copies) + shift * n_psn,
        n_slots=n_slots * copies, balance=np.tile(prep.balance, copies))


@pytest.mark.parametrize("copies", [1, 10], ids=["1M", "10M"])     # with --quick: 20k, 200k
def test_chain(benchmark, record, prepared, copies):
    name, settler, prep = prepared
    a = tile(prep, copies)
    n = len(a["rule"])
    cp = settler.compiled
    acc = np.zeros((a["n_slots"], len(layout.ACC_COLS)), np.int64)
    balance = a["balance"].copy()
    out = np.empty((len(layout.OUT_COLS), n), np.int64)
    status = np.empty(n, np.int8)
    flags = np.empty(n, np.int32)
    out.fill(0), status.fill(0), flags.fill(0)          # pages touched before timing, for both sides

    def reset():
        acc.fill(0)
        balance[:] = a["balance"]

    def run():
        settle(cp.rules, cp.diseases, cp.bands, cp.n_groups, a["item"], a["rule"], a["group"], a["cats"],
               a["cause"], a["out_area"], a["referral"], a["bed_days"], a["acct_used"], a["acc_slot"],
               a["psn_slot"], acc, balance, layout.MODE_SETTLE, out, status, flags)

    in_bytes = sum(a[k].nbytes for k in ("item", "rule", "group", "cats", "cause", "out_area", "referral",
                                         "bed_days", "acct_used", "acc_slot", "psn_slot"))
    out_bytes = out.nbytes + status.nbytes + flags.nbytes
    copy = limit_copy(in_bytes + out_bytes)
    copy()
    benchmark.pedantic(run, setup=reset, rounds=5, iterations=1)
    kernel_s = benchmark.stats.stats.min
    limit_s = timed(copy)
    record(f"chain {name} {n / 1e6:g}M", rate=n / kernel_s, limit_rate=n / limit_s,
           target=20_000_000, bytes_per_visit=(in_bytes + out_bytes) / n)
    # the run really settled: identities of section 7 on what it wrote
    c = {k: out[i] for i, k in enumerate(layout.OUT_COLS)}
    assert (c["medfee_sumamt"] == c["fund_pay_sumamt"] + c["psn_part_amt"] + c["hosp_part_amt"]).all()


@pytest.fixture(scope="module")
def lines_block(block):
    settler = Settler.from_files(shipped_pack_path("sample_rural"))
    visits, lines = synth_visits(settler.pack, settler.catalogue, block // 5, seed=5)
    return settler, visits, lines


def test_itemize_10M_lines(benchmark, record, lines_block, block):
    settler, visits, lines = lines_block
    m0 = lines.num_rows
    copies = -(-10 * block // m0)                   # 10M lines (200k with --quick)
    code = np.tile(settler.catalogue.lookup(lines.column("hilist_code")).astype(np.int32), copies)
    qty = np.tile(np.asarray(lines.column("cnt")), copies)
    price = np.tile(np.asarray(lines.column("pric")), copies)
    amount = np.tile(np.asarray(lines.column("det_item_fee_sumamt")), copies)
    per_visit = np.bincount(np.asarray(pa_index(visits, lines)), minlength=visits.num_rows)
    counts = np.tile(per_visit, copies)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = np.zeros((len(layout.ITEM_COLS), len(counts)), np.int64)
    c = settler.catalogue

    def run():
        itemize(offsets, code, qty, price, amount, c.cls, c.prepay, c.ceiling, c.essential, out)

    m = len(code)
    in_bytes = code.nbytes + qty.nbytes + price.nbytes + amount.nbytes + offsets.nbytes
    copy = limit_copy(in_bytes + out.nbytes)
    copy()
    benchmark.pedantic(run, rounds=5, iterations=1)
    record(f"itemize {m / 1e6:.0f}M lines", rate=m / benchmark.stats.stats.min, limit_rate=m / timed(copy),
           target=20_000_000)
    assert out[0].sum() == amount.sum()


def pa_index(visits, lines):
    import pyarrow.compute as pc
    return pc.index_in(lines.column("mdtrt_id"), value_set=visits.column("mdtrt_id"))
