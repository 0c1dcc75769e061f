"""``/v1/coordinate/*``: network coordinates (Consul's ``agent/coordinate_endpoint.go``).

* ``GET /v1/coordinate/datacenters``: the WAN coordinates of the servers, grouped by datacenter
  and network area: ``[{Datacenter, AreaID: "wan", Coordinates: [{Node, Segment, Coord}]}]``.
  Until WAN serf computes coordinates, each known server appears with Vivaldi's origin
  coordinate (what a fresh Consul server reports).
* ``GET /v1/coordinate/nodes``: every LAN coordinate (``?segment=`` filters), blocking on the
  coordinates table.
* ``GET /v1/coordinate/node/:node``: one node's coordinates, 404 when it has none.
* ``PUT /v1/coordinate/update``: ``{Node, Segment, Coord}`` stored through Raft
  (``COORDINATE_BATCH_UPDATE``); Consul's errors for invalid and incompatible coordinates.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, fold_keys, json_response, read_json
from server.state import StateStore, WatchSet
from server.state.coordinates import Coord, CoordinateEntry, origin_coord

__all__ = ["register"]

_COORD_FIELDS = ("Vec", "Error", "Adjustment", "Height")
_UPDATE_FIELDS = ("Node", "Segment", "Coord", "Datacenter", "Partition")


def wan_node_name(ctx: ServerContext, raft_id: str) -> str:
    """The name a server's WAN coordinate is listed under: its node name (as in the sample
    of Consul's API documentation; Consul's WAN serf member names are ``<node>.<dc>``, which
    its router strips nowhere, so live Consul may show the suffixed form). The plain name
    can be used with ``/v1/coordinate/node`` and ``/v1/coordinate/update``, which (as
    Consul's) only store coordinates of catalog nodes."""
    from server.endpoints.operator import server_node_name

    return server_node_name(ctx, raft_id)


def register(app: web.Application, ctx: ServerContext) -> None:
    def segment_filter(request: web.Request, entries: list[CoordinateEntry]) -> list[Any]:
        if "segment" in request.query:
            wanted = request.query["segment"]
            entries = [e for e in entries if e.segment == wanted]
        return [e.to_api() for e in entries]

    async def datacenters(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        names: list[str] = []
        raft = ctx.raft
        if raft is not None:
            names = [s.id for s in raft.membership.servers]
        servers = sorted(wan_node_name(ctx, name) for name in names) or [ctx.config.node_name]
        coordinates = [
            {"Node": name, "Segment": "", "Coord": origin_coord().to_api()} for name in servers
        ]
        out = [{"Datacenter": ctx.config.datacenter, "AreaID": "wan", "Coordinates": coordinates}]
        router: Any = ctx.router
        for dc in router.datacenters()[1:] if router is not None else []:
            # Other datacenters' servers as the WAN pool knows them (origin coordinates: no
            # network coordinates are computed yet).
            remote = [
                {"Node": server.node, "Segment": "", "Coord": origin_coord().to_api()}
                for server in router.servers(dc)
            ]
            out.append({"Datacenter": dc, "AreaID": "wan", "Coordinates": remote})
        return json_response(request, out)

    async def nodes(request: web.Request) -> web.Response:
        opts = ctx.options(request)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[CoordinateEntry]]:
            return store.coordinates.list_all(ws)

        entries, meta = await ctx.read(opts, read)
        return json_response(request, segment_filter(request, entries), headers=ctx.headers(meta))

    async def node(request: web.Request) -> web.Response:
        opts = ctx.options(request)
        name = request.match_info["node"]

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[CoordinateEntry]]:
            return store.coordinates.node(ws, name)

        entries, meta = await ctx.read(opts, read)
        out = segment_filter(request, entries)
        if not out:
            return web.Response(status=404, headers=ctx.headers(meta))
        return json_response(request, out, headers=ctx.headers(meta))

    async def update(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        body = fold_keys(await read_json(request, empty={}), _UPDATE_FIELDS)
        raw_coord = body.get("Coord")
        if raw_coord is None:
            raise HTTPError(500, "invalid coordinate")
        try:
            coord = Coord.from_api(fold_keys(raw_coord, _COORD_FIELDS, what="Coord"))
        except (TypeError, ValueError) as exc:
            raise HTTPError(400, f"Request decode failed: {exc}") from None
        node_name = body.get("Node")
        segment = body.get("Segment") or ""
        if not isinstance(node_name, str) or not isinstance(segment, str):
            raise HTTPError(400, "Request decode failed: Node and Segment must be strings")
        # Consul's Coordinate.Update checks, in its order.
        if not coord.is_valid():
            raise HTTPError(500, "invalid coordinate")
        if not coord.is_compatible():
            raise HTTPError(500, "incompatible coordinate")
        entry = CoordinateEntry(node_name, segment, coord)
        await ctx.apply(MessageType.COORDINATE_BATCH_UPDATE, [entry.to_api()])
        return web.Response(status=200)  # Consul answers an empty 200

    app.router.add_get("/v1/coordinate/datacenters", datacenters)
    app.router.add_get("/v1/coordinate/nodes", nodes)
    app.router.add_get("/v1/coordinate/node/{node}", node)
    app.router.add_put("/v1/coordinate/update", update)
