"""Round trips between the core's message types and proto/raft.proto (raft.transport.codec)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import raft_pb2 as pb
from raft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Membership,
    Message,
    RequestVote,
    RequestVoteResponse,
    Server,
    SnapshotMeta,
    Suffrage,
    TimeoutNow,
)
from raft.transport import codec
from raft.transport.codec import from_proto, to_proto

MEMBERSHIP = Membership(
    (
        Server("n1", "10.0.0.1:8300"),
        Server("n2", "10.0.0.2:8300", Suffrage.NONVOTER),
        Server("n3", "[::1]:8300", Suffrage.STAGING),
    )
)

EXAMPLES: list[Message] = [
    RequestVote("n1", "n2", 7, 100, 6),
    RequestVote("n1", "n2", 8, 100, 6, pre_vote=True, transfer=True),
    RequestVoteResponse("n2", "n1", 7, True),
    RequestVoteResponse("n2", "n1", 7, False, pre_vote=True),
    AppendEntries("n1", "n2", 3, 0, 0, (), 0),  # heartbeat: no entries
    AppendEntries(
        "n1",
        "n2",
        3,
        10,
        2,
        (
            Entry(11, 3, EntryKind.NOOP),
            Entry(12, 3, EntryKind.NORMAL, b"\x00\xffcommand"),
            Entry(13, 3, EntryKind.CONFIG, MEMBERSHIP.encode()),
        ),
        12,
        read_seq=42,
    ),
    AppendEntriesResponse("n2", "n1", 3, True, 13, read_seq=42),
    AppendEntriesResponse("n2", "n1", 3, False, 9, conflict_index=5, conflict_term=2),
    InstallSnapshot("n1", "n2", 4, SnapshotMeta(500, 3, MEMBERSHIP), leader_commit=510),
    InstallSnapshot("n1", "n2", 4, SnapshotMeta()),  # empty membership
    InstallSnapshotResponse("n2", "n1", 4, True, 500),
    InstallSnapshotResponse("n2", "n1", 4, False, 0),
    TimeoutNow("n1", "n2", 9),
]


def roundtrip(msg: Message) -> Message:
    wire = to_proto(msg).SerializeToString()
    return from_proto(pb.RaftMessage.FromString(wire))


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg: Message) -> None:
    back = roundtrip(msg)
    assert back == msg
    assert type(back) is type(msg)


def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in EXAMPLES} == set(Message.__args__)  # type: ignore[attr-defined]
    assert len(pb.RaftMessage.DESCRIPTOR.oneofs_by_name["body"].fields) == len(
        Message.__args__  # type: ignore[attr-defined]
    )


def test_enums_decode_to_python_enums() -> None:
    msg = roundtrip(EXAMPLES[5])
    assert isinstance(msg, AppendEntries)
    assert [type(e.kind) for e in msg.entries] == [EntryKind] * 3
    snap = roundtrip(EXAMPLES[8])
    assert isinstance(snap, InstallSnapshot)
    assert [type(s.suffrage) for s in snap.meta.membership.servers] == [Suffrage] * 3


def test_proto_enums_mirror_python_enums() -> None:
    assert {v.number for v in pb.EntryKind.DESCRIPTOR.values} == {int(k) for k in EntryKind}
    assert {v.number for v in pb.Suffrage.DESCRIPTOR.values} == {int(s) for s in Suffrage}


def test_large_entry_data() -> None:
    big = bytes(range(256)) * 16384  # 4 MiB
    msg = AppendEntries("n1", "n2", 1, 0, 0, (Entry(1, 1, EntryKind.NORMAL, big),), 0)
    assert roundtrip(msg) == msg


def test_many_entries() -> None:
    entries = tuple(Entry(i, 2, EntryKind.NORMAL, b"x" * 100) for i in range(1, 1001))
    msg = AppendEntries("n1", "n2", 2, 0, 0, entries, 1000)
    assert roundtrip(msg) == msg


def test_max_uint64_values() -> None:
    top = 2**64 - 1
    msg = AppendEntries("n1", "n2", top, top, top, (Entry(top, top, EntryKind.NOOP),), top, top)
    assert roundtrip(msg) == msg


@pytest.mark.parametrize("value", [-1, 2**64])
def test_out_of_range_integers_are_refused(value: int) -> None:
    with pytest.raises(ValueError):
        to_proto(TimeoutNow("n1", "n2", value))


def test_not_a_message_is_refused() -> None:
    with pytest.raises(TypeError):
        to_proto(HardState())  # type: ignore[arg-type]


def test_hard_state_none_vote_is_empty_string() -> None:
    assert codec.hard_state_to_proto(HardState(5, None)).voted_for == ""
    assert codec.hard_state_from_proto(pb.HardState(term=5)) == HardState(5, None)
    for h in (HardState(), HardState(5, None), HardState(6, "n2")):
        wire = codec.hard_state_to_proto(h).SerializeToString()
        assert codec.hard_state_from_proto(pb.HardState.FromString(wire)) == h


def test_value_helpers_round_trip() -> None:
    e = Entry(3, 2, EntryKind.CONFIG, b"abc")
    assert codec.entry_from_proto(codec.entry_to_proto(e)) == e
    assert codec.membership_from_proto(codec.membership_to_proto(MEMBERSHIP)) == MEMBERSHIP
    meta = SnapshotMeta(9, 2, MEMBERSHIP)
    assert codec.snapshot_meta_from_proto(codec.snapshot_meta_to_proto(meta)) == meta
    ae = pb.AppendEntries()
    codec.entries_into(ae.entries, [e, e])
    assert codec.entries_from_proto(ae.entries) == (e, e)


def test_fast_entry_decoding_builds_the_same_entries_as_the_constructor() -> None:
    assert codec._build_entries is codec._entries_fast  # Entry still has the expected shape
    ae = pb.AppendEntries()
    src = [Entry(i, i // 3, EntryKind(i % 3), bytes([i % 256]) * (i % 7)) for i in range(50)]
    codec.entries_into(ae.entries, src)
    fast = codec._entries_fast(ae.entries)
    plain = codec._entries_plain(ae.entries)
    assert fast == plain == tuple(src)
    assert [hash(e) for e in fast] == [hash(e) for e in src]
    assert all(type(e) is Entry and type(e.kind) is EntryKind for e in fast)
    with pytest.raises(AttributeError):
        fast[0].index = 5  # type: ignore[misc]  # still frozen


# --- malformed input -------------------------------------------------------------------------


def test_empty_message_is_refused() -> None:
    with pytest.raises(ValueError, match="no body"):
        from_proto(pb.RaftMessage())


def test_unknown_oneof_member_is_refused() -> None:
    # Field 15 (length-delimited, empty): a message type from a newer build. Protobuf keeps
    # it as an unknown field, so no member of the oneof is set.
    unknown = pb.RaftMessage.FromString(b"\x7a\x00")
    with pytest.raises(ValueError):
        from_proto(unknown)


def test_unknown_entry_kind_is_refused() -> None:
    p = pb.RaftMessage()
    p.append_entries.src = "n1"
    p.append_entries.entries.add(index=1, term=1, kind=99)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entry kind"):
        from_proto(p)
    with pytest.raises(ValueError, match="entry kind"):
        codec.entry_from_proto(pb.Entry(index=1, kind=-1))  # type: ignore[arg-type]


def test_unknown_suffrage_is_refused() -> None:
    p = pb.RaftMessage()
    p.install_snapshot.meta.membership.servers.add(id="n1", suffrage=7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="suffrage"):
        from_proto(p)


def test_duplicate_server_ids_are_refused() -> None:
    p = pb.RaftMessage()
    servers = p.install_snapshot.meta.membership.servers
    servers.add(id="n1", address="a")
    servers.add(id="n1", address="b")
    with pytest.raises(ValueError, match="duplicate"):
        from_proto(p)


# --- batch framing ---------------------------------------------------------------------------


def test_hand_framed_batch_equals_protobuf_serialization() -> None:
    from raft.transport.grpc import _frame_head

    msgs = [
        *EXAMPLES,
        AppendEntries("n1", "n2", 1, 0, 0, (Entry(1, 1, EntryKind.NORMAL, b"y" * 300),), 0),
    ]
    bodies = [to_proto(m).SerializeToString() for m in msgs]
    framed = b"".join(_frame_head(len(b)) + b for b in bodies)
    expected = pb.MessageBatch(messages=[to_proto(m) for m in msgs]).SerializeToString()
    assert framed == expected
    assert [from_proto(p) for p in pb.MessageBatch.FromString(framed).messages] == msgs


# --- property-based ----------------------------------------------------------------------------

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=2**20)
ints = st.one_of(small, u64)
node_ids = st.text(min_size=0, max_size=20)
entries = st.builds(Entry, ints, ints, st.sampled_from(EntryKind), st.binary(max_size=64))
memberships = st.lists(
    st.builds(Server, node_ids, st.text(max_size=30), st.sampled_from(Suffrage)),
    max_size=6,
    unique_by=lambda s: s.id,
).map(lambda servers: Membership(tuple(servers)))
metas = st.builds(SnapshotMeta, ints, ints, memberships)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, node_ids, node_ids, ints, ints, ints, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, node_ids, node_ids, ints, st.booleans(), st.booleans()),
    st.builds(
        AppendEntries,
        node_ids,
        node_ids,
        ints,
        ints,
        ints,
        st.lists(entries, max_size=8).map(tuple),
        ints,
        ints,
    ),
    st.builds(
        AppendEntriesResponse, node_ids, node_ids, ints, st.booleans(), ints, ints, ints, ints
    ),
    st.builds(InstallSnapshot, node_ids, node_ids, ints, metas, ints),
    st.builds(InstallSnapshotResponse, node_ids, node_ids, ints, st.booleans(), ints),
    st.builds(TimeoutNow, node_ids, node_ids, ints),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_any_message_round_trips(msg: Message) -> None:
    assert roundtrip(msg) == msg


@settings(max_examples=100, deadline=None)
@given(st.builds(HardState, ints, st.one_of(st.none(), node_ids.filter(bool))))
def test_any_hard_state_round_trips(h: HardState) -> None:
    wire = codec.hard_state_to_proto(h).SerializeToString()
    assert codec.hard_state_from_proto(pb.HardState.FromString(wire)) == h


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_anything_but_value_error(data: bytes) -> None:
    # DecodeError (a protobuf parse failure) or ValueError (decodes, but is no valid message):
    # the transport treats both as malformed input.
    from google.protobuf.message import DecodeError

    try:
        p = pb.RaftMessage.FromString(data)
    except DecodeError:
        return
    with contextlib.suppress(ValueError):
        from_proto(p)
