"""Registration against the real gateway in embedded-registrar mode."""

import pytest

from harness.gateway import PASSWORDS
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration


def test_register_and_unregister(embedded_gateway, client_factory):
    client = client_factory(embedded_gateway)
    reply = client.register("5001", PASSWORDS["5001"])
    assert reply["type"] == "registered"
    assert reply["payload"]["dn"] == "5001"
    assert reply["payload"]["expires"] > 0
    assert reply["payload"]["protocol"] == 1
    assert reply["payload"]["server"].startswith("kamailio-wsgw/")

    reply = client.request("unregister")
    assert reply == {"type": "unregistered", "payload": {"dn": "5001"}, "id": reply["id"]}
    # Unregistered now: a second unregister is refused, and the DN can register again.
    assert client.request("unregister")["payload"]["code"] == "not_registered"
    assert client.register("5001", PASSWORDS["5001"])["type"] == "registered"


def test_wrong_password_is_refused(embedded_gateway, client_factory):
    client = client_factory(embedded_gateway)
    reply = client.register("5002", "wrong")
    assert reply["type"] == "error"
    assert reply["payload"]["code"] == "auth_failed"
    assert reply["payload"]["requestType"] == "register"
    # The same connection can still register with the right password.
    assert client.register("5002", PASSWORDS["5002"])["type"] == "registered"


def test_unknown_dn_is_refused(embedded_gateway, client_factory):
    client = client_factory(embedded_gateway)
    assert client.register("7777", "whatever")["payload"]["code"] == "auth_failed"


def test_a_second_tab_joins_the_registration(embedded_gateway, client_factory):
    first = client_factory(embedded_gateway)
    second = client_factory(embedded_gateway)
    assert first.register("5003", PASSWORDS["5003"])["type"] == "registered"
    assert second.register("5003", "wrong")["payload"]["code"] == "auth_failed"
    assert second.register("5003", PASSWORDS["5003"])["type"] == "registered"
    # One DN per connection.
    assert first.register("5004", PASSWORDS["5004"])["payload"]["code"] == "already_registered"


def test_closing_the_websocket_removes_the_registration(embedded_gateway, client_factory):
    first = WsClient(embedded_gateway.ws_url)
    assert first.register("5005", PASSWORDS["5005"])["type"] == "registered"
    first.close()
    assert embedded_gateway.wait_log("unregistered dn=5005")
    # The DN is free again for a new connection.
    second = client_factory(embedded_gateway)
    assert second.register("5005", PASSWORDS["5005"])["type"] == "registered"


def test_ping_pong(embedded_gateway, client_factory):
    client = client_factory(embedded_gateway)
    reply = client.request("ping")
    assert reply["type"] == "pong"
    assert isinstance(reply["payload"]["time"], int)


def test_http_health(embedded_gateway):
    import json
    import urllib.request

    with urllib.request.urlopen(embedded_gateway.http_url + "/health", timeout=5) as resp:
        assert json.loads(resp.read())["status"] == "up"


def test_passwords_and_frames_never_reach_the_log(embedded_gateway, client_factory):
    client = client_factory(embedded_gateway)
    assert client.register("5007", PASSWORDS["5007"])["type"] == "registered"
    client.request("ping")
    assert embedded_gateway.wait_log("registered dn=5007")
    assert PASSWORDS["5007"] not in embedded_gateway.log_text()


def test_metrics_endpoint(embedded_gateway, client_factory):
    import urllib.request

    client = client_factory(embedded_gateway)
    client.request("ping")
    client.send_raw("not json")
    client.wait_for("error")
    with urllib.request.urlopen(embedded_gateway.http_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert 'wsgw_errors_total{code="bad_json"}' in text
    assert 'wsgw_frames_in_total{type="ping"}' in text
    assert "# TYPE wsgw_registrations gauge" in text
