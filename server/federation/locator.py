"""The gateway locator: which mesh gateways a server dials to reach another datacenter when
federating through mesh gateways (Consul's ``agent/consul/gateway_locator.go``). Sans-I/O:
inputs are federation-state snapshots, the ``primary_gateways`` fallback addresses and
replication outcomes; time is passed in; randomness is injected.

Rules (``pick``):

- In the primary: the primary's own gateways (WAN addresses) for the primary; local gateways
  (LAN addresses) for every other datacenter.
- In a secondary, for the primary: local gateways (LAN) when dialling through local gateways
  is on and local gateways are known; otherwise the primary's gateways from federation states
  (WAN) merged with the fallback addresses, deduplicated.
- In a secondary, for another secondary: local gateways only.
- Dialling through local gateways: always for followers (Consul #9341); for the leader,
  unless the last three replication fetches all failed and none succeeded since (then it
  dials the primary's gateways directly — Consul's "re-bootstrap", #7339/#9342) — a success
  switches back at once.
- Only gateways with meta ``consul-wan-federation = "1"`` and no critical check count.
- The result is shuffled with the injected rng (Consul picks uniformly); ``[]`` means the
  datacenter is not reachable ("Remote DC has no server currently reachable").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["FEDERATION_META_KEY", "GatewayLocator", "gateway_addresses"]

FEDERATION_META_KEY = "consul-wan-federation"

#: Consecutive failed replication fetches after which a secondary's leader stops dialling
#: through its local gateways.
MAX_FAILURES_THROUGH_LOCAL = 3


def _addr(entry: Any) -> str | None:
    if not isinstance(entry, Mapping):
        return None
    host, port = entry.get("Address"), entry.get("Port")
    if not host or not isinstance(port, int) or port <= 0:
        return None
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def gateway_addresses(csn: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(LAN, WAN) addresses of a gateway given as a CheckServiceNode, or (None, None) when it
    is not fit for federation (no federation meta, a critical check, no address)."""
    service = csn.get("Service") or {}
    node = csn.get("Node") or {}
    if (service.get("Meta") or {}).get(FEDERATION_META_KEY) != "1":
        return None, None
    if any((c or {}).get("Status") == "critical" for c in csn.get("Checks") or ()):
        return None, None
    port = service.get("Port")
    default = _addr({"Address": service.get("Address") or node.get("Address"), "Port": port})
    tagged = service.get("TaggedAddresses") or {}
    lan = _addr(tagged.get("lan")) or default
    wan = _addr(tagged.get("wan")) or default
    return lan, wan


class SupportsShuffle(Protocol):
    """What the locator needs of an rng (``random.Random`` fits)."""

    def shuffle(self, x: list[Any], /) -> None: ...


@dataclass(slots=True)
class GatewayLocator:
    local_dc: str
    primary_dc: str
    rng: SupportsShuffle
    #: dc -> [(lan, wan)] of the gateways fit for federation, from the local federation states.
    _gateways: dict[str, list[tuple[str | None, str | None]]] = field(default_factory=dict)
    _fallback: list[str] = field(default_factory=list)
    _failures: int = 0
    _updated: bool = False

    @property
    def is_primary(self) -> bool:
        return self.local_dc == self.primary_dc

    @property
    def updated(self) -> bool:
        """Whether federation states were seen at least once."""
        return self._updated

    def update(self, states: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        """Replace the view with the local federation states: {dc: [CheckServiceNode]}."""
        gateways: dict[str, list[tuple[str | None, str | None]]] = {}
        for dc, entries in states.items():
            fit = [gateway_addresses(e) for e in entries]
            fit = [pair for pair in fit if pair != (None, None)]
            if fit:
                gateways[dc] = fit
        self._gateways = gateways
        self._updated = True

    def set_fallback(self, addresses: Iterable[str]) -> None:
        """The resolved ``primary_gateways`` (host:port)."""
        self._fallback = sorted(set(addresses))

    @property
    def fallback(self) -> list[str]:
        return list(self._fallback)

    def primary_gateways_known(self) -> bool:
        """Whether federation states name at least one gateway of the primary."""
        return bool(self._gateways.get(self.primary_dc))

    def report_replication(self, ok: bool) -> None:
        self._failures = 0 if ok else self._failures + 1

    def dial_through_local(self, *, is_leader: bool) -> bool:
        return not is_leader or self._failures < MAX_FAILURES_THROUGH_LOCAL

    def _local(self, which: int) -> list[str]:
        return [a for a in (pair[which] for pair in self._gateways.get(self.local_dc, ())) if a]

    def pick(self, dc: str, *, is_leader: bool) -> list[str]:
        """Gateway addresses to dial for ``dc``, in a random order (module docstring)."""
        if self.is_primary:
            if dc == self.primary_dc:
                chosen = [p[1] for p in self._gateways.get(dc, ()) if p[1]]
            else:
                chosen = self._local(0)
        elif dc == self.primary_dc:
            local = self._local(0)
            if local and self.dial_through_local(is_leader=is_leader):
                chosen = local
            else:
                remote = [p[1] for p in self._gateways.get(dc, ()) if p[1]]
                chosen = sorted({*(a for a in remote if a), *self._fallback})
        else:
            chosen = self._local(0)
        out = sorted(set(chosen))
        self.rng.shuffle(out)
        return out
