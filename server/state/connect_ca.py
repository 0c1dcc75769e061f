"""State table ``connect_ca`` (placeholder: no rows yet)."""

from __future__ import annotations

from server.state.tables import StateTable

__all__ = ["ConnectCATable"]


class ConnectCATable(StateTable):
    name = "connect_ca"
