"""The gateway's counters and their two renderings: JSON (``GET /stats``) and the Prometheus
text format (``GET /metrics``). Sans-I/O: the proxy bumps plain integer attributes.

Invariants:

- Every counter only grows, except the ``*_active`` gauges, which the proxy increments exactly
  once when a connection is accepted (or routed, for the per-suffix gauge) and decrements
  exactly once when it ends.
- Per-suffix counters are keyed by a bounded label: the suffix of a routed name
  (:func:`server.gateway.tables.sni_suffix`), or, for a refusal, the suffix of a name whose
  datacenter the gateway knows (:func:`refusal_suffix`); anything else — names the client
  chose freely, failed ClientHellos — is counted under ``"other"``. At most
  :data:`MAX_SUFFIXES` labels exist; later new labels fold into ``"other"`` too.
- Label values in the Prometheus text are escaped (backslash, quote, newline).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.gateway.routes import Refusal, RoutingTable

__all__ = ["MAX_SUFFIXES", "OTHER", "Stats", "SuffixStats", "refusal_suffix"]

MAX_SUFFIXES = 256
OTHER = "other"


class SuffixStats:
    """Counters of the connections whose SNI ends in one suffix."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connections_active",
        "connections_total",
        "refusals",
        "upstream_connect_errors",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_active = 0
        self.bytes_in = 0  # client -> upstream
        self.bytes_out = 0  # upstream -> client
        self.upstream_connect_errors = 0
        self.refusals = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in sorted(self.__slots__)}


class Stats:
    """All counters of one gateway process."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_active = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_connect_errors = 0
        self.idle_timeouts = 0
        self.routes: dict[str, int] = {}
        self.refusals: dict[str, int] = {}
        self.suffixes: dict[str, SuffixStats] = {}
        self.ready = False
        self.table: RoutingTable | None = None
        self.listeners: list[str] = []
        self.data_path = ""

    def suffix(self, label: str) -> SuffixStats:
        found = self.suffixes.get(label)
        if found is None:
            if len(self.suffixes) >= MAX_SUFFIXES:
                label = OTHER
            found = self.suffixes.setdefault(label, SuffixStats())
        return found

    def route(self, kind: str, suffix: SuffixStats) -> None:
        self.routes[kind] = self.routes.get(kind, 0) + 1
        suffix.connections_total += 1
        suffix.connections_active += 1

    def refuse(self, reason: str, suffix: str = OTHER) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.suffix(suffix).refusals += 1

    def connect_error(self, suffix: SuffixStats) -> None:
        self.upstream_connect_errors += 1
        suffix.upstream_connect_errors += 1

    # -- renderings -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        t = self.table
        table: dict[str, Any] | None = None
        if t is not None:
            table = {
                "Datacenter": t.datacenter,
                "Domain": t.domain,
                "Servers": {n: str(a) for n, a in sorted(t.servers.items())},
                "HealthyServers": sorted(t.healthy_servers),
                "RemoteGateways": {
                    dc: [str(a) for a in addrs] for dc, addrs in sorted(t.remote_gateways.items())
                },
            }
        return {
            "ready": self.ready,
            "data_path": self.data_path,
            "listeners": list(self.listeners),
            "connections_total": self.connections_total,
            "connections_active": self.connections_active,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "upstream_connect_errors": self.upstream_connect_errors,
            "idle_timeouts": self.idle_timeouts,
            "routes": dict(sorted(self.routes.items())),
            "refusals": dict(sorted(self.refusals.items())),
            "sni_suffixes": {k: v.as_dict() for k, v in sorted(self.suffixes.items())},
            "routing_table": table,
        }

    def prometheus(self) -> str:
        p = "proconsul_gateway_"
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, rows: Iterable[tuple[str, int]]) -> None:
            out.append(f"# HELP {p}{name} {help_text}")
            out.append(f"# TYPE {p}{name} {kind}")
            out.extend(f"{p}{name}{labels} {value}" for labels, value in rows)

        metric("ready", "gauge", "1 once the first routing table is built.",
               [("", int(self.ready))])  # fmt: skip
        metric("connections_total", "counter", "Connections accepted.",
               [("", self.connections_total)])  # fmt: skip
        metric("connections_active", "gauge", "Connections open now.",
               [("", self.connections_active)])  # fmt: skip
        metric("bytes_in_total", "counter", "Bytes from clients to upstreams.",
               [("", self.bytes_in)])  # fmt: skip
        metric("bytes_out_total", "counter", "Bytes from upstreams to clients.",
               [("", self.bytes_out)])  # fmt: skip
        metric("upstream_connect_errors_total", "counter", "Failed upstream dials.",
               [("", self.upstream_connect_errors)])  # fmt: skip
        metric("idle_timeouts_total", "counter", "Connections closed for idleness.",
               [("", self.idle_timeouts)])  # fmt: skip
        metric("routes_total", "counter", "Connections routed, by route kind.",
               [(_labels(kind=k), v) for k, v in sorted(self.routes.items())])  # fmt: skip
        metric("refusals_total", "counter", "Connections refused, by reason.",
               [(_labels(reason=k), v) for k, v in sorted(self.refusals.items())])  # fmt: skip
        per = sorted(self.suffixes.items())
        for field, kind, help_text in (
            ("connections_total", "counter", "Connections routed, by SNI suffix."),
            ("connections_active", "gauge", "Routed connections open now, by SNI suffix."),
            ("bytes_in", "counter", "Bytes from clients, by SNI suffix."),
            ("bytes_out", "counter", "Bytes to clients, by SNI suffix."),
            ("upstream_connect_errors", "counter", "Failed upstream dials, by SNI suffix."),
            ("refusals", "counter", "Connections refused, by SNI suffix."),
        ):
            name = f"sni_{field}" + ("_total" if kind == "counter" and "total" not in field else "")
            metric(name, kind, help_text, [(_labels(suffix=s), getattr(v, field)) for s, v in per])
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def refusal_suffix(refusal: Refusal, table: RoutingTable | None) -> str:
    """The suffix label of a refused name when its datacenter is one the gateway knows (the
    local one or one with gateways), else :data:`OTHER` — clients choose refused names freely,
    so unknown datacenters must not mint labels."""
    if table is None:
        return OTHER
    name = refusal.sni
    domain = table.domain.rstrip(".").lower()
    known = {table.datacenter.lower(), *(dc.lower() for dc in table.remote_gateways)}
    td = (table.trust_domain or "").rstrip(".").lower()
    if td and name.endswith(f".internal.{td}"):
        head = name[: -len(f".internal.{td}")].split(".")
        if len(head) >= 3 and head[-1] in known:
            return f"{head[-1]}.internal.{td}"
        return OTHER
    if name.endswith(f".{domain}"):
        head = name[: -len(f".{domain}")].split(".")
        if len(head) in (2, 3) and head[-2] == "server" and head[-1] in known:
            return f"server.{head[-1]}.{domain}"
    return OTHER
