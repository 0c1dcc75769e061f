"""Wall-clock settings of a Raft node, with Consul's defaults, and their conversion to ticks.

Consul's base values (``agent/consul/config.go``): heartbeat and election timeouts of 1 s and a
leader lease of 500 ms, each multiplied by ``performance.raft_multiplier``; a snapshot after
16384 new entries, checked every 30 s; 10240 trailing log entries kept behind a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from raft.core.config import ConfigError, CoreConfig

TICKS_PER_HEARTBEAT_TIMEOUT = 20  # a tick is 1/20 of the heartbeat timeout (50 ms at x1)


@dataclass(frozen=True, slots=True)
class Timing:
    raft_multiplier: int = 1  # Consul's performance.raft_multiplier, 1..10
    heartbeat_timeout_ms: int = 1000
    election_timeout_ms: int = 1000
    leader_lease_timeout_ms: int = 500
    snapshot_threshold: int = 16384  # new entries since the last snapshot
    snapshot_interval_ms: int = 30_000  # how often the threshold is checked
    trailing_logs: int = 10240  # entries kept behind a snapshot for slow followers
    lease_reads: bool = False  # serve linearizable reads from the leader lease

    def __post_init__(self) -> None:
        if not 1 <= self.raft_multiplier <= 10:
            raise ConfigError(f"raft_multiplier={self.raft_multiplier!r} must be between 1 and 10")
        for name in (
            "heartbeat_timeout_ms",
            "election_timeout_ms",
            "leader_lease_timeout_ms",
            "snapshot_interval_ms",
        ):
            if getattr(self, name) < 5:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 5")
        if self.leader_lease_timeout_ms > self.heartbeat_timeout_ms:
            raise ConfigError(
                f"leader_lease_timeout_ms={self.leader_lease_timeout_ms} must not exceed "
                f"heartbeat_timeout_ms={self.heartbeat_timeout_ms}"
            )
        if self.snapshot_threshold < 1:
            raise ConfigError(f"snapshot_threshold={self.snapshot_threshold!r} must be >= 1")
        if self.trailing_logs < 0:
            raise ConfigError(f"trailing_logs={self.trailing_logs!r} must be >= 0")

    @property
    def tick_seconds(self) -> float:
        return self.heartbeat_timeout_ms * self.raft_multiplier / TICKS_PER_HEARTBEAT_TIMEOUT / 1000

    def core_config(self, **overrides: object) -> CoreConfig:
        tick_ms = self.tick_seconds * 1000
        election = max(2, round(self.election_timeout_ms * self.raft_multiplier / tick_ms))
        lease = max(
            1,
            min(election - 1, round(self.leader_lease_timeout_ms * self.raft_multiplier / tick_ms)),
        )
        heartbeat = max(1, min(election - 1, TICKS_PER_HEARTBEAT_TIMEOUT // 10))
        values: dict[str, object] = {
            "election_ticks": election,
            "heartbeat_ticks": heartbeat,
            "lease_ticks": lease,
            "lease_reads": self.lease_reads,
        }
        values.update(overrides)
        return CoreConfig(**values)  # type: ignore[arg-type]
