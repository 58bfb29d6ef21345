"""wsgw.sdp_policy: the codec policy applied to browser SDP before it goes to SIP."""

from __future__ import annotations

import pytest
import sdp_transform

from wsgw.config import GatewayConfig
from wsgw.sdp_policy import FilteredSdp, NoAllowedCodec, apply_codec_policy

GW_CODECS = list(GatewayConfig().codecs)  # ["PCMU", "PCMA", "telephone-event"]

_SESSION = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
]

_AUDIO_MLINE = [
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1467250027 1 udp 2122260223 192.168.1.23 54400 typ host generation 0 network-id 1",
    "a=candidate:3923432051 1 udp 1686052607 203.0.113.7 54400 typ srflx raddr 192.168.1.23 rport 54400"
    " generation 0 network-id 1",
    "a=ice-ufrag:Kq7v",
    "a=ice-pwd:Xy3bQ8m2Lr9Tz1Wc6Vn4Hd0J",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:"
    "54:02:12:DF",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:6e3b0f5c-3c1e-4a9a-9d27-3b9f3f0c6a11 0c9a2b1e-7d4f-4e2a-8c1b-5f6d7e8a9b0c",
    "a=rtcp-mux",
    "a=rtcp-rsize",
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
    "a=ssrc:3735928559 cname:hT2mK9pQ4rX7vL1w",
    "a=ssrc:3735928559 msid:6e3b0f5c-3c1e-4a9a-9d27-3b9f3f0c6a11 0c9a2b1e-7d4f-4e2a-8c1b-5f6d7e8a9b0c",
]

_VIDEO_MLINE = [
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Kq7v",
    "a=ice-pwd:Xy3bQ8m2Lr9Tz1Wc6Vn4Hd0J",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:"
    "54:02:12:DF",
    "a=setup:actpass",
    "a=mid:1",
    "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000",
    "a=rtcp-fb:102 nack pli",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000",
    "a=fmtp:103 apt=102",
    "a=ssrc-group:FID 1111111111 2222222222",
    "a=ssrc:1111111111 cname:hT2mK9pQ4rX7vL1w",
    "a=ssrc:2222222222 cname:hT2mK9pQ4rX7vL1w",
]


def _sdp(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


# A Chromium audio-only offer, as RTCPeerConnection.createOffer() produces it.
CHROME_AUDIO_OFFER = _sdp(
    *_SESSION,
    "a=group:BUNDLE 0",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 6e3b0f5c-3c1e-4a9a-9d27-3b9f3f0c6a11",
    *_AUDIO_MLINE,
)

# The same with a video m-line bundled behind it.
CHROME_AUDIO_VIDEO_OFFER = _sdp(
    *_SESSION,
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 6e3b0f5c-3c1e-4a9a-9d27-3b9f3f0c6a11",
    *_AUDIO_MLINE,
    *_VIDEO_MLINE,
)

OPUS_ONLY_OFFER = _sdp(
    *_SESSION,
    "a=group:BUNDLE 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:Kq7v",
    "a=ice-pwd:Xy3bQ8m2Lr9Tz1Wc6Vn4Hd0J",
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:"
    "54:02:12:DF",
    "a=setup:actpass",
    "a=mid:0",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
)

VIDEO_ONLY_OFFER = _sdp(*_SESSION, "a=group:BUNDLE 1", *_VIDEO_MLINE)


def _lines(sdp: str) -> list[str]:
    return sdp.split("\r\n")


def _media(sdp: str, kind: str) -> dict:
    [media] = [m for m in sdp_transform.parse(sdp)["media"] if m["type"] == kind]
    return media


def _payloads(sdp: str, kind: str = "audio") -> str:
    return str(_media(sdp, kind)["payloads"])


def _attr_lines(sdp: str, prefix: str) -> list[str]:
    return [line for line in _lines(sdp) if line.startswith(prefix)]


@pytest.fixture
def filtered() -> FilteredSdp:
    return apply_codec_policy(CHROME_AUDIO_OFFER, GW_CODECS)


# --- the default policy on a Chromium audio offer -------------------------------------------------


def test_default_policy_keeps_pcmu_pcma_dtmf_in_gw_codecs_order(filtered):
    assert GW_CODECS == ["PCMU", "PCMA", "telephone-event"]
    assert _payloads(filtered.sdp) == "0 8 126"
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 0 8 126" in _lines(filtered.sdp)


def test_kept_codecs_listed_in_order(filtered):
    assert filtered.codecs == ["PCMU", "PCMA", "telephone-event"]


def test_rtpmaps_are_exactly_the_kept_payloads(filtered):
    assert _attr_lines(filtered.sdp, "a=rtpmap:") == [
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:126 telephone-event/8000",
    ]
    rtp = _media(filtered.sdp, "audio")["rtp"]
    assert [(r["payload"], r["codec"], r["rate"]) for r in rtp] == [
        (0, "PCMU", 8000), (8, "PCMA", 8000), (126, "telephone-event", 8000)]


@pytest.mark.parametrize("codec", ["opus", "red", "G722", "CN"])
def test_removed_codecs_have_no_rtpmap(filtered, codec):
    assert not [line for line in _attr_lines(filtered.sdp, "a=rtpmap:") if f" {codec}/" in line]
    assert codec.lower() not in [r["codec"].lower() for r in _media(filtered.sdp, "audio")["rtp"]]


def test_no_fmtp_or_rtcp_fb_of_removed_payloads(filtered):
    assert _attr_lines(filtered.sdp, "a=fmtp:") == []
    assert _attr_lines(filtered.sdp, "a=rtcp-fb:") == []
    media = _media(filtered.sdp, "audio")
    assert not media.get("fmtp")
    assert not media.get("rtcpFb")
    for removed in ("111", "63", "9", "13", "110"):
        assert not [line for line in _lines(filtered.sdp) if line.startswith(("a=rtpmap:" + removed + " ",
                                                                                "a=fmtp:" + removed + " ",
                                                                                "a=rtcp-fb:" + removed + " "))]


def test_telephone_event_48k_dropped_8k_kept(filtered):
    assert "a=rtpmap:110 telephone-event/48000" not in _lines(filtered.sdp)
    assert "a=rtpmap:126 telephone-event/8000" in _lines(filtered.sdp)
    assert "110" not in _payloads(filtered.sdp).split()


def test_ice_and_dtls_attributes_preserved(filtered):
    lines = _lines(filtered.sdp)
    for line in (
        "a=ice-ufrag:Kq7v",
        "a=ice-pwd:Xy3bQ8m2Lr9Tz1Wc6Vn4Hd0J",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:"
        "54:02:12:DF",
        "a=setup:actpass",
        "a=mid:0",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=group:BUNDLE 0",
        "a=sendrecv",
        "a=candidate:1467250027 1 udp 2122260223 192.168.1.23 54400 typ host generation 0 network-id 1",
        "a=candidate:3923432051 1 udp 1686052607 203.0.113.7 54400 typ srflx raddr 192.168.1.23 rport 54400"
        " generation 0 network-id 1",
    ):
        assert line in lines, line


def test_media_level_webrtc_attributes_survive_parse(filtered):
    media = _media(filtered.sdp, "audio")
    assert media["protocol"] == "UDP/TLS/RTP/SAVPF"
    assert media["iceUfrag"] == "Kq7v"
    assert media["icePwd"] == "Xy3bQ8m2Lr9Tz1Wc6Vn4Hd0J"
    assert media["fingerprint"]["type"] == "sha-256"
    assert media["setup"] == "actpass"
    assert media["rtcpMux"] == "rtcp-mux"
    assert str(media["mid"]) == "0"
    assert len(media["candidates"]) == 2
    assert [e["uri"] for e in media["ext"]] == [
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "urn:ietf:params:rtp-hdrext:sdes:mid",
    ]
    assert [(s["id"], s["attribute"]) for s in media["ssrcs"]] == [(3735928559, "cname"), (3735928559, "msid")]


def test_only_codec_lines_change(filtered):
    """Apart from the m= line and removed codec attributes, every input line is still there."""
    removed = {
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
    }
    before = set(_lines(CHROME_AUDIO_OFFER))
    after = set(_lines(filtered.sdp))
    assert before - after == removed
    assert after - before == {"m=audio 9 UDP/TLS/RTP/SAVPF 0 8 126"}


def test_result_ends_with_crlf_and_reparses(filtered):
    assert filtered.sdp.endswith("\r\n")
    assert "\n" not in filtered.sdp.replace("\r\n", "")
    session = sdp_transform.parse(filtered.sdp)
    assert session["version"] == 0
    assert [m["type"] for m in session["media"]] == ["audio"]
    # Filtering an already filtered SDP changes nothing.
    again = apply_codec_policy(filtered.sdp, GW_CODECS)
    assert again.sdp == filtered.sdp
    assert again.codecs == filtered.codecs


def test_input_without_trailing_crlf_still_gets_one():
    result = apply_codec_policy(CHROME_AUDIO_OFFER.rstrip("\r\n"), GW_CODECS)
    assert result.sdp.endswith("\r\n")
    assert _payloads(result.sdp) == "0 8 126"


def test_tuple_of_codecs_from_config_accepted():
    result = apply_codec_policy(CHROME_AUDIO_OFFER, GatewayConfig().codecs)
    assert _payloads(result.sdp) == "0 8 126"


# --- the allowed list decides membership and order -------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "payloads"),
    [
        (["PCMA", "PCMU", "telephone-event"], "8 0 126"),
        (["PCMA", "PCMU"], "8 0"),
        (["PCMU", "PCMA"], "0 8"),
        (["PCMA"], "8"),
        (["G722", "PCMU", "telephone-event"], "9 0 126"),
    ],
)
def test_order_and_membership_follow_allowed_list(allowed, payloads):
    result = apply_codec_policy(CHROME_AUDIO_OFFER, allowed)
    assert _payloads(result.sdp) == payloads
    # rtpmap lines exist for exactly the kept payloads (their order in the SDP carries no meaning).
    assert sorted(str(r["payload"]) for r in _media(result.sdp, "audio")["rtp"]) == sorted(payloads.split())
    assert set(result.codecs) == {r["codec"] for r in _media(result.sdp, "audio")["rtp"]}


@pytest.mark.parametrize(
    ("allowed", "codecs"),
    [
        (["PCMU", "PCMA", "telephone-event"], ["PCMU", "PCMA", "telephone-event"]),
        (["PCMU", "PCMA"], ["PCMU", "PCMA"]),
        (["G722", "PCMU"], ["G722", "PCMU"]),
    ],
)
def test_codecs_listed_in_order_when_preference_matches_offer_order(allowed, codecs):
    assert apply_codec_policy(CHROME_AUDIO_OFFER, allowed).codecs == codecs


def test_codecs_follow_preference_order_like_the_mline():
    result = apply_codec_policy(CHROME_AUDIO_OFFER, ["PCMA", "PCMU", "telephone-event"])
    assert _payloads(result.sdp) == "8 0 126"
    assert result.codecs == ["PCMA", "PCMU", "telephone-event"]


def test_preference_order_pcma_first():
    result = apply_codec_policy(CHROME_AUDIO_OFFER, ["PCMA", "PCMU", "telephone-event"])
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 8 0 126" in _lines(result.sdp)


def test_telephone_event_omitted_when_not_allowed():
    result = apply_codec_policy(CHROME_AUDIO_OFFER, ["PCMU", "PCMA"])
    assert "telephone-event" not in result.sdp
    assert "126" not in _payloads(result.sdp).split()
    assert "telephone-event" not in result.codecs


def test_telephone_event_follows_the_kept_voice_rate():
    # Opus is 48 kHz: only the 48 kHz telephone-event goes with it.
    result = apply_codec_policy(CHROME_AUDIO_OFFER, ["opus", "telephone-event"])
    assert _payloads(result.sdp) == "111 110"
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in _lines(result.sdp)
    assert "a=rtcp-fb:111 transport-cc" in _lines(result.sdp)
    assert "a=fmtp:63 111/111" not in _lines(result.sdp)
    assert result.codecs == ["opus", "telephone-event"]


def test_codec_names_are_case_insensitive():
    result = apply_codec_policy(CHROME_AUDIO_OFFER, ["pcmu", "Pcma", "TELEPHONE-EVENT"])
    assert _payloads(result.sdp) == "0 8 126"
    # Names are reported as the offer spells them.
    assert result.codecs == ["PCMU", "PCMA", "telephone-event"]


def test_lowercase_single_codec():
    result = apply_codec_policy(CHROME_AUDIO_OFFER, ["pcmu"])
    assert _payloads(result.sdp) == "0"
    assert result.codecs == ["PCMU"]


# --- nothing acceptable -------------------------------------------------------------------------


def test_opus_only_offer_raises():
    with pytest.raises(NoAllowedCodec):
        apply_codec_policy(OPUS_ONLY_OFFER, GW_CODECS)


def test_no_allowed_codec_is_a_value_error():
    assert issubclass(NoAllowedCodec, ValueError)


def test_only_telephone_event_allowed_raises():
    # DTMF alone is not a voice codec.
    with pytest.raises(NoAllowedCodec):
        apply_codec_policy(CHROME_AUDIO_OFFER, ["telephone-event"])


def test_unknown_codecs_only_raises():
    with pytest.raises(NoAllowedCodec):
        apply_codec_policy(CHROME_AUDIO_OFFER, ["G729", "AMR"])


def test_sdp_without_audio_raises():
    with pytest.raises(NoAllowedCodec):
        apply_codec_policy(VIDEO_ONLY_OFFER, GW_CODECS)


def test_session_without_any_media_raises():
    with pytest.raises(NoAllowedCodec):
        apply_codec_policy(_sdp(*_SESSION), GW_CODECS)


# --- other media is left alone ------------------------------------------------------------------


def test_video_mline_untouched():
    before = _media(CHROME_AUDIO_VIDEO_OFFER, "video")
    result = apply_codec_policy(CHROME_AUDIO_VIDEO_OFFER, GW_CODECS)
    after = _media(result.sdp, "video")
    assert after == before
    assert _payloads(result.sdp, "video") == "96 97 102 103"
    lines = _lines(result.sdp)
    for line in _VIDEO_MLINE:
        assert line in lines, line


def test_audio_filtered_in_two_mline_offer():
    result = apply_codec_policy(CHROME_AUDIO_VIDEO_OFFER, GW_CODECS)
    session = sdp_transform.parse(result.sdp)
    assert [m["type"] for m in session["media"]] == ["audio", "video"]
    assert _payloads(result.sdp) == "0 8 126"
    assert result.codecs == ["PCMU", "PCMA", "telephone-event"]
    assert "a=group:BUNDLE 0 1" in _lines(result.sdp)
    assert result.sdp.endswith("\r\n")
    # Audio codec attributes gone, video ones (fmtp/rtcp-fb) kept.
    audio = _media(result.sdp, "audio")
    assert not audio.get("fmtp") and not audio.get("rtcpFb")
    assert "a=fmtp:97 apt=96" in _lines(result.sdp)
    assert "a=rtcp-fb:96 nack pli" in _lines(result.sdp)


def test_calls_are_independent():
    first = apply_codec_policy(CHROME_AUDIO_VIDEO_OFFER, ["PCMA"])
    second = apply_codec_policy(CHROME_AUDIO_VIDEO_OFFER, GW_CODECS)
    assert _payloads(first.sdp) == "8"
    assert _payloads(second.sdp) == "0 8 126"


# --- known problem ------------------------------------------------------------------------------

TCP_CANDIDATE = ("a=candidate:434011107 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active generation 0"
                 " network-id 1")


def test_tcp_candidate_keeps_tcptype():
    offer = CHROME_AUDIO_OFFER.replace(
        "a=ice-ufrag:Kq7v\r\n", TCP_CANDIDATE + "\r\na=ice-ufrag:Kq7v\r\n")
    assert TCP_CANDIDATE in _lines(offer)
    result = apply_codec_policy(offer, GW_CODECS)
    assert TCP_CANDIDATE in _lines(result.sdp)


# --- offered_direction / mirror_answer / bump_version (mid-call re-INVITEs) ---------------------

from wsgw.sdp_policy import bump_version, mirror_answer, offered_direction  # noqa: E402

# A SIP phone's offer: plain RTP/AVP, one audio m-line.
_PHONE = ["v=0", "o=phone 7 41 IN IP4 10.0.0.2", "s=-", "c=IN IP4 10.0.0.2", "t=0 0"]
_PHONE_AUDIO = ["m=audio 40000 RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"]
# What the gateway sent last (codec-filtered Chromium SDP, o= version 2).
LOCAL = apply_codec_policy(CHROME_AUDIO_OFFER, GW_CODECS).sdp


def _phone_offer(direction: str | None = None, session_direction: str | None = None) -> str:
    lines = list(_PHONE) + ([f"a={session_direction}"] if session_direction else []) + list(_PHONE_AUDIO)
    return _sdp(*lines, *([f"a={direction}"] if direction else []))


def _version(sdp: str) -> int:
    return int(sdp_transform.parse(sdp)["origin"]["sessionVersion"])


def _directions(sdp: str) -> list[str | None]:
    return [m.get("direction") for m in sdp_transform.parse(sdp)["media"]]


@pytest.mark.parametrize("direction", ["sendrecv", "sendonly", "recvonly", "inactive"])
def test_offered_direction_media_level(direction):
    assert offered_direction(_phone_offer(direction)) == direction


@pytest.mark.parametrize("direction", ["sendonly", "recvonly", "inactive"])
def test_offered_direction_session_level_fallback(direction):
    assert offered_direction(_phone_offer(None, session_direction=direction)) == direction


def test_offered_direction_media_level_wins_over_session_level():
    assert offered_direction(_phone_offer("recvonly", session_direction="sendonly")) == "recvonly"


def test_offered_direction_defaults_to_sendrecv():
    assert offered_direction(_phone_offer()) == "sendrecv"


def test_offered_direction_looks_at_the_first_audio_mline():
    video_first = _sdp(*_PHONE, "m=video 40002 RTP/AVP 96", "a=rtpmap:96 VP8/90000", "a=inactive",
                       *_PHONE_AUDIO, "a=sendonly")
    assert offered_direction(video_first) == "sendonly"
    assert offered_direction(VIDEO_ONLY_OFFER) == "sendrecv"  # no audio: session level, else sendrecv
    assert offered_direction(_sdp(*_PHONE, "a=inactive", "m=video 40002 RTP/AVP 96", "a=rtpmap:96 VP8/90000")) \
        == "inactive"


@pytest.mark.parametrize("offered, answered", [
    ("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"), ("sendrecv", "sendrecv")])
def test_mirror_answer_mirrors_the_direction(offered, answered):
    answer = mirror_answer(LOCAL, _phone_offer(offered))
    assert _directions(answer) == [answered]
    assert f"a={answered}" in _lines(answer)
    assert [line for line in _lines(answer) if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")] \
        == [f"a={answered}"]


def test_mirror_answer_offer_without_direction_is_sendrecv():
    held_local = LOCAL.replace("a=sendrecv", "a=sendonly")
    assert _directions(mirror_answer(held_local, _phone_offer())) == ["sendrecv"]
    assert _directions(mirror_answer(held_local, "")) == ["sendrecv"]


def test_mirror_answer_uses_session_level_direction_of_the_offer():
    assert _directions(mirror_answer(LOCAL, _phone_offer(None, session_direction="sendonly"))) == ["recvonly"]


def test_mirror_answer_drops_our_session_level_direction():
    local = LOCAL.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n", 1)
    assert sdp_transform.parse(local).get("direction") == "sendonly"
    answer = mirror_answer(local, _phone_offer("sendonly"))
    assert sdp_transform.parse(answer).get("direction") is None
    assert _directions(answer) == ["recvonly"]


def test_mirror_answer_increments_the_version_and_changes_nothing_else():
    answer = mirror_answer(LOCAL, _phone_offer("sendonly"))
    assert _version(LOCAL) == 2 and _version(answer) == 3
    expected = LOCAL.replace("o=- 4611731400430051336 2 IN IP4", "o=- 4611731400430051336 3 IN IP4") \
        .replace("a=sendrecv", "a=recvonly").replace("a=setup:actpass", "a=setup:active")
    assert sorted(_lines(answer)) == sorted(_lines(expected))
    assert answer.endswith("\r\n")
    assert "opus" not in answer.lower()


def test_mirror_answer_per_mline():
    local = apply_codec_policy(CHROME_AUDIO_VIDEO_OFFER, GW_CODECS).sdp
    offer = _sdp(*_PHONE, *_PHONE_AUDIO, "a=sendonly", "m=video 40002 RTP/AVP 96", "a=rtpmap:96 VP8/90000",
                 "a=inactive")
    assert _directions(mirror_answer(local, offer)) == ["recvonly", "inactive"]
    # an offer with fewer m-lines: the rest follow its session-level direction, else sendrecv
    assert _directions(mirror_answer(local, _phone_offer("sendonly"))) == ["recvonly", "sendrecv"]
    assert _directions(mirror_answer(local, _phone_offer("recvonly", session_direction="inactive"))) \
        == ["sendonly", "inactive"]


def test_mirror_answer_keeps_tcp_candidates_verbatim():
    local = LOCAL.replace("a=ice-ufrag:Kq7v\r\n", TCP_CANDIDATE + "\r\na=ice-ufrag:Kq7v\r\n")
    answer = mirror_answer(local, _phone_offer("sendonly"))
    assert TCP_CANDIDATE in _lines(answer)
    assert [line for line in _lines(answer) if line.startswith("a=candidate:")] == \
        [line for line in _lines(local) if line.startswith("a=candidate:")]


def test_mirror_answer_is_not_actpass():
    assert "a=setup:actpass" in _lines(LOCAL)  # what the browser offered on an outbound call
    answer = mirror_answer(LOCAL, _phone_offer("sendonly").replace("RTP/AVP", "UDP/TLS/RTP/SAVPF"))
    assert "a=setup:actpass" not in _lines(answer)


def test_bump_version_increments_only_the_version():
    bumped = bump_version(LOCAL)
    assert _version(bumped) == _version(LOCAL) + 1
    assert sorted(_lines(bumped)) == sorted(
        _lines(LOCAL.replace("o=- 4611731400430051336 2 IN IP4", "o=- 4611731400430051336 3 IN IP4")))
    assert bumped.endswith("\r\n")
    assert _version(bump_version(bumped)) == _version(LOCAL) + 2


def test_bump_version_exact_text_of_a_plain_sdp():
    phone = _phone_offer("sendonly")
    assert bump_version(phone) == phone.replace("o=phone 7 41 ", "o=phone 7 42 ")


def test_bump_version_large_version():
    sdp = _phone_offer().replace("o=phone 7 41 ", "o=phone 7 4611731400430051336 ")
    assert "o=phone 7 4611731400430051337 IN IP4 10.0.0.2" in _lines(bump_version(sdp))


def test_bump_version_keeps_tcp_candidates_and_direction():
    local = LOCAL.replace("a=ice-ufrag:Kq7v\r\n", TCP_CANDIDATE + "\r\na=ice-ufrag:Kq7v\r\n").replace(
        "a=sendrecv", "a=sendonly")
    bumped = bump_version(local)
    assert TCP_CANDIDATE in _lines(bumped)
    assert _directions(bumped) == ["sendonly"]


# ---- strip_webrtc_attributes (the SDP a media relay produced for the SIP side) ----

from wsgw.sdp_policy import strip_webrtc_attributes  # noqa: E402

# WebRTC-only attribute lines that must not reach a plain SIP peer.
_WEBRTC_PREFIXES = ("a=group:", "a=extmap-allow-mixed", "a=msid-semantic", "a=msid:", "a=ssrc:", "a=ssrc-group:",
                    "a=rtcp-fb:", "a=extmap:", "a=ice-ufrag:", "a=ice-pwd:", "a=ice-options:", "a=fingerprint:",
                    "a=setup:", "a=candidate:", "a=end-of-candidates", "a=rtcp-mux", "a=rtcp-rsize")

# rtpengine 10.5's offer toward SIP for a Chrome offer (toward_sip flags), captured on this machine.
_RELAY_OFFER = _sdp(
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=extmap-allow-mixed",
    "a=msid-semantic: WMS stream", "m=audio 30600 RTP/AVP 0 8 126", "c=IN IP4 127.0.0.1", "a=msid:stream track",
    "a=ssrc:1001 cname:abc", "a=mid:0", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:126 telephone-event/8000", "a=sendrecv", "a=rtcp:30601",
)


def _webrtc_lines(sdp: str) -> list[str]:
    return [line for line in _lines(sdp) if line.startswith(_WEBRTC_PREFIXES)]


def test_strip_webrtc_attributes_of_rtpengines_offer_exact():
    assert strip_webrtc_attributes(_RELAY_OFFER) == _sdp(
        "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 30600 RTP/AVP 0 8 126",
        "c=IN IP4 127.0.0.1", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000",
        "a=rtcp:30601", "a=sendrecv", "a=mid:0",
    )


def test_strip_webrtc_attributes_of_a_full_browser_offer():
    assert _webrtc_lines(CHROME_AUDIO_VIDEO_OFFER)  # the input has plenty of them
    out = strip_webrtc_attributes(CHROME_AUDIO_VIDEO_OFFER)
    assert _webrtc_lines(out) == []
    assert out.endswith("\r\n")


def test_strip_webrtc_attributes_keeps_media_description():
    out = strip_webrtc_attributes(CHROME_AUDIO_VIDEO_OFFER)
    kept = [line for line in _lines(CHROME_AUDIO_VIDEO_OFFER)
            if line.startswith(("v=", "o=", "s=", "t=", "c=", "m=", "a=rtpmap:", "a=fmtp:", "a=mid:", "a=rtcp:",
                                "a=sendrecv"))]
    assert sorted(line for line in _lines(out) if line) == sorted(kept)
    assert [line for line in _lines(out) if line.startswith("m=")] == [
        line for line in _lines(CHROME_AUDIO_VIDEO_OFFER) if line.startswith("m=")]
    assert _attr_lines(out, "a=rtpmap:") == _attr_lines(CHROME_AUDIO_VIDEO_OFFER, "a=rtpmap:")


def test_strip_webrtc_attributes_session_level_ice_and_dtls():
    sdp = _sdp("v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=ice-ufrag:Kq7v",
               "a=ice-pwd:Xy3bQ8m2Lr9Tz1Wc6Vn4Hd0J", "a=ice-options:trickle",
               "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B", "a=setup:actpass",
               "m=audio 30600 RTP/AVP 0", "c=IN IP4 127.0.0.1", "a=rtpmap:0 PCMU/8000", "a=sendonly")
    assert strip_webrtc_attributes(sdp) == _sdp("v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
                                                 "m=audio 30600 RTP/AVP 0", "c=IN IP4 127.0.0.1",
                                                 "a=rtpmap:0 PCMU/8000", "a=sendonly")


def test_strip_webrtc_attributes_removes_every_candidate_form():
    sdp = _sdp(*_SESSION, "m=audio 30600 RTP/AVP 0", "c=IN IP4 127.0.0.1",
               "a=candidate:1467250027 1 udp 2122260223 192.168.1.23 54400 typ host generation 0",
               TCP_CANDIDATE, "a=candidate:garbage", "a=end-of-candidates", "a=rtpmap:0 PCMU/8000",
               "a=ptime:20", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz")
    out = strip_webrtc_attributes(sdp)
    assert not [line for line in _lines(out) if "candidate" in line]
    # Attributes a plain SIP peer understands stay (ptime, SDES crypto).
    assert "a=ptime:20" in _lines(out)
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz" in _lines(out)


def test_strip_webrtc_attributes_leaves_a_plain_sdp_alone():
    for phone in (_phone_offer(), _phone_offer("sendonly"), _phone_offer(session_direction="inactive")):
        assert strip_webrtc_attributes(phone) == phone


def test_strip_webrtc_attributes_is_idempotent():
    once = strip_webrtc_attributes(CHROME_AUDIO_VIDEO_OFFER)
    assert strip_webrtc_attributes(once) == once


def test_strip_webrtc_attributes_keeps_directions():
    for direction in ("sendonly", "recvonly", "inactive", "sendrecv"):
        out = strip_webrtc_attributes(_RELAY_OFFER.replace("a=sendrecv", f"a={direction}"))
        assert _directions(out) == [direction]


def test_lines_that_are_not_sdp_are_dropped():
    """Only `<letter>=` lines are SDP: text shaped like a SIP header never reaches the SIP body."""
    offer = CHROME_AUDIO_OFFER
    for sdp in (offer + "X-Injected: 1\r\n", offer.replace("s=-\r\n", "s=-\nX-Injected: 1\n"),
                offer + "\r\nX-Injected: 1\r\n", offer.replace("t=0 0\r\n", "t=0 0\r\n\r\nA=b\r\n")):
        result = apply_codec_policy(sdp, ["PCMU"])
        assert "X-Injected" not in result.sdp and "A=b" not in result.sdp
        assert result.sdp.startswith("v=0\r\n") and "\r\n\r\n" not in result.sdp
