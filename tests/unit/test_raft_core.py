"""Behaviour of the sans-I/O Raft core, one test per rule. No time, no sockets."""

from __future__ import annotations

import pytest

from raft.core.config import ConfigError, CoreConfig
from raft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfigChangeInProgress,
    ConfigChangeRejected,
    EntryKind,
    InstallSnapshot,
    LeadershipTransferInProgress,
    NotLeader,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
    Suffrage,
    TimeoutNow,
)
from raft.testing import Harness

# ---------------------------------------------------------------------------- elections


def test_one_leader_is_elected_by_timeouts() -> None:
    h = Harness(3)
    h.tick(40)
    assert len(h.leaders()) == 1
    leader = h.nodes[h.leaders()[0]]
    for core in h.nodes.values():
        assert core.term == leader.term
        assert core.leader_id == leader.id


def test_election_timeouts_are_randomized_within_e_to_2e() -> None:
    h = Harness(5)
    timeouts = {c.randomized_election_timeout for c in h.nodes.values()}
    e = h.config.election_ticks
    assert all(e <= t < 2 * e for t in timeouts)
    assert len(timeouts) > 1


def test_pre_vote_keeps_a_partitioned_node_from_raising_its_term() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    term = leader.term
    h.isolate("n3")
    h.tick(100)
    assert h.nodes["n3"].term == term  # pre-vote rounds never win, so no term bump
    assert h.nodes["n3"].role == Role.PRE_CANDIDATE
    h.heal()
    h.tick(5)
    assert h.nodes["n1"].role == Role.LEADER and h.nodes["n1"].term == term
    assert h.nodes["n3"].leader_id == "n1"


def test_without_pre_vote_a_rejoining_node_would_disrupt() -> None:
    # The contrast case, to show the test above measures something.
    h = Harness(
        3,
        CoreConfig(
            election_ticks=10, heartbeat_ticks=1, lease_ticks=5, pre_vote=False, check_quorum=False
        ),
    )
    leader = h.elect("n1")
    term = leader.term
    h.isolate("n3")
    h.tick(50)
    assert h.nodes["n3"].term > term


def test_voters_in_lease_reject_a_disruptive_candidate() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.nodes["n2"].step(RequestVote("n3", "n2", leader.term + 5, 100, leader.term + 4))
    h.process("n2")
    assert h.nodes["n2"].term == leader.term
    reply = [m for m in h.sent if isinstance(m, RequestVoteResponse) and m.src == "n2"][-1]
    assert not reply.granted


def test_a_restarted_voter_waits_an_election_timeout_before_voting() -> None:
    # It may have acknowledged a leader whose lease is still running just before it crashed.
    h = Harness(3)
    h.elect("n1")
    h.start("n3", just_restarted=True)
    h.nodes["n3"].step(RequestVote("n2", "n3", h.nodes["n1"].term + 1, 100, 100))
    h.process("n3")
    reply = [m for m in h.sent if isinstance(m, RequestVoteResponse) and m.src == "n3"][-1]
    assert not reply.granted
    h.tick(h.config.election_ticks, nodes=["n3"])
    h.nodes["n3"].leader_id = None
    h.nodes["n3"].step(RequestVote("n2", "n3", h.nodes["n1"].term + 1, 100, 100))
    h.process("n3")
    reply = [m for m in h.sent if isinstance(m, RequestVoteResponse) and m.src == "n3"][-1]
    assert reply.granted


def test_no_lease_reads_after_timeout_now_in_the_same_term() -> None:
    cfg = CoreConfig(election_ticks=10, heartbeat_ticks=1, lease_ticks=5, lease_reads=True)
    h = Harness(3, cfg)
    leader = h.elect("n1")
    h.tick(2)
    assert leader.lease_valid()
    h.isolate("n2")  # the transfer target never answers: the transfer is abandoned
    leader.transfer_leadership("n2")
    h.process("n1")
    h.tick(cfg.election_ticks + 1, nodes=["n1", "n3"])
    assert leader.role == Role.LEADER and leader.lead_transferee is None
    assert not leader.lease_valid()  # n2 may hold TimeoutNow and win with transfer votes


def test_check_quorum_leader_steps_down_without_quorum() -> None:
    h = Harness(3)
    h.elect("n1")
    h.isolate("n1")
    h.tick(2 * h.config.election_ticks + 1, nodes=["n1"])
    assert h.nodes["n1"].role == Role.FOLLOWER
    assert h.nodes["n1"].leader_id is None


def test_candidate_needs_up_to_date_log() -> None:
    h = Harness(3)
    h.elect("n1")
    h.isolate("n3")
    h.propose("n1", b"x")
    h.stabilize()
    h.heal()
    h.nodes["n1"].role = Role.FOLLOWER  # simulate the leader vanishing
    h.isolate("n1")
    h.nodes["n3"].campaign()
    h.stabilize()
    assert h.nodes["n3"].role != Role.LEADER  # n2 has the newer entry and refuses
    h.nodes["n2"].campaign()
    h.stabilize()
    assert h.nodes["n2"].role == Role.LEADER


def test_vote_is_persisted_before_the_vote_response_is_sent() -> None:
    h = Harness(3)
    h.nodes["n1"].campaign()
    h.process("n1")
    for _ in range(3):  # pre-vote request, pre-vote grant, real vote request
        h.deliver(lambda m: m.dst in ("n1", "n2"))
    ready_with_vote = [
        rd
        for rd in h.readies["n2"]
        if any(
            isinstance(m, RequestVoteResponse) and m.granted and not m.pre_vote for m in rd.messages
        )
    ]
    assert ready_with_vote
    hs = ready_with_vote[0].hard_state
    assert hs is not None and hs.voted_for == "n1" and hs.term == 2
    # A restart from the durable state keeps term and vote.
    core = h.start("n2")
    assert (core.term, core.voted_for) == (2, "n1")


def test_restart_recovers_log_and_term() -> None:
    h = Harness(3)
    h.elect("n1")
    for i in range(5):
        h.propose("n1", f"e{i}".encode())
    h.stabilize()
    before = h.nodes["n2"]
    after = h.start("n2")
    assert after.term == before.term
    assert after.log.last_index == before.log.last_index
    assert [e.data for e in after.log.entries] == [e.data for e in before.log.entries]


# ---------------------------------------------------------------------------- replication


def test_proposals_commit_and_apply_everywhere_in_order() -> None:
    h = Harness(3)
    h.elect("n1")
    for i in range(20):
        h.propose("n1", f"e{i}".encode())
    h.stabilize()
    h.tick(2)
    expected = [f"e{i}".encode() for i in range(20)]
    for node in h.ids:
        assert [e.data for e in h.applied[node]] == expected


def test_many_proposals_are_batched_into_few_appends_and_one_persist() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    sent_before = len(h.sent)
    readies_before = len(h.readies["n1"])
    for i in range(200):
        leader.propose(f"e{i}".encode())
    h.process("n1")
    assert len(h.readies["n1"]) - readies_before == 1  # group commit: one Ready, one fsync
    appends = [m for m in h.sent[sent_before:] if isinstance(m, AppendEntries) and m.entries]
    assert len(appends) == 2  # one per follower carrying all 200 entries
    assert all(len(m.entries) == 200 for m in appends)


def test_pipelining_keeps_several_appends_in_flight() -> None:
    h = Harness(
        3,
        CoreConfig(
            election_ticks=10,
            heartbeat_ticks=1,
            lease_ticks=5,
            max_entries_per_msg=10,
            max_inflight=4,
        ),
    )
    leader = h.elect("n1")
    sent_before = len(h.sent)
    for i in range(100):
        leader.propose(f"e{i}".encode())
    h.process("n1")
    to_n2 = [
        m
        for m in h.sent[sent_before:]
        if isinstance(m, AppendEntries) and m.dst == "n2" and m.entries
    ]
    assert len(to_n2) == 4  # flow control: max_inflight appends before any answer
    h.stabilize()
    assert h.nodes["n2"].log.last_index == leader.log.last_index


def test_fast_backtracking_over_a_long_divergent_log() -> None:
    h = Harness(3)
    h.elect("n1")
    h.stabilize()
    # n3 leads an isolated term and piles up 100 entries nobody else sees.
    h.isolate("n3")
    n3 = h.nodes["n3"]
    n3.term += 5
    n3.role = Role.LEADER
    n3.leader_id = "n3"
    n3.progress = {}
    for i in range(100):
        n3.propose(f"stale{i}".encode())
    h.process("n3")
    # Meanwhile n1 commits 100 entries with n2.
    for i in range(100):
        h.propose("n1", f"good{i}".encode())
    h.stabilize()
    n3._become_follower(n3.term, None)
    h.heal()
    h.nodes["n1"].term = n3.term + 1  # make the real leader's term newest
    h.nodes["n1"]._become_leader()
    h.process_all()
    rejects_before = sum(isinstance(m, AppendEntriesResponse) and not m.success for m in h.sent)
    h.stabilize()
    h.tick(3)
    rejects = (
        sum(isinstance(m, AppendEntriesResponse) and not m.success for m in h.sent) - rejects_before
    )
    assert rejects <= 3  # one rejection per conflicting term, not one per entry
    assert [e.data for e in h.nodes["n3"].log.entries if e.kind == EntryKind.NORMAL] == [
        e.data for e in h.nodes["n1"].log.entries if e.kind == EntryKind.NORMAL
    ]


def test_lost_append_is_repaired_without_new_proposals() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    leader.propose(b"lost-for-n3")
    h.process("n1")
    h.deliver(lambda m: not (isinstance(m, AppendEntries) and m.dst == "n3"))
    h.stabilize()
    h.tick(h.config.election_ticks)
    assert h.nodes["n3"].log.last_index == leader.log.last_index


def test_leader_only_commits_entries_of_its_own_term_by_counting() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    assert leader.log.entry(leader.log.last_index).kind == EntryKind.NOOP
    assert leader.log.term(leader.log.committed) == leader.term


def test_follower_refuses_proposals() -> None:
    h = Harness(3)
    h.elect("n1")
    with pytest.raises(NotLeader) as err:
        h.nodes["n2"].propose(b"x")
    assert err.value.leader_id == "n1"


# ---------------------------------------------------------------------------- snapshots


def test_compaction_keeps_trailing_entries_and_lagging_follower_gets_snapshot() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.isolate("n3")
    for i in range(50):
        h.propose("n1", f"e{i}".encode())
    h.stabilize()
    applied = leader.log.applied
    meta = SnapshotMeta(applied, leader.log.term(applied) or 0, leader.membership_at(applied))
    first = leader.compact(meta, trailing=5)
    assert first == applied - 5 + 1
    assert leader.log.first_index == first
    h.heal()
    h.tick(3)
    h.stabilize()
    snaps = [m for m in h.sent if isinstance(m, InstallSnapshot) and m.dst == "n3"]
    assert snaps and snaps[0].meta.index == applied
    assert h.restored["n3"] and h.restored["n3"][0].index == applied
    assert h.nodes["n3"].log.last_index == leader.log.last_index
    assert h.disks["n3"].snapshot.index == applied


def test_compaction_beyond_applied_is_a_bug() -> None:
    h = Harness(1)
    leader = h.elect("n1")
    with pytest.raises(AssertionError):
        leader.compact(SnapshotMeta(leader.log.applied + 5, 1), trailing=0)


# ---------------------------------------------------------------------------- membership


def test_add_voter_joins_as_staging_and_is_promoted_after_catching_up() -> None:
    h = Harness(4, voters=["n1", "n2", "n3"])
    leader = h.elect("n1")
    for i in range(10):
        h.propose("n1", f"e{i}".encode())
    h.stabilize()
    leader.add_voter("n4", "addr-n4")
    h.process("n1")
    server = leader.membership.get("n4")
    assert server is not None and server.suffrage == Suffrage.STAGING
    assert "n4" not in leader.membership.voters
    h.stabilize()
    h.tick(3)
    h.stabilize()
    server = leader.membership.get("n4")
    assert server is not None and server.suffrage == Suffrage.VOTER
    assert h.nodes["n4"].membership.voters == {"n1", "n2", "n3", "n4"}


def test_only_one_membership_change_at_a_time() -> None:
    h = Harness(5, voters=["n1", "n2", "n3"])
    leader = h.elect("n1")
    leader.add_nonvoter("n4", "addr-n4")
    with pytest.raises(ConfigChangeInProgress):
        leader.add_nonvoter("n5", "addr-n5")
    h.process("n1")
    h.stabilize()
    leader.add_nonvoter("n5", "addr-n5")


def test_nonvoter_does_not_count_for_commit() -> None:
    h = Harness(4, voters=["n1", "n2", "n3"])
    leader = h.elect("n1")
    leader.add_nonvoter("n4", "addr-n4")
    h.process("n1")
    h.stabilize()
    h.isolate("n2")
    h.cut |= {("n3", "n1"), ("n1", "n3")}
    index, _ = h.propose("n1", b"needs-a-voter")
    h.stabilize()
    assert h.nodes["n4"].log.last_index >= index
    assert leader.log.committed < index


def test_removing_the_leader_steps_it_down_after_commit() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    leader.remove_server("n1")
    h.process("n1")
    h.stabilize()
    h.tick(2)
    assert leader.role == Role.FOLLOWER
    assert "n1" not in h.nodes["n2"].membership.ids
    h.tick(4 * h.config.election_ticks, nodes=["n2", "n3"])
    assert {h.nodes[n].role for n in ("n2", "n3")} >= {Role.LEADER}
    h.tick(4 * h.config.election_ticks)
    assert leader.role == Role.FOLLOWER  # never campaigns: not a voter any more


def test_membership_change_rejections_name_the_problem() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    with pytest.raises(ConfigChangeRejected, match="already a voter"):
        leader.add_voter("n2", "addr-n2")
    with pytest.raises(ConfigChangeRejected, match="not a member"):
        leader.remove_server("n9")


def test_uncommitted_config_is_reverted_when_truncated() -> None:
    h = Harness(4, voters=["n1", "n2", "n3"])
    leader = h.elect("n1")
    h.isolate("n1")
    leader.add_nonvoter("n4", "addr-n4")
    h.process("n1")
    assert "n4" in leader.membership.ids
    h.tick(4 * h.config.election_ticks, nodes=["n2", "n3"])
    new_leader = [n for n in ("n2", "n3") if h.nodes[n].role == Role.LEADER]
    assert new_leader
    h.propose(new_leader[0], b"overwrite")
    h.heal()
    h.tick(5)
    h.stabilize()
    assert "n4" not in leader.membership.ids


# ---------------------------------------------------------------------------- transfer


def test_leadership_transfer_to_named_server() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.propose("n1", b"x")
    h.stabilize()
    leader.transfer_leadership("n3")
    h.process("n1")
    assert any(isinstance(m, TimeoutNow) for m in h.sent)
    h.stabilize()
    assert h.nodes["n3"].role == Role.LEADER
    assert leader.role == Role.FOLLOWER


def test_leadership_transfer_waits_for_target_to_catch_up() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.isolate("n3")
    for i in range(10):
        h.propose("n1", f"e{i}".encode())
    h.stabilize()
    h.heal()
    leader.transfer_leadership("n3")
    with pytest.raises(LeadershipTransferInProgress):
        leader.propose(b"refused")
    h.process("n1")
    assert not any(isinstance(m, TimeoutNow) for m in h.outbox)
    h.stabilize()
    assert h.nodes["n3"].role == Role.LEADER


def test_leadership_transfer_picks_most_up_to_date() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.isolate("n2")
    h.propose("n1", b"x")
    h.stabilize()
    h.heal()
    assert leader.transfer_leadership() == "n3"


# ---------------------------------------------------------------------------- reads


def test_read_index_waits_for_a_heartbeat_quorum() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    leader.read_index(7)
    h.process("n1")
    assert h.reads["n1"] == []
    h.stabilize()
    assert [r.request_id for r in h.reads["n1"]] == [7]
    assert h.reads["n1"][0].index == leader.log.committed


def test_read_index_not_confirmed_by_a_minority() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.isolate("n1")
    leader.read_index(1)
    h.process("n1")
    h.stabilize()
    assert h.reads["n1"] == []


def test_lease_reads_are_served_without_a_round() -> None:
    cfg = CoreConfig(election_ticks=10, heartbeat_ticks=1, lease_ticks=5, lease_reads=True)
    h = Harness(3, cfg)
    leader = h.elect("n1")
    h.tick(2)
    leader.read_index(1)
    h.process("n1")
    assert [r.request_id for r in h.reads["n1"]] == [1]
    h.isolate("n1")
    h.tick(cfg.lease_ticks + 1, nodes=["n1"])
    leader.read_index(2)
    h.process("n1")
    assert [r.request_id for r in h.reads["n1"]] == [1]  # lease expired: needs a round


def test_many_reads_share_one_round() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    sent_before = len(h.sent)
    for r in range(50):
        leader.read_index(r)
    h.process("n1")
    rounds = {m.read_seq for m in h.sent[sent_before:] if isinstance(m, AppendEntries)}
    assert len(rounds) == 1
    h.stabilize()
    assert len(h.reads["n1"]) == 50


def test_follower_read_index_is_refused() -> None:
    h = Harness(3)
    h.elect("n1")
    with pytest.raises(NotLeader):
        h.nodes["n2"].read_index(1)


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"election_ticks": 1}, "election_ticks"),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks"),
        ({"election_ticks": 10, "heartbeat_ticks": 10}, "heartbeat_ticks"),
        ({"election_ticks": 10, "lease_ticks": 10}, "lease_ticks"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"check_quorum": False, "lease_reads": True}, "lease_reads"),
    ],
)
def test_bad_core_config_names_the_setting(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        CoreConfig(**kwargs)  # type: ignore[arg-type]


def test_core_refuses_input_between_ready_and_advance() -> None:
    h = Harness(1)
    core = h.nodes["n1"]
    core.campaign()
    rd = core.ready()
    with pytest.raises(RuntimeError, match="advance"):
        core.tick()
    core.advance(rd)


# ---------------------------------------------------------------------------- regressions


def test_lone_voter_sends_nothing_before_its_new_term_is_durable() -> None:
    # A single voter campaigns and wins in one step: its AppendEntries for the new term must
    # wait for the fsync of that term, or a crash could let it reuse the term differently.
    h = Harness(2, voters=["n1"])
    n1 = h.elect("n1")
    n1.add_nonvoter("n2", "addr-n2")
    h.stabilize()
    core = h.start("n1")
    core.campaign()
    core.propose(b"X")
    rd = core.ready()
    assert rd.hard_state is not None
    early, late = rd.split_messages()
    assert early == [] and any(isinstance(m, AppendEntries) for m in late)
    core.advance(rd)


def test_leader_removing_itself_does_not_shortcut_read_index() -> None:
    h = Harness(2)
    a = h.elect("n1")
    a.remove_server("n1")
    h.process("n1")
    h.deliver()
    h.isolate("n1")
    a.read_index(99)
    h.process("n1")
    assert h.reads["n1"] == []  # {n2} is not this node: a round is required


def test_uncommitted_self_removal_cannot_stall_two_voters() -> None:
    h = Harness(2)
    b = h.elect("n2")
    h.propose("n2", b"x")
    h.stabilize()
    h.isolate("n2")
    b.remove_server("n2")
    h.process("n2")
    h.tick(4 * h.config.election_ticks)
    assert b.role != Role.LEADER
    h.heal()
    h.tick(20 * h.config.election_ticks)
    assert h.leaders(), "no leader after healing"
    leader = h.nodes[h.leaders()[0]]
    h.propose(leader.id, b"after")
    h.stabilize()
    h.tick(3)
    assert any(e.data == b"after" for e in h.applied["n1"])


def test_read_round_bookkeeping_is_bounded() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.isolate("n3")  # a down voter must not pin old rounds forever
    h.tick(3000, nodes=["n1", "n2"])
    assert leader.role == Role.LEADER
    assert len(leader._read_seq_started) <= 1024


def test_failed_snapshot_delivery_is_retried_soon() -> None:
    h = Harness(3)
    leader = h.elect("n1")
    h.isolate("n3")
    for i in range(30):
        h.propose("n1", f"e{i}".encode())
    h.stabilize()
    applied = leader.log.applied
    leader.compact(
        SnapshotMeta(applied, leader.log.term(applied) or 0, leader.membership_at(applied)),
        trailing=0,
    )
    h.tick(2, nodes=["n1", "n2"])
    sent = [m for m in h.sent if isinstance(m, InstallSnapshot) and m.dst == "n3"]
    assert len(sent) == 1
    leader.snapshot_failed("n3")
    h.tick(2 * h.config.heartbeat_ticks + 1, nodes=["n1", "n2"])
    sent = [m for m in h.sent if isinstance(m, InstallSnapshot) and m.dst == "n3"]
    assert len(sent) == 2


def test_restarted_leader_with_uncommitted_self_removal_can_still_campaign() -> None:
    # After a restart the commit index is unknown (0 here): the previous configuration is
    # the committed one, since changes go one at a time.
    h = Harness(2)
    b = h.elect("n1")
    h.propose("n1", b"x")
    h.stabilize()
    h.isolate("n1")
    b.remove_server("n1")
    h.process("n1")
    restarted = h.start("n1")
    assert restarted.log.committed < restarted.membership_index
    h.heal()
    h.tick(20 * h.config.election_ticks)
    assert h.leaders(), "no leader: the two voters wait for each other"
