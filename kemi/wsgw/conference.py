"""Three-way calls through a conference bridge (GW_CONFERENCE_URI).

SIP flow, chosen because every PBX bridge (Asterisk ConfBridge, Genesys, a
media server) supports it and the agent's own media never has to be moved:

1. `conference {callIds: [a, b], callId, sdp}`: the gateway picks a room and
   calls the bridge for the agent (a new outbound call `callId` with the
   browser's offer; Request-URI = GW_CONFERENCE_URI with `{room}` replaced).
2. When the bridge answers (`callAccepted` for `callId`), the gateway REFERs
   the far ends of calls a and b to the same bridge URI (blind transfers).
   The request's reply is `conferenceStarted {callId, room, callIds}`.
3. Each far end joins the bridge; its NOTIFYs show up as `transferProgress`,
   and on success its old call ends with `callEnded` reason `transferred`.
   A party that does not make it stays on its own call with the agent.
If the bridge refuses, the reply is `error` peer_rejected and calls a and b
are untouched.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from . import errors, protocol
from .calls import CONFIRMED, Call, CallPayload, key_of, locked, sibling_key, place_call, sdp_field, send
from .connections import ConnRef
from .context import Context
from .errors import GatewayError
from .routing import RouteDecision
from .sip_headers import validate_token
from .sip_uri import parse_sip_uri
from .transfer import send_refer


@dataclass(frozen=True)
class ConferencePayload:
    call_ids: tuple[str, str]
    call_id: str
    sdp: str


def parse_conference(payload: dict) -> ConferencePayload:
    protocol.only_fields(payload, {"callIds", "callId", "sdp"})
    ids = payload.get("callIds")
    if not isinstance(ids, list) or len(ids) != 2:
        raise GatewayError(errors.INVALID_PAYLOAD, "callIds must list exactly two calls")
    a, b = (validate_token(x, "callIds") for x in ids)
    call_id = validate_token(payload.get("callId"), "callId")
    if len({a, b, call_id}) != 3:
        raise GatewayError(errors.INVALID_PAYLOAD, "callIds must be two different calls, and callId a new one")
    return ConferencePayload(call_ids=(a, b), call_id=call_id, sdp=sdp_field(payload))


protocol.register_type("conference", parse_conference)


def bridge_uri(template: str, room: str) -> str:
    return template.replace("{room}", room)


def conference(ctx: Context, conn: ConnRef, request_id: str | None, req: ConferencePayload) -> None:
    template = ctx.config.conference_uri
    if not template:
        raise GatewayError(errors.INVALID_STATE, "no conference bridge is configured (GW_CONFERENCE_URI)")
    for member in req.call_ids:
        call = Call.load(ctx, key_of(ctx, conn, member))
        if call is None:
            raise GatewayError(errors.NO_SUCH_CALL, f"no call {member} on this connection")
        if call.state != CONFIRMED or call.refer:
            raise GatewayError(errors.INVALID_STATE, f"call {member} is not answered, or is being transferred")
    room = "conf" + secrets.token_hex(4)
    uri = bridge_uri(template, room)
    target = parse_sip_uri(uri)
    decision = RouteDecision(kind="conference", number=target.user or room, ruri=uri,
                             nexthop=f"sip:{target.hostport}")
    ctx.log.info("conference call=%s room=%s members=%s", req.call_id, room, ",".join(req.call_ids))
    place_call(ctx, conn, None, CallPayload(to=target.user or room, call_id=req.call_id, sdp=req.sdp), decision,
               {"request_id": request_id, "members": list(req.call_ids), "room": room, "uri": uri})


def bridge_answered(ctx: Context, leg: Call) -> None:
    """The agent is in the bridge: move the two other parties there (leg is locked)."""
    conf = leg.conference
    assert conf is not None
    owner = leg.owner
    for member in conf["members"]:
        with locked(ctx, sibling_key(leg, member)) as call:
            if call is not None and call.state == CONFIRMED and not call.refer:
                send_refer(ctx, call, f"<{conf['uri']}>", None)
    send(ctx, owner, "conferenceStarted", {"callId": leg.call_id, "room": conf["room"], "callIds": conf["members"]},
         conf["request_id"])


def bridge_failed(ctx: Context, leg: Call, reason: str) -> None:
    conf = leg.conference
    assert conf is not None
    ctx.send(leg.owner, protocol.error_message(errors.PEER_REJECTED, reason, conf["request_id"], "conference"))
