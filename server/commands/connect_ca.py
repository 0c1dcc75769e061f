"""Raft commands of the Connect CA (Consul's ``ConnectCARequestType`` and
``ConnectCAConfigType``).

* ``CONNECT_CA_CONFIG``: ``{"Op": "set" | "cas", "Config": {...}, "ClusterID": "...",
  "Index": <cas index>}`` -> bool (Consul's ``CASetConfig``/``CACheckAndSetConfig``).
* ``CONNECT_CA``: ``{"Op": "set-roots" | "set-roots-config", "Index": <roots index or 0>,
  "Roots": [...], "Config": {...}, "ClusterID": "..."}`` -> bool: the roots (CAS on the roots
  index when ``Index`` is not 0) and, for ``set-roots-config``, the configuration, in one write
  (Consul's ``CARootSetCAS`` and ``CASetRootsAndConfig``). The leader builds the root (key generation is
  random) before proposing, so applying is deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = ["HANDLERS"]


class CACommandError(ValueError):
    pass


def _body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise CACommandError("Connect CA command body is not an object")
    return body


def apply_ca_config(fsm: ConsulFSM, index: int, body: Any) -> bool:
    body = _body(body)
    op = body.get("Op")
    config = body.get("Config")
    if not isinstance(config, dict):
        raise CACommandError("Connect CA config command without a Config")
    store = fsm.store
    with store.write_txn(index) as tx:
        if op == "set":
            return store.connect_ca.set_config_txn(tx, config, str(body.get("ClusterID", "")))
        if op == "cas":
            return store.connect_ca.set_config_txn(
                tx, config, str(body.get("ClusterID", "")), int(body.get("Index", 0))
            )
        raise CACommandError(f"Invalid CA config operation {op!r}")


def apply_ca(fsm: ConsulFSM, index: int, body: Any) -> bool:
    body = _body(body)
    op = body.get("Op")
    if op not in ("set-roots", "set-roots-config"):
        raise CACommandError(f"Invalid CA operation {op!r}")
    roots = body.get("Roots")
    if not isinstance(roots, list):
        raise CACommandError("Connect CA command without Roots")
    store = fsm.store
    with store.write_txn(index) as tx:
        if not store.connect_ca.set_roots_txn(tx, roots, int(body.get("Index", 0))):
            return False
        config = body.get("Config")
        if op == "set-roots-config":
            if not isinstance(config, dict):
                raise CACommandError("set-roots-config without a Config")
            store.connect_ca.set_config_txn(tx, config, str(body.get("ClusterID", "")))
    return True


HANDLERS: dict[MessageType, Handler] = {
    MessageType.CONNECT_CA_CONFIG: apply_ca_config,
    MessageType.CONNECT_CA: apply_ca,
}
