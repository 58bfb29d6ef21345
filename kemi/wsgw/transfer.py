"""Call transfer with REFER (RFC 3515), both directions.

Blind: `transfer {callId, target}` -> REFER with Refer-To the routed target.
Attended: `transfer {callId, replacesCallId}` -> REFER whose Refer-To is the
other call's far end with a Replaces parameter naming that dialog (RFC 3891).
The REFER's 2xx answers the request (`transferAccepted`); each NOTIFY's
message/sipfrag becomes `transferProgress`; a final 2xx ends the call with a
BYE and `callEnded` reason `transferred`.

From the far end: a REFER -> 202 and a first NOTIFY (100 Trying), and
`transferRequested {callId, target}` to the browser. When the browser agrees it
places the new call with `call {..., referredBy: callId}`; that call's progress
is reported to the referrer in NOTIFYs on the original dialog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from . import errors, media, protocol
from .calls import (CONFIRMED, Call, key_of, contact, key_for_request, locked, own_call, send, send_in_dialog,
                    _send_bye)
from .connections import ConnRef
from .context import Context
from .errors import GatewayError
from .routing import route
from .sip_headers import validate_dn, validate_token
from .sip_port import SipReply

_SIPFRAG = re.compile(r"^SIP/2\.0\s+(\d{3})\s*([^\r\n]*)")
_REFER_TO_USER = re.compile(r"<?sips?:([^@;>?]+)@")


@dataclass(frozen=True)
class TransferPayload:
    call_id: str
    target: str = ""
    replaces_call_id: str = ""


def parse_transfer(payload: dict) -> TransferPayload:
    protocol.only_fields(payload, {"callId", "target", "replacesCallId"})
    if ("target" in payload) == ("replacesCallId" in payload):
        raise GatewayError(errors.INVALID_PAYLOAD, "give exactly one of target (blind) or replacesCallId (attended)")
    return TransferPayload(
        call_id=validate_token(payload.get("callId"), "callId"),
        target=validate_dn(payload["target"], "target") if "target" in payload else "",
        replaces_call_id=validate_token(payload["replacesCallId"], "replacesCallId") if "replacesCallId" in payload else "",
    )


protocol.register_type("transfer", parse_transfer)


# ---- our REFER ----


def transfer(ctx: Context, conn: ConnRef, request_id: str | None, req: TransferPayload) -> None:
    with own_call(ctx, conn, req.call_id) as call:
        if call.state != CONFIRMED:
            raise GatewayError(errors.INVALID_STATE, f"call {call.call_id} is not answered")
        if call.refer:
            raise GatewayError(errors.INVALID_STATE, f"a transfer of call {call.call_id} is already in progress")
        refer_to = _blind_target(ctx, req.target) if req.target else _replaces_target(ctx, conn, call, req.replaces_call_id)
        send_refer(ctx, call, refer_to, request_id)


def send_refer(ctx: Context, call: Call, refer_to: str, request_id: str | None) -> None:
    """REFER the far end of `call` (locked, answered) to `refer_to` (a name-addr)."""
    call.refer = {"request_id": request_id, "cseq": call.local_cseq + 1, "sent_at": ctx.clock(), "accepted": False}
    ctx.log.info("transfer out call=%s refer_to=%s", call.call_id, refer_to)
    send_in_dialog(ctx, call, "REFER", [("Refer-To", refer_to), ("Referred-By", f"<{call.local_uri}>"),
                                        ("Contact", contact(ctx, call.dn))])


def _blind_target(ctx: Context, target: str) -> str:
    decision = route(target, ctx.config)
    if decision.kind == "refused":
        raise GatewayError(errors.INVALID_PAYLOAD, f"the dial plan refuses {target}: {decision.reason}")
    return f"<{decision.ruri}>"


def replaces_value(other: Call) -> str:
    """The Replaces header value naming `other`'s dialog as its far end sees it (RFC 3891 3)."""
    return f"{other.sip_call_id};to-tag={other.remote_tag};from-tag={other.local_tag}"


def _replaces_target(ctx: Context, conn: ConnRef, call: Call, other_id: str) -> str:
    other = Call.load(ctx, key_of(ctx, conn, other_id))
    if other is None or other.key == call.key:
        raise GatewayError(errors.NO_SUCH_CALL, f"no other call {other_id} on this connection")
    if other.state != CONFIRMED:
        raise GatewayError(errors.INVALID_STATE, f"call {other_id} is not answered")
    return f"<{other.remote_target}?Replaces={quote(replaces_value(other), safe='')}>"


def on_refer_reply(ctx: Context, call: Call, reply: SipReply) -> None:
    pending = call.refer
    if not pending or reply.cseq != pending["cseq"] or reply.status < 200 or pending["accepted"]:
        return
    if 200 <= reply.status < 300:
        pending["accepted"] = True
        call.save(ctx)
        send(ctx, call.owner, "transferAccepted", {"callId": call.call_id}, pending["request_id"])
    else:
        call.refer = None
        call.save(ctx)
        ctx.send(call.owner, protocol.error_message(
            errors.PEER_REJECTED, f"REFER answered {reply.status} {reply.reason}", pending["request_id"], "transfer"))


# The browser has this long to act on a transferRequested before the referrer is told 603.
TRANSFER_REQUEST_TIMEOUT = 60


def tick_call(ctx: Context, call: Call, now: float) -> None:
    """Timers of an answered call (lock held): our REFER unanswered; a REFER the browser ignored."""
    if call.refer and not call.refer["accepted"] and now - call.refer["sent_at"] > ctx.config.sip_timeout:
        refer_timed_out(ctx, call)
    if call.refer_in and not call.refer_in.get("placed") and now >= call.refer_in.get("deadline", now):
        ctx.log.info("transfer request not acted on call=%s", call.call_id)
        _notify(ctx, call, 603, "Declined")


def refer_timed_out(ctx: Context, call: Call) -> None:
    pending = call.refer
    assert pending is not None
    call.refer = None
    call.save(ctx)
    ctx.send(call.owner, protocol.error_message(
        errors.PEER_REJECTED, "the far end did not answer the REFER", pending["request_id"], "transfer"))


def on_remote_notify(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str, event: str, body: str) -> int:
    """A NOTIFY for our REFER: report the sipfrag; a final 2xx ends our call (transferred)."""
    with locked(ctx, key_for_request(ctx, sip_call_id, from_tag, to_tag)) as call:
        if call is None:
            return 481
        if event.split(";")[0].strip().lower() != "refer" or not call.refer:
            return 489  # Bad Event
        frag = _SIPFRAG.match(body.strip())
        if not frag or not 100 <= int(frag.group(1)) <= 699:
            return 400
        status, reason = int(frag.group(1)), frag.group(2).strip()
        if not call.refer["accepted"]:
            # The NOTIFY overtook the 202 (they may be handled by two workers): a NOTIFY
            # means the REFER was accepted, so the request's reply goes first.
            call.refer["accepted"] = True
            call.save(ctx)
            send(ctx, call.owner, "transferAccepted", {"callId": call.call_id}, call.refer["request_id"])
        send(ctx, call.owner, "transferProgress", {"callId": call.call_id, "status": status, "reason": reason})
        if status >= 200:
            call.refer = None
            if status < 300 and call.state == CONFIRMED:
                ctx.log.info("transfer done call=%s", call.call_id)
                _send_bye(ctx, call)
                send(ctx, call.owner, "callEnded", media.ended_payload(call, "local", "transferred"))
            else:
                call.save(ctx)
        return 200


# ---- the far end's REFER ----


def on_remote_refer(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str, refer_to: str) -> int:
    """The status for a REFER from the far end: 202 when the browser is asked (transferRequested)."""
    with locked(ctx, key_for_request(ctx, sip_call_id, from_tag, to_tag)) as call:
        if call is None:
            return 481
        if call.state != CONFIRMED or call.refer_in:
            return 491
        m = _REFER_TO_USER.search(refer_to)
        try:
            target = validate_dn(m.group(1) if m else "", "target")
        except GatewayError:
            return 400
        call.refer_in = {"target": target, "deadline": ctx.clock() + TRANSFER_REQUEST_TIMEOUT, "placed": False}
        call.save(ctx)
        ctx.log.info("transfer requested call=%s target=%s", call.call_id, target)
        send(ctx, call.owner, "transferRequested", {"callId": call.call_id, "target": target})
        return 202


def notify_refer_accepted(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str) -> None:
    """RFC 3515 2.4.4: right after the 202, a NOTIFY with the initial state."""
    with locked(ctx, key_for_request(ctx, sip_call_id, from_tag, to_tag)) as call:
        if call is not None and call.refer_in:
            _notify(ctx, call, 100, "Trying")


def _notify(ctx: Context, call: Call, status: int, reason: str) -> None:
    final = status >= 200
    state = "terminated;reason=noresource" if final else "active;expires=60"
    if final:
        call.refer_in = None
    send_in_dialog(ctx, call, "NOTIFY", [("Event", "refer"), ("Subscription-State", state),
                                         ("Contact", contact(ctx, call.dn))],
                   f"SIP/2.0 {status} {reason}\r\n", "message/sipfrag;version=2.0")


def check_referred_by(ctx: Context, conn: ConnRef, referred_by: str) -> str:
    """The key of the call whose REFER a new `call` answers; invalid_state if there is none."""
    with locked(ctx, key_of(ctx, conn, referred_by)) as original:
        if original is None:
            raise GatewayError(errors.NO_SUCH_CALL, f"no call {referred_by} on this connection")
        if not original.refer_in:
            raise GatewayError(errors.INVALID_STATE, f"call {referred_by} has no transfer request")
        original.refer_in["placed"] = True
        original.save(ctx)
        return original.key


def referred_call_progress(ctx: Context, original_key: str, status: int, reason: str) -> None:
    """Progress of a call placed for a REFER, as NOTIFY on the referring dialog."""
    with locked(ctx, original_key) as original:
        if original is not None and original.refer_in and original.state == CONFIRMED:
            _notify(ctx, original, status, reason)
