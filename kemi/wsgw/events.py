"""The structured event log: one JSON object per line for every protocol message and SIP step.

Each line has `ts` (Unix seconds), `event` and the ids that apply: `callId` (the client's
name for the call), `sipCallId`, `conn`, `dn`. SIP steps of a call carry its `callId` too
(looked up from the leg index), so `grep '"callId":"c1"'` follows one call end to end:
the `call` frame, the INVITE, each reply, the frames to the browser, the BYE.

Events:
  ws.in      a client frame (type, id, callId)
  ws.out     a frame to a client (type, id, seq, callId, code for errors, timing for callAccepted)
  sip.out    a request the gateway sends (method, ruri, cseq), CANCEL included
  sip.reply  a reply the gateway sends to a request from the network (code, method)
  sip.in     a request from the network (method, src)
  sip.resp   a reply to one of the gateway's requests (status, method, cseq)
  call.out   a `call` became an INVITE: links callId and sipCallId (dn, to, route)
  call.in    an INVITE rings a DN: links sipCallId and the new callId (the INVITE's
             sip.in and its 100/180 came before the call had a callId)

GW_EVENT_LOG: `stderr` (default: beside Kamailio's own log, which -E sends there), a file
path (appended to), or `off`. Lines are written with one write(2) each, so lines from
several worker processes never interleave.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Protocol

from .sip_port import OutgoingRequest, SipPort

if TYPE_CHECKING:
    from .context import Context

_HEADER = re.compile(r"^(Call-ID|CSeq|From|To): (.*)$", re.MULTILINE)
_TAG = re.compile(r";tag=([^;>\s]+)")


class EventSink(Protocol):
    def write(self, line: str) -> None: ...


class FdSink:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, line: str) -> None:
        os.write(self.fd, line.encode("ascii"))


def open_sink(spec: str) -> EventSink | None:
    spec = spec.strip()
    if spec in ("", "stderr"):
        return FdSink(2)
    if spec == "off":
        return None
    return FdSink(os.open(spec, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))


def emit(ctx: "Context", event: str, **fields: object) -> None:
    if ctx.events is None:
        return
    record = {"ts": round(ctx.clock(), 3), "event": event}
    record.update((k, v) for k, v in fields.items() if v not in (None, ""))
    # ASCII: client text (ids, types) is escaped, so it can neither break the line nor the encoding.
    ctx.events.write(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")


def frame_in(ctx: "Context", conn: str, frame_type: str, request_id: str | None, call_id: str | None) -> None:
    emit(ctx, "ws.in", conn=conn, type=frame_type, id=request_id, callId=call_id)


def frame_out(ctx: "Context", conn: str, message: dict) -> None:
    payload = message.get("payload") or {}
    emit(ctx, "ws.out", conn=conn, type=message.get("type"), id=message.get("id"), seq=message.get("seq"),
         callId=payload.get("callId"), code=payload.get("code") if message.get("type") == "error" else None,
         timing=payload.get("timing"))


def _client_call_id(key: str | None) -> str | None:
    return key.split("#", 1)[1] if key and "#" in key else None


def sip_in(ctx: "Context", method: str, sip_call_id: str, from_tag: str, to_tag: str, src: str) -> None:
    from .calls import key_for_request

    emit(ctx, "sip.in", method=method, sipCallId=sip_call_id, src=src,
         callId=_client_call_id(key_for_request(ctx, sip_call_id, from_tag, to_tag)))


def sip_reply(ctx: "Context", code: int, method: str, sip_call_id: str, from_tag: str, to_tag: str) -> None:
    """A reply the gateway sends to a request from the network."""
    from .calls import key_for_request

    emit(ctx, "sip.reply", code=code, method=method, sipCallId=sip_call_id,
         callId=_client_call_id(key_for_request(ctx, sip_call_id, from_tag, to_tag)))


def sip_resp(ctx: "Context", status: int, method: str, cseq: int, sip_call_id: str, from_tag: str,
             to_tag: str) -> None:
    from .calls import key_for_reply

    emit(ctx, "sip.resp", status=status, method=method, cseq=cseq, sipCallId=sip_call_id,
         callId=_client_call_id(key_for_reply(ctx, sip_call_id, from_tag, to_tag)))


def cancelled(ctx: "Context", call_id: str, sip_call_id: str, cseq: int) -> None:
    """A CANCEL of the call's INVITE (or re-INVITE) was sent (SipPort.cancel knows no callId)."""
    emit(ctx, "sip.out", method="CANCEL", cseq=f"{cseq} CANCEL", sipCallId=sip_call_id, callId=call_id)


class LoggedSipPort:
    """A SipPort that logs each SIP step it is asked for, then does it."""

    def __init__(self, inner: SipPort, ctx: "Context") -> None:
        self.inner = inner
        self.ctx = ctx

    def send_request(self, request: OutgoingRequest) -> bool:
        headers = {name: value.strip() for name, value in _HEADER.findall(request.headers)}
        sip_call_id = headers.get("Call-ID", "")
        from_tag = (_TAG.findall(headers.get("From", "")) or [""])[0]
        to_tag = (_TAG.findall(headers.get("To", "")) or [""])[0]
        if request.method == "REGISTER":
            call_id = None
        else:
            from .calls import key_for_reply  # our request: From tag ours (outbound leg), To tag the caller's

            call_id = _client_call_id(key_for_reply(self.ctx, sip_call_id, from_tag, to_tag))
        emit(self.ctx, "sip.out", method=request.method, ruri=request.ruri, cseq=headers.get("CSeq"),
             sipCallId=sip_call_id, callId=call_id)
        return self.inner.send_request(request)

    def cancel(self, sip_call_id: str, invite_cseq: int) -> bool:
        # Logged by the callers (cancelled()): they know the call; a Call-ID alone does not name it.
        return self.inner.cancel(sip_call_id, invite_cseq)

    def reply_suspended(self, t_index: int, t_label: int, code: int, reason: str, headers: str,
                        body: str) -> str | None:
        return self.inner.reply_suspended(t_index, t_label, code, reason, headers, body)  # logged as sip.reply
