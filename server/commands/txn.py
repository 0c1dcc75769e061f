"""Raft commands of the ``txn`` domain: ``MessageType.TXN`` (Consul's ``structs.TxnRequest``),
and the KV verbs shared with read-only transactions (Consul's ``state/txn.go``).

Body: ``{"Ops": [op, ...]}`` where an op is one of

* ``{"KV": {"Verb": <verb>, "DirEnt": <entry as in KVS commands>}}`` (the CAS / check index
  travels as ``DirEnt.ModifyIndex``, as in Consul);
* ``{"Node": {"Verb": <verb>, "Node": <api.Node: ID, Node, Address, Datacenter,
  TaggedAddresses, Meta, ModifyIndex>}}``;
* ``{"Service": {"Verb": <verb>, "Service": {"Node": <node>, "Service": <NodeService with
  ModifyIndex>}}}``;
* ``{"Check": {"Verb": <verb>, "Check": <HealthCheck with ModifyIndex>}}``

(catalog objects already normalised by the endpoint, see ``server.commands.catalog``).

Semantics, as Consul's ``TxnRW``:

* every operation runs inside ONE write transaction, in order, and sees the writes of the ones
  before it;
* an operation that fails does not stop the others: every failure is collected as
  ``{"OpIndex": i, "What": <error text>}``; if there is any, the whole transaction is rolled
  back and the answer is ``{"Results": None, "Errors": [...]}``;
* otherwise ``{"Results": [{"KV": <entry>}, {"Node": ...}, ...], "Errors": None}``: ``get`` and
  ``get-or-empty`` give the entry with its value, ``get-tree`` one result per entry, the other
  KV verbs that touch an entry give it without its value (``Value: null``), deletes and
  ``check-not-exists`` give nothing; node/service/check ``get``, ``set`` and ``cas`` give the
  stored object (a service as a ``NodeService``), their deletes nothing.

Catalog verbs are ``get``, ``set``, ``cas`` (ModifyIndex 0: only if absent, else it must match),
``delete`` and ``delete-cas`` (the object must exist with that ModifyIndex), with Consul's texts
(``failed to set node "n", index is stale``, ``service "s" on node "n" doesn't exist``,
``unknown Check verb "x"``...). Deleting a node, service or check destroys the sessions that
depend on it, as a deregistration does.

Lock delays are checked by the endpoint before proposing (as Consul's ``Txn.Apply`` does on the
leader), never here: they are per-server wall-clock state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.filter.strconv import go_quote
from server.state import DirEntry, StateError, StateStore, WriteTxn
from server.state.catalog import Node, check_from_api, node_from_request, service_from_api

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = [
    "HANDLERS",
    "KV_READ_VERBS",
    "KV_VERBS",
    "KV_WRITE_VERBS",
    "TxnOp",
    "apply_txn",
    "encode_op",
    "is_write",
    "kv_op",
    "run_ops",
    "txn_result",
]

#: Consul's ``isWrite``: the verbs that make a transaction go through Raft.
KV_WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"})
KV_READ_VERBS = frozenset(
    {"get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists"}
)
KV_VERBS = KV_WRITE_VERBS | KV_READ_VERBS


def _stripped(entry: DirEntry) -> DirEntry:
    return entry._replace(value=None)


def kv_op(store: StateStore, tx: WriteTxn | None, verb: str, entry: DirEntry) -> list[DirEntry]:
    """One KV operation of a transaction (``tx`` is None in a read-only transaction, which
    holds no write verb). Returns its result entries; raises ``StateError`` with Consul's text
    when it fails."""
    key = entry.key
    if verb in KV_WRITE_VERBS:
        if tx is None:  # the endpoint routes every write verb through Raft
            raise StateError(f"unknown KV verb {go_quote(verb)}")
        if verb == "set":
            return [_stripped(store.kvs_set_txn(tx, entry))]
        if verb == "delete":
            store.kvs_delete_txn(tx, key)
            return []
        if verb == "delete-cas":
            if not store.kvs_delete_cas_txn(tx, entry.modify_index, key):
                raise StateError(f"failed to delete key {go_quote(key)}, index is stale")
            return []
        if verb == "delete-tree":
            store.kvs_delete_tree_txn(tx, key)
            return []
        if verb == "cas":
            if not store.kvs_set_cas_txn(tx, entry):
                raise StateError(f"failed to set key {go_quote(key)}, index is stale")
        elif verb == "lock":
            if not store.kvs_lock_txn(tx, entry):
                raise StateError(f"failed to lock key {go_quote(key)}, lock is already held")
        elif not store.kvs_unlock_txn(tx, entry):  # unlock
            raise StateError(
                f"failed to unlock key {go_quote(key)}, lock isn't held, "
                "or is held by another session"
            )
        row = store.kvs_get(None, key)[1]
        return [] if row is None else [_stripped(row)]
    if verb == "get":
        row = store.kvs_get(None, key)[1]
        if row is None:
            raise StateError(f"key {go_quote(key)} doesn't exist")
        return [row]
    if verb == "get-or-empty":
        row = store.kvs_get(None, key)[1]
        return [row if row is not None else entry._replace(value=None)]
    if verb == "get-tree":
        return store.kvs_list(None, key)[1]
    if verb == "check-session":
        return [_stripped(store.kvs_check_session(key, entry.session))]
    if verb == "check-index":
        return [_stripped(store.kvs_check_index(key, entry.modify_index))]
    if verb == "check-not-exists":
        if store.kvs_get(None, key)[1] is not None:
            raise StateError(f"key {go_quote(key)} exists")
        return []
    raise StateError(f"unknown KV verb {go_quote(verb)}")


def _node_op(
    store: StateStore, tx: WriteTxn | None, verb: str, body: Mapping[str, Any], now: float | None
) -> list[dict[str, Any]]:
    """Consul's ``txnNode``: ``body`` is an ``api.Node`` object (canonical names)."""
    catalog = store.catalog
    name = str(body.get("Node") or "")
    node_id = str(body.get("ID") or "")

    def lookup() -> Node | None:
        if node_id:
            for row in catalog.list_nodes(None)[1]:
                if row.id.lower() == node_id.lower():
                    return row
            return None
        return catalog.node(name)

    if verb == "get":
        found = lookup()
        if found is None:
            raise StateError(f"node {go_quote(name)} doesn't exist")
        return [{"Node": found.to_api()}]
    if verb not in _CATALOG_WRITE_VERBS:
        raise StateError(f"unknown Node verb {go_quote(verb)}")
    if tx is None:
        raise StateError(f"unknown Node verb {go_quote(verb)}")
    cas = int(body.get("ModifyIndex") or 0)
    existing = catalog.node(name)
    if verb in ("delete", "delete-cas"):
        if verb == "delete-cas" and (existing is None or existing.modify_index != cas):
            raise StateError(f"failed to delete node {go_quote(name)}, index is stale")
        catalog.delete_node_txn(tx, name, now)
        return []
    if verb == "cas" and not _cas_ok(cas, None if existing is None else existing.modify_index):
        raise StateError(f"failed to set node {go_quote(name)}, index is stale")
    catalog.ensure_node_txn(tx, node_from_request({**body, "NodeMeta": body.get("Meta")}))
    found = lookup()
    return [] if found is None else [{"Node": found.to_api()}]


def _service_op(
    store: StateStore, tx: WriteTxn | None, verb: str, body: Mapping[str, Any], now: float | None
) -> list[dict[str, Any]]:
    """Consul's ``txnService``: ``body`` is ``{"Node": <name>, "Service": <NodeService>}``."""
    catalog = store.catalog
    node = str(body.get("Node") or "")
    service: Mapping[str, Any] = body.get("Service") or {}
    service_id = str(service.get("ID") or "")
    existing = catalog.node_service(node, service_id)
    if verb == "get":
        if existing is None:
            raise StateError(
                f"service {go_quote(service_id)} on node {go_quote(node)} doesn't exist"
            )
        return [{"Service": existing.to_node_service()}]
    if verb not in _CATALOG_WRITE_VERBS or tx is None:
        raise StateError(f"unknown Service verb {go_quote(verb)}")
    cas = int(service.get("ModifyIndex") or 0)
    if verb in ("delete", "delete-cas"):
        if verb == "delete-cas" and (existing is None or existing.modify_index != cas):
            raise StateError(
                f"failed to delete service {go_quote(service_id)} on node {go_quote(node)}, "
                "index is stale"
            )
        catalog.delete_service_txn(tx, node, service_id, now)
        return []
    if verb == "cas" and not _cas_ok(cas, None if existing is None else existing.modify_index):
        raise StateError(
            f"failed to set service {go_quote(service_id)} on node {go_quote(node)}, index is stale"
        )
    row = catalog.ensure_service_txn(tx, service_from_api(node, service))
    return [{"Service": row.to_node_service()}]


def _check_op(
    store: StateStore, tx: WriteTxn | None, verb: str, body: Mapping[str, Any], now: float | None
) -> list[dict[str, Any]]:
    """Consul's ``txnCheck``: ``body`` is a ``HealthCheck`` object (canonical names)."""
    catalog = store.catalog
    node = str(body.get("Node") or "")
    check_id = str(body.get("CheckID") or "")
    existing = catalog.node_check(node, check_id)
    if verb == "get":
        if existing is None:
            raise StateError(f"check {go_quote(check_id)} on node {go_quote(node)} doesn't exist")
        return [{"Check": existing.to_api()}]
    if verb not in _CATALOG_WRITE_VERBS or tx is None:
        raise StateError(f"unknown Check verb {go_quote(verb)}")
    cas = int(body.get("ModifyIndex") or 0)
    if verb in ("delete", "delete-cas"):
        if verb == "delete-cas" and (existing is None or existing.modify_index != cas):
            raise StateError(
                f"failed to delete check {go_quote(check_id)} on node {go_quote(node)}, "
                "index is stale"
            )
        catalog.delete_check_txn(tx, node, check_id, now)
        return []
    if verb == "cas" and not _cas_ok(cas, None if existing is None else existing.modify_index):
        raise StateError(
            f"failed to set check {go_quote(check_id)} on node {go_quote(node)}, index is stale"
        )
    row = catalog.ensure_check_txn(tx, check_from_api(body), now)
    return [{"Check": row.to_api()}]


def _cas_ok(cas: int, current: int | None) -> bool:
    """Consul's CAS rule for catalog objects: 0 means "only if absent", otherwise the object
    must exist with exactly that ModifyIndex."""
    if cas == 0:
        return current is None
    return current == cas


_CATALOG_WRITE_VERBS = frozenset({"set", "cas", "delete", "delete-cas"})
_CATALOG_OPS = {"Node": _node_op, "Service": _service_op, "Check": _check_op}

#: One operation: (kind, verb, payload) with kind ``KV`` (payload a ``DirEntry``), ``Node``,
#: ``Service`` or ``Check`` (payload the object as the command body carries it).
TxnOp = tuple[str, str, Any]


def is_write(op: TxnOp) -> bool:
    """Whether ``op`` changes the state (Consul routes such a transaction through Raft)."""
    kind, verb, _ = op
    if kind == "KV":
        return verb in KV_WRITE_VERBS
    return verb != "get"


def run_ops(
    store: StateStore,
    tx: WriteTxn | None,
    ops: Sequence[TxnOp | None],
    now: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every operation in order (``None`` names no kind); returns (results, errors) as
    Consul's ``txnDispatch``: results are ``{"KV": ...}``/``{"Node": ...}``/... objects."""
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        try:
            if op is None:
                raise StateError("no operation specified")
            kind, verb, payload = op
            if kind == "KV":
                results.extend({"KV": e.to_api()} for e in kv_op(store, tx, verb, payload))
            else:
                results.extend(_CATALOG_OPS[kind](store, tx, verb, payload, now))
        except StateError as exc:
            errors.append({"OpIndex": i, "What": str(exc)})
    return results, errors


def txn_result(
    results: list[dict[str, Any]] | None, errors: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The JSON answer (Consul's ``TxnResponse``)."""
    return {"Results": results, "Errors": errors or None}


class _Rollback(Exception):
    pass


def encode_op(op: TxnOp) -> dict[str, Any]:
    """``op`` as it travels in a TXN command."""
    from server.fsm import encode_entry

    kind, verb, payload = op
    if kind == "KV":
        return {"KV": {"Verb": verb, "DirEnt": encode_entry(payload)}}
    return {kind: {"Verb": verb, kind: payload}}


def _decode_ops(body: Any) -> list[TxnOp | None]:
    from server.fsm import UnknownCommandError, decode_entry

    if not isinstance(body, dict) or not isinstance(body.get("Ops"), list):
        raise UnknownCommandError("TXN command without an Ops list")
    ops: list[TxnOp | None] = []
    for op in body["Ops"]:
        if not isinstance(op, dict):
            raise UnknownCommandError("TXN operation is not an object")
        for kind in ("KV", *_CATALOG_OPS):
            inner = op.get(kind)
            if inner is None:
                continue
            if not isinstance(inner, dict):
                raise UnknownCommandError(f"TXN {kind} operation is not an object")
            verb = str(inner.get("Verb", ""))
            if kind == "KV":
                ops.append((kind, verb, decode_entry(inner.get("DirEnt"))))
            else:
                payload = inner.get(kind)
                if not isinstance(payload, dict):
                    raise UnknownCommandError(f"TXN {kind} operation without its object")
                ops.append((kind, verb, payload))
            break
        else:
            ops.append(None)
    return ops


def apply_txn(fsm: ConsulFSM, index: int, body: Any) -> Any:
    ops = _decode_ops(body)
    store = fsm.store
    errors: list[dict[str, Any]] = []
    try:
        with store.write_txn(index) as tx:
            results, errors = run_ops(store, tx, ops, fsm.now())
            if errors:
                raise _Rollback
    except _Rollback:
        return txn_result(None, errors)
    return txn_result(results, None)


HANDLERS: dict[MessageType, Handler] = {MessageType.TXN: apply_txn}
