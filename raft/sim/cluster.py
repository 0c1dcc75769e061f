"""A whole Raft cluster in one process, driven by a seeded scheduler and a virtual clock.

Each simulated node runs the same cycle as the real asyncio driver (``raft.node``): step the
queued inputs, take a Ready, write it to its disk, wait for the fsync (the node is busy and
queues new inputs meanwhile), then send, apply and advance. The disk keeps written-but-not-
synced data apart, and a crash loses it. The network delays, drops, duplicates and reorders
messages and can be partitioned (symmetrically or one way).

Checks after every event: at most one leader per term; log matching; leader completeness;
every node applies the same entry at every index; and at the end a liveness phase (healed
network, every node up) must commit a new entry within a bounded time, and the clients'
history must be linearizable.

Everything random comes from one ``random.Random(seed)``: a seed replays exactly.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raft.core.config import CoreConfig
from raft.core.raft import RaftCore
from raft.core.types import (
    Entry,
    EntryKind,
    HardState,
    InitialState,
    InstallSnapshot,
    Membership,
    Message,
    NodeId,
    RaftError,
    Ready,
    RequestVoteResponse,
    Role,
    Server,
    SnapshotMeta,
    bootstrap_entry,
)
from raft.kv import KVStateMachine, encode_cas, encode_put
from raft.sim.lincheck import Operation, OpKind

TICK = 10  # virtual time units per Raft tick
BUGS = ("skip-vote-fsync", "no-prevote-lease")


class Violation(Exception):
    """A safety or liveness property failed."""


@dataclass
class Disk:
    """Durable state plus writes that were issued but not fsynced (lost on a crash)."""

    hard_state: HardState = field(default_factory=HardState)
    log: list[Entry] = field(default_factory=list)  # entries after snapshot.index
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    snapshot_files: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def write(self, rd: Ready, skip_vote: bool) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.log = []
        if rd.entries:
            first = rd.entries[0].index
            keep = first - self.snapshot.index - 1
            if keep < 0:
                raise Violation(f"disk: append at {first} below snapshot {self.snapshot.index}")
            del self.log[keep:]
            if self.log and self.log[-1].index != first - 1:
                raise Violation("disk: gap in log")
            if not self.log and first != self.snapshot.index + 1:
                raise Violation(f"disk: first entry {first} after snapshot {self.snapshot.index}")
            self.log.extend(rd.entries)
        if rd.hard_state is not None:
            if skip_vote:  # planted bug: the vote never reaches the disk
                self.hard_state = HardState(rd.hard_state.term, self.hard_state.voted_for)
            else:
                self.hard_state = rd.hard_state

    def compact(self, meta: SnapshotMeta, data: bytes, keep_from: int) -> None:
        self.snapshot_files[(meta.index, meta.term)] = data
        self.snapshot = meta
        self.log = [e for e in self.log if e.index > meta.index]
        del keep_from  # the sim keeps no trailing entries on disk (restart starts at the snap)

    def initial_state(self) -> InitialState:
        return InitialState(self.hard_state, self.snapshot, tuple(self.log))


@dataclass
class PendingOp:
    op_id: int
    client: int
    kind: OpKind
    key: str
    value: str | None
    expected: str | None
    call: int
    node: NodeId
    index: int = 0
    term: int = 0
    read_index: int = -1


class SimNode:
    def __init__(self, cluster: SimCluster, node_id: NodeId, disk: Disk) -> None:
        self.cluster = cluster
        self.id = node_id
        self.disk = disk
        self.up = False
        self.busy = False
        self.inbox: list[Callable[[], None]] = []
        self.core: RaftCore
        self.fsm = KVStateMachine()
        self.incarnation = 0
        self.waiting_writes: dict[tuple[int, int], PendingOp] = {}
        self.waiting_reads: dict[int, PendingOp] = {}
        self.reads_ready: list[PendingOp] = []
        self.snapshot_every = cluster.rng.randint(15, 80)
        self.completeness_checked_term = 0
        self.trailing = cluster.rng.randint(0, 10)

    def start(self) -> None:
        self.up = True
        self.busy = False
        self.inbox = []
        self.incarnation += 1
        state = self.disk.initial_state()
        self.core = RaftCore(
            self.id, self.cluster.core_config, random.Random(self.cluster.rng.random()), state
        )
        self.fsm = KVStateMachine()
        if state.snapshot.index:
            data = self.disk.snapshot_files[(state.snapshot.index, state.snapshot.term)]
            self.fsm.restore(data)
        self.cluster.checker.on_restart(self)

    def crash(self) -> None:
        self.up = False
        for op in (
            list(self.waiting_writes.values())
            + list(self.waiting_reads.values())
            + self.reads_ready
        ):
            self.cluster.finish(op, unknown=True, output=None)
        self.waiting_writes.clear()
        self.waiting_reads.clear()
        self.reads_ready = []

    def deliver(self, fn: Callable[[], None]) -> None:
        if not self.up:
            return
        self.inbox.append(fn)
        if not self.busy:
            self.run_cycle()

    def run_cycle(self) -> None:
        """Step queued inputs, then hand the Ready to the disk (the node waits on fsync)."""
        while self.up and not self.busy:
            inputs, self.inbox = self.inbox, []
            for fn in inputs:
                fn()
            self.cluster.checker.after_step(self)
            if not self.core.has_ready():
                return
            rd = self.core.ready()
            self.cluster.checker.on_ready(self, rd)
            early, late = rd.split_messages()
            for msg in early:  # as the driver does: these need nothing from this Ready
                self.cluster.network.send(self.id, msg)
            self.busy = True
            incarnation = self.incarnation
            delay = self.cluster.rng.randint(1, 8) if rd.must_sync else 0
            self.cluster.schedule(
                delay, functools.partial(self.finish_cycle, rd, late, incarnation)
            )

    def finish_cycle(self, rd: Ready, late: list[Message], incarnation: int) -> None:
        if not self.up or incarnation != self.incarnation:
            return  # crashed while the write was in flight: it never reached the disk
        self.disk.write(rd, self.cluster.bug == "skip-vote-fsync")
        voted = False
        for msg in late:
            if isinstance(msg, RequestVoteResponse) and msg.granted and not msg.pre_vote:
                self.cluster.checker.on_vote(self.id, msg.term, msg.dst)
                voted = True
            self.cluster.network.send(self.id, msg)
        if voted and self.cluster.buggify(0.2):
            # A targeted fault: power loss right after voting, back up almost at once.
            self.crash()
            self.cluster.stats["crashes"] += 1
            self.cluster.schedule(
                self.cluster.rng.randint(1, 2 * TICK), lambda: self.cluster.restart(self.id)
            )
            return
        if rd.snapshot is not None:
            self.fsm.restore(self.disk.snapshot_files[(rd.snapshot.index, rd.snapshot.term)])
            self.cluster.checker.on_restore(self, rd.snapshot)
        for entry in rd.committed:
            self.apply(entry)
        for rs in rd.read_states:
            op = self.waiting_reads.pop(rs.request_id, None)
            if op is not None:
                op.read_index = rs.index
                self.reads_ready.append(op)
        if rd.role != Role.LEADER:
            for op in self.waiting_reads.values():
                self.cluster.finish(op, unknown=False, output=None, failed=True)
            self.waiting_reads.clear()
            for op in self.reads_ready:
                self.cluster.finish(op, unknown=False, output=None, failed=True)
            self.reads_ready = []
        self.serve_reads()
        self.core.advance(rd)
        self.busy = False
        self.maybe_snapshot()
        if self.core.has_ready() or self.inbox:
            self.run_cycle()

    def apply(self, entry: Entry) -> None:
        self.cluster.checker.on_apply(self, entry)
        result = self.fsm.apply(entry.index, entry.data if entry.kind == EntryKind.NORMAL else b"")
        op = self.waiting_writes.pop((entry.index, entry.term), None)
        if op is not None:
            self.cluster.finish(op, unknown=False, output=result)
        # Any proposal waiting at this index with another term was overwritten: it failed.
        for key in [k for k in self.waiting_writes if k[0] == entry.index]:
            self.cluster.finish(
                self.waiting_writes.pop(key), unknown=False, output=None, failed=True
            )

    def serve_reads(self) -> None:
        still = []
        for op in self.reads_ready:
            if self.fsm.applied_index >= op.read_index:
                self.cluster.finish(op, unknown=False, output=self.fsm.get(op.key))
            else:
                still.append(op)
        self.reads_ready = still

    def maybe_snapshot(self) -> None:
        applied = self.core.log.applied
        if applied - self.core.log.snapshot.index < self.snapshot_every:
            return
        term = self.core.log.term(applied)
        if term is None:
            return
        meta = SnapshotMeta(applied, term, self.core.membership_at(applied))
        keep_from = self.core.compact(meta, self.trailing)
        self.disk.compact(meta, self.fsm.snapshot(), keep_from)


class Network:
    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.rng = cluster.rng
        self.blocked: set[tuple[NodeId, NodeId]] = set()  # (src, dst) pairs that drop
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.max_delay = 3 * TICK

    def send(self, src: NodeId, msg: Message) -> None:
        if (src, msg.dst) in self.blocked or self.rng.random() < self.drop_rate:
            return
        copies = 2 if self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.max_delay)
            if self.rng.random() < 0.02:
                delay *= 10  # a long tail
            self.cluster.schedule(delay, functools.partial(self.arrive, src, msg))

    def arrive(self, src: NodeId, msg: Message) -> None:
        if (src, msg.dst) in self.blocked:
            return
        node = self.cluster.nodes[msg.dst]
        if isinstance(msg, InstallSnapshot):
            data = self.cluster.nodes[src].disk.snapshot_files.get((msg.meta.index, msg.meta.term))
            if data is None:
                return  # the sender already replaced that snapshot: the transfer fails
            node.disk.snapshot_files[(msg.meta.index, msg.meta.term)] = data
        node.deliver(lambda: node.core.step(msg))

    def heal(self) -> None:
        self.blocked.clear()
        self.drop_rate = 0.0
        self.dup_rate = 0.0


class Checker:
    """Safety invariants, checked as the simulation runs."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.leaders: dict[int, tuple[NodeId, int]] = {}  # term -> (node, incarnation)
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.max_committed = 0
        self.appended: dict[tuple[int, int], tuple[bytes, int]] = {}  # (i,t) -> (data, prev t)
        self.last_applied: dict[NodeId, int] = {}
        self.votes: dict[tuple[NodeId, int], NodeId] = {}

    def fail(self, what: str) -> None:
        raise Violation(f"t={self.cluster.now}: {what}")

    def after_step(self, node: SimNode) -> None:
        core = node.core
        if core.role == Role.LEADER:
            me = (node.id, node.incarnation)
            holder = self.leaders.setdefault(core.term, me)
            if holder != me:
                self.fail(
                    f"two leaders in term {core.term}: {holder[0]} (incarnation "
                    f"{holder[1]}) and {node.id} (incarnation {node.incarnation})"
                )
            if node.completeness_checked_term != core.term:
                node.completeness_checked_term = core.term
                self.check_leader_completeness(node)

    def check_leader_completeness(self, node: SimNode) -> None:
        log = node.core.log
        for index in range(log.base_index + 1, self.max_committed + 1):
            term, _ = self.committed[index]
            if log.term(index) != term:
                self.fail(
                    f"leader {node.id} (term {node.core.term}) lacks committed entry "
                    f"{index} (term {term}); has {log.term(index)}"
                )
        base = log.base_index
        if 0 < base <= self.max_committed and self.committed[base][0] != log.base_term:
            self.fail(f"leader {node.id} snapshot base disagrees with committed entry")

    def on_ready(self, node: SimNode, rd: Ready) -> None:
        for e in rd.entries:
            prev_term = node.core.log.term(e.index - 1)
            if prev_term is None:
                continue
            key = (e.index, e.term)
            seen = self.appended.setdefault(key, (e.data, prev_term))
            if seen != (e.data, prev_term):
                self.fail(
                    f"log matching: {node.id} has entry {key} that differs from another "
                    f"node's entry with the same index and term"
                )

    def on_vote(self, voter: NodeId, term: int, candidate: NodeId) -> None:
        granted = self.votes.setdefault((voter, term), candidate)
        if granted != candidate:
            self.fail(f"{voter} voted twice in term {term}: for {granted} and {candidate}")

    def on_apply(self, node: SimNode, entry: Entry) -> None:
        last = self.last_applied.get(node.id, 0)
        if entry.index != last + 1:
            self.fail(f"{node.id} applied {entry.index} after {last}")
        self.last_applied[node.id] = entry.index
        record = self.committed.setdefault(entry.index, (entry.term, entry.data))
        if record != (entry.term, entry.data):
            self.fail(
                f"apply mismatch at {entry.index}: {node.id} applied term {entry.term}, "
                f"another node applied term {record[0]}"
            )
        if entry.index > self.max_committed:
            if entry.index != self.max_committed + 1:
                self.fail(f"committed index jumped to {entry.index}")
            self.max_committed = entry.index

    def on_restore(self, node: SimNode, meta: SnapshotMeta) -> None:
        if meta.index in self.committed and self.committed[meta.index][0] != meta.term:
            self.fail(f"{node.id} restored snapshot {meta.index} of a wrong term")
        if meta.index > self.max_committed:
            self.fail(
                f"{node.id} restored snapshot {meta.index} beyond committed {self.max_committed}"
            )
        self.last_applied[node.id] = meta.index

    def on_restart(self, node: SimNode) -> None:
        self.last_applied[node.id] = node.disk.snapshot.index


@dataclass
class SimOptions:
    seed: int
    nodes: int = 3
    steps: int = 600  # ticks of the fault phase
    clients: int = 4
    keys: int = 3
    bug: str | None = None
    liveness_ticks: int = 400


class SimCluster:
    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.bug = opts.bug
        rng = self.rng
        election = 10
        self.core_config = CoreConfig(
            election_ticks=election,
            heartbeat_ticks=rng.choice([1, 2, 3]),
            lease_ticks=election // 2,
            pre_vote=self.bug != "no-prevote-lease",
            check_quorum=self.bug != "no-prevote-lease",
            lease_reads=self.bug != "no-prevote-lease" and rng.random() < 0.5,
            max_entries_per_msg=rng.choice([1, 4, 64]),
            max_inflight=rng.choice([1, 4, 16]),
            snapshot_retry_ticks=30,
        )
        self.now = 0
        self._seq = itertools.count()
        self.queue: list[tuple[int, int, Callable[[], None]]] = []
        self.network = Network(self)
        self.checker = Checker(self)
        ids = [f"n{i}" for i in range(1, opts.nodes + 1)]
        membership = Membership(tuple(Server(i, i) for i in ids))
        self.nodes: dict[NodeId, SimNode] = {}
        for i in ids:
            disk = Disk(hard_state=HardState(1, None), log=[bootstrap_entry(membership)])
            self.nodes[i] = SimNode(self, i, disk)
        for node in self.nodes.values():
            node.start()
        self.history: list[Operation] = []
        self.op_ids = itertools.count(1)
        self.value_ids = itertools.count(1)
        self.open_ops: dict[int, PendingOp] = {}
        self.client_busy: dict[int, bool] = {}
        self.stats: dict[str, int] = {
            "ops_ok": 0,
            "ops_unknown": 0,
            "ops_failed": 0,
            "crashes": 0,
            "partitions": 0,
            "transfers": 0,
            "membership_changes": 0,
        }
        self.faults = True

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self, delay: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (self.now + delay, next(self._seq), fn))

    def run_until(self, t: int, stop: Callable[[], bool] | None = None) -> bool:
        while self.queue and self.queue[0][0] <= t:
            when, _, fn = heapq.heappop(self.queue)
            self.now = when
            fn()
            if stop is not None and stop():
                return True
        self.now = t
        return False

    def tick_all(self) -> None:
        for node in self.nodes.values():
            if node.up:
                node.deliver(node.core.tick)
        self.schedule(TICK, self.tick_all)

    # -- clients -------------------------------------------------------------------------

    def leader_guess(self) -> NodeId:
        up = [n for n in self.nodes.values() if n.up]
        leaders = [n for n in up if n.core.role == Role.LEADER]
        if leaders and self.rng.random() < 0.85:
            return max(leaders, key=lambda n: n.core.term).id
        return self.rng.choice(sorted(self.nodes))

    def client_loop(self, client: int) -> None:
        if not self.faults and self.now > self.end_of_clients:
            return
        node = self.nodes[self.leader_guess()]
        key = f"k{self.rng.randrange(self.opts.keys)}"
        roll = self.rng.random()
        op_id = next(self.op_ids)
        value = f"v{next(self.value_ids)}"
        if roll < 0.4:
            op = PendingOp(op_id, client, OpKind.PUT, key, value, None, self.now, node.id)
        elif roll < 0.7:
            op = PendingOp(op_id, client, OpKind.GET, key, None, None, self.now, node.id)
        else:
            current = node.fsm.get(key) if self.rng.random() < 0.7 else None
            op = PendingOp(op_id, client, OpKind.CAS, key, value, current, self.now, node.id)
        self.open_ops[op_id] = op
        self.client_busy[client] = True
        node.deliver(lambda: self.submit(node, op))
        self.schedule(60 * TICK, lambda: self.timeout(op))

    def submit(self, node: SimNode, op: PendingOp) -> None:
        if op.op_id not in self.open_ops:
            return
        try:
            if op.kind == OpKind.GET:
                node.waiting_reads[op.op_id] = op
                node.core.read_index(op.op_id)
            else:
                assert op.value is not None
                data = (
                    encode_put(op.key, op.value)
                    if op.kind == OpKind.PUT
                    else encode_cas(op.key, op.expected, op.value)
                )
                op.index, op.term = node.core.propose(data)
                node.waiting_writes[(op.index, op.term)] = op
        except RaftError:
            node.waiting_reads.pop(op.op_id, None)
            self.finish(op, unknown=False, output=None, failed=True)

    def timeout(self, op: PendingOp) -> None:
        if op.op_id in self.open_ops:
            node = self.nodes[op.node]
            node.waiting_writes.pop((op.index, op.term), None)
            node.waiting_reads.pop(op.op_id, None)
            if op in node.reads_ready:
                node.reads_ready.remove(op)
            self.finish(op, unknown=True, output=None)

    def finish(self, op: PendingOp, unknown: bool, output: Any, failed: bool = False) -> None:
        if self.open_ops.pop(op.op_id, None) is None:
            return
        if failed or (unknown and op.kind == OpKind.GET):
            self.stats["ops_failed"] += 1
        else:
            self.stats["ops_unknown" if unknown else "ops_ok"] += 1
            self.history.append(
                Operation(
                    op.client,
                    op.key,
                    op.kind,
                    op.value,
                    op.expected,
                    op.call,
                    None if unknown else self.now,
                    output,
                )
            )
        self.client_busy[op.client] = False
        self.schedule(self.rng.randint(1, 2 * TICK), lambda: self.client_loop(op.client))

    # -- faults --------------------------------------------------------------------------

    def buggify(self, probability: float) -> bool:
        """A fault point: fires only in the fault phase, with ``probability``."""
        return self.faults and self.rng.random() < probability

    def fault_loop(self) -> None:
        if not self.faults:
            return
        rng = self.rng
        roll = rng.random()
        ids = sorted(self.nodes)
        up = [i for i in ids if self.nodes[i].up]
        down = [i for i in ids if not self.nodes[i].up]
        majority = len(ids) // 2 + 1
        if roll < 0.25 and len(up) > 0:
            victim = rng.choice(up)
            self.nodes[victim].crash()
            self.stats["crashes"] += 1
            back = rng.randint(0, 3) if rng.random() < 0.5 else rng.randint(5, 60)
            self.schedule(back * TICK + rng.randint(0, TICK), lambda: self.restart(victim))
        elif roll < 0.45:
            self.partition()
        elif roll < 0.6:
            self.network.heal()
            self.network.drop_rate = rng.choice([0.0, 0.0, 0.05, 0.2])
            self.network.dup_rate = rng.choice([0.0, 0.05])
        elif roll < 0.7:
            self.network.heal()
        elif roll < 0.8:
            leaders = [self.nodes[i] for i in up if self.nodes[i].core.role == Role.LEADER]
            if leaders:
                leader = leaders[0]
                target = rng.choice([None, *[i for i in ids if i != leader.id]])

                def transfer() -> None:
                    try:
                        leader.core.transfer_leadership(target)
                        self.stats["transfers"] += 1
                    except RaftError:
                        pass

                leader.deliver(transfer)
        elif roll < 0.88:
            self.change_membership()
        elif down and len(up) < majority:
            self.restart(rng.choice(down))
        self.schedule(rng.randint(5, 40) * TICK, self.fault_loop)

    def change_membership(self) -> None:
        """Remove a voter, or add a missing server back (it rejoins as staging)."""
        leaders = [n for n in self.nodes.values() if n.up and n.core.role == Role.LEADER]
        if not leaders:
            return
        leader = max(leaders, key=lambda n: n.core.term)
        membership = leader.core.membership
        missing = sorted(set(self.nodes) - membership.ids)
        nonvoters = sorted(membership.ids - membership.voters)
        roll = self.rng.random()

        def change() -> None:
            try:
                if missing and (roll < 0.6 or len(membership.voters) <= 1):
                    if roll < 0.15:
                        leader.core.add_nonvoter(missing[0], missing[0])
                    else:
                        leader.core.add_voter(missing[0], missing[0])
                elif nonvoters and roll < 0.8:
                    leader.core.add_voter(nonvoters[0], nonvoters[0])
                elif len(membership.voters) > 1:
                    victim = self.rng.choice(sorted(membership.ids))
                    leader.core.remove_server(victim)
                self.stats["membership_changes"] += 1
            except RaftError:
                pass

        leader.deliver(change)

    def partition(self) -> None:
        ids = sorted(self.nodes)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        a, b = ids[:cut], ids[cut:]
        one_way = self.rng.random() < 0.3
        self.network.blocked = set()
        for x in a:
            for y in b:
                self.network.blocked.add((x, y))
                if not one_way:
                    self.network.blocked.add((y, x))
        self.stats["partitions"] += 1

    def restart(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if not node.up:
            node.start()

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        self.end_of_clients = 0
        self.schedule(TICK, self.tick_all)
        for c in range(self.opts.clients):
            self.schedule(self.rng.randint(1, 5 * TICK), functools.partial(self.client_loop, c))
        self.schedule(20 * TICK, self.fault_loop)
        fault_end = self.opts.steps * TICK
        self.run_until(fault_end)
        # Liveness: heal everything, restart everyone, and demand progress.
        self.faults = False
        self.network.heal()
        for node in self.nodes.values():
            if not node.up:
                node.start()
        start = self.now
        committed_before = self.checker.max_committed
        marker = f"liveness-{self.opts.seed}"

        def propose_marker() -> None:
            leaders = [n for n in self.nodes.values() if n.core.role == Role.LEADER]
            for n in leaders:
                n.deliver(functools.partial(self._try_propose, n, marker))
            self.schedule(5 * TICK, propose_marker)

        self.schedule(TICK, propose_marker)

        def done() -> bool:
            return any(
                d == encode_put("liveness", marker)
                for i, (t, d) in self.checker.committed.items()
                if i > committed_before
            )

        deadline = start + self.opts.liveness_ticks * TICK
        while self.now < deadline:
            if self.run_until(min(deadline, self.now + 20 * TICK), None) or done():
                break
        if not done():
            raise Violation(
                f"liveness: nothing committed within {self.opts.liveness_ticks} "
                f"ticks after healing (t={self.now})"
            )
        # Let the clients finish: each open operation ends by its own timeout.
        self.end_of_clients = self.now
        self.run_until(self.now + 80 * TICK)
        for op in list(self.open_ops.values()):
            self.finish(op, unknown=True, output=None)

    def _try_propose(self, node: SimNode, marker: str) -> None:
        with contextlib.suppress(RaftError):
            node.core.propose(encode_put("liveness", marker))


def summarize(history: list[Operation]) -> str:
    return json.dumps({"ops": len(history)})
