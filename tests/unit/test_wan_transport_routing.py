"""The pure parts of ``server.federation.wan_transport``: address text, where a peer is
(``peer_of``, learned senders, our own datacenter), the order routes are tried in, and the
constructor's checks. No sockets are opened (the wrapped transport is never bound)."""

from __future__ import annotations

import time

import grpc
import pytest

from gossip.messages import Address
from gossip.transport import NetTransport
from server.federation.wan_transport import (
    TunnelStats,
    WanFedTransport,
    WanGossipServicer,
    format_address,
    parse_address,
)


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("10.0.0.1:8302", ("10.0.0.1", 8302)),
        ("[::1]:8302", ("::1", 8302)),
        ("[fe80::1]:1", ("fe80::1", 1)),
        ("host.example:65535", ("host.example", 65535)),
    ],
)
def test_address_round_trip(text: str, addr: Address) -> None:
    assert parse_address(text) == addr
    assert format_address(addr) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.1",
        ":8302",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "::1:8302",
        "[]:1",
        "10.0.0.1:x",
        "10.0.0.1:-1",
    ],
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def transport(
    peers: dict[Address, tuple[str, str]] | None = None,
    routes: dict[tuple[str, str], list[tuple[str, str]]] | None = None,
    **kw: object,
) -> WanFedTransport:
    known = peers or {}
    table = routes or {}
    return WanFedTransport(
        NetTransport(("127.0.0.1", 0)),
        node="s1",
        local_dc="dc1",
        peer_of=known.get,
        routes=lambda dc, node: table.get((dc, node), []),
        channel_credentials=grpc.ssl_channel_credentials(),
        advertise=("10.0.0.1", 8302),
        **kw,  # type: ignore[arg-type]
    )


def test_where_a_peer_is() -> None:
    t = transport({("10.1.0.1", 8302): ("s2", "dc2"), ("10.0.0.2", 8302): ("s3", "dc1")})
    assert t._where(("10.1.0.1", 8302)) == ("s2", "dc2")
    assert t._where(("10.0.0.2", 8302)) is None  # our datacenter: plain UDP/TCP
    assert t._where(("10.9.9.9", 8302)) is None  # unknown: plain UDP/TCP
    # A tunnelled sender's header teaches where it is, until peer_of knows better.
    t._learn(("10.9.9.9", 8302), "s9", "dc9")
    t._learn(("10.0.0.7", 8302), "s7", "dc1")  # never learned: our own datacenter
    t._learn(("10.0.0.8", 8302), "", "dc3")  # incomplete header: ignored
    assert t._where(("10.9.9.9", 8302)) == ("s9", "dc9")
    assert t._where(("10.0.0.7", 8302)) is None
    assert t._where(("10.0.0.8", 8302)) is None
    assert t._header().sender == "10.0.0.1:8302"
    assert (t._header().node, t._header().datacenter) == ("s1", "dc1")


def test_a_raising_peer_of_is_counted_not_raised() -> None:
    def boom(addr: Address) -> tuple[str, str] | None:
        raise KeyError(addr)

    t = transport()
    t._peer_of = boom
    assert t._where(("10.1.0.1", 8302)) is None
    assert t.tunnel_stats.tunnel_route_errors == 1


def test_route_order_passes_over_recent_failures() -> None:
    gw1, gw2, gw3 = (
        ("198.18.1.1:443", "server.dc2.consul"),
        ("198.18.1.2:443", "server.dc2.consul"),
        ("198.18.1.3:443", "server.dc2.consul"),
    )
    t = transport(routes={("dc2", "*"): [gw1, gw2, gw3]}, failure_cooldown=5.0)
    assert t._ordered_routes("dc2", "*") == [gw1, gw2, gw3]
    assert t._ordered_routes("dc3", "*") == []
    t._failed[gw1] = -1e9  # long ago: forgotten
    assert t._ordered_routes("dc2", "*") == [gw1, gw2, gw3]
    t._failed[gw1] = t._failed[gw2] = time.monotonic()
    assert t._ordered_routes("dc2", "*") == [gw3, gw1, gw2]


def test_constructor_checks_and_shared_stats() -> None:
    with pytest.raises(ValueError):
        transport(idle_timeout=0)
    with pytest.raises(ValueError):
        transport(max_queued_packets=0)
    t = transport()
    assert WanGossipServicer(t).stats is t.tunnel_stats
    t.advertise = ("10.0.0.5", 8302)  # e.g. once bind() chose the port
    assert t._header().sender == "10.0.0.5:8302"
    net = NetTransport(("127.0.0.1", 0))
    t2 = WanFedTransport(
        net,
        node="s1",
        local_dc="dc1",
        peer_of=lambda a: None,
        routes=lambda dc, n: [],
        channel_credentials=grpc.ssl_channel_credentials(),
    )
    assert t2.stats is net.stats  # plain and tunnelled traffic in one TransportStats
    assert isinstance(t2.tunnel_stats, TunnelStats)
    assert set(TunnelStats().as_dict()) <= set(t.metrics())
