"""The client library resumes its session after the network drops the WebSocket: the call stays up
(the gateway keeps it for GW_RESUME_GRACE) and is controlled from the new connection."""

import pytest

from harness.gateway import PASSWORDS, Gateway, embedded_env
from harness.screenshots import screenshot
from harness.sipp import Sipp, free_udp_port
from harness.tcpproxy import TcpProxy
from test_agent_page import TIMEOUT, call_row, log_lines, register, wait_call_state, wait_no_calls

pytestmark = pytest.mark.integration


def test_a_call_survives_a_dropped_websocket(workdir, open_page, tmp_path):
    pbx_port = free_udp_port()
    gw = Gateway(workdir, env=embedded_env(pbx_port, GW_RESUME_GRACE="20")).start()
    proxy = TcpProxy(gw.ws_port)  # the WebSocket goes through it, so the test can cut the network
    try:
        page = open_page(gw, f"?ws=ws://127.0.0.1:{proxy.port}/")
        register(page, "5006", PASSWORDS["5006"])
        with Sipp("uas_answer_wait_bye_webrtc.xml", tmp_path, local_port=pbx_port, timeout=40) as sipp:
            page.fill("#number", "9196")
            page.click("#callBtn")
            wait_call_state(page, "accepted|connected|active")
            assert proxy.cut() == 1
            assert gw.wait_log("session detached dn=5006")
            # The library reconnects and attaches by itself; the call is still there, and still up.
            page.wait_for_function(
                "[...document.querySelectorAll('#log > div')].some(d => d.textContent.startsWith('← ') && "
                "d.textContent.includes('\"attached\"'))", timeout=TIMEOUT)
            assert gw.wait_log("session attached dn=5006")
            assert page.locator("#regState").inner_text().strip() == "registered"
            wait_call_state(page, "accepted|connected|active")
            assert sipp.proc.poll() is None, "the call was ended on the SIP side"
            screenshot(page, "08-resumed-after-drop")
            call_row(page).locator(".hangup").click()
            wait_no_calls(page)
            assert sipp.wait(15) == 0, sipp.describe()
        assert "BYE sip:" in sipp.messages()
        assert any('"attach"' in line for line in log_lines(page) if line.startswith("→ "))
    finally:
        proxy.close()
        gw.stop()
