"""The benchmark's peers settle the same visits as the kernel, to the fen, so that a broken peer
cannot produce a flattering ratio; and the closed form of the annual caps they use is the
sequential rule of docs/design.md."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

# bench/ is not installed: reach it from the checkout, after the installed packages (kernel stays
# the installed, compiled one). polars and duckdb come with the test extra: no skip.
ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
from bench.peers import chain, duckdb_peer, polars_peer, reference_peer  # noqa: E402
from kernel.api import Settler, shipped_catalogue_path, shipped_pack_path
from kernel.catalogue import load_catalogue
from kernel.layout import FLAGS
from kernel.policy import load_pack, pack_from_raw
from kernel.synth import synth_precomputed
from server.cli import module_command


@pytest.fixture(scope="module")
def pack():
    return chain.bench_pack()


@pytest.fixture(scope="module")
def settled(pack):
    # few persons, many visits each: every annual cap binds, both versions (cap / no cap) occur
    visits = chain.bench_visits(pack, 4000, seed=11, n_persons=80)
    result = Settler(pack, load_catalogue(shipped_catalogue_path())).settle_table(visits)
    return visits, result.table


def test_the_input_exercises_every_cap(settled):
    _, table = settled
    flags = table.column("flags").to_numpy()
    for name in ("F_HIFP_CAPPED", "F_MI_CAPPED", "F_MAF_CAPPED", "F_MI_TRIGGERED", "F_DED_WAIVED"):
        assert ((flags >> FLAGS.index(name)) & 1).sum() > 0, name
    versions = set(table.column("policy_version").to_pylist())
    assert versions == {"bench-rural/rural/2013-h1", "bench-rural/rural/2013-aug"}


@pytest.mark.parametrize("peer", [reference_peer, polars_peer, duckdb_peer], ids=lambda p: p.NAME)
def test_peer_equals_the_kernel_to_the_fen(pack, settled, peer):
    visits, table = settled
    assert chain.disagreements(chain.kernel_columns(table), peer.settle(visits, pack)) == []


def test_a_wrong_peer_is_caught(pack, settled):
    visits, table = settled
    got = polars_peer.settle(visits, pack)
    got["maf_pay"] = got["maf_pay"].copy()
    got["maf_pay"][np.flatnonzero(got["maf_pay"])[0]] += 1
    assert chain.disagreements(chain.kernel_columns(table), got)[0].startswith("maf_pay: 1 rows differ")


def test_closed_form_of_rising_caps_equals_the_sequential_rule():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 30))
        raw = rng.integers(0, 1000, n) * (rng.random(n) < 0.8)
        caps = np.sort(rng.choice([rng.integers(0, 5000), chain.NO_CAP], n))    # never falling
        paid, sequential = 0, []
        for r, c in zip(raw, caps):
            pay = min(int(r), max(0, int(c) - paid))
            sequential.append(pay)
            paid += pay
        running = np.cumsum(raw)
        total = running + np.minimum(0, np.minimum.accumulate(caps - running))
        assert np.diff(total, prepend=0).tolist() == sequential


def test_packs_outside_the_subset_are_refused(pack):
    with pytest.raises(chain.OutsideSubset, match="disease groups"):
        chain.params(load_pack(shipped_pack_path()))
    raw = tomllib.loads(chain.PACK_PATH.read_text())
    raw["schemes"][0]["versions"][1]["serious_illness"]["cap"] = "1000"      # below the first half's
    with pytest.raises(chain.OutsideSubset, match="falling"):
        chain.params(pack_from_raw(raw))
    visits = synth_precomputed(pack, 10, seed=1)
    with pytest.raises(chain.OutsideSubset, match="injury cause"):
        chain.check_visits(visits.set_column(visits.column_names.index("inj_cause"), "inj_cause",
                                             pa.array(["traffic"] * 10)))


def test_the_one_command_runs_end_to_end_at_a_tiny_size(tmp_path):
    """bench/run_benchmarks.py as a newcomer runs it (the script, not an import), at 3,000 visits and
    0.4 s of server load: it checks every peer equal before timing it and writes the table and the
    JSON. It imports the kernel this test imports (the installed build, or the in-place one under
    `python -m pytest`), never the unbuilt source tree. No figure is asserted: only that it ran."""
    _, env = module_command("bench.run_benchmarks")          # this process's import path
    out, raw = tmp_path / "B.md", tmp_path / "B.json"
    shipped = (ROOT / "BENCHMARKS.md").stat().st_mtime_ns
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run_benchmarks.py"), "--sizes", "3000",
                          "--repeat", "1", "--reference-visits", "300", "--server-seconds", "0.4",
                          "--out", str(out), "--json", str(raw)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(raw.read_text())
    equal = f"equal on {len(chain.COMPARED)} columns x 3,000 visits"
    (size,) = result["batch"]
    assert size["n"] == 3000
    assert size["checks"] == {"Polars": equal, "DuckDB SQL": equal}
    assert set(size["first_run_seconds"]) == {"kernel", "Polars", "DuckDB SQL"}
    assert set(size["seconds"]) == {"kernel", "kernel_unordered_ids", "kernel_core", "kernel_core_fresh",
                                    "limit", "limit_core", "Polars", "DuckDB SQL"}
    assert result["reference"]["check"].startswith(f"equal on {len(chain.COMPARED)} columns x 300 visits")
    srv = result["server"]
    assert srv["loadtest_settle"]["ledger_check"]["ok"] and srv["loadtest_mixed"]["ledger_check"]["ok"]
    table = out.read_text()
    for line in ("| **kernel** (end to end) |", "| Polars |", "| DuckDB SQL |",
                 "| kernel chain alone (Cython, prepared arrays, output touched before) |",
                 "| kernel chain, output arrays freshly mapped (settle_table takes them from kernel._pool instead) |",
                 "| kernel, first call in the process (cold memory; not a ratio) |",
                 "| kernel, the same visits with their ids in descending order (duplicate-id check by hash table) |",
                 f"Peer checks in this run: Polars: {equal}; DuckDB SQL: {equal}",
                 "## Server capacity", "| bare grpcio echo"):
        assert line in table, line
    assert (ROOT / "BENCHMARKS.md").stat().st_mtime_ns == shipped       # --out was honoured
