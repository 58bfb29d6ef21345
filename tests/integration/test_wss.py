"""WSS: the same protocol on the TLS listener (GW_WSS_PORT, self-signed pair made by run-gateway.sh)."""

import json
import ssl

import pytest
from websockets.sync.client import connect

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_gateway(workdir):
    wss_port = free_port()
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS),
                               "GW_WSS_PORT": str(wss_port)}).start()
    gw.wss_port = wss_port
    yield gw
    gw.stop()


def test_register_and_ping_over_wss(tls_gateway):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed pair of run-gateway.sh
    with connect(f"wss://127.0.0.1:{tls_gateway.wss_port}/", subprotocols=["sip"], ssl=context,
                 open_timeout=10) as ws:
        ws.send(json.dumps({"type": "register", "id": "1", "payload": {"dn": "5001", "password": PASSWORDS["5001"]}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "registered"
        ws.send(json.dumps({"type": "ping", "id": "2"}))
        assert json.loads(ws.recv(timeout=10)) ["type"] == "pong"
        ws.send("not json")
        assert json.loads(ws.recv(timeout=10))["payload"]["code"] == "bad_json"
    assert tls_gateway.wait_log("websocket closed conn=wss|127.0.0.1|")


def test_plain_tcp_to_the_tls_port_gets_no_websocket(tls_gateway):
    from websockets.exceptions import InvalidMessage

    with pytest.raises((InvalidMessage, OSError, TimeoutError)):
        with connect(f"ws://127.0.0.1:{tls_gateway.wss_port}/", subprotocols=["sip"], open_timeout=3):
            pass
