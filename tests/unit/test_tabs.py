"""Several tabs (WebSockets) per DN: joining the registration (registrations._join), leaving it
(registrations.release), and an inbound call ringing on every tab (calls.ring_inbound forks,
_leave_ringing, _end_all_forks, answer -> answeredElsewhere)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fakes import RESUME_TOKEN, parse_headers, reply_to
from harness.sdp import CHROME_OFFER, PCMU_ANSWER
from test_calls import PHONE_OFFER, make_invite, place
from wsgw import PROTOCOL_VERSION, SERVER_NAME, VERSION, calls, errors, protocol, registrations
from wsgw.calls import (CONFIRMED, RINGING, Call, CallIdPayload, CallPayload, answer, call_key, check_inbound, hangup,
                        leg_key, on_remote_bye, on_remote_cancel, place_call, reject, ring_inbound, tick)
from wsgw.connections import ConnRef
from wsgw.errors import GatewayError
from wsgw.protocol import RegisterPayload
from wsgw.registrations import REGISTERED, Registration, connections_of_dn, dn_of_connection, release, unregister
from wsgw.store import CALLS, CALLS_BY_SIP_ID, CONN

SIP_CID = "inbound-1@10.0.0.2"
LEG = leg_key("inbound", SIP_CID, "caller-tag")
FORKS = "f|" + LEG


# ---- helpers ----


def msg(msg_type: str, payload: dict, rid: str | None = None) -> dict:
    return protocol.message(msg_type, payload, rid)


def registered(dn: str, expires: int, rid: str | None) -> dict:
    return msg("registered", {"dn": dn, "expires": expires, "server": SERVER_NAME, "version": VERSION,
                                             "protocol": PROTOCOL_VERSION, "resumeToken": RESUME_TOKEN}, rid)


def sent(ctx, conn=None) -> list[dict]:
    return ctx.outbox.messages(conn)


def types(ctx, conn) -> list[str]:
    return [m["type"] for m in sent(ctx, conn)]


def join(ctx, conn, dn: str = "5001", password: str = "secret5001", rid: str = "r"):
    registrations.register(ctx, conn, rid, RegisterPayload(dn=dn, password=password))


def register_upstream(ctx, conn, dn: str = "5001", password: str = "pw"):
    registrations.register(ctx, conn, "r1", RegisterPayload(dn=dn, password=password))
    registrations.on_register_reply(
        ctx, reply_to(ctx.sip.last, 200, "OK", {"Contact": f"<sip:{dn}@127.0.0.1:5060>;expires=600"}))


def forks_of(ctx) -> list[str] | None:
    raw = ctx.store.get(CALLS_BY_SIP_ID, FORKS)
    return list(protocol.decode(raw)) if raw else None


def ring_all(ctx, **kw) -> str:
    """An inbound INVITE for 5001 rings every tab; returns the callId they all got."""
    ring_inbound(ctx, make_invite(**kw), 11, 22, "gw-ring-tag")
    incoming = [m for m in sent(ctx) if m["type"] == "incomingCall"]
    call_ids = {m["payload"]["callId"] for m in incoming}
    assert len(call_ids) == 1
    return call_ids.pop()


@pytest.fixture
def conn3() -> ConnRef:
    return ConnRef(5, "192.0.2.11", 40003)


@pytest.fixture
def tabs(ctx, conn, conn2, conn3):
    """5001 registered on three tabs (conn first); outbox cleared."""
    for c in (conn, conn2, conn3):
        join(ctx, c)
    assert connections_of_dn(ctx, "5001") == [conn, conn2, conn3]
    ctx.outbox.clear()
    return conn, conn2, conn3


# ======================================================================
# registration: joining
# ======================================================================


def test_second_tab_joins_embedded(ctx, conn, conn2, clock):
    join(ctx, conn, rid="r1")
    clock.advance(5)
    join(ctx, conn2, rid="r2")
    assert ctx.outbox.sent[-1] == (conn2, registered("5001", 600, "r2"))
    reg = Registration.load(ctx, "5001")
    assert (reg.conn, reg.tabs, reg.state) == (conn.key, [conn2.key], REGISTERED)
    assert reg.all_conns() == [conn.key, conn2.key]
    assert dn_of_connection(ctx, conn2) == "5001"
    assert ctx.store.get(CONN, conn2.key) == protocol.encode({"dn": "5001", "since": clock.now})
    assert connections_of_dn(ctx, "5001") == [conn, conn2]
    assert ctx.sip.requests == []


@pytest.mark.parametrize("password", ["wrong", "secret5002", "SECRET5001"])
def test_second_tab_with_wrong_password_is_auth_failed(ctx, conn, conn2, password):
    join(ctx, conn)
    with pytest.raises(GatewayError) as exc:
        join(ctx, conn2, password=password)
    assert exc.value.code == errors.AUTH_FAILED
    assert Registration.load(ctx, "5001").tabs == []
    assert dn_of_connection(ctx, conn2) is None
    assert connections_of_dn(ctx, "5001") == [conn]


def test_second_tab_joins_upstream_with_the_stored_password(make_ctx, conn, conn2):
    ctx = make_ctx(embedded=False)
    register_upstream(ctx, conn)
    ctx.sip.clear()
    ctx.outbox.clear()
    join(ctx, conn2, password="pw", rid="r2")
    assert sent(ctx) == [registered("5001", 600, "r2")]
    assert ctx.outbox.sent[0][0] == conn2
    assert ctx.sip.requests == []  # no REGISTER for a joining tab
    assert connections_of_dn(ctx, "5001") == [conn, conn2]


def test_second_tab_upstream_wrong_password(make_ctx, conn, conn2):
    ctx = make_ctx(embedded=False)
    register_upstream(ctx, conn)
    ctx.sip.clear()
    with pytest.raises(GatewayError) as exc:
        join(ctx, conn2, password="pw2")
    assert exc.value.code == errors.AUTH_FAILED
    assert ctx.sip.requests == [] and connections_of_dn(ctx, "5001") == [conn]


def test_join_while_the_first_register_is_pending_is_already_registered(make_ctx, conn, conn2):
    ctx = make_ctx(embedded=False)
    registrations.register(ctx, conn, "r1", RegisterPayload(dn="5001", password="pw"))
    first = ctx.sip.last
    with pytest.raises(GatewayError) as exc:
        join(ctx, conn2, password="pw")
    assert exc.value.code == errors.ALREADY_REGISTERED
    assert "retry" in exc.value.reason
    assert len(ctx.sip.requests) == 1
    assert dn_of_connection(ctx, conn2) is None
    # once the registrar answers, the tab may join
    registrations.on_register_reply(ctx, reply_to(first, 200, "OK", {"Expires": "600"}))
    join(ctx, conn2, password="pw", rid="r2")
    assert ctx.outbox.sent[-1] == (conn2, registered("5001", 600, "r2"))


def test_tab_already_registered_cannot_join_again(ctx, tabs):
    conn, conn2, _ = tabs
    with pytest.raises(GatewayError) as exc:
        join(ctx, conn2)
    assert exc.value.code == errors.ALREADY_REGISTERED
    assert Registration.load(ctx, "5001").tabs.count(conn2.key) == 1


# ======================================================================
# registration: leaving
# ======================================================================


def test_release_of_the_first_tab_promotes_the_next(ctx, tabs):
    conn, conn2, conn3 = tabs
    unregister(ctx, conn, "u1")
    assert sent(ctx) == [msg("unregistered", {"dn": "5001"}, "u1")]
    assert ctx.outbox.sent[0][0] == conn
    reg = Registration.load(ctx, "5001")
    assert (reg.conn, reg.tabs, reg.state) == (conn2.key, [conn3.key], REGISTERED)
    assert connections_of_dn(ctx, "5001") == [conn2, conn3]
    assert dn_of_connection(ctx, conn) is None
    # the promoted tab can call (it is now the registration's first connection)
    place(ctx, conn2, call_id="x")


def test_release_of_a_middle_tab(ctx, tabs):
    conn, conn2, conn3 = tabs
    registrations.connection_closed(ctx, conn2)
    reg = Registration.load(ctx, "5001")
    assert (reg.conn, reg.tabs) == (conn.key, [conn3.key])
    assert ctx.store.get(CONN, conn2.key) is None
    assert sent(ctx) == []  # nothing to a closed connection


def test_release_of_an_unknown_connection_changes_nothing(ctx, tabs, conn2):
    before = ctx.store.get("reg", "5001")
    release(ctx, ConnRef(5, "192.0.2.99", 1), "5001")
    assert ctx.store.get("reg", "5001") == before


def test_embedded_last_tab_leaving_forgets_the_registration(ctx, tabs):
    for c in tabs:
        registrations.connection_closed(ctx, c)
    assert Registration.load(ctx, "5001") is None
    assert connections_of_dn(ctx, "5001") == []
    assert ctx.sip.requests == []


def test_upstream_expires_0_only_when_the_last_tab_leaves(make_ctx, conn, conn2, conn3):
    ctx = make_ctx(embedded=False)
    register_upstream(ctx, conn)
    join(ctx, conn2, password="pw")
    join(ctx, conn3, password="pw")
    ctx.sip.clear()
    registrations.connection_closed(ctx, conn)
    unregister(ctx, conn3, "u3")
    assert ctx.sip.requests == []
    reg = Registration.load(ctx, "5001")
    assert (reg.conn, reg.tabs, reg.state) == (conn2.key, [], REGISTERED)
    unregister(ctx, conn2, "u2")
    assert len(ctx.sip.requests) == 1
    h = parse_headers(ctx.sip.last.headers)
    assert ctx.sip.last.method == "REGISTER"
    assert h["Expires"] == "0"
    assert h["Contact"] == "<sip:5001@127.0.0.1:5060>;expires=0"
    assert Registration.load(ctx, "5001").state == registrations.UNREGISTERING


# ======================================================================
# calling from a tab
# ======================================================================


def test_any_tab_may_place_a_call(ctx, tabs):
    conn, conn2, conn3 = tabs
    place_call(ctx, conn2, "r2", CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER))
    call = Call.load(ctx, call_key(conn2, "c1"))
    assert call is not None and call.conn == conn2.key and call.dn == "5001"
    assert ctx.sip.last.method == "INVITE"
    assert Call.load(ctx, call_key(conn, "c1")) is None  # only on the tab that placed it


def test_unregistered_tab_may_not_call(ctx, tabs):
    conn, conn2, conn3 = tabs
    unregister(ctx, conn3, "u3")
    with pytest.raises(GatewayError) as exc:
        place_call(ctx, conn3, "r3", CallPayload(to="5002", call_id="c1", sdp=CHROME_OFFER))
    assert exc.value.code == errors.NOT_REGISTERED


# ======================================================================
# an inbound call rings every tab
# ======================================================================


def test_inbound_call_rings_every_tab_with_the_same_call_id(ctx, tabs, clock):
    assert check_inbound(ctx, make_invite()) is None
    call_id = ring_all(ctx)
    incoming = msg("incomingCall", {"callId": call_id, "from": "5002", "displayName": "Bob", "sdp": PHONE_OFFER})
    assert ctx.outbox.sent == [(c, incoming) for c in tabs]
    keys = [call_key(c, call_id) for c in tabs]
    assert sorted(ctx.store.keys(CALLS)) == sorted(keys)
    for c, key in zip(tabs, keys):
        call = Call.load(ctx, key)
        assert (call.conn, call.state, call.direction, call.call_id) == (c.key, RINGING, "inbound", call_id)
        assert (call.t_index, call.t_label, call.sip_call_id) == (11, 22, SIP_CID)
        assert call.deadline == clock.now + ctx.config.ring_timeout
    assert forks_of(ctx) == keys
    assert ctx.store.get(CALLS_BY_SIP_ID, LEG) == keys[0]
    assert ctx.sip.suspended_replies == []


def test_answer_in_one_tab_is_answered_elsewhere_in_the_others(ctx, tabs, sip_port):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    ctx.outbox.clear()
    answer(ctx, conn2, "a2", CallIdPayload(call_id=call_id, sdp=PCMU_ANSWER))
    assert len(ctx.sip.suspended_replies) == 1 and ctx.sip.suspended_replies[0][2] == 200
    assert types(ctx, conn2) == ["callAccepted"] and sent(ctx, conn2)[0]["id"] == "a2"
    for other in (conn, conn3):
        assert sent(ctx, other) == [msg("answeredElsewhere", {"callId": call_id})]
        assert Call.load(ctx, call_key(other, call_id)) is None
    assert ctx.store.keys(CALLS) == [call_key(conn2, call_id)]
    assert forks_of(ctx) is None
    assert ctx.store.get(CALLS_BY_SIP_ID, LEG) == call_key(conn2, call_id)
    assert Call.load(ctx, call_key(conn2, call_id)).state == CONFIRMED
    # the other tabs can no longer act on it
    for other in (conn, conn3):
        for action in (answer, reject, hangup):
            with pytest.raises(GatewayError) as exc:
                action(ctx, other, "x", CallIdPayload(call_id=call_id, sdp=PCMU_ANSWER, code=486))
            assert exc.value.code == errors.NO_SUCH_CALL
    # the caller's BYE reaches the answering tab only
    ctx.outbox.clear()
    assert on_remote_bye(ctx, SIP_CID, "caller-tag", sip_port.to_tag) == 200
    assert sent(ctx) == [msg("callEnded", {"callId": call_id, "by": "remote", "reason": "bye"})]
    assert ctx.outbox.sent[0][0] == conn2


def test_reject_while_others_ring_sends_no_sip_reply(ctx, tabs):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    ctx.outbox.clear()
    reject(ctx, conn, "j1", CallIdPayload(call_id=call_id, code=486))
    assert ctx.sip.suspended_replies == []
    assert sent(ctx) == [msg("callEnded", {"callId": call_id, "by": "local", "reason": "rejected"}, "j1")]
    assert Call.load(ctx, call_key(conn, call_id)) is None
    assert forks_of(ctx) == [call_key(conn2, call_id), call_key(conn3, call_id)]
    assert ctx.store.get(CALLS_BY_SIP_ID, LEG) == call_key(conn2, call_id)
    reject(ctx, conn2, "j2", CallIdPayload(call_id=call_id, code=486))
    assert ctx.sip.suspended_replies == []
    assert forks_of(ctx) is None  # one tab left
    assert ctx.store.get(CALLS_BY_SIP_ID, LEG) == call_key(conn3, call_id)
    # the last tab's reject is the SIP answer, with its code
    reject(ctx, conn3, "j3", CallIdPayload(call_id=call_id, code=603))
    assert ctx.sip.suspended_replies == [(11, 22, 603, "Decline", "", "")]
    assert ctx.store.keys(CALLS) == [] and ctx.store.keys(CALLS_BY_SIP_ID) == []
    assert [m["id"] for m in sent(ctx)] == ["j1", "j2", "j3"]


def test_answer_after_other_tabs_rejected(ctx, tabs):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    reject(ctx, conn, "j1", CallIdPayload(call_id=call_id, code=486))
    ctx.outbox.clear()
    answer(ctx, conn3, "a3", CallIdPayload(call_id=call_id, sdp=PCMU_ANSWER))
    assert sent(ctx, conn) == []  # it already left
    assert sent(ctx, conn2) == [msg("answeredElsewhere", {"callId": call_id})]
    assert types(ctx, conn3) == ["callAccepted"]
    assert [r[2] for r in ctx.sip.suspended_replies] == [200]


def test_hangup_of_a_ringing_tab_is_like_reject(ctx, tabs):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    ctx.outbox.clear()
    for i, c in enumerate(tabs):
        hangup(ctx, c, f"h{i}", CallIdPayload(call_id=call_id))
        assert sent(ctx, c) == [msg("callEnded", {"callId": call_id, "by": "local", "reason": "hangup"}, f"h{i}")]
        if c != conn3:
            assert ctx.sip.suspended_replies == []
    assert ctx.sip.suspended_replies == [(11, 22, 486, "Busy Here", "", "")]


def test_caller_cancel_is_call_cancelled_in_every_tab(ctx, tabs):
    call_id = ring_all(ctx)
    ctx.outbox.clear()
    on_remote_cancel(ctx, SIP_CID, "caller-tag")
    assert ctx.outbox.sent == [(c, msg("callCancelled", {"callId": call_id})) for c in tabs]
    assert ctx.sip.suspended_replies == []  # tm answers 487 itself
    assert ctx.store.keys(CALLS) == [] and ctx.store.keys(CALLS_BY_SIP_ID) == []
    on_remote_cancel(ctx, SIP_CID, "caller-tag")  # a retransmission: nothing more
    assert len(ctx.outbox.sent) == 3


def test_caller_cancel_after_one_tab_rejected(ctx, tabs):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    reject(ctx, conn2, "j2", CallIdPayload(call_id=call_id, code=486))
    ctx.outbox.clear()
    on_remote_cancel(ctx, SIP_CID, "caller-tag")
    assert ctx.outbox.sent == [(c, msg("callCancelled", {"callId": call_id})) for c in (conn, conn3)]
    assert ctx.store.keys(CALLS) == []


def test_ring_timeout_is_one_480_and_call_cancelled_in_every_tab(ctx, tabs, clock):
    call_id = ring_all(ctx)
    ctx.outbox.clear()
    clock.advance(ctx.config.ring_timeout - 1)
    tick(ctx)
    assert ctx.outbox.sent == [] and ctx.sip.suspended_replies == []
    clock.advance(1)
    tick(ctx)
    assert ctx.sip.suspended_replies == [(11, 22, 480, "Temporarily Unavailable", "", "")]
    assert ctx.outbox.sent == [(c, msg("callCancelled", {"callId": call_id, "reason": "no_answer"})) for c in tabs]
    assert ctx.store.keys(CALLS) == [] and ctx.store.keys(CALLS_BY_SIP_ID) == []
    clock.advance(1)
    tick(ctx)
    assert len(ctx.sip.suspended_replies) == 1 and len(ctx.outbox.sent) == 3


def test_ring_timeout_after_one_tab_rejected(ctx, tabs, clock):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    reject(ctx, conn3, "j3", CallIdPayload(call_id=call_id, code=603))
    ctx.outbox.clear()
    clock.advance(ctx.config.ring_timeout)
    tick(ctx)
    assert ctx.sip.suspended_replies == [(11, 22, 480, "Temporarily Unavailable", "", "")]
    assert ctx.outbox.sent == [(c, msg("callCancelled", {"callId": call_id, "reason": "no_answer"}))
                               for c in (conn, conn2)]


def test_tab_closing_while_ringing_is_like_its_reject(ctx, tabs):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    ctx.outbox.clear()
    calls.connection_closed(ctx, conn)
    registrations.connection_closed(ctx, conn)
    assert ctx.sip.suspended_replies == [] and sent(ctx) == []
    assert Call.load(ctx, call_key(conn, call_id)) is None
    assert forks_of(ctx) == [call_key(conn2, call_id), call_key(conn3, call_id)]
    calls.connection_closed(ctx, conn2)
    assert ctx.sip.suspended_replies == []
    # the last ringing tab closing answers the INVITE
    calls.connection_closed(ctx, conn3)
    assert ctx.sip.suspended_replies == [(11, 22, 480, "Temporarily Unavailable", "", "")]
    assert ctx.store.keys(CALLS) == [] and ctx.store.keys(CALLS_BY_SIP_ID) == []


def test_tab_closing_then_another_answers(ctx, tabs):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    calls.connection_closed(ctx, conn3)
    ctx.outbox.clear()
    answer(ctx, conn, "a1", CallIdPayload(call_id=call_id, sdp=PCMU_ANSWER))
    assert [r[2] for r in ctx.sip.suspended_replies] == [200]
    assert sent(ctx, conn2) == [msg("answeredElsewhere", {"callId": call_id})]
    assert sent(ctx, conn3) == []


def test_tab_that_cannot_be_alerted_stops_ringing(ctx, tabs, monkeypatch):
    conn, conn2, conn3 = tabs
    real_send = ctx.outbox.send
    monkeypatch.setattr(ctx.outbox, "send", lambda c, m: real_send(c, m) and c != conn2)
    call_id = ring_all(ctx)
    assert ctx.sip.suspended_replies == []
    assert Call.load(ctx, call_key(conn2, call_id)) is None
    assert forks_of(ctx) == [call_key(conn, call_id), call_key(conn3, call_id)]


def test_no_tab_can_be_alerted_is_one_480(ctx, tabs):
    ctx.outbox.result = False
    ring_inbound(ctx, make_invite(), 11, 22, "gw-ring-tag")
    assert ctx.sip.suspended_replies == [(11, 22, 480, "Temporarily Unavailable", "", "")]
    assert ctx.store.keys(CALLS) == [] and ctx.store.keys(CALLS_BY_SIP_ID) == []


def test_inbound_session_timer_on_every_tab(ctx, tabs):
    conn, conn2, conn3 = tabs
    ring_inbound(ctx, replace(make_invite(), session_expires="600;refresher=uac", supported="timer"), 11, 22, "t")
    call_id = sent(ctx)[0]["payload"]["callId"]
    for c in tabs:
        assert Call.load(ctx, call_key(c, call_id)).se_interval == 600
    assert forks_of(ctx) == [call_key(c, call_id) for c in tabs]
    answer(ctx, conn3, "a3", CallIdPayload(call_id=call_id, sdp=PCMU_ANSWER))
    assert "Session-Expires: 600;refresher=uac\r\n" in ctx.sip.suspended_replies[-1][4]
    assert ctx.store.keys(CALLS) == [call_key(conn3, call_id)]
    assert ctx.store.get(CALLS_BY_SIP_ID, LEG) == call_key(conn3, call_id)


def test_answer_when_the_transaction_is_gone(ctx, tabs, sip_port):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    sip_port.to_tag = None  # the caller cancelled at that moment
    ctx.outbox.clear()
    with pytest.raises(GatewayError) as exc:
        answer(ctx, conn, "a1", CallIdPayload(call_id=call_id, sdp=PCMU_ANSWER))
    assert exc.value.code == errors.NO_SUCH_CALL
    # every tab stops ringing at once (the CANCEL that follows finds nothing left)
    assert ctx.outbox.sent == [(c, msg("callCancelled", {"callId": call_id})) for c in (conn, conn2, conn3)]
    assert ctx.store.keys(CALLS) == []
    ctx.outbox.clear()
    on_remote_cancel(ctx, SIP_CID, "caller-tag")
    assert ctx.outbox.sent == []


def test_answer_after_the_caller_cancelled(ctx, tabs):
    conn, conn2, conn3 = tabs
    call_id = ring_all(ctx)
    on_remote_cancel(ctx, SIP_CID, "caller-tag")
    for c in tabs:
        with pytest.raises(GatewayError) as exc:
            answer(ctx, c, "a", CallIdPayload(call_id=call_id, sdp=PCMU_ANSWER))
        assert exc.value.code == errors.NO_SUCH_CALL
    assert ctx.sip.suspended_replies == []


def test_single_tab_keeps_no_fork_list(ctx, conn):
    join(ctx, conn)
    ring_all(ctx)
    assert forks_of(ctx) is None
    assert ctx.store.keys(CALLS_BY_SIP_ID) == [LEG]
