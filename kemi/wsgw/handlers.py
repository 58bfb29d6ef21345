"""One handler per client message type, and the dispatcher that runs them.

A handler gets the context, the sender's connection and the validated frame.
It either sends its reply itself (possibly later, from another worker, when a
SIP reply arrives) or raises GatewayError, which becomes the `error` reply.
"""

from __future__ import annotations

from typing import Callable

from . import calls, conference, errors, limits, metrics, midcall, protocol, registrations, transfer
from .connections import ConnRef
from .context import Context
from .errors import GatewayError
from .protocol import Frame, ProtocolError

Handler = Callable[[Context, ConnRef, Frame], None]

# The only requests a connection may send before it is registered.
UNAUTHENTICATED = frozenset({"register", "ping"})


def handle_register(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    registrations.register(ctx, conn, frame.id, frame.payload)


def handle_unregister(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    registrations.unregister(ctx, conn, frame.id)


def handle_ping(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    ctx.send(conn, protocol.message("pong", {"time": int(ctx.clock() * 1000)}, frame.id))


def handle_call(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    calls.place_call(ctx, conn, frame.id, frame.payload)


def handle_hangup(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    calls.hangup(ctx, conn, frame.id, frame.payload)


def handle_answer(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    calls.answer(ctx, conn, frame.id, frame.payload)


def handle_reject(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    calls.reject(ctx, conn, frame.id, frame.payload)


def handle_hold(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    midcall.hold(ctx, conn, frame.id, frame.payload)


def handle_resume(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    midcall.resume(ctx, conn, frame.id, frame.payload)


def handle_update_answer(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    midcall.update_answer(ctx, conn, frame.id, frame.payload)


def handle_dtmf(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    midcall.dtmf(ctx, conn, frame.id, frame.payload)


def handle_transfer(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    transfer.transfer(ctx, conn, frame.id, frame.payload)


def handle_conference(ctx: Context, conn: ConnRef, frame: Frame) -> None:
    conference.conference(ctx, conn, frame.id, frame.payload)


HANDLERS: dict[str, Handler] = {
    "register": handle_register,
    "unregister": handle_unregister,
    "ping": handle_ping,
    "call": handle_call,
    "hangup": handle_hangup,
    "answer": handle_answer,
    "reject": handle_reject,
    "hold": handle_hold,
    "resume": handle_resume,
    "updateAnswer": handle_update_answer,
    "dtmf": handle_dtmf,
    "transfer": handle_transfer,
    "conference": handle_conference,
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
