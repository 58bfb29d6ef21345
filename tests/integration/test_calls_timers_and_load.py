"""Call timers (unreachable, ring timeout), 2xx retransmission, and calls in parallel."""

import time

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway, health, wait_no_calls
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from harness.sipp import Sipp, free_udp_port
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration

def count_acks(messages: str) -> int:
    return sum(1 for line in messages.splitlines() if line.startswith("ACK sip:"))


def test_no_answer_at_all_is_unreachable(upstream_gateway, registrar_port, upstream_agents, tmp_path):
    (agent,) = upstream_agents(1)
    with Sipp("uas_silent.xml", tmp_path, local_port=registrar_port, timeout=20, keys={"hold_ms": "9000"}) as sipp:
        started = time.monotonic()
        reply = agent.request("call", {"to": "6001", "callId": "void", "sdp": CHROME_OFFER}, timeout=15)
        elapsed = time.monotonic() - started
        assert reply["payload"] == {"callId": "void", "code": 408, "reason": "unreachable"}
        assert 2.5 <= elapsed <= 6, elapsed  # GW_SIP_TIMEOUT=3 plus one timer tick
        # tm gives up at the same timeout; the record goes once nothing can answer any more.
        assert wait_no_calls(upstream_gateway)["calls"] == 0
        sipp.stop()
    assert "INVITE sip:6001@" in sipp.messages()


def test_retransmitted_200_is_acked_again(registrar_port, upstream_agents, tmp_path):
    (agent,) = upstream_agents(1)
    with Sipp("uas_answer_retransmit_200.xml", tmp_path, local_port=registrar_port, timeout=30) as sipp:
        reply = agent.request("call", {"to": "6001", "callId": "rtx", "sdp": CHROME_OFFER})
        assert reply["type"] == "callAccepted"
        deadline = time.monotonic() + 5
        while count_acks(sipp.messages()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count_acks(sipp.messages()) >= 2, sipp.messages()[-2000:]
        agent.request("hangup", {"callId": "rtx"})
        assert sipp.wait(15) == 0, sipp.describe()
        # Only one callAccepted for the call despite two 200s.
        agent.assert_no_message(0.5, "callAccepted")


def test_ten_parallel_calls_from_one_connection(upstream_gateway, registrar_port, upstream_agents, tmp_path):
    (agent,) = upstream_agents(1)
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=registrar_port, calls=10, timeout=40) as sipp:
        ids = {agent.send("call", {"to": f"60{n:02d}", "callId": f"p{n}", "sdp": CHROME_OFFER}): f"p{n}" for n in range(10)}
        for request_id in ids:
            reply = agent.wait(lambda m, r=request_id: m.get("id") == r, 15)
            assert reply["type"] == "callAccepted", reply
        assert health(upstream_gateway)["calls"] == 10
        for call_id in ids.values():
            assert agent.request("hangup", {"callId": call_id})["type"] == "callEnded"
        assert sipp.wait(20) == 0, sipp.describe()
    assert wait_no_calls(upstream_gateway)["calls"] == 0


def test_ten_parallel_calls_from_ten_connections(upstream_gateway, registrar_port, upstream_agents, tmp_path):
    agents = upstream_agents(10)
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=registrar_port, calls=10, timeout=40) as sipp:
        pending = [(a, a.send("call", {"to": "6001", "callId": "same-id", "sdp": CHROME_OFFER})) for a in agents]
        for agent, request_id in pending:
            reply = agent.wait(lambda m, r=request_id: m.get("id") == r, 15)
            assert reply["type"] == "callAccepted", reply
        # The same client callId on ten connections names ten different calls.
        for agent in agents:
            assert agent.request("hangup", {"callId": "same-id"})["payload"]["by"] == "local"
        assert sipp.wait(20) == 0, sipp.describe()
    assert wait_no_calls(upstream_gateway)["calls"] == 0


@pytest.fixture(scope="module")
def short_ring_gateway(workdir):
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_RING_TIMEOUT": "2"}).start()
    yield gw
    gw.stop()


def test_inbound_ring_timeout(short_ring_gateway, tmp_path):
    with WsClient(short_ring_gateway.ws_url) as agent:
        assert agent.register("5008", PASSWORDS["5008"])["type"] == "registered"
        with Sipp("uac_expect_480.xml", tmp_path, local_port=free_udp_port(), remote=short_ring_gateway.sip_hostport,
                  service="5008", timeout=20) as sipp:
            call_id = agent.wait_for("incomingCall")["payload"]["callId"]
            cancelled = agent.wait_for("callCancelled", timeout=6, callId=call_id)
            assert cancelled["payload"]["reason"] == "no_answer"
            assert sipp.wait(10) == 0, sipp.describe()
        assert agent.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["payload"]["code"] == "no_such_call"
    assert "180 Ringing" in sipp.messages()


def test_json_to_json_unanswered_call_times_out_on_both_sides(short_ring_gateway):
    with WsClient(short_ring_gateway.ws_url) as alice, WsClient(short_ring_gateway.ws_url) as bob:
        assert alice.register("5009", PASSWORDS["5009"])["type"] == "registered"
        assert bob.register("5010", PASSWORDS["5010"])["type"] == "registered"
        request_id = alice.send("call", {"to": "5010", "callId": "ring", "sdp": CHROME_OFFER})
        bob.wait_for("incomingCall")
        bob.wait_for("callCancelled", timeout=6)
        failed = alice.wait(lambda m: m.get("id") == request_id, 10)
        assert failed["type"] == "callFailed"
        assert failed["payload"]["code"] in (408, 480)
    assert wait_no_calls(short_ring_gateway)["calls"] == 0
