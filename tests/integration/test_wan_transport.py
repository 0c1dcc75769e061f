"""``WanFedTransport`` over real sockets: two "servers" in dc1 and dc2, each with its own
gRPC server (mutual TLS, certificates from our ``tls`` generator, client certificates
required) carrying the ``WanGossipServicer``; ``routes()`` points straight at the other's
gRPC port with the SNI ``<node>.server.<dc>.consul`` (no gateway in between yet).

Proven: packets both ways attributed to the sender's advertised address; a stream exchange
(and the 4 MiB frame limit both ways); same-datacenter peers on plain UDP/TCP; no route →
dropped and counted; calls refused before ``start``; idle channels reaped and re-opened; and
two Serf nodes (the unchanged ``gossip.node`` driver) in different datacenters joining through
a placeholder address and seeing each other alive, all their traffic tunnelled."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from gossip.config import default_local_config
from gossip.messages import Address
from gossip.node import GossipNode
from gossip.serf import MemberEvent, MemberEventKind, Serf, SerfConfig
from gossip.transport import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameTooLarge,
    NetTransport,
    StreamClosed,
    StreamConn,
    StreamError,
    StreamTimeout,
)
from proto import wan_gossip_pb2 as pb
from proto import wan_gossip_pb2_grpc as pb_grpc
from server.clicmd.tls import CAOptions, CertOptions, generate_ca, generate_cert, parse_signer
from server.federation.wan_transport import (
    WanFedTransport,
    WanGossipServicer,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DOMAIN = "consul"
PLACEHOLDER_HOST = "192.0.2.2"  # Consul's fake address for "*.<dc>" join entries
MiB = 1024 * 1024


@dataclass(frozen=True)
class Pki:
    ca: bytes
    certs: dict[tuple[str, str], tuple[bytes, bytes]]  # (node, dc) -> (cert, key)

    def server(self, node: str, dc: str) -> grpc.ServerCredentials:
        cert, key = self.certs[node, dc]
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel(self, node: str, dc: str) -> grpc.ChannelCredentials:
        cert, key = self.certs[node, dc]
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=key, certificate_chain=cert
        )


NODES = [("s1", "dc1"), ("s2", "dc2"), ("s3", "dc1"), ("s4", "dc2")]


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_pem, ca_key = generate_ca(CAOptions(days=1))
    signer = parse_signer(ca_key)
    certs = {}
    for node, dc in NODES:
        cert, key = generate_cert(
            CertOptions(
                signer=signer,
                ca=ca_pem,
                name=f"server.{dc}.{DOMAIN}",
                days=1,
                dns_names=[f"server.{dc}.{DOMAIN}", f"{node}.server.{dc}.{DOMAIN}", "localhost"],
                ip_addresses=[ipaddress.IPv4Address("127.0.0.1")],
                ext_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            )
        )
        certs[node, dc] = (cert.encode(), key.encode())
    return Pki(ca_pem.encode(), certs)


@dataclass
class Directory:
    """What the agent knows: peers by advertised address (from the WAN member list, plus
    placeholders), and every server's gRPC address (the gateway locator, no gateway yet)."""

    peers: dict[Address, tuple[str, str]] = field(default_factory=dict)
    grpc: dict[tuple[str, str], str] = field(default_factory=dict)  # (node, dc) -> host:port
    asked: list[tuple[str, str]] = field(default_factory=list)

    def peer_of(self, addr: Address) -> tuple[str, str] | None:
        if addr[0] == PLACEHOLDER_HOST:
            return ("*", f"dc{addr[1] - 9000}")  # placeholder port 900N -> dcN (test only)
        return self.peers.get(addr)

    def routes(self, dc: str, node: str) -> list[tuple[str, str]]:
        self.asked.append((dc, node))
        if node == "*":
            return [(addr, f"server.{d}.{DOMAIN}") for (_, d), addr in self.grpc.items() if d == dc]
        addr = self.grpc.get((node, dc))
        return [(addr, f"{node}.server.{dc}.{DOMAIN}")] if addr else []


@dataclass
class Side:
    node: str
    dc: str
    transport: WanFedTransport
    servicer: WanGossipServicer
    server: Any
    packets: list[tuple[bytes, Address]] = field(default_factory=list)
    on_stream: Callable[[StreamConn], Any] | None = None
    started: bool = False

    @property
    def adv(self) -> Address:
        return self.transport.advertise

    async def start(self) -> None:
        async def on_stream(conn: StreamConn) -> None:
            if self.on_stream is not None:
                await self.on_stream(conn)

        await self.transport.start(lambda d, a: self.packets.append((d, a)), on_stream)
        self.started = True


class World:
    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.dir = Directory()
        self.sides: list[Side] = []
        self.nodes: list[GossipNode[Serf]] = []

    async def side(
        self, node: str, dc: str, host: str, *, start: bool = True, idle: float = 120.0
    ) -> Side:
        net = NetTransport((host, 0), tcp_timeout=2.0)
        await net.bind()
        transport = WanFedTransport(
            net,
            local_dc=dc,
            node=node,
            peer_of=self.dir.peer_of,
            routes=self.dir.routes,
            channel_credentials=self.pki.channel(node, dc),
            idle_timeout=idle,
        )
        servicer = WanGossipServicer(transport)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 16 * MiB),
                ("grpc.max_send_message_length", 16 * MiB),
                ("grpc.so_reuseport", 0),
            ]
        )
        servicer.add_to(server)
        port = server.add_secure_port(f"{host}:0", self.pki.server(node, dc))
        await server.start()
        side = Side(node, dc, transport, servicer, server)
        self.sides.append(side)
        self.dir.peers[transport.advertise] = (node, dc)
        self.dir.grpc[node, dc] = f"{host}:{port}"
        if start:
            await side.start()
        return side

    async def close(self) -> None:
        for n in self.nodes:
            await n.stop()
        for s in self.sides:
            await s.transport.close()
            await s.server.stop(None)


@pytest.fixture
async def world(pki: Pki) -> AsyncIterator[World]:
    w = World(pki)
    try:
        yield w
    finally:
        await w.close()


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


def no_tasks_left(prefix: str = "wan-gossip") -> Iterator[str]:
    return (t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefix))


# ---------------------------------------------------------------------------------- packets


async def test_packets_both_ways_carry_the_senders_address(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1")
    b = await world.side("s2", "dc2", "127.0.0.2")
    a.transport.send_packet(b.adv, b"hello dc2")
    a.transport.send_packet(b.adv, b"")  # an empty packet is a packet too
    await wait_until(lambda: len(b.packets) == 2, what="packets in dc2")
    assert b.packets == [(b"hello dc2", a.adv), (b"", a.adv)]
    b.transport.send_packet(a.adv, b"hello dc1")
    await wait_until(lambda: len(a.packets) == 1, what="packet in dc1")
    assert a.packets == [(b"hello dc1", b.adv)]
    assert world.dir.asked[0] == ("dc2", "s2")
    ta, tb = a.transport.metrics(), b.transport.metrics()
    assert ta["tunnel_packets_out"] == 2 and tb["tunnel_packets_in"] == 2
    assert ta["tunnel_bytes_out"] == len(b"hello dc2") and ta["packets_out"] == 2
    assert tb["packets_in"] == tb["tunnel_packets_in"] == 2  # nothing came over UDP
    assert ta["tunnel_channels"] == tb["tunnel_channels"] == 1  # one pooled channel each
    # Many packets on the same call, in order.
    for i in range(200):
        a.transport.send_packet(b.adv, i.to_bytes(2, "big"))
    await wait_until(lambda: len(b.packets) == 202, what="200 more packets")
    assert [d for d, _ in b.packets[2:]] == [i.to_bytes(2, "big") for i in range(200)]
    assert a.transport.tunnel_stats.tunnel_channels_opened == 1


async def test_same_dc_peers_use_plain_udp_and_tcp(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1")
    c = await world.side("s3", "dc1", "127.0.0.3")
    a.transport.send_packet(c.adv, b"lan-ish")
    await wait_until(lambda: bool(c.packets), what="UDP packet")
    assert c.packets == [(b"lan-ish", a.transport.local_address)]  # the UDP source address
    got: list[bytes] = []

    async def echo(conn: StreamConn) -> None:
        got.append(await conn.read_frame())
        await conn.write_frame(b"pong")

    c.on_stream = echo
    conn = await a.transport.open_stream(c.adv, 2.0)
    await conn.write_frame(b"ping")
    assert await conn.read_frame() == b"pong"
    conn.close()
    assert got == [b"ping"]
    for side in (a, c):
        t = side.transport.tunnel_stats
        assert t.tunnel_packets_out == t.tunnel_packets_in == 0
        assert t.tunnel_streams_out == t.tunnel_streams_in == t.tunnel_channels_opened == 0
    # An unknown address is a plain peer too.
    a.transport.send_packet(("127.0.0.3", c.adv[1]), b"unknown")
    await wait_until(lambda: len(c.packets) == 2, what="second UDP packet")


async def test_no_route_drops_and_counts(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1")
    ghost: Address = ("127.0.0.9", 8302)
    world.dir.peers[ghost] = ("s9", "dc9")  # a member of a datacenter nobody can reach
    a.transport.send_packet(ghost, b"x")
    a.transport.send_packet(ghost, b"y")
    assert a.transport.tunnel_stats.tunnel_drops_no_route == 2
    assert a.transport.stats.packets_dropped_out == 2
    with pytest.raises(StreamError, match=r"no route to s9\.dc9"):
        await a.transport.open_stream(ghost, 1.0)
    assert a.transport.tunnel_stats.tunnel_drops_no_route == 3
    assert a.transport.metrics()["tunnel_channels"] == 0

    def broken(dc: str, node: str) -> list[tuple[str, str]]:
        raise RuntimeError("locator bug")

    a.transport._routes = broken  # a raising callback is a drop, never an exception
    a.transport.send_packet(ghost, b"z")
    assert a.transport.tunnel_stats.tunnel_route_errors == 1
    assert a.transport.tunnel_stats.tunnel_drops_no_route == 4


# ---------------------------------------------------------------------------------- streams


async def test_stream_exchange_and_frame_limit(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1")
    b = await world.side("s2", "dc2", "127.0.0.2")
    seen: list[tuple[bytes, Address]] = []

    async def serve(conn: StreamConn) -> None:
        while True:
            try:
                frame = await conn.read_frame()
            except StreamClosed:
                return
            seen.append((frame, conn.remote_address))
            await conn.write_frame(frame[::-1])

    b.on_stream = serve
    conn = await a.transport.open_stream(b.adv, 5.0)
    assert conn.remote_address == b.adv
    await conn.write_frame(b"abc")
    assert await conn.read_frame() == b"cba"
    big = random.Random(1).randbytes(DEFAULT_MAX_FRAME_BYTES)  # exactly the limit passes
    await conn.write_frame(big)
    assert await conn.read_frame() == big[::-1]
    with pytest.raises(FrameTooLarge):
        await conn.write_frame(b"x" * (DEFAULT_MAX_FRAME_BYTES + 1))  # refused, nothing sent
    await conn.write_frame(b"still usable")
    assert await conn.read_frame() == b"elbasu llits"
    conn.close()
    conn.close()  # idempotent
    assert [(f[:3], addr) for f, addr in seen] == [
        (b"abc", a.adv),
        (big[:3], a.adv),
        (b"sti", a.adv),
    ]
    assert a.transport.stats.frames_too_large == 1
    assert a.transport.tunnel_stats.tunnel_streams_out == 1
    await wait_until(lambda: b.transport.tunnel_stats.tunnel_streams_in == 1)
    await wait_until(lambda: not list(no_tasks_left("wan-gossip-stream-in")), what="served")
    assert a.transport.metrics()["tunnel_channels"] == 1  # the channel stays pooled

    # A peer that sends an oversized frame anyway: the receiver refuses it.
    refused: list[BaseException] = []

    async def strict(conn: StreamConn) -> None:
        try:
            await conn.read_frame()
        except StreamError as exc:
            refused.append(exc)

    b.on_stream = strict
    raw = grpc.aio.secure_channel(
        world.dir.grpc["s2", "dc2"],
        world.pki.channel("s1", "dc1"),
        options=[
            ("grpc.ssl_target_name_override", "s2.server.dc2.consul"),
            ("grpc.max_send_message_length", 16 * MiB),
        ],
    )
    try:
        call = pb_grpc.WanGossipStub(raw).Stream()  # type: ignore[no-untyped-call]
        await call.write(pb.WanGossipMessage(sender="127.0.0.1:1", node="x", datacenter="dc1"))
        await call.write(pb.WanGossipMessage(data=b"y" * (DEFAULT_MAX_FRAME_BYTES + 1)))
        assert await call.read() is grpc.aio.EOF  # the server ended the call
        assert await call.code() == grpc.StatusCode.OK
    finally:
        await raw.close()
    assert len(refused) == 1 and isinstance(refused[0], FrameTooLarge)
    assert b.transport.stats.frames_too_large == 1


async def test_stream_peer_closing_and_timeouts(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1")
    b = await world.side("s2", "dc2", "127.0.0.2")

    async def hang_up(conn: StreamConn) -> None:
        await conn.read_frame()

    b.on_stream = hang_up
    conn = await a.transport.open_stream(b.adv, 2.0)
    await conn.write_frame(b"hi")
    with pytest.raises(StreamClosed):
        await conn.read_frame()
    conn.close()

    async def silent(conn: StreamConn) -> None:
        await asyncio.sleep(10)

    b.on_stream = silent
    conn = await a.transport.open_stream(b.adv, 0.3)
    started = time.monotonic()
    with pytest.raises(StreamTimeout):
        await conn.read_frame()
    assert time.monotonic() - started < 2.0
    conn.close()
    assert a.transport.stats.stream_timeouts == 1


# ---------------------------------------------------------------------------------- lifecycle


async def test_calls_before_start_are_refused_and_counted(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1")
    b = await world.side("s2", "dc2", "127.0.0.2", start=False)
    a.transport.send_packet(b.adv, b"too early")
    await wait_until(lambda: b.servicer.stats.tunnel_refused >= 1, what="refused packets call")
    await wait_until(lambda: a.transport.tunnel_stats.tunnel_channel_errors == 1, what="error")
    assert a.transport.metrics()["tunnel_channels"] == 0  # closed on error
    conn = await a.transport.open_stream(b.adv, 2.0)
    with pytest.raises(StreamError, match="UNAVAILABLE"):
        await conn.read_frame()
    conn.close()
    assert b.servicer.stats.tunnel_refused == 2
    # Started now: the next packet opens a new channel and call, lazily.
    await b.start()
    a.transport.send_packet(b.adv, b"on time")
    await wait_until(lambda: b.packets == [(b"on time", a.adv)], what="packet after start")
    assert a.transport.tunnel_stats.tunnel_channels_opened >= 2


async def test_idle_channels_are_reaped_and_reopened(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1", idle=0.5)
    b = await world.side("s2", "dc2", "127.0.0.2")
    a.transport.send_packet(b.adv, b"one")
    await wait_until(lambda: len(b.packets) == 1)
    assert a.transport.metrics()["tunnel_channels"] == 1
    await wait_until(
        lambda: a.transport.tunnel_stats.tunnel_channels_reaped == 1, timeout=3.0, what="reap"
    )
    assert a.transport.metrics()["tunnel_channels"] == 0
    await wait_until(lambda: not list(no_tasks_left("wan-gossip-packets")), what="pump gone")
    a.transport.send_packet(b.adv, b"two")
    await wait_until(lambda: len(b.packets) == 2)
    assert b.packets[1] == (b"two", a.adv)
    assert a.transport.tunnel_stats.tunnel_channels_opened == 2
    assert a.transport.tunnel_stats.tunnel_channel_errors == 0
    # A channel carrying an open stream is never reaped.
    b.on_stream = lambda conn: asyncio.sleep(1.5)
    conn = await a.transport.open_stream(b.adv, 5.0)
    reaped = a.transport.tunnel_stats.tunnel_channels_reaped
    await asyncio.sleep(1.0)
    assert a.transport.tunnel_stats.tunnel_channels_reaped == reaped
    conn.close()
    await wait_until(
        lambda: a.transport.tunnel_stats.tunnel_channels_reaped == reaped + 1, timeout=3.0
    )


async def test_close_releases_everything(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1")
    b = await world.side("s2", "dc2", "127.0.0.2")
    b.on_stream = lambda conn: asyncio.sleep(30)
    a.transport.send_packet(b.adv, b"x")
    await wait_until(lambda: len(b.packets) == 1)
    conn = await a.transport.open_stream(b.adv, 5.0)
    await conn.write_frame(b"hello")
    await wait_until(lambda: b.transport.tunnel_stats.tunnel_streams_in == 1)
    await b.transport.close()  # drops the inbound stream in progress
    with pytest.raises(StreamError):
        await conn.read_frame()
    await a.transport.close()
    await a.transport.close()  # idempotent
    await asyncio.sleep(0)
    assert list(no_tasks_left()) == []
    a.transport.send_packet(b.adv, b"after close")  # never raises
    with pytest.raises(StreamError):
        await a.transport.open_stream(b.adv, 1.0)


# ---------------------------------------------------------------------------------- serf


async def test_serf_nodes_in_two_dcs_join_through_a_placeholder(world: World) -> None:
    a = await world.side("s1", "dc1", "127.0.0.1", start=False)
    b = await world.side("s2", "dc2", "127.0.0.2", start=False)
    # The agent's peer_of: from WAN member events only (names "<node>.<dc>").
    world.dir.peers.clear()

    def on_event(event: object) -> None:
        if isinstance(event, MemberEvent) and event.kind == MemberEventKind.JOIN:
            for m in event.members:
                node, _, dc = m.name.partition(".")
                world.dir.peers[m.addr] = (node, dc)

    for side in (a, b):
        cfg = default_local_config(f"{side.node}.{side.dc}", side.adv)
        serf = Serf(SerfConfig(), cfg, random.Random(side.node), time.monotonic(), {})
        node = GossipNode(serf, side.transport, None, on_event=on_event)
        await node.start()
        world.nodes.append(node)
    na, nb = world.nodes
    # dc1 joins "*.dc2" at the placeholder address; its transport routes it to dc2's servers.
    assert await na.join([(PLACEHOLDER_HOST, 9002)]) == 1

    async def alive(node: GossipNode[Serf]) -> set[str]:
        return {m.name for m in await node.members() if m.status == "alive"}

    deadline = time.monotonic() + 10
    while (await alive(na), await alive(nb)) != ({"s1.dc1", "s2.dc2"},) * 2:
        assert time.monotonic() < deadline, (await na.members(), await nb.members())
        await asyncio.sleep(0.05)
    # Probes keep working through the tunnel for a few rounds.
    await asyncio.sleep(2.5)
    assert await alive(na) == await alive(nb) == {"s1.dc1", "s2.dc2"}
    for side in (a, b):
        m = side.transport.metrics()
        assert m["packets_in"] == m["tunnel_packets_in"] > 0  # no plain UDP across dcs
        assert m["streams_in"] == m["tunnel_streams_in"]
        assert m["tunnel_drops_no_route"] == 0
    assert ("dc2", "*") in world.dir.asked
    assert a.transport.tunnel_stats.tunnel_streams_out >= 1


async def test_bad_headers_are_refused(world: World) -> None:
    await world.side("s1", "dc1", "127.0.0.1")
    b = await world.side("s2", "dc2", "127.0.0.2")
    raw = grpc.aio.secure_channel(
        world.dir.grpc["s2", "dc2"],
        world.pki.channel("s1", "dc1"),
        options=[("grpc.ssl_target_name_override", "s2.server.dc2.consul")],
    )
    stub = pb_grpc.WanGossipStub(raw)  # type: ignore[no-untyped-call]
    try:
        for call in (stub.Packets(), stub.Stream()):
            await call.write(pb.WanGossipMessage(sender="no port here"))
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await raw.close()
    assert b.transport.tunnel_stats.tunnel_bad_header == 2
    assert b.packets == [] and b.transport.tunnel_stats.tunnel_streams_in == 0
