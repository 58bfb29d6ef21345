"""Gateway configuration from GW_* environment variables (the contract in README.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .errors import GatewayError
from .sip_uri import SipUri, parse_sip_uri


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Limits:
    """Abuse limits, enforced by limits.py (GW_MAX_* / GW_AUTH_* variables)."""

    max_msg_rate: float = 20.0  # frames per second per connection (sustained)
    msg_burst: int = 40  # frames allowed in a burst
    max_calls_per_conn: int = 16
    max_conns_per_ip: int = 100
    auth_fail_limit: int = 5  # failed registers per DN or per IP ...
    auth_lockout: int = 60  # ... lock them out for this many seconds


def _conference_uri(value: str) -> str:
    if value:
        try:
            parse_sip_uri(value.replace("{room}", "room"))
        except GatewayError as exc:
            raise ValueError(f"GW_CONFERENCE_URI: {exc.reason}") from None
    return value


@dataclass(frozen=True)
class GatewayConfig:
    listen_ip: str = "127.0.0.1"
    ws_port: int = 8080
    sip_port: int = 5060
    upstream: SipUri | None = None
    subscribers_path: str = ""
    codecs: tuple[str, ...] = ("PCMU", "PCMA", "telephone-event")
    # Expiry requested from the upstream registrar and reported in embedded mode.
    register_expires: int = 600
    # Seconds a call rings before the gateway gives up (inbound: 480; outbound: CANCEL, no_answer).
    ring_timeout: int = 60
    # Seconds without any reply before a request is declared unreachable.
    sip_timeout: int = 8
    # Seconds the browser has to answer an updateOffer (a re-INVITE from the far end).
    update_timeout: int = 5
    # Session timers (RFC 4028): the interval we ask for and the smallest we accept.
    session_expires: int = 1800
    min_se: int = 90
    # Conference bridge URI; "{room}" is replaced by a fresh room name (conference.py).
    conference_uri: str = ""
    # Media: "passthrough" (SDP goes through, codec policy only) or "rtpengine" (media.py).
    media: str = "passthrough"
    rtpengine: str = "udp:127.0.0.1:2223"
    # Where the echo test extension (routing.ECHO_EXTENSION) goes; empty = no echo test.
    echo_uri: str = ""
    # Abuse limits (limits.py) and the origins allowed to open a WebSocket (empty = any).
    limits: Limits = field(default_factory=Limits)
    allowed_origins: tuple[str, ...] = ()
    # Seconds a dropped client's registration and calls wait for `attach` (resume.py); 0 = end at once.
    resume_grace: int = 30
    # Bearer token of the REST API under /api/v1/ (api.py); empty = only /api/v1/health answers.
    api_token: str = field(default="", repr=False)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when the gateway is its own registrar (no GW_UPSTREAM)."""
        return self.upstream is None

    @property
    def sip_socket(self) -> str:
        return f"udp:{self.listen_ip}:{self.sip_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "GatewayConfig":
        upstream_raw = env.get("GW_UPSTREAM", "").strip()
        upstream = None
        if upstream_raw:
            try:
                upstream = parse_sip_uri(upstream_raw)
            except GatewayError as exc:
                raise ValueError(f"GW_UPSTREAM: {exc.reason}") from None
        codecs = tuple(c.strip() for c in env.get("GW_CODECS", "PCMU,PCMA,telephone-event").split(",") if c.strip())
        if not codecs:
            raise ValueError("GW_CODECS must name at least one codec")
        return cls(
            listen_ip=env.get("GW_LISTEN_IP", "127.0.0.1").strip() or "127.0.0.1",
            ws_port=_int(env, "GW_WS_PORT", 8080),
            sip_port=_int(env, "GW_SIP_PORT", 5060),
            upstream=upstream,
            subscribers_path=env.get("GW_SUBSCRIBERS", "").strip(),
            codecs=codecs,
            register_expires=_int(env, "GW_REGISTER_EXPIRES", 600),
            ring_timeout=_int(env, "GW_RING_TIMEOUT", 60),
            sip_timeout=_int(env, "GW_SIP_TIMEOUT", 8),
            update_timeout=_int(env, "GW_UPDATE_TIMEOUT", 5),
            session_expires=_int(env, "GW_SESSION_EXPIRES", 1800),
            min_se=_int(env, "GW_MIN_SE", 90),
            conference_uri=_conference_uri(env.get("GW_CONFERENCE_URI", "").strip()),
            media=env.get("GW_MEDIA", "passthrough").strip() or "passthrough",
            rtpengine=env.get("GW_RTPENGINE", "").strip() or "udp:127.0.0.1:2223",
            echo_uri=env.get("GW_ECHO_URI", "").strip(),
            limits=Limits(
                max_msg_rate=float(_int(env, "GW_MAX_MSG_RATE", 20)),
                msg_burst=_int(env, "GW_MSG_BURST", 40),
                max_calls_per_conn=_int(env, "GW_MAX_CALLS_PER_CONN", 16),
                max_conns_per_ip=_int(env, "GW_MAX_CONNS_PER_IP", 100),
                auth_fail_limit=_int(env, "GW_AUTH_FAIL_LIMIT", 5),
                auth_lockout=_int(env, "GW_AUTH_LOCKOUT", 60),
            ),
            resume_grace=_int(env, "GW_RESUME_GRACE", 30),
            allowed_origins=tuple(o.strip().rstrip("/").lower()
                                  for o in env.get("GW_ALLOWED_ORIGINS", "").split(",") if o.strip()),
            api_token=env.get("GW_API_TOKEN", "").strip(),
        )
