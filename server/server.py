"""The gRPC service: protobuf in, kernel call, ledger commit, protobuf out. No rule logic here.

    python -m server.cli serve                      # sample pack, sample catalogue, ./medsettle-ledger.db

Per-person serialization: every Settle and Reverse of one psn_no holds that person's asyncio lock
from reading the totals to the durable commit, so two concurrent settlements never read the same
totals. Requests are idempotent on (institution, request_id): the first result is replayed.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import logging
import signal
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from kernel.errors import InputError
from kernel.layout import ACC_COLS

from . import convert
from . import settlement_pb2 as pb
from . import settlement_pb2_grpc as pb_grpc
from .ledger import Ledger, LedgerConflict, SettlementRecord, SqliteLedger
from .security import AuthError, SecurityConfig

log = logging.getLogger("medsettle.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Settlement"].full_name


class CallError(Exception):
    """A call that fails with a gRPC status and an ErrorDetail."""

    def __init__(self, code: grpc.StatusCode, message: str, field="", line=0, reason="", value=None,
                 mdtrt_id=""):
        super().__init__(message)
        self.code, self.message = code, message
        self.detail = pb.ErrorDetail(field=field, line=line or 0, reason=reason or message,
                                     value="" if value is None else str(value),
                                     mdtrt_id=mdtrt_id or "")

    @classmethod
    def from_input(cls, err: InputError, mdtrt_id: str = "") -> "CallError":
        """INVALID_ARGUMENT naming the field, line and value; mdtrt_id: the request's visit, for
        an error that does not name it itself (a line item's)."""
        where = f"line {err.line}: " if err.line is not None else ""
        message = f"{where}{err.field}: {err.rule} (value: {err.value!r})"
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message, err.field, err.line or 0, err.rule,
                   err.value, err.mdtrt_id or mdtrt_id)

    def status(self) -> status_pb2.Status:
        """The google.rpc.Status of the failed call: code, message, the ErrorDetail as an Any."""
        detail = any_pb2.Any()
        detail.Pack(self.detail)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])

    def stream_error(self) -> pb.StreamError:
        """The same status as one SettleStream reply's error."""
        return pb.StreamError(code=self.code.value[0], message=self.message, detail=self.detail)

    async def abort(self, context):
        await context.abort_with_status(rpc_status.to_status(self.status()))


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051                     # 0: a free port (the bound one is returned)
    ledger_path: str = "medsettle-ledger.db"
    pack_path: str | None = None          # None: the shipped sample pack
    catalogue_path: str | None = None     # None: the shipped sample catalogue
    security: SecurityConfig = field(default_factory=SecurityConfig)
    grace: float = 10.0                   # seconds in-flight calls get at shutdown
    stream_window: int = 256              # requests of one stream settled concurrently


class _PersonLocks:
    """Who holds each person: per psn_no, the calls waiting for it in arrival order, behind the one
    holding it. A person nobody holds has no entry. A call alone (the common case) takes its person
    at once: no lock object, no future, no timer, no await."""

    def __init__(self):
        self._held: dict[str, list | None] = {}    # psn_no -> waiting futures, oldest first

    def try_take(self, psn_no) -> bool:
        """Take the person if nobody holds it or waits for it."""
        if psn_no in self._held:
            return False
        self._held[psn_no] = None
        return True

    async def take(self, psn_no, deadline: float | None) -> None:
        """Wait for the person behind the calls before this one, until the deadline (loop time):
        then DEADLINE_EXCEEDED. A person freed meanwhile is taken at once."""
        if self.try_take(psn_no):
            return
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        waiting = self._held[psn_no]
        if waiting is None:
            waiting = self._held[psn_no] = []
        waiting.append(turn)
        try:
            if deadline is None:
                await turn
            else:
                async with asyncio.timeout(deadline - loop.time()):
                    await turn
        except TimeoutError:
            self._forfeit(psn_no, turn)
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            "deadline passed while waiting for the person's earlier settlements")
        except BaseException:
            self._forfeit(psn_no, turn)
            raise

    def _forfeit(self, psn_no, turn) -> None:
        # handed the person just as it gave up (woken, not yet run): pass it on; else its turn is
        # cancelled and give() skips it
        if turn.done() and not turn.cancelled():
            self.give(psn_no)

    def give(self, psn_no, done=None) -> None:
        """The holder is done: the oldest call still waiting holds the person now, or nobody does.
        (done: as a future's done-callback, the commit the holder waited to land.)"""
        if done is not None and not done.cancelled():
            done.exception()                       # retrieved: the caller may be gone
        waiting = self._held[psn_no]
        while waiting:
            turn = waiting.pop(0)
            if not turn.done():
                turn.set_result(None)
                return
        del self._held[psn_no]

    def holders(self, psn_no) -> int:
        """Calls holding or waiting for the person (a deadline gone: its turn no longer counts)."""
        if psn_no not in self._held:
            return 0
        return 1 + sum(not turn.done() for turn in self._held[psn_no] or ())


class _PersonHold:
    """Holds a person from reading their totals to the durable commit: `async with
    _PersonHold(locks, psn_no, deadline) as hold:`, or, on the per-call path, `hold.enter()` (True:
    taken at once) else `await hold.wait()`, and `hold.leave()` in a finally. Waiting for the
    person's earlier calls ends at the deadline (DEADLINE_EXCEEDED). A commit queued inside is put
    in hold.commit; on leaving, the person is let go only once that commit has landed (a ledger
    commit cannot be cancelled, so a cancelled call normally leaves after it anyway), so the
    person's next call reads the totals it writes."""

    __slots__ = ("locks", "psn_no", "deadline", "commit")

    def __init__(self, locks: _PersonLocks, psn_no: str, deadline: float | None):
        self.locks, self.psn_no, self.deadline = locks, psn_no, deadline
        self.commit = None

    def enter(self) -> bool:
        return self.locks.try_take(self.psn_no)

    async def wait(self) -> None:
        await self.locks.take(self.psn_no, self.deadline)

    def leave(self) -> None:
        commit = self.commit
        if commit is None or commit.done():
            self.locks.give(self.psn_no)
        else:
            commit.add_done_callback(functools.partial(self.locks.give, self.psn_no))

    async def __aenter__(self) -> _PersonHold:
        if not self.enter():
            await self.wait()
        return self

    def check_deadline(self) -> None:
        """Raise DEADLINE_EXCEEDED when the call's deadline has passed: nothing is committed after it."""
        if self.deadline is not None and asyncio.get_running_loop().time() >= self.deadline:
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the commit")

    async def __aexit__(self, *exc) -> None:
        self.leave()


def _request_hash(req: pb.SettleRequest) -> bytes:
    return hashlib.blake2b(req.SerializeToString(deterministic=True), digest_size=16).digest()


class SettlementService(pb_grpc.SettlementServicer):
    def __init__(self, settler, ledger: Ledger, security: SecurityConfig, stream_window=256):
        self.settler, self.ledger, self.security = settler, ledger, security
        self.stream_window = stream_window
        self._locks = _PersonLocks()
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self.closing = False

    # --- the core, shared by the unary and streaming calls ---------------------------------------

    def institution(self, context) -> str:
        try:
            return self.security.institution(context)
        except AuthError as err:
            raise CallError(grpc.StatusCode.UNAUTHENTICATED, str(err), reason="unauthenticated")

    async def settle(self, req: pb.SettleRequest, institution: str, mode: str,
                     deadline: float | None, into: pb.SettlementResult) -> bool:
        """Settle into the reply's (empty) SettlementResult; True when it is a retry's replay of the
        first result. Raises CallError; writes nothing unless into gets a new setl_id."""
        if self.closing:
            raise CallError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        try:
            visit, lines = convert.request_to_kernel(req)
        except InputError as err:
            raise CallError.from_input(err, req.visit.mdtrt_id)
        claimed = visit.get("fixmedins_code")
        if claimed and claimed != institution:
            raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                            f"fixmedins_code {claimed!r} is not the calling institution",
                            "fixmedins_code", reason="not the calling institution", value=claimed,
                            mdtrt_id=visit["mdtrt_id"])
        visit["fixmedins_code"] = institution
        if mode == "presettle":
            return await self._compute(req, visit, lines, institution, mode, deadline, into)
        if not req.request_id:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, "request_id: required value is missing",
                            "request_id", reason="required value is missing",
                            mdtrt_id=visit["mdtrt_id"])
        key = (institution, req.request_id)
        digest = _request_hash(req)
        first = self._inflight.get(key)
        if first is not None:                      # a retry racing the first attempt: wait for it
            done = asyncio.get_running_loop().create_future()
            first.append(done)
            await done                             # however the first ended
            record = self.ledger.find_request(institution, req.request_id)
            if record is not None:
                self._replay(record, digest, into)
                return True                        # else the first failed: settle this one afresh
        # No look-up first: a retry of an earlier-committed request is caught by the journal's
        # unique (institution, request_id) at commit and replayed then (retries are rare). The
        # retries racing this attempt queue a future each in `waiting` (no future of its own: the
        # common call has no retry).
        waiting = self._inflight[key] = []
        try:
            return await self._compute(req, visit, lines, institution, mode, deadline, into, digest)
        finally:
            if self._inflight.get(key) is waiting:
                del self._inflight[key]
            for done in waiting:
                if not done.done():
                    done.set_result(None)

    def _replay(self, record: SettlementRecord, digest: bytes, into: pb.SettlementResult) -> None:
        if record.request_hash != digest:
            raise CallError(grpc.StatusCode.ALREADY_EXISTS,
                            f"request_id {record.request_id!r} was used for a different request",
                            "request_id", reason="request id reused with a different request",
                            value=record.request_id, mdtrt_id=record.mdtrt_id)
        self._stored_pb(record, into)

    def _stored_pb(self, record: SettlementRecord, into: pb.SettlementResult) -> None:
        convert.decode_stored(record.result, record.setl_id, record.reversed_by, into)

    async def _compute(self, req, visit, lines, institution, mode, deadline, into, digest=b""):
        try:
            psn_no, insutype, year = self.settler.acc_key(visit)
        except InputError as err:
            raise CallError.from_input(err, visit["mdtrt_id"])
        hold = _PersonHold(self._locks, psn_no, deadline)
        if not hold.enter():                       # alone, the common case: no await
            await hold.wait()
        try:
            return await self._settle_locked(req, visit, lines, institution, mode, digest,
                                             (psn_no, insutype, year), hold, into)
        finally:
            hold.leave()

    async def _settle_locked(self, req, visit, lines, institution, mode, digest, key,
                             hold: _PersonHold, into: pb.SettlementResult) -> bool:
        state = self.ledger.read_state(*key)
        opening = None
        if state.balance is not None:
            balance = state.balance
        else:
            balance = visit.get("acct_balc") or 0
            opening = visit.get("acct_balc")
        try:
            one = self.settler.settle_one(visit, lines, state.acc, balance, mode)
        except InputError as err:
            raise CallError.from_input(err, visit["mdtrt_id"])
        setl_time = req.visit.setl_time
        if mode == "presettle":
            convert.result_to_pb(one, into, request_id=req.request_id, institution=institution,
                                 setl_time=setl_time)
            return False
        if one.status == "REFUSED":
            raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"visit {one.mdtrt_id}: inj_cause: a pending injury cause cannot be "
                            f"settled (value: {visit.get('inj_cause')!r}); PreSettle marks it provisional",
                            "inj_cause", reason="pending injury cause", value=visit.get("inj_cause"),
                            mdtrt_id=one.mdtrt_id)
        hold.check_deadline()
        before, after = state.acc, one.acc_after           # after: every ACC_COLS name, in order
        delta = ([after[name] - before.get(name, 0) for name in ACC_COLS] if before
                 else list(after.values()))
        convert.result_to_pb(one, into, request_id=req.request_id, institution=institution,
                             setl_time=setl_time)
        record = SettlementRecord(
            institution=institution, request_id=req.request_id, request_hash=digest,
            mdtrt_id=one.mdtrt_id, psn_no=key[0], insutype=key[1], year=key[2], status=one.status,
            result=convert.encode_stored(into), acc_delta=delta,
            balance_delta=int(one.balance_after) - int(balance), opening_balance=opening)
        try:
            hold.commit = self.ledger.commit_settlement(record)
            setl_id = await hold.commit           # not cancellable: a cancelled call waits for it
        except LedgerConflict as err:
            first = self.ledger.find_request(institution, req.request_id)
            if err.reason == "duplicate_request" and first is not None:
                into.Clear()
                self._replay(first, digest, into)
                return True
            raise CallError(grpc.StatusCode.ALREADY_EXISTS, str(err), "request_id", reason=err.reason,
                            value=req.request_id)
        except Exception as err:
            log.exception("ledger commit failed")
            raise CallError(grpc.StatusCode.UNAVAILABLE, f"ledger commit failed: {err}")
        into.setl_id = str(setl_id)
        return False

    def _own_record(self, institution, setl_id: str, request_id: str) -> SettlementRecord:
        if setl_id:
            try:
                record = self.ledger.get(int(setl_id))
            except ValueError:
                record = None
            if record is None:
                raise CallError(grpc.StatusCode.NOT_FOUND, f"no settlement {setl_id}", "setl_id",
                                reason="no such settlement", value=setl_id)
        elif request_id:
            record = self.ledger.find_request(institution, request_id)
            if record is None:
                raise CallError(grpc.StatusCode.NOT_FOUND,
                                f"no settlement with request_id {request_id}", "request_id",
                                reason="no such settlement", value=request_id)
        else:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, "give setl_id or request_id",
                            "setl_id", reason="required value is missing")
        if record.institution != institution:
            raise CallError(grpc.StatusCode.PERMISSION_DENIED,
                            f"settlement {record.setl_id} belongs to another institution", "setl_id",
                            reason="another institution's settlement", value=record.setl_id)
        return record

    # --- RPCs ----------------------------------------------------------------------------------

    async def _unary(self, context, body):
        try:
            institution = self.institution(context)
            return await body(institution)
        except CallError as err:
            await err.abort(context)

    def _deadline(self, context):
        remaining = context.time_remaining()
        return None if remaining is None else asyncio.get_running_loop().time() + remaining

    async def PreSettle(self, request, context):
        return await self._settle_call(request, context, "presettle")

    async def Settle(self, request, context):
        return await self._settle_call(request, context, "settle")

    async def _settle_call(self, request, context, mode):
        # written out rather than through _unary: the busiest call, one coroutine fewer
        try:
            reply = pb.SettleReply()               # the result is built in place: no copy into it
            reply.replayed = await self.settle(request, self.institution(context), mode,
                                               self._deadline(context), reply.settlement)
            return reply
        except CallError as err:
            await err.abort(context)

    async def Reverse(self, request, context):
        async def body(institution):
            if self.closing:
                raise CallError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            record = self._own_record(institution, request.setl_id, request.request_id)
            if record.reversed_by is not None:
                raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"settlement {record.setl_id} is already reversed", "setl_id",
                                reason="already reversed", value=record.setl_id)
            async with _PersonHold(self._locks, record.psn_no, self._deadline(context)) as hold:
                reversal_id = await self._reverse_locked(record, institution, hold)
            record.reversed_by = reversal_id
            reply = pb.ReverseReply(reversal_id=str(reversal_id))
            self._stored_pb(record, reply.settlement)
            return reply
        return await self._unary(context, body)

    async def _reverse_locked(self, record: SettlementRecord, institution: str, hold: _PersonHold) -> int:
        hold.check_deadline()
        try:
            hold.commit = self.ledger.commit_reversal(record.setl_id, institution)
            return await hold.commit               # not cancellable, as a settlement's
        except LedgerConflict as err:
            code = {"already_reversed": grpc.StatusCode.FAILED_PRECONDITION,
                    "other_institution": grpc.StatusCode.PERMISSION_DENIED,
                    "not_found": grpc.StatusCode.NOT_FOUND}.get(
                        err.reason, grpc.StatusCode.FAILED_PRECONDITION)
            raise CallError(code, str(err), "setl_id", reason=err.reason,
                            value=record.setl_id)
        except Exception as err:           # as Settle: the ledger could not commit
            log.exception("ledger commit of a reversal failed")
            raise CallError(grpc.StatusCode.UNAVAILABLE, f"ledger commit failed: {err}")

    async def GetSettlement(self, request, context):
        async def body(institution):
            record = self._own_record(institution, request.setl_id, request.request_id)
            reply = pb.SettleReply()
            self._stored_pb(record, reply.settlement)
            return reply
        return await self._unary(context, body)

    async def GetAccumulators(self, request, context):
        async def body(institution):
            if not request.psn_no:
                raise CallError(grpc.StatusCode.INVALID_ARGUMENT, "psn_no: required value is missing",
                                "psn_no", reason="required value is missing")
            balance, rows = self.ledger.accumulators(request.psn_no, request.insutype or None,
                                                     request.year or None)
            return pb.Accumulators(
                psn_no=request.psn_no, has_account=balance is not None, acct_balc=balance or 0,
                rows=[convert.accumulator_row_pb(i, y, acc) for i, y, acc in rows])
        return await self._unary(context, body)

    async def SettleStream(self, request_iterator, context):
        try:
            institution = self.institution(context)
        except CallError as err:
            await err.abort(context)
            return
        deadline = self._deadline(context)
        out: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(self.stream_window)
        tasks: set[asyncio.Task] = set()

        async def one(req):
            try:
                reply = pb.SettleStreamReply(request_id=req.request_id)
                reply.replayed = await self.settle(req, institution, "settle", deadline,
                                                   reply.settlement)
            except CallError as err:
                reply = pb.SettleStreamReply(request_id=req.request_id, error=err.stream_error())
            except Exception as err:               # never lose the stream on one request
                log.exception("stream settle failed")
                reply = pb.SettleStreamReply(request_id=req.request_id, error=CallError(
                    grpc.StatusCode.INTERNAL, f"internal error: {err}").stream_error())
            out.put_nowait(reply)

        async def read():
            try:
                async for req in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(one(req))   # started in arrival order
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                reply = await out.get()
                if reply is None:
                    break
                yield reply
                window.release()                    # a slot per reply sent: a slow reader slows us
            await reader                            # surfaces a broken request stream
        finally:
            if not reader.done():
                reader.cancel()


@dataclass
class Running:
    """A started server: its bound port and how to stop it gracefully."""
    server: grpc.aio.Server
    port: int
    service: SettlementService
    health: health_aio.HealthServicer
    ledger: Ledger
    grace: float

    async def stop(self, grace: float | None = None):
        """Stop accepting, let in-flight calls finish, flush and close the ledger."""
        self.service.closing = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace if grace is None else grace)
        await asyncio.to_thread(self.ledger.close)


async def start(config: ServerConfig, settler=None, ledger: Ledger | None = None) -> Running:
    """Start serving; settler and ledger default to those named by config."""
    config.security.check_bind(config.host)
    if settler is None:
        from kernel.api import Settler
        settler = Settler.from_files(config.pack_path, config.catalogue_path)
    owned = ledger is None
    if owned:
        ledger = SqliteLedger(config.ledger_path)
    try:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                          ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        service = SettlementService(settler, ledger, config.security, config.stream_window)
        pb_grpc.add_SettlementServicer_to_server(service, server)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        address = f"{config.host}:{config.port}" if ":" not in config.host else f"[{config.host}]:{config.port}"
        creds = config.security.server_credentials()
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        # the pack, catalogue and libraries loaded above live as long as the process: out of the
        # collector's sight, so a full collection under load scans only what calls create (a p99
        # spike of 100+ ms otherwise)
        gc.collect()
        gc.freeze()
        await server.start()
        await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        if owned:                                  # e.g. the port is taken: free the ledger file
            await asyncio.to_thread(ledger.close)
        raise
    return Running(server, port, service, health, ledger, config.grace)


async def serve(config: ServerConfig, ready=None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully. ready(port) once listening."""
    running = await start(config)
    log.info("medsettle serving on %s:%d (ledger %s)", config.host, running.port, config.ledger_path)
    if ready:
        ready(running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight calls, flushing the ledger")
    await running.stop()
