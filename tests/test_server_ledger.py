"""The ledger's person cache: what read_state returns from memory equals what SQLite holds, through
settlements, opening balances, reversals and eviction, and a failed batch leaves the cache alone."""
import asyncio
import random
import sqlite3
import threading

import pytest

from kernel.layout import ACC_COLS
from server.ledger import (LAYOUT, LedgerConflict, LedgerIncompatible, LedgerInUse, SettlementRecord,
                           SqliteLedger)

N = len(ACC_COLS)


def record(i, psn_no, insutype="rural", year=2013, acc_delta=None, balance_delta=0, opening=None):
    return SettlementRecord(
        institution="H001", request_id=f"r{i}", request_hash=b"h" * 16, mdtrt_id=f"m{i}",
        psn_no=psn_no, insutype=insutype, year=year, status="SETTLED", result=b"{}",
        acc_delta=acc_delta if acc_delta is not None else [0] * N, balance_delta=balance_delta,
        opening_balance=opening)


def db_state(path, key):
    """What the SQLite file holds, read with a plain connection (the ledger owns the file)."""
    with sqlite3.connect(path) as db:
        found = db.execute(SqliteLedger._state_sql, (*key, key[0])).fetchone()
    acc = dict(zip(ACC_COLS, found[1:])) if found[1] is not None else {}
    return {k: v for k, v in acc.items() if v}, found[0]


def with_ledger(path, body, **options):
    """await body(ledger) on an event loop, with a SqliteLedger(path, **options) closed afterwards."""
    async def run():
        ledger = SqliteLedger(path, **options)
        try:
            await body(ledger)
        finally:
            ledger.close()
    asyncio.run(run())


def cached_state(ledger, key):
    state = ledger.read_state(*key)
    return {k: v for k, v in state.acc.items() if v} or {}, state.balance


@pytest.mark.parametrize("cache_persons", [3, 200_000])
def test_cache_equals_sqlite(tmp_path, cache_persons):
    path = str(tmp_path / "ledger.db")
    rng = random.Random(7)
    keys = [(f"P{p}", scheme, year) for p in range(6) for scheme in ("rural", "city")
            for year in (2013, 2014)]

    async def run():
        ledger = SqliteLedger(path, cache_persons=cache_persons)
        settled = []
        try:
            for i in range(300):
                key = rng.choice(keys)
                state = ledger.read_state(*key)           # what the server reads under the lock
                opening = None
                if state.balance is None and rng.random() < 0.5:
                    opening = rng.randrange(0, 50_000)
                delta = [rng.choice((0, 0, rng.randrange(1, 9_000))) for _ in range(N)]
                bal = -rng.randrange(0, 500) if (state.balance is not None or opening) else 0
                sid = await ledger.commit_settlement(record(i, *key, delta, bal, opening))
                settled.append(sid)
                if rng.random() < 0.2:
                    undone = settled.pop(rng.randrange(len(settled)))
                    await ledger.commit_reversal(undone, "H001")
                    with pytest.raises(LedgerConflict):    # once only
                        await ledger.commit_reversal(undone, "H001")
        except Exception:
            ledger.close()
            raise
        try:
            for key in keys:
                assert cached_state(ledger, key) == db_state(path, key), key
        finally:
            ledger.close()
    asyncio.run(run())


def test_refused_and_failed_commits_leave_cache(tmp_path):
    path = str(tmp_path / "ledger.db")
    key = ("P1", "rural", 2013)

    async def body(ledger):
        ledger.read_state(*key)
        await ledger.commit_settlement(record(1, *key, [5] * N, -100, 1_000))
        with pytest.raises(LedgerConflict):              # same request id: refused
            await ledger.commit_settlement(record(1, *key, [7] * N, -100, None))

        def broken(conn):
            raise RuntimeError("disk on fire")
        with pytest.raises(RuntimeError):
            await ledger._submit(broken, (key[0], key[1], key[2], [9] * N, -1, None))
        acc, balance = cached_state(ledger, key)
        assert acc == dict(zip(ACC_COLS, [5] * N)) and balance == 900
        assert (acc, balance) == db_state(path, key)
    with_ledger(path, body)


def _reads(ledger) -> list:
    """The SQL the ledger's reader connection runs from now on."""
    seen = []
    ledger._reader.set_trace_callback(seen.append)
    return seen


def test_a_person_the_ledger_never_saw_reads_no_sqlite(tmp_path):
    # the known-persons index: persons of an earlier process (read from the file at start) and
    # persons committed since (the cache holds one person here, so they are read again) go to
    # SQLite and get their totals; a person the ledger holds no row for costs no read at all
    path = str(tmp_path / "ledger.db")
    old = [(f"OLD{p}", "rural", 2013) for p in range(5)]

    async def first(ledger):
        for i, key in enumerate(old):
            await ledger.commit_settlement(record(i, *key, [i + 1] * N, -10, 1_000))
    with_ledger(path, first)

    async def second(ledger):
        ledger._known._thread.join()                      # the file's persons are loaded
        reads = _reads(ledger)
        for key in old:
            assert cached_state(ledger, key) == db_state(path, key) != ({}, None)
        assert len(reads) == len(old)
        del reads[:]
        for p in range(50):
            assert cached_state(ledger, (f"NEW{p}", "rural", 2013)) == ({}, None)
        assert reads == []
        await ledger.commit_settlement(record(99, "NEW7", "rural", 2013, [3] * N, -5, 500))
        ledger.read_state("NEW8", "rural", 2013)          # evicts NEW7 from the one-person cache
        assert reads == []
        assert cached_state(ledger, ("NEW7", "rural", 2013)) == db_state(path, ("NEW7", "rural", 2013))
        assert len(reads) == 1
        assert cached_state(ledger, ("NEW7", "city", 2014)) == ({}, 495)   # another scheme: its balance
    with_ledger(path, second, cache_persons=1)


def test_persons_committed_while_the_index_loads_are_known(tmp_path, monkeypatch):
    # the file's persons are read by a thread while the ledger serves: until it is done every read
    # goes to SQLite, and persons committed meanwhile are known once it is
    from server.ledger import _KnownPersons
    path = str(tmp_path / "ledger.db")
    with_ledger(path, lambda ledger: ledger.commit_settlement(record(0, "OLD", "rural", 2013, [1] * N)))
    gate = threading.Event()
    load = _KnownPersons._load
    monkeypatch.setattr(_KnownPersons, "_load", lambda self: (gate.wait(30), load(self)))

    async def body(ledger):
        reads = _reads(ledger)
        assert cached_state(ledger, ("NEVER", "rural", 2013)) == ({}, None) and len(reads) == 1
        await ledger.commit_settlement(record(1, "DURING", "rural", 2013, [2] * N))
        gate.set()
        ledger._known._thread.join()
        assert ledger._known.ready
        del reads[:]
        for psn, acc in (("OLD", 1), ("DURING", 2)):
            ledger._cache.rows.clear()
            assert cached_state(ledger, (psn, "rural", 2013)) == (dict(zip(ACC_COLS, [acc] * N)), None)
        assert len(reads) == 2
        assert cached_state(ledger, ("NEVER2", "rural", 2013)) == ({}, None) and len(reads) == 2
    with_ledger(path, body)


def test_known_persons_merge_keeps_every_person(tmp_path):
    # past `fold` added persons the set merges into the sorted hashes: every person added before,
    # during and after the merges is still known, and persons never added (almost all) are not
    path = str(tmp_path / "ledger.db")

    async def body(ledger):
        known = ledger._known
        known._thread.join()
        known.fold = 7
        for p in range(100):
            known.add(f"P{p}")
            known.add(f"P{p // 2}")                       # again: not added twice
        assert len(known.hashes) == 98 and len(known.added) == 2
        assert list(known.hashes) == sorted(set(known.hashes))
        assert all(known.maybe(f"P{p}") for p in range(100))
        assert sum(known.maybe(f"Q{p}") for p in range(1000)) <= 1
    with_ledger(path, body)


def test_one_process_owns_a_ledger(tmp_path):
    # the person cache and the per-person serialization hold only with one writer process
    path = str(tmp_path / "ledger.db")
    first = SqliteLedger(path)
    try:
        with pytest.raises(LedgerInUse, match="in use by another process"):
            SqliteLedger(path)
    finally:
        first.close()
    SqliteLedger(path).close()                              # free again once closed


def test_writer_failure_refuses_later_commits(tmp_path):
    # a fault after COMMIT (here: in the person cache) leaves the cache unknown: the writer fails
    # that batch's callers and every later commit instead of going on, or dying silently
    path = str(tmp_path / "ledger.db")
    key = ("P1", "rural", 2013)

    async def body(ledger):
        ledger._cache.apply = None                      # not callable: the cache update fails
        with pytest.raises(RuntimeError, match="ledger writer failed"):
            await ledger.commit_settlement(record(1, *key, [5] * N))
        with pytest.raises(RuntimeError, match="restart the server"):
            await ledger.commit_settlement(record(2, *key, [5] * N))
    with_ledger(path, body)


def test_same_request_twice_in_one_batch(tmp_path):
    # queued together (one group commit): the first is journaled, the repeat refused, the rest kept
    path = str(tmp_path / "ledger.db")
    key = ("P1", "rural", 2013)

    async def body(ledger):
        # the writer holds on a first commit until the three are queued: they go in one batch
        gate = threading.Event()
        held = ledger._submit(lambda conn: gate.wait(30), ("P0", "rural", 2013, [0] * N, 0, None))
        futures = [ledger.commit_settlement(record(i, *key, [1] * N, 0, None)) for i in (1, 1, 2)]
        gate.set()
        await held
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert ledger.batches <= 2                     # the held one (perhaps with them), then them
        assert isinstance(outcomes[1], LedgerConflict) and outcomes[1].reason == "duplicate_request"
        assert outcomes[0] != outcomes[2] and all(isinstance(o, int) for o in (outcomes[0], outcomes[2]))
        assert cached_state(ledger, key)[0] == dict(zip(ACC_COLS, [2] * N))
    with_ledger(path, body)
    assert db_state(path, key)[0] == dict(zip(ACC_COLS, [2] * N))


def test_a_ledger_of_another_layout_is_refused(tmp_path):
    # a file from before the per-pool deductibles (no layout mark, a ded_paid column): reading its
    # accumulators as this layout's would settle on wrong totals
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accumulator (psn_no TEXT, insutype TEXT, year INTEGER, ded_paid INTEGER)")
    for _ in range(2):                  # the second time refused for the same reason: the refusal
        with pytest.raises(LedgerIncompatible, match="layout 0 .* keeps layout 2"):   # let go of the lock
            SqliteLedger(path)
    fresh = str(tmp_path / "new.db")
    SqliteLedger(fresh).close()
    with sqlite3.connect(fresh) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == LAYOUT
    SqliteLedger(fresh).close()                           # its own layout: opens again


def _tables(path):
    """Every journal, accumulator and account row of a ledger file (committed_at left out)."""
    with sqlite3.connect(path) as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(journal)") if r[1] != "committed_at"]
        return {"journal": db.execute(f"SELECT {', '.join(cols)} FROM journal ORDER BY setl_id").fetchall(),
                "accumulator": db.execute("SELECT * FROM accumulator ORDER BY 1, 2, 3").fetchall(),
                "account": db.execute("SELECT * FROM account ORDER BY 1").fetchall()}


def test_a_batch_journals_as_one_by_one(tmp_path, monkeypatch):
    # settlements queued together go in through the bulk statements (a row per settlement, the
    # same person several times, opening balances, a reversal and a repeated request among them):
    # the file must hold exactly what committing them one at a time gives, ids included
    rng = random.Random(11)
    ops = []
    for i in range(120):
        if i in (40, 41, 90):
            ops.append(("reverse", i - 30))                   # setl_id of an earlier settlement
            continue
        psn = f"P{rng.randrange(8)}"
        delta = [rng.choice((0, 0, rng.randrange(1, 9_000))) for _ in range(N)]
        opening = rng.choice((None, None, rng.randrange(0, 50_000)))
        bal = rng.choice((0, -rng.randrange(1, 500)))
        ops.append(("settle", record(i if i != 77 else 76, psn, rng.choice(("rural", "city")), 2013,
                                     delta, bal, opening)))

    def submit(ledger, op):
        return (ledger.commit_settlement(op[1]) if op[0] == "settle"
                else ledger.commit_reversal(op[1], "H001"))

    async def one_by_one(ledger):
        for op in ops:
            try:
                await submit(ledger, op)
            except LedgerConflict:
                pass

    async def batched(ledger):
        # the first 30 are journaled first (the reversals undo some of them), then the writer holds
        # (in a transaction of its own) until all the rest are queued: they go in one transaction
        for op in ops[:30]:
            await submit(ledger, op)
        gate, holding = threading.Event(), threading.Event()
        held = ledger._submit(lambda conn: holding.set() or gate.wait(30),
                              ("P0", "rural", 2013, [0] * N, 0, None))
        assert await asyncio.to_thread(holding.wait, 30)
        futures = [submit(ledger, op) for op in ops[30:]]
        gate.set()
        await held
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert ledger.batches == 30 + 2
        refused = [o for o in outcomes if isinstance(o, Exception)]
        assert len(refused) == 1 and refused[0].reason == "duplicate_request"   # request r76 twice
        for p in range(8):
            for scheme in ("rural", "city"):
                key = (f"P{p}", scheme, 2013)
                assert cached_state(ledger, key) == db_state(str(tmp_path / "b.db"), key)

    with_ledger(str(tmp_path / "a.db"), one_by_one)
    bulk = []
    real_bulk = SqliteLedger._bulk
    monkeypatch.setattr(SqliteLedger, "_bulk", staticmethod(
        lambda conn, records: bulk.append(real_bulk(conn, records)) or bulk[-1]))
    with_ledger(str(tmp_path / "b.db"), batched)
    # the runs between the reversals went in bulk, but the one with the repeated request
    assert [ids is not None for ids in bulk] == [True, False, True]
    a, b = _tables(str(tmp_path / "a.db")), _tables(str(tmp_path / "b.db"))
    assert len(a["journal"]) == 116 + 3 and a == b       # 117 settlements, one refused; 3 reversals


def test_a_batch_longer_than_a_statement_journals_as_one_by_one(tmp_path):
    # 150 settlements in one transaction take three bulk statements of at most _BULK_ROWS rows each
    from server.ledger import _BULK_ROWS
    rng = random.Random(5)
    records = [record(i, f"P{rng.randrange(20)}", "rural", 2013,
                      [rng.randrange(0, 900) for _ in range(N)], -rng.randrange(0, 50),
                      rng.choice((None, 10_000))) for i in range(150)]
    assert len(records) > 2 * _BULK_ROWS

    async def one_by_one(ledger):
        for r in records:
            await ledger.commit_settlement(r)

    async def batched(ledger):
        gate, holding = threading.Event(), threading.Event()
        held = ledger._submit(lambda conn: holding.set() or gate.wait(30),
                              ("P0", "rural", 2013, [0] * N, 0, None))
        assert await asyncio.to_thread(holding.wait, 30)
        futures = [ledger.commit_settlement(r) for r in records]
        gate.set()
        await held
        assert await asyncio.gather(*futures) == list(range(1, 151))
        assert ledger.batches == 2
    with_ledger(str(tmp_path / "a.db"), one_by_one)
    with_ledger(str(tmp_path / "b.db"), batched)
    assert _tables(str(tmp_path / "a.db")) == _tables(str(tmp_path / "b.db"))


def test_a_commit_cannot_be_cancelled(tmp_path):
    """A task cancelled while it awaits its commit (a deadline, a client gone) keeps waiting: the
    commit lands, and only then does the task receive its CancelledError. The service relies on it
    to hold the person until the totals it read are written."""
    path = str(tmp_path / "ledger.db")
    gate = threading.Event()

    class Gated(SqliteLedger):
        def _commit_batch(self, conn, batch):
            gate.wait(30)
            return super()._commit_batch(conn, batch)

    async def run():
        ledger = Gated(path)
        try:
            commit = ledger.commit_settlement(record(1, "P1", acc_delta=[7] * N))
            assert not commit.cancel()                 # refused outright

            async def caller():
                return await commit
            task = asyncio.create_task(caller())
            await asyncio.sleep(0.05)                  # the caller awaits the gated commit
            task.cancel()
            await asyncio.sleep(0.2)
            waited = not task.done() and not commit.done()
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            return waited, commit.result(), cached_state(ledger, ("P1", "rural", 2013))
        finally:
            gate.set()
            ledger.close()

    waited, setl_id, state = asyncio.run(run())
    assert waited and setl_id == 1
    assert state == ({name: 7 for name in ACC_COLS}, None)
    assert db_state(path, ("P1", "rural", 2013)) == ({name: 7 for name in ACC_COLS}, None)
