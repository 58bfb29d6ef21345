"""SDP texts used by the tests."""

# An audio offer as Chromium sends it: Opus first, then red, G722, PCMU, PCMA, CN, DTMF.
CHROME_OFFER = "\r\n".join([
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS stream",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=sendrecv",
    "a=msid:stream track",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:1001 cname:abc",
    "",
])

OPUS_ONLY_OFFER = CHROME_OFFER.replace("111 63 9 0 8 13 110 126", "111").replace(
    "a=rtpmap:0 PCMU/8000\r\n", "").replace("a=rtpmap:8 PCMA/8000\r\n", "")

# What a browser answers to a plain PCMU offer.
PCMU_ANSWER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 0 101",
    "c=IN IP4 0.0.0.0", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=sendrecv", "",
])


def with_direction(sdp: str, direction: str) -> str:
    """The same SDP with its a=sendrecv/sendonly/recvonly/inactive line replaced."""
    for old in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
        if old in sdp:
            return sdp.replace(old, f"a={direction}")
    return sdp.replace("m=audio", f"a={direction}\r\nm=audio", 1)
