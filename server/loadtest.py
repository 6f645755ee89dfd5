"""`medsettle loadtest`: drive a running server with realistic traffic and check its ledger after.

    medsettle loadtest --target 127.0.0.1:50051 --token tok --concurrency 64 --duration 30
    medsettle loadtest --rate 300 --duration 60 --requests 20000 --mix settle=70,presettle=15,reverse=5,query=10

- Traffic: PreSettle / Settle / Reverse / Query (GetSettlement and GetAccumulators) in the given mix,
  over synthetic visits of the calibrated region (kernel.region, as `medsettle synth` writes them;
  kernel.synth for a pack without the rural scheme), in settlement-time order. Every person and
  visit id carries a run tag, so a run never collides with what the ledger already holds.
- Load: fixed concurrency (closed loop: N calls in flight), or a fixed rate (open loop: call k is
  due at start + k / rate and its latency is measured from when it was due, so a slow server is
  not hidden by the client waiting for it).
- Bounds: it stops issuing at --duration seconds or --requests calls, whichever comes first, then
  waits at most --timeout (every call's deadline) plus 5 s for the calls in flight: it always stops.
- Report: throughput (calls completed, whatever their status, over the seconds from the first send
  to the last completion: the calls in flight when sending stops are counted, so is their time),
  latency p50/p90/p99/p99.9 from an HDR histogram (microsecond resolution, 3 significant digits),
  per operation and per second, errors by gRPC status code; JSON and a latency-over-time chart
  (matplotlib, the `report` extra).
- Ledger check: a Settle whose outcome the client cannot know (deadline, connection lost) is looked
  up by its request id; then every touched person's accumulators (GetAccumulators) must equal the
  sums of the acknowledged, unreversed settlements: deductible, basic fund per pool, large-amount,
  serious illness, civil servant, assistance, admissions (and the account balance).

Target: the loopback address (127.0.0.1, ::1, localhost) unless --allow-remote is given; a remote
target (a staging server) needs TLS: --ca, and --cert/--key for mutual TLS, as `medsettle call`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

OPS = ["presettle", "settle", "reverse", "query"]
DEFAULT_MIX = "settle=70,presettle=15,reverse=5,query=10"
# status codes after which a Settle may or may not have been committed: looked up afterwards
AMBIGUOUS = {"DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL", "RESOURCE_EXHAUSTED"}
# accumulator (wire name) <- settlement amount it sums
ACC_FROM_PAY = {"hifob": "hifob_pay", "hifmi": "hifmi_pay", "cvl": "cvlserv_pay", "maf": "maf_pay"}
HIST_MAX_US = 120_000_000       # the histogram's range: 1 us .. 120 s


def _histogram():
    from hdrh.histogram import HdrHistogram
    return HdrHistogram(1, HIST_MAX_US, 3)


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in OPS:
            raise ValueError(f"unknown operation {name!r} in --mix (known: {', '.join(OPS)})")
        mix[name] = float(weight or 1)
        if mix[name] < 0:
            raise ValueError(f"negative weight for {name} in --mix")
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("--mix gives no operation a weight")
    return mix


def check_target(target: str, allow_remote: bool = False, ca: str | None = None) -> None:
    """Loopback by default; another host only when asked for, and then over TLS (a bearer token
    must not cross the network in clear)."""
    from .security import is_loopback
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or target.startswith("[") else target
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(f"target {target!r} is not a loopback address (127.0.0.1, ::1, localhost): "
                         "pass --allow-remote to load another server (a staging server)")
    if ca is None:
        raise ValueError(f"target {target!r}: a remote target needs TLS: give --ca (and --cert, --key "
                         "for mutual TLS)")


def check_config(cfg: "Config") -> None:
    """Every setting that would stop a run, checked before anything is sent (ValueError)."""
    check_target(cfg.target, cfg.allow_remote, cfg.ca)
    if (cfg.rate is None) == (cfg.concurrency is None):
        raise ValueError("give exactly one of a fixed rate or a fixed concurrency")
    if cfg.rate is not None and cfg.rate <= 0 or cfg.concurrency is not None and cfg.concurrency < 1:
        raise ValueError("the rate and the concurrency must be positive")
    if cfg.duration <= 0 or cfg.requests < 1:
        raise ValueError("--duration and --requests bound the run: both must be positive")
    if (cfg.cert is None) != (cfg.key is None):
        raise ValueError("--cert and --key go together (mutual TLS)")
    if cfg.cert is not None and cfg.ca is None:
        raise ValueError("--cert and --key need --ca (the server's CA): they are for TLS")
    for flag, path in (("--ca", cfg.ca), ("--cert", cfg.cert), ("--key", cfg.key)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file")


@dataclasses.dataclass
class Config:
    target: str = "127.0.0.1:50051"
    concurrency: int | None = None          # closed loop with this many calls in flight
    rate: float | None = None               # open loop at this many calls a second
    duration: float = 60.0                  # stop issuing after this many seconds ...
    requests: int = 1_000_000               # ... or this many calls, whichever comes first
    mix: dict = dataclasses.field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    visits: int = 20_000                    # synthetic visits drawn (reused with new ids when exhausted)
    seed: int = 1
    lines: bool = False                     # send line items instead of precomputed amounts
    pack: str | None = None                 # the server's pack (default: the shipped sample)
    catalogue: str | None = None
    token: str | None = None
    institution: str | None = None          # x-institution, for a server without authentication
    ca: str | None = None                   # the server's CA (PEM): TLS
    cert: str | None = None                 # client certificate and key (PEM): mutual TLS
    key: str | None = None
    server_name: str | None = None          # the name the server's certificate carries, if not the target's
    allow_remote: bool = False              # a target other than loopback (then TLS is required)
    timeout: float = 10.0                   # every call's deadline, seconds
    max_in_flight: int = 2048               # open loop: calls in flight at most (later ones wait)
    tag: str | None = None                  # run tag on person and visit ids (default: random)
    check_ledger: bool = True
    progress: bool = False


# --- the visits ------------------------------------------------------------------------------------

def _wire(value):
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def make_visits(cfg: Config):
    """(pack, [(visit dict, lines or None)]) for the server's pack, with the run tag on the ids."""
    from kernel.api import Settler
    settler = Settler.from_files(cfg.pack, cfg.catalogue)
    pack, catalogue = settler.pack, settler.catalogue
    n = max(1, int(cfg.visits))
    if any(s.code == "rural" for s in pack.schemes):
        from kernel.region import COMPENSATIONS_PER_ENROLLEE, county_visits
        visits, lines = county_visits(pack, catalogue, 0, n, max(1, round(n / COMPENSATIONS_PER_ENROLLEE)),
                                      cfg.seed, "lines" if cfg.lines else "precomputed")
    else:
        from kernel import synth
        if cfg.lines:
            visits, lines = synth.synth_visits(pack, catalogue, n, seed=cfg.seed)
        else:
            visits, lines = synth.synth_precomputed(pack, n, seed=cfg.seed), None
    by_visit = defaultdict(list)
    if lines is not None:
        for line in lines.to_pylist():
            by_visit[line.pop("mdtrt_id")].append(line)
    tag = cfg.tag
    out = []
    for row in visits.to_pylist():
        lines_of = by_visit.get(row["mdtrt_id"]) if lines is not None else None
        visit = {k: _wire(v) for k, v in row.items() if v is not None}
        visit["mdtrt_id"] = tag + visit["mdtrt_id"]
        visit["psn_no"] = tag + visit["psn_no"]
        visit.pop("fixmedins_code", None)           # the server fills in the calling institution
        out.append((visit, lines_of))
    return pack, out


# --- the run ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Acked:
    """An acknowledged settlement: what the ledger must hold for it."""
    setl_id: str
    request_id: str
    psn_no: str
    insutype: str
    year: int
    status: str
    amounts: dict
    admission: bool
    pool: str
    acct_balc: int | None
    reversed: bool = False


class LoadRun:
    def __init__(self, cfg: Config, pack, visits):
        import grpc

        from . import settlement_pb2 as pb
        from . import settlement_pb2_grpc as pb_grpc
        self.grpc, self.pb, self.pb_grpc = grpc, pb, pb_grpc
        self.cfg, self.pack, self.visits = cfg, pack, visits
        self.rng = random.Random(cfg.seed)
        self.ops = list(cfg.mix)
        self.weights = [cfg.mix[o] for o in self.ops]
        self.admission = {m.code: m.admission for m in pack.med_types}
        self.pool = {m.code: m.pool for m in pack.med_types}
        self.metadata = []
        if cfg.token:
            self.metadata.append(("authorization", f"Bearer {cfg.token}"))
        if cfg.institution:
            self.metadata.append(("x-institution", cfg.institution))
        self.hist = _histogram()
        self.hist_op = {op: _histogram() for op in OPS}
        self.timeline = defaultdict(_histogram)           # second since start -> histogram
        self.sent = Counter()
        self.codes = defaultdict(Counter)                 # op -> status code name -> count
        self.acked: dict[str, Acked] = {}                 # request_id -> settlement
        self.reversible: list[str] = []                   # request ids of acked, unreversed settles
        self.settled_ids: list[str] = []                  # request ids of every acked settle
        self.unknown_settles: list[tuple[str, dict]] = [] # (request_id, visit) with an unknown outcome
        self.unknown_reversals: list[str] = []            # request ids
        self.mismatched_reads = 0                         # GetSettlement differing from the ack
        self.unresolved = 0                               # unknown outcomes the server could not tell
        self.next_visit = 0
        self.sequence = 0                                 # request ids
        self.issued = 0
        self.in_flight = 0
        self.last_send = self.last_completion = None      # perf_counter of the last call sent / ended
        self.stopped_by = None

    # --- requests ---

    def _request(self, index: int, request_id: str):
        visit, lines = self.visits[index % len(self.visits)]
        rnd = index // len(self.visits)
        if rnd:
            visit = dict(visit, mdtrt_id=f"{visit['mdtrt_id']}~{rnd}")
        pb = self.pb
        req = pb.SettleRequest(request_id=request_id, visit=pb.Visit(**visit))
        for line in lines or ():
            req.lines.add(**line)
        return visit, req

    def _choose(self) -> str:
        op = self.rng.choices(self.ops, self.weights)[0]
        if op in ("reverse", "query") and not self.reversible:
            return "settle" if "settle" in self.cfg.mix else "presettle"
        return op

    async def _call(self, method, request):
        return await method(request, metadata=self.metadata, timeout=self.cfg.timeout)

    async def one(self, stub, due: float):
        """One operation; latency from `due` (the scheduled time in open loop, the send otherwise)."""
        op = self._choose()
        self.sent[op] += 1
        self.last_send = time.perf_counter()
        grpc, pb = self.grpc, self.pb
        code = "OK"
        try:
            if op in ("settle", "presettle"):
                index = self.next_visit
                if op == "settle":
                    self.next_visit += 1
                else:
                    index = self.rng.randrange(max(1, min(len(self.visits), self.next_visit + 1)))
                self.sequence += 1
                request_id = f"{self.cfg.tag}r{self.sequence}"
                visit, req = self._request(index, request_id)
                try:
                    reply = await self._call(stub.Settle if op == "settle" else stub.PreSettle, req)
                except (grpc.RpcError, asyncio.CancelledError) as err:
                    if op == "settle" and (isinstance(err, asyncio.CancelledError)
                                           or err.code().name in AMBIGUOUS):
                        self.unknown_settles.append((request_id, visit))
                    raise
                if op == "settle":
                    self._ack(request_id, visit, reply.settlement)
            elif op == "reverse":
                request_id = self.reversible.pop(self.rng.randrange(len(self.reversible)))
                try:
                    await self._call(stub.Reverse, pb.ReverseRequest(setl_id=self.acked[request_id].setl_id))
                except (grpc.RpcError, asyncio.CancelledError) as err:
                    if isinstance(err, asyncio.CancelledError) or err.code().name in AMBIGUOUS:
                        self.unknown_reversals.append(request_id)
                    raise
                self.acked[request_id].reversed = True
            else:
                request_id = self.rng.choice(self.settled_ids)
                acked = self.acked[request_id]
                if self.rng.random() < 0.5:
                    reply = await self._call(stub.GetSettlement, pb.GetSettlementRequest(setl_id=acked.setl_id))
                    if reply.settlement.hifp_pay != acked.amounts["hifp_pay"]:
                        self.mismatched_reads += 1
                else:
                    await self._call(stub.GetAccumulators, pb.GetAccumulatorsRequest(psn_no=acked.psn_no))
        except grpc.RpcError as err:
            code = err.code().name
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            self.last_completion = time.perf_counter()
            us = max(1, min(HIST_MAX_US, int((self.last_completion - due) * 1e6)))
            self.codes[op][code] += 1
            self.hist.record_value(us)
            self.hist_op[op].record_value(us)
            self.timeline[int(time.perf_counter() - self.t0)].record_value(us)

    def _ack(self, request_id, visit, s):
        amounts = {name: getattr(s, name) for name in
                   ("act_pay_dedc", "hifp_pay", "hifob_pay", "hifmi_pay", "cvlserv_pay", "maf_pay", "acct_pay")}
        self.acked[request_id] = Acked(
            setl_id=s.setl_id, request_id=request_id, psn_no=s.psn_no, insutype=s.insutype, year=s.year,
            status=s.status, amounts=amounts, admission=self.admission.get(visit["med_type"], False),
            pool=self.pool.get(visit["med_type"], "inpatient"), acct_balc=visit.get("acct_balc"))
        self.reversible.append(request_id)
        self.settled_ids.append(request_id)

    # --- load shapes ---

    def _more(self) -> bool:
        if self.issued >= self.cfg.requests:
            self.stopped_by = self.stopped_by or "requests"
            return False
        if time.perf_counter() - self.t0 >= self.cfg.duration:
            self.stopped_by = self.stopped_by or "duration"
            return False
        return True

    async def _tracked(self, stub, due):
        self.in_flight += 1
        try:
            await self.one(stub, due)
        finally:
            self.in_flight -= 1

    async def closed_loop(self, stub, tasks):
        async def worker():
            while self._more():
                self.issued += 1
                await self._tracked(stub, time.perf_counter())
        tasks.update(asyncio.create_task(worker()) for _ in range(max(1, self.cfg.concurrency)))
        await asyncio.wait(set(tasks))

    async def open_loop(self, stub, tasks):
        slots = asyncio.Semaphore(self.cfg.max_in_flight)
        k = 0
        while self._more():
            due = self.t0 + k / self.cfg.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
                if not self._more():
                    break
            await slots.acquire()
            self.issued += 1
            k += 1
            task = asyncio.create_task(self._tracked(stub, due))
            task.add_done_callback(lambda _t: slots.release())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def run(self) -> dict:
        from .client import channel as open_channel
        cfg = self.cfg
        async with open_channel(cfg.target, ca=cfg.ca, cert=cfg.cert, key=cfg.key,
                                server_name=cfg.server_name, aio=True) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout=self.cfg.timeout)
            except TimeoutError:
                raise ConnectionError(
                    f"no connection to {self.cfg.target} within {self.cfg.timeout:g} s"
                    + (" (TLS: check --ca, --cert, --key, --server-name)" if self.cfg.ca else
                       " (plaintext: a TLS server needs --ca)")) from None
            stub = self.pb_grpc.SettlementStub(channel)
            tasks: set = set()
            cpu0 = time.process_time()
            self.t0 = time.perf_counter()
            reporter = asyncio.create_task(self._progress()) if self.cfg.progress else None
            shape = self.open_loop if self.cfg.rate else self.closed_loop
            try:
                await asyncio.wait_for(shape(stub, tasks), timeout=self.cfg.duration + self.cfg.timeout + 5)
            except TimeoutError:
                self.stopped_by = self.stopped_by or "hard stop"
            pending = [t for t in tasks if not t.done()]
            if pending:                              # the calls in flight: their deadline, then cancel
                done, late = await asyncio.wait(pending, timeout=self.cfg.timeout + 5)
                for t in late:
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            elapsed = time.perf_counter() - self.t0
            client_cpu = time.process_time() - cpu0
            if reporter:
                reporter.cancel()
            resolved = await self._resolve(stub)
            ledger = await self._check_ledger(stub) if self.cfg.check_ledger else None
        return self._report(elapsed, client_cpu, resolved, ledger)

    async def _progress(self):
        while True:
            await asyncio.sleep(1.0)
            t = time.perf_counter() - self.t0
            done = sum(sum(c.values()) for c in self.codes.values())
            print(f"\r  loadtest {t:5.0f} s: {done:,} calls, {done / max(t, 1e-9):,.0f}/s, "
                  f"p99 {self.hist.get_value_at_percentile(99) / 1000:.1f} ms, "
                  f"{len(self.acked):,} settled", end="", file=sys.stderr, flush=True)

    # --- after the run ---

    async def _resolve(self, stub) -> dict:
        """Learn the outcome of every call the client could not know: committed or not."""
        grpc, pb = self.grpc, self.pb
        counts = Counter()
        window = asyncio.Semaphore(32)

        async def lookup(request):
            async with window:
                try:
                    return await self._call(stub.GetSettlement, request)
                except grpc.RpcError as err:
                    return err.code()

        settles = await asyncio.gather(*(lookup(pb.GetSettlementRequest(request_id=r))
                                         for r, _ in self.unknown_settles))
        for (request_id, visit), reply in zip(self.unknown_settles, settles):
            if reply == grpc.StatusCode.NOT_FOUND:
                counts["found_not_committed"] += 1
            elif isinstance(reply, grpc.StatusCode):
                counts["unresolved"] += 1
            else:
                counts["found_committed"] += 1
                self._ack(request_id, visit, reply.settlement)
                self.acked[request_id].reversed = reply.settlement.reversed
        reversals = await asyncio.gather(*(lookup(pb.GetSettlementRequest(setl_id=self.acked[r].setl_id))
                                           for r in self.unknown_reversals))
        for request_id, reply in zip(self.unknown_reversals, reversals):
            if isinstance(reply, grpc.StatusCode):
                counts["unresolved"] += 1
            else:
                self.acked[request_id].reversed = reply.settlement.reversed
                counts["found_reversed"] += reply.settlement.reversed
        self.unresolved = counts["unresolved"]
        return {"settles_unknown": len(self.unknown_settles), "reversals_unknown": len(self.unknown_reversals),
                **{k: counts[k] for k in ("found_committed", "found_not_committed", "found_reversed",
                                          "unresolved")}}

    async def _check_ledger(self, stub) -> dict:
        """Every touched person's accumulators against the sums of the acknowledged settlements."""
        expected = defaultdict(Counter)                    # (psn, insutype, year) -> wire name -> sum
        balance = {}
        for a in self.acked.values():
            row = expected[(a.psn_no, a.insutype, a.year)]
            row["_touched"] += 0
            if a.acct_balc is not None:
                balance.setdefault(a.psn_no, Counter())["opening:" + str(a.acct_balc)] += 1
            if a.reversed:
                continue
            for acc, pay in ACC_FROM_PAY.items():
                row[acc] += a.amounts[pay]
            row["hifp_inp" if a.pool == "inpatient" else "hifp_out"] += a.amounts["hifp_pay"]
            row["ded_paid_inp" if a.pool == "inpatient" else "ded_paid_out"] += a.amounts["act_pay_dedc"]
            if a.status == "OK" and a.admission:
                row["admissions"] += 1
            balance.setdefault(a.psn_no, Counter())["acct_pay"] += a.amounts["acct_pay"]
        persons = sorted({k[0] for k in expected})
        fields = list(ACC_FROM_PAY) + ["hifp_inp", "hifp_out", "ded_paid_inp", "ded_paid_out", "admissions"]
        mismatches = []
        window = asyncio.Semaphore(32)

        async def check(psn):
            async with window:
                reply = await self._call(stub.GetAccumulators, self.pb.GetAccumulatorsRequest(psn_no=psn))
            held = {(psn, r.insutype, r.year): r for r in reply.rows}
            for key in set(held) | {k for k in expected if k[0] == psn}:
                row = held.get(key)
                for name in fields:
                    want = expected.get(key, Counter())[name]
                    got = getattr(row, name) if row is not None else 0
                    if want != got:
                        mismatches.append({"psn_no": key[0], "insutype": key[1], "year": key[2],
                                           "field": name, "expected": want, "ledger": got})
            b = balance.get(psn)
            openings = [k for k in (b or {}) if k.startswith("opening:")]
            if reply.has_account and len(openings) == 1:
                want = int(openings[0].split(":")[1]) - b["acct_pay"]
                if reply.acct_balc != want:
                    mismatches.append({"psn_no": psn, "field": "acct_balc", "expected": want,
                                       "ledger": reply.acct_balc})

        try:
            await asyncio.gather(*(check(p) for p in persons))
        except self.grpc.RpcError as err:
            return {"ok": False, "error": f"GetAccumulators failed: {err.code().name}",
                    "persons": len(persons), "mismatch_count": None, "settlements_live": None,
                    "settlements_reversed": None}
        live = [a for a in self.acked.values() if not a.reversed]
        return {"ok": not mismatches and self.mismatched_reads == 0 and not self.unresolved,
                "unresolved_outcomes": self.unresolved, "persons": len(persons),
                "rows": len(expected), "settlements_acknowledged": len(self.acked),
                "settlements_reversed": len(self.acked) - len(live), "settlements_live": len(live),
                "fund_paid_live_fen": sum(a.amounts["hifp_pay"] + a.amounts["hifob_pay"] + a.amounts["hifmi_pay"]
                                          + a.amounts["cvlserv_pay"] + a.amounts["maf_pay"] for a in live),
                "get_settlement_mismatches": self.mismatched_reads,
                "mismatches": mismatches[:50], "mismatch_count": len(mismatches)}

    def _report(self, elapsed, client_cpu, resolved, ledger) -> dict:
        def lat(h):
            if h.get_total_count() == 0:
                return None
            return {"count": h.get_total_count(), "mean_ms": round(h.get_mean_value() / 1000, 3),
                    **{f"p{str(q).replace('.', '_')}_ms": round(h.get_value_at_percentile(q) / 1000, 3)
                       for q in (50, 90, 99, 99.9)},
                    "max_ms": round(h.get_max_value() / 1000, 3)}
        done = sum(sum(c.values()) for c in self.codes.values())
        ok = sum(c["OK"] for c in self.codes.values())
        committed_settles = self.codes["settle"]["OK"]
        by_op = {op: {"sent": self.sent[op], "ok": self.codes[op]["OK"],
                      "errors": {k: v for k, v in self.codes[op].items() if k != "OK"},
                      "latency": lat(self.hist_op[op])} for op in OPS if self.sent[op]}
        timeline = [{"second": s, "calls": h.get_total_count(),
                     "p50_ms": h.get_value_at_percentile(50) / 1000,
                     "p90_ms": h.get_value_at_percentile(90) / 1000,
                     "p99_ms": h.get_value_at_percentile(99) / 1000}
                    for s, h in sorted(self.timeline.items())]
        errors = Counter()
        for c in self.codes.values():
            errors.update({k: v for k, v in c.items() if k != "OK"})
        cfg = self.cfg
        # seconds from the first send to the last send, and to the last completion: a call still in
        # flight when sending stops is counted when it ends, so the window runs until then
        issuing = self.last_send - self.t0 if self.last_send is not None else 0.0
        window = self.last_completion - self.t0 if self.last_completion is not None else 0.0
        return {
            "tool": "medsettle loadtest", "when": dt.datetime.now().isoformat(timespec="seconds"),
            "target": cfg.target, "tag": cfg.tag,
            "load": ({"mode": "rate", "rate_per_s": cfg.rate, "max_in_flight": cfg.max_in_flight}
                     if cfg.rate else {"mode": "concurrency", "concurrency": cfg.concurrency}),
            "bounds": {"duration_s": cfg.duration, "requests": cfg.requests, "stopped_by": self.stopped_by,
                       "issuing_s": round(issuing, 3), "completion_s": round(window, 3),
                       "elapsed_s": round(elapsed, 3)},
            "mix": cfg.mix, "visits": {"drawn": len(self.visits), "line_items": cfg.lines, "seed": cfg.seed},
            "calls": {"issued": self.issued, "completed": done, "ok": ok, "errors": dict(errors)},
            "throughput_per_s": round(done / window, 1) if window > 0 else None,
            "throughput_basis": "calls completed (any status) / completion_s, the seconds from the first "
                                "send to the last completion",
            "committed_settlements": committed_settles,
            "committed_settlements_per_s": round(committed_settles / window, 1) if window > 0 else None,
            "latency": lat(self.hist), "by_op": by_op,
            "latency_measured_from": "scheduled send time (open loop)" if cfg.rate else "send",
            "client_cpu_s": round(client_cpu, 3),
            "unknown_outcomes": resolved, "ledger_check": ledger, "timeline": timeline,
        }


def run(cfg: Config, visits=None) -> dict:
    """Run a load test (blocking) and return the report dict. `visits`: (pack, visit list) to reuse.
    ValueError for a setting that stops the run, ConnectionError when the target does not answer."""
    check_config(cfg)
    cfg.tag = cfg.tag or f"LT{uuid.uuid4().hex[:8]}-"
    pack, visit_list = visits if visits is not None else make_visits(cfg)
    return asyncio.run(LoadRun(cfg, pack, visit_list).run())


def write_chart(report: dict, path) -> None:
    """Latency percentiles and calls per second over the run (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tl = report["timeline"]
    secs = [r["second"] for r in tl]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for q in ("p50", "p90", "p99"):
        top.plot(secs, [r[f"{q}_ms"] for r in tl], label=q)
    top.set_yscale("log")
    top.set_ylabel("latency (ms)")
    top.legend(loc="upper right")
    load = report["load"]
    top.set_title(f"medsettle loadtest: {load['mode']} "
                  f"{load.get('rate_per_s') or load.get('concurrency')}, {report['target']}")
    bottom.bar(secs, [r["calls"] for r in tl], width=0.9)
    bottom.set_ylabel("calls completed / s")
    bottom.set_xlabel("second of the run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    lat = report["latency"] or {}
    led = report["ledger_check"]
    lines = [
        f"{report['calls']['completed']:,} calls sent over {report['bounds']['issuing_s']:.1f} s "
        f"(stopped by {report['bounds']['stopped_by']}), the last completed at "
        f"{report['bounds']['completion_s']:.1f} s: {report['throughput_per_s']:,} calls/s, "
        f"{report['committed_settlements_per_s']:,} committed settlements/s (to the last completion)",
        "latency ms: " + ", ".join(f"{k[:-3]} {v}" for k, v in lat.items() if k.endswith("_ms")),
        "errors: " + (", ".join(f"{k} {v}" for k, v in report["calls"]["errors"].items()) or "none"),
    ]
    for op, r in report["by_op"].items():
        l = r["latency"] or {}
        lines.append(f"  {op:9s} {r['sent']:>8,} sent, {r['ok']:>8,} ok, p50 {l.get('p50_ms')} ms, "
                     f"p99 {l.get('p99_ms')} ms, errors {r['errors'] or '-'}")
    if led is not None and "error" in led:
        lines.append(f"ledger check: FAILED: {led['error']}")
    elif led is not None:
        lines.append(f"ledger check: {'OK' if led['ok'] else 'FAILED'}: {led['persons']:,} persons, "
                     f"{led['settlements_live']:,} live settlements ({led['settlements_reversed']:,} reversed), "
                     f"{led['mismatch_count']} mismatches")
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------------

def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("loadtest", help="drive a running server and check its ledger")
    p.add_argument("--target", default="127.0.0.1:50051",
                   help="server address (default 127.0.0.1:50051; loopback unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a target other than loopback (a staging server); it needs --ca")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--concurrency", type=int, help="fixed concurrency: calls in flight (default 16)")
    shape.add_argument("--rate", type=float, help="fixed rate: calls a second (open loop)")
    p.add_argument("--duration", type=float, default=60.0, help="stop issuing after this (s, default 60)")
    p.add_argument("--requests", type=int, default=1_000_000, help="... or after this many calls")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"operation weights (default {DEFAULT_MIX})")
    p.add_argument("--visits", type=int, default=20_000, help="synthetic visits drawn (default 20000)")
    p.add_argument("--lines", action="store_true", help="send line items, not precomputed amounts")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pack", default=None, help="the server's policy pack (default: shipped sample)")
    p.add_argument("--catalogue", default=None, help="the server's catalogue (default: shipped)")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--ca", default=None, help="server CA (PEM): use TLS")
    p.add_argument("--cert", default=None, help="client certificate (PEM): mutual TLS")
    p.add_argument("--key", default=None, help="client key (PEM)")
    p.add_argument("--server-name", default=None, help="expected server name (TLS)")
    p.add_argument("--institution", default=None, help="x-institution (server without authentication)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of every call (s)")
    p.add_argument("--max-in-flight", type=int, default=2048, help="open loop: calls in flight at most")
    p.add_argument("--no-ledger-check", action="store_true", help="skip the ledger check")
    p.add_argument("--out", default="loadtest.json", help="JSON report (default loadtest.json)")
    p.add_argument("--chart", default=None, help="latency-over-time PNG (default: beside --out)")
    p.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args) -> int:
    try:
        cfg = Config(target=args.target, concurrency=None if args.rate else (args.concurrency or 16),
                     rate=args.rate, duration=args.duration, requests=args.requests, mix=parse_mix(args.mix),
                     visits=args.visits, seed=args.seed, lines=args.lines, pack=args.pack,
                     catalogue=args.catalogue, token=args.token, institution=args.institution,
                     ca=args.ca, cert=args.cert, key=args.key, server_name=args.server_name,
                     allow_remote=args.allow_remote, timeout=args.timeout, max_in_flight=args.max_in_flight,
                     check_ledger=not args.no_ledger_check, progress=True)
        check_config(cfg)
    except ValueError as err:
        print(f"medsettle loadtest: {err}", file=sys.stderr)
        return 2
    print(f"drawing {cfg.visits:,} synthetic visits ...", file=sys.stderr)
    try:
        report = run(cfg)
    except ConnectionError as err:
        print(f"\nmedsettle loadtest: {err}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1))
    chart = Path(args.chart) if args.chart else out.with_suffix(".png")
    try:
        write_chart(report, chart)
    except ImportError:
        chart = None
        print("no chart: matplotlib is not installed (pip install 'medsettle[report]')", file=sys.stderr)
    print(summary(report))
    print(f"report: {out}" + (f", chart: {chart}" if chart else ""))
    led = report["ledger_check"]
    return 0 if led is None or led["ok"] else 1
