"""The mesh gateway's settings, its listeners and its catalog registration (sans-I/O).

Invariants:

- :func:`parse_hostport` accepts ``host:port`` and ``[v6]:port`` with a port of 0..65535
  (0 only where ``allow_zero``) and raises ``ValueError`` with a one-line message otherwise.
- :func:`listen_addresses` returns one listener per distinct address (Consul's Envoy binds the
  LAN address and, when it differs, the WAN address; ``-bind-address name=ip:port`` pairs
  replace both). A specific address whose port is already covered by a wildcard listener
  (``0.0.0.0``/``::``) is dropped, because binding it would fail with EADDRINUSE and the
  wildcard already receives its connections.
- :func:`registration` builds exactly the body of ``PUT /v1/agent/service/register`` Consul's
  ``connect envoy -gateway=mesh -register`` sends, minus Envoy's proxy config: kind
  ``mesh-gateway``, Name = the service name, ID = ``-proxy-id`` (default: the service name, as
  in Consul, so two gateways registering through one agent need distinct ``-proxy-id``s or
  names), the LAN address as Address/Port, ``lan`` and
  ``wan`` tagged addresses, the federation meta when exposing servers, and a TCP check on the
  LAN address every 10 s.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.federation.locator import FEDERATION_META_KEY
from server.gateway.clienthello import DEFAULT_MAX_BYTES
from server.gateway.routes import Address

if TYPE_CHECKING:
    from server.clicmd.api import Client

__all__ = [
    "DEFAULT_ADMIN_BIND",
    "DEFAULT_SERVICE",
    "DataPath",
    "GatewayConfig",
    "listen_addresses",
    "parse_hostport",
    "registration",
]

DEFAULT_SERVICE = "mesh-gateway"
DEFAULT_ADMIN_BIND = "127.0.0.1:19000"  # Envoy's admin port, as Consul configures it
DEFAULT_PORT = 8443  # Consul's default mesh-gateway port
CHECK_NAME = "Mesh Gateway Listening"


class DataPath(enum.StrEnum):
    PROTOCOL = "protocol"  # an asyncio Protocol pair
    SPLICE = "splice"  # os.splice through a pipe per direction


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway process needs; the CLI fills it from flags."""

    service: str = DEFAULT_SERVICE
    proxy_id: str = ""  # the registration's service ID; "": the service name
    lan: Address | None = None  # None: the agent's LAN advertise address, port 8443
    wan: Address | None = None  # None: the agent's WAN advertise address, the LAN port
    expose_servers: bool = False
    register: bool = False
    bind_addresses: Mapping[str, Address] = field(default_factory=dict)
    admin_bind: Address = field(default_factory=lambda: Address("127.0.0.1", 19000))
    agent: Client | None = None  # the HTTP flags, resolved; None: http://127.0.0.1:8500
    domain: str = "consul"
    trust_domain: str | None = None
    data_path: DataPath = DataPath.SPLICE
    idle_timeout: float = 3600.0  # Envoy's tcp_proxy default: 1 h
    max_connections: int = 10000
    hello_timeout: float = 5.0
    hello_max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout: float = 5.0
    deregister_critical_after: str = "6h"

    @property
    def service_id(self) -> str:
        """The ID the gateway registers (and deregisters) itself under."""
        return self.proxy_id or self.service


def parse_hostport(text: str, *, allow_zero: bool = False, what: str = "address") -> Address:
    """``host:port`` or ``[v6]:port`` → :class:`Address`; ``ValueError`` otherwise."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"invalid {what} {text!r}: expected [ip]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"invalid {what} {text!r}: expected host:port")
    if not host:
        raise ValueError(f"invalid {what} {text!r}: missing host")
    if not port_text.isdigit():
        raise ValueError(f"invalid {what} {text!r}: port is not a number")
    port = int(port_text)
    if port > 65535 or (port == 0 and not allow_zero):
        raise ValueError(f"invalid {what} {text!r}: port out of range")
    return Address(host, port)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def listen_addresses(
    lan: Address, wan: Address | None, bind_addresses: Mapping[str, Address]
) -> list[tuple[str, Address]]:
    """The ``(name, address)`` pairs to listen on (see the module invariants)."""
    wanted: list[tuple[str, Address]] = (
        sorted(bind_addresses.items())
        if bind_addresses
        else [("lan", lan)] + ([("wan", wan)] if wan is not None else [])
    )
    wild_ports = {a.port for _, a in wanted if _is_wildcard(a.host)}
    out: list[tuple[str, Address]] = []
    seen: set[Address] = set()
    for name, addr in wanted:
        if addr in seen or (addr.port in wild_ports and not _is_wildcard(addr.host)):
            continue
        seen.add(addr)
        out.append((name, addr))
    return out


def _tagged(addr: Address) -> dict[str, Any]:
    return {"Address": addr.host, "Port": addr.port}


def registration(cfg: GatewayConfig, lan: Address, wan: Address) -> dict[str, Any]:
    """The ``PUT /v1/agent/service/register`` body for this gateway."""
    body: dict[str, Any] = {
        "Kind": "mesh-gateway",
        "ID": cfg.service_id,
        "Name": cfg.service,
        "Address": lan.host,
        "Port": lan.port,
        "TaggedAddresses": {"lan": _tagged(lan), "wan": _tagged(wan)},
        "Check": {
            "Name": CHECK_NAME,
            "TCP": str(lan),
            "Interval": "10s",
            "DeregisterCriticalServiceAfter": cfg.deregister_critical_after,
        },
    }
    if cfg.expose_servers:
        body["Meta"] = {FEDERATION_META_KEY: "1"}
    return body
