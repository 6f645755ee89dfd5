"""Dask scale-out: the same outputs as the single-process run, on a small LocalCluster."""
import pyarrow.parquet as pq
import pytest


from kernel.api import Settler  # noqa: E402
from kernel.region import write_region  # noqa: E402
from kernel.resettle import Plan, PolicySpec, resettle  # noqa: E402
from kernel.scaleout import resettle_dask  # noqa: E402
from kernel.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def visits(tmp_path_factory):
    s = Settler.from_files()
    d = tmp_path_factory.mktemp("region")
    write_region(s.pack, s.catalogue, d, n_visits=12_000, seed=11, amounts="precomputed", row_group_size=2_500)
    return str(d / "visits.parquet")


def test_dask_equals_single_process(visits, client, tmp_path):
    plan = Plan(visits=visits, new=PolicySpec(None, "2013-aug"), old=PolicySpec(), partition_rows=3_000)
    one = resettle(plan, tmp_path / "one")
    many = resettle_dask(plan, tmp_path / "dask", client)
    assert one.partitions == many.partitions == 4
    for part in ("visits", "persons"):
        assert pq.read_table(tmp_path / "one" / part).equals(pq.read_table(tmp_path / "dask" / part))
    assert one.summary.equals(many.summary)
    assert one.histogram == many.histogram


def test_dask_refuses_bad_input_and_leaves_nothing(tmp_path, client):
    import datetime as dt
    import pyarrow as pa
    rows = [{"mdtrt_id": f"V{k}", "psn_no": f"P{k}", "insutype": "rural", "medins_lv": "2", "med_type": "21",
             "enddate": dt.date(2013, 3, 1), "setl_time": dt.datetime(2013, 3, 1, 9),
             "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0,
             "inscp_scp_amt": -5 if k == 4 else 1000} for k in range(6)]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    plan = Plan(visits=str(path), new=PolicySpec(None, "2013-aug"), old=PolicySpec(), partition_rows=2)
    with pytest.raises(InputError) as e:
        resettle_dask(plan, tmp_path / "out", client)
    assert e.value.field == "inscp_scp_amt" and e.value.row == 5
    assert [p.name for p in tmp_path.iterdir()] == ["bad.parquet"]


def test_dask_refuses_visit_id_of_two_persons(visits, client, tmp_path):
    """A visit id shared by two persons in two partitions, refused on Dask as in one process."""
    from test_resettle import copy_visit_id_to_another_partition
    path, row, value = copy_visit_id_to_another_partition(visits, tmp_path, 4)
    plan = Plan(visits=str(path), new=PolicySpec(None, "2013-aug"), old=PolicySpec(), partition_rows=3_000)
    with pytest.raises(InputError) as e:
        resettle_dask(plan, tmp_path / "out", client)
    assert (e.value.field, e.value.row, e.value.value) == ("mdtrt_id", row, value)
    assert "the same as row 1" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["dup.parquet"]


def test_dask_with_line_items_equals_single_process(client, tmp_path):
    s = Settler.from_files()
    d = tmp_path / "region"
    write_region(s.pack, s.catalogue, d, n_visits=6_000, seed=12, amounts="lines", row_group_size=2_000)
    plan = Plan(visits=str(d / "visits.parquet"), lines=str(d / "lines.parquet"), new=PolicySpec(None, "2013-aug"),
                old=PolicySpec(), partition_rows=2_000)
    one = resettle(plan, tmp_path / "one")
    many = resettle_dask(plan, tmp_path / "dask", client)
    assert one.partitions == many.partitions == 3
    for part in ("visits", "persons"):
        assert pq.read_table(tmp_path / "one" / part).equals(pq.read_table(tmp_path / "dask" / part))
    assert one.summary.equals(many.summary) and one.gains.equals(many.gains)
