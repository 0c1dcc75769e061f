"""A deterministic in-memory harness for tests of the sans-I/O Raft core (like etcd's rafttest).

No time, no sockets: messages sit in an outbox until the test delivers them; each node's
Ready is "persisted" into a plain dict, following the persist -> send -> apply -> advance
contract exactly as the driver does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from raft.core.config import CoreConfig
from raft.core.raft import RaftCore
from raft.core.types import (
    Entry,
    EntryKind,
    HardState,
    InitialState,
    Membership,
    Message,
    NodeId,
    ReadState,
    Ready,
    Role,
    Server,
    SnapshotMeta,
    bootstrap_entry,
)


@dataclass
class Durable:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    entries: list[Entry] = field(default_factory=list)

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def initial(self) -> InitialState:
        return InitialState(
            self.hard_state,
            self.snapshot,
            tuple(e for e in self.entries if e.index > self.snapshot.index),
        )


class Harness:
    def __init__(
        self,
        n: int = 3,
        config: CoreConfig | None = None,
        seed: int = 1,
        voters: Iterable[NodeId] | None = None,
    ) -> None:
        self.config = config or CoreConfig(election_ticks=10, heartbeat_ticks=1, lease_ticks=5)
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        founding = list(voters) if voters is not None else self.ids
        membership = Membership(tuple(Server(i, f"addr-{i}") for i in founding))
        self.rng = random.Random(seed)
        self.disks: dict[NodeId, Durable] = {}
        self.nodes: dict[NodeId, RaftCore] = {}
        self.applied: dict[NodeId, list[Entry]] = {i: [] for i in self.ids}
        self.reads: dict[NodeId, list[ReadState]] = {i: [] for i in self.ids}
        self.restored: dict[NodeId, list[SnapshotMeta]] = {i: [] for i in self.ids}
        self.outbox: list[Message] = []
        self.sent: list[Message] = []
        self.readies: dict[NodeId, list[Ready]] = {i: [] for i in self.ids}
        self.cut: set[tuple[NodeId, NodeId]] = set()
        for i in self.ids:
            disk = Durable()
            if i in founding:
                disk.hard_state = HardState(1, None)
                disk.entries = [bootstrap_entry(membership)]
            self.disks[i] = disk
            self.start(i)

    def start(self, node_id: NodeId, just_restarted: bool = False) -> RaftCore:
        """(Re)start a node from its durable state. Unless ``just_restarted``, the node's
        clock is moved past its first election timeout, as if it had been up a while
        (a node that just started refuses votes for one election timeout)."""
        core = RaftCore(
            node_id, self.config, random.Random(self.rng.random()), self.disks[node_id].initial()
        )
        if not just_restarted:
            core.now = self.config.election_ticks
        self.nodes[node_id] = core
        return core

    def process(self, node_id: NodeId) -> None:
        core = self.nodes[node_id]
        while core.has_ready():
            rd = core.ready()
            self.readies[node_id].append(rd)
            self.disks[node_id].save(rd)
            for m in rd.messages:
                self.sent.append(m)
                if (m.src, m.dst) not in self.cut:
                    self.outbox.append(m)
            if rd.snapshot is not None:
                self.restored[node_id].append(rd.snapshot)
            self.applied[node_id].extend(e for e in rd.committed if e.kind == EntryKind.NORMAL)
            self.reads[node_id].extend(rd.read_states)
            core.advance(rd)

    def process_all(self) -> None:
        for i in self.ids:
            self.process(i)

    def deliver(self, keep: Callable[[Message], bool] | None = None) -> int:
        """Deliver every queued message (optionally only those ``keep`` accepts)."""
        batch, self.outbox = self.outbox, []
        n = 0
        for m in batch:
            if keep is not None and not keep(m):
                continue
            if (m.src, m.dst) in self.cut or m.dst not in self.nodes:
                continue
            self.nodes[m.dst].step(m)
            n += 1
        self.process_all()
        return n

    def stabilize(self, rounds: int = 200) -> None:
        self.process_all()
        for _ in range(rounds):
            if not self.outbox:
                return
            self.deliver()
        raise AssertionError("did not stabilize")

    def tick(self, n: int = 1, nodes: Iterable[NodeId] | None = None) -> None:
        for _ in range(n):
            for i in nodes if nodes is not None else self.ids:
                self.nodes[i].tick()
            self.process_all()
            self.deliver()

    def isolate(self, node_id: NodeId) -> None:
        for other in self.ids:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()

    def elect(self, node_id: NodeId) -> RaftCore:
        self.nodes[node_id].campaign()
        self.stabilize()
        assert self.nodes[node_id].role == Role.LEADER, self.nodes[node_id].role
        return self.nodes[node_id]

    def leaders(self) -> list[NodeId]:
        return [i for i, c in self.nodes.items() if c.role == Role.LEADER]

    def propose(self, node_id: NodeId, data: bytes) -> tuple[int, int]:
        out = self.nodes[node_id].propose(data)
        self.process(node_id)
        return out
