"""The KV table: entries, CAS, tree deletes, session locks and lock delays (Consul's ``kvs.go``).

Semantics follow Consul's state store exactly; each rule below is Consul's.

* A plain set (``set_txn``) keeps the entry's CreateIndex and its lock holder (``Session``); the
  caller's Session is ignored. It stores the caller's LockIndex, Flags and Value as given (the
  HTTP layer passes LockIndex 0, as Consul's does). A set that changes nothing (same LockIndex,
  Flags, Value and Session; ``None`` and ``b""`` values compare equal, like Go's nil and empty
  byte slices) writes nothing: no index moves and no watch fires.
* CAS set: ``entry.modify_index`` is the CAS index. 0 means "only if the key is absent";
  otherwise the key must exist with exactly that ModifyIndex. A failed CAS returns False.
* CAS delete: deletes when the key's ModifyIndex equals the CAS index and returns True; returns
  True as well when the key does not exist (idempotent), False on a mismatch.
* Every delete leaves a tombstone (see ``graveyard``); a tree delete leaves one for its prefix
  (none for ``""``). Deleting nothing moves no index.
* Lock (``?acquire=``): the session must be given ("missing session") and exist
  (``invalid session "<id>"``). A key held by another session is not acquired (False). Taking a
  free or new key sets the Session and increments LockIndex (a new key starts at 1); the holder
  re-acquiring only updates Value and Flags (LockIndex unchanged).
* Unlock (``?release=``): only the holder releases (else False, also for a missing key); it
  clears Session, keeps LockIndex, and stores the caller's Value and Flags.
* Lock delay: after a session is invalidated, the keys it held cannot be acquired until its
  LockDelay (capped at 60 s, Consul's ``MaxLockDelay``) has passed. Consul keeps these deadlines
  in memory with wall-clock time and checks them on the leader *before* the Raft apply, since
  replicas' clocks differ. Here the deadlines live in ``LockDelay`` and time is explicit: the
  caller passes ``now`` (seconds, any clock, the same clock for invalidation and acquisition).
  Lock delays are not part of snapshots.

Error texts are Consul's, byte for byte (``agent/consul/state/kvs.go``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from server.filter.strconv import go_quote
from server.state.graveyard import TABLE_TOMBSTONES, Graveyard, SortedKeys
from server.state.watch import ChannelMap, PrefixChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = [
    "MAX_LOCK_DELAY_NS",
    "TABLE_KVS",
    "DirEntry",
    "KVTable",
    "LockDelay",
    "StateError",
]

TABLE_KVS = "kvs"

NS_PER_SECOND = 1_000_000_000

MAX_LOCK_DELAY_NS = 60 * NS_PER_SECOND
"""Consul's ``structs.MaxLockDelay``: a session's lock delay is capped at 60 s."""


class StateError(Exception):
    """A write the state store refuses; ``str(err)`` is Consul's error text for it."""


class DirEntry(NamedTuple):
    """A KV entry (Consul's ``structs.DirEntry``). ``value`` keeps raw bytes; ``None`` is Go's
    nil slice (JSON ``null``), which is what Consul stores for an empty PUT body.

    As an input to a write, only ``key``, ``value``, ``flags``, ``session`` and ``lock_index``
    are read (and ``modify_index``, as the CAS index of ``kvs_set_cas``); the store computes the
    rest. Immutable (a named tuple: four times cheaper to build than a frozen dataclass, which
    matters on the write path); use ``entry._replace(...)`` to derive a changed copy.
    """

    key: str
    value: bytes | None = None
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0

    def same_content(self, other: DirEntry) -> bool:
        """Consul's ``DirEntry.Equal``: everything but the Raft indexes (nil == empty)."""
        return (
            self.lock_index == other.lock_index
            and self.key == other.key
            and self.flags == other.flags
            and (self.value or b"") == (other.value or b"")
            and self.session == other.session
        )

    def to_api(self) -> dict[str, Any]:
        """The entry as Consul's HTTP API shows it (``GET /v1/kv/<key>``): Value in base64
        (``null`` for nil), Session only when the key is locked (Go's ``omitempty``)."""
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": None if self.value is None else base64.b64encode(self.value).decode(),
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


class LockDelay:
    """Per-key deadlines before which a key may not be acquired (Consul's ``delay.go``).

    In memory only, never in snapshots, and not transactional in Consul either; here deadlines
    are recorded only when the invalidating write commits. Expired deadlines are dropped lazily.
    """

    __slots__ = ("_expires", "_prune_at")

    def __init__(self) -> None:
        self._expires: dict[str, float] = {}
        self._prune_at = 1024

    def __len__(self) -> int:
        return len(self._expires)

    def set(self, key: str, now: float, delay_ns: int) -> None:
        """Block ``key`` until ``now + delay`` (delay in nanoseconds, capped at 60 s)."""
        delay_ns = min(delay_ns, MAX_LOCK_DELAY_NS)
        if delay_ns <= 0:
            return
        self._expires[key] = now + delay_ns / NS_PER_SECOND
        if len(self._expires) >= self._prune_at:
            self.prune(now)

    def expiration(self, key: str) -> float | None:
        """The deadline recorded for ``key`` (possibly already past), or None."""
        return self._expires.get(key)

    def active(self, key: str, now: float) -> bool:
        """Whether ``key`` is still blocked at ``now``."""
        expires = self._expires.get(key)
        if expires is None:
            return False
        if expires > now:
            return True
        del self._expires[key]
        return False

    def prune(self, now: float) -> None:
        """Forget every deadline that has passed."""
        self._expires = {k: t for k, t in self._expires.items() if t > now}
        self._prune_at = max(1024, 2 * len(self._expires))


def _nonzero(index: int) -> int:
    # The store never reports index 0: 0 would make blocking clients spin (Consul's HTTP layer
    # turns 0 into 1; we do it here so every caller gets it right).
    return index if index > 0 else 1


class KVTable:
    """The ``kvs`` table: rows by key, a sorted key index, and an index of keys by lock holder.

    Watches: ``key_watches`` (one channel per key, for single-key reads) and ``prefix_watches``
    (one per listed prefix); every committed change to key K closes K's channel and the channel
    of every watched prefix of K. The table-level channel lives in the store's ``IndexTable``.
    """

    __slots__ = (
        "_by_session",
        "_graveyard",
        "_indexes",
        "_keys",
        "_rows",
        "key_watches",
        "prefix_watches",
    )

    def __init__(self, indexes: IndexTable, graveyard: Graveyard) -> None:
        self._indexes = indexes
        self._graveyard = graveyard
        self._rows: dict[str, DirEntry] = {}
        self._keys = SortedKeys()
        self._by_session: dict[str, dict[str, None]] = {}
        self.key_watches = ChannelMap()
        self.prefix_watches = PrefixChannelMap()

    def __len__(self) -> int:
        return len(self._rows)

    # --- reads ---------------------------------------------------------------------------

    def table_index(self) -> int:
        """Highest index of the KV table, tombstones included (never goes backwards)."""
        return self._indexes.get(TABLE_KVS, TABLE_TOMBSTONES)

    def row(self, key: str) -> DirEntry | None:
        return self._rows.get(key)

    def get(self, ws: WatchSet | None, key: str) -> tuple[int, DirEntry | None]:
        """The entry for ``key`` and its ModifyIndex; for a missing key, the table index."""
        if ws is not None:
            ws.add(self.key_watches.channel(key))
        entry = self._rows.get(key)
        if entry is not None:
            return _nonzero(entry.modify_index), entry
        return _nonzero(self.table_index()), None

    def list_entries(self, ws: WatchSet | None, prefix: str) -> tuple[int, list[DirEntry]]:
        """Entries under ``prefix`` in key order. The index is the highest ModifyIndex among
        them and the tombstones under the prefix (the table index for ``""``), falling back to
        the table index when the prefix holds neither."""
        if ws is not None:
            ws.add(self.prefix_watches.channel(prefix))
        rows = self._rows
        entries = [rows[key] for key in self._keys.with_prefix(prefix)]
        if prefix:
            lindex = max((e.modify_index for e in entries), default=0)
            lindex = max(lindex, self._graveyard.max_index(prefix))
        else:
            lindex = 0
        return _nonzero(lindex or self.table_index()), entries

    def keys(self, ws: WatchSet | None, prefix: str, separator: str) -> tuple[int, list[str]]:
        """Key names under ``prefix`` (Consul's ``ListKeys``): with a separator, a key that has
        the separator after the prefix is cut just after its first occurrence there, and each
        cut name is listed once. The index counts every key under the prefix, cut or not."""
        index, entries = self.list_entries(ws, prefix)
        if not separator:
            return index, [e.key for e in entries]
        start = len(prefix)
        width = len(separator)
        names: list[str] = []
        seen: set[str] = set()
        for entry in entries:
            key = entry.key
            at = key.find(separator, start)
            if at < 0:
                names.append(key)
                continue
            name = key[: at + width]
            if name not in seen:
                seen.add(name)
                names.append(name)
        return index, names

    def held_by(self, session_id: str) -> list[str]:
        """Keys locked by a session, in key order."""
        return sorted(self._by_session.get(session_id.lower(), ()))

    def check_session(self, key: str, session: str) -> DirEntry:
        """The entry, if ``session`` holds it (the txn API's ``check-session`` verb)."""
        entry = self._rows.get(key)
        if entry is None:
            raise StateError(f"failed to check session, key {go_quote(key)} doesn't exist")
        if entry.session != session:
            raise StateError(
                f"failed session check for key {go_quote(key)}, current session "
                f"{go_quote(entry.session)} != {go_quote(session)}"
            )
        return entry

    def check_index(self, key: str, cas_index: int) -> DirEntry:
        """The entry, if its ModifyIndex is ``cas_index`` (the txn API's ``check-index``)."""
        entry = self._rows.get(key)
        if entry is None:
            raise StateError(f"failed to check index, key {go_quote(key)} doesn't exist")
        if entry.modify_index != cas_index:
            raise StateError(
                f"failed index check for key {go_quote(key)}, current modify index "
                f"{entry.modify_index} != {cas_index}"
            )
        return entry

    # --- writes --------------------------------------------------------------------------

    def set_txn(self, tx: WriteTxn, entry: DirEntry, *, update_session: bool = False) -> DirEntry:
        """Insert or update; returns the stored row (the existing one if nothing changed).
        Keeps the existing lock holder unless ``update_session`` (lock, unlock, release)."""
        key = entry.key
        existing = self._rows.get(key)
        if update_session:
            session = entry.session
        else:
            session = existing.session if existing is not None else ""
        if (
            existing is not None
            and existing.lock_index == entry.lock_index
            and existing.flags == entry.flags
            and existing.session == session
            and (existing.value or b"") == (entry.value or b"")
        ):
            return existing
        row = DirEntry(
            key,
            entry.value,
            entry.flags,
            session,
            entry.lock_index,
            existing.create_index if existing is not None else tx.idx,
            tx.idx,
        )
        self._write(tx, existing, row)
        return row

    def set_cas_txn(self, tx: WriteTxn, entry: DirEntry) -> bool:
        """Set if ``entry.modify_index`` matches (0: only if absent)."""
        existing = self._rows.get(entry.key)
        cas = entry.modify_index
        if cas == 0:
            if existing is not None:
                return False
        elif existing is None or existing.modify_index != cas:
            return False
        self.set_txn(tx, entry)
        return True

    def delete_txn(self, tx: WriteTxn, key: str) -> bool:
        """Delete one key, leaving a tombstone. Returns whether it existed."""
        existing = self._rows.get(key)
        if existing is None:
            return False
        self._graveyard.insert_txn(tx, key)
        self._remove(tx, existing)
        return True

    def delete_cas_txn(self, tx: WriteTxn, cas_index: int, key: str) -> bool:
        """Delete if the ModifyIndex is ``cas_index``; True also when the key is absent."""
        existing = self._rows.get(key)
        if existing is None:
            return True
        if existing.modify_index != cas_index:
            return False
        self.delete_txn(tx, key)
        return True

    def delete_tree_txn(self, tx: WriteTxn, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many."""
        rows = self._rows
        doomed = [rows[key] for key in self._keys.with_prefix(prefix)]
        if not doomed:
            return 0
        for entry in doomed:
            self._remove(tx, entry)
        if prefix:
            self._graveyard.insert_txn(tx, prefix)
        return len(doomed)

    def lock_txn(
        self, tx: WriteTxn, entry: DirEntry, session_exists: Callable[[str], bool]
    ) -> bool:
        """Acquire ``entry.key`` for ``entry.session`` and store Value/Flags (see the module
        docstring). Lock delay is not checked here; ``StateStore.kvs_lock`` does that."""
        session = entry.session
        if not session:
            raise StateError("missing session")
        if not session_exists(session):
            raise StateError(f"invalid session {go_quote(session)}")
        existing = self._rows.get(entry.key)
        if existing is None:
            lock_index = 1
        elif existing.session == session:
            lock_index = existing.lock_index
        elif existing.session:
            return False
        else:
            lock_index = existing.lock_index + 1
        self.set_txn(tx, entry._replace(lock_index=lock_index), update_session=True)
        return True

    def unlock_txn(self, tx: WriteTxn, entry: DirEntry) -> bool:
        """Release ``entry.key`` if ``entry.session`` holds it, storing Value/Flags."""
        if not entry.session:
            raise StateError("missing session")
        existing = self._rows.get(entry.key)
        if existing is None or existing.session != entry.session:
            return False
        released = DirEntry(entry.key, entry.value, entry.flags, "", existing.lock_index)
        self.set_txn(tx, released, update_session=True)
        return True

    def invalidate_session_txn(self, tx: WriteTxn, session_id: str, delete: bool) -> list[str]:
        """Release (or, for behavior ``delete``, delete) every key a session holds; returns the
        keys, in key order."""
        keys = self.held_by(session_id)
        rows = self._rows
        for key in keys:
            if delete:
                self.delete_txn(tx, key)
            else:
                self.set_txn(tx, rows[key]._replace(session=""), update_session=True)
        return keys

    # --- snapshot ------------------------------------------------------------------------

    def dump(self) -> list[DirEntry]:
        """Every entry, in key order."""
        rows = self._rows
        return [rows[key] for key in self._keys]

    def restore(self, entries: list[DirEntry]) -> None:
        """Load entries into an empty table (snapshot restore)."""
        self._rows = {entry.key: entry for entry in entries}
        self._keys = SortedKeys(list(self._rows))
        self._by_session = {}
        for entry in entries:
            self._link(entry.session, entry.key)

    # --- internals -----------------------------------------------------------------------

    def _write(self, tx: WriteTxn, old: DirEntry | None, new: DirEntry) -> None:
        key = new.key
        self._rows[key] = new
        if old is None:
            self._keys.add(key)
            self._link(new.session, key)
        elif old.session != new.session:
            self._unlink(old.session, key)
            self._link(new.session, key)
        tx.on_undo(lambda: self._put_back(key, old, new))
        self._touch(tx, key)

    def _remove(self, tx: WriteTxn, old: DirEntry) -> None:
        key = old.key
        del self._rows[key]
        self._keys.remove(key)
        self._unlink(old.session, key)
        tx.on_undo(lambda: self._put_back(key, old, None))
        self._touch(tx, key)

    def _touch(self, tx: WriteTxn, key: str) -> None:
        tx.notify(self.key_watches, key)
        tx.notify(self.prefix_watches, key)
        self._indexes.bump(tx, TABLE_KVS)

    def _put_back(self, key: str, old: DirEntry | None, current: DirEntry | None) -> None:
        """Undo one change: make ``old`` the row for ``key`` again (``current`` is the row the
        change left, None when it removed the key)."""
        if current is None:
            assert old is not None
            self._rows[key] = old
            self._keys.add(key)
            self._link(old.session, key)
        elif old is None:
            del self._rows[key]
            self._keys.remove(key)
            self._unlink(current.session, key)
        else:
            self._rows[key] = old
            if old.session != current.session:
                self._unlink(current.session, key)
                self._link(old.session, key)

    def _link(self, session: str, key: str) -> None:
        if session:
            self._by_session.setdefault(session.lower(), {})[key] = None

    def _unlink(self, session: str, key: str) -> None:
        if not session:
            return
        sid = session.lower()
        keys = self._by_session.get(sid)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_session[sid]

    def check_invariants(self) -> None:
        """Assert the secondary indexes agree with the rows (for tests)."""
        assert list(self._keys) == sorted(self._rows), "sorted key index out of sync"
        expected: dict[str, set[str]] = {}
        for entry in self._rows.values():
            if entry.session:
                expected.setdefault(entry.session.lower(), set()).add(entry.key)
        actual = {sid: set(keys) for sid, keys in self._by_session.items()}
        assert actual == expected, "session index out of sync"
