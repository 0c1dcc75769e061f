"""The DNS server: UDP and TCP listeners in front of a ``DnsResolver``, run as one of the
agent's ``ServerContext`` services.

It listens on ``dns_addr`` (else ``client_addr``; several space-separated addresses are all
bound) at ``dns_port`` (8600; -1: no DNS server). Under ``-dev``, when the port is Consul's
default and already taken (another dev agent on this machine), it falls back to a free port
and logs it; anywhere else a busy port is an error, as in Consul.

UDP: one datagram, one answer (garbage is dropped). TCP: RFC 1035 length-prefixed messages,
several per connection, answered in order; a connection idle for ``TCP_IDLE`` seconds, or
sending a frame that does not parse, is closed. A bounded number of queries are in flight at
once (``MAX_IN_FLIGHT`` datagrams, ``MAX_TCP_CONNECTIONS`` connections); beyond that datagrams
are dropped and connections closed (clients retry), so a flood cannot grow memory.

Tasks: one short task per UDP query and one per TCP connection, owned by the server and
cancelled by ``stop``; the resolver's state is read-only but for its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from typing import TYPE_CHECKING, Any, cast

import structlog

from server.dns.catalog import DnsCatalog, StoreCatalog
from server.dns.resolver import DnsResolver, DnsSettings

if TYPE_CHECKING:
    from server.endpoints.context import ServerContext

__all__ = ["DnsServer"]

log = structlog.get_logger("dns")

DEFAULT_PORT = 8600
TCP_IDLE = 10.0
MAX_IN_FLIGHT = 1024
MAX_TCP_CONNECTIONS = 256


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.server._spawn_udp(self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for earlier replies: nothing to do


class DnsServer:
    """A ``Service`` (``server.endpoints.context``): ``start`` binds, ``stop`` closes."""

    def __init__(self, ctx: ServerContext, catalog: DnsCatalog | None = None) -> None:
        self.ctx = ctx
        self.settings = DnsSettings.from_config(ctx.config)
        if catalog is None:
            catalog = StoreCatalog(
                ctx, allow_stale=self.settings.allow_stale, max_stale=self.settings.max_stale
            )
        self.resolver = DnsResolver(self.settings, catalog)
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_connections = 0
        #: The port actually bound (-1 when the DNS server is off).
        self.port = -1
        self.hosts: list[str] = []

    # --- Service --------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.ctx.config
        if cfg.dns_port < 0:
            return
        hosts = (cfg.dns_addr or cfg.client_addr or "127.0.0.1").split()
        port = cfg.dns_port
        fallback = bool(cfg.dev) and port == DEFAULT_PORT and "ports.dns" not in cfg.sources
        try:
            await self._bind(hosts, port)
        except OSError as exc:
            if not (fallback and exc.errno == errno.EADDRINUSE):
                raise
            await self._bind_free(hosts)
            log.warning(
                "dns_port_busy", wanted=port, port=self.port, note="dev mode: using a free port"
            )
        self.hosts = hosts
        if cfg.recursors:
            log.warning(
                "dns_recursors_unsupported",
                recursors=list(cfg.recursors),
                note="names outside the domain are answered REFUSED",
            )
        log.info("dns_started", addresses=[f"{h}:{self.port}" for h in hosts], udp=True, tcp=True)

    async def stop(self) -> None:
        for server in self._tcp:
            server.close()
        for transport in self._udp:
            transport.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for server in self._tcp:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()

    async def leadership_changed(self, is_leader: bool) -> None:
        return None

    # --- binding --------------------------------------------------------------------------

    async def _bind(self, hosts: list[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        proto, host = "udp", ""
        try:
            for host in hosts:
                proto = "udp"
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(host, port)
                )
                self._udp.append(transport)
                if port == 0:
                    port = transport.get_extra_info("sockname")[1]
                proto = "tcp"
                server = await asyncio.start_server(self._serve_tcp, host, port, reuse_address=True)
                self._tcp.append(server)
        except OSError as exc:
            await self.stop()
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            reason = exc.strerror or str(exc)
            raise OSError(
                exc.errno, f"Error starting DNS server: listen {proto} {where}: {reason}"
            ) from None
        except BaseException:
            await self.stop()
            raise
        self.port = port

    async def _bind_free(self, hosts: list[str]) -> None:
        last: OSError | None = None
        for _ in range(20):
            try:
                await self._bind(hosts, 0)
                return
            except OSError as exc:  # the UDP port's TCP twin was taken: try another
                last = exc
        assert last is not None
        raise last

    # --- UDP ------------------------------------------------------------------------------

    def _spawn_udp(self, transport: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self.resolver.stats["dropped"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._answer_udp(transport, data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_udp(
        self, transport: asyncio.DatagramTransport, data: bytes, addr: Any
    ) -> None:
        try:
            reply = await self.resolver.handle_wire(data, "udp")
            if reply is not None and not transport.is_closing():
                transport.sendto(reply, addr)
        except Exception as exc:  # never let one query hurt the server
            log.debug("dns_udp_error", error=repr(exc))

    # --- TCP ------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_connections >= MAX_TCP_CONNECTIONS:
            writer.close()  # over the limit: refuse at once, the client retries
            return
        self._tcp_connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    head = await reader.readexactly(2)
                    data = await reader.readexactly(int.from_bytes(head, "big"))
                reply = await self.resolver.handle_wire(data, "tcp")
                if reply is None:
                    break  # garbage: close the connection
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as exc:
            log.debug("dns_tcp_error", error=repr(exc))
        finally:
            self._tcp_connections -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
