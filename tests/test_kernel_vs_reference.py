"""The Cython kernel equals the plain-Python reference, visit by visit and field by field.

Packs are generated with every layer switched on and off (tests/packgen.py); visits come from the
synthetic generator. Over all parameters below, more than 100,000 visits are compared.
"""
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from kernel import reference
from kernel.api import Settler
from kernel.catalogue import default_catalogue
from kernel.layout import FLAGS, OUT_COLS
from kernel.policy import pack_from_raw
from kernel.synth import synth_precomputed, synth_visits
from packgen import LAYERS, random_pack_raw

CATALOGUE = None
FLAG_BITS = {name: 1 << i for i, name in enumerate(FLAGS)}
FLAG_COUNTS = Counter()     # how often each flag was set in the compared visits (coverage)


def catalogue():
    global CATALOGUE
    if CATALOGUE is None:
        CATALOGUE = default_catalogue()
    return CATALOGUE


def compare(pack, visits: pa.Table, lines: pa.Table | None, mode):
    """Every result column, status and flag of every visit, then the accumulator rows and the
    account balances after the batch."""
    settler = Settler(pack, catalogue())
    batch = settler.settle_table(visits, lines, mode=mode)
    kernel_rows = batch.table.to_pylist()
    by_visit = None
    if lines is not None:
        by_visit = {}
        for line in lines.to_pylist():
            by_visit.setdefault(line["mdtrt_id"], []).append(line)
    ref = reference.settle_batch(pack, settler.reference_catalogue(), visits.to_pylist(), by_visit, mode=mode)
    assert len(kernel_rows) == len(ref.results)
    for k, (got, want) in enumerate(zip(kernel_rows, ref.results)):
        diffs = {name: (got[name], want[name]) for name in OUT_COLS + ["status", "reason", "flags"]
                 if got[name] != want[name]}
        if diffs:
            visit = visits.slice(k, 1).to_pylist()[0]
            pytest.fail(f"visit {visit['mdtrt_id']} (row {k + 1}) differs (kernel, reference): {diffs}\n"
                        f"visit: {visit}\nkernel: {got}\nreference: {want}")
    kernel_acc = {(row.pop("psn_no"), row.pop("insutype"), row.pop("year")): row
                  for row in batch.accumulators.to_pylist()}
    ref_acc = {key: acc.as_layout_dict() for key, acc in ref.accumulators.items()}
    assert set(kernel_acc) == set(ref_acc)
    for key, want in ref_acc.items():
        assert kernel_acc[key] == want, f"accumulators of {key} differ"
    kernel_balance = dict(zip(batch.balances.column("psn_no").to_pylist(),
                              batch.balances.column("balc").to_pylist()))
    assert kernel_balance == ref.balances
    FLAG_COUNTS.update(name for row in kernel_rows for name, bit in FLAG_BITS.items() if row["flags"] & bit)
    return len(kernel_rows)


@pytest.mark.parametrize("seed", range(10))
def test_precomputed_visits_random_layers(seed):
    pack = pack_from_raw(random_pack_raw(seed), f"random-{seed}")
    visits = synth_precomputed(pack, 8_000, seed=seed, n_persons=1_500)
    assert compare(pack, visits, None, "settle") == 8_000


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_alone(layer):
    """One layer on, the rest off, with line items: a layer's own arithmetic is isolated."""
    pack = pack_from_raw(random_pack_raw(100 + LAYERS.index(layer), layers={layer, "deductible"}), layer)
    visits, lines = synth_visits(pack, catalogue(), 1_500, seed=7, n_persons=300)
    compare(pack, visits, lines, "settle")


@pytest.mark.parametrize("seed", range(5))
def test_line_items_all_layers(seed):
    pack = pack_from_raw(random_pack_raw(200 + seed, layers=set(LAYERS)), f"all-{seed}")
    visits, lines = synth_visits(pack, catalogue(), 2_000, seed=seed, n_persons=400)
    compare(pack, visits, lines, "settle")


@pytest.mark.parametrize("mode", ["settle", "presettle"])
def test_pending_causes(mode):
    pack = pack_from_raw(random_pack_raw(300, layers=set(LAYERS)), "pending")
    visits, lines = synth_visits(pack, catalogue(), 1_500, seed=3, n_persons=300, pending_share=0.1)
    status = np.asarray(Settler(pack, catalogue()).settle_table(visits, lines, mode=mode).table
                        .column("status").cast(pa.string()).to_pylist())
    assert (status == ("REFUSED" if mode == "settle" else "PROVISIONAL")).any()
    compare(pack, visits, lines, mode)
