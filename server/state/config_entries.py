"""State table ``config_entries`` (placeholder: no rows yet)."""

from __future__ import annotations

from server.state.tables import StateTable

__all__ = ["ConfigEntryTable"]


class ConfigEntryTable(StateTable):
    name = "config_entries"
