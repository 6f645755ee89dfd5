"""The Cython kernel equals the plain-Python reference, visit by visit and field by field.

Packs are generated with every layer switched on and off (tests/packgen.py); visits come from the
synthetic generator. Over all parameters below, more than 100,000 visits are compared.
"""
import numpy as np
import pyarrow as pa
import pytest

from kernel import reference
from kernel.api import Settler
from kernel.catalogue import default_catalogue
from kernel.layout import OUT_COLS
from kernel.policy import pack_from_raw
from kernel.synth import synth_precomputed, synth_visits
from packgen import LAYERS, random_pack_raw

CATALOGUE = None


def catalogue():
    global CATALOGUE
    if CATALOGUE is None:
        CATALOGUE = default_catalogue()
    return CATALOGUE


def compare(pack, visits: pa.Table, lines: pa.Table | None, mode):
    settler = Settler(pack, catalogue())
    kernel_rows = settler.settle_table(visits, lines, mode=mode).table.to_pylist()
    by_visit = None
    if lines is not None:
        by_visit = {}
        for line in lines.to_pylist():
            by_visit.setdefault(line["mdtrt_id"], []).append(line)
    ref_rows = reference.settle_many(pack, settler.reference_catalogue(), visits.to_pylist(), by_visit, mode=mode)
    assert len(kernel_rows) == len(ref_rows)
    for k, (got, want) in enumerate(zip(kernel_rows, ref_rows)):
        diffs = {name: (got[name], want[name]) for name in OUT_COLS + ["status"] if got[name] != want[name]}
        if diffs:
            visit = visits.slice(k, 1).to_pylist()[0]
            pytest.fail(f"visit {visit['mdtrt_id']} (row {k + 1}) differs (kernel, reference): {diffs}\n"
                        f"visit: {visit}\nkernel: {got}\nreference: {want}")
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
