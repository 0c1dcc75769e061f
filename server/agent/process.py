"""The agent process: ``Agent`` runs one Proconsul server agent from a ``RuntimeConfig``.

Parts, started in this order and stopped in reverse:

1. Raft: storage (in memory for ``-dev``, else SQLite + snapshot files under
   ``<data_dir>/raft``), the gRPC transport on the server port, which also carries server RPC
   (``server.rpc``: followers forward to the leader).
2. The HTTP API (``server.endpoints``) on ``client_addr:http_port``.
3. The LAN serf (``server.agent.serf_lan``), joined to ``start_join``/``retry_join``.
4. Raft start. A server with Raft state starts at once. ``-dev``/``-bootstrap`` found a
   one-server cluster. With ``-bootstrap-expect N`` a fresh server waits until it sees N
   servers of its datacenter through serf, none with Raft state, and then founds the cluster
   with exactly those servers (every one of them computes the same set, so they all write the
   same founding configuration). A fresh server that sees a server with state waits to be
   added by that cluster's leader (``server.agent.leader``).
5. Endpoint services (``ctx.services``) and the leadership watcher that tells them when this
   server leads.

Shutdown (SIGTERM/SIGINT, ``PUT /v1/agent/leave``): leave serf gracefully (bounded), stop
HTTP, services and Raft; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gossip.node import GossipNode, MemberInfo
from gossip.serf import MemberEvent, MemberEventKind, Serf
from gossip.transport import TransportError
from raft.core.types import Membership, Server
from raft.node import RaftNode
from raft.storage.base import RaftStorage, SnapshotStore
from raft.storage.memory import MemorySnapshotStore, MemoryStorage
from raft.storage.snapshots import FileSnapshotStore
from raft.storage.sqlite import SqliteStorage
from raft.timing import Timing
from raft.transport.grpc import GrpcTransport
from server.agent.joins import parse_seeds, retry_join, seed_address
from server.agent.leader import LeaderDuties
from server.agent.ports import free_port, port_free
from server.agent.serf_lan import ServerInfo, build_tags, start_lan_serf
from server.agent.servers import ServerPool
from server.agent.wan import WanFederation
from server.config.runtime import RuntimeConfig
from server.dns.relay import RelayCatalog
from server.dns.server import DnsServer
from server.endpoints import build_app
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError
from server.federation.fedstate import federation_services
from server.fsm import ConsulFSM
from server.http.lean import LeanSite
from server.rpc.client import LeaderClient
from server.rpc.service import ServerRPCService
from server.tlsutil import TLSSettings, raft_tls_config

__all__ = ["Agent", "default_node_name", "run_agent"]

log = structlog.get_logger("agent")

LEAVE_TIMEOUT = 5.0


def _dev_ports(config: RuntimeConfig) -> RuntimeConfig:
    """``-dev`` agents on one machine must not collide: a default server or serf port that
    is taken falls back to a free one (a port given explicitly is used as given)."""
    from dataclasses import replace

    host = config.bind_addr or "127.0.0.1"
    changes: dict[str, Any] = {}
    for name, default in (("server_port", 8300), ("serf_lan_port", 8301), ("serf_wan_port", 8302)):
        port = getattr(config, name)
        if port == 0 or (port == default and not port_free(host, port)):
            changes[name] = free_port(host)
    return replace(config, **changes) if changes else config


def _node_id(config: RuntimeConfig) -> str:
    """The node ID: configured, or persisted in ``<data_dir>/node-id``, or new (dev)."""
    if config.node_id:
        return config.node_id
    if config.dev or not config.data_dir:
        return str(uuid.uuid4())
    path = Path(config.data_dir) / "node-id"
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    new = str(uuid.uuid4())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new


#: Settings ``reload`` applies; everything else needs a restart (as in Consul, where ports,
#: addresses, data dir, datacenter and server mode are fixed for the life of the process).
RELOADABLE = (
    "log_level",
    "log_json",
    "services",
    "checks",
    "node_meta",
    "session_ttl_min",
    "check_update_interval",
    "enable_script_checks",
    "enable_local_script_checks",
    "telemetry",
    "autopilot",
    "dns_config",
    "rpc_hold_timeout",
)


class Agent:
    def __init__(
        self, config: RuntimeConfig, reload_config: Callable[[], RuntimeConfig] | None = None
    ) -> None:
        self._reload_config = reload_config
        if config.dev:
            config = _dev_ports(config)
        self.config = config
        self.node_id = _node_id(config)
        self.shutdown_requested = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._leadership_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.is_server = config.server
        self._sqlite: SqliteStorage | None = None
        self._raft_node: RaftNode | None = None
        # TLS for the server port (Raft + server RPC); files read once, here.
        self.tls = TLSSettings.from_config(config)
        self.leader_client = LeaderClient(self.tls, config.domain, config.datacenter)
        self.server_pool: ServerPool | None = None
        if self.is_server:
            self._init_server(config)
        else:
            # A client agent: no Raft, no state store; RPC goes to a server from serf.
            self.ctx = ServerContext(config, None, None)
            self.server_pool = ServerPool(config.datacenter)
            self.ctx.server_pool = self.server_pool
        self.ctx.agent = self
        self.ctx.leader_rpc = self.leader_client
        if self.is_server:
            self.ctx.add_service(LeaderDuties(self.ctx))
            for service in federation_services(self.ctx):
                self.ctx.add_service(service)
        self.ctx.add_service(
            DnsServer(
                self.ctx, catalog=None if self.is_server else RelayCatalog.for_agent(self.ctx)
            )
        )
        self.serf: GossipNode[Serf] | None = None
        self._raft_started = False
        self._leaving = False
        #: The process exit code: 1 after a fatal error (an unknown Raft command).
        self.exit_code = 0
        #: Whether stopping leaves the LAN pool first (set from the signal that stops us).
        self.leave_on_stop = False

    def _init_server(self, config: RuntimeConfig) -> None:
        """Raft, its storage and the server RPC service (servers only)."""
        self.fsm = ConsulFSM()
        self._storage: RaftStorage
        self._snapshots: SnapshotStore
        if config.dev or not config.data_dir:
            self._storage = MemoryStorage()
            self._snapshots = MemorySnapshotStore()
        else:
            raft_dir = Path(config.data_dir) / "raft"
            raft_dir.mkdir(parents=True, exist_ok=True)
            self._sqlite = SqliteStorage(raft_dir / "raft.db")
            self._storage = self._sqlite
            self._snapshots = FileSnapshotStore(raft_dir / "snapshots")
        host = config.http_bind
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        http_base = (
            f"http://[{host}]:{config.http_port}"
            if ":" in host
            else f"http://{host}:{config.http_port}"
        )
        self._raft_node = RaftNode(
            self.node_id,
            fsm=self.fsm,
            storage=self._storage,
            snapshots=self._snapshots,
            transport=GrpcTransport(
                self.node_id,
                f"{config.bind_addr or '0.0.0.0'}:{config.server_port}",
                tls=(
                    raft_tls_config(self.tls, config.datacenter, config.domain)
                    if self.tls is not None
                    else None
                ),
                extra_services=[
                    lambda server: self.rpc_service.add_to(server),
                    lambda server: self.wan.add_grpc_services(server),
                ],
            ),
            timing=Timing(raft_multiplier=config.raft_multiplier, lease_reads=True),
        )
        self.ctx = ServerContext(config, self.fsm, self.raft)
        self.rpc_service = ServerRPCService(self.raft, http_base, self.ctx.apply_raw)
        self.wan = WanFederation(
            config, self.ctx, self.leader_client, lambda: self.raft.is_leader, self.tls
        )

    @property
    def raft(self) -> RaftNode:
        """This server's Raft node (servers only)."""
        assert self._raft_node is not None, "a client agent has no Raft"
        return self._raft_node

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        if not self.is_server:
            await self._start_client()
            return
        if self._sqlite is not None:
            await self._sqlite.open()
        has_state = await self._has_raft_state()
        if cfg.dev or cfg.bootstrap:
            await self.raft.bootstrap(Membership((Server(self.node_id, cfg.server_rpc_address),)))
            has_state = True
        self._runner = web.AppRunner(build_app(self.ctx), access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await LeanSite(self._runner, self.ctx, cfg.http_bind, cfg.http_port).start()
        tags = build_tags(cfg, self.node_id, has_state=has_state)
        self.serf = await self._start_serf(tags)
        self.ctx.serf_lan = self.serf
        await self.wan.start(tags)
        if has_state or not cfg.bootstrap_expect:
            await self._start_raft()
            membership = self.raft.membership
            if membership.voters == {self.node_id}:
                await self.raft.campaign()  # a lone server: no election timeout to wait out
        else:
            self._spawn(self._bootstrap_expect(), "bootstrap-expect")
        joins = list(cfg.start_join) + list(cfg.retry_join)
        if joins:
            self._spawn(self._retry_join(joins), "retry-join")
        for service in self.ctx.services:
            await service.start()
        self._leadership_task = asyncio.create_task(self._watch_leadership(), name="leadership")
        log.info(
            "agent_started",
            node=cfg.node_name,
            id=self.node_id,
            datacenter=cfg.datacenter,
            http=f"{cfg.http_bind}:{cfg.http_port}",
            server=cfg.server_rpc_address,
            serf_lan=f"{self.serf.local_address[0]}:{self.serf.local_address[1]}",
        )

    async def _start_client(self) -> None:
        """A client agent: HTTP (relaying to servers), LAN serf, joins, services."""
        cfg = self.config
        self._runner = web.AppRunner(build_app(self.ctx), access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, cfg.http_bind, cfg.http_port).start()
        self.serf = await self._start_serf(build_tags(cfg, self.node_id, has_state=False))
        self.ctx.serf_lan = self.serf
        joins = list(cfg.start_join) + list(cfg.retry_join)
        if joins:
            self._spawn(self._retry_join(joins), "retry-join")
        self._spawn(self._rebalance_servers(), "server-rebalance")
        for service in self.ctx.services:
            await service.start()
        log.info(
            "agent_started",
            node=cfg.node_name,
            id=self.node_id,
            datacenter=cfg.datacenter,
            mode="client",
            http=f"{cfg.http_bind}:{cfg.http_port}",
            serf_lan=f"{self.serf.local_address[0]}:{self.serf.local_address[1]}",
        )

    async def _start_serf(self, tags: dict[str, str]) -> GossipNode[Serf]:
        """Start the LAN serf. ``-dev`` agents started side by side can race for the same
        free port (checked free, taken by the other before we bind): in dev mode only, a
        failed bind retries on a fresh free port."""
        cfg = self.config
        for attempt in range(5):
            try:
                return await start_lan_serf(cfg, tags, self._on_serf_event)
            except TransportError:
                if not cfg.dev or attempt == 4:
                    raise
                cfg = dataclasses.replace(
                    cfg, serf_lan_port=free_port(cfg.bind_addr or "127.0.0.1")
                )
                self.config = cfg
                self.ctx.config = cfg
        raise AssertionError("unreachable")

    async def _rebalance_servers(self) -> None:
        """Spread client agents over the servers: pick a new preferred server every
        2-3 minutes (Consul rebalances on a similar, size-scaled period)."""
        pool = self.server_pool
        assert pool is not None
        while True:
            await asyncio.sleep(120 + random.uniform(0, 60))
            pool.rebalance()

    async def _has_raft_state(self) -> bool:
        state = await self._storage.load()
        return bool(state.hard_state.term or state.entries or state.snapshot.index)

    async def _start_raft(self) -> None:
        if self._raft_started:
            return
        self._raft_started = True
        await self.raft.start()
        if self.serf is not None:
            tags = build_tags(self.config, self.node_id, has_state=True)
            await self.serf.set_tags(tags)

    async def _bootstrap_expect(self) -> None:
        """Found the cluster once ``bootstrap_expect`` servers are seen (module docstring)."""
        cfg = self.config
        assert self.serf is not None
        while not self._raft_started:
            members = await self.serf.members()
            servers = [
                info
                for info in (ServerInfo.from_member(m) for m in members)
                if info is not None and info.datacenter == cfg.datacenter and info.status == "alive"
            ]
            if any(s.has_state for s in servers if s.node_id != self.node_id):
                log.info("bootstrap_skipped", reason="a server already has raft state")
                await self._start_raft()
                return
            if len(servers) >= cfg.bootstrap_expect:
                mismatched = [
                    s.name for s in servers if s.expect and s.expect != cfg.bootstrap_expect
                ]
                if mismatched:
                    log.error("bootstrap_expect_mismatch", servers=mismatched)
                else:
                    chosen = sorted(servers, key=lambda s: s.node_id)
                    membership = Membership(tuple(Server(s.node_id, s.rpc_address) for s in chosen))
                    await self.raft.bootstrap(membership)
                    log.info("bootstrapped", servers=[s.name for s in chosen])
                    await self._start_raft()
                    return
            await asyncio.sleep(0.2)

    async def _retry_join(self, addresses: list[str]) -> None:
        """Join the LAN pool; retry every ``retry_interval`` (``server.agent.joins``)."""
        assert self.serf is not None
        await retry_join(
            self.serf,
            parse_seeds(addresses, 8301, "lan"),
            retry_max=self.config.retry_max,
            retry_interval=self.config.retry_interval,
            pool="lan",
        )

    async def join(self, addresses: list[str]) -> int:
        assert self.serf is not None
        return await self.serf.join([seed_address(a, 8301) for a in addresses])

    async def join_wan(self, addresses: list[str]) -> int:
        if not self.is_server:
            raise HTTPError(500, "WAN join is only supported on servers")
        return await self.wan.join(addresses)

    async def force_leave(self, node: str, *, prune: bool = False, wan: bool = False) -> None:
        """``consul force-leave``: mark a failed member left (and with ``prune`` forget it);
        Consul's errors for an unknown node and for this agent itself."""
        if wan:
            if not self.is_server:
                raise HTTPError(500, "No WAN pool on this agent")
            await self.wan.force_leave(node, prune)
            return
        if node == self.config.node_name:
            raise HTTPError(500, "Can't force-leave the agent itself")
        if self.serf is None or not await self.serf.force_leave(node, prune):
            raise HTTPError(500, f"No node found with name '{node}'")

    async def reload(self) -> None:
        """Re-read the configuration (``/v1/agent/reload``, SIGHUP) and apply what Consul
        reloads (``RELOADABLE``). A configuration that no longer loads is refused with its
        message (``HTTPError`` 500) and nothing changes."""
        if self._reload_config is None:
            return
        try:
            fresh = await asyncio.to_thread(self._reload_config)
        except Exception as exc:
            raise HTTPError(500, f"Failed reloading config: {exc}") from None
        from server.logging import configure

        configure(fresh.log_level, fresh.log_json)
        changes = {name: getattr(fresh, name) for name in RELOADABLE}
        self.config = dataclasses.replace(self.config, **changes)
        self.ctx.config = self.config
        for service in self.ctx.services:
            hook = getattr(service, "reload_config", None)
            if hook is not None:
                hook()
        log.info("config_reloaded")

    async def leave(self) -> None:
        """Leave the LAN pool gracefully, then shut the agent down."""
        if self._leaving:
            return
        self._leaving = True
        if self.is_server:
            await self.wan.leave(LEAVE_TIMEOUT)
        if self.serf is not None:
            with contextlib.suppress(Exception):
                await self.serf.leave(LEAVE_TIMEOUT)
        self.shutdown_requested.set()

    def _on_serf_event(self, event: object) -> None:
        if self.is_server:
            self.wan.on_lan_event(event)
        if isinstance(event, MemberEvent):
            alive = event.kind in (MemberEventKind.JOIN, MemberEventKind.UPDATE)
            for member in event.members:
                self._learn_server(member.name, member.addr, member.tags, alive)
        for listener in list(self.ctx.event_listeners):
            try:
                listener(event)
            except Exception as exc:
                log.warning("serf_listener_failed", error=repr(exc))

    def _learn_server(self, name: str, addr: tuple[str, int], tags: Any, alive: bool) -> None:
        """A server of this datacenter seen through serf: Raft learns how to reach it (on a
        server); the server pool adds or drops it (on a client)."""
        info = ServerInfo.from_member(MemberInfo(name, addr, "alive", tags))
        if info is None or info.datacenter != self.config.datacenter:
            return
        self.ctx.server_names[info.node_id] = info.name
        if self.server_pool is not None:
            self.server_pool.update(info.name, info.rpc_address, info.datacenter, alive)
        elif alive:
            self.raft.learn_peer(info.node_id, info.rpc_address)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_leadership(self) -> None:
        """Tell every service when this server gains or loses leadership (polls the Raft
        role; leader-only loops tolerate the ~50 ms lag)."""
        was_leader = False
        while True:
            raft = self._raft_node
            if (
                raft is not None
                and raft.fatal_error is not None
                and not self.shutdown_requested.is_set()
            ):
                log.critical("raft_stopped_fatal", error=str(raft.fatal_error))
                self.exit_code = 1
                self.shutdown_requested.set()
            is_leader = self._raft_started and raft is not None and raft.is_leader
            if is_leader != was_leader:
                was_leader = is_leader
                log.info("leadership_changed", leader=is_leader)
                for service in self.ctx.services:
                    try:
                        await service.leadership_changed(is_leader)
                    except Exception as exc:
                        log.warning(
                            "leadership_hook_failed", service=repr(service), error=repr(exc)
                        )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.serf is not None and self.leave_on_stop and not self._leaving:
            self._leaving = True
            if self.is_server:
                await self.wan.leave(LEAVE_TIMEOUT)
            with contextlib.suppress(Exception):
                await self.serf.leave(LEAVE_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        if self._leadership_task is not None:
            self._leadership_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leadership_task
        self.ctx.close()
        for service in reversed(self.ctx.services):
            with contextlib.suppress(Exception):
                await service.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.serf is not None:
            with contextlib.suppress(Exception):
                await self.serf.stop()
        if self.is_server:
            with contextlib.suppress(Exception):
                await self.wan.stop()
            with contextlib.suppress(Exception):
                await self.rpc_service.close()
        with contextlib.suppress(Exception):
            await self.leader_client.close()
        await self.stop_raft()
        log.info("agent_stopped", node=self.config.node_name)

    async def stop_raft(self) -> None:
        """Stop Raft and close its storage (idempotent; the SQLite worker thread would keep
        the process alive otherwise)."""
        if self._raft_started:
            self._raft_started = False
            await self.raft.stop()
        elif self._sqlite is not None:
            sqlite, self._sqlite = self._sqlite, None
            await sqlite.close()


async def run_agent(
    config: RuntimeConfig, reload_config: Callable[[], RuntimeConfig] | None = None
) -> int:
    """Run an agent until SIGINT/SIGTERM or a leave; SIGHUP reloads. Returns the exit code."""
    agent = Agent(config, reload_config)
    try:
        await agent.start()
    except BaseException:
        # Whatever started (Raft, gRPC, serf, listeners) is stopped before the error surfaces.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await agent.stop()
        raise
    loop = asyncio.get_running_loop()

    def on_signal(leave: bool) -> None:
        # Consul's leave_on_terminate (default: clients yes, servers no) and
        # skip_leave_on_interrupt (default: clients no, servers yes): a server restarted by
        # its supervisor stays in the Raft configuration; ``leave`` always leaves.
        agent.leave_on_stop = agent.leave_on_stop or leave
        agent.shutdown_requested.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal, config.leave_on_terminate)
    loop.add_signal_handler(signal.SIGINT, on_signal, not config.skip_leave_on_interrupt)

    def on_hup() -> None:
        task = loop.create_task(agent.reload(), name="reload")
        task.add_done_callback(
            lambda t: (
                t.cancelled()
                or t.exception() is None
                or log.error("reload_failed", error=str(t.exception()))
            )
        )

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if config.pid_file:
        Path(config.pid_file).write_text(f"{os.getpid()}\n")
    try:
        await agent.shutdown_requested.wait()
        try:
            async with asyncio.timeout(10):
                await agent.stop()
        except TimeoutError:
            log.error("shutdown_timed_out")
            await agent.stop_raft()
    finally:
        if config.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(config.pid_file)
    return agent.exit_code


def default_node_name() -> str:
    return socket.gethostname() or "proconsul"
