"""Tombstones of deleted KV keys, and the sorted key index the KV table shares with them.

Why tombstones (Consul's ``graveyard.go``): a listing's index is the highest ModifyIndex under
its prefix. Deleting the newest key under a prefix would make that maximum go *down*, and a
blocking client holding the old index would never wake up. So every delete leaves a tombstone
``(key, index of the delete)`` and listings take the maximum over live entries *and* tombstones
under their prefix. A tree delete leaves one tombstone for the prefix (none for the empty
prefix, whose listing uses the whole table index anyway). Tombstones are reaped later, up to an
index that every blocking client is known to have passed (the leader's tombstone GC decides
that; it is not part of this package), after which a listing's index may legitimately go back.

Reaping does not move the ``tombstones`` table index, so the KV table index (``kvs`` and
``tombstones`` together) never goes backwards.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = ["TABLE_TOMBSTONES", "Graveyard", "SortedKeys", "Tombstone"]

TABLE_TOMBSTONES = "tombstones"


class SortedKeys:
    """An ordered set of strings with prefix scans, as a list of sorted chunks.

    Insert and delete cost O(log n) bisects plus a memmove of at most one chunk (``_LOAD`` to
    ``2 * _LOAD`` pointers), so they stay flat where one big ``bisect.insort`` list would move
    megabytes per insert at a million keys. Order is Python's string order, i.e. code point
    order, which is the byte order of the UTF-8 encodings (go-memdb's radix tree order).

    Iterators are live views: materialize them (``list(...)``) before changing the set.
    """

    __slots__ = ("_len", "_lists", "_maxes")

    _LOAD = 512

    def __init__(self, keys: list[str] | None = None) -> None:
        self._lists: list[list[str]] = []
        self._maxes: list[str] = []
        self._len = 0
        if keys:
            ordered = sorted(set(keys))
            step = self._LOAD
            self._lists = [ordered[i : i + step] for i in range(0, len(ordered), step)]
            self._maxes = [chunk[-1] for chunk in self._lists]
            self._len = len(ordered)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for chunk in self._lists:
            yield from chunk

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not self._maxes:
            return False
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            return False
        chunk = self._lists[i]
        j = bisect_left(chunk, key)
        return j < len(chunk) and chunk[j] == key

    def add(self, key: str) -> None:
        """Insert ``key``; the caller guarantees it is not present."""
        maxes = self._maxes
        if not maxes:
            self._lists.append([key])
            maxes.append(key)
            self._len = 1
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            self._lists[i].append(key)
            maxes[i] = key
        else:
            insort(self._lists[i], key)
        self._len += 1
        chunk = self._lists[i]
        if len(chunk) > 2 * self._LOAD:
            half = self._LOAD
            self._lists[i : i + 1] = [chunk[:half], chunk[half:]]
            maxes[i : i + 1] = [chunk[half - 1], chunk[-1]]

    def remove(self, key: str) -> None:
        """Delete ``key``; the caller guarantees it is present."""
        i = bisect_left(self._maxes, key)
        chunk = self._lists[i]
        j = bisect_left(chunk, key)
        if j == len(chunk) or chunk[j] != key:
            raise KeyError(key)
        del chunk[j]
        self._len -= 1
        if not chunk:
            del self._lists[i]
            del self._maxes[i]
        elif j == len(chunk):
            self._maxes[i] = chunk[-1]

    def with_prefix(self, prefix: str) -> Iterator[str]:
        """The keys that start with ``prefix``, in order (all keys for ``""``)."""
        maxes = self._maxes
        i = bisect_left(maxes, prefix)
        if i == len(maxes):
            return
        lists = self._lists
        j = bisect_left(lists[i], prefix)
        while i < len(lists):
            chunk = lists[i]
            for n in range(j, len(chunk)):
                key = chunk[n]
                if not key.startswith(prefix):
                    return
                yield key
            i += 1
            j = 0


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A deleted key (or deleted tree prefix) and the Raft index of the delete."""

    key: str
    index: int


class Graveyard:
    """The tombstones table. Writes go through a ``WriteTxn`` and are undone if it aborts.

    ``hint(index)`` is called after each commit that inserted tombstones (Consul hints its
    tombstone GC this way, so the leader can schedule a reap once the TTL has passed).
    """

    __slots__ = ("_hint", "_indexes", "_keys", "_stones")

    def __init__(self, indexes: IndexTable, hint: Callable[[int], None] | None = None) -> None:
        self._indexes = indexes
        self._hint = hint
        self._stones: dict[str, int] = {}
        self._keys = SortedKeys()

    def __len__(self) -> int:
        return len(self._stones)

    def get(self, key: str) -> Tombstone | None:
        index = self._stones.get(key)
        return None if index is None else Tombstone(key, index)

    def insert_txn(self, tx: WriteTxn, key: str) -> None:
        """Record that ``key`` (or the tree under it) was deleted at ``tx.idx``."""
        old = self._stones.get(key)
        self._stones[key] = tx.idx
        if old is None:
            self._keys.add(key)
        tx.on_undo(lambda: self._put(key, old))
        self._indexes.bump(tx, TABLE_TOMBSTONES)
        hint = self._hint
        if hint is not None:
            idx = tx.idx
            tx.after_commit(lambda: hint(idx))

    def max_index(self, prefix: str) -> int:
        """Highest index among the tombstones whose key starts with ``prefix`` (0 if none)."""
        stones = self._stones
        return max((stones[k] for k in self._keys.with_prefix(prefix)), default=0)

    def reap_txn(self, tx: WriteTxn, index: int) -> int:
        """Remove every tombstone with an index ``<= index``; returns how many. Touches no
        table index (as in Consul): the KV table index never goes backwards."""
        doomed = [(key, i) for key, i in self._stones.items() if i <= index]
        for key, _ in doomed:
            del self._stones[key]
            self._keys.remove(key)

        def undo() -> None:
            for key, i in doomed:
                self._put(key, i)

        if doomed:
            tx.on_undo(undo)
        return len(doomed)

    def dump(self) -> list[Tombstone]:
        """Every tombstone, ordered by key."""
        return [Tombstone(key, self._stones[key]) for key in self._keys]

    def restore(self, stones: list[Tombstone]) -> None:
        """Load tombstones into an empty graveyard (snapshot restore)."""
        self._stones = {stone.key: stone.index for stone in stones}
        self._keys = SortedKeys(list(self._stones))

    def _put(self, key: str, index: int | None) -> None:
        if index is None:
            if self._stones.pop(key, None) is not None:
                self._keys.remove(key)
            return
        if key not in self._stones:
            self._keys.add(key)
        self._stones[key] = index
