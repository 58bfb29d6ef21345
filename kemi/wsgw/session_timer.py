"""Session timers (RFC 4028): keep-alive re-INVITEs so dead calls get cleaned up.

The gateway offers `Supported: timer` with GW_SESSION_EXPIRES / GW_MIN_SE on its
INVITEs, retries once after a 422 at the larger Min-SE, and honours the
Session-Expires of the 2xx. When it is the refresher it re-INVITEs with the last
SDP half-way through the interval, even if the browser is idle; when the far end
is the refresher it expects a refresh before expiry (minus min(32 s, interval/3))
and otherwise ends the call with BYE and `callEnded` reason `session_expired`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SE = re.compile(r"^\s*(\d+)\s*(?:;(.*))?$")


@dataclass(frozen=True)
class SessionExpires:
    interval: int
    refresher: str = ""  # "uac", "uas" or "" (not said)

    def header(self) -> str:
        return f"{self.interval};refresher={self.refresher}" if self.refresher else str(self.interval)


def parse_session_expires(value: str | None) -> SessionExpires | None:
    """`Session-Expires: 1800;refresher=uac` -> SessionExpires(1800, "uac"); None if absent or unreadable."""
    if not value:
        return None
    m = _SE.match(value.split(",")[0])
    if not m:
        return None
    refresher = ""
    for param in (m.group(2) or "").split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return SessionExpires(int(m.group(1)), refresher)


def parse_min_se(value: str | None) -> int | None:
    m = re.match(r"^\s*(\d+)", value or "")
    return int(m.group(1)) if m else None


def supports_timer(supported: str | None) -> bool:
    return "timer" in [opt.strip().lower() for opt in (supported or "").split(",")]


def refresh_at(now: float, interval: int) -> float:
    """When the refresher re-INVITEs: half-way (RFC 4028 7.2)."""
    return now + interval / 2


def expiry_at(now: float, interval: int) -> float:
    """When the other side gives up without a refresh (RFC 4028 10)."""
    return now + interval - min(32, interval / 3)
