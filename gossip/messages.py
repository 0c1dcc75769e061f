"""Gossip wire messages (SWIM + Lifeguard), as plain frozen dataclasses.

The core consumes and produces these; ``gossip.wire`` turns them into bytes and back
(never pickle). Addresses are ``(host, port)`` tuples. Wire enums are append-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

Address = tuple[str, int]


class MemberState(IntEnum):
    """Memberlist's view of a member. ONLY APPEND."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3  # dead by its own announcement (a graceful leave)


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # the node name the sender means to reach (guards against address reuse)
    source: str
    source_addr: Address


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to ping ``target`` for us and relay the ack (and nack on timeout)."""

    seq: int
    target: str
    target_addr: Address
    source: str
    source_addr: Address
    nack: bool = True


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: Address
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    source: str  # who suspects it


@dataclass(frozen=True, slots=True)
class Dead:
    incarnation: int
    node: str
    source: str  # source == node means a graceful leave


@dataclass(frozen=True, slots=True)
class UserMsg:
    """An opaque broadcast of the layer above (Serf), piggybacked like the others."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PushNodeState:
    name: str
    addr: Address
    meta: bytes
    incarnation: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state exchanged over a stream: on join and periodically (anti-entropy)."""

    join: bool
    nodes: tuple[PushNodeState, ...]
    user_state: bytes = b""


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | UserMsg | PushPull
