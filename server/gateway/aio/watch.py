"""What the gateway learns from its local agent, through blocking queries (aiohttp).

- ``GET /v1/agent/self`` once (retried until the agent answers): the datacenter name and the
  agent's advertise addresses (the defaults of ``-address``/``-wan-address``);
- ``GET /v1/health/service/consul`` (blocking): the local servers;
- ``GET /v1/internal/federation-states/mesh-gateways`` (blocking): the remote gateways. A 404
  (an agent without the endpoint) means "no remote gateways" and is asked again every
  :data:`MISSING_RETRY` seconds.

Invariants: the routing table is published (``on_table``) only once the local servers list
has arrived (Consul's wanfed gateway snapshot is invalid until then), and again after every
change of either input. An error (agent down, non-200, unparseable answer) keeps the last
published table and retries after a back-off growing from :data:`BACKOFF_MIN` to
:data:`BACKOFF_MAX`; an index that goes backwards (agent restarted) restarts the query at 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from server.clicmd.api import Client
from server.gateway.routes import Address, RoutingTable
from server.gateway.tables import LocalServers, build_table, local_servers, remote_gateways

__all__ = ["AgentClient", "AgentError", "AgentInfo", "Watcher", "agent_info", "wait_or_stop"]

log = structlog.get_logger("gateway")

BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
WAIT = "60s"  # blocking query wait
WAIT_TIMEOUT = 75.0  # client timeout of a blocking query
MISSING_RETRY = 10.0
FEDERATION_PATH = "/v1/internal/federation-states/mesh-gateways"


class AgentError(Exception):
    pass


class AgentClient:
    """A tiny client for the local agent's HTTP API (token header, TLS as the flags say)."""

    def __init__(self, endpoint: Client) -> None:
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        e = self.endpoint
        if e.scheme != "https":
            return False
        ctx = ssl.create_default_context(cafile=e.ca_file or None, capath=e.ca_path or None)
        if e.client_cert:
            ctx.load_cert_chain(e.client_cert, e.client_key or None)
        if not e.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"X-Consul-Token": self.endpoint.token} if self.endpoint.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=0),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float = 10.0,
    ) -> tuple[int, int, Any]:
        """(status, X-Consul-Index, decoded JSON or None). Raises AgentError on I/O."""
        url = self.endpoint.base.rstrip("/") + path
        data = None if body is None else json.dumps(body)
        try:
            async with self.session().request(
                method,
                url,
                params=params,
                data=data,
                timeout=aiohttp.ClientTimeout(total=timeout),
                server_hostname=self.endpoint.tls_server_name or None,
            ) as resp:
                raw = await resp.read()
                try:
                    index = int(resp.headers.get("X-Consul-Index", "0"))
                except ValueError:
                    index = 0
                decoded: Any = None
                if resp.status == 200 and raw.strip():
                    decoded = json.loads(raw)
                return resp.status, index, decoded
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
            raise AgentError(f"{method} {path}: {err or type(err).__name__}") from err

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True)
class AgentInfo:
    datacenter: str
    lan_address: str
    wan_address: str


async def agent_info(client: AgentClient, stop: asyncio.Event) -> AgentInfo | None:
    """``/v1/agent/self``, retried with back-off until it answers (None once ``stop`` is set)."""
    backoff = BACKOFF_MIN
    while not stop.is_set():
        try:
            status, _, body = await client.request("GET", "/v1/agent/self")
            if status == 200 and isinstance(body, dict):
                cfg = body.get("Config") or {}
                debug = body.get("DebugConfig") or {}
                member = body.get("Member") or {}
                lan = str(debug.get("AdvertiseAddrLAN") or member.get("Addr") or "127.0.0.1")
                wan = str(debug.get("AdvertiseAddrWAN") or lan)
                return AgentInfo(str(cfg.get("Datacenter") or "dc1"), lan, wan)
            log.warning("agent self: unexpected answer", status=status)
        except AgentError as err:
            log.warning("agent not reachable yet", error=str(err))
        await wait_or_stop(stop, backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)
    return None


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Watcher:
    """The two blocking-query loops and the table they build."""

    def __init__(
        self,
        client: AgentClient,
        datacenter: str,
        *,
        domain: str,
        trust_domain: str | None,
        expose_servers: bool,
        on_table: Callable[[RoutingTable], None],
        stop: asyncio.Event,
    ) -> None:
        self.client = client
        self.datacenter = datacenter
        self.domain = domain
        self.trust_domain = trust_domain
        self.expose_servers = expose_servers
        self.on_table = on_table
        self.stop = stop
        self.servers: LocalServers | None = None
        self.gateways: dict[str, list[Address]] = {}

    async def run(self) -> None:
        await asyncio.gather(
            self._loop("/v1/health/service/consul", self._on_servers),
            self._loop(FEDERATION_PATH, self._on_gateways, missing_ok=True),
        )

    def _on_servers(self, body: Any) -> bool:
        found = local_servers(body)
        changed = found != self.servers
        self.servers = found
        return changed

    def _on_gateways(self, body: Any) -> bool:
        found = remote_gateways(body if body is not None else {})
        changed = found != self.gateways
        self.gateways = found
        return changed

    def _publish(self) -> None:
        if self.servers is None:
            return
        self.on_table(
            build_table(
                self.datacenter,
                self.domain,
                self.servers,
                self.gateways,
                expose_servers=self.expose_servers,
                trust_domain=self.trust_domain,
            )
        )

    async def _loop(
        self, path: str, handle: Callable[[Any], bool], *, missing_ok: bool = False
    ) -> None:
        index = 0
        backoff = BACKOFF_MIN
        first = True
        while not self.stop.is_set():
            params = {"index": str(index), "wait": WAIT} if index > 0 else {}
            try:
                status, new_index, body = await self.client.request(
                    "GET", path, params=params, timeout=WAIT_TIMEOUT
                )
            except AgentError as err:
                log.warning("watch failed; keeping the last routes", path=path, error=str(err))
                await wait_or_stop(self.stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if status == 404 and missing_ok:
                if handle(None) or first:
                    self._publish()
                first = False
                index = 0
                await wait_or_stop(self.stop, MISSING_RETRY)
                continue
            if status != 200:
                log.warning("watch: unexpected status; keeping the last routes", path=path, status=status)  # fmt: skip
                await wait_or_stop(self.stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            try:
                changed = handle(body)
            except (TypeError, ValueError, AttributeError) as err:
                log.warning("watch: unusable answer; keeping the last routes", path=path, error=str(err))  # fmt: skip
                await wait_or_stop(self.stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            if changed or first:
                self._publish()
            first = False
            index = 0 if new_index < index else max(new_index, 1)
