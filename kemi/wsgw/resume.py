"""Calls that survive a dropped WebSocket.

When a registered client's WebSocket closes, its registration and calls
(ringing and answered) are kept for GW_RESUME_GRACE seconds; messages for it
are kept too (sessions.py). An `attach {token, lastSeq}` from a new connection
re-binds the registration and the calls to it and sends, in order, every kept
message after `lastSeq`. When the grace period ends first, the calls are ended
on the SIP side (BYE, CANCEL, 480) and the registration removed, as for a
closed connection without resume.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import calls, errors, protocol, registrations, sessions
from .connections import ConnRef
from .context import Context
from .errors import GatewayError
from .sessions import Session
from .sip_headers import validate_token
from .store import CONN, SESSIONS, get_json, put_json

# A takeover that has not finished in this time (a crashed handler) no longer blocks expiry.
ATTACH_STALE_AFTER = 10.0


@dataclass(frozen=True)
class AttachPayload:
    token: str
    last_seq: int = 0


def parse_attach(payload: dict) -> AttachPayload:
    protocol.only_fields(payload, {"token", "lastSeq"})
    last_seq = payload.get("lastSeq", 0)
    if type(last_seq) is not int or last_seq < 0:
        raise GatewayError(errors.INVALID_PAYLOAD, "lastSeq must be a non-negative integer")
    return AttachPayload(token=validate_token(payload.get("token"), "token"), last_seq=last_seq)


protocol.register_type("attach", parse_attach)


def detach(ctx: Context, conn: ConnRef) -> bool:
    """The WebSocket `conn` closed: keep its session for the grace period.

    False when there is nothing to keep (not registered, resume disabled, or the
    session has moved to another connection): the caller ends everything now."""
    if ctx.config.resume_grace <= 0:
        return False
    data = get_json(ctx.store, CONN, conn.key)
    if not data or not data.get("dn"):
        return False
    owner = data.get("owner") or conn.key
    with ctx.store.lock(SESSIONS, owner):
        session = Session.load(ctx, owner)
        if session is None or session.conn != conn.key:
            return False
        session.detached_at = ctx.clock()
        session.save(ctx)
        sessions.mark_detached(ctx, session, True)
    ctx.log.info("session detached dn=%s conn=%s grace=%ds", session.dn, conn.key, ctx.config.resume_grace)
    return True


def attach(ctx: Context, conn: ConnRef, request_id: str | None, req: AttachPayload) -> None:
    """Take a session over from a dropped (or dying) connection."""
    current = registrations.dn_of_connection(ctx, conn)
    if current is not None:
        raise GatewayError(errors.ALREADY_REGISTERED, f"this connection is already registered as {current}")
    owner = sessions.owner_of_token(ctx, req.token) or ""
    with ctx.store.lock(SESSIONS, owner):
        session = Session.load(ctx, owner) if owner else None
        if session is None:
            raise GatewayError(errors.SESSION_EXPIRED, "unknown or expired resume token; register again")
        # From here messages for the client are kept, not sent, until the replay below.
        session.attaching_at = ctx.clock()
        session.save(ctx)
    old = session.conn
    put_json(ctx.store, CONN, conn.key, {"dn": session.dn, "since": ctx.clock(), "owner": owner})
    moved = _rebind_calls(ctx, owner, old, conn.key)
    registrations.rebind(ctx, session.dn, old, conn.key)
    if old != conn.key:
        ctx.store.delete(CONN, old)
    with ctx.store.lock(SESSIONS, owner):
        session = Session.load(ctx, owner) or session
        session.conn = conn.key
        session.detached_at = session.attaching_at = 0.0
        session.save(ctx)
        sessions.mark_detached(ctx, session, False)
        # Under the session lock: a message sent meanwhile by another worker waits, so it
        # gets the next seq and arrives after the replayed ones.
        replay, lost = sessions.missed(ctx, session, req.last_seq)
        for message in replay:
            ctx.outbox.send(conn, message)
    ctx.log.info("session attached dn=%s conn=%s from=%s calls=%d replayed=%d lost=%d", session.dn, conn.key, old,
                 len(moved), len(replay), lost)
    ctx.send(conn, protocol.message("attached", {
        "dn": session.dn, "resumeToken": session.token, "replayed": len(replay), "lost": lost,
        "calls": [{"callId": c.call_id, "direction": c.direction, "state": c.state, "peer": c.peer} for c in moved],
    }, request_id))


def _rebind_calls(ctx: Context, owner: str, old: str, new: str) -> list[calls.Call]:
    moved = []
    prefix = owner + "#"
    for key in ctx.store.keys(calls.CALLS):
        if not key.startswith(prefix):
            continue
        with calls.locked(ctx, key) as call:
            if call is not None and call.conn == old:
                call.conn = new
                call.save(ctx)
                moved.append(call)
    return moved


def tick(ctx: Context) -> None:
    """Once a second (timer process): end the sessions whose grace period is over."""
    now = ctx.clock()
    for owner in sessions.detached_owners(ctx):
        session = Session.load(ctx, owner)
        if session is None:
            sessions.close(ctx, owner)  # a stale index entry
            continue
        if not session.detached or now < session.detached_at + ctx.config.resume_grace:
            continue
        with ctx.store.lock(SESSIONS, owner):
            session = Session.load(ctx, owner)
            if (session is None or not session.detached or now < session.detached_at + ctx.config.resume_grace
                    or now - session.attaching_at < ATTACH_STALE_AFTER):
                continue
        ctx.log.info("session expired dn=%s conn=%s: ending its calls and registration", session.dn, session.conn)
        end_connection(ctx, ConnRef.from_key(session.conn))
        sessions.close(ctx, owner)


def end_connection(ctx: Context, conn: ConnRef) -> None:
    """Everything a connection held ends: calls on the SIP side, then the registration."""
    calls.connection_closed(ctx, conn)
    registrations.connection_closed(ctx, conn)
