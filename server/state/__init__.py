"""The server's state store: in-memory tables with Consul's index, watch and tombstone rules.

    >>> store = StateStore()
    >>> store.kvs_set(5, DirEntry("web/config", b"on"))
    DirEntry(key='web/config', value=b'on', flags=0, session='', lock_index=0, create_index=5, modify_index=5)
    >>> ws = WatchSet()
    >>> store.kvs_get(ws, "web/config")[0]
    5
    >>> _ = store.kvs_delete(6, "web/config")
    >>> ws.fired, store.kvs_list(None, "web/")[0]
    (True, 6)

Modules: ``store`` (``StateStore``, ``WriteTxn``, the index table, snapshots), ``kvs`` (KV
entries, CAS, locks, lock delays), ``sessions`` (sessions, Consul's session validation, Go
durations), ``graveyard`` (tombstones, the sorted key index) and ``watch`` (watch channels and
sets). Each module's docstring states the Consul rules it implements.
"""

from __future__ import annotations

from server.state.graveyard import TABLE_TOMBSTONES, SortedKeys, Tombstone
from server.state.kvs import MAX_LOCK_DELAY_NS, TABLE_KVS, DirEntry, LockDelay, StateError
from server.state.sessions import (
    BEHAVIOR_DELETE,
    BEHAVIOR_RELEASE,
    DEFAULT_LOCK_DELAY_NS,
    SESSION_TTL_MAX_NS,
    SESSION_TTL_MIN_NS,
    SESSION_TTL_MULTIPLIER,
    TABLE_SESSIONS,
    ServiceCheck,
    Session,
    format_duration,
    parse_duration,
    validate_session_request,
)
from server.state.store import StateStore, WriteTxn
from server.state.watch import ChannelMap, PrefixChannelMap, WatchChannel, WatchSet

__all__ = [
    "BEHAVIOR_DELETE",
    "BEHAVIOR_RELEASE",
    "DEFAULT_LOCK_DELAY_NS",
    "MAX_LOCK_DELAY_NS",
    "SESSION_TTL_MAX_NS",
    "SESSION_TTL_MIN_NS",
    "SESSION_TTL_MULTIPLIER",
    "TABLE_KVS",
    "TABLE_SESSIONS",
    "TABLE_TOMBSTONES",
    "ChannelMap",
    "DirEntry",
    "LockDelay",
    "PrefixChannelMap",
    "ServiceCheck",
    "Session",
    "SortedKeys",
    "StateError",
    "StateStore",
    "Tombstone",
    "WatchChannel",
    "WatchSet",
    "WriteTxn",
    "format_duration",
    "parse_duration",
    "validate_session_request",
]
