"""The one interface to state shared by all Kamailio worker processes.

Kamailio forks several workers, each with its own Python interpreter, so
nothing another worker may need can live in Python globals. In Kamailio the
store is htable shared memory (`ksr_adapter.HtableStore`); unit tests use
`MemoryStore`. Values are strings (JSON for records).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

from .protocol import decode, encode

# Table names; each is declared with modparam("htable", ...) in kamailio/kamailio.cfg.
CONN = "conn"  # ConnRef key -> {"dn": ..., "since": ..., "owner": session owner key if attached elsewhere}
REG = "reg"  # DN -> Registration JSON
REG_BY_CALL_ID = "regcid"  # SIP Call-ID of our REGISTER -> DN
CALLS = "calls"
CALLS_BY_SIP_ID = "callsip"
COUNTERS = "gw"  # small housekeeping values (limits, start time, histogram sum)
COUNTS = "gwn"  # integer counters only (metrics): the one table `incr` is for
SESSIONS = "sess"  # session owner key -> Session JSON; "t|<resume token>" -> owner key (sessions.py)
SESSIONS_DETACHED = "sessdet"  # owner keys of the detached sessions, for the timer (resume.tick)
SESSION_EVENTS = "sessev"  # "<owner>|<seq>" -> a message kept for replay


class Store(Protocol):
    def get(self, table: str, key: str) -> str | None: ...

    def put(self, table: str, key: str, value: str) -> None: ...

    def delete(self, table: str, key: str) -> None: ...

    def incr(self, table: str, key: str) -> int:
        """Atomically add one and return the new value (missing keys start at 0).
        Only for COUNTS, whose values are integers."""
        ...

    def decr(self, table: str, key: str) -> int:
        """Atomically subtract one and return the new value. Only for COUNTS."""
        ...

    def lock(self, table: str, key: str) -> Any:
        """A context manager serialising read-modify-write of `key` across workers."""
        ...

    def keys(self, table: str) -> list[str]: ...


def get_json(store: Store, table: str, key: str) -> dict | None:
    raw = store.get(table, key)
    return decode(raw) if raw else None


def put_json(store: Store, table: str, key: str, value: dict) -> None:
    store.put(table, key, encode(value))


class MemoryStore:
    """In-process Store for unit tests (one interpreter, so a plain dict)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, str]] = {}
        self._lock = threading.RLock()

    def get(self, table: str, key: str) -> str | None:
        return self.tables.get(table, {}).get(key)

    def put(self, table: str, key: str, value: str) -> None:
        self.tables.setdefault(table, {})[key] = value

    def delete(self, table: str, key: str) -> None:
        self.tables.get(table, {}).pop(key, None)

    def incr(self, table: str, key: str) -> int:
        value = int(self.tables.get(table, {}).get(key, "0")) + 1
        self.put(table, key, str(value))
        return value

    def decr(self, table: str, key: str) -> int:
        value = int(self.tables.get(table, {}).get(key, "0")) - 1
        self.put(table, key, str(value))
        return value

    @contextmanager
    def lock(self, table: str, key: str) -> Iterator[None]:
        with self._lock:
            yield

    def keys(self, table: str) -> list[str]:
        return list(self.tables.get(table, {}))
