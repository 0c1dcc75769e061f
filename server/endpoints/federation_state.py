"""Federation states over HTTP (Consul's ``agent/federation_state_endpoint.go``); internal,
read-only endpoints:

* ``GET /v1/internal/federation-state/<dc>``: ``{"State": record, "Index": ..., ...}`` — the
  record under ``State`` plus Consul's embedded ``QueryMeta`` fields. A datacenter without a
  record is a 404 with an empty body (Consul writes only the status); no name is a 400
  ``Missing datacenter name``.
* ``GET /v1/internal/federation-states``: every record, sorted by datacenter, ``[]`` when none.
* ``GET /v1/internal/federation-states/mesh-gateways``: ``{dc: [CheckServiceNode, ...]}`` for
  the datacenters that have gateways (the others are left out), ``{}`` when none.

All three are blocking reads on the federation-states table (``?index=``/``?wait=``) with the
usual ``X-Consul-*`` headers and consistency modes. ``?dc=`` (another datacenter's view) is
handled before these handlers by the forwarding middleware.
The routines that keep the table current are ``server.federation.fedstate``'s (the agent adds
them to a server's services).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.endpoints.catalog import add_endpoint
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, json_response

# Consul embeds QueryMeta in FederationStateResponse as in the prepared-query answers.
from server.state import StateStore, WatchSet

__all__ = ["FederationStates", "mesh_gateways_by_dc", "register"]


def mesh_gateways_by_dc(states: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Consul's ``ListMeshGateways``: each datacenter's gateways, empty datacenters dropped."""
    return {
        str(state["Datacenter"]): list(state["MeshGateways"])
        for state in states
        if state.get("MeshGateways")
    }


class FederationStates:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def get(self, request: web.Request) -> web.Response:
        datacenter = request.match_info.get("dc", "")
        if not datacenter:
            raise HTTPError(400, "Missing datacenter name")
        opts = self.ctx.options(request)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, dict[str, Any] | None]:
            return store.federation_states.get(ws, datacenter)

        state, meta = await self.ctx.read(opts, read)
        headers = self.ctx.headers(meta)
        if state is None:
            return web.Response(status=404, headers=headers)
        return json_response(request, {"State": state, **meta.embedded()}, headers=headers)

    async def list(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
            return store.federation_states.list_all(ws)

        states, meta = await self.ctx.read(opts, read)
        return json_response(request, states, headers=self.ctx.headers(meta))

    async def mesh_gateways(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
            return store.federation_states.list_all(ws)

        states, meta = await self.ctx.read(opts, read)
        return json_response(request, mesh_gateways_by_dc(states), headers=self.ctx.headers(meta))


def register(app: web.Application, ctx: ServerContext) -> None:
    """Add this domain's routes to ``app``."""
    endpoint = FederationStates(ctx)
    for path, handler in (
        ("/v1/internal/federation-state/{dc:.*}", endpoint.get),
        ("/v1/internal/federation-states", endpoint.list),
        ("/v1/internal/federation-states/mesh-gateways", endpoint.mesh_gateways),
    ):
        add_endpoint(app, path, ("GET",), handler)
