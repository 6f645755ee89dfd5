"""Helpers for the server tests: a real server on 127.0.0.1 (in a thread or a subprocess),
certificates made at test time with `cryptography`, and the section 8 visits as wire dicts."""
from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.cli import module_command
from server.client import Client
from server.security import SecurityConfig
from server.server import ServerConfig, start

Y = 100  # fen per yuan


def wire_visit(mdtrt_id, psn_no="P1", level="2", end="2013-06-15", diag="", cats="", amounts=None,
               **extra) -> dict:
    """A rural inpatient visit as the client sends it (strings for dates)."""
    v = {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": "rural", "medins_lv": level,
         "med_type": "21", "enddate": end, "setl_time": end + "T12:00:00", "dise_codg": diag,
         "psn_cats": cats}
    if amounts is not None:     # precomputed: {fulamt, overlmt, preselfpay, inscp} in fen
        f, o, p, i = amounts
        v.update(fulamt_ownpay_amt=f, overlmt_selfpay=o, preselfpay_amt=p, inscp_scp_amt=i,
                 inscp_essential_amt=0, medfee_sumamt=f + o + p + i)
    v.update(extra)
    return v


def visit_a(mdtrt_id="A", psn_no="P1"):
    """Example A: county hospital, 15 June: fulamt 5,000, overlmt 500, preselfpay 1,000, inscp 53,500."""
    return wire_visit(mdtrt_id, psn_no, "2", "2013-06-15",
                      amounts=(5000 * Y, 500 * Y, 1000 * Y, 53500 * Y))


def visit_b(mdtrt_id="B", psn_no="P1"):
    """Example B: city hospital, acute myocardial infarction (I21), 20 July, 80,000 class A."""
    return wire_visit(mdtrt_id, psn_no, "3", "2013-07-20", diag="I21",
                      amounts=(0, 0, 0, 80000 * Y))


def small_visit(mdtrt_id, psn_no="P9", inscp=2000 * Y, end="2013-03-01"):
    return wire_visit(mdtrt_id, psn_no, "1", end, amounts=(0, 0, 0, inscp))


# --- a server in this process, on its own event loop thread -------------------------------------

class ThreadServer:
    """start() the real grpc.aio server on a thread; .port, .stop()."""

    def __init__(self, config: ServerConfig, settler, ledger=None):
        self.config, self.settler = config, settler
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = self._run(start(config, settler, ledger))
        self.port = self.running.port
        self.ledger = self.running.ledger

    def _run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace=1.0):
        if self.loop.is_closed():
            return
        self._run(self.running.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def client(self, **kw) -> Client:
        return Client(f"127.0.0.1:{self.port}", **kw)


TOKENS = {"tok-h001": "H001", "tok-h002": "H002"}


def start_thread_server(settler, tmp_path, security: SecurityConfig | None = None,
                        ledger_name="ledger.db", ledger=None, **kw) -> ThreadServer:
    """ledger: a ledger object to serve (default: a SqliteLedger on tmp_path / ledger_name)."""
    sec = security or SecurityConfig(tokens=dict(TOKENS))
    path = ledger.path if ledger is not None else str(tmp_path / ledger_name)
    cfg = ServerConfig(host="127.0.0.1", port=0, ledger_path=path, security=sec, grace=1.0, **kw)
    return ThreadServer(cfg, settler, ledger)


# --- a server in a subprocess (crash test) ------------------------------------------------------

def spawn_server(tmp_path: Path, ledger: Path, tokens_file: Path) -> tuple[subprocess.Popen, int]:
    """`medsettle serve` as its own process on a port it binds itself (no free-port race): the
    process and the port, read from its ready file once it listens."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    log = tmp_path / f"server-{ready.name}.log"
    cmd, env = module_command("server.cli", "serve", "--port", "0", "--ledger", str(ledger),
                              "--tokens", str(tokens_file), "--ready-file", str(ready), "--grace", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
                            env=env, cwd=str(Path(__file__).resolve().parent.parent))
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + log.read_text())
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    port = int(ready.read_text())
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(ch).result(timeout=30)
    ch.close()
    return proc, port


# --- certificates -------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    h001_cert: Path
    h001_key: Path
    h002_cert: Path
    h002_key: Path
    rogue_cert: Path            # CN=H001, signed by another CA
    rogue_key: Path


def make_pki(directory: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, path):
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca_cert(cn):
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn, ca_key, ca, server=False):
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    def write(prefix, k, cert):
        write_key(k, directory / f"{prefix}.key")
        (directory / f"{prefix}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return directory / f"{prefix}.pem", directory / f"{prefix}.key"

    ca_key, ca = ca_cert("medsettle test CA")
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    srv = write("server", *leaf("localhost", ca_key, ca, server=True))
    h1 = write("h001", *leaf("H001", ca_key, ca))
    h2 = write("h002", *leaf("H002", ca_key, ca))
    rogue_ca_key, rogue_ca = ca_cert("rogue CA")
    rogue = write("rogue", *leaf("H001", rogue_ca_key, rogue_ca))
    return Pki(directory / "ca.pem", *srv, *h1, *h2, *rogue)
