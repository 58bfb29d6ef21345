"""rtpengine's ng control protocol: bencode over UDP, and the flags this gateway uses.

The gateway talks to rtpengine itself (not through Kamailio's rtpengine module)
because it builds its SDP in Python and sends it with tm's t_uac_send: there is
no SIP message in the script for the module to rewrite. The protocol is small:
`<cookie> <bencoded dict>` out, `<cookie> <bencoded dict>` back.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass

# ---- bencode ----


def bencode(value: object) -> bytes:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, (list, tuple)):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode("utf-8") if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> object:
    value, end = _decode(data, 0)
    if end != len(data):
        raise ValueError("trailing data after bencoded value")
    return value


def _decode(data: bytes, i: int) -> tuple[object, int]:
    c = data[i:i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1:end]), end + 1
    if c == b"l":
        i, out = i + 1, []
        while data[i:i + 1] != b"e":
            v, i = _decode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i, out_d = i + 1, {}
        while data[i:i + 1] != b"e":
            k, i = _decode(data, i)
            v, i = _decode(data, i)
            out_d[k.decode("utf-8") if isinstance(k, bytes) else k] = v
        return out_d, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        n = int(data[i:colon])
        raw = data[colon + 1:colon + 1 + n]
        if len(raw) != n:
            raise ValueError("truncated string")
        try:
            return raw.decode("utf-8"), colon + 1 + n
        except UnicodeDecodeError:
            return raw, colon + 1 + n
    raise ValueError(f"bad bencode at {i}")


# ---- flags (see ../shared/KAMAILIO-NOTES.md, measured on this machine) ----

_REPLACE = ["origin", "session-connection"]


def toward_sip(codecs: list[str] | tuple[str, ...]) -> dict:
    """Browser SDP -> plain RTP for the SIP side (offer of an outbound call, answer of an inbound one).

    ICE removed, RTP/AVP, RTCP demuxed, WebRTC-only attributes stripped, only GW_CODECS.
    DTLS-reverse=passive: rtpengine must not start DTLS toward the browser before the
    browser has the answer (otherwise the call hangs for good when the callee rings)."""
    return {
        "ICE": "remove",
        "transport-protocol": "RTP/AVP",
        "rtcp-mux": ["demux"],
        "replace": _REPLACE,
        "flags": ["strip-extmap"],
        "codec": {"strip": ["all"], "except": list(codecs)},
        "DTLS-reverse": "passive",
    }


def toward_browser() -> dict:
    """Plain RTP SDP from the SIP side -> WebRTC for the browser: ICE forced, DTLS passive (the
    browser starts the handshake), UDP/TLS/RTP/SAVPF with RTCP multiplexed."""
    return {
        "ICE": "force",
        "DTLS": "passive",
        "transport-protocol": "UDP/TLS/RTP/SAVPF",
        "rtcp-mux": ["offer", "require"],
        "replace": _REPLACE,
    }


@dataclass(frozen=True)
class MediaStats:
    """What the relay saw for a call: packets/bytes each way and packets lost."""

    packets_to_sip: int = 0
    bytes_to_sip: int = 0
    packets_to_browser: int = 0
    bytes_to_browser: int = 0
    lost: int = 0

    def as_dict(self) -> dict:
        return {"packetsToSip": self.packets_to_sip, "bytesToSip": self.bytes_to_sip,
                "packetsToBrowser": self.packets_to_browser, "bytesToBrowser": self.bytes_to_browser,
                "lost": self.lost}


def stats_from_reply(reply: dict, browser_tag: str) -> MediaStats:
    """Packets each way from a delete/query reply: what the browser's monologue received came from
    the browser (it goes to SIP); what the other side received goes to the browser."""
    to_sip = to_browser = bytes_sip = bytes_browser = lost = 0
    for tag, mono in (reply.get("tags") or {}).items():
        for media in mono.get("medias", []) if isinstance(mono, dict) else []:
            for stream in media.get("streams", []):
                stats = stream.get("stats", {})
                if tag == browser_tag:
                    to_sip += int(stats.get("packets", 0))
                    bytes_sip += int(stats.get("bytes", 0))
                else:
                    to_browser += int(stats.get("packets", 0))
                    bytes_browser += int(stats.get("bytes", 0))
            for ssrc in (media.get("SSRC") or {}).values() if isinstance(media.get("SSRC"), dict) else []:
                lost += int((ssrc or {}).get("packets lost", 0) or 0)
    # rtpengine 10.5 reports loss per SSRC at the top level ("cumulative loss").
    for ssrc in (reply.get("SSRC") or {}).values() if isinstance(reply.get("SSRC"), dict) else []:
        if isinstance(ssrc, dict):
            lost += int(ssrc.get("cumulative loss", 0) or 0)
    return MediaStats(to_sip, bytes_sip, to_browser, bytes_browser, lost)


class RtpEngineError(Exception):
    pass


class NgClient:
    """A blocking ng client (one UDP request, one reply, bounded by `timeout`)."""

    def __init__(self, address: str, timeout: float = 2.0) -> None:
        # "udp:127.0.0.1:2223" or "127.0.0.1:2223"
        host, _, port = address.removeprefix("udp:").rpartition(":")
        self.addr = (host.strip("[]"), int(port))
        self.timeout = timeout

    def command(self, name: str, **params: object) -> dict:
        cookie = secrets.token_hex(6).encode()
        message = dict(params)
        message["command"] = name
        with socket.socket(socket.AF_INET6 if ":" in self.addr[0] else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(self.timeout)
            s.sendto(cookie + b" " + bencode(message), self.addr)
            while True:
                try:
                    data, _ = s.recvfrom(65535)
                except socket.timeout:
                    raise RtpEngineError(f"rtpengine at {self.addr[0]}:{self.addr[1]} did not answer {name}") from None
                got_cookie, _, body = data.partition(b" ")
                if got_cookie == cookie:
                    break
        reply = bdecode(body)
        if not isinstance(reply, dict):
            raise RtpEngineError("rtpengine reply is not a dictionary")
        if reply.get("result") == "error":
            raise RtpEngineError(f"rtpengine {name}: {reply.get('error-reason', 'error')}")
        return reply
