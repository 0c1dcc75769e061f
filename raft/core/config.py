"""Configuration of the sans-I/O core, in ticks.

The driver converts wall-clock settings (``raft.timing.Timing``) into ticks; the core only
counts calls to ``tick()``.
"""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting is out of range; the message names the setting."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    election_ticks: int = 20  # followers campaign after [E, 2E) ticks without a leader
    heartbeat_ticks: int = 2  # the leader sends heartbeats this often
    lease_ticks: int = 10  # a leader lease lasts this long after a quorum acked (< election)
    pre_vote: bool = True  # campaign only after a pre-vote round that would win
    check_quorum: bool = True  # a leader steps down without a quorum for election_ticks
    lease_reads: bool = False  # serve ReadIndex from the lease, skipping a heartbeat round
    max_entries_per_msg: int = 512  # batching: entries in one AppendEntries
    max_bytes_per_msg: int = 1 << 20  # batching: payload bytes in one AppendEntries
    max_inflight: int = 64  # pipelining: AppendEntries in flight per follower
    snapshot_retry_ticks: int = 60  # resend a snapshot that was not answered in this long

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("election_ticks", self.election_ticks >= 2, "must be >= 2"),
            (
                "heartbeat_ticks",
                1 <= self.heartbeat_ticks < self.election_ticks,
                "must be >= 1 and < election_ticks",
            ),
            (
                "lease_ticks",
                1 <= self.lease_ticks < self.election_ticks,
                "must be >= 1 and < election_ticks",
            ),
            ("max_entries_per_msg", self.max_entries_per_msg >= 1, "must be >= 1"),
            ("max_bytes_per_msg", self.max_bytes_per_msg >= 1, "must be >= 1"),
            ("max_inflight", self.max_inflight >= 1, "must be >= 1"),
            ("snapshot_retry_ticks", self.snapshot_retry_ticks >= 1, "must be >= 1"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"raft: {name}={getattr(self, name)!r} {why}")
        if self.lease_reads and not self.check_quorum:
            raise ConfigError("raft: lease_reads requires check_quorum")
