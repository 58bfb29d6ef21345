"""Everything a handler needs, passed explicitly (no module globals)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .config import GatewayConfig
from .connections import ConnRef
from .sip_port import Outbox, SipPort
from .store import Store
from .subscribers import Subscribers

if TYPE_CHECKING:
    from .events import EventSink
    from .media import MediaRelay


@dataclass
class Context:
    config: GatewayConfig
    store: Store
    outbox: Outbox
    sip: SipPort
    subscribers: Subscribers | None = None
    media: "MediaRelay | None" = None  # None = passthrough (see media.py)
    clock: Callable[[], float] = time.time
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("wsgw"))
    events: "EventSink | None" = None  # the structured event log (events.py); None = off
    # DNs that legacy SIP-over-WebSocket clients registered here (Kamailio's usrloc, read by the
    # adapter); None where there is no registrar (unit tests).
    legacy_registrations: Callable[[], int] | None = None

    def send(self, conn: ConnRef, message: dict) -> bool:
        """Send to a client; a registered client's messages get a `seq` and are kept for replay
        (sessions.py). True when sent, or kept for a detached client to fetch with `attach`."""
        from . import events, metrics, sessions  # they read the context, so import here

        metrics.frame_out(self, message)
        message, now = sessions.record(self, conn, message)
        events.frame_out(self, conn.key, message)
        return self.outbox.send(conn, message) if now else True
