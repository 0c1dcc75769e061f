"""The agent process. Today: the ``-dev`` server — one in-memory Raft server that elects itself,
applies commands to the state store (``server.fsm.ConsulFSM``) and serves the status and KV
endpoints of the HTTP API. The catalog, sessions and the rest of the API arrive with the
server-agent issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from dataclasses import dataclass

import structlog
from aiohttp import web

from raft.core.types import Membership, Server
from raft.node import RaftNode
from raft.storage.memory import MemorySnapshotStore, MemoryStorage
from raft.timing import Timing
from raft.transport.grpc import GrpcTransport
from server.fsm import ConsulFSM
from server.http_kv import KVEndpoint, register_kv_routes

log = structlog.get_logger("agent")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str
    datacenter: str = "dc1"
    client_addr: str = "127.0.0.1"
    bind_addr: str = "127.0.0.1"
    http_port: int = 8500
    server_port: int = 8300
    dev: bool = True

    @property
    def server_address(self) -> str:
        return f"{self.bind_addr}:{self.server_port}"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.fsm = ConsulFSM()
        self.raft = RaftNode(
            config.node_name,
            fsm=self.fsm,
            storage=MemoryStorage(),
            snapshots=MemorySnapshotStore(),
            transport=GrpcTransport(config.node_name, config.server_address),
            # Consul's dev mode runs Raft at multiplier 1 (production default is 5).
            timing=Timing(raft_multiplier=1),
        )
        self._runner: web.AppRunner | None = None
        self._kv: KVEndpoint | None = None

    async def start(self) -> None:
        cfg = self.config
        await self.raft.bootstrap(Membership((Server(cfg.node_name, cfg.server_address),)))
        await self.raft.start()
        app = web.Application()
        app.router.add_get("/", self.root)
        app.router.add_get("/v1/status/leader", self.status_leader)
        app.router.add_get("/v1/status/peers", self.status_peers)
        self._kv = register_kv_routes(app, self.fsm, self.raft)
        # Blocking queries are woken by stop(); the timeout only bounds other slow requests.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, cfg.client_addr, cfg.http_port).start()
        log.info(
            "agent_started",
            node=cfg.node_name,
            datacenter=cfg.datacenter,
            http=f"{cfg.client_addr}:{cfg.http_port}",
            server=cfg.server_address,
        )

    async def stop(self) -> None:
        if self._kv is not None:
            self._kv.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.raft.stop()
        log.info("agent_stopped", node=self.config.node_name)

    async def status_leader(self, request: web.Request) -> web.Response:
        # Consul answers the leader's server RPC address as a JSON string, "" when none.
        return web.json_response(self.raft.leader_address() or "")

    async def root(self, request: web.Request) -> web.Response:
        # Clients and load balancers use "/" as a health URL: any 200 will do (Consul
        # serves its UI or a short text there).
        return web.Response(text="Consul Agent: Proconsul\n")

    async def status_peers(self, request: web.Request) -> web.Response:
        voters = self.raft.membership.voters
        return web.json_response(
            [s.address for s in self.raft.membership.servers if s.id in voters]
        )


async def run_agent(config: AgentConfig) -> None:
    agent = Agent(config)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):
        await agent.stop()


def default_node_name() -> str:
    return socket.gethostname() or "proconsul"
