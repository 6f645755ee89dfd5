"""The ledger: a journal of settlements and reversals, accumulators, personal-account balances.

`Ledger` is the interface the server codes against; `SqliteLedger` implements it on one SQLite
file so a server database can replace it later. The ledger knows no rules: it stores what the
kernel computed and adds the per-visit accumulator deltas (SETTLEMENT.md section 5).

Durability: every commit is fsync'd (WAL, synchronous=FULL) before its future resolves, and a
single writer thread commits whatever requests are waiting in one transaction (group commit), so
concurrent settlements share one fsync. Under load (the last transaction carried more than one
request) the writer waits up to 2 ms for more before it commits, and journals a batch's settlements
in three multi-row statements: a transaction costs about as much CPU as ten settlements in it, so
fuller batches leave the CPU to the calls. A lone request on a quiet server never waits. A second
thread checkpoints the WAL into the database in small steps beside the writer (PASSIVE: it never
blocks a commit), so no settlement waits for a checkpoint.

Person cache: what `read_state` returns is kept in memory (bounded, oldest first out) and updated
from each committed transaction before its futures resolve, so a person's next settlement reads no
SQLite. Known persons: the ledger also keeps the hash of every psn_no it holds a row for (read
by a thread at start, about 8 bytes a person, and those committed since), so a person it has never
seen, most of a counter's callers, costs no SQLite read either; a hash shared with a known person
costs only that read. This is exact because the server serializes each person's settlements and
one process owns the ledger file (the writer thread is its only writer).

Invariant (checked by the crash test): for every (psn_no, insutype, year), each accumulator equals
the sum of its journal rows' deltas, and each balance equals its opening balance plus the sum of
the journal's balance deltas.
"""
from __future__ import annotations

import abc
import array
import asyncio
import bisect
import fcntl
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from kernel.layout import ACC_COLS

# ACC_COLS "A_DED_PAID_INP" -> journal delta column "d_ded_paid_inp" and accumulator column "ded_paid_inp"
ACC_NAMES = [name[2:].lower() for name in ACC_COLS]


class LedgerUnavailable(Exception):
    """The ledger file cannot be served: in use, or of another layout."""


class LedgerInUse(LedgerUnavailable):
    """Another process has the ledger file open for writing."""


class LedgerIncompatible(LedgerUnavailable):
    """The file holds a ledger of another layout (or is not a ledger)."""


# The tables' layout, kept in the file (PRAGMA user_version). Bump it when a column is added or
# changes meaning: 2 = deductibles per pool (ded_paid_inp/_out) and ded_once as a bitmask.
LAYOUT = 2


class LedgerConflict(Exception):
    """A commit the ledger refuses: reason is "already_reversed", "duplicate_request", ..."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class SettlementRecord:
    """One journal row of kind "settle" (a settled visit), as committed."""
    institution: str
    request_id: str
    request_hash: bytes
    mdtrt_id: str
    psn_no: str
    insutype: str
    year: int
    status: str
    result: bytes                   # the server's encoding of the result (opaque to the ledger)
    acc_delta: list[int]            # per ACC_COLS: acc_after - acc_before
    balance_delta: int              # balance_after - balance_before
    opening_balance: int | None     # the balance used when the ledger had none for this person
    setl_id: int = 0                # assigned by the ledger
    reversed_by: int | None = None  # journal id of the reversal, if reversed


@dataclass
class PersonState:
    """What a settlement reads: one accumulator row and the person's account balance."""
    acc: dict[str, int] = field(default_factory=dict)   # ACC_COLS name -> value
    balance: int | None = None                          # None: the ledger has no account yet


class Ledger(abc.ABC):
    """Storage for the real-time path. Reads are point look-ups; commits are durable on return."""

    @abc.abstractmethod
    def find_request(self, institution: str, request_id: str) -> SettlementRecord | None:
        """The settlement an institution made with this request id, if any."""

    @abc.abstractmethod
    def get(self, setl_id: int) -> SettlementRecord | None:
        """A settlement by journal id (any institution: the caller checks ownership)."""

    @abc.abstractmethod
    def read_state(self, psn_no: str, insutype: str, year: int) -> PersonState:
        """The accumulator row and the balance a settlement of this person reads."""

    @abc.abstractmethod
    def accumulators(self, psn_no: str, insutype: str | None = None,
                     year: int | None = None) -> tuple[int | None, list[tuple[str, int, dict]]]:
        """(balance or None, [(insutype, year, {ACC name: value})]) of a person."""

    @abc.abstractmethod
    def commit_settlement(self, record: SettlementRecord) -> asyncio.Future:
        """Journal the settlement and apply its deltas in one durable transaction. The future
        resolves to its setl_id once durable. It is queued at once, so it lands even when the
        caller stops waiting for it, and it cannot be cancelled (a Commit): a call cancelled while
        it waits is cancelled once the commit has landed, so that its person's next call reads
        the totals it wrote."""

    @abc.abstractmethod
    def commit_reversal(self, setl_id: int, institution: str) -> asyncio.Future:
        """Journal a reversal of setl_id and subtract its deltas, once. The future (a Commit, as
        commit_settlement's) resolves to the reversal's id, or to LedgerConflict("already_reversed")
        the second time."""

    @abc.abstractmethod
    def close(self) -> None:
        """Commit what is queued, then release the store."""


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS journal (
    setl_id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,                 -- settle | reverse
    institution TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash BLOB,
    mdtrt_id TEXT,
    psn_no TEXT NOT NULL,
    insutype TEXT NOT NULL,
    year INTEGER NOT NULL,
    status TEXT NOT NULL,
    reverses INTEGER UNIQUE,            -- on a reversal: the settlement it undoes (once)
    reversed_by INTEGER,                -- on a settlement: its reversal
    committed_at REAL NOT NULL,
    {", ".join(f"d_{n} INTEGER NOT NULL" for n in ACC_NAMES)},
    d_balance INTEGER NOT NULL,
    result BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS journal_request ON journal(institution, request_id, kind);
CREATE INDEX IF NOT EXISTS journal_person ON journal(psn_no, insutype, year);
CREATE TABLE IF NOT EXISTS accumulator (
    psn_no TEXT NOT NULL, insutype TEXT NOT NULL, year INTEGER NOT NULL,
    {", ".join(f"{n} INTEGER NOT NULL" for n in ACC_NAMES)},
    PRIMARY KEY (psn_no, insutype, year)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account (
    psn_no TEXT PRIMARY KEY,
    opening INTEGER NOT NULL,           -- balance when the ledger first saw the person
    balance INTEGER NOT NULL
) WITHOUT ROWID;
"""

_RECORD_COLS = ("setl_id, institution, request_id, request_hash, mdtrt_id, psn_no, insutype, year, "
                "status, result, " + ", ".join(f"d_{n}" for n in ACC_NAMES)
                + ", d_balance, reversed_by")
_INSERT_JOURNAL = (
    "INSERT INTO journal (kind, institution, request_id, request_hash, mdtrt_id, psn_no, insutype, "
    "year, status, reverses, committed_at, " + ", ".join(f"d_{n}" for n in ACC_NAMES)
    + ", d_balance, result) VALUES (" + ", ".join("?" * (13 + len(ACC_NAMES))) + ")")
_UPSERT_ACC = (
    "INSERT INTO accumulator (psn_no, insutype, year, " + ", ".join(ACC_NAMES) + ") VALUES ("
    + ", ".join("?" * (3 + len(ACC_NAMES))) + ") ON CONFLICT (psn_no, insutype, year) DO UPDATE SET "
    + ", ".join(f"{n} = {n} + excluded.{n}" for n in ACC_NAMES))
_UPSERT_ACCOUNT = ("INSERT INTO account (psn_no, opening, balance) VALUES (?, ?, ?) "
                   "ON CONFLICT (psn_no) DO UPDATE SET balance = balance + ?")

# The bulk path: a batch's settlements in three statements (journal, accumulators, accounts), each
# with one VALUES row per settlement, instead of three statements per settlement (each with its own
# bind, step and GIL hand-off): about 10% less writer CPU per settlement at 8 a batch. Rows of one
# statement apply in order (an UPSERT row sees the rows before it), as the statements of one
# settlement after another would. A statement of each row count is prepared once and kept: the
# writer's connection caches 3 x _BULK_ROWS statements (about 12 MB), where re-preparing them for
# every batch size that comes cost about a fifth of the writer's CPU. Longer runs take two or more.
_BULK_ROWS = 64                 # rows per statement (64 x 27 parameters: far under SQLite's 32,766)
_JOURNAL_ROW = "(" + ", ".join("?" * (14 + len(ACC_NAMES))) + ")"
_ACC_ROW = "(" + ", ".join("?" * (3 + len(ACC_NAMES))) + ")"


def _bulk_journal(n: int) -> str:
    return (_INSERT_JOURNAL.replace("INSERT INTO journal (", "INSERT INTO journal (setl_id, ")
            .split(" VALUES ")[0] + " VALUES " + ", ".join([_JOURNAL_ROW] * n))


def _bulk_acc(n: int) -> str:
    head, tail = _UPSERT_ACC.split(" VALUES ")
    return head + " VALUES " + ", ".join([_ACC_ROW] * n) + " ON CONFLICT" + tail.split(" ON CONFLICT", 1)[1]


def _bulk_account(n: int) -> str:
    return ("INSERT INTO account (psn_no, opening, balance) VALUES " + ", ".join(["(?, ?, ?)"] * n)
            + " ON CONFLICT (psn_no) DO UPDATE SET balance = balance + excluded.balance - excluded.opening")


def _own(path: str):
    """Lock `<path>.lock` for this process, or fail at once: the person cache and the per-person
    serialization are exact only while one process writes the ledger (a second server on the same
    file, e.g. during a rolling restart, would read stale totals). The kernel drops the lock when
    the process ends, however it ends."""
    handle = open(path + ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise LedgerInUse(f"ledger {path} is in use by another process (lock {path}.lock)") from None
    return handle


def _open_layout(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables in a new file, or check that an existing ledger has this layout: reading
    another layout's accumulators would settle on wrong totals."""
    tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    layout = conn.execute("PRAGMA user_version").fetchone()[0]
    if tables == 0:
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {LAYOUT}")
    elif layout != LAYOUT:
        raise LedgerIncompatible(
            f"{path} holds a ledger of layout {layout} (or another file); this server keeps layout "
            f"{LAYOUT} (deductibles per pool). Serve a new ledger file (--ledger); there is no migration.")


def _connect(path: str, cached_statements: int = 128) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           cached_statements=cached_statements)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")       # fsync the WAL at every commit
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


_MISSING = object()


class _PersonCache:
    """What read_state returned, kept exact by mirroring each commit's UPSERTs: balances by psn_no
    (None: no account yet) and accumulator rows by (psn_no, insutype, year) (None: no row, all
    zero). Two flat dicts of ints and tuples, which the cyclic GC does not track, each entry
    correct on its own, each dropped oldest first past `limit` entries."""

    def __init__(self, limit: int):
        self.limit = limit
        self.balances: dict[str, int | None] = {}
        self.rows: dict[tuple, tuple | None] = {}

    def put(self, psn_no, key, balance, row):
        for table, k, v in ((self.balances, psn_no, balance), (self.rows, key, row)):
            table[k] = v
            if len(table) > self.limit:
                del table[next(iter(table))]

    def apply(self, psn_no, insutype, year, acc_delta, balance_delta, opening):
        """One committed settlement (or a reversal, deltas negated)."""
        key = (psn_no, insutype, year)
        row = self.rows.get(key, _MISSING)
        if row is not _MISSING and any(acc_delta):
            self.rows[key] = (tuple(acc_delta) if row is None
                              else tuple([a + d for a, d in zip(row, acc_delta)]))
        balance = self.balances.get(psn_no, _MISSING)
        if balance is _MISSING:
            return
        if balance is not None:
            self.balances[psn_no] = balance + balance_delta
        elif opening is not None or balance_delta:
            self.balances[psn_no] = (opening or 0) + balance_delta


class _KnownPersons:
    """Which psn_no the ledger may hold a row for (account or accumulator). `maybe` is never False
    for a person it holds: the hashes of the file's persons (a sorted int64 array, 8 bytes a
    person), then each person a commit writes, added by the writer before the commit's future
    resolves (a set, merged into the array once it holds `fold` persons or a sixteenth of the
    array, whichever is more: each merge copies the array once, so a person costs its 8 bytes
    about sixteen times over). A hash that collides with a known person's answers True: the caller
    then reads SQLite, which answers exactly.

    The file's persons are read by a thread on its own connection while the ledger serves (about
    3 s a million persons here, calls a little slower meanwhile: the hashing holds the GIL). Until
    it is done `maybe` answers True, so reads go to SQLite as without the index, and the writer
    keeps every person it commits in the set: the snapshot the thread read plus the set hold every
    person, whenever that snapshot was taken.

    The array is an array.array searched with bisect, not numpy: the look-up runs on the event
    loop, and numpy's search lets go of the GIL, which hands it to the writer thread and costs the
    loop about 20 us a call to take back. numpy only builds and merges it."""

    def __init__(self, path: str, fold: int = 65_536):
        self.fold = fold
        self.hashes = array.array("q")
        self.added: set[str] = set()
        self.ready = False
        self._conn = _connect(path)
        self._thread = threading.Thread(target=self._load, name="ledger-index", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            chunks = []
            cur = self._conn.execute("SELECT psn_no FROM account UNION SELECT psn_no FROM accumulator")
            while rows := cur.fetchmany(65_536):
                chunks.append(np.fromiter([hash(r[0]) for r in rows], np.int64, len(rows)))
            self.hashes = _int64s(np.unique(np.concatenate(chunks)) if chunks else np.empty(0, np.int64))
            self.ready = True                     # after the array: a reader that sees it sees both
        except sqlite3.Error:                     # stopped by close(): no index, reads go to SQLite
            pass
        finally:
            self._conn.close()

    def stop(self) -> None:
        """Stop loading (the ledger closes) and wait for the thread."""
        if self._thread.is_alive():
            try:
                self._conn.interrupt()
            except sqlite3.ProgrammingError:      # it finished meanwhile
                pass
        self._thread.join()

    def maybe(self, psn_no: str) -> bool:
        # the set before the array: a merge publishes the new array before it empties the set
        if not self.ready or psn_no in self.added:
            return True
        hashes, h = self.hashes, hash(psn_no)
        at = bisect.bisect_left(hashes, h)
        return at < len(hashes) and hashes[at] == h

    def add(self, psn_no: str) -> None:
        """From the writer thread only."""
        if self.ready and self.maybe(psn_no):
            return
        self.added.add(psn_no)                    # while loading: every person committed
        if self.ready and len(self.added) >= max(self.fold, len(self.hashes) >> 4):
            new = np.sort(np.fromiter(map(hash, self.added), np.int64, len(self.added)))
            old = np.frombuffer(self.hashes, np.int64)
            self.hashes = _int64s(np.insert(old, old.searchsorted(new), new))    # sorted still
            self.added = set()


def _int64s(values: np.ndarray) -> array.array:
    out = array.array("q")
    out.frombytes(values.astype(np.int64).tobytes())
    return out


def _record(row) -> SettlementRecord:
    n = len(ACC_NAMES)
    return SettlementRecord(
        setl_id=row[0], institution=row[1], request_id=row[2], request_hash=row[3], mdtrt_id=row[4],
        psn_no=row[5], insutype=row[6], year=row[7], status=row[8], result=row[9],
        acc_delta=list(row[10:10 + n]), balance_delta=row[10 + n], opening_balance=None,
        reversed_by=row[11 + n])


class Commit(asyncio.Future):
    """The future of a queued commit, which cannot be cancelled: cancel() refuses, so a task
    cancelled while awaiting it (a deadline, a client gone, a server stopping) goes on waiting and
    receives its CancelledError once the commit has landed. What asyncio.shield gives, without an
    outer future and two callbacks per call."""

    def cancel(self, msg=None) -> bool:
        return False


class _Op:
    """A queued commit: apply(conn) runs inside the writer's transaction; change is what its
    commit does to the person cache (psn_no, insutype, year, acc_delta, balance_delta, opening).
    record: the settlement, when it may go through the bulk path instead of apply."""
    __slots__ = ("apply", "future", "change", "record")

    def __init__(self, apply, future, change=None, record=None):
        self.apply, self.future, self.change, self.record = apply, future, change, record


_STOP = object()


class SqliteLedger(Ledger):
    """The ledger on one SQLite file; one writer thread does group commit.

    Reads use a second connection from the caller's thread (WAL readers never block the writer).
    """

    def __init__(self, path: str, max_batch: int = 512, cache_persons: int = 200_000,
                 checkpoint_ops: int = 256, checkpoint_every: float = 0.5,
                 gather_delay: float = 0.002, gather_ops: int = 64):
        self.path = str(path)
        self.max_batch = max_batch
        self.gather_delay = gather_delay          # under load: how long a transaction waits for
        self.gather_ops = gather_ops              # more commits, unless it has this many already
        self.cache_persons = cache_persons
        self.checkpoint_ops = checkpoint_ops      # wake the checkpointer after this many ops,
        self.checkpoint_every = checkpoint_every  # or after this many seconds
        self._lock_file = _own(self.path)
        self._reader = _connect(self.path)
        try:
            _open_layout(self._reader, self.path)
        except BaseException:
            self._reader.close()
            self._lock_file.close()
            raise
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer_conn = _connect(self.path, cached_statements=3 * _BULK_ROWS + 32)
        self._writer_conn.execute("PRAGMA wal_autocheckpoint=0")   # the checkpointer does it
        self._checkpoint_conn = _connect(self.path)
        self._checkpoint_due = threading.Event()
        self._cache = _PersonCache(cache_persons)
        self._known = _KnownPersons(self.path)
        self._closed = False
        self._closing = threading.Lock()          # close() against a commit being queued
        self.broken: BaseException | None = None   # set if the writer thread failed: no more commits
        self._writer_done = False   # the writer has stopped: the checkpointer stops too
        self.batches = 0            # transactions committed (for the benchmark's batch size)
        self.ops = 0
        self.writer_cpu = 0.0       # CPU seconds of the writer thread, fsync included
        self._thread = threading.Thread(target=self._write_loop, name="ledger-writer", daemon=True)
        self._thread.start()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="ledger-checkpoint", daemon=True)
        self._checkpointer.start()

    # --- reads ---------------------------------------------------------------------------------

    def find_request(self, institution, request_id):
        row = self._reader.execute(
            f"SELECT {_RECORD_COLS} FROM journal WHERE institution = ? AND request_id = ? "
            "AND kind = 'settle'", (institution, request_id)).fetchone()
        return _record(row) if row else None

    def get(self, setl_id):
        row = self._reader.execute(
            f"SELECT {_RECORD_COLS} FROM journal WHERE setl_id = ? AND kind = 'settle'",
            (setl_id,)).fetchone()
        return _record(row) if row else None

    def read_state(self, psn_no, insutype, year):
        key = (psn_no, insutype, year)
        row = self._cache.rows.get(key, _MISSING)
        balance = self._cache.balances.get(psn_no, _MISSING)
        if row is _MISSING or balance is _MISSING:
            if self._known.maybe(psn_no):
                found = self._reader.execute(self._state_sql, (psn_no, insutype, year, psn_no)).fetchone()
                balance, row = found[0], (tuple(found[1:]) if found[1] is not None else None)
            else:                                 # no row of this person anywhere
                balance = row = None
            self._cache.put(psn_no, key, balance, row)
        return PersonState(dict(zip(ACC_COLS, row)) if row is not None else {}, balance)

    # one statement: the account balance (or NULL) and the accumulator row (or NULLs)
    _state_sql = (
        f"SELECT b.balance, {', '.join('a.' + n for n in ACC_NAMES)} FROM "
        "(SELECT 1) LEFT JOIN accumulator a ON a.psn_no = ? AND a.insutype = ? AND a.year = ? "
        "LEFT JOIN account b ON b.psn_no = ?")

    def accumulators(self, psn_no, insutype=None, year=None):
        sql = f"SELECT insutype, year, {', '.join(ACC_NAMES)} FROM accumulator WHERE psn_no = ?"
        args = [psn_no]
        if insutype:
            sql += " AND insutype = ?"
            args.append(insutype)
        if year:
            sql += " AND year = ?"
            args.append(year)
        rows = self._reader.execute(sql + " ORDER BY insutype, year", args).fetchall()
        bal = self._reader.execute("SELECT balance FROM account WHERE psn_no = ?",
                                   (psn_no,)).fetchone()
        return (bal[0] if bal else None,
                [(r[0], r[1], dict(zip(ACC_COLS, r[2:]))) for r in rows])

    # --- commits -------------------------------------------------------------------------------

    def commit_settlement(self, record):
        def apply(conn):
            try:
                cur = conn.execute(_INSERT_JOURNAL, (
                    "settle", record.institution, record.request_id, record.request_hash,
                    record.mdtrt_id, record.psn_no, record.insutype, record.year, record.status,
                    None, time.time(), *record.acc_delta, record.balance_delta, record.result))
            except sqlite3.IntegrityError:
                raise LedgerConflict("duplicate_request",
                                     f"request id {record.request_id!r} already settled") from None
            if any(record.acc_delta):
                conn.execute(_UPSERT_ACC, (record.psn_no, record.insutype, record.year,
                                           *record.acc_delta))
            if record.opening_balance is not None or record.balance_delta:
                opening = record.opening_balance or 0
                conn.execute(_UPSERT_ACCOUNT, (record.psn_no, opening,
                                               opening + record.balance_delta,
                                               record.balance_delta))
            return cur.lastrowid
        return self._submit(apply, (record.psn_no, record.insutype, record.year,
                                    record.acc_delta, record.balance_delta, record.opening_balance),
                            record)

    def commit_reversal(self, setl_id, institution):
        def apply(conn):
            row = conn.execute(f"SELECT {_RECORD_COLS} FROM journal WHERE setl_id = ? "
                               "AND kind = 'settle'", (setl_id,)).fetchone()
            if row is None:
                raise LedgerConflict("not_found", f"no settlement {setl_id}")
            rec = _record(row)
            if rec.institution != institution:
                raise LedgerConflict("other_institution",
                                     "a settlement can be reversed only by the institution that made it")
            if rec.reversed_by is not None:
                raise LedgerConflict("already_reversed",
                                     f"settlement {setl_id} is already reversed (reversal {rec.reversed_by})")
            neg = [-d for d in rec.acc_delta]
            cur = conn.execute(_INSERT_JOURNAL, (
                "reverse", institution, f"reverse:{setl_id}", None, rec.mdtrt_id, rec.psn_no,
                rec.insutype, rec.year, "REVERSED", setl_id, time.time(), *neg,
                -rec.balance_delta, None))
            rid = cur.lastrowid
            conn.execute("UPDATE journal SET reversed_by = ? WHERE setl_id = ?", (rid, setl_id))
            if any(neg):
                conn.execute(_UPSERT_ACC, (rec.psn_no, rec.insutype, rec.year, *neg))
            if rec.balance_delta:
                conn.execute("UPDATE account SET balance = balance - ? WHERE psn_no = ?",
                             (rec.balance_delta, rec.psn_no))
            # the reversal's deltas, for the person cache once committed
            return rid, (rec.psn_no, rec.insutype, rec.year, neg, -rec.balance_delta, None)
        return self._submit(apply)

    def _submit(self, apply, change=None, record=None) -> asyncio.Future:
        """Queue apply for the writer; the future of its outcome. change: the person-cache update
        its commit makes, or None when apply returns (value, change) itself. record: a settlement
        the writer may journal in bulk with others (same writes as apply)."""
        fut = Commit(loop=asyncio.get_running_loop())
        with self._closing:                 # never queued behind the writer's stop
            if self._closed:
                raise RuntimeError("ledger is closed")
            if self.broken is not None:
                raise RuntimeError(f"ledger writer failed, restart the server: {self.broken!r}")
            self._queue.put(_Op(apply, fut, change, record))
        return fut

    def _write_loop(self):
        conn = self._writer_conn
        since_checkpoint = 0
        gathering = False
        while True:
            op = self._queue.get()
            if op is _STOP:
                break
            cpu0 = time.thread_time()
            batch = [op]
            # Under load (the last transaction carried more than one commit), sleep gather_delay
            # once for more: a transaction costs about as much CPU as ten commits in it (the fsync
            # and the pages it writes), so fuller batches leave the CPU to the calls. A sleep, not
            # a wait on the queue, so that each arriving commit does not wake this thread. A lone
            # commit (a quiet server) never waits.
            stop = self._drain(batch)
            if gathering and not stop and len(batch) < self.gather_ops:
                time.sleep(self.gather_delay)
                stop = self._drain(batch)
            gathering = len(batch) > 1
            if self.broken is None:
                try:
                    outcomes = self._commit_batch(conn, batch)
                except BaseException as exc:    # a bug after COMMIT: the cache may be off
                    self.broken = exc
            if self.broken is not None:         # refuse what is queued; the thread lives on to stop
                outcomes = [(False, RuntimeError(f"ledger writer failed: {self.broken!r}"))] * len(batch)
            by_loop = {}
            for op, outcome in zip(batch, outcomes):
                by_loop.setdefault(op.future.get_loop(), []).append((op.future, outcome))
            for loop, items in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve, items)
                except RuntimeError:        # the loop is gone: nobody waits for the reply
                    pass
            since_checkpoint += len(batch)
            if since_checkpoint >= self.checkpoint_ops:
                self._checkpoint_due.set()
                since_checkpoint = 0
            self.writer_cpu += time.thread_time() - cpu0
            if stop:
                break
        self._writer_done = True
        self._checkpoint_due.set()
        self._checkpointer.join()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _drain(self, batch) -> bool:
        """Move what is queued into batch (up to max_batch); True if the stop mark was among it."""
        while len(batch) < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is _STOP:
                return True
            batch.append(nxt)
        return False

    def _checkpoint_loop(self):
        """Copy committed WAL frames into the database, a little at a time, beside the writer."""
        conn = self._checkpoint_conn
        while not self._writer_done:
            self._checkpoint_due.wait(self.checkpoint_every)
            self._checkpoint_due.clear()
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:            # busy or the like: the next round catches up
                pass
        conn.close()

    def _commit_batch(self, conn, batch):
        """One transaction for the batch. An op refuses (LedgerConflict) before its first write,
        so a refused op leaves nothing behind; any other failure fails the whole batch."""
        outcomes = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            k = 0
            while k < len(batch):
                run = 0                     # settlements from k on, journaled in bulk
                while k + run < len(batch) and run < _BULK_ROWS and batch[k + run].record is not None:
                    run += 1
                if run > 1:
                    ids = self._bulk(conn, [op.record for op in batch[k:k + run]])
                    if ids is not None:
                        outcomes.extend((True, i) for i in ids)
                        k += run
                        continue
                for op in batch[k:k + max(run, 1)]:    # one by one (a repeated request among them)
                    try:
                        outcomes.append((True, op.apply(conn)))
                    except LedgerConflict as exc:
                        outcomes.append((False, exc))
                k += max(run, 1)
            conn.execute("COMMIT")          # fsync (synchronous=FULL) before any reply
            self.batches += 1
            self.ops += len(batch)
        except Exception as exc:            # the transaction failed: nothing of the batch is kept
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return [(False, exc)] * len(batch)
        # committed: bring cached persons up to date before any future resolves
        for k, (op, (ok, value)) in enumerate(zip(batch, outcomes)):
            if not ok:
                continue
            change = op.change
            if change is None:
                value, change = value
                outcomes[k] = (True, value)
            self._cache.apply(*change)
            self._known.add(change[0])
        return outcomes

    @staticmethod
    def _bulk(conn, records) -> list[int] | None:
        """Journal settlements in three statements; their setl_ids, or None (nothing written) when
        a request id is already journaled: the caller then goes one by one to refuse just that one."""
        first = conn.execute("SELECT coalesce(max(setl_id), 0) + 1 FROM journal").fetchone()[0]
        now = time.time()
        params = []
        for k, r in enumerate(records):
            params += (first + k, "settle", r.institution, r.request_id, r.request_hash, r.mdtrt_id,
                       r.psn_no, r.insutype, r.year, r.status, None, now, *r.acc_delta,
                       r.balance_delta, r.result)
        try:
            conn.execute(_bulk_journal(len(records)), params)
        except sqlite3.IntegrityError:          # the statement is undone; the transaction goes on
            return None
        acc = [r for r in records if any(r.acc_delta)]
        if acc:
            conn.execute(_bulk_acc(len(acc)),
                         [v for r in acc for v in (r.psn_no, r.insutype, r.year, *r.acc_delta)])
        accounts = [r for r in records if r.opening_balance is not None or r.balance_delta]
        if accounts:
            conn.execute(_bulk_account(len(accounts)), [
                v for r in accounts for v in (r.psn_no, r.opening_balance or 0,
                                              (r.opening_balance or 0) + r.balance_delta)])
        return list(range(first, first + len(records)))

    def close(self):
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()
        self._known.stop()
        self._reader.close()
        self._lock_file.close()                   # another process may own the ledger now


def _resolve(items):
    for fut, (ok, value) in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
