"""Media mode: SDP passes through (GW_MEDIA=passthrough), or rtpengine relays it
(GW_MEDIA=rtpengine): the browser's ICE/DTLS-SRTP leg on one side, plain RTP/AVP
toward SIP on the other, in both call directions and for re-INVITEs.

The call code calls offer_sdp/answer_sdp wherever an SDP crosses the gateway, and
end() when a call's media goes away; with no relay configured they change nothing.
The SIP proxy path of legacy clients (ksr_adapter.SipProxy) uses proxy_sdp/proxy_end
with the same flags, when sip_proxy.media_role says a legacy browser meets the SIP side.
Tags: the gateway's own SIP tag (call.local_tag) stands for the browser's side,
the far end's tag (call.remote_tag) for the SIP side.
"""

from __future__ import annotations

import logging
from typing import Protocol

from . import errors
from .errors import GatewayError
from .rtpengine_ng import NgClient, RtpEngineError, stats_from_reply, toward_browser, toward_sip
from .sdp_policy import strip_webrtc_attributes


class MediaRelay(Protocol):
    def offer(self, session: str, from_tag: str, to_tag: str, sdp: str, to_sip: bool) -> str: ...

    def answer(self, session: str, from_tag: str, to_tag: str, sdp: str, to_sip: bool) -> str: ...

    def delete(self, session: str, from_tag: str, browser_tag: str) -> dict | None: ...


class RtpEngineRelay:
    def __init__(self, address: str, codecs: tuple[str, ...]) -> None:
        self.ng = NgClient(address)
        self.codecs = codecs

    def _flags(self, to_sip: bool) -> dict:
        return toward_sip(self.codecs) if to_sip else toward_browser()

    def offer(self, session: str, from_tag: str, to_tag: str, sdp: str, to_sip: bool) -> str:
        params = {"call-id": session, "from-tag": from_tag, "sdp": sdp, **self._flags(to_sip)}
        if to_tag:
            params["to-tag"] = to_tag
        return str(self.ng.command("offer", **params)["sdp"])

    def answer(self, session: str, from_tag: str, to_tag: str, sdp: str, to_sip: bool) -> str:
        params = {"call-id": session, "from-tag": from_tag, "to-tag": to_tag, "sdp": sdp, **self._flags(to_sip)}
        return str(self.ng.command("answer", **params)["sdp"])

    def delete(self, session: str, from_tag: str, browser_tag: str) -> dict | None:
        # The whole session at once and now (rtpengine otherwise keeps it for delete-delay, 30 s).
        # With a from-tag rtpengine returns both sides' statistics (and still removes the
        # whole call); without one it answers just "ok".
        reply = self.ng.command("delete", **{"call-id": session, "from-tag": from_tag, "delete-delay": 0})
        return stats_from_reply(reply, browser_tag).as_dict()


def relay_from_config(media: str, address: str, codecs: tuple[str, ...]) -> MediaRelay | None:
    if media == "passthrough":
        return None
    if media == "rtpengine":
        return RtpEngineRelay(address, codecs)
    raise ValueError(f"GW_MEDIA must be passthrough or rtpengine, not {media!r}")


def _session(call) -> str:
    # One relay session per SIP leg: the two legs of a JSON-to-JSON call share a Call-ID.
    return f"{call.sip_call_id}|{'o' if call.direction == 'outbound' else 'i'}"


def _relay_error(exc: RtpEngineError) -> GatewayError:
    logging.getLogger("wsgw").error("media relay: %s", exc)
    return GatewayError(errors.MEDIA_UNAVAILABLE, "the media relay is not available")


def offer_sdp(ctx, call, sdp: str, from_browser: bool) -> str:
    """An offer crossing the gateway (from the browser toward SIP, or the other way)."""
    return _relay(ctx, call, sdp, from_browser, offer=True)


def answer_sdp(ctx, call, sdp: str, from_browser: bool) -> str:
    """An answer crossing the gateway; the offer it answers came from the other side."""
    return _relay(ctx, call, sdp, from_browser, offer=False)


def _relay(ctx, call, sdp: str, from_browser: bool, offer: bool) -> str:
    if ctx.media is None:
        return sdp
    # The offerer's tag goes first: ours for the browser's offers, theirs for the far end's.
    browser_is_offerer = from_browser if offer else not from_browser
    ours, theirs = call.local_tag, call.remote_tag
    from_tag, to_tag = (ours, theirs) if browser_is_offerer else (theirs, ours)
    try:
        return _convert(ctx.media, _session(call), from_tag, to_tag, sdp, offer, from_browser)
    except RtpEngineError as exc:
        raise _relay_error(exc) from None


def _convert(relay: MediaRelay, session: str, from_tag: str, to_tag: str, sdp: str, offer: bool,
             from_browser: bool) -> str:
    method = relay.offer if offer else relay.answer
    relayed = method(session, from_tag, to_tag, sdp, to_sip=from_browser)
    return strip_webrtc_attributes(relayed) if from_browser else relayed


def end(ctx, call) -> None:
    """The call's media is over: free the relay session; its statistics go into call.media_stats."""
    if ctx.media is None or call.media_stats is not None:
        return
    try:
        stats = ctx.media.delete(_session(call), call.local_tag, call.local_tag)
    except RtpEngineError as exc:
        ctx.log.warning("media relay delete call=%s: %s", call.call_id, exc)
        return
    call.media_stats = stats or {}
    ctx.log.info("media call=%s %s", call.call_id, " ".join(f"{k}={v}" for k, v in call.media_stats.items()))


def proxy_sdp(ctx, session: str, from_tag: str, to_tag: str, sdp: str, offer: bool, from_ws: bool) -> str:
    """An SDP crossing the SIP proxy path between a legacy browser (SIP over WebSocket) and the SIP
    side (sip_proxy.media_role). The legacy browser gets what a JSON client's browser gets, the SIP
    side what it gets from a JSON client's leg. Tags are rtpengine's (sip_proxy.ng_tags)."""
    if ctx.media is None:
        return sdp
    try:
        return _convert(ctx.media, session, from_tag, to_tag, sdp, offer, from_browser=from_ws)
    except RtpEngineError as exc:
        raise _relay_error(exc) from None


def proxy_end(ctx, session: str, from_tag: str, ws_tag: str) -> dict | None:
    """A proxied dialog is over (BYE) or never started (failure): free its relay session now.
    Returns what the relay saw (ws_tag: the legacy browser's tag, "" when unknown), None on error."""
    if ctx.media is None:
        return None
    try:
        return ctx.media.delete(session, from_tag, ws_tag) or {}
    except RtpEngineError as exc:
        ctx.log.warning("media relay delete session=%s: %s", session, exc)
        return None


def ended_payload(call, by: str, reason: str) -> dict:
    """The callEnded payload, with what the relay saw when there is a relay."""
    payload = {"callId": call.call_id, "by": by, "reason": reason}
    if call.media_stats:
        payload["media"] = call.media_stats
    return payload
