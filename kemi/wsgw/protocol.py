"""Protocol v1 framing: parse and validate client frames, build server messages.

A frame is `{"type": str, "payload": object, "id": str}`; see
docs/CUSTOM_SIGNALING_PROTOCOL.md and docs/protocol.schema.json. Payload
validation is hand-written (one function per message type) because it runs for
every frame inside Kamailio; tests check it agrees with the JSON Schema.
"""

from __future__ import annotations

import json as _strict_json
import re
from dataclasses import dataclass
from typing import Any, Callable

try:  # ujson is several times faster; the stdlib keeps unit tests independent of it.
    import ujson as _json

    _DUMP_OPTIONS = {"ensure_ascii": False, "escape_forward_slashes": False}
except ImportError:  # pragma: no cover
    import json as _json  # type: ignore[no-redef]

    _DUMP_OPTIONS = {"ensure_ascii": False, "separators": (",", ":")}

from . import errors
from .errors import GatewayError
from .sip_headers import validate_display_name, validate_dn, validate_password, validate_token

# Largest frame a client may send. Kamailio's read buffer (tcp_rd_buf_size) is
# 64 KB; anything between the two gets `frame_too_large` and the connection stays.
MAX_FRAME_BYTES = 32768
MAX_ID_LEN = 64
_ID_RE = re.compile(r"^[\x21-\x7e]{1,%d}$" % MAX_ID_LEN)
_TYPE_RE = re.compile(r"^[A-Za-z]{1,32}$")


class ProtocolError(GatewayError):
    """A frame that cannot be served; `request_id` is echoed when it could be read."""

    def __init__(self, code: str, reason: str, request_id: str | None = None, msg_type: str | None = None) -> None:
        super().__init__(code, reason)
        self.request_id = request_id
        self.msg_type = msg_type


@dataclass(frozen=True)
class Frame:
    type: str
    payload: Any  # the typed payload dataclass of `type`
    id: str | None


# ---- payloads of client requests ----


@dataclass(frozen=True)
class RegisterPayload:
    dn: str
    password: str
    display_name: str = ""


@dataclass(frozen=True)
class EmptyPayload:
    pass


def only_fields(payload: dict, allowed: set[str]) -> None:
    """Refuse payload fields a message type does not define (invalid_payload)."""
    unknown = set(payload) - allowed
    if unknown:
        raise GatewayError(errors.INVALID_PAYLOAD, f"unknown field(s): {', '.join(sorted(unknown))[:120]}")


def _required(payload: dict, name: str) -> Any:
    if name not in payload:
        raise GatewayError(errors.INVALID_PAYLOAD, f"missing field: {name}")
    return payload[name]


def parse_register(payload: dict) -> RegisterPayload:
    only_fields(payload, {"dn", "password", "displayName"})
    return RegisterPayload(
        dn=validate_dn(_required(payload, "dn")),
        password=validate_password(_required(payload, "password")),
        display_name=validate_display_name(payload.get("displayName", "")),
    )


def parse_empty(payload: dict) -> EmptyPayload:
    only_fields(payload, set())
    return EmptyPayload()


PayloadParser = Callable[[dict], Any]

# Client request types and their payload parsers. Other modules add theirs with
# `register_type` (calls, mid-call control ...), so this table is the one list.
REQUEST_TYPES: dict[str, PayloadParser] = {
    "register": parse_register,
    "unregister": parse_empty,
    "ping": parse_empty,
}


def register_type(name: str, parser: PayloadParser) -> None:
    REQUEST_TYPES[name] = parser


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_frame(text: str | bytes) -> Frame:
    """Decode and validate one client frame, or raise ProtocolError."""
    size = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(errors.FRAME_TOO_LARGE, f"frame is {size} bytes, the maximum is {MAX_FRAME_BYTES}")
    try:
        # The stdlib parser is strict RFC 8259 (ujson accepts leading zeros, "1.", raw tabs ...);
        # NaN and Infinity are refused too.
        obj = _strict_json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, TypeError, RecursionError):  # deep nesting stops the parser, not the gateway
        raise ProtocolError(errors.BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(errors.BAD_JSON, "frame must be a JSON object")

    request_id = obj.get("id")
    if "id" in obj and (not isinstance(request_id, str) or not _ID_RE.fullmatch(request_id)):
        raise ProtocolError(errors.INVALID_PAYLOAD, f"id must be a string of 1-{MAX_ID_LEN} printable characters")

    msg_type = obj.get("type")
    if not isinstance(msg_type, str) or not msg_type:
        raise ProtocolError(errors.INVALID_PAYLOAD, "missing or non-string field: type", request_id)
    if not _TYPE_RE.fullmatch(msg_type) or msg_type not in REQUEST_TYPES:
        raise ProtocolError(errors.UNKNOWN_TYPE, f"unknown message type: {msg_type[:40]!r}", request_id)

    extra = set(obj) - {"type", "payload", "id"}
    if extra:
        raise ProtocolError(errors.INVALID_PAYLOAD, f"unknown top-level field(s): {', '.join(sorted(extra))[:80]}", request_id, msg_type)
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise ProtocolError(errors.INVALID_PAYLOAD, "payload must be a JSON object", request_id, msg_type)
    try:
        typed = REQUEST_TYPES[msg_type](payload)
    except GatewayError as exc:
        raise ProtocolError(exc.code, exc.reason, request_id, msg_type) from None
    return Frame(type=msg_type, payload=typed, id=request_id)


# ---- server messages ----


def message(msg_type: str, payload: dict, request_id: str | None = None) -> dict:
    msg: dict = {"type": msg_type, "payload": payload}
    if request_id is not None:
        msg["id"] = request_id
    return msg


def error_message(code: str, reason: str, request_id: str | None = None, request_type: str | None = None) -> dict:
    payload: dict = {"code": code, "reason": reason}
    if request_type:
        payload["requestType"] = request_type
    return message("error", payload, request_id)


def encode(msg: dict) -> str:
    return _json.dumps(msg, **_DUMP_OPTIONS)


def encode_ascii(msg: dict) -> str:
    """Like encode, with every non-ASCII character escaped (for text holding lone surrogates)."""
    import json

    return json.dumps(msg, ensure_ascii=True, separators=(",", ":"))


def decode(text: str) -> Any:
    return _json.loads(text)
