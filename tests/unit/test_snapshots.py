"""SnapshotStore behaviour: FileSnapshotStore on disk and MemorySnapshotStore, same contract."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.core.types import Membership, Server, SnapshotMeta, Suffrage
from raft.storage.base import SnapshotCorrupt, SnapshotSink, SnapshotStore
from raft.storage.memory import MemorySnapshotStore
from raft.storage.snapshots import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    FileSnapshotStore,
    SnapshotNotFound,
    snapshot_name,
)

pytestmark = pytest.mark.timeout(60)

Store = FileSnapshotStore | MemorySnapshotStore
MakeStore = Callable[..., Store]

MEMBERSHIP = Membership(
    (
        Server("n1", "10.0.0.1:8300"),
        Server("n2", "10.0.0.2:8300", Suffrage.STAGING),
        Server("n3", "[::1]:8300", Suffrage.NONVOTER),
    )
)


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, MEMBERSHIP)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store: Store, m: SnapshotMeta, data: bytes, pieces: int = 3) -> str:
    sink = store.create(m)
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        sink.write(data[i : i + step])
    return sink.commit()


@pytest.fixture(params=["file", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    def make(retain: int = 2) -> Store:
        if request.param == "file":
            return FileSnapshotStore(tmp_path / "snapshots", retain=retain)
        return MemorySnapshotStore(retain=retain)

    return make


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_both_implement_the_protocols(tmp_path: Path) -> None:
    # Checked statically by mypy (structural typing); trivially true at run time.
    stores: list[SnapshotStore] = [FileSnapshotStore(tmp_path), MemorySnapshotStore()]
    sinks: list[SnapshotSink] = [store.create(meta(1)) for store in stores]
    for sink in sinks:
        sink.abort()
    assert all(store.latest() is None for store in stores)


# --- both stores --------------------------------------------------------------------------------


def test_round_trip(make_store: MakeStore) -> None:
    store = make_store()
    assert store.latest() is None
    assert list(store.list()) == []
    data = os.urandom(700_000)
    digest = put(store, meta(42, 7), data, pieces=5)
    assert digest == sha(data)
    assert store.latest() == meta(42, 7)
    assert list(store.list()) == [meta(42, 7)]
    got_meta, got_data, got_sha = store.read(42, 7)
    assert (got_meta, got_data, got_sha) == (meta(42, 7), data, digest)
    assert got_meta.membership.get("n2") == Server("n2", "10.0.0.2:8300", Suffrage.STAGING)
    chunks = list(store.iter_chunks(42, 7, chunk_size=100_000))
    assert [len(c) for c in chunks] == [100_000] * 7
    assert b"".join(chunks) == data
    assert b"".join(store.iter_chunks(42, 7)) == data


def test_empty_snapshot_and_empty_membership(make_store: MakeStore) -> None:
    store = make_store()
    digest = store.create(SnapshotMeta(1, 1)).commit()
    assert digest == sha(b"")
    assert store.read(1, 1) == (SnapshotMeta(1, 1), b"", digest)
    assert list(store.iter_chunks(1, 1)) == []


def test_expected_sha256_match_is_accepted(make_store: MakeStore) -> None:
    store = make_store()
    data = b"state" * 1000
    sink = store.create(meta(5))
    sink.write(data)
    assert sink.commit(expected_sha256=sha(data).upper()) == sha(data)
    assert store.read(5, 1)[1] == data


def test_expected_sha256_mismatch_raises_and_leaves_nothing(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    put(store, meta(5), b"older")
    sink = store.create(meta(9))
    sink.write(b"what arrived")
    with pytest.raises(SnapshotCorrupt, match="does not match"):
        sink.commit(expected_sha256=sha(b"what was sent"))
    assert store.latest() == meta(5)
    assert list(store.list()) == [meta(5)]
    with pytest.raises(SnapshotNotFound):
        store.read(9, 1)
    if isinstance(store, FileSnapshotStore):
        assert files(store.directory) == [snapshot_name(5, 1)]
    with pytest.raises(RuntimeError):
        sink.write(b"more")


def test_abort_and_context_manager_leave_nothing(make_store: MakeStore) -> None:
    store = make_store()
    sink = store.create(meta(3))
    sink.write(b"partial")
    sink.abort()
    with pytest.raises(RuntimeError):
        sink.commit()
    with pytest.raises(ZeroDivisionError), store.create(meta(4)) as sink2:
        sink2.write(b"partial")
        raise ZeroDivisionError
    assert store.latest() is None
    if isinstance(store, FileSnapshotStore):
        assert files(store.directory) == []


def test_sink_cannot_be_used_after_commit(make_store: MakeStore) -> None:
    store = make_store()
    sink = store.create(meta(3))
    sink.commit()
    with pytest.raises(RuntimeError):
        sink.write(b"x")
    with pytest.raises(RuntimeError):
        sink.commit()


def test_missing_snapshot_is_not_found(make_store: MakeStore) -> None:
    store = make_store()
    put(store, meta(3, 2), b"x")
    for index, term in ((3, 1), (4, 2)):
        with pytest.raises(SnapshotNotFound):
            store.read(index, term)
        with pytest.raises(SnapshotCorrupt):  # SnapshotNotFound is a SnapshotCorrupt
            list(store.iter_chunks(index, term))


def test_retain_policy_keeps_the_newest(make_store: MakeStore) -> None:
    store = make_store(retain=2)
    for index in (10, 20, 30, 40):
        put(store, meta(index, index // 10), b"%d" % index)
    assert list(store.list()) == [meta(40, 4), meta(30, 3)]
    assert store.latest() == meta(40, 4)
    with pytest.raises(SnapshotNotFound):
        store.read(20, 2)
    assert store.read(30, 3)[1] == b"30"
    # A snapshot older than the retained ones is kept by its own commit...
    put(store, meta(5, 1), b"5")
    assert [m.index for m in store.list()] == [40, 30, 5]
    # ...and dropped by the next one.
    put(store, meta(50, 5), b"50")
    assert [m.index for m in store.list()] == [50, 40]
    if isinstance(store, FileSnapshotStore):
        assert files(store.directory) == [snapshot_name(40, 4), snapshot_name(50, 5)]


def test_retain_one(make_store: MakeStore) -> None:
    store = make_store(retain=1)
    for index in (1, 2, 3):
        put(store, meta(index), b"x")
    assert list(store.list()) == [meta(3)]
    with pytest.raises(ValueError):
        make_store(retain=0)


def test_ordering_is_by_index_then_term(make_store: MakeStore) -> None:
    store = make_store(retain=5)
    put(store, meta(100, 2), b"a")
    put(store, meta(99, 3), b"b")
    put(store, meta(100, 3), b"c")
    assert [(m.index, m.term) for m in store.list()] == [(100, 3), (100, 2), (99, 3)]
    assert store.latest() == meta(100, 3)


def test_rewriting_the_same_snapshot_replaces_it(make_store: MakeStore) -> None:
    store = make_store()
    put(store, meta(7), b"first")
    put(store, meta(7), b"second")
    assert list(store.list()) == [meta(7)]
    assert store.read(7, 1)[1] == b"second"


def test_memory_store_detects_corruption() -> None:
    store = MemorySnapshotStore()
    put(store, meta(8), b"precious state")
    store.corrupt(8, 1)
    assert store.latest() == meta(8)  # latest() does not verify checksums
    with pytest.raises(SnapshotCorrupt, match="sha256"):
        store.read(8, 1)
    with pytest.raises(SnapshotCorrupt):
        next(store.iter_chunks(8, 1))


# --- file format and on-disk corruption ----------------------------------------------------------


@pytest.fixture
def fstore(tmp_path: Path) -> FileSnapshotStore:
    return FileSnapshotStore(tmp_path / "snapshots")


def test_file_name_and_layout(fstore: FileSnapshotStore) -> None:
    data = b"the fsm state"
    digest = put(fstore, meta(12345, 6), data)
    path = fstore.directory / "snapshot-00000000000000000006-00000000000000012345.snap"
    assert fstore.path(12345, 6) == path
    raw = path.read_bytes()
    magic, version, meta_len, meta_crc = struct.unpack(">8sHII", raw[:HEADER_SIZE])
    assert (magic, version) == (MAGIC, FORMAT_VERSION)
    block = raw[HEADER_SIZE : HEADER_SIZE + meta_len]
    assert zlib.crc32(block) == meta_crc
    doc = json.loads(block)
    assert doc == {
        "index": 12345,
        "term": 6,
        "membership": json.loads(MEMBERSHIP.encode()),
        "size": len(data),
        "sha256": digest,
    }
    assert raw[HEADER_SIZE + meta_len :] == data


def rewrite(path: Path, edit: Callable[[bytearray], bytes | bytearray]) -> None:
    path.write_bytes(bytes(edit(bytearray(path.read_bytes()))))


def flip(pos: int) -> Callable[[bytearray], bytearray]:
    def edit(raw: bytearray) -> bytearray:
        raw[pos] ^= 0x40
        return raw

    return edit


def test_flipped_data_byte_is_detected(fstore: FileSnapshotStore) -> None:
    data = os.urandom(300_000)
    put(fstore, meta(9), data)
    rewrite(fstore.path(9, 1), flip(-1000))
    with pytest.raises(SnapshotCorrupt, match="sha256"):
        fstore.read(9, 1)
    chunks = fstore.iter_chunks(9, 1, chunk_size=1024)
    with pytest.raises(SnapshotCorrupt, match="sha256"):
        next(chunks)  # verify-first: not a single byte of a bad snapshot is yielded
    # latest()/list() check structure, not the data checksum: the file still looks complete.
    assert fstore.latest() == meta(9)


@pytest.mark.parametrize("keep", [0, 5, HEADER_SIZE, HEADER_SIZE + 10, -1, -100])
def test_truncated_file_is_detected_and_not_listed(fstore: FileSnapshotStore, keep: int) -> None:
    put(fstore, meta(2), b"older")
    put(fstore, meta(9), b"x" * 1000)
    rewrite(fstore.path(9, 1), lambda raw: raw[:keep])
    with pytest.raises(SnapshotCorrupt):
        fstore.read(9, 1)
    with pytest.raises(SnapshotCorrupt):
        list(fstore.iter_chunks(9, 1))
    assert fstore.latest() == meta(2)
    assert list(fstore.list()) == [meta(2)]


def _meta_len(raw: bytes | bytearray) -> int:
    return int(struct.unpack(">I", raw[10:14])[0])


def replace_meta(make_block: Callable[[bytes], bytes]) -> Callable[[bytearray], bytes]:
    """Swap the meta block for another of the same length, with a matching CRC."""

    def edit(raw: bytearray) -> bytes:
        n = _meta_len(raw)
        block = make_block(bytes(raw[HEADER_SIZE : HEADER_SIZE + n])).ljust(n, b" ")
        assert len(block) == n
        header = bytes(raw[:10]) + struct.pack(">II", n, zlib.crc32(block))
        return header + block + bytes(raw[HEADER_SIZE + n :])

    return edit


def set_field(key: str, value: object) -> Callable[[bytearray], bytes]:
    def make_block(block: bytes) -> bytes:
        doc = json.loads(block)
        doc[key] = value
        return json.dumps(doc, separators=(",", ":")).encode()

    return replace_meta(make_block)


def flip_padding(raw: bytearray) -> bytearray:
    raw[HEADER_SIZE + _meta_len(raw) - 1] ^= 0x01  # the block ends with padding spaces
    return raw


BAD_HEADERS: dict[str, Callable[[bytearray], bytes | bytearray]] = {
    "magic": flip(0),
    "version": lambda raw: raw[:8] + struct.pack(">H", 2) + raw[10:],
    "huge meta length": lambda raw: raw[:10] + struct.pack(">I", 2**31) + raw[14:],
    "short meta length": lambda raw: raw[:10] + struct.pack(">I", 3) + raw[14:],
    "meta crc": flip(15),
    "meta byte": flip(HEADER_SIZE + 20),
    "meta address byte (still valid JSON)": flip(HEADER_SIZE + 150),
    "meta padding": flip_padding,
    "garbage meta, right crc": replace_meta(lambda block: b"{not json"),
    "meta for another index, right crc": set_field("index", 10),
    "meta term of the wrong type, right crc": set_field("term", "1"),
    "meta size too small, right crc": set_field("size", 399),
    "meta sha256 not hex, right crc": set_field("sha256", "z" * 64),
    "meta without membership, right crc": set_field("membership", None),
    "meta with a bad suffrage, right crc": set_field("membership", [["n1", "a", 9]]),
    "all garbage": lambda raw: os.urandom(len(raw)),
    "extra trailing bytes": lambda raw: raw + b"\0",
}


@pytest.mark.parametrize("damage", sorted(BAD_HEADERS))
def test_bad_header_or_meta_is_detected(fstore: FileSnapshotStore, damage: str) -> None:
    put(fstore, SnapshotMeta(9, 1, Membership((Server("n1", "a" * 200),))), b"data" * 100)
    rewrite(fstore.path(9, 1), BAD_HEADERS[damage])
    with pytest.raises(SnapshotCorrupt):
        fstore.read(9, 1)
    with pytest.raises(SnapshotCorrupt):
        next(fstore.iter_chunks(9, 1))
    assert fstore.latest() is None


def test_tmp_leftovers_are_ignored_and_cleaned_at_construction(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    store = FileSnapshotStore(directory)
    put(store, meta(3), b"good")
    # A crash mid-write leaves a .tmp behind (here: a sink never committed nor aborted).
    sink = store.create(meta(9))
    sink.write(b"half of it")
    # Even a complete-looking file under a .tmp name is not a snapshot.
    complete_tmp = directory / (snapshot_name(10, 1) + ".deadbeef.tmp")
    complete_tmp.write_bytes(store.path(3, 1).read_bytes())
    unrelated = directory / "README"
    unrelated.write_text("not ours")
    assert store.latest() == meta(3)
    assert list(store.list()) == [meta(3)]
    assert len([n for n in files(directory) if n.endswith(".tmp")]) == 2
    sink.abort()
    put(store, meta(4), b"newer")  # retention never touches .tmp or unrelated files
    assert complete_tmp.exists() and unrelated.exists()

    reopened = FileSnapshotStore(directory)
    assert files(directory) == sorted(["README", snapshot_name(3, 1), snapshot_name(4, 1)])
    assert reopened.latest() == meta(4)
    assert reopened.read(3, 1)[1] == b"good"


def test_files_survive_a_new_store_instance(tmp_path: Path) -> None:
    put(FileSnapshotStore(tmp_path), meta(77, 4), b"durable")
    again = FileSnapshotStore(tmp_path)
    assert again.latest() == meta(77, 4)
    assert again.read(77, 4) == (meta(77, 4), b"durable", sha(b"durable"))


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=5000),
    cuts=st.lists(st.integers(0, 5000), max_size=6),
    chunk_size=st.integers(1, 7000),
)
def test_any_chunking_round_trips(data: bytes, cuts: list[int], chunk_size: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for store in (FileSnapshotStore(directory), MemorySnapshotStore()):
            sink = store.create(meta(1))
            bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
            for lo, hi in itertools.pairwise(bounds):
                sink.write(data[lo:hi])
            assert sink.commit(sha(data)) == sha(data)
            assert store.read(1, 1) == (meta(1), data, sha(data))
            assert b"".join(store.iter_chunks(1, 1, chunk_size)) == data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=300), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_any_single_bit_flip_is_detected(data: bytes, where: float, bit: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = FileSnapshotStore(directory)
        put(store, meta(1), data)
        path = store.path(1, 1)
        raw = bytearray(path.read_bytes())
        pos = min(int(where * len(raw)), len(raw) - 1)
        raw[pos] ^= 1 << bit
        path.write_bytes(bytes(raw))
        with pytest.raises(SnapshotCorrupt):
            store.read(1, 1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), where=st.floats(0, 1, exclude_max=True))
def test_any_truncation_is_detected(data: bytes, where: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = FileSnapshotStore(directory)
        put(store, meta(1), data)
        path = store.path(1, 1)
        raw = path.read_bytes()
        path.write_bytes(raw[: int(where * len(raw))])
        with pytest.raises(SnapshotCorrupt):
            store.read(1, 1)
        assert store.latest() is None
