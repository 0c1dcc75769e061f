"""Classify an SNI server name into a mesh-gateway route (sans-I/O: no sockets, no clocks;
randomness is injected).

Names the gateway routes (issue 6; Consul's ``agent/xds`` mesh-gateway listeners):

=============================================  ===============================================
SNI                                            route
=============================================  ===============================================
``<node>.server.<local dc>.<domain>``          that local server's RPC address
``server.<local dc>.<domain>``                 any healthy local server (random pick)
``server.<remote dc>.<domain>``,               a gateway of that datacenter (its WAN address)
``<node>.server.<remote dc>.<domain>``
``[<subset>.]<svc>.<ns>.<local dc>.internal.   the local instances of that service
<trust domain>``
``[<subset>.]<svc>.<ns>.<remote dc>.internal.  a gateway of that datacenter
<trust domain>``
anything else                                  refused (:class:`Refusal` says why)
=============================================  ===============================================

Invariants:

- Matching is case-insensitive (ASCII): the SNI, the domain, the trust domain, datacenter, node
  and service names are all folded to lower case. :attr:`Route.sni` is the folded name.
- The domain and the trust domain are configured with or without a trailing dot; the SNI must
  not carry one (RFC 6066 §3), and a name ending in a dot is refused as ``INVALID_NAME``.
- Every label of the SNI is 1..63 characters from ``[a-z0-9_-]`` and the whole name at most 253;
  anything else is refused before any lookup.
- Server names (``*.server.<dc>.<domain>``) are routed only when the gateway exposes servers
  (``expose_servers``, Consul's ``consul-wan-federation`` meta); otherwise they are refused with
  ``SERVERS_NOT_EXPOSED``. A node name is one label (wanfed forbids dots in node names).
- Service names (``.internal.<trust domain>``) are tried first, because the trust domain
  usually ends in the server domain (``<uuid>.consul``); they are routed only when a trust domain
  is configured. ``internal-v1`` (admin partitions) names are refused as ``UNSUPPORTED``.
- A named local server is routed when it is in ``servers``, whatever its health: the caller
  asked for that node (Raft, RPC to a given server). ``server.<local dc>`` picks only among
  ``healthy_servers`` that also have an address.
- For a remote datacenter the node part is not checked here: the remote gateway decides.
  A datacenter absent from ``remote_gateways`` is ``UNKNOWN_DATACENTER``; present with no
  address, ``NO_GATEWAYS``. The table holds only gateways fit for routing (healthy, with the
  federation meta); filtering is the watcher's job.
- A :class:`Route` always has at least one candidate; ``target`` is one of ``candidates``,
  chosen uniformly with the injected rng over candidates sorted by address, so a seeded rng
  gives reproducible picks. ``candidates`` lets the I/O layer try another on a failed dial.
- :meth:`Router.route` never raises for any ``str`` input.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

__all__ = [
    "Address",
    "Refusal",
    "RefuseReason",
    "Route",
    "RouteKind",
    "Router",
    "RoutingTable",
    "SupportsRandrange",
]


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class SupportsRandrange(Protocol):
    """What the router needs of an rng (``random.Random`` fits)."""

    def randrange(self, stop: int, /) -> int: ...


class RouteKind(enum.StrEnum):
    LOCAL_SERVER = "local_server"  # <node>.server.<local dc>.<domain>
    ANY_LOCAL_SERVER = "any_local_server"  # server.<local dc>.<domain>
    REMOTE_SERVER_GATEWAY = "remote_server_gateway"  # *.server.<remote dc>.<domain>
    LOCAL_SERVICE = "local_service"  # <svc>.<ns>.<local dc>.internal.<trust domain>
    REMOTE_SERVICE_GATEWAY = "remote_service_gateway"  # <svc>.<ns>.<remote dc>.internal.<td>


class RefuseReason(enum.StrEnum):
    INVALID_NAME = "invalid_name"  # not a well-formed host name
    UNKNOWN_NAME = "unknown_name"  # not one of the routed shapes / not our domains
    UNSUPPORTED = "unsupported"  # a shape we recognise but do not route (internal-v1)
    SERVERS_NOT_EXPOSED = "servers_not_exposed"  # server name, gateway without expose-servers
    UNKNOWN_DATACENTER = "unknown_datacenter"
    UNKNOWN_SERVER = "unknown_server"  # <node>.server.<local dc>: no such local server
    NO_HEALTHY_SERVERS = "no_healthy_servers"
    NO_GATEWAYS = "no_gateways"  # remote datacenter known but without a gateway
    UNKNOWN_SERVICE = "unknown_service"  # local service with no instance


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    sni: str
    datacenter: str
    target: Address
    candidates: tuple[Address, ...]
    node: str | None = None  # LOCAL_SERVER: the node; remote server names: the node part if any
    service: str | None = None  # service routes: "<svc>" (subset in ``subset``)
    namespace: str | None = None
    subset: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefuseReason
    sni: str
    detail: str


AddressLike = Address | tuple[str, int]


def _fold(name: str) -> str:
    return name.lower().rstrip(".") if name.isascii() else name


def _addrs(items: Iterable[AddressLike]) -> tuple[Address, ...]:
    return tuple(sorted({Address(h.lower(), p) for h, p in items}))


@dataclass(frozen=True)
class RoutingTable:
    """What the gateway knows, as of one snapshot of its watches (the I/O layer builds it).

    ``servers`` maps local server node names to their RPC address; ``healthy_servers`` names
    the ones fit for ``server.<dc>`` routing; ``remote_gateways`` maps other datacenters to
    their routable gateways' WAN addresses; ``services`` maps ``(service, namespace)`` to the
    local instances' addresses (the key may also be ``("<subset>.<service>", namespace)`` for a
    subset). Names may be given in any case, domains with or without a trailing dot; the
    :class:`Router` normalises them. An entry for the local datacenter in ``remote_gateways`` is
    ignored: the local datacenter is never treated as remote."""

    datacenter: str
    domain: str = "consul"
    trust_domain: str | None = None
    expose_servers: bool = True
    servers: Mapping[str, AddressLike] = field(default_factory=dict)
    healthy_servers: Iterable[str] = ()
    remote_gateways: Mapping[str, Iterable[AddressLike]] = field(default_factory=dict)
    services: Mapping[tuple[str, str], Iterable[AddressLike]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Index:
    """A :class:`RoutingTable` folded to lower case, addresses deduplicated and sorted."""

    datacenter: str
    domain: str
    trust_domain: str | None
    expose_servers: bool
    servers: dict[str, Address]
    healthy: frozenset[str]
    gateways: dict[str, tuple[Address, ...]]
    services: dict[tuple[str, str], tuple[Address, ...]]

    @classmethod
    def build(cls, t: RoutingTable) -> _Index:
        dc = _fold(t.datacenter)
        services: dict[tuple[str, str], tuple[Address, ...]] = {}
        for (svc, ns), addrs in t.services.items():
            key = (_fold(svc), _fold(ns))
            services[key] = _addrs([*services.get(key, ()), *addrs])
        return cls(
            datacenter=dc,
            domain=_fold(t.domain),
            trust_domain=_fold(t.trust_domain) or None if t.trust_domain is not None else None,
            expose_servers=t.expose_servers,
            servers={_fold(n): Address(a[0].lower(), a[1]) for n, a in t.servers.items()},
            healthy=frozenset(_fold(n) for n in t.healthy_servers),
            gateways={
                _fold(d): _addrs(addrs) for d, addrs in t.remote_gateways.items() if _fold(d) != dc
            },
            services=services,
        )


#: Dot-separated labels, each matching ``[a-z0-9_-]{1,63}`` (one match per name, not per label).
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


class Router:
    """Routes SNI names against the current :class:`RoutingTable`; swap tables with
    :meth:`update` (a watch fired). ``rng`` is injected (``random.Random(seed)`` in tests)."""

    def __init__(self, table: RoutingTable, rng: SupportsRandrange) -> None:
        self._table = table
        self._index = _Index.build(table)
        self._rng = rng

    @property
    def table(self) -> RoutingTable:
        return self._table

    def update(self, table: RoutingTable) -> None:
        self._table = table
        self._index = _Index.build(table)

    def route(self, sni: str) -> Route | Refusal:
        name = sni.lower() if sni.isascii() else sni
        if not name or len(name) > 253 or name.endswith("."):
            return Refusal(RefuseReason.INVALID_NAME, name, "empty, too long or trailing dot")
        if _NAME.fullmatch(name) is None:
            return Refusal(RefuseReason.INVALID_NAME, name, "labels must match [a-z0-9_-]{1,63}")
        t = self._index
        if t.trust_domain is not None:
            for marker in ("internal", "internal-v1"):
                suffix = f".{marker}.{t.trust_domain}"
                if name.endswith(suffix):
                    return self._service(name, name[: -len(suffix)].split("."), marker)
        dom = f".{t.domain}"
        if name.endswith(dom):
            prefix = name[: -len(dom)].split(".")
            if len(prefix) in (2, 3) and prefix[-2] == "server":
                return self._server(name, prefix)
        return Refusal(RefuseReason.UNKNOWN_NAME, name, "not a server or service name we route")

    # -- servers -------------------------------------------------------------------------------

    def _server(self, name: str, prefix: list[str]) -> Route | Refusal:
        t = self._index
        dc = prefix[-1]
        node = prefix[0] if len(prefix) == 3 else None
        if not t.expose_servers:
            return Refusal(
                RefuseReason.SERVERS_NOT_EXPOSED, name, "this gateway does not expose servers"
            )
        if dc == t.datacenter:
            servers = t.servers
            if node is not None:
                addr = servers.get(node)
                if addr is None:
                    return Refusal(RefuseReason.UNKNOWN_SERVER, name, f"no server {node!r} in {dc}")
                return Route(RouteKind.LOCAL_SERVER, name, dc, addr, (addr,), node=node)
            healthy = t.healthy
            candidates = _addrs(a for n, a in servers.items() if n in healthy)
            if not candidates:
                return Refusal(RefuseReason.NO_HEALTHY_SERVERS, name, f"no healthy server in {dc}")
            return self._pick(RouteKind.ANY_LOCAL_SERVER, name, dc, candidates)
        found = self._gateways(name, dc)
        if isinstance(found, Refusal):
            return found
        return self._pick(RouteKind.REMOTE_SERVER_GATEWAY, name, dc, found, node=node)

    # -- services ------------------------------------------------------------------------------

    def _service(self, name: str, prefix: list[str], marker: str) -> Route | Refusal:
        if marker != "internal":
            return Refusal(RefuseReason.UNSUPPORTED, name, "admin partitions are not supported")
        if len(prefix) not in (3, 4):
            return Refusal(
                RefuseReason.UNKNOWN_NAME, name, "expected [<subset>.]<svc>.<ns>.<dc>.internal"
            )
        subset = prefix[0] if len(prefix) == 4 else None
        svc, ns, dc = prefix[-3:]
        t = self._index
        if dc == t.datacenter:
            services = t.services
            key = (f"{subset}.{svc}" if subset else svc, ns)
            instances: tuple[Address, ...] = services.get(key, ())
            if not instances:
                return Refusal(
                    RefuseReason.UNKNOWN_SERVICE, name, f"no local instance of {key[0]} in {ns}"
                )
            kind = RouteKind.LOCAL_SERVICE
        else:
            found = self._gateways(name, dc)
            if isinstance(found, Refusal):
                return found
            instances, kind = found, RouteKind.REMOTE_SERVICE_GATEWAY
        return self._pick(kind, name, dc, instances, service=svc, namespace=ns, subset=subset)

    # -- helpers -------------------------------------------------------------------------------

    def _gateways(self, name: str, dc: str) -> tuple[Address, ...] | Refusal:
        gateways = self._index.gateways
        if dc not in gateways:
            return Refusal(RefuseReason.UNKNOWN_DATACENTER, name, f"unknown datacenter {dc!r}")
        found = gateways[dc]
        if not found:
            return Refusal(RefuseReason.NO_GATEWAYS, name, f"no gateway known for {dc!r}")
        return found

    def _pick(
        self,
        kind: RouteKind,
        name: str,
        dc: str,
        candidates: tuple[Address, ...],
        *,
        node: str | None = None,
        service: str | None = None,
        namespace: str | None = None,
        subset: str | None = None,
    ) -> Route:
        target = candidates[self._rng.randrange(len(candidates))]
        return Route(kind, name, dc, target, candidates, node, service, namespace, subset)
