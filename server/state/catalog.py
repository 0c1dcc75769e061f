"""State table ``catalog``: nodes, the services they provide and health checks.

Rows (Consul's ``structs.Node``, ``structs.ServiceNode`` and ``structs.HealthCheck``) are
frozen dataclasses; each has ``to_api`` giving the JSON shape Consul's HTTP API answers with.
Writes go through ``register_txn``/``deregister_txn`` (a whole ``RegisterRequest`` or
``DeregisterRequest``, already validated and normalised by ``server.commands.catalog``) or the
finer ``ensure_*_txn``/``delete_*_txn`` methods, always inside one ``WriteTxn``.

Consul's rules (``agent/consul/state/catalog.go``) kept here:

* **Names are case-insensitive**: node names, service IDs (per node), check IDs (per node),
  service names and node IDs are matched lowercased; rows keep the spelling they were written
  with. Listings are ordered by the lowercased keys, as go-memdb's indexes are.
* **Indexes**: the table indexes ``nodes``, ``services`` and ``checks``; a per-node index
  (the node, its services, its checks) and a per-service-name index (its instances, their
  checks, their nodes). When the last instance of a service goes, its index is dropped and the
  *service extinction* index moves, so a blocking query on a missing service still returns
  when something disappears (likewise the *node extinction* index for nodes).
  Writing a row identical to the stored one changes nothing (no index moves, no watch fires).
* **Watches**: ``service_watches`` (per lowercased service name) fire on any change to an
  instance of that name, its checks or its node, so ``/v1/health/service/web`` blocked on
  ``web`` sleeps through changes to ``db``; ``node_watches`` per node; whole-table listings
  watch the table channels.
* **Registration**: a node is written only if the request changes it (or it is new); a node ID
  already used by another name renames that node (Consul deletes the old name first); a name
  held by another node ID is refused while that node's ``serfHealth`` check is not critical
  (``Node name X is reserved by node <id> with name X (<address>)``). A service check copies
  its service's name and tags; a check for a missing service fails with
  ``Missing service registration``, anything for a missing node with
  ``Missing node registration``; a check without a status is ``critical``.
* **Sessions**: a check turning (or registered) critical destroys the sessions that depend on
  it, deleting a check destroys its sessions, and deleting a node destroys the node's sessions,
  all in the same transaction (through ``SessionHooks``, which the store implements). Deleting
  a node also calls ``on_node_delete`` (the store deletes the node's coordinates there).
  Deregistering a service deletes its checks; deregistering a node deletes everything on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

from server.state.kvs import StateError
from server.state.tables import StateTable
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.sessions import Session
    from server.state.store import IndexTable, WriteTxn

__all__ = [
    "HEALTH_ANY",
    "HEALTH_CRITICAL",
    "HEALTH_MAINT",
    "HEALTH_PASSING",
    "HEALTH_WARNING",
    "SERF_CHECK_ID",
    "TABLE_CHECKS",
    "TABLE_NODES",
    "TABLE_SERVICES",
    "CatalogTable",
    "HealthCheck",
    "Node",
    "ServiceInstance",
    "SessionHooks",
    "check_from_api",
    "node_from_request",
    "service_from_api",
    "validate_metadata",
]

TABLE_NODES = "nodes"
TABLE_SERVICES = "services"
TABLE_CHECKS = "checks"

HEALTH_ANY = "any"
HEALTH_PASSING = "passing"
HEALTH_WARNING = "warning"
HEALTH_CRITICAL = "critical"
HEALTH_MAINT = "maintenance"

SERF_CHECK_ID = "serfHealth"

_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_META_MAX_PAIRS = 64
_META_KEY_MAX = 128
_META_VALUE_MAX = 512
_META_RESERVED = "consul-"
_MESH_GATEWAY_ALLOWED = frozenset({"consul-wan-federation"})


class SessionHooks(Protocol):
    """What the catalog needs from sessions (``StateStore`` provides exactly this)."""

    def node_sessions(self, ws: WatchSet | None, node: str) -> tuple[int, list[Session]]: ...

    def check_sessions(self, node: str, check_id: str) -> list[Session]: ...

    def session_destroy_txn(
        self, tx: WriteTxn, session_id: str, now: float | None = None
    ) -> bool: ...


# --- rows --------------------------------------------------------------------------------


def _copy_map(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


@dataclass(frozen=True, slots=True)
class Node:
    """A catalog node (``structs.Node``). Maps are ``None`` for Go's nil (JSON ``null``)."""

    node: str
    address: str = ""
    id: str = ""
    datacenter: str = ""
    tagged_addresses: Mapping[str, str] | None = None
    meta: Mapping[str, str] | None = None
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Node) -> bool:
        """Equal but for the Raft indexes (Consul's ``Node.IsSame``)."""
        return (
            self.id == other.id
            and self.node.lower() == other.node.lower()
            and self.address == other.address
            and self.datacenter == other.datacenter
            and _same_map(self.tagged_addresses, other.tagged_addresses)
            and _same_map(self.meta, other.meta)
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Node": self.node,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": _copy_map(self.tagged_addresses),
            "Meta": _copy_map(self.meta),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """A service registered on a node (``structs.ServiceNode`` without the node fields).

    ``tagged_addresses`` maps a tag to ``{"Address": str, "Port": int}``; ``proxy`` and
    ``connect`` are the ``ConnectProxyConfig``/``ServiceConnect`` objects as canonical JSON
    (Consul's field names); ``weights`` is (Passing, Warning)."""

    node: str
    id: str
    service: str
    kind: str = ""
    tags: tuple[str, ...] | None = None
    address: str = ""
    tagged_addresses: Mapping[str, Mapping[str, Any]] | None = None
    meta: Mapping[str, str] | None = None
    port: int = 0
    socket_path: str = ""
    weights: tuple[int, int] = (1, 1)
    enable_tag_override: bool = False
    proxy: Mapping[str, Any] | None = None
    connect: Mapping[str, Any] | None = None
    locality: Mapping[str, Any] | None = None
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: ServiceInstance) -> bool:
        """Equal but for the Raft indexes (Consul's ``IsSameService``)."""
        return replace(self, create_index=0, modify_index=0) == replace(
            other, create_index=0, modify_index=0
        )

    @property
    def is_connect_proxy(self) -> bool:
        return self.kind == "connect-proxy"

    @property
    def connect_native(self) -> bool:
        return bool((self.connect or {}).get("Native"))

    def proxy_destination(self) -> str:
        return str((self.proxy or {}).get("DestinationServiceName") or "")

    def to_node_service(self) -> dict[str, Any]:
        """The ``structs.NodeService`` JSON (``/v1/catalog/node``, ``/v1/health/service``)."""
        out: dict[str, Any] = {}
        if self.kind:
            out["Kind"] = self.kind
        out["ID"] = self.id
        out["Service"] = self.service
        out["Tags"] = [] if self.tags is None else list(self.tags)
        out["Address"] = self.address
        if self.tagged_addresses:
            out["TaggedAddresses"] = _tagged(self.tagged_addresses)
        out["Meta"] = _copy_map(self.meta)
        if self.port:
            out["Port"] = self.port
        if self.socket_path:
            out["SocketPath"] = self.socket_path
        out["Weights"] = {"Passing": self.weights[0], "Warning": self.weights[1]}
        out["EnableTagOverride"] = self.enable_tag_override
        if self.locality:
            out["Locality"] = dict(self.locality)
        out["Proxy"] = _proxy_api(self.proxy)
        out["Connect"] = _connect_api(self.connect)
        out["PeerName"] = ""
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out

    def to_service_node(self, node: Node | None) -> dict[str, Any]:
        """The ``structs.ServiceNode`` JSON (``/v1/catalog/service/<name>``), node fields
        filled in from ``node``."""
        out: dict[str, Any] = {
            "ID": node.id if node else "",
            "Node": node.node if node else self.node,
            "Address": node.address if node else "",
            "Datacenter": node.datacenter if node else "",
            "TaggedAddresses": _copy_map(node.tagged_addresses) if node else None,
            "NodeMeta": _copy_map(node.meta) if node else None,
            "ServiceKind": self.kind,
            "ServiceID": self.id,
            "ServiceName": self.service,
            "ServiceTags": [] if self.tags is None else list(self.tags),
            "ServiceAddress": self.address,
        }
        if self.tagged_addresses:
            out["ServiceTaggedAddresses"] = _tagged(self.tagged_addresses)
        out["ServiceWeights"] = {"Passing": self.weights[0], "Warning": self.weights[1]}
        out["ServiceMeta"] = dict(self.meta or {})
        out["ServicePort"] = self.port
        out["ServiceSocketPath"] = self.socket_path
        out["ServiceEnableTagOverride"] = self.enable_tag_override
        out["ServiceProxy"] = _proxy_api(self.proxy)
        out["ServiceConnect"] = _connect_api(self.connect)
        out["ServiceLocality"] = dict(self.locality) if self.locality else None
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A health check on a node (``structs.HealthCheck``). ``definition`` is the
    ``HealthCheckDefinition`` as canonical JSON (durations as Go duration strings)."""

    node: str
    check_id: str
    name: str = ""
    status: str = HEALTH_CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] | None = None
    type: str = ""
    interval: str = ""
    timeout: str = ""
    exposed_port: int = 0
    definition: Mapping[str, Any] | None = None
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: HealthCheck) -> bool:
        """Consul's ``HealthCheck.IsSame`` (Type, Interval, Timeout and ExposedPort are not
        compared, as there)."""
        return (
            self.node.lower() == other.node.lower()
            and self.check_id == other.check_id
            and self.name == other.name
            and self.status == other.status
            and self.notes == other.notes
            and self.output == other.output
            and self.service_id == other.service_id
            and self.service_name == other.service_name
            and self.service_tags == other.service_tags
            and _same_map(self.definition, other.definition)
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": [] if self.service_tags is None else list(self.service_tags),
            "Type": self.type,
            "Interval": self.interval,
            "Timeout": self.timeout,
            "ExposedPort": self.exposed_port,
            "Definition": dict(self.definition or {}),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


def _same_map(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    # reflect.DeepEqual: nil and an empty map differ.
    if a is None or b is None:
        return a is None and b is None
    return dict(a) == dict(b)


def _tagged(addresses: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        key: {"Address": str(value.get("Address", "")), "Port": int(value.get("Port", 0) or 0)}
        for key, value in addresses.items()
    }


_PROXY_LEADING = (
    "EnvoyExtensions",
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
)


def _proxy_api(proxy: Mapping[str, Any] | None) -> dict[str, Any]:
    """``ConnectProxyConfig`` as Consul marshals it: Mode, MeshGateway and Expose always
    there, everything else only when set."""
    proxy = proxy or {}
    out: dict[str, Any] = {}
    for key in ("TransparentProxy", "AccessLogs"):
        if proxy.get(key):
            out[key] = proxy[key]
    for key in _PROXY_LEADING:
        if proxy.get(key):
            out[key] = proxy[key]
    out["Mode"] = proxy.get("Mode") or ""
    for key in ("Config", "Upstreams"):
        if proxy.get(key):
            out[key] = proxy[key]
    out["MeshGateway"] = proxy.get("MeshGateway") or {}
    out["Expose"] = proxy.get("Expose") or {}
    return out


def _connect_api(connect: Mapping[str, Any] | None) -> dict[str, Any]:
    connect = connect or {}
    return {
        key: connect[key] for key in ("Native", "SidecarService", "PeerMeta") if connect.get(key)
    }


# --- building rows from canonical request JSON -------------------------------------------


def node_from_request(req: Mapping[str, Any]) -> Node:
    """The node part of a normalised ``RegisterRequest``."""
    return Node(
        node=str(req["Node"]),
        address=str(req.get("Address") or ""),
        id=str(req.get("ID") or ""),
        datacenter=str(req.get("Datacenter") or ""),
        tagged_addresses=_copy_map(req.get("TaggedAddresses")),
        meta=_copy_map(req.get("NodeMeta")),
    )


def service_from_api(node: str, svc: Mapping[str, Any]) -> ServiceInstance:
    """A normalised ``NodeService`` JSON object as a row of ``node``. Invalid weights fall back
    to the default {Passing: 1, Warning: 1}, as Consul's ``ToServiceNode`` does."""
    weights = (1, 1)
    raw = svc.get("Weights")
    if isinstance(raw, Mapping):
        passing = int(raw.get("Passing", 0) or 0)
        warning = int(raw.get("Warning", 0) or 0)
        if 1 <= passing <= 65535 and 0 <= warning <= 65535:
            weights = (passing, warning)
    tags = svc.get("Tags")
    return ServiceInstance(
        node=node,
        id=str(svc.get("ID") or ""),
        service=str(svc.get("Service") or ""),
        kind=str(svc.get("Kind") or ""),
        tags=None if tags is None else tuple(str(t) for t in tags),
        address=str(svc.get("Address") or ""),
        tagged_addresses=_copy_map(svc.get("TaggedAddresses")),
        meta=_copy_map(svc.get("Meta")),
        port=int(svc.get("Port") or 0),
        socket_path=str(svc.get("SocketPath") or ""),
        weights=weights,
        enable_tag_override=bool(svc.get("EnableTagOverride")),
        proxy=_copy_map(svc.get("Proxy")) or None,
        connect=_copy_map(svc.get("Connect")) or None,
        locality=_copy_map(svc.get("Locality")) or None,
    )


def check_from_api(check: Mapping[str, Any]) -> HealthCheck:
    """A normalised ``HealthCheck`` JSON object as a row (ServiceName/Tags are filled in from
    the service when it is stored)."""
    tags = check.get("ServiceTags")
    return HealthCheck(
        node=str(check.get("Node") or ""),
        check_id=str(check.get("CheckID") or ""),
        name=str(check.get("Name") or ""),
        status=str(check.get("Status") or ""),
        notes=str(check.get("Notes") or ""),
        output=str(check.get("Output") or ""),
        service_id=str(check.get("ServiceID") or ""),
        service_name=str(check.get("ServiceName") or ""),
        service_tags=None if tags is None else tuple(str(t) for t in tags),
        type=str(check.get("Type") or ""),
        interval=str(check.get("Interval") or ""),
        timeout=str(check.get("Timeout") or ""),
        exposed_port=int(check.get("ExposedPort") or 0),
        definition=_copy_map(check.get("Definition")) or None,
    )


def validate_metadata(
    meta: Mapping[str, str] | None,
    *,
    allow_consul_prefix: bool = False,
    allowed_consul_keys: frozenset[str] = frozenset(),
) -> None:
    """Consul's ``validateMetadata``; raises ``StateError`` with its text."""
    if not meta:
        return
    if len(meta) > _META_MAX_PAIRS:
        raise StateError(
            f"Node metadata cannot contain more than {_META_MAX_PAIRS} key/value pairs"
        )
    for key, value in meta.items():
        problem = None
        if key == "":
            problem = "Key cannot be blank"
        elif not _META_KEY.match(key):
            problem = "Key contains invalid characters"
        elif len(key) > _META_KEY_MAX:
            problem = f"Key is too long (limit: {_META_KEY_MAX} characters)"
        elif (
            key.startswith(_META_RESERVED)
            and not allow_consul_prefix
            and key not in allowed_consul_keys
        ):
            problem = f"Key prefix '{_META_RESERVED}' is reserved for internal use"
        elif len(str(value)) > _META_VALUE_MAX:
            problem = f"Value is too long (limit: {_META_VALUE_MAX} characters)"
        if problem is not None:
            raise StateError(f"Couldn't load metadata pair ('{key}', '{value}'): {problem}")


# --- the table ---------------------------------------------------------------------------

ServiceKey = tuple[str, str]  # (lowercased node, lowercased service ID)
CheckKey = tuple[str, str]  # (lowercased node, lowercased check ID)


def _nonzero(index: int) -> int:
    return index if index > 0 else 1


def _add(index: dict[Any, dict[Any, None]], key: Any, member: Any) -> None:
    index.setdefault(key, {})[member] = None


def _drop(index: dict[Any, dict[Any, None]], key: Any, member: Any) -> None:
    members = index.get(key)
    if members is not None:
        members.pop(member, None)
        if not members:
            del index[key]


class CatalogTable(StateTable):
    """Nodes, services and checks with Consul's indexes and watches (module docstring)."""

    name = "catalog"

    def __init__(
        self,
        indexes: IndexTable,
        sessions: SessionHooks | None = None,
        on_node_delete: Callable[[WriteTxn, str], object] | None = None,
    ) -> None:
        super().__init__(indexes)
        self._sessions = sessions
        self._on_node_delete = on_node_delete
        self._nodes: dict[str, Node] = {}
        self._node_ids: dict[str, str] = {}
        self._services: dict[ServiceKey, ServiceInstance] = {}
        self._services_by_node: dict[str, dict[ServiceKey, None]] = {}
        self._services_by_name: dict[str, dict[ServiceKey, None]] = {}
        self._checks: dict[CheckKey, HealthCheck] = {}
        self._checks_by_node: dict[str, dict[CheckKey, None]] = {}
        self._checks_by_service: dict[ServiceKey, dict[CheckKey, None]] = {}
        self._checks_by_name: dict[str, dict[CheckKey, None]] = {}
        self._checks_by_status: dict[str, dict[CheckKey, None]] = {}
        self._service_index: dict[str, int] = {}
        self._node_index: dict[str, int] = {}
        self._extinction: dict[str, int] = {}
        self.service_watches = ChannelMap()
        self.node_watches = ChannelMap()

    # --- lookups used by sessions and the leader -----------------------------------------

    def node_exists(self, node: str) -> bool:
        """Whether ``node`` is registered (sessions need their node)."""
        return node.lower() in self._nodes

    def check_status(self, node: str, check_id: str) -> str | None:
        """The status of a node's check, None if it does not exist (sessions need theirs)."""
        check = self._checks.get((node.lower(), check_id.lower()))
        return None if check is None else check.status

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name.lower())

    def node_service(self, node: str, service_id: str) -> ServiceInstance | None:
        return self._services.get((node.lower(), service_id.lower()))

    def node_check(self, node: str, check_id: str) -> HealthCheck | None:
        return self._checks.get((node.lower(), check_id.lower()))

    def nodes_with_check(self, check_id: str) -> list[str]:
        """Names of the nodes that have a check with this ID (the leader's reaper)."""
        cid = check_id.lower()
        return [self._nodes[key].node for key in sorted(self._nodes) if (key, cid) in self._checks]

    def serf_view(
        self, node: str, check_id: str, service_id: str
    ) -> tuple[str, str | None, bool] | None:
        """(address, status of ``check_id`` or None, whether ``service_id`` exists) for a node,
        None if the node is not registered (lets the leader skip no-op registrations)."""
        key = node.lower()
        row = self._nodes.get(key)
        if row is None:
            return None
        check = self._checks.get((key, check_id.lower()))
        return (
            row.address,
            None if check is None else check.status,
            (key, service_id.lower()) in self._services,
        )

    # --- reads -----------------------------------------------------------------------------

    def get_node(self, ws: WatchSet | None, name: str) -> tuple[int, Node | None]:
        key = name.lower()
        if ws is not None:
            ws.add(self.node_watches.channel(key))
        row = self._nodes.get(key)
        if row is None:
            return _nonzero(self._missing_node_index()), None
        return _nonzero(self._indexes.get(TABLE_NODES)), row

    def list_nodes(
        self, ws: WatchSet | None, node_meta: Mapping[str, str] | None = None
    ) -> tuple[int, list[Node]]:
        """Every node (ordered by name), only those whose Meta has every ``node_meta`` pair."""
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_NODES))
        nodes = [self._nodes[key] for key in sorted(self._nodes)]
        if node_meta:
            nodes = [n for n in nodes if _meta_matches(n.meta, node_meta)]
        return _nonzero(self._indexes.get(TABLE_NODES)), nodes

    def list_services(
        self, ws: WatchSet | None, node_meta: Mapping[str, str] | None = None
    ) -> tuple[int, list[ServiceInstance]]:
        """Every service instance ordered by (node, ID); with ``node_meta``, only those on
        nodes matching it (and the index also covers the nodes table, as Consul's)."""
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_SERVICES))
        rows = [self._services[key] for key in sorted(self._services)]
        index = self._indexes.get(TABLE_SERVICES)
        if node_meta:
            if ws is not None:
                ws.add(self._indexes.channel(TABLE_NODES))
            index = max(index, self._indexes.get(TABLE_NODES))
            rows = [r for r in rows if _meta_matches(self._nodes[r.node.lower()].meta, node_meta)]
        return _nonzero(index), rows

    def service_nodes(
        self,
        ws: WatchSet | None,
        service: str,
        *,
        tags: Sequence[str] | None = None,
        connect: bool = False,
    ) -> tuple[int, list[tuple[Node, ServiceInstance]]]:
        """The instances of ``service`` with their nodes, ordered by (node, ID); with ``tags``
        only instances having every tag (case-insensitively); with ``connect`` the proxies for
        it and its Connect-native instances instead."""
        rows = self._instances(ws, service, connect)
        exists = bool(rows)
        if tags:
            wanted = [t.lower() for t in tags]
            rows = [r for r in rows if _has_tags(r, wanted)]
        index = self._service_nodes_index(service, rows, exists, connect, checks=False)
        return _nonzero(index), [(self._nodes[r.node.lower()], r) for r in rows]

    def check_service_nodes(
        self,
        ws: WatchSet | None,
        service: str,
        *,
        tags: Sequence[str] | None = None,
        connect: bool = False,
    ) -> tuple[int, list[tuple[Node, ServiceInstance, list[HealthCheck]]]]:
        """Like ``service_nodes`` with each instance's checks: its node's checks first, then
        its own (Consul's ``CheckServiceNodes``)."""
        rows = self._instances(ws, service, connect)
        exists = bool(rows)
        if tags:
            wanted = [t.lower() for t in tags]
            rows = [r for r in rows if _has_tags(r, wanted)]
        index = self._service_nodes_index(service, rows, exists, connect, checks=True)
        out = []
        for row in rows:
            nkey = row.node.lower()
            checks = self._checks_of(self._checks_by_service.get((nkey, ""), ()))
            checks += self._checks_of(self._checks_by_service.get((nkey, row.id.lower()), ()))
            out.append((self._nodes[nkey], row, checks))
        return _nonzero(index), out

    def node_services(
        self, ws: WatchSet | None, node: str
    ) -> tuple[int, tuple[Node, list[ServiceInstance]] | None]:
        """A node and its services (ordered by ID), None if it is not registered. Index: the
        node's own index, or the node extinction index when it is missing."""
        key = node.lower()
        if ws is not None:
            ws.add(self.node_watches.channel(key))
        row = self._nodes.get(key)
        if row is None:
            return _nonzero(self._missing_node_index()), None
        services = [self._services[k] for k in sorted(self._services_by_node.get(key, ()))]
        return _nonzero(self._node_index.get(key, 0)), (row, services)

    def node_checks(self, ws: WatchSet | None, node: str) -> tuple[int, list[HealthCheck]]:
        key = node.lower()
        if ws is not None:
            ws.add(self.node_watches.channel(key))
        checks = self._checks_of(self._checks_by_node.get(key, ()))
        return _nonzero(self._indexes.get(TABLE_CHECKS)), checks

    def service_checks(self, ws: WatchSet | None, service: str) -> tuple[int, list[HealthCheck]]:
        """The checks of every instance of ``service`` (by name), ordered by (node, ID)."""
        name = service.lower()
        if ws is not None:
            ws.add(self.service_watches.channel(name))
        checks = self._checks_of(self._checks_by_name.get(name, ()))
        return _nonzero(self._indexes.get(TABLE_CHECKS)), checks

    def checks_in_state(self, ws: WatchSet | None, state: str) -> tuple[int, list[HealthCheck]]:
        """Checks with status ``state`` (``any``: all; matched case-insensitively, as Consul's
        status index is), ordered by (node, ID)."""
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_CHECKS))
        if state == HEALTH_ANY:
            checks = [self._checks[k] for k in sorted(self._checks)]
        else:
            checks = self._checks_of(self._checks_by_status.get(state.lower(), ()))
        return _nonzero(self._indexes.get(TABLE_CHECKS)), checks

    def _checks_of(self, keys: Iterable[CheckKey]) -> list[HealthCheck]:
        checks = self._checks
        return [checks[k] for k in sorted(keys)]

    def _instances(self, ws: WatchSet | None, service: str, connect: bool) -> list[ServiceInstance]:
        name = service.lower()
        if ws is not None:
            ws.add(self.service_watches.channel(name))
        if not connect:
            return [self._services[k] for k in sorted(self._services_by_name.get(name, ()))]
        if ws is not None:
            # Proxies live under their own names: any service change may add one.
            ws.add(self._indexes.channel(TABLE_SERVICES))
        rows = []
        for key in sorted(self._services):
            row = self._services[key]
            proxy = row.is_connect_proxy and row.proxy_destination().lower() == name
            if proxy or (row.connect_native and row.service.lower() == name):
                rows.append(row)
        if ws is not None:
            for row in rows:
                ws.add(self.service_watches.channel(row.service.lower()))
        return rows

    def _service_nodes_index(
        self,
        service: str,
        rows: list[ServiceInstance],
        exists: bool,
        connect: bool,
        *,
        checks: bool,
    ) -> int:
        # Consul's maxIndexForService: the service's own index while it has instances, the
        # service extinction index once it has none, else the catalog's max index.
        if connect:
            names = {r.service.lower() for r in rows}
            if names:
                return max(self._service_index.get(n, 0) for n in names)
            exists = False
        name = service.lower()
        if not exists and self._extinction.get("service", 0):
            return self._extinction["service"]
        if name in self._service_index:
            return self._service_index[name]
        tables = (
            (TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS)
            if checks
            else (
                TABLE_NODES,
                TABLE_SERVICES,
            )
        )
        return self._indexes.get(*tables)

    def _missing_node_index(self) -> int:
        return self._extinction.get("node", 0)

    # --- writes: whole requests ------------------------------------------------------------

    def register_txn(self, tx: WriteTxn, req: Mapping[str, Any], now: float | None = None) -> None:
        """Apply a normalised ``RegisterRequest`` (see ``server.commands.catalog``)."""
        node = node_from_request(req)
        existing = self._nodes.get(node.node.lower())
        if existing is None or (not req.get("SkipNodeUpdate") and not node.same(existing)):
            try:
                self.ensure_node_txn(tx, node)
            except StateError as exc:
                raise StateError(f"failed inserting node: {exc}") from None
        service = req.get("Service")
        if service is not None:
            try:
                self.ensure_service_txn(tx, service_from_api(node.node, service))
            except StateError as exc:
                raise StateError(f"failed inserting service: {exc}") from None
        checks = list(req.get("Checks") or ())
        if req.get("Check") is not None:
            checks.insert(0, req["Check"])
        for raw in checks:
            check = check_from_api(raw)
            if check.node.lower() != node.node.lower():
                raise StateError(f'check node "{check.node}" does not match node "{node.node}"')
            try:
                self.ensure_check_txn(tx, check, now)
            except StateError as exc:
                raise StateError(f'failed inserting check on node "{check.node}": {exc}') from None

    def deregister_txn(
        self,
        tx: WriteTxn,
        node: str,
        service_id: str = "",
        check_id: str = "",
        now: float | None = None,
    ) -> None:
        """Consul's ``applyDeregister``: a service (with its checks) if ``service_id``, else a
        check if ``check_id``, else the whole node. Missing things are not an error."""
        if service_id:
            self.delete_service_txn(tx, node, service_id, now)
        elif check_id:
            self.delete_check_txn(tx, node, check_id, now)
        else:
            self.delete_node_txn(tx, node, now)

    # --- writes: nodes ---------------------------------------------------------------------

    def ensure_node_txn(self, tx: WriteTxn, node: Node) -> Node:
        """Insert or update a node (Consul's ``ensureNodeTxn``). Returns the stored row."""
        existing: Node | None = None
        if node.id:
            by_id = self._node_ids.get(node.id.lower())
            if by_id is not None:
                existing = self._nodes[by_id]
                if existing.node.lower() != node.node.lower():
                    problem = self._similar_name(node, allow_clash_without_id=False)
                    if problem:
                        raise StateError(
                            f'Error while renaming Node ID: "{node.id}" ({node.address}): {problem}'
                        )
                    # A rename: the old name goes (with what was on it); the node keeps
                    # its CreateIndex, as in Consul.
                    self.delete_node_txn(tx, existing.node)
            else:
                problem = self._similar_name(node, allow_clash_without_id=True)
                if problem:
                    raise StateError(f'Error while renaming Node ID: "{node.id}": {problem}')
        key = node.node.lower()
        if existing is None:
            existing = self._nodes.get(key)
        if existing is not None:
            if node.same(existing):
                return existing
            row = replace(node, create_index=existing.create_index, modify_index=tx.idx)
        else:
            row = replace(node, create_index=tx.idx, modify_index=tx.idx)
        self._write(tx, self._store_node, key, row, self._nodes.get(key))
        self._indexes.bump(tx, TABLE_NODES)
        self._bump_node(tx, key)
        for skey in list(self._services_by_node.get(key, ())):
            self._bump_service(tx, self._services[skey].service.lower())
        return row

    def _similar_name(self, node: Node, *, allow_clash_without_id: bool) -> str:
        other = self._nodes.get(node.node.lower())
        if other is None or other.id == node.id:
            return ""
        serf = self._checks.get((other.node.lower(), SERF_CHECK_ID.lower()))
        healthy = serf is not None and serf.status != HEALTH_CRITICAL
        if (other.id == "" and allow_clash_without_id) or not healthy:
            return ""
        return (
            f"Node name {node.node} is reserved by node {other.id} with name "
            f"{other.node} ({other.address})"
        )

    def delete_node_txn(self, tx: WriteTxn, node: str, now: float | None = None) -> bool:
        """Delete a node with its services, checks and sessions. Returns whether it existed."""
        key = node.lower()
        row = self._nodes.get(key)
        if row is None:
            return False
        for skey in sorted(self._services_by_node.get(key, ())):
            self.delete_service_txn(tx, row.node, self._services[skey].id, now)
        for ckey in sorted(self._checks_by_node.get(key, ())):
            self.delete_check_txn(tx, row.node, self._checks[ckey].check_id, now)
        self._write(tx, self._store_node, key, None, row)
        self._indexes.bump(tx, TABLE_NODES)
        self._set_value(tx, self._node_index, key, None)
        tx.notify(self.node_watches, key)
        self._set_value(tx, self._extinction, "node", tx.idx)
        if self._on_node_delete is not None:
            self._on_node_delete(tx, row.node)  # the node's network coordinates go too
        if self._sessions is not None:
            for session in self._sessions.node_sessions(None, row.node)[1]:
                self._sessions.session_destroy_txn(tx, session.id, now)
        return True

    # --- writes: services ------------------------------------------------------------------

    def ensure_service_txn(self, tx: WriteTxn, service: ServiceInstance) -> ServiceInstance:
        """Insert or update a service on its (existing) node (Consul's ``ensureServiceTxn``)."""
        validate_service_meta(service)
        nkey = service.node.lower()
        if nkey not in self._nodes:
            raise StateError("Missing node registration")
        key = (nkey, service.id.lower())
        existing = self._services.get(key)
        if existing is not None:
            if service.same(existing):
                return existing
            row = replace(service, create_index=existing.create_index, modify_index=tx.idx)
        else:
            row = replace(service, create_index=tx.idx, modify_index=tx.idx)
        self._write(tx, self._store_service, key, row, existing)
        self._indexes.bump(tx, TABLE_SERVICES)
        self._indexes.bump(tx, TABLE_NODES)
        self._bump_node(tx, nkey)
        self._bump_service(tx, row.service.lower())
        if existing is not None and existing.service.lower() != row.service.lower():
            self._service_gone(tx, existing.service.lower())
        return row

    def delete_service_txn(
        self, tx: WriteTxn, node: str, service_id: str, now: float | None = None
    ) -> bool:
        """Delete a service and its checks (Consul's ``deleteServiceTxn``)."""
        nkey = node.lower()
        key = (nkey, service_id.lower())
        row = self._services.get(key)
        if row is None:
            return False
        for ckey in sorted(self._checks_by_service.get(key, ())):
            self.delete_check_txn(tx, node, self._checks[ckey].check_id, now)
        self._indexes.bump(tx, TABLE_CHECKS)
        self._write(tx, self._store_service, key, None, row)
        self._indexes.bump(tx, TABLE_SERVICES)
        self._indexes.bump(tx, TABLE_NODES)
        self._bump_node(tx, nkey)
        self._service_gone(tx, row.service.lower())
        return True

    def _service_gone(self, tx: WriteTxn, name: str) -> None:
        """An instance named ``name`` went away: bump its index, or retire it and move the
        service extinction index when it was the last one."""
        if self._services_by_name.get(name):
            self._bump_service(tx, name)
            return
        self._set_value(tx, self._service_index, name, None)
        tx.notify(self.service_watches, name)
        self._set_value(tx, self._extinction, "service", tx.idx)

    # --- writes: checks --------------------------------------------------------------------

    def ensure_check_txn(
        self, tx: WriteTxn, check: HealthCheck, now: float | None = None
    ) -> HealthCheck:
        """Insert or update a check (Consul's ``ensureCheckTxn``)."""
        nkey = check.node.lower()
        key = (nkey, check.check_id.lower())
        existing = self._checks.get(key)
        if not check.status:
            check = replace(check, status=HEALTH_CRITICAL)
        if nkey not in self._nodes:
            raise StateError("Missing node registration")
        if not check.check_id:
            # go-memdb refuses a row without its primary key.
            raise StateError("failed inserting check: object missing primary index")
        if check.service_id:
            service = self._services.get((nkey, check.service_id.lower()))
            if service is None:
                raise StateError("Missing service registration")
            check = replace(check, service_name=service.service, service_tags=service.tags)
        modified = existing is None or not check.same(existing)
        if modified:
            if check.service_id:
                self._bump_service(tx, check.service_name.lower())
            else:
                self._bump_node_services(tx, nkey)
            moved_from = existing.service_name.lower() if existing is not None else ""
            if moved_from and moved_from != check.service_name.lower():
                self._bump_service(tx, moved_from)
        if check.status == HEALTH_CRITICAL and self._sessions is not None:
            for session in self._sessions.check_sessions(check.node, check.check_id):
                self._sessions.session_destroy_txn(tx, session.id, now)
        if not modified:
            assert existing is not None
            return existing
        create = existing.create_index if existing is not None else tx.idx
        row = replace(check, create_index=create, modify_index=tx.idx)
        self._write(tx, self._store_check, key, row, existing)
        self._indexes.bump(tx, TABLE_CHECKS)
        self._bump_node(tx, nkey)
        return row

    def delete_check_txn(
        self, tx: WriteTxn, node: str, check_id: str, now: float | None = None
    ) -> bool:
        """Delete a check and destroy the sessions depending on it."""
        nkey = node.lower()
        key = (nkey, check_id.lower())
        row = self._checks.get(key)
        if row is None:
            return False
        if row.service_id:
            self._bump_service(tx, row.service_name.lower())
        else:
            self._bump_node_services(tx, nkey)
            self._indexes.bump(tx, TABLE_SERVICES)
        self._write(tx, self._store_check, key, None, row)
        self._indexes.bump(tx, TABLE_CHECKS)
        self._bump_node(tx, nkey)
        if self._sessions is not None:
            for session in self._sessions.check_sessions(row.node, row.check_id):
                self._sessions.session_destroy_txn(tx, session.id, now)
        return True

    # --- internals: indexes and rows -------------------------------------------------------

    def _bump_service(self, tx: WriteTxn, name: str) -> None:
        self._set_value(tx, self._service_index, name, tx.idx)
        tx.notify(self.service_watches, name)

    def _bump_node(self, tx: WriteTxn, key: str) -> None:
        self._set_value(tx, self._node_index, key, tx.idx)
        tx.notify(self.node_watches, key)

    def _bump_node_services(self, tx: WriteTxn, nkey: str) -> None:
        for skey in list(self._services_by_node.get(nkey, ())):
            self._bump_service(tx, self._services[skey].service.lower())

    @staticmethod
    def _set_value(tx: WriteTxn, values: dict[str, int], key: str, value: int | None) -> None:
        old = values.get(key)
        if old == value:
            return
        if value is None:
            del values[key]
        else:
            values[key] = value

        def undo() -> None:
            if old is None:
                values.pop(key, None)
            else:
                values[key] = old

        tx.on_undo(undo)

    @staticmethod
    def _write(
        tx: WriteTxn,
        store: Callable[[Any, Any], None],
        key: Any,
        row: Any,
        old: Any,
    ) -> None:
        store(key, row)
        tx.on_undo(lambda: store(key, old))

    def _store_node(self, key: str, row: Node | None) -> None:
        old = self._nodes.pop(key, None)
        if old is not None and old.id:
            self._node_ids.pop(old.id.lower(), None)
        if row is not None:
            self._nodes[key] = row
            if row.id:
                self._node_ids[row.id.lower()] = key

    def _store_service(self, key: ServiceKey, row: ServiceInstance | None) -> None:
        old = self._services.pop(key, None)
        if old is not None:
            _drop(self._services_by_node, key[0], key)
            _drop(self._services_by_name, old.service.lower(), key)
        if row is not None:
            self._services[key] = row
            _add(self._services_by_node, key[0], key)
            _add(self._services_by_name, row.service.lower(), key)

    def _store_check(self, key: CheckKey, row: HealthCheck | None) -> None:
        old = self._checks.pop(key, None)
        if old is not None:
            _drop(self._checks_by_node, key[0], key)
            _drop(self._checks_by_service, (key[0], old.service_id.lower()), key)
            if old.service_id:
                _drop(self._checks_by_name, old.service_name.lower(), key)
            _drop(self._checks_by_status, old.status.lower(), key)
        if row is not None:
            self._checks[key] = row
            _add(self._checks_by_node, key[0], key)
            _add(self._checks_by_service, (key[0], row.service_id.lower()), key)
            if row.service_id:
                _add(self._checks_by_name, row.service_name.lower(), key)
            _add(self._checks_by_status, row.status.lower(), key)

    # --- StateTable hooks ------------------------------------------------------------------

    def channel_maps(self) -> Sequence[ChannelMap]:
        return (self.service_watches, self.node_watches)

    def dump(self) -> Any:
        return {
            "nodes": [_encode_row(self._nodes[k]) for k in sorted(self._nodes)],
            "services": [_encode_row(self._services[k]) for k in sorted(self._services)],
            "checks": [_encode_row(self._checks[k]) for k in sorted(self._checks)],
            "service_index": [[k, self._service_index[k]] for k in sorted(self._service_index)],
            "node_index": [[k, self._node_index[k]] for k in sorted(self._node_index)],
            "extinction": {k: self._extinction[k] for k in sorted(self._extinction)},
        }

    def restore(self, document: Any) -> None:
        if document is None:
            return
        for raw in document["nodes"]:
            node = _decode_row(Node, raw)
            self._store_node(node.node.lower(), node)
        for raw in document["services"]:
            svc = _decode_row(ServiceInstance, raw)
            self._store_service((svc.node.lower(), svc.id.lower()), svc)
        for raw in document["checks"]:
            check = _decode_row(HealthCheck, raw)
            self._store_check((check.node.lower(), check.check_id.lower()), check)
        self._service_index = {str(k): int(v) for k, v in document["service_index"]}
        self._node_index = {str(k): int(v) for k, v in document["node_index"]}
        self._extinction = {str(k): int(v) for k, v in document["extinction"].items()}

    def check_invariants(self) -> None:
        rebuilt = CatalogTable(self._indexes)
        for key, node in self._nodes.items():
            assert key == node.node.lower()
            rebuilt._store_node(key, node)
        for skey, svc in self._services.items():
            assert skey == (svc.node.lower(), svc.id.lower())
            assert skey[0] in self._nodes, f"service {skey} without its node"
            rebuilt._store_service(skey, svc)
        for ckey, check in self._checks.items():
            assert ckey == (check.node.lower(), check.check_id.lower())
            assert ckey[0] in self._nodes, f"check {ckey} without its node"
            if check.service_id:
                assert (ckey[0], check.service_id.lower()) in self._services
            rebuilt._store_check(ckey, check)
        assert rebuilt._node_ids == self._node_ids
        assert rebuilt._services_by_node == self._services_by_node
        assert rebuilt._services_by_name == self._services_by_name
        assert rebuilt._checks_by_node == self._checks_by_node
        assert rebuilt._checks_by_service == self._checks_by_service
        assert rebuilt._checks_by_name == self._checks_by_name
        assert rebuilt._checks_by_status == self._checks_by_status
        assert set(self._service_index) == set(self._services_by_name)
        for name, index in self._service_index.items():
            assert index <= self._indexes.get(TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS)
            assert name in self._services_by_name


def validate_service_meta(service: ServiceInstance) -> None:
    try:
        validate_metadata(
            service.meta,
            allowed_consul_keys=_MESH_GATEWAY_ALLOWED
            if service.kind == "mesh-gateway"
            else frozenset(),
        )
    except StateError as exc:
        raise StateError(
            f"Invalid Service Meta for node {service.node} and serviceID {service.id}: {exc}"
        ) from None


def _meta_matches(meta: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    meta = meta or {}
    return all(key in meta and meta[key] == value for key, value in wanted.items())


def _has_tags(row: ServiceInstance, wanted: Sequence[str]) -> bool:
    have = {t.lower() for t in row.tags or ()}
    return all(tag in have for tag in wanted)


_TUPLE_FIELDS = frozenset({"tags", "service_tags", "weights"})


def _encode_row(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(row):
        value = getattr(row, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out


def _decode_row(cls: Any, raw: Mapping[str, Any]) -> Any:
    values = dict(raw)
    for name in _TUPLE_FIELDS:
        if name in values and values[name] is not None:
            values[name] = tuple(values[name])
    return cls(**values)
