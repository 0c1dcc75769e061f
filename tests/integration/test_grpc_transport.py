"""GrpcTransport over real sockets on 127.0.0.1 (raft.transport.grpc)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    Membership,
    Message,
    RequestVote,
    RequestVoteResponse,
    Server,
    SnapshotMeta,
    TimeoutNow,
)
from raft.transport.grpc import GrpcTransport, SnapshotTransferError, TlsConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LOCAL = "127.0.0.1:0"


# --- helpers ---------------------------------------------------------------------------------


class Recorder:
    """An InboundHandler that records everything and verifies snapshots."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.snapshots: list[tuple[InstallSnapshot, bytes, list[int]]] = []

    def on_message(self, msg: Message) -> None:
        self.messages.append(msg)

    async def on_snapshot(
        self, msg: InstallSnapshot, chunks: AsyncIterator[bytes], sha256: str, size: int
    ) -> None:
        digest = hashlib.sha256()
        parts: list[bytes] = []
        async for chunk in chunks:
            digest.update(chunk)
            parts.append(chunk)
        if digest.hexdigest() != sha256:
            raise ValueError("sha256 mismatch")
        data = b"".join(parts)
        assert len(data) == size
        self.snapshots.append((msg, data, [len(p) for p in parts]))


async def eventually(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ae(src: str, dst: str, i: int, n_entries: int = 1, size: int = 10) -> AppendEntries:
    entries = tuple(
        Entry(i * 1000 + k, 1, EntryKind.NORMAL, bytes([k % 256]) * size) for k in range(n_entries)
    )
    return AppendEntries(src, dst, 1, i, 1, entries, i)


async def source(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for off in range(0, len(data), piece):
        yield data[off : off + piece]
        await asyncio.sleep(0)


Factory = Callable[..., Awaitable[tuple[GrpcTransport, Recorder]]]


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    """Start transports (closed at teardown): ``await make(node_id, **kwargs)``."""
    started: list[GrpcTransport] = []

    async def factory(
        node_id: str, listen: str = LOCAL, **kwargs: object
    ) -> tuple[GrpcTransport, Recorder]:
        t = GrpcTransport(node_id, listen, **kwargs)  # type: ignore[arg-type]
        started.append(t)
        rec = Recorder()
        await t.start(rec)
        return t, rec

    yield factory
    await asyncio.wait_for(asyncio.gather(*(t.close() for t in started)), 10)
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("raft-send:")]
    assert not leftover, leftover


async def pair(
    make: Factory, **kwargs: object
) -> tuple[GrpcTransport, Recorder, GrpcTransport, Recorder]:
    a, ra = await make("a", **kwargs)
    b, rb = await make("b", **kwargs)
    a.set_peer("b", b.address)
    b.set_peer("a", a.address)
    return a, ra, b, rb


# --- messages --------------------------------------------------------------------------------


def mixed(src: str, dst: str) -> list[Message]:
    membership = Membership((Server("a", "x:1"), Server("b", "y:2")))
    return [
        RequestVote(src, dst, 2, 10, 1, pre_vote=True),
        RequestVoteResponse(src, dst, 2, True),
        ae(src, dst, 1, n_entries=0),
        ae(src, dst, 2, n_entries=5, size=300),
        AppendEntriesResponse(src, dst, 2, False, 9, conflict_index=4, conflict_term=1),
        InstallSnapshot(src, dst, 3, SnapshotMeta(100, 2, membership)),
        InstallSnapshotResponse(src, dst, 3, True, 100),
        TimeoutNow(src, dst, 4),
    ]


async def test_two_transports_exchange_messages_in_order(make: Factory) -> None:
    a, ra, b, rb = await pair(make)
    to_b = mixed("a", "b") * 3
    to_a = mixed("b", "a") * 3
    for x, y in zip(to_b, to_a, strict=True):
        a.send(x)
        b.send(y)
    await eventually(lambda: len(rb.messages) >= len(to_b) and len(ra.messages) >= len(to_a))
    await asyncio.sleep(0.1)  # nothing more arrives
    assert rb.messages == to_b
    assert ra.messages == to_a
    assert a.stats.sent == len(to_b) and a.stats.dropped == 0
    assert b.stats.received == len(to_b)


async def test_ten_thousand_messages_arrive_in_order_and_batched(make: Factory) -> None:
    a, _, _b, rb = await pair(make)
    sent = [ae("a", "b", i) for i in range(10_000)]
    # Let the stream come up first, so nothing is lost to connection set-up.
    a.send(TimeoutNow("a", "b", 0))
    await eventually(lambda: len(rb.messages) == 1)
    # A ticker measures how long the event loop is ever held up while all this runs.
    max_gap = 0.0

    async def ticker() -> None:
        nonlocal max_gap
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            max_gap = max(max_gap, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    # Send in bursts, as a driver would after each Ready, never letting the queue overflow.
    for i, msg in enumerate(sent):
        a.send(msg)
        if i % 200 == 199:
            while a.queued("b") > 2000:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)
    await eventually(lambda: len(rb.messages) >= 1 + len(sent), timeout=30)
    tick.cancel()
    assert rb.messages[1:] == sent
    stats = a.stats
    assert stats.dropped == 0
    assert stats.sent == 1 + len(sent)
    assert stats.batches < len(sent) // 10, stats
    assert max_gap < 0.5, f"event loop held up for {max_gap:.3f}s"


async def test_unknown_peer_drops(make: Factory) -> None:
    a, _ = await make("a")
    a.send(TimeoutNow("a", "nobody", 1))
    assert a.stats.dropped == 1


async def test_stream_for_another_node_is_refused(make: Factory) -> None:
    a, _ = await make("a")
    b, rb = await make("b")
    a.set_peer("c", b.address)  # wrong: b is not c
    for i in range(20):
        a.send(TimeoutNow("a", "c", i))
        await asyncio.sleep(0.02)
    assert rb.messages == []
    # and the right id still works on the same transport
    a.set_peer("b", b.address)
    await _deliver_eventually(a, rb, "b")


async def _deliver_eventually(
    a: GrpcTransport, rb: Recorder, dst: str, timeout: float = 10
) -> None:
    """Keep sending until one message gets through (the stream may be reconnecting)."""
    deadline = time.monotonic() + timeout
    term = 1_000_000
    while not any(isinstance(m, TimeoutNow) and m.term >= 1_000_000 for m in rb.messages):
        assert time.monotonic() < deadline, "no delivery"
        term += 1
        a.send(TimeoutNow("a", dst, term))
        await asyncio.sleep(0.05)


# --- failures --------------------------------------------------------------------------------


async def test_peer_down_drops_without_blocking_then_delivery_resumes(make: Factory) -> None:
    port = free_port()
    a, _ = await make("a")
    a.set_peer("b", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    for i in range(20_000):  # far beyond queue_limit
        a.send(ae("a", "b", i))
    assert time.monotonic() - t0 < 2.0
    await asyncio.sleep(0.3)  # the sender fails to connect and backs off
    assert a.stats.dropped >= 20_000 - 4096
    assert a.queued("b") == 0  # dropped on the failure, not kept
    assert a.stats.sent == 0

    _b, rb = await make("b", listen=f"127.0.0.1:{port}")
    await _deliver_eventually(a, rb, "b")
    assert a.stats.reconnects >= 1
    # From here on, order is preserved.
    before = len(rb.messages)
    burst = [ae("a", "b", i) for i in range(500)]
    for msg in burst:
        a.send(msg)
    await eventually(lambda: len(rb.messages) >= before + 500)
    assert rb.messages[before:] == burst


async def test_peer_restart_reconnects(make: Factory) -> None:
    port = free_port()
    a, _ = await make("a")
    b1 = GrpcTransport("b", f"127.0.0.1:{port}")
    r1 = Recorder()
    await b1.start(r1)
    a.set_peer("b", b1.address)
    await _deliver_eventually(a, r1, "b")
    await b1.close()
    _b2, r2 = await make("b", listen=f"127.0.0.1:{port}")
    await _deliver_eventually(a, r2, "b")


async def test_message_above_max_message_bytes_is_refused_by_sender(make: Factory) -> None:
    limit = 64 * 1024
    a, _, _b, rb = await pair(make, max_message_bytes=limit, snapshot_chunk_bytes=16 * 1024)
    small = [ae("a", "b", i) for i in range(3)]
    huge = ae("a", "b", 99, n_entries=1, size=2 * limit)
    a.send(small[0])
    a.send(huge)
    a.send(small[1])
    a.send(small[2])
    await eventually(lambda: len(rb.messages) >= 3)
    await asyncio.sleep(0.1)
    assert rb.messages == small
    assert a.stats.dropped == 1
    # Many messages that fit one by one but not together are split over several batches.
    many = [ae("a", "b", i, n_entries=1, size=20_000) for i in range(20)]
    for msg in many:
        a.send(msg)
    await eventually(lambda: len(rb.messages) >= 23)
    assert rb.messages[3:] == many


async def test_message_above_receivers_limit_does_not_kill_the_transport(make: Factory) -> None:
    a, _ = await make("a")  # 16 MiB sender limit
    b, rb = await make("b", max_message_bytes=64 * 1024, snapshot_chunk_bytes=16 * 1024)
    a.set_peer("b", b.address)
    await _deliver_eventually(a, rb, "b")
    a.send(ae("a", "b", 1, n_entries=1, size=200_000))  # b refuses the batch: stream reset
    await asyncio.sleep(0.2)
    assert not any(isinstance(m, AppendEntries) for m in rb.messages)
    rb.messages.clear()
    await _deliver_eventually(a, rb, "b")


# --- snapshots -------------------------------------------------------------------------------


def snapshot_msg(src: str = "a", dst: str = "b") -> InstallSnapshot:
    membership = Membership((Server("a", "x:1"), Server("b", "y:2")))
    return InstallSnapshot(src, dst, 5, SnapshotMeta(1234, 4, membership), leader_commit=1300)


async def test_snapshot_streams_in_chunks_and_arrives_intact(make: Factory) -> None:
    a, _, _b, rb = await pair(make)
    data = os.urandom(3 * 1024 * 1024 + 12345)
    sha = hashlib.sha256(data).hexdigest()
    msg = snapshot_msg()
    await asyncio.wait_for(a.send_snapshot(msg, source(data, 100_000), sha, len(data)), 20)
    assert len(rb.snapshots) == 1
    got_msg, got, sizes = rb.snapshots[0]
    assert got_msg == msg
    assert got == data
    assert len(sizes) > 10
    assert max(sizes) <= 256 * 1024
    # Messages still flow afterwards.
    await _deliver_eventually(a, rb, "b")


async def test_empty_snapshot(make: Factory) -> None:
    a, _, _b, rb = await pair(make)
    sha = hashlib.sha256(b"").hexdigest()
    await asyncio.wait_for(a.send_snapshot(snapshot_msg(), source(b"", 1), sha, 0), 10)
    assert rb.snapshots[0][1] == b""


async def test_snapshot_sha_mismatch_raises_on_sender(make: Factory) -> None:
    a, _, _b, rb = await pair(make)
    data = os.urandom(600_000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(SnapshotTransferError, match="sha256 mismatch"):
        await asyncio.wait_for(
            a.send_snapshot(snapshot_msg(), source(data, 50_000), wrong, len(data)), 10
        )
    assert rb.snapshots == []
    await _deliver_eventually(a, rb, "b")


async def test_snapshot_source_size_mismatch_raises(make: Factory) -> None:
    a, _, _b, rb = await pair(make)
    data = os.urandom(1000)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(SnapshotTransferError):
        await asyncio.wait_for(a.send_snapshot(snapshot_msg(), source(data, 300), sha, 999), 10)
    with pytest.raises(SnapshotTransferError):
        await asyncio.wait_for(a.send_snapshot(snapshot_msg(), source(data, 300), sha, 2000), 10)
    assert rb.snapshots == []


async def test_snapshot_to_unknown_or_down_peer_raises(make: Factory) -> None:
    a, _ = await make("a")
    data = b"abc"
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(SnapshotTransferError, match="no address"):
        await a.send_snapshot(snapshot_msg(dst="zz"), source(data, 10), sha, 3)
    a.set_peer("b", f"127.0.0.1:{free_port()}")
    with pytest.raises(SnapshotTransferError, match="UNAVAILABLE"):
        await asyncio.wait_for(a.send_snapshot(snapshot_msg(), source(data, 10), sha, 3), 10)


async def test_snapshot_source_error_propagates(make: Factory) -> None:
    a, _, _b, rb = await pair(make)

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        await asyncio.wait_for(a.send_snapshot(snapshot_msg(), broken(), "0" * 64, 5000), 10)
    assert rb.snapshots == []


# --- TLS -------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_node_tls(
    tmp: Path,
    name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    trust: x509.Certificate | None = None,
    dns: str = "localhost",
    server_name_override: str | None = None,
) -> TlsConfig:
    """A node certificate signed by ``ca`` (valid for 127.0.0.1 and ``dns``); trusts ``trust``
    (default: ``ca``)."""
    ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    d = tmp / name
    d.mkdir()
    (d / "ca.pem").write_bytes((trust or ca_cert).public_bytes(serialization.Encoding.PEM))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsConfig(
        str(d / "ca.pem"), str(d / "cert.pem"), str(d / "key.pem"), server_name_override
    )


async def test_mutual_tls_delivers_messages_and_snapshots(make: Factory, tmp_path: Path) -> None:
    ca = make_ca("proconsul-test-ca")
    a, ra = await make("a", tls=make_node_tls(tmp_path, "a", ca))
    b, rb = await make("b", tls=make_node_tls(tmp_path, "b", ca))
    a.set_peer("b", b.address)
    b.set_peer("a", a.address)
    to_b = mixed("a", "b")
    for msg in to_b:
        a.send(msg)
    b.send(TimeoutNow("b", "a", 1))
    await eventually(lambda: len(rb.messages) >= len(to_b) and len(ra.messages) >= 1)
    assert rb.messages == to_b
    assert ra.messages == [TimeoutNow("b", "a", 1)]
    data = os.urandom(700_000)
    await asyncio.wait_for(
        a.send_snapshot(
            snapshot_msg(), source(data, 65536), hashlib.sha256(data).hexdigest(), len(data)
        ),
        10,
    )
    assert rb.snapshots[0][1] == data


async def test_tls_server_name_override(make: Factory, tmp_path: Path) -> None:
    ca = make_ca("proconsul-test-ca")
    b, rb = await make("b", tls=make_node_tls(tmp_path, "b", ca, dns="server.dc1.proconsul"))
    a, _ = await make(
        "a",
        tls=make_node_tls(tmp_path, "a", ca, server_name_override="server.dc1.proconsul"),
    )
    a.set_peer("b", f"localhost:{b.port}")  # "localhost" is not in b's certificate
    await _deliver_eventually(a, rb, "b")


async def test_client_without_a_certificate_from_the_ca_cannot_deliver(
    make: Factory, tmp_path: Path
) -> None:
    ca = make_ca("proconsul-test-ca")
    rogue_ca = make_ca("rogue-ca")
    b, rb = await make("b", tls=make_node_tls(tmp_path, "b", ca))
    # Trusts the real CA (so it would accept b), but its own certificate is the rogue CA's.
    rogue, _ = await make("a", tls=make_node_tls(tmp_path, "rogue", rogue_ca, trust=ca[0]))
    plain, _ = await make("a")  # no TLS at all
    rogue.set_peer("b", b.address)
    plain.set_peer("b", b.address)
    data = b"x" * 1000
    sha = hashlib.sha256(data).hexdigest()
    for i in range(30):
        rogue.send(TimeoutNow("a", "b", i))
        plain.send(TimeoutNow("a", "b", i))
        await asyncio.sleep(0.03)
    assert rb.messages == []
    with pytest.raises(SnapshotTransferError):
        await asyncio.wait_for(
            rogue.send_snapshot(snapshot_msg(), source(data, 100), sha, 1000), 10
        )
    assert rb.snapshots == []


# --- lifecycle -------------------------------------------------------------------------------


async def test_close_is_prompt_and_idempotent_with_peers_down() -> None:
    a = GrpcTransport("a", LOCAL)
    await a.start(Recorder())
    for n in range(5):
        a.set_peer(f"p{n}", f"127.0.0.1:{free_port()}")
        a.send(TimeoutNow("a", f"p{n}", 1))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    await asyncio.wait_for(a.close(), 5)
    await a.close()
    assert time.monotonic() - t0 < 2.0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("raft-send:")]
    a.send(TimeoutNow("a", "p0", 2))  # after close: dropped, no error


async def test_close_fails_an_inflight_snapshot(make: Factory) -> None:
    a = GrpcTransport("a", LOCAL)
    await a.start(Recorder())
    b, _ = await make("b")
    a.set_peer("b", b.address)
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        gate.set()
        await asyncio.sleep(30)
        yield b"y"

    task = asyncio.create_task(a.send_snapshot(snapshot_msg(), slow(), "0" * 64, 1001))
    await asyncio.wait_for(gate.wait(), 5)
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(a.close())
    await asyncio.wait_for(closing, 5)
    task.cancel()  # the source sleeps; closing the channel cannot interrupt it
    with pytest.raises((asyncio.CancelledError, SnapshotTransferError)):
        await task


async def test_set_peer_before_start_and_address_change(make: Factory) -> None:
    b1, r1 = await make("b")
    b2, r2 = await make("b")
    a = GrpcTransport("a", LOCAL)
    a.set_peer("b", b1.address)
    a.send(TimeoutNow("a", "b", 7))  # queued before start, sent once started
    rec = Recorder()
    try:
        await a.start(rec)
        await eventually(lambda: r1.messages == [TimeoutNow("a", "b", 7)])
        a.set_peer("b", b2.address)
        await _deliver_eventually(a, r2, "b")
        a.remove_peer("b")
        a.send(TimeoutNow("a", "b", 8))
        assert a.stats.dropped >= 1
    finally:
        await a.close()


async def test_listen_on_a_busy_port_fails_cleanly(make: Factory) -> None:
    a, _ = await make("a")
    clash = GrpcTransport("x", a.address)
    with pytest.raises(OSError):
        await clash.start(Recorder())
    await clash.close()


def test_constructor_validates_limits() -> None:
    with pytest.raises(ValueError):
        GrpcTransport("a", LOCAL, queue_limit=0)
    with pytest.raises(ValueError):
        GrpcTransport("a", LOCAL, max_message_bytes=1024)
    with pytest.raises(ValueError):
        GrpcTransport("a", LOCAL, max_message_bytes=1 << 20, snapshot_chunk_bytes=1 << 20)
