"""The operator REST API under /api/v1/ on the HTTP port, as plain Python (no KSR).

`ksr_adapter.Gateway.on_http` hands every request whose path starts with `/api/`
to `handle()` and writes the returned `ApiResponse` back with xhttp. The contract
is docs/openapi.yaml; README.md ("REST API") has curl examples.

- GET  /api/v1/health            public: up, version, uptime, counts
- GET  /api/v1/dns               DNs known to the gateway
- GET  /api/v1/dns/{dn}          one DN: registration, connections, calls
- GET  /api/v1/calls             every call record
- GET  /api/v1/calls/{id}        one call
- DELETE /api/v1/calls/{id}      admin hang-up (as if the owning browser sent `hangup`)

Authentication: `Authorization: Bearer <GW_API_TOKEN>`, compared in constant time.
Without GW_API_TOKEN only /api/v1/health answers; everything else gets 403
`api_disabled`. A missing or wrong token gets 401 with `WWW-Authenticate: Bearer`.
Errors are `{"error": {"code": ..., "message": ...}}`.

Call ids: a call is named by the unpadded base64url encoding of its record key in
the shared store (`<owner connection key>#<client callId>`). That id is URL-safe
(A-Z a-z 0-9 - _), unique (the SIP Call-ID is not: both legs of a call looped
through the gateway, and every ringing tab of an inbound call, share it), and
stable for the life of the record; it needs no index of its own. Clients treat it
as opaque.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote

from . import VERSION, calls, errors, registrations
from .calls import Call
from .connections import PROTO_NAMES, ConnRef
from .context import Context
from .errors import GatewayError
from .health import health
from .sip_headers import validate_dn
from .store import CALLS, COUNTERS, CONN, REG, get_json

PREFIX = "/api/v1"
START_KEY = "started_at"  # in the gw table (store.COUNTERS): when the gateway started
ADMIN_REASON = "admin"  # callEnded.reason the browser gets for an admin hang-up

REASONS = {200: "OK", 202: "Accepted", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error"}

_CALL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_REALM = 'Bearer realm="wsgw"'


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "Error")


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, {"error": {"code": code, "message": message}}, headers or {})


# ---- start time (uptime) ----


def record_start(ctx: Context) -> None:
    """Remember when the gateway started, once: every worker calls this at its start-up,
    the first one wins. The htable is emptied by a restart, so this is the current run."""
    with ctx.store.lock(COUNTERS, START_KEY):
        if ctx.store.get(COUNTERS, START_KEY) is None:
            ctx.store.put(COUNTERS, START_KEY, repr(ctx.clock()))


def started_at(ctx: Context) -> float:
    raw = ctx.store.get(COUNTERS, START_KEY)
    try:
        return float(raw) if raw else ctx.clock()
    except ValueError:
        return ctx.clock()


# ---- ids and formatting ----


def call_api_id(key: str) -> str:
    """The URL-safe id of the call record `key` (see the module docstring)."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).rstrip(b"=").decode("ascii")


def call_key_of(api_id: str) -> str | None:
    """The record key named by an API call id, or None when it cannot be one."""
    if not _CALL_ID_RE.fullmatch(api_id):
        return None
    try:
        key = base64.urlsafe_b64decode(api_id + "=" * (-len(api_id) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    # Only the canonical (unpadded) spelling names a call.
    return key if "#" in key and call_api_id(key) == api_id else None


def iso(ts: float | None) -> str | None:
    """A Unix time as RFC 3339 UTC with milliseconds; None for 0/None (not happened)."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(now: float, since: float) -> float | None:
    return round(max(0.0, now - since), 3) if since else None


# ---- documents ----


def health_doc(ctx: Context) -> dict:
    """The /health document's fields (picked by name: this contract does not grow with it),
    plus version and uptime."""
    started = started_at(ctx)
    base = health(ctx)
    doc = {name: base[name] for name in ("status", "server", "protocol", "mode", "connections", "registrations",
                                         "calls")}
    doc.update(version=VERSION, startedAt=iso(started), uptimeSeconds=int(max(0.0, ctx.clock() - started)))
    return doc


def call_doc(ctx: Context, call: Call) -> dict:
    now = ctx.clock()
    return {
        "id": call_api_id(call.key),
        "callId": call.call_id,
        "sipCallId": call.sip_call_id,
        "dn": call.dn,
        "peer": call.peer,
        "localUri": call.local_uri,
        "remoteUri": call.remote_uri,
        "direction": call.direction,
        "state": call.state,
        "connection": call.conn,
        "createdAt": iso(call.created_at),
        "answeredAt": iso(call.answered_at),
        "ageSeconds": _seconds(now, call.created_at) or 0.0,
        "durationSeconds": _seconds(now, call.answered_at),
        "codecs": list(call.codecs),
    }


def _all_calls(ctx: Context) -> list[Call]:
    found = []
    for key in ctx.store.keys(CALLS):
        try:
            call = Call.load(ctx, key)
        except Exception:  # a record of another version, or half-written: not the API's business
            ctx.log.warning("api: unreadable call record %s", key)
            continue
        if call is not None:
            found.append(call)
    found.sort(key=lambda c: (c.created_at, c.key))
    return found


def _connection_doc(ctx: Context, key: str) -> dict:
    doc: dict = {"id": key, "transport": None, "ip": None, "port": None, "since": None}
    try:
        ref = ConnRef.from_key(key)
        doc.update(transport=PROTO_NAMES.get(ref.proto, str(ref.proto)), ip=ref.ip, port=ref.port)
    except ValueError:
        pass
    info = get_json(ctx.store, CONN, key) or {}
    if isinstance(info.get("since"), (int, float)):
        doc["since"] = iso(info["since"])
    return doc


def _expires_at(reg: registrations.Registration) -> float | None:
    """When the upstream registrar drops the binding unless it is refreshed; None when
    not known (embedded mode: the binding lives as long as the WebSocket)."""
    if reg.mode != "upstream" or reg.state != registrations.REGISTERED or reg.lost or not reg.refresh_at:
        return None
    return reg.refresh_at - registrations.refresh_delay(reg.expires) + reg.expires


def dn_doc(ctx: Context, dn: str, reg: registrations.Registration | None, dn_calls: list[Call]) -> dict:
    mode = reg.mode if reg else ("embedded" if ctx.config.embedded else "upstream")
    doc: dict = {
        "dn": dn,
        "registered": reg is not None and reg.state == registrations.REGISTERED,
        "state": reg.state if reg else "unregistered",
        "mode": mode,
        "displayName": reg.display_name if reg else "",
        "registeredAt": iso(reg.registered_at) if reg else None,
        "expires": reg.expires if reg and reg.expires else None,
        "expiresAt": iso(_expires_at(reg)) if reg else None,
        "refreshAt": iso(reg.refresh_at) if reg and reg.mode == "upstream" else None,
        "lost": bool(reg.lost) if reg else False,
        "connections": [_connection_doc(ctx, key) for key in reg.all_conns()] if reg else [],
        "calls": [call_doc(ctx, c) for c in dn_calls],
    }
    return doc


def _load_reg(ctx: Context, dn: str) -> registrations.Registration | None:
    try:
        return registrations.Registration.load(ctx, dn)
    except Exception:
        ctx.log.warning("api: unreadable registration record %s", dn)
        return None


def list_dns(ctx: Context) -> ApiResponse:
    dns = set(ctx.store.keys(REG))
    if ctx.config.embedded and ctx.subscribers is not None:
        dns |= set(ctx.subscribers.passwords)
    by_dn: dict[str, list[Call]] = {}
    for call in _all_calls(ctx):
        by_dn.setdefault(call.dn, []).append(call)
    return ApiResponse(200, {"dns": [dn_doc(ctx, dn, _load_reg(ctx, dn), by_dn.get(dn, [])) for dn in sorted(dns)]})


def get_dn(ctx: Context, dn: str) -> ApiResponse:
    try:
        validate_dn(dn)
    except GatewayError:
        return error(404, "not_found", "no such DN")
    reg = _load_reg(ctx, dn)
    # Embedded, the subscriber file is the list of DNs; upstream, the registrar's
    # directory is unknown here, so any well-formed DN may exist (registered or not).
    if reg is None and ctx.config.embedded and (ctx.subscribers is None or not ctx.subscribers.exists(dn)):
        return error(404, "not_found", "no such DN")
    return ApiResponse(200, dn_doc(ctx, dn, reg, [c for c in _all_calls(ctx) if c.dn == dn]))


def list_calls(ctx: Context) -> ApiResponse:
    return ApiResponse(200, {"calls": [call_doc(ctx, c) for c in _all_calls(ctx)]})


def _load_call(ctx: Context, api_id: str) -> Call | None:
    key = call_key_of(api_id)
    if key is None:
        return None
    try:
        return Call.load(ctx, key)
    except Exception:
        ctx.log.warning("api: unreadable call record %s", key)
        return None


def get_call(ctx: Context, api_id: str) -> ApiResponse:
    call = _load_call(ctx, api_id)
    if call is None:
        return error(404, "not_found", "no such call")
    return ApiResponse(200, call_doc(ctx, call))


def delete_call(ctx: Context, api_id: str) -> ApiResponse:
    """Admin hang-up: exactly what the owning browser's `hangup` does (CANCEL, 486 or
    BYE toward SIP), and the browser is told with `callEnded` reason "admin"."""
    call = _load_call(ctx, api_id)
    if call is None:
        return error(404, "not_found", "no such call")
    if call.direction == "outbound" and call.state in (calls.CALLING, calls.RINGING):
        action = "cancel"
    elif call.direction == "inbound" and call.state == calls.RINGING:
        action = "reject"
    else:
        action = "bye"
    try:
        calls.hangup(ctx, call.owner, None, calls.CallIdPayload(call_id=call.call_id, reason=ADMIN_REASON))
    except GatewayError as exc:
        if exc.code == errors.NO_SUCH_CALL:
            return error(404, "not_found", "no such call")
        return error(409, "invalid_state", exc.reason)
    ctx.log.info("api hangup call=%s dn=%s sip_call_id=%s action=%s", call.call_id, call.dn, call.sip_call_id, action)
    after = Call.load(ctx, call.key)
    return ApiResponse(202, {"id": api_id, "callId": call.call_id, "dn": call.dn, "action": action,
                             "state": after.state if after is not None else "ended"})


# ---- routing ----

_PUBLIC = "public"


def _route(segments: list[str]) -> tuple[dict, tuple[str, ...]] | None:
    """{method: handler} and the path arguments for /api/v1/<segments>, or None."""
    match segments:
        case ["health"]:
            return {"GET": health_doc, _PUBLIC: True}, ()
        case ["dns"]:
            return {"GET": list_dns}, ()
        case ["dns", dn] if dn:
            return {"GET": get_dn}, (dn,)
        case ["calls"]:
            return {"GET": list_calls}, ()
        case ["calls", call_id] if call_id:
            return {"GET": get_call, "DELETE": delete_call}, (call_id,)
    return None


def _authorize(ctx: Context, authorization: str) -> ApiResponse | None:
    token = ctx.config.api_token
    if not token:
        return error(403, "api_disabled", "the API is disabled on this gateway (GW_API_TOKEN is not set)")
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return error(401, "unauthorized", "a bearer token is required", {"WWW-Authenticate": _REALM})
    given = credentials.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, token.encode("utf-8")):
        return error(401, "unauthorized", "invalid token", {"WWW-Authenticate": _REALM + ', error="invalid_token"'})
    return None


def handle(ctx: Context, method: str, target: str, authorization: str = "") -> ApiResponse:
    """Answer one HTTP request for `target` (the request URI; the query is ignored)."""
    path = (target or "").split("?", 1)[0].split("#", 1)[0]
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return error(404, "not_found", "no such resource")
    segments = [unquote(s) for s in path[len(PREFIX) + 1:].split("/")] if path != PREFIX else []
    found = _route(segments)
    if found is None:
        return error(404, "not_found", "no such resource")
    methods, args = found
    allowed = [m for m in methods if m != _PUBLIC]
    method = (method or "").upper()
    if method not in allowed:
        return error(405, "method_not_allowed", f"use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)})
    if not methods.get(_PUBLIC):
        refused = _authorize(ctx, authorization)
        if refused is not None:
            return refused
    try:
        result = methods[method](ctx, *args)
    except Exception:
        ctx.log.exception("api %s %s failed", method, path)
        return error(500, "internal", "internal error")
    return result if isinstance(result, ApiResponse) else ApiResponse(200, result)
