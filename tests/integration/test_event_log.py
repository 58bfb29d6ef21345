"""Operations: the JSON event log follows one call end to end, and /metrics counts outcomes and
SIP retransmissions, against the real gateway and a SIPp UAS."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from harness.gateway import PASSWORDS, Gateway, embedded_env
from harness.sdp import CHROME_OFFER
from harness.sipp import Sipp, free_udp_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pbx_port() -> int:
    return free_udp_port()


@pytest.fixture(scope="module")
def gw(workdir: Path, pbx_port: int) -> Iterator[Gateway]:
    gateway = Gateway(workdir, env=embedded_env(pbx_port, GW_EVENT_LOG=str(workdir / "events.jsonl"))).start()
    yield gateway
    gateway.stop()


def event_log(gw: Gateway) -> list[dict]:
    path = Path(gw.env["GW_EVENT_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_events(gw: Gateway, done, call_id: str, timeout: float = 5.0) -> list[dict]:
    """The call's events, once `done(events)` holds (the log is written as things happen)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in event_log(gw) if r.get("callId") == call_id]
        if done(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def metrics(gw: Gateway) -> str:
    with urllib.request.urlopen(gw.http_url + "/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_one_call_followed_end_to_end_by_its_call_id(gw, pbx_port, client_factory, tmp_path):
    agent = client_factory(gw)
    assert agent.register("5001", PASSWORDS["5001"])["type"] == "registered"
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=pbx_port, timeout=30) as sipp:
        assert agent.request("call", {"to": "9196", "callId": "trace1", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        assert agent.request("hangup", {"callId": "trace1"})["type"] == "callEnded"
        assert sipp.wait(15) == 0, sipp.describe()
    records = wait_events(gw, lambda rs: any(r.get("method") == "BYE" and r.get("status") == 200 for r in rs),
                          "trace1")
    steps = [(r["event"], r.get("type") or r.get("method"), r.get("status")) for r in records]
    for step in [("ws.in", "call", None), ("call.out", None, None), ("sip.out", "INVITE", None),
                 ("sip.resp", "INVITE", 100), ("sip.resp", "INVITE", 180), ("sip.resp", "INVITE", 200),
                 ("ws.out", "callAccepted", None), ("ws.in", "hangup", None), ("sip.out", "BYE", None),
                 ("ws.out", "callEnded", None), ("sip.resp", "BYE", 200)]:
        assert step in steps, f"{step} not in {steps}"
    assert steps.index(("sip.out", "INVITE", None)) < steps.index(("sip.resp", "INVITE", 200)) < \
        steps.index(("ws.out", "callAccepted", None))
    sip_call_ids = {r["sipCallId"] for r in records if "sipCallId" in r}
    assert len(sip_call_ids) == 1
    accepted = next(r for r in records if r.get("type") == "callAccepted")
    # 100 and 180 may be handled by another worker after the 200 (then they are not milestones).
    timing = accepted["timing"]
    assert {"invite", "answered", "accepted"} <= set(timing) <= {"invite", "trying", "ringing", "answered", "accepted"}
    assert timing["invite"] <= timing["answered"] <= timing["accepted"]
    text = metrics(gw)
    assert 'wsgw_calls_answered_total{direction="outbound"} 1' in text
    assert "wsgw_websocket_connections_open 1" in text


def test_a_retransmitted_200_is_counted(gw, pbx_port, client_factory, tmp_path):
    agent = client_factory(gw)
    assert agent.register("5002", PASSWORDS["5002"])["type"] == "registered"
    with Sipp("uas_answer_retransmit_200.xml", tmp_path, local_port=pbx_port, timeout=30) as sipp:
        assert agent.request("call", {"to": "9196", "callId": "rt1", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        # SIPp sends the 200 again after our ACK; tm ACKs it again and the gateway counts it. (SIPp then
        # takes each ACK for a retransmission and resends its 200 until the BYE: count at least one.)
        records = wait_events(gw, lambda rs: sum(r.get("status") == 200 for r in rs) >= 2, "rt1")
        assert sum(r.get("status") == 200 and r["event"] == "sip.resp" for r in records) >= 2
        counted = re.search(r'wsgw_sip_retransmissions_total\{kind="reply"\} (\d+)', metrics(gw))
        assert counted and int(counted.group(1)) >= 1
        agent.request("hangup", {"callId": "rt1"})
        assert sipp.wait(15) == 0, sipp.describe()
