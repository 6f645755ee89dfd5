"""docs/api.md against a real server on 127.0.0.1: the grpcurl session's requests, sent as grpcurl
sends them (the proto3 JSON mapping), get the replies and errors the page shows; the `medsettle call`
commands it lists work and print what it says."""
import json
import re
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_status import rpc_status

from kernel.api import Settler
from server import settlement_pb2 as pb
from server.cli import module_command

from server_fixtures import start_thread_server

DOC = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
SERVICE = pb.DESCRIPTOR.services_by_name["Settlement"]
HEREDOC = re.compile(r"grpcurl -plaintext -H 'authorization: Bearer (\S+)' -d @ 127\.0\.0\.1:50051 "
                     r"medsettle\.v1\.Settlement/(\w+) <<'EOF'\n(.*?)\nEOF", re.S)
INLINE = re.compile(r"grpcurl -plaintext -H 'authorization: Bearer (\S+)' -d '(\{.*?\})' "
                    r"127\.0\.0\.1:50051 medsettle\.v1\.Settlement/(\w+)")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_thread_server(Settler.from_files(), tmp_path_factory.mktemp("docs"))
    yield s
    s.stop()


def call(srv, token, method, body):
    """One RPC as grpcurl makes it: JSON in, the reply as proto3 JSON (a dict), or the error."""
    m = SERVICE.methods_by_name[method]
    request = json_format.Parse(body, getattr(pb, m.input_type.name)())
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = ch.unary_unary(f"/{SERVICE.full_name}/{method}",
                              request_serializer=type(request).SerializeToString,
                              response_deserializer=getattr(pb, m.output_type.name).FromString)
        reply = stub(request, metadata=[("authorization", f"Bearer {token}")], timeout=10)
    return json_format.MessageToDict(reply)


def contains(actual, shown, where="reply"):
    """What the page shows is in the actual reply; a string ending in '...' is a prefix."""
    if isinstance(shown, dict):
        for key, value in shown.items():
            assert key in actual, f"{where}.{key} is shown but not in the reply"
            contains(actual[key], value, f"{where}.{key}")
    elif isinstance(shown, list):
        assert len(actual) == len(shown), f"{where}: {len(actual)} items, the page shows {len(shown)}"
        for k, (a, s) in enumerate(zip(actual, shown)):
            contains(a, s, f"{where}[{k}]")
    elif isinstance(shown, str) and shown.endswith("..."):
        assert actual.startswith(shown[:-3].rstrip()), f"{where}: {actual!r}"
    else:
        assert actual == shown, f"{where}: the server says {actual!r}, the page {shown!r}"


def test_grpcurl_session_replies_as_documented(srv):
    heredocs = HEREDOC.findall(DOC)
    assert [m for _, m, _ in heredocs] == ["Settle", "PreSettle", "Settle"]
    (tok_a, _, body_a), (tok_l, _, body_lines), (tok_bad, _, body_bad) = heredocs
    shown = json.loads(re.search(r"```json\n(.*?)\n```", DOC, re.S).group(1))

    first = call(srv, tok_a, "Settle", body_a)
    contains(first, shown)
    again = call(srv, tok_a, "Settle", body_a)           # "the same settlement comes back"
    assert again["replayed"] is True and again["settlement"] == first["settlement"]

    inline = {method: (token, body) for token, body, method in INLINE.findall(DOC)}
    token, body = inline["GetAccumulators"]
    rows = call(srv, token, "GetAccumulators", body)["rows"]
    assert rows[0]["hifpInp"] == first["settlement"]["hifpPay"]          # totals did not move

    assert call(srv, tok_l, "PreSettle", body_lines)["settlement"]["status"] == "OK"

    message = re.search(r"Message: (.*)\n", DOC).group(1)
    detail = json.loads(re.search(r"1\)\t(\{.*\})", DOC).group(1))
    with pytest.raises(grpc.RpcError) as e:
        call(srv, tok_bad, "Settle", body_bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details() == message
    status = rpc_status.from_call(e.value)
    got = pb.ErrorDetail()
    assert status.details[0].Unpack(got)
    assert {"@type": status.details[0].type_url, **json_format.MessageToDict(got)} == detail

    reversals = [(token, body) for token, body, method in INLINE.findall(DOC) if method == "Reverse"]
    with pytest.raises(grpc.RpcError) as e:                # "only H001 may"
        call(srv, reversals[0][0], "Reverse", reversals[0][1])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    call(srv, reversals[1][0], "Reverse", reversals[1][1])
    with pytest.raises(grpc.RpcError) as e:                # "a second time is FailedPrecondition"
        call(srv, reversals[1][0], "Reverse", reversals[1][1])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    token, body = inline["GetSettlement"]
    assert call(srv, token, "GetSettlement", body)["settlement"]["reversed"] is True


def medsettle(*args, stdin=None):
    cmd, env = module_command("kernel.cli", *args)
    return subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, timeout=60)


def test_medsettle_call_commands(srv, tmp_path):
    target = f"127.0.0.1:{srv.port}"
    visit = {"request_id": "H001-call-1",
             "visit": {"mdtrt_id": "CALL1", "psn_no": "P50", "insutype": "rural", "medins_lv": "2",
                       "med_type": "21", "enddate": "2013-06-15", "setl_time": "2013-06-15T12:00:00",
                       "fulamt_ownpay_amt": 500000, "overlmt_selfpay": 50000, "preselfpay_amt": 100000,
                       "inscp_scp_amt": 5350000}}
    (tmp_path / "visit.json").write_text(json.dumps(visit))
    out = medsettle("call", "settle", str(tmp_path / "visit.json"), "--token", "tok-h001", "--target", target)
    assert out.returncode == 0, out.stderr
    settled = json.loads(out.stdout)["settlement"]
    # example A: basic 85% x (53,500 - 300) = 45,220.00; ints, snake_case names
    assert settled["hifp_pay"] == 4_522_000 and settled["mdtrt_id"] == "CALL1"

    out = medsettle("call", "get-accumulators", "--psn-no", "P50", "--token", "tok-h001", "--target", target)
    assert out.returncode == 0 and json.loads(out.stdout)["rows"][0]["hifp_inp"] == 4_522_000

    out = medsettle("call", "reverse", "--setl-id", settled["setl_id"], "--token", "tok-h002", "--target", target)
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"] == "PERMISSION_DENIED"
    out = medsettle("call", "reverse", "--setl-id", settled["setl_id"], "--token", "tok-h001", "--target", target)
    assert out.returncode == 0 and json.loads(out.stdout)["settlement"]["reversed"] is True

    bad = dict(visit, request_id="H001-call-2")
    bad["visit"] = dict(visit["visit"], mdtrt_id="CALL2", inscp_scp_amt=-1)
    out = medsettle("call", "settle", "-", "--token", "tok-h001", "--target", target, stdin=json.dumps(bad))
    error = json.loads(out.stdout)
    assert out.returncode == 1 and error["error"] == "INVALID_ARGUMENT"
    assert error["detail"]["field"] == "inscp_scp_amt" and error["detail"]["value"] == "-1"
    assert error["detail"]["mdtrt_id"] == "CALL2"
