"""Re-settlement benchmark: a 10M-visit Parquet re-settled end to end (read, two versions, deltas,
write) in one process, then on Dask with 1 and 2 workers, on the same input.

    python bench/bench_resettle.py                 # 10,000,000 visits (about 2 GB of Parquet in /tmp)
    python bench/bench_resettle.py --visits 1000000 --dir /tmp/bench

Reports wall time and peak resident memory (the process's, plus the largest worker's for Dask),
against the targets: under 20 s and 4 GiB single-process, and 2 workers at least 1.6x of 1.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args):
    """One measured run in a fresh process, so its peak RSS is its own."""
    sys.path.insert(0, str(ROOT))
    from kernel.resettle import Plan, PolicySpec, resettle
    plan = Plan(visits=args.visits_path, new=PolicySpec(None, "2013-aug"), old=PolicySpec(),
                partition_rows=args.partition_rows)
    t0 = time.perf_counter()
    if args.workers:
        from distributed import Client, LocalCluster
        from kernel.scaleout import resettle_dask
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit="6GiB")
        client = Client(cluster)
        t0 = time.perf_counter()
        resettle_dask(plan, args.out, client)
        wall = time.perf_counter() - t0
        worker_rss = max(v["metrics"]["memory"] for v in client.scheduler_info()["workers"].values())
        client.close()
        cluster.close()
    else:
        resettle(plan, args.out)
        wall = time.perf_counter() - t0
        worker_rss = 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"wall": wall, "peak_rss": peak, "worker_rss": worker_rss}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--visits", type=int, default=10_000_000)
    p.add_argument("--dir", default="/tmp/medsettle-bench")
    p.add_argument("--partition-rows", type=int, default=1_000_000)
    p.add_argument("--child", action="store_true")
    p.add_argument("--visits-path")
    p.add_argument("--out")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    if args.child:
        return child(args)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    visits = d / f"region-{args.visits}" / "visits.parquet"
    if not visits.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kernel.cli", "synth", "--visits", str(args.visits), "--amounts",
                        "precomputed", "--out", str(visits.parent)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"synthesized {args.visits:,} visits in {time.perf_counter() - t0:.1f} s -> {visits}")
    results = {}
    for label, workers in (("single process", 0), ("dask 1 worker", 1), ("dask 2 workers", 2)):
        out = subprocess.run([sys.executable, __file__, "--child", "--visits-path", str(visits),
                              "--out", str(d / f"out-{workers}"), "--workers", str(workers),
                              "--partition-rows", str(args.partition_rows)],
                             cwd=ROOT, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[label] = r
        print(f"{label:<16} wall {r['wall']:7.1f} s   peak RSS {r['peak_rss'] / 2**30:5.2f} GiB"
              + (f"   largest worker {r['worker_rss'] / 2**30:5.2f} GiB" if workers else ""))
    s = results["single process"]
    speedup = results["dask 1 worker"]["wall"] / results["dask 2 workers"]["wall"]
    print(f"\n{args.visits:,} visits: single process {s['wall']:.1f} s (target < 20 s), "
          f"peak {s['peak_rss'] / 2**30:.2f} GiB (target < 4 GiB); "
          f"dask 2 workers vs 1: {speedup:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()
