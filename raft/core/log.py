"""The in-memory Raft log held by the core.

Layout: ``base_index``/``base_term`` describe the entry just before the first one kept in
memory (initially the snapshot's last entry); ``entries`` hold ``base_index + 1 .. last_index``
contiguously. Compaction moves the base forward; a received snapshot replaces everything.

Invariants:
- ``base_index <= snapshot.index`` once a snapshot exists (compaction only drops entries the
  snapshot covers) and ``committed >= base_index``.
- ``applied <= committed`` and ``stable <= last_index``.
- entries with index <= ``committed`` are never truncated.
"""

from __future__ import annotations

from raft.core.types import Entry, SnapshotMeta


class LogError(AssertionError):
    """An invariant of the log would be broken: a bug, never a runtime condition."""


class RaftLog:
    __slots__ = ("applied", "base_index", "base_term", "committed", "entries", "snapshot", "stable")

    def __init__(self, snapshot: SnapshotMeta, entries: tuple[Entry, ...]) -> None:
        self.snapshot = snapshot
        self.base_index = snapshot.index
        self.base_term = snapshot.term
        self.entries: list[Entry] = list(entries)
        for offset, e in enumerate(self.entries):
            if e.index != snapshot.index + 1 + offset:
                raise LogError(f"log not contiguous after snapshot {snapshot.index}: {e.index}")
        self.committed = snapshot.index
        self.applied = snapshot.index
        self.stable = self.last_index  # everything loaded came from disk

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.base_term

    @property
    def first_index(self) -> int:
        return self.base_index + 1

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.base_index:
            return self.base_term
        if index < self.base_index or index > self.last_index:
            return None
        return self.entries[index - self.base_index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.base_index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries lo..hi-1 (inclusive of lo), stopping before ``max_bytes`` of payload
        (always at least one entry when lo < hi)."""
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        start = lo - self.base_index - 1
        if start < 0:
            raise LogError(f"slice from compacted index {lo} (base {self.base_index})")
        out = self.entries[start : hi - self.base_index - 1]
        size = 0
        for n, e in enumerate(out):
            size += len(e.data)
            if size > max_bytes and n > 0:
                return out[:n]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up-to-date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def find_conflict_hint(self, index: int) -> tuple[int, int]:
        """For a rejected append at ``index``: (first index of that term, the term)."""
        term = self.term(index)
        if term is None:
            return 0, 0
        first = index
        while first - 1 > self.base_index and self.term(first - 1) == term:
            first -= 1
        return first, term

    def last_index_of_term(self, term: int) -> int | None:
        """The highest index whose entry has ``term`` (scanning back), or None."""
        for e in reversed(self.entries):
            if e.term == term:
                return e.index
            if e.term < term:
                return None
        if self.base_term == term:
            return self.base_index
        return None

    def append(self, entries: list[Entry]) -> int | None:
        """Append leader-provided entries after the log check passed.

        Skips entries we already hold, truncates at the first conflict. Returns the index
        truncated from (None if nothing was truncated).
        """
        truncated_from: int | None = None
        for n, e in enumerate(entries):
            if e.index <= self.base_index:
                continue
            existing = self.term(e.index)
            if existing == e.term:
                continue
            if existing is not None:
                if e.index <= self.committed:
                    raise LogError(f"truncating committed entry {e.index}")
                del self.entries[e.index - self.base_index - 1 :]
                truncated_from = e.index
                self.stable = min(self.stable, e.index - 1)
            if e.index != self.last_index + 1:
                raise LogError(f"append leaves a gap: {e.index} after {self.last_index}")
            self.entries.extend(entries[n:])
            return truncated_from
        return truncated_from

    def append_local(self, entry: Entry) -> None:
        if entry.index != self.last_index + 1:
            raise LogError(f"leader append at {entry.index}, last is {self.last_index}")
        self.entries.append(entry)

    def unstable(self) -> list[Entry]:
        return self.entries[self.stable - self.base_index :]

    def to_apply(self) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        hi = min(self.committed, self.last_index)
        if hi <= self.applied:
            return []
        return self.entries[self.applied - self.base_index : hi - self.base_index]

    def compact(self, meta: SnapshotMeta, keep_from: int) -> int:
        """Record ``meta`` as the latest snapshot and drop entries below ``keep_from``.

        Returns the new first index. Never drops entries after the snapshot.
        """
        if meta.index > self.applied:
            raise LogError(f"snapshot at {meta.index} beyond applied {self.applied}")
        if meta.index > self.snapshot.index:
            self.snapshot = meta
        keep_from = min(max(keep_from, self.base_index + 1), self.snapshot.index + 1)
        drop = keep_from - self.base_index - 1
        if drop > 0:
            new_base = self.entries[drop - 1]
            self.base_index, self.base_term = new_base.index, new_base.term
            del self.entries[:drop]
        return self.base_index + 1

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with a received snapshot."""
        if meta.index < self.committed:
            raise LogError(f"restoring snapshot {meta.index} behind commit {self.committed}")
        self.snapshot = meta
        self.base_index, self.base_term = meta.index, meta.term
        self.entries = []
        self.committed = self.applied = self.stable = meta.index
