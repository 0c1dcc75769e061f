"""``python -m gossip.sim``: SWIM + Lifeguard at scale, in one process, on a virtual clock.

See ``gossip.sim.cluster`` for the model (network, slow members, bootstrap, scenario).
"""

from __future__ import annotations

from gossip.sim.cluster import (
    NETWORKS,
    NetworkModel,
    SimOptions,
    SimResult,
    Simulation,
    detection_bound,
    run_simulation,
)

__all__ = [
    "NETWORKS",
    "NetworkModel",
    "SimOptions",
    "SimResult",
    "Simulation",
    "detection_bound",
    "run_simulation",
]
