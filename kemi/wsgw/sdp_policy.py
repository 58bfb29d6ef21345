"""Server-side codec policy: the SDP sent toward SIP keeps only GW_CODECS.

Audio m-lines keep the allowed codecs in GW_CODECS order; every rtpmap/fmtp/rtcp-fb
line of a removed payload goes with it. telephone-event is kept only at a clock rate
of a kept voice codec (Chrome offers it at 48 kHz for Opus too). Other media (video,
data) and every other line are left as they are, in their order.

The filter runs on every call, so it works on the SDP's lines (m=, a=rtpmap, a=fmtp,
a=rtcp-fb: the only lines it reads or changes) instead of a full parse, which costs
about a millisecond. The rarer rewrites below (mirrored answers, WebRTC attribute
stripping) use sdp-transform, a real SDP parser/writer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sdp_transform

DTMF_CODEC = "telephone-event"


class NoAllowedCodec(ValueError):
    """The offer has no audio codec the SIP side accepts (answer 488)."""


@dataclass(frozen=True)
class FilteredSdp:
    sdp: str
    codecs: list[str]  # kept audio codec names in order, e.g. ["PCMU", "PCMA", "telephone-event"]


_PAYLOAD_ATTRIBUTES = ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")
_SDP_LINE = re.compile(r"[a-z]=")


def _kept_payloads(payloads: list[str], rtpmap: dict[str, tuple[str, str]], allowed: list[str]) -> list[str]:
    """The payload types to keep, in GW_CODECS order (offer order among equals)."""
    rank = {name.lower(): i for i, name in enumerate(allowed)}
    voice = [p for p in payloads if p in rtpmap and rtpmap[p][0].lower() in rank
             and rtpmap[p][0].lower() != DTMF_CODEC]
    voice_rates = {rtpmap[p][1] for p in voice}
    dtmf = [p for p in payloads if p in rtpmap and rtpmap[p][0].lower() == DTMF_CODEC
            and DTMF_CODEC in rank and rtpmap[p][1] in voice_rates]
    return sorted(voice + dtmf, key=lambda p: (rank[rtpmap[p][0].lower()], payloads.index(p)))


def _filter_audio(section: list[str], allowed: list[str]) -> tuple[list[str], list[str]]:
    """One audio section (its m= line first): the lines to keep and the kept codec names."""
    m_line = section[0].split()
    if len(m_line) < 3:
        raise ValueError(f"malformed m= line: {section[0]!r}")
    payloads = m_line[3:]
    rtpmap: dict[str, tuple[str, str]] = {}  # payload -> (codec, clock rate)
    for line in section[1:]:
        if line.startswith("a=rtpmap:"):
            payload, _, encoding = line[len("a=rtpmap:"):].partition(" ")
            codec, _, rest = encoding.strip().partition("/")
            rtpmap[payload] = (codec, rest.split("/")[0])
    kept = _kept_payloads(payloads, rtpmap, allowed)
    keep = set(kept)
    lines = [" ".join(m_line[:3] + kept)]
    for line in section[1:]:
        if line.startswith(_PAYLOAD_ATTRIBUTES):
            payload = line.split(":", 1)[1].split(" ", 1)[0]
            if payload not in keep and not (line.startswith("a=rtcp-fb:") and payload == "*"):
                continue
        lines.append(line)
    codecs = [rtpmap[p][0] for p in kept if rtpmap[p][0].lower() != DTMF_CODEC]
    return lines, codecs + ([DTMF_CODEC] if len(codecs) < len(kept) else [])


def apply_codec_policy(sdp: str, allowed: list[str] | tuple[str, ...]) -> FilteredSdp:
    """Filter every audio m-line of `sdp`; raise NoAllowedCodec if no voice codec is left."""
    # Only `<letter>=<value>` lines are SDP (RFC 4566 5); anything else (blank lines, text that
    # looks like a SIP header) is dropped, as a full parser would.
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if _SDP_LINE.match(line)]
    if not lines or not lines[0].startswith("v="):
        raise ValueError("not an SDP")
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")] + [len(lines)]
    out = lines[:starts[0]]
    codecs: list[str] = []
    audio_seen = False
    for start, end in zip(starts, starts[1:]):
        section = lines[start:end]
        if not section[0].startswith("m=audio "):
            out += section
            continue
        audio_seen = True
        kept_lines, kept = _filter_audio(section, list(allowed))
        if not [c for c in kept if c != DTMF_CODEC]:
            raise NoAllowedCodec(f"none of the offered audio codecs is allowed ({', '.join(allowed)})")
        codecs = codecs or kept
        out += kept_lines
    if not audio_seen:
        raise NoAllowedCodec("the offer has no audio")
    return FilteredSdp(sdp="\r\n".join(out) + "\r\n", codecs=_dedupe(codecs))


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
    """The same SDP with the o= version incremented (a re-offer of unchanged media); nothing
    else changes, not even the order of lines."""
    lines = sdp.replace("\r\n", "\n").rstrip("\n").split("\n")
    for i, line in enumerate(lines):
        fields = line.split(" ")
        if line.startswith("o=") and len(fields) == 6 and fields[2].isdigit():
            fields[2] = str(int(fields[2]) + 1)
            lines[i] = " ".join(fields)
            break
    return "\r\n".join(lines) + "\r\n"


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
