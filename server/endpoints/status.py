"""``/v1/status/leader`` and ``/v1/status/peers``: the Raft view of this server."""

from __future__ import annotations

from aiohttp import web

from server.endpoints.context import ServerContext
from server.endpoints.http import json_response

__all__ = ["register"]


def register(app: web.Application, ctx: ServerContext) -> None:
    async def leader(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        # The leader's server RPC address as a JSON string, "" when there is none.
        raft = ctx.raft
        return json_response(request, (raft.leader_address() if raft else None) or "")

    async def peers(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        raft = ctx.raft
        if raft is None:
            return json_response(request, [])
        voters = raft.membership.voters
        return json_response(
            request, [s.address for s in raft.membership.servers if s.id in voters]
        )

    app.router.add_get("/v1/status/leader", leader)
    app.router.add_get("/v1/status/peers", peers)
