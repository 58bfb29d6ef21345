"""wsgw.transfer: REFER both ways (RFC 3515) - blind and attended (Replaces, RFC 3891) transfers by the
browser, REFER replies and NOTIFY progress, and a REFER from the far end with the referred call's
progress reported back as NOTIFYs."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

import pytest

from fakes import parse_headers
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from test_calls import (CALLEE_CONTACT, CALLEE_TARGET, RECORD_ROUTE, make_invite, place, register, register_upstream,
                        reply, ring)
from test_midcall import CONTACT_5001, cseq_of, inbound_call, outbound_call, sip_reply
from wsgw import errors, protocol, transfer as transfer_mod
from wsgw.calls import (CONFIRMED, ENDING, Call, CallIdPayload, CallPayload, call_key, hangup, on_remote_bye,
                        on_reply, parse_call, place_call, tick)
from wsgw.errors import GatewayError
from wsgw.midcall import DtmfPayload, dtmf
from wsgw.protocol import ProtocolError
from wsgw.transfer import (TransferPayload, check_referred_by, notify_refer_accepted, on_remote_notify,
                           on_remote_refer, parse_transfer, replaces_value, transfer)

SIPFRAG = "message/sipfrag;version=2.0"


# ---- helpers ----


def msg(msg_type: str, payload: dict, rid: str | None = None) -> dict:
    return protocol.message(msg_type, payload, rid)


def err(code: str, reason: str, rid: str | None, request_type: str) -> dict:
    return protocol.error_message(code, reason, rid, request_type)


def sent(ctx, conn=None) -> list[dict]:
    return ctx.outbox.messages(conn)


def load(ctx, key: str) -> Call:
    call = Call.load(ctx, key)
    assert call is not None
    return call


def confirmed(ctx, conn, call_id: str, *, to: str = "5002", to_tag: str = "callee-tag",
              contact: str = CALLEE_CONTACT) -> Call:
    """An answered outbound call with its own far-end tag and Contact; outbox / requests cleared."""
    call, invite = place(ctx, conn, to=to, call_id=call_id)
    on_reply(ctx, reply(invite, 200, "OK", to_tag=to_tag,
                        headers={"Contact": contact, "Record-Route": RECORD_ROUTE}, body=PCMU_ANSWER))
    call = load(ctx, call.key)
    assert call.state == CONFIRMED
    ctx.outbox.clear()
    ctx.sip.clear()
    return call


def do_transfer(ctx, conn, call: Call, rid: str | None = "t1", **fields):
    before = len(ctx.sip.requests)
    if not fields:
        fields = {"target": "5003"}
    transfer(ctx, conn, rid, TransferPayload(call_id=call.call_id, **fields))
    assert len(ctx.sip.requests) == before + 1
    refer = ctx.sip.last
    assert refer.method == "REFER"
    return refer


def notify(ctx, call: Call, body: str, event: str = "refer") -> int:
    """A NOTIFY from the far end of `call` (From tag theirs, To tag ours)."""
    return on_remote_notify(ctx, call.sip_call_id, call.remote_tag, call.local_tag, event, body)


def far_refer(ctx, call: Call, refer_to: str) -> int:
    return on_remote_refer(ctx, call.sip_call_id, call.remote_tag, call.local_tag, refer_to)


def notifies(ctx) -> list:
    return [r for r in ctx.sip.requests if r.method == "NOTIFY"]


@pytest.fixture
def c1(ctx, caller) -> Call:
    return outbound_call(ctx, caller, "c1")


# ======================================================================
# payload
# ======================================================================


def test_parse_transfer_blind_and_attended():
    assert parse_transfer({"callId": "c1", "target": "5003"}) == TransferPayload(call_id="c1", target="5003")
    assert parse_transfer({"callId": "c1", "target": "+4915112345678"}).target == "+4915112345678"
    assert parse_transfer({"callId": "c1", "replacesCallId": "c2"}) == TransferPayload(call_id="c1",
                                                                                        replaces_call_id="c2")


@pytest.mark.parametrize("payload", [
    {"callId": "c1"},  # neither
    {"callId": "c1", "target": "5003", "replacesCallId": "c2"},  # both
    {"callId": "c1", "target": "5003", "extra": 1},
    {"callId": "c1", "target": "50 03"},
    {"callId": "c1", "target": "5003@evil.example"},
    {"callId": "c1", "target": "5003\r\nX: y"},
    {"callId": "c1", "target": 5003},
    {"callId": "c1", "target": ""},
    {"callId": "c1", "replacesCallId": "c 2"},
    {"callId": "c1", "replacesCallId": None},
    {"callId": "c 1", "target": "5003"},
    {"target": "5003"},
])
def test_parse_transfer_invalid(payload):
    with pytest.raises(GatewayError) as exc:
        parse_transfer(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_parse_transfer_names_the_rule():
    with pytest.raises(GatewayError) as exc:
        parse_transfer({"callId": "c1", "target": "5003", "replacesCallId": "c2"})
    assert "exactly one of target" in exc.value.reason
    with pytest.raises(GatewayError) as exc:
        parse_transfer({"callId": "c1", "target": "5003", "video": True})
    assert "unknown field(s): video" in exc.value.reason


def test_parse_frame_knows_transfer():
    frame = protocol.parse_frame(json.dumps({"type": "transfer", "id": "t1", "payload": {"callId": "c1", "target": "5003"}}))
    assert (frame.type, frame.id, frame.payload) == ("transfer", "t1", TransferPayload("c1", "5003"))
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_frame(json.dumps({"type": "transfer", "id": "t2", "payload": {"callId": "c1"}}))
    assert (exc.value.code, exc.value.request_id, exc.value.msg_type) == (errors.INVALID_PAYLOAD, "t2", "transfer")


def test_parse_call_referred_by():
    p = parse_call({"to": "5003", "callId": "c2", "sdp": CHROME_OFFER, "referredBy": "c1"})
    assert p.referred_by == "c1"
    assert parse_call({"to": "5003", "callId": "c2", "sdp": CHROME_OFFER}).referred_by == ""
    for bad in ("c 1", "", 7, None):
        with pytest.raises(GatewayError) as exc:
            parse_call({"to": "5003", "callId": "c2", "sdp": CHROME_OFFER, "referredBy": bad})
        assert exc.value.code == errors.INVALID_PAYLOAD


# ======================================================================
# our REFER: refusals
# ======================================================================


def test_transfer_of_unanswered_call_is_invalid_state(ctx, caller):
    place(ctx, caller, call_id="c1")
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        transfer(ctx, caller, "t1", TransferPayload(call_id="c1", target="5003"))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


def test_transfer_of_ringing_inbound_call_is_invalid_state(ctx, caller):
    call = ring(ctx, make_invite())
    with pytest.raises(GatewayError) as exc:
        transfer(ctx, caller, "t1", TransferPayload(call_id=call.call_id, target="5003"))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


def test_transfer_unknown_or_foreign_call_is_no_such_call(ctx, caller, conn2, c1):
    register(ctx, conn2, "5002")
    for conn, call_id in ((caller, "nope"), (conn2, "c1")):
        with pytest.raises(GatewayError) as exc:
            transfer(ctx, conn, "t1", TransferPayload(call_id=call_id, target="5003"))
        assert exc.value.code == errors.NO_SUCH_CALL
    assert ctx.sip.requests == []
    assert load(ctx, c1.key).refer is None


def test_second_transfer_while_one_is_pending_is_invalid_state(ctx, caller, c1):
    do_transfer(ctx, caller, c1)
    for fields in ({"target": "5004"}, {"replaces_call_id": "c2"}):
        with pytest.raises(GatewayError) as exc:
            transfer(ctx, caller, "t2", TransferPayload(call_id="c1", **fields))
        assert exc.value.code == errors.INVALID_STATE
    assert len(ctx.sip.requests) == 1


@pytest.mark.parametrize("target", ["0900123456", "00900123", "0123"])  # premium rate; outside line without upstream
def test_transfer_to_a_refused_target_is_invalid_payload(ctx, caller, c1, target):
    with pytest.raises(GatewayError) as exc:
        transfer(ctx, caller, "t1", TransferPayload(call_id="c1", target=target))
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert "dial plan refuses" in exc.value.reason
    assert ctx.sip.requests == []
    assert load(ctx, c1.key).refer is None


def test_transfer_of_an_ending_call_is_invalid_state(ctx, caller, c1):
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    with pytest.raises(GatewayError) as exc:
        transfer(ctx, caller, "t1", TransferPayload(call_id="c1", target="5003"))
    assert exc.value.code == errors.INVALID_STATE


# ======================================================================
# blind REFER
# ======================================================================


def test_blind_refer_request(ctx, caller, c1, clock):
    clock.advance(3)
    refer = do_transfer(ctx, caller, c1)
    assert refer.ruri == CALLEE_TARGET
    assert refer.nexthop == "sip:p2.example.net;lr;ftag=x"
    assert refer.body == ""
    h = parse_headers(refer.headers)
    assert h["From"] == f"<sip:5001@127.0.0.1:5060>;tag={c1.local_tag}"
    assert h["To"] == "<sip:5002@127.0.0.1:5060>;tag=callee-tag"
    assert h["Call-ID"] == c1.sip_call_id
    assert h["CSeq"] == "2 REFER"
    assert h["Max-Forwards"] == "70"
    assert h["Route"] == "<sip:p2.example.net;lr;ftag=x>, <sip:p1.example.net;lr>"
    assert h["Refer-To"] == "<sip:5003@127.0.0.1:5060>"  # routed like a call to 5003
    assert h["Referred-By"] == "<sip:5001@127.0.0.1:5060>"
    assert h["Contact"] == CONTACT_5001
    assert "Content-Type" not in h
    assert sent(ctx) == []  # the reply waits for the REFER's response
    stored = load(ctx, c1.key)
    assert stored.refer == {"request_id": "t1", "cseq": 2, "sent_at": clock.now, "accepted": False}
    assert stored.local_cseq == 2 and stored.state == CONFIRMED


def test_blind_refer_upstream_uses_the_dial_plan(make_ctx, conn):
    ctx = make_ctx(embedded=False)
    register_upstream(ctx, conn, "5001")
    call = confirmed(ctx, conn, "c1")
    refer = do_transfer(ctx, conn, call, target="05003")
    h = parse_headers(refer.headers)
    assert h["Refer-To"] == "<sip:5003@127.0.0.1:5070>"  # outside-line prefix stripped, to the PBX
    assert h["Referred-By"] == "<sip:5001@127.0.0.1>"


def test_refer_cseq_follows_other_in_dialog_requests(ctx, caller, c1):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="1"))
    assert cseq_of(ctx.sip.last) == (2, "INFO")
    refer = do_transfer(ctx, caller, c1)
    assert cseq_of(refer) == (3, "REFER")
    assert load(ctx, c1.key).refer["cseq"] == 3
    # a refused REFER, then a second transfer: the next CSeq again
    on_reply(ctx, sip_reply(refer, 403, "Forbidden"))
    assert cseq_of(do_transfer(ctx, caller, c1, "t2", target="5004")) == (4, "REFER")


def test_blind_refer_on_inbound_leg(ctx, caller):
    call = inbound_call(ctx, caller)
    refer = do_transfer(ctx, caller, call)
    assert refer.ruri == "sip:5002@10.0.0.2:5062"
    assert refer.nexthop == "sip:p1.example.net;lr"
    h = parse_headers(refer.headers)
    assert h["From"] == "<sip:5001@127.0.0.1:5060>;tag=gw-to-tag"
    assert h["To"] == "<sip:5002@10.0.0.2>;tag=caller-tag"
    assert h["CSeq"] == "1 REFER"  # our own CSeq space on the inbound leg
    assert h["Route"] == "<sip:p1.example.net;lr>, <sip:p2.example.net;lr>"
    assert h["Referred-By"] == "<sip:5001@127.0.0.1:5060>"
    # the REFER's reply comes back From our tag, To the caller's
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))
    assert sent(ctx) == [msg("transferAccepted", {"callId": call.call_id}, "t1")]


# ======================================================================
# attended REFER (Replaces)
# ======================================================================


def test_replaces_value():
    other = Call(key="k", call_id="c2", conn="ws|1.2.3.4|5", dn="5001", direction="outbound", state=CONFIRMED,
                 sip_call_id="abc@10.0.0.1", local_uri="sip:5001@x", remote_uri="sip:5003@x",
                 local_tag="ours", remote_tag="theirs")
    # As the far end of that dialog sees it: its To tag is our remote tag, its From tag ours.
    assert replaces_value(other) == "abc@10.0.0.1;to-tag=theirs;from-tag=ours"


def test_attended_refer_to_names_the_other_dialog(ctx, caller):
    c1 = confirmed(ctx, caller, "c1", to_tag="tag-b")
    c2 = confirmed(ctx, caller, "c2", to="5003", to_tag="tag-c", contact="<sip:5003@10.0.0.3:5064>")
    refer = do_transfer(ctx, caller, c1, replaces_call_id="c2")
    h = parse_headers(refer.headers)
    cid = c2.sip_call_id.replace("@", "%40")
    assert h["Refer-To"] == (f"<sip:5003@10.0.0.3:5064?Replaces={cid}%3Bto-tag%3Dtag-c%3Bfrom-tag%3D{c2.local_tag}>")
    m = re.fullmatch(r"<([^?>]+)\?Replaces=([^>]+)>", h["Refer-To"])
    assert m and m.group(1) == c2.remote_target
    assert unquote(m.group(2)) == replaces_value(c2) == f"{c2.sip_call_id};to-tag=tag-c;from-tag={c2.local_tag}"
    assert not re.search(r"[;=@]", m.group(2))  # escaped inside the URI header
    # The REFER goes on c1's dialog, not c2's
    assert h["Call-ID"] == c1.sip_call_id and h["To"].endswith(";tag=tag-b")
    assert h["Referred-By"] == "<sip:5001@127.0.0.1:5060>"
    assert load(ctx, c1.key).refer["request_id"] == "t1"
    assert load(ctx, c2.key).refer is None


def test_attended_refer_with_an_inbound_other_call(ctx, caller):
    c_in = inbound_call(ctx, caller)
    c1 = confirmed(ctx, caller, "c1")
    refer = do_transfer(ctx, caller, c1, replaces_call_id=c_in.call_id)
    h = parse_headers(refer.headers)
    assert h["Refer-To"] == "<sip:5002@10.0.0.2:5062?Replaces=inbound-1%4010.0.0.2%3Bto-tag%3Dcaller-tag" \
                            "%3Bfrom-tag%3Dgw-to-tag>"


def test_attended_transfer_refusals(ctx, caller, conn2, c1):
    register(ctx, conn2, "5002")
    outbound_call(ctx, conn2, "x1")  # another connection's call
    place(ctx, caller, call_id="c3")  # not answered yet
    ctx.sip.clear()
    for other, code in (("c1", errors.NO_SUCH_CALL), ("nope", errors.NO_SUCH_CALL), ("x1", errors.NO_SUCH_CALL),
                        ("c3", errors.INVALID_STATE)):
        with pytest.raises(GatewayError) as exc:
            transfer(ctx, caller, "t1", TransferPayload(call_id="c1", replaces_call_id=other))
        assert exc.value.code == code, other
    assert ctx.sip.requests == []
    assert load(ctx, c1.key).refer is None


# ======================================================================
# the REFER's reply, timeout
# ======================================================================


@pytest.mark.parametrize("status", [200, 202])
def test_refer_2xx_is_transfer_accepted(ctx, caller, c1, status):
    refer = do_transfer(ctx, caller, c1)
    on_reply(ctx, sip_reply(refer, 100, "Trying"))
    assert sent(ctx) == []
    on_reply(ctx, sip_reply(refer, status, "Accepted"))
    assert sent(ctx) == [msg("transferAccepted", {"callId": "c1"}, "t1")]
    stored = load(ctx, c1.key)
    assert stored.refer["accepted"] is True and stored.state == CONFIRMED
    # a retransmitted 2xx sends nothing more
    on_reply(ctx, sip_reply(refer, status, "Accepted"))
    assert len(sent(ctx)) == 1


def test_refer_reply_with_another_cseq_is_ignored(ctx, caller, c1):
    refer = do_transfer(ctx, caller, c1)
    stray = sip_reply(refer, 202, "Accepted")
    on_reply(ctx, stray.__class__(**{**stray.__dict__, "cseq": stray.cseq + 1}))
    on_reply(ctx, stray.__class__(**{**stray.__dict__, "cseq": stray.cseq - 1}))
    assert sent(ctx) == []
    assert load(ctx, c1.key).refer["accepted"] is False


@pytest.mark.parametrize("status, reason", [(403, "Forbidden"), (405, "Method Not Allowed"), (501, "Not Implemented"),
                                            (603, "Decline")])
def test_refer_refused_is_peer_rejected_and_call_stays(ctx, caller, c1, status, reason):
    refer = do_transfer(ctx, caller, c1)
    on_reply(ctx, sip_reply(refer, status, reason))
    assert sent(ctx) == [err(errors.PEER_REJECTED, f"REFER answered {status} {reason}", "t1", "transfer")]
    stored = load(ctx, c1.key)
    assert stored.refer is None and stored.state == CONFIRMED
    assert [r.method for r in ctx.sip.requests] == ["REFER"]  # no BYE
    do_transfer(ctx, caller, c1, "t2")  # a new transfer is allowed


def test_unanswered_refer_times_out_via_tick(ctx, caller, c1, clock):
    do_transfer(ctx, caller, c1)
    clock.advance(ctx.config.sip_timeout)
    tick(ctx)
    assert sent(ctx) == []
    clock.advance(1)
    tick(ctx)
    assert sent(ctx) == [err(errors.PEER_REJECTED, "the far end did not answer the REFER", "t1", "transfer")]
    stored = load(ctx, c1.key)
    assert stored.refer is None and stored.state == CONFIRMED
    # once only, and a late 202 is ignored
    tick(ctx)
    on_reply(ctx, sip_reply(ctx.sip.requests[0], 202, "Accepted"))
    assert len(sent(ctx)) == 1


def test_accepted_refer_does_not_time_out(ctx, caller, c1, clock):
    refer = do_transfer(ctx, caller, c1)
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))
    clock.advance(ctx.config.sip_timeout * 10)
    tick(ctx)
    assert [m["type"] for m in sent(ctx)] == ["transferAccepted"]
    assert load(ctx, c1.key).refer["accepted"] is True


@pytest.mark.parametrize("end", ["hangup", "remote_bye"])
def test_pending_refer_gets_a_reply_when_the_call_ends(ctx, caller, c1, end):
    do_transfer(ctx, caller, c1)
    if end == "hangup":
        hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    else:
        assert on_remote_bye(ctx, c1.sip_call_id, "callee-tag", c1.local_tag) == 200
    assert sent(ctx)[0] == err(errors.INVALID_STATE, "the call ended", "t1", "transfer")
    assert [m.get("id") for m in sent(ctx)].count("t1") == 1


# ======================================================================
# NOTIFY for our REFER
# ======================================================================


def test_notify_for_unknown_dialog_is_481(ctx, caller, c1):
    do_transfer(ctx, caller, c1)
    assert on_remote_notify(ctx, "nope@x", "callee-tag", c1.local_tag, "refer", "SIP/2.0 100 Trying") == 481
    assert on_remote_notify(ctx, c1.sip_call_id, "callee-tag", "not-ours", "refer", "SIP/2.0 100 Trying") == 481
    assert sent(ctx) == []


@pytest.mark.parametrize("event", ["presence", "", "dialog", "refer-x"])
def test_notify_of_another_event_is_489(ctx, caller, c1, event):
    do_transfer(ctx, caller, c1)
    assert notify(ctx, c1, "SIP/2.0 200 OK", event) == 489
    assert sent(ctx) == [] and load(ctx, c1.key).refer is not None


def test_notify_without_a_transfer_in_progress_is_489(ctx, caller, c1):
    assert notify(ctx, c1, "SIP/2.0 200 OK") == 489
    assert sent(ctx) == [] and ctx.sip.requests == []
    assert load(ctx, c1.key).state == CONFIRMED


@pytest.mark.parametrize("body", ["", "hello", "SIP/2.0 OK", "SIP/1.0 200 OK", "HTTP/1.1 200 OK", "SIP/2.0 20 OK",
                                  "INVITE sip:x SIP/2.0", "SIP/2.0 099 Odd", "SIP/2.0 700 Odd", "SIP/2.0 000 x"])
def test_notify_with_a_bad_sipfrag_is_400(ctx, caller, c1, body):
    do_transfer(ctx, caller, c1)
    assert notify(ctx, c1, body) == 400
    assert sent(ctx) == [] and load(ctx, c1.key).refer is not None


@pytest.mark.parametrize("event", ["refer", "Refer", "refer;id=2", " REFER ; id=93809824"])
def test_notify_100_is_transfer_progress(ctx, caller, c1, event):
    refer = do_transfer(ctx, caller, c1)
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))
    ctx.outbox.clear()
    assert notify(ctx, c1, "SIP/2.0 100 Trying\r\n", event) == 200
    assert sent(ctx) == [msg("transferProgress", {"callId": "c1", "status": 100, "reason": "Trying"})]
    stored = load(ctx, c1.key)
    assert stored.refer is not None and stored.state == CONFIRMED
    assert [r.method for r in ctx.sip.requests] == ["REFER"]


def test_notify_180_then_final_200_ends_the_call_transferred(ctx, caller, c1):
    refer = do_transfer(ctx, caller, c1)
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))
    ctx.outbox.clear()
    assert notify(ctx, c1, "SIP/2.0 180 Ringing\r\nContent-Length: 0\r\n") == 200
    assert notify(ctx, c1, "SIP/2.0 200 OK\r\n") == 200
    assert sent(ctx) == [
        msg("transferProgress", {"callId": "c1", "status": 180, "reason": "Ringing"}),
        msg("transferProgress", {"callId": "c1", "status": 200, "reason": "OK"}),
        msg("callEnded", {"callId": "c1", "by": "local", "reason": "transferred"}),
    ]
    assert [r.method for r in ctx.sip.requests] == ["REFER", "BYE"]
    bye = ctx.sip.last
    assert cseq_of(bye) == (3, "BYE")
    assert bye.ruri == CALLEE_TARGET
    stored = load(ctx, c1.key)
    assert stored.state == ENDING and stored.refer is None
    # the BYE's 200 forgets the call
    on_reply(ctx, sip_reply(bye, 200, "OK"))
    assert Call.load(ctx, c1.key) is None


@pytest.mark.parametrize("status, reason", [(486, "Busy Here"), (603, "Declined"), (404, "Not Found")])
def test_final_failure_notify_keeps_the_call(ctx, caller, c1, status, reason):
    refer = do_transfer(ctx, caller, c1)
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))
    ctx.outbox.clear()
    assert notify(ctx, c1, f"SIP/2.0 {status} {reason}") == 200
    assert sent(ctx) == [msg("transferProgress", {"callId": "c1", "status": status, "reason": reason})]
    stored = load(ctx, c1.key)
    assert stored.refer is None and stored.state == CONFIRMED
    assert [r.method for r in ctx.sip.requests] == ["REFER"]
    # a further NOTIFY now has no subscription; a new transfer is allowed
    assert notify(ctx, c1, "SIP/2.0 200 OK") == 489
    do_transfer(ctx, caller, c1, "t2", target="5004")


def test_notify_on_inbound_leg(ctx, caller):
    call = inbound_call(ctx, caller)
    refer = do_transfer(ctx, caller, call)
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))
    ctx.outbox.clear()
    assert on_remote_notify(ctx, "inbound-1@10.0.0.2", "caller-tag", "gw-to-tag", "refer", "SIP/2.0 200 OK") == 200
    assert sent(ctx)[-1] == msg("callEnded", {"callId": call.call_id, "by": "local", "reason": "transferred"})
    assert cseq_of(ctx.sip.last) == (2, "BYE")


@pytest.mark.parametrize("final, status, reason", [("SIP/2.0 200 OK", 200, "OK"),
                                                  ("SIP/2.0 486 Busy Here", 486, "Busy Here")])
def test_final_notify_before_the_refer_2xx_still_answers_the_transfer(ctx, caller, c1, final, status, reason):
    refer = do_transfer(ctx, caller, c1)
    assert notify(ctx, c1, final) == 200  # RFC 3515: a NOTIFY may arrive before the REFER's 2xx
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))
    assert [m.get("id") for m in sent(ctx)].count("t1") == 1, sent(ctx)
    assert sent(ctx)[:2] == [msg("transferAccepted", {"callId": "c1"}, "t1"),
                             msg("transferProgress", {"callId": "c1", "status": status, "reason": reason})]


def test_progress_notify_before_the_refer_2xx_accepts_once(ctx, caller, c1, clock):
    refer = do_transfer(ctx, caller, c1)
    assert notify(ctx, c1, "SIP/2.0 100 Trying") == 200
    on_reply(ctx, sip_reply(refer, 202, "Accepted"))  # the overtaken 2xx
    clock.advance(ctx.config.sip_timeout + 1)
    tick(ctx)
    # one reply to the transfer request, no REFER timeout afterwards
    assert sent(ctx) == [msg("transferAccepted", {"callId": "c1"}, "t1"),
                         msg("transferProgress", {"callId": "c1", "status": 100, "reason": "Trying"})]
    assert load(ctx, c1.key).refer["accepted"] is True


# ======================================================================
# REFER from the far end
# ======================================================================


def test_far_end_refer_for_unknown_dialog_is_481(ctx, caller, c1):
    assert on_remote_refer(ctx, "nope@x", "callee-tag", c1.local_tag, "<sip:5003@10.0.0.2>") == 481
    assert on_remote_refer(ctx, c1.sip_call_id, "callee-tag", "not-ours", "<sip:5003@10.0.0.2>") == 481
    assert sent(ctx) == []


@pytest.mark.parametrize("refer_to, target", [
    ("<sip:5003@10.0.0.2>", "5003"),
    ("<sip:5003@10.0.0.2:5060;transport=udp>", "5003"),
    ("sip:+4930123@pbx.example", "+4930123"),
    ('"Carol" <sip:carol.x@pbx.example>', "carol.x"),
    ("<sips:5003@10.0.0.2>", "5003"),
    ("<sip:5003@10.0.0.2?Replaces=abc%3Bto-tag%3Dx%3Bfrom-tag%3Dy>", "5003"),
])
def test_far_end_refer_is_202_and_transfer_requested(ctx, caller, c1, refer_to, target):
    assert far_refer(ctx, c1, refer_to) == 202
    assert sent(ctx) == [msg("transferRequested", {"callId": "c1", "target": target})]
    assert load(ctx, c1.key).refer_in == {"target": target, "deadline": ctx.clock() + transfer_mod.TRANSFER_REQUEST_TIMEOUT,
                                          "placed": False}
    assert ctx.sip.requests == []  # the NOTIFY goes out after the 202 (notify_refer_accepted)


@pytest.mark.parametrize("refer_to", ["", "<sip:10.0.0.2>", "<sip:50!03@10.0.0.2>", "<tel:+4930123>",
                                      "<sip:" + "1" * 33 + "@x>", "garbage"])
def test_far_end_refer_without_usable_user_is_400(ctx, caller, c1, refer_to):
    assert far_refer(ctx, c1, refer_to) == 400
    assert sent(ctx) == [] and load(ctx, c1.key).refer_in is None


def test_far_end_refer_while_one_is_pending_is_491(ctx, caller, c1):
    assert far_refer(ctx, c1, "<sip:5003@x>") == 202
    assert far_refer(ctx, c1, "<sip:5004@x>") == 491
    assert load(ctx, c1.key).refer_in["target"] == "5003"
    assert len(sent(ctx)) == 1


def test_far_end_refer_on_a_call_not_established_is_491(ctx, caller, c1):
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    assert far_refer(ctx, c1, "<sip:5003@x>") == 491
    assert sent(ctx) == []
    # an inbound call still ringing (matched by the caller's From tag)
    call = ring(ctx, make_invite(sip_call_id="in-2@x"))
    ctx.outbox.clear()
    assert on_remote_refer(ctx, "in-2@x", "caller-tag", "", "<sip:5003@x>") == 491
    assert sent(ctx) == [] and load(ctx, call.key).refer_in is None


def test_notify_refer_accepted_sends_100_trying(ctx, caller, c1):
    assert far_refer(ctx, c1, "<sip:5003@x>") == 202
    notify_refer_accepted(ctx, c1.sip_call_id, "callee-tag", c1.local_tag)
    assert len(ctx.sip.requests) == 1
    n = ctx.sip.last
    assert n.method == "NOTIFY" and n.ruri == CALLEE_TARGET and n.nexthop == "sip:p2.example.net;lr;ftag=x"
    h = parse_headers(n.headers)
    assert h["Event"] == "refer"
    assert h["Subscription-State"] == "active;expires=60"
    assert h["Content-Type"] == SIPFRAG
    assert h["Contact"] == CONTACT_5001
    assert h["CSeq"] == "2 NOTIFY"
    assert h["From"] == f"<sip:5001@127.0.0.1:5060>;tag={c1.local_tag}"
    assert h["To"] == "<sip:5002@127.0.0.1:5060>;tag=callee-tag"
    assert h["Route"] == "<sip:p2.example.net;lr;ftag=x>, <sip:p1.example.net;lr>"
    assert n.body == "SIP/2.0 100 Trying\r\n"
    assert load(ctx, c1.key).refer_in["target"] == "5003"  # still waiting for the browser


def test_notify_refer_accepted_without_request_sends_nothing(ctx, caller, c1):
    notify_refer_accepted(ctx, c1.sip_call_id, "callee-tag", c1.local_tag)
    notify_refer_accepted(ctx, "nope@x", "callee-tag", c1.local_tag)
    assert ctx.sip.requests == []


def refer_from_far_end(ctx, c1: Call) -> None:
    assert far_refer(ctx, c1, "<sip:5003@10.0.0.2>") == 202
    notify_refer_accepted(ctx, c1.sip_call_id, "callee-tag", c1.local_tag)
    ctx.outbox.clear()
    ctx.sip.clear()


def place_referred(ctx, conn, call_id: str = "c2", referred_by: str = "c1", to: str = "5003"):
    place_call(ctx, conn, "r2", CallPayload(to=to, call_id=call_id, sdp=CHROME_OFFER, referred_by=referred_by))


def test_referred_call_reports_progress_and_success_as_notifies(ctx, caller, c1):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller)
    invite = ctx.sip.last
    assert invite.method == "INVITE" and invite.ruri == "sip:5003@127.0.0.1:5060"
    c2 = load(ctx, call_key(caller, "c2"))
    assert c2.referred_by == c1.key
    on_reply(ctx, reply(invite, 100, "Trying"))
    assert notifies(ctx) == []  # 100 is not reported
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t3"))
    on_reply(ctx, reply(invite, 200, "OK", to_tag="t3", headers={"Contact": "<sip:5003@10.0.0.3>"}, body=PCMU_ANSWER))
    ns = notifies(ctx)
    assert [n.body for n in ns] == ["SIP/2.0 180 Ringing\r\n", "SIP/2.0 200 OK\r\n"]
    states = [parse_headers(n.headers)["Subscription-State"] for n in ns]
    assert states == ["active;expires=60", "terminated;reason=noresource"]
    for n in ns:  # on the original dialog, its CSeq space
        h = parse_headers(n.headers)
        assert h["Call-ID"] == c1.sip_call_id and h["Event"] == "refer" and h["Content-Type"] == SIPFRAG
    assert [cseq_of(n) for n in ns] == [(3, "NOTIFY"), (4, "NOTIFY")]
    assert load(ctx, c1.key).refer_in is None
    assert [m["type"] for m in sent(ctx)] == ["ringing", "callAccepted"]
    assert sent(ctx)[-1]["id"] == "r2"
    # the far end may now REFER again
    assert far_refer(ctx, c1, "<sip:5004@x>") == 202


@pytest.mark.parametrize("status, reason", [(486, "Busy Here"), (404, "Not Found"), (503, "Service Unavailable")])
def test_referred_call_failure_is_a_final_notify(ctx, caller, c1, status, reason):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller)
    invite = ctx.sip.last
    on_reply(ctx, reply(invite, status, reason, to_tag="t3"))
    n, = notifies(ctx)
    assert n.body == f"SIP/2.0 {status} {reason}\r\n"
    assert parse_headers(n.headers)["Subscription-State"] == "terminated;reason=noresource"
    assert load(ctx, c1.key).refer_in is None and load(ctx, c1.key).state == CONFIRMED
    assert [m["type"] for m in sent(ctx)] == ["callFailed"]


def test_referred_call_refused_by_the_dial_plan_is_a_final_notify(ctx, caller, c1):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller, to="0900123")
    n, = [r for r in ctx.sip.requests]
    assert n.method == "NOTIFY" and n.body == "SIP/2.0 403 Forbidden by dial plan\r\n"
    assert sent(ctx) == [msg("callFailed", {"callId": "c2", "code": 403, "reason": "rejected"}, "r2")]


def test_referred_call_after_the_original_ended_sends_no_notify(ctx, caller, c1):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller)
    invite = ctx.sip.last
    assert on_remote_bye(ctx, c1.sip_call_id, "callee-tag", c1.local_tag) == 200
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t3"))
    assert notifies(ctx) == []


def test_check_referred_by_errors(ctx, caller, conn2, c1):
    register(ctx, conn2, "5002")
    with pytest.raises(GatewayError) as exc:
        check_referred_by(ctx, caller, "nope")
    assert exc.value.code == errors.NO_SUCH_CALL
    with pytest.raises(GatewayError) as exc:
        check_referred_by(ctx, caller, "c1")  # no REFER from the far end
    assert exc.value.code == errors.INVALID_STATE
    assert far_refer(ctx, c1, "<sip:5003@x>") == 202
    assert check_referred_by(ctx, caller, "c1") == c1.key
    with pytest.raises(GatewayError) as exc:
        check_referred_by(ctx, conn2, "c1")  # another connection's call
    assert exc.value.code == errors.NO_SUCH_CALL


@pytest.mark.parametrize("referred_by, code", [("nope", errors.NO_SUCH_CALL), ("c1", errors.INVALID_STATE)])
def test_call_with_bad_referred_by_is_refused_without_invite(ctx, caller, c1, referred_by, code):
    with pytest.raises(GatewayError) as exc:
        place_referred(ctx, caller, referred_by=referred_by)
    assert exc.value.code == code
    assert ctx.sip.requests == [] and sent(ctx) == []
    assert Call.load(ctx, call_key(caller, "c2")) is None


def test_hangup_of_referred_call_before_answer_ends_the_subscription_once(ctx, caller, c1):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller)
    invite = ctx.sip.last
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t3"))
    hangup(ctx, caller, "h2", CallIdPayload(call_id="c2"))
    on_reply(ctx, reply(invite, 487, "Request Terminated", to_tag="t3"))
    ns = notifies(ctx)
    assert [n.body for n in ns] == ["SIP/2.0 180 Ringing\r\n", "SIP/2.0 487 Request Terminated\r\n"]
    assert parse_headers(ns[-1].headers)["Subscription-State"] == "terminated;reason=noresource"
    assert load(ctx, c1.key).refer_in is None


def test_referred_call_timing_out_ends_the_subscription(ctx, caller, c1, clock):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller)
    clock.advance(ctx.config.sip_timeout)
    tick(ctx)  # no provisional within GW_SIP_TIMEOUT: unreachable, CANCEL
    assert [n.body for n in notifies(ctx)] == ["SIP/2.0 487 Request Terminated\r\n"]
    assert sent(ctx)[0] == msg("callFailed", {"callId": "c2", "code": 408, "reason": "unreachable"}, "r2")


def test_transfer_request_ignored_by_the_browser_is_declined(ctx, caller, c1, clock):
    refer_from_far_end(ctx, c1)
    clock.advance(transfer_mod.TRANSFER_REQUEST_TIMEOUT - 1)
    tick(ctx)
    assert ctx.sip.requests == []
    clock.advance(1)
    tick(ctx)
    n, = notifies(ctx)
    assert n.body == "SIP/2.0 603 Declined\r\n"
    assert parse_headers(n.headers)["Subscription-State"] == "terminated;reason=noresource"
    assert cseq_of(n) == (3, "NOTIFY")  # after the 100 Trying NOTIFY (CSeq 2)
    stored = load(ctx, c1.key)
    assert stored.refer_in is None and stored.state == CONFIRMED
    assert sent(ctx) == []  # the browser is not told
    tick(ctx)
    assert len(notifies(ctx)) == 1
    # too late now for a call with referredBy; a new REFER is welcome
    with pytest.raises(GatewayError) as exc:
        place_referred(ctx, caller)
    assert exc.value.code == errors.INVALID_STATE
    assert far_refer(ctx, c1, "<sip:5004@x>") == 202


def test_transfer_request_acted_on_is_not_declined(make_ctx, conn, clock):
    ctx = make_ctx(embedded=True, ring_timeout=transfer_mod.TRANSFER_REQUEST_TIMEOUT * 3)
    register(ctx, conn, "5001")
    c1 = outbound_call(ctx, conn, "c1")
    refer_from_far_end(ctx, c1)
    place_referred(ctx, conn)
    assert load(ctx, c1.key).refer_in["placed"] is True
    invite = ctx.sip.last
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t3"))
    clock.advance(transfer_mod.TRANSFER_REQUEST_TIMEOUT + 1)
    tick(ctx)
    assert [n.body for n in notifies(ctx)] == ["SIP/2.0 180 Ringing\r\n"]
    assert load(ctx, c1.key).refer_in["placed"] is True
    assert load(ctx, call_key(conn, "c2")).state == "ringing"


def test_422_retry_of_a_referred_call_is_not_reported_as_failure(ctx, caller, c1):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller)
    first = ctx.sip.last
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="t3", headers={"Min-SE": "3600"}))
    retry = [r for r in ctx.sip.requests if r.method == "INVITE"][-1]
    assert cseq_of(retry) == (2, "INVITE")
    on_reply(ctx, reply(retry, 200, "OK", to_tag="t3", headers={"Contact": "<sip:5003@10.0.0.3>"}, body=PCMU_ANSWER))
    assert [n.body for n in notifies(ctx)] == ["SIP/2.0 200 OK\r\n"]
    assert load(ctx, c1.key).refer_in is None


def test_second_422_of_a_referred_call_is_reported(ctx, caller, c1):
    refer_from_far_end(ctx, c1)
    place_referred(ctx, caller)
    first = ctx.sip.last
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="t3", headers={"Min-SE": "3600"}))
    retry = [r for r in ctx.sip.requests if r.method == "INVITE"][-1]
    on_reply(ctx, reply(retry, 422, "Session Interval Too Small", to_tag="t3", headers={"Min-SE": "7200"}))
    assert [n.body for n in notifies(ctx)] == ["SIP/2.0 422 Session Interval Too Small\r\n"]
    assert load(ctx, c1.key).refer_in is None
