"""The batch path's helpers: string numbering (kernel._strhash) equals Arrow's dictionary_encode,
and the numpy allocator pool (kernel._pool) hands out correct, zeroed and resizable blocks."""
import numpy as np
import pyarrow as pa
import pytest

from kernel import _pool
from kernel._strhash import all_distinct, encode


def same_as_arrow(arr):
    if not arr.null_count:
        assert all_distinct(arr) == (len(arr.unique()) == len(arr))
    codes, first = encode(arr)
    expected = arr.dictionary_encode()
    assert np.array_equal(codes, np.asarray(expected.indices.fill_null(-1)))
    assert arr.take(pa.array(first, pa.int64())).equals(expected.dictionary)


@pytest.mark.parametrize("values", [
    [],
    ["", "", "a", ""],
    ["abcdefgh", "abcdefgh\x00", "abcdefg", "abcdefgh"],           # trailing NUL is a different string
    ["x" * 20 + "a", "x" * 20 + "b", "x" * 20 + "a", "x" * 16],    # same first 16 bytes, longer strings
    ["身份证号码", "身份证号", "身份证号码"],
    [None, None],
    [None, "a", None, "b", "a"],
    [f"c{k % 9}" for k in range(40)],                              # a ninth string after a few
    [None] * 9 + [f"code-number-{k % 12:04d}" for k in range(60)] + [None],
])
def test_encode_small(values):
    same_as_arrow(pa.array(values, pa.string()))


@pytest.mark.parametrize("distinct", [3, 8, 9, 5000, 10**9])
def test_encode_random_and_sliced(distinct):
    rng = np.random.default_rng(distinct)
    values = [None if k % 7 == 0 else f"P{int(k):0{int(w)}d}"
              for k, w in zip(rng.integers(0, distinct, 20_000), rng.integers(1, 30, 20_000))]
    arr = pa.array(values, pa.string())
    same_as_arrow(arr)
    same_as_arrow(arr.slice(777, 9000))
    same_as_arrow(arr.slice(3, 5))
    no_nulls = arr.drop_null()
    same_as_arrow(no_nulls)
    same_as_arrow(no_nulls.unique())


def test_encode_refuses_other_types():
    with pytest.raises(TypeError):
        encode(pa.array([1, 2]))


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
    with _pool.installed():
        z = np.zeros(1_000_000, np.int64)                  # a kept, dirty block: zeroed again
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
