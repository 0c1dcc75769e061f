"""Consul's Raft timing defaults and their conversion to core ticks."""

from __future__ import annotations

import pytest

from raft.core.config import ConfigError
from raft.timing import Timing


def test_consul_defaults() -> None:
    t = Timing()
    assert (t.heartbeat_timeout_ms, t.election_timeout_ms, t.leader_lease_timeout_ms) == (
        1000,
        1000,
        500,
    )
    assert (t.snapshot_threshold, t.snapshot_interval_ms, t.trailing_logs) == (16384, 30_000, 10240)
    core = t.core_config()
    # 1 s election timeout, 100 ms heartbeats, 500 ms lease, at 50 ms per tick.
    assert t.tick_seconds == pytest.approx(0.05)
    assert core.election_ticks * t.tick_seconds == pytest.approx(1.0)
    assert core.heartbeat_ticks * t.tick_seconds == pytest.approx(0.1)
    assert core.lease_ticks * t.tick_seconds == pytest.approx(0.5)


def test_raft_multiplier_scales_wall_clock_not_ticks() -> None:
    one, five = Timing(raft_multiplier=1), Timing(raft_multiplier=5)
    assert five.tick_seconds == pytest.approx(5 * one.tick_seconds)
    assert five.core_config().election_ticks * five.tick_seconds == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"raft_multiplier": 0}, "raft_multiplier"),
        ({"raft_multiplier": 11}, "raft_multiplier"),
        ({"heartbeat_timeout_ms": 1}, "heartbeat_timeout_ms"),
        ({"leader_lease_timeout_ms": 2000}, "leader_lease_timeout_ms"),
        ({"snapshot_threshold": 0}, "snapshot_threshold"),
        ({"trailing_logs": -1}, "trailing_logs"),
    ],
)
def test_bad_timing_names_the_setting(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Timing(**kwargs)  # type: ignore[arg-type]
