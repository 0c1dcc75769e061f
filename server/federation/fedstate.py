"""The routines that keep federation states current (Consul's
``leader_federation_state_ae.go``, ``federation_state_replication.go`` and the gateway
locator's state watch). Each is a ``ServerContext`` service (``start``/``stop``/
``leadership_changed``); ``federation_services(ctx)`` gives the ones for this server's role.

* ``AntiEntropy`` — the leader of *every* datacenter: watches the local catalog's mesh-gateway
  instances (kind ``mesh-gateway``, every service name, with node and checks, as
  ``/v1/health/service`` shows them) and this datacenter's stored record; when they differ
  (``is_same``, ``UpdatedAt`` ignored) it writes the record — the primary through its own Raft
  (``ctx.apply``), a secondary to the primary (``ctx.remote.apply``). At most one write per
  ``SYNC_INTERVAL`` (1 s; Consul's newer code waits 5 s, but a datacenter must federate within
  10 s of a cold start here). After a write it waits for the next change of the catalog or of
  its record (the record comes back to a secondary by replication), or ``RECHECK`` seconds, so
  a secondary whose replication is down does not rewrite its record in a loop. Failures back
  off from 0.5 s to 10 s.
* ``Replicator`` — the leader of a *secondary*: blocking ``GET /v1/internal/federation-states``
  on the primary (``?stale``, ``?index=`` = the last remote index) through ``ctx.remote``; the
  pure ``diff_states`` decides what to write locally (Consul's index replicator: only local →
  delete; only remote → upsert; both → upsert when the remote ModifyIndex is past the last
  remote index; upserts carry ``PrimaryModifyIndex`` = the remote ModifyIndex). Every fetch is
  reported to ``ctx.locator.report_replication``. Fetches are paced at 1/s with a burst of 5
  (Consul's replicator limits); errors back off from 0.5 s to 10 s. A remote index that went
  backwards (the primary restored a snapshot) restarts from 0.
* ``Pruner`` — the leader of the *primary*: every ``PRUNE_INTERVAL`` (1 h) deletes the records
  of datacenters the WAN router no longer knows (never its own).
* ``LocatorFeed`` — *every* server: watches the local federation-states table and hands
  ``{dc: [CheckServiceNode]}`` to ``ctx.locator.update`` after every change.

``ctx.remote``, ``ctx.router`` and ``ctx.locator`` are read with ``getattr`` at each use: a
service is inert (it waits and retries) while the part it needs is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

import orjson
import structlog

from proto import server_rpc_pb2 as pb
from server.commands.federation_state import OP_DELETE, OP_UPSERT, build_request
from server.commands.types import MessageType
from server.endpoints.context import ServerContext, Service
from server.endpoints.federation_state import mesh_gateways_by_dc
from server.endpoints.health import check_service_node_api
from server.fsm import encode_command
from server.state import StateStore, WatchSet
from server.state.federation_states import is_same

__all__ = [
    "MESH_GATEWAY_KIND",
    "PRUNE_INTERVAL",
    "SYNC_INTERVAL",
    "AntiEntropy",
    "Backoff",
    "LocatorFeed",
    "Pruner",
    "RateLimiter",
    "Replicator",
    "diff_states",
    "federation_services",
    "mesh_gateway_dump",
]

log = structlog.get_logger("federation")

MESH_GATEWAY_KIND = "mesh-gateway"
#: Least time between two anti-entropy writes (see the module docstring).
SYNC_INTERVAL = 1.0
#: How long a routine waits for a change before it looks again anyway.
RECHECK = 300.0
#: How often the primary's leader prunes records of vanished datacenters (Consul's).
PRUNE_INTERVAL = 3600.0
#: Replication: Consul's ``FederationStateReplicationRate``/``Burst``.
REPLICATION_RATE = 1.0
REPLICATION_BURST = 5
#: The ``?wait=`` of a replication fetch, and the RPC's deadline on top of it.
REPLICATION_WAIT = 60.0
REPLICATION_TIMEOUT = REPLICATION_WAIT * 17 / 16 + 15.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0

_SERVICES_ATTR = "_federation_state_services"


# --- pure parts ------------------------------------------------------------------------------


def mesh_gateway_dump(store: StateStore, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
    """Every instance of a ``mesh-gateway`` kind service in the local catalog as
    ``CheckServiceNode`` JSON, ordered by (node, service ID) — Consul's ``ServiceDump`` by kind.
    Watches the services table (a new gateway name) and each gateway name (instances, checks,
    nodes)."""
    index, services = store.catalog.list_services(ws)
    names = sorted({s.service.lower(): s.service for s in services if s.kind == MESH_GATEWAY_KIND})
    out: list[tuple[tuple[str, str], dict[str, Any]]] = []
    for key in names:
        name_index, items = store.catalog.check_service_nodes(ws, key)
        index = max(index, name_index)
        for item in items:
            if item[1].kind == MESH_GATEWAY_KIND:
                out.append(
                    ((item[0].node.lower(), item[1].id.lower()), check_service_node_api(item))
                )
    out.sort(key=lambda pair: pair[0])
    return index, [csn for _, csn in out]


def diff_states(
    local: Sequence[Mapping[str, Any]],
    remote: Sequence[Mapping[str, Any]],
    last_remote_index: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """What a secondary writes to match the primary's records: (upserts, deleted datacenters),
    both in datacenter order. Upserts are copies of the remote records with
    ``PrimaryModifyIndex`` = their remote ``ModifyIndex`` (Consul's
    ``DiffRemoteAndLocalState`` + ``PerformUpdates``)."""
    local_by_dc = {str(s["Datacenter"]): s for s in local}
    remote_by_dc = {str(s["Datacenter"]): s for s in remote}
    deletes = sorted(dc for dc in local_by_dc if dc not in remote_by_dc)
    upserts: list[dict[str, Any]] = []
    for dc in sorted(remote_by_dc):
        state = remote_by_dc[dc]
        modify = int(state.get("ModifyIndex") or 0)
        if dc in local_by_dc and modify <= last_remote_index:
            continue
        copy = dict(state)
        copy["PrimaryModifyIndex"] = modify
        upserts.append(copy)
    return upserts, deletes


class Backoff:
    """Doubling delays from ``low`` to ``high``; ``reset`` after a success."""

    def __init__(self, low: float = BACKOFF_MIN, high: float = BACKOFF_MAX) -> None:
        self.low, self.high = low, high
        self._next = low

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.high)
        return delay

    def reset(self) -> None:
        self._next = self.low


class RateLimiter:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved. ``delay(now)`` takes a
    token and says how long to wait for it (0 when one was there)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._at = now

    def delay(self, now: float) -> float:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


# --- plumbing --------------------------------------------------------------------------------


async def _attempt(call: Callable[[], Awaitable[object]], backoff: Backoff, what: str) -> bool:
    """Run ``call``; after an error log ``federation_state_<what>``, wait the next backoff
    delay and say False (a success resets the backoff)."""
    try:
        await call()
    except Exception as exc:
        delay = backoff.next()
        log.info(f"federation_state_{what}", error=str(exc), retry_in=delay)
        await asyncio.sleep(delay)
        return False
    backoff.reset()
    return True


def _primary_dc(ctx: ServerContext) -> str:
    return ctx.config.primary_datacenter or ctx.config.datacenter


def _is_primary(ctx: ServerContext) -> bool:
    return _primary_dc(ctx) == ctx.config.datacenter


class _Loop:
    """One background task (``_run``): while this server leads, or from ``start`` to ``stop``
    when not ``leader_only``. At most one task at a time."""

    name = "federation-state"
    leader_only = True

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.leader_only:
            self._start()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def leadership_changed(self, is_leader: bool) -> None:
        if not self.leader_only:
            return
        if is_leader:
            self._start()
        else:
            await self.stop()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._guarded(), name=self.name)

    async def _guarded(self) -> None:
        """``_run`` until it returns or is cancelled; an unexpected error is logged and it
        starts again after a backoff."""
        backoff = Backoff()
        while True:
            try:
                await self._run()
                return
            except Exception as exc:
                log.warning("federation_state_loop_failed", loop=self.name, error=repr(exc))
                await asyncio.sleep(backoff.next())

    async def _run(self) -> None:
        raise NotImplementedError


# --- the routines ------------------------------------------------------------------------------


class AntiEntropy(_Loop):
    """Keeps this datacenter's record current (module docstring)."""

    name = "federation-state-ae"

    async def _run(self) -> None:
        ctx = self.ctx
        dc = ctx.config.datacenter
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        next_sync = -math.inf
        while True:
            store = ctx.store
            ws = WatchSet()
            ws.add(store.abandon_channel)
            _, gateways = mesh_gateway_dump(store, ws)
            _, prev = store.federation_states.get(ws, dc)
            curr: dict[str, Any] = {"Datacenter": dc, "MeshGateways": gateways}
            if prev is None or not is_same(prev, curr):
                wait = next_sync - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue  # look again: the catalog may have moved meanwhile
                next_sync = loop.time() + SYNC_INTERVAL
                if not await _attempt(partial(self._write, curr), backoff, "sync_failed"):
                    continue
                log.debug("federation_state_synced", datacenter=dc, gateways=len(gateways))
            if ctx.closed:
                return
            await self.ctx.wait_watch(ws, RECHECK)

    async def _write(self, state: dict[str, Any]) -> None:
        ctx = self.ctx
        primary = _primary_dc(ctx)
        body = build_request(OP_UPSERT, state, primary)
        if _is_primary(ctx):
            await ctx.apply(MessageType.FEDERATION_STATE, body)
            return
        remote = getattr(ctx, "remote", None)
        if remote is None:
            raise RuntimeError("no cross-datacenter RPC yet")
        await remote.apply(primary, encode_command(MessageType.FEDERATION_STATE, body))


class Replicator(_Loop):
    """Copies the primary's records into a secondary (module docstring)."""

    name = "federation-state-replication"

    def __init__(self, ctx: ServerContext, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ctx)
        self._clock = clock
        #: The index of the last remote answer fully applied (0: start over).
        self.last_remote_index = 0

    async def _run(self) -> None:
        self.last_remote_index = 0
        limiter = RateLimiter(REPLICATION_RATE, REPLICATION_BURST, self._clock())
        backoff = Backoff()
        while not self.ctx.closed:
            delay = limiter.delay(self._clock())
            if delay > 0:
                await asyncio.sleep(delay)
            await _attempt(self.replicate_once, backoff, "replication_failed")

    def _report(self, ok: bool) -> None:
        locator = getattr(self.ctx, "locator", None)
        if locator is not None:
            locator.report_replication(ok)

    async def fetch(self, min_index: int) -> tuple[list[dict[str, Any]], int]:
        """The primary's records and index (a blocking read past ``min_index``)."""
        remote = getattr(self.ctx, "remote", None)
        if remote is None:
            raise RuntimeError("no cross-datacenter RPC yet")
        wait = f"{int(REPLICATION_WAIT)}s"
        request = pb.HttpRequest(
            method="GET",
            path_qs=f"/v1/internal/federation-states?stale&index={min_index}&wait={quote(wait)}",
        )
        reply = await remote.forward_http(_primary_dc(self.ctx), request, REPLICATION_TIMEOUT)
        if reply.status != 200:
            raise RuntimeError(f"primary answered {reply.status}: {reply.body[:200]!r}")
        headers = {h.name.lower(): h.value for h in reply.headers}
        states = orjson.loads(reply.body)
        if not isinstance(states, list):
            raise RuntimeError("primary answered something other than a list")
        return states, int(headers.get("x-consul-index", "0"))

    async def replicate_once(self) -> None:
        try:
            remote, remote_index = await self.fetch(self.last_remote_index)
        except Exception:
            self._report(False)
            raise
        self._report(True)
        if remote_index < self.last_remote_index:
            # The primary's index went backwards (a restored snapshot): start over.
            self.last_remote_index = 0
        _, local = self.ctx.store.federation_states.list_all(None)
        upserts, deletes = diff_states(local, remote, self.last_remote_index)
        dc = self.ctx.config.datacenter
        for name in deletes:
            body = build_request(OP_DELETE, {"Datacenter": name}, dc)
            await self.ctx.apply(MessageType.FEDERATION_STATE, body)
        for state in upserts:
            await self.ctx.apply(MessageType.FEDERATION_STATE, build_request(OP_UPSERT, state, dc))
        if upserts or deletes:
            log.debug("federation_states_replicated", upserts=len(upserts), deletes=deletes)
        self.last_remote_index = remote_index


class Pruner(_Loop):
    """Deletes the records of datacenters that left the WAN pool (module docstring)."""

    name = "federation-state-prune"

    def __init__(self, ctx: ServerContext, *, interval: float = PRUNE_INTERVAL) -> None:
        super().__init__(ctx)
        self.interval = interval

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await _attempt(self.prune_once, Backoff(0.0, 0.0), "prune_failed")

    async def prune_once(self) -> list[str]:
        """Delete the stale records now; returns their datacenters."""
        router = getattr(self.ctx, "router", None)
        if router is None:
            return []
        known = set(router.datacenters()) | {self.ctx.config.datacenter}
        stale = [dc for dc in self.ctx.store.federation_states.datacenters() if dc not in known]
        for dc in stale:
            log.info("federation_state_pruned", datacenter=dc)
            body = build_request(OP_DELETE, {"Datacenter": dc}, self.ctx.config.datacenter)
            await self.ctx.apply(MessageType.FEDERATION_STATE, body)
        return stale


class LocatorFeed(_Loop):
    """Feeds the gateway locator from the local table (module docstring)."""

    name = "federation-state-locator"
    leader_only = False

    async def _run(self) -> None:
        ctx = self.ctx
        last: dict[str, list[dict[str, Any]]] | None = None
        while not ctx.closed:
            store = ctx.store
            ws = WatchSet()
            ws.add(store.abandon_channel)
            _, states = store.federation_states.list_all(ws)
            current = mesh_gateways_by_dc(states)
            locator = getattr(ctx, "locator", None)
            if locator is not None and current != last:
                locator.update(current)
                last = current
            await self.ctx.wait_watch(ws, RECHECK if locator is not None else 1.0)


def federation_services(ctx: ServerContext) -> list[Service]:
    """The federation-state services for this server's role (none on a client agent). Gives
    them once per ``ctx``: a second call returns ``[]``, so they can never run twice."""
    if ctx.fsm is None or getattr(ctx, _SERVICES_ATTR, False):
        return []
    setattr(ctx, _SERVICES_ATTR, True)
    services: list[Service] = [AntiEntropy(ctx), LocatorFeed(ctx)]
    if _is_primary(ctx):
        services.append(Pruner(ctx))
    else:
        services.append(Replicator(ctx))
    return services
