"""Transport security and caller identity: TLS / mutual TLS from certificate paths, institutions
from client certificates (subject CN) or bearer tokens from a configured table.

Token table: a TOML or JSON file mapping token -> institution code, either flat
(`"s3cr3t" = "H001"`) or under a `tokens` table (`[tokens]` / `{"tokens": {...}}`).
"""
from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import grpc


class AuthError(Exception):
    """The call names no institution, or an unknown one: UNAUTHENTICATED."""


def load_tokens(path) -> dict[str, str]:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    table = data.get("tokens", data)
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                              for k, v in table.items()):
        raise ValueError(f"{path}: expected a table of token -> institution code")
    return dict(table)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class SecurityConfig:
    tls_cert: str | None = None       # server certificate chain (PEM)
    tls_key: str | None = None        # server private key (PEM)
    client_ca: str | None = None      # CA of client certificates: mutual TLS, required
    tokens: dict[str, str] = field(default_factory=dict)
    allow_plaintext: bool = False     # plaintext (no TLS) on a non-loopback address
    allow_unauthenticated: bool = False   # open mode (callers name themselves) off loopback
    # no token table and no client CA: callers name themselves with x-institution (loopback only)
    open_institution: str = "local"

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def open_mode(self) -> bool:
        return not self.tokens and not self.client_ca

    def check_bind(self, host: str) -> None:
        """Plaintext only on loopback unless explicitly allowed; open mode never off loopback."""
        if not self.tls and not is_loopback(host) and not self.allow_plaintext:
            raise ValueError(f"refusing plaintext on {host}: give --tls-cert/--tls-key, "
                             "or --allow-plaintext")
        if self.open_mode and not is_loopback(host) and not self.allow_unauthenticated:
            raise ValueError(f"refusing unauthenticated service on {host}: give --tokens or "
                             "--client-ca, or --allow-unauthenticated")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.client_ca and not self.tls:
            raise ValueError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls:
            return None
        pair = (Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())
        root = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([pair], root_certificates=root,
                                           require_client_auth=bool(root))

    def institution(self, context) -> str:
        """The institution a call acts for: client certificate CN, else bearer token.

        A call presenting both must name the same institution with each.
        """
        from_cert = None
        if self.client_ca:
            names = context.auth_context().get("x509_common_name")
            if names:
                from_cert = names[0].decode()
        token = None
        claimed = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value
            elif key == "x-institution":
                claimed = value
        from_token = None
        if token is not None:
            scheme, _, secret = token.partition(" ")
            if scheme.lower() != "bearer" or secret not in self.tokens:
                raise AuthError("unknown bearer token")
            from_token = self.tokens[secret]
        if from_cert and from_token and from_cert != from_token:
            raise AuthError("client certificate and bearer token name different institutions")
        who = from_cert or from_token
        if who:
            return who
        if self.open_mode:
            return claimed or self.open_institution
        raise AuthError("no client certificate or bearer token names an institution")
