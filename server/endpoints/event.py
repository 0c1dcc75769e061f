"""HTTP endpoints of the ``event`` domain (placeholder: none yet)."""

from __future__ import annotations

from aiohttp import web

from server.endpoints.context import ServerContext

__all__ = ["register"]


def register(app: web.Application, ctx: ServerContext) -> None:
    """Add this domain's routes to ``app``."""
