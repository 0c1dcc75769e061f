"""``connect envoy -gateway=mesh`` and ``connect mesh-gateway``: run the built-in mesh gateway
(``server.gateway``) instead of Envoy.

Consul's ``connect envoy`` flags for gateways are accepted with Consul's meaning: ``-gateway``
(only ``mesh``), ``-register``, ``-service``, ``-address``, ``-wan-address``,
``-expose-servers``, ``-admin-bind``, ``-bind-address name=ip:port`` (repeatable),
``-deregister-after-critical``, ``-proxy-id`` (with ``-register``: the registration's service
ID, default the service name, as in Consul; without it the built-in gateway reads no
registration, so it has no effect), the HTTP flags (``-http-addr``, ``-token``, ...). Flags
that only make sense for Envoy (``-envoy-binary``, ``-envoy-version``, ``-grpc-addr``,
``-admin-access-log-path``, ``-no-central-config``, ``-omit-deprecated-tags``) are accepted and
ignored; ``-bootstrap`` and ``-sidecar-for`` are refused (no Envoy, no sidecars here).

Our own flags: ``-data-path protocol|splice``, ``-idle-timeout``, ``-max-connections``,
``-hello-timeout``, ``-connect-timeout``, ``-domain``, ``-trust-domain``, ``-log-level``.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from server.clicmd.api import APIError, client_from_flags
from server.clicmd.base import Command, Context, Fail, register
from server.clicmd.flags import FlagSet
from server.gateway.config import (
    DEFAULT_ADMIN_BIND,
    DEFAULT_SERVICE,
    DataPath,
    GatewayConfig,
    parse_hostport,
)
from server.gateway.routes import Address

__all__ = ["ConnectEnvoy", "ConnectMeshGateway", "config_from_flags"]

IGNORED = (
    "envoy-binary",
    "envoy-version",
    "grpc-addr",
    "grpc-ca-file",
    "admin-access-log-path",
)
IGNORED_BOOLS = ("no-central-config", "omit-deprecated-tags")


def _flags(fs: FlagSet, with_gateway: bool) -> None:
    if with_gateway:
        fs.string("gateway", "", "The type of gateway to register. Only \"mesh\" is supported by the built-in gateway.")  # fmt: skip
    fs.boolean("register", False, "Register a new gateway service before configuring and starting the gateway.")  # fmt: skip
    fs.string("service", DEFAULT_SERVICE, "Service name to use for the registration.")
    fs.string("address", "", "LAN address to advertise in the gateway service registration (ip:port); also the address the gateway listens on. Default: the agent's LAN address, port 8443.")  # fmt: skip
    fs.string("wan-address", "", "WAN address to advertise in the gateway service registration (ip:port). Default: the agent's WAN address with the LAN port.")  # fmt: skip
    fs.boolean("expose-servers", False, "Expose the servers for WAN federation via this mesh gateway.")  # fmt: skip
    fs.string("admin-bind", DEFAULT_ADMIN_BIND, "The address:port to start the admin (metrics) server on: /stats, /metrics, /ready. Port 0 picks a free port.")  # fmt: skip
    fs.mapping("bind-address", "Bind address to use instead of the default binding rules given as `<name>=<ip>:<port>` pairs. This flag may be specified multiple times.")  # fmt: skip
    fs.string("deregister-after-critical", "6h", "The amount of time the gateway service health check can be failing before being deregistered.")  # fmt: skip
    fs.string("proxy-id", "", "The gateway's service ID on the local agent: with -register, the ID it registers under (default: the -service name).")  # fmt: skip
    fs.string("sidecar-for", "", "Not supported: the built-in gateway runs mesh gateways only.")
    fs.boolean("bootstrap", False, "Not supported: there is no Envoy bootstrap to generate.")
    for name in IGNORED:
        fs.string(name, "", "Accepted for compatibility with Consul; ignored (no Envoy).")
    for name in IGNORED_BOOLS:
        fs.boolean(name, False, "Accepted for compatibility with Consul; ignored (no Envoy).")
    fs.string("data-path", DataPath.SPLICE.value, "How bytes are copied after routing: \"splice\" (os.splice through pipes) or \"protocol\" (an asyncio Protocol pair).")  # fmt: skip
    fs.duration("idle-timeout", 3600.0, "Close a connection idle for this long (0: never).")
    fs.integer("max-connections", 10000, "Connections open at once; beyond, new ones are closed.")
    fs.duration("hello-timeout", 5.0, "Time allowed for a client to send its TLS ClientHello.")
    fs.duration("connect-timeout", 5.0, "Time allowed for each upstream dial.")
    fs.string("domain", "consul", "The agents' DNS domain (server names are server.<dc>.<domain>).")  # fmt: skip
    fs.string("trust-domain", "", "The Connect trust domain; when set, <svc>.<ns>.<dc>.internal.<trust-domain> names are routed.")  # fmt: skip
    fs.string("log-level", "info", "Log level: trace, debug, info, warn, error.")


def _address(ctx: Context, flag: str, *, allow_zero: bool = False) -> Address:
    try:
        return parse_hostport(ctx[flag], allow_zero=allow_zero, what=f"-{flag}")
    except ValueError as exc:
        raise Fail(str(exc)) from None


def config_from_flags(ctx: Context, gateway: str) -> GatewayConfig:
    """Validate the flags (Consul's rules, one-line refusals) and build the config."""
    if ctx["sidecar-for"]:
        raise Fail("-sidecar-for is not supported: the built-in gateway runs mesh gateways only")  # fmt: skip
    if ctx["bootstrap"]:
        raise Fail("-bootstrap is not supported: the built-in gateway does not use Envoy")
    if not gateway:
        raise Fail("-gateway=mesh is required: the built-in gateway runs mesh gateways only")
    if gateway.lower() != "mesh":
        raise Fail(f'-gateway="{gateway}" is not supported: the built-in gateway runs mesh gateways only (-gateway=mesh)')  # fmt: skip
    try:
        data_path = DataPath(ctx["data-path"])
    except ValueError:
        raise Fail(f'-data-path must be "splice" or "protocol", not "{ctx["data-path"]}"') from None
    if ctx["max-connections"] < 1:
        raise Fail("-max-connections must be at least 1")
    if not ctx["service"]:
        raise Fail("-service must not be empty")
    lan = _address(ctx, "address") if ctx["address"] else None
    wan = _address(ctx, "wan-address") if ctx["wan-address"] else None
    binds: dict[str, Address] = {}
    for name, value in dict(ctx["bind-address"]).items():
        try:
            binds[name] = parse_hostport(value, what=f"-bind-address {name}")
        except ValueError as exc:
            raise Fail(str(exc)) from None
    admin = _address(ctx, "admin-bind", allow_zero=True)
    try:
        api = client_from_flags(ctx.fs)
    except APIError as exc:
        raise Fail(f"Error: {exc}") from None
    return GatewayConfig(
        service=ctx["service"],
        proxy_id=ctx["proxy-id"],
        lan=lan,
        wan=wan,
        expose_servers=ctx["expose-servers"],
        register=ctx["register"],
        bind_addresses=binds,
        admin_bind=admin,
        agent=api,
        domain=ctx["domain"].rstrip(".") or "consul",
        trust_domain=ctx["trust-domain"] or None,
        data_path=data_path,
        idle_timeout=ctx["idle-timeout"],
        max_connections=ctx["max-connections"],
        hello_timeout=ctx["hello-timeout"],
        connect_timeout=ctx["connect-timeout"],
        deregister_critical_after=ctx["deregister-after-critical"],
    )


def _run(ctx: Context, gateway: str) -> int:
    cfg = config_from_flags(ctx, gateway)
    if ctx.args:
        ctx.err(f"==> Ignoring Envoy arguments: {' '.join(ctx.args)}")
    from server import logging as plog
    from server.gateway.aio.main import run_gateway

    try:
        plog.configure(ctx["log-level"])
    except ValueError as exc:
        raise Fail(str(exc)) from None
    return asyncio.run(run_gateway(cfg))


@register
class ConnectEnvoy(Command):
    name: ClassVar[str] = "connect envoy"
    synopsis: ClassVar[str] = "Runs or configures Envoy as a Connect proxy"
    http: ClassVar[str] = "client"
    usage: ClassVar[str] = """
Usage: consul connect envoy -gateway=mesh [options] [-- pass-through options]

  Runs Proconsul's built-in mesh gateway (an SNI router that never terminates TLS) where Consul
  would run Envoy. Only mesh gateways are supported.

  Run a mesh gateway that federates datacenters through it:

    $ consul connect envoy -gateway=mesh -register -expose-servers \\
        -service mesh-gateway -address 10.0.0.5:8443 -wan-address 203.0.113.5:8443
"""

    def setup(self, fs: FlagSet) -> None:
        _flags(fs, with_gateway=True)

    def run(self, ctx: Context) -> int:
        return _run(ctx, ctx["gateway"])


@register
class ConnectMeshGateway(Command):
    name: ClassVar[str] = "connect mesh-gateway"
    synopsis: ClassVar[str] = "Runs the built-in mesh gateway"
    http: ClassVar[str] = "client"
    usage: ClassVar[str] = """
Usage: consul connect mesh-gateway [options]

  Runs Proconsul's built-in mesh gateway: the same as "connect envoy -gateway=mesh".

    $ consul connect mesh-gateway -register -expose-servers \\
        -address 10.0.0.5:8443 -wan-address 203.0.113.5:8443
"""

    def setup(self, fs: FlagSet) -> None:
        _flags(fs, with_gateway=False)

    def run(self, ctx: Context) -> int:
        return _run(ctx, "mesh")
