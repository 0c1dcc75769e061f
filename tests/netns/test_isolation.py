"""Point 1 of issue 6's proof: in the wanfed topology a server of one datacenter cannot open a
TCP connection to a server of the other (so traditional federation is impossible there),
while servers reach their own LAN, gateways reach their LAN and the WAN link, and the
secondary's servers reach the gateways' WAN addresses (what ``primary_gateways`` needs).

A listener runs on every node, so a failed connection means "no route", not "nothing
listening". The management links (198.19.<k>.0/30, one per node, to the root namespace) do not
give any namespace a path to another one: no namespace has a default route and IPv4
forwarding is off everywhere (checked by ``build_wanfed``).
"""

from __future__ import annotations

import time
from pathlib import Path

from netns.conftest import start_listener, tcp_probe
from netns.procs import Procs
from netns.topology import Topology, build_wanfed, in_ns, ip


def test_servers_of_different_dcs_cannot_connect(
    topo: Topology, procs: Procs, tmp_path: Path
) -> None:
    dcs = build_wanfed(topo, servers_per_dc=2, gateways_per_dc=2)
    dc1, dc2 = dcs
    for node in topo.nodes.values():
        start_listener(procs, node.ns, node.name, tmp_path)
    for ns in topo.namespaces:
        routes = in_ns(ns, "ip", "-4", "route", "show", "default").stdout.strip()
        assert routes == "", f"{ns} has a default route: {routes}"

    # dc1 (the primary): its servers reach their LAN only.
    s1, s2 = dc1.servers
    remote = dc2.servers[0]
    unreachable = [
        remote.ip_on("lan"),  # the other dc's server address
        remote.ip_on("egress"),  # ... and its egress address
        dc2.gateways[0].ip_on("lan"),  # the other dc's gateway, LAN side
        dc2.gateways[0].ip_on("wan"),  # ... and WAN side: primary servers are not on the WAN
        remote.mgmt_ip,  # the management links are no path either
    ]
    reachable = [s2.ip_on("lan"), dc1.gateways[0].ip_on("lan")]
    started = time.monotonic()
    result = tcp_probe(s1.ns, unreachable + reachable, timeout=2.0)
    elapsed = time.monotonic() - started
    for host in reachable:
        assert result[host] == "ok", f"{s1.name} cannot reach {host}: {result}"
    for host in unreachable:
        assert result[host] != "ok", f"{s1.name} reached {host}: {result}"
    # Unroutable, not merely slow: each failed attempt ends within its 2 s timeout.
    assert elapsed < 2.0 * len(unreachable) + 3, f"probes took {elapsed:.1f}s: {result}"

    # dc2 (a secondary): its servers reach their LAN and, through their egress link, the
    # gateways' WAN addresses (primary_gateways) — but no address of a dc1 server or of dc1's
    # LAN.
    a = dc2.servers[1]
    unreachable = [*(s.ip_on("lan") for s in dc1.servers), dc1.gateways[0].ip_on("lan")]
    reachable = [
        dc2.servers[0].ip_on("lan"),
        dc2.gateways[0].ip_on("lan"),
        *(g.ip_on("wan") for g in dc1.gateways),
    ]
    result = tcp_probe(a.ns, unreachable + reachable, timeout=2.0)
    for host in reachable:
        assert result[host] == "ok", f"{a.name} cannot reach {host}: {result}"
    for host in unreachable:
        assert result[host] != "ok", f"{a.name} reached {host}: {result}"

    # Gateways: their LAN peers and the other dc's gateways' WAN addresses, but not the other
    # dc's LAN.
    for dc, other in ((dc1, dc2), (dc2, dc1)):
        g = dc.gateways[0]
        r = tcp_probe(
            g.ns,
            [
                *(s.ip_on("lan") for s in dc.servers),
                dc.gateways[1].ip_on("lan"),
                dc.gateways[1].ip_on("wan"),
                *(o.ip_on("wan") for o in other.gateways),
                other.servers[0].ip_on("lan"),
            ],
            timeout=2.0,
        )
        unreachable = other.servers[0].ip_on("lan")
        assert r.pop(unreachable) != "ok", f"{g.name} reached {unreachable}"
        assert all(v == "ok" for v in r.values()), f"{g.name}: {r}"


def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    """A topology's teardown removes its namespaces and root links, also with processes
    still running inside."""
    t = Topology()
    procs = Procs()
    try:
        build_wanfed(t, servers_per_dc=1, gateways_per_dc=1)
        node = next(iter(t.nodes.values()))
        start_listener(procs, node.ns, node.name, tmp_path)
    finally:
        t.teardown()
        procs.stop_all()
    assert t.prefix not in ip("netns", "list")
    assert t.prefix not in ip("link", "show")
    assert all(not p.alive for p in procs.all)
