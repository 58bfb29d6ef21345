"""The gateway's health document served at GET /health (and /api/v1/health later)."""

from __future__ import annotations

from . import SERVER_NAME, PROTOCOL_VERSION
from .context import Context
from .store import CALLS, CONN, REG


def health(ctx: Context) -> dict:
    return {
        "status": "up",
        "server": SERVER_NAME,
        "protocol": PROTOCOL_VERSION,
        "mode": "embedded" if ctx.config.embedded else "upstream",
        "connections": len(ctx.store.keys(CONN)),
        "registrations": len(ctx.store.keys(REG)),
        "calls": len(ctx.store.keys(CALLS)),
        # Legacy JsSIP clients (docs/MIGRATION.md): their bindings are in usrloc, not in REG.
        "legacyRegistrations": ctx.legacy_registrations() if ctx.legacy_registrations else 0,
    }
