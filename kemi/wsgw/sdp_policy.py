"""Server-side codec policy: the SDP sent toward SIP keeps only GW_CODECS.

Uses sdp-transform (a real SDP parser/writer), never regular expressions on
the text. Audio m-lines keep the allowed codecs in GW_CODECS order; every
rtpmap/fmtp/rtcp-fb line of a removed payload goes with it. telephone-event is
kept only at a clock rate of a kept voice codec (Chrome offers it at 48 kHz for
Opus too). Other media (video, data) is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import sdp_transform

DTMF_CODEC = "telephone-event"


class NoAllowedCodec(ValueError):
    """The offer has no audio codec the SIP side accepts (answer 488)."""


@dataclass(frozen=True)
class FilteredSdp:
    sdp: str
    codecs: list[str]  # kept audio codec names in order, e.g. ["PCMU", "PCMA", "telephone-event"]


def _filter_audio(media: dict, allowed: list[str]) -> list[str]:
    rank = {name.lower(): i for i, name in enumerate(allowed)}
    rtp = media.get("rtp", [])
    original = [str(p) for p in str(media.get("payloads", "")).split()]
    by_payload = {str(r["payload"]): r for r in rtp}

    voice = [p for p in original if p in by_payload and by_payload[p]["codec"].lower() in rank
             and by_payload[p]["codec"].lower() != DTMF_CODEC]
    voice_rates = {by_payload[p].get("rate") for p in voice}
    dtmf = [p for p in original if p in by_payload and by_payload[p]["codec"].lower() == DTMF_CODEC
            and DTMF_CODEC in rank and by_payload[p].get("rate") in voice_rates]
    kept = sorted(voice + dtmf, key=lambda p: (rank[by_payload[p]["codec"].lower()], original.index(p)))

    keep = set(kept)
    media["payloads"] = " ".join(kept)
    media["rtp"] = [r for r in rtp if str(r["payload"]) in keep]
    if "fmtp" in media:
        media["fmtp"] = [f for f in media["fmtp"] if str(f["payload"]) in keep]
    if "rtcpFb" in media:
        media["rtcpFb"] = [f for f in media["rtcpFb"] if str(f["payload"]) in keep or str(f["payload"]) == "*"]
    return [by_payload[p]["codec"] for p in kept if p not in dtmf] + ([DTMF_CODEC] if dtmf else [])


def apply_codec_policy(sdp: str, allowed: list[str] | tuple[str, ...]) -> FilteredSdp:
    """Filter every audio m-line of `sdp`; raise NoAllowedCodec if no voice codec is left."""
    session = sdp_transform.parse(sdp)
    _keep_raw_candidates(sdp, session)
    audio = [m for m in session.get("media", []) if m.get("type") == "audio"]
    if not audio:
        raise NoAllowedCodec("the offer has no audio")
    codecs: list[str] = []
    for media in audio:
        kept = _filter_audio(media, list(allowed))
        if not [c for c in kept if c != DTMF_CODEC]:
            raise NoAllowedCodec(f"none of the offered audio codecs is allowed ({', '.join(allowed)})")
        codecs = codecs or kept
    return FilteredSdp(sdp=_write(session), codecs=_dedupe(codecs))


def _write(session: dict) -> str:
    text = sdp_transform.write(session)
    return text if text.endswith("\r\n") else text + "\r\n"


def _keep_raw_candidates(sdp: str, session: dict) -> None:
    """Carry ICE candidate lines through verbatim.

    sdp-transform 1.1.0 (Python) spells the RFC 6544 attribute `tcpfield`, so a
    parse/write round trip drops `tcptype ...` and what follows from TCP
    candidates. The policy never changes candidates, so keep the original text.
    """
    sections = sdp.replace("\r\n", "\n").split("\nm=")[1:]
    for media, section in zip(session.get("media", []), sections):
        raw = [line[2:] for line in section.split("\n") if line.startswith("a=candidate:")]
        if raw and media.pop("candidates", None) is not None:
            media.setdefault("invalid", []).extend({"value": line} for line in raw)


def _dedupe(names: list[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen


_ANSWER_SETUP = {"active": "passive", "passive": "active", "actpass": "active"}
_MIRROR = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


def offered_direction(sdp: str) -> str:
    """The direction of the first audio m-line (session-level attribute as fallback)."""
    session = sdp_transform.parse(sdp)
    for media in session.get("media", []):
        if media.get("type") == "audio":
            return media.get("direction") or session.get("direction") or "sendrecv"
    return session.get("direction") or "sendrecv"


def mirror_answer(local_sdp: str, remote_offer: str) -> str:
    """Our last SDP as the answer to a new offer: each m-line's direction mirrored
    (sendonly -> recvonly, ...) and the o= version incremented (RFC 3264 8)."""
    session = sdp_transform.parse(local_sdp)
    _keep_raw_candidates(local_sdp, session)
    offer = sdp_transform.parse(remote_offer) if remote_offer else {"media": []}
    offer_media = offer.get("media", [])
    for i, media in enumerate(session.get("media", [])):
        offered_media = offer_media[i] if i < len(offer_media) else {}
        offered = offered_media.get("direction")
        media["direction"] = _MIRROR.get(offered or offer.get("direction") or "sendrecv", "sendrecv")
        if media.get("setup") == "actpass":
            # An answer must pick a DTLS role (RFC 5763 5): the opposite of the offer's, else active.
            media["setup"] = _ANSWER_SETUP.get(offered_media.get("setup") or offer.get("setup") or "", "active")
    session.pop("direction", None)
    origin = session.get("origin")
    if origin:
        origin["sessionVersion"] = int(origin.get("sessionVersion", 0)) + 1
    return _write(session)


def bump_version(sdp: str) -> str:
    """The same SDP with the o= version incremented (a re-offer of unchanged media)."""
    session = sdp_transform.parse(sdp)
    _keep_raw_candidates(sdp, session)
    origin = session.get("origin")
    if origin:
        origin["sessionVersion"] = int(origin.get("sessionVersion", 0)) + 1
    return _write(session)


# Attributes only WebRTC endpoints understand; plain SIP peers get SDP without them.
_WEBRTC_SESSION_KEYS = ("extmapAllowMixed", "msidSemantic", "groups", "iceUfrag", "icePwd", "fingerprint",
                        "iceOptions", "setup")
_WEBRTC_MEDIA_KEYS = ("msid", "ssrcs", "ssrcGroups", "rtcpFb", "rtcpFbTrrInt", "ext", "extmapAllowMixed",
                      "iceUfrag", "icePwd", "fingerprint", "setup", "candidates", "endOfCandidates", "iceOptions",
                      "rtcpMux", "rtcpRsize")


def strip_webrtc_attributes(sdp: str) -> str:
    """The SDP a media relay produced for the SIP side, without WebRTC-only attributes."""
    session = sdp_transform.parse(sdp)
    for key in _WEBRTC_SESSION_KEYS:
        session.pop(key, None)
    for media in session.get("media", []):
        for key in _WEBRTC_MEDIA_KEYS:
            media.pop(key, None)
        if "invalid" in media:
            media["invalid"] = [a for a in media["invalid"] if not str(a.get("value", "")).startswith("candidate:")]
    return _write(session)
