"""State table ``system`` (placeholder: no rows yet)."""

from __future__ import annotations

from server.state.tables import StateTable

__all__ = ["SystemTable"]


class SystemTable(StateTable):
    name = "system"
