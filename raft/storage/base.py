"""Storage interfaces the asyncio driver persists through.

The core never touches storage: the driver loads an ``InitialState`` once at start, then
persists each ``Ready`` (one transaction, one fsync) before sending the messages that depend
on it. Snapshots are files: written to a temporary name, checksummed, fsynced, renamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raft.core.types import Entry, HardState, InitialState, SnapshotMeta


class SnapshotCorrupt(Exception):
    """A snapshot file failed its checksum or could not be parsed; it is never applied."""


class RaftStorage(Protocol):
    """Log and stable store together, so one Ready costs one transaction and one fsync."""

    async def load(self) -> InitialState:
        """The durable hard state, the last snapshot's metadata and the log after it."""
        ...

    async def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """Persist durably (fsync) before returning, in one transaction:

        - ``snapshot``: record it as the latest snapshot and delete every log entry with
          index <= snapshot.index (and any entry that conflicts with it);
        - ``entries``: delete stored entries with index >= entries[0].index, then append;
        - ``hard_state``: replace the stored term and vote.
        """
        ...

    async def compact(self, meta: SnapshotMeta, keep_from: int) -> None:
        """Record ``meta`` as the latest snapshot; delete entries with index < keep_from."""
        ...

    async def close(self) -> None: ...


class SnapshotSink(Protocol):
    """A snapshot being written. Nothing is visible until ``commit`` returns."""

    def write(self, data: bytes) -> None: ...

    def commit(self, expected_sha256: str | None = None) -> str:
        """Fsync, verify against ``expected_sha256`` when given, rename into place.

        Returns the hex sha256 of the data. Raises SnapshotCorrupt on a mismatch (and
        discards the file).
        """
        ...

    def abort(self) -> None: ...


class SnapshotStore(Protocol):
    """Snapshot files on disk. Blocking calls: the driver runs them in a worker thread."""

    def create(self, meta: SnapshotMeta) -> SnapshotSink: ...

    def latest(self) -> SnapshotMeta | None:
        """The newest snapshot whose file is complete (checksum not verified here)."""
        ...

    def read(self, index: int, term: int) -> tuple[SnapshotMeta, bytes, str]:
        """The snapshot's meta, its data and sha256, verified. Raises SnapshotCorrupt."""
        ...

    def list(self) -> Sequence[SnapshotMeta]:
        """Complete snapshots, newest first."""
        ...

    def protect(self, index: int, term: int) -> None:
        """Exempt this snapshot from retention: the log store's snapshot row refers to it."""
        ...
