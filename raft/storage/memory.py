"""In-memory storage for tests and the simulator.

``MemoryStorage`` follows exactly the semantics of ``SqliteStorage`` (same validation, same
errors), minus the disk: the object itself plays the role of the durable medium, so a
simulated crash is "drop the node, keep the storage object, ``load()`` again".

``MemorySnapshotStore`` follows the semantics of ``FileSnapshotStore``: the same sha256 checks,
the same retain policy, ``SnapshotCorrupt`` on a checksum mismatch. ``corrupt()`` damages a
stored snapshot on purpose, for fault-injection tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from raft.core.types import Entry, HardState, InitialState, SnapshotMeta
from raft.storage.base import SnapshotCorrupt
from raft.storage.snapshots import SnapshotNotFound


class MemoryStorage:
    """``RaftStorage`` in memory. Nothing to open; ``close()`` is a no-op."""

    def __init__(self) -> None:
        self._hard = HardState()
        self._snap = SnapshotMeta()
        # The stored log: _log[i] has index _offset + i (may include a tail kept by compact()).
        self._log: list[Entry] = []
        self._offset = 1
        self.saves = 0  # number of save() calls that wrote something (one fsync each on disk)

    async def load(self) -> InitialState:
        start = self._snap.index + 1 - self._offset
        after = self._log[max(start, 0) :]
        return InitialState(hard_state=self._hard, snapshot=self._snap, entries=tuple(after))

    def _stored_last(self) -> int:
        return self._offset + len(self._log) - 1 if self._log else 0

    def _stored_term(self, index: int) -> int | None:
        pos = index - self._offset
        if self._log and 0 <= pos < len(self._log):
            return self._log[pos].term
        return None

    async def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        if entries:
            first = entries[0].index
            if first < 1:
                raise ValueError(f"log indexes start at 1, got an entry with index {first}")
            for offset, entry in enumerate(entries):
                if entry.index != first + offset:
                    raise ValueError(
                        f"entries to save are not contiguous: expected index {first + offset}, "
                        f"got {entry.index}"
                    )
        # Validate against the state the snapshot would leave, before changing anything.
        snap = self._snap
        log, offset = self._log, self._offset
        if snapshot is not None:
            keeps = (snapshot.index == snap.index and snapshot.term == snap.term) or (
                self._stored_term(snapshot.index) == snapshot.term
            )
            if keeps:
                log = [e for e in log if e.index > snapshot.index]
            else:
                log = []
            offset = snapshot.index + 1 if not log else log[0].index
            snap = snapshot
        last = offset + len(log) - 1 if log else 0
        if entries:
            first = entries[0].index
            if first <= snap.index:
                raise ValueError(f"entry {first} is at or below the snapshot index {snap.index}")
            if first > max(last, snap.index) + 1:
                raise ValueError(
                    f"saving entry {first} would leave a gap: the log ends at "
                    f"{max(last, snap.index)}"
                )
            if not log:
                log, offset = list(entries), first
            else:
                log = log[: first - offset] + list(entries)
        write_hard = hard_state is not None and hard_state != self._hard
        if snapshot is None and not entries and not write_hard:
            return
        self._log, self._offset, self._snap = log, offset, snap
        if hard_state is not None:
            self._hard = hard_state
        self.saves += 1

    async def compact(self, meta: SnapshotMeta, keep_from: int) -> None:
        if keep_from > meta.index + 1:
            raise ValueError(
                f"keep_from {keep_from} would leave a gap after snapshot index {meta.index}"
            )
        if meta.index < self._snap.index:
            raise ValueError(
                f"snapshot {meta.index} is older than the recorded snapshot {self._snap.index}"
            )
        self._log = [e for e in self._log if e.index >= keep_from]
        self._offset = self._log[0].index if self._log else keep_from
        self._snap = meta

    async def close(self) -> None:
        pass

    # --- read helpers (same as SqliteStorage) ------------------------------------------------

    async def entries(self, lo: int, hi: int) -> list[Entry]:
        """Stored entries with lo <= index < hi, in order; unstored ones are absent."""
        if hi <= lo or not self._log:
            return []
        start = max(lo - self._offset, 0)
        end = max(hi - self._offset, 0)
        return self._log[start:end]

    async def term(self, index: int) -> int | None:
        if index == self._snap.index:
            return self._snap.term
        return self._stored_term(index)

    async def last_index(self) -> int:
        return max(self._stored_last(), self._snap.index)

    async def snapshot_meta(self) -> SnapshotMeta:
        return self._snap

    async def hard_state(self) -> HardState:
        return self._hard


# --- snapshots -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stored:
    meta: SnapshotMeta
    data: bytes
    sha256: str


class MemorySnapshotSink:
    def __init__(self, store: MemorySnapshotStore, meta: SnapshotMeta) -> None:
        self._store = store
        self._meta = meta
        self._chunks: list[bytes] = []
        self._hash = hashlib.sha256()
        self._done = False

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("snapshot sink is already committed or aborted")
        self._chunks.append(bytes(data))
        self._hash.update(data)

    def commit(self, expected_sha256: str | None = None) -> str:
        if self._done:
            raise RuntimeError("snapshot sink is already committed or aborted")
        self._done = True
        digest = self._hash.hexdigest()
        data = b"".join(self._chunks)
        self._chunks = []
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise SnapshotCorrupt(
                f"snapshot {self._meta.index}/{self._meta.term}: sha256 {digest} does not match "
                f"the expected {expected_sha256}"
            )
        self._store._put(_Stored(self._meta, data, digest))
        return digest

    def abort(self) -> None:
        self._done = True
        self._chunks = []

    def __enter__(self) -> MemorySnapshotSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()


class MemorySnapshotStore:
    """``SnapshotStore`` in memory, keeping the newest ``retain`` snapshots."""

    def __init__(self, retain: int = 2) -> None:
        if retain < 1:
            raise ValueError("retain must be at least 1")
        self.retain = retain
        self.protected: tuple[int, int] | None = None
        self._snaps: dict[tuple[int, int], _Stored] = {}

    def protect(self, index: int, term: int) -> None:
        """Never delete this snapshot by retention (the log store refers to it)."""
        self.protected = (index, term)

    def create(self, meta: SnapshotMeta) -> MemorySnapshotSink:
        return MemorySnapshotSink(self, meta)

    def _put(self, stored: _Stored) -> None:
        key = (stored.meta.index, stored.meta.term)
        self._snaps[key] = stored
        ordered = sorted(self._snaps, reverse=True)
        for old in ordered[self.retain :]:
            if old != key and old != self.protected:
                del self._snaps[old]

    def latest(self) -> SnapshotMeta | None:
        if not self._snaps:
            return None
        return self._snaps[max(self._snaps)].meta

    def list(self) -> Sequence[SnapshotMeta]:
        return [self._snaps[k].meta for k in sorted(self._snaps, reverse=True)]

    def _verified(self, index: int, term: int) -> _Stored:
        stored = self._snaps.get((index, term))
        if stored is None:
            raise SnapshotNotFound(f"no snapshot at index {index}, term {term}")
        digest = hashlib.sha256(stored.data).hexdigest()
        if digest != stored.sha256:
            raise SnapshotCorrupt(
                f"snapshot {index}/{term}: sha256 {digest} does not match the recorded "
                f"{stored.sha256}"
            )
        return stored

    def read(self, index: int, term: int) -> tuple[SnapshotMeta, bytes, str]:
        stored = self._verified(index, term)
        return stored.meta, stored.data, stored.sha256

    def iter_chunks(self, index: int, term: int, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        """The verified data in chunks; verifies before yielding anything."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        data = self._verified(index, term).data
        return iter([data[i : i + chunk_size] for i in range(0, len(data), chunk_size)])

    def corrupt(self, index: int, term: int, data: bytes | None = None) -> None:
        """Fault injection: replace the stored data (default: flip one bit) keeping the sum."""
        stored = self._snaps[(index, term)]
        if data is None:
            raw = bytearray(stored.data or b"\x00")
            raw[len(raw) // 2] ^= 0x01
            data = bytes(raw)
        self._snaps[(index, term)] = _Stored(stored.meta, data, stored.sha256)
