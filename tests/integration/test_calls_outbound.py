"""Outbound calls: a JSON client calls a SIPp UAS that plays the upstream PBX."""

import re

import pytest

from harness.sdp import CHROME_OFFER, OPUS_ONLY_OFFER
from harness.sipp import Sipp

pytestmark = pytest.mark.integration

@pytest.fixture
def agent(upstream_agents):
    """A client registered upstream (see conftest.upstream_agents)."""
    return upstream_agents(1)[0]


def pbx(tmp_path, port, scenario):
    return Sipp(scenario, tmp_path, local_port=port, timeout=30)


def test_outbound_answered_then_local_bye(agent, registrar_port, tmp_path):
    with pbx(tmp_path, registrar_port, "uas_answer_wait_bye.xml") as sipp:
        reply = agent.request("call", {"to": "6001", "callId": "out1", "sdp": CHROME_OFFER})
        assert reply["type"] == "callAccepted", reply
        assert reply["payload"]["sdp"].startswith("v=0")
        assert agent.request("hangup", {"callId": "out1"})["payload"]["by"] == "local"
        assert sipp.wait(15) == 0, sipp.describe()
    assert "BYE sip:" in sipp.messages()


def test_outbound_answered_then_remote_bye(agent, registrar_port, tmp_path):
    with pbx(tmp_path, registrar_port, "uas_answer_send_bye.xml") as sipp:
        assert agent.request("call", {"to": "6001", "callId": "out2", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        ended = agent.wait_for("callEnded", callId="out2")
        assert ended["payload"]["by"] == "remote"
        assert sipp.wait(15) == 0, sipp.describe()


def test_outbound_ringing_early_media_then_answer(agent, registrar_port, tmp_path):
    with pbx(tmp_path, registrar_port, "uas_early_media.xml") as sipp:
        request_id = agent.send("call", {"to": "6001", "callId": "out3", "sdp": CHROME_OFFER})
        agent.wait_for("ringing", callId="out3")
        progress = agent.wait_for("progress", callId="out3")
        assert progress["payload"]["sdp"].startswith("v=0")
        assert agent.wait(lambda m: m.get("id") == request_id)["type"] == "callAccepted"
        agent.request("hangup", {"callId": "out3"})
        assert sipp.wait(15) == 0, sipp.describe()


@pytest.mark.parametrize("code,reason", [(486, "busy"), (404, "not_found"), (480, "unavailable")])
def test_outbound_failures_are_mapped(agent, registrar_port, tmp_path, code, reason):
    with pbx(tmp_path, registrar_port, f"uas_reject_{code}.xml") as sipp:
        reply = agent.request("call", {"to": "6001", "callId": f"f{code}", "sdp": CHROME_OFFER})
        assert reply["type"] == "callFailed"
        assert reply["payload"] == {"callId": f"f{code}", "code": code, "reason": reason}
        assert sipp.wait(15) == 0, sipp.describe()


def test_outbound_cancel_before_answer(agent, registrar_port, tmp_path):
    with pbx(tmp_path, registrar_port, "uas_ring_wait_cancel.xml") as sipp:
        request_id = agent.send("call", {"to": "6001", "callId": "out4", "sdp": CHROME_OFFER})
        agent.wait_for("ringing", callId="out4")
        assert agent.request("hangup", {"callId": "out4"})["type"] == "callEnded"
        # The `call` request gets its own final reply: cancelled, once.
        failed = agent.wait(lambda m: m.get("id") == request_id)
        assert failed["payload"] == {"callId": "out4", "code": 487, "reason": "cancelled"}
        assert sipp.wait(15) == 0, sipp.describe()
        agent.assert_no_message(1.0, "callFailed")
    assert "CANCEL sip:" in sipp.messages()


def test_codec_policy_on_the_sip_side(agent, registrar_port, tmp_path):
    with pbx(tmp_path, registrar_port, "uas_codec_check.xml") as sipp:
        reply = agent.request("call", {"to": "6001", "callId": "codec", "sdp": CHROME_OFFER})
        assert reply["type"] == "callAccepted", reply
        assert reply["payload"]["codecs"] == ["PCMU", "PCMA", "telephone-event"]
        agent.request("hangup", {"callId": "codec"})
        assert sipp.wait(15) == 0, sipp.describe()
    invite = sipp.messages().split("INVITE sip:", 1)[1].split("\n\n\n")[0]
    assert re.search(r"m=audio \d+ \S+ 0 8 126", invite)
    assert "opus" not in invite and "G722" not in invite


def test_offer_without_allowed_codec_is_refused_before_invite(agent):
    reply = agent.request("call", {"to": "6001", "callId": "opus", "sdp": OPUS_ONLY_OFFER})
    assert reply["payload"] == {"callId": "opus", "code": 488, "reason": "rejected"}


def test_hangup_of_unknown_call(agent):
    assert agent.request("hangup", {"callId": "nope"})["payload"]["code"] == "no_such_call"


def test_in_dialog_bye_follows_the_route_set(agent, registrar_port, tmp_path):
    with pbx(tmp_path, registrar_port, "uas_record_route.xml") as sipp:
        assert agent.request("call", {"to": "6001", "callId": "rr", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        assert agent.request("hangup", {"callId": "rr"})["type"] == "callEnded"
        assert sipp.wait(15) == 0, sipp.describe()


def test_a_client_cannot_touch_another_clients_call(agent, upstream_gateway, registrar_port, client_factory, tmp_path):
    intruder = client_factory(upstream_gateway)
    with pbx(tmp_path, registrar_port, "uas_answer_wait_bye.xml") as sipp:
        assert agent.request("call", {"to": "6001", "callId": "mine", "sdp": CHROME_OFFER})["type"] == "callAccepted"
        # Unregistered: refused before anything (a registered one gets no_such_call, see the tabs test in
        # test_calls_inbound.py and the unit tests of calls.own_call).
        assert intruder.request("hangup", {"callId": "mine"})["payload"]["code"] == "not_registered"
        assert agent.request("hangup", {"callId": "mine"})["type"] == "callEnded"
        assert sipp.wait(15) == 0, sipp.describe()


def test_call_accepted_reports_setup_timing_and_metrics(agent, upstream_gateway, registrar_port, tmp_path):
    import urllib.request

    # Ringing for 1 s: a 180 sent right before the 200 may be handled by another worker after it.
    with pbx(tmp_path, registrar_port, "uas_ring_then_answer.xml") as sipp:
        reply = agent.request("call", {"to": "6001", "callId": "tm", "sdp": CHROME_OFFER})
        timing = reply["payload"]["timing"]
        assert set(timing) >= {"invite", "ringing", "answered", "accepted"}
        assert timing["invite"] <= timing["ringing"] <= timing["answered"] <= timing["accepted"]
        agent.request("hangup", {"callId": "tm"})
        assert sipp.wait(15) == 0, sipp.describe()
    with urllib.request.urlopen(upstream_gateway.http_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    count = re.search(r"^wsgw_call_setup_seconds_count (\d+)", text, re.M)
    assert count and int(count.group(1)) >= 1
