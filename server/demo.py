"""`medsettle demo`: the whole product on its embedded defaults, and it stops by itself.

1. batch: synthetic visits with line items settled on the sample pack, summary table, Parquet out;
2. real time: `medsettle serve` started as its own process on 127.0.0.1 with a SQLite ledger;
3. the project's load generator sends a bounded mix of PreSettle / Settle / Reverse / queries,
   then checks that every person's ledger totals equal the sum of their acknowledged settlements;
4. the server is stopped with SIGTERM (graceful: in-flight calls finish, the ledger is flushed).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cli import module_command


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="batch settlement, then a real server and a bounded load test")
    p.add_argument("--visits", type=int, default=200_000, help="synthetic visits settled in batch")
    p.add_argument("--requests", type=int, default=3_000, help="calls sent to the server")
    p.add_argument("--out", default="out", help="directory for results, ledger and reports")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_demo)


def _start_server(ledger: Path, log: Path):
    ready = Path(tempfile.mkdtemp(prefix="medsettle-demo-")) / "port"
    cmd, env = module_command("server.cli", "serve", "--port", "0", "--ledger", str(ledger),
                              "--ready-file", str(ready))
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not start within 120 s; see {log}")
        time.sleep(0.1)
    return proc, int(ready.read_text())


def cmd_demo(args) -> int:
    from kernel.api import Settler, write_atomic
    from kernel.cli import summary_table
    from kernel.synth import synth_visits

    from . import loadtest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"1/3 batch: {args.visits:,} synthetic visits with line items on the sample rural pack", flush=True)
    settler = Settler.from_files()
    visits, lines = synth_visits(settler.pack, settler.catalogue, args.visits, seed=args.seed)
    t0 = time.perf_counter()
    result = settler.settle_table(visits, lines, source="synthetic visits", line_source="synthetic lines")
    elapsed = time.perf_counter() - t0
    write_atomic(result.table, out / "results.parquet")
    summary_table(result.table, f"{visits.num_rows:,} visits settled in {elapsed:.2f} s -> {out / 'results.parquet'}")

    ledger = out / "demo-ledger.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    print(f"\n2/3 real time: medsettle serve on 127.0.0.1 with the SQLite ledger {ledger}", flush=True)
    proc, port = _start_server(ledger, out / "demo-server.log")
    try:
        print(f"    listening on 127.0.0.1:{port}; sending {args.requests:,} calls "
              "(PreSettle / Settle / Reverse / queries) from 16 concurrent clients", flush=True)
        cfg = loadtest.Config(target=f"127.0.0.1:{port}", concurrency=16, duration=120.0,
                              requests=args.requests, visits=5_000, seed=args.seed, progress=False)
        report = loadtest.run(cfg)
        print(loadtest.summary(report))
    finally:
        print("\n3/3 stopping the server (SIGTERM: finish in-flight calls, flush the ledger)", flush=True)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    print(f"    server exited with {code}; ledger kept at {ledger} (medsettle serve --ledger {ledger} resumes it)")
    led = report["ledger_check"]
    return 0 if code == 0 and led is not None and led.get("ok") else 1


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(prog="python -m server.demo")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["demo", *sys.argv[1:]])
    sys.exit(ns.func(ns))
