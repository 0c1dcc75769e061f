"""The mesh gateway's SNI classification: every route and every refusal."""

from __future__ import annotations

import ast
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.gateway.routes import (
    Address,
    Refusal,
    RefuseReason,
    Route,
    RouteKind,
    Router,
    RoutingTable,
)

TD = "11111111-2222-3333-4444-555555555555.consul"
S1, S2, S3 = Address("10.0.1.1", 8300), Address("10.0.1.2", 8300), Address("10.0.1.3", 8300)
G2A, G2B = Address("198.18.2.1", 8443), Address("198.18.2.2", 8443)
G3 = Address("198.18.3.1", 8443)
WEB1, WEB2 = Address("10.0.1.10", 21000), Address("10.0.1.11", 21000)


def table(**kw: object) -> RoutingTable:
    base: dict[str, object] = {
        "datacenter": "dc1",
        "domain": "consul",
        "trust_domain": TD,
        "servers": {"s1": S1, "s2": S2, "S3": S3},
        "healthy_servers": ["s1", "s2"],
        "remote_gateways": {"dc2": [G2B, G2A], "dc3": [G3], "dc4": []},
        "services": {("web", "default"): [WEB1, WEB2], ("v2.web", "default"): [WEB2]},
    }
    base.update(kw)
    return RoutingTable(**base)  # type: ignore[arg-type]


def router(**kw: object) -> Router:
    return Router(table(**kw), random.Random(1))


def ok(r: Route | Refusal) -> Route:
    assert isinstance(r, Route), r
    assert r.target in r.candidates
    return r


def refused(r: Route | Refusal, reason: RefuseReason) -> Refusal:
    assert isinstance(r, Refusal), r
    assert r.reason is reason, r
    return r


# -- servers -----------------------------------------------------------------------------------


def test_named_local_server() -> None:
    r = ok(router().route("s1.server.dc1.consul"))
    assert (r.kind, r.datacenter, r.node, r.target, r.candidates) == (
        RouteKind.LOCAL_SERVER,
        "dc1",
        "s1",
        S1,
        (S1,),
    )


def test_named_local_server_needs_no_health() -> None:
    # s3 is not healthy, but a caller that names it gets it
    assert ok(router().route("s3.server.dc1.consul")).target == S3


def test_unknown_local_server() -> None:
    r = refused(router().route("s9.server.dc1.consul"), RefuseReason.UNKNOWN_SERVER)
    assert "s9" in r.detail


def test_any_local_server_only_healthy() -> None:
    rt = router()
    seen = Counter(ok(rt.route("server.dc1.consul")).target for _ in range(200))
    assert set(seen) == {S1, S2}
    r = ok(rt.route("server.dc1.consul"))
    assert r.kind is RouteKind.ANY_LOCAL_SERVER and r.candidates == (S1, S2) and r.node is None


def test_any_local_server_deterministic_with_seed() -> None:
    picks = [
        [ok(Router(table(), random.Random(7)).route("server.dc1.consul")).target] for _ in range(2)
    ]
    assert picks[0] == picks[1]
    a = Router(table(), random.Random(7))
    b = Router(table(), random.Random(7))
    assert [ok(a.route("server.dc1.consul")).target for _ in range(20)] == [
        ok(b.route("server.dc1.consul")).target for _ in range(20)
    ]


def test_no_healthy_servers() -> None:
    refused(router(healthy_servers=[]).route("server.dc1.consul"), RefuseReason.NO_HEALTHY_SERVERS)
    # healthy names without an address do not count
    refused(
        router(healthy_servers=["ghost"]).route("server.dc1.consul"),
        RefuseReason.NO_HEALTHY_SERVERS,
    )


@pytest.mark.parametrize("sni", ["server.dc2.consul", "s7.server.dc2.consul"])
def test_remote_server_goes_to_remote_gateway(sni: str) -> None:
    r = ok(router().route(sni))
    assert r.kind is RouteKind.REMOTE_SERVER_GATEWAY and r.datacenter == "dc2"
    assert r.candidates == (G2A, G2B)  # sorted
    assert r.node == (None if sni.startswith("server.") else "s7")


def test_remote_gateway_pick_spreads() -> None:
    rt = router()
    assert {ok(rt.route("server.dc2.consul")).target for _ in range(100)} == {G2A, G2B}


def test_remote_unknown_datacenter() -> None:
    refused(router().route("server.dc9.consul"), RefuseReason.UNKNOWN_DATACENTER)


def test_remote_datacenter_without_gateways() -> None:
    refused(router().route("server.dc4.consul"), RefuseReason.NO_GATEWAYS)


def test_local_dc_in_remote_gateways_is_ignored() -> None:
    rt = router(remote_gateways={"DC1": [G3]}, healthy_servers=[])
    refused(rt.route("server.dc1.consul"), RefuseReason.NO_HEALTHY_SERVERS)


def test_servers_not_exposed() -> None:
    rt = router(expose_servers=False)
    for sni in ("s1.server.dc1.consul", "server.dc1.consul", "server.dc2.consul"):
        refused(rt.route(sni), RefuseReason.SERVERS_NOT_EXPOSED)
    # services still route
    ok(rt.route(f"web.default.dc1.internal.{TD}"))


def test_other_domain() -> None:
    rt = router(domain="example.com.")
    assert ok(rt.route("s1.server.dc1.example.com")).target == S1
    refused(rt.route("s1.server.dc1.consul"), RefuseReason.UNKNOWN_NAME)


# -- services ----------------------------------------------------------------------------------


def test_local_service() -> None:
    rt = router()
    r = ok(rt.route(f"web.default.dc1.internal.{TD}"))
    assert r.kind is RouteKind.LOCAL_SERVICE
    assert (r.service, r.namespace, r.subset, r.datacenter) == ("web", "default", None, "dc1")
    assert r.candidates == (WEB1, WEB2)
    assert {ok(rt.route(f"web.default.dc1.internal.{TD}")).target for _ in range(50)} == {
        WEB1,
        WEB2,
    }


def test_local_service_subset() -> None:
    r = ok(router().route(f"v2.web.default.dc1.internal.{TD}"))
    assert r.kind is RouteKind.LOCAL_SERVICE and r.subset == "v2" and r.candidates == (WEB2,)


def test_unknown_local_service() -> None:
    refused(router().route(f"db.default.dc1.internal.{TD}"), RefuseReason.UNKNOWN_SERVICE)
    refused(router().route(f"web.other.dc1.internal.{TD}"), RefuseReason.UNKNOWN_SERVICE)
    refused(router().route(f"v9.web.default.dc1.internal.{TD}"), RefuseReason.UNKNOWN_SERVICE)


def test_remote_service() -> None:
    r = ok(router().route(f"db.default.dc3.internal.{TD}"))
    assert r.kind is RouteKind.REMOTE_SERVICE_GATEWAY and r.candidates == (G3,)
    assert (r.service, r.namespace, r.datacenter) == ("db", "default", "dc3")
    refused(router().route(f"db.default.dc9.internal.{TD}"), RefuseReason.UNKNOWN_DATACENTER)
    refused(router().route(f"db.default.dc4.internal.{TD}"), RefuseReason.NO_GATEWAYS)


def test_service_name_shapes() -> None:
    refused(router().route(f"default.dc1.internal.{TD}"), RefuseReason.UNKNOWN_NAME)
    refused(router().route(f"a.b.web.default.dc1.internal.{TD}"), RefuseReason.UNKNOWN_NAME)
    refused(router().route(f"web.default.ap.dc1.internal-v1.{TD}"), RefuseReason.UNSUPPORTED)
    refused(router().route("web.default.dc1.internal.other.consul"), RefuseReason.UNKNOWN_NAME)


def test_services_need_a_trust_domain() -> None:
    refused(
        router(trust_domain=None).route(f"web.default.dc1.internal.{TD}"),
        RefuseReason.UNKNOWN_NAME,
    )


# -- names -------------------------------------------------------------------------------------


def test_case_insensitive() -> None:
    rt = router(datacenter="DC1", domain="Consul", trust_domain=TD.upper())
    r = ok(rt.route("S3.SERVER.dc1.CONSUL"))
    assert r.target == S3 and r.sni == "s3.server.dc1.consul"
    ok(rt.route(f"WEB.Default.DC1.Internal.{TD}"))
    ok(rt.route("Server.DC2.consul"))


def test_trailing_dot_in_config_is_fine_in_sni_refused() -> None:
    rt = router(domain="consul.", trust_domain=TD + ".")
    ok(rt.route("s1.server.dc1.consul"))
    ok(rt.route(f"web.default.dc1.internal.{TD}"))
    refused(rt.route("s1.server.dc1.consul."), RefuseReason.INVALID_NAME)


@pytest.mark.parametrize(
    "sni",
    [
        "",
        ".",
        "a..consul",
        "s1.server.dc1.consul.",
        "a b.consul",
        "é.server.dc1.consul",
        "x" * 64 + ".server.dc1.consul",
        ("a." * 127) + "consul",
        "s1.server.dc1.consul\x00",
    ],
)
def test_invalid_names(sni: str) -> None:
    refused(router().route(sni), RefuseReason.INVALID_NAME)


@pytest.mark.parametrize(
    "sni",
    [
        "consul",
        "server.consul",
        "dc1.consul",
        "a.b.server.dc1.consul",  # node names have no dots
        "s1.servers.dc1.consul",
        "s1.server.dc1.example.com",
        "www.example.com",
        "server.dc1",
        "s1.server.dc1.notconsul",
    ],
)
def test_unknown_names(sni: str) -> None:
    refused(router().route(sni), RefuseReason.UNKNOWN_NAME)


def test_update_swaps_table() -> None:
    rt = router()
    refused(rt.route("server.dc9.consul"), RefuseReason.UNKNOWN_DATACENTER)
    rt.update(table(remote_gateways={"dc9": [G3]}))
    assert ok(rt.route("server.dc9.consul")).target == G3
    assert rt.table.remote_gateways == {"dc9": [G3]}
    # a re-addressed gateway (Consul issue #10132): the new table's address wins at once
    new = Address("198.18.9.9", 8443)
    rt.update(table(remote_gateways={"dc9": [new]}))
    assert ok(rt.route("server.dc9.consul")).candidates == (new,)


def test_duplicate_addresses_collapse() -> None:
    r = ok(router(remote_gateways={"dc2": [G2A, ("198.18.2.1", 8443)]}).route("server.dc2.consul"))
    assert r.candidates == (G2A,)


def test_address_str() -> None:
    assert str(S1) == "10.0.1.1:8300"
    assert str(Address("::1", 8300)) == "[::1]:8300"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"[a-zA-Z0-9_.-]{0,40}\.(server\.)?dc[1-4]\.consul"))
def test_fuzz_never_raises(sni: str) -> None:
    r = router().route(sni)
    if isinstance(r, Route):
        assert r.target in r.candidates and r.candidates


def test_no_io_imports() -> None:
    forbidden = {"asyncio", "socket", "time", "random", "threading", "selectors"}
    pkg = Path(__file__).resolve().parents[2] / "server" / "gateway"
    for name in ("__init__.py", "clienthello.py", "routes.py"):
        tree = ast.parse((pkg / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                mods = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not mods & forbidden, (name, mods)
