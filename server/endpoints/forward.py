"""Forwarding HTTP API requests from a follower server to the Raft leader, as Consul's RPC
layer does: writes and non-stale reads are answered by the leader (blocking queries included,
so they block there); ``?stale`` reads, the agent's own endpoints and status are served here.

The whole request is replayed on the leader over server RPC (``ForwardHTTP``) and its response
returned unchanged, so every endpoint behaves identically whichever server a client talks to.
A forwarded request carries ``X-Proconsul-Forwarded`` and is never forwarded a second time: a
server that lost leadership meanwhile answers it itself (its Raft write then fails cleanly).
With no known leader the request waits up to ``rpc_hold_timeout`` for one (Consul's 7 s), then
fails with ``500 No cluster leader``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from proto import server_rpc_pb2 as pb
from server.endpoints.context import ServerContext
from server.endpoints.http import BODY_KEY, MAX_QUERY_WAIT, HTTPError, parse_duration_param
from server.rpc.errors import NotLeaderError, NotSentError
from server.rpc.service import FORWARDED_HEADER

__all__ = ["FORWARDED_PREFIXES", "ORIGIN_NODE_HEADER", "forward_middleware"]

#: The node name of the server that forwarded a request (agent defaults such as a session's
#: Node are the origin's, as in Consul where the receiving agent fills them in before its RPC).
ORIGIN_NODE_HEADER = "X-Proconsul-Origin-Node"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Deadline of a forwarded request that does not block (Consul's ``rpc_client_timeout``).
RPC_CLIENT_TIMEOUT = 60.0


def _deadline(request: web.Request) -> float:
    """A blocking query may wait up to 10 min (+1/16 jitter); anything else gets 60 s."""
    if "index" in request.query:
        return MAX_QUERY_WAIT * 1.1 + 30
    return RPC_CLIENT_TIMEOUT


#: Paths answered by the leader. Everything else (``/v1/agent/``, ``/v1/status/``,
#: ``/v1/event/``, keyring operations) is this agent's own business.
FORWARDED_PREFIXES = (
    "/v1/kv/",
    "/v1/catalog/",
    "/v1/health/",
    "/v1/session/",
    "/v1/txn",
    "/v1/config",
    "/v1/query",
    "/v1/connect/",
    "/v1/coordinate/",
    "/v1/operator/raft/",
    "/v1/operator/autopilot/",
    "/v1/operator/usage",
    "/v1/snapshot",
    "/v1/acl/",
    "/v1/discovery-chain/",
    "/v1/internal/",
)
_SKIP_BACK = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding"})


def _needs_leader(ctx: ServerContext, request: web.Request) -> bool:
    if FORWARDED_HEADER in request.headers:
        return False
    if not request.path.startswith(FORWARDED_PREFIXES):
        return False
    if request.method in ("GET", "HEAD") and "stale" in request.query:
        # A stale read is served here unless this server is more than max_stale behind.
        try:
            max_stale = parse_duration_param(request.query.get("max_stale", "0s"), "max_stale")
        except HTTPError:
            return False  # the handler answers the 400
        return ctx.too_stale(max_stale)
    return True


#: What a client agent sends to a server: everything that needs the catalog or Raft.
CLIENT_FORWARDED_PREFIXES = (*FORWARDED_PREFIXES, "/v1/status/", "/v1/operator/")


#: Answered by this agent for its own datacenter, by a server of the other one with ``?dc=``
#: (Consul's Status.Leader/Peers and Internal.EventFire take a datacenter).
REMOTE_ONLY_PREFIXES = ("/v1/status/", "/v1/event/fire/")


def _client_needs_server(ctx: ServerContext, request: web.Request) -> bool:
    if request.path.startswith(REMOTE_ONLY_PREFIXES):
        dc = request.query.get("dc", "")
        if dc and dc != ctx.config.datacenter:
            return True
    if not request.path.startswith(CLIENT_FORWARDED_PREFIXES):
        return False
    return not request.path.startswith("/v1/operator/keyring")


async def _relay_to_servers(ctx: ServerContext, request: web.Request) -> web.StreamResponse:
    """A client agent: replay the request on one of its servers (failing over to the next;
    a write only while nothing was sent)."""
    pool, rpc = ctx.server_pool, ctx.leader_rpc
    if pool is None or rpc is None:
        raise HTTPError(500, "No known Consul servers")
    body = await request.read()
    headers = [pb.Header(name=k, value=v) for k, v in request.headers.items()]
    if ORIGIN_NODE_HEADER not in request.headers:
        headers.append(pb.Header(name=ORIGIN_NODE_HEADER, value=ctx.config.node_name))
    message = pb.HttpRequest(
        method=request.method, path_qs=request.path_qs, headers=headers, body=body, relay=True
    )
    read = request.method in ("GET", "HEAD")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.config.rpc_hold_timeout
    while True:
        for address in pool.candidates():
            try:
                reply = await ctx.cancellable(
                    rpc.forward_http(address, message, _deadline(request))
                )
            except NotSentError:
                pool.failed(address)
                continue
            except HTTPError:
                if not read:
                    raise
                pool.failed(address)
                continue
            headers_back = {
                h.name: h.value for h in reply.headers if h.name.lower() not in _SKIP_BACK
            }
            return web.Response(status=reply.status, headers=headers_back, body=reply.body)
        if loop.time() >= deadline or ctx.closed:
            raise HTTPError(500, "No known Consul servers")
        await asyncio.sleep(0.1)


#: Endpoints under the forwarded prefixes that are this server's own even with ``?dc=``.
_NEVER_REMOTE = ("/v1/catalog/datacenters",)


#: Writes whose body may name the datacenter (``Datacenter``), as Consul's RPC arguments do.
_BODY_DC_PATHS = ("/v1/catalog/register", "/v1/catalog/deregister")


async def _remote_dc(ctx: ServerContext, request: web.Request) -> str | None:
    """The other datacenter a request names with ``?dc=`` (or, for catalog writes, the
    body's ``Datacenter``); None: this one."""
    dc = request.query.get("dc", "")
    if not dc and request.path in _BODY_DC_PATHS and request.method == "PUT":
        body = await request.read()
        request[BODY_KEY] = body
        with contextlib.suppress(ValueError):
            decoded = orjson.loads(body) if body else None
            if isinstance(decoded, dict):
                dc = next((v for k, v in decoded.items() if k.lower() == "datacenter"), "")
        dc = dc if isinstance(dc, str) else ""
    if not dc or dc == ctx.config.datacenter:
        return None
    if request.path in _NEVER_REMOTE or not request.path.startswith(
        (*FORWARDED_PREFIXES, *REMOTE_ONLY_PREFIXES)
    ):
        return None
    return dc


async def _forward_remote(ctx: ServerContext, request: web.Request, dc: str) -> web.Response:
    """Replay the request on a server of ``dc`` (``server.federation.remote``)."""
    remote = getattr(ctx, "remote", None)
    if remote is None:
        raise HTTPError(500, "No path to datacenter")
    body = await request.read()
    headers = [pb.Header(name=k, value=v) for k, v in request.headers.items()]
    message = pb.HttpRequest(
        method=request.method, path_qs=request.path_qs, headers=headers, body=body, relay=True
    )
    reply = await ctx.cancellable(remote.forward_http(dc, message, _deadline(request)))
    headers_back = {h.name: h.value for h in reply.headers if h.name.lower() not in _SKIP_BACK}
    return web.Response(status=reply.status, headers=headers_back, body=reply.body)


def forward_middleware(
    ctx: ServerContext,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def forward(request: web.Request, handler: Handler) -> web.StreamResponse:
        raft = ctx.raft
        if raft is not None:
            dc = await _remote_dc(ctx, request)
            if dc is not None:
                return await _forward_remote(ctx, request, dc)
        if raft is None:
            if ctx.server_pool is not None and _client_needs_server(ctx, request):
                return await _relay_to_servers(ctx, request)
            return await handler(request)
        if raft.is_leader or ctx.leader_rpc is None or not _needs_leader(ctx, request):
            return await handler(request)
        body = await request.read()
        request[BODY_KEY] = body  # if this server becomes leader meanwhile, it handles it
        message = pb.HttpRequest(
            method=request.method,
            path_qs=request.path_qs,
            headers=[
                *(pb.Header(name=k, value=v) for k, v in request.headers.items()),
                *(
                    ()
                    if ORIGIN_NODE_HEADER in request.headers
                    else (pb.Header(name=ORIGIN_NODE_HEADER, value=ctx.config.node_name),)
                ),
            ],
            body=body,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.config.rpc_hold_timeout
        while True:
            if raft.is_leader:
                return await handler(request)
            leader = raft.leader_address()
            if leader:
                try:
                    reply = await ctx.cancellable(
                        ctx.leader_rpc.forward_http(leader, message, _deadline(request))
                    )
                except (NotLeaderError, NotSentError):
                    reply = None  # never acted on: look for the leader again until the deadline
                except HTTPError:
                    # The leader may have acted on it before failing: retrying a write could
                    # apply it twice. Only reads are retried (as Consul's forwarding does).
                    if request.method not in ("GET", "HEAD"):
                        raise
                    reply = None
                if reply is not None:
                    headers = {
                        h.name: h.value for h in reply.headers if h.name.lower() not in _SKIP_BACK
                    }
                    return web.Response(status=reply.status, headers=headers, body=reply.body)
            if loop.time() >= deadline or ctx.closed:
                raise HTTPError(500, "No cluster leader")
            await asyncio.sleep(0.05)

    return forward
