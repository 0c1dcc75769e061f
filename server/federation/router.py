"""The WAN router: which servers each datacenter has, as the WAN serf pool says (Consul's
``agent/router``). Sans-I/O: fed with member snapshots and failure reports; time is passed in.

Invariants:

- A server is known by its WAN member name ``<node>.<dc>``; its datacenter is the ``dc`` tag
  (a member whose name does not end in ``.<dc tag>`` is ignored, as Consul's wanfed refuses
  names that do not encode their datacenter). Only members with ``role=consul`` count.
- ``datacenters()`` lists every datacenter with at least one known server (alive or not),
  the local one first, then the others by name (Consul orders by estimated round-trip time;
  without network coordinates every distance is equal, and ties go by name, as Consul's
  sort does).
- ``route(dc)`` gives the alive servers of ``dc`` in the order to try them: servers never
  reported failed first, then by how long ago they failed (oldest first), each group shuffled
  with the injected rng. A server reported failed less than ``FAILED_HOLD`` seconds ago is
  tried last, never skipped: when every server failed recently the least recent is still
  tried ("failed servers are skipped and retried later").
- ``route`` raises :class:`NoPathError` for a datacenter with no known server and
  :class:`DCNotAvailableError` for one whose servers are all gone (left/failed in serf).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ERR_DC_NOT_AVAILABLE",
    "ERR_NO_DC_PATH",
    "FAILED_HOLD",
    "DCNotAvailableError",
    "NoPathError",
    "RemoteServer",
    "Router",
]

#: Consul's error texts (``structs.ErrNoDCPath``, ``structs.ErrDCNotAvailable``).
ERR_NO_DC_PATH = "No path to datacenter"
ERR_DC_NOT_AVAILABLE = "Remote DC has no server currently reachable"

#: Seconds a failed server goes to the back of its datacenter's list.
FAILED_HOLD = 30.0


class NoPathError(Exception):
    def __init__(self) -> None:
        super().__init__(ERR_NO_DC_PATH)


class DCNotAvailableError(Exception):
    def __init__(self) -> None:
        super().__init__(ERR_DC_NOT_AVAILABLE)


@dataclass(frozen=True, slots=True)
class RemoteServer:
    """A server as the WAN pool describes it."""

    name: str  # the WAN member name, <node>.<dc>
    node: str  # the node name
    datacenter: str
    rpc_address: str  # host of its WAN address, port from its ``port`` tag
    alive: bool


class SupportsShuffle(Protocol):
    """What the router needs of an rng (``random.Random`` fits)."""

    def shuffle(self, x: list[Any], /) -> None: ...


@dataclass(slots=True)
class Router:
    local_dc: str
    rng: SupportsShuffle
    _servers: dict[str, dict[str, RemoteServer]] = field(default_factory=dict)
    _failed_at: dict[str, float] = field(default_factory=dict)

    def update(
        self, members: Iterable[tuple[str, tuple[str, int], str, Mapping[str, str]]]
    ) -> None:
        """Replace the view with a snapshot of WAN members: (name, addr, status, tags)."""
        servers: dict[str, dict[str, RemoteServer]] = {}
        for name, addr, status, tags in members:
            server = parse_member(name, addr, status, tags)
            if server is not None:
                servers.setdefault(server.datacenter, {})[server.name] = server
        self._servers = servers
        known = {n for by_name in servers.values() for n in by_name}
        for name in [n for n in self._failed_at if n not in known]:
            del self._failed_at[name]

    def datacenters(self) -> list[str]:
        others = sorted(dc for dc in self._servers if dc != self.local_dc)
        return [self.local_dc, *others]

    def knows(self, dc: str) -> bool:
        return dc in self._servers

    def servers(self, dc: str) -> list[RemoteServer]:
        return sorted(self._servers.get(dc, {}).values(), key=lambda s: s.name)

    def route(self, dc: str, now: float) -> list[RemoteServer]:
        by_name = self._servers.get(dc)
        if not by_name:
            raise NoPathError
        alive = [s for s in by_name.values() if s.alive]
        if not alive:
            raise DCNotAvailableError
        fresh = [s for s in alive if s.name not in self._failed_at]
        self.rng.shuffle(fresh)
        failed = sorted(
            (s for s in alive if s.name in self._failed_at),
            key=lambda s: (self._failed_at[s.name], s.name),
        )
        # Failed long enough ago: as good as fresh, but after them (oldest failure first).
        stale = [s for s in failed if now - self._failed_at[s.name] >= FAILED_HOLD]
        recent = [s for s in failed if now - self._failed_at[s.name] < FAILED_HOLD]
        return [*fresh, *stale, *recent]

    def failed(self, name: str, now: float) -> None:
        self._failed_at[name] = now

    def succeeded(self, name: str) -> None:
        self._failed_at.pop(name, None)


def parse_member(
    name: str, addr: tuple[str, int], status: str, tags: Mapping[str, str]
) -> RemoteServer | None:
    """A WAN member as a server, or None (not a server, bad port tag, name without its dc)."""
    if tags.get("role") != "consul":
        return None
    dc = tags.get("dc", "")
    if not dc or not name.endswith("." + dc):
        return None
    node = name[: -len(dc) - 1]
    if not node:
        return None
    try:
        port = int(tags.get("port", ""))
    except ValueError:
        return None
    host = addr[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return RemoteServer(name, node, dc, address, status == "alive")
