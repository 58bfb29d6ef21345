"""The thin shell: the only module (with ws_send) that talks to Kamailio's KSR.

It turns Kamailio callbacks into calls of the pure core and implements the
core's interfaces (Store, SipPort, Outbox) with htable, tm and wss_send.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Iterator

import KSR  # type: ignore[import-not-found]

from . import (api, calls, events, handlers, health, limits, metrics, midcall, protocol, registrations, resume, static_files,
               transfer, ws_send)
from .config import GatewayConfig
from .connections import ConnRef
from .context import Context
from .sip_port import OutgoingRequest, SipReply
from . import media
from .media import relay_from_config
from .subscribers import load_subscribers
from . import sip_proxy
from .errors import GatewayError

_SIP_FIRST_LINE = re.compile(r"^(?:[A-Z]+ \S+ SIP/2\.0|SIP/2\.0 \d{3} )")
# In the websocket:closed event $pr names the transport under the WebSocket (tcp or tls).
_PROTO_BY_NAME = {"ws": ws_send.PROTO_WS, "wss": ws_send.PROTO_WSS, "tcp": ws_send.PROTO_WS, "tls": ws_send.PROTO_WSS}
# Reply headers the core may look at.
_REPLY_HEADERS = ("WWW-Authenticate", "Proxy-Authenticate", "Expires", "Contact", "Record-Route", "To",
                  "Session-Expires", "Min-SE")


class KsrLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # Client text can hold NUL or lone surrogates, which KSR's log functions cannot take.
        text = self.format(record).replace("\n", " | ").replace("\x00", "\\x00")
        text = text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n"
        if record.levelno >= logging.ERROR:
            KSR.err(text)
        elif record.levelno >= logging.WARNING:
            KSR.warn(text)
        elif record.levelno >= logging.INFO:
            KSR.info(text)
        else:
            KSR.dbg(text)


class HtableStore:
    """Store on Kamailio htable shared memory (tables declared in kamailio.cfg)."""

    def get(self, table: str, key: str) -> str | None:
        value = KSR.htable.sht_get(table, key)
        return None if value is None else str(value)

    def put(self, table: str, key: str, value: str) -> None:
        KSR.htable.sht_sets(table, key, value)

    def delete(self, table: str, key: str) -> None:
        KSR.htable.sht_rm(table, key)

    def incr(self, table: str, key: str) -> int:
        # One atomic call: the counters table has an integer initval (kamailio.cfg), so
        # sht_inc creates missing keys at 0.
        return int(KSR.htable.sht_inc(table, key))

    def decr(self, table: str, key: str) -> int:
        return int(KSR.htable.sht_dec(table, key))

    @contextmanager
    def lock(self, table: str, key: str) -> Iterator[None]:
        # htable slot locks are recursive within one process.
        KSR.htable.sht_lock(table, key)
        try:
            yield
        finally:
            KSR.htable.sht_unlock(table, key)

    def keys(self, table: str) -> list[str]:
        it = "wsgw_keys"
        keys: list[str] = []
        if KSR.htable.sht_iterator_start(it, table) < 0:
            return keys
        try:
            while KSR.htable.sht_iterator_next(it) > 0:
                keys.append(str(KSR.pv.get("$shtitkey(" + it + ")")))
        finally:
            KSR.htable.sht_iterator_end(it)
        return keys


class WsOutbox:
    def send(self, conn: ConnRef, message: dict) -> bool:
        try:
            ok = ws_send.send_text(conn.ip, conn.port, conn.proto, protocol.encode(message))
        except UnicodeEncodeError:
            # A lone surrogate echoed from the client: send JSON \u escapes instead.
            ok = ws_send.send_text(conn.ip, conn.port, conn.proto, protocol.encode_ascii(message))
        if not ok:
            logging.getLogger("wsgw").warning("could not send %s to conn=%s", message.get("type"), conn)
        return ok


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 415: "Unsupported Media Type",
            481: "Call/Transaction Does Not Exist", 489: "Bad Event", 491: "Request Pending"}

# Data for the t_continue callback, which runs synchronously in this process
# (see TmSipPort.reply_suspended and Gateway.on_inbound_continue).
_continue: dict = {}


class TmSipPort:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def cancel(self, sip_call_id: str, invite_cseq: int) -> bool:
        return KSR.tmx.t_cancel_callid(sip_call_id, str(invite_cseq), 0) > 0

    def reply_suspended(self, t_index: int, t_label: int, code: int, reason: str, headers: str, body: str) -> str | None:
        _continue.clear()
        _continue.update(code=code, reason=reason, headers=headers, body=body, done=False)
        KSR.tmx.t_continue(t_index, t_label, "ksr_inbound_continue")
        # t_continue on a cancelled/finished transaction does not run the callback.
        return _continue.get("to_tag", "") if _continue.get("done") else None

    def send_request(self, request: OutgoingRequest) -> bool:
        rc = KSR.tm.t_uac_send(request.method, request.ruri, request.nexthop, self.socket, request.headers, request.body)
        if rc < 0:
            logging.getLogger("wsgw").error("t_uac_send %s %s failed rc=%s", request.method, request.ruri, rc)
        return rc >= 0


def usrloc_users() -> int:
    """DNs with a binding in usrloc's `location` table: its `location_users` statistic (table name,
    the core's stats_name_separator, `users`). A DN leaves it with its last contact: at once on
    unregister, at usrloc's timer (kamailio.cfg timer_interval) when the binding expires or its
    WebSocket has closed. In upstream mode legacy REGISTERs go to the PBX and this stays 0."""
    value = KSR.pv.get("$stat(location_users)")
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


class SipProxy:
    """Kamailio as a plain SIP proxy/registrar for legacy clients speaking SIP over the
    WebSocket port (JsSIP), and for requests meant for them (docs/MIGRATION.md).

    One method per routing step, as in Kamailio's KEMI examples; the decisions are in
    sip_proxy.py. Requests that are not for a legacy client are left to Gateway's own
    paths (JSON DNs), which stay as they were.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def route(self) -> bool:
        """True when the request was handled here; False leaves it to the gateway."""
        from_ws = str(KSR.pv.get("$pr") or "").lower() in sip_proxy.WS_PROTOS
        method = str(KSR.pv.get("$rm") or "")
        if from_ws:
            self._ws_contact(method)
        if KSR.pv.get("$tt"):
            return self._within_dialog(method)
        if method == "REGISTER":
            if from_ws:
                self._register()
            return from_ws
        if method != "INVITE":
            return False  # CANCEL, OPTIONS ...: the gateway's handling covers proxied transactions too
        if from_ws:
            self._invite_from_legacy()
            return True
        return self._invite_to_legacy()

    def _ws_contact(self, method: str) -> None:
        """A WebSocket client's Contact (`x@y.invalid;transport=ws`) cannot be reached as written:
        remember the connection (as Kamailio's WebSocket example does, NAT or not)."""
        KSR.force_rport()
        if method == "REGISTER":
            KSR.nathelper.fix_nated_register()  # usrloc keeps the source as `received`
        else:
            KSR.nathelper.add_contact_alias()  # ;alias=ip~port~proto, undone by handle_ruri_alias

    def _our_route(self) -> bool:
        uri = sip_proxy.first_route_uri(str(KSR.pv.get("$(hdr(Route)[0])") or ""))
        return bool(uri) and bool(KSR.is_myself(uri))

    def _within_dialog(self, method: str) -> bool:
        """In-dialog requests of dialogs this proxy record-routed carry our Route: relay them.
        The gateway's own dialogs with JSON clients carry none and stay with the gateway."""
        if not self._our_route():
            return False
        # Loose routing only: the Request-URI may be this gateway (a JSON leg's Contact), which
        # plain loose_route would take for a strict router's doing.
        if KSR.rr.loose_route_mode(1) < 0:
            return False
        if not KSR.isdsturiset():
            KSR.nathelper.handle_ruri_alias()  # toward a WebSocket client: its connection
        role = self._dialog_media_role()
        if role and not self._relay_media(role, method, initial=False):
            return True  # answered 503
        self._relay()
        return True

    def _dialog_media_role(self) -> str | None:
        """The media role recorded in our Record-Route (sip_proxy.media_role) of this dialog, after
        loose_route: None for a dialog whose SDP the proxy leaves alone."""
        if self.ctx.media is None:
            return None
        for role in (sip_proxy.WS_CALLER, sip_proxy.WS_CALLEE):
            if KSR.rr.check_route_param(sip_proxy.media_rr_regex(role)) > 0:
                return role
        return None

    def _authenticated(self, method: str) -> bool:
        """Digest check against the subscriber file (the JSON clients' passwords); failures count
        toward the same lockout as JSON `register`. False when the request has been answered."""
        ctx = self.ctx
        dn = str(KSR.pv.get("$tU" if method == "REGISTER" else "$fU") or "")
        ip = str(KSR.pv.get("$si"))
        try:
            limits.check_register_lockout(ctx, dn, ip)
        except GatewayError:
            KSR.sl.sl_send_reply(403, "Too Many Failed Attempts")
            return False
        realm = sip_proxy.realm(method, str(KSR.pv.get("$td") or ""), str(KSR.pv.get("$fd") or ""),
                                ctx.config.listen_ip)
        verdict = sip_proxy.auth_verdict(KSR.auth.pv_auth_check(
            realm, sip_proxy.digest_password(ctx.subscribers, dn), 0, 1))
        if verdict == sip_proxy.OK:
            limits.register_succeeded(ctx, dn)
            KSR.auth.consume_credentials()  # not forwarded
            return True
        if verdict == sip_proxy.FORBIDDEN:
            limits.register_failed(ctx, dn, ip)
            ctx.log.info("sip auth failed method=%s dn=%s ip=%s", method, dn, ip)
            KSR.sl.sl_send_reply(403, "Forbidden")
            return False
        KSR.auth.auth_challenge(realm, sip_proxy.challenge_flags(verdict))
        return False

    def _register(self) -> None:
        """REGISTER from a legacy client: saved here (embedded) or proxied to the PBX (upstream)."""
        nexthop = sip_proxy.register_nexthop(self.ctx.config)
        if nexthop:
            # The PBX reaches the client back through us: Path with the WebSocket's address.
            KSR.path.add_path_received()
            KSR.setdsturi(nexthop)
            self._relay()
            return
        if not self._authenticated("REGISTER"):
            return
        if KSR.registrar.save("location", 0) < 0:
            KSR.sl.sl_reply_error()
            return
        self.ctx.log.info("sip registered dn=%s via=%s:%s expires=%s", KSR.pv.get("$tU"), KSR.pv.get("$si"),
                          KSR.pv.get("$sp"), KSR.pv.get("$hdr(Expires)"))

    def _invite_from_legacy(self) -> None:
        """An initial INVITE from a legacy client: to a JSON DN, another legacy client or the SIP side."""
        ctx = self.ctx
        # A preloaded Route (JsSIP's use_preloaded_route names us) is dropped: the proxy decides the route.
        KSR.hdr.remove("Route")
        # Upstream mode: the PBX authenticates, as it did when JsSIP registered there directly.
        if ctx.config.embedded and not self._authenticated("INVITE"):
            return
        dialled = str(KSR.pv.get("$rU") or "")
        target = sip_proxy.legacy_invite_target(
            dialled, ctx.config, lambda dn: bool(registrations.connections_of_dn(ctx, dn)))
        ctx.log.info("sip call from=%s to=%s route=%s", KSR.pv.get("$fU"), dialled, target.kind)
        if target.kind == sip_proxy.REPLY:
            KSR.sl.sl_send_reply(target.code, target.reason)
            return
        KSR.seturi(target.ruri)
        # A legacy binding: lookup puts the client's WebSocket in $du.
        found = target.kind == sip_proxy.LOCATION and KSR.registrar.lookup("location") > 0
        if not found and target.nexthop:
            # GATEWAY (and LOCATION without a binding): a spiral through our own SIP port, where
            # the gateway's inbound path rings the JSON client or answers 404/480. RELAY: the SIP side.
            KSR.setdsturi(target.nexthop)
        self._relay_initial()

    def _invite_to_legacy(self) -> bool:
        """An initial INVITE from the SIP side (a PBX, or this gateway's own looped INVITE of a JSON
        `call`) for a user a legacy client registered. False: not for a legacy client."""
        if self._our_route():
            # Upstream mode: the PBX routes to a legacy client through the Path added at REGISTER;
            # path's `received` puts the client's WebSocket in $du.
            KSR.rr.loose_route_mode(1)
            if not sip_proxy.is_ws_uri(str(KSR.pv.get("$du") or "")):
                return False
            self._relay_initial()
            return True
        if not self.ctx.config.embedded or not KSR.is_myself_ruri():
            return False
        if registrations.connections_of_dn(self.ctx, str(KSR.pv.get("$rU") or "")):
            return False  # a JSON client: the gateway's own inbound path
        if KSR.registrar.lookup("location") < 0:
            return False  # nobody: the gateway answers 404 or 480
        self._relay_initial()
        return True

    def _relay_initial(self) -> None:
        """Relay a dialog-creating INVITE, staying on the path for the dialog's later requests."""
        from_ws = str(KSR.pv.get("$pr") or "").lower() in sip_proxy.WS_PROTOS
        next_hop = str(KSR.pv.get("$du") or "") or str(KSR.pv.get("$ru") or "")
        role = sip_proxy.media_role(self.ctx.media is not None, from_ws, sip_proxy.is_ws_uri(next_hop))
        if role:
            KSR.rr.record_route_params(sip_proxy.media_rr_param(role))
        else:
            KSR.rr.record_route()
        if KSR.tm.t_newtran() <= 0:
            return  # a retransmission: tm has answered it
        KSR.tm.t_reply(100, "Trying")  # the cfg turns tm's automatic 100 off (the gateway's own INVITEs)
        if role and not self._relay_media(role, "INVITE", initial=True):
            return
        self._relay()

    def _relay(self) -> None:
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    # -- media relay between a legacy browser and the SIP side (GW_MEDIA=rtpengine) --

    def _sdp_body(self) -> str:
        if not sip_proxy.is_sdp(str(KSR.pv.get("$hdr(Content-Type)") or "")):
            return ""
        return str(KSR.pv.get("$rb") or "")

    def _relay_media(self, role: str, method: str, initial: bool) -> bool:
        """Before relaying a request of a dialog with a media role: its SDP through rtpengine, the
        replies armed for theirs, the relay session freed on BYE. False when it was answered 503."""
        ctx = self.ctx
        session = sip_proxy.media_session(str(KSR.pv.get("$ci") or ""), role)
        from_ws = str(KSR.pv.get("$pr") or "").lower() in sip_proxy.WS_PROTOS
        from_tag, to_tag = str(KSR.pv.get("$ft") or ""), str(KSR.pv.get("$tt") or "")
        if method == "BYE":
            ws_tag = from_tag if from_ws else to_tag
            stats = media.proxy_end(ctx, session, from_tag, ws_tag)
            if stats:
                ctx.log.info("media proxy session=%s %s", session, " ".join(f"{k}={v}" for k, v in stats.items()))
            return True
        sdp = self._sdp_body()
        command = sip_proxy.request_sdp_command(method, bool(sdp))
        if method in ("INVITE", "UPDATE"):
            # Transaction AVPs: the reply route (on_media_reply) needs the session and whether the
            # request made an offer (else a 2xx's SDP is the offer of a late-offer INVITE).
            KSR.pv.sets("$avp(wsgw_msess)", session)
            KSR.pv.sets("$avp(wsgw_moffer)", "1" if command == sip_proxy.SDP_OFFER else "0")
            KSR.tm.t_on_reply("ksr_proxy_reply")
            if initial:
                KSR.tm.t_on_failure("ksr_proxy_failure")  # any final failure, 408 and 487 included
        if command is None:
            return True
        ng_from, ng_to = sip_proxy.ng_tags(True, command, from_tag, to_tag)
        try:
            relayed = media.proxy_sdp(ctx, session, ng_from, ng_to, sdp, command == sip_proxy.SDP_OFFER, from_ws)
        except GatewayError:
            if method == "ACK":
                return True  # nothing to answer: the ACK goes on as it is
            if initial:
                KSR.tm.t_reply(503, "Service Unavailable")
            else:
                KSR.sl.sl_send_reply(503, "Service Unavailable")
            return False
        KSR.textops.set_body(relayed, "application/sdp")
        return True

    def on_media_reply(self) -> None:
        """tm reply route of a request relayed with a media role: the reply's SDP through rtpengine."""
        session = str(KSR.pv.get("$avp(wsgw_msess)") or "")
        sdp = self._sdp_body()
        if not session or not sdp:
            return
        cseq = str(KSR.pv.get("$hdr(CSeq)") or "0 X").split()
        method = cseq[1].upper() if len(cseq) > 1 else ""
        had_offer = str(KSR.pv.get("$avp(wsgw_moffer)") or "") == "1"
        command = sip_proxy.reply_sdp_command(method, int(KSR.pv.get("$rs") or 0), had_offer, True)
        if command is None:
            return
        from_ws = str(KSR.pv.get("$pr") or "").lower() in sip_proxy.WS_PROTOS
        ng_from, ng_to = sip_proxy.ng_tags(False, command, str(KSR.pv.get("$ft") or ""),
                                           str(KSR.pv.get("$tt") or ""))
        try:
            relayed = media.proxy_sdp(self.ctx, session, ng_from, ng_to, sdp, command == sip_proxy.SDP_OFFER, from_ws)
        except GatewayError:
            return  # logged by media; the reply goes on unchanged (nothing better to send)
        KSR.textops.set_body(relayed, "application/sdp")

    def on_media_failure(self) -> None:
        """tm failure route of an initial INVITE with a media role: the call never started."""
        session = str(KSR.pv.get("$avp(wsgw_msess)") or "")
        if session:
            media.proxy_end(self.ctx, session, str(KSR.pv.get("$ft") or ""), "")

    def on_reply(self) -> None:
        """Core reply route: a reply from a WebSocket client gets the connection in its Contact,
        so the other side's in-dialog requests can reach it (handle_ruri_alias)."""
        if str(KSR.pv.get("$pr") or "").lower() in sip_proxy.WS_PROTOS:
            KSR.nathelper.add_contact_alias()


class Gateway:
    """Per-process glue created by the KEMI entry (kemi/gateway.py)."""

    def __init__(self) -> None:
        log = logging.getLogger("wsgw")
        if not log.handlers:
            handler = KsrLogHandler()
            handler.setFormatter(logging.Formatter("wsgw %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            log.propagate = False
        config = GatewayConfig.from_env(os.environ)
        subscribers = load_subscribers(config.subscribers_path) if config.embedded and config.subscribers_path else None
        ws_send.self_check()
        self.ctx = Context(
            config=config,
            store=HtableStore(),
            outbox=WsOutbox(),
            sip=TmSipPort(config.sip_socket),
            subscribers=subscribers,
            media=relay_from_config(config.media, config.rtpengine, config.codecs),
            log=log,
            events=events.open_sink(os.environ.get("GW_EVENT_LOG", "stderr")),
            legacy_registrations=usrloc_users,
        )
        self.ctx.sip = events.LoggedSipPort(self.ctx.sip, self.ctx)
        self.proxy = SipProxy(self.ctx)  # legacy SIP-over-WebSocket clients
        api.record_start(self.ctx)

    # -- WebSocket frames (received-route callback) --

    def on_received(self) -> int:
        proto = KSR.pv.get("$rcv(proto)")
        if proto not in (ws_send.PROTO_WS, ws_send.PROTO_WSS):
            return 1  # UDP/TCP SIP: continue to the request route
        buf = KSR.pv.get("$rcv(buf)") or ""
        if _SIP_FIRST_LINE.match(buf):
            return 1  # SIP over WebSocket (legacy clients): normal SIP processing
        conn = ConnRef(int(proto), str(KSR.pv.get("$rcv(srcip)")), int(KSR.pv.get("$rcv(srcport)")))
        handlers.dispatch(self.ctx, conn, buf)
        # The core now tries to parse the buffer as SIP, fails (logging it) and hands it to
        # event_route[nosip:msg], which drops it. Shrink it first so that frames (passwords,
        # SDP) never reach the log.
        KSR.pv.sets("$rcv(buf)", "{}")
        return 1

    def on_websocket_closed(self) -> None:
        proto = _PROTO_BY_NAME.get(str(KSR.pv.get("$pr")).lower(), ws_send.PROTO_WS)
        conn = ConnRef(proto, str(KSR.pv.get("$si")), int(KSR.pv.get("$sp")))
        if not limits.connection_closed(self.ctx, conn.ip, conn.port):
            return  # reported already (see on_tcp_closed)
        self.ctx.log.info("websocket closed conn=%s", conn)
        if not resume.detach(self.ctx, conn):  # else kept for GW_RESUME_GRACE, waiting for `attach`
            resume.end_connection(self.ctx, conn)
        limits.forget_connection(self.ctx, conn.key)

    def on_tcp_closed(self) -> None:
        """tcpops' tcp:closed / tcp:reset / tcp:timeout. The websocket module runs its closed
        event only after a close frame, so a WebSocket lost without one (network failure, a
        killed browser) is seen only here."""
        if str(KSR.pv.get("$pr")).lower() in ("ws", "wss"):
            self.on_websocket_closed()

    # -- SIP replies to the gateway's own requests --

    def on_local_request(self) -> None:
        KSR.tm.t_on_reply("ksr_uac_reply")

    def on_uac_reply(self) -> None:
        reply = self._reply()
        events.sip_resp(self.ctx, reply.status, reply.method, reply.cseq, reply.call_id, reply.from_tag, reply.to_tag)
        if reply.method == "REGISTER":
            registrations.on_register_reply(self.ctx, reply)
        else:
            calls.on_reply(self.ctx, reply)

    def on_inbound_continue(self) -> None:
        """Runs inside t_continue with the suspended INVITE: send its final response."""
        if _continue.get("body"):
            KSR.textops.set_reply_body(_continue["body"], "application/sdp")
        if _continue.get("headers"):
            KSR.hdr.append_to_reply(_continue["headers"])
        self._t_reply(_continue["code"], _continue["reason"])
        _continue["to_tag"] = str(KSR.pv.get("$ltt(t)") or "")
        _continue["done"] = True

    def _reply(self) -> SipReply:
        headers = {}
        for name in _REPLY_HEADERS:
            value = KSR.pv.get("$(hdr(" + name + ")[*])")
            if value is not None:
                headers[name.lower()] = str(value)
        cseq = str(KSR.pv.get("$hdr(CSeq)") or "0 X").split()
        return SipReply(
            status=int(KSR.pv.get("$rs")),
            reason=str(KSR.pv.get("$rr") or ""),
            call_id=str(KSR.pv.get("$ci") or ""),
            cseq=int(cseq[0]),
            method=cseq[1].upper() if len(cseq) > 1 else "",
            from_tag=str(KSR.pv.get("$ft") or ""),
            to_tag=str(KSR.pv.get("$tt") or ""),
            headers=headers,
            body=str(KSR.pv.get("$rb") or ""),
        )

    def on_sip_reply(self) -> None:
        self.proxy.on_reply()

    # -- SIP requests from the network --

    def on_sip_request(self) -> int:
        try:
            return self._sip_request()
        except UnicodeDecodeError:
            # Header or body bytes that are not UTF-8: answer instead of leaving the sender retransmitting.
            self.ctx.log.warning("sip request from %s with non-UTF-8 text: 400", KSR.pv.get("$si"))
            if KSR.tm.t_reply(400, "Bad Request") < 0:  # no transaction yet: statelessly
                KSR.sl.sl_send_reply(400, "Bad Request")
            return 1

    def _sip_request(self) -> int:
        # SIP-side flood protection: pike blocks a source IP sending too fast (kamailio.cfg).
        if KSR.pike.pike_check_req() < 0:
            self.ctx.log.warning("sip flood from %s: dropped", KSR.pv.get("$si"))
            return 1
        if KSR.maxfwd.process_maxfwd(10) < 0:
            self._sl_reply(483, "Too Many Hops")
            return 1
        method = KSR.pv.get("$rm")
        sip_call_id = str(KSR.pv.get("$ci") or "")
        from_tag = str(KSR.pv.get("$ft") or "")
        to_tag = str(KSR.pv.get("$tt") or "")
        events.sip_in(self.ctx, str(method), sip_call_id, from_tag, to_tag, f"{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}")
        if self.proxy.route():  # legacy SIP-over-WebSocket clients, and requests for them
            return 1
        if method == "ACK":
            # Absorbs the ACK of our 2xx (else tm retransmits the 200) and of negative replies.
            KSR.tm.t_check_trans()
            return 1
        if method == "CANCEL":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()  # tm answers 200 to the CANCEL and 487 to the suspended INVITE
            else:
                self._sl_reply(481, "Call/Transaction Does Not Exist")
            calls.on_remote_cancel(self.ctx, sip_call_id, from_tag)
            return 1
        if method == "OPTIONS":
            self._sl_reply(200, "OK")
            return 1
        if to_tag:
            if method == "INVITE":
                self._reinvite(midcall.Reinvite(sip_call_id, from_tag, to_tag, str(KSR.pv.get("$rb") or ""),
                                                str(KSR.pv.get("$hdr(Contact)") or "")))
            elif self._new_transaction():  # statefully, so tm answers retransmissions itself
                self._in_dialog(method, sip_call_id, from_tag, to_tag)
            return 1
        if method == "INVITE":
            self._inbound_invite(sip_call_id, from_tag)
            return 1
        self._sl_reply(405, "Method Not Allowed")
        return 1

    def _t_reply(self, code: int, reason: str) -> None:
        """Reply statefully to the request being handled, and log it (events.py)."""
        KSR.tm.t_reply(code, reason)
        self._log_reply(code)

    def _sl_reply(self, code: int, reason: str) -> None:
        KSR.sl.sl_send_reply(code, reason)
        self._log_reply(code)

    def _log_reply(self, code: int) -> None:
        events.sip_reply(self.ctx, code, str(KSR.pv.get("$rm") or ""), str(KSR.pv.get("$ci") or ""),
                         str(KSR.pv.get("$ft") or ""), str(KSR.pv.get("$tt") or ""))

    def _new_transaction(self) -> bool:
        """t_newtran: False for a retransmission (tm has resent its last reply; counted) or an error."""
        rc = KSR.tm.t_newtran()
        if rc == 0:
            metrics.sip_retransmission(self.ctx, "request")
        return rc > 0

    def _in_dialog(self, method: str, sip_call_id: str, from_tag: str, to_tag: str) -> None:
        body = str(KSR.pv.get("$rb") or "")
        if method == "BYE":
            code = calls.on_remote_bye(self.ctx, sip_call_id, from_tag, to_tag)
        elif method == "REFER":
            code = transfer.on_remote_refer(self.ctx, sip_call_id, from_tag, to_tag,
                                            str(KSR.pv.get("$hdr(Refer-To)") or ""))
        elif method == "NOTIFY":
            code = transfer.on_remote_notify(self.ctx, sip_call_id, from_tag, to_tag,
                                             str(KSR.pv.get("$hdr(Event)") or ""), body)
        elif method == "INFO":
            code = midcall.on_remote_info(self.ctx, sip_call_id, from_tag, to_tag,
                                          str(KSR.pv.get("$hdr(Content-Type)") or ""), body)
        elif method == "UPDATE":
            self._reply_now(midcall.on_remote_update(self.ctx, sip_call_id, from_tag, to_tag, bool(body)))
            return
        else:
            self._t_reply(501, "Not Implemented")
            return
        self._t_reply(code, _REASONS[code])
        if method == "REFER" and code == 202:
            transfer.notify_refer_accepted(self.ctx, sip_call_id, from_tag, to_tag)

    def _reinvite(self, inv: "midcall.Reinvite") -> None:
        if not self._new_transaction():
            return  # a retransmission: tm resent the last reply
        immediate = midcall.check_reinvite(self.ctx, inv)
        if immediate is not None:
            self._reply_now(immediate)
            return
        self._t_reply(100, "Trying")
        # tm's timer of the suspended transaction must outlast the browser's answer time.
        timeout_ms = (self.ctx.config.update_timeout + 10) * 1000
        KSR.tm.t_set_fr(timeout_ms, timeout_ms)
        if KSR.tmx.t_suspend() < 0:
            self._t_reply(500, "Server Error")
            return
        midcall.offer_update(self.ctx, inv, int(KSR.pv.get("$T(id_index)")), int(KSR.pv.get("$T(id_label)")))

    def _reply_now(self, reply: "midcall.ImmediateReply") -> None:
        if reply.body:
            KSR.textops.set_reply_body(reply.body, "application/sdp")
        if reply.headers:
            KSR.hdr.append_to_reply(reply.headers)
        self._t_reply(reply.code, reply.reason)

    def _inbound_invite(self, sip_call_id: str, from_tag: str) -> None:
        if not self._new_transaction():
            return  # a retransmission: tm resent the last reply
        invite = calls.InboundInvite(
            sip_call_id=sip_call_id,
            dn=str(KSR.pv.get("$rU") or ""),
            from_uri=str(KSR.pv.get("$fu") or ""),
            from_user=str(KSR.pv.get("$fU") or ""),
            display_name=str(KSR.pv.get("$fn") or "").strip().strip('"'),
            from_tag=from_tag,
            to_uri=str(KSR.pv.get("$tu") or ""),
            contact=str(KSR.pv.get("$hdr(Contact)") or ""),
            record_route=str(KSR.pv.get("$(hdr(Record-Route)[*])") or ""),
            cseq=int(str(KSR.pv.get("$hdr(CSeq)") or "1").split()[0]),
            sdp=str(KSR.pv.get("$rb") or ""),
            session_expires=str(KSR.pv.get("$hdr(Session-Expires)") or ""),
            supported=str(KSR.pv.get("$(hdr(Supported)[*])") or ""),
        )
        refusal = calls.check_inbound(self.ctx, invite)
        if refusal is not None:
            if refusal[0] == 422:
                KSR.hdr.append_to_reply(f"Min-SE: {self.ctx.config.min_se}\r\n")
            self._t_reply(refusal[0], refusal[1])
            return
        self._t_reply(100, "Trying")
        cfg = self.ctx.config
        KSR.hdr.append_to_reply(f"Contact: <sip:{invite.dn}@{cfg.listen_ip}:{cfg.sip_port}>\r\n")
        self._t_reply(180, "Ringing")
        local_tag = str(KSR.pv.get("$ltt(t)") or "")
        # tm's own timer only as a safety net: the ring timeout is ours (calls.tick).
        KSR.tm.t_set_fr((cfg.ring_timeout + 30) * 1000, 5000)
        if KSR.tmx.t_suspend() < 0:
            self._t_reply(500, "Server Error")
            return
        index = int(KSR.pv.get("$T(id_index)"))
        label = int(KSR.pv.get("$T(id_label)"))
        calls.ring_inbound(self.ctx, invite, index, label, local_tag)

    # -- HTTP on the WebSocket port --

    def on_http(self) -> int:
        upgrade = str(KSR.pv.get("$hdr(Upgrade)") or "").lower()
        if upgrade == "websocket":
            origin = str(KSR.pv.get("$hdr(Origin)") or "")
            ip = str(KSR.pv.get("$si"))
            if not limits.origin_allowed(self.ctx.config.allowed_origins, origin):
                self.ctx.log.warning("websocket refused origin=%s ip=%s", origin[:100], ip)
                KSR.xhttp.xhttp_reply(403, "Forbidden", "text/plain", "origin not allowed\n")
            elif not limits.connection_opened(self.ctx, ip, int(KSR.pv.get("$sp"))):
                self.ctx.log.warning("websocket refused: too many connections from ip=%s", ip)
                KSR.xhttp.xhttp_reply(429, "Too Many Requests", "text/plain", "too many connections\n")
            elif KSR.websocket.handle_handshake() < 0:
                limits.connection_closed(self.ctx, ip, int(KSR.pv.get("$sp")))
            return 1
        target = str(KSR.pv.get("$hu") or "/")
        path = target.split("?")[0]
        if path == "/api" or path.startswith("/api/"):
            self._api(target)
            return 1
        if path == "/metrics":
            KSR.xhttp.xhttp_reply(200, "OK", "text/plain; version=0.0.4", metrics.render(self.ctx))
            return 1
        if path == "/health":
            KSR.xhttp.xhttp_reply(200, "OK", "application/json", protocol.encode(health.health(self.ctx)))
            return 1
        found = static_files.lookup(path)
        if found is None:
            KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "not found\n")
        else:
            KSR.xhttp.xhttp_reply(200, "OK", found.content_type, found.text)
        return 1

    def _api(self, target: str) -> None:
        """The REST API (api.py): any method reaches here (xhttp passes every HTTP request)."""
        resp = api.handle(self.ctx, str(KSR.pv.get("$rm") or ""), target, str(KSR.pv.get("$hdr(Authorization)") or ""))
        for name, value in resp.headers.items():  # sl adds these reply lumps to the HTTP response
            KSR.hdr.append_to_reply(f"{name}: {value}\r\n")
        KSR.xhttp.xhttp_reply(resp.status, resp.reason, "application/json", protocol.encode(resp.body))

    # -- timer process --

    def on_timer(self) -> None:
        registrations.tick(self.ctx)
        calls.tick(self.ctx)
        resume.tick(self.ctx)
