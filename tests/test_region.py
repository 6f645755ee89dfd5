"""The synthetic region: calibrated to SOURCE-FIGURES.md, deterministic for a seed, valid for the kernel."""
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kernel.api import Settler
from kernel.cli import main
from kernel.region import COUNTIES, region_sizes, write_region


@pytest.fixture(scope="module")
def settler():
    return Settler.from_files()


@pytest.fixture(scope="module")
def region(settler, tmp_path_factory):
    d = tmp_path_factory.mktemp("region")
    write_region(settler.pack, settler.catalogue, d, n_visits=150_000, seed=3, amounts="precomputed")
    return d


def test_default_size_is_the_source_region():
    visits, enrollees = region_sizes()
    assert enrollees == 1_620_000
    assert 4_000_000 < visits < 4_200_000          # 2.5428 compensations per enrollee


def test_calibrated_figures(region, settler):
    meta = json.loads((region / "region.json").read_text())
    assert len(meta["counties"]) == 9 and sum(c["enrollees"] for c in meta["counties"]) == meta["enrollees"]
    v = pq.read_table(region / "visits.parquet")
    assert v.num_rows == 150_000
    assert abs(v.num_rows / meta["enrollees"] - 2.54) < 0.01
    assert set(v.column("insu_admdvs").to_pylist()) == {c[0] for c in COUNTIES}
    r = settler.settle_table(v).table
    inp = np.asarray(pc.equal(v.column("med_type"), "21"))
    fee, fund = np.asarray(r.column("medfee_sumamt")), np.asarray(r.column("fund_pay_sumamt"))
    assert 8_000_00 < fee[inp].mean() < 10_500_00                      # about 9,000 yuan a stay
    assert 0.61 < fund[inp].sum() / fee[inp].sum() < 0.675             # 64.27% actual inpatient ratio
    assert 100_00 < fund.sum() / (fund > 0).sum() < 150_00             # about 124.5 yuan a compensation
    levels = np.asarray(v.column("medins_lv").to_pylist())[inp]
    assert all(0.15 < (levels == lv).mean() < 0.6 for lv in "123")   # township / county / city mix
    persons = pq.read_table(region / "persons.parquet")
    assert persons.num_rows == pc.count_distinct(v.column("psn_no")).as_py()
    assert pq.read_table(region / "institutions.parquet").num_rows == 9 * 14 + 6


def test_deterministic_and_line_items_through_cli(tmp_path, settler):
    for k in (1, 2):
        assert main(["synth", "--visits", "3000", "--seed", "4", "--out", str(tmp_path / f"r{k}")]) == 0
    a, b = (pq.read_table(tmp_path / f"r{k}" / "visits.parquet") for k in (1, 2))
    assert a.equals(b)
    lines = pq.read_table(tmp_path / "r1" / "lines.parquet")
    assert lines.equals(pq.read_table(tmp_path / "r2" / "lines.parquet"))
    r = settler.settle_table(a, lines).table
    assert r.num_rows == 3000
