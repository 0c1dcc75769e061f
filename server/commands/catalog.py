"""Raft commands of the ``catalog`` domain: ``REGISTER`` and ``DEREGISTER``.

The contract (what ``ctx.apply`` takes) is Consul's own JSON:

* ``MessageType.REGISTER``: a ``RegisterRequest`` object::

      {"Node": "n1", "ID": "<uuid or empty>", "Address": "10.0.0.1", "Datacenter": "dc1",
       "TaggedAddresses": {"lan": "..."}, "NodeMeta": {"k": "v"},
       "Service": {"ID": "web1", "Service": "web", "Tags": [...], "Port": 80, ...},
       "Check": {"CheckID": "...", "Name": "...", "Status": "passing", "ServiceID": "web1",
                 "Definition": {"HTTP": "...", "Interval": "10s"}, ...},
       "Checks": [...], "SkipNodeUpdate": false}

  Field names may come in any case (as Go's JSON decoder accepts them); the handler runs
  ``normalize_register_request`` itself, so callers may pass a raw request. Proposers should
  still call it first (the HTTP endpoint does) so that a bad request fails before it is
  written to the log. The result is ``True``.
* ``MessageType.PROCONSUL_REGISTER_BATCH`` (Proconsul's own): ``{"Requests": [...]}``, many
  ``RegisterRequest``s applied in order, each on its own; the result lists None or the error
  text per request.
* ``MessageType.DEREGISTER``: ``{"Node": "n1", "ServiceID": "...", "CheckID": "..."}``:
  a service with its checks, else a check, else the whole node (services, checks, sessions).
  The result is ``True``.

``normalize_register_request`` is Consul's ``Catalog.Register`` pre-apply work: the checks and
their errors (``cannot register requests with PeerName in them``, ``Must provide node``,
``Bad node ID: ...``,
``Must provide address if SkipNodeUpdate is not set``,
``Must provide service name (Service.Service) when service ID is provided``,
``Invalid service address``, Connect proxy/gateway validation), the defaults (Service.ID =
Service.Service, Check.Node = Node, CheckID = Name, Type from the definition) and the move of
``Check`` into ``Checks``. Validation failures raise ``StateError`` (Consul answers them with a
500); malformed values (a port that is not a number) raise ``RequestDecodeError`` (a 400
``Request decode failed: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.state import StateError, format_duration, parse_duration

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = [
    "HANDLERS",
    "RequestDecodeError",
    "check_type",
    "normalize_check",
    "normalize_deregister_request",
    "normalize_register_request",
    "normalize_service",
]


class RequestDecodeError(ValueError):
    """A value of the wrong type in a request body (Consul: 400 Request decode failed)."""


_REGISTER_FIELDS = (
    "Datacenter",
    "ID",
    "Node",
    "Address",
    "TaggedAddresses",
    "NodeMeta",
    "Service",
    "Check",
    "Checks",
    "SkipNodeUpdate",
    "PeerName",
    "Locality",
    "Namespace",
    "Partition",
    "WriteRequest",
    "Token",
)
_DEREGISTER_FIELDS = (
    "Datacenter",
    "Node",
    "Address",
    "ServiceID",
    "CheckID",
    "PeerName",
    "Namespace",
    "Partition",
    "WriteRequest",
    "Token",
)
_SERVICE_FIELDS = (
    "Kind",
    "ID",
    "Service",
    "Tags",
    "Address",
    "TaggedAddresses",
    "Meta",
    "Port",
    "SocketPath",
    "Weights",
    "EnableTagOverride",
    "Locality",
    "Proxy",
    "Connect",
    "PeerName",
    "Namespace",
    "Partition",
)
_PROXY_FIELDS = (
    "EnvoyExtensions",
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
    "Mode",
    "Config",
    "Upstreams",
    "MeshGateway",
    "Expose",
    "TransparentProxy",
    "AccessLogs",
)
_PROXY_SNAKE = {
    "destination_service_name": "DestinationServiceName",
    "destination_service_id": "DestinationServiceID",
    "local_service_address": "LocalServiceAddress",
    "local_service_port": "LocalServicePort",
    "local_service_socket_path": "LocalServiceSocketPath",
    "mesh_gateway": "MeshGateway",
    "transparent_proxy": "TransparentProxy",
    "access_logs": "AccessLogs",
    "envoy_extensions": "EnvoyExtensions",
}
_CHECK_FIELDS = (
    "Node",
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "Output",
    "ServiceID",
    "ServiceName",
    "ServiceTags",
    "Type",
    "Interval",
    "Timeout",
    "ExposedPort",
    "Definition",
    "PeerName",
    "Namespace",
    "Partition",
)
# HealthCheckDefinition in Consul's marshalling order: the duration wrappers first, then the
# embedded fields (TTL stays a number of nanoseconds, as Consul writes it).
_DEFINITION_ORDER = (
    "Interval",
    "OutputMaxSize",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "HTTP",
    "TLSServerName",
    "TLSSkipVerify",
    "Header",
    "Method",
    "Body",
    "DisableRedirects",
    "TCP",
    "UDP",
    "H2PING",
    "OSService",
    "H2PingUseTLS",
    "ScriptArgs",
    "DockerContainerID",
    "Shell",
    "GRPC",
    "GRPCUseTLS",
    "AliasNode",
    "AliasService",
    "TTL",
)
_DEFINITION_DURATIONS = ("Interval", "Timeout", "DeregisterCriticalServiceAfter")
_GATEWAY_KINDS = ("mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


# --- decoding helpers --------------------------------------------------------------------


def _fold(
    obj: Any, names: Iterable[str], what: str, aliases: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Go's case-insensitive field matching (a later key wins, as in Go); ``aliases`` are
    Consul's snake_case spellings, used only where the field itself is empty."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise RequestDecodeError(f"{what} must be a JSON object")
    canonical = {name.lower(): name for name in names}
    out: dict[str, Any] = {}
    fallback: dict[str, Any] = {}
    for key, value in obj.items():
        key = str(key)
        if aliases and key in aliases:
            fallback[aliases[key]] = value
            continue
        out[canonical.get(key.lower(), key)] = value
    for name, value in fallback.items():
        if not out.get(name):
            out[name] = value
    return out


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RequestDecodeError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestDecodeError(f"{what}: expected a number, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise RequestDecodeError(f"{what}: expected an integer, got {value}")
    return int(value)


def _bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestDecodeError(f"{what}: expected a boolean, got {type(value).__name__}")
    return value


def _str_map(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RequestDecodeError(f"{what} must be a JSON object")
    return {str(k): _str(v, f"{what}.{k}") for k, v in value.items()}


def _str_list(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise RequestDecodeError(f"{what} must be a JSON array")
    return [_str(v, what) for v in value]


def _duration_ns(value: Any, what: str) -> int:
    """A duration given as a Go duration string or a number of nanoseconds."""
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise RequestDecodeError(str(exc)) from None
    return _int(value, what)


# --- RegisterRequest ---------------------------------------------------------------------


def normalize_register_request(body: Any) -> dict[str, Any]:
    """Validate and normalise a ``RegisterRequest`` (module docstring); returns a new dict
    with canonical field names, the single ``Check`` folded into ``Checks``."""
    req = _fold(body, _REGISTER_FIELDS, "body")
    if _has_peer_name(req):
        raise StateError("cannot register requests with PeerName in them")
    node = _str(req.get("Node"), "Node")
    node_id = _str(req.get("ID"), "ID")
    address = _str(req.get("Address"), "Address")
    skip = _bool(req.get("SkipNodeUpdate"), "SkipNodeUpdate")
    out: dict[str, Any] = {
        "Node": node,
        "ID": node_id,
        "Address": address,
        "Datacenter": _str(req.get("Datacenter"), "Datacenter"),
        "TaggedAddresses": _str_map(req.get("TaggedAddresses"), "TaggedAddresses"),
        "NodeMeta": _str_map(req.get("NodeMeta"), "NodeMeta"),
        "SkipNodeUpdate": skip,
    }
    if not node:
        raise StateError("Must provide node")
    if node_id:
        if len(node_id) != 36:
            raise StateError("Bad node ID: uuid string is wrong length")
        if not _UUID.match(node_id):
            raise StateError("Bad node ID: uuid is improperly formatted")
    if not address and not skip:
        raise StateError("Must provide address if SkipNodeUpdate is not set")
    if req.get("Service") is not None:
        out["Service"] = normalize_service(req["Service"])
    checks: list[Any] = []
    raw_checks = req.get("Checks")
    if raw_checks is not None:
        if not isinstance(raw_checks, list):
            raise RequestDecodeError("Checks must be a JSON array")
        checks.extend(raw_checks)
    if req.get("Check") is not None:
        checks.append(req["Check"])
    out["Checks"] = [normalize_check(check, node) for check in checks]
    return out


def _has_peer_name(req: Mapping[str, Any]) -> bool:
    """Whether the request, its service or a check names a peer (Consul refuses those)."""
    parts: list[Any] = [req, req.get("Service"), req.get("Check")]
    checks = req.get("Checks")
    if isinstance(checks, list):
        parts.extend(checks)
    for part in parts:
        if isinstance(part, Mapping):
            for key, value in part.items():
                if str(key).lower() == "peername" and value:
                    return True
    return False


def normalize_service(raw: Any) -> dict[str, Any]:
    """A ``NodeService`` object with canonical names, defaults and Consul's validation."""
    svc = _fold(raw, _SERVICE_FIELDS, "Service")
    kind = _str(svc.get("Kind"), "Service.Kind")
    weights = svc.get("Weights")
    out: dict[str, Any] = {
        "Kind": kind,
        "ID": _str(svc.get("ID"), "Service.ID"),
        "Service": _str(svc.get("Service"), "Service.Service"),
        "Tags": _str_list(svc.get("Tags"), "Service.Tags"),
        "Address": _str(svc.get("Address"), "Service.Address"),
        "TaggedAddresses": _tagged_addresses(svc.get("TaggedAddresses")),
        "Meta": _str_map(svc.get("Meta"), "Service.Meta"),
        "Port": _int(svc.get("Port"), "Service.Port"),
        "SocketPath": _str(svc.get("SocketPath"), "Service.SocketPath"),
        "Weights": None,
        "EnableTagOverride": _bool(svc.get("EnableTagOverride"), "Service.EnableTagOverride"),
        "Proxy": _fold(svc.get("Proxy"), _PROXY_FIELDS, "Service.Proxy", _PROXY_SNAKE) or None,
        "Connect": _connect(svc.get("Connect")),
    }
    if svc.get("Locality") is not None:
        out["Locality"] = _fold(svc["Locality"], ("Region", "Zone"), "Service.Locality")
    if weights is not None:
        w = _fold(weights, ("Passing", "Warning"), "Service.Weights")
        out["Weights"] = {
            "Passing": _int(w.get("Passing"), "Weights.Passing"),
            "Warning": _int(w.get("Warning"), "Weights.Warning"),
        }
    _validate_service(out)
    if not out["ID"] and out["Service"]:
        out["ID"] = out["Service"]
    if out["ID"] and not out["Service"]:
        raise StateError("Must provide service name (Service.Service) when service ID is provided")
    if out["Address"] in ("0.0.0.0", "::", "[::]"):
        raise StateError("Invalid service address")
    return out


def _tagged_addresses(value: Any) -> dict[str, dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RequestDecodeError("Service.TaggedAddresses must be a JSON object")
    out = {}
    for key, raw in value.items():
        addr = _fold(raw, ("Address", "Port"), f"Service.TaggedAddresses.{key}")
        out[str(key)] = {
            "Address": _str(addr.get("Address"), "TaggedAddresses.Address"),
            "Port": _int(addr.get("Port"), "TaggedAddresses.Port"),
        }
    return out


def _connect(value: Any) -> dict[str, Any] | None:
    connect = _fold(
        value,
        ("Native", "SidecarService", "PeerMeta"),
        "Service.Connect",
        {"sidecar_service": "SidecarService"},
    )
    out = {k: v for k, v in connect.items() if k in ("Native", "SidecarService", "PeerMeta") and v}
    return out or None


def _validate_service(svc: Mapping[str, Any]) -> None:
    """``NodeService.Validate``'s common cases, with go-multierror's message format."""
    errors: list[str] = []
    kind = svc["Kind"]
    proxy = svc["Proxy"] or {}
    connect = svc["Connect"] or {}
    if kind == "connect-proxy":
        if not svc["Port"] and not svc["SocketPath"]:
            errors.append(f"Port or SocketPath must be set for a {kind}")
        destination = str(proxy.get("DestinationServiceName") or "")
        if not destination.strip():
            errors.append(
                "Proxy.DestinationServiceName must be non-empty for Connect proxy services"
            )
        if destination == "*":
            errors.append(
                "Proxy.DestinationServiceName must not be a wildcard for Connect proxy services"
            )
        if connect.get("Native"):
            errors.append("A Proxy cannot also be Connect Native, only typical services")
    if kind in _GATEWAY_KINDS:
        if not svc["Port"] and kind not in ("ingress-gateway", "api-gateway"):
            errors.append(f"Port must be non-zero for a {kind}")
        if connect.get("SidecarService"):
            errors.append(f"A {kind} cannot have a sidecar service defined")
        for field, label in (
            ("DestinationServiceName", "Proxy.DestinationServiceName"),
            ("DestinationServiceID", "Proxy.DestinationServiceID"),
            ("LocalServiceAddress", "Proxy.LocalServiceAddress"),
            ("LocalServicePort", "Proxy.LocalServicePort"),
            ("LocalServiceSocketPath", "Proxy.LocalServiceSocketPath"),
            ("Upstreams", "Proxy.Upstreams"),
        ):
            if proxy.get(field):
                errors.append(f"The {label} configuration is invalid for a {kind}")
    if connect.get("Native") and not svc["Port"] and not svc["SocketPath"]:
        errors.append("Port or SocketPath must be set for a Connect native service.")
    if errors:
        count = len(errors)
        points = "\n\t".join(f"* {e}" for e in errors)
        noun = "error" if count == 1 else "errors"
        raise StateError(f"{count} {noun} occurred:\n\t{points}\n\n")


def normalize_check(raw: Any, node: str) -> dict[str, Any]:
    """A ``HealthCheck`` object with canonical names; Node defaults to the request's node,
    CheckID to the name, Type to the definition's kind (Consul's ``checkPreApply``)."""
    check = _fold(raw, _CHECK_FIELDS, "Check")
    out: dict[str, Any] = {
        "Node": _str(check.get("Node"), "Check.Node") or node,
        "CheckID": _str(check.get("CheckID"), "Check.CheckID"),
        "Name": _str(check.get("Name"), "Check.Name"),
        "Status": _str(check.get("Status"), "Check.Status"),
        "Notes": _str(check.get("Notes"), "Check.Notes"),
        "Output": _str(check.get("Output"), "Check.Output"),
        "ServiceID": _str(check.get("ServiceID"), "Check.ServiceID"),
        "ServiceName": _str(check.get("ServiceName"), "Check.ServiceName"),
        "ServiceTags": _str_list(check.get("ServiceTags"), "Check.ServiceTags"),
        "Type": _str(check.get("Type"), "Check.Type"),
        "Interval": _duration_text(check.get("Interval"), "Check.Interval"),
        "Timeout": _duration_text(check.get("Timeout"), "Check.Timeout"),
        "ExposedPort": _int(check.get("ExposedPort"), "Check.ExposedPort"),
        "Definition": _definition(check.get("Definition")),
    }
    if not out["CheckID"] and out["Name"]:
        out["CheckID"] = out["Name"]
    if not out["Type"]:
        out["Type"] = check_type(out["Definition"])
    return out


def _duration_text(value: Any, what: str) -> str:
    # HealthCheck.Interval/Timeout are strings in Consul; a number is taken as nanoseconds.
    if value is None or isinstance(value, str):
        return value or ""
    ns = _int(value, what)
    return format_duration(ns) if ns else ""


def _definition(value: Any) -> dict[str, Any]:
    raw = _fold(value, _DEFINITION_ORDER, "Check.Definition")
    out: dict[str, Any] = {}
    for name in _DEFINITION_ORDER:
        item = raw.get(name)
        if name in _DEFINITION_DURATIONS:
            ns = _duration_ns(item, f"Definition.{name}")
            if ns:
                out[name] = format_duration(ns)
        elif name == "TTL":
            ns = _duration_ns(item, "Definition.TTL")
            if ns:
                out[name] = ns
        elif item:
            out[name] = item
    return out


def check_type(definition: Mapping[str, Any]) -> str:
    """Consul's ``CheckType.Type()`` for a (canonical) check definition."""
    d = definition
    interval = bool(d.get("Interval"))
    if d.get("GRPC") and interval:
        return "grpc"
    if d.get("HTTP") and interval:
        return "http"
    if d.get("TTL"):
        return "ttl"
    if d.get("TCP") and interval:
        return "tcp"
    if d.get("UDP") and interval:
        return "udp"
    if d.get("AliasNode") or d.get("AliasService"):
        return "alias"
    if d.get("DockerContainerID") and d.get("ScriptArgs") and interval:
        return "docker"
    if d.get("ScriptArgs") and interval:
        return "script"
    if d.get("H2PING") and interval:
        return "h2ping"
    if d.get("OSService") and interval:
        return "os_service"
    return ""


# --- DeregisterRequest -------------------------------------------------------------------


def normalize_deregister_request(body: Any) -> dict[str, Any]:
    req = _fold(body, _DEREGISTER_FIELDS, "body")
    out = {
        "Node": _str(req.get("Node"), "Node"),
        "ServiceID": _str(req.get("ServiceID"), "ServiceID"),
        "CheckID": _str(req.get("CheckID"), "CheckID"),
        "Datacenter": _str(req.get("Datacenter"), "Datacenter"),
    }
    if not out["Node"]:
        raise StateError("Must provide node")
    return out


# --- handlers ----------------------------------------------------------------------------


def _register(fsm: ConsulFSM, index: int, body: Any) -> bool:
    req = normalize_register_request(body)
    store = fsm.store
    with store.write_txn(index) as tx:
        store.catalog.register_txn(tx, req, fsm.now())
    return True


def _deregister(fsm: ConsulFSM, index: int, body: Any) -> bool:
    req = normalize_deregister_request(body)
    store = fsm.store
    with store.write_txn(index) as tx:
        store.catalog.deregister_txn(tx, req["Node"], req["ServiceID"], req["CheckID"], fsm.now())
    return True


def _register_batch(fsm: ConsulFSM, index: int, body: Any) -> list[str | None]:
    """``PROCONSUL_REGISTER_BATCH``: ``{"Requests": [RegisterRequest, ...]}``, each applied as
    ``REGISTER`` would be, in order, each in its own write transaction at this index (one bad
    request fails alone). The result lists, per request, None or its error text. Agents use it
    to sync many local services in one Raft round."""
    if not isinstance(body, dict) or not isinstance(body.get("Requests"), list):
        raise StateError("register batch: Requests must be a list")
    results: list[str | None] = []
    for request in body["Requests"]:
        try:
            _register(fsm, index, request)
        except (StateError, RequestDecodeError, ValueError, TypeError) as exc:
            results.append(str(exc) or type(exc).__name__)
        else:
            results.append(None)
    return results


HANDLERS: dict[MessageType, Handler] = {
    MessageType.REGISTER: _register,
    MessageType.DEREGISTER: _deregister,
    MessageType.PROCONSUL_REGISTER_BATCH: _register_batch,
}
