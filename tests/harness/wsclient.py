"""A protocol v1 client over a real WebSocket (subprotocol `sip`), for tests.

Synchronous on purpose: tests interleave it with SIPp processes. A reader thread
queues every server message; `request()` waits for the reply with its id,
`wait_for()` for an event of a type.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .inbox import WsConnection


class WsClient(WsConnection[dict]):
    _ids = itertools.count(1)

    def parse(self, text: str) -> dict:
        return json.loads(text)

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
