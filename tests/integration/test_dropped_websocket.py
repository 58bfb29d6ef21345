"""A dropped WebSocket: the calls stay up for GW_RESUME_GRACE, `attach` takes them over on a new
connection and gets the missed messages, and without it the calls end on the SIP side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from harness.gateway import PASSWORDS, Gateway, embedded_env, health
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from harness.sipp import Sipp, free_udp_port
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration

GRACE = 4


@pytest.fixture(scope="module")
def pbx_port() -> int:
    return free_udp_port()


@pytest.fixture(scope="module")
def gw(workdir: Path, pbx_port: int) -> Iterator[Gateway]:
    """Embedded mode; the echo extension 9196 is the SIPp UAS, so outbound calls reach it."""
    gateway = Gateway(workdir, env=embedded_env(pbx_port, GW_RESUME_GRACE=str(GRACE))).start()
    yield gateway
    gateway.stop()


def registered(gw: Gateway, client_factory, dn: str) -> tuple[WsClient, str, int]:
    agent = client_factory(gw)
    reply = agent.register(dn, PASSWORDS[dn])
    assert reply["type"] == "registered", reply
    token = reply["payload"]["resumeToken"]
    assert len(token) == 32 and reply["seq"] == 1
    return agent, token, reply["seq"]


def uas(tmp_path, port: int, scenario: str) -> Sipp:
    return Sipp(scenario, tmp_path, local_port=port, timeout=40)


def test_an_answered_call_survives_the_drop_and_is_hung_up_from_the_new_connection(gw, pbx_port, client_factory,
                                                                                      tmp_path):
    agent, token, _ = registered(gw, client_factory, "5001")
    with uas(tmp_path, pbx_port, "uas_answer_wait_bye.xml") as sipp:
        accepted = agent.request("call", {"to": "9196", "callId": "c1", "sdp": CHROME_OFFER})
        assert accepted["type"] == "callAccepted", accepted
        agent.drop()
        assert gw.wait_log("session detached dn=5001")
        time.sleep(2)  # nothing may end while the client is away: give a BYE time to show up
        assert sipp.proc.poll() is None, "SIPp finished: the call was ended during the grace period"
        assert health(gw)["calls"] == 1 and health(gw)["registrations"] == 1
        again = client_factory(gw)
        attached = again.request("attach", {"token": token, "lastSeq": accepted["seq"]})
        assert attached["type"] == "attached", attached
        assert attached["payload"]["calls"] == [
            {"callId": "c1", "direction": "outbound", "state": "confirmed", "peer": "9196"}]
        assert attached["payload"]["replayed"] == 0 and attached["seq"] == accepted["seq"] + 1
        ended = again.request("hangup", {"callId": "c1"})
        assert ended["type"] == "callEnded" and ended["seq"] == attached["seq"] + 1
        assert sipp.wait(15) == 0, sipp.describe()
    assert "BYE sip:" in sipp.messages()


def test_the_answer_missed_while_away_is_replayed(gw, pbx_port, client_factory, tmp_path):
    agent, token, seq = registered(gw, client_factory, "5002")
    with uas(tmp_path, pbx_port, "uas_ring_then_answer.xml") as sipp:
        request_id = agent.send("call", {"to": "9196", "callId": "c2", "sdp": CHROME_OFFER})
        ringing = agent.wait_for("ringing", callId="c2")
        agent.drop()  # the 200 comes a second after the 180, while nobody is connected
        assert gw.wait_log("session detached dn=5002")
        again = client_factory(gw)
        attached = again.request("attach", {"token": token, "lastSeq": ringing["seq"]}, timeout=10)
        # Everything after lastSeq came before `attached`, in order, with no gap.
        replayed = list(again.backlog)
        assert [m["seq"] for m in replayed] == list(range(ringing["seq"] + 1, attached["seq"]))
        assert attached["payload"]["replayed"] == len(replayed)
        accepted = again.wait(lambda m: m.get("id") == request_id, 1)
        assert accepted["type"] == "callAccepted"
        again.request("hangup", {"callId": "c2"})
        assert sipp.wait(15) == 0, sipp.describe()


def test_a_call_ringing_in_while_away_rings_on_the_new_connection(gw, client_factory, tmp_path):
    agent, token, seq = registered(gw, client_factory, "5003")
    agent.drop()
    assert gw.wait_log("session detached dn=5003")
    with Sipp("uac_call_remote_bye.xml", tmp_path, local_port=free_udp_port(), remote=gw.sip_hostport,
              service="5003", timeout=40) as sipp:
        assert gw.wait_log("to=5003 from=sipp")
        again = client_factory(gw)
        assert again.request("attach", {"token": token, "lastSeq": seq})["type"] == "attached"
        incoming = again.wait_for("incomingCall")
        assert again.request("answer", {"callId": incoming["payload"]["callId"], "sdp": PCMU_ANSWER})["type"] == \
            "callAccepted"
        assert again.wait_for("callEnded", callId=incoming["payload"]["callId"])["payload"]["by"] == "remote"
        assert sipp.wait(15) == 0, sipp.describe()


def test_without_attach_the_call_ends_after_the_grace_period(gw, pbx_port, client_factory, tmp_path):
    agent, token, _ = registered(gw, client_factory, "5004")
    with uas(tmp_path, pbx_port, "uas_answer_wait_bye.xml") as sipp:
        assert agent.request("call", {"to": "9196", "callId": "c4", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        agent.drop()
        # The BYE comes only once the grace period is over (the timer runs once a second).
        assert sipp.wait(GRACE + 10) == 0, sipp.describe()
    assert gw.wait_log("session expired dn=5004")
    assert health(gw)["registrations"] == 0
    late = client_factory(gw)
    refused = late.request("attach", {"token": token})
    assert refused["payload"]["code"] == "session_expired"


def test_attach_with_an_unknown_token_is_refused_and_the_connection_goes_on(gw, client_factory):
    client = client_factory(gw)
    refused = client.request("attach", {"token": "A" * 32})
    assert refused["type"] == "error" and refused["payload"]["code"] == "session_expired"
    assert "seq" not in refused
    assert client.register("5005", PASSWORDS["5005"])["type"] == "registered"
