"""HTTP plumbing shared by every endpoint module: errors, JSON in and out, query options.

Consul's conventions kept here:

* A bad request is answered with a status and a one-line text body (``HTTPError``); the
  application's middleware turns any other exception into a 500 with the exception's text, never
  a traceback.
* JSON bodies are decoded as Go's ``encoding/json`` does: **field names match
  case-insensitively** (py-consul sends ``{"name": ...}`` where Consul documents ``Name``). Use
  ``fold_keys`` to map a decoded object's keys onto the canonical names an endpoint knows.
  A body that is not JSON is ``400 Request decode failed: <reason>``.
* ``?pretty`` indents the JSON answer.
* ``QueryOptions`` holds the read parameters every read endpoint takes (``dc``, ``stale``,
  ``consistent``, ``index``, ``wait``, ``filter``, ``token``, ``near``, ``cached``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from server.state import parse_duration

__all__ = [
    "BODY_KEY",
    "DEFAULT_QUERY_WAIT",
    "MAX_BODY_SIZE",
    "MAX_QUERY_WAIT",
    "HTTPError",
    "QueryOptions",
    "cached_body",
    "fold_keys",
    "json_response",
    "parse_bool_param",
    "parse_duration_param",
    "parse_query_options",
    "parse_uint_param",
    "read_body",
    "read_json",
]

DEFAULT_QUERY_WAIT = 300.0  # seconds: Consul's default blocking wait (5 min)
MAX_QUERY_WAIT = 600.0  # Consul's cap (10 min)
MAX_BODY_SIZE = 4 * 1024 * 1024  # bodies other than KV values (KV has its own 512 KiB limit)


class HTTPError(Exception):
    """Answered as ``status`` with ``message`` as a one-line text body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(
    request: web.Request,
    data: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``data`` as JSON (orjson; indented with ``?pretty``)."""
    option = orjson.OPT_INDENT_2 if "pretty" in request.query else 0
    return web.Response(
        body=orjson.dumps(data, option=option),
        status=status,
        content_type="application/json",
        headers=headers,
    )


#: Where a body already read from the stream is kept on the request (the forwarding middleware
#: reads it before it knows whether it will forward; the handler must still see it).
BODY_KEY = "proconsul.body"


def cached_body(request: web.Request) -> bytes | None:
    cached = request.get(BODY_KEY)
    return cached if isinstance(cached, bytes) else None


async def read_body(request: web.Request, limit: int = MAX_BODY_SIZE) -> bytes:
    """The raw request body; 413 beyond ``limit`` bytes."""
    cached = cached_body(request)
    if cached is not None:
        if len(cached) > limit:
            raise HTTPError(
                413, f"Request body({len(cached)} bytes) too large, max size: {limit} bytes."
            )
        return cached
    length = request.content_length
    if length is not None and length > limit:
        raise HTTPError(413, f"Request body({length} bytes) too large, max size: {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"Request body({size} bytes) too large, max size: {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, *, empty: Any = None, limit: int = MAX_BODY_SIZE) -> Any:
    """The decoded JSON body; ``empty`` when there is no body. 400 for anything not JSON."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return empty
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from None


def fold_keys(obj: Any, names: Iterable[str], *, what: str = "body") -> dict[str, Any]:
    """``obj`` (a decoded JSON object) with every key matching one of ``names``
    case-insensitively renamed to that canonical spelling, as Go's JSON decoder matches struct
    fields. Other keys are kept as they are. 400 if ``obj`` is not an object."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise HTTPError(400, f"Request decode failed: {what} must be a JSON object")
    canonical = {name.lower(): name for name in names}
    folded: dict[str, Any] = {}
    for key, value in obj.items():
        folded[canonical.get(str(key).lower(), str(key))] = value
    return folded


def parse_uint_param(request: web.Request, name: str, what: str | None = None) -> int | None:
    """``?name=<uint64>``; None when absent; 400 when not a uint64."""
    if name not in request.query:
        return None
    raw = request.query[name]
    if not raw.isascii() or not raw.isdigit() or int(raw) >= 1 << 64:
        raise HTTPError(400, f"Invalid {what or name}: {raw!r}")
    return int(raw)


def parse_bool_param(request: web.Request, name: str) -> bool:
    """A flag parameter: present without a value, or ``true``/``1`` -> True."""
    if name not in request.query:
        return False
    raw = request.query[name].lower()
    if raw in ("", "true", "1", "t"):
        return True
    if raw in ("false", "0", "f"):
        return False
    raise HTTPError(400, f"Invalid value for ?{name}: {request.query[name]!r}")


def parse_duration_param(value: str, what: str) -> float:
    """A Go duration string in seconds; 400 naming ``what`` when invalid."""
    try:
        return parse_duration(value) / 1e9
    except ValueError as exc:
        raise HTTPError(400, f"Invalid {what}: {exc}") from None


@dataclass(frozen=True, slots=True)
class QueryOptions:
    """Read parameters (Consul's ``structs.QueryOptions``). ``min_index`` 0 means "do not
    block"; ``wait`` is seconds with Consul's jitter already added."""

    datacenter: str = ""
    token: str = ""
    stale: bool = False
    consistent: bool = False
    min_index: int = 0
    wait: float = DEFAULT_QUERY_WAIT
    filter: str = ""
    near: str = ""
    cached: bool = False
    max_stale: float = 0.0


def parse_query_options(request: web.Request) -> QueryOptions:
    """Parse the common read parameters (Consul's errors for the bad ones)."""
    q = request.query
    stale = "stale" in q
    consistent = "consistent" in q
    if stale and consistent:
        raise HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
    min_index = parse_uint_param(request, "index") or 0
    wait = 0.0
    if "wait" in q:
        wait = parse_duration_param(q["wait"], "wait time")
        if wait < 0:
            raise HTTPError(400, f"Invalid wait time: {q['wait']!r} is negative")
    if wait <= 0:
        wait = DEFAULT_QUERY_WAIT
    wait = min(wait, MAX_QUERY_WAIT)
    wait += random.uniform(0, wait / 16)
    max_stale = 0.0
    if "max_stale" in q:
        max_stale = parse_duration_param(q["max_stale"], "max_stale")
    token = q.get("token", "") or request.headers.get("X-Consul-Token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
    return QueryOptions(
        datacenter=q.get("dc", ""),
        token=token,
        stale=stale,
        consistent=consistent,
        min_index=min_index,
        wait=wait,
        filter=q.get("filter", ""),
        near=q.get("near", ""),
        cached="cached" in q,
        max_stale=max_stale,
    )
