"""Leader duties of a server (Consul's ``leader.go``), run only while this server leads.

* **Reconcile serf members into the catalog**: every LAN member is a catalog node with a
  ``serfHealth`` check — passing ("Agent alive and reachable") while alive, critical ("Agent not
  live or unreachable") once failed; a member that left, or that serf reaped, is deregistered.
  A node serf simply does not know (yet) is left alone: after a restart, members reappear as
  they gossip, and removing them meanwhile would destroy their sessions and locks.
  Servers also get the ``consul`` service (port = server RPC port). Reconciles run on every
  serf member event and every ``RECONCILE_INTERVAL`` (60 s, Consul's), and at once on gaining
  leadership. Nodes already registered with the right address and check status are not
  written again, so a steady cluster writes nothing.
* **Raft membership from serf**: an alive server of this datacenter that is not in the Raft
  configuration is added (as staging; promoted once caught up by the Raft core); a server that
  left gracefully is removed. A failed server stays (until ``operator raft remove-peer``).

The loop task (``leader-reconcile``) alone owns the "dirty" flag; serf events only set it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from gossip.node import MemberInfo
from gossip.serf import MemberEvent, MemberEventKind
from raft.core.types import Suffrage
from server.agent.serf_lan import ServerInfo
from server.commands.types import MessageType
from server.endpoints.context import ServerContext

__all__ = ["RECONCILE_INTERVAL", "SERF_CHECK_ID", "LeaderDuties"]

log = structlog.get_logger("leader")

RECONCILE_INTERVAL = 60.0
SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
ALIVE_OUTPUT = "Agent alive and reachable"
FAILED_OUTPUT = "Agent not live or unreachable"


class LeaderDuties:
    """A ``ServerContext`` service; see the module docstring."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        #: Members serf reaped (forgot after reconnect_timeout/tombstone_timeout): only these
        #: are deregistered as "reaped". A member serf merely has not heard of yet (after a
        #: restart) is never removed.
        self._reaped: set[str] = set()

    async def start(self) -> None:
        self.ctx.event_listeners.append(self._on_serf_event)

    async def stop(self) -> None:
        await self._stop_loop()

    async def leadership_changed(self, is_leader: bool) -> None:
        if is_leader:
            if self._task is None:
                self._dirty.set()
                self._task = asyncio.create_task(self._loop(), name="leader-reconcile")
        else:
            await self._stop_loop()

    def _on_serf_event(self, event: object) -> None:
        if isinstance(event, MemberEvent) and event.kind == MemberEventKind.REAP:
            self._reaped.update(m.name for m in event.members)
        self._dirty.set()

    async def _stop_loop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONCILE_INTERVAL):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reconcile_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def reconcile(self) -> None:
        serf = self.ctx.serf_lan
        members: list[MemberInfo] = await serf.members() if serf is not None else []
        known = {m.name for m in members}
        for member in members:
            if member.tags.get("dc", self.ctx.config.datacenter) != self.ctx.config.datacenter:
                continue
            if member.status in ("alive", "failed", "suspect", "dead"):
                await self._register_member(member)
            elif member.status in ("left", "leaving"):
                await self._deregister_member(member)
            await self._reconcile_raft(member)
        await self._cleanup_dead_servers(members)
        # Members serf reaped and that are not back: deregistered (Consul's reconcileReaped).
        for node in sorted(self._reaped - known):
            if node != self.ctx.config.node_name and node in self._serf_nodes():
                await self.ctx.apply(MessageType.DEREGISTER, {"Node": node})
        self._reaped.clear()

    # --- catalog -----------------------------------------------------------------------

    def _serf_nodes(self) -> list[str]:
        return self.ctx.store.catalog.nodes_with_check(SERF_CHECK_ID)

    async def _register_member(self, member: MemberInfo) -> None:
        alive = member.status == "alive"
        status = "passing" if alive else "critical"
        output = ALIVE_OUTPUT if alive else FAILED_OUTPUT
        server = ServerInfo.from_member(member)
        address = member.addr[0]
        if self._up_to_date(member.name, address, status, server is not None):
            return
        request: dict[str, Any] = {
            "Node": member.name,
            "ID": member.tags.get("id", ""),
            "Address": address,
            "Datacenter": self.ctx.config.datacenter,
            "Check": {
                "Node": member.name,
                "CheckID": SERF_CHECK_ID,
                "Name": SERF_CHECK_NAME,
                "Status": status,
                "Output": output,
            },
        }
        existing = self.ctx.store.catalog.node(member.name)
        if existing is not None:
            # Keep what the node's agent synced (Consul's leader copies these too).
            if existing.tagged_addresses is not None:
                request["TaggedAddresses"] = dict(existing.tagged_addresses)
            if existing.meta is not None:
                request["NodeMeta"] = dict(existing.meta)
        if server is not None:
            port = int(server.rpc_address.rsplit(":", 1)[1])
            request["Service"] = {
                "ID": "consul",
                "Service": "consul",
                "Port": port,
                "Tags": [],
                "Meta": {"raft_version": "3", "version": member.tags.get("build", "")},
            }
        await self.ctx.apply(MessageType.REGISTER, request)

    def _up_to_date(self, node: str, address: str, status: str, is_server: bool) -> bool:
        view = self.ctx.store.catalog.serf_view(node, SERF_CHECK_ID, "consul")
        return view == (address, status, is_server)

    async def _deregister_member(self, member: MemberInfo) -> None:
        if member.name == self.ctx.config.node_name:
            return
        await self.ctx.apply(MessageType.DEREGISTER, {"Node": member.name})

    # --- raft membership ---------------------------------------------------------------

    async def _cleanup_dead_servers(self, members: list[MemberInfo]) -> None:
        """Autopilot's dead-server cleanup: remove Raft servers that serf reports failed, when
        ``CleanupDeadServers`` is on and at most a minority of the voters would go (and at
        least ``MinQuorum`` voters remain). Servers serf does not know are left alone (after a
        restart serf may simply not have heard of them yet)."""
        raft = self.ctx.raft
        if raft is None:
            return
        _, autopilot = self.ctx.store.system.autopilot_config(None)
        if autopilot is not None and not autopilot.cleanup_dead_servers:
            return
        status: dict[str, str] = {}
        for member in members:
            info = ServerInfo.from_member(member)
            if info is not None and info.datacenter == self.ctx.config.datacenter:
                status[info.node_id] = member.status
        membership = raft.membership
        voters = [s for s in membership.servers if s.id in membership.voters]
        dead = [s for s in membership.servers if s.id != raft.id and status.get(s.id) == "failed"]
        dead_voters = [s for s in dead if s.id in membership.voters]
        min_quorum = autopilot.min_quorum if autopilot is not None else 0
        if not dead or len(dead_voters) * 2 >= len(voters):
            return
        if len(voters) - len(dead_voters) < min_quorum:
            return
        for server in dead:
            log.info("autopilot_remove_dead_server", id=server.id, address=server.address)
            await raft.remove_server(server.id)

    async def _reconcile_raft(self, member: MemberInfo) -> None:
        raft = self.ctx.raft
        server = ServerInfo.from_member(member)
        if raft is None or server is None or server.datacenter != self.ctx.config.datacenter:
            return
        if server.node_id == raft.id:
            return
        current = raft.membership.get(server.node_id)
        if member.status == "alive":
            if current is None or current.address != server.rpc_address:
                log.info("raft_add_server", node=server.name, id=server.node_id)
                await raft.add_voter(server.node_id, server.rpc_address)
            elif current.suffrage == Suffrage.NONVOTER:
                await raft.add_voter(server.node_id, server.rpc_address)
        elif member.status == "left" and current is not None:
            log.info("raft_remove_server", node=server.name, id=server.node_id)
            await raft.remove_server(server.node_id)
