"""Sessions and resume: seq numbers, a dropped WebSocket, `attach`, and the end of the grace period."""

from __future__ import annotations

import pytest

from test_calls import answered, make_invite, place, reply, ring
from wsgw import calls, errors, handlers, protocol, registrations, resume, sessions
from wsgw.calls import CallIdPayload, Call
from wsgw.connections import ConnRef
from wsgw.errors import GatewayError
from wsgw.protocol import RegisterPayload
from wsgw.resume import AttachPayload, parse_attach
from wsgw.store import CALLS, CONN, SESSION_EVENTS, SESSIONS

NEW = ConnRef(5, "192.0.2.10", 40999)


def register(ctx, conn, dn="5001") -> str:
    registrations.register(ctx, conn, "reg", RegisterPayload(dn=dn, password=f"secret{dn}"))
    _, msg = ctx.outbox.stamped[-1]
    assert msg["type"] == "registered"
    return msg["payload"]["resumeToken"]


def stamped(ctx, conn) -> list[dict]:
    return [m for c, m in ctx.outbox.stamped if c == conn]


def drop(ctx, conn) -> None:
    """What the adapter does when the WebSocket closes."""
    if not resume.detach(ctx, conn):
        resume.end_connection(ctx, conn)


def attach(ctx, conn, token, last_seq=0, rid="a1") -> dict:
    resume.attach(ctx, conn, rid, AttachPayload(token, last_seq))
    return stamped(ctx, conn)[-1]


# ---- seq ----


def test_registered_starts_the_session_at_seq_1_and_every_message_counts(ctx, conn):
    token = register(ctx, conn)
    assert len(token) == 32
    handlers.dispatch(ctx, conn, '{"type":"ping","id":"p"}')
    handlers.dispatch(ctx, conn, '{"type":"ping","id":"q"}')
    assert [m.get("seq") for m in stamped(ctx, conn)] == [1, 2, 3]


def test_an_unregistered_connection_gets_no_seq(ctx, conn):
    handlers.dispatch(ctx, conn, '{"type":"ping","id":"p"}')
    assert "seq" not in stamped(ctx, conn)[0]


def test_each_tab_has_its_own_session(ctx, conn, conn2):
    t1 = register(ctx, conn)
    t2 = register(ctx, conn2)
    assert t1 != t2
    assert stamped(ctx, conn2)[-1]["seq"] == 1


def test_only_recent_messages_are_kept_while_attached(ctx, conn):
    register(ctx, conn)
    for i in range(sessions.KEEP_ATTACHED + 10):
        ctx.send(conn, protocol.message("pong", {"time": i}))
    session = sessions.Session.load(ctx, conn.key)
    kept, lost = sessions.missed(ctx, session, 0)
    assert len(kept) == sessions.KEEP_ATTACHED and lost == session.seq - sessions.KEEP_ATTACHED
    assert [m["seq"] for m in kept] == list(range(session.first, session.seq + 1))
    assert len(ctx.store.keys(SESSION_EVENTS)) == sessions.KEEP_ATTACHED


def test_unregister_ends_the_session(ctx, conn):
    token = register(ctx, conn)
    registrations.unregister(ctx, conn, "u")
    assert sessions.owner_of_token(ctx, token) is None
    assert ctx.store.keys(SESSIONS) == [] and ctx.store.keys(SESSION_EVENTS) == []


# ---- parse ----


def test_parse_attach():
    assert parse_attach({"token": "abc", "lastSeq": 4}) == AttachPayload("abc", 4)
    assert parse_attach({"token": "abc"}) == AttachPayload("abc", 0)
    for bad in ({}, {"token": ""}, {"token": "a b"}, {"token": "abc", "lastSeq": -1}, {"token": "abc", "lastSeq": "1"},
                {"token": "abc", "lastSeq": True}, {"token": "abc", "x": 1}):
        with pytest.raises(GatewayError) as exc:
            parse_attach(bad)
        assert exc.value.code == errors.INVALID_PAYLOAD


def test_attach_is_allowed_before_register(ctx, conn):
    handlers.dispatch(ctx, conn, '{"type":"attach","id":"a","payload":{"token":"nosuchtoken"}}')
    [reply_] = ctx.outbox.messages(conn)
    assert reply_["payload"]["code"] == errors.SESSION_EXPIRED and reply_["id"] == "a"


# ---- drop and attach ----


def test_a_dropped_connection_keeps_registration_and_calls(ctx, conn):
    register(ctx, conn)
    call, invite = place(ctx, conn)
    calls.on_reply(ctx, answered(invite))
    ctx.sip.clear()
    drop(ctx, conn)
    assert registrations.connection_of_dn(ctx, "5001") == conn
    assert Call.load(ctx, call.key).state == calls.CONFIRMED
    assert ctx.sip.requests == []  # no BYE


def test_messages_while_detached_are_kept_not_sent(ctx, conn):
    register(ctx, conn)
    call, invite = place(ctx, conn)
    drop(ctx, conn)
    before = len(ctx.outbox.stamped)
    calls.on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t"))
    calls.on_reply(ctx, answered(invite))
    assert len(ctx.outbox.stamped) == before  # nothing written to the dead socket
    session = sessions.Session.load(ctx, conn.key)
    kept, _ = sessions.missed(ctx, session, 1)
    assert [m["type"] for m in kept] == ["ringing", "callAccepted"]


def test_attach_rebinds_and_replays_in_order(ctx, conn):
    token = register(ctx, conn)
    call, invite = place(ctx, conn)
    calls.on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t"))  # seq 2, received before the drop
    drop(ctx, conn)
    calls.on_reply(ctx, answered(invite))  # seq 3, missed
    ctx.send(conn, protocol.message("pong", {"time": 1}))  # seq 4, missed
    done = attach(ctx, NEW, token, last_seq=2)
    got = stamped(ctx, NEW)
    assert [(m["type"], m["seq"]) for m in got] == [("callAccepted", 3), ("pong", 4), ("attached", 5)]
    assert got[0]["id"] == "r1"  # a replayed reply keeps its request id
    assert done["id"] == "a1"
    assert done["payload"] == {"dn": "5001", "resumeToken": token, "replayed": 2, "lost": 0,
                               "calls": [{"callId": "c1", "direction": "outbound", "state": "confirmed",
                                          "peer": "5002"}]}
    assert registrations.connection_of_dn(ctx, "5001") == NEW
    assert registrations.dn_of_connection(ctx, conn) is None
    assert Call.load(ctx, call.key).conn == NEW.key


def test_after_attach_the_new_connection_controls_the_call(ctx, conn):
    token = register(ctx, conn)
    call, invite = place(ctx, conn)
    calls.on_reply(ctx, answered(invite))
    drop(ctx, conn)
    attach(ctx, NEW, token, last_seq=99)
    ctx.sip.clear()
    calls.hangup(ctx, NEW, "h", CallIdPayload(call_id="c1"))
    assert ctx.sip.last.method == "BYE"
    assert stamped(ctx, NEW)[-1]["type"] == "callEnded"
    # The old connection owns nothing any more.
    with pytest.raises(GatewayError) as exc:
        calls.hangup(ctx, conn, "h2", CallIdPayload(call_id="c1"))
    assert exc.value.code == errors.NO_SUCH_CALL


def test_events_after_attach_go_to_the_new_connection_with_the_next_seq(ctx, conn):
    token = register(ctx, conn)
    call, invite = place(ctx, conn)
    drop(ctx, conn)
    attach(ctx, NEW, token, last_seq=1)
    calls.on_reply(ctx, answered(invite))
    assert [(m["type"], m["seq"]) for m in stamped(ctx, NEW)] == [("attached", 2), ("callAccepted", 3)]


def test_calls_placed_after_attach_count_against_the_session(ctx, conn):
    token = register(ctx, conn)
    place(ctx, conn, call_id="c1")
    drop(ctx, conn)
    attach(ctx, NEW, token)
    place_call_key = calls.key_of(ctx, NEW, "c2")
    calls.place_call(ctx, NEW, "r2", calls.CallPayload(to="5002", call_id="c2", sdp=place.__defaults__[2]))
    assert Call.load(ctx, place_call_key).conn == NEW.key
    assert sorted(ctx.store.keys(CALLS)) == sorted([calls.call_key(conn, "c1"), calls.call_key(conn, "c2")])


def test_a_ringing_inbound_call_survives_the_drop_and_can_be_answered(ctx, conn):
    from harness.sdp import PCMU_ANSWER

    token = register(ctx, conn)
    drop(ctx, conn)
    inbound = ring(ctx, make_invite())  # rings while the agent is away: kept for replay
    assert ctx.sip.suspended_replies == []
    attach(ctx, NEW, token, last_seq=1)
    incoming = [m for m in stamped(ctx, NEW) if m["type"] == "incomingCall"]
    assert incoming and incoming[0]["payload"]["callId"] == inbound.call_id
    calls.answer(ctx, NEW, "ans", CallIdPayload(call_id=inbound.call_id, sdp=PCMU_ANSWER))
    assert ctx.sip.suspended_replies[-1][2] == 200


def test_attach_while_the_old_connection_is_still_open_takes_over(ctx, conn):
    token = register(ctx, conn)
    call, invite = place(ctx, conn)
    calls.on_reply(ctx, answered(invite))
    attach(ctx, NEW, token, last_seq=2)
    ctx.sip.clear()
    drop(ctx, conn)  # the old socket closes late: the call moved, so it stays up
    assert ctx.sip.requests == []
    assert Call.load(ctx, call.key).state == calls.CONFIRMED
    assert registrations.connection_of_dn(ctx, "5001") == NEW


def test_a_second_drop_and_attach_continue_the_same_session(ctx, conn, conn2):
    token = register(ctx, conn)
    drop(ctx, conn)
    attach(ctx, NEW, token, last_seq=1)
    drop(ctx, NEW)
    ctx.send(NEW, protocol.message("pong", {"time": 1}))
    done = attach(ctx, conn2, token, last_seq=2)
    assert [(m["type"], m["seq"]) for m in stamped(ctx, conn2)] == [("pong", 3), ("attached", 4)]
    assert done["payload"]["dn"] == "5001"
    assert registrations.connection_of_dn(ctx, "5001") == conn2


def test_attach_refusals(ctx, conn, conn2):
    token = register(ctx, conn)
    register(ctx, conn2, "5002")
    with pytest.raises(GatewayError) as exc:
        resume.attach(ctx, conn2, "a", AttachPayload(token))
    assert exc.value.code == errors.ALREADY_REGISTERED
    with pytest.raises(GatewayError) as exc:
        resume.attach(ctx, NEW, "a", AttachPayload("A" * 32))
    assert exc.value.code == errors.SESSION_EXPIRED


# ---- grace period ----


def test_the_grace_period_ends_calls_and_registration(ctx, conn, clock):
    token = register(ctx, conn)
    out, invite = place(ctx, conn)
    calls.on_reply(ctx, answered(invite))
    inbound = ring(ctx, make_invite())
    drop(ctx, conn)
    ctx.sip.clear()
    clock.advance(ctx.config.resume_grace - 1)
    resume.tick(ctx)
    assert ctx.sip.requests == [] and registrations.connection_of_dn(ctx, "5001") == conn
    clock.advance(2)
    resume.tick(ctx)
    assert [r.method for r in ctx.sip.requests] == ["BYE"]
    assert ctx.sip.suspended_replies[-1][2:4] == (480, "Temporarily Unavailable")
    assert registrations.connection_of_dn(ctx, "5001") is None
    assert ctx.store.get(CONN, conn.key) is None
    assert sessions.owner_of_token(ctx, token) is None
    assert Call.load(ctx, inbound.key) is None
    with pytest.raises(GatewayError) as exc:
        resume.attach(ctx, NEW, "a", AttachPayload(token))
    assert exc.value.code == errors.SESSION_EXPIRED


def test_an_unanswered_outbound_call_is_cancelled_after_the_grace_period(ctx, conn, clock):
    register(ctx, conn)
    call, invite = place(ctx, conn)
    calls.on_reply(ctx, reply(invite, 180, "Ringing", to_tag="t"))
    drop(ctx, conn)
    clock.advance(ctx.config.resume_grace + 1)
    resume.tick(ctx)
    assert ctx.sip.cancels == [(call.sip_call_id, call.invite_cseq)]


def test_without_grace_everything_ends_at_once(make_ctx, conn):
    ctx = make_ctx(resume_grace=0)
    register(ctx, conn)
    call, invite = place(ctx, conn)
    calls.on_reply(ctx, answered(invite))
    ctx.sip.clear()
    drop(ctx, conn)
    assert [r.method for r in ctx.sip.requests] == ["BYE"]
    assert registrations.connection_of_dn(ctx, "5001") is None


def test_an_unregistered_connection_is_not_kept(ctx, conn):
    assert resume.detach(ctx, conn) is False


def test_a_session_being_attached_does_not_expire(ctx, conn, clock):
    token = register(ctx, conn)
    drop(ctx, conn)
    with ctx.store.lock(SESSIONS, conn.key):
        session = sessions.Session.load(ctx, conn.key)
        session.attaching_at = clock.advance(ctx.config.resume_grace + 1)
        session.save(ctx)
    resume.tick(ctx)
    assert sessions.owner_of_token(ctx, token) == conn.key
    clock.advance(resume.ATTACH_STALE_AFTER)
    resume.tick(ctx)  # a takeover that never finished does not keep the session forever
    assert sessions.owner_of_token(ctx, token) is None


def test_only_detached_sessions_are_indexed_for_the_timer(ctx, conn, conn2):
    token = register(ctx, conn)
    register(ctx, conn2, "5002")
    assert sessions.detached_owners(ctx) == []
    drop(ctx, conn)
    assert sessions.detached_owners(ctx) == [conn.key]
    attach(ctx, NEW, token)
    assert sessions.detached_owners(ctx) == []
    drop(ctx, NEW)
    registrations.connection_closed(ctx, NEW)  # ended some other way: the index entry goes too
    assert sessions.detached_owners(ctx) == []
