"""Write a text frame to a client's WebSocket from any Kamailio worker.

Stock Kamailio 5.6 KEMI cannot send on a WebSocket (corex.send_data knows no
`ws`). The kamailio binary exports the core function
`int wss_send(dest_info_t *dst, const char *buf, unsigned len)`, which finds the
TCP connection by address, lets the websocket module frame the text and sends
it. We call it through ctypes. The `struct dest_info` layout below is the same
from 5.6 to master; `self_check()` runs at start-up and fails loudly if the
symbol is missing or the struct size is not the expected one.
"""

from __future__ import annotations

import ctypes
import socket
import struct

PROTO_WS = 5
PROTO_WSS = 6

# The websocket module mis-frames outbound frames larger than 65535 bytes.
MAX_OUTBOUND_FRAME = 65535

_SOCKADDR_UNION_SIZE = 128  # sizeof(struct sockaddr_storage)


class _DestInfo(ctypes.Structure):
    # struct dest_info { socket_info *send_sock; union sockaddr_union to; int id;
    #   snd_flags_t send_flags {u16 f; u16 blst_imask}; char proto; char pad0; short pad1; }
    _fields_ = [
        ("send_sock", ctypes.c_void_p),
        ("to", ctypes.c_ubyte * _SOCKADDR_UNION_SIZE),
        ("id", ctypes.c_int),
        ("snd_f", ctypes.c_ushort),
        ("blst_imask", ctypes.c_ushort),
        ("proto", ctypes.c_char),
        ("proto_pad0", ctypes.c_char),
        ("proto_pad1", ctypes.c_short),
    ]


EXPECTED_DEST_INFO_SIZE = 152

_wss_send = None


def _load():
    global _wss_send
    if _wss_send is None:
        lib = ctypes.CDLL(None)
        fn = lib.wss_send
        fn.argtypes = [ctypes.POINTER(_DestInfo), ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _wss_send = fn
    return _wss_send


def self_check() -> None:
    """Raise RuntimeError when this process cannot send WebSocket frames."""
    if ctypes.sizeof(_DestInfo) != EXPECTED_DEST_INFO_SIZE:
        raise RuntimeError(
            f"struct dest_info is {ctypes.sizeof(_DestInfo)} bytes, expected {EXPECTED_DEST_INFO_SIZE}"
        )
    try:
        _load()
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"kamailio core symbol wss_send not found: {exc}") from exc


def _sockaddr(ip: str, port: int) -> bytes:
    if ":" in ip:
        raw = struct.pack("<H", socket.AF_INET6) + struct.pack("!H", port)
        raw += b"\0\0\0\0" + socket.inet_pton(socket.AF_INET6, ip) + b"\0\0\0\0"
    else:
        raw = struct.pack("<H", socket.AF_INET) + struct.pack("!H", port)
        raw += socket.inet_pton(socket.AF_INET, ip)
    return raw.ljust(_SOCKADDR_UNION_SIZE, b"\0")


def send_text(ip: str, port: int, proto: int, text: str) -> bool:
    """Send `text` as one frame to the WebSocket of ip:port; False if it failed."""
    data = text.encode("utf-8")
    if len(data) > MAX_OUTBOUND_FRAME:
        return False
    dst = _DestInfo()
    ctypes.memmove(dst.to, _sockaddr(ip, port), _SOCKADDR_UNION_SIZE)
    dst.proto = bytes([proto])
    return _load()(ctypes.byref(dst), data, len(data)) >= 0
