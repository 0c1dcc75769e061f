"""Raft commands of the ``system`` domain.

* ``AUTOPILOT``: ``{"Config": {...}, "CAS": bool}`` (Consul's ``AutopilotSetConfigRequest``;
  durations in nanoseconds, ``Config.ModifyIndex`` is the CAS index). Result: whether it wrote
  (always True without CAS).
* ``SYSTEM_METADATA``: ``{"Op": "upsert"|"delete", "Entries": [{"Key", "Value"}]}``.
* ``PROCONSUL_RESTORE``: ``{"State": <base64 of a state-store snapshot>, "Compression":
  "zlib"|""}`` replaces the whole state on every server (``PUT /v1/snapshot``); the old store
  is abandoned, which wakes every blocked query. A snapshot that does not decode raises and
  leaves the state untouched.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.state.system import AutopilotConfig

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = ["HANDLERS"]


def _malformed(what: str, exc: Exception | None = None) -> Exception:
    from server.fsm import UnknownCommandError

    return UnknownCommandError(f"malformed {what} command" + (f": {exc}" if exc else ""))


def _autopilot(fsm: ConsulFSM, index: int, body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("Config"), dict):
        raise _malformed("AUTOPILOT")
    try:
        config = AutopilotConfig.from_document(body["Config"])
    except (TypeError, ValueError) as exc:
        raise _malformed("AUTOPILOT", exc) from exc
    store = fsm.store
    with store.write_txn(index) as tx:
        if body.get("CAS"):
            return store.system.autopilot_cas_txn(tx, config.modify_index, config)
        store.system.autopilot_set_txn(tx, config)
        return True


def _system_metadata(fsm: ConsulFSM, index: int, body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("Entries") or [], list):
        raise _malformed("SYSTEM_METADATA")
    entries = body.get("Entries") or []
    op = body.get("Op")
    store = fsm.store
    try:
        pairs = {str(e["Key"]): str(e.get("Value", "")) for e in entries}
    except (KeyError, TypeError) as exc:
        raise _malformed("SYSTEM_METADATA", exc) from exc
    with store.write_txn(index) as tx:
        if op == "upsert":
            store.system.metadata_set_txn(tx, pairs)
        elif op == "delete":
            store.system.metadata_delete_txn(tx, list(pairs))
        else:
            raise _malformed("SYSTEM_METADATA")
    return True


def _restore(fsm: ConsulFSM, index: int, body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("State"), str):
        raise _malformed("PROCONSUL_RESTORE")
    try:
        data = base64.b64decode(body["State"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed("PROCONSUL_RESTORE", exc) from exc
    compression = body.get("Compression") or ""
    if compression == "zlib":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise _malformed("PROCONSUL_RESTORE", exc) from exc
    elif compression:
        raise _malformed("PROCONSUL_RESTORE", ValueError(f"unknown compression {compression!r}"))
    if not data:
        raise _malformed("PROCONSUL_RESTORE")
    # StateStore.restore raises StateError for a bad snapshot before anything is replaced;
    # every server gets the same bytes, so every server fails (or succeeds) alike.
    fsm.restore(data)
    return True


HANDLERS: dict[MessageType, Handler] = {
    MessageType.AUTOPILOT: _autopilot,
    MessageType.SYSTEM_METADATA: _system_metadata,
    MessageType.PROCONSUL_RESTORE: _restore,
}
