"""Inbound calls: a SIPp caller rings a DN registered by a JSON client (embedded mode)."""

import pytest

from harness.gateway import PASSWORDS
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from harness.sipp import Sipp, free_udp_port

pytestmark = pytest.mark.integration


def caller(tmp_path, gw, scenario, dn):
    return Sipp(scenario, tmp_path, local_port=free_udp_port(), remote=gw.sip_hostport, service=dn, timeout=30)


def test_inbound_answered_then_remote_bye(embedded_gateway, client_factory, tmp_path):
    agent = client_factory(embedded_gateway)
    assert agent.register("5001", PASSWORDS["5001"])["type"] == "registered"
    with caller(tmp_path, embedded_gateway, "uac_call_remote_bye.xml", "5001") as sipp:
        incoming = agent.wait_for("incomingCall")
        assert incoming["payload"]["from"] == "sipp"
        assert incoming["payload"]["sdp"].startswith("v=0")
        call_id = incoming["payload"]["callId"]
        accepted = agent.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})
        assert accepted["type"] == "callAccepted", accepted
        ended = agent.wait_for("callEnded", callId=call_id)
        assert ended["payload"]["by"] == "remote"
        assert sipp.wait(15) == 0, sipp.describe()
    assert "180 Ringing" in sipp.messages()


def test_inbound_answered_then_local_hangup(embedded_gateway, client_factory, tmp_path):
    agent = client_factory(embedded_gateway)
    assert agent.register("5002", PASSWORDS["5002"])["type"] == "registered"
    with caller(tmp_path, embedded_gateway, "uac_call_local_bye.xml", "5002") as sipp:
        call_id = agent.wait_for("incomingCall")["payload"]["callId"]
        assert agent.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
        ended = agent.request("hangup", {"callId": call_id})
        assert ended["type"] == "callEnded" and ended["payload"]["by"] == "local"
        assert sipp.wait(15) == 0, sipp.describe()


@pytest.mark.parametrize("code", [486, 603])
def test_inbound_rejected(embedded_gateway, client_factory, tmp_path, code):
    dn = {486: "5003", 603: "5007"}[code]  # a DN per case: a closed WebSocket is released asynchronously
    agent = client_factory(embedded_gateway)
    assert agent.register(dn, PASSWORDS[dn])["type"] == "registered"
    with caller(tmp_path, embedded_gateway, f"uac_expect_{code}.xml", dn) as sipp:
        call_id = agent.wait_for("incomingCall")["payload"]["callId"]
        reply = agent.request("reject", {"callId": call_id, "code": code})
        assert reply["type"] == "callEnded"
        assert sipp.wait(15) == 0, sipp.describe()


def test_inbound_cancelled_by_caller(embedded_gateway, client_factory, tmp_path):
    agent = client_factory(embedded_gateway)
    assert agent.register("5004", PASSWORDS["5004"])["type"] == "registered"
    with caller(tmp_path, embedded_gateway, "uac_call_cancel.xml", "5004") as sipp:
        call_id = agent.wait_for("incomingCall")["payload"]["callId"]
        agent.wait_for("callCancelled", callId=call_id)
        assert sipp.wait(15) == 0, sipp.describe()
        # Answering afterwards is refused: the call is gone.
        assert agent.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["payload"]["code"] == "no_such_call"


def test_inbound_to_unregistered_and_unknown_dn(embedded_gateway, tmp_path):
    with caller(tmp_path, embedded_gateway, "uac_expect_480.xml", "5010") as sipp:
        assert sipp.wait(15) == 0, sipp.describe()
    with caller(tmp_path, embedded_gateway, "uac_expect_404.xml", "7777") as sipp:
        assert sipp.wait(15) == 0, sipp.describe()


def test_json_to_json_call_loops_through_sip(embedded_gateway, client_factory):
    alice = client_factory(embedded_gateway)
    bob = client_factory(embedded_gateway)
    assert alice.register("5005", PASSWORDS["5005"])["type"] == "registered"
    assert bob.register("5006", PASSWORDS["5006"])["type"] == "registered"
    call_request = alice.send("call", {"to": "5006", "callId": "c1", "sdp": CHROME_OFFER})
    incoming = bob.wait_for("incomingCall")
    assert incoming["payload"]["from"] == "5005"
    # The SIP leg carried only the allowed codecs.
    assert "opus" not in incoming["payload"]["sdp"]
    alice.wait_for("ringing", callId="c1")
    bob_call = incoming["payload"]["callId"]
    assert bob.request("answer", {"callId": bob_call, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
    accepted = alice.wait(lambda m: m.get("id") == call_request)
    assert accepted["type"] == "callAccepted", accepted
    assert accepted["payload"]["codecs"] == ["PCMU", "PCMA", "telephone-event"]
    assert alice.request("hangup", {"callId": "c1"})["payload"]["by"] == "local"
    ended = bob.wait_for("callEnded", callId=bob_call)
    assert ended["payload"]["by"] == "remote"
    assert embedded_gateway.wait_log("call ended by remote call=" + bob_call)


def test_inbound_local_bye_follows_the_route_set(embedded_gateway, client_factory, tmp_path):
    agent = client_factory(embedded_gateway)
    assert agent.register("5008", PASSWORDS["5008"])["type"] == "registered"
    with caller(tmp_path, embedded_gateway, "uac_call_record_route.xml", "5008") as sipp:
        call_id = agent.wait_for("incomingCall")["payload"]["callId"]
        assert agent.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
        assert agent.request("hangup", {"callId": call_id})["type"] == "callEnded"
        assert sipp.wait(15) == 0, sipp.describe()


def test_inbound_call_rings_every_tab_and_the_first_answer_wins(embedded_gateway, client_factory, tmp_path):
    tab1, tab2, tab3 = (client_factory(embedded_gateway) for _ in range(3))
    for tab in (tab1, tab2, tab3):
        assert tab.register("5009", PASSWORDS["5009"])["type"] == "registered"
    with caller(tmp_path, embedded_gateway, "uac_call_remote_bye.xml", "5009") as sipp:
        call_id = tab1.wait_for("incomingCall")["payload"]["callId"]
        assert tab2.wait_for("incomingCall")["payload"]["callId"] == call_id
        assert tab3.wait_for("incomingCall")["payload"]["callId"] == call_id
        # A reject in one tab does not reject the call while others ring.
        assert tab3.request("reject", {"callId": call_id})["type"] == "callEnded"
        assert tab2.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
        assert tab1.wait_for("answeredElsewhere")["payload"] == {"callId": call_id}
        assert tab1.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["payload"]["code"] == "no_such_call"
        assert tab2.wait_for("callEnded", callId=call_id)["payload"]["by"] == "remote"
        assert sipp.wait(15) == 0, sipp.describe()
    tab3.assert_no_message(0.3, "answeredElsewhere")


def test_caller_cancel_stops_every_tab(embedded_gateway, client_factory, tmp_path):
    tab1, tab2 = client_factory(embedded_gateway), client_factory(embedded_gateway)
    for tab in (tab1, tab2):
        assert tab.register("5010", PASSWORDS["5010"])["type"] == "registered"
    with caller(tmp_path, embedded_gateway, "uac_call_cancel.xml", "5010") as sipp:
        call_id = tab1.wait_for("incomingCall")["payload"]["callId"]
        tab2.wait_for("incomingCall")
        tab1.wait_for("callCancelled", callId=call_id)
        tab2.wait_for("callCancelled", callId=call_id)
        assert sipp.wait(15) == 0, sipp.describe()


def test_json_to_json_call_hung_up_while_ringing_stops_the_callee(embedded_gateway, client_factory):
    alice, bob = client_factory(embedded_gateway), client_factory(embedded_gateway)
    assert alice.register("5006", PASSWORDS["5006"])["type"] == "registered"
    assert bob.register("5007", PASSWORDS["5007"])["type"] == "registered"
    request_id = alice.send("call", {"to": "5007", "callId": "r1", "sdp": CHROME_OFFER})
    call_id = bob.wait_for("incomingCall")["payload"]["callId"]
    alice.wait_for("ringing", callId="r1")
    assert alice.request("hangup", {"callId": "r1"})["type"] == "callEnded"
    assert alice.wait(lambda m: m.get("id") == request_id)["payload"]["reason"] == "cancelled"
    bob.wait_for("callCancelled", timeout=5, callId=call_id)
    assert embedded_gateway.wait_log("call cancelled by caller call=" + call_id, timeout=5)
