"""``WanFedTransport``: the WAN gossip transport of WAN federation through mesh gateways.

A ``GossipTransport`` (``gossip.transport.base``) that the unchanged ``gossip.node`` driver runs
a WAN Serf on. It wraps a ``NetTransport`` (UDP + TCP on serf_wan, 8302) and decides per peer:

Where a peer is
    ``peer_of(addr) -> (node, dc) | None`` (the agent: from the WAN serf member list, names
    ``<node>.<dc>``, and ``("*", dc)`` for a placeholder join address such as Consul's
    ``192.0.2.2:<port>``). When it answers None, the sender attributes learned from tunnelled
    traffic (the header below) are consulted. An unknown peer, or a peer of our own
    datacenter, is reached with plain UDP/TCP through the wrapped ``NetTransport``, which also
    receives all plain inbound traffic.

Another datacenter: gRPC over TLS (the design's transport decision)
    ``routes(dc, node) -> [(gateway "host:port", sni)]`` names how to reach it (the gateway
    locator's picks with ``server_sni(dc, node)``); an empty answer drops the packet or fails
    the stream (counted: ``tunnel_drops_no_route``). The route used is the first one with a
    healthy pooled channel, else the first not failed in the last ``failure_cooldown``
    seconds, else the first. Streams try the routes in that order within their timeout.

    One ``grpc.aio`` secure channel per (target, sni), with ``grpc.ssl_target_name_override =
    sni`` (gRPC sends that SNI, the gateway routes on it, and the server certificate is
    verified against it), pooled; a channel with no packet queued and no stream open for
    ``idle_timeout`` seconds (2 min) is closed by the one reaper task. A failed packet call
    closes its channel (after the streams still on it end) and marks the route failed; the
    next packet opens a new channel and call.

    Packets: one long-lived client-streaming ``WanGossip.Packets`` call per channel, fed by a
    bounded queue (``send_packet`` never blocks: a full queue drops, counted) and drained by
    one ``wan-gossip-packets:<target>`` task per channel. Streams: one bidirectional
    ``WanGossip.Stream`` call per gossip stream. The first message of either call is a header
    (the sender's advertised WAN address "host:port", node name and datacenter); each later
    message is one packet or one frame. Frames over ``max_frame_bytes`` (the wrapped
    transport's, 4 MiB) are refused both ways (``FrameTooLarge``); gRPC's own message limit on
    the channel is that plus ``GRPC_OVERHEAD_BYTES``.

Inbound: ``WanGossipServicer``
    ``WanGossipServicer(transport)``, registered on the server port's gRPC server (``add_to``,
    through GrpcTransport's ``extra_services``) before the WAN serf exists. It serves nothing
    until the transport is started: earlier (and after it closes) calls are refused with
    UNAVAILABLE and counted (``tunnel_refused``). Packets go to ``on_packet(data,
    header sender)``; a stream call becomes a ``StreamConn`` whose ``remote_address`` is the
    header's sender, served by ``on_stream`` in a task the transport owns (cancelled by
    ``close``), at most ``max_inbound_streams`` at once (the wrapped transport's limit).

Invariants
    ``send_packet`` never blocks and never raises (drops are counted); stream operations raise
    only ``StreamError`` subclasses, each bounded by its timeout; nothing an inbound peer sends
    raises out of the servicer except the gRPC status it is answered with. ``stats`` IS the
    wrapped transport's ``TransportStats`` (plain and tunnelled traffic together);
    ``tunnel_stats`` counts the tunnel alone; ``metrics()`` is both in one dict. Every task
    and channel this transport creates is released by ``close()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import structlog

from gossip.messages import Address
from gossip.transport.base import (
    FrameTooLarge,
    PacketHandler,
    StreamClosed,
    StreamConn,
    StreamError,
    StreamHandler,
    StreamTimeout,
    TransportError,
    TransportStats,
)
from gossip.transport.net import NetTransport
from proto import wan_gossip_pb2 as pb
from proto import wan_gossip_pb2_grpc as pb_grpc
from server.tlsutil import channel_options

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "GRPC_OVERHEAD_BYTES",
    "PeerOf",
    "Routes",
    "TunnelStats",
    "WanFedTransport",
    "WanGossipServicer",
    "format_address",
    "parse_address",
]

log = structlog.get_logger("wanfed")

DEFAULT_IDLE_TIMEOUT = 120.0
"""Seconds a pooled channel may stay unused before it is closed (Consul: 2 min)."""

GRPC_OVERHEAD_BYTES = 64 * 1024
"""gRPC's message limit on a tunnel channel above the frame limit (the header fields and
protobuf framing of one message)."""

PeerOf = Callable[[Address], "tuple[str, str] | None"]
"""``peer_of(addr) -> (node short name, datacenter)``, None when unknown."""

Routes = Callable[[str, str], Sequence[tuple[str, str]]]
"""``routes(dc, node) -> [(gateway "host:port", sni)]``; node ``"*"``: any server of dc."""

_LEARNED_MAX = 4096
_Key = tuple[str, str]  # (target "host:port", sni)


def format_address(addr: Address) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 host."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address:
    """The inverse of ``format_address``. Raises ``ValueError``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not host:port: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host needs brackets: {text!r}")
    port = int(port_text)
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad host or port: {text!r}")
    return host, port


@dataclass(slots=True)
class TunnelStats:
    """Counters of the gRPC tunnel alone (they also count in ``TransportStats``). Only ever
    increase."""

    tunnel_packets_out: int = 0  # packets written on a Packets call
    tunnel_packets_in: int = 0  # packets received on a Packets call (delivered or not)
    tunnel_bytes_out: int = 0
    tunnel_bytes_in: int = 0
    tunnel_packets_dropped: int = 0  # outbound, routed but not sent: queue full, too large,
    # call failed with the packet queued, transport not running
    tunnel_streams_out: int = 0  # Stream calls opened (header written)
    tunnel_streams_in: int = 0  # Stream calls accepted and handed to on_stream
    tunnel_drops_no_route: int = 0  # packets dropped / streams failed: routes() gave nothing
    tunnel_route_errors: int = 0  # peer_of() or routes() raised (a bug above us): logged
    tunnel_refused: int = 0  # inbound calls refused: not running, too many streams
    tunnel_bad_header: int = 0  # inbound calls ended: no header, bad sender address
    tunnel_channels_opened: int = 0
    tunnel_channels_reaped: int = 0  # closed after idle_timeout unused
    tunnel_channel_errors: int = 0  # closed because a call on them failed

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _rpc_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


class _Tunnel:
    """One pooled channel to (target, sni): its packet queue, packet call and pump task."""

    __slots__ = (
        "broken",
        "channel",
        "key",
        "last_used",
        "pending",
        "pump",
        "streams",
        "stub",
        "wake",
    )

    def __init__(self, key: _Key, channel: Any, now: float) -> None:
        self.key = key
        self.channel = channel
        self.stub = pb_grpc.WanGossipStub(channel)  # type: ignore[no-untyped-call]
        self.pending: collections.deque[bytes] = collections.deque()
        self.wake = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None
        self.streams = 0  # outbound stream calls open on the channel
        self.last_used = now
        self.broken = False  # out of the pool; the channel closes when streams reaches 0


class _StreamBase:
    """Frame reads and writes over one gRPC stream, errors mapped to ``StreamError``s and
    counted like ``NetStreamConn`` does. Subclasses give ``_read``/``_write``/``_end``."""

    def __init__(
        self, remote: Address, *, timeout: float, max_frame_bytes: int, stats: TransportStats
    ) -> None:
        self._remote = remote
        self._timeout = timeout
        self._max_frame = max_frame_bytes
        self._stats = stats
        self._closed = False
        self.failed: BaseException | None = None  # the gRPC error that ended it, if any

    @property
    def remote_address(self) -> Address:
        return self._remote

    def _error(self, exc: StreamError) -> StreamError:
        return self._stats.count_stream_error(exc)

    async def _read(self) -> Any:
        raise NotImplementedError

    async def _write(self, msg: pb.WanGossipMessage) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    async def read_frame(self) -> bytes:
        peer = format_address(self._remote)
        if self._closed:
            raise self._error(StreamClosed("stream is closed"))
        try:
            async with asyncio.timeout(self._timeout):
                msg = await self._read()
        except TimeoutError:
            self.close()
            raise self._error(
                StreamTimeout(f"no frame from {peer} within {self._timeout}s")
            ) from None
        except Exception as exc:  # AioRpcError, InvalidStateError, ...: the call is over
            self.failed = exc
            self.close()
            raise self._error(StreamError(f"reading from {peer}: {_rpc_error(exc)}")) from None
        if msg is grpc.aio.EOF:
            self.close()
            raise self._error(StreamClosed(f"{peer} closed the stream"))
        data: bytes = msg.data
        if len(data) > self._max_frame:
            self.close()
            raise self._error(
                FrameTooLarge(
                    f"frame of {len(data)} bytes from {peer} exceeds the limit of {self._max_frame}"
                )
            )
        self._stats.frames_in += 1
        return data

    async def write_frame(self, data: bytes) -> None:
        peer = format_address(self._remote)
        if len(data) > self._max_frame:
            raise self._error(
                FrameTooLarge(f"frame of {len(data)} bytes exceeds the limit of {self._max_frame}")
            )
        if self._closed:
            raise self._error(StreamClosed("stream is closed"))
        try:
            async with asyncio.timeout(self._timeout):
                await self._write(pb.WanGossipMessage(data=data))
        except TimeoutError:
            self.close()
            raise self._error(
                StreamTimeout(f"writing to {peer} took over {self._timeout}s")
            ) from None
        except Exception as exc:
            self.failed = exc
            self.close()
            raise self._error(StreamError(f"writing to {peer}: {_rpc_error(exc)}")) from None
        self._stats.frames_out += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # a finished call or a closed loop: nothing left
            self._end()


class _OutboundStream(_StreamBase):
    """Our side of a ``WanGossip.Stream`` call. ``close`` cancels the call (if still open) and
    gives the channel back to the pool."""

    def __init__(
        self,
        call: Any,
        remote: Address,
        tunnel: _Tunnel,
        release: Callable[[_OutboundStream], None],
        **kw: Any,
    ) -> None:
        super().__init__(remote, **kw)
        self._call = call
        self.tunnel = tunnel
        self._release = release

    async def _read(self) -> Any:
        return await self._call.read()

    async def _write(self, msg: pb.WanGossipMessage) -> None:
        await self._call.write(msg)

    def _end(self) -> None:
        try:
            if not self._call.done():
                self._call.cancel()
        finally:
            self._release(self)


class _InboundStream(_StreamBase):
    """The server side of a ``WanGossip.Stream`` call; the call ends when ``on_stream``
    returns (the servicer returns from the handler)."""

    def __init__(self, context: Any, remote: Address, **kw: Any) -> None:
        super().__init__(remote, **kw)
        self._context = context

    async def _read(self) -> Any:
        return await self._context.read()

    async def _write(self, msg: pb.WanGossipMessage) -> None:
        await self._context.write(msg)

    def _end(self) -> None:
        pass


class WanGossipServicer:
    """The inbound side of ``WanGossip`` for ``transport``: ``add_to(grpc_server)`` before the
    gRPC server starts. Refuses every call while the transport is not started (or closed).
    Counts in the transport's ``tunnel_stats``. See the module docstring."""

    def __init__(self, transport: WanFedTransport) -> None:
        self._transport = transport
        self.stats = transport.tunnel_stats

    def add_to(self, server: Any) -> None:
        pb_grpc.add_WanGossipServicer_to_server(_GrpcServicer(self), server)  # type: ignore[no-untyped-call]

    def _running(self) -> WanFedTransport | None:
        t = self._transport
        return t if t._accepting() else None

    async def _header(
        self, t: WanFedTransport, context: Any
    ) -> tuple[Address, pb.WanGossipMessage] | None:
        """Read and check the header; None (counted) when there is none or it is bad."""
        try:
            async with asyncio.timeout(t.tcp_timeout):
                msg = await context.read()
        except Exception:  # timeout, cancelled by the peer, ...
            self.stats.tunnel_bad_header += 1
            return None
        if msg is grpc.aio.EOF:
            self.stats.tunnel_bad_header += 1
            return None
        try:
            sender = parse_address(msg.sender)
        except ValueError:
            self.stats.tunnel_bad_header += 1
            return None
        return sender, msg

    async def packets(self, context: Any) -> pb.PacketsDone:
        t = self._running()
        if t is None:
            self.stats.tunnel_refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "WAN gossip is not running here")
            raise AssertionError("unreachable: abort raises")
        got = await self._header(t, context)
        if got is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad WAN gossip header")
            raise AssertionError("unreachable: abort raises")
        sender, header = got
        t._learn(sender, header.node, header.datacenter)
        await t._run_inbound(self._packet_loop(t, context, sender), "wan-gossip-packets-in")
        return pb.PacketsDone()

    @staticmethod
    async def _packet_loop(t: WanFedTransport, context: Any, sender: Address) -> None:
        while True:
            try:
                msg = await context.read()
            except Exception:  # the caller went away: nothing to answer
                return
            if msg is grpc.aio.EOF:
                return
            t._tunnel_packet_in(msg.data, sender)

    async def stream(self, context: Any) -> None:
        t = self._running()
        if t is None or t._inbound_streams >= t.max_inbound_streams:
            self.stats.tunnel_refused += 1
            if t is not None:
                t.stats.streams_rejected += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "WAN gossip cannot take a stream")
            raise AssertionError("unreachable: abort raises")
        got = await self._header(t, context)
        if got is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad WAN gossip header")
            raise AssertionError("unreachable: abort raises")
        sender, header = got
        t._learn(sender, header.node, header.datacenter)
        await t._serve_inbound_stream(context, sender)


class _GrpcServicer(pb_grpc.WanGossipServicer):
    """The generated base class's methods, in the aio reader/writer style."""

    def __init__(self, servicer: WanGossipServicer) -> None:
        self._servicer = servicer

    async def Packets(self, request_iterator: Any, context: Any) -> pb.PacketsDone:
        return await self._servicer.packets(context)

    async def Stream(self, request_iterator: Any, context: Any) -> None:
        await self._servicer.stream(context)


class WanFedTransport:
    """Plain UDP/TCP for our datacenter, gRPC tunnels for the others. See the module
    docstring.

    ``net``: the wrapped transport (bound or not; ``bind``/``start`` bind it). ``local_dc``:
    our datacenter; ``node``: our node name without the datacenter (both sent in headers, so
    that a peer can answer us before its member list knows us). ``advertise``: the WAN address
    peers know us by, sent in headers (None: ``net.local_address``; settable, e.g. once
    ``bind`` has chosen the port). ``channel_credentials``: our mTLS client credentials
    (``server.tlsutil.grpc_channel_credentials``). The inbound side is
    ``WanGossipServicer(transport)``. ``idle_timeout``: seconds before an unused channel is
    closed. ``max_queued_packets``: per channel, beyond it packets are dropped.
    ``failure_cooldown``: seconds a failed route is passed over while others exist.
    """

    def __init__(
        self,
        net: NetTransport,
        *,
        local_dc: str,
        peer_of: PeerOf,
        routes: Routes,
        channel_credentials: grpc.ChannelCredentials,
        node: str = "",
        advertise: Address | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_queued_packets: int = 1024,
        failure_cooldown: float = 5.0,
    ) -> None:
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout={idle_timeout!r} must be > 0")
        if max_queued_packets < 1:
            raise ValueError("max_queued_packets must be >= 1")
        self._net = net
        self.node = node
        self.datacenter = local_dc
        self._peer_of = peer_of
        self._routes = routes
        self._credentials = channel_credentials
        self._advertise = advertise
        self.idle_timeout = idle_timeout
        self.max_queued_packets = max_queued_packets
        self.failure_cooldown = failure_cooldown
        self.stats: TransportStats = net.stats
        self.tunnel_stats = TunnelStats()
        self._pool: dict[_Key, _Tunnel] = {}
        self._broken: set[_Tunnel] = set()  # out of the pool, streams still open on them
        self._failed: dict[_Key, float] = {}  # route -> when a call on it last failed
        self._learned: collections.OrderedDict[Address, tuple[str, str]] = collections.OrderedDict()
        self._outbound: set[_OutboundStream] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # pumps, channel closes
        self._inbound: set[asyncio.Task[None]] = set()  # inbound packet loops and streams
        self._inbound_streams = 0
        self._reaper: asyncio.Task[None] | None = None
        self._on_packet: PacketHandler | None = None
        self._on_stream: StreamHandler | None = None
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def local_address(self) -> Address:
        return self._net.local_address

    @property
    def advertise(self) -> Address:
        """The address sent in our headers."""
        return self._advertise if self._advertise is not None else self._net.local_address

    @advertise.setter
    def advertise(self, addr: Address) -> None:
        self._advertise = addr

    async def bind(self) -> Address:
        """Reserve the wrapped transport's port (not serving yet); returns ``local_address``."""
        return await self._net.bind()

    @property
    def tcp_timeout(self) -> float:
        return self._net.tcp_timeout

    @property
    def max_frame_bytes(self) -> int:
        return self._net.max_frame_bytes

    @property
    def max_inbound_streams(self) -> int:
        return self._net.max_inbound_streams

    def metrics(self) -> dict[str, int]:
        """``stats`` and ``tunnel_stats`` in one dict, plus the gauge ``tunnel_channels``."""
        out = self.stats.as_dict()
        out.update(self.tunnel_stats.as_dict())
        out["tunnel_channels"] = len(self._pool) + len(self._broken)
        return out

    # ------------------------------------------------------------------ lifecycle

    async def start(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        await self._net.start(on_packet, on_stream)
        self._on_packet = on_packet
        self._on_stream = on_stream
        self._started = True
        self._reaper = asyncio.get_running_loop().create_task(
            self._reap_loop(), name="wan-gossip-reaper"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._on_packet = None
        self._on_stream = None
        tunnels = [*self._pool.values(), *self._broken]
        for conn in list(self._outbound):
            conn.close()
        self._pool.clear()
        self._broken.clear()
        tasks = [t for t in (self._reaper, *self._inbound) if t is not None]
        tasks += [t.pump for t in tunnels if t.pump is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        closing = [tunnel.channel.close() for tunnel in tunnels]
        await asyncio.gather(*closing, *self._tasks, return_exceptions=True)
        await self._net.close()

    def _accepting(self) -> bool:
        return self._started and not self._closed

    # ------------------------------------------------------------------ routing

    def _where(self, addr: Address) -> tuple[str, str] | None:
        """(node, dc) of a peer in another datacenter; None: plain UDP/TCP."""
        try:
            peer = self._peer_of(addr)
        except Exception:
            self.tunnel_stats.tunnel_route_errors += 1
            log.exception("peer_of raised", addr=format_address(addr))
            peer = None
        if peer is None:
            peer = self._learned.get(addr)
        if peer is None or peer[1] == self.datacenter:
            return None
        return peer

    def _learn(self, sender: Address, node: str, dc: str) -> None:
        """Remember where a tunnelled sender is, for replies before peer_of knows it."""
        if not node or not dc or dc == self.datacenter:
            return
        self._learned[sender] = (node, dc)
        self._learned.move_to_end(sender)
        while len(self._learned) > _LEARNED_MAX:
            self._learned.popitem(last=False)

    def _ordered_routes(self, dc: str, node: str) -> list[_Key]:
        """The routes to try, best first (see the module docstring); [] when none."""
        try:
            routes = [(str(target), str(sni)) for target, sni in self._routes(dc, node)]
        except Exception:
            self.tunnel_stats.tunnel_route_errors += 1
            log.exception("routes raised", dc=dc, node=node)
            return []
        now = time.monotonic()
        pooled = [k for k in routes if k in self._pool]
        fresh = [
            k
            for k in routes
            if k not in pooled and now - self._failed.get(k, -1e18) >= self.failure_cooldown
        ]
        rest = [k for k in routes if k not in pooled and k not in fresh]
        return pooled + fresh + rest

    def _tunnel(self, key: _Key) -> _Tunnel:
        now = time.monotonic()
        tunnel = self._pool.get(key)
        if tunnel is None:
            target, sni = key
            # The SNI, keepalive and reconnect settings of every server-port channel.
            options: list[tuple[str, Any]] = [
                *channel_options(sni),
                ("grpc.max_send_message_length", self.max_frame_bytes + GRPC_OVERHEAD_BYTES),
                ("grpc.max_receive_message_length", self.max_frame_bytes + GRPC_OVERHEAD_BYTES),
                ("grpc.http2.max_pings_without_data", 0),
                # One connection per (target, sni): never shared with another channel.
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.enable_retries", 0),
            ]
            channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            tunnel = self._pool[key] = _Tunnel(key, channel, now)
            self.tunnel_stats.tunnel_channels_opened += 1
        tunnel.last_used = now
        return tunnel

    def _discard(self, tunnel: _Tunnel, why: str) -> None:
        """A call on ``tunnel`` failed: out of the pool, queued packets dropped, the channel
        closed once no stream uses it. Idempotent."""
        if tunnel.broken:
            return
        tunnel.broken = True
        self._failed[tunnel.key] = time.monotonic()
        if self._pool.get(tunnel.key) is tunnel:
            del self._pool[tunnel.key]
        self.tunnel_stats.tunnel_channel_errors += 1
        dropped = len(tunnel.pending)
        tunnel.pending.clear()
        self.stats.packets_dropped_out += dropped
        self.tunnel_stats.tunnel_packets_dropped += dropped
        log.info("wan_gossip_tunnel_failed", target=tunnel.key[0], sni=tunnel.key[1], error=why)
        self._retire(tunnel)

    def _retire(self, tunnel: _Tunnel) -> None:
        """Stop the pump and close the channel, now or when its last stream closes."""
        tunnel.broken = True
        if tunnel.pump is not None and tunnel.pump is not asyncio.current_task():
            tunnel.pump.cancel()
        if tunnel.streams > 0:
            self._broken.add(tunnel)
            return
        self._broken.discard(tunnel)
        if not self._closed:
            self._spawn(tunnel.channel.close(), "wan-gossip-channel-close")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reap_loop(self) -> None:
        interval = min(1.0, self.idle_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for tunnel in list(self._pool.values()):
                if (
                    tunnel.streams == 0
                    and not tunnel.pending
                    and now - tunnel.last_used >= self.idle_timeout
                ):
                    del self._pool[tunnel.key]
                    self.tunnel_stats.tunnel_channels_reaped += 1
                    self._retire(tunnel)
            for key, when in list(self._failed.items()):
                if now - when >= self.failure_cooldown:
                    del self._failed[key]

    def _header(self) -> pb.WanGossipMessage:
        return pb.WanGossipMessage(
            sender=format_address(self.advertise), node=self.node, datacenter=self.datacenter
        )

    # ------------------------------------------------------------------ packets

    def send_packet(self, addr: Address, data: bytes) -> None:
        peer = self._where(addr)
        if peer is None:
            self._net.send_packet(addr, data)
            return
        node, dc = peer
        if not self._accepting() or len(data) > self.max_frame_bytes:
            self.stats.packets_dropped_out += 1
            self.tunnel_stats.tunnel_packets_dropped += 1
            return
        keys = self._ordered_routes(dc, node)
        if not keys:
            self.stats.packets_dropped_out += 1
            self.tunnel_stats.tunnel_drops_no_route += 1
            return
        tunnel = self._tunnel(keys[0])
        if len(tunnel.pending) >= self.max_queued_packets:
            self.stats.packets_dropped_out += 1
            self.tunnel_stats.tunnel_packets_dropped += 1
            return
        tunnel.pending.append(data)
        tunnel.wake.set()
        if tunnel.pump is None:
            target = tunnel.key[0]
            tunnel.pump = self._spawn(self._pump(tunnel), f"wan-gossip-packets:{target}")

    async def _pump(self, tunnel: _Tunnel) -> None:
        """Owns the tunnel's Packets call: opens it, writes the header, then every queued
        packet, each write bounded by ``tcp_timeout``. Any failure discards the tunnel."""
        call: Any = None
        try:
            call = tunnel.stub.Packets()
            call.add_done_callback(lambda _call: tunnel.wake.set())
            async with asyncio.timeout(self.tcp_timeout):
                await call.write(self._header())
            while True:
                while tunnel.pending:
                    data = tunnel.pending.popleft()
                    try:
                        async with asyncio.timeout(self.tcp_timeout):
                            await call.write(pb.WanGossipMessage(data=data))
                    except BaseException:
                        self.stats.packets_dropped_out += 1
                        self.tunnel_stats.tunnel_packets_dropped += 1
                        raise
                    self.stats.packets_out += 1
                    self.stats.bytes_out += len(data)
                    self.tunnel_stats.tunnel_packets_out += 1
                    self.tunnel_stats.tunnel_bytes_out += len(data)
                if call.done():
                    raise StreamClosed("the Packets call ended")
                tunnel.wake.clear()
                await tunnel.wake.wait()
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self._discard(tunnel, f"write took over {self.tcp_timeout}s")
        except Exception as exc:
            why = str(exc) if isinstance(exc, StreamError) else _rpc_error(exc)
            if call is not None and call.done():
                with contextlib.suppress(Exception):
                    code = await call.code()
                    why = (
                        "the peer ended the Packets call"
                        if code == grpc.StatusCode.OK
                        else f"{code.name}: {await call.details()}"
                    )
            self._discard(tunnel, why)
        finally:
            if call is not None and not call.done():
                call.cancel()

    def _tunnel_packet_in(self, data: bytes, sender: Address) -> None:
        """A packet from a Packets call (servicer side)."""
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        self.tunnel_stats.tunnel_packets_in += 1
        self.tunnel_stats.tunnel_bytes_in += len(data)
        handler = self._on_packet
        if handler is None or len(data) > self.max_frame_bytes:
            self.stats.packets_dropped_in += 1
            return
        try:
            handler(data, sender)
        except Exception:
            self.stats.packets_dropped_in += 1
            self.stats.handler_errors += 1
            log.exception("gossip packet handler raised")

    # ------------------------------------------------------------------ streams

    async def open_stream(self, addr: Address, timeout: float) -> StreamConn:
        peer = self._where(addr)
        if peer is None:
            return await self._net.open_stream(addr, timeout)
        node, dc = peer
        where = format_address(addr)
        if not self._accepting():
            self.stats.stream_errors += 1
            raise StreamError("transport is not running")
        keys = self._ordered_routes(dc, node)
        if not keys:
            self.stats.stream_errors += 1
            self.tunnel_stats.tunnel_drops_no_route += 1
            raise StreamError(f"no route to {node}.{dc} ({where}): no gateway known for {dc}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        errors: list[str] = []
        timed_out = False
        for key in keys:
            remaining = deadline - loop.time()
            if remaining <= 0:
                timed_out = True
                break
            tunnel = self._tunnel(key)
            call = tunnel.stub.Stream()
            try:
                async with asyncio.timeout(remaining):
                    await call.write(self._header())
            except TimeoutError:
                call.cancel()
                timed_out = True
                errors.append(f"via {key[0]} ({key[1]}): no connection within {timeout}s")
                self._failed[key] = time.monotonic()
                continue
            except Exception as exc:
                call.cancel()
                errors.append(f"via {key[0]} ({key[1]}): {_rpc_error(exc)}")
                self._discard(tunnel, _rpc_error(exc))
                continue
            tunnel.streams += 1
            conn = _OutboundStream(
                call,
                addr,
                tunnel,
                self._release,
                timeout=timeout,
                max_frame_bytes=self.max_frame_bytes,
                stats=self.stats,
            )
            self._outbound.add(conn)
            self.stats.streams_out += 1
            self.tunnel_stats.tunnel_streams_out += 1
            return conn
        self.stats.stream_errors += 1
        detail = "; ".join(errors) or f"no connection within {timeout}s"
        if timed_out:
            self.stats.stream_timeouts += 1
            raise StreamTimeout(f"connecting to {node}.{dc} ({where}): {detail}")
        raise StreamError(f"connecting to {node}.{dc} ({where}): {detail}")

    def _release(self, conn: _OutboundStream) -> None:
        """An outbound stream closed: give its channel back (or close a retired one)."""
        if conn not in self._outbound:
            return
        self._outbound.discard(conn)
        tunnel = conn.tunnel
        tunnel.streams -= 1
        tunnel.last_used = time.monotonic()
        if conn.failed is not None and _unavailable(conn.failed):
            self._discard(tunnel, _rpc_error(conn.failed))
        if tunnel.streams == 0 and tunnel in self._broken:
            self._retire(tunnel)

    async def _run_inbound(self, coro: Any, name: str) -> None:
        """Run an inbound call's work in a task we own (``close`` cancels it); return when it
        ends. If gRPC cancels the handler (the peer went away), the task is cancelled too."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._inbound.add(task)
        task.add_done_callback(self._inbound.discard)
        try:
            await asyncio.wait({task})
        finally:
            task.cancel()

    async def _serve_inbound_stream(self, context: Any, sender: Address) -> None:
        handler = self._on_stream
        if handler is None:
            return
        conn = _InboundStream(
            context,
            sender,
            timeout=self.tcp_timeout,
            max_frame_bytes=self.max_frame_bytes,
            stats=self.stats,
        )
        self.stats.streams_in += 1
        self.tunnel_stats.tunnel_streams_in += 1
        self._inbound_streams += 1
        try:
            await self._run_inbound(self._serve(conn, handler), "wan-gossip-stream-in")
        finally:
            self._inbound_streams -= 1

    async def _serve(self, conn: _InboundStream, handler: StreamHandler) -> None:
        try:
            await handler(conn)
        except asyncio.CancelledError:
            pass  # close() or the peer went away: the call ends here
        except StreamError:
            pass  # counted by the connection
        except Exception:
            self.stats.handler_errors += 1
            log.exception("gossip stream handler raised", remote=conn.remote_address)
        finally:
            conn.close()
