"""Raft commands of the ``txn`` domain: ``MessageType.TXN`` (Consul's ``structs.TxnRequest``),
and the KV verbs shared with read-only transactions (Consul's ``state/txn.go``).

Body: ``{"Ops": [{"KV": {"Verb": <verb>, "DirEnt": <entry as in KVS commands>}}, ...]}``.
The CAS / check index travels as ``DirEnt.ModifyIndex``, as in Consul.

Semantics, as Consul's ``TxnRW``:

* every operation runs inside ONE write transaction, in order, and sees the writes of the ones
  before it;
* an operation that fails does not stop the others: every failure is collected as
  ``{"OpIndex": i, "What": <error text>}``; if there is any, the whole transaction is rolled
  back and the answer is ``{"Results": None, "Errors": [...]}``;
* otherwise ``{"Results": [{"KV": <entry>}, ...], "Errors": None}``: ``get`` and
  ``get-or-empty`` give the entry with its value, ``get-tree`` one result per entry, the other
  verbs that touch an entry give it without its value (``Value: null``), deletes and
  ``check-not-exists`` give nothing.

Lock delays are checked by the endpoint before proposing (as Consul's ``Txn.Apply`` does on the
leader), never here: they are per-server wall-clock state.

Only KV operations exist so far (the catalog verbs — Node, Service, Check — come with the
catalog); an operation of another kind is refused with ``no operation specified`` as Consul's
dispatcher does for an empty operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.filter.strconv import go_quote
from server.state import DirEntry, StateError, StateStore, WriteTxn

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = [
    "HANDLERS",
    "KV_READ_VERBS",
    "KV_VERBS",
    "KV_WRITE_VERBS",
    "apply_txn",
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


def run_ops(
    store: StateStore, tx: WriteTxn | None, ops: list[tuple[str, DirEntry] | None]
) -> tuple[list[DirEntry], list[dict[str, Any]]]:
    """Every operation in order (``None`` is an operation of a kind this server cannot run
    yet); returns (results, errors) as Consul's ``txnDispatch``."""
    results: list[DirEntry] = []
    errors: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        try:
            if op is None:
                raise StateError("no operation specified")
            results.extend(kv_op(store, tx, op[0], op[1]))
        except StateError as exc:
            errors.append({"OpIndex": i, "What": str(exc)})
    return results, errors


def txn_result(results: list[DirEntry] | None, errors: list[dict[str, Any]] | None) -> Any:
    """The JSON answer (Consul's ``TxnResponse``)."""
    return {
        "Results": None if results is None else [{"KV": e.to_api()} for e in results],
        "Errors": errors or None,
    }


class _Rollback(Exception):
    pass


def _decode_ops(body: Any) -> list[tuple[str, DirEntry] | None]:
    from server.fsm import UnknownCommandError, decode_entry

    if not isinstance(body, dict) or not isinstance(body.get("Ops"), list):
        raise UnknownCommandError("TXN command without an Ops list")
    ops: list[tuple[str, DirEntry] | None] = []
    for op in body["Ops"]:
        kv = op.get("KV") if isinstance(op, dict) else None
        if kv is None:
            ops.append(None)
            continue
        if not isinstance(kv, dict):
            raise UnknownCommandError("TXN KV operation is not an object")
        ops.append((str(kv.get("Verb", "")), decode_entry(kv.get("DirEnt"))))
    return ops


def apply_txn(fsm: ConsulFSM, index: int, body: Any) -> Any:
    ops = _decode_ops(body)
    store = fsm.store
    errors: list[dict[str, Any]] = []
    try:
        with store.write_txn(index) as tx:
            results, errors = run_ops(store, tx, ops)
            if errors:
                raise _Rollback
    except _Rollback:
        return txn_result(None, errors)
    return txn_result(results, None)


HANDLERS: dict[MessageType, Handler] = {MessageType.TXN: apply_txn}
