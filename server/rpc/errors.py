"""Errors shared by the RPC client and its callers (no imports: any layer may use it)."""

from __future__ import annotations

__all__ = ["NotLeaderError", "NotSentError"]


class NotLeaderError(Exception):
    """The server asked is not the Raft leader (any more): look for the new one and retry."""


class NotSentError(Exception):
    """The request never reached the server (it could not be connected to): safe to retry,
    even for a write. Any other transport failure may have happened after the server acted on
    the request, so a write must not be retried (Consul's rule, too)."""
