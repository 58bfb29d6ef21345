"""Legacy JsSIP clients side by side with JSON clients on the same WebSocket port.

A legacy client (tests/harness/sipws.py, JsSIP-like) speaks SIP over the WebSocket;
the gateway is its registrar (embedded mode, digest against the subscriber file) and
a plain proxy: legacy <-> legacy, legacy <-> JSON client, legacy <-> SIP side.
SDP crosses the proxy untouched (media stays end to end between the browsers).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway, embedded_env, health, wait_no_calls
from harness.ports import free_port
from harness.sdp import CHROME_OFFER, PCMU_ANSWER, with_direction
from harness.sipp import Sipp, free_udp_port
from harness.sipws import SipWsClient, digest_header, uri_of
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration

# What the legacy callee answers: another browser's SDP (WebRTC, kept as is end to end).
LEGACY_ANSWER = CHROME_OFFER.replace("a=setup:actpass", "a=setup:active").replace("ice-ufrag:abcd", "ice-ufrag:wxyz")
# A browser's new offer in the same session (hold): next o= version, direction sendonly.
HOLD_OFFER = with_direction(CHROME_OFFER.replace("4611731400430051336 2 IN", "4611731400430051336 3 IN"), "sendonly")


@pytest.fixture(scope="module")
def echo_port() -> int:
    """The SIP side in embedded mode: the echo extension (9196) goes to a SIPp on this port."""
    return free_port()


@pytest.fixture(scope="module")
def gw(workdir: Path, echo_port: int) -> Iterator[Gateway]:
    # GW_RESUME_GRACE=0: a closed JSON client is gone at once, so DNs can be reused between tests.
    gateway = Gateway(workdir, env=embedded_env(echo_port, GW_RESUME_GRACE="0")).start()
    yield gateway
    gateway.stop()


def json_agent(client_factory, gateway: Gateway, dn: str) -> WsClient:
    agent = client_factory(gateway)
    assert agent.register(dn, PASSWORDS[dn])["type"] == "registered"
    return agent


# ---- registration ----


def test_register_is_challenged_then_accepted(gw, legacy_factory):
    client = legacy_factory(gw, "5001", register=False)
    first = client.send_register(600, "")
    assert first.status == 401
    challenge = first.get("WWW-Authenticate")
    assert challenge.startswith("Digest ") and 'qop="auth"' in challenge and 'realm="gw.test"' in challenge
    ok = client.register()
    assert ok.status == 200, ok
    # The binding is the client's Contact, reachable through its WebSocket (received=).
    contact = ok.get("Contact")
    assert uri_of(contact) == client.contact_uri
    assert re.search(r"expires=\d+", contact) and "received=" in contact
    assert client.unregister().status == 200


@pytest.mark.parametrize("dn,password", [("5002", "wrong"), ("7777", "whatever")])
def test_register_with_wrong_credentials_is_refused(gw, legacy_factory, dn, password):
    client = legacy_factory(gw, dn, register=False)
    reply = client.register(password=password)
    assert reply.status == 403, reply
    # The same connection may still register with the right password.
    if dn in PASSWORDS:
        assert client.register().status == 200


def test_auth_user_must_be_the_registered_user(gw, legacy_factory):
    """The digest username is the DN registered (To user): 5003's password cannot register 5004."""
    client = legacy_factory(gw, "5004", register=False)
    first = client.send_register(600, "")
    auth = digest_header(first.get("WWW-Authenticate"), "REGISTER", "sip:gw.test", "5003", PASSWORDS["5003"])
    assert client.send_register(600, auth).status == 403



def test_failed_registers_lock_out_legacy_and_json_alike(workdir, client_factory):
    """Wrong SIP digests count toward the same lockout as JSON `register` (per DN and per IP)."""
    gateway = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS),
                                    "GW_AUTH_FAIL_LIMIT": "2", "GW_AUTH_LOCKOUT": "60"}).start()
    try:
        client = SipWsClient(gateway.ws_url, "5001", PASSWORDS["5001"])
        try:
            assert client.register(password="wrong").status == 403
            assert client.register(password="wrong").status == 403
            locked = client.register()  # the right password, but locked out now
            assert (locked.status, locked.first_line.split(" ", 2)[2]) == (403, "Too Many Failed Attempts")
        finally:
            client.close()
        reply = client_factory(gateway).register("5001", PASSWORDS["5001"])
        assert reply["type"] == "error" and reply["payload"]["code"] == "rate_limited", reply
    finally:
        gateway.stop()

def test_unregistered_legacy_user_is_not_rung(gw, legacy_factory, client_factory):
    legacy = legacy_factory(gw, "5005")
    assert legacy.unregister().status == 200
    caller = json_agent(client_factory, gw, "5006")
    reply = caller.request("call", {"to": "5005", "callId": "gone", "sdp": CHROME_OFFER})
    assert reply["type"] == "callFailed" and reply["payload"]["code"] == 480, reply
    legacy.assert_no_request("INVITE", 0.3)


def test_closed_websocket_removes_the_binding(gw, legacy_factory, client_factory):
    legacy = legacy_factory(gw, "5007")
    legacy.close()
    caller = json_agent(client_factory, gw, "5008")
    reply = caller.request("call", {"to": "5007", "callId": "closed", "sdp": CHROME_OFFER})
    assert reply["type"] == "callFailed" and reply["payload"]["code"] == 480, reply


# ---- legacy <-> legacy ----


@pytest.mark.parametrize("hangup_by", ["caller", "callee"])
def test_legacy_to_legacy_call(gw, legacy_factory, hangup_by):
    alice, bob = legacy_factory(gw, "5001"), legacy_factory(gw, "5002")
    dialog, provisional = alice.invite("5002", CHROME_OFFER, wait_final=False)
    # The INVITE needed credentials (407), then went on.
    assert any(m.status == 407 for m in alice.received)
    incoming = bob.wait_invite()
    assert incoming.invite.body == CHROME_OFFER  # SDP untouched
    assert incoming.route_set and ";lr" in incoming.route_set[0]  # record-routed
    assert "Proxy-Authorization" not in [n for n, _ in incoming.invite.headers]  # credentials consumed
    bob.ring(incoming)
    bob.answer(incoming, LEGACY_ANSWER, wait_ack=False)
    final = alice.wait_final(dialog)
    assert final.status == 200 and final.body == LEGACY_ANSWER
    assert bob.wait_request("ACK", call_id=dialog.call_id)
    # The BYE crosses the proxy (loose routing on our Record-Route) in either direction.
    by, other, by_dialog, other_dialog = ((alice, bob, dialog, incoming) if hangup_by == "caller"
                                          else (bob, alice, incoming, dialog))
    by.bye(by_dialog, wait=False)
    other.answer_bye(other_dialog)
    assert by.wait_response(dialog.call_id, "BYE").status == 200


def test_preloaded_route_is_dropped(gw, legacy_factory):
    """JsSIP with use_preloaded_route sends Route: <the server>; the proxy routes by itself."""
    alice = SipWsClient(gw.ws_url, "5001", PASSWORDS["5001"],
                        preloaded_route=f"<sip:127.0.0.1:{gw.ws_port};transport=ws;lr>")
    try:
        assert alice.register().status == 200
        bob = legacy_factory(gw, "5002")
        dialog, _ = alice.invite("5002", CHROME_OFFER, wait_final=False)
        incoming = bob.wait_invite()
        assert incoming.invite.all("Route") == []
        bob.reject(incoming, 486, "Busy Here")
        assert alice.wait_final(dialog).status == 486
    finally:
        alice.close()


def test_legacy_cancel_reaches_legacy_callee(gw, legacy_factory):
    alice, bob = legacy_factory(gw, "5003"), legacy_factory(gw, "5004")
    dialog, _ = alice.invite("5004", CHROME_OFFER, wait_final=False)
    incoming = bob.wait_invite()
    bob.ring(incoming)
    alice.wait_response(dialog.call_id, "INVITE", final=False)  # 100 or 180
    assert alice.cancel(dialog).status == 200
    cancel = bob.wait_request("CANCEL", call_id=dialog.call_id)
    bob.respond(cancel, 200, "OK")
    bob.respond(incoming.invite, 487, "Request Terminated", incoming.local_tag)
    assert alice.wait_final(dialog).status == 487


def _legacy_pair_call(gw, legacy_factory, caller_dn, callee_dn):
    alice, bob = legacy_factory(gw, caller_dn), legacy_factory(gw, callee_dn)
    dialog, _ = alice.invite(callee_dn, CHROME_OFFER, wait_final=False)
    incoming = bob.wait_invite()
    bob.answer(incoming, LEGACY_ANSWER, wait_ack=False)
    assert alice.wait_final(dialog).status == 200
    bob.wait_request("ACK", call_id=dialog.call_id)
    return alice, bob, dialog, incoming


def test_legacy_in_dialog_requests_both_ways(gw, legacy_factory):
    """re-INVITE (hold), its ACK, UPDATE and INFO cross the proxy in both directions, bodies untouched."""
    alice, bob, dialog, incoming = _legacy_pair_call(gw, legacy_factory, "5009", "5010")
    held = HOLD_OFFER
    alice.reinvite(dialog, held, wait=False)
    reinvite = bob.wait_request("INVITE", call_id=dialog.call_id)
    assert reinvite.body == held and reinvite.to_tag == incoming.local_tag
    bob.respond(reinvite, 200, "OK", headers=[("Contact", f"<{bob.contact_uri}>")],
                body=with_direction(LEGACY_ANSWER, "recvonly"))
    assert alice.finish_reinvite(dialog).body == with_direction(LEGACY_ANSWER, "recvonly")
    assert bob.wait_request("ACK", call_id=dialog.call_id).cseq == reinvite.cseq
    for sender, receiver, sender_dialog, method, body, ctype in (
            (bob, alice, incoming, "UPDATE", LEGACY_ANSWER, "application/sdp"),
            (bob, alice, incoming, "INFO", "Signal=5\r\nDuration=160\r\n", "application/dtmf-relay"),
            (alice, bob, dialog, "INFO", "Signal=#\r\nDuration=100\r\n", "application/dtmf-relay")):
        sender.send_in_dialog(sender_dialog, method, body, ctype)
        request = receiver.wait_request(method, call_id=dialog.call_id)
        assert request.body == body and request.get("Content-Type") == ctype
        receiver.respond(request, 200, "OK")
        assert sender.wait_response(dialog.call_id, method).status == 200
    alice.bye(dialog, wait=False)
    bob.answer_bye(incoming)
    assert alice.wait_response(dialog.call_id, "BYE").status == 200



def test_legacy_invite_with_wrong_password_is_refused(gw, legacy_factory):
    alice = legacy_factory(gw, "5005")
    legacy_factory(gw, "5006")
    _, final = alice.invite("5006", CHROME_OFFER, password="wrong")
    assert final.status == 403


def test_legacy_call_to_unknown_number(gw, legacy_factory):
    alice = legacy_factory(gw, "5001")
    _, final = alice.invite("4999", CHROME_OFFER)
    assert final.status == 404
    _, final = alice.invite("5009", CHROME_OFFER)  # a subscriber, registered nowhere
    assert final.status == 480


# ---- legacy <-> SIP side ----


def test_legacy_calls_sip_side(gw, legacy_factory, echo_port, tmp_path):
    """Dial-plan routing to the SIP side (the echo extension's SIPp); SIPp waits for our BYE."""
    alice = legacy_factory(gw, "5007")
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=echo_port, timeout=30) as sipp:
        dialog, final = alice.invite("9196", CHROME_OFFER)
        assert final.status == 200, final
        assert "m=audio" in final.body and "RTP/AVP" in final.body  # the SIP side's SDP, untouched
        assert alice.bye(dialog).status == 200
        assert sipp.wait(15) == 0, sipp.describe()
    messages = sipp.messages()
    assert "INVITE sip:9196@127.0.0.1" in messages
    assert "UDP/TLS/RTP/SAVPF" in messages  # the browser's offer reached SIP as sent


def test_sip_side_calls_legacy_user(gw, legacy_factory, tmp_path):
    """A SIP caller (PBX) rings a DN that a legacy client registered; it answers; the caller hangs up."""
    bob = legacy_factory(gw, "5008")
    with Sipp("uac_call_remote_bye.xml", tmp_path, local_port=free_udp_port(), remote=gw.sip_hostport,
              service="5008", timeout=30) as sipp:
        incoming = bob.wait_invite()
        assert "RTP/AVP" in incoming.invite.body
        bob.ring(incoming)
        bob.answer(incoming, PCMU_ANSWER)
        bob.answer_bye(incoming)
        assert sipp.wait(15) == 0, sipp.describe()
    assert "180 Ringing" in sipp.messages()


# ---- JSON <-> legacy ----


@pytest.mark.parametrize("hangup_by", ["json", "legacy"])
def test_json_calls_legacy(gw, legacy_factory, client_factory, hangup_by):
    bob = legacy_factory(gw, "5009")
    alice = json_agent(client_factory, gw, "5010")
    request_id = alice.send("call", {"to": "5009", "callId": "j2l", "sdp": CHROME_OFFER})
    incoming = bob.wait_invite()
    assert incoming.invite.get("From").find("5010") > 0
    assert incoming.route_set  # the gateway stays on the path (its own JSON leg's dialog)
    bob.ring(incoming)
    assert alice.wait_for("ringing", callId="j2l")
    ack = bob.answer(incoming, PCMU_ANSWER)
    assert ack is not None
    accepted = alice.wait(lambda m: m.get("id") == request_id)
    assert accepted["type"] == "callAccepted", accepted
    assert accepted["payload"]["sdp"] == PCMU_ANSWER  # the legacy browser's answer, as sent
    if hangup_by == "json":
        ended = alice.request("hangup", {"callId": "j2l"})
        assert ended["type"] == "callEnded" and ended["payload"]["by"] == "local"
        bob.answer_bye(incoming)
    else:
        assert bob.bye(incoming).status == 200
        ended = alice.wait_for("callEnded", callId="j2l")
        assert ended["payload"]["by"] == "remote"
    assert wait_no_calls(gw)["calls"] == 0


def test_json_cancels_call_to_legacy(gw, legacy_factory, client_factory):
    bob = legacy_factory(gw, "5001")
    alice = json_agent(client_factory, gw, "5002")
    request_id = alice.send("call", {"to": "5001", "callId": "j2lc", "sdp": CHROME_OFFER})
    incoming = bob.wait_invite()
    bob.ring(incoming)
    alice.wait_for("ringing", callId="j2lc")
    assert alice.request("hangup", {"callId": "j2lc"})["type"] == "callEnded"
    cancel = bob.wait_request("CANCEL", call_id=incoming.call_id)
    bob.respond(cancel, 200, "OK")
    bob.respond(incoming.invite, 487, "Request Terminated", incoming.local_tag)
    assert alice.wait(lambda m: m.get("id") == request_id)["type"] == "callFailed"
    assert wait_no_calls(gw)["calls"] == 0


def test_legacy_rejects_json_call(gw, legacy_factory, client_factory):
    bob = legacy_factory(gw, "5003")
    alice = json_agent(client_factory, gw, "5004")
    request_id = alice.send("call", {"to": "5003", "callId": "j2lr", "sdp": CHROME_OFFER})
    incoming = bob.wait_invite()
    bob.reject(incoming, 486, "Busy Here")
    failed = alice.wait(lambda m: m.get("id") == request_id)
    assert failed["type"] == "callFailed" and failed["payload"]["reason"] == "busy"


@pytest.mark.parametrize("hangup_by", ["legacy", "json"])
def test_legacy_calls_json(gw, legacy_factory, client_factory, hangup_by):
    alice = legacy_factory(gw, "5005")
    bob = json_agent(client_factory, gw, "5006")
    dialog, _ = alice.invite("5006", CHROME_OFFER, wait_final=False)
    incoming = bob.wait_for("incomingCall")
    assert incoming["payload"]["from"] == "5005"
    assert incoming["payload"]["sdp"] == CHROME_OFFER  # the legacy browser's offer, as sent
    call_id = incoming["payload"]["callId"]
    accepted = bob.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})
    assert accepted["type"] == "callAccepted", accepted
    final = alice.wait_final(dialog)  # ACKed by wait_final
    assert final.status == 200 and final.body == PCMU_ANSWER
    assert dialog.route_set and dialog.remote_target.startswith("sip:5006@")
    if hangup_by == "legacy":
        assert alice.bye(dialog).status == 200
        assert bob.wait_for("callEnded", callId=call_id)["payload"]["by"] == "remote"
    else:
        # The 200 was ACKed: the gateway stops retransmitting it and the call stays up.
        bob.assert_no_message(0.6, "callEnded")
        ended = bob.request("hangup", {"callId": call_id})
        assert ended["type"] == "callEnded"
        alice.answer_bye(dialog)
    assert wait_no_calls(gw)["calls"] == 0


def test_legacy_and_json_mid_call(gw, legacy_factory, client_factory):
    """Mid-call both ways between a legacy caller and a JSON callee: the legacy re-INVITE reaches the
    JSON client as updateOffer, its INFO as dtmfReceived; the JSON hold and dtmf reach the legacy client."""
    alice = legacy_factory(gw, "5001")
    bob = json_agent(client_factory, gw, "5002")
    dialog, _ = alice.invite("5002", CHROME_OFFER, wait_final=False)
    call_id = bob.wait_for("incomingCall")["payload"]["callId"]
    assert bob.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
    assert alice.wait_final(dialog).status == 200
    # legacy -> JSON
    held = HOLD_OFFER
    alice.reinvite(dialog, held, wait=False)
    offer = bob.wait_for("updateOffer", callId=call_id)
    assert offer["payload"]["sdp"] == held
    assert bob.request("updateAnswer", {"callId": call_id, "sdp": with_direction(PCMU_ANSWER, "recvonly")})[
        "type"] == "updated"
    assert alice.finish_reinvite(dialog).status == 200
    alice.send_in_dialog(dialog, "INFO", "Signal=7\r\nDuration=160\r\n", "application/dtmf-relay")
    assert alice.wait_response(dialog.call_id, "INFO").status == 200
    assert bob.wait_for("dtmfReceived", callId=call_id)["payload"]["digit"] == "7"
    # JSON -> legacy (the legacy dialog's remote target is the JSON leg's Contact: requests come back round)
    request_id = bob.send("hold", {"callId": call_id, "sdp": with_direction(PCMU_ANSWER, "sendonly")})
    reinvite = alice.wait_request("INVITE", call_id=dialog.call_id)
    alice.respond(reinvite, 200, "OK", headers=[("Contact", f"<{alice.contact_uri}>")],
                  body=with_direction(CHROME_OFFER, "recvonly"))
    assert bob.wait(lambda m: m.get("id") == request_id)["type"] == "held"
    assert alice.wait_request("ACK", call_id=dialog.call_id).cseq == reinvite.cseq
    request_id = bob.send("dtmf", {"callId": call_id, "digits": "1"})
    info = alice.wait_request("INFO", call_id=dialog.call_id)
    alice.respond(info, 200, "OK")
    assert bob.wait(lambda m: m.get("id") == request_id)["type"] == "dtmfSent"
    assert alice.bye(dialog).status == 200
    assert bob.wait_for("callEnded", callId=call_id)["payload"]["by"] == "remote"
    assert wait_no_calls(gw)["calls"] == 0



def legacy_cancels_call_to_json(gw, legacy_factory, client_factory, caller: str, callee: str) -> None:
    """A legacy client CANCELs its INVITE to a ringing JSON client (test_legacy_media_relay too)."""
    alice = legacy_factory(gw, caller)
    bob = json_agent(client_factory, gw, callee)
    dialog, _ = alice.invite(callee, CHROME_OFFER, wait_final=False)
    call_id = bob.wait_for("incomingCall")["payload"]["callId"]
    assert alice.cancel(dialog).status == 200
    assert bob.wait_for("callCancelled", callId=call_id)
    assert alice.wait_final(dialog).status == 487
    assert wait_no_calls(gw)["calls"] == 0


def test_legacy_cancels_call_to_json(gw, legacy_factory, client_factory):
    legacy_cancels_call_to_json(gw, legacy_factory, client_factory, "5007", "5008")


def test_json_rejects_legacy_call(gw, legacy_factory, client_factory):
    alice = legacy_factory(gw, "5009")
    bob = json_agent(client_factory, gw, "5010")
    dialog, _ = alice.invite("5010", CHROME_OFFER, wait_final=False)
    call_id = bob.wait_for("incomingCall")["payload"]["callId"]
    assert bob.request("reject", {"callId": call_id, "code": 603})["type"] == "callEnded"
    assert alice.wait_final(dialog).status == 603


# ---- operators see legacy registrations ----


def metrics_text(gateway: Gateway) -> str:
    with urllib.request.urlopen(gateway.http_url + "/metrics", timeout=5) as resp:
        return resp.read().decode()


def wait_legacy_registrations(gateway: Gateway, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = health(gateway)["legacyRegistrations"]
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        count = health(gateway)["legacyRegistrations"]
    return count


def test_legacy_registrations_in_health_and_metrics(workdir, legacy_factory, client_factory):
    """/health `legacyRegistrations` and the wsgw_legacy_registrations gauge count DNs with a legacy
    binding (usrloc): up on REGISTER, down at once on unregister, and within usrloc's timer (10 s)
    when the WebSocket closes. JSON registrations stay in `registrations` only."""
    gateway = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS)}).start()
    try:
        assert health(gateway)["legacyRegistrations"] == 0
        tab1, tab2 = legacy_factory(gateway, "5001"), legacy_factory(gateway, "5001")  # one DN, two tabs
        other = legacy_factory(gateway, "5002")
        json_agent(client_factory, gateway, "5003")
        doc = health(gateway)
        assert (doc["legacyRegistrations"], doc["registrations"]) == (2, 1)
        assert "\nwsgw_legacy_registrations 2\n" in metrics_text(gateway)
        assert other.unregister().status == 200
        assert health(gateway)["legacyRegistrations"] == 1
        tab1.close()
        tab2.close()
        assert wait_legacy_registrations(gateway, 0, timeout=15) == 0
        assert "\nwsgw_legacy_registrations 0\n" in metrics_text(gateway)
    finally:
        gateway.stop()


# ---- both kinds on one port ----


def test_json_and_sip_frames_on_the_same_port_at_once(gw, legacy_factory, client_factory):
    """Legacy REGISTERs and JSON pings interleave on the same port; every one is answered in kind."""
    json_client = json_agent(client_factory, gw, "5001")
    legacy = legacy_factory(gw, "5002")
    errors: list[str] = []

    def pings() -> None:
        try:
            for _ in range(100):
                if json_client.request("ping")["type"] != "pong":
                    errors.append("ping")
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    thread = threading.Thread(target=pings)
    thread.start()
    for _ in range(25):
        if legacy.register().status != 200:
            errors.append("register")
    thread.join(30)
    assert not errors
    # Neither connection saw the other kind of frame.
    assert all(m.first_line.startswith("SIP/2.0 ") for m in legacy.received)
    assert json_client.backlog == []


def test_json_clients_unaffected(gw, legacy_factory, client_factory):
    """A JSON-to-JSON call with legacy clients around: still the gateway's own looped call, not
    record-routed; and a DN registered by both kinds rings the JSON client."""
    legacy_factory(gw, "5003")
    both = legacy_factory(gw, "5004")
    alice = json_agent(client_factory, gw, "5003")
    bob = json_agent(client_factory, gw, "5004")
    request_id = alice.send("call", {"to": "5004", "callId": "jj", "sdp": CHROME_OFFER})
    incoming = bob.wait_for("incomingCall")
    both.assert_no_request("INVITE", 0.3)
    assert bob.request("answer", {"callId": incoming["payload"]["callId"], "sdp": PCMU_ANSWER})["type"] == "callAccepted"
    assert alice.wait(lambda m: m.get("id") == request_id)["type"] == "callAccepted"
    assert alice.request("hangup", {"callId": "jj"})["type"] == "callEnded"
    assert bob.wait_for("callEnded")["payload"]["by"] == "remote"
    assert wait_no_calls(gw)["calls"] == 0


# ---- upstream mode: a plain proxy toward the PBX ----


def test_upstream_register_and_calls_through_the_pbx(upstream_gateway, registrar_port, legacy_factory, tmp_path):
    """Upstream: REGISTER goes to the PBX (which authenticates) with a Path back to the WebSocket;
    INVITEs go to the PBX; the PBX reaches the client through that Path."""
    client = legacy_factory(upstream_gateway, "5001", register=False)
    registrar = Sipp("registrar_challenge.xml", tmp_path / "reg", local_port=registrar_port, timeout=30,
                     keys={"expires": "600", "auth_user": "5001", "auth_pass": PASSWORDS["5001"]})
    with registrar:
        assert client.register().status == 200
        path = re.search(r"^\s*Path:\s*(<[^>]*>)", registrar.messages(), re.MULTILINE)
        assert path and "received=" in path.group(1), registrar.messages()
        # The PBX calls the client through the Path (Route to the gateway, received= the WebSocket).
        with Sipp("uac_call_path_route.xml", tmp_path / "in", local_port=free_udp_port(),
                  remote=upstream_gateway.sip_hostport, service="5001", timeout=30,
                  keys={"target": client.contact_uri, "path": path.group(1)}) as pbx_in:
            incoming = client.wait_invite()
            client.ring(incoming)
            client.answer(incoming, PCMU_ANSWER)
            client.answer_bye(incoming)
            assert pbx_in.wait(15) == 0, pbx_in.describe()
        assert client.unregister().status == 200
        assert registrar.wait(15) == 0, registrar.describe()
    # An outgoing call goes to the PBX (no proxy authentication at the gateway upstream).
    with Sipp("uas_answer_wait_bye.xml", tmp_path / "out", local_port=registrar_port, timeout=30) as pbx:
        dialog, final = client.invite("6001", CHROME_OFFER)
        assert final.status == 200, final
        assert client.bye(dialog).status == 200
        assert pbx.wait(15) == 0, pbx.describe()
    assert "INVITE sip:6001@127.0.0.1" in pbx.messages()
