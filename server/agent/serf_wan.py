"""The server's WAN serf: the pool of every datacenter's servers (Consul's serf WAN, port 8302).

- Member names are ``<node>.<dc>`` (Consul's), tags are the LAN server tags (``role=consul``,
  ``dc``, ``port``, ``id`` …), so ``server.federation.router`` reads a remote server's RPC
  address from its WAN address and ``port`` tag.
- Timing: memberlist's WAN defaults (``gossip.config.default_wan_config``), the fast local
  ones with ``-dev``, then Consul's ``gossip_wan { probe_interval probe_timeout
  gossip_interval gossip_nodes suspicion_mult retransmit_mult }`` overrides.
- The transport is a ``NetTransport`` on ``serf_wan_port``, or (federation through mesh
  gateways) a ``server.federation.wan_transport.WanFedTransport`` that wraps one; with it the
  TCP fallback ping is off (Consul disables it for wanfed, where other datacenters are only
  reachable through gateways).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gossip.config import GossipConfig, default_local_config, default_wan_config
from gossip.messages import Address
from gossip.node import GossipNode
from gossip.serf import Serf
from gossip.transport import GossipTransport, NetTransport
from server.agent.serf_lan import start_serf_node
from server.config.runtime import RuntimeConfig
from server.state.sessions import parse_duration

__all__ = ["gossip_overrides", "start_wan_serf", "wan_name"]

log = structlog.get_logger("serf")

_DURATIONS = ("probe_interval", "probe_timeout", "gossip_interval")
_INTS = ("gossip_nodes", "suspicion_mult", "retransmit_mult")


def wan_name(config: RuntimeConfig) -> str:
    return f"{config.node_name}.{config.datacenter}"


def gossip_overrides(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Consul's ``gossip_wan`` block as GossipConfig fields (durations in seconds)."""
    out: dict[str, Any] = {}
    for key in _DURATIONS:
        if key in raw:
            value = raw[key]
            out[key] = parse_duration(value) / 1e9 if isinstance(value, str) else float(value)
    for key in _INTS:
        if key in raw:
            out[key] = int(raw[key])
    return out


def wan_gossip_config(config: RuntimeConfig, advertise: Address, *, wanfed: bool) -> GossipConfig:
    factory = default_local_config if config.dev else default_wan_config
    gossip = factory(wan_name(config), advertise)
    changes = gossip_overrides(config.raw.get("gossip_wan") or {})
    if wanfed:
        changes["tcp_fallback_ping"] = False
    return gossip.replace(**changes) if changes else gossip


async def start_wan_serf(
    config: RuntimeConfig,
    tags: dict[str, str],
    on_event: Callable[[object], None],
    transport: GossipTransport | None = None,
    *,
    advertise: Address | None = None,
) -> GossipNode[Serf]:
    """Start the WAN serf on ``transport`` (default: a NetTransport on serf_wan_port).
    Raises ``TransportError`` if it cannot listen."""
    if transport is None:
        net = NetTransport((config.bind_addr or "0.0.0.0", config.serf_wan_port))
        bound = await net.bind()
        transport = net
        advertise = advertise or (config.advertise_addr_wan or config.advertise, bound[1])
    assert advertise is not None
    gossip = wan_gossip_config(config, advertise, wanfed=not isinstance(transport, NetTransport))
    node = await start_serf_node(config, gossip, transport, tags, on_event)
    log.info("serf_wan_started", name=gossip.name, addr=f"{advertise[0]}:{advertise[1]}")
    return node
