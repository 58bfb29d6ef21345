"""wsgw.protocol: client frame parsing/validation and server message building."""

from __future__ import annotations

import json

import pytest

from wsgw import errors, protocol
from wsgw.errors import GatewayError
from wsgw.protocol import (
    MAX_FRAME_BYTES,
    MAX_ID_LEN,
    EmptyPayload,
    Frame,
    ProtocolError,
    RegisterPayload,
    parse_frame,
)


def frame(**obj) -> str:
    return json.dumps(obj)


def refused(text, code: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_frame(text)
    assert info.value.code == code, info.value.reason
    return info.value


# ---- valid frames ----


def test_register_frame_is_parsed_into_typed_payload():
    f = parse_frame(frame(type="register", id="r1", payload={"dn": "5001", "password": "pw", "displayName": "Alice"}))
    assert f == Frame(type="register", payload=RegisterPayload(dn="5001", password="pw", display_name="Alice"), id="r1")


def test_register_display_name_defaults_to_empty():
    f = parse_frame(frame(type="register", payload={"dn": "+4915112345678", "password": "pw"}))
    assert f.payload == RegisterPayload(dn="+4915112345678", password="pw", display_name="")
    assert f.id is None


def test_unregister_frame():
    assert parse_frame(frame(type="unregister", id="u-1", payload={})) == Frame("unregister", EmptyPayload(), "u-1")


def test_ping_without_payload_and_id():
    assert parse_frame('{"type":"ping"}') == Frame("ping", EmptyPayload(), None)


def test_null_id_is_refused():
    # docs/CUSTOM_SIGNALING_PROTOCOL.md section 5: null is refused like any non-string.
    err = refused('{"type":"ping","id":null}', errors.INVALID_PAYLOAD)
    assert err.request_id is None


def test_bytes_frame_is_accepted():
    assert parse_frame(b'{"type":"ping","id":"b1"}') == Frame("ping", EmptyPayload(), "b1")


def test_id_of_max_length_with_printable_punctuation():
    rid = ("!~#{}" * 20)[:MAX_ID_LEN]
    assert parse_frame(frame(type="ping", id=rid)).id == rid


def test_unicode_display_name_survives_parsing():
    f = parse_frame(frame(type="register", payload={"dn": "5001", "password": "pw", "displayName": "Jürgen Müller 山田"}))
    assert f.payload.display_name == "Jürgen Müller 山田"


# ---- bad_json ----


@pytest.mark.parametrize("text", ["", "not json", "{", '{"type": "ping"', "{'type': 'ping'}", '{"type":"ping"} trailing'])
def test_not_json_is_bad_json(text):
    err = refused(text, errors.BAD_JSON)
    assert err.request_id is None


@pytest.mark.parametrize("text", ['[{"type":"ping"}]', "42", '"ping"', "null", "true"])
def test_json_that_is_not_an_object_is_bad_json(text):
    err = refused(text, errors.BAD_JSON)
    assert err.reason == "frame must be a JSON object"


def test_deeply_nested_json_is_refused_not_crashing():
    refused("[" * 20000, errors.BAD_JSON)


def test_invalid_utf8_bytes_are_bad_json():
    refused(b'{"type":"ping","id":"\xff\xfe"}', errors.BAD_JSON)


# ---- type ----


def test_missing_type_is_invalid_payload_and_echoes_id():
    err = refused(frame(id="r7", payload={}), errors.INVALID_PAYLOAD)
    assert err.request_id == "r7"
    assert "type" in err.reason


@pytest.mark.parametrize("value", [1, None, True, ["ping"], {"t": "ping"}, ""])
def test_non_string_or_empty_type_is_invalid_payload(value):
    err = refused(frame(type=value, id="r8"), errors.INVALID_PAYLOAD)
    assert err.request_id == "r8"


@pytest.mark.parametrize("value", ["dial", "Ping", "PING", "ping ", "pi-ng", "x" * 33, "héllo", "__class__"])
def test_unknown_type_echoes_id(value):
    err = refused(frame(type=value, id="r9"), errors.UNKNOWN_TYPE)
    assert err.request_id == "r9"
    assert err.msg_type is None


def test_unknown_type_reason_is_truncated():
    err = refused(frame(type="a" * 1000), errors.UNKNOWN_TYPE)
    assert len(err.reason) < 80


# ---- payload ----


@pytest.mark.parametrize("payload", [[], "x", 1, None, True])
def test_payload_not_an_object(payload):
    err = refused(frame(type="ping", id="p1", payload=payload), errors.INVALID_PAYLOAD)
    assert (err.request_id, err.msg_type) == ("p1", "ping")
    assert err.reason == "payload must be a JSON object"


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"password": "pw"}, "missing field: dn"),
        ({"dn": "5001"}, "missing field: password"),
        ({}, "missing field"),
        ({"dn": 5001, "password": "pw"}, "dn must be"),
        ({"dn": "", "password": "pw"}, "dn must be"),
        ({"dn": "50 01", "password": "pw"}, "dn must be"),
        ({"dn": "5001", "password": 1234}, "password must be"),
        ({"dn": "5001", "password": ""}, "password must be"),
        ({"dn": "5001", "password": None}, "password must be"),
        ({"dn": "5001", "password": "pw", "displayName": 7}, "displayName must be"),
        ({"dn": "5001", "password": "pw", "displayName": 'Eve" <sip:x>'}, "displayName must be"),
        ({"dn": "5001", "password": "pw", "displayName": "A\r\nVia: x"}, "displayName must be"),
    ],
)
def test_register_payload_errors(payload, fragment):
    err = refused(frame(type="register", id="reg-1", payload=payload), errors.INVALID_PAYLOAD)
    assert fragment in err.reason
    assert (err.request_id, err.msg_type) == ("reg-1", "register")


def test_register_unknown_payload_fields_are_listed():
    err = refused(
        frame(type="register", id="r", payload={"dn": "5001", "password": "pw", "zeta": 1, "alpha": 2}),
        errors.INVALID_PAYLOAD,
    )
    assert err.reason == "unknown field(s): alpha, zeta"
    assert err.msg_type == "register"


@pytest.mark.parametrize("msg_type", ["ping", "unregister"])
def test_empty_payload_types_refuse_fields(msg_type):
    err = refused(frame(type=msg_type, id="e1", payload={"x": 1}), errors.INVALID_PAYLOAD)
    assert err.reason == "unknown field(s): x"
    assert (err.request_id, err.msg_type) == ("e1", msg_type)


def test_extra_top_level_fields_are_refused():
    err = refused(frame(type="ping", id="t1", payload={}, version=1, extra=2), errors.INVALID_PAYLOAD)
    assert err.reason == "unknown top-level field(s): extra, version"
    assert (err.request_id, err.msg_type) == ("t1", "ping")


# ---- id ----


@pytest.mark.parametrize(
    "rid",
    [1, 1.5, True, ["a"], {"a": 1}, "", "x" * (MAX_ID_LEN + 1), "has space", "tab\tx", "a\nb", "é", "\x7f"],
)
def test_bad_id_is_invalid_payload_and_not_echoed(rid):
    err = refused(frame(type="ping", id=rid), errors.INVALID_PAYLOAD)
    assert err.request_id is None
    assert "id must be" in err.reason


def test_bad_id_is_reported_before_unknown_type():
    refused(frame(type="nope", id=5), errors.INVALID_PAYLOAD)


@pytest.mark.parametrize("rid", ["abc\n", "x" * MAX_ID_LEN + "\n"])
def test_id_with_trailing_newline_is_refused(rid):
    # `$` would match before a final newline; the whole string must match.
    err = refused(frame(type="ping", id=rid), errors.INVALID_PAYLOAD)
    assert err.request_id is None


def test_type_with_trailing_newline_is_unknown():
    refused(frame(type="ping\n", id="t"), errors.UNKNOWN_TYPE)


@pytest.mark.parametrize("dn", ["5001\n", "5001\r\n"])
def test_dn_with_trailing_newline_is_refused(dn):
    err = refused(frame(type="register", id="r", payload={"dn": dn, "password": "pw"}), errors.INVALID_PAYLOAD)
    assert err.reason.startswith("dn must be")


# ---- size ----


def _padded(base: str, size: int) -> str:
    assert base.endswith("}")
    text = base[:-1] + " " * (size - len(base.encode("utf-8"))) + "}"
    assert len(text.encode("utf-8")) == size
    return text


def test_frame_of_exactly_max_size_is_accepted():
    assert parse_frame(_padded('{"type":"ping","id":"big"}', MAX_FRAME_BYTES)).id == "big"


def test_frame_one_byte_over_max_is_frame_too_large():
    err = refused(_padded('{"type":"ping","id":"big"}', MAX_FRAME_BYTES + 1), errors.FRAME_TOO_LARGE)
    assert str(MAX_FRAME_BYTES + 1) in err.reason
    assert err.request_id is None


def test_frame_size_is_counted_in_utf8_bytes_not_characters():
    # 20000 'é' are 20000 characters but 40000 bytes: below the limit in
    # characters, above it in bytes.
    chars = '{"type":"ping","payload":{"x":"' + "é" * 20000 + '"}}'
    assert len(chars) < MAX_FRAME_BYTES < len(chars.encode("utf-8"))
    refused(chars, errors.FRAME_TOO_LARGE)
    refused(chars.encode("utf-8"), errors.FRAME_TOO_LARGE)


def test_oversized_garbage_is_frame_too_large_not_bad_json():
    refused("x" * (MAX_FRAME_BYTES + 1), errors.FRAME_TOO_LARGE)


# ---- lone surrogates ----


@pytest.mark.parametrize("field", ["displayName", "password"])
def test_lone_surrogate_in_register_strings_is_invalid_payload(field):
    payload = {"dn": "5001", "password": "pw", "displayName": "A"}
    payload[field] = "x\\ud800"
    text = json.dumps({"type": "register", "id": "s1", "payload": payload}).replace("\\\\ud800", "\\ud800")
    refused(text, errors.INVALID_PAYLOAD)


# ---- registry of request types ----


def test_register_type_adds_a_parser(monkeypatch):
    monkeypatch.setitem(protocol.REQUEST_TYPES, "hangup", lambda p: ("parsed", dict(p)))
    assert parse_frame(frame(type="hangup", id="h", payload={"callId": "c1"})) == Frame(
        "hangup", ("parsed", {"callId": "c1"}), "h"
    )


def test_register_type_function(monkeypatch):
    monkeypatch.setattr(protocol, "REQUEST_TYPES", dict(protocol.REQUEST_TYPES))
    protocol.register_type("answer", protocol.parse_empty)
    assert parse_frame('{"type":"answer"}').type == "answer"


def test_gateway_error_from_a_parser_becomes_protocol_error(monkeypatch):
    def parser(payload):
        raise GatewayError(errors.INVALID_STATE, "nope")

    monkeypatch.setitem(protocol.REQUEST_TYPES, "hold", parser)
    err = refused(frame(type="hold", id="x1"), errors.INVALID_STATE)
    assert (err.reason, err.request_id, err.msg_type) == ("nope", "x1", "hold")


def test_protocol_error_is_a_gateway_error():
    err = ProtocolError(errors.BAD_JSON, "r", "id1", "ping")
    assert isinstance(err, GatewayError)
    assert (err.code, err.reason, err.request_id, err.msg_type) == ("bad_json", "r", "id1", "ping")
    assert str(err) == "bad_json: r"


# ---- server messages ----


def test_message_with_and_without_id():
    assert protocol.message("pong", {"time": 1}, "p") == {"type": "pong", "payload": {"time": 1}, "id": "p"}
    assert protocol.message("pong", {"time": 1}) == {"type": "pong", "payload": {"time": 1}}


def test_error_message_shape():
    assert protocol.error_message("auth_failed", "wrong", "r1", "register") == {
        "type": "error",
        "payload": {"code": "auth_failed", "reason": "wrong", "requestType": "register"},
        "id": "r1",
    }
    assert protocol.error_message("bad_json", "bad") == {"type": "error", "payload": {"code": "bad_json", "reason": "bad"}}


def test_encode_keeps_slashes_and_unicode_unescaped():
    text = protocol.encode({"type": "x", "payload": {"uri": "sip:a/b", "name": "Jürgen 山田 \U0001F600"}})
    assert "\\/" not in text
    assert "sip:a/b" in text
    assert "Jürgen 山田 \U0001F600" in text
    assert "\\u" not in text
    assert json.loads(text) == {"type": "x", "payload": {"uri": "sip:a/b", "name": "Jürgen 山田 \U0001F600"}}


def test_encode_escapes_what_json_requires():
    text = protocol.encode({"s": 'q"b\\n\n\x01'})
    assert "\n" not in text
    assert json.loads(text) == {"s": 'q"b\\n\n\x01'}


def test_encode_is_compact():
    assert protocol.encode({"a": 1, "b": [1, 2]}) == '{"a":1,"b":[1,2]}'


def test_decode_roundtrip():
    msg = protocol.error_message("internal", "ü/x", "i", "ping")
    assert protocol.decode(protocol.encode(msg)) == msg


def test_error_codes_are_unique_and_complete():
    assert len(set(errors.ALL_CODES)) == len(errors.ALL_CODES) == 15
    assert errors.BAD_JSON in errors.ALL_CODES and errors.INTERNAL in errors.ALL_CODES
