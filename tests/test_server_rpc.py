"""medsettle.v1 against a real server on 127.0.0.1: every RPC, the section 8 examples through
Settle, idempotency, per-person serialization, reversal, and section 9's bad inputs."""
import asyncio
import concurrent.futures as cf
import datetime as dt
import sqlite3
import threading
import time

import grpc
import pytest
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from kernel.api import Settler
from server import settlement_pb2 as pb
from server import settlement_pb2_grpc as pb_grpc
from server.client import MedsettleError, settle_request, status_error
from server.ledger import SqliteLedger
from server.server import SERVICE_NAME

from server_fixtures import Y, small_visit, start_thread_server, visit_a, visit_b, wire_visit

ACC_FIELDS = ["ded_paid_inp", "ded_paid_out", "admissions", "ded_once", "hifp_inp", "hifp_out", "elig_inp",
              "elig_out", "hifob", "mi_base", "hifmi", "cvl", "maf"]


@pytest.fixture(scope="module")
def settler():
    return Settler.from_files()


@pytest.fixture
def srv(settler, tmp_path):
    s = start_thread_server(settler, tmp_path)
    yield s
    s.stop()


@pytest.fixture
def h1(srv):
    with srv.client(token="tok-h001") as c:
        yield c


@pytest.fixture
def h2(srv):
    with srv.client(token="tok-h002") as c:
        yield c


def journal_rows(srv):
    with sqlite3.connect(srv.config.ledger_path) as db:
        return db.execute("SELECT count(*) FROM journal").fetchone()[0]


def acc_row(client, psn_no="P1"):
    rows = client.get_accumulators(psn_no)["rows"]
    assert len(rows) <= 1
    return rows[0] if rows else None


# --- worked examples A and B (SETTLEMENT.md section 8) ------------------------------------------

def test_examples_a_then_b_through_settle(h1):
    a = h1.settle(visit_a(), request_id="r-A")
    s = a["settlement"]
    assert not a["replayed"] and s["setl_id"] and s["status"] == "OK"
    assert (s["medfee_sumamt"], s["fulamt_ownpay_amt"], s["overlmt_selfpay"], s["preselfpay_amt"],
            s["inscp_scp_amt"]) == (60000 * Y, 5000 * Y, 500 * Y, 1000 * Y, 53500 * Y)
    assert s["act_pay_dedc"] == 300 * Y
    assert s["hifp_pay"] == 4_522_000
    assert s["hifmi_pay"] == 414_000
    assert s["fund_pay_sumamt"] == 4_936_000
    assert s["psn_part_amt"] == 1_064_000
    assert s["fixmedins_code"] == "H001" and s["policy_version"]
    funds = {d["fund_pay_type"]: d for d in s["setldetail"]}
    assert funds["hifp"]["fund_payamt"] == 4_522_000 and funds["hifp"]["setl_proc_info"]
    assert funds["hifmi"]["fund_payamt"] == 414_000

    b = h1.settle(visit_b(), request_id="r-B")["settlement"]
    assert b["act_pay_dedc"] == 800 * Y
    assert b["hifp_lmt"] == 815_600            # cap left before the visit: 53,376 - 45,220
    assert b["hifp_pay"] == 815_600
    assert b["hifmi_pay"] == 4_010_640
    assert b["psn_part_amt"] == 3_173_760

    acc = acc_row(h1)
    assert (acc["insutype"], acc["year"]) == ("rural", 2013)
    assert acc["hifp_inp"] == 4_522_000 + 815_600
    assert acc["hifmi"] == 414_000 + 4_010_640
    assert acc["admissions"] == 2 and acc["ded_paid_inp"] == 300 * Y + 800 * Y and acc["ded_paid_out"] == 0


def test_presettle_changes_nothing(srv, h1):
    pre = h1.presettle(visit_a())
    assert pre["settlement"]["hifp_pay"] == 4_522_000 and pre["settlement"]["setl_id"] == ""
    assert h1.get_accumulators("P1")["rows"] == [] and journal_rows(srv) == 0
    h1.settle(visit_a(), request_id="r-A")
    # B pre-settled with A's totals: the same figures Settle will give
    assert h1.presettle(visit_b())["settlement"]["hifp_pay"] == 815_600
    assert journal_rows(srv) == 1


def test_presettle_marks_pending_cause_provisional(h1):
    pre = h1.presettle(wire_visit("V", amounts=(0, 0, 0, 1000 * Y), inj_cause="pending"))
    assert pre["settlement"]["status"] == "PROVISIONAL"


def test_line_items_and_precomputed_agree(h1):
    # XA02BAA003: a class A code of the shipped catalogue, no ceiling
    lines = [{"line_no": 1, "hilist_code": "XA02BAA003", "cnt": 4, "pric": 2500 * Y,
              "det_item_fee_sumamt": 10000 * Y}]
    by_lines = h1.presettle(wire_visit("L", medfee_sumamt=10000 * Y), lines)["settlement"]
    by_amounts = h1.presettle(wire_visit("L", amounts=(0, 0, 0, 10000 * Y)))["settlement"]
    assert by_lines["inscp_scp_amt"] == 10000 * Y
    for name in ("hifp_pay", "hifmi_pay", "act_pay_dedc", "psn_part_amt"):
        assert by_lines[name] == by_amounts[name]


# --- Get, idempotency ---------------------------------------------------------------------------

def test_get_settlement_by_id_and_request_id(h1, h2):
    s = h1.settle(visit_a(), request_id="r-A")["settlement"]
    got = h1.get_settlement(s["setl_id"])["settlement"]
    assert got == s
    assert h1.get_settlement(request_id="r-A")["settlement"] == s
    with pytest.raises(MedsettleError) as e:
        h2.get_settlement(s["setl_id"])
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(MedsettleError) as e:
        h2.get_settlement(request_id="r-A")          # H002's own request ids: none
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(MedsettleError) as e:
        h1.get_settlement("999999")
    assert e.value.code == grpc.StatusCode.NOT_FOUND and e.value.detail["field"] == "setl_id"


def test_idempotent_retry_returns_first_result(srv, h1, h2):
    first = h1.settle(visit_a(), request_id="same")
    acc = acc_row(h1)
    again = h1.settle(visit_a(), request_id="same")
    assert again["replayed"] and again["settlement"] == first["settlement"]
    assert acc_row(h1) == acc and journal_rows(srv) == 1
    # the same id reused for a different visit is refused, nothing written
    with pytest.raises(MedsettleError) as e:
        h1.settle(visit_b(), request_id="same")
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and e.value.detail["field"] == "request_id"
    # another institution's request ids are its own
    other = h2.settle(visit_b(), request_id="same")
    assert not other["replayed"] and other["settlement"]["hifp_pay"] == 815_600
    assert journal_rows(srv) == 2


def test_concurrent_retries_of_one_request_commit_once(srv, h1):
    with cf.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: h1.settle(visit_a(), request_id="dup"), range(16)))
    assert sum(not r["replayed"] for r in replies) == 1
    assert len({r["settlement"]["setl_id"] for r in replies}) == 1
    assert journal_rows(srv) == 1 and acc_row(h1)["hifp_inp"] == 4_522_000


# --- per-person serialization -------------------------------------------------------------------

def test_100_concurrent_settlements_of_one_person_equal_serial(settler, tmp_path):
    visits = [small_visit(f"V{i}", "P7", inscp=(500 + 37 * i) * Y, end=f"2013-{1 + i % 12:02d}-10")
              for i in range(100)]
    concurrent_srv = start_thread_server(settler, tmp_path, ledger_name="concurrent.db")
    try:
        with concurrent_srv.client(token="tok-h001") as c:
            with cf.ThreadPoolExecutor(100) as pool:          # all 100 in flight at once
                replies = list(pool.map(lambda v: c.settle(v, request_id=v["mdtrt_id"]), visits))
            conc_acc = acc_row(c, "P7")
            # the order the server serialized them in: journal order
            with sqlite3.connect(concurrent_srv.config.ledger_path) as db:
                order = [r[0] for r in db.execute("SELECT mdtrt_id FROM journal ORDER BY setl_id")]
    finally:
        concurrent_srv.stop()
    assert len(order) == 100 and not any(r["replayed"] for r in replies)
    serial_srv = start_thread_server(settler, tmp_path, ledger_name="serial.db")
    try:
        with serial_srv.client(token="tok-h001") as c:
            by_id = {v["mdtrt_id"]: v for v in visits}
            serial = {i: c.settle(by_id[i], request_id=i)["settlement"] for i in order}
            assert acc_row(c, "P7") == conc_acc
    finally:
        serial_srv.stop()
    conc = {r["settlement"]["mdtrt_id"]: r["settlement"] for r in replies}
    strip = lambda s: {k: v for k, v in s.items() if k != "setl_id"}
    assert {i: strip(s) for i, s in conc.items()} == {i: strip(s) for i, s in serial.items()}
    # nobody read stale totals: the year's basic fund paid is the sum of the visits'
    assert conc_acc["hifp_inp"] == sum(s["hifp_pay"] for s in conc.values())
    assert conc_acc["admissions"] == 100


# --- reversal -----------------------------------------------------------------------------------

def test_reverse_restores_totals_once_and_only_for_the_settler(srv, h1, h2):
    h1.settle(visit_a(), request_id="r-A")
    after_a = acc_row(h1)
    b = h1.settle(visit_b(), request_id="r-B")["settlement"]
    with pytest.raises(MedsettleError) as e:
        h2.reverse(b["setl_id"])
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert acc_row(h1)["hifp_inp"] == 4_522_000 + 815_600
    rev = h1.reverse(b["setl_id"])
    assert rev["reversal_id"] and rev["settlement"]["reversed"]
    assert rev["settlement"]["reversal_id"] == rev["reversal_id"]
    assert acc_row(h1) == after_a
    assert h1.get_settlement(b["setl_id"])["settlement"]["reversed"]
    with pytest.raises(MedsettleError) as e:
        h1.reverse(b["setl_id"])
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.detail["reason"] == "already reversed"
    assert acc_row(h1) == after_a
    # B settled again (a new request) reads A's totals only: the same figures as the first time
    again = h1.settle(visit_b(), request_id="r-B2")["settlement"]
    assert again["hifp_pay"] == 815_600 and again["hifmi_pay"] == 4_010_640
    # by request id too
    h1.reverse(request_id="r-A")
    acc = acc_row(h1)
    assert acc["hifp_inp"] == 815_600 and acc["admissions"] == 1


def test_concurrent_reversals_reverse_once(srv, h1):
    s = h1.settle(visit_a(), request_id="r-A")["settlement"]

    def rev(_):
        try:
            return h1.reverse(s["setl_id"])["reversal_id"]
        except MedsettleError as e:
            return e.code
    with cf.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(rev, range(8)))
    assert sum(isinstance(o, str) for o in outcomes) == 1
    assert all(o == grpc.StatusCode.FAILED_PRECONDITION for o in outcomes if not isinstance(o, str))
    assert all(v == 0 for k, v in acc_row(h1).items() if k in ACC_FIELDS)


def test_personal_account_balance_and_reversal(h1):
    v = small_visit("acct", "E1", inscp=1000 * Y)
    v.update(acct_used_flag=True, acct_balc=50 * Y)
    s = h1.settle(v, request_id="acct")["settlement"]
    acc = h1.get_accumulators("E1")
    assert acc["has_account"] and acc["acct_balc"] == s["balc"]
    assert s["balc"] == 50 * Y - s["acct_pay"]
    h1.reverse(s["setl_id"])
    assert h1.get_accumulators("E1")["acct_balc"] == 50 * Y


# --- streaming ----------------------------------------------------------------------------------

def test_settle_stream(srv, h1):
    items = [(visit_a(), None, "s-A"), (visit_b(), None, "s-B"),
             (wire_visit("bad", insutype="nosuch", amounts=(0, 0, 0, 100)), None, "s-bad"),
             (visit_a(), None, "s-A")]                       # a retry inside the stream
    replies = {}
    for r in h1.settle_stream(items, timeout=30):
        replies.setdefault(r["request_id"], []).append(r)
    assert replies["s-A"][0]["settlement"]["hifp_pay"] == 4_522_000
    assert sorted(r["replayed"] for r in replies["s-A"]) == [False, True]
    assert replies["s-B"][0]["settlement"]["hifp_pay"] == 815_600    # in order for one person
    assert replies["s-bad"][0]["settlement"] is None
    assert replies["s-bad"][0]["error"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies["s-bad"][0]["error"]["detail"]["field"] == "insutype"
    # the error detail travels inside the reply: check it with the raw stub
    stub = pb_grpc.SettlementStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))
    out = list(stub.SettleStream(iter([settle_request(
        wire_visit("bad2", insutype="nosuch", amounts=(0, 0, 0, 100)), None, "s-bad2")]),
        metadata=[("authorization", "Bearer tok-h001")], timeout=10))
    assert out[0].error.detail.field == "insutype"
    err = status_error(out[0].error)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.detail["field"] == "insutype"
    assert journal_rows(srv) == 2


# --- health, reflection, deadlines, auth --------------------------------------------------------

def test_health_and_reflection(srv):
    ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    resp = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5))
    names = {s.name for s in resp[0].list_services_response.service}
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
    ch.close()


def _past_deadline_while_p1_is_held(srv, call):
    """call() while P1's lock is held, as by a settlement in flight: it must wait past its deadline
    (deterministic, unlike a deadline too short to reach the server: gRPC keeps deadlines in
    milliseconds and a fast machine can settle inside one). Returns once the server gave up too."""
    service = srv.running.service

    async def hold():
        return service._locks.try_take("P1")

    async def release():
        service._locks.give("P1")

    async def waiting():                   # calls holding or waiting for P1
        return service._locks.holders("P1")

    assert srv._run(hold())
    try:
        with pytest.raises(MedsettleError) as e:
            call()
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # the server counts the deadline from the request's arrival, a little after the client:
        # wait until it has given up too (only our hold is left)
        give_up = time.monotonic() + 10
        while srv._run(waiting()) > 1:
            assert time.monotonic() < give_up, "the server kept waiting past the call's deadline"
            time.sleep(0.01)
    finally:
        srv._run(release())


def test_expired_deadline_writes_nothing(srv, h1):
    _past_deadline_while_p1_is_held(srv, lambda: h1.settle(visit_a(), request_id="late", timeout=0.3))
    # the late call wrote nothing: its retry settles afresh, once
    first = h1.settle(visit_a(), request_id="late")
    assert not first["replayed"]
    assert h1.get_accumulators("P1")["rows"][0]["hifp_inp"] == first["settlement"]["hifp_pay"]
    assert journal_rows(srv) == 1
    # a reversal waits for the person's earlier calls no longer than its deadline either
    setl_id = first["settlement"]["setl_id"]
    _past_deadline_while_p1_is_held(srv, lambda: h1.reverse(setl_id, timeout=0.3))
    assert not h1.get_settlement(setl_id)["settlement"]["reversed"]
    assert h1.get_accumulators("P1")["rows"][0]["hifp_inp"] == first["settlement"]["hifp_pay"]
    assert h1.reverse(setl_id)["settlement"]["reversed"]
    assert h1.get_accumulators("P1")["rows"][0]["hifp_inp"] == 0


def test_person_hold_ends_at_the_deadline_behind_a_woken_waiter():
    """A lets go of the person while B waits for it; C arrives before B has run. B holds the person
    from the hand-over on, so C queues behind B and must give up at its own deadline, not when B is
    done."""
    from server.server import CallError, _PersonHold, _PersonLocks

    async def scenario():
        loop = asyncio.get_running_loop()
        locks = _PersonLocks()
        a = _PersonHold(locks, "P1", None)
        await a.__aenter__()

        async def b():
            async with _PersonHold(locks, "P1", None):
                await asyncio.sleep(1.0)
        waiting = asyncio.create_task(b())
        await asyncio.sleep(0)                      # B waits for the lock
        await a.__aexit__(None, None, None)         # handed to B, which has not run yet
        assert not locks.try_take("P1") and locks.holders("P1") == 1
        started = loop.time()
        with pytest.raises(CallError) as e:
            async with _PersonHold(locks, "P1", started + 0.1):
                pass
        gave_up = loop.time() - started
        await waiting
        return e.value.code, gave_up, locks._held

    code, gave_up, left = asyncio.run(scenario())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gave_up < 0.9                            # at its deadline, not after B's second
    assert left == {}                               # every hold let go of the person


def test_a_lone_person_hold_takes_the_lock_without_a_timer():
    """Alone (no other call holds or waits for the person), a hold with a deadline takes the person
    at once and schedules no timer; with a second call in the way it waits under its deadline."""
    from server.server import _PersonHold, _PersonLocks

    async def scenario():
        loop = asyncio.get_running_loop()
        locks = _PersonLocks()
        timers = len(loop._scheduled)
        async with _PersonHold(locks, "P1", loop.time() + 5) as hold:
            assert not locks.try_take("P1") and locks.holders("P1") == 1
            lone_timers = len(loop._scheduled) - timers
            seen = []

            async def second():
                async with _PersonHold(locks, "P1", loop.time() + 5):
                    seen.append("second")
            task = asyncio.create_task(second())
            await asyncio.sleep(0)                  # the second call waits, under a timer
            waiting_timers = len(loop._scheduled) - timers
            assert not seen
        await task
        return lone_timers, waiting_timers, seen, locks._held

    lone, waiting, seen, left = asyncio.run(scenario())
    assert (lone, waiting, seen, left) == (0, 1, ["second"], {})


def test_a_person_handed_over_as_its_waiter_is_cancelled_passes_on():
    """B is handed the person and cancelled before it runs (its deadline, its client gone): B never
    settles, and the person passes to C, the next in line, instead of staying held by nobody."""
    from server.server import _PersonLocks

    async def scenario():
        loop = asyncio.get_running_loop()
        locks = _PersonLocks()
        assert locks.try_take("P1")                 # A holds the person
        b = asyncio.create_task(locks.take("P1", loop.time() + 5))
        c = asyncio.create_task(locks.take("P1", None))
        await asyncio.sleep(0)                      # B, then C, wait in line
        assert locks.holders("P1") == 3
        locks.give("P1")                            # A is done: B's turn ...
        b.cancel()                                  # ... but B is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await b
        await asyncio.wait_for(c, 5)                # C holds the person now
        held_by_c = locks.holders("P1")
        locks.give("P1")
        return held_by_c, locks._held

    assert asyncio.run(scenario()) == (1, {})


class GatedLedger(SqliteLedger):
    """The real ledger on a disk whose fsync takes as long as the test says: each group commit
    starts only once `gate` is set (`reached` tells the test a commit is waiting)."""

    def __init__(self, path):
        super().__init__(path)
        self.gate, self.reached = threading.Event(), threading.Event()

    def _commit_batch(self, conn, batch):
        self.reached.set()
        self.gate.wait(60)
        return super()._commit_batch(conn, batch)


def test_call_cancelled_while_its_commit_waits(settler, tmp_path):
    # Example A's deadline passes while its commit is queued: the commit still lands, and the
    # person's next settlement (example B) must wait for it and read the totals it wrote.
    ledger = GatedLedger(str(tmp_path / "gated.db"))
    gated = start_thread_server(settler, tmp_path, ledger=ledger)
    try:
        with gated.client(token="tok-h001") as c:
            with pytest.raises(MedsettleError) as e:
                c.settle(visit_a(), request_id="A", timeout=2)
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert ledger.reached.is_set()                 # A's commit was queued, and waits
            with cf.ThreadPoolExecutor(1) as pool:
                b = pool.submit(lambda: c.settle(visit_b(), request_id="B", timeout=30))
                time.sleep(0.3)         # B reaches the server while A's commit still waits (had the
                ledger.gate.set()       # lock been let go, B would read the totals before A)
                b = b.result()["settlement"]
            assert b["hifp_lmt"] == 53376 * Y - 45220 * Y and b["hifp_pay"] == 8156 * Y
            # the timed-out request did commit: its retry is a replay of it
            a = c.settle(visit_a(), request_id="A", timeout=10)
            assert a["replayed"] and a["settlement"]["hifp_pay"] == 45220 * Y
            assert acc_row(c)["hifp_inp"] == 53376 * Y
    finally:
        ledger.gate.set()
        gated.stop()


def test_unauthenticated(srv):
    with srv.client() as anon, pytest.raises(MedsettleError) as e:
        anon.settle(visit_a(), request_id="x")
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with srv.client(token="wrong") as bad, pytest.raises(MedsettleError) as e:
        bad.get_accumulators("P1")
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert journal_rows(srv) == 0


def test_visit_of_another_institution_refused(srv, h1):
    v = visit_a()
    v["fixmedins_code"] = "H002"
    with pytest.raises(MedsettleError) as e:
        h1.settle(v, request_id="x")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.detail["field"] == "fixmedins_code"
    assert journal_rows(srv) == 0


# --- SETTLEMENT.md section 9: bad input gets status + message, nothing written ------------------

def line(n, code="XA02BAA003", cnt=1, pric=1000 * Y, amount=None):
    return {"line_no": n, "hilist_code": code, "cnt": cnt, "pric": pric,
            "det_item_fee_sumamt": cnt * pric if amount is None else amount}


BAD = {
    # name: (visit, lines, code, field, line)
    "negative price": (wire_visit("X"), [line(1, pric=-5)], "INVALID_ARGUMENT", "pric", 1),
    "negative quantity": (wire_visit("X"), [line(1), line(2, cnt=-1)], "INVALID_ARGUMENT", "cnt", 2),
    "negative precomputed": (wire_visit("X", amounts=(-1, 0, 0, 100)), None, "INVALID_ARGUMENT",
                             "fulamt_ownpay_amt", 0),
    "negative days": (wire_visit("X", ipt_days=-1), [line(1)], "INVALID_ARGUMENT", "ipt_days", 0),
    "amount not cnt x pric": (wire_visit("X"), [line(1, amount=7)], "INVALID_ARGUMENT",
                              "det_item_fee_sumamt", 1),
    "total not sum of lines": (wire_visit("X", medfee_sumamt=5), [line(1)], "INVALID_ARGUMENT",
                               "medfee_sumamt", 0),
    "unknown catalogue code": (wire_visit("X"), [line(1, code="NOSUCHCODE")], "INVALID_ARGUMENT",
                               "hilist_code", 1),
    "no policy version": (wire_visit("X", end="2011-01-01"), [line(1)], "INVALID_ARGUMENT",
                          "enddate", 0),
    "unknown scheme": (wire_visit("X", insutype="nosuch"), [line(1)], "INVALID_ARGUMENT",
                       "insutype", 0),
    "unknown level": (wire_visit("X", level="9"), [line(1)], "INVALID_ARGUMENT", "medins_lv", 0),
    "unknown injury cause": (wire_visit("X", inj_cause="nosuch"), [line(1)], "INVALID_ARGUMENT",
                             "inj_cause", 0),
    "unknown region": (wire_visit("X", insu_admdvs="ZZZ", mdtrt_admdvs="QQQ"), [line(1)],
                       "INVALID_ARGUMENT", "insu_admdvs", 0),
    "admission at a pharmacy": (wire_visit("X", fixmedins_type="pharmacy"), [line(1)],
                                "INVALID_ARGUMENT", "fixmedins_type", 0),
    "malformed treatment region": (wire_visit("X", mdtrt_admdvs="QQQ"), [line(1)], "INVALID_ARGUMENT",
                                   "mdtrt_admdvs", 0),
    "overflow": (wire_visit("X"), [line(1, cnt=3, pric=2**62, amount=0)], "INVALID_ARGUMENT",
                 "pric", 1),
    "duplicate line ids": (wire_visit("X"), [line(1), line(1)], "INVALID_ARGUMENT", "line_no", 2),
    "bad date": (wire_visit("X", end="2013-13-01"), [line(1)], "INVALID_ARGUMENT", "enddate", 0),
    "missing med_type": (wire_visit("X", med_type=""), [line(1)], "INVALID_ARGUMENT", "med_type", 0),
    "no lines, no amounts": (wire_visit("X"), [], "INVALID_ARGUMENT", "lines", 0),
    "pending injury cause": (wire_visit("X", inj_cause="pending"), [line(1)],
                             "FAILED_PRECONDITION", "inj_cause", 0),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(srv, h1, case):
    visit, lines, code, field, line_no = BAD[case]
    for method in (h1.settle, h1.presettle) if code == "INVALID_ARGUMENT" else (h1.settle,):
        with pytest.raises(MedsettleError) as e:
            method(visit, lines)
        err = e.value
        assert err.code == getattr(grpc.StatusCode, code), (case, err)
        assert err.detail["field"] == field, (case, err.detail)
        assert err.detail["line"] == line_no, (case, err.detail)
        assert err.detail["reason"] and field in err.message
    assert journal_rows(srv) == 0
    assert h1.get_accumulators("P1")["rows"] == []


def test_missing_request_id_and_raw_status_details(srv):
    """The structured detail as a client without our helper reads it: a google.rpc.Status in the
    standard trailer, parsed by googleapis-common-protos and by grpcio-status."""
    stub = pb_grpc.SettlementStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))
    req = settle_request(visit_a())                  # no request_id
    with pytest.raises(grpc.RpcError) as e:
        stub.Settle(req, metadata=[("authorization", "Bearer tok-h001")], timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw = dict(e.value.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == e.value.details()
    assert status.details[0].type_url == "type.googleapis.com/medsettle.v1.ErrorDetail"
    detail = pb.ErrorDetail()
    assert status.details[0].Unpack(detail) and detail.field == "request_id"
    assert rpc_status.from_call(e.value) == status

    async def aio_status():                          # an asyncio client reads the same
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call = pb_grpc.SettlementStub(ch).Settle(
                req, metadata=[("authorization", "Bearer tok-h001")], timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await call
            return await rpc_status.aio.from_call(call)
    assert asyncio.run(aio_status()) == status
    assert journal_rows(srv) == 0


def test_a_time_with_an_offset_keeps_its_wall_time():
    # setl_time "09:30:00+08:00" is 09:30 on the settlement's own clock, as without the offset
    from server import convert
    times = [convert.visit_from_pb(pb.Visit(
        mdtrt_id="M1", psn_no="P1", insutype="rural", medins_lv="2", med_type="21",
        enddate="2013-01-10", setl_time=text))["setl_time"]
        for text in ("2013-01-10T09:30:00+08:00", "2013-01-10T09:30:00", "2013-01-10T09:30:00-05:00")]
    assert times == [dt.datetime(2013, 1, 10, 9, 30)] * 3
