"""Registration of a DN to a WebSocket, in embedded or upstream mode.

Embedded mode: the gateway is the registrar; the DN's password is checked
against the subscriber file. Upstream mode: the gateway sends a real REGISTER
to GW_UPSTREAM, answers its digest challenge, refreshes before expiry and
de-registers (Expires: 0) on `unregister` or when the WebSocket closes.

In both modes the DN -> connection binding lives in the shared store, so every
worker (the one that gets an inbound INVITE, a REGISTER reply or the close
event) sees it.
"""

from __future__ import annotations

import re
import hmac
from dataclasses import dataclass, field

from . import PROTOCOL_VERSION, SERVER_NAME, VERSION, errors, limits, sessions
from . import protocol
from .connections import ConnRef
from .context import Context
from .digest import Challenge, authorization, parse_challenge
from .errors import GatewayError
from .protocol import RegisterPayload
from .sip_headers import header_block, name_addr, new_call_id, new_tag
from .sip_port import OutgoingRequest, SipReply
from .store import CONN, REG, REG_BY_CALL_ID, get_json, put_json

PENDING = "pending"
REGISTERED = "registered"
UNREGISTERING = "unregistering"

MAX_AUTH_ATTEMPTS = 2  # the first challenge plus one stale-nonce retry


@dataclass
class Registration:
    dn: str
    conn: str  # ConnRef key
    state: str = PENDING
    mode: str = "embedded"
    display_name: str = ""
    expires: int = 0
    registered_at: float = 0.0
    refresh_at: float = 0.0
    request_id: str | None = None  # client request waiting for `registered` / `error`
    # Upstream dialog of REGISTER requests (one Call-ID for the whole binding).
    call_id: str = ""
    from_tag: str = ""
    cseq: int = 0
    sent_at: float = 0.0
    password: str = ""
    auth_attempts: int = 0
    realm: str = ""
    nonce: str = ""
    opaque: str | None = None
    qop: str | None = None
    nc: int = 0
    auth_header: str = ""  # "Authorization" or "Proxy-Authorization"
    # Further WebSockets (browser tabs) of the same agent sharing this registration.
    tabs: list[str] = field(default_factory=list)
    # Upstream refreshes failing: the agent was told (registrationLost); retry back-off in seconds.
    lost: bool = False
    retry_delay: float = 0.0

    def all_conns(self) -> list[str]:
        return [self.conn] + self.tabs

    @classmethod
    def load(cls, ctx: Context, dn: str) -> "Registration | None":
        data = get_json(ctx.store, REG, dn)
        return cls(**data) if data else None

    def save(self, ctx: Context) -> None:
        put_json(ctx.store, REG, self.dn, vars(self))  # vars, not asdict: no deep copy, same JSON

    def challenge(self) -> Challenge | None:
        if not self.nonce:
            return None
        return Challenge(realm=self.realm, nonce=self.nonce, opaque=self.opaque, qop=self.qop)


def dn_of_connection(ctx: Context, conn: ConnRef) -> str | None:
    data = get_json(ctx.store, CONN, conn.key)
    return data.get("dn") if data else None


def connection_of_dn(ctx: Context, dn: str) -> ConnRef | None:
    """The first WebSocket a DN is registered on, or None."""
    conns = connections_of_dn(ctx, dn)
    return conns[0] if conns else None


def connections_of_dn(ctx: Context, dn: str) -> list[ConnRef]:
    """Every WebSocket (tab) a DN is registered on; inbound calls ring on all of them."""
    reg = Registration.load(ctx, dn)
    if reg is None or reg.state != REGISTERED:
        return []
    return [ConnRef.from_key(key) for key in reg.all_conns()]


# ---- client requests ----


def register(ctx: Context, conn: ConnRef, request_id: str | None, req: RegisterPayload) -> None:
    current = dn_of_connection(ctx, conn)
    if current is not None:
        raise GatewayError(errors.ALREADY_REGISTERED, f"this connection is already registered as {current}")
    limits.check_register_lockout(ctx, req.dn, conn.ip)
    try:
        _register(ctx, conn, request_id, req)
    except GatewayError as exc:
        if exc.code == errors.AUTH_FAILED:
            limits.register_failed(ctx, req.dn, conn.ip)
        raise


def _register(ctx: Context, conn: ConnRef, request_id: str | None, req: RegisterPayload) -> None:
    with ctx.store.lock(REG, req.dn):
        existing = Registration.load(ctx, req.dn)
        if existing is not None:
            live = [key for key in existing.all_conns() if (get_json(ctx.store, CONN, key) or {}).get("dn") == req.dn]
            if live:
                _join(ctx, conn, request_id, req, existing)
                return
            # A binding being released (Expires: 0 in flight) or left by a dead connection:
            # replace it, and drop its REGISTER Call-ID so late replies are ignored.
            if existing.call_id:
                ctx.store.delete(REG_BY_CALL_ID, existing.call_id)
        if ctx.config.embedded:
            _register_embedded(ctx, conn, request_id, req)
        else:
            _register_upstream(ctx, conn, request_id, req)


def _join(ctx: Context, conn: ConnRef, request_id: str | None, req: RegisterPayload, reg: Registration) -> None:
    """Another tab of an agent already registered: same credentials, same registration."""
    if reg.state != REGISTERED:
        raise GatewayError(errors.ALREADY_REGISTERED, f"{req.dn} is being registered on another connection; retry")
    if reg.mode == "embedded":
        ok = ctx.subscribers is not None and ctx.subscribers.check(req.dn, req.password)
    else:
        ok = hmac.compare_digest(reg.password.encode(), req.password.encode())
    if not ok:
        raise GatewayError(errors.AUTH_FAILED, "wrong DN or password")
    reg.tabs.append(conn.key)
    reg.save(ctx)
    put_json(ctx.store, CONN, conn.key, {"dn": req.dn, "since": ctx.clock()})
    ctx.log.info("registered dn=%s conn=%s tabs=%d", req.dn, conn.key, len(reg.all_conns()))
    ctx.send(conn, registered_message(reg, request_id, sessions.open_session(ctx, conn, reg.dn)))


def _register_embedded(ctx: Context, conn: ConnRef, request_id: str | None, req: RegisterPayload) -> None:
    if ctx.subscribers is None or not ctx.subscribers.check(req.dn, req.password):
        raise GatewayError(errors.AUTH_FAILED, "wrong DN or password")
    now = ctx.clock()
    reg = Registration(
        dn=req.dn,
        conn=conn.key,
        state=REGISTERED,
        mode="embedded",
        display_name=req.display_name,
        expires=ctx.config.register_expires,
        registered_at=now,
    )
    reg.save(ctx)
    put_json(ctx.store, CONN, conn.key, {"dn": req.dn, "since": now})
    limits.register_succeeded(ctx, req.dn)
    ctx.log.info("registered dn=%s conn=%s mode=embedded", req.dn, conn.key)
    ctx.send(conn, registered_message(reg, request_id, sessions.open_session(ctx, conn, reg.dn)))


def registered_message(reg: Registration, request_id: str | None, resume_token: str) -> dict:
    return protocol.message(
        "registered",
        {"dn": reg.dn, "expires": reg.expires, "server": SERVER_NAME, "version": VERSION,
         "protocol": PROTOCOL_VERSION, "resumeToken": resume_token},
        request_id,
    )


def _register_upstream(ctx: Context, conn: ConnRef, request_id: str | None, req: RegisterPayload) -> None:
    now = ctx.clock()
    reg = Registration(
        dn=req.dn,
        conn=conn.key,
        state=PENDING,
        mode="upstream",
        display_name=req.display_name,
        request_id=request_id,
        call_id=new_call_id(ctx.config.listen_ip),
        from_tag=new_tag(),
        password=req.password,
        registered_at=now,
    )
    # Bind the connection now so a close during the REGISTER transaction cleans up.
    put_json(ctx.store, CONN, conn.key, {"dn": req.dn, "since": now})
    ctx.store.put(REG_BY_CALL_ID, reg.call_id, reg.dn)
    _send_register(ctx, reg, ctx.config.register_expires)


def unregister(ctx: Context, conn: ConnRef, request_id: str | None) -> None:
    dn = dn_of_connection(ctx, conn)
    if dn is None:
        raise GatewayError(errors.NOT_REGISTERED, "this connection is not registered")
    release(ctx, conn, dn)
    ctx.send(conn, protocol.message("unregistered", {"dn": dn}, request_id))


def connection_closed(ctx: Context, conn: ConnRef) -> None:
    dn = dn_of_connection(ctx, conn)
    if dn is not None:
        release(ctx, conn, dn)
    ctx.store.delete(CONN, conn.key)


def rebind(ctx: Context, dn: str, old: str, new: str) -> None:
    """The client on connection `old` continues on `new` (resume.attach)."""
    with ctx.store.lock(REG, dn):
        reg = Registration.load(ctx, dn)
        if reg is None:
            return
        if reg.conn == old:
            reg.conn = new
        reg.tabs = [new if key == old else key for key in reg.tabs]
        reg.save(ctx)


def release(ctx: Context, conn: ConnRef, dn: str) -> None:
    """Remove the DN's binding to `conn`; upstream, send REGISTER with Expires: 0."""
    sessions.close(ctx, sessions.owner_of(ctx, conn).key)
    ctx.store.delete(CONN, conn.key)
    with ctx.store.lock(REG, dn):
        reg = Registration.load(ctx, dn)
        if reg is None or conn.key not in reg.all_conns():
            return
        if reg.tabs:
            # Other tabs stay registered: only this one leaves.
            if conn.key == reg.conn:
                reg.conn = reg.tabs.pop(0)
            else:
                reg.tabs.remove(conn.key)
            reg.save(ctx)
            ctx.log.info("unregistered dn=%s conn=%s tabs=%d", dn, conn.key, len(reg.all_conns()))
            return
        if reg.mode == "upstream" and reg.state in (REGISTERED, PENDING):
            if reg.state == PENDING:
                # The pending `register` still gets its one final reply.
                ctx.send(conn, protocol.error_message(
                    errors.NOT_REGISTERED, "unregistered before the registrar answered", reg.request_id, "register"))
            reg.state = UNREGISTERING
            reg.request_id = None
            reg.auth_attempts = 0
            _send_register(ctx, reg, 0)
        else:
            _forget(ctx, reg)
    ctx.log.info("unregistered dn=%s conn=%s", dn, conn.key)


def _forget(ctx: Context, reg: Registration) -> None:
    ctx.store.delete(REG, reg.dn)
    if reg.call_id:
        ctx.store.delete(REG_BY_CALL_ID, reg.call_id)


# ---- upstream SIP ----


def contact_uri(ctx: Context, dn: str) -> str:
    return f"sip:{dn}@{ctx.config.listen_ip}:{ctx.config.sip_port}"


def _send_register(ctx: Context, reg: Registration, expires: int) -> None:
    """Send (or resend) REGISTER for `reg`, with credentials when a challenge is known. Saves `reg`."""
    upstream = ctx.config.upstream
    assert upstream is not None
    registrar_uri = f"sip:{upstream.hostport}"
    aor = f"sip:{reg.dn}@{upstream.host}"
    reg.cseq += 1
    reg.sent_at = ctx.clock()
    headers = [
        ("From", name_addr(aor, reg.display_name, reg.from_tag)),
        ("To", name_addr(aor, reg.display_name)),
        ("Call-ID", reg.call_id),
        ("CSeq", f"{reg.cseq} REGISTER"),
        ("Contact", f"<{contact_uri(ctx, reg.dn)}>;expires={expires}"),
        ("Expires", str(expires)),
        ("Max-Forwards", "70"),
    ]
    challenge = reg.challenge()
    if challenge is not None:
        reg.nc += 1
        value = authorization(
            challenge, method="REGISTER", uri=registrar_uri, username=reg.dn, password=reg.password, nc=reg.nc
        )
        headers.append((reg.auth_header or "Authorization", value))
    reg.save(ctx)
    ctx.sip.send_request(
        OutgoingRequest(method="REGISTER", ruri=registrar_uri, headers=header_block(headers), nexthop=str(upstream))
    )


_EXPIRES_PARAM = re.compile(r";\s*expires\s*=\s*(\d+)", re.IGNORECASE)


def granted_expires(reply: SipReply, our_contact: str, requested: int) -> int:
    """Expiry the registrar granted: our Contact's expires param, else Expires, else what we asked."""
    for contact in (reply.header("contact") or "").split(","):
        uri = contact.strip()
        uri = uri[uri.find("<") + 1:uri.find(">")] if "<" in uri and ">" in uri else uri.split(";")[0]
        # Registrars may add URI parameters (;transport=udp): compare without them.
        if uri.split(";")[0].strip() == our_contact:
            m = _EXPIRES_PARAM.search(contact[contact.find(">") + 1:] if ">" in contact else contact)
            if m:
                return int(m.group(1))
    expires = (reply.header("expires") or "").strip()
    if expires.isdigit():
        return int(expires)
    return requested


def refresh_delay(expires: int) -> float:
    """Refresh well before expiry: half-way for short bindings, a minute early for long ones."""
    return expires / 2 if expires < 120 else expires - 60


def on_register_reply(ctx: Context, reply: SipReply) -> None:
    dn = ctx.store.get(REG_BY_CALL_ID, reply.call_id)
    if dn is None or reply.status < 200:
        return
    with ctx.store.lock(REG, dn):
        reg = Registration.load(ctx, dn)
        if reg is None or reg.call_id != reply.call_id or reg.cseq != reply.cseq:
            return  # a late reply to a request we no longer care about
        if reply.status in (401, 407):
            _on_challenge(ctx, reg, reply)
        elif 200 <= reply.status < 300:
            _on_register_ok(ctx, reg, reply)
        else:
            _on_register_failed(ctx, reg, reply.status, reply.reason)


def _on_challenge(ctx: Context, reg: Registration, reply: SipReply) -> None:
    header = reply.header("www-authenticate" if reply.status == 401 else "proxy-authenticate") or ""
    try:
        challenge = parse_challenge(header.split(",Digest")[0])
    except ValueError as exc:
        ctx.log.warning("register dn=%s unusable challenge: %s", reg.dn, exc)
        _on_register_failed(ctx, reg, reply.status, reply.reason)
        return
    reg.auth_attempts += 1
    if reg.auth_attempts > MAX_AUTH_ATTEMPTS or (reg.auth_attempts > 1 and not challenge.stale and challenge.nonce == reg.nonce):
        _on_register_failed(ctx, reg, reply.status, reply.reason)
        return
    reg.realm, reg.nonce, reg.opaque, reg.qop = challenge.realm, challenge.nonce, challenge.opaque, challenge.qop
    reg.nc = 0
    reg.auth_header = "Authorization" if reply.status == 401 else "Proxy-Authorization"
    _send_register(ctx, reg, 0 if reg.state == UNREGISTERING else ctx.config.register_expires)


def _on_register_ok(ctx: Context, reg: Registration, reply: SipReply) -> None:
    if reg.state == UNREGISTERING:
        ctx.log.info("upstream unregistered dn=%s", reg.dn)
        _forget(ctx, reg)
        return
    expires = granted_expires(reply, contact_uri(ctx, reg.dn), ctx.config.register_expires)
    if expires <= 0:
        _on_register_failed(ctx, reg, reply.status, "registrar granted no expiry")
        return
    now = ctx.clock()
    first = reg.state == PENDING
    reg.state = REGISTERED
    reg.expires = expires
    reg.refresh_at = now + refresh_delay(expires)
    reg.auth_attempts = 0
    request_id, reg.request_id = reg.request_id, None
    recovered, reg.lost, reg.retry_delay = reg.lost, False, 0.0
    reg.save(ctx)
    ctx.log.info("upstream registered dn=%s expires=%d refresh_in=%.1f", reg.dn, expires, reg.refresh_at - now)
    if first:
        limits.register_succeeded(ctx, reg.dn)
        conn = ConnRef.from_key(reg.conn)
        ctx.send(conn, registered_message(reg, request_id, sessions.open_session(ctx, conn, reg.dn)))
    elif recovered:
        # Registered again after registrationLost: tell every tab (an event, no id).
        for key in reg.all_conns():
            conn = ConnRef.from_key(key)
            ctx.send(conn, registered_message(reg, None, sessions.token_of(ctx, conn)))


def failure_code(status: int) -> str:
    if status in (401, 403, 407):
        return errors.AUTH_FAILED
    if status == 408 or status >= 500:
        return errors.UPSTREAM_UNREACHABLE
    return errors.AUTH_FAILED


def _on_register_failed(ctx: Context, reg: Registration, status: int, reason: str) -> None:
    ctx.log.warning("register dn=%s failed: %d %s (state %s)", reg.dn, status, reason, reg.state)
    if reg.state == PENDING:
        conn = ConnRef.from_key(reg.conn)
        if failure_code(status) == errors.AUTH_FAILED:
            limits.register_failed(ctx, reg.dn, conn.ip)
        ctx.store.delete(CONN, reg.conn)
        _forget(ctx, reg)
        ctx.send(
            conn,
            protocol.error_message(failure_code(status), f"registrar answered {status} {reason}", reg.request_id, "register"),
        )
    elif reg.state == UNREGISTERING:
        _forget(ctx, reg)
    else:
        # A failed refresh: keep the binding, tell the agent once, retry with back-off (5 s .. 60 s).
        reg.retry_delay = min(60.0, reg.retry_delay * 2) if reg.retry_delay else 5.0
        reg.refresh_at = ctx.clock() + reg.retry_delay
        reg.auth_attempts = 0
        if not reg.lost:
            reg.lost = True
            for key in reg.all_conns():
                ctx.send(ConnRef.from_key(key), protocol.message(
                    "registrationLost", {"dn": reg.dn, "code": status, "reason": reason,
                                         "retryIn": int(reg.retry_delay)}))
        reg.save(ctx)


# ---- timer ----


def tick(ctx: Context) -> None:
    """Run once a second by the timer process: refreshes and transaction timeouts."""
    if ctx.config.embedded:
        return  # nothing to refresh, nothing pending (and no need to read every registration)
    now = ctx.clock()
    for dn in ctx.store.keys(REG):
        reg = Registration.load(ctx, dn)
        if reg is None or reg.mode != "upstream":
            continue
        waiting = reg.state in (PENDING, UNREGISTERING) or reg.auth_attempts > 0 or reg.refresh_at == 0
        if waiting and now - reg.sent_at > ctx.config.sip_timeout:
            with ctx.store.lock(REG, dn):
                reg = Registration.load(ctx, dn)
                if reg is not None and now - reg.sent_at > ctx.config.sip_timeout:
                    _on_register_failed(ctx, reg, 408, "Request Timeout")
        elif reg.state == REGISTERED and reg.refresh_at and now >= reg.refresh_at:
            with ctx.store.lock(REG, dn):
                reg = Registration.load(ctx, dn)
                if reg is not None and reg.state == REGISTERED and now >= reg.refresh_at:
                    reg.refresh_at = 0  # waiting for the refresh reply
                    _send_register(ctx, reg, ctx.config.register_expires)
