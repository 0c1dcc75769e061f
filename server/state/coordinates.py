"""State table ``coordinates`` (placeholder: no rows yet)."""

from __future__ import annotations

from server.state.tables import StateTable

__all__ = ["CoordinateTable"]


class CoordinateTable(StateTable):
    name = "coordinates"
