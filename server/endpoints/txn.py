"""``PUT /v1/txn``: several KV and catalog operations in one atomic transaction (Consul's
``agent/txn_endpoint.go`` and ``agent/consul/txn_endpoint.go``).

The body is a JSON array of operations ``{"KV": {"Verb", "Key", "Value" (base64), "Flags",
"Index", "Session"}}``, ``{"Node": {"Verb", "Node": {...}}}``, ``{"Service": {"Verb", "Node",
"Service": {...}}}`` or ``{"Check": {"Verb", "Check": {...}}}`` (field names matched
case-insensitively, as Go does). Consul's rules:

* body larger than ``max(txn_max_req_len, kv_max_value_size)``: 413
  ``Request body too large, max size: <n> bytes``; a body that does not decode: 400
  ``Failed to parse body: <reason>``; more than 64 operations: 413
  ``Transaction contains too many operations (<n> > 64)``; a value over ``kv_max_value_size``:
  413 ``Value for key "<k>" is too large (<n> > <max> bytes)``.
* A transaction with no write verb is served from the local state store with the request's
  consistency mode (no Raft round, ``X-Consul-KnownLeader``/``X-Consul-LastContact`` headers);
  any other goes through Raft (``MessageType.TXN``) as one write.
* Before proposing, each KV operation is pre-checked as on Consul's leader: ``Must provide
  key`` (every verb but ``delete-tree``) and the lock delay of ``lock`` verbs
  (``failed to lock key "<k>" due to lock delay``).
* The answer is ``{"Results": [...], "Errors": null}`` (200), or, when anything failed and
  the transaction was rolled back, ``{"Results": null, "Errors": [{"OpIndex", "What"}]}`` with
  409. See ``server.commands.txn`` for each verb's result and error text.
* Node, Service and Check objects keep only the fields Consul's ``convertOps`` copies (a
  service: ID, Service, Tags, Address, Meta, Port, Weights, EnableTagOverride; a check: Node,
  CheckID, Name, Status, Notes, Output, ServiceID/Name/Tags, Definition; plus ModifyIndex for
  ``cas``/``delete-cas``) and are normalised as a catalog registration is
  (``server.commands.catalog``): a node's Datacenter defaults to this agent's, a check's
  CheckID to its Name; a service to ``set``/``cas`` refused by that validation fails at its
  index (409). An
  operation naming no kind at all is skipped, as Consul's decoder skips it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from server.commands.catalog import RequestDecodeError, normalize_check, normalize_service
from server.commands.txn import TxnOp, encode_op, is_write, run_ops, txn_result
from server.commands.types import MessageType
from server.endpoints.catalog import add_endpoint
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, fold_keys, json_response, read_body
from server.filter.strconv import go_quote
from server.state import DirEntry, StateError

__all__ = ["MAX_TXN_OPS", "register"]

MAX_TXN_OPS = 64
"""Consul's ``maxTxnOps``."""

_OP_KINDS = ("KV", "Node", "Service", "Check")
_KV_FIELDS = ("Verb", "Key", "Value", "Flags", "Index", "Session", "Namespace", "Partition")
_JSON_TYPES = {bool: "bool", int: "number", float: "number", str: "string", list: "array"}


class _Invalid:
    """An operation refused before the transaction (its error is reported at its index)."""

    def __init__(self, what: str) -> None:
        self.what = what


Op = TxnOp | _Invalid

#: The fields Consul's ``convertOps`` copies from the API objects (others are dropped).
_NODE_FIELDS = ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta", "ModifyIndex")
_SERVICE_FIELDS = (
    "ID",
    "Service",
    "Tags",
    "Address",
    "Meta",
    "Port",
    "Weights",
    "EnableTagOverride",
    "ModifyIndex",
)
_CHECK_FIELDS = (
    "Node",
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "Output",
    "ServiceID",
    "ServiceName",
    "ServiceTags",
    "Definition",
    "ModifyIndex",
)


def _parse_error(text: str) -> HTTPError:
    return HTTPError(400, f"Failed to parse body: {text}")


def _type_error(value: Any, where: str, go_type: str) -> HTTPError:
    kind = _JSON_TYPES.get(type(value), "object")
    return _parse_error(f"json: cannot unmarshal {kind} into Go {where} of type {go_type}")


def _b64_error(text: str) -> str:
    """Go's ``base64.CorruptInputError`` text for ``text`` (the first offending byte)."""
    data = text.encode("utf-8", "surrogatepass")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i, byte in enumerate(data):
        if byte == ord("="):
            return f"illegal base64 data at input byte {i}"
        if byte not in alphabet and byte not in b"\r\n":
            return f"illegal base64 data at input byte {i}"
    return f"illegal base64 data at input byte {len(data)}"


def _uint(kv: dict[str, Any], field: str) -> int:
    value = kv.get(field)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, f"struct field KVTxnOp.{field}", "uint64")
    if value != int(value) or value < 0 or value >= 1 << 64:
        raise _type_error(value, f"struct field KVTxnOp.{field}", "uint64")
    return int(value)


def _text(kv: dict[str, Any], field: str) -> str:
    value = kv.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _type_error(value, f"struct field KVTxnOp.{field}", "string")
    return value


def _str_map(obj: dict[str, Any], field: str) -> dict[str, str] | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _type_error(value, f"struct field Node.{field}", "map[string]string")
    return dict(value)


def _decode_kv(raw: Any) -> tuple[str, DirEntry]:
    if not isinstance(raw, dict):
        raise _type_error(raw, "struct field TxnOp.KV", "api.KVTxnOp")
    kv = fold_keys(raw, _KV_FIELDS)
    value: bytes | None = None
    raw_value = kv.get("Value")
    if raw_value is not None:
        if not isinstance(raw_value, str):
            raise _parse_error(f"unexpected value type: {_go_kind(raw_value)}")
        try:
            value = base64.b64decode(raw_value, validate=True)
        except (binascii.Error, ValueError):
            raise _parse_error(f"failed to decode value: {_b64_error(raw_value)}") from None
    entry = DirEntry(
        key=_text(kv, "Key"),
        value=value,
        flags=_uint(kv, "Flags"),
        session=_text(kv, "Session"),
        modify_index=_uint(kv, "Index"),
    )
    return _text(kv, "Verb"), entry


def _go_kind(value: Any) -> str:
    return {
        bool: "bool",
        int: "float64",
        float: "float64",
        list: "[]interface {}",
        dict: "map[string]interface {}",
    }.get(type(value), "string")


class TxnEndpoint:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def _max_request(self) -> int:
        config = self.ctx.config
        return max(config.txn_max_req_len, config.kv_max_value_size)

    async def _decode(self, request: web.Request) -> list[Op]:
        limit = self._max_request()
        too_large = HTTPError(413, f"Request body too large, max size: {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await read_body(request, limit)
        except HTTPError:
            raise too_large from None
        try:
            document = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError as exc:
            raise _parse_error(str(exc)) from None
        if document is None:
            document = []
        if not isinstance(document, list):
            raise _type_error(document, "value", "api.TxnOps")
        if len(document) > MAX_TXN_OPS:
            raise HTTPError(
                413,
                f"Transaction contains too many operations ({len(document)} > {MAX_TXN_OPS})",
            )
        max_value = self.ctx.config.kv_max_value_size
        ops: list[Op] = []
        for item in document:
            if item is None:
                continue
            if not isinstance(item, dict):
                raise _type_error(item, "value", "api.TxnOp")
            op = fold_keys(item, _OP_KINDS)
            if op.get("KV") is not None:
                verb, entry = _decode_kv(op["KV"])
                size = len(entry.value or b"")
                if size > max_value:
                    raise HTTPError(
                        413,
                        f"Value for key {go_quote(entry.key)} is too large "
                        f"({size} > {max_value} bytes)",
                    )
                ops.append(("KV", verb, entry))
                continue
            for kind in _OP_KINDS[1:]:
                if op.get(kind) is not None:
                    ops.append(self._decode_catalog(kind, op[kind]))
                    break
        return ops

    def _decode_catalog(self, kind: str, raw: Any) -> Op:
        """A Node, Service or Check operation, normalised as a catalog registration is."""
        if not isinstance(raw, dict):
            raise _type_error(raw, f"struct field TxnOp.{kind}", f"api.{kind}TxnOp")
        names = ("Verb", kind) if kind != "Service" else ("Verb", "Node", "Service")
        op = fold_keys(raw, names)
        verb = op.get("Verb") or ""
        if not isinstance(verb, str):
            raise _type_error(verb, f"struct field {kind}TxnOp.Verb", "string")
        try:
            if kind == "Node":
                node = fold_keys(op.get("Node") or {}, _NODE_FIELDS, what="Node")
                payload: dict[str, Any] = {
                    "ID": _text(node, "ID"),
                    "Node": _text(node, "Node"),
                    "Address": _text(node, "Address"),
                    "Datacenter": _text(node, "Datacenter") or self.ctx.config.datacenter,
                    "TaggedAddresses": _str_map(node, "TaggedAddresses"),
                    "Meta": _str_map(node, "Meta"),
                    "ModifyIndex": _uint(node, "ModifyIndex"),
                }
            elif kind == "Service":
                raw_service = fold_keys(op.get("Service") or {}, _SERVICE_FIELDS, what="Service")
                index = _uint(raw_service, "ModifyIndex")
                kept = {k: v for k, v in raw_service.items() if k in _SERVICE_FIELDS}
                kept.pop("ModifyIndex", None)
                if verb in ("set", "cas"):
                    service = normalize_service(kept)
                else:  # get / delete / delete-cas name the service by its ID only
                    service = {"ID": _text(kept, "ID")}
                service["ModifyIndex"] = index
                node_name = op.get("Node") or ""
                if not isinstance(node_name, str):
                    raise _type_error(node_name, "struct field ServiceTxnOp.Node", "string")
                payload = {"Node": node_name, "Service": service}
            else:
                raw_check = fold_keys(op.get("Check") or {}, _CHECK_FIELDS, what="Check")
                index = _uint(raw_check, "ModifyIndex")
                kept = {k: v for k, v in raw_check.items() if k in _CHECK_FIELDS}
                kept.pop("ModifyIndex", None)
                payload = normalize_check(kept, "")
                payload["ModifyIndex"] = index
        except RequestDecodeError as exc:
            raise _parse_error(str(exc)) from None
        except StateError as exc:
            return _Invalid(str(exc))
        return (kind, verb, payload)

    def _precheck(self, ops: list[Op]) -> list[dict[str, Any]]:
        """Consul's ``Txn.preCheck``: a key is required, and a ``lock`` must not meet a lock
        delay (checked here, before the Raft apply, on this server's clock)."""
        errors: list[dict[str, Any]] = []
        fsm = self.ctx.fsm
        now = fsm.now() if fsm is not None else 0.0
        store = self.ctx.store
        for i, op in enumerate(ops):
            if isinstance(op, _Invalid):
                errors.append({"OpIndex": i, "What": op.what})
                continue
            kind, verb, entry = op
            if kind != "KV":
                continue
            if not entry.key and verb != "delete-tree":
                errors.append({"OpIndex": i, "What": "Must provide key"})
                continue
            if verb == "lock":
                expires = store.kvs_lock_delay(entry.key)
                if expires is not None and expires > now:
                    what = f"failed to lock key {go_quote(entry.key)} due to lock delay"
                    errors.append({"OpIndex": i, "What": what})
        return errors

    async def handle(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        ops = await self._decode(request)
        writes = any(isinstance(op, tuple) and is_write(op) for op in ops)
        if not writes:
            return await self._read(request, ops)
        ctx.check_datacenter(request.query.get("dc", ""))
        errors = self._precheck(ops)
        if errors:
            return json_response(request, txn_result(None, errors), status=409)
        body = {"Ops": [encode_op(op) for op in ops if isinstance(op, tuple)]}
        result = await ctx.apply(MessageType.TXN, body)
        status = 409 if result.get("Errors") else 200
        return json_response(request, result, status=status)

    async def _read(self, request: web.Request, ops: list[Op]) -> web.Response:
        ctx = self.ctx
        opts = ctx.options(request)
        consistency = await ctx.barrier(opts)
        meta = ctx.meta(0, consistency)
        headers = {
            "X-Consul-KnownLeader": "true" if meta.known_leader else "false",
            "X-Consul-LastContact": str(meta.last_contact_ms),
        }
        errors = self._precheck(ops)
        if errors:
            answer = txn_result(None, errors)
        else:
            valid = [op for op in ops if isinstance(op, tuple)]
            results, errors = run_ops(ctx.store, None, valid)
            answer = txn_result(None, errors) if errors else txn_result(results, None)
        answer.update(
            {
                "Index": 0,
                "LastContact": meta.last_contact_ms,
                "KnownLeader": meta.known_leader,
                "ConsistencyLevel": "",
                "NotModified": False,
                "Backend": 0,
                "ResultsFilteredByACLs": False,
            }
        )
        status = 409 if answer["Errors"] else 200
        return json_response(request, answer, status=status, headers=headers)


def register(app: web.Application, ctx: ServerContext) -> None:
    """Add this domain's routes to ``app``."""
    endpoint = TxnEndpoint(ctx)
    add_endpoint(app, "/v1/txn", ["PUT"], endpoint.handle)
