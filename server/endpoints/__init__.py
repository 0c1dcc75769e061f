"""The HTTP API, one module per domain (Consul's ``agent/*_endpoint.go``). Each module exports
``register(app, ctx)``; ``build_app`` adds them all behind one error middleware.

Every handler may raise ``server.endpoints.http.HTTPError`` for a 4xx/5xx with a one-line body;
any other exception becomes a 500 with the exception's text (and is logged), never a traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from server.endpoints import (
    acl,
    agent,
    catalog,
    config_entry,
    connect,
    coordinate,
    discovery_chain,
    event,
    federation_state,
    health,
    kv,
    operator,
    query,
    session,
    snapshot,
    status,
    txn,
)
from server.endpoints.context import ServerContext
from server.endpoints.forward import forward_middleware
from server.endpoints.http import HTTPError

__all__ = ["MODULES", "build_app"]

log = structlog.get_logger("http")

MODULES = (
    acl,
    agent,
    catalog,
    config_entry,
    connect,
    coordinate,
    discovery_chain,
    event,
    federation_state,
    health,
    kv,
    operator,
    query,
    session,
    snapshot,
    status,
    txn,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as exc:
        return web.Response(status=exc.status, text=exc.message)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.warning("request_failed", method=request.method, path=request.path, error=repr(exc))
        text = " ".join(str(exc).split()) or type(exc).__name__
        return web.Response(status=500, text=text)


async def _root(request: web.Request) -> web.Response:
    # Clients and load balancers use "/" as a health URL: any 200 will do.
    return web.Response(text="Consul Agent: Proconsul\n")


def build_app(ctx: ServerContext) -> web.Application:
    middlewares: list[Any] = [_errors, forward_middleware(ctx)]
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
    app.router.add_get("/", _root)
    for module in MODULES:
        module.register(app, ctx)
    return app
