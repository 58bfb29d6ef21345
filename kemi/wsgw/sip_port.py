"""What the pure core needs from the SIP stack, as plain data and a small interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutgoingRequest:
    """A request the gateway originates statefully (tm t_uac_send in Kamailio)."""

    method: str
    ruri: str
    headers: str  # CRLF-terminated header lines, built with sip_headers.header_block
    body: str = ""
    nexthop: str = ""  # optional outbound proxy / destination URI


@dataclass(frozen=True)
class SipReply:
    """A reply to one of the gateway's own requests."""

    status: int
    reason: str
    call_id: str
    cseq: int
    method: str
    from_tag: str = ""
    to_tag: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case name -> all values joined by ","
    body: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class SipPort(Protocol):
    def send_request(self, request: OutgoingRequest) -> bool: ...

    def cancel(self, sip_call_id: str, invite_cseq: int) -> bool:
        """CANCEL our pending INVITE (tm sends it once a provisional has arrived)."""
        ...

    def reply_suspended(self, t_index: int, t_label: int, code: int, reason: str, headers: str, body: str) -> str | None:
        """Send the final response of a suspended inbound INVITE; our To tag, or None if it is gone."""
        ...


class Outbox(Protocol):
    def send(self, conn: "ConnRef", message: dict) -> bool: ...  # noqa: F821
