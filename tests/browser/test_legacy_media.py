"""Real audio between a JSON client's page and a legacy (JsSIP-like) browser, through rtpengine.

No SIP-over-WebSocket page exists here, so the legacy browser is split in two: its SIP
goes over the WebSocket from Python (harness/sipws.py, as JsSIP would send it), its
media is a bare RTCPeerConnection in a second Chromium page (fake microphone playing a
tone). The JSON client is the gateway's own agent page. Audio must flow both ways, on
both pages, in both call directions, with GW_MEDIA=rtpengine.
"""

from __future__ import annotations


import pytest

from harness.gateway import PASSWORDS, SUBSCRIBERS, Gateway
from harness.rtpengine import RtpEngine
from harness.sipws import SipWsClient

from harness.webrtc_stats import AGENT_CALL, wait_audio
from test_media_audio import TIMEOUT, register_page

pytestmark = pytest.mark.integration

# The legacy browser's WebRTC half: what JsSIP does with the SDP it sends and receives.
LEGACY_JS = """() => {
  const gathered = pc => new Promise(resolve => {
    // First host candidate + 250 ms, as the JSON client does (KAMAILIO-NOTES: no STUN wait).
    let timer = null;
    const done = () => { clearTimeout(timer); resolve(); };
    pc.onicecandidate = e => { if (!e.candidate) done(); else if (!timer) timer = setTimeout(done, 250); };
    if (pc.iceGatheringState === 'complete') done();
    setTimeout(done, 2000);
  });
  window.legacy = {
    async start() {
      // rtpengine 10.5 writes no a=group:BUNDLE: 'balanced' (KAMAILIO-NOTES).
      const pc = this.pc = new RTCPeerConnection({bundlePolicy: 'balanced'});
      const stream = await navigator.mediaDevices.getUserMedia({audio: true});
      stream.getTracks().forEach(t => pc.addTrack(t, stream));
      const audio = document.createElement('audio');
      audio.autoplay = true;
      document.body.appendChild(audio);  // audioLevel stays 0 unless the remote audio plays
      pc.ontrack = e => { audio.srcObject = new MediaStream([e.track]); audio.play(); };
    },
    async offer() {
      await this.start();
      const wait = gathered(this.pc);
      await this.pc.setLocalDescription(await this.pc.createOffer());
      await wait;
      return this.pc.localDescription.sdp;
    },
    async answer(sdp) {
      await this.start();
      await this.pc.setRemoteDescription({type: 'offer', sdp});
      const wait = gathered(this.pc);
      await this.pc.setLocalDescription(await this.pc.createAnswer());
      await wait;
      return this.pc.localDescription.sdp;
    },
    async accept(sdp) { await this.pc.setRemoteDescription({type: 'answer', sdp}); },
  };
}"""

# The legacy browser's peer connection (LEGACY_JS).
LEGACY_PC = "window.legacy && window.legacy.pc"


@pytest.fixture(scope="module")
def relay_setup(workdir):
    relay = RtpEngine(workdir / "rtpengine-legacy").start()
    try:  # the relay is stopped even when the gateway fails to start
        gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_MEDIA": "rtpengine",
                                   "GW_RTPENGINE": relay.address, "GW_RESUME_GRACE": "0"}).start()
        yield gw, relay
        gw.stop()
    finally:
        relay.stop()


@pytest.fixture
def legacy_browser(relay_setup, open_page):
    """(SIP-over-WebSocket client, media page) of one legacy agent."""
    gw, _ = relay_setup
    made = []

    def make(dn: str):
        client = SipWsClient(gw.ws_url, dn, PASSWORDS[dn])
        made.append(client)
        assert client.register().status == 200
        page = open_page(gw, "no-such-page")  # any page of the gateway's origin: a secure context
        page.evaluate(LEGACY_JS)
        return client, page

    yield make
    for client in made:
        client.close()


def test_json_page_calls_legacy_browser_with_audio(relay_setup, open_page, legacy_browser):
    gw, relay = relay_setup
    bob, bob_media = legacy_browser("5002")
    page = open_page(gw)
    register_page(page, "5001")
    page.fill("#number", "5002")
    page.click("#callBtn")
    incoming = bob.wait_invite()
    assert "UDP/TLS/RTP/SAVPF" in incoming.invite.body
    bob.ring(incoming)
    answer = bob_media.evaluate("sdp => window.legacy.answer(sdp)", incoming.invite.body)
    assert bob.answer(incoming, answer) is not None
    json_side, legacy_side = wait_audio((page, AGENT_CALL), (bob_media, LEGACY_PC))
    assert json_side["dtls"] == legacy_side["dtls"] == "connected"
    assert legacy_side["codec"] == "audio/PCMU"
    page.locator("#calls [data-call-id] .hangup").first.click()
    bob.answer_bye(incoming)
    assert relay.wait_no_calls() == []


def test_legacy_browser_calls_json_page_with_audio(relay_setup, open_page, legacy_browser):
    gw, relay = relay_setup
    alice, alice_media = legacy_browser("5003")
    page = open_page(gw)
    register_page(page, "5004")
    offer = alice_media.evaluate("() => window.legacy.offer()")
    dialog, _ = alice.invite("5004", offer, wait_final=False)
    page.locator("#incoming").wait_for(state="visible", timeout=TIMEOUT)
    page.locator("#calls [data-call-id] .answer").first.click()
    final = alice.wait_final(dialog)
    assert final.status == 200 and "a=fingerprint:" in final.body
    alice_media.evaluate("sdp => window.legacy.accept(sdp)", final.body)
    json_side, legacy_side = wait_audio((page, AGENT_CALL), (alice_media, LEGACY_PC))
    assert json_side["dtls"] == legacy_side["dtls"] == "connected"
    assert alice.bye(dialog).status == 200
    assert relay.wait_no_calls() == []
