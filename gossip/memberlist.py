"""SWIM membership with Lifeguard: the sans-I/O core.

No sockets, no clock, no randomness of its own: every input carries ``now`` (seconds, from
any monotonic clock) and randomness comes from an injected ``random.Random``. Inputs:
``tick(now)`` when ``next_deadline()`` is due, ``handle_packet(msgs, now)``,
``merge_remote_state(pushpull, now)`` / ``local_state(join)`` for push-pull streams,
``stream_ping_result(seq, ok, now)``, ``join(addresses)``, ``leave(now)``, ``set_meta``.
Outputs are drained with ``take_outputs()``: packets to send, streams to open, member events
and user messages for the layer above.

The protocol (SWIM with Lifeguard, as in memberlist):
- Every probe interval (scaled by local health) ping the next member of a shuffled list.
  No ack within the probe timeout: ask ``indirect_checks`` others to ping it (they answer
  with a nack if they got no ack either) and try a TCP ping. No ack by the end of the
  interval: suspect it.
- Suspicion ends in death after a timeout that starts at ``max`` and shrinks towards ``min``
  as independent members confirm the suspicion (Lifeguard). A suspected member that hears of
  it refutes by raising its incarnation.
- Local health (Lifeguard): missed nacks and refutations raise a score that stretches our
  own probe interval and timeout, so an overloaded member does not accuse healthy ones.
- Buddy system (Lifeguard): a ping to a suspect carries the suspicion, so it refutes at once.
- Membership news (alive, suspect, dead, and the layer above's messages) rides on pings,
  acks and gossip rounds to ``gossip_nodes`` random members, each message a bounded number of
  times. Push-pull over a stream merges full state on join and periodically.

Invariants: ``members`` always holds ourselves, alive at ``incarnation``; a member's
incarnation never decreases; a dead or left member is forgotten after
``gossip_to_the_dead_time``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

from gossip import wire
from gossip.awareness import Awareness
from gossip.broadcast import BroadcastQueue
from gossip.config import GossipConfig
from gossip.math import push_pull_scale, retransmit_limit, suspicion_timeout
from gossip.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)
from gossip.suspicion import Suspicion

# --- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send ``messages`` as one packet (already sized to fit the packet limit)."""

    addr: Address
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class OpenPushPull:
    """Open a stream to ``addr``, send ``state``, read the peer's state back and hand it to
    ``merge_remote_state``. ``join`` marks the exchanges of a join attempt."""

    addr: Address
    state: PushPull


@dataclass(frozen=True, slots=True)
class StreamPing:
    """Ping over a stream (fallback when UDP may be the problem); report with
    ``stream_ping_result``."""

    addr: Address
    ping: Ping


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    addr: Address
    meta: bytes
    incarnation: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """``kind`` is "join", "leave" (dead or left: see ``member.state``), "update" or
    "conflict" (another member claims our name or a known name at another address)."""

    kind: str
    member: Member


@dataclass(frozen=True, slots=True)
class UserMessage:
    """A broadcast of the layer above arrived."""

    payload: bytes


Output = SendPacket | OpenPushPull | StreamPing | MemberEvent | UserMessage

# --- internal state ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    name: str
    addr: Address
    meta: bytes
    incarnation: int
    state: MemberState
    state_change: float

    def public(self) -> Member:
        return Member(self.name, self.addr, self.meta, self.incarnation, self.state)


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    timeout_at: float  # direct ack deadline
    end_at: float  # end of this probe period
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """We ping ``target`` on behalf of ``requester``; relay its ack, or a nack on timeout."""

    origin_seq: int
    requester: Address
    deadline: float
    nack: bool
    done: bool = False


@dataclass(slots=True)
class Stats:
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    suspicions: int = 0
    refutes: int = 0
    deaths: int = 0
    packets_sent: int = 0
    messages_received: int = 0
    pushpulls: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class Memberlist:
    def __init__(
        self,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        meta: bytes = b"",
        incarnation: int = 0,
    ) -> None:
        self.cfg = config
        self.name = config.name
        self.rng = rng
        self.awareness = Awareness(config.awareness_max_multiplier, enabled=config.lifeguard)
        self.broadcasts = BroadcastQueue(wire.encoded_size)
        self.stats = Stats()
        self.incarnation = incarnation
        self.leaving = False
        self.members: dict[str, _Node] = {
            self.name: _Node(self.name, config.advertise, meta, incarnation, MemberState.ALIVE, now)
        }
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._relay_deadlines: list[tuple[float, int]] = []
        self._suspicions: dict[str, Suspicion] = {}
        self._outputs: list[Output] = []
        self._next_probe = now + rng.uniform(0, config.probe_interval)
        self._next_gossip = now + rng.uniform(0, config.gossip_interval)
        self._next_pushpull = now + config.push_pull_interval * (1 + rng.random())
        self._next_reap = now + config.gossip_to_the_dead_time
        self._alive_count = 1
        self._candidates: list[_Node] | None = None  # gossip targets; see _gossip_candidates
        self._candidates_until = 0.0
        self._suspicion_heap: list[tuple[float, str]] = []  # (deadline, name), lazily pruned
        # The layer above (Serf) supplies its own state for push-pull exchanges.
        self.user_state_provider: Callable[[], bytes] | None = None

    # ------------------------------------------------------------------ public inputs

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def next_deadline(self) -> float:
        candidates = [self._next_probe, self._next_gossip, self._next_pushpull, self._next_reap]
        if self._probe is not None and not self._probe.acked:
            candidates.append(
                self._probe.timeout_at if not self._probe.indirect_sent else self._probe.end_at
            )
        if self._relay_deadlines:
            candidates.append(self._relay_deadlines[0][0])
        deadline = self._next_suspicion_deadline()
        if deadline is not None:
            candidates.append(deadline)
        return min(candidates)

    def _next_suspicion_deadline(self) -> float | None:
        """The earliest live suspicion deadline (stale heap entries are dropped here)."""
        heap = self._suspicion_heap
        while heap:
            deadline, name = heap[0]
            suspicion = self._suspicions.get(name)
            if suspicion is not None and suspicion.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def tick(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        self._check_probe(now)
        while self._relay_deadlines and self._relay_deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._relay_deadlines)
            relay = self._relays.pop(seq, None)
            if relay is not None and not relay.done and relay.nack:
                self._send(relay.requester, [Nack(relay.origin_seq)], piggyback=False)
        while (deadline := self._next_suspicion_deadline()) is not None and deadline <= now:
            _, name = heapq.heappop(self._suspicion_heap)
            self._suspicion_expired(name, now)
        if now >= self._next_probe:
            if self.leaving:
                self._next_probe = now + self.cfg.probe_interval
            else:
                self._start_probe(now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.cfg.gossip_interval
            self._gossip(now)
        if now >= self._next_pushpull:
            interval = push_pull_scale(self.cfg.push_pull_interval, self.num_members())
            self._next_pushpull = now + interval
            self._periodic_pushpull()
        if now >= self._next_reap:
            self._next_reap = now + self.cfg.gossip_to_the_dead_time / 2
            self._reap(now)

    def handle_packet(self, messages: Sequence[Message], now: float) -> None:
        for msg in messages:
            self.stats.messages_received += 1
            if isinstance(msg, Ping):
                self._handle_ping(msg)
            elif isinstance(msg, IndirectPing):
                self._handle_indirect_ping(msg, now)
            elif isinstance(msg, Ack):
                self._handle_ack(msg, now)
            elif isinstance(msg, Nack):
                self._handle_nack(msg)
            elif isinstance(msg, Alive):
                self.alive_node(msg, now)
            elif isinstance(msg, Suspect):
                self.suspect_node(msg, now)
            elif isinstance(msg, Dead):
                self.dead_node(msg, now)
            elif isinstance(msg, UserMsg):
                self._outputs.append(UserMessage(msg.payload))
            elif isinstance(msg, PushPull):
                self.merge_remote_state(msg, now)

    def handle_stream_ping(self, ping: Ping) -> Ack | None:
        """A ping that arrived over a stream: the ack to write back (None if not for us)."""
        if ping.target and ping.target != self.name:
            return None
        return Ack(ping.seq)

    def stream_ping_result(self, seq: int, ok: bool, now: float) -> None:
        if ok:
            self._handle_ack(Ack(seq), now)

    def local_state(self, join: bool = False, user_state: bytes | None = None) -> PushPull:
        """Our full state for push-pull; ``user_state`` defaults to what
        ``user_state_provider`` (set by the layer above) returns."""
        if user_state is None:
            user_state = self.user_state_provider() if self.user_state_provider else b""
        nodes = tuple(
            PushNodeState(n.name, n.addr, n.meta, n.incarnation, n.state)
            for n in self.members.values()
        )
        return PushPull(join, nodes, user_state)

    def merge_remote_state(self, remote: PushPull, now: float) -> None:
        """Merge a peer's full state (push-pull). Remote deaths count only as suspicion: our
        own probes decide, so stale state from a partitioned peer cannot kill live members."""
        self.stats.pushpulls += 1
        for ns in remote.nodes:
            if ns.state == MemberState.ALIVE:
                self.alive_node(Alive(ns.incarnation, ns.name, ns.addr, ns.meta), now)
            elif ns.state == MemberState.LEFT:
                self.dead_node(Dead(ns.incarnation, ns.name, ns.name), now)
            else:
                self.suspect_node(Suspect(ns.incarnation, ns.name, self.name), now)

    def join(self, addresses: Iterable[Address], user_state: bytes | None = None) -> int:
        """Start a push-pull with each seed; the driver counts successes. Returns how many."""
        n = 0
        for addr in addresses:
            if addr == self.cfg.advertise:
                continue
            self._outputs.append(OpenPushPull(addr, self.local_state(True, user_state)))
            n += 1
        return n

    def leave(self, now: float) -> None:
        """Announce a graceful leave; the driver keeps gossiping briefly, then stops."""
        self.leaving = True
        me = self.members[self.name]
        dead = Dead(self.incarnation, self.name, self.name)
        if me.state == MemberState.ALIVE:
            self._alive_count -= 1
            self._members_changed()
        me.state, me.state_change = MemberState.LEFT, now
        self.broadcasts.queue(dead, self.name)
        self._gossip(now)

    def set_meta(self, meta: bytes, now: float) -> None:
        """Change our metadata (Serf tags) and announce it with a higher incarnation."""
        me = self.members[self.name]
        me.meta = meta
        self._refute(now, self.incarnation, count=False)

    def queue_user_broadcast(self, payload: bytes, key: str | None = None) -> None:
        """Piggyback a message of the layer above; ``key`` replaces a queued one."""
        self.broadcasts.queue(UserMsg(payload), None if key is None else "user:" + key)

    def pending_broadcasts(self) -> int:
        return len(self.broadcasts)

    # ------------------------------------------------------------------ status

    def num_members(self) -> int:
        """Members we consider present (alive or suspect), ourselves included."""
        return self._alive_count

    def member_list(self) -> list[Member]:
        return [n.public() for n in self.members.values()]

    def member(self, name: str) -> Member | None:
        node = self.members.get(name)
        return node.public() if node else None

    # ------------------------------------------------------------------ probing

    def _start_probe(self, now: float) -> None:
        interval = self.awareness.scale(self.cfg.probe_interval)
        self._next_probe = now + interval
        target = self._next_probe_target()
        if target is None:
            self._probe = None
            return
        self._seq += 1
        node = self.members[target]
        timeout = self.awareness.scale(self.cfg.probe_timeout)
        self._probe = _Probe(self._seq, target, now + timeout, now + interval)
        self.stats.probes += 1
        first: list[Message] = [Ping(self._seq, target, self.name, self.cfg.advertise)]
        if node.state == MemberState.SUSPECT and self.cfg.lifeguard:
            # Buddy system: tell the suspect, so it can refute at once.
            first.append(Suspect(node.incarnation, target, self.name))
        self._send(node.addr, first)

    def _next_probe_target(self) -> str | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                name = self._probe_order[self._probe_index]
                self._probe_index += 1
                node = self.members.get(name)
                if (
                    node is not None
                    and name != self.name
                    and node.state in (MemberState.ALIVE, MemberState.SUSPECT)
                ):
                    return name
            self._probe_order = [n for n in self.members if n != self.name]
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _check_probe(self, now: float) -> None:
        probe = self._probe
        if probe is None or probe.acked:
            return
        if not probe.indirect_sent and now >= probe.timeout_at:
            probe.indirect_sent = True
            self._indirect_probe(probe, now)
        if now >= probe.end_at:
            self._probe = None
            self._probe_failed(probe, now)

    def _indirect_probe(self, probe: _Probe, now: float) -> None:
        node = self.members.get(probe.target)
        if node is None:
            return
        helpers = [
            n
            for n in self.members.values()
            if n.name not in (self.name, probe.target) and n.state == MemberState.ALIVE
        ]
        chosen = self.rng.sample(helpers, min(self.cfg.indirect_checks, len(helpers)))
        for helper in chosen:
            self._send(
                helper.addr,
                [
                    IndirectPing(
                        probe.seq, probe.target, node.addr, self.name, self.cfg.advertise, nack=True
                    )
                ],
            )
        probe.expected_nacks = len(chosen) if self.cfg.lifeguard else 0
        self.stats.indirect_probes += 1
        if self.cfg.tcp_fallback_ping:
            self._outputs.append(
                StreamPing(node.addr, Ping(probe.seq, probe.target, self.name, self.cfg.advertise))
            )

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self.stats.probe_failures += 1
        if probe.expected_nacks > 0:
            # Missing nacks mean our own network or CPU may be the problem (Lifeguard).
            self.awareness.apply(probe.expected_nacks - probe.nacks)
        else:
            self.awareness.apply(1)
        node = self.members.get(probe.target)
        if node is not None and node.state in (MemberState.ALIVE, MemberState.SUSPECT):
            self.suspect_node(Suspect(node.incarnation, node.name, self.name), now)

    def _handle_ping(self, ping: Ping) -> None:
        if ping.target and ping.target != self.name:
            return  # meant for whoever had this address before us
        self._send(ping.source_addr, [Ack(ping.seq)])

    def _handle_indirect_ping(self, req: IndirectPing, now: float) -> None:
        self._seq += 1
        seq = self._seq
        deadline = now + self.cfg.probe_timeout
        self._relays[seq] = _Relay(req.seq, req.source_addr, deadline, req.nack)
        heapq.heappush(self._relay_deadlines, (deadline, seq))
        self._send(req.target_addr, [Ping(seq, req.target, self.name, self.cfg.advertise)])

    def _handle_ack(self, ack: Ack, now: float) -> None:
        probe = self._probe
        if probe is not None and probe.seq == ack.seq:
            if not probe.acked:
                probe.acked = True
                self.awareness.apply(-1)
                self._probe = None
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None and not relay.done:
            relay.done = True
            self._send(relay.requester, [Ack(relay.origin_seq)])

    def _handle_nack(self, nack: Nack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == nack.seq:
            probe.nacks += 1

    # ------------------------------------------------------------------ state changes

    def alive_node(self, a: Alive, now: float) -> None:
        node = self.members.get(a.node)
        if a.node == self.name:
            me = self.members[self.name]
            if a.addr != me.addr:
                # Another member claims our name from another address.
                self._outputs.append(
                    MemberEvent(
                        "conflict", Member(a.node, a.addr, a.meta, a.incarnation, MemberState.ALIVE)
                    )
                )
                return
            if a.incarnation > self.incarnation or (
                a.incarnation == self.incarnation and (a.addr, a.meta) != (me.addr, me.meta)
            ):
                self._refute(now, a.incarnation)
            return
        if node is None:
            node = _Node(a.node, a.addr, a.meta, a.incarnation, MemberState.ALIVE, now)
            self.members[a.node] = node
            self._alive_count += 1
            self._members_changed()
            # Put it at a random place in the probe order so new members are probed soon.
            self._probe_order.insert(
                self.rng.randint(self._probe_index, len(self._probe_order)), a.node
            )
            self.broadcasts.queue(a, a.node)
            self._outputs.append(MemberEvent("join", node.public()))
            return
        if node.addr != a.addr:
            if node.state in (MemberState.ALIVE, MemberState.SUSPECT):
                self.stats.counters["name_conflicts"] = (
                    self.stats.counters.get("name_conflicts", 0) + 1
                )
                self._outputs.append(
                    MemberEvent(
                        "conflict", Member(a.node, a.addr, a.meta, a.incarnation, MemberState.ALIVE)
                    )
                )
                return
            # A dead or departed name may be reclaimed from another address.
        elif a.incarnation <= node.incarnation:
            return
        was = node.state
        self._suspicions.pop(a.node, None)
        changed_meta = node.meta != a.meta
        node.addr, node.meta, node.incarnation = a.addr, a.meta, a.incarnation
        if was != MemberState.ALIVE:
            node.state, node.state_change = MemberState.ALIVE, now
            if was in (MemberState.DEAD, MemberState.LEFT):
                self._alive_count += 1
                self._members_changed()
        self.broadcasts.queue(a, a.node)
        if was in (MemberState.DEAD, MemberState.LEFT):
            self._outputs.append(MemberEvent("join", node.public()))
        elif changed_meta:
            self._outputs.append(MemberEvent("update", node.public()))

    def suspect_node(self, s: Suspect, now: float) -> None:
        node = self.members.get(s.node)
        if node is None or s.incarnation < node.incarnation:
            return
        if s.node == self.name:
            if not self.leaving:
                self._refute(now, s.incarnation)
            return
        suspicion = self._suspicions.get(s.node)
        if suspicion is not None and node.state == MemberState.SUSPECT:
            if suspicion.confirm(s.source):
                heapq.heappush(self._suspicion_heap, (suspicion.deadline, s.node))
                self.broadcasts.queue(s, s.node)  # pass the confirmation on
            return
        if node.state != MemberState.ALIVE:
            return
        node.incarnation = s.incarnation
        node.state, node.state_change = MemberState.SUSPECT, now
        self.stats.suspicions += 1
        self.broadcasts.queue(s, s.node)
        n = self._estimated_nodes()
        k = self.cfg.suspicion_mult - 2 if self.cfg.lifeguard else 0
        if n - 2 < k:
            k = 0
        min_t = suspicion_timeout(self.cfg.suspicion_mult, n, self.cfg.probe_interval)
        max_t = self.cfg.suspicion_max_timeout_mult * min_t if self.cfg.lifeguard else min_t
        suspicion = Suspicion(s.source, k, min_t, max_t, now)
        self._suspicions[s.node] = suspicion
        heapq.heappush(self._suspicion_heap, (suspicion.deadline, s.node))

    def _suspicion_expired(self, name: str, now: float) -> None:
        self._suspicions.pop(name, None)
        node = self.members.get(name)
        if node is not None and node.state == MemberState.SUSPECT:
            self.dead_node(Dead(node.incarnation, name, self.name), now)

    def dead_node(self, d: Dead, now: float) -> None:
        node = self.members.get(d.node)
        if node is None or d.incarnation < node.incarnation:
            return
        if node.state in (MemberState.DEAD, MemberState.LEFT):
            return
        if d.node == self.name:
            if not self.leaving:
                self._refute(now, d.incarnation)
            return
        self._suspicions.pop(d.node, None)
        node.incarnation = d.incarnation
        node.state = MemberState.LEFT if d.source == d.node else MemberState.DEAD
        node.state_change = now
        self._alive_count -= 1
        self._members_changed()
        self.stats.deaths += 1
        self.broadcasts.queue(d, d.node)
        self._outputs.append(MemberEvent("leave", node.public()))

    def _refute(self, now: float, accused: int, count: bool = True) -> None:
        """Announce ourselves alive with an incarnation above ``accused``."""
        self.incarnation = max(self.incarnation, accused) + 1
        me = self.members[self.name]
        me.incarnation = self.incarnation
        if count:
            self.stats.refutes += 1
            self.awareness.apply(1)
        self.broadcasts.queue(Alive(self.incarnation, self.name, me.addr, me.meta), self.name)

    # ------------------------------------------------------------------ dissemination

    def _estimated_nodes(self) -> int:
        """Every member we know, dead and left ones included until reaped (memberlist's
        estimate for retransmit limits and suspicion timeouts: counting only live members
        would shrink them right when a failure needs them)."""
        return len(self.members)

    def _limit(self) -> int:
        return retransmit_limit(self.cfg.retransmit_mult, self._estimated_nodes())

    def _send(self, addr: Address, first: list[Message], piggyback: bool = True) -> None:
        messages = list(first)
        if piggyback and len(self.broadcasts):
            budget = self._budget() - sum(wire.encoded_size(m) for m in first)
            messages.extend(self.broadcasts.take(budget, self._limit()))
        self.stats.packets_sent += 1
        self._outputs.append(SendPacket(addr, tuple(messages)))

    def _budget(self) -> int:
        # Room left for messages in one packet: the limit minus framing and encryption.
        return self.cfg.packet_size - wire.PACKET_OVERHEAD

    def _gossip(self, now: float) -> None:
        if not len(self.broadcasts):
            return
        candidates = self._gossip_candidates(now)
        if not candidates:
            return
        for node in self.rng.sample(candidates, min(self.cfg.gossip_nodes, len(candidates))):
            msgs = self.broadcasts.take(self._budget(), self._limit())
            if not msgs:
                return
            self.stats.packets_sent += 1
            self._outputs.append(SendPacket(node.addr, tuple(msgs)))

    def _gossip_candidates(self, now: float) -> list[_Node]:
        """Members to gossip to: alive or suspect, or dead for less than
        gossip_to_the_dead_time. Cached until membership changes or a dead member ages out,
        so a gossip round is not O(members)."""
        if self._candidates is not None and now < self._candidates_until:
            return self._candidates
        window = self.cfg.gossip_to_the_dead_time
        until = float("inf")
        out = []
        for n in self.members.values():
            if n.name == self.name:
                continue
            if n.state in (MemberState.ALIVE, MemberState.SUSPECT):
                out.append(n)
            elif now - n.state_change < window:
                out.append(n)
                until = min(until, n.state_change + window)
        self._candidates, self._candidates_until = out, until
        return out

    def _members_changed(self) -> None:
        self._candidates = None

    def _periodic_pushpull(self) -> None:
        candidates = [
            n for n in self.members.values() if n.name != self.name and n.state == MemberState.ALIVE
        ]
        if candidates:
            node = self.rng.choice(candidates)
            self._outputs.append(OpenPushPull(node.addr, self.local_state(False)))

    def _reap(self, now: float) -> None:
        window = self.cfg.gossip_to_the_dead_time
        for name in [
            n.name
            for n in self.members.values()
            if n.name != self.name
            and n.state in (MemberState.DEAD, MemberState.LEFT)
            and now - n.state_change >= window
        ]:
            del self.members[name]
            self._members_changed()
