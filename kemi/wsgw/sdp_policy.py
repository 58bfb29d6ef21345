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
    text = sdp_transform.write(session)
    return FilteredSdp(sdp=text if text.endswith("\r\n") else text + "\r\n", codecs=_dedupe(codecs))


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
