"""Benchmark session: collect each kernel figure beside its memory-bandwidth limit, print the ratios.

    pytest bench/ --benchmark-only        (or: pytest bench/test_kernel_speed.py)
    pytest bench/ --quick                 # the same at 20k visits a block: a check that it runs

Results also go to out/bench_kernel.json (read by the README table; out/bench_kernel-quick.json with --quick).
"""
import json
import os
import platform
from pathlib import Path

import pytest

RESULTS = {}
BLOCK = 1_000_000               # visits in one block of the kernel benchmarks
QUICK_BLOCK = 20_000            # with --quick: the harness checked in seconds, the figures meaningless


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true",
                     help=f"blocks of {QUICK_BLOCK:,} visits instead of {BLOCK:,}: checks the benchmarks run")


@pytest.fixture(scope="session")
def block(request) -> int:
    """Visits in one block (the 10M cases tile ten blocks)."""
    return QUICK_BLOCK if request.config.getoption("--quick") else BLOCK


@pytest.fixture(scope="session")
def record():
    def put(name, **values):
        RESULTS.setdefault(name, {}).update(values)
    return put


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("medsettle kernel speed (ratios measured in this run)")
    tr.write_line(f"{'case':<40}{'items/s':>14}{'limit items/s':>16}{'vs limit/base':>14}{'target':>12}")
    base = next((r["rate"] for name, r in RESULTS.items() if name.startswith("layers: base")), None)
    for name, r in RESULTS.items():
        if "limit_rate" in r:
            tr.write_line(f"{name:<40}{r['rate']:>14,.0f}{r['limit_rate']:>16,.0f}"
                          f"{r['rate'] / r['limit_rate']:>14.2f}{r.get('target', 0):>12,.0f}")
        elif base:
            cost = 1e9 / r["rate"] - 1e9 / base
            tr.write_line(f"{name:<40}{r['rate']:>14,.0f}{'':>16}{f'{cost:+.1f} ns/visit':>14}"
                          f"{r.get('target', 0):>12,.0f}")
    out = Path("out")
    out.mkdir(exist_ok=True)
    facts = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    # a --quick run's figures mean nothing: they must not replace the real ones the README reads
    name = "bench_kernel-quick.json" if terminalreporter.config.getoption("--quick") else "bench_kernel.json"
    (out / name).write_text(json.dumps({"facts": facts, "results": RESULTS}, indent=2))
