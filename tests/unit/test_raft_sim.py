"""The deterministic simulator: it passes on the real core, catches planted bugs, replays."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raft.sim.__main__ import run_seed
from raft.sim.cluster import SimCluster, SimOptions

CI_SEEDS = int(os.environ.get("RAFT_SIM_SEEDS", "40"))


@pytest.mark.parametrize("nodes", [3, 5])
def test_seeds_pass(nodes: int) -> None:
    seeds = CI_SEEDS if nodes == 3 else CI_SEEDS // 2
    total = 0
    for seed in range(10_000, 10_000 + seeds):
        ops, failure = run_seed(SimOptions(seed=seed, nodes=nodes))
        assert failure is None, f"seed {seed}: {failure}"
        total += ops
    assert total > seeds * 50  # the clients really ran


def test_a_seed_replays_exactly() -> None:
    first = SimCluster(SimOptions(seed=4242))
    first.run()
    second = SimCluster(SimOptions(seed=4242))
    second.run()
    assert first.history == second.history
    assert first.stats == second.stats
    assert first.checker.committed == second.checker.committed


def test_faults_really_happen() -> None:
    cluster = SimCluster(SimOptions(seed=77, nodes=5))
    cluster.run()
    stats = cluster.stats
    assert stats["crashes"] > 0 and stats["partitions"] > 0
    assert cluster.checker.max_committed > 20
    assert len({t for t in cluster.checker.leaders}) > 1  # several terms had leaders


def first_failing_seed(bug: str, limit: int) -> tuple[int, str] | None:
    for seed in range(limit):
        _, failure = run_seed(SimOptions(seed=seed, bug=bug))
        if failure is not None:
            return seed, failure
    return None


def test_simulator_catches_unpersisted_votes() -> None:
    found = first_failing_seed("skip-vote-fsync", 300)
    assert found is not None, "a vote that is never persisted went unnoticed in 300 seeds"
    seed, failure = found
    assert "voted twice" in failure or "two leaders" in failure or "linearizable" in failure
    # The failing seed replays alone, from the command line, and says how.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raft.sim",
            "--seeds",
            "1",
            "--seed-start",
            str(seed),
            "--bug",
            "skip-vote-fsync",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"seed {seed} FAILED" in proc.stderr
    assert f"--seed-start {seed}" in proc.stderr
    assert "1 seeds, 1 violations" in proc.stdout


def test_cli_summary_line_on_success() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "raft.sim", "--seeds", "3", "--seed-start", "123"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("raft.sim: 3 seeds, 0 violations, ")
    assert "operations linearizable" in last


def test_cli_rejects_bad_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "raft.sim", "--nodes", "9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--nodes" in proc.stderr
