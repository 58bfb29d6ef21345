"""wsgw.subscribers: the embedded registrar's dn:password file."""

from __future__ import annotations

import os

import pytest

from wsgw.subscribers import Subscribers, load_subscribers, parse_subscribers

REPO_SUBSCRIBERS = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "subscribers.txt")


def test_parse_skips_comments_and_blank_lines():
    text = "# header\n\n5001:a\n   \n  # indented comment\n\t\n5002:b\n"
    assert parse_subscribers(text).passwords == {"5001": "a", "5002": "b"}


def test_parse_empty_text():
    assert parse_subscribers("").passwords == {}
    assert parse_subscribers("# only a comment\n\n").passwords == {}


def test_password_keeps_everything_after_first_colon():
    subs = parse_subscribers("5001:a:b:c\n+4915112345678:p#w\n")
    assert subs.passwords == {"5001": "a:b:c", "+4915112345678": "p#w"}


def test_surrounding_whitespace_of_the_line_and_dn_is_stripped():
    assert parse_subscribers("  5001 :pw  \r\n").passwords == {"5001": "pw"}


def test_crlf_line_endings():
    assert parse_subscribers("5001:a\r\n5002:b\r\n").passwords == {"5001": "a", "5002": "b"}


def test_later_duplicate_wins():
    assert parse_subscribers("5001:old\n5001:new\n").passwords == {"5001": "new"}


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("5001", "expected dn:password"),
        ("5001:", "expected dn:password"),
        ("5001   :   ", "expected dn:password"),
        (":pw", "invalid DN ''"),
        ("50 01:pw", "invalid DN '50 01'"),
        ("5001@host:pw", "invalid DN"),
        ('"5001":pw', "invalid DN"),
        ("x" * 33 + ":pw", "invalid DN"),
    ],
)
def test_bad_lines_raise_with_line_number(line, fragment):
    text = "# comment\n\n5001:ok\n" + line + "\n"
    with pytest.raises(ValueError) as info:
        parse_subscribers(text)
    assert str(info.value).startswith("subscribers line 4:")
    assert fragment in str(info.value)


@pytest.fixture
def subs() -> Subscribers:
    return parse_subscribers("5001:secret\n5002:pä:ss\n")


def test_check_right_password(subs):
    assert subs.check("5001", "secret") is True
    assert subs.check("5002", "pä:ss") is True


@pytest.mark.parametrize("pw", ["", "Secret", "secret ", " secret", "secre", "secrett", "pä:ss"])
def test_check_wrong_password(subs, pw):
    assert subs.check("5001", pw) is False


@pytest.mark.parametrize("dn", ["5003", "", "5001 ", "secret"])
def test_check_unknown_dn(subs, dn):
    assert subs.check(dn, "secret") is False


def test_exists(subs):
    assert subs.exists("5001") and subs.exists("5002")
    assert not subs.exists("5003")


def test_load_subscribers_from_file(tmp_path):
    path = tmp_path / "subs.txt"
    path.write_text("# c\n5001:Jürgen\n", encoding="utf-8")
    subs = load_subscribers(str(path))
    assert subs.passwords == {"5001": "Jürgen"}
    assert subs.check("5001", "Jürgen")


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_subscribers(str(tmp_path / "nope.txt"))


def test_repo_demo_subscribers_file_parses():
    subs = load_subscribers(REPO_SUBSCRIBERS)
    assert subs.passwords == {str(dn): f"agent{dn}" for dn in range(5001, 5011)}
