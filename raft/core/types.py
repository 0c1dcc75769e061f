"""Values that flow into and out of the sans-I/O Raft core.

Everything here is a frozen, slotted dataclass or an ``IntEnum``: plain data, cheap to copy,
safe to share between the core, the driver, storage and transports. Nothing here does I/O.

Wire enums are append-only: never renumber a member, only add new ones at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum

NodeId = str


class EntryKind(IntEnum):
    """What a log entry carries. ONLY APPEND."""

    NORMAL = 0  # application command, handed to the FSM
    NOOP = 1  # appended by every new leader so it can commit entries of its own term
    CONFIG = 2  # data is an encoded Membership; takes effect as soon as it is appended


class Suffrage(IntEnum):
    """How a server takes part in the cluster. ONLY APPEND."""

    VOTER = 0  # votes and counts towards commit quorums
    NONVOTER = 1  # receives the log, never votes, never counts
    STAGING = 2  # a non-voter the leader promotes to voter once it has caught up


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Server:
    id: NodeId
    address: str
    suffrage: Suffrage = Suffrage.VOTER


@dataclass(frozen=True, slots=True)
class Membership:
    """The set of servers, in a stable order. Invariant: ids are unique."""

    servers: tuple[Server, ...] = ()
    # Derived once (hot paths ask for them on every acknowledgement).
    voters: frozenset[NodeId] = field(init=False, repr=False, compare=False)
    ids: frozenset[NodeId] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [s.id for s in self.servers]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate server id in membership: {ids}")
        object.__setattr__(self, "ids", frozenset(ids))
        object.__setattr__(
            self, "voters", frozenset(s.id for s in self.servers if s.suffrage == Suffrage.VOTER)
        )

    def get(self, node_id: NodeId) -> Server | None:
        for s in self.servers:
            if s.id == node_id:
                return s
        return None

    def with_server(self, server: Server) -> Membership:
        """A copy with ``server`` added, or replacing the entry with the same id."""
        kept = tuple(s for s in self.servers if s.id != server.id)
        return Membership((*kept, server))

    def without(self, node_id: NodeId) -> Membership:
        return Membership(tuple(s for s in self.servers if s.id != node_id))

    def encode(self) -> bytes:
        return json.dumps(
            [[s.id, s.address, int(s.suffrage)] for s in self.servers], separators=(",", ":")
        ).encode()

    @staticmethod
    def decode(data: bytes) -> Membership:
        raw = json.loads(data.decode()) if data else []
        return Membership(tuple(Server(str(i), str(a), Suffrage(int(s))) for i, a, s in raw))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves the node."""

    term: int = 0
    voted_for: NodeId | None = None


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a snapshot: the FSM state after applying every entry up to ``index``."""

    index: int = 0
    term: int = 0
    membership: Membership = field(default_factory=Membership)


# --- messages -------------------------------------------------------------------------------
# Every message names its sender, its receiver and the sender's term.


@dataclass(frozen=True, slots=True)
class RequestVote:
    src: NodeId
    dst: NodeId
    term: int  # for a pre-vote: the term the candidate would campaign in
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False  # leadership transfer: voters ignore their leader lease


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    src: NodeId
    dst: NodeId
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    src: NodeId
    dst: NodeId
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    read_seq: int = 0  # heartbeat round that confirms pending ReadIndex requests; 0 = none


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    src: NodeId
    dst: NodeId
    term: int
    success: bool
    # success: the highest index known to match the leader's log.
    # failure: the follower's last log index (a hint for the leader).
    last_log_index: int
    conflict_index: int = 0  # failure: first index of conflict_term in the follower's log
    conflict_term: int = 0  # failure: term of the follower's entry at prev_log_index (0 = none)
    read_seq: int = 0  # echoes AppendEntries.read_seq


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Carries only the metadata; the driver and transport move the snapshot bytes."""

    src: NodeId
    dst: NodeId
    term: int
    meta: SnapshotMeta
    leader_commit: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    src: NodeId
    dst: NodeId
    term: int
    success: bool
    last_log_index: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the receiver campaigns at once, skipping pre-vote."""

    src: NodeId
    dst: NodeId
    term: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class CoreEvent:
    """Something worth a log line: ``name`` plus key/value details."""

    name: str
    details: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed linearizable read: serve request ``request_id`` once applied >= ``index``."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver. The contract, in this order:

    1. persist: if ``snapshot`` is set, store it and reset the log to it; delete stored entries
       with index >= ``entries[0].index`` and append ``entries``; write ``hard_state`` if set;
       then fsync once (group commit).
    2. send ``messages``.
    3. apply ``committed`` to the FSM in order (restore the FSM from ``snapshot`` first if set).
    4. call ``advance(ready)`` on the core.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: SnapshotMeta | None
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    # Observability: leader or role changed since the previous Ready.
    role: Role
    leader_id: NodeId | None
    term: int
    # Notable things that happened (elections, membership changes, snapshots): for logs.
    events: tuple[CoreEvent, ...] = ()

    def split_messages(self) -> tuple[list[Message], list[Message]]:
        """(messages that may leave before this Ready is persisted, those that must wait).

        When this Ready changes no term or vote, a leader's AppendEntries, InstallSnapshot
        and TimeoutNow, and pre-vote requests, depend on nothing in it: their term is already
        durable, and the leader counts its own log only up to what is durable. Sending
        them first overlaps the leader's fsync with its followers' (as etcd does). Responses
        and real vote requests must wait for the fsync.
        """
        early: list[Message] = []
        late: list[Message] = []
        if self.hard_state is not None:
            # A term or vote in this very Ready (e.g. a lone voter that campaigned and won in
            # one step) is not durable yet: nothing may leave before it is.
            return early, list(self.messages)
        for m in self.messages:
            if isinstance(m, AppendEntries | InstallSnapshot | TimeoutNow) or (
                isinstance(m, RequestVote) and m.pre_vote
            ):
                early.append(m)
            else:
                late.append(m)
        return early, late

    @property
    def must_sync(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None


@dataclass(frozen=True, slots=True)
class InitialState:
    """What the driver loads from durable storage when a node starts."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    entries: tuple[Entry, ...] = ()  # the log after snapshot.index, contiguous


def bootstrap_entry(membership: Membership) -> Entry:
    """The first log entry every founding server writes before its first start.

    All founding servers write the same entry (index 1, term 1), so their logs already agree.
    """
    return Entry(index=1, term=1, kind=EntryKind.CONFIG, data=membership.encode())


class RaftError(Exception):
    """Base class of errors raised to callers of the core."""


class NotLeader(RaftError):
    def __init__(self, leader_id: NodeId | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class LeadershipTransferInProgress(RaftError):
    def __init__(self) -> None:
        super().__init__("leadership transfer in progress")


class ConfigChangeInProgress(RaftError):
    def __init__(self) -> None:
        super().__init__("a membership change is already in progress")


class ConfigChangeRejected(RaftError):
    pass
