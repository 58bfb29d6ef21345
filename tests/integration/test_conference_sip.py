"""Conference: two calls joined through a bridge (SIPp plays the PBX and the bridge)."""

import re
from contextlib import contextmanager

import pytest

from harness.gateway import Gateway, SUBSCRIBERS
from harness.ports import free_port
from harness.sdp import CHROME_OFFER
from harness.sipp import Sipp
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bridge_port():
    return free_port()


@pytest.fixture(scope="module")
def pbx_port():
    return free_port()


@pytest.fixture(scope="module")
def conference_gateway(workdir, bridge_port, pbx_port):
    gw = Gateway(workdir, env={"GW_UPSTREAM": f"sip:127.0.0.1:{pbx_port}", "GW_SIP_TIMEOUT": "3",
                               "GW_CONFERENCE_URI": f"sip:{{room}}@127.0.0.1:{bridge_port}"}).start()
    yield gw
    gw.stop()


@contextmanager
def registered(gw, pbx_port, tmp_path, dn):
    """A client registered at a SIPp registrar on the PBX port; unregistered the same way at the
    end, so that no REGISTER reaches a later scenario on that port."""
    def registrar(name):
        return Sipp("registrar_challenge.xml", tmp_path / name, local_port=pbx_port, timeout=20,
                    keys={"expires": "600", "auth_user": "", "auth_pass": ""})

    agent = WsClient(gw.ws_url)
    try:
        with registrar("reg"):
            assert agent.register(dn, "pw")["type"] == "registered"
        yield agent
        with registrar("unreg") as sipp:
            assert agent.request("unregister")["type"] == "unregistered"
            assert sipp.wait(15) == 0, sipp.describe()
    finally:
        agent.close()


def test_two_calls_joined_through_the_bridge(conference_gateway, pbx_port, bridge_port, tmp_path):
    with registered(conference_gateway, pbx_port, tmp_path, "9001") as agent:
        pbx = Sipp("uas_refer_to_conference.xml", tmp_path, local_port=pbx_port, calls=2, timeout=40).__enter__()
        bridge = Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=bridge_port, timeout=40).__enter__()
        try:
            for call_id in ("a", "b"):
                assert agent.request("call", {"to": "6001", "callId": call_id, "sdp": CHROME_OFFER})["type"] == "callAccepted"
            reply = agent.request("conference", {"callIds": ["a", "b"], "callId": "conf", "sdp": CHROME_OFFER})
            assert reply["type"] == "conferenceStarted", reply
            room = reply["payload"]["room"]
            assert reply["payload"]["callIds"] == ["a", "b"]
            agent.wait_for("callAccepted", callId="conf")
            for call_id in ("a", "b"):
                assert agent.wait_for("callEnded", callId=call_id)["payload"]["reason"] == "transferred"
            assert pbx.wait(15) == 0, pbx.describe()
            # The agent stays in the bridge until it hangs up.
            assert agent.request("hangup", {"callId": "conf"})["type"] == "callEnded"
            assert bridge.wait(15) == 0, bridge.describe()
        finally:
            pbx.stop()
            bridge.stop()
    assert re.search(rf"^INVITE sip:{room}@127.0.0.1:{bridge_port} ", bridge.messages(), re.M)
    refers = re.findall(r"^Refer-To: (.*)$", pbx.messages(), re.M)
    assert len(refers) == 2 and all(f"<sip:{room}@127.0.0.1:{bridge_port}>" == r.strip() for r in refers)


def test_conference_refused_by_the_bridge_leaves_the_calls(conference_gateway, pbx_port, bridge_port, tmp_path):
    with registered(conference_gateway, pbx_port, tmp_path, "9002") as agent:
        pbx = Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=pbx_port, calls=2, timeout=40).__enter__()
        bridge = Sipp("uas_reject_486.xml", tmp_path, local_port=bridge_port, timeout=40).__enter__()
        try:
            for call_id in ("a", "b"):
                assert agent.request("call", {"to": "6001", "callId": call_id, "sdp": CHROME_OFFER})["type"] == "callAccepted"
            reply = agent.request("conference", {"callIds": ["a", "b"], "callId": "conf", "sdp": CHROME_OFFER})
            assert reply["payload"]["code"] == "peer_rejected" and "486" in reply["payload"]["reason"]
            for call_id in ("a", "b"):
                assert agent.request("hangup", {"callId": call_id})["payload"]["by"] == "local"
            assert pbx.wait(15) == 0, pbx.describe()
            assert bridge.wait(15) == 0, bridge.describe()
        finally:
            pbx.stop()
            bridge.stop()
    assert "REFER sip:" not in pbx.messages()


def test_conference_without_a_bridge_configured(upstream_agents):
    (agent,) = upstream_agents(1)
    reply = agent.request("conference", {"callIds": ["a", "b"], "callId": "c", "sdp": CHROME_OFFER})
    assert reply["payload"]["code"] == "invalid_state"
