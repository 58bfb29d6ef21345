"""Resumable sessions: what a registered connection needs to survive a dropped WebSocket.

Each registered connection (each tab) has a session: a secret resume token, a
sequence number stamped on every server message as `seq`, and the recent
messages themselves, so that a client coming back on a new connection with
`attach` can be sent what it missed (resume.py does the re-binding).

The session is named by its *owner*: the key of the connection that registered.
Call records are keyed by the owner (calls.call_key), so they keep their keys
when a new connection takes the session over; only their `conn` field moves.

Locking: the session lock is a leaf. Nothing else is locked while it is held,
because `Context.send` takes it from code that holds call or registration locks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .connections import ConnRef
from .context import Context
from .protocol import decode, encode_ascii
from .store import CONN, SESSION_EVENTS, SESSIONS, SESSIONS_DETACHED, get_json, put_json

# Messages kept while the client is connected: enough for those in flight when a
# connection dies unnoticed. While detached, every message is kept (up to the cap).
KEEP_ATTACHED = 32
KEEP_DETACHED = 1000


@dataclass
class Session:
    owner: str  # key of the connection that registered: the stable name of the session
    conn: str  # key of the connection currently bound (the last one, while detached)
    dn: str
    token: str
    seq: int = 0  # the last seq stamped
    first: int = 1  # the oldest seq still kept
    detached_at: float = 0.0  # when the connection dropped; 0 while attached
    attaching_at: float = 0.0  # a new connection is taking the session over (resume.attach)

    @classmethod
    def load(cls, ctx: Context, owner: str) -> "Session | None":
        data = get_json(ctx.store, SESSIONS, owner)
        return cls(**data) if data else None

    def save(self, ctx: Context) -> None:
        put_json(ctx.store, SESSIONS, self.owner, vars(self))  # vars, not asdict: no deep copy, same JSON

    @property
    def detached(self) -> bool:
        return self.detached_at > 0


def _token_key(token: str) -> str:
    return "t|" + token


def _event_key(owner: str, seq: int) -> str:
    return f"{owner}|{seq}"


def owner_of(ctx: Context, conn: ConnRef) -> ConnRef:
    """The connection whose session `conn` carries (itself unless it attached to another's)."""
    data = get_json(ctx.store, CONN, conn.key)
    owner = data.get("owner") if data else None
    return ConnRef.from_key(owner) if owner else conn


def open_session(ctx: Context, conn: ConnRef, dn: str) -> str:
    """A new session for a connection that has just registered; returns its resume token."""
    token = secrets.token_urlsafe(24)
    with ctx.store.lock(SESSIONS, conn.key):
        old = Session.load(ctx, conn.key)
        if old is not None:
            _delete(ctx, old)
        Session(owner=conn.key, conn=conn.key, dn=dn, token=token).save(ctx)
        ctx.store.put(SESSIONS, _token_key(token), conn.key)
    return token


def token_of(ctx: Context, conn: ConnRef) -> str:
    session = Session.load(ctx, owner_of(ctx, conn).key)
    return session.token if session is not None else ""


def owner_of_token(ctx: Context, token: str) -> str | None:
    return ctx.store.get(SESSIONS, _token_key(token))


def record(ctx: Context, conn: ConnRef, message: dict) -> tuple[dict, bool]:
    """Stamp `message` with the session's next seq and keep it for replay.

    Returns the message to send and whether to send it now: False while the
    session is detached, or bound to another connection (it will be replayed)."""
    data = get_json(ctx.store, CONN, conn.key)
    if not data or not data.get("dn"):
        return message, True  # not registered: no session, no seq
    owner = data.get("owner") or conn.key
    with ctx.store.lock(SESSIONS, owner):
        session = Session.load(ctx, owner)
        if session is None:
            return message, True
        session.seq += 1
        message = {**message, "seq": session.seq}
        # ASCII: client text may hold lone surrogates, which the store cannot take.
        ctx.store.put(SESSION_EVENTS, _event_key(owner, session.seq), encode_ascii(message))
        keep = KEEP_DETACHED if session.detached else KEEP_ATTACHED
        while session.seq - session.first >= keep:
            ctx.store.delete(SESSION_EVENTS, _event_key(owner, session.first))
            session.first += 1
        session.save(ctx)
        return message, not session.detached and not session.attaching_at and session.conn == conn.key


def missed(ctx: Context, session: Session, last_seq: int) -> tuple[list[dict], int]:
    """The kept messages after `last_seq`, in order, and how many older ones are lost."""
    start = max(last_seq + 1, session.first)
    lost = max(0, session.first - (last_seq + 1))
    messages = []
    for seq in range(start, session.seq + 1):
        raw = ctx.store.get(SESSION_EVENTS, _event_key(session.owner, seq))
        if raw is not None:
            messages.append(decode(raw))
    return messages, lost


def close(ctx: Context, owner: str) -> None:
    """Forget a session (unregistered, or its grace period is over)."""
    with ctx.store.lock(SESSIONS, owner):
        session = Session.load(ctx, owner)
        if session is not None:
            _delete(ctx, session)
        ctx.store.delete(SESSIONS_DETACHED, owner)


def _delete(ctx: Context, session: Session) -> None:
    for seq in range(session.first, session.seq + 1):
        ctx.store.delete(SESSION_EVENTS, _event_key(session.owner, seq))
    ctx.store.delete(SESSIONS, _token_key(session.token))
    ctx.store.delete(SESSIONS, session.owner)
    ctx.store.delete(SESSIONS_DETACHED, session.owner)


def mark_detached(ctx: Context, session: Session, detached: bool) -> None:
    """Keep the index of detached sessions the timer looks at (not every session, every second)."""
    if detached:
        ctx.store.put(SESSIONS_DETACHED, session.owner, "1")
    else:
        ctx.store.delete(SESSIONS_DETACHED, session.owner)


def detached_owners(ctx: Context) -> list[str]:
    return ctx.store.keys(SESSIONS_DETACHED)


