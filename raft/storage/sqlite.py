"""Durable Raft log and stable store in one SQLite database, through aiosqlite.

One file holds three tables:

- ``log``: one row per entry (``idx`` is the INTEGER PRIMARY KEY, so rows live in index order
  in the table's own b-tree; ``index`` itself is an SQL keyword, hence ``idx``);
- ``stable``: a single row with the current term and vote;
- ``snapshot``: a single row with the metadata of the latest snapshot (the membership is stored
  as ``Membership.encode()``).

The database runs in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL has
been fsynced. ``save()`` persists a whole ``Ready`` in one transaction, so one ``Ready`` costs
one fsync however many entries it carries (group commit).

Usage::

    storage = await SqliteStorage(path).open()   # or: async with SqliteStorage(path) as storage:
    state = await storage.load()
    ...
    await storage.close()

Only one ``SqliteStorage`` may have a given file open at a time: it caches the last index, the
snapshot metadata and the hard state, and assumes it is the only writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import aiosqlite

from raft.core.types import Entry, EntryKind, HardState, InitialState, Membership, SnapshotMeta

SCHEMA_VERSION = 1

_EMPTY_MEMBERSHIP = Membership().encode()

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS log (
    idx  INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS stable (
    id        INTEGER PRIMARY KEY CHECK (id = 0),
    term      INTEGER NOT NULL,
    voted_for TEXT
);
CREATE TABLE IF NOT EXISTS snapshot (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    idx        INTEGER NOT NULL,
    term       INTEGER NOT NULL,
    membership BLOB    NOT NULL
);
INSERT OR IGNORE INTO stable (id, term, voted_for) VALUES (0, 0, NULL);
INSERT OR IGNORE INTO snapshot (id, idx, term, membership)
    VALUES (0, 0, 0, X'{_EMPTY_MEMBERSHIP.hex()}');
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

_INSERT_ENTRY = "INSERT INTO log (idx, term, kind, data) VALUES (?, ?, ?, ?)"
_DELETE_FROM = "DELETE FROM log WHERE idx >= ?"
_DELETE_BELOW = "DELETE FROM log WHERE idx < ?"
_DELETE_UPTO = "DELETE FROM log WHERE idx <= ?"
_DELETE_ALL = "DELETE FROM log"
_UPDATE_STABLE = "UPDATE stable SET term = ?, voted_for = ? WHERE id = 0"
_UPDATE_SNAPSHOT = "UPDATE snapshot SET idx = ?, term = ?, membership = ? WHERE id = 0"
_SELECT_STABLE = "SELECT term, voted_for FROM stable WHERE id = 0"
_SELECT_SNAPSHOT = "SELECT idx, term, membership FROM snapshot WHERE id = 0"
_SELECT_LAST = "SELECT MAX(idx) FROM log"
_SELECT_TERM = "SELECT term FROM log WHERE idx = ?"
_SELECT_AFTER = "SELECT idx, term, kind, data FROM log WHERE idx > ? ORDER BY idx"
_SELECT_RANGE = "SELECT idx, term, kind, data FROM log WHERE idx >= ? AND idx < ? ORDER BY idx"


class LogCorrupt(Exception):
    """The stored log is not a valid Raft log (a gap, an unknown entry kind, a bad row)."""


def _entry_from_row(row: Any) -> Entry:
    idx, term, kind, data = row[0], row[1], row[2], row[3]
    try:
        return Entry(int(idx), int(term), EntryKind(kind), bytes(data))
    except (TypeError, ValueError) as exc:
        raise LogCorrupt(f"unreadable log entry at index {idx!r}: {exc}") from exc


def _check_batch(entries: Sequence[Entry]) -> None:
    first = entries[0].index
    if first < 1:
        raise ValueError(f"log indexes start at 1, got an entry with index {first}")
    for offset, entry in enumerate(entries):
        if entry.index != first + offset:
            raise ValueError(
                f"entries to save are not contiguous: expected index {first + offset}, "
                f"got {entry.index}"
            )


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteStorage:
    """``RaftStorage`` on a single SQLite file. Construct, then ``await storage.open()``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        # Caches of what is committed on disk; only ever updated after a successful commit.
        self._last = 0  # highest index stored in the log table, 0 when the table is empty
        self._snap = SnapshotMeta()
        self._hard = HardState()

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> SqliteStorage:
        """Open (creating if needed) the database and its schema. Returns ``self``."""
        if self._db is not None:
            raise RuntimeError("SqliteStorage is already open")
        db = await aiosqlite.connect(self.path)
        try:
            mode = await db.execute_fetchall("PRAGMA journal_mode=WAL")
            if not mode or str(next(iter(mode))[0]).lower() != "wal":
                raise RuntimeError(f"could not switch {self.path} to WAL mode: {mode!r}")
            await db.execute("PRAGMA synchronous=FULL")
            rows = await db.execute_fetchall("PRAGMA user_version")
            version = int(next(iter(rows))[0])
            if version == 0:
                await db.executescript(_SCHEMA)
            elif version != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: unsupported schema version {version} "
                    f"(this code reads version {SCHEMA_VERSION})"
                )
            self._db = db
            await self._refresh()
            # The database file, or the WAL file (deleted at the last clean close), may have
            # just been created: make their directory entries durable before any commit counts.
            await asyncio.to_thread(_fsync_dir, os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            self._db = None
            await db.close()
            raise
        return self

    async def close(self) -> None:
        """Close the database, after any save in progress has finished."""
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    async def __aenter__(self) -> SqliteStorage:
        if self._db is None:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("SqliteStorage is not open (call `await storage.open()`)")
        return self._db

    async def _refresh(self) -> tuple[HardState, SnapshotMeta]:
        db = self._conn()
        stable = next(iter(await db.execute_fetchall(_SELECT_STABLE)))
        snap = next(iter(await db.execute_fetchall(_SELECT_SNAPSHOT)))
        last = next(iter(await db.execute_fetchall(_SELECT_LAST)))[0]
        try:
            hard = HardState(int(stable[0]), None if stable[1] is None else str(stable[1]))
            meta = SnapshotMeta(int(snap[0]), int(snap[1]), Membership.decode(bytes(snap[2])))
        except (TypeError, ValueError) as exc:
            raise LogCorrupt(
                f"{self.path}: unreadable stable state or snapshot row: {exc}"
            ) from exc
        self._hard, self._snap, self._last = hard, meta, int(last or 0)
        return hard, meta

    # --- RaftStorage -------------------------------------------------------------------------

    async def load(self) -> InitialState:
        """Hard state, latest snapshot meta and the log after the snapshot (validated)."""
        async with self._lock:
            hard, snap = await self._refresh()
            rows = await self._conn().execute_fetchall(_SELECT_AFTER, (snap.index,))
            entries = tuple(_entry_from_row(row) for row in rows)
        expected = snap.index + 1
        for entry in entries:
            if entry.index != expected:
                raise LogCorrupt(
                    f"{self.path}: gap in the log after snapshot {snap.index}: expected index "
                    f"{expected}, found {entry.index}"
                )
            expected += 1
        return InitialState(hard_state=hard, snapshot=snap, entries=entries)

    async def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """Persist a Ready in one transaction and one fsync. See ``RaftStorage.save``.

        Raises ``ValueError`` (and writes nothing) when ``entries`` are not contiguous, would
        leave a gap after the current last index, or start at or below the snapshot index.
        """
        if entries:
            _check_batch(entries)
        async with self._lock:
            db = self._conn()
            last = self._last
            snap = self._snap
            # Plan every statement before executing any, so invalid input writes nothing.
            snapshot_keeps_log = False
            if snapshot is not None:
                if snapshot.index == snap.index and snapshot.term == snap.term:
                    snapshot_keeps_log = True
                elif snapshot.index <= last:
                    rows = await db.execute_fetchall(_SELECT_TERM, (snapshot.index,))
                    found = [int(r[0]) for r in rows]
                    snapshot_keeps_log = found == [snapshot.term]
                if not snapshot_keeps_log or last <= snapshot.index:
                    last = 0
                snap = snapshot
            if entries:
                first = entries[0].index
                if first <= snap.index:
                    raise ValueError(
                        f"entry {first} is at or below the snapshot index {snap.index}"
                    )
                if first > max(last, snap.index) + 1:
                    raise ValueError(
                        f"saving entry {first} would leave a gap: the log ends at "
                        f"{max(last, snap.index)}"
                    )
            write_hard = hard_state is not None and hard_state != self._hard
            if snapshot is None and not entries and not write_hard:
                return
            try:
                if snapshot is not None:
                    if snapshot_keeps_log:
                        await db.execute(_DELETE_UPTO, (snapshot.index,))
                    else:
                        await db.execute(_DELETE_ALL)
                    await db.execute(
                        _UPDATE_SNAPSHOT,
                        (snapshot.index, snapshot.term, snapshot.membership.encode()),
                    )
                if entries:
                    if entries[0].index <= last:
                        await db.execute(_DELETE_FROM, (entries[0].index,))
                    await db.executemany(
                        _INSERT_ENTRY, [(e.index, e.term, int(e.kind), e.data) for e in entries]
                    )
                    last = entries[-1].index
                if write_hard:
                    assert hard_state is not None
                    await db.execute(_UPDATE_STABLE, (hard_state.term, hard_state.voted_for))
                await db.commit()
            except BaseException:
                await self._rollback()
                raise
            self._last = last
            self._snap = snap
            if write_hard:
                assert hard_state is not None
                self._hard = hard_state

    async def compact(self, meta: SnapshotMeta, keep_from: int) -> None:
        """Record ``meta`` as the latest snapshot and delete entries with index < keep_from.

        ``keep_from`` may be below ``meta.index + 1`` to keep a tail of already-snapshotted
        entries for slow followers. Raises ``ValueError`` if ``keep_from > meta.index + 1``
        (that would open a gap after the snapshot) or if ``meta`` is older than the snapshot
        already recorded.
        """
        if keep_from > meta.index + 1:
            raise ValueError(
                f"keep_from {keep_from} would leave a gap after snapshot index {meta.index}"
            )
        async with self._lock:
            db = self._conn()
            if meta.index < self._snap.index:
                raise ValueError(
                    f"snapshot {meta.index} is older than the recorded snapshot {self._snap.index}"
                )
            try:
                await db.execute(_DELETE_BELOW, (keep_from,))
                await db.execute(
                    _UPDATE_SNAPSHOT, (meta.index, meta.term, meta.membership.encode())
                )
                await db.commit()
            except BaseException:
                await self._rollback()
                raise
            self._snap = meta
            if self._last < keep_from:
                self._last = 0

    async def _rollback(self) -> None:
        if self._db is None:
            return
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._db.rollback()
        # Whatever happened, re-read the committed state so the caches cannot drift.
        with contextlib.suppress(sqlite3.Error, ValueError, LogCorrupt):
            await self._refresh()

    # --- read helpers ------------------------------------------------------------------------

    async def entries(self, lo: int, hi: int) -> list[Entry]:
        """Stored entries with lo <= index < hi, in order.

        Entries that are not stored (compacted away, or past the end) are simply absent, so
        callers needing the full range should check ``len()`` against ``hi - lo``.
        """
        if hi <= lo:
            return []
        async with self._lock:  # never observe a save that is not committed yet
            rows = await self._conn().execute_fetchall(_SELECT_RANGE, (lo, hi))
        return [_entry_from_row(row) for row in rows]

    async def term(self, index: int) -> int | None:
        """The term of the entry at ``index`` (the snapshot's term at its index), else None."""
        async with self._lock:
            if index == self._snap.index:
                return self._snap.term
            rows = await self._conn().execute_fetchall(_SELECT_TERM, (index,))
        for row in rows:
            return int(row[0])
        return None

    async def last_index(self) -> int:
        """The index of the last log entry, or the snapshot's index when the log is empty."""
        self._conn()
        return max(self._last, self._snap.index)

    async def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot metadata recorded (by ``save`` or ``compact``)."""
        self._conn()
        return self._snap

    async def hard_state(self) -> HardState:
        self._conn()
        return self._hard
