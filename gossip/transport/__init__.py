"""Gossip transports: packets and framed streams between addresses, bytes only.

``GossipTransport`` (``gossip.transport.base``) is the interface the driver uses;
``NetTransport`` (``gossip.transport.net``) is UDP + TCP on one host:port.
"""

from gossip.transport.base import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameError,
    FrameTooLarge,
    GossipTransport,
    PacketHandler,
    StreamClosed,
    StreamConn,
    StreamError,
    StreamHandler,
    StreamTimeout,
    TransportError,
    TransportStats,
)
from gossip.transport.net import MAX_UDP_PAYLOAD, NetStreamConn, NetTransport

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "MAX_UDP_PAYLOAD",
    "FrameError",
    "FrameTooLarge",
    "GossipTransport",
    "NetStreamConn",
    "NetTransport",
    "PacketHandler",
    "StreamClosed",
    "StreamConn",
    "StreamError",
    "StreamHandler",
    "StreamTimeout",
    "TransportError",
    "TransportStats",
]
