"""The leader side of server RPC (``proto/server_rpc.proto``).

* ``Apply``: propose a Raft command here, answer the FSM's result as JSON (results are plain
  JSON values by the command handlers' contract) or the error's text and HTTP status.
* ``ReadIndex``: a confirmed ReadIndex round; answers this server's applied index, which the
  follower waits for before reading its own store (a linearizable follower read).
* ``ForwardHTTP``: replay an HTTP API request against this server's own HTTP listener, marked
  with ``X-Proconsul-Forwarded`` so it is never forwarded again, and answer the response as is.

Requests that reach a server that is not (or no longer) the leader fail with Consul's
``No cluster leader``-style error; the follower retries within its ``rpc_hold_timeout``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import structlog

from proto import server_rpc_pb2 as pb
from proto import server_rpc_pb2_grpc as pb_grpc
from raft.node import RaftNode
from server.endpoints.http import HTTPError

__all__ = ["FORWARDED_HEADER", "NOT_LEADER", "RELAYED_HEADER", "ServerRPCService"]

log = structlog.get_logger("rpc")

FORWARDED_HEADER = "X-Proconsul-Forwarded"
RELAYED_HEADER = "X-Proconsul-Relayed"
NOT_LEADER = "rpc error: not the leader"
# Hop-by-hop headers and those aiohttp recomputes; never copied across a forward.
_SKIP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


class ServerRPCService:
    """Call ``add_to(grpc_server)`` before the gRPC server starts (GrpcTransport's
    ``extra_services``); ``await close()`` at shutdown. ``http_base`` is this server's own HTTP
    API, e.g. ``http://127.0.0.1:8500``."""

    def __init__(
        self,
        raft: RaftNode,
        http_base: str,
        relay_apply: Callable[[bytes], Awaitable[Any]] | None = None,
    ) -> None:
        self._raft = raft
        self._http_base = http_base
        #: How a relayed Apply (from a client agent) is applied here: the server context's
        #: ``apply_raw``, which forwards to the leader when this server is not it.
        self._relay_apply = relay_apply
        self._session: aiohttp.ClientSession | None = None

    def add_to(self, server: Any) -> None:
        pb_grpc.add_ServerRPCServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def apply(self, command: bytes, relay: bool = False) -> pb.ApplyResponse:
        if relay and self._relay_apply is not None:
            propose = self._relay_apply
        elif not self._raft.is_leader:
            return pb.ApplyResponse(error=NOT_LEADER, error_status=503)
        else:
            propose = self._raft.propose
        try:
            result = await propose(command)
        except HTTPError as exc:
            return pb.ApplyResponse(error=exc.message, error_status=exc.status)
        except Exception as exc:
            return pb.ApplyResponse(error=str(exc) or type(exc).__name__, error_status=500)
        try:
            return pb.ApplyResponse(result_json=orjson.dumps(result))
        except TypeError as exc:
            return pb.ApplyResponse(error=f"result not serialisable: {exc}", error_status=500)

    async def read_index(self) -> pb.ReadIndexResponse:
        if not self._raft.is_leader:
            return pb.ReadIndexResponse(error=NOT_LEADER)
        try:
            await self._raft.read_index()
        except Exception as exc:
            return pb.ReadIndexResponse(error=str(exc) or type(exc).__name__)
        return pb.ReadIndexResponse(index=self._raft.applied_index)

    async def forward_http(self, request: pb.HttpRequest) -> pb.HttpResponse:
        if not request.relay and not self._raft.is_leader:
            # Not acted on: the follower looks for the new leader and retries.
            return pb.HttpResponse(status=503, body=NOT_LEADER.encode())
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False,
            )
        headers = {h.name: h.value for h in request.headers if h.name.lower() not in _SKIP_HEADERS}
        # A relayed request (from a client agent) is handled like one to our own API, leader
        # forwarding included; one forwarded by a follower must be answered here.
        headers[RELAYED_HEADER if request.relay else FORWARDED_HEADER] = "1"
        async with self._session.request(
            request.method,
            self._http_base + request.path_qs,
            headers=headers,
            data=request.body or None,
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            out = [
                pb.Header(name=k, value=v)
                for k, v in resp.headers.items()
                if k.lower() not in _SKIP_HEADERS
            ]
            return pb.HttpResponse(status=resp.status, headers=out, body=body)


class _Servicer(pb_grpc.ServerRPCServicer):
    def __init__(self, service: ServerRPCService) -> None:
        self._service = service

    async def Apply(self, request: pb.ApplyRequest, context: Any) -> pb.ApplyResponse:
        return await self._service.apply(request.command, request.relay)

    async def ReadIndex(self, request: pb.ReadIndexRequest, context: Any) -> pb.ReadIndexResponse:
        return await self._service.read_index()

    async def ForwardHTTP(self, request: pb.HttpRequest, context: Any) -> pb.HttpResponse:
        try:
            return await self._service.forward_http(request)
        except aiohttp.ClientError as exc:
            log.warning("forward_failed", path=request.path_qs, error=repr(exc))
            return pb.HttpResponse(status=500, body=f"rpc error: {exc}".encode())
