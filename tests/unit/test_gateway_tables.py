"""The gateway's pure inputs: the agent's JSON to routing inputs (``server.gateway.tables``),
listeners and registration (``server.gateway.config``), counters (``server.gateway.stats``)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from server.gateway.config import GatewayConfig, listen_addresses, parse_hostport, registration
from server.gateway.routes import Address, Refusal, RefuseReason, Route, Router, RoutingTable
from server.gateway.stats import MAX_SUFFIXES, OTHER, Stats, refusal_suffix
from server.gateway.tables import (
    build_table,
    csn_address,
    local_servers,
    remote_gateways,
    sni_suffix,
)


def csn(
    node: str = "n1",
    node_addr: str = "10.0.0.1",
    svc_addr: str = "",
    port: Any = 8300,
    checks: tuple[str, ...] = ("passing",),
    meta: dict[str, str] | None = None,
    tagged: dict[str, Any] | None = None,
) -> dict[str, Any]:
    svc: dict[str, Any] = {"Service": "consul", "Address": svc_addr, "Port": port}
    if meta is not None:
        svc["Meta"] = meta
    if tagged is not None:
        svc["TaggedAddresses"] = tagged
    return {
        "Node": {"Node": node, "Address": node_addr},
        "Service": svc,
        "Checks": [{"CheckID": f"c{i}", "Status": st} for i, st in enumerate(checks)],
    }


# -- local servers ----------------------------------------------------------------------------


def test_local_servers_addresses_and_health() -> None:
    found = local_servers(
        [
            csn("a", "10.0.0.1"),
            csn("b", "10.0.0.2", svc_addr="10.1.0.2", port=8301),
            csn("c", "10.0.0.3", checks=("passing", "critical")),
            csn("d", "10.0.0.4", checks=("warning",)),
        ]
    )
    assert found.servers == {
        "a": Address("10.0.0.1", 8300),
        "b": Address("10.1.0.2", 8301),
        "c": Address("10.0.0.3", 8300),
        "d": Address("10.0.0.4", 8300),
    }
    assert found.healthy == frozenset({"a", "b", "d"})


@pytest.mark.parametrize(
    "entry",
    [
        csn(port=0),
        csn(port=70000),
        csn(port="8300"),
        csn(port=True),
        csn(node=""),
        csn(node_addr=""),
        {"Node": None, "Service": None},
        "not a mapping",
    ],
)
def test_incomplete_entries_are_skipped(entry: Any) -> None:
    assert local_servers([entry, csn("ok")]).servers == {"ok": Address("10.0.0.1", 8300)}


def test_wrong_top_level_shapes_raise_type_error() -> None:
    with pytest.raises(TypeError):
        local_servers({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        remote_gateways([])  # type: ignore[arg-type]


# -- remote gateways --------------------------------------------------------------------------

FED = {"consul-wan-federation": "1"}
WAN = {"wan": {"Address": "203.0.113.1", "Port": 443}, "lan": {"Address": "10.0.0.9", "Port": 8443}}


def test_remote_gateways_filter_and_addresses() -> None:
    states = {
        "dc2": [
            csn("g1", meta=FED, tagged=WAN),
            csn("g2", "10.2.0.2", port=8443, meta=FED),  # no wan tagged address
            csn("g3", meta={"consul-wan-federation": "0"}, tagged=WAN),
            csn("g4", meta=FED, tagged=WAN, checks=("critical",)),
            csn("g5", tagged=WAN),  # no meta
            csn("g6", meta=FED, tagged=WAN),  # duplicate address
        ],
        "dc3": [csn("g7", tagged=WAN)],  # nothing fit: known, but empty
        "": [csn("g8", meta=FED, tagged=WAN)],
    }
    assert remote_gateways(states) == {
        "dc2": [Address("203.0.113.1", 443), Address("10.2.0.2", 8443)],
        "dc3": [],
    }


def test_csn_address_tagged_fallbacks() -> None:
    bad_tag = {"wan": {"Address": "", "Port": 443}}
    assert csn_address(csn(tagged=bad_tag), tagged="wan") == Address("10.0.0.1", 8300)
    assert csn_address(csn(tagged={"wan": "1.2.3.4"}), tagged="wan") == Address("10.0.0.1", 8300)
    assert csn_address(csn(port=None)) is None


def test_build_table_routes_like_the_router_expects() -> None:
    servers = local_servers([csn("a", "10.0.0.1"), csn("b", "10.0.0.2", checks=("critical",))])
    gateways = {"dc2": [Address("203.0.113.1", 443)], "dc1": [Address("9.9.9.9", 1)]}
    table = build_table("dc1", "consul.", servers, gateways, expose_servers=True)
    router = Router(table, random.Random(1))
    any_server = router.route("server.dc1.consul")
    assert isinstance(any_server, Route) and any_server.candidates == (Address("10.0.0.1", 8300),)
    remote = router.route("x.server.dc2.consul")
    assert isinstance(remote, Route) and remote.target == Address("203.0.113.1", 443)
    assert sni_suffix(remote, table.domain, None) == "server.dc2.consul"
    assert isinstance(router.route("b.server.dc1.consul"), Route)  # named: health ignored


def test_sni_suffix_for_services() -> None:
    table = RoutingTable(
        datacenter="dc1",
        trust_domain="abc.consul",
        services={("web", "default"): [("10.0.0.5", 20000)]},
    )
    route = Router(table, random.Random(0)).route("web.default.dc1.internal.abc.consul")
    assert isinstance(route, Route)
    assert sni_suffix(route, "consul", "abc.consul.") == "dc1.internal.abc.consul"


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.1:8443", Address("10.0.0.1", 8443)),
        ("[::1]:443", Address("::1", 443)),
        ("gw.example.com:1", Address("gw.example.com", 1)),
    ],
)
def test_parse_hostport(text: str, want: Address) -> None:
    assert parse_hostport(text) == want


@pytest.mark.parametrize("text", ["10.0.0.1", ":80", "a:b", "a:70000", "::1:80", "[::1]80", "a:0"])
def test_parse_hostport_refusals(text: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_hostport(text)


def test_parse_hostport_zero_port_when_allowed() -> None:
    assert parse_hostport("127.0.0.1:0", allow_zero=True) == Address("127.0.0.1", 0)


def test_listen_addresses() -> None:
    lan, wan = Address("10.0.0.1", 8443), Address("203.0.113.1", 443)
    assert listen_addresses(lan, wan, {}) == [("lan", lan), ("wan", wan)]
    assert listen_addresses(lan, lan, {}) == [("lan", lan)]
    wild = Address("0.0.0.0", 8443)
    assert listen_addresses(wild, Address("203.0.113.1", 8443), {}) == [("lan", wild)]
    binds = {"b": Address("10.0.0.2", 1), "a": Address("10.0.0.3", 2)}
    assert listen_addresses(lan, wan, binds) == [("a", binds["a"]), ("b", binds["b"])]


def test_registration_body() -> None:
    cfg = GatewayConfig(service="gw", expose_servers=True)
    lan, wan = Address("10.0.0.1", 8443), Address("203.0.113.1", 443)
    assert registration(cfg, lan, wan) == {
        "Kind": "mesh-gateway",
        "ID": "gw",
        "Name": "gw",
        "Address": "10.0.0.1",
        "Port": 8443,
        "TaggedAddresses": {
            "lan": {"Address": "10.0.0.1", "Port": 8443},
            "wan": {"Address": "203.0.113.1", "Port": 443},
        },
        "Check": {
            "Name": "Mesh Gateway Listening",
            "TCP": "10.0.0.1:8443",
            "Interval": "10s",
            "DeregisterCriticalServiceAfter": "6h",
        },
        "Meta": {"consul-wan-federation": "1"},
    }
    assert "Meta" not in registration(GatewayConfig(), lan, wan)


def test_registration_id_is_the_proxy_id_else_the_service_name() -> None:
    """Consul's ``-proxy-id``: the registration's service ID; the name stays the service's (two
    gateways of one service on one agent register side by side)."""
    lan, wan = Address("10.0.0.1", 8443), Address("203.0.113.1", 443)
    body = registration(GatewayConfig(service="gw", proxy_id="gw-2"), lan, wan)
    assert (body["ID"], body["Name"], body["Kind"]) == ("gw-2", "gw", "mesh-gateway")
    assert GatewayConfig(service="gw", proxy_id="gw-2").service_id == "gw-2"
    assert registration(GatewayConfig(), lan, wan)["ID"] == "mesh-gateway"
    assert GatewayConfig(service="gw").service_id == "gw"


# -- stats ------------------------------------------------------------------------------------


def test_suffix_labels_are_bounded() -> None:
    stats = Stats()
    for i in range(MAX_SUFFIXES + 10):
        stats.suffix(f"server.dc{i}.consul").connections_total += 1
    assert len(stats.suffixes) == MAX_SUFFIXES + 1  # the cap, plus "other"
    assert stats.suffixes[OTHER].connections_total == 10


def test_refusal_suffix_only_for_known_datacenters() -> None:
    table = RoutingTable(datacenter="dc1", remote_gateways={"dc2": []}, trust_domain="td")

    assert refusal_suffix(_refusal("x.server.dc1.consul"), table) == "server.dc1.consul"
    assert refusal_suffix(_refusal("server.dc2.consul"), table) == "server.dc2.consul"
    assert refusal_suffix(_refusal("x.server.dc9.consul"), table) == OTHER
    assert refusal_suffix(_refusal("web.default.dc2.internal.td"), table) == "dc2.internal.td"
    assert refusal_suffix(_refusal("web.default.dc9.internal.td"), table) == OTHER
    assert refusal_suffix(_refusal("evil.com"), table) == OTHER
    assert refusal_suffix(_refusal("x.server.dc1.consul"), None) == OTHER


def _refusal(name: str) -> Refusal:
    return Refusal(RefuseReason.UNKNOWN_NAME, name, "")


def test_prometheus_text() -> None:
    stats = Stats()
    suffix = stats.suffix("server.dc1.consul")
    stats.route("local_server", suffix)
    suffix.bytes_in += 5
    stats.refuse("unknown_name")
    stats.refuse('we"ird\\')
    text = stats.prometheus()
    assert 'proconsul_gateway_routes_total{kind="local_server"} 1' in text
    assert 'proconsul_gateway_sni_bytes_in_total{suffix="server.dc1.consul"} 5' in text
    assert 'proconsul_gateway_sni_connections_active{suffix="server.dc1.consul"} 1' in text
    assert 'proconsul_gateway_refusals_total{reason="we\\"ird\\\\"} 1' in text
    assert "# TYPE proconsul_gateway_connections_active gauge" in text
    for line in text.splitlines():
        assert line.startswith("#") or line.startswith("proconsul_gateway_"), line
    snap = stats.snapshot()
    assert snap["sni_suffixes"]["server.dc1.consul"]["bytes_in"] == 5
    assert snap["refusals"]["unknown_name"] == 1
