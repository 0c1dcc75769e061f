"""HTTP endpoints of the ``health`` domain (Consul's ``agent/health_endpoint.go``).

* ``GET /v1/health/node/<node>``: the node's checks.
* ``GET /v1/health/checks/<service>``: the checks of every instance of a service.
* ``GET /v1/health/state/<state>``: checks in a state; ``any`` is every check. As in Consul
  the state is not validated: a state no check has (``maintenance`` included: maintenance
  checks are ``critical``) answers ``[]``.
* ``GET /v1/health/service/<service>``: ``CheckServiceNode`` objects
  ``{"Node": {...}, "Service": {...}, "Checks": [...]}`` (node checks first, then the
  instance's); ``?passing`` keeps instances whose checks all pass (400
  ``Invalid value for ?passing`` when it is not a Go bool), ``?tag=`` (repeatable, all must
  match), ``?node-meta=``, ``?filter=`` on the whole object.
* ``GET /v1/health/connect/<service>``: the same for the service's Connect proxies and
  Connect-native instances; ``/v1/health/ingress/<service>``: the instances of the ingress
  gateways whose ``ingress-gateway`` config entry routes to it.

All are blocking reads with Consul's indexes (see ``server.state.catalog``); every list is
``[]`` rather than ``null``, as Consul's handlers make it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.endpoints.catalog import (
    add_endpoint,
    apply_filter,
    compile_query_filter,
    node_meta_filters,
    path_name,
    peer_requested,
    service_tags,
    sort_near,
    terminating_gateways,
)
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, json_response
from server.state import StateStore, WatchSet
from server.state.catalog import HEALTH_PASSING, HealthCheck, Node, ServiceInstance

__all__ = ["Health", "register"]

_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")

CheckServiceNode = tuple[Node, ServiceInstance, list[HealthCheck]]


def _passing_param(request: web.Request) -> bool:
    """Consul's ``getBoolQueryParam`` for ``?passing`` (empty means true)."""
    if "passing" not in request.query:
        return False
    raw = request.query["passing"]
    if raw == "" or raw in _GO_TRUE:
        return True
    if raw in _GO_FALSE:
        return False
    raise HTTPError(400, "Invalid value for ?passing")


def check_service_node_api(item: CheckServiceNode) -> dict[str, Any]:
    node, service, checks = item
    return {
        "Node": node.to_api(),
        "Service": service.to_node_service(),
        "Checks": [check.to_api() for check in checks],
    }


class Health:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def _checks(
        self,
        request: web.Request,
        read: Any,
        *,
        node_meta: bool = True,
    ) -> web.Response:
        opts = self.ctx.options(request)
        compiled = compile_query_filter(opts)
        meta_filter = node_meta_filters(request) if node_meta else {}
        checks, meta = await self.ctx.read(opts, read)
        headers = self.ctx.headers(meta)
        if meta_filter:
            store = self.ctx.store
            checks = [c for c in checks if _node_meta_ok(store.catalog.node(c.node), meta_filter)]
        views = apply_filter(compiled, [c.to_api() for c in checks], lambda v: v)
        views = sort_near(self.ctx, request, views, lambda v: str(v["Node"]))
        return json_response(request, views, headers=headers)

    async def node_checks(self, request: web.Request) -> web.Response:
        name = path_name(request, "node")

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[HealthCheck]]:
            return store.catalog.node_checks(ws, name)

        return await self._checks(request, read, node_meta=False)

    async def service_checks(self, request: web.Request) -> web.Response:
        name = path_name(request, "service")

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[HealthCheck]]:
            return store.catalog.service_checks(ws, name)

        return await self._checks(request, read)

    async def state(self, request: web.Request) -> web.Response:
        state = request.match_info.get("name", "")
        if not state:
            raise HTTPError(400, "Missing check state")

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[HealthCheck]]:
            return store.catalog.checks_in_state(ws, state)

        return await self._checks(request, read)

    async def service(self, request: web.Request) -> web.Response:
        return await self._service_nodes(request, connect=False)

    async def connect(self, request: web.Request) -> web.Response:
        return await self._service_nodes(request, connect=True)

    async def ingress(self, request: web.Request) -> web.Response:
        return await self._service_nodes(request, connect=False, ingress=True)

    async def _service_nodes(
        self, request: web.Request, *, connect: bool, ingress: bool = False
    ) -> web.Response:
        opts = self.ctx.options(request)
        name = path_name(request, "service")
        compiled = compile_query_filter(opts)
        meta_filter = node_meta_filters(request)
        tags = service_tags(request)
        passing = _passing_param(request)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, list[CheckServiceNode]]:
            if ingress:
                return ingress_service_nodes(store, ws, name)
            index, items = store.catalog.check_service_nodes(ws, name, tags=tags, connect=connect)
            if connect:
                for gateway in terminating_gateways(store, ws, name):
                    gw_index, gw_items = store.catalog.check_service_nodes(ws, gateway)
                    index = max(index, gw_index)
                    items += [i for i in gw_items if i[1].kind == "terminating-gateway"]
            return index, items

        items, meta = await self.ctx.read(opts, read)
        headers = self.ctx.headers(meta)
        if peer_requested(request):
            items = []
        if meta_filter:
            items = [i for i in items if _node_meta_ok(i[0], meta_filter)]
        if passing:
            items = [i for i in items if all(c.status == HEALTH_PASSING for c in i[2])]
        views = apply_filter(compiled, [check_service_node_api(i) for i in items], lambda v: v)
        views = sort_near(self.ctx, request, views, lambda v: str(v["Node"]["Node"]))
        return json_response(request, views, headers=headers)


def ingress_service_nodes(
    store: StateStore, ws: WatchSet | None, service: str
) -> tuple[int, list[CheckServiceNode]]:
    """The instances of the ingress gateways whose config entry routes to ``service`` (by
    name or through a ``*`` listener service), with their checks (Consul's
    ``CheckIngressServiceNodes``)."""
    index, entries = store.config_entries.list_kind(ws, "ingress-gateway")
    wanted = service.lower()
    gateways: list[str] = []
    for entry in entries:
        for listener in entry.get("Listeners") or ():
            names = {str(s.get("Name") or "").lower() for s in listener.get("Services") or ()}
            if (wanted in names or "*" in names) and entry.get("Name") not in gateways:
                gateways.append(str(entry.get("Name")))
    out: list[CheckServiceNode] = []
    for gateway in sorted(gateways):
        gw_index, items = store.catalog.check_service_nodes(ws, gateway)
        index = max(index, gw_index)
        out.extend(i for i in items if i[1].kind == "ingress-gateway")
    if not gateways:
        index = max(index, store.max_index("nodes", "services", "checks"))
    return max(index, 1), out


def _node_meta_ok(node: Node | None, wanted: dict[str, str]) -> bool:
    meta = (node.meta if node is not None else None) or {}
    return all(key in meta and meta[key] == value for key, value in wanted.items())


def register(app: web.Application, ctx: ServerContext) -> None:
    """Add this domain's routes to ``app``."""
    health = Health(ctx)
    for path, handler in (
        ("/v1/health/node/{name:.*}", health.node_checks),
        ("/v1/health/checks/{name:.*}", health.service_checks),
        ("/v1/health/state/{name:.*}", health.state),
        ("/v1/health/service/{name:.*}", health.service),
        ("/v1/health/connect/{name:.*}", health.connect),
        ("/v1/health/ingress/{name:.*}", health.ingress),
    ):
        add_endpoint(app, path, ("GET",), handler)
