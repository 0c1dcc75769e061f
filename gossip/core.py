"""The interface every sans-I/O gossip core offers its driver.

``Memberlist`` (SWIM + Lifeguard) implements it, and so does ``Serf`` (the layer above, which
wraps a Memberlist). The driver (``gossip.node``) owns the clock, the sockets and the keyring;
it carries out the I/O outputs (``SendPacket``, ``OpenPushPull``, ``StreamPing``) and hands
every other output (member events, user messages, Serf events) to the application.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gossip.messages import Ack, Message, Ping, PushPull


class GossipCore(Protocol):
    def tick(self, now: float) -> None:
        """Run every timer due at ``now``."""
        ...

    def next_deadline(self) -> float:
        """When ``tick`` must next be called (same clock as ``now``)."""
        ...

    def handle_packet(self, messages: Sequence[Message], now: float) -> None: ...

    def handle_stream_ping(self, ping: Ping) -> Ack | None: ...

    def stream_ping_result(self, seq: int, ok: bool, now: float) -> None: ...

    def local_state(self, join: bool = False) -> PushPull:
        """Our full state for a push-pull exchange (served to a peer that opened a stream)."""
        ...

    def merge_remote_state(self, remote: PushPull, now: float) -> None: ...

    def take_outputs(self) -> Sequence[object]:
        """Drain the outputs produced since the last call: memberlist's I/O outputs
        (``SendPacket``, ``OpenPushPull``, ``StreamPing``), which the driver performs, and any
        other output type of the core or a layer above, which it passes to the application."""
        ...
