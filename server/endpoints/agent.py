"""The ``/v1/agent/*`` endpoints (Consul's ``agent/agent_endpoint.go``) and the agent's local
state sync.

The agent's own services and checks live in ``server.agent.local.LocalState`` (``ctx.local``);
``register`` creates one when the agent has not. ``AgentLocal`` (a ctx service) runs the check
runners and keeps the catalog in step, as Consul's anti-entropy does:

* every change made through this API is synced at once, before the answer (Consul's
  ``syncChanges``; a failed sync is only logged: the next pass retries);
* a check whose status changes is synced right away; output-only changes are synced at most
  about once per ``check_update_interval`` per check (default 5 min; Consul's deferred check
  sync, ``LocalState.check_update_interval``);
* a full sync (Consul's ``SyncFull``) at start, on gaining leadership, and then every minute
  plus a random stagger that grows with the number of LAN members (Consul's ``agent/ae``:
  ``server.agent.local.full_sync_delay``); after a failed one, 15 s plus a stagger. A full sync
  reads this node's catalog entries — from the store on a server; through the client's
  servers on a client (``/v1/catalog/node-services/<node>`` and ``/v1/health/node/<node>``
  over server RPC, stale up to 2 s as Consul's ``fullSyncReadMaxStale``, with
  ``server.dns.relay.RelayCatalog``) — registers what differs, skips what is already in sync
  and deregisters catalog entries the agent does not have. Internal knob, for tests only:
  ``PROCONSUL_AE_INTERVAL`` (seconds) in the agent's environment replaces the 1 min base
  interval.

Writes go through Raft as ``MessageType.REGISTER`` (Consul's ``RegisterRequest``: ``Node``,
``ID``, ``Address``, ``Datacenter``, ``TaggedAddresses``, ``NodeMeta``, ``Service``, ``Check``
or ``Checks``, ``SkipNodeUpdate``) and ``MessageType.DEREGISTER`` (``Node`` with ``ServiceID``
or ``CheckID``). Until the catalog's command handlers exist the sync holds back instead of
proposing a command the state machine would refuse.

Answers follow Consul: PUTs answer 200 with an empty body; unknown service or check IDs are
404 with Consul's texts; ``/health/service/*`` answer 200/429/503 by aggregated status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import ipaddress
import os
import platform
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from server import logging as agent_logging
from server.agent.checks import CHECK_BUF_SIZE, CheckRunners
from server.agent.local import (
    CRITICAL,
    PASSING,
    SIDECAR_SUFFIX,
    VALID_STATUSES,
    WARNING,
    CheckEntry,
    CheckType,
    LocalError,
    LocalState,
    ServiceEntry,
    aggregated_status,
    full_sync_delay,
    parse_check_type,
)
from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.http import (
    HTTPError,
    fold_keys,
    json_response,
    parse_duration_param,
    read_json,
)

__all__ = ["API_VERSION", "AgentLocal", "register"]

log = structlog.get_logger("agent.local")

#: The Consul API version this agent implements (reported by /v1/agent/self).
API_VERSION = "1.22.0"
REVISION = "proconsul"
#: Consul's ``AEInterval``: the base interval of the full sync.
ANTI_ENTROPY_INTERVAL = 60.0
#: Consul's ``retryFailIntv``: the base wait before a failed full sync is tried again.
ANTI_ENTROPY_RETRY_INTERVAL = 15.0
#: Internal, for tests only: the full sync's base interval in seconds instead of 1 min.
AE_INTERVAL_ENV = "PROCONSUL_AE_INTERVAL"
#: Consul's ``fullSyncReadMaxStale``: how stale a client's read of its catalog entries may be.
FULL_SYNC_MAX_STALE = 2.0
#: A client's read of its catalog entries: per server tried, and over all of them.
FULL_SYNC_READ_TIMEOUT = 10.0
FULL_SYNC_TOTAL_TIMEOUT = 20.0
#: Consul's CheckDeregisterIntervalMin.
MIN_DEREGISTER_AFTER = 60.0
ENVOY_VERSIONS = ["1.34.1", "1.33.2", "1.32.5", "1.31.8"]

_SERVICE_FIELDS = (
    "Kind",
    "ID",
    "Name",
    "Tags",
    "Address",
    "TaggedAddresses",
    "Meta",
    "Port",
    "SocketPath",
    "Check",
    "Checks",
    "Weights",
    "Token",
    "EnableTagOverride",
    "Proxy",
    "Connect",
    "Locality",
)
_PROXY_FIELDS = (
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
    "Mode",
    "TransparentProxy",
    "Config",
    "Upstreams",
    "MeshGateway",
    "Expose",
    "AccessLogs",
)
_SERF_STATUS = {"alive": 1, "suspect": 1, "leaving": 2, "left": 3, "failed": 4, "dead": 4}
_LOG_LEVELS = {"TRACE": 0, "DEBUG": 10, "INFO": 20, "WARN": 30, "ERR": 40, "ERROR": 40}
_TOKEN_TYPES = (
    "default",
    "agent",
    "agent_recovery",
    "agent_master",
    "replication",
    "config_file_service_registration",
    "dns",
    "acl_token",
    "acl_agent_token",
    "acl_agent_master_token",
    "acl_replication_token",
)


# --- decoding --------------------------------------------------------------------------


def _decode_failed(reason: str) -> HTTPError:
    return HTTPError(400, f"Request decode failed: {reason}")


def _decode_check(obj: Any) -> CheckType:
    try:
        ct = parse_check_type(obj)
    except ValueError as exc:
        raise _decode_failed(str(exc)) from None
    if 0 < ct.deregister_critical_service_after < MIN_DEREGISTER_AFTER:
        log.warning(
            "deregister_interval_too_low",
            check=ct.check_id or ct.name,
            minimum=MIN_DEREGISTER_AFTER,
        )
        ct.deregister_critical_service_after = MIN_DEREGISTER_AFTER
    return ct


def _tagged_addresses(raw: Any) -> dict[str, dict[str, Any]]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise _decode_failed("TaggedAddresses must be an object")
    out = {}
    for key, value in raw.items():
        v = fold_keys(value, ("Address", "Port"), what="TaggedAddresses")
        out[str(key)] = {"Address": str(v.get("Address") or ""), "Port": int(v.get("Port") or 0)}
    return out


def _proxy(raw: Any) -> dict[str, Any]:
    p = fold_keys(raw, _PROXY_FIELDS, what="Proxy")
    snake = {
        "destination_service_name": "DestinationServiceName",
        "destination_service_id": "DestinationServiceID",
        "local_service_address": "LocalServiceAddress",
        "local_service_port": "LocalServicePort",
        "local_service_socket_path": "LocalServiceSocketPath",
        "mesh_gateway": "MeshGateway",
        "transparent_proxy": "TransparentProxy",
        "access_logs": "AccessLogs",
    }
    for key in list(p):
        if key in snake and snake[key] not in p:
            p[snake[key]] = p.pop(key)
    return p


def _is_any(address: str) -> bool:
    addr = address.strip("[]")
    try:
        return ipaddress.ip_address(addr).is_unspecified
    except ValueError:
        return False


def _validate_meta(meta: dict[str, Any], kind: str) -> str | None:
    if len(meta) > 64:
        return "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        if not key:
            return "Key cannot be blank"
        if len(key) > 128:
            return "Key is too long (limit: 128 characters)"
        if key.startswith("consul-") and kind not in ("mesh-gateway", "terminating-gateway"):
            return "Key prefix 'consul-' is reserved for internal use"
        if not isinstance(value, str):
            return f"Value for key {key!r} must be a string"
        if len(value) > 512:
            return "Value is too long (limit: 512 characters)"
    return None


def decode_service_definition(raw: Any) -> tuple[dict[str, Any], list[CheckType], Any]:
    """A ``ServiceDefinition`` body as (NodeService JSON, its check definitions, the
    ``Connect.SidecarService`` definition or None). 400s as Consul's."""
    body = fold_keys(raw, _SERVICE_FIELDS)
    for snake, canon in (
        ("enable_tag_override", "EnableTagOverride"),
        ("tagged_addresses", "TaggedAddresses"),
        ("socket_path", "SocketPath"),
    ):
        if snake in body:
            value = body.pop(snake)
            if not body.get(canon):
                body[canon] = value
    name = body.get("Name") or ""
    if not isinstance(name, str):
        raise _decode_failed("Name must be a string")
    tags = body.get("Tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _decode_failed("Tags must be a list of strings")
    meta = body.get("Meta") or {}
    if not isinstance(meta, dict):
        raise _decode_failed("Meta must be an object")
    port = body.get("Port") or 0
    if isinstance(port, bool) or not isinstance(port, int):
        raise _decode_failed("Port must be a number")
    address = body.get("Address") or ""
    if not isinstance(address, str):
        raise _decode_failed("Address must be a string")
    kind = body.get("Kind") or ""
    ns: dict[str, Any] = {
        "Kind": kind,
        "ID": str(body.get("ID") or name),
        "Service": name,
        "Tags": list(tags),
        "Address": address,
        "TaggedAddresses": _tagged_addresses(body.get("TaggedAddresses")),
        "Meta": dict(meta),
        "Port": port,
        "SocketPath": str(body.get("SocketPath") or ""),
        "EnableTagOverride": bool(body.get("EnableTagOverride")),
        "Weights": {"Passing": 1, "Warning": 1},
    }
    weights = body.get("Weights")
    if weights is not None:
        w = fold_keys(weights, ("Passing", "Warning"), what="Weights")
        ns["Weights"] = {
            "Passing": int(w.get("Passing") or 0),
            "Warning": int(w.get("Warning") or 0),
        }
    if body.get("Proxy") is not None:
        ns["Proxy"] = _proxy(body["Proxy"])
    if body.get("Locality") is not None:
        loc = fold_keys(body["Locality"], ("Region", "Zone"), what="Locality")
        ns["Locality"] = {k: v for k, v in loc.items() if v}
    sidecar: Any = None
    if body.get("Connect") is not None:
        conn = fold_keys(body["Connect"], ("Native", "SidecarService"), what="Connect")
        if "sidecar_service" in conn and "SidecarService" not in conn:
            conn["SidecarService"] = conn.pop("sidecar_service")
        sidecar = conn.pop("SidecarService", None)
        if conn.get("Native"):
            ns["Connect"] = {"Native": True}
    checks: list[CheckType] = []
    if body.get("Check") is not None:
        ct = _decode_check(body["Check"])
        if not ct.empty():
            checks.append(ct)
    raw_checks = body.get("Checks") or []
    if not isinstance(raw_checks, list):
        raise _decode_failed("Checks must be a list")
    for item in raw_checks:
        checks.append(_decode_check(item))
    return ns, checks, sidecar


def agent_service_view(ns: dict[str, Any], datacenter: str) -> dict[str, Any]:
    """``api.AgentService`` (Consul's ``buildAgentService``)."""
    weights = ns.get("Weights") or {}
    out: dict[str, Any] = {}
    if ns.get("Kind"):
        out["Kind"] = ns["Kind"]
    out.update(
        {
            "ID": ns.get("ID", ""),
            "Service": ns.get("Service", ""),
            "Tags": list(ns.get("Tags") or []),
            "Meta": dict(ns.get("Meta") or {}),
            "Port": ns.get("Port", 0),
            "Address": ns.get("Address", ""),
        }
    )
    if ns.get("SocketPath"):
        out["SocketPath"] = ns["SocketPath"]
    if ns.get("TaggedAddresses"):
        out["TaggedAddresses"] = ns["TaggedAddresses"]
    out["Weights"] = {
        "Passing": weights.get("Passing") or 1,
        "Warning": weights.get("Warning", 1),
    }
    out["EnableTagOverride"] = bool(ns.get("EnableTagOverride"))
    kind = ns.get("Kind") or ""
    if kind == "connect-proxy" or kind.endswith("-gateway"):
        proxy = dict(ns.get("Proxy") or {})
        proxy.setdefault("MeshGateway", {})
        proxy.setdefault("Expose", {})
        out["Proxy"] = proxy
    if (ns.get("Connect") or {}).get("Native"):
        out["Connect"] = {"Native": True}
    out["Datacenter"] = datacenter
    if ns.get("Locality"):
        out["Locality"] = ns["Locality"]
    return out


def _check_view(check: dict[str, Any]) -> dict[str, Any]:
    out = dict(check)
    out["ServiceTags"] = list(out.get("ServiceTags") or [])
    return out


def _content_hash(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


# --- persistence of API-registered services and checks ----------------------------------


def _file_name(ident: str) -> str:
    return hashlib.sha256(ident.encode()).hexdigest()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsynced
    and renamed into place: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _check_type_json(ct: CheckType | None) -> dict[str, Any] | None:
    return None if ct is None else dataclasses.asdict(ct)


def _check_type_from_json(raw: Any) -> CheckType | None:
    if not isinstance(raw, dict):
        return None
    known = {f.name for f in dataclasses.fields(CheckType)}
    return CheckType(**{k: v for k, v in raw.items() if k in known})


class LocalPersistence:
    """Services and checks registered through the agent API, kept in the data dir as Consul
    keeps them (``<data_dir>/services/<hash>``, ``<data_dir>/checks/<hash>``, and the last
    status set through a TTL endpoint in ``<data_dir>/checks/state/<hash>``), so that a
    restarted agent has them without re-registration. Each file is one JSON object written
    atomically (temporary file, fsync, rename); a removed service or check loses its file.

    Ones from the configuration files are not saved (the configuration brings them back);
    at start, and on reload, a saved one whose ID the configuration also defines is dropped
    (the configuration wins, as in Consul). ``-dev`` agents (no data dir) save nothing."""

    def __init__(self, data_dir: str) -> None:
        root = Path(data_dir)
        self.services_dir = root / "services"
        self.checks_dir = root / "checks"
        self.state_dir = root / "checks" / "state"
        # File writes (each fsynced) run on one worker thread, in submission order, so that a
        # burst of API registrations does not stall the event loop on fsyncs. ``flush()``
        # waits for everything submitted (the agent calls it when it stops).
        self._writes: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._pending = 0

    #: Write inline instead of on the worker thread (unit tests that inspect files at once).
    synchronous = False

    def _submit(self, write: Callable[[], None]) -> None:
        if self.synchronous:
            write()
            return
        with self._lock:
            self._pending += 1
            self._idle.clear()
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="agent-persist", daemon=True
                )
                self._writer.start()
        self._writes.put(write)

    def _write_loop(self) -> None:
        while True:
            write = self._writes.get()
            if write is None:
                return
            try:
                write()
            except OSError as exc:
                log.warning("persist_failed", error=str(exc))
            with self._lock:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (blocking) until every submitted write is on disk."""
        return self._idle.wait(timeout)

    # --- writes ---

    def save_service(self, entry: ServiceEntry) -> None:
        sid = str(entry.service.get("ID", ""))
        body = {"Service": entry.service, "Token": entry.token, "SidecarOf": entry.sidecar_of}
        data = orjson.dumps(body)
        self._submit(lambda: _write_atomic(self.services_dir / _file_name(sid), data))

    def save_check(self, entry: CheckEntry) -> None:
        cid = str(entry.check.get("CheckID", ""))
        body = {
            "Check": entry.check,
            "ChkType": _check_type_json(entry.check_type),
            "Token": entry.token,
        }
        data = orjson.dumps(body)
        self._submit(lambda: _write_atomic(self.checks_dir / _file_name(cid), data))

    def save_check_state(self, check_id: str, status: str, output: str, ttl: float) -> None:
        body = {
            "CheckID": check_id,
            "Status": status,
            "Output": output,
            "Expires": time.time() + ttl,
        }
        data = orjson.dumps(body)
        self._submit(lambda: _write_atomic(self.state_dir / _file_name(check_id), data))

    def remove_service(self, service_id: str) -> None:
        self._submit(lambda: _unlink(self.services_dir / _file_name(service_id)))

    def remove_check(self, check_id: str, *, keep_state: bool = False) -> None:
        self._submit(lambda: _unlink(self.checks_dir / _file_name(check_id)))
        if not keep_state:
            self._submit(lambda: _unlink(self.state_dir / _file_name(check_id)))

    # --- reads ---

    @staticmethod
    def _read_all(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
        out: list[tuple[Path, dict[str, Any]]] = []
        if not directory.is_dir():
            return out
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            try:
                body = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                log.warning("persisted_file_unreadable", path=str(path), error=str(exc))
                continue
            if isinstance(body, dict):
                out.append((path, body))
        return out

    def services(self) -> list[tuple[Path, dict[str, Any]]]:
        return self._read_all(self.services_dir)

    def checks(self) -> list[tuple[Path, dict[str, Any]]]:
        return self._read_all(self.checks_dir)

    def check_state(self, check_id: str) -> dict[str, Any] | None:
        """The saved TTL status of ``check_id`` unless it has expired (then it is dropped)."""
        path = self.state_dir / _file_name(check_id)
        try:
            body = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(body, dict) or float(body.get("Expires") or 0) <= time.time():
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return body


# --- the local state service ------------------------------------------------------------


#: At most this many registrations per Raft entry when the agent syncs a backlog.
SYNC_BATCH = 256


class AgentLocal:
    """Runs the check runners and syncs ``LocalState`` to the catalog."""

    def __init__(self, ctx: ServerContext, local: LocalState) -> None:
        self.ctx = ctx
        self.local = local
        self.runners = CheckRunners(local, ctx)
        self.node_in_sync = False
        self._lock = asyncio.Lock()
        # Coalesced syncs (``sync_changes``): callers ask for a generation; one runner task
        # syncs until every asked generation is done, so requests that arrive while a write
        # is in flight are all carried by the next (batched) write.
        self._sync_asked = 0
        self._sync_done = 0
        self._sync_cond = asyncio.Condition()
        self._sync_runner: asyncio.Task[None] | None = None
        self._trigger: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_no_handler = False
        self._rng = random.Random()
        #: When the sync loop runs its next full sync (``loop.time()``); 0: at once.
        self._next_full = 0.0
        #: When the sync loop wakes next (the local state's clock), for deferred outputs.
        self._wake_at: float | None = None
        #: Full syncs done (tests and logs).
        self.full_syncs = 0
        self.ae_interval = _ae_interval()
        self.tokens: dict[str, str] = {}
        cfg = ctx.config
        self.persistence: LocalPersistence | None = (
            LocalPersistence(cfg.data_dir) if cfg.data_dir and not cfg.dev else None
        )
        #: While set, changes come from the configuration files (or from the saved files
        #: being loaded) and are not saved.
        self._not_persisted: str = ""
        local.listeners.append(self._on_change)
        local.listeners.append(self._persist_change)

    # --- service hooks ---

    async def start(self) -> None:
        self._trigger = asyncio.Event()
        self._changed = asyncio.Event()
        self._load_config()
        self._load_persisted()
        self.runners.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._sync_loop(), name="agent-anti-entropy"),
            loop.create_task(self._reap_loop(), name="agent-reap-critical"),
        ]
        self._trigger.set()

    async def stop(self) -> None:
        self.runners.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._sync_runner is not None and not self._sync_runner.done():
            self._sync_runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync_runner
        if self.persistence is not None:
            await asyncio.to_thread(self.persistence.flush)

    async def leadership_changed(self, is_leader: bool) -> None:
        if is_leader:
            self.request_full_sync()

    def request_full_sync(self) -> None:
        """Run a full sync now (Consul's ``SyncFull.Trigger``)."""
        self._next_full = 0.0
        if self._trigger is not None:
            self._trigger.set()

    # --- changes ---

    def _on_change(self, kind: str, ident: str) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
        if self._trigger is None:
            return
        if kind == "check-updated":
            self._trigger.set()
        elif kind == "check-output":
            entry = self.local.checks.get(ident)
            defer_until = entry.defer_until if entry is not None else None
            if defer_until is None:
                self._trigger.set()  # not deferred (check_update_interval 0): sync it now
            elif self._wake_at is None or defer_until < self._wake_at:
                self._trigger.set()  # the sync loop must wake earlier for this one

    async def wait_change(self, timeout: float) -> None:
        event = self._changed
        if event is None:
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    def reload_config(self) -> None:
        """After ``/v1/agent/reload`` or SIGHUP: (re-)register the services and checks of the
        configuration files now in ``ctx.config`` (ones removed from the files stay until
        deregistered through the API)."""
        self._load_config()
        if self._trigger is not None:
            self._trigger.set()

    def _load_config(self) -> None:
        """Services and checks from the agent's configuration files."""
        self._not_persisted = "config"
        try:
            self._load_config_entries()
        finally:
            self._not_persisted = ""

    def _load_config_entries(self) -> None:
        for raw in self.ctx.config.services:
            try:
                ns, checks, sidecar = decode_service_definition(raw)
                add_service(self, ns, checks, sidecar, token="", replace=False)
            except (HTTPError, LocalError) as exc:
                log.warning("config_service_invalid", error=getattr(exc, "message", str(exc)))
        for raw in self.ctx.config.checks:
            try:
                ct = _decode_check(raw)
                check_script_allowed(self.ctx, ct)
                self.local.add_check(ct.check_id, ct)
            except (HTTPError, LocalError) as exc:
                log.warning("config_check_invalid", error=getattr(exc, "message", str(exc)))

    # --- persistence ---

    def _persist_change(self, kind: str, ident: str) -> None:
        """Keep the saved services and checks in step with the local state (a listener of
        ``LocalState``: called after every change)."""
        store = self.persistence
        if store is None or self._not_persisted == "restore":
            return
        try:
            if kind == "service-added":
                entry = self.local.services.get(ident)
                if self._not_persisted == "config" or entry is None or entry.deleted:
                    store.remove_service(ident)  # the configuration's definition wins
                else:
                    store.save_service(entry)
            elif kind == "service-removed":
                store.remove_service(ident)
            elif kind == "check-added":
                check = self.local.checks.get(ident)
                if self._not_persisted == "config" or check is None or check.deleted:
                    # The configuration's definition wins; its last TTL status is kept.
                    store.remove_check(ident, keep_state=True)
                else:
                    store.save_check(check)
            elif kind == "check-removed":
                store.remove_check(ident)
        except OSError as exc:
            log.error("persist_failed", kind=kind, id=ident, error=str(exc))

    def _load_persisted(self) -> None:
        """Services and checks saved by an earlier run (``LocalPersistence``): services
        first, then checks; one the configuration already defines is dropped, as is a check
        whose service is gone. A TTL check gets back the status last set through the API
        unless its TTL has run out since."""
        store = self.persistence
        if store is None:
            return
        self._not_persisted = "restore"
        try:
            for path, body in store.services():
                ns = body.get("Service")
                sid = str((ns or {}).get("ID") or "") if isinstance(ns, dict) else ""
                if not sid or self.local.service(sid) is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
                assert isinstance(ns, dict)
                try:
                    self.local.add_service(
                        ns,
                        token=str(body.get("Token") or ""),
                        sidecar_of=str(body.get("SidecarOf") or ""),
                    )
                except LocalError as exc:
                    log.warning("persisted_service_invalid", id=sid, error=exc.message)
            for path, body in store.checks():
                health = body.get("Check")
                cid = str((health or {}).get("CheckID") or "") if isinstance(health, dict) else ""
                if not cid or self.local.check(cid) is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
                assert isinstance(health, dict)
                try:
                    ct = _check_type_from_json(body.get("ChkType"))
                    self.local.restore_check(health, ct, str(body.get("Token") or ""))
                except (LocalError, TypeError) as exc:
                    log.warning("persisted_check_dropped", id=cid, error=str(exc))
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            for cid, entry in list(self.local.checks.items()):
                ct = entry.check_type
                if entry.deleted or ct is None or ct.ttl <= 0:
                    continue
                state = store.check_state(cid)
                if state is not None and state.get("Status") in VALID_STATUSES:
                    self.local.update_check(
                        cid, str(state["Status"]), str(state.get("Output") or "")
                    )
        finally:
            self._not_persisted = ""
        log.info(
            "local_state_restored",
            services=len(self.local.all_services()),
            checks=len(self.local.all_checks()),
        )

    # --- sync ---

    def _node_fields(self) -> dict[str, Any]:
        cfg = self.ctx.config
        address = cfg.advertise
        wan = cfg.advertise_addr_wan or address
        meta = {"consul-network-segment": "", "consul-version": API_VERSION}
        meta.update(cfg.node_meta)
        return {
            "Node": cfg.node_name,
            "ID": _node_id(self.ctx),
            "Address": address,
            "Datacenter": cfg.datacenter,
            "TaggedAddresses": {
                "lan": address,
                "lan_ipv4": address,
                "wan": wan,
                "wan_ipv4": wan,
            },
            "NodeMeta": meta,
        }

    def _can_sync(self) -> bool:
        from server.commands import HANDLERS  # late: avoids an import cycle at start

        ok = MessageType.REGISTER in HANDLERS and MessageType.DEREGISTER in HANDLERS
        if not ok and not self._warned_no_handler:
            self._warned_no_handler = True
            log.warning("catalog_sync_unavailable", reason="no REGISTER/DEREGISTER handler")
        return ok

    async def sync(self) -> bool:
        """Push every out-of-sync entry to the catalog; False if a write failed (logged)."""
        if not self._can_sync():
            return False
        async with self._lock:
            node = self._node_fields()
            as_of = self.local.version
            ops = self.local.pending()
            if not ops and not self.node_in_sync:
                ops = [("register", {}, [], [])]
            # Once the node itself is registered, registrations go out in batches: one Raft
            # entry for everything that queued up while the previous write was in flight
            # (concurrent API registrations on a busy agent), instead of one round each.
            batch: list[tuple[dict[str, Any], list[str], list[str]]] = []
            for op, body, service_ids, check_ids in ops:
                if op == "register" and self.node_in_sync and len(batch) < SYNC_BATCH:
                    batch.append(({**node, **body, "SkipNodeUpdate": True}, service_ids, check_ids))
                    continue
                if batch and not await self._register_batch(batch, as_of):
                    return False
                batch = []
                if op == "register" and self.node_in_sync:
                    batch.append(({**node, **body, "SkipNodeUpdate": True}, service_ids, check_ids))
                    continue
                try:
                    if op == "register":
                        request = {**node, **body, "SkipNodeUpdate": self.node_in_sync}
                        await self.ctx.apply(MessageType.REGISTER, request)
                        self.node_in_sync = True
                    else:
                        await self.ctx.apply(MessageType.DEREGISTER, {"Node": node["Node"], **body})
                except Exception as exc:
                    text = getattr(exc, "message", None) or str(exc)
                    if op == "deregister" and "Unknown" in text:
                        pass  # already gone from the catalog
                    else:
                        log.warning("sync_failed", op=op, body=body, error=text)
                        return False
                self.local.mark_synced(op, service_ids, check_ids, as_of)
            if batch and not await self._register_batch(batch, as_of):
                return False
        return True

    async def _register_batch(
        self, batch: list[tuple[dict[str, Any], list[str], list[str]]], as_of: int
    ) -> bool:
        """Write ``batch`` (RegisterRequests with the entries they sync) in one Raft entry; a
        request the catalog refuses is logged and stays out of sync (the others are synced)."""
        if len(batch) == 1:
            request, service_ids, check_ids = batch[0]
            try:
                await self.ctx.apply(MessageType.REGISTER, request)
            except Exception as exc:
                text = getattr(exc, "message", None) or str(exc)
                log.warning("sync_failed", op="register", body=request, error=text)
                return False
            self.local.mark_synced("register", service_ids, check_ids, as_of)
            return True
        log.debug("sync_register_batch", size=len(batch))
        try:
            results = await self.ctx.apply(
                MessageType.PROCONSUL_REGISTER_BATCH, {"Requests": [r for r, _, _ in batch]}
            )
        except Exception as exc:
            text = getattr(exc, "message", None) or str(exc)
            log.warning("sync_failed", op="register-batch", size=len(batch), error=text)
            return False
        ok = True
        for (request, service_ids, check_ids), error in zip(batch, results, strict=True):
            if error is None:
                self.local.mark_synced("register", service_ids, check_ids, as_of)
            else:
                ok = False
                log.warning("sync_failed", op="register", body=request, error=error)
        return ok

    def _same_node(self, remote: dict[str, Any]) -> bool:
        fields = self._node_fields()
        return bool(
            remote.get("Address") == fields["Address"]
            and (not fields["ID"] or remote.get("ID") == fields["ID"])
            and dict(remote.get("TaggedAddresses") or {}) == fields["TaggedAddresses"]
            and dict(remote.get("Meta") or {}) == fields["NodeMeta"]
        )

    async def _read_catalog(
        self,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, dict[str, Any]]] | None:
        """This node's catalog entries as JSON: ``(node, services by ID, checks by ID)``, or
        None when the node is not registered. A server reads its store; a client (no store)
        asks its servers (module docstring). Raises when they cannot be read."""
        node_name = self.ctx.config.node_name
        if self.ctx.fsm is not None:
            catalog = self.ctx.store.catalog
            _, found = catalog.node_services(None, node_name)
            _, remote_checks = catalog.node_checks(None, node_name)
            if found is None:
                return None
            node, remote_services = found
            return (
                node.to_api(),
                {s.id: s.to_node_service() for s in remote_services},
                {c.check_id: c.to_api() for c in remote_checks},
            )
        from urllib.parse import quote

        from server.dns.relay import RelayCatalog

        relay = RelayCatalog(
            self.ctx,
            allow_stale=True,
            max_stale=FULL_SYNC_MAX_STALE,
            read_timeout=FULL_SYNC_READ_TIMEOUT,
            total_timeout=FULL_SYNC_TOTAL_TIMEOUT,
        )
        name = quote(node_name, safe="")
        listing = await relay._get(f"/v1/catalog/node-services/{name}", {}, "")
        if not isinstance(listing, dict) or not isinstance(listing.get("Node"), dict):
            return None
        checks = await relay._get(f"/v1/health/node/{name}", {}, "")
        services = listing.get("Services") or []
        if isinstance(services, dict):  # /v1/catalog/node's shape, should a server send it
            services = list(services.values())
        return (
            listing["Node"],
            {str(s.get("ID", "")): s for s in services if isinstance(s, dict)},
            {str(c.get("CheckID", "")): c for c in checks or [] if isinstance(c, dict)},
        )

    async def anti_entropy_diff(self) -> bool:
        """Compare the local state with this node's catalog entries (Consul's
        ``updateSyncState``, ``LocalState.update_sync_state``): what differs or is missing
        is marked for registering, what is the same is marked in sync, catalog entries the
        agent does not know are marked for deregistering (the servers' own ``consul``
        service and ``serfHealth`` aside). False when the catalog could not be read: then
        everything is registered again."""
        as_of = self.local.version
        try:
            remote = await self._read_catalog()
        except Exception as exc:
            log.warning("anti_entropy_read_failed", error=getattr(exc, "message", None) or str(exc))
            self.local.mark_all_out_of_sync()
            self.node_in_sync = False
            return False
        if remote is None:
            self.local.mark_all_out_of_sync()
            self.node_in_sync = False
            return True
        node, services, checks = remote
        if not self._same_node(node):
            self.node_in_sync = False
        self.local.update_sync_state(services, checks, as_of=as_of)
        return True

    async def full_sync(self) -> bool:
        """Consul's ``SyncFull``: the catalog diff, then the sync. False if either failed."""
        read = await self.anti_entropy_diff()
        try:
            synced = await self.sync()
        except Exception as exc:
            log.warning("sync_failed", error=getattr(exc, "message", None) or str(exc))
            synced = False
        self.full_syncs += 1
        return read and synced

    async def _cluster_size(self) -> int:
        serf = self.ctx.serf_lan
        if serf is None:
            return 1
        try:
            return len(await serf.members())
        except Exception:
            return 1

    async def sync_changes(self) -> None:
        """Sync what changed, as part of the next sync that starts after this call (one sync
        at a time; changes made meanwhile go out together in one batched write)."""
        self._sync_asked += 1
        wanted = self._sync_asked
        if self._sync_runner is None or self._sync_runner.done():
            self._sync_runner = asyncio.get_running_loop().create_task(
                self._run_syncs(), name="agent-sync"
            )
        async with self._sync_cond:
            await self._sync_cond.wait_for(lambda: self._sync_done >= wanted)

    async def _run_syncs(self) -> None:
        try:
            while self._sync_done < self._sync_asked:
                target = self._sync_asked
                with contextlib.suppress(Exception):
                    await self.sync()
                async with self._sync_cond:
                    self._sync_done = target
                    self._sync_cond.notify_all()
        finally:
            async with self._sync_cond:
                # Never leave a caller waiting on a runner that died.
                self._sync_done = max(self._sync_done, self._sync_asked)
                self._sync_cond.notify_all()

    async def _sync_loop(self) -> None:
        """Consul's ``StateSyncer``: a full sync at start and then every ``ae_interval`` plus
        a stagger scaled by the LAN size (sooner after a failure, or when asked); partial
        syncs on triggers in between; deferred check outputs when their timers run out."""
        assert self._trigger is not None
        loop = asyncio.get_running_loop()
        self._next_full = 0.0  # a full sync at start
        while True:
            timeout = self._next_full - loop.time()
            deferred = self.local.next_deferred()
            if deferred is not None:
                timeout = min(timeout, deferred - self.local.now())
            timeout = max(timeout, 0.0)
            self._wake_at = self.local.now() + timeout
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._trigger.wait()
            self._trigger.clear()
            self._wake_at = None
            try:
                self.local.fire_deferred()
                if loop.time() >= self._next_full:
                    ok = await self.full_sync()
                    base = self.ae_interval if ok else ANTI_ENTROPY_RETRY_INTERVAL
                    delay = full_sync_delay(base, await self._cluster_size(), self._rng)
                    self._next_full = loop.time() + delay
                else:
                    await self.sync_changes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep syncing whatever one pass hit
                log.error("anti_entropy_failed", error=str(exc))
                self._next_full = loop.time() + ANTI_ENTROPY_RETRY_INTERVAL

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for sid in self.local.critical_services_to_reap():
                log.info("deregister_critical_service", service=sid)
                with contextlib.suppress(LocalError):
                    self.local.remove_service(sid)
                await self.sync_changes()


def _ae_interval() -> float:
    """The full sync's base interval: Consul's 1 min, or ``PROCONSUL_AE_INTERVAL`` (tests)."""
    raw = os.environ.get(AE_INTERVAL_ENV, "")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            log.warning("bad_ae_interval", value=raw)
        else:
            if value > 0:
                return value
    return ANTI_ENTROPY_INTERVAL


# --- operations shared by handlers and config loading -----------------------------------


def check_script_allowed(ctx: ServerContext, ct: CheckType, *, remote: bool = False) -> None:
    if not ct.is_script():
        return
    cfg = ctx.config
    if cfg.enable_script_checks:
        return
    if remote and cfg.enable_local_script_checks:
        raise HTTPError(
            500,
            "Scripts are disabled on this agent from remote calls; to enable, configure "
            "'enable_script_checks' to true",
        )
    if not remote and cfg.enable_local_script_checks:
        return
    raise HTTPError(
        500,
        "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true",
    )


def add_service(
    agent: AgentLocal,
    ns: dict[str, Any],
    checks: list[CheckType],
    sidecar_def: Any,
    *,
    token: str,
    replace: bool,
) -> None:
    """Validate and add a service (and its sidecar) to the local state."""
    local = agent.local
    if not ns["Service"]:
        raise HTTPError(400, "Missing service name")
    if _is_any(ns["Address"]):
        raise HTTPError(400, "Invalid service address")
    weights = ns["Weights"]
    if weights["Passing"] <= 0:
        raise HTTPError(400, "Invalid Weights: Passing must be greater than 0")
    if weights["Warning"] < 0:
        raise HTTPError(400, "Invalid Weights: Warning must be greater or equal than 0")
    err = _validate_meta(ns["Meta"], ns["Kind"])
    if err is not None:
        raise HTTPError(400, f"Invalid Service Meta: {err}")
    if ns["Kind"] == "connect-proxy":
        if not (ns.get("Proxy") or {}).get("DestinationServiceName"):
            raise HTTPError(
                400,
                "Validation failed: Proxy.DestinationServiceName must be non-empty for "
                "Connect proxy services",
            )
        if not ns["Port"] and not ns["SocketPath"]:
            raise HTTPError(
                400, "Validation failed: Port or SocketPath must be set for a Connect proxy"
            )
    for ct in checks:
        if ct.status and ct.status not in VALID_STATUSES:
            raise HTTPError(400, "Status for checks must 'passing', 'warning', 'critical'")
        err = ct.validate()
        if err is not None:
            raise HTTPError(400, f"Invalid check: {err}")
        check_script_allowed(agent.ctx, ct, remote=True)
    sidecar: tuple[dict[str, Any], list[CheckType]] | None = None
    if sidecar_def is not None:
        sidecar = _sidecar(agent, ns, sidecar_def)
    try:
        local.add_service(ns, checks, token=token, replace_existing_checks=replace)
        if sidecar is not None:
            local.add_service(
                sidecar[0],
                sidecar[1],
                token=token,
                replace_existing_checks=replace,
                sidecar_of=ns["ID"],
            )
    except LocalError as exc:
        raise HTTPError(exc.status, exc.message) from None


def _sidecar(
    agent: AgentLocal, ns: dict[str, Any], raw: Any
) -> tuple[dict[str, Any], list[CheckType]]:
    """Consul's ``sidecarServiceFromNodeService`` with its defaults."""
    raw = fold_keys(raw, _SERVICE_FIELDS, what="SidecarService")
    if not raw.get("Name"):
        raw["Name"] = ns["Service"] + SIDECAR_SUFFIX
    sc, checks, nested = decode_service_definition(raw)
    if nested is not None:
        raise HTTPError(
            400, "Invalid SidecarService: sidecar_service can't have a nested sidecar_service"
        )
    sc["ID"] = ns["ID"] + SIDECAR_SUFFIX
    if not sc["Meta"] and ns["Meta"]:
        sc["Meta"] = dict(ns["Meta"])
    if not sc["Tags"] and ns["Tags"]:
        sc["Tags"] = list(ns["Tags"])
    if not sc["Kind"]:
        sc["Kind"] = "connect-proxy"
    if not sc["Address"]:
        sc["Address"] = ns["Address"]
    proxy = dict(sc.get("Proxy") or {})
    proxy.setdefault("DestinationServiceName", ns["Service"])
    proxy.setdefault("DestinationServiceID", ns["ID"])
    if not proxy.get("LocalServiceSocketPath") and (
        not proxy.get("LocalServiceAddress") or int(proxy.get("LocalServicePort") or 0) < 1
    ):
        if ns.get("SocketPath"):
            proxy["LocalServiceSocketPath"] = ns["SocketPath"]
        else:
            proxy.setdefault("LocalServiceAddress", "127.0.0.1")
            if int(proxy.get("LocalServicePort") or 0) < 1:
                proxy["LocalServicePort"] = ns["Port"]
    sc["Proxy"] = proxy
    if sc["Port"] < 1:
        try:
            sc["Port"] = agent.local.sidecar_port(sc["ID"])
        except LocalError as exc:
            raise HTTPError(exc.status, exc.message) from None
    if not checks:
        address = sc["Address"] or proxy.get("LocalServiceAddress") or "127.0.0.1"
        host = f"[{address}]" if ":" in address else address
        checks = [
            CheckType(name="Connect Sidecar Listening", tcp=f"{host}:{sc['Port']}", interval=10.0),
            CheckType(name=f"Connect Sidecar Aliasing {ns['ID']}", alias_service=ns["ID"]),
        ]
    return sc, checks


# --- handlers ---------------------------------------------------------------------------


def _parse_enable(request: web.Request) -> bool:
    if "enable" not in request.query:
        raise HTTPError(400, "Missing value for enable")
    raw = request.query["enable"]
    low = raw.lower()
    if low in ("1", "t", "true"):
        return True
    if low in ("0", "f", "false"):
        return False
    raise HTTPError(400, f'Invalid value for enable: "{raw}"')


def _token(request: web.Request) -> str:
    return request.query.get("token", "") or request.headers.get("X-Consul-Token", "")


class AgentEndpoint:
    def __init__(self, ctx: ServerContext, agent: AgentLocal) -> None:
        self.ctx = ctx
        self.agent = agent
        self.local: LocalState = agent.local

    # --- services ---

    async def services(self, request: web.Request) -> web.Response:
        dc = self.ctx.config.datacenter
        views = {sid: agent_service_view(s, dc) for sid, s in self.local.all_services().items()}
        expr = request.query.get("filter", "")
        kept = self.ctx.apply_filter(expr, views.items(), lambda item: item[1])
        return json_response(request, dict(kept))

    async def service(self, request: web.Request) -> web.Response:
        sid = request.match_info["service_id"]
        wait = 300.0
        if "wait" in request.query:
            wait = min(parse_duration_param(request.query["wait"], "wait time") or 300.0, 600.0)
        want_hash = request.query.get("hash", "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            svc = self.local.service(sid)
            if svc is None:
                raise HTTPError(404, f"unknown service ID: {sid}")
            view = agent_service_view(svc, self.ctx.config.datacenter)
            digest = _content_hash(view)
            view["ContentHash"] = digest
            remaining = deadline - loop.time()
            if not want_hash or digest != want_hash or remaining <= 0 or self.ctx.closed:
                return json_response(request, view, headers={"X-Consul-ContentHash": digest})
            await self.agent.wait_change(min(remaining, 1.0))

    async def register_service(self, request: web.Request) -> web.Response:
        raw = await read_json(request, empty={})
        ns, checks, sidecar = decode_service_definition(raw)
        q = request.query
        replace = "replace-existing-checks" in q and q.get("replace-existing-checks") in (
            "",
            "true",
        )
        add_service(self.agent, ns, checks, sidecar, token=_token(request), replace=replace)
        await self.agent.sync_changes()
        return web.Response()

    async def deregister_service(self, request: web.Request) -> web.Response:
        sid = request.match_info["service_id"]
        try:
            self.local.remove_service(sid)
        except LocalError as exc:
            raise HTTPError(exc.status, exc.message) from None
        await self.agent.sync_changes()
        return web.Response()

    async def service_maintenance(self, request: web.Request) -> web.Response:
        sid = request.match_info.get("service_id", "")
        if not sid:
            raise HTTPError(400, "Missing service ID")
        enable = _parse_enable(request)
        if self.local.service(sid) is None:
            raise HTTPError(
                404,
                f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the '
                "service name.",
            )
        try:
            if enable:
                self.local.enable_service_maintenance(sid, request.query.get("reason", ""))
            else:
                self.local.disable_service_maintenance(sid)
        except LocalError as exc:
            raise HTTPError(404, exc.message) from None
        await self.agent.sync_changes()
        return web.Response()

    async def node_maintenance(self, request: web.Request) -> web.Response:
        enable = _parse_enable(request)
        if enable:
            self.local.enable_node_maintenance(request.query.get("reason", ""))
        else:
            self.local.disable_node_maintenance()
        await self.agent.sync_changes()
        return web.Response()

    async def health_by_id(self, request: web.Request) -> web.Response:
        sid = request.match_info.get("service_id", "")
        if not sid:
            raise HTTPError(400, "Missing serviceID")
        text = _want_text(request)
        svc = self.local.service(sid)
        if svc is None:
            reason = f"ServiceId {sid} not found"
            if text:
                return web.Response(status=404, text=reason)
            missing: dict[str, Any] = {
                "AggregatedStatus": CRITICAL,
                "Service": None,
                "Checks": None,
            }
            return json_response(request, missing, status=404)
        code, status, checks = self._service_health(sid)
        if text:
            return web.Response(status=code, text=status)
        view = agent_service_view(svc, self.ctx.config.datacenter)
        found: dict[str, Any] = {"AggregatedStatus": status, "Service": view, "Checks": checks}
        return json_response(request, found, status=code)

    async def health_by_name(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        if not name:
            raise HTTPError(400, "Missing service Name")
        code = 404
        status = f"ServiceName {name} Not Found"
        result = []
        for svc in self.local.services_by_name(name):
            scode, sstatus, checks = self._service_health(svc["ID"])
            view = agent_service_view(svc, self.ctx.config.datacenter)
            result.append({"AggregatedStatus": sstatus, "Service": view, "Checks": checks})
            if code == 404 or code < scode:
                code, status = scode, sstatus
        if _want_text(request):
            return web.Response(status=code, text=status)
        return json_response(request, result, status=code)

    def _service_health(self, sid: str) -> tuple[int, str, list[dict[str, Any]]]:
        checks = [_check_view(c) for c in self.local.checks_for_service(sid, include_node=True)]
        status = aggregated_status(checks)
        if status == PASSING:
            return 200, status, checks
        if status == WARNING:
            return 429, status, checks
        return 503, status, checks

    # --- checks ---

    async def checks(self, request: web.Request) -> web.Response:
        views = {cid: _check_view(c) for cid, c in self.local.all_checks().items()}
        expr = request.query.get("filter", "")
        kept = self.ctx.apply_filter(expr, views.items(), lambda item: item[1])
        return json_response(request, dict(kept))

    async def register_check(self, request: web.Request) -> web.Response:
        raw = await read_json(request, empty={})
        ct = _decode_check(raw)
        if not ct.name:
            raise HTTPError(400, "Missing check name")
        if ct.status and ct.status not in VALID_STATUSES:
            raise HTTPError(400, "Bad check status")
        err = ct.validate()
        if err is not None:
            raise HTTPError(400, f"Invalid check: {err}")
        if ct.service_id and self.local.service(ct.service_id) is None:
            raise HTTPError(404, f'ServiceID "{ct.service_id}" does not exist')
        check_script_allowed(self.ctx, ct, remote=True)
        try:
            self.local.add_check(ct.check_id, ct, token=_token(request))
        except LocalError as exc:
            raise HTTPError(exc.status, exc.message) from None
        await self.agent.sync_changes()
        return web.Response()

    async def deregister_check(self, request: web.Request) -> web.Response:
        cid = request.match_info["check_id"]
        try:
            self.local.remove_check(cid)
        except LocalError as exc:
            raise HTTPError(exc.status, exc.message) from None
        await self.agent.sync_changes()
        return web.Response()

    async def check_pass(self, request: web.Request) -> web.Response:
        return await self._ttl_update(request, PASSING, request.query.get("note", ""))

    async def check_warn(self, request: web.Request) -> web.Response:
        return await self._ttl_update(request, WARNING, request.query.get("note", ""))

    async def check_fail(self, request: web.Request) -> web.Response:
        return await self._ttl_update(request, CRITICAL, request.query.get("note", ""))

    async def check_update(self, request: web.Request) -> web.Response:
        raw = await read_json(request, empty={})
        body = fold_keys(raw, ("Status", "Output"))
        status = body.get("Status") or ""
        if status not in VALID_STATUSES:
            raise HTTPError(400, f"Invalid check status: '{status}'")
        output = str(body.get("Output") or "")
        total = len(output)
        if total > CHECK_BUF_SIZE:
            output = f"{output[:CHECK_BUF_SIZE]} ... (captured {CHECK_BUF_SIZE} of {total} bytes)"
        return await self._ttl_update(request, status, output)

    async def _ttl_update(self, request: web.Request, status: str, output: str) -> web.Response:
        cid = request.match_info["check_id"]
        if self.local.check(cid) is None:
            raise HTTPError(
                404,
                f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check '
                "name.",
            )
        runner = self.agent.runners.ttl(cid)
        if runner is None:
            raise HTTPError(500, f'CheckID "{cid}" does not have associated TTL')
        runner.set_status(status, output)
        store = self.agent.persistence
        entry = self.local.check_entry(cid)
        if store is not None and entry is not None and entry.check_type is not None:
            try:
                store.save_check_state(
                    cid,
                    str(entry.check.get("Status", status)),
                    str(entry.check.get("Output", output)),
                    entry.check_type.ttl,
                )
            except OSError as exc:
                log.error("persist_failed", kind="check-state", id=cid, error=str(exc))
        await self.agent.sync_changes()
        return web.Response()

    # --- the agent itself ---

    def _member_self(self) -> dict[str, Any]:
        cfg = self.ctx.config
        return _member_json(
            cfg.node_name,
            cfg.advertise,
            cfg.serf_lan_port,
            _default_tags(self.ctx, wan=False),
            1,
        )

    async def _lan_members(self) -> list[dict[str, Any]]:
        serf = self.ctx.serf_lan
        if serf is None:
            return [self._member_self()]
        members = await serf.members()
        return [_member_from_info(m) for m in members]

    async def _wan_members(self) -> list[dict[str, Any]]:
        serf = self.ctx.serf_wan
        if serf is not None:
            return [_member_from_info(m) for m in await serf.members()]
        cfg = self.ctx.config
        if not cfg.server and not cfg.dev:
            return []
        return [
            _member_json(
                f"{cfg.node_name}.{cfg.datacenter}",
                cfg.advertise_addr_wan or cfg.advertise,
                cfg.serf_wan_port,
                _default_tags(self.ctx, wan=True),
                1,
            )
        ]

    async def members(self, request: web.Request) -> web.Response:
        wan = bool(request.query.get("wan", ""))
        segment = request.query.get("segment", "")
        if wan:
            if segment not in ("", "_all"):
                raise HTTPError(400, "Cannot provide a segment with wan=true")
            return json_response(request, await self._wan_members())
        members = await self._lan_members()
        if segment and segment != "_all":
            members = [m for m in members if m["Tags"].get("segment", "") == segment]
        return json_response(request, members)

    async def self_(self, request: web.Request) -> web.Response:
        cfg = self.ctx.config
        name = cfg.node_name
        member = None
        for m in await self._lan_members():
            if m["Name"] == name:
                member = m
        if member is None:
            member = self._member_self()
        config = {
            "Datacenter": cfg.datacenter,
            "PrimaryDatacenter": cfg.primary_datacenter or cfg.datacenter,
            "NodeName": name,
            "NodeID": _node_id(self.ctx),
            "Revision": REVISION,
            "Server": bool(cfg.server or cfg.dev),
            "Version": API_VERSION,
            "BuildDate": "2025-01-01T00:00:00Z",
        }
        grpc_tls = cfg.grpc_tls_port
        xds = {
            "SupportedProxies": {"envoy": ENVOY_VERSIONS},
            "Port": grpc_tls if grpc_tls > 0 else cfg.grpc_port,
            "Ports": {"Plaintext": cfg.grpc_port, "TLS": grpc_tls},
        }
        meta = {"consul-network-segment": "", "consul-version": API_VERSION}
        meta.update(cfg.node_meta)
        body = {
            "Config": config,
            "DebugConfig": _debug_config(self.ctx),
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": member,
            "Stats": self._stats(),
            "Meta": meta,
            "xDS": xds,
        }
        return json_response(request, body)

    def _stats(self) -> dict[str, dict[str, str]]:
        ttl = sum(1 for c in self.local.all_checks().values() if c.get("Type") == "ttl")
        monitors = sum(
            1 for c in self.local.all_checks().values() if c.get("Type") in ("script", "docker")
        )
        raft = self.ctx.raft
        stats: dict[str, dict[str, str]] = {
            "agent": {
                "check_monitors": str(monitors),
                "check_ttls": str(ttl),
                "checks": str(len(self.local.all_checks())),
                "services": str(len(self.local.all_services())),
            },
            "build": {
                "prerelease": "",
                "revision": REVISION,
                "version": API_VERSION,
                "version_metadata": "",
            },
            "runtime": {
                "arch": platform.machine(),
                "cpu_count": str(os.cpu_count() or 1),
                "goroutines": str(len(asyncio.all_tasks())),
                "max_procs": str(os.cpu_count() or 1),
                "os": sys.platform,
                "version": f"python{platform.python_version()}",
            },
        }
        if raft is not None:
            stats["consul"] = {
                "server": "true",
                "leader": "true" if raft.is_leader else "false",
                "leader_addr": raft.leader_address() or "",
                "known_datacenters": "1",
                "bootstrap": "false",
            }
        return stats

    async def metrics(self, request: web.Request) -> web.Response:
        now = time.time()
        gauges = [
            {
                "Name": "consul.runtime.num_goroutines",
                "Value": float(len(asyncio.all_tasks())),
                "Labels": {},
            },
            {
                "Name": "consul.agent.local.services",
                "Value": float(len(self.local.all_services())),
                "Labels": {},
            },
            {
                "Name": "consul.agent.local.checks",
                "Value": float(len(self.local.all_checks())),
                "Labels": {},
            },
            {
                "Name": "consul.runtime.uptime_seconds",
                "Value": float(now - self.ctx.started_at),
                "Labels": {},
            },
        ]
        fmt = request.query.get("format", "")
        accept = request.headers.get("Accept", "")
        if fmt == "prometheus" or "application/openmetrics-text" in accept:
            retention = _prometheus_retention(self.ctx)
            if retention <= 0:
                return web.Response(
                    status=200,
                    headers={
                        "X-Consul-Reason": "Prometheus is not enabled since its retention time is not positive"
                    },
                )
            lines = []
            for g in gauges:
                name = str(g["Name"]).replace(".", "_")
                lines.append(f"# TYPE {name} gauge")
                lines.append(f"{name} {g['Value']}")
            return web.Response(
                text="\n".join(lines) + "\n",
                content_type="text/plain",
                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(now - now % 10))
        body = {"Timestamp": stamp, "Gauges": gauges, "Points": [], "Counters": [], "Samples": []}
        return json_response(request, body)

    async def monitor(self, request: web.Request) -> web.StreamResponse:
        level = request.query.get("loglevel", "") or "INFO"
        if level.upper() not in _LOG_LEVELS:
            raise HTTPError(400, f"Unknown log level: {level}")
        min_level = _LOG_LEVELS[level.upper()]
        as_json = "logjson" in request.query
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=512)
        dropped = 0

        def sink(levelno: int, event: dict[str, Any]) -> None:
            nonlocal dropped
            if levelno < min_level:
                return
            try:
                queue.put_nowait(_render_log(event, as_json))
            except asyncio.QueueFull:
                dropped += 1

        remove = agent_logging.add_monitor(sink)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        try:
            await resp.prepare(request)
            while not self.ctx.closed:
                try:
                    async with asyncio.timeout(1.0):
                        line = await queue.get()
                except TimeoutError:
                    continue
                await resp.write(line.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            remove()
        return resp

    async def join(self, request: web.Request) -> web.Response:
        address = request.match_info["address"]
        wan = bool(request.query.get("wan", ""))
        agent = self.ctx.agent
        name = "join_wan" if wan else "join"
        fn = getattr(agent, name, None) if agent is not None else None
        if fn is None:
            pool = "WAN" if wan else "LAN"
            raise HTTPError(500, f"{pool} join is not supported by this agent")
        result = fn([address])
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, int) and not isinstance(result, bool) and result < 1:
            raise HTTPError(500, f"1 error occurred:\n\t* Failed to join {address}\n\n")
        return web.Response()

    async def leave(self, request: web.Request) -> web.Response:
        agent = self.ctx.agent
        if agent is None:
            raise HTTPError(500, "Agent is not running")
        fn = getattr(agent, "leave", None)
        if fn is not None:
            result = fn()
            if inspect.isawaitable(result):
                await result
        else:
            event = getattr(agent, "shutdown_requested", None)
            if event is None:
                raise HTTPError(500, "Leave is not supported by this agent")
            # Answer first, then shut down.
            asyncio.get_running_loop().call_later(0.1, event.set)
        return web.Response()

    async def force_leave(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        prune = "prune" in request.query
        wan = "wan" in request.query
        agent = self.ctx.agent
        fn = getattr(agent, "force_leave", None) if agent is not None else None
        if fn is not None:
            result = fn(node, prune=prune, wan=wan)
            if inspect.isawaitable(result):
                await result
            return web.Response()
        members = await (self._wan_members() if wan else self._lan_members())
        if not any(m["Name"] == node for m in members):
            raise HTTPError(500, f"No node found with name '{node}'")
        if node == self.ctx.config.node_name:
            raise HTTPError(500, "Can't force-leave the agent itself")
        raise HTTPError(500, "Force leave is not supported by this agent")

    async def reload(self, request: web.Request) -> web.Response:
        agent = self.ctx.agent
        fn = getattr(agent, "reload", None) if agent is not None else None
        if fn is not None:
            result = fn()
            if inspect.isawaitable(result):
                await result
        return web.Response()

    async def token(self, request: web.Request) -> web.Response:
        if not (self.ctx.config.acl or {}).get("enabled"):
            raise HTTPError(401, "ACL support disabled")
        kind = request.match_info["kind"]
        raw = await read_json(request, empty={})
        body = fold_keys(raw, ("Token",))
        if kind not in _TOKEN_TYPES:
            raise HTTPError(404, f'Token "{kind}" is unknown')
        self.agent.tokens[kind] = str(body.get("Token") or "")
        return web.Response()

    async def host(self, request: web.Request) -> web.Response:
        uname = platform.uname()
        body = {
            "Memory": _memory(),
            "CPU": [
                {"CPU": i, "ModelName": uname.processor or uname.machine}
                for i in range(os.cpu_count() or 1)
            ],
            "Host": {
                "hostname": uname.node,
                "uptime": int(time.time() - self.ctx.started_at),
                "os": sys.platform,
                "platform": uname.system.lower(),
                "kernelVersion": uname.release,
                "kernelArch": uname.machine,
            },
            "Disk": _disk(self.ctx.config.data_dir or "/"),
            "CollectionTime": time.time_ns(),
            "Errors": None,
        }
        return json_response(request, body)

    async def version(self, request: web.Request) -> web.Response:
        body = {
            "SHA": REVISION,
            "BuildDate": "2025-01-01T00:00:00Z",
            "HumanVersion": API_VERSION,
            "FIPS": "",
        }
        return json_response(request, body)


def _node_id(ctx: ServerContext) -> str:
    return str(getattr(ctx.agent, "node_id", "") or ctx.config.node_id)


def _want_text(request: web.Request) -> bool:
    if request.headers.get("Accept", "").startswith("text/plain"):
        return True
    fmt = request.query.get("format", "")
    return fmt == "text"


def _member_json(
    name: str, addr: str, port: int, tags: dict[str, str], status: int
) -> dict[str, Any]:
    return {
        "Name": name,
        "Addr": addr,
        "Port": port,
        "Tags": tags,
        "Status": status,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def _member_from_info(info: Any) -> dict[str, Any]:
    host, port = info.addr
    return _member_json(
        info.name, host, int(port), dict(info.tags), _SERF_STATUS.get(str(info.status).lower(), 0)
    )


def _default_tags(ctx: ServerContext, *, wan: bool) -> dict[str, str]:
    cfg = ctx.config
    tags = {
        "build": f"{API_VERSION}:{REVISION}",
        "dc": cfg.datacenter,
        "id": _node_id(ctx),
        "segment": "",
        "vsn": "2",
        "vsn_max": "3",
        "vsn_min": "2",
    }
    if cfg.server or cfg.dev or ctx.raft is not None:
        tags.update(
            {
                "role": "consul",
                "port": str(cfg.server_port),
                "raft_vsn": "3",
                "expect": str(cfg.bootstrap_expect) if cfg.bootstrap_expect else "",
                "wan_join_port": str(cfg.serf_wan_port),
                "acls": "1" if (cfg.acl or {}).get("enabled") else "0",
                "ft_fs": "1",
                "ft_si": "1",
            }
        )
        if not tags["expect"]:
            del tags["expect"]
        if cfg.bootstrap or cfg.dev:
            tags["bootstrap"] = "1"
    else:
        tags["role"] = "node"
    if wan:
        tags.pop("segment", None)
    return tags


def _debug_config(ctx: ServerContext) -> dict[str, Any]:
    cfg = ctx.config
    return {
        "Datacenter": cfg.datacenter,
        "PrimaryDatacenter": cfg.primary_datacenter or cfg.datacenter,
        "NodeName": cfg.node_name,
        "NodeID": _node_id(ctx),
        "DataDir": cfg.data_dir,
        "DevMode": cfg.dev,
        "ServerMode": bool(cfg.server or cfg.dev),
        "Bootstrap": cfg.bootstrap,
        "BootstrapExpect": cfg.bootstrap_expect,
        "Revision": REVISION,
        "Version": API_VERSION,
        "LogLevel": cfg.log_level.upper(),
        "LogJSON": cfg.log_json,
        "ClientAddrs": [cfg.client_addr],
        "BindAddr": cfg.bind_addr,
        "AdvertiseAddrLAN": cfg.advertise,
        "AdvertiseAddrWAN": cfg.advertise_addr_wan or cfg.advertise,
        "HTTPPort": cfg.http_port,
        "HTTPSPort": cfg.https_port,
        "DNSPort": cfg.dns_port,
        "GRPCPort": cfg.grpc_port,
        "GRPCTLSPort": cfg.grpc_tls_port,
        "ServerPort": cfg.server_port,
        "SerfPortLAN": cfg.serf_lan_port,
        "SerfPortWAN": cfg.serf_wan_port,
        "RetryJoinLAN": list(cfg.retry_join),
        "RetryJoinWAN": list(cfg.retry_join_wan),
        "EnableScriptChecks": cfg.enable_script_checks,
        "EnableLocalScriptChecks": cfg.enable_local_script_checks,
        "CheckUpdateInterval": f"{cfg.check_update_interval:g}s",
        "SessionTTLMin": f"{cfg.session_ttl_min:g}s",
        "KVMaxValueSize": cfg.kv_max_value_size,
        "TxnMaxReqLen": cfg.txn_max_req_len,
        "NodeMeta": dict(cfg.node_meta),
        "EncryptKey": "hidden" if cfg.encrypt else "",
        "ACLsEnabled": bool((cfg.acl or {}).get("enabled")),
        "ConnectEnabled": bool((cfg.connect or {}).get("enabled", cfg.dev)),
        "ConnectSidecarMinPort": 21000,
        "ConnectSidecarMaxPort": 21255,
        "UIConfig": {"Enabled": cfg.ui},
    }


def _prometheus_retention(ctx: ServerContext) -> float:
    raw = (ctx.config.telemetry or {}).get("prometheus_retention_time")
    if raw is None:
        return 0.0
    try:
        from server.agent.local import parse_duration_value

        return parse_duration_value(raw)
    except ValueError:
        return 0.0


def _memory() -> dict[str, int]:
    total = available = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            value = int(rest.split()[0]) * 1024
            if key == "MemTotal":
                total = value
            elif key == "MemAvailable":
                available = value
    return {"total": total, "available": available, "used": total - available}


def _disk(path: str) -> dict[str, Any]:
    try:
        st = os.statvfs(path)
    except OSError:
        return {}
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return {"path": path, "total": total, "free": free, "used": total - free}


def _render_log(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return orjson.dumps(event, default=str).decode() + "\n"
    stamp = str(event.get("timestamp", ""))
    level = str(event.get("level", "info")).upper()
    level = {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(level, level)
    name = str(event.get("logger", "agent"))
    text = str(event.get("event", ""))
    extras = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("timestamp", "level", "event", "logger")
    )
    return f"{stamp} [{level}] {name}: {text}{(' ' + extras) if extras else ''}\n"


# --- registration -----------------------------------------------------------------------


def register(app: web.Application, ctx: ServerContext) -> None:
    """Add this domain's routes to ``app`` (and the agent's local state, if it has none)."""
    if ctx.local is None:
        ctx.local = LocalState(
            ctx.config.node_name,
            datacenter=ctx.config.datacenter,
            check_update_interval=ctx.config.check_update_interval,
        )
    agent = AgentLocal(ctx, ctx.local)
    ctx.add_service(agent)
    ep = AgentEndpoint(ctx, agent)
    r = app.router
    routes: list[tuple[str, str, Callable[[web.Request], Any]]] = [
        ("GET", "/v1/agent/self", ep.self_),
        ("GET", "/v1/agent/members", ep.members),
        ("GET", "/v1/agent/services", ep.services),
        ("GET", "/v1/agent/service/{service_id:.+}", ep.service),
        ("GET", "/v1/agent/health/service/id/{service_id:.*}", ep.health_by_id),
        ("GET", "/v1/agent/health/service/name/{name:.*}", ep.health_by_name),
        ("GET", "/v1/agent/checks", ep.checks),
        ("PUT", "/v1/agent/service/register", ep.register_service),
        ("PUT", "/v1/agent/service/deregister/{service_id:.+}", ep.deregister_service),
        ("PUT", "/v1/agent/service/maintenance/{service_id:.*}", ep.service_maintenance),
        ("PUT", "/v1/agent/maintenance", ep.node_maintenance),
        ("PUT", "/v1/agent/check/register", ep.register_check),
        ("PUT", "/v1/agent/check/deregister/{check_id:.+}", ep.deregister_check),
        ("PUT", "/v1/agent/check/pass/{check_id:.+}", ep.check_pass),
        ("PUT", "/v1/agent/check/warn/{check_id:.+}", ep.check_warn),
        ("PUT", "/v1/agent/check/fail/{check_id:.+}", ep.check_fail),
        ("PUT", "/v1/agent/check/update/{check_id:.+}", ep.check_update),
        ("PUT", "/v1/agent/join/{address:.+}", ep.join),
        ("PUT", "/v1/agent/leave", ep.leave),
        ("PUT", "/v1/agent/force-leave/{node:.+}", ep.force_leave),
        ("PUT", "/v1/agent/reload", ep.reload),
        ("GET", "/v1/agent/metrics", ep.metrics),
        ("GET", "/v1/agent/monitor", ep.monitor),
        ("PUT", "/v1/agent/token/{kind:.+}", ep.token),
        ("GET", "/v1/agent/host", ep.host),
        ("GET", "/v1/agent/version", ep.version),
    ]
    for method, path, handler in routes:
        r.add_route(method, path, handler)
    # Consul's GET variants of the TTL updates (older clients use them).
    for verb, handler in (
        ("pass", ep.check_pass),
        ("warn", ep.check_warn),
        ("fail", ep.check_fail),
    ):
        r.add_route("GET", f"/v1/agent/check/{verb}/{{check_id:.+}}", handler)
