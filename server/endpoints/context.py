"""``ServerContext``: what every endpoint module gets — the state store, Raft writes (forwarded
to the leader when this server is not it), reads with Consul's consistency modes and blocking
queries, and the agent's other parts (local state, serf, config).

Writes: ``await ctx.apply(MessageType.X, body)`` proposes the command on the leader and returns
the FSM's result. On a follower it is sent to the leader over server RPC; with no known leader
it waits up to ``rpc_hold_timeout`` (Consul's 7 s) for one, then fails with Consul's
``No cluster leader`` (a 500).

Reads: ``await ctx.read(request, opts, fn)`` where ``fn(store, ws) -> (index, result)``:

* ``?stale``: read the local store as it is;
* default and ``?consistent``: a ReadIndex on the leader (served from the leader lease while it
  holds, else a heartbeat round; never before the leader has applied an entry of its own term),
  so reads are linearizable; on a follower a ReadIndex from the leader first, then the read
  waits for that index locally (the HTTP layer normally forwards such reads to the leader).

With ``?index=N`` the read blocks until its index passes N or the wait ends, watching exactly
the channels ``fn`` added to ``ws``. The answer's headers (``ctx.headers(meta)``) are
``X-Consul-Index`` (never 0), ``X-Consul-KnownLeader``, ``X-Consul-LastContact`` and
``X-Consul-Effective-Consistency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import web

from raft.core.types import NotLeader
from raft.node import RaftNode
from server.commands.types import MessageType
from server.config.runtime import RuntimeConfig
from server.endpoints.http import HTTPError, QueryOptions, parse_query_options
from server.filter import FilterError, compile_filter
from server.fsm import ConsulFSM, encode_command
from server.rpc.errors import NotLeaderError, NotSentError
from server.state import StateStore, WatchSet

__all__ = ["LeaderRPC", "QueryMeta", "ServerContext", "Service"]

T = TypeVar("T")
E = TypeVar("E")

Read = Callable[[StateStore, WatchSet | None], tuple[int, T]]


class Service(Protocol):
    """A background part of an endpoint domain (session TTL timers, the event buffer, check
    runners...). Registered with ``ctx.add_service`` from a module's ``register``; the agent
    starts every service after the HTTP API is up, stops them in reverse order at shutdown,
    and tells each one when this server gains or loses Raft leadership (leader-only loops
    start and stop there; a non-server agent never calls it)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def leadership_changed(self, is_leader: bool) -> None: ...


class LeaderRPC(Protocol):
    """Server RPC to the leader (``server.rpc``)."""

    async def apply(self, leader_address: str, command: bytes, *, relay: bool = False) -> Any: ...

    async def read_index(self, leader_address: str) -> int: ...

    async def forward_http(self, leader_address: str, request: Any, timeout: float) -> Any: ...


@dataclass(frozen=True, slots=True)
class QueryMeta:
    index: int
    known_leader: bool
    last_contact_ms: int
    consistency: str  # "leader" | "stale" | "consistent"

    def embedded(self) -> dict[str, Any]:
        """The fields of Consul's ``QueryMeta`` as Consul embeds it (no JSON tag) in some
        response bodies (prepared-query execute/explain, operator usage, federation state):
        ``LastContact`` in nanoseconds, as Go's ``time.Duration`` marshals."""
        return {
            "Index": self.index,
            "LastContact": self.last_contact_ms * 1_000_000,
            "KnownLeader": self.known_leader,
            "ConsistencyLevel": self.consistency,
            "NotModified": False,
            "Backend": 0,
            "ResultsFilteredByACLs": False,
        }


class ServerContext:
    """Shared by all endpoint modules of one agent. Attributes other than ``config`` may be
    None on agents that lack that part (a client agent has no ``raft``)."""

    def __init__(
        self,
        config: RuntimeConfig,
        fsm: ConsulFSM | None,
        raft: RaftNode | None,
    ) -> None:
        self.config = config
        self.fsm = fsm
        self.raft = raft
        #: Server RPC client used by followers to reach the leader (set by the agent).
        self.leader_rpc: LeaderRPC | None = None
        #: A client agent's servers (``server.agent.servers.ServerPool``); None on servers.
        self.server_pool: Any = None
        #: The agent's local services and checks (``server.agent.local``), set by the agent.
        self.local: Any = None
        #: The LAN serf (``gossip.node.GossipNode``) and WAN serf, when running.
        self.serf_lan: Any = None
        self.serf_wan: Any = None
        #: WAN federation (servers only; set by the agent): the WAN router
        #: (``server.federation.router.Router``), cross-datacenter RPC
        #: (``server.federation.remote.RemoteRPC``) and, when federating through mesh
        #: gateways, the gateway locator (``server.federation.locator.GatewayLocator``).
        #: Node names of this datacenter's servers by node ID (= Raft ID), as serf announced
        #: them (set by the agent from LAN member events; read where a Raft ID is shown).
        self.server_names: dict[str, str] = {}
        self.router: Any = None
        self.remote: Any = None
        self.locator: Any = None
        #: The agent itself (for leave/reload/self); set by the agent.
        self.agent: Any = None
        self.started_at = time.time()
        self.services: list[Service] = []
        #: Called with every serf event of the LAN pool (``gossip.serf.events`` objects:
        #: MemberEvent, UserEvent, Query), in order, from the gossip loop: must not block.
        self.event_listeners: list[Callable[[object], None]] = []
        self._closed = False
        self._waiting: set[asyncio.Future[None]] = set()
        self._outgoing: set[asyncio.Future[Any]] = set()

    # --- lifecycle ---------------------------------------------------------------------

    def add_service(self, service: Service) -> None:
        self.services.append(service)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Answer every blocking query now (with its current result), stop blocking, and
        cancel requests in flight to other servers (a forwarded blocking query would
        otherwise hold the shutdown for minutes)."""
        self._closed = True
        for fut in self._waiting:
            if not fut.done():
                fut.set_result(None)
        for task in list(self._outgoing):
            task.cancel()

    async def cancellable(self, call: Awaitable[T]) -> T:
        """Await an RPC to another server; ``close()`` cancels it (answered as 503)."""
        if self._closed:
            raise HTTPError(503, "agent is shutting down")
        task = asyncio.ensure_future(call)
        self._outgoing.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self._closed and task.cancelled():
                raise HTTPError(503, "agent is shutting down") from None
            raise
        finally:
            self._outgoing.discard(task)

    # --- state -------------------------------------------------------------------------

    @property
    def store(self) -> StateStore:
        if self.fsm is None:
            raise HTTPError(500, "No known Consul servers")
        return self.fsm.store

    def check_datacenter(self, datacenter: str) -> None:
        """A request for another datacenter that reached a handler: the forward middleware
        sends those it can to that datacenter (``server.federation.remote``), so this is an
        endpoint Consul does not forward either, or a client agent's own endpoint."""
        if datacenter and datacenter != self.config.datacenter:
            raise HTTPError(500, "No path to datacenter")

    def options(self, request: web.Request) -> QueryOptions:
        """The request's query options, with its datacenter checked."""
        opts = parse_query_options(request)
        self.check_datacenter(opts.datacenter)
        return opts

    # --- writes ------------------------------------------------------------------------

    async def apply(self, kind: MessageType, body: Any) -> Any:
        """Propose ``kind``/``body`` through Raft (on the leader) and return the FSM's result;
        the FSM's exceptions are re-raised here (on a follower as ``HTTPError(500, text)``)."""
        return await self.apply_raw(encode_command(kind, body))

    async def apply_raw(self, command: bytes) -> Any:
        if self.raft is None:
            return await self._apply_via_servers(command)
        raft = self._require_raft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.rpc_hold_timeout
        while True:
            if raft.is_leader:
                try:
                    return await raft.propose(command)
                except NotLeader:
                    pass  # lost leadership before the proposal was appended: retry
            leader = raft.leader_address()
            if leader and self.leader_rpc is not None:
                try:
                    return await self.leader_rpc.apply(leader, command)
                except (NotLeaderError, NotSentError):
                    pass  # never acted on: wait for the (new) leader and retry
            await self._hold(deadline)

    async def _apply_via_servers(self, command: bytes) -> Any:
        """A client agent: relay the command to one of its servers (which forwards it to the
        leader), failing over to the next server only while nothing was sent."""
        pool, rpc = self.server_pool, self.leader_rpc
        if pool is None or rpc is None:
            raise HTTPError(500, "No known Consul servers")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.rpc_hold_timeout
        while True:
            for address in pool.candidates():
                try:
                    return await rpc.apply(address, command, relay=True)
                except NotSentError:
                    pool.failed(address)
            if loop.time() >= deadline or self._closed:
                raise HTTPError(500, "No known Consul servers")
            await asyncio.sleep(0.1)

    async def _hold(self, deadline: float) -> None:
        """Wait a little for a leader to appear; 500 "No cluster leader" past ``deadline``."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0 or self._closed:
            raise HTTPError(500, "No cluster leader")
        # Poll: elections take hundreds of milliseconds; 50 ms adds little to that.
        await asyncio.sleep(min(remaining, 0.05))

    def _require_raft(self) -> RaftNode:
        if self.raft is None:
            raise HTTPError(500, "No known Consul servers")
        return self.raft

    # --- reads -------------------------------------------------------------------------

    async def barrier(self, opts: QueryOptions) -> str:
        """Make the local store fresh enough for ``opts``' consistency mode; returns the
        effective consistency (``stale``, ``leader`` or ``consistent``)."""
        if opts.stale:
            return "stale"
        raft = self._require_raft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.rpc_hold_timeout
        while True:
            if raft.is_leader:
                # Also in the default mode: a new leader must not answer before it has
                # committed (and applied) an entry of its term, or it could miss writes its
                # predecessor acknowledged. Lease reads make this local while the lease holds.
                await raft.read_index()
                return "consistent" if opts.consistent else "leader"
            leader = raft.leader_address()
            if leader and self.leader_rpc is not None:
                try:
                    index = await self.leader_rpc.read_index(leader)
                except (NotLeaderError, NotSentError):
                    await self._hold(deadline)
                    continue
                await raft.wait_applied(index)
                return "consistent" if opts.consistent else "leader"
            await self._hold(deadline)

    def meta(self, index: int, consistency: str = "leader") -> QueryMeta:
        raft = self.raft
        known = raft is not None and raft.leader_id is not None
        contact = raft.last_contact() if raft is not None else None
        # Consul: milliseconds since the leader was last heard from (0 on the leader).
        last_ms = int((contact or 0.0) * 1000)
        return QueryMeta(max(index, 1), known, last_ms, consistency)

    def too_stale(self, max_stale: float) -> bool:
        """``?stale&max_stale=D``: whether this server's view is older than D (or it knows no
        leader); such a read must be answered by the leader."""
        raft = self.raft
        if raft is None or max_stale <= 0:
            return False
        contact = raft.last_contact()
        return contact is None or contact > max_stale

    @staticmethod
    def headers(meta: QueryMeta) -> dict[str, str]:
        return {
            "X-Consul-Index": str(max(meta.index, 1)),
            "X-Consul-KnownLeader": "true" if meta.known_leader else "false",
            "X-Consul-LastContact": str(meta.last_contact_ms),
            "X-Consul-Effective-Consistency": meta.consistency,
        }

    async def read(self, opts: QueryOptions, fn: Read[T]) -> tuple[T, QueryMeta]:
        """Run ``fn`` with ``opts``' consistency, blocking while ``opts.min_index`` says so."""
        consistency = await self.barrier(opts)
        index, result = await self.blocking(opts.min_index, opts.wait, fn)
        return result, self.meta(index, consistency)

    async def blocking(self, min_index: int, timeout: float, fn: Read[T]) -> tuple[int, T]:
        """``fn`` once (``min_index`` 0), or until its index passes ``min_index`` or
        ``timeout`` seconds pass (then the current result)."""
        if min_index == 0:
            return fn(self.store, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            store = self.store
            ws = WatchSet()
            ws.add(store.abandon_channel)
            index, result = fn(store, ws)
            remaining = deadline - loop.time()
            if index > min_index or remaining <= 0 or self._closed:
                return index, result
            await self.wait_watch(ws, remaining)

    async def wait_watch(self, ws: WatchSet, timeout: float) -> None:
        """Until a channel of ``ws`` fires, ``timeout`` seconds pass or the context closes
        (``close`` wakes every waiter)."""
        fired: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.add(fired)

        def wake() -> None:
            if not fired.done():
                fired.set_result(None)

        cancel = ws.add_callback(wake)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await fired
        finally:
            cancel()
            self._waiting.discard(fired)

    @staticmethod
    def apply_filter(expression: str, items: Iterable[E], view: Callable[[E], Any]) -> list[E]:
        """Keep the items whose JSON view matches Consul's ``?filter=`` expression; 400 with
        the parser's message when it does not parse."""
        if not expression:
            return list(items)
        try:
            compiled = compile_filter(expression)
        except FilterError as exc:
            raise HTTPError(400, str(exc)) from None
        return [item for item in items if compiled.matches(view(item))]
