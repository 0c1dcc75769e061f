"""The gateway's admin HTTP server (Envoy's admin port, 19000 by default):

- ``GET /stats``: every counter as JSON (:meth:`Stats.snapshot`);
- ``GET /metrics``: the same in the Prometheus text format;
- ``GET /ready``: 200 ``LIVE`` once the first routing table is built, else 503.
"""

from __future__ import annotations

import json

from aiohttp import web

from server.gateway.routes import Address
from server.gateway.stats import Stats

__all__ = ["start_admin"]


async def start_admin(stats: Stats, bind: Address) -> tuple[web.AppRunner, Address]:
    async def get_stats(_: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(stats.snapshot(), indent=2) + "\n", content_type="application/json"
        )

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=stats.prometheus().encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def get_ready(_: web.Request) -> web.Response:
        if stats.ready:
            return web.Response(text="LIVE\n")
        return web.Response(status=503, text="PRE_INITIALIZING\n")

    app = web.Application()
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/ready", get_ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, bind.host, bind.port, reuse_address=True)
    await site.start()
    name = runner.addresses[0] if runner.addresses else (bind.host, bind.port)
    return runner, Address(str(name[0]), int(name[1]))
