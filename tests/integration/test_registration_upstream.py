"""Upstream mode: the gateway sends real SIP REGISTERs to a SIPp registrar."""

import re
import time

import pytest

from harness.sipp import Sipp
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-5001"


def registrar(workdir, port, scenario="registrar_challenge.xml", expires=60, timeout=30, password=PASSWORD):
    keys = {"expires": str(expires), "auth_user": "5001", "auth_pass": password}
    return Sipp(scenario, workdir, local_port=port, keys=keys, timeout=timeout)


def registers(messages: str) -> list[str]:
    """The REGISTER requests SIPp received, in order."""
    return [m for m in re.split(r"\n(?=-{5,}|\S*REGISTER sip:)", messages) if "REGISTER sip:" in m]


def test_register_answers_challenge_and_unregister_sends_expires_0(upstream_gateway, registrar_port, tmp_path, client_factory):
    with registrar(tmp_path, registrar_port) as sipp:
        client = client_factory(upstream_gateway)
        reply = client.register("5001", PASSWORD)
        assert reply["type"] == "registered", reply
        assert reply["payload"]["expires"] == 60  # what the registrar granted
        assert client.request("unregister")["type"] == "unregistered"
        assert sipp.wait(15) == 0, sipp.describe()
    log = sipp.messages()
    assert log.count("WWW-Authenticate: Digest") >= 1
    assert re.search(r"Authorization: Digest username=\"5001\"", log)
    assert re.search(r"^Expires: 0", log, re.MULTILINE)


def test_wrong_password_is_refused(upstream_gateway, registrar_port, tmp_path, client_factory):
    with registrar(tmp_path, registrar_port) as sipp:
        client = client_factory(upstream_gateway)
        reply = client.register("5001", "not-the-password")
        assert reply["type"] == "error"
        assert reply["payload"]["code"] == "auth_failed"
        sipp.wait(10)  # the scenario marks the wrong digest as a failed call
    assert "403 Forbidden" in sipp.messages()
    # The connection stays usable and unregistered.
    assert client.request("unregister")["payload"]["code"] == "not_registered"


def test_registrar_refusing_gives_auth_failed(upstream_gateway, registrar_port, tmp_path, client_factory):
    with Sipp("registrar_refuse.xml", tmp_path, local_port=registrar_port, timeout=20) as sipp:
        client = client_factory(upstream_gateway)
        reply = client.register("5001", PASSWORD)
        assert reply["payload"]["code"] == "auth_failed"
        assert "403" in reply["payload"]["reason"]
        assert sipp.wait(10) == 0, sipp.describe()


def test_registration_is_refreshed_before_expiry(upstream_gateway, registrar_port, tmp_path, client_factory):
    with registrar(tmp_path, registrar_port, expires=2) as sipp:
        client = client_factory(upstream_gateway)
        assert client.register("5001", PASSWORD)["payload"]["expires"] == 2
        # Refresh is due half-way (1 s); wait for two refreshes to reach the registrar.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(registers(sipp.messages())) < 4:
            time.sleep(0.2)
        assert client.request("unregister")["type"] == "unregistered"
        assert sipp.wait(15) == 0, sipp.describe()
    sent = registers(sipp.messages())
    # initial (challenged), with credentials, >= 2 refreshes, unregister
    assert len(sent) >= 5, sipp.messages()[-3000:]
    call_ids = {re.search(r"^Call-ID: (\S+)", m, re.MULTILINE | re.IGNORECASE).group(1) for m in sent}
    assert len(call_ids) == 1, "refreshes reuse the registration's Call-ID"


def test_websocket_close_unregisters_upstream(upstream_gateway, registrar_port, tmp_path):
    with registrar(tmp_path, registrar_port) as sipp:
        client = WsClient(upstream_gateway.ws_url)
        reply = client.register("5001", PASSWORD)
        assert reply["type"] == "registered", reply
        client.close()
        assert sipp.wait(15) == 0, sipp.describe()
    assert re.search(r"^Expires: 0", sipp.messages(), re.MULTILINE)


def test_unreachable_registrar(upstream_gateway, client_factory):
    # Nothing listens on the registrar port: the REGISTER times out (GW_SIP_TIMEOUT=3).
    client = client_factory(upstream_gateway)
    started = time.monotonic()
    reply = client.request("register", {"dn": "5001", "password": PASSWORD}, timeout=15)
    assert reply["payload"]["code"] == "upstream_unreachable", reply
    assert time.monotonic() - started < 10


def test_lost_upstream_registration_is_reported_and_recovered(upstream_gateway, registrar_port, tmp_path):
    client = WsClient(upstream_gateway.ws_url)
    try:
        with registrar(tmp_path / "a", registrar_port, expires=2):
            assert client.register("5001", PASSWORD)["payload"]["expires"] == 2
        # The registrar is gone: the refresh (due after 1 s) times out (GW_SIP_TIMEOUT=3).
        lost = client.wait_for("registrationLost", timeout=10)
        assert lost["payload"]["dn"] == "5001" and lost["payload"]["retryIn"] >= 5
        # It comes back: the retry succeeds and the client is told it is registered again.
        with registrar(tmp_path / "b", registrar_port, expires=60) as sipp:
            again = client.wait_for("registered", timeout=15)
            assert "id" not in again and again["payload"]["dn"] == "5001"
            assert client.request("unregister")["type"] == "unregistered"
            assert sipp.wait(15) == 0, sipp.describe()
    finally:
        client.close()
