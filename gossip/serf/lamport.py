"""Lamport clocks: logical time that orders Serf's intents, user events and queries.

A clock's value is the time its next message will be stamped with. ``witness(t)`` moves the
clock past a time seen in a message, so anything we send afterwards is ordered after it.
Values are unsigned 64-bit (they travel as such); the clock saturates at the maximum rather
than wrapping, so a hostile peer can stall ordering but never send it backwards.
"""

from __future__ import annotations

MAX_LTIME = (1 << 64) - 1


class LamportClock:
    __slots__ = ("_counter",)

    def __init__(self, start: int = 0) -> None:
        if not 0 <= start <= MAX_LTIME:
            raise ValueError(f"lamport time {start} is outside 0..2**64-1")
        self._counter = start

    def time(self) -> int:
        """The current value (the stamp of the next message)."""
        return self._counter

    def increment(self) -> int:
        """Advance by one and return the new value."""
        if self._counter < MAX_LTIME:
            self._counter += 1
        return self._counter

    def witness(self, t: int) -> None:
        """We saw a message stamped ``t``: make sure our next stamp is after it."""
        if t >= self._counter:
            self._counter = min(t + 1, MAX_LTIME)

    def __repr__(self) -> str:
        return f"LamportClock({self._counter})"
