"""``catalog datacenters|nodes|services`` and ``services register|deregister``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from server.clicmd.api import APIError
from server.clicmd.base import Command, Context, Fail, columnize, register
from server.clicmd.flags import FlagSet

__all__ = ["format_nodes", "format_services", "services_from_files", "to_api_keys"]


def _map_to_kv(m: dict[str, Any] | None, sep: str) -> str:
    m = m or {}
    return sep.join(f"{k}={m[k]}" for k in sorted(m))


def format_nodes(nodes: list[dict[str, Any]], detailed: bool) -> str:
    """``consul catalog nodes`` output (columnize's SimpleFormat)."""
    if detailed:
        rows = [["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"]]
        for n in nodes:
            rows.append(
                [
                    n.get("Node", ""),
                    n.get("ID", ""),
                    n.get("Address", ""),
                    n.get("Datacenter", ""),
                    _map_to_kv(n.get("TaggedAddresses"), ", "),
                    _map_to_kv(n.get("Meta"), ", "),
                ]
            )
        return columnize(rows)
    rows = [["Node", "ID", "Address", "DC"]]
    for n in nodes:
        node_id = n.get("ID", "") or ""
        idx = node_id.find("-")
        if idx > 0:
            node_id = node_id[:idx]
        rows.append([n.get("Node", ""), node_id, n.get("Address", ""), n.get("Datacenter", "")])
    return columnize(rows)


def format_services(services: dict[str, list[str]], tags: bool) -> str:
    """``consul catalog services`` output: names, or names and tags (tabwriter, padding 6)."""
    order = sorted(services)
    if not tags:
        return "\n".join(order)
    width = max(len(s) for s in order) + 6
    lines = [(s.ljust(width) + ",".join(sorted(services[s] or []))).rstrip() for s in order]
    return "\n".join(lines).strip()


def _node_meta_params(fs: FlagSet) -> list[str]:
    return [f"{k}:{v}" for k, v in fs["node-meta"].items()]


@register
class CatalogDatacenters(Command):
    name = "catalog datacenters"
    synopsis = "Lists all known datacenters"
    usage = """
Usage: consul catalog datacenters [options]

  Retrieves the list of all known datacenters. This datacenters are sorted in
  ascending order based on the estimated median round trip time from the servers
  in this datacenter to the servers in the other datacenters.

  To retrieve the list of datacenters:

      $ consul catalog datacenters
"""
    http = "client"

    def run(self, ctx: Context) -> int:
        if ctx.args:
            raise Fail(f"Too many arguments (expected 0, got {len(ctx.args)})")
        try:
            dcs = ctx.client.get_json("/v1/catalog/datacenters", dc=False) or []
        except APIError as exc:
            raise Fail(f"Error listing datacenters: {exc}") from None
        if not dcs:
            raise Fail("No datacenters found")
        for dc in dcs:
            ctx.out(dc)
        return 0


@register
class CatalogNodes(Command):
    name = "catalog nodes"
    synopsis = "Lists all nodes in the given datacenter"
    usage = """
Usage: consul catalog nodes [options]

  Retrieves the list nodes registered in a given datacenter. By default, the
  datacenter of the local agent is queried.

  To retrieve the list of nodes:

      $ consul catalog nodes

  To print detailed information including full node IDs, tagged addresses, and
  metadata information:

      $ consul catalog nodes -detailed

  To list nodes which are running a particular service:

      $ consul catalog nodes -service=web

  To filter by node metadata:

      $ consul catalog nodes -node-meta="foo=bar"

  To sort nodes by estimated round-trip time from node-web:

      $ consul catalog nodes -near=node-web

  For a full list of options and examples, please see the Consul documentation.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.boolean(
            "detailed",
            help="Output detailed information about the nodes including their addresses and "
            "metadata.",
        )
        fs.string(
            "near",
            "",
            "Node name to sort the node list in ascending order based on estimated "
            'round-trip time from that node. Passing "_agent" will use this agent\'s node '
            "for sorting.",
        )
        fs.mapping(
            "node-meta",
            "Metadata to filter nodes with the given `key=value` pairs. This flag may be "
            "specified multiple times to filter on multiple sources of metadata.",
        )
        fs.string(
            "service",
            "",
            "Service `id or name` to filter nodes. Only nodes which are providing the given "
            "service will be returned.",
        )
        fs.string("filter", "", "Filter to use with the request")

    def run(self, ctx: Context) -> int:
        if ctx.args:
            raise Fail(f"Too many arguments (expected 0, got {len(ctx.args)})")
        params: dict[str, Any] = {
            "near": ctx["near"] or None,
            "node-meta": _node_meta_params(ctx.fs),
            "filter": ctx["filter"] or None,
        }
        client = ctx.client
        if ctx["service"]:
            try:
                entries = (
                    client.get_json("/v1/catalog/service/" + quote(ctx["service"], safe=""), params)
                    or []
                )
            except APIError as exc:
                raise Fail(f"Error listing nodes for service: {exc}") from None
            nodes = [
                {
                    "ID": e.get("ID", ""),
                    "Node": e.get("Node", ""),
                    "Address": e.get("Address", ""),
                    "Datacenter": e.get("Datacenter", ""),
                    "TaggedAddresses": e.get("TaggedAddresses"),
                    "Meta": e.get("NodeMeta"),
                }
                for e in entries
            ]
        else:
            try:
                nodes = client.get_json("/v1/catalog/nodes", params) or []
            except APIError as exc:
                raise Fail(f"Error listing nodes: {exc}") from None
        if not nodes:
            ctx.err("No nodes match the given query - try expanding your search.")
            return 0
        ctx.out(format_nodes(nodes, ctx["detailed"]))
        return 0


@register
class CatalogServices(Command):
    name = "catalog services"
    synopsis = "Lists all registered services in a datacenter"
    usage = """
Usage: consul catalog services [options]

  Retrieves the list services registered in a given datacenter. By default, the
  datacenter of the local agent is queried.

  To retrieve the list of services:

      $ consul catalog services

  To include the services' tags in the output:

      $ consul catalog services -tags

  To list services which run on a particular node:

      $ consul catalog services -node=web

  To filter services on node metadata:

      $ consul catalog services -node-meta="foo=bar"

  For a full list of options and examples, please see the Consul documentation.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string("node", "", "Node `id or name` for which to list services.")
        fs.mapping(
            "node-meta",
            "Metadata to filter nodes with the given `key=value` pairs. If specified, only "
            "services running on nodes matching the given metadata will be returned. This "
            "flag may be specified multiple times to filter on multiple sources of metadata.",
        )
        fs.boolean(
            "tags",
            help="Display each service's tags as a comma-separated list beside each service entry.",
        )
        fs.string("filter", "", "Filter to use with the request")

    def run(self, ctx: Context) -> int:
        if ctx.args:
            raise Fail(f"Too many arguments (expected 0, got {len(ctx.args)})")
        client = ctx.client
        params: dict[str, Any] = {
            "node-meta": _node_meta_params(ctx.fs),
            "filter": ctx["filter"] or None,
        }
        services: dict[str, list[str]] = {}
        if ctx["node"]:
            try:
                node = client.get_json("/v1/catalog/node/" + quote(ctx["node"], safe=""), params)
            except APIError as exc:
                raise Fail(f"Error listing services for node: {exc}") from None
            for svc in ((node or {}).get("Services") or {}).values():
                services.setdefault(svc.get("Service", ""), []).extend(svc.get("Tags") or [])
        else:
            try:
                services = client.get_json("/v1/catalog/services", params) or {}
            except APIError as exc:
                raise Fail(f"Error listing services: {exc}") from None
        if not services:
            ctx.err("No services match the given query - try expanding your search.")
            return 0
        ctx.out(format_services(services, ctx["tags"]))
        return 0


# --- services register / deregister --------------------------------------------------------

_ACRONYMS = {"id": "ID", "http": "HTTP", "tcp": "TCP", "udp": "UDP", "ttl": "TTL", "tls": "TLS"}
_ACRONYMS.update({"grpc": "GRPC", "ip": "IP", "dns": "DNS", "h2ping": "H2PING"})
#: Keys whose values are maps of user-chosen names (kept verbatim).
_OPAQUE = {"meta", "nodemeta", "header", "config", "envoyextensions"}
_NAMED = {"taggedaddresses"}


def _camel(key: str) -> str:
    if "_" not in key and key[:1].isupper():
        return key
    return "".join(_ACRONYMS.get(p.lower(), p[:1].upper() + p[1:]) for p in key.split("_") if p)


def to_api_keys(value: Any) -> Any:
    """A service definition from a config file (snake_case or CamelCase keys) in the agent
    API's CamelCase, leaving user-named maps (``meta``, check ``header`` …) untouched."""
    if isinstance(value, list):
        return [to_api_keys(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        flat = key.replace("_", "").lower()
        name = _camel(key)
        if flat in _OPAQUE:
            out[name] = v
        elif flat in _NAMED and isinstance(v, dict):
            out[name] = {k: to_api_keys(x) for k, x in v.items()}
        else:
            out[name] = to_api_keys(v)
    return out


def services_from_files(paths: list[str]) -> list[dict[str, Any]]:
    """Service definitions (``service {}`` / ``services []``) from JSON or HCL config files,
    loaded and validated as the agent loads its config (in dev mode, as Consul's
    ``ServicesFromFiles`` does), in the agent register API's form."""
    from server.config import ConfigError, LoadOptions, load

    opts = LoadOptions(dev=True, config_files=list(paths), resolve_ports=False)
    try:
        config = load(opts, require_data_dir=False)
    except ConfigError as exc:
        raise Fail(f"Error: {exc}") from None
    return [to_api_keys(dict(svc)) for svc in config.services]


@register
class ServicesRegister(Command):
    name = "services register"
    synopsis = "Register services with the local agent"
    usage = """
Usage: consul services register [options] [FILE...]

  Register one or more services using the local agent API. Services can
  be registered from standard Consul configuration files (HCL or JSON) or
  using flags. The service is registered and the command returns. The caller
  must remember to call "consul services deregister" or a similar API to
  deregister the service when complete.

      $ consul services register web.json

  Additional flags and more advanced use cases are detailed below.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.string("name", "", "Name of the service to register.")
        fs.string("id", "", "ID of the service to register.")
        fs.string("address", "", "Address of the service to register.")
        fs.integer("port", 0, "Port of the service to register.")
        fs.repeated(
            "tag",
            "Tag to add to the service. This flag can be specified multiple times to set multiple tags.",
        )
        fs.mapping(
            "meta",
            "Metadata to set on the service, formatted as key=value. This flag may be specified multiple times to set multiple meta fields.",
        )
        fs.mapping(
            "tagged-address",
            "Tagged address to set on the service, formatted as key=value. This flag may be specified multiple times to set multiple addresses.",
        )

    def run(self, ctx: Context) -> int:
        svcs: list[dict[str, Any]] = []
        if ctx["name"]:
            svc: dict[str, Any] = {"Name": ctx["name"]}
            if ctx["id"]:
                svc["ID"] = ctx["id"]
            if ctx["address"]:
                svc["Address"] = ctx["address"]
            if ctx["port"]:
                svc["Port"] = ctx["port"]
            if ctx["tag"]:
                svc["Tags"] = list(ctx["tag"])
            if ctx["meta"]:
                svc["Meta"] = dict(ctx["meta"])
            if ctx["tagged-address"]:
                svc["TaggedAddresses"] = {k: _tagged(v) for k, v in ctx["tagged-address"].items()}
            svcs.append(svc)
        if not ctx.args and not svcs:
            raise Fail("Service registration requires at least one argument or flags.")
        if ctx.args and svcs:
            raise Fail("Service registration requires arguments or -id, not both.")
        if ctx.args:
            svcs = services_from_files(ctx.args)
        client = ctx.client
        for svc in svcs:
            name = svc.get("Name", "")
            try:
                client.put_json("/v1/agent/service/register", svc, dc=False)
            except APIError as exc:
                raise Fail(f"Error registering service {_go_quote(name)}: {exc}") from None
            ctx.out(f"Registered service: {name}")
        return 0


def _tagged(value: str) -> dict[str, Any]:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and host:
        return {"Address": host.strip("[]"), "Port": int(port)}
    return {"Address": value, "Port": 0}


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@register
class ServicesDeregister(Command):
    name = "services deregister"
    synopsis = "Deregister services with the local agent"
    usage = """
Usage: consul services deregister [options] [FILE...]

  Deregister one or more services that were previously registered with
  the local agent.

      $ consul services deregister web.json
      $ consul services deregister -id=web

  The -id flag may be used to deregister a single service by ID. If
  arguments are given, they should be files with service definitions to
  deregister; each service is deregistered by its ID, or its name when it
  has no ID.

  Additional flags and more advanced use cases are detailed below.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.string("id", "", "ID to delete. This must not be set if arguments are given.")

    def run(self, ctx: Context) -> int:
        if not ctx.args and not ctx["id"]:
            raise Fail("Service deregistration requires at least one argument or -id.")
        if ctx.args and ctx["id"]:
            raise Fail("Service deregistration requires arguments or -id, not both.")
        svcs = services_from_files(ctx.args) if ctx.args else [{"ID": ctx["id"]}]
        client = ctx.client
        for svc in svcs:
            sid = svc.get("ID") or svc.get("Name") or ""
            if not sid:
                continue
            try:
                client.put("/v1/agent/service/deregister/" + quote(sid, safe=""), None, dc=False)
            except APIError as exc:
                raise Fail(f"Error deregistering service {_go_quote(sid)}: {exc}") from None
            ctx.out(f"Deregistered service: {sid}")
        return 0
