"""The ``system`` table (Autopilot configuration, system metadata), the ``coordinates`` table,
their Raft commands and the restore command; plus the pure helpers of the event and snapshot
endpoints (event index from a UUID, snapshot archives)."""

from __future__ import annotations

import base64
import gzip
import io
import math
import tarfile
import zlib
from typing import Any

import pytest

from server.commands.types import MessageType
from server.endpoints.event import UserEventMessage, uuid_to_uint64, validate_event
from server.endpoints.http import HTTPError
from server.endpoints.operator import autopilot_config_from_agent
from server.endpoints.snapshot import build_archive, read_archive
from server.fsm import ConsulFSM, UnknownCommandError, encode_command
from server.state import DirEntry, StateError, StateStore, WatchSet
from server.state.coordinates import Coord, CoordinateEntry, origin_coord
from server.state.system import TABLE_AUTOPILOT, AutopilotConfig


def _register(fsm: ConsulFSM, index: int, node: str) -> None:
    store = fsm.store
    with store.write_txn(index) as tx:
        store.catalog.register_txn(tx, {"Node": node, "Address": "127.0.0.1"})


def _coord(error: float = 1.5, vec: tuple[float, ...] = (0.0,) * 8) -> dict[str, object]:
    return {"Vec": list(vec), "Error": error, "Adjustment": 0.0, "Height": 1e-5}


# --- autopilot configuration ----------------------------------------------------------------


def test_autopilot_defaults_are_consuls() -> None:
    config = AutopilotConfig()
    assert config.cleanup_dead_servers is True
    assert config.last_contact_threshold == 200_000_000
    assert config.max_trailing_logs == 250
    assert config.min_quorum == 0
    assert config.server_stabilization_time == 10_000_000_000
    assert (config.redundancy_zone_tag, config.upgrade_version_tag) == ("", "")
    assert config.disable_upgrade_migration is False


def test_autopilot_set_keeps_create_index_and_moves_modify_index() -> None:
    store = StateStore()
    assert store.system.autopilot_config(None) == (1, None)
    with store.write_txn(5) as tx:
        first = store.system.autopilot_set_txn(tx, AutopilotConfig())
    assert (first.create_index, first.modify_index) == (5, 5)
    with store.write_txn(9) as tx:
        second = store.system.autopilot_set_txn(tx, AutopilotConfig(min_quorum=3))
    assert (second.create_index, second.modify_index, second.min_quorum) == (5, 9, 3)
    assert store.system.autopilot_config(None) == (9, second)
    assert store.max_index(TABLE_AUTOPILOT) == 9
    store.check_invariants()


def test_autopilot_cas_writes_only_on_the_current_modify_index() -> None:
    fsm = ConsulFSM()
    body = {"Config": AutopilotConfig().to_document(), "CAS": True}
    assert fsm.apply(4, encode_command(MessageType.AUTOPILOT, body)) is True  # no row: writes
    stale = AutopilotConfig(cleanup_dead_servers=False, modify_index=1004).to_document()
    assert (
        fsm.apply(6, encode_command(MessageType.AUTOPILOT, {"Config": stale, "CAS": True})) is False
    )
    _, config = fsm.store.system.autopilot_config(None)
    assert config is not None and config.cleanup_dead_servers and config.modify_index == 4
    good = AutopilotConfig(cleanup_dead_servers=False, modify_index=4).to_document()
    assert fsm.apply(7, encode_command(MessageType.AUTOPILOT, {"Config": good, "CAS": True}))
    _, config = fsm.store.system.autopilot_config(None)
    assert config is not None and not config.cleanup_dead_servers
    assert (config.create_index, config.modify_index) == (4, 7)
    # Without CAS the write is unconditional and answers True.
    plain = AutopilotConfig(modify_index=12345).to_document()
    assert fsm.apply(8, encode_command(MessageType.AUTOPILOT, {"Config": plain, "CAS": False}))
    assert fsm.store.system.autopilot_config(None)[1].modify_index == 8  # type: ignore[union-attr]


def test_autopilot_write_wakes_watchers_and_malformed_commands_are_fatal() -> None:
    fsm = ConsulFSM()
    ws = WatchSet()
    fsm.store.system.autopilot_config(ws)
    fsm.apply(3, encode_command(MessageType.AUTOPILOT, {"Config": {}, "CAS": False}))
    assert ws.fired
    with pytest.raises(UnknownCommandError):
        fsm.apply(4, encode_command(MessageType.AUTOPILOT, {"Config": {"MinQuorum": "x"}}))
    with pytest.raises(UnknownCommandError):
        fsm.apply(4, encode_command(MessageType.AUTOPILOT, []))


def test_autopilot_config_from_the_agent_block() -> None:
    config = autopilot_config_from_agent(
        {"last_contact_threshold": "1s", "max_trailing_logs": 10, "cleanup_dead_servers": False}
    )
    assert config.last_contact_threshold == 1_000_000_000
    assert config.max_trailing_logs == 10
    assert config.cleanup_dead_servers is False
    assert config.server_stabilization_time == 10_000_000_000


def test_system_metadata_upsert_delete_and_abort() -> None:
    fsm = ConsulFSM()
    upsert = {"Op": "upsert", "Entries": [{"Key": "a", "Value": "1"}, {"Key": "b"}]}
    assert fsm.apply(3, encode_command(MessageType.SYSTEM_METADATA, upsert))
    assert fsm.store.system.metadata(None) == (3, {"a": "1", "b": ""})
    assert fsm.store.system.metadata(None, "a") == (3, {"a": "1"})
    delete = {"Op": "delete", "Entries": [{"Key": "a"}]}
    fsm.apply(4, encode_command(MessageType.SYSTEM_METADATA, delete))
    assert fsm.store.system.metadata(None) == (4, {"b": ""})
    store = fsm.store
    with pytest.raises(RuntimeError), store.write_txn(5) as tx:
        store.system.metadata_set_txn(tx, {"b": "changed", "c": "new"})
        raise RuntimeError("abort")
    assert store.system.metadata(None) == (4, {"b": ""})


def test_system_table_snapshot_round_trip() -> None:
    fsm = ConsulFSM()
    fsm.apply(3, encode_command(MessageType.AUTOPILOT, {"Config": {"MinQuorum": 2}}))
    fsm.apply(
        4,
        encode_command(
            MessageType.SYSTEM_METADATA, {"Op": "upsert", "Entries": [{"Key": "k", "Value": "v"}]}
        ),
    )
    blob = fsm.snapshot()
    restored = StateStore.restore(blob)
    assert restored.system.autopilot_config(None) == fsm.store.system.autopilot_config(None)
    assert restored.system.metadata(None) == (4, {"k": "v"})
    assert restored.snapshot() == blob
    restored.check_invariants()


# --- coordinates ----------------------------------------------------------------------------


def test_coordinate_batch_update_skips_unknown_nodes_and_invalid_coordinates() -> None:
    fsm = ConsulFSM()
    _register(fsm, 2, "node1")
    batch = [
        {"Node": "node1", "Segment": "", "Coord": _coord(0.5)},
        {"Node": "ghost", "Segment": "", "Coord": _coord()},
    ]
    assert fsm.apply(5, encode_command(MessageType.COORDINATE_BATCH_UPDATE, batch)) == 1
    index, rows = fsm.store.coordinates.list_all(None)
    assert index == 5
    assert [r.to_api() for r in rows] == [{"Node": "node1", "Segment": "", "Coord": _coord(0.5)}]
    # A batch that stores nothing still moves the table index, as Consul's does.
    fsm.apply(6, encode_command(MessageType.COORDINATE_BATCH_UPDATE, batch[1:]))
    assert fsm.store.coordinates.list_all(None)[0] == 6
    # Non-finite values (JSON cannot carry them; the table still refuses them).
    store = fsm.store
    bad = CoordinateEntry("node1", "alpha", Coord((math.inf,) + (0.0,) * 7, 1.5, 0.0, 0.0))
    with store.write_txn(7) as tx:
        assert store.coordinates.batch_update_txn(tx, [bad], store.catalog.node_exists) == 0
    assert len(store.coordinates.list_all(None)[1]) == 1
    store.check_invariants()


def test_coordinate_node_reads_are_case_insensitive_and_watched() -> None:
    fsm = ConsulFSM()
    _register(fsm, 2, "Node1")
    _register(fsm, 3, "node2")
    ws = WatchSet()
    assert fsm.store.coordinates.node(ws, "node1") == (1, [])
    other = WatchSet()
    fsm.store.coordinates.node(other, "node2")
    update = [{"Node": "Node1", "Segment": "", "Coord": _coord(1.0)}]
    fsm.apply(4, encode_command(MessageType.COORDINATE_BATCH_UPDATE, update))
    assert ws.fired and not other.fired
    index, rows = fsm.store.coordinates.node(None, "NODE1")
    assert index == 4 and [r.node for r in rows] == ["Node1"]
    # Same node, another update: one row, replaced.
    update[0]["Coord"] = _coord(0.25)
    fsm.apply(5, encode_command(MessageType.COORDINATE_BATCH_UPDATE, update))
    _, rows = fsm.store.coordinates.node(None, "node1")
    assert len(rows) == 1 and rows[0].coord.error == 0.25


def test_coordinate_delete_node_and_snapshot_round_trip() -> None:
    fsm = ConsulFSM()
    _register(fsm, 2, "a")
    _register(fsm, 3, "b")
    batch = [
        {"Node": "a", "Segment": "", "Coord": _coord(0.1)},
        {"Node": "b", "Segment": "", "Coord": _coord(0.2)},
    ]
    fsm.apply(4, encode_command(MessageType.COORDINATE_BATCH_UPDATE, batch))
    blob = fsm.snapshot()
    restored = StateStore.restore(blob)
    assert restored.coordinates.list_all(None) == fsm.store.coordinates.list_all(None)
    assert restored.snapshot() == blob
    store = fsm.store
    with store.write_txn(5) as tx:
        assert store.coordinates.delete_node_txn(tx, "A") == 1
    assert [r.node for r in store.coordinates.list_all(None)[1]] == ["b"]
    with pytest.raises(RuntimeError), store.write_txn(6) as tx:
        store.coordinates.delete_node_txn(tx, "b")
        raise RuntimeError("abort")
    assert [r.node for r in store.coordinates.list_all(None)[1]] == ["b"]


def test_coordinate_validity_and_compatibility() -> None:
    assert origin_coord().is_valid() and origin_coord().is_compatible()
    assert not Coord((math.nan,) * 8, 1.5, 0.0, 0.0).is_valid()
    assert not Coord((0.0,) * 3, 1.5, 0.0, 0.0).is_compatible()
    with pytest.raises(TypeError):
        Coord.from_api({"Vec": ["x"], "Error": 1})
    entry = CoordinateEntry("n", "", Coord.from_api(_coord()))
    assert entry.to_api()["Coord"] == _coord()


def test_malformed_coordinate_command_is_fatal() -> None:
    with pytest.raises(UnknownCommandError):
        ConsulFSM().apply(3, encode_command(MessageType.COORDINATE_BATCH_UPDATE, {"x": 1}))


# --- restore command ------------------------------------------------------------------------


def test_restore_command_replaces_the_state_and_wakes_watchers() -> None:
    fsm = ConsulFSM()
    fsm.store.kvs_set(3, DirEntry("k", b"before"))
    saved = fsm.snapshot()
    fsm.store.kvs_set(4, DirEntry("k", b"after"))
    fsm.store.kvs_set(5, DirEntry("other", b"x"))
    ws = WatchSet()
    fsm.store.kvs_get(ws, "k")
    old = fsm.store
    body = {"State": base64.b64encode(saved).decode()}
    assert fsm.apply(6, encode_command(MessageType.PROCONSUL_RESTORE, body)) is True
    assert ws.fired and old.abandoned
    assert fsm.store.kvs_get(None, "k")[1].value == b"before"  # type: ignore[union-attr]
    assert fsm.store.kvs_get(None, "other")[1] is None
    # The compressed form the endpoint sends.
    fsm.store.kvs_set(7, DirEntry("k", b"again"))
    packed = {"State": base64.b64encode(zlib.compress(saved)).decode(), "Compression": "zlib"}
    fsm.apply(8, encode_command(MessageType.PROCONSUL_RESTORE, packed))
    assert fsm.store.kvs_get(None, "k")[1].value == b"before"  # type: ignore[union-attr]


def test_restore_command_with_a_bad_state_leaves_the_store_alone() -> None:
    fsm = ConsulFSM()
    fsm.store.kvs_set(3, DirEntry("k", b"v"))
    store = fsm.store
    bad = {"State": base64.b64encode(b"not a snapshot").decode()}
    with pytest.raises(StateError):
        fsm.apply(4, encode_command(MessageType.PROCONSUL_RESTORE, bad))
    assert fsm.store is store and not store.abandoned
    for body in (
        {"State": ""},
        {"State": "!!"},
        {},
        {"State": "AAAA", "Compression": "zlib"},
        {"State": "AAAA", "Compression": "lz4"},
    ):
        with pytest.raises(UnknownCommandError):
            fsm.apply(5, encode_command(MessageType.PROCONSUL_RESTORE, body))
    assert fsm.store is store


# --- snapshot archives ----------------------------------------------------------------------


def test_snapshot_archive_round_trip() -> None:
    archive = build_archive({"Index": 7, "Term": 2}, b"state-bytes", mtime=0)
    assert archive[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        assert tar.getnames() == ["meta.json", "state.bin", "SHA256SUMS"]
    meta, state = read_archive(archive)
    assert meta == {"Index": 7, "Term": 2} and state == b"state-bytes"


def _tamper(archive: bytes, name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as src,
        tarfile.open(fileobj=out, mode="w") as dst,
    ):
        for member in src:
            content = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == name:
                content = data
                member.size = len(data)
            dst.addfile(member, io.BytesIO(content))
    return gzip.compress(out.getvalue())


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda a: b"garbage", "failed to decompress"),
        (lambda a: gzip.compress(b"not a tar"), "failed to read snapshot archive"),
        (lambda a: _tamper(a, "state.bin", b"other-bytes"), "state.bin checksum mismatch"),
        (lambda a: _tamper(a, "SHA256SUMS", b""), "no checksum for meta.json"),
    ],
)
def test_bad_snapshot_archives_are_refused(mangle: object, reason: str) -> None:
    archive = build_archive({"Index": 1}, b"state", mtime=0)
    with pytest.raises(ValueError, match=reason):
        read_archive(mangle(archive))  # type: ignore[operator]


# --- events ---------------------------------------------------------------------------------


def test_event_index_is_consuls_uuid_xor() -> None:
    event_id = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c"
    assert uuid_to_uint64(event_id) == 0xB54FE1107AF5CAFC ^ 0xD1FBAFC8BA432B1C


def test_user_event_encoding_round_trip_and_validation() -> None:
    event = UserEventMessage("b54fe110-7af5-cafc-d1fb-afc8ba432b1c", "deploy", b"\x00payload")
    decoded = UserEventMessage.decode(event.encode(), ltime=19)
    assert decoded.to_api() == {**event.to_api(), "LTime": 19}
    assert event.to_api()["Payload"] == base64.b64encode(b"\x00payload").decode()
    assert UserEventMessage("x", "n").to_api()["Payload"] is None
    for bad in (
        b"",
        b"{}",
        event.encode()[:-1],
        event.encode() + b"x",
        b"\x02" + event.encode()[1:],
    ):
        with pytest.raises(ValueError):
            UserEventMessage.decode(bad, 1)
    empty = UserEventMessage("b54fe110-7af5-cafc-d1fb-afc8ba432b1c", "n", b"", node_filter="x")
    assert UserEventMessage.decode(empty.encode(), 2).to_api() == {**empty.to_api(), "LTime": 2}
    # Compact on the wire: serf allows 512 bytes of name and payload per user event.
    assert len(event.encode()) < 36 + len("deploy") + len(b"\x00payload") + 20
    with pytest.raises(HTTPError, match="Cannot provide tag filter without service filter"):
        validate_event(UserEventMessage("x", "n", tag_filter="t"))
    with pytest.raises(HTTPError, match="Invalid node filter"):
        validate_event(UserEventMessage("x", "n", node_filter="("))


# --- autopilot health from the Raft view ----------------------------------------------------


class _StubRaft:
    """What the operator endpoints read from a RaftNode: the leader's view of 3 voters."""

    def __init__(self, followers: dict[str, dict[str, object]]) -> None:
        from raft.core.types import Membership, Server

        self.id = "id-1"
        self.leader_id = "id-1"
        self.is_leader = True
        self.term = 4
        self.membership = Membership(
            (
                Server("id-1", "10.0.0.1:8300"),
                Server("id-2", "10.0.0.2:8300"),
                Server("id-3", "10.0.0.3:8300"),
            )
        )
        self._followers = followers

    def stats(self) -> dict[str, object]:
        return {"last_log_index": 1000, "followers": self._followers}


def _health(
    followers: dict[str, dict[str, object]], serf: dict[str, str] | None = None
) -> dict[str, Any]:
    from server.config.runtime import RuntimeConfig
    from server.endpoints.context import ServerContext
    from server.endpoints.operator import _RaftView

    ctx = ServerContext(RuntimeConfig(node_name="n1"), ConsulFSM(), _StubRaft(followers))  # type: ignore[arg-type]
    return _RaftView(ctx).health(AutopilotConfig(), serf)


def test_autopilot_health_judges_followers_by_contact_and_trailing_logs() -> None:
    fresh = {"match": 1000, "last_contact_s": 0.05}
    health = _health({"id-2": fresh, "id-3": fresh})
    assert health["Healthy"] is True and health["FailureTolerance"] == 1
    assert [s["Name"] for s in health["Servers"]] == ["n1", "id-2", "id-3"]
    assert [s["Leader"] for s in health["Servers"]] == [True, False, False]
    assert health["Servers"][1]["LastContact"] == "50ms"
    # Too far behind (more than MaxTrailingLogs=250), or silent for longer than 200ms.
    health = _health(
        {
            "id-2": {"match": 700, "last_contact_s": 0.05},
            "id-3": {"match": 1000, "last_contact_s": 0.5},
        }
    )
    assert health["Healthy"] is False and health["FailureTolerance"] == 0
    assert [s["Healthy"] for s in health["Servers"]] == [True, False, False]
    # Never contacted, or not alive in serf.
    health = _health(
        {"id-2": {"match": 0, "last_contact_s": None}, "id-3": fresh}, {"id-3": "failed"}
    )
    assert [s["Healthy"] for s in health["Servers"]] == [True, False, False]
    assert health["Servers"][2]["SerfStatus"] == "failed"
