"""Quorum arithmetic over a set of voters (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def majority(n: int) -> int:
    return n // 2 + 1


def quorum_index(voters: Iterable[str], value: Mapping[str, int]) -> int:
    """The largest x such that a majority of ``voters`` have ``value >= x`` (0 if none)."""
    values = sorted((value.get(v, 0) for v in voters), reverse=True)
    if not values:
        return 0
    return values[majority(len(values)) - 1]


def has_quorum(voters: Iterable[str], yes: Iterable[str]) -> bool:
    voter_set = set(voters)
    return len(voter_set & set(yes)) >= majority(len(voter_set)) if voter_set else False
