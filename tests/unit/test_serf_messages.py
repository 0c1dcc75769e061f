"""Serf's message encoding (gossip.serf.messages), snapshot records (gossip.serf.snapshot) and
Lamport clocks (gossip.serf.lamport): round trips, hostile bytes, replay and compaction."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.serf import messages as sm
from gossip.serf import snapshot as snap
from gossip.serf.lamport import MAX_LTIME, LamportClock

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
NAMES = st.text(min_size=0, max_size=40)
NODE = st.text(min_size=1, max_size=30)
PAYLOAD = st.binary(max_size=200)

events = st.builds(sm.UserEventMsg, U64, NAMES, PAYLOAD, st.booleans())
messages: st.SearchStrategy[sm.SerfMessage] = st.one_of(
    st.builds(sm.JoinIntent, U64, NODE),
    st.builds(sm.LeaveIntent, U64, NODE),
    events,
    st.builds(
        sm.QueryMsg,
        U64,
        U64,
        NODE,
        st.tuples(st.text(max_size=20), st.integers(0, 65535)),
        st.booleans(),
        st.integers(0, 10**7).map(lambda ms: ms / 1000),
        st.none() | st.lists(NODE, max_size=5).map(tuple),
        st.lists(st.tuples(NAMES, NAMES), max_size=4).map(tuple),
        NAMES,
        PAYLOAD,
    ),
    st.builds(sm.QueryResponseMsg, U64, U64, NODE, st.booleans(), PAYLOAD),
    st.builds(
        sm.PushPullState,
        U64,
        st.lists(st.tuples(NODE, U64), max_size=5).map(tuple),
        st.lists(NODE, max_size=5).map(tuple),
        U64,
        st.lists(events, max_size=5).map(tuple),
        U64,
    ),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(msg: sm.SerfMessage) -> None:
    assert sm.decode(sm.encode(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(messages)
def test_every_truncation_is_a_decode_error(msg: sm.SerfMessage) -> None:
    data = sm.encode(msg)
    for n in range(len(data)):
        with pytest.raises(sm.SerfDecodeError):
            sm.decode(data[:n])


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bytes_only_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(sm.SerfDecodeError):
        sm.decode(data)
    with contextlib.suppress(sm.SerfDecodeError):
        sm.decode_tags(data)


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_corrupted_messages_only_raise_decode_error(
    msg: sm.SerfMessage, data: st.DataObject
) -> None:
    raw = bytearray(sm.encode(msg))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(sm.SerfDecodeError):
        sm.decode(bytes(raw))


def test_specific_hostile_inputs() -> None:
    cases = {
        b"": "empty",
        b"\x00": "unknown Serf message type",
        b"\x63": "unknown Serf message type",
        b"\x01" + b"\xff" * 11: "longer than 10 bytes",
        b"\x01" + b"\xff" * 9 + b"\x7f": "64 bits",
        b"\x01\x05\x05ab": "truncated",
        b"\x01\x05\x02\xff\xfe": "UTF-8",
        b"\x03\x01\x01a\x00\x02": "not a bool",
        b"\x06\x00\xff\xff\xff\x0f": "bytes left",
        b"\x01\x01" + b"\xc0\x04" + b"a" * 576: "more than 512",
    }
    for data, why in cases.items():
        with pytest.raises(sm.SerfDecodeError, match=why):
            sm.decode(data)
    port = sm.encode(sm.QueryResponseMsg(1, 2, "n", False, b""))
    assert isinstance(sm.decode(port + b"future-field"), sm.QueryResponseMsg)  # ignored tail


def test_encode_refuses_what_decode_would_reject() -> None:
    with pytest.raises(sm.SerfEncodeError, match="512"):
        sm.encode(sm.JoinIntent(1, "n" * 513))
    with pytest.raises(sm.SerfEncodeError, match="64-bit"):
        sm.encode(sm.JoinIntent(1 << 64, "n"))
    with pytest.raises(sm.SerfEncodeError, match="64-bit"):
        sm.encode(sm.JoinIntent(-1, "n"))
    with pytest.raises(sm.SerfEncodeError, match="port"):
        sm.encode(sm.QueryMsg(1, 1, "n", ("h", 70000), False, 1.0, None, (), "q", b""))
    with pytest.raises(sm.SerfEncodeError, match="Unicode"):
        sm.encode(sm.UserEventMsg(1, "\udcff", b"", False))


def test_query_node_filter_none_and_empty_differ() -> None:
    none = sm.QueryMsg(1, 1, "n", ("h", 1), False, 1.0, None, (), "q", b"")
    empty = sm.QueryMsg(1, 1, "n", ("h", 1), False, 1.0, (), (), "q", b"")
    assert sm.decode(sm.encode(none)) == none
    assert sm.decode(sm.encode(empty)) == empty


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=8))
def test_tags_round_trip(tags: dict[str, str]) -> None:
    assert sm.decode_tags(sm.encode_tags(tags)) == tags


def test_tags_encoding() -> None:
    assert sm.encode_tags({}) == b""
    assert sm.decode_tags(b"") == {}
    assert sm.encode_tags({"b": "2", "a": "1"}) == sm.encode_tags({"a": "1", "b": "2"})
    with pytest.raises(sm.SerfDecodeError, match="version"):
        sm.decode_tags(b"\x07\x00")


# --- Lamport clock ------------------------------------------------------------------------------


def test_lamport_clock() -> None:
    c = LamportClock()
    assert c.time() == 0
    assert c.increment() == 1
    c.witness(0)
    assert c.time() == 1
    c.witness(1)  # a message stamped with our current time: move past it
    assert c.time() == 2
    c.witness(10)
    assert c.time() == 11
    c.witness(MAX_LTIME)
    assert c.time() == MAX_LTIME  # saturates
    assert c.increment() == MAX_LTIME
    with pytest.raises(ValueError):
        LamportClock(-1)


# --- snapshot records ---------------------------------------------------------------------------


RECORDS: list[snap.SnapshotRecord] = [
    snap.SnapshotAlive("a", ("10.0.0.1", 8301)),
    snap.SnapshotAlive("b", ("10.0.0.2", 8301)),
    snap.SnapshotClocks(5, 2, 1),
    snap.SnapshotAlive("c", ("10.0.0.3", 8301)),
    snap.SnapshotNotAlive("b"),
    snap.SnapshotClocks(9, 3, 4),
    snap.SnapshotAlive("b", ("10.0.0.22", 8301)),  # back, at a new address
]


def test_records_round_trip_as_json_lines() -> None:
    for rec in [*RECORDS, snap.SnapshotLeave(), snap.SnapshotAlive("ünï", ("::1", 0))]:
        line = snap.encode_record(rec)
        assert "\n" not in line
        assert snap.decode_record(line) == rec


def test_bad_record_lines() -> None:
    for line in [
        "",
        "{",
        "[]",
        '{"t": "alive", "name": "a"}',
        '{"t": "alive", "name": "", "host": "h", "port": 1}',
        '{"t": "alive", "name": "a", "host": "h", "port": 65536}',
        '{"t": "clock", "member": -1, "event": 0, "query": 0}',
        '{"t": "clock", "member": true, "event": 0, "query": 0}',
        '{"t": "coordinate"}',
        "[" * 100_000,
    ]:
        with pytest.raises(snap.SnapshotFormatError):
            snap.decode_record(line)


def test_replay_and_compaction() -> None:
    state = snap.replay(RECORDS)
    assert state.members == {
        "a": ("10.0.0.1", 8301),
        "b": ("10.0.0.22", 8301),
        "c": ("10.0.0.3", 8301),
    }
    assert (state.member_clock, state.event_clock, state.query_clock) == (9, 3, 4)
    assert not state.left
    assert snap.replay(snap.compact(state)) == state
    left = snap.replay([*RECORDS, snap.SnapshotLeave()])
    assert left.left and left.members == {} and left.member_clock == 9
    assert snap.replay(snap.compact(left)) == left
    kept = snap.replay([*RECORDS, snap.SnapshotLeave()], rejoin_after_leave=True)
    assert not kept.left and kept.members == state.members
    # A restart after a leave that joined again is a normal snapshot again.
    rejoined = snap.replay([*RECORDS, snap.SnapshotLeave(), snap.SnapshotAlive("d", ("h", 1))])
    assert not rejoined.left and rejoined.members == {"d": ("h", 1)}


def test_files_append_load_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "serf.snapshot"
    assert snap.load(path) is None
    assert snap.append_records(path, []) == 0
    snap.append_records(path, RECORDS[:3])
    # A torn write (crash mid-line), then more records: only the torn line is lost.
    with open(path, "ab") as f:
        f.write(b'{"t":"alive","name":"x","ho')
    snap.append_records(path, RECORDS[3:])
    state = snap.load(path)
    assert state is not None
    assert state.skipped == 1
    expected = snap.replay(RECORDS)
    expected.skipped = 1
    assert state == expected
    assert "x" not in state.members
    snap.rewrite(path, state)
    again = snap.load(path)
    assert again is not None and again.skipped == 0
    assert again.members == state.members
    assert (again.member_clock, again.event_clock, again.query_clock) == (9, 3, 4)
    assert len(path.read_text().splitlines()) == 1 + len(state.members)
    assert not (tmp_path / "serf.snapshot.compact").exists()
