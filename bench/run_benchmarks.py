"""One command for the batch benchmark against peers and the server's capacity: writes BENCHMARKS.md.

    python bench/run_benchmarks.py                        # 1M and 10M visits, server load; ~30 min
    python bench/run_benchmarks.py --quick                # the whole harness at 20k visits, ~15 s
    python bench/run_benchmarks.py --sizes 100000 --server-seconds 3 --out /tmp/B.md   # a quick look

kernel and server are imported as installed (`pip install .`), or from the checkout when it is
built in place and not installed; with both, `python -m bench.run_benchmarks` from the checkout's
root uses the in-place build.

Batch: the same generated visits (kernel.synth, precomputed step-1 amounts, 2.5 visits a person)
under the peers' pack (bench/peers/bench_pack.toml) go through
  - the kernel end to end: Settler.settle_table, Arrow in (validation, codes, ordering) -> Arrow out;
    and again with the visit ids in descending order (the generated ids ascend, which lets the
    duplicate-id check compare neighbours instead of hashing every id);
  - the kernel's Cython chain alone, on the arrays the adapter prepared, its output arrays touched
    before the timing as the limit's buffers are; and again writing fresh output arrays, as
    settle_table does, which shows what their first-touch page faults cost;
  - Polars and DuckDB SQL (bench/peers), each first checked equal to the kernel to the fen;
  - the plain-Python reference (kernel.reference) on a smaller set (it is slow), checked likewise;
  - the memory-bandwidth limit: np.copyto of as many bytes as the kernel reads and writes.
Timed runs are interleaved and the best of --repeat is kept: these machines are shared and noisy,
so the ratios measured in one run are the result, not the absolute rates.

Server: a bare grpcio echo answering a real SettleReply (bench/bench_grpc.py) and the medsettle server,
each in a subprocess on 127.0.0.1, driven in the same run: unary calls at 64 in flight with the same
client for both, then `medsettle loadtest` (server/loadtest.py) against the medsettle server.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ is not installed: reach it from the checkout after the installed packages (kernel and server
# stay the installed build; an in-place build not installed is found here too)
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import numpy as np  # noqa: E402

from bench.peers import chain, duckdb_peer, polars_peer, reference_peer  # noqa: E402
from kernel import layout  # noqa: E402

T0 = time.perf_counter()
# a prefecture's compensations a month (SOURCE-FIGURES.md: about 1.35 million)
MONTHLY_COMPENSATIONS = 1_350_000


def say(text: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {text}", file=sys.stderr, flush=True)


def timed(fn):
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --- machine -------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024 // 1024
    except OSError:
        pass
    import duckdb
    import polars
    import pyarrow
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gb": mem, "os": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "pyarrow": pyarrow.__version__, "polars": polars.__version__,
            "duckdb": duckdb.__version__, "commit": commit, "load_at_start": os.getloadavg()}


# --- batch ---------------------------------------------------------------------------------------

class Kernel:
    """The kernel end to end, and its Cython chain alone on prepared arrays."""

    def __init__(self, pack):
        from kernel.api import Settler, shipped_catalogue_path
        from kernel.catalogue import load_catalogue
        self.settler = Settler(pack, load_catalogue(shipped_catalogue_path()))

    def settle_table(self, visits):
        return self.settler.settle_table(visits)

    def core_setup(self, visits, touched: bool):
        """(run, reset, bytes read + written): the chain on the adapter's arrays, fresh totals each run.

        touched: its output arrays are written once before the run, as the limit's buffers are, so
        neither side pays first-touch page faults in the timing. Otherwise they come fresh from
        empty_large, as settle_table allocates them, and the run pays those faults.
        """
        from kernel._chain import settle
        from kernel.adapter import empty_large, prepare
        cp = self.settler.compiled
        p = prepare(cp, self.settler.catalogue, visits, None)
        n = visits.num_rows
        out = empty_large((len(layout.OUT_COLS), n), np.int64)
        status, flags = empty_large(n, np.int8), empty_large(n, np.int32)
        if touched:
            out.fill(0), status.fill(0), flags.fill(0)
        acc = np.zeros((int(p.acc_slot.max()) + 1 if n else 0, len(layout.ACC_COLS)), np.int64)
        balance = p.balance.copy()
        inputs = [p.item, p.rule, p.group, p.cats, p.cause, p.out_area, p.referral, p.bed_days,
                  p.acct_used, p.acc_slot, p.psn_slot]

        def run():
            settle(cp.rules, cp.diseases, cp.bands, cp.n_groups, p.item, p.rule, p.group, p.cats, p.cause,
                   p.out_area, p.referral, p.bed_days, p.acct_used, p.acc_slot, p.psn_slot, acc, balance,
                   layout.MODE_SETTLE, out, status, flags)

        def reset():
            acc.fill(0)                  # also touches the accumulator table: np.zeros maps it lazily
            balance[:] = p.balance
        nbytes = sum(a.nbytes for a in inputs) + out.nbytes + status.nbytes + flags.nbytes + 2 * acc.nbytes
        return run, reset, nbytes


COPY_CHUNK = 256 * 1024 * 1024     # far beyond every cache: a chunked copy runs at memory bandwidth


def copy_limit(nbytes: int):
    """Time np.copyto of nbytes, through buffers of at most COPY_CHUNK touched beforehand (a 10M-visit
    run would otherwise need twice its whole input and output again in memory)."""
    chunk = min(nbytes, COPY_CHUNK)
    src = np.ones(chunk, np.uint8)
    dst = np.ones_like(src)
    full, rest = divmod(nbytes, chunk)

    def run():
        for _ in range(full):
            np.copyto(dst, src)
        if rest:
            np.copyto(dst[:rest], src[:rest])
    return run


PEERS = [polars_peer, duckdb_peer]


def bench_size(pack, kernel: Kernel, n: int, repeat: int, seed: int) -> dict:
    tag = f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"
    say(f"[{tag}] generating {n:,} visits (kernel.synth, {n // 5 * 2:,} persons)")
    visits = chain.bench_visits(pack, n, seed=seed)
    t_first, result = timed(lambda: kernel.settle_table(visits))
    say(f"[{tag}] kernel end to end (first run) {t_first:.2f} s")
    first = {"kernel": t_first}
    expected = chain.kernel_columns(result.table)
    e2e_bytes = visits.nbytes + result.table.nbytes + result.accumulators.nbytes
    del result
    checks = {}
    for peer in PEERS:
        say(f"[{tag}] checking {peer.NAME} against the kernel (this run is not timed)")
        t, got = timed(lambda: peer.settle(visits, pack))
        diff = chain.disagreements(expected, got)
        if diff:
            raise SystemExit(f"{peer.NAME} disagrees with the kernel on {n:,} visits, no ratio is "
                             f"reported:\n  " + "\n  ".join(diff))
        checks[peer.NAME] = f"equal on {len(chain.COMPARED)} columns x {n:,} visits"
        first[peer.NAME] = t
        del got
        say(f"[{tag}] {peer.NAME} equal to the fen ({t:.2f} s)")
    # the same visits with their ids in descending order: the duplicate-id check cannot take the
    # ascending ids' one-comparison path and builds a hash table of every id
    at = visits.schema.get_field_index("mdtrt_id")
    unordered = visits.set_column(at, "mdtrt_id", visits.column(at).take(np.arange(n - 1, -1, -1)))

    # one implementation's working memory at a time: a 10M run must fit beside the visits
    def core(touched):
        run, reset, nbytes = kernel.core_setup(visits, touched)
        reset()
        return run, nbytes
    names = ["kernel", "kernel_unordered_ids", "kernel_core", "kernel_core_fresh", "limit", "limit_core"] + [p.NAME for p in PEERS]
    times = {k: [] for k in names}
    core_bytes = None
    for r in range(repeat):
        for name in names:
            if name == "kernel":
                fn = lambda: kernel.settle_table(visits)  # noqa: E731
            elif name == "kernel_unordered_ids":
                fn = lambda: kernel.settle_table(unordered)  # noqa: E731
            elif name == "kernel_core":
                fn, core_bytes = core(touched=True)
            elif name == "kernel_core_fresh":
                fn, _ = core(touched=False)
            elif name == "limit":
                fn = copy_limit(e2e_bytes)
            elif name == "limit_core":
                fn = copy_limit(core_bytes)
            else:
                peer = next(p for p in PEERS if p.NAME == name)
                fn = lambda peer=peer: peer.settle(visits, pack)  # noqa: E731
            t, _ = timed(fn)
            del fn, _
            times[name].append(t)
            say(f"[{tag}] run {r + 1}/{repeat}: {name} {t:.3f} s = {n / t:,.0f} visits/s")
    best = {k: min(v) for k, v in times.items()}
    del visits, unordered
    gc.collect()
    return {"n": n, "seconds": best, "runs": times, "checks": checks, "first_run_seconds": first,
            "bytes": {"end_to_end": e2e_bytes, "core": core_bytes}}


def bench_reference(pack, kernel: Kernel, n: int, seed: int) -> dict:
    say(f"[reference] generating {n:,} visits and settling them with the kernel")
    visits = chain.bench_visits(pack, n, seed=seed)
    t_kernel, result = timed(lambda: kernel.settle_table(visits))
    say(f"[reference] plain-Python reference on {n:,} visits (slow: one visit at a time)")
    t, got = timed(lambda: reference_peer.settle(visits, pack))
    diff = chain.disagreements(chain.kernel_columns(result.table), got)
    if diff:
        raise SystemExit("the reference disagrees with the kernel:\n  " + "\n  ".join(diff))
    say(f"[reference] equal to the fen; {t:.1f} s = {n / t:,.0f} visits/s (kernel {t_kernel:.2f} s)")
    return {"n": n, "seconds": t, "kernel_seconds": t_kernel,
            "check": f"equal on {len(chain.COMPARED)} columns x {n:,} visits (checked after the timed run)"}


# --- server --------------------------------------------------------------------------------------

def start_role(bench_grpc, role: str, ledger: str = ""):
    """A bench_grpc server subprocess (echo or medsettle) on loopback: (port, close)."""
    server = bench_grpc.Spawned(role, ledger)
    return server.port, server.close


def bench_server(seconds: float, rate: float, rounds: int = 2) -> dict:
    import grpc

    from bench import bench_grpc
    from server import loadtest
    from server import settlement_pb2 as pb
    from server import settlement_pb2_grpc as pb_grpc

    out = {"in_flight": bench_grpc.IN_FLIGHT, "seconds": seconds, "rounds": rounds}
    # synthetic visits the loadtest draws from (reused with new ids when exhausted): 20,000 for a
    # real run, fewer for a short check, which then starts sooner
    pool_size = min(20_000, max(1_000, int(2_000 * seconds)))

    async def unary(port, method, seconds, tag):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            if method == "echo":
                call = ch.unary_unary("/bench.Echo/Unary", pb.SettleRequest.SerializeToString,
                                      pb.SettleReply.FromString)
            else:
                call = pb_grpc.SettlementStub(ch).Settle
            await bench_grpc.unary_load(call, min(0.5, seconds), tag + "w")
            t0 = time.perf_counter()
            calls = await bench_grpc.unary_load(call, seconds, tag)
            # timed to the last reply: the calls in flight at the stop are counted, so is their time
            return calls, time.perf_counter() - t0

    closers = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            echo_port, close = start_role(bench_grpc, "echo")
            closers.append(close)
            port, close = start_role(bench_grpc, "medsettle", str(Path(tmp) / "ledger.db"))
            closers.append(close)
            target = f"127.0.0.1:{port}"
            say(f"[server] bare grpcio echo (bench/bench_grpc.py) and medsettle Settle, same client, "
                f"{bench_grpc.IN_FLIGHT} in flight, {rounds} alternating rounds of {seconds / rounds:g} s each")
            echo, settle = [0, 0.0], [0, 0.0]            # calls, seconds
            for r in range(rounds):
                for side, side_port, method, tag in ((echo, echo_port, "echo", f"e{r}"),
                                                     (settle, port, "settle", f"s{r}")):
                    calls, wall = asyncio.run(unary(side_port, method, seconds / rounds, tag))
                    side[0] += calls
                    side[1] += wall
            out["echo_calls_per_s"] = echo[0] / echo[1]
            out["settle_calls_per_s"] = settle[0] / settle[1]
            say(f"[server] echo {out['echo_calls_per_s']:,.0f} calls/s, Settle {out['settle_calls_per_s']:,.0f} "
                f"committed/s")
            pool = loadtest.make_visits(loadtest.Config(visits=pool_size, seed=7, tag="LTbench-"))
            say(f"[server] medsettle loadtest: settle only, concurrency {bench_grpc.IN_FLIGHT}, {seconds:g} s")
            out["loadtest_settle"] = loadtest.run(loadtest.Config(
                target=target, concurrency=bench_grpc.IN_FLIGHT, duration=seconds, requests=10**7,
                mix=loadtest.parse_mix("settle=1"), token="bench", tag="LTbench-"), visits=pool)
            say(f"[server] loadtest: {out['loadtest_settle']['committed_settlements_per_s']:,} committed/s, "
                f"ledger {'OK' if out['loadtest_settle']['ledger_check']['ok'] else 'FAILED'}")
            pool = loadtest.make_visits(loadtest.Config(visits=pool_size, seed=8, tag="LTmix-"))
            say(f"[server] medsettle loadtest: mixed traffic at a fixed {rate:g}/s, {seconds:g} s")
            out["loadtest_mixed"] = loadtest.run(loadtest.Config(
                target=target, rate=rate, duration=seconds, requests=10**7, token="bench", tag="LTmix-"),
                visits=pool)
            say(f"[server] mixed: p99 {out['loadtest_mixed']['latency']['p99_ms']} ms, ledger "
                f"{'OK' if out['loadtest_mixed']['ledger_check']['ok'] else 'FAILED'}")
        finally:
            for close in closers:
                close()
    return out


# --- report --------------------------------------------------------------------------------------

def rate(n, t):
    return f"{n / t:,.0f}"


def ratio(a, b):
    return f"{a / b:.1f}x"


def render(m: dict, sizes: list[dict], ref: dict | None, srv: dict | None, repeat: int) -> str:
    L = ["# medsettle benchmarks", "",
         f"Written by `python bench/run_benchmarks.py` on {m['date']} (commit {m['commit']}). "
         "Every number below comes from that one run; the machine is shared and noisy (load average "
         f"{m['load_at_start'][0]:.1f} at the start, {m['load_at_end'][0]:.1f} at the end on "
         f"{m['cores']} cores), so read the ratios, which were measured side by side, more than the "
         "absolute rates.", "",
         "## Machine", "",
         f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gb']} GB; {m['os']}",
         f"- Python {m['python']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, Polars {m['polars']}, "
         f"DuckDB {m['duckdb']}",
         "- the kernel settles on one thread, with Arrow's string hashing (person numbers, the "
         "duplicate-id check, code columns) on background threads beside it; Polars and DuckDB use "
         "every core", "",
         "## Batch settlement against peers", "",
         "Same chain, same visits: the pack `bench/peers/bench_pack.toml` (deductible per admission with "
         "waivers, basic fund by level with an annual cap per pool, serious-illness bands with an annual "
         "cap that is abolished from 1 August, medical assistance with its own cap), visits from "
         "`kernel.synth` with precomputed step-1 amounts, 2.5 visits a person. Before any peer is "
         "timed, its result is compared with the kernel's to the fen on "
         f"{', '.join(chain.COMPARED)}; the run stops if one differs. How the peers carry annual caps "
         "without a loop (running sum and running minimum over the person's year) is proved in "
         "`bench/peers/chain.py`.", "",
         f"Best of {', '.join(str(s['repeat']) + ' (' + format(s['n'] / 1e6, 'g') + 'M)' for s in sizes)} "
         "interleaved timed runs, after the checking run. *Kernel* is "
         "`Settler.settle_table`: Arrow table in, validation, code mapping, ordering by person and "
         "time, the Cython chain, Arrow table out, the same job the peers do; it allocates its result "
         "arrays inside the timing, as a real call does. Its numpy arrays come from `kernel._pool` "
         "(large blocks kept mapped between calls) and Arrow's buffers from Arrow's jemalloc pool with a "
         "10 s decay, so a timed run reuses memory an earlier call faulted in, as a process settling "
         "file after file (or chunk after chunk) does; the first call in the process, on cold memory, "
         "is shown beside the best. "
         "*Kernel chain* is the Cython chain alone on the arrays the adapter prepared, writing into "
         "output arrays touched before the timing. *Limit* is `np.copyto` of as many bytes as the kernel "
         "reads and writes (end to end: the input and result tables; chain: its input, output and "
         "accumulator arrays), through buffers touched before the timing: the chain and its limit "
         "stand on the same footing. *Kernel chain, fresh output* is the chain writing into new arrays, "
         "as inside `settle_table`; its difference from the chain is what the first touch of the output "
         "costs.", ""]
    head = "| implementation | " + " | ".join(f"{s['n'] / 1e6:g}M visits/s" for s in sizes) + \
           " | kernel is ... faster |"
    L += [head, "|---" * (len(sizes) + 2) + "|"]

    def row(label, key, base="kernel"):
        cells = [rate(s["n"], s["seconds"][key]) for s in sizes]
        rat = ", ".join(f"{ratio(s['seconds'][key], s['seconds'][base])} ({s['n'] / 1e6:g}M)" for s in sizes)
        return f"| {label} | " + " | ".join(cells) + f" | {rat if key in (p.NAME for p in PEERS) else '-'} |"
    L.append(row("**kernel** (end to end)", "kernel"))
    if all("kernel" in s.get("first_run_seconds", {}) for s in sizes):
        L.append("| kernel, first call in the process (cold memory; not a ratio) | " + " | ".join(
            rate(s["n"], s["first_run_seconds"]["kernel"]) for s in sizes) + " | - |")
    unordered = all("kernel_unordered_ids" in s["seconds"] for s in sizes)
    if unordered:
        L.append(row("kernel, the same visits with their ids in descending order (duplicate-id check "
                     "by hash table)", "kernel_unordered_ids"))
    for peer in PEERS:
        L.append(row(peer.NAME, peer.NAME))
    if ref is not None:
        cells = [f"{ref['n'] / ref['seconds']:,.0f} (on {ref['n'] / 1e3:g}k)" for _ in sizes]
        rat = ", ".join(f"{ratio(s['n'] / s['seconds']['kernel'], ref['n'] / ref['seconds'])} "
                        f"({s['n'] / 1e6:g}M)" for s in sizes)
        L.append(f"| Python reference (timed on {ref['n']:,} visits only) | " + " | ".join(cells) + f" | {rat} |")
    if all("kernel_core_fresh" in s["seconds"] for s in sizes):
        L.append(row("kernel chain alone (Cython, prepared arrays, output touched before)", "kernel_core"))
        L.append(row("kernel chain, output arrays freshly mapped (settle_table takes them from "
                     "kernel._pool instead)", "kernel_core_fresh"))
    else:                        # an older --json file: the chain wrote fresh arrays, page faults timed
        L.append(row("kernel chain alone (Cython, prepared arrays, fresh output)", "kernel_core"))
    L += ["", "| against the memory-bandwidth limit | " + " | ".join(f"{s['n'] / 1e6:g}M" for s in sizes) + " |",
          "|---" * (len(sizes) + 1) + "|"]
    L.append("| limit, end-to-end bytes (visits/s) | " + " | ".join(
        f"{rate(s['n'], s['seconds']['limit'])} ({s['bytes']['end_to_end'] / s['n']:.0f} B/visit)" for s in sizes) + " |")
    L.append("| kernel end to end / limit | " + " | ".join(
        ratio(s["seconds"]["kernel"], s["seconds"]["limit"]) + " slower" for s in sizes) + " |")
    L.append("| limit, chain bytes (visits/s) | " + " | ".join(
        f"{rate(s['n'], s['seconds']['limit_core'])} ({s['bytes']['core'] / s['n']:.0f} B/visit)" for s in sizes) + " |")
    L.append("| kernel chain / limit | " + " | ".join(
        ratio(s["seconds"]["kernel_core"], s["seconds"]["limit_core"]) + " slower" for s in sizes) + " |")
    fastest = [min(s["seconds"][p.NAME] for p in PEERS) for s in sizes]
    e2e = [f / s["seconds"]["kernel"] for f, s in zip(fastest, sizes)]
    core = [f / s["seconds"]["kernel_core"] for f, s in zip(fastest, sizes)]
    e2e_unordered = [f / s["seconds"]["kernel_unordered_ids"] for f, s in zip(fastest, sizes)] if unordered else []
    lim = [s["seconds"]["kernel"] / s["seconds"]["limit"] for s in sizes]
    liml = [s["seconds"]["kernel_core"] / s["seconds"]["limit_core"] for s in sizes]
    share = [s["seconds"]["kernel_core"] / s["seconds"]["kernel"] for s in sizes]
    rest = [1 - x for x in share]
    L += ["", "Against the targets (kernel at least 10x the fastest peer, within 3x of the limit):", "",
          f"- end to end, the kernel is {', '.join(f'{x:.1f}x' for x in e2e)} the fastest peer "
          f"({'met' if min(e2e) >= 10 else 'NOT met'}) and {', '.join(f'{x:.1f}x' for x in lim)} slower than "
          f"the limit ({'met' if max(lim) <= 3 else 'NOT met'});",
          *([f"- with the visit ids in descending order, the kernel is {', '.join(f'{x:.1f}x' for x in e2e_unordered)} "
             f"the fastest peer ({'met' if min(e2e_unordered) >= 10 else 'NOT met'}): the generated ids ascend, "
             "as ids given out in sequence do, and the duplicate-id check then needs one comparison per "
             "visit instead of a hash table of every id (`kernel/adapter.py` `_all_distinct`);"]
            if unordered else []),
          f"- the Cython chain alone is {', '.join(f'{x:.1f}x' for x in core)} the fastest peer's end-to-end "
          f"time and {', '.join(f'{x:.1f}x' for x in liml)} slower than a copy of its own bytes "
          f"({'within' if max(liml) <= 3 else 'NOT within'} 3x).",
          f"- Of the kernel's end-to-end time, the Cython chain is {', '.join(f'{x:.0%}' for x in share)}, "
          f"and the rest, {', '.join(f'{x:.0%}' for x in rest)}, is the adapter and the result table "
          "(`kernel/adapter.py`, `kernel/api.py`: validating and mapping codes, Arrow's hashing of person "
          "numbers and visit ids, ordering, building the Arrow result). The peers pay the same kind of "
          "cost (sorting or hashing person numbers, joins), which is why they come closer end to end than "
          "chain to chain.", ""]
    L += ["Peer checks in this run: " + "; ".join(f"{k}: {v}" for s in sizes for k, v in s["checks"].items())
          + (f"; Python reference: {ref['check']}" if ref else "") + ". The same comparison runs in "
          "`tests/test_peers.py` on a small input where every cap binds.", ""]
    if srv:
        L += render_server(srv)
    L += ["## Reproduce", "", "```", "pip install '.[bench]'                  # the kernel, Polars and DuckDB",
          "python bench/run_benchmarks.py --quick   # the whole harness at 20k visits, ~15 s: does it run?",
          "python bench/run_benchmarks.py           # writes BENCHMARKS.md",
          "medsettle serve & medsettle loadtest --concurrency 64 --duration 60   # by hand", "```", ""]
    return "\n".join(L)


def render_server(srv: dict) -> list[str]:
    ls, mx = srv["loadtest_settle"], srv["loadtest_mixed"]
    committed = ls["committed_settlements_per_s"]
    l1, l2 = ls["latency"], mx["latency"]
    peak_avg = MONTHLY_COMPENSATIONS / (30 * 24 * 3600)
    peak_office = MONTHLY_COMPENSATIONS / (22 * 8 * 3600)
    peak = peak_office * 10
    L = ["## Server capacity (real-time settlement)", "",
         f"Client and server on this machine's loopback (the client takes part of the same {os.cpu_count()} "
         "cores), server in a subprocess with its SQLite ledger (durable group commit), sample rural pack. "
         f"{srv['seconds']:g} s per line; the echo and Settle lines ran in {srv['rounds']} alternating rounds "
         f"so that a neighbour's load falls on both. Every rate counts the calls completed over the time "
         f"from the first send to the last reply (the calls in flight when sending stops, and their time, "
         f"included).", "",
         "| measure | result | note |", "|---|---|---|",
         f"| bare grpcio echo, same message sizes (bench/bench_grpc.py) | {srv['echo_calls_per_s']:,.0f} calls/s | "
         "the transport's limit on this machine |",
         f"| Settle, committed, same client as the echo | {srv['settle_calls_per_s']:,.0f} calls/s | "
         f"{srv['settle_calls_per_s'] / srv['echo_calls_per_s']:.0%} of the echo |",
         f"| `medsettle loadtest`, Settle only, concurrency {srv['in_flight']} ({srv['in_flight']} in flight) | {committed:,} committed "
         f"settlements/s | p50 {l1['p50_ms']} ms, p90 {l1['p90_ms']} ms, p99 {l1['p99_ms']} ms, "
         f"p99.9 {l1['p99_9_ms']} ms; errors {ls['calls']['errors'] or 'none'}; ledger check "
         f"{'OK' if ls['ledger_check']['ok'] else 'FAILED'} ({ls['ledger_check']['persons']:,} persons) |",
         f"| `medsettle loadtest`, mixed ({', '.join(f'{k} {v:g}' for k, v in mx['mix'].items())}) at a fixed "
         f"{mx['load']['rate_per_s']:g} calls/s | {mx['throughput_per_s']:,} calls/s, "
         f"{mx['committed_settlements_per_s']:,} committed/s | latency from the scheduled send: p50 "
         f"{l2['p50_ms']} ms, p90 {l2['p90_ms']} ms, p99 {l2['p99_ms']} ms, p99.9 {l2['p99_9_ms']} ms; "
         f"errors {mx['calls']['errors'] or 'none'}; ledger check {'OK' if mx['ledger_check']['ok'] else 'FAILED'} |",
         "",
         f"**Against a real peak.** The sources give a prefecture with about {MONTHLY_COMPENSATIONS:,} "
         f"compensations a month: {peak_avg:.2f} a second on average, {peak_office:.1f} a second if they all "
         f"fell in 8 office hours of 22 working days, and about {peak:.0f} a second in a peak hour ten times "
         f"busier than that. The committed throughput measured here, {committed:,} settlements/s, is "
         f"{committed / peak:,.0f}x that peak on one shared {os.cpu_count()}-core machine (loadtest client "
         f"included); a whole month's settlements would take about "
         f"{MONTHLY_COMPENSATIONS / committed / 3600:.1f} hours at this rate. The limit is the transport and "
         "the Python server, not the kernel (the echo alone does "
         f"{srv['echo_calls_per_s']:,.0f} calls/s), and the ledger check confirms that under this load "
         "every acknowledged settlement, and nothing else, is in the accumulators.", ""]
    return L


# --quick: every part of the harness at a size that checks it in well under a minute
QUICK = {"sizes": "20000", "repeat": 1, "repeat_large": 1, "reference_visits": 2000, "server_seconds": 1.0,
         "out": str(ROOT / "out" / "benchmarks-quick.md")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="visits per size (default 1M and 10M)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per size below 10M (best of)")
    ap.add_argument("--repeat-large", type=int, default=1, help="timed runs at 10M and above")
    ap.add_argument("--reference-visits", type=int, default=100_000, help="visits the reference settles")
    ap.add_argument("--seed", type=int, default=2013)
    ap.add_argument("--server-seconds", type=float, default=10.0, help="per server measurement (0: skip)")
    ap.add_argument("--rate", type=float, default=200.0, help="fixed rate of the mixed loadtest")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the report (default BENCHMARKS.md)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--from-json", default=None, help="only re-render BENCHMARKS.md from a --json file")
    ap.add_argument("--quick", action="store_true",
                    help="check the harness in under a minute: 20k visits, 2,000 for the reference, 1 s "
                         "per server measurement, written to out/benchmarks-quick.md (options given "
                         "explicitly win); the figures mean nothing at this size")
    args, _ = ap.parse_known_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args(argv)
    for path in filter(None, (args.out, args.json)):     # before the run, not after its long minutes
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        raw = json.loads(Path(args.from_json).read_text())
        text = render(raw["machine"], raw["batch"], raw["reference"], raw["server"], args.repeat)
        Path(args.out).write_text(text)
        print(text)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    m = machine()
    say(f"{m['cpu']}, {m['cores']} cores, load {m['load_at_start'][0]:.1f}")
    pack = chain.bench_pack()
    kernel = Kernel(pack)
    results = []
    for n in sizes:
        repeat = args.repeat_large if n >= 10_000_000 else args.repeat
        r = bench_size(pack, kernel, n, repeat, args.seed)
        r["repeat"] = repeat
        results.append(r)
    ref = bench_reference(pack, kernel, args.reference_visits, args.seed) if args.reference_visits else None
    srv = bench_server(args.server_seconds, args.rate) if args.server_seconds > 0 else None
    m["load_at_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "batch": results, "reference": ref,
                                               "server": srv}, indent=1, default=str))
    text = render(m, results, ref, srv, args.repeat)
    Path(args.out).write_text(text)
    say(f"wrote {args.out}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
