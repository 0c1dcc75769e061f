"""The follower side of server RPC: one gRPC channel per (address, TLS name), reused.

``LeaderClient`` implements ``server.endpoints.context.LeaderRPC`` (``apply``, ``read_index``)
and ``forward_http`` for the HTTP middleware. Errors come back as ``HTTPError`` with the
leader's status and text; a "not the leader" answer (leadership moved while the request was in
flight) raises ``NotLeaderError`` so the caller can look for the new leader and retry.

TLS (``server.tlsutil``): without settings, channels are insecure. With them, every channel is
mTLS and carries ``grpc.ssl_target_name_override`` = the call's ``sni`` or, by default,
``server.<datacenter>.<domain>``; gRPC sends that name as the SNI and verifies the server's
certificate against it. A cross-DC call through a mesh gateway dials the gateway's address
with the SNI of the wanted server (``<node>.server.<dc>.<domain>``): the gateway routes on the
SNI and never terminates TLS. Channels are keyed by (address, SNI): the same gateway address
reached with two names is two connections, as the gateway routes per connection.
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
from server.tlsutil import (
    TLSSettings,
    channel_options,
    grpc_channel_credentials,
    server_sni,
)

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
    def __init__(
        self, tls: TLSSettings | None = None, domain: str = "consul", datacenter: str = ""
    ) -> None:
        """``tls``: None for insecure channels. ``datacenter``/``domain``: the default TLS name
        ``server.<datacenter>.<domain>`` (the local servers' shared certificate name)."""
        self._tls = tls
        self._credentials: Any = grpc_channel_credentials(tls) if tls is not None else None
        self._default_sni = server_sni(datacenter, "", domain) if datacenter else ""
        self._channels: dict[tuple[str, str], tuple[Any, pb_grpc.ServerRPCStub]] = {}

    def _stub(self, address: str, sni: str | None = None) -> pb_grpc.ServerRPCStub:
        name = (sni or self._default_sni) if self._credentials is not None else ""
        key = (address, name)
        entry = self._channels.get(key)
        if entry is None:
            options: list[tuple[str, Any]] = [
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                # A frozen or partitioned server is noticed in ~15 s, not at the deadline
                # (the Raft transport's server accepts these pings). With TLS: the name.
                *channel_options(name or None),
            ]
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(address, options=options)
            entry = (channel, pb_grpc.ServerRPCStub(channel))  # type: ignore[no-untyped-call]
            self._channels[key] = entry
        return entry[1]

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.close(None)

    async def apply(
        self, leader_address: str, command: bytes, *, relay: bool = False, sni: str | None = None
    ) -> Any:
        """``relay``: sent by a client agent to any server, which applies it through its own
        leader forwarding. ``sni``: the TLS name to dial with (default: see the class)."""
        try:
            reply: pb.ApplyResponse = await self._stub(leader_address, sni).Apply(
                pb.ApplyRequest(command=command, relay=relay), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(exc) from None
        if reply.error == NOT_LEADER:
            raise NotLeaderError(reply.error)
        if reply.error:
            raise HTTPError(reply.error_status or 500, reply.error)
        return orjson.loads(reply.result_json) if reply.result_json else None

    async def read_index(self, leader_address: str, *, sni: str | None = None) -> int:
        try:
            reply: pb.ReadIndexResponse = await self._stub(leader_address, sni).ReadIndex(
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
        self,
        leader_address: str,
        request: pb.HttpRequest,
        timeout: float,
        *,
        sni: str | None = None,
    ) -> pb.HttpResponse:
        try:
            reply: pb.HttpResponse = await self._stub(leader_address, sni).ForwardHTTP(
                request, timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(exc) from None
        if reply.status == 503 and reply.body == NOT_LEADER.encode():
            raise NotLeaderError(NOT_LEADER)
        return reply
