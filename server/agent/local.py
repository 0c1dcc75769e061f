"""``LocalState``: the services and checks registered on this agent (Consul's ``agent/local``).

The agent owns these; the catalog only mirrors them. Every change marks the entry out of sync,
and the sync (``server.endpoints.agent``) turns out-of-sync entries into Raft ``REGISTER`` /
``DEREGISTER`` commands with Consul's ``RegisterRequest`` shape. This module is pure: no I/O,
no asyncio, time only through the ``now`` callable given to the state.

Shapes kept as Consul's:

* a service is a ``structs.NodeService`` JSON object (``ID``, ``Service``, ``Tags``, ``Address``,
  ``Meta``, ``Port``, ``Kind``, ``Proxy``, ``Connect``, ``Weights``, ``EnableTagOverride``,
  ``TaggedAddresses``, ``SocketPath``, ``Locality``);
* a check is a ``structs.HealthCheck`` JSON object (``Node``, ``CheckID``, ``Name``, ``Status``,
  ``Notes``, ``Output``, ``ServiceID``, ``ServiceName``, ``ServiceTags``, ``Type``,
  ``Interval``, ``Timeout``, ``ExposedPort``, ``Definition``);
* check definitions (``CheckType``) decode as Consul's: field names case-insensitively, the
  snake-case aliases (``args``, ``script_args``, ``deregister_critical_service_after``,
  ``docker_container_id``, ``tls_server_name``, ``tls_skip_verify``, ``grpc_use_tls``,
  ``service_id``), durations as Go duration strings or numbers of nanoseconds.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from server.state import parse_duration

__all__ = [
    "CRITICAL",
    "NODE_MAINT",
    "PASSING",
    "SERVICE_MAINT_PREFIX",
    "WARNING",
    "CheckEntry",
    "CheckType",
    "LocalError",
    "LocalState",
    "ServiceEntry",
    "format_duration",
    "full_sync_delay",
    "parse_check_type",
    "parse_duration_value",
    "same_check",
    "same_service",
    "scale_factor",
]

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
MAINTENANCE = "maintenance"
VALID_STATUSES = (PASSING, WARNING, CRITICAL)

NODE_MAINT = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
SIDECAR_SUFFIX = "-sidecar-proxy"
#: Consul's ``MinInterval``: intervals below one second are raised to it.
MIN_INTERVAL = 1.0
#: Consul's ``aeScaleThreshold``: above this many LAN members the full-sync stagger grows.
AE_SCALE_THRESHOLD = 128


# --- anti-entropy timing (Consul's agent/ae) --------------------------------------------


def scale_factor(nodes: int) -> int:
    """Consul's ``ae.scaleFactor``: 1 up to 128 nodes, then one more per doubling
    (``ceil(log2(n) - log2(128)) + 1``: 2 up to 256, 3 up to 512, ... 7 at 8192)."""
    if nodes <= AE_SCALE_THRESHOLD:
        return 1
    return int(math.ceil(math.log2(nodes) - math.log2(AE_SCALE_THRESHOLD)) + 1)


def full_sync_delay(interval: float, nodes: int, rng: random.Random) -> float:
    """The wait before the next full sync (Consul's ``StateSyncer``): ``interval`` plus a
    random stagger below ``scale_factor(nodes) * interval``, so that a large datacenter's
    agents spread their full syncs over more time."""
    return interval + rng.uniform(0, scale_factor(nodes) * interval)


class LocalError(Exception):
    """A refused local change; ``status`` is the HTTP status Consul answers it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- durations --------------------------------------------------------------------------


def parse_duration_value(value: Any) -> float:
    """A JSON duration as Consul decodes it: a Go duration string, or a number of
    nanoseconds. Seconds as a float; ``ValueError`` when it does not parse."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if isinstance(value, str):
        return parse_duration(value) / 1e9
    raise ValueError(f"invalid duration {value!r}")


def format_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()`` prints it ("10s", "1m30s", "100ms",
    "0s")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


# --- check definitions ------------------------------------------------------------------

_CHECK_FIELDS = (
    "CheckID",
    "ID",
    "Name",
    "Status",
    "Notes",
    "ServiceID",
    "Token",
    "ScriptArgs",
    "HTTP",
    "H2PING",
    "H2PingUseTLS",
    "Header",
    "Method",
    "Body",
    "DisableRedirects",
    "TCP",
    "TCPUseTLS",
    "UDP",
    "Interval",
    "AliasNode",
    "AliasService",
    "DockerContainerID",
    "Shell",
    "GRPC",
    "GRPCUseTLS",
    "OSService",
    "TLSServerName",
    "TLSSkipVerify",
    "Timeout",
    "TTL",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "DeregisterCriticalServiceAfter",
    "OutputMaxSize",
)
_CHECK_CANON = {name.lower(): name for name in _CHECK_FIELDS}
_CHECK_SNAKE = {
    "args": "ScriptArgs",
    "script_args": "ScriptArgs",
    "deregister_critical_service_after": "DeregisterCriticalServiceAfter",
    "docker_container_id": "DockerContainerID",
    "tls_server_name": "TLSServerName",
    "tls_skip_verify": "TLSSkipVerify",
    "grpc_use_tls": "GRPCUseTLS",
    "h2ping_use_tls": "H2PingUseTLS",
    "disable_redirects": "DisableRedirects",
    "service_id": "ServiceID",
    "check_id": "CheckID",
}


def _fold_check(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ValueError("check definition must be a JSON object")
    out: dict[str, Any] = {}
    snake: dict[str, Any] = {}
    for key, value in obj.items():
        low = str(key).lower()
        if low in _CHECK_CANON:
            out[_CHECK_CANON[low]] = value
        elif low in _CHECK_SNAKE:
            snake[_CHECK_SNAKE[low]] = value
        else:
            out[str(key)] = value
    for name, value in snake.items():
        if not out.get(name):
            out[name] = value
    return out


@dataclass
class CheckType:
    """Consul's ``structs.CheckType`` (durations in seconds)."""

    check_id: str = ""
    name: str = ""
    status: str = ""
    notes: str = ""
    service_id: str = ""
    script_args: list[str] = field(default_factory=list)
    http: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    method: str = ""
    body: str = ""
    disable_redirects: bool = False
    tcp: str = ""
    tcp_use_tls: bool = False
    udp: str = ""
    h2ping: str = ""
    h2ping_use_tls: bool = False
    grpc: str = ""
    grpc_use_tls: bool = False
    os_service: str = ""
    docker_container_id: str = ""
    shell: str = ""
    alias_node: str = ""
    alias_service: str = ""
    tls_server_name: str = ""
    tls_skip_verify: bool = False
    interval: float = 0.0
    timeout: float = 0.0
    ttl: float = 0.0
    deregister_critical_service_after: float = 0.0
    output_max_size: int = 0
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0

    # --- kinds (Consul's IsX helpers) ---

    def is_alias(self) -> bool:
        return bool(self.alias_node or self.alias_service)

    def is_script(self) -> bool:
        return bool(self.script_args)

    def empty(self) -> bool:
        return self == CheckType()

    def type(self) -> str:
        """Consul's ``CheckType.Type()``."""
        iv = self.interval > 0
        if self.grpc and iv:
            return "grpc"
        if self.http and iv:
            return "http"
        if self.ttl > 0:
            return "ttl"
        if self.tcp and iv:
            return "tcp"
        if self.udp and iv:
            return "udp"
        if self.is_alias():
            return "alias"
        if self.is_script() and self.docker_container_id and iv:
            return "docker"
        if self.is_script() and iv:
            return "script"
        if self.h2ping and iv:
            return "h2ping"
        if self.os_service and iv:
            return "os_service"
        return ""

    def validate(self) -> str | None:
        """Consul's ``CheckType.Validate``: the error text, or None when valid."""
        interval_check = bool(
            self.is_script()
            or self.http
            or self.tcp
            or self.udp
            or self.grpc
            or self.h2ping
            or self.os_service
        )
        if self.interval > 0 and self.ttl > 0:
            return "Interval and TTL cannot both be specified"
        if interval_check and self.interval <= 0:
            return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        if interval_check and self.is_alias():
            return "Interval cannot be set for Alias checks"
        if self.is_alias() and self.ttl > 0:
            return "TTL must be not be set for Alias checks"
        if not interval_check and not self.is_alias() and self.ttl <= 0:
            return "TTL must be > 0 for TTL checks"
        if self.output_max_size < 0:
            return "MaxOutputMaxSize must be positive"
        if self.failures_before_warning > self.failures_before_critical:
            return "FailuresBeforeWarning can't be higher than FailuresBeforeCritical"
        return None

    def definition(self) -> dict[str, Any]:
        """``structs.HealthCheckDefinition`` as JSON (empty fields omitted, durations as Go
        strings)."""
        d: dict[str, Any] = {}
        pairs: list[tuple[str, Any]] = [
            ("HTTP", self.http),
            ("TLSServerName", self.tls_server_name),
            ("TLSSkipVerify", self.tls_skip_verify),
            ("Header", self.header),
            ("Method", self.method),
            ("Body", self.body),
            ("DisableRedirects", self.disable_redirects),
            ("TCP", self.tcp),
            ("TCPUseTLS", self.tcp_use_tls),
            ("UDP", self.udp),
            ("H2PING", self.h2ping),
            ("OSService", self.os_service),
            ("H2PingUseTLS", self.h2ping_use_tls),
            ("Interval", format_duration(self.interval) if self.interval else ""),
            ("OutputMaxSize", self.output_max_size),
            ("Timeout", format_duration(self.timeout) if self.timeout else ""),
            (
                "DeregisterCriticalServiceAfter",
                format_duration(self.deregister_critical_service_after)
                if self.deregister_critical_service_after
                else "",
            ),
            ("ScriptArgs", self.script_args),
            ("DockerContainerID", self.docker_container_id),
            ("Shell", self.shell),
            ("GRPC", self.grpc),
            ("GRPCUseTLS", self.grpc_use_tls),
            ("AliasNode", self.alias_node),
            ("AliasService", self.alias_service),
            ("TTL", format_duration(self.ttl) if self.ttl else ""),
        ]
        for key, value in pairs:
            if value:
                d[key] = value
        return d


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected a bool, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: expected a number, got {type(value).__name__}")
    return int(value)


def _duration(value: Any, what: str) -> float:
    try:
        return parse_duration_value(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def parse_check_type(obj: Any) -> CheckType:
    """A check definition object (as Consul decodes ``CheckType``/``CheckDefinition``);
    ``ValueError`` with the reason when a field has the wrong type."""
    f = _fold_check(obj)
    args = f.get("ScriptArgs") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("ScriptArgs: expected a list of strings")
    header = f.get("Header") or {}
    if not isinstance(header, dict):
        raise ValueError("Header: expected an object")
    norm_header: dict[str, list[str]] = {}
    for key, values in header.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError("Header: expected lists of strings")
        norm_header[str(key)] = list(values)
    ct = CheckType(
        check_id=_str(f.get("CheckID") or f.get("ID"), "ID"),
        name=_str(f.get("Name"), "Name"),
        status=_str(f.get("Status"), "Status"),
        notes=_str(f.get("Notes"), "Notes"),
        service_id=_str(f.get("ServiceID"), "ServiceID"),
        script_args=list(args),
        http=_str(f.get("HTTP"), "HTTP"),
        header=norm_header,
        method=_str(f.get("Method"), "Method"),
        body=_str(f.get("Body"), "Body"),
        disable_redirects=_bool(f.get("DisableRedirects"), "DisableRedirects"),
        tcp=_str(f.get("TCP"), "TCP"),
        tcp_use_tls=_bool(f.get("TCPUseTLS"), "TCPUseTLS"),
        udp=_str(f.get("UDP"), "UDP"),
        h2ping=_str(f.get("H2PING"), "H2PING"),
        grpc=_str(f.get("GRPC"), "GRPC"),
        grpc_use_tls=_bool(f.get("GRPCUseTLS"), "GRPCUseTLS"),
        os_service=_str(f.get("OSService"), "OSService"),
        docker_container_id=_str(f.get("DockerContainerID"), "DockerContainerID"),
        shell=_str(f.get("Shell"), "Shell"),
        alias_node=_str(f.get("AliasNode"), "AliasNode"),
        alias_service=_str(f.get("AliasService"), "AliasService"),
        tls_server_name=_str(f.get("TLSServerName"), "TLSServerName"),
        tls_skip_verify=_bool(f.get("TLSSkipVerify"), "TLSSkipVerify"),
        interval=_duration(f.get("Interval"), "Interval"),
        timeout=_duration(f.get("Timeout"), "Timeout"),
        ttl=_duration(f.get("TTL"), "TTL"),
        deregister_critical_service_after=_duration(
            f.get("DeregisterCriticalServiceAfter"), "DeregisterCriticalServiceAfter"
        ),
        output_max_size=_int(f.get("OutputMaxSize"), "OutputMaxSize"),
        success_before_passing=_int(f.get("SuccessBeforePassing"), "SuccessBeforePassing"),
        failures_before_warning=_int(f.get("FailuresBeforeWarning"), "FailuresBeforeWarning"),
        failures_before_critical=_int(f.get("FailuresBeforeCritical"), "FailuresBeforeCritical"),
    )
    # H2PING defaults to TLS unless told otherwise.
    if ct.h2ping and "H2PingUseTLS" not in f:
        ct.h2ping_use_tls = True
    else:
        ct.h2ping_use_tls = _bool(f.get("H2PingUseTLS"), "H2PingUseTLS")
    return ct


# --- entries ----------------------------------------------------------------------------


@dataclass
class ServiceEntry:
    """A local service: its ``NodeService`` JSON and its sync state."""

    service: dict[str, Any]
    token: str = ""
    in_sync: bool = False
    deleted: bool = False
    #: Registered as another service's ``connect.sidecar_service``: removed with it.
    sidecar_of: str = ""
    #: ``LocalState.version`` at this entry's last change (see ``mark_synced``).
    changed_at: int = 0


@dataclass
class CheckEntry:
    """A local check: its ``HealthCheck`` JSON, its definition and its sync state."""

    check: dict[str, Any]
    check_type: CheckType | None = None
    token: str = ""
    in_sync: bool = False
    deleted: bool = False
    #: When the check turned critical (the ``now`` clock), for DeregisterCriticalServiceAfter.
    critical_since: float | None = None
    #: Output-only changes wait for this time (the ``now`` clock) to be synced (Consul's
    #: ``DeferCheck`` timer, see ``LocalState.check_update_interval``).
    defer_until: float | None = None
    #: ``LocalState.version`` at this entry's last change (see ``mark_synced``).
    changed_at: int = 0


Listener = Callable[[str, str], None]


class LocalState:
    """This agent's services and checks.

    ``listeners`` are called with ``(kind, id)`` after every change: kind is one of
    ``service-added``, ``service-removed``, ``check-added``, ``check-removed``,
    ``check-updated`` (status changed) and ``check-output`` (output only).

    ``check_update_interval`` (Consul's ``check_update_interval``, seconds; 0 turns it off):
    a check whose output changes but not its status is not marked out of sync at once; the
    first such change starts a timer of half the interval plus a random stagger below the
    interval (Consul's ``DeferCheck``), and when it runs out (``fire_deferred``) the check,
    with its latest output, is synced. A status change syncs at once, output included."""

    def __init__(
        self,
        node_name: str,
        *,
        datacenter: str = "dc1",
        now: Callable[[], float] = time.monotonic,
        sidecar_min_port: int = 21000,
        sidecar_max_port: int = 21255,
        check_update_interval: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.node_name = node_name
        self.datacenter = datacenter
        self.now = now
        self.check_update_interval = check_update_interval
        self.rng = rng if rng is not None else random.Random()
        self.sidecar_min_port = sidecar_min_port
        self.sidecar_max_port = sidecar_max_port
        self.services: dict[str, ServiceEntry] = {}
        self.checks: dict[str, CheckEntry] = {}
        self.metadata: dict[str, str] = {}
        self.listeners: list[Listener] = []
        #: Bumped on every change (watchers and tests).
        self.version = 0

    # --- notifications ------------------------------------------------------------------

    def _changed(self, kind: str, ident: str) -> None:
        self.version += 1
        entry: ServiceEntry | CheckEntry | None = (
            self.services.get(ident) if kind.startswith("service") else self.checks.get(ident)
        )
        if entry is not None:
            entry.changed_at = self.version
        for listener in list(self.listeners):
            listener(kind, ident)

    # --- reads --------------------------------------------------------------------------

    def service(self, service_id: str) -> dict[str, Any] | None:
        entry = self.services.get(service_id)
        if entry is None or entry.deleted:
            return None
        return entry.service

    def all_services(self) -> dict[str, dict[str, Any]]:
        return {sid: e.service for sid, e in sorted(self.services.items()) if not e.deleted}

    def services_by_name(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.all_services().values() if s.get("Service") == name]

    def check(self, check_id: str) -> dict[str, Any] | None:
        entry = self.checks.get(check_id)
        if entry is None or entry.deleted:
            return None
        return entry.check

    def check_entry(self, check_id: str) -> CheckEntry | None:
        entry = self.checks.get(check_id)
        if entry is None or entry.deleted:
            return None
        return entry

    def all_checks(self) -> dict[str, dict[str, Any]]:
        return {cid: e.check for cid, e in sorted(self.checks.items()) if not e.deleted}

    def checks_for_service(
        self, service_id: str, include_node: bool = False
    ) -> list[dict[str, Any]]:
        """The service's checks (and the node's, with ``include_node``), by check ID."""
        out = []
        for check in self.all_checks().values():
            sid = check.get("ServiceID", "")
            if sid == service_id or (include_node and not sid):
                out.append(check)
        return out

    # --- services -----------------------------------------------------------------------

    def add_service(
        self,
        service: dict[str, Any],
        check_types: Iterable[CheckType] = (),
        *,
        token: str = "",
        replace_existing_checks: bool = False,
        sidecar_of: str = "",
    ) -> list[tuple[dict[str, Any], CheckType]]:
        """Add or replace a service and its checks (Consul's ``AddService``). Returns the
        (check, definition) pairs now registered for it, for the check runners."""
        ns = dict(service)
        sid = str(ns.get("ID") or ns.get("Service") or "")
        if not sid:
            raise LocalError(400, "ServiceID missing")
        ns["ID"] = sid
        types = list(check_types)
        for ct in types:
            err = ct.validate()
            if err is not None:
                raise LocalError(400, f"Invalid check: {err}")
            if ct.status and ct.status not in VALID_STATUSES:
                raise LocalError(400, "Status for checks must 'passing', 'warning', 'critical'")
        existing = self.services.get(sid)
        if existing is not None and not existing.deleted and not sidecar_of:
            sidecar_of = existing.sidecar_of
        self.services[sid] = ServiceEntry(ns, token=token, sidecar_of=sidecar_of)
        added: list[tuple[dict[str, Any], CheckType]] = []
        new_ids: set[str] = set()
        for i, ct in enumerate(types):
            check_id = ct.check_id or (
                f"service:{sid}:{i + 1}" if len(types) > 1 else f"service:{sid}"
            )
            name = ct.name or f"Service '{ns.get('Service', '')}' check"
            health = self._health_check(check_id, name, ct, ns)
            new_ids.add(check_id)
            self._put_check(health, ct, token)
            added.append((health, ct))
        if replace_existing_checks:
            for cid, entry in list(self.checks.items()):
                if entry.deleted or cid in new_ids:
                    continue
                if entry.check.get("ServiceID") == sid and not cid.startswith(SERVICE_MAINT_PREFIX):
                    self._delete_check(cid)
        # Checks already registered against this service follow its new name and tags.
        tags = list(ns.get("Tags") or [])
        for entry in self.checks.values():
            if entry.deleted or entry.check.get("ServiceID") != sid:
                continue
            if (
                entry.check.get("ServiceName") != ns.get("Service")
                or entry.check.get("ServiceTags") != tags
            ):
                entry.check["ServiceName"] = ns.get("Service", "")
                entry.check["ServiceTags"] = list(tags)
                entry.in_sync = False
        self._changed("service-added", sid)
        return added

    def remove_service(self, service_id: str) -> list[str]:
        """Remove a service, its checks and its sidecar (Consul's ``RemoveService``). Returns
        the removed check IDs. 404 for an unknown ID."""
        entry = self.services.get(service_id)
        if entry is None or entry.deleted:
            raise LocalError(
                404,
                f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                "not the service name.",
            )
        entry.deleted = True
        entry.in_sync = False
        removed = []
        for cid, check in list(self.checks.items()):
            if not check.deleted and check.check.get("ServiceID") == service_id:
                self._delete_check(cid)
                removed.append(cid)
        self._changed("service-removed", service_id)
        sidecar_id = service_id + SIDECAR_SUFFIX
        sidecar = self.services.get(sidecar_id)
        if sidecar is not None and not sidecar.deleted and sidecar.sidecar_of == service_id:
            removed.extend(self.remove_service(sidecar_id))
        return removed

    def sidecar_port(self, sidecar_id: str) -> int:
        """Consul's sidecar port allocation: the port the sidecar already has in the range,
        else the lowest unused one; 400 when none is left."""
        used: set[int] = set()
        for sid, svc in self.all_services().items():
            port = int(svc.get("Port") or 0)
            if self.sidecar_min_port <= port <= self.sidecar_max_port:
                if sid == sidecar_id:
                    return port
                used.add(port)
        for port in range(self.sidecar_min_port, self.sidecar_max_port + 1):
            if port not in used:
                return port
        raise LocalError(
            400,
            "Invalid SidecarService: no port provided for sidecar_service and none left in "
            f"the configured range [{self.sidecar_min_port}, {self.sidecar_max_port}]",
        )

    # --- checks -------------------------------------------------------------------------

    def _health_check(
        self, check_id: str, name: str, ct: CheckType, service: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "Node": self.node_name,
            "CheckID": check_id,
            "Name": name,
            "Status": ct.status or CRITICAL,
            "Notes": ct.notes,
            "Output": "",
            "ServiceID": service.get("ID", "") if service else "",
            "ServiceName": service.get("Service", "") if service else "",
            "ServiceTags": list(service.get("Tags") or []) if service else [],
            "Type": ct.type(),
            "Interval": format_duration(ct.interval) if ct.interval else "",
            "Timeout": format_duration(ct.timeout) if ct.timeout else "",
            "ExposedPort": 0,
            "Definition": ct.definition(),
            "CreateIndex": 0,
            "ModifyIndex": 0,
        }

    def _put_check(self, health: dict[str, Any], ct: CheckType | None, token: str) -> None:
        cid = health["CheckID"]
        old = self.checks.get(cid)
        if old is not None and not old.deleted:
            # Keep the current status and output: re-registering must not flap the check.
            health["Status"] = old.check.get("Status", health["Status"])
            health["Output"] = old.check.get("Output", "")
        entry = CheckEntry(health, ct, token=token)
        if health["Status"] == CRITICAL:
            entry.critical_since = (
                old.critical_since
                if old is not None and old.critical_since is not None
                else self.now()
            )
        self.checks[cid] = entry
        self._changed("check-added", cid)

    def add_check(self, check_id: str, ct: CheckType, *, token: str = "") -> dict[str, Any]:
        """Register a check (Consul's ``AddCheck``): ``check_id`` defaults to the name. 404
        when it names a service this agent does not have."""
        if not ct.name:
            raise LocalError(400, "Missing check name")
        if ct.status and ct.status not in VALID_STATUSES:
            raise LocalError(400, "Bad check status")
        err = ct.validate()
        if err is not None:
            raise LocalError(400, f"Invalid check: {err}")
        service = None
        if ct.service_id:
            service = self.service(ct.service_id)
            if service is None:
                raise LocalError(404, f'ServiceID "{ct.service_id}" does not exist')
        cid = check_id or ct.check_id or ct.name
        health = self._health_check(cid, ct.name, ct, service)
        self._put_check(health, ct, token)
        return health

    def restore_check(self, health: dict[str, Any], ct: CheckType | None, token: str) -> None:
        """A check as saved by an earlier run of this agent (its ``HealthCheck`` JSON and its
        definition), registered again as it was (status critical until it reports, as
        Consul restores persisted checks). A check of a service this agent does not have
        is refused (404)."""
        sid = str(health.get("ServiceID") or "")
        service = self.service(sid) if sid else None
        if sid and service is None:
            raise LocalError(404, f'ServiceID "{sid}" does not exist')
        check = dict(health)
        check["Node"] = self.node_name
        if service is not None:
            check["ServiceName"] = service.get("Service", "")
            check["ServiceTags"] = list(service.get("Tags") or [])
        if ct is not None:
            check["Status"] = CRITICAL
            check["Output"] = ""
        self._put_check(check, ct, token)

    def add_raw_check(self, health: dict[str, Any]) -> None:
        """A check without a runner (maintenance checks)."""
        self._put_check(health, None, "")

    def remove_check(self, check_id: str) -> None:
        entry = self.checks.get(check_id)
        if entry is None or entry.deleted:
            raise LocalError(
                404,
                f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the '
                "check name.",
            )
        self._delete_check(check_id)

    def _delete_check(self, check_id: str) -> None:
        entry = self.checks[check_id]
        entry.deleted = True
        entry.in_sync = False
        self._changed("check-removed", check_id)

    def update_check(self, check_id: str, status: str, output: str) -> bool:
        """Set a check's status and output; True when anything changed. Unknown IDs are
        ignored (a runner may report after its check is gone)."""
        entry = self.check_entry(check_id)
        if entry is None:
            return False
        check = entry.check
        if check.get("Status") == status and check.get("Output") == output:
            return False
        status_changed = check.get("Status") != status
        if not status_changed and self.check_update_interval > 0:
            # Consul's deferred check sync: keep the output, sync it when the timer runs out.
            # ``changed_at`` stays: a write in flight may be marked synced, the timer brings
            # the new output later anyway.
            check["Output"] = output
            if entry.defer_until is None:
                d = self.check_update_interval
                entry.defer_until = self.now() + d / 2 + self.rng.uniform(0, d)
            self.version += 1
            for listener in list(self.listeners):
                listener("check-output", check_id)
            return True
        check["Status"] = status
        check["Output"] = output
        if status == CRITICAL:
            if entry.critical_since is None:
                entry.critical_since = self.now()
        else:
            entry.critical_since = None
        entry.in_sync = False
        self._changed("check-updated" if status_changed else "check-output", check_id)
        return True

    def critical_services_to_reap(self) -> list[str]:
        """Services with a check critical for longer than its
        DeregisterCriticalServiceAfter."""
        now = self.now()
        out: list[str] = []
        for entry in self.checks.values():
            ct = entry.check_type
            if entry.deleted or ct is None or ct.deregister_critical_service_after <= 0:
                continue
            sid = entry.check.get("ServiceID", "")
            if not sid or entry.critical_since is None or sid in out:
                continue
            expired = now - entry.critical_since > ct.deregister_critical_service_after
            if expired and self.service(sid) is not None:
                out.append(sid)
        return out

    # --- maintenance --------------------------------------------------------------------

    def enable_service_maintenance(self, service_id: str, reason: str) -> bool:
        service = self.service(service_id)
        if service is None:
            raise LocalError(404, f'No service registered with ID "{service_id}"')
        cid = SERVICE_MAINT_PREFIX + service_id
        if self.check(cid) is not None:
            return False
        self.add_raw_check(
            {
                "Node": self.node_name,
                "CheckID": cid,
                "Name": "Service Maintenance Mode",
                "Status": CRITICAL,
                "Notes": reason
                or "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.",
                "Output": "",
                "ServiceID": service_id,
                "ServiceName": service.get("Service", ""),
                "ServiceTags": list(service.get("Tags") or []),
                "Type": "maintenance",
                "Interval": "",
                "Timeout": "",
                "ExposedPort": 0,
                "Definition": {},
                "CreateIndex": 0,
                "ModifyIndex": 0,
            }
        )
        return True

    def disable_service_maintenance(self, service_id: str) -> bool:
        if self.service(service_id) is None:
            raise LocalError(404, f'No service registered with ID "{service_id}"')
        cid = SERVICE_MAINT_PREFIX + service_id
        if self.check(cid) is None:
            return False
        self._delete_check(cid)
        return True

    def enable_node_maintenance(self, reason: str) -> bool:
        if self.check(NODE_MAINT) is not None:
            return False
        self.add_raw_check(
            {
                "Node": self.node_name,
                "CheckID": NODE_MAINT,
                "Name": "Node Maintenance Mode",
                "Status": CRITICAL,
                "Notes": reason
                or "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.",
                "Output": "",
                "ServiceID": "",
                "ServiceName": "",
                "ServiceTags": [],
                "Type": "maintenance",
                "Interval": "",
                "Timeout": "",
                "ExposedPort": 0,
                "Definition": {},
                "CreateIndex": 0,
                "ModifyIndex": 0,
            }
        )
        return True

    def disable_node_maintenance(self) -> bool:
        if self.check(NODE_MAINT) is None:
            return False
        self._delete_check(NODE_MAINT)
        return True

    # --- deferred check output ----------------------------------------------------------

    def next_deferred(self) -> float | None:
        """When the earliest deferred output sync is due (the ``now`` clock), if any."""
        due = [c.defer_until for c in self.checks.values() if c.defer_until is not None]
        return min(due) if due else None

    def fire_deferred(self) -> bool:
        """Mark out of sync the checks whose deferred output is due; True if any was."""
        now = self.now()
        fired = False
        for entry in self.checks.values():
            if entry.defer_until is None or entry.defer_until > now:
                continue
            entry.defer_until = None
            if not entry.deleted:
                entry.in_sync = False
                fired = True
        return fired

    # --- sync ---------------------------------------------------------------------------

    def update_sync_state(
        self,
        remote_services: dict[str, dict[str, Any]],
        remote_checks: dict[str, dict[str, Any]],
        *,
        as_of: int | None = None,
    ) -> None:
        """Anti-entropy (Consul's ``updateSyncState``): compare with this node's catalog
        entries (``NodeService`` and ``HealthCheck`` JSON by ID). A local entry missing from
        the catalog or different there is marked out of sync; one the same is marked in sync
        (the next sync skips it); a catalog entry the agent does not have is marked for
        deregistering, except the servers' own ``consul`` service and the ``serfHealth``
        check (and checks of those, or of services that are not the agent's: they go with
        their service). A check whose output sync is deferred is compared without its output.

        ``as_of`` is ``version`` when the catalog was read: entries changed since are left
        as they are (their own sync is pending or done)."""
        for sid, entry in self.services.items():
            if entry.deleted or (as_of is not None and entry.changed_at > as_of):
                continue
            remote = remote_services.get(sid)
            entry.in_sync = remote is not None and same_service(entry.service, remote)
        for cid, check_entry in self.checks.items():
            if check_entry.deleted or (as_of is not None and check_entry.changed_at > as_of):
                continue
            remote_check = remote_checks.get(cid)
            check_entry.in_sync = remote_check is not None and same_check(
                check_entry.check, remote_check, output=check_entry.defer_until is None
            )
        self.mark_remote_only(
            [sid for sid in remote_services if sid not in self.services and sid != "consul"],
            [
                cid
                for cid, c in remote_checks.items()
                if cid not in self.checks
                and cid != "serfHealth"
                and (c.get("ServiceID") or "") != "consul"
                and (not c.get("ServiceID") or c.get("ServiceID") in self.services)
            ],
        )

    def mark_all_out_of_sync(self) -> None:
        """Anti-entropy: everything is registered again on the next sync."""
        for s in self.services.values():
            s.in_sync = False
        for c in self.checks.values():
            c.in_sync = False

    def mark_remote_only(self, service_ids: Iterable[str], check_ids: Iterable[str]) -> None:
        """Catalog entries of this node that the agent does not have: the next sync
        deregisters them (anti-entropy)."""
        for sid in service_ids:
            if sid not in self.services:
                self.services[sid] = ServiceEntry({"ID": sid}, deleted=True)
        for cid in check_ids:
            if cid not in self.checks:
                self.checks[cid] = CheckEntry({"CheckID": cid}, deleted=True)

    def pending(self) -> list[tuple[str, dict[str, Any], list[str], list[str]]]:
        """The writes that bring the catalog up to date, in order:
        ``(op, body, service_ids, check_ids)`` with op ``register`` or ``deregister`` and the
        body without the node fields (the sync adds them). Pass each to ``mark_synced`` once
        applied."""
        ops: list[tuple[str, dict[str, Any], list[str], list[str]]] = []
        for cid, c in sorted(self.checks.items()):
            if c.deleted and not c.in_sync:
                ops.append(("deregister", {"CheckID": cid}, [], [cid]))
        for sid, s in sorted(self.services.items()):
            if s.deleted and not s.in_sync:
                ops.append(("deregister", {"ServiceID": sid}, [sid], []))
        # Checks grouped by service once (not once per service: that was quadratic).
        by_service: dict[str, list[tuple[str, CheckEntry]]] = {}
        for cid, c in sorted(self.checks.items()):
            if not c.deleted:
                by_service.setdefault(str(c.check.get("ServiceID") or ""), []).append((cid, c))
        for sid, s in sorted(self.services.items()):
            if s.deleted:
                continue
            checks = by_service.get(sid, [])
            if s.in_sync and all(c.in_sync for _, c in checks):
                continue
            body: dict[str, Any] = {"Service": copy.deepcopy(s.service)}
            if len(checks) == 1:
                body["Check"] = copy.deepcopy(checks[0][1].check)
            elif checks:
                body["Checks"] = [copy.deepcopy(c.check) for _, c in checks]
            ops.append(("register", body, [sid], [cid for cid, _ in checks]))
        for cid, c in sorted(self.checks.items()):
            if c.deleted or c.in_sync:
                continue
            sid = c.check.get("ServiceID", "")
            if sid and self.service(sid) is not None:
                continue  # sent with its service above
            ops.append(("register", {"Check": copy.deepcopy(c.check)}, [], [cid]))
        return ops

    def mark_synced(
        self, op: str, service_ids: list[str], check_ids: list[str], as_of: int | None = None
    ) -> None:
        """The write for these entries was applied. ``as_of`` is ``version`` when the write
        was planned (``pending``): an entry changed since (a check that changed status while
        the write was in flight, a service re-added while its deregistration was) stays out
        of sync, so the next sync sends its new state instead of losing it."""
        for sid in service_ids:
            s = self.services.get(sid)
            if s is None or (as_of is not None and s.changed_at > as_of):
                continue
            if op == "deregister" and s.deleted:
                del self.services[sid]
            else:
                s.in_sync = True
        for cid in check_ids:
            c = self.checks.get(cid)
            if c is None or (as_of is not None and c.changed_at > as_of):
                continue
            if op == "deregister" and c.deleted:
                del self.checks[cid]
            elif not c.deleted:
                c.in_sync = True
        if op == "deregister":
            # A deregistered service takes its checks with it in the catalog.
            for sid in service_ids:
                for cid, c in list(self.checks.items()):
                    if (
                        c.deleted
                        and c.check.get("ServiceID") == sid
                        and (as_of is None or c.changed_at <= as_of)
                    ):
                        del self.checks[cid]


def same_service(local: dict[str, Any], remote: dict[str, Any]) -> bool:
    """A local ``NodeService`` and the catalog's (its JSON) agree on what the agent syncs."""
    weights = local.get("Weights") or {}
    remote_weights = remote.get("Weights") or {}
    return bool(
        remote.get("Service", "") == local.get("Service", "")
        and list(remote.get("Tags") or ()) == list(local.get("Tags") or [])
        and int(remote.get("Port") or 0) == int(local.get("Port") or 0)
        and (remote.get("Address") or "") == (local.get("Address") or "")
        and dict(remote.get("Meta") or {}) == dict(local.get("Meta") or {})
        and (remote.get("Kind") or "") == (local.get("Kind") or "")
        and (remote.get("SocketPath") or "") == (local.get("SocketPath") or "")
        and bool(remote.get("EnableTagOverride")) == bool(local.get("EnableTagOverride"))
        and (remote_weights.get("Passing", 1), remote_weights.get("Warning", 1))
        == (weights.get("Passing", 1), weights.get("Warning", 1))
    )


def same_check(local: dict[str, Any], remote: dict[str, Any], *, output: bool = True) -> bool:
    """A local ``HealthCheck`` and the catalog's (its JSON) agree; ``output=False`` ignores
    the output (a check whose output sync is deferred)."""
    return bool(
        (remote.get("Name") or "") == (local.get("Name") or "")
        and (remote.get("Status") or "") == (local.get("Status") or "")
        and (remote.get("Notes") or "") == (local.get("Notes") or "")
        and (not output or (remote.get("Output") or "") == (local.get("Output") or ""))
        and (remote.get("ServiceID") or "") == (local.get("ServiceID") or "")
        and (remote.get("ServiceName") or "") == (local.get("ServiceName") or "")
        and list(remote.get("ServiceTags") or ()) == list(local.get("ServiceTags") or ())
        and (remote.get("Type") or "") == (local.get("Type") or "")
        and (remote.get("Interval") or "") == (local.get("Interval") or "")
        and (remote.get("Timeout") or "") == (local.get("Timeout") or "")
    )


def aggregated_status(checks: Iterable[dict[str, Any]]) -> str:
    """Consul's ``HealthChecks.AggregatedStatus``: maintenance > critical > warning >
    passing (an empty list is passing)."""
    passing = warning = critical = maintenance = False
    for check in checks:
        cid = str(check.get("CheckID", ""))
        if cid == NODE_MAINT or cid.startswith(SERVICE_MAINT_PREFIX):
            maintenance = True
            continue
        status = check.get("Status")
        if status == PASSING:
            passing = True
        elif status == WARNING:
            warning = True
        elif status == CRITICAL:
            critical = True
        else:
            return CRITICAL
    if maintenance:
        return MAINTENANCE
    if critical:
        return CRITICAL
    if warning:
        return WARNING
    if passing:
        return PASSING
    return PASSING
