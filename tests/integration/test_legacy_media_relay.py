"""GW_MEDIA=rtpengine with legacy (JsSIP) clients: the proxy path relays their media.

A legacy browser gets WebRTC SDP from rtpengine (UDP/TLS/RTP/SAVPF, ICE candidates, DTLS
fingerprint), the SIP side plain RTP/AVP, a JSON client what it gets today; two legacy
browsers keep their SDP end to end. Every relay session is gone when the call is over
(hang-up, reject, cancel). Real Kamailio, rtpengine and SIPp.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from harness.gateway import Gateway, embedded_env, wait_no_calls
from harness.ports import free_port
from harness.rtpengine import NgClient, RtpEngine
from harness.sdp import CHROME_OFFER, with_direction
from harness.sipp import Sipp, free_udp_port
from test_legacy_sipws import json_agent, legacy_cancels_call_to_json

pytestmark = pytest.mark.integration

# What a browser answers to rtpengine's WebRTC offer (PCMU/PCMA/telephone-event, DTLS passive):
# its own ICE credentials, candidate and fingerprint, DTLS active. Chrome always says
# `ice-options:trickle`; without it rtpengine 10.5 marks the SIP side's SDP sendonly.
BROWSER_ANSWER = "\r\n".join([
    "v=0", "o=- 7263563746283 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=msid-semantic: WMS stream", "m=audio 9 UDP/TLS/RTP/SAVPF 0 8 126", "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0", "a=candidate:1 1 udp 2122260223 127.0.0.1 50002 typ host generation 0",
    "a=ice-ufrag:wxyz", "a=ice-pwd:zyxwvutsrqponmlkjihgfedc", "a=ice-options:trickle",
    "a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:"
    "09:5E:D6:BC",
    "a=setup:active", "a=mid:0", "a=sendrecv", "a=msid:stream track", "a=rtcp-mux", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000", "a=ssrc:2002 cname:def", "",
])
HOLD_OFFER = with_direction(CHROME_OFFER.replace("4611731400430051336 2 IN", "4611731400430051336 3 IN"), "sendonly")


@pytest.fixture(scope="module")
def rtpengine(workdir: Path) -> Iterator[RtpEngine]:
    relay = RtpEngine(workdir / "rtpengine").start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def echo_port() -> int:
    """The SIP side: the echo extension (9196) goes to a SIPp on this port."""
    return free_port()


@pytest.fixture(scope="module")
def gw(workdir: Path, rtpengine: RtpEngine, echo_port: int) -> Iterator[Gateway]:
    gateway = Gateway(workdir, env=embedded_env(echo_port, GW_MEDIA="rtpengine", GW_RTPENGINE=rtpengine.address,
                                                GW_RESUME_GRACE="0")).start()
    yield gateway
    gateway.stop()


@pytest.fixture(autouse=True)
def no_relay_session_left(rtpengine: RtpEngine) -> Iterator[None]:
    """Every test must end with rtpengine holding no call. Leftovers fail that test and are
    deleted, so that the next tests start clean instead of failing too."""
    yield
    left = rtpengine.wait_no_calls()
    if left:
        for call_id in left:
            NgClient(rtpengine.address).command("delete", **{"call-id": call_id, "delete-delay": 0})
        pytest.fail(f"rtpengine still holds {left} after the test")


def assert_webrtc_from_relay(sdp: str, relay: RtpEngine) -> None:
    """What a browser (legacy or JSON) must get: rtpengine's WebRTC side, not the other browser's SDP."""
    m = re.search(r"^m=audio (\d+) UDP/TLS/RTP/SAVPF ", sdp, re.M)
    assert m and relay.port_min <= int(m.group(1)) <= relay.port_max, sdp
    candidate = re.search(r"^a=candidate:\S+ 1 UDP \d+ 127\.0\.0\.1 (\d+) typ host", sdp, re.M | re.I)
    assert candidate and relay.port_min <= int(candidate.group(1)) <= relay.port_max, sdp
    for attribute in ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:sha-256 ", "a=rtcp-mux"):
        assert attribute in sdp, (attribute, sdp)
    # Not the other browser's credentials (CHROME_OFFER's or BROWSER_ANSWER's).
    assert "a=ice-ufrag:abcd" not in sdp and "a=ice-ufrag:wxyz" not in sdp


def assert_plain_rtp_from_relay(sdp: str, relay: RtpEngine) -> None:
    """What the SIP side must get: RTP/AVP from rtpengine's ports, only GW_CODECS, no WebRTC extras."""
    m = re.search(r"^m=audio (\d+) RTP/AVP ([\d ]+)$", sdp, re.M)
    assert m and relay.port_min <= int(m.group(1)) <= relay.port_max, sdp
    for webrtc_only in ("a=ice-", "a=fingerprint", "a=candidate", "a=setup", "a=extmap", "opus", "SAVPF"):
        assert webrtc_only not in sdp, (webrtc_only, sdp)


def sipp_body(messages: str, first_line: str) -> str:
    """The body of the first message SIPp logged starting with `first_line` (up to the next one)."""
    part = messages.split(first_line, 1)[1]
    return part.split("\n\n", 1)[1].split("---", 1)[0].split("\nBYE ", 1)[0]


def sessions(relay: RtpEngine) -> set[str]:
    return {str(c) for c in relay.calls()}


# ---- JSON <-> legacy ----


@pytest.mark.parametrize("hangup_by", ["json", "legacy"])
def test_json_calls_legacy(gw, rtpengine, legacy_factory, client_factory, hangup_by):
    bob = legacy_factory(gw, "5001")
    alice = json_agent(client_factory, gw, "5002")
    request_id = alice.send("call", {"to": "5001", "callId": "j2l", "sdp": CHROME_OFFER})
    incoming = bob.wait_invite()
    # The JSON client's leg is plain RTP toward SIP; the proxy turns it into WebRTC for the legacy browser.
    assert_webrtc_from_relay(incoming.invite.body, rtpengine)
    bob.ring(incoming)
    assert bob.answer(incoming, BROWSER_ANSWER) is not None
    accepted = alice.wait(lambda m: m.get("id") == request_id)
    assert accepted["type"] == "callAccepted", accepted
    assert_webrtc_from_relay(accepted["payload"]["sdp"], rtpengine)
    # Two relay sessions: the JSON client's leg and the proxy's leg toward the legacy browser.
    assert sessions(rtpengine) == {f"{incoming.call_id}|o", f"{incoming.call_id}|pe"}
    if hangup_by == "json":
        assert alice.request("hangup", {"callId": "j2l"})["type"] == "callEnded"
        bob.answer_bye(incoming)
    else:
        assert bob.bye(incoming).status == 200
        assert alice.wait_for("callEnded", callId="j2l")["payload"]["by"] == "remote"
    assert wait_no_calls(gw)["calls"] == 0


@pytest.mark.parametrize("hangup_by", ["legacy", "json"])
def test_legacy_calls_json(gw, rtpengine, legacy_factory, client_factory, hangup_by):
    alice = legacy_factory(gw, "5003")
    bob = json_agent(client_factory, gw, "5004")
    dialog, _ = alice.invite("5004", CHROME_OFFER, wait_final=False)
    incoming = bob.wait_for("incomingCall")
    offer = incoming["payload"]["sdp"]
    # The JSON client gets what it gets from any SIP caller: rtpengine's WebRTC side.
    assert_webrtc_from_relay(offer, rtpengine)
    call_id = incoming["payload"]["callId"]
    assert bob.request("answer", {"callId": call_id, "sdp": BROWSER_ANSWER})["type"] == "callAccepted"
    final = alice.wait_final(dialog)
    assert final.status == 200
    assert_webrtc_from_relay(final.body, rtpengine)
    assert "a=setup:passive" in final.body
    assert sessions(rtpengine) == {f"{dialog.call_id}|pc", f"{dialog.call_id}|i"}
    if hangup_by == "legacy":
        assert alice.bye(dialog).status == 200
        assert bob.wait_for("callEnded", callId=call_id)["payload"]["by"] == "remote"
    else:
        assert bob.request("hangup", {"callId": call_id})["type"] == "callEnded"
        alice.answer_bye(dialog)
    assert wait_no_calls(gw)["calls"] == 0


def test_legacy_hold_reaches_json_through_the_relay(gw, rtpengine, legacy_factory, client_factory):
    """A legacy re-INVITE (hold) and the JSON client's answer cross the relay like the first offer."""
    alice = legacy_factory(gw, "5005")
    bob = json_agent(client_factory, gw, "5006")
    dialog, _ = alice.invite("5006", CHROME_OFFER, wait_final=False)
    call_id = bob.wait_for("incomingCall")["payload"]["callId"]
    assert bob.request("answer", {"callId": call_id, "sdp": BROWSER_ANSWER})["type"] == "callAccepted"
    assert alice.wait_final(dialog).status == 200
    alice.reinvite(dialog, HOLD_OFFER, wait=False)
    update = bob.wait_for("updateOffer", callId=call_id)["payload"]["sdp"]
    assert_webrtc_from_relay(update, rtpengine)
    assert "a=sendonly" in update
    answered = bob.request("updateAnswer", {"callId": call_id, "sdp": with_direction(BROWSER_ANSWER, "recvonly")})
    assert answered["type"] == "updated", answered
    final = alice.finish_reinvite(dialog)
    assert final.status == 200
    assert_webrtc_from_relay(final.body, rtpengine)
    assert "a=recvonly" in final.body
    assert alice.bye(dialog).status == 200
    assert bob.wait_for("callEnded", callId=call_id)
    assert wait_no_calls(gw)["calls"] == 0


def test_legacy_rejects_json_call(gw, rtpengine, legacy_factory, client_factory):
    bob = legacy_factory(gw, "5007")
    alice = json_agent(client_factory, gw, "5008")
    request_id = alice.send("call", {"to": "5007", "callId": "j2lr", "sdp": CHROME_OFFER})
    incoming = bob.wait_invite()
    bob.reject(incoming, 486, "Busy Here")
    assert alice.wait(lambda m: m.get("id") == request_id)["type"] == "callFailed"


def test_legacy_cancels_call_to_json(gw, rtpengine, legacy_factory, client_factory):
    legacy_cancels_call_to_json(gw, legacy_factory, client_factory, "5009", "5010")  # then no relay session left


def test_legacy_call_to_nobody_frees_the_relay(gw, rtpengine, legacy_factory):
    """The proxy's offer was made before the gateway found nobody there: the failure frees it."""
    alice = legacy_factory(gw, "5001")
    _, final = alice.invite("5002", CHROME_OFFER)  # a subscriber, registered nowhere
    assert final.status == 480


# ---- legacy <-> SIP side ----


def test_legacy_calls_sip_side(gw, rtpengine, legacy_factory, echo_port, tmp_path):
    alice = legacy_factory(gw, "5003")
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=echo_port, timeout=30) as sipp:
        dialog, final = alice.invite("9196", CHROME_OFFER)
        assert final.status == 200, final
        assert_webrtc_from_relay(final.body, rtpengine)
        assert sessions(rtpengine) == {f"{dialog.call_id}|pc"}
        assert alice.bye(dialog).status == 200
        assert sipp.wait(15) == 0, sipp.describe()
    assert_plain_rtp_from_relay(sipp_body(sipp.messages(), "INVITE sip:9196@"), rtpengine)


def test_sip_side_calls_legacy(gw, rtpengine, legacy_factory, tmp_path):
    bob = legacy_factory(gw, "5004")
    with Sipp("uac_call_remote_bye.xml", tmp_path, local_port=free_udp_port(), remote=gw.sip_hostport,
              service="5004", timeout=30) as sipp:
        incoming = bob.wait_invite()
        assert_webrtc_from_relay(incoming.invite.body, rtpengine)
        bob.ring(incoming)
        bob.answer(incoming, BROWSER_ANSWER)
        bob.answer_bye(incoming)
        assert sipp.wait(15) == 0, sipp.describe()
    assert_plain_rtp_from_relay(sipp_body(sipp.messages(), "SIP/2.0 200 OK"), rtpengine)


def test_late_offer_from_sip_side_to_legacy(gw, rtpengine, legacy_factory, tmp_path):
    """INVITE without SDP: the legacy browser's offer (in its 200) reaches SIP as plain RTP, the
    SIP side's answer (in the ACK) reaches the browser as WebRTC."""
    bob = legacy_factory(gw, "5008")
    with Sipp("uac_call_late_offer.xml", tmp_path, local_port=free_udp_port(), remote=gw.sip_hostport,
              service="5008", timeout=30) as sipp:
        incoming = bob.wait_invite()
        assert incoming.invite.body == ""
        ack = bob.answer(incoming, CHROME_OFFER)
        assert ack is not None
        assert_webrtc_from_relay(ack.body, rtpengine)
        assert "a=setup:passive" in ack.body
        bob.answer_bye(incoming)
        assert sipp.wait(15) == 0, sipp.describe()
    assert_plain_rtp_from_relay(sipp_body(sipp.messages(), "SIP/2.0 200 OK"), rtpengine)


# ---- legacy <-> legacy ----


def test_legacy_to_legacy_stays_end_to_end(gw, rtpengine, legacy_factory):
    """Two browsers: their SDP crosses the proxy untouched and rtpengine never sees the call."""
    alice, bob = legacy_factory(gw, "5005"), legacy_factory(gw, "5006")
    dialog, _ = alice.invite("5006", CHROME_OFFER, wait_final=False)
    incoming = bob.wait_invite()
    assert incoming.invite.body == CHROME_OFFER
    bob.answer(incoming, BROWSER_ANSWER, wait_ack=False)
    final = alice.wait_final(dialog)
    assert final.status == 200 and final.body == BROWSER_ANSWER
    assert rtpengine.calls() == []
    alice.bye(dialog, wait=False)
    bob.answer_bye(incoming)
    assert alice.wait_response(dialog.call_id, "BYE").status == 200


# ---- relay down ----


def test_relay_down_refuses_the_legacy_call(workdir, legacy_factory, echo_port):
    """No rtpengine answering: the proxy answers 503 instead of sending SDP nobody can use."""
    gateway = Gateway(workdir, env=embedded_env(echo_port, GW_MEDIA="rtpengine",
                                                GW_RTPENGINE=f"udp:127.0.0.1:{free_udp_port()}")).start()
    try:
        alice = legacy_factory(gateway, "5007")
        _, final = alice.invite("9196", CHROME_OFFER)
        assert final.status == 503, final
    finally:
        gateway.stop()
