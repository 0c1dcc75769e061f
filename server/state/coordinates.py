"""State table ``coordinates``: the LAN network coordinate of each node (per network segment).

Consul's rules (``agent/consul/state/coordinate.go``):

* Rows are keyed by (node, segment), node names compared case-insensitively; a coordinate is
  ``{Vec: [8 floats], Error, Adjustment, Height}``.
* A batch update skips invalid coordinates (a NaN or an infinity anywhere) and coordinates of
  nodes the catalog does not know (their cleanup is tied to the node's deregistration), and
  still moves the table index.
* Reads answer the table index (never 0) and watch the whole table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.state.tables import StateTable
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = [
    "COORDINATE_DIMENSIONALITY",
    "TABLE_COORDINATES",
    "Coord",
    "CoordinateEntry",
    "CoordinateTable",
    "origin_coord",
]

TABLE_COORDINATES = "coordinates"
#: Serf's Vivaldi default dimensionality: every coordinate must have this many components.
COORDINATE_DIMENSIONALITY = 8
_HEIGHT_MIN = 10.0e-6  # Vivaldi's minimum height
_ERROR_MAX = 1.5  # Vivaldi's maximum (and initial) error estimate


@dataclass(frozen=True, slots=True)
class Coord:
    vec: tuple[float, ...]
    error: float
    adjustment: float
    height: float

    def is_valid(self) -> bool:
        values = (*self.vec, self.error, self.adjustment, self.height)
        return all(math.isfinite(v) for v in values)

    def is_compatible(self) -> bool:
        return len(self.vec) == COORDINATE_DIMENSIONALITY

    def to_api(self) -> dict[str, Any]:
        return {
            "Vec": list(self.vec),
            "Error": self.error,
            "Adjustment": self.adjustment,
            "Height": self.height,
        }

    @staticmethod
    def from_api(raw: Any) -> Coord:
        """A coordinate from its JSON object (keys already canonical); ValueError/TypeError
        when a field has the wrong type."""
        if not isinstance(raw, dict):
            raise TypeError("Coord must be an object")
        vec = raw.get("Vec") or []
        if not isinstance(vec, list):
            raise TypeError("Vec must be a list of numbers")
        return Coord(
            vec=tuple(_number(v) for v in vec),
            error=_number(raw.get("Error", 0.0)),
            adjustment=_number(raw.get("Adjustment", 0.0)),
            height=_number(raw.get("Height", 0.0)),
        )


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def origin_coord() -> Coord:
    """A new Vivaldi client's coordinate: the origin, with the largest error."""
    return Coord((0.0,) * COORDINATE_DIMENSIONALITY, _ERROR_MAX, 0.0, _HEIGHT_MIN)


@dataclass(frozen=True, slots=True)
class CoordinateEntry:
    node: str
    segment: str
    coord: Coord

    def to_api(self) -> dict[str, Any]:
        return {"Node": self.node, "Segment": self.segment, "Coord": self.coord.to_api()}


def _key(node: str, segment: str) -> tuple[str, str]:
    return node.lower(), segment.lower()


class CoordinateTable(StateTable):
    name = TABLE_COORDINATES

    def __init__(self, indexes: IndexTable) -> None:
        super().__init__(indexes)
        self._rows: dict[tuple[str, str], CoordinateEntry] = {}
        # Per-node watches (lower-cased node name), for ``coordinate/node/:node``.
        self.node_watches = ChannelMap()

    # --- reads -----------------------------------------------------------------------

    def _table_index(self) -> int:
        return max(self._indexes.get(TABLE_COORDINATES), 1)

    def list_all(self, ws: WatchSet | None) -> tuple[int, list[CoordinateEntry]]:
        """Every coordinate, ordered by node then segment."""
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_COORDINATES))
        return self._table_index(), [self._rows[k] for k in sorted(self._rows)]

    def node(self, ws: WatchSet | None, node: str) -> tuple[int, list[CoordinateEntry]]:
        """The coordinates of one node (one per segment), ordered by segment."""
        lowered = node.lower()
        if ws is not None:
            ws.add(self.node_watches.channel(lowered))
        rows = [self._rows[k] for k in sorted(self._rows) if k[0] == lowered]
        return self._table_index(), rows

    # --- writes ----------------------------------------------------------------------

    def batch_update_txn(
        self,
        tx: WriteTxn,
        updates: Iterable[CoordinateEntry],
        node_exists: Callable[[str], bool],
    ) -> int:
        """Upsert valid coordinates of known nodes; returns how many were stored. The table
        index moves even when every update was skipped (as Consul's does)."""
        stored = 0
        for entry in updates:
            if not entry.coord.is_valid() or not node_exists(entry.node):
                continue
            self._put(tx, entry)
            stored += 1
        self._indexes.bump(tx, TABLE_COORDINATES)
        return stored

    def delete_node_txn(self, tx: WriteTxn, node: str) -> int:
        """Drop every coordinate of ``node`` (for the catalog's node deregistration)."""
        lowered = node.lower()
        keys = [k for k in self._rows if k[0] == lowered]
        for key in keys:
            tx.on_undo(self._undo_for(key, self._rows.pop(key)))
        if keys:
            tx.notify(self.node_watches, lowered)
            self._indexes.bump(tx, TABLE_COORDINATES)
        return len(keys)

    def _put(self, tx: WriteTxn, entry: CoordinateEntry) -> None:
        key = _key(entry.node, entry.segment)
        tx.on_undo(self._undo_for(key, self._rows.get(key)))
        self._rows[key] = entry
        tx.notify(self.node_watches, key[0])

    def _undo_for(self, key: tuple[str, str], old: CoordinateEntry | None) -> Callable[[], None]:
        """What puts row ``key`` back to ``old`` (None: absent)."""

        def undo() -> None:
            if old is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = old

        return undo

    # --- snapshot --------------------------------------------------------------------

    def dump(self) -> Any:
        return [
            [
                e.node,
                e.segment,
                list(e.coord.vec),
                e.coord.error,
                e.coord.adjustment,
                e.coord.height,
            ]
            for e in (self._rows[k] for k in sorted(self._rows))
        ]

    def restore(self, document: Any) -> None:
        self._rows = {}
        for node, segment, vec, error, adjustment, height in document or ():
            coord = Coord(
                tuple(float(v) for v in vec), float(error), float(adjustment), float(height)
            )
            if not coord.is_valid():
                continue
            self._rows[_key(str(node), str(segment))] = CoordinateEntry(
                str(node), str(segment), coord
            )

    def channel_maps(self) -> Sequence[ChannelMap]:
        return (self.node_watches,)

    def check_invariants(self) -> None:
        for key, entry in self._rows.items():
            assert key == _key(entry.node, entry.segment)
            assert entry.coord.is_valid()
