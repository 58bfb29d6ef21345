"""A test client's WebSocket: a reader thread queues every message, and wait() finds the one a
test wants. Shared by the JSON client (wsclient.py) and the SIP-over-WebSocket one (sipws.py)."""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Callable, Generic, TypeVar

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

M = TypeVar("M")


class Inbox(Generic[M]):
    """`messages`: queued by the reader thread; `backlog`: received but passed over by wait()."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.messages: "queue.Queue[M]" = queue.Queue()
        self.backlog: list[M] = []

    def wait(self, predicate: Callable[[M], bool], timeout: float | None = None, what: str = "message") -> M:
        """The first message (backlog first, then new ones) that matches; the others stay, in order."""
        for i, msg in enumerate(self.backlog):
            if predicate(msg):
                return self.backlog.pop(i)
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {limit}s; unconsumed: {[str(m) for m in self.backlog]}")
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(msg):
                return msg
            self.backlog.append(msg)


class WsConnection(Inbox[M]):
    """A WebSocket with subprotocol `sip` (what the gateway accepts) whose reader thread queues
    what `parse` makes of each frame (None: nothing to queue)."""

    def __init__(self, url: str, timeout: float = 10.0, origin: str | None = None) -> None:
        super().__init__(timeout)
        # Entered as a context manager, as websockets wants for a long-lived connection.
        self._cm = connect(url, subprotocols=["sip"], open_timeout=timeout, max_size=2**20, origin=origin)
        self.ws = self._cm.__enter__()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def parse(self, text: str) -> M | None:
        raise NotImplementedError

    def _read(self) -> None:
        try:
            while True:
                frame = self.ws.recv()
                msg = self.parse(frame if isinstance(frame, str) else frame.decode())
                if msg is not None:
                    self.messages.put(msg)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._reader.join(timeout=5)

    def drop(self) -> None:
        """Lose the connection as a network failure does: the TCP socket goes, no close frame."""
        self.ws.socket.shutdown(socket.SHUT_RDWR)
        self.ws.socket.close()
        # Not joined: the reader notices in its own time, and the test must not wait for it.

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
