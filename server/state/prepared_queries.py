"""State table ``prepared_queries`` (placeholder: no rows yet)."""

from __future__ import annotations

from server.state.tables import StateTable

__all__ = ["PreparedQueryTable"]


class PreparedQueryTable(StateTable):
    name = "prepared_queries"
