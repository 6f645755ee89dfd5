"""medsettle loadtest against a real server on 127.0.0.1: its report matches what the ledger holds
for a run with known counts, and it stops at its bounds (requests, duration, a server that hangs)."""
import asyncio
import contextlib
import json
import sqlite3
import threading
import time

import grpc
import pytest

from kernel.api import Settler
from server import loadtest
from server.cli import main as server_main
from server.security import SecurityConfig
from server_fixtures import TOKENS, make_pki, start_thread_server


@pytest.fixture(scope="module")
def settler():
    return Settler.from_files()


@pytest.fixture(scope="module")
def visits():
    cfg = loadtest.Config(visits=300, seed=5, tag="LTtest-")
    return loadtest.make_visits(cfg)


@pytest.fixture
def server(settler, tmp_path):
    srv = start_thread_server(settler, tmp_path)
    yield srv
    srv.stop()


def journal(tmp_path, tag):
    con = sqlite3.connect(tmp_path / "ledger.db")
    try:
        rows = con.execute("SELECT kind, COUNT(*) FROM journal WHERE psn_no LIKE ? GROUP BY kind",
                           (tag + "%",)).fetchall()
        paid = con.execute("SELECT COALESCE(SUM(hifp_inp + hifp_out + hifmi + maf), 0) FROM accumulator "
                           "WHERE psn_no LIKE ?", (tag + "%",)).fetchone()[0]
    finally:
        con.close()
    return dict(rows), paid


def test_settle_only_run_matches_the_ledger(server, visits, tmp_path):
    cfg = loadtest.Config(target=f"127.0.0.1:{server.port}", concurrency=8, requests=120, duration=60,
                          mix=loadtest.parse_mix("settle=1"), token="tok-h001", tag="LTtest-")
    report = loadtest.run(cfg, visits=visits)
    assert report["bounds"]["stopped_by"] == "requests"
    assert report["calls"] == {"issued": 120, "completed": 120, "ok": 120, "errors": {}}
    assert report["committed_settlements"] == 120
    # throughput over the seconds to the last completion, not to the last send
    assert report["throughput_per_s"] == pytest.approx(120 / report["bounds"]["completion_s"], rel=0.01)
    assert report["latency"]["count"] == 120
    assert sum(r["calls"] for r in report["timeline"]) == 120
    led = report["ledger_check"]
    assert led["ok"] and led["mismatch_count"] == 0 and led["settlements_live"] == 120
    kinds, paid = journal(tmp_path, "LTtest-")
    assert kinds == {"settle": 120}
    assert paid == led["fund_paid_live_fen"]     # the rural pack pays no hifob / cvl


def test_mixed_run_counts_match_the_journal(server, visits, tmp_path):
    tag = "LTtest-"
    cfg = loadtest.Config(target=f"127.0.0.1:{server.port}", concurrency=6, requests=250, duration=60,
                          mix=loadtest.parse_mix("settle=55,presettle=15,reverse=15,query=15"),
                          token="tok-h001", tag=tag, seed=3)
    report = loadtest.run(cfg, visits=visits)
    ops = report["by_op"]
    assert sum(r["sent"] for r in ops.values()) == 250 == report["calls"]["completed"]
    assert report["calls"]["errors"] == {}
    assert ops["reverse"]["ok"] > 0 and ops["query"]["ok"] > 0 and ops["presettle"]["ok"] > 0
    kinds, paid = journal(tmp_path, tag)
    assert kinds == {"settle": ops["settle"]["ok"], "reverse": ops["reverse"]["ok"]}
    led = report["ledger_check"]
    assert led["ok"], led["mismatches"]
    assert led["settlements_reversed"] == ops["reverse"]["ok"]
    assert paid == led["fund_paid_live_fen"]


def test_fixed_rate_stops_at_its_duration(server, visits):
    cfg = loadtest.Config(target=f"127.0.0.1:{server.port}", rate=40, duration=1.0, requests=10**6,
                          mix=loadtest.parse_mix("presettle=1"), token="tok-h001", tag="LTr-")
    t0 = time.perf_counter()
    report = loadtest.run(cfg, visits=visits)
    assert time.perf_counter() - t0 < 10
    assert report["bounds"]["stopped_by"] == "duration"
    assert 30 <= report["calls"]["issued"] <= 45
    assert report["calls"]["completed"] == report["calls"]["issued"]
    assert report["latency_measured_from"].startswith("scheduled")


@contextlib.contextmanager
def fake_server(delay: float):
    """A server on 127.0.0.1 whose every method answers an empty reply after `delay` seconds: the port."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def answer_late(request, context):
        await asyncio.sleep(delay)
        return b""

    async def start():
        names = ["PreSettle", "Settle", "Reverse", "GetSettlement", "GetAccumulators"]
        handler = grpc.method_handlers_generic_handler("medsettle.v1.Settlement", {
            n: grpc.unary_unary_rpc_method_handler(answer_late, lambda b: b, lambda b: b) for n in names})
        srv = grpc.aio.server()
        srv.add_generic_rpc_handlers((handler,))
        port = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        return srv, port

    srv, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def test_stops_against_a_server_that_never_answers(visits):
    """Every call hangs: the run still ends, at duration + deadline, with the outcomes unknown."""
    with fake_server(delay=60) as port:
        cfg = loadtest.Config(target=f"127.0.0.1:{port}", concurrency=4, duration=0.5, requests=10**6,
                              mix=loadtest.parse_mix("settle=1"), timeout=0.5, tag="LTh-")
        t0 = time.perf_counter()
        report = loadtest.run(cfg, visits=visits)
        assert time.perf_counter() - t0 < 8
        assert report["calls"]["ok"] == 0
        assert report["calls"]["errors"] == {"DEADLINE_EXCEEDED": report["calls"]["completed"]}
        assert report["unknown_outcomes"]["settles_unknown"] == report["calls"]["completed"]
        assert report["unknown_outcomes"]["unresolved"] == report["calls"]["completed"]
        assert not report["ledger_check"]["ok"]


def test_throughput_counts_the_time_of_the_calls_in_flight_at_the_stop(visits):
    """10 calls sent at once to a server that answers each after 0.3 s: all 10 are sent before any
    answer, so dividing by the sending time alone would overstate the rate many times. Every call
    ends at least 0.3 s after it was sent (the server sleeps first), so the window to the last
    completion is at least the sending time + 0.3 s, and the rate at most 10 / 0.3 = 33.3 calls/s."""
    delay = 0.3
    with fake_server(delay) as port:
        cfg = loadtest.Config(target=f"127.0.0.1:{port}", concurrency=10, requests=10, duration=60,
                              mix=loadtest.parse_mix("presettle=1"), tag="LTs-")
        report = loadtest.run(cfg, visits=visits)
    bounds = report["bounds"]
    assert bounds["stopped_by"] == "requests"
    assert report["calls"]["completed"] == report["calls"]["ok"] == 10
    assert bounds["completion_s"] >= bounds["issuing_s"] + delay
    assert report["throughput_per_s"] == pytest.approx(10 / bounds["completion_s"], rel=0.01)
    assert report["throughput_per_s"] <= 10 / delay
    assert report["throughput_basis"].startswith("calls completed (any status) / completion_s")


def test_command_writes_json_and_chart(server, tmp_path):
    out = tmp_path / "lt.json"
    rc = server_main(["loadtest", "--target", f"127.0.0.1:{server.port}", "--token", "tok-h001",
                      "--concurrency", "4", "--requests", "40", "--visits", "100", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["calls"]["completed"] == 40 and report["ledger_check"]["ok"]
    assert (tmp_path / "lt.png").stat().st_size > 1000


def test_refuses_other_addresses_and_bad_mixes():
    with pytest.raises(ValueError, match="--allow-remote"):
        loadtest.check_target("192.168.1.5:50051")
    for ok in ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.2:1"):
        loadtest.check_target(ok)
    with pytest.raises(ValueError, match="unknown operation"):
        loadtest.parse_mix("settle=1,pay=2")
    with pytest.raises(ValueError, match="bound"):
        loadtest.run(loadtest.Config(concurrency=1, duration=0), visits=(None, []))
    assert server_main(["loadtest", "--target", "10.1.1.1:50051", "--requests", "1"]) == 2


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_remote_target_needs_allow_remote_and_tls(pki, tmp_path, capsys):
    remote = ["loadtest", "--target", "10.1.1.1:50051", "--requests", "1", "--out", str(tmp_path / "r.json")]
    refusals = [
        ([], "not a loopback address"),                                         # remote is opt-in
        (["--allow-remote"], "needs TLS"),                                     # no token in clear
        (["--allow-remote", "--ca", str(pki.ca), "--cert", str(pki.h001_cert)], "go together"),
        (["--allow-remote", "--ca", str(tmp_path / "nope.pem")], f"--ca {tmp_path / 'nope.pem'}: no such file"),
    ]
    for extra, message in refusals:
        assert server_main(remote + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "r.json").exists()
    # with both, the settings are accepted (nothing is sent: this only checks them)
    loadtest.check_config(loadtest.Config(target="10.1.1.1:50051", concurrency=1, allow_remote=True,
                                          ca=str(pki.ca), cert=str(pki.h001_cert), key=str(pki.h001_key)))
    with pytest.raises(ValueError, match="need --ca"):
        loadtest.check_config(loadtest.Config(concurrency=1, cert=str(pki.h001_cert), key=str(pki.h001_key)))


def test_runs_over_tls_and_says_when_it_cannot_connect(settler, pki, tmp_path, capsys):
    sec = SecurityConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tokens=dict(TOKENS))
    srv = start_thread_server(settler, tmp_path, sec)
    try:
        target = f"127.0.0.1:{srv.port}"
        out = tmp_path / "tls.json"
        common = ["loadtest", "--target", target, "--token", "tok-h001", "--concurrency", "4",
                  "--requests", "30", "--visits", "100", "--mix", "settle=1", "--out", str(out)]
        assert server_main(common + ["--ca", str(pki.ca)]) == 0
        report = json.loads(out.read_text())
        assert report["calls"]["ok"] == 30 and report["ledger_check"]["ok"]
        assert report["ledger_check"]["settlements_live"] == 30
        out.unlink()
        # plaintext to a TLS port: no connection, a clear message, no report
        assert server_main(common + ["--timeout", "1"]) == 2
        assert f"no connection to {target}" in capsys.readouterr().err
        assert not out.exists()
    finally:
        srv.stop()
