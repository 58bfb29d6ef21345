"""Test doubles and small helpers shared by the unit tests (no Kamailio needed).

conftest.py puts /work/main/kemi on sys.path before this module is imported.
"""

from __future__ import annotations

import logging
import re

from wsgw.config import GatewayConfig
from wsgw.connections import ConnRef
from wsgw.context import Context
from wsgw.sip_port import OutgoingRequest, SipReply
from wsgw.sip_uri import parse_sip_uri
from wsgw.store import MemoryStore
from wsgw.subscribers import parse_subscribers

UPSTREAM = "sip:127.0.0.1:5070"
START_TIME = 1_700_000_000.0

SUBSCRIBERS_TEXT = """\
# test subscribers
5001:secret5001
5002:secret5002

+4915112345678:pa:ss
"""


class FakeOutbox:
    """Records every (conn, message) the core sends to a WebSocket client."""

    def __init__(self) -> None:
        # `sent` without the session's `seq` (most tests are about the message itself);
        # `stamped` exactly as sent (test_sessions, test_resume).
        self.sent: list[tuple[ConnRef, dict]] = []
        self.stamped: list[tuple[ConnRef, dict]] = []
        self.result = True

    def send(self, conn: ConnRef, message: dict) -> bool:
        self.stamped.append((conn, message))
        self.sent.append((conn, {k: v for k, v in message.items() if k != "seq"}))
        return self.result

    def messages(self, conn: ConnRef | None = None) -> list[dict]:
        return [m for c, m in self.sent if conn is None or c == conn]

    def clear(self) -> None:
        self.sent.clear()


class FakeSipPort:
    """Records every OutgoingRequest the core asks the SIP stack to send (and CANCELs / suspended replies)."""

    def __init__(self) -> None:
        self.requests: list[OutgoingRequest] = []
        self.cancels: list[tuple[str, int]] = []
        self.suspended_replies: list[tuple] = []
        self.result = True
        self.to_tag: str | None = "gw-to-tag"  # what reply_suspended reports (None: transaction gone)

    def send_request(self, request: OutgoingRequest) -> bool:
        self.requests.append(request)
        return self.result

    def cancel(self, sip_call_id: str, invite_cseq: int) -> bool:
        self.cancels.append((sip_call_id, invite_cseq))
        return self.result

    def reply_suspended(self, t_index: int, t_label: int, code: int, reason: str, headers: str, body: str) -> str | None:
        self.suspended_replies.append((t_index, t_label, code, reason, headers, body))
        return self.to_tag

    @property
    def last(self) -> OutgoingRequest:
        assert self.requests, "no SIP request was sent"
        return self.requests[-1]

    def clear(self) -> None:
        self.requests.clear()


class FakeClock:
    """A fixed clock (callable like time.time) that only moves when told to."""

    def __init__(self, start: float = START_TIME) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def build_ctx(
    *,
    embedded: bool = True,
    subscribers_text: str | None = SUBSCRIBERS_TEXT,
    outbox: FakeOutbox | None = None,
    sip: FakeSipPort | None = None,
    clock: FakeClock | None = None,
    upstream: str = UPSTREAM,
    **config_overrides,
) -> Context:
    config = GatewayConfig(upstream=None if embedded else parse_sip_uri(upstream), **config_overrides)
    return Context(
        config=config,
        store=MemoryStore(),
        outbox=outbox if outbox is not None else FakeOutbox(),
        sip=sip if sip is not None else FakeSipPort(),
        subscribers=parse_subscribers(subscribers_text) if subscribers_text is not None else None,
        clock=clock if clock is not None else FakeClock(),
        log=logging.getLogger("wsgw.test"),
    )


# ---- SIP helpers ----


def parse_headers(block: str) -> dict[str, str]:
    """A header block built by sip_headers.header_block -> {name: value}; checks the CRLF framing."""
    assert block.endswith("\r\n"), block
    out: dict[str, str] = {}
    for line in block[:-2].split("\r\n"):
        name, sep, value = line.partition(": ")
        assert sep, f"malformed header line {line!r}"
        assert name not in out, f"duplicate header {name}"
        out[name] = value
    return out


_AUTH_PARAM = re.compile(r'([A-Za-z0-9_-]+)=("(?:[^"\\]|\\.)*"|[^\s,]+)')


def auth_params(value: str) -> dict[str, str]:
    """Parameters of an Authorization header value (`Digest k="v", k2=v2`), unquoted."""
    assert value.startswith("Digest "), value
    params = {}
    for name, raw in _AUTH_PARAM.findall(value[len("Digest "):]):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
    return params


def reply_to(request: OutgoingRequest, status: int, reason: str = "", headers: dict[str, str] | None = None) -> SipReply:
    """The SipReply the adapter would build for a reply to `request`."""
    h = parse_headers(request.headers)
    cseq, method = h["CSeq"].split()
    return SipReply(
        status=status,
        reason=reason,
        call_id=h["Call-ID"],
        cseq=int(cseq),
        method=method,
        headers={k.lower(): v for k, v in (headers or {}).items()},
    )


def register(ctx, conn, dn: str, display_name: str = "") -> None:
    """Embedded registration of `dn` on `conn`; the outbox is cleared afterwards."""
    from wsgw import registrations
    from wsgw.protocol import RegisterPayload

    registrations.register(ctx, conn, "reg", RegisterPayload(dn=dn, password=f"secret{dn}", display_name=display_name))
    assert registrations.connection_of_dn(ctx, dn) == conn
    ctx.outbox.clear()


class _AnyResumeToken:
    """Equal to any resume token (they are random): for comparing `registered` messages."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and re.fullmatch(r"[A-Za-z0-9_-]{32}", other) is not None

    def __repr__(self) -> str:
        return "<any resume token>"


RESUME_TOKEN = _AnyResumeToken()
