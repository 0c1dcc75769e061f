"""gossip.transport (UDP + TCP on one port) and gossip.node (the asyncio driver), over real
sockets on 127.0.0.1: packets, frames, limits, timeouts, hostile bytes, encryption, joins."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip import wire
from gossip.config import default_local_config
from gossip.keyring import Keyring
from gossip.math import suspicion_timeout
from gossip.memberlist import MemberEvent as MLMemberEvent
from gossip.memberlist import Memberlist
from gossip.messages import Ack, Address, MemberState, Message, Ping, PushPull
from gossip.node import GossipNode, JoinError, NodeStopped
from gossip.serf import MemberEvent, MemberEventKind, Serf, SerfConfig, UserEvent
from gossip.transport import (
    FrameTooLarge,
    NetTransport,
    StreamClosed,
    StreamConn,
    StreamError,
    StreamTimeout,
    TransportError,
)

LOCAL = ("127.0.0.1", 0)


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def wait_until(pred: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


def ignore_packet(data: bytes, addr: Address) -> None:
    pass


async def ignore_stream(conn: StreamConn) -> None:
    pass


@pytest.fixture
async def transports() -> AsyncIterator[list[NetTransport]]:
    """Transports a test creates; all closed at the end."""
    made: list[NetTransport] = []
    yield made
    for t in made:
        await t.close()


# ------------------------------------------------------------------------------ transport


async def test_binds_udp_and_tcp_on_the_same_port(transports: list[NetTransport]) -> None:
    t = NetTransport(LOCAL)
    transports.append(t)
    got: list[tuple[bytes, Address]] = []
    await t.start(lambda d, a: got.append((d, a)), ignore_stream)
    host, port = t.local_address
    assert host == "127.0.0.1" and port > 0
    _, writer = await asyncio.open_connection(host, port)  # TCP listens on it
    writer.close()
    with udp_socket() as s:
        s.sendto(b"x", (host, port))  # and UDP
        await wait_until(lambda: len(got) == 1, what="the datagram")
        assert got[0] == (b"x", s.getsockname())


async def test_fixed_port_taken_for_udp_is_a_clear_error(transports: list[NetTransport]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(LOCAL)
        t = NetTransport(("127.0.0.1", s.getsockname()[1]))
        transports.append(t)
        with pytest.raises(TransportError, match="cannot bind UDP"):
            await t.bind()


async def test_packet_round_trip(transports: list[NetTransport]) -> None:
    a, b = NetTransport(LOCAL), NetTransport(LOCAL)
    transports += [a, b]
    got: list[tuple[bytes, Address]] = []
    await a.start(ignore_packet, ignore_stream)
    await b.start(lambda d, addr: got.append((d, addr)), ignore_stream)
    for i in range(3):
        a.send_packet(b.local_address, b"packet %d" % i)
    await wait_until(lambda: len(got) == 3, what="three packets")
    assert sorted(d for d, _ in got) == [b"packet 0", b"packet 1", b"packet 2"]
    assert {addr for _, addr in got} == {a.local_address}  # sent from the bound port
    assert (a.stats.packets_out, a.stats.bytes_out) == (3, 24)
    assert (b.stats.packets_in, b.stats.bytes_in) == (3, 24)


async def test_send_packet_drops_and_counts_instead_of_raising(
    transports: list[NetTransport],
) -> None:
    t = NetTransport(LOCAL, max_packet_bytes=100)
    transports.append(t)
    t.send_packet(("127.0.0.1", 9), b"before start")  # not bound yet
    await t.start(ignore_packet, ignore_stream)
    t.send_packet(t.local_address, bytes(101))  # over the limit
    t.send_packet(("127.0.0.1", 99999), b"bad port")
    t.send_packet(("", 0), b"no address")
    await t.close()
    t.send_packet(("127.0.0.1", 9), b"after close")
    assert t.stats.packets_dropped_out >= 3  # bad addresses are dropped or reported
    assert t.stats.packets_out + t.stats.packets_dropped_out == 5


async def test_stream_frames_round_trip(transports: list[NetTransport]) -> None:
    async def echo(conn: StreamConn) -> None:
        while True:
            try:
                frame = await conn.read_frame()
            except StreamClosed:
                return
            await conn.write_frame(frame[::-1])

    server, client = NetTransport(LOCAL), NetTransport(LOCAL)
    transports += [server, client]
    await server.start(ignore_packet, echo)
    await client.start(ignore_packet, ignore_stream)
    conn = await client.open_stream(server.local_address, timeout=2.0)
    frames = [b"", b"abc", os.urandom(1024 * 1024)]
    try:
        for f in frames:
            await conn.write_frame(f)
            assert await conn.read_frame() == f[::-1]
    finally:
        conn.close()
    assert client.stats.frames_out == 3 and client.stats.frames_in == 3
    await wait_until(lambda: server.stats.frames_in == 3)
    assert server.stats.streams_in == 1 and client.stats.streams_out == 1


async def test_oversized_frame_is_refused_both_ways(transports: list[NetTransport]) -> None:
    errors: list[BaseException] = []

    async def reader(conn: StreamConn) -> None:
        try:
            await conn.read_frame()
        except StreamError as exc:
            errors.append(exc)

    server = NetTransport(LOCAL, max_frame_bytes=1024)
    transports.append(server)
    await server.start(ignore_packet, reader)
    host, port = server.local_address
    r, w = await asyncio.open_connection(host, port)
    w.write((10 * 1024 * 1024).to_bytes(4, "big") + b"x" * 100)  # announces 10 MiB
    await w.drain()
    assert await asyncio.wait_for(r.read(), 2.0) == b""  # the server hung up
    w.close()
    await wait_until(lambda: len(errors) == 1)
    assert isinstance(errors[0], FrameTooLarge)
    assert server.stats.frames_too_large == 1

    client = NetTransport(LOCAL, max_frame_bytes=1024)
    transports.append(client)
    await client.start(ignore_packet, ignore_stream)
    conn = await client.open_stream(server.local_address, timeout=2.0)
    with pytest.raises(FrameTooLarge):
        await conn.write_frame(bytes(1025))
    conn.close()
    assert client.stats.frames_too_large == 1 and client.stats.frames_out == 0


async def test_stream_read_times_out(transports: list[NetTransport]) -> None:
    errors: list[BaseException] = []

    async def reader(conn: StreamConn) -> None:
        try:
            await conn.read_frame()
        except StreamError as exc:
            errors.append(exc)

    server = NetTransport(LOCAL, tcp_timeout=0.2)
    transports.append(server)
    await server.start(ignore_packet, reader)
    _, w = await asyncio.open_connection(*server.local_address)
    w.write(b"\x00\x00")  # half a header, then silence
    start = time.monotonic()
    await wait_until(lambda: len(errors) == 1, timeout=3.0)
    assert isinstance(errors[0], StreamTimeout)
    assert 0.15 < time.monotonic() - start < 2.0
    assert server.stats.stream_timeouts == 1
    w.close()


async def test_open_stream_to_nobody_fails_with_stream_error(
    transports: list[NetTransport],
) -> None:
    t = NetTransport(LOCAL)
    transports.append(t)
    await t.start(ignore_packet, ignore_stream)
    with socket.socket() as s:
        s.bind(LOCAL)
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(StreamError):
            await t.open_stream(("127.0.0.1", port), timeout=1.0)
    assert t.stats.stream_errors == 1


async def test_inbound_stream_limit_and_close_cancels_handlers(
    transports: list[NetTransport],
) -> None:
    started = asyncio.Event()

    async def hold(conn: StreamConn) -> None:
        started.set()
        await asyncio.sleep(60)

    server = NetTransport(LOCAL, max_inbound_streams=1)
    transports.append(server)
    await server.start(ignore_packet, hold)
    _, w1 = await asyncio.open_connection(*server.local_address)
    await asyncio.wait_for(started.wait(), 2.0)
    r2, w2 = await asyncio.open_connection(*server.local_address)
    assert await asyncio.wait_for(r2.read(), 2.0) == b""  # refused at once
    assert server.stats.streams_rejected == 1
    await asyncio.wait_for(server.close(), 2.0)  # does not wait for the handler's sleep
    w1.close()
    w2.close()


# ------------------------------------------------------------------------------ node helpers


async def memberlist_node(
    name: str,
    keyring: Keyring | None = None,
    events: list[object] | None = None,
    **config: Any,
) -> GossipNode[Memberlist]:
    t = NetTransport(LOCAL, tcp_timeout=1.0)
    addr = await t.bind()
    cfg = default_local_config(name, addr).replace(**config)
    core = Memberlist(cfg, random.Random(1), time.monotonic())
    sink = events if events is not None else []
    node = GossipNode(core, t, keyring, on_event=sink.append)
    await node.start()
    return node


async def serf_node(
    name: str, keyring: Keyring | None = None, events: list[object] | None = None
) -> GossipNode[Serf]:
    t = NetTransport(LOCAL, tcp_timeout=1.0)
    addr = await t.bind()
    cfg = default_local_config(name, addr)
    core = Serf(SerfConfig(), cfg, random.Random(name), time.monotonic(), {"role": name})
    sink = events if events is not None else []
    node = GossipNode(core, t, keyring, on_event=sink.append)
    await node.start()
    return node


def seal(keyring: Keyring | None, msgs: Sequence[Message]) -> bytes:
    data = wire.encode(msgs)
    return keyring.encrypt(data) if keyring is not None else data


def ping_packet(keyring: Keyring | None, seq: int, target: str, reply_to: Address) -> bytes:
    return seal(keyring, [Ping(seq, target, "tester", reply_to)])


async def udp_ack(
    sock: socket.socket, keyring: Keyring | None, seq: int, timeout: float
) -> Ack | None:
    """The Ack ``seq`` that arrives on ``sock`` within ``timeout``, or None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        if keyring is not None:
            data = keyring.decrypt(data)
        for m in wire.decode(data):
            if isinstance(m, Ack) and m.seq == seq:
                return m
    return None


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(LOCAL)
    s.setblocking(False)
    return s


def packet_drops(node: GossipNode[Any]) -> int:
    s = node.stats
    return (
        s.packets_plaintext_dropped
        + s.packets_decrypt_failed
        + s.packets_encrypted_dropped
        + s.packets_decode_errors
        + s.packets_queue_full
    )


async def stream_request(addr: Address, payload: bytes) -> bytes | None:
    """Send one frame over a raw TCP connection; the reply frame's payload, or None."""
    r, w = await asyncio.open_connection(*addr)
    try:
        w.write(wire.encode_frame(payload))
        await w.drain()
        try:
            return await asyncio.wait_for(wire.read_frame(r), 2.0)
        except wire.WireError:
            return None
    finally:
        w.close()


# ------------------------------------------------------------------------------ hostile bytes

garbage = st.one_of(
    st.binary(max_size=1500),
    st.binary(max_size=300).map(lambda b: b"\x0a" + b),  # looks like a plaintext Packet
    st.binary(max_size=300).map(lambda b: b"\x01" + b),  # looks sealed
)


async def _hostile_round(encrypted: bool, packets: list[bytes], frames: list[bytes]) -> None:
    keyring = Keyring.from_b64(new_key()) if encrypted else None
    node = await memberlist_node("target", keyring)
    sock = udp_socket()
    try:
        addr = node.local_address
        for p in packets:
            sock.sendto(p, addr)
        for f in frames:  # framed garbage, then the same bytes unframed
            for raw in (wire.encode_frame(f), f):
                _, w = await asyncio.open_connection(*addr)
                w.write(raw)
                await w.drain()
                w.close()
        streams = 2 * len(frames)
        tstats = node.transport.stats
        await wait_until(
            lambda: (
                node.stats.packets_in == len(packets)
                and node.stats.streams_in == streams
                and node.stats.streams_in_failed
                + node.stats.pushpulls_in
                + node.stats.stream_pings_in
                >= streams
            ),
            what="every packet and stream handled",
        )
        assert node.stats.packets_in == node.stats.packets_accepted + packet_drops(node)
        if encrypted:  # nothing unauthenticated gets through
            assert node.stats.packets_accepted == 0
            assert packet_drops(node) == len(packets)
            assert node.stats.streams_in_failed == streams
        assert node.stats.core_errors == 0 and node.stats.event_errors == 0
        assert tstats.handler_errors == 0
        # ... and the node still works: a UDP ping is acked, a stream ping too.
        sock.sendto(ping_packet(keyring, 4242, "target", sock.getsockname()), addr)
        assert await udp_ack(sock, keyring, 4242, 2.0) is not None
        reply = await stream_request(addr, ping_packet(keyring, 77, "target", ("127.0.0.1", 1)))
        assert reply is not None
        assert wire.decode(keyring.decrypt(reply) if keyring else reply) == [Ack(77)]
    finally:
        sock.close()
        await node.stop()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(garbage, max_size=20), frames=st.lists(garbage, max_size=4))
def test_garbage_never_crashes_the_transport_or_the_node(
    encrypted: bool, packets: list[bytes], frames: list[bytes]
) -> None:
    asyncio.run(asyncio.wait_for(_hostile_round(encrypted, packets, frames), 20.0))


async def test_encrypted_node_drops_plaintext_and_wrong_key_packets() -> None:
    ours, theirs = Keyring.from_b64(new_key()), Keyring.from_b64(new_key())
    node = await memberlist_node("secure", ours)
    sock = udp_socket()
    try:
        addr, me = node.local_address, sock.getsockname()
        sock.sendto(ping_packet(None, 1, "secure", me), addr)  # plaintext
        sock.sendto(ping_packet(theirs, 2, "secure", me), addr)  # unknown key
        sock.sendto(ping_packet(ours, 3, "secure", me), addr)  # ours
        assert await udp_ack(sock, ours, 3, 2.0) is not None
        assert await udp_ack(sock, ours, 1, 0.3) is None
        assert await udp_ack(sock, ours, 2, 0.1) is None
        assert node.stats.packets_plaintext_dropped == 1
        assert node.stats.packets_decrypt_failed == 1
        assert node.stats.packets_accepted == 1
        # Streams: a push-pull in plaintext or under another key gets no reply.
        state = PushPull(True, ())
        assert await stream_request(addr, seal(None, [state])) is None
        assert await stream_request(addr, seal(theirs, [state])) is None
        reply = await stream_request(addr, seal(ours, [state]))
        assert reply is not None and isinstance(wire.decode(ours.decrypt(reply))[0], PushPull)
        assert node.stats.stream_plaintext_dropped == 1
        assert node.stats.stream_decrypt_failed == 1
        assert node.stats.pushpulls_in == 1
    finally:
        sock.close()
        await node.stop()


async def test_plaintext_node_drops_sealed_packets() -> None:
    node = await memberlist_node("open")
    sock = udp_socket()
    try:
        key = Keyring.from_b64(new_key())
        sock.sendto(ping_packet(key, 1, "open", sock.getsockname()), node.local_address)
        await wait_until(lambda: node.stats.packets_encrypted_dropped == 1)
        assert node.stats.packets_accepted == 0
    finally:
        sock.close()
        await node.stop()


async def test_core_exceptions_are_contained() -> None:
    class Broken(Memberlist):
        def handle_packet(self, messages: Sequence[Message], now: float) -> None:
            raise RuntimeError("planted bug")

    t = NetTransport(LOCAL, tcp_timeout=1.0)
    addr = await t.bind()
    core = Broken(default_local_config("broken", addr), random.Random(1), time.monotonic())
    node = GossipNode(core, t, None, on_event=lambda ev: None)
    await node.start()
    sock = udp_socket()
    try:
        sock.sendto(ping_packet(None, 1, "broken", sock.getsockname()), addr)
        await wait_until(lambda: node.stats.core_errors == 1)
        assert [m.name for m in await node.members()] == ["broken"]  # the loop lives on
    finally:
        sock.close()
        await node.stop()
    with pytest.raises(NodeStopped):
        await node.members()


# ------------------------------------------------------------------------------ node


async def test_serf_nodes_join_share_a_user_event_and_leave() -> None:
    key = new_key()
    events: dict[str, list[object]] = {n: [] for n in ("a", "b", "c")}
    nodes = [await serf_node(n, Keyring.from_b64(key), events[n]) for n in ("a", "b", "c")]
    a, b, c = nodes
    intruder = await serf_node("intruder", Keyring.from_b64(new_key()))
    try:
        assert await b.join([a.local_address]) == 1
        assert await c.join([a.local_address]) == 1

        async def statuses(node: GossipNode[Any]) -> dict[str, str]:
            return {m.name: m.status for m in await node.members()}

        async def converged(want: dict[str, str]) -> None:
            deadline = time.monotonic() + 5
            while True:
                views = [await statuses(n) for n in nodes if n.running]
                if all(v == want for v in views):
                    return
                assert time.monotonic() < deadline, views
                await asyncio.sleep(0.05)

        await converged({"a": "alive", "b": "alive", "c": "alive"})

        with pytest.raises(JoinError) as info:
            await intruder.join([a.local_address])
        assert list(info.value.errors) == [a.local_address]
        assert a.stats.stream_decrypt_failed == 1

        await b.user_event("deploy", b"v1")

        def user_events(name: str) -> list[UserEvent]:
            return [e for e in events[name] if isinstance(e, UserEvent)]

        await wait_until(lambda: all(len(user_events(n)) >= 1 for n in events))
        await asyncio.sleep(0.5)  # more gossip rounds: no duplicates
        for n in events:
            assert [(e.name, e.payload) for e in user_events(n)] == [("deploy", b"v1")]

        assert await c.leave(timeout=5.0)
        assert not c.running
        nodes.remove(c)
        await converged({"a": "alive", "b": "alive", "c": "left"})
        left = [
            e for e in events["a"] if isinstance(e, MemberEvent) and e.kind == MemberEventKind.LEAVE
        ]
        assert [m.name for e in left for m in e.members] == ["c"]
        assert "intruder" not in await statuses(a)
        for live in nodes:
            assert live.stats.core_errors == 0 and live.stats.event_errors == 0
    finally:
        for node in (*nodes, c, intruder):
            await node.stop()


async def test_join_errors_name_each_address() -> None:
    node = await memberlist_node("alone")
    try:
        with socket.socket() as s:
            s.bind(LOCAL)
            dead = ("127.0.0.1", s.getsockname()[1])
            with pytest.raises(JoinError) as info:
                await node.join([dead])
            assert set(info.value.errors) == {dead}
        with pytest.raises(JoinError, match="other than our own"):
            await node.join([node.local_address])
    finally:
        await node.stop()


async def test_failed_member_detected_through_real_sockets() -> None:
    fast: dict[str, Any] = {"probe_interval": 0.2, "probe_timeout": 0.1, "suspicion_mult": 2}
    events: list[object] = []
    a = await memberlist_node("a", None, events, **fast)
    b = await memberlist_node("b", None, None, **fast)

    def saw(kind: str, state: MemberState | None = None) -> bool:
        return any(
            isinstance(e, MLMemberEvent)
            and e.kind == kind
            and e.member.name == "b"
            and state in (None, e.member.state)
            for e in events
        )

    try:
        await b.join([a.local_address])
        await wait_until(lambda: saw("join"))
        await b.stop()  # a crash, as far as a can tell
        cfg = a.config
        bound = (
            cfg.suspicion_max_timeout_mult
            * suspicion_timeout(cfg.suspicion_mult, 2, cfg.probe_interval)
            + 3 * cfg.probe_interval
        )
        await wait_until(lambda: saw("leave", MemberState.DEAD), bound, "b marked dead")
        assert a.stats.stream_pings_failed >= 1  # the TCP fallback ping was tried too
    finally:
        await a.stop()
        await b.stop()
