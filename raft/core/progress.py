"""What the leader knows about each follower's log (pure data, no I/O).

States, as in the Raft dissertation's flow-control discussion:

- PROBE: the leader does not know where the follower's log matches; at most one
  AppendEntries is outstanding until it is answered.
- REPLICATE: the logs match up to ``match``; the leader streams entries optimistically,
  advancing ``next`` as it sends, with at most ``max_inflight`` appends unanswered.
- SNAPSHOT: the entries the follower needs are compacted away; a snapshot is on its way.

Invariant: ``match < next``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass(slots=True)
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False  # PROBE: an append is outstanding
    inflight: deque[int] = field(default_factory=deque)  # REPLICATE: last index of each send
    pending_snapshot: int = 0  # SNAPSHOT: index of the snapshot sent
    snapshot_elapsed: int = 0  # SNAPSHOT: ticks since it was sent
    recent_active: bool = False  # heard from since the last check-quorum round
    read_ack: int = 0  # highest read_seq this follower echoed
    contact_tick: int = -(1 << 62)  # tick at which the newest acked read_seq started
    last_ack_tick: int = 0  # REPLICATE: when the follower last made progress

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_elapsed = 0
        self.inflight.clear()

    def acknowledge(self, index: int) -> bool:
        """Record that the follower's log matches through ``index``. True if it moved."""
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return True

    def can_send(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return not self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) < max_inflight
        return False
