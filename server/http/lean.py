"""A lean HTTP/1.1 front end for the KV hot path, in front of the aiohttp app.

Why: under ``wrk -c64`` a py-spy profile of the Raft leader puts most of its event-loop thread
in aiohttp (request parsing, routing, middlewares, the StreamReader, response preparation) and
the asyncio glue around it; a bare asyncio ``Protocol`` with httptools' C parser costs a
fraction of that per request (docs/BENCHMARKS.md, "KV over HTTP").

What it serves itself — only the plainest requests, answered exactly as ``server.endpoints.kv``
answers them (same ``ServerContext`` calls, same status codes, bodies and ``X-Consul-*``
headers):

* ``GET /v1/kv/<key>`` (default consistency: ``ctx.read`` with its barrier) and
* ``PUT /v1/kv/<key>`` (set; ``ctx.apply_raw(encode_kvs("set", ...))``),

with no query string, a non-empty key of plain characters (no ``%``, no ``.`` segments, no
``#``), HTTP/1.1, a request head within aiohttp's 8190-byte line limit, ``Content-Length``
framing (no chunked body, no ``Expect``), a body within Consul's ``kv_max_value_size``, ACLs
off, and only while this server is the Raft leader. ``Connection: close`` is honoured. The
answers differ from aiohttp's only in headers no client reads: no ``Server`` header, and
``Content-Type: application/json`` without aiohttp's ``; charset=utf-8`` on a PUT's
``true``/``false`` (Consul sends it without, too).

Everything else — any other path or method, any query parameter (``?recurse``, ``?index``,
``?cas``, ``?stale``...), a follower, a malformed request, an upgrade — hands the connection
over to aiohttp for good: the bytes of the request (and whatever followed it) are replayed into
a fresh aiohttp ``RequestHandler`` on the same transport, once every hot-path answer before it
has been written, so pipelined answers stay in order. A connection therefore costs aiohttp
nothing while it only does hot-path KV, and behaves exactly as before once it does anything else.

A client that disconnects does not cancel its request (aiohttp does not either): the write
still goes through Raft and its answer is dropped.

``LeanSite`` is a drop-in ``aiohttp.web.TCPSite``: ``AppRunner.cleanup()`` stops it; it closes
its own connections when stopped.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import os
import time
from collections import deque
from typing import Any

import httptools
import orjson
import structlog
from aiohttp import web

from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, QueryOptions
from server.endpoints.kv import KV_MAX_VALUE_SIZE
from server.fsm import encode_kvs
from server.state import DirEntry

__all__ = ["LeanSite"]

log = structlog.get_logger("http")

_PREFIX = b"/v1/kv/"
_MAX_QUEUED = 32  # pipelined requests read ahead of the answers before reading pauses
_MAX_HEAD = 8190  # a longer request head goes to aiohttp, which applies its own limits
_BAD_PATH = (b"%", b"?", b"#", b"/./", b"/../")
#: ``PROCONSUL_LEAN_HTTP=0`` in the agent's environment sends every request through aiohttp
#: (for comparisons, or as a way out should the hot path ever misbehave).
DISABLE_ENV = "PROCONSUL_LEAN_HTTP"


class _Delegate(Exception):
    """Raised from a parser callback: this request (and connection) goes to aiohttp."""


class _Request:
    __slots__ = ("body", "keep_alive", "key", "method", "token")

    def __init__(self, method: bytes, key: str, token: str, keep_alive: bool) -> None:
        self.method = method
        self.key = key
        self.token = token
        self.keep_alive = keep_alive
        self.body: list[bytes] = []


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _response(
    status: int,
    body: bytes,
    content_type: bytes | None,
    headers: dict[str, str] | None = None,
    close: bool = False,
) -> bytes:
    reason = http.HTTPStatus(status).phrase.encode() if status != 200 else b"OK"
    parts = [b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nDate: %s\r\n" % (
        status, reason, len(body), _date()
    )]  # fmt: skip
    if content_type is not None:
        parts.append(b"Content-Type: " + content_type + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    if headers:
        parts.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class _LeanProtocol(asyncio.Protocol):
    """One client connection: KV hot-path requests here, the rest handed to aiohttp."""

    def __init__(self, site: LeanSite) -> None:
        self._site = site
        self._ctx = site.ctx
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # Bytes from the start of the first request not yet fully parsed (replayed to aiohttp
        # on a hand-over): a hot-path request's bytes are dropped once it is parsed.
        self._raw = bytearray()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._current: _Request | None = None
        self._queue: deque[_Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._handover = False
        self._paused = False
        self._closing = False  # a request said "Connection: close": read nothing more

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._site.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A request in flight runs to its end (its answer is dropped), as aiohttp does not
        # cancel handlers when a client goes away either.
        self._site.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._raw += data
        if self._handover:
            return  # waiting for earlier answers; replayed to aiohttp afterwards
        try:
            self._parser.feed_data(data)
        except (_Delegate, httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Not ours (raised by on_headers_complete), malformed (aiohttp answers its 400,
            # as it always did) or an upgrade: aiohttp takes the connection from here.
            self._start_handover()
            return
        if self._current is None and len(self._raw) > _MAX_HEAD:
            # A long request line or header block: aiohttp applies its limits.
            self._start_handover()

    def _message_start(self) -> int:
        """Where the current request starts in ``_raw`` (llhttp skips blank lines)."""
        raw = self._raw
        start = 0
        while start < len(raw) and raw[start] in (10, 13):
            start += 1
        return start

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._current = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self._hot_request()
        if request is None:
            raise _Delegate
        self._current = request

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body.append(body)

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        self._current = None
        # Drop this request's bytes: leading blank lines, the header block, the body.
        start = self._message_start()
        end = self._raw.index(b"\r\n\r\n", start) + 4 + sum(len(b) for b in request.body)
        del self._raw[:end]
        self._queue.append(request)
        if not request.keep_alive:
            self._closing = True
            self._raw.clear()
        if len(self._queue) >= _MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="lean-http-conn"
            )

    # --- the hot path ------------------------------------------------------------------

    def _hot_request(self) -> _Request | None:
        """The request just parsed, if this front end serves it; None hands it to aiohttp."""
        parser = self._parser
        method = parser.get_method()
        url = self._url
        if method not in (b"GET", b"PUT") or not url.startswith(_PREFIX) or len(url) == 7:
            return None
        if any(bad in url for bad in _BAD_PATH) or url.endswith((b"/.", b"/..")):
            return None
        if parser.get_http_version() != "1.1":
            return None
        if not self._site.enabled():
            return None
        # The raw bytes must start with this request's header block (they do for any
        # request llhttp accepts with CRLF line ends; anything odd goes to aiohttp).
        start = self._message_start()
        head_end = self._raw.find(b"\r\n\r\n", start)
        if not self._raw.startswith(method + b" ", start) or head_end < 0:
            return None
        if head_end - start > _MAX_HEAD:
            return None
        token = ""
        length = 0
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit():
                    return None
                length = int(value)
            elif lower in (b"transfer-encoding", b"expect", b"upgrade"):
                return None
            elif lower == b"x-consul-token":
                token = value.decode("latin-1")
            elif lower == b"authorization" and not token:
                text = value.decode("latin-1")
                if text.lower().startswith("bearer "):
                    token = text[7:].strip()
        if length > KV_MAX_VALUE_SIZE:
            return None  # the endpoint's 413
        if method == b"GET" and length:
            return None
        try:
            key = url[len(_PREFIX) :].decode()
        except UnicodeDecodeError:
            return None
        return _Request(method, key, token, keep_alive=parser.should_keep_alive())

    async def _work(self) -> None:
        try:
            while self._queue:
                request = self._queue[0]
                answer = await self._answer(request)
                self._queue.popleft()
                transport = self._transport
                if transport is None or transport.is_closing():
                    return
                transport.write(answer)
                if not request.keep_alive:
                    transport.close()
                    return
                if self._paused and len(self._queue) < _MAX_QUEUED // 2:
                    self._paused = False
                    transport.resume_reading()
        finally:
            self._worker = None
        if self._handover:
            self._hand_over()

    async def _answer(self, request: _Request) -> bytes:
        close = not request.keep_alive
        try:
            if request.method == b"PUT":
                body = b"".join(request.body)
                # KVEndpoint._put with no query parameters: a "set" with flags 0.
                entry = DirEntry(request.key, body or None, 0, session="", modify_index=0)
                result: Any = await self._ctx.apply_raw(encode_kvs("set", entry))
                return _response(
                    200, b"true" if result else b"false", b"application/json", close=close
                )
            # KVEndpoint._get with no query parameters (default consistency).
            key = request.key
            opts = QueryOptions(token=request.token)
            entry_or_none, meta = await self._ctx.read(opts, lambda s, ws: s.kvs_get(ws, key))
            headers = self._ctx.headers(meta)
            if entry_or_none is None:
                return _response(404, b"", None, headers, close=close)
            body = orjson.dumps([entry_or_none.to_api()])
            return _response(200, body, b"application/json", headers, close=close)
        except HTTPError as exc:
            return _response(
                exc.status, exc.message.encode(), b"text/plain; charset=utf-8", close=close
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # as server.endpoints._errors does
            log.warning(
                "request_failed", method=request.method.decode(), key=request.key, error=repr(exc)
            )
            text = " ".join(str(exc).split()) or type(exc).__name__
            return _response(500, text.encode(), b"text/plain; charset=utf-8", close=close)

    # --- hand-over to aiohttp ----------------------------------------------------------

    def _start_handover(self) -> None:
        self._handover = True
        if self._worker is None:
            self._hand_over()
        elif self._transport is not None and not self._paused:
            self._transport.pause_reading()  # buffer nothing more until the answers are out
            self._paused = True

    def _hand_over(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._site.connections.discard(self)
        self._transport = None
        handler = self._site.aiohttp_protocol()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        raw, self._raw = bytes(self._raw), bytearray()
        if raw:
            handler.data_received(raw)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        if self._transport is not None:
            self._transport.close()


class LeanSite(web.TCPSite):
    """``web.TCPSite`` whose connections start on the KV hot path (module docstring)."""

    def __init__(self, runner: web.BaseRunner, ctx: ServerContext, *args: Any, **kw: Any) -> None:
        super().__init__(runner, *args, **kw)
        self.ctx = ctx
        self.connections: set[_LeanProtocol] = set()
        self._off = bool(ctx.config.acl.get("enabled", False)) or os.environ.get(DISABLE_ENV) == "0"

    def enabled(self) -> bool:
        """Serve hot-path requests here now? Only as the Raft leader with ACLs off (a
        follower forwards, ACLs are enforced by the endpoint modules) and not switched off
        with ``PROCONSUL_LEAN_HTTP=0``."""
        raft = self.ctx.raft
        return not self._off and raft is not None and raft.is_leader

    def aiohttp_protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        protocol: asyncio.Protocol = server()
        return protocol

    async def start(self) -> None:
        # TCPSite.start with our protocol factory instead of the aiohttp server's.
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _LeanProtocol(self),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port

    async def stop(self) -> None:
        await super().stop()
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()
