"""Mid-call control of an answered call: hold/resume (re-INVITE both ways) and DTMF.

Builds on calls.py: every function here runs with the call record locked and
changes it through the same Call object. The browser only sees JSON:
`hold`/`resume` -> `held`/`resumed`; a re-INVITE from the far end ->
`updateOffer`, answered by `updateAnswer` (or by the gateway itself with the
last SDP mirrored when the browser is silent); `dtmf` -> one INFO per digit ->
`dtmfSent`; an INFO from the far end -> `dtmfReceived`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from . import errors, events, media, protocol
from .calls import (CONFIRMED, Call, _contact_uri, _send_bye, contact, key_for_request, locked, own_call,
                    restart_session_timer, sdp_field, send, send_in_dialog)
from .connections import ConnRef
from .context import Context
from .errors import GatewayError
from .sdp_policy import NoAllowedCodec, apply_codec_policy, bump_version, mirror_answer
from .sip_headers import validate_token
from .sip_port import SipReply

MAX_491_RETRIES = 3
DTMF_DIGITS = re.compile(r"[0-9*#A-D]{1,32}")
DEFAULT_DTMF_MS = 160


# ---- payloads ----


@dataclass(frozen=True)
class SdpPayload:
    call_id: str
    sdp: str


@dataclass(frozen=True)
class DtmfPayload:
    call_id: str
    digits: str
    duration_ms: int = DEFAULT_DTMF_MS



def parse_sdp_payload(payload: dict) -> SdpPayload:
    protocol.only_fields(payload, {"callId", "sdp"})
    return SdpPayload(call_id=validate_token(payload.get("callId"), "callId"), sdp=sdp_field(payload))


def parse_dtmf(payload: dict) -> DtmfPayload:
    protocol.only_fields(payload, {"callId", "digits", "durationMs"})
    digits = payload.get("digits")
    if not isinstance(digits, str) or not DTMF_DIGITS.fullmatch(digits):
        raise GatewayError(errors.INVALID_PAYLOAD, "digits must be 1-32 of 0-9 * # A-D")
    duration = payload.get("durationMs", DEFAULT_DTMF_MS)
    if type(duration) is not int or not 40 <= duration <= 2000:
        raise GatewayError(errors.INVALID_PAYLOAD, "durationMs must be an integer from 40 to 2000")
    return DtmfPayload(call_id=validate_token(payload.get("callId"), "callId"), digits=digits, duration_ms=duration)


for _name, _parser in (("hold", parse_sdp_payload), ("resume", parse_sdp_payload),
                       ("updateAnswer", parse_sdp_payload), ("dtmf", parse_dtmf)):
    protocol.register_type(_name, _parser)


def _filtered(ctx: Context, sdp: str):
    try:
        return apply_codec_policy(sdp, ctx.config.codecs)
    except NoAllowedCodec as exc:
        raise GatewayError(errors.INVALID_PAYLOAD, str(exc)) from None
    except Exception:
        raise GatewayError(errors.INVALID_PAYLOAD, "sdp could not be parsed") from None


def _confirmed(call: Call) -> None:
    if call.state != CONFIRMED:
        raise GatewayError(errors.INVALID_STATE, f"call {call.call_id} is not answered")


# ---- our re-INVITE: hold / resume ----


def hold(ctx: Context, conn: ConnRef, request_id: str | None, req: SdpPayload) -> None:
    _reinvite(ctx, conn, request_id, req, "hold")


def resume(ctx: Context, conn: ConnRef, request_id: str | None, req: SdpPayload) -> None:
    _reinvite(ctx, conn, request_id, req, "resume")


def _reinvite(ctx: Context, conn: ConnRef, request_id: str | None, req: SdpPayload, op: str) -> None:
    with own_call(ctx, conn, req.call_id) as call:
        _confirmed(call)
        if call.reinvite or call.update_in:
            raise GatewayError(errors.INVALID_STATE, "another offer/answer exchange is in progress on this call")
        filtered = _filtered(ctx, req.sdp)
        sdp = media.offer_sdp(ctx, call, filtered.sdp, from_browser=True)
        call.reinvite = {"op": op, "request_id": request_id, "sdp": sdp, "cseq": 0, "sent_at": 0.0,
                         "retry_at": 0.0, "attempts": 0}
        _send_reinvite(ctx, call)


def _send_reinvite(ctx: Context, call: Call) -> None:
    pending = call.reinvite
    assert pending is not None
    pending["sent_at"], pending["retry_at"] = ctx.clock(), 0.0
    ctx.log.info("reinvite out call=%s op=%s attempt=%d", call.call_id, pending["op"], pending["attempts"] + 1)
    pending["cseq"] = call.local_cseq + 1  # what send_in_dialog will use (it saves the call)
    extra = [("Contact", contact(ctx, call.dn))]
    if call.se_interval:
        refresher = "uac" if call.se_refresher == "local" else "uas"
        extra += [("Supported", "timer"), ("Session-Expires", f"{call.se_interval};refresher={refresher}")]
    send_in_dialog(ctx, call, "INVITE", extra, pending["sdp"], "application/sdp")


def glare_backoff(call: Call) -> float:
    """RFC 3261 14.1: the owner of the Call-ID (our outbound calls) waits 2.1-4 s, the other side 0-2 s."""
    return random.uniform(2.1, 4.0) if call.direction == "outbound" else random.uniform(0.0, 2.0)


def on_reinvite_reply(ctx: Context, call: Call, reply: SipReply) -> None:
    pending = call.reinvite
    if pending is None or reply.cseq != pending["cseq"] or reply.status < 200:
        return  # provisional, or a retransmitted 200 (tm ACKs it again)
    if 200 <= reply.status < 300:
        call.reinvite = None
        call.local_sdp, call.remote_sdp = pending["sdp"], reply.body or call.remote_sdp
        # A target refresh (RFC 3261 12.2.1.2): the 2xx's Contact is where we send from now on.
        call.remote_target = _contact_uri(reply.header("contact") or "") or call.remote_target
        restart_session_timer(ctx, call)
        call.save(ctx)
        ctx.log.info("reinvite done call=%s op=%s", call.call_id, pending["op"])
        if pending["op"] != "refresh":
            done = {"hold": "held", "resume": "resumed"}[pending["op"]]
            try:
                browser_sdp = media.answer_sdp(ctx, call, reply.body, from_browser=False) if reply.body else ""
            except GatewayError as exc:
                ctx.send(call.owner, protocol.error_message(exc.code, exc.reason, pending["request_id"], pending["op"]))
                return
            send(ctx, call.owner, done, {"callId": call.call_id, "sdp": browser_sdp}, pending["request_id"])
    elif reply.status == 491 and pending["attempts"] < MAX_491_RETRIES:
        pending["attempts"] += 1
        pending["retry_at"] = ctx.clock() + glare_backoff(call)
        call.save(ctx)
        ctx.log.info("reinvite glare call=%s retry_in=%.1f", call.call_id, pending["retry_at"] - ctx.clock())
    elif reply.status in (408, 481):
        # The dialog is gone at the far end (RFC 3261 12.2.1.2): end the call.
        _reinvite_failed(ctx, call, f"the far end answered {reply.status} {reply.reason}")
        if call.state == CONFIRMED:
            _session_expired(ctx, call, "dialog gone", reason_word="dialog_gone")
    else:
        # The call stays up with the previous media (RFC 3261 14.1); only this request fails.
        _reinvite_failed(ctx, call, f"the far end answered {reply.status} {reply.reason}")


def _reinvite_failed(ctx: Context, call: Call, reason: str) -> None:
    pending = call.reinvite
    assert pending is not None
    call.reinvite = None
    if pending["op"] == "refresh":
        _session_expired(ctx, call, reason)
        return
    call.save(ctx)
    ctx.log.info("reinvite failed call=%s op=%s: %s", call.call_id, pending["op"], reason)
    ctx.send(call.owner, protocol.error_message(errors.PEER_REJECTED, reason, pending["request_id"], pending["op"]))


# ---- session timer (see session_timer.py) ----


def session_timer_due(ctx: Context, call: Call) -> None:
    """Called by calls.tick when the session timer of an answered call fires."""
    if call.se_refresher == "local":
        if call.reinvite or call.update_in:
            return  # that exchange refreshes the session when it succeeds
        call.reinvite = {"op": "refresh", "request_id": None, "sdp": call.local_sdp, "cseq": 0, "sent_at": 0.0,
                         "retry_at": 0.0, "attempts": 0}
        _send_reinvite(ctx, call)
    else:
        _session_expired(ctx, call, "no session refresh from the far end")


def _session_expired(ctx: Context, call: Call, reason: str, reason_word: str = "session_expired") -> None:
    ctx.log.info("call ended by the gateway call=%s: %s", call.call_id, reason)
    _send_bye(ctx, call)
    send(ctx, call.owner, "callEnded", media.ended_payload(call, "local", reason_word))


def fail_pending(ctx: Context, call: Call, reason: str = "the call ended") -> None:
    """The call is ending: every mid-call request still waiting gets its one final reply."""
    pending, call.reinvite = call.reinvite, None
    if pending and pending["op"] != "refresh":
        ctx.send(call.owner, protocol.error_message(errors.INVALID_STATE, reason, pending["request_id"], pending["op"]))
    queued, call.dtmf, call.dtmf_cseq = call.dtmf, [], 0
    for request_id, left, _, _ in queued:
        ctx.send(call.owner, protocol.error_message(
            errors.INVALID_STATE, f"{reason}; digits not sent: {left}", request_id, "dtmf"))
    update, call.update_in = call.update_in, None
    if update:
        # The far end's re-INVITE still waits for the browser: the dialog is going away.
        ctx.sip.reply_suspended(update["t_index"], update["t_label"], 487, "Request Terminated", "", "")
    refer, call.refer = call.refer, None
    if refer and not refer["accepted"]:
        ctx.send(call.owner, protocol.error_message(errors.INVALID_STATE, reason, refer["request_id"], "transfer"))


def on_remote_update(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str, has_sdp: bool) -> ImmediateReply:
    """An UPDATE from the far end: a session refresh without SDP is accepted; offers are not supported."""
    with locked(ctx, key_for_request(ctx, sip_call_id, from_tag, to_tag)) as call:
        if call is None:
            return ImmediateReply(481, "Call/Transaction Does Not Exist")
        if has_sdp:
            return ImmediateReply(488, "Not Acceptable Here")
        restart_session_timer(ctx, call)
        call.save(ctx)
        return ImmediateReply(200, "OK", _session_headers(ctx, call))


def _session_headers(ctx: Context, call: Call) -> str:
    headers = f"Contact: {contact(ctx, call.dn)}\r\n"
    if call.se_interval:
        refresher = "uas" if call.se_refresher == "local" else "uac"
        headers += f"Session-Expires: {call.se_interval};refresher={refresher}\r\nRequire: timer\r\n"
    return headers


def _same_origin(offer: str, previous: str) -> bool:
    """True when the offer's o= line (session id and version) is unchanged: a refresh, not a new offer."""
    def origin(sdp: str) -> str:
        return next((line.strip() for line in sdp.splitlines() if line.startswith("o=")), "")

    return bool(offer) and origin(offer) == origin(previous) != ""


# ---- the far end's re-INVITE ----


@dataclass(frozen=True)
class Reinvite:
    sip_call_id: str
    from_tag: str
    to_tag: str
    sdp: str
    contact: str = ""  # a re-INVITE refreshes the remote target (RFC 3261 12.2.2)


@dataclass(frozen=True)
class ImmediateReply:
    code: int
    reason: str
    headers: str = ""
    body: str = ""


def check_reinvite(ctx: Context, inv: Reinvite) -> ImmediateReply | None:
    """Answer the re-INVITE at once, or None: suspend it and ask the browser (offer_update)."""
    with locked(ctx, key_for_request(ctx, inv.sip_call_id, inv.from_tag, inv.to_tag)) as call:
        if call is None:
            return ImmediateReply(481, "Call/Transaction Does Not Exist")
        if call.state != CONFIRMED:
            return ImmediateReply(491, "Request Pending")
        if call.reinvite and call.reinvite["retry_at"] == 0.0:
            return ImmediateReply(491, "Request Pending")  # glare with our own re-INVITE
        if call.update_in:
            return ImmediateReply(500, "Server Internal Error", f"Retry-After: {random.randint(1, 10)}\r\n")
        _refresh_target(call, inv)
        if not inv.sdp:
            # A session refresh without an offer: offer what we have (new version, kept as ours; the ACK answers).
            call.local_sdp = bump_version(call.local_sdp)
            restart_session_timer(ctx, call)
            call.save(ctx)
            return ImmediateReply(200, "OK", _session_headers(ctx, call), call.local_sdp)
        if _same_origin(inv.sdp, call.remote_sdp):
            # Same session version: a refresh (RFC 4028), answered with our SDP as it is.
            restart_session_timer(ctx, call)
            call.save(ctx)
            return ImmediateReply(200, "OK", _session_headers(ctx, call), call.local_sdp)
        call.save(ctx)
        return None


def _refresh_target(call: Call, inv: Reinvite) -> None:
    call.remote_target = _contact_uri(inv.contact) or call.remote_target


def offer_update(ctx: Context, inv: Reinvite, t_index: int, t_label: int) -> None:
    """The re-INVITE is suspended: hand the offer to the browser."""
    with locked(ctx, key_for_request(ctx, inv.sip_call_id, inv.from_tag, inv.to_tag)) as call:
        if call is None:
            ctx.sip.reply_suspended(t_index, t_label, 481, "Call/Transaction Does Not Exist", "", "")
            return
        # Things may have changed since check_reinvite released the lock: check again.
        if call.state != CONFIRMED or (call.reinvite and call.reinvite["retry_at"] == 0.0):
            ctx.sip.reply_suspended(t_index, t_label, 491, "Request Pending", "", "")
            return
        if call.update_in:
            ctx.sip.reply_suspended(t_index, t_label, 500, "Server Internal Error",
                                    f"Retry-After: {random.randint(1, 10)}\r\n", "")
            return
        call.update_in = {"t_index": t_index, "t_label": t_label, "offer": inv.sdp,
                          "deadline": ctx.clock() + ctx.config.update_timeout}
        try:
            browser_sdp = media.offer_sdp(ctx, call, inv.sdp, from_browser=False)
        except GatewayError:
            call.update_in = None
            ctx.sip.reply_suspended(t_index, t_label, 500, "Server Internal Error", "", "")
            return
        call.save(ctx)
        ctx.log.info("reinvite in call=%s", call.call_id)
        send(ctx, call.owner, "updateOffer", {"callId": call.call_id, "sdp": browser_sdp})


def update_answer(ctx: Context, conn: ConnRef, request_id: str | None, req: SdpPayload) -> None:
    with own_call(ctx, conn, req.call_id) as call:
        if not call.update_in:
            raise GatewayError(errors.INVALID_STATE, f"no updateOffer is waiting for an answer on call {req.call_id}")
        filtered = _filtered(ctx, req.sdp)
        sent = _answer_update(ctx, call, media.answer_sdp(ctx, call, filtered.sdp, from_browser=True))
        send(ctx, conn, "updated", {"callId": call.call_id, "sdp": filtered.sdp} if sent else {"callId": call.call_id},
             request_id)


def _answer_update(ctx: Context, call: Call, sdp: str) -> bool:
    pending = call.update_in
    assert pending is not None
    call.update_in = None
    tag = ctx.sip.reply_suspended(pending["t_index"], pending["t_label"], 200, "OK", _session_headers(ctx, call), sdp)
    if tag is not None:
        call.local_sdp, call.remote_sdp = sdp, pending["offer"]
        restart_session_timer(ctx, call)
    call.save(ctx)
    return tag is not None


# ---- DTMF ----


def dtmf(ctx: Context, conn: ConnRef, request_id: str | None, req: DtmfPayload) -> None:
    with own_call(ctx, conn, req.call_id) as call:
        _confirmed(call)
        # [request id, digits left, duration, all digits]; one INFO at a time, in order.
        call.dtmf.append([request_id, req.digits, req.duration_ms, req.digits])
        if not call.dtmf_cseq:
            _send_next_info(ctx, call)
        else:
            call.save(ctx)


def _send_next_info(ctx: Context, call: Call) -> None:
    _, digits, duration, _ = call.dtmf[0]
    call.dtmf_cseq = call.local_cseq + 1
    call.dtmf_sent_at = ctx.clock()
    body = f"Signal={digits[0]}\r\nDuration={duration}\r\n"
    send_in_dialog(ctx, call, "INFO", [("Contact", contact(ctx, call.dn))], body, "application/dtmf-relay")


def on_info_reply(ctx: Context, call: Call, reply: SipReply) -> None:
    if not call.dtmf or reply.cseq != call.dtmf_cseq or reply.status < 200:
        return
    head = call.dtmf[0]
    call.dtmf_cseq = 0
    if 200 <= reply.status < 300:
        head[1] = head[1][1:]
        if not head[1]:
            call.dtmf.pop(0)
            send(ctx, call.owner, "dtmfSent", {"callId": call.call_id, "digits": head[3]}, head[0])
    else:
        call.dtmf.pop(0)
        ctx.send(call.owner, protocol.error_message(
            errors.PEER_REJECTED, f"INFO answered {reply.status} {reply.reason}; digits not sent: {head[1]}",
            head[0], "dtmf"))
    if call.dtmf:
        _send_next_info(ctx, call)
    else:
        call.save(ctx)


_SIGNAL = re.compile(r"^\s*Signal\s*=\s*([0-9*#A-Da-d])\s*$", re.MULTILINE)
_DURATION = re.compile(r"^\s*Duration\s*=\s*(\d{1,5})\s*$", re.MULTILINE)


def parse_dtmf_info(content_type: str, body: str) -> tuple[str, int] | None:
    """(digit, duration ms) of an INFO body (application/dtmf-relay or application/dtmf), else None."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/dtmf-relay":
        signal = _SIGNAL.search(body)
        if not signal:
            return None
        duration = _DURATION.search(body)
        return signal.group(1).upper(), int(duration.group(1)) if duration else DEFAULT_DTMF_MS
    if kind == "application/dtmf":
        digit = body.strip().upper()
        if len(digit) == 1 and DTMF_DIGITS.fullmatch(digit):
            return digit, DEFAULT_DTMF_MS
    return None


def on_remote_info(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str, content_type: str, body: str) -> int:
    """The SIP status to answer an INFO from the far end with."""
    with locked(ctx, key_for_request(ctx, sip_call_id, from_tag, to_tag)) as call:
        if call is None:
            return 481
        if not body.strip():
            return 200  # an empty INFO (RFC 6086): nothing to report
        parsed = parse_dtmf_info(content_type, body)
        if parsed is None:
            return 415
        digit, duration = parsed
        send(ctx, call.owner, "dtmfReceived", {"callId": call.call_id, "digit": digit, "durationMs": duration})
        return 200


# ---- timers (run by calls.tick for answered calls, lock held) ----


def tick_call(ctx: Context, call: Call, now: float) -> None:
    pending = call.reinvite
    if pending:
        if pending["retry_at"] and now >= pending["retry_at"]:
            if call.update_in:
                pending["retry_at"] = now + 1  # the far end's own re-INVITE goes first
                call.save(ctx)
            else:
                _send_reinvite(ctx, call)
        elif not pending["retry_at"] and now - pending["sent_at"] > ctx.config.sip_timeout:
            ctx.sip.cancel(call.sip_call_id, pending["cseq"])  # so a late 2xx cannot set up media we gave up on
            events.cancelled(ctx, call.call_id, call.sip_call_id, pending["cseq"])
            _reinvite_failed(ctx, call, "the far end did not answer the re-INVITE")
    if call.update_in and now >= call.update_in["deadline"]:
        # The browser stayed silent: answer with what was agreed before, direction mirrored.
        ctx.log.info("reinvite in call=%s answered by the gateway (browser timeout)", call.call_id)
        _answer_update(ctx, call, mirror_answer(call.local_sdp, call.update_in["offer"]))
    if call.dtmf and call.dtmf_cseq and now - call.dtmf_sent_at > ctx.config.sip_timeout:
        head = call.dtmf.pop(0)
        call.dtmf_cseq = 0
        ctx.send(call.owner, protocol.error_message(
            errors.PEER_REJECTED, f"INFO not answered; digits not sent: {head[1]}", head[0], "dtmf"))
        if call.dtmf:
            _send_next_info(ctx, call)
        else:
            call.save(ctx)
