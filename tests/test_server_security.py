"""TLS, mutual TLS and bearer tokens, against a real server on 127.0.0.1 (certificates made here)."""
import grpc
import pytest

from kernel.api import Settler
from server.client import Client, MedsettleError
from server.ledger import SqliteLedger
from server.security import SecurityConfig, is_loopback, load_tokens
from server.server import ServerConfig, start

from server_fixtures import TOKENS, make_pki, start_thread_server, visit_a



@pytest.fixture(scope="module")
def settler():
    return Settler.from_files()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_with_tokens(settler, tmp_path, pki):
    sec = SecurityConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                         tokens=dict(TOKENS))
    srv = start_thread_server(settler, tmp_path, sec)
    target = f"127.0.0.1:{srv.port}"
    try:
        with Client(target, ca=pki.ca, token="tok-h001") as c:
            s = c.settle(visit_a(), request_id="tls-1")["settlement"]
            assert s["fixmedins_code"] == "H001" and s["hifp_pay"] == 4_522_000
        with Client(target, ca=pki.ca, token="tok-h002") as c, pytest.raises(MedsettleError) as e:
            c.reverse(s["setl_id"])
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        with Client(target, ca=pki.ca) as c, pytest.raises(MedsettleError) as e:
            c.get_settlement(s["setl_id"])
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Client(target, token="tok-h001", timeout=10) as c, pytest.raises(MedsettleError) as e:
            c.get_settlement(s["setl_id"])             # plaintext to a TLS port
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_mutual_tls_institution_from_certificate(settler, tmp_path, pki):
    sec = SecurityConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                         client_ca=str(pki.ca), tokens=dict(TOKENS))
    srv = start_thread_server(settler, tmp_path, sec)
    target = f"127.0.0.1:{srv.port}"
    try:
        with Client(target, ca=pki.ca, cert=pki.h001_cert, key=pki.h001_key) as c:
            s = c.settle(visit_a(), request_id="m-1")["settlement"]
            assert s["fixmedins_code"] == "H001"
            assert c.get_settlement(s["setl_id"])["settlement"] == s
        with Client(target, ca=pki.ca, cert=pki.h002_cert, key=pki.h002_key) as c:
            for call in (lambda: c.get_settlement(s["setl_id"]), lambda: c.reverse(s["setl_id"])):
                with pytest.raises(MedsettleError) as e:
                    call()
                assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        # a certificate of H002 with H001's token: the two disagree
        with Client(target, ca=pki.ca, cert=pki.h002_cert, key=pki.h002_key,
                    token="tok-h001") as c, pytest.raises(MedsettleError) as e:
            c.get_settlement(s["setl_id"])
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        # no client certificate, or one from another CA: the handshake fails
        for kw in ({}, {"cert": pki.rogue_cert, "key": pki.rogue_key}):
            with Client(target, ca=pki.ca, token="tok-h001", timeout=10, **kw) as c, \
                    pytest.raises(MedsettleError) as e:
                c.get_accumulators("P1")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
        with Client(target, ca=pki.ca, cert=pki.h001_cert, key=pki.h001_key) as c:
            c.reverse(s["setl_id"])
            assert c.get_settlement(s["setl_id"])["settlement"]["reversed"]
    finally:
        srv.stop()


def test_open_mode_is_loopback_only_and_plaintext_needs_loopback(pki):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    SecurityConfig().check_bind("127.0.0.1")
    with pytest.raises(ValueError, match="plaintext"):
        SecurityConfig(tokens=dict(TOKENS)).check_bind("0.0.0.0")
    with pytest.raises(ValueError, match="unauthenticated"):
        SecurityConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)).check_bind("0.0.0.0")
    SecurityConfig(tokens=dict(TOKENS), allow_plaintext=True).check_bind("0.0.0.0")
    with pytest.raises(ValueError, match="unauthenticated"):    # plaintext allowed is not open mode
        SecurityConfig(allow_plaintext=True).check_bind("0.0.0.0")
    SecurityConfig(allow_plaintext=True, allow_unauthenticated=True).check_bind("0.0.0.0")
    SecurityConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                   tokens=dict(TOKENS)).check_bind("0.0.0.0")
    with pytest.raises(ValueError, match="mutual TLS"):
        SecurityConfig(client_ca=str(pki.ca)).check_bind("127.0.0.1")


def test_open_mode_on_loopback(settler, tmp_path):
    srv = start_thread_server(settler, tmp_path, SecurityConfig())
    try:
        with srv.client(institution="H009") as c:
            assert c.settle(visit_a(), request_id="o-1")["settlement"]["fixmedins_code"] == "H009"
        with srv.client() as c:
            assert c.settle(visit_a("A2", "P2"), request_id="o-2")["settlement"]["fixmedins_code"] == "local"
    finally:
        srv.stop()


def test_token_table_formats(tmp_path):
    (tmp_path / "t.toml").write_text('[tokens]\n"abc" = "H001"\n')
    (tmp_path / "t.json").write_text('{"xyz": "H002"}')
    assert load_tokens(tmp_path / "t.toml") == {"abc": "H001"}
    assert load_tokens(tmp_path / "t.json") == {"xyz": "H002"}
    (tmp_path / "bad.json").write_text('{"xyz": 3}')
    with pytest.raises(ValueError):
        load_tokens(tmp_path / "bad.json")


def test_a_server_that_cannot_bind_lets_go_of_its_ledger(settler, tmp_path):
    # the port is taken: start() fails, and the ledger it opened is closed (its lock released)
    first = start_thread_server(settler, tmp_path, ledger_name="first.db")
    try:
        config = ServerConfig(host="127.0.0.1", port=first.port, ledger_path=str(tmp_path / "second.db"),
                              security=SecurityConfig(tokens={"t": "H001"}))
        with pytest.raises(RuntimeError):
            first._run(start(config, settler))
        SqliteLedger(config.ledger_path).close()           # not "in use by another process"
    finally:
        first.stop()
