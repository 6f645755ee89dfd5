"""`medsettle serve` and `medsettle call`: kernel/cli.py registers them with add_subcommands.

    medsettle serve                                    # 127.0.0.1:50051, sample pack, ./medsettle-ledger.db
    medsettle serve --host 0.0.0.0 --tls-cert s.pem --tls-key s.key --client-ca ca.pem
    medsettle call settle visit.json --token s3cr3t    # {"request_id":..., "visit": {...}, "lines": [...]}
    medsettle call get-accumulators --psn-no P001

Standalone until wired: python -m server.cli serve ...
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import msgspec

_METHODS = ["presettle", "settle", "reverse", "get-settlement", "get-accumulators", "stream"]



def module_command(module: str, *args: str) -> tuple[list[str], dict]:
    """`python -m module args` for a child process that imports exactly what this process imports.

    A plain `python -m` puts the child's working directory first on its path, so from a checkout
    it would load the source tree's kernel/ (no compiled modules) instead of the installed one.
    """
    path = [p or os.getcwd() for p in sys.path]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")
    return [sys.executable, "-P", "-m", module, *args], env

def add_subcommands(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="run the gRPC settlement service")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="port (0: a free one; default 50051)")
    serve.add_argument("--ledger", default="medsettle-ledger.db", help="SQLite ledger file")
    serve.add_argument("--pack", default=None, help="policy pack TOML (default: shipped sample)")
    serve.add_argument("--catalogue", default=None, help="catalogue CSV/Parquet (default: shipped)")
    serve.add_argument("--tls-cert", default=None, help="server certificate chain (PEM)")
    serve.add_argument("--tls-key", default=None, help="server private key (PEM)")
    serve.add_argument("--client-ca", default=None,
                       help="CA of client certificates: require mutual TLS; CN = institution")
    serve.add_argument("--tokens", default=None,
                       help="TOML/JSON table of bearer token -> institution code")
    serve.add_argument("--allow-plaintext", action="store_true",
                       help="allow plaintext (no TLS) on a non-loopback address")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="allow callers that name their own institution (no tokens, no client "
                            "certificates) on a non-loopback address")
    serve.add_argument("--grace", type=float, default=10.0,
                       help="seconds in-flight calls get at shutdown (default 10)")
    serve.add_argument("--ready-file", default=None,
                       help="write the bound port to this file once listening")
    serve.set_defaults(func=run_serve)

    call = subparsers.add_parser("call", help="one request to a running server")
    call.add_argument("method", choices=_METHODS)
    call.add_argument("request", nargs="?", default=None,
                      help="JSON file ('-' for stdin): {request_id, visit, lines} for "
                           "presettle/settle; a list of those for stream")
    call.add_argument("--target", default="127.0.0.1:50051")
    call.add_argument("--token", default=None, help="bearer token")
    call.add_argument("--ca", default=None, help="server CA (PEM): use TLS")
    call.add_argument("--cert", default=None, help="client certificate (PEM): mutual TLS")
    call.add_argument("--key", default=None, help="client key (PEM)")
    call.add_argument("--server-name", default=None, help="expected server name (TLS)")
    call.add_argument("--institution", default=None,
                      help="institution code (only for a server without authentication)")
    call.add_argument("--request-id", default=None, help="request id (settle) ")
    call.add_argument("--setl-id", default="", help="reverse / get-settlement")
    call.add_argument("--psn-no", default="", help="get-accumulators")
    call.add_argument("--insutype", default="", help="get-accumulators")
    call.add_argument("--year", type=int, default=0, help="get-accumulators")
    call.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    call.set_defaults(func=run_call)

    from . import loadtest          # `medsettle loadtest`: server/loadtest.py
    loadtest.add_subcommands(subparsers)


def run_serve(args) -> int:
    from .security import SecurityConfig, load_tokens
    from .server import ServerConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    security = SecurityConfig(tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca,
                              tokens=load_tokens(args.tokens) if args.tokens else {},
                              allow_plaintext=args.allow_plaintext,
                              allow_unauthenticated=args.allow_unauthenticated)
    config = ServerConfig(host=args.host, port=args.port, ledger_path=args.ledger,
                          pack_path=args.pack, catalogue_path=args.catalogue, security=security,
                          grace=args.grace)

    def ready(port):
        print(f"medsettle listening on {args.host}:{port}", flush=True)
        if args.ready_file:
            with open(args.ready_file + ".tmp", "w") as f:
                f.write(str(port))
            import os
            os.replace(args.ready_file + ".tmp", args.ready_file)

    from .ledger import LedgerUnavailable
    try:
        asyncio.run(serve(config, ready))
    except (ValueError, LedgerUnavailable) as err:  # a refused configuration, or the ledger file
        print(f"medsettle serve: {err}", file=sys.stderr)
        return 2
    return 0


def _read_json(path):
    if path is None:
        return None
    data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    return msgspec.json.decode(data)


def run_call(args) -> int:
    from .client import Client, MedsettleError

    body = _read_json(args.request)
    client = Client(args.target, token=args.token, ca=args.ca, cert=args.cert, key=args.key,
                    server_name=args.server_name, institution=args.institution, timeout=args.timeout)
    try:
        with client:
            if args.method in ("presettle", "settle"):
                if not isinstance(body, dict) or "visit" not in body:
                    print("medsettle call: give a JSON file with {\"visit\": {...}, \"lines\": [...]}",
                          file=sys.stderr)
                    return 2
                if args.method == "presettle":
                    out = client.presettle(body["visit"], body.get("lines"))
                else:
                    out = client.settle(body["visit"], body.get("lines"),
                                        request_id=args.request_id or body.get("request_id"))
            elif args.method == "reverse":
                out = client.reverse(args.setl_id, request_id=args.request_id or "")
            elif args.method == "get-settlement":
                out = client.get_settlement(args.setl_id, request_id=args.request_id or "")
            elif args.method == "get-accumulators":
                out = client.get_accumulators(args.psn_no, args.insutype, args.year)
            else:
                items = body if isinstance(body, list) else [body]
                out = list(client.settle_stream(
                    ((b["visit"], b.get("lines"), b.get("request_id")) for b in items),
                    timeout=args.timeout))
    except MedsettleError as err:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(
            {"error": err.code.name, "message": err.message, "detail": err.detail})) + b"\n")
        return 1
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(out)) + b"\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="medsettle", description="medsettle gRPC service")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
