"""Points 2 and 3 of issue 6's proof: two datacenters federated through mesh gateways on
isolated networks (see topology.build_wanfed), from cold start and through faults.

One federation per module (per variant) is shared by the tests, in file order: the cold
start first (it alone measures the 10 s budget), then the faults, each of which first waits
for a formed federation (so a failed test does not fail the next ones with it) and restores
what it broke. The fast variant (1 server per dc, 2 gateways each) runs in ``make test``; the
full one (3 servers per dc) is marked slow and runs only with ``PROCONSUL_NETNS_FULL=1``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from netns.federation import (
    Federation,
    check_cold_start,
    check_primary_server_restart,
    heal,
    running_federation,
)
from netns.procs import Procs, wait_until
from netns.topology import ip, wan_ip

FULL = os.environ.get("PROCONSUL_NETNS_FULL") == "1"
#: Issue 6, point 2: the federation forms within this long after the last process started.
COLD_START_BUDGET = 10.0
#: Bounded waits of the fault tests (health checks run every 10 s; fallback after 3 failures).
RECOVERY = 30.0
HEAL = 60.0


@pytest.fixture(
    scope="module",
    params=[1, pytest.param(3, marks=pytest.mark.slow)],
    ids=["1-server", "3-servers"],
)
def fed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    n: int = request.param
    if n > 1 and not FULL:
        pytest.skip("the 3-servers-per-dc variant runs with PROCONSUL_NETNS_FULL=1")
    with running_federation(tmp_path_factory.mktemp(f"wanfed-{n}"), True, n) as f:
        yield f


@pytest.mark.timeout(120)
def test_cold_start(fed: Federation) -> None:
    check_cold_start(fed, COLD_START_BUDGET)
    # Both dcs' gateways learned the other dc's gateways (their WAN addresses).
    for dc, other in (("dc1", "dc2"), ("dc2", "dc1")):
        want = sorted(g.wan for g in fed.gateways[other])
        for g in fed.gateways[dc]:
            table = g.stats().get("routing_table") or {}
            got = sorted((table.get("RemoteGateways") or {}).get(other, []))
            assert got == want, f"{g.name}: remote gateways of {other} {got}, wanted {want}"


@pytest.mark.timeout(240)
def test_one_primary_gateway_killed(fed: Federation) -> None:
    heal(fed, HEAL)
    g = fed.gateways["dc1"][0]
    g.proc.kill()
    failures: list[str] = []
    started = time.monotonic()

    def both_ways() -> None:
        try:
            fed.check_cross_ok("dc1", "dc2", times=1)
            fed.check_cross_ok("dc2", "dc1", times=1)
        except (AssertionError, OSError) as exc:
            failures.append(f"{time.monotonic() - started:.1f}s: {exc}")
            raise AssertionError(str(exc)) from None

    fed.wait("cross-dc reads with one primary gateway down", both_ways, timeout=RECOVERY)
    # Once the dead gateway's check is critical, nothing should pick it any more.
    fed.wait("federation states without the dead gateway", fed.check_federation_states, RECOVERY)
    for _ in range(10):
        both_ways()
    fed.check_kv_both_ways()
    print(f"{len(failures)} failed cross-dc reads after the kill: {failures[:5]}")
    g.proc.start()
    fed.wait("the restarted gateway is back in the federation states", fed.check_formed, HEAL)


@pytest.mark.timeout(240)
def test_secondary_gateways_killed_then_restarted(fed: Federation) -> None:
    heal(fed, HEAL)
    for g in fed.gateways["dc2"]:
        g.proc.kill()
    # The secondary's leader falls back to the primary's gateways (after 3 failed
    # replication rounds) and its requests to the primary recover.
    fed.wait(
        "dc2 -> dc1 reads with both dc2 gateways down (leader fallback)",
        lambda: fed.check_cross_ok("dc2", "dc1", times=3),
        timeout=RECOVERY,
    )
    for g in fed.gateways["dc2"]:
        g.proc.start()
    fed.wait("the federation forms again", fed.check_formed, HEAL)

    # Traffic returns through the restarted gateways: into dc2 (from dc1) and, once the
    # leader's replication succeeds through them again, out of dc2 to dc1.
    def moved(suffix: str) -> bool:
        before = sum(g.traffic(suffix) for g in fed.gateways["dc2"])
        fed.check_cross_ok("dc1", "dc2", times=3)
        fed.check_cross_ok("dc2", "dc1", times=3)
        fed.check_kv_both_ways()
        return sum(g.traffic(suffix) for g in fed.gateways["dc2"]) > before

    wait_until(
        "traffic for dc2 through dc2's gateways",
        lambda: moved("server.dc2.consul"),
        timeout=RECOVERY,
    )
    wait_until(
        "traffic for dc1 through dc2's gateways",
        lambda: moved("server.dc1.consul"),
        timeout=RECOVERY,
    )


@pytest.mark.timeout(240)
def test_primary_server_restarted(fed: Federation) -> None:
    heal(fed, HEAL)
    check_primary_server_restart(fed, HEAL)


@pytest.mark.timeout(240)
def test_secondary_gateway_readdressed(fed: Federation) -> None:
    """Consul issue #10132: a secondary gateway's new WAN address reaches the primary, which
    routes to it (the other dc2 gateway is down, so this one must carry the traffic)."""
    heal(fed, HEAL)
    g1, g2 = fed.gateways["dc2"]
    old = g1.wan
    g2.proc.kill()
    fed.readdress_gateway(g1, wan_ip(29))
    assert g1.wan != old

    def primary_routes_to_new() -> bool:
        for g in fed.gateways["dc1"]:
            table = g.stats().get("routing_table") or {}
            got = (table.get("RemoteGateways") or {}).get("dc2", [])
            assert g1.wan in got and old not in got, f"{g.name}: dc2 gateways {got}"
        fed.check_federation_states()
        return True

    wait_until("dc1's gateways route dc2 to the new address", primary_routes_to_new, timeout=HEAL)

    def through_new() -> bool:
        before = g1.traffic("server.dc2.consul")
        fed.check_cross_ok("dc1", "dc2", times=3)
        return g1.traffic("server.dc2.consul") > before

    wait_until("dc1 -> dc2 through the re-addressed gateway", through_new, timeout=RECOVERY)
    fed.check_kv_both_ways()
    g2.proc.start()
    fed.wait("the federation forms with both dc2 gateways", fed.check_formed, HEAL)


def test_fixture_procs_are_ours(fed: Federation) -> None:
    """Every process the federation started runs in one of its namespaces (the harness kills
    by PID; a PID outside our namespaces would mean a leak)."""
    procs: Procs = fed.procs
    ours = {int(pid) for ns in fed.topo.namespaces for pid in ip("netns", "pids", ns).split()}
    for p in procs.all:
        if p.alive:
            assert p.pid in ours, f"{p.name} (pid {p.pid}) is not in our namespaces"
