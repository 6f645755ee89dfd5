"""Settler.settle_file settles a file chunk by chunk (kernel/chunks.py) and gives exactly what one
settle_table call over the whole file gives: results, setldetail rows, accumulators, balances, and
for a file with one problem the same error with the same row or line number; a refused file
leaves nothing behind."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from kernel import chunks
from kernel.errors import InputError
from kernel.synth import synth_precomputed, synth_visits


@pytest.fixture(scope="module")
def with_lines(city):
    # few persons for many visits: most persons' visits span several chunks
    return synth_visits(city.pack, city.catalogue, 4_000, seed=11, n_persons=500)


def plain(table):
    """Dictionary columns as their values: the Parquet file and the in-memory table compare equal."""
    return table.cast(pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                                 for f in table.schema]))


def write(tmp_path, name, table, row_group_size):
    path = tmp_path / name
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def assert_same(result, path, whole, detail_path=None):
    assert plain(pq.read_table(path)).equals(plain(whole.table))
    if detail_path is not None:
        assert plain(pq.read_table(detail_path)).equals(plain(whole.detail))
    assert result.accumulators.equals(whole.accumulators)
    assert result.balances.equals(whole.balances)
    assert result.visits == whole.table.num_rows


def test_chunks_with_line_items_equal_one_call(city, with_lines, tmp_path):
    """Chunks of 700 visits over row groups of 333 and line-item groups of 1,000 (spilled per chunk)."""
    visits, lines = with_lines
    vpath, lpath = write(tmp_path, "v.parquet", visits, 333), write(tmp_path, "l.parquet", lines, 1_000)
    whole = city.settle_table(visits, lines, detail=True)
    calls = []
    result = city.settle_file(vpath, tmp_path / "out.parquet", lpath, detail_path=tmp_path / "detail.parquet",
                              chunk_rows=700, progress=lambda *a: calls.append(a))
    assert (result.chunks, result.one_pass) == (6, False)        # 4,000 = 5 x 700 + 500
    assert_same(result, tmp_path / "out.parquet", whole, tmp_path / "detail.parquet")
    settled = [done for done, total, _ in calls if total == 4_000 and done > 0]
    assert settled == [700, 1_400, 2_100, 2_800, 3_500, 4_000]
    assert sorted(os.listdir(tmp_path)) == ["detail.parquet", "l.parquet", "out.parquet", "v.parquet"]


def test_chunks_of_precomputed_visits_and_of_tables_equal_one_call(city, tmp_path):
    visits = synth_precomputed(city.pack, 3_000, seed=4, n_persons=300)
    whole = city.settle_table(visits, detail=True)
    path = write(tmp_path, "v.parquet", visits, 400)
    assert_same(city.settle_file(path, tmp_path / "a.parquet", detail_path=tmp_path / "ad.parquet", chunk_rows=999),
                tmp_path / "a.parquet", whole, tmp_path / "ad.parquet")
    assert_same(city.settle_file(visits, tmp_path / "b.parquet", chunk_rows=128), tmp_path / "b.parquet", whole)
    csv = tmp_path / "v.csv"
    pcsv.write_csv(visits, csv)
    from_csv = city.settle_table(pcsv.read_csv(csv))     # CSV's own types: read whole, then chunked
    assert_same(city.settle_file(csv, tmp_path / "c.parquet", chunk_rows=1_000), tmp_path / "c.parquet", from_csv)


def test_a_person_going_back_in_time_across_chunks_is_settled_in_one_pass(city, with_lines, tmp_path):
    """Shuffled rows: a person's later chunk holds an earlier visit; chunking would move their
    deductibles and caps, so the file is settled in one call, with the same results."""
    visits, lines = with_lines
    shuffled = visits.take(pa.array(np.random.default_rng(3).permutation(visits.num_rows)))
    vpath, lpath = write(tmp_path, "v.parquet", shuffled, 500), write(tmp_path, "l.parquet", lines, 2_000)
    whole = city.settle_table(shuffled, lines, detail=True)
    said = []
    result = city.settle_file(vpath, tmp_path / "out.parquet", lpath, detail_path=tmp_path / "d.parquet",
                              chunk_rows=600, progress=lambda *a: said.append(a[2]))
    assert result.one_pass
    assert any("go back in time" in what for what in said)
    assert_same(result, tmp_path / "out.parquet", whole, tmp_path / "d.parquet")


def refused(settler, tmp_path, visits, lines, chunk_rows=500):
    """The chunked error and the one-call error (as strings); checks nothing was written."""
    vpath = write(tmp_path, "v.parquet", visits, 256)
    lpath = write(tmp_path, "l.parquet", lines, 900) if lines is not None else None
    with pytest.raises(InputError) as chunked:
        settler.settle_file(vpath, tmp_path / "out.parquet", lpath, detail_path=tmp_path / "d.parquet",
                            chunk_rows=chunk_rows)
    with pytest.raises(InputError) as whole:
        settler.settle_table(visits, lines, source=str(vpath), line_source=str(lpath))
    assert sorted(os.listdir(tmp_path)) == sorted(["v.parquet"] + (["l.parquet"] if lines is not None else []))
    return str(chunked.value), str(whole.value)


def replaced(table, name, at, value):
    values = table.column(name).to_pylist()
    values[at] = value(values) if callable(value) else value
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))


@pytest.mark.parametrize("case", ["duplicate id", "duplicate id, no lines", "bad level", "bad line price",
                                  "line of no visit"])
def test_errors_name_the_row_or_line_of_the_file(city, with_lines, tmp_path, case):
    visits, lines = with_lines
    if case == "duplicate id":
        visits = replaced(visits, "mdtrt_id", 2_100, lambda ids: ids[10])
        expect = "row 2101: mdtrt_id: duplicate visit id"
    elif case == "duplicate id, no lines":
        visits = replaced(synth_precomputed(city.pack, 2_000, seed=1), "mdtrt_id", 1_700, lambda ids: ids[3])
        lines = None
        expect = "row 1701: mdtrt_id: duplicate visit id"
    elif case == "bad level":
        visits = replaced(visits, "medins_lv", 2_500, "9")
        expect = "row 2501: medins_lv: unknown code"
    elif case == "bad line price":
        at = lines.num_rows - 5
        lines = replaced(lines, "pric", at, -1)
        expect = f"line {at + 1}: pric: must not be negative"
    else:
        lines = replaced(lines, "mdtrt_id", 7_000, "NO-SUCH-VISIT")
        expect = "line 7001: mdtrt_id: line of a visit not in the visits"
    chunked, whole = refused(city, tmp_path, visits, lines)
    assert expect in chunked
    assert chunked == whole


def test_string_index_tells_strings_with_the_same_hash_apart(monkeypatch):
    """Every string hashing alike: numbers still go to the right strings."""
    import kernel.resettle
    monkeypatch.setattr(kernel.resettle, "hash_strings", lambda arr: np.zeros(len(arr), np.uint64))
    index = chunks.StringIndex()
    index.add(pa.array(["a", "b", "c"]))
    index.add(pa.array(["d"]))
    assert index.lookup(pa.array(["c", "x", "a", "d", "b"])).tolist() == [2, -1, 0, 3, 1]
    assert index.take([3, 0]).to_pylist() == ["d", "a"]


@pytest.mark.parametrize("weak_hash", [False, True])
def test_string_index_over_many_chunks_answers_as_a_dict(monkeypatch, weak_hash):
    """Strings added over 300 chunks (some empty) are numbered as a dict numbers them, whether their
    hashes differ or collide in fours across runs; the index keeps few sorted runs, not one per chunk."""
    import kernel.resettle
    if weak_hash:
        monkeypatch.setattr(kernel.resettle, "hash_strings",
                            lambda arr: (np.asarray(pc.utf8_length(arr)) % 4).astype(np.uint64))
    rng = np.random.default_rng(5)
    index, numbers, next_new = chunks.StringIndex(), {}, 0
    for _ in range(300):
        new = [f"S{next_new + k}" * int(rng.integers(1, 4)) for k in range(int(rng.integers(0, 40)))]
        next_new += len(new)
        probe = new + list(rng.choice(list(numbers), size=min(len(numbers), 20), replace=False)) + ["absent"]
        assert index.lookup(pa.array(probe, pa.string())).tolist() == [numbers.get(s, -1) for s in probe]
        index.add(pa.array(new, pa.string()))
        numbers.update((s, len(numbers)) for s in new)
    probe = list(numbers)
    assert index.lookup(pa.array(probe, pa.string())).tolist() == list(range(len(numbers)))
    assert index.take([len(numbers) - 1, 0]).to_pylist() == [probe[-1], probe[0]]
    assert len(index.hashes.runs) <= np.log2(len(numbers)) + 1


def test_ascending_visit_ids_are_checked_across_chunks_without_hashing(monkeypatch):
    """A file whose ids ascend is checked chunk after chunk by comparing neighbours; the first chunk
    that does not follow on hashes every earlier id then, and a repeat is still found."""
    import kernel.resettle
    hashed = []
    real = kernel.resettle.hash_strings
    monkeypatch.setattr(kernel.resettle, "hash_strings", lambda arr: hashed.append(len(arr)) or real(arr))
    index = chunks.StringIndex()
    for start in range(0, 5_000, 1_000):
        chunks.check_new_ids(index, pa.array([f"MD{i:08d}" for i in range(start, start + 1_000)]), start, "v")
    assert hashed == [] and index.ascending and index.size == 5_000
    # ids that go back, none seen before: checked by hash, every earlier id hashed once
    chunks.check_new_ids(index, pa.array(["MD00000000x", "MD00000000a"]), 5_000, "v")
    assert sum(hashed) == 5_000 + 2 and not index.ascending
    # from then on each chunk is looked up: a repeat of the first chunk's id is refused
    with pytest.raises(InputError) as e:
        chunks.check_new_ids(index, pa.array(["MD99999999", "MD00000007"]), 5_002, "v")
    assert (e.value.row, e.value.value) == (5_004, "MD00000007")
    assert index.lookup(pa.array(["MD00004999", "MD00000000a", "nope"])).tolist() == [4_999, 5_001, -1]
