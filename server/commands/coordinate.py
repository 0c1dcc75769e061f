"""Raft commands of the ``coordinate`` domain: ``COORDINATE_BATCH_UPDATE``.

Body: a list of ``{"Node", "Segment", "Coord": {"Vec", "Error", "Adjustment", "Height"}}``
(Consul's ``structs.Coordinates``). Invalid coordinates and unknown nodes are skipped, as
Consul's state store does; the result is how many coordinates were stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.state.coordinates import Coord, CoordinateEntry

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = ["HANDLERS", "decode_updates"]


def decode_updates(body: Any) -> list[CoordinateEntry]:
    """The updates of a ``COORDINATE_BATCH_UPDATE`` body (``ValueError`` when malformed)."""
    if not isinstance(body, list):
        raise ValueError("coordinate batch must be a list")
    updates: list[CoordinateEntry] = []
    for raw in body:
        if not isinstance(raw, dict):
            raise ValueError("coordinate update must be an object")
        try:
            coord = Coord.from_api(raw.get("Coord"))
        except TypeError as exc:
            raise ValueError(f"malformed coordinate: {exc}") from exc
        updates.append(
            CoordinateEntry(str(raw.get("Node", "")), str(raw.get("Segment", "")), coord)
        )
    return updates


def _batch_update(fsm: ConsulFSM, index: int, body: Any) -> int:
    from server.fsm import UnknownCommandError

    try:
        updates = decode_updates(body)
    except ValueError as exc:
        raise UnknownCommandError(str(exc)) from exc
    store = fsm.store
    with store.write_txn(index) as tx:
        return store.coordinates.batch_update_txn(tx, updates, store.catalog.node_exists)


HANDLERS: dict[MessageType, Handler] = {
    MessageType.COORDINATE_BATCH_UPDATE: _batch_update,
}
