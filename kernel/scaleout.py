"""Re-settlement on Dask: the two passes of kernel.resettle as tasks on a cluster.

Pass 1 maps over runs of input row groups (each task splits its rows by hash(psn_no) into
partition files); pass 2 maps over partitions (each task prepares one partition once and settles
it, old and new, with the Cython kernel via Settler.settle_raw, and writes its output part). Tasks
run Arrow single-threaded: one task per worker thread is the unit of parallelism. A person's visits are all in
one partition in settlement-time order, so the results are those of the single-process run, file
for file. Workers need the input, the packs and the output directory on a shared path (NFS, a
mounted bucket); only small summaries travel through the scheduler.

    from kernel.scaleout import resettle_dask
    resettle_dask(plan, "out/resettle", "tcp://scheduler:8786")      # or "local", or a Client

Needs the optional extra ``dask`` (dask[dataframe], distributed).
"""
from __future__ import annotations

import shutil

import pyarrow as pa

from .resettle import Plan, _carried, _raise_carried, check_plan, finish, prepare_work, run_passes


def _aligned(table):
    """A table received from a worker, copied into fresh (aligned) buffers: a pickled table's
    buffers may be unaligned, which Acero (the summary's group-by) warns about."""
    if table is None:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return pa.ipc.open_stream(pa.py_buffer(sink.getvalue().to_pybytes())).read_all()


def _all_done(futures, progress, task):
    """Wait for every task (none may still write into the work directory when it is removed)."""
    from distributed import as_completed
    for _ in as_completed(futures):
        if progress:
            progress.update(task, advance=1)


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (freed memory goes back to the OS at
# once). Setting it also freezes glibc's mmap threshold at 128 KiB, so every large array of a
# re-settlement task is a fresh mapping, paid again in page faults: 4x the faults and about 30% more
# CPU per task on this workload (docs/resettle.md). A LocalCluster started here keeps glibc's
# defaults; for `dask worker` processes, leave the variable unset in their environment.
LOCAL_WORKER_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(n_workers=2, threads_per_worker=1, processes=True, **kwargs):
    """A LocalCluster for re-settlement: one thread per worker, glibc's malloc defaults."""
    import dask
    from distributed import LocalCluster
    with dask.config.set(LOCAL_WORKER_ENV):
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                            dashboard_address=None, **kwargs)


def client_for(scheduler, n_workers=2, threads_per_worker=1, processes=True):
    """(client, cluster or None): a Client given, an address, or "local" for a LocalCluster."""
    from distributed import Client
    if isinstance(scheduler, Client):
        return scheduler, None, False
    if scheduler in (None, "local"):
        cluster = local_cluster(n_workers, threads_per_worker, processes)
        return Client(cluster), cluster, True
    return Client(scheduler), None, True


def resettle_dask(plan: Plan, out_dir, scheduler="local", n_workers=2, progress=None, report=None,
                  processes=True):
    """kernel.resettle.resettle with both passes run as Dask tasks; the same outputs."""
    n_rows, n_parts, chunks = check_plan(plan)
    client, cluster, owned = client_for(scheduler, n_workers, processes=processes)
    out, work = prepare_work(out_dir)
    try:
        def stage(label, fn, tasks):
            task = progress.add_task(f"{label} ({len(tasks)} tasks)", total=len(tasks)) if progress else None
            futures = [client.submit(_carried, fn, *args, pure=False) for args in tasks]
            _all_done(futures, progress, task)
            # the first failed task in task order: the error a run one task after another reports
            return [_raise_carried(f.result()) for f in futures]
        # one thread a task: the unit of parallelism is the worker thread (no Arrow threads within)
        results = run_passes(plan, work, n_parts, chunks, stage, False)
        results = [(_aligned(summary), hist, _aligned(gains)) for summary, hist, gains in results]
        return finish(work, out, plan, results, n_rows, n_parts, report)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if owned:
            client.close()
            if cluster is not None:
                cluster.close()
