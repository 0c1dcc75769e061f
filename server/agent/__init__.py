"""The agent process: ``Agent`` runs one Proconsul agent from a ``RuntimeConfig``.

Today the agent is a server: ``-dev`` runs one in-memory Raft server that elects itself; the
HTTP API (``server.endpoints``) serves the state store through a ``ServerContext``. Server mode
with LAN serf discovery and client agents build on this (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

import structlog
from aiohttp import web

from raft.core.types import Membership, Server
from raft.node import RaftNode
from raft.storage.memory import MemorySnapshotStore, MemoryStorage
from raft.timing import Timing
from raft.transport.grpc import GrpcTransport
from server.config.runtime import RuntimeConfig
from server.endpoints import build_app
from server.endpoints.context import ServerContext
from server.fsm import ConsulFSM

__all__ = ["Agent", "default_node_name", "run_agent"]

log = structlog.get_logger("agent")


class Agent:
    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.fsm = ConsulFSM()
        self.raft = RaftNode(
            config.node_name,
            fsm=self.fsm,
            storage=MemoryStorage(),
            snapshots=MemorySnapshotStore(),
            transport=GrpcTransport(config.node_name, config.server_rpc_address),
            timing=Timing(raft_multiplier=config.raft_multiplier),
        )
        self.ctx = ServerContext(config, self.fsm, self.raft)
        self.ctx.agent = self
        self.shutdown_requested = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._leadership_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        await self.raft.bootstrap(Membership((Server(cfg.node_name, cfg.server_rpc_address),)))
        await self.raft.start()
        # Blocking queries are woken by ctx.close(); the timeout only bounds other requests.
        self._runner = web.AppRunner(build_app(self.ctx), access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, cfg.http_bind, cfg.http_port).start()
        for service in self.ctx.services:
            await service.start()
        self._leadership_task = asyncio.create_task(self._watch_leadership(), name="leadership")
        log.info(
            "agent_started",
            node=cfg.node_name,
            datacenter=cfg.datacenter,
            http=f"{cfg.http_bind}:{cfg.http_port}",
            server=cfg.server_rpc_address,
        )

    async def _watch_leadership(self) -> None:
        """Tell every service when this server gains or loses leadership (polls the Raft
        role; leader-only loops tolerate the ~50 ms lag)."""
        was_leader = False
        while True:
            is_leader = self.raft.is_leader
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
        await self.raft.stop()
        log.info("agent_stopped", node=self.config.node_name)


async def run_agent(config: RuntimeConfig) -> None:
    agent = Agent(config)
    await agent.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.shutdown_requested.set)
    await agent.shutdown_requested.wait()
    with contextlib.suppress(Exception):
        await agent.stop()


def default_node_name() -> str:
    return socket.gethostname() or "proconsul"
