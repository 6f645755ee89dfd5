"""The Cython kernel equals the plain-Python reference, visit by visit and field by field.

Packs are generated with every layer switched on and off (tests/packgen.py); visits come from the
synthetic generator, half of the random-layer batches with chronic patients (one disease group on
all of a person's visits) so that annual caps and once-a-year deductibles are reached. Over all
parameters below, more than 100,000 visits are compared, and test_rare_paths_are_compared checks
that they exercise the rare paths hundreds of times.
"""
import functools

import numpy as np
import pyarrow as pa
import pytest

from kernel import reference
from kernel.api import Settler
from kernel.catalogue import default_catalogue
from kernel.compile import age_in_years
from kernel.layout import FLAGS, OUT_COLS
from kernel.policy import pack_from_raw
from kernel.synth import synth_precomputed, synth_visits
from packgen import LAYERS, chronic_patients, random_pack_raw

CATALOGUE = None
FLAG_BITS = {name: 1 << i for i, name in enumerate(FLAGS)}


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
    return len(kernel_rows)


# --- the compared batches (cached: test_rare_paths_are_compared counts what they exercise) ----------

@functools.cache
def random_layers_case(seed):
    pack = pack_from_raw(random_pack_raw(seed), f"random-{seed}")
    visits = synth_precomputed(pack, 8_000, seed=seed, n_persons=1_500)
    if seed >= 5:
        visits = chronic_patients(visits, pack, 0.3, seed)
    return pack, visits, None


@functools.cache
def one_layer_case(layer):
    pack = pack_from_raw(random_pack_raw(100 + LAYERS.index(layer), layers={layer, "deductible"}), layer)
    return (pack, *synth_visits(pack, catalogue(), 1_500, seed=7, n_persons=300))


@functools.cache
def all_layers_case(seed):
    pack = pack_from_raw(random_pack_raw(200 + seed, layers=set(LAYERS)), f"all-{seed}")
    visits, lines = synth_visits(pack, catalogue(), 2_000, seed=seed, n_persons=400)
    return pack, chronic_patients(visits, pack, 0.3, seed), lines


CASES = ([(random_layers_case, seed) for seed in range(10)] + [(one_layer_case, layer) for layer in LAYERS]
         + [(all_layers_case, seed) for seed in range(5)])


@pytest.mark.parametrize("seed", range(10))
def test_precomputed_visits_random_layers(seed):
    assert compare(*random_layers_case(seed), "settle") == 8_000


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_alone(layer):
    """One layer on, the rest off, with line items: a layer's own arithmetic is isolated."""
    compare(*one_layer_case(layer), "settle")


@pytest.mark.parametrize("seed", range(5))
def test_line_items_all_layers(seed):
    compare(*all_layers_case(seed), "settle")


@pytest.mark.parametrize("mode", ["settle", "presettle"])
def test_pending_causes(mode):
    pack = pack_from_raw(random_pack_raw(300, layers=set(LAYERS)), "pending")
    visits, lines = synth_visits(pack, catalogue(), 1_500, seed=3, n_persons=300, pending_share=0.1)
    status = np.asarray(Settler(pack, catalogue()).settle_table(visits, lines, mode=mode).table
                        .column("status").cast(pa.string()).to_pylist())
    assert (status == ("REFUSED" if mode == "settle" else "PROVISIONAL")).any()
    compare(pack, visits, lines, mode)


# Rare paths the comparison must reach at least this often (flags of the kernel, equal to the
# reference's on every compared visit; groups as the compiler resolves them).
RARE_FLAGS = ["F_CVL_CAPPED", "F_MI_CAPPED", "F_HIFOB_CAPPED", "F_MAF_CAPPED", "F_DED_ONCE", "F_HIFP_CAPPED",
              "F_GM_TOPUP", "F_QUOTA", "F_BEDDAY", "F_FLOOR", "F_OVERRIDE", "F_DENIED", "F_MI_EFFECTIVE"]
RARE_GROUPS = ["stroke_elderly", "young_asthma", "mdr_tb"]      # min_age, age range, secondary diagnosis
AT_LEAST = 200


def test_rare_paths_are_compared():
    """The compared batches settle the rare paths hundreds of times: caps of every layer reached,
    once-a-year deductibles waived, groups with a minimum age or a required secondary diagnosis."""
    flags = dict.fromkeys(RARE_FLAGS, 0)
    groups = dict.fromkeys(RARE_GROUPS, 0)
    visits_compared = 0
    for case, arg in CASES:
        pack, visits, lines = case(arg)
        settler = Settler(pack, catalogue())
        got = np.asarray(settler.settle_table(visits, lines).table.column("flags"))
        for name in RARE_FLAGS:
            flags[name] += int(np.count_nonzero(got & FLAG_BITS[name]))
        age = age_in_years(visits.column("brdy"), visits.column("enddate"))
        group = settler.compiled.resolve_groups(visits.column("dise_codg"), age)
        for name in RARE_GROUPS:
            groups[name] += int(np.count_nonzero(group == settler.compiled.group_index[name]))
        visits_compared += visits.num_rows
    assert visits_compared >= 100_000
    assert min(flags.values()) >= AT_LEAST, flags
    assert min(groups.values()) >= AT_LEAST, groups
