"""The small part of SIP URI handling the gateway needs: upstream and target URIs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import errors
from .errors import GatewayError

_URI_RE = re.compile(
    r"^sip:(?:(?P<user>[A-Za-z0-9._+*-]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<params>(?:;[A-Za-z0-9_.=-]+)*)$"
)


@dataclass(frozen=True)
class SipUri:
    host: str
    port: int | None = None
    user: str | None = None
    transport: str | None = None

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def with_user(self, user: str) -> "SipUri":
        return SipUri(self.host, self.port, user, self.transport)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        transport = f";transport={self.transport}" if self.transport else ""
        return f"sip:{user}{self.hostport}{transport}"


def parse_sip_uri(text: str) -> SipUri:
    """Parse a plain `sip:[user@]host[:port][;transport=x]` URI (no headers, no escapes).

    `sips:` is refused rather than silently downgraded: TLS toward SIP is not supported yet.
    """
    m = _URI_RE.fullmatch(text.strip())
    if not m:
        raise GatewayError(errors.INVALID_PAYLOAD, f"not a SIP URI: {text[:80]!r}")
    transport = None
    for param in (m.group("params") or "").split(";"):
        if param.lower().startswith("transport="):
            transport = param.split("=", 1)[1].lower()
    port = int(m.group("port")) if m.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise GatewayError(errors.INVALID_PAYLOAD, f"bad port in SIP URI: {text[:80]!r}")
    return SipUri(host=m.group("host"), port=port, user=m.group("user"), transport=transport)
