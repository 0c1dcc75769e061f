"""The servers a client agent talks to (Consul's ``router.Manager``): learned from LAN serf
members tagged ``role=consul`` in this datacenter.

One server is *preferred*: every RPC goes to it first. On a failure the caller reports it
(``failed``) and the next server in the (shuffled) list becomes preferred. ``rebalance`` picks
a new random preferred server; the agent calls it periodically (Consul rebalances every few
minutes, scaled by cluster size) so that clients spread over the servers.

Pure and synchronous; the randomness is injected.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["ServerPool"]


@dataclass(frozen=True, slots=True)
class _Server:
    name: str
    address: str


class ServerPool:
    def __init__(self, datacenter: str, rng: random.Random | None = None) -> None:
        self.datacenter = datacenter
        self._rng = rng or random.Random()
        self._servers: list[_Server] = []  # index 0 is preferred

    def __len__(self) -> int:
        return len(self._servers)

    def update(self, name: str, address: str, datacenter: str, alive: bool) -> None:
        """Add, move or drop one server (from a serf member event or listing)."""
        if datacenter != self.datacenter:
            return
        known = [s for s in self._servers if s.name == name]
        if not alive:
            self._servers = [s for s in self._servers if s.name != name]
            return
        if known and known[0].address == address:
            return
        entry = _Server(name, address)
        if known:
            self._servers = [entry if s.name == name else s for s in self._servers]
        else:
            # New servers go to a random place after the preferred one (no thundering herd).
            position = self._rng.randint(min(1, len(self._servers)), len(self._servers))
            self._servers.insert(position, entry)

    def candidates(self) -> list[str]:
        """Addresses to try, preferred first."""
        return [s.address for s in self._servers]

    def failed(self, address: str) -> None:
        """A call to ``address`` failed: the next server becomes preferred."""
        if self._servers and self._servers[0].address == address and len(self._servers) > 1:
            self._servers.append(self._servers.pop(0))

    def rebalance(self) -> None:
        self._rng.shuffle(self._servers)
