"""Fixtures that start the real Kamailio with the project's cfg and KEMI script."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.ports import free_port
from harness.sipp import Sipp
from harness.sipws import SipWsClient
from harness.wsclient import WsClient



@pytest.fixture(scope="module")
def embedded_gateway(workdir: Path) -> Iterator[Gateway]:
    """One embedded-registrar gateway shared by a test module."""
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS)}).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def registrar_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def upstream_gateway(workdir: Path, registrar_port: int) -> Iterator[Gateway]:
    """A gateway in upstream mode pointing at a SIPp registrar each test starts on `registrar_port`."""
    gw = Gateway(
        workdir,
        env={"GW_UPSTREAM": f"sip:127.0.0.1:{registrar_port}", "GW_SIP_TIMEOUT": "3", "GW_REGISTER_EXPIRES": "600"},
    ).start()
    yield gw
    gw.stop()


@pytest.fixture
def client_factory() -> Iterator[Callable[[Gateway], WsClient]]:
    """Open WebSocket clients that are all closed at the end of the test."""
    clients: list[WsClient] = []

    def make(gw: Gateway) -> WsClient:
        client = WsClient(gw.ws_url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def legacy_factory() -> Iterator[Callable[..., SipWsClient]]:
    """legacy(gw, dn) -> a legacy (JsSIP-like) SIP-over-WebSocket client for `dn`, registered unless
    register=False; all closed at the end of the test."""
    clients: list[SipWsClient] = []

    def make(gateway: Gateway, dn: str, register: bool = True) -> SipWsClient:
        client = SipWsClient(gateway.ws_url, dn, PASSWORDS.get(dn, "nope"))
        clients.append(client)
        if register:
            reply = client.register()
            assert reply.status == 200, reply
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def upstream_agents(upstream_gateway, registrar_port, client_factory, tmp_path):
    """make(n) -> n clients registered upstream with fresh DNs.

    GW_UPSTREAM is both the registrar and the PBX, played in turn by SIPp on
    `registrar_port`: a SIPp registrar runs only while the clients register and,
    at the end of the test, while they unregister, so that no REGISTER reaches the
    call scenario of a test."""
    registered: list[WsClient] = []

    def registrar(n: int, name: str) -> Sipp:
        return Sipp("registrar_challenge.xml", tmp_path / name, local_port=registrar_port, calls=n, timeout=30,
                    keys={"expires": "600", "auth_user": "", "auth_pass": ""})

    def make(n: int = 1) -> list[WsClient]:
        clients = [client_factory(upstream_gateway) for _ in range(n)]
        with registrar(n, "reg"):
            for client in clients:
                reply = client.register(next(_upstream_dns), "pw")
                assert reply["type"] == "registered", reply
        registered.extend(clients)
        return clients

    yield make
    if registered:
        with registrar(len(registered), "unreg") as sipp:
            for client in registered:
                assert client.request("unregister")["type"] == "unregistered"
            assert sipp.wait(15) == 0, sipp.describe()


_upstream_dns = (f"7{n:03d}" for n in itertools.count(1))
