"""The per-connection call limit: a counter per session, checked against the records at the limit."""

from __future__ import annotations

import dataclasses

import pytest

from test_calls import CHROME_OFFER, answered, make_invite, place, reply, ring
from wsgw import calls, errors, limits
from wsgw.calls import CallIdPayload, CallPayload
from wsgw.config import Limits
from wsgw.errors import GatewayError
from wsgw.store import COUNTS


@pytest.fixture
def ctx(make_ctx):
    return make_ctx(limits=Limits(max_calls_per_conn=2))


def counted(ctx, conn) -> int:
    return int(ctx.store.get(COUNTS, "calls|" + conn.key) or 0)


def test_the_third_call_is_refused_and_an_ended_call_frees_its_place(ctx, caller):
    c1, invite = place(ctx, caller, call_id="c1")
    place(ctx, caller, call_id="c2")
    assert counted(ctx, caller) == 2
    with pytest.raises(GatewayError) as exc:
        calls.place_call(ctx, caller, "r3", CallPayload(to="5002", call_id="c3", sdp=CHROME_OFFER))
    assert exc.value.code == errors.RATE_LIMITED
    calls.on_reply(ctx, reply(invite, 486, "Busy Here", to_tag="t"))  # c1 fails: its record goes
    assert counted(ctx, caller) == 1
    place(ctx, caller, call_id="c3")


def test_ringing_inbound_calls_count_and_the_counter_goes_with_the_last_call(ctx, caller):
    inbound = ring(ctx, make_invite())
    assert counted(ctx, caller) == 1
    calls.reject(ctx, caller, "x", CallIdPayload(call_id=inbound.call_id, code=486))
    assert ctx.store.get(COUNTS, "calls|" + caller.key) is None  # no key left per connection


def test_a_call_forgotten_twice_counts_once(ctx, caller):
    call, invite = place(ctx, caller)
    calls.on_reply(ctx, answered(invite))
    call = calls.Call.load(ctx, call.key)
    call.forget(ctx)
    call.forget(ctx)
    assert counted(ctx, caller) == 0


def test_a_counter_that_drifted_up_does_not_refuse_a_call(ctx, caller):
    for _ in range(5):
        limits.call_added(ctx, caller.key)  # as if records had gone without being uncounted
    place(ctx, caller, call_id="c1")  # the records say 0 calls: allowed


def test_the_limit_is_configurable(make_ctx, caller):
    ctx = make_ctx(limits=dataclasses.replace(Limits(), max_calls_per_conn=1))
    from fakes import register

    register(ctx, caller, "5001")
    place(ctx, caller, call_id="c1")
    with pytest.raises(GatewayError):
        calls.place_call(ctx, caller, "r2", CallPayload(to="5002", call_id="c2", sdp=CHROME_OFFER))
