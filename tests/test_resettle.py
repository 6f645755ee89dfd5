"""Re-settlement (SETTLEMENT.md section 6): example C end to end through the CLI, the delta
identities on generated visits, and bad input files refused with nothing left behind.

Expected figures are SETTLEMENT.md section 8's (example C: 119,636.80 + 10,000.00 = 129,636.80 owed).
"""
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kernel.api import shipped_pack_path
from kernel.cli import main
from kernel.resettle import COMPARED, FUNDS, Plan, PolicySpec, load_policy, resettle, resettle_tables

Y = 100
DRAFT = str(shipped_pack_path("sample_rural_draft"))


def c_visit(mdtrt_id, end, amount, psn_no="P3"):
    return {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": "rural", "medins_lv": "3", "med_type": "21",
            "begndate": dt.date(*end) - dt.timedelta(days=10), "enddate": dt.date(*end),
            "setl_time": dt.datetime(*end, 12, 0), "dise_codg": "C34.901",
            "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0,
            "inscp_scp_amt": amount * Y, "inscp_essential_amt": 0}


def example_c():
    return [c_visit("C1", (2013, 6, 10), 600_000), c_visit("C2", (2013, 7, 25), 20_000),
            c_visit("C3", (2013, 8, 5), 20_000)]


@pytest.fixture
def c_file(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(example_c()), path)
    return path


def outputs(out):
    visits = pq.read_table(out / "visits").to_pylist()
    persons = pq.read_table(out / "persons").to_pylist()
    return {r["mdtrt_id"]: r for r in visits}, {r["psn_no"]: r for r in persons}


def assert_example_c(out):
    visits, persons = outputs(out)
    assert visits["C1"]["delta_fund_pay_sumamt"] == 119_636_80
    assert visits["C1"]["delta_hifmi_pay"] == 119_636_80
    assert visits["C1"]["old_hifmi_pay"] == 250_000 * Y
    assert visits["C2"]["delta_hifmi_pay"] == 10_000 * Y
    assert visits["C3"]["delta_fund_pay_sumamt"] == 0
    assert {k: v["delta_hifp_pay"] for k, v in visits.items()} == {"C1": 0, "C2": 0, "C3": 0}
    assert persons["P3"]["owed"] == 129_636_80
    assert persons["P3"]["recovered"] == 0
    summary = pq.read_table(out / "summary.parquet")
    assert pc.sum(summary.column("delta_fund_pay_sumamt")).as_py() == 129_636_80


def test_example_c_cli_under_the_august_version(c_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["resettle", str(c_file), "--new-version", "2013-aug", "--out", str(out),
                 "--fund-income", "1000000", "--report", "none"]) == 0
    assert_example_c(out)
    printed = capsys.readouterr().out
    assert "129,636.80" in printed
    assert "warning" in printed     # 1,000,000 income against about 443,000 spent: surplus above 15%


def test_summary_prints_whole_figures_in_80_columns(tmp_path):
    """Example C for 400 persons, printed by `medsettle resettle` in an 80-column terminal: every
    money figure whole (nothing cut to "…"), levels by name.

    Per person (SETTLEMENT.md section 8, C): old funds 53,376.00 + 250,000.00 (C1) + 0 (C2) + 10,000.00
    (C3) = 313,376.00; new 53,376.00 + 369,636.80 + 10,000.00 + 10,000.00 = 443,012.80; cost 640,000.00."""
    from server.cli import module_command
    import os
    import subprocess
    rows = [dict(v, mdtrt_id=f"{v['mdtrt_id']}-{k}", psn_no=f"P{k:03d}") for k in range(400) for v in example_c()]
    path = tmp_path / "c400.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    cmd, env = module_command("kernel.cli", "resettle", str(path), "--new-pack", DRAFT, "--out", str(tmp_path / "out"),
                              "--report", "none")
    done = subprocess.run(cmd, env=dict(env, COLUMNS="80"), capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    assert max(len(line) for line in printed.splitlines()) <= 80 and "…" not in printed
    expected = [
        "125,350,400.00", "177,205,120.00", "+51,854,720.00",       # all funds: 400 x 313,376.00 / 443,012.80
        "21,350,400.00",                                              # basic fund: 400 x 53,376.00 (capped)
        "104,000,000.00", "155,854,720.00",                           # serious illness: 400 x 260,000.00 / 389,636.80
        "130,649,600.00", "78,794,880.00", "-51,854,720.00",          # patient: 256,000,000.00 - funds
        "121,350,400.00", "169,205,120.00", "+47,854,720.00",         # June: 400 x (53,376 + 250,000 / 369,636.80)
        "4,000,000.00",                                               # July new, August old and new: 400 x 10,000.00
    ]
    for figure in expected:
        assert figure in printed, figure
    level = next(line for line in printed.splitlines() if "│ city or" in line)   # the name wraps
    assert "125,350,400.00" in level and "177,205,120.00" in level      # every visit at level 3, by its name


def test_yuan_flags_are_exact_fen():
    from kernel.resettle import yuan_arg
    income, carried = yuan_arg(), yuan_arg(signed=True)
    assert income("648000000") == 64_800_000_000
    assert income("4503599627370.49") == 450_359_962_737_049
    assert income("1,234.5") == 123_450 and carried("-90000.25") == -9_000_025
    for bad in ("1234.567", "0.125", "-5", "12e3", "", "abc"):        # a float would round 0.125 silently
        with pytest.raises(Exception, match="at most two decimals"):
            income(bad)


def test_fund_income_with_three_decimals_is_refused(c_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["resettle", str(c_file), "--new-version", "2013-aug", "--out", str(tmp_path / "out"),
              "--fund-income", "1000000.005"])
    assert e.value.code == 2
    assert "--fund-income" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("income", ["1000.005", 1.5e16, True])
def test_a_region_file_with_inexact_income_is_refused(tmp_path, capsys, income):
    # money in a region file is yuan, exactly: more than two decimals, a float or a flag is refused
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(example_c()), path)
    region = tmp_path / "region.json"
    region.write_text(json.dumps({"counties": [{"code": "530321", "enrollees": 4}], "fund_income_yuan": income}))
    out = tmp_path / "out"
    assert main(["resettle", str(path), "--new-pack", DRAFT, "--out", str(out), "--region", str(region)]) == 2
    assert "fund_income_yuan: yuan as an integer or a string with at most two decimals" in capsys.readouterr().err
    assert not out.exists()


def test_who_gains_by_region_and_category_with_a_region_file(tmp_path, capsys):
    """Example C for two farmers: P3 insured in county B without a category, P4 in county I, a veteran
    (no rule of the sample pack treats veterans differently: the same figures). Each is owed
    129,636.80; person-times compensated: C1 and C3 before (C2: cap spent), all three after."""
    rows = ([dict(v, mdtrt_id=f"{v['mdtrt_id']}-3", psn_no="P3", insu_admdvs="530321", psn_cats=None)
             for v in example_c()]
            + [dict(v, mdtrt_id=f"{v['mdtrt_id']}-4", psn_no="P4", insu_admdvs="530382", psn_cats="veteran")
               for v in example_c()])
    path = tmp_path / "c2.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    region = tmp_path / "region.json"
    region.write_text(json.dumps({"counties": [{"code": "530321", "name": "county B", "enrollees": 4},
                                               {"code": "530382", "name": "county I", "enrollees": 2}],
                                  "enrollees": 6, "fund_income_yuan": 1_000_000}))
    out = tmp_path / "out"
    assert main(["resettle", str(path), "--new-pack", DRAFT, "--out", str(out), "--region", str(region),
                 "--report", "html"]) == 0
    persons = {r["psn_no"]: r for r in pq.read_table(out / "persons").to_pylist()}
    assert (persons["P3"]["region"], persons["P3"]["psn_cats"], persons["P3"]["owed"]) == ("530321", None, 129_636_80)
    assert (persons["P4"]["region"], persons["P4"]["psn_cats"], persons["P4"]["owed"]) == ("530382", "veteran",
                                                                                           129_636_80)
    gains = [(g["region"], g["psn_cats"], g["persons"], g["persons_owed"], g["owed"], g["recovered"])
             for g in pq.read_table(out / "gains.parquet").to_pylist()]
    assert gains == [("530321", None, 1, 1, 129_636_80, 0), ("530382", "veteran", 1, 1, 129_636_80, 0)]
    summary = pq.read_table(out / "summary.parquet")
    veteran = summary.filter(pc.equal(summary.column("psn_cats"), "veteran"))
    assert pc.sum(veteran.column("delta_fund_pay_sumamt")).as_py() == 129_636_80
    printed = capsys.readouterr().out
    for line_start, figures in (("│ 530321", ["1", "129,636.80"]), ("│ 530382", ["1", "129,636.80"]),
                                ("│ veteran", ["1", "129,636.80"]), ("│ none", ["1", "129,636.80"])):
        line = next(x for x in printed.splitlines() if x.startswith(line_start) and "%" not in x)
        assert all(f in line for f in figures), line
    # coverage per county: 2 / 4 enrollees = 50% before, 3 / 4 = 75% after; county I 2 / 2, 3 / 2
    assert "50% → 75%" in printed and "100% → 150%" in printed
    # income from the region file: spent before 2 x 313,376.00 = 626,752.00 -> (1,000,000 - 626,752) / 1,000,000
    # = 37.32%; after 2 x 443,012.80 = 886,025.60 -> 11.39% (bp rounded down)
    assert "37.32%" in printed and "11.39%" in printed
    html = (out / "report.html").read_text()
    assert "530382 county I" in html and "who gains, by category" in html


def test_example_c_cli_draft_pack(c_file, tmp_path):
    """基金测算: the draft (cap removed from 1 January) costed before enactment."""
    out = tmp_path / "out"
    assert main(["resettle", str(c_file), "--new-pack", DRAFT, "--out", str(out)]) == 0
    assert_example_c(out)
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,iVBORw0KGgo') == 2      # both charts, real PNGs
    visits, _ = outputs(out)
    assert visits["C1"]["new_version"].endswith("draft-2013-nocap")


def test_example_c_cli_from_old_results_file(c_file, tmp_path):
    results = tmp_path / "results.parquet"
    assert main(["settle", str(c_file), "--out", str(results)]) == 0
    out = tmp_path / "out"
    assert main(["resettle", str(c_file), "--old-results", str(results), "--new-pack", DRAFT,
                 "--out", str(out), "--report", "none"]) == 0
    assert_example_c(out)


def test_draft_pack_versions():
    pack = load_policy(DRAFT)
    (rural,) = pack.schemes
    assert [v.id for v in rural.versions] == ["draft-2013-nocap"]
    assert rural.versions[0].serious_illness.cap is None
    assert rural.versions[0].effective_from == dt.date(2013, 1, 1)


def test_ratio_draft_pack():
    """The second shipped draft: inpatient ratios township 100%, county 90% (from 95%, 85%), city as
    enacted, for the whole year. Hand computed (SETTLEMENT.md section 8's pack, class A only):
    county, 20,000.00 in June: deductible 300; basic 85% x 19,700 = 16,745.00 -> 90% = 17,730.00 (+985.00);
    serious illness 50% of the in-scope self-pay 3,255.00 = 1,627.50 -> of 2,270.00 = 1,135.00 (-492.50);
    township, 5,000.00 in September: deductible 100; 95% x 4,900 = 4,655.00 -> 4,900.00 (+245.00);
    city, 5,000.00: 65% either way."""
    draft = str(shipped_pack_path("sample_rural_draft_ratio"))
    (rural,) = load_policy(draft).schemes
    assert [(v.id, v.serious_illness.cap) for v in rural.versions] == [("draft-ratio-2013-h1", 250_000 * Y),
                                                                      ("draft-ratio-2013-aug", None)]
    rows = [dict(c_visit("V2", (2013, 6, 15), 20_000, psn_no="P2"), medins_lv="2", dise_codg="K29.700"),
            dict(c_visit("V1", (2013, 9, 10), 5_000, psn_no="P1"), medins_lv="1", dise_codg="K29.700"),
            dict(c_visit("V3", (2013, 3, 1), 5_000, psn_no="P3"), dise_codg="K29.700")]
    per_visit, persons, *_ = resettle_tables(PolicySpec(draft), pa.Table.from_pylist(rows), old=PolicySpec())
    got = {r["mdtrt_id"]: (r["delta_hifp_pay"], r["delta_hifmi_pay"], r["delta_fund_pay_sumamt"])
           for r in per_visit.to_pylist()}
    assert got == {"V2": (985_00, -492_50, 492_50), "V1": (245_00, 0, 245_00), "V3": (0, 0, 0)}
    assert {r["psn_no"]: r["owed"] for r in persons.to_pylist()} == {"P1": 245_00, "P2": 492_50, "P3": 0}


# --- identities on generated visits -----------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from kernel.region import write_region
    from kernel.api import Settler
    s = Settler.from_files()
    d = tmp_path_factory.mktemp("region")
    write_region(s.pack, s.catalogue, d, n_visits=20_000, seed=5, amounts="precomputed", row_group_size=3_000)
    return d / "visits.parquet"


RAISED = """
base = "{base}"
name = "raised"
[[schemes]]
code = "rural"
[[schemes.versions]]
id = "raised"
inherits = "2013-aug"
effective_from = 2013-05-01
[schemes.versions.med_types.21]
ratio = {{ 1 = "97%", 2 = "88%", 3 = "70%" }}
[schemes.versions.serious_illness]
threshold = "5000"
"""


@pytest.fixture(scope="module")
def raised(tmp_path_factory):
    """A draft raising the inpatient ratios and lowering the serious-illness threshold from May."""
    path = tmp_path_factory.mktemp("draft") / "raised.toml"
    path.write_text(RAISED.format(base=shipped_pack_path("sample_rural")))
    return str(path)


def test_delta_identities(generated, raised, tmp_path):
    plan = Plan(visits=str(generated), new=PolicySpec(raised), old=PolicySpec(), partition_rows=4_000)
    outcome = resettle(plan, tmp_path / "out")
    assert outcome.partitions == 5
    v = pq.read_table(tmp_path / "out" / "visits")
    assert v.num_rows == 20_000
    assert sorted(v.column("row").to_pylist()) == list(range(1, 20_001))
    a = {c: np.asarray(v.column(c)) for c in v.column_names if c.startswith(("old_", "new_", "delta_"))
         and "version" not in c and "status" not in c}
    for c in COMPARED:
        assert (a[f"delta_{c}"] == a[f"new_{c}"] - a[f"old_{c}"]).all()
    for side in ("old", "new", "delta"):
        assert (sum(a[f"{side}_{f}"] for f in FUNDS) == a[f"{side}_fund_pay_sumamt"]).all()
        assert (a[f"{side}_acct_pay"] + a[f"{side}_psn_cash_pay"] == a[f"{side}_psn_part_amt"]).all()
    assert a["delta_hifp_pay"].sum() > 0 and a["delta_hifmi_pay"].sum() > 0
    assert (a["delta_fund_pay_sumamt"][np.asarray(v.column("month")) < 201305] == 0).all()
    persons = pq.read_table(tmp_path / "out" / "persons")
    summary = pq.read_table(tmp_path / "out" / "summary.parquet")
    for c in COMPARED:
        total = int(a[f"delta_{c}"].sum())
        assert pc.sum(persons.column(f"delta_{c}")).as_py() == total
        assert pc.sum(summary.column(f"delta_{c}")).as_py() == total
    # per person: the visits' deltas summed
    by_psn = v.group_by("psn_no").aggregate([("delta_psn_part_amt", "sum")])
    got = dict(zip(persons.column("psn_no").to_pylist(), persons.column("delta_psn_part_amt").to_pylist()))
    assert dict(zip(by_psn.column("psn_no").to_pylist(), by_psn.column("delta_psn_part_amt_sum").to_pylist())) == got
    owed = np.asarray(persons.column("owed")) - np.asarray(persons.column("recovered"))
    assert (owed == -np.asarray(persons.column("delta_psn_part_amt"))).all()
    assert pc.sum(summary.column("visits")).as_py() == 20_000
    # the in-memory path gives the same per-visit deltas
    table = pq.read_table(generated)
    mem, *_ = resettle_tables(PolicySpec(raised), table, old=PolicySpec())
    mem = mem.sort_by("row")
    for c in COMPARED:
        assert mem.column(f"delta_{c}").to_pylist() == v.sort_by("row").column(f"delta_{c}").to_pylist()


def test_partition_count_does_not_change_results(generated, tmp_path):
    runs = []
    for k, parts in enumerate((1, 3)):
        plan = Plan(visits=str(generated), new=PolicySpec(None, "2013-aug"), old=PolicySpec(), n_partitions=parts)
        resettle(plan, tmp_path / f"o{k}")
        runs.append(pq.read_table(tmp_path / f"o{k}" / "visits").sort_by("row"))
    assert runs[0].equals(runs[1])


def test_worker_processes_give_the_same_outputs(generated, tmp_path):
    """Partitions settled in two worker processes: the files of the one-process run."""
    runs = []
    for k, processes in enumerate((1, 2)):
        plan = Plan(visits=str(generated), new=PolicySpec(None, "2013-aug"), old=PolicySpec(), partition_rows=5_000,
                    processes=processes)
        runs.append(resettle(plan, tmp_path / f"o{k}"))
    for part in ("visits", "persons"):
        assert pq.read_table(tmp_path / "o0" / part).equals(pq.read_table(tmp_path / "o1" / part))
    assert runs[0].summary.equals(runs[1].summary) and runs[0].histogram == runs[1].histogram


@pytest.fixture(scope="module")
def with_lines(tmp_path_factory):
    """8,000 generated visits with their line items (lines in row groups of 5,000)."""
    from kernel.region import write_region
    from kernel.api import Settler
    s = Settler.from_files()
    d = tmp_path_factory.mktemp("region-lines")
    write_region(s.pack, s.catalogue, d, n_visits=8_000, seed=6, amounts="lines", row_group_size=5_000)
    return d / "visits.parquet", d / "lines.parquet"


def test_line_items_follow_their_visits_whatever_the_partitions(with_lines, raised, tmp_path):
    """Line items routed to their visit's partition through the visit-id buckets: the same outputs
    with 1 or 3 partitions, in 1 or 2 processes, as the in-memory run."""
    visits, lines = with_lines
    runs = []
    for k, (parts, processes) in enumerate(((1, 1), (3, 1), (3, 2))):
        plan = Plan(visits=str(visits), lines=str(lines), new=PolicySpec(raised), old=PolicySpec(),
                    n_partitions=parts, partition_rows=3_000, processes=processes)
        runs.append(resettle(plan, tmp_path / f"o{k}"))
        assert runs[-1].partitions == parts
    tables = [pq.read_table(tmp_path / f"o{k}" / "visits").sort_by("row") for k in range(3)]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert pc.sum(tables[0].column("delta_fund_pay_sumamt")).as_py() > 0
    mem, *_ = resettle_tables(PolicySpec(raised), pq.read_table(visits), old=PolicySpec(), lines=pq.read_table(lines))
    assert mem.sort_by("row").column("delta_fund_pay_sumamt").equals(tables[0].column("delta_fund_pay_sumamt"))


@pytest.mark.parametrize("processes", [1, 2])
def test_refuses_line_of_no_visit_and_bad_line(with_lines, tmp_path, processes):
    """A line item whose visit is not in the visits, and a line whose amount is not cnt x pric: the
    line's number in the lines file is named (across row groups and partitions), nothing is left."""
    from kernel.errors import InputError
    visits, lines = with_lines
    t = pq.read_table(lines)
    ids = t.column("mdtrt_id").to_pylist()
    ids[12_345] = "NO-SUCH-VISIT"
    orphan = tmp_path / "orphan.parquet"
    pq.write_table(t.set_column(0, "mdtrt_id", pa.array(ids)), orphan, row_group_size=5_000)
    amounts = t.column("det_item_fee_sumamt").to_pylist()
    amounts[23_456] += 1
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("det_item_fee_sumamt"), "det_item_fee_sumamt",
                                pa.array(amounts)), wrong, row_group_size=5_000)
    for path, line, field in ((orphan, 12_346, "mdtrt_id"), (wrong, 23_457, "det_item_fee_sumamt")):
        plan = Plan(visits=str(visits), lines=str(path), new=PolicySpec(None, "2013-aug"), old=PolicySpec(),
                    n_partitions=3, partition_rows=3_000, processes=processes)
        with pytest.raises(InputError) as e:
            resettle(plan, tmp_path / "out")
        assert (e.value.field, e.value.line, e.value.source) == (field, line, str(path))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["orphan.parquet", "wrong.parquet"]


def test_prepared_once_settles_as_settle_table(generated, raised):
    """Settler.prepare + settle_prepared (one preparation, two packs) is settle_table, for each pack."""
    table = pq.read_table(generated).slice(0, 6_000)
    old, new = PolicySpec().settler(), PolicySpec(raised).settler()
    batch = old.prepare(table)
    for settler in (new, old):
        got, want = settler.settle_prepared(batch), settler.settle_table(table)
        assert got.table.equals(want.table)
        assert got.accumulators.equals(want.accumulators) and got.balances.equals(want.balances)


def person_totals(per_visit: pa.Table) -> pa.Table:
    """The per-person totals by a plain Arrow group-by of the per-visit output (the oracle of the
    test below): region and categories of the first visit, visits, visits changed, delta per fund,
    owed (补付) / recovered (追回): -sum(delta psn_part_amt) when positive, or its opposite."""
    changed = pc.cast(pc.not_equal(per_visit.column("delta_fund_pay_sumamt"), 0), pa.int64())
    t = per_visit.select(["psn_no", "insutype", "region", "psn_cats"] + [f"delta_{c}" for c in COMPARED]
                         ).append_column("changed", changed)
    g = t.group_by(["psn_no", "insutype"], use_threads=False).aggregate(
        [("region", "first"), ("psn_cats", "first"), ("changed", "count"), ("changed", "sum")]
        + [(f"delta_{c}", "sum") for c in COMPARED])
    names = {"changed_count": "visits", "changed_sum": "visits_changed"}
    g = g.rename_columns([names.get(n, n.rpartition("_")[0] if n.endswith(("_sum", "_first")) else n)
                          for n in g.column_names])
    g = g.select(["psn_no", "insutype", "region", "psn_cats", "visits", "visits_changed"]
                 + [f"delta_{c}" for c in COMPARED])
    net = -np.asarray(g.column("delta_psn_part_amt"))
    g = g.append_column("owed", pa.array(np.maximum(net, 0)))
    g = g.append_column("recovered", pa.array(np.maximum(-net, 0)))
    return g.sort_by([("psn_no", "ascending"), ("insutype", "ascending")])


def test_person_totals_from_the_batch_equal_the_group_by(generated, raised):
    per_visit, persons, *_ = resettle_tables(PolicySpec(raised), pq.read_table(generated), old=PolicySpec())
    assert persons.equals(person_totals(per_visit))


def test_hash_of_a_person_does_not_depend_on_the_array():
    from kernel.resettle import hash_strings
    names = ["530302P00000153", "P1", "", "a-much-longer-person-number-0001", "530302P00000154", "P1"]
    h = hash_strings(pa.array(names))
    assert h[1] == h[5] and len(set(h.tolist())) == 5
    assert (hash_strings(pa.array(names, pa.large_string())) == h).all()
    assert (hash_strings(pa.array(names).dictionary_encode()) == h).all()
    assert (hash_strings(pa.chunked_array([names[:2], names[2:]])) == h).all()
    assert (hash_strings(pa.array(names).slice(3)) == h[3:]).all()
    same_length = pa.array([f"530302P{k:08d}" for k in range(50)])     # the one-length fast path
    assert (hash_strings(same_length) == hash_strings(pa.array(same_length.to_pylist() + ["x"]))[:50]).all()
    # lengths 10, 5, 15, 10: the first and last are 10 and so is the mean, yet they differ
    mixed = ["P000000001", "P0002", "P00000000000003", "P000000004"]
    assert hash_strings(pa.array(mixed)).tolist() == [int(hash_strings(pa.array([s]))[0]) for s in mixed]


# --- bad input files ----------------------------------------------------------------------------

def refused(tmp_path, rows, capsys, field, row, edit=None):
    table = pa.Table.from_pylist(rows)
    if edit:
        table = edit(table)
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=2)      # errors must carry the file's row, across row groups
    out = tmp_path / "out"
    assert main(["resettle", str(path), "--new-version", "2013-aug", "--out", str(out), "--partition-rows", "2"]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert f"{field}:" in message, message
    if row is not None:
        assert f"row {row}," in message or f"row {row}:" in message, message
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.parquet"]      # no partial output left behind
    return message


def many():
    return [c_visit(f"V{k}", (2013, 3, 1 + k), 1_000 + k, psn_no=f"P{k % 3}") for k in range(7)]


def test_refuses_missing_column(tmp_path, capsys):
    refused(tmp_path, many(), capsys, "medins_lv", None, edit=lambda t: t.drop(["medins_lv"]))


def test_refuses_wrong_type(tmp_path, capsys):
    rows = many()
    for r in rows:
        r["inscp_scp_amt"] = str(r["inscp_scp_amt"])
    rows[4]["inscp_scp_amt"] = "12,5"
    refused(tmp_path, rows, capsys, "inscp_scp_amt", 5)


def test_refuses_negative_amount(tmp_path, capsys):
    rows = many()
    rows[5]["preselfpay_amt"] = -100
    refused(tmp_path, rows, capsys, "preselfpay_amt", 6)


def test_refuses_unsorted_visits(tmp_path, capsys):
    rows = many()
    rows[6]["setl_time"] = dt.datetime(2013, 1, 5, 9)       # P0's visit before that person's earlier rows
    rows[6]["enddate"] = dt.date(2013, 1, 5)
    rows[6]["begndate"] = dt.date(2013, 1, 1)
    refused(tmp_path, rows, capsys, "setl_time", 7)


def test_refuses_duplicated_visit(tmp_path, capsys):
    rows = many()
    rows.append(dict(rows[3], setl_time=dt.datetime(2013, 12, 1, 9)))
    refused(tmp_path, rows, capsys, "mdtrt_id", 8)


def copy_visit_id_to_another_partition(visits_path, tmp_path, n_parts):
    """The generated file with row 1's mdtrt_id copied onto a visit of a person in another partition
    (as a faulty export would): returns (path, the copy's 1-based row, the id)."""
    from kernel.resettle import partition_of
    t = pq.read_table(visits_path)
    part = partition_of(t.column("psn_no"), n_parts)
    copy = int(np.flatnonzero(part != part[0])[100])       # a later visit of a person in another partition
    ids = t.column("mdtrt_id").to_pylist()
    ids[copy] = ids[0]
    path = tmp_path / "dup.parquet"
    pq.write_table(t.set_column(0, "mdtrt_id", pa.array(ids)), path, row_group_size=3_000)
    return path, copy + 1, ids[0]


@pytest.mark.parametrize("processes", [1, 2])
def test_refuses_visit_id_of_two_persons_in_two_partitions(generated, tmp_path, processes):
    """A visit id shared by two persons is refused whatever the partition count (each partition alone
    holds it once): the later row is named, with the first, and nothing is left behind."""
    from kernel.errors import InputError
    path, row, value = copy_visit_id_to_another_partition(generated, tmp_path, 4)
    plan = Plan(visits=str(path), new=PolicySpec(None, "2013-aug"), old=PolicySpec(), partition_rows=5_000,
                processes=processes)
    with pytest.raises(InputError) as e:
        resettle(plan, tmp_path / "out")
    assert (e.value.field, e.value.row, e.value.value) == ("mdtrt_id", row, value)
    assert "the same as row 1" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["dup.parquet"]


def test_refuses_results_file_of_other_visits(c_file, tmp_path, capsys):
    results = tmp_path / "results.parquet"
    assert main(["settle", str(c_file), "--out", str(results)]) == 0
    t = pq.read_table(results)
    pq.write_table(t.set_column(0, "mdtrt_id", pa.array(["C1", "C3", "C2"])), results)
    out = tmp_path / "out"
    assert main(["resettle", str(c_file), "--old-results", str(results), "--new-version", "2013-aug",
                 "--out", str(out)]) == 2
    msg = " ".join(capsys.readouterr().err.split())
    assert "mdtrt_id:" in msg and "row 2:" in msg
    assert not out.exists()
