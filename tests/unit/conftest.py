"""Unit tests of the pure-Python core (kemi/wsgw), run without Kamailio."""

from __future__ import annotations

import os
import sys

import pytest

_KEMI = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "kemi"))
if _KEMI not in sys.path:
    sys.path.insert(0, _KEMI)
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from fakes import FakeClock, FakeOutbox, FakeSipPort, build_ctx  # noqa: E402
from wsgw.connections import ConnRef  # noqa: E402


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox() -> FakeOutbox:
    return FakeOutbox()


@pytest.fixture
def sip_port() -> FakeSipPort:
    return FakeSipPort()


@pytest.fixture
def make_ctx(clock, outbox, sip_port):
    """Factory: make_ctx(embedded=True/False, subscribers_text=..., **GatewayConfig fields).

    The context uses a fresh MemoryStore and, unless given others, this test's
    `clock`, `outbox` and `sip_port` fixtures (also reachable as ctx.clock,
    ctx.outbox and ctx.sip). Upstream mode uses sip:127.0.0.1:5070.
    """

    def factory(embedded: bool = True, **kwargs):
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("outbox", outbox)
        kwargs.setdefault("sip", sip_port)
        return build_ctx(embedded=embedded, **kwargs)

    return factory


@pytest.fixture
def conn() -> ConnRef:
    return ConnRef(5, "192.0.2.10", 40001)


@pytest.fixture
def conn2() -> ConnRef:
    return ConnRef(6, "2001:db8::7", 40002)


@pytest.fixture
def ctx(make_ctx):
    """An embedded-mode context (test modules override it where they need another)."""
    return make_ctx(embedded=True)


@pytest.fixture
def caller(ctx, conn):
    """conn registered as 5001 ("Alice") in embedded mode."""
    from fakes import register

    register(ctx, conn, "5001", "Alice")
    return conn
