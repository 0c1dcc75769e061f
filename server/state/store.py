"""The state store: the server's in-memory tables, their indexes, watches and snapshots.

Pure, synchronous Python with no I/O. The Raft FSM applies writes from one event-loop task and
HTTP reads run on the same thread, so there are no locks: every method runs to completion.

Conventions (Consul's ``agent/consul/state``):

* **Writes take the Raft index** ``idx`` of the log entry being applied; rows record it as their
  CreateIndex/ModifyIndex and the per-table max index (``max_index``) moves up to it.
* **Writes are all-or-nothing.** Each public write opens a ``WriteTxn`` and calls an inner
  ``*_txn(tx, …)`` method; inner methods compose, so the txn endpoint can apply many operations
  atomically::

      with store.write_txn(idx) as tx:
          store.kvs_set_txn(tx, DirEntry("a", b"1"))
          if not store.kvs_delete_cas_txn(tx, 7, "b"):
              raise StateError("...")   # aborts: "a" is rolled back too

  A transaction applies each change to the tables at once (reads inside it see its own writes)
  and records how to undo it; leaving the ``with`` block by an exception runs the undo log
  backwards and re-raises, leaving tables, indexes and lock delays exactly as before. Watches
  fire only on commit, after every change is in place, and never for an aborted transaction.
  One write transaction at a time (nesting is a bug and raises ``RuntimeError``).
* **Reads take an optional WatchSet** and return ``(index, result)``. The index is never 0:
  where Consul's store would say 0 (nothing written yet) it says 1, which Consul's HTTP layer
  does anyway (index 1 is never a real write: Raft's first entry is its configuration).
* **Deletes leave tombstones** (``graveyard``) so list indexes never go backwards;
  ``reap_tombstones`` drops them later.
* **Abandon**: when a snapshot restore replaces the store, the old one is ``abandon()``-ed: every
  channel it ever handed out closes, so every blocking query wakes up and re-reads from the new
  store. A blocking loop should also add ``abandon_channel`` to each of its watch sets (as
  Consul's does with ``AbandonCh``).

Snapshots (``snapshot``/``restore``) hold the KV entries, tombstones, sessions and the table
indexes, encoded deterministically (orjson, sorted keys, rows in key order): the same state
always gives the same bytes. Watches and lock delays are not part of a snapshot.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from server.state.catalog import CatalogTable
from server.state.config_entries import ConfigEntryTable
from server.state.connect_ca import ConnectCATable
from server.state.coordinates import CoordinateTable
from server.state.federation_states import FederationStateTable
from server.state.graveyard import TABLE_TOMBSTONES, Graveyard, Tombstone
from server.state.kvs import TABLE_KVS, DirEntry, KVTable, LockDelay, StateError
from server.state.prepared_queries import PreparedQueryTable
from server.state.sessions import (
    TABLE_SESSIONS,
    CheckStatus,
    NodeExists,
    ServiceCheck,
    Session,
    SessionTable,
)
from server.state.system import SystemTable
from server.state.tables import StateTable
from server.state.watch import (
    ChannelMap,
    WatchChannel,
    WatchSet,
    raise_callback_errors,
)

__all__ = ["SNAPSHOT_FORMAT", "IndexTable", "StateStore", "WriteTxn"]

SNAPSHOT_FORMAT = 1


class WriteTxn:
    """A write transaction at Raft index ``idx`` (see the module docstring).

    Tables call ``on_undo`` for every change they make, ``notify`` for every watch channel key
    the change touches, and ``after_commit`` for effects outside the tables (lock delays,
    tombstone GC hints). ``commit`` runs the after-commit hooks then fires the watches;
    ``abort`` runs the undo log backwards.
    """

    __slots__ = ("_after", "_dirty", "_done", "_store", "_undo", "idx")

    def __init__(self, store: StateStore, idx: int) -> None:
        self.idx = idx
        self._store = store
        self._undo: list[Callable[[], None]] = []
        self._dirty: list[tuple[ChannelMap, str]] = []
        self._after: list[Callable[[], None]] = []
        self._done = False

    @property
    def open(self) -> bool:
        return not self._done

    def on_undo(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def notify(self, channels: ChannelMap, key: str) -> None:
        """Close ``channels``' channel(s) for ``key`` when the transaction commits."""
        self._dirty.append((channels, key))

    def after_commit(self, hook: Callable[[], None]) -> None:
        self._after.append(hook)

    def commit(self) -> None:
        """Make the changes final and fire the watches. If watch callbacks raise, their
        exceptions are re-raised as one ExceptionGroup after everything fired; the changes
        stay committed."""
        self._finish()
        self._undo = []
        for hook in self._after:
            hook()
        errors: list[Exception] = []
        for channels, key in self._dirty:
            if channels._channels:  # most writes have no watcher at all
                raised = channels.notify(key)
                if raised:
                    errors.extend(raised)
        self._dirty = []
        raise_callback_errors(errors)

    def abort(self) -> None:
        """Undo every change, newest first; nothing fires. Idempotent after commit/abort."""
        if self._done:
            return
        self._finish()
        undo = self._undo
        self._undo = []
        self._dirty = []
        self._after = []
        for step in reversed(undo):
            step()

    def __enter__(self) -> WriteTxn:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _finish(self) -> None:
        if self._done:
            raise RuntimeError("transaction already finished")
        self._done = True
        if self._store._txn is self:
            self._store._txn = None


class IndexTable:
    """The highest Raft index that modified each table (Consul's ``index`` table), and the
    table-level watch channels, closed by every committed write to their table."""

    __slots__ = ("_max", "watches")

    def __init__(self) -> None:
        self._max: dict[str, int] = {}
        self.watches = ChannelMap()

    def get(self, *tables: str) -> int:
        """The highest index over ``tables`` (0 if none was ever written)."""
        current = self._max
        return max((current.get(table, 0) for table in tables), default=0)

    def channel(self, table: str) -> WatchChannel:
        return self.watches.channel(table)

    def bump(self, tx: WriteTxn, table: str) -> None:
        """Record that ``tx`` writes ``table``: its index moves up to ``tx.idx``."""
        old = self._max.get(table, 0)
        if tx.idx > old:
            self._max[table] = tx.idx
            tx.on_undo(lambda: self._set(table, old))
        tx.notify(self.watches, table)

    def items(self) -> dict[str, int]:
        return dict(self._max)

    def restore(self, indexes: dict[str, int]) -> None:
        self._max = {table: int(index) for table, index in indexes.items() if index}

    def _set(self, table: str, index: int) -> None:
        if index:
            self._max[table] = index
        else:
            self._max.pop(table, None)


class StateStore:
    """The server's state: KV entries, tombstones and sessions (more tables to come).

    ``node_exists`` and ``check_status`` stand in for the catalog until it exists (see
    ``sessions``); ``tombstone_hint(index)`` is told about each commit that created tombstones
    (for the leader's tombstone GC).
    """

    def __init__(
        self,
        *,
        node_exists: NodeExists | None = None,
        check_status: CheckStatus | None = None,
        tombstone_hint: Callable[[int], None] | None = None,
    ) -> None:
        self._tombstone_hint = tombstone_hint
        self._indexes = IndexTable()
        # The tables beyond KV and sessions, one module each (see ``server.state.tables``);
        # endpoints use them directly: ``store.catalog.<read>(ws, ...)``.
        self.catalog = CatalogTable(
            self._indexes,
            sessions=self,
            on_node_delete=lambda tx, node: self.coordinates.delete_node_txn(tx, node),
        )
        self.coordinates = CoordinateTable(self._indexes)
        self.config_entries = ConfigEntryTable(self._indexes)
        self.prepared_queries = PreparedQueryTable(self._indexes)
        self.connect_ca = ConnectCATable(self._indexes)
        self.system = SystemTable(self._indexes)
        self.federation_states = FederationStateTable(self._indexes)
        self._tables: tuple[StateTable, ...] = (
            self.catalog,
            self.coordinates,
            self.config_entries,
            self.prepared_queries,
            self.connect_ca,
            self.system,
            self.federation_states,
        )
        # Sessions ask the catalog whether their node and checks exist (tests may stub it).
        self._node_exists = node_exists or self.catalog.node_exists
        self._check_status = check_status or self.catalog.check_status
        self._graveyard = Graveyard(self._indexes, tombstone_hint)
        self._kvs = KVTable(self._indexes, self._graveyard)
        self._lock_delay = LockDelay()
        self._sessions = SessionTable(self._indexes, self._kvs, self._lock_delay)
        self._txn: WriteTxn | None = None
        self._abandon = WatchChannel()
        self._abandoned = False

    # --- transactions, indexes, watches --------------------------------------------------

    def write_txn(self, idx: int) -> WriteTxn:
        """Open the write transaction for Raft index ``idx`` (use it as a context manager)."""
        if self._abandoned:
            raise RuntimeError("write to an abandoned state store")
        if self._txn is not None:
            raise RuntimeError("a write transaction is already open")
        tx = WriteTxn(self, idx)
        self._txn = tx
        return tx

    def max_index(self, *tables: str) -> int:
        """The highest index that modified any of ``tables`` (0 if none ever was)."""
        return self._indexes.get(*tables)

    def table_channel(self, table: str) -> WatchChannel:
        """A channel that closes on the next committed write to ``table``."""
        return self._indexes.channel(table)

    @property
    def abandon_channel(self) -> WatchChannel:
        """Closes when this store is abandoned (replaced by a restored one)."""
        return self._abandon

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def abandon(self) -> None:
        """Close every watch channel this store handed out or will hand out, then the abandon
        channel; further writes raise. Reads still work (on the old data)."""
        if self._abandoned:
            return
        self._abandoned = True
        errors: list[Exception] = []
        for channels in (
            self._kvs.key_watches,
            self._kvs.prefix_watches,
            self._sessions.id_watches,
            self._sessions.node_watches,
            self._indexes.watches,
            *(channels for table in self._tables for channels in table.channel_maps()),
        ):
            errors.extend(channels.close_all())
        errors.extend(self._abandon._close())
        raise_callback_errors(errors)

    # --- KV reads ------------------------------------------------------------------------

    def kvs_get(self, ws: WatchSet | None, key: str) -> tuple[int, DirEntry | None]:
        """One entry. Index: its ModifyIndex; for a missing key the KV table index
        (tombstones included), so X-Consul-Index never goes backwards."""
        return self._kvs.get(ws, key)

    def kvs_list(self, ws: WatchSet | None, prefix: str) -> tuple[int, list[DirEntry]]:
        """Entries under ``prefix`` in key order. Index: the highest ModifyIndex among them and
        the tombstones under the prefix, else the KV table index."""
        return self._kvs.list_entries(ws, prefix)

    def kvs_keys(
        self, ws: WatchSet | None, prefix: str, separator: str = ""
    ) -> tuple[int, list[str]]:
        """Key names under ``prefix``, cut after ``separator`` (Consul's ``?keys&separator=``);
        same index as ``kvs_list``."""
        return self._kvs.keys(ws, prefix, separator)

    def kvs_lock_delay(self, key: str) -> float | None:
        """When the lock delay on ``key`` ends (in the caller's ``now`` clock), or None."""
        return self._lock_delay.expiration(key)

    def kvs_check_session(self, key: str, session: str) -> DirEntry:
        """The entry if ``session`` holds it, else ``StateError`` (txn ``check-session``)."""
        return self._kvs.check_session(key, session)

    def kvs_check_index(self, key: str, cas_index: int) -> DirEntry:
        """The entry if its ModifyIndex is ``cas_index``, else ``StateError``."""
        return self._kvs.check_index(key, cas_index)

    # --- KV writes -----------------------------------------------------------------------

    def kvs_set_txn(self, tx: WriteTxn, entry: DirEntry) -> DirEntry:
        return self._kvs.set_txn(tx, entry)

    def kvs_set(self, idx: int, entry: DirEntry) -> DirEntry:
        """Insert or update a key (keeps its CreateIndex and lock holder). Returns the row."""
        tx = self.write_txn(idx)  # what ``with`` does, spelled out: this is the hot path
        try:
            row = self._kvs.set_txn(tx, entry)
        except BaseException:
            tx.abort()
            raise
        tx.commit()
        return row

    def kvs_set_cas_txn(self, tx: WriteTxn, entry: DirEntry) -> bool:
        return self._kvs.set_cas_txn(tx, entry)

    def kvs_set_cas(self, idx: int, entry: DirEntry) -> bool:
        """Set only if ``entry.modify_index`` is the key's ModifyIndex (0: only if absent)."""
        with self.write_txn(idx) as tx:
            return self._kvs.set_cas_txn(tx, entry)

    def kvs_delete_txn(self, tx: WriteTxn, key: str) -> bool:
        return self._kvs.delete_txn(tx, key)

    def kvs_delete(self, idx: int, key: str) -> bool:
        """Delete one key (idempotent). Returns whether it existed."""
        with self.write_txn(idx) as tx:
            return self._kvs.delete_txn(tx, key)

    def kvs_delete_cas_txn(self, tx: WriteTxn, cas_index: int, key: str) -> bool:
        return self._kvs.delete_cas_txn(tx, cas_index, key)

    def kvs_delete_cas(self, idx: int, cas_index: int, key: str) -> bool:
        """Delete only if the key's ModifyIndex is ``cas_index`` (True if the key is absent)."""
        with self.write_txn(idx) as tx:
            return self._kvs.delete_cas_txn(tx, cas_index, key)

    def kvs_delete_tree_txn(self, tx: WriteTxn, prefix: str) -> int:
        return self._kvs.delete_tree_txn(tx, prefix)

    def kvs_delete_tree(self, idx: int, prefix: str) -> int:
        """Delete every key under ``prefix``. Returns how many."""
        with self.write_txn(idx) as tx:
            return self._kvs.delete_tree_txn(tx, prefix)

    def kvs_lock_txn(self, tx: WriteTxn, entry: DirEntry, now: float | None = None) -> bool:
        if now is not None and self._lock_delay.active(entry.key, now):
            return False
        return self._kvs.lock_txn(tx, entry, self._sessions.exists)

    def kvs_lock(self, idx: int, entry: DirEntry, now: float | None = None) -> bool:
        """Acquire ``entry.key`` for ``entry.session``, storing Value and Flags. False if
        another session holds it or, when ``now`` is given, while the key is under a lock
        delay (Consul checks that on the leader before the Raft apply: the FSM passes None).
        Raises ``StateError`` ("missing session", ``invalid session "<id>"``)."""
        with self.write_txn(idx) as tx:
            return self.kvs_lock_txn(tx, entry, now)

    def kvs_unlock_txn(self, tx: WriteTxn, entry: DirEntry) -> bool:
        return self._kvs.unlock_txn(tx, entry)

    def kvs_unlock(self, idx: int, entry: DirEntry) -> bool:
        """Release ``entry.key`` if ``entry.session`` holds it, storing Value and Flags."""
        with self.write_txn(idx) as tx:
            return self._kvs.unlock_txn(tx, entry)

    def reap_tombstones_txn(self, tx: WriteTxn, index: int) -> int:
        return self._graveyard.reap_txn(tx, index)

    def reap_tombstones(self, index: int) -> int:
        """Drop every tombstone with an index ``<= index``; returns how many. Moves no table
        index and fires no watch, so it needs no Raft index of its own."""
        with self.write_txn(0) as tx:
            return self._graveyard.reap_txn(tx, index)

    # --- sessions ------------------------------------------------------------------------

    def session_get(self, ws: WatchSet | None, session_id: str) -> tuple[int, Session | None]:
        """One session; the index is the sessions table index."""
        return self._sessions.get(ws, session_id)

    def session_list(self, ws: WatchSet | None) -> tuple[int, list[Session]]:
        """Every session, ordered by ID."""
        return self._sessions.list_all(ws)

    def node_sessions(self, ws: WatchSet | None, node: str) -> tuple[int, list[Session]]:
        """The sessions of one node, ordered by ID."""
        return self._sessions.node_sessions(ws, node)

    def check_sessions(self, node: str, check_id: str) -> list[Session]:
        """The sessions that depend on a node's check."""
        return self._sessions.check_sessions(node, check_id)

    def session_renew(self, session_id: str) -> tuple[int, Session | None]:
        """What Consul's renew reads: renewing writes nothing (TTL timers live on the leader)."""
        return self._sessions.get(None, session_id)

    def session_create_txn(self, tx: WriteTxn, session: Session) -> Session:
        return self._sessions.create_txn(tx, session, self._node_exists, self._check_status)

    def session_create(self, idx: int, session: Session) -> Session:
        """Insert a session (see ``sessions`` for the checks). Returns the stored row."""
        with self.write_txn(idx) as tx:
            return self.session_create_txn(tx, session)

    def session_destroy_txn(self, tx: WriteTxn, session_id: str, now: float | None = None) -> bool:
        existed = self._sessions.destroy_txn(tx, session_id, now)
        if existed:  # as Consul: the prepared queries bound to the session go with it
            self.prepared_queries.delete_session_txn(tx, session_id)
        return existed

    def session_destroy(self, idx: int, session_id: str, now: float | None = None) -> bool:
        """Delete and invalidate a session: its keys are released (behavior ``release``) or
        deleted (``delete``) at ``idx``, and get its lock delay counted from ``now`` (none
        when ``now`` is None). Idempotent; returns whether the session existed."""
        with self.write_txn(idx) as tx:
            return self.session_destroy_txn(tx, session_id, now)

    # --- snapshot and restore ------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Every table and index as deterministic bytes (see ``restore``)."""
        document: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "index": self._indexes.items(),
            "kvs": [_encode_entry(entry) for entry in self._kvs.dump()],
            "tombstones": [[stone.key, stone.index] for stone in self._graveyard.dump()],
            "sessions": [_encode_session(session) for session in self._sessions.dump()],
        }
        for table in self._tables:
            document[table.name] = table.dump()
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def restore(
        cls,
        blob: bytes,
        *,
        node_exists: NodeExists | None = None,
        check_status: CheckStatus | None = None,
        tombstone_hint: Callable[[int], None] | None = None,
    ) -> StateStore:
        """A new store holding a snapshot's state. The caller abandons the old store."""
        try:
            document = orjson.loads(blob)
            if document.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported snapshot format {document.get('format')!r}")
            store = cls(
                node_exists=node_exists,
                check_status=check_status,
                tombstone_hint=tombstone_hint,
            )
            store._indexes.restore(document["index"])
            store._kvs.restore([_decode_entry(row) for row in document["kvs"]])
            store._graveyard.restore([Tombstone(k, int(i)) for k, i in document["tombstones"]])
            store._sessions.restore([_decode_session(row) for row in document["sessions"]])
            for table in store._tables:
                table.restore(document.get(table.name))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"invalid state snapshot: {exc}") from exc
        return store

    def check_invariants(self) -> None:
        """Assert that secondary indexes agree with the rows (for tests)."""
        self._kvs.check_invariants()
        for table in self._tables:
            table.check_invariants()
        for session in self._sessions.dump():
            assert self._sessions.row(session.id) is session
        assert self._indexes.get(TABLE_KVS, TABLE_TOMBSTONES) >= max(
            (entry.modify_index for entry in self._kvs.dump()), default=0
        )
        assert self._indexes.get(TABLE_SESSIONS) >= max(
            (session.modify_index for session in self._sessions.dump()), default=0
        )


def _encode_entry(entry: DirEntry) -> list[Any]:
    value = None if entry.value is None else base64.b64encode(entry.value).decode()
    return [
        entry.key,
        value,
        entry.flags,
        entry.session,
        entry.lock_index,
        entry.create_index,
        entry.modify_index,
    ]


def _decode_entry(row: list[Any]) -> DirEntry:
    key, value, flags, session, lock_index, create_index, modify_index = row
    return DirEntry(
        key=str(key),
        value=None if value is None else base64.b64decode(value, validate=True),
        flags=int(flags),
        session=str(session),
        lock_index=int(lock_index),
        create_index=int(create_index),
        modify_index=int(modify_index),
    )


def _encode_session(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "node": session.node,
        "name": session.name,
        "lock_delay": session.lock_delay,
        "behavior": session.behavior,
        "ttl": session.ttl,
        "node_checks": None if session.node_checks is None else list(session.node_checks),
        "service_checks": (
            None
            if session.service_checks is None
            else [[check.id, check.namespace] for check in session.service_checks]
        ),
        "checks": None if session.checks is None else list(session.checks),
        "create_index": session.create_index,
        "modify_index": session.modify_index,
    }


def _decode_session(row: dict[str, Any]) -> Session:
    node_checks = row["node_checks"]
    service_checks = row["service_checks"]
    checks = row["checks"]
    return Session(
        id=str(row["id"]),
        node=str(row["node"]),
        name=str(row["name"]),
        lock_delay=int(row["lock_delay"]),
        behavior=str(row["behavior"]),
        ttl=str(row["ttl"]),
        node_checks=None if node_checks is None else tuple(str(c) for c in node_checks),
        service_checks=(
            None
            if service_checks is None
            else tuple(ServiceCheck(str(i), str(ns)) for i, ns in service_checks)
        ),
        checks=None if checks is None else tuple(str(c) for c in checks),
        create_index=int(row["create_index"]),
        modify_index=int(row["modify_index"]),
    )
