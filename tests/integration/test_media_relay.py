"""GW_MEDIA=rtpengine: the browser's WebRTC leg relayed to plain RTP toward SIP (real rtpengine, SIPp)."""

import re

import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.ports import free_port
from harness.rtpengine import RtpEngine
from harness.sdp import CHROME_OFFER
from harness.sipp import Sipp, free_udp_port
from harness.wsclient import WsClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rtpengine(workdir):
    relay = RtpEngine(workdir / "rtpengine").start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def pbx_port():
    return free_port()


@pytest.fixture(scope="module")
def relay_gateway(workdir, rtpengine, pbx_port):
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_MEDIA": "rtpengine",
                               "GW_RTPENGINE": rtpengine.address,
                               "GW_ECHO_URI": f"sip:9196@127.0.0.1:{pbx_port}"}).start()
    yield gw
    gw.stop()


def body_of(messages: str, first_line: str) -> str:
    part = messages.split(first_line, 1)[1]
    return part.split("\n\n", 1)[1].split("---", 1)[0]


def test_outbound_call_is_relayed_to_plain_rtp(relay_gateway, rtpengine, pbx_port, tmp_path):
    with WsClient(relay_gateway.ws_url) as agent:
        assert agent.register("5001", PASSWORDS["5001"])["type"] == "registered"
        with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=pbx_port, timeout=30) as sipp:
            reply = agent.request("call", {"to": "9196", "callId": "m1", "sdp": CHROME_OFFER})
            assert reply["type"] == "callAccepted", reply
            answer = reply["payload"]["sdp"]
            # Toward the browser: WebRTC (ICE, DTLS passive, SAVPF) from the relay.
            assert "UDP/TLS/RTP/SAVPF" in answer and "a=ice-ufrag:" in answer and "a=fingerprint:" in answer
            assert "a=setup:passive" in answer
            assert rtpengine.calls()
            ended = agent.request("hangup", {"callId": "m1"})
            assert ended["payload"]["by"] == "local"
            assert set(ended["payload"]["media"]) == {"packetsToSip", "bytesToSip", "packetsToBrowser",
                                                      "bytesToBrowser", "lost"}
            assert sipp.wait(15) == 0, sipp.describe()
    offer = sipp.messages().split("INVITE sip:9196@", 1)[1]
    # Toward SIP: plain RTP/AVP from the relay's ports, no ICE, no DTLS, no WebRTC extras.
    m = re.search(r"^m=audio (\d+) RTP/AVP 0 8 \d+", offer, re.M)
    assert m and rtpengine.port_min <= int(m.group(1)) <= rtpengine.port_max
    for webrtc_only in ("a=ice-ufrag", "a=fingerprint", "a=candidate", "a=extmap", "opus", "SAVPF"):
        assert webrtc_only not in offer.split("BYE sip:")[0]
    assert rtpengine.wait_no_calls() == []


def test_inbound_call_is_relayed_to_webrtc(relay_gateway, rtpengine, tmp_path):
    with WsClient(relay_gateway.ws_url) as agent:
        assert agent.register("5002", PASSWORDS["5002"])["type"] == "registered"
        with Sipp("uac_call_remote_bye.xml", tmp_path, local_port=free_udp_port(),
                  remote=relay_gateway.sip_hostport, service="5002", timeout=30) as sipp:
            incoming = agent.wait_for("incomingCall")
            offer = incoming["payload"]["sdp"]
            assert "UDP/TLS/RTP/SAVPF" in offer and "a=ice-ufrag:" in offer and "a=fingerprint:" in offer
            answer = CHROME_OFFER.replace("a=setup:actpass", "a=setup:active")
            call_id = incoming["payload"]["callId"]
            assert agent.request("answer", {"callId": call_id, "sdp": answer})["type"] == "callAccepted"
            ended = agent.wait_for("callEnded", callId=call_id)
            assert "media" in ended["payload"]
            assert sipp.wait(15) == 0, sipp.describe()
    ok = sipp.messages().split("SIP/2.0 200 OK", 1)[1]
    assert re.search(r"^m=audio \d+ RTP/AVP", ok, re.M) and "a=ice-ufrag" not in ok.split("BYE")[0]
    assert rtpengine.wait_no_calls() == []
