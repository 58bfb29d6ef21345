"""Two-way audio in real Chromium through rtpengine (GW_MEDIA=rtpengine) to a SIPp echo (-rtp_echo)."""

import time

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.ports import free_port
from harness.rtpengine import RtpEngine
from harness.screenshots import screenshot
from harness.sipp import Sipp
from harness.webrtc_stats import AGENT_CALL, stats_js, wait_audio

pytestmark = pytest.mark.integration

TIMEOUT = 15_000

@pytest.fixture(scope="module")
def echo_setup(workdir):
    relay = RtpEngine(workdir / "rtpengine-browser").start()
    try:  # the relay is stopped even when the gateway fails to start
        echo_port = free_port()
        gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_MEDIA": "rtpengine",
                                   "GW_RTPENGINE": relay.address, "GW_ECHO_URI": f"sip:9196@127.0.0.1:{echo_port}"}).start()
        yield gw, relay, echo_port
        gw.stop()
    finally:
        relay.stop()


def test_echo_call_has_two_way_audio(echo_setup, open_page, tmp_path):
    gw, relay, echo_port = echo_setup
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=echo_port, timeout=40,
              extra_args=["-rtp_echo", "-mp", str(free_port())]) as sipp:
        page = open_page(gw)
        page.fill("#dn", "5006")
        page.fill("#password", PASSWORDS["5006"])
        page.click("#registerBtn")
        page.wait_for_function("document.querySelector('#regState').textContent.trim() === 'registered'")
        page.fill("#number", "9196")
        page.click("#callBtn")
        [stats] = wait_audio((page, AGENT_CALL))
        assert stats["dtls"] == "connected"
        assert stats["sent"] > 0 and stats["received"] > 0 and stats["level"] > 0
        assert stats["codec"] == "audio/PCMU"
        page.wait_for_function("Number(document.querySelector('#pktRecv').textContent) > 0", timeout=TIMEOUT)
        screenshot(page, "07-echo-call-audio")
        page.locator("#calls [data-call-id] .hangup").first.click()
        assert sipp.wait(15) == 0, sipp.describe()
    assert relay.wait_no_calls() == []


def register_page(page, dn):
    page.fill("#dn", dn)
    page.fill("#password", PASSWORDS[dn])
    page.click("#registerBtn")
    page.wait_for_function("document.querySelector('#regState').textContent.trim() === 'registered'")


def test_ringing_before_answer_still_gets_audio(echo_setup, open_page, tmp_path):
    # 1 s of ringing between offer and answer: the DTLS race (KAMAILIO-NOTES) must not hang the call.
    gw, relay, echo_port = echo_setup
    with Sipp("uas_ring_then_answer.xml", tmp_path, local_port=echo_port, timeout=40,
              extra_args=["-rtp_echo", "-mp", str(free_port())]) as sipp:
        page = open_page(gw)
        register_page(page, "5007")
        page.fill("#number", "9196")
        page.click("#callBtn")
        [stats] = wait_audio((page, AGENT_CALL))
        assert stats["dtls"] == "connected"
        page.locator("#calls [data-call-id] .hangup").first.click()
        assert sipp.wait(15) == 0, sipp.describe()
    assert relay.wait_no_calls() == []


def test_inbound_call_answered_in_the_page_has_audio(echo_setup, open_page, tmp_path):
    gw, relay, _ = echo_setup
    page = open_page(gw)
    register_page(page, "5008")
    with Sipp("uac_call_local_bye.xml", tmp_path, local_port=free_port(), remote=gw.sip_hostport, service="5008",
              timeout=40, extra_args=["-rtp_echo", "-mp", str(free_port())]) as sipp:
        page.locator("#incoming").wait_for(state="visible", timeout=TIMEOUT)
        page.locator("#calls [data-call-id] .answer").first.click()
        [stats] = wait_audio((page, AGENT_CALL))
        assert stats["dtls"] == "connected" and stats["codec"] == "audio/PCMU"
        page.locator("#calls [data-call-id] .hangup").first.click()
        assert sipp.wait(15) == 0, sipp.describe()
    assert relay.wait_no_calls() == []


def test_audio_flows_again_after_hold_and_resume(echo_setup, open_page, tmp_path):
    gw, relay, echo_port = echo_setup
    with Sipp("uas_hold_resume.xml", tmp_path, local_port=echo_port, timeout=40,
              extra_args=["-rtp_echo", "-mp", str(free_port())]) as sipp:
        page = open_page(gw)
        register_page(page, "5009")
        page.fill("#number", "9196")
        page.click("#callBtn")
        wait_audio((page, AGENT_CALL))
        row = page.locator("#calls [data-call-id]").first
        row.locator(".hold").click()
        row.locator(".callState").filter(has_text="held").wait_for(timeout=TIMEOUT)
        row.locator(".resume").click()
        row.locator(".callState").filter(has_text="active").wait_for(timeout=TIMEOUT)
        before = page.evaluate(stats_js(AGENT_CALL))["received"]
        after = wait_audio_growth(page, before)
        assert after > before
        row.locator(".hangup").click()
        assert sipp.wait(15) == 0, sipp.describe()
    assert relay.wait_no_calls() == []


def wait_audio_growth(page, before: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    received = before
    while time.monotonic() < deadline:
        received = page.evaluate(stats_js(AGENT_CALL)).get("received", 0)
        if received > before + 20:
            return received
        time.sleep(0.25)
    return received
