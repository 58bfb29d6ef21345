"""Every malformed frame gets an `error` with the right code, and the connection goes on."""

import json

import pytest

from harness.gateway import PASSWORDS

pytestmark = pytest.mark.integration

MAX_FRAME_BYTES = 32768  # docs/CUSTOM_SIGNALING_PROTOCOL.md; Kamailio's read buffer is 64 KB

BAD_FRAMES = [
    ("not json", "hello there", "bad_json", None),
    ("truncated json", '{"type": "ping", "id": "t1"', "bad_json", None),
    ("json array", '[{"type": "ping"}]', "bad_json", None),
    ("json string", '"ping"', "bad_json", None),
    ("json number", "42", "bad_json", None),
    ("missing type", '{"id": "t2", "payload": {}}', "invalid_payload", "t2"),
    ("type not a string", '{"type": 7, "id": "t3"}', "invalid_payload", "t3"),
    ("unknown type", '{"type": "teleport", "id": "t4"}', "unknown_type", "t4"),
    ("payload not an object", '{"type": "register", "id": "t5", "payload": "5001"}', "invalid_payload", "t5"),
    ("missing dn", '{"type": "register", "id": "t6", "payload": {"password": "x"}}', "invalid_payload", "t6"),
    ("dn not a string", '{"type": "register", "id": "t7", "payload": {"dn": 5001, "password": "x"}}', "invalid_payload", "t7"),
    ("password not a string", '{"type": "register", "id": "t8", "payload": {"dn": "5001", "password": 1}}', "invalid_payload", "t8"),
    ("unknown payload field", '{"type": "ping", "id": "t9", "payload": {"x": 1}}', "invalid_payload", "t9"),
    ("unknown top-level field", '{"type": "ping", "id": "t10", "extra": 1}', "invalid_payload", "t10"),
    ("id not a string", '{"type": "ping", "id": 12}', "invalid_payload", None),
    ("id too long", json.dumps({"type": "ping", "id": "x" * 65}), "invalid_payload", None),
    ("CRLF in dn", json.dumps({"type": "register", "id": "t11", "payload": {"dn": "5001\r\nVia: evil", "password": "x"}}), "invalid_payload", "t11"),
    ("LF in display name", json.dumps({"type": "register", "id": "t12", "payload": {"dn": "5001", "password": "x", "displayName": "Eve\nContact: <sip:evil>"}}), "invalid_payload", "t12"),
    ("quote in display name", json.dumps({"type": "register", "id": "t13", "payload": {"dn": "5001", "password": "x", "displayName": 'Eve" <sip:evil@x>'}}), "invalid_payload", "t13"),
    ("angle bracket in dn", json.dumps({"type": "register", "id": "t14", "payload": {"dn": "<sip:x>", "password": "x"}}), "invalid_payload", "t14"),
    ("over-long dn", json.dumps({"type": "register", "id": "t15", "payload": {"dn": "5" * 33, "password": "x"}}), "invalid_payload", "t15"),
    ("over-long display name", json.dumps({"type": "register", "id": "t16", "payload": {"dn": "5001", "password": "x", "displayName": "A" * 65}}), "invalid_payload", "t16"),
    ("control char in password", json.dumps({"type": "register", "id": "t17", "payload": {"dn": "5001", "password": "a\x00b"}}), "invalid_payload", "t17"),
    (
        "frame over the protocol maximum",
        json.dumps({"type": "ping", "id": "t18", "payload": {"pad": "x" * (MAX_FRAME_BYTES + 100)}}),
        "frame_too_large",
        None,
    ),
]


@pytest.fixture(scope="module")
def client(embedded_gateway):
    from harness.wsclient import WsClient

    c = WsClient(embedded_gateway.ws_url)
    yield c
    c.close()


@pytest.mark.parametrize("name,frame,code,request_id", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frame_gets_error_and_connection_survives(client, name, frame, code, request_id):
    client.send_raw(frame)
    reply = client.wait_for("error")
    assert reply["payload"]["code"] == code, reply
    assert reply["payload"]["reason"]
    assert reply.get("id") == request_id
    # The same connection keeps working.
    assert client.request("ping")["type"] == "pong"


def test_connection_still_registers_after_all_bad_frames(client):
    for _, frame, _, _ in BAD_FRAMES:
        client.send_raw(frame)
    for _ in BAD_FRAMES:
        client.wait_for("error")
    assert client.register("5006", PASSWORDS["5006"])["type"] == "registered"
    assert client.request("unregister")["type"] == "unregistered"
    assert not client.closed.is_set()
