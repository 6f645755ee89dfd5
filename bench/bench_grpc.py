"""Real-time benchmark: medsettle's committed Settle against a bare grpcio echo, in one run.

    python bench/bench_grpc.py --json bench-grpc.json     # about 115 s; prints the table, writes JSON
    python bench/bench_grpc.py --seconds 0.3 --rounds 1   # a check that it runs, ~12 s

Client and servers on 127.0.0.1, each server in its own subprocess, same messages (bench/echo.proto):
  - unary calls/s at 64 in flight: echo vs Settle (target: Settle >= 70% of echo), and two peers
    between them: the echo that also journals each call in the ledger, durably, before it replies
    (no kernel, no conversion): what the gRPC stack plus a durable commit leave medsettle's own
    per-call work; and Settle without the kernel (the request's conversion, its hash, the person
    read, the result protobuf of a result settled at start, the commit): what is left for the
    kernel, its fund texts, the caller's token and the per-person serialization
  - streamed messages/s at 64 in flight: echo vs SettleStream (target >= 70%)
  - Settle latency p50/p99 at a fixed 300 settlements/s (target p99 < 10 ms)
  - the server's own work per settlement, kernel plus its ledger share (the person read and its
    share of the group commit, fsync included), CPU measured in-process without gRPC (< 150 us)
Echo and medsettle are measured in alternating rounds (echo, Settle, echo, Settle, ...) and each
ratio is the sum of the medsettle rounds over the sum of the echo rounds, so that a neighbour's load
on this shared machine falls on both sides. Every phase is bounded in time and in requests.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import platform
import select
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

import grpc  # noqa: E402

from server import settlement_pb2 as pb  # noqa: E402
from server.cli import module_command  # noqa: E402
from server import settlement_pb2_grpc as pb_grpc  # noqa: E402

HOST = "127.0.0.1"             # loopback only
IN_FLIGHT = 64
PERSONS = 20000
MAX_RATE = 20_000              # request cap per second of a phase: every phase is bounded in count
FIXED_RATE = 300
LINES = 10                     # line items of the in-process measure's second set of visits
_seq = itertools.count()

TARGETS = {                    # measure -> (comparison, target)
    "unary_ratio": (">=", 0.70),
    "stream_ratio": (">=", 0.70),
    "p99_ms_at_300": ("<", 10.0),
    "server_work_us": ("<", 150.0),
}


def visit_request(i: int, tag: str, lines: int = 0) -> pb.SettleRequest:
    """A county inpatient visit of one of PERSONS people: precomputed amounts, or a birth date and
    that many line items of the shipped catalogue (what a hospital's billing system sends)."""
    month = 1 + i % 12
    v = pb.Visit(mdtrt_id=f"{tag}-{i}", psn_no=f"B{i % PERSONS:06d}", insutype="rural", medins_lv="2",
                 med_type="21", enddate=f"2013-{month:02d}-10", setl_time=f"2013-{month:02d}-10T09:30:00",
                 dise_codg="K35.9")
    if not lines:
        v.MergeFrom(pb.Visit(medfee_sumamt=1_250_000, fulamt_ownpay_amt=50_000, overlmt_selfpay=0,
                             preselfpay_amt=20_000, inscp_scp_amt=1_180_000, inscp_essential_amt=0))
        return pb.SettleRequest(request_id=f"{tag}-{i}", visit=v)
    v.brdy = f"{1940 + i % 70}-{1 + i % 12:02d}-{1 + i % 28:02d}"
    codes = _catalogue_codes()
    items = [pb.Line(line_no=k + 1, hilist_code=codes[(i * 7 + k) % len(codes)], cnt=1 + k % 3,
                     pric=2_000 + 137 * k, det_item_fee_sumamt=(1 + k % 3) * (2_000 + 137 * k))
             for k in range(lines)]
    return pb.SettleRequest(request_id=f"{tag}-{i}", visit=v, lines=items)


@functools.cache
def _catalogue_codes() -> list[str]:
    from kernel.api import shipped_catalogue_path
    from kernel.catalogue import load_catalogue
    return load_catalogue(shipped_catalogue_path()).codes.to_pylist()


# --- servers (subprocess roles) -----------------------------------------------------------------

def sample_reply() -> pb.SettleReply:
    """A real SettleReply (same size as Settle's) from the kernel, for the echo to answer."""
    from kernel.api import Settler
    from server import convert
    visit, lines = convert.request_to_kernel(visit_request(0, "echo"))
    one = Settler.from_files().settle_one(visit, lines, {}, 0, "settle")
    return pb.SettleReply(settlement=convert.result_to_pb(one, setl_id="123456789",
                                                          request_id="echo-0", institution="H001",
                                                          setl_time="2013-01-10T09:30:00"))


async def serve_echo(port: int):
    reply = sample_reply()

    async def unary(request, context):
        return reply

    async def stream(request_iterator, context):
        async for _ in request_iterator:
            yield reply

    await _serve_echo_service(port, unary, stream)


async def _serve_echo_service(port: int, unary, stream=None):
    """Serve bench.Echo (Unary, and Stream when given) on port; print "ready <port>"."""
    methods = {"Unary": grpc.unary_unary_rpc_method_handler(
        unary, pb.SettleRequest.FromString, pb.SettleReply.SerializeToString)}
    if stream is not None:
        methods["Stream"] = grpc.stream_stream_rpc_method_handler(
            stream, pb.SettleRequest.FromString, pb.SettleReply.SerializeToString)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", methods),))
    port = server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    print(f"ready {port}", flush=True)
    await server.wait_for_termination()


async def serve_medsettle(port: int, ledger: str):
    from server.security import SecurityConfig
    from server.server import ServerConfig, start
    running = await start(ServerConfig(host=HOST, port=port, ledger_path=ledger,
                                       security=SecurityConfig(tokens={"bench": "H001"})))
    print(f"ready {running.port}", flush=True)
    await running.server.wait_for_termination()


async def serve_echo_commit(port: int, ledger: str):
    """The echo, each call first committed to a SqliteLedger (a journal row with the reply's
    result, an accumulator row) and awaited, as Settle does; nothing else of Settle."""
    from kernel.layout import ACC_COLS
    from server.ledger import SettlementRecord, SqliteLedger
    reply = sample_reply()
    blob = reply.settlement.SerializeToString()
    ledger = SqliteLedger(ledger)
    seq = itertools.count()

    async def unary(request, context):
        visit = request.visit
        record = SettlementRecord(
            institution="H001", request_id=f"echo-{next(seq)}", request_hash=b"", mdtrt_id=visit.mdtrt_id,
            psn_no=visit.psn_no, insutype=visit.insutype, year=2013, status="OK", result=blob,
            acc_delta=[1] * len(ACC_COLS), balance_delta=0, opening_balance=None)
        await ledger.commit_settlement(record)      # a Commit: not cancellable, as in Settle
        return reply

    await _serve_echo_service(port, unary)


async def serve_floor(port: int, ledger: str):
    """Settle with its protocol work and its commit but no kernel: the request converted to the
    kernel's dict, its hash, the person's totals read, the result protobuf built (from one result
    settled at start, so no kernel and no fund texts per call), journaled durably, replied. What
    Python protobuf handling and the ledger alone leave of the echo's throughput."""
    from kernel.api import Settler
    from server import convert
    from server.ledger import SettlementRecord, SqliteLedger
    from server.server import _request_hash
    visit, lines = convert.request_to_kernel(visit_request(0, "floor"))
    one = Settler.from_files().settle_one(visit, lines, {}, 0, "settle")
    ledger = SqliteLedger(ledger)
    delta = [1] * len(one.acc_after)

    async def unary(request, context):
        visit, _ = convert.request_to_kernel(request)
        digest = _request_hash(request)
        ledger.read_state(visit["psn_no"], visit["insutype"], 2013)
        reply = pb.SettleReply()
        result = convert.result_to_pb(one, reply.settlement, request_id=request.request_id,
                                      institution="H001", setl_time=request.visit.setl_time)
        record = SettlementRecord(
            institution="H001", request_id=request.request_id, request_hash=digest,
            mdtrt_id=visit["mdtrt_id"], psn_no=visit["psn_no"], insutype=visit["insutype"], year=2013,
            status="OK", result=convert.encode_stored(result), acc_delta=delta, balance_delta=0,
            opening_balance=None)
        result.setl_id = str(await ledger.commit_settlement(record))
        return reply

    await _serve_echo_service(port, unary)


class Spawned:
    """A server subprocess on a free loopback port; killed on exit, whatever happens."""

    def __init__(self, role: str, ledger: str = "", timeout: float = 60.0):
        cmd, env = module_command("bench.bench_grpc", "--role", role, "--port", "0", "--ledger", ledger)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=str(ROOT), env=env)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().split() if ready else []
        if len(line) != 2 or line[0] != b"ready":
            self.close()
            raise RuntimeError(f"{role} server did not start within {timeout:.0f} s")
        self.port = int(line[1])
        self.pid = self.proc.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# --- load ---------------------------------------------------------------------------------------

METADATA = (("authorization", "Bearer bench"),)


async def unary_load(call, seconds: float, tag: str) -> int:
    """Calls completed in `seconds` with IN_FLIGHT outstanding (at most MAX_RATE * seconds)."""
    budget = int(MAX_RATE * seconds)
    stop = time.perf_counter() + seconds
    done = 0

    async def worker():
        nonlocal done, budget
        while budget > 0 and time.perf_counter() < stop:
            budget -= 1
            await call(visit_request(next(_seq), tag), metadata=METADATA, timeout=30)
            done += 1
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return done


async def stream_load(method, seconds: float, tag: str) -> int:
    """Replies received on one stream in about `seconds`, IN_FLIGHT requests outstanding."""
    window = asyncio.Semaphore(IN_FLIGHT)
    stop = time.perf_counter() + seconds
    budget = int(MAX_RATE * seconds)
    received = 0

    async def requests():
        nonlocal budget
        while budget > 0 and time.perf_counter() < stop:
            await window.acquire()
            budget -= 1
            yield visit_request(next(_seq), tag)

    call = method(requests(), metadata=METADATA, timeout=seconds + 30)
    async for reply in call:
        if getattr(reply, "error", None) is not None and reply.HasField("error"):
            raise RuntimeError(reply.error.message)
        received += 1
        window.release()
    return received


async def fixed_rate(call, rate: int, seconds: float, tag: str) -> list[float]:
    """Latencies of int(rate * seconds) calls started on a fixed schedule, sorted."""
    latencies = []

    async def one(req):
        t0 = time.perf_counter()
        await call(req, metadata=METADATA, timeout=30)
        latencies.append(time.perf_counter() - t0)
    tasks = []
    start = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(visit_request(next(_seq), tag))))
    await asyncio.gather(*tasks)
    return sorted(latencies)


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def fsync_probe(directory: str, rate: int = FIXED_RATE, count: int = 600) -> list[float]:
    """Latencies of 4 KiB write + fdatasync on the ledger's disk at `rate`, sorted: the floor
    under a durable reply (group commit waits for the fsync in progress, then its own)."""
    path = Path(directory) / "fsync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, bytes(4096 * 64))
        os.fsync(fd)
        out = []
        for k in range(count):
            t0 = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, 4096 * (k % 64))
            os.fdatasync(fd)
            out.append(time.perf_counter() - t0)
            time.sleep(max(0.0, 1 / rate - out[-1]))
    finally:
        os.close(fd)
        path.unlink()
    return sorted(out)


async def timed(server: Spawned, load) -> tuple[int, float, float]:
    """(messages, wall seconds, server CPU seconds) of one load phase."""
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    n = await load
    return n, time.perf_counter() - t0, server.cpu_seconds() - cpu0


async def measure_remote(seconds: float, rounds: int, ledger_dir: str) -> dict:
    """Alternating rounds against the four servers; sums per side, ratios of the sums."""
    servers = []
    try:
        for role, ledger in (("echo", ""), ("echo-commit", "echo-commit.db"), ("floor", "floor.db"),
                             ("medsettle", "ledger.db")):
            servers.append(Spawned(role, str(Path(ledger_dir) / ledger) if ledger else ""))
    except BaseException:
        for server in servers:
            server.close()
        raise
    echo, committing, floor, med = servers
    sums = {k: [0, 0.0, 0.0] for k in ("echo_unary", "echo_commit_unary", "floor_unary",
                                        "settle_unary", "echo_stream", "settle_stream")}
    per_round = []
    try:
        async with grpc.aio.insecure_channel(f"{HOST}:{echo.port}") as ech, \
                grpc.aio.insecure_channel(f"{HOST}:{committing.port}") as cch, \
                grpc.aio.insecure_channel(f"{HOST}:{floor.port}") as fch, \
                grpc.aio.insecure_channel(f"{HOST}:{med.port}") as mch:
            e_unary = ech.unary_unary("/bench.Echo/Unary", pb.SettleRequest.SerializeToString,
                                      pb.SettleReply.FromString)
            c_unary = cch.unary_unary("/bench.Echo/Unary", pb.SettleRequest.SerializeToString,
                                      pb.SettleReply.FromString)
            f_unary = fch.unary_unary("/bench.Echo/Unary", pb.SettleRequest.SerializeToString,
                                      pb.SettleReply.FromString)
            e_stream = ech.stream_stream("/bench.Echo/Stream", pb.SettleRequest.SerializeToString,
                                         pb.SettleReply.FromString)
            stub = pb_grpc.SettlementStub(mch)
            await unary_load(e_unary, 1.0, "warm-e")
            await unary_load(c_unary, 1.0, "warm-c")
            await unary_load(f_unary, 1.0, "warm-f")
            await unary_load(stub.Settle, 1.0, "warm-s")
            for r in range(rounds):
                this = {}
                for name, server, load in (
                        ("echo_unary", echo, lambda: unary_load(e_unary, seconds, "e")),
                        ("echo_commit_unary", committing, lambda: unary_load(c_unary, seconds, "c")),
                        ("floor_unary", floor, lambda: unary_load(f_unary, seconds, "f")),
                        ("settle_unary", med, lambda: unary_load(stub.Settle, seconds, "u")),
                        ("echo_stream", echo, lambda: stream_load(e_stream, seconds, "es")),
                        ("settle_stream", med, lambda: stream_load(stub.SettleStream, seconds, "s"))):
                    n, wall, cpu = await timed(server, load())
                    for k, v in enumerate((n, wall, cpu)):
                        sums[name][k] += v
                    this[name] = n / wall
                per_round.append({"unary_ratio": this["settle_unary"] / this["echo_unary"],
                                  "stream_ratio": this["settle_stream"] / this["echo_stream"],
                                  **this})
            fsyncs = fsync_probe(ledger_dir)
            lat = await fixed_rate(stub.Settle, FIXED_RATE, 2 * seconds * rounds, "r")
    finally:
        for server in servers:
            server.close()
    out = {name: n / wall for name, (n, wall, cpu) in sums.items()}
    out.update({f"{name}_server_cpu_us": cpu / n * 1e6 for name, (n, wall, cpu) in sums.items()})
    out["unary_ratio"] = out["settle_unary"] / out["echo_unary"]
    out["echo_commit_ratio"] = out["echo_commit_unary"] / out["echo_unary"]
    out["floor_ratio"] = out["floor_unary"] / out["echo_unary"]
    out["stream_ratio"] = out["settle_stream"] / out["echo_stream"]
    out["rounds"] = per_round
    out["p50_ms_at_300"], out["p99_ms_at_300"] = pct(lat, 0.50) * 1e3, pct(lat, 0.99) * 1e3
    out["max_ms_at_300"], out["calls_at_300"] = lat[-1] * 1e3, len(lat)
    out["fsync_p50_ms"], out["fsync_p99_ms"] = pct(fsyncs, 0.50) * 1e3, pct(fsyncs, 0.99) * 1e3
    return out


# --- the server's own work, in-process ------------------------------------------------------------

class CpuMeter:
    """A settler or ledger whose chosen methods add their thread CPU time to `spent`."""

    def __init__(self, target, methods):
        self._target, self.spent = target, 0.0
        for name in methods:
            setattr(self, name, self._wrap(getattr(target, name)))

    def _wrap(self, method):
        def timed_method(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent += time.thread_time() - t0
        return timed_method

    def __getattr__(self, name):
        return getattr(self._target, name)


async def measure_inprocess(ledger_dir: str, n: int = 4000, n_lines: int = 2000) -> dict:
    """The server's own work per settlement without gRPC, 64 in flight: the kernel call, the ledger
    (person read, and the writer thread's CPU for the group commit, fsync included) and, apart,
    everything else the service does (conversion, locks, protobuf result). Then the same for
    visits of LINES line items (the same server; the visits above carry precomputed amounts)."""
    from kernel.api import Settler
    from server.ledger import SqliteLedger
    from server.security import SecurityConfig
    from server.server import SettlementService

    settler = CpuMeter(Settler.from_files(), ["settle_one"])
    ledger = SqliteLedger(str(Path(ledger_dir) / "inprocess.db"))
    reader = CpuMeter(ledger, ["read_state"])

    async def run(reqs) -> dict:
        window = asyncio.Semaphore(IN_FLIGHT)

        async def one(r):
            async with window:
                await service.settle(r, "H001", "settle", None, pb.SettleReply().settlement)
        settler.spent = reader.spent = 0.0
        batches0, ops0, writer0 = ledger.batches, ledger.ops, ledger.writer_cpu
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(r) for r in reqs))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        m = len(reqs)
        kernel, read = settler.spent / m, reader.spent / m
        commit = (ledger.writer_cpu - writer0) / m
        return {"server_work_us": (kernel + read + commit) * 1e6, "kernel_us": kernel * 1e6,
                "ledger_read_us": read * 1e6, "commit_share_us": commit * 1e6,
                "inprocess_cpu_us": cpu / m * 1e6, "inprocess_per_s": m / wall,
                "mean_group_commit": (ledger.ops - ops0) / max(1, ledger.batches - batches0)}
    try:
        service = SettlementService(settler, reader, SecurityConfig())
        for r in [visit_request(i, "warm") for i in range(500)]:
            await service.settle(r, "H001", "settle", None, pb.SettleReply().settlement)
        out = await run([visit_request(i, "cpu") for i in range(n)])
        with_lines = await run([visit_request(i, "cpu-lines", lines=LINES) for i in range(n_lines)])
        out.update({f"lines_{key}": value for key, value in with_lines.items()})
    finally:
        ledger.close()
    return out


# --- report ---------------------------------------------------------------------------------------

def met(key: str, value: float) -> bool:
    op, target = TARGETS[key]
    return value >= target if op == ">=" else value < target


def report(r: dict) -> str:
    def row(measure, value, target="", ratio="", ok=None):
        return f"| {measure} | {value} | {target} | {ratio} | {'' if ok is None else ('yes' if ok else 'NO')} |"
    lines = ["| measure | value | target | ratio | met? |", "|---|---|---|---|---|",
             row("unary echo, bare grpcio (64 in flight)", f"{r['echo_unary']:,.0f} calls/s", "peer"),
             row("unary echo that also commits each call to the ledger, no kernel (64 in flight)",
                 f"{r['echo_commit_unary']:,.0f} calls/s", "peer", f"{r['echo_commit_ratio']:.0%} of echo"),
             row("unary Settle without the kernel: request conversion, hash, person read, result "
                 "protobuf, commit (64 in flight)", f"{r['floor_unary']:,.0f} calls/s", "peer",
                 f"{r['floor_ratio']:.0%} of echo"),
             row("unary Settle, committed (64 in flight)", f"{r['settle_unary']:,.0f} calls/s",
                 ">= 70% of echo", f"{r['unary_ratio']:.0%}", met("unary_ratio", r["unary_ratio"])),
             row("streamed echo (64 in flight)", f"{r['echo_stream']:,.0f} msgs/s", "peer"),
             row("SettleStream, committed (64 in flight)", f"{r['settle_stream']:,.0f} msgs/s",
                 ">= 70% of echo", f"{r['stream_ratio']:.0%}", met("stream_ratio", r["stream_ratio"])),
             row(f"Settle latency at {FIXED_RATE}/s ({r['calls_at_300']} calls)",
                 f"p50 {r['p50_ms_at_300']:.2f} ms, p99 {r['p99_ms_at_300']:.2f} ms", "p99 < 10 ms",
                 f"{r['p99_ms_at_300'] / 10:.2f} of target", met("p99_ms_at_300", r["p99_ms_at_300"])),
             row(f"fdatasync of 4 KiB on the ledger's disk at {FIXED_RATE}/s (floor of a durable reply)",
                 f"p50 {r['fsync_p50_ms']:.2f} ms, p99 {r['fsync_p99_ms']:.2f} ms", "peer"),
             row("server work per settlement: kernel + ledger read + commit share (CPU)",
                 f"{r['server_work_us']:.0f} us", "< 150 us",
                 f"{r['server_work_us'] / 150:.2f} of target", met("server_work_us", r["server_work_us"])),
             row("&nbsp; kernel settle_one", f"{r['kernel_us']:.0f} us"),
             row("&nbsp; ledger read (person cache, SQLite on a miss)", f"{r['ledger_read_us']:.0f} us"),
             row("&nbsp; commit share (writer thread incl. fsync), "
                 f"{r['mean_group_commit']:.1f} settlements per fsync", f"{r['commit_share_us']:.0f} us"),
             row("in-process CPU per settlement, all of it (+ conversion, locks, protobuf)",
                 f"{r['inprocess_cpu_us']:.0f} us"),
             row(f"server work per settlement, visits of {LINES} line items: kernel / ledger read / "
                 "commit share", f"{r['lines_server_work_us']:.0f} us: {r['lines_kernel_us']:.0f} / "
                 f"{r['lines_ledger_read_us']:.0f} / {r['lines_commit_share_us']:.0f} us", "< 150 us",
                 f"{r['lines_server_work_us'] / 150:.2f} of target"),
             row("server process CPU per unary call (gRPC stack included): echo / echo + commit / "
                 "no kernel / Settle",
                 f"{r['echo_unary_server_cpu_us']:.0f} / {r['echo_commit_unary_server_cpu_us']:.0f} / "
                 f"{r['floor_unary_server_cpu_us']:.0f} / {r['settle_unary_server_cpu_us']:.0f} us"),
             row("server process CPU per streamed message: echo / SettleStream",
                 f"{r['echo_stream_server_cpu_us']:.0f} / {r['settle_stream_server_cpu_us']:.0f} us")]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=["bench", "echo", "echo-commit", "floor", "medsettle"],
                    default="bench")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ledger", default="")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one load phase")
    ap.add_argument("--rounds", type=int, default=4, help="alternating echo/medsettle rounds")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    ap.add_argument("--ledger-dir", help="where the benchmark ledgers go (default: a temp dir)")
    args = ap.parse_args()
    if args.role == "echo":
        asyncio.run(serve_echo(args.port))
        return
    if args.role == "echo-commit":
        asyncio.run(serve_echo_commit(args.port, args.ledger))
        return
    if args.role == "floor":
        asyncio.run(serve_floor(args.port, args.ledger))
        return
    if args.role == "medsettle":
        asyncio.run(serve_medsettle(args.port, args.ledger))
        return
    with tempfile.TemporaryDirectory(dir=args.ledger_dir) as tmp:
        results = asyncio.run(measure_inprocess(tmp))
        results.update(asyncio.run(measure_remote(args.seconds, args.rounds, tmp)))
    results["met"] = {key: met(key, results[key]) for key in TARGETS}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "grpcio": grpc.__version__, "loadavg": os.getloadavg()}
    print(f"medsettle gRPC benchmark: {os.cpu_count()} cores, {HOST}, {IN_FLIGHT} in flight, "
          f"{args.rounds} alternating rounds of {args.seconds:g} s\n")
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"targets": {k: {"op": op, "target": t} for k, (op, t) in TARGETS.items()}, **results},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
