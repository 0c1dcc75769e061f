"""Prepared queries over HTTP (Consul's ``agent/prepared_query_endpoint.go``):

* ``POST /v1/query`` creates (``{"ID": "<uuid>"}``), ``GET /v1/query`` lists (``[]`` when
  none);
* ``GET /v1/query/:id`` answers a one-element list (404 ``Query not found``),
  ``PUT /v1/query/:id`` updates, ``DELETE /v1/query/:id`` deletes (empty 200 answers);
* ``GET /v1/query/:id_or_name/execute`` runs the query against the catalog:
  Consul's ``PreparedQueryExecuteResponse`` (``Service``, ``Nodes``, ``DNS``,
  ``Datacenter``, ``Failovers``); ``?limit=`` trims the (shuffled) result;
* ``GET /v1/query/:id_or_name/explain`` answers ``{"Query": <rendered query>}``.

Bodies decode as Consul's: field names case-insensitive (py-consul sends ``service``,
``onlypassing``, ``nearestn``...), also in nested structures. Validation is Consul's
``parseQuery`` (``Must be bound to a session``, ``Must provide a Service name to query``,
``Bad NearestN``, ``Bad DNS TTL``, ``Targets cannot be populated with NearestN or
Datacenters``), answered as ``Invalid prepared query: <reason>``; the state's checks
(duplicate names, unknown sessions, ``failed compiling template: ...``) come back as they are;
all are 500s, as Consul's RPC errors are. Update and delete of a missing query: ``Cannot modify non-existent prepared query:
'<id>'``.

Execute and explain bodies also carry Consul's embedded ``QueryMeta`` fields (``Index``,
``LastContact``, ``KnownLeader``, ``ConsistencyLevel``...).

Execution: healthy instances are those with no critical check (no warning either with
``OnlyPassing``), ignoring ``IgnoreCheckIDs``; then ``Tags`` (``!tag`` excludes),
``NodeMeta`` and ``ServiceMeta`` filters. Failover to other datacenters is not done (there is
no federation yet): ``Failovers`` is always 0.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from aiohttp import web

from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.health import check_service_node_api
from server.endpoints.http import HTTPError, fold_keys, json_response, read_json
from server.state import StateStore, WatchSet, parse_duration
from server.state.prepared_queries import PreparedQueryError

__all__ = ["decode_query", "register", "validate_query"]

_QUERY_KEYS = ("ID", "Name", "Session", "Token", "Template", "Service", "DNS")
_TEMPLATE_KEYS = ("Type", "Regexp", "RemoveEmptyTags")
_SERVICE_KEYS = (
    "Service",
    "SamenessGroup",
    "Failover",
    "IgnoreCheckIDs",
    "OnlyPassing",
    "Near",
    "Tags",
    "NodeMeta",
    "ServiceMeta",
    "Peer",
    "Connect",
)
_FAILOVER_KEYS = ("NearestN", "Datacenters", "Targets")
_TARGET_KEYS = ("Peer", "Datacenter", "PeerName")
_DNS_KEYS = ("TTL",)
REDACTED_TOKEN = "<hidden>"


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a string")
    return value


def _str_list(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what}: expected a list of strings")
    return list(value)


def _str_map(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object")
    return {str(k): str(v) for k, v in value.items()}


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{what}: expected a number")
    return int(value)


def _bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected a boolean")
    return value


def decode_query(raw: Any) -> dict[str, Any]:
    """A request body as a ``PreparedQuery`` in API shape (every field present, Go's zero
    values). Raises ``ValueError`` for wrong types; HTTPError 400 for a non-object."""
    body = fold_keys(raw, _QUERY_KEYS)
    template = fold_keys(body.get("Template"), _TEMPLATE_KEYS, what="Template")
    service = fold_keys(body.get("Service"), _SERVICE_KEYS, what="Service")
    failover = fold_keys(service.get("Failover"), _FAILOVER_KEYS, what="Failover")
    dns = fold_keys(body.get("DNS"), _DNS_KEYS, what="DNS")
    targets = failover.get("Targets")
    if targets is not None:
        if not isinstance(targets, list):
            raise ValueError("Failover.Targets: expected a list")
        targets = [
            {
                "Peer": _str(t.get("Peer"), "Peer"),
                "Datacenter": _str(t.get("Datacenter"), "Datacenter"),
            }
            for t in (fold_keys(item, _TARGET_KEYS, what="Target") for item in targets)
        ]
    return {
        "ID": _str(body.get("ID"), "ID"),
        "Name": _str(body.get("Name"), "Name"),
        "Session": _str(body.get("Session"), "Session"),
        "Token": _str(body.get("Token"), "Token"),
        "Template": {
            "Type": _str(template.get("Type"), "Template.Type"),
            "Regexp": _str(template.get("Regexp"), "Template.Regexp"),
            "RemoveEmptyTags": _bool(template.get("RemoveEmptyTags"), "Template.RemoveEmptyTags"),
        },
        "Service": {
            "Service": _str(service.get("Service"), "Service.Service"),
            "SamenessGroup": _str(service.get("SamenessGroup"), "Service.SamenessGroup"),
            "Failover": {
                "NearestN": _int(failover.get("NearestN"), "Failover.NearestN"),
                "Datacenters": _str_list(failover.get("Datacenters"), "Failover.Datacenters"),
                "Targets": targets,
            },
            "IgnoreCheckIDs": _str_list(service.get("IgnoreCheckIDs"), "Service.IgnoreCheckIDs"),
            "OnlyPassing": _bool(service.get("OnlyPassing"), "Service.OnlyPassing"),
            "Near": _str(service.get("Near"), "Service.Near"),
            "Tags": _str_list(service.get("Tags"), "Service.Tags"),
            "NodeMeta": _str_map(service.get("NodeMeta"), "Service.NodeMeta"),
            "ServiceMeta": _str_map(service.get("ServiceMeta"), "Service.ServiceMeta"),
            "Peer": _str(service.get("Peer"), "Service.Peer"),
            "Connect": _bool(service.get("Connect"), "Service.Connect"),
        },
        "DNS": {"TTL": _str(dns.get("TTL"), "DNS.TTL")},
    }


_ORDER: dict[str, Any] = {}


def ordered_query(query: dict[str, Any]) -> dict[str, Any]:
    """A stored query with its fields in Go's order (Raft stores them with sorted keys)."""
    if not _ORDER:
        _ORDER.update(decode_query({}))
        _ORDER["CreateIndex"] = 0
        _ORDER["ModifyIndex"] = 0
    return dict(_reorder(query, _ORDER))


def _reorder(value: Any, like: Any) -> Any:
    if not isinstance(value, dict) or not isinstance(like, dict):
        return value
    out = {k: _reorder(value[k], like[k]) for k in like if k in value}
    out.update({k: v for k, v in value.items() if k not in like})
    return out


def validate_query(query: dict[str, Any]) -> None:
    """Consul's ``parseQuery``; raises ``ValueError`` with Consul's text (the endpoint adds
    ``Invalid prepared query: ``). Templates are compiled by the state store, as in Consul."""
    if not query["Name"] and not query["Template"]["Type"] and not query["Session"]:
        raise ValueError("Must be bound to a session")
    if query["Token"] == REDACTED_TOKEN:
        raise ValueError(
            f"Bad Token '{REDACTED_TOKEN}', it looks like a query definition with a redacted "
            "token was submitted"
        )
    service = query["Service"]
    if not service["Service"]:
        raise ValueError("Must provide a Service name to query")
    failover = service["Failover"]
    if failover["NearestN"] < 0:
        raise ValueError(f"Bad NearestN '{failover['NearestN']}', must be >= 0")
    if (failover["NearestN"] != 0 or failover["Datacenters"]) and failover["Targets"]:
        raise ValueError("Targets cannot be populated with NearestN or Datacenters")
    for key in service["NodeMeta"] or {}:
        if not key:
            raise ValueError("Couldn't load metadata pair: key cannot be blank")
    ttl = query["DNS"]["TTL"]
    if ttl:
        try:
            value = parse_duration(ttl)
        except ValueError as exc:
            raise ValueError(f"Bad DNS TTL '{ttl}': {exc}") from None
        if value < 0:
            raise ValueError(f"DNS TTL '{value}', must be >=0")


def _healthy(checks: list[Any], only_passing: bool, ignore: set[str]) -> bool:
    for check in checks:
        if check.check_id in ignore:
            continue
        if check.status == "critical" or (only_passing and check.status == "warning"):
            return False
    return True


def _tags_match(service_tags: tuple[str, ...] | None, wanted: list[str]) -> bool:
    have = {t.lower() for t in service_tags or ()}
    for tag in wanted:
        tag = tag.strip().lower()
        if not tag:
            continue
        if tag.startswith("!"):
            if tag[1:] in have:
                return False
        elif tag not in have:
            return False
    return True


def _meta_match(meta: Any, wanted: dict[str, str] | None) -> bool:
    if not wanted:
        return True
    have = dict(meta or {})
    return all(have.get(k) == v for k, v in wanted.items())


class QueryEndpoint:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def _apply(self, op: str, query: dict[str, Any]) -> None:
        try:
            await self.ctx.apply(MessageType.PREPARED_QUERY, {"Op": op, "Query": query})
        except ValueError as exc:
            raise HTTPError(500, str(exc)) from None

    async def _decode(self, request: web.Request) -> dict[str, Any]:
        raw = await read_json(request, empty={})
        try:
            return decode_query(raw)
        except ValueError as exc:
            raise HTTPError(400, f"Request decode failed: {exc}") from None

    @staticmethod
    def _validate(query: dict[str, Any]) -> None:
        try:
            validate_query(query)
        except ValueError as exc:
            raise HTTPError(500, f"Invalid prepared query: {exc}") from None

    # --- /v1/query ---------------------------------------------------------------------

    async def collection(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.ctx.check_datacenter(request.query.get("dc", ""))
            query = await self._decode(request)
            self._validate(query)
            store = self.ctx.store
            while True:
                query_id = str(uuid.uuid4())
                if store.prepared_queries.get(None, query_id)[1] is None:
                    break
            query["ID"] = query_id
            await self._apply("create", query)
            return json_response(request, {"ID": query_id})
        opts = self.ctx.options(request)
        queries, meta = await self.ctx.read(opts, lambda s, ws: s.prepared_queries.list_all(ws))
        queries = [ordered_query(q) for q in queries]
        queries = self.ctx.apply_filter(opts.filter, queries, lambda q: q)
        return json_response(request, queries, headers=self.ctx.headers(meta))

    # --- /v1/query/:id -----------------------------------------------------------------

    async def item(self, request: web.Request) -> web.Response:
        query_id = request.match_info["id"]
        if request.method == "GET":
            opts = self.ctx.options(request)
            query, meta = await self.ctx.read(
                opts, lambda s, ws: s.prepared_queries.get(ws, query_id)
            )
            if query is None:
                return web.Response(
                    status=404, text="Query not found", headers=self.ctx.headers(meta)
                )
            return json_response(request, [ordered_query(query)], headers=self.ctx.headers(meta))
        self.ctx.check_datacenter(request.query.get("dc", ""))
        query = await self._decode(request) if request.method == "PUT" else {"ID": query_id}
        query["ID"] = query_id  # the URL's ID, not the body's
        if self.ctx.store.prepared_queries.get(None, query_id)[1] is None:
            raise HTTPError(500, f"Cannot modify non-existent prepared query: '{query_id}'")
        if request.method == "PUT":
            self._validate(query)
            await self._apply("update", query)
            return web.Response(status=200)
        await self._apply("delete", query)
        return web.Response(status=200)

    # --- execute and explain -------------------------------------------------------------

    async def _resolve(
        self, request: web.Request, read_nodes: bool
    ) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
        name = request.match_info["id"]
        opts = self.ctx.options(request)

        def read(
            store: StateStore, ws: WatchSet | None
        ) -> tuple[int, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
            index, query = store.prepared_queries.resolve(ws, name)
            if query is None or not read_nodes:
                return index, (query, [])
            service = query["Service"]
            nodes_index, rows = store.catalog.check_service_nodes(
                ws, service["Service"], connect=bool(service.get("Connect"))
            )
            ignore = set(service.get("IgnoreCheckIDs") or ())
            out = [
                check_service_node_api(row)
                for row in rows
                if _healthy(row[2], bool(service.get("OnlyPassing")), ignore)
                and _tags_match(row[1].tags, service.get("Tags") or [])
                and _meta_match(row[0].meta, service.get("NodeMeta"))
                and _meta_match(row[1].meta, service.get("ServiceMeta"))
            ]
            return max(index, nodes_index), (query, out)

        try:
            (query, nodes), meta = await self.ctx.read(opts, read)
        except PreparedQueryError as exc:
            raise HTTPError(500, str(exc)) from None
        if query is None:
            raise HTTPError(404, "Query not found")
        return query, meta, nodes

    async def execute(self, request: web.Request) -> web.Response:
        raw_limit = request.query.get("limit", "")
        limit = 0
        if raw_limit:
            try:
                limit = int(raw_limit, 10)
            except ValueError:
                message = f'Bad limit: strconv.Atoi: parsing "{raw_limit}": invalid syntax'
                raise HTTPError(500, message) from None
        query, meta, nodes = await self._resolve(request, True)
        random.shuffle(nodes)
        if limit > 0:
            nodes = nodes[:limit]
        body = {
            "Service": query["Service"]["Service"],
            "Nodes": nodes,
            "DNS": ordered_query(query)["DNS"],
            "Datacenter": self.ctx.config.datacenter,
            "Failovers": 0,
            **meta.embedded(),
        }
        return json_response(request, body, headers=self.ctx.headers(meta))

    async def explain(self, request: web.Request) -> web.Response:
        query, meta, _ = await self._resolve(request, False)
        body = {"Query": ordered_query(query), **meta.embedded()}
        return json_response(request, body, headers=self.ctx.headers(meta))


def register(app: web.Application, ctx: ServerContext) -> None:
    endpoint = QueryEndpoint(ctx)
    app.router.add_get("/v1/query", endpoint.collection)
    app.router.add_post("/v1/query", endpoint.collection)
    app.router.add_get("/v1/query/", endpoint.collection)
    app.router.add_post("/v1/query/", endpoint.collection)
    app.router.add_get("/v1/query/{id}/execute", endpoint.execute)
    app.router.add_get("/v1/query/{id}/explain", endpoint.explain)
    app.router.add_get("/v1/query/{id}", endpoint.item)
    app.router.add_put("/v1/query/{id}", endpoint.item)
    app.router.add_delete("/v1/query/{id}", endpoint.item)
