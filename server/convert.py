"""Protobuf <-> the kernel's dicts. Types and presence only: every rule is the kernel's.

The field lists come from kernel/schema.py (VISIT_FIELDS, PRECOMPUTED_FIELDS, LINE_FIELDS) and
kernel/layout.py (OUT_COLS, ACC_COLS), so the wire names and the kernel names are one list.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa

from kernel.api import OneResult
from kernel.errors import InputError
from kernel.layout import ACC_COLS, OUT_COLS
from kernel.schema import LINE_FIELDS, PRECOMPUTED_FIELDS, VISIT_FIELDS

from . import settlement_pb2 as pb

# (name, kind, required): kind is how the protobuf value becomes the kernel's value
_KIND = {pa.string(): "str", pa.date32(): "date", pa.timestamp("s"): "time", pa.bool_(): "bool",
         pa.int32(): "int", pa.int64(): "int"}
_VISIT = [(name, _KIND[typ], required) for name, typ, required, _ in VISIT_FIELDS]
_PRECOMPUTED = [name for name, *_ in PRECOMPUTED_FIELDS]
_OPTIONAL_INTS = {f.name for f in pb.Visit.DESCRIPTOR.fields if f.has_presence
                  and f.type in (f.TYPE_INT64, f.TYPE_INT32)}
_LINE_REQUIRED_STR = [name for name, typ, required, _ in LINE_FIELDS
                      if required and typ == pa.string() and name != "mdtrt_id"]
ACC_WIRE = [name[2:].lower() for name in ACC_COLS]     # A_DED_PAID_INP -> ded_paid_inp
_OUT_WIRE = tuple(OUT_COLS)                             # the result's amounts: wire name = kernel name



def visit_from_pb(msg: pb.Visit) -> dict:
    """The kernel's visit dict (VISIT_FIELDS, plus precomputed amounts when given)."""
    visit = {}
    for name, kind, required in _VISIT:
        if kind == "int":
            value = getattr(msg, name) if name not in _OPTIONAL_INTS or msg.HasField(name) else None
        elif kind == "bool":
            value = getattr(msg, name)
        else:
            text = getattr(msg, name)
            if not text:
                value = None
            elif kind == "str":
                value = text
            else:
                value = _parse_time(name, text, kind)
        if value is None and required:
            raise InputError(name, "required value is missing", None, mdtrt_id=msg.mdtrt_id or None)
        visit[name] = value
    for name in _PRECOMPUTED:
        if msg.HasField(name):
            visit[name] = getattr(msg, name)
    return visit


def _parse_time(name, text, kind):
    try:
        if kind == "date":
            return dt.date.fromisoformat(text)
        value = dt.datetime.fromisoformat(text)
        return value if value.tzinfo is None else value.replace(tzinfo=None)   # the wall time given
    except ValueError:
        rule = "not a date YYYY-MM-DD" if kind == "date" else "not a time YYYY-MM-DDTHH:MM:SS"
        raise InputError(name, rule, text) from None


def request_to_kernel(req: pb.SettleRequest) -> tuple[dict, list[dict] | None]:
    """(visit, lines): lines None when the visit carries precomputed amounts instead."""
    visit = visit_from_pb(req.visit)
    precomputed = not visit.keys().isdisjoint(_PRECOMPUTED)
    if not req.lines:
        if not precomputed:
            raise InputError("lines", "a visit needs line items or precomputed amounts", 0,
                             mdtrt_id=visit["mdtrt_id"])
        return visit, None
    if precomputed:
        raise InputError("lines", "give line items or precomputed amounts, not both",
                         len(req.lines), mdtrt_id=visit["mdtrt_id"])
    mdtrt_id = visit["mdtrt_id"]
    lines = []
    for line in req.lines:
        for name in _LINE_REQUIRED_STR:
            if not getattr(line, name):
                raise InputError(name, "required value is missing", None, line=line.line_no,
                                 mdtrt_id=mdtrt_id)
        lines.append({"mdtrt_id": mdtrt_id, "line_no": line.line_no,
                      "hilist_code": line.hilist_code, "cnt": line.cnt, "pric": line.pric,
                      "det_item_fee_sumamt": line.det_item_fee_sumamt})
    return visit, lines


def encode_stored(result: pb.SettlementResult) -> bytes:
    """What the journal keeps of a settlement: the reply's SettlementResult without its setl_id
    (assigned by the commit), so a replay answers exactly what the first call answered."""
    return result.SerializeToString()


def decode_stored(blob: bytes, setl_id: int, reversal_id: int | None,
                  into: pb.SettlementResult | None = None) -> pb.SettlementResult:
    """The stored result with its setl_id and reversal, into a reply's (empty) SettlementResult
    or a new one."""
    result = pb.SettlementResult() if into is None else into
    result.ParseFromString(blob)
    result.setl_id = str(setl_id)
    if reversal_id is not None:
        result.reversed, result.reversal_id = True, str(reversal_id)
    return result


def result_to_pb(one: OneResult, into: pb.SettlementResult | None = None, *, setl_id="",
                 request_id="", institution="", setl_time="", reversal_id="") -> pb.SettlementResult:
    """The SettlementResult of a settled visit, filled into a reply's (empty) one or a new one: a
    reply built in place is not copied into its message afterwards."""
    result = pb.SettlementResult() if into is None else into
    amounts = one.amounts                          # exactly OUT_COLS
    for name in _OUT_WIRE:                         # a fresh message: zero and "" are already so
        value = amounts[name]
        if value:
            setattr(result, name, value)
    result.mdtrt_id, result.psn_no, result.insutype = one.mdtrt_id, one.psn_no, one.insutype
    result.year, result.status, result.flags = one.year, one.status, one.flags
    for name, value in (("setl_id", setl_id), ("request_id", request_id),
                        ("fixmedins_code", institution), ("reason", one.reason),
                        ("policy_version", one.policy_version), ("setl_time", setl_time),
                        ("reversal_id", reversal_id)):
        if value:
            setattr(result, name, value)
    if reversal_id:
        result.reversed = True
    add = result.setldetail.add
    for d in one.setldetail:
        add(fund_pay_type=d.fund_pay_type, inscp_scp_amt=d.inscp_scp_amt,
            crt_payb_lmt_amt=d.crt_payb_lmt_amt, fund_payamt=d.fund_payamt,
            setl_proc_info=d.setl_proc_info)
    return result


def accumulator_row_pb(insutype: str, year: int, acc: dict) -> pb.AccumulatorRow:
    return pb.AccumulatorRow(insutype=insutype, year=year,
                             **{wire: int(acc.get(name, 0)) for wire, name in zip(ACC_WIRE, ACC_COLS)})
