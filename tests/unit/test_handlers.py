"""wsgw.handlers: dispatch of client frames and turning failures into `error` replies."""

from __future__ import annotations

import json
import logging

import pytest

from fakes import RESUME_TOKEN, START_TIME, parse_headers
from wsgw import PROTOCOL_VERSION, SERVER_NAME, VERSION, errors, handlers, protocol
from wsgw.errors import GatewayError
from wsgw.protocol import MAX_FRAME_BYTES
from wsgw.registrations import connection_of_dn


def send(ctx, conn, obj) -> list[dict]:
    """Dispatch one frame and return the messages it produced (to any connection)."""
    before = len(ctx.outbox.sent)
    handlers.dispatch(ctx, conn, obj if isinstance(obj, (str, bytes)) else json.dumps(obj))
    return [m for _, m in ctx.outbox.sent[before:]]


# ---- ping ----


def test_ping_pong_with_id(ctx, conn, clock):
    clock.now = 1767225600.1239
    assert send(ctx, conn, {"type": "ping", "id": "p1"}) == [{"type": "pong", "payload": {"time": 1767225600123}, "id": "p1"}]
    assert ctx.outbox.sent[0][0] == conn


def test_ping_without_id_has_no_id(ctx, conn):
    assert send(ctx, conn, '{"type":"ping","payload":{}}') == [{"type": "pong", "payload": {"time": int(START_TIME * 1000)}}]


def test_ping_works_unregistered_and_registered(ctx, conn):
    send(ctx, conn, {"type": "register", "id": "r", "payload": {"dn": "5001", "password": "secret5001"}})
    assert send(ctx, conn, {"type": "ping", "id": "p"})[0]["type"] == "pong"


# ---- protocol errors ----


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nope", {"type": "error", "payload": {"code": "bad_json", "reason": "frame is not valid JSON"}}),
        ("[1]", {"type": "error", "payload": {"code": "bad_json", "reason": "frame must be a JSON object"}}),
        (
            '{"type":"dial","id":"p2"}',
            {"type": "error", "payload": {"code": "unknown_type", "reason": "unknown message type: 'dial'"}, "id": "p2"},
        ),
        (
            '{"type":"ping","id":"p1","extra":true}',
            {"type": "error", "payload": {"code": "invalid_payload", "reason": "unknown top-level field(s): extra",
                                          "requestType": "ping"}, "id": "p1"},
        ),
        (
            '{"type":"pong","id":"p4"}',
            {"type": "error", "payload": {"code": "unknown_type", "reason": "unknown message type: 'pong'"}, "id": "p4"},
        ),
    ],
)
def test_protocol_errors_become_error_messages(ctx, conn, text, expected):
    assert send(ctx, conn, text) == [expected]
    assert ctx.outbox.sent[0][0] == conn


def test_missing_type_echoes_id_without_request_type(ctx, conn):
    [msg] = send(ctx, conn, {"id": "m1"})
    assert msg["type"] == "error" and msg["id"] == "m1"
    assert msg["payload"]["code"] == errors.INVALID_PAYLOAD
    assert "requestType" not in msg["payload"]


def test_bad_id_error_has_no_id(ctx, conn):
    [msg] = send(ctx, conn, {"type": "ping", "id": "has space"})
    assert msg["payload"]["code"] == errors.INVALID_PAYLOAD
    assert "id" not in msg and "requestType" not in msg["payload"]


def test_invalid_register_payload_has_id_and_request_type(ctx, conn):
    [msg] = send(ctx, conn, {"type": "register", "id": "r7", "payload": {"dn": 5001, "password": "x"}})
    assert msg == {
        "type": "error",
        "payload": {
            "code": "invalid_payload",
            "reason": "dn must be 1-32 characters of digits, letters, '.', '_', '-' (optional leading '+')",
            "requestType": "register",
        },
        "id": "r7",
    }
    assert ctx.store.keys("conn") == []


def test_frame_too_large_has_no_id(ctx, conn):
    text = '{"type":"ping","id":"big"' + " " * MAX_FRAME_BYTES + "}"
    [msg] = send(ctx, conn, text)
    assert msg["payload"]["code"] == errors.FRAME_TOO_LARGE
    assert "id" not in msg


def test_protocol_error_does_not_call_handler(ctx, conn, monkeypatch):
    called = []
    monkeypatch.setitem(handlers.HANDLERS, "ping", lambda *a: called.append(a))
    send(ctx, conn, {"type": "ping", "payload": {"x": 1}})
    assert called == []


# ---- gateway errors from handlers ----


def test_gateway_error_from_handler_becomes_error_with_id(ctx, conn):
    msgs = send(ctx, conn, {"type": "register", "id": "r1", "payload": {"dn": "5001", "password": "wrong"}})
    assert msgs == [{"type": "error", "payload": {"code": "auth_failed", "reason": "wrong DN or password",
                                                  "requestType": "register"}, "id": "r1"}]


def test_unregister_not_registered(ctx, conn):
    assert send(ctx, conn, {"type": "unregister", "id": "u1"}) == [
        {"type": "error", "payload": {"code": "not_registered", "reason": "register first",
                                      "requestType": "unregister"}, "id": "u1"}
    ]


def test_gateway_error_without_id(ctx, conn):
    [msg] = send(ctx, conn, {"type": "unregister"})
    assert msg["payload"]["code"] == errors.NOT_REGISTERED
    assert "id" not in msg


def test_custom_gateway_error_code_is_passed_through(ctx, conn, monkeypatch):
    def handler(c, cn, frame):
        raise GatewayError(errors.INVALID_STATE, "not now")

    monkeypatch.setitem(handlers.HANDLERS, "ping", handler)
    assert send(ctx, conn, {"type": "ping", "id": "x"}) == [
        {"type": "error", "payload": {"code": "invalid_state", "reason": "not now", "requestType": "ping"}, "id": "x"}
    ]


# ---- unexpected exceptions ----


def test_exception_in_handler_becomes_internal_and_connection_keeps_working(ctx, conn, monkeypatch, caplog):
    real_ping = handlers.HANDLERS["ping"]
    calls = []

    def flaky(c, cn, frame):
        calls.append(frame.id)
        if len(calls) == 1:
            raise KeyError("boom")
        real_ping(c, cn, frame)

    monkeypatch.setitem(handlers.HANDLERS, "ping", flaky)
    with caplog.at_level(logging.ERROR, logger="wsgw.test"):
        first = send(ctx, conn, {"type": "ping", "id": "p1"})
    assert first == [{"type": "error", "payload": {"code": "internal", "reason": "internal error", "requestType": "ping"},
                      "id": "p1"}]
    assert "boom" not in json.dumps(first)  # no internals leak to the client
    assert any("handler ping failed" in r.getMessage() and r.exc_info for r in caplog.records)
    # the next frames on the same connection are served normally
    assert send(ctx, conn, {"type": "ping", "id": "p2"}) == [{"type": "pong", "payload": {"time": int(START_TIME * 1000)},
                                                            "id": "p2"}]
    assert send(ctx, conn, {"type": "register", "id": "r1", "payload": {"dn": "5001", "password": "secret5001"}})[0][
        "type"] == "registered"


def test_exception_from_subscribers_is_internal(make_ctx, conn):
    ctx = make_ctx(embedded=True)

    class BrokenSubscribers:
        def check(self, dn, password):
            raise OSError("disk gone")

    ctx.subscribers = BrokenSubscribers()
    [msg] = send(ctx, conn, {"type": "register", "id": "r1", "payload": {"dn": "5001", "password": "secret5001"}})
    assert (msg["payload"]["code"], msg["id"], msg["payload"]["requestType"]) == ("internal", "r1", "register")
    assert send(ctx, conn, {"type": "ping", "id": "p"})[0]["type"] == "pong"


# ---- full flows through dispatch ----


def test_embedded_register_unregister_flow(ctx, conn, conn2):
    assert send(ctx, conn, {"type": "register", "id": "r1",
                            "payload": {"dn": "5001", "password": "secret5001", "displayName": "Agent 5001"}}) == [
        {"type": "registered", "payload": {"dn": "5001", "expires": 600, "server": SERVER_NAME, "version": VERSION,
                                           "protocol": PROTOCOL_VERSION, "resumeToken": RESUME_TOKEN}, "id": "r1"}
    ]
    assert connection_of_dn(ctx, "5001") == conn
    # A second tab of the same agent joins the registration.
    [joined] = send(ctx, conn2, {"type": "register", "id": "r2", "payload": {"dn": "5001", "password": "secret5001"}})
    assert joined["type"] == "registered" and joined["id"] == "r2"
    [unreg] = send(ctx, conn, {"type": "unregister", "id": "r3"})
    assert unreg["payload"] == {"dn": "5001"}
    assert connection_of_dn(ctx, "5001") == conn2


def test_upstream_register_through_dispatch_sends_sip_and_no_reply_yet(make_ctx, conn):
    ctx = make_ctx(embedded=False)
    assert send(ctx, conn, {"type": "register", "id": "r1", "payload": {"dn": "5001", "password": "pw"}}) == []
    assert len(ctx.sip.requests) == 1
    assert parse_headers(ctx.sip.last.headers)["CSeq"] == "1 REGISTER"


# ---- tables ----


def test_every_request_type_has_a_handler():
    assert set(handlers.HANDLERS) == set(protocol.REQUEST_TYPES)
    assert {"register", "unregister", "ping"} <= set(handlers.HANDLERS)


def test_new_request_type_is_dispatched_to_its_handler(ctx, conn, monkeypatch):
    monkeypatch.setitem(protocol.REQUEST_TYPES, "echo", protocol.parse_empty)
    monkeypatch.setitem(handlers.HANDLERS, "echo", lambda c, cn, f: c.send(cn, protocol.message("echoed", {}, f.id)))
    # Authentication before anything: an unregistered connection is refused ...
    assert send(ctx, conn, {"type": "echo", "id": "e0"})[0]["payload"]["code"] == errors.NOT_REGISTERED
    # ... a registered one reaches the handler.
    assert send(ctx, conn, {"type": "register", "id": "r", "payload": {"dn": "5001", "password": "secret5001"}})[0][
        "type"] == "registered"
    assert send(ctx, conn, {"type": "echo", "id": "e"}) == [{"type": "echoed", "payload": {}, "id": "e"}]


# ---- lone surrogates (regression) ----


def test_lone_surrogate_password_is_invalid_payload_not_internal(ctx, conn):
    text = '{"type":"register","id":"r1","payload":{"dn":"5001","password":"secret\\ud800"}}'
    [msg] = send(ctx, conn, text)
    assert (msg["payload"]["code"], msg["id"]) == (errors.INVALID_PAYLOAD, "r1")
