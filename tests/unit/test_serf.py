"""The Serf layer (gossip.serf) over memberlist, in an in-memory cluster on a virtual clock.

No sockets, no sleeps: packets go through gossip.wire (encode, then decode) and are delivered
after a fixed latency; push-pull exchanges and stream pings complete within a few latencies;
every node is ticked exactly at its ``next_deadline()``.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gossip import wire
from gossip.config import GossipConfig, default_lan_config
from gossip.memberlist import Member as MLMember
from gossip.memberlist import MemberEvent as MLMemberEvent
from gossip.memberlist import OpenPushPull, SendPacket, StreamPing
from gossip.messages import Address, Alive, MemberState, PushPull, UserMsg
from gossip.serf import (
    MemberConflict,
    MemberEvent,
    MemberEventKind,
    MemberStatus,
    Query,
    QueryAck,
    QueryDone,
    QueryResponse,
    Serf,
    SerfConfig,
    SerfConfigError,
    SerfError,
    SerfEvent,
    SerfOutput,
    SerfState,
    SnapshotAlive,
    SnapshotClocks,
    SnapshotLeave,
    SnapshotRecord,
    UserEvent,
)
from gossip.serf import messages as sm
from gossip.serf import snapshot as snap
from gossip.serf.core import default_query_timeout

# --- the harness --------------------------------------------------------------------------------


@dataclass
class Node:
    label: str
    serf: Serf
    addr: Address
    up: bool = True
    events: list[tuple[float, SerfEvent]] = field(default_factory=list)
    records: list[SnapshotRecord] = field(default_factory=list)
    sent: list[SendPacket] = field(default_factory=list)
    pushpulls: list[OpenPushPull] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.serf.name

    def of(self, kind: type) -> list[SerfEvent]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def member_events(self, kind: MemberEventKind, about: str | None = None) -> list[MemberEvent]:
        out = []
        for _, e in self.events:
            if (
                isinstance(e, MemberEvent)
                and e.kind == kind
                and (about is None or any(m.name == about for m in e.members))
            ):
                out.append(e)
        return out

    def user_events(self) -> list[UserEvent]:
        return [e for _, e in self.events if isinstance(e, UserEvent)]

    def status(self, about: str) -> MemberStatus | None:
        m = self.serf.member(about)
        return None if m is None else m.status


class Cluster:
    def __init__(
        self,
        seed: int = 1,
        latency: float = 0.005,
        serf_config: SerfConfig | None = None,
        gossip_config: Callable[[str, Address], GossipConfig] = default_lan_config,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 1000.0
        self.latency = latency
        self.serf_config = serf_config or SerfConfig()
        self.gossip_config = gossip_config
        self.nodes: dict[str, Node] = {}
        self.by_addr: dict[Address, str] = {}
        self.blocked: set[frozenset[str]] = set()
        self.duplicate = False
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    # -- membership of the simulation ---------------------------------------------------------

    def add(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        *,
        label: str | None = None,
        addr: Address | None = None,
        snapshot: snap.SnapshotState | None = None,
        config: SerfConfig | None = None,
    ) -> Node:
        label = label or name
        if addr is None:
            old = self.nodes.get(label)
            addr = old.addr if old else (f"10.0.0.{len(self.by_addr) + 1}", 7946)
        serf = Serf(
            config or self.serf_config,
            self.gossip_config(name, addr),
            random.Random(self.rng.random()),
            self.now,
            dict(tags or {}),
            snapshot,
        )
        node = Node(label, serf, addr)
        self.nodes[label] = node
        self.by_addr[addr] = label
        self.flush(label)
        return node

    def __getitem__(self, label: str) -> Node:
        return self.nodes[label]

    def crash(self, label: str) -> None:
        self.nodes[label].up = False

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        for a in side_a:
            for b in side_b:
                self.blocked.add(frozenset((a, b)))

    def heal(self) -> None:
        self.blocked.clear()

    def link(self, a: str, b: str) -> bool:
        return self.nodes[a].up and self.nodes[b].up and frozenset((a, b)) not in self.blocked

    # -- actions ------------------------------------------------------------------------------

    def join(self, label: str, seeds: Iterable[str], ignore_old: bool = False) -> int:
        node = self.nodes[label]
        n = node.serf.join([self.nodes[s].addr for s in seeds], ignore_old, self.now)
        self.flush(label)
        return n

    def join_all(self, seed: str, ignore_old: bool = False) -> None:
        for label in self.nodes:
            if label != seed:
                self.join(label, [seed], ignore_old)

    # -- I/O ----------------------------------------------------------------------------------

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), fn))

    def flush(self, label: str) -> None:
        node = self.nodes[label]
        for out in node.serf.take_outputs():
            self._perform(label, out)

    def _perform(self, src: str, out: SerfOutput) -> None:
        node = self.nodes[src]
        if isinstance(out, SendPacket):
            node.sent.append(out)
            dst = self.by_addr.get(out.addr)
            if dst is None or not self.link(src, dst):
                return
            data = wire.encode(out.messages)  # the real codec, both ways
            copies = 2 if self.duplicate else 1
            for i in range(copies):
                self._at(
                    self.now + self.latency * (i + 1), functools.partial(self._deliver, dst, data)
                )
        elif isinstance(out, OpenPushPull):
            node.pushpulls.append(out)
            peer = self.by_addr.get(out.addr)
            if peer is not None:
                self._at(self.now + self.latency, functools.partial(self._pushpull, src, peer, out))
        elif isinstance(out, StreamPing):
            dst = self.by_addr.get(out.addr)

            def answer() -> None:
                ok = (
                    dst is not None
                    and self.link(src, dst)
                    and self.nodes[dst].serf.handle_stream_ping(out.ping) is not None
                )
                if node.up:
                    node.serf.stream_ping_result(out.ping.seq, ok, self.now)
                    self.flush(src)

            self._at(self.now + 2 * self.latency, answer)
        elif isinstance(
            out, (snap.SnapshotAlive, snap.SnapshotNotAlive, SnapshotClocks, SnapshotLeave)
        ):
            node.records.append(out)
        else:
            node.events.append((self.now, out))

    def _deliver(self, dst: str, data: bytes) -> None:
        node = self.nodes[dst]
        if node.up:
            node.serf.handle_packet(wire.decode(data), self.now)
            self.flush(dst)

    def _pushpull(self, src: str, dst: str, out: OpenPushPull) -> None:
        if not self.link(src, dst):
            return
        peer = self.nodes[dst]
        (state,) = wire.decode(wire.encode([out.state]))
        assert isinstance(state, PushPull)
        reply = peer.serf.local_state(out.state.join)
        peer.serf.merge_remote_state(state, self.now)
        self.flush(dst)
        (reply_back,) = wire.decode(wire.encode([reply]))
        assert isinstance(reply_back, PushPull)

        def back() -> None:
            node = self.nodes[src]
            if node.up:
                node.serf.merge_remote_state(reply_back, self.now)
                self.flush(src)

        self._at(self.now + self.latency, back)

    # -- time ---------------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        spins = 0
        while True:
            live = [n for n in self.nodes.values() if n.up]
            candidates = [n.serf.next_deadline() for n in live]
            if self._queue:
                candidates.append(self._queue[0][0])
            t_next = min(candidates) if candidates else t
            if t_next > t:
                break
            if t_next <= self.now:
                spins += 1
                assert spins < 10_000, "a core keeps asking to be ticked at the same time"
            else:
                spins = 0
            self.now = max(self.now, t_next)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, fn = heapq.heappop(self._queue)
                fn()
            for node in live:
                if node.up and node.serf.next_deadline() <= self.now:
                    node.serf.tick(self.now)
                    self.flush(node.label)
            if stop is not None and stop():
                return True
        self.now = t
        return False

    def settle(self, seconds: float = 5.0) -> None:
        self.run_for(seconds)

    def all_see(self, about: str, status: MemberStatus | None) -> bool:
        return all(
            n.status(about) == status for n in self.nodes.values() if n.up and n.label != about
        )


def serf_state(node: Node) -> SerfState:
    return node.serf.state


def cluster_of(
    names: Iterable[str],
    tags: Mapping[str, Mapping[str, str]] | None = None,
    *,
    seed: int = 1,
    serf_config: SerfConfig | None = None,
    settle: float = 5.0,
) -> Cluster:
    c = Cluster(seed=seed, serf_config=serf_config)
    names = list(names)
    for name in names:
        c.add(name, (tags or {}).get(name))
    c.join_all(names[0])
    c.run_for(settle)
    return c


# --- membership ---------------------------------------------------------------------------------


def test_join_via_push_pull_everyone_sees_everyone_alive() -> None:
    c = cluster_of("abc", {"a": {"role": "consul", "dc": "dc1"}})
    for node in c.nodes.values():
        assert sorted(m.name for m in node.serf.members()) == ["a", "b", "c"]
        assert all(m.status == MemberStatus.ALIVE for m in node.serf.members())
        # A member-join for every member, ourselves included (as Serf does), exactly once.
        for other in "abc":
            assert len(node.member_events(MemberEventKind.JOIN, other)) == 1
    assert c["b"].serf.member("a") is not None
    assert dict(c["b"].serf.member("a").tags) == {"role": "consul", "dc": "dc1"}  # type: ignore[union-attr]
    assert c["a"].serf.num_members() == 3


def test_every_push_pull_carries_serf_state() -> None:
    c = cluster_of("abc", settle=70)  # past the first periodic push-pull of every member
    periodic = [p for n in c.nodes.values() for p in n.pushpulls if not p.state.join]
    assert periodic
    for n in c.nodes.values():
        for p in n.pushpulls:
            assert isinstance(sm.decode(p.state.user_state), sm.PushPullState)


def test_push_pull_state_in_a_packet_is_merged_with_serf_state() -> None:
    c = cluster_of("ab")
    c["a"].serf.user_event("hello", b"1", False, c.now)
    c.flush("a")
    c.run_for(3)
    x = c.add("x")
    x.serf.handle_packet([c["a"].serf.local_state(False)], c.now)
    c.flush("x")
    assert x.status("a") == MemberStatus.ALIVE and x.status("b") == MemberStatus.ALIVE
    assert [e.name for e in x.user_events()] == ["hello"]


def test_tags_propagate_and_update() -> None:
    c = cluster_of("abc", {"a": {"role": "consul", "port": "8300"}})
    c["a"].serf.set_tags({"role": "consul", "port": "8300", "build": "1.2"}, c.now)
    c.flush("a")
    c.run_for(5)
    for label in "bc":
        node = c[label]
        updates = node.member_events(MemberEventKind.UPDATE, "a")
        assert len(updates) == 1
        assert dict(updates[0].members[0].tags) == {
            "role": "consul",
            "port": "8300",
            "build": "1.2",
        }
        assert dict(node.serf.member("a").tags)["build"] == "1.2"  # type: ignore[union-attr]
    # The local member gets its own update event too.
    assert len(c["a"].member_events(MemberEventKind.UPDATE, "a")) == 1
    assert c["a"].serf.tags["build"] == "1.2"


def test_graceful_leave_is_left_everywhere_not_failed() -> None:
    c = cluster_of("abcd")
    c["d"].serf.leave(c.now)
    c.flush("d")
    assert serf_state(c["d"]) == SerfState.LEAVING
    assert c["d"].status("d") == MemberStatus.LEFT
    assert any(isinstance(r, SnapshotLeave) for r in c["d"].records)
    c.run_for(2)
    assert serf_state(c["d"]) == SerfState.LEFT
    c.crash("d")  # the agent stops after its leave propagated
    c.run_for(60)
    assert c.all_see("d", MemberStatus.LEFT)
    for label in "abc":
        assert len(c[label].member_events(MemberEventKind.LEAVE, "d")) == 1
        assert c[label].member_events(MemberEventKind.FAILED, "d") == []


def test_crash_is_failed_everywhere() -> None:
    c = cluster_of("abcd")
    c.crash("c")
    c.run_for(60)
    assert c.all_see("c", MemberStatus.FAILED)
    for label in "abd":
        assert len(c[label].member_events(MemberEventKind.FAILED, "c")) == 1
        assert any(isinstance(r, snap.SnapshotNotAlive) and r.name == "c" for r in c[label].records)


def test_force_leave_turns_a_failed_member_left_everywhere() -> None:
    c = cluster_of("abcd")
    c.crash("c")
    c.run_for(60)
    assert c.all_see("c", MemberStatus.FAILED)
    assert c["a"].serf.force_leave("c", prune=False, now=c.now)
    c.run_for(10)
    for label in "abd":
        assert c[label].status("c") == MemberStatus.LEFT
        assert len(c[label].member_events(MemberEventKind.LEAVE, "c")) == 1
    assert not c["a"].serf.force_leave("nobody", prune=False, now=c.now)


def test_force_leave_of_an_alive_member_is_refuted_and_prune_forgets_a_failed_one() -> None:
    c = cluster_of("abc")
    c["a"].serf.force_leave("b", prune=False, now=c.now)
    c.run_for(10)
    assert c.all_see("b", MemberStatus.ALIVE)
    c.crash("c")
    c.run_for(60)
    assert c["a"].serf.force_leave("c", prune=True, now=c.now)
    assert c["a"].status("c") is None
    c.run_for(10)
    assert len(c["a"].member_events(MemberEventKind.REAP, "c")) == 1
    assert c["b"].status("c") == MemberStatus.LEFT


def test_reconnect_after_partition_heals() -> None:
    c = cluster_of("abc")
    c.partition("ab", "c")
    c.run_for(60)
    assert c["a"].status("c") == MemberStatus.FAILED
    assert c["c"].status("a") == MemberStatus.FAILED
    assert c["c"].status("b") == MemberStatus.FAILED
    c.heal()
    # Periodic push-pull only picks alive members: only Serf's reconnect can heal this.
    healed = c.run_until(
        c.now + 300,
        stop=lambda: all(
            n.status(o) == MemberStatus.ALIVE for n in c.nodes.values() for o in "abc"
        ),
    )
    assert healed
    assert sum(n.serf.stats.get("reconnects") for n in c.nodes.values()) >= 1
    assert len(c["a"].member_events(MemberEventKind.JOIN, "c")) == 2


def test_failed_member_reaped_after_reconnect_timeout() -> None:
    cfg = SerfConfig(reconnect_timeout=120.0, tombstone_timeout=60.0, reap_interval=5.0)
    c = cluster_of("abcd", serf_config=cfg)
    c.crash("c")
    c.run_for(60)
    assert c["a"].status("c") == MemberStatus.FAILED
    failed_at = c["a"].member_events(MemberEventKind.FAILED, "c")
    assert failed_at
    c.run_for(60)
    assert c["a"].status("c") == MemberStatus.FAILED  # not yet
    c.run_for(90)
    for label in "abd":
        reaps = c[label].member_events(MemberEventKind.REAP, "c")
        assert len(reaps) == 1
        assert reaps[0].members[0].status == MemberStatus.FAILED
        assert c[label].status("c") is None
    # A left member is reaped after the tombstone timeout.
    c["d"].serf.leave(c.now)
    c.flush("d")
    c.run_for(2)
    c.crash("d")
    c.run_for(20)
    assert c["a"].status("d") == MemberStatus.LEFT
    c.run_for(60)
    assert c["a"].status("d") is None
    assert len(c["a"].member_events(MemberEventKind.REAP, "d")) == 1


# --- Lamport ordering of intents ----------------------------------------------------------------


def inject(c: Cluster, label: str, *msgs: sm.SerfMessage) -> None:
    node = c[label]
    node.serf.handle_packet([UserMsg(sm.encode(m)) for m in msgs], c.now)
    c.flush(label)


def test_intents_are_ordered_by_lamport_time() -> None:
    c = cluster_of("ab")
    a = c["a"]
    inject(c, "a", sm.LeaveIntent(100, "b"))
    assert a.status("b") == MemberStatus.LEAVING
    assert a.serf.member_clock.time() >= 101
    inject(c, "a", sm.JoinIntent(50, "b"))  # older than the leave: ignored
    assert a.status("b") == MemberStatus.LEAVING
    inject(c, "a", sm.JoinIntent(101, "b"))  # newer: back to alive
    assert a.status("b") == MemberStatus.ALIVE
    inject(c, "a", sm.LeaveIntent(101, "b"))  # not newer than the join: ignored
    assert a.status("b") == MemberStatus.ALIVE


def test_intents_for_unknown_members_are_buffered() -> None:
    c = cluster_of("ab")
    meta = sm.encode_tags({"role": "node"})
    # A leave for "ghost" arrives before memberlist knows it; a stale join after it loses.
    inject(c, "a", sm.LeaveIntent(40, "ghost"), sm.JoinIntent(30, "ghost"))
    c["a"].serf.handle_packet([Alive(1, "ghost", ("10.0.0.99", 7946), meta)], c.now)
    c.flush("a")
    assert c["a"].status("ghost") == MemberStatus.LEAVING
    join = c["a"].member_events(MemberEventKind.JOIN, "ghost")
    assert join and join[0].members[0].status == MemberStatus.LEAVING
    # A newer join for another unknown member is applied when it appears.
    inject(c, "a", sm.LeaveIntent(10, "spirit"), sm.JoinIntent(60, "spirit"))
    c["a"].serf.handle_packet([Alive(1, "spirit", ("10.0.0.98", 7946), meta)], c.now)
    c.flush("a")
    assert c["a"].status("spirit") == MemberStatus.ALIVE
    # Buffered intents expire after recent_intent_timeout.
    inject(c, "a", sm.LeaveIntent(70, "wraith"))
    c.run_for(SerfConfig().recent_intent_timeout + 2 * SerfConfig().reap_interval)
    c["a"].serf.handle_packet([Alive(1, "wraith", ("10.0.0.97", 7946), meta)], c.now)
    c.flush("a")
    assert c["a"].status("wraith") == MemberStatus.ALIVE


def test_member_refutes_a_leave_intent_about_itself() -> None:
    c = cluster_of("ab")
    inject(c, "a", sm.LeaveIntent(500, "a"))
    assert c["a"].status("a") == MemberStatus.ALIVE
    assert c["a"].serf.member_clock.time() > 500
    # b hears a's refuting join intent (stamped after 500), so a later replay of the stale
    # leave cannot flip it to leaving.
    c.run_for(3)
    inject(c, "b", sm.LeaveIntent(500, "a"))
    assert c["b"].status("a") == MemberStatus.ALIVE


def test_leave_then_restart_with_snapshot_is_alive_again() -> None:
    c = cluster_of("abc")
    c["c"].serf.leave(c.now)
    c.flush("c")
    c.run_for(2)
    c.crash("c")
    c.run_for(10)
    assert c.all_see("c", MemberStatus.LEFT)
    state = snap.replay(c["c"].records)
    assert state.left and state.members == {}
    # Restarted from its snapshot: no automatic rejoin after a graceful leave, clocks kept.
    node = c.add("c", snapshot=state)
    assert node.serf.previous_members() == []
    assert node.serf.member_clock.time() > state.member_clock
    c.join("c", ["a"], ignore_old=True)
    c.run_for(10)
    assert c.all_see("c", MemberStatus.ALIVE)
    assert c["a"].member_events(MemberEventKind.JOIN, "c")[-1].members[0].status == (
        MemberStatus.ALIVE
    )


# --- user events --------------------------------------------------------------------------------


def test_user_event_reaches_everyone_exactly_once_despite_duplicates() -> None:
    c = cluster_of("abcde")
    c.duplicate = True  # every packet is delivered twice from now on
    lt = c["b"].serf.user_event("deploy", b"v1", False, c.now)
    c.flush("b")
    # Gossip reaches everyone with high probability; push-pull (anti-entropy, which carries
    # recent events) makes it certain within a push-pull interval or two.
    c.run_for(70)
    for node in c.nodes.values():
        evs = [e for e in node.user_events() if e.name == "deploy"]
        assert [(e.payload, e.ltime) for e in evs] == [(b"v1", lt)], node.label
    # Same name and time, different payload (two senders at once): both delivered.
    lt_c = c["c"].serf.user_event("x", b"from-c", False, c.now)
    lt_d = c["d"].serf.user_event("x", b"from-d", False, c.now)
    assert lt_c == lt_d
    c.flush("c")
    c.flush("d")
    c.run_for(70)
    for node in c.nodes.values():
        got = sorted(e.payload for e in node.user_events() if e.name == "x")
        assert got == [b"from-c", b"from-d"], node.label
    assert sum(n.serf.stats.get("events_duplicate") for n in c.nodes.values()) > 0
    # Every node's event clock is past both events.
    assert all(n.serf.event_clock.time() > lt_c for n in c.nodes.values())


def test_user_events_coalesce_to_the_latest_per_name() -> None:
    cfg = SerfConfig(coalesce_period=2.0)
    c = cluster_of("abc", serf_config=cfg)
    a = c["a"].serf
    for v in (b"v1", b"v2", b"v3"):
        a.user_event("deploy", v, True, c.now)
        c.run_for(0.1)
    a.user_event("deploy", b"urgent", False, c.now)  # not coalescable: delivered on arrival
    c.flush("a")
    c.run_for(1.0)
    for node in c.nodes.values():
        assert [e.payload for e in node.user_events()] == [b"urgent"], node.label
    c.run_for(5)
    for node in c.nodes.values():
        assert [e.payload for e in node.user_events()] == [b"urgent", b"v3"], node.label


def test_joining_member_catches_up_on_events_unless_ignore_old() -> None:
    c = cluster_of("ab")
    c["a"].serf.user_event("e1", b"1", False, c.now)
    c["b"].serf.user_event("e2", b"2", False, c.now)
    c.flush("a")
    c.flush("b")
    c.run_for(5)
    c.add("c")
    c.add("d")
    c.join("c", ["a"], ignore_old=False)
    c.join("d", ["a"], ignore_old=True)
    c.run_for(5)
    assert sorted(e.name for e in c["c"].user_events()) == ["e1", "e2"]  # caught up by push-pull
    assert c["d"].user_events() == []
    c["b"].serf.user_event("e3", b"3", False, c.now)
    c.flush("b")
    c.run_for(5)
    assert [e.name for e in c["d"].user_events()] == ["e3"]
    assert sorted(e.name for e in c["c"].user_events()) == ["e1", "e2", "e3"]


# --- queries ------------------------------------------------------------------------------------


TAGS = {
    "a": {"role": "server", "dc": "dc1"},
    "b": {"role": "server", "dc": "dc1"},
    "c": {"role": "client", "dc": "dc1"},
    "d": {"role": "client"},
}


def queries_at(node: Node, name: str) -> list[Query]:
    return [e for e in node.of(Query) if isinstance(e, Query) and e.name == name]


def test_default_query_timeout_follows_serf_formula() -> None:
    assert default_query_timeout(0.2, 16, 1) == pytest.approx(3.2)
    assert default_query_timeout(0.2, 16, 9) == pytest.approx(3.2)
    assert default_query_timeout(0.2, 16, 10) == pytest.approx(6.4)
    assert default_query_timeout(0.5, 16, 100) == pytest.approx(24.0)
    c = cluster_of("abcd", TAGS)
    assert c["a"].serf.default_query_timeout() == pytest.approx(0.2 * 16 * 1)


def test_query_with_tag_filter_acks_responses_and_done() -> None:
    c = cluster_of("abcd", TAGS)
    c.duplicate = True
    a = c["a"]
    qid = a.serf.query("ping", b"hello", filter_tags={"role": "^serv"}, request_ack=True, now=c.now)
    c.flush("a")
    timeout = a.serf.default_query_timeout()
    deadline = c.now + timeout
    c.run_for(1.0)
    # Only the servers (a itself included) get the query, once each.
    for label in "ab":
        got = queries_at(c[label], "ping")
        assert len(got) == 1, label
        assert got[0].payload == b"hello" and got[0].source == "a" and got[0].id == qid
    for label in "cd":
        assert queries_at(c[label], "ping") == []
    # Acks were sent without waiting for the application.
    acks = [e for e in a.of(QueryAck) if isinstance(e, QueryAck)]
    assert sorted(e.source for e in acks) == ["a", "b"]
    # b answers: a direct packet of one UserMsg to a's address, not a broadcast.
    b = c["b"]
    b.sent.clear()
    b.serf.respond(queries_at(b, "ping")[0].id, b"pong-b", c.now)
    c.flush("b")
    direct = [p for p in b.sent if p.addr == a.addr and len(p.messages) == 1]
    assert direct
    msg = direct[0].messages[0]
    assert isinstance(msg, UserMsg)
    decoded = sm.decode(msg.payload)
    assert isinstance(decoded, sm.QueryResponseMsg) and decoded.payload == b"pong-b"
    a.serf.respond(qid, b"pong-a", c.now)
    c.flush("a")
    with pytest.raises(SerfError, match="already answered"):
        b.serf.respond(queries_at(b, "ping")[0].id, b"again", c.now)
    c.run_for(1.0)
    responses = [e for e in a.of(QueryResponse) if isinstance(e, QueryResponse)]
    assert sorted((r.source, r.payload) for r in responses) == [("a", b"pong-a"), ("b", b"pong-b")]
    assert a.of(QueryDone) == []
    c.run_until(deadline + 0.01)
    done = [e for e in a.of(QueryDone) if isinstance(e, QueryDone)]
    assert len(done) == 1 and done[0].id == qid
    assert sorted(done[0].acks) == ["a", "b"] and sorted(done[0].responses) == ["a", "b"]
    done_at = next(t for t, e in a.events if isinstance(e, QueryDone))
    assert done_at == pytest.approx(deadline)


def test_query_node_filter_and_late_responses_are_dropped() -> None:
    c = cluster_of("abcd", TAGS)
    t0 = c.now
    qid = c["a"].serf.query("who", b"", filter_nodes=["c", "d"], timeout=2.0, now=c.now)
    c.flush("a")
    c.run_for(0.5)
    assert [label for label in "abcd" if queries_at(c[label], "who")] == ["c", "d"]
    c["c"].serf.respond(queries_at(c["c"], "who")[0].id, b"c", c.now)
    c.flush("c")
    # d waits past the originator's deadline; its own deadline (from its receipt) is later.
    q_d = queries_at(c["d"], "who")[0]
    c.run_until(t0 + 2.0 + 0.001)
    assert len(c["a"].of(QueryDone)) == 1
    c.now = q_d.deadline - 0.001
    c["d"].serf.respond(q_d.id, b"d", c.now)
    c.flush("d")
    c.run_for(1)
    responses = [e for e in c["a"].of(QueryResponse) if isinstance(e, QueryResponse)]
    assert [r.source for r in responses] == ["c"]
    assert c["a"].serf.stats.get("responses_unknown") + c["a"].serf.stats.get("responses_late") == 1
    done = c["a"].of(QueryDone)[0]
    assert isinstance(done, QueryDone) and done.id == qid and done.responses == ("c",)
    # Past a responder's own deadline, respond refuses.
    qid2 = c["a"].serf.query("slow", b"", filter_nodes=["b"], timeout=1.0, now=c.now)
    c.flush("a")
    c.run_for(3)
    q_b = queries_at(c["b"], "slow")[0]
    assert q_b.id == qid2
    with pytest.raises(SerfError, match=r"deadline|expired"):
        c["b"].serf.respond(q_b.id, b"late", c.now)


def test_query_tag_regex_semantics() -> None:
    c = cluster_of("abcd", TAGS)
    # Unanchored search like Go's regexp.MatchString; a missing tag matches as "".
    c["a"].serf.query("q1", b"", filter_tags={"dc": "^$"}, now=c.now)
    c["a"].serf.query("q2", b"", filter_tags={"role": "client", "dc": "dc"}, now=c.now)
    c.flush("a")
    c.run_for(1)
    assert [label for label in "abcd" if queries_at(c[label], "q1")] == ["d"]
    assert [label for label in "abcd" if queries_at(c[label], "q2")] == ["c"]


# --- snapshots ----------------------------------------------------------------------------------


def test_snapshot_replay_restores_clocks_and_previous_members(tmp_path: Path) -> None:
    c = cluster_of("abc")
    c["b"].serf.user_event("before-crash", b"x", False, c.now)
    c["b"].serf.query("q", b"", now=c.now)
    c.flush("b")
    c.run_for(5)
    a = c["a"]
    assert any(isinstance(r, SnapshotAlive) and r.name == "b" for r in a.records)
    assert any(isinstance(r, SnapshotClocks) for r in a.records)
    path = tmp_path / "serf" / "local.snapshot"
    path.parent.mkdir()
    snap.append_records(path, a.records)
    clocks = a.serf.clocks()
    c.crash("a")
    c.run_for(30)
    state = snap.load(path)
    assert state is not None and not state.left and state.skipped == 0
    assert set(state.members) == {"a", "b", "c"}
    assert (state.member_clock, state.event_clock, state.query_clock) == clocks
    restarted = c.add("a", snapshot=state)
    assert sorted(restarted.serf.previous_members()) == sorted([c["b"].addr, c["c"].addr])
    assert restarted.serf.member_clock.time() > clocks[0]
    assert restarted.serf.event_clock.time() > clocks[1]
    assert restarted.serf.query_clock.time() > clocks[2]
    c.join("a", ["b", "c"], ignore_old=True)
    c.run_for(10)
    assert c.all_see("a", MemberStatus.ALIVE)
    assert restarted.status("b") == MemberStatus.ALIVE
    # The event seen before the crash is not delivered again.
    assert restarted.user_events() == []
    snap.append_records(path, restarted.records)
    again = snap.load(path)
    assert again is not None and set(again.members) == {"a", "b", "c"}


def test_snapshot_after_graceful_leave_does_not_rejoin() -> None:
    c = cluster_of("ab")
    c["a"].serf.leave(c.now)
    c.flush("a")
    state = snap.replay(c["a"].records)
    assert state.left and state.members == {}
    assert Cluster().add("a", snapshot=state).serf.previous_members() == []
    keep = snap.replay(c["a"].records, rejoin_after_leave=True)
    assert not keep.left and set(keep.members) == {"a", "b"}
    cfg = SerfConfig(rejoin_after_leave=True)
    node = Cluster().add("a", snapshot=keep, config=cfg, addr=c["a"].addr)
    assert node.serf.previous_members() == [c["b"].addr]


# --- conflicts ----------------------------------------------------------------------------------


def test_name_conflict_on_another_member_is_reported() -> None:
    c = cluster_of("ab")
    imposter = c.add("b", label="b2", addr=("10.0.0.50", 7946))
    c.join("b2", ["a"])
    c.run_for(3)
    conflicts = [e for e in c["a"].of(MemberConflict) if isinstance(e, MemberConflict)]
    assert conflicts
    assert conflicts[0] == MemberConflict("b", c["b"].addr, imposter.addr, local=False)
    assert c["a"].serf.member("b").addr == c["b"].addr  # type: ignore[union-attr]
    assert c["a"].serf.stats.get("conflicts") >= 1


def test_name_conflict_about_ourselves_is_local() -> None:
    # memberlist reports the conflict; Serf turns it into a local MemberConflict error event.
    c = cluster_of("ab")
    a = c["a"]
    other = MLMember("a", ("10.0.0.77", 7946), b"", 3, MemberState.ALIVE)
    a.serf._on_member_event(MLMemberEvent("conflict", other), c.now)
    c.flush("a")
    assert a.of(MemberConflict)[-1] == MemberConflict("a", a.addr, ("10.0.0.77", 7946), True)


# --- bad inputs ---------------------------------------------------------------------------------


def test_oversized_user_event_is_refused() -> None:
    c = cluster_of("ab")
    a = c["a"].serf
    a.user_event("n", bytes(511), False, c.now)  # name + payload = 512: fine
    with pytest.raises(SerfError, match="user_event_size_limit=512"):
        a.user_event("nn", bytes(511), False, c.now)
    big = SerfConfig(user_event_size_limit=1024)
    b = Cluster().add("x", config=big).serf
    b.user_event("n", bytes(1000), False, 0.0)


def test_bad_query_inputs_are_refused() -> None:
    c = cluster_of("ab")
    a = c["a"].serf
    with pytest.raises(SerfError, match=r"tag 'role'.*regular expression"):
        a.query("q", b"", filter_tags={"role": "(unclosed"}, now=c.now)
    with pytest.raises(SerfError, match="query_size_limit=1024"):
        a.query("q", bytes(1024), now=c.now)
    with pytest.raises(SerfError, match="timeout"):
        a.query("q", b"", timeout=0, now=c.now)
    qid = a.query("q", b"", now=c.now)
    c.flush("a")
    (q,) = [e for e in c["a"].of(Query) if isinstance(e, Query)]
    with pytest.raises(SerfError, match="query_response_size_limit"):
        a.respond(q.id, bytes(2000), c.now)
    a.respond(qid, b"ok", c.now)  # still open after the refused response
    with pytest.raises(SerfError, match="unknown"):
        a.respond(qid, b"again", c.now)


def test_oversized_tags_are_refused() -> None:
    with pytest.raises(SerfError, match="512 bytes memberlist meta"):
        Cluster().add("x", {"k": "v" * 600})
    node = Cluster().add("y", {"role": "ok"})
    with pytest.raises(SerfError, match="tags encode to"):
        node.serf.set_tags({f"k{i}": "v" * 40 for i in range(20)}, 0.0)
    assert node.serf.tags == {"role": "ok"}


def test_config_validation_names_the_field() -> None:
    for field_name, value in [
        ("reap_interval", 0),
        ("reconnect_interval", -1.0),
        ("reconnect_timeout", 0.0),
        ("tombstone_timeout", 0),
        ("query_timeout_mult", 0),
        ("event_buffer", 0),
        ("query_buffer", -5),
        ("coalesce_period", -1.0),
        ("user_event_size_limit", 10_000),
        ("query_size_limit", 0),
    ]:
        with pytest.raises(SerfConfigError, match=field_name):
            SerfConfig(**{field_name: value})  # type: ignore[arg-type]
    small = default_lan_config("z").replace(packet_size=600)
    with pytest.raises(SerfConfigError, match="query_size_limit"):
        Serf(SerfConfig(), small, random.Random(1), 0.0, {})
    Serf(
        SerfConfig(query_size_limit=500, query_response_size_limit=500),
        small,
        random.Random(1),
        0.0,
        {},
    )


def test_defaults_are_serf_and_consul_values() -> None:
    cfg = SerfConfig()
    assert cfg.reap_interval == 15.0
    assert cfg.reconnect_interval == 30.0
    assert cfg.reconnect_timeout == 72 * 3600.0
    assert cfg.tombstone_timeout == 24 * 3600.0
    assert cfg.query_timeout_mult == 16
    assert cfg.event_buffer == 512 and cfg.query_buffer == 512
    assert cfg.coalesce_period == 0.0
    assert cfg.user_event_size_limit == 512


def test_hostile_user_messages_are_counted_and_dropped() -> None:
    c = cluster_of("ab")
    before = c["a"].serf.members()
    c["a"].serf.handle_packet(
        [UserMsg(b""), UserMsg(b"\xff\x00"), UserMsg(b"\x03\x01"), UserMsg(b"\x06\x00")],
        c.now,
    )
    c.flush("a")
    assert c["a"].serf.stats.get("decode_errors") == 4
    assert c["a"].serf.members() == before
    c.run_for(5)
    assert c.all_see("a", MemberStatus.ALIVE)


def test_rejoined_member_is_not_stuck_leaving_after_a_push_pull() -> None:
    # A peer saw the rejoin's join intent while its memberlist still had the member left; its
    # push-pull lists the member as left with that same status time: not a new leave.
    import random as _random

    from gossip.config import default_local_config
    from gossip.messages import Alive, Dead, MemberState, PushNodeState, PushPull, UserMsg
    from gossip.serf import Serf, SerfConfig
    from gossip.serf import messages as sm

    x = Serf(SerfConfig(), default_local_config("x", ("10.0.0.1", 1)), _random.Random(1), 0.0, {})
    r_addr = ("10.0.0.3", 1)
    x.handle_packet([Alive(0, "r", r_addr, sm.encode_tags({}))], 1.0)
    x.handle_packet([UserMsg(sm.encode(sm.LeaveIntent(3, "r")))], 2.0)
    x.handle_packet([Dead(0, "r", "r")], 2.1)
    x.handle_packet([Alive(1, "r", r_addr, sm.encode_tags({}))], 3.0)
    x.handle_packet([UserMsg(sm.encode(sm.JoinIntent(5, "r")))], 3.1)
    peer_state = sm.PushPullState(6, (("y", 1), ("r", 5)), ("r",), 0, (), 0)
    pp = PushPull(
        False,
        (PushNodeState("r", r_addr, sm.encode_tags({}), 1, MemberState.ALIVE),),
        sm.encode(peer_state),
    )
    x.merge_remote_state(pp, 4.0)
    member = x.member("r")
    assert member is not None and member.status.name == "ALIVE"
