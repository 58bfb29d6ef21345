"""Decisions of the plain SIP proxy/registrar for legacy clients (JsSIP: SIP over the WebSocket port).

Legacy clients send SIP text frames on the same WebSocket port as the JSON clients
(the first byte decides, ksr_adapter.Gateway.on_received). For them the gateway is
an ordinary SIP proxy and, in embedded mode, their registrar: REGISTER is digest-
authenticated against the same subscriber file as JSON `register` and saved in
Kamailio's usrloc; INVITEs are record-routed and relayed. Their SDP is untouched in
passthrough mode and between two legacy browsers; with GW_MEDIA=rtpengine a legacy
browser meeting the SIP side (a PBX, a trunk, a JSON client's SIP leg) gets its media
relayed like a JSON client's (media_role below).

This module only decides; ksr_adapter.SipProxy does it with Kamailio's registrar,
auth, rr, nathelper, path and tm. Nothing here imports KSR.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Callable

from .config import GatewayConfig
from .errors import GatewayError
from .routing import route
from .sip_headers import validate_dn
from .subscribers import Subscribers

# $pr of a request that came over a WebSocket (legacy client or not: JSON frames never get here).
WS_PROTOS = frozenset({"ws", "wss"})

# Return codes of the auth module's pv_auth_check (src/modules/auth/api.h).
AUTH_OK = 1
AUTH_INVALID_PASSWORD = -2
AUTH_USER_UNKNOWN = -3
AUTH_STALE_NONCE = -4
AUTH_NO_CREDENTIALS = -5
AUTH_NONCE_REUSED = -6
AUTH_USER_MISMATCH = -8

# auth_challenge flags (www_challenge/proxy_challenge): qop=auth, and stale=true for an old nonce.
CHALLENGE_QOP_AUTH = 1
CHALLENGE_STALE = 16

OK = "ok"
CHALLENGE = "challenge"
STALE = "stale"
FORBIDDEN = "forbidden"


def auth_verdict(rc: int) -> str:
    """What to answer after pv_auth_check: go on, challenge (again), or refuse.

    Credentials that were checked and are wrong (password, unknown DN, auth user not the
    From/To user) get 403 rather than a new 401: a fresh challenge would only invite
    the client to retry the same password, and 403 counts toward the lockout.
    """
    if rc == AUTH_OK:
        return OK
    if rc in (AUTH_STALE_NONCE, AUTH_NONCE_REUSED):
        return STALE
    if rc in (AUTH_INVALID_PASSWORD, AUTH_USER_UNKNOWN, AUTH_USER_MISMATCH):
        return FORBIDDEN
    return CHALLENGE  # no credentials for our realm, or a malformed header


def challenge_flags(verdict: str) -> int:
    return CHALLENGE_QOP_AUTH | (CHALLENGE_STALE if verdict == STALE else 0)


def digest_password(subscribers: Subscribers | None, dn: str) -> str:
    """The password pv_auth_check verifies the digest against.

    An unknown DN gets a random password: the check then fails exactly like a wrong
    password (same answer, same work), so a client cannot probe which DNs exist.
    """
    if subscribers is not None and dn in subscribers.passwords:
        return subscribers.passwords[dn]
    return secrets.token_hex(16)


def realm(method: str, to_domain: str, from_domain: str, fallback: str) -> str:
    """The digest realm: the To domain for REGISTER (the AoR being registered), else the
    From domain (the caller), as the auth module documents; JsSIP answers any realm."""
    value = to_domain if method == "REGISTER" else from_domain
    return value or fallback


# What the proxy does with an initial INVITE from a legacy client.
REPLY = "reply"  # refuse with code/reason
GATEWAY = "gateway"  # a JSON-registered DN: through the gateway's own SIP port, to its inbound path
LOCATION = "location"  # maybe another legacy client: usrloc lookup, else as GATEWAY (which answers 404/480)
RELAY = "relay"  # the SIP side (upstream PBX, a trunk): the dial plan's Request-URI and next hop


@dataclass(frozen=True)
class ProxyTarget:
    kind: str
    ruri: str = ""
    nexthop: str = ""  # destination URI for tm ("" = the Request-URI)
    code: int = 0
    reason: str = ""


def legacy_invite_target(dialled: str, config: GatewayConfig,
                         json_registered: Callable[[str], bool]) -> ProxyTarget:
    """Where an initial INVITE from a legacy client goes: the same dial plan as a JSON `call`
    (routing.py), so both kinds of agents reach the same numbers the same way."""
    try:
        validate_dn(dialled)
    except GatewayError:
        return ProxyTarget(REPLY, code=404, reason="Not Found")
    decision = route(dialled, config)
    if decision.kind == "refused":
        return ProxyTarget(REPLY, code=decision.code, reason=decision.reason)
    if decision.kind == "local":
        # A JSON client first (as for the gateway's own looped INVITEs), then a legacy binding.
        kind = GATEWAY if json_registered(decision.number) else LOCATION
        return ProxyTarget(kind, ruri=decision.ruri, nexthop=decision.nexthop)
    return ProxyTarget(RELAY, ruri=decision.ruri, nexthop=decision.nexthop)


def register_nexthop(config: GatewayConfig) -> str:
    """Where a legacy REGISTER goes: "" = this gateway is the registrar (embedded mode);
    else the upstream PBX, reached as a plain proxy (with a Path header back to us)."""
    return "" if config.embedded else str(config.upstream)


_FIRST_URI = re.compile(r"^\s*(?:\"[^\"]*\"\s*)?<([^>]*)>|^\s*([^,;\s]+)")


def first_route_uri(route_header: str) -> str:
    """The URI of the first entry of a Route header value (`<uri>;params, <uri2>` or a bare URI)."""
    m = _FIRST_URI.match(route_header or "")
    if not m:
        return ""
    return (m.group(1) if m.group(1) is not None else m.group(2)).strip()


_TRANSPORT = re.compile(r";\s*transport\s*=\s*([A-Za-z]+)", re.IGNORECASE)


def is_ws_uri(uri: str) -> bool:
    """True for a destination on a WebSocket connection (`;transport=ws` or `wss`)."""
    m = _TRANSPORT.search(uri or "")
    return bool(m) and m.group(1).lower() in WS_PROTOS


# ---- media on the proxy path (GW_MEDIA=rtpengine) ----
#
# A legacy client is a browser: it needs WebRTC SDP (ICE, DTLS-SRTP, UDP/TLS/RTP/SAVPF). The
# SIP side (a PBX, a trunk, or the gateway's own SIP leg of a JSON client, which rtpengine has
# already made plain RTP) needs RTP/AVP. So when exactly one side of a proxied dialog is a
# WebSocket client and a relay is configured, every SDP crossing the proxy goes through
# rtpengine, with the same flags as a JSON client's leg (media.py): from the WebSocket side
# toward SIP, from the SIP side toward the browser. Two WebSocket clients are two browsers:
# their SDP stays end to end, as in passthrough mode.

WS_CALLER = "c"  # the legacy client placed the call (it holds the dialog's From tag)
WS_CALLEE = "e"  # the legacy client was called
# Record-Route parameter carrying the role: every in-dialog request brings it back (either
# direction), so the proxy keeps no per-dialog state of its own.
MEDIA_RR_PARAM = "wsgwm"
SDP_OFFER = "offer"
SDP_ANSWER = "answer"


def media_role(relay_configured: bool, from_ws: bool, to_ws: bool) -> str | None:
    """Which side of a new proxied dialog is the legacy browser, when the proxy relays its media;
    None: SDP untouched (passthrough, WebSocket to WebSocket, or SIP to SIP)."""
    if not relay_configured or from_ws == to_ws:
        return None
    return WS_CALLER if from_ws else WS_CALLEE


def media_rr_param(role: str) -> str:
    return f";{MEDIA_RR_PARAM}={role}"


def media_rr_regex(role: str) -> str:
    """check_route_param's regular expression for a role (matched against the Route's parameters)."""
    return f"{MEDIA_RR_PARAM}={role}"


def media_session(sip_call_id: str, role: str) -> str:
    """The relay session of a proxied dialog. JSON legs use `<Call-ID>|o` and `|i` (media.py) and share
    the Call-ID of a looped INVITE; the role keeps apart the two proxied legs of one Call-ID when a
    PBX that proxies (rather than bridges) sends a legacy client's call back to another one."""
    return f"{sip_call_id}|p{role}"


def is_sdp(content_type: str) -> bool:
    """Only a plain SDP body is relayed (multipart bodies pass unchanged)."""
    return content_type.split(";", 1)[0].strip().lower() == "application/sdp"


def request_sdp_command(method: str, has_sdp: bool) -> str | None:
    """What an in-dialog or initial request's SDP is: an offer (INVITE, UPDATE) or the answer to an
    offer made in a 2xx (ACK of a late-offer INVITE)."""
    if not has_sdp:
        return None
    if method in ("INVITE", "UPDATE"):
        return SDP_OFFER
    if method == "ACK":
        return SDP_ANSWER
    return None


def reply_sdp_command(method: str, status: int, request_had_offer: bool, has_sdp: bool) -> str | None:
    """What the SDP of a provisional or 2xx reply to an INVITE/UPDATE is: the answer to the request's
    offer, or (the request had none: late offer) an offer, answered in the ACK."""
    if not has_sdp or method not in ("INVITE", "UPDATE") or not 100 < status < 300:
        return None
    return SDP_ANSWER if request_had_offer else SDP_OFFER


def ng_tags(is_request: bool, command: str, from_tag: str, to_tag: str) -> tuple[str, str]:
    """rtpengine's (from-tag, to-tag) for an SDP in a message with these From/To tags.

    rtpengine's from-tag is always the offerer's. A message's sender is the From side for a request
    and the To side for a reply; an offer comes from the sender, an answer answers the other side."""
    sender, other = (from_tag, to_tag) if is_request else (to_tag, from_tag)
    return (sender, other) if command == SDP_OFFER else (other, sender)
