"""Gossip messages to bytes and back (proto/gossip.proto), packet packing and stream framing.

Packets
    A packet (one UDP datagram, or the payload of one stream frame) is a ``Packet``: a
    compound of ``GossipMessage`` s, in order. ``encode`` / ``decode`` convert a whole packet.
    On the wire a Packet is nothing but, for each message ``m``, ``0x0a + varint(len(m)) + m``
    (field 1, length-delimited): a message's *frame* does not depend on its neighbours.
    ``encoded_size(msg)`` is the length of that frame, and
    ``len(encode(msgs)) == sum(encoded_size(m) for m in msgs)``.

Packing
    ``pack`` splits messages into as few packets of at most ``limit`` bytes as possible while
    keeping their order (filling each packet greedily achieves that). ``fit`` builds one
    packet around messages that must go (a ping, an ack) and piggybacks as many extra messages
    (broadcasts) as still fit. Both encode each message once into its frame, add up frame
    sizes and concatenate frames: O(n) in the number of messages, never re-encoding a packet.
    ``limit`` is the room for the Packet itself: the caller subtracts ``PACKET_OVERHEAD`` (the
    encryption overhead) and any header of its own from the datagram size first.

Validation
    ``decode`` raises ``WireError`` (a ``ValueError``) and nothing else for any input it cannot
    turn into valid messages: truncated or corrupt protobuf, invalid UTF-8, a message with no
    known type (a newer peer's message type is rejected, not skipped), an unknown member
    state, a port outside 0..65535, a node name over ``MAX_NAME_BYTES``, a host over
    ``MAX_HOST_BYTES``, meta over ``MAX_META_BYTES``. Opaque payloads (``Ack.payload``,
    ``UserMsg.payload``, ``PushPull.user_state``) are bounded only by the packet or frame.
    Unknown *fields* (in a known message or in the Packet) are ignored: that is how fields get
    added.
    ``encode`` applies the same bounds and raises ``WireError`` for any value the wire cannot
    carry (wrong type, negative or over 64-bit integer, bad port, over-long string), so a
    sender never emits what a receiver would reject.

Streams
    ``encode_frame`` / ``read_frame``: a 4-byte big-endian length, then that many bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from gossip.keyring import ENCRYPTION_OVERHEAD

if TYPE_CHECKING:
    import asyncio

from gossip.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)
from proto import gossip_pb2 as pb

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_SKIPPED",
    "FRAME_HEADER_BYTES",
    "MAX_HOST_BYTES",
    "MAX_META_BYTES",
    "MAX_NAME_BYTES",
    "PACKET_OVERHEAD",
    "StreamClosed",
    "WireError",
    "decode",
    "encode",
    "encode_frame",
    "encoded_size",
    "fit",
    "pack",
    "read_frame",
]

MAX_NAME_BYTES = 512
"""Longest node name, in bytes of UTF-8."""
MAX_META_BYTES = 512
"""Longest member meta, in bytes (memberlist's MetaMaxSize)."""
MAX_HOST_BYTES = 255
"""Longest address host, in bytes of UTF-8 (a DNS name is at most 253)."""
MAX_PORT = 65535

PACKET_OVERHEAD = ENCRYPTION_OVERHEAD
"""Bytes of a UDP packet not available to messages. A Packet has no header of its own (it is
only its messages' frames), so this is the keyring's encryption overhead, reserved whether or
not encryption is on so that one budget (``packet_size - PACKET_OVERHEAD``) fits both."""

DEFAULT_MAX_SKIPPED = 16
"""``fit`` stops looking for extras after skipping this many that did not fit."""

FRAME_HEADER_BYTES = 4
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
_MAX_FRAME_LEN = 0xFFFFFFFF

# Key byte of Packet.messages: field 1, wire type 2 (length-delimited).
_PACKET_TAG = b"\x0a"
# The smallest framed message: tag, length 0x02, then a oneof key and an empty body
# (e.g. Nack(seq=0) or UserMsg(b"")). Nothing smaller can fit in the room left.
_MIN_FRAME = 4


class WireError(ValueError):
    """Bytes that are not a valid gossip packet or frame, or a message the wire cannot carry."""


class StreamClosed(WireError):
    """The stream ended cleanly, before the first byte of a frame."""


# Lookup table instead of calling the enum: an unknown value is a KeyError.
_MEMBER_STATES: dict[int, MemberState] = {int(s): s for s in MemberState}


# --- checks --------------------------------------------------------------------------------


def _check_name(s: str, what: str) -> None:
    # A str of at most MAX_NAME_BYTES // 4 code points cannot exceed the bound in UTF-8.
    if len(s) > MAX_NAME_BYTES // 4 and len(s.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise WireError(f"{what} is longer than {MAX_NAME_BYTES} bytes")


def _check_meta(b: bytes, what: str) -> None:
    if len(b) > MAX_META_BYTES:
        raise WireError(f"{what} is {len(b)} bytes, more than {MAX_META_BYTES}")


def _check_host(s: str, what: str) -> None:
    if len(s) > MAX_HOST_BYTES // 4 and len(s.encode("utf-8", "surrogatepass")) > MAX_HOST_BYTES:
        raise WireError(f"{what} host is longer than {MAX_HOST_BYTES} bytes")


def _check_port(port: int, what: str) -> None:
    if not 0 <= port <= MAX_PORT:
        raise WireError(f"{what} port {port} is outside 0..{MAX_PORT}")


# --- encoding ------------------------------------------------------------------------------
# Each function fills the (empty) body of one GossipMessage in place: no intermediate
# message objects to construct and copy.


def _fill_addr(target: Any, addr: Address, what: str) -> None:
    host, port = addr
    if type(port) is not int:
        raise WireError(f"{what} port must be an int, got {type(port).__name__}")
    _check_port(port, what)
    _check_host(host, what)
    target.host = host
    target.port = port


def _enc_ping(gm: Any, m: Ping) -> None:
    _check_name(m.target, "ping target")
    _check_name(m.source, "ping source")
    b = gm.ping
    b.seq = m.seq
    b.target = m.target
    b.source = m.source
    _fill_addr(b.source_addr, m.source_addr, "ping source")


def _enc_indirect_ping(gm: Any, m: IndirectPing) -> None:
    _check_name(m.target, "indirect ping target")
    _check_name(m.source, "indirect ping source")
    b = gm.indirect_ping
    b.seq = m.seq
    b.target = m.target
    _fill_addr(b.target_addr, m.target_addr, "indirect ping target")
    b.source = m.source
    _fill_addr(b.source_addr, m.source_addr, "indirect ping source")
    b.nack = m.nack


def _enc_ack(gm: Any, m: Ack) -> None:
    b = gm.ack
    b.seq = m.seq
    b.payload = m.payload


def _enc_nack(gm: Any, m: Nack) -> None:
    gm.nack.seq = m.seq


def _enc_alive(gm: Any, m: Alive) -> None:
    _check_name(m.node, "alive node")
    _check_meta(m.meta, "alive meta")
    b = gm.alive
    b.incarnation = m.incarnation
    b.node = m.node
    _fill_addr(b.addr, m.addr, "alive")
    b.meta = m.meta


def _enc_suspect(gm: Any, m: Suspect) -> None:
    _check_name(m.node, "suspect node")
    _check_name(m.source, "suspect source")
    b = gm.suspect
    b.incarnation = m.incarnation
    b.node = m.node
    b.source = m.source


def _enc_dead(gm: Any, m: Dead) -> None:
    _check_name(m.node, "dead node")
    _check_name(m.source, "dead source")
    b = gm.dead
    b.incarnation = m.incarnation
    b.node = m.node
    b.source = m.source


def _enc_user(gm: Any, m: UserMsg) -> None:
    gm.user.payload = m.payload


def _enc_push_pull(gm: Any, m: PushPull) -> None:
    b = gm.push_pull
    b.join = m.join
    b.user_state = m.user_state
    add = b.nodes.add
    for n in m.nodes:
        _check_name(n.name, "push-pull node name")
        _check_meta(n.meta, "push-pull node meta")
        if n.state not in _MEMBER_STATES:
            raise WireError(f"push-pull node {n.name!r} has unknown state {n.state!r}")
        p = add(name=n.name, meta=n.meta, incarnation=n.incarnation, state=int(n.state))
        _fill_addr(p.addr, n.addr, f"push-pull node {n.name!r}")


_ENCODERS: dict[type, Callable[[Any, Any], None]] = {
    Ping: _enc_ping,
    IndirectPing: _enc_indirect_ping,
    Ack: _enc_ack,
    Nack: _enc_nack,
    Alive: _enc_alive,
    Suspect: _enc_suspect,
    Dead: _enc_dead,
    UserMsg: _enc_user,
    PushPull: _enc_push_pull,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fill(gm: Any, msg: Message) -> None:
    """Make the empty GossipMessage ``gm`` hold ``msg``."""
    try:
        fill = _ENCODERS[type(msg)]
    except KeyError:
        raise TypeError(f"not a gossip message: {type(msg).__name__}") from None
    try:
        fill(gm, msg)
    except WireError:
        raise
    except (TypeError, ValueError) as exc:  # protobuf: wrong type, out of range, bad UTF-8
        raise WireError(f"cannot encode {type(msg).__name__}: {exc}") from None


def _frame(msg: Message) -> bytes:
    """``msg`` as it appears inside a Packet: tag, varint length, GossipMessage bytes."""
    gm = pb.GossipMessage()
    _fill(gm, msg)
    body = gm.SerializeToString()
    n = len(body)
    if n < 0x80:
        return _PACKET_TAG + bytes((n,)) + body
    return _PACKET_TAG + _varint(n) + body


def encode(msgs: Sequence[Message]) -> bytes:
    """One Packet holding ``msgs`` in order. Raises ``WireError`` for an unencodable value.

    The bytes equal the concatenation of the messages' frames; serializing one Packet is just
    faster (measured ~20%) than serializing each message apart.
    """
    packet = pb.Packet()
    add = packet.messages.add
    for m in msgs:
        _fill(add(), m)
    return packet.SerializeToString()


def encoded_size(msg: Message) -> int:
    """Bytes ``msg`` adds to a Packet (tag + varint length + body)."""
    return len(_frame(msg))


def pack(msgs: Sequence[Message], limit: int) -> list[bytes]:
    """Pack ``msgs``, in order, into as few Packets of at most ``limit`` bytes as possible:
    a packet is closed when the next message would not fit (greedy, which is optimal when the
    order is kept).

    A single message whose frame alone is larger than ``limit`` is put in a packet of its own
    (larger than ``limit``): the caller decides whether to send it another way (a stream) or
    drop it, e.g. by checking ``len(packet) > limit``. No messages gives no packets.
    """
    packets: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for m in msgs:
        f = _frame(m)
        if current and size + len(f) > limit:
            packets.append(b"".join(current))
            current = []
            size = 0
        current.append(f)
        size += len(f)
    if current:
        packets.append(b"".join(current))
    return packets


def fit(
    first: Sequence[Message],
    extra: Iterable[Message],
    limit: int,
    *,
    max_skipped: int = DEFAULT_MAX_SKIPPED,
) -> tuple[bytes, list[Message]]:
    """One Packet with all of ``first``, then as many of ``extra`` as fit within ``limit``.

    ``first`` is always included, even if that alone exceeds ``limit`` (then no extras are
    added). Extras are taken in the order given; one that does not fit in the room left is
    skipped and the next one is tried (as memberlist does with its broadcast queue). Pulling
    from ``extra`` stops when it is exhausted, when the room left is smaller than any message
    can be, or when ``max_skipped`` extras have been skipped: each pulled extra is encoded, so
    the cost is bounded by the packet, not by the length of a long queue. Returns the packet
    and the extras it holds, in order (for a broadcast queue to count their transmissions).
    """
    frames = [_frame(m) for m in first]
    size = sum(len(f) for f in frames)
    used: list[Message] = []
    skipped = 0
    if limit - size >= _MIN_FRAME:
        for m in extra:
            f = _frame(m)
            if size + len(f) <= limit:
                frames.append(f)
                used.append(m)
                size += len(f)
                if limit - size < _MIN_FRAME:
                    break
            else:
                skipped += 1
                if skipped >= max_skipped:
                    break
    return b"".join(frames), used


# --- decoding ------------------------------------------------------------------------------


def _addr(p: Any, what: str) -> Address:
    port: int = p.port
    if port > MAX_PORT:
        raise WireError(f"{what} port {port} is outside 0..{MAX_PORT}")
    host: str = p.host
    _check_host(host, what)
    return (host, port)


def _dec_ping(p: Any) -> Ping:
    target: str = p.target
    source: str = p.source
    _check_name(target, "ping target")
    _check_name(source, "ping source")
    return Ping(p.seq, target, source, _addr(p.source_addr, "ping source"))


def _dec_indirect_ping(p: Any) -> IndirectPing:
    target: str = p.target
    source: str = p.source
    _check_name(target, "indirect ping target")
    _check_name(source, "indirect ping source")
    return IndirectPing(
        p.seq,
        target,
        _addr(p.target_addr, "indirect ping target"),
        source,
        _addr(p.source_addr, "indirect ping source"),
        p.nack,
    )


def _dec_ack(p: Any) -> Ack:
    return Ack(p.seq, p.payload)


def _dec_nack(p: Any) -> Nack:
    return Nack(p.seq)


def _dec_alive(p: Any) -> Alive:
    node: str = p.node
    meta: bytes = p.meta
    _check_name(node, "alive node")
    _check_meta(meta, "alive meta")
    return Alive(p.incarnation, node, _addr(p.addr, "alive"), meta)


def _dec_suspect(p: Any) -> Suspect:
    node: str = p.node
    source: str = p.source
    _check_name(node, "suspect node")
    _check_name(source, "suspect source")
    return Suspect(p.incarnation, node, source)


def _dec_dead(p: Any) -> Dead:
    node: str = p.node
    source: str = p.source
    _check_name(node, "dead node")
    _check_name(source, "dead source")
    return Dead(p.incarnation, node, source)


def _dec_user(p: Any) -> UserMsg:
    return UserMsg(p.payload)


def _dec_push_node(p: Any) -> PushNodeState:
    name: str = p.name
    meta: bytes = p.meta
    _check_name(name, "push-pull node name")
    _check_meta(meta, "push-pull node meta")
    try:
        state = _MEMBER_STATES[p.state]
    except KeyError:
        raise WireError(f"push-pull node {name!r} has unknown state {p.state}") from None
    return PushNodeState(
        name, _addr(p.addr, f"push-pull node {name!r}"), meta, p.incarnation, state
    )


def _dec_push_pull(p: Any) -> PushPull:
    return PushPull(p.join, tuple([_dec_push_node(n) for n in p.nodes]), p.user_state)


_DECODERS: dict[str, Callable[[Any], Message]] = {
    "ping": _dec_ping,
    "indirect_ping": _dec_indirect_ping,
    "ack": _dec_ack,
    "nack": _dec_nack,
    "alive": _dec_alive,
    "suspect": _dec_suspect,
    "dead": _dec_dead,
    "user": _dec_user,
    "push_pull": _dec_push_pull,
}


def decode(data: bytes) -> list[Message]:
    """The messages of one Packet, in order. Raises ``WireError`` (only) for invalid input."""
    try:
        packet = pb.Packet.FromString(data)
    except DecodeError as exc:
        raise WireError(f"malformed packet: {exc}") from None
    out: list[Message] = []
    decoders = _DECODERS
    for i, gm in enumerate(packet.messages):
        which = gm.WhichOneof("body")
        if which is None:
            raise WireError(f"message {i} of the packet has no known type")
        out.append(decoders[which](getattr(gm, which)))
    return out


# --- stream framing ------------------------------------------------------------------------


def encode_frame(payload: bytes) -> bytes:
    """``payload`` prefixed with its length as 4 bytes, big-endian."""
    n = len(payload)
    if n > _MAX_FRAME_LEN:
        raise WireError(f"frame payload of {n} bytes does not fit a 4-byte length")
    return n.to_bytes(FRAME_HEADER_BYTES, "big") + payload


async def read_frame(
    reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> bytes:
    # Imported here: the cores import this module for sizes and must stay free of asyncio.
    import asyncio

    """Read one frame's payload from ``reader``.

    Raises ``StreamClosed`` (a ``WireError``) if the stream ends before the frame starts,
    ``WireError`` if it ends inside the frame or the announced length exceeds ``max_bytes``
    (checked before reading the payload, so nothing that large is buffered). I/O errors of
    the underlying connection propagate unchanged.
    """
    try:
        header = await reader.readexactly(FRAME_HEADER_BYTES)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise StreamClosed("stream closed before a frame") from None
        raise WireError(
            f"stream closed inside a frame header ({len(exc.partial)} of {FRAME_HEADER_BYTES} bytes)"
        ) from None
    n = int.from_bytes(header, "big")
    if n > max_bytes:
        raise WireError(f"frame of {n} bytes exceeds the limit of {max_bytes}")
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise WireError(f"stream closed inside a frame ({len(exc.partial)} of {n} bytes)") from None
