"""Stable, machine-readable error codes of protocol v1 (docs/CUSTOM_SIGNALING_PROTOCOL.md)."""

from __future__ import annotations

BAD_JSON = "bad_json"
UNKNOWN_TYPE = "unknown_type"
INVALID_PAYLOAD = "invalid_payload"
FRAME_TOO_LARGE = "frame_too_large"
AUTH_FAILED = "auth_failed"
NOT_REGISTERED = "not_registered"
ALREADY_REGISTERED = "already_registered"
UPSTREAM_UNREACHABLE = "upstream_unreachable"
RATE_LIMITED = "rate_limited"
NO_SUCH_CALL = "no_such_call"
INVALID_STATE = "invalid_state"
PEER_REJECTED = "peer_rejected"
MEDIA_UNAVAILABLE = "media_unavailable"
SESSION_EXPIRED = "session_expired"
INTERNAL = "internal"

ALL_CODES = (
    BAD_JSON,
    UNKNOWN_TYPE,
    INVALID_PAYLOAD,
    FRAME_TOO_LARGE,
    AUTH_FAILED,
    NOT_REGISTERED,
    ALREADY_REGISTERED,
    UPSTREAM_UNREACHABLE,
    RATE_LIMITED,
    NO_SUCH_CALL,
    INVALID_STATE,
    PEER_REJECTED,
    MEDIA_UNAVAILABLE,
    SESSION_EXPIRED,
    INTERNAL,
)


class GatewayError(Exception):
    """A failure that becomes an `error` frame with `code` and a human `reason`."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
