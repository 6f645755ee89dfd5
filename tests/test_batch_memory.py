"""The batch path's helpers: string numbering (kernel.adapter.string_codes) gives each row its code
and each code its first row, the numpy allocator pool (kernel._pool) hands out correct, zeroed
and resizable blocks, and Arrow's pool switch survives batch calls that overlap on threads."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from kernel import _pool, api
from kernel.adapter import _all_distinct, string_codes
from kernel.synth import synth_precomputed


def numbered_by_hand(values):
    """(code per row, -1 for None; first row per code), codes in order of first appearance."""
    seen, codes, first = {}, [], []
    for row, value in enumerate(values):
        if value is None:
            codes.append(-1)
            continue
        if value not in seen:
            seen[value] = len(seen)
            first.append(row)
        codes.append(seen[value])
    return codes, first


def check(values):
    arr = pa.array(values, pa.string())
    codes, first = string_codes(arr)
    assert (codes.tolist(), first.tolist()) == numbered_by_hand(values)
    present = [v for v in values if v is not None]
    if len(present) == len(values):
        assert _all_distinct(arr) == (len(set(values)) == len(values))


@pytest.mark.parametrize("values", [
    [],
    ["", "", "a", ""],
    ["abcdefgh", "abcdefgh\x00", "abcdefg", "abcdefgh"],          # trailing NUL is a different string
    ["身份证号码", "身份证号", "身份证号码"],
    [None, None],
    [None, "a", None, "b", "a"],
    [f"c{k % 9}" for k in range(40)],
    ["z", "y", "x", "y", "z", "w"],
    ["MD01", "MD02", "MD10", "MD11"],                               # ascending: distinct without hashing
    ["MD01", "MD02", "MD02", "MD03"],                               # a repeat stops the ascent
    ["MD01", "MD02", "MD03", "MD01"],
])
def test_string_codes_small(values):
    check(values)


@pytest.mark.parametrize("distinct", [3, 5000, 10**9])
def test_string_codes_random(distinct):
    rng = np.random.default_rng(distinct)
    check([None if k % 7 == 0 else f"P{int(k):0{int(w)}d}"
           for k, w in zip(rng.integers(0, distinct, 20_000), rng.integers(1, 30, 20_000))])


def test_pool_blocks_are_correct_and_kept():
    with _pool.installed():
        assert _pool.active()
        a = np.arange(1_000_000, dtype=np.int64)          # pooled (8 MB)
        small = np.arange(10, dtype=np.int64)              # malloc'd
        a_sum = int(a.sum())
    assert not _pool.active()
    assert a_sum == 999_999 * 1_000_000 // 2
    del a
    blocks, kept_bytes = _pool.kept()
    assert blocks >= 1 and kept_bytes >= 8_000_000
    fresh = _pool.mapped()
    with _pool.installed():
        z = np.zeros(1_000_000, np.int64)                  # a kept, dirty block: zeroed again
        assert _pool.mapped() == fresh                     # served from the kept block, not mapped anew
        assert not z.any()
        small.resize(500_000, refcheck=False)              # malloc block grows into a mapped one
        assert small[:10].tolist() == list(range(10))
        small.resize(3_000_000, refcheck=False)            # mapped block grows
        assert small[:10].tolist() == list(range(10))
        small.resize(5, refcheck=False)
        assert small.tolist() == list(range(5))
    del z, small
    _pool.release()
    assert _pool.kept() == (0, 0)


def test_bypassed_arrays_come_from_numpy_even_inside_the_pool():
    _pool.release()
    with _pool.installed():
        with _pool.bypassed():
            assert not _pool.active()
            fresh = _pool.mapped()
            grown = np.ones(2_000_000, np.int64)            # 16 MB from numpy's allocator
            assert _pool.mapped() == fresh
        assert _pool.active()                               # the pool again after the block
        pooled = np.ones(2_000_000, np.int64)
        assert _pool.mapped() > fresh
    del grown
    assert _pool.kept() == (0, 0)                           # freeing numpy's array keeps nothing
    del pooled
    assert _pool.kept()[1] >= 16_000_000
    _pool.release()


def test_forked_child_starts_with_no_kept_blocks():
    import os
    before = _pool.limit()
    _pool.set_limit(1 << 30)
    with _pool.installed():
        a = np.ones(1_000_000)
    del a
    assert _pool.kept()[0] >= 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                           # the child reports what it keeps
        os.write(write, repr(_pool.kept()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"(0, 0)"
    assert _pool.kept()[0] >= 1                            # the parent keeps its own
    _pool.set_limit(before)
    _pool.release()


@pytest.mark.skipif(api._ARROW_POOL is None, reason="this pyarrow has no jemalloc pool to switch to")
def test_arrow_pool_is_restored_when_the_last_overlapping_batch_call_ends():
    before = pa.default_memory_pool().backend_name
    assert before != "jemalloc" or "ARROW_DEFAULT_MEMORY_POOL" in os.environ
    first, second = api._ArrowPoolInUse(), api._ArrowPoolInUse()
    first.__enter__()
    second.__enter__()                          # a batch call on another thread starts meanwhile
    first.__exit__(None, None, None)            # the first ends: the second still has jemalloc
    assert pa.default_memory_pool().backend_name == "jemalloc"
    second.__exit__(None, None, None)
    assert pa.default_memory_pool().backend_name == before
    # and with real threads, each settling batches of its own: the same results, the pool restored
    settler = api.Settler.from_files()
    visits = synth_precomputed(settler.pack, 3_000, seed=3)
    expected = settler.settle_table(visits).table
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: settler.settle_table(visits).table, range(16)))
    assert all(r.equals(expected) for r in results)
    assert pa.default_memory_pool().backend_name == before
