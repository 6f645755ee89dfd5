"""Re-settlement benchmark: a 10M-visit Parquet re-settled end to end (read, two versions, deltas,
write) on this machine (worker processes, one per core), then on Dask with 1 and 2 workers, on the
same input.

    python bench/bench_resettle.py                      # 10,000,000 visits (synthesized once, ~330 MB in /tmp)
    python bench/bench_resettle.py --visits 1000000 --runs single
    python bench/bench_resettle.py --visits 20000 --partition-rows 5000 --dir /tmp/mb-small   # ~10 s check

Each run is a fresh child process; this process samples the resident memory of the child and all
its descendants (worker processes, Dask nanny and workers) every 100 ms: "peak RSS" is the peak of
that sum, the memory the run really held. Prints progress, a table (wall time, peak RSS, visits/s,
Dask 2 workers vs 1) and writes JSON (default out/bench_resettle.json). Targets (issue 5): under
20 s and 4 GiB for the single-machine run, Dask 2 workers at least 1.6x of 1.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ is not installed: reach it from the checkout after the installed packages (kernel stays the
# installed build; an in-place build not installed is found here too)
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from server.cli import module_command  # noqa: E402  (children import exactly what this process does)

RUNS = {"single": ("single machine", 0), "single1": ("one process", 0), "dask1": ("dask 1 worker", 1),
        "dask2": ("dask 2 workers", 2)}


class LineProgress:
    """The bits of rich.progress.Progress that kernel.resettle uses, as lines on stderr."""

    def __init__(self, label):
        self.label, self.tasks, self.t0 = label, {}, time.perf_counter()

    def add_task(self, description, total=None):
        k = len(self.tasks)
        self.tasks[k] = [description, total, 0]
        self._print(k)
        return k

    def update(self, task, advance=1):
        self.tasks[task][2] += advance
        self._print(task)

    def _print(self, k):
        desc, total, done = self.tasks[k]
        print(f"  [{self.label} {time.perf_counter() - self.t0:6.1f} s] {desc}: {done}/{total or '?'}",
              file=sys.stderr, flush=True)


def child(args):
    """One measured run (called in a fresh process)."""
    from kernel.resettle import Plan, PolicySpec, resettle
    plan = Plan(visits=args.visits_path, new=PolicySpec(None, "2013-aug"), old=PolicySpec(),
                partition_rows=args.partition_rows, processes=1 if args.run == "single1" else args.processes)
    label = RUNS[args.run][0]
    progress = LineProgress(label)
    extra = {}
    if args.run in ("single", "single1"):
        plan.new.settler(), plan.old.settler()            # packs compiled before the clock starts
        t0 = time.perf_counter()
        outcome = resettle(plan, args.out, progress=progress)
        wall = time.perf_counter() - t0
        from kernel.resettle import processes_for
        extra["processes"] = processes_for(plan, outcome.rows, outcome.partitions)
    else:
        from distributed import Client
        from kernel.scaleout import local_cluster, resettle_dask
        workers = RUNS[args.run][1]
        t_start = time.perf_counter()
        if args.dask_trim:        # Dask's own default: MALLOC_TRIM_THRESHOLD_=65536 in the workers
            from distributed import LocalCluster
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, memory_limit="6GiB")
        else:
            cluster = local_cluster(workers, memory_limit="6GiB")
        extra["dask_malloc_trim"] = bool(args.dask_trim)
        client = Client(cluster)
        extra["cluster_start_s"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        outcome = resettle_dask(plan, args.out, client, progress=progress)
        wall = time.perf_counter() - t0
        client.close()
        cluster.close()
    print(json.dumps({"wall": wall, "rows": outcome.rows, "partitions": outcome.partitions,
                      "owed_total": outcome.histogram["owed_total"],
                      "recovered_total": outcome.histogram["recovered_total"], **extra}))


def tree_rss(pid):
    import psutil
    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measured(cmd, env):
    """Run cmd (stderr passed through for progress); (its last stdout line as JSON, peak tree RSS)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return json.loads(out.strip().splitlines()[-1]), peak[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--visits", type=int, default=10_000_000)
    p.add_argument("--dir", default="/tmp/medsettle-bench", help="input and outputs (default %(default)s)")
    p.add_argument("--partition-rows", type=int, default=500_000)
    p.add_argument("--processes", type=int, default=0, help="worker processes of the single-machine run (0: per core)")
    p.add_argument("--runs", default="single,single1,dask1,dask2",
                   help="which runs: single (worker processes), single1 (one process), dask1, dask2 "
                        "(default %(default)s)")
    p.add_argument("--json", default=str(ROOT / "out" / "bench_resettle.json"))
    p.add_argument("--dask-trim", action="store_true",
                   help="Dask workers with Dask's MALLOC_TRIM_THRESHOLD_=65536 (default: glibc's defaults, "
                        "see kernel/scaleout.py)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--visits-path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    visits = d / f"region-{args.visits}" / "visits.parquet"
    if not visits.exists():
        print(f"synthesizing {args.visits:,} visits -> {visits} (once) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        cmd, env = module_command("kernel.cli", "synth", "--visits", str(args.visits), "--amounts",
                                  "precomputed", "--out", str(visits.parent))
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"synthesized in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    import pyarrow
    import psutil
    load_before = os.getloadavg()
    results = {}
    for key in [r.strip() for r in args.runs.split(",") if r.strip()]:
        label, _ = RUNS[key]
        print(f"{label}:", file=sys.stderr, flush=True)
        r, peak = measured(*module_command(
            "bench.bench_resettle", "--child", "--run", key, "--visits-path", str(visits),
            "--out", str(d / f"out-{key}"), "--partition-rows", str(args.partition_rows),
            "--processes", str(args.processes), *(["--dask-trim"] if args.dask_trim else [])))
        r["peak_rss"] = peak
        r["visits_per_s"] = r["rows"] / r["wall"]
        results[key] = r
    load_after = os.getloadavg()
    same = len({(r["owed_total"], r["recovered_total"]) for r in results.values()}) <= 1

    print(f"\nre-settlement of {args.visits:,} visits (2013 under the August rules vs as enacted), "
          f"{psutil.cpu_count()} cores, load {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(f"{'run':<28}{'wall s':>9}{'peak RSS GiB':>14}{'visits/s':>14}")
    for key, r in results.items():
        label = RUNS[key][0] + (f" ({r['processes']} proc.)" if "processes" in r else "")
        print(f"{label:<28}{r['wall']:9.1f}{r['peak_rss'] / 2**30:14.2f}{r['visits_per_s']:14,.0f}")
    summary = {"visits": args.visits, "partition_rows": args.partition_rows, "runs": results,
               "cores": psutil.cpu_count(), "load_before": load_before, "load_after": load_after,
               "python": platform.python_version(), "pyarrow": pyarrow.__version__,
               "same_totals": same, "targets": {"wall_s": 20, "peak_rss_gib": 4, "dask_2_vs_1": 1.6}}
    if "dask1" in results and "dask2" in results:
        ratio = results["dask1"]["wall"] / results["dask2"]["wall"]
        summary["dask_2_vs_1"] = ratio
        print(f"dask 2 workers vs 1: {ratio:.2f}x (target >= 1.6x)")
    if "single" in results and "single1" in results:
        summary["single_vs_one_process"] = results["single1"]["wall"] / results["single"]["wall"]
        print(f"single machine vs one process: {summary['single_vs_one_process']:.2f}x")
    if "single" in results:
        s = results["single"]
        print(f"single machine: {s['wall']:.1f} s (target < 20 s), peak {s['peak_rss'] / 2**30:.2f} GiB "
              f"(target < 4 GiB)")
    print("owed/recovered totals identical across runs" if same else "WARNING: runs disagree on the totals")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
