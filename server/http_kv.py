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
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from raft.node import RaftNode
from server.fsm import ConsulFSM, encode_kvs
from server.state import DirEntry, StateStore, WatchSet, parse_duration

__all__ = [
    "DEFAULT_QUERY_WAIT",
    "KV_MAX_VALUE_SIZE",
    "MAX_QUERY_WAIT",
    "KVEndpoint",
    "register_kv_routes",
]

T = TypeVar("T")

KV_MAX_VALUE_SIZE = 512 * 1024
DEFAULT_QUERY_WAIT = 300.0  # seconds
MAX_QUERY_WAIT = 600.0
_KV_LIMIT_DOCS = "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"


class _BadRequest(Exception):
    """A request error answered as ``status`` with a one-line text body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message)


def _uint(request: web.Request, name: str, what: str) -> int:
    raw = request.query.get(name, "")
    if not raw.isascii() or not raw.isdigit() or int(raw) >= 1 << 64:
        raise _BadRequest(f"Invalid {what}: {raw!r}")
    return int(raw)


def _query_wait(request: web.Request) -> tuple[int, float]:
    """The blocking-query parameters: (min index, timeout in seconds); index 0: no blocking."""
    min_index = _uint(request, "index", "index") if "index" in request.query else 0
    wait = 0.0
    if "wait" in request.query:
        try:
            nanos = parse_duration(request.query["wait"])
        except ValueError as exc:
            raise _BadRequest(f"Invalid wait time: {exc}") from None
        if nanos < 0:
            raise _BadRequest(f"Invalid wait time: {request.query['wait']!r} is negative")
        wait = nanos / 1e9
    if wait <= 0:
        wait = DEFAULT_QUERY_WAIT
    wait = min(wait, MAX_QUERY_WAIT)
    wait += random.uniform(0, wait / 16)
    return min_index, wait


class KVEndpoint:
    def __init__(self, fsm: ConsulFSM, raft: RaftNode) -> None:
        self.fsm = fsm
        self.raft = raft
        self._closed = False
        self._waiting: set[asyncio.Future[None]] = set()

    def close(self) -> None:
        """Answer every blocking query now (with its current result) and stop blocking: called
        when the agent shuts down, so that the HTTP server does not wait for them to time out."""
        self._closed = True
        for fut in self._waiting:
            if not fut.done():
                fut.set_result(None)

    # --- plumbing ------------------------------------------------------------------------

    @staticmethod
    def _headers(index: int) -> dict[str, str]:
        return {
            "X-Consul-Index": str(max(index, 1)),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }

    async def _blocking(
        self,
        request: web.Request,
        read: Callable[[StateStore, WatchSet | None], tuple[int, T]],
    ) -> tuple[int, T]:
        """Run ``read`` once, or as a blocking query when ``?index=`` is given."""
        min_index, timeout = _query_wait(request)
        if min_index == 0:
            return read(self.fsm.store, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            store = self.fsm.store
            ws = WatchSet()
            ws.add(store.abandon_channel)
            index, result = read(store, ws)
            remaining = deadline - loop.time()
            if index > min_index or remaining <= 0 or self._closed:
                return index, result
            fired: asyncio.Future[None] = loop.create_future()
            self._waiting.add(fired)

            def wake(fut: asyncio.Future[None] = fired) -> None:
                if not fut.done():
                    fut.set_result(None)

            cancel = ws.add_callback(wake)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await fired
            finally:
                cancel()
                self._waiting.discard(fired)

    async def _apply(self, op: str, entry: DirEntry) -> web.Response:
        try:
            result: Any = await self.raft.propose(encode_kvs(op, entry))
        except Exception as exc:  # Raft errors (not leader, lost leadership) and FSM errors
            return _text(500, str(exc) or type(exc).__name__)
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
        except _BadRequest as exc:
            return _text(exc.status, str(exc))
        return _text(405, f"Method {request.method} not allowed")

    async def _get(self, request: web.Request, key: str) -> web.Response:
        if "recurse" in request.query:
            index, entries = await self._blocking(request, lambda s, ws: s.kvs_list(ws, key))
            headers = self._headers(index)
            if not entries:
                return web.Response(status=404, headers=headers)
            body = orjson.dumps([entry.to_api() for entry in entries])
            return web.Response(body=body, content_type="application/json", headers=headers)
        if not key:
            raise _BadRequest("Missing key name")
        index, entry = await self._blocking(request, lambda s, ws: s.kvs_get(ws, key))
        headers = self._headers(index)
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
        index, keys = await self._blocking(request, lambda s, ws: s.kvs_keys(ws, prefix, separator))
        headers = self._headers(index)
        if not keys:
            return web.Response(status=404, headers=headers)
        return web.Response(
            body=orjson.dumps(keys), content_type="application/json", headers=headers
        )

    async def _put(self, request: web.Request, key: str) -> web.Response:
        if not key:
            raise _BadRequest("Missing key name")
        flags = _uint(request, "flags", "flags") if "flags" in request.query else 0
        cas = _uint(request, "cas", "cas index") if "cas" in request.query else None
        body = await _read_body(request)
        entry = DirEntry(key, body or None, flags, modify_index=cas or 0)
        return await self._apply("set" if cas is None else "cas", entry)

    async def _delete(self, request: web.Request, key: str) -> web.Response:
        recurse = "recurse" in request.query
        if not recurse and not key:
            raise _BadRequest("Missing key name")
        if "cas" in request.query:
            cas = _uint(request, "cas", "cas index")
            return await self._apply("delete-cas", DirEntry(key, modify_index=cas))
        return await self._apply("delete-tree" if recurse else "delete", DirEntry(key))


async def _read_body(request: web.Request) -> bytes:
    """The request body, or a 413 once it is over ``KV_MAX_VALUE_SIZE``."""
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


def _too_large(size: int) -> _BadRequest:
    return _BadRequest(
        f"Request body({size} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. "
        f"See {_KV_LIMIT_DOCS}.",
        status=413,
    )


def register_kv_routes(app: web.Application, fsm: ConsulFSM, raft: RaftNode) -> KVEndpoint:
    endpoint = KVEndpoint(fsm, raft)
    app.router.add_route("*", "/v1/kv/{key:.*}", endpoint.handle)
    return endpoint
