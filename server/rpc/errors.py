"""Errors shared by the RPC client and its callers (no imports: any layer may use it)."""

from __future__ import annotations

__all__ = ["NotLeaderError"]


class NotLeaderError(Exception):
    """The server asked is not the Raft leader (any more): look for the new one and retry."""
