"""wsgw.sip_headers: validation of client strings and SIP header building."""

from __future__ import annotations

import re

import pytest

from wsgw import errors
from wsgw.errors import GatewayError
from wsgw.sip_headers import (
    MAX_DISPLAY_NAME_LEN,
    MAX_DN_LEN,
    MAX_PASSWORD_LEN,
    header_block,
    name_addr,
    new_call_id,
    new_tag,
    quote_display_name,
    validate_display_name,
    validate_dn,
    validate_password,
    validate_token,
)


def invalid(fn, value, *args) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        fn(value, *args)
    assert info.value.code == errors.INVALID_PAYLOAD
    return info.value


# ---- validate_dn ----


@pytest.mark.parametrize("dn", ["5001", "+4915112345678", "alice", "a.b_c-d", "0", "9" * MAX_DN_LEN, "+" + "1" * MAX_DN_LEN])
def test_validate_dn_accepts(dn):
    assert validate_dn(dn) == dn


@pytest.mark.parametrize(
    "dn",
    [
        "5001\r",
        "50\n01",
        "\n5001",
        "5001\r\n",
        '"5001"',
        "50'01",
        "<5001>",
        "50>01",
        "50 01",
        " 5001",
        "5001@example.com",
        "5001;tag=x",
        "5001:pw",
        "sip:5001",
        "50%01",
        "50\\01",
        "50\x0001",
        "1" * (MAX_DN_LEN + 1),
        "",
        "+",
        "++5001",
        "50+01",
        "5001\u00e9",
    ],
)
def test_validate_dn_refuses(dn):
    err = invalid(validate_dn, dn)
    assert err.reason.startswith("dn must be 1-32 characters")


@pytest.mark.parametrize("value", [None, 5001, 5001.0, b"5001", ["5001"], {"dn": "5001"}])
def test_validate_dn_refuses_non_strings(value):
    invalid(validate_dn, value)


def test_validate_dn_uses_field_name_in_reason():
    assert invalid(validate_dn, "", "target").reason.startswith("target must be")


@pytest.mark.parametrize("dn", ["5001\n", "+4915112345678\n", "1" * MAX_DN_LEN + "\n"])
def test_validate_dn_refuses_trailing_newline(dn):
    # A `$`-anchored pattern would accept these; the whole value must match.
    invalid(validate_dn, dn)


# ---- validate_display_name ----


@pytest.mark.parametrize(
    "name",
    ["", "Alice", "Alice Smith", "O'Brien", "Jürgen Müller", "山田太郎", "Zoë (sales) #2", "\U0001F600 smile", "x" * MAX_DISPLAY_NAME_LEN],
)
def test_validate_display_name_accepts(name):
    assert validate_display_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "A\rB",
        "A\nB",
        "Alice\r\nVia: evil",
        'Al"ice',
        '"',
        "A<B",
        "A>B",
        "<sip:x@y>",
        "A\\B",
        "\\",
        "A\x00B",
        "A\tB",
        "\x1f",
        "\x7f",
        "x" * (MAX_DISPLAY_NAME_LEN + 1),
        "é" * (MAX_DISPLAY_NAME_LEN + 1),
    ],
)
def test_validate_display_name_refuses(name):
    err = invalid(validate_display_name, name)
    assert err.reason.startswith("displayName must be at most 64 characters")


@pytest.mark.parametrize("value", [None, 1, b"Alice", ["Alice"]])
def test_validate_display_name_refuses_non_strings(value):
    invalid(validate_display_name, value)


# ---- validate_password ----


@pytest.mark.parametrize("pw", ["x", 'pa"ss<w>ord\\', "p:w;d@x", "Pässwörd 山", " leading space", "x" * MAX_PASSWORD_LEN])
def test_validate_password_accepts(pw):
    assert validate_password(pw) == pw


@pytest.mark.parametrize("pw", ["", "x" * (MAX_PASSWORD_LEN + 1), "pw\n", "p\rw", "p\x00w", "p\tw", "pw\x7f", None, 1234, b"pw"])
def test_validate_password_refuses(pw):
    err = invalid(validate_password, pw)
    assert err.reason.startswith("password must be 1-128 characters")


# ---- validate_token ----


@pytest.mark.parametrize("tok", ["abc", "A-Z_a.z~09", "x" * 64, "1"])
def test_validate_token_accepts(tok):
    assert validate_token(tok, "callId") == tok


@pytest.mark.parametrize("tok", ["", "x" * 65, "a b", "a/b", "a@b", "a;b", 'a"b', "a\rb", "é", None, 3, ["a"]])
def test_validate_token_refuses(tok):
    err = invalid(validate_token, tok, "callId")
    assert err.reason.startswith("callId must be 1-64 characters")


@pytest.mark.parametrize("tok", ["abc\n", "x" * 64 + "\n"])
def test_validate_token_refuses_trailing_newline(tok):
    invalid(validate_token, tok, "callId")


# ---- header building ----


def test_quote_display_name():
    assert quote_display_name("Alice Smith") == '"Alice Smith"'


def test_quote_display_name_refuses_unsafe():
    invalid(quote_display_name, 'A"B')


@pytest.mark.parametrize(
    "args, expected",
    [
        (("sip:5001@example.com",), "<sip:5001@example.com>"),
        (("sip:5001@example.com", "Alice"), '"Alice" <sip:5001@example.com>'),
        (("sip:5001@example.com", "", "abc123"), "<sip:5001@example.com>;tag=abc123"),
        (("sip:5001@example.com", "Jürgen", "t1"), '"Jürgen" <sip:5001@example.com>;tag=t1'),
    ],
)
def test_name_addr(args, expected):
    assert name_addr(*args) == expected


def test_name_addr_refuses_injection_in_display_name():
    invalid(name_addr, "sip:a@b", 'x" <sip:evil@b>')


def test_header_block_joins_lines_with_crlf():
    assert header_block([("From", "<sip:a@b>;tag=1"), ("CSeq", "1 REGISTER")]) == "From: <sip:a@b>;tag=1\r\nCSeq: 1 REGISTER\r\n"


def test_header_block_empty():
    assert header_block([]) == ""


@pytest.mark.parametrize(
    "headers",
    [
        [("Subject", "a\r\nVia: x")],
        [("Subject", "a\nb")],
        [("Subject", "a\rb")],
        [("Sub\nject", "x")],
        [("Sub\rject", "x")],
        [("To", "ok"), ("From", "bad\n")],
    ],
)
def test_header_block_refuses_line_breaks(headers):
    with pytest.raises(ValueError, match="line break"):
        header_block(headers)


# ---- identifiers ----


def test_new_tag_is_unpredictable_hex():
    tags = [new_tag() for _ in range(2000)]
    assert len(set(tags)) == len(tags)
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tags)


def test_new_call_id_is_unpredictable_and_owned_by_host():
    ids = [new_call_id("192.0.2.1") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for cid in ids:
        local, _, host = cid.partition("@")
        assert host == "192.0.2.1"
        assert re.fullmatch(r"[0-9a-f]{32}", local)  # 128 bits of randomness
