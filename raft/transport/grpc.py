"""Raft transport over gRPC (grpc.aio), implementing ``raft.transport.base.Transport``.

Outbound, each peer gets one long-lived client-streaming ``Raft.Stream`` call and one sender
task. ``send`` only appends to the peer's bounded queue; the sender task takes everything
queued at once and writes it as one ``MessageBatch`` (several when the bytes exceed the batch
limit), so a busy leader pays the per-write cost once per batch rather than once per message.
When a stream fails, the sender drops what was queued, backs off (50 ms doubling to 1 s;
sends are dropped at once meanwhile) and opens a new stream.

Inbound, the servicer decodes each batch and calls ``handler.on_message`` for every message in
order. Only the newest stream from a given sender delivers: if an old stream is still draining
when its replacement arrives, the old one is ended, so per-peer order holds across reconnects.

Snapshots use one ``Raft.InstallSnapshot`` call per transfer on a channel of their own (bulk
data never sits in front of heartbeats on one connection). The first ``SnapshotChunk`` carries
the ``InstallSnapshot`` header, the sha256 and the total size; every chunk may carry data. The
receiver hands ``handler.on_snapshot`` an async iterator of chunk bytes that raises if the
sender sends more or fewer bytes than announced, and answers once the handler returned; a
handler exception becomes an ABORTED status, which the sender raises as
``SnapshotTransferError``.

Tasks started here (see ``GrpcTransport``): one sender task per peer, nothing else. Server-side
RPC handlers run in grpc's own tasks; ``send_snapshot`` runs in its caller's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]

from proto import raft_pb2 as pb
from proto import raft_pb2_grpc
from raft.core.types import InstallSnapshot, Message, NodeId
from raft.transport.base import InboundHandler
from raft.transport.codec import (
    MESSAGE_BATCH_TAG,
    from_proto,
    install_snapshot_from_proto,
    install_snapshot_into,
    to_proto,
)

__all__ = ["GrpcTransport", "SnapshotTransferError", "TlsConfig", "TransportStats"]

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

_SERVICE = pb.DESCRIPTOR.services_by_name["Raft"]
_STREAM_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Stream'].name}"
_SNAPSHOT_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['InstallSnapshot'].name}"

# Call metadata: who opened a stream and for whom. The receiver refuses streams meant for
# another node (an address reused by a different server) and orders streams per sender.
_MD_SRC = "proconsul-raft-src"
_MD_DST = "proconsul-raft-dst"

_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 1.0
# Soft cap on one MessageBatch: bounds the time the sender spends encoding between awaits
# (the event loop stays responsive) while keeping batches large enough to amortise a write.
_BATCH_SOFT_BYTES = 256 * KiB
_LOG_EVERY = 30.0  # seconds between repeated warnings of one kind


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Mutual TLS: both sides present a certificate signed by the CA in ``ca_file``."""

    ca_file: str
    cert_file: str
    key_file: str
    # Name to verify in the server's certificate instead of the host in the peer's address.
    server_name_override: str | None = None


@dataclass(slots=True)
class TransportStats:
    sent: int = 0  # messages written to a peer stream
    dropped: int = 0  # outbound messages discarded: queue full, peer unknown/down, stream
    #                   failure, too large for max_message_bytes, not encodable
    received: int = 0  # inbound messages handed to handler.on_message
    reconnects: int = 0  # streams opened to a peer after its first one
    batches: int = 0  # MessageBatch writes
    rejected: int = 0  # inbound messages discarded: malformed, or addressed to another node


class SnapshotTransferError(Exception):
    """A snapshot transfer failed: unknown peer, transport error, or the receiver refused."""


class _Peer:
    __slots__ = ("address", "down", "node_id", "pending", "task", "wake")

    def __init__(self, node_id: NodeId, address: str) -> None:
        self.node_id = node_id
        self.address = address
        self.pending: list[Message] = []  # appended by send(), swapped out by the sender task
        self.down = False  # the sender is backing off after a failure: send() drops at once
        self.wake = asyncio.Event()  # set by send() and by the stream's done callback
        self.task: asyncio.Task[None] | None = None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_HEADS = tuple(MESSAGE_BATCH_TAG + _varint(n) for n in range(128))


def _frame_head(n: int) -> bytes:
    """The bytes before a serialized RaftMessage of length ``n`` inside a MessageBatch."""
    return _SMALL_HEADS[n] if n < 128 else MESSAGE_BATCH_TAG + _varint(n)


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _ChunkReader:
    """The async iterator of snapshot bytes handed to ``handler.on_snapshot``.

    Raises ``SnapshotTransferError`` if the sender sends more bytes than announced, a second
    header, or ends the stream early.
    """

    def __init__(self, first: bytes, rest: AsyncIterator[Any], size: int) -> None:
        self._first: bytes | None = first
        self._rest = rest
        self._size = size
        self.received = 0

    def __aiter__(self) -> _ChunkReader:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            data, self._first = self._first, None
            if data:
                return self._count(data)
        while True:
            try:
                chunk = await self._rest.__anext__()
            except StopAsyncIteration:
                if self.received != self._size:
                    raise SnapshotTransferError(
                        f"snapshot stream ended after {self.received} of {self._size} bytes"
                    ) from None
                raise
            if chunk.HasField("header"):
                raise SnapshotTransferError("snapshot stream carries a second header")
            data = chunk.data
            if data:
                return self._count(data)

    def _count(self, data: bytes) -> bytes:
        self.received += len(data)
        if self.received > self._size:
            raise SnapshotTransferError(f"snapshot larger than the announced {self._size} bytes")
        return data


class _Servicer:
    """The inbound side; methods are called by grpc in its own tasks."""

    def __init__(self, transport: GrpcTransport, handler: InboundHandler) -> None:
        self._t = transport
        self._handler = handler
        # sender id -> token of its newest stream; older streams from that sender stop.
        self._streams: dict[str, object] = {}

    async def Stream(self, request_iterator: AsyncIterator[Any], context: Any) -> pb.StreamAck:
        t = self._t
        node_id = t.node_id
        md = dict(context.invocation_metadata() or ())
        src = md.get(_MD_SRC)
        dst = md.get(_MD_DST)
        if dst is not None and dst != node_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"this is {node_id!r}, not {dst!r}"
            )
        token = object()
        streams = self._streams
        if src:
            streams[src] = token
        stats = t._stats
        on_message = self._handler.on_message
        count = 0
        try:
            async for batch in request_iterator:
                if src and streams.get(src) is not token:
                    log.debug("raft stream from %s superseded by a newer one", src)
                    break
                if t._closed:  # nothing reaches the handler once close() began
                    break
                for p in batch.messages:
                    try:
                        msg = from_proto(p)
                    except ValueError as exc:
                        stats.rejected += 1
                        t._warn(
                            "malformed", "dropping malformed raft message from %s: %s", src, exc
                        )
                        continue
                    if msg.dst != node_id:
                        stats.rejected += 1
                        t._warn("misaddressed", "dropping raft message for %r", msg.dst)
                        continue
                    stats.received += 1
                    count += 1
                    try:
                        on_message(msg)
                    except Exception:
                        log.exception("raft inbound handler failed on %s", type(msg).__name__)
        finally:
            if src and streams.get(src) is token:
                del streams[src]
        return pb.StreamAck(received=count)

    async def InstallSnapshot(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> pb.SnapshotAck:
        node_id = self._t.node_id
        if self._t._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{node_id} is shutting down")
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty snapshot stream")
            raise  # unreachable: abort raises
        if not first.HasField("header"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first chunk has no header")
        try:
            msg = install_snapshot_from_proto(first.header)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad snapshot header: {exc}")
            raise  # unreachable
        if msg.dst != node_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"this is {node_id!r}, not {msg.dst!r}"
            )
        reader = _ChunkReader(first.data, it, first.total_size)
        try:
            await self._handler.on_snapshot(msg, reader, first.sha256, first.total_size)
        except Exception as exc:
            log.warning("snapshot from %s rejected: %s", msg.src, exc)
            await context.abort(grpc.StatusCode.ABORTED, f"snapshot rejected by {node_id}: {exc}")
        return pb.SnapshotAck(received_bytes=reader.received)


class GrpcTransport:
    """``Transport`` over gRPC. Create, ``set_peer`` any time, ``await start(handler)``,
    ``send``/``send_snapshot``, ``await close()``. All methods run on one event loop.

    Tasks: one sender task per peer (named ``raft-send:<node_id>``), started by ``start`` or
    by ``set_peer`` after start, replaced when the peer's address changes, cancelled by
    ``remove_peer`` and ``close``. It alone owns that peer's channel, its ``Stream`` call and
    the reconnect backoff; it takes ``_Peer.pending`` (to which ``send`` only appends).
    """

    def __init__(
        self,
        node_id: NodeId,
        listen_address: str,
        *,
        tls: TlsConfig | None = None,
        max_message_bytes: int = 16 * MiB,
        queue_limit: int = 4096,
        snapshot_chunk_bytes: int = 256 * KiB,
        extra_services: Sequence[Callable[[Any], None]] = (),
    ) -> None:
        """``extra_services``: callables given the ``grpc.aio.Server`` before it starts, to add
        other services on the same port (the agent's server RPC)."""
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        if max_message_bytes < 4 * KiB:
            raise ValueError("max_message_bytes must be at least 4 KiB")
        if not 1 <= snapshot_chunk_bytes <= max_message_bytes // 2:
            # Half: the first chunk also carries the header (with the whole membership).
            raise ValueError("snapshot_chunk_bytes must be between 1 and max_message_bytes / 2")
        self.node_id = node_id
        self._listen_address = listen_address
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self._batch_bytes = min(max_message_bytes, _BATCH_SOFT_BYTES)
        self._queue_limit = queue_limit
        self._chunk_bytes = snapshot_chunk_bytes
        self._stats = TransportStats()
        self._peers: dict[NodeId, _Peer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._snapshot_channels: set[Any] = set()
        self._server: Any = None
        self._channel_credentials: Any = None
        self._port: int | None = None
        self._started = False
        self._closed = False
        self._last_warning: dict[str, float] = {}
        self._extra_services = tuple(extra_services)

    # --- public API ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` the server listens on (the real port when started with port 0)."""
        if self._port is None:
            return self._listen_address
        host = self._listen_address.rsplit(":", 1)[0]
        return f"{host}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def stats(self) -> TransportStats:
        """A copy of the counters."""
        return dataclasses.replace(self._stats)

    def queued(self, node_id: NodeId) -> int:
        """Messages waiting for ``node_id``'s sender task."""
        peer = self._peers.get(node_id)
        return len(peer.pending) if peer is not None else 0

    async def start(self, handler: InboundHandler) -> None:
        if self._started or self._closed:
            raise RuntimeError("transport already started or closed")
        server_credentials = None
        if self._tls is not None:
            ca, cert, key = await asyncio.to_thread(_read_tls_files, self._tls)
            server_credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            )
            self._channel_credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
        server = grpc.aio.server(options=self._server_options())
        raft_pb2_grpc.add_RaftServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self, handler), server
        )
        for add_service in self._extra_services:
            add_service(server)
        try:
            if server_credentials is not None:
                port = server.add_secure_port(self._listen_address, server_credentials)
            else:
                port = server.add_insecure_port(self._listen_address)
            await server.start()
        except BaseException as exc:
            await server.stop(None)
            if isinstance(exc, RuntimeError):  # how grpc reports a failed bind
                raise OSError(f"raft transport cannot listen on {self._listen_address}") from exc
            raise
        self._server = server
        self._port = int(port)
        self._started = True
        for peer in self._peers.values():
            self._start_sender(peer)

    def set_peer(self, node_id: NodeId, address: str) -> None:
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(node_id, address)
        elif peer.address == address and peer.task is not None:
            return
        else:
            peer.address = address
        if self._started and not self._closed:
            self._start_sender(peer)

    def remove_peer(self, node_id: NodeId) -> None:
        """Forget ``node_id``: stop its sender and drop what was queued for it."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            if peer.task is not None:
                peer.task.cancel()
            self._drop_pending(peer)

    def send(self, msg: Message) -> None:
        peer = self._peers.get(msg.dst)
        if peer is None or peer.down or self._closed:
            self._stats.dropped += 1
            return
        pending = peer.pending
        if len(pending) >= self._queue_limit:
            self._stats.dropped += 1
            self._warn("full:" + msg.dst, "raft send queue to %s is full; dropping", msg.dst)
            return
        pending.append(msg)
        peer.wake.set()

    async def send_snapshot(
        self, msg: InstallSnapshot, chunks: AsyncIterator[bytes], sha256: str, size: int
    ) -> None:
        if not self._started or self._closed:
            raise SnapshotTransferError("transport is not running")
        peer = self._peers.get(msg.dst)
        if peer is None:
            raise SnapshotTransferError(f"no address for {msg.dst!r}")
        channel = self._new_channel(peer.address)
        self._snapshot_channels.add(channel)
        try:
            call = channel.stream_unary(
                _SNAPSHOT_METHOD,
                request_serializer=pb.SnapshotChunk.SerializeToString,
                response_deserializer=pb.SnapshotAck.FromString,
            )(metadata=((_MD_SRC, self.node_id), (_MD_DST, msg.dst)))
            try:
                # If the call ends early, its status (awaited below) says why.
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                    await self._write_snapshot(call, msg, chunks, sha256, size)
                await call
            except grpc.RpcError as exc:
                raise SnapshotTransferError(
                    f"snapshot to {msg.dst} failed: {exc.code().name}: {exc.details()}"
                ) from exc
            except asyncio.CancelledError:
                # grpc raises CancelledError when the call is cancelled under us (close()
                # closes the channel); only a cancellation of this task itself propagates.
                if _task_cancelling():
                    raise
                raise SnapshotTransferError(
                    "snapshot transfer cancelled (transport closed)"
                ) from None
            finally:
                if not call.done():
                    call.cancel()
        finally:
            self._snapshot_channels.discard(channel)
            await channel.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in list(self._snapshot_channels):
            await channel.close()
        for peer in self._peers.values():
            self._drop_pending(peer)
        if self._server is not None:
            await self._server.stop(0.5)

    # --- outbound ------------------------------------------------------------------------

    def _start_sender(self, peer: _Peer) -> None:
        if peer.task is not None:
            peer.task.cancel()  # it closes its own channel; a new one is opened below
        peer.down = False
        task = asyncio.get_running_loop().create_task(
            self._run_sender(peer, peer.address), name=f"raft-send:{peer.node_id}"
        )
        peer.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_sender(self, peer: _Peer, address: str) -> None:
        """The peer's sender task: stream, and on failure drop, back off and reconnect."""
        loop = asyncio.get_running_loop()
        channel = self._new_channel(address)
        stream = channel.stream_unary(
            _STREAM_METHOD,
            request_serializer=None,  # batches are framed by hand (see _write_items)
            response_deserializer=pb.StreamAck.FromString,
        )
        metadata = ((_MD_SRC, self.node_id), (_MD_DST, peer.node_id))
        backoff = _BACKOFF_MIN
        first = True
        try:
            while True:
                if not first:
                    self._stats.reconnects += 1
                first = False
                peer.down = False
                opened = loop.time()
                try:
                    await self._pump(peer, stream(metadata=metadata), address)
                except Exception:  # a bug; keep the peer alive rather than silently dead
                    log.exception("raft sender for %s failed", peer.node_id)
                peer.down = True
                self._drop_pending(peer)
                if loop.time() - opened >= _BACKOFF_MAX:
                    backoff = _BACKOFF_MIN  # that stream was healthy for a while
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            await channel.close()

    async def _pump(self, peer: _Peer, call: Any, address: str) -> None:
        """Write everything queued for ``peer`` into ``call`` until the call ends or fails."""
        wake = peer.wake
        call.add_done_callback(lambda _call: wake.set())
        try:
            while True:
                if not peer.pending:
                    if call.done():
                        break
                    wake.clear()
                    await wake.wait()
                    continue
                items, peer.pending = peer.pending, []
                if not await self._write_items(call, items):
                    break
        finally:
            if not call.done():
                call.cancel()
        if not call.cancelled():
            code = await call.code()
            details = await call.details()
            self._warn(
                "stream:" + peer.node_id,
                "raft stream to %s at %s ended: %s %s",
                peer.node_id,
                address,
                code.name,
                details,
            )

    async def _write_items(self, call: Any, items: list[Message]) -> bool:
        """Encode ``items`` into as few MessageBatch writes as the size limits allow.

        A MessageBatch is framed by hand (tag, varint length, serialized RaftMessage, for each
        message; exactly what MessageBatch.SerializeToString produces) so that every message's
        size is known without serializing twice: one above ``max_message_bytes`` is dropped
        on its own instead of failing the whole stream. Returns False if a write failed.
        """
        stats = self._stats
        max_bytes = self._max_message_bytes
        soft = self._batch_bytes
        pieces: list[bytes] = []
        size = 0
        count = 0
        for i, msg in enumerate(items):
            try:
                body = to_proto(msg).SerializeToString()
            except (ValueError, TypeError) as exc:
                stats.dropped += 1
                self._warn("encode", "dropping unencodable raft message %r: %s", msg, exc)
                continue
            head = _frame_head(len(body))
            framed = len(head) + len(body)
            if framed > max_bytes:
                stats.dropped += 1
                self._warn(
                    "too-large",
                    "dropping %s to %s: %d bytes exceeds max_message_bytes %d",
                    type(msg).__name__,
                    msg.dst,
                    framed,
                    max_bytes,
                )
                continue
            if size + framed > soft and pieces:
                if not await self._write(call, pieces, count):
                    stats.dropped += len(items) - i
                    return False
                pieces = []
                size = 0
                count = 0
            pieces.append(head)
            pieces.append(body)
            size += framed
            count += 1
        return not pieces or await self._write(call, pieces, count)

    async def _write(self, call: Any, pieces: list[bytes], count: int) -> bool:
        try:
            await call.write(b"".join(pieces))
        except (grpc.RpcError, asyncio.InvalidStateError):
            self._stats.dropped += count
            return False
        self._stats.sent += count
        self._stats.batches += 1
        return True

    def _drop_pending(self, peer: _Peer) -> None:
        if peer.pending:
            self._stats.dropped += len(peer.pending)
            peer.pending = []

    async def _write_snapshot(
        self,
        call: Any,
        msg: InstallSnapshot,
        chunks: AsyncIterator[bytes],
        sha256: str,
        size: int,
    ) -> None:
        first = pb.SnapshotChunk(sha256=sha256, total_size=size)
        install_snapshot_into(first.header, msg)
        header: pb.SnapshotChunk | None = first
        step = self._chunk_bytes
        buf = bytearray()
        total = 0

        async def put(data: bytes) -> None:
            nonlocal header
            if header is not None:
                header.data = data
                chunk, header = header, None
            else:
                chunk = pb.SnapshotChunk(data=data)
            await call.write(chunk)

        async for piece in chunks:
            total += len(piece)
            if total > size:
                raise SnapshotTransferError(f"snapshot source exceeds the announced {size} bytes")
            if not buf and len(piece) == step:
                await put(piece)
                continue
            buf += piece
            while len(buf) >= step:
                await put(bytes(buf[:step]))
                del buf[:step]  # O(1): CPython bytearrays shrink from the front in place
        if total != size:
            raise SnapshotTransferError(f"snapshot source gave {total} of {size} bytes")
        if buf or header is not None:
            await put(bytes(buf))
        await call.done_writing()

    # --- plumbing ------------------------------------------------------------------------

    def _new_channel(self, address: str) -> Any:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", int(_BACKOFF_MIN * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(_BACKOFF_MIN * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(_BACKOFF_MAX * 1000)),
            # Our own connection per channel: snapshot bulk data must not share the message
            # stream's connection, and a replaced address must not reuse a stale one.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.enable_retries", 0),
        ]
        if self._channel_credentials is not None:
            if self._tls is not None and self._tls.server_name_override:
                options.append(("grpc.ssl_target_name_override", self._tls.server_name_override))
            return grpc.aio.secure_channel(address, self._channel_credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    def _server_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ]

    def _warn(self, key: str, fmt: str, *args: object) -> None:
        """Log a warning at most every _LOG_EVERY seconds per ``key`` (debug otherwise)."""
        now = time.monotonic()
        last = self._last_warning.get(key)
        if last is None or now - last >= _LOG_EVERY:
            self._last_warning[key] = now
            log.warning(fmt, *args)
        else:
            log.debug(fmt, *args)


def _read_tls_files(tls: TlsConfig) -> tuple[bytes, bytes, bytes]:
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return read(tls.ca_file), read(tls.cert_file), read(tls.key_file)
