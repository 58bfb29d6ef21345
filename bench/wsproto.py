"""A small asyncio WebSocket client (RFC 6455) for load generation.

The `websockets` package is accurate but spends tens of microseconds per frame; with two cores
shared by Kamailio, SIPp and the load generator, the load generator must stay cheap. This client
does only what the benchmarks need: the opening handshake with a subprotocol, masked text frames
out (random 4-byte key, XOR done on Python ints), unmasked frames in, Ping answered with Pong,
Close. One `WsConn` per connection; `on_text(conn, text)` is called for every text frame.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Callable

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def _mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    k = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


class WsConn(asyncio.Protocol):
    def __init__(self, host: str, port: int, path: str, subprotocol: str | None,
                 on_text: Callable[["WsConn", str], None] | None, origin: str | None = None) -> None:
        self.host, self.port, self.path = host, port, path
        self.subprotocol = subprotocol
        self.origin = origin
        self.on_text = on_text or (lambda c, t: None)
        self.transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._shaken = False
        self._frag: list[bytes] = []
        self.pings = 0  # Ping control frames received (the server's keepalive)
        self.frames_in = 0
        self.local: tuple[str, int] | None = None
        self.user: object = None  # free slot for the benchmark's per-connection state

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = transport.get_extra_info("sockname")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
        if self.origin:
            lines.append(f"Origin: {self.origin}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._shaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode(errors="replace")
            del buf[:end + 4]
            if not head.startswith("HTTP/1.1 101"):
                if not self.open.done():
                    self.open.set_exception(ConnectionError(head.split("\r\n")[0]))
                self.transport.close()
                return
            self._shaken = True
            if not self.open.done():
                self.open.set_result(self)
        # Frames from the server are not masked.
        while True:
            if len(buf) < 2:
                return
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = (buf[2] << 8) | buf[3]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            if b1 & 0x80:
                pos += 4  # a masked server frame would be a protocol error; skip its key
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos:pos + n])
            del buf[:pos + n]
            self._frame(b0 & 0x80, b0 & 0x0F, payload)

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.pings += 1
            self.transport.write(frame(OP_PONG, payload))
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CLOSE:
            if not self.transport.is_closing():
                self.transport.write(frame(OP_CLOSE, payload[:2]))
                self.transport.close()
            return
        if opcode in (OP_TEXT, OP_BIN) and fin:
            self.frames_in += 1
            self.on_text(self, payload.decode("utf-8", "replace"))
            return
        self._frag.append(payload)
        if fin:
            text = b"".join(self._frag).decode("utf-8", "replace")
            self._frag = []
            self.frames_in += 1
            self.on_text(self, text)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(exc)

    # -- API --
    def send_text(self, text: str) -> None:
        self.transport.write(frame(OP_TEXT, text.encode()))

    def close(self) -> None:
        if self.transport and not self.transport.is_closing():
            self.transport.write(frame(OP_CLOSE, struct.pack("!H", 1000)))
            self.transport.close()

    def abort(self) -> None:
        if self.transport:
            self.transport.abort()

    @property
    def is_open(self) -> bool:
        return self._shaken and self.transport is not None and not self.transport.is_closing()


async def connect(host: str, port: int, *, path: str = "/", subprotocol: str | None = "sip",
                  on_text: Callable[[WsConn, str], None] | None = None, local_ip: str | None = None,
                  timeout: float = 10.0, origin: str | None = None) -> WsConn:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WsConn(host, port, path, subprotocol, on_text, origin), host, port,
                               local_addr=(local_ip, 0) if local_ip else None),
        timeout)
    await asyncio.wait_for(proto.open, timeout)
    return proto
