"""One handler per client message type, and the dispatcher that runs them.

A handler gets the context, the sender's connection and the validated frame.
It either sends its reply itself (possibly later, from another worker, when a
SIP reply arrives) or raises GatewayError, which becomes the `error` reply.
"""

from __future__ import annotations

from typing import Callable

from . import calls, conference, errors, events, limits, metrics, midcall, protocol, registrations, resume, transfer
from .connections import ConnRef
from .context import Context
from .errors import GatewayError
from .protocol import Frame, ProtocolError

Handler = Callable[[Context, ConnRef, Frame], None]

# The only requests a connection may send before it is registered.
UNAUTHENTICATED = frozenset({"register", "attach", "ping"})


def handle_unregister(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    registrations.unregister(ctx, conn, frame.id)


def handle_ping(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    ctx.send(conn, protocol.message("pong", {"time": int(ctx.clock() * 1000)}, frame.id))


RequestFn = Callable[[Context, ConnRef, "str | None", object], None]


def request(fn: RequestFn) -> Handler:
    """The handler of a core function taking (ctx, connection, request id, typed payload)."""
    return lambda ctx, conn, frame: fn(ctx, conn, frame.id, frame.payload)


# Message type -> handler; each module's function is the handler's whole body.
HANDLERS: dict[str, Handler] = {
    "register": request(registrations.register),
    "attach": request(resume.attach),
    "unregister": handle_unregister,
    "ping": handle_ping,
    "call": request(calls.place_call),
    "hangup": request(calls.hangup),
    "answer": request(calls.answer),
    "reject": request(calls.reject),
    "hold": request(midcall.hold),
    "resume": request(midcall.resume),
    "updateAnswer": request(midcall.update_answer),
    "dtmf": request(midcall.dtmf),
    "transfer": request(transfer.transfer),
    "conference": request(conference.conference),
}


def dispatch(ctx: Context, conn: ConnRef, text: str) -> None:
    """Handle one client frame; every failure becomes an `error` reply on the same connection."""
    # Every frame uses the connection's allowance, malformed ones too (they are answered anyway).
    allowed = limits.allow_message(ctx, conn.key)
    try:
        frame = protocol.parse_frame(text)
    except ProtocolError as exc:
        ctx.log.info("frame refused conn=%s code=%s reason=%s", conn, exc.code, exc.reason)
        ctx.send(conn, protocol.error_message(exc.code, exc.reason, exc.request_id, exc.msg_type))
        return
    metrics.frame_in(ctx, frame.type)
    events.frame_in(ctx, conn.key, frame.type, frame.id, getattr(frame.payload, "call_id", None))
    if not allowed:
        ctx.send(conn, protocol.error_message(errors.RATE_LIMITED, "too many messages; slow down", frame.id, frame.type))
        return
    if frame.type not in UNAUTHENTICATED and registrations.dn_of_connection(ctx, conn) is None:
        # Authentication before anything: only register and ping before a registration.
        ctx.send(conn, protocol.error_message(errors.NOT_REGISTERED, "register first", frame.id, frame.type))
        return
    try:
        HANDLERS[frame.type](ctx, conn, frame)
    except GatewayError as exc:
        ctx.log.info("request refused conn=%s type=%s code=%s reason=%s", conn, frame.type, exc.code, exc.reason)
        ctx.send(conn, protocol.error_message(exc.code, exc.reason, frame.id, frame.type))
    except Exception:  # a bug must not take the connection down: report it and go on
        ctx.log.exception("handler %s failed conn=%s", frame.type, conn)
        ctx.send(conn, protocol.error_message(errors.INTERNAL, "internal error", frame.id, frame.type))
