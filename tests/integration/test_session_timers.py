"""Session timers (RFC 4028) against SIPp peers: refresh, 422 retry, failed refresh, expiry."""

import re

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from harness.sipp import Sipp, free_udp_port
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(upstream_agents):
    return upstream_agents(1)[0]


def test_gateway_refreshes_when_it_is_the_refresher(agent, registrar_port, tmp_path):
    with Sipp("uas_session_timer_refresh.xml", tmp_path, local_port=registrar_port, timeout=40) as sipp:
        assert agent.request("call", {"to": "6001", "callId": "st", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        # Two refresh re-INVITEs (every 2 s for Session-Expires: 4) reach SIPp while the browser is idle.
        deadline_msgs = lambda: len(re.findall(r"^INVITE sip:", sipp.messages(), re.M))  # noqa: E731
        agent.assert_no_message(5.0, "callEnded")
        assert deadline_msgs() >= 3, sipp.messages()[-2000:]
        agent.request("hangup", {"callId": "st"})
        assert sipp.wait(15) == 0, sipp.describe()
    invite = sipp.messages().split("INVITE sip:", 2)[1]
    assert re.search(r"^Supported: timer", invite, re.M) and re.search(r"^Session-Expires: 1800", invite, re.M)


def test_422_is_retried_at_the_larger_min_se(agent, registrar_port, tmp_path):
    with Sipp("uas_session_timer_422.xml", tmp_path, local_port=registrar_port, timeout=40) as sipp:
        reply = agent.request("call", {"to": "6001", "callId": "st422", "sdp": CHROME_OFFER})
        assert reply["type"] == "callAccepted", reply
        agent.request("hangup", {"callId": "st422"})
        assert sipp.wait(15) == 0, sipp.describe()
    assert "422 Session Interval Too Small" in sipp.messages()


def test_failed_refresh_ends_the_call(agent, registrar_port, tmp_path):
    with Sipp("uas_session_timer_refresh_fails.xml", tmp_path, local_port=registrar_port, timeout=40) as sipp:
        assert agent.request("call", {"to": "6001", "callId": "stf", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        ended = agent.wait_for("callEnded", timeout=10, callId="stf")
        assert ended["payload"]["by"] == "local"
        assert ended["payload"]["reason"] in ("session_expired", "dialog_gone")
        assert sipp.wait(15) == 0, sipp.describe()


@pytest.fixture(scope="module")
def short_se_gateway(workdir):
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_MIN_SE": "2"}).start()
    yield gw
    gw.stop()


def test_session_expires_without_refresh_from_the_caller(short_se_gateway, tmp_path):
    with WsClient(short_se_gateway.ws_url) as agent:
        assert agent.register("5001", PASSWORDS["5001"])["type"] == "registered"
        with Sipp("uac_session_timer_expires.xml", tmp_path, local_port=free_udp_port(),
                  remote=short_se_gateway.sip_hostport, service="5001", timeout=30) as sipp:
            call_id = agent.wait_for("incomingCall")["payload"]["callId"]
            assert agent.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
            ended = agent.wait_for("callEnded", timeout=10, callId=call_id)
            assert ended["payload"] == {"callId": call_id, "by": "local", "reason": "session_expired"}
            assert sipp.wait(15) == 0, sipp.describe()


def test_too_small_session_interval_gets_422(short_se_gateway, tmp_path):
    with WsClient(short_se_gateway.ws_url) as agent:
        assert agent.register("5002", PASSWORDS["5002"])["type"] == "registered"
        with Sipp("uac_session_timer_422.xml", tmp_path, local_port=free_udp_port(),
                  remote=short_se_gateway.sip_hostport, service="5002", timeout=20) as sipp:
            assert sipp.wait(15) == 0, sipp.describe()
        agent.assert_no_message(0.5, "incomingCall")
    assert re.search(r"^Min-SE: 2", sipp.messages(), re.M)
