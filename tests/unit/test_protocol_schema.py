"""docs/protocol.schema.json against the spec's examples and the gateway's own validator.

- The schema is a valid draft 2020-12 schema whose constants (patterns, lengths,
  error codes) are the ones in kemi/wsgw.
- Every ```json block of docs/CUSTOM_SIGNALING_PROTOCOL.md is one frame that
  validates; client examples are also accepted by `protocol.parse_frame`.
- Known-bad frames are refused.
- For a set of client frames, `protocol.parse_frame` and the schema agree.

JSON Schema patterns are ECMA-262 regular expressions, where `$` means the end
of the string. The `jsonschema` package runs them with Python's `re.search`,
where `$` also matches before a final newline ("5001\n" would pass). The
validator used here therefore evaluates `pattern` with `$` as `\\Z`, so these
tests see what a browser (ajv, RegExp) sees.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "docs" / "protocol.schema.json"
SPEC_PATH = ROOT / "docs" / "CUSTOM_SIGNALING_PROTOCOL.md"

if str(ROOT / "kemi") not in sys.path:
    sys.path.insert(0, str(ROOT / "kemi"))

from wsgw import PROTOCOL_VERSION, errors, handlers, protocol, sip_headers  # noqa: E402
from wsgw.protocol import ProtocolError  # noqa: E402

assert handlers  # imported so every request type it wires up is in protocol.REQUEST_TYPES


# ---- ECMA-262 `$` for the pattern keyword ----


@functools.lru_cache(maxsize=None)
def ecma_regex(pattern: str) -> re.Pattern:
    """Compile an ECMA-262 pattern with Python `re`, mapping a bare `$` to `\\Z` (true end of string)."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "$":
            ch = r"\Z"
        out.append(ch)
        i += 1
    return re.compile("".join(out))


def _ecma_pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


# ---- fixtures ----


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def frame_validator(schema):
    return EcmaValidator(schema)


@pytest.fixture(scope="module")
def client_validator(schema):
    """The schema restricted to `$defs/clientMessage` (what a client may send)."""
    client_only = copy.deepcopy(schema)
    client_only["oneOf"] = [{"$ref": "#/$defs/clientMessage"}]
    return EcmaValidator(client_only)


def _type_consts(schema: dict, union: str) -> set[str]:
    names = set()
    for ref in schema["$defs"][union]["oneOf"]:
        name = ref["$ref"].removeprefix("#/$defs/")
        names.add(schema["$defs"][name]["properties"]["type"]["const"])
    return names


def _python_accepts(frame: dict) -> bool:
    try:
        protocol.parse_frame(json.dumps(frame))
    except ProtocolError:
        return False
    return True


# ---- the schema itself ----


def test_schema_is_valid_draft_2020_12(schema):
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_constants_are_the_python_ones(schema):
    defs = schema["$defs"]
    assert defs["dn"]["pattern"] == sip_headers._DN_RE.pattern == r"^\+?[A-Za-z0-9._-]{1,32}$"
    assert defs["id"]["pattern"] == protocol._ID_RE.pattern == r"^[\x21-\x7e]{1,64}$"
    assert defs["callId"]["pattern"] == sip_headers._TOKEN_RE.pattern
    assert defs["messageType"]["pattern"] == protocol._TYPE_RE.pattern
    # displayName / password: the Python side searches for a forbidden class; the schema allows its complement.
    assert defs["displayName"]["pattern"] == "^[^" + sip_headers._FORBIDDEN_IN_DISPLAY.pattern[1:-1] + "]*$"
    assert defs["displayName"]["maxLength"] == sip_headers.MAX_DISPLAY_NAME_LEN
    assert defs["password"]["pattern"] == "^[^" + sip_headers._CONTROL.pattern[1:-1] + "]*$"
    assert (defs["password"]["minLength"], defs["password"]["maxLength"]) == (1, sip_headers.MAX_PASSWORD_LEN)
    assert defs["errorCode"]["enum"] == list(errors.ALL_CODES)
    assert defs["registered"]["properties"]["payload"]["properties"]["protocol"]["const"] == PROTOCOL_VERSION


def test_every_message_is_listed_once(schema):
    """One $defs entry per message, each in exactly one of the two unions."""
    listed = [
        ref["$ref"].removeprefix("#/$defs/")
        for union in ("clientMessage", "serverMessage")
        for ref in schema["$defs"][union]["oneOf"]
    ]
    messages = [name for name, d in schema["$defs"].items() if "const" in d.get("properties", {}).get("type", {})]
    assert sorted(listed) == sorted(messages)
    for name in messages:
        d = schema["$defs"][name]
        assert d["properties"]["type"]["const"] == name
        assert d["additionalProperties"] is False
        # Server messages carry the session's seq (sessions.py); client messages do not.
        server = {"$ref": f"#/$defs/{name}"} in schema["$defs"]["serverMessage"]["oneOf"]
        assert set(d["properties"]) == ({"type", "payload", "id", "seq"} if server else {"type", "payload", "id"})
    assert not _type_consts(schema, "clientMessage") & _type_consts(schema, "serverMessage")


def test_every_python_request_type_is_in_the_schema(schema):
    assert set(protocol.REQUEST_TYPES) <= _type_consts(schema, "clientMessage")


def test_ecma_pattern_helper():
    assert ecma_regex(r"^\+?[A-Za-z0-9._-]{1,32}$").search("5001")
    assert not ecma_regex(r"^\+?[A-Za-z0-9._-]{1,32}$").search("5001\n")
    assert ecma_regex(r"^[$]\$$").search("$$")  # `$` in a class or escaped stays literal
    assert not ecma_regex(r"^[^\x00-\x1f]*$").search("ab\n")


# ---- the spec's examples ----


def _spec_examples() -> list[tuple[int, str]]:
    text = SPEC_PATH.read_text(encoding="utf-8")
    blocks = re.findall(r"^```json[ \t]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return list(enumerate(blocks, start=1))


SPEC_EXAMPLES = _spec_examples()


def test_spec_has_examples():
    assert len(SPEC_EXAMPLES) >= 10


@pytest.mark.parametrize("number,block", SPEC_EXAMPLES, ids=[f"example{n}" for n, _ in SPEC_EXAMPLES])
def test_spec_example_validates(number, block, schema, frame_validator):
    frame = json.loads(block)
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), f"example {number} has no top-level type"
    errs = sorted(frame_validator.iter_errors(frame), key=str)
    assert not errs, f"example {number} ({frame['type']}): {errs[0].message}"
    if frame["type"] in _type_consts(schema, "clientMessage"):
        protocol.parse_frame(block)  # raises if the gateway would refuse it


# ---- frames that must be refused ----

NEGATIVE = {
    "dn with CRLF": ({"type": "register", "id": "n1", "payload": {"dn": "50\r\n01", "password": "x"}}, errors.INVALID_PAYLOAD),
    "displayName with quote": (
        {"type": "register", "id": "n2", "payload": {"dn": "5001", "password": "x", "displayName": 'Eve" <sip:x@y>'}},
        errors.INVALID_PAYLOAD,
    ),
    "unknown type": ({"type": "dial", "id": "n3", "payload": {}}, errors.UNKNOWN_TYPE),
    "extra top-level field": ({"type": "ping", "id": "n4", "extra": True}, errors.INVALID_PAYLOAD),
}


@pytest.mark.parametrize("frame,code", NEGATIVE.values(), ids=list(NEGATIVE))
def test_negative_frames_are_refused(frame, code, frame_validator):
    assert not frame_validator.is_valid(frame)
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_frame(json.dumps(frame))
    assert exc.value.code == code


# ---- schema and Python validator agree on client frames ----


def _reg(**payload) -> dict:
    return {"type": "register", "id": "r1", "payload": payload}


OK = {"dn": "5001", "password": "agent5001"}

AGREEMENT = {
    # accepted
    "ping bare": {"type": "ping"},
    "ping id": {"type": "ping", "id": "p1"},
    "ping empty payload": {"type": "ping", "payload": {}, "id": "p1"},
    "unregister": {"type": "unregister", "id": "u1"},
    "unregister empty payload": {"type": "unregister", "payload": {}},
    "register minimal": _reg(**OK),
    "register no id": {"type": "register", "payload": OK},
    "register empty displayName": _reg(**OK, displayName=""),
    "register unicode displayName": _reg(**OK, displayName="Agent Ünïcödé 😀 ☎"),
    "register displayName 64 code points": _reg(**OK, displayName="😀" * 64),
    "register dn plus 32": _reg(dn="+" + "1" * 32, password="x"),
    "register dn punctuation": _reg(dn="a.B_c-9", password="x"),
    "register password 1": _reg(dn="5001", password="x"),
    "register password 128 with quotes": _reg(dn="5001", password=('"<>\\' * 32)),
    "register password unicode": _reg(dn="5001", password="pässwörd 密码"),
    "id 64 chars": {"type": "ping", "id": "x" * 64},
    "id punctuation": {"type": "ping", "id": "!\"#{}~\\"},
    # refused: framing
    "type missing": {"id": "x", "payload": {}},
    "type number": {"type": 1},
    "type empty": {"type": ""},
    "type unknown": {"type": "dial"},
    "type server message": {"type": "pong", "payload": {"time": 1}},
    "type wrong case": {"type": "Ping"},
    "extra top-level": {"type": "ping", "x": 1},
    "payload null": {"type": "ping", "payload": None},
    "payload array": {"type": "ping", "payload": []},
    "payload string": {"type": "ping", "payload": "x"},
    "id empty": {"type": "ping", "id": ""},
    "id 65 chars": {"type": "ping", "id": "x" * 65},
    "id space": {"type": "ping", "id": "a b"},
    "id non-ascii": {"type": "ping", "id": "é"},
    "id tab": {"type": "ping", "id": "a\tb"},
    "id number": {"type": "ping", "id": 7},
    # refused: payloads
    "ping with field": {"type": "ping", "payload": {"x": 1}},
    "unregister with field": {"type": "unregister", "payload": {"dn": "5001"}},
    "register no payload": {"type": "register", "id": "r1"},
    "register missing dn": _reg(password="x"),
    "register missing password": _reg(dn="5001"),
    "register unknown field": _reg(**OK, expires=60),
    "dn number": _reg(dn=5001, password="x"),
    "dn empty": _reg(dn="", password="x"),
    "dn 33 chars": _reg(dn="1" * 33, password="x"),
    "dn plus only": _reg(dn="+", password="x"),
    "dn double plus": _reg(dn="++1", password="x"),
    "dn space": _reg(dn="50 01", password="x"),
    "dn at": _reg(dn="5001@evil", password="x"),
    "dn CRLF": _reg(dn="50\r\n01", password="x"),
    "dn LF inside": _reg(dn="50\n01", password="x"),
    "dn fullwidth digits": _reg(dn="５００１", password="x"),
    "displayName quote": _reg(**OK, displayName='a"b'),
    "displayName lt": _reg(**OK, displayName="a<b"),
    "displayName gt": _reg(**OK, displayName="a>b"),
    "displayName backslash": _reg(**OK, displayName="a\\b"),
    "displayName LF": _reg(**OK, displayName="Alice\n"),
    "displayName CR": _reg(**OK, displayName="a\rb"),
    "displayName NUL": _reg(**OK, displayName="a\x00b"),
    "displayName DEL": _reg(**OK, displayName="a\x7fb"),
    "displayName 65": _reg(**OK, displayName="a" * 65),
    "displayName null": _reg(**OK, displayName=None),
    "displayName number": _reg(**OK, displayName=5),
    "password empty": _reg(dn="5001", password=""),
    "password 129": _reg(dn="5001", password="p" * 129),
    "password LF": _reg(dn="5001", password="abc\n"),
    "password tab": _reg(dn="5001", password="a\tb"),
    "password null": _reg(dn="5001", password=None),
}


@pytest.mark.parametrize("frame", AGREEMENT.values(), ids=list(AGREEMENT))
def test_python_validator_and_schema_agree(frame, client_validator):
    assert _python_accepts(frame) == client_validator.is_valid(frame)


# Cases that once diverged (Python's `$` matches before a final newline; "id": null
# was taken as absent): both the schema and parse_frame must refuse them.
DIVERGENCES = {
    "id null": {"type": "ping", "id": None},
    "dn trailing LF": _reg(dn="5001\n", password="x"),
    "id trailing LF": {"type": "ping", "id": "p1\n"},
}


@pytest.mark.parametrize("frame", DIVERGENCES.values(), ids=list(DIVERGENCES))
def test_known_divergences(frame, client_validator):
    assert not client_validator.is_valid(frame)
    assert _python_accepts(frame) == client_validator.is_valid(frame)
