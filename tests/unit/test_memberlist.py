"""SWIM + Lifeguard core behaviour, on a virtual clock. No sockets, no sleeps."""

from __future__ import annotations

import random

import pytest

from gossip.awareness import Awareness
from gossip.broadcast import BroadcastQueue
from gossip.config import (
    GossipConfigError,
    default_lan_config,
    default_local_config,
    default_wan_config,
)
from gossip.math import push_pull_scale, retransmit_limit, suspicion_timeout
from gossip.memberlist import Memberlist, SendPacket
from gossip.messages import Alive, Dead, MemberState, Ping, Suspect
from gossip.suspicion import Suspicion
from gossip.testing import GossipHarness
from gossip.wire import encoded_size


def joined(n: int, seed: int = 1) -> GossipHarness:
    h = GossipHarness(n, seed=seed)
    h.join_all()
    assert h.run_until(h.now + 30, h.converged), "cluster did not converge"
    return h


# ---------------------------------------------------------------------------- config


def test_default_tables_match_memberlist() -> None:
    lan, wan, local = (default_lan_config("a"), default_wan_config("a"), default_local_config("a"))
    assert (lan.probe_interval, lan.probe_timeout, lan.gossip_interval, lan.gossip_nodes) == (
        1.0,
        0.5,
        0.2,
        3,
    )
    assert (lan.suspicion_mult, lan.suspicion_max_timeout_mult, lan.retransmit_mult) == (4, 6, 4)
    assert (lan.indirect_checks, lan.push_pull_interval, lan.tcp_timeout) == (3, 30.0, 10.0)
    assert (lan.gossip_to_the_dead_time, lan.awareness_max_multiplier) == (30.0, 8)
    assert (wan.probe_interval, wan.probe_timeout, wan.gossip_interval, wan.gossip_nodes) == (
        5.0,
        3.0,
        0.5,
        4,
    )
    assert (wan.suspicion_mult, wan.push_pull_interval, wan.tcp_timeout) == (6, 60.0, 30.0)
    assert wan.gossip_to_the_dead_time == 60.0
    assert (local.probe_timeout, local.gossip_interval, local.suspicion_mult) == (0.2, 0.1, 3)
    assert (local.retransmit_mult, local.indirect_checks, local.push_pull_interval) == (2, 1, 15.0)
    assert (local.tcp_timeout, local.gossip_to_the_dead_time) == (1.0, 15.0)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"probe_interval": 0}, "probe_interval"),
        ({"gossip_nodes": 0}, "gossip_nodes"),
        ({"probe_timeout": 2.0}, "probe_timeout"),
        ({"packet_size": 100}, "packet_size"),
        ({"indirect_checks": -1}, "indirect_checks"),
    ],
)
def test_bad_config_names_the_setting(changes: dict[str, object], name: str) -> None:
    with pytest.raises(GossipConfigError, match=name):
        default_lan_config("a").replace(**changes)


def test_scaling_formulas() -> None:
    assert suspicion_timeout(4, 10, 1.0) == 4.0  # LAN, n=10: min 4 s ...
    assert 6 * suspicion_timeout(4, 10, 1.0) == 24.0  # ... max 24 s
    assert retransmit_limit(4, 10) == 8
    assert suspicion_timeout(4, 1, 1.0) == 4.0
    assert push_pull_scale(30.0, 32) == 30.0
    assert push_pull_scale(30.0, 33) == 60.0
    assert push_pull_scale(30.0, 128) == 90.0


# ---------------------------------------------------------------------------- pieces


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    s = Suspicion("a", expected=3, min_timeout=4.0, max_timeout=24.0, start=100.0)
    assert s.deadline == pytest.approx(124.0)
    assert s.confirm("b")
    after_one = s.deadline
    assert 104.0 < after_one < 124.0
    assert not s.confirm("b")  # not independent
    assert s.confirm("c") and s.confirm("d")
    assert s.deadline == pytest.approx(104.0)
    assert not s.confirm("e")  # enough already


def test_awareness_is_bounded_and_scales() -> None:
    a = Awareness(8)
    a.apply(100)
    assert a.score == 7 and a.scale(1.0) == 8.0
    a.apply(-100)
    assert a.score == 0 and a.scale(0.5) == 0.5
    off = Awareness(8, enabled=False)
    off.apply(3)
    assert off.score == 0


def test_broadcast_queue_invalidates_and_limits() -> None:
    q = BroadcastQueue(encoded_size)
    q.queue(Suspect(1, "x", "a"), "x")
    q.queue(Alive(2, "x", ("h", 1)), "x")  # replaces the suspect
    q.queue(Alive(1, "y", ("h", 2)), "y")
    assert len(q) == 2
    first = q.take(1400, limit=2)
    assert Suspect(1, "x", "a") not in first and len(first) == 2
    assert len(q.take(1400, limit=2)) == 2
    assert q.take(1400, limit=2) == [] and len(q) == 0


def test_broadcast_queue_prefers_fewest_transmits_and_respects_budget() -> None:
    q = BroadcastQueue(encoded_size)
    old = Alive(1, "old", ("h", 1))
    q.queue(old, "old")
    q.take(1400, limit=10)
    new = Alive(1, "new", ("h", 2))
    q.queue(new, "new")
    assert q.take(encoded_size(new), limit=10) == [new]


# ---------------------------------------------------------------------------- protocol


def test_join_through_one_seed_converges() -> None:
    h = joined(8)
    assert h.converged()
    assert all(len(m.core.member_list()) == 8 for m in h.members.values())


def test_crashed_member_is_declared_dead_by_all_within_bound() -> None:
    h = joined(8)
    h.crash("m3")
    start = h.now
    cfg = h.members["m0"].core.cfg
    bound = (
        6 * suspicion_timeout(cfg.suspicion_mult, 8, cfg.probe_interval) + 3 * cfg.probe_interval
    )
    done = h.run_until(
        start + bound, lambda: all(s == MemberState.DEAD for s in h.states("m3").values())
    )
    assert done, h.states("m3")
    events = [
        e
        for m in h.members.values()
        if m.up
        for e in m.events
        if e.kind == "leave" and e.member.name == "m3"
    ]
    assert len(events) == 7


def test_false_suspicion_is_refuted() -> None:
    h = joined(5)
    inc = h.members["m2"].core.incarnation
    h.members["m0"].core.suspect_node(Suspect(inc, "m2", "m0"), h.now)
    h.run_for(10)
    assert h.members["m2"].core.incarnation > inc
    assert all(s == MemberState.ALIVE for s in h.states("m2").values())
    assert h.members["m2"].core.stats.refutes >= 1


def test_buddy_system_ping_carries_the_suspicion() -> None:
    h = joined(3)
    core = h.members["m0"].core
    core.suspect_node(Suspect(0, "m1", "m0"), h.now)
    core.take_outputs()
    while True:  # probe until m1 is the target
        core._next_probe = h.now
        core.tick(h.now)
        sent = [o for o in core.take_outputs() if isinstance(o, SendPacket)]
        pings = [(o, m) for o in sent for m in o.messages if isinstance(m, Ping)]
        if pings and pings[0][1].target == "m1":
            break
        core._probe = None
    packet = pings[0][0]
    assert any(isinstance(m, Suspect) and m.node == "m1" for m in packet.messages)


def test_graceful_leave_is_left_not_dead() -> None:
    h = joined(6)
    h.members["m4"].core.leave(h.now)
    h.run_for(2)
    h.crash("m4")
    h.run_for(5)
    assert all(s == MemberState.LEFT for s in h.states("m4").values())


def test_restarted_member_rejoins_with_higher_incarnation() -> None:
    h = joined(5)
    h.crash("m2")
    h.run_until(
        h.now + 60, lambda: all(s in (MemberState.DEAD, None) for s in h.states("m2").values())
    )
    old = h.members["m0"].core.member("m2")
    old_inc = old.incarnation if old else 0
    fresh = h.add("m2")
    fresh.core.join([h.members["m0"].core.cfg.advertise])
    h._flush("m2")
    assert h.run_until(h.now + 30, h.converged)
    view = h.members["m0"].core.member("m2")
    assert view is not None and view.state == MemberState.ALIVE
    assert view.incarnation >= old_inc


def test_meta_update_propagates() -> None:
    h = joined(6)
    h.members["m1"].core.set_meta(b"role=server", h.now)
    h.run_for(3)
    for name, m in h.members.items():
        if name != "m1":
            view = m.core.member("m1")
            assert view is not None and view.meta == b"role=server"
            assert any(e.kind == "update" and e.member.name == "m1" for e in m.events)


def test_user_broadcast_is_sent_retransmit_limit_times() -> None:
    # Memberlist sends a user message a bounded number of times; the layer above (Serf)
    # re-broadcasts what it receives, so everyone gets it.
    h = joined(10)
    h.members["m7"].core.queue_user_broadcast(b"hello", key="greeting")
    h.run_for(3)
    receivers = [n for n, m in h.members.items() if b"hello" in m.user]
    assert 4 <= len(receivers) <= retransmit_limit(4, 10)
    assert h.members["m7"].core.pending_broadcasts() == 0


def test_missed_nacks_raise_local_health_score() -> None:
    h = joined(5)
    core = h.members["m0"].core
    # m0 hears nothing at all: acks, nacks and everything else are lost on the way in.
    h.drop = lambda src, dst, msgs: dst == "m0"
    h.run_for(6)
    assert core.awareness.score >= 2
    assert core.stats.probe_failures >= 2


def test_lifeguard_off_keeps_awareness_flat() -> None:
    h = GossipHarness(5, config=lambda n, a: default_lan_config(n, a).replace(lifeguard=False))
    h.join_all()
    assert h.run_until(30, h.converged)
    h.drop = lambda src, dst, msgs: dst == "m0"
    h.run_for(6)
    assert h.members["m0"].core.awareness.score == 0


def test_name_conflict_is_reported_and_ignored() -> None:
    h = joined(3)
    core = h.members["m0"].core
    core.alive_node(Alive(99, "m1", ("10.9.9.9", 7946)), h.now)
    outs = core.take_outputs()
    assert any(getattr(o, "kind", None) == "conflict" for o in outs)
    view = core.member("m1")
    assert view is not None and view.addr != ("10.9.9.9", 7946)


def test_dead_about_self_is_refuted() -> None:
    h = joined(3)
    core = h.members["m1"].core
    inc = core.incarnation
    core.dead_node(Dead(inc, "m1", "m0"), h.now)
    assert core.incarnation == inc + 1
    assert core.member("m1").state == MemberState.ALIVE  # type: ignore[union-attr]


def test_dead_members_are_forgotten_after_gossip_to_the_dead_time() -> None:
    h = joined(4)
    h.crash("m3")
    h.run_for(60)
    assert all(m.core.member("m3") is None for n, m in h.members.items() if m.up)


def test_core_is_deterministic() -> None:
    def run() -> list[tuple[str, str]]:
        h = joined(6, seed=9)
        h.crash("m2")
        h.run_for(40)
        return [(n, e.kind + e.member.name) for n, m in h.members.items() for e in m.events]

    assert run() == run()


def test_memberlist_never_reads_the_clock() -> None:
    core = Memberlist(default_lan_config("solo"), random.Random(1), now=1000.0)
    assert core.next_deadline() >= 1000.0
    core.tick(1e9)  # far future: timers fire, nothing breaks without members
    assert core.member("solo") is not None


def test_another_member_claiming_our_name_is_a_conflict_not_a_refutation_war() -> None:
    h = joined(3)
    core = h.members["m1"].core
    inc = core.incarnation
    core.alive_node(Alive(inc + 5, "m1", ("10.9.9.9", 7946)), h.now)
    outs = core.take_outputs()
    assert any(getattr(o, "kind", None) == "conflict" for o in outs)
    assert core.incarnation == inc
