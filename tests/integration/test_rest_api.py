"""The REST API under /api/v1/ on the real gateway: bearer auth, every endpoint with a
registered JSON client and a live call to a SIPp UAS, the admin hang-up (DELETE), and
every endpoint checked against docs/openapi.yaml (schemathesis)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from harness.gateway import PASSWORDS, Gateway, embedded_env
from harness.ports import free_port
from harness.sdp import CHROME_OFFER
from harness.sipp import Sipp
from wsgw import VERSION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
TOKEN = "integration-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ECHO = "9196"  # routed to GW_ECHO_URI: the SIPp UAS of this module
# Examples per operation and mode; the same ones each run unless API_FUZZ_RANDOM=1 (for longer hunts).
FUZZ_EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "25"))
FUZZ_RANDOM = os.environ.get("API_FUZZ_RANDOM") == "1"
# Kamailio parses HTTP requests with its SIP parser, which checks these headers (and the
# compact forms v, t, l) at once: a value it cannot parse gets the request dropped without a
# reply (README, REST API). Generated requests do not send them.
SIP_PARSED_HEADERS = {"v", "via", "t", "to", "l", "content-length", "cseq"}


@pytest.fixture(scope="module")
def uas_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(workdir: Path, uas_port: int) -> Iterator[Gateway]:
    gateway = Gateway(workdir, env=embedded_env(uas_port, GW_API_TOKEN=TOKEN)).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def api_schema(gw: Gateway):
    schema = schemathesis.openapi.from_path(OPENAPI)
    schema.config.update(base_url=gw.http_url)
    return schema


def api(gw: Gateway, method: str, path: str, headers: dict | None = AUTH) -> requests.Response:
    return requests.request(method, gw.http_url + path, headers=headers, timeout=5)


def check(schema, template: str, resp: requests.Response) -> dict:
    """The response conforms to docs/openapi.yaml (status, headers, body); returns its JSON."""
    schema[template][resp.request.method].validate_response(resp)
    assert resp.headers["Content-Type"] == "application/json"
    return resp.json()


def test_health_is_public_and_the_rest_needs_the_token(gw, api_schema):
    resp = api(gw, "GET", "/api/v1/health", headers=None)
    assert resp.status_code == 200
    health = check(api_schema, "/api/v1/health", resp)
    assert health["status"] == "up" and health["version"] == VERSION and health["mode"] == "embedded"
    assert 0 <= health["uptimeSeconds"] < 600
    for path in ("/api/v1/dns", "/api/v1/dns/5001", "/api/v1/calls", "/api/v1/calls/abc"):
        missing = api(gw, "GET", path, headers=None)
        assert missing.status_code == 401, path
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="wsgw"'
        assert check(api_schema, path.replace("5001", "{dn}").replace("abc", "{callId}"), missing)["error"]["code"] == "unauthorized"
        wrong = api(gw, "GET", path, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="wsgw", error="invalid_token"'
    assert api(gw, "DELETE", "/api/v1/calls/abc", headers=None).status_code == 401


def test_unknown_paths_and_methods(gw, api_schema):
    for path in ("/api/v1/nope", "/api/v1", "/api/v2/health", "/api/v1/calls/a/b"):
        resp = api(gw, "GET", path)
        assert resp.status_code == 404, path
        assert resp.json() == {"error": {"code": "not_found", "message": "no such resource"}}
    resp = api(gw, "POST", "/api/v1/calls")
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET"
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["error"]["code"] == "method_not_allowed"
    resp = api(gw, "PUT", "/api/v1/calls/abc")
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, DELETE"
    # The rest of the HTTP port is unchanged.
    assert requests.get(gw.http_url + "/health", timeout=5).json()["status"] == "up"


def test_every_endpoint_with_a_live_call_then_admin_hangup(gw, api_schema, client_factory, uas_port, tmp_path):
    agent = client_factory(gw)
    assert agent.register("5001", PASSWORDS["5001"], displayName="Alice")["type"] == "registered"
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=uas_port, timeout=30) as sipp:
        reply = agent.request("call", {"to": ECHO, "callId": "api1", "sdp": CHROME_OFFER})
        assert reply["type"] == "callAccepted", reply

        health = check(api_schema, "/api/v1/health", api(gw, "GET", "/api/v1/health"))
        assert (health["registrations"], health["connections"], health["calls"]) == (1, 1, 1)

        listed = check(api_schema, "/api/v1/calls", api(gw, "GET", "/api/v1/calls"))["calls"]
        assert len(listed) == 1
        call = listed[0]
        assert call["callId"] == "api1" and call["dn"] == "5001" and call["peer"] == ECHO
        assert call["direction"] == "outbound" and call["state"] == "confirmed"
        assert call["answeredAt"] is not None and call["durationSeconds"] >= 0
        assert call["codecs"] == ["PCMU", "PCMA", "telephone-event"]
        assert call["remoteUri"] == f"sip:{ECHO}@127.0.0.1:{uas_port}"
        assert f"Call-ID: {call['sipCallId']}" in sipp.messages()

        one = check(api_schema, "/api/v1/calls/{callId}", api(gw, "GET", f"/api/v1/calls/{call['id']}"))
        assert {k: v for k, v in one.items() if k not in ("ageSeconds", "durationSeconds")} == \
            {k: v for k, v in call.items() if k not in ("ageSeconds", "durationSeconds")}

        dn = check(api_schema, "/api/v1/dns/{dn}", api(gw, "GET", "/api/v1/dns/5001"))
        assert dn["registered"] is True and dn["mode"] == "embedded" and dn["displayName"] == "Alice"
        assert len(dn["connections"]) == 1 and dn["connections"][0]["transport"] == "ws"
        assert dn["connections"][0]["id"] == call["connection"]
        assert [c["id"] for c in dn["calls"]] == [call["id"]]

        dns = {d["dn"]: d for d in check(api_schema, "/api/v1/dns", api(gw, "GET", "/api/v1/dns"))["dns"]}
        assert dns["5001"]["registered"] is True and dns["5002"]["registered"] is False
        assert set(dns) >= set(PASSWORDS)
        assert api(gw, "GET", "/api/v1/dns/9999").status_code == 404

        # Admin hang-up: BYE to SIPp, callEnded (reason admin) to the browser.
        resp = api(gw, "DELETE", f"/api/v1/calls/{call['id']}")
        assert resp.status_code == 202, resp.text
        result = check(api_schema, "/api/v1/calls/{callId}", resp)
        assert result["action"] == "bye" and result["callId"] == "api1" and result["state"] in ("ending", "ended")
        ended = agent.wait_for("callEnded", callId="api1")
        assert ended["payload"]["by"] == "local" and ended["payload"]["reason"] == "admin"
        assert "id" not in ended  # an event: the browser did not ask
        assert sipp.wait(15) == 0, sipp.describe()
    assert "BYE sip:" in sipp.messages()
    deadline = time.monotonic() + 5
    while api(gw, "GET", f"/api/v1/calls/{call['id']}").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = api(gw, "GET", f"/api/v1/calls/{call['id']}")
    assert gone.status_code == 404 and check(api_schema, "/api/v1/calls/{callId}", gone)["error"]["code"] == "not_found"
    assert api(gw, "DELETE", f"/api/v1/calls/{call['id']}").status_code == 404


def test_every_endpoint_conforms_to_the_openapi_document(gw, api_schema, client_factory):
    """Schemathesis generates requests for every operation (DELETE too: no call exists
    here, so no generated id can name one) and checks each response against the document."""
    agent = client_factory(gw)
    assert agent.register("5003", PASSWORDS["5003"])["type"] == "registered"
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("GET", "/api/v1/health"), ("GET", "/api/v1/dns"), ("GET", "/api/v1/dns/{dn}"),
        ("GET", "/api/v1/calls"), ("GET", "/api/v1/calls/{callId}"), ("DELETE", "/api/v1/calls/{callId}"),
    }
    session = requests.Session()
    for operation in operations:
        # Positive data (fits the document) and, where there are path parameters, negative data.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if "{" in operation.path else [])
        for mode in modes:
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=not FUZZ_RANDOM,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                for name in list(case.headers or {}):
                    if name.lower() in SIP_PARSED_HEADERS:
                        del case.headers[name]
                case.call_and_validate(session=session, headers=AUTH, timeout=5)

            run()
    assert agent.request("ping")["type"] == "pong"  # the gateway is still fine
