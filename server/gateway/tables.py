"""Turn the agent's JSON answers into the gateway's routing inputs (sans-I/O).

The gateway learns (issue 6; Consul's ``agent/proxycfg/mesh_gateway.go``):

- local servers from ``GET /v1/health/service/consul``: one ``CheckServiceNode`` per server,
  the node name ``Node.Node``, the RPC address ``Service.Address`` (else ``Node.Address``) and
  ``Service.Port``; a server is healthy when none of its checks is ``critical``;
- remote gateways from ``GET /v1/internal/federation-states/mesh-gateways``:
  ``{dc: [CheckServiceNode]}``; only gateways carrying the federation meta
  (``consul-wan-federation = "1"``) and no critical check are kept; the address is the ``wan``
  tagged address, else ``Service.Address``/``Node.Address`` with ``Service.Port``.

Invariants:

- The parsers never raise on a well-typed but incomplete entry: an entry without a node name,
  an address or a valid port (1..65535) is skipped, not fatal (the agent's answer is trusted
  for shape, not for completeness). They raise ``TypeError``/``ValueError`` only when the
  top-level shape is wrong (not a list / not a mapping), so the caller can keep its last table.
- A datacenter whose every gateway is filtered out stays in the result with an empty list: the
  router then answers ``no_gateways`` (known datacenter) rather than ``unknown_datacenter``.
- :func:`sni_suffix` maps every route to a bounded label set: the suffix of a routed name
  (``server.<dc>.<domain>`` or ``<dc>.internal.<trust domain>``), never the node or service
  part, so metrics keyed by it stay small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from server.federation.locator import FEDERATION_META_KEY
from server.gateway.routes import Address, Route, RouteKind, RoutingTable

__all__ = [
    "LocalServers",
    "build_table",
    "csn_address",
    "is_critical",
    "local_servers",
    "remote_gateways",
    "sni_suffix",
]


def _valid_port(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= 65535 else None


def is_critical(csn: Mapping[str, Any]) -> bool:
    """Whether any check of a ``CheckServiceNode`` is ``critical``."""
    checks = csn.get("Checks") or []
    return any(isinstance(c, Mapping) and c.get("Status") == "critical" for c in checks)


def csn_address(csn: Mapping[str, Any], tagged: str | None = None) -> Address | None:
    """The address of a ``CheckServiceNode``: the ``tagged`` tagged address when given and
    present, else ``Service.Address`` (else ``Node.Address``) with ``Service.Port``."""
    svc = csn.get("Service") or {}
    node = csn.get("Node") or {}
    if tagged is not None:
        ta = (svc.get("TaggedAddresses") or {}).get(tagged)
        if isinstance(ta, Mapping):
            host, port = ta.get("Address"), _valid_port(ta.get("Port"))
            if isinstance(host, str) and host and port is not None:
                return Address(host, port)
    host = svc.get("Address") or node.get("Address")
    port = _valid_port(svc.get("Port"))
    if not isinstance(host, str) or not host or port is None:
        return None
    return Address(host, port)


class LocalServers:
    """The local servers as the ``consul`` service's health entries describe them."""

    __slots__ = ("healthy", "servers")

    def __init__(self, servers: dict[str, Address], healthy: frozenset[str]) -> None:
        self.servers = servers
        self.healthy = healthy

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LocalServers)
            and self.servers == other.servers
            and self.healthy == other.healthy
        )

    def __repr__(self) -> str:
        return f"LocalServers({self.servers!r}, healthy={sorted(self.healthy)!r})"


def local_servers(entries: Sequence[Any]) -> LocalServers:
    """Parse ``/v1/health/service/consul``. Raises ``TypeError`` when it is not a list."""
    if not isinstance(entries, list):
        raise TypeError(f"expected a list of CheckServiceNode, got {type(entries).__name__}")
    servers: dict[str, Address] = {}
    healthy: set[str] = set()
    for csn in entries:
        if not isinstance(csn, Mapping):
            continue
        name = (csn.get("Node") or {}).get("Node")
        addr = csn_address(csn)
        if not isinstance(name, str) or not name or addr is None:
            continue
        servers[name] = addr
        if not is_critical(csn):
            healthy.add(name)
    return LocalServers(servers, frozenset(healthy))


def remote_gateways(states: Mapping[str, Any]) -> dict[str, list[Address]]:
    """Parse ``/v1/internal/federation-states/mesh-gateways``: per datacenter, the WAN
    addresses of its gateways fit for server traffic. Raises ``TypeError`` when it is not a
    mapping."""
    if not isinstance(states, Mapping):
        raise TypeError(f"expected a mapping of datacenter to gateways, got {type(states)}")
    out: dict[str, list[Address]] = {}
    for dc, gateways in states.items():
        if not isinstance(dc, str) or not dc:
            continue
        found: list[Address] = []
        for csn in gateways if isinstance(gateways, list) else ():
            if not isinstance(csn, Mapping):
                continue
            meta = (csn.get("Service") or {}).get("Meta") or {}
            if meta.get(FEDERATION_META_KEY) != "1" or is_critical(csn):
                continue
            addr = csn_address(csn, tagged="wan")
            if addr is not None and addr not in found:
                found.append(addr)
        out[dc] = found
    return out


def build_table(
    datacenter: str,
    domain: str,
    servers: LocalServers,
    gateways: Mapping[str, Sequence[Address]],
    *,
    expose_servers: bool,
    trust_domain: str | None = None,
) -> RoutingTable:
    """The routing table for one snapshot of the watches."""
    return RoutingTable(
        datacenter=datacenter,
        domain=domain.rstrip(".") or "consul",
        trust_domain=trust_domain,
        expose_servers=expose_servers,
        servers=dict(servers.servers),
        healthy_servers=servers.healthy,
        remote_gateways={dc: tuple(addrs) for dc, addrs in gateways.items()},
    )


_SERVER_KINDS = (
    RouteKind.LOCAL_SERVER,
    RouteKind.ANY_LOCAL_SERVER,
    RouteKind.REMOTE_SERVER_GATEWAY,
)


def sni_suffix(route: Route, domain: str, trust_domain: str | None) -> str:
    """The metrics label of a routed name: ``server.<dc>.<domain>`` for server names,
    ``<dc>.internal.<trust domain>`` for service names."""
    if route.kind in _SERVER_KINDS:
        return f"server.{route.datacenter}.{domain.rstrip('.').lower()}"
    td = (trust_domain or "").rstrip(".").lower()
    return f"{route.datacenter}.internal.{td}"
