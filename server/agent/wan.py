"""A server's part in WAN federation: the WAN serf pool, the router fed from it, cross-DC RPC,
and — federating through mesh gateways — the gateway locator, the wanfed gossip transport and
the secondary's handshake with the primary.

Tasks (all owned here; cancelled by ``stop``):

- ``wan-router``: re-reads the WAN members into the router after every WAN member event
  (coalesced) and every 5 s (statuses change without events only through serf's own events,
  the timer is a safety net).
- ``wan-flood``: every 60 s and after every LAN member event, joins the live servers of this
  datacenter into the WAN pool at ``<lan ip>:<wan_join_port>`` (Consul's flooder), so every
  server is in the WAN pool even when only one was told ``-retry-join-wan``.
- ``wan-retry-join``: ``start_join_wan``/``retry_join_wan`` (traditional mode), every
  ``retry_interval_wan`` until one join succeeds or ``retry_max_wan`` attempts.
- ``wan-rejoin``: at start, joins the WAN peers remembered from the last run
  (``server.agent.peer_snapshot``; written by ``wan-router`` when the alive set changes).
- Through mesh gateways, in a secondary: ``primary-gateways`` resolves ``primary_gateways``
  every ``primary_gateways_interval`` until it yields addresses (the locator's fallback);
  ``wan-join-primary`` joins the placeholder member ``*.<primary>`` (Consul's
  ``192.0.2.2``; the transport dials it as ``server.<primary>.<domain>`` through a gateway)
  every ``retry_interval_wan`` while no live primary server is in the WAN pool. Consul stops
  after the first success; we keep watching so that a secondary that lost every primary
  member (a long partition) joins again by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from gossip.messages import Address
from gossip.node import GossipNode
from gossip.serf import MemberEvent, Serf
from gossip.transport import GossipTransport, NetTransport, TransportError
from server.agent.joins import parse_seeds, retry_join, seed_address
from server.agent.peer_snapshot import PeerSnapshot
from server.agent.ports import free_port
from server.agent.serf_wan import start_wan_serf, wan_name
from server.config.runtime import RuntimeConfig
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError
from server.federation.locator import GatewayLocator
from server.federation.remote import RemoteRPC
from server.federation.router import Router, parse_member
from server.rpc.client import LeaderClient
from server.tlsutil import TLSSettings, server_sni

__all__ = ["PLACEHOLDER_HOST", "WanFederation", "wanfed_enabled"]

log = structlog.get_logger("wan")

#: The address of the placeholder member a secondary joins (Consul's TEST-NET-1 address).
PLACEHOLDER_HOST = "192.0.2.2"
FLOOD_INTERVAL = 60.0
ROUTER_REFRESH = 5.0
JOIN_DISABLED = "WAN join is disabled when wan federation via mesh gateways is enabled"


def wanfed_enabled(config: RuntimeConfig) -> bool:
    return bool(config.connect.get("enable_mesh_gateway_wan_federation"))


class WanFederation:
    def __init__(
        self,
        config: RuntimeConfig,
        ctx: ServerContext,
        rpc: LeaderClient,
        is_leader: Callable[[], bool],
        tls: TLSSettings | None,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.primary_dc = config.primary_datacenter or config.datacenter
        self.is_primary = self.primary_dc == config.datacenter
        self.wanfed = wanfed_enabled(config)
        self.domain = config.domain.rstrip(".")
        self.router = Router(config.datacenter, random.Random())
        self.locator = (
            GatewayLocator(config.datacenter, self.primary_dc, random.Random())
            if self.wanfed
            else None
        )
        self._is_leader = is_leader
        self.remote = RemoteRPC(
            local_dc=config.datacenter,
            primary_dc=self.primary_dc,
            domain=config.domain,
            router=self.router,
            rpc=rpc,
            locator=self.locator,
            is_leader=is_leader,
        )
        ctx.router, ctx.remote, ctx.locator = self.router, self.remote, self.locator
        self.serf: GossipNode[Serf] | None = None
        self._tls = tls
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresh = asyncio.Event()
        self._fallback_ready = asyncio.Event()
        #: WAN address -> (node, dc) of every server in the WAN pool, rebuilt with the router
        #: (the wanfed transport also learns senders from its tunnel headers).
        self._peers: dict[Address, tuple[str, str]] = {}
        #: The WAN peers of our last run (``<data_dir>/serf/remote.peers``; not with -dev).
        self._snapshot = (
            PeerSnapshot(Path(config.data_dir) / "serf" / "remote.peers")
            if config.data_dir and not config.dev
            else None
        )
        self._remembered: dict[Address, tuple[str, str]] = {}
        self._flood = asyncio.Event()
        self.transport: Any = None
        self._servicer: Any = None
        if self.wanfed:
            self._build_wanfed_transport()

    # --- wanfed transport ------------------------------------------------------------------

    def _build_wanfed_transport(self) -> None:
        from server.federation.wan_transport import WanFedTransport, WanGossipServicer

        cfg = self.config
        net = NetTransport((cfg.bind_addr or "0.0.0.0", cfg.serf_wan_port))
        assert self._tls is not None, "config validation requires TLS for wanfed"
        from server.tlsutil import grpc_channel_credentials

        self.transport = WanFedTransport(
            net,
            local_dc=cfg.datacenter,
            node=cfg.node_name,
            peer_of=self._peer_of,
            routes=self._routes,
            channel_credentials=grpc_channel_credentials(self._tls),
        )
        self._servicer = WanGossipServicer(self.transport)

    def add_grpc_services(self, server: Any) -> None:
        """Register the wanfed gossip service on the server port (before it starts)."""
        if self._servicer is not None:
            self._servicer.add_to(server)

    def _peer_of(self, addr: Address) -> tuple[str, str] | None:
        """(node, dc) of the WAN member at ``addr``: the placeholder is ``*.<primary>``.
        Called by the transport from the gossip loop: reads only the prebuilt table."""
        if addr[0] == PLACEHOLDER_HOST:
            return ("*", self.primary_dc)
        return self._peers.get((addr[0], addr[1]))

    def _routes(self, dc: str, node: str) -> list[tuple[str, str]]:
        if self.locator is None:
            return []
        gateways = self.locator.pick(dc, is_leader=self._is_leader())
        sni = server_sni(dc, node, self.domain)
        return [(g, sni) for g in gateways]

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, tags: dict[str, str]) -> None:
        cfg = self.config
        transport: GossipTransport | None = self.transport
        advertise: Address | None = None
        if transport is not None:
            bound = await self.transport.bind()
            advertise = (cfg.advertise_addr_wan or cfg.advertise, bound[1])
            self.transport.advertise = advertise
        saved = self._snapshot.load() if self._snapshot is not None else {}
        seeds: list[Address] = []
        for name, text in saved.items():
            node, _, dc = name.rpartition(".")
            try:
                addr = seed_address(text, 8302)
            except ValueError:
                continue
            if node and dc:
                self._remembered[addr] = (node, dc)
                seeds.append(addr)
        self._peers = dict(self._remembered)
        for attempt in range(5):
            try:
                self.serf = await start_wan_serf(
                    cfg, tags, self._on_event, transport, advertise=advertise
                )
                break
            except TransportError:
                # -dev agents started side by side can race for the same free port (checked
                # free, taken before we bind): in dev mode only, retry on a fresh one.
                if not cfg.dev or transport is not None or attempt == 4:
                    raise
                cfg = self.config = dataclasses.replace(
                    cfg, serf_wan_port=free_port(cfg.bind_addr or "127.0.0.1")
                )
        self.ctx.serf_wan = self.serf
        await self._update_router()
        self._spawn(self._router_loop(), "wan-router")
        self._spawn(self._flood_loop(), "wan-flood")
        if seeds:
            self._spawn(self._rejoin(seeds), "wan-rejoin")
        joins = list(cfg.start_join_wan) + list(cfg.retry_join_wan)
        if joins and not self.wanfed:
            self._spawn(self._retry_join(joins), "wan-retry-join")
        if self.wanfed and not self.is_primary:
            self._spawn(self._resolve_primary_gateways(), "primary-gateways")
            self._spawn(self._join_primary(), "wan-join-primary")

    async def leave(self, timeout: float) -> None:
        if self.serf is not None:
            with contextlib.suppress(Exception):
                await self.serf.leave(timeout)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.serf is not None:
            with contextlib.suppress(Exception):
                await self.serf.stop()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- events, router, flood -------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        if isinstance(event, MemberEvent):
            self._refresh.set()

    def on_lan_event(self, event: object) -> None:
        """A LAN serf event (from the agent): a joining server is flooded into the WAN."""
        if isinstance(event, MemberEvent):
            self._flood.set()

    async def _update_router(self) -> None:
        if self.serf is None:
            return
        members = await self.serf.members()
        self.router.update((m.name, m.addr, m.status, m.tags) for m in members)
        peers: dict[Address, tuple[str, str]] = {}
        for m in members:
            server = parse_member(m.name, m.addr, m.status, m.tags)
            if server is not None:
                peers[(m.addr[0], m.addr[1])] = (server.node, server.datacenter)
        self._peers = {**self._remembered, **peers}
        if self._snapshot is not None:
            me = wan_name(self.config)
            alive = {
                m.name: f"{m.addr[0]}:{m.addr[1]}"
                for m in members
                if m.status == "alive" and m.name != me and (m.addr[0], m.addr[1]) in peers
            }
            await self._snapshot.save(alive)

    async def _router_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ROUTER_REFRESH):
                    await self._refresh.wait()
            self._refresh.clear()
            try:
                await self._update_router()
            except Exception as exc:
                log.warning("wan_router_refresh_failed", error=repr(exc))

    async def _flood_loop(self) -> None:
        while True:
            try:
                await self._flood_once()
            except Exception as exc:
                log.info("wan_flood_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLOOD_INTERVAL):
                    await self._flood.wait()
            self._flood.clear()
            await asyncio.sleep(0.2)  # let a burst of LAN events settle

    async def _flood_once(self) -> None:
        lan, wan = self.ctx.serf_lan, self.serf
        if lan is None or wan is None:
            return
        in_wan = {m.name for m in await wan.members() if m.status == "alive"}
        seeds: list[Address] = []
        for member in await lan.members():
            tags = member.tags
            if (
                member.status != "alive"
                or tags.get("role") != "consul"
                or tags.get("dc") != self.config.datacenter
                or f"{member.name}.{self.config.datacenter}" in in_wan
            ):
                continue
            try:
                port = int(tags.get("wan_join_port", ""))
            except ValueError:
                continue
            seeds.append((member.addr[0], port))
        if seeds:
            joined = await wan.join(seeds)
            log.info("wan_flood_joined", servers=joined)

    # --- joins -----------------------------------------------------------------------------

    async def join(self, addresses: list[str]) -> int:
        """``/v1/agent/join/<addr>?wan=1``; refused when federating through gateways."""
        if self.wanfed:
            raise HTTPError(500, JOIN_DISABLED)
        assert self.serf is not None
        return await self.serf.join([seed_address(a, 8302) for a in addresses])

    async def force_leave(self, node: str, prune: bool) -> None:
        if self.serf is None:
            raise HTTPError(500, "No WAN pool on this agent")
        if node == wan_name(self.config):
            raise HTTPError(500, "Can't force-leave the agent itself")
        if not await self.serf.force_leave(node, prune):
            raise HTTPError(500, f"No node found with name '{node}'")

    async def _retry_join(self, addresses: list[str]) -> None:
        assert self.serf is not None
        await retry_join(
            self.serf,
            parse_seeds(addresses, 8302, "wan"),
            retry_max=self.config.retry_max_wan,
            retry_interval=self.config.retry_interval_wan,
            pool="wan",
        )

    async def _rejoin(self, seeds: list[Address]) -> None:
        """Join the WAN peers of our last run (a restarted server that nobody re-joins, e.g.
        the only server of a primary, would otherwise wait for the next push-pull of a remote
        member, minutes). Tries for about a minute, then leaves it to the other joins."""
        assert self.serf is not None
        for attempt in range(1, 13):
            try:
                joined = await self.serf.join(seeds)
            except Exception as exc:
                log.info("wan_rejoin_failed", attempt=attempt, error=str(exc))
            else:
                if joined:
                    log.info("wan_rejoined", members=joined)
                    self._refresh.set()
                    return
            await asyncio.sleep(min(1.0 * attempt, 10.0))

    async def _resolve_primary_gateways(self) -> None:
        """Resolve ``primary_gateways`` into the locator's fallback (Consul: until the list is
        non-empty, every ``primary_gateways_interval``)."""
        assert self.locator is not None
        while True:
            addresses = await asyncio.to_thread(_resolve, list(self.config.primary_gateways))
            if addresses:
                self.locator.set_fallback(addresses)
                self._fallback_ready.set()
                log.info("primary_gateways_resolved", addresses=addresses)
                return
            log.warning("primary_gateways_none", hint="No mesh gateways found")
            await asyncio.sleep(self.config.primary_gateways_interval)

    async def _join_primary(self) -> None:
        """Join the WAN pool through the primary's gateways (module docstring)."""
        assert self.serf is not None and self.locator is not None
        placeholder: Address = (PLACEHOLDER_HOST, self.config.serf_wan_port or 8302)
        # No gateway to dial before primary_gateways resolved (or federation states named one).
        while not self._fallback_ready.is_set() and not self.locator.primary_gateways_known():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._fallback_ready.wait()
        attempt = 0
        while True:
            if not self._primary_alive():
                attempt += 1
                try:
                    joined = await self.serf.join([placeholder])
                    if joined:
                        log.info("wan_joined_primary", attempt=attempt)
                        await self._update_router()
                except Exception as exc:
                    log.info("wan_join_primary_failed", attempt=attempt, error=str(exc))
                    if self.config.retry_max_wan and attempt >= self.config.retry_max_wan:
                        log.error("retry_join_wan_gave_up", attempts=attempt)
                        return
            delay = self.config.retry_interval_wan if attempt > 1 else 1.0
            await asyncio.sleep(min(delay, self.config.retry_interval_wan))

    def _primary_alive(self) -> bool:
        return any(s.alive for s in self.router.servers(self.primary_dc))


def _resolve(entries: list[str]) -> list[str]:
    """host:port entries resolved to ip:port (names through the system resolver); entries
    that do not resolve are skipped."""
    out: list[str] = []
    for entry in entries:
        host, _, port = entry.rpartition(":")
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            continue
        for info in infos:
            ip = str(info[4][0])
            out.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return sorted(set(out))
