"""wsgw.conference: three-way calls through a bridge (GW_CONFERENCE_URI) - the agent's leg into the
bridge, then REFERs moving both far ends there; bridge failures."""

from __future__ import annotations

import json
import re

import pytest
from unittest.mock import ANY

from fakes import parse_headers
from harness.sdp import CHROME_OFFER, OPUS_ONLY_OFFER, PCMU_ANSWER
from test_calls import FILTERED_CHROME, place, register, reply
from test_midcall import CONTACT_5001, cseq_of, inbound_call, outbound_call, sip_reply
from wsgw import errors, protocol
from wsgw.calls import CALLING, CANCELLING, CONFIRMED, ENDING, Call, CallIdPayload, call_key, hangup, on_reply, tick
from wsgw.conference import ConferencePayload, bridge_uri, conference, parse_conference
from wsgw.errors import GatewayError
from wsgw.protocol import ProtocolError
from wsgw.store import CALLS
from wsgw.transfer import TransferPayload, on_remote_notify, transfer

BRIDGE = "sip:{room}@10.0.0.50:5080"
BRIDGE_CONTACT = "<sip:bridge@10.0.0.50:5080>"


# ---- helpers ----


def msg(msg_type: str, payload: dict, rid: str | None = None) -> dict:
    return protocol.message(msg_type, payload, rid)


def err(code: str, reason: str, rid: str | None, request_type: str) -> dict:
    return protocol.error_message(code, reason, rid, request_type)


def sent(ctx) -> list[dict]:
    return ctx.outbox.messages()


def load(ctx, key: str) -> Call:
    call = Call.load(ctx, key)
    assert call is not None
    return call


def start(ctx, conn, rid: str | None = "k1", call_id: str = "k", members=("c1", "c2"), sdp: str = CHROME_OFFER):
    """Send `conference`; returns (the bridge leg, its INVITE)."""
    before = len(ctx.sip.requests)
    conference(ctx, conn, rid, ConferencePayload(call_ids=tuple(members), call_id=call_id, sdp=sdp))
    assert len(ctx.sip.requests) == before + 1
    invite = ctx.sip.last
    assert invite.method == "INVITE"
    return load(ctx, call_key(conn, call_id)), invite


def bridge_ok(invite):
    return reply(invite, 200, "OK", to_tag="bridge-tag", headers={"Contact": BRIDGE_CONTACT}, body=PCMU_ANSWER)


def refers(ctx) -> list:
    return [r for r in ctx.sip.requests if r.method == "REFER"]


@pytest.fixture
def ctx(make_ctx):
    return make_ctx(embedded=True, conference_uri=BRIDGE)


@pytest.fixture
def agent(ctx, conn):
    register(ctx, conn, "5001", "Alice")
    return conn


@pytest.fixture
def members(ctx, agent):
    """Two answered calls c1 (outbound) and c2 (inbound) of the agent; outbox / requests cleared."""
    c1 = outbound_call(ctx, agent, "c1")
    c2 = inbound_call(ctx, agent)
    # the inbound call's id is random: rename it to c2 for readable payloads
    ctx.store.delete(CALLS, c2.key)
    c2.key, c2.call_id = call_key(agent, "c2"), "c2"
    c2.save(ctx)
    return c1, load(ctx, c2.key)


# ======================================================================
# payload
# ======================================================================


def test_parse_conference():
    p = parse_conference({"callIds": ["c1", "c2"], "callId": "k", "sdp": CHROME_OFFER})
    assert p == ConferencePayload(call_ids=("c1", "c2"), call_id="k", sdp=CHROME_OFFER)


@pytest.mark.parametrize("payload, words", [
    ({"callIds": ["c1"], "callId": "k", "sdp": CHROME_OFFER}, "exactly two"),
    ({"callIds": ["c1", "c2", "c3"], "callId": "k", "sdp": CHROME_OFFER}, "exactly two"),
    ({"callIds": "c1,c2", "callId": "k", "sdp": CHROME_OFFER}, "exactly two"),
    ({"callIds": {"a": "c1", "b": "c2"}, "callId": "k", "sdp": CHROME_OFFER}, "exactly two"),
    ({"callId": "k", "sdp": CHROME_OFFER}, "exactly two"),
    ({"callIds": ["c1", "c1"], "callId": "k", "sdp": CHROME_OFFER}, "different"),
    ({"callIds": ["c1", "c2"], "callId": "c1", "sdp": CHROME_OFFER}, "different"),
    ({"callIds": ["c1", "c2"], "callId": "c2", "sdp": CHROME_OFFER}, "different"),
    ({"callIds": ["c1", 2], "callId": "k", "sdp": CHROME_OFFER}, "callIds"),
    ({"callIds": ["c 1", "c2"], "callId": "k", "sdp": CHROME_OFFER}, "callIds"),
    ({"callIds": ["c1", "c2"], "callId": "k 1", "sdp": CHROME_OFFER}, "callId"),
    ({"callIds": ["c1", "c2"], "sdp": CHROME_OFFER}, "callId"),
    ({"callIds": ["c1", "c2"], "callId": "k"}, "sdp"),
    ({"callIds": ["c1", "c2"], "callId": "k", "sdp": "hello"}, "sdp"),
    ({"callIds": ["c1", "c2"], "callId": "k", "sdp": CHROME_OFFER, "room": "r"}, "unknown field(s): room"),
])
def test_parse_conference_invalid(payload, words):
    with pytest.raises(GatewayError) as exc:
        parse_conference(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert words in exc.value.reason


def test_parse_frame_knows_conference():
    frame = protocol.parse_frame(json.dumps({"type": "conference", "id": "k1",
                                             "payload": {"callIds": ["a", "b"], "callId": "k", "sdp": CHROME_OFFER}}))
    assert (frame.type, frame.id, frame.payload.call_ids) == ("conference", "k1", ("a", "b"))
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_frame(json.dumps({"type": "conference", "id": "k2", "payload": {"callIds": ["a"]}}))
    assert (exc.value.code, exc.value.request_id, exc.value.msg_type) == (errors.INVALID_PAYLOAD, "k2", "conference")


def test_bridge_uri():
    assert bridge_uri(BRIDGE, "conf1") == "sip:conf1@10.0.0.50:5080"
    assert bridge_uri("sip:bridge@10.0.0.50", "conf1") == "sip:bridge@10.0.0.50"
    assert bridge_uri("sip:{room}@h;x={room}", "r") == "sip:r@h;x=r"


# ======================================================================
# refusals
# ======================================================================


def test_without_conference_uri_is_invalid_state(make_ctx, conn):
    ctx = make_ctx(embedded=True)
    register(ctx, conn, "5001")
    outbound_call(ctx, conn, "c1")
    outbound_call(ctx, conn, "c2")
    with pytest.raises(GatewayError) as exc:
        conference(ctx, conn, "k1", ConferencePayload(("c1", "c2"), "k", CHROME_OFFER))
    assert exc.value.code == errors.INVALID_STATE
    assert "GW_CONFERENCE_URI" in exc.value.reason
    assert ctx.sip.requests == [] and sent(ctx) == []


def test_unknown_member_is_no_such_call(ctx, agent, members, conn2):
    register(ctx, conn2, "5002")
    outbound_call(ctx, conn2, "x1")
    ctx.sip.clear()
    for ids in (("c1", "nope"), ("nope", "c2"), ("c1", "x1")):
        with pytest.raises(GatewayError) as exc:
            conference(ctx, agent, "k1", ConferencePayload(ids, "k", CHROME_OFFER))
        assert exc.value.code == errors.NO_SUCH_CALL, ids
    assert ctx.sip.requests == [] and sent(ctx) == []
    assert Call.load(ctx, call_key(agent, "k")) is None


def test_unanswered_member_is_invalid_state(ctx, agent, members):
    place(ctx, agent, call_id="c3")
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        conference(ctx, agent, "k1", ConferencePayload(("c1", "c3"), "k", CHROME_OFFER))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


def test_member_being_transferred_is_invalid_state(ctx, agent, members):
    transfer(ctx, agent, "t1", TransferPayload(call_id="c2", target="5003"))
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        conference(ctx, agent, "k1", ConferencePayload(("c1", "c2"), "k", CHROME_OFFER))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


def test_member_ending_is_invalid_state(ctx, agent, members):
    hangup(ctx, agent, "h1", CallIdPayload(call_id="c1"))
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        conference(ctx, agent, "k1", ConferencePayload(("c1", "c2"), "k", CHROME_OFFER))
    assert exc.value.code == errors.INVALID_STATE


def test_call_id_in_use_is_invalid_state(ctx, agent, members):
    place(ctx, agent, call_id="k")
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        conference(ctx, agent, "k1", ConferencePayload(("c1", "c2"), "k", CHROME_OFFER))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


# ======================================================================
# the bridge leg
# ======================================================================


def test_invite_to_the_bridge(ctx, agent, members, clock):
    leg, invite = start(ctx, agent)
    room = leg.conference["room"]
    assert re.fullmatch(r"conf[0-9a-f]{8}", room)
    uri = f"sip:{room}@10.0.0.50:5080"
    assert invite.ruri == uri
    assert invite.nexthop == "sip:10.0.0.50:5080"
    assert invite.body == FILTERED_CHROME.sdp
    h = parse_headers(invite.headers)
    assert h["To"] == f"<{uri}>"
    assert h["From"].startswith('"Alice" <sip:5001@127.0.0.1:5060>;tag=')
    assert h["CSeq"] == "1 INVITE"
    assert h["Contact"] == CONTACT_5001
    assert h["Supported"] == "timer"
    assert leg.conference == {"request_id": "k1", "members": ["c1", "c2"], "room": room, "uri": uri}
    assert (leg.direction, leg.state, leg.request_id, leg.peer) == ("outbound", CALLING, None, room)
    assert sent(ctx) == []  # nothing until the bridge answers
    assert refers(ctx) == []
    # a second conference gets another room
    leg2, _ = start(ctx, agent, "k2", "k2", ("c1", "c2"))
    assert leg2.conference["room"] != room


def test_bridge_uri_without_room_placeholder(make_ctx, conn):
    ctx = make_ctx(embedded=True, conference_uri="sip:bridge@10.0.0.50")
    register(ctx, conn, "5001")
    outbound_call(ctx, conn, "c1")
    outbound_call(ctx, conn, "c2")
    leg, invite = start(ctx, conn)
    assert invite.ruri == "sip:bridge@10.0.0.50"
    assert invite.nexthop == "sip:10.0.0.50"
    assert leg.peer == "bridge"


def test_bridge_answers_then_both_members_are_referred(ctx, agent, members):
    c1, c2 = members
    leg, invite = start(ctx, agent)
    uri = leg.conference["uri"]
    on_reply(ctx, bridge_ok(invite))
    assert sent(ctx) == [
        msg("callAccepted", {"callId": "k", "sdp": PCMU_ANSWER, "codecs": ["PCMU", "PCMA", "telephone-event"],
                             "timing": ANY}),
        msg("conferenceStarted", {"callId": "k", "room": leg.conference["room"], "callIds": ["c1", "c2"]}, "k1"),
    ]
    r1, r2 = refers(ctx)
    h1, h2 = parse_headers(r1.headers), parse_headers(r2.headers)
    assert (h1["Call-ID"], h2["Call-ID"]) == (c1.sip_call_id, c2.sip_call_id)
    assert h1["Refer-To"] == h2["Refer-To"] == f"<{uri}>"
    assert h1["Referred-By"] == "<sip:5001@127.0.0.1:5060>" and h2["Referred-By"] == "<sip:5001@127.0.0.1:5060>"
    assert h1["CSeq"] == "2 REFER" and h2["CSeq"] == "1 REFER"  # each in its own dialog's CSeq space
    assert r1.ruri == c1.remote_target and r2.ruri == c2.remote_target
    for c in (c1, c2):
        stored = load(ctx, c.key)
        assert stored.refer["request_id"] is None and stored.refer["accepted"] is False
    assert load(ctx, leg.key).state == CONFIRMED


def test_members_move_to_the_bridge_and_their_calls_end(ctx, agent, members):
    c1, c2 = members
    leg, invite = start(ctx, agent)
    on_reply(ctx, bridge_ok(invite))
    r1, r2 = refers(ctx)
    ctx.outbox.clear()
    on_reply(ctx, sip_reply(r1, 202, "Accepted"))
    assert sent(ctx) == [msg("transferAccepted", {"callId": "c1"})]
    assert on_remote_notify(ctx, c1.sip_call_id, "callee-tag", c1.local_tag, "refer", "SIP/2.0 200 OK") == 200
    assert sent(ctx)[-1] == msg("callEnded", {"callId": "c1", "by": "local", "reason": "transferred"})
    assert load(ctx, c1.key).state == ENDING
    # the second party does not make it: it stays on its own call with the agent
    on_reply(ctx, sip_reply(r2, 202, "Accepted"))
    assert on_remote_notify(ctx, c2.sip_call_id, "caller-tag", "gw-to-tag", "refer", "SIP/2.0 486 Busy Here") == 200
    stored = load(ctx, c2.key)
    assert stored.state == CONFIRMED and stored.refer is None
    assert load(ctx, leg.key).state == CONFIRMED


def test_member_gone_before_the_bridge_answers_is_skipped(ctx, agent, members):
    c1, c2 = members
    leg, invite = start(ctx, agent)
    hangup(ctx, agent, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    ctx.sip.clear()
    on_reply(ctx, bridge_ok(invite))
    r, = refers(ctx)
    assert parse_headers(r.headers)["Call-ID"] == c2.sip_call_id
    assert [m["type"] for m in sent(ctx)] == ["callAccepted", "conferenceStarted"]


@pytest.mark.parametrize("status, reason, word", [(486, "Busy Here", "busy"), (404, "Not Found", "not_found"),
                                                  (503, "Service Unavailable", "server_error")])
def test_bridge_refuses(ctx, agent, members, status, reason, word):
    c1, c2 = members
    leg, invite = start(ctx, agent)
    on_reply(ctx, reply(invite, status, reason, to_tag="bridge-tag"))
    assert sent(ctx) == [
        msg("callFailed", {"callId": "k", "code": status, "reason": word}),
        err(errors.PEER_REJECTED, f"the conference bridge answered {status} {reason}", "k1", "conference"),
    ]
    assert refers(ctx) == []
    assert Call.load(ctx, leg.key) is None
    for c in (c1, c2):  # untouched
        stored = load(ctx, c.key)
        assert stored.state == CONFIRMED and stored.refer is None


def test_bridge_not_answering_times_out(ctx, agent, members, clock):
    leg, invite = start(ctx, agent)
    clock.advance(ctx.config.sip_timeout)
    tick(ctx)
    assert sent(ctx) == [
        msg("callFailed", {"callId": "k", "code": 408, "reason": "unreachable"}),
        err(errors.PEER_REJECTED, "the conference bridge did not answer (unreachable)", "k1", "conference"),
    ]
    assert load(ctx, leg.key).state == CANCELLING
    assert refers(ctx) == []


def test_bridge_ringing_too_long_times_out(ctx, agent, members, clock):
    leg, invite = start(ctx, agent)
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="bridge-tag"))
    ctx.outbox.clear()
    clock.advance(ctx.config.ring_timeout)
    tick(ctx)
    assert sent(ctx)[1] == err(errors.PEER_REJECTED, "the conference bridge did not answer (no_answer)", "k1",
                               "conference")


def test_bridge_invite_not_sent(ctx, agent, members):
    ctx.sip.result = False
    conference(ctx, agent, "k1", ConferencePayload(("c1", "c2"), "k", CHROME_OFFER))
    assert sent(ctx) == [
        msg("callFailed", {"callId": "k", "code": 503, "reason": "server_error"}),
        err(errors.PEER_REJECTED, "INVITE could not be sent", "k1", "conference"),
    ]
    assert Call.load(ctx, call_key(agent, "k")) is None


def test_offer_without_allowed_codec(ctx, agent, members):
    ctx.sip.clear()
    conference(ctx, agent, "k1", ConferencePayload(("c1", "c2"), "k", OPUS_ONLY_OFFER))
    assert [m["type"] for m in sent(ctx)] == ["callFailed", "error"]
    assert sent(ctx)[0]["payload"]["code"] == 488
    e = sent(ctx)[1]
    assert (e["id"], e["payload"]["code"], e["payload"]["requestType"]) == ("k1", errors.INVALID_PAYLOAD, "conference")
    assert ctx.sip.requests == []


def test_bridge_422_is_retried(ctx, agent, members):
    leg, invite = start(ctx, agent)
    on_reply(ctx, reply(invite, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "3600"}))
    retry = ctx.sip.last
    assert retry.method == "INVITE" and cseq_of(retry) == (2, "INVITE") and retry.ruri == invite.ruri
    assert sent(ctx) == []
    on_reply(ctx, bridge_ok(retry))
    assert [m["type"] for m in sent(ctx)] == ["callAccepted", "conferenceStarted"]
    assert len(refers(ctx)) == 2


def test_retransmitted_bridge_200_refers_once(ctx, agent, members):
    leg, invite = start(ctx, agent)
    on_reply(ctx, bridge_ok(invite))
    on_reply(ctx, bridge_ok(invite))
    assert len(refers(ctx)) == 2
    assert [m["type"] for m in sent(ctx)] == ["callAccepted", "conferenceStarted"]


def test_hangup_of_the_bridge_leg_still_answers_the_conference_request(ctx, agent, members):
    leg, invite = start(ctx, agent)
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="bridge-tag"))
    hangup(ctx, agent, "h1", CallIdPayload(call_id="k"))
    on_reply(ctx, reply(invite, 487, "Request Terminated", to_tag="bridge-tag"))
    assert [m.get("id") for m in sent(ctx)].count("k1") == 1, sent(ctx)
