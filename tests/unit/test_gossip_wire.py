"""gossip.wire: packets of gossip messages (proto/gossip.proto), packing, stream frames."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gossip import wire
from gossip.keyring import ENCRYPTION_OVERHEAD
from gossip.messages import (
    Ack,
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
from gossip.wire import WireError, decode, encode, encoded_size, fit, pack
from proto import gossip_pb2 as pb

U64 = 2**64 - 1

EXAMPLES: list[Message] = [
    Ping(1, "node-b", "node-a", ("10.0.0.1", 8301)),
    Ping(0, "", "", ("", 0)),
    IndirectPing(7, "node-c", ("10.0.0.3", 8301), "node-a", ("::1", 65535)),
    IndirectPing(U64, "node-c", ("h", 1), "node-a", ("h", 2), nack=False),
    Ack(3),
    Ack(4, b"\x00\x01payload"),
    Nack(5),
    Alive(1, "node-a", ("10.0.0.1", 8301), b"meta"),
    Alive(U64, "ñødé-ü", ("fe80::1%eth0", 8302)),
    Suspect(2, "node-b", "node-a"),
    Dead(3, "node-b", "node-a"),
    Dead(4, "node-a", "node-a"),
    UserMsg(b""),
    UserMsg(b"serf event" * 40),
    PushPull(False, ()),
    PushPull(
        True,
        tuple(
            PushNodeState(f"n{i}", (f"10.0.0.{i}", 8301), b"m" * i, i, state)
            for i, state in enumerate(MemberState)
        ),
        b"user state",
    ),
]


# --- strategies ----------------------------------------------------------------------------

names = st.text(max_size=24)
u64 = st.integers(min_value=0, max_value=U64)
addrs = st.tuples(st.text(max_size=24), st.integers(min_value=0, max_value=65535))
metas = st.binary(max_size=wire.MAX_META_BYTES)
payloads = st.binary(max_size=300)
push_nodes = st.builds(PushNodeState, names, addrs, metas, u64, st.sampled_from(list(MemberState)))

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, u64, names, names, addrs),
    st.builds(IndirectPing, u64, names, addrs, names, addrs, st.booleans()),
    st.builds(Ack, u64, payloads),
    st.builds(Nack, u64),
    st.builds(Alive, u64, names, addrs, metas),
    st.builds(Suspect, u64, names, names),
    st.builds(Dead, u64, names, names),
    st.builds(UserMsg, payloads),
    st.builds(PushPull, st.booleans(), st.lists(push_nodes, max_size=4).map(tuple), payloads),
)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_alone(msg: Message) -> None:
    data = encode([msg])
    assert decode(data) == [msg]
    assert len(data) == encoded_size(msg)


def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in EXAMPLES} == set(get_args(Message))
    assert set(pb.GossipMessage.DESCRIPTOR.oneofs_by_name["body"].fields) == set(
        pb.GossipMessage.DESCRIPTOR.fields
    )
    assert len(pb.GossipMessage.DESCRIPTOR.fields) == len(get_args(Message))


def test_compound_packet_round_trips_in_order() -> None:
    data = encode(EXAMPLES)
    assert decode(data) == EXAMPLES
    assert len(data) == sum(encoded_size(m) for m in EXAMPLES)


def test_decoded_values_have_the_declared_types() -> None:
    (alive,) = decode(encode([Alive(1, "a", ("h", 5), b"m")]))
    assert isinstance(alive, Alive)
    assert type(alive.addr) is tuple and type(alive.meta) is bytes
    (pp,) = decode(encode([EXAMPLES[-1]]))
    assert isinstance(pp, PushPull)
    assert type(pp.nodes) is tuple
    assert all(type(n.state) is MemberState for n in pp.nodes)


def test_encoding_is_the_protobuf_packet_encoding() -> None:
    data = encode(EXAMPLES)
    parsed = pb.Packet.FromString(data)
    assert len(parsed.messages) == len(EXAMPLES)
    assert parsed.SerializeToString() == data


def test_empty_packet() -> None:
    assert encode([]) == b""
    assert decode(b"") == []
    assert pack([], 1400) == []


def test_encoded_size_counts_a_multibyte_length() -> None:
    small, big = UserMsg(b"x" * 10), UserMsg(b"x" * 300)
    # tag + 1-byte length + (oneof key + 1-byte length + (field key + length + payload))
    assert encoded_size(small) == 1 + 1 + (1 + 1 + (1 + 1 + 10))
    # the payload's and both envelopes' lengths need two bytes
    assert encoded_size(big) == 1 + 2 + (1 + 2 + (1 + 2 + 300))
    assert len(encode([small, big])) == encoded_size(small) + encoded_size(big)


@given(st.lists(messages, max_size=12))
def test_round_trip_any_messages(msgs: list[Message]) -> None:
    data = encode(msgs)
    assert decode(data) == msgs
    assert len(data) == sum(encoded_size(m) for m in msgs)


def test_bounds_are_inclusive() -> None:
    name = "é" * (wire.MAX_NAME_BYTES // 2)  # exactly 512 bytes of UTF-8
    host = "h" * wire.MAX_HOST_BYTES
    msg = Alive(1, name, (host, 65535), b"m" * wire.MAX_META_BYTES)
    assert decode(encode([msg])) == [msg]


# --- encoding refuses what the wire cannot carry -----------------------------------------

LONG_NAME = "x" * (wire.MAX_NAME_BYTES + 1)


@pytest.mark.parametrize(
    "msg",
    [
        Ping(-1, "a", "b", ("h", 1)),
        Ping(U64 + 1, "a", "b", ("h", 1)),
        Ping(1, "a", "b", ("h", 65536)),
        Ping(1, "a", "b", ("h", -1)),
        Ping(1, "a", "b", ("h", True)),
        Ping(1, LONG_NAME, "b", ("h", 1)),
        Ping(1, "a", "é" * 257, ("h", 1)),  # 257 characters but 514 bytes
        Ping(1, "a", "\udc80", ("h", 1)),  # not encodable as UTF-8
        IndirectPing(1, "a", ("h", 70000), "b", ("h", 1)),
        Alive(1, "a", ("h" * (wire.MAX_HOST_BYTES + 1), 1)),
        Alive(1, "a", ("h", 1), b"m" * (wire.MAX_META_BYTES + 1)),
        Alive(1, "a", ("h",), b""),  # type: ignore[arg-type]
        Suspect(1, "a", LONG_NAME),
        Dead(1, LONG_NAME, "a"),
        Ack(1, "text"),  # type: ignore[arg-type]
        UserMsg(None),  # type: ignore[arg-type]
        PushPull(False, (PushNodeState("n", ("h", 1), b"", 1, 9),)),  # type: ignore[arg-type]
        PushPull(False, (PushNodeState("n", ("h", 1), b"m" * 513, 1, MemberState.ALIVE),)),
        PushPull(False, (PushNodeState(LONG_NAME, ("h", 1), b"", 1, MemberState.ALIVE),)),
        PushPull(False, (PushNodeState("n", ("h", 99999), b"", 1, MemberState.ALIVE),)),
    ],
)
def test_encode_rejects_values_the_wire_cannot_carry(msg: Message) -> None:
    with pytest.raises(WireError):
        encode([msg])
    with pytest.raises(WireError):
        encoded_size(msg)


def test_encode_rejects_non_messages_with_type_error() -> None:
    with pytest.raises(TypeError, match="not a gossip message"):
        encode(["ping"])  # type: ignore[list-item]


# --- decoding hostile input ----------------------------------------------------------------


def _any_int(value: int) -> Any:  # an enum value the stubs would not allow
    return value


def _packet_of(gm: pb.GossipMessage) -> bytes:
    return pb.Packet(messages=[gm]).SerializeToString()


def _raw_message(body: bytes) -> bytes:
    """A Packet holding one GossipMessage whose serialized form is ``body``."""
    return b"\x0a" + bytes((len(body),)) + body


HOSTILE: dict[str, bytes] = {
    "garbage": b"\xff\xff\xff\xff",
    "truncated length": b"\x0a\x05\x22",
    "truncated varint": b"\x0a\xff",
    "empty message": _raw_message(b""),
    "unknown oneof member": _raw_message(b"\x7a\x00"),  # field 15, empty
    "unknown member only, with a big field number": _raw_message(b"\xfa\x3e\x00"),  # field 1000
    "invalid utf-8 name": _packet_of(pb.GossipMessage(suspect=pb.Suspect(node="a")))[:-1] + b"\xff",
    "port too large": _packet_of(
        pb.GossipMessage(alive=pb.Alive(node="a", addr=pb.Address(host="h", port=65536)))
    ),
    "port far too large": _packet_of(
        pb.GossipMessage(ping=pb.Ping(source_addr=pb.Address(host="h", port=2**32 - 1)))
    ),
    "indirect target port": _packet_of(
        pb.GossipMessage(indirect_ping=pb.IndirectPing(target_addr=pb.Address(port=65536)))
    ),
    "long node name": _packet_of(pb.GossipMessage(dead=pb.Dead(node=LONG_NAME))),
    "long multibyte name": _packet_of(pb.GossipMessage(suspect=pb.Suspect(source="é" * 257))),
    "long ping target": _packet_of(pb.GossipMessage(ping=pb.Ping(target=LONG_NAME))),
    "long host": _packet_of(
        pb.GossipMessage(alive=pb.Alive(addr=pb.Address(host="h" * (wire.MAX_HOST_BYTES + 1))))
    ),
    "long meta": _packet_of(pb.GossipMessage(alive=pb.Alive(meta=b"m" * 513))),
    "unknown member state": _packet_of(
        pb.GossipMessage(
            push_pull=pb.PushPull(nodes=[pb.PushNodeState(name="n", state=_any_int(4))])
        )
    ),
    "negative member state": _packet_of(
        pb.GossipMessage(
            push_pull=pb.PushPull(nodes=[pb.PushNodeState(name="n", state=_any_int(-1))])
        )
    ),
    "long push-pull meta": _packet_of(
        pb.GossipMessage(push_pull=pb.PushPull(nodes=[pb.PushNodeState(meta=b"m" * 513)]))
    ),
    "push-pull port": _packet_of(
        pb.GossipMessage(
            push_pull=pb.PushPull(nodes=[pb.PushNodeState(addr=pb.Address(port=65536))])
        )
    ),
    "good then bad": encode([Nack(1)]) + _raw_message(b""),
}


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_decode_rejects_hostile_input(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(data)


def test_decode_ignores_unknown_fields_of_known_messages() -> None:
    # A newer peer may add fields: Nack with an extra field 9 (varint 1) is still a Nack.
    nack = pb.GossipMessage(nack=pb.Nack(seq=5)).SerializeToString()
    body = nack[:1] + bytes((nack[1] + 2,)) + nack[2:] + b"\x48\x01"
    assert decode(_raw_message(body)) == [Nack(5)]
    # Likewise at the Packet level: field 2, or field 1 with another wire type, is unknown.
    assert decode(b"\x12\x00" + encode([Nack(5)]) + b"\x08\x01") == [Nack(5)]


def test_every_truncation_of_a_packet_fails_cleanly() -> None:
    data = encode(EXAMPLES)
    boundaries = set(itertools.accumulate(encoded_size(m) for m in EXAMPLES))
    for n in range(len(data)):
        if n == 0 or n in boundaries:
            assert decode(data[:n]) == EXAMPLES[: len(decode(data[:n]))]
        else:
            with pytest.raises(WireError):
                decode(data[:n])


def _decode_or_wire_error(data: bytes) -> list[Message] | None:
    try:
        msgs = decode(data)
    except WireError:
        return None
    # Whatever decodes is valid: it encodes again and decodes to the same messages.
    assert decode(encode(msgs)) == msgs
    return msgs


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_raises_only_wire_error(data: bytes) -> None:
    _decode_or_wire_error(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_mutated_packets_raise_only_wire_error(msgs: list[Message], data: st.DataObject) -> None:
    packet = bytearray(encode(msgs))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if not packet:
            break
        i = data.draw(st.integers(0, len(packet) - 1))
        if op == "flip":
            packet[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del packet[i:]
        elif op == "insert":
            packet[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del packet[i]
    _decode_or_wire_error(bytes(packet))


# --- pack ----------------------------------------------------------------------------------


@given(st.lists(messages, max_size=30), st.integers(min_value=1, max_value=1500))
def test_pack_respects_the_limit_keeps_order_and_is_greedy(msgs: list[Message], limit: int) -> None:
    packets = pack(msgs, limit)
    decoded = [decode(p) for p in packets]
    assert [m for ms in decoded for m in ms] == msgs
    for p, ms in zip(packets, decoded, strict=True):
        assert ms, "no empty packets"
        assert len(p) <= limit or len(ms) == 1, "only a lone message may exceed the limit"
    # Greedy: each packet was closed only because the next message did not fit.
    for p, nxt in zip(packets, decoded[1:], strict=False):
        assert len(p) + encoded_size(nxt[0]) > limit


def test_pack_puts_an_oversized_message_alone() -> None:
    big = UserMsg(b"x" * 2000)
    small = [Nack(i) for i in range(3)]
    packets = pack([*small, big, *small], 1400)
    assert [decode(p) for p in packets] == [small, [big], small]
    assert len(packets[1]) > 1400


def test_pack_fills_a_packet_exactly_to_the_limit() -> None:
    msgs = [Nack(1)] * 10
    size = encoded_size(Nack(1))
    assert [len(p) for p in pack(msgs, 5 * size)] == [5 * size, 5 * size]
    assert [len(p) for p in pack(msgs, 5 * size - 1)] == [4 * size, 4 * size, 2 * size]


# --- fit -----------------------------------------------------------------------------------


@given(
    st.lists(messages, max_size=2),
    st.lists(messages, max_size=20),
    st.integers(min_value=0, max_value=1500),
)
def test_fit_includes_first_and_as_many_extras_as_fit(
    first: list[Message], extra: list[Message], limit: int
) -> None:
    packet, used = fit(first, extra, limit, max_skipped=len(extra) + 1)
    assert decode(packet) == [*first, *used]
    first_size = sum(encoded_size(m) for m in first)
    if first_size > limit:
        assert used == []
        return
    assert len(packet) <= limit
    # used is a subsequence of extra, in order
    it = iter(extra)
    assert all(any(u is e for e in it) for u in used)
    # nothing left out would still have fit
    used_ids = {id(u) for u in used}
    for e in extra:
        if id(e) not in used_ids:
            assert len(packet) + encoded_size(e) > limit


def test_fit_skips_an_extra_that_does_not_fit_and_tries_the_next() -> None:
    ping = Ping(1, "b", "a", ("h", 1))
    big, small = UserMsg(b"x" * 100), Nack(2)
    limit = encoded_size(ping) + encoded_size(small) + 10
    packet, used = fit([ping], [big, small], limit)
    assert used == [small]
    assert decode(packet) == [ping, small]


def test_fit_sends_first_even_when_it_exceeds_the_limit() -> None:
    big = UserMsg(b"x" * 2000)
    packet, used = fit([big], [Nack(1)], 1400)
    assert used == []
    assert decode(packet) == [big]


def test_fit_stops_pulling_extras_once_full() -> None:
    pulled = 0

    def endless() -> Iterator[Message]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield Nack(i % 100)  # 4 or 5 bytes each

    packet, used = fit([Ping(1, "b", "a", ("h", 1))], endless(), 1400)
    assert 1400 - 4 < len(packet) <= 1400
    assert pulled <= len(used) + 1


def test_fit_gives_up_after_max_skipped_misses() -> None:
    pulled = 0

    def endless_big() -> Iterator[Message]:
        nonlocal pulled
        while True:
            pulled += 1
            yield UserMsg(b"x" * 100)

    ping = Ping(1, "b", "a", ("h", 1))
    limit = encoded_size(ping) + 150
    packet, used = fit([ping], endless_big(), limit)
    assert decode(packet) == [ping, *used]
    assert len(used) == 1
    assert pulled == 1 + wire.DEFAULT_MAX_SKIPPED
    tail = [Nack(1)]
    _, used = fit([ping], [*[UserMsg(b"x" * 200)] * 3, *tail], limit, max_skipped=3)
    assert used == []
    _, used = fit([ping], [*[UserMsg(b"x" * 200)] * 3, *tail], limit, max_skipped=4)
    assert used == tail


def test_packet_overhead_is_the_encryption_overhead() -> None:
    assert wire.PACKET_OVERHEAD == ENCRYPTION_OVERHEAD


# --- stream frames -------------------------------------------------------------------------


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_frames_round_trip_in_sequence() -> None:
    payloads = [b"", b"a", encode(EXAMPLES), b"x" * 70000]
    reader = _reader(b"".join(wire.encode_frame(p) for p in payloads))
    assert [await wire.read_frame(reader) for _ in payloads] == payloads
    with pytest.raises(wire.StreamClosed):
        await wire.read_frame(reader)


def test_frame_header_is_big_endian_length() -> None:
    assert wire.encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert wire.encode_frame(b"x" * 258)[:4] == b"\x00\x00\x01\x02"


async def test_oversized_frame_is_rejected_before_its_payload_arrives() -> None:
    # No payload and no EOF: the reader would wait forever if the length were not checked first.
    reader = _reader((1001).to_bytes(4, "big"), eof=False)
    with pytest.raises(WireError, match="1001 bytes exceeds the limit of 1000"):
        await asyncio.wait_for(wire.read_frame(reader, max_bytes=1000), timeout=5)


async def test_default_limit_is_four_mebibytes() -> None:
    limit = 4 * 1024 * 1024
    reader = _reader((limit + 1).to_bytes(4, "big"), eof=False)
    with pytest.raises(WireError):
        await asyncio.wait_for(wire.read_frame(reader), timeout=5)
    reader = _reader(wire.encode_frame(b"y" * limit))
    assert len(await wire.read_frame(reader)) == limit


async def test_truncated_header_is_an_error_not_a_clean_close() -> None:
    with pytest.raises(WireError, match="frame header") as info:
        await wire.read_frame(_reader(b"\x00\x00"))
    assert not isinstance(info.value, wire.StreamClosed)


async def test_truncated_payload_is_rejected() -> None:
    with pytest.raises(WireError, match="3 of 10 bytes") as info:
        await wire.read_frame(_reader(b"\x00\x00\x00\x0aabc"))
    assert not isinstance(info.value, wire.StreamClosed)


async def test_clean_close_is_stream_closed() -> None:
    with pytest.raises(wire.StreamClosed):
        await wire.read_frame(_reader(b""))


async def _read_all(data: bytes) -> list[bytes]:
    reader = _reader(data)  # made inside the loop that reads it
    frames = []
    while True:
        try:
            frames.append(await wire.read_frame(reader, max_bytes=64))
        except wire.StreamClosed:
            return frames


@given(st.binary(max_size=200))
def test_any_byte_stream_gives_frames_or_wire_error(data: bytes) -> None:
    try:
        frames = asyncio.run(_read_all(data))
    except WireError:
        return
    assert b"".join(wire.encode_frame(f) for f in frames) == data


@given(st.lists(st.binary(max_size=100), max_size=5), st.integers(min_value=0))
def test_truncated_frame_stream_raises_wire_error(frames: list[bytes], cut: int) -> None:
    data = b"".join(wire.encode_frame(f) for f in frames)
    assume(data)
    cut %= len(data)
    try:
        got = asyncio.run(_read_all(data[:cut]))
    except WireError as exc:
        assert not isinstance(exc, wire.StreamClosed)
        return
    # Only a cut exactly at a frame boundary reads cleanly.
    assert got == frames[: len(got)]
    assert b"".join(wire.encode_frame(f) for f in got) == data[:cut]
