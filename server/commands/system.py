"""Raft commands of the ``system`` domain (placeholder: none yet)."""

from __future__ import annotations

from server.commands.types import Handler, MessageType

__all__ = ["HANDLERS"]

HANDLERS: dict[MessageType, Handler] = {}
