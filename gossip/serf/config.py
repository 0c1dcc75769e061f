"""Serf settings, with Serf's defaults (and Consul's where Consul overrides them).

All durations are seconds (floats). ``validate()`` runs at construction and raises
``SerfConfigError`` naming the setting. Settings that depend on the memberlist
configuration (a message must fit in one packet) are checked when ``Serf`` is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

HOUR = 3600.0

MAX_USER_EVENT_SIZE = 9 * 1024
"""Hard ceiling on ``user_event_size_limit`` (Serf's UserEventSizeLimit constant)."""


class SerfConfigError(ValueError):
    """A setting is out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class SerfConfig:
    reap_interval: float = 15.0  # s between reaps of failed/left members and old intents
    reconnect_interval: float = 30.0  # s between attempts to reconnect to a failed member
    reconnect_timeout: float = 72 * HOUR  # s a failed member is kept (Consul; Serf says 24h)
    tombstone_timeout: float = 24 * HOUR  # s a left member is kept
    recent_intent_timeout: float = 300.0  # s an intent about an unknown member is buffered
    query_timeout_mult: int = 16  # query timeout = gossip_interval * this * ceil(log10(n+1))
    event_buffer: int = 512  # Lamport times of user events remembered for de-duplication
    query_buffer: int = 512  # Lamport times of queries remembered for de-duplication
    coalesce_period: float = 0.0  # s to gather coalescable user events; 0 = deliver each at once
    user_event_size_limit: int = 512  # bytes of name + payload of one user event
    query_size_limit: int = 1024  # bytes of one encoded query
    query_response_size_limit: int = 1024  # bytes of one encoded query response
    leave_propagate_delay: float = 1.0  # s between starting a leave and considering it done
    snapshot_clock_interval: float = 0.5  # s between snapshot records of changed clocks
    rejoin_after_leave: bool = False  # a snapshot's graceful leave does not stop a rejoin

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = (
            "reap_interval",
            "reconnect_interval",
            "reconnect_timeout",
            "tombstone_timeout",
            "recent_intent_timeout",
            "snapshot_clock_interval",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise SerfConfigError(f"serf: {name}={value!r} must be > 0")
        non_negative = ("coalesce_period", "leave_propagate_delay")
        for name in non_negative:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise SerfConfigError(f"serf: {name}={value!r} must be >= 0")
        at_least_one = (
            "query_timeout_mult",
            "event_buffer",
            "query_buffer",
            "user_event_size_limit",
            "query_size_limit",
            "query_response_size_limit",
        )
        for name in at_least_one:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SerfConfigError(f"serf: {name}={value!r} must be an integer >= 1")
        if self.user_event_size_limit > MAX_USER_EVENT_SIZE:
            raise SerfConfigError(
                f"serf: user_event_size_limit={self.user_event_size_limit} must not exceed "
                f"{MAX_USER_EVENT_SIZE} bytes"
            )

    def replace(self, **changes: object) -> SerfConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def default_serf_config() -> SerfConfig:
    """Serf's defaults with Consul's reconnect_timeout (72h)."""
    return SerfConfig()
