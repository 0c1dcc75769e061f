"""The KV table of the state store: Consul's semantics one rule at a time, transactions,
snapshots, and a model-based test against a plain dict."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from server.state import (
    MAX_LOCK_DELAY_NS,
    TABLE_KVS,
    TABLE_TOMBSTONES,
    DirEntry,
    Session,
    SortedKeys,
    StateError,
    StateStore,
)


def _store() -> StateStore:
    """A store whose catalog hooks accept any node and check (sessions on nodes that
    these tests never register)."""
    return StateStore(node_exists=lambda node: True, check_status=lambda node, check: "passing")


S1 = "11111111-2222-3333-4444-555555555555"
S2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SECOND = 1_000_000_000


def put(store: StateStore, idx: int, key: str, value: bytes | None = b"v") -> DirEntry:
    return store.kvs_set(idx, DirEntry(key, value))


def with_session(store: StateStore, idx: int, sid: str = S1, **kw: object) -> Session:
    return store.session_create(idx, Session(id=sid, node="node1", **kw))  # type: ignore[arg-type]


# --- set / get ---------------------------------------------------------------------------


def test_get_on_an_empty_store_returns_index_1_never_0() -> None:
    store = _store()
    assert store.kvs_get(None, "foo") == (1, None)
    assert store.kvs_list(None, "") == (1, [])
    assert store.kvs_keys(None, "") == (1, [])


def test_set_then_get_sets_create_and_modify_index() -> None:
    store = _store()
    row = put(store, 1, "foo", b"bar")
    assert row == DirEntry("foo", b"bar", 0, "", 0, 1, 1)
    assert store.kvs_get(None, "foo") == (1, row)
    put(store, 2, "foo", b"baz")
    index, entry = store.kvs_get(None, "foo")
    assert index == 2
    assert entry is not None and (entry.create_index, entry.modify_index) == (1, 2)
    assert entry.value == b"baz"


def test_get_index_is_the_entry_modify_index_not_the_table_index() -> None:
    store = _store()
    put(store, 3, "a")
    put(store, 9, "b")
    assert store.kvs_get(None, "a")[0] == 3
    assert store.max_index(TABLE_KVS) == 9


def test_get_of_a_missing_key_returns_the_table_index_including_tombstones() -> None:
    store = _store()
    put(store, 4, "a")
    put(store, 5, "b")
    assert store.kvs_get(None, "nope") == (5, None)
    store.kvs_delete(8, "a")
    assert store.kvs_get(None, "nope") == (8, None)
    assert store.kvs_get(None, "a") == (8, None)
    store.reap_tombstones(8)
    # Reaping does not move the tombstones table index: the table index never goes back.
    assert store.kvs_get(None, "a") == (8, None)


def test_set_ignores_the_callers_session_and_keeps_the_lock_holder() -> None:
    store = _store()
    store.kvs_set(1, DirEntry("foo", b"x", session="nope"))
    assert store.kvs_get(None, "foo")[1] == DirEntry("foo", b"x", 0, "", 0, 1, 1)
    with_session(store, 2)
    assert store.kvs_lock(3, DirEntry("foo", b"locked", session=S1))
    store.kvs_set(4, DirEntry("foo", b"stoleit"))
    entry = store.kvs_get(None, "foo")[1]
    assert entry is not None
    assert (entry.value, entry.session, entry.modify_index) == (b"stoleit", S1, 4)


def test_plain_set_stores_the_callers_lock_index_as_consul_does() -> None:
    # Consul's kvsSetTxn takes LockIndex from the request entry (0 for a plain HTTP PUT).
    store = _store()
    with_session(store, 1)
    assert store.kvs_lock(2, DirEntry("k", b"a", session=S1))
    store.kvs_set(3, DirEntry("k", b"b"))
    entry = store.kvs_get(None, "k")[1]
    assert entry is not None and (entry.lock_index, entry.session) == (0, S1)


def test_a_set_that_changes_nothing_writes_nothing() -> None:
    store = _store()
    put(store, 1, "foo", b"x")
    row = store.kvs_set(5, DirEntry("foo", b"x"))
    assert row.modify_index == 1
    assert store.max_index(TABLE_KVS) == 1
    # Go's nil and empty byte slices compare equal.
    put(store, 6, "empty", None)
    assert store.kvs_set(7, DirEntry("empty", b"")).modify_index == 6
    # A flag change is a change.
    assert store.kvs_set(8, DirEntry("foo", b"x", flags=3)).modify_index == 8


def test_value_none_and_binary_values_are_kept_raw() -> None:
    store = _store()
    put(store, 1, "nil", None)
    put(store, 2, "bin", bytes(range(256)))
    assert store.kvs_get(None, "nil")[1] == DirEntry("nil", None, 0, "", 0, 1, 1)
    entry = store.kvs_get(None, "bin")[1]
    assert entry is not None and entry.value == bytes(range(256))


# --- list / keys -------------------------------------------------------------------------


def test_list_returns_entries_in_key_order_with_the_max_index_under_the_prefix() -> None:
    store = _store()
    for idx, key in enumerate(
        ["foo", "foo/bar", "foo/bar/zip", "foo/bar/zip/zorp", "foo/bar/baz"], start=1
    ):
        put(store, idx, key)
    index, entries = store.kvs_list(None, "")
    assert index == 5 and len(entries) == 5
    assert [e.key for e in entries] == sorted(e.key for e in entries)
    index, entries = store.kvs_list(None, "foo/bar/zip")
    assert index == 4
    assert [e.key for e in entries] == ["foo/bar/zip", "foo/bar/zip/zorp"]


def test_list_index_after_a_delete_does_not_go_backwards() -> None:
    store = _store()
    for idx, key in enumerate(["foo", "foo/bar", "foo/baz", "foo/moo", "foo/zoo"], start=1):
        put(store, idx, key)
    store.kvs_delete(6, "foo/baz")
    store.kvs_delete(7, "foo/moo")
    assert store.kvs_list(None, "foo/")[0] == 7
    # An unrelated write does not change the listing's index...
    put(store, 8, "other")
    assert store.kvs_list(None, "foo/")[0] == 7
    # ...and reaping a stone below the max keeps it.
    store.reap_tombstones(6)
    assert store.kvs_list(None, "foo/")[0] == 7
    # Once every stone is reaped the index slides back to the live entries (Consul's
    # TestStateStore_ReapTombstones): reaping happens only after blocking clients moved on.
    store.reap_tombstones(7)
    assert store.kvs_list(None, "foo/")[0] == 5


def test_list_of_an_empty_prefix_falls_back_to_the_table_index() -> None:
    store = _store()
    put(store, 1, "foo/bar/baz")
    store.kvs_delete(6, "foo/bar/baz")
    assert store.kvs_list(None, "foo/bar/baz")[0] == 6
    put(store, 7, "some/other/key")
    assert store.kvs_list(None, "foo/bar/baz")[0] == 6
    store.reap_tombstones(6)
    assert store.kvs_list(None, "foo/bar/baz")[0] == 7
    assert store.kvs_list(None, "")[0] == 7


def test_list_of_everything_uses_the_table_index_including_tombstones() -> None:
    store = _store()
    put(store, 1, "a")
    put(store, 2, "b")
    store.kvs_delete(3, "b")
    assert store.kvs_list(None, "") == (3, [DirEntry("a", b"v", 0, "", 0, 1, 1)])


def test_keys_with_a_separator_follow_consul() -> None:
    store = _store()
    for idx, key in enumerate(
        [
            "foo",
            "foo/bar",
            "foo/bar/baz",
            "foo/bar/zip",
            "foo/bar/zip/zam",
            "foo/bar/zip/zorp",
            "some/other/prefix",
        ],
        start=1,
    ):
        put(store, idx, key)
    index, keys = store.kvs_keys(None, "", "")
    assert (index, len(keys)) == (7, 7)
    assert store.kvs_keys(None, "foo/bar/", "/") == (
        6,
        ["foo/bar/baz", "foo/bar/zip", "foo/bar/zip/"],
    )
    assert store.kvs_keys(None, "foo", "") == (
        6,
        ["foo", "foo/bar", "foo/bar/baz", "foo/bar/zip", "foo/bar/zip/zam", "foo/bar/zip/zorp"],
    )
    assert store.kvs_keys(None, "", "/") == (7, ["foo", "foo/", "some/"])
    # A multi-character separator.
    assert store.kvs_keys(None, "foo", "/z") == (
        6,
        ["foo", "foo/bar", "foo/bar/baz", "foo/bar/z"],
    )
    store.kvs_delete(8, "foo/bar/baz")
    assert store.kvs_keys(None, "foo/bar/baz", "")[0] == 8


# --- delete, CAS, tree -------------------------------------------------------------------


def test_delete_leaves_a_tombstone_and_is_idempotent() -> None:
    store = _store()
    put(store, 1, "foo")
    put(store, 2, "foo/bar")
    assert store.kvs_delete(3, "foo")
    assert store.kvs_get(None, "foo")[1] is None
    assert store.kvs_get(None, "foo/bar")[1] is not None
    assert store.max_index(TABLE_KVS) == 3
    assert store.kvs_list(None, "foo")[0] == 3
    assert not store.kvs_delete(4, "foo")
    assert store.max_index(TABLE_KVS, TABLE_TOMBSTONES) == 3
    store.reap_tombstones(3)
    assert store.kvs_list(None, "foo")[0] == 2


def test_delete_cas() -> None:
    store = _store()
    put(store, 1, "foo")
    put(store, 2, "bar")
    put(store, 3, "baz")
    assert not store.kvs_delete_cas(4, 1, "bar")
    assert store.kvs_get(None, "bar")[1] is not None
    assert store.max_index(TABLE_KVS) == 3
    assert store.kvs_delete_cas(4, 2, "bar")
    assert store.kvs_get(None, "bar") == (4, None)
    put(store, 5, "some/other/key")
    assert store.kvs_list(None, "bar")[0] == 4
    store.reap_tombstones(4)
    assert store.kvs_list(None, "bar")[0] == 5
    # A CAS delete of a missing key succeeds and writes nothing.
    assert store.kvs_delete_cas(6, 2, "bar")
    assert store.max_index(TABLE_KVS) == 5


def test_set_cas() -> None:
    store = _store()
    # Non-zero CAS index and no entry: no-op.
    assert not store.kvs_set_cas(2, DirEntry("foo", b"foo", create_index=1, modify_index=1))
    assert store.kvs_get(None, "foo")[1] is None
    assert store.max_index(TABLE_KVS) == 0
    # CAS 0 and no entry: create.
    assert store.kvs_set_cas(2, DirEntry("foo", b"foo"))
    assert store.kvs_get(None, "foo") == (2, DirEntry("foo", b"foo", 0, "", 0, 2, 2))
    # CAS 0 with an entry: no-op.
    assert not store.kvs_set_cas(3, DirEntry("foo", b"foo"))
    # Wrong index: no-op.
    assert not store.kvs_set_cas(3, DirEntry("foo", b"bar", modify_index=3))
    assert store.kvs_get(None, "foo")[0] == 2
    # Right index: update.
    assert store.kvs_set_cas(3, DirEntry("foo", b"bar", modify_index=2))
    assert store.kvs_get(None, "foo") == (3, DirEntry("foo", b"bar", 0, "", 0, 2, 3))
    # The session is ignored...
    assert store.kvs_set_cas(4, DirEntry("foo", b"zoo", session="nope", modify_index=3))
    assert store.kvs_get(None, "foo")[1] == DirEntry("foo", b"zoo", 0, "", 0, 2, 4)
    # ...and a lock holder is kept.
    with_session(store, 5)
    assert store.kvs_lock(6, DirEntry("foo", b"locked", session=S1))
    assert store.kvs_set_cas(7, DirEntry("foo", b"locked", modify_index=6))
    entry = store.kvs_get(None, "foo")[1]
    assert entry is not None and (entry.modify_index, entry.session) == (7, S1)


def test_delete_tree() -> None:
    store = _store()
    put(store, 1, "foo/bar")
    put(store, 2, "foo/bar/baz")
    put(store, 3, "foo/bar/zip")
    put(store, 4, "foo/zorp")
    assert store.kvs_delete_tree(9, "bar") == 0
    assert store.max_index(TABLE_KVS, TABLE_TOMBSTONES) == 4
    assert store.kvs_delete_tree(5, "foo/bar") == 3
    assert [e.key for e in store.kvs_list(None, "")[1]] == ["foo/zorp"]
    assert store.max_index(TABLE_KVS) == 5
    assert store.kvs_list(None, "foo")[0] == 5
    store.reap_tombstones(5)
    assert store.kvs_list(None, "foo")[0] == 4


def test_delete_tree_tombstone_rules_follow_consul() -> None:
    store = _store()
    for idx, key in enumerate(
        ["foo", "foo/bar", "foo/bar/zip", "foo/bar/zip/zorp", "foo/bar/zip/zap", "foo/nope"],
        start=1,
    ):
        put(store, idx, key)
    assert store.kvs_list(None, "foo/bar")[0] == 5
    store.kvs_delete_tree(7, "foo/bar/zip")
    assert store.kvs_list(None, "foo/bar")[0] == 7
    store.reap_tombstones(7)
    assert store.kvs_list(None, "foo/bar")[0] == 2
    put(store, 8, "some/other/key")
    # The stone is for the deleted prefix, not for keys inside it.
    assert store.kvs_list(None, "foo/bar/baz")[0] == 8
    assert store.kvs_list(None, "")[0] == 8
    # Deleting everything leaves no tombstone; listings then use the table index.
    store.kvs_delete_tree(9, "")
    assert store.kvs_list(None, "/foo/bar") == (9, [])
    assert store.kvs_list(None, "foo") == (9, [])


# --- locks -------------------------------------------------------------------------------


def test_lock_errors_use_consuls_texts() -> None:
    store = _store()
    with pytest.raises(StateError) as err:
        store.kvs_lock(1, DirEntry("foo", b"foo"))
    assert str(err.value) == "missing session"
    with pytest.raises(StateError) as err:
        store.kvs_lock(2, DirEntry("foo", b"foo", session=S1))
    assert str(err.value) == f'invalid session "{S1}"'
    with pytest.raises(StateError) as err:
        store.kvs_unlock(3, DirEntry("foo", b"foo"))
    assert str(err.value) == "missing session"
    assert store.max_index(TABLE_KVS) == 0


def test_lock_index_progression() -> None:
    store = _store()
    with_session(store, 3, S1)
    # Lock and create the key at once.
    assert store.kvs_lock(4, DirEntry("foo", b"foo", session=S1))
    assert store.kvs_get(None, "foo") == (4, DirEntry("foo", b"foo", 0, S1, 1, 4, 4))
    # The holder re-locking updates the value, not the LockIndex.
    assert store.kvs_lock(5, DirEntry("foo", b"bar", flags=7, session=S1))
    assert store.kvs_get(None, "foo") == (5, DirEntry("foo", b"bar", 7, S1, 1, 4, 5))
    # Unlock keeps the LockIndex, clears the session, stores the caller's value.
    assert store.kvs_unlock(6, DirEntry("foo", b"baz", session=S1))
    assert store.kvs_get(None, "foo") == (6, DirEntry("foo", b"baz", 0, "", 1, 4, 6))
    # Re-locking a free key increments it.
    assert store.kvs_lock(7, DirEntry("foo", b"zoo", session=S1))
    assert store.kvs_get(None, "foo") == (7, DirEntry("foo", b"zoo", 0, S1, 2, 4, 7))
    # Locking an existing unlocked key.
    put(store, 8, "bar", b"bar")
    assert store.kvs_lock(9, DirEntry("bar", b"xxx", session=S1))
    assert store.kvs_get(None, "bar") == (9, DirEntry("bar", b"xxx", 0, S1, 1, 8, 9))
    # Another session cannot take a held key: False, nothing written.
    with_session(store, 10, S2)
    assert not store.kvs_lock(11, DirEntry("bar", b"nope", session=S2))
    assert store.kvs_get(None, "bar") == (9, DirEntry("bar", b"xxx", 0, S1, 1, 8, 9))
    assert not store.kvs_unlock(11, DirEntry("bar", b"nope", session=S2))
    assert store.max_index(TABLE_KVS) == 9
    # A holder re-locking with identical content is a successful no-op.
    assert store.kvs_lock(12, DirEntry("bar", b"xxx", session=S1))
    assert store.kvs_get(None, "bar")[0] == 9
    # Unlocking a missing key fails quietly.
    assert not store.kvs_unlock(13, DirEntry("missing", b"", session=S1))


def test_lock_delay_with_an_explicit_clock() -> None:
    store = _store()
    with_session(store, 1, S1, lock_delay=15 * SECOND)
    with_session(store, 2, S2)
    assert store.kvs_lock(3, DirEntry("k", b"a", session=S1), now=50.0)
    assert store.kvs_lock_delay("k") is None
    assert store.session_destroy(4, S1, now=100.0)
    assert store.kvs_lock_delay("k") == 115.0
    # Blocked while the delay runs, as Consul's leader does before the Raft apply...
    assert not store.kvs_lock(5, DirEntry("k", b"b", session=S2), now=100.0)
    assert not store.kvs_lock(5, DirEntry("k", b"b", session=S2), now=114.999)
    # ...the FSM path (now=None) does not check it...
    with store.write_txn(5) as tx:
        assert store.kvs_lock_txn(tx, DirEntry("k", b"b", session=S2), now=114.0) is False
    # ...and it ends at the deadline.
    assert store.kvs_lock(5, DirEntry("k", b"b", session=S2), now=115.0)
    entry = store.kvs_get(None, "k")[1]
    assert entry is not None and (entry.session, entry.lock_index) == (S2, 2)


def test_lock_delay_is_capped_and_skipped_without_now() -> None:
    store = _store()
    with_session(store, 1, S1, lock_delay=3600 * SECOND)
    assert store.kvs_lock(2, DirEntry("k", b"a", session=S1))
    store.session_destroy(3, S1, now=0.0)
    assert store.kvs_lock_delay("k") == MAX_LOCK_DELAY_NS / SECOND
    with_session(store, 4, S2, lock_delay=10 * SECOND)
    assert store.kvs_lock(5, DirEntry("j", b"a", session=S2), now=100.0)
    store.session_destroy(6, S2)  # no clock given: no delay recorded
    assert store.kvs_lock_delay("j") is None


def test_lock_does_not_check_lock_delay_of_the_fsm_path() -> None:
    store = _store()
    with_session(store, 1, S1, lock_delay=15 * SECOND)
    with_session(store, 2, S2)
    store.kvs_lock(3, DirEntry("k", b"", session=S1))
    store.session_destroy(4, S1, now=10.0)
    assert store.kvs_lock(5, DirEntry("k", b"", session=S2))  # now=None: FSM apply


def test_check_session_and_check_index_texts() -> None:
    store = _store()
    with_session(store, 1)
    store.kvs_lock(2, DirEntry("k", b"", session=S1))
    assert store.kvs_check_session("k", S1).key == "k"
    assert store.kvs_check_index("k", 2).key == "k"
    with pytest.raises(StateError) as err:
        store.kvs_check_session("nope", S1)
    assert str(err.value) == 'failed to check session, key "nope" doesn\'t exist'
    with pytest.raises(StateError) as err:
        store.kvs_check_session("k", "other")
    assert str(err.value) == f'failed session check for key "k", current session "{S1}" != "other"'
    with pytest.raises(StateError) as err:
        store.kvs_check_index("nope", 2)
    assert str(err.value) == 'failed to check index, key "nope" doesn\'t exist'
    with pytest.raises(StateError) as err:
        store.kvs_check_index("k", 9)
    assert str(err.value) == 'failed index check for key "k", current modify index 2 != 9'


# --- transactions ------------------------------------------------------------------------


def test_a_transaction_applies_many_operations_atomically() -> None:
    store = _store()
    put(store, 1, "a")
    with store.write_txn(2) as tx:
        store.kvs_set_txn(tx, DirEntry("b", b"2"))
        assert store.kvs_get(None, "b")[1] is not None  # reads see the txn's own writes
        store.kvs_delete_txn(tx, "a")
    assert [e.key for e in store.kvs_list(None, "")[1]] == ["b"]
    assert store.kvs_list(None, "a")[0] == 2


def test_an_aborted_transaction_leaves_no_trace() -> None:
    store = _store()
    put(store, 1, "a")
    put(store, 2, "tree/x")
    put(store, 3, "tree/y")
    with_session(store, 4, S1, behavior="delete", lock_delay=SECOND)
    store.kvs_lock(5, DirEntry("held", b"h", session=S1))
    store.kvs_delete(6, "gone-before")
    put(store, 7, "gone")
    store.kvs_delete(8, "gone")
    before = store.snapshot()
    with pytest.raises(StateError), store.write_txn(9) as tx:
        store.kvs_set_txn(tx, DirEntry("a", b"changed"))
        store.kvs_set_txn(tx, DirEntry("new", b"n"))
        store.kvs_delete_tree_txn(tx, "tree/")
        store.session_destroy_txn(tx, S1, now=0.0)
        store.reap_tombstones_txn(tx, 100)
        store.kvs_lock_txn(tx, DirEntry("x", b"", session="missing"))  # raises
    assert store.snapshot() == before
    assert store.kvs_lock_delay("held") is None
    store.check_invariants()
    # The store is usable afterwards, and the session still holds its key.
    assert store.kvs_get(None, "held")[1] == DirEntry("held", b"h", 0, S1, 1, 5, 5)
    put(store, 9, "after")


def test_only_one_write_transaction_at_a_time() -> None:
    store = _store()
    with store.write_txn(1), pytest.raises(RuntimeError):
        store.kvs_set(1, DirEntry("a"))
    put(store, 2, "a")
    tx = store.write_txn(3)
    tx.commit()
    with pytest.raises(RuntimeError):
        tx.commit()
    tx.abort()  # harmless after commit


# --- snapshots ---------------------------------------------------------------------------


def build_store() -> StateStore:
    store = _store()
    put(store, 1, "a", b"1")
    put(store, 2, "nil", None)
    put(store, 3, "bin", bytes(range(256)))
    put(store, 4, "ünï/cødé", "€".encode())
    store.kvs_set(5, DirEntry("flags", b"", flags=42))
    put(store, 6, "dead/one")
    store.kvs_delete(7, "dead/one")
    store.session_create(
        8, Session(id=S1, node="n1", name="s", lock_delay=SECOND, ttl="30s", node_checks=("c",))
    )
    store.kvs_lock(9, DirEntry("locked", b"l", session=S1))
    return store


def test_snapshot_round_trip() -> None:
    store = build_store()
    blob = store.snapshot()
    restored = StateStore.restore(blob)
    assert restored.snapshot() == blob
    assert restored.kvs_list(None, "") == store.kvs_list(None, "")
    assert restored.kvs_list(None, "dead/") == store.kvs_list(None, "dead/") == (7, [])
    assert restored.session_list(None) == store.session_list(None)
    assert restored.max_index(TABLE_KVS, TABLE_TOMBSTONES) == 9
    restored.check_invariants()
    # The restored store keeps working: the session's locks are still indexed.
    assert restored.session_destroy(10, S1)
    assert restored.kvs_get(None, "locked")[1] == DirEntry("locked", b"l", 0, "", 1, 9, 10)


def test_snapshots_are_deterministic() -> None:
    # The same state reached through different insertion orders gives the same bytes.
    one = _store()
    two = _store()
    for store, order in ((one, ["b", "a", "x/1", "c"]), (two, ["x/1", "c", "a", "b"])):
        with store.write_txn(3) as tx:
            for key in order:
                store.kvs_set_txn(tx, DirEntry(key, b"v"))
        for sid in (S2, S1) if store is one else (S1, S2):
            with store.write_txn(4) as tx:
                store.session_create_txn(tx, Session(id=sid, node="n"))
        store.kvs_delete_tree(5, "x/")
    assert one.snapshot() == two.snapshot()


def test_restore_rejects_garbage() -> None:
    with pytest.raises(StateError):
        StateStore.restore(b"not json")
    with pytest.raises(StateError):
        StateStore.restore(b'{"format": 99}')


def test_to_api_shape() -> None:
    store = _store()
    with_session(store, 1)
    store.kvs_lock(2, DirEntry("k", b"hi", flags=4, session=S1))
    put(store, 3, "n", None)
    assert store.kvs_get(None, "k")[1].to_api() == {  # type: ignore[union-attr]
        "LockIndex": 1,
        "Key": "k",
        "Flags": 4,
        "Value": "aGk=",
        "Session": S1,
        "CreateIndex": 2,
        "ModifyIndex": 2,
    }
    assert store.kvs_get(None, "n")[1].to_api() == {  # type: ignore[union-attr]
        "LockIndex": 0,
        "Key": "n",
        "Flags": 0,
        "Value": None,
        "CreateIndex": 3,
        "ModifyIndex": 3,
    }


# --- the sorted key index ----------------------------------------------------------------


class _TinyChunks(SortedKeys):
    """Chunks of 2 to 4 keys, so that splits and chunk removals happen all the time."""

    __slots__ = ()
    _LOAD = 2


@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.text(alphabet="ab/\u00e9\U0001f600", max_size=4)),
        max_size=300,
    ),
    prefix=st.text(alphabet="ab/\u00e9", max_size=2),
    tiny=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_sorted_keys_matches_a_sorted_set(
    ops: list[tuple[bool, str]], prefix: str, tiny: bool
) -> None:
    index = _TinyChunks() if tiny else SortedKeys()
    model: set[str] = set()
    for add, key in ops:
        if add and key not in model:
            index.add(key)
            model.add(key)
        elif not add and key in model:
            index.remove(key)
            model.discard(key)
        assert len(index) == len(model)
    assert list(index) == sorted(model)
    assert list(index.with_prefix(prefix)) == sorted(k for k in model if k.startswith(prefix))
    assert all(k in index for k in model)
    assert "never-added" not in index
    assert list(SortedKeys(list(model))) == sorted(model)


# --- model-based test --------------------------------------------------------------------

KEYS = st.sampled_from(["a", "a/b", "a/c", "a/b/c", "b", "ab", "c/d"])
PREFIXES = st.sampled_from(["", "a", "a/", "a/b", "b", "c", "z"])
VALUES = st.one_of(st.none(), st.binary(max_size=3))
SESSION_IDS = ["s-one", "s-two", "s-three"]


class KVModel(RuleBasedStateMachine):
    """The store against a deliberately simple model: dicts and Consul's rules in a few lines.
    The model is ``rows[key] = (value, flags, session, lock_index, create, modify)``,
    tombstones ``key -> index``, a kvs table index and a tombstone table index."""

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.store = _store()
        self.idx = 0
        self.rows: dict[str, tuple[bytes | None, int, str, int, int, int]] = {}
        self.stones: dict[str, int] = {}
        self.kvs_index = 0
        self.stones_index = 0
        self.live_sessions: dict[str, str] = {}  # id -> behavior
        self.next_session = 0

    def next_idx(self) -> int:
        self.idx += 1
        return self.idx

    def m_write(self, key: str, row: tuple[bytes | None, int, str, int, int, int]) -> None:
        self.rows[key] = row
        self.kvs_index = row[5]

    def m_delete(self, key: str, idx: int) -> None:
        del self.rows[key]
        self.stones[key] = idx
        self.stones_index = self.kvs_index = idx

    def m_set(self, key: str, value: bytes | None, flags: int, session: str, lock: int) -> None:
        # Consul's kvsSetTxn with updateSession=True semantics (callers resolve the session).
        idx = self.idx
        old = self.rows.get(key)
        if old is not None and (old[0] or b"", old[1], old[2], old[3]) == (
            value or b"",
            flags,
            session,
            lock,
        ):
            return
        create = old[4] if old is not None else idx
        self.m_write(key, (value, flags, session, lock, create, idx))

    @rule(key=KEYS, value=VALUES, flags=st.integers(0, 2))
    def set(self, key: str, value: bytes | None, flags: int) -> None:
        idx = self.next_idx()
        self.store.kvs_set(idx, DirEntry(key, value, flags))
        old = self.rows.get(key)
        self.m_set(key, value, flags, old[2] if old else "", 0)

    @rule(key=KEYS, value=VALUES, use_current=st.booleans(), other=st.integers(0, 40))
    def set_cas(self, key: str, value: bytes | None, use_current: bool, other: int) -> None:
        idx = self.next_idx()
        old = self.rows.get(key)
        cas = old[5] if (use_current and old is not None) else other
        ok = self.store.kvs_set_cas(idx, DirEntry(key, value, modify_index=cas))
        expected = (old is None and cas == 0) or (old is not None and cas != 0 and cas == old[5])
        assert ok == expected
        if ok:
            self.m_set(key, value, 0, old[2] if old else "", 0)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        idx = self.next_idx()
        existed = self.store.kvs_delete(idx, key)
        assert existed == (key in self.rows)
        if existed:
            self.m_delete(key, idx)

    @rule(key=KEYS, use_current=st.booleans(), other=st.integers(0, 40))
    def delete_cas(self, key: str, use_current: bool, other: int) -> None:
        idx = self.next_idx()
        old = self.rows.get(key)
        cas = old[5] if (use_current and old is not None) else other
        ok = self.store.kvs_delete_cas(idx, cas, key)
        assert ok == (old is None or old[5] == cas)
        if old is not None and ok:
            self.m_delete(key, idx)

    @rule(prefix=PREFIXES)
    def delete_tree(self, prefix: str) -> None:
        idx = self.next_idx()
        doomed = [k for k in self.rows if k.startswith(prefix)]
        assert self.store.kvs_delete_tree(idx, prefix) == len(doomed)
        for key in doomed:
            del self.rows[key]
        if doomed:
            self.kvs_index = idx
            if prefix:
                self.stones[prefix] = idx
                self.stones_index = idx

    @rule(target=sessions, behavior=st.sampled_from(["release", "delete"]))
    def create_session(self, behavior: str) -> str:
        idx = self.next_idx()
        sid = f"{SESSION_IDS[self.next_session % 3]}-{self.next_session}"
        self.next_session += 1
        self.store.session_create(idx, Session(id=sid, node="n", behavior=behavior))
        self.live_sessions[sid] = behavior
        return sid

    @rule(sid=consumes(sessions))
    def destroy_session(self, sid: str) -> None:
        idx = self.next_idx()
        assert self.store.session_destroy(idx, sid)
        behavior = self.live_sessions.pop(sid)
        for key in sorted(k for k, row in self.rows.items() if row[2] == sid):
            row = self.rows[key]
            if behavior == "delete":
                self.m_delete(key, idx)
            else:
                self.m_write(key, (row[0], row[1], "", row[3], row[4], idx))

    @rule(sid=sessions, key=KEYS, value=VALUES)
    def lock(self, sid: str, key: str, value: bytes | None) -> None:
        idx = self.next_idx()
        entry = DirEntry(key, value, session=sid)
        if sid not in self.live_sessions:
            with pytest.raises(StateError, match="invalid session"):
                self.store.kvs_lock(idx, entry)
            return
        ok = self.store.kvs_lock(idx, entry)
        old = self.rows.get(key)
        if old is None:
            lock = 1
        elif old[2] == sid:
            lock = old[3]
        elif old[2]:
            assert not ok
            return
        else:
            lock = old[3] + 1
        assert ok
        self.m_set(key, value, 0, sid, lock)

    @rule(sid=sessions, key=KEYS, value=VALUES)
    def unlock(self, sid: str, key: str, value: bytes | None) -> None:
        idx = self.next_idx()
        ok = self.store.kvs_unlock(idx, DirEntry(key, value, session=sid))
        old = self.rows.get(key)
        assert ok == (old is not None and old[2] == sid)
        if old is not None and ok:
            self.m_set(key, value, 0, "", old[3])

    @precondition(lambda self: bool(self.stones))
    @rule(data=st.data())
    def reap(self, data: st.DataObject) -> None:
        up_to = data.draw(st.sampled_from(sorted(self.stones.values())))
        reaped = self.store.reap_tombstones(up_to)
        doomed = [k for k, i in self.stones.items() if i <= up_to]
        assert reaped == len(doomed)
        for key in doomed:
            del self.stones[key]

    @rule()
    def aborted_transaction(self) -> None:
        before = self.store.snapshot()
        idx = self.idx + 1  # not consumed: the txn never commits
        with pytest.raises(ZeroDivisionError), self.store.write_txn(idx) as tx:
            self.store.kvs_delete_tree_txn(tx, "")
            self.store.kvs_set_txn(tx, DirEntry("a", b"zzz"))
            raise ZeroDivisionError
        assert self.store.snapshot() == before

    @rule()
    def snapshot_round_trip(self) -> None:
        blob = self.store.snapshot()
        restored = StateStore.restore(
            blob, node_exists=lambda node: True, check_status=lambda node, check: "passing"
        )
        assert restored.snapshot() == blob
        self.store = restored

    def table_index(self) -> int:
        return max(self.kvs_index, self.stones_index)

    @invariant()
    def rows_match(self) -> None:
        for key in ["a", "a/b", "a/c", "a/b/c", "b", "ab", "c/d", "zz"]:
            index, entry = self.store.kvs_get(None, key)
            row = self.rows.get(key)
            if row is None:
                assert entry is None
                assert index == max(self.table_index(), 1)
            else:
                assert entry == DirEntry(key, *row)
                assert index == max(row[5], 1)

    @invariant()
    def lists_match(self) -> None:
        for prefix in ["", "a", "a/", "a/b", "b", "c", "z"]:
            index, entries = self.store.kvs_list(None, prefix)
            keys = sorted(k for k in self.rows if k.startswith(prefix))
            assert [e.key for e in entries] == keys
            if prefix:
                lindex = max([self.rows[k][5] for k in keys] or [0])
                lindex = max([lindex] + [i for k, i in self.stones.items() if k.startswith(prefix)])
            else:
                lindex = 0
            assert index == max(lindex or self.table_index(), 1)

    @invariant()
    def indexes_match(self) -> None:
        assert self.store.max_index(TABLE_KVS) == self.kvs_index
        assert self.store.max_index(TABLE_TOMBSTONES) == self.stones_index
        self.store.check_invariants()


TestKVModel = KVModel.TestCase
TestKVModel.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
