"""The shape every state table outside KV/sessions follows, so the store can snapshot, restore
and abandon it without knowing its rows.

A table is built with the store's ``IndexTable`` (to bump its table index and watch table-wide
changes) and keeps its own ``ChannelMap``s for finer watches. Its snapshot is a JSON-able value
that must be deterministic (same state, same bytes): rows in key order, no sets, no floats that
depend on time.

Invariants every table keeps:

* writes only through a ``WriteTxn`` (``tx.idx`` is the Raft index; ``tx.on_undo`` for every
  change so an aborted transaction leaves nothing behind; ``tx.notify`` for every watch key);
* ``restore(None)`` is an empty table (a snapshot written before the table existed);
* ``channel_maps()`` lists every ``ChannelMap`` it ever hands channels out of, so an abandoned
  store wakes every blocked reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from server.state.watch import ChannelMap

if TYPE_CHECKING:
    from server.state.store import IndexTable

__all__ = ["StateTable"]


class StateTable:
    """Base class: an empty table with no rows. Subclasses override all four hooks."""

    #: The key of this table's document in a store snapshot.
    name: str = ""

    def __init__(self, indexes: IndexTable) -> None:
        self._indexes = indexes

    def dump(self) -> Any:
        """This table's rows as a deterministic JSON-able value."""
        return None

    def restore(self, document: Any) -> None:
        """Load ``dump()``'s output into this (empty) table; ``None`` means empty."""

    def channel_maps(self) -> Sequence[ChannelMap]:
        return ()

    def check_invariants(self) -> None:
        """Assert that secondary indexes agree with the rows (for tests)."""
