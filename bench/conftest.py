"""Benchmark session: collect each kernel figure beside its memory-bandwidth limit, print the ratios.

    pytest bench/ --benchmark-only        (or: pytest bench/test_kernel_speed.py)

Results also go to out/bench_kernel.json (read by the README table).
"""
import json
import os
import platform
from pathlib import Path

import pytest

RESULTS = {}


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
    (out / "bench_kernel.json").write_text(json.dumps({"facts": facts, "results": RESULTS}, indent=2))
