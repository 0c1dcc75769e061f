"""The server's Raft state machine: commands, their encoding, and ``ConsulFSM``.

A command is one type byte (``MessageType``) followed by an orjson body. The type table is
append-only and uses Consul's numbers (``structs.MessageType``) where Consul has one, so that a
log written by one version is read the same way by the next: never renumber or reuse a value.

KVS bodies (``MessageType.KVS``) are ``{"Op": <op>, "DirEnt": {...}}`` with Consul's op names
(``set``, ``cas``, ``delete``, ``delete-cas``, ``delete-tree``, ``lock``, ``unlock``). The entry
carries ``Key``, ``Value`` (base64, ``null`` for nil), ``Flags``, ``Session``, ``LockIndex`` and
``ModifyIndex`` (the CAS index). Bodies are encoded with sorted keys, so the same command is the
same bytes.

Every KVS op returns a bool, as Consul's ``KVS.Apply`` does: ``set``, ``delete`` and
``delete-tree`` always True; ``cas``, ``delete-cas``, ``lock`` and ``unlock`` whether they took
effect. ``lock`` raises ``StateError`` for a missing or unknown session (sessions are not
exposed over HTTP yet, so every lock attempt fails that way for now); the error is the same on
every server, so it goes back to the proposer.

**Unknown command types raise ``UnknownCommandError``.** Applying a command this server does not
understand would make its state diverge from servers that do, so the server must stop applying
rather than skip it (Consul panics unless the type has its "ignore unknown" flag). It is a
``raft.node.FatalApplyError``: the Raft driver stops the node on it (other FSM errors go back to
the proposer).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from raft.node import FatalApplyError
from server.commands.types import MessageType
from server.state import DirEntry, StateStore

__all__ = [
    "KVS_OPS",
    "ConsulFSM",
    "MessageType",
    "UnknownCommandError",
    "decode_command",
    "decode_entry",
    "encode_command",
    "encode_entry",
    "encode_kvs",
]


KVS_OPS = frozenset({"set", "cas", "delete", "delete-cas", "delete-tree", "lock", "unlock"})


class UnknownCommandError(FatalApplyError):
    """A command this server cannot apply (unknown type, op or malformed body): fatal, see the
    module docstring."""


def encode_command(kind: MessageType, body: Any) -> bytes:
    return bytes((int(kind),)) + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def decode_command(data: bytes) -> tuple[MessageType, Any]:
    if not data:
        raise UnknownCommandError("empty command")
    try:
        kind = MessageType(data[0])
    except ValueError:
        raise UnknownCommandError(f"unknown command type {data[0]}") from None
    try:
        body = orjson.loads(data[1:])
    except orjson.JSONDecodeError as exc:
        raise UnknownCommandError(f"malformed {kind.name} command: {exc}") from exc
    return kind, body


def encode_entry(entry: DirEntry) -> dict[str, Any]:
    return {
        "Key": entry.key,
        "Value": None if entry.value is None else base64.b64encode(entry.value).decode(),
        "Flags": entry.flags,
        "Session": entry.session,
        "LockIndex": entry.lock_index,
        "ModifyIndex": entry.modify_index,
    }


def decode_entry(body: Any) -> DirEntry:
    if not isinstance(body, dict):
        raise UnknownCommandError("KVS command without a DirEnt object")
    try:
        value = body.get("Value")
        return DirEntry(
            key=str(body["Key"]),
            value=None if value is None else base64.b64decode(value, validate=True),
            flags=int(body.get("Flags", 0)),
            session=str(body.get("Session", "")),
            lock_index=int(body.get("LockIndex", 0)),
            modify_index=int(body.get("ModifyIndex", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownCommandError(f"malformed KVS entry: {exc}") from exc


def encode_kvs(op: str, entry: DirEntry) -> bytes:
    """A KVS command (``op`` is one of ``KVS_OPS``)."""
    if op not in KVS_OPS:
        raise ValueError(f"unknown KVS op {op!r}")
    return encode_command(MessageType.KVS, {"Op": op, "DirEnt": encode_entry(entry)})


_HANDLERS: dict[MessageType, Any] | None = None


def _handlers() -> dict[MessageType, Any]:
    """``server.commands.HANDLERS``, imported on first use (the command modules import this
    module, so it cannot be imported at the top)."""
    global _HANDLERS
    if _HANDLERS is None:
        from server.commands import HANDLERS

        _HANDLERS = dict(HANDLERS)
    return _HANDLERS


class ConsulFSM:
    """``raft.node.StateMachine`` over a ``StateStore``. Readers must always go through
    ``fsm.store``: ``restore`` replaces it (and abandons the old one, waking its watchers)."""

    def __init__(self, store: StateStore | None = None) -> None:
        self.store = store if store is not None else StateStore()

    @staticmethod
    def now() -> float:
        """The clock lock delays count in (monotonic seconds; not replicated state)."""
        return time.monotonic()

    def apply(self, index: int, command: bytes) -> Any:
        kind, body = decode_command(command)
        if kind == MessageType.KVS:
            return self._apply_kvs(index, body)
        handler = _handlers().get(kind)
        if handler is None:
            raise UnknownCommandError(
                f"command type {kind.name} ({int(kind)}) is not supported yet"
            )
        return handler(self, index, body)

    def _apply_kvs(self, index: int, body: Any) -> bool:
        if not isinstance(body, dict):
            raise UnknownCommandError("KVS command body is not an object")
        op = body.get("Op")
        entry = decode_entry(body.get("DirEnt"))
        store = self.store
        if op == "set":
            store.kvs_set(index, entry)
            return True
        if op == "cas":
            return store.kvs_set_cas(index, entry)
        if op == "delete":
            store.kvs_delete(index, entry.key)
            return True
        if op == "delete-cas":
            return store.kvs_delete_cas(index, entry.modify_index, entry.key)
        if op == "delete-tree":
            store.kvs_delete_tree(index, entry.key)
            return True
        if op == "lock":
            return store.kvs_lock(index, entry)
        if op == "unlock":
            return store.kvs_unlock(index, entry)
        raise UnknownCommandError(f"unknown KVS op {op!r}")

    def snapshot(self) -> bytes:
        return self.store.snapshot()

    def restore(self, data: bytes) -> None:
        # An empty snapshot is a fresh state (what the placeholder FSM used to write).
        new = StateStore.restore(data) if data else StateStore()
        old, self.store = self.store, new
        old.abandon()
