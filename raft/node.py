"""The asyncio driver: runs a ``RaftCore`` against real storage, a transport and an FSM.

One task (``raft-loop``) owns the core, the FSM and the pending requests. Every input — a
tick, an inbound message, a proposal, a read, a membership change — is queued and handled by
that task, which then runs the core's contract for each Ready:

    persist (one transaction, one fsync) -> send -> apply -> advance

While a Ready is being persisted, new inputs queue up; the next round takes them all at once,
so many proposals share one fsync (group commit) and one AppendEntries per follower.

Outcomes for callers:
- ``propose()`` resolves with the FSM's result once the entry is applied; it raises
  ``NotLeader`` when refused, ``ProposalDropped`` when another entry won its index, and
  ``LeadershipLost`` when this node stopped leading first (the entry may still commit).
- ``read_index()`` resolves once a read at this moment is linearizable on this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from raft.core.raft import RaftCore
from raft.core.types import (
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    NodeId,
    RaftError,
    Ready,
    Role,
    SnapshotMeta,
    bootstrap_entry,
)
from raft.storage.base import RaftStorage, SnapshotStore
from raft.timing import Timing
from raft.transport.base import Transport

log = structlog.get_logger("raft")

SNAPSHOT_CHUNK = 256 * 1024


class StateMachine(Protocol):
    """The application's replicated state."""

    def apply(self, index: int, command: bytes) -> Any:
        """Apply a committed command; the return value goes to the proposer."""
        ...

    def snapshot(self) -> bytes:
        """The state after every applied entry, as bytes."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's."""
        ...


class FatalApplyError(Exception):
    """Raised by a state machine that cannot apply a committed entry (e.g. an unknown command
    type): applying past it would make this replica diverge, so the node stops instead."""


class ProposalDropped(RaftError):
    """Another entry was committed at the proposal's index: it will never apply."""


class LeadershipLost(RaftError):
    """This node stopped leading before the proposal committed; its outcome is unknown."""


class NodeStopped(RaftError):
    """The node is shutting down."""


@dataclass
class NodeMetrics:
    """Counters a metrics endpoint can expose."""

    saves: int = 0
    entries_saved: int = 0
    max_batch: int = 0
    last_batch: int = 0
    save_seconds_total: float = 0.0
    save_seconds_max: float = 0.0
    applied: int = 0
    snapshots_taken: int = 0
    snapshots_sent: int = 0
    snapshots_received: int = 0
    recent_save_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1024))


class RaftNode:
    """A Raft server. ``start()``, then ``propose()`` / ``read_index()`` / membership calls."""

    def __init__(
        self,
        node_id: NodeId,
        *,
        fsm: StateMachine,
        storage: RaftStorage,
        snapshots: SnapshotStore,
        transport: Transport,
        timing: Timing | None = None,
        peers: dict[NodeId, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.id = node_id
        self.fsm = fsm
        self.storage = storage
        self.snapshots = snapshots
        self.transport = transport
        self.timing = timing or Timing()
        self.peers = dict(peers or {})
        self.rng = rng or random.Random()
        self.metrics = NodeMetrics()
        self.core: RaftCore | None = None
        self._inbox: list[Callable[[RaftCore], None]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_senders: dict[NodeId, asyncio.Task[None]] = {}
        self._snapshot_task: asyncio.Task[None] | None = None
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._reads: dict[int, asyncio.Future[None]] = {}
        self._reads_confirmed: list[tuple[int, asyncio.Future[None]]] = []
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._request_ids = itertools.count(1)
        self._stopping = False
        self._role = Role.FOLLOWER
        self._leader: NodeId | None = None
        self._term = 0
        self._leader_event = asyncio.Event()
        #: Set when the FSM raised FatalApplyError: the node stopped applying and serving.
        self.fatal_error: FatalApplyError | None = None

    # ------------------------------------------------------------------ lifecycle

    async def bootstrap(self, membership: Membership) -> bool:
        """Write the founding configuration if this node has no state yet. Every founding
        server must bootstrap with the same membership. Returns True if it wrote."""
        state = await self.storage.load()
        if state.hard_state.term or state.entries or state.snapshot.index:
            return False
        await self.storage.save(HardState(1, None), [bootstrap_entry(membership)])
        return True

    async def start(self) -> None:
        state = await self.storage.load()
        if state.snapshot.index:
            self.snapshots.protect(state.snapshot.index, state.snapshot.term)
            _, data, _ = await asyncio.to_thread(
                self.snapshots.read, state.snapshot.index, state.snapshot.term
            )
            self.fsm.restore(data)
        self.core = RaftCore(self.id, self.timing.core_config(), self.rng, state)
        self._term = self.core.term
        self._update_peers()
        await self.transport.start(self)
        log.info(
            "raft_started",
            node=self.id,
            term=state.hard_state.term,
            snapshot_index=state.snapshot.index,
            last_index=self.core.log.last_index,
            servers=sorted(self.core.membership.ids),
        )
        self._tasks.append(asyncio.create_task(self._run(), name="raft-loop"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="raft-ticker"))

    async def stop(self) -> None:
        self._stopping = True
        for task in [*self._tasks, *self._snapshot_senders.values()]:
            task.cancel()
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        for task in [*self._tasks, *self._snapshot_senders.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._snapshot_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._snapshot_task
        self._fail_all(NodeStopped("node stopped"))
        await self.transport.close()
        await self.storage.close()

    # ------------------------------------------------------------------ status

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader_id(self) -> NodeId | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    @property
    def is_leader(self) -> bool:
        return self._role == Role.LEADER

    @property
    def applied_index(self) -> int:
        return self.core.log.applied if self.core else 0

    @property
    def commit_index(self) -> int:
        return self.core.log.committed if self.core else 0

    @property
    def membership(self) -> Membership:
        return self.core.membership if self.core else Membership()

    def last_contact(self) -> float | None:
        """Seconds since this node last heard from its leader (0 on the leader; None with no
        known leader). Accurate to one tick."""
        core = self.core
        if core is None or self._leader is None:
            return None
        if self._role == Role.LEADER:
            return 0.0
        return core.election_elapsed * self.timing.tick_seconds

    def leader_address(self) -> str | None:
        if self._leader is None or self.core is None:
            return None
        server = self.core.membership.get(self._leader)
        return server.address if server else self.peers.get(self._leader)

    def stats(self) -> dict[str, Any]:
        core = self.core
        out: dict[str, Any] = {
            "node": self.id,
            "role": self._role.name.lower(),
            "term": self._term,
            "leader": self._leader,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "last_log_index": core.log.last_index if core else 0,
            "snapshot_index": core.log.snapshot.index if core else 0,
            "saves": self.metrics.saves,
            "entries_saved": self.metrics.entries_saved,
            "max_batch": self.metrics.max_batch,
            "save_ms_avg": (
                1000 * self.metrics.save_seconds_total / self.metrics.saves
                if self.metrics.saves
                else 0.0
            ),
            "save_ms_max": 1000 * self.metrics.save_seconds_max,
            "snapshots_taken": self.metrics.snapshots_taken,
            "snapshots_sent": self.metrics.snapshots_sent,
            "snapshots_received": self.metrics.snapshots_received,
        }
        if core is not None:
            out.update({f"core_{k}": v for k, v in core.stats.items()})
            if core.role == Role.LEADER:
                tick = self.timing.tick_seconds
                out["followers"] = {
                    node: {
                        "match": pr.match,
                        "next": pr.next,
                        "state": pr.state.name.lower(),
                        "last_contact_s": round(max(0, core.now - pr.contact_tick) * tick, 3)
                        if pr.contact_tick > -(1 << 61)
                        else None,
                    }
                    for node, pr in core.progress.items()
                }
        return out

    async def wait_for_leader(self, timeout: float) -> NodeId:
        async with asyncio.timeout(timeout):
            while self._leader is None:
                self._leader_event.clear()
                await self._leader_event.wait()
        assert self._leader is not None
        return self._leader

    # ------------------------------------------------------------------ requests

    async def propose(self, data: bytes) -> Any:
        """Replicate ``data``; returns the FSM's result for it once applied here."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def submit(core: RaftCore) -> None:
            index, term = core.propose(data)
            self._proposals[index] = (term, fut)

        self._submit(submit, fut)
        return await fut

    async def read_index(self) -> None:
        """Return once this node's FSM reflects every write committed before the call
        (linearizable). Raises NotLeader on a follower."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request_id = next(self._request_ids)

        def submit(core: RaftCore) -> None:
            self._reads[request_id] = fut
            try:
                core.read_index(request_id)
            except RaftError:
                self._reads.pop(request_id, None)
                raise

        self._submit(submit, fut)
        await fut

    async def add_voter(self, node_id: NodeId, address: str) -> int:
        self.peers[node_id] = address
        return await self._config_change(lambda core: core.add_voter(node_id, address))

    async def add_nonvoter(self, node_id: NodeId, address: str) -> int:
        self.peers[node_id] = address
        return await self._config_change(lambda core: core.add_nonvoter(node_id, address))

    async def remove_server(self, node_id: NodeId) -> int:
        return await self._config_change(lambda core: core.remove_server(node_id))

    async def transfer_leadership(self, target: NodeId | None = None) -> NodeId:
        fut: asyncio.Future[NodeId] = asyncio.get_running_loop().create_future()

        def submit(core: RaftCore) -> None:
            fut.set_result(core.transfer_leadership(target))

        self._submit(submit, fut)
        return await fut

    async def campaign(self) -> None:
        """Start an election now instead of after an election timeout (a lone bootstrapped
        server, as Consul's dev mode, has nobody to wait for)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def submit(core: RaftCore) -> None:
            core.campaign()
            fut.set_result(None)

        self._submit(submit, fut)
        await fut

    async def wait_applied(self, index: int) -> None:
        if self.applied_index >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        await fut

    async def _config_change(self, change: Callable[[RaftCore], int]) -> int:
        """Append a configuration entry and wait until it is applied here."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def submit(core: RaftCore) -> None:
            index = change(core)
            self._proposals[index] = (core.term, fut)

        self._submit(submit, fut)
        await fut
        return self.applied_index

    def _submit(self, fn: Callable[[RaftCore], None], fut: asyncio.Future[Any]) -> None:
        if self._stopping or self.core is None:
            raise NodeStopped("node is not running")

        def guarded(core: RaftCore) -> None:
            try:
                fn(core)
            except RaftError as exc:
                if not fut.done():
                    fut.set_exception(exc)

        self._inbox.append(guarded)
        self._wake.set()

    # ------------------------------------------------------------------ transport inbound

    def on_message(self, msg: Message) -> None:
        self._inbox.append(lambda core: core.step(msg))
        self._wake.set()

    async def on_snapshot(
        self, msg: InstallSnapshot, chunks: AsyncIterator[bytes], sha256: str, size: int
    ) -> None:
        sink = self.snapshots.create(msg.meta)
        try:
            async for chunk in chunks:
                sink.write(chunk)
            await asyncio.to_thread(sink.commit, sha256)
        except BaseException:
            sink.abort()
            raise
        self.metrics.snapshots_received += 1
        log.info("snapshot_received", node=self.id, index=msg.meta.index, size=size)
        self.on_message(msg)

    # ------------------------------------------------------------------ the loop

    async def _ticker(self) -> None:
        interval = self.timing.tick_seconds
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self._inbox.append(RaftCore.tick)
            self._wake.set()
            now = time.monotonic()
            if now - next_at > 10 * interval:
                next_at = now  # the loop was stalled: do not fire a burst of ticks

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except FatalApplyError:
            raise
        except Exception as exc:
            # A bug, not a fault to ride out: stop serving rather than go on half-alive (a
            # leader whose loop died keeps its lease in its peers' eyes and blocks elections).
            log.critical("raft_loop_crashed", node=self.id, error=repr(exc), exc_info=True)
            self.fatal_error = FatalApplyError(f"raft loop crashed: {exc!r}")
            self._stopping = True
            self._fail_all(NodeStopped(f"stopped: raft loop crashed: {exc!r}"))
            raise

    async def _loop(self) -> None:
        core = self.core
        assert core is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            inputs, self._inbox = self._inbox, []
            for fn in inputs:
                fn(core)
            while core.has_ready():
                await self._handle_ready(core, core.ready())
            self._maybe_snapshot(core)

    async def _handle_ready(self, core: RaftCore, rd: Ready) -> None:
        early, late = rd.split_messages()
        self._send(early)
        # 1. persist
        if rd.must_sync:
            started = time.perf_counter()
            await self.storage.save(rd.hard_state, rd.entries, rd.snapshot)
            if rd.snapshot is not None:
                self.snapshots.protect(rd.snapshot.index, rd.snapshot.term)
            elapsed = time.perf_counter() - started
            m = self.metrics
            m.saves += 1
            m.entries_saved += len(rd.entries)
            m.last_batch = len(rd.entries)
            m.max_batch = max(m.max_batch, len(rd.entries))
            m.save_seconds_total += elapsed
            m.save_seconds_max = max(m.save_seconds_max, elapsed)
            m.recent_save_ms.append(elapsed * 1000)
        # 2. send
        self._send(late)
        # 3. apply
        if rd.snapshot is not None:
            _, data, _ = await asyncio.to_thread(
                self.snapshots.read, rd.snapshot.index, rd.snapshot.term
            )
            self.fsm.restore(data)
            self._fail_proposals_upto(rd.snapshot.index)
        self._apply(rd.committed)
        for rs in rd.read_states:
            fut = self._reads.pop(rs.request_id, None)
            if fut is not None:
                self._reads_confirmed.append((rs.index, fut))
        for ev in rd.events:
            details = dict(ev.details)
            if "node" in details:  # never collide with our own ``node=``
                details["subject"] = details.pop("node")
            log.info(ev.name, node=self.id, **details)
        self._note_role(rd)
        core.advance(rd)
        self._release_waiters(core.log.applied)

    def _send(self, messages: Iterable[Message]) -> None:
        for msg in messages:
            if isinstance(msg, InstallSnapshot):
                self._start_snapshot_send(msg)
            else:
                self.transport.send(msg)

    def _apply(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            result: Any = None
            if entry.kind == EntryKind.NORMAL:
                try:
                    result = self.fsm.apply(entry.index, entry.data)
                except FatalApplyError as exc:
                    log.critical("fsm_apply_fatal", node=self.id, index=entry.index, error=str(exc))
                    self.fatal_error = exc
                    self._stopping = True
                    self._fail_all(NodeStopped(f"stopped: cannot apply entry {entry.index}"))
                    raise
                except Exception as exc:  # the FSM's own error goes to the proposer
                    result = exc
            elif entry.kind == EntryKind.CONFIG:
                self._update_peers()
            self.metrics.applied = entry.index
            waiting = self._proposals.pop(entry.index, None)
            if waiting is not None:
                term, fut = waiting
                if fut.done():
                    continue
                if term != entry.term:
                    fut.set_exception(
                        ProposalDropped(f"index {entry.index} went to term {entry.term}")
                    )
                elif isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def _release_waiters(self, applied: int) -> None:
        if self._reads_confirmed:
            self._reads_confirmed = _release_upto(self._reads_confirmed, applied)
        if self._applied_waiters:
            self._applied_waiters = _release_upto(self._applied_waiters, applied)

    def _note_role(self, rd: Ready) -> None:
        if (rd.role, rd.leader_id, rd.term) == (self._role, self._leader, self._term):
            return
        was_leader = self._role == Role.LEADER
        term_changed = rd.term != self._term
        if rd.leader_id != self._leader or rd.term != self._term:
            log.info(
                "leader_changed" if rd.leader_id else "leader_unknown",
                node=self.id,
                term=rd.term,
                leader=rd.leader_id,
                role=rd.role.name.lower(),
            )
        self._role, self._leader, self._term = rd.role, rd.leader_id, rd.term
        if rd.leader_id is not None:
            self._leader_event.set()
        if was_leader and rd.role != Role.LEADER:
            lost = LeadershipLost("leadership lost before the entry committed")
            for _, fut in self._proposals.values():
                if not fut.done():
                    fut.set_exception(lost)
            self._proposals.clear()
            for fut in [*self._reads.values(), *(f for _, f in self._reads_confirmed)]:
                if not fut.done():
                    fut.set_exception(LeadershipLost("leadership lost before the read"))
            self._reads.clear()
            self._reads_confirmed = []
        elif was_leader and term_changed:
            # Stepped down and won again between two Readies: the core dropped the reads it
            # had not confirmed yet. Proposals stay: they resolve when their index applies.
            for fut in self._reads.values():
                if not fut.done():
                    fut.set_exception(LeadershipLost("leadership changed before the read"))
            self._reads.clear()

    def _fail_proposals_upto(self, index: int) -> None:
        for i in [i for i in self._proposals if i <= index]:
            _, fut = self._proposals.pop(i)
            if not fut.done():
                fut.set_exception(LeadershipLost("replaced by a snapshot; outcome unknown"))

    def _fail_all(self, exc: Exception) -> None:
        futures: list[asyncio.Future[Any]] = [f for _, f in self._proposals.values()]
        futures += list(self._reads.values())
        futures += [f for _, f in self._reads_confirmed]
        futures += [f for _, f in self._applied_waiters]
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
        self._proposals.clear()
        self._reads.clear()
        self._reads_confirmed = []
        self._applied_waiters = []

    def learn_peer(self, node_id: NodeId, address: str) -> None:
        """Remember how to reach ``node_id`` even while it is not in the configuration this
        node knows (a fresh server must answer a leader before it has the log that lists it).
        Addresses in the configuration take precedence."""
        if node_id == self.id or self.peers.get(node_id) == address:
            return
        self.peers[node_id] = address
        if self.core is not None and self.core.membership.get(node_id) is None:
            self.transport.set_peer(node_id, address)

    def _update_peers(self) -> None:
        if self.core is None:
            return
        for node, address in self.peers.items():
            if node != self.id:
                self.transport.set_peer(node, address)
        for server in self.core.membership.servers:
            if server.id != self.id:
                self.transport.set_peer(server.id, server.address)

    # ------------------------------------------------------------------ snapshots

    def _maybe_snapshot(self, core: RaftCore) -> None:
        if self._snapshot_task is not None:
            return
        applied = core.log.applied
        if applied - core.log.snapshot.index < self.timing.snapshot_threshold:
            return
        term = core.log.term(applied)
        if term is None:
            return
        meta = SnapshotMeta(applied, term, core.membership_at(applied))
        data = self.fsm.snapshot()  # consistent: the loop applies nothing while we copy
        self._snapshot_task = asyncio.create_task(
            self._write_snapshot(meta, data), name="raft-snapshot"
        )

    async def _write_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        try:

            def write() -> None:
                sink = self.snapshots.create(meta)
                try:
                    sink.write(data)
                    sink.commit()
                except BaseException:
                    sink.abort()
                    raise

            await asyncio.to_thread(write)
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

            def compact(core: RaftCore) -> None:
                done.set_result(core.compact(meta, self.timing.trailing_logs))

            self._inbox.append(compact)
            self._wake.set()
            keep_from = await done
            await self.storage.compact(meta, keep_from)
            self.snapshots.protect(meta.index, meta.term)
            self.metrics.snapshots_taken += 1
            log.info(
                "snapshot_taken",
                node=self.id,
                index=meta.index,
                size=len(data),
                first_index=keep_from,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("snapshot_failed", node=self.id, index=meta.index)
        finally:
            self._snapshot_task = None

    def _start_snapshot_send(self, msg: InstallSnapshot) -> None:
        running = self._snapshot_senders.get(msg.dst)
        if running is not None and not running.done():
            return
        self._snapshot_senders[msg.dst] = asyncio.create_task(
            self._send_snapshot(msg), name=f"raft-snapshot-send-{msg.dst}"
        )

    async def _send_snapshot(self, msg: InstallSnapshot) -> None:
        try:
            meta, data, sha = await asyncio.to_thread(
                self.snapshots.read, msg.meta.index, msg.meta.term
            )

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(data), SNAPSHOT_CHUNK):
                    yield data[start : start + SNAPSHOT_CHUNK]

            await self.transport.send_snapshot(msg, chunks(), sha, len(data))
            self.metrics.snapshots_sent += 1
            log.info("snapshot_sent", node=self.id, to=msg.dst, index=meta.index, size=len(data))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._inbox.append(lambda core: core.snapshot_failed(msg.dst))
            self._wake.set()
            log.warning(
                "snapshot_send_failed",
                node=self.id,
                to=msg.dst,
                index=msg.meta.index,
                error=str(exc),
            )


def _release_upto(
    waiters: list[tuple[int, asyncio.Future[None]]], applied: int
) -> list[tuple[int, asyncio.Future[None]]]:
    """Resolve the waiters whose index is applied; return the others."""
    keep = []
    for index, fut in waiters:
        if index > applied:
            keep.append((index, fut))
        elif not fut.done():
            fut.set_result(None)
    return keep
