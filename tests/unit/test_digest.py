"""wsgw.digest: Digest challenge parsing and Authorization computation."""

from __future__ import annotations

import hashlib

import pytest

from fakes import auth_params
from wsgw.digest import Challenge, authorization, parse_challenge

# RFC 2617 section 3.5.
RFC_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC_RESPONSE = "6629fae49393a05397450978507c4ef1"
RFC_HA1 = "939e7578ed9e3c518a452acee763bce9"  # MD5("Mufasa:testrealm@host.com:Circle Of Life")
RFC_HA2 = "39aff3a2bab6126f332b942af96d3366"  # MD5("GET:/dir/index.html")


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def rfc_authorization(challenge: Challenge, **kw) -> str:
    args = dict(method="GET", uri="/dir/index.html", username="Mufasa", password="Circle Of Life", nc=1, cnonce="0a4f113b")
    args.update(kw)
    return authorization(challenge, **args)


# ---- parse_challenge ----


def test_parse_rfc2617_challenge():
    assert parse_challenge(RFC_CHALLENGE) == Challenge(
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
        algorithm="MD5",
        qop="auth",
        stale=False,
    )


def test_parse_minimal_challenge_without_qop_or_opaque():
    c = parse_challenge('Digest realm="r", nonce="n"')
    assert (c.realm, c.nonce, c.opaque, c.qop, c.stale, c.algorithm) == ("r", "n", None, None, False, "MD5")


def test_parse_unquoted_values_and_odd_spacing():
    c = parse_challenge("  digest realm = r1 ,nonce=abc123,algorithm=md5,qop=auth,stale=TRUE ")
    assert (c.realm, c.nonce, c.qop, c.stale, c.algorithm) == ("r1", "abc123", "auth", True, "MD5")


def test_parse_quoted_values_with_commas_and_equals():
    c = parse_challenge('Digest realm="a, b=c", nonce="n=1,2", opaque=""')
    assert (c.realm, c.nonce, c.opaque) == ("a, b=c", "n=1,2", "")


def test_parse_escaped_quotes_and_backslashes():
    c = parse_challenge(r'Digest realm="say \"hi\" \\ bye", nonce="x\"y"')
    assert c.realm == 'say "hi" \\ bye'
    assert c.nonce == 'x"y'


def test_parse_param_names_are_case_insensitive():
    c = parse_challenge('Digest REALM="r", Nonce="n", QOP="auth"')
    assert (c.realm, c.nonce, c.qop) == ("r", "n", "auth")


@pytest.mark.parametrize("qop", ['"auth,auth-int"', '"auth-int, auth"', '"auth"', "auth"])
def test_parse_qop_lists_containing_auth(qop):
    assert parse_challenge(f'Digest realm="r", nonce="n", qop={qop}').qop == "auth"


@pytest.mark.parametrize("stale, expected", [("true", True), ('"true"', True), ("TRUE", True), ("false", False), ('"FALSE"', False)])
def test_parse_stale(stale, expected):
    assert parse_challenge(f'Digest realm="r", nonce="n", stale={stale}').stale is expected


@pytest.mark.parametrize(
    "value, fragment",
    [
        ('Basic realm="r"', "not a Digest"),
        ("", "not a Digest"),
        ('Digest realm="r"', "without realm or nonce"),
        ('Digest nonce="n"', "without realm or nonce"),
        ('Digest realm="r", nonce="n", algorithm=SHA-256', "unsupported digest algorithm"),
        ('Digest realm="r", nonce="n", algorithm=MD5-sess', "unsupported digest algorithm"),
        ('Digest realm="r", nonce="n", qop="auth-int"', "unsupported qop"),
    ],
)
def test_parse_refuses(value, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_challenge(value)


# ---- authorization ----


def test_rfc2617_example_response():
    params = auth_params(rfc_authorization(parse_challenge(RFC_CHALLENGE)))
    assert params == {
        "username": "Mufasa",
        "realm": "testrealm@host.com",
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "uri": "/dir/index.html",
        "response": RFC_RESPONSE,
        "algorithm": "MD5",
        "cnonce": "0a4f113b",
        "qop": "auth",
        "nc": "00000001",
        "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
    }


def test_rfc2617_example_exact_header_text():
    assert rfc_authorization(parse_challenge(RFC_CHALLENGE)) == (
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, '
        'cnonce="0a4f113b", qop=auth, nc=00000001, opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )


def test_rfc_constants_are_what_we_think():
    assert md5("Mufasa:testrealm@host.com:Circle Of Life") == RFC_HA1
    assert md5("GET:/dir/index.html") == RFC_HA2


def test_no_qop_form_rfc2069():
    challenge = Challenge(realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093")
    params = auth_params(rfc_authorization(challenge))
    assert params["response"] == md5(f"{RFC_HA1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{RFC_HA2}")
    assert params["response"] == "670fd8c2df070c60b045671b8b24ff02"
    assert "qop" not in params and "nc" not in params and "cnonce" not in params and "opaque" not in params


def test_nc_is_eight_hex_digits_and_changes_response():
    c = parse_challenge(RFC_CHALLENGE)
    p1 = auth_params(rfc_authorization(c, nc=1))
    p255 = auth_params(rfc_authorization(c, nc=255))
    assert p255["nc"] == "000000ff"
    assert p255["response"] == md5(f"{RFC_HA1}:{c.nonce}:000000ff:0a4f113b:auth:{RFC_HA2}")
    assert p255["response"] != p1["response"]


def test_cnonce_is_generated_fresh_when_not_given():
    c = parse_challenge(RFC_CHALLENGE)
    cnonces = {auth_params(rfc_authorization(c, cnonce=None))["cnonce"] for _ in range(50)}
    assert len(cnonces) == 50
    assert all(len(x) >= 16 for x in cnonces)
    p = auth_params(rfc_authorization(c, cnonce=None))
    assert p["response"] == md5(f"{RFC_HA1}:{c.nonce}:00000001:{p['cnonce']}:auth:{RFC_HA2}")


def test_opaque_is_echoed_even_when_empty():
    c = Challenge(realm="r", nonce="n", opaque="")
    assert auth_params(authorization(c, method="REGISTER", uri="sip:h", username="u", password="p"))["opaque"] == ""


def test_values_with_quotes_are_escaped_in_header():
    c = Challenge(realm='re"al\\m', nonce="n")
    value = authorization(c, method="REGISTER", uri="sip:h", username="u", password="p")
    assert 'realm="re\\"al\\\\m"' in value
    params = auth_params(value)
    assert params["realm"] == 're"al\\m'
    # the hash uses the raw (unescaped) realm
    assert params["response"] == md5(f"{md5('u:' + c.realm + ':p')}:n:{md5('REGISTER:sip:h')}")


def test_sip_register_authorization():
    c = Challenge(realm="asterisk", nonce="abc", qop="auth")
    p = auth_params(authorization(c, method="REGISTER", uri="sip:127.0.0.1:5070", username="5001", password="pw", nc=3, cnonce="cn"))
    ha1, ha2 = md5("5001:asterisk:pw"), md5("REGISTER:sip:127.0.0.1:5070")
    assert p["response"] == md5(f"{ha1}:abc:00000003:cn:auth:{ha2}")
    assert p["uri"] == "sip:127.0.0.1:5070"


def test_unicode_password_is_hashed_as_utf8():
    c = Challenge(realm="r", nonce="n")
    p = auth_params(authorization(c, method="REGISTER", uri="sip:h", username="u", password="pässwort"))
    assert p["response"] == md5(f"{md5('u:r:pässwort')}:n:{md5('REGISTER:sip:h')}")
