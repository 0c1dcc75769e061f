"""The broadcast queue: messages piggybacked on pings, acks and gossip rounds.

Each message is sent at most ``limit`` times (memberlist's retransmit limit, which grows with
the cluster). Messages go out fewest-transmissions first, newest first among equals. A new
message about a member invalidates older queued ones about the same member (a newer alive
replaces a suspect, and so on), so stale news never outruns fresh news.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from gossip.messages import Message


@dataclass(order=True, slots=True)
class _Item:
    transmits: int
    neg_id: int  # newest first among equal transmit counts
    msg: Message = field(compare=False)
    key: str | None = field(compare=False)
    size: int = field(compare=False)
    live: bool = field(default=True, compare=False)


class BroadcastQueue:
    def __init__(self, size_of: Callable[[Message], int]) -> None:
        self._size_of = size_of
        self._heap: list[_Item] = []
        self._by_key: dict[str, _Item] = {}
        self._ids = itertools.count(1)
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def queue(self, msg: Message, key: str | None) -> None:
        """Queue ``msg``; with ``key`` (a member name, or a layer-specific id), replace any
        queued message with the same key."""
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None and old.live:
                old.live = False
                self._live -= 1
        item = _Item(0, -next(self._ids), msg, key, self._size_of(msg))
        if key is not None:
            self._by_key[key] = item
        heapq.heappush(self._heap, item)
        self._live += 1

    def take(self, budget: int, limit: int) -> list[Message]:
        """Messages whose sizes sum to at most ``budget``; each one taken counts a
        transmission, and messages sent ``limit`` times are dropped."""
        taken: list[_Item] = []
        skipped: list[_Item] = []
        while self._heap and budget > 0:
            item = heapq.heappop(self._heap)
            if not item.live:
                continue
            if item.size > budget:
                skipped.append(item)
                if len(skipped) > 32:
                    break
                continue
            budget -= item.size
            taken.append(item)
        out = []
        for item in taken:
            out.append(item.msg)
            item.transmits += 1
            if item.transmits >= limit:
                item.live = False
                self._live -= 1
                if item.key is not None and self._by_key.get(item.key) is item:
                    del self._by_key[item.key]
            else:
                heapq.heappush(self._heap, item)
        for item in skipped:
            heapq.heappush(self._heap, item)
        return out

    def clear(self) -> None:
        self._heap.clear()
        self._by_key.clear()
        self._live = 0
