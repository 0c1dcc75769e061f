"""``NetTransport``: UDP packets and TCP streams on one host:port (Consul's serf ports: 8301
on the LAN, 8302 on the WAN).

Binding
    TCP is bound first, then UDP on the same port. With port 0 the kernel picks the TCP port;
    if that port is taken for UDP, both are released and the pair is tried again (up to
    ``bind_attempts`` times). ``bind()`` reserves the port without serving yet, so that the
    caller can learn ``local_address`` before it builds the gossip core that advertises it;
    ``start()`` binds if needed and begins serving. Hosts are IP literals (a name is resolved
    once, at bind time, to its first address).

Packets
    One UDP datagram each. ``send_packet`` drops (and counts) a packet larger than
    ``max_packet_bytes`` or one that finds the socket's send buffer over
    ``max_send_buffer_bytes``; it never blocks and never raises. Inbound datagrams go to the
    ``on_packet`` callback as they arrive, in the event loop.

Streams
    TCP connections carrying frames: a 4-byte big-endian length, then that many bytes
    (``gossip.wire.encode_frame``). A frame over ``max_frame_bytes`` (4 MiB by default) is
    refused before any of it is read or sent. Connecting, each frame read and each frame
    write are bounded by ``tcp_timeout`` (inbound streams) or by the timeout given to
    ``open_stream`` (outbound). At most ``max_inbound_streams`` inbound connections are
    served at once; more are closed at once and counted.

Tasks
    One ``gossip-stream-in`` task per inbound connection (bounded as above), which owns that
    connection and runs the ``on_stream`` handler; ``close()`` cancels them. UDP needs no
    task: asyncio calls the datagram protocol from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import structlog

from gossip import wire
from gossip.messages import Address
from gossip.transport.base import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameError,
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

__all__ = ["MAX_UDP_PAYLOAD", "NetStreamConn", "NetTransport"]

log = structlog.get_logger("gossip.transport")

MAX_UDP_PAYLOAD = 65_507
"""The largest payload of one IPv4 UDP datagram."""

_HEADER = wire.FRAME_HEADER_BYTES


class NetStreamConn:
    """A TCP stream of frames; every operation bounded by ``timeout``. See ``StreamConn``."""

    __slots__ = ("_closed", "_max_frame", "_reader", "_remote", "_stats", "_timeout", "_writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        remote: Address,
        *,
        timeout: float,
        max_frame_bytes: int,
        stats: TransportStats,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._remote = remote
        self._timeout = timeout
        self._max_frame = max_frame_bytes
        self._stats = stats
        self._closed = False

    @property
    def remote_address(self) -> Address:
        return self._remote

    @property
    def _peer(self) -> str:
        host, port = self._remote
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _error(self, exc: StreamError) -> StreamError:
        return self._stats.count_stream_error(exc)

    async def read_frame(self) -> bytes:
        if self._closed:
            raise self._error(StreamClosed("stream is closed"))
        try:
            async with asyncio.timeout(self._timeout):
                header = await self._reader.readexactly(_HEADER)
                n = int.from_bytes(header, "big")
                if n > self._max_frame:
                    raise FrameTooLarge(
                        f"frame of {n} bytes from {self._peer} exceeds the limit of "
                        f"{self._max_frame}"
                    )
                data = await self._reader.readexactly(n)
        except StreamError as exc:
            self.close()
            raise self._error(exc) from None
        except TimeoutError:
            self.close()
            raise self._error(
                StreamTimeout(f"no frame from {self._peer} within {self._timeout}s")
            ) from None
        except asyncio.IncompleteReadError as exc:
            self.close()
            if not exc.partial and exc.expected == _HEADER:
                raise self._error(StreamClosed(f"{self._peer} closed the stream")) from None
            raise self._error(
                FrameError(f"{self._peer} closed the stream inside a frame")
            ) from None
        except (OSError, RuntimeError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise self._error(StreamError(f"reading from {self._peer}: {exc!r}")) from None
        self._stats.frames_in += 1
        return data

    async def write_frame(self, data: bytes) -> None:
        if len(data) > self._max_frame:
            raise self._error(
                FrameTooLarge(f"frame of {len(data)} bytes exceeds the limit of {self._max_frame}")
            )
        if self._closed:
            raise self._error(StreamClosed("stream is closed"))
        try:
            self._writer.write(wire.encode_frame(data))
            async with asyncio.timeout(self._timeout):
                await self._writer.drain()
        except TimeoutError:
            self.close()
            raise self._error(
                StreamTimeout(f"writing to {self._peer} took over {self._timeout}s")
            ) from None
        except (OSError, RuntimeError, wire.WireError) as exc:
            self.close()
            raise self._error(StreamError(f"writing to {self._peer}: {exc!r}")) from None
        self._stats.frames_out += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # An already closed loop or socket leaves nothing to release.
        with contextlib.suppress(Exception):
            self._writer.close()


class _PacketProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: NetTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._packet_in(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._owner.stats.packet_errors += 1


class NetTransport:
    """UDP + TCP on one host:port. See the module docstring."""

    def __init__(
        self,
        bind: Address,
        *,
        tcp_timeout: float = 10.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_packet_bytes: int = MAX_UDP_PAYLOAD,
        max_send_buffer_bytes: int = 1024 * 1024,
        max_inbound_streams: int = 256,
        bind_attempts: int = 8,
    ) -> None:
        if not tcp_timeout > 0:
            raise ValueError(f"tcp_timeout={tcp_timeout!r} must be > 0")
        if max_frame_bytes < 1 or max_packet_bytes < 1 or max_inbound_streams < 1:
            raise ValueError("frame, packet and stream limits must be >= 1")
        self._bind = bind
        self.tcp_timeout = tcp_timeout
        self.max_frame_bytes = max_frame_bytes
        self.max_packet_bytes = max_packet_bytes
        self.max_send_buffer_bytes = max_send_buffer_bytes
        self.max_inbound_streams = max_inbound_streams
        self.bind_attempts = max(1, bind_attempts)
        self.stats = TransportStats()
        self._address: Address | None = None
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._on_packet: PacketHandler | None = None
        self._on_stream: StreamHandler | None = None
        self._inbound: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def local_address(self) -> Address:
        if self._address is None:
            raise TransportError("transport is not bound yet: call bind() or start() first")
        return self._address

    async def bind(self) -> Address:
        """Reserve the TCP and UDP port (not serving yet); returns ``local_address``."""
        if self._closed:
            raise TransportError("transport is closed")
        if self._address is not None:
            return self._address
        loop = asyncio.get_running_loop()
        host, port = self._bind
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise TransportError(f"cannot resolve bind address {host!r}: {exc}") from None
        if not infos:
            raise TransportError(f"bind address {host!r} resolves to nothing")
        ip = str(infos[0][4][0])
        last: OSError | None = None
        for _ in range(self.bind_attempts if port == 0 else 1):
            try:
                server = await asyncio.start_server(
                    self._accept, ip, port, start_serving=False, reuse_address=True
                )
            except OSError as exc:
                raise TransportError(f"cannot listen on TCP {ip}:{port}: {exc}") from None
            bound_port = int(server.sockets[0].getsockname()[1])
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _PacketProtocol(self), local_addr=(ip, bound_port)
                )
            except OSError as exc:
                last = exc
                server.close()
                await server.wait_closed()
                continue
            self._server = server
            self._udp = udp
            self._address = (ip, bound_port)
            return self._address
        raise TransportError(f"cannot bind UDP {ip}:{port} next to TCP: {last}")

    async def start(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        await self.bind()
        assert self._server is not None
        self._on_packet = on_packet
        self._on_stream = on_stream
        await self._server.start_serving()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._on_packet = None
        if self._udp is not None:
            self._udp.close()
        server = self._server
        if server is not None:
            server.close()
        tasks = list(self._inbound)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # ------------------------------------------------------------------ packets

    def send_packet(self, addr: Address, data: bytes) -> None:
        udp = self._udp
        if udp is None or self._closed or udp.is_closing():
            self.stats.packets_dropped_out += 1
            return
        if len(data) > self.max_packet_bytes:
            self.stats.packets_dropped_out += 1
            return
        buffered = getattr(udp, "get_write_buffer_size", None)
        if buffered is not None and buffered() > self.max_send_buffer_bytes:
            self.stats.packets_dropped_out += 1
            return
        try:
            udp.sendto(data, addr)
        except Exception:  # bad address, socket error: best effort means drop it
            self.stats.packets_dropped_out += 1
            return
        self.stats.packets_out += 1
        self.stats.bytes_out += len(data)

    def _packet_in(self, data: bytes, addr: Any) -> None:
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        handler = self._on_packet
        if handler is None:
            self.stats.packets_dropped_in += 1
            return
        try:
            handler(data, (str(addr[0]), int(addr[1])))
        except Exception:
            self.stats.packets_dropped_in += 1
            self.stats.handler_errors += 1
            log.exception("gossip packet handler raised")

    # ------------------------------------------------------------------ streams

    async def open_stream(self, addr: Address, timeout: float) -> StreamConn:
        if self._closed:
            raise StreamError("transport is closed")
        host, port = addr
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            self.stats.stream_errors += 1
            self.stats.stream_timeouts += 1
            raise StreamTimeout(f"connecting to {host}:{port} took over {timeout}s") from None
        except (OSError, ValueError, UnicodeError) as exc:
            self.stats.stream_errors += 1
            raise StreamError(f"connecting to {host}:{port}: {exc!r}") from None
        self.stats.streams_out += 1
        return NetStreamConn(
            reader,
            writer,
            (host, port),
            timeout=timeout,
            max_frame_bytes=self.max_frame_bytes,
            stats=self.stats,
        )

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's connection callback: hand the connection to a task we own."""
        if (
            self._closed
            or self._on_stream is None
            or len(self._inbound) >= self.max_inbound_streams
        ):
            self.stats.streams_rejected += 1
            writer.transport.abort()
            return
        peer = writer.get_extra_info("peername")
        remote: Address = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        conn = NetStreamConn(
            reader,
            writer,
            remote,
            timeout=self.tcp_timeout,
            max_frame_bytes=self.max_frame_bytes,
            stats=self.stats,
        )
        self.stats.streams_in += 1
        task = asyncio.get_running_loop().create_task(
            self._serve(conn, self._on_stream), name="gossip-stream-in"
        )
        self._inbound.add(task)
        task.add_done_callback(self._inbound.discard)

    async def _serve(self, conn: NetStreamConn, handler: StreamHandler) -> None:
        try:
            await handler(conn)
        except asyncio.CancelledError:
            pass  # close(): the task ends here, the connection below
        except StreamError:
            pass  # already counted by the connection
        except Exception:
            self.stats.handler_errors += 1
            log.exception("gossip stream handler raised", remote=conn.remote_address)
        finally:
            conn.close()
