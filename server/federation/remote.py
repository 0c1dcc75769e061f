"""Server RPC to another datacenter (Consul's ``forwardDC``): an HTTP API request or a Raft
command handed to a server of that datacenter, which handles it as a request to its own API
(stale reads there, everything else through its leader).

Where a request goes:

- Traditional federation: straight to the remote server's RPC address (its WAN address with
  its ``port`` tag), in ``Router.route`` order.
- Through mesh gateways: to a gateway the locator picks (``GatewayLocator.pick``), with the TLS
  server name ``<node>.server.<dc>.<domain>`` for each known server of that datacenter, then
  ``server.<dc>.<domain>`` (any healthy server there; also the only name used for the primary
  before the WAN pool knows its servers — the secondary's first contact).

Failures: a server that could not be reached (nothing was sent) is reported to the router and
the next one is tried; a read that failed after it was sent is retried on the next; a write
that may have been acted on is not retried. Errors are Consul's texts as ``HTTPError`` 500:
"No path to datacenter" (unknown datacenter) and "Remote DC has no server currently
reachable" (known, none reachable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from proto import server_rpc_pb2 as pb
from server.endpoints.http import HTTPError
from server.federation.locator import GatewayLocator
from server.federation.router import (
    ERR_DC_NOT_AVAILABLE,
    DCNotAvailableError,
    NoPathError,
    Router,
)
from server.rpc.client import LeaderClient
from server.rpc.errors import NotLeaderError, NotSentError
from server.tlsutil import server_sni

__all__ = ["RemoteRPC", "Target"]

log = structlog.get_logger("federation")

#: (address to dial, TLS server name, WAN member name or "" for "any server").
Target = tuple[str, str, str]


class RemoteRPC:
    def __init__(
        self,
        *,
        local_dc: str,
        primary_dc: str,
        domain: str,
        router: Router,
        rpc: LeaderClient,
        locator: GatewayLocator | None,
        is_leader: Callable[[], bool],
    ) -> None:
        self.local_dc = local_dc
        self.primary_dc = primary_dc
        self.domain = domain.rstrip(".")
        self.router = router
        self.rpc = rpc
        self.locator = locator
        self._is_leader = is_leader

    def targets(self, dc: str) -> list[Target]:
        """Where to send a request for ``dc``, in order. Raises ``HTTPError`` (module doc)."""
        now = time.monotonic()
        try:
            servers = self.router.route(dc, now)
        except NoPathError:
            if self.locator is None or dc != self.primary_dc:
                raise HTTPError(500, str(NoPathError())) from None
            servers = []
        except DCNotAvailableError:
            if self.locator is None:
                raise HTTPError(500, ERR_DC_NOT_AVAILABLE) from None
            servers = []
        if self.locator is None:
            return [(s.rpc_address, server_sni(dc, s.node, self.domain), s.name) for s in servers]
        gateways = self.locator.pick(dc, is_leader=self._is_leader())
        if not gateways:
            raise HTTPError(500, ERR_DC_NOT_AVAILABLE)
        out: list[Target] = [
            (gateways[i % len(gateways)], server_sni(dc, s.node, self.domain), s.name)
            for i, s in enumerate(servers)
        ]
        # "Any server of dc" through every gateway: the gateway picks a healthy one.
        out.extend((g, server_sni(dc, "", self.domain), "") for g in gateways)
        return out

    async def forward_http(
        self, dc: str, request: pb.HttpRequest, timeout: float
    ) -> pb.HttpResponse:
        request.relay = True
        read = request.method in ("GET", "HEAD")
        for address, sni, name in self.targets(dc):
            try:
                reply = await self.rpc.forward_http(address, request, timeout, sni=sni)
            except (NotSentError, NotLeaderError) as exc:
                self._failed(name, address, exc)
                continue
            except HTTPError as exc:
                if not read:
                    raise
                self._failed(name, address, exc)
                continue
            if name:
                self.router.succeeded(name)
            return reply
        raise HTTPError(500, ERR_DC_NOT_AVAILABLE)

    async def apply(self, dc: str, command: bytes) -> Any:
        for address, sni, name in self.targets(dc):
            try:
                result = await self.rpc.apply(address, command, relay=True, sni=sni)
            except NotSentError as exc:
                self._failed(name, address, exc)
                continue
            if name:
                self.router.succeeded(name)
            return result
        raise HTTPError(500, ERR_DC_NOT_AVAILABLE)

    def _failed(self, name: str, address: str, exc: Exception) -> None:
        log.info("remote_rpc_failed", server=name or "*", address=address, error=str(exc))
        if name:
            self.router.failed(name, time.monotonic())
