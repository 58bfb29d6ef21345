"""Validation of client-supplied strings and building of SIP header blocks.

Nothing a client sends reaches a SIP header without passing one of the
`validate_*` functions here: they refuse CR, LF, quotes, angle brackets,
backslashes, other control characters and over-long values.
"""

from __future__ import annotations

import re
import secrets

from . import errors
from .errors import GatewayError

MAX_DN_LEN = 32
MAX_DISPLAY_NAME_LEN = 64
MAX_PASSWORD_LEN = 128

_DN_RE = re.compile(r"^\+?[A-Za-z0-9._-]{1,%d}$" % MAX_DN_LEN)
# Display names are quoted strings in SIP: anything printable except the
# characters that end or escape the quoted string or the header.
_FORBIDDEN_IN_DISPLAY = re.compile(r'["<>\\\x00-\x1f\x7f]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


def validate_dn(value: object, field: str = "dn") -> str:
    if not isinstance(value, str) or not _DN_RE.fullmatch(value):
        raise GatewayError(
            errors.INVALID_PAYLOAD,
            f"{field} must be 1-{MAX_DN_LEN} characters of digits, letters, '.', '_', '-' (optional leading '+')",
        )
    return value


def _encodable(value: str) -> bool:
    # A JSON \ud800 escape decodes to a lone surrogate that cannot become UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_display_name(value: object, field: str = "displayName") -> str:
    if not isinstance(value, str) or len(value) > MAX_DISPLAY_NAME_LEN or _FORBIDDEN_IN_DISPLAY.search(value) \
            or not _encodable(value):
        raise GatewayError(
            errors.INVALID_PAYLOAD,
            f"{field} must be at most {MAX_DISPLAY_NAME_LEN} characters without quotes, angle brackets, "
            "backslashes or control characters",
        )
    return value


def validate_password(value: object, field: str = "password") -> str:
    # A password never goes into a header (only into the digest hash), so quotes are fine.
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_PASSWORD_LEN or _CONTROL.search(value) \
            or not _encodable(value):
        raise GatewayError(errors.INVALID_PAYLOAD, f"{field} must be 1-{MAX_PASSWORD_LEN} characters without control characters")
    return value


def validate_token(value: object, field: str) -> str:
    """Identifiers chosen by the client (callId, request id): a safe token."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise GatewayError(errors.INVALID_PAYLOAD, f"{field} must be 1-64 characters of letters, digits, '.', '_', '~', '-'")
    return value


def quote_display_name(name: str) -> str:
    """A display name as a SIP quoted-string (already validated, so nothing to escape)."""
    return '"' + validate_display_name(name) + '"'


def name_addr(uri: str, display_name: str = "", tag: str = "") -> str:
    """`"Name" <uri>;tag=x` for From/To/Contact values."""
    out = f"{quote_display_name(display_name)} <{uri}>" if display_name else f"<{uri}>"
    if tag:
        out += f";tag={tag}"
    return out


def new_tag() -> str:
    return secrets.token_hex(8)


def new_call_id(host: str) -> str:
    """An unpredictable SIP Call-ID owned by the gateway."""
    return f"{secrets.token_hex(16)}@{host}"


def header_block(headers: list[tuple[str, str]]) -> str:
    """Join (name, value) pairs into CRLF-terminated header lines, refusing line breaks."""
    lines = []
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"line break in SIP header {name}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)
