"""The follower side of server RPC: one gRPC channel per leader address, reused.

``LeaderClient`` implements ``server.endpoints.context.LeaderRPC`` (``apply``, ``read_index``)
and ``forward_http`` for the HTTP middleware. Errors come back as ``HTTPError`` with the
leader's status and text; a "not the leader" answer (leadership moved while the request was in
flight) raises ``NotLeaderError`` so the caller can look for the new leader and retry.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from proto import server_rpc_pb2 as pb
from proto import server_rpc_pb2_grpc as pb_grpc
from server.endpoints.http import HTTPError
from server.rpc.errors import NotLeaderError, NotSentError
from server.rpc.service import NOT_LEADER

__all__ = ["LeaderClient", "NotLeaderError", "NotSentError"]

_MAX_MESSAGE = 64 * 1024 * 1024


def _rpc_failure(exc: grpc.aio.AioRpcError) -> Exception:
    """``NotSentError`` when the server could not be reached at all, else an HTTP 500."""
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details.lower() or "connection refused" in details.lower()
    ):
        return NotSentError(details)
    return HTTPError(500, f"rpc error: {details}")


class LeaderClient:
    def __init__(self) -> None:
        self._channels: dict[str, tuple[Any, pb_grpc.ServerRPCStub]] = {}

    def _stub(self, address: str) -> pb_grpc.ServerRPCStub:
        entry = self._channels.get(address)
        if entry is None:
            channel = grpc.aio.insecure_channel(
                address,
                options=[
                    ("grpc.max_send_message_length", _MAX_MESSAGE),
                    ("grpc.max_receive_message_length", _MAX_MESSAGE),
                    # A frozen or partitioned server is noticed in ~15 s, not at the deadline
                    # (the Raft transport's server accepts these pings).
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                    ("grpc.keepalive_permit_without_calls", 1),
                ],
            )
            entry = (channel, pb_grpc.ServerRPCStub(channel))  # type: ignore[no-untyped-call]
            self._channels[address] = entry
        return entry[1]

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.close(None)

    async def apply(self, leader_address: str, command: bytes, *, relay: bool = False) -> Any:
        """``relay``: sent by a client agent to any server, which applies it through its own
        leader forwarding."""
        try:
            reply: pb.ApplyResponse = await self._stub(leader_address).Apply(
                pb.ApplyRequest(command=command, relay=relay), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(exc) from None
        if reply.error == NOT_LEADER:
            raise NotLeaderError(reply.error)
        if reply.error:
            raise HTTPError(reply.error_status or 500, reply.error)
        return orjson.loads(reply.result_json) if reply.result_json else None

    async def read_index(self, leader_address: str) -> int:
        try:
            reply: pb.ReadIndexResponse = await self._stub(leader_address).ReadIndex(
                pb.ReadIndexRequest(), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(exc) from None
        if reply.error == NOT_LEADER:
            raise NotLeaderError(reply.error)
        if reply.error:
            raise HTTPError(500, reply.error)
        return int(reply.index)

    async def forward_http(
        self, leader_address: str, request: pb.HttpRequest, timeout: float
    ) -> pb.HttpResponse:
        try:
            reply: pb.HttpResponse = await self._stub(leader_address).ForwardHTTP(
                request, timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(exc) from None
        if reply.status == 503 and reply.body == NOT_LEADER.encode():
            raise NotLeaderError(NOT_LEADER)
        return reply
