"""The agent's LAN serf: a ``gossip`` Serf node carrying Consul's member tags.

Tags (Consul's, so tools that read them keep working): ``role`` (``consul`` for servers,
``node`` for clients), ``dc``, ``segment``, ``id`` (node ID), ``vsn``/``vsn_min``/``vsn_max``,
``build``, ``raft_vsn``; servers add ``port`` (server RPC), ``expect`` (bootstrap_expect, when
set), ``bootstrap`` (``1`` with -bootstrap/-dev), ``wan_join_port``. Proconsul adds ``rs``
(``1`` once this server has Raft state): a server with ``-bootstrap-expect`` never founds a
cluster when it sees a server that already has state; it waits to be added by that cluster's
leader instead.

``ServerInfo.from_member`` reads a member's tags back (None for non-servers or bad tags).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from gossip.config import GossipConfig, default_lan_config, default_local_config
from gossip.keyring import Keyring
from gossip.messages import Address
from gossip.node import GossipNode, MemberInfo
from gossip.serf import Serf, SerfConfig
from gossip.transport import GossipTransport, NetTransport
from server.config.runtime import RuntimeConfig

__all__ = ["CONSUL_VERSION", "ServerInfo", "build_tags", "start_lan_serf", "start_serf_node"]

log = structlog.get_logger("serf")

#: The Consul version whose API and tags we implement (agent/self reports it too).
CONSUL_VERSION = "1.22.0"


def build_tags(config: RuntimeConfig, node_id: str, *, has_state: bool) -> dict[str, str]:
    tags = {
        "role": "consul" if config.server else "node",
        "dc": config.datacenter,
        "segment": "",
        "id": node_id,
        "vsn": "2",
        "vsn_min": "2",
        "vsn_max": "3",
        "build": f"{CONSUL_VERSION}:proconsul",
    }
    if config.server:
        tags["port"] = str(config.server_port)
        tags["raft_vsn"] = "3"
        tags["wan_join_port"] = str(config.serf_wan_port)
        if config.bootstrap_expect:
            tags["expect"] = str(config.bootstrap_expect)
        if config.bootstrap or config.dev:
            tags["bootstrap"] = "1"
        if has_state:
            tags["rs"] = "1"
    return tags


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A server as its serf tags describe it."""

    name: str
    node_id: str
    datacenter: str
    rpc_address: str
    expect: int
    has_state: bool
    status: str

    @classmethod
    def from_member(cls, member: MemberInfo) -> ServerInfo | None:
        tags: Mapping[str, str] = member.tags
        if tags.get("role") != "consul":
            return None
        try:
            port = int(tags.get("port", ""))
            expect = int(tags.get("expect", "0") or 0)
        except ValueError:
            return None
        host = member.addr[0]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(
            name=member.name,
            node_id=tags.get("id", "") or member.name,
            datacenter=tags.get("dc", ""),
            rpc_address=address,
            expect=expect,
            has_state=tags.get("rs") == "1",
            status=member.status,
        )


async def start_lan_serf(
    config: RuntimeConfig,
    tags: dict[str, str],
    on_event: Callable[[object], None],
) -> GossipNode[Serf]:
    """Bind and start the LAN serf. Raises ``TransportError`` if it cannot listen. (No serf
    snapshot yet: a restarted agent rejoins through ``retry_join``.)"""
    bind_host = config.bind_addr or "0.0.0.0"
    transport = NetTransport((bind_host, config.serf_lan_port))
    bound = await transport.bind()
    advertise: Address = (config.advertise, bound[1])
    factory = default_local_config if config.dev else default_lan_config
    node = await start_serf_node(
        config, factory(config.node_name, advertise), transport, tags, on_event
    )
    log.info(
        "serf_lan_started", addr=f"{advertise[0]}:{advertise[1]}", encrypted=bool(config.encrypt)
    )
    return node


async def start_serf_node(
    config: RuntimeConfig,
    gossip_config: GossipConfig,
    transport: GossipTransport,
    tags: dict[str, str],
    on_event: Callable[[object], None],
) -> GossipNode[Serf]:
    """A started Serf node on ``transport`` with the agent's keyring (``encrypt``) and
    ``rejoin_after_leave``; the LAN and WAN pools differ only in their gossip config and
    transport."""
    serf = Serf(
        SerfConfig(rejoin_after_leave=config.rejoin_after_leave),
        gossip_config,
        random.Random(),
        time.monotonic(),
        tags,
    )
    keyring = Keyring.from_b64(config.encrypt) if config.encrypt else None
    node: GossipNode[Serf] = GossipNode(serf, transport, keyring, on_event=on_event)
    await node.start()
    return node
