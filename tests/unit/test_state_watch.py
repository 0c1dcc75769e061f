"""Watches: channels and sets on their own, then which store writes fire which reads' watches
(key, prefix, table, sessions), only after commit, never for aborted or no-op writes."""

from __future__ import annotations

import time

import pytest

from server.state import (
    TABLE_KVS,
    TABLE_SESSIONS,
    ChannelMap,
    DirEntry,
    PrefixChannelMap,
    Session,
    StateError,
    StateStore,
    WatchChannel,
    WatchSet,
)


def _store() -> StateStore:
    """A store whose catalog hooks accept any node and check (sessions on nodes that
    these tests never register)."""
    return StateStore(node_exists=lambda node: True, check_status=lambda node, check: "passing")


S1 = "11111111-2222-3333-4444-555555555555"
S2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


# --- channels and sets -------------------------------------------------------------------


def test_a_callback_runs_once_when_the_first_channel_closes() -> None:
    a, b = WatchChannel(), WatchChannel()
    hits = Counter()
    WatchSet([a, b]).add_callback(hits)
    assert (a.waiting, b.waiting) == (1, 1)
    a.close()
    assert hits.calls == 1
    assert b.waiting == 0  # detached from the other channels
    b.close()
    a.close()  # idempotent
    assert hits.calls == 1


def test_cancel_detaches_and_is_idempotent() -> None:
    channel = WatchChannel()
    hits = Counter()
    cancel = WatchSet([channel]).add_callback(hits)
    cancel()
    cancel()
    assert channel.waiting == 0
    channel.close()
    assert hits.calls == 0


def test_a_closed_channel_calls_back_at_once() -> None:
    channel = WatchChannel()
    channel.close()
    hits = Counter()
    cancel = WatchSet([WatchChannel(), channel]).add_callback(hits)
    assert hits.calls == 1
    cancel()
    assert channel.add_callback(hits) is not None and hits.calls == 2


def test_an_empty_set_never_fires() -> None:
    hits = Counter()
    WatchSet().add_callback(hits)()
    assert hits.calls == 0
    assert not WatchSet().fired


def test_add_with_limit_falls_back_to_the_coarse_channel() -> None:
    fine = [WatchChannel() for _ in range(3)]
    table = WatchChannel()
    ws = WatchSet()
    for channel in fine:
        ws.add_with_limit(2, channel, table)
    assert list(ws) == [fine[0], fine[1], table]


def test_callback_errors_do_not_stop_other_callbacks() -> None:
    channel = WatchChannel()
    hits = Counter()

    def boom() -> None:
        raise ValueError("boom")

    WatchSet([channel]).add_callback(boom)
    WatchSet([channel]).add_callback(hits)
    with pytest.raises(ExceptionGroup) as err:
        channel.close()
    assert hits.calls == 1
    assert [type(e) for e in err.value.exceptions] == [ValueError]


def test_channel_maps_forget_channels_that_close_or_lose_their_waiters() -> None:
    channels = ChannelMap()
    channel = channels.channel("k")
    assert channels.channel("k") is channel
    cancel = WatchSet([channel]).add_callback(Counter())
    cancel()
    # Retired: the map is empty again and the old channel counts as closed (a spurious
    # wake-up for anyone still holding it, never a missed one).
    assert "k" not in channels and channel.closed
    fresh = channels.channel("k")
    assert fresh is not channel and not fresh.closed
    channels.notify("k")
    assert fresh.closed and len(channels) == 0


def test_channel_maps_sweep_idle_channels() -> None:
    channels = ChannelMap()
    waited = channels.channel("waited")
    WatchSet([waited]).add_callback(Counter())
    for i in range(5000):
        channels.channel(f"idle-{i}")
    assert len(channels) < 2100
    assert not waited.closed and "waited" in channels


def test_prefix_maps_fire_every_watched_prefix_of_a_key() -> None:
    channels = PrefixChannelMap()
    watched = {p: channels.channel(p) for p in ["", "a", "a/", "a/b/c", "b"]}
    channels.notify("a/b")
    assert {p for p, c in watched.items() if c.closed} == {"", "a", "a/"}
    assert set(channels._channels) == {"a/b/c", "b"}
    assert channels._lengths == {5: 1, 1: 1}
    channels.notify("a/b/c/d")
    assert watched["a/b/c"].closed and not watched["b"].closed


def test_closed_maps_hand_out_closed_channels() -> None:
    channels = ChannelMap()
    before = channels.channel("x")
    channels.close_all()
    assert before.closed
    assert channels.channel("y").closed


# --- store watches -----------------------------------------------------------------------


def kv_get_ws(store: StateStore, key: str) -> WatchSet:
    ws = WatchSet()
    store.kvs_get(ws, key)
    return ws


def kv_list_ws(store: StateStore, prefix: str) -> WatchSet:
    ws = WatchSet()
    store.kvs_list(ws, prefix)
    return ws


def test_key_watch_fires_for_its_key_only() -> None:
    store = _store()
    missing = kv_get_ws(store, "foo")
    store.kvs_set(1, DirEntry("foo", b"bar"))
    assert missing.fired  # creation of a watched missing key
    ws = kv_get_ws(store, "foo")
    store.kvs_set(2, DirEntry("other", b"x"))
    store.kvs_set(3, DirEntry("foo/child", b"x"))
    store.kvs_set(4, DirEntry("fo", b"x"))
    assert not ws.fired
    store.kvs_set(5, DirEntry("foo", b"baz"))
    assert ws.fired
    ws = kv_get_ws(store, "foo")
    store.kvs_delete(6, "foo")
    assert ws.fired


def test_prefix_watch_fires_for_keys_under_the_prefix_only() -> None:
    store = _store()
    ws = kv_list_ws(store, "foo/bar")
    store.kvs_set(1, DirEntry("foo/ba", b""))
    store.kvs_set(2, DirEntry("foo", b""))
    store.kvs_set(3, DirEntry("some/other/key", b""))
    assert not ws.fired
    store.kvs_set(4, DirEntry("foo/bar/zip", b""))
    assert ws.fired
    ws = kv_list_ws(store, "foo/bar")
    store.kvs_delete_tree(5, "foo/bar/zip")
    assert ws.fired
    # A tree delete above the watched prefix fires it through the deleted keys.
    store.kvs_set(6, DirEntry("foo/bar/x", b""))
    ws = kv_list_ws(store, "foo/bar/")
    store.kvs_delete_tree(7, "foo")
    assert ws.fired
    # The empty prefix watches everything; keys listings watch like lists.
    everything = kv_list_ws(store, "")
    keys_ws = WatchSet()
    store.kvs_keys(keys_ws, "x/", "/")
    store.kvs_set(8, DirEntry("x/y", b""))
    assert everything.fired and keys_ws.fired


def test_table_channel_fires_on_any_write_to_its_table() -> None:
    store = _store()
    kvs = WatchSet([store.table_channel(TABLE_KVS)])
    sessions = WatchSet([store.table_channel(TABLE_SESSIONS)])
    store.kvs_set(1, DirEntry("anything", b""))
    assert kvs.fired and not sessions.fired
    kvs = WatchSet([store.table_channel(TABLE_KVS)])
    store.session_create(2, Session(id=S1, node="n"))
    assert sessions.fired and not kvs.fired
    ws = WatchSet()
    store.session_list(ws)
    store.session_destroy(3, S1)
    assert ws.fired


def test_writes_that_change_nothing_fire_nothing() -> None:
    store = _store()
    store.session_create(1, Session(id=S1, node="n"))
    store.session_create(2, Session(id=S2, node="n"))
    store.kvs_set(3, DirEntry("k", b"v"))
    store.kvs_lock(4, DirEntry("held", b"", session=S1))
    ws = kv_get_ws(store, "k")
    ws.update(kv_get_ws(store, "held"))
    ws.update(kv_list_ws(store, ""))
    ws.add(store.table_channel(TABLE_KVS))
    store.kvs_set(5, DirEntry("k", b"v"))  # unchanged
    assert not store.kvs_set_cas(6, DirEntry("k", b"w", modify_index=99))
    assert not store.kvs_delete_cas(7, 99, "k")
    assert not store.kvs_delete(8, "missing")
    assert store.kvs_delete_tree(9, "missing/") == 0
    assert not store.kvs_lock(10, DirEntry("held", b"x", session=S2))
    assert not store.kvs_unlock(11, DirEntry("held", b"x", session=S2))
    with pytest.raises(StateError):
        store.kvs_lock(12, DirEntry("k", b"x", session="no-such-session"))
    store.reap_tombstones(100)
    assert not ws.fired


def test_aborted_writes_fire_nothing_and_commits_fire_after_the_change() -> None:
    store = _store()
    store.kvs_set(1, DirEntry("k", b"old"))
    ws = kv_get_ws(store, "k")
    with pytest.raises(RuntimeError), store.write_txn(2) as tx:
        store.kvs_set_txn(tx, DirEntry("k", b"new"))
        raise RuntimeError("abort")
    assert not ws.fired
    seen: list[object] = []

    def observe() -> None:
        # Called inside the commit, after every change is in place and the txn is closed.
        seen.append(store.kvs_get(None, "k")[1])
        seen.append(store.kvs_get(None, "k2")[1])
        store.kvs_set(4, DirEntry("from-callback", b""))  # the store is writable again

    ws.add_callback(observe)
    with store.write_txn(3) as tx:
        store.kvs_set_txn(tx, DirEntry("k", b"new"))
        assert not ws.fired  # not before commit
        store.kvs_set_txn(tx, DirEntry("k2", b"second"))
    assert ws.fired
    assert seen == [
        DirEntry("k", b"new", 0, "", 0, 1, 3),
        DirEntry("k2", b"second", 0, "", 0, 3, 3),
    ]
    assert store.kvs_get(None, "from-callback")[0] == 4


def test_a_failing_callback_does_not_undo_the_write() -> None:
    store = _store()
    ws = kv_get_ws(store, "k")
    other = kv_list_ws(store, "")
    hits = Counter()

    def boom() -> None:
        raise KeyError("bad watcher")

    ws.add_callback(boom)
    other.add_callback(hits)
    with pytest.raises(ExceptionGroup):
        store.kvs_set(1, DirEntry("k", b"v"))
    assert store.kvs_get(None, "k")[0] == 1
    assert hits.calls == 1
    store.kvs_set(2, DirEntry("k", b"w"))  # no transaction left open


def test_session_watches() -> None:
    store = _store()
    by_id = WatchSet()
    store.session_get(by_id, S1)
    by_node = WatchSet()
    store.node_sessions(by_node, "Node-A")
    other_node = WatchSet()
    store.node_sessions(other_node, "node-b")
    store.session_create(1, Session(id=S1.upper(), node="node-a"))
    assert by_id.fired and by_node.fired and not other_node.fired
    by_id = WatchSet()
    store.session_get(by_id, S1)
    unrelated = WatchSet()
    store.session_get(unrelated, S2)
    store.session_destroy(2, S1)
    assert by_id.fired and not unrelated.fired


def test_session_invalidation_fires_the_key_watches_of_its_locks() -> None:
    store = _store()
    store.session_create(1, Session(id=S1, node="n"))
    store.kvs_lock(2, DirEntry("service/leader", b"me", session=S1))
    ws = kv_get_ws(store, "service/leader")
    store.session_destroy(3, S1)
    assert ws.fired


def test_abandon_fires_every_channel() -> None:
    store = _store()
    store.kvs_set(1, DirEntry("k", b""))
    store.session_create(2, Session(id=S1, node="n"))
    sets = [kv_get_ws(store, "k"), kv_get_ws(store, "missing"), kv_list_ws(store, "a/")]
    for read in (
        lambda ws: store.session_get(ws, S1),
        lambda ws: store.session_list(ws),
        lambda ws: store.node_sessions(ws, "n"),
    ):
        ws = WatchSet()
        read(ws)
        sets.append(ws)
    sets.append(WatchSet([store.table_channel(TABLE_KVS)]))
    sets.append(WatchSet([store.abandon_channel]))
    hits = Counter()
    for ws in sets:
        ws.add_callback(hits)
    store.abandon()
    assert hits.calls == len(sets)
    assert store.abandoned
    # Reads still answer, but their watches are closed at once; writes are refused.
    assert kv_get_ws(store, "k").fired
    assert store.kvs_get(None, "k")[1] is not None
    with pytest.raises(RuntimeError):
        store.kvs_set(3, DirEntry("k", b"x"))
    store.abandon()  # idempotent


def test_restore_then_abandon_wakes_blocking_readers() -> None:
    old = _store()
    old.kvs_set(1, DirEntry("k", b"v"))
    ws = kv_get_ws(old, "k")
    ws.add(old.abandon_channel)
    woke = Counter()
    ws.add_callback(woke)
    new = StateStore.restore(old.snapshot())
    old.abandon()
    assert woke.calls == 1
    assert new.kvs_get(None, "k") == old.kvs_get(None, "k")


def test_ten_thousand_watchers_on_one_key() -> None:
    store = _store()
    store.kvs_set(1, DirEntry("hot", b""))
    hits = Counter()
    for _ in range(10_000):
        ws = kv_get_ws(store, "hot")
        ws.add(store.abandon_channel)
        ws.add_callback(hits)
    started = time.perf_counter()
    store.kvs_set(2, DirEntry("hot", b"x"))
    elapsed = time.perf_counter() - started
    assert hits.calls == 10_000
    assert store.abandon_channel.waiting == 0  # every waiter left its other channels
    assert len(store._kvs.key_watches) == 0
    # Typically ~5 ms; the bound is loose so that a loaded CI machine does not flake.
    assert elapsed < 0.5, f"firing 10k watchers took {elapsed * 1000:.1f} ms"


def test_many_prefix_watchers_cost_one_lookup_per_watched_length() -> None:
    store = _store()
    hits = Counter()
    for i in range(2000):
        ws = kv_list_ws(store, f"app/{i:04d}/")
        ws.add_callback(hits)
    store.kvs_set(1, DirEntry("app/0042/config", b""))
    assert hits.calls == 1
    assert store._kvs.prefix_watches._lengths == {9: 1999}
