"""``/v1/event/fire/:name`` and ``/v1/event/list``: user events (Consul's
``agent/event_endpoint.go`` and ``agent/user_event.go``).

Events are not replicated state: they travel over LAN gossip as serf user events named
``consul:event:<name>`` whose payload encodes the whole event, and each agent keeps the last
256 it accepted in a ring buffer (``EventBuffer``). An agent accepts an event only if it passes
the event's filters: ``NodeFilter`` (a regular expression on this agent's node name),
``ServiceFilter`` (on the names of this agent's services) and ``TagFilter`` (on their tags).

* ``PUT /v1/event/fire/:name`` (body = payload, ``?node= ?service= ?tag=``) answers the event
  ``{ID, Name, Payload (base64 or null), NodeFilter, ServiceFilter, TagFilter, Version: 1,
  LTime: 0}``; a missing name is ``400 Missing name``, invalid filters a 500 with Consul's text.
  Without a LAN serf (a dev agent before gossip is wired) the event is delivered to this
  agent's own buffer directly.
* ``GET /v1/event/list[?name=]``: the buffered events, oldest first. ``X-Consul-Index`` is
  derived from the last event's ID (the UUID's two 64-bit halves XORed, as Consul does), 1
  when there are none; ``?index=`` blocks while that index equals the one given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import struct
import uuid
from collections import deque
from typing import Any

import structlog
from aiohttp import web

from server.endpoints.context import ServerContext
from server.endpoints.http import (
    DEFAULT_QUERY_WAIT,
    MAX_BODY_SIZE,
    HTTPError,
    json_response,
    parse_query_options,
    read_body,
)

__all__ = [
    "EVENT_BUFFER_SIZE",
    "USER_EVENT_PREFIX",
    "EventBuffer",
    "UserEventMessage",
    "register",
    "uuid_to_uint64",
]

log = structlog.get_logger("event")

EVENT_BUFFER_SIZE = 256  # Consul's agent keeps the last 256 user events
USER_EVENT_PREFIX = "consul:event:"
USER_EVENT_MAX_VERSION = 1
_WIRE_FORMAT = 1
_FORMAT = struct.Struct(">BB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_NO_PAYLOAD = 0xFFFFFFFF


def uuid_to_uint64(event_id: str) -> int:
    """Consul's ``uuidToUint64``: the UUID's high and low 64-bit halves XORed together."""
    high = int(event_id[0:8] + event_id[9:13] + event_id[14:18], 16)
    low = int(event_id[19:23] + event_id[24:36], 16)
    return high ^ low


class UserEventMessage:
    """One user event (Consul's ``agent.UserEvent``)."""

    __slots__ = (
        "id",
        "ltime",
        "name",
        "node_filter",
        "payload",
        "service_filter",
        "tag_filter",
        "version",
    )

    def __init__(
        self,
        id: str,
        name: str,
        payload: bytes | None = None,
        node_filter: str = "",
        service_filter: str = "",
        tag_filter: str = "",
        version: int = USER_EVENT_MAX_VERSION,
        ltime: int = 0,
    ) -> None:
        self.id = id
        self.name = name
        self.payload = payload
        self.node_filter = node_filter
        self.service_filter = service_filter
        self.tag_filter = tag_filter
        self.version = version
        self.ltime = ltime

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Payload": None if self.payload is None else base64.b64encode(self.payload).decode(),
            "NodeFilter": self.node_filter,
            "ServiceFilter": self.service_filter,
            "TagFilter": self.tag_filter,
            "Version": self.version,
            "LTime": self.ltime,
        }

    def encode(self) -> bytes:
        """The gossip payload: the event without its Lamport time (serf carries that), in a
        compact binary form, since serf limits a user event to 512 bytes of name and payload
        (Consul packs it with msgpack for the same reason): a format byte, the version, five
        strings (ID, Name, NodeFilter, ServiceFilter, TagFilter) each with a 2-byte length, and
        the payload with a 4-byte length (``0xFFFFFFFF`` for none)."""
        parts = [_FORMAT.pack(_WIRE_FORMAT, min(max(self.version, 0), 255))]
        for text in (self.id, self.name, self.node_filter, self.service_filter, self.tag_filter):
            raw = text.encode()
            parts.append(_U16.pack(len(raw)))
            parts.append(raw)
        if self.payload is None:
            parts.append(_U32.pack(_NO_PAYLOAD))
        else:
            parts.append(_U32.pack(len(self.payload)))
            parts.append(self.payload)
        return b"".join(parts)

    @staticmethod
    def decode(data: bytes, ltime: int) -> UserEventMessage:
        """From ``encode``'s bytes; ValueError when malformed."""
        view = memoryview(data)
        try:
            wire_format, version = _FORMAT.unpack_from(view, 0)
            if wire_format != _WIRE_FORMAT:
                raise ValueError(f"unknown user event format {wire_format}")
            offset = _FORMAT.size
            texts: list[str] = []
            for _ in range(5):
                (size,) = _U16.unpack_from(view, offset)
                offset += _U16.size
                if offset + size > len(view):
                    raise ValueError("truncated")
                texts.append(bytes(view[offset : offset + size]).decode())
                offset += size
            (size,) = _U32.unpack_from(view, offset)
            offset += _U32.size
            payload: bytes | None = None
            if size != _NO_PAYLOAD:
                if offset + size != len(view):
                    raise ValueError("bad payload length")
                payload = bytes(view[offset:])
            elif offset != len(view):
                raise ValueError("trailing bytes")
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed user event: {exc}") from exc
        event_id, name, node_filter, service_filter, tag_filter = texts
        if len(event_id) != 36 or not name:
            raise ValueError("malformed user event: bad ID or name")
        return UserEventMessage(
            id=event_id,
            name=name,
            payload=payload,
            node_filter=node_filter,
            service_filter=service_filter,
            tag_filter=tag_filter,
            version=version,
            ltime=int(ltime),
        )


def validate_event(event: UserEventMessage) -> None:
    """Consul's ``validateUserEventParams``: 500 with its text when invalid."""
    if not event.name:
        raise HTTPError(500, "User event missing name")
    if event.tag_filter and not event.service_filter:
        raise HTTPError(500, "Cannot provide tag filter without service filter")
    for what, pattern in (
        ("node", event.node_filter),
        ("service", event.service_filter),
        ("tag", event.tag_filter),
    ):
        if pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise HTTPError(500, f"Invalid {what} filter: {exc}") from None


class EventBuffer:
    """The agent's last ``EVENT_BUFFER_SIZE`` accepted user events, with change notification
    for blocking ``/v1/event/list`` calls. A ``ServerContext`` service."""

    def __init__(self, ctx: ServerContext, size: int = EVENT_BUFFER_SIZE) -> None:
        self.ctx = ctx
        self._events: deque[UserEventMessage] = deque(maxlen=size)
        self._changed = asyncio.Event()
        self._local_ltime = 0

    # --- the ServerContext service hooks -------------------------------------------------

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._changed.set()  # release blocked listers

    async def leadership_changed(self, is_leader: bool) -> None:
        return None

    # --- gossip --------------------------------------------------------------------------

    def on_serf_event(self, event: object) -> None:
        """A ``ctx.event_listeners`` callback: ingest ``consul:event:*`` user events."""
        name = getattr(event, "name", None)
        payload = getattr(event, "payload", None)
        if not isinstance(name, str) or not name.startswith(USER_EVENT_PREFIX):
            return
        if not isinstance(payload, bytes | bytearray):
            return
        try:
            message = UserEventMessage.decode(bytes(payload), int(getattr(event, "ltime", 0)))
        except ValueError as exc:
            log.warning("user_event_decode_failed", error=str(exc))
            return
        self.ingest(message)

    def should_process(self, event: UserEventMessage) -> bool:
        """Consul's ``shouldProcessUserEvent``: does this agent pass the event's filters?"""
        if event.node_filter:
            try:
                if not re.search(event.node_filter, self.ctx.config.node_name):
                    return False
            except re.error:
                return False
        if event.service_filter:
            try:
                service_re = re.compile(event.service_filter)
                tag_re = re.compile(event.tag_filter) if event.tag_filter else None
            except re.error:
                return False
            for name, tags in self._local_services():
                if not service_re.search(name):
                    continue
                if tag_re is None or any(tag_re.search(tag) for tag in tags):
                    return True
            return False
        return True

    def _local_services(self) -> list[tuple[str, list[str]]]:
        local = self.ctx.local
        services = getattr(local, "all_services", None)
        if not callable(services):
            return []
        out: list[tuple[str, list[str]]] = []
        with contextlib.suppress(Exception):
            for service in services().values():
                name = service.get("Service") or service.get("Name") or ""
                out.append((str(name), [str(t) for t in service.get("Tags") or []]))
        return out

    def ingest(self, event: UserEventMessage) -> bool:
        """Buffer ``event`` if it passes the filters; wakes blocked listers."""
        if event.version > USER_EVENT_MAX_VERSION:
            log.warning("user_event_version", version=event.version, name=event.name)
        if not self.should_process(event):
            return False
        self._events.append(event)
        self._local_ltime = max(self._local_ltime, event.ltime)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def fire(self, event: UserEventMessage) -> None:
        """Send ``event`` to every agent of the datacenter (this one included)."""
        serf = self.ctx.serf_lan
        if serf is not None:
            await serf.user_event(USER_EVENT_PREFIX + event.name, event.encode())
            return
        self._local_ltime += 1
        delivered = UserEventMessage.decode(event.encode(), self._local_ltime)
        self.ingest(delivered)

    # --- reads ---------------------------------------------------------------------------

    def events(self, name: str = "") -> list[UserEventMessage]:
        return [e for e in self._events if not name or e.name == name]

    async def wait_changed(self, timeout: float) -> None:
        if self.ctx.closed or timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()


def register(app: web.Application, ctx: ServerContext) -> None:
    buffer = EventBuffer(ctx)
    ctx.add_service(buffer)
    ctx.event_listeners.append(buffer.on_serf_event)

    async def fire(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        name = request.match_info.get("name", "")
        if not name:
            raise HTTPError(400, "Missing name")
        body = await read_body(request, MAX_BODY_SIZE)
        event = UserEventMessage(
            id=str(uuid.uuid4()),
            name=name,
            payload=body or None,
            node_filter=request.query.get("node", ""),
            service_filter=request.query.get("service", ""),
            tag_filter=request.query.get("tag", ""),
        )
        validate_event(event)
        try:
            await buffer.fire(event)
        except HTTPError:
            raise
        except Exception as exc:
            raise HTTPError(500, str(exc) or type(exc).__name__) from None
        return json_response(request, event.to_api())

    async def list_events(request: web.Request) -> web.Response:
        opts = parse_query_options(request)
        name = request.query.get("name", "")
        loop = asyncio.get_running_loop()
        wait = opts.wait if opts.min_index else DEFAULT_QUERY_WAIT
        deadline = loop.time() + wait
        while True:
            events = buffer.events(name)
            index = uuid_to_uint64(events[-1].id) if events else 1
            remaining = deadline - loop.time()
            if not opts.min_index or index != opts.min_index or remaining <= 0 or ctx.closed:
                break
            await buffer.wait_changed(remaining)
        return json_response(
            request, [e.to_api() for e in events], headers={"X-Consul-Index": str(index)}
        )

    app.router.add_put("/v1/event/fire/{name:.*}", fire)
    app.router.add_get("/v1/event/list", list_events)
