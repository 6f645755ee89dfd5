"""The synthetic region: calibrated to SOURCE-FIGURES.md, deterministic for a seed, valid for the kernel."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kernel.api import Settler, shipped_pack_path
from kernel.cli import main
from kernel.region import COUNTIES, HIGH_COST_FEN, region_sizes, write_region
from kernel.resettle import Plan, PolicySpec, resettle


@pytest.fixture(scope="module")
def settler():
    return Settler.from_files()


@pytest.fixture(scope="module", params=["precomputed", "lines"])
def region(request, settler, tmp_path_factory):
    """100,000 visits of the calibrated region, settled under the sample rural pack (both amount modes)."""
    d = tmp_path_factory.mktemp(f"region-{request.param}")
    meta = write_region(settler.pack, settler.catalogue, d, n_visits=100_000, seed=3, amounts=request.param)
    v = pq.read_table(d / "visits.parquet")
    lines = pq.read_table(d / "lines.parquet") if request.param == "lines" else None
    assert (lines is None) == (not (d / "lines.parquet").exists())
    return d, meta, v, settler.settle_table(v, lines).table


def test_default_size_is_the_source_region():
    visits, enrollees = region_sizes()
    assert enrollees == 1_620_000
    # 2.5428 compensations an enrollee, about 92% of visits compensated: about 4.48 million visits
    assert 4_300_000 < visits < 4_600_000


def test_calibrated_figures(region):
    d, meta, v, r = region
    assert len(meta["counties"]) == 9 and sum(c["enrollees"] for c in meta["counties"]) == meta["enrollees"]
    assert v.num_rows == 100_000
    assert set(v.column("insu_admdvs").to_pylist()) == {c[0] for c in COUNTIES}
    inp = np.asarray(pc.equal(v.column("med_type"), "21"))
    fee, fund = np.asarray(r.column("medfee_sumamt")), np.asarray(r.column("fund_pay_sumamt"))
    assert 8_000_00 < fee[inp].mean() < 10_500_00                      # about 9,000 yuan a stay
    assert 0.62 < fund[inp].sum() / fee[inp].sum() < 0.665             # 64.27% actual inpatient ratio
    assert 100_00 < fund.sum() / (fund > 0).sum() < 150_00             # about 124.5 yuan a compensation
    assert abs((fund > 0).sum() / meta["enrollees"] - 2.5428) < 0.05   # benefit coverage 254.28%
    levels = np.asarray(v.column("medins_lv").to_pylist())[inp]
    assert all(0.15 < (levels == lv).mean() < 0.6 for lv in "123")   # township / county / city mix
    assert pq.read_table(d / "institutions.parquet").num_rows == 9 * 14 + 6


def test_very_high_cost_stays(region):
    """1 enrollee in 20,000: round(36,181 / 20,000) = 2 stays at a city hospital, one in each half of
    the year, 450,000-700,000 yuan in scope (line items: quantities are whole, so within 1%)."""
    _, meta, v, r = region
    fee, inscp = np.asarray(r.column("medfee_sumamt")), np.asarray(r.column("inscp_scp_amt"))
    high = np.flatnonzero(fee >= HIGH_COST_FEN[0])
    assert len(high) == round(meta["enrollees"] / 20_000) == 2
    assert ((inscp[high] >= HIGH_COST_FEN[0] * 0.99) & (inscp[high] <= HIGH_COST_FEN[1] * 1.01)).all()
    h = v.take(pa.array(high))
    assert set(h.column("medins_lv").to_pylist()) == {"3"} and set(h.column("med_type").to_pylist()) == {"21"}
    months = sorted(d.month for d in h.column("enddate").to_pylist())
    assert months[0] <= 6 < months[1]
    assert len(set(h.column("psn_no").to_pylist())) == 2


def test_every_enrollee_is_listed(region):
    d, meta, v, _ = region
    persons = pq.read_table(d / "persons.parquet")
    assert persons.num_rows == meta["enrollees"] == pc.count_distinct(persons.column("psn_no")).as_py()
    county = dict(zip(persons.column("psn_no").to_pylist(), persons.column("insu_admdvs").to_pylist()))
    cats = dict(zip(persons.column("psn_no").to_pylist(), persons.column("psn_cats").to_pylist()))
    for psn, region_code, psn_cats in zip(*(v.column(c).to_pylist() for c in ("psn_no", "insu_admdvs", "psn_cats"))):
        assert county[psn] == region_code and cats[psn] == psn_cats
    with_visits = pc.count_distinct(v.column("psn_no")).as_py()
    assert with_visits < persons.num_rows                               # most enrollees have no visit
    for c in meta["counties"]:
        in_county = persons.filter(pc.equal(persons.column("insu_admdvs"), c["code"]))
        assert in_county.num_rows == c["enrollees"]
        assert c["enrollees_by_category"]["none"] == in_county.column("psn_cats").null_count
    assert sum(meta["enrollees_by_category"][k] for k in meta["enrollees_by_category"]) >= meta["enrollees"]


def test_cap_draft_shows_the_high_cost_patient_before_august(region, tmp_path):
    """The shipped draft (serious-illness cap abolished from 1 January) on the region: only the very-high-
    cost patient discharged before August (when the 250,000 cap still held) gains."""
    d, meta, v, r = region
    lines = str(d / "lines.parquet") if meta["amounts"] == "lines" else None
    plan = Plan(visits=str(d / "visits.parquet"), new=PolicySpec(str(shipped_pack_path("sample_rural_draft"))),
                old=PolicySpec(), lines=lines)
    resettle(plan, tmp_path / "out")
    persons = pq.read_table(tmp_path / "out" / "persons")
    gained = persons.filter(pc.greater(persons.column("owed"), 0)).column("psn_no").to_pylist()
    fee = np.asarray(r.column("medfee_sumamt"))
    early = v.filter(pa.array((fee >= HIGH_COST_FEN[0]) & (np.asarray(
        pc.month(v.column("enddate"))) < 8)))
    assert gained == early.column("psn_no").to_pylist() and len(gained) == 1
    # before August the cap held: that patient's serious-illness payment is exactly the 250,000.00 cap
    before_august = np.asarray(pc.month(v.column("enddate"))) < 8
    hifmi = np.asarray(r.column("hifmi_pay"))[(fee >= HIGH_COST_FEN[0]) & before_august]
    assert hifmi.tolist() == [250_000_00]


def test_deterministic_and_line_items_through_cli(tmp_path, settler):
    for k in (1, 2):
        assert main(["synth", "--visits", "3000", "--seed", "4", "--out", str(tmp_path / f"r{k}")]) == 0
    a, b = (pq.read_table(tmp_path / f"r{k}" / "visits.parquet") for k in (1, 2))
    assert a.equals(b)
    lines = pq.read_table(tmp_path / "r1" / "lines.parquet")
    assert lines.equals(pq.read_table(tmp_path / "r2" / "lines.parquet"))
    assert pq.read_table(tmp_path / "r1" / "persons.parquet").equals(pq.read_table(tmp_path / "r2" / "persons.parquet"))
    r = settler.settle_table(a, lines).table
    assert r.num_rows == 3000
    assert json.loads((tmp_path / "r1" / "region.json").read_text())["visits"] == 3000


def test_a_failed_draw_leaves_nothing_half_written(tmp_path, settler):
    # stopped after the first county (here by its progress callback): no Parquet file, complete or
    # partial, is left behind
    def stop():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_region(settler.pack, settler.catalogue, tmp_path, n_visits=2_000, enrollees=800, progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
