"""Mid-call control against SIPp peers: hold/resume, the far end's re-INVITE, DTMF."""

import re
import time

import pytest

from harness.sdp import CHROME_OFFER, with_direction
from harness.sipp import Sipp

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(upstream_agents):
    return upstream_agents(1)[0]


def connected(agent, sipp_port, tmp_path, scenario, call_id="m1"):
    sipp = Sipp(scenario, tmp_path, local_port=sipp_port, timeout=40).__enter__()
    reply = agent.request("call", {"to": "6001", "callId": call_id, "sdp": CHROME_OFFER})
    assert reply["type"] == "callAccepted", reply
    return sipp


def wait_until(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def reinvites(messages: str) -> list[str]:
    """Bodies of the re-INVITEs SIPp received (the 2nd and later INVITEs)."""
    parts = re.split(r"\n(?=INVITE sip:)", messages)
    return [p for p in parts if p.startswith("INVITE sip:")][1:]


def test_hold_then_resume(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_hold_resume.xml")
    try:
        held = agent.request("hold", {"callId": "m1", "sdp": with_direction(CHROME_OFFER, "sendonly")})
        assert held["type"] == "held", held
        assert "a=recvonly" in held["payload"]["sdp"]
        resumed = agent.request("resume", {"callId": "m1", "sdp": CHROME_OFFER})
        assert resumed["type"] == "resumed", resumed
        assert "a=sendrecv" in resumed["payload"]["sdp"]
        assert agent.request("hangup", {"callId": "m1"})["type"] == "callEnded"
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()
    sent = reinvites(sipp.messages())
    assert len(sent) == 2
    assert "a=sendonly" in sent[0] and "opus" not in sent[0]  # codec policy on re-INVITEs too
    cseqs = [int(re.search(r"^CSeq: (\d+) INVITE", m, re.M).group(1)) for m in sent]
    assert cseqs == sorted(cseqs) and cseqs[0] > 1


def test_glare_491_is_retried_without_the_browser_seeing_it(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_reinvite_491.xml")
    try:
        held = agent.request("hold", {"callId": "m1", "sdp": with_direction(CHROME_OFFER, "sendonly")}, timeout=15)
        assert held["type"] == "held", held
        agent.request("hangup", {"callId": "m1"})
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()
    assert "491 Request Pending" in sipp.messages()
    assert len(reinvites(sipp.messages())) == 2


def test_488_to_reinvite_keeps_the_call(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_reinvite_488.xml")
    try:
        reply = agent.request("hold", {"callId": "m1", "sdp": with_direction(CHROME_OFFER, "sendonly")})
        assert reply["type"] == "error"
        assert reply["payload"]["code"] == "peer_rejected"
        assert reply["payload"]["requestType"] == "hold"
        assert "488" in reply["payload"]["reason"]
        # Still up: a normal hangup sends BYE.
        assert agent.request("hangup", {"callId": "m1"})["payload"]["by"] == "local"
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()


def test_remote_reinvite_answered_by_the_browser(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_remote_hold.xml")
    try:
        offer = agent.wait_for("updateOffer", callId="m1")
        assert "a=sendonly" in offer["payload"]["sdp"]
        answer = with_direction(CHROME_OFFER, "recvonly")
        updated = agent.request("updateAnswer", {"callId": "m1", "sdp": answer})
        assert updated["type"] == "updated" and "a=recvonly" in updated["payload"]["sdp"]
        agent.request("hangup", {"callId": "m1"})
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()


def test_remote_reinvite_answered_by_the_gateway_when_the_browser_is_silent(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_remote_hold.xml")
    try:
        agent.wait_for("updateOffer", callId="m1")
        # No updateAnswer: after GW_UPDATE_TIMEOUT (5 s) the gateway answers with the last SDP,
        # direction mirrored; the scenario checks the 200 carries a=recvonly, then sends its ACK.
        assert wait_until(lambda: re.search(r"^ACK sip:", sipp.messages().split("a=sendonly", 1)[-1], re.M), 12)
        assert agent.request("updateAnswer", {"callId": "m1", "sdp": CHROME_OFFER})["payload"]["code"] == "invalid_state"
        agent.request("hangup", {"callId": "m1"})
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()
    answer = sipp.messages().split("a=sendonly", 1)[1].split("SIP/2.0 200 OK", 1)[1].split("ACK sip:", 1)[0]
    assert "a=recvonly" in answer


def test_dtmf_digits_go_out_as_info_in_order(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_dtmf_info.xml")
    try:
        reply = agent.request("dtmf", {"callId": "m1", "digits": "12#", "durationMs": 120})
        assert reply == {"type": "dtmfSent", "payload": {"callId": "m1", "digits": "12#"}, "id": reply["id"],
                         "seq": reply["seq"]}
        agent.request("hangup", {"callId": "m1"})
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()
    infos = re.findall(r"^INFO sip:.*?(?=^\S+ sip:|^SIP/2.0|\Z)", sipp.messages(), re.M | re.S)
    assert [re.search(r"Signal=(\S)", i).group(1) for i in infos] == ["1", "2", "#"]
    assert all("Duration=120" in i for i in infos)


def test_invalid_dtmf_digits_are_refused_before_sending(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_answer_wait_bye.xml")
    try:
        assert agent.request("dtmf", {"callId": "m1", "digits": "12x"})["payload"]["code"] == "invalid_payload"
        agent.request("hangup", {"callId": "m1"})
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()
    assert "INFO sip:" not in sipp.messages()


def test_incoming_info_becomes_dtmf_received(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_send_dtmf_info.xml")
    try:
        got = agent.wait_for("dtmfReceived", callId="m1")
        assert got["payload"] == {"callId": "m1", "digit": "5", "durationMs": 160}
        agent.request("hangup", {"callId": "m1"})
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()
