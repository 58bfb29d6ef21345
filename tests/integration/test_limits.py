"""Abuse limits against the real gateway: origins, connections per IP, message rate,
register brute force, calls per connection."""

import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.sdp import CHROME_OFFER
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration

GOOD_ORIGIN = "http://agents.example"


@pytest.fixture(scope="module")
def strict_gateway(workdir):
    gw = Gateway(workdir, env={
        "GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_ALLOWED_ORIGINS": GOOD_ORIGIN,
        "GW_MAX_MSG_RATE": "5", "GW_MSG_BURST": "5", "GW_MAX_CONNS_PER_IP": "20",
        "GW_AUTH_FAIL_LIMIT": "3", "GW_AUTH_LOCKOUT": "60", "GW_MAX_CALLS_PER_CONN": "2",
    }).start()
    yield gw
    gw.stop()


def client(gw, origin=GOOD_ORIGIN) -> WsClient:
    return WsClient(gw.ws_url, origin=origin)


def test_other_origins_are_refused_at_the_handshake(strict_gateway):
    for origin in ("http://evil.example", None):
        with pytest.raises(InvalidStatus) as exc:
            with connect(strict_gateway.ws_url, subprotocols=["sip"], origin=origin, open_timeout=5):
                pass
        assert exc.value.response.status_code == 403
    with client(strict_gateway) as ok:
        assert ok.request("ping")["type"] == "pong"


def test_connections_per_ip_are_limited(workdir):
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS),
                               "GW_MAX_CONNS_PER_IP": "4"}).start()
    try:
        _connections_per_ip(gw)
    finally:
        gw.stop()


def _connections_per_ip(strict_gateway):
    opened = []
    try:
        for _ in range(4):
            opened.append(client(strict_gateway, origin=None))
        with pytest.raises(InvalidStatus) as exc:
            client(strict_gateway, origin=None)
        assert exc.value.response.status_code == 429
    finally:
        for c in opened:
            c.close()
    # Closed connections are given back (the close event is asynchronous).
    deadline = time.monotonic() + 20
    while True:
        try:
            with client(strict_gateway, origin=None) as again:
                assert again.request("ping")["type"] == "pong"
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "connections were not released"
            time.sleep(0.5)


def test_message_rate_is_limited_and_every_frame_is_answered(strict_gateway):
    with client(strict_gateway) as c:
        ids = [c.send("ping") for _ in range(15)]
        replies = [c.wait(lambda m, r=r: m.get("id") == r) for r in ids]
        kinds = [r["type"] if r["type"] == "pong" else r["payload"]["code"] for r in replies]
        assert kinds.count("pong") >= 5 and "rate_limited" in kinds
        assert set(kinds) <= {"pong", "rate_limited"}
        time.sleep(1.2)  # the bucket refills at 5 frames/s
        assert c.request("ping")["type"] == "pong"


def test_calls_per_connection_are_limited(strict_gateway):
    with client(strict_gateway) as alice, client(strict_gateway) as bob:
        assert alice.register("5001", PASSWORDS["5001"])["type"] == "registered"
        assert bob.register("5002", PASSWORDS["5002"])["type"] == "registered"
        for call_id in ("a", "b"):
            alice.send("call", {"to": "5002", "callId": call_id, "sdp": CHROME_OFFER})
            bob.wait_for("incomingCall")
            time.sleep(0.25)
        reply = alice.request("call", {"to": "5002", "callId": "c", "sdp": CHROME_OFFER})
        assert reply["payload"]["code"] == "rate_limited"
        for call_id in ("a", "b"):
            time.sleep(0.25)
            alice.request("hangup", {"callId": call_id})


# Last: it locks out registrations from 127.0.0.1 (the IP counter) for GW_AUTH_LOCKOUT.
def test_register_brute_force_is_locked_out(strict_gateway):
    with client(strict_gateway) as c:
        for _ in range(3):
            assert c.register("5009", "guess")["payload"]["code"] == "auth_failed"
            time.sleep(0.25)
        # Locked: even the right password is refused for a while, with a clear error.
        reply = c.register("5009", PASSWORDS["5009"])
        assert reply["payload"]["code"] == "rate_limited"
        assert "retry in" in reply["payload"]["reason"]
