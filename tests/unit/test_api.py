"""wsgw.api: the REST API under /api/v1/ (routing, bearer auth, documents, admin hang-up)."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from fakes import START_TIME, parse_headers, register
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from wsgw import VERSION, api, calls, registrations
from wsgw.calls import CallPayload, InboundInvite
from wsgw.protocol import RegisterPayload
from wsgw.sip_port import SipReply
from wsgw.store import CALLS, COUNTERS

TOKEN = "s3cret-token-for-tests"
AUTH = f"Bearer {TOKEN}"
PHONE_OFFER = "\r\n".join([
    "v=0", "o=phone 1 1 IN IP4 10.0.0.2", "s=-", "c=IN IP4 10.0.0.2", "t=0 0",
    "m=audio 40000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000", "a=sendrecv", "",
])
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def ctx(make_ctx):
    return make_ctx(embedded=True, api_token=TOKEN)


OPENAPI = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())


def _json_schema(node):
    """An OpenAPI 3.0 schema as JSON Schema (nullable -> type null; refs into $defs)."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return {"$ref": node["$ref"].replace("#/components/schemas/", "#/$defs/")}
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("nullable", "example")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


_DEFS = _json_schema(OPENAPI["components"]["schemas"])


def _template(path):
    path = path.split("?")[0]
    for pattern, template in ((r"/api/v1/dns/[^/]+", "/api/v1/dns/{dn}"), (r"/api/v1/calls/[^/]+", "/api/v1/calls/{callId}")):
        if re.fullmatch(pattern, path):
            return template
    return path


def conforms(method, path, resp):
    """The ApiResponse is one docs/openapi.yaml declares: status, headers, body schema."""
    operation = OPENAPI["paths"][_template(path)][method.lower()]
    declared = operation["responses"][str(resp.status)]
    if "$ref" in declared:
        declared = OPENAPI["components"]["responses"][declared["$ref"].rsplit("/", 1)[-1]]
    for header in resp.headers:
        assert header in declared.get("headers", {}), f"{header} not declared for {method} {path} {resp.status}"
    _validator(declared["content"]["application/json"]["schema"]["$ref"]).validate(resp.body)
    return resp


_VALIDATORS: dict = {}


def _validator(ref):
    if ref not in _VALIDATORS:
        schema = {"$ref": ref.replace("#/components/schemas/", "#/$defs/"), "$defs": _DEFS}
        _VALIDATORS[ref] = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return _VALIDATORS[ref]


def get(ctx, path, auth=AUTH):
    return conforms("GET", path, api.handle(ctx, "GET", path, auth))


def delete(ctx, path, auth=AUTH):
    return conforms("DELETE", path, api.handle(ctx, "DELETE", path, auth))


def place(ctx, conn, call_id="c1", to="5002"):
    calls.place_call(ctx, conn, "r1", CallPayload(to=to, call_id=call_id, sdp=CHROME_OFFER))
    return ctx.sip.requests[-1]


def answer_invite(ctx, invite, clock=None):
    h = parse_headers(invite.headers)
    from_tag = re.search(r";tag=([^;>\s]+)", h["From"]).group(1)
    calls.on_reply(ctx, SipReply(status=200, reason="OK", call_id=h["Call-ID"], cseq=int(h["CSeq"].split()[0]),
                                 method="INVITE", from_tag=from_tag, to_tag="callee-tag",
                                 headers={"contact": "<sip:5002@10.0.0.2:5062>"}, body=PCMU_ANSWER))


def ring_inbound(ctx, dn="5001"):
    invite = InboundInvite(
        sip_call_id="inbound-1@10.0.0.2", dn=dn, from_uri="sip:6001@10.0.0.2", from_user="6001", display_name="Bob",
        from_tag="caller-tag", to_uri=f"sip:{dn}@127.0.0.1:5060", contact="<sip:6001@10.0.0.2:5062>",
        record_route="", cseq=101, sdp=PHONE_OFFER)
    calls.ring_inbound(ctx, invite, 11, 22, "gw-ring-tag")


def second_tab(ctx, conn):
    registrations.register(ctx, conn, "reg2", RegisterPayload(dn="5001", password="secret5001"))
    ctx.outbox.clear()


def only_call(ctx):
    keys = ctx.store.keys(CALLS)
    assert len(keys) == 1, keys
    return calls.Call.load(ctx, keys[0])


# ---- routing, errors, auth ----


def test_health_is_public_and_reports_version_uptime_and_counts(ctx, caller, clock):
    api.record_start(ctx)
    clock.advance(42.7)
    resp = get(ctx, "/api/v1/health", "")
    assert resp.status == 200 and resp.reason == "OK"
    body = resp.body
    assert body["status"] == "up" and body["version"] == VERSION
    assert body["uptimeSeconds"] == 42
    assert body["startedAt"] == api.iso(START_TIME) == "2023-11-14T22:13:20.000Z"
    assert (body["registrations"], body["connections"], body["calls"]) == (1, 1, 0)
    assert body["mode"] == "embedded"
    assert "legacyRegistrations" not in body  # /health has it; this contract (docs/openapi.yaml) does not grow


def test_start_time_is_recorded_once(ctx, clock):
    api.record_start(ctx)
    clock.advance(100)
    api.record_start(ctx)  # another worker starting later
    assert float(ctx.store.get(COUNTERS, api.START_KEY)) == START_TIME
    assert get(ctx, "/api/v1/health").body["uptimeSeconds"] == 100


def test_health_without_a_configured_token(make_ctx):
    ctx = make_ctx(embedded=True)
    assert api.handle(ctx, "GET", "/api/v1/health").status == 200


@pytest.mark.parametrize("path", ["/api/v1/dns", "/api/v1/dns/5001", "/api/v1/calls", "/api/v1/calls/abc"])
def test_without_a_configured_token_the_rest_is_forbidden(make_ctx, path):
    ctx = make_ctx(embedded=True)  # no GW_API_TOKEN
    for auth in ("", "Bearer ", "Bearer anything"):
        resp = get(ctx, path, auth)
        assert resp.status == 403
        assert resp.body["error"]["code"] == "api_disabled"


@pytest.mark.parametrize("path", ["/api/v1/dns", "/api/v1/dns/5001", "/api/v1/calls", "/api/v1/calls/abc"])
@pytest.mark.parametrize("auth", ["", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", TOKEN, f"Bearer {TOKEN}x",
                                  f"Bearer {TOKEN[:-1]}", "Bearer \udcff", "Bearer ü"])
def test_missing_or_wrong_token_is_401_with_www_authenticate(ctx, path, auth):
    resp = get(ctx, path, auth)
    assert resp.status == 401 and resp.reason == "Unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="wsgw"')
    assert resp.body["error"]["code"] == "unauthorized"
    assert set(resp.body) == {"error"} and set(resp.body["error"]) == {"code", "message"}


def test_wrong_token_says_invalid_token(ctx):
    assert 'error="invalid_token"' in get(ctx, "/api/v1/dns", "Bearer nope").headers["WWW-Authenticate"]
    assert "error=" not in get(ctx, "/api/v1/dns", "").headers["WWW-Authenticate"]


@pytest.mark.parametrize("auth", [AUTH, f"bearer {TOKEN}", f"BEARER   {TOKEN}  ", f" Bearer {TOKEN}"])
def test_the_token_is_accepted_in_any_case_of_the_scheme(ctx, auth):
    assert get(ctx, "/api/v1/dns", auth).status == 200


def test_token_comes_from_the_environment():
    from wsgw.config import GatewayConfig

    assert GatewayConfig.from_env({"GW_API_TOKEN": "  abc  "}).api_token == "abc"
    assert GatewayConfig.from_env({}).api_token == ""
    assert "abc" not in repr(GatewayConfig.from_env({"GW_API_TOKEN": "abc"}))


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/v1", "/api/v1/", "/api/v2/health", "/api/v1/nope",
                                  "/api/v1/health/x", "/api/v1/dns/", "/api/v1/calls/", "/api/v1/calls/a/b",
                                  "/api/v1//calls", "/apiv1/health"])
def test_unknown_paths_are_404_json(ctx, path):
    resp = api.handle(ctx, "GET", path, AUTH)
    assert resp.status == 404
    assert resp.body == {"error": {"code": "not_found", "message": "no such resource"}}


def test_unknown_path_is_404_even_without_token(ctx):
    assert api.handle(ctx, "GET", "/api/v1/nope", "").status == 404


@pytest.mark.parametrize("method,path,allow", [
    ("POST", "/api/v1/health", "GET"), ("DELETE", "/api/v1/dns", "GET"), ("PUT", "/api/v1/dns/5001", "GET"),
    ("POST", "/api/v1/calls", "GET"), ("PATCH", "/api/v1/calls/abc", "GET, DELETE"), ("HEAD", "/api/v1/calls", "GET"),
])
def test_wrong_method_is_405_with_allow(ctx, method, path, allow):
    resp = api.handle(ctx, method, path, "")  # before authentication: the method is no secret
    assert resp.status == 405
    assert resp.headers == {"Allow": allow}
    assert resp.body["error"]["code"] == "method_not_allowed"


def test_query_string_is_ignored(ctx):
    assert get(ctx, "/api/v1/dns?x=1").status == 200
    assert api.handle(ctx, "GET", "/api/v1/health?verbose").status == 200


def test_a_handler_bug_is_a_500_json(ctx, monkeypatch):
    def boom(ctx):
        raise RuntimeError("bug")

    monkeypatch.setattr(api, "list_calls", boom)
    resp = get(ctx, "/api/v1/calls")
    assert resp.status == 500 and resp.body["error"]["code"] == "internal"


# ---- call ids ----


@pytest.mark.parametrize("key", ["ws|127.0.0.1|40001#c1", "wss|2001:db8::7|40002#in-AbC_~.-", "x#" + "a" * 64])
def test_call_ids_are_url_safe_and_round_trip(key):
    api_id = api.call_api_id(key)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", api_id)
    assert api.call_key_of(api_id) == key


@pytest.mark.parametrize("api_id", ["", "!!!", "a/b", "abc=", "YQ", "a" * 257, "d3N8MTI3LjAuMC4xfDQwMDAxI2Mx=",
                                    "_w"])
def test_malformed_call_ids_name_no_call(api_id):
    assert api.call_key_of(api_id) is None


# ---- DNs ----


def test_dns_lists_subscribers_and_registrations(ctx, caller, clock):
    body = get(ctx, "/api/v1/dns").body
    dns = {d["dn"]: d for d in body["dns"]}
    assert set(dns) == {"5001", "5002", "+4915112345678"}
    assert dns["5001"]["registered"] is True and dns["5002"]["registered"] is False
    assert dns["5002"]["state"] == "unregistered" and dns["5002"]["connections"] == []


def test_dn_document_of_a_registered_embedded_dn(ctx, caller, conn2, clock):
    second_tab(ctx, conn2)
    clock.advance(5)
    doc = get(ctx, "/api/v1/dns/5001").body
    assert doc["dn"] == "5001" and doc["registered"] is True and doc["state"] == "registered"
    assert doc["mode"] == "embedded" and doc["displayName"] == "Alice"
    assert doc["registeredAt"] == api.iso(START_TIME) and doc["expires"] == 600
    assert doc["expiresAt"] is None and doc["refreshAt"] is None  # lives as long as the WebSocket
    assert doc["connections"] == [
        {"id": "ws|192.0.2.10|40001", "transport": "ws", "ip": "192.0.2.10", "port": 40001,
         "since": api.iso(START_TIME)},
        {"id": "wss|2001:db8::7|40002", "transport": "wss", "ip": "2001:db8::7", "port": 40002,
         "since": api.iso(START_TIME)},
    ]
    assert doc["calls"] == []


def test_dn_document_of_an_upstream_registration(make_ctx, conn, clock):
    ctx = make_ctx(embedded=False, api_token=TOKEN)
    registrations.register(ctx, conn, "reg", RegisterPayload(dn="7001", password="pw"))
    h = parse_headers(ctx.sip.last.headers)
    assert get(ctx, "/api/v1/dns/7001").body["state"] == "pending"
    clock.advance(1)
    registrations.on_register_reply(ctx, SipReply(
        status=200, reason="OK", call_id=h["Call-ID"], cseq=int(h["CSeq"].split()[0]), method="REGISTER",
        headers={"contact": "<sip:7001@127.0.0.1:5060>;expires=300"}))
    doc = get(ctx, "/api/v1/dns/7001").body
    assert doc["registered"] is True and doc["mode"] == "upstream" and doc["expires"] == 300
    assert doc["expiresAt"] == api.iso(START_TIME + 1 + 300)
    assert doc["refreshAt"] == api.iso(START_TIME + 1 + 240)
    assert "password" not in repr(doc) and "pw" not in doc.values()
    # Upstream, any well-formed DN may exist at the registrar: not registered here.
    other = get(ctx, "/api/v1/dns/7999")
    assert other.status == 200 and other.body["registered"] is False and other.body["mode"] == "upstream"


def test_no_secret_reaches_the_documents(make_ctx, conn):
    ctx = make_ctx(embedded=False, api_token=TOKEN)
    registrations.register(ctx, conn, "reg", RegisterPayload(dn="7001", password="hunter2"))
    for path in ("/api/v1/dns", "/api/v1/dns/7001", "/api/v1/calls"):
        assert "hunter2" not in repr(get(ctx, path).body)


@pytest.mark.parametrize("dn", ["9999", "bad dn", "a" * 33, "%00"])
def test_unknown_or_malformed_dn_is_404_in_embedded_mode(ctx, dn):
    resp = get(ctx, "/api/v1/dns/" + dn)
    assert resp.status == 404 and resp.body["error"]["code"] == "not_found"


def test_dn_in_path_is_percent_decoded(ctx):
    resp = get(ctx, "/api/v1/dns/%2B4915112345678")
    assert resp.status == 200 and resp.body["dn"] == "+4915112345678"


def test_dn_document_lists_its_calls(ctx, caller, conn2, clock):
    register(ctx, conn2, "5002")
    calls.place_call(ctx, caller, "r0", CallPayload(to="0900123", call_id="c1", sdp=CHROME_OFFER))  # refused
    place(ctx, caller, "c2")
    clock.advance(1)
    ring_inbound(ctx, dn="5002")  # another call, to 5002
    doc = get(ctx, "/api/v1/dns/5001").body
    assert [(c["callId"], c["direction"]) for c in doc["calls"]] == [("c2", "outbound")]
    assert [c["direction"] for c in get(ctx, "/api/v1/dns/5002").body["calls"]] == ["inbound"]
    listed = {d["dn"]: d for d in get(ctx, "/api/v1/dns").body["dns"]}
    assert [c["callId"] for c in listed["5001"]["calls"]] == ["c2"]
    assert len(listed["5002"]["calls"]) == 1 and listed["+4915112345678"]["calls"] == []


# ---- calls ----


def test_call_documents_through_the_life_of_an_outbound_call(ctx, caller, clock):
    invite = place(ctx, caller, "c1")
    call = only_call(ctx)
    api_id = api.call_api_id(call.key)
    listed = get(ctx, "/api/v1/calls").body["calls"]
    assert [c["id"] for c in listed] == [api_id]
    doc = get(ctx, f"/api/v1/calls/{api_id}").body
    assert doc == listed[0]
    assert doc["state"] == "calling" and doc["direction"] == "outbound"
    assert doc["callId"] == "c1" and doc["dn"] == "5001" and doc["peer"] == "5002"
    assert doc["sipCallId"] == call.sip_call_id and doc["connection"] == caller.key
    assert doc["createdAt"] == api.iso(START_TIME) and doc["answeredAt"] is None
    assert doc["durationSeconds"] is None and doc["ageSeconds"] == 0
    assert doc["codecs"] == ["PCMU", "PCMA", "telephone-event"]
    assert doc["remoteUri"].startswith("sip:5002@") and doc["localUri"].startswith("sip:5001@")
    clock.advance(2)
    answer_invite(ctx, invite)
    clock.advance(3.5)
    doc = get(ctx, f"/api/v1/calls/{api_id}").body
    assert doc["state"] == "confirmed"
    assert doc["answeredAt"] == api.iso(START_TIME + 2) and ISO.match(doc["answeredAt"])
    assert doc["durationSeconds"] == 3.5 and doc["ageSeconds"] == 5.5


def test_unknown_call_is_404(ctx, caller):
    place(ctx, caller, "c1")
    for api_id in (api.call_api_id(caller.key + "#other"), "nope", "a" * 300):
        for method in ("GET", "DELETE"):
            resp = conforms(method, "/api/v1/calls/x", api.handle(ctx, method, f"/api/v1/calls/{api_id}", AUTH))
            assert resp.status == 404 and resp.body["error"]["code"] == "not_found"
    assert len(ctx.sip.requests) == 1  # nothing sent


def test_inbound_call_rings_on_every_tab_as_one_record_each(ctx, caller, conn2):
    second_tab(ctx, conn2)
    ring_inbound(ctx)
    listed = get(ctx, "/api/v1/calls").body["calls"]
    assert len(listed) == 2 and len({c["id"] for c in listed}) == 2
    assert {c["connection"] for c in listed} == {caller.key, conn2.key}
    assert all(c["direction"] == "inbound" and c["state"] == "ringing" and c["peer"] == "6001" for c in listed)
    assert len({c["sipCallId"] for c in listed}) == 1  # why the SIP Call-ID cannot be the API id


# ---- DELETE: admin hang-up ----


def test_delete_confirmed_call_sends_bye_and_tells_the_browser(ctx, caller, clock):
    invite = place(ctx, caller, "c1")
    answer_invite(ctx, invite)
    ctx.outbox.clear()
    api_id = api.call_api_id(only_call(ctx).key)
    resp = delete(ctx, f"/api/v1/calls/{api_id}")
    assert resp.status == 202 and resp.reason == "Accepted"
    assert resp.body == {"id": api_id, "callId": "c1", "dn": "5001", "action": "bye", "state": "ending"}
    assert ctx.sip.last.method == "BYE"
    assert ctx.outbox.messages(caller) == [
        {"type": "callEnded", "payload": {"callId": "c1", "by": "local", "reason": "admin"}}]
    # A second DELETE while the BYE is in flight: the call is already ending.
    again = delete(ctx, f"/api/v1/calls/{api_id}")
    assert again.status == 409 and again.body["error"]["code"] == "invalid_state"


def test_delete_ringing_outbound_call_cancels_it(ctx, caller):
    place(ctx, caller, "c1")
    ctx.outbox.clear()
    call = only_call(ctx)
    resp = delete(ctx, f"/api/v1/calls/{api.call_api_id(call.key)}")
    assert resp.status == 202 and resp.body["action"] == "cancel" and resp.body["state"] == "cancelling"
    assert ctx.sip.cancels == [(call.sip_call_id, call.invite_cseq)]
    types = [(m["type"], m["payload"].get("reason")) for m in ctx.outbox.messages(caller)]
    assert types == [("callFailed", "cancelled"), ("callEnded", "admin")]


def test_delete_ringing_inbound_call_answers_486(ctx, caller):
    ring_inbound(ctx)
    ctx.outbox.clear()
    call = only_call(ctx)
    resp = delete(ctx, f"/api/v1/calls/{api.call_api_id(call.key)}")
    assert resp.status == 202 and resp.body["action"] == "reject" and resp.body["state"] == "ended"
    assert ctx.sip.suspended_replies[-1][2:4] == (486, "Busy Here")
    assert ctx.outbox.messages(caller)[-1]["payload"] == {"callId": call.call_id, "by": "local", "reason": "admin"}
    assert ctx.store.keys(CALLS) == []


def test_delete_needs_the_token(ctx, caller):
    place(ctx, caller, "c1")
    api_id = api.call_api_id(only_call(ctx).key)
    assert api.handle(ctx, "DELETE", f"/api/v1/calls/{api_id}", "").status == 401
    assert api.handle(ctx, "DELETE", f"/api/v1/calls/{api_id}", "Bearer wrong").status == 401
    assert only_call(ctx).state == "calling" and ctx.sip.cancels == []
