"""HTTP endpoints of the ``catalog`` domain (Consul's ``agent/catalog_endpoint.go``).

* ``PUT /v1/catalog/register`` and ``/deregister``: a ``RegisterRequest``/``DeregisterRequest``
  body (field names in any case), validated here (``server.commands.catalog``) then written
  through Raft; answers ``true``. Validation errors are 500s with Consul's text, as Consul's
  RPC errors are; a body that does not decode is a 400 ``Request decode failed: ...``.
  The datacenter is the body's ``Datacenter`` (default: this agent's); another one is
  ``No path to datacenter`` until federation exists.
* ``GET /v1/catalog/datacenters``: every datacenter the WAN pool knows, this one first.
* ``GET /v1/catalog/nodes``, ``/services``, ``/service/<name>``, ``/connect/<name>``,
  ``/node/<name>``, ``/node-services/<name>``, ``/gateway-services/<name>``: blocking reads
  with ``?index``/``?wait``, ``?filter`` (go-bexpr), ``?node-meta=k:v`` (repeatable) and
  ``?tag=`` (repeatable: every tag must match, case-insensitively) where Consul takes them.
  Missing things answer as Consul does: ``/node/<x>`` for an unknown node is ``200 null``,
  ``/node-services/<x>`` is ``200 {"Node": null, "Services": null}`` (its zero value), empty
  lists are ``[]``.
* ``/connect/<name>`` (and ``/v1/health/connect/<name>``) lists the service's Connect proxies,
  its Connect-native instances and the instances of terminating gateways whose config entry
  links it.
* ``?filter`` on ``/node/<name>`` applies to each entry of the Services map (Consul filters
  that map, not the document). ``?peer=<name>`` matches nothing (no cluster peering here).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from server.commands.catalog import (
    RequestDecodeError,
    normalize_deregister_request,
    normalize_register_request,
)
from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, QueryOptions, json_response, read_json
from server.filter import Filter, FilterError, compile_filter
from server.state import StateError, StateStore, WatchSet
from server.state.catalog import Node, ServiceInstance
from server.state.coordinates import Coord, CoordinateEntry

__all__ = [
    "Catalog",
    "add_endpoint",
    "compile_query_filter",
    "gateway_services",
    "node_meta_filters",
    "register",
    "service_tags",
    "sort_near",
    "terminating_gateways",
]

T = TypeVar("T")


# --- helpers shared with the health endpoints ---------------------------------------------


def node_meta_filters(request: web.Request) -> dict[str, str]:
    """``?node-meta=key:value`` (repeatable; a pair without ``:`` has an empty value)."""
    out: dict[str, str] = {}
    for raw in request.query.getall("node-meta", []):
        key, _, value = raw.partition(":")
        out[key] = value
    return out


def service_tags(request: web.Request) -> list[str] | None:
    """``?tag=`` values (repeatable), None when absent."""
    if "tag" not in request.query:
        return None
    return list(request.query.getall("tag"))


def compile_query_filter(opts: QueryOptions) -> Filter | None:
    """The ``?filter=`` expression compiled up front (a 400 with the parser's message before
    any blocking), None when there is none."""
    if not opts.filter:
        return None
    try:
        return compile_filter(opts.filter)
    except FilterError as exc:
        raise HTTPError(400, str(exc)) from None


def apply_filter(compiled: Filter | None, items: Sequence[T], view: Callable[[T], Any]) -> list[T]:
    if compiled is None:
        return list(items)
    return [item for item in items if compiled.matches(view(item))]


def sort_near(
    ctx: ServerContext,
    request: web.Request,
    items: Sequence[T],
    node_of: Callable[[T], str],
) -> list[T]:
    """Consul's ``?near=<node>`` (``_agent``: this agent's node): a stable sort by the
    estimated round trip time from that node's network coordinate (Serf's ``DistanceTo``);
    items whose node has no coordinate go last. Without a coordinate for the source node the
    order is left alone, as in Consul."""
    near = request.query.get("near", "")
    if not near or not items:
        return list(items)
    if near == "_agent":
        near = ctx.config.node_name
    coordinates = ctx.store.coordinates
    source = _segment_coords(coordinates.node(None, near)[1])
    if not source:
        return list(items)
    cache: dict[str, float] = {}

    def distance(item: T) -> float:
        node = node_of(item).lower()
        if node not in cache:
            mine = _segment_coords(coordinates.node(None, node)[1])
            common = [seg for seg in source if seg in mine]
            cache[node] = _rtt(source[common[0]], mine[common[0]]) if common else float("inf")
        return cache[node]

    return sorted(items, key=distance)


def _segment_coords(entries: Sequence[CoordinateEntry]) -> dict[str, Coord]:
    # The default segment first, as Consul's coordinate lookup prefers it.
    ordered = sorted(entries, key=lambda e: (e.segment != "", e.segment))
    return {e.segment: e.coord for e in ordered}


def _rtt(a: Coord, b: Coord) -> float:
    """Serf's ``Coordinate.DistanceTo`` in seconds."""
    raw = math.dist(a.vec, b.vec) + a.height + b.height
    adjusted = raw + a.adjustment + b.adjustment
    return adjusted if adjusted > 0.0 else raw


def path_name(request: web.Request, what: str) -> str:
    name = request.match_info.get("name", "")
    if not name:
        raise HTTPError(400, f"Missing {what} name")
    return name


def peer_requested(request: web.Request) -> bool:
    """``?peer=<name>``: no peerings exist, so nothing is imported from any peer."""
    return bool(request.query.get("peer", ""))


# --- endpoints ---------------------------------------------------------------------------


class Catalog:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def _read(
        self, opts: QueryOptions, fn: Callable[[StateStore, WatchSet | None], tuple[int, T]]
    ) -> tuple[T, dict[str, str]]:
        result, meta = await self.ctx.read(opts, fn)
        return result, self.ctx.headers(meta)

    def _check_datacenter(self, request: web.Request, body: Any) -> str:
        """The request's datacenter (the body's, else ``?dc=``, else ours), checked first as
        Consul forwards before validating."""
        dc = _body_dc(body) or request.query.get("dc", "")
        self.ctx.check_datacenter(dc)
        return dc or self.ctx.config.datacenter

    # --- writes ----------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        return await self._write(request, normalize_register_request, MessageType.REGISTER)

    async def deregister(self, request: web.Request) -> web.Response:
        return await self._write(request, normalize_deregister_request, MessageType.DEREGISTER)

    async def _write(
        self,
        request: web.Request,
        normalize: Callable[[Any], dict[str, Any]],
        kind: MessageType,
    ) -> web.Response:
        """Decode, validate as Consul's RPC endpoint does (400 for a body that does not decode,
        500 with Consul's text for a refused request), then apply through Raft."""
        body = await read_json(request, empty={})
        dc = self._check_datacenter(request, body)
        try:
            req = normalize(body)
        except RequestDecodeError as exc:
            raise HTTPError(400, f"Request decode failed: {exc}") from None
        except StateError as exc:
            raise HTTPError(500, str(exc)) from None
        req["Datacenter"] = dc
        await self.ctx.apply(kind, req)
        return json_response(request, True)

    # --- reads -----------------------------------------------------------------------------

    async def datacenters(self, request: web.Request) -> web.Response:
        router = getattr(self.ctx, "router", None)
        if router is None:
            return json_response(request, [self.ctx.config.datacenter])
        return json_response(request, router.datacenters())

    async def nodes(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)
        compiled = compile_query_filter(opts)
        meta_filter = node_meta_filters(request)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[Node]]:
            return store.catalog.list_nodes(ws, meta_filter)

        nodes, headers = await self._read(opts, read)
        if peer_requested(request):
            nodes = []
        nodes = apply_filter(compiled, nodes, Node.to_api)
        nodes = sort_near(self.ctx, request, nodes, lambda n: n.node)
        return json_response(request, [n.to_api() for n in nodes], headers=headers)

    async def services(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)
        compiled = compile_query_filter(opts)
        meta_filter = node_meta_filters(request)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[ServiceInstance]]:
            return store.catalog.list_services(ws, meta_filter)

        rows, headers = await self._read(opts, read)
        rows = apply_filter(compiled, rows, lambda r: r.to_service_node(None))
        out: dict[str, list[str]] = {}
        for row in rows:
            tags = out.setdefault(row.service, [])
            for tag in row.tags or ():
                if tag not in tags:
                    tags.append(tag)
        return json_response(request, out, headers=headers)

    async def service(self, request: web.Request) -> web.Response:
        return await self._service_nodes(request, connect=False)

    async def connect(self, request: web.Request) -> web.Response:
        return await self._service_nodes(request, connect=True)

    async def _service_nodes(self, request: web.Request, *, connect: bool) -> web.Response:
        opts = self.ctx.options(request)
        name = path_name(request, "service")
        compiled = compile_query_filter(opts)
        meta_filter = node_meta_filters(request)
        tags = service_tags(request)

        def read(
            store: StateStore, ws: WatchSet | None
        ) -> tuple[int, list[tuple[Node, ServiceInstance]]]:
            index, pairs = store.catalog.service_nodes(ws, name, tags=tags, connect=connect)
            if connect:
                for gateway in terminating_gateways(store, ws, name):
                    gw_index, gw_pairs = store.catalog.service_nodes(ws, gateway)
                    index = max(index, gw_index)
                    pairs += [p for p in gw_pairs if p[1].kind == "terminating-gateway"]
            return index, pairs

        pairs, headers = await self._read(opts, read)
        views = [svc.to_service_node(node) for node, svc in pairs]
        if meta_filter:
            views = [v for v in views if _meta_matches(v["NodeMeta"], meta_filter)]
        if peer_requested(request):
            views = []
        views = apply_filter(compiled, views, lambda v: v)
        views = sort_near(self.ctx, request, views, lambda v: str(v["Node"]))
        return json_response(request, views, headers=headers)

    async def node(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)
        name = path_name(request, "node")
        compiled = compile_query_filter(opts)

        def read(
            store: StateStore, ws: WatchSet | None
        ) -> tuple[int, tuple[Node, list[ServiceInstance]] | None]:
            return store.catalog.node_services(ws, name)

        found, headers = await self._read(opts, read)
        if found is None or peer_requested(request):
            return json_response(request, None, headers=headers)
        node, services = found
        views = apply_filter(compiled, [s.to_node_service() for s in services], lambda v: v)
        body = {"Node": node.to_api(), "Services": {v["ID"]: v for v in views}}
        return json_response(request, body, headers=headers)

    async def node_services(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)
        name = path_name(request, "node")
        compiled = compile_query_filter(opts)

        def read(
            store: StateStore, ws: WatchSet | None
        ) -> tuple[int, tuple[Node, list[ServiceInstance]] | None]:
            return store.catalog.node_services(ws, name)

        found, headers = await self._read(opts, read)
        if found is None or peer_requested(request):
            # Consul answers its zero-value NodeServiceList for a missing node.
            return json_response(request, {"Node": None, "Services": None}, headers=headers)
        node, services = found
        views: list[dict[str, Any]] | None = [s.to_node_service() for s in services]
        if compiled is not None:
            views = apply_filter(compiled, views or [], lambda v: v)
        elif not views:
            views = None  # a node without services has a nil list
        return json_response(request, {"Node": node.to_api(), "Services": views}, headers=headers)

    async def gateway_services(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)
        name = path_name(request, "gateway")

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
            return gateway_services(store, ws, name)

        services, headers = await self._read(opts, read)
        return json_response(request, services, headers=headers)


def gateway_services(
    store: StateStore, ws: WatchSet | None, gateway: str
) -> tuple[int, list[dict[str, Any]]]:
    """The services an ingress or terminating gateway routes to (Consul's
    ``GatewayServices``), derived from the gateway's config entry: one ``GatewayService`` per
    listener service (ingress) or linked service (terminating), ordered by service name; a
    ``*`` service stands for every typical service but ``consul`` (``FromWildcard``)."""
    entries = store.config_entries
    index, ingress = entries.get(ws, "ingress-gateway", gateway)
    _, terminating = entries.get(ws, "terminating-gateway", gateway)
    services_index, instances = store.catalog.list_services(ws)
    index = max(index, services_index)
    typical = sorted({r.service for r in instances if not r.kind and r.service != "consul"})
    out: list[dict[str, Any]] = []

    def add(entry: dict[str, Any], kind: str, svc: dict[str, Any], **extra: Any) -> None:
        names = [str(svc.get("Name") or "")]
        wildcard = names == ["*"]
        if wildcard:
            names = typical
        for svc_name in names:
            out.append(
                {
                    "Gateway": {"Name": gateway},
                    "Service": {"Name": svc_name},
                    "GatewayKind": kind,
                    "Port": extra.get("Port", 0),
                    "Protocol": extra.get("Protocol", ""),
                    "Hosts": svc.get("Hosts") or None,
                    "CAFile": svc.get("CAFile", "") or "",
                    "CertFile": svc.get("CertFile", "") or "",
                    "KeyFile": svc.get("KeyFile", "") or "",
                    "SNI": svc.get("SNI", "") or "",
                    "FromWildcard": wildcard,
                    "CreateIndex": entry.get("CreateIndex", 0),
                    "ModifyIndex": entry.get("ModifyIndex", 0),
                }
            )

    if ingress is not None:
        for listener in ingress.get("Listeners") or ():
            for svc in listener.get("Services") or ():
                add(
                    ingress,
                    "ingress-gateway",
                    svc,
                    Port=listener.get("Port", 0),
                    Protocol=listener.get("Protocol") or "tcp",
                )
    if terminating is not None:
        for svc in terminating.get("Services") or ():
            add(terminating, "terminating-gateway", svc)
    out.sort(key=lambda g: (str(g["Service"]["Name"]), g["GatewayKind"], g["Port"]))
    return max(index, 1), out


def terminating_gateways(store: StateStore, ws: WatchSet | None, service: str) -> list[str]:
    """Names of the terminating gateways whose config entry links ``service`` (or ``*``):
    Consul's Connect lookups return their instances along with the service's proxies."""
    _, entries = store.config_entries.list_kind(ws, "terminating-gateway")
    wanted = service.lower()
    names = []
    for entry in entries:
        linked = {str(s.get("Name") or "").lower() for s in entry.get("Services") or ()}
        if wanted in linked or "*" in linked:
            names.append(str(entry.get("Name") or ""))
    return sorted(names)


def _body_dc(body: Any) -> str:
    if isinstance(body, dict):
        for key, value in body.items():
            if str(key).lower() == "datacenter" and isinstance(value, str):
                return value
    return ""


def _meta_matches(meta: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    meta = meta or {}
    return all(key in meta and meta[key] == value for key, value in wanted.items())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_endpoint(app: web.Application, path: str, methods: Sequence[str], handler: Handler) -> None:
    """Route ``path`` as Consul's ``registerEndpoint`` does: ``OPTIONS`` answers 200 with the
    ``Allow`` header, any other method not in ``methods`` is
    ``405 method <M> not allowed`` (with ``Allow``)."""
    allow = ",".join(["OPTIONS", *methods])

    async def gate(request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": allow})
        if request.method not in methods:
            return web.Response(
                status=405,
                text=f"method {request.method} not allowed",
                headers={"Allow": allow},
            )
        return await handler(request)

    app.router.add_route("*", path, gate)


def register(app: web.Application, ctx: ServerContext) -> None:
    """Add this domain's routes to ``app``."""
    catalog = Catalog(ctx)
    for path, methods, handler in (
        ("/v1/catalog/register", ("PUT",), catalog.register),
        ("/v1/catalog/deregister", ("PUT",), catalog.deregister),
        ("/v1/catalog/datacenters", ("GET",), catalog.datacenters),
        ("/v1/catalog/nodes", ("GET",), catalog.nodes),
        ("/v1/catalog/services", ("GET",), catalog.services),
        ("/v1/catalog/service/{name:.*}", ("GET",), catalog.service),
        ("/v1/catalog/connect/{name:.*}", ("GET",), catalog.connect),
        ("/v1/catalog/node/{name:.*}", ("GET",), catalog.node),
        ("/v1/catalog/node-services/{name:.*}", ("GET",), catalog.node_services),
        ("/v1/catalog/gateway-services/{name:.*}", ("GET",), catalog.gateway_services),
    ):
        add_endpoint(app, path, methods, handler)
