"""The session endpoints of the HTTP API (Consul's ``agent/session_endpoint.go`` and the
``Session.*`` RPCs of ``agent/consul/session_endpoint.go``).

* ``PUT /v1/session/create``: the body (optional) is a ``Session`` with Consul's defaults:
  ``Node`` this agent's node, ``NodeChecks``/``Checks`` ``["serfHealth"]``, ``LockDelay`` 15s
  (a number of nanoseconds, a Go duration string, and values under 1000 count as seconds),
  ``Behavior`` ``release``, no TTL. Consul's fix-up of the deprecated ``Checks`` field is kept:
  ``"Checks": []`` (or ``null``) means "no checks at all", ``"Checks": ["serfHealth"]`` defers to
  ``NodeChecks``, ``"NodeChecks": []`` drops the default ``Checks``. Answer ``{"ID": "<uuid>"}``.
  Errors are Consul's: ``Request decode failed: ...`` (400), and as 500s ``Must provide Node``,
  ``Invalid Behavior setting '<b>'``, ``Session TTL '<ttl>' invalid: ...``,
  ``Invalid Session TTL '<ns>', must be between [10s=24h0m0s]``, ``Missing node registration``,
  ``Missing check '<id>' registration``, ``Check '<id>' is in critical state``.
* ``PUT /v1/session/destroy/<id>``: ``true`` (also for an unknown session, as Consul).
* ``PUT /v1/session/renew/<id>``: resets the TTL timer; ``[session]``, or 404
  ``Session id '<id>' not found``.
* ``GET /v1/session/info/<id>``, ``/v1/session/node/<node>``, ``/v1/session/list``: lists
  (``[]`` when empty), blocking queries and consistency modes as every read.

The session ID is a uuid4 made here, before the Raft apply (the FSM must be deterministic).
On a follower every session request is forwarded to the leader (``server.endpoints.forward``),
so renewals reach the leader's TTL timers; a forwarded create defaults ``Node`` to the node of
the server that received it (``X-Proconsul-Origin-Node``), as Consul's agent fills it in before
its RPC.

**serfHealth on a fresh agent.** Consul's default check ``serfHealth`` exists once the leader's
serf reconcile has registered this node in the catalog. A session created for this agent's own
node while the node or its ``serfHealth`` check is not (yet) in the catalog waits for the reconcile, up
to ``rpc_hold_timeout`` (7 s), then is proposed anyway, so it fails with Consul's own error if the
registration never came. Only the node and ``serfHealth`` are waited for (a missing check of
the user's own fails at once), and sessions for other nodes never wait.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from server.commands.session import OP_CREATE, OP_DESTROY, session_body
from server.commands.types import MessageType
from server.endpoints.catalog import add_endpoint
from server.endpoints.context import ServerContext
from server.endpoints.forward import ORIGIN_NODE_HEADER
from server.endpoints.http import HTTPError, fold_keys, json_response, read_json
from server.leader.session_ttl import SessionTTLTimers
from server.rpc.service import FORWARDED_HEADER, RELAYED_HEADER
from server.state import (
    BEHAVIOR_RELEASE,
    DEFAULT_LOCK_DELAY_NS,
    ServiceCheck,
    Session,
    StateError,
    parse_duration,
    validate_session_request,
)

__all__ = ["SERF_CHECK_ID", "SessionEndpoint", "decode_session", "register"]

SERF_CHECK_ID = "serfHealth"
LOCK_DELAY_MIN_THRESHOLD = 1000
"""Consul's ``lockDelayMinThreshold``: a LockDelay under 1000 (ns) is taken as seconds."""

_FIELDS = (
    "ID",
    "Name",
    "Node",
    "LockDelay",
    "Behavior",
    "TTL",
    "NodeChecks",
    "ServiceChecks",
    "Checks",
)

_JSON_TYPES = {
    bool: "bool",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _type_error(value: Any, field: str, go_type: str) -> HTTPError:
    kind = _JSON_TYPES.get(type(value), "value")
    return HTTPError(
        400,
        f"Request decode failed: json: cannot unmarshal {kind} into Go struct field "
        f"Session.{field} of type {go_type}",
    )


def _string(body: dict[str, Any], field: str, default: str) -> str:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _type_error(value, field, "string")
    return value


def _strings(body: dict[str, Any], field: str, default: list[str] | None) -> list[str] | None:
    if field not in body:
        return default
    value = body[field]
    if value is None:
        return None
    if not isinstance(value, list):
        raise _type_error(value, field, "[]string")
    for item in value:
        if not isinstance(item, str):
            raise _type_error(item, field, "string")
    return list(value)


def _lock_delay(value: Any) -> int:
    """Consul's ``Session.UnmarshalJSON`` for ``LockDelay``."""
    if isinstance(value, str):
        try:
            delay = parse_duration(value)
        except ValueError as exc:
            raise HTTPError(400, f"Request decode failed: {exc}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        delay = int(value)
    else:
        delay = 0
    if delay < LOCK_DELAY_MIN_THRESHOLD:
        delay *= 1_000_000_000
    return delay


def decode_session(raw: Any, node_name: str) -> Session:
    """The session a ``/v1/session/create`` body asks for, with Consul's defaults and its
    ``fixupEmptySessionChecks`` applied (see the module docstring)."""
    if raw is not None and not isinstance(raw, dict):
        kind = _JSON_TYPES.get(type(raw), "value")
        raise HTTPError(
            400,
            f"Request decode failed: json: cannot unmarshal {kind} into Go value of type "
            "structs.Session",
        )
    body = fold_keys(raw, _FIELDS)
    lock_delay = DEFAULT_LOCK_DELAY_NS
    if body.get("LockDelay") is not None:
        lock_delay = _lock_delay(body["LockDelay"])
    node_checks = _strings(body, "NodeChecks", [SERF_CHECK_ID])
    checks = _strings(body, "Checks", [SERF_CHECK_ID])
    service_checks: list[ServiceCheck] | None = None
    raw_service_checks = body.get("ServiceChecks")
    if raw_service_checks is not None:
        if not isinstance(raw_service_checks, list):
            raise _type_error(raw_service_checks, "ServiceChecks", "[]structs.ServiceCheck")
        service_checks = []
        for item in raw_service_checks:
            if not isinstance(item, dict):
                raise _type_error(item, "ServiceChecks", "structs.ServiceCheck")
            check = fold_keys(item, ("ID", "Namespace"))
            service_checks.append(
                ServiceCheck(_string(check, "ID", ""), _string(check, "Namespace", ""))
            )
    # Consul's fixupEmptySessionChecks (backwards compatibility for the deprecated Checks).
    if not checks:
        node_checks = []
    elif checks == [SERF_CHECK_ID] or (node_checks is not None and not node_checks):
        checks = None
    return Session(
        id="",
        node=_string(body, "Node", node_name),
        name=_string(body, "Name", ""),
        lock_delay=lock_delay,
        behavior=_string(body, "Behavior", BEHAVIOR_RELEASE),
        ttl=_string(body, "TTL", ""),
        node_checks=None if node_checks is None else tuple(node_checks),
        service_checks=None if service_checks is None else tuple(service_checks),
        checks=None if checks is None else tuple(checks),
    )


class SessionEndpoint:
    def __init__(self, ctx: ServerContext, timers: SessionTTLTimers) -> None:
        self.ctx = ctx
        self.timers = timers

    # --- writes --------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        ctx.check_datacenter(request.query.get("dc", ""))
        raw = None
        if request.content_length is None or request.content_length > 0:
            raw = await read_json(request)
        node_name = ctx.config.node_name
        if FORWARDED_HEADER in request.headers or RELAYED_HEADER in request.headers:
            # created through a follower or a client agent: that agent's node
            node_name = request.headers.get(ORIGIN_NODE_HEADER, node_name)
        session = decode_session(raw, node_name)
        try:
            session = validate_session_request(
                session, op=OP_CREATE, ttl_min_ns=round(ctx.config.session_ttl_min * 1e9)
            )
        except StateError as exc:
            raise HTTPError(500, str(exc)) from None
        if session.node.lower() == node_name.lower():
            await self._await_registration(session)
        session = replace(session, id=self._new_id())
        result = await ctx.apply(
            MessageType.SESSION, {"Op": OP_CREATE, "Session": session_body(session)}
        )
        session_id = str(result) if result else session.id
        stored = ctx.store.session_get(None, session_id)[1]
        if stored is not None:
            self.timers.reset(stored)
        return json_response(request, {"ID": session_id})

    async def destroy(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        ctx.check_datacenter(request.query.get("dc", ""))
        session_id = request.match_info.get("id", "")
        if not session_id:
            raise HTTPError(400, "Missing session")
        body = {"Op": OP_DESTROY, "Session": session_body(Session(id=session_id, node=""))}
        await ctx.apply(MessageType.SESSION, body)
        self.timers.clear(session_id)
        return json_response(request, True)

    async def renew(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        ctx.options(request)
        session_id = request.match_info.get("id", "")
        if not session_id:
            raise HTTPError(400, "Missing session")
        session = ctx.store.session_get(None, session_id)[1]
        if session is None:
            raise HTTPError(404, f"Session id '{session_id}' not found")
        self.timers.reset(session)
        return json_response(request, [session.to_api()])

    # --- reads ---------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        session_id = request.match_info.get("id", "")
        if not session_id:
            raise HTTPError(400, "Missing session")
        opts = self.ctx.options(request)

        def read(store: Any, ws: Any) -> tuple[int, list[Session]]:
            index, session = store.session_get(ws, session_id)
            return index, [] if session is None else [session]

        sessions, meta = await self.ctx.read(opts, read)
        return json_response(
            request, [s.to_api() for s in sessions], headers=self.ctx.headers(meta)
        )

    async def node(self, request: web.Request) -> web.Response:
        node = request.match_info.get("node", "")
        if not node:
            raise HTTPError(400, "Missing node name")
        opts = self.ctx.options(request)
        sessions, meta = await self.ctx.read(opts, lambda s, ws: s.node_sessions(ws, node))
        return json_response(
            request, [s.to_api() for s in sessions], headers=self.ctx.headers(meta)
        )

    async def list_all(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)
        sessions, meta = await self.ctx.read(opts, lambda s, ws: s.session_list(ws))
        return json_response(
            request, [s.to_api() for s in sessions], headers=self.ctx.headers(meta)
        )

    # --- helpers -------------------------------------------------------------------------

    def _new_id(self) -> str:
        store = self.ctx.store
        while True:
            candidate = str(uuid.uuid4())
            if store.session_get(None, candidate)[1] is None:
                return candidate

    def _registered(self, session: Session) -> bool:
        catalog = self.ctx.store.catalog
        if not catalog.node_exists(session.node):
            return False
        if SERF_CHECK_ID not in session.check_ids():
            return True
        return catalog.check_status(session.node, SERF_CHECK_ID) is not None

    async def _await_registration(self, session: Session) -> None:
        """Wait (bounded) for the leader's reconcile to register this agent's node and its
        serfHealth check (see the module docstring)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.config.rpc_hold_timeout
        while not self._registered(session) and loop.time() < deadline:
            if self.ctx.closed:
                return
            await asyncio.sleep(0.05)


def register(app: web.Application, ctx: ServerContext) -> None:
    """Add this domain's routes to ``app`` and the leader's TTL timers to ``ctx``."""
    timers = SessionTTLTimers(ctx)
    ctx.add_service(timers)
    endpoint = SessionEndpoint(ctx, timers)
    add_endpoint(app, "/v1/session/create", ["PUT"], endpoint.create)
    add_endpoint(app, "/v1/session/destroy/{id:.*}", ["PUT"], endpoint.destroy)
    add_endpoint(app, "/v1/session/renew/{id:.*}", ["PUT"], endpoint.renew)
    add_endpoint(app, "/v1/session/info/{id:.*}", ["GET"], endpoint.info)
    add_endpoint(app, "/v1/session/node/{node:.*}", ["GET"], endpoint.node)
    add_endpoint(app, "/v1/session/list", ["GET"], endpoint.list_all)
