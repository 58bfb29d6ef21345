"""wsgw.media: the media relay seam (GW_MEDIA / GW_RTPENGINE config, relay_from_config, RtpEngineRelay over
ng, offer_sdp/answer_sdp tags and sessions, end(), ended_payload) and how calls.py / midcall.py send every
SDP that crosses the gateway through the relay (a FakeRelay records what they ask)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from unittest.mock import ANY

from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from test_calls import (FILTERED_CHROME, PHONE_OFFER, answered, make_invite, place, register, reply, ring)
from test_midcall import (FILTERED_HOLD, HELD_ANSWER, HOLD_SDP, PHONE_HOLD_OFFER, do_hold, far_end, load, offered,
                          sip_reply)
from test_rtpengine_ng import BROWSER_TAG, FakeNgServer, realistic_delete_reply
from wsgw import calls, errors, handlers, media, protocol, registrations
from wsgw.calls import (CANCELLING, CONFIRMED, ENDING, RINGING, Call, CallIdPayload, CallPayload, answer, call_key,
                        connection_closed, hangup, on_remote_bye, on_remote_cancel, on_reply, place_call, reject,
                        ring_inbound, tick)
from wsgw.config import GatewayConfig
from wsgw.errors import GatewayError
from wsgw.media import RtpEngineRelay, end, ended_payload, relay_from_config
from wsgw.midcall import SdpPayload, check_reinvite, hold, offer_update, update_answer
from wsgw.protocol import RegisterPayload
from wsgw.rtpengine_ng import RtpEngineError, bencode, toward_browser, toward_sip
from wsgw.sdp_policy import apply_codec_policy, strip_webrtc_attributes
from wsgw.store import CALLS

CODECS = ("PCMU", "PCMA", "telephone-event")

# What rtpengine 10.5 made of FILTERED_CHROME with toward_sip() (captured on this machine): plain RTP/AVP,
# but still with the browser's WebRTC-only attributes (msid, ssrc, extmap-allow-mixed, msid-semantic).
RELAY_OFFER_TO_SIP = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=extmap-allow-mixed",
    "a=msid-semantic: WMS stream", "m=audio 30600 RTP/AVP 0 8 126", "c=IN IP4 127.0.0.1", "a=msid:stream track",
    "a=ssrc:1001 cname:abc", "a=mid:0", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:126 telephone-event/8000", "a=sendrecv", "a=rtcp:30601", "",
])
# The same after strip_webrtc_attributes (exact text).
STRIPPED_OFFER_TO_SIP = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 30600 RTP/AVP 0 8 126",
    "c=IN IP4 127.0.0.1", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000",
    "a=rtcp:30601", "a=sendrecv", "a=mid:0", "",
])
# The browser's answer toward SIP (inbound calls, updateAnswer), as the relay returns it.
RELAY_ANSWER_TO_SIP = RELAY_OFFER_TO_SIP.replace("30600", "30700").replace("30601", "30701")
# What rtpengine 10.5 made of a phone's SDP with toward_browser() (captured): ICE, DTLS passive, SAVPF, rtcp-mux.
RELAY_TO_BROWSER = "\r\n".join([
    "v=0", "o=phone 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
    "m=audio 30616 UDP/TLS/RTP/SAVPF 0 8", "a=mid:0", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=sendrecv", "a=rtcp:30616", "a=rtcp-mux", "a=setup:passive",
    "a=fingerprint:sha-256 E9:E4:08:DA:DA:42:9F:D8:1C:DA:92:1D:BA:13:0D:11:26:08:7E:2E:97:57:22:99:93:7C:AD:85:"
    "E5:05:D7:F9",
    "a=ice-ufrag:xtOoLUNt", "a=ice-pwd:7hnQLIUTG0Zzsf855ySDP356BP", "a=ice-options:trickle",
    "a=candidate:MePPMNWEXPfAXgz2 1 UDP 2130706431 127.0.0.1 30616 typ host", "a=end-of-candidates", "",
])
RELAY_OFFER_TO_BROWSER = RELAY_TO_BROWSER.replace("30616", "30620")
STATS = {"packetsToSip": 253, "bytesToSip": 43300, "packetsToBrowser": 242, "bytesToBrowser": 41384, "lost": 1}
FILTERED_PCMU_ANSWER = apply_codec_policy(PCMU_ANSWER, CODECS).sdp
RING_TAG = "gw-ring-tag"


class FakeRelay:
    """A MediaRelay that records every call and answers canned SDP; `fail` names operations that raise."""

    def __init__(self) -> None:
        self.offers: list[tuple] = []
        self.answers: list[tuple] = []
        self.deletes: list[tuple] = []
        self.fail: set[str] = set()
        self.stats: dict | None = dict(STATS)

    def offer(self, session: str, from_tag: str, to_tag: str, sdp: str, to_sip: bool) -> str:
        self.offers.append((session, from_tag, to_tag, sdp, to_sip))
        if "offer" in self.fail:
            raise RtpEngineError("rtpengine offer: relay down")
        return RELAY_OFFER_TO_SIP if to_sip else RELAY_OFFER_TO_BROWSER

    def answer(self, session: str, from_tag: str, to_tag: str, sdp: str, to_sip: bool) -> str:
        self.answers.append((session, from_tag, to_tag, sdp, to_sip))
        if "answer" in self.fail:
            raise RtpEngineError("rtpengine answer: relay down")
        return RELAY_ANSWER_TO_SIP if to_sip else RELAY_TO_BROWSER

    def delete(self, session: str, from_tag: str, browser_tag: str) -> dict | None:
        self.deletes.append((session, from_tag, browser_tag))
        if "delete" in self.fail:
            raise RtpEngineError("rtpengine delete: relay down")
        return self.stats


class StatefulRelay(FakeRelay):
    """Like rtpengine: an answer (or a second delete) for a session that was deleted fails."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[str] = set()

    def offer(self, session, from_tag, to_tag, sdp, to_sip):
        self.sessions.add(session)
        return super().offer(session, from_tag, to_tag, sdp, to_sip)

    def answer(self, session, from_tag, to_tag, sdp, to_sip):
        if session not in self.sessions:
            self.answers.append((session, from_tag, to_tag, sdp, to_sip))
            raise RtpEngineError("rtpengine answer: Unknown call-id")
        return super().answer(session, from_tag, to_tag, sdp, to_sip)

    def delete(self, session, from_tag, browser_tag):
        self.sessions.discard(session)
        return super().delete(session, from_tag, browser_tag)


# ---- helpers ----


def msg(msg_type: str, payload: dict, rid: str | None = None) -> dict:
    return protocol.message(msg_type, payload, rid)


def sent(ctx, conn=None) -> list[dict]:
    return ctx.outbox.messages(conn)


def of_type(ctx, msg_type: str) -> list[dict]:
    return [m for m in sent(ctx) if m["type"] == msg_type]


@pytest.fixture
def relay() -> FakeRelay:
    return FakeRelay()


@pytest.fixture
def ctx(make_ctx, relay):
    ctx = make_ctx(embedded=True, media="rtpengine")
    ctx.media = relay
    return ctx


def outbound(ctx, conn, relay) -> tuple[Call, object]:
    """An answered outbound call through the relay; returns (stored call, INVITE); outbox, requests, relay cleared."""
    call, invite = place(ctx, conn)
    on_reply(ctx, answered(invite))
    call = load(ctx, call)
    assert call.state == CONFIRMED
    ctx.outbox.clear()
    ctx.sip.clear()
    relay.offers.clear()
    relay.answers.clear()
    return call, invite


def inbound(ctx, conn, relay, sip_port) -> Call:
    """An answered inbound call through the relay (tm's To tag is the ring tag, as with Kamailio)."""
    sip_port.to_tag = RING_TAG
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    answer(ctx, conn, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    call = load(ctx, call)
    assert call.state == CONFIRMED and call.local_tag == RING_TAG
    ctx.outbox.clear()
    ctx.sip.clear()
    sip_port.suspended_replies.clear()
    relay.offers.clear()
    relay.answers.clear()
    return call


# ---- config: GW_MEDIA, GW_RTPENGINE, GW_ECHO_URI ----


def test_media_config_defaults():
    cfg = GatewayConfig.from_env({})
    assert (cfg.media, cfg.rtpengine, cfg.echo_uri) == ("passthrough", "udp:127.0.0.1:2223", "")
    assert GatewayConfig() == cfg


def test_media_config_from_env_is_stripped():
    cfg = GatewayConfig.from_env({"GW_MEDIA": " rtpengine ", "GW_RTPENGINE": " udp:10.0.0.9:22222 ",
                                  "GW_ECHO_URI": " sip:9196@127.0.0.1:5099 "})
    assert (cfg.media, cfg.rtpengine, cfg.echo_uri) == ("rtpengine", "udp:10.0.0.9:22222", "sip:9196@127.0.0.1:5099")


def test_blank_gw_media_means_passthrough():
    assert GatewayConfig.from_env({"GW_MEDIA": "   "}).media == "passthrough"
    assert GatewayConfig.from_env({"GW_ECHO_URI": "  "}).echo_uri == ""


def test_blank_gw_rtpengine_means_default():
    cfg = GatewayConfig.from_env({"GW_MEDIA": "rtpengine", "GW_RTPENGINE": "  "})
    assert cfg.rtpengine == "udp:127.0.0.1:2223"
    relay = relay_from_config(cfg.media, cfg.rtpengine, cfg.codecs)
    assert relay.ng.addr == ("127.0.0.1", 2223)


# ---- relay_from_config ----


def test_relay_from_config_passthrough_is_none():
    assert relay_from_config("passthrough", "udp:127.0.0.1:2223", CODECS) is None


def test_relay_from_config_rtpengine():
    relay = relay_from_config("rtpengine", "udp:10.0.0.9:22222", ("PCMA", "PCMU"))
    assert isinstance(relay, RtpEngineRelay)
    assert relay.ng.addr == ("10.0.0.9", 22222)
    assert relay.codecs == ("PCMA", "PCMU")


def test_relay_from_config_of_a_config():
    cfg = GatewayConfig.from_env({"GW_MEDIA": "rtpengine", "GW_RTPENGINE": "127.0.0.1:3000", "GW_CODECS": "PCMA"})
    relay = relay_from_config(cfg.media, cfg.rtpengine, cfg.codecs)
    assert relay.ng.addr == ("127.0.0.1", 3000) and relay.codecs == ("PCMA",)


@pytest.mark.parametrize("value", ["RTPENGINE", "rtpengine ", "none", "", "relay"])
def test_relay_from_config_other_values_raise(value):
    with pytest.raises(ValueError, match="GW_MEDIA must be passthrough or rtpengine"):
        relay_from_config(value, "udp:127.0.0.1:2223", CODECS)


# ---- RtpEngineRelay over ng (UDP server on 127.0.0.1) ----


@pytest.fixture
def ng_server():
    server = FakeNgServer()
    yield server
    server.close()


def _sdp_reply(sdp: str):
    return lambda cookie, message: [cookie + b" " + bencode({"result": "ok", "sdp": sdp})]


def test_rtpengine_relay_offer_toward_sip(ng_server):
    ng_server.respond = _sdp_reply(RELAY_OFFER_TO_SIP)
    relay = RtpEngineRelay(ng_server.address, CODECS)
    assert relay.offer("sip-1|o", "ltag", "", FILTERED_CHROME.sdp, to_sip=True) == RELAY_OFFER_TO_SIP
    message = ng_server.requests[0][1]
    assert message == {"command": "offer", "call-id": "sip-1|o", "from-tag": "ltag", "sdp": FILTERED_CHROME.sdp,
                       **toward_sip(CODECS)}
    assert "to-tag" not in message


def test_rtpengine_relay_offer_toward_browser_with_to_tag(ng_server):
    ng_server.respond = _sdp_reply(RELAY_TO_BROWSER)
    relay = RtpEngineRelay(ng_server.address, CODECS)
    assert relay.offer("sip-1|i", "caller", "ours", PHONE_OFFER, to_sip=False) == RELAY_TO_BROWSER
    assert ng_server.requests[0][1] == {"command": "offer", "call-id": "sip-1|i", "from-tag": "caller",
                                        "to-tag": "ours", "sdp": PHONE_OFFER, **toward_browser()}


@pytest.mark.parametrize("to_sip", [True, False])
def test_rtpengine_relay_answer(ng_server, to_sip):
    ng_server.respond = _sdp_reply("v=0\r\nanswer\r\n")
    relay = RtpEngineRelay(ng_server.address, ("PCMA",))
    assert relay.answer("s|o", "ours", "theirs", PCMU_ANSWER, to_sip=to_sip) == "v=0\r\nanswer\r\n"
    flags = toward_sip(("PCMA",)) if to_sip else toward_browser()
    assert ng_server.requests[0][1] == {"command": "answer", "call-id": "s|o", "from-tag": "ours", "to-tag": "theirs",
                                        "sdp": PCMU_ANSWER, **flags}


def test_rtpengine_relay_delete_deletes_now_and_returns_stats(ng_server):
    ng_server.respond = lambda cookie, message: [cookie + b" " + bencode(realistic_delete_reply())]
    stats = RtpEngineRelay(ng_server.address, CODECS).delete("s|o", BROWSER_TAG, BROWSER_TAG)
    assert stats == {"packetsToSip": 253, "bytesToSip": 43300, "packetsToBrowser": 242, "bytesToBrowser": 41384,
                     "lost": 0}
    message = ng_server.requests[0][1]
    assert message["command"] == "delete" and message["call-id"] == "s|o"
    assert message["delete-delay"] == 0


def test_rtpengine_relay_delete_gets_stats_from_rtpengine_10_5(ng_server):
    # Measured with /usr/bin/rtpengine 10.5.3.5: delete with only call-id -> {"result": "ok"};
    # with a from-tag -> the full statistics of both monologues (and the whole call is gone).
    def respond(cookie, message):
        if message.get("from-tag"):
            return [cookie + b" " + bencode(realistic_delete_reply())]
        return [cookie + b" " + bencode({"result": "ok"})]

    ng_server.respond = respond
    stats = RtpEngineRelay(ng_server.address, CODECS).delete("s|o", BROWSER_TAG, BROWSER_TAG)
    assert ng_server.requests[0][1].get("from-tag") == BROWSER_TAG
    assert stats["packetsToSip"] == 253 and stats["packetsToBrowser"] == 242


def test_rtpengine_relay_error_reply_raises(ng_server):
    ng_server.respond = lambda cookie, message: [
        cookie + b" " + bencode({"result": "error", "error-reason": "Unknown call-id"})]
    relay = RtpEngineRelay(ng_server.address, CODECS)
    with pytest.raises(RtpEngineError, match="Unknown call-id"):
        relay.answer("s|o", "a", "b", PCMU_ANSWER, to_sip=False)


def test_rtpengine_relay_through_offer_sdp(ng_server):
    """The real relay behind offer_sdp: the SIP side gets rtpengine's SDP without WebRTC attributes."""
    ng_server.respond = _sdp_reply(RELAY_OFFER_TO_SIP)
    ctx = SimpleNamespace(media=RtpEngineRelay(ng_server.address, CODECS), log=logging.getLogger("wsgw.test"))
    call = SimpleNamespace(sip_call_id="abc@127.0.0.1", direction="outbound", local_tag="L", remote_tag="")
    assert media.offer_sdp(ctx, call, FILTERED_CHROME.sdp, from_browser=True) == STRIPPED_OFFER_TO_SIP
    assert ng_server.requests[0][1]["call-id"] == "abc@127.0.0.1|o"


def test_rtpengine_relay_timeout_becomes_media_unavailable(ng_server):
    ng_server.respond = lambda cookie, message: []
    relay = RtpEngineRelay(ng_server.address, CODECS)
    relay.ng.timeout = 0.2
    ctx = SimpleNamespace(media=relay, log=logging.getLogger("wsgw.test"))
    call = SimpleNamespace(sip_call_id="abc", direction="inbound", local_tag="L", remote_tag="R")
    with pytest.raises(GatewayError) as exc:
        media.offer_sdp(ctx, call, PHONE_OFFER, from_browser=False)
    assert exc.value.code == errors.MEDIA_UNAVAILABLE


# ---- offer_sdp / answer_sdp / end / ended_payload (unit) ----


def _call(direction: str = "outbound", **kw) -> SimpleNamespace:
    base = dict(sip_call_id="abc@127.0.0.1", direction=direction, local_tag="ours", remote_tag="theirs",
                call_id="c1", media_stats=None)
    base.update(kw)
    return SimpleNamespace(**base)


def _ctx(relay) -> SimpleNamespace:
    return SimpleNamespace(media=relay, log=logging.getLogger("wsgw.test"))


def test_passthrough_leaves_sdp_untouched():
    ctx, call = _ctx(None), _call()
    for from_browser in (True, False):
        assert media.offer_sdp(ctx, call, RELAY_OFFER_TO_SIP, from_browser) is RELAY_OFFER_TO_SIP
        assert media.answer_sdp(ctx, call, RELAY_OFFER_TO_SIP, from_browser) is RELAY_OFFER_TO_SIP
    end(ctx, call)
    assert call.media_stats is None


@pytest.mark.parametrize("direction, suffix", [("outbound", "|o"), ("inbound", "|i")])
def test_offer_from_browser_tags_and_strip(relay, direction, suffix):
    out = media.offer_sdp(_ctx(relay), _call(direction), "v=0\r\nbrowser\r\n", from_browser=True)
    assert relay.offers == [("abc@127.0.0.1" + suffix, "ours", "theirs", "v=0\r\nbrowser\r\n", True)]
    assert out == STRIPPED_OFFER_TO_SIP


@pytest.mark.parametrize("direction, suffix", [("outbound", "|o"), ("inbound", "|i")])
def test_offer_from_sip_tags_and_no_strip(relay, direction, suffix):
    out = media.offer_sdp(_ctx(relay), _call(direction), PHONE_OFFER, from_browser=False)
    assert relay.offers == [("abc@127.0.0.1" + suffix, "theirs", "ours", PHONE_OFFER, False)]
    assert out == RELAY_OFFER_TO_BROWSER  # ICE/DTLS attributes are for the browser: kept


def test_answer_from_browser_tags_and_strip(relay):
    out = media.answer_sdp(_ctx(relay), _call("inbound"), FILTERED_PCMU_ANSWER, from_browser=True)
    assert relay.answers == [("abc@127.0.0.1|i", "theirs", "ours", FILTERED_PCMU_ANSWER, True)]
    assert out == strip_webrtc_attributes(RELAY_ANSWER_TO_SIP)
    assert "a=msid" not in out and "m=audio 30700 RTP/AVP 0 8 126" in out


def test_answer_from_sip_tags_and_no_strip(relay):
    out = media.answer_sdp(_ctx(relay), _call("outbound"), PCMU_ANSWER, from_browser=False)
    assert relay.answers == [("abc@127.0.0.1|o", "ours", "theirs", PCMU_ANSWER, False)]
    assert out == RELAY_TO_BROWSER


def test_two_legs_of_one_call_id_are_two_sessions(relay):
    ctx = _ctx(relay)
    media.offer_sdp(ctx, _call("outbound"), "v=0\r\n", from_browser=True)
    media.offer_sdp(ctx, _call("inbound"), "v=0\r\n", from_browser=False)
    assert [o[0] for o in relay.offers] == ["abc@127.0.0.1|o", "abc@127.0.0.1|i"]


@pytest.mark.parametrize("op", ["offer", "answer"])
@pytest.mark.parametrize("from_browser", [True, False])
def test_relay_error_is_media_unavailable(relay, op, from_browser):
    relay.fail.add(op)
    fn = media.offer_sdp if op == "offer" else media.answer_sdp
    with pytest.raises(GatewayError) as exc:
        fn(_ctx(relay), _call(), "v=0\r\n", from_browser=from_browser)
    assert exc.value.code == errors.MEDIA_UNAVAILABLE
    assert exc.value.reason == "the media relay is not available"


def test_other_errors_are_not_swallowed(relay):
    relay.offer = lambda *a, **k: (_ for _ in ()).throw(KeyError("sdp"))
    with pytest.raises(KeyError):
        media.offer_sdp(_ctx(relay), _call(), "v=0\r\n", from_browser=True)


def test_end_deletes_once_and_keeps_stats(relay):
    ctx, call = _ctx(relay), _call("inbound")
    end(ctx, call)
    end(ctx, call)
    assert relay.deletes == [("abc@127.0.0.1|i", "ours", "ours")]  # the browser's tag is ours, both directions
    assert call.media_stats == STATS


def test_end_with_no_stats_records_empty_and_payload_has_no_media(relay):
    relay.stats = None
    ctx, call = _ctx(relay), _call()
    end(ctx, call)
    end(ctx, call)
    assert call.media_stats == {} and len(relay.deletes) == 1
    assert ended_payload(call, "local", "hangup") == {"callId": "c1", "by": "local", "reason": "hangup"}


def test_end_relay_error_is_logged_not_raised(relay, caplog):
    relay.fail.add("delete")
    ctx, call = _ctx(relay), _call()
    with caplog.at_level(logging.WARNING, logger="wsgw.test"):
        end(ctx, call)
    assert call.media_stats is None
    assert "media relay delete call=c1" in caplog.text


def test_ended_payload_with_and_without_stats():
    call = _call(media_stats=None)
    assert ended_payload(call, "remote", "bye") == {"callId": "c1", "by": "remote", "reason": "bye"}
    call.media_stats = dict(STATS)
    assert ended_payload(call, "local", "hangup") == {"callId": "c1", "by": "local", "reason": "hangup",
                                                      "media": STATS}


# ---- outbound calls through the relay ----


def test_place_call_offers_from_the_browser(ctx, caller, relay):
    call, invite = place(ctx, caller)
    assert relay.offers == [(f"{call.sip_call_id}|o", call.local_tag, "", FILTERED_CHROME.sdp, True)]
    assert call.local_tag and call.remote_tag == ""
    assert invite.body == STRIPPED_OFFER_TO_SIP
    for attr in ("a=msid", "a=ssrc", "a=extmap-allow-mixed", "a=ice-", "a=fingerprint", "a=candidate"):
        assert attr not in invite.body
    assert call.local_sdp == STRIPPED_OFFER_TO_SIP
    assert relay.answers == [] and relay.deletes == []


def test_200_goes_through_answer_and_call_accepted_carries_relay_sdp(ctx, caller, relay):
    call, invite = place(ctx, caller)
    ctx.outbox.clear()
    on_reply(ctx, answered(invite, to_tag="callee-tag"))
    assert relay.answers == [(f"{call.sip_call_id}|o", call.local_tag, "callee-tag", PCMU_ANSWER, False)]
    assert sent(ctx) == [msg("callAccepted", {"callId": "c1", "sdp": RELAY_TO_BROWSER,
                                              "codecs": FILTERED_CHROME.codecs, "timing": ANY}, "r1")]
    stored = load(ctx, call)
    assert stored.state == CONFIRMED and stored.remote_sdp == PCMU_ANSWER
    assert stored.local_sdp == STRIPPED_OFFER_TO_SIP


def test_183_early_media_goes_through_answer(ctx, caller, relay):
    call, invite = place(ctx, caller)
    ctx.outbox.clear()
    on_reply(ctx, reply(invite, 183, "Session Progress", to_tag="early-tag", body=PCMU_ANSWER))
    assert relay.answers == [(f"{call.sip_call_id}|o", call.local_tag, "early-tag", PCMU_ANSWER, False)]
    assert sent(ctx) == [msg("progress", {"callId": "c1", "sdp": RELAY_TO_BROWSER})]


def test_183_with_relay_error_sends_no_progress(ctx, caller, relay):
    call, invite = place(ctx, caller)
    ctx.outbox.clear()
    relay.fail.add("answer")
    on_reply(ctx, reply(invite, 183, "Session Progress", to_tag="early-tag", body=PCMU_ANSWER))
    assert sent(ctx) == []
    assert load(ctx, call).state == RINGING


def test_relay_error_on_place_call_is_503_and_no_invite(ctx, caller, relay):
    relay.fail.add("offer")
    place_call(ctx, caller, "r1", CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER))
    assert ctx.sip.requests == []
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 503, "reason": "server_error"}, "r1")]
    assert ctx.store.keys(CALLS) == []
    assert relay.deletes == []


def test_relay_error_on_place_call_through_dispatch(ctx, caller, relay):
    relay.fail.add("offer")
    handlers.dispatch(ctx, caller, protocol.encode(msg("call", {"to": "5002", "callId": "c1", "sdp": CHROME_OFFER},
                                                       "r9")))
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 503, "reason": "server_error"}, "r9")]
    assert ctx.sip.requests == []


def test_relay_error_on_200_ends_the_call(ctx, caller, relay):
    call, invite = place(ctx, caller)
    ctx.outbox.clear()
    relay.fail.add("answer")
    on_reply(ctx, answered(invite))
    assert [r.method for r in ctx.sip.requests[1:]] == ["BYE"]
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 503, "reason": "server_error"}, "r1")]
    assert relay.deletes == [(f"{call.sip_call_id}|o", call.local_tag, call.local_tag)]
    assert load(ctx, call).state == ENDING


def test_hangup_deletes_once_and_call_ended_carries_media(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    assert ctx.sip.last.method == "BYE"
    assert relay.deletes == [(f"{call.sip_call_id}|o", call.local_tag, call.local_tag)]
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "local", "reason": "hangup", "media": STATS}, "h1")]
    assert load(ctx, call).media_stats == STATS
    # The BYE's 200, and a crossing BYE from the far end: no second delete.
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK"))
    assert on_remote_bye(ctx, call.sip_call_id, call.remote_tag, call.local_tag) == 481
    assert len(relay.deletes) == 1


def test_crossing_byes_delete_once(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    assert on_remote_bye(ctx, call.sip_call_id, call.remote_tag, call.local_tag) == 200
    assert len(relay.deletes) == 1 and sent(ctx) == []


def test_remote_bye_deletes_once_and_call_ended_carries_media(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    assert on_remote_bye(ctx, call.sip_call_id, call.remote_tag, call.local_tag) == 200
    assert relay.deletes == [(f"{call.sip_call_id}|o", call.local_tag, call.local_tag)]
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "remote", "reason": "bye", "media": STATS})]


def test_remote_bye_with_relay_delete_error_still_ends_the_call(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    relay.fail.add("delete")
    assert on_remote_bye(ctx, call.sip_call_id, call.remote_tag, call.local_tag) == 200
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "remote", "reason": "bye"})]
    assert ctx.store.keys(CALLS) == []


def test_hangup_while_ringing_cancels_and_deletes_once(ctx, caller, relay):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, 180, "Ringing", to_tag="callee-tag"))
    ctx.outbox.clear()
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    assert ctx.sip.cancels == [(call.sip_call_id, 1)]
    assert relay.deletes == [(f"{call.sip_call_id}|o", call.local_tag, call.local_tag)]
    assert sent(ctx) == [
        msg("callFailed", {"callId": "c1", "code": 487, "reason": "cancelled"}, "r1"),
        msg("callEnded", {"callId": "c1", "by": "local", "reason": "hangup", "media": STATS}, "h1"),
    ]
    assert load(ctx, call).state == CANCELLING
    on_reply(ctx, reply(invite, 487, "Request Terminated", to_tag="callee-tag"))
    assert len(relay.deletes) == 1
    assert ctx.store.keys(CALLS) == []


@pytest.mark.parametrize("status", [486, 404, 503, 603])
def test_final_failure_deletes_once(ctx, caller, relay, status):
    call, invite = place(ctx, caller)
    on_reply(ctx, reply(invite, status, "No", to_tag="callee-tag"))
    assert relay.deletes == [(f"{call.sip_call_id}|o", call.local_tag, call.local_tag)]
    assert of_type(ctx, "callFailed")[0]["payload"]["code"] == status


def test_outbound_timeout_deletes_once(ctx, caller, relay, clock):
    call, _ = place(ctx, caller)
    clock.advance(ctx.config.sip_timeout + 1)
    tick(ctx)
    assert relay.deletes == [(f"{call.sip_call_id}|o", call.local_tag, call.local_tag)]
    clock.advance(60)
    tick(ctx)
    assert len(relay.deletes) == 1


def test_connection_closed_deletes_once(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    connection_closed(ctx, caller)
    assert ctx.sip.last.method == "BYE"
    assert len(relay.deletes) == 1


def test_422_retry_keeps_the_relay_session(ctx, caller):
    relay = StatefulRelay()
    ctx.media = relay
    call, first = place(ctx, caller)
    ctx.outbox.clear()
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "1800"}))
    retry = ctx.sip.last
    assert retry is not first and retry.body == STRIPPED_OFFER_TO_SIP
    on_reply(ctx, answered(retry))
    assert relay.deletes == []
    assert [m["type"] for m in sent(ctx)] == ["callAccepted"]
    assert [r.method for r in ctx.sip.requests] == ["INVITE", "INVITE"]


def test_invite_send_failure_frees_the_relay_session(ctx, caller, relay, sip_port):
    sip_port.result = False
    place_call(ctx, caller, "r1", CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER))
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 503, "reason": "server_error"}, "r1")]
    assert len(relay.offers) == 1
    assert len(relay.deletes) == 1


# ---- inbound calls through the relay ----


def test_incoming_call_carries_the_relays_offer(ctx, caller, relay):
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    assert relay.offers == [("inbound-1@10.0.0.2|i", "caller-tag", RING_TAG, PHONE_OFFER, False)]
    incoming = of_type(ctx, "incomingCall")
    assert incoming == [msg("incomingCall", {"callId": call.call_id, "from": "5002", "displayName": "Bob",
                                             "sdp": RELAY_OFFER_TO_BROWSER})]
    stored = load(ctx, call)
    assert stored.remote_sdp == PHONE_OFFER  # the SIP side's own SDP is what is remembered
    assert relay.answers == [] and relay.deletes == []


def test_incoming_call_rings_every_tab_with_one_relay_offer(ctx, conn, conn2, relay):
    for c in (conn, conn2):
        registrations.register(ctx, c, "r", RegisterPayload(dn="5001", password="secret5001"))
    ctx.outbox.clear()
    ring_inbound(ctx, make_invite(), 11, 22, RING_TAG)
    incoming = of_type(ctx, "incomingCall")
    assert len(incoming) == 2 and {m["payload"]["sdp"] for m in incoming} == {RELAY_OFFER_TO_BROWSER}
    assert len(relay.offers) == 1
    call_id = incoming[0]["payload"]["callId"]
    reject(ctx, conn, "x1", CallIdPayload(call_id=call_id, code=486))
    assert relay.deletes == []  # the other tab still rings
    reject(ctx, conn2, "x2", CallIdPayload(call_id=call_id, code=486))
    assert relay.deletes == [("inbound-1@10.0.0.2|i", RING_TAG, RING_TAG)]


def test_relay_error_on_ring_answers_503(ctx, caller, relay):
    relay.fail.add("offer")
    ring_inbound(ctx, make_invite(), 11, 22, RING_TAG)
    assert ctx.sip.suspended_replies == [(11, 22, 503, "Service Unavailable", "", "")]
    assert sent(ctx) == []
    assert ctx.store.keys(CALLS) == []


def test_answer_goes_through_the_relay(ctx, caller, relay, sip_port):
    sip_port.to_tag = RING_TAG
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    ctx.outbox.clear()
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    assert relay.answers == [("inbound-1@10.0.0.2|i", "caller-tag", RING_TAG, FILTERED_PCMU_ANSWER, True)]
    sip_sdp = strip_webrtc_attributes(RELAY_ANSWER_TO_SIP)
    assert ctx.sip.suspended_replies == [(11, 22, 200, "OK", "Contact: <sip:5001@127.0.0.1:5060>\r\n", sip_sdp)]
    assert "a=msid" not in sip_sdp and "a=ssrc" not in sip_sdp
    assert sent(ctx) == [msg("callAccepted", {"callId": call.call_id, "sdp": FILTERED_PCMU_ANSWER,
                                              "codecs": ["PCMU", "telephone-event"]}, "a1")]
    stored = load(ctx, call)
    assert stored.state == CONFIRMED and stored.local_sdp == sip_sdp and stored.remote_sdp == PHONE_OFFER


def test_relay_error_on_answer_is_media_unavailable(ctx, caller, relay):
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    ctx.outbox.clear()
    relay.fail.add("answer")
    handlers.dispatch(ctx, caller, protocol.encode(msg("answer", {"callId": call.call_id, "sdp": PCMU_ANSWER}, "a1")))
    assert sent(ctx) == [protocol.error_message(errors.MEDIA_UNAVAILABLE, "the media relay is not available", "a1",
                                                "answer")]
    assert ctx.sip.suspended_replies == []  # no 200: the caller keeps ringing
    assert load(ctx, call).state == RINGING


def test_inbound_hangup_deletes_once_with_our_tag(ctx, caller, relay, sip_port):
    call = inbound(ctx, caller, relay, sip_port)
    hangup(ctx, caller, "h1", CallIdPayload(call_id=call.call_id))
    assert relay.deletes == [("inbound-1@10.0.0.2|i", RING_TAG, RING_TAG)]
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "local", "reason": "hangup",
                                           "media": STATS}, "h1")]


def test_inbound_remote_bye_deletes_once(ctx, caller, relay, sip_port):
    call = inbound(ctx, caller, relay, sip_port)
    assert on_remote_bye(ctx, call.sip_call_id, "caller-tag", RING_TAG) == 200
    assert relay.deletes == [("inbound-1@10.0.0.2|i", RING_TAG, RING_TAG)]
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "remote", "reason": "bye", "media": STATS})]


def test_remote_cancel_deletes_once(ctx, caller, relay):
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    ctx.outbox.clear()
    on_remote_cancel(ctx, call.sip_call_id, "caller-tag")
    on_remote_cancel(ctx, call.sip_call_id, "caller-tag")
    assert relay.deletes == [("inbound-1@10.0.0.2|i", RING_TAG, RING_TAG)]
    assert sent(ctx) == [msg("callCancelled", {"callId": call.call_id})]


def test_ring_timeout_deletes_once(ctx, caller, relay, clock):
    ring(ctx, make_invite(), local_tag=RING_TAG)
    clock.advance(ctx.config.ring_timeout + 1)
    tick(ctx)
    tick(ctx)
    assert relay.deletes == [("inbound-1@10.0.0.2|i", RING_TAG, RING_TAG)]


def test_hangup_of_a_ringing_inbound_call_deletes_once(ctx, caller, relay):
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    ctx.outbox.clear()
    hangup(ctx, caller, "h1", CallIdPayload(call_id=call.call_id))
    assert ctx.sip.suspended_replies[-1][2] == 486
    assert relay.deletes == [("inbound-1@10.0.0.2|i", RING_TAG, RING_TAG)]
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "local", "reason": "hangup",
                                           "media": STATS}, "h1")]


def test_reject_deletes_once(ctx, caller, relay):
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    ctx.outbox.clear()
    reject(ctx, caller, "x1", CallIdPayload(call_id=call.call_id, code=603))
    assert ctx.sip.suspended_replies[-1][2:4] == (603, "Decline")
    assert relay.deletes == [("inbound-1@10.0.0.2|i", RING_TAG, RING_TAG)]
    assert of_type(ctx, "callEnded")[0]["payload"]["reason"] == "rejected"


def test_reject_call_ended_carries_media(ctx, caller, relay):
    call = ring(ctx, make_invite(), local_tag=RING_TAG)
    ctx.outbox.clear()
    reject(ctx, caller, "x1", CallIdPayload(call_id=call.call_id, code=486))
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "local", "reason": "rejected",
                                           "media": STATS}, "x1")]


# ---- mid-call: hold/resume and the far end's re-INVITE ----


def test_hold_outbound_goes_through_the_relay(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    reinvite = do_hold(ctx, caller, call)
    session = f"{call.sip_call_id}|o"
    assert relay.offers == [(session, call.local_tag, "callee-tag", FILTERED_HOLD, True)]
    assert reinvite.method == "INVITE" and reinvite.body == STRIPPED_OFFER_TO_SIP
    on_reply(ctx, sip_reply(reinvite, 200, "OK", body=HELD_ANSWER))
    assert relay.answers == [(session, call.local_tag, "callee-tag", HELD_ANSWER, False)]
    assert sent(ctx) == [msg("held", {"callId": "c1", "sdp": RELAY_TO_BROWSER}, "h1")]
    stored = load(ctx, call)
    assert stored.local_sdp == STRIPPED_OFFER_TO_SIP and stored.remote_sdp == HELD_ANSWER


def test_hold_inbound_offers_from_our_tag(ctx, caller, relay, sip_port):
    call = inbound(ctx, caller, relay, sip_port)
    reinvite = do_hold(ctx, caller, call)
    assert relay.offers == [("inbound-1@10.0.0.2|i", RING_TAG, "caller-tag", FILTERED_HOLD, True)]
    assert reinvite.body == STRIPPED_OFFER_TO_SIP
    on_reply(ctx, sip_reply(reinvite, 200, "OK", body=HELD_ANSWER))
    assert relay.answers == [("inbound-1@10.0.0.2|i", RING_TAG, "caller-tag", HELD_ANSWER, False)]
    assert of_type(ctx, "held")[0]["payload"]["sdp"] == RELAY_TO_BROWSER


def test_resume_goes_through_the_relay(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    on_reply(ctx, sip_reply(do_hold(ctx, caller, call), 200, "OK", body=HELD_ANSWER))
    ctx.outbox.clear()
    from test_midcall import FILTERED_RESUME, RESUME_SDP
    from wsgw.midcall import resume
    resume(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=RESUME_SDP))
    assert relay.offers[-1] == (f"{call.sip_call_id}|o", call.local_tag, "callee-tag", FILTERED_RESUME, True)
    on_reply(ctx, sip_reply(ctx.sip.last, 200, "OK", body=PCMU_ANSWER))
    assert relay.answers[-1] == (f"{call.sip_call_id}|o", call.local_tag, "callee-tag", PCMU_ANSWER, False)
    assert sent(ctx) == [msg("resumed", {"callId": "c1", "sdp": RELAY_TO_BROWSER}, "u1")]


def test_hold_relay_error_sends_no_reinvite(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    relay.fail.add("offer")
    handlers.dispatch(ctx, caller, protocol.encode(msg("hold", {"callId": "c1", "sdp": HOLD_SDP}, "h1")))
    assert sent(ctx) == [protocol.error_message(errors.MEDIA_UNAVAILABLE, "the media relay is not available", "h1",
                                                "hold")]
    assert ctx.sip.requests == []
    assert load(ctx, call).reinvite is None and load(ctx, call).state == CONFIRMED


def test_hold_200_relay_error_is_media_unavailable(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    reinvite = do_hold(ctx, caller, call)
    relay.fail.add("answer")
    on_reply(ctx, sip_reply(reinvite, 200, "OK", body=HELD_ANSWER))
    assert sent(ctx) == [protocol.error_message(errors.MEDIA_UNAVAILABLE, "the media relay is not available", "h1",
                                                "hold")]
    assert load(ctx, call).reinvite is None


def test_far_end_reinvite_goes_through_the_relay(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    offered(ctx, call, t_index=81, t_label=82)
    session = f"{call.sip_call_id}|o"
    assert relay.offers == [(session, "callee-tag", call.local_tag, PHONE_HOLD_OFFER, False)]
    assert sent(ctx) == [msg("updateOffer", {"callId": "c1", "sdp": RELAY_OFFER_TO_BROWSER})]
    ctx.outbox.clear()
    update_answer(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=PCMU_ANSWER))
    assert relay.answers == [(session, "callee-tag", call.local_tag, FILTERED_PCMU_ANSWER, True)]
    sip_sdp = strip_webrtc_attributes(RELAY_ANSWER_TO_SIP)
    assert ctx.sip.suspended_replies == [(81, 82, 200, "OK", "Contact: <sip:5001@127.0.0.1:5060>\r\n", sip_sdp)]
    assert sent(ctx) == [msg("updated", {"callId": "c1", "sdp": FILTERED_PCMU_ANSWER}, "u1")]
    stored = load(ctx, call)
    assert stored.local_sdp == sip_sdp and stored.remote_sdp == PHONE_HOLD_OFFER


def test_far_end_reinvite_on_inbound_call_uses_the_callers_tag(ctx, caller, relay, sip_port):
    call = inbound(ctx, caller, relay, sip_port)
    offered(ctx, call)
    assert relay.offers == [("inbound-1@10.0.0.2|i", "caller-tag", RING_TAG, PHONE_HOLD_OFFER, False)]


def test_far_end_reinvite_relay_error_answers_500(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    relay.fail.add("offer")
    inv = far_end(call)
    assert check_reinvite(ctx, inv) is None
    offer_update(ctx, inv, 91, 92)
    assert ctx.sip.suspended_replies == [(91, 92, 500, "Server Internal Error", "", "")]
    assert sent(ctx) == []
    assert load(ctx, call).update_in is None


def test_update_answer_relay_error_is_media_unavailable(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    offered(ctx, call)
    ctx.outbox.clear()
    relay.fail.add("answer")
    with pytest.raises(GatewayError) as exc:
        update_answer(ctx, caller, "u1", SdpPayload(call_id="c1", sdp=PCMU_ANSWER))
    assert exc.value.code == errors.MEDIA_UNAVAILABLE
    assert ctx.sip.suspended_replies == []
    assert load(ctx, call).update_in is not None  # the browser may still answer, or the timer will


def test_session_refresh_without_sdp_does_not_touch_the_relay(ctx, caller, relay):
    call, _ = outbound(ctx, caller, relay)
    immediate = check_reinvite(ctx, far_end(call, ""))
    assert immediate is not None and immediate.code == 200
    assert relay.offers == [] and relay.answers == []


# ---- passthrough (ctx.media is None) ----


@pytest.fixture
def pctx(make_ctx):
    ctx = make_ctx(embedded=True)
    assert ctx.media is None and ctx.config.media == "passthrough"
    return ctx


def test_passthrough_outbound_sdp_untouched(pctx, conn):
    register(pctx, conn, "5001")
    call, invite = place(pctx, conn)
    assert invite.body == FILTERED_CHROME.sdp
    pctx.outbox.clear()
    on_reply(pctx, answered(invite))
    assert sent(pctx) == [msg("callAccepted", {"callId": "c1", "sdp": PCMU_ANSWER,
                                               "codecs": FILTERED_CHROME.codecs, "timing": ANY}, "r1")]
    pctx.outbox.clear()
    hangup(pctx, conn, "h1", CallIdPayload(call_id="c1"))
    assert sent(pctx) == [msg("callEnded", {"callId": "c1", "by": "local", "reason": "hangup"}, "h1")]
    assert load(pctx, call).media_stats is None


def test_passthrough_inbound_sdp_untouched(pctx, conn):
    register(pctx, conn, "5001")
    call = ring(pctx, make_invite())
    assert of_type(pctx, "incomingCall")[0]["payload"]["sdp"] == PHONE_OFFER
    answer(pctx, conn, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    assert pctx.sip.suspended_replies[-1][5] == FILTERED_PCMU_ANSWER
    pctx.outbox.clear()
    assert on_remote_bye(pctx, call.sip_call_id, "caller-tag", "gw-to-tag") == 200
    assert sent(pctx) == [msg("callEnded", {"callId": call.call_id, "by": "remote", "reason": "bye"})]


# ---- proxy_sdp / proxy_end: the SIP proxy path of legacy clients ----


def test_proxy_sdp_from_the_legacy_browser_goes_to_sip_without_webrtc_attributes():
    relay = FakeRelay()
    out = media.proxy_sdp(_ctx(relay), "abc|pc", "F", "", CHROME_OFFER, offer=True, from_ws=True)
    assert out == STRIPPED_OFFER_TO_SIP
    assert relay.offers == [("abc|pc", "F", "", CHROME_OFFER, True)]


def test_proxy_sdp_from_the_sip_side_goes_to_the_browser_as_the_relay_wrote_it():
    relay = FakeRelay()
    out = media.proxy_sdp(_ctx(relay), "abc|pe", "F", "T", PCMU_ANSWER, offer=False, from_ws=False)
    assert out == RELAY_TO_BROWSER
    assert relay.answers == [("abc|pe", "F", "T", PCMU_ANSWER, False)]


def test_proxy_sdp_in_passthrough_changes_nothing():
    assert media.proxy_sdp(_ctx(None), "abc|pc", "F", "", CHROME_OFFER, offer=True, from_ws=True) is CHROME_OFFER
    assert media.proxy_end(_ctx(None), "abc|pc", "F", "F") is None


def test_proxy_sdp_relay_failure_is_media_unavailable():
    relay = FakeRelay()
    relay.fail.add("offer")
    with pytest.raises(GatewayError) as exc:
        media.proxy_sdp(_ctx(relay), "abc|pc", "F", "", CHROME_OFFER, offer=True, from_ws=True)
    assert exc.value.code == errors.MEDIA_UNAVAILABLE


def test_proxy_end_deletes_the_session_and_returns_its_statistics():
    relay = FakeRelay()
    assert media.proxy_end(_ctx(relay), "abc|pe", "F", "T") == STATS
    assert relay.deletes == [("abc|pe", "F", "T")]


def test_proxy_end_relay_failure_is_logged_not_raised(caplog):
    relay = FakeRelay()
    relay.fail.add("delete")
    assert media.proxy_end(_ctx(relay), "abc|pe", "F", "") is None
    assert "abc|pe" in caplog.text
