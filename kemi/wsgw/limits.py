"""Abuse limits, kept in the shared store so that every worker enforces the same numbers.

- message rate per connection (token bucket),
- calls per connection,
- WebSocket connections per client IP (checked at the handshake),
- register brute force: after N failures for a DN or from an IP, `rate_limited` for a while.
Every refusal is a clear `error` (`rate_limited`) or an HTTP status at the handshake.
"""

from __future__ import annotations

from . import errors
from .config import Limits  # noqa: F401  (the numbers live in the configuration)
from .context import Context
from .errors import GatewayError
from .store import CALLS, COUNTS, get_json, put_json

LIMITS = "gw"  # the small housekeeping table (store.COUNTERS)


def allow_message(ctx: Context, conn_key: str) -> bool:
    """Token bucket per connection; False when the client sends faster than the limit."""
    lim = ctx.config.limits
    now = ctx.clock()
    key = "rate|" + conn_key
    with ctx.store.lock(LIMITS, key):
        bucket = get_json(ctx.store, LIMITS, key) or {"tokens": float(lim.msg_burst), "ts": now}
        tokens = min(float(lim.msg_burst), bucket["tokens"] + (now - bucket["ts"]) * lim.max_msg_rate)
        allowed = tokens >= 1.0
        put_json(ctx.store, LIMITS, key, {"tokens": tokens - 1.0 if allowed else tokens, "ts": now})
    return allowed


def forget_connection(ctx: Context, conn_key: str) -> None:
    ctx.store.delete(LIMITS, "rate|" + conn_key)


def _calls_key(owner: str) -> str:
    return "calls|" + owner


def call_added(ctx: Context, owner: str) -> None:
    """A call record of session `owner` was created (calls.Call.create)."""
    ctx.store.incr(COUNTS, _calls_key(owner))


def call_removed(ctx: Context, owner: str) -> None:
    if ctx.store.decr(COUNTS, _calls_key(owner)) <= 0:
        ctx.store.delete(COUNTS, _calls_key(owner))  # no key left behind per connection ever seen


def check_call_limit(ctx: Context, owner: str) -> None:
    """Refuse a new call when session `owner` has max_calls_per_conn calls. The counter answers
    at once (a scan of the whole call table per call was a third of a `call`'s CPU); only at
    the limit are the records counted, so a counter that drifted never refuses a call wrongly."""
    limit = ctx.config.limits.max_calls_per_conn
    if int(ctx.store.get(COUNTS, _calls_key(owner)) or 0) < limit:
        return
    prefix = owner + "#"
    if sum(1 for key in ctx.store.keys(CALLS) if key.startswith(prefix)) >= limit:
        raise GatewayError(errors.RATE_LIMITED, f"at most {limit} calls per connection")


def connection_opened(ctx: Context, ip: str, port: int) -> bool:
    """Count a new WebSocket from `ip`; False (and not counted) when the IP has too many."""
    key = "ip|" + ip
    with ctx.store.lock(LIMITS, key):
        count = int(ctx.store.get(LIMITS, key) or 0)
        if count >= ctx.config.limits.max_conns_per_ip:
            return False
        ctx.store.put(LIMITS, key, str(count + 1))
        ctx.store.put(LIMITS, _open_key(ip, port), "1")
    return True


def connection_closed(ctx: Context, ip: str, port: int) -> bool:
    """Uncount a WebSocket. True the first time only: a connection's end may be reported twice
    (the websocket module after a close frame, tcpops when the TCP connection goes)."""
    key = "ip|" + ip
    with ctx.store.lock(LIMITS, key):
        if ctx.store.get(LIMITS, _open_key(ip, port)) is None:
            return False
        ctx.store.delete(LIMITS, _open_key(ip, port))
        count = int(ctx.store.get(LIMITS, key) or 0)
        if count <= 1:
            ctx.store.delete(LIMITS, key)
        else:
            ctx.store.put(LIMITS, key, str(count - 1))
    return True


def _open_key(ip: str, port: int) -> str:
    return f"open|{ip}|{port}"


def _fail_keys(dn: str, ip: str) -> list[str]:
    return ["authfail|dn|" + dn, "authfail|ip|" + ip]


def check_register_lockout(ctx: Context, dn: str, ip: str) -> None:
    now = ctx.clock()
    for key in _fail_keys(dn, ip):
        record = get_json(ctx.store, LIMITS, key)
        if record and record.get("until", 0) > now:
            raise GatewayError(errors.RATE_LIMITED,
                               f"too many failed registrations; retry in {int(record['until'] - now) + 1} s")


def register_failed(ctx: Context, dn: str, ip: str) -> None:
    lim = ctx.config.limits
    now = ctx.clock()
    for key in _fail_keys(dn, ip):
        with ctx.store.lock(LIMITS, key):
            record = get_json(ctx.store, LIMITS, key) or {"count": 0, "first": now, "until": 0}
            if now - record["first"] > lim.auth_lockout:
                record = {"count": 0, "first": now, "until": 0}
            record["count"] += 1
            if record["count"] >= lim.auth_fail_limit:
                record["until"] = now + lim.auth_lockout
            put_json(ctx.store, LIMITS, key, record)


def register_succeeded(ctx: Context, dn: str) -> None:
    ctx.store.delete(LIMITS, "authfail|dn|" + dn)


def origin_allowed(allowed: tuple[str, ...], origin: str) -> bool:
    """GW_ALLOWED_ORIGINS: empty allows every origin; else an exact match (scheme://host[:port])."""
    return not allowed or origin.strip().rstrip("/").lower() in allowed
