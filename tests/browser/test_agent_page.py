"""The agent page in real headless Chromium against the real gateway, with SIPp peers."""

import re
import time

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.screenshots import screenshot
from harness.sipp import Sipp, free_udp_port

pytestmark = pytest.mark.integration

TIMEOUT = 10_000  # ms, for Playwright's waits


def register(page, dn, password):
    page.fill("#dn", dn)
    page.fill("#password", password)
    page.click("#registerBtn")
    page.wait_for_function("document.querySelector('#regState').textContent.trim() === 'registered'", timeout=TIMEOUT)


def log_lines(page) -> list[str]:
    return page.locator("#log").inner_text().splitlines()


def call_row(page, call_id=None):
    selector = f"#calls [data-call-id='{call_id}']" if call_id else "#calls [data-call-id]"
    return page.locator(selector).first


def wait_no_calls(page):
    """Ended calls leave the call list."""
    page.wait_for_function("!document.querySelector('#calls [data-call-id]')", timeout=TIMEOUT)


def wait_call_state(page, text, call_id=None):
    row = call_row(page, call_id)
    row.locator(".callState").filter(has_text=re.compile(text, re.I)).wait_for(timeout=TIMEOUT)
    return row


def test_page_is_served_by_the_gateway_and_registers(page_gateway, open_page):
    page = open_page(page_gateway)
    page.wait_for_function("document.querySelector('#state').textContent.trim() === 'open'", timeout=TIMEOUT)
    register(page, "5001", PASSWORDS["5001"])
    lines = log_lines(page)
    assert any(line.startswith("→ ") and '"register"' in line for line in lines)
    assert any(line.startswith("← ") and '"registered"' in line for line in lines)
    screenshot(page, "01-registered")


def test_browser_to_browser_call_shows_the_network_path(page_gateway, open_page):
    alice, bob = open_page(page_gateway), open_page(page_gateway)
    register(alice, "5002", PASSWORDS["5002"])
    register(bob, "5003", PASSWORDS["5003"])
    alice.fill("#number", "5003")
    alice.click("#callBtn")
    bob.locator("#incoming").wait_for(state="visible", timeout=TIMEOUT)
    screenshot(bob, "02-incoming")
    call_row(bob).locator(".answer").click()
    wait_call_state(alice, "accepted|connected|active")
    # Media between the two browsers: the selected candidate pair appears once ICE is up.
    alice.wait_for_function("document.querySelector('#pairLocal').textContent.trim().length > 0", timeout=15_000)
    alice.wait_for_function("Number(document.querySelector('#pktSent').textContent) > 0", timeout=15_000)
    assert alice.locator("#tOffer").inner_text().strip() != ""
    screenshot(alice, "03-in-call-network-path")
    call_row(alice).locator(".hangup").click()
    wait_no_calls(bob)
    wait_no_calls(alice)


# ---- against SIPp peers (upstream mode: GW_UPSTREAM is both registrar and PBX) ----


@pytest.fixture(scope="module")
def pbx_port():
    return free_udp_port()


@pytest.fixture(scope="module")
def upstream_page_gateway(workdir, pbx_port):
    gw = Gateway(workdir, env={"GW_UPSTREAM": f"sip:127.0.0.1:{pbx_port}", "GW_SIP_TIMEOUT": "3"}).start()
    yield gw
    gw.stop()


_dn = iter(range(7101, 7200))


@pytest.fixture
def agent_page(upstream_page_gateway, pbx_port, open_page, tmp_path):
    """A page registered upstream through a SIPp registrar, unregistered the same way afterwards."""
    page = open_page(upstream_page_gateway)
    keys = {"expires": "600", "auth_user": "", "auth_pass": ""}
    with Sipp("registrar_challenge.xml", tmp_path / "reg", local_port=pbx_port, timeout=20, keys=keys):
        register(page, str(next(_dn)), "pw")
    yield page
    with Sipp("registrar_challenge.xml", tmp_path / "unreg", local_port=pbx_port, timeout=20, keys=keys) as sipp:
        page.evaluate("window.gw.unregister()")
        assert sipp.wait(15) == 0, sipp.describe()


def dial(page, number):
    page.fill("#number", number)
    page.click("#callBtn")


def test_outbound_call_answered_by_sipp_then_hangup(agent_page, pbx_port, tmp_path):
    with Sipp("uas_answer_wait_bye_webrtc.xml", tmp_path, local_port=pbx_port, timeout=30) as sipp:
        dial(agent_page, "6001")
        row = wait_call_state(agent_page, "accepted|connected|active")
        screenshot(agent_page, "04-outbound-answered")
        row.locator(".hangup").click()
        assert sipp.wait(15) == 0, sipp.describe()
    assert "BYE sip:" in sipp.messages()


def test_inbound_call_from_sipp_answered_in_the_page(upstream_page_gateway, agent_page, tmp_path):
    dn = agent_page.input_value("#dn")
    with Sipp("uac_call_remote_bye_webrtc.xml", tmp_path, local_port=free_udp_port(),
              remote=upstream_page_gateway.sip_hostport, service=dn, timeout=30) as sipp:
        agent_page.locator("#incoming").wait_for(state="visible", timeout=TIMEOUT)
        call_row(agent_page).locator(".answer").click()
        wait_call_state(agent_page, "accepted|connected|active")
        wait_no_calls(agent_page)  # SIPp hangs up after 500 ms
        assert sipp.wait(15) == 0, sipp.describe()


def test_hold_and_resume_buttons(agent_page, pbx_port, tmp_path):
    with Sipp("uas_hold_resume_webrtc.xml", tmp_path, local_port=pbx_port, timeout=30) as sipp:
        dial(agent_page, "6001")
        row = wait_call_state(agent_page, "accepted|connected|active")
        row.locator(".hold").click()
        wait_call_state(agent_page, "held|hold")
        screenshot(agent_page, "05-held")
        row.locator(".resume").click()
        wait_call_state(agent_page, "accepted|connected|active|resumed")
        row.locator(".hangup").click()
        assert sipp.wait(15) == 0, sipp.describe()


def test_dialpad_sends_dtmf_as_info(agent_page, pbx_port, tmp_path):
    with Sipp("uas_dtmf_info_webrtc.xml", tmp_path, local_port=pbx_port, timeout=30) as sipp:
        dial(agent_page, "6001")
        row = wait_call_state(agent_page, "accepted|connected|active")
        for digit in "12#":
            agent_page.click(f"#dialpad [data-digit='{digit}']")
        agent_page.wait_for_function(
            "[...document.querySelectorAll('#log')].some(l => (l.textContent.match(/dtmfSent/g) || []).length >= 3)",
            timeout=TIMEOUT)
        row.locator(".hangup").click()
        assert sipp.wait(15) == 0, sipp.describe()
    infos = re.findall(r"^Signal=(\S)", sipp.messages(), re.M)
    assert infos == ["1", "2", "#"]


def test_call_frame_leaves_quickly_with_an_unreachable_stun_server(page_gateway, open_page):
    silent = free_udp_port()  # nothing answers STUN there
    page = open_page(page_gateway, f"?stun=stun:127.0.0.1:{silent}")
    register(page, "5004", PASSWORDS["5004"])
    page.fill("#number", "5010")  # a known DN that is not registered: the call fails fast, which is fine here
    started = time.monotonic()
    page.click("#callBtn")
    page.wait_for_function(
        "document.querySelector('#log').textContent.split('\\n').some(l => l.startsWith('→ ') && l.includes('\"call\"'))",
        timeout=5_000)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"the call frame left {elapsed:.2f} s after the click"


def test_dropped_websocket_reconnects_and_registers_again(workdir, open_page):
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS)}).start()
    try:
        page = open_page(gw)
        register(page, "5005", PASSWORDS["5005"])
        ws_port, sip_port = gw.ws_port, gw.sip_port
        gw.stop()  # the server goes away: every WebSocket drops
        page.wait_for_function("document.querySelector('#state').textContent.trim() !== 'open'", timeout=TIMEOUT)
        screenshot(page, "06-reconnecting")
        gw = Gateway(workdir, env=gw.env, ws_port=ws_port, sip_port=sip_port).start()
        page.wait_for_function("document.querySelector('#state').textContent.trim() === 'open'", timeout=40_000)
        page.wait_for_function("document.querySelector('#regState').textContent.trim() === 'registered'",
                               timeout=TIMEOUT)
    finally:
        gw.stop()
