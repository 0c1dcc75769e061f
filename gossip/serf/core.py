"""Serf: the layer above memberlist, sans-I/O.

``Serf`` owns a ``Memberlist`` and implements the same driver interface (``tick``,
``next_deadline``, ``handle_packet``, ``handle_stream_ping``, ``stream_ping_result``,
``local_state``, ``merge_remote_state``, ``take_outputs``). It adds, as Serf does:

- Member status (alive, leaving, left, failed) and tags, carried in memberlist meta.
- Three Lamport clocks: members (join/leave intents), user events, queries.
- Join and leave intents, stamped with the member clock, so reordered gossip resolves to the
  latest; an intent about a member we do not know yet is kept for
  ``recent_intent_timeout`` and applied when it joins.
- User events, de-duplicated by (ltime, name, payload) over the last ``event_buffer``
  Lamport times, optionally coalesced (``coalesce_period``).
- Queries with node and tag filters, acks and responses sent straight back to the
  originator, a timeout that grows with the cluster, ``QueryDone`` at the deadline.
- Reconnect attempts to failed members, reaping of failed and left members, snapshot
  records for the driver to persist, name-conflict events.

Serf messages ride memberlist: broadcasts via ``queue_user_broadcast``, arriving as
``UserMessage`` outputs, which this layer consumes; every message seen for the first time is
re-broadcast (epidemic spread beyond the originator's retransmit budget). Acks and responses
to a query are ``SendPacket`` outputs of one ``UserMsg`` to the originator's address.

Outputs (``take_outputs``): memberlist's I/O outputs unchanged (``SendPacket``,
``StreamPing``; ``OpenPushPull`` with Serf's user state attached when memberlist left it
empty), our own ``SendPacket`` s, the ``SerfEvent`` s of ``gossip.serf.events`` and the
``SnapshotRecord`` s of ``gossip.serf.snapshot``. memberlist's ``MemberEvent`` and
``UserMessage`` are consumed here, never passed on.

Not implemented (documented departures from Serf): query relays (relay_factor), the
no-broadcast query flag, prune on leave, coalescing of member events, Serf's internal
queries (conflict resolution, key management), per-member reconnect-timeout tags.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

from gossip import wire
from gossip.config import GossipConfig
from gossip.memberlist import (
    Member as MLMember,
)
from gossip.memberlist import (
    MemberEvent as MLMemberEvent,
)
from gossip.memberlist import (
    Memberlist,
    OpenPushPull,
    SendPacket,
    StreamPing,
    UserMessage,
)
from gossip.messages import Ack, Address, MemberState, Message, Ping, PushPull, UserMsg
from gossip.serf import messages as sm
from gossip.serf.config import SerfConfig, SerfConfigError
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
from gossip.serf.snapshot import (
    SnapshotAlive,
    SnapshotClocks,
    SnapshotLeave,
    SnapshotNotAlive,
    SnapshotRecord,
    SnapshotState,
)

SerfOutput = SendPacket | OpenPushPull | StreamPing | SerfEvent | SnapshotRecord

# Bytes a user event's encoding adds to its name and payload (type, ltime, two lengths, flag).
_USER_EVENT_OVERHEAD = 1 + 10 + 3 + 3 + 1


class SerfError(ValueError):
    """A request the Serf core refuses (too large, bad filter, unknown query, ...)."""


class SerfState(IntEnum):
    ALIVE = 0
    LEAVING = 1  # leave() called; the leave is propagating
    LEFT = 2  # leave_propagate_delay passed: the driver may stop


@dataclass(slots=True)
class _MemberState:
    name: str
    addr: Address
    tags: dict[str, str]
    status: MemberStatus
    status_ltime: int = 0  # member-clock time of the latest intent applied
    leave_time: float = 0.0  # when it failed or left (for reaping)

    def public(self) -> Member:
        return Member(self.name, self.addr, dict(self.tags), self.status)


@dataclass(slots=True)
class _Intent:
    leave: bool
    ltime: int
    seen: float


@dataclass(slots=True)
class _EventSlot:
    ltime: int
    events: list[sm.UserEventMsg]


@dataclass(slots=True)
class _QuerySlot:
    ltime: int
    ids: list[int]


@dataclass(slots=True)
class _OutgoingQuery:
    deadline: float
    acks: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _IncomingQuery:
    source: str
    addr: Address
    deadline: float


@dataclass(slots=True)
class SerfStats:
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def get(self, key: str) -> int:
        return self.counters.get(key, 0)


@functools.lru_cache(maxsize=256)
def _compile_filter(expr: str) -> re.Pattern[str] | None:
    try:
        return re.compile(expr)
    except (re.error, RecursionError, OverflowError):
        return None


def default_query_timeout(gossip_interval: float, mult: int, n: int) -> float:
    """Serf's DefaultQueryTimeout: gossip_interval * mult * ceil(log10(n + 1))."""
    return gossip_interval * mult * math.ceil(math.log10(n + 1))


class Serf:
    def __init__(
        self,
        config: SerfConfig,
        memberlist_config: GossipConfig,
        rng: random.Random,
        now: float,
        tags: Mapping[str, str],
        snapshot: SnapshotState | None = None,
    ) -> None:
        config.validate()
        self.cfg = config
        self.name = memberlist_config.name
        self.rng = rng
        self.stats = SerfStats()
        self._check_sizes(config, memberlist_config)
        self._tags = dict(tags)
        meta = self._encode_tags(self._tags)
        self.memberlist = Memberlist(memberlist_config, rng, now, meta)
        self.state = SerfState.ALIVE
        self.member_clock = LamportClock()
        self.event_clock = LamportClock()
        self.query_clock = LamportClock()
        self._event_min_time = 0
        self._query_min_time = 0
        self._members: dict[str, _MemberState] = {}
        self._failed: list[str] = []  # names, oldest failure first
        self._left: list[str] = []
        self._intents: dict[str, _Intent] = {}
        self._event_buffer: list[_EventSlot | None] = [None] * config.event_buffer
        self._query_buffer: list[_QuerySlot | None] = [None] * config.query_buffer
        self._queries: dict[QueryId, _OutgoingQuery] = {}
        self._query_deadlines: list[tuple[float, QueryId]] = []
        self._incoming: dict[QueryId, _IncomingQuery] = {}
        self._incoming_deadlines: list[tuple[float, QueryId]] = []
        self._coalesced: dict[str, tuple[int, list[UserEvent]]] = {}
        self._coalesce_flush: float | None = None
        self._outputs: list[SerfOutput] = []
        self._next_reap = now + config.reap_interval
        self._next_reconnect = now + config.reconnect_interval
        self._next_clock_record = now + config.snapshot_clock_interval
        self._recorded_clocks = (0, 0, 0)
        self._leave_done: float | None = None
        self._ignore_old_until = -math.inf
        self._last_tick = now
        self._previous: list[tuple[str, Address]] = []
        if snapshot is not None:
            self._restore(snapshot)
        me = _MemberState(
            self.name, memberlist_config.advertise, dict(self._tags), MemberStatus.ALIVE
        )
        self._members[self.name] = me
        self._emit_member(MemberEventKind.JOIN, me)
        self._outputs.append(SnapshotAlive(self.name, me.addr))
        self._pump(now)

    def _check_sizes(self, cfg: SerfConfig, ml: GossipConfig) -> None:
        """Every message we may send must fit one packet next to nothing else."""
        budget = ml.packet_size - wire.PACKET_OVERHEAD
        limits = (
            ("user_event_size_limit", cfg.user_event_size_limit + _USER_EVENT_OVERHEAD),
            ("query_size_limit", cfg.query_size_limit),
            ("query_response_size_limit", cfg.query_response_size_limit),
        )
        for name, size in limits:
            framed = wire.encoded_size(UserMsg(bytes(size)))
            if framed > budget:
                raise SerfConfigError(
                    f"serf: {name}={getattr(cfg, name)} does not fit one gossip packet "
                    f"(packet_size={ml.packet_size} leaves {budget} bytes; this needs {framed})"
                )

    def _restore(self, snap: SnapshotState) -> None:
        self.member_clock.witness(snap.member_clock)
        self.event_clock.witness(snap.event_clock)
        self.query_clock.witness(snap.query_clock)
        # Do not deliver again what we saw before the restart (Serf does the same).
        self._event_min_time = snap.event_clock + 1
        self._query_min_time = snap.query_clock + 1
        self._recorded_clocks = (snap.member_clock, snap.event_clock, snap.query_clock)
        if snap.left and not self.cfg.rejoin_after_leave:
            return
        advertise = self.memberlist.cfg.advertise
        self._previous = sorted(
            (name, addr)
            for name, addr in snap.members.items()
            if name != self.name and addr != advertise
        )

    # ------------------------------------------------------------------ driver interface

    def take_outputs(self) -> list[SerfOutput]:
        out, self._outputs = self._outputs, []
        return out

    def next_deadline(self) -> float:
        ml = self.memberlist.next_deadline()
        if ml <= self._last_tick:
            # memberlist ran every timer due at _last_tick, so a deadline at or before it
            # would only make the driver spin; wait for a gossip interval instead.
            ml = self._last_tick + self.memberlist.cfg.gossip_interval
        candidates = [ml, self._next_reap, self._next_reconnect]
        if self._query_deadlines:
            candidates.append(self._query_deadlines[0][0])
        if self._coalesce_flush is not None:
            candidates.append(self._coalesce_flush)
        if self._leave_done is not None and self.state == SerfState.LEAVING:
            candidates.append(self._leave_done)
        return min(candidates)

    def tick(self, now: float) -> None:
        self._last_tick = max(self._last_tick, now)
        self.memberlist.tick(now)
        self._pump(now)
        while self._query_deadlines and self._query_deadlines[0][0] <= now:
            _, qid = heapq.heappop(self._query_deadlines)
            q = self._queries.pop(qid, None)
            if q is not None:
                self._outputs.append(QueryDone(qid, tuple(q.acks), tuple(q.responses)))
        while self._incoming_deadlines and self._incoming_deadlines[0][0] < now:
            _, qid = heapq.heappop(self._incoming_deadlines)
            inc = self._incoming.get(qid)
            if inc is not None and inc.deadline < now:
                del self._incoming[qid]
        if self._coalesce_flush is not None and now >= self._coalesce_flush:
            self._flush_coalesced()
        if (
            self.state == SerfState.LEAVING
            and self._leave_done is not None
            and now >= self._leave_done
        ):
            self.state = SerfState.LEFT
        if now >= self._next_reap:
            self._next_reap = now + self.cfg.reap_interval
            self._reap(now)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.cfg.reconnect_interval
            if self.state == SerfState.ALIVE:
                self._reconnect(now)
        if now >= self._next_clock_record:
            self._next_clock_record = now + self.cfg.snapshot_clock_interval
            self._record_clocks()
        self._pump(now)

    def handle_packet(self, messages: Sequence[Message], now: float) -> None:
        plain: list[Message] = []
        for msg in messages:
            if isinstance(msg, PushPull):
                # Full state in a packet: merge it here, so Serf's user state is not lost.
                if plain:
                    self.memberlist.handle_packet(plain, now)
                    self._pump(now)
                    plain = []
                self.merge_remote_state(msg, now)
            else:
                plain.append(msg)
        if plain:
            self.memberlist.handle_packet(plain, now)
        self._pump(now)

    def handle_stream_ping(self, ping: Ping) -> Ack | None:
        return self.memberlist.handle_stream_ping(ping)

    def stream_ping_result(self, seq: int, ok: bool, now: float) -> None:
        self.memberlist.stream_ping_result(seq, ok, now)
        self._pump(now)

    def local_state(self, join: bool = False) -> PushPull:
        return self.memberlist.local_state(join, self._encode_state())

    def merge_remote_state(self, remote: PushPull, now: float) -> None:
        """Memberlist state first, then Serf's (as memberlist does with its delegate)."""
        self.memberlist.merge_remote_state(remote, now)
        self._pump(now)
        if not remote.user_state:
            return
        try:
            msg = sm.decode(remote.user_state)
        except sm.SerfDecodeError:
            self.stats.count("decode_errors")
            return
        if not isinstance(msg, sm.PushPullState):
            self.stats.count("decode_errors")
            return
        self._merge_state(msg, now)
        self._pump(now)

    # ------------------------------------------------------------------ application API

    def join(self, addresses: Iterable[Address], ignore_old: bool, now: float) -> int:
        """Push-pull with each address (the driver carries out the ``OpenPushPull`` s) and
        announce ourselves with a join intent. ``ignore_old``: user events that happened
        before we joined are not delivered (Consul joins this way). Returns how many
        exchanges were started."""
        n = self.memberlist.join(addresses, self._encode_state())
        if ignore_old and n:
            self._ignore_old_until = now + self.memberlist.cfg.tcp_timeout
        if self.state == SerfState.ALIVE:
            self._broadcast_join(self.member_clock.time(), now)
        self._pump(now)
        return n

    def leave(self, now: float) -> None:
        """Start a graceful leave: broadcast a leave intent, then leave memberlist. The state
        is LEAVING until ``leave_propagate_delay`` passes, then LEFT (the driver may stop)."""
        if self.state != SerfState.ALIVE:
            return
        self.state = SerfState.LEAVING
        ltime = self.member_clock.time()
        self.member_clock.increment()
        msg = sm.LeaveIntent(ltime, self.name)
        self._handle_leave_intent(msg, now)
        self._broadcast(sm.encode(msg), "intent:" + self.name)
        self._record_clocks()
        self._outputs.append(SnapshotLeave())
        self.memberlist.leave(now)
        me = self._members[self.name]
        if me.status in (MemberStatus.ALIVE, MemberStatus.LEAVING):
            me.status = MemberStatus.LEFT
            me.leave_time = now
            self._left.append(self.name)
            self._emit_member(MemberEventKind.LEAVE, me)
        self._leave_done = now + self.cfg.leave_propagate_delay
        self._pump(now)

    def force_leave(self, name: str, prune: bool, now: float) -> bool:
        """Serf's ``RemoveFailedNode``: announce, on a failed member's behalf, that it left (a
        member that is alive refutes it). With ``prune`` a member that ends up left is also
        forgotten here at once instead of after ``tombstone_timeout``. False if unknown."""
        m = self._members.get(name)
        if m is None or name == self.name:
            return False
        ltime = self.member_clock.time()
        self.member_clock.increment()
        msg = sm.LeaveIntent(ltime, name)
        if self._handle_leave_intent(msg, now):
            self._broadcast(sm.encode(msg), "intent:" + name)
        if prune and m.status == MemberStatus.LEFT and name in self._left:
            self._left.remove(name)
            del self._members[name]
            self.stats.count("reaped")
            self._emit_member(MemberEventKind.REAP, m)
        self._pump(now)
        return True

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    def set_tags(self, tags: Mapping[str, str], now: float) -> None:
        """Replace our tags and announce them (memberlist meta with a higher incarnation).
        Raises ``SerfError`` if they encode to more than memberlist's meta limit."""
        new = dict(tags)
        meta = self._encode_tags(new)
        self._tags = new
        self.memberlist.set_meta(meta, now)
        me = self._members[self.name]
        me.tags = dict(new)
        self._emit_member(MemberEventKind.UPDATE, me)
        self._pump(now)

    def user_event(self, name: str, payload: bytes, coalesce: bool, now: float) -> int:
        """Broadcast a user event (delivered here too); returns its event-clock time.
        Raises ``SerfError`` if name and payload exceed ``user_event_size_limit``."""
        if not isinstance(name, str) or not isinstance(payload, (bytes, bytearray)):
            raise SerfError("user event: name must be a str and payload bytes")
        size = len(name.encode("utf-8", "surrogatepass")) + len(payload)
        if size > self.cfg.user_event_size_limit:
            raise SerfError(
                f"user event {name!r}: name and payload are {size} bytes, more than "
                f"user_event_size_limit={self.cfg.user_event_size_limit}"
            )
        ltime = self.event_clock.time()
        msg = sm.UserEventMsg(ltime, name, bytes(payload), coalesce)
        try:
            raw = sm.encode(msg)
        except sm.SerfEncodeError as exc:
            raise SerfError(f"user event {name!r}: {exc}") from None
        self.event_clock.increment()
        self._handle_user_event(msg, now)
        self._broadcast(raw, None)
        self._pump(now)
        return ltime

    def default_query_timeout(self) -> float:
        return default_query_timeout(
            self.memberlist.cfg.gossip_interval,
            self.cfg.query_timeout_mult,
            self.memberlist.num_members(),
        )

    def query(
        self,
        name: str,
        payload: bytes,
        *,
        filter_nodes: Iterable[str] | None = None,
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        timeout: float | None = None,
        now: float,
    ) -> QueryId:
        """Broadcast a query (handled here too when we match). Members matching the filters
        deliver a ``Query`` event; acks (if requested) and responses come back as
        ``QueryAck`` / ``QueryResponse``, and ``QueryDone`` at the deadline.

        ``filter_nodes``: only these node names answer. ``filter_tags``: tag name → regular
        expression that the member's tag value must contain a match of (``re.search``; a
        missing tag is ""), every one. ``timeout`` defaults to ``default_query_timeout()``.
        Raises ``SerfError`` for a bad regex, a bad timeout or an oversized query."""
        if timeout is None:
            timeout = self.default_query_timeout()
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= sm.MAX_TIMEOUT_MS / 1000:
            raise SerfError(f"query {name!r}: timeout={timeout!r} must be > 0 seconds")
        nodes = None if filter_nodes is None else tuple(filter_nodes)
        tag_filters = tuple(sorted((filter_tags or {}).items()))
        for tag, expr in tag_filters:
            try:
                re.compile(expr)
            except (re.error, RecursionError, OverflowError, TypeError) as exc:
                raise SerfError(
                    f"query {name!r}: filter for tag {tag!r} is not a valid regular "
                    f"expression ({expr!r}: {exc})"
                ) from None
        ltime = self.query_clock.time()
        qid = self.rng.getrandbits(32)
        msg = sm.QueryMsg(
            ltime,
            qid,
            self.name,
            self.memberlist.cfg.advertise,
            request_ack,
            float(timeout),
            nodes,
            tag_filters,
            name,
            bytes(payload),
        )
        try:
            raw = sm.encode(msg)
        except sm.SerfEncodeError as exc:
            raise SerfError(f"query {name!r}: {exc}") from None
        if len(raw) > self.cfg.query_size_limit:
            raise SerfError(
                f"query {name!r} encodes to {len(raw)} bytes, more than "
                f"query_size_limit={self.cfg.query_size_limit}"
            )
        self.query_clock.increment()
        key = QueryId(ltime, qid)
        deadline = now + timeout
        self._queries[key] = _OutgoingQuery(deadline)
        heapq.heappush(self._query_deadlines, (deadline, key))
        self._handle_query(msg, now)
        self._broadcast(raw, None)
        self._pump(now)
        return key

    def respond(self, query_id: QueryId, payload: bytes, now: float) -> None:
        """Answer a ``Query`` event (once, before its deadline). Raises ``SerfError`` if the
        query is unknown, already answered or expired, or the response is too large."""
        inc = self._incoming.get(query_id)
        if inc is None:
            raise SerfError(f"no open query {query_id}: unknown, already answered or expired")
        if now > inc.deadline:
            del self._incoming[query_id]
            raise SerfError(f"query {query_id}: the response is past the deadline")
        msg = sm.QueryResponseMsg(query_id.ltime, query_id.id, self.name, False, bytes(payload))
        raw = sm.encode(msg)
        if len(raw) > self.cfg.query_response_size_limit:
            raise SerfError(
                f"query {query_id}: response encodes to {len(raw)} bytes, more than "
                f"query_response_size_limit={self.cfg.query_response_size_limit}"
            )
        del self._incoming[query_id]
        self._send_response(inc.source, inc.addr, msg, raw, now)
        self._pump(now)

    # ------------------------------------------------------------------ status

    def members(self) -> list[Member]:
        return [m.public() for m in self._members.values()]

    def member(self, name: str) -> Member | None:
        m = self._members.get(name)
        return m.public() if m is not None else None

    def local_member(self) -> Member:
        return self._members[self.name].public()

    def num_members(self) -> int:
        """Members that are alive (or leaving), ourselves included."""
        return sum(
            1
            for m in self._members.values()
            if m.status in (MemberStatus.ALIVE, MemberStatus.LEAVING)
        )

    def previous_members(self) -> list[Address]:
        """Addresses of the members the snapshot knew (not ourselves), for the driver to
        rejoin (Serf rejoins with ignore_old); empty after a graceful leave unless
        ``rejoin_after_leave``."""
        return [addr for _, addr in self._previous]

    def clocks(self) -> tuple[int, int, int]:
        """(member, event, query) clock values."""
        return (self.member_clock.time(), self.event_clock.time(), self.query_clock.time())

    # ------------------------------------------------------------------ memberlist glue

    def _pump(self, now: float) -> None:
        """Translate memberlist's outputs until it has none left (our reactions may make
        more)."""
        while True:
            outs = self.memberlist.take_outputs()
            if not outs:
                return
            for out in outs:
                if isinstance(out, SendPacket | StreamPing):
                    self._outputs.append(out)
                elif isinstance(out, OpenPushPull):
                    if not out.state.user_state:
                        state = dataclasses.replace(out.state, user_state=self._encode_state())
                        out = OpenPushPull(out.addr, state)
                    self._outputs.append(out)
                elif isinstance(out, MLMemberEvent):
                    self._on_member_event(out, now)
                elif isinstance(out, UserMessage):
                    self._on_user_message(out.payload, now)

    def _broadcast(self, raw: bytes, key: str | None) -> None:
        self.memberlist.queue_user_broadcast(raw, key)

    def _encode_tags(self, tags: dict[str, str]) -> bytes:
        try:
            meta = sm.encode_tags(tags)
        except sm.SerfEncodeError as exc:
            raise SerfError(f"tags: {exc}") from None
        if len(meta) > wire.MAX_META_BYTES:
            raise SerfError(
                f"tags encode to {len(meta)} bytes, more than the "
                f"{wire.MAX_META_BYTES} bytes memberlist meta can carry"
            )
        return meta

    def _decode_tags(self, meta: bytes) -> dict[str, str]:
        try:
            return sm.decode_tags(meta)
        except sm.SerfDecodeError:
            self.stats.count("bad_tags")
            return {}

    def _emit_member(self, kind: MemberEventKind, m: _MemberState) -> None:
        self._outputs.append(MemberEvent(kind, (m.public(),)))

    def _on_member_event(self, ev: MLMemberEvent, now: float) -> None:
        if ev.kind == "join":
            self._node_join(ev.member, now)
        elif ev.kind == "leave":
            self._node_leave(ev.member, now)
        elif ev.kind == "update":
            self._node_update(ev.member)
        elif ev.kind == "conflict":
            self._node_conflict(ev.member)

    def _node_join(self, n: MLMember, now: float) -> None:
        tags = self._decode_tags(n.meta)
        m = self._members.get(n.name)
        if m is None:
            m = _MemberState(n.name, n.addr, tags, MemberStatus.ALIVE)
            intent = self._intents.pop(n.name, None)
            if intent is not None:
                m.status_ltime = intent.ltime
                if intent.leave:
                    m.status = MemberStatus.LEAVING
            self._members[n.name] = m
        else:
            old = m.status
            m.status = MemberStatus.ALIVE
            m.leave_time = 0.0
            m.addr = n.addr
            m.tags = tags
            if old in (MemberStatus.FAILED, MemberStatus.LEFT):
                self._forget_departure(n.name)
        self._emit_member(MemberEventKind.JOIN, m)
        self._outputs.append(SnapshotAlive(m.name, m.addr))

    def _forget_departure(self, name: str) -> None:
        if name in self._failed:
            self._failed.remove(name)
        if name in self._left:
            self._left.remove(name)

    def _node_leave(self, n: MLMember, now: float) -> None:
        m = self._members.get(n.name)
        if m is None:
            return
        if m.status == MemberStatus.LEAVING or (
            m.status == MemberStatus.ALIVE and n.state == MemberState.LEFT
        ):
            m.status = MemberStatus.LEFT
            self._left.append(m.name)
            kind = MemberEventKind.LEAVE
        elif m.status == MemberStatus.ALIVE:
            m.status = MemberStatus.FAILED
            self._failed.append(m.name)
            kind = MemberEventKind.FAILED
        else:
            return
        m.leave_time = now
        self._emit_member(kind, m)
        self._outputs.append(SnapshotNotAlive(m.name))

    def _node_update(self, n: MLMember) -> None:
        m = self._members.get(n.name)
        if m is None:
            return
        m.addr = n.addr
        m.tags = self._decode_tags(n.meta)
        self._emit_member(MemberEventKind.UPDATE, m)

    def _node_conflict(self, n: MLMember) -> None:
        self.stats.count("conflicts")
        known = self._members.get(n.name)
        self._outputs.append(
            MemberConflict(n.name, known.addr if known else None, n.addr, n.name == self.name)
        )

    def _on_user_message(self, payload: bytes, now: float) -> None:
        try:
            msg = sm.decode(payload)
        except sm.SerfDecodeError:
            self.stats.count("decode_errors")
            return
        rebroadcast = False
        key: str | None = None
        if isinstance(msg, sm.JoinIntent):
            rebroadcast = self._handle_join_intent(msg, now)
            key = "intent:" + msg.node
        elif isinstance(msg, sm.LeaveIntent):
            rebroadcast = self._handle_leave_intent(msg, now)
            key = "intent:" + msg.node
        elif isinstance(msg, sm.UserEventMsg):
            rebroadcast = self._handle_user_event(msg, now)
        elif isinstance(msg, sm.QueryMsg):
            rebroadcast = self._handle_query(msg, now)
        elif isinstance(msg, sm.QueryResponseMsg):
            self._handle_query_response(msg, now)
        else:
            self.stats.count("decode_errors")  # push-pull state has no business in a packet
        if rebroadcast:
            self.stats.count("rebroadcasts")
            self._broadcast(payload, key)

    # ------------------------------------------------------------------ intents

    def _upsert_intent(self, node: str, leave: bool, ltime: int, now: float) -> bool:
        old = self._intents.get(node)
        if old is None or ltime > old.ltime:
            self._intents[node] = _Intent(leave, ltime, now)
            return True
        return False

    def _broadcast_join(self, ltime: int, now: float) -> None:
        msg = sm.JoinIntent(ltime, self.name)
        self.member_clock.witness(ltime)
        self._handle_join_intent(msg, now)
        self._broadcast(sm.encode(msg), "intent:" + self.name)

    def _handle_join_intent(self, msg: sm.JoinIntent, now: float) -> bool:
        """Apply a join intent; True if it was news (to be re-broadcast)."""
        self.member_clock.witness(msg.ltime)
        m = self._members.get(msg.node)
        if m is None:
            return self._upsert_intent(msg.node, False, msg.ltime, now)
        if msg.ltime <= m.status_ltime:
            return False
        m.status_ltime = msg.ltime
        if m.status == MemberStatus.LEAVING:
            # The leave we saw is older than this join: it is back.
            m.status = MemberStatus.ALIVE
        return True

    def _handle_leave_intent(self, msg: sm.LeaveIntent, now: float) -> bool:
        """Apply a leave intent; True if it was news (to be re-broadcast)."""
        self.member_clock.witness(msg.ltime)
        m = self._members.get(msg.node)
        if m is None:
            return self._upsert_intent(msg.node, True, msg.ltime, now)
        if msg.ltime <= m.status_ltime:
            return False
        if msg.node == self.name and self.state == SerfState.ALIVE:
            # Someone believes we are leaving (an old intent of a previous run): refute.
            self._broadcast_join(self.member_clock.time(), now)
            return False
        if m.status == MemberStatus.ALIVE:
            m.status = MemberStatus.LEAVING
            m.status_ltime = msg.ltime
            return True
        if m.status == MemberStatus.FAILED:
            # It failed before we heard it was leaving: it left.
            m.status = MemberStatus.LEFT
            m.status_ltime = msg.ltime
            if m.name in self._failed:
                self._failed.remove(m.name)
            self._left.append(m.name)
            self._emit_member(MemberEventKind.LEAVE, m)
            return True
        if m.status in (MemberStatus.LEAVING, MemberStatus.LEFT):
            m.status_ltime = msg.ltime
            return True
        return False

    # ------------------------------------------------------------------ user events

    def _handle_user_event(self, msg: sm.UserEventMsg, now: float) -> bool:
        """Deliver a user event unless old or seen; True if it was news."""
        self.event_clock.witness(msg.ltime)
        if msg.ltime < self._event_min_time:
            self.stats.count("events_ignored_old")
            return False
        cur = self.event_clock.time()
        size = len(self._event_buffer)
        if cur > size and msg.ltime < cur - size:
            self.stats.count("events_too_old")
            return False
        idx = msg.ltime % size
        slot = self._event_buffer[idx]
        if slot is not None and slot.ltime == msg.ltime:
            for seen in slot.events:
                if seen.name == msg.name and seen.payload == msg.payload:
                    self.stats.count("events_duplicate")
                    return False
        else:
            slot = _EventSlot(msg.ltime, [])
            self._event_buffer[idx] = slot
        slot.events.append(msg)
        self.stats.count("events_delivered")
        ev = UserEvent(msg.name, msg.payload, msg.ltime, msg.coalesce)
        if msg.coalesce and self.cfg.coalesce_period > 0:
            self._coalesce(ev, now)
        else:
            self._outputs.append(ev)
        return True

    def _coalesce(self, ev: UserEvent, now: float) -> None:
        latest = self._coalesced.get(ev.name)
        if latest is None or latest[0] < ev.ltime:
            self._coalesced[ev.name] = (ev.ltime, [ev])
        elif latest[0] == ev.ltime:
            latest[1].append(ev)
        # else: older than one we hold, superseded
        if self._coalesce_flush is None:
            self._coalesce_flush = now + self.cfg.coalesce_period

    def _flush_coalesced(self) -> None:
        self._coalesce_flush = None
        batches = sorted(self._coalesced.values(), key=lambda b: b[0])
        self._coalesced = {}
        for _, events in batches:
            self._outputs.extend(events)

    # ------------------------------------------------------------------ queries

    def _handle_query(self, msg: sm.QueryMsg, now: float) -> bool:
        """Deliver a query if it is new and we match; True if it was news."""
        self.query_clock.witness(msg.ltime)
        if msg.ltime < self._query_min_time:
            self.stats.count("queries_ignored_old")
            return False
        cur = self.query_clock.time()
        size = len(self._query_buffer)
        if cur > size and msg.ltime < cur - size:
            self.stats.count("queries_too_old")
            return False
        idx = msg.ltime % size
        slot = self._query_buffer[idx]
        if slot is not None and slot.ltime == msg.ltime:
            if msg.id in slot.ids:
                self.stats.count("queries_duplicate")
                return False
        else:
            slot = _QuerySlot(msg.ltime, [])
            self._query_buffer[idx] = slot
        slot.ids.append(msg.id)
        if not self._should_process(msg):
            self.stats.count("queries_filtered")
            return True  # still news for others
        key = QueryId(msg.ltime, msg.id)
        if msg.request_ack:
            ack = sm.QueryResponseMsg(msg.ltime, msg.id, self.name, True, b"")
            self._send_response(msg.source, msg.source_addr, ack, sm.encode(ack), now)
        deadline = now + msg.timeout
        self._incoming[key] = _IncomingQuery(msg.source, msg.source_addr, deadline)
        heapq.heappush(self._incoming_deadlines, (deadline, key))
        self._outputs.append(Query(key, msg.name, msg.payload, msg.ltime, msg.source, deadline))
        return True

    def _should_process(self, msg: sm.QueryMsg) -> bool:
        if msg.filter_nodes is not None and self.name not in msg.filter_nodes:
            return False
        for tag, expr in msg.filter_tags:
            pattern = _compile_filter(expr)
            if pattern is None:
                self.stats.count("bad_query_filters")
                return False
            if pattern.search(self._tags.get(tag, "")) is None:
                return False
        return True

    def _send_response(
        self, source: str, addr: Address, msg: sm.QueryResponseMsg, raw: bytes, now: float
    ) -> None:
        if source == self.name and addr == self.memberlist.cfg.advertise:
            self._handle_query_response(msg, now)  # our own query
        else:
            self._outputs.append(SendPacket(addr, (UserMsg(raw),)))

    def _handle_query_response(self, msg: sm.QueryResponseMsg, now: float) -> None:
        key = QueryId(msg.ltime, msg.id)
        q = self._queries.get(key)
        if q is None:
            self.stats.count("responses_unknown")
            return
        if now >= q.deadline:
            self.stats.count("responses_late")
            return
        if msg.ack:
            if msg.source in q.acks:
                self.stats.count("acks_duplicate")
                return
            q.acks.append(msg.source)
            self._outputs.append(QueryAck(key, msg.source))
        else:
            if msg.source in q.responses:
                self.stats.count("responses_duplicate")
                return
            q.responses.append(msg.source)
            self._outputs.append(QueryResponse(key, msg.source, msg.payload))

    # ------------------------------------------------------------------ push-pull

    def _encode_state(self) -> bytes:
        events = tuple(ev for slot in self._event_buffer if slot is not None for ev in slot.events)
        state = sm.PushPullState(
            self.member_clock.time(),
            tuple((m.name, m.status_ltime) for m in self._members.values()),
            tuple(self._left),
            self.event_clock.time(),
            events,
            self.query_clock.time(),
        )
        return sm.encode(state)

    def _merge_state(self, pp: sm.PushPullState, now: float) -> None:
        # No message has been stamped with the peer's current values yet: witness one less.
        if pp.member_ltime > 0:
            self.member_clock.witness(pp.member_ltime - 1)
        if pp.event_ltime > 0:
            self.event_clock.witness(pp.event_ltime - 1)
        if pp.query_ltime > 0:
            self.query_clock.witness(pp.query_ltime - 1)
        status = dict(pp.status_ltimes)
        left = set(pp.left_members)
        # Left members first, as leave intents stamped with the peer's status time for them:
        # newer than ours means a leave we missed; equal or older is news we already have (a
        # join intent the peer saw while its memberlist still had the member left must not
        # turn into a fresh leave here, or a rejoined member would stay "leaving").
        for name in pp.left_members:
            self._handle_leave_intent(sm.LeaveIntent(status.get(name, 0), name), now)
        for name, ltime in pp.status_ltimes:
            if name not in left:
                self._handle_join_intent(sm.JoinIntent(ltime, name), now)
        if now <= self._ignore_old_until:
            self._event_min_time = max(self._event_min_time, pp.event_ltime)
        for ev in pp.events:
            self._handle_user_event(ev, now)

    # ------------------------------------------------------------------ timers

    def _reap(self, now: float) -> None:
        for names, timeout in (
            (self._failed, self.cfg.reconnect_timeout),
            (self._left, self.cfg.tombstone_timeout),
        ):
            for name in list(names):
                m = self._members.get(name)
                if m is None:
                    names.remove(name)
                    continue
                if now - m.leave_time <= timeout or name == self.name:
                    continue
                names.remove(name)
                del self._members[name]
                self.stats.count("reaped")
                self._emit_member(MemberEventKind.REAP, m)
        expiry = self.cfg.recent_intent_timeout
        for name in [n for n, i in self._intents.items() if now - i.seen > expiry]:
            del self._intents[name]

    def _reconnect(self, now: float) -> None:
        if not self._failed:
            return
        # Expect the cluster as a whole to try each failed member about once per interval.
        n_failed = len(self._failed)
        n_alive = len(self._members) - n_failed - len(self._left)
        prob = n_failed / max(1, n_alive)
        if self.rng.random() > prob:
            return
        name = self._failed[self.rng.randrange(n_failed)]
        self.stats.count("reconnects")
        self.memberlist.join([self._members[name].addr], self._encode_state())

    def _record_clocks(self) -> None:
        clocks = self.clocks()
        if clocks != self._recorded_clocks:
            self._recorded_clocks = clocks
            self._outputs.append(SnapshotClocks(*clocks))
