"""The gateway locator (server.federation.locator): Consul's PickGateway rules."""

from __future__ import annotations

import random
from typing import Any

from server.federation.locator import GatewayLocator, gateway_addresses


def gw(lan: str, wan: str, *, meta: bool = True, status: str = "passing") -> dict[str, Any]:
    lh, lp = lan.split(":")
    wh, wp = wan.split(":")
    return {
        "Node": {"Node": "n", "Address": lh},
        "Service": {
            "Kind": "mesh-gateway",
            "Service": "mesh-gateway",
            "Address": lh,
            "Port": int(lp),
            "Meta": {"consul-wan-federation": "1"} if meta else {},
            "TaggedAddresses": {
                "lan": {"Address": lh, "Port": int(lp)},
                "wan": {"Address": wh, "Port": int(wp)},
            },
        },
        "Checks": [{"CheckID": "c", "Status": status}],
    }


STATES = {
    "dc1": [gw("10.1.0.1:443", "198.18.0.1:443"), gw("10.1.0.2:443", "198.18.0.2:443")],
    "dc2": [gw("10.2.0.1:443", "198.18.0.3:443")],
    "dc3": [gw("10.3.0.1:443", "198.18.0.4:443")],
}


def test_only_federation_gateways_without_critical_checks() -> None:
    assert gateway_addresses(gw("1.1.1.1:1", "2.2.2.2:2")) == ("1.1.1.1:1", "2.2.2.2:2")
    assert gateway_addresses(gw("1.1.1.1:1", "2.2.2.2:2", meta=False)) == (None, None)
    assert gateway_addresses(gw("1.1.1.1:1", "2.2.2.2:2", status="critical")) == (None, None)
    no_tags = gw("1.1.1.1:1", "2.2.2.2:2")
    del no_tags["Service"]["TaggedAddresses"]
    assert gateway_addresses(no_tags) == ("1.1.1.1:1", "1.1.1.1:1")


def test_primary_picks_own_wan_for_itself_and_local_lan_for_others() -> None:
    loc = GatewayLocator("dc1", "dc1", random.Random(1))
    loc.update(STATES)
    assert sorted(loc.pick("dc1", is_leader=True)) == ["198.18.0.1:443", "198.18.0.2:443"]
    assert sorted(loc.pick("dc2", is_leader=True)) == ["10.1.0.1:443", "10.1.0.2:443"]


def test_secondary_before_any_state_uses_fallback_for_primary_only() -> None:
    loc = GatewayLocator("dc2", "dc1", random.Random(0))
    loc.set_fallback(["198.18.0.9:443", "198.18.0.9:443"])
    assert loc.pick("dc1", is_leader=False) == ["198.18.0.9:443"]
    assert loc.pick("dc3", is_leader=False) == []
    assert not loc.primary_gateways_known()


def test_secondary_prefers_local_gateways_then_leader_falls_back_after_three_failures() -> None:
    loc = GatewayLocator("dc2", "dc1", random.Random(0))
    loc.set_fallback(["198.18.0.9:443"])
    loc.update(STATES)
    assert loc.primary_gateways_known()
    assert loc.pick("dc1", is_leader=True) == ["10.2.0.1:443"]
    assert loc.pick("dc3", is_leader=True) == ["10.2.0.1:443"]
    for _ in range(2):
        loc.report_replication(False)
    assert loc.pick("dc1", is_leader=True) == ["10.2.0.1:443"]
    loc.report_replication(False)
    direct = sorted(loc.pick("dc1", is_leader=True))
    assert direct == ["198.18.0.1:443", "198.18.0.2:443", "198.18.0.9:443"]
    # Followers always go through local gateways.
    assert loc.pick("dc1", is_leader=False) == ["10.2.0.1:443"]
    loc.report_replication(True)
    assert loc.pick("dc1", is_leader=True) == ["10.2.0.1:443"]


def test_secondary_without_healthy_local_gateways_dials_primary_directly() -> None:
    loc = GatewayLocator("dc2", "dc1", random.Random(0))
    states = dict(STATES, dc2=[gw("10.2.0.1:443", "198.18.0.3:443", status="critical")])
    loc.update(states)
    assert sorted(loc.pick("dc1", is_leader=False)) == ["198.18.0.1:443", "198.18.0.2:443"]
    assert loc.pick("dc3", is_leader=False) == []
