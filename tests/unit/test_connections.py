"""wsgw.connections: ConnRef identity and its string key."""

from __future__ import annotations

import dataclasses

import pytest

from wsgw.connections import ConnRef


@pytest.mark.parametrize(
    "conn, key",
    [
        (ConnRef(5, "192.0.2.1", 40000), "ws|192.0.2.1|40000"),
        (ConnRef(6, "192.0.2.1", 443), "wss|192.0.2.1|443"),
        (ConnRef(5, "2001:db8::1", 5), "ws|2001:db8::1|5"),
        (ConnRef(1, "10.0.0.1", 5060), "1|10.0.0.1|5060"),
    ],
)
def test_key_and_roundtrip(conn, key):
    assert conn.key == key
    assert str(conn) == key
    assert ConnRef.from_key(key) == conn


def test_from_key_of_numeric_proto():
    assert ConnRef.from_key("6|::1|8443") == ConnRef(6, "::1", 8443)


@pytest.mark.parametrize("key", ["ws|1.2.3.4", "ws|1.2.3.4|x", "ws|a|b|1", "bogus|1.2.3.4|1", ""])
def test_from_key_refuses_malformed(key):
    with pytest.raises(ValueError):
        ConnRef.from_key(key)


def test_distinct_connections_have_distinct_keys():
    keys = {ConnRef(5, "192.0.2.1", 1).key, ConnRef(6, "192.0.2.1", 1).key, ConnRef(5, "192.0.2.1", 2).key,
            ConnRef(5, "192.0.2.2", 1).key}
    assert len(keys) == 4


def test_connref_is_hashable_and_frozen():
    a, b = ConnRef(5, "h", 1), ConnRef(5, "h", 1)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 2  # type: ignore[misc]
