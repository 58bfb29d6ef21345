"""Fixtures that start the real Kamailio with the project's cfg and KEMI script."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness.gateway import SUBSCRIBERS, Gateway
from harness.ports import free_port
from harness.wsclient import WsClient



@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gw")


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
