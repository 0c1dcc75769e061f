"""RaftStorage behaviour: SqliteStorage on disk and MemoryStorage, held to the same contract."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.core.types import (
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Membership,
    Server,
    SnapshotMeta,
    Suffrage,
)
from raft.storage.base import RaftStorage
from raft.storage.memory import MemoryStorage
from raft.storage.sqlite import LogCorrupt, SqliteStorage

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]

Storage = SqliteStorage | MemoryStorage

MEMBERSHIP = Membership(
    (
        Server("n1", "10.0.0.1:8300"),
        Server("n2", "10.0.0.2:8300"),
        Server("n3", "10.0.0.3:8300", Suffrage.NONVOTER),
    )
)


def ents(lo: int, hi: int, term: int, tag: str = "") -> list[Entry]:
    """Entries lo..hi inclusive, all of ``term``, with data naming index, term and tag."""
    return [
        Entry(i, term, EntryKind.NORMAL, f"{tag}{i}@{term}".encode()) for i in range(lo, hi + 1)
    ]


class Backend:
    """A storage plus a way to "restart" it: reopen the file, or keep the memory object."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.storage: Storage = MemoryStorage()

    async def start(self) -> None:
        if self.kind == "sqlite":
            self.storage = await SqliteStorage(self.path).open()

    async def reopen(self) -> Storage:
        if self.kind == "sqlite":
            await self.storage.close()
            self.storage = await SqliteStorage(self.path).open()
        return self.storage

    async def stop(self) -> None:
        await self.storage.close()


@pytest.fixture(params=["sqlite", "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b = Backend(str(request.param), tmp_path / "raft.db")
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def load_twice(b: Backend) -> InitialState:
    """load() now, and check a restart loads exactly the same thing."""
    before = await b.storage.load()
    after = await (await b.reopen()).load()
    assert after == before
    return after


def test_both_implement_the_protocol(tmp_path: Path) -> None:
    # Checked statically by mypy (structural typing); trivially true at run time.
    implementations: list[RaftStorage] = [SqliteStorage(tmp_path / "raft.db"), MemoryStorage()]
    assert len(implementations) == 2


# --- round trips --------------------------------------------------------------------------------


async def test_fresh_storage_loads_empty_state(backend: Backend) -> None:
    assert await backend.storage.load() == InitialState()
    assert await backend.storage.last_index() == 0
    assert await load_twice(backend) == InitialState()


async def test_round_trip_hard_state_entries_and_snapshot(backend: Backend) -> None:
    s = backend.storage
    log = [
        Entry(1, 1, EntryKind.CONFIG, MEMBERSHIP.encode()),
        Entry(2, 1, EntryKind.NOOP),
        Entry(3, 1, EntryKind.NORMAL, bytes(range(256)) * 3),
        Entry(4, 2, EntryKind.NORMAL, b"\x00" * 10),
        Entry(5, 2, EntryKind.NORMAL, os.urandom(1 << 20)),
    ]
    await s.save(HardState(2, "n2"), log)
    state = await load_twice(backend)
    assert state == InitialState(HardState(2, "n2"), SnapshotMeta(), tuple(log))
    assert state.entries[1].data == b""
    assert Membership.decode(state.entries[0].data) == MEMBERSHIP

    meta = SnapshotMeta(3, 1, MEMBERSHIP)
    await backend.storage.compact(meta, keep_from=4)
    state = await load_twice(backend)
    assert state.snapshot == meta
    assert state.snapshot.membership.get("n3") == Server("n3", "10.0.0.3:8300", Suffrage.NONVOTER)
    assert state.entries == tuple(log[3:])
    assert state.hard_state == HardState(2, "n2")


async def test_hard_state_only_save_and_none_keeps_it(backend: Backend) -> None:
    await backend.storage.save(HardState(5, None), [])
    assert (await load_twice(backend)).hard_state == HardState(5, None)
    await backend.storage.save(HardState(6, "n1"), [])
    await backend.storage.save(None, ents(1, 2, 6))
    state = await load_twice(backend)
    assert state.hard_state == HardState(6, "n1")
    assert state.entries == tuple(ents(1, 2, 6))


async def test_empty_save_is_a_no_op(backend: Backend) -> None:
    await backend.storage.save(None, ents(1, 3, 1))
    await backend.storage.save(None, [])
    await backend.storage.save(None, ())
    assert (await load_twice(backend)).entries == tuple(ents(1, 3, 1))


async def test_appends_accumulate_across_saves(backend: Backend) -> None:
    for lo in range(1, 100, 10):
        await backend.storage.save(HardState(1, "n1"), ents(lo, lo + 9, 1))
    state = await load_twice(backend)
    assert state.entries == tuple(ents(1, 100, 1))
    assert await backend.storage.last_index() == 100
    assert await backend.storage.entries(40, 45) == ents(40, 44, 1)
    assert await backend.storage.term(77) == 1
    assert await backend.storage.term(101) is None


# --- suffix truncation ------------------------------------------------------------------------


async def test_save_truncates_the_suffix_from_the_first_new_index(backend: Backend) -> None:
    await backend.storage.save(HardState(1, "n1"), ents(1, 10, 1))
    await backend.storage.save(HardState(2, "n2"), ents(6, 7, 2, "new"))
    state = await load_twice(backend)
    assert state.entries == tuple(ents(1, 5, 1) + ents(6, 7, 2, "new"))
    assert state.hard_state == HardState(2, "n2")
    assert await backend.storage.last_index() == 7
    assert await backend.storage.entries(1, 100) == ents(1, 5, 1) + ents(6, 7, 2, "new")


async def test_save_can_replace_the_whole_log_and_the_last_entry(backend: Backend) -> None:
    await backend.storage.save(None, ents(1, 5, 1))
    await backend.storage.save(None, ents(5, 5, 2))
    assert (await load_twice(backend)).entries == tuple(ents(1, 4, 1) + ents(5, 5, 2))
    await backend.storage.save(None, ents(1, 2, 3))
    assert (await load_twice(backend)).entries == tuple(ents(1, 2, 3))


async def test_invalid_saves_are_rejected_and_write_nothing(backend: Backend) -> None:
    await backend.storage.save(HardState(1, "n1"), ents(1, 3, 1))
    before = await backend.storage.load()
    bad: list[Sequence[Entry]] = [
        ents(5, 6, 1),  # gap after 3
        [*ents(4, 4, 1), *ents(6, 6, 1)],  # not contiguous
        [Entry(0, 1, EntryKind.NORMAL)],  # index 0
    ]
    for batch in bad:
        with pytest.raises(ValueError):
            await backend.storage.save(HardState(9, "x"), batch)
    assert await load_twice(backend) == before


# --- snapshots in the log ---------------------------------------------------------------------


async def test_compaction_keeps_a_tail_and_loads_after_the_snapshot(backend: Backend) -> None:
    s = backend.storage
    await s.save(HardState(2, "n1"), ents(1, 20, 2))
    meta = SnapshotMeta(10, 2, MEMBERSHIP)
    await s.compact(meta, keep_from=8)
    state = await load_twice(backend)
    s = backend.storage
    assert state.snapshot == meta
    assert state.entries == tuple(ents(11, 20, 2))
    assert await s.entries(1, 11) == ents(8, 10, 2)  # the kept tail is readable
    assert await s.term(10) == 2
    assert await s.term(7) is None
    assert await s.last_index() == 20
    assert await s.snapshot_meta() == meta
    # Compacting further drops the tail; saving at the end still works.
    await s.compact(SnapshotMeta(15, 2, MEMBERSHIP), keep_from=16)
    assert await s.entries(1, 100) == ents(16, 20, 2)
    await s.save(None, ents(21, 22, 3))
    state = await load_twice(backend)
    assert state.entries == tuple(ents(16, 20, 2) + ents(21, 22, 3))


async def test_compaction_of_the_whole_log(backend: Backend) -> None:
    s = backend.storage
    await s.save(None, ents(1, 20, 1))
    await s.compact(SnapshotMeta(20, 1), keep_from=21)
    state = await load_twice(backend)
    s = backend.storage
    assert state.entries == ()
    assert await s.last_index() == 20
    assert await s.term(20) == 1
    with pytest.raises(ValueError):
        await s.save(None, ents(22, 22, 1))  # gap after the snapshot
    with pytest.raises(ValueError):
        await s.save(None, ents(20, 21, 1))  # at or below the snapshot index
    await s.save(None, ents(21, 21, 2))
    assert (await load_twice(backend)).entries == tuple(ents(21, 21, 2))


async def test_invalid_compactions_are_rejected(backend: Backend) -> None:
    s = backend.storage
    await s.save(None, ents(1, 20, 1))
    with pytest.raises(ValueError):
        await s.compact(SnapshotMeta(10, 1), keep_from=12)  # would open a gap
    await s.compact(SnapshotMeta(10, 1), keep_from=11)
    with pytest.raises(ValueError):
        await s.compact(SnapshotMeta(5, 1), keep_from=6)  # older than the recorded snapshot
    state = await load_twice(backend)
    assert state.snapshot == SnapshotMeta(10, 1)
    assert state.entries == tuple(ents(11, 20, 1))


async def test_saved_snapshot_that_conflicts_resets_the_log(backend: Backend) -> None:
    await backend.storage.save(HardState(3, "n2"), ents(1, 10, 1))
    meta = SnapshotMeta(8, 3, MEMBERSHIP)
    await backend.storage.save(HardState(3, "n2"), [], meta)
    state = await load_twice(backend)
    assert state.snapshot == meta
    assert state.entries == ()
    assert await backend.storage.last_index() == 8
    assert await backend.storage.entries(1, 100) == []


async def test_saved_snapshot_that_matches_keeps_the_entries_after_it(backend: Backend) -> None:
    await backend.storage.save(None, ents(1, 10, 1))
    await backend.storage.save(None, [], SnapshotMeta(8, 1))
    state = await load_twice(backend)
    assert state.snapshot == SnapshotMeta(8, 1)
    assert state.entries == tuple(ents(9, 10, 1))
    assert await backend.storage.entries(1, 100) == ents(9, 10, 1)


async def test_saved_snapshot_past_the_log_end_with_entries(backend: Backend) -> None:
    await backend.storage.save(HardState(1, "n1"), ents(1, 5, 1))
    meta = SnapshotMeta(20, 3, MEMBERSHIP)
    await backend.storage.save(HardState(4, None), ents(21, 22, 4), meta)
    state = await load_twice(backend)
    assert state == InitialState(HardState(4, None), meta, tuple(ents(21, 22, 4)))
    assert await backend.storage.last_index() == 22
    # Entries must follow the snapshot in the same save.
    with pytest.raises(ValueError):
        await backend.storage.save(None, ents(32, 32, 5), SnapshotMeta(30, 5))
    assert await backend.storage.load() == state


# --- SQLite specifics ---------------------------------------------------------------------------


async def test_sqlite_uses_wal_and_synchronous_full(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "raft.db") as s:
        conn = s._conn()
        assert list(await conn.execute_fetchall("PRAGMA journal_mode")) == [("wal",)]
        assert list(await conn.execute_fetchall("PRAGMA synchronous")) == [(2,)]  # FULL


async def test_sqlite_save_is_one_executemany_and_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteStorage(tmp_path / "raft.db") as s:
        await s.save(HardState(1, "n1"), ents(1, 10, 1))
        conn = s._conn()
        calls: list[str] = []

        def counting(name: str) -> Callable[..., Awaitable[Any]]:
            real = getattr(conn, name)

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return await real(*args, **kwargs)

            return wrapper

        for name in ("execute", "executemany", "commit"):
            monkeypatch.setattr(conn, name, counting(name))
        await s.save(HardState(2, "n2"), ents(11, 510, 2))  # a Ready with 500 entries
        assert calls.count("executemany") == 1
        assert calls.count("commit") == 1
        assert calls.count("execute") == 1  # the hard state
        calls.clear()
        await s.save(None, ents(511, 511, 2))  # plain append: no DELETE, no hard state
        assert calls == ["executemany", "commit"]
    async with SqliteStorage(tmp_path / "raft.db") as s:
        assert (await s.load()).entries == tuple(ents(1, 10, 1) + ents(11, 511, 2))


async def test_sqlite_load_rejects_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    async with SqliteStorage(path) as s:
        await s.save(None, ents(1, 5, 1))
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM log WHERE idx = 3")
    raw.close()
    async with SqliteStorage(path) as s:
        with pytest.raises(LogCorrupt, match="expected index 3, found 4"):
            await s.load()


async def test_sqlite_load_rejects_a_log_not_starting_after_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    async with SqliteStorage(path) as s:
        await s.save(None, ents(1, 5, 1))
        await s.compact(SnapshotMeta(2, 1), keep_from=3)
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM log WHERE idx = 3")
    raw.close()
    async with SqliteStorage(path) as s:
        with pytest.raises(LogCorrupt, match="gap in the log after snapshot 2"):
            await s.load()


async def test_sqlite_load_rejects_an_unknown_entry_kind(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    async with SqliteStorage(path) as s:
        await s.save(None, ents(1, 2, 1))
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE log SET kind = 99 WHERE idx = 2")
    raw.close()
    async with SqliteStorage(path) as s:
        with pytest.raises(LogCorrupt, match="index 2"):
            await s.load()


async def test_sqlite_rejects_an_unknown_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    async with SqliteStorage(path):
        pass
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 42")
    raw.close()
    with pytest.raises(RuntimeError, match="schema version 42"):
        await SqliteStorage(path).open()


async def test_sqlite_must_be_opened_once(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "raft.db")
    with pytest.raises(RuntimeError, match="not open"):
        await s.load()
    await s.open()
    try:
        with pytest.raises(RuntimeError, match="already open"):
            await s.open()
    finally:
        await s.close()
    with pytest.raises(RuntimeError, match="not open"):
        await s.save(None, ents(1, 1, 1))
    await s.close()  # closing twice is harmless


async def test_sqlite_concurrent_saves_are_serialized(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "raft.db") as s:
        await asyncio.gather(*(s.save(None, ents(i, i, 1)) for i in range(1, 51)))
        assert (await s.load()).entries == tuple(ents(1, 50, 1))


# --- crash safety -------------------------------------------------------------------------------

CHILD = """
import asyncio, sys
from raft.core.types import Entry, EntryKind, HardState
from raft.storage.sqlite import SqliteStorage

def term(i): return 1 + i // 97
def data(i): return b"%d:" % i + bytes([i % 251]) * (i % 300)

async def main(path):
    s = await SqliteStorage(path).open()
    idx = await s.last_index() + 1
    n = 0
    while True:
        batch = 1 + n % 13
        last = idx + batch - 1
        entries = [Entry(i, term(i), EntryKind.NORMAL, data(i)) for i in range(idx, last + 1)]
        await s.save(HardState(term(last), "n1"), entries)
        sys.stdout.write("%d\\n" % last)
        sys.stdout.flush()
        idx, n = last + 1, n + 1

asyncio.run(main(sys.argv[1]))
"""


def _term(i: int) -> int:
    return 1 + i // 97


def _data(i: int) -> bytes:
    return b"%d:" % i + bytes([i % 251]) * (i % 300)


async def _run_and_kill(path: Path, acks_wanted: int) -> int:
    """Run the child until it acknowledged ``acks_wanted`` saves, SIGKILL it, return max ack."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    acked = 0
    try:
        for _ in range(acks_wanted):
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
            if not line:
                err = await asyncio.wait_for(proc.stderr.read(), timeout=5)
                pytest.fail(f"child exited early: {err.decode(errors='replace')}")
            acked = max(acked, int(line))
        os.kill(proc.pid, signal.SIGKILL)  # mid-way: the child is saving continuously
        # Lines written before the kill were acknowledged too: drain them (a torn last line
        # was not fully written, so it does not count).
        rest = await asyncio.wait_for(proc.stdout.read(), timeout=20)
        for line in rest.split(b"\n")[:-1]:  # the last piece is b"" or a torn line
            acked = max(acked, int(line))
        assert await asyncio.wait_for(proc.wait(), timeout=20) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return acked


async def test_sqlite_survives_sigkill_with_every_acknowledged_entry(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    acked = 0
    for acks_wanted in (150, 37, 400):  # crash, recover and continue, three times
        acked = max(acked, await _run_and_kill(path, acks_wanted))
        async with SqliteStorage(path) as s:
            state = await s.load()
        # Every acknowledged entry is there; an unacknowledged save may have landed too.
        assert len(state.entries) >= acked
        for i, entry in enumerate(state.entries, start=1):
            assert (entry.index, entry.term, entry.data) == (i, _term(i), _data(i))
        assert state.hard_state.term >= _term(acked)
        assert state.hard_state.voted_for == "n1"


# --- model-based: random operation sequences -----------------------------------------------------


class Model:
    """The RaftStorage contract in its plainest form: a dict of stored entries."""

    def __init__(self) -> None:
        self.log: dict[int, Entry] = {}
        self.snap = SnapshotMeta()
        self.hard = HardState()

    def last(self) -> int:
        return max([self.snap.index, *self.log])

    def save(self, hard: HardState | None, entries: list[Entry], snap: SnapshotMeta | None) -> bool:
        log, cur = dict(self.log), self.snap
        if snap is not None:
            keep = (snap.index, snap.term) == (cur.index, cur.term) or (
                snap.index in log and log[snap.index].term == snap.term
            )
            log = {i: e for i, e in log.items() if i > snap.index} if keep else {}
            cur = snap
        if entries:
            first = entries[0].index
            if first <= cur.index or first > max([cur.index, *log]) + 1:
                return False
            log = {i: e for i, e in log.items() if i < first}
            log.update((e.index, e) for e in entries)
        self.log, self.snap = log, cur
        if hard is not None:
            self.hard = hard
        return True

    def compact(self, meta: SnapshotMeta, keep_from: int) -> bool:
        if keep_from > meta.index + 1 or meta.index < self.snap.index:
            return False
        self.log = {i: e for i, e in self.log.items() if i >= keep_from}
        self.snap = meta
        return True

    def state(self) -> InitialState:
        after = tuple(self.log[i] for i in sorted(self.log) if i > self.snap.index)
        return InitialState(self.hard, self.snap, after)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("save"),
            st.integers(1, 30),  # first index
            st.integers(0, 6),  # count
            st.integers(1, 5),  # term
            st.booleans(),  # with hard state
        ),
        st.tuples(st.just("snap"), st.integers(0, 30), st.integers(0, 5), st.integers(0, 3)),
        st.tuples(st.just("compact"), st.integers(0, 30), st.integers(0, 5), st.integers(0, 3)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
    ),
    max_size=14,
)


async def _check_against_model(script: list[tuple[Any, ...]], directory: str) -> None:
    model = Model()
    sql = await SqliteStorage(os.path.join(directory, "raft.db")).open()
    mem = MemoryStorage()
    try:
        for op in script:
            kind = op[0]
            if kind == "reopen":
                await sql.close()
                sql = await SqliteStorage(os.path.join(directory, "raft.db")).open()
                continue
            if kind == "save":
                _, first, count, term, with_hard = op
                batch = ents(first, first + count - 1, term, "m")
                hard = HardState(term, "n1") if with_hard else None
                ok = model.save(hard, batch, None)
                calls = [s.save(hard, batch) for s in (sql, mem)]
            elif kind == "snap":
                _, index, term, extra = op
                meta = SnapshotMeta(index, term)
                batch = ents(index + 1, index + extra, term, "s")
                ok = model.save(None, batch, meta)
                calls = [s.save(None, batch, meta) for s in (sql, mem)]
            else:
                _, index, term, back = op
                meta, keep_from = SnapshotMeta(index, term), index + 1 - back
                ok = model.compact(meta, keep_from)
                calls = [s.compact(meta, keep_from) for s in (sql, mem)]
            for call in calls:
                if ok:
                    await call
                else:
                    with pytest.raises(ValueError):
                        await call
            expected = model.state()
            assert await sql.load() == expected
            assert await mem.load() == expected
            assert await sql.last_index() == await mem.last_index() == model.last()
            assert await sql.entries(0, 40) == await mem.entries(0, 40)
        await sql.close()
        sql = await SqliteStorage(os.path.join(directory, "raft.db")).open()
        assert await sql.load() == model.state()
    finally:
        await sql.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(script=ops)
def test_random_operation_sequences_match_the_model(script: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_check_against_model(script, directory))
