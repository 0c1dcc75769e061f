"""Serf's own messages and their compact binary encoding (ours; not Serf's msgpack, never
pickle). They travel inside memberlist ``UserMsg`` payloads (broadcasts, and direct packets
for query acks and responses) and in ``PushPull.user_state``; member tags travel in
memberlist meta.

Format
    A message is one type byte, then its fields in a fixed order. Field encodings:

    - ``uint``: unsigned LEB128 varint, at most 10 bytes, value < 2**64;
    - ``bytes``: ``uint`` length, then that many bytes;
    - ``str``: ``bytes`` holding UTF-8;
    - ``bool``: one byte, 0 or 1;
    - ``list``: ``uint`` count, then the items.

    ===  ==============  ===========================================================
    1    JoinIntent      ltime uint, node str
    2    LeaveIntent     ltime uint, node str
    3    UserEventMsg    ltime uint, name str, payload bytes, coalesce bool
    4    QueryMsg        ltime uint, id uint, source str, host str, port uint,
                         flags uint (bit 0 ack requested, bit 1 node filter present),
                         timeout_ms uint, nodes list[str], tags list[(tag str, regex str)],
                         name str, payload bytes
    5    QueryResponse   ltime uint, id uint, source str, flags uint (bit 0 ack),
                         payload bytes
    6    PushPullState   member_ltime uint, status list[(node str, ltime uint)],
                         left list[str], event_ltime uint,
                         events list[(ltime uint, name str, payload bytes, coalesce bool)],
                         query_ltime uint
    ===  ==============  ===========================================================

    Types are append-only. A newer version may append fields at the end of a message (and
    flag bits): decoders ignore bytes after the fields they know and flag bits they do not.

    Tags (``encode_tags``): empty tags are ``b""``; otherwise the byte 1 (format version),
    then ``list[(key str, value str)]`` sorted by key.

Validation
    ``decode`` / ``decode_tags`` raise ``SerfDecodeError`` (a ``ValueError``) and nothing else
    for any input they cannot turn into a valid value: empty or truncated input, an unknown
    type or tag version, an over-long or over-large varint, a bool other than 0/1, invalid
    UTF-8, a node name over ``MAX_NAME_BYTES``, a host over ``MAX_HOST_BYTES``, a port over
    65535, a count larger than the bytes left could hold. ``encode`` raises
    ``SerfEncodeError`` for values the format cannot carry (so a sender never emits what a
    receiver rejects).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from gossip.messages import Address

MAX_U64 = (1 << 64) - 1
MAX_NAME_BYTES = 512
"""Longest node name, in bytes of UTF-8 (as in ``gossip.wire``)."""
MAX_HOST_BYTES = 255
MAX_PORT = 65535
MAX_TIMEOUT_MS = 1 << 32
"""Longest query timeout on the wire (about 50 days)."""

TAGS_VERSION = 1

_FLAG_ACK = 1
_FLAG_NODE_FILTER = 2


class SerfDecodeError(ValueError):
    """Bytes that are not a valid Serf message (or tag set)."""


class SerfEncodeError(ValueError):
    """A value the Serf message format cannot carry."""


class MessageType(IntEnum):
    """ONLY APPEND."""

    JOIN_INTENT = 1
    LEAVE_INTENT = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    PUSH_PULL = 6


@dataclass(frozen=True, slots=True)
class JoinIntent:
    """``node`` is (still) a member as of member-clock time ``ltime``."""

    ltime: int
    node: str


@dataclass(frozen=True, slots=True)
class LeaveIntent:
    """``node`` started a graceful leave at member-clock time ``ltime``."""

    ltime: int
    node: str


@dataclass(frozen=True, slots=True)
class UserEventMsg:
    ltime: int
    name: str
    payload: bytes
    coalesce: bool


@dataclass(frozen=True, slots=True)
class QueryMsg:
    ltime: int
    id: int
    source: str
    source_addr: Address  # where acks and responses go
    request_ack: bool
    timeout: float  # seconds (carried in whole milliseconds)
    filter_nodes: tuple[str, ...] | None  # None: no node filter; () matches nobody
    filter_tags: tuple[tuple[str, str], ...]  # (tag, regex): every one must match
    name: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryResponseMsg:
    ltime: int
    id: int
    source: str  # the responder
    ack: bool  # an ack carries no payload
    payload: bytes


@dataclass(frozen=True, slots=True)
class PushPullState:
    """Serf's part of a push-pull: clocks, status times, recently left members, recent
    events (so a joining member catches up)."""

    member_ltime: int
    status_ltimes: tuple[tuple[str, int], ...]
    left_members: tuple[str, ...]
    event_ltime: int
    events: tuple[UserEventMsg, ...]
    query_ltime: int


SerfMessage = JoinIntent | LeaveIntent | UserEventMsg | QueryMsg | QueryResponseMsg | PushPullState


# --- encoding ----------------------------------------------------------------------------------


class _Writer:
    __slots__ = ("buf",)

    def __init__(self, kind: int) -> None:
        self.buf = bytearray((kind,))

    def uint(self, v: int, what: str) -> None:
        if type(v) is not int or not 0 <= v <= MAX_U64:
            raise SerfEncodeError(f"{what}={v!r} is not an unsigned 64-bit integer")
        while v > 0x7F:
            self.buf.append((v & 0x7F) | 0x80)
            v >>= 7
        self.buf.append(v)

    def raw(self, b: bytes, what: str) -> None:
        if not isinstance(b, (bytes, bytearray)):
            raise SerfEncodeError(f"{what} must be bytes, got {type(b).__name__}")
        self.uint(len(b), what + " length")
        self.buf += b

    def text(self, s: str, what: str, max_bytes: int | None = None) -> None:
        if not isinstance(s, str):
            raise SerfEncodeError(f"{what} must be a str, got {type(s).__name__}")
        try:
            b = s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerfEncodeError(f"{what} is not valid Unicode: {exc}") from None
        if max_bytes is not None and len(b) > max_bytes:
            raise SerfEncodeError(f"{what} is {len(b)} bytes, more than {max_bytes}")
        self.raw(b, what)

    def flag(self, v: bool) -> None:
        self.buf.append(1 if v else 0)


def _put_event(w: _Writer, m: UserEventMsg) -> None:
    w.uint(m.ltime, "user event ltime")
    w.text(m.name, "user event name")
    w.raw(m.payload, "user event payload")
    w.flag(m.coalesce)


def encode(msg: SerfMessage) -> bytes:
    """The bytes of ``msg``. Raises ``SerfEncodeError`` for a value the format cannot carry."""
    if isinstance(msg, JoinIntent | LeaveIntent):
        kind = MessageType.JOIN_INTENT if isinstance(msg, JoinIntent) else MessageType.LEAVE_INTENT
        w = _Writer(kind)
        w.uint(msg.ltime, "intent ltime")
        w.text(msg.node, "intent node", MAX_NAME_BYTES)
    elif isinstance(msg, UserEventMsg):
        w = _Writer(MessageType.USER_EVENT)
        _put_event(w, msg)
    elif isinstance(msg, QueryMsg):
        w = _Writer(MessageType.QUERY)
        w.uint(msg.ltime, "query ltime")
        w.uint(msg.id, "query id")
        w.text(msg.source, "query source", MAX_NAME_BYTES)
        host, port = msg.source_addr
        w.text(host, "query source host", MAX_HOST_BYTES)
        if type(port) is not int or not 0 <= port <= MAX_PORT:
            raise SerfEncodeError(f"query source port {port!r} is outside 0..{MAX_PORT}")
        w.uint(port, "query source port")
        flags = (_FLAG_ACK if msg.request_ack else 0) | (
            _FLAG_NODE_FILTER if msg.filter_nodes is not None else 0
        )
        w.uint(flags, "query flags")
        timeout_ms = round(msg.timeout * 1000)
        if not 0 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise SerfEncodeError(f"query timeout {msg.timeout!r} s is out of range")
        w.uint(timeout_ms, "query timeout")
        nodes = msg.filter_nodes or ()
        w.uint(len(nodes), "query node filter count")
        for node in nodes:
            w.text(node, "query node filter", MAX_NAME_BYTES)
        w.uint(len(msg.filter_tags), "query tag filter count")
        for tag, expr in msg.filter_tags:
            w.text(tag, "query tag filter name")
            w.text(expr, "query tag filter regex")
        w.text(msg.name, "query name")
        w.raw(msg.payload, "query payload")
    elif isinstance(msg, QueryResponseMsg):
        w = _Writer(MessageType.QUERY_RESPONSE)
        w.uint(msg.ltime, "response ltime")
        w.uint(msg.id, "response id")
        w.text(msg.source, "response source", MAX_NAME_BYTES)
        w.uint(_FLAG_ACK if msg.ack else 0, "response flags")
        w.raw(msg.payload, "response payload")
    elif isinstance(msg, PushPullState):
        w = _Writer(MessageType.PUSH_PULL)
        w.uint(msg.member_ltime, "member ltime")
        w.uint(len(msg.status_ltimes), "status count")
        for node, ltime in msg.status_ltimes:
            w.text(node, "status node", MAX_NAME_BYTES)
            w.uint(ltime, "status ltime")
        w.uint(len(msg.left_members), "left count")
        for node in msg.left_members:
            w.text(node, "left node", MAX_NAME_BYTES)
        w.uint(msg.event_ltime, "event ltime")
        w.uint(len(msg.events), "event count")
        for ev in msg.events:
            _put_event(w, ev)
        w.uint(msg.query_ltime, "query ltime")
    else:
        raise TypeError(f"not a Serf message: {type(msg).__name__}")
    return bytes(w.buf)


# --- decoding ----------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def uint(self, what: str) -> int:
        data, pos = self.data, self.pos
        value = 0
        shift = 0
        for i in range(10):
            if pos + i >= len(data):
                raise SerfDecodeError(f"truncated {what}")
            b = data[pos + i]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if value > MAX_U64:
                    raise SerfDecodeError(f"{what} does not fit 64 bits")
                self.pos = pos + i + 1
                return value
            shift += 7
        raise SerfDecodeError(f"{what} varint is longer than 10 bytes")

    def raw(self, what: str) -> bytes:
        n = self.uint(what + " length")
        if n > self.remaining():
            raise SerfDecodeError(f"truncated {what}: {n} bytes announced, {self.remaining()} left")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(b)

    def text(self, what: str, max_bytes: int | None = None) -> str:
        b = self.raw(what)
        if max_bytes is not None and len(b) > max_bytes:
            raise SerfDecodeError(f"{what} is {len(b)} bytes, more than {max_bytes}")
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise SerfDecodeError(f"{what} is not valid UTF-8") from None

    def flag(self, what: str) -> bool:
        if self.pos >= len(self.data):
            raise SerfDecodeError(f"truncated {what}")
        b = self.data[self.pos]
        if b > 1:
            raise SerfDecodeError(f"{what} is {b}, not a bool (0 or 1)")
        self.pos += 1
        return b == 1

    def count(self, what: str, min_item_bytes: int) -> int:
        n = self.uint(what)
        if n * min_item_bytes > self.remaining():
            raise SerfDecodeError(
                f"{what} {n} is more than the {self.remaining()} bytes left could hold"
            )
        return n


def _get_event(r: _Reader) -> UserEventMsg:
    ltime = r.uint("user event ltime")
    name = r.text("user event name")
    payload = r.raw("user event payload")
    return UserEventMsg(ltime, name, payload, r.flag("user event coalesce"))


def _decode_query(r: _Reader) -> QueryMsg:
    ltime = r.uint("query ltime")
    qid = r.uint("query id")
    source = r.text("query source", MAX_NAME_BYTES)
    host = r.text("query source host", MAX_HOST_BYTES)
    port = r.uint("query source port")
    if port > MAX_PORT:
        raise SerfDecodeError(f"query source port {port} is outside 0..{MAX_PORT}")
    flags = r.uint("query flags")
    timeout_ms = r.uint("query timeout")
    if timeout_ms > MAX_TIMEOUT_MS:
        raise SerfDecodeError(f"query timeout of {timeout_ms} ms is out of range")
    nodes = tuple(
        r.text("query node filter", MAX_NAME_BYTES)
        for _ in range(r.count("query node filter count", 1))
    )
    tags = tuple(
        (r.text("query tag filter name"), r.text("query tag filter regex"))
        for _ in range(r.count("query tag filter count", 2))
    )
    name = r.text("query name")
    payload = r.raw("query payload")
    return QueryMsg(
        ltime,
        qid,
        source,
        (host, port),
        bool(flags & _FLAG_ACK),
        timeout_ms / 1000.0,
        nodes if flags & _FLAG_NODE_FILTER else None,
        tags,
        name,
        payload,
    )


def _decode_push_pull(r: _Reader) -> PushPullState:
    member_ltime = r.uint("member ltime")
    status = tuple(
        (r.text("status node", MAX_NAME_BYTES), r.uint("status ltime"))
        for _ in range(r.count("status count", 2))
    )
    left = tuple(r.text("left node", MAX_NAME_BYTES) for _ in range(r.count("left count", 1)))
    event_ltime = r.uint("event ltime")
    events = tuple(_get_event(r) for _ in range(r.count("event count", 4)))
    query_ltime = r.uint("query ltime")
    return PushPullState(member_ltime, status, left, event_ltime, events, query_ltime)


def decode(data: bytes) -> SerfMessage:
    """The message in ``data``. Raises ``SerfDecodeError`` (only) for invalid input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerfDecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise SerfDecodeError("empty Serf message")
    r = _Reader(data, 1)
    kind = data[0]
    if kind == MessageType.JOIN_INTENT or kind == MessageType.LEAVE_INTENT:
        ltime = r.uint("intent ltime")
        node = r.text("intent node", MAX_NAME_BYTES)
        return (
            JoinIntent(ltime, node) if kind == MessageType.JOIN_INTENT else LeaveIntent(ltime, node)
        )
    if kind == MessageType.USER_EVENT:
        return _get_event(r)
    if kind == MessageType.QUERY:
        return _decode_query(r)
    if kind == MessageType.QUERY_RESPONSE:
        ltime = r.uint("response ltime")
        qid = r.uint("response id")
        source = r.text("response source", MAX_NAME_BYTES)
        flags = r.uint("response flags")
        payload = r.raw("response payload")
        return QueryResponseMsg(ltime, qid, source, bool(flags & _FLAG_ACK), payload)
    if kind == MessageType.PUSH_PULL:
        return _decode_push_pull(r)
    raise SerfDecodeError(f"unknown Serf message type {kind}")


# --- tags ----------------------------------------------------------------------------------


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """Tags as memberlist meta. Raises ``SerfEncodeError`` for non-str keys or values."""
    if not tags:
        return b""
    w = _Writer(TAGS_VERSION)
    w.uint(len(tags), "tag count")
    for key in sorted(tags):
        if not isinstance(key, str):
            raise SerfEncodeError(f"tag name {key!r} must be a str")
        w.text(key, f"tag name {key!r}")
        w.text(tags[key], f"value of tag {key!r}")
    return bytes(w.buf)


def decode_tags(meta: bytes) -> dict[str, str]:
    """Tags from memberlist meta. Raises ``SerfDecodeError`` (only) for invalid input."""
    if not meta:
        return {}
    if meta[0] != TAGS_VERSION:
        raise SerfDecodeError(f"unknown tags format version {meta[0]}")
    r = _Reader(bytes(meta), 1)
    out: dict[str, str] = {}
    for _ in range(r.count("tag count", 2)):
        key = r.text("tag name")
        out[key] = r.text(f"value of tag {key!r}")
    return out
