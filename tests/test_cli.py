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
