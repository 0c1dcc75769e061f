"""A suspicion about one member, with Lifeguard's dynamic timeout.

The timeout starts at ``max_timeout`` and shrinks towards ``min_timeout`` as independent
members confirm the suspicion (``expected`` confirmations bring it down to the minimum), so
a member many others cannot reach is declared dead quickly, while a lone accuser (perhaps
the one in trouble) waits long enough for a refutation.
"""

from __future__ import annotations

from gossip.math import remaining_suspicion_time


class Suspicion:
    __slots__ = ("confirmations", "deadline", "expected", "max_timeout", "min_timeout", "start")

    def __init__(
        self, source: str, expected: int, min_timeout: float, max_timeout: float, start: float
    ) -> None:
        self.confirmations: set[str] = {source}
        self.expected = expected
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.start = start
        self.deadline = start + remaining_suspicion_time(0, expected, 0.0, min_timeout, max_timeout)

    def confirm(self, source: str) -> bool:
        """Count an independent confirmation; True if it was new (and moved the deadline)."""
        if source in self.confirmations or len(self.confirmations) - 1 >= self.expected:
            return False
        self.confirmations.add(source)
        n = len(self.confirmations) - 1
        self.deadline = self.start + remaining_suspicion_time(
            n, self.expected, 0.0, self.min_timeout, self.max_timeout
        )
        return True
