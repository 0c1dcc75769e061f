"""The KV endpoints of the HTTP API: ``GET``/``PUT``/``DELETE /v1/kv/<key>``.

Reads go to the local state store (Consul's default consistency mode); writes are proposed to
Raft as ``MessageType.KVS`` commands and answer the FSM's bool as JSON ``true``/``false``.

Consul's rules followed here:

* ``X-Consul-Index`` on every read, never 0; for one key it is the key's ModifyIndex.
  ``X-Consul-KnownLeader: true`` and ``X-Consul-LastContact: 0`` (this server is the leader).
* A missing key, or an empty ``recurse``/``keys`` listing, is a 404 with an empty body.
* ``?index=N&wait=D`` blocks until the result's index moves past N or the wait ends (then the
  current result is answered). ``wait`` defaults to 5m, is capped at 10m, and gets up to 1/16
  of random jitter added, as Consul's blocking queries do.
* A PUT body over 512 KiB (Consul's ``kv_max_value_size`` default) is a 413.
* ``PUT ?acquire=<session>`` locks the key for the session (storing the body and ``?flags``),
  ``PUT ?release=<session>`` unlocks it; both answer ``true``/``false`` (false: held by another
  session, or not held by this one). A missing or unknown session is a 500 with the state
  store's text (``invalid session "<id>"``). Before proposing a lock, the key's lock delay (left
  by an invalidated session) is checked on this server's clock, as Consul's leader does in
  ``kvsPreApply``: under lock delay the answer is ``false`` without a Raft round.
* ``?cas``, ``?acquire`` and ``?release`` exclude each other, as ``?recurse`` and ``?cas`` on a
  DELETE do: 400 ``Conflicting flags: <the query string, sorted>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote_plus

import orjson
from aiohttp import web

from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, cached_body, parse_uint_param
from server.fsm import encode_kvs
from server.state import DirEntry, StateStore, WatchSet

__all__ = ["KV_MAX_VALUE_SIZE", "KVEndpoint", "register"]

T = TypeVar("T")

KV_MAX_VALUE_SIZE = 512 * 1024
_KV_LIMIT_DOCS = "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"


class KVEndpoint:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def _blocking(
        self,
        request: web.Request,
        read: Callable[[StateStore, WatchSet | None], tuple[int, T]],
    ) -> tuple[T, dict[str, str]]:
        opts = self.ctx.options(request)
        result, meta = await self.ctx.read(opts, read)
        return result, self.ctx.headers(meta)

    async def _apply(self, op: str, entry: DirEntry) -> web.Response:
        result: Any = await self.ctx.apply_raw(encode_kvs(op, entry))
        return web.json_response(bool(result))

    # --- handlers ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info.get("key", "")
        try:
            if request.method == "GET":
                if "keys" in request.query:
                    return await self._get_keys(request, key)
                return await self._get(request, key)
            if request.method == "PUT":
                return await self._put(request, key)
            if request.method == "DELETE":
                return await self._delete(request, key)
        except HTTPError as exc:
            return web.Response(status=exc.status, text=exc.message)
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": "OPTIONS,GET,PUT,DELETE"})
        return web.Response(
            status=405,
            text=f"method {request.method} not allowed",
            headers={"Allow": "OPTIONS,GET,PUT,DELETE"},
        )

    async def _get(self, request: web.Request, key: str) -> web.Response:
        if "recurse" in request.query:
            entries, headers = await self._blocking(request, lambda s, ws: s.kvs_list(ws, key))
            if not entries:
                return web.Response(status=404, headers=headers)
            body = orjson.dumps([entry.to_api() for entry in entries])
            return web.Response(body=body, content_type="application/json", headers=headers)
        if not key:
            raise HTTPError(400, "Missing key name")
        entry, headers = await self._blocking(request, lambda s, ws: s.kvs_get(ws, key))
        if entry is None:
            return web.Response(status=404, headers=headers)
        if "raw" in request.query:
            return web.Response(
                body=entry.value or b"",
                content_type="text/plain",
                headers={**headers, "X-Content-Type-Options": "nosniff"},
            )
        body = orjson.dumps([entry.to_api()])
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _get_keys(self, request: web.Request, prefix: str) -> web.Response:
        separator = request.query.get("separator", "")
        keys, headers = await self._blocking(
            request, lambda s, ws: s.kvs_keys(ws, prefix, separator)
        )
        if not keys:
            return web.Response(status=404, headers=headers)
        return web.Response(
            body=orjson.dumps(keys), content_type="application/json", headers=headers
        )

    async def _put(self, request: web.Request, key: str) -> web.Response:
        if not key:
            raise HTTPError(400, "Missing key name")
        _conflicting_flags(request, "cas", "acquire", "release")
        flags = parse_uint_param(request, "flags") or 0
        cas = parse_uint_param(request, "cas", "cas index")
        op = "set" if cas is None else "cas"
        session = ""
        if "acquire" in request.query:
            op, session = "lock", request.query["acquire"]
        if "release" in request.query:
            op, session = "unlock", request.query["release"]
        body = await _read_body(request)
        entry = DirEntry(key, body or None, flags, session=session, modify_index=cas or 0)
        if op == "lock" and self._lock_delayed(key):
            # Consul's kvsPreApply: the leader refuses a lock under lock delay before the
            # Raft apply (lock delays are per-server wall-clock state, not replicated).
            return web.json_response(False)
        return await self._apply(op, entry)

    def _lock_delayed(self, key: str) -> bool:
        fsm = self.ctx.fsm
        if fsm is None:
            return False
        expires = fsm.store.kvs_lock_delay(key)
        return expires is not None and expires > fsm.now()

    async def _delete(self, request: web.Request, key: str) -> web.Response:
        recurse = "recurse" in request.query
        if not recurse and not key:
            raise HTTPError(400, "Missing key name")
        _conflicting_flags(request, "recurse", "cas")
        if "cas" in request.query:
            cas = parse_uint_param(request, "cas", "cas index") or 0
            return await self._apply("delete-cas", DirEntry(key, modify_index=cas))
        return await self._apply("delete-tree" if recurse else "delete", DirEntry(key))


def _conflicting_flags(request: web.Request, *flags: str) -> None:
    """Consul's ``conflictingFlags``: 400 when more than one of ``flags`` is given."""
    query = request.query
    if sum(1 for flag in flags if flag in query) > 1:
        pairs = sorted((k, v) for k, v in query.items())
        encoded = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)
        raise HTTPError(400, f"Conflicting flags: {encoded}")


async def _read_body(request: web.Request) -> bytes:
    """The request body, or a 413 once it is over ``KV_MAX_VALUE_SIZE``."""
    cached = cached_body(request)
    if cached is not None:
        if len(cached) > KV_MAX_VALUE_SIZE:
            raise _too_large(len(cached))
        return cached
    length = request.content_length
    if length is not None and length > KV_MAX_VALUE_SIZE:
        raise _too_large(length)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > KV_MAX_VALUE_SIZE:
            raise _too_large(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int) -> HTTPError:
    return HTTPError(
        413,
        f"Request body({size} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. "
        f"See {_KV_LIMIT_DOCS}.",
    )


def register(app: web.Application, ctx: ServerContext) -> None:
    endpoint = KVEndpoint(ctx)
    app.router.add_route("*", "/v1/kv/{key:.*}", endpoint.handle)
