"""The README's first command, `medsettle demo`, on a small size: batch, a real server process, load, stop."""
from kernel.cli import main


def test_demo_settles_serves_and_checks_the_ledger(tmp_path, capsys):
    assert main(["demo", "--visits", "3000", "--requests", "400", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "actual compensation ratio" in text
    assert "ledger check: OK" in text and "0 mismatches" in text
    assert "server exited with 0" in text
    assert (tmp_path / "results.parquet").exists() and (tmp_path / "demo-ledger.db").exists()
