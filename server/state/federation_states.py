"""State table ``federation_states``: one record per datacenter of a WAN federation (Consul's
``structs.FederationState``, ``agent/consul/state/federation_state.go``).

A row is the record's JSON as Consul's HTTP API shows it::

    {"Datacenter": "dc2",
     "MeshGateways": [CheckServiceNode, ...],   # absent when empty (Go's omitempty)
     "UpdatedAt": "2024-05-01T12:00:00.123456789Z",
     "PrimaryModifyIndex": 17, "CreateIndex": 12, "ModifyIndex": 17}

where a ``CheckServiceNode`` is ``{"Node": {...}, "Service": {...}, "Checks": [...]}``, the
shape of one ``/v1/health/service/<name>`` entry. Rows are plain dicts handed out as copies.

Writes (one ``WriteTxn`` each):

* ``upsert_txn`` inserts or replaces the datacenter's record, keeping the CreateIndex of an
  existing one, setting ModifyIndex to the Raft index, and — as Consul's store — setting
  ``PrimaryModifyIndex`` to the Raft index when the record carries none (a write in the
  primary; replication into a secondary carries the primary's ModifyIndex instead).
  ``UpdatedAt`` is stored as given: the writer stamps it (``stamp_updated_at``) before the
  command is proposed, so every replica stores the same bytes; a record without one gets Go's
  zero time.
* ``delete_txn`` (idempotent).

Indexes and watches: every read answers the table index (never 0); ``get`` watches the one
datacenter's channel, ``list_all`` the table channel. Both fire on commit only.

``is_same`` is Consul's ``FederationState.IsSame`` for the anti-entropy writer: same
datacenter, same gateways in the same (catalog) order, comparing nodes, services and checks
without their Raft indexes and ``UpdatedAt`` (checks also without Type, Interval, Timeout and
ExposedPort, which Consul's ``HealthCheck.IsSame`` does not compare).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from server.state.tables import StateTable
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = [
    "GO_ZERO_TIME",
    "TABLE_FEDERATION_STATES",
    "FederationStateTable",
    "format_go_time",
    "is_same",
    "stamp_updated_at",
]

TABLE_FEDERATION_STATES = "federation-states"

#: Go's ``time.Time{}`` as its JSON encoder writes it.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

_RAFT_FIELDS = ("CreateIndex", "ModifyIndex")
_CHECK_IGNORED = ("CreateIndex", "ModifyIndex", "Type", "Interval", "Timeout", "ExposedPort")


def format_go_time(ns: int) -> str:
    """Unix nanoseconds as Go's ``time.Time`` JSON in UTC (RFC 3339 with up to nine fraction
    digits, trailing zeros dropped): ``2024-05-01T12:00:00.1234Z``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def stamp_updated_at(state: Mapping[str, Any], now_ns: int | None = None) -> dict[str, Any]:
    """A copy of ``state`` whose ``UpdatedAt`` is set to now when it is absent or Go's zero
    time (what Consul's ``FederationState.Apply`` endpoint does before the Raft write)."""
    out = copy.deepcopy(dict(state))
    if not out.get("UpdatedAt") or out["UpdatedAt"] == GO_ZERO_TIME:
        out["UpdatedAt"] = format_go_time(time.time_ns() if now_ns is None else now_ns)
    return out


def _without(obj: Any, fields: Sequence[str]) -> Any:
    if not isinstance(obj, Mapping):
        return obj
    return {k: v for k, v in obj.items() if k not in fields}


def is_same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Consul's ``FederationState.IsSame`` on two records (see the module docstring)."""
    if a is None or b is None:
        return a is b
    if a.get("Datacenter") != b.get("Datacenter"):
        return False
    gws_a = list(a.get("MeshGateways") or ())
    gws_b = list(b.get("MeshGateways") or ())
    if len(gws_a) != len(gws_b):
        return False
    for x, y in zip(gws_a, gws_b, strict=True):
        if _without(x.get("Node"), _RAFT_FIELDS) != _without(y.get("Node"), _RAFT_FIELDS):
            return False
        if _without(x.get("Service"), _RAFT_FIELDS) != _without(y.get("Service"), _RAFT_FIELDS):
            return False
        checks_x = list(x.get("Checks") or ())
        checks_y = list(y.get("Checks") or ())
        if len(checks_x) != len(checks_y):
            return False
        for cx, cy in zip(checks_x, checks_y, strict=True):
            if _without(cx, _CHECK_IGNORED) != _without(cy, _CHECK_IGNORED):
                return False
    return True


class FederationStateTable(StateTable):
    """One record per datacenter (module docstring)."""

    name = "federation_states"

    def __init__(self, indexes: IndexTable) -> None:
        super().__init__(indexes)
        self._rows: dict[str, dict[str, Any]] = {}
        self.dc_watches = ChannelMap()

    # --- reads -------------------------------------------------------------------------

    def _index(self) -> int:
        return max(self._indexes.get(TABLE_FEDERATION_STATES), 1)

    def get(self, ws: WatchSet | None, datacenter: str) -> tuple[int, dict[str, Any] | None]:
        """The datacenter's record (a copy) or None; the index is the table index."""
        if ws is not None:
            ws.add(self.dc_watches.channel(datacenter))
        row = self._rows.get(datacenter)
        return self._index(), None if row is None else copy.deepcopy(row)

    def list_all(self, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
        """Every record (copies), sorted by datacenter name."""
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_FEDERATION_STATES))
        return self._index(), [copy.deepcopy(self._rows[dc]) for dc in sorted(self._rows)]

    def peek(self, datacenter: str) -> dict[str, Any] | None:
        """The stored row itself (no copy, no watch) for code that only reads it."""
        return self._rows.get(datacenter)

    def datacenters(self) -> list[str]:
        return sorted(self._rows)

    # --- writes ------------------------------------------------------------------------

    def _put(self, tx: WriteTxn, datacenter: str, row: dict[str, Any] | None) -> None:
        old = self._rows.get(datacenter)
        if row is None:
            self._rows.pop(datacenter, None)
        else:
            self._rows[datacenter] = row

        def undo() -> None:
            if old is None:
                self._rows.pop(datacenter, None)
            else:
                self._rows[datacenter] = old

        tx.on_undo(undo)
        self._indexes.bump(tx, TABLE_FEDERATION_STATES)
        tx.notify(self.dc_watches, datacenter)

    def upsert_txn(self, tx: WriteTxn, state: Mapping[str, Any]) -> dict[str, Any]:
        """Insert or replace ``state`` (needs a non-empty ``Datacenter``). Returns the stored
        row (a copy)."""
        datacenter = str(state.get("Datacenter") or "")
        if not datacenter:
            raise ValueError("Missing federation state datacenter")
        row = copy.deepcopy(dict(state))
        row["Datacenter"] = datacenter
        if not row.get("MeshGateways"):
            row.pop("MeshGateways", None)
        row["UpdatedAt"] = str(row.get("UpdatedAt") or GO_ZERO_TIME)
        existing = self._rows.get(datacenter)
        row["CreateIndex"] = existing["CreateIndex"] if existing is not None else tx.idx
        row["ModifyIndex"] = tx.idx
        row["PrimaryModifyIndex"] = int(row.get("PrimaryModifyIndex") or 0) or tx.idx
        self._put(tx, datacenter, row)
        return copy.deepcopy(row)

    def delete_txn(self, tx: WriteTxn, datacenter: str) -> bool:
        """Delete the datacenter's record (idempotent). Whether it existed."""
        if datacenter not in self._rows:
            return False
        self._put(tx, datacenter, None)
        return True

    # --- snapshot ----------------------------------------------------------------------

    def dump(self) -> Any:
        return [copy.deepcopy(self._rows[dc]) for dc in sorted(self._rows)]

    def restore(self, document: Any) -> None:
        self._rows = {}
        for row in document or ():
            self._rows[str(row["Datacenter"])] = dict(row)

    def channel_maps(self) -> Sequence[ChannelMap]:
        return (self.dc_watches,)

    def check_invariants(self) -> None:
        top = self._indexes.get(TABLE_FEDERATION_STATES)
        for datacenter, row in self._rows.items():
            assert row["Datacenter"] == datacenter
            assert row["CreateIndex"] <= row["ModifyIndex"] <= top
            assert row["PrimaryModifyIndex"] > 0
