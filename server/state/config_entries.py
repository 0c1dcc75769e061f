"""State table ``config_entries``: Consul's centralized configuration entries.

One row per ``(Kind, Name)``. A row is the entry's JSON object as the HTTP API shows it
(PascalCase fields, already normalised and validated by the endpoint) including its
``CreateIndex``/``ModifyIndex``. Rows are plain dicts handed out as copies, so callers may
change what they get.

Indexes follow Consul's ``config-entries`` table: every read answers the table's max index
(never 0). Watches: one channel per kind (``kind_watches``) fired by any write to that kind;
readers that look at many kinds (the discovery chain compiler) use the table channel.

Writes (all through one ``WriteTxn``):

* ``upsert_txn`` inserts or replaces, keeping the CreateIndex of an existing row;
* ``upsert_cas_txn``: ModifyIndex 0 means "only if absent", otherwise it must match;
* ``delete_txn`` (idempotent) and ``delete_cas_txn`` (False on an index mismatch, True when the
  entry does not exist — as Consul).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from server.state.tables import StateTable
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = ["TABLE_CONFIG_ENTRIES", "ConfigEntryTable"]

TABLE_CONFIG_ENTRIES = "config-entries"

Key = tuple[str, str]


class ConfigEntryTable(StateTable):
    name = "config_entries"

    def __init__(self, indexes: IndexTable) -> None:
        super().__init__(indexes)
        self._rows: dict[Key, dict[str, Any]] = {}
        self.kind_watches = ChannelMap()

    # --- reads -------------------------------------------------------------------------

    def _index(self) -> int:
        return max(self._indexes.get(TABLE_CONFIG_ENTRIES), 1)

    def get(self, ws: WatchSet | None, kind: str, name: str) -> tuple[int, dict[str, Any] | None]:
        """One entry (a copy) or None; the index is the table index."""
        if ws is not None:
            ws.add(self.kind_watches.channel(kind))
        row = self._rows.get((kind, name))
        return self._index(), None if row is None else copy.deepcopy(row)

    def list_kind(self, ws: WatchSet | None, kind: str) -> tuple[int, list[dict[str, Any]]]:
        """Every entry of ``kind`` sorted by name (all kinds, by kind then name, for "")."""
        if ws is not None:
            if kind:
                ws.add(self.kind_watches.channel(kind))
            else:
                ws.add(self._indexes.channel(TABLE_CONFIG_ENTRIES))
        rows = [
            copy.deepcopy(row)
            for key, row in sorted(self._rows.items())
            if not kind or key[0] == kind
        ]
        return self._index(), rows

    def peek(self, kind: str, name: str) -> dict[str, Any] | None:
        """The stored row itself (no copy, no watch) for code that only reads it."""
        return self._rows.get((kind, name))

    def watch_all(self, ws: WatchSet | None) -> int:
        """Add the table channel to ``ws``; returns the table index."""
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_CONFIG_ENTRIES))
        return self._index()

    # --- writes ------------------------------------------------------------------------

    def _put(self, tx: WriteTxn, key: Key, row: dict[str, Any] | None) -> None:
        old = self._rows.get(key)
        if row is None:
            self._rows.pop(key, None)
        else:
            self._rows[key] = row

        def undo() -> None:
            if old is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = old

        tx.on_undo(undo)
        self._indexes.bump(tx, TABLE_CONFIG_ENTRIES)
        tx.notify(self.kind_watches, key[0])

    def upsert_txn(self, tx: WriteTxn, entry: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace ``entry`` (needs ``Kind``; ``Name`` may be "" only for
        singletons already named by the caller). Returns the stored row (a copy)."""
        key = (str(entry["Kind"]), str(entry.get("Name", "")))
        row = copy.deepcopy(entry)
        existing = self._rows.get(key)
        row["CreateIndex"] = existing["CreateIndex"] if existing is not None else tx.idx
        row["ModifyIndex"] = tx.idx
        self._put(tx, key, row)
        return copy.deepcopy(row)

    def upsert_cas_txn(self, tx: WriteTxn, entry: dict[str, Any], cas: int) -> bool:
        key = (str(entry["Kind"]), str(entry.get("Name", "")))
        existing = self._rows.get(key)
        if cas == 0 and existing is not None:
            return False
        if cas != 0 and (existing is None or existing["ModifyIndex"] != cas):
            return False
        self.upsert_txn(tx, entry)
        return True

    def delete_txn(self, tx: WriteTxn, kind: str, name: str) -> bool:
        """Delete one entry (idempotent: a missing one changes nothing). Whether it existed."""
        key = (kind, name)
        if key not in self._rows:
            return False
        self._put(tx, key, None)
        return True

    def delete_cas_txn(self, tx: WriteTxn, kind: str, name: str, cas: int) -> bool:
        existing = self._rows.get((kind, name))
        if existing is None:
            return True
        if existing["ModifyIndex"] != cas:
            return False
        return self.delete_txn(tx, kind, name)

    # --- snapshot ----------------------------------------------------------------------

    def dump(self) -> Any:
        return [copy.deepcopy(row) for _, row in sorted(self._rows.items())]

    def restore(self, document: Any) -> None:
        self._rows = {}
        for row in document or ():
            self._rows[(str(row["Kind"]), str(row.get("Name", "")))] = dict(row)

    def channel_maps(self) -> Sequence[ChannelMap]:
        return (self.kind_watches,)

    def check_invariants(self) -> None:
        top = self._indexes.get(TABLE_CONFIG_ENTRIES)
        for (kind, name), row in self._rows.items():
            assert row["Kind"] == kind
            assert str(row.get("Name", "")) == name
            assert row["CreateIndex"] <= row["ModifyIndex"] <= top
