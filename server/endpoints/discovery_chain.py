"""``GET``/``POST /v1/discovery-chain/:service``: the compiled discovery chain of a service
(Consul's ``CompiledDiscoveryChain``: ``{"Chain": {...}}``).

What is compiled, from the config entries that exist:

* the protocol: ``OverrideProtocol``, else service-defaults ``Protocol``, else proxy-defaults
  ``Config.protocol``, else ``tcp``;
* a service-router (only for http/http2/grpc) becomes the start node ``router:<svc>.default.default``
  with one compiled route per route plus Consul's catch-all ``PathPrefix "/"`` route to the
  service itself;
* a service-splitter (L7 only) becomes ``splitter:<svc>.default.default``; a split to a service
  that has its own splitter is flattened into this one with the weights multiplied, as Consul does;
* resolvers: node ``resolver:<target>`` per target, target IDs ``[<subset>.]<svc>.default.default.<dc>``;
  a missing service-resolver is a default one (``Default: true``, ``ConnectTimeout: 5s``);
  ``DefaultSubset``, ``Subsets`` (filter and OnlyPassing go to the target's ``Subset``),
  ``Redirect`` (service, subset, datacenter; followed once per resolver, loops refused),
  ``Failover`` (``Service``/``ServiceSubset``/``Datacenters``; ``Targets`` entries with those
  fields) become ``Failover.Targets``; ``ConnectTimeout`` and ``OverrideConnectTimeout``;
* targets carry ``SNI``/``Name`` ``[<subset>.]<svc>.default.<dc>.internal.<trust-domain>``, the
  mesh gateway mode (override, service-defaults, proxy-defaults) and the service's
  ``TransparentProxy`` zero value.

Not compiled (yet): namespaces/partitions other than ``default``, peers and sameness groups,
failover ``Policy``, ``LoadBalancer`` and ``RequestTimeout`` on nodes, envoy extensions and
header manipulation merging across flattened splits.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web

from server.commands.config_entry import L7_PROTOCOLS, service_protocol
from server.endpoints.config_entry import ordered_entry
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, fold_keys, json_response, read_json
from server.state import StateStore, WatchSet, format_duration, parse_duration
from server.state.config_entries import ConfigEntryTable

__all__ = ["ChainError", "compile_chain", "register"]

DEFAULT_CONNECT_TIMEOUT_NS = 5_000_000_000
NS = "default"
AP = "default"


class ChainError(ValueError):
    pass


class _Compiler:
    def __init__(
        self,
        table: ConfigEntryTable,
        service: str,
        datacenter: str,
        trust_domain: str,
        protocol: str,
        connect_timeout_ns: int,
        mesh_gateway_mode: str,
    ) -> None:
        self.table = table
        self.service = service
        self.dc = datacenter
        self.trust_domain = trust_domain
        self.protocol = protocol
        self.override_timeout = connect_timeout_ns
        self.override_mgw = mesh_gateway_mode
        self.nodes: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, dict[str, Any]] = {}
        self.uses_entries = False

    # --- entries ---------------------------------------------------------------------

    def entry(self, kind: str, name: str) -> dict[str, Any] | None:
        row = self.table.peek(kind, name)
        if row is None:
            return None
        if kind != "service-defaults":
            self.uses_entries = True
        return ordered_entry(row)

    @property
    def l7(self) -> bool:
        return self.protocol in L7_PROTOCOLS

    # --- nodes -------------------------------------------------------------------------

    def compile(self) -> dict[str, Any]:
        start = self.router_node() if self.l7 else None
        if start is None:
            start = self.splitter_or_resolver(self.service, "", self.dc)
        chain: dict[str, Any] = {
            "ServiceName": self.service,
            "Namespace": NS,
            "Partition": AP,
            "Datacenter": self.dc,
        }
        start_node = self.nodes[start]
        default = (
            not self.uses_entries
            and start_node["Type"] == "resolver"
            and start_node["Resolver"].get("Default", False)
        )
        if default:
            chain["Default"] = True
        chain["Protocol"] = self.protocol
        defaults = self.table.peek("service-defaults", self.service)
        if defaults is not None and defaults.get("Meta"):
            chain["ServiceMeta"] = dict(defaults["Meta"])
        chain["StartNode"] = start
        chain["Nodes"] = self.nodes
        chain["Targets"] = self.targets
        return chain

    def router_node(self) -> str | None:
        router = self.entry("service-router", self.service)
        if router is None:
            return None
        key = f"router:{self.service}.{NS}.{AP}"
        routes: list[dict[str, Any]] = []
        node = {"Type": "router", "Name": f"{self.service}.{NS}.{AP}", "Routes": routes}
        self.nodes[key] = node
        for route in router.get("Routes") or []:
            destination = route.get("Destination") or {}
            service = destination.get("Service") or self.service
            subset = destination.get("ServiceSubset", "")
            if subset:
                next_node = self.resolver_node(service, subset, self.dc)
            else:
                next_node = self.splitter_or_resolver(service, "", self.dc)
            definition = {k: v for k, v in route.items()}
            if "Destination" not in definition:
                definition["Destination"] = {"Service": service}
            routes.append({"Definition": definition, "NextNode": next_node})
        routes.append(
            {
                "Definition": {
                    "Match": {"HTTP": {"PathPrefix": "/"}},
                    "Destination": {"Service": self.service, "Namespace": NS, "Partition": AP},
                },
                "NextNode": self.splitter_or_resolver(self.service, "", self.dc),
            }
        )
        return key

    def splitter_or_resolver(self, service: str, subset: str, dc: str) -> str:
        if self.l7 and not subset:
            splitter = self.entry("service-splitter", service)
            if splitter is not None:
                return self.splitter_node(service, splitter)
        return self.resolver_node(service, subset, dc)

    def splitter_node(self, service: str, splitter: dict[str, Any]) -> str:
        key = f"splitter:{service}.{NS}.{AP}"
        if key in self.nodes:
            return key
        splits: list[dict[str, Any]] = []
        self.nodes[key] = {"Type": "splitter", "Name": f"{service}.{NS}.{AP}", "Splits": splits}
        for leg, weight in self.flatten(service, splitter, 100.0, set()):
            target_service = leg.get("Service") or service
            next_node = self.resolver_node(target_service, leg.get("ServiceSubset", ""), self.dc)
            splits.append({"Definition": leg, "Weight": _weight(weight), "NextNode": next_node})
        return key

    def flatten(
        self, service: str, splitter: dict[str, Any], share: float, seen: set[str]
    ) -> list[tuple[dict[str, Any], float]]:
        if service in seen:
            raise ChainError(f'detected circular reference: splitter "{service}"')
        seen = seen | {service}
        legs: list[tuple[dict[str, Any], float]] = []
        for split in splitter.get("Splits") or []:
            weight = share * float(split.get("Weight", 0)) / 100.0
            other = split.get("Service") or service
            if other != service and not split.get("ServiceSubset"):
                nested = self.entry("service-splitter", other)
                if nested is not None:
                    legs.extend(self.flatten(other, nested, weight, seen))
                    continue
            legs.append((dict(split), weight))
        return legs

    def resolve(
        self, service: str, subset: str, dc: str
    ) -> tuple[str, str, str, dict[str, Any] | None]:
        """Follow redirects: the (service, subset, dc) that is finally resolved and its
        resolver entry (None for a default resolver)."""
        seen: set[tuple[str, str, str]] = set()
        while True:
            if (service, subset, dc) in seen:
                raise ChainError(f'detected circular resolver redirect: "{service}"')
            seen.add((service, subset, dc))
            resolver = self.entry("service-resolver", service)
            if resolver is None:
                return service, subset, dc, None
            redirect = resolver.get("Redirect")
            if redirect:
                service = redirect.get("Service") or service
                subset = (
                    redirect.get("ServiceSubset", "")
                    if redirect.get("Service")
                    else (redirect.get("ServiceSubset") or subset)
                )
                dc = redirect.get("Datacenter") or dc
                continue
            if not subset:
                subset = resolver.get("DefaultSubset", "")
            return service, subset, dc, resolver

    def resolver_node(self, service: str, subset: str, dc: str) -> str:
        service, subset, dc, resolver = self.resolve(service, subset, dc)
        target_id = self.target(service, subset, dc, resolver)
        key = f"resolver:{target_id}"
        if key in self.nodes:
            return key
        timeout = self.connect_timeout(resolver)
        node_resolver: dict[str, Any] = {}
        if resolver is None:
            node_resolver["Default"] = True
        node_resolver["ConnectTimeout"] = format_duration(timeout)
        if resolver is not None and resolver.get("RequestTimeout"):
            node_resolver["RequestTimeout"] = resolver["RequestTimeout"]
        node_resolver["Target"] = target_id
        node: dict[str, Any] = {"Type": "resolver", "Name": target_id, "Resolver": node_resolver}
        self.nodes[key] = node
        if resolver is not None:
            failover = resolver.get("Failover") or {}
            policy = failover.get(subset) or failover.get("*")
            if policy:
                targets = self.failover_targets(service, subset, dc, policy)
                targets = [t for t in targets if t != target_id]
                if targets:
                    node_resolver["Failover"] = {"Targets": targets}
            if resolver.get("LoadBalancer"):
                node["LoadBalancer"] = resolver["LoadBalancer"]
        return key

    def failover_targets(
        self, service: str, subset: str, dc: str, policy: dict[str, Any]
    ) -> list[str]:
        out: list[str] = []
        specs: list[dict[str, Any]] = []
        targets = policy.get("Targets")
        if isinstance(targets, list) and targets:
            specs = [fold_keys(t, ("Service", "ServiceSubset", "Datacenter")) for t in targets]
        elif policy.get("Datacenters"):
            specs = [
                {
                    "Service": policy.get("Service", ""),
                    "ServiceSubset": policy.get("ServiceSubset", ""),
                    "Datacenter": other,
                }
                for other in policy["Datacenters"]
            ]
        else:
            specs = [
                {
                    "Service": policy.get("Service", ""),
                    "ServiceSubset": policy.get("ServiceSubset", ""),
                }
            ]
        for spec in specs:
            f_service = spec.get("Service") or service
            f_subset = spec.get("ServiceSubset") or ("" if spec.get("Service") else subset)
            f_dc = spec.get("Datacenter") or dc
            r_service, r_subset, r_dc, resolver = self.resolve(f_service, f_subset, f_dc)
            target_id = self.target(r_service, r_subset, r_dc, resolver)
            if target_id not in out:
                out.append(target_id)
        return out

    def connect_timeout(self, resolver: dict[str, Any] | None) -> int:
        if self.override_timeout > 0:
            return self.override_timeout
        if resolver is not None and resolver.get("ConnectTimeout"):
            return parse_duration(str(resolver["ConnectTimeout"]))
        return DEFAULT_CONNECT_TIMEOUT_NS

    def mesh_gateway(self, service: str) -> dict[str, Any]:
        if self.override_mgw:
            return {"Mode": self.override_mgw}
        defaults = self.table.peek("service-defaults", service)
        if defaults is not None and (defaults.get("MeshGateway") or {}).get("Mode"):
            return dict(defaults["MeshGateway"])
        proxy = self.table.peek("proxy-defaults", "global")
        if proxy is not None and (proxy.get("MeshGateway") or {}).get("Mode"):
            return dict(proxy["MeshGateway"])
        return {}

    def target(self, service: str, subset: str, dc: str, resolver: dict[str, Any] | None) -> str:
        target_id = f"{subset + '.' if subset else ''}{service}.{NS}.{AP}.{dc}"
        if target_id in self.targets:
            return target_id
        sni = f"{subset + '.' if subset else ''}{service}.{NS}.{dc}.internal.{self.trust_domain}"
        target: dict[str, Any] = {"ID": target_id, "Service": service}
        if subset:
            target["ServiceSubset"] = subset
        target.update({"Namespace": NS, "Partition": AP, "Datacenter": dc})
        target["MeshGateway"] = self.mesh_gateway(service)
        subset_def: dict[str, Any] = {}
        if subset:
            definition = ((resolver or {}).get("Subsets") or {}).get(subset)
            if definition is None:
                raise ChainError(f'service "{service}" does not have a subset named "{subset}"')
            subset_def = {k: v for k, v in definition.items() if v not in ("", False, None)}
        target["Subset"] = subset_def
        defaults = self.table.peek("service-defaults", service)
        tproxy = (defaults or {}).get("TransparentProxy") or {}
        target["TransparentProxy"] = dict(tproxy)
        target["ConnectTimeout"] = format_duration(self.connect_timeout(resolver))
        target["SNI"] = sni
        target["Name"] = sni
        self.targets[target_id] = target
        return target_id


def _weight(value: float) -> float | int:
    rounded = round(value * 100) / 100
    return int(rounded) if rounded == int(rounded) else rounded


def compile_chain(
    table: ConfigEntryTable,
    service: str,
    datacenter: str,
    trust_domain: str,
    *,
    override_protocol: str = "",
    override_connect_timeout_ns: int = 0,
    override_mesh_gateway_mode: str = "",
) -> dict[str, Any]:
    """The ``CompiledDiscoveryChain`` of ``service`` (see the module docstring)."""
    protocol = (override_protocol or service_protocol(table, service) or "tcp").lower()
    compiler = _Compiler(
        table,
        service,
        datacenter,
        trust_domain,
        protocol,
        override_connect_timeout_ns,
        override_mesh_gateway_mode,
    )
    chain = compiler.compile()
    if override_protocol or override_connect_timeout_ns or override_mesh_gateway_mode:
        digest = hashlib.sha256(
            orjson.dumps(
                [override_protocol, override_connect_timeout_ns, override_mesh_gateway_mode]
            )
        ).hexdigest()[:8]
        chain = {
            **{k: chain[k] for k in ("ServiceName", "Namespace", "Partition", "Datacenter")},
            "CustomizationHash": digest,
            **{
                k: v
                for k, v in chain.items()
                if k not in ("ServiceName", "Namespace", "Partition", "Datacenter")
            },
        }
    return chain


def _decode_overrides(raw: Any) -> tuple[str, int, str]:
    body = fold_keys(
        {str(k).replace("_", ""): v for k, v in (raw or {}).items()}
        if isinstance(raw, dict)
        else raw,
        ("OverrideProtocol", "OverrideConnectTimeout", "OverrideMeshGateway"),
    )
    protocol = body.get("OverrideProtocol")
    if protocol is not None and not isinstance(protocol, (str, int, float, bool)):
        raise ValueError(f"OverrideProtocol: invalid type {type(protocol).__name__}")
    protocol_text = "" if protocol is None else str(protocol)
    timeout = body.get("OverrideConnectTimeout")
    timeout_ns = 0
    if isinstance(timeout, str) and timeout:
        timeout_ns = parse_duration(timeout)
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        timeout_ns = int(timeout)
    mode = ""
    gateway = body.get("OverrideMeshGateway")
    if isinstance(gateway, dict):
        mode_value = fold_keys(gateway, ("Mode",)).get("Mode")
        mode = "" if mode_value is None else str(mode_value)
    return protocol_text, timeout_ns, mode


class DiscoveryChainEndpoint:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        opts = self.ctx.options(request)
        if not name:
            raise HTTPError(400, "Missing chain name")
        protocol, timeout_ns, mode = "", 0, ""
        if request.method == "POST":
            raw = await read_json(request, empty={})
            try:
                protocol, timeout_ns, mode = _decode_overrides(raw)
            except ValueError as exc:
                raise HTTPError(400, f"Request decoding failed: {exc}") from None
            if mode and mode not in ("none", "local", "remote", "default"):
                raise HTTPError(400, "Invalid OverrideMeshGateway.Mode parameter")
            if mode == "default":
                mode = ""
        datacenter = request.query.get("compile-dc", "") or self.ctx.config.datacenter
        from server.endpoints.connect import ensure_ca  # late: avoids an import cycle

        await ensure_ca(self.ctx)

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, dict[str, Any]]:
            index = store.config_entries.watch_all(ws)
            store.connect_ca.config(ws)  # the trust domain comes from the CA configuration
            trust_domain = store.connect_ca.trust_domain()
            chain = compile_chain(
                store.config_entries,
                name,
                datacenter,
                trust_domain,
                override_protocol=protocol,
                override_connect_timeout_ns=timeout_ns,
                override_mesh_gateway_mode=mode,
            )
            return index, chain

        try:
            chain, meta = await self.ctx.read(opts, read)
        except ChainError as exc:
            raise HTTPError(500, str(exc)) from None
        return json_response(request, {"Chain": chain}, headers=self.ctx.headers(meta))


def register(app: web.Application, ctx: ServerContext) -> None:
    endpoint = DiscoveryChainEndpoint(ctx)
    app.router.add_get("/v1/discovery-chain/{name:.*}", endpoint.handle)
    app.router.add_post("/v1/discovery-chain/{name:.*}", endpoint.handle)
