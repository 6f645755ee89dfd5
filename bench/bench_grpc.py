"""Real-time benchmark: medsettle's committed Settle against a bare grpcio echo, in one run.

    python bench/bench_grpc.py                 # ~1 minute; prints a markdown table for the README

Client and server on loopback, server in a subprocess, same messages (bench/echo.proto):
  - unary calls/s at 64 in flight: echo vs Settle (target: Settle >= 70% of echo)
  - streamed messages/s at 64 in flight: echo vs SettleStream (target >= 70%)
  - Settle latency p50/p99 at a fixed 300 settlements/s (target p99 < 10 ms)
  - the server's own CPU per settlement, kernel plus its share of the group commit, measured
    in-process without gRPC (target < 150 us), and the server process's CPU per call under load
Ratios, not absolute numbers, are the result: these machines are shared and noisy.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from server import settlement_pb2 as pb  # noqa: E402
from server import settlement_pb2_grpc as pb_grpc  # noqa: E402

IN_FLIGHT = 64
PERSONS = 20000
_seq = itertools.count()


def visit_request(i: int, tag: str) -> pb.SettleRequest:
    """A county inpatient visit with precomputed amounts, one of PERSONS people."""
    month = 1 + i % 12
    v = pb.Visit(mdtrt_id=f"{tag}-{i}", psn_no=f"B{i % PERSONS:06d}", insutype="rural", medins_lv="2",
                 med_type="21", enddate=f"2013-{month:02d}-10", setl_time=f"2013-{month:02d}-10T09:30:00",
                 dise_codg="K35.9", medfee_sumamt=1_250_000, fulamt_ownpay_amt=50_000,
                 overlmt_selfpay=0, preselfpay_amt=20_000, inscp_scp_amt=1_180_000,
                 inscp_essential_amt=0)
    return pb.SettleRequest(request_id=f"{tag}-{i}", visit=v)


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

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(
            unary, pb.SettleRequest.FromString, pb.SettleReply.SerializeToString),
        "Stream": grpc.stream_stream_rpc_method_handler(
            stream, pb.SettleRequest.FromString, pb.SettleReply.SerializeToString)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def serve_medsettle(port: int, ledger: str):
    from server.security import SecurityConfig
    from server.server import ServerConfig, start
    running = await start(ServerConfig(port=port, ledger_path=ledger,
                                       security=SecurityConfig(tokens={"bench": "H001"})))
    print("ready", flush=True)
    await running.server.wait_for_termination()


def spawn(role: str, port: int, ledger: str = "") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--port", str(port),
                             "--ledger", ledger], stdout=subprocess.PIPE, cwd=str(ROOT))
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- load ---------------------------------------------------------------------------------------

METADATA = (("authorization", "Bearer bench"),)


async def unary_load(call, seconds: float, tag: str) -> int:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker():
        nonlocal done
        while time.perf_counter() < stop:
            await call(visit_request(next(_seq), tag), metadata=METADATA, timeout=30)
            done += 1
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return done


async def stream_load(method, seconds: float, tag: str) -> int:
    window = asyncio.Semaphore(IN_FLIGHT)
    stop = time.perf_counter() + seconds
    received = 0

    async def requests():
        while time.perf_counter() < stop:
            await window.acquire()
            yield visit_request(next(_seq), tag)

    call = method(requests(), metadata=METADATA, timeout=seconds + 30)
    async for reply in call:
        if getattr(reply, "error", None) is not None and reply.HasField("error"):
            raise RuntimeError(reply.error.message)
        received += 1
        window.release()
    return received


async def fixed_rate(call, rate: int, seconds: float, tag: str) -> list[float]:
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


async def measure_remote(seconds: float) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = 50600 + os.getpid() % 300
        echo = spawn("echo", port)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                unary = ch.unary_unary("/bench.Echo/Unary", pb.SettleRequest.SerializeToString,
                                       pb.SettleReply.FromString)
                stream = ch.stream_stream("/bench.Echo/Stream", pb.SettleRequest.SerializeToString,
                                          pb.SettleReply.FromString)
                await unary_load(unary, 1.0, "warm")
                out["echo_unary"] = await unary_load(unary, seconds, "e") / seconds
                out["echo_stream"] = await stream_load(stream, seconds, "es") / seconds
        finally:
            echo.kill()
            echo.wait()
        med = spawn("medsettle", port + 1, str(Path(tmp) / "ledger.db"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port + 1}") as ch:
                stub = pb_grpc.SettlementStub(ch)
                await unary_load(stub.Settle, 1.0, "warm")
                cpu0 = cpu_seconds(med.pid)
                n = await unary_load(stub.Settle, seconds, "u")
                out["settle_unary"] = n / seconds
                out["server_cpu_per_call_us"] = (cpu_seconds(med.pid) - cpu0) / n * 1e6
                out["settle_stream"] = await stream_load(stub.SettleStream, seconds, "s") / seconds
                lat = await fixed_rate(stub.Settle, 300, seconds, "r")
                out["p50_ms"], out["p99_ms"] = pct(lat, 0.50) * 1e3, pct(lat, 0.99) * 1e3
        finally:
            med.terminate()
            med.wait()
    return out


class FixedKernel:
    """The real acc_key, and settle_one answering one precomputed result: the server's own cost."""

    def __init__(self, settler, one):
        self.acc_key, self.one = settler.acc_key, one

    def settle_one(self, visit, lines, acc, balance, mode):
        return self.one


async def measure_inprocess(n: int = 3000, fixed_kernel=False) -> dict:
    """The server's own work per settlement without gRPC: convert, kernel, ledger (group commit)."""
    from kernel.api import Settler
    from server import convert
    from server.ledger import SqliteLedger
    from server.security import SecurityConfig
    from server.server import SettlementService

    settler = Settler.from_files()
    if fixed_kernel:
        visit, lines = convert.request_to_kernel(visit_request(0, "fixed"))
        settler = FixedKernel(settler, settler.settle_one(visit, lines, {}, 0, "settle"))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = SqliteLedger(str(Path(tmp) / "ledger.db"))
        service = SettlementService(settler, ledger, SecurityConfig())
        reqs = [visit_request(i, "cpu") for i in range(n + 200)]
        for r in reqs[:200]:
            await service.settle(r, "H001", "settle", None)
        window = asyncio.Semaphore(IN_FLIGHT)

        async def one(r):
            async with window:
                await service.settle(r, "H001", "settle", None)
        batches0, ops0 = ledger.batches, ledger.ops
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(r) for r in reqs[200:]))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        batch = (ledger.ops - ops0) / max(1, ledger.batches - batches0)
        ledger.close()
        visit, lines = convert.request_to_kernel(reqs[0])
        t0 = time.process_time()
        for _ in range(500):
            settler.settle_one(visit, lines, {}, 0, "settle")
        kernel = (time.process_time() - t0) / 500
    return {"cpu_per_settlement_us": cpu / n * 1e6, "kernel_settle_one_us": kernel * 1e6,
            "inprocess_settlements_per_s": n / wall, "mean_group_commit": batch}


def report(r: dict) -> str:
    def ratio(a, b):
        return f"{r[a] / r[b]:.0%}"
    rows = [
        ("unary echo (bare grpcio, 64 in flight)", f"{r['echo_unary']:,.0f} calls/s", "limit", ""),
        ("unary Settle, committed", f"{r['settle_unary']:,.0f} calls/s",
         ratio("settle_unary", "echo_unary") + " of echo", ">= 70%"),
        ("streamed echo (64 in flight)", f"{r['echo_stream']:,.0f} msgs/s", "limit", ""),
        ("SettleStream, committed", f"{r['settle_stream']:,.0f} msgs/s",
         ratio("settle_stream", "echo_stream") + " of echo", ">= 70%"),
        ("Settle latency at 300/s", f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms", "", "p99 < 10 ms"),
        ("server CPU per settlement, no gRPC (convert + kernel + commit share)",
         f"{r['cpu_per_settlement_us']:.0f} us", f"kernel settle_one {r['kernel_settle_one_us']:.0f} us",
         "< 150 us"),
        ("server CPU per settlement without the kernel (a fixed result instead of settle_one)",
         f"{r['nokernel_cpu_us']:.0f} us", f"{r['nokernel_rate']:,.0f} settlements/s, "
         f"{r['nokernel_batch']:.1f} per commit", ""),
        ("server process CPU per unary Settle (incl. gRPC stack)",
         f"{r['server_cpu_per_call_us']:.0f} us", "", ""),
        ("group commit: settlements per fsync'd transaction (in-process, 64 in flight)",
         f"{r['mean_group_commit']:.1f}", "", ""),
    ]
    lines = ["| measure | result | ratio / note | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["bench", "echo", "medsettle"], default="bench")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ledger", default="")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if args.role == "echo":
        asyncio.run(serve_echo(args.port))
        return
    if args.role == "medsettle":
        asyncio.run(serve_medsettle(args.port, args.ledger))
        return
    results = asyncio.run(measure_inprocess())
    fixed = asyncio.run(measure_inprocess(fixed_kernel=True))
    results.update(nokernel_cpu_us=fixed["cpu_per_settlement_us"],
                   nokernel_rate=fixed["inprocess_settlements_per_s"],
                   nokernel_batch=fixed["mean_group_commit"])
    results.update(asyncio.run(measure_remote(args.seconds)))
    print(f"medsettle gRPC benchmark, {os.cpu_count()} cores, loopback, {IN_FLIGHT} in flight\n")
    print(report(results))


if __name__ == "__main__":
    main()
