"""Transfer with REFER against SIPp peers: blind, attended, failures, and REFER from the far end."""

import re
from urllib.parse import unquote

import pytest

from harness.gateway import PASSWORDS
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from harness.sipp import Sipp, free_udp_port

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(upstream_agents):
    return upstream_agents(1)[0]


def connected(agent, port, tmp_path, scenario, call_id="t1", **kw):
    sipp = Sipp(scenario, tmp_path, local_port=port, timeout=40, **kw).__enter__()
    reply = agent.request("call", {"to": "6001", "callId": call_id, "sdp": CHROME_OFFER})
    assert reply["type"] == "callAccepted", reply
    return sipp


def test_blind_transfer(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_refer_blind.xml")
    try:
        reply = agent.request("transfer", {"callId": "t1", "target": "6002"})
        assert reply["type"] == "transferAccepted", reply
        assert agent.wait_for("transferProgress", callId="t1")["payload"]["status"] == 100
        assert agent.wait_for("transferProgress", callId="t1")["payload"] == {"callId": "t1", "status": 200, "reason": "OK"}
        ended = agent.wait_for("callEnded", callId="t1")
        assert ended["payload"] == {"callId": "t1", "by": "local", "reason": "transferred"}
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()
    assert re.search(r"^Refer-To: <sip:6002@", sipp.messages(), re.M)


def test_failed_transfer_keeps_the_call(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_refer_fails.xml")
    try:
        assert agent.request("transfer", {"callId": "t1", "target": "6002"})["type"] == "transferAccepted"
        agent.wait_for("transferProgress", callId="t1", status=100)
        failed = agent.wait_for("transferProgress", callId="t1", status=486)
        assert failed["payload"]["reason"] == "Busy Here"
        agent.assert_no_message(0.5, "callEnded")
        assert agent.request("hangup", {"callId": "t1"})["payload"]["by"] == "local"
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()


def test_refused_refer_is_an_error_for_that_request_only(agent, registrar_port, tmp_path):
    sipp = connected(agent, registrar_port, tmp_path, "uas_refer_rejected.xml")
    try:
        reply = agent.request("transfer", {"callId": "t1", "target": "6002"})
        assert reply["payload"]["code"] == "peer_rejected" and "403" in reply["payload"]["reason"]
        assert agent.request("hangup", {"callId": "t1"})["type"] == "callEnded"
        assert sipp.wait(15) == 0, sipp.describe()
    finally:
        sipp.stop()


def test_attended_transfer_carries_replaces(agent, registrar_port, tmp_path):
    # Two calls to the same SIPp: the first is transferred to the far end of the second.
    sipp = Sipp("uas_refer_attended.xml", tmp_path, local_port=registrar_port, timeout=40, calls=2).__enter__()
    try:
        for call_id in ("a", "b"):
            assert agent.request("call", {"to": "6001", "callId": call_id, "sdp": CHROME_OFFER})["type"] == "callAccepted"
        # Transfer each call to the other one, so both SIPp calls receive a REFER with Replaces.
        assert agent.request("transfer", {"callId": "a", "replacesCallId": "b"})["type"] == "transferAccepted"
        agent.wait_for("callEnded", callId="a")
        # Call a is ending or gone: it cannot be the replaced dialog any more.
        assert agent.request("transfer", {"callId": "b", "replacesCallId": "a"})["payload"]["code"] in (
            "invalid_state", "no_such_call")
    finally:
        for call_id in ("a", "b"):
            agent.request("hangup", {"callId": call_id})
        sipp.stop()
    log = sipp.messages()
    refer = re.search(r"^Refer-To: (.*)$", log, re.M).group(1)
    assert "?Replaces=" in refer and "%3Bto-tag%3D" in refer and "%3Bfrom-tag%3D" in refer
    # Replaces names call b's dialog: its Call-ID, SIPp's tag (to-tag) and the gateway's (from-tag).
    replaces = unquote(refer.split("?Replaces=", 1)[1].rstrip(">"))
    invites = [m for m in re.split(r"\n(?=INVITE sip:)", log) if m.startswith("INVITE sip:")]
    call_b = re.search(r"^Call-ID: (\S+)", invites[1], re.M | re.I).group(1)
    from_tag_b = re.search(r"^From: .*;tag=(\S+)", invites[1], re.M | re.I).group(1)
    sip_call_id, to_tag, from_tag = replaces.split(";")
    assert sip_call_id == call_b
    assert to_tag.startswith("to-tag=") and "SIPpTag" in to_tag
    assert from_tag == f"from-tag={from_tag_b}"


def test_transfer_requested_by_the_far_end(embedded_gateway, client_factory, tmp_path):
    alice, bob = client_factory(embedded_gateway), client_factory(embedded_gateway)
    assert alice.register("5001", PASSWORDS["5001"])["type"] == "registered"
    assert bob.register("5002", PASSWORDS["5002"])["type"] == "registered"
    with Sipp("uac_call_send_refer.xml", tmp_path, local_port=free_udp_port(), remote=embedded_gateway.sip_hostport,
              service="5001", timeout=40, keys={"refer_target": "5002"}) as sipp:
        call_id = alice.wait_for("incomingCall")["payload"]["callId"]
        assert alice.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
        requested = alice.wait_for("transferRequested", callId=call_id)
        assert requested["payload"]["target"] == "5002"
        # The browser agrees: it calls the target on the far end's behalf.
        new_call = alice.send("call", {"to": "5002", "callId": "xfer", "sdp": CHROME_OFFER, "referredBy": call_id})
        incoming = bob.wait_for("incomingCall")
        assert bob.request("answer", {"callId": incoming["payload"]["callId"], "sdp": PCMU_ANSWER})["type"] == "callAccepted"
        assert alice.wait(lambda m: m.get("id") == new_call)["type"] == "callAccepted"
        # The referrer learns the outcome from NOTIFYs, then hangs up the original call.
        assert alice.wait_for("callEnded", callId=call_id)["payload"]["by"] == "remote"
        assert sipp.wait(15) == 0, sipp.describe()
        alice.request("hangup", {"callId": "xfer"})
    assert "SIP/2.0 100 Trying" in sipp.messages() and "SIP/2.0 200 OK" in sipp.messages()
