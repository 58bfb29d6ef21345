"""Decisions of the plain SIP proxy/registrar for legacy clients (JsSIP: SIP over the WebSocket port).

Legacy clients send SIP text frames on the same WebSocket port as the JSON clients
(the first byte decides, ksr_adapter.Gateway.on_received). For them the gateway is
an ordinary SIP proxy and, in embedded mode, their registrar: REGISTER is digest-
authenticated against the same subscriber file as JSON `register` and saved in
Kamailio's usrloc; INVITEs are record-routed and relayed with the SDP untouched
(both ends are browsers, so media stays end to end).

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
