"""``/v1/operator/*`` (Consul's ``agent/operator_endpoint.go``): the Raft configuration and peer
removal, leadership transfer, Autopilot (configuration, health, state), the gossip keyring and
usage figures.

Consul's behaviour kept here:

* ``GET raft/configuration``: ``{Servers: [{ID, Node, Address, Leader, Voter,
  ProtocolVersion: "3", LastIndex}], Index: 0}``.
* ``DELETE raft/peer``: exactly one of ``?id`` / ``?address`` (400 otherwise); a peer not in
  the configuration is a 500 ``address "x" was not found in the Raft configuration`` (or
  ``id "x" ...``); success is an empty 200.
* ``POST raft/transfer-leader[?id=]``: ``{"Success": true}``; with no other voter (or an
  unknown ``id``) a 500.
* ``autopilot/configuration``: the stored configuration (the leader writes Consul's defaults,
  overridden by the agent's ``autopilot`` config block, when it first takes office). ``PUT``
  decodes a whole configuration (missing fields are zero values, as Go decodes them) and
  answers ``true``; with ``?cas=<index>`` it answers whether the CAS matched.
* ``autopilot/health``: 200 when every server is healthy, 429 (same body) otherwise.
* ``keyring``: with gossip encryption off every operation is a 500 carrying Consul's
  multi-error text; with a keyring the operations act on this agent's keyring.
* ``usage``: ``{Usage: {<dc>: {...}}, Index, LastContact, KnownLeader, ConsistencyLevel,
  NotModified, Backend, ResultsFilteredByACLs}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any

import structlog
from aiohttp import web

from raft.core.types import RaftError
from server import __version__
from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.http import (
    HTTPError,
    fold_keys,
    json_response,
    parse_bool_param,
    read_json,
)
from server.state import StateStore, WatchSet, format_duration, parse_duration
from server.state.system import AutopilotConfig

__all__ = ["AutopilotInitializer", "autopilot_config_from_agent", "register", "server_node_name"]

log = structlog.get_logger("operator")

_AUTOPILOT_FIELDS = (
    "CleanupDeadServers",
    "LastContactThreshold",
    "MaxTrailingLogs",
    "MinQuorum",
    "ServerStabilizationTime",
    "RedundancyZoneTag",
    "DisableUpgradeMigration",
    "UpgradeVersionTag",
    "CreateIndex",
    "ModifyIndex",
)
_DURATION_FIELDS = ("LastContactThreshold", "ServerStabilizationTime")
_CONNECT_KINDS = (
    "api-gateway",
    "connect-native",
    "connect-proxy",
    "ingress-gateway",
    "mesh-gateway",
    "terminating-gateway",
)


# --- autopilot configuration ---------------------------------------------------------------


def _duration_ns(value: Any, field: str) -> int:
    """A Go ``ReadableDuration`` from JSON: a duration string or a number of nanoseconds."""
    if isinstance(value, str):
        try:
            ns = parse_duration(value)
        except ValueError as exc:
            raise HTTPError(400, f"Error parsing autopilot config: {exc}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ns = int(value)
    elif value is None:
        ns = 0
    else:
        raise HTTPError(400, f"Error parsing autopilot config: invalid {field}: {value!r}")
    if ns < 0:
        raise HTTPError(400, f"Error parsing autopilot config: {field} must not be negative")
    return ns


def _decode_autopilot(body: dict[str, Any]) -> AutopilotConfig:
    """A PUT body as Go decodes it into a zero-valued struct: missing fields are zero."""
    doc = {
        "CleanupDeadServers": body.get("CleanupDeadServers", False),
        "LastContactThreshold": _duration_ns(
            body.get("LastContactThreshold"), "LastContactThreshold"
        ),
        "MaxTrailingLogs": body.get("MaxTrailingLogs", 0),
        "MinQuorum": body.get("MinQuorum", 0),
        "ServerStabilizationTime": _duration_ns(
            body.get("ServerStabilizationTime"), "ServerStabilizationTime"
        ),
        "RedundancyZoneTag": body.get("RedundancyZoneTag", ""),
        "DisableUpgradeMigration": body.get("DisableUpgradeMigration", False),
        "UpgradeVersionTag": body.get("UpgradeVersionTag", ""),
    }
    for key in ("CleanupDeadServers", "DisableUpgradeMigration"):
        if doc[key] is None:
            doc[key] = False
    for key in ("MaxTrailingLogs", "MinQuorum"):
        if isinstance(doc[key], float) and doc[key].is_integer():
            doc[key] = int(doc[key])
        if doc[key] is None:
            doc[key] = 0
    for key in ("RedundancyZoneTag", "UpgradeVersionTag"):
        if doc[key] is None:
            doc[key] = ""
    try:
        return AutopilotConfig.from_document(doc)
    except (TypeError, ValueError) as exc:
        raise HTTPError(400, f"Error parsing autopilot config: {exc}") from None


def autopilot_config_from_agent(settings: dict[str, Any]) -> AutopilotConfig:
    """Consul's defaults overridden by the agent config's ``autopilot`` block (snake_case
    keys as in Consul's config files; durations as Go duration strings)."""
    config = AutopilotConfig()
    changes: dict[str, Any] = {}
    for key, value in settings.items():
        if key in ("last_contact_threshold", "server_stabilization_time"):
            changes[key] = parse_duration(value) if isinstance(value, str) else int(value)
        elif key in ("cleanup_dead_servers", "disable_upgrade_migration"):
            changes[key] = bool(value)
        elif key in ("max_trailing_logs", "min_quorum"):
            changes[key] = int(value)
        elif key in ("redundancy_zone_tag", "upgrade_version_tag"):
            changes[key] = str(value)
    return replace(config, **changes)


def _autopilot_api(config: AutopilotConfig) -> dict[str, Any]:
    return {
        "CleanupDeadServers": config.cleanup_dead_servers,
        "LastContactThreshold": format_duration(config.last_contact_threshold),
        "MaxTrailingLogs": config.max_trailing_logs,
        "MinQuorum": config.min_quorum,
        "ServerStabilizationTime": format_duration(config.server_stabilization_time),
        "RedundancyZoneTag": config.redundancy_zone_tag,
        "DisableUpgradeMigration": config.disable_upgrade_migration,
        "UpgradeVersionTag": config.upgrade_version_tag,
        "CreateIndex": config.create_index,
        "ModifyIndex": config.modify_index,
    }


class AutopilotInitializer:
    """Writes the initial Autopilot configuration when this server becomes the leader and
    none is stored yet (Consul's leader does the same with a CAS at index 0)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def leadership_changed(self, is_leader: bool) -> None:
        if is_leader and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._initialize(), name="autopilot-init")

    async def _initialize(self) -> None:
        try:
            await self.ensure()
        except Exception as exc:  # retried by the next read or the next term
            log.warning("autopilot_init_failed", error=str(exc))

    async def ensure(self) -> None:
        """Store the initial configuration unless one exists (idempotent, CAS at 0)."""
        async with self._lock:
            _, current = self.ctx.store.system.autopilot_config(None)
            if current is not None:
                return
            config = autopilot_config_from_agent(self.ctx.config.autopilot)
            body = {"Config": config.to_document(), "CAS": True}
            await self.ctx.apply(MessageType.AUTOPILOT, body)


def server_node_name(ctx: ServerContext, raft_id: str) -> str:
    """The node name of the server whose Raft ID is ``raft_id`` (Raft IDs are node IDs):
    this agent's own name, else the catalog node with that ID, else the name serf announced
    for it (the catalog lags right after a restart), else the ID itself."""
    raft = ctx.raft
    if raft is not None and raft_id == raft.id:
        return ctx.config.node_name or raft_id
    fsm = ctx.fsm
    if fsm is not None:
        _, nodes = fsm.store.catalog.list_nodes(None)
        for node in nodes:
            if node.id and node.id.lower() == raft_id.lower():
                return node.node
    return ctx.server_names.get(raft_id, raft_id)


# --- raft views ----------------------------------------------------------------------------


class _RaftView:
    """The Raft configuration as the operator endpoints show it."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.stable_since: dict[str, float] = {}

    def raft(self) -> Any:
        if self.ctx.raft is None:
            raise HTTPError(500, "No known Consul servers")
        return self.ctx.raft

    def public_id(self, raft_id: str) -> str:
        """The server ID shown to clients: the Raft ID (the agent's node ID)."""
        return raft_id

    def node_name(self, raft_id: str) -> str:
        return server_node_name(self.ctx, raft_id)

    def resolve_id(self, public: str) -> str | None:
        raft = self.raft()
        for server in raft.membership.servers:
            if public == server.id or public.lower() == str(server.id).lower():
                return str(server.id)
        return None

    def progress(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """(this server's last log index, the leader's view of each follower)."""
        stats = self.raft().stats()
        return int(stats.get("last_log_index", 0)), dict(stats.get("followers") or {})

    def servers(self) -> list[dict[str, Any]]:
        raft = self.raft()
        last_index, followers = self.progress()
        out = []
        for server in raft.membership.servers:
            if server.id == raft.id:
                index = last_index
            else:
                index = int((followers.get(server.id) or {}).get("match", 0))
            out.append(
                {
                    "ID": self.public_id(server.id),
                    "Node": self.node_name(server.id),
                    "Address": server.address,
                    "Leader": server.id == raft.leader_id,
                    "Voter": server.id in raft.membership.voters,
                    "ProtocolVersion": "3",
                    "LastIndex": index,
                }
            )
        return out

    async def serf_statuses(self) -> dict[str, str] | None:
        """Each LAN serf member's status by its node ID tag (None without serf)."""
        serf = self.ctx.serf_lan
        if serf is None:
            return None
        try:
            members = await serf.members()
        except Exception:
            return None
        return {
            str(m.tags.get("id") or m.name).lower(): str(m.status)
            for m in members
            if getattr(m, "tags", None) is not None
        }

    def health(
        self, config: AutopilotConfig, serf_status: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Consul's ``OperatorHealthReply`` as seen from this server (the leader knows its
        followers' progress; a follower only knows itself and the leader). A server whose
        serf status is not ``alive`` is unhealthy, as in Consul's autopilot."""
        raft = self.raft()
        last_index, followers = self.progress()
        now = time.time()
        servers = []
        voters = raft.membership.voters
        healthy_voters = 0
        for server in raft.membership.servers:
            is_self = server.id == raft.id
            is_leader = server.id == raft.leader_id
            if is_self:
                contact_ns = 0
                index = last_index
                healthy = raft.leader_id is not None
            else:
                progress = followers.get(server.id) or {}
                contact_s = progress.get("last_contact_s")
                index = int(progress.get("match", 0))
                contact_ns = int(float(contact_s) * 1e9) if contact_s is not None else 0
                healthy = (
                    raft.is_leader
                    and contact_s is not None
                    and contact_ns <= config.last_contact_threshold
                    and last_index - index <= config.max_trailing_logs
                ) or (is_leader and not raft.is_leader)
            status = "alive"
            if serf_status is not None and not is_self:
                status = serf_status.get(str(server.id).lower(), "none")
            healthy = healthy and status == "alive"
            if healthy:
                self.stable_since.setdefault(server.id, now)
            else:
                self.stable_since.pop(server.id, None)
            if healthy and server.id in voters:
                healthy_voters += 1
            since = self.stable_since.get(server.id, now)
            servers.append(
                {
                    "ID": self.public_id(server.id),
                    "Name": self.node_name(server.id),
                    "Address": server.address,
                    "SerfStatus": status,
                    "Version": __version__,
                    "Leader": is_leader,
                    "LastContact": format_duration(contact_ns),
                    "LastTerm": raft.term,
                    "LastIndex": index,
                    "Healthy": healthy,
                    "Voter": server.id in voters,
                    "StableSince": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                }
            )
        quorum = len(voters) // 2 + 1
        return {
            "Healthy": bool(servers) and all(s["Healthy"] for s in servers),
            "FailureTolerance": max(0, healthy_voters - quorum),
            "Servers": servers,
        }


# --- keyring -------------------------------------------------------------------------------


def _keyring_disabled_error(ctx: ServerContext, op: str) -> HTTPError:
    """What Consul answers when gossip encryption is off: the serf key manager's error for
    each pool (WAN first on a server, then the LAN), as one multi-error."""
    message = (
        "Keyring is empty (encryption not enabled)"
        if op == "list"
        else "No keyring to modify (encryption not enabled)"
    )
    node = ctx.config.node_name
    dc = ctx.config.datacenter
    errors = [
        "WAN error: 1/1 nodes reported failure",
        f"{node}.{dc}: {message}",
        f"{dc} (LAN) error: 1/1 nodes reported failure",
        f"{node}: {message}",
    ]
    points = "\n\t".join(f"* {e}" for e in errors)
    return HTTPError(500, f"{len(errors)} errors occurred:\n\t{points}\n\n")


async def _member_count(serf: Any) -> int:
    try:
        return len(await serf.members())
    except Exception:
        return 1


# --- registration --------------------------------------------------------------------------


def register(app: web.Application, ctx: ServerContext) -> None:
    view = _RaftView(ctx)
    initializer = AutopilotInitializer(ctx)
    ctx.add_service(initializer)

    async def raft_configuration(request: web.Request) -> web.Response:
        opts = ctx.options(request)
        await ctx.barrier(opts)
        return json_response(request, {"Servers": view.servers(), "Index": 0})

    async def raft_peer(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        has_id = "id" in request.query
        has_address = "address" in request.query
        if not has_id and not has_address:
            raise HTTPError(
                400,
                "Must specify either ?id with the server's ID or ?address with IP:port of "
                "peer to remove",
            )
        if has_id and has_address:
            raise HTTPError(400, "Must specify only one of ?id or ?address")
        raft = view.raft()
        target: str | None = None
        if has_id:
            wanted = request.query["id"]
            target = view.resolve_id(wanted)
            if target is None:
                raise HTTPError(500, f'id "{wanted}" was not found in the Raft configuration')
        else:
            wanted = request.query["address"]
            for server in raft.membership.servers:
                if server.address == wanted:
                    target = server.id
            if target is None:
                raise HTTPError(500, f'address "{wanted}" was not found in the Raft configuration')
        try:
            await raft.remove_server(target)
        except RaftError as exc:
            raise HTTPError(500, str(exc)) from None
        return web.Response(status=200)

    async def transfer_leader(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        raft = view.raft()
        target: str | None = None
        wanted = request.query.get("id", "")
        if wanted:
            target = view.resolve_id(wanted)
            if target is None or target not in raft.membership.voters:
                raise HTTPError(500, f"cannot find peer {wanted}")
        elif not [v for v in raft.membership.voters if v != raft.id]:
            raise HTTPError(500, "cannot find peer")
        try:
            await raft.transfer_leadership(target)
        except RaftError as exc:
            raise HTTPError(500, str(exc)) from None
        return json_response(request, {"Success": True})

    async def read_autopilot(request: web.Request) -> tuple[AutopilotConfig, Any]:
        opts = ctx.options(request)
        raft = ctx.raft
        if raft is not None and raft.is_leader and not opts.stale:
            await initializer.ensure()

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, AutopilotConfig | None]:
            return store.system.autopilot_config(ws)

        config, meta = await ctx.read(opts, read)
        if config is None:
            raise HTTPError(500, "autopilot config not initialized yet")
        return config, meta

    async def autopilot_configuration(request: web.Request) -> web.Response:
        if request.method == "GET":
            config, meta = await read_autopilot(request)
            return json_response(request, _autopilot_api(config), headers=ctx.headers(meta))
        ctx.check_datacenter(request.query.get("dc", ""))
        body = fold_keys(await read_json(request, empty={}), _AUTOPILOT_FIELDS)
        config = _decode_autopilot(body)
        cas = "cas" in request.query
        if cas:
            raw = request.query["cas"]
            if not raw.isascii() or not raw.isdigit() or int(raw) >= 1 << 64:
                raise HTTPError(
                    400,
                    f'Error parsing cas value: strconv.ParseUint: parsing "{raw}": invalid syntax',
                )
            config = replace(config, modify_index=int(raw))
        if ctx.raft is not None and ctx.raft.is_leader:
            await initializer.ensure()
        result = await ctx.apply(
            MessageType.AUTOPILOT, {"Config": config.to_document(), "CAS": cas}
        )
        return json_response(request, bool(result) if cas else True)

    async def autopilot_health(request: web.Request) -> web.Response:
        config, _ = await read_autopilot(request)
        reply = view.health(config, await view.serf_statuses())
        return json_response(request, reply, status=200 if reply["Healthy"] else 429)

    async def autopilot_state(request: web.Request) -> web.Response:
        config, _ = await read_autopilot(request)
        health = view.health(config, await view.serf_statuses())
        servers: dict[str, Any] = {}
        voters: list[str] = []
        leader = ""
        for server in health["Servers"]:
            status = "leader" if server["Leader"] else ("voter" if server["Voter"] else "non-voter")
            servers[server["ID"]] = {
                "ID": server["ID"],
                "Name": server["Name"],
                "Address": server["Address"],
                "NodeStatus": server["SerfStatus"],
                "Version": server["Version"],
                "LastContact": server["LastContact"],
                "LastTerm": server["LastTerm"],
                "LastIndex": server["LastIndex"],
                "Healthy": server["Healthy"],
                "StableSince": server["StableSince"],
                "ReadReplica": False,
                "Status": status,
                "Meta": {"consul-network-segment": ""},
                "NodeType": "voter",
            }
            if server["Voter"]:
                voters.append(server["ID"])
            if server["Leader"]:
                leader = server["ID"]
        return json_response(
            request,
            {
                "Healthy": health["Healthy"],
                "FailureTolerance": health["FailureTolerance"],
                "OptimisticFailureTolerance": max(0, len(voters) - (len(voters) // 2 + 1)),
                "Servers": servers,
                "Leader": leader,
                "Voters": voters,
            },
        )

    async def keyring(request: web.Request) -> web.Response:
        method = request.method
        body: dict[str, Any] = {}
        if method in ("POST", "PUT", "DELETE"):
            body = fold_keys(await read_json(request, empty={}), ("Key", "RelayFactor"))
        relay = request.query.get("relay-factor", "")
        if relay:
            try:
                factor = int(relay)
            except ValueError:
                raise HTTPError(
                    400,
                    f'Error parsing relay factor: strconv.Atoi: parsing "{relay}": invalid syntax',
                ) from None
            if not 0 <= factor <= 5:
                raise HTTPError(400, "Invalid relay-factor: Relay factor must be in range: [0, 5]")
        local_only = request.query.get("local-only", "")
        if local_only:
            if local_only.lower() not in ("1", "t", "true", "0", "f", "false"):
                raise HTTPError(
                    400,
                    f'Error parsing local-only: strconv.ParseBool: parsing "{local_only}": '
                    "invalid syntax",
                )
            if method != "GET" and local_only.lower() in ("1", "t", "true"):
                raise HTTPError(
                    400, "Invalid use of local-only: local-only can only be set for list requests"
                )
        op = {"GET": "list", "POST": "install", "PUT": "use", "DELETE": "remove"}[method]
        serf = ctx.serf_lan
        ring = getattr(serf, "keyring", None) if serf is not None else None
        if ring is None:
            raise _keyring_disabled_error(ctx, op)
        if op == "list":
            count = await _member_count(serf)
            return json_response(
                request,
                [
                    {
                        "WAN": False,
                        "Datacenter": ctx.config.datacenter,
                        "Segment": "",
                        "Partition": "",
                        "Keys": {key: count for key in ring.list()},
                        "PrimaryKeys": {ring.primary_b64: count},
                        "NumNodes": count,
                    }
                ],
            )
        key = body.get("Key")
        if not isinstance(key, str) or not key:
            raise HTTPError(500, f"{ctx.config.datacenter} (LAN) error: key is required")
        try:
            getattr(ring, op)(key)
        except ValueError as exc:
            text = str(exc)
            if "primary" in text:
                text = "Removing the primary key is not allowed"  # memberlist's text
            elif "not installed" in text:
                text = "Requested key is not in the keyring"
            raise HTTPError(
                500,
                f"2 errors occurred:\n\t* {ctx.config.datacenter} (LAN) error: 1/1 nodes "
                f"reported failure\n\t* {ctx.config.node_name}: {text}\n\n",
            ) from None
        return web.Response(status=200)

    async def usage(request: web.Request) -> web.Response:
        opts = ctx.options(request)
        parse_bool_param(request, "global")

        def read(store: StateStore, ws: WatchSet | None) -> tuple[int, dict[str, Any]]:
            return _catalog_usage(ctx, store, ws)

        figures, meta = await ctx.read(opts, read)
        return json_response(
            request,
            {
                "Usage": {ctx.config.datacenter: figures},
                **meta.embedded(),
            },
            headers=ctx.headers(meta),
        )

    app.router.add_get("/v1/operator/raft/configuration", raft_configuration)
    app.router.add_delete("/v1/operator/raft/peer", raft_peer)
    app.router.add_post("/v1/operator/raft/transfer-leader", transfer_leader)
    app.router.add_get("/v1/operator/autopilot/configuration", autopilot_configuration)
    app.router.add_put("/v1/operator/autopilot/configuration", autopilot_configuration)
    app.router.add_get("/v1/operator/autopilot/health", autopilot_health)
    app.router.add_get("/v1/operator/autopilot/state", autopilot_state)
    for method in ("GET", "POST", "PUT", "DELETE"):
        app.router.add_route(method, "/v1/operator/keyring", keyring)
    app.router.add_get("/v1/operator/usage", usage)


def _catalog_usage(
    ctx: ServerContext, store: StateStore, ws: WatchSet | None
) -> tuple[int, dict[str, Any]]:
    """Consul's per-datacenter usage figures, counted from the catalog: nodes, distinct
    service names, instances, Connect instances by kind, and billable instances (neither
    the ``consul`` service nor a proxy or gateway)."""
    node_index, nodes = store.catalog.list_nodes(ws)
    service_index, instances = store.catalog.list_services(ws)
    connect = dict.fromkeys(_CONNECT_KINDS, 0)
    billable = 0
    for instance in instances:
        if instance.kind in connect:
            connect[instance.kind] += 1
        elif instance.connect_native:
            connect["connect-native"] += 1
        if not instance.kind and instance.service != "consul":
            billable += 1
    figures = {
        "Services": len({i.service for i in instances}),
        "ServiceInstances": len(instances),
        "ConnectServiceInstances": connect,
        "BillableServiceInstances": billable,
        "Nodes": len(nodes),
    }
    return max(node_index, service_index, 1), figures
