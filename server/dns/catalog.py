"""What the DNS interface reads, behind a small interface of its own.

``DnsCatalog`` is the seam between the DNS server and the data it answers from: a server
agent reads its own replicated store (``StoreCatalog``, stale reads as Consul's DNS does by
default); a client agent, which has no store, will plug in an implementation that asks a
server over RPC. The resolver knows nothing but this protocol and the plain records below.

Every method takes the datacenter asked for; an implementation that cannot reach it raises
``NoPathToDatacenter`` (answered NXDOMAIN, as Consul does); one that cannot read at all (no
leader when a consistent read is needed) raises ``CatalogUnavailable`` (answered SERVFAIL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from server.state.sessions import parse_duration

if TYPE_CHECKING:
    from server.endpoints.context import ServerContext
    from server.state import StateStore
    from server.state.catalog import HealthCheck, Node, ServiceInstance

__all__ = [
    "CatalogUnavailable",
    "DnsCatalog",
    "DnsInstance",
    "DnsNode",
    "NoPathToDatacenter",
    "PreparedAnswer",
    "StoreCatalog",
]


class NoPathToDatacenter(Exception):
    """The datacenter asked for is unknown or unreachable."""


class CatalogUnavailable(Exception):
    """The catalog cannot be read now (e.g. no cluster leader for a consistent read)."""


@dataclass(frozen=True, slots=True)
class DnsNode:
    name: str
    address: str
    datacenter: str
    meta: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DnsInstance:
    """One service instance with its node and the statuses of its checks (node checks
    included): the resolver applies Consul's health rules to them."""

    node: DnsNode
    service: str
    service_id: str
    address: str  # the service's own address, "" for the node's
    port: int
    tags: tuple[str, ...] = ()
    weights: tuple[int, int] = (1, 1)  # (passing, warning)
    statuses: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class PreparedAnswer:
    """A prepared query's result: instances already filtered by the query's own rules."""

    service: str
    instances: list[DnsInstance]
    ttl: float | None  # the query's DNS.TTL in seconds, None when it sets none


class DnsCatalog(Protocol):
    async def service_instances(
        self, datacenter: str, service: str, tag: str | None, *, connect: bool = False
    ) -> list[DnsInstance]:
        """Every instance of ``service`` (with ``tag`` when given), healthy or not; with
        ``connect``, the Connect proxies for it and its Connect-native instances instead."""
        ...

    async def node(self, datacenter: str, name: str) -> DnsNode | None: ...

    async def nodes_by_address(self, address: str) -> list[DnsNode]:
        """Nodes of the local datacenter whose address is ``address`` (for PTR)."""
        ...

    async def prepared_query(self, datacenter: str, name: str) -> PreparedAnswer | None:
        """Execute the prepared query ``name`` (ID or name); None when there is none."""
        ...


def _dns_node(node: Node, datacenter: str) -> DnsNode:
    meta = tuple(sorted((str(k), str(v)) for k, v in (node.meta or {}).items()))
    return DnsNode(node.node, node.address, node.datacenter or datacenter, meta)


def _instance(
    node: Node, svc: ServiceInstance, checks: Sequence[HealthCheck], datacenter: str
) -> DnsInstance:
    return DnsInstance(
        node=_dns_node(node, datacenter),
        service=svc.service,
        service_id=svc.id,
        address=svc.address,
        port=svc.port,
        tags=tuple(svc.tags or ()),
        weights=svc.weights,
        statuses=tuple(c.status for c in checks),
    )


class StoreCatalog:
    """``DnsCatalog`` over this server's own state store.

    Reads are stale (the local store as it is) while ``allow_stale`` holds and this server
    heard from the leader within ``max_stale`` seconds; otherwise a read first waits for a
    ReadIndex from the leader (``ServerContext.barrier``), as Consul retries a too-stale DNS
    read with a consistent one."""

    def __init__(
        self, ctx: ServerContext, *, allow_stale: bool = True, max_stale: float = math.inf
    ) -> None:
        self.ctx = ctx
        self.allow_stale = allow_stale
        self.max_stale = max_stale

    @property
    def datacenter(self) -> str:
        return self.ctx.config.datacenter

    def last_contact(self) -> float:
        """Seconds since this server last heard from a leader (0 on the leader; infinite
        without a known leader)."""
        raft = self.ctx.raft
        if raft is None or raft.is_leader:
            return 0.0
        if raft.leader_id is None:
            return math.inf
        core: Any = raft.core
        if core is None:
            return math.inf
        return float(getattr(core, "election_elapsed", 0)) * raft.timing.tick_seconds

    async def _store(self, datacenter: str) -> StateStore:
        if datacenter and datacenter.lower() != self.datacenter.lower():
            raise NoPathToDatacenter(datacenter)
        if not (self.allow_stale and self.last_contact() <= self.max_stale):
            from server.endpoints.http import HTTPError, QueryOptions

            try:
                await self.ctx.barrier(QueryOptions())
            except HTTPError as exc:
                raise CatalogUnavailable(str(exc)) from None
        try:
            return self.ctx.store
        except Exception as exc:  # no FSM on this agent
            raise CatalogUnavailable(str(exc)) from None

    async def service_instances(
        self, datacenter: str, service: str, tag: str | None, *, connect: bool = False
    ) -> list[DnsInstance]:
        store = await self._store(datacenter)
        _, rows = store.catalog.check_service_nodes(
            None, service, tags=[tag] if tag else None, connect=connect
        )
        return [_instance(node, svc, checks, self.datacenter) for node, svc, checks in rows]

    async def node(self, datacenter: str, name: str) -> DnsNode | None:
        store = await self._store(datacenter)
        _, row = store.catalog.get_node(None, name)
        return None if row is None else _dns_node(row, self.datacenter)

    async def nodes_by_address(self, address: str) -> list[DnsNode]:
        store = await self._store("")
        _, rows = store.catalog.list_nodes(None)
        return [_dns_node(n, self.datacenter) for n in rows if _same_address(n.address, address)]

    async def prepared_query(self, datacenter: str, name: str) -> PreparedAnswer | None:
        # The execute logic of /v1/query/<id>/execute (server/endpoints/query.py), minus
        # failover and `near`, which need other datacenters and coordinates.
        from server.endpoints.query import _healthy, _meta_match, _tags_match
        from server.state.prepared_queries import PreparedQueryError

        store = await self._store(datacenter)
        try:
            _, query = store.prepared_queries.resolve(None, name)
        except PreparedQueryError:
            return None
        if query is None:
            return None
        svc = query.get("Service") or {}
        service_name = str(svc.get("Service", ""))
        _, rows = store.catalog.check_service_nodes(
            None, service_name, connect=bool(svc.get("Connect"))
        )
        ignore = set(svc.get("IgnoreCheckIDs") or ())
        only_passing = bool(svc.get("OnlyPassing"))
        instances = [
            _instance(node, row, checks, self.datacenter)
            for node, row, checks in rows
            if _healthy(checks, only_passing, ignore)
            and _tags_match(row.tags, svc.get("Tags") or [])
            and _meta_match(node.meta, svc.get("NodeMeta"))
            and _meta_match(row.meta, svc.get("ServiceMeta"))
        ]
        ttl: float | None = None
        raw_ttl = str((query.get("DNS") or {}).get("TTL") or "")
        if raw_ttl:
            try:
                ttl = parse_duration(raw_ttl) / 1e9
            except ValueError:
                ttl = None
        return PreparedAnswer(service_name, instances, ttl)


def _same_address(a: str, b: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b
