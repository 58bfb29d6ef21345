"""Calls: the SIP INVITE dialog run for the browser, as a record in shared memory.

The browser never speaks SIP. For an outbound `call` the gateway is the UAC
(INVITE via tm, tm ACKs 2xx); for an inbound INVITE it is the UAS and keeps the
suspended transaction until the browser answers. Everything a later request,
reply or timer needs (tags, CSeq, route set, remote target, transaction index,
owning connection) is in the Call record in the shared store, so any worker
can continue the call.

Leg index: a reply or in-dialog request is matched to its call by SIP Call-ID
plus a tag. Outbound legs are indexed by our From tag, inbound legs by the
caller's From tag; the prefixes keep the two legs of a call that loops through
this gateway (JSON client to JSON client) apart, as they share a Call-ID.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from . import errors, events, protocol, registrations
from .connections import ConnRef
from .context import Context
from .errors import GatewayError
from .routing import RouteDecision, route
from .sdp_policy import NoAllowedCodec, apply_codec_policy
from .sip_headers import header_block, name_addr, new_call_id, new_tag, validate_dn, validate_token
from .sip_port import OutgoingRequest, SipReply
from .store import CALLS, CALLS_BY_SIP_ID, get_json, put_json
from . import limits, media, session_timer, sessions

# States
CALLING = "calling"  # INVITE sent, nothing heard yet
RINGING = "ringing"  # provisional received (outbound) / browser alerted (inbound)
CONFIRMED = "confirmed"
CANCELLING = "cancelling"  # local CANCEL sent, waiting for the 487
ENDING = "ending"  # BYE sent, waiting for its reply

MAX_SDP_CHARS = 24000
FAILURE_REASONS = {486: "busy", 600: "busy", 404: "not_found", 604: "not_found", 480: "unavailable",
                   603: "declined", 408: "no_answer", 487: "cancelled"}


def failure_reason(code: int) -> str:
    """The stable word of `callFailed.reason` for a SIP final status."""
    if code in FAILURE_REASONS:
        return FAILURE_REASONS[code]
    if 400 <= code < 500:
        return "rejected"
    if 500 <= code < 600:
        return "server_error"
    return "rejected"


@dataclass(frozen=True)
class CallPayload:
    to: str
    call_id: str
    sdp: str
    referred_by: str = ""  # the call whose far end asked for this call (REFER), see transfer.py


@dataclass(frozen=True)
class CallIdPayload:
    call_id: str
    sdp: str = ""
    code: int = 0
    reason: str = ""


_SDP_BAD_CHARS = re.compile(r"\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def sdp_field(payload: dict, required: bool = True) -> str:
    sdp = payload.get("sdp", "")
    if isinstance(sdp, str) and _SDP_BAD_CHARS.search(sdp):
        # A bare CR or control character would reach the SIP body verbatim.
        raise GatewayError(errors.INVALID_PAYLOAD, "sdp must not contain control characters or a CR without LF")
    if (required or "sdp" in payload) and (not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS):
        raise GatewayError(errors.INVALID_PAYLOAD, f"sdp must be an SDP text starting with v=0, at most {MAX_SDP_CHARS} characters")
    return sdp



def parse_call(payload: dict) -> CallPayload:
    protocol.only_fields(payload, {"to", "callId", "sdp", "referredBy"})
    referred_by = validate_token(payload["referredBy"], "referredBy") if "referredBy" in payload else ""
    return CallPayload(to=validate_dn(payload.get("to"), "to"), call_id=validate_token(payload.get("callId"), "callId"),
                       sdp=sdp_field(payload), referred_by=referred_by)


def parse_hangup(payload: dict) -> CallIdPayload:
    protocol.only_fields(payload, {"callId", "reason"})
    reason = payload.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 64:
        raise GatewayError(errors.INVALID_PAYLOAD, "reason must be a string of at most 64 characters")
    return CallIdPayload(call_id=validate_token(payload.get("callId"), "callId"), reason=reason)


def parse_answer(payload: dict) -> CallIdPayload:
    protocol.only_fields(payload, {"callId", "sdp"})
    return CallIdPayload(call_id=validate_token(payload.get("callId"), "callId"), sdp=sdp_field(payload))


def parse_reject(payload: dict) -> CallIdPayload:
    protocol.only_fields(payload, {"callId", "code"})
    code = payload.get("code", 486)
    if type(code) is not int or code not in (486, 603, 480):
        raise GatewayError(errors.INVALID_PAYLOAD, "code must be 486, 480 or 603")
    return CallIdPayload(call_id=validate_token(payload.get("callId"), "callId"), code=code)


for _name, _parser in (("call", parse_call), ("hangup", parse_hangup), ("answer", parse_answer), ("reject", parse_reject)):
    protocol.register_type(_name, _parser)


@dataclass
class Call:
    key: str  # owner connection key + "#" + client callId
    call_id: str  # the client's name for the call
    conn: str
    dn: str
    direction: str  # "outbound" | "inbound"
    state: str
    sip_call_id: str
    local_uri: str
    remote_uri: str
    local_tag: str = ""
    remote_tag: str = ""
    remote_target: str = ""
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    invite_cseq: int = 1
    peer: str = ""
    codecs: list[str] = field(default_factory=list)
    request_id: str | None = None
    created_at: float = 0.0
    answered_at: float = 0.0
    deadline: float = 0.0  # calling: unreachable after; ringing: no answer after; ending: forget after
    nexthop: str = ""
    t_index: int = 0
    t_label: int = 0
    # Last negotiated SDP on the SIP side (what we sent / what the peer sent).
    local_sdp: str = ""
    remote_sdp: str = ""
    # Mid-call state (see midcall.py): our pending re-INVITE, the peer's re-INVITE
    # waiting for the browser's answer, and the DTMF requests being sent as INFO.
    reinvite: dict | None = None
    update_in: dict | None = None
    dtmf: list = field(default_factory=list)
    dtmf_cseq: int = 0
    dtmf_sent_at: float = 0.0
    # Transfer (see transfer.py): our REFER, the far end's REFER, the call this one was placed for.
    refer: dict | None = None
    refer_in: dict | None = None
    referred_by: str = ""
    # Session timer (session_timer.py): interval, who refreshes ("local"/"remote"),
    # and when the next refresh is due (local) or the session expires (remote).
    se_interval: int = 0
    se_refresher: str = ""
    se_due: float = 0.0
    display_name: str = ""
    conference: dict | None = None  # this call is the agent's leg into a bridge (conference.py)
    media_stats: dict | None = None  # what the media relay saw, once the call's media ended
    # Set-up milestones in ms since the `call` frame arrived (outbound): invite, trying, ringing, answered, accepted.
    timing: dict = field(default_factory=dict)
    retried_422: bool = False

    @property
    def leg_key(self) -> str:
        return leg_key(self.direction, self.sip_call_id, self.local_tag if self.direction == "outbound" else self.remote_tag)

    @classmethod
    def load(cls, ctx: Context, key: str) -> "Call | None":
        data = get_json(ctx.store, CALLS, key)
        return cls(**data) if data else None

    def create(self, ctx: Context) -> None:
        """Store a new record (and count it for the per-connection call limit)."""
        self.save(ctx)
        limits.call_added(ctx, self.owner_key)

    def save(self, ctx: Context) -> None:
        put_json(ctx.store, CALLS, self.key, vars(self))  # vars, not asdict: no deep copy, same JSON
        ctx.store.put(CALLS_BY_SIP_ID, self.leg_key, self.key)

    def forget(self, ctx: Context) -> None:
        if ctx.store.get(CALLS, self.key) is not None:  # forgotten twice counts once
            ctx.store.delete(CALLS, self.key)
            limits.call_removed(ctx, self.owner_key)
        # The leg index may name another tab's record of the same inbound call.
        if ctx.store.get(CALLS_BY_SIP_ID, self.leg_key) in (None, self.key):
            ctx.store.delete(CALLS_BY_SIP_ID, self.leg_key)

    @property
    def owner_key(self) -> str:
        """The session the call belongs to (sessions.py): the first part of its key."""
        return self.key.split("#", 1)[0]

    @property
    def owner(self) -> ConnRef:
        """The connection the client is on now (it moves when the client `attach`es)."""
        return ConnRef.from_key(self.conn)


def leg_key(direction: str, sip_call_id: str, tag: str) -> str:
    return f"{'o' if direction == 'outbound' else 'i'}|{sip_call_id}|{tag}"


def call_key(owner: ConnRef, call_id: str) -> str:
    """A call record's key: the session owner (sessions.py) and the client's callId. The owner is
    the connection that registered, so the key stays when a new connection `attach`es."""
    return f"{owner.key}#{call_id}"


def key_of(ctx: Context, conn: ConnRef, call_id: str) -> str:
    """The key of the call `call_id` of the client on `conn`."""
    return call_key(sessions.owner_of(ctx, conn), call_id)


def sibling_key(call: "Call", call_id: str) -> str:
    """The key of another call of the same client as `call`."""
    return call.key.split("#", 1)[0] + "#" + call_id


def key_for_reply(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str) -> str | None:
    """A reply to our request: From tag is ours on an outbound leg, To tag is the caller's on an inbound one."""
    for key in (leg_key("outbound", sip_call_id, from_tag), leg_key("inbound", sip_call_id, to_tag)):
        ck = ctx.store.get(CALLS_BY_SIP_ID, key)
        if ck:
            return ck
    return None


def key_for_request(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str) -> str | None:
    """A request from the network: To tag is ours on an outbound leg, From tag is the caller's on an inbound one."""
    for key in (leg_key("outbound", sip_call_id, to_tag), leg_key("inbound", sip_call_id, from_tag)):
        ck = ctx.store.get(CALLS_BY_SIP_ID, key)
        if ck:
            return ck
    return None


def find_for_reply(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str) -> Call | None:
    key = key_for_reply(ctx, sip_call_id, from_tag, to_tag)
    return Call.load(ctx, key) if key else None


def find_for_request(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str) -> Call | None:
    key = key_for_request(ctx, sip_call_id, from_tag, to_tag)
    return Call.load(ctx, key) if key else None


@contextmanager
def locked(ctx: Context, key: str | None) -> Iterator[Call | None]:
    """The call `key`, loaded under its lock: replies (UDP workers), the browser's
    requests (its TCP worker) and the timer process all modify call records."""
    if not key:
        yield None
        return
    with ctx.store.lock(CALLS, key):
        yield Call.load(ctx, key)


@contextmanager
def own_call(ctx: Context, conn: ConnRef, call_id: str) -> Iterator[Call]:
    """A call of this connection, locked; no_such_call otherwise (a client acts on its own calls only)."""
    with locked(ctx, key_of(ctx, conn, call_id)) as call:
        if call is None or call.conn != conn.key:
            raise GatewayError(errors.NO_SUCH_CALL, f"no call {call_id} on this connection")
        yield call


def contact(ctx: Context, dn: str) -> str:
    return f"<sip:{dn}@{ctx.config.listen_ip}:{ctx.config.sip_port}>"


def send(ctx: Context, conn: ConnRef, msg_type: str, payload: dict, request_id: str | None = None) -> None:
    ctx.send(conn, protocol.message(msg_type, payload, request_id))


# ---- outbound ----


def place_call(ctx: Context, conn: ConnRef, request_id: str | None, req: CallPayload,
               decision: RouteDecision | None = None, conference: dict | None = None) -> None:
    """An outbound call. `decision` overrides the dial plan (the conference bridge);
    `conference` marks the agent's leg into a bridge (see conference.py)."""
    dn = registrations.dn_of_connection(ctx, conn)
    reg = registrations.Registration.load(ctx, dn) if dn else None
    # Upstream, the binding exists while the REGISTER is pending: only a registration
    # the registrar accepted may call (the PBX trusts the gateway's INVITEs).
    if reg is None or reg.state != registrations.REGISTERED or conn.key not in reg.all_conns():
        raise GatewayError(errors.NOT_REGISTERED, "register before calling")
    owner = sessions.owner_of(ctx, conn)
    limits.check_call_limit(ctx, owner.key)
    key = call_key(owner, req.call_id)
    with ctx.store.lock(CALLS, key):
        _place_call(ctx, conn, request_id, req, reg, key, decision or route(req.to, ctx.config), conference)


def _place_call(ctx: Context, conn: ConnRef, request_id: str | None, req: CallPayload,
                reg: registrations.Registration, key: str, decision: RouteDecision, conference: dict | None) -> None:
    from . import transfer  # builds on this module

    dn = reg.dn
    if ctx.store.get(CALLS, key) is not None:
        raise GatewayError(errors.INVALID_STATE, f"callId {req.call_id} is already in use on this connection")
    referred_by = transfer.check_referred_by(ctx, conn, req.referred_by) if req.referred_by else ""

    def fail(code: int, reason: str) -> None:
        ctx.log.info("call refused call=%s to=%s code=%d %s", req.call_id, req.to, code, reason)
        send(ctx, conn, "callFailed", {"callId": req.call_id, "code": code, "reason": failure_reason(code)}, request_id)
        if referred_by:
            transfer.referred_call_progress(ctx, referred_by, code, reason)
        if conference:
            ctx.send(conn, protocol.error_message(errors.INVALID_PAYLOAD if code == 488 else errors.PEER_REJECTED,
                                                  reason, conference["request_id"], "conference"))

    if decision.kind == "refused":
        return fail(decision.code, decision.reason)
    try:
        filtered = apply_codec_policy(req.sdp, ctx.config.codecs)
    except NoAllowedCodec as exc:
        return fail(488, str(exc))
    except Exception:
        raise GatewayError(errors.INVALID_PAYLOAD, "sdp could not be parsed") from None

    domain = ctx.config.upstream.host if ctx.config.upstream else f"{ctx.config.listen_ip}:{ctx.config.sip_port}"
    now = ctx.clock()
    call = Call(
        key=key, call_id=req.call_id, conn=conn.key, dn=dn, direction="outbound", state=CALLING,
        sip_call_id=new_call_id(ctx.config.listen_ip), local_uri=f"sip:{dn}@{domain}", remote_uri=decision.ruri,
        local_tag=new_tag(), peer=req.to, codecs=filtered.codecs, request_id=request_id, created_at=now,
        deadline=now + ctx.config.sip_timeout, nexthop=decision.nexthop, local_sdp=filtered.sdp,
        referred_by=referred_by, display_name=reg.display_name, conference=conference,
    )
    try:
        call.local_sdp = media.offer_sdp(ctx, call, filtered.sdp, from_browser=True)
    except GatewayError as exc:
        return fail(503, exc.reason)
    ctx.log.info("call out call=%s sip_call_id=%s from=%s to=%s route=%s", call.call_id, call.sip_call_id, dn, req.to, decision.kind)
    events.emit(ctx, "call.out", callId=call.call_id, sipCallId=call.sip_call_id, dn=dn, to=req.to, route=decision.kind)
    limits.call_added(ctx, call.owner_key)  # the record itself is stored by _send_invite
    if not _send_invite(ctx, call, ctx.config.session_expires, ctx.config.min_se):
        media.end(ctx, call)
        call.forget(ctx)
        fail(503, "INVITE could not be sent")


def _mark(ctx: Context, call: Call, milestone: str) -> None:
    """Record a set-up milestone once (ms since the `call` frame arrived)."""
    call.timing.setdefault(milestone, round((ctx.clock() - call.created_at) * 1000))


def _send_invite(ctx: Context, call: Call, session_expires: int, min_se: int) -> bool:
    """The initial INVITE (or its retry after a 422, with the next CSeq). Saves the call."""
    _mark(ctx, call, "invite")
    call.invite_cseq = call.local_cseq
    call.save(ctx)
    headers = [
        ("From", name_addr(call.local_uri, call.display_name, call.local_tag)),
        ("To", name_addr(call.remote_uri)),
        ("Call-ID", call.sip_call_id),
        ("CSeq", f"{call.invite_cseq} INVITE"),
        ("Contact", contact(ctx, call.dn)),
        ("Max-Forwards", "70"),
        ("Supported", "timer"),
        ("Session-Expires", str(session_expires)),
        ("Min-SE", str(min_se)),
        ("Content-Type", "application/sdp"),
    ]
    return ctx.sip.send_request(OutgoingRequest("INVITE", call.remote_uri, header_block(headers), call.local_sdp,
                                                call.nexthop))


_URI_IN_BRACKETS = re.compile(r"<([^>]+)>")


def _contact_uri(value: str) -> str:
    m = _URI_IN_BRACKETS.search(value or "")
    return m.group(1) if m else (value or "").split(";")[0].strip()


def _route_list(record_route: str) -> list[str]:
    return [f"<{u}>" for u in _URI_IN_BRACKETS.findall(record_route or "")]


def on_invite_reply(ctx: Context, call: Call, reply: SipReply) -> None:
    retrying_422 = reply.status == 422 and not call.retried_422
    if call.referred_by and reply.status > 100 and call.state != CANCELLING and not retrying_422:
        from . import transfer

        transfer.referred_call_progress(ctx, call.referred_by, reply.status, reply.reason)
    conn = call.owner
    if reply.status < 200:
        if call.state not in (CALLING, RINGING):
            # The browser hung up already, or the 200 was handled first: replies of one call
            # may be handled by different workers, so a 180 can lose the race with its 200.
            return
        _mark(ctx, call, "trying" if reply.status == 100 else "ringing")
        if call.state == CALLING:
            call.state = RINGING
            call.deadline = ctx.clock() + ctx.config.ring_timeout
        call.save(ctx)
        if reply.status == 100:
            return
        if reply.status == 183 and reply.body:
            call.remote_tag = reply.to_tag or call.remote_tag
            sdp = _relay_answer(ctx, call, reply.body)
            if sdp is not None:
                send(ctx, conn, "progress", {"callId": call.call_id, "sdp": sdp})
        elif reply.status in (180, 181, 182, 183):
            send(ctx, conn, "ringing", {"callId": call.call_id})
        return
    if 200 <= reply.status < 300:
        if call.state in (CONFIRMED, ENDING):
            from . import metrics

            metrics.sip_retransmission(ctx, "reply")
            return  # a retransmitted 200: tm has ACKed it again
        call.remote_tag = reply.to_tag
        call.remote_target = _contact_uri(reply.header("contact") or "") or call.remote_uri
        call.route_set = list(reversed(_route_list(reply.header("record-route") or "")))
        if call.state == CANCELLING:
            # Our CANCEL lost the race with the 200: the dialog exists, end it.
            _send_bye(ctx, call)
            return
        call.state = CONFIRMED
        call.answered_at = ctx.clock()
        call.remote_sdp = reply.body
        _start_session_timer(ctx, call, reply.header("session-expires"), we_are="uac")
        request_id, call.request_id = call.request_id, None
        browser_sdp = _relay_answer(ctx, call, reply.body)
        if browser_sdp is None:  # the relay failed: the call cannot have media
            _send_bye(ctx, call)
            send(ctx, conn, "callFailed", {"callId": call.call_id, "code": 503, "reason": "server_error"}, request_id)
            return
        call.save(ctx)
        _mark(ctx, call, "answered")  # the 200 (tm sends the ACK as it arrives)
        _mark(ctx, call, "accepted")
        call.save(ctx)
        from . import metrics

        metrics.observe_setup(ctx, call.timing["accepted"] / 1000.0)
        metrics.call_answered(ctx, "outbound")
        ctx.log.info("call answered call=%s sip_call_id=%s timing=%s", call.call_id, call.sip_call_id,
                     ",".join(f"{k}:{v}" for k, v in call.timing.items()))
        send(ctx, conn, "callAccepted",
             {"callId": call.call_id, "sdp": browser_sdp, "codecs": call.codecs, "timing": dict(call.timing)},
             request_id)
        if call.conference:
            from . import conference

            conference.bridge_answered(ctx, call)
        return
    # final failure
    if reply.status == 422 and not call.retried_422 and call.state != CANCELLING:
        # RFC 4028 6: retry once with the interval the far end requires.
        min_se = max(session_timer.parse_min_se(reply.header("min-se")) or 0, ctx.config.min_se)
        call.retried_422 = True
        call.local_cseq += 1
        call.state, call.deadline = CALLING, ctx.clock() + ctx.config.sip_timeout  # a new INVITE: timers again
        ctx.log.info("call 422 call=%s retry with Session-Expires %d", call.call_id, min_se)
        if _send_invite(ctx, call, max(min_se, ctx.config.session_expires), min_se):
            return
    media.end(ctx, call)
    call.forget(ctx)
    if call.state == CANCELLING:
        return  # the browser already got callEnded
    ctx.log.info("call failed call=%s code=%d", call.call_id, reply.status)
    send(ctx, conn, "callFailed", {"callId": call.call_id, "code": reply.status, "reason": failure_reason(reply.status)},
          call.request_id)
    if call.conference:
        from . import conference

        conference.bridge_failed(ctx, call, f"the conference bridge answered {reply.status} {reply.reason}")


def _start_session_timer(ctx: Context, call: Call, header: str | None, we_are: str) -> None:
    se = session_timer.parse_session_expires(header)
    if se is None:
        call.se_interval = 0
        return
    call.se_interval = se.interval
    call.se_refresher = "local" if se.refresher == we_are else "remote"
    restart_session_timer(ctx, call)


def restart_session_timer(ctx: Context, call: Call) -> None:
    """A refresh happened (either side): the next one is due from now."""
    if not call.se_interval:
        return
    now = ctx.clock()
    call.se_due = (session_timer.refresh_at(now, call.se_interval) if call.se_refresher == "local"
                   else session_timer.expiry_at(now, call.se_interval))


def send_in_dialog(ctx: Context, call: Call, method: str, extra: list[tuple[str, str]] | None = None,
                   body: str = "", content_type: str = "") -> int:
    """Send `method` inside the call's dialog (tags, route set, remote target, next CSeq).

    Saves the call (with the new CSeq) and returns the CSeq used."""
    call.local_cseq += 1  # our own CSeq space: the INVITE used 1 on outbound legs, nothing on inbound ones
    call.save(ctx)
    headers = [
        ("From", name_addr(call.local_uri, "", call.local_tag)),
        ("To", name_addr(call.remote_uri, "", call.remote_tag)),
        ("Call-ID", call.sip_call_id),
        ("CSeq", f"{call.local_cseq} {method}"),
        ("Max-Forwards", "70"),
    ]
    if call.route_set:
        headers.append(("Route", ", ".join(call.route_set)))
    headers += extra or []
    if body:
        headers.append(("Content-Type", content_type))
    nexthop = _contact_uri(call.route_set[0]) if call.route_set else ""
    ctx.sip.send_request(OutgoingRequest(method, call.remote_target, header_block(headers), body, nexthop))
    return call.local_cseq


def _relay_answer(ctx: Context, call: Call, sdp: str) -> str | None:
    """The far end's answer as the browser gets it (through the media relay, if any)."""
    try:
        return media.answer_sdp(ctx, call, sdp, from_browser=False)
    except GatewayError:
        return None


def _send_bye(ctx: Context, call: Call) -> None:
    from . import midcall

    midcall.fail_pending(ctx, call)
    media.end(ctx, call)
    call.state = ENDING
    call.deadline = ctx.clock() + 32
    send_in_dialog(ctx, call, "BYE")


def on_reply(ctx: Context, reply: SipReply) -> None:
    from . import midcall  # midcall builds on this module

    with locked(ctx, key_for_reply(ctx, reply.call_id, reply.from_tag, reply.to_tag)) as call:
        if call is None:
            return
        if reply.method == "INVITE" and call.direction == "outbound" and reply.cseq == call.invite_cseq:
            on_invite_reply(ctx, call, reply)
        elif reply.method == "INVITE":
            midcall.on_reinvite_reply(ctx, call, reply)
        elif reply.method == "INFO":
            midcall.on_info_reply(ctx, call, reply)
        elif reply.method == "REFER":
            from . import transfer

            transfer.on_refer_reply(ctx, call, reply)
        elif reply.method == "BYE" and reply.status >= 200 and call.state == ENDING:
            call.forget(ctx)


def _cancel(ctx: Context, call: Call) -> None:
    """CANCEL our INVITE and keep the record until its final reply: a 200 that
    crosses the CANCEL must still be ACKed (tm) and ended with a BYE (on_invite_reply).

    Without a provisional no CANCEL can be sent (RFC 3261 9.1) and no 487 will come:
    tm gives up on its own fr_timer (= GW_SIP_TIMEOUT), so wait that long, not 32 s."""
    call.deadline = ctx.clock() + (ctx.config.sip_timeout if call.state == CALLING else 32)
    call.state = CANCELLING
    media.end(ctx, call)
    call.save(ctx)
    ctx.sip.cancel(call.sip_call_id, call.invite_cseq)
    events.cancelled(ctx, call.call_id, call.sip_call_id, call.invite_cseq)
    _cancel_looped_leg(ctx, call)
    if call.referred_by:
        from . import transfer

        # The referrer's subscription ends too (no 487 reply will be reported after CANCELLING).
        transfer.referred_call_progress(ctx, call.referred_by, 487, "Request Terminated")


def _cancel_looped_leg(ctx: Context, call: Call) -> None:
    """A call to a DN of this gateway loops back in as an inbound leg with the same Call-ID
    and CSeq, so tm's CANCEL-by-Call-ID may pick the held inbound transaction instead of
    ours. Do for that leg what the CANCEL would do: 487 to the INVITE, callCancelled to the tabs."""
    own = f"sip:{ctx.config.listen_ip}:{ctx.config.sip_port}"
    if call.nexthop != own:
        return
    with locked(ctx, ctx.store.get(CALLS_BY_SIP_ID, leg_key("inbound", call.sip_call_id, call.local_tag))) as leg:
        if leg is not None and leg.state == RINGING:
            ctx.sip.reply_suspended(leg.t_index, leg.t_label, 487, "Request Terminated", "", "")
            ctx.log.info("call cancelled by caller call=%s (looped leg)", leg.call_id)
            _end_all_forks(ctx, leg, "callCancelled", {})


def hangup(ctx: Context, conn: ConnRef, request_id: str | None, req: CallIdPayload) -> None:
    with own_call(ctx, conn, req.call_id) as call:
        _hangup(ctx, conn, request_id, req, call)


def _hangup(ctx: Context, conn: ConnRef, request_id: str | None, req: CallIdPayload, call: Call) -> None:
    if call.direction == "outbound" and call.state in (CALLING, RINGING):
        _cancel(ctx, call)
        # The `call` request gets its one final reply too (and a conference request, for a bridge leg).
        send(ctx, conn, "callFailed", {"callId": call.call_id, "code": 487, "reason": "cancelled"}, call.request_id)
        if call.conference:
            from . import conference

            conference.bridge_failed(ctx, call, "cancelled")
    elif call.direction == "inbound" and call.state == RINGING:
        _leave_ringing(ctx, call, 486, "Busy Here")
    elif call.state == CONFIRMED:
        _send_bye(ctx, call)
    else:
        raise GatewayError(errors.INVALID_STATE, f"call {req.call_id} is already ending")
    ctx.log.info("call hangup call=%s state=%s", call.call_id, call.state)
    send(ctx, conn, "callEnded", media.ended_payload(call, "local", req.reason or "hangup"), request_id)


# ---- inbound ----


@dataclass(frozen=True)
class InboundInvite:
    sip_call_id: str
    dn: str  # Request-URI user
    from_uri: str
    from_user: str
    display_name: str
    from_tag: str
    to_uri: str
    contact: str
    record_route: str
    cseq: int
    sdp: str
    session_expires: str = ""  # the Session-Expires header, if any
    supported: str = ""  # the Supported header


def check_inbound(ctx: Context, invite: InboundInvite) -> tuple[int, str] | None:
    """The final response to refuse an inbound INVITE with, or None to ring the DN."""
    if ctx.config.embedded and ctx.subscribers is not None and not ctx.subscribers.exists(invite.dn):
        return 404, "Not Found"
    if not registrations.connections_of_dn(ctx, invite.dn):
        return 480, "Temporarily Unavailable"
    se = session_timer.parse_session_expires(invite.session_expires)
    if se is not None and se.interval < ctx.config.min_se:
        return 422, "Session Interval Too Small"  # the adapter adds Min-SE
    return None


# An inbound call rings on every tab (WebSocket) of the DN: one Call record per
# tab ("fork"), all for the same suspended transaction. The list of fork keys is
# kept under "f|<leg key>" while more than one tab rings.


def _forks_key(call: Call) -> str:
    return "f|" + call.leg_key


def forks(ctx: Context, call: Call) -> list[str]:
    raw = ctx.store.get(CALLS_BY_SIP_ID, _forks_key(call))
    return list(protocol.decode(raw)) if raw else [call.key]


def _set_forks(ctx: Context, call: Call, keys: list[str]) -> None:
    if len(keys) > 1:
        ctx.store.put(CALLS_BY_SIP_ID, _forks_key(call), protocol.encode(keys))
    else:
        ctx.store.delete(CALLS_BY_SIP_ID, _forks_key(call))
    if keys:
        ctx.store.put(CALLS_BY_SIP_ID, call.leg_key, keys[0])


def ring_inbound(ctx: Context, invite: InboundInvite, t_index: int, t_label: int, local_tag: str) -> None:
    """The INVITE is suspended and 180 sent: record the call and alert every tab of the DN."""
    conns = registrations.connections_of_dn(ctx, invite.dn)
    if not conns:
        ctx.sip.reply_suspended(t_index, t_label, 480, "Temporarily Unavailable", "", "")
        return
    now = ctx.clock()
    call_id = "in-" + new_tag()
    tabs = []
    for conn in conns:
        call = Call(
            key=key_of(ctx, conn, call_id), call_id=call_id, conn=conn.key, dn=invite.dn, direction="inbound",
            state=RINGING, sip_call_id=invite.sip_call_id, local_uri=invite.to_uri, remote_uri=invite.from_uri,
            local_tag=local_tag, remote_tag=invite.from_tag,
            remote_target=_contact_uri(invite.contact) or invite.from_uri, route_set=_route_list(invite.record_route),
            invite_cseq=invite.cseq, local_cseq=0, peer=invite.from_user, created_at=now,
            deadline=now + ctx.config.ring_timeout, t_index=t_index, t_label=t_label, remote_sdp=invite.sdp,
        )
        call.create(ctx)
        tabs.append(call)
    with ctx.store.lock(CALLS_BY_SIP_ID, _forks_key(tabs[0])):
        _set_forks(ctx, tabs[0], [c.key for c in tabs])
    ctx.log.info("call in call=%s sip_call_id=%s to=%s from=%s tabs=%d", call_id, invite.sip_call_id, invite.dn,
                 invite.from_user, len(tabs))
    # Links the two ids: the INVITE's own events (sip.in, 100, 180) came before the call had a callId.
    events.emit(ctx, "call.in", callId=call_id, sipCallId=invite.sip_call_id, dn=invite.dn, src=invite.from_user,
                tabs=len(tabs))
    se = session_timer.parse_session_expires(invite.session_expires)
    if se is not None and session_timer.supports_timer(invite.supported):
        # The caller refreshes unless it asked us to (refresher=uas); armed when answered.
        refresher = "local" if se.refresher == "uas" else "remote"
        for call in tabs:
            call.se_interval, call.se_refresher = se.interval, refresher
            call.save(ctx)
    try:
        browser_sdp = media.offer_sdp(ctx, tabs[0], invite.sdp, from_browser=False)
    except GatewayError:
        for call in tabs:
            call.forget(ctx)
        ctx.store.delete(CALLS_BY_SIP_ID, _forks_key(tabs[0]))
        ctx.sip.reply_suspended(t_index, t_label, 503, "Service Unavailable", "", "")
        return
    incoming = {"callId": call_id, "from": invite.from_user, "displayName": invite.display_name, "sdp": browser_sdp}
    for call in tabs:
        if not ctx.send(call.owner, protocol.message("incomingCall", incoming)):
            # This tab cannot be alerted (gone, or the frame is too large): do not ring into the void.
            with locked(ctx, call.key) as fork:
                if fork is not None:
                    _leave_ringing(ctx, fork, 480, "Temporarily Unavailable")


def _leave_ringing(ctx: Context, call: Call, code: int, reason: str) -> None:
    """One tab stops ringing; the SIP side gets `code` only when it was the last one."""
    with ctx.store.lock(CALLS_BY_SIP_ID, _forks_key(call)):
        remaining = [k for k in forks(ctx, call) if k != call.key]
        call.forget(ctx)
        _set_forks(ctx, call, remaining)
    if not remaining:
        ctx.sip.reply_suspended(call.t_index, call.t_label, code, reason, "", "")
        media.end(ctx, call)


def _end_all_forks(ctx: Context, call: Call, msg_type: str, payload_extra: dict) -> None:
    """The ringing stops for every tab (caller CANCEL, ring timeout): tell each, forget all."""
    with ctx.store.lock(CALLS_BY_SIP_ID, _forks_key(call)):
        keys = forks(ctx, call)
        for key in keys:
            fork = call if key == call.key else Call.load(ctx, key)
            if fork is not None:
                fork.forget(ctx)
                send(ctx, fork.owner, msg_type, {"callId": fork.call_id, **payload_extra})
        ctx.store.delete(CALLS_BY_SIP_ID, _forks_key(call))
        ctx.store.delete(CALLS_BY_SIP_ID, call.leg_key)
    media.end(ctx, call)


def answer(ctx: Context, conn: ConnRef, request_id: str | None, req: CallIdPayload) -> None:
    with own_call(ctx, conn, req.call_id) as call:
        _answer(ctx, conn, request_id, req, call)


def _answer(ctx: Context, conn: ConnRef, request_id: str | None, req: CallIdPayload, call: Call) -> None:
    if call.direction != "inbound" or call.state != RINGING:
        raise GatewayError(errors.INVALID_STATE, f"call {req.call_id} is not ringing")
    try:
        filtered = apply_codec_policy(req.sdp, ctx.config.codecs)
    except NoAllowedCodec as exc:
        raise GatewayError(errors.INVALID_PAYLOAD, str(exc)) from None
    except Exception:
        raise GatewayError(errors.INVALID_PAYLOAD, "sdp could not be parsed") from None
    headers = f"Contact: {contact(ctx, call.dn)}\r\n"
    if call.se_interval:
        refresher = "uas" if call.se_refresher == "local" else "uac"
        headers += f"Session-Expires: {call.se_interval};refresher={refresher}\r\nRequire: timer\r\n"
    sip_sdp = media.answer_sdp(ctx, call, filtered.sdp, from_browser=True)
    local_tag = ctx.sip.reply_suspended(call.t_index, call.t_label, 200, "OK", headers, sip_sdp)
    if local_tag is None:
        # The caller's CANCEL (or another tab) won the race: stop every tab of this call.
        _end_all_forks(ctx, call, "callCancelled", {})
        raise GatewayError(errors.NO_SUCH_CALL, f"call {req.call_id} was cancelled, or answered in another tab")
    with ctx.store.lock(CALLS_BY_SIP_ID, _forks_key(call)):
        for key in forks(ctx, call):
            other = Call.load(ctx, key) if key != call.key else None
            if other is not None:
                other.forget(ctx)
                send(ctx, other.owner, "answeredElsewhere", {"callId": other.call_id})
        _set_forks(ctx, call, [call.key])
    call.local_tag = local_tag or call.local_tag
    call.state = CONFIRMED
    call.codecs = filtered.codecs
    call.local_sdp = sip_sdp
    call.answered_at = ctx.clock()
    restart_session_timer(ctx, call)
    call.save(ctx)
    ctx.log.info("call answered call=%s sip_call_id=%s", call.call_id, call.sip_call_id)
    from . import metrics

    metrics.call_answered(ctx, "inbound")
    send(ctx, conn, "callAccepted", {"callId": call.call_id, "sdp": filtered.sdp, "codecs": filtered.codecs}, request_id)


def reject(ctx: Context, conn: ConnRef, request_id: str | None, req: CallIdPayload) -> None:
    with own_call(ctx, conn, req.call_id) as call:
        _reject(ctx, conn, request_id, req, call)


def _reject(ctx: Context, conn: ConnRef, request_id: str | None, req: CallIdPayload, call: Call) -> None:
    if call.direction != "inbound" or call.state != RINGING:
        raise GatewayError(errors.INVALID_STATE, f"call {req.call_id} is not ringing")
    reasons = {486: "Busy Here", 603: "Decline", 480: "Temporarily Unavailable"}
    # With other tabs still ringing, only this tab stops.
    _leave_ringing(ctx, call, req.code, reasons[req.code])
    send(ctx, conn, "callEnded", media.ended_payload(call, "local", "rejected"), request_id)


def on_remote_bye(ctx: Context, sip_call_id: str, from_tag: str, to_tag: str) -> int:
    with locked(ctx, key_for_request(ctx, sip_call_id, from_tag, to_tag)) as call:
        return _on_remote_bye(ctx, call)


def _on_remote_bye(ctx: Context, call: Call | None) -> int:
    from . import midcall

    if call is None:
        return 481
    midcall.fail_pending(ctx, call)
    media.end(ctx, call)
    call.forget(ctx)
    if call.state == ENDING:
        return 200  # the BYEs crossed: the browser already got callEnded
    ctx.log.info("call ended by remote call=%s", call.call_id)
    send(ctx, call.owner, "callEnded", media.ended_payload(call, "remote", "bye"))
    return 200


def on_remote_cancel(ctx: Context, sip_call_id: str, from_tag: str) -> None:
    with locked(ctx, key_for_request(ctx, sip_call_id, from_tag, "")) as call:
        _on_remote_cancel(ctx, call)


def _on_remote_cancel(ctx: Context, call: Call | None) -> None:
    if call is None or call.direction != "inbound" or call.state != RINGING:
        return
    ctx.log.info("call cancelled by caller call=%s", call.call_id)
    _end_all_forks(ctx, call, "callCancelled", {})


# ---- housekeeping ----


def connection_closed(ctx: Context, conn: ConnRef) -> None:
    """End every call of a closed connection (the browser can no longer talk)."""
    prefix = sessions.owner_of(ctx, conn).key + "#"
    for key in ctx.store.keys(CALLS):
        if not key.startswith(prefix):
            continue
        with locked(ctx, key) as call:
            if call is None or call.conn != conn.key:  # moved to a new connection (attach)
                continue
            if call.direction == "outbound" and call.state in (CALLING, RINGING):
                _cancel(ctx, call)
            elif call.direction == "inbound" and call.state == RINGING:
                _leave_ringing(ctx, call, 480, "Temporarily Unavailable")
            elif call.state == CONFIRMED:
                _send_bye(ctx, call)
            # CANCELLING / ENDING records wait for their reply or tick's deadline.


def tick(ctx: Context) -> None:
    """Once a second (timer process): set-up timers, then mid-call timers of answered calls."""
    from . import midcall

    now = ctx.clock()
    for key in ctx.store.keys(CALLS):
        with locked(ctx, key) as call:
            if call is None:
                continue
            if call.state == CONFIRMED:
                midcall.tick_call(ctx, call, now)
                if call.state == CONFIRMED and call.se_interval and call.se_due and now >= call.se_due:
                    midcall.session_timer_due(ctx, call)
                from . import transfer

                transfer.tick_call(ctx, call, now)
            elif call.deadline and now >= call.deadline:
                _expire(ctx, call)


def _expire(ctx: Context, call: Call) -> None:
    conn = call.owner
    if call.direction == "outbound" and call.state in (CALLING, RINGING):
        reason = "unreachable" if call.state == CALLING else "no_answer"
        ctx.log.info("call timeout call=%s %s", call.call_id, reason)
        _cancel(ctx, call)
        send(ctx, conn, "callFailed", {"callId": call.call_id, "code": 408, "reason": reason}, call.request_id)
        if call.conference:
            from . import conference

            conference.bridge_failed(ctx, call, f"the conference bridge did not answer ({reason})")
    elif call.direction == "inbound" and call.state == RINGING:
        ctx.sip.reply_suspended(call.t_index, call.t_label, 480, "Temporarily Unavailable", "", "")
        ctx.log.info("call ring timeout call=%s", call.call_id)
        _end_all_forks(ctx, call, "callCancelled", {"reason": "no_answer"})
    elif call.state in (CANCELLING, ENDING):
        call.forget(ctx)
