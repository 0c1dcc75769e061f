"""Joining a serf pool, shared by the LAN and WAN pools: seed addresses parsed with the pool's
default port, and Consul's retry-join loop.

``retry_join`` tries every seed at once per attempt; it stops after the first attempt that
reached any member, or after ``retry_max`` attempts (0: never gives up). Between attempts it
waits ``min(attempt, retry_interval)`` seconds: 1 s, 2 s, ... up to the configured interval
(Consul's 30 s), so a cluster that starts together forms quickly. Events are logged with the
pool's name (``lan``/``wan``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog

from gossip.demo import parse_address
from gossip.messages import Address
from gossip.node import GossipNode
from gossip.serf import Serf

__all__ = ["parse_seeds", "retry_join", "seed_address"]

log = structlog.get_logger("join")


def seed_address(text: str, default_port: int) -> Address:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``. Raises ``ValueError``."""
    has_port = ":" in text.rsplit("]", 1)[-1]
    return parse_address(text if has_port else f"{text}:{default_port}")


def parse_seeds(texts: Iterable[str], default_port: int, pool: str) -> list[Address]:
    """The seeds that parse; the others are logged and skipped."""
    seeds: list[Address] = []
    for text in texts:
        try:
            seeds.append(seed_address(text, default_port))
        except ValueError as exc:
            log.error("retry_join_bad_address", pool=pool, address=text, error=str(exc))
    return seeds


async def retry_join(
    serf: GossipNode[Serf],
    seeds: list[Address],
    *,
    retry_max: int,
    retry_interval: float,
    pool: str,
) -> int:
    """Join ``seeds`` as the module docstring says; returns the members reached (0: gave up)."""
    attempt = 0
    while seeds:
        attempt += 1
        try:
            joined = await serf.join(seeds)
        except Exception as exc:
            joined = 0
            log.info("join_failed", pool=pool, attempt=attempt, error=str(exc))
        if joined:
            log.info("joined", pool=pool, members=joined)
            return joined
        if retry_max and attempt >= retry_max:
            log.error("retry_join_gave_up", pool=pool, attempts=attempt)
            return 0
        await asyncio.sleep(min(1.0 * attempt, retry_interval))
    return 0
