"""A protocol v1 client over a real WebSocket (subprotocol `sip`), for tests.

Synchronous on purpose: tests interleave it with SIPp processes. A reader thread
queues every server message; `request()` waits for the reply with its id,
`wait_for()` for an event of a type.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .inbox import Inbox


class WsClient(Inbox[dict]):
    _ids = itertools.count(1)

    def __init__(self, url: str, timeout: float = 10.0, origin: str | None = None) -> None:
        super().__init__(timeout)
        # Entered as a context manager, as websockets wants for a long-lived connection.
        self._cm = connect(url, subprotocols=["sip"], open_timeout=timeout, max_size=2**20, origin=origin)
        self.ws = self._cm.__enter__()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                self.messages.put(json.loads(self.ws.recv()))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._reader.join(timeout=5)

    def drop(self) -> None:
        """Lose the connection as a network failure does: the TCP socket goes, no close frame."""
        import socket

        self.ws.socket.shutdown(socket.SHUT_RDWR)
        self.ws.socket.close()
        # Not joined: the reader notices in its own time, and the test must not wait for it.

    def __enter__(self) -> "WsClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending --

    def send_raw(self, text: str) -> None:
        self.ws.send(text)

    def send(self, msg_type: str, payload: dict | None = None, request_id: str | None = None) -> str:
        request_id = request_id or f"r{next(self._ids)}"
        frame: dict[str, Any] = {"type": msg_type, "id": request_id}
        if payload is not None:
            frame["payload"] = payload
        self.ws.send(json.dumps(frame))
        return request_id

    def request(self, msg_type: str, payload: dict | None = None, timeout: float | None = None) -> dict:
        """Send a request and return its one final reply (any type with the same id)."""
        request_id = self.send(msg_type, payload)
        return self.wait(lambda m: m.get("id") == request_id, timeout, f"reply to {msg_type} {request_id}")

    # -- receiving --

    def wait_for(self, msg_type: str, timeout: float | None = None, **payload_match: Any) -> dict:
        def matches(m: dict) -> bool:
            payload = m.get("payload") or {}
            return m.get("type") == msg_type and all(payload.get(k) == v for k, v in payload_match.items())

        return self.wait(matches, timeout, f"{msg_type} {payload_match or ''}")

    def assert_no_message(self, seconds: float, msg_type: str | None = None) -> None:
        """Fail if a message (of `msg_type`, if given) arrives within `seconds`."""
        try:
            msg = self.wait(lambda m: msg_type is None or m.get("type") == msg_type, seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {msg}")

    def register(self, dn: str, password: str, **extra: Any) -> dict:
        return self.request("register", {"dn": dn, "password": password, **extra})
