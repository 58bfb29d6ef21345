"""wsgw.sip_proxy: decisions of the SIP proxy/registrar for legacy SIP-over-WebSocket clients."""

from __future__ import annotations

import pytest

from wsgw import sip_proxy
from wsgw.config import GatewayConfig
from wsgw.sip_proxy import ProxyTarget, legacy_invite_target
from wsgw.subscribers import parse_subscribers

EMBEDDED = GatewayConfig()
UPSTREAM = GatewayConfig.from_env({"GW_UPSTREAM": "sip:192.0.2.5:5070"})
ECHO = GatewayConfig.from_env({"GW_ECHO_URI": "sip:127.0.0.1:9196"})


def nobody(dn: str) -> bool:
    return False


def everybody(dn: str) -> bool:
    return True


# ---- authentication ----


@pytest.mark.parametrize("rc,verdict", [
    (sip_proxy.AUTH_OK, sip_proxy.OK),
    (sip_proxy.AUTH_NO_CREDENTIALS, sip_proxy.CHALLENGE),
    (-1, sip_proxy.CHALLENGE),  # generic error (e.g. a malformed header): challenge again
    (sip_proxy.AUTH_STALE_NONCE, sip_proxy.STALE),
    (sip_proxy.AUTH_NONCE_REUSED, sip_proxy.STALE),
    (sip_proxy.AUTH_INVALID_PASSWORD, sip_proxy.FORBIDDEN),
    (sip_proxy.AUTH_USER_UNKNOWN, sip_proxy.FORBIDDEN),
    (sip_proxy.AUTH_USER_MISMATCH, sip_proxy.FORBIDDEN),
])
def test_auth_verdict(rc, verdict):
    assert sip_proxy.auth_verdict(rc) == verdict


def test_challenge_flags_offer_qop_auth_and_mark_stale_nonces():
    assert sip_proxy.challenge_flags(sip_proxy.CHALLENGE) == 1
    assert sip_proxy.challenge_flags(sip_proxy.STALE) == 1 | 16


def test_digest_password_is_the_subscribers_password():
    subs = parse_subscribers("5001:secret\n")
    assert sip_proxy.digest_password(subs, "5001") == "secret"


def test_digest_password_of_an_unknown_dn_is_random():
    subs = parse_subscribers("5001:secret\n")
    first, second = sip_proxy.digest_password(subs, "7777"), sip_proxy.digest_password(subs, "7777")
    assert first != second and len(first) >= 32
    # No subscriber file (upstream mode has none): nobody can authenticate here.
    assert sip_proxy.digest_password(None, "5001") not in ("", "secret")


def test_realm_is_the_to_domain_for_register_else_the_from_domain():
    assert sip_proxy.realm("REGISTER", "to.example", "from.example", "127.0.0.1") == "to.example"
    assert sip_proxy.realm("INVITE", "to.example", "from.example", "127.0.0.1") == "from.example"
    assert sip_proxy.realm("INVITE", "to.example", "", "127.0.0.1") == "127.0.0.1"


# ---- where a legacy INVITE goes ----


def test_json_registered_dn_goes_through_the_gateways_own_port():
    assert legacy_invite_target("5002", EMBEDDED, everybody) == ProxyTarget(
        sip_proxy.GATEWAY, ruri="sip:5002@127.0.0.1:5060", nexthop="sip:127.0.0.1:5060")


def test_other_local_dn_is_looked_up_with_the_gateway_as_fallback():
    target = legacy_invite_target("5002", EMBEDDED, nobody)
    assert target == ProxyTarget(sip_proxy.LOCATION, ruri="sip:5002@127.0.0.1:5060", nexthop="sip:127.0.0.1:5060")


def test_json_check_gets_the_dialled_dn():
    asked: list[str] = []
    legacy_invite_target("5003", EMBEDDED, lambda dn: asked.append(dn) or False)
    assert asked == ["5003"]


def test_upstream_mode_relays_to_the_pbx():
    assert legacy_invite_target("5002", UPSTREAM, everybody) == ProxyTarget(
        sip_proxy.RELAY, ruri="sip:5002@192.0.2.5:5070", nexthop="sip:192.0.2.5:5070")


def test_outside_line_prefix_follows_the_dial_plan():
    target = legacy_invite_target("0123456", UPSTREAM, nobody)
    assert (target.kind, target.ruri) == (sip_proxy.RELAY, "sip:123456@192.0.2.5:5070")
    # Embedded mode has no upstream for outside lines: refused as for a JSON `call`.
    refused = legacy_invite_target("0123456", EMBEDDED, nobody)
    assert (refused.kind, refused.code) == (sip_proxy.REPLY, 404)


def test_echo_extension_goes_to_its_trunk():
    target = legacy_invite_target("9196", ECHO, nobody)
    assert target == ProxyTarget(sip_proxy.RELAY, ruri="sip:9196@127.0.0.1:9196", nexthop="sip:127.0.0.1:9196")


def test_refused_prefix_is_answered_with_the_dial_plans_code():
    target = legacy_invite_target("0900123", UPSTREAM, nobody)
    assert (target.kind, target.code, target.reason) == (sip_proxy.REPLY, 403, "Forbidden by dial plan")


@pytest.mark.parametrize("dialled", ["", "bad user", "a" * 40, "50%01"])
def test_invalid_numbers_are_not_found(dialled):
    assert legacy_invite_target(dialled, EMBEDDED, everybody) == ProxyTarget(sip_proxy.REPLY, code=404,
                                                                             reason="Not Found")


# ---- registrar ----


def test_register_is_ours_in_embedded_mode_and_the_pbxs_upstream():
    assert sip_proxy.register_nexthop(EMBEDDED) == ""
    assert sip_proxy.register_nexthop(UPSTREAM) == "sip:192.0.2.5:5070"


# ---- headers ----


@pytest.mark.parametrize("value,uri", [
    ("<sip:127.0.0.1:8080;transport=ws;lr>, <sip:127.0.0.1:5060;lr>", "sip:127.0.0.1:8080;transport=ws;lr"),
    ('"proxy" <sip:gw.example;lr>;x=1', "sip:gw.example;lr"),
    ("sip:127.0.0.1:5060;lr", "sip:127.0.0.1:5060"),
    ("sip:127.0.0.1:5060, sip:other", "sip:127.0.0.1:5060"),
    ("", ""),
])
def test_first_route_uri(value, uri):
    assert sip_proxy.first_route_uri(value) == uri


@pytest.mark.parametrize("uri,ws", [
    ("sip:127.0.0.1:40000;transport=ws", True),
    ("sip:127.0.0.1:40000;transport=WSS", True),
    ("sip:127.0.0.1:40000; transport = ws", True),
    ("sip:127.0.0.1:5060;transport=udp", False),
    ("sip:127.0.0.1:5060", False),
    ("", False),
])
def test_is_ws_uri(uri, ws):
    assert sip_proxy.is_ws_uri(uri) is ws


# ---- media on the proxy path (GW_MEDIA=rtpengine) ----


@pytest.mark.parametrize("relay,from_ws,to_ws,role", [
    (True, True, False, sip_proxy.WS_CALLER),  # legacy -> SIP side, or -> a JSON client's inbound leg
    (True, False, True, sip_proxy.WS_CALLEE),  # SIP side, or a JSON client's outbound leg -> legacy
    (True, True, True, None),  # legacy <-> legacy: two browsers, end to end
    (True, False, False, None),  # not a legacy client's dialog
    (False, True, False, None),  # passthrough: nothing changes
    (False, False, True, None),
])
def test_media_role(relay, from_ws, to_ws, role):
    assert sip_proxy.media_role(relay, from_ws, to_ws) == role


def test_media_role_travels_in_the_record_route():
    assert sip_proxy.media_rr_param(sip_proxy.WS_CALLER) == ";wsgwm=c"
    assert sip_proxy.media_rr_regex(sip_proxy.WS_CALLEE) == "wsgwm=e"


def test_media_sessions_do_not_collide_with_json_legs_or_each_other():
    caller, callee = (sip_proxy.media_session("abc@host", r) for r in (sip_proxy.WS_CALLER, sip_proxy.WS_CALLEE))
    assert (caller, callee) == ("abc@host|pc", "abc@host|pe")
    assert {caller, callee}.isdisjoint({"abc@host|o", "abc@host|i"})  # media._session of JSON legs


@pytest.mark.parametrize("content_type,sdp", [
    ("application/sdp", True), ("Application/SDP; charset=utf-8", True), (" application/sdp ", True),
    ("multipart/mixed;boundary=x", False), ("application/dtmf-relay", False), ("", False),
])
def test_is_sdp(content_type, sdp):
    assert sip_proxy.is_sdp(content_type) is sdp


@pytest.mark.parametrize("method,has_sdp,command", [
    ("INVITE", True, sip_proxy.SDP_OFFER),
    ("UPDATE", True, sip_proxy.SDP_OFFER),
    ("ACK", True, sip_proxy.SDP_ANSWER),  # late offer: the answer to the 2xx's offer
    ("INVITE", False, None),  # late offer: the 2xx carries it
    ("ACK", False, None),
    ("INFO", True, None),
    ("BYE", False, None),
])
def test_request_sdp_command(method, has_sdp, command):
    assert sip_proxy.request_sdp_command(method, has_sdp) == command


@pytest.mark.parametrize("method,status,had_offer,has_sdp,command", [
    ("INVITE", 200, True, True, sip_proxy.SDP_ANSWER),
    ("INVITE", 183, True, True, sip_proxy.SDP_ANSWER),  # early media
    ("UPDATE", 200, True, True, sip_proxy.SDP_ANSWER),
    ("INVITE", 200, False, True, sip_proxy.SDP_OFFER),  # late offer
    ("INVITE", 180, True, False, None),
    ("INVITE", 100, True, True, None),
    ("INVITE", 488, True, True, None),
    ("INFO", 200, True, True, None),
])
def test_reply_sdp_command(method, status, had_offer, has_sdp, command):
    assert sip_proxy.reply_sdp_command(method, status, had_offer, has_sdp) == command


@pytest.mark.parametrize("is_request,command,tags", [
    (True, sip_proxy.SDP_OFFER, ("F", "T")),  # INVITE/re-INVITE/UPDATE: the sender (From) offers
    (True, sip_proxy.SDP_ANSWER, ("T", "F")),  # ACK answering the callee's (To) offer
    (False, sip_proxy.SDP_ANSWER, ("F", "T")),  # 200 answering the request's (From) offer
    (False, sip_proxy.SDP_OFFER, ("T", "F")),  # 200 offering (late offer): the To side offers
])
def test_ng_tags_put_the_offerer_first(is_request, command, tags):
    assert sip_proxy.ng_tags(is_request, command, "F", "T") == tags
