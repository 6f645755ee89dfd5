"""The medsettle command, run in-process on real files."""
import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernel.api import shipped_pack_path
from kernel.cli import main

Y = 100


def test_settle_demo_writes_results_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "results.parquet"
    assert main(["settle", "--demo-visits", "3000", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 3000
    text = capsys.readouterr().out
    assert "actual compensation ratio" in text and "3,000" in text
    assert "medfee_sumamt" in text and "hifp_pay" in text


def printed_rows(text):
    """{item: (amount cell, share cell)} of the summary table rich printed."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def as_fen(cell):
    """'1,234.56' -> 123456 (the printed yuan read back, to compare with sums in fen)."""
    whole, cents = cell.replace(",", "").split(".")
    return int(whole) * 100 + int(cents)


def as_bp(cell):
    """'56.44%' -> 5644, '100%' -> 10000."""
    whole, _, frac = cell.rstrip("%").partition(".")
    return int(whole) * 100 + int(frac or 0)


def test_settle_summary_totals_are_the_sums_of_the_written_results(tmp_path, capsys):
    """The printed totals equal sums over the output Parquet computed here row by row, for a file
    settled in chunks of 700 (accumulators carried between them); the setldetail file's payments
    add up to the same fund totals."""
    from kernel.api import Settler
    from kernel.synth import synth_visits
    city = shipped_pack_path("sample_city")
    settler = Settler.from_files(city)
    visits, lines = synth_visits(settler.pack, settler.catalogue, 3_000, seed=9, n_persons=400)
    vpath, lpath, out, detail = (tmp_path / n for n in ("v.parquet", "l.parquet", "r.parquet", "d.parquet"))
    pq.write_table(visits, vpath, row_group_size=500)
    pq.write_table(lines, lpath)
    assert main(["settle", str(vpath), "--lines", str(lpath), "--out", str(out), "--detail", str(detail),
                 "--pack", str(city), "--chunk-rows", "700"]) == 0
    printed = printed_rows(capsys.readouterr().out)
    results = pq.read_table(out).to_pylist()
    total = {name: sum(r[name] for r in results) for name in
             ("medfee_sumamt", "hifp_pay", "hifob_pay", "hifmi_pay", "cvlserv_pay", "maf_pay", "fund_pay_sumamt",
              "psn_part_amt", "acct_pay", "psn_cash_pay", "hosp_part_amt")}
    assert printed["visits"][0] == f"{len(results):,}" == "3,000"
    assert as_fen(printed["total cost (medfee_sumamt)"][0]) == total["medfee_sumamt"]
    for name, value in total.items():
        label = next(k for k in printed if f"({name})" in k) if name not in ("acct_pay", "psn_cash_pay") else \
            {"acct_pay": "of which personal account", "psn_cash_pay": "of which cash"}[name]
        assert as_fen(printed[label][0]) == value, name
        assert as_bp(printed[label][1]) == value * 10000 // total["medfee_sumamt"], name   # rounded down
    assert as_bp(printed["actual compensation ratio (实际补偿比)"][1]) == \
        total["fund_pay_sumamt"] * 10000 // total["medfee_sumamt"]
    assert total["hifp_pay"] > 0 and total["hifmi_pay"] > 0 and total["acct_pay"] > 0
    paid = {}
    for row in pq.read_table(detail).to_pylist():
        paid[row["fund_pay_type"]] = paid.get(row["fund_pay_type"], 0) + row["fund_payamt"]
    for fund in ("hifp", "hifob", "hifmi", "cvlserv", "maf"):
        assert paid.get(fund, 0) == total[f"{fund}_pay"], fund


def test_settle_file_and_explain_example_a_b(tmp_path, capsys):
    rows = []
    for mdtrt_id, level, end, amount, diag in [("A", "2", (2013, 6, 15), 53_500, None),
                                               ("B", "3", (2013, 7, 20), 80_000, "I21.901")]:
        rows.append({"mdtrt_id": mdtrt_id, "psn_no": "P1", "insutype": "rural", "medins_lv": level,
                     "med_type": "21", "enddate": dt.date(*end), "setl_time": dt.datetime(*end, 9),
                     "dise_codg": diag, "fulamt_ownpay_amt": 5_000 * Y if mdtrt_id == "A" else 0,
                     "overlmt_selfpay": 500 * Y if mdtrt_id == "A" else 0,
                     "preselfpay_amt": 1_000 * Y if mdtrt_id == "A" else 0,
                     "inscp_scp_amt": amount * Y, "inscp_essential_amt": 0})
    visits = tmp_path / "visits.parquet"
    pq.write_table(pa.Table.from_pylist(rows), visits)
    out = tmp_path / "results.parquet"
    assert main(["settle", str(visits), "--out", str(out)]) == 0
    result = {r["mdtrt_id"]: r for r in pq.read_table(out).to_pylist()}
    assert result["B"]["hifmi_pay"] == 40_106_40
    capsys.readouterr()
    assert main(["explain", str(visits), "B"]) == 0
    text = capsys.readouterr().out
    assert "8,156.00" in text          # the basic fund's cap left before B (section 8, example B)
    assert "40,106.40" in text
    assert "2013-h1" in text
    # no cap (the rural pack has no large-amount subsidy) reads "none", never -0.01
    assert "-0.01" not in text
    assert [c.strip() for c in next(line for line in text.splitlines() if "hifob_lmt" in line).split("│")[1:-1]] \
        == ["hifob_lmt", "none"]
    # the fund rows: B's eligible 80,000 - 800 = 79,200, cap left 8,156; serious illness on
    # 80,000 - 8,156 = 71,844 with 250,000 - 4,140 (A's) = 245,860 of its cap left
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines())
            if len(cells) == 4}
    assert rows["hifp"] == ["79,200.00", "8,156.00", "8,156.00"]
    assert rows["hifmi"] == ["71,844.00", "245,860.00", "40,106.40"]
    assert "hifmi: sample-rural/rural/2013-h1" in text and "disease group ami" in " ".join(text.split())


def test_policy_check_good_and_bad(tmp_path, capsys):
    assert main(["policy", "check", str(shipped_pack_path("sample_rural")),
                 str(shipped_pack_path("sample_city"))]) == 0
    assert "is valid" in " ".join(capsys.readouterr().out.split())
    bad = tmp_path / "bad.toml"
    bad.write_text(shipped_pack_path("sample_rural").read_text().replace('"85%"', '"185%"', 1))
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    err = " ".join(err.split())
    assert "bad.toml" in err and "100%" in err and "185%" in err


def shipped_policy_files():
    return sorted(shipped_pack_path("sample_rural").parent.glob("*.toml"))


@pytest.mark.parametrize("path", shipped_policy_files(), ids=lambda p: p.name)
def test_policy_check_passes_every_shipped_pack_and_draft(path, capsys):
    """Every TOML shipped in kernel/packs, packs and drafts alike, passes `policy check`."""
    assert main(["policy", "check", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "is valid" in out


def test_policy_check_reads_a_draft_over_its_base(tmp_path, capsys):
    """The shipped draft replaces the base's rural versions from 1 January 2013 with one version
    inheriting 2013-h1; a draft naming a base version that does not exist fails clearly."""
    draft = shipped_pack_path("sample_rural_draft")
    assert main(["policy", "check", str(draft)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "draft sample-rural-draft over base pack sample_rural.toml is valid" in out
    assert "draft-2013-nocap" in out and "2013-h1" not in out      # both base versions start on/after 1 Jan
    bad = tmp_path / "bad_draft.toml"
    bad.write_text(draft.read_text().replace('inherits = "2013-h1"', 'inherits = "2013-h9"')
                   .replace('base = "sample_rural.toml"', f'base = "{shipped_pack_path("sample_rural")}"'))
    assert main(["policy", "check", str(bad)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "bad_draft.toml" in err and "inherits" in err and "'2013-h9'" in err


def test_load_pack_of_a_draft_says_it_is_a_draft():
    from kernel.policy import PolicyError, load_pack
    with pytest.raises(PolicyError) as e:
        load_pack(shipped_pack_path("sample_rural_draft"))
    assert e.value.path == "$.base" and "draft over 'sample_rural.toml'" in str(e.value)


def test_settle_file_writes_parquet_and_nothing_on_error(tmp_path):
    """Settler.settle_file: Parquet visits in, Parquet results out, no file when the input is bad."""
    from kernel.api import Settler
    from kernel.errors import InputError
    row = {"mdtrt_id": "F", "psn_no": "P9", "insutype": "rural", "medins_lv": "2", "med_type": "21",
           "enddate": dt.date(2013, 6, 15), "setl_time": dt.datetime(2013, 6, 15, 9), "psn_cats": "low_income",
           "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0, "inscp_scp_amt": 20_000 * Y}
    visits, out = tmp_path / "v.parquet", tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([row]), visits)
    settler = Settler.from_files(shipped_pack_path("sample_rural"))
    settler.settle_file(visits, out)
    r = pq.read_table(out).to_pylist()[0]
    assert (r["hifp_pay"], r["hifmi_pay"], r["maf_pay"]) == (17_000 * Y, 1_500 * Y, 750 * Y)   # example F
    pq.write_table(pa.Table.from_pylist([{**row, "inscp_scp_amt": -1}]), visits)
    out.unlink()
    with pytest.raises(InputError):
        settler.settle_file(visits, out)
    assert not out.exists() and not (tmp_path / "r.parquet.partial").exists()


def test_a_file_that_cannot_be_read_gets_a_one_line_error(tmp_path, capsys):
    # a directory given for the visits file, or a missing file: exit 2 and the reason, no traceback,
    # nothing written
    out = tmp_path / "results.parquet"
    for given, reason in ((tmp_path, "is a directory"), (tmp_path / "missing.parquet", "No such file")):
        assert main(["settle", str(given), "--out", str(out)]) == 2
        text = " ".join(capsys.readouterr().err.split())      # as one line, however rich wrapped it
        assert "error:" in text and reason in text and "Traceback" not in text
        assert not out.exists()
