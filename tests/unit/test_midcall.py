"""wsgw.midcall: hold/resume re-INVITEs (glare, failures, timeouts), the far end's re-INVITE offered to the
browser (updateOffer/updateAnswer, mirrored answer on timeout), DTMF as SIP INFO both ways."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest
import sdp_transform

from fakes import START_TIME, parse_headers
from harness.sdp import CHROME_OFFER, OPUS_ONLY_OFFER, PCMU_ANSWER, with_direction
from test_calls import CALLEE_TARGET, OPUS_AND_PCMU_ANSWER, PHONE_OFFER, answered, make_invite, place, register, ring
from wsgw import errors, midcall, protocol
from wsgw.calls import (
    CALLING,
    CONFIRMED,
    ENDING,
    RINGING,
    Call,
    CallIdPayload,
    answer,
    hangup,
    on_remote_bye,
    on_reply,
    tick,
)
from wsgw.errors import GatewayError
from wsgw.midcall import (
    DEFAULT_DTMF_MS,
    MAX_491_RETRIES,
    DtmfPayload,
    ImmediateReply,
    Reinvite,
    SdpPayload,
    check_reinvite,
    dtmf,
    glare_backoff,
    hold,
    offer_update,
    on_info_reply,
    on_reinvite_reply,
    on_remote_info,
    parse_dtmf,
    parse_dtmf_info,
    parse_sdp_payload,
    resume,
    update_answer,
)
from wsgw.protocol import ProtocolError
from wsgw.sdp_policy import apply_codec_policy, bump_version, mirror_answer
from wsgw.sip_port import OutgoingRequest, SipReply

CODECS = ("PCMU", "PCMA", "telephone-event")
CONTACT_5001 = "<sip:5001@127.0.0.1:5060>"
CONTACT_HDR = f"Contact: {CONTACT_5001}\r\n"
CHROME_ORIGIN = "o=- 4611731400430051336 2 IN IP4 127.0.0.1"


def browser_sdp(direction: str, version: int) -> str:
    """The browser's re-offer: CHROME_OFFER with o= version `version` and the given direction."""
    sdp = CHROME_OFFER.replace(CHROME_ORIGIN, CHROME_ORIGIN.replace(" 2 IN", f" {version} IN"))
    return with_direction(sdp, direction)


HOLD_SDP = browser_sdp("sendonly", 3)
RESUME_SDP = browser_sdp("sendrecv", 4)
FILTERED_HOLD = apply_codec_policy(HOLD_SDP, CODECS).sdp
FILTERED_RESUME = apply_codec_policy(RESUME_SDP, CODECS).sdp
# The far end's answers / offers.
HELD_ANSWER = with_direction(PCMU_ANSWER, "recvonly")
PHONE_HOLD_OFFER = with_direction(PHONE_OFFER.replace("o=phone 1 1 ", "o=phone 1 2 "), "sendonly")


def version_of(sdp: str) -> int:
    return int(sdp_transform.parse(sdp)["origin"]["sessionVersion"])


def direction_of(sdp: str) -> str:
    return sdp_transform.parse(sdp)["media"][0].get("direction")


# ---- helpers ----


def msg(msg_type: str, payload: dict, rid: str | None = None) -> dict:
    return protocol.message(msg_type, payload, rid)


def err(code: str, rid: str | None, request_type: str) -> tuple:
    return ("error", rid, code, request_type)


def sent(ctx) -> list[dict]:
    return ctx.outbox.messages()


def errors_sent(ctx) -> list[tuple]:
    return [("error", m.get("id"), m["payload"]["code"], m["payload"].get("requestType"))
            for m in sent(ctx) if m["type"] == "error"]


def load(ctx, call: Call) -> Call:
    stored = Call.load(ctx, call.key)
    assert stored is not None
    return stored


def outbound_call(ctx, conn, call_id: str = "c1") -> Call:
    """An answered outbound call 5001 -> 5002 (route set p2, p1; target CALLEE_TARGET); outbox/requests cleared."""
    call, invite = place(ctx, conn, call_id=call_id)
    on_reply(ctx, answered(invite))
    call = load(ctx, call)
    assert call.state == CONFIRMED
    ctx.outbox.clear()
    ctx.sip.clear()
    return call


def inbound_call(ctx, conn) -> Call:
    """An answered inbound call from 5002 (caller-tag) to 5001 (our tag gw-to-tag); outbox/requests cleared."""
    call = ring(ctx, make_invite())
    answer(ctx, conn, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    call = load(ctx, call)
    assert call.state == CONFIRMED
    ctx.outbox.clear()
    ctx.sip.clear()
    ctx.sip.suspended_replies.clear()
    return call


def tag_of(value: str) -> str:
    m = re.search(r";tag=([^;>\s]+)", value)
    assert m, f"no tag in {value!r}"
    return m.group(1)


def sip_reply(request: OutgoingRequest, status: int, reason: str = "", *, body: str = "",
              headers: dict | None = None) -> SipReply:
    """The reply to an in-dialog request as tm reports it (From tag ours, To tag the far end's)."""
    h = parse_headers(request.headers)
    cseq, method = h["CSeq"].split()
    return SipReply(status=status, reason=reason, call_id=h["Call-ID"], cseq=int(cseq), method=method,
                    from_tag=tag_of(h["From"]), to_tag=tag_of(h["To"]),
                    headers={k.lower(): v for k, v in (headers or {}).items()}, body=body)


def cseq_of(request: OutgoingRequest) -> tuple[int, str]:
    number, method = parse_headers(request.headers)["CSeq"].split()
    return int(number), method


def far_end(call: Call, sdp: str = PHONE_HOLD_OFFER) -> Reinvite:
    """A re-INVITE from the far end of `call`: From tag the far end's, To tag ours."""
    return Reinvite(call.sip_call_id, call.remote_tag, call.local_tag, sdp)


def offered(ctx, call: Call, sdp: str = PHONE_HOLD_OFFER, t_index: int = 71, t_label: int = 72) -> None:
    """The far end's re-INVITE passes check_reinvite and is suspended and offered to the browser."""
    inv = far_end(call, sdp)
    assert check_reinvite(ctx, inv) is None
    offer_update(ctx, inv, t_index, t_label)


def do_hold(ctx, conn, call: Call, rid: str | None = "h1", sdp: str = HOLD_SDP) -> OutgoingRequest:
    before = len(ctx.sip.requests)
    hold(ctx, conn, rid, SdpPayload(call_id=call.call_id, sdp=sdp))
    assert len(ctx.sip.requests) == before + 1
    return ctx.sip.last


@pytest.fixture
def out_call(ctx, caller) -> Call:
    return outbound_call(ctx, caller)


@pytest.fixture
def in_call(ctx, caller) -> Call:
    return inbound_call(ctx, caller)


# ---- payload parsers ----


def test_parse_sdp_payload():
    assert parse_sdp_payload({"callId": "c1", "sdp": HOLD_SDP}) == SdpPayload(call_id="c1", sdp=HOLD_SDP)


@pytest.mark.parametrize("payload", [
    {"callId": "c1"},
    {"sdp": HOLD_SDP},
    {},
    {"callId": "c1", "sdp": ""},
    {"callId": "c1", "sdp": "m=audio 9 RTP/AVP 0"},
    {"callId": "c1", "sdp": 7},
    {"callId": "c1", "sdp": None},
    {"callId": "c 1", "sdp": HOLD_SDP},
    {"callId": "c1\r\nX: y", "sdp": HOLD_SDP},
    {"callId": 1, "sdp": HOLD_SDP},
    {"callId": "c1", "sdp": HOLD_SDP, "direction": "sendonly"},
    {"callId": "c1", "sdp": HOLD_SDP, "id": "x"},
])
def test_parse_sdp_payload_invalid(payload):
    with pytest.raises(GatewayError) as exc:
        parse_sdp_payload(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_parse_sdp_payload_unknown_field_is_named():
    with pytest.raises(GatewayError) as exc:
        parse_sdp_payload({"callId": "c1", "sdp": HOLD_SDP, "mute": True})
    assert "unknown field" in exc.value.reason and "mute" in exc.value.reason


@pytest.mark.parametrize("digits", ["0", "0123456789", "*#", "ABCD", "1" * 32, "#" * 32, "12#"])
def test_parse_dtmf_digits_accepted(digits):
    assert parse_dtmf({"callId": "c1", "digits": digits}) == DtmfPayload(call_id="c1", digits=digits,
                                                                           duration_ms=160)


@pytest.mark.parametrize("digits", ["", "1" * 33, "a", "abcd", "E", "1 2", "12\n", "1\r\n", "+", "½", "１",
                                    1, 12, None, ["1"], True])
def test_parse_dtmf_digits_refused(digits):
    with pytest.raises(GatewayError) as exc:
        parse_dtmf({"callId": "c1", "digits": digits})
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_parse_dtmf_digits_required():
    with pytest.raises(GatewayError) as exc:
        parse_dtmf({"callId": "c1"})
    assert exc.value.code == errors.INVALID_PAYLOAD


def test_parse_dtmf_duration_default():
    assert DEFAULT_DTMF_MS == 160
    assert parse_dtmf({"callId": "c1", "digits": "5"}).duration_ms == 160


@pytest.mark.parametrize("duration", [40, 41, 160, 250, 1999, 2000])
def test_parse_dtmf_duration_accepted(duration):
    assert parse_dtmf({"callId": "c1", "digits": "5", "durationMs": duration}).duration_ms == duration


@pytest.mark.parametrize("duration", [39, 2001, 0, -160, 160.0, 40.5, 1e3, True, False, "160", None, [160]])
def test_parse_dtmf_duration_refused(duration):
    with pytest.raises(GatewayError) as exc:
        parse_dtmf({"callId": "c1", "digits": "5", "durationMs": duration})
    assert exc.value.code == errors.INVALID_PAYLOAD


@pytest.mark.parametrize("payload", [
    {"callId": "c1", "digits": "5", "duration": 160},
    {"callId": "c1", "digits": "5", "callid": "c1"},
    {"callId": "c1", "digits": "5", "sdp": HOLD_SDP},
])
def test_parse_dtmf_unknown_fields_refused(payload):
    with pytest.raises(GatewayError) as exc:
        parse_dtmf(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert "unknown field" in exc.value.reason


@pytest.mark.parametrize("payload", [{"digits": "5"}, {"callId": "", "digits": "5"}, {"callId": "c/1", "digits": "5"}])
def test_parse_dtmf_bad_call_id(payload):
    with pytest.raises(GatewayError) as exc:
        parse_dtmf(payload)
    assert exc.value.code == errors.INVALID_PAYLOAD


@pytest.mark.parametrize("frame, expected, parser", [
    ({"type": "hold", "id": "h1", "payload": {"callId": "c1", "sdp": HOLD_SDP}},
     SdpPayload(call_id="c1", sdp=HOLD_SDP), parse_sdp_payload),
    ({"type": "resume", "id": "r1", "payload": {"callId": "c1", "sdp": RESUME_SDP}},
     SdpPayload(call_id="c1", sdp=RESUME_SDP), parse_sdp_payload),
    ({"type": "updateAnswer", "id": "u1", "payload": {"callId": "in-1", "sdp": PCMU_ANSWER}},
     SdpPayload(call_id="in-1", sdp=PCMU_ANSWER), parse_sdp_payload),
    ({"type": "dtmf", "id": "d1", "payload": {"callId": "c1", "digits": "12#", "durationMs": 100}},
     DtmfPayload(call_id="c1", digits="12#", duration_ms=100), parse_dtmf),
    ({"type": "dtmf", "payload": {"callId": "c1", "digits": "9"}}, DtmfPayload(call_id="c1", digits="9"), parse_dtmf),
])
def test_parse_frame_knows_midcall_types(frame, expected, parser):
    parsed = protocol.parse_frame(protocol.encode(frame))
    assert (parsed.type, parsed.id, parsed.payload) == (frame["type"], frame.get("id"), expected)
    assert protocol.REQUEST_TYPES[frame["type"]] is parser


@pytest.mark.parametrize("frame", [
    {"type": "hold", "id": "h9", "payload": {"callId": "c1"}},
    {"type": "resume", "id": "h9", "payload": {"callId": "c1", "sdp": HOLD_SDP, "x": 1}},
    {"type": "updateAnswer", "id": "h9", "payload": {"sdp": PCMU_ANSWER}},
    {"type": "dtmf", "id": "h9", "payload": {"callId": "c1", "digits": "5", "durationMs": True}},
])
def test_parse_frame_midcall_payload_errors_keep_id_and_type(frame):
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_frame(protocol.encode(frame))
    assert (exc.value.code, exc.value.request_id, exc.value.msg_type) == (errors.INVALID_PAYLOAD, "h9", frame["type"])


# ---- hold / resume: refused ----


def test_hold_on_calling_outbound_is_invalid_state(ctx, caller):
    call, _ = place(ctx, caller)
    assert call.state == CALLING
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        hold(ctx, caller, "h1", SdpPayload(call_id="c1", sdp=HOLD_SDP))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == [] and sent(ctx) == []
    assert load(ctx, call).reinvite is None


def test_hold_on_ringing_inbound_is_invalid_state(ctx, caller):
    call = ring(ctx, make_invite())
    assert call.state == RINGING
    for op in (hold, resume):
        with pytest.raises(GatewayError) as exc:
            op(ctx, caller, "h1", SdpPayload(call_id=call.call_id, sdp=HOLD_SDP))
        assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


def test_hold_on_ending_call_is_invalid_state(ctx, caller, out_call):
    hangup(ctx, caller, "x1", CallIdPayload(call_id="c1"))
    assert load(ctx, out_call).state == ENDING
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        hold(ctx, caller, "h1", SdpPayload(call_id="c1", sdp=HOLD_SDP))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


def test_hold_unknown_call_or_other_connection(ctx, caller, conn2, out_call):
    with pytest.raises(GatewayError) as exc:
        hold(ctx, caller, "h1", SdpPayload(call_id="nope", sdp=HOLD_SDP))
    assert exc.value.code == errors.NO_SUCH_CALL
    with pytest.raises(GatewayError) as exc:
        hold(ctx, conn2, "h1", SdpPayload(call_id="c1", sdp=HOLD_SDP))
    assert exc.value.code == errors.NO_SUCH_CALL
    assert ctx.sip.requests == []


def test_hold_with_no_allowed_codec_is_invalid_payload(ctx, caller, out_call):
    with pytest.raises(GatewayError) as exc:
        hold(ctx, caller, "h1", SdpPayload(call_id="c1", sdp=with_direction(OPUS_ONLY_OFFER, "sendonly")))
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert ctx.sip.requests == []
    assert load(ctx, out_call).reinvite is None
    do_hold(ctx, caller, out_call)  # nothing left pending: a good hold goes out


# ---- hold / resume: the re-INVITE ----


def test_hold_sends_in_dialog_invite_outbound(ctx, caller, out_call):
    invite = do_hold(ctx, caller, out_call)
    assert invite.method == "INVITE"
    assert invite.ruri == CALLEE_TARGET
    assert invite.nexthop == "sip:p2.example.net;lr;ftag=x"
    h = parse_headers(invite.headers)
    assert h["From"] == f"<sip:5001@127.0.0.1:5060>;tag={out_call.local_tag}"
    assert h["To"] == "<sip:5002@127.0.0.1:5060>;tag=callee-tag"
    assert h["Call-ID"] == out_call.sip_call_id
    assert h["CSeq"] == "2 INVITE"  # the initial INVITE used 1
    assert h["Contact"] == CONTACT_5001
    assert h["Route"] == "<sip:p2.example.net;lr;ftag=x>, <sip:p1.example.net;lr>"
    assert h["Content-Type"] == "application/sdp"
    assert h["Max-Forwards"] == "70"
    # body: the browser's offer, codec-filtered
    assert invite.body == FILTERED_HOLD
    assert "opus" not in invite.body.lower() and "G722" not in invite.body
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 0 8 126\r\n" in invite.body
    assert "a=sendonly" in invite.body and "a=sendrecv" not in invite.body
    # nothing for the browser until the far end answers
    assert sent(ctx) == []
    stored = load(ctx, out_call)
    assert stored.local_cseq == 2
    assert stored.reinvite["op"] == "hold" and stored.reinvite["request_id"] == "h1"
    assert stored.reinvite["cseq"] == 2 and stored.reinvite["sdp"] == FILTERED_HOLD
    assert stored.reinvite["attempts"] == 0 and stored.reinvite["retry_at"] == 0.0
    assert stored.reinvite["sent_at"] == START_TIME
    assert stored.state == CONFIRMED


def test_hold_sends_in_dialog_invite_inbound(ctx, caller, in_call):
    invite = do_hold(ctx, caller, in_call)
    assert invite.method == "INVITE" and invite.ruri == "sip:5002@10.0.0.2:5062"
    assert invite.nexthop == "sip:p1.example.net;lr"
    h = parse_headers(invite.headers)
    assert h["From"] == "<sip:5001@127.0.0.1:5060>;tag=gw-to-tag"
    assert h["To"] == "<sip:5002@10.0.0.2>;tag=caller-tag"
    assert h["Call-ID"] == "inbound-1@10.0.0.2"
    assert h["CSeq"] == "1 INVITE"  # our own CSeq space on the inbound leg, not the caller's 101
    assert h["Route"] == "<sip:p1.example.net;lr>, <sip:p2.example.net;lr>"
    assert h["Contact"] == CONTACT_5001 and h["Content-Type"] == "application/sdp"
    assert invite.body == FILTERED_HOLD


def test_hold_without_route_set_has_no_route_header(ctx, caller):
    call, invite = place(ctx, caller)
    on_reply(ctx, answered(invite, record_route=None))
    ctx.sip.clear()
    reinvite = do_hold(ctx, caller, load(ctx, call))
    assert "Route" not in parse_headers(reinvite.headers)
    assert reinvite.nexthop == ""


def test_second_hold_while_pending_is_invalid_state(ctx, caller, out_call):
    do_hold(ctx, caller, out_call)
    before = load(ctx, out_call)
    for op, rid in ((hold, "h2"), (resume, "r2")):
        with pytest.raises(GatewayError) as exc:
            op(ctx, caller, rid, SdpPayload(call_id="c1", sdp=RESUME_SDP))
        assert exc.value.code == errors.INVALID_STATE
    assert len(ctx.sip.requests) == 1
    assert load(ctx, out_call) == before  # the pending hold untouched
    assert sent(ctx) == []


def test_hold_200_sends_held(ctx, caller, out_call, clock):
    invite = do_hold(ctx, caller, out_call)
    clock.advance(1)
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    assert sent(ctx) == [msg("held", {"callId": "c1", "sdp": HELD_ANSWER}, "h1")]
    assert ctx.outbox.sent[0][0] == caller
    stored = load(ctx, out_call)
    assert stored.reinvite is None
    assert stored.local_sdp == FILTERED_HOLD
    assert stored.remote_sdp == HELD_ANSWER
    assert stored.state == CONFIRMED
    assert len(ctx.sip.requests) == 1  # tm ACKs the 2xx


def test_hold_200_without_body_keeps_remote_sdp(ctx, caller, out_call):
    invite = do_hold(ctx, caller, out_call)
    on_reply(ctx, sip_reply(invite, 200, "OK"))
    assert sent(ctx) == [msg("held", {"callId": "c1", "sdp": ""}, "h1")]
    stored = load(ctx, out_call)
    assert stored.remote_sdp == PCMU_ANSWER and stored.local_sdp == FILTERED_HOLD


def test_hold_then_resume(ctx, caller, out_call):
    invite = do_hold(ctx, caller, out_call)
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    resume(ctx, caller, "r1", SdpPayload(call_id="c1", sdp=RESUME_SDP))
    reinvite = ctx.sip.last
    assert len(ctx.sip.requests) == 2
    assert cseq_of(reinvite) == (3, "INVITE")  # previous + 1
    assert reinvite.body == FILTERED_RESUME and "a=sendrecv" in reinvite.body
    assert load(ctx, out_call).reinvite["op"] == "resume"
    on_reply(ctx, sip_reply(reinvite, 200, "OK", body=PCMU_ANSWER))
    assert sent(ctx) == [msg("held", {"callId": "c1", "sdp": HELD_ANSWER}, "h1"),
                         msg("resumed", {"callId": "c1", "sdp": PCMU_ANSWER}, "r1")]
    stored = load(ctx, out_call)
    assert stored.reinvite is None and stored.local_sdp == FILTERED_RESUME and stored.remote_sdp == PCMU_ANSWER


def test_hold_inbound_200_is_matched_by_the_caller_tag(ctx, caller, in_call):
    invite = do_hold(ctx, caller, in_call, rid=None)
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    assert sent(ctx) == [msg("held", {"callId": in_call.call_id, "sdp": HELD_ANSWER})]  # no id: none was given
    assert load(ctx, in_call).reinvite is None


def test_cseq_follows_every_in_dialog_request(ctx, caller, out_call):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="1"))
    info = ctx.sip.last
    invite = do_hold(ctx, caller, out_call)
    assert (cseq_of(info), cseq_of(invite)) == ((2, "INFO"), (3, "INVITE"))
    assert load(ctx, out_call).reinvite["cseq"] == 3
    # each reply goes to its own request
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    on_reply(ctx, sip_reply(info, 200, "OK"))
    assert sent(ctx) == [msg("held", {"callId": "c1", "sdp": HELD_ANSWER}, "h1"),
                         msg("dtmfSent", {"callId": "c1", "digits": "1"}, "d1")]


# ---- replies that are ignored ----


@pytest.mark.parametrize("status", [100, 180, 183])
def test_provisional_reply_to_reinvite_is_ignored(ctx, caller, out_call, status):
    invite = do_hold(ctx, caller, out_call)
    before = load(ctx, out_call)
    on_reply(ctx, sip_reply(invite, status, "Ringing", body=HELD_ANSWER))
    assert sent(ctx) == []
    assert load(ctx, out_call) == before


@pytest.mark.parametrize("delta", [-1, 1, 7])
def test_reply_with_another_cseq_is_ignored(ctx, caller, out_call, delta):
    invite = do_hold(ctx, caller, out_call)
    before = load(ctx, out_call)
    stray = sip_reply(invite, 200, "OK", body=HELD_ANSWER)
    stray = replace(stray, cseq=stray.cseq + delta)
    on_reinvite_reply(ctx, load(ctx, out_call), stray)
    assert sent(ctx) == []
    assert load(ctx, out_call) == before
    on_reinvite_reply(ctx, load(ctx, out_call), replace(stray, status=488, reason="Not Acceptable Here"))
    assert sent(ctx) == [] and load(ctx, out_call) == before


def test_retransmitted_200_after_held_sends_nothing_more(ctx, caller, out_call):
    invite = do_hold(ctx, caller, out_call)
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    after = load(ctx, out_call)
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    assert len(sent(ctx)) == 1
    assert load(ctx, out_call) == after


def test_reinvite_reply_without_pending_reinvite_is_ignored(ctx, out_call):
    before = load(ctx, out_call)
    on_reinvite_reply(ctx, before, SipReply(200, "OK", out_call.sip_call_id, 2, "INVITE", out_call.local_tag,
                                            "callee-tag", body=HELD_ANSWER))
    assert sent(ctx) == [] and load(ctx, out_call) == before


# ---- glare: 491 ----


def test_491_schedules_a_retry_outbound(ctx, caller, out_call, clock):
    invite = do_hold(ctx, caller, out_call)
    clock.advance(0.5)
    on_reply(ctx, sip_reply(invite, 491, "Request Pending"))
    assert sent(ctx) == []
    pending = load(ctx, out_call).reinvite
    assert pending is not None and pending["attempts"] == 1
    # RFC 3261 14.1: we generated the Call-ID (outbound): 2.1 - 4 s
    assert 2.1 <= pending["retry_at"] - clock.now <= 4.0
    assert len(ctx.sip.requests) == 1

    # not before retry_at
    clock.now = pending["retry_at"] - 0.01
    tick(ctx)
    assert len(ctx.sip.requests) == 1 and sent(ctx) == []

    clock.now = pending["retry_at"]
    tick(ctx)
    assert len(ctx.sip.requests) == 2
    retry = ctx.sip.last
    assert retry.method == "INVITE" and retry.body == FILTERED_HOLD
    assert cseq_of(retry) == (3, "INVITE")  # a new transaction: a higher CSeq
    assert parse_headers(retry.headers)["Contact"] == CONTACT_5001
    pending = load(ctx, out_call).reinvite
    assert pending["cseq"] == 3 and pending["retry_at"] == 0.0 and pending["sent_at"] == clock.now
    # a late reply to the first INVITE is not mistaken for the retry's
    on_reinvite_reply(ctx, load(ctx, out_call), sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    assert sent(ctx) == []
    # further ticks do not resend
    tick(ctx)
    assert len(ctx.sip.requests) == 2
    on_reply(ctx, sip_reply(retry, 200, "OK", body=HELD_ANSWER))
    assert sent(ctx) == [msg("held", {"callId": "c1", "sdp": HELD_ANSWER}, "h1")]
    assert load(ctx, out_call).reinvite is None


def test_491_backoff_inbound_is_0_to_2_seconds(ctx, caller, in_call, clock):
    invite = do_hold(ctx, caller, in_call)
    on_reply(ctx, sip_reply(invite, 491, "Request Pending"))
    pending = load(ctx, in_call).reinvite
    assert 0.0 <= pending["retry_at"] - clock.now <= 2.0
    clock.advance(2.0)
    tick(ctx)
    assert len(ctx.sip.requests) == 2 and cseq_of(ctx.sip.last) == (2, "INVITE")


def test_glare_backoff_windows(ctx, caller, out_call, in_call):
    random.seed(1234)
    outs = [glare_backoff(load(ctx, out_call)) for _ in range(300)]
    ins = [glare_backoff(load(ctx, in_call)) for _ in range(300)]
    assert all(2.1 <= t <= 4.0 for t in outs)
    assert all(0.0 <= t <= 2.0 for t in ins)
    # actually random, spread over the window
    assert min(outs) < 2.5 and max(outs) > 3.6 and len(set(outs)) > 250
    assert min(ins) < 0.4 and max(ins) > 1.6


def test_491_retries_exhausted_is_peer_rejected(ctx, caller, out_call, clock):
    assert MAX_491_RETRIES == 3
    invite = do_hold(ctx, caller, out_call)
    for attempt in range(1, MAX_491_RETRIES + 1):
        on_reply(ctx, sip_reply(invite, 491, "Request Pending"))
        assert sent(ctx) == []
        assert load(ctx, out_call).reinvite["attempts"] == attempt
        clock.advance(4.01)
        tick(ctx)
        invite = ctx.sip.last
        assert cseq_of(invite) == (2 + attempt, "INVITE")
    assert len(ctx.sip.requests) == 1 + MAX_491_RETRIES
    on_reply(ctx, sip_reply(invite, 491, "Request Pending"))
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "h1", "hold")]
    assert "491" in sent(ctx)[0]["payload"]["reason"]
    stored = load(ctx, out_call)
    assert stored.reinvite is None and stored.state == CONFIRMED
    clock.advance(10)
    tick(ctx)
    assert len(ctx.sip.requests) == 1 + MAX_491_RETRIES and len(sent(ctx)) == 1


# ---- failures ----


@pytest.mark.parametrize("status, reason", [(488, "Not Acceptable Here"), (403, "Forbidden"), (500, "Server Error"),
                                            (603, "Decline")])
def test_failed_reinvite_is_peer_rejected_and_call_stays_up(ctx, caller, out_call, status, reason):
    invite = do_hold(ctx, caller, out_call)
    on_reply(ctx, sip_reply(invite, status, reason))
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "h1", "hold")]
    assert str(status) in sent(ctx)[0]["payload"]["reason"]
    stored = load(ctx, out_call)
    assert stored.state == CONFIRMED
    assert stored.reinvite is None
    assert stored.local_sdp == out_call.local_sdp and stored.remote_sdp == PCMU_ANSWER  # previous media kept
    # the call can go on: a new hold goes out
    do_hold(ctx, caller, out_call, rid="h2")
    assert cseq_of(ctx.sip.last) == (3, "INVITE")


def test_failed_resume_names_resume(ctx, caller, out_call):
    resume(ctx, caller, "r1", SdpPayload(call_id="c1", sdp=RESUME_SDP))
    on_reply(ctx, sip_reply(ctx.sip.last, 488, "Not Acceptable Here"))
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "r1", "resume")]


def test_reinvite_not_answered_is_an_error(ctx, caller, out_call, clock):
    invite = do_hold(ctx, caller, out_call)
    clock.advance(ctx.config.sip_timeout)
    tick(ctx)
    assert sent(ctx) == [] and load(ctx, out_call).reinvite is not None
    clock.advance(0.5)
    tick(ctx)
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "h1", "hold")]
    stored = load(ctx, out_call)
    assert stored.reinvite is None and stored.state == CONFIRMED
    assert len(ctx.sip.requests) == 1  # no retry, no BYE
    # a late 200 changes nothing
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    assert len(sent(ctx)) == 1
    tick(ctx)
    assert len(sent(ctx)) == 1


def test_retry_not_answered_is_an_error(ctx, caller, out_call, clock):
    invite = do_hold(ctx, caller, out_call)
    on_reply(ctx, sip_reply(invite, 491, "Request Pending"))
    clock.advance(ctx.config.sip_timeout + 1)  # well past retry_at: the timeout counts from the retry
    tick(ctx)
    assert len(ctx.sip.requests) == 2 and sent(ctx) == []
    clock.advance(ctx.config.sip_timeout)
    tick(ctx)
    assert sent(ctx) == []
    clock.advance(1)
    tick(ctx)
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "h1", "hold")]


def test_hold_while_update_offer_pending_is_invalid_state(ctx, caller, out_call):
    offered(ctx, out_call)
    ctx.outbox.clear()
    with pytest.raises(GatewayError) as exc:
        hold(ctx, caller, "h1", SdpPayload(call_id="c1", sdp=HOLD_SDP))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []


def test_retry_waits_while_far_end_offer_pending(ctx, caller, out_call, clock):
    invite = do_hold(ctx, caller, out_call)
    on_reply(ctx, sip_reply(invite, 491, "Request Pending"))
    retry_at = load(ctx, out_call).reinvite["retry_at"]
    # our INVITE is not in flight any more: the far end's own re-INVITE is let through
    offered(ctx, out_call)
    ctx.outbox.clear()
    clock.now = retry_at
    tick(ctx)
    assert len(ctx.sip.requests) == 1  # the far end's offer/answer goes first
    assert load(ctx, out_call).reinvite["retry_at"] == clock.now + 1
    update_answer(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=PCMU_ANSWER))
    clock.advance(1)
    tick(ctx)
    assert len(ctx.sip.requests) == 2 and ctx.sip.last.body == FILTERED_HOLD
    assert cseq_of(ctx.sip.last) == (3, "INVITE")


# ---- the far end's re-INVITE: check_reinvite ----


def test_check_reinvite_unknown_dialog_is_481(ctx, out_call):
    assert check_reinvite(ctx, Reinvite("nope@x", "callee-tag", out_call.local_tag, PHONE_HOLD_OFFER)) == \
        ImmediateReply(481, "Call/Transaction Does Not Exist")
    assert check_reinvite(ctx, Reinvite(out_call.sip_call_id, "callee-tag", "not-ours", PHONE_HOLD_OFFER)).code == 481
    assert sent(ctx) == []


def test_check_reinvite_with_offer_is_suspended(ctx, out_call, in_call):
    for call in (out_call, in_call):
        before = load(ctx, call)
        assert check_reinvite(ctx, far_end(call)) is None
        assert load(ctx, call) == before  # checking changes nothing
    assert sent(ctx) == [] and ctx.sip.requests == [] and ctx.sip.suspended_replies == []


def test_check_reinvite_491_while_our_reinvite_in_flight(ctx, caller, out_call):
    invite = do_hold(ctx, caller, out_call)
    assert check_reinvite(ctx, far_end(out_call)) == ImmediateReply(491, "Request Pending")
    # once our INVITE got its 491 and waits to retry, the far end's goes first
    on_reply(ctx, sip_reply(invite, 491, "Request Pending"))
    assert check_reinvite(ctx, far_end(out_call)) is None


def test_check_reinvite_491_when_not_confirmed(ctx, caller, out_call):
    hangup(ctx, caller, "x1", CallIdPayload(call_id="c1"))
    assert check_reinvite(ctx, far_end(out_call)).code == 491


def test_check_reinvite_500_while_another_waits_for_the_browser(ctx, out_call):
    offered(ctx, out_call)
    random.seed(7)
    seen = set()
    for _ in range(60):
        immediate = check_reinvite(ctx, far_end(out_call, with_direction(PHONE_OFFER, "inactive")))
        assert (immediate.code, immediate.reason, immediate.body) == (500, "Server Internal Error", "")
        m = re.fullmatch(r"Retry-After: (\d+)\r\n", immediate.headers)
        assert m, immediate.headers
        seen.add(int(m.group(1)))
    assert seen <= set(range(0, 11)) and len(seen) > 3  # RFC 3261 14.2: random, 0-10 s
    assert load(ctx, out_call).update_in["t_index"] == 71  # the waiting one is untouched


def test_check_reinvite_without_sdp_answers_with_our_last_sdp(ctx, out_call, in_call):
    for call in (out_call, in_call):
        immediate = check_reinvite(ctx, far_end(call, ""))
        assert (immediate.code, immediate.reason) == (200, "OK")
        assert immediate.headers == CONTACT_HDR
        assert immediate.body == bump_version(call.local_sdp)
        assert version_of(immediate.body) == version_of(call.local_sdp) + 1
        assert immediate.body.replace(" 3 IN IP4", " 2 IN IP4", 1) == call.local_sdp  # only o= changed
    assert sent(ctx) == [] and ctx.sip.suspended_replies == []
    # the inbound call's answer was the browser's PCMU answer (o=- 1 2); the refresh above sent
    # (and kept) version 3, so the next one must be 4 (RFC 3264 8: a version is never reused)
    assert check_reinvite(ctx, far_end(in_call, "")).body.startswith("v=0\r\no=- 1 4 IN IP4 127.0.0.1\r\n")


# ---- the far end's re-INVITE: offer_update / update_answer ----


def test_offer_update_sends_update_offer(ctx, caller, out_call, clock):
    offered(ctx, out_call, t_index=71, t_label=72)
    assert sent(ctx) == [msg("updateOffer", {"callId": "c1", "sdp": PHONE_HOLD_OFFER})]
    assert ctx.outbox.sent[0][0] == caller
    assert load(ctx, out_call).update_in == {"t_index": 71, "t_label": 72, "offer": PHONE_HOLD_OFFER,
                                             "deadline": clock.now + ctx.config.update_timeout}
    assert ctx.sip.suspended_replies == [] and ctx.sip.requests == []


def test_offer_update_for_a_vanished_call_answers_481(ctx, out_call):
    inv = Reinvite("gone@x", "a", "b", PHONE_HOLD_OFFER)
    offer_update(ctx, inv, 5, 6)
    assert ctx.sip.suspended_replies == [(5, 6, 481, "Call/Transaction Does Not Exist", "", "")]
    assert sent(ctx) == []


def test_update_answer_replies_200_and_updated(ctx, caller, in_call):
    offered(ctx, in_call, t_index=81, t_label=82)
    ctx.outbox.clear()
    update_answer(ctx, caller, "u1", SdpPayload(call_id=in_call.call_id, sdp=OPUS_AND_PCMU_ANSWER))
    filtered = apply_codec_policy(OPUS_AND_PCMU_ANSWER, CODECS).sdp
    assert "opus" not in filtered.lower()
    assert ctx.sip.suspended_replies == [(81, 82, 200, "OK", CONTACT_HDR, filtered)]
    assert sent(ctx) == [msg("updated", {"callId": in_call.call_id, "sdp": filtered}, "u1")]
    stored = load(ctx, in_call)
    assert stored.update_in is None
    assert stored.local_sdp == filtered and stored.remote_sdp == PHONE_HOLD_OFFER
    assert ctx.sip.requests == []
    # answered once: a second updateAnswer has nothing to answer
    with pytest.raises(GatewayError) as exc:
        update_answer(ctx, caller, "u2", SdpPayload(call_id=in_call.call_id, sdp=PCMU_ANSWER))
    assert exc.value.code == errors.INVALID_STATE
    assert len(ctx.sip.suspended_replies) == 1


def test_update_answer_without_offer_is_invalid_state(ctx, caller, out_call):
    with pytest.raises(GatewayError) as exc:
        update_answer(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=PCMU_ANSWER))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.suspended_replies == [] and sent(ctx) == []
    assert load(ctx, out_call) == out_call


def test_update_answer_other_connection_or_unknown_call(ctx, caller, conn2, out_call):
    offered(ctx, out_call)
    for conn, call_id in ((conn2, "c1"), (caller, "nope")):
        with pytest.raises(GatewayError) as exc:
            update_answer(ctx, conn, "u1", SdpPayload(call_id=call_id, sdp=PCMU_ANSWER))
        assert exc.value.code == errors.NO_SUCH_CALL
    assert ctx.sip.suspended_replies == []
    assert load(ctx, out_call).update_in is not None


def test_update_answer_with_no_allowed_codec_keeps_the_offer_waiting(ctx, caller, out_call):
    offered(ctx, out_call)
    with pytest.raises(GatewayError) as exc:
        update_answer(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=OPUS_ONLY_OFFER))
    assert exc.value.code == errors.INVALID_PAYLOAD
    assert ctx.sip.suspended_replies == []
    assert load(ctx, out_call).update_in["t_index"] == 71
    update_answer(ctx, caller, "u2", SdpPayload(call_id="c1", sdp=PCMU_ANSWER))
    assert [r[2] for r in ctx.sip.suspended_replies] == [200]


def test_update_answer_when_transaction_gone_sends_updated_without_sdp(ctx, caller, out_call, sip_port):
    offered(ctx, out_call)
    ctx.outbox.clear()
    sip_port.to_tag = None  # the re-INVITE was answered/cancelled already
    update_answer(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=PCMU_ANSWER))
    assert len(ctx.sip.suspended_replies) == 1 and ctx.sip.suspended_replies[0][2] == 200
    assert sent(ctx) == [msg("updated", {"callId": "c1"}, "u1")]
    stored = load(ctx, out_call)
    assert stored.update_in is None
    assert stored.local_sdp == out_call.local_sdp and stored.remote_sdp == out_call.remote_sdp


@pytest.mark.parametrize("offer_direction, answer_direction", [
    ("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"), ("sendrecv", "sendrecv")])
def test_browser_silent_gateway_answers_mirrored(ctx, caller, out_call, clock, offer_direction, answer_direction):
    offer = with_direction(PHONE_OFFER.replace("o=phone 1 1 ", "o=phone 1 2 "), offer_direction)
    offered(ctx, out_call, sdp=offer, t_index=91, t_label=92)
    ctx.outbox.clear()
    clock.advance(ctx.config.update_timeout - 0.01)
    tick(ctx)
    assert ctx.sip.suspended_replies == [] and load(ctx, out_call).update_in is not None
    clock.advance(0.01)
    tick(ctx)
    expected = mirror_answer(out_call.local_sdp, offer)
    assert ctx.sip.suspended_replies == [(91, 92, 200, "OK", CONTACT_HDR, expected)]
    body = ctx.sip.suspended_replies[0][5]
    assert f"a={answer_direction}\r\n" in body
    assert direction_of(body) == answer_direction
    assert version_of(body) == version_of(out_call.local_sdp) + 1
    assert "opus" not in body.lower()
    stored = load(ctx, out_call)
    assert stored.update_in is None
    assert stored.local_sdp == expected and stored.remote_sdp == offer
    assert stored.state == CONFIRMED
    # answered once; the browser's late answer finds nothing to answer
    tick(ctx)
    assert len(ctx.sip.suspended_replies) == 1
    with pytest.raises(GatewayError) as exc:
        update_answer(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=PCMU_ANSWER))
    assert exc.value.code == errors.INVALID_STATE


# ---- DTMF out ----


def test_dtmf_on_unanswered_call_is_invalid_state(ctx, caller):
    place(ctx, caller)
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="1"))
    assert exc.value.code == errors.INVALID_STATE
    assert ctx.sip.requests == []
    with pytest.raises(GatewayError) as exc:
        dtmf(ctx, caller, "d1", DtmfPayload(call_id="nope", digits="1"))
    assert exc.value.code == errors.NO_SUCH_CALL


def test_dtmf_sends_one_info_per_digit(ctx, caller, out_call):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="12#"))
    assert len(ctx.sip.requests) == 1
    info = ctx.sip.last
    assert info.method == "INFO" and info.ruri == CALLEE_TARGET and info.nexthop == "sip:p2.example.net;lr;ftag=x"
    h = parse_headers(info.headers)
    assert h["From"] == f"<sip:5001@127.0.0.1:5060>;tag={out_call.local_tag}"
    assert h["To"] == "<sip:5002@127.0.0.1:5060>;tag=callee-tag"
    assert h["Call-ID"] == out_call.sip_call_id
    assert h["CSeq"] == "2 INFO"
    assert h["Content-Type"] == "application/dtmf-relay"
    assert h["Contact"] == CONTACT_5001
    assert h["Route"] == "<sip:p2.example.net;lr;ftag=x>, <sip:p1.example.net;lr>"
    assert info.body == "Signal=1\r\nDuration=160\r\n"
    assert sent(ctx) == []

    on_reply(ctx, sip_reply(info, 200, "OK"))
    assert len(ctx.sip.requests) == 2 and sent(ctx) == []
    info = ctx.sip.last
    assert cseq_of(info) == (3, "INFO") and info.body == "Signal=2\r\nDuration=160\r\n"

    on_reply(ctx, sip_reply(info, 200, "OK"))
    info = ctx.sip.last
    assert cseq_of(info) == (4, "INFO") and info.body == "Signal=#\r\nDuration=160\r\n"
    assert sent(ctx) == []

    on_reply(ctx, sip_reply(info, 200, "OK"))
    assert sent(ctx) == [msg("dtmfSent", {"callId": "c1", "digits": "12#"}, "d1")]
    assert ctx.outbox.sent[0][0] == caller
    assert len(ctx.sip.requests) == 3
    stored = load(ctx, out_call)
    assert stored.dtmf == [] and stored.dtmf_cseq == 0


def test_dtmf_duration_and_inbound_leg(ctx, caller, in_call):
    dtmf(ctx, caller, None, DtmfPayload(call_id=in_call.call_id, digits="D", duration_ms=250))
    info = ctx.sip.last
    h = parse_headers(info.headers)
    assert h["From"] == "<sip:5001@127.0.0.1:5060>;tag=gw-to-tag" and h["To"] == "<sip:5002@10.0.0.2>;tag=caller-tag"
    assert h["CSeq"] == "1 INFO"
    assert info.body == "Signal=D\r\nDuration=250\r\n"
    on_reply(ctx, sip_reply(info, 200, "OK"))
    assert sent(ctx) == [msg("dtmfSent", {"callId": in_call.call_id, "digits": "D"})]


def test_two_dtmf_requests_queue_in_order(ctx, caller, out_call):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="1"))
    dtmf(ctx, caller, "d2", DtmfPayload(call_id="c1", digits="2*", duration_ms=100))
    assert len(ctx.sip.requests) == 1  # one INFO at a time
    assert [q[0] for q in load(ctx, out_call).dtmf] == ["d1", "d2"]
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK"))
    assert sent(ctx) == [msg("dtmfSent", {"callId": "c1", "digits": "1"}, "d1")]
    assert ctx.sip.last.body == "Signal=2\r\nDuration=100\r\n" and cseq_of(ctx.sip.last) == (3, "INFO")
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK"))
    assert ctx.sip.last.body == "Signal=*\r\nDuration=100\r\n" and cseq_of(ctx.sip.last) == (4, "INFO")
    assert len(sent(ctx)) == 1
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK"))
    assert sent(ctx) == [msg("dtmfSent", {"callId": "c1", "digits": "1"}, "d1"),
                         msg("dtmfSent", {"callId": "c1", "digits": "2*"}, "d2")]
    assert len(ctx.sip.requests) == 3
    assert load(ctx, out_call).dtmf == []


@pytest.mark.parametrize("status", [400, 415, 481, 488, 500, 603])
def test_info_rejected_fails_that_request_and_continues(ctx, caller, out_call, status):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="12"))
    dtmf(ctx, caller, "d2", DtmfPayload(call_id="c1", digits="3"))
    on_reply(ctx, sip_reply(ctx.sip.last, status, "No"))
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "d1", "dtmf")]
    reason = sent(ctx)[0]["payload"]["reason"]
    assert str(status) in reason and "12" in reason
    # the rest of d1 is dropped; d2 goes on
    assert len(ctx.sip.requests) == 2
    assert ctx.sip.last.body == "Signal=3\r\nDuration=160\r\n"
    assert [q[0] for q in load(ctx, out_call).dtmf] == ["d2"]
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK"))
    assert sent(ctx)[1:] == [msg("dtmfSent", {"callId": "c1", "digits": "3"}, "d2")]
    assert len(ctx.sip.requests) == 2


def test_info_rejected_after_some_digits(ctx, caller, out_call):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="123"))
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK"))
    on_reply(ctx, sip_reply(ctx.sip.last, 486, "Busy"))
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "d1", "dtmf")]
    assert "23" in sent(ctx)[0]["payload"]["reason"]
    stored = load(ctx, out_call)
    assert stored.dtmf == [] and stored.dtmf_cseq == 0
    assert len(ctx.sip.requests) == 2 and stored.state == CONFIRMED


@pytest.mark.parametrize("status", [100, 180])
def test_info_provisional_is_ignored(ctx, caller, out_call, status):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="12"))
    before = load(ctx, out_call)
    on_reply(ctx, sip_reply(ctx.sip.last, status, "Trying"))
    assert sent(ctx) == [] and len(ctx.sip.requests) == 1 and load(ctx, out_call) == before


def test_info_reply_with_another_cseq_is_ignored(ctx, caller, out_call):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="12"))
    before = load(ctx, out_call)
    stray = sip_reply(ctx.sip.last, 200, "OK")
    for cseq in (stray.cseq - 1, stray.cseq + 1):
        on_info_reply(ctx, load(ctx, out_call), replace(stray, cseq=cseq))
    assert sent(ctx) == [] and len(ctx.sip.requests) == 1 and load(ctx, out_call) == before


def test_info_reply_without_queue_is_ignored(ctx, out_call):
    on_info_reply(ctx, load(ctx, out_call), SipReply(200, "OK", out_call.sip_call_id, 0, "INFO"))
    assert sent(ctx) == [] and ctx.sip.requests == []


def test_info_not_answered_is_an_error_and_queue_continues(ctx, caller, out_call, clock):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="12"))
    first = ctx.sip.last
    clock.advance(1)
    dtmf(ctx, caller, "d2", DtmfPayload(call_id="c1", digits="9"))
    clock.advance(ctx.config.sip_timeout - 1)
    tick(ctx)
    assert sent(ctx) == [] and len(ctx.sip.requests) == 1
    clock.advance(0.5)
    tick(ctx)
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "d1", "dtmf")]
    assert "12" in sent(ctx)[0]["payload"]["reason"]
    assert len(ctx.sip.requests) == 2 and ctx.sip.last.body == "Signal=9\r\nDuration=160\r\n"
    # a late 200 to the first INFO is not taken for the second one's
    on_reply(ctx, sip_reply(first, 200, "OK"))
    assert len(sent(ctx)) == 1 and len(ctx.sip.requests) == 2
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK"))
    assert sent(ctx)[1:] == [msg("dtmfSent", {"callId": "c1", "digits": "9"}, "d2")]


def test_info_not_answered_last_request(ctx, caller, out_call, clock):
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="5"))
    clock.advance(ctx.config.sip_timeout + 0.5)
    tick(ctx)
    assert errors_sent(ctx) == [err(errors.PEER_REJECTED, "d1", "dtmf")]
    stored = load(ctx, out_call)
    assert stored.dtmf == [] and stored.dtmf_cseq == 0
    clock.advance(60)
    tick(ctx)
    assert len(sent(ctx)) == 1 and len(ctx.sip.requests) == 1


def test_dtmf_while_hold_pending_is_allowed(ctx, caller, out_call):
    invite = do_hold(ctx, caller, out_call)
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="7"))
    info = ctx.sip.last
    assert (cseq_of(invite), cseq_of(info)) == ((2, "INVITE"), (3, "INFO"))
    assert load(ctx, out_call).reinvite["cseq"] == 2
    on_reply(ctx, sip_reply(info, 200, "OK"))
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER))
    assert sent(ctx) == [msg("dtmfSent", {"callId": "c1", "digits": "7"}, "d1"),
                         msg("held", {"callId": "c1", "sdp": HELD_ANSWER}, "h1")]


# ---- DTMF in ----


@pytest.mark.parametrize("content_type, body, expected", [
    ("application/dtmf-relay", "Signal=5\r\nDuration=250\r\n", ("5", 250)),
    ("application/dtmf-relay", "Signal=#\r\nDuration=100\r\n", ("#", 100)),
    ("application/dtmf-relay", "Signal=*\r\n", ("*", DEFAULT_DTMF_MS)),
    ("application/dtmf-relay", "Signal=a\r\nDuration=160\r\n", ("A", 160)),
    ("application/dtmf-relay", "Signal=d\nDuration=90\n", ("D", 90)),
    ("application/dtmf-relay", " Signal = 7 \r\n Duration = 300 \r\n", ("7", 300)),
    ("application/dtmf-relay", "Duration=120\r\nSignal=0\r\n", ("0", 120)),
    ("Application/DTMF-Relay; charset=utf-8", "Signal=9\r\nDuration=160\r\n", ("9", 160)),
    ("application/dtmf", "5", ("5", DEFAULT_DTMF_MS)),
    ("application/dtmf", "#\r\n", ("#", DEFAULT_DTMF_MS)),
    ("application/dtmf", " b ", ("B", DEFAULT_DTMF_MS)),
    ("APPLICATION/DTMF", "*", ("*", DEFAULT_DTMF_MS)),
])
def test_parse_dtmf_info(content_type, body, expected):
    assert parse_dtmf_info(content_type, body) == expected


@pytest.mark.parametrize("content_type, body", [
    ("application/dtmf-relay", ""),
    ("application/dtmf-relay", "Duration=160\r\n"),
    ("application/dtmf-relay", "Signal=E\r\nDuration=160\r\n"),
    ("application/dtmf-relay", "Signal=\r\n"),
    ("application/dtmf-relay", "Signal=12\r\n"),
    ("application/dtmf", "12"),
    ("application/dtmf", ""),
    ("application/dtmf", "E"),
    ("text/plain", "Signal=5\r\nDuration=160\r\n"),
    ("application/sdp", PCMU_ANSWER),
    ("", "Signal=5\r\n"),
    ("application/dtmf-relayx", "Signal=5\r\n"),
])
def test_parse_dtmf_info_refused(content_type, body):
    assert parse_dtmf_info(content_type, body) is None


def test_remote_info_dtmf_received(ctx, caller, out_call, in_call):
    assert on_remote_info(ctx, out_call.sip_call_id, "callee-tag", out_call.local_tag, "application/dtmf-relay",
                          "Signal=5\r\nDuration=250\r\n") == 200
    assert on_remote_info(ctx, in_call.sip_call_id, "caller-tag", "gw-to-tag", "application/dtmf", "#") == 200
    assert sent(ctx) == [msg("dtmfReceived", {"callId": "c1", "digit": "5", "durationMs": 250}),
                         msg("dtmfReceived", {"callId": in_call.call_id, "digit": "#", "durationMs": 160})]
    assert all(c == caller for c, _ in ctx.outbox.sent)
    assert "id" not in sent(ctx)[0]  # an event, not a reply


def test_remote_info_unknown_dialog_is_481(ctx, out_call):
    assert on_remote_info(ctx, "nope@x", "callee-tag", out_call.local_tag, "application/dtmf", "5") == 481
    assert on_remote_info(ctx, out_call.sip_call_id, "callee-tag", "not-ours", "application/dtmf", "5") == 481
    assert sent(ctx) == []


def test_remote_info_without_body_is_200_and_silent(ctx, out_call):
    # RFC 6086: an empty INFO carries no package; the gateway just accepts it.
    assert on_remote_info(ctx, out_call.sip_call_id, "callee-tag", out_call.local_tag, "", "") == 200
    assert sent(ctx) == []


@pytest.mark.parametrize("content_type, body", [("application/sdp", PCMU_ANSWER),
                                                ("application/dtmf-relay", "Flash=1\r\n")])
def test_remote_info_unsupported_is_415(ctx, out_call, content_type, body):
    assert on_remote_info(ctx, out_call.sip_call_id, "callee-tag", out_call.local_tag, content_type, body) == 415
    assert sent(ctx) == []
    assert load(ctx, out_call) == out_call


# ---- known bugs (pinned; remove the xfail with the fix) ----


def test_2xx_to_reinvite_refreshes_the_remote_target(ctx, caller, out_call):
    invite = do_hold(ctx, caller, out_call)
    on_reply(ctx, sip_reply(invite, 200, "OK", body=HELD_ANSWER,
                            headers={"Contact": "<sip:5002@10.0.0.99:5099;transport=udp>"}))
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="1"))
    assert ctx.sip.last.ruri == "sip:5002@10.0.0.99:5099;transport=udp"


def test_offerless_refresh_version_is_not_reused(ctx, out_call, clock):
    refresh = check_reinvite(ctx, far_end(out_call, ""))
    assert refresh.code == 200 and "a=sendrecv" in refresh.body
    offered(ctx, out_call, sdp=PHONE_HOLD_OFFER, t_index=91, t_label=92)
    clock.advance(ctx.config.update_timeout)
    tick(ctx)
    auto = ctx.sip.suspended_replies[-1][5]
    assert "a=recvonly" in auto  # different media description ...
    assert version_of(auto) > version_of(refresh.body)  # ... so it needs a new version


def test_hold_between_check_and_offer_update_is_glare(ctx, caller, out_call):
    inv = far_end(out_call)
    assert check_reinvite(ctx, inv) is None  # lock released; the adapter now sends 100 and suspends
    do_hold(ctx, caller, out_call)  # the browser's hold arrives on another worker meanwhile
    offer_update(ctx, inv, 71, 72)
    stored = load(ctx, out_call)
    assert not (stored.reinvite and stored.update_in), "our re-INVITE and the far end's both in progress"


def test_two_far_end_offers_leave_no_orphan_transaction(ctx, out_call):
    first, second = far_end(out_call), far_end(out_call, with_direction(PHONE_OFFER, "inactive"))
    assert check_reinvite(ctx, first) is None
    assert check_reinvite(ctx, second) is None  # before the first one was offered
    offer_update(ctx, first, 1, 1)
    offer_update(ctx, second, 2, 2)
    pending = load(ctx, out_call).update_in
    answered_t = {(r[0], r[1]) for r in ctx.sip.suspended_replies}
    for t in ((1, 1), (2, 2)):
        assert t in answered_t or (pending and (pending["t_index"], pending["t_label"]) == t), f"{t} orphaned"


@pytest.mark.parametrize("end", ["remote_bye", "hangup"])
def test_pending_midcall_requests_get_a_final_reply_when_the_call_ends(ctx, caller, out_call, clock, end):
    do_hold(ctx, caller, out_call)
    dtmf(ctx, caller, "d1", DtmfPayload(call_id="c1", digits="1"))
    if end == "remote_bye":
        assert on_remote_bye(ctx, out_call.sip_call_id, "callee-tag", out_call.local_tag) == 200
    else:
        hangup(ctx, caller, "x1", CallIdPayload(call_id="c1"))
    clock.advance(60)
    tick(ctx)
    ids = [m.get("id") for m in sent(ctx)]
    assert ids.count("h1") == 1 and ids.count("d1") == 1, sent(ctx)
