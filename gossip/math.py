"""Memberlist's scaling formulas (pure functions)."""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """The minimum suspicion timeout: mult * max(1, log10(n)) * probe_interval."""
    return suspicion_mult * max(1.0, math.log10(max(1, n))) * probe_interval


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times a broadcast is sent: mult * ceil(log10(n + 1))."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """Slow periodic push-pull down in big clusters: doubled per doubling beyond 32 members."""
    threshold = 32
    if n <= threshold:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(threshold)) + 1
    return interval * multiplier


def remaining_suspicion_time(
    confirmations: int, expected: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Lifeguard: the timeout shrinks from max to min as independent confirmations arrive."""
    if expected < 1:
        timeout = min_timeout
    else:
        frac = math.log(confirmations + 1.0) / math.log(expected + 1.0)
        timeout = max(min_timeout, max_timeout - frac * (max_timeout - min_timeout))
    return timeout - elapsed
