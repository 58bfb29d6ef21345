"""wsgw.registrations: embedded registrar and upstream REGISTER client, with fakes."""

from __future__ import annotations

import hashlib

import pytest

from fakes import RESUME_TOKEN, START_TIME, auth_params, parse_headers, reply_to
from wsgw import PROTOCOL_VERSION, SERVER_NAME, VERSION, errors, registrations
from wsgw.connections import ConnRef
from wsgw.digest import Challenge, authorization
from wsgw.errors import GatewayError
from wsgw.protocol import RegisterPayload
from wsgw.registrations import (
    MAX_AUTH_ATTEMPTS,
    PENDING,
    REGISTERED,
    UNREGISTERING,
    Registration,
    connection_closed,
    connection_of_dn,
    connections_of_dn,
    dn_of_connection,
    failure_code,
    granted_expires,
    on_register_reply,
    refresh_delay,
    register,
    tick,
    unregister,
)
from wsgw.sip_port import SipReply
from wsgw.store import CONN, REG, REG_BY_CALL_ID, get_json

REGISTRAR = "sip:127.0.0.1:5070"
REALM = "pbx.example"
CHALLENGE = f'Digest realm="{REALM}", nonce="nonce-1", opaque="op-1", qop="auth,auth-int", algorithm=MD5'
PASSWORD = "upstream-pw"


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def registered_msg(dn: str, expires: int, rid: str | None) -> dict:
    msg = {"type": "registered", "payload": {"dn": dn, "expires": expires, "server": SERVER_NAME, "version": VERSION,
                                             "protocol": PROTOCOL_VERSION, "resumeToken": RESUME_TOKEN}}
    if rid is not None:
        msg["id"] = rid
    return msg


def error_msg(code: str, reason: str, rid: str | None, request_type: str = "register") -> dict:
    msg = {"type": "error", "payload": {"code": code, "reason": reason, "requestType": request_type}}
    if rid is not None:
        msg["id"] = rid
    return msg


def challenge(nonce: str = "nonce-1", stale: bool = False, realm: str = REALM) -> dict[str, str]:
    value = f'Digest realm="{realm}", nonce="{nonce}", opaque="op-1", qop="auth", algorithm=MD5'
    if stale:
        value += ", stale=true"
    return {"WWW-Authenticate": value}


def ok(dn: str = "5001", expires: int = 30) -> dict[str, str]:
    return {"Contact": f"<sip:{dn}@127.0.0.1:5060>;expires={expires}"}


def headers_of(request) -> dict[str, str]:
    return parse_headers(request.headers)


def assert_valid_auth(request, *, dn="5001", password=PASSWORD, nonce="nonce-1", nc=1, header="Authorization"):
    """The request carries credentials that a registrar knowing `password` would accept."""
    p = auth_params(headers_of(request)[header])
    assert p["username"] == dn
    assert p["realm"] == REALM
    assert p["nonce"] == nonce
    assert p["uri"] == request.ruri == REGISTRAR
    assert p["qop"] == "auth"
    assert p["nc"] == f"{nc:08x}"
    assert p["opaque"] == "op-1"
    assert p["algorithm"] == "MD5"
    expected = authorization(
        Challenge(realm=REALM, nonce=nonce, opaque="op-1", qop="auth"),
        method="REGISTER",
        uri=REGISTRAR,
        username=dn,
        password=password,
        nc=nc,
        cnonce=p["cnonce"],
    )
    assert auth_params(expected)["response"] == p["response"]
    ha1, ha2 = md5(f"{dn}:{REALM}:{password}"), md5(f"REGISTER:{REGISTRAR}")
    assert p["response"] == md5(f"{ha1}:{nonce}:{p['nc']}:{p['cnonce']}:auth:{ha2}")


# ======================================================================
# embedded mode
# ======================================================================


@pytest.fixture
def ectx(make_ctx):
    return make_ctx(embedded=True)


def test_embedded_register_ok(ectx, conn, clock):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001", "Alice"))
    assert ectx.outbox.sent == [(conn, registered_msg("5001", 600, "r1"))]
    assert ectx.sip.requests == []
    assert get_json(ectx.store, CONN, conn.key) == {"dn": "5001", "since": START_TIME}
    reg = Registration.load(ectx, "5001")
    assert (reg.state, reg.mode, reg.conn, reg.display_name, reg.expires) == (REGISTERED, "embedded", conn.key, "Alice", 600)
    assert reg.password == ""  # the embedded registrar has no reason to keep it
    assert dn_of_connection(ectx, conn) == "5001"
    assert connection_of_dn(ectx, "5001") == conn


def test_embedded_register_without_request_id(ectx, conn):
    register(ectx, conn, None, RegisterPayload("+4915112345678", "pa:ss"))
    assert ectx.outbox.sent == [(conn, registered_msg("+4915112345678", 600, None))]


def test_embedded_expires_follows_config(make_ctx, conn):
    ctx = make_ctx(embedded=True, register_expires=90)
    register(ctx, conn, "r1", RegisterPayload("5001", "secret5001"))
    assert ctx.outbox.messages()[0]["payload"]["expires"] == 90


@pytest.mark.parametrize(
    "dn, password",
    [("5001", "wrong"), ("5001", "secret5002"), ("5001", "secret5001 "), ("5999", "secret5001"), ("5002", "secret5001")],
)
def test_embedded_bad_credentials_are_auth_failed(ectx, conn, dn, password):
    with pytest.raises(GatewayError) as info:
        register(ectx, conn, "r1", RegisterPayload(dn, password))
    assert info.value.code == errors.AUTH_FAILED
    assert info.value.reason == "wrong DN or password"  # same for unknown DN and wrong password
    assert ectx.outbox.sent == []
    assert ectx.store.keys(CONN) == [] and ectx.store.keys(REG) == []


def test_embedded_without_subscriber_file_refuses_everyone(make_ctx, conn):
    ctx = make_ctx(embedded=True, subscribers_text=None)
    with pytest.raises(GatewayError) as info:
        register(ctx, conn, "r1", RegisterPayload("5001", "secret5001"))
    assert info.value.code == errors.AUTH_FAILED


def test_embedded_already_registered_on_same_connection(ectx, conn):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    for dn, pw in (("5002", "secret5002"), ("5001", "secret5001")):
        with pytest.raises(GatewayError) as info:
            register(ectx, conn, "r2", RegisterPayload(dn, pw))
        assert info.value.code == errors.ALREADY_REGISTERED
        assert info.value.reason == "this connection is already registered as 5001"
    assert dn_of_connection(ectx, conn) == "5001"
    assert Registration.load(ectx, "5002") is None


def test_embedded_second_tab_of_the_same_dn_joins(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    register(ectx, conn2, "r2", RegisterPayload("5001", "secret5001"))
    assert ectx.outbox.sent[-1] == (conn2, registered_msg("5001", 600, "r2"))
    assert connections_of_dn(ectx, "5001") == [conn, conn2]
    assert dn_of_connection(ectx, conn2) == "5001"


def test_embedded_second_tab_needs_the_password(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    with pytest.raises(GatewayError) as info:
        register(ectx, conn2, "r2", RegisterPayload("5001", "wrong"))
    assert info.value.code == errors.AUTH_FAILED
    assert connections_of_dn(ectx, "5001") == [conn]


def test_a_tab_leaving_keeps_the_others_registered(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    register(ectx, conn2, "r2", RegisterPayload("5001", "secret5001"))
    connection_closed(ectx, conn)
    assert connections_of_dn(ectx, "5001") == [conn2]
    connection_closed(ectx, conn2)
    assert connections_of_dn(ectx, "5001") == []


def test_embedded_other_dn_on_other_connection_is_fine(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    register(ectx, conn2, "r2", RegisterPayload("5002", "secret5002"))
    assert connection_of_dn(ectx, "5001") == conn
    assert connection_of_dn(ectx, "5002") == conn2
    assert ectx.outbox.sent[1] == (conn2, registered_msg("5002", 600, "r2"))


def test_embedded_stale_registration_without_live_connection_is_replaced(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    ectx.store.delete(CONN, conn.key)  # the close event was lost: REG entry is stale
    register(ectx, conn2, "r2", RegisterPayload("5001", "secret5001"))
    assert connection_of_dn(ectx, "5001") == conn2


def test_embedded_connection_closed_removes_binding(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    connection_closed(ectx, conn)
    assert ectx.store.keys(CONN) == [] and ectx.store.keys(REG) == []
    assert connection_of_dn(ectx, "5001") is None
    assert dn_of_connection(ectx, conn) is None
    assert ectx.sip.requests == []
    assert len(ectx.outbox.sent) == 1  # nothing sent to a closed socket
    register(ectx, conn2, "r2", RegisterPayload("5001", "secret5001"))
    assert connection_of_dn(ectx, "5001") == conn2


def test_connection_closed_of_unknown_connection_is_harmless(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    connection_closed(ectx, conn2)
    assert connection_of_dn(ectx, "5001") == conn
    assert ectx.outbox.sent == [(conn, registered_msg("5001", 600, "r1"))]


def test_connection_closed_does_not_touch_a_dn_now_bound_elsewhere(ectx, conn, conn2):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    ectx.store.delete(CONN, conn.key)
    register(ectx, conn2, "r2", RegisterPayload("5001", "secret5001"))
    # a late close event for the first connection, whose CONN row is somehow back
    ectx.store.put(CONN, conn.key, '{"dn":"5001","since":0}')
    connection_closed(ectx, conn)
    assert connection_of_dn(ectx, "5001") == conn2
    assert ectx.store.get(CONN, conn.key) is None


def test_embedded_unregister(ectx, conn):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    unregister(ectx, conn, "u1")
    assert ectx.outbox.sent[-1] == (conn, {"type": "unregistered", "payload": {"dn": "5001"}, "id": "u1"})
    assert ectx.store.keys(CONN) == [] and ectx.store.keys(REG) == []
    assert connection_of_dn(ectx, "5001") is None
    # the connection may register again, even as another DN
    register(ectx, conn, "r2", RegisterPayload("5002", "secret5002"))
    assert connection_of_dn(ectx, "5002") == conn


def test_unregister_when_not_registered(ectx, conn):
    with pytest.raises(GatewayError) as info:
        unregister(ectx, conn, "u1")
    assert info.value.code == errors.NOT_REGISTERED
    assert ectx.outbox.sent == []


def test_unregister_twice(ectx, conn):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    unregister(ectx, conn, "u1")
    with pytest.raises(GatewayError) as info:
        unregister(ectx, conn, "u2")
    assert info.value.code == errors.NOT_REGISTERED


def test_tick_ignores_embedded_registrations(ectx, conn, clock):
    register(ectx, conn, "r1", RegisterPayload("5001", "secret5001"))
    before = ectx.store.get(REG, "5001")
    clock.advance(10_000)
    tick(ectx)
    assert ectx.sip.requests == []
    assert ectx.store.get(REG, "5001") == before
    assert len(ectx.outbox.sent) == 1


# ======================================================================
# upstream mode
# ======================================================================


@pytest.fixture
def uctx(make_ctx):
    return make_ctx(embedded=False)


def start(ctx, conn, dn="5001", rid="r1", display_name=""):
    register(ctx, conn, rid, RegisterPayload(dn, PASSWORD, display_name))
    return ctx.sip.last


def answer(ctx, request, status, reason="", headers=None):
    on_register_reply(ctx, reply_to(request, status, reason, headers))


def registered_upstream(ctx, conn, dn="5001", rid="r1", expires=30):
    """register -> 401 -> REGISTER with credentials -> 200; returns the two REGISTERs."""
    first = start(ctx, conn, dn, rid)
    answer(ctx, first, 401, "Unauthorized", challenge())
    second = ctx.sip.last
    answer(ctx, second, 200, "OK", ok(dn, expires))
    return first, second


def test_upstream_register_sends_register_without_credentials(uctx, conn):
    req = start(uctx, conn)
    assert len(uctx.sip.requests) == 1
    assert (req.method, req.ruri, req.nexthop, req.body) == ("REGISTER", REGISTRAR, "sip:127.0.0.1:5070", "")
    h = headers_of(req)
    assert set(h) == {"From", "To", "Call-ID", "CSeq", "Contact", "Expires", "Max-Forwards"}
    tag = h["From"].split(";tag=")[1]
    assert h["From"] == f"<sip:5001@127.0.0.1>;tag={tag}"
    assert len(tag) >= 16
    assert h["To"] == "<sip:5001@127.0.0.1>"
    local, _, host = h["Call-ID"].partition("@")
    assert host == "127.0.0.1" and len(local) >= 32
    assert h["CSeq"] == "1 REGISTER"
    assert h["Contact"] == "<sip:5001@127.0.0.1:5060>;expires=600"
    assert h["Expires"] == "600"
    assert h["Max-Forwards"] == "70"
    assert uctx.outbox.sent == []  # `registered` only after the registrar says so


def test_upstream_register_binds_connection_while_pending(uctx, conn, clock):
    req = start(uctx, conn)
    call_id = headers_of(req)["Call-ID"]
    assert get_json(uctx.store, CONN, conn.key) == {"dn": "5001", "since": START_TIME}
    assert uctx.store.get(REG_BY_CALL_ID, call_id) == "5001"
    reg = Registration.load(uctx, "5001")
    assert (reg.state, reg.mode, reg.request_id, reg.call_id, reg.cseq, reg.sent_at) == (
        PENDING, "upstream", "r1", call_id, 1, START_TIME)
    assert connection_of_dn(uctx, "5001") is None  # not reachable for calls until registered


def test_upstream_display_name_in_from_and_to(uctx, conn):
    h = headers_of(start(uctx, conn, display_name="Jürgen M"))
    assert h["From"].startswith('"Jürgen M" <sip:5001@127.0.0.1>;tag=')
    assert h["To"] == '"Jürgen M" <sip:5001@127.0.0.1>'


def test_upstream_uses_config_for_contact_and_expires(make_ctx, conn):
    ctx = make_ctx(embedded=False, listen_ip="10.0.0.5", sip_port=5080, register_expires=300,
                   upstream="sip:pbx.example.com:5062;transport=tcp")
    req = start(ctx, conn)
    h = headers_of(req)
    assert req.ruri == "sip:pbx.example.com:5062"
    assert req.nexthop == "sip:pbx.example.com:5062;transport=tcp"
    assert h["From"].startswith("<sip:5001@pbx.example.com>;tag=")
    assert h["Contact"] == "<sip:5001@10.0.0.5:5080>;expires=300"
    assert h["Expires"] == "300"
    assert h["Call-ID"].endswith("@10.0.0.5")


def test_call_ids_and_tags_differ_between_registrations(uctx, conn, conn2):
    h1 = headers_of(start(uctx, conn, "5001"))
    h2 = headers_of(start(uctx, conn2, "5002"))
    assert h1["Call-ID"] != h2["Call-ID"]
    assert h1["From"].split("tag=")[1] != h2["From"].split("tag=")[1]


def test_401_is_answered_with_authorization(uctx, conn):
    first = start(uctx, conn)
    answer(uctx, first, 401, "Unauthorized", {"WWW-Authenticate": CHALLENGE})
    assert len(uctx.sip.requests) == 2
    second = uctx.sip.last
    h1, h2 = headers_of(first), headers_of(second)
    assert h2["CSeq"] == "2 REGISTER"
    for name in ("Call-ID", "From", "To", "Contact", "Expires"):
        assert h2[name] == h1[name], name
    assert "Proxy-Authorization" not in h2
    assert_valid_auth(second, nc=1)
    assert uctx.outbox.sent == []


def test_407_is_answered_with_proxy_authorization(uctx, conn):
    first = start(uctx, conn)
    answer(uctx, first, 407, "Proxy Authentication Required", {"Proxy-Authenticate": CHALLENGE})
    second = uctx.sip.last
    h = headers_of(second)
    assert "Authorization" not in h
    assert h["CSeq"] == "2 REGISTER"
    assert_valid_auth(second, header="Proxy-Authorization")


def test_401_with_several_challenges_uses_the_first(uctx, conn):
    first = start(uctx, conn)
    joined = CHALLENGE + ',Digest realm="other", nonce="nonce-other", qop="auth"'
    answer(uctx, first, 401, "Unauthorized", {"WWW-Authenticate": joined})
    assert_valid_auth(uctx.sip.last, nonce="nonce-1")


def test_200_sends_registered_with_granted_expires(uctx, conn, clock):
    first = start(uctx, conn)
    answer(uctx, first, 401, "Unauthorized", challenge())
    clock.advance(0.25)
    answer(uctx, uctx.sip.last, 200, "OK", {"Contact": "<sip:5001@127.0.0.1:5060>;expires=30", "Expires": "3600"})
    assert uctx.outbox.sent == [(conn, registered_msg("5001", 30, "r1"))]
    reg = Registration.load(uctx, "5001")
    assert (reg.state, reg.expires, reg.refresh_at, reg.auth_attempts, reg.request_id) == (
        REGISTERED, 30, START_TIME + 0.25 + 15, 0, None)
    assert connection_of_dn(uctx, "5001") == conn
    assert len(uctx.sip.requests) == 2


def test_200_without_challenge_and_expires_header(uctx, conn):
    req = start(uctx, conn)
    answer(uctx, req, 200, "OK", {"Expires": "120"})
    assert uctx.outbox.sent == [(conn, registered_msg("5001", 120, "r1"))]
    assert Registration.load(uctx, "5001").refresh_at == START_TIME + 60


def test_200_with_nothing_uses_requested_expires(uctx, conn):
    answer(uctx, start(uctx, conn), 200, "OK")
    assert uctx.outbox.sent == [(conn, registered_msg("5001", 600, "r1"))]
    assert Registration.load(uctx, "5001").refresh_at == START_TIME + 540


def test_registered_goes_to_the_right_connection(uctx, conn, conn2):
    req1 = start(uctx, conn, "5001", "a")
    req2 = start(uctx, conn2, "5002", "b")
    answer(uctx, req2, 200, "OK", ok("5002", 45))
    assert uctx.outbox.sent == [(conn2, registered_msg("5002", 45, "b"))]
    answer(uctx, req1, 200, "OK", ok("5001", 50))
    assert uctx.outbox.sent[1] == (conn, registered_msg("5001", 50, "a"))
    assert connection_of_dn(uctx, "5001") == conn
    assert connection_of_dn(uctx, "5002") == conn2


def test_200_granting_no_expiry_is_an_error(uctx, conn):
    answer(uctx, start(uctx, conn), 200, "OK", ok("5001", 0))
    assert uctx.outbox.sent == [
        (conn, error_msg(errors.AUTH_FAILED, "registrar answered 200 registrar granted no expiry", "r1"))
    ]
    assert uctx.store.keys(REG) == [] and uctx.store.keys(CONN) == []


def test_provisional_replies_are_ignored(uctx, conn):
    req = start(uctx, conn)
    answer(uctx, req, 100, "Trying")
    answer(uctx, req, 183, "Progress")
    assert len(uctx.sip.requests) == 1 and uctx.outbox.sent == []
    assert Registration.load(uctx, "5001").state == PENDING


# ---- refresh ----


def test_refresh_is_scheduled_and_sent(uctx, conn, clock):
    first, second = registered_upstream(uctx, conn, expires=30)
    uctx.outbox.clear()
    clock.advance(14.9)
    tick(uctx)
    assert len(uctx.sip.requests) == 2
    clock.advance(0.1)
    tick(uctx)
    assert len(uctx.sip.requests) == 3
    refresh = uctx.sip.last
    h, h2 = headers_of(refresh), headers_of(second)
    assert h["CSeq"] == "3 REGISTER"
    assert h["Call-ID"] == h2["Call-ID"] and h["From"] == h2["From"]
    assert h["Expires"] == "600"
    assert h["Contact"] == "<sip:5001@127.0.0.1:5060>;expires=600"
    assert_valid_auth(refresh, nc=2)
    # waiting for the reply: no second refresh
    clock.advance(1)
    tick(uctx)
    assert len(uctx.sip.requests) == 3
    # the refresh's 200 reschedules and says nothing to the client
    answer(uctx, refresh, 200, "OK", ok("5001", 100))
    assert uctx.outbox.sent == []
    reg = Registration.load(uctx, "5001")
    assert (reg.state, reg.expires, reg.refresh_at) == (REGISTERED, 100, clock() + 50)
    clock.advance(49.9)
    tick(uctx)
    assert len(uctx.sip.requests) == 3
    clock.advance(0.1)
    tick(uctx)
    assert len(uctx.sip.requests) == 4
    assert_valid_auth(uctx.sip.last, nc=3)


def test_refresh_with_new_challenge(uctx, conn, clock):
    registered_upstream(uctx, conn, expires=30)
    clock.advance(15)
    tick(uctx)
    refresh = uctx.sip.last
    answer(uctx, refresh, 401, "Unauthorized", challenge("nonce-2", stale=True))
    retry = uctx.sip.last
    assert headers_of(retry)["CSeq"] == "4 REGISTER"
    assert_valid_auth(retry, nonce="nonce-2", nc=1)
    answer(uctx, retry, 200, "OK", ok("5001", 30))
    reg = Registration.load(uctx, "5001")
    assert (reg.state, reg.auth_attempts, reg.nonce) == (REGISTERED, 0, "nonce-2")
    assert len(uctx.outbox.sent) == 1


def test_failed_refresh_keeps_binding_and_retries_after_5s(uctx, conn, clock):
    registered_upstream(uctx, conn, expires=30)
    clock.advance(15)
    tick(uctx)
    answer(uctx, uctx.sip.last, 503, "Service Unavailable")
    reg = Registration.load(uctx, "5001")
    assert (reg.state, reg.refresh_at) == (REGISTERED, clock() + 5)
    assert connection_of_dn(uctx, "5001") == conn
    assert len(uctx.outbox.sent) == 2 and uctx.outbox.sent[-1][1]["type"] == "registrationLost"  # the original `registered`, then one registrationLost
    n = len(uctx.sip.requests)
    clock.advance(4.9)
    tick(uctx)
    assert len(uctx.sip.requests) == n
    clock.advance(0.1)
    tick(uctx)
    assert len(uctx.sip.requests) == n + 1
    assert headers_of(uctx.sip.last)["CSeq"] == "4 REGISTER"


def test_refresh_timeout_keeps_binding(uctx, conn, clock):
    registered_upstream(uctx, conn, expires=30)
    clock.advance(15)
    tick(uctx)
    n = len(uctx.sip.requests)
    clock.advance(8)
    tick(uctx)
    assert Registration.load(uctx, "5001").refresh_at == 0  # still waiting
    clock.advance(0.5)
    tick(uctx)
    reg = Registration.load(uctx, "5001")
    assert (reg.state, reg.refresh_at) == (REGISTERED, clock() + 5)
    assert len(uctx.sip.requests) == n and len(uctx.outbox.sent) == 2 and uctx.outbox.sent[-1][1]["type"] == "registrationLost"


# ---- failures of the initial REGISTER ----


def test_second_401_with_same_nonce_is_auth_failed(uctx, conn, conn2):
    first = start(uctx, conn)
    answer(uctx, first, 401, "Unauthorized", challenge())
    second = uctx.sip.last
    answer(uctx, second, 401, "Unauthorized", challenge())
    assert len(uctx.sip.requests) == 2
    assert uctx.outbox.sent == [(conn, error_msg(errors.AUTH_FAILED, "registrar answered 401 Unauthorized", "r1"))]
    assert uctx.store.keys(CONN) == [] and uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == []
    # the DN is free again, and nothing more happens on tick
    tick(uctx)
    assert len(uctx.sip.requests) == 2
    start(uctx, conn2, rid="r2")
    assert headers_of(uctx.sip.last)["CSeq"] == "1 REGISTER"
    assert headers_of(uctx.sip.last)["Call-ID"] != headers_of(first)["Call-ID"]


def test_stale_nonce_gets_one_more_try(uctx, conn):
    first = start(uctx, conn)
    answer(uctx, first, 401, "Unauthorized", challenge("nonce-1"))
    answer(uctx, uctx.sip.last, 401, "Unauthorized", challenge("nonce-2", stale=True))
    third = uctx.sip.last
    assert len(uctx.sip.requests) == 3
    assert headers_of(third)["CSeq"] == "3 REGISTER"
    assert_valid_auth(third, nonce="nonce-2", nc=1)
    answer(uctx, third, 200, "OK", ok())
    assert uctx.outbox.sent == [(conn, registered_msg("5001", 30, "r1"))]


def test_stale_challenge_with_the_same_nonce_is_retried(uctx, conn):
    # spec 6.1: retry once more when the new challenge has stale=true *or* a new nonce
    answer(uctx, start(uctx, conn), 401, "Unauthorized", challenge("nonce-1"))
    answer(uctx, uctx.sip.last, 401, "Unauthorized", challenge("nonce-1", stale=True))
    assert len(uctx.sip.requests) == 3
    assert_valid_auth(uctx.sip.last, nonce="nonce-1", nc=1)
    assert uctx.outbox.sent == []


def test_auth_attempts_are_bounded(uctx, conn):
    first = start(uctx, conn)
    answer(uctx, first, 401, "Unauthorized", challenge("n1"))
    for i in range(2, 2 + MAX_AUTH_ATTEMPTS):
        answer(uctx, uctx.sip.last, 401, "Unauthorized", challenge(f"n{i}", stale=True))
    assert len(uctx.sip.requests) == 1 + MAX_AUTH_ATTEMPTS
    assert uctx.outbox.sent == [(conn, error_msg(errors.AUTH_FAILED, "registrar answered 401 Unauthorized", "r1"))]


def test_second_401_with_new_nonce_is_retried(uctx, conn):
    answer(uctx, start(uctx, conn), 401, "Unauthorized", challenge("n1"))
    answer(uctx, uctx.sip.last, 401, "Unauthorized", challenge("n2"))
    assert len(uctx.sip.requests) == 3
    assert_valid_auth(uctx.sip.last, nonce="n2", nc=1)
    assert uctx.outbox.sent == []


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"WWW-Authenticate": 'Basic realm="x"'},
        {"WWW-Authenticate": 'Digest realm="x", nonce="n", algorithm=SHA-256'},
        {"WWW-Authenticate": 'Digest realm="x"'},
        {"Proxy-Authenticate": CHALLENGE},  # wrong header for a 401
    ],
)
def test_unusable_challenge_is_auth_failed(uctx, conn, header):
    answer(uctx, start(uctx, conn), 401, "Unauthorized", header)
    assert len(uctx.sip.requests) == 1
    assert uctx.outbox.sent == [(conn, error_msg(errors.AUTH_FAILED, "registrar answered 401 Unauthorized", "r1"))]
    assert uctx.store.keys(CONN) == []


@pytest.mark.parametrize(
    "status, reason, code",
    [
        (403, "Forbidden", errors.AUTH_FAILED),
        (404, "Not Found", errors.AUTH_FAILED),
        (302, "Moved", errors.AUTH_FAILED),
        (408, "Request Timeout", errors.UPSTREAM_UNREACHABLE),
        (500, "Server Internal Error", errors.UPSTREAM_UNREACHABLE),
        (503, "Service Unavailable", errors.UPSTREAM_UNREACHABLE),
        (603, "Decline", errors.UPSTREAM_UNREACHABLE),
    ],
)
def test_final_failure_of_initial_register(uctx, conn, status, reason, code):
    answer(uctx, start(uctx, conn), status, reason)
    assert uctx.outbox.sent == [(conn, error_msg(code, f"registrar answered {status} {reason}", "r1"))]
    assert uctx.store.keys(CONN) == [] and uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == []
    assert dn_of_connection(uctx, conn) is None


def test_403_after_challenge_is_auth_failed(uctx, conn):
    answer(uctx, start(uctx, conn), 401, "Unauthorized", challenge())
    answer(uctx, uctx.sip.last, 403, "Forbidden")
    assert uctx.outbox.sent == [(conn, error_msg(errors.AUTH_FAILED, "registrar answered 403 Forbidden", "r1"))]


def test_no_reply_within_sip_timeout_is_upstream_unreachable(uctx, conn, clock):
    req = start(uctx, conn)
    clock.advance(8)
    tick(uctx)
    assert uctx.outbox.sent == []
    clock.advance(0.5)
    tick(uctx)
    assert uctx.outbox.sent == [
        (conn, error_msg(errors.UPSTREAM_UNREACHABLE, "registrar answered 408 Request Timeout", "r1"))
    ]
    assert uctx.store.keys(REG) == [] and uctx.store.keys(CONN) == [] and uctx.store.keys(REG_BY_CALL_ID) == []
    # a reply arriving after the timeout is ignored
    answer(uctx, req, 200, "OK", ok())
    assert len(uctx.outbox.sent) == 1
    tick(uctx)
    assert len(uctx.outbox.sent) == 1 and len(uctx.sip.requests) == 1


def test_timeout_counts_from_the_last_request(uctx, conn, clock):
    first = start(uctx, conn)
    clock.advance(5)
    answer(uctx, first, 401, "Unauthorized", challenge())
    clock.advance(7)  # 12 s after the first request, 7 s after the second
    tick(uctx)
    assert uctx.outbox.sent == []
    clock.advance(1.5)
    tick(uctx)
    assert [m["payload"]["code"] for m in uctx.outbox.messages()] == [errors.UPSTREAM_UNREACHABLE]


def test_sip_timeout_follows_config(make_ctx, conn, clock):
    ctx = make_ctx(embedded=False, sip_timeout=2)
    start(ctx, conn)
    clock.advance(2.5)
    tick(ctx)
    assert [m["payload"]["code"] for m in ctx.outbox.messages()] == [errors.UPSTREAM_UNREACHABLE]


def test_unsent_request_still_times_out(uctx, conn, clock):
    uctx.sip.result = False  # t_uac_send failed
    start(uctx, conn)
    clock.advance(9)
    tick(uctx)
    assert [m["payload"]["code"] for m in uctx.outbox.messages()] == [errors.UPSTREAM_UNREACHABLE]


# ---- stale / unrelated replies ----


def test_late_reply_with_old_cseq_is_ignored(uctx, conn):
    first = start(uctx, conn)
    answer(uctx, first, 401, "Unauthorized", challenge())
    second = uctx.sip.last
    answer(uctx, first, 200, "OK", ok())  # a late 200 to CSeq 1
    answer(uctx, first, 403, "Forbidden")  # and a late failure
    assert uctx.outbox.sent == [] and len(uctx.sip.requests) == 2
    assert Registration.load(uctx, "5001").state == PENDING
    answer(uctx, second, 200, "OK", ok())
    assert uctx.outbox.sent == [(conn, registered_msg("5001", 30, "r1"))]


def test_replies_with_unknown_call_id_or_cseq_are_ignored(uctx, conn):
    req = start(uctx, conn)
    on_register_reply(uctx, SipReply(status=200, reason="OK", call_id="nobody@127.0.0.1", cseq=1, method="REGISTER"))
    r = reply_to(req, 200, "OK")
    on_register_reply(uctx, SipReply(status=200, reason="OK", call_id=r.call_id, cseq=7, method="REGISTER"))
    assert uctx.outbox.sent == []
    assert Registration.load(uctx, "5001").state == PENDING


def test_reply_for_a_call_id_whose_registration_is_gone(uctx, conn):
    req = start(uctx, conn)
    uctx.store.delete(REG, "5001")
    answer(uctx, req, 200, "OK", ok())
    assert uctx.outbox.sent == []


# ---- unregister / close ----


def test_upstream_unregister_sends_expires_0_with_credentials(uctx, conn, clock):
    _, second = registered_upstream(uctx, conn)
    unregister(uctx, conn, "u1")
    assert uctx.outbox.sent[-1] == (conn, {"type": "unregistered", "payload": {"dn": "5001"}, "id": "u1"})
    req = uctx.sip.last
    assert len(uctx.sip.requests) == 3
    h = headers_of(req)
    assert h["CSeq"] == "3 REGISTER"
    assert h["Expires"] == "0"
    assert h["Contact"] == "<sip:5001@127.0.0.1:5060>;expires=0"
    assert h["Call-ID"] == headers_of(second)["Call-ID"]
    assert h["From"] == headers_of(second)["From"]
    assert_valid_auth(req, nc=2)
    # the connection is free at once, the registration waits for the registrar
    assert dn_of_connection(uctx, conn) is None
    assert connection_of_dn(uctx, "5001") is None
    assert Registration.load(uctx, "5001").state == UNREGISTERING
    answer(uctx, req, 200, "OK", {"Contact": ""})
    assert uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == [] and uctx.store.keys(CONN) == []
    assert len(uctx.outbox.sent) == 2  # registered, unregistered: nothing after the 200
    clock.advance(100)
    tick(uctx)
    assert len(uctx.sip.requests) == 3


def test_upstream_unregister_challenged_again(uctx, conn):
    registered_upstream(uctx, conn)
    unregister(uctx, conn, "u1")
    answer(uctx, uctx.sip.last, 401, "Unauthorized", challenge("nonce-9", stale=True))
    req = uctx.sip.last
    h = headers_of(req)
    assert (h["CSeq"], h["Expires"], h["Contact"]) == ("4 REGISTER", "0", "<sip:5001@127.0.0.1:5060>;expires=0")
    assert_valid_auth(req, nonce="nonce-9", nc=1)
    answer(uctx, req, 200, "OK")
    assert uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == []


@pytest.mark.parametrize("status", [403, 404, 500, 503])
def test_upstream_unregister_failure_forgets_silently(uctx, conn, status):
    registered_upstream(uctx, conn)
    unregister(uctx, conn, "u1")
    n = len(uctx.outbox.sent)
    answer(uctx, uctx.sip.last, status, "X")
    assert uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == []
    assert len(uctx.outbox.sent) == n


def test_upstream_unregister_timeout_forgets(uctx, conn, clock):
    registered_upstream(uctx, conn)
    unregister(uctx, conn, "u1")
    n_sent, n_req = len(uctx.outbox.sent), len(uctx.sip.requests)
    clock.advance(8.5)
    tick(uctx)
    assert uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == []
    assert (len(uctx.outbox.sent), len(uctx.sip.requests)) == (n_sent, n_req)


def test_upstream_connection_closed_sends_expires_0(uctx, conn):
    registered_upstream(uctx, conn)
    uctx.outbox.clear()
    connection_closed(uctx, conn)
    req = uctx.sip.last
    h = headers_of(req)
    assert (h["CSeq"], h["Expires"]) == ("3 REGISTER", "0")
    assert_valid_auth(req, nc=2)
    assert uctx.store.keys(CONN) == []
    assert connection_of_dn(uctx, "5001") is None
    answer(uctx, req, 200, "OK")
    assert uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == []
    assert uctx.outbox.sent == []  # the socket is gone


def test_upstream_close_while_pending(uctx, conn):
    first = start(uctx, conn)
    connection_closed(uctx, conn)
    dereg = uctx.sip.last
    h = headers_of(dereg)
    assert (h["CSeq"], h["Expires"], h["Call-ID"]) == ("2 REGISTER", "0", headers_of(first)["Call-ID"])
    assert "Authorization" not in h  # no challenge known yet
    assert uctx.store.keys(CONN) == []
    answer(uctx, first, 401, "Unauthorized", challenge())  # late reply to CSeq 1: ignored
    assert len(uctx.sip.requests) == 2
    answer(uctx, dereg, 401, "Unauthorized", challenge())
    retry = uctx.sip.last
    assert (headers_of(retry)["CSeq"], headers_of(retry)["Expires"]) == ("3 REGISTER", "0")
    assert_valid_auth(retry, nc=1)
    answer(uctx, retry, 200, "OK")
    assert uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == [] and uctx.store.keys(CONN) == []
    # never `registered` for a client that left; at most the pending register's final error
    assert [m["type"] for m in uctx.outbox.messages()] in ([], ["error"])
    for m in uctx.outbox.messages():
        assert (m["payload"]["code"], m["id"]) == (errors.NOT_REGISTERED, "r1")


def test_upstream_unregister_while_pending_answers_both_requests_once(uctx, conn):
    first = start(uctx, conn)
    unregister(uctx, conn, "u1")
    assert uctx.outbox.sent == [
        (conn, error_msg(errors.NOT_REGISTERED, "unregistered before the registrar answered", "r1")),
        (conn, {"type": "unregistered", "payload": {"dn": "5001"}, "id": "u1"}),
    ]
    dereg = uctx.sip.last
    assert headers_of(dereg)["Expires"] == "0"
    answer(uctx, first, 200, "OK", ok())  # late 200 to the original REGISTER
    answer(uctx, dereg, 200, "OK")
    assert len(uctx.outbox.sent) == 2  # no `registered` after all
    assert uctx.store.keys(REG) == [] and uctx.store.keys(REG_BY_CALL_ID) == []


def test_upstream_unregister_while_pending_without_request_id(uctx, conn):
    register(uctx, conn, None, RegisterPayload("5001", PASSWORD))
    unregister(uctx, conn, "u1")
    assert uctx.outbox.sent == [
        (conn, {"type": "error", "payload": {"code": errors.NOT_REGISTERED,
                                              "reason": "unregistered before the registrar answered",
                                              "requestType": "register"}}),
        (conn, {"type": "unregistered", "payload": {"dn": "5001"}, "id": "u1"}),
    ]


def test_upstream_close_after_unregister_sends_nothing_more(uctx, conn):
    registered_upstream(uctx, conn)
    unregister(uctx, conn, "u1")
    n = len(uctx.sip.requests)
    connection_closed(uctx, conn)
    assert len(uctx.sip.requests) == n


def test_upstream_dn_held_by_another_live_connection(uctx, conn, conn2):
    start(uctx, conn)
    with pytest.raises(GatewayError) as info:
        register(uctx, conn2, "r2", RegisterPayload("5001", PASSWORD))
    assert info.value.code == errors.ALREADY_REGISTERED
    assert len(uctx.sip.requests) == 1


def test_upstream_already_registered_on_same_connection_even_while_pending(uctx, conn):
    start(uctx, conn)
    with pytest.raises(GatewayError) as info:
        register(uctx, conn, "r2", RegisterPayload("5002", PASSWORD))
    assert info.value.code == errors.ALREADY_REGISTERED
    assert len(uctx.sip.requests) == 1


def test_tick_handles_several_registrations_independently(uctx, conn, conn2, clock):
    registered_upstream(uctx, conn, "5001", expires=30)  # refresh at +15
    clock.advance(10)
    start(uctx, conn2, "5002", "b")  # pending, times out at +18
    clock.advance(5)
    tick(uctx)
    assert headers_of(uctx.sip.last)["To"] == "<sip:5001@127.0.0.1>"
    clock.advance(3.5)
    tick(uctx)
    assert uctx.outbox.sent[-1] == (conn2, error_msg(errors.UPSTREAM_UNREACHABLE, "registrar answered 408 Request Timeout", "b"))
    assert Registration.load(uctx, "5001") is not None


# ---- known bugs ----


def test_dn_being_released_by_a_connection_now_bound_to_another_dn_is_free(uctx, conn, conn2):
    registered_upstream(uctx, conn, "5001")
    unregister(uctx, conn, "u1")  # Expires: 0 in flight
    start(uctx, conn, "5002", "r2")  # same socket, other DN
    n = len(uctx.sip.requests)
    try:
        register(uctx, conn2, "r3", RegisterPayload("5001", PASSWORD))
    except GatewayError as exc:
        pytest.fail(f"5001 is bound to no connection, yet register was refused: {exc}")
    assert len(uctx.sip.requests) == n + 1


def test_reregister_while_unregistering_leaks_no_call_id(uctx, conn, clock):
    _, second = registered_upstream(uctx, conn, "5001")
    old_call_id = headers_of(second)["Call-ID"]
    unregister(uctx, conn, "u1")
    dereg = uctx.sip.last
    first, _ = registered_upstream(uctx, conn, "5001", rid="r2")
    new_call_id = headers_of(first)["Call-ID"]
    assert new_call_id != old_call_id
    answer(uctx, dereg, 200, "OK")  # the old de-registration completes: ignored
    assert Registration.load(uctx, "5001").state == REGISTERED
    clock.advance(10)
    tick(uctx)
    assert uctx.store.keys(REG_BY_CALL_ID) == [new_call_id]


# ======================================================================
# helpers
# ======================================================================


def _reply(headers: dict[str, str]) -> SipReply:
    return SipReply(status=200, reason="OK", call_id="cid", cseq=1, method="REGISTER",
                    headers={k.lower(): v for k, v in headers.items()})


OURS = "sip:5001@127.0.0.1:5060"


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Contact": f"<{OURS}>;expires=30", "Expires": "3600"}, 30),
        ({"Contact": f"<{OURS}>", "Expires": "3600"}, 3600),
        ({"Expires": " 90 "}, 90),
        ({}, 600),
        ({"Expires": "abc"}, 600),
        ({"Expires": "-5"}, 600),
        ({"Contact": f"<{OURS}>;expires=0"}, 0),
        ({"Contact": f"<{OURS}>;Expires = 45;q=0.5"}, 45),
        ({"Contact": f"<{OURS}>;q=0.5;EXPIRES=46"}, 46),
        ({"Contact": f"<{OURS};transport=udp>;expires=50"}, 50),
        ({"Contact": f'"Doe, Jane" <{OURS}>;expires=70'}, 70),
        ({"Contact": "<sip:5001@10.9.9.9:5060>;expires=99", "Expires": "120"}, 120),
        ({"Contact": f"<sip:5001@10.9.9.9:5060>;expires=99, <{OURS}>;expires=33"}, 33),
        ({"Contact": f"<{OURS}>;expires=33, <sip:5001@10.9.9.9:5060>;expires=99"}, 33),
        ({"Contact": "<sip:5001@10.9.9.9:5060>;expires=99"}, 600),
    ],
)
def test_granted_expires_precedence(headers, expected):
    assert granted_expires(_reply(headers), OURS, 600) == expected


def test_granted_expires_does_not_match_a_longer_port():
    reply = _reply({"Contact": f"<sip:5001@127.0.0.1:50601>;expires=10, <{OURS}>;expires=30"})
    assert granted_expires(reply, OURS, 600) == 30


@pytest.mark.parametrize("expires, delay", [(2, 1), (30, 15), (119, 59.5), (120, 60), (600, 540), (3600, 3540)])
def test_refresh_delay(expires, delay):
    assert refresh_delay(expires) == delay


def test_refresh_delay_is_always_before_expiry():
    for expires in range(1, 5000):
        assert 0 < refresh_delay(expires) < expires


@pytest.mark.parametrize(
    "status, code",
    [(401, errors.AUTH_FAILED), (403, errors.AUTH_FAILED), (407, errors.AUTH_FAILED), (404, errors.AUTH_FAILED),
     (408, errors.UPSTREAM_UNREACHABLE), (480, errors.AUTH_FAILED), (500, errors.UPSTREAM_UNREACHABLE),
     (503, errors.UPSTREAM_UNREACHABLE), (604, errors.UPSTREAM_UNREACHABLE)],
)
def test_failure_code(status, code):
    assert failure_code(status) == code


def test_contact_uri(make_ctx):
    ctx = make_ctx(embedded=False, listen_ip="10.1.1.1", sip_port=5099)
    assert registrations.contact_uri(ctx, "+4915112345678") == "sip:+4915112345678@10.1.1.1:5099"


def test_registered_message_shape():
    reg = Registration(dn="5001", conn="ws|h|1", expires=77)
    token = "A" * 32
    assert registrations.registered_message(reg, "x", token) == registered_msg("5001", 77, "x")
    assert registrations.registered_message(reg, "x", token)["payload"]["resumeToken"] == token
    assert "id" not in registrations.registered_message(reg, None, token)


def test_registration_save_load_roundtrip(make_ctx):
    ctx = make_ctx()
    reg = Registration(dn="5001", conn="ws|h|1", state=REGISTERED, mode="upstream", display_name="Jü",
                       expires=30, call_id="c@h", cseq=4, nonce="n", realm="r", opaque=None, qop="auth", nc=2)
    reg.save(ctx)
    assert Registration.load(ctx, "5001") == reg
    assert Registration.load(ctx, "5002") is None


def test_registration_challenge():
    assert Registration(dn="5001", conn="k").challenge() is None
    reg = Registration(dn="5001", conn="k", realm="r", nonce="n", opaque="o", qop="auth")
    assert reg.challenge() == Challenge(realm="r", nonce="n", opaque="o", qop="auth")


def test_connection_of_dn_from_stored_key(make_ctx):
    ctx = make_ctx()
    Registration(dn="5001", conn="wss|2001:db8::1|443", state=REGISTERED).save(ctx)
    assert connection_of_dn(ctx, "5001") == ConnRef(6, "2001:db8::1", 443)
    Registration(dn="5002", conn="ws|h|1", state=PENDING).save(ctx)
    assert connection_of_dn(ctx, "5002") is None
