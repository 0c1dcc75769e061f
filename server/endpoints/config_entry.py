"""Config entries over HTTP: ``PUT /v1/config``, ``GET /v1/config/:kind[/:name]``,
``DELETE /v1/config/:kind/:name`` (Consul's ``agent/config_endpoint.go``).

Decoding follows Consul's ``DecodeConfigEntry``: the body must carry ``Kind`` (or ``kind``);
field names match case-insensitively and the snake_case aliases are accepted
(``mesh_gateway`` = ``MeshGateway``), on the entry and on the nested structures this module
models; keys no structure has are refused as ``invalid config key "<key>"`` (a 400
``Request decoding failed: ...``). Free-form maps (``Meta``, proxy-defaults ``Config``, and the
parts of gateway, exported-services and intentions entries not modelled here) are stored as
given.

Then Consul's ``Normalize``/``Validate`` for the kind (their errors are 500s with Consul's
text, as Consul's RPC errors are), and the Raft write (``MessageType.CONFIG_ENTRY``). The stored
entry is what GET shows: Go's JSON of the struct, i.e. fields that are never omitted are
present with their zero value (``"Protocol": ""``, ``"MeshGateway": {}``), durations as Go
duration strings; Namespace/Partition are absent, as in Consul CE.

Answers: PUT ``true``/``false`` (``?cas=`` decides), DELETE ``{}`` or, with ``?cas=``,
``true``/``false``; GET of a missing entry is a 404 ``Config entry not found for "<kind>" /
"<name>"``; a list is ``[]`` when empty, sorted by name. Reads block on ``?index=``.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, json_response, parse_uint_param, read_json
from server.state import format_duration, parse_duration

__all__ = ["KINDS", "OPAQUE_KINDS", "decode_config_entry", "normalize_config_entry", "register"]

# --- schemas -----------------------------------------------------------------------------
# A schema maps canonical field names to a spec: None (a value kept as given), "any" (a free
# structure kept as given), "dur" (a Go duration shown as a string, for the fields Consul
# marshals that way), "durns" (a Go duration shown as integer nanoseconds, Go's default),
# ("obj", schema), ("list", schema) for a list of objects, ("map", schema) for a map of
# name -> object.

Schema = dict[str, Any]

_MESH_GATEWAY: Schema = {"Mode": None}
_TPROXY: Schema = {"OutboundListenerPort": None, "DialedDirectly": None}
_EXPOSE: Schema = {
    "Checks": None,
    "Paths": (
        "list",
        {"ListenerPort": None, "Path": None, "LocalPathPort": None, "Protocol": None},
    ),
}
_HEADERS: Any = ("obj", {"Add": "any", "Set": "any", "Remove": None})
_PASSIVE_HEALTH: Any = (
    "obj",
    {
        "Interval": "durns",
        "MaxFailures": None,
        "EnforcingConsecutive5xx": None,
        "MaxEjectionPercent": None,
        "BaseEjectionTime": "durns",
    },
)
_LIMITS: Any = (
    "obj",
    {"MaxConnections": None, "MaxPendingRequests": None, "MaxConcurrentRequests": None},
)
_UPSTREAM: Schema = {
    "Name": None,
    "Namespace": None,
    "Partition": None,
    "Peer": None,
    "EnvoyListenerJSON": None,
    "EnvoyClusterJSON": None,
    "Protocol": None,
    "ConnectTimeoutMs": None,
    "Limits": _LIMITS,
    "PassiveHealthCheck": _PASSIVE_HEALTH,
    "MeshGateway": ("obj", {"Mode": None}),
    "BalanceOutboundConnections": None,
}

_SERVICE_DEFAULTS: Schema = {
    "Protocol": None,
    "Mode": None,
    "TransparentProxy": ("obj", _TPROXY),
    "MutualTLSMode": None,
    "MeshGateway": ("obj", _MESH_GATEWAY),
    "Expose": ("obj", _EXPOSE),
    "ExternalSNI": None,
    "UpstreamConfig": ("obj", {"Overrides": ("list", _UPSTREAM), "Defaults": ("obj", _UPSTREAM)}),
    "Destination": ("obj", {"Addresses": None, "Port": None}),
    "MaxInboundConnections": None,
    "LocalConnectTimeoutMs": None,
    "LocalRequestTimeoutMs": None,
    "BalanceInboundConnections": None,
    "RateLimits": "any",
    "EnvoyExtensions": "any",
}
_PROXY_DEFAULTS: Schema = {
    "Config": "any",
    "Mode": None,
    "TransparentProxy": ("obj", _TPROXY),
    "MutualTLSMode": None,
    "MeshGateway": ("obj", _MESH_GATEWAY),
    "Expose": ("obj", _EXPOSE),
    "AccessLogs": (
        "obj",
        {
            "Enabled": None,
            "DisableListenerLogs": None,
            "Type": None,
            "Path": None,
            "JSONFormat": None,
            "TextFormat": None,
        },
    ),
    "EnvoyExtensions": "any",
    "FailoverPolicy": "any",
    "PrioritizeByLocality": "any",
}
_ROUTER: Schema = {
    "Routes": (
        "list",
        {
            "Match": (
                "obj",
                {
                    "HTTP": (
                        "obj",
                        {
                            "PathExact": None,
                            "PathPrefix": None,
                            "PathRegex": None,
                            "Header": (
                                "list",
                                {
                                    "Name": None,
                                    "Present": None,
                                    "Exact": None,
                                    "Prefix": None,
                                    "Suffix": None,
                                    "Regex": None,
                                    "Invert": None,
                                },
                            ),
                            "QueryParam": (
                                "list",
                                {"Name": None, "Present": None, "Exact": None, "Regex": None},
                            ),
                            "Methods": None,
                        },
                    )
                },
            ),
            "Destination": (
                "obj",
                {
                    "Service": None,
                    "ServiceSubset": None,
                    "Namespace": None,
                    "Partition": None,
                    "PrefixRewrite": None,
                    "RequestTimeout": "dur",
                    "IdleTimeout": "dur",
                    "NumRetries": None,
                    "RetryOnConnectFailure": None,
                    "RetryOn": None,
                    "RetryOnStatusCodes": None,
                    "RequestHeaders": _HEADERS,
                    "ResponseHeaders": _HEADERS,
                },
            ),
        },
    ),
}
_SPLITTER: Schema = {
    "Splits": (
        "list",
        {
            "Weight": None,
            "Service": None,
            "ServiceSubset": None,
            "Namespace": None,
            "Partition": None,
            "RequestHeaders": _HEADERS,
            "ResponseHeaders": _HEADERS,
        },
    ),
}
_RESOLVER: Schema = {
    "DefaultSubset": None,
    "Subsets": ("map", {"Filter": None, "OnlyPassing": None}),
    "Redirect": (
        "obj",
        {
            "Service": None,
            "ServiceSubset": None,
            "Namespace": None,
            "Partition": None,
            "Datacenter": None,
            "Peer": None,
            "SamenessGroup": None,
        },
    ),
    "Failover": (
        "map",
        {
            "Service": None,
            "ServiceSubset": None,
            "Namespace": None,
            "Datacenters": None,
            "Targets": (
                "list",
                {
                    "Service": None,
                    "ServiceSubset": None,
                    "Partition": None,
                    "Namespace": None,
                    "Datacenter": None,
                    "Peer": None,
                },
            ),
            "Policy": "any",
            "SamenessGroup": None,
        },
    ),
    "ConnectTimeout": "dur",
    "RequestTimeout": "dur",
    "PrioritizeByLocality": "any",
    "LoadBalancer": (
        "obj",
        {
            "Policy": None,
            "RingHashConfig": ("obj", {"MinimumRingSize": None, "MaximumRingSize": None}),
            "LeastRequestConfig": ("obj", {"ChoiceCount": None}),
            "HashPolicies": (
                "list",
                {
                    "Field": None,
                    "FieldValue": None,
                    "CookieConfig": ("obj", {"Session": None, "TTL": "durns", "Path": None}),
                    "SourceIP": None,
                    "Terminal": None,
                },
            ),
        },
    ),
}
_TLS_VERSIONS: Schema = {
    "TLSMinVersion": None,
    "TLSMaxVersion": None,
    "CipherSuites": None,
}
_INGRESS_SERVICE: Schema = {
    "Name": None,
    "Hosts": None,
    "Namespace": None,
    "Partition": None,
    "TLS": "any",
    "RequestHeaders": _HEADERS,
    "ResponseHeaders": _HEADERS,
    "MaxConnections": None,
    "MaxPendingRequests": None,
    "MaxConcurrentRequests": None,
    "PassiveHealthCheck": _PASSIVE_HEALTH,
}
_INGRESS: Schema = {
    "TLS": ("obj", {"Enabled": None, **_TLS_VERSIONS, "SDS": "any"}),
    "Listeners": (
        "list",
        {
            "Port": None,
            "Protocol": None,
            "Services": ("list", _INGRESS_SERVICE),
            "TLS": "any",
        },
    ),
    "Defaults": "any",
}
_TERMINATING: Schema = {
    "Services": (
        "list",
        {
            "Name": None,
            "Namespace": None,
            "Partition": None,
            "CAFile": None,
            "CertFile": None,
            "KeyFile": None,
            "SNI": None,
            "DisableAutoHostRewrite": None,
        },
    )
}
_MESH: Schema = {
    "TransparentProxy": ("obj", {"MeshDestinationsOnly": None}),
    "AllowEnablingPermissiveMutualTLS": None,
    "ValidateClusters": None,
    "TLS": ("obj", {"Incoming": "any", "Outgoing": "any"}),
    "HTTP": ("obj", {"SanitizeXForwardedClientCert": None, "Incoming": "any"}),
    "Peering": ("obj", {"PeerThroughMeshGateways": None}),
}
_EXPORTED: Schema = {
    "Services": (
        "list",
        {
            "Name": None,
            "Namespace": None,
            "Consumers": ("list", {"Partition": None, "Peer": None, "SamenessGroup": None}),
        },
    )
}
_INTENTIONS: Schema = {
    "Sources": (
        "list",
        {
            "Name": None,
            "Peer": None,
            "Namespace": None,
            "Partition": None,
            "SamenessGroup": None,
            "Action": None,
            "Permissions": "any",
            "Precedence": None,
            "Type": None,
            "Description": None,
            "LegacyID": None,
            "LegacyMeta": "any",
            "LegacyCreateTime": None,
            "LegacyUpdateTime": None,
        },
    ),
    "JWT": "any",
}
#: Kinds this server stores without modelling their fields (any top-level key is kept).
OPAQUE_KINDS = frozenset(
    {
        "api-gateway",
        "bound-api-gateway",
        "http-route",
        "tcp-route",
        "inline-certificate",
        "file-system-certificate",
        "jwt-provider",
        "sameness-group",
    }
)

#: kind -> (schema, fields always present with their zero value)
KINDS: dict[str, tuple[Schema, dict[str, Any]]] = {
    "service-defaults": (
        _SERVICE_DEFAULTS,
        {"Protocol": "", "TransparentProxy": {}, "MeshGateway": {}, "Expose": {}},
    ),
    "proxy-defaults": (
        _PROXY_DEFAULTS,
        {
            "Config": None,
            "TransparentProxy": {},
            "MeshGateway": {},
            "Expose": {},
            "AccessLogs": {},
        },
    ),
    "service-router": (_ROUTER, {"Routes": None}),
    "service-splitter": (_SPLITTER, {"Splits": None}),
    "service-resolver": (_RESOLVER, {}),
    "ingress-gateway": (_INGRESS, {"TLS": {"Enabled": False}, "Listeners": None}),
    "terminating-gateway": (_TERMINATING, {"Services": None}),
    "mesh": (_MESH, {"TransparentProxy": {"MeshDestinationsOnly": False}}),
    "exported-services": (_EXPORTED, {"Services": None}),
    "service-intentions": (_INTENTIONS, {"Sources": None}),
}

_TOP: Schema = {"Kind": None, "Name": None, "Meta": "any", "CreateIndex": None, "ModifyIndex": None}


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


class _Decoder:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def obj(self, raw: Any, schema: Schema, path: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.errors.append(f"'{path or 'entry'}' expected a map, got '{type(raw).__name__}'")
            return {}
        names = {_norm(name): name for name in schema}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            canonical = names.get(_norm(str(key)))
            where = f"{path}.{key}" if path else str(key)
            if canonical is None:
                if _norm(str(key)) in ("namespace", "partition") and value in ("", "default"):
                    continue
                if str(key).lower().endswith("namespace"):
                    self.errors.append(
                        f'invalid config key "{where}", namespaces are a consul enterprise feature'
                    )
                else:
                    self.errors.append(f'invalid config key "{where}"')
                continue
            out[canonical] = self.value(
                value, schema[canonical], f"{path}.{canonical}" if path else canonical
            )
        return out

    def value(self, value: Any, spec: Any, path: str) -> Any:
        if value is None or spec is None or spec == "any":
            return value
        if spec == "dur":
            return _duration(value, path, self.errors)
        if spec == "durns":
            text = _duration(value, path, self.errors)
            return None if text is None else parse_duration(text)
        kind, sub = spec
        if kind == "obj":
            return self.obj(value, sub, path)
        if kind == "list":
            if isinstance(value, dict):  # Go's weak decoding takes one object as a list of one
                value = [value]
            if not isinstance(value, list):
                self.errors.append(f"'{path}': source data must be an array or slice")
                return None
            return [self.obj(item, sub, f"{path}[{i}]") for i, item in enumerate(value)]
        if not isinstance(value, dict):
            self.errors.append(f"'{path}' expected a map, got '{type(value).__name__}'")
            return None
        return {str(k): self.obj(v, sub, f"{path}[{k}]") for k, v in value.items()}


def _duration(value: Any, path: str, errors: list[str]) -> str | None:
    try:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration, got {value!r}")
        if isinstance(value, (int, float)):
            ns = int(value)
        else:
            ns = parse_duration(str(value))
    except ValueError as exc:
        errors.append(f"error decoding '{path}': {exc}")
        return None
    return None if ns == 0 else format_duration(ns)


def _multierror(errors: list[str]) -> str:
    if len(errors) == 1:
        head = "1 error occurred:"
    else:
        head = f"{len(errors)} errors occurred:"
    return head + "\n" + "".join(f"\t* {e}\n" for e in errors) + "\n"


def decode_config_entry(raw: Any) -> dict[str, Any]:
    """A request body as a canonical entry (PascalCase keys, zero-valued fields filled in,
    in Go's field order). Raises ``ValueError`` with Consul's decoding message."""
    if not isinstance(raw, dict):
        raise ValueError("Payload does not contain a kind/Kind key at the top level")
    kind_value: Any = raw.get("Kind", raw.get("kind"))
    if "Kind" not in raw and "kind" not in raw:
        raise ValueError("Payload does not contain a kind/Kind key at the top level")
    if not isinstance(kind_value, str):
        raise ValueError("Kind value in payload is not a string")
    if kind_value in OPAQUE_KINDS:
        return _decode_opaque(kind_value, raw)
    if kind_value not in KINDS:
        raise ValueError(f"invalid config entry kind: {kind_value}")
    schema, always = KINDS[kind_value]
    decoder = _Decoder()
    fields = decoder.obj(raw, {**_TOP, **schema}, "")
    if decoder.errors:
        raise ValueError(_multierror(decoder.errors))
    name = fields.get("Name")
    entry: dict[str, Any] = {"Kind": kind_value, "Name": "" if name is None else str(name)}
    for field in schema:
        if field in fields and fields[field] is not None and not _empty(fields[field]):
            entry[field] = fields[field]
        elif field in always:
            entry[field] = _copy(always[field])
    if fields.get("Meta"):
        entry["Meta"] = fields["Meta"]
    return entry


def _decode_opaque(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """An entry of a kind whose fields are not modelled: top-level keys folded onto Kind,
    Name and Meta, everything else kept as given."""
    entry: dict[str, Any] = {"Kind": kind, "Name": ""}
    for key, value in raw.items():
        folded = _norm(str(key))
        if folded == "kind" or folded in ("createindex", "modifyindex"):
            continue
        if folded == "name":
            entry["Name"] = "" if value is None else str(value)
        elif folded == "meta":
            entry["Meta"] = value
        elif folded in ("namespace", "partition") and value in ("", "default"):
            continue
        else:
            entry[str(key)] = value
    return entry


def _empty(value: Any) -> bool:
    """Go's omitempty: "", 0, false, empty lists and maps (nil is handled by the caller)."""
    if isinstance(value, (str, list, dict)):
        return len(value) == 0
    return value is False or (type(value) is int and value == 0)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


# --- normalise and validate (Consul's Normalize/Validate per kind) --------------------------


def normalize_config_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Apply the kind's Normalize and Validate; raises ``ValueError`` with Consul's text."""
    kind = entry["Kind"]
    name = entry.get("Name", "")
    meta = entry.get("Meta")
    if meta is not None:
        _validate_meta(meta)
    if kind == "proxy-defaults":
        if name not in ("", "global"):
            raise ValueError(f'invalid name ("{name}"), only "global" is supported')
        entry["Name"] = "global"
        return entry
    if kind == "mesh":
        if name not in ("", "mesh"):
            raise ValueError(f'invalid name ("{name}"), only "mesh" is supported')
        entry["Name"] = "mesh"
        return entry
    if not name:
        raise ValueError("Name is required")
    if kind == "service-defaults":
        if name == "*":
            raise ValueError(
                "service-defaults name must be the name of a service, and not a wildcard"
            )
        if not isinstance(entry.get("Protocol", ""), str):
            raise ValueError("Protocol must be a string")
        entry["Protocol"] = entry.get("Protocol", "").lower()
        if entry.get("MeshGateway", {}).get("Mode") not in (None, "", "none", "local", "remote"):
            raise ValueError(f'Invalid Mesh Gateway Mode: "{entry["MeshGateway"]["Mode"]}"')
    elif kind == "service-splitter":
        _validate_splitter(entry)
    elif kind == "service-resolver":
        _validate_resolver(entry)
    elif kind == "service-router":
        _validate_router(entry)
    elif kind == "ingress-gateway":
        _validate_ingress(entry)
    return entry


_INGRESS_PROTOCOLS = ("tcp", "http", "http2", "grpc")


def _validate_ingress(entry: dict[str, Any]) -> None:
    seen_ports: set[Any] = set()
    for listener in entry.get("Listeners") or []:
        protocol = str(listener.get("Protocol") or "tcp").lower()
        listener["Protocol"] = protocol
        port = listener.get("Port", 0)
        if port in seen_ports:
            raise ValueError(f"port {port} declared on two listeners")
        seen_ports.add(port)
        if protocol not in _INGRESS_PROTOCOLS:
            raise ValueError(
                f"protocol must be 'tcp', 'http', 'grpc' or 'http2'. '{protocol}' is an "
                "unsupported protocol"
            )
        services = listener.get("Services") or []
        if protocol == "tcp" and len(services) > 1:
            raise ValueError(
                f"multiple services per listener are only supported for L7 protocols, "
                f"'http', 'grpc' and 'http2'; listener on port {port} uses protocol 'tcp'"
            )
        for service in services:
            if not service.get("Name"):
                raise ValueError(f"Service name cannot be blank (listener on port {port})")


def _validate_meta(meta: Any) -> None:
    """Consul's ``validateConfigEntryMeta`` (a multierror of every problem)."""
    if not isinstance(meta, dict):
        raise ValueError("Meta must be a map of strings")
    errors: list[str] = []
    if len(meta) > 64:
        errors.append("Meta exceeds maximum element count 64")
    for key, value in meta.items():
        if len(key) > 128:
            errors.append(f'Meta key "{key}" exceeds maximum length 128')
        if isinstance(value, str) and len(value) > 512:
            errors.append(f'Meta value for key "{key}" exceeds maximum length 512')
    if errors:
        raise ValueError(_multierror(errors))


def _scaled(weight: Any) -> int:
    try:
        return math.floor(float(weight) * 100.0 + 0.5)
    except (TypeError, ValueError):
        raise ValueError(f"invalid split weight {weight!r}") from None


def _validate_splitter(entry: dict[str, Any]) -> None:
    splits = entry.get("Splits") or []
    if not splits:
        raise ValueError("no splits configured")
    seen: set[tuple[str, str, str, str]] = set()
    total = 0
    for split in splits:
        key = (
            split.get("Service") or entry["Name"],
            split.get("ServiceSubset", ""),
            split.get("Namespace", ""),
            split.get("Partition", ""),
        )
        if key in seen:
            raise ValueError(
                "split destination occurs more than once: "
                f'service="{key[0]}", subset="{key[1]}", namespace="{key[2]}", '
                f'partition="{key[3]}"'
            )
        seen.add(key)
        scaled = _scaled(split.get("Weight", 0))
        weight = scaled / 100
        split["Weight"] = int(weight) if weight == int(weight) else weight
        total += scaled
    if total != 100 * 100:
        raise ValueError(f"the sum of all split weights must be 100, not {total / 100:f}")


def _validate_resolver(entry: dict[str, Any]) -> None:
    subsets: dict[str, Any] = entry.get("Subsets") or {}
    for subset_name in subsets:
        if not subset_name:
            raise ValueError("Subset defined with empty name")
        if not _valid_subset_name(subset_name):
            raise ValueError(
                f'Subset "{subset_name}" is invalid: must be non-empty and composed only of '
                "lowercase alphanumerics and dashes"
            )
    default = entry.get("DefaultSubset", "")
    if default and default not in subsets:
        raise ValueError(f'DefaultSubset "{default}" is not a valid subset')
    redirect = entry.get("Redirect")
    failover: dict[str, Any] = entry.get("Failover") or {}
    if redirect is not None:
        if failover:
            raise ValueError("Redirect and Failover cannot both be set")
        if not any(redirect.get(k) for k in redirect):
            raise ValueError("Redirect is empty")
        if not redirect.get("Service"):
            for field in ("ServiceSubset", "Namespace", "Partition", "Peer"):
                if redirect.get(field):
                    raise ValueError(f"Redirect.{field} defined without Redirect.Service")
        elif (
            redirect.get("ServiceSubset")
            and redirect["Service"] == entry["Name"]
            and redirect["ServiceSubset"] not in subsets
        ):
            raise ValueError(
                f'Redirect.ServiceSubset "{redirect["ServiceSubset"]}" is not a valid subset '
                f'of "{entry["Name"]}"'
            )
    for subset, policy in failover.items():
        prefix = f'Bad Failover["{subset}"]: '
        if subset != "*" and subset not in subsets:
            raise ValueError(prefix + "not a valid subset subset")
        if not any(
            policy.get(k)
            for k in (
                "Service",
                "ServiceSubset",
                "Namespace",
                "Targets",
                "Datacenters",
                "SamenessGroup",
            )
        ):
            raise ValueError(
                prefix + "one of Service, ServiceSubset, Namespace, Targets, SamenessGroup, or "
                "Datacenters is required"
            )
        sub = policy.get("ServiceSubset")
        if sub and policy.get("Service", "") in ("", entry["Name"]) and sub not in subsets:
            raise ValueError(
                f'{prefix}ServiceSubset "{sub}" is not a valid subset of '
                f'"{policy.get("Service", "")}"'
            )
        if policy.get("Datacenters") and policy.get("Targets"):
            raise ValueError(prefix + "Targets cannot be set with Datacenters")


def _valid_subset_name(name: str) -> bool:
    if len(name) > 63:
        return False
    return all((c.islower() and c.isascii()) or c.isdigit() or c == "-" for c in name) and (
        name[0] != "-" and name[-1] != "-"
    )


_HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
)


def _validate_router(entry: dict[str, Any]) -> None:
    for i, route in enumerate(entry.get("Routes") or []):
        http = (route.get("Match") or {}).get("HTTP")
        prefix_ok = False
        if http:
            parts = 0
            for field in ("PathExact", "PathPrefix"):
                value = http.get(field, "")
                if value:
                    prefix_ok = True
                    parts += 1
                    if not str(value).startswith("/"):
                        raise ValueError(f"Route[{i}] {field} doesn't start with '/': \"{value}\"")
            if http.get("PathRegex"):
                parts += 1
            if parts > 1:
                raise ValueError(
                    f"Route[{i}] should only contain at most one of PathExact, PathPrefix, or "
                    "PathRegex"
                )
            for j, header in enumerate(http.get("Header") or []):
                if not header.get("Name"):
                    raise ValueError(f"Route[{i}] Header[{j}] missing required Name field")
                given = [
                    k for k in ("Present", "Exact", "Prefix", "Suffix", "Regex") if header.get(k)
                ]
                if len(given) != 1:
                    raise ValueError(
                        f"Route[{i}] Header[{j}] should only contain one of Present, Exact, "
                        "Prefix, Suffix, or Regex"
                    )
            for j, param in enumerate(http.get("QueryParam") or []):
                if not param.get("Name"):
                    raise ValueError(f"Route[{i}] QueryParam[{j}] missing required Name field")
                given = [k for k in ("Present", "Exact", "Regex") if param.get(k)]
                if len(given) != 1:
                    raise ValueError(
                        f"Route[{i}] QueryParam[{j}] should only contain one of Present, "
                        "Exact, or Regex"
                    )
            methods = [str(m).upper() for m in http.get("Methods") or []]
            if methods:
                http["Methods"] = methods
            found: set[str] = set()
            for method in methods:
                if method not in _HTTP_METHODS:
                    raise ValueError(f'Route[{i}] Methods contains an invalid method "{method}"')
                if method in found:
                    raise ValueError(f'Route[{i}] Methods contains "{method}" more than once')
                found.add(method)
        destination = route.get("Destination")
        if destination and destination.get("PrefixRewrite") and not prefix_ok:
            raise ValueError(
                f"Route[{i}] cannot make use of PrefixRewrite without configuring either "
                "PathExact or PathPrefix"
            )


def _ordered(value: Any, spec: Any) -> Any:
    """``value`` with its object keys in the schema's (Go's field) order; Raft commands are
    encoded with sorted keys, so stored rows come back sorted."""
    if value is None or spec is None or spec in ("any", "dur", "durns"):
        return value
    kind, sub = spec
    if kind == "obj" and isinstance(value, dict):
        out = {k: _ordered(value[k], sub[k]) for k in sub if k in value}
        out.update({k: v for k, v in value.items() if k not in sub})
        return out
    if kind == "list" and isinstance(value, list):
        return [_ordered(item, ("obj", sub)) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _ordered(v, ("obj", sub)) for k, v in value.items()}
    return value


def ordered_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored entry with its fields in Go's order (Kind, Name, the kind's fields, Meta,
    CreateIndex, ModifyIndex)."""
    schema = KINDS.get(str(entry.get("Kind")), ({}, {}))[0]
    return dict(_ordered(entry, ("obj", {**_TOP_ORDER, **schema, **_TAIL_ORDER})))


_TOP_ORDER: Schema = {"Kind": None, "Name": None}
_TAIL_ORDER: Schema = {"Meta": "any", "CreateIndex": None, "ModifyIndex": None}


def api_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored entry as GET shows it (the mesh entry has no Name field in Consul)."""
    entry = ordered_entry(entry)
    if entry.get("Kind") == "mesh":
        entry = {k: v for k, v in entry.items() if k != "Name"}
    return entry


# --- HTTP --------------------------------------------------------------------------------


class ConfigEndpoint:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def apply(self, request: web.Request) -> web.Response:
        self.ctx.check_datacenter(request.query.get("dc", ""))
        raw = await read_json(request, empty={})
        try:
            entry = decode_config_entry(raw)
        except ValueError as exc:
            raise HTTPError(400, f"Request decoding failed: {exc}") from None
        try:
            entry = normalize_config_entry(entry)
        except ValueError as exc:
            raise HTTPError(500, str(exc)) from None
        op = "upsert"
        if request.query.get("cas", ""):
            cas = parse_uint_param(request, "cas", "cas index") or 0
            op = "upsert-cas"
            entry["ModifyIndex"] = cas
        result = await self._apply(op, entry)
        return json_response(request, bool(result))

    async def _apply(self, op: str, entry: dict[str, Any]) -> Any:
        try:
            return await self.ctx.apply(MessageType.CONFIG_ENTRY, {"Op": op, "Entry": entry})
        except ValueError as exc:
            raise HTTPError(500, str(exc)) from None

    async def get(self, request: web.Request) -> web.Response:
        kind = request.match_info.get("kind", "")
        name = request.match_info.get("name")
        opts = self.ctx.options(request)
        if kind and kind not in KINDS and kind not in OPAQUE_KINDS:
            raise HTTPError(500, f"invalid config entry kind: {kind}")
        if name is None:
            entries, meta = await self.ctx.read(
                opts, lambda s, ws: s.config_entries.list_kind(ws, kind)
            )
            entries = [api_view(e) for e in entries]
            entries = self.ctx.apply_filter(opts.filter, entries, lambda e: e)
            return json_response(request, entries, headers=self.ctx.headers(meta))
        entry, meta = await self.ctx.read(opts, lambda s, ws: s.config_entries.get(ws, kind, name))
        headers = self.ctx.headers(meta)
        if entry is None:
            return web.Response(
                status=404,
                text=f'Config entry not found for "{kind}" / "{name}"',
                headers=headers,
            )
        return json_response(request, api_view(entry), headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        kind = request.match_info.get("kind", "")
        name = request.match_info.get("name", "")
        self.ctx.check_datacenter(request.query.get("dc", ""))
        if kind not in KINDS and kind not in OPAQUE_KINDS:
            raise HTTPError(400, f"invalid config entry kind: {kind}")
        if kind == "proxy-defaults":
            if name not in ("", "global"):
                raise HTTPError(500, f'invalid name ("{name}"), only "global" is supported')
            name = "global"
        elif kind == "mesh":
            name = "mesh"
        entry: dict[str, Any] = {"Kind": kind, "Name": name}
        if request.query.get("cas", ""):
            entry["ModifyIndex"] = parse_uint_param(request, "cas", "cas index") or 0
            deleted = await self._apply("delete-cas", entry)
            return json_response(request, bool(deleted))
        await self._apply("delete", entry)
        return json_response(request, {})

    async def no_name(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            raise HTTPError(404, "Must provide both a kind and name to delete")
        return await self.get(request)


def register(app: web.Application, ctx: ServerContext) -> None:
    endpoint = ConfigEndpoint(ctx)
    app.router.add_put("/v1/config", endpoint.apply)
    app.router.add_put("/v1/config/", endpoint.apply)
    app.router.add_get("/v1/config/{kind}", endpoint.get)
    app.router.add_delete("/v1/config/{kind}", endpoint.no_name)
    app.router.add_get("/v1/config/{kind}/{name:.+}", endpoint.get)
    app.router.add_delete("/v1/config/{kind}/{name:.+}", endpoint.delete)
