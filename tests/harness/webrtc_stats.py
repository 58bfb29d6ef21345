"""Audio statistics of an RTCPeerConnection in a Playwright page (getStats), for media tests."""

from __future__ import annotations

import time


def stats_js(peer_connection: str) -> str:
    """JS for page.evaluate: DTLS state, audio packets sent/received, audio level and codec of the
    RTCPeerConnection the JS expression `peer_connection` gives ({missing: true} while there is none)."""
    return """async () => {
  const pc = %s;
  const out = {dtls: null, sent: 0, received: 0, level: 0, codec: null};
  if (!pc) return {...out, missing: true};
  const report = await pc.getStats();
  const codecs = {};
  report.forEach(s => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
  report.forEach(s => {
    if (s.type === 'transport') out.dtls = s.dtlsState;
    if (s.type === 'outbound-rtp' && s.kind === 'audio') { out.sent = s.packetsSent; out.codec = codecs[s.codecId]; }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') { out.received = s.packetsReceived; out.level = s.audioLevel || 0; }
  });
  return out;
}""" % peer_connection


def wait_audio(*peers: tuple, timeout: float = 15.0) -> list[dict]:
    """Poll getStats on every (page, peer connection expression) until each sends and receives
    audible audio, bounded; their statistics, in order."""
    deadline = time.monotonic() + timeout
    stats: list[dict] = []
    while time.monotonic() < deadline:
        stats = [page.evaluate(stats_js(pc)) for page, pc in peers]
        if all(s.get("received", 0) > 20 and s.get("level", 0) > 0 and s.get("sent", 0) > 0 for s in stats):
            return stats
        time.sleep(0.25)
    raise AssertionError(f"no two-way audio within {timeout} s: {stats}")


# The agent page's call with a peer connection (window.gw is the page's GatewayClient).
AGENT_CALL = "([...window.gw.calls.values()].find(c => c.pc) || {}).pc"
