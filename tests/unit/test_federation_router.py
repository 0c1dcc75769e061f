"""The WAN router (server.federation.router): datacenters, route order, Consul's errors."""

from __future__ import annotations

import random

import pytest

from server.federation.router import (
    FAILED_HOLD,
    DCNotAvailableError,
    NoPathError,
    Router,
    parse_member,
)


def member(name: str, dc: str, status: str = "alive", port: int = 8300, host: str = "10.0.0.1"):
    return (name, (host, 8302), status, {"role": "consul", "dc": dc, "port": str(port)})


def test_parse_member_needs_role_dc_suffix_and_port() -> None:
    assert parse_member(*member("s1.dc1", "dc1")) is not None
    s = parse_member(*member("s1.dc1", "dc1", host="198.18.1.5", port=9300))
    assert s is not None and (s.node, s.datacenter, s.rpc_address) == (
        "s1",
        "dc1",
        "198.18.1.5:9300",
    )
    assert (
        parse_member("s1.dc2", ("h", 1), "alive", {"role": "consul", "dc": "dc1", "port": "1"})
        is None
    )
    assert (
        parse_member("s1.dc1", ("h", 1), "alive", {"role": "node", "dc": "dc1", "port": "1"})
        is None
    )
    assert (
        parse_member("s1.dc1", ("h", 1), "alive", {"role": "consul", "dc": "dc1", "port": "x"})
        is None
    )
    assert (
        parse_member(".dc1", ("h", 1), "alive", {"role": "consul", "dc": "dc1", "port": "1"})
        is None
    )
    v6 = parse_member("s.dc1", ("::1", 1), "alive", {"role": "consul", "dc": "dc1", "port": "2"})
    assert v6 is not None and v6.rpc_address == "[::1]:2"


def test_datacenters_local_first_then_by_name() -> None:
    r = Router("dc2", random.Random(0))
    r.update([member("a.dc3", "dc3"), member("b.dc1", "dc1"), member("c.dc2", "dc2")])
    assert r.datacenters() == ["dc2", "dc1", "dc3"]
    assert Router("dcx", random.Random(0)).datacenters() == ["dcx"]


def test_route_errors_unknown_and_unavailable() -> None:
    r = Router("dc1", random.Random(0))
    r.update([member("a.dc2", "dc2", status="failed"), member("b.dc2", "dc2", status="left")])
    with pytest.raises(NoPathError, match="No path to datacenter"):
        r.route("dc9", 0.0)
    with pytest.raises(DCNotAvailableError, match="Remote DC has no server currently reachable"):
        r.route("dc2", 0.0)


def test_failed_servers_go_last_and_come_back_after_the_hold() -> None:
    r = Router("dc1", random.Random(7))
    r.update([member(f"s{i}.dc2", "dc2") for i in range(3)])
    r.failed("s0.dc2", 100.0)
    r.failed("s1.dc2", 105.0)
    order = [s.name for s in r.route("dc2", 110.0)]
    assert order == ["s2.dc2", "s0.dc2", "s1.dc2"]
    # s0's hold is over: it comes before s1 (still held) but after never-failed s2.
    order = [s.name for s in r.route("dc2", 100.0 + FAILED_HOLD)]
    assert order == ["s2.dc2", "s0.dc2", "s1.dc2"]
    r.succeeded("s1.dc2")
    assert {s.name for s in r.route("dc2", 111.0)[:2]} == {"s1.dc2", "s2.dc2"}


def test_update_forgets_failures_of_gone_members() -> None:
    r = Router("dc1", random.Random(0))
    r.update([member("s0.dc2", "dc2")])
    r.failed("s0.dc2", 1.0)
    r.update([])
    r.update([member("s0.dc2", "dc2")])
    assert [s.name for s in r.route("dc2", 2.0)] == ["s0.dc2"]
    assert r._failed_at == {}
