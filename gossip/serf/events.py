"""What the Serf core tells the application: member events, user events, queries and their
answers, name conflicts. All frozen dataclasses; ``SerfEvent`` is their union.

Member statuses use Serf's numbering (Consul's /v1/agent/members shows these numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from gossip.messages import Address


class MemberStatus(IntEnum):
    """A member's status as Serf sees it. ONLY APPEND."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2  # a graceful leave started (leave intent seen), memberlist not yet told
    LEFT = 3  # left gracefully
    FAILED = 4  # memberlist declared it dead without a leave


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    addr: Address
    tags: Mapping[str, str] = field(hash=False)
    status: MemberStatus


class MemberEventKind(StrEnum):
    JOIN = "member-join"
    LEAVE = "member-leave"
    FAILED = "member-failed"
    UPDATE = "member-update"
    REAP = "member-reap"


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """Members joined, left, failed, changed tags or were reaped (forgotten)."""

    kind: MemberEventKind
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class MemberConflict:
    """member-conflict: two members claim ``name``. ``known_addr`` is the address we hold for
    it, ``other_addr`` the claimant's. ``local`` means the name is ours: Serf would then ask
    the cluster (a conflict query) which address it believes and shut down if it lost; this
    core does not resolve it, the application should treat it as an error (Consul refuses
    to run with a duplicate node name) and may stop the agent."""

    name: str
    known_addr: Address | None
    other_addr: Address
    local: bool


@dataclass(frozen=True, slots=True)
class UserEvent:
    name: str
    payload: bytes
    ltime: int
    coalesce: bool


@dataclass(frozen=True, slots=True, order=True)
class QueryId:
    """Identifies a query cluster-wide: its query-clock time and a random id."""

    ltime: int
    id: int


@dataclass(frozen=True, slots=True)
class Query:
    """A query this member should answer (it matched the filters): call
    ``Serf.respond(id, payload, now)`` before ``deadline`` (same clock as ``now``)."""

    id: QueryId
    name: str
    payload: bytes
    ltime: int
    source: str
    deadline: float


@dataclass(frozen=True, slots=True)
class QueryAck:
    """``source`` received our query ``id`` (it was requested with ``request_ack``)."""

    id: QueryId
    source: str


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """``source`` answered our query ``id``."""

    id: QueryId
    source: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryDone:
    """Our query ``id`` reached its deadline; later acks and responses are dropped."""

    id: QueryId
    acks: tuple[str, ...]
    responses: tuple[str, ...]


SerfEvent = MemberEvent | MemberConflict | UserEvent | Query | QueryAck | QueryResponse | QueryDone
