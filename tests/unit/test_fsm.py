"""ConsulFSM: command encoding, KVS ops, snapshot/restore, unknown commands."""

from __future__ import annotations

import orjson
import pytest

from server.fsm import (
    ConsulFSM,
    MessageType,
    UnknownCommandError,
    decode_command,
    encode_command,
    encode_kvs,
)
from server.state import DirEntry, StateError, WatchSet


def test_message_type_numbers_follow_consul() -> None:
    assert MessageType.REGISTER == 0
    assert MessageType.DEREGISTER == 1
    assert MessageType.KVS == 2
    assert MessageType.SESSION == 3


def test_encoding_is_type_byte_plus_sorted_json() -> None:
    data = encode_kvs("set", DirEntry("a", b"\x00v", 7))
    assert data[0] == MessageType.KVS
    body = orjson.loads(data[1:])
    assert body == {
        "Op": "set",
        "DirEnt": {
            "Key": "a",
            "Value": "AHY=",
            "Flags": 7,
            "Session": "",
            "LockIndex": 0,
            "ModifyIndex": 0,
        },
    }
    assert data == encode_kvs("set", DirEntry("a", b"\x00v", 7))
    assert decode_command(data) == (MessageType.KVS, body)
    with pytest.raises(ValueError):
        encode_kvs("frobnicate", DirEntry("a"))


def test_kvs_ops() -> None:
    fsm = ConsulFSM()
    assert fsm.apply(2, encode_kvs("set", DirEntry("a/1", b"one", 3))) is True
    assert fsm.apply(3, encode_kvs("set", DirEntry("a/2", None))) is True
    index, entry = fsm.store.kvs_get(None, "a/1")
    assert index == 2
    assert entry == DirEntry("a/1", b"one", 3, create_index=2, modify_index=2)
    assert fsm.store.kvs_get(None, "a/2")[1] == DirEntry("a/2", None, 0, "", 0, 3, 3)

    # cas: wrong index fails, right index wins, 0 means "only if absent"
    assert fsm.apply(4, encode_kvs("cas", DirEntry("a/1", b"x", modify_index=3))) is False
    assert fsm.apply(5, encode_kvs("cas", DirEntry("a/1", b"two", modify_index=2))) is True
    assert fsm.store.kvs_get(None, "a/1")[1] == DirEntry("a/1", b"two", 0, "", 0, 2, 5)
    assert fsm.apply(6, encode_kvs("cas", DirEntry("a/1", b"x", modify_index=0))) is False
    assert fsm.apply(7, encode_kvs("cas", DirEntry("b", b"new", modify_index=0))) is True

    # delete-cas, delete, delete-tree
    assert fsm.apply(8, encode_kvs("delete-cas", DirEntry("b", modify_index=1))) is False
    assert fsm.apply(9, encode_kvs("delete-cas", DirEntry("b", modify_index=7))) is True
    assert fsm.store.kvs_get(None, "b")[1] is None
    assert fsm.apply(10, encode_kvs("delete", DirEntry("a/2"))) is True
    assert fsm.apply(11, encode_kvs("delete", DirEntry("nope"))) is True
    assert fsm.apply(12, encode_kvs("set", DirEntry("a/3", b"3"))) is True
    assert fsm.apply(13, encode_kvs("delete-tree", DirEntry("a/"))) is True
    assert fsm.store.kvs_list(None, "")[1] == []
    assert fsm.store.kvs_list(None, "a/")[0] == 13


def test_lock_without_session_is_refused() -> None:
    fsm = ConsulFSM()
    with pytest.raises(StateError):
        fsm.apply(2, encode_kvs("lock", DirEntry("k", b"v", session="no-such-session")))
    assert fsm.apply(3, encode_kvs("unlock", DirEntry("k", b"v", session="x"))) is False


def test_unknown_commands_raise() -> None:
    fsm = ConsulFSM()
    with pytest.raises(UnknownCommandError, match="unknown command type 250"):
        fsm.apply(2, bytes([250]) + b"{}")
    with pytest.raises(UnknownCommandError):
        fsm.apply(2, b"")
    with pytest.raises(UnknownCommandError, match="not supported"):
        fsm.apply(2, encode_command(MessageType.AREA, {"Op": "create"}))
    with pytest.raises(UnknownCommandError, match="unknown KVS op"):
        fsm.apply(2, encode_command(MessageType.KVS, {"Op": "zap", "DirEnt": {"Key": "a"}}))
    with pytest.raises(UnknownCommandError):
        fsm.apply(2, bytes([MessageType.KVS]) + b"not json")
    with pytest.raises(UnknownCommandError):
        fsm.apply(2, encode_command(MessageType.KVS, {"Op": "set", "DirEnt": {"Value": "x"}}))
    assert fsm.store.kvs_list(None, "")[1] == []


def test_snapshot_restore_round_trip_and_abandon() -> None:
    fsm = ConsulFSM()
    fsm.apply(2, encode_kvs("set", DirEntry("x", b"1", 9)))
    fsm.apply(3, encode_kvs("set", DirEntry("y", b"2")))
    fsm.apply(4, encode_kvs("delete", DirEntry("y")))
    blob = fsm.snapshot()

    other = ConsulFSM()
    other.apply(2, encode_kvs("set", DirEntry("junk", b"!")))
    old = other.store
    ws = WatchSet()
    old.kvs_get(ws, "junk")
    ws.add(old.abandon_channel)
    other.restore(blob)
    assert old.abandoned and ws.fired
    assert other.store is not old
    assert other.snapshot() == blob
    assert other.store.kvs_get(None, "x")[1] == DirEntry("x", b"1", 9, "", 0, 2, 2)
    assert other.store.kvs_get(None, "junk")[1] is None
    assert other.store.kvs_list(None, "y")[0] == 4  # the tombstone came along
    # the restored store keeps applying
    assert other.apply(5, encode_kvs("set", DirEntry("z", b"3"))) is True

    # an empty snapshot is an empty state
    other.restore(b"")
    assert other.store.kvs_list(None, "")[1] == []
