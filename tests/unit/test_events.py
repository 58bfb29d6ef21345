"""The structured event log: one JSON line per protocol message and SIP step, with the call's ids."""

from __future__ import annotations

import json
import os

from test_calls import CHROME_OFFER, answered, make_invite, place, reply, ring
from wsgw import calls, events, handlers
from wsgw.calls import CallIdPayload


class ListSink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def records(self) -> list[dict]:
        for line in self.lines:
            assert line.endswith("\n") and "\n" not in line[:-1], line
        return [json.loads(line) for line in self.lines]


def logged(ctx) -> ListSink:
    sink = ListSink()
    ctx.events = sink
    ctx.sip = events.LoggedSipPort(ctx.sip, ctx)
    return sink


def test_an_outbound_call_can_be_followed_by_its_call_id(ctx, caller):
    sink = logged(ctx)
    handlers.dispatch(ctx, caller, json.dumps({"type": "call", "id": "r1", "payload": {
        "to": "5002", "callId": "c1", "sdp": CHROME_OFFER}}))
    invite = ctx.sip.inner.last
    calls.on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t"))  # not logged here: the adapter logs sip.resp
    events.sip_resp(ctx, 200, "INVITE", 1, calls.Call.load(ctx, calls.key_of(ctx, caller, "c1")).sip_call_id,
                    calls.Call.load(ctx, calls.key_of(ctx, caller, "c1")).local_tag, "t")
    calls.on_reply(ctx, answered(invite, to_tag="t"))
    calls.hangup(ctx, caller, "r2", CallIdPayload(call_id="c1"))
    mine = [r for r in sink.records() if r.get("callId") == "c1"]
    assert [(r["event"], r.get("type") or r.get("method")) for r in mine] == [
        ("ws.in", "call"), ("call.out", None), ("sip.out", "INVITE"), ("ws.out", "ringing"), ("sip.resp", "INVITE"),
        ("ws.out", "callAccepted"), ("sip.out", "BYE"), ("ws.out", "callEnded")]
    sip_call_id = mine[1]["sipCallId"]
    assert all(r["sipCallId"] == sip_call_id for r in mine if r["event"].startswith(("sip.", "call.")))
    accepted = next(r for r in mine if r.get("type") == "callAccepted")
    assert accepted["id"] == "r1" and set(accepted["timing"]) >= {"invite", "answered", "accepted"}
    assert all(isinstance(r["ts"], float) for r in mine)


def test_an_inbound_call_links_its_sip_call_id_to_its_call_id(ctx, caller):
    sink = logged(ctx)
    call = ring(ctx, make_invite())
    events.sip_reply(ctx, 200, "INVITE", call.sip_call_id, call.remote_tag, "")
    [linked] = [r for r in sink.records() if r["event"] == "call.in"]
    assert linked["callId"] == call.call_id and linked["sipCallId"] == "inbound-1@10.0.0.2" and linked["dn"] == "5001"
    [answer] = [r for r in sink.records() if r["event"] == "sip.reply"]
    assert answer["callId"] == call.call_id and answer["code"] == 200


def test_client_text_cannot_break_a_line(ctx, conn):
    sink = logged(ctx)
    handlers.dispatch(ctx, conn, '{"type":"ping","id":"x\\n{}"}')  # an invalid id: the error is logged
    events.emit(ctx, "ws.in", callId='x"\n{"event":"forged"}\u2028\ud800')
    records = sink.records()  # every line parses and is one line
    assert [r["event"] for r in records] == ["ws.out", "ws.in"]
    assert records[0]["code"] == "invalid_payload"
    assert records[1]["callId"] == 'x"\n{"event":"forged"}\u2028\ud800'
    assert all(line.isascii() for line in sink.lines)


def test_off_and_file_sinks(tmp_path):
    assert events.open_sink("off") is None
    path = tmp_path / "events.jsonl"
    sink = events.open_sink(str(path))
    sink.write('{"a":1}\n')
    sink.write('{"b":2}\n')
    os.close(sink.fd)
    assert path.read_text() == '{"a":1}\n{"b":2}\n'
    assert isinstance(events.open_sink("stderr"), events.FdSink)


def test_no_sink_no_cost(ctx, caller):
    assert ctx.events is None
    place(ctx, caller)  # nothing to write, nothing fails


def test_a_cancel_carries_the_call_id(ctx, caller):
    sink = ctx.events = ListSink()  # the CANCEL is logged by calls.py itself, not by the SIP port
    call, invite = place(ctx, caller, call_id="c9")
    calls.on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t"))
    calls.hangup(ctx, caller, "h", CallIdPayload(call_id="c9"))
    [cancel] = [r for r in sink.records() if r.get("method") == "CANCEL"]
    assert cancel["callId"] == "c9" and cancel["sipCallId"] == call.sip_call_id and cancel["cseq"] == "1 CANCEL"
