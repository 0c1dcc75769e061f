"""``RelayCatalog``: the ``DnsCatalog`` of a client agent, which has no store of its own.

Every read is the HTTP API request a Consul client agent's DNS server would turn into an RPC
(``/v1/health/service/<name>``, ``/v1/catalog/node/<name>``, ``/v1/catalog/nodes``,
``/v1/query/<id>/execute``), sent straight over server RPC (``ForwardHTTP`` with ``relay``) to
one of the servers in the client's ``ServerPool``, exactly as the client's HTTP relay
(``server.endpoints.forward._relay_to_servers``) does for API callers; the JSON answer is
turned into the resolver's plain records.

Why server RPC and not an HTTP request to this agent's own listener: the HTTP listener may be
disabled (``http_port = -1``), bound to a wildcard or a unix socket, or guarded by TLS or ACLs;
a loopback hop would also cost a second HTTP parse per DNS question. The server RPC path has
none of these dependencies and fails over between servers the same way the HTTP relay does.

Reads are stale (``?stale``) while ``dns_config.allow_stale`` holds, as Consul's DNS does; an
answer whose ``X-Consul-LastContact`` exceeds ``max_stale`` is read again consistently (from
the leader). A datacenter the servers do not know gives ``NoPathToDatacenter``; no reachable
server, or a server error, gives ``CatalogUnavailable`` (SERVFAIL).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from proto import server_rpc_pb2 as pb
from server.dns.catalog import (
    CatalogUnavailable,
    DnsInstance,
    DnsNode,
    NoPathToDatacenter,
    PreparedAnswer,
    _same_address,
)
from server.endpoints.forward import ORIGIN_NODE_HEADER
from server.state.sessions import parse_duration

if TYPE_CHECKING:
    from server.endpoints.context import ServerContext

__all__ = ["RelayCatalog"]

#: How long one DNS read may wait for a server (per server tried). DNS clients retry after
#: a few seconds themselves; an answer later than that is useless.
READ_TIMEOUT = 2.0
#: The whole read, over every server tried.
TOTAL_TIMEOUT = 4.0


class RelayCatalog:
    """``DnsCatalog`` over server RPC (module docstring)."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        allow_stale: bool = True,
        max_stale: float = math.inf,
        read_timeout: float = READ_TIMEOUT,
        total_timeout: float = TOTAL_TIMEOUT,
    ) -> None:
        self.ctx = ctx
        self.allow_stale = allow_stale
        self.max_stale = max_stale
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout

    @classmethod
    def for_agent(cls, ctx: ServerContext) -> RelayCatalog:
        """The catalog of a client agent, with its ``dns_config`` staleness settings."""
        from server.dns.resolver import DnsSettings

        settings = DnsSettings.from_config(ctx.config)
        return cls(ctx, allow_stale=settings.allow_stale, max_stale=settings.max_stale)

    @property
    def datacenter(self) -> str:
        return self.ctx.config.datacenter

    # --- transport ----------------------------------------------------------------------

    async def _send(self, path_qs: str) -> tuple[int, dict[str, str], bytes]:
        """One GET relayed to a server: the first one that answers (preferred first; a
        server that fails is reported to the pool and the next one tried)."""
        pool, rpc = self.ctx.server_pool, self.ctx.leader_rpc
        if pool is None or rpc is None:
            raise CatalogUnavailable("No known Consul servers")
        message = pb.HttpRequest(
            method="GET",
            path_qs=path_qs,
            headers=[
                pb.Header(name="Accept", value="application/json"),
                pb.Header(name=ORIGIN_NODE_HEADER, value=self.ctx.config.node_name),
            ],
            body=b"",
            relay=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout
        last_error = "No known Consul servers"
        while True:
            for address in pool.candidates():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    reply = await rpc.forward_http(
                        address, message, min(self.read_timeout, remaining)
                    )
                except Exception as exc:  # NotSent, timeouts, transport errors: next server
                    last_error = getattr(exc, "message", None) or str(exc) or repr(exc)
                    pool.failed(address)
                    continue
                headers = {h.name.lower(): h.value for h in reply.headers}
                return reply.status, headers, bytes(reply.body)
            if loop.time() >= deadline or self.ctx.closed:
                raise CatalogUnavailable(last_error)
            await asyncio.sleep(0.1)

    async def _get(self, path: str, params: dict[str, str], datacenter: str) -> Any:
        """GET ``path`` with ``params`` (plus ``dc`` and ``stale``); the decoded JSON body.
        ``None`` for a 404."""
        query = dict(params)
        if datacenter and datacenter.lower() != self.datacenter.lower():
            query["dc"] = datacenter
        stale = self.allow_stale
        for _ in range(2):
            qs = dict(query)
            if stale:
                qs["stale"] = ""
            path_qs = path + ("?" + urlencode(qs) if qs else "")
            status, headers, body = await self._send(path_qs)
            if status == 200 and stale and self._too_stale(headers):
                stale = False  # as Consul: retry a too-stale answer with a consistent read
                continue
            return self._decode(status, body)
        raise AssertionError("unreachable")

    def _too_stale(self, headers: dict[str, str]) -> bool:
        if math.isinf(self.max_stale):
            return False
        try:
            last_contact_ms = float(headers.get("x-consul-lastcontact", "0"))
        except ValueError:
            return False
        return last_contact_ms / 1000.0 > self.max_stale

    @staticmethod
    def _decode(status: int, body: bytes) -> Any:
        text = body.decode("utf-8", "replace").strip()
        if status == 404:
            return None
        if status != 200:
            if "no path to datacenter" in text.lower():
                raise NoPathToDatacenter(text)
            raise CatalogUnavailable(f"{status}: {text}")
        try:
            return json.loads(text) if text else None
        except ValueError as exc:
            raise CatalogUnavailable(f"bad JSON from server: {exc}") from None

    # --- DnsCatalog ---------------------------------------------------------------------

    async def service_instances(
        self, datacenter: str, service: str, tag: str | None, *, connect: bool = False
    ) -> list[DnsInstance]:
        kind = "connect" if connect else "service"
        params = {"tag": tag} if tag else {}
        rows = await self._get(f"/v1/health/{kind}/{quote(service, safe='')}", params, datacenter)
        return [_instance(row, self.datacenter) for row in rows or []]

    async def node(self, datacenter: str, name: str) -> DnsNode | None:
        found = await self._get(f"/v1/catalog/node/{quote(name, safe='')}", {}, datacenter)
        if not isinstance(found, dict) or not found.get("Node"):
            return None
        return _node(found["Node"], self.datacenter)

    async def nodes_by_address(self, address: str) -> list[DnsNode]:
        rows = await self._get("/v1/catalog/nodes", {}, "")
        return [
            _node(row, self.datacenter)
            for row in rows or []
            if _same_address(str(row.get("Address", "")), address)
        ]

    async def prepared_query(self, datacenter: str, name: str) -> PreparedAnswer | None:
        path = f"/v1/query/{quote(name, safe='')}/execute"
        try:
            found = await self._get(path, {}, datacenter)
        except CatalogUnavailable as exc:
            # An unknown query is a 404 (None above); a name the server cannot resolve (its
            # PreparedQueryError: a bad template, ...) is a 500 with the reason: no query
            # either, as StoreCatalog answers. A missing leader or server stays SERVFAIL.
            text = str(exc).lower()
            if text.startswith("500:") and "leader" not in text and "servers" not in text:
                return None
            raise
        if not isinstance(found, dict):
            return None
        ttl: float | None = None
        raw_ttl = str((found.get("DNS") or {}).get("TTL") or "")
        if raw_ttl:
            try:
                ttl = parse_duration(raw_ttl) / 1e9
            except ValueError:
                ttl = None
        instances = [_instance(row, self.datacenter) for row in found.get("Nodes") or []]
        return PreparedAnswer(str(found.get("Service", "")), instances, ttl)


# --- JSON -> records ----------------------------------------------------------------------


def _node(raw: dict[str, Any], datacenter: str) -> DnsNode:
    meta = tuple(sorted((str(k), str(v)) for k, v in (raw.get("Meta") or {}).items()))
    return DnsNode(
        str(raw.get("Node", "")),
        str(raw.get("Address", "")),
        str(raw.get("Datacenter") or datacenter),
        meta,
    )


def _instance(row: dict[str, Any], datacenter: str) -> DnsInstance:
    """One ``CheckServiceNode`` of ``/v1/health/service`` as the resolver's record."""
    svc = row.get("Service") or {}
    weights = svc.get("Weights") or {}
    return DnsInstance(
        node=_node(row.get("Node") or {}, datacenter),
        service=str(svc.get("Service", "")),
        service_id=str(svc.get("ID", "")),
        address=str(svc.get("Address") or ""),
        port=int(svc.get("Port") or 0),
        tags=tuple(str(t) for t in svc.get("Tags") or ()),
        weights=(int(weights.get("Passing", 1)), int(weights.get("Warning", 1))),
        statuses=tuple(str(c.get("Status", "")) for c in row.get("Checks") or ()),
    )
