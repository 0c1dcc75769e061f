"""The Raft consensus core: a deterministic, synchronous state machine with no I/O.

Inputs are method calls: ``tick()``, ``step(message)``, ``propose(data)``,
``read_index(request_id)``, membership changes, ``transfer_leadership()``. Outputs are
collected into a ``Ready`` (see ``raft.core.types.Ready`` for the persist -> send -> apply ->
advance contract). Between ``ready()`` and ``advance()`` no other method may be called.

Design choices (and why):
- Elections use pre-vote and check-quorum. A voter that heard from a leader within the
  election timeout refuses (pre-)votes unless the request is a leadership transfer, so a
  partitioned node rejoining cannot depose a healthy leader.
- Membership changes are single-server changes (Raft dissertation §4.1), not joint
  consensus: one server at a time keeps every pair of consecutive majorities overlapping, is
  far simpler to get right, and is what Consul's autopilot uses. A configuration takes effect
  as soon as it is appended; a new change waits until the previous one committed and until
  the leader has committed an entry of its own term (the dissertation's bug fix).
- New voters join as STAGING non-voters and the leader promotes them once their log has
  caught up with the commit index, so adding a server never stalls commits.
- Linearizable reads use ReadIndex: a heartbeat round confirms leadership after the read was
  registered. Optionally a lease (``lease_ticks`` < ``election_ticks``) serves reads with no
  round, which is safe only while tick rates are similar on every node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

from raft.core.config import CoreConfig
from raft.core.log import RaftLog
from raft.core.progress import Progress, ProgressState
from raft.core.quorum import has_quorum, majority, quorum_index
from raft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfigChangeInProgress,
    ConfigChangeRejected,
    CoreEvent,
    Entry,
    EntryKind,
    HardState,
    InitialState,
    InstallSnapshot,
    InstallSnapshotResponse,
    LeadershipTransferInProgress,
    Membership,
    Message,
    NodeId,
    NotLeader,
    RaftError,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    Server,
    SnapshotMeta,
    Suffrage,
    TimeoutNow,
)

READ_ROUNDS_KEPT = 1024  # start ticks of recent heartbeat rounds, for lease accounting


class RaftCore:
    """One Raft server's protocol state. Single-threaded; see the module docstring."""

    def __init__(
        self, node_id: NodeId, config: CoreConfig, rng: random.Random, state: InitialState
    ) -> None:
        self.id = node_id
        self.cfg = config
        self.rng = rng
        self.term = state.hard_state.term
        self.voted_for = state.hard_state.voted_for
        self._persisted_hard = state.hard_state
        self.log = RaftLog(state.snapshot, state.entries)
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        # Membership: the latest configuration in the log (committed or not) is in effect.
        self._configs: list[tuple[int, Membership]] = []
        self.membership = state.snapshot.membership
        self.membership_index = state.snapshot.index
        for e in state.entries:
            if e.kind == EntryKind.CONFIG:
                self._configs.append((e.index, Membership.decode(e.data)))
        self._refresh_membership()
        # Timers, in ticks.
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self._reset_randomized_timeout()
        self.now = 0  # ticks since start: only compared with itself (leases)
        # Candidate state.
        self.votes: dict[NodeId, bool] = {}
        # Leader state.
        self.progress: dict[NodeId, Progress] = {}
        self.pending_conf_index = 0
        self.lead_transferee: NodeId | None = None
        self._transfer_sent_term = 0  # leases end for good once TimeoutNow left in a term
        self.transfer_elapsed = 0
        self.read_seq = 0
        self._read_seq_started: dict[int, int] = {}  # read_seq -> tick it started
        self._reads_pending: list[tuple[int, int, int]] = []  # (request_id, index, seq)
        self._reads_waiting: list[int] = []  # request ids waiting for a commit in this term
        self._need_broadcast = False
        self._unsent_round = 0  # read_seq of a heartbeat round still in the outbox
        # Output buffers, drained by ready().
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._events: list[CoreEvent] = []
        self._snapshot_to_install: SnapshotMeta | None = None
        self._reported_role: tuple[Role, NodeId | None, int] = (
            self.role,
            self.leader_id,
            self.term,
        )
        self._in_ready = False
        self.stats: dict[str, int] = {
            "elections": 0,
            "leader_changes": 0,
            "appends_sent": 0,
            "entries_sent": 0,
            "heartbeats_sent": 0,
            "snapshots_sent": 0,
            "snapshots_installed": 0,
            "proposals": 0,
            "reads": 0,
        }

    # ------------------------------------------------------------------ public inputs

    def tick(self) -> None:
        self._check_not_in_ready()
        self.now += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_follower()

    def step(self, msg: Message) -> None:
        self._check_not_in_ready()
        if msg.dst != self.id:
            return
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                if not msg.transfer and self._in_lease():
                    self._send(
                        RequestVoteResponse(self.id, msg.src, self.term, False, msg.pre_vote)
                    )
                    return
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote carries the future term; not a reason to follow
            elif isinstance(msg, AppendEntries | InstallSnapshot | TimeoutNow):
                self._become_follower(msg.term, msg.src)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self.term:
            # Tell a stale leader or candidate about the newer term so it steps down.
            if isinstance(msg, AppendEntries):
                self._send(
                    AppendEntriesResponse(self.id, msg.src, self.term, False, self.log.last_index)
                )
            elif isinstance(msg, InstallSnapshot):
                self._send(
                    InstallSnapshotResponse(self.id, msg.src, self.term, False, self.log.last_index)
                )
            elif isinstance(msg, RequestVote):
                self._send(RequestVoteResponse(self.id, msg.src, self.term, False, msg.pre_vote))
            return
        if isinstance(msg, RequestVote):
            self._handle_request_vote(msg)
        elif isinstance(msg, RequestVoteResponse):
            self._handle_vote_response(msg)
        elif isinstance(msg, AppendEntries):
            self._handle_append(msg)
        elif isinstance(msg, AppendEntriesResponse):
            self._handle_append_response(msg)
        elif isinstance(msg, InstallSnapshot):
            self._handle_install_snapshot(msg)
        elif isinstance(msg, InstallSnapshotResponse):
            self._handle_snapshot_response(msg)
        elif isinstance(msg, TimeoutNow):
            self._handle_timeout_now(msg)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns its (index, term). It is committed once applied with
        that term at that index; if another term shows up there, it was lost."""
        self._check_not_in_ready()
        self._require_leader()
        if self.lead_transferee is not None:
            raise LeadershipTransferInProgress()
        entry = Entry(self.log.last_index + 1, self.term, EntryKind.NORMAL, data)
        self._append_local(entry)
        self.stats["proposals"] += 1
        return entry.index, entry.term

    def read_index(self, request_id: int) -> None:
        """Ask for a linearizable read. A ``ReadState(request_id, index)`` appears in a later
        Ready once leadership is confirmed; serve the read when applied >= index. If this node
        stops being leader first, the read is dropped (the driver fails it)."""
        self._check_not_in_ready()
        self._require_leader()
        self.stats["reads"] += 1
        if not self._committed_in_term():
            self._reads_waiting.append(request_id)
            return
        self._register_read(request_id)

    def add_voter(self, node_id: NodeId, address: str) -> int:
        """Add a server that becomes a voter once caught up. Returns the config entry index."""
        current = self.membership.get(node_id)
        if current is not None and current.suffrage == Suffrage.VOTER:
            if current.address == address:
                raise ConfigChangeRejected(f"{node_id} is already a voter")
            return self._change_membership(
                self.membership.with_server(Server(node_id, address, Suffrage.VOTER))
            )
        return self._change_membership(
            self.membership.with_server(Server(node_id, address, Suffrage.STAGING))
        )

    def add_nonvoter(self, node_id: NodeId, address: str) -> int:
        current = self.membership.get(node_id)
        if current is not None and current.suffrage != Suffrage.NONVOTER:
            raise ConfigChangeRejected(f"{node_id} is a voter; remove it first")
        return self._change_membership(
            self.membership.with_server(Server(node_id, address, Suffrage.NONVOTER))
        )

    def remove_server(self, node_id: NodeId) -> int:
        if self.membership.get(node_id) is None:
            raise ConfigChangeRejected(f"{node_id} is not a member")
        new = self.membership.without(node_id)
        if not new.voters:
            raise ConfigChangeRejected("cannot remove the last voter")
        return self._change_membership(new)

    def transfer_leadership(self, target: NodeId | None = None) -> NodeId:
        """Hand leadership to ``target`` (or the most up-to-date voter). Returns the target.

        Proposals are refused until the transfer ends; it is abandoned after an election
        timeout."""
        self._check_not_in_ready()
        self._require_leader()
        candidates = [v for v in self.membership.voters if v != self.id]
        if target is None:
            if not candidates:
                raise RaftError("no other voter to transfer leadership to")
            target = max(sorted(candidates), key=lambda v: self.progress[v].match)
        elif target == self.id:
            raise RaftError("already the leader")
        elif target not in candidates:
            raise RaftError(f"{target} is not a voter")
        self.lead_transferee = target
        self.transfer_elapsed = 0
        self._event("leadership_transfer_started", target=target)
        pr = self.progress[target]
        if pr.match == self.log.last_index:
            self._send_timeout_now(target)
        else:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()  # resend from the last known match, in case sends were lost
            self._send_append(target)
        return target

    def snapshot_failed(self, node: NodeId) -> None:
        """The driver could not deliver the snapshot to ``node``: retry after a couple of
        heartbeats instead of waiting for ``snapshot_retry_ticks``."""
        self._check_not_in_ready()
        pr = self.progress.get(node)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.SNAPSHOT:
            soon = self.cfg.snapshot_retry_ticks - 2 * self.cfg.heartbeat_ticks
            pr.snapshot_elapsed = max(pr.snapshot_elapsed, soon)

    def campaign(self) -> None:
        """Start an election now (skipping the timeout); used by tests and bootstrap."""
        self._check_not_in_ready()
        if self.role != Role.LEADER and self._promotable():
            self._campaign(pre_vote=self.cfg.pre_vote, transfer=False)

    def compact(self, meta: SnapshotMeta, trailing: int) -> int:
        """The driver saved a snapshot at ``meta.index`` (<= applied): drop log entries
        before ``meta.index - trailing + 1``. Returns the new first index to keep."""
        self._check_not_in_ready()
        keep_from = self.log.compact(meta, meta.index - trailing + 1)
        self._event("log_compacted", snapshot_index=meta.index, first_index=keep_from)
        return keep_from

    # ------------------------------------------------------------------ outputs

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._read_states
            or self._events
            or self._need_broadcast
            or self._snapshot_to_install is not None
            or self.log.stable < self.log.last_index
            or self._hard_state() != self._persisted_hard
            or self.log.applied < min(self.log.committed, self.log.last_index)
            or self._reported_role != (self.role, self.leader_id, self.term)
        )

    def ready(self) -> Ready:
        self._check_not_in_ready()
        if self._need_broadcast:
            self._broadcast_append()
        hard = self._hard_state()
        rd = Ready(
            hard_state=hard if hard != self._persisted_hard else None,
            entries=tuple(self.log.unstable()),
            snapshot=self._snapshot_to_install,
            messages=tuple(self._msgs),
            committed=tuple(self.log.to_apply()),
            read_states=tuple(self._read_states),
            role=self.role,
            leader_id=self.leader_id,
            term=self.term,
            events=tuple(self._events),
        )
        self._msgs = []
        self._unsent_round = 0
        self._read_states = []
        self._events = []
        self._reported_role = (self.role, self.leader_id, self.term)
        self._in_ready = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        self._in_ready = False
        if rd.hard_state is not None:
            self._persisted_hard = rd.hard_state
        if rd.snapshot is not None:
            self._snapshot_to_install = None
        if rd.entries:
            self.log.stable = max(self.log.stable, rd.entries[-1].index)
        if rd.committed:
            self.log.applied = rd.committed[-1].index
        if self.role == Role.LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------------ status

    @property
    def commit_index(self) -> int:
        return self.log.committed

    def hard_state(self) -> HardState:
        return self._hard_state()

    def membership_at(self, index: int) -> Membership:
        """The configuration in effect once every entry up to ``index`` is applied."""
        for config_index, membership in reversed(self._configs):
            if config_index <= index:
                return membership
        return self.log.snapshot.membership

    def lease_valid(self) -> bool:
        """True while no other leader can have been elected (a quorum acked a round that
        started less than ``lease_ticks`` ago). Never after this leader sent TimeoutNow in
        its term: transfer votes ignore voters' leases."""
        if (
            self.role != Role.LEADER
            or self.lead_transferee is not None
            or self._transfer_sent_term == self.term
        ):
            return False
        contacts = {
            v: self.progress[v].contact_tick
            for v in self.membership.voters
            if v != self.id and v in self.progress
        }
        contacts[self.id] = self.now
        return quorum_index(self.membership.voters, contacts) > self.now - self.cfg.lease_ticks

    # ------------------------------------------------------------------ internals: common

    def _check_not_in_ready(self) -> None:
        if self._in_ready:
            raise RuntimeError("raft core: call advance() before using the core again")

    def _require_leader(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for)

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    def _event(self, name: str, **details: object) -> None:
        self._events.append(CoreEvent(name, tuple(sorted(details.items()))))

    def _reset_randomized_timeout(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_election_timeout = e + self.rng.randrange(e)

    def _promotable(self) -> bool:
        """May campaign: a voter in the latest configuration, or in the committed one (a
        leader whose own removal never committed must be able to finish it, or a cluster of
        two could wait for its vote forever)."""
        if self.id in self.membership.voters:
            return True
        if not self._configs or self.membership_index <= self.log.committed:
            return False  # our removal is committed
        # The latest configuration may be uncommitted (after a restart the commit index is
        # not known yet). Changes go one at a time, so the one before it is committed.
        previous = self._configs[-2][1] if len(self._configs) >= 2 else self.log.snapshot.membership
        return self.id in previous.voters

    def _in_lease(self) -> bool:
        """A voter that heard from a live leader recently refuses to help depose it.

        A node that just started may have acknowledged a leader before it crashed, so it
        also refuses for its first election timeout: a restart never shortens a lease.
        """
        if not self.cfg.check_quorum:
            return False
        if self.now < self.cfg.election_ticks and self.role != Role.LEADER:
            return True
        return self.leader_id is not None and self.election_elapsed < self.cfg.election_ticks

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    # ------------------------------------------------------------------ membership

    def _refresh_membership(self) -> None:
        if self._configs:
            self.membership_index, self.membership = self._configs[-1]
        else:
            self.membership_index = self.log.snapshot.index
            self.membership = self.log.snapshot.membership

    def _note_appended(self, entries: Iterable[Entry], truncated_from: int | None) -> None:
        changed = False
        if truncated_from is not None:
            before = len(self._configs)
            self._configs = [(i, m) for i, m in self._configs if i < truncated_from]
            changed = len(self._configs) != before
        for e in entries:
            if e.kind == EntryKind.CONFIG and e.index > (
                self._configs[-1][0] if self._configs else self.log.snapshot.index
            ):
                self._configs.append((e.index, Membership.decode(e.data)))
                changed = True
        if changed:
            old = self.membership
            self._refresh_membership()
            if old != self.membership:
                self._event(
                    "membership_changed",
                    index=self.membership_index,
                    servers=[(s.id, s.suffrage.name) for s in self.membership.servers],
                )
                if self.role == Role.LEADER:
                    self._sync_progress()

    def _change_membership(self, new: Membership) -> int:
        self._check_not_in_ready()
        self._require_leader()
        if self.lead_transferee is not None:
            raise LeadershipTransferInProgress()
        if self.pending_conf_index > self.log.committed or not self._committed_in_term():
            raise ConfigChangeInProgress()
        old_voters, new_voters = self.membership.voters, new.voters
        if len(old_voters ^ new_voters) > 1:
            raise ConfigChangeRejected("only one voter may be added or removed at a time")
        entry = Entry(self.log.last_index + 1, self.term, EntryKind.CONFIG, new.encode())
        self._append_local(entry)
        self.pending_conf_index = entry.index
        return entry.index

    def _sync_progress(self) -> None:
        """Leader: track exactly the servers of the current membership (except itself)."""
        wanted = self.membership.ids - {self.id}
        for node in list(self.progress):
            if node not in wanted:
                del self.progress[node]
        for node in wanted:
            if node not in self.progress:
                pr = Progress(next=self.log.last_index + 1, last_ack_tick=self.now)
                self.progress[node] = pr
                self._send_append(node)

    # ------------------------------------------------------------------ elections

    def _tick_follower(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._campaign(pre_vote=self.cfg.pre_vote, transfer=False)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        self._reset_randomized_timeout()
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            self.leader_id = None
            vote_term = self.term + 1
        else:
            self.term += 1
            self.voted_for = self.id
            self.role = Role.CANDIDATE
            self.leader_id = None
            vote_term = self.term
            self.stats["elections"] += 1
            self._event("election_started", term=self.term, transfer=transfer)
        self.votes = {self.id: True}
        if self._election_won():
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return
        for voter in sorted(self.membership.voters):
            if voter != self.id:
                self._send(
                    RequestVote(
                        self.id,
                        voter,
                        vote_term,
                        self.log.last_index,
                        self.log.last_term,
                        pre_vote,
                        transfer,
                    )
                )

    def _election_won(self) -> bool:
        return has_quorum(self.membership.voters, (n for n, g in self.votes.items() if g))

    def _election_lost(self) -> bool:
        voters = self.membership.voters
        rejected = sum(1 for n, g in self.votes.items() if not g and n in voters)
        return rejected >= majority(len(voters))

    def _handle_request_vote(self, msg: RequestVote) -> None:
        up_to_date = self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)
        if msg.pre_vote:
            # msg.term > self.term was checked by step(); an equal term is a stale round.
            granted = msg.term > self.term and up_to_date
            term = msg.term if granted else self.term
            self._send(RequestVoteResponse(self.id, msg.src, term, granted, True))
            return
        granted = up_to_date and self.voted_for in (None, msg.src)
        if granted:
            self.voted_for = msg.src
            self.election_elapsed = 0
        self._send(RequestVoteResponse(self.id, msg.src, self.term, granted, False))

    def _handle_vote_response(self, msg: RequestVoteResponse) -> None:
        if msg.pre_vote:
            # Grants carry the term we would campaign in; rejections carry the voter's term,
            # which step() already checked is ours.
            if self.role != Role.PRE_CANDIDATE or (msg.granted and msg.term != self.term + 1):
                return
        elif self.role != Role.CANDIDATE:
            return
        if msg.src not in self.membership.voters:
            return
        self.votes.setdefault(msg.src, msg.granted)
        if self._election_won():
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif self._election_lost():
            self._become_follower(self.term, None)

    def _handle_timeout_now(self, msg: TimeoutNow) -> None:
        if self._promotable() and self.role != Role.LEADER:
            self._event("leadership_transfer_received", from_=msg.src)
            self._campaign(pre_vote=False, transfer=True)

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        was_leader = self.role == Role.LEADER
        if term > self.term:
            self.term = term
            self.voted_for = None
        self.role = Role.FOLLOWER
        if leader != self.leader_id:
            self.stats["leader_changes"] += 1
        self.leader_id = leader
        self.election_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        if was_leader:
            self._event("stepped_down", term=self.term, leader=leader)
            self.progress = {}
            self.lead_transferee = None
            self._reads_pending = []
            self._reads_waiting = []
            self._read_seq_started = {}
            self._need_broadcast = False

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self.stats["leader_changes"] += 1
        self._event("became_leader", term=self.term, last_index=self.log.last_index)
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.lead_transferee = None
        self.progress = {}
        self._read_seq_started = {}
        for node in self.membership.ids - {self.id}:
            self.progress[node] = Progress(next=self.log.last_index + 1, last_ack_tick=self.now)
        # No membership change until everything before our term (and our no-op) commits.
        self._append_local(Entry(self.log.last_index + 1, self.term, EntryKind.NOOP))
        self.pending_conf_index = self.log.last_index

    # ------------------------------------------------------------------ leader: replication

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = [n for n, pr in self.progress.items() if pr.recent_active]
                if not has_quorum(self.membership.voters, [self.id, *active]):
                    self._event("quorum_lost", term=self.term)
                    self._become_follower(self.term, None)
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
            if self.lead_transferee is not None:
                self._event("leadership_transfer_abandoned", target=self.lead_transferee)
                self.lead_transferee = None
        stall = self.cfg.election_ticks // 2
        for node, pr in self.progress.items():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.cfg.snapshot_retry_ticks:
                    pr.become_probe()
                    self._send_append(node)
            elif (
                pr.state == ProgressState.REPLICATE
                and pr.inflight
                and self.now - pr.last_ack_tick > stall
            ):
                # An append was lost and nothing came after it to expose the gap: re-probe.
                pr.become_probe()
                pr.last_ack_tick = self.now
                self._send_append(node)
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _append_local(self, entry: Entry) -> None:
        self.log.append_local(entry)
        self._note_appended((entry,), None)
        if self.role == Role.LEADER:
            self._need_broadcast = True
            if len(self.membership.voters) <= 1:
                self._maybe_commit()

    def _broadcast_append(self) -> None:
        self._need_broadcast = False
        for node in self.progress:
            self._send_append(node)

    def _new_read_round(self) -> int:
        self.read_seq += 1
        self._read_seq_started[self.read_seq] = self.now
        # Keep a bounded window: an ack for a round older than this only loses its lease
        # contribution (conservative), never correctness.
        if len(self._read_seq_started) > READ_ROUNDS_KEPT:
            del self._read_seq_started[next(iter(self._read_seq_started))]
        return self.read_seq

    def _broadcast_heartbeat(self) -> None:
        seq = self._new_read_round()
        self._unsent_round = seq
        for node, pr in self.progress.items():
            if pr.state == ProgressState.PROBE and not pr.probe_sent:
                self._send_append(node)
                continue
            prev_term = self.log.term(pr.match)
            if prev_term is None:
                if pr.state != ProgressState.SNAPSHOT:
                    # The follower needs entries we compacted away: switch to a snapshot.
                    pr.become_probe()
                    self._send_append(node)
                continue
            self._send_heartbeat(node, pr, prev_term, seq)

    def _send_heartbeat(self, node: NodeId, pr: Progress, prev_term: int, seq: int) -> None:
        """An empty AppendEntries at the follower's known match: it resets the follower's
        election timer, carries the commit index it can apply, and confirms round ``seq``."""
        self._send(
            AppendEntries(
                self.id,
                node,
                self.term,
                pr.match,
                prev_term,
                (),
                min(self.log.committed, pr.match),
                seq,
            )
        )
        self.stats["heartbeats_sent"] += 1

    def _send_append(self, node: NodeId) -> None:
        """Send as many AppendEntries to ``node`` as flow control allows."""
        pr = self.progress[node]
        while pr.can_send(self.cfg.max_inflight):
            prev = pr.next - 1
            prev_term = self.log.term(prev)
            if prev_term is None:
                self._send_snapshot(node, pr)
                return
            entries = self.log.slice(
                pr.next, pr.next + self.cfg.max_entries_per_msg, self.cfg.max_bytes_per_msg
            )
            if not entries and pr.state == ProgressState.REPLICATE:
                return
            self._send(
                AppendEntries(
                    self.id,
                    node,
                    self.term,
                    prev,
                    prev_term,
                    tuple(entries),
                    self.log.committed,
                    self.read_seq,
                )
            )
            self.stats["appends_sent"] += 1
            self.stats["entries_sent"] += len(entries)
            if pr.state == ProgressState.PROBE:
                pr.probe_sent = True
                return
            pr.next = entries[-1].index + 1
            pr.inflight.append(entries[-1].index)

    def _send_snapshot(self, node: NodeId, pr: Progress) -> None:
        meta = self.log.snapshot
        if meta.index == 0:
            return  # nothing to send yet; cannot happen once compaction happened
        pr.become_snapshot(meta.index)
        self.stats["snapshots_sent"] += 1
        self._event("snapshot_send", to=node, index=meta.index)
        self._send(InstallSnapshot(self.id, node, self.term, meta, self.log.committed))

    def _handle_append_response(self, msg: AppendEntriesResponse) -> None:
        if self.role != Role.LEADER:
            return
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.read_seq:
            self._note_read_ack(msg.src, pr, msg.read_seq)
        if not msg.success:
            if msg.conflict_term:
                last_of_term = self.log.last_index_of_term(msg.conflict_term)
                new_next = last_of_term + 1 if last_of_term is not None else msg.conflict_index
            else:
                new_next = msg.last_log_index + 1
            new_next = max(pr.match + 1, min(new_next, pr.next, self.log.last_index + 1))
            if pr.state == ProgressState.PROBE and pr.probe_sent and new_next == pr.next:
                return  # a duplicate rejection of the probe already outstanding
            if pr.state == ProgressState.SNAPSHOT:
                return
            pr.become_probe()
            pr.next = new_next
            self._send_append(msg.src)
            return
        moved = pr.acknowledge(msg.last_log_index)
        if moved or not pr.inflight:
            pr.last_ack_tick = self.now
        if pr.state == ProgressState.PROBE:
            if moved or pr.match + 1 == pr.next:
                pr.become_replicate()
            else:
                pr.probe_sent = False
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_replicate()
        if moved:
            self._maybe_commit()
            if self.role != Role.LEADER:
                return
            if msg.src == self.lead_transferee and pr.match == self.log.last_index:
                self._send_timeout_now(msg.src)
        self._maybe_promote(msg.src, pr)
        self._send_append(msg.src)

    def _handle_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        if self.role != Role.LEADER:
            return
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.success:
            pr.acknowledge(msg.last_log_index)
            pr.become_replicate()
            self._maybe_commit()
            if self.role == Role.LEADER:
                self._maybe_promote(msg.src, pr)
        else:
            pr.become_probe()
        if self.role == Role.LEADER:
            self._send_append(msg.src)

    def _send_timeout_now(self, target: NodeId) -> None:
        self._transfer_sent_term = self.term
        self._send(TimeoutNow(self.id, target, self.term))

    def _maybe_promote(self, node: NodeId, pr: Progress) -> None:
        server = self.membership.get(node)
        if (
            server is not None
            and server.suffrage == Suffrage.STAGING
            and pr.match >= self.log.committed
            and self.pending_conf_index <= self.log.committed
            and self.lead_transferee is None
            and self._committed_in_term()
        ):
            self._event("promoting", server=node)
            self._change_membership(
                self.membership.with_server(Server(node, server.address, Suffrage.VOTER))
            )

    def _maybe_commit(self) -> None:
        matches = {n: pr.match for n, pr in self.progress.items()}
        matches[self.id] = self.log.stable
        candidate = quorum_index(self.membership.voters, matches)
        if candidate > self.log.committed and self.log.term(candidate) == self.term:
            self.log.committed = candidate
            self._on_commit_advanced()

    def _on_commit_advanced(self) -> None:
        if self._reads_waiting and self._committed_in_term():
            waiting, self._reads_waiting = self._reads_waiting, []
            for request_id in waiting:
                self._register_read(request_id)
        if self.id not in self.membership.voters and self.membership_index <= self.log.committed:
            # We committed our own removal (or demotion): hand over by stepping down.
            self._event("removed_self", index=self.membership_index)
            self._become_follower(self.term, None)

    # ------------------------------------------------------------------ leader: reads

    def _register_read(self, request_id: int) -> None:
        index = self.log.committed
        if self.membership.voters == {self.id} or (self.cfg.lease_reads and self.lease_valid()):
            self._read_states.append(ReadState(request_id, index))
            return
        if self._unsent_round and self._unsent_round == self.read_seq:
            seq = self.read_seq  # a round whose messages have not left yet: share it
        else:
            seq = self._new_read_round()
            self._unsent_round = seq
            for node, pr in self.progress.items():
                prev_term = self.log.term(pr.match)
                if prev_term is not None:
                    self._send_heartbeat(node, pr, prev_term, seq)
        self._reads_pending.append((request_id, index, seq))

    def _note_read_ack(self, node: NodeId, pr: Progress, seq: int) -> None:
        if seq <= pr.read_ack:
            return
        pr.read_ack = seq
        started = self._read_seq_started.get(seq)
        if started is not None:
            pr.contact_tick = max(pr.contact_tick, started)
        if self._reads_pending:
            acks = {n: p.read_ack for n, p in self.progress.items()}
            acks[self.id] = self.read_seq
            confirmed = quorum_index(self.membership.voters, acks)
            n = 0
            while n < len(self._reads_pending) and self._reads_pending[n][2] <= confirmed:
                request_id, index, _ = self._reads_pending[n]
                self._read_states.append(ReadState(request_id, index))
                n += 1
            del self._reads_pending[:n]

    # ------------------------------------------------------------------ follower side

    def _handle_append(self, msg: AppendEntries) -> None:
        if self.role != Role.FOLLOWER:
            self._become_follower(self.term, msg.src)
        self.leader_id = msg.src
        self.election_elapsed = 0
        prev, prev_term, entries = msg.prev_log_index, msg.prev_log_term, list(msg.entries)
        if prev < self.log.committed:
            # Our log up to the commit index equals every later leader's: skip that part.
            entries = entries[self.log.committed - prev :]
            prev = self.log.committed
            prev_term = self.log.term(prev) or 0
        if self.log.term(prev) != prev_term:
            conflict_index, conflict_term = self.log.find_conflict_hint(prev)
            self._send(
                AppendEntriesResponse(
                    self.id,
                    msg.src,
                    self.term,
                    False,
                    self.log.last_index,
                    conflict_index,
                    conflict_term,
                    msg.read_seq,
                )
            )
            return
        truncated_from = self.log.append(entries)
        self._note_appended(entries, truncated_from)
        match = prev + len(entries)
        new_commit = min(msg.leader_commit, match)
        if new_commit > self.log.committed:
            self.log.committed = new_commit
        self._send(
            AppendEntriesResponse(self.id, msg.src, self.term, True, match, read_seq=msg.read_seq)
        )

    def _handle_install_snapshot(self, msg: InstallSnapshot) -> None:
        if self.role != Role.FOLLOWER:
            self._become_follower(self.term, msg.src)
        self.leader_id = msg.src
        self.election_elapsed = 0
        meta = msg.meta
        if meta.index <= self.log.committed:
            self._send(
                InstallSnapshotResponse(self.id, msg.src, self.term, True, self.log.committed)
            )
            return
        if self.log.term(meta.index) == meta.term:
            # Our log already holds the snapshot's last entry: just commit up to it.
            self.log.committed = meta.index
            self._send(InstallSnapshotResponse(self.id, msg.src, self.term, True, meta.index))
            return
        self.log.restore(meta)
        self._configs = []
        self._refresh_membership()
        self._snapshot_to_install = meta
        self.stats["snapshots_installed"] += 1
        self._event("snapshot_installed", index=meta.index, term=meta.term)
        self._send(InstallSnapshotResponse(self.id, msg.src, self.term, True, meta.index))
