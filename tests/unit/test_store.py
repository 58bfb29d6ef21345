"""wsgw.store: MemoryStore (the unit-test Store) and the JSON helpers."""

from __future__ import annotations

import threading

import pytest

from wsgw import store as store_mod
from wsgw.store import MemoryStore, get_json, put_json


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def test_get_missing_table_and_key(store):
    assert store.get("reg", "5001") is None
    store.put("reg", "5002", "x")
    assert store.get("reg", "5001") is None


def test_put_get_overwrite(store):
    store.put("reg", "5001", "a")
    assert store.get("reg", "5001") == "a"
    store.put("reg", "5001", "b")
    assert store.get("reg", "5001") == "b"


def test_tables_are_independent(store):
    store.put("conn", "k", "1")
    store.put("reg", "k", "2")
    assert (store.get("conn", "k"), store.get("reg", "k")) == ("1", "2")
    store.delete("conn", "k")
    assert store.get("conn", "k") is None
    assert store.get("reg", "k") == "2"


def test_delete_missing_is_a_no_op(store):
    store.delete("nope", "k")
    store.put("t", "a", "1")
    store.delete("t", "b")
    assert store.keys("t") == ["a"]


def test_keys(store):
    assert store.keys("t") == []
    for k in ("a", "b", "c"):
        store.put("t", k, k)
    store.delete("t", "b")
    assert sorted(store.keys("t")) == ["a", "c"]


def test_keys_returns_a_snapshot_safe_to_mutate_during_iteration(store):
    for k in ("a", "b", "c"):
        store.put("t", k, k)
    for k in store.keys("t"):
        store.delete("t", k)
    assert store.keys("t") == []


def test_incr_starts_at_zero_and_counts(store):
    assert store.incr("gw", "calls") == 1
    assert store.incr("gw", "calls") == 2
    assert store.incr("gw", "other") == 1
    assert store.get("gw", "calls") == "2"


def test_incr_continues_from_stored_value(store):
    store.put("gw", "n", "41")
    assert store.incr("gw", "n") == 42


def test_lock_is_reentrant(store):
    with store.lock("reg", "5001"):
        with store.lock("reg", "5001"):
            store.put("reg", "5001", "x")
    assert store.get("reg", "5001") == "x"


def test_lock_serialises_threads(store):
    store.put("gw", "n", "0")
    inside = []

    def worker():
        for _ in range(200):
            with store.lock("gw", "n"):
                inside.append(1)
                assert len(inside) == 1
                value = int(store.get("gw", "n"))
                store.put("gw", "n", str(value + 1))
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("gw", "n") == "800"


def test_lock_releases_on_exception(store):
    with pytest.raises(RuntimeError):
        with store.lock("reg", "k"):
            raise RuntimeError("boom")
    done = []

    def other_thread():
        with store.lock("reg", "k"):
            done.append(True)

    t = threading.Thread(target=other_thread, daemon=True)
    t.start()
    t.join(timeout=2)
    assert done == [True]


def test_json_helpers_roundtrip(store):
    value = {"dn": "5001", "since": 1.5, "name": "Jürgen", "uri": "sip:a/b", "n": None, "l": [1, 2]}
    put_json(store, "conn", "k", value)
    assert get_json(store, "conn", "k") == value
    raw = store.get("conn", "k")
    assert isinstance(raw, str)
    assert "Jürgen" in raw and "sip:a/b" in raw


def test_get_json_missing_or_empty_is_none(store):
    assert get_json(store, "conn", "missing") is None
    store.put("conn", "empty", "")
    assert get_json(store, "conn", "empty") is None


def test_memory_store_satisfies_store_protocol():
    for name in ("get", "put", "delete", "incr", "lock", "keys"):
        assert callable(getattr(MemoryStore(), name))
    assert {store_mod.CONN, store_mod.REG, store_mod.REG_BY_CALL_ID} == {"conn", "reg", "regcid"}
