"""Prometheus metrics at GET /metrics: counters kept in the shared store (every worker
adds to the same numbers) plus gauges read from the state tables."""

from __future__ import annotations

import re

from .context import Context
from .health import health
from .store import COUNTERS, COUNTS

_PREFIX = "m|"
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.:-]")

HELP = {
    "wsgw_frames_in_total": "JSON frames received from clients, by message type",
    "wsgw_frames_out_total": "JSON frames sent to clients, by message type",
    "wsgw_errors_total": "error replies sent to clients, by code",
    "wsgw_calls_failed_total": "callFailed sent to clients, by reason",
    "wsgw_calls_answered_total": "calls answered, by direction (outbound: 200 to our INVITE; inbound: the browser answered)",
    "wsgw_sip_retransmissions_total": "SIP retransmissions received: requests tm absorbed as retransmissions "
                                      "(kind=request) and 2xx to our INVITEs received again (kind=reply)",
}


def _key(name: str, label: str, value: str) -> str:
    # Label values come from clients (message types): keep them to a safe alphabet and length.
    return f"{_PREFIX}{name}|{label}|{_LABEL_VALUE.sub('_', value)[:40]}"


def count(ctx: Context, name: str, label: str, value: str) -> None:
    ctx.store.incr(COUNTS, _key(name, label, value))


def frame_in(ctx: Context, msg_type: str) -> None:
    count(ctx, "wsgw_frames_in_total", "type", msg_type)


def frame_out(ctx: Context, message: dict) -> None:
    msg_type = str(message.get("type", ""))
    count(ctx, "wsgw_frames_out_total", "type", msg_type)
    payload = message.get("payload") or {}
    if msg_type == "error":
        count(ctx, "wsgw_errors_total", "code", str(payload.get("code", "")))
    elif msg_type == "callFailed":
        count(ctx, "wsgw_calls_failed_total", "reason", str(payload.get("reason", "")))


def call_answered(ctx: Context, direction: str) -> None:
    count(ctx, "wsgw_calls_answered_total", "direction", direction)


def sip_retransmission(ctx: Context, kind: str) -> None:
    """A retransmission reached us: the peer did not get (or not in time) what we sent."""
    count(ctx, "wsgw_sip_retransmissions_total", "kind", kind)


SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SETUP = "wsgw_call_setup_seconds"


def observe_setup(ctx: Context, seconds: float) -> None:
    """Call set-up time (`call` received -> `callAccepted` sent) into the histogram.
    Each observation counts in its own bucket only; render() makes them cumulative."""
    le = next((str(b) for b in SETUP_BUCKETS if seconds <= b), "+Inf")
    ctx.store.incr(COUNTS, f"h|{_SETUP}|{le}")
    with ctx.store.lock(COUNTERS, "h|sum"):
        total = float(ctx.store.get(COUNTERS, f"h|{_SETUP}|sum") or 0) + seconds
        ctx.store.put(COUNTERS, f"h|{_SETUP}|sum", repr(total))


def _histogram(ctx: Context) -> list[str]:
    lines = [f"# HELP {_SETUP} call set-up time: call received to callAccepted sent", f"# TYPE {_SETUP} histogram"]
    total = 0
    for le in [*map(str, SETUP_BUCKETS), "+Inf"]:
        total += int(ctx.store.get(COUNTS, f"h|{_SETUP}|{le}") or 0)
        lines.append(f'{_SETUP}_bucket{{le="{le}"}} {total}')
    lines.append(f"{_SETUP}_sum {ctx.store.get(COUNTERS, f'h|{_SETUP}|sum') or 0}")
    lines.append(f"{_SETUP}_count {total}")
    return lines


def render(ctx: Context) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    series: dict[str, list[str]] = {}
    for key in sorted(ctx.store.keys(COUNTS)):
        if not key.startswith(_PREFIX):
            continue
        _, name, label, value = key.split("|", 3)
        series.setdefault(name, []).append(f'{name}{{{label}="{value}"}} {ctx.store.get(COUNTS, key) or 0}')
    lines: list[str] = []
    for name in sorted(set(series) | set(HELP)):
        lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} counter"] + series.get(name, [])
    lines += _histogram(ctx)
    doc = health(ctx)
    doc["open"] = sum(1 for key in ctx.store.keys(COUNTERS) if key.startswith("open|"))  # limits.connection_opened
    for name, field, text in (("wsgw_websocket_connections_open", "open", "open WebSocket connections"),
                              ("wsgw_registrations", "registrations", "registered DNs"),
                              ("wsgw_websocket_connections", "connections", "WebSocket connections with a registration"),
                              ("wsgw_calls_active", "calls", "calls in the call table"),
                              ("wsgw_legacy_registrations", "legacyRegistrations",
                               "DNs registered here by legacy SIP-over-WebSocket (JsSIP) clients")):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {doc[field]}"]
    return "\n".join(lines) + "\n"
