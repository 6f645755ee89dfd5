"""What each layer of the chain costs: the kernel on the same 1M visits under packs that switch one
layer on at a time (over a base of deductible + basic fund), and every layer on, in one run; the
visits grouped by person, and every layer on once more in settlement-time order (each visit reaches
a random accumulator row, as a day's file does).

    pytest bench/test_layer_cost.py            (--quick: 20k visits, a check that it runs)

Target (issue 3): with every layer on, at least 15M visits/s on one core.
"""
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kernel import layout
from kernel._chain import settle
from kernel.adapter import prepare
from kernel.api import Settler
from kernel.catalogue import default_catalogue
from kernel.policy import pack_from_raw
from kernel.synth import synth_precomputed

# the tests' pack generator, after the installed packages (kernel stays what this session imports)
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from packgen import LAYERS, random_pack_raw  # noqa: E402

BASE = {"deductible", "basic_cap"}
CASES = [("base: deductible + basic fund", BASE, "person")] + \
        [(f"+ {layer}", BASE | {layer}, "person") for layer in LAYERS if layer not in BASE] + \
        [("every layer", set(LAYERS), "person"),
         ("every layer, settlement-time order", set(LAYERS), "time")]


def kernel_rate(pack, n, order="person"):
    """Visits per second of the chain alone (best of 5). order "person": grouped by person, then by
    time (see test_kernel_speed); "time": as the synth writes them, by settlement time."""
    settler = Settler(pack, default_catalogue())
    visits = synth_precomputed(pack, n, seed=21, n_persons=n // 3)
    if order == "person":
        visits = visits.sort_by([("psn_no", "ascending"), ("setl_time", "ascending")])
    p = prepare(settler.compiled, settler.catalogue, visits, None)
    assert p.in_input_order                 # no permutation: the kernel sees the visits in this order
    cp = settler.compiled
    acc = np.zeros((len(p.slot_psn), len(layout.ACC_COLS)), np.int64)
    out = np.zeros((len(layout.OUT_COLS), n), np.int64)
    status = np.zeros(n, np.int8)
    flags = np.zeros(n, np.int32)
    best = float("inf")
    for _ in range(5):
        acc.fill(0)
        balance = p.balance.copy()
        t0 = time.perf_counter()
        settle(cp.rules, cp.diseases, cp.bands, cp.n_groups, p.item, p.rule, p.group, p.cats, p.cause,
               p.out_area, p.referral, p.bed_days, p.acct_used, p.acc_slot, p.psn_slot, acc, balance,
               layout.MODE_SETTLE, out, status, flags)
        best = min(best, time.perf_counter() - t0)
    return n / best


@pytest.mark.parametrize("name,layers,order", CASES, ids=[c[0] for c in CASES])
def test_layer_cost(record, block, name, layers, order):
    pack = pack_from_raw(random_pack_raw(7, layers=layers), name)
    record(f"layers: {name}", rate=kernel_rate(pack, block, order), target=15_000_000)
