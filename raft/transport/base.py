"""Transport interface: how the driver moves core messages and snapshot bytes between nodes.

Messages are one-way and unacknowledged, as in the core: a send never blocks the driver and
may be dropped (the core retries through its own timers). Messages to one peer are delivered
in the order they were sent, or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from raft.core.types import InstallSnapshot, Message, NodeId


class InboundHandler(Protocol):
    """Implemented by the driver; called by the transport for everything that arrives."""

    def on_message(self, msg: Message) -> None:
        """A message arrived. Must not block."""
        ...

    async def on_snapshot(
        self, msg: InstallSnapshot, chunks: AsyncIterator[bytes], sha256: str, size: int
    ) -> None:
        """A snapshot is arriving: consume ``chunks`` (bounded-size pieces of the data),
        verify ``sha256``, then hand ``msg`` to the core. Raise to abort the transfer."""
        ...


class Transport(Protocol):
    async def start(self, handler: InboundHandler) -> None:
        """Begin serving inbound traffic to ``handler``."""
        ...

    def set_peer(self, node_id: NodeId, address: str) -> None:
        """Where to reach ``node_id`` (``host:port``). Idempotent; updates replace."""
        ...

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for ``msg.dst``. Never blocks; drops when the peer is unreachable
        or its queue is full."""
        ...

    async def send_snapshot(
        self, msg: InstallSnapshot, chunks: AsyncIterator[bytes], sha256: str, size: int
    ) -> None:
        """Stream a snapshot to ``msg.dst`` in chunks. Raises on failure."""
        ...

    async def close(self) -> None: ...
