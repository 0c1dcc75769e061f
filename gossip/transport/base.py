"""The gossip transport interface: unreliable packets and framed streams, bytes only.

A transport moves opaque bytes between addresses. It knows nothing of gossip messages, of
encryption or of keys: the driver (``gossip.node``) encodes and seals before sending, and
opens and decodes after receiving. Two kinds of traffic:

Packets
    ``send_packet(addr, data)`` is best effort and never blocks: a packet may be lost,
    duplicated or reordered, and a packet the transport cannot send (too large, socket
    buffer full, transport closed) is dropped and counted. Inbound packets are handed to the
    ``on_packet`` callback given to ``start`` with the sender's address.

Streams
    Reliable, ordered, bidirectional connections carrying *frames* (bounded byte strings).
    ``open_stream(addr, timeout)`` connects; inbound connections are handed to the
    ``on_stream`` coroutine (one call per connection; the transport closes the connection
    when it returns). Every stream operation is bounded by a timeout. A frame larger than
    the transport's limit is refused in both directions (``FrameTooLarge``).

Errors
    Stream operations raise ``StreamError`` (or a subclass) and nothing else for any failure:
    a timeout, a refused or reset connection, a peer that closed, bytes that are not a valid
    frame. Nothing an inbound peer sends can make a transport raise out of its callbacks or
    tasks: bad input is dropped and counted in ``stats``.

Implementations: ``gossip.transport.net.NetTransport`` (UDP packets and TCP streams on one
host:port, as Consul's serf ports 8301/8302). A tunnel transport (packets framed over a pooled
TLS connection through a mesh gateway, streams as TLS connections) implements the same
protocol, so the driver and the cores need no change to use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from gossip.messages import Address

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FrameError",
    "FrameTooLarge",
    "GossipTransport",
    "PacketHandler",
    "StreamClosed",
    "StreamConn",
    "StreamError",
    "StreamHandler",
    "StreamTimeout",
    "TransportError",
    "TransportStats",
]

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Largest stream frame payload a transport accepts or sends by default (4 MiB)."""


class TransportError(Exception):
    """The transport cannot do what was asked (bind failed, not started, closed)."""


class StreamError(TransportError):
    """A stream operation failed: connect, read or write. The stream is unusable after it."""


class StreamTimeout(StreamError):
    """A stream operation did not finish within its timeout."""


class StreamClosed(StreamError):
    """The peer closed the stream before (the first byte of) a frame."""


class FrameError(StreamError):
    """The bytes on the stream are not a valid frame (truncated inside a frame, ...)."""


class FrameTooLarge(FrameError):
    """A frame over the size limit: announced by the peer, or given to ``write_frame``."""


PacketHandler = Callable[[bytes, Address], None]
"""Called for every inbound packet with its payload and the sender's address. Must not
block; the transport counts (and otherwise ignores) any exception it raises."""


class StreamConn(Protocol):
    """One stream connection. Every operation is bounded by the connection's timeout."""

    @property
    def remote_address(self) -> Address:
        """The peer's address (for an inbound stream: where the connection came from)."""
        ...

    async def read_frame(self) -> bytes:
        """The next frame's payload. Raises ``StreamClosed`` if the peer closed cleanly
        before a frame, ``FrameTooLarge`` for a frame over the limit (without reading it),
        ``StreamTimeout``, or another ``StreamError``."""
        ...

    async def write_frame(self, data: bytes) -> None:
        """Send one frame and wait until it is handed to the network (flow control).
        Raises ``FrameTooLarge`` (nothing sent) or another ``StreamError``."""
        ...

    def close(self) -> None:
        """Close the connection; never raises, never blocks. Idempotent."""
        ...


StreamHandler = Callable[[StreamConn], Awaitable[None]]
"""Serves one inbound stream. The transport closes the stream when it returns, and counts
(and otherwise ignores) any exception it raises."""


@dataclass(slots=True)
class TransportStats:
    """Counters of a transport. Only ever increase."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    packets_dropped_out: int = 0  # not sent: too large, buffer full, socket error, closed
    packets_dropped_in: int = 0  # received but not delivered: not started, handler raised
    packet_errors: int = 0  # socket errors reported for the packet socket
    streams_in: int = 0  # inbound connections accepted
    streams_out: int = 0  # outbound connections established
    streams_rejected: int = 0  # inbound connections refused (too many at once, closed)
    stream_errors: int = 0  # failed stream operations (connect, read, write), all causes
    stream_timeouts: int = 0  # ... of which timeouts
    frames_in: int = 0
    frames_out: int = 0
    frames_too_large: int = 0  # oversized frames refused (inbound or outbound)
    handler_errors: int = 0  # exceptions raised by on_packet / on_stream (bugs above us)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def count_stream_error(self, exc: StreamError) -> StreamError:
        """Count a failed stream operation (and its kind); returns ``exc`` to raise."""
        self.stream_errors += 1
        if isinstance(exc, StreamTimeout):
            self.stream_timeouts += 1
        if isinstance(exc, FrameTooLarge):
            self.frames_too_large += 1
        return exc


class GossipTransport(Protocol):
    """Packets and streams, bytes only. See the module docstring for the contract."""

    stats: TransportStats

    @property
    def local_address(self) -> Address:
        """The address we receive on (host, port), known once bound or started."""
        ...

    async def start(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        """Bind (if not yet bound) and begin delivering inbound packets and streams.
        Raises ``TransportError`` if it cannot listen."""
        ...

    def send_packet(self, addr: Address, data: bytes) -> None:
        """Send one packet, best effort; never blocks, never raises (drops are counted)."""
        ...

    async def open_stream(self, addr: Address, timeout: float) -> StreamConn:
        """Connect a stream to ``addr`` within ``timeout`` seconds; each later operation on it
        is bounded by ``timeout`` too. Raises ``StreamError``."""
        ...

    async def close(self) -> None:
        """Stop listening, drop inbound streams in progress, release the sockets.
        Idempotent."""
        ...
