"""Session timers (RFC 4028): wsgw.session_timer helpers and their use in calls.py / midcall.py.

Outbound INVITE headers, the 422 retry, the refresher chosen by the 2xx, calls.tick ->
midcall.session_timer_due (refresh re-INVITE or expiry BYE), refreshes from the far end
(re-INVITE with an unchanged o= line, UPDATE), and inbound Session-Expires (422 in
check_inbound, the answer's Session-Expires / Require headers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fakes import START_TIME, parse_headers
from harness.sdp import PCMU_ANSWER
from test_calls import (CALLEE_CONTACT, CALLEE_TARGET, FILTERED_CHROME, PHONE_OFFER, RECORD_ROUTE, assert_forgotten,
                        make_invite, place, register, reply, ring)
from test_midcall import CONTACT_5001, cseq_of, do_hold, sip_reply
from wsgw import protocol
from wsgw.calls import (CALLING, CONFIRMED, ENDING, RINGING, Call, CallIdPayload, answer, check_inbound, hangup,
                        on_reply, restart_session_timer, tick)
from wsgw.midcall import ImmediateReply, Reinvite, _same_origin, check_reinvite, on_remote_update
from wsgw.session_timer import (SessionExpires, expiry_at, parse_min_se, parse_session_expires, refresh_at,
                                supports_timer)


# ---- helpers ----


def msg(msg_type: str, payload: dict, rid: str | None = None) -> dict:
    return protocol.message(msg_type, payload, rid)


def sent(ctx) -> list[dict]:
    return ctx.outbox.messages()


def load(ctx, key: str) -> Call:
    call = Call.load(ctx, key)
    assert call is not None
    return call


def answered_with(invite, session_expires: str | None, *, to_tag: str = "callee-tag", body: str = PCMU_ANSWER):
    """The 2xx to our INVITE, with a Session-Expires header (or none)."""
    headers = {"Contact": CALLEE_CONTACT, "Record-Route": RECORD_ROUTE}
    if session_expires is not None:
        headers["Session-Expires"] = session_expires
        headers["Require"] = "timer"
    return reply(invite, 200, "OK", to_tag=to_tag, headers=headers, body=body)


def timed_call(ctx, conn, session_expires: str | None, call_id: str = "c1") -> Call:
    """An answered outbound call whose 2xx carried `session_expires`; outbox / requests cleared."""
    call, invite = place(ctx, conn, call_id=call_id)
    on_reply(ctx, answered_with(invite, session_expires))
    call = load(ctx, call.key)
    assert call.state == CONFIRMED
    ctx.outbox.clear()
    ctx.sip.clear()
    return call


def inbound_invite(session_expires: str = "", supported: str = "", **kw):
    return replace(make_invite(**kw), session_expires=session_expires, supported=supported)


def far_end_reinvite(call: Call, sdp: str) -> Reinvite:
    return Reinvite(call.sip_call_id, call.remote_tag, call.local_tag, sdp)


# ======================================================================
# session_timer.py helpers
# ======================================================================


@pytest.mark.parametrize("value, expected", [
    ("1800", SessionExpires(1800, "")),
    ("1800;refresher=uac", SessionExpires(1800, "uac")),
    ("1800;refresher=uas", SessionExpires(1800, "uas")),
    ("  1800 ; refresher = UAS ", SessionExpires(1800, "uas")),
    ("90;foo=bar;refresher=uac", SessionExpires(90, "uac")),
    ("90;refresher=uac;foo", SessionExpires(90, "uac")),
    ("1800;refresher=both", SessionExpires(1800, "")),
    ("1800;refresher", SessionExpires(1800, "")),
    ("1800;x=refresher", SessionExpires(1800, "")),
    ("120, 1800;refresher=uas", SessionExpires(120, "")),  # several values: the first one counts
    ("0", SessionExpires(0, "")),
])
def test_parse_session_expires(value, expected):
    assert parse_session_expires(value) == expected


@pytest.mark.parametrize("value", [None, "", "   ", "abc", "-5", "1800x", "x1800", "18 00", "1.5", ";refresher=uac",
                                   "1800 refresher=uac"])
def test_parse_session_expires_unreadable(value):
    assert parse_session_expires(value) is None


def test_session_expires_header():
    assert SessionExpires(1800, "uac").header() == "1800;refresher=uac"
    assert SessionExpires(90, "uas").header() == "90;refresher=uas"
    assert SessionExpires(90).header() == "90"
    assert parse_session_expires(SessionExpires(600, "uas").header()) == SessionExpires(600, "uas")


@pytest.mark.parametrize("value, expected", [("90", 90), (" 120", 120), ("3600;x=y", 3600), ("0", 0),
                                             ("", None), (None, None), ("x90", None), ("-1", None), ("  ", None)])
def test_parse_min_se(value, expected):
    assert parse_min_se(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("timer", True), ("Timer", True), (" TIMER ", True), ("100rel, timer", True), ("replaces,timer,path", True),
    ("100rel", False), ("timers", False), ("xtimer", False), ("", False), (None, False), ("100rel;timer", False),
])
def test_supports_timer(value, expected):
    assert supports_timer(value) is expected


def test_refresh_at_is_half_way():
    assert refresh_at(1000.0, 1800) == 1900.0
    assert refresh_at(0.0, 91) == 45.5
    assert refresh_at(START_TIME, 90) == START_TIME + 45


@pytest.mark.parametrize("interval, before_end", [(1800, 32), (120, 32), (96, 32), (90, 30), (60, 20), (3, 1)])
def test_expiry_at_is_interval_minus_min_32_or_a_third(interval, before_end):
    assert expiry_at(1000.0, interval) == 1000.0 + interval - before_end


# ======================================================================
# outbound INVITE and the 422 retry
# ======================================================================


def test_invite_offers_session_timer(ctx, caller):
    _, invite = place(ctx, caller)
    h = parse_headers(invite.headers)
    assert h["Supported"] == "timer"
    assert h["Session-Expires"] == "1800"
    assert h["Min-SE"] == "90"
    assert h["CSeq"] == "1 INVITE"


def test_invite_session_timer_follows_config(make_ctx, conn):
    ctx = make_ctx(embedded=True, session_expires=600, min_se=120)
    register(ctx, conn, "5001")
    _, invite = place(ctx, conn)
    h = parse_headers(invite.headers)
    assert (h["Session-Expires"], h["Min-SE"]) == ("600", "120")


@pytest.mark.parametrize("min_se_header, expected_se, expected_min_se", [
    ("3600", "3600", "3600"),  # larger than GW_SESSION_EXPIRES: both go up
    ("1000", "1800", "1000"),  # between GW_MIN_SE and GW_SESSION_EXPIRES: only Min-SE goes up
    ("60", "1800", "90"),  # smaller than our own Min-SE: ours stays
    (None, "1800", "90"),  # a 422 without Min-SE: retried with our values
])
def test_422_is_retried_once_with_the_larger_interval(ctx, caller, min_se_header, expected_se, expected_min_se):
    call, first = place(ctx, caller)
    headers = {"Min-SE": min_se_header} if min_se_header is not None else {}
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers=headers))
    assert len(ctx.sip.requests) == 2
    retry = ctx.sip.last
    assert retry.method == "INVITE" and retry.ruri == first.ruri and retry.nexthop == first.nexthop
    assert retry.body == first.body == FILTERED_CHROME.sdp
    h1, h2 = parse_headers(first.headers), parse_headers(retry.headers)
    assert h2["CSeq"] == "2 INVITE"
    assert h2["Call-ID"] == h1["Call-ID"] and h2["From"] == h1["From"] and h2["To"] == h1["To"]
    assert h2["Supported"] == "timer"
    assert (h2["Session-Expires"], h2["Min-SE"]) == (expected_se, expected_min_se)
    assert sent(ctx) == []  # the browser sees nothing of the retry
    stored = load(ctx, call.key)
    assert stored.invite_cseq == 2 and stored.local_cseq == 2 and stored.retried_422 is True
    assert stored.state == CALLING
    assert stored.deadline == ctx.clock() + ctx.config.sip_timeout
    # the retry's 200 is the call's answer
    on_reply(ctx, answered_with(retry, None))
    assert [m["type"] for m in sent(ctx)] == ["callAccepted"]
    assert sent(ctx)[0]["id"] == "r1"
    assert load(ctx, call.key).state == CONFIRMED


def test_second_422_fails_the_call(ctx, caller):
    call, first = place(ctx, caller)
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    retry = ctx.sip.last
    on_reply(ctx, reply(retry, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "7200"}))
    assert len(ctx.sip.requests) == 2  # no third INVITE
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 422, "reason": "rejected"}, "r1")]
    assert_forgotten(ctx)


def test_422_retry_gets_its_own_unreachable_timer(ctx, caller, clock):
    call, first = place(ctx, caller)
    clock.advance(ctx.config.sip_timeout - 1)
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    clock.advance(ctx.config.sip_timeout - 1)
    tick(ctx)  # past the first INVITE's deadline, not the retry's
    assert sent(ctx) == [] and ctx.sip.cancels == []
    clock.advance(1)
    tick(ctx)
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 408, "reason": "unreachable"}, "r1")]
    assert ctx.sip.cancels == [(call.sip_call_id, 2)]


def test_422_after_ringing_is_retried_silently(ctx, caller):
    call, first = place(ctx, caller)
    on_reply(ctx, reply(first, 180, "Ringing", to_tag="x"))
    ctx.outbox.clear()
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    assert cseq_of(ctx.sip.last) == (2, "INVITE")
    assert load(ctx, call.key).state in (CALLING, RINGING)
    assert sent(ctx) == []


def test_422_after_ringing_keeps_the_ring_timeout(ctx, caller, clock):
    call, first = place(ctx, caller)
    on_reply(ctx, reply(first, 180, "Ringing", to_tag="x"))
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    retry = ctx.sip.last
    on_reply(ctx, reply(retry, 180, "Ringing", to_tag="y"))
    ctx.outbox.clear()
    clock.advance(ctx.config.sip_timeout + 1)
    tick(ctx)
    assert sent(ctx) == [] and ctx.sip.cancels == []
    clock.advance(ctx.config.ring_timeout - ctx.config.sip_timeout - 2)
    tick(ctx)
    assert sent(ctx) == []
    clock.advance(1)
    tick(ctx)
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 408, "reason": "no_answer"}, "r1")]


def test_422_whose_retry_cannot_be_sent_fails_the_call(ctx, caller):
    call, first = place(ctx, caller)
    ctx.sip.result = False
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    assert len(ctx.sip.requests) == 2
    assert sent(ctx) == [msg("callFailed", {"callId": "c1", "code": 422, "reason": "rejected"}, "r1")]
    assert_forgotten(ctx)


def test_422_after_hangup_is_not_retried(ctx, caller):
    call, first = place(ctx, caller)
    on_reply(ctx, reply(first, 180, "Ringing", to_tag="x"))
    hangup(ctx, caller, "h1", CallIdPayload(call_id="c1"))
    ctx.outbox.clear()
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    assert len(ctx.sip.requests) == 1
    assert sent(ctx) == []
    assert_forgotten(ctx)


def test_late_reply_to_the_first_invite_is_ignored_after_the_retry(ctx, caller):
    call, first = place(ctx, caller)
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    before = load(ctx, call.key)
    on_reply(ctx, reply(first, 422, "Session Interval Too Small", to_tag="x", headers={"Min-SE": "600"}))
    on_reply(ctx, answered_with(first, "1800;refresher=uac"))
    assert len(ctx.sip.requests) == 2 and sent(ctx) == []
    assert load(ctx, call.key) == before


# ======================================================================
# 2xx Session-Expires: who refreshes, calls.tick -> midcall.session_timer_due
# ======================================================================


@pytest.mark.parametrize("header, refresher, due", [
    ("1800;refresher=uac", "local", 900),
    ("1800;refresher=uas", "remote", 1800 - 32),
    ("1800", "remote", 1800 - 32),  # no refresher named: the far end's job
    ("90;refresher=uas", "remote", 60),
    ("90;refresher=uac", "local", 45),
])
def test_2xx_session_expires_arms_the_timer(ctx, caller, clock, header, refresher, due):
    clock.advance(7)
    call = timed_call(ctx, caller, header)
    assert call.se_interval == int(header.split(";")[0])
    assert call.se_refresher == refresher
    assert call.se_due == clock.now + due


def test_2xx_without_session_expires_has_no_timer(ctx, caller, clock):
    call = timed_call(ctx, caller, None)
    assert (call.se_interval, call.se_due) == (0, 0.0)
    clock.advance(100_000)
    tick(ctx)
    assert ctx.sip.requests == [] and sent(ctx) == []
    assert load(ctx, call.key).state == CONFIRMED


def test_gateway_refreshes_half_way_with_its_last_sdp(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uac")
    clock.advance(899)
    tick(ctx)
    assert ctx.sip.requests == []
    clock.advance(1)
    tick(ctx)
    assert len(ctx.sip.requests) == 1
    refresh = ctx.sip.last
    assert refresh.method == "INVITE" and refresh.ruri == CALLEE_TARGET
    assert refresh.nexthop == "sip:p2.example.net;lr;ftag=x"
    h = parse_headers(refresh.headers)
    assert h["CSeq"] == "2 INVITE"
    assert h["Session-Expires"] == "1800;refresher=uac"
    assert h["Supported"] == "timer"
    assert h["Contact"] == CONTACT_5001
    assert h["Content-Type"] == "application/sdp"
    assert h["To"] == "<sip:5002@127.0.0.1:5060>;tag=callee-tag"
    assert refresh.body == call.local_sdp == FILTERED_CHROME.sdp
    assert sent(ctx) == []  # no browser message for a refresh
    stored = load(ctx, call.key)
    assert stored.reinvite["op"] == "refresh" and stored.reinvite["request_id"] is None
    # while it is pending, no second refresh
    clock.advance(1)
    tick(ctx)
    assert len(ctx.sip.requests) == 1
    # its 200 restarts the timer, still silently
    on_reply(ctx, sip_reply(refresh, 200, "OK", body=PCMU_ANSWER, headers={"Contact": CALLEE_CONTACT}))
    stored = load(ctx, call.key)
    assert stored.reinvite is None and stored.state == CONFIRMED
    assert stored.se_due == clock.now + 900
    assert sent(ctx) == []
    # and the next refresh comes another half interval later
    clock.advance(900)
    tick(ctx)
    assert cseq_of(ctx.sip.last) == (3, "INVITE")
    assert ctx.sip.last.body == FILTERED_CHROME.sdp


def test_far_end_refresher_that_stays_silent_ends_the_call(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uas")
    clock.advance(1800 - 32 - 1)
    tick(ctx)
    assert ctx.sip.requests == [] and sent(ctx) == []
    clock.advance(1)
    tick(ctx)
    assert [r.method for r in ctx.sip.requests] == ["BYE"]
    assert cseq_of(ctx.sip.last) == (2, "BYE")
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "local", "reason": "session_expired"})]
    assert load(ctx, call.key).state == ENDING
    # nothing more on the next ticks
    clock.advance(1)
    tick(ctx)
    assert len(ctx.sip.requests) == 1 and len(sent(ctx)) == 1


@pytest.mark.parametrize("status, reason", [(488, "Not Acceptable Here"), (500, "Server Internal Error"),
                                            (481, "Call/Transaction Does Not Exist"), (408, "Request Timeout")])
def test_failed_refresh_ends_the_call(ctx, caller, clock, status, reason):
    call = timed_call(ctx, caller, "1800;refresher=uac")
    clock.advance(900)
    tick(ctx)
    refresh = ctx.sip.last
    on_reply(ctx, sip_reply(refresh, status, reason))
    assert [r.method for r in ctx.sip.requests] == ["INVITE", "BYE"]
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "local", "reason": "session_expired"})]
    assert load(ctx, call.key).state == ENDING


def test_unanswered_refresh_ends_the_call(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uac")
    clock.advance(900)
    tick(ctx)
    refresh = ctx.sip.last
    clock.advance(ctx.config.sip_timeout + 1)
    tick(ctx)
    assert ctx.sip.cancels == [(call.sip_call_id, cseq_of(refresh)[0])]
    assert [r.method for r in ctx.sip.requests] == ["INVITE", "BYE"]
    assert sent(ctx) == [msg("callEnded", {"callId": "c1", "by": "local", "reason": "session_expired"})]


def test_hold_reinvite_carries_session_expires_and_counts_as_refresh(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uac")
    clock.advance(895)
    hold_invite = do_hold(ctx, caller, call)
    h = parse_headers(hold_invite.headers)
    assert h["Session-Expires"] == "1800;refresher=uac" and h["Supported"] == "timer"
    # the refresh time passes while the hold is pending (within GW_SIP_TIMEOUT): no extra re-INVITE
    clock.advance(5)
    tick(ctx)
    assert len(ctx.sip.requests) == 1
    on_reply(ctx, sip_reply(hold_invite, 200, "OK", body=PCMU_ANSWER))
    assert [m["type"] for m in sent(ctx)] == ["held"]
    assert load(ctx, call.key).se_due == clock.now + 900
    tick(ctx)
    assert len(ctx.sip.requests) == 1


def test_hold_reinvite_names_the_far_end_as_refresher(ctx, caller):
    call = timed_call(ctx, caller, "1800;refresher=uas")
    h = parse_headers(do_hold(ctx, caller, call).headers)
    assert h["Session-Expires"] == "1800;refresher=uas"


def test_hold_reinvite_without_timer_has_no_session_expires(ctx, caller):
    call = timed_call(ctx, caller, None)
    h = parse_headers(do_hold(ctx, caller, call).headers)
    assert "Session-Expires" not in h and "Supported" not in h


def test_restart_session_timer_without_interval_does_nothing(ctx, caller, clock):
    call = timed_call(ctx, caller, None)
    restart_session_timer(ctx, call)
    assert call.se_due == 0.0


# ======================================================================
# refreshes from the far end
# ======================================================================


def test_same_origin():
    a = "v=0\r\no=phone 1 1 IN IP4 10.0.0.2\r\ns=-\r\n"
    assert _same_origin(a, a)
    assert _same_origin(a.replace("s=-", "s=other"), a)  # only the o= line counts
    assert not _same_origin(a.replace("1 1 IN", "1 2 IN"), a)  # new version: a new offer
    assert not _same_origin(a.replace("1 1 IN", "9 1 IN"), a)  # new session id
    assert not _same_origin("", a)
    assert not _same_origin(a, "")
    assert not _same_origin("v=0\r\ns=-\r\n", "v=0\r\ns=-\r\n")  # no o= line on either side


def test_far_end_reinvite_with_unchanged_origin_is_a_refresh(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uas")
    clock.advance(1000)
    result = check_reinvite(ctx, far_end_reinvite(call, PCMU_ANSWER))  # the same SDP the 2xx had
    assert result == ImmediateReply(
        200, "OK", f"Contact: {CONTACT_5001}\r\nSession-Expires: 1800;refresher=uac\r\nRequire: timer\r\n",
        call.local_sdp)
    stored = load(ctx, call.key)
    assert stored.se_due == clock.now + 1800 - 32
    assert stored.update_in is None and stored.local_sdp == call.local_sdp
    assert sent(ctx) == [] and ctx.sip.suspended_replies == []
    # the old expiry passes without a BYE
    clock.advance(800)
    tick(ctx)
    assert ctx.sip.requests == [] and load(ctx, call.key).state == CONFIRMED


def test_far_end_refresh_when_we_are_the_refresher_says_uas(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uac")
    clock.advance(100)
    result = check_reinvite(ctx, far_end_reinvite(call, PCMU_ANSWER))
    assert result.code == 200
    assert "Session-Expires: 1800;refresher=uas\r\nRequire: timer\r\n" in result.headers
    assert load(ctx, call.key).se_due == clock.now + 900


def test_far_end_reinvite_with_new_origin_goes_to_the_browser(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uas")
    due = call.se_due
    clock.advance(10)
    new_offer = PCMU_ANSWER.replace("o=- 1 2 IN", "o=- 1 3 IN")
    assert check_reinvite(ctx, far_end_reinvite(call, new_offer)) is None
    assert load(ctx, call.key).se_due == due  # not a refresh (yet)


def test_update_without_sdp_is_a_refresh(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uas")
    clock.advance(1500)
    result = on_remote_update(ctx, call.sip_call_id, "callee-tag", call.local_tag, has_sdp=False)
    assert result == ImmediateReply(
        200, "OK", f"Contact: {CONTACT_5001}\r\nSession-Expires: 1800;refresher=uac\r\nRequire: timer\r\n")
    assert load(ctx, call.key).se_due == clock.now + 1800 - 32
    assert sent(ctx) == [] and ctx.sip.requests == []


def test_update_with_sdp_is_refused_and_not_a_refresh(ctx, caller, clock):
    call = timed_call(ctx, caller, "1800;refresher=uas")
    due = call.se_due
    clock.advance(100)
    result = on_remote_update(ctx, call.sip_call_id, "callee-tag", call.local_tag, has_sdp=True)
    assert (result.code, result.reason, result.headers, result.body) == (488, "Not Acceptable Here", "", "")
    assert load(ctx, call.key).se_due == due


def test_update_for_unknown_dialog_is_481(ctx, caller):
    call = timed_call(ctx, caller, "1800;refresher=uas")
    assert on_remote_update(ctx, call.sip_call_id, "callee-tag", "not-our-tag", False).code == 481
    assert on_remote_update(ctx, "nope@x", "callee-tag", call.local_tag, False).code == 481


def test_update_without_timer_answers_contact_only(ctx, caller):
    call = timed_call(ctx, caller, None)
    result = on_remote_update(ctx, call.sip_call_id, "callee-tag", call.local_tag, has_sdp=False)
    assert result == ImmediateReply(200, "OK", f"Contact: {CONTACT_5001}\r\n")


# ======================================================================
# inbound INVITEs with Session-Expires
# ======================================================================


def test_check_inbound_refuses_a_too_small_interval_with_422(ctx, caller):
    assert check_inbound(ctx, inbound_invite("89", "timer")) == (422, "Session Interval Too Small")
    assert check_inbound(ctx, inbound_invite("30;refresher=uac")) == (422, "Session Interval Too Small")
    assert check_inbound(ctx, inbound_invite("90", "timer")) is None
    assert check_inbound(ctx, inbound_invite("1800;refresher=uac", "timer")) is None
    assert check_inbound(ctx, inbound_invite("garbage", "timer")) is None
    assert check_inbound(ctx, inbound_invite("", "")) is None


def test_check_inbound_follows_gw_min_se(make_ctx, conn):
    ctx = make_ctx(embedded=True, min_se=300)
    register(ctx, conn, "5001")
    assert check_inbound(ctx, inbound_invite("299", "timer")) == (422, "Session Interval Too Small")
    assert check_inbound(ctx, inbound_invite("300", "timer")) is None


def test_check_inbound_other_refusals_come_first(ctx, caller):
    assert check_inbound(ctx, inbound_invite("10", "timer", dn="9999")) == (404, "Not Found")
    assert check_inbound(ctx, inbound_invite("10", "timer", dn="5002")) == (480, "Temporarily Unavailable")


def test_inbound_answer_with_timer_names_the_caller_as_refresher(ctx, caller, clock):
    call = ring(ctx, inbound_invite("1800;refresher=uac", "100rel, timer"))
    assert (call.se_interval, call.se_refresher, call.se_due) == (1800, "remote", 0.0)
    ctx.outbox.clear()
    clock.advance(5)
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    (t_index, t_label, code, reason, headers, body), = ctx.sip.suspended_replies
    assert (t_index, t_label, code, reason) == (11, 22, 200, "OK")
    assert headers == (f"Contact: {CONTACT_5001}\r\nSession-Expires: 1800;refresher=uac\r\nRequire: timer\r\n")
    stored = load(ctx, call.key)
    assert stored.se_due == clock.now + 1800 - 32
    assert [m["type"] for m in sent(ctx)] == ["callAccepted"]


def test_inbound_without_refresher_param_also_answers_uac(ctx, caller):
    call = ring(ctx, inbound_invite("600", "timer"))
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    assert "Session-Expires: 600;refresher=uac\r\nRequire: timer\r\n" in ctx.sip.suspended_replies[-1][4]


def test_inbound_without_supported_timer_has_no_timer(ctx, caller, clock):
    call = ring(ctx, inbound_invite("1800;refresher=uac", "100rel"))
    assert call.se_interval == 0
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    assert ctx.sip.suspended_replies[-1][4] == f"Contact: {CONTACT_5001}\r\n"
    clock.advance(100_000)
    tick(ctx)
    assert ctx.sip.requests == []


def test_inbound_caller_that_stops_refreshing_is_byed(ctx, caller, clock):
    call = ring(ctx, inbound_invite("120;refresher=uac", "timer"))
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    ctx.outbox.clear()
    # a refresh from the caller (same o= as its INVITE) half-way through
    clock.advance(60)
    inv = Reinvite("inbound-1@10.0.0.2", "caller-tag", "gw-to-tag", PHONE_OFFER)
    assert check_reinvite(ctx, inv).code == 200
    clock.advance(120 - 32 - 1)
    tick(ctx)
    assert ctx.sip.requests == []
    clock.advance(1)
    tick(ctx)
    bye = ctx.sip.last
    assert bye.method == "BYE" and bye.ruri == "sip:5002@10.0.0.2:5062"
    h = parse_headers(bye.headers)
    assert h["CSeq"] == "1 BYE"
    assert h["From"] == "<sip:5001@127.0.0.1:5060>;tag=gw-to-tag"
    assert sent(ctx) == [msg("callEnded", {"callId": call.call_id, "by": "local", "reason": "session_expired"})]


def test_inbound_caller_asking_the_gateway_to_refresh(ctx, caller, clock):
    call = ring(ctx, inbound_invite("1800;refresher=uas", "timer"))
    assert (call.se_interval, call.se_refresher) == (1800, "local")
    ctx.outbox.clear()
    answer(ctx, caller, "a1", CallIdPayload(call_id=call.call_id, sdp=PCMU_ANSWER))
    # RFC 4028 9: the UAS keeps the refresher the UAC asked for
    assert "Session-Expires: 1800;refresher=uas\r\n" in ctx.sip.suspended_replies[-1][4]
    stored = load(ctx, call.key)
    assert stored.se_refresher == "local" and stored.se_due == clock.now + 900
    ctx.outbox.clear()
    clock.advance(900)
    tick(ctx)
    refresh = ctx.sip.last
    assert refresh.method == "INVITE" and refresh.ruri == "sip:5002@10.0.0.2:5062"
    h = parse_headers(refresh.headers)
    assert h["CSeq"] == "1 INVITE"  # our own CSeq space on the inbound leg
    assert h["Session-Expires"] == "1800;refresher=uac"  # we are the UAC of the re-INVITE
    assert h["From"] == "<sip:5001@127.0.0.1:5060>;tag=gw-to-tag" and h["To"] == "<sip:5002@10.0.0.2>;tag=caller-tag"
    assert refresh.body == stored.local_sdp
    assert sent(ctx) == []
