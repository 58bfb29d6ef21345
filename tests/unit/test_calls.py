"""wsgw.calls: call payloads, outbound/inbound INVITE dialogs, leg index, timers, connection close."""

from __future__ import annotations

import re

import pytest
from unittest.mock import ANY

from fakes import START_TIME, parse_headers, register, reply_to
from harness.sdp import CHROME_OFFER, OPUS_ONLY_OFFER, PCMU_ANSWER
from wsgw import calls, errors, protocol, registrations
from wsgw.calls import (
    CALLING,
    CANCELLING,
    CONFIRMED,
    ENDING,
    MAX_SDP_CHARS,
    RINGING,
    Call,
    CallIdPayload,
    CallPayload,
    InboundInvite,
    answer,
    call_key,
    check_inbound,
    connection_closed,
    failure_reason,
    find_for_reply,
    find_for_request,
    hangup,
    leg_key,
    on_invite_reply,
    on_remote_bye,
    on_remote_cancel,
    on_reply,
    parse_answer,
    parse_call,
    parse_hangup,
    parse_reject,
    place_call,
    reject,
    ring_inbound,
    tick,
)
from wsgw.errors import GatewayError
from wsgw.protocol import ProtocolError, RegisterPayload
from wsgw.sdp_policy import apply_codec_policy
from wsgw.sip_port import OutgoingRequest, SipReply
from wsgw.store import CALLS, CALLS_BY_SIP_ID

CODECS = ("PCMU", "PCMA", "telephone-event")
FILTERED_CHROME = apply_codec_policy(CHROME_OFFER, CODECS)

# A plain SIP phone's offer (what an inbound INVITE carries).
PHONE_OFFER = "\r\n".join([
    "v=0", "o=phone 1 1 IN IP4 10.0.0.2", "s=-", "c=IN IP4 10.0.0.2", "t=0 0",
    "m=audio 40000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=sendrecv", "",
])
# A browser answer that still lists Opus: the gateway must strip it before the 200 OK.
OPUS_AND_PCMU_ANSWER = PCMU_ANSWER.replace("SAVPF 0 101", "SAVPF 111 0 101").replace(
    "a=rtpmap:0 PCMU/8000", "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000")

CALLEE_CONTACT = "<sip:5002@10.0.0.2:5062;transport=udp>;expires=60"
CALLEE_TARGET = "sip:5002@10.0.0.2:5062;transport=udp"
# As tm reports it: all Record-Route values joined by ",", in the order of the reply (callee side last).
RECORD_ROUTE = "<sip:p1.example.net;lr>,<sip:p2.example.net;lr;ftag=x>"


# ---- helpers ----


def register_upstream(ctx, conn, dn: str = "5001") -> None:
    """Upstream registration of `dn` on `conn`, completed by a 200 from the registrar."""
    registrations.register(ctx, conn, "reg", RegisterPayload(dn=dn, password="pw"))
    registrations.on_register_reply(
        ctx, reply_to(ctx.sip.last, 200, "OK", {"Contact": f"<sip:{dn}@127.0.0.1:5060>;expires=600"}))
    assert registrations.connection_of_dn(ctx, dn) == conn
    ctx.outbox.clear()
    ctx.sip.clear()


def tag_of(value: str) -> str:
    m = re.search(r";tag=([^;>\s]+)", value)
    assert m, f"no tag in {value!r}"
    return m.group(1)


def place(ctx, conn, to: str = "5002", call_id: str = "c1", sdp: str = CHROME_OFFER, rid: str | None = "r1"):
    """Place a call and return (the stored Call, the INVITE sent)."""
    before = len(ctx.sip.requests)
    place_call(ctx, conn, rid, CallPayload(to=to, call_id=call_id, sdp=sdp))
    assert len(ctx.sip.requests) == before + 1
    invite = ctx.sip.requests[-1]
    assert invite.method == "INVITE"
    return Call.load(ctx, call_key(conn, call_id)), invite


def reply(request: OutgoingRequest, status: int, reason: str = "", *, to_tag: str = "", headers: dict | None = None,
          body: str = "") -> SipReply:
    """The SipReply tm reports for a reply to `request` (From tag ours, To tag the remote's)."""
    h = parse_headers(request.headers)
    cseq, method = h["CSeq"].split()
    return SipReply(status=status, reason=reason, call_id=h["Call-ID"], cseq=int(cseq), method=method,
                    from_tag=tag_of(h["From"]), to_tag=to_tag,
                    headers={k.lower(): v for k, v in (headers or {}).items()}, body=body)


def answered(invite: OutgoingRequest, *, to_tag: str = "callee-tag", record_route: str | None = RECORD_ROUTE,
             body: str = PCMU_ANSWER) -> SipReply:
    headers = {"Contact": CALLEE_CONTACT}
    if record_route is not None:
        headers["Record-Route"] = record_route
    return reply(invite, 200, "OK", to_tag=to_tag, headers=headers, body=body)


def msg(msg_type: str, payload: dict, rid: str | None = None) -> dict:
    return protocol.message(msg_type, payload, rid)


def sent(ctx, conn=None) -> list[dict]:
    return ctx.outbox.messages(conn)


def stored_calls(ctx) -> list[str]:
    return ctx.store.keys(CALLS)


def leg_index(ctx) -> list[str]:
    return ctx.store.keys(CALLS_BY_SIP_ID)


def assert_forgotten(ctx) -> None:
    assert stored_calls(ctx) == []
    assert leg_index(ctx) == []


def make_invite(dn: str = "5001", *, sip_call_id: str = "inbound-1@10.0.0.2", from_tag: str = "caller-tag",
                from_user: str = "5002", display_name: str = "Bob", cseq: int = 101,
                record_route: str = "<sip:p1.example.net;lr>,<sip:p2.example.net;lr>",
                contact: str = "<sip:5002@10.0.0.2:5062>", sdp: str = PHONE_OFFER) -> InboundInvite:
    return InboundInvite(
        sip_call_id=sip_call_id, dn=dn, from_uri=f"sip:{from_user}@10.0.0.2", from_user=from_user,
        display_name=display_name, from_tag=from_tag, to_uri=f"sip:{dn}@127.0.0.1:5060", contact=contact,
        record_route=record_route, cseq=cseq, sdp=sdp,
    )


def ring(ctx, invite: InboundInvite, t_index: int = 11, t_label: int = 22, local_tag: str = "gw-ring-tag") -> Call:
    """ring_inbound, returning the stored inbound Call (found by its leg)."""
    ring_inbound(ctx, invite, t_index, t_label, local_tag)
    call = find_for_request(ctx, invite.sip_call_id, invite.from_tag, "")
    assert call is not None and call.direction == "inbound"
    return call


# ---- payload parsers ----


def test_parse_call_valid():
    p = parse_call({"to": "+4915112345678", "callId": "a.B_c~-9", "sdp": CHROME_OFFER})
    assert p == CallPayload(to="+4915112345678", call_id="a.B_c~-9", sdp=CHROME_OFFER)


@pytest.mark.parametrize("missing", ["to", "callId", "sdp"])
def test_parse_call_missing_field(missing):
    payload = {"to": "5002", "callId": "c1", "sdp": CHROME_OFFER}
    del payload[missing]
    with pytest.raises(GatewayError) as exc:
        parse_call(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD


BAD_CALL_IDS = ["c1\r\nX: y", "c1\n", "a" * 65, "two words", " c1", "", "c@1", "c/1", 7, None, True, ["c1"]]


@pytest.mark.parametrize("call_id", BAD_CALL_IDS)
def test_parse_call_bad_call_id(call_id):
    with pytest.raises(GatewayError) as exc:
        parse_call({"to": "5002", "callId": call_id, "sdp": CHROME_OFFER})
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_call_id_of_64_characters_is_accepted():
    assert parse_call({"to": "5002", "callId": "a" * 64, "sdp": CHROME_OFFER}).call_id == "a" * 64


@pytest.mark.parametrize("to", ["5002\r\nX: y", "5002\n", "5002@evil.example", 'a"b', "<5002>", "50 02", "",
                                "a" * 33, 5002, None, "sip:5002"])
def test_parse_call_bad_to(to):
    with pytest.raises(GatewayError) as exc:
        parse_call({"to": to, "callId": "c1", "sdp": CHROME_OFFER})
    assert exc.value.code == errors.INVALID_PAYLOAD


@pytest.mark.parametrize("sdp", ["", "o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n", " v=0\r\n", "V=0\r\n", 42, None,
                                 "v=0\r\n" + "a=x\r\n" * (MAX_SDP_CHARS // 5)])
def test_parse_call_bad_sdp(sdp):
    with pytest.raises(GatewayError) as exc:
        parse_call({"to": "5002", "callId": "c1", "sdp": sdp})
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_sdp_size_limit_is_inclusive():
    sdp = "v=0\r\n" + "x" * (MAX_SDP_CHARS - 5)
    assert len(sdp) == MAX_SDP_CHARS
    assert parse_answer({"callId": "c1", "sdp": sdp}).sdp == sdp
    with pytest.raises(GatewayError):
        parse_answer({"callId": "c1", "sdp": sdp + "x"})


@pytest.mark.parametrize("parser, payload", [
    (parse_call, {"to": "5002", "callId": "c1", "sdp": CHROME_OFFER, "video": True}),
    (parse_hangup, {"callId": "c1", "code": 486}),
    (parse_answer, {"callId": "c1", "sdp": PCMU_ANSWER, "to": "5002"}),
    (parse_reject, {"callId": "c1", "reason": "busy"}),
])
def test_unknown_fields_are_refused(parser, payload):
    with pytest.raises(GatewayError) as exc:
        parser(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert "unknown field" in exc.value.reason


def test_parse_hangup():
    assert parse_hangup({"callId": "c1"}) == CallIdPayload(call_id="c1", reason="")
    assert parse_hangup({"callId": "c1", "reason": "user"}).reason == "user"
    assert parse_hangup({"callId": "c1", "reason": "r" * 64}).reason == "r" * 64


@pytest.mark.parametrize("payload", [{}, {"reason": "x"}, {"callId": "c 1"}, {"callId": "c1\r\n"},
                                     {"callId": "c1", "reason": "r" * 65}, {"callId": "c1", "reason": 5},
                                     {"callId": "c1", "reason": None}])
def test_parse_hangup_invalid(payload):
    with pytest.raises(GatewayError) as exc:
        parse_hangup(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_parse_answer():
    assert parse_answer({"callId": "in-1", "sdp": PCMU_ANSWER}) == CallIdPayload(call_id="in-1", sdp=PCMU_ANSWER)


@pytest.mark.parametrize("payload", [{"callId": "in-1"}, {"sdp": PCMU_ANSWER}, {"callId": "in-1", "sdp": "m=audio"},
                                     {"callId": "in-1", "sdp": ""}, {"callId": "in 1", "sdp": PCMU_ANSWER}])
def test_parse_answer_invalid(payload):
    with pytest.raises(GatewayError) as exc:
        parse_answer(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD


@pytest.mark.parametrize("code", [486, 480, 603])
def test_parse_reject_allowed_codes(code):
    assert parse_reject({"callId": "in-1", "code": code}) == CallIdPayload(call_id="in-1", code=code)


def test_parse_reject_defaults_to_486():
    assert parse_reject({"callId": "in-1"}).code == 486


@pytest.mark.parametrize("code", [404, 487, 500, 600, 200, 0, -486, "486", None, True, False, [486]])
def test_parse_reject_bad_code(code):
    with pytest.raises(GatewayError) as exc:
        parse_reject({"callId": "in-1", "code": code})
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_parse_reject_missing_call_id():
    with pytest.raises(GatewayError) as exc:
        parse_reject({"code": 603})
    assert exc.value.code == errors.INVALID_PAYLOAD


@pytest.mark.parametrize("frame, expected", [
    ({"type": "call", "id": "r1", "payload": {"to": "5002", "callId": "c1", "sdp": CHROME_OFFER}},
     CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER)),
    ({"type": "hangup", "id": "h1", "payload": {"callId": "c1", "reason": "bye"}}, CallIdPayload(call_id="c1", reason="bye")),
    ({"type": "answer", "id": "a1", "payload": {"callId": "c1", "sdp": PCMU_ANSWER}},
     CallIdPayload(call_id="c1", sdp=PCMU_ANSWER)),
    ({"type": "reject", "id": "j1", "payload": {"callId": "c1", "code": 603}}, CallIdPayload(call_id="c1", code=603)),
])
def test_parse_frame_knows_call_types(frame, expected):
    parsed = protocol.parse_frame(protocol.encode(frame))
    assert parsed.type == frame["type"]
    assert parsed.id == frame["id"]
    assert parsed.payload == expected
    assert protocol.REQUEST_TYPES[frame["type"]] is {"call": parse_call, "hangup": parse_hangup,
                                                     "answer": parse_answer, "reject": parse_reject}[frame["type"]]


def test_parse_frame_call_payload_errors_keep_id_and_type():
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_frame(protocol.encode({"type": "call", "id": "r9", "payload": {"to": "5002@x", "callId": "c1",
                                                                                      "sdp": CHROME_OFFER}}))
    assert (exc.value.code, exc.value.request_id, exc.value.msg_type) == (errors.INVALID_PAYLOAD, "r9", "call")


# ---- failure reasons ----


@pytest.mark.parametrize("code, reason", [
    (486, "busy"), (600, "busy"), (404, "not_found"), (604, "not_found"), (480, "unavailable"), (603, "declined"),
    (408, "no_answer"), (487, "cancelled"), (403, "rejected"), (488, "rejected"), (400, "rejected"), (499, "rejected"),
    (500, "server_error"), (503, "server_error"), (599, "server_error"), (606, "rejected"), (607, "rejected"),
    (699, "rejected"),
])
def test_failure_reason(code, reason):
    assert failure_reason(code) == reason


# ---- place_call ----


def test_place_call_not_registered(ctx, conn):
    with pytest.raises(GatewayError) as exc:
        place_call(ctx, conn, "r1", CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER))
    assert exc.value.code == errors.NOT_REGISTERED
    assert ctx.sip.requests == [] and stored_calls(ctx) == [] and sent(ctx) == []


def test_place_call_duplicate_call_id(ctx, caller):
    call, _ = place(ctx, caller)
    with pytest.raises(GatewayError) as exc:
        place_call(ctx, caller, "r2", CallPayload(to="5003", call_id="c1", sdp=CHROME_OFFER))
    assert exc.value.code == errors.INVALID_STATE
    assert len(ctx.sip.requests) == 1
    assert Call.load(ctx, call.key) == call  # untouched


def test_same_call_id_on_two_connections_are_two_calls(ctx, caller, conn2):
    register(ctx, conn2, "5002")
    a, _ = place(ctx, caller, to="5002", call_id="c1")
    b, _ = place(ctx, conn2, to="5001", call_id="c1")
    assert a.key != b.key and a.sip_call_id != b.sip_call_id
    assert sorted(stored_calls(ctx)) == sorted([a.key, b.key])


def test_refused_route_fails_without_invite(ctx, caller):
    place_call(ctx, caller, "r1", CallPayload(to="0900123", call_id="c1", sdp=CHROME_OFFER))
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 403, "reason": "rejected"}, "r1")]
    assert ctx.sip.requests == []
    assert_forgotten(ctx)


def test_outside_line_without_upstream_is_not_found(ctx, caller):
    place_call(ctx, caller, None, CallPayload(to="0301234", call_id="c1", sdp=CHROME_OFFER))
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 404, "reason": "not_found"})]
    assert ctx.sip.requests == []


def test_opus_only_offer_fails_488_without_invite(ctx, caller):
    place_call(ctx, caller, "r1", CallPayload(to="5002", call_id="c1", sdp=OPUS_ONLY_OFFER))
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 488, "reason": "rejected"}, "r1")]
    assert ctx.sip.requests == []
    assert_forgotten(ctx)


def test_place_call_embedded_invite(ctx, caller, clock):
    call, invite = place(ctx, caller)
    assert len(ctx.sip.requests) == 1
    assert invite.ruri == "sip:5002@127.0.0.1:5060"
    assert invite.nexthop == "sip:127.0.0.1:5060"
    h = parse_headers(invite.headers)
    assert re.fullmatch(r'"Alice" <sip:5001@127\.0\.0\.1:5060>;tag=[0-9a-f]{16}', h["From"]), h["From"]
    assert h["To"] == "<sip:5002@127.0.0.1:5060>"
    assert re.fullmatch(r"[0-9a-f]{32}@127\.0\.0\.1", h["Call-ID"]), h["Call-ID"]
    assert h["CSeq"] == "1 INVITE"
    assert h["Contact"] == "<sip:5001@127.0.0.1:5060>"
    assert h["Max-Forwards"] == "70"
    assert h["Content-Type"] == "application/sdp"
    # body: the codec policy applied
    assert invite.body == FILTERED_CHROME.sdp
    assert "opus" not in invite.body.lower()
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 0 8 126\r\n" in invite.body
    assert "a=rtpmap:111" not in invite.body and "a=rtpmap:110" not in invite.body
    # nothing told to the browser yet
    assert sent(ctx) == []
    # the record
    assert call is not None
    assert call.key == call_key(caller, "c1") and stored_calls(ctx) == [call.key]
    assert (call.call_id, call.conn, call.dn, call.direction, call.state) == ("c1", caller.key, "5001", "outbound", CALLING)
    assert call.sip_call_id == h["Call-ID"]
    assert call.local_tag == tag_of(h["From"])
    assert call.remote_uri == invite.ruri and call.local_uri == "sip:5001@127.0.0.1:5060"
    assert call.codecs == ["PCMU", "PCMA", "telephone-event"]
    assert call.request_id == "r1" and call.peer == "5002"
    assert call.created_at == START_TIME and call.deadline == START_TIME + ctx.config.sip_timeout
    assert call.invite_cseq == 1
    # the leg index points at it
    assert ctx.store.get(CALLS_BY_SIP_ID, leg_key("outbound", call.sip_call_id, call.local_tag)) == call.key
    assert leg_index(ctx) == [call.leg_key]
    assert find_for_reply(ctx, call.sip_call_id, call.local_tag, "") == call


def test_call_ids_and_tags_are_unpredictable(ctx, caller):
    a, ia = place(ctx, caller, call_id="c1")
    b, ib = place(ctx, caller, call_id="c2")
    assert a.sip_call_id != b.sip_call_id
    assert a.local_tag != b.local_tag
    for c in (a, b):  # random hex, not derived from the client callId
        assert re.fullmatch(r"[0-9a-f]{32}@127\.0\.0\.1", c.sip_call_id) and re.fullmatch(r"[0-9a-f]{16}", c.local_tag)


def test_place_call_without_display_name(ctx, conn):
    register(ctx, conn, "5002")
    _, invite = place(ctx, conn, to="5001")
    assert re.fullmatch(r"<sip:5002@127\.0\.0\.1:5060>;tag=[0-9a-f]{16}", parse_headers(invite.headers)["From"])


def test_place_call_upstream(make_ctx, conn):
    ctx = make_ctx(embedded=False)
    register_upstream(ctx, conn, "5001")
    call, invite = place(ctx, conn, to="5555")
    assert invite.ruri == "sip:5555@127.0.0.1:5070"
    assert invite.nexthop == "sip:127.0.0.1:5070"
    h = parse_headers(invite.headers)
    assert re.fullmatch(r"<sip:5001@127\.0\.0\.1>;tag=[0-9a-f]{16}", h["From"]), h["From"]
    assert h["To"] == "<sip:5555@127.0.0.1:5070>"
    assert h["Contact"] == "<sip:5001@127.0.0.1:5060>"
    assert call.local_uri == "sip:5001@127.0.0.1"


def test_place_call_upstream_outside_line_strips_prefix(make_ctx, conn):
    ctx = make_ctx(embedded=False)
    register_upstream(ctx, conn, "5001")
    _, invite = place(ctx, conn, to="0301234")
    assert invite.ruri == "sip:301234@127.0.0.1:5070"
    assert parse_headers(invite.headers)["To"] == "<sip:301234@127.0.0.1:5070>"


def test_place_call_refused_while_upstream_register_pending(make_ctx, conn):
    ctx = make_ctx(embedded=False)
    registrations.register(ctx, conn, "reg", RegisterPayload(dn="5001", password="wrong"))
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        place_call(ctx, conn, "r1", CallPayload(to="5555", call_id="c1", sdp=CHROME_OFFER))
    assert exc.value.code == errors.NOT_REGISTERED
    assert ctx.sip.requests == []


def test_place_call_send_failure(ctx, caller):
    ctx.sip.result = False
    place_call(ctx, caller, "r1", CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER))
    assert len(ctx.sip.requests) == 1
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 503, "reason": "server_error"}, "r1")]
    assert_forgotten(ctx)


def test_place_call_unparseable_sdp_is_invalid_payload(ctx, caller, monkeypatch):
    def boom(sdp, allowed):
        raise RuntimeError("parser crashed")

    monkeypatch.setattr(calls, "apply_codec_policy", boom)
    with pytest.raises(GatewayError) as exc:
        place_call(ctx, caller, "r1", CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER))
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert ctx.sip.requests == [] and stored_calls(ctx) == []


# ---- replies to the outbound INVITE ----


def test_100_trying_sends_nothing_but_rings(ctx, caller, clock):
    call, invite = place(ctx, caller)
    clock.advance(1)
    on_reply(ctx, reply(invite, 100, "Trying"))
    assert sent(ctx) == []
    stored = Call.load(ctx, call.key)
    assert stored.state == RINGING
    assert stored.deadline == clock.now + ctx.config.ring_timeout


def test_180_sends_ringing_each_time(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t1"))
    assert sent(ctx) == [msg("ringing", {"callId": "c1"})]
    assert Call.load(ctx, call.key).state == RINGING
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t1"))
    assert sent(ctx) == [msg("ringing", {"callId": "c1"})] * 2
    assert Call.load(ctx, call.key).request_id == "r1"  # still waiting for the final reply


def test_183_with_sdp_sends_progress(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 183, "Session Progress", to_tag="t1", body=PCMU_ANSWER))
    assert sent(ctx) == [msg("progress", {"callId": "c1", "sdp": PCMU_ANSWER})]
    assert Call.load(ctx, call.key).state == RINGING


def test_183_without_sdp_is_ringing(ctx, caller):
    _, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 183, "Session Progress", to_tag="t1"))
    assert sent(ctx) == [msg("ringing", {"callId": "c1"})]


def test_200_accepts_the_call(ctx, caller, clock):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="callee-tag"))
    ctx.outbox.clear()
    clock.advance(5)
    on_reply(ctx, answered(invite))
    assert sent(ctx) == [msg("callAccepted", {"callId": "c1", "sdp": PCMU_ANSWER,
                                              "codecs": ["PCMU", "PCMA", "telephone-event"],
                                              "timing": ANY}, "r1")]
    assert ctx.outbox.sent[0][0] == caller
    stored = Call.load(ctx, call.key)
    assert stored.state == CONFIRMED
    assert stored.remote_tag == "callee-tag"
    assert stored.remote_target == CALLEE_TARGET
    assert stored.route_set == ["<sip:p2.example.net;lr;ftag=x>", "<sip:p1.example.net;lr>"]
    assert stored.answered_at == clock.now
    assert stored.request_id is None
    assert len(ctx.sip.requests) == 1  # tm ACKs; the core sends nothing


def test_200_without_contact_targets_the_remote_uri(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 200, "OK", to_tag="t", body=PCMU_ANSWER))
    stored = Call.load(ctx, call.key)
    assert stored.remote_target == "sip:5002@127.0.0.1:5060"
    assert stored.route_set == []


def test_second_200_sends_nothing(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, answered(invite))
    ctx.outbox.clear()
    first = Call.load(ctx, call.key)
    on_reply(ctx, answered(invite, to_tag="other-fork", record_route=None))
    assert sent(ctx) == []
    assert Call.load(ctx, call.key) == first
    assert len(ctx.sip.requests) == 1


def test_486_fails_busy_and_forgets(ctx, caller):
    _, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t"))
    ctx.outbox.clear()
    on_reply(ctx, reply(invite, 486, "Busy Here", to_tag="t"))
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 486, "reason": "busy"}, "r1")]
    assert_forgotten(ctx)


@pytest.mark.parametrize("code, reason", [(404, "not_found"), (603, "declined"), (503, "server_error"),
                                          (408, "no_answer"), (480, "unavailable")])
def test_final_failure_from_calling(ctx, caller, code, reason):
    _, invite = place(ctx, caller, rid=None)
    on_reply(ctx, reply(invite, code))
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": code, "reason": reason})]
    assert_forgotten(ctx)


def test_on_invite_reply_directly(ctx, caller):
    call, invite = place(ctx, caller)
    on_invite_reply(ctx, call, reply(invite, 180, to_tag="t"))
    assert sent(ctx) == [msg("ringing", {"callId": "c1"})]
    assert Call.load(ctx, call.key).state == RINGING


def test_reply_for_unknown_call_is_ignored(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, SipReply(200, "OK", "unknown@x", 1, "INVITE", from_tag=call.local_tag, to_tag="t"))
    on_reply(ctx, SipReply(200, "OK", call.sip_call_id, 1, "INVITE", from_tag="not-ours", to_tag="t"))
    assert sent(ctx) == []
    assert Call.load(ctx, call.key).state == CALLING


def test_reply_to_cancel_is_ignored(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, SipReply(200, "OK", call.sip_call_id, 1, "CANCEL", from_tag=call.local_tag))
    assert sent(ctx) == []
    assert Call.load(ctx, call.key) == call


# ---- hangup ----


def test_hangup_before_answer_cancels(ctx, caller, clock):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, to_tag="t"))
    ctx.outbox.clear()
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    assert ctx.sip.cancels == [(call.sip_call_id, 1)]
    # Each request gets its one final reply: `call` (r1) is cancelled, `hangup` (h1) ends it.
    assert sent(ctx) == [
        msg("callFailed", {"callId": "c1", "code": 487, "reason": "cancelled"}, "r1"),
        msg("callEnded", {"callId": "c1", "by": "local", "reason": "hangup"}, "h1"),
    ]
    stored = Call.load(ctx, call.key)
    assert stored.state == CANCELLING
    assert stored.deadline == clock.now + 32
    assert len(ctx.sip.requests) == 1  # no BYE


def test_hangup_reason_is_echoed(ctx, caller):
    place(ctx, caller)
    hangup(ctx, caller, None, CallIdPayload(call_id="c1", reason="user-left"))
    assert sent(ctx)[-1] == msg("callEnded", {"callId": "c1", "by": "local", "reason": "user-left"})


def test_487_after_cancel_sends_nothing_and_forgets(ctx, caller):
    _, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, to_tag="t"))
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    on_reply(ctx, reply(invite, 487, "Request Terminated", to_tag="t"))
    assert sent(ctx) == []
    assert_forgotten(ctx)


def test_200_racing_the_cancel_is_byed(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, to_tag="t"))
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    on_reply(ctx, answered(invite, to_tag="callee-tag"))
    assert sent(ctx) == []  # no callAccepted: the browser already has callEnded
    bye = ctx.sip.last
    assert bye.method == "BYE"
    assert bye.ruri == CALLEE_TARGET
    h = parse_headers(bye.headers)
    assert tag_of(h["To"]) == "callee-tag" and tag_of(h["From"]) == call.local_tag
    assert h["CSeq"] == "2 BYE"
    assert Call.load(ctx, call.key).state == ENDING
    on_reply(ctx, reply(bye, 200, "OK", to_tag="callee-tag"))
    assert sent(ctx) == []
    assert_forgotten(ctx)


def test_provisional_after_hangup_is_not_forwarded(ctx, caller):
    _, invite = place(ctx, caller)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))  # still CALLING: tm CANCELs once a provisional arrives
    ctx.outbox.clear()
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t"))
    on_reply(ctx, reply(invite, 183, "Session Progress", to_tag="t", body=PCMU_ANSWER))
    assert sent(ctx) == []


def confirm_outbound(ctx, conn, **kw) -> tuple[Call, OutgoingRequest]:
    call, invite = place(ctx, conn, **kw)
    on_reply(ctx, answered(invite))
    ctx.outbox.clear()
    return Call.load(ctx, call.key), invite


def test_hangup_confirmed_sends_bye(ctx, caller, clock):
    call, invite = confirm_outbound(ctx, caller)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    assert ctx.sip.cancels == []
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "local", "reason": "hangup"}, "h1")]
    assert len(ctx.sip.requests) == 2
    bye = ctx.sip.last
    assert bye.method == "BYE"
    assert bye.ruri == CALLEE_TARGET
    assert bye.body == ""
    assert bye.nexthop == "sip:p2.example.net;lr;ftag=x"
    h = parse_headers(bye.headers)
    assert h["From"] == f"<sip:5001@127.0.0.1:5060>;tag={call.local_tag}"
    assert h["To"] == "<sip:5002@127.0.0.1:5060>;tag=callee-tag"
    assert h["Call-ID"] == call.sip_call_id
    assert h["CSeq"] == "2 BYE"
    assert h["Route"] == "<sip:p2.example.net;lr;ftag=x>, <sip:p1.example.net;lr>"
    assert h["Max-Forwards"] == "70"
    stored = Call.load(ctx, call.key)
    assert stored.state == ENDING and stored.local_cseq == 2 and stored.deadline == clock.now + 32
    # the BYE's 200 forgets the call
    on_reply(ctx, reply(bye, 100, "Trying", to_tag="callee-tag"))
    assert Call.load(ctx, call.key) is not None
    on_reply(ctx, reply(bye, 200, "OK", to_tag="callee-tag"))
    assert_forgotten(ctx)
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "local", "reason": "hangup"}, "h1")]


def test_bye_without_route_set(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, answered(invite, record_route=None))
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    bye = ctx.sip.last
    assert "Route" not in parse_headers(bye.headers)
    assert bye.nexthop == ""
    assert bye.ruri == CALLEE_TARGET


def test_hangup_twice_is_invalid_state(ctx, caller):
    confirm_outbound(ctx, caller)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    with pytest.raises(GatewayError) as exc:
        hangup(ctx, caller, "h2", CallIdPayload(call_id="c1"))
    assert exc.value.code == errors.INVALID_STATE
    assert len(ctx.sip.requests) == 2  # one INVITE, one BYE


def test_hangup_while_cancelling_is_invalid_state(ctx, caller):
    place(ctx, caller)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    with pytest.raises(GatewayError) as exc:
        hangup(ctx, caller, "h2", CallIdPayload(call_id="c1"))
    assert exc.value.code == errors.INVALID_STATE
    assert len(ctx.sip.cancels) == 1


def test_hangup_unknown_call(ctx, caller):
    with pytest.raises(GatewayError) as exc:
        hangup(ctx, caller, "h1", CallIdPayload(call_id="nope"))
    assert exc.value.code == errors.NO_SUCH_CALL


def test_other_connection_cannot_hang_up(ctx, caller, conn2):
    register(ctx, conn2, "5002")
    call, _ = place(ctx, caller)
    with pytest.raises(GatewayError) as exc:
        hangup(ctx, conn2, "h1", CallIdPayload(call_id="c1"))
    assert exc.value.code == errors.NO_SUCH_CALL
    assert ctx.sip.cancels == [] and len(ctx.sip.requests) == 1 and sent(ctx) == []
    assert Call.load(ctx, call.key) == call


# ---- inbound ----


def test_check_inbound_embedded(ctx, caller):
    assert check_inbound(ctx, make_invite(dn="9999")) == (404, "Not Found")
    assert check_inbound(ctx, make_invite(dn="5002")) == (480, "Temporarily Unavailable")
    assert check_inbound(ctx, make_invite(dn="5001")) is None


def test_check_inbound_upstream_has_no_subscriber_list(make_ctx, conn):
    ctx = make_ctx(embedded=False, subscribers_text=None)
    assert check_inbound(ctx, make_invite(dn="9999")) == (480, "Temporarily Unavailable")
    register_upstream(ctx, conn, "5001")
    assert check_inbound(ctx, make_invite(dn="5001")) is None


def test_ring_inbound_alerts_the_browser(ctx, caller, conn2, clock):
    register(ctx, conn2, "5002")
    call = ring(ctx, make_invite())
    assert sent(ctx) == [msg("incomingCall", {"callId": call.call_id, "from": "5002", "displayName": "Bob",
                                              "sdp": PHONE_OFFER})]
    assert ctx.outbox.sent[0][0] == caller
    assert re.fullmatch(r"in-[0-9a-f]{16}", call.call_id)
    assert call.key == call_key(caller, call.call_id)
    assert (call.direction, call.state, call.dn, call.conn) == ("inbound", RINGING, "5001", caller.key)
    assert (call.t_index, call.t_label) == (11, 22)
    assert call.local_tag == "gw-ring-tag" and call.remote_tag == "caller-tag"
    assert call.remote_target == "sip:5002@10.0.0.2:5062"
    assert call.route_set == ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"]  # UAS: not reversed
    assert call.invite_cseq == 101
    assert call.deadline == clock.now + ctx.config.ring_timeout
    assert ctx.sip.suspended_replies == []
    assert leg_index(ctx) == [leg_key("inbound", "inbound-1@10.0.0.2", "caller-tag")]


def test_ring_inbound_when_dn_went_away(ctx):
    ring_inbound(ctx, make_invite(dn="5001"), 11, 22, "lt")
    assert ctx.sip.suspended_replies == [(11, 22, 480, "Temporarily Unavailable", "", "")]
    assert sent(ctx) == [] and stored_calls(ctx) == []


def test_answer_inbound(ctx, caller, clock):
    call = ring(ctx, make_invite())
    ctx.outbox.clear()
    clock.advance(3)
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=OPUS_AND_PCMU_ANSWER))
    filtered = apply_codec_policy(OPUS_AND_PCMU_ANSWER, CODECS)
    assert "opus" not in filtered.sdp.lower()
    assert ctx.sip.suspended_replies == [(11, 22, 200, "OK", "Contact: <sip:5001@127.0.0.1:5060>\r\n", filtered.sdp)]
    assert sent(ctx) == [msg("callAccepted", {"callId": call.call_id, "sdp": filtered.sdp,
                                              "codecs": ["PCMU", "telephone-event"]}, "a1")]
    stored = Call.load(ctx, call.key)
    assert stored.state == CONFIRMED
    assert stored.local_tag == "gw-to-tag"  # what tm reported for the 200
    assert stored.codecs == ["PCMU", "telephone-event"]
    assert stored.answered_at == clock.now


def test_answer_after_caller_cancelled(ctx, caller, sip_port):
    call = ring(ctx, make_invite())
    sip_port.to_tag = None
    with pytest.raises(GatewayError) as exc:
        answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    assert exc.value.code == errors.NO_SUCH_CALL
    assert_forgotten(ctx)


def test_answer_not_ringing_is_invalid_state(ctx, caller):
    call = ring(ctx, make_invite())
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    with pytest.raises(GatewayError) as exc:
        answer(ctx, caller, "a2", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    assert exc.value.code == errors.INVALID_STATE
    assert len(ctx.sip.suspended_replies) == 1


def test_answer_outbound_call_is_invalid_state(ctx, caller):
    place(ctx, caller)
    with pytest.raises(GatewayError) as exc:
        answer(ctx, caller, "a1", CallIdPayload(call_id="c1", sdp=PCMU_ANSWER))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.suspended_replies == []


def test_answer_unknown_call(ctx, caller):
    with pytest.raises(GatewayError) as exc:
        answer(ctx, caller, "a1", CallIdPayload(call_id="in-nope", sdp=PCMU_ANSWER))
    assert exc.value.code == errors.NO_SUCH_CALL


def test_answer_with_no_allowed_codec_keeps_ringing(ctx, caller):
    call = ring(ctx, make_invite())
    with pytest.raises(GatewayError) as exc:
        answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=OPUS_ONLY_OFFER))
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert ctx.sip.suspended_replies == []
    assert Call.load(ctx, call.key).state == RINGING


def test_answer_from_other_connection(ctx, caller, conn2):
    register(ctx, conn2, "5002")
    call = ring(ctx, make_invite())
    with pytest.raises(GatewayError) as exc:
        answer(ctx, conn2, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    assert exc.value.code == errors.NO_SUCH_CALL
    assert ctx.sip.suspended_replies == []


@pytest.mark.parametrize("code, reason", [(603, "Decline"), (486, "Busy Here"), (480, "Temporarily Unavailable")])
def test_reject_inbound(ctx, caller, code, reason):
    call = ring(ctx, make_invite())
    ctx.outbox.clear()
    reject(ctx, caller, "j1", CallIdPayload(call_id=call.call_id, code=code))
    assert ctx.sip.suspended_replies == [(11, 22, code, reason, "", "")]
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "local", "reason": "rejected"}, "j1")]
    assert_forgotten(ctx)


def test_reject_not_ringing(ctx, caller):
    call = ring(ctx, make_invite())
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    with pytest.raises(GatewayError) as exc:
        reject(ctx, caller, "j1", CallIdPayload(call_id=call.call_id, code=603))
    assert exc.value.code == errors.INVALID_STATE
    place(ctx, caller, call_id="out")
    with pytest.raises(GatewayError) as exc:
        reject(ctx, caller, "j2", CallIdPayload(call_id="out", code=603))
    assert exc.value.code == errors.INVALID_STATE


def test_hangup_inbound_ringing_answers_486(ctx, caller):
    call = ring(ctx, make_invite())
    ctx.outbox.clear()
    hangup(ctx, caller, "h1", CallIdPayload(call_id=call.call_id))
    assert ctx.sip.suspended_replies == [(11, 22, 486, "Busy Here", "", "")]
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "local", "reason": "hangup"}, "h1")]
    assert_forgotten(ctx)


def test_remote_cancel(ctx, caller):
    call = ring(ctx, make_invite())
    ctx.outbox.clear()
    on_remote_cancel(ctx, "inbound-1@10.0.0.2", "other-tag")
    assert sent(ctx) == [] and Call.load(ctx, call.key) is not None
    on_remote_cancel(ctx, "inbound-1@10.0.0.2", "caller-tag")
    assert sent(ctx) == [msg("callCancelled", {"callId": call.call_id})]
    assert ctx.outbox.sent[0][0] == caller
    assert_forgotten(ctx)
    assert ctx.sip.suspended_replies == []  # tm answers 487 itself


def test_remote_cancel_after_answer_is_ignored(ctx, caller):
    call = ring(ctx, make_invite())
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    ctx.outbox.clear()
    on_remote_cancel(ctx, "inbound-1@10.0.0.2", "caller-tag")
    assert sent(ctx) == []
    assert Call.load(ctx, call.key).state == CONFIRMED


def test_remote_bye_inbound(ctx, caller, sip_port):
    call = ring(ctx, make_invite())
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    ctx.outbox.clear()
    assert on_remote_bye(ctx, "inbound-1@10.0.0.2", "caller-tag", sip_port.to_tag) == 200
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "remote", "reason": "bye"})]
    assert_forgotten(ctx)
    assert on_remote_bye(ctx, "inbound-1@10.0.0.2", "caller-tag", sip_port.to_tag) == 481


def test_remote_bye_outbound(ctx, caller):
    call, _ = confirm_outbound(ctx, caller)
    # From the callee: From tag is the callee's, To tag is ours.
    assert on_remote_bye(ctx, call.sip_call_id, "callee-tag", call.local_tag) == 200
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "remote", "reason": "bye"})]
    assert len(ctx.sip.requests) == 1  # no BYE of our own
    assert_forgotten(ctx)


def test_remote_bye_unknown(ctx, caller):
    call, _ = confirm_outbound(ctx, caller)
    assert on_remote_bye(ctx, "nope@x", "a", "b") == 481
    assert on_remote_bye(ctx, call.sip_call_id, "callee-tag", "not-our-tag") == 481
    assert sent(ctx) == []
    assert Call.load(ctx, call.key) is not None


def test_remote_bye_crossing_ours_sends_no_second_call_ended(ctx, caller):
    call, _ = confirm_outbound(ctx, caller)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    assert on_remote_bye(ctx, call.sip_call_id, "callee-tag", call.local_tag) == 200
    assert sent(ctx) == []


def test_hangup_inbound_confirmed_sends_bye(ctx, caller):
    call = ring(ctx, make_invite(cseq=101))
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    hangup(ctx, caller, "h1", CallIdPayload(call_id=call.call_id))
    bye = ctx.sip.last
    assert bye.method == "BYE"
    assert bye.ruri == "sip:5002@10.0.0.2:5062"
    assert bye.nexthop == "sip:p1.example.net;lr"
    h = parse_headers(bye.headers)
    assert h["From"] == "<sip:5001@127.0.0.1:5060>;tag=gw-to-tag"
    assert h["To"] == "<sip:5002@10.0.0.2>;tag=caller-tag"
    assert h["Call-ID"] == "inbound-1@10.0.0.2"
    assert h["Route"] == "<sip:p1.example.net;lr>, <sip:p2.example.net;lr>"
    assert h["CSeq"] == "1 BYE"  # our own CSeq space on the inbound leg (RFC 3261 12.2.1.1)
    # its reply: From tag ours, To tag the caller's
    on_reply(ctx, SipReply(200, "OK", "inbound-1@10.0.0.2", 102, "BYE", from_tag="gw-to-tag", to_tag="caller-tag"))
    assert_forgotten(ctx)


# ---- leg index: a call looping through the gateway (JSON client to JSON client) ----


def test_loop_call_legs_are_kept_apart(ctx, caller, conn2, sip_port):
    register(ctx, conn2, "5002")
    out, invite = place(ctx, caller, to="5002")
    h = parse_headers(invite.headers)
    sip_cid, tag_a = h["Call-ID"], tag_of(h["From"])
    # The INVITE comes back in through our own SIP port.
    sip_port.to_tag = "tag-b"
    inbound = make_invite(dn="5002", sip_call_id=sip_cid, from_tag=tag_a, from_user="5001", display_name="Alice",
                          record_route="", contact="<sip:5001@127.0.0.1:5060>", cseq=1, sdp=invite.body)
    assert check_inbound(ctx, inbound) is None
    ring_inbound(ctx, inbound, 7, 8, "tag-b")
    incoming = sent(ctx, conn2)
    assert [m["type"] for m in incoming] == ["incomingCall"]
    in_id = incoming[0]["payload"]["callId"]
    assert sorted(leg_index(ctx)) == sorted([f"o|{sip_cid}|{tag_a}", f"i|{sip_cid}|{tag_a}"])

    def which(found: Call | None) -> str | None:
        return None if found is None else found.key

    out_key, in_key = call_key(caller, "c1"), call_key(conn2, in_id)
    # replies to the outbound INVITE/BYE (From tag A) -> outbound leg
    assert which(find_for_reply(ctx, sip_cid, tag_a, "tag-b")) == out_key
    assert which(find_for_reply(ctx, sip_cid, tag_a, "")) == out_key
    # reply to a BYE sent on the inbound leg (From tag B, To tag A) -> inbound leg
    assert which(find_for_reply(ctx, sip_cid, "tag-b", tag_a)) == in_key
    # BYE sent by the inbound leg arriving (From B, To A) -> outbound leg
    assert which(find_for_request(ctx, sip_cid, "tag-b", tag_a)) == out_key
    # BYE sent by the outbound leg arriving (From A, To B) -> inbound leg; CANCEL (no To tag) too
    assert which(find_for_request(ctx, sip_cid, tag_a, "tag-b")) == in_key
    assert which(find_for_request(ctx, sip_cid, tag_a, "")) == in_key
    assert find_for_request(ctx, sip_cid, "stranger", "") is None

    # The whole call: B answers, A is told, B hangs up, A is told, B's BYE is answered.
    ctx.outbox.clear()
    answer(ctx, conn2, "a1", CallIdPayload(call_id=in_id, sdp=PCMU_ANSWER))
    on_reply(ctx, reply(invite, 200, "OK", to_tag="tag-b", headers={"Contact": "<sip:5002@127.0.0.1:5060>"},
                        body=ctx.sip.suspended_replies[-1][5]))
    assert [m["type"] for m in sent(ctx, caller)] == ["callAccepted"]
    assert [m["type"] for m in sent(ctx, conn2)] == ["callAccepted"]
    ctx.outbox.clear()
    hangup(ctx, conn2, "h1", CallIdPayload(call_id=in_id))
    bye = ctx.sip.last
    bh = parse_headers(bye.headers)
    assert (tag_of(bh["From"]), tag_of(bh["To"])) == ("tag-b", tag_a)
    assert on_remote_bye(ctx, sip_cid, "tag-b", tag_a) == 200
    assert sent(ctx, caller) == [msg("callEnded", {"callId": "c1", "by": "remote", "reason": "bye"})]
    assert Call.load(ctx, in_key).state == ENDING
    on_reply(ctx, reply(bye, 200, "OK", to_tag=tag_a))
    assert_forgotten(ctx)


# ---- tick ----


def test_tick_outbound_unreachable(ctx, caller, clock):
    call, _ = place(ctx, caller)
    clock.advance(ctx.config.sip_timeout - 0.01)
    tick(ctx)
    assert ctx.sip.cancels == [] and sent(ctx) == []
    assert Call.load(ctx, call.key).state == CALLING
    clock.advance(0.01)
    tick(ctx)
    assert ctx.sip.cancels == [(call.sip_call_id, 1)]
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 408, "reason": "unreachable"}, "r1")]
    # Kept as CANCELLING until the INVITE's final reply (or 32 s), then gone silently.
    assert Call.load(ctx, call.key).state == CANCELLING
    ctx.outbox.clear()
    clock.advance(32)
    tick(ctx)
    assert sent(ctx) == []
    assert_forgotten(ctx)


def test_tick_outbound_no_answer(ctx, caller, clock):
    call, invite = place(ctx, caller)
    clock.advance(2)
    on_reply(ctx, reply(invite, 180, to_tag="t"))
    ctx.outbox.clear()
    clock.advance(ctx.config.ring_timeout - 1)
    tick(ctx)  # past the sip_timeout, but it is ringing now
    assert ctx.sip.cancels == [] and sent(ctx) == []
    clock.advance(1)
    tick(ctx)
    assert ctx.sip.cancels == [(call.sip_call_id, 1)]
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 408, "reason": "no_answer"}, "r1")]
    assert Call.load(ctx, call.key).state == CANCELLING
    on_reply(ctx, reply(invite, 487, "Request Terminated", to_tag="t"))
    assert len(sent(ctx)) == 1
    assert_forgotten(ctx)


def test_tick_inbound_ring_timeout(ctx, caller, clock):
    call = ring(ctx, make_invite())
    ctx.outbox.clear()
    clock.advance(ctx.config.ring_timeout - 0.5)
    tick(ctx)
    assert ctx.sip.suspended_replies == [] and sent(ctx) == []
    clock.advance(0.5)
    tick(ctx)
    assert ctx.sip.suspended_replies == [(11, 22, 480, "Temporarily Unavailable", "", "")]
    assert sent(ctx) == [msg("callCancelled", {"callId": call.call_id, "reason": "no_answer"})]
    assert_forgotten(ctx)


def test_tick_forgets_ending_after_deadline(ctx, caller, clock):
    call, _ = confirm_outbound(ctx, caller)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    requests = len(ctx.sip.requests)
    clock.advance(31)
    tick(ctx)
    assert Call.load(ctx, call.key).state == ENDING
    clock.advance(1)
    tick(ctx)
    assert_forgotten(ctx)
    assert sent(ctx) == [] and len(ctx.sip.requests) == requests


def test_tick_forgets_cancelling_after_deadline(ctx, caller, clock):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, to_tag="t"))
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    clock.advance(31.9)
    tick(ctx)
    assert Call.load(ctx, call.key).state == CANCELLING
    clock.advance(0.1)
    tick(ctx)
    assert_forgotten(ctx)
    assert sent(ctx) == [] and ctx.sip.cancels == [(call.sip_call_id, 1)]


def test_tick_leaves_confirmed_calls_alone(ctx, caller, clock):
    out, _ = confirm_outbound(ctx, caller)
    inbound = ring(ctx, make_invite())
    answer(ctx, caller, "a1", CallIdPayload(call_id=inbound.call_id, sdp=PCMU_ANSWER))
    ctx.outbox.clear()
    snapshot = {k: ctx.store.get(CALLS, k) for k in stored_calls(ctx)}
    clock.advance(10_000)
    tick(ctx)
    assert {k: ctx.store.get(CALLS, k) for k in stored_calls(ctx)} == snapshot
    assert sent(ctx) == [] and ctx.sip.cancels == [] and len(ctx.sip.suspended_replies) == 1


def test_tick_with_no_calls(ctx):
    tick(ctx)
    assert ctx.sip.requests == [] and ctx.sip.cancels == []


def test_200_crossing_timeout_cancel_is_byed(ctx, caller, clock):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, to_tag="t"))
    clock.advance(ctx.config.ring_timeout)
    tick(ctx)
    on_reply(ctx, answered(invite, to_tag="t"))
    assert ctx.sip.last.method == "BYE"


# ---- connection closed ----


def test_connection_closed_ends_only_that_connections_calls(ctx, caller, conn2):
    register(ctx, conn2, "5002")
    ringing_out, inv1 = place(ctx, caller, to="5003", call_id="ring")
    on_reply(ctx, reply(inv1, 180, to_tag="t1"))
    confirmed_out, inv2 = place(ctx, caller, to="5004", call_id="conf")
    on_reply(ctx, answered(inv2, to_tag="t2"))
    inbound = ring(ctx, make_invite(dn="5001"), t_index=31, t_label=32)
    other, _ = place(ctx, conn2, to="5005", call_id="ring")  # same client callId, other connection
    other_in = ring(ctx, make_invite(dn="5002", sip_call_id="inbound-2@x", from_tag="ft2"), t_index=41, t_label=42)
    ctx.outbox.clear()
    requests = len(ctx.sip.requests)
    other_before = {k: ctx.store.get(CALLS, k) for k in (other.key, other_in.key)}

    connection_closed(ctx, caller)

    assert ctx.sip.cancels == [(ringing_out.sip_call_id, 1)]
    assert ctx.sip.suspended_replies == [(31, 32, 480, "Temporarily Unavailable", "", "")]
    assert len(ctx.sip.requests) == requests + 1
    bye = ctx.sip.last
    assert bye.method == "BYE" and parse_headers(bye.headers)["Call-ID"] == confirmed_out.sip_call_id
    assert sent(ctx) == []  # nobody to tell
    # what is left: the CANCELLING and ENDING calls (until their final replies) and conn2's calls, untouched
    assert sorted(stored_calls(ctx)) == sorted([ringing_out.key, confirmed_out.key, other.key, other_in.key])
    assert Call.load(ctx, ringing_out.key).state == CANCELLING
    on_reply(ctx, reply(inv1, 487, "Request Terminated", to_tag="t1"))
    assert Call.load(ctx, confirmed_out.key).state == ENDING
    assert {k: ctx.store.get(CALLS, k) for k in (other.key, other_in.key)} == other_before
    on_reply(ctx, reply(bye, 200, to_tag="t2"))
    assert sorted(stored_calls(ctx)) == sorted([other.key, other_in.key])
    assert sorted(leg_index(ctx)) == sorted([other.leg_key, other_in.leg_key])


def test_connection_closed_calling_outbound_is_cancelled(ctx, caller):
    call, _ = place(ctx, caller)
    connection_closed(ctx, caller)
    assert ctx.sip.cancels == [(call.sip_call_id, 1)]
    assert sent(ctx) == []


def test_connection_closed_leaves_cancelling_and_ending_to_their_replies(ctx, caller, clock):
    place(ctx, caller, call_id="a")
    hangup(ctx, caller, "h1", CallIdPayload(call_id="a"))
    confirm_outbound(ctx, caller, call_id="b")
    hangup(ctx, caller, "h2", CallIdPayload(call_id="b"))
    ctx.outbox.clear()
    requests, cancels = len(ctx.sip.requests), len(ctx.sip.cancels)
    connection_closed(ctx, caller)
    assert len(ctx.sip.requests) == requests and len(ctx.sip.cancels) == cancels
    assert len(stored_calls(ctx)) == 2  # still waiting for the 487 and the BYE's reply
    clock.advance(32)
    tick(ctx)
    assert_forgotten(ctx)


def test_connection_closed_without_calls(ctx, caller, conn2):
    connection_closed(ctx, conn2)
    connection_closed(ctx, caller)
    assert ctx.sip.requests == [] and ctx.sip.cancels == [] and sent(ctx) == []


def test_200_crossing_close_cancel_is_byed(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, to_tag="t"))
    connection_closed(ctx, caller)
    on_reply(ctx, answered(invite, to_tag="t"))
    assert ctx.sip.last.method == "BYE"
    assert sent(ctx) == [msg("ringing", {"callId": "c1"})]  # nothing for the closed connection after that


def test_call_accepted_carries_setup_timing(ctx, caller, clock):
    _, invite = place(ctx, caller)
    clock.advance(0.05)
    on_reply(ctx, reply(invite, 100))
    clock.advance(0.10)
    on_reply(ctx, reply(invite, 180, to_tag="callee-tag"))
    clock.advance(1.0)
    on_reply(ctx, answered(invite, to_tag="callee-tag"))
    accepted = sent(ctx)[-1]
    assert accepted["type"] == "callAccepted"
    assert accepted["payload"]["timing"] == {"invite": 0, "trying": 50, "ringing": 150, "answered": 1150,
                                             "accepted": 1150}
