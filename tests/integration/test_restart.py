"""A gateway restart leaves no stale state: registrations and calls start empty, the old
dialog is unknown (481), and the same DN registers again."""

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway, health
from harness.sdp import PCMU_ANSWER
from harness.sipp import Sipp, free_udp_port
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration


def test_restart_forgets_everything_and_old_dialogs_get_481(workdir, tmp_path):
    env = {"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS)}
    gw = Gateway(workdir, env=env).start()
    try:
        agent = WsClient(gw.ws_url)
        assert agent.register("5001", PASSWORDS["5001"])["type"] == "registered"
        # An inbound call is answered; SIPp hangs up 500 ms after the ACK, i.e. after the restart.
        with Sipp("uac_call_remote_bye.xml", tmp_path, local_port=free_udp_port(), remote=gw.sip_hostport,
                  service="5001", timeout=30) as sipp:
            call_id = agent.wait_for("incomingCall")["payload"]["callId"]
            assert agent.request("answer", {"callId": call_id, "sdp": PCMU_ANSWER})["type"] == "callAccepted"
            assert health(gw)["calls"] == 1 and health(gw)["registrations"] == 1
            ws_port, sip_port = gw.ws_port, gw.sip_port
            gw.stop()
            gw = Gateway(workdir, env=env, ws_port=ws_port, sip_port=sip_port).start()
            assert agent.closed.wait(10), "the old WebSocket is gone"
            doc = health(gw)
            assert (doc["calls"], doc["registrations"], doc["connections"]) == (0, 0, 0)
            sipp.wait(20)  # its BYE reaches a gateway that no longer knows the dialog
        assert "481 Call/Transaction Does Not Exist" in sipp.messages()
        with WsClient(gw.ws_url) as again:
            assert again.register("5001", PASSWORDS["5001"])["type"] == "registered"
    finally:
        gw.stop()
