"""Gossip settings, with memberlist's defaults for LAN, WAN and local networks.

All durations are seconds (floats). ``validate()`` runs at construction; errors name the
setting. The three factories carry the exact default tables of hashicorp/memberlist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gossip.messages import Address


class GossipConfigError(ValueError):
    """A setting is out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    name: str
    advertise: Address = ("127.0.0.1", 7946)
    probe_interval: float = 1.0  # s between failure-detection probes
    probe_timeout: float = 0.5  # s to wait for a direct ack (~ the network's 99th pct RTT)
    gossip_interval: float = 0.2  # s between gossip rounds
    gossip_nodes: int = 3  # random members each gossip round reaches
    suspicion_mult: int = 4  # suspicion timeout = mult * max(1, log10 n) * probe_interval
    suspicion_max_timeout_mult: int = 6  # upper bound = this * the suspicion timeout
    retransmit_mult: int = 4  # a broadcast is sent mult * ceil(log10(n + 1)) times
    indirect_checks: int = 3  # members asked to ping a target that missed its ack
    push_pull_interval: float = 30.0  # s between full-state syncs (scaled up for n > 32)
    tcp_timeout: float = 10.0  # s for stream operations (push-pull, TCP ping)
    gossip_to_the_dead_time: float = 30.0  # s we keep gossiping to, then forget, dead members
    awareness_max_multiplier: int = 8  # probe interval/timeout scale up to this when unhealthy
    packet_size: int = 1400  # bytes of one UDP packet (memberlist's UDPBufferSize)
    lifeguard: bool = True  # local health awareness, dynamic suspicion, buddy system
    tcp_fallback_ping: bool = True  # also try a TCP ping when a direct ping got no ack

    def __post_init__(self) -> None:
        positive_floats = (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "push_pull_interval",
            "tcp_timeout",
            "gossip_to_the_dead_time",
        )
        for name in positive_floats:
            if not getattr(self, name) > 0:
                raise GossipConfigError(f"gossip: {name}={getattr(self, name)!r} must be > 0")
        positive_ints = (
            "gossip_nodes",
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "retransmit_mult",
            "awareness_max_multiplier",
        )
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise GossipConfigError(f"gossip: {name}={getattr(self, name)!r} must be >= 1")
        if self.indirect_checks < 0:
            raise GossipConfigError(
                f"gossip: indirect_checks={self.indirect_checks!r} must be >= 0"
            )
        if self.probe_timeout > self.probe_interval:
            raise GossipConfigError(
                f"gossip: probe_timeout={self.probe_timeout} must not exceed "
                f"probe_interval={self.probe_interval}"
            )
        if not 576 <= self.packet_size <= 65_000:
            raise GossipConfigError(
                f"gossip: packet_size={self.packet_size!r} must be between 576 and 65000 bytes"
            )
        if not self.name or len(self.name.encode()) > 512:
            raise GossipConfigError("gossip: name must be 1..512 bytes")

    def replace(self, **changes: object) -> GossipConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def default_lan_config(name: str, advertise: Address = ("127.0.0.1", 7946)) -> GossipConfig:
    """memberlist's DefaultLANConfig: a local network, all members close."""
    return GossipConfig(name=name, advertise=advertise)


def default_wan_config(name: str, advertise: Address = ("127.0.0.1", 8302)) -> GossipConfig:
    """memberlist's DefaultWANConfig: higher latency, more loss."""
    return GossipConfig(
        name=name,
        advertise=advertise,
        probe_interval=5.0,
        probe_timeout=3.0,
        gossip_interval=0.5,
        gossip_nodes=4,
        suspicion_mult=6,
        push_pull_interval=60.0,
        tcp_timeout=30.0,
        gossip_to_the_dead_time=60.0,
    )


def default_local_config(name: str, advertise: Address = ("127.0.0.1", 7946)) -> GossipConfig:
    """memberlist's DefaultLocalConfig: loopback or one host, fast timers."""
    return GossipConfig(
        name=name,
        advertise=advertise,
        probe_interval=1.0,
        probe_timeout=0.2,
        gossip_interval=0.1,
        suspicion_mult=3,
        retransmit_mult=2,
        indirect_checks=1,
        push_pull_interval=15.0,
        tcp_timeout=1.0,
        gossip_to_the_dead_time=15.0,
    )
