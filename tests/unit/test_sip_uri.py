"""wsgw.sip_uri: parsing of upstream / target SIP URIs."""

from __future__ import annotations

import pytest

from wsgw import errors
from wsgw.errors import GatewayError
from wsgw.sip_uri import SipUri, parse_sip_uri


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sip:127.0.0.1:5070", SipUri(host="127.0.0.1", port=5070)),
        ("sip:registrar.example.com", SipUri(host="registrar.example.com")),
        ("sip:5001@pbx.example.com:5060", SipUri(host="pbx.example.com", port=5060, user="5001")),
        ("sip:+4915112345678@10.0.0.1", SipUri(host="10.0.0.1", user="+4915112345678")),
        ("sip:pbx.example.com;transport=TCP", SipUri(host="pbx.example.com", transport="tcp")),
        ("sip:pbx.example.com:5080;lr;transport=udp", SipUri(host="pbx.example.com", port=5080, transport="udp")),
        ("sip:[2001:db8::1]:5060", SipUri(host="[2001:db8::1]", port=5060)),
        ("sip:[::1]", SipUri(host="[::1]")),
        ("  sip:127.0.0.1:5070\n", SipUri(host="127.0.0.1", port=5070)),
        ("sip:h:1", SipUri(host="h", port=1)),
        ("sip:h:65535", SipUri(host="h", port=65535)),
    ],
)
def test_parse(text, expected):
    assert parse_sip_uri(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1:5070",
        "http://example.com",
        "tel:+4915112345678",
        "sip:",
        "sip:host:0",
        "sip:host:65536",
        "sip:host:99999",
        "sip:host:123456",
        "sip:host:port",
        "sip:user@",
        "sip:us er@host",
        "sip:host?subject=x",
        "sip:host;transport=udp\r\nVia: x",
        "sip:host>",
        "sip:<host>",
        "sip:a@b@c",
    ],
)
def test_parse_refuses(text):
    with pytest.raises(GatewayError) as info:
        parse_sip_uri(text)
    assert info.value.code == errors.INVALID_PAYLOAD


def test_refusal_reason_truncates_input():
    with pytest.raises(GatewayError) as info:
        parse_sip_uri("x" * 500)
    assert len(info.value.reason) < 120


@pytest.mark.parametrize(
    "uri, text",
    [
        (SipUri("127.0.0.1", 5070), "sip:127.0.0.1:5070"),
        (SipUri("example.com"), "sip:example.com"),
        (SipUri("example.com", 5060, "5001"), "sip:5001@example.com:5060"),
        (SipUri("example.com", None, None, "tcp"), "sip:example.com;transport=tcp"),
        (SipUri("[::1]", 5060, "a", "tls"), "sip:a@[::1]:5060;transport=tls"),
    ],
)
def test_str(uri, text):
    assert str(uri) == text


@pytest.mark.parametrize("text", ["sip:127.0.0.1:5070", "sip:5001@example.com", "sip:x@[2001:db8::1]:5062;transport=tcp"])
def test_roundtrip(text):
    assert str(parse_sip_uri(text)) == text


def test_hostport():
    assert SipUri("h", 5070).hostport == "h:5070"
    assert SipUri("h").hostport == "h"
    assert SipUri("[::1]", 5060).hostport == "[::1]:5060"


def test_with_user_keeps_everything_else():
    base = SipUri("pbx.example.com", 5080, None, "tcp")
    assert base.with_user("5001") == SipUri("pbx.example.com", 5080, "5001", "tcp")
    assert base.user is None  # frozen original unchanged
    assert str(base.with_user("5001")) == "sip:5001@pbx.example.com:5080;transport=tcp"


def test_sips_is_refused_or_kept():
    try:
        uri = parse_sip_uri("sips:registrar.example.com:5061")
    except GatewayError:
        return  # refusing sips: is an acceptable fix
    assert str(uri) == "sips:registrar.example.com:5061"
