"""Fuzzing the gateway from both sides, against the real Kamailio.

1. WebSocket frames (hypothesis, derandomized): random JSON values, frames shaped
   like protocol requests with wrong types and SIP-significant characters in
   every field, over-long and deeply nested frames, and raw non-JSON text are sent
   over one connection. Each frame must get exactly one reply, the one the
   framing rules of docs/CUSTOM_SIGNALING_PROTOCOL.md (sections 2 and 4) call
   for, and the connection must stay open. Meanwhile a real call is up between
   two other connections of the same gateway and must be untouched.
2. Header injection toward SIP: `call` frames whose fields carry CR/LF and
   header text are refused, and nothing of them reaches the SIP peer (SIPp).
3. Malformed SIP datagrams on the gateway's UDP port while a call is up.

The tests after each fuzz test pin down what the fuzzing found: regression tests for bugs
since fixed, and xfail(strict=True) tests for gateway bugs still present.
"""

from __future__ import annotations

import json
import queue
import random
import re
import socket
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from harness.gateway import PASSWORDS, health
from harness.sdp import CHROME_OFFER, OPUS_ONLY_OFFER, PCMU_ANSWER
from harness.sipp import Sipp
from harness.wsclient import WsClient

try:  # the gateway's own JSON parser (requirements-kemi.txt): it is more lenient than RFC 8259
    import ujson as _lenient_json
except ImportError:  # pragma: no cover
    _lenient_json = None

pytestmark = pytest.mark.integration

# ---- protocol facts (docs/CUSTOM_SIGNALING_PROTOCOL.md sections 2, 4, 6-9) ----

MAX_FRAME_BYTES = 32768
# Kamailio's read buffer is 64 KB including the WebSocket framing: a bigger frame
# closes the connection (documented), so generated frames stay below this.
MAX_SENT_BYTES = 60000
ID_RE = re.compile(r"^[\x21-\x7e]{1,64}$")
TYPE_RE = re.compile(r"^[A-Za-z]{1,32}$")
# A text frame starting like this is SIP over WebSocket, not a protocol frame (1.1).
SIP_FIRST_LINE = re.compile(r"^(?:[A-Z]+ \S+ SIP/2\.0|SIP/2\.0 \d{3} )")
# Frames Kamailio's core takes for SIP CRLF keep-alives (RFC 5626): answered with a bare CRLF
# text frame, never seen by the KEMI code. Left out of the property test, demonstrated by
# test_crlf_keepalive_frame_gets_a_json_reply.
CRLF_KEEPALIVES = ("\r\n", "\r\n\r\n")
ERROR_CODES = {"bad_json", "unknown_type", "invalid_payload", "frame_too_large", "auth_failed", "not_registered",
               "already_registered", "upstream_unreachable", "rate_limited", "no_such_call", "invalid_state",
               "peer_rejected", "media_unavailable", "internal"}
# Request type -> its success replies (an `error` is always possible).
REPLY_TYPES = {
    "register": {"registered"}, "unregister": {"unregistered"}, "ping": {"pong"},
    "call": {"callAccepted", "callFailed"}, "hangup": {"callEnded"}, "answer": {"callAccepted"},
    "reject": {"callEnded"}, "hold": {"held"}, "resume": {"resumed"}, "updateAnswer": {"updated"},
    "dtmf": {"dtmfSent"}, "transfer": {"transferAccepted"}, "conference": {"conferenceStarted"},
}
REQUEST_TYPES = sorted(REPLY_TYPES)
# Server events the fuzz connection may legitimately get besides replies: a `call` it
# places (once a generated `register` succeeded) can ring before it fails.
EVENTS = {"ringing", "progress"}
PAYLOAD_FIELDS = {
    "register": ["dn", "password", "displayName"], "unregister": [], "ping": [],
    "call": ["to", "callId", "sdp", "referredBy"], "hangup": ["callId", "reason"], "answer": ["callId", "sdp"],
    "reject": ["callId", "code"], "hold": ["callId", "sdp"], "resume": ["callId", "sdp"],
    "updateAnswer": ["callId", "sdp"], "dtmf": ["callId", "digits", "durationMs"],
    "transfer": ["callId", "target", "replacesCallId"], "conference": ["callIds", "callId", "sdp"],
}
ALL_FIELDS = sorted({f for fields in PAYLOAD_FIELDS.values() for f in fields})
# The fuzz connection may register as this DN (embedded mode); no other test of this module uses it.
FUZZ_DN = "5008"


class FuzzClient(WsClient):
    """A WsClient whose reader survives a server message that is not a JSON object."""

    def _read(self) -> None:
        try:
            while True:
                raw = self.ws.recv()
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = None
                self.messages.put(msg if isinstance(msg, dict) else {"type": "<not a JSON object>", "raw": raw})
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()


# ---- what the gateway must answer to a frame (sections 2 and 4.2) ----


@dataclass(frozen=True)
class Expect:
    request_id: str | None  # the id the reply must carry (None: the reply has no id)
    code: str | None  # the error code the framing rules impose, or None (the handler decides)
    request_type: str | None  # the type the reply belongs to; `requestType` of a step 6-8 error

    def problems(self, reply: dict) -> list[str]:
        out = []
        if reply.get("id") != self.request_id:
            out.append(f"id should be {self.request_id!r}")
        payload = reply.get("payload")
        if not isinstance(payload, dict):
            return out + ["payload is not an object"]
        if reply.get("type") == "error":
            code = payload.get("code")
            if self.code is not None and code != self.code:
                out.append(f"error code should be {self.code}")
            if code not in ERROR_CODES:
                out.append("unknown error code")
            if code == "internal":
                out.append("`internal` means a gateway bug (4.3)")
            if not isinstance(payload.get("reason"), str) or not payload.get("reason"):
                out.append("error without reason")
            if payload.get("requestType") != self.request_type:
                out.append(f"requestType should be {self.request_type!r}")
        elif self.code is not None:
            out.append(f"should be an error {self.code}")
        elif reply.get("type") not in REPLY_TYPES[self.request_type]:
            out.append(f"not a reply to {self.request_type}")
        return out


def expectation(frame: str, loads) -> Expect:
    """The framing checks of 4.2 (steps 1-7 as far as they concern the frame's shape)."""
    if len(frame.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        return Expect(None, "frame_too_large", None)
    try:
        obj = loads(frame)
    except (ValueError, TypeError, RecursionError, OverflowError):
        return Expect(None, "bad_json", None)
    if not isinstance(obj, dict):
        return Expect(None, "bad_json", None)
    request_id = obj.get("id")
    if "id" in obj and not (isinstance(request_id, str) and ID_RE.fullmatch(request_id)):
        return Expect(None, "invalid_payload", None)  # step 3: no id, no requestType
    msg_type = obj.get("type")
    if not isinstance(msg_type, str) or not msg_type:
        return Expect(request_id, "invalid_payload", None)
    if not TYPE_RE.fullmatch(msg_type) or msg_type not in REPLY_TYPES:
        return Expect(request_id, "unknown_type", None)
    if set(obj) - {"type", "id", "payload"}:
        return Expect(request_id, "invalid_payload", msg_type)
    if "payload" in obj and not isinstance(obj["payload"], dict):
        return Expect(request_id, "invalid_payload", msg_type)
    return Expect(request_id, None, msg_type)


def expectations(frame: str) -> list[Expect]:
    """Per RFC 8259 JSON, and per the gateway's (more lenient) parser: either is accepted here.
    The leniency itself is demonstrated by test_invalid_json_is_refused_as_bad_json."""
    out = [expectation(frame, lambda s: json.loads(s))]
    if _lenient_json is not None:
        lenient = expectation(frame, _lenient_json.loads)
        if lenient not in out:
            out.append(lenient)
    return out


def check_reply(frame: str, reply: dict) -> None:
    options = expectations(frame)
    found = []
    for exp in options:
        problems = exp.problems(reply)
        if not problems:
            return
        found.append(problems)
    raise AssertionError(f"wrong reply {reply!r:.600} to frame {frame!r:.600}: {found}")


def exchange(client: FuzzClient, frame: str, history: list[str]) -> None:
    """Send one frame; its one reply must follow, with nothing else (besides call events)."""
    previous = history[-1] if history else None
    history.append(frame)
    try:
        extra = client.messages.get_nowait()
    except queue.Empty:
        extra = None
    assert extra is None, f"unexpected message {extra!r:.600} after frame {previous!r:.600}"
    assert not client.closed.is_set(), f"connection closed after frame {previous!r:.600}"
    client.send_raw(frame)
    timeout = 20.0 if '"call"' in frame else 5.0  # a call from a registered fuzz connection goes through SIP
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = client.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no reply within {timeout}s to frame {frame!r:.600}") from None
        if reply.get("type") in EVENTS and "id" not in reply:
            continue
        break
    check_reply(frame, reply)
    # A second reply to the same frame usually follows at once: give it a moment.
    time.sleep(0.005)
    assert not client.closed.is_set(), f"connection closed after frame {frame!r:.600}"


# ---- hypothesis strategies for frames ----

# Strings that mean something to SIP, JSON, HTTP or a shell, spliced into every string field.
NASTY = [
    "\r\n", "\r", "\n", "\r\nVia: x", "\r\nX-Injected: 1", "\r\n\r\nX-Injected: 1", "%0d%0a", "%0D%0AX-Injected:%201",
    '"', "'", "<", ">", "<sip:evil@127.0.0.1>", '"Eve" <sip:evil@127.0.0.1>;tag=1', "\\", "\\r\\n", ";", ",",
    ":", "@", "sip:", "sips:x@y", "\t", " ", "\x7f", "\x1b[31m", "\u0085", "\u2028", "\u2029", "\ufeff", "é",
    "中文", "😀", "\u202e", "${jndi:ldap://127.0.0.1/x}", "{{7*7}}", "' OR '1'='1", "../../etc/passwd", "v=0",
    "5001", "null", "true", "-1", "1e309", "Content-Length: 0", "SIP/2.0 200 OK", "INVITE sip:x SIP/2.0",
]
nasty = st.sampled_from(NASTY)
lone_surrogate = st.integers(0xD800, 0xDFFF).map(chr)
short_text = st.text(max_size=24)
spliced = st.lists(st.one_of(nasty, short_text, st.just("\x00"), lone_surrogate), min_size=1, max_size=6).map("".join)
_LONG_BASES = st.sampled_from(["x", "5", "A\r\n", "é", "😀", "\r\nX-Injected: 1", "%0d%0a", '"\\'])
long_text = st.builds(lambda base, n: (base * (n // len(base) + 1))[:n], _LONG_BASES, st.integers(200, 5000))
# Up to 40000 characters: mostly over the 32768-byte frame limit (frame_too_large).
huge_text = st.builds(lambda base, n: (base * (n // len(base) + 1))[:n], _LONG_BASES, st.integers(10000, 40000))
strings = st.one_of(short_text, nasty, spliced, short_text, nasty, spliced, long_text)  # long: 1 in 7
names = st.one_of(
    st.sampled_from(ALL_FIELDS + ["", "id", "type", "payload", "Type", "ID", "__proto__", "constructor", "dn ",
                                  "callid", "x"]),
    st.text(max_size=12),
    # Field names are echoed in `reason` and logged (test_field_name_with_nul_or_lone_surrogate_gets_one_reply).
    st.lists(st.one_of(st.just("\x00"), lone_surrogate, st.sampled_from(["a", "dn", "\r\n"])), min_size=1,
             max_size=3).map("".join),
    st.lists(st.sampled_from([n for n in NASTY if len(n) < 20]), min_size=1, max_size=3).map("".join),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    strings)
json_values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(names, children, max_size=4)),
    max_leaves=10,
)
tokens = st.from_regex(r"[A-Za-z0-9._~-]{1,64}", fullmatch=True)
dns = st.from_regex(r"\+?[A-Za-z0-9._-]{1,32}", fullmatch=True)
# Numbers a call may go to: never a subscriber (the call in progress, or the fuzz connection
# itself) nor the echo extension. The rest routes to "no such DN" or is refused by the dial plan.
harmless_targets = dns.filter(lambda d: d not in PASSWORDS and d != "9196")
sdps = st.one_of(
    st.sampled_from([
        CHROME_OFFER, OPUS_ONLY_OFFER, PCMU_ANSWER, "v=0", "v=0\r\n", CHROME_OFFER + "X-Injected: 1\r\n",
        CHROME_OFFER.replace("s=-\r\n", "s=-\r\nVia: x\r\n"), "v=0\r\nm=audio 9 RTP/AVP 0\r\n",
        "v=0\r\nm=audio x RTP/AVP\r\na=rtpmap:0\r\n", "v=0\r\nm=\r\nm=audio 9 RTP/AVP 0 0 0\r\n",
    ]),
    strings.map(lambda s: "v=0\r\n" + s),
)
# Values that pass (or nearly pass) the field rules of section 5 and 7-9, so that frames reach the handlers.
FIELD_VALUES = {
    "dn": dns, "password": st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20),
    "displayName": st.text(st.characters(exclude_categories=["Cs", "Cc"], exclude_characters='"<>\\'), max_size=64),
    "to": harmless_targets, "target": harmless_targets, "callId": tokens, "replacesCallId": tokens,
    "referredBy": tokens, "sdp": sdps, "reason": st.text(max_size=64),
    "code": st.sampled_from([486, 603, 480, 200, 0, -1, 486.0, "486", True, None, 10**20]),
    "digits": st.from_regex(r"[0-9*#A-D]{1,33}", fullmatch=True),
    "durationMs": st.one_of(st.integers(-10, 3000), st.floats(allow_nan=False), st.just("160")),
    "callIds": st.lists(tokens, min_size=1, max_size=3),
}
# The fields a well-formed request of each type carries (the optional ones drawn separately).
REQUIRED_FIELDS = {
    "register": ["dn", "password"], "unregister": [], "ping": [], "call": ["to", "callId", "sdp"],
    "hangup": ["callId"], "answer": ["callId", "sdp"], "reject": ["callId"], "hold": ["callId", "sdp"],
    "resume": ["callId", "sdp"], "updateAnswer": ["callId", "sdp"], "dtmf": ["callId", "digits"],
    "transfer": ["callId"], "conference": ["callIds", "callId", "sdp"],
}


@st.composite
def payloads(draw, msg_type: str | None) -> dict:
    fields = PAYLOAD_FIELDS.get(msg_type or "", [])
    if msg_type == "register" and draw(st.integers(0, 2)) == 0:
        return {"dn": FUZZ_DN, "password": PASSWORDS[FUZZ_DN]}  # sometimes the fuzz connection registers
    mode = draw(st.integers(0, 3))
    if mode <= 1 and msg_type in REQUIRED_FIELDS:
        # Well-formed, or with exactly one field spoilt (wrong JSON type or SIP-significant text).
        chosen = list(REQUIRED_FIELDS[msg_type])
        optional = [f for f in fields if f not in chosen and f not in ("target", "replacesCallId")]
        chosen += draw(st.lists(st.sampled_from(optional), unique=True)) if optional else []
        if msg_type == "transfer":
            chosen.append(draw(st.sampled_from(["target", "replacesCallId"])))
        payload = {name: draw(FIELD_VALUES[name]) for name in chosen}
        if msg_type == "conference" and draw(st.booleans()):
            payload["callIds"] = draw(st.lists(tokens, min_size=2, max_size=2, unique=True))
        if mode == 1 and chosen:
            payload[draw(st.sampled_from(chosen))] = draw(st.one_of(json_values, strings))
        return payload
    chosen = draw(st.lists(st.sampled_from(fields), unique=True)) if fields else []
    payload = {}
    for name in chosen:
        # The right field name with a plausible value, a value of any JSON type, or SIP-significant text.
        payload[name] = draw(st.one_of(FIELD_VALUES[name], json_values, strings))
    if draw(st.integers(0, 5)) == 0:
        payload[draw(names)] = draw(json_values)
    return payload


@st.composite
def frame_objects(draw) -> dict:
    obj: dict = {}
    msg_type = None
    kind = draw(st.integers(0, 9))
    if kind <= 6:
        msg_type = draw(st.sampled_from(REQUEST_TYPES))
        obj["type"] = msg_type
    elif kind == 7:
        obj["type"] = draw(st.one_of(strings, st.sampled_from(
            ["", "pong", "error", "Register", "PING", "registered", "call ", "incomingCall", "x" * 33])))
    elif kind == 8:
        obj["type"] = draw(json_values)
    which_id = draw(st.integers(0, 5))
    if which_id <= 2:
        obj["id"] = draw(st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True))
    elif which_id == 3:
        obj["id"] = draw(st.one_of(json_values, strings, st.just(""), st.just("x" * 65), st.just("a b")))
    which_payload = draw(st.integers(0, 5))
    if which_payload <= 3:
        obj["payload"] = draw(payloads(msg_type))
    elif which_payload == 4:
        obj["payload"] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        obj[draw(names)] = draw(json_values)
    order = draw(st.permutations(list(obj)))
    return {key: obj[key] for key in order}


def _dumps(value, ascii_only: bool) -> str:
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only travel as a \\u escape
        text = json.dumps(value, ensure_ascii=True)
    return text


def _cap(text: str) -> str:
    while len(text.encode("utf-8")) > MAX_SENT_BYTES:
        text = text[: len(text) * 3 // 4]
    return text


raw_text = st.one_of(
    st.text(max_size=200),
    st.sampled_from([
        "", " ", "{", "}", "[]", "null", '"ping"', "{'type': 'ping'}", '{"type":"ping",}', '{"type":"ping"}{}',
        '{"type":"ping"}\n{"type":"ping"}', "\ufeff{\"type\":\"ping\",\"id\":\"bom\"}", "<xml/>", "GET / HTTP/1.1",
        'type=ping&id=1', '{"type":"ping" /* c */}', "\x00", '{"type":"ping","id":"nul"}\x00',
    ]),
    st.lists(nasty, min_size=1, max_size=8).map("".join),
).filter(lambda s: not SIP_FIRST_LINE.match(s))


@st.composite
def frames(draw) -> str:
    kind = draw(st.integers(0, 11))
    ascii_only = draw(st.booleans())
    if kind <= 6:
        text = _dumps(draw(frame_objects()), ascii_only)
    elif kind == 7:
        text = _dumps(draw(json_values), ascii_only)
    elif kind == 8:
        text = draw(raw_text)
    elif kind == 9:  # a protocol-shaped frame cut short
        whole = _dumps(draw(frame_objects()), ascii_only)
        text = whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    elif kind == 10:  # deep nesting, away from the parsers' own limits (about 1000)
        depth = draw(st.sampled_from([2, 50, 500, 1500, 5000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        text = inner if draw(st.booleans()) else '{"type":"ping","id":"deep","payload":' + inner + "}"
    else:  # protocol-shaped with a long string somewhere
        obj = draw(frame_objects())
        obj[draw(st.sampled_from(["type", "id", "payload", "pad"]))] = draw(st.one_of(long_text, huge_text))
        text = _dumps(obj, ascii_only)
    return _cap(text)


FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same frames on every run (and in CI)
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
    print_blob=False,
)


def run_frame_fuzz(client: FuzzClient) -> list[str]:
    history: list[str] = []

    @FUZZ_SETTINGS
    @given(frame=frames().filter(lambda f: f not in CRLF_KEEPALIVES))
    # Always sent, whatever hypothesis draws: the limits of 1.1/2 and classic injections.
    @example(frame=json.dumps({"type": "ping", "id": "big", "payload": {"pad": "x" * 40000}}))
    @example(frame=json.dumps({"type": "ping", "id": "edge", "payload": {"p": "y" * (MAX_FRAME_BYTES - 60)}}))
    @example(frame="[" * 5000 + "]" * 5000)
    @example(frame=json.dumps({"type": "register", "id": "inj1", "payload": {"dn": "5001\r\nVia: x", "password": "x"}}))
    @example(frame=json.dumps({"type": "register", "id": "inj2",
                               "payload": {"dn": "5009", "password": "x", "displayName": 'Eve"\r\nX-Injected: 1'}}))
    @example(frame=json.dumps({"type": "call", "id": "inj3",
                               "payload": {"to": "6001%0d%0aX-Injected: 1", "callId": "c", "sdp": CHROME_OFFER}}))
    @example(frame=json.dumps({"type": "call", "payload": {"to": "<sip:x@127.0.0.1>", "callId": "c\r\n",
                                                           "sdp": "v=0\r\nX-Injected: 1\r\n"}}))
    @example(frame='{"type":"ping"}')
    @example(frame="not json at all \r\nVia: x")
    # Field names echoed into `reason` (the bug of test_field_name_with_nul_or_lone_surrogate_gets_one_reply).
    @example(frame='{"type":"ping","id":"nulname","\\u0000":1}')
    @example(frame='{"type":"hangup","id":"surname","payload":{"callId":"x","\\udfff":1}}')
    # Registered from the start (until a generated `unregister`), so generated calls reach SIP.
    @example(frame=json.dumps({"type": "register", "id": "fuzzreg",
                               "payload": {"dn": FUZZ_DN, "password": PASSWORDS[FUZZ_DN]}}))
    @example(frame=json.dumps({"type": "call", "id": "nobody",
                               "payload": {"to": "7777", "callId": "n1", "sdp": CHROME_OFFER}}))
    @example(frame=json.dumps({"type": "call", "payload": {"to": "0900123", "callId": "n2", "sdp": CHROME_OFFER}}))
    @example(frame=json.dumps({"type": "call", "id": "opus",
                               "payload": {"to": "7777", "callId": "n3", "sdp": OPUS_ONLY_OFFER}}))
    def fuzz_one(frame: str) -> None:
        exchange(client, frame, history)

    fuzz_one()
    return history


# ---- helpers for calls between two JSON clients ----


def start_call(caller: WsClient, callee: WsClient, to: str, call_id: str) -> str:
    """`caller` calls `to` (registered on `callee`), callee answers; returns the callee's callId."""
    request_id = caller.send("call", {"to": to, "callId": call_id, "sdp": CHROME_OFFER})
    incoming = callee.wait_for("incomingCall")
    callee_call = incoming["payload"]["callId"]
    assert callee.request("answer", {"callId": callee_call, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
    accepted = caller.wait(lambda m: m.get("id") == request_id)
    assert accepted["type"] == "callAccepted", accepted
    # The caller's `ringing` event came before the answer: consumed here.
    caller.backlog = [m for m in caller.backlog if m.get("type") not in EVENTS]
    return callee_call


def end_call(caller: WsClient, callee: WsClient, call_id: str, callee_call: str) -> None:
    ended = caller.request("hangup", {"callId": call_id})
    assert ended["type"] == "callEnded", ended
    assert ended["payload"]["by"] == "local"
    remote = callee.wait_for("callEnded", callId=callee_call)
    assert remote["payload"]["by"] == "remote"


def wait_calls(gw, count: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    doc = health(gw)
    while doc["calls"] != count and time.monotonic() < deadline:
        time.sleep(0.05)
        doc = health(gw)
    return doc


def unhandled(log_text: str) -> list[str]:
    """Python exceptions that escaped a KEMI callback (kemi/gateway.py _guard logs them)."""
    return [line[:400] for line in log_text.splitlines() if "unhandled exception" in line.lower()]


# ---- 1 + 2: frame fuzzing while a call is up ----


@pytest.mark.timeout(240)
def test_fuzzed_frames_get_one_reply_each_while_a_call_is_up(embedded_gateway, client_factory):
    gw = embedded_gateway
    alice, bob = client_factory(gw), client_factory(gw)
    assert alice.register("5001", PASSWORDS["5001"])["type"] == "registered"
    assert bob.register("5002", PASSWORDS["5002"])["type"] == "registered"
    bob_call = start_call(alice, bob, "5002", "real")
    calls_before = health(gw)["calls"]
    assert calls_before == 2, "both legs of the call are in the call table"
    log_mark = len(gw.log_text())

    fuzz = FuzzClient(gw.ws_url)
    try:
        started = time.monotonic()
        sent = run_frame_fuzz(fuzz)
        elapsed = time.monotonic() - started
        # Nothing more arrives for any frame, and the connection still works.
        fuzz.assert_no_message(1.0)
        assert fuzz.request("ping")["type"] == "pong"
        assert not fuzz.closed.is_set()
    finally:
        fuzz.close()
    print(f"frame fuzz: {len(sent)} frames in {elapsed:.1f}s")

    assert gw.proc is not None and gw.proc.poll() is None, "kamailio died"
    doc = wait_calls(gw, calls_before)
    assert doc["status"] == "up" and doc["calls"] == calls_before, doc
    # The call on the other connections saw nothing and still hangs up properly.
    alice.assert_no_message(0.2)
    bob.assert_no_message(0.2)
    end_call(alice, bob, "real", bob_call)
    assert wait_calls(gw, 0)["calls"] == 0
    assert unhandled(gw.log_text()[log_mark:]) == []


# ---- bugs found by the frame fuzzing ----

_BAD_NAME_FRAMES = [
    pytest.param('{"type":"ping","id":"nul1","\\u0000":1}', "nul1", id="nul-in-top-level-member-name"),
    pytest.param('{"type":"ping","id":"nul2","payload":{"a\\u0000b":1}}', "nul2", id="nul-in-payload-field-name"),
    pytest.param('{"type":"ping","id":"sur1","\\ud800":1}', "sur1", id="lone-surrogate-in-top-level-member-name"),
    pytest.param('{"type":"ping","id":"sur2","payload":{"\\udc00x":1}}', "sur2",
                 id="lone-surrogate-in-payload-field-name"),
]


def _collect(client: FuzzClient, ids: set[str], seconds: float) -> dict[str, dict]:
    """Replies by id until all of `ids` arrived or `seconds` passed."""
    got: dict[str, dict] = {}
    deadline = time.monotonic() + seconds
    while set(got) != ids and time.monotonic() < deadline:
        try:
            msg = client.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        got[msg.get("id", "<no id>")] = msg
    return got


@pytest.fixture(scope="module")
def single_worker_gateway(workdir):
    """A gateway of its own with one TCP worker: every frame of every connection runs in the same process,
    and the frames below that upset a worker (see the poison test) never reach the shared gateway."""
    from harness.gateway import SUBSCRIBERS, Gateway

    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_CHILDREN": "1"}).start()
    yield gw
    gw.stop()


@pytest.mark.parametrize("frame,request_id", _BAD_NAME_FRAMES)
def test_field_name_with_nul_or_lone_surrogate_gets_one_reply(single_worker_gateway, frame, request_id):
    """Found by the fuzzing: such a name is echoed into the error reason, and logging it (KSR.info)
    or encoding it (ujson.dumps, ensure_ascii=False) raised outside any try: no reply at all."""
    with FuzzClient(single_worker_gateway.ws_url, timeout=5) as client:
        client.send_raw(frame)
        client.send_raw('{"type":"ping","id":"after"}')
        got = _collect(client, {request_id, "after"}, 2.0)
        assert not client.closed.is_set()
        assert set(got) == {request_id, "after"}, got
        assert got[request_id]["type"] == "error" and got[request_id]["payload"]["code"] == "invalid_payload", got
        assert got["after"]["type"] == "pong", got


@pytest.mark.timeout(60)
def test_poison_frame_does_not_swallow_another_connections_frame(single_worker_gateway):
    """Found by the fuzzing: a lone surrogate in a field name made KSR.info fail with a Python
    exception left set in the worker, so the NEXT frame that worker handled, from any connection,
    was dropped too (SystemError in ksr_adapter.on_received)."""
    with FuzzClient(single_worker_gateway.ws_url, timeout=5) as attacker, \
            FuzzClient(single_worker_gateway.ws_url, timeout=5) as victim:
        assert victim.request("ping")["type"] == "pong"
        attacker.send_raw('{"type":"ping","id":"bad","\\ud800":1}')
        time.sleep(0.3)
        victim.send_raw('{"type":"ping","id":"victim"}')
        got = _collect(victim, {"victim"}, 2.0)
        assert got.get("victim", {}).get("type") == "pong", got


@pytest.mark.xfail(strict=True, reason=(
    "BUG: a text frame that is exactly CRLF or CRLF CRLF is answered with a text frame holding a bare CRLF (Kamailio's "
    "SIP keep-alive pong, RFC 5626), not with a JSON `error` bad_json: the gateway sends a frame that is not a JSON "
    "object (section 2: every frame in either direction is one), which a client that JSON.parse()s every message "
    "throws on. Any other whitespace-only frame gets bad_json."))
@pytest.mark.parametrize("frame", CRLF_KEEPALIVES, ids=["crlf", "crlfcrlf"])
def test_crlf_keepalive_frame_gets_a_json_reply(embedded_gateway, frame):
    with FuzzClient(embedded_gateway.ws_url, timeout=5) as client:
        client.send_raw(frame)
        reply = client.wait(lambda m: True, timeout=5.0)
        assert reply["type"] == "error" and reply["payload"]["code"] == "bad_json", reply
        assert client.request("ping")["type"] == "pong"


# Once a deviation (ujson parsed these); frames are now parsed strictly (RFC 8259).
@pytest.mark.parametrize("frame", [
    '{"type":"hangup","id":"lax1","payload":{"callId":"x","reason":"a\tb"}}',
    '{"type":"reject","id":"lax2","payload":{"callId":"x","code":0486}}',
    '{"type":"dtmf","id":"lax3","payload":{"callId":"x","digits":"1","durationMs":160.}}',
    '{"type":"ping","id":"lax4","payload":{"x":-}}',
], ids=["raw-tab-in-string", "leading-zero", "trailing-dot", "lone-minus"])
def test_invalid_json_is_refused_as_bad_json(embedded_gateway, frame):
    with pytest.raises(ValueError):
        json.loads(frame)  # not JSON
    with FuzzClient(embedded_gateway.ws_url, timeout=5) as client:
        client.send_raw(frame)
        reply = client.wait(lambda m: True, timeout=5.0)
        assert reply["type"] == "error" and reply["payload"]["code"] == "bad_json", reply
        assert "id" not in reply, reply


def test_hangup_reason_with_lone_surrogate_gets_call_ended(embedded_gateway, client_factory):
    """Found while fuzzing: `reason` (any string up to 64 characters) is echoed into callEnded; with a
    lone surrogate ujson.dumps raised in WsOutbox.send, the call ended but the client got `internal`."""
    gw = embedded_gateway
    carol, dave = client_factory(gw), client_factory(gw)
    assert carol.register("5005", PASSWORDS["5005"])["type"] == "registered"
    assert dave.register("5006", PASSWORDS["5006"])["type"] == "registered"
    dave_call = start_call(carol, dave, "5006", "sur")
    carol.send_raw('{"type":"hangup","id":"hs1","payload":{"callId":"sur","reason":"\\ud800"}}')
    reply = carol.wait(lambda m: m.get("id") == "hs1")
    assert dave.wait_for("callEnded", callId=dave_call)["payload"]["by"] == "remote"
    assert reply["type"] == "callEnded", reply


# ---- 3: header injection toward the SIP side ----

INJECTED = "X-Injected"
HEADER_INJECTIONS = [
    {"to": "6001\r\nX-Injected: 1", "callId": "inj1", "sdp": CHROME_OFFER},
    {"to": "6001\nX-Injected: 1", "callId": "inj2", "sdp": CHROME_OFFER},
    {"to": "6001\rX-Injected: 1", "callId": "inj3", "sdp": CHROME_OFFER},
    {"to": "6001%0d%0aX-Injected: 1", "callId": "inj4", "sdp": CHROME_OFFER},
    {"to": "6001;X-Injected=1", "callId": "inj5", "sdp": CHROME_OFFER},
    {"to": "<sip:6001@127.0.0.1>\r\nX-Injected: 1", "callId": "inj6", "sdp": CHROME_OFFER},
    {"to": "6001@127.0.0.1?X-Injected=1", "callId": "inj7", "sdp": CHROME_OFFER},
    {"to": "6001\u2028X-Injected: 1", "callId": "inj8", "sdp": CHROME_OFFER},
    {"to": "6001\u0085X-Injected: 1", "callId": "inj9", "sdp": CHROME_OFFER},
    {"to": "6001 X-Injected: 1", "callId": "inj10", "sdp": CHROME_OFFER},
    {"to": "6001", "callId": "inj11\r\nX-Injected: 1", "sdp": CHROME_OFFER},
    {"to": "6001", "callId": "inj12\nX-Injected: 1", "sdp": CHROME_OFFER},
    {"to": "6001", "callId": "inj13%0d%0aX-Injected:1", "sdp": CHROME_OFFER},
    {"to": "6001", "callId": "inj14", "sdp": CHROME_OFFER, "referredBy": "x\r\nX-Injected: 1"},
    {"to": "6001", "callId": "inj15", "sdp": "\r\nX-Injected: 1\r\n" + CHROME_OFFER},
    {"to": "6001", "callId": "inj16", "sdp": CHROME_OFFER, "X-Injected": "1"},
]
# SDP lines that are not SDP. Section 7.7: the gateway re-writes the offer with a real SDP
# parser, so it may refuse these (invalid_payload) or drop the lines; either way they must
# not reach SIP.
SDP_INJECTIONS = [
    CHROME_OFFER + "X-Injected: 1\r\n",
    CHROME_OFFER.replace("s=-\r\n", "s=-\r\nX-Injected: 1\r\n"),
    CHROME_OFFER.replace("s=-\r\n", "s=-\nX-Injected: 1\n"),
    CHROME_OFFER + "\r\nX-Injected: 1\r\n",
    CHROME_OFFER.replace("s=-\r\n", "s=-\rX-Injected: 1\r\n"),
]


@pytest.fixture
def agent(upstream_agents):
    """A client registered upstream (see conftest.upstream_agents)."""
    return upstream_agents(1)[0]


@pytest.mark.timeout(120)
def test_header_injection_never_reaches_sip(agent, upstream_gateway, registrar_port, client_factory, tmp_path):
    fresh = client_factory(upstream_gateway)
    # One UAS call per SDP attempt the gateway may let through (stripped), plus the valid call.
    uas = Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=registrar_port, calls=len(SDP_INJECTIONS) + 1,
               timeout=60)
    with uas:
        # The display name and DN of a registration: a fresh connection (refused before any SIP).
        for payload in (
            {"dn": "7999", "password": "pw", "displayName": "Eve\r\nX-Injected: 1"},
            {"dn": "7999", "password": "pw", "displayName": 'Eve" <sip:evil@127.0.0.1>\r\nX-Injected: 1'},
            {"dn": "7999\r\nX-Injected: 1", "password": "pw"},
            {"dn": "7999%0d%0aX-Injected: 1", "password": "pw"},
        ):
            reply = fresh.request("register", payload)
            assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_payload", (payload, reply)
        for payload in HEADER_INJECTIONS:
            reply = agent.request("call", payload)
            assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_payload", (payload, reply)
        assert INJECTED not in uas.messages()
        assert "INVITE sip:" not in uas.messages(), "a refused call reached SIP"

        let_through = 0
        for n, sdp in enumerate(SDP_INJECTIONS):
            reply = agent.request("call", {"to": "6001", "callId": f"sdp{n}", "sdp": sdp})
            if reply["type"] == "error":
                assert reply["payload"]["code"] == "invalid_payload", reply
                continue
            assert reply["type"] == "callAccepted", (n, reply)
            let_through += 1
            assert agent.request("hangup", {"callId": f"sdp{n}"})["type"] == "callEnded"

        reply = agent.request("call", {"to": "6001", "callId": "valid", "sdp": CHROME_OFFER})
        assert reply["type"] == "callAccepted", reply
        assert agent.request("hangup", {"callId": "valid"})["payload"]["by"] == "local"
        if let_through == len(SDP_INJECTIONS):
            assert uas.wait(20) == 0, uas.describe()
        else:
            deadline = time.monotonic() + 10
            while uas.messages().count("BYE sip:") < let_through + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
    messages = uas.messages()
    # (>=: a retransmission is logged again)
    assert messages.count("INVITE sip:") >= let_through + 1, uas.describe()
    assert messages.count("BYE sip:") >= let_through + 1, uas.describe()
    assert INJECTED not in messages, "injected text reached the SIP side:\n" + messages[-4000:]
    print(f"header injection: SDP attempts let through with the lines dropped: {let_through}/{len(SDP_INJECTIONS)}")


@pytest.mark.timeout(60)
def test_bare_cr_in_candidate_line_does_not_reach_sip(agent, registrar_port, tmp_path):
    """Found by the injection test: sdp_policy._keep_raw_candidates copies a=candidate lines verbatim
    and splits on LF only, so a bare CR in one reached the SIP INVITE body with the text after it."""
    sdp = CHROME_OFFER.replace("typ host generation 0", "typ host\rX-Injected: 1")
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=registrar_port, timeout=30) as uas:
        reply = agent.request("call", {"to": "6001", "callId": "cr", "sdp": sdp})
        if reply["type"] == "callAccepted":
            assert agent.request("hangup", {"callId": "cr"})["type"] == "callEnded"
            assert uas.wait(15) == 0, uas.describe()
        else:
            assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_payload", reply
    assert INJECTED not in uas.messages()


# ---- 4: malformed SIP datagrams while a call is up ----


def sip_fuzz_datagrams(rng: random.Random, count: int, gw_port: int, my_port: int, live_call_id: str) -> list[bytes]:
    """Malformed or out-of-context SIP over UDP. Every Via, URI and Contact names 127.0.0.1,
    so whatever the gateway answers or forwards stays on this host (mostly to `my_port`)."""
    gw = f"127.0.0.1:{gw_port}"
    me = f"127.0.0.1:{my_port}"

    def tag() -> str:
        return "%016x" % rng.getrandbits(64)

    def call_id() -> str:
        return live_call_id if rng.random() < 0.3 else f"fz{rng.getrandbits(48):x}@127.0.0.1"

    def request(method: str, user: str = "fuzz", to_tag: str | None = None, cid: str | None = None,
                body: bytes = b"", extra: list[str] | None = None, drop: set[str] = frozenset(),
                content_length: str | None = None, cseq: str | None = None) -> bytes:
        headers = [
            ("Via", f"SIP/2.0/UDP {me};rport;branch=z9hG4bK{tag()}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:fuzzer@127.0.0.1>;tag={tag()}"),
            ("To", f"<sip:{user}@{gw}>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", cid or call_id()),
            ("CSeq", cseq or f"{rng.randint(1, 9999)} {method}"),
            ("Contact", f"<sip:fuzzer@{me}>"),
        ]
        lines = [f"{method} sip:{user}@{gw} SIP/2.0"]
        lines += [f"{name}: {value}" for name, value in headers if name not in drop]
        lines += extra or []
        if "Content-Length" not in drop:
            lines.append(f"Content-Length: {content_length if content_length is not None else len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body

    sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    methods = ["INVITE", "BYE", "INFO", "NOTIFY", "REFER", "UPDATE", "ACK", "CANCEL", "OPTIONS", "REGISTER",
               "SUBSCRIBE", "MESSAGE", "PRACK", "PUBLISH", "FOO"]
    users = ["fuzz", "7777", "0900123", "06001", "9999", "+1", "a" * 300, "%00", "x;y=z"]

    def in_dialog() -> bytes:
        method = rng.choice(["BYE", "INFO", "NOTIFY", "REFER", "UPDATE", "INVITE", "PRACK", "MESSAGE"])
        extra, body = [], b""
        if method == "INFO":
            extra, body = ["Content-Type: application/dtmf-relay"], b"Signal=5\r\nDuration=160\r\n"
        elif method == "NOTIFY":
            extra = ["Event: refer", "Subscription-State: active;expires=60", "Content-Type: message/sipfrag"]
            body = b"SIP/2.0 200 OK\r\n"
        elif method == "REFER":
            extra = [f"Refer-To: <sip:9999@{gw}>", f"Referred-By: <sip:fuzzer@{me}>"]
        elif method in ("INVITE", "UPDATE"):
            extra, body = ["Content-Type: application/sdp"], sdp
        return request(method, user="5004", to_tag=tag(), body=body, extra=extra)

    def missing_header() -> bytes:
        drop = set(rng.sample(["Via", "Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length"],
                              rng.randint(1, 3)))
        return request(rng.choice(methods), user=rng.choice(users), to_tag=rng.choice([None, tag()]), drop=drop)

    def bad_cseq() -> bytes:
        method = rng.choice(methods)
        value = rng.choice(["x " + method, "99999999999999999999 " + method, "1", "-1 " + method, "1 ", "",
                            "1 " + method + "X", "1\t" + method, "0x10 " + method, "1 " + method + " extra"])
        return request(method, user=rng.choice(users), to_tag=rng.choice([None, tag()]), cseq=value)

    def bad_content_length() -> bytes:
        method = rng.choice(["INVITE", "INFO", "MESSAGE", "BYE", "NOTIFY"])
        value = rng.choice(["-1", "99999", "abc", "0", "1e3", "", "18446744073709551616", "5, 6"])
        return request(method, user=rng.choice(users), to_tag=rng.choice([None, tag()]), body=sdp,
                       content_length=value, extra=["Content-Type: application/sdp"])

    def huge_header() -> bytes:
        if rng.random() < 0.5:
            extra = [f"X-Fuzz: {'A' * rng.randint(5000, 55000)}"]
        else:
            extra = [f"X-H{i}: v" for i in range(rng.randint(500, 3000))]
        return request(rng.choice(methods), user=rng.choice(users), to_tag=rng.choice([None, tag()]), extra=extra)

    def response() -> bytes:
        code = rng.choice(["100", "180", "183", "200", "202", "401", "407", "481", "487", "500", "603", "699",
                           "99", "1000", "abc", ""])
        method = rng.choice(["INVITE", "BYE", "REGISTER", "INFO", "REFER", "NOTIFY", "CANCEL"])
        vias = [f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{tag()}"]
        if rng.random() < 0.4:
            vias.insert(0, f"Via: SIP/2.0/UDP {gw};branch=z9hG4bK{tag()}")
        body = sdp if code in ("183", "200") and method == "INVITE" else b""
        lines = [f"SIP/2.0 {code} Whatever", *vias, f"From: <sip:5003@{gw}>;tag={tag()}",
                 f"To: <sip:6001@{gw}>;tag={tag()}", f"Call-ID: {call_id()}", f"CSeq: {rng.randint(1, 99)} {method}",
                 f"Contact: <sip:fuzzer@{me}>", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def truncated() -> bytes:
        whole = rng.choice([request("INVITE", user=rng.choice(users), body=sdp,
                                    extra=["Content-Type: application/sdp"]), in_dialog(), response()])
        return whole[: rng.randint(1, len(whole) - 1)]

    def garbage_values() -> bytes:
        extra = rng.choice([
            ["X-Nul: a\x00b"], ["X-Bin: \udcff\udcfe"], ["X-Cr: a\rb"], ["Folded: a", " continued"], ["NoColonHere"],
            [": empty-name"], ['From: "\udcff\udcfe" <sip:x@127.0.0.1>;tag=1'], ["Max-Forwards: 0"],
            ["Max-Forwards: -5"], ["Via: garbage"], ["Route: <sip:127.0.0.1:1;lr>"], ["Session-Expires: abc"],
            ["Content-Type: application/sdp", "Content-Type: text/plain"], ["Supported: " + "timer," * 500],
        ])
        return request(rng.choice(methods), user=rng.choice(users), to_tag=rng.choice([None, tag()]), extra=extra)

    def weird_first_line() -> bytes:
        line = rng.choice([
            f"INVITE sip:fuzz@{gw} SIP/3.0", f"invite sip:fuzz@{gw} SIP/2.0", f"INVITE tel:+123 SIP/2.0",
            f"INVITE mailto:x@127.0.0.1 SIP/2.0", "INVITE  SIP/2.0", f"IN\x00VITE sip:x@{gw} SIP/2.0",
            f"INVITE sip:{'9' * 3000}@{gw} SIP/2.0", f"INVITE <sip:x@{gw}> SIP/2.0", "SIP/2.0", "SIP/2.0 200",
            f"INVITE sip:x@{gw}", f"INVITE sip:x@[::1 SIP/2.0", f"INVITE sip:x@{gw}:99999 SIP/2.0",
        ])
        rest = request("INVITE", body=sdp, extra=["Content-Type: application/sdp"]).split(b"\r\n", 1)[1]
        return line.encode("utf-8", "surrogateescape") + b"\r\n" + rest

    def out_of_dialog_invite() -> bytes:
        display = rng.choice(['"\udcff\udcfe"', '"Eve\\"', '"' + "A" * 2000 + '"', "Bob", '"\x7f"'])
        body = rng.choice([sdp, b"v=0\r\nX-Injected: 1\r\n", b"\xff" * 50])
        return request("INVITE", user=rng.choice(users), body=body,
                       extra=["Content-Type: application/sdp", f"From: {display} <sip:x@127.0.0.1>;tag={tag()}",
                              rng.choice(["Session-Expires: 1", "Session-Expires: abc", "Supported: timer"])],
                       drop={"From"})

    def random_bytes() -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 1500)))

    def random_text() -> bytes:
        return "".join(rng.choice("INVITESIP/2.0 :;<>@\r\n\tabc123=,\"") for _ in range(rng.randint(1, 800))).encode()

    kinds = [random_bytes, random_text, truncated, missing_header, bad_cseq, bad_content_length, huge_header,
             response, in_dialog, in_dialog, garbage_values, weird_first_line, out_of_dialog_invite,
             lambda: request("CANCEL", to_tag=None), lambda: request("ACK", to_tag=rng.choice([None, tag()]))]
    return [kinds[i % len(kinds)]()[:60000] for i in range(count)]


def _drain(sock: socket.socket, replies: list[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            replies.append(sock.recv(65535))
            continue
        except BlockingIOError:
            pass
        except OSError:  # e.g. ICMP port unreachable surfacing on the socket
            continue
        if time.monotonic() >= deadline:
            return
        time.sleep(0.01)


@pytest.mark.timeout(120)
def test_malformed_sip_datagrams_do_not_disturb_a_call(embedded_gateway, client_factory):
    gw = embedded_gateway
    carol, dave = client_factory(gw), client_factory(gw)
    assert carol.register("5003", PASSWORDS["5003"])["type"] == "registered"
    assert dave.register("5004", PASSWORDS["5004"])["type"] == "registered"
    dave_call = start_call(carol, dave, "5004", "sipfuzz")
    live = re.findall(r"call out call=sipfuzz sip_call_id=(\S+)", gw.log_text())
    assert live, "the gateway logs the SIP Call-ID of an outbound call"
    calls_before = health(gw)["calls"]
    log_mark = len(gw.log_text())

    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        datagrams = sip_fuzz_datagrams(random.Random(4028), 200, gw.sip_port, sock.getsockname()[1], live[-1])
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", gw.sip_port))
            _drain(sock, replies, 0.003)
        _drain(sock, replies, 1.0)
    first_lines = sorted({r.split(b"\r\n", 1)[0].decode(errors="replace")[:40] for r in replies})
    print(f"sip fuzz: {len(datagrams)} datagrams sent, {len(replies)} replies: {first_lines}")

    assert gw.proc is not None and gw.proc.poll() is None, "kamailio died"
    doc = health(gw)
    assert doc["status"] == "up" and doc["calls"] == calls_before, doc
    carol.assert_no_message(0.2)
    dave.assert_no_message(0.2)
    end_call(carol, dave, "sipfuzz", dave_call)
    assert wait_calls(gw, 0)["calls"] == 0
    # Nothing escaped the request route (test_inbound_invite_with_non_utf8_bytes_gets_a_final_response).
    assert unhandled(gw.log_text()[log_mark:]) == []


def _invite(gw_port: int, my_port: int, call_id: str, sdp: bytes, display_name: bytes) -> bytes:
    head = (f"INVITE sip:7777@127.0.0.1:{gw_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{my_port};rport;branch=z9hG4bK{call_id}\r\n"
            "Max-Forwards: 70\r\n").encode()
    head += b'From: "' + display_name + b'" <sip:caller@127.0.0.1>;tag=' + call_id.encode() + b"\r\n"
    head += (f"To: <sip:7777@127.0.0.1:{gw_port}>\r\nCall-ID: {call_id}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
             f"Contact: <sip:caller@127.0.0.1:{my_port}>\r\nContent-Type: application/sdp\r\n"
             f"Content-Length: {len(sdp)}\r\n\r\n").encode()
    return head + sdp


_LATIN1_SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Caf\xe9\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               b"a=charset:ISO-8859-1\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
@pytest.mark.parametrize("sdp,display_name", [
    pytest.param(_LATIN1_SDP.replace(b"\xe9", b"e"), b"Caller", id="utf8-control"),
    pytest.param(_LATIN1_SDP, b"Caller", id="latin1-sdp-with-a=charset"),
    pytest.param(_LATIN1_SDP.replace(b"\xe9", b"e"), b"Jos\xe9", id="latin1-display-name"),
])
def test_inbound_invite_with_non_utf8_bytes_gets_a_final_response(embedded_gateway, sdp, display_name):
    """Found by the SIP fuzzing: KSR.pv.get raised UnicodeDecodeError on such bytes after t_newtran,
    so the INVITE was never answered. The DN 7777 does not exist: 404, or 400 for the bytes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        call_id = "enc%x" % random.getrandbits(48)
        sock.sendto(_invite(embedded_gateway.sip_port, sock.getsockname()[1], call_id, sdp, display_name),
                    ("127.0.0.1", embedded_gateway.sip_port))
        deadline = time.monotonic() + 3.0
        finals = []
        while not finals and time.monotonic() < deadline:
            try:
                data = sock.recv(65535)
            except socket.timeout:
                continue
            status = data.split(b"\r\n", 1)[0]
            if call_id.encode() in data and re.match(rb"SIP/2\.0 [2-6]\d\d ", status):
                finals.append(status)
    assert finals, "no final response"
    if display_name == b"Caller" and b"\xe9" not in sdp:
        assert finals[0].startswith(b"SIP/2.0 404"), finals
