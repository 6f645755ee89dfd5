"""A small Python client for medsettle.v1 (needs grpcio, grpcio-status and the generated stubs,
not the kernel).

    from server.client import Client
    with Client("127.0.0.1:50051", token="...") as c:
        reply = c.settle({"mdtrt_id": "V1", ...}, lines=[...], request_id="H001-0001")
        print(reply["settlement"]["hifp_pay"])

Visits and lines are dicts with the proto's field names (dates may be datetime.date); replies are
dicts with every field present (money in fen). A failed call raises MedsettleError with the gRPC
code, the message and the structured detail (field, line, reason, value), read from the call's
google.rpc.Status with grpcio-status.
"""
from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_status import rpc_status

from . import settlement_pb2 as pb
from . import settlement_pb2_grpc as pb_grpc


class MedsettleError(Exception):
    """A failed call: code (grpc.StatusCode), message, and detail (dict: field, line, reason,
    value, mdtrt_id; empty when the server sent none)."""

    def __init__(self, code, message, detail=None):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message, self.detail = code, message, detail or {}


def from_rpc_error(err: grpc.RpcError) -> MedsettleError:
    """The failed call's code and message, and the ErrorDetail packed in its google.rpc.Status
    (none when gRPC itself ended the call, e.g. an expired deadline)."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:                 # a status trailer that disagrees with the call's status
        status = None
    detail = pb.ErrorDetail()
    found = status is not None and any(any_.Unpack(detail) for any_ in status.details)
    return MedsettleError(err.code(), err.details(), _dict(detail) if found else {})


def status_error(error: pb.StreamError) -> MedsettleError:
    """One SettleStream reply's error as the MedsettleError its unary Settle would have raised."""
    code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
    return MedsettleError(code, error.message,
                          _dict(error.detail) if error.HasField("detail") else {})


def _dict(msg) -> dict:
    """Every field of a message (ints stay ints, unlike the JSON mapping's int64 strings)."""
    out = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None:
            if fd.is_repeated:
                out[fd.name] = [_dict(v) for v in value]
            elif msg.HasField(fd.name):
                out[fd.name] = _dict(value)
            else:
                out[fd.name] = None
        elif fd.is_repeated:
            out[fd.name] = list(value)
        elif fd.has_presence and not msg.HasField(fd.name):
            out[fd.name] = None
        else:
            out[fd.name] = value
    return out


def _jsonable(value):
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def settle_request(visit: dict, lines=None, request_id: str | None = None) -> pb.SettleRequest:
    """A SettleRequest from plain dicts (unknown fields are an error, as the server would say)."""
    req = pb.SettleRequest(request_id=request_id or "")
    json_format.ParseDict({k: _jsonable(v) for k, v in visit.items() if v is not None}, req.visit)
    for line in lines or ():
        json_format.ParseDict({k: v for k, v in line.items() if k != "mdtrt_id" and v is not None},
                              req.lines.add())
    return req


def channel(target: str, *, ca=None, cert=None, key=None, server_name=None, aio=False):
    """Plaintext without ca; TLS with ca (a PEM path); mutual TLS adding cert and key.
    aio: a grpc.aio channel instead of a blocking one."""
    kind = grpc.aio if aio else grpc
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    if ca is None:
        return kind.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(
        Path(ca).read_bytes(), Path(key).read_bytes() if key else None,
        Path(cert).read_bytes() if cert else None)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return kind.secure_channel(target, creds, options=options)


class Client:
    """Blocking client; every call takes timeout= (seconds, the gRPC deadline)."""

    def __init__(self, target="127.0.0.1:50051", *, token=None, ca=None, cert=None, key=None,
                 server_name=None, institution=None, timeout=10.0):
        self._channel = channel(target, ca=ca, cert=cert, key=key, server_name=server_name)
        self.stub = pb_grpc.SettlementStub(self._channel)
        self.metadata = []
        if token:
            self.metadata.append(("authorization", f"Bearer {token}"))
        if institution:                 # only honoured by a server without authentication
            self.metadata.append(("x-institution", institution))
        self.timeout = timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout):
        try:
            reply = method(request, metadata=self.metadata,
                           timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return _dict(reply)

    def presettle(self, visit, lines=None, *, timeout=None) -> dict:
        return self._call(self.stub.PreSettle, settle_request(visit, lines), timeout)

    def settle(self, visit, lines=None, *, request_id=None, timeout=None) -> dict:
        """Settle and commit; request_id makes a retry safe (default: a fresh uuid)."""
        req = settle_request(visit, lines, request_id or uuid.uuid4().hex)
        return self._call(self.stub.Settle, req, timeout)

    def reverse(self, setl_id="", *, request_id="", timeout=None) -> dict:
        return self._call(self.stub.Reverse,
                          pb.ReverseRequest(setl_id=str(setl_id), request_id=request_id), timeout)

    def get_settlement(self, setl_id="", *, request_id="", timeout=None) -> dict:
        return self._call(self.stub.GetSettlement,
                          pb.GetSettlementRequest(setl_id=str(setl_id), request_id=request_id),
                          timeout)

    def get_accumulators(self, psn_no, insutype="", year=0, *, timeout=None) -> dict:
        return self._call(self.stub.GetAccumulators,
                          pb.GetAccumulatorsRequest(psn_no=psn_no, insutype=insutype, year=year),
                          timeout)

    def settle_stream(self, requests, *, timeout=None):
        """requests: iterable of (visit, lines, request_id); yields reply dicts as they complete
        (an item that failed has "error" set; see status_error)."""
        reqs = (settle_request(v, l, r) for v, l, r in requests)
        try:
            for reply in self.stub.SettleStream(reqs, metadata=self.metadata, timeout=timeout):
                yield _dict(reply)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
