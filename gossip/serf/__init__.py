"""Serf on top of memberlist, sans-I/O: member status and tags, Lamport clocks, user events,
queries, reconnect and reap, snapshots, name conflicts. See ``gossip.serf.core``."""

from gossip.serf.config import SerfConfig, SerfConfigError, default_serf_config
from gossip.serf.core import Serf, SerfError, SerfOutput, SerfState, SerfStats
from gossip.serf.events import (
    Member,
    MemberConflict,
    MemberEvent,
    MemberEventKind,
    MemberStatus,
    Query,
    QueryAck,
    QueryDone,
    QueryId,
    QueryResponse,
    SerfEvent,
    UserEvent,
)
from gossip.serf.lamport import LamportClock
from gossip.serf.messages import SerfDecodeError, SerfEncodeError
from gossip.serf.snapshot import (
    SnapshotAlive,
    SnapshotClocks,
    SnapshotLeave,
    SnapshotNotAlive,
    SnapshotRecord,
    SnapshotState,
)

__all__ = [
    "LamportClock",
    "Member",
    "MemberConflict",
    "MemberEvent",
    "MemberEventKind",
    "MemberStatus",
    "Query",
    "QueryAck",
    "QueryDone",
    "QueryId",
    "QueryResponse",
    "Serf",
    "SerfConfig",
    "SerfConfigError",
    "SerfDecodeError",
    "SerfEncodeError",
    "SerfError",
    "SerfEvent",
    "SerfOutput",
    "SerfState",
    "SerfStats",
    "SnapshotAlive",
    "SnapshotClocks",
    "SnapshotLeave",
    "SnapshotNotAlive",
    "SnapshotRecord",
    "SnapshotState",
    "UserEvent",
    "default_serf_config",
]
