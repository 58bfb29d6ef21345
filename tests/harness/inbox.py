"""What a test client's reader thread has received, and waiting for the message a test wants."""

from __future__ import annotations

import queue
import time
from typing import Callable, Generic, TypeVar

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
