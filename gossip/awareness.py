"""Lifeguard's local health awareness: a score that slows our own probing when we are the
one in trouble (missed nacks, refutations), so a struggling member does not accuse others.

Invariant: 0 <= score < max_multiplier. Timeouts scale by (score + 1).
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("enabled", "max", "score")

    def __init__(self, max_multiplier: int, enabled: bool = True) -> None:
        self.max = max_multiplier
        self.score = 0
        self.enabled = enabled

    def apply(self, delta: int) -> None:
        if self.enabled:
            self.score = min(self.max - 1, max(0, self.score + delta))

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
