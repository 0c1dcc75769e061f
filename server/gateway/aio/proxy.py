"""The SNI proxy: accept, read the ClientHello, route, dial, then copy bytes both ways.

Per connection (each step bounded):

1. accept (a batch per readiness event); beyond ``max_connections`` open connections the new
   one is closed at once and counted as the refusal ``max_connections``;
2. read until :class:`~server.gateway.clienthello.ClientHelloParser` returns the hello, at most
   ``hello_timeout`` seconds and ``hello_max_bytes`` bytes (refusals ``hello_timeout``,
   ``too_big``, ``not_tls``, ``no_sni``, ..., ``client_closed``);
3. route the SNI with the current :class:`~server.gateway.routes.Router` (``not_ready`` until
   the first routing table; the router's refusal reasons otherwise);
4. dial ``route.target``, then the other candidates, each within ``connect_timeout``; every
   failed dial counts as an upstream connect error; none left: the client is closed;
5. send the client's bytes read so far, unchanged (the gateway never terminates TLS), then hand
   both sockets to a data path: :class:`ProtocolLink` (an asyncio Protocol pair) or
   :class:`~server.gateway.aio.splice.SpliceLink` (``os.splice`` through pipes).

Both data paths share the :class:`Link` contract: flow control (a side reads only while the
other side's send buffer is below its mark), half-close (EOF from one side becomes
``shutdown(SHUT_WR)`` on the other once everything read before it was written; the link ends
when both directions are done or on the first error), an activity counter the idle sweeper
reads (a link whose counter did not move for ``idle_timeout`` seconds is closed), and exactly one
``on_done`` call, which releases the connection's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from server.gateway.aio.link import Link, ProtocolLink
from server.gateway.aio.splice import SpliceLink
from server.gateway.clienthello import ClientHello, ClientHelloError, ClientHelloParser
from server.gateway.config import DataPath
from server.gateway.routes import Address, Refusal, Route, Router
from server.gateway.stats import Stats, SuffixStats, refusal_suffix
from server.gateway.tables import sni_suffix

__all__ = ["Proxy", "ProxySettings"]

log = structlog.get_logger("gateway")

ACCEPT_BATCH = 64  # connections accepted per readiness event
RECV_CHUNK = 65536


@dataclass(frozen=True)
class ProxySettings:
    data_path: DataPath = DataPath.SPLICE
    hello_timeout: float = 5.0
    hello_max_bytes: int = 16389
    connect_timeout: float = 5.0
    idle_timeout: float = 3600.0  # 0: never
    max_connections: int = 10000
    domain: str = "consul"
    trust_domain: str | None = None


async def _ready(fd: int, write: bool, deadline: float) -> bool:
    """Wait until ``fd`` is readable (writable); False when ``deadline`` (loop time) passed.
    Lighter than ``loop.sock_recv``/``sock_connect`` under ``asyncio.timeout``: one future,
    one timer, no task."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bool] = loop.create_future()

    def fire(value: bool) -> None:
        if not fut.done():
            fut.set_result(value)

    timer = loop.call_at(deadline, fire, False)
    if write:
        loop.add_writer(fd, fire, True)
    else:
        loop.add_reader(fd, fire, True)
    try:
        return await fut
    finally:
        timer.cancel()
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _send_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Send ``data`` on a fresh connection (usually one ``send``), within ``timeout``."""
    view = memoryview(data)
    deadline = asyncio.get_running_loop().time() + timeout
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, InterruptedError):
            if not await _ready(sock.fileno(), True, deadline):
                raise TimeoutError("upstream did not take the ClientHello") from None


def _family(host: str) -> socket.AddressFamily | None:
    """The family of an IP address literal; None for a name (to resolve). ``inet_pton`` first
    (one C call, the usual case), ``ipaddress`` for the rest (scoped IPv6 literals)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


class Proxy:
    """The listeners and every connection; ``router()`` returns the current router (None
    until the first routing table)."""

    def __init__(
        self, stats: Stats, router: Callable[[], Router | None], settings: ProxySettings
    ) -> None:
        self.stats = stats
        self.settings = settings
        self._router = router
        self._listeners: list[socket.socket] = []
        self._links: set[Link] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        stats.data_path = settings.data_path.value

    # -- listening -----------------------------------------------------------------------------

    async def listen(self, addr: Address) -> Address:
        """Bind and listen on ``addr`` (port 0: any); returns the bound address."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(4096)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listeners.append(sock)
        loop.add_reader(sock.fileno(), self._accept_ready, sock)
        bound = sock.getsockname()
        result = Address(bound[0], bound[1])
        self.stats.listeners.append(str(result))
        if self._sweeper is None and self.settings.idle_timeout > 0:
            self._sweeper = loop.create_task(self._sweep())
        return result

    def _accept_ready(self, lsock: socket.socket) -> None:
        stats = self.stats
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                # EMFILE/ENFILE/ENOBUFS: leave the connection in the backlog; retry shortly.
                log.warning("accept failed", error=str(err))
                stats.refusals["accept_error"] = stats.refusals.get("accept_error", 0) + 1
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    loop.remove_reader(lsock.fileno())
                    loop.call_later(0.1, self._resume_accept, lsock)
                return
            stats.connections_total += 1
            if stats.connections_active >= self.settings.max_connections or self._closing:
                stats.refuse("max_connections")
                conn.close()
                continue
            stats.connections_active += 1
            conn.setblocking(False)
            task = loop.create_task(self._serve(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _resume_accept(self, lsock: socket.socket) -> None:
        if not self._closing and lsock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(lsock.fileno(), self._accept_ready, lsock)

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, conn: socket.socket) -> None:
        stats = self.stats
        owned = False  # True once a Link owns the sockets (and the active counters)
        try:
            hello = await self._hello(conn)
            if hello is None:
                return
            info, data = hello
            router = self._router()
            if router is None:
                stats.refuse("not_ready")
                return
            route = router.route(info.server_name)
            if isinstance(route, Refusal):
                stats.refuse(route.reason.value, refusal_suffix(route, router.table))
                log.debug("refused", sni=info.server_name, reason=route.reason.value)
                return
            s = self.settings
            suffix = stats.suffix(sni_suffix(route, s.domain, s.trust_domain))
            stats.route(route.kind.value, suffix)
            try:
                upstream = await self._dial(route, suffix)
                if upstream is None:
                    return
                try:
                    await _send_all(upstream, data, self.settings.connect_timeout)
                except BaseException:
                    upstream.close()
                    raise
                stats.bytes_in += len(data)
                suffix.bytes_in += len(data)
                owned = True  # from here the link releases the sockets and the counters
                await self._start_link(conn, upstream, suffix)
            finally:
                if not owned:
                    suffix.connections_active -= 1
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not owned:
                conn.close()
                stats.connections_active -= 1

    async def _hello(self, conn: socket.socket) -> tuple[ClientHello, bytes] | None:
        loop = asyncio.get_running_loop()
        parser = ClientHelloParser(self.settings.hello_max_bytes)
        buf = bytearray()
        deadline = loop.time() + self.settings.hello_timeout
        try:
            while True:
                try:
                    chunk = conn.recv(RECV_CHUNK)
                except (BlockingIOError, InterruptedError):
                    if not await _ready(conn.fileno(), False, deadline):
                        self.stats.refuse("hello_timeout")
                        return None
                    continue
                if not chunk:
                    self.stats.refuse("client_closed")
                    return None
                buf += chunk
                result = parser.feed(chunk)
                if isinstance(result, ClientHello):
                    return result, bytes(buf)
        except ClientHelloError as err:
            self.stats.refuse(err.reason.value)
        except OSError:
            self.stats.refuse("client_error")
        return None

    async def _dial(self, route: Route, suffix: SuffixStats) -> socket.socket | None:
        order = [route.target, *(c for c in route.candidates if c != route.target)]
        for addr in order:
            try:
                return await self._connect(addr)
            except (OSError, TimeoutError) as err:
                self.stats.connect_error(suffix)
                log.warning("upstream dial failed", sni=route.sni, upstream=str(addr), error=str(err) or type(err).__name__)  # fmt: skip
        return None

    async def _connect(self, addr: Address) -> socket.socket:
        loop = asyncio.get_running_loop()
        family = _family(addr.host)
        sockaddr: Any = (addr.host, addr.port)
        if family is None:
            infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"cannot resolve {addr.host}")
            family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
                deadline = loop.time() + self.settings.connect_timeout
                if not await _ready(sock.fileno(), True, deadline):
                    raise TimeoutError(
                        f"connect timed out after {self.settings.connect_timeout:g} s"
                    )
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err not in (0, errno.EISCONN):
                raise OSError(err, os.strerror(err))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _start_link(
        self, conn: socket.socket, upstream: socket.socket, suffix: SuffixStats
    ) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link: Link
        if self.settings.data_path is DataPath.SPLICE:
            link = SpliceLink(self.stats, suffix, self._link_done, conn, upstream)
        else:
            link = ProtocolLink(self.stats, suffix, self._link_done, conn, upstream)
        link.idle_mark = asyncio.get_running_loop().time()
        self._links.add(link)
        await link.start()

    def _link_done(self, link: Link) -> None:
        self._links.discard(link)
        self.stats.connections_active -= 1
        link.suffix.connections_active -= 1

    # -- idleness and shutdown -----------------------------------------------------------------

    async def _sweep(self) -> None:
        idle = self.settings.idle_timeout
        tick = min(max(idle / 4, 0.05), 30.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for link in list(self._links):
                if link.activity != link.idle_seen:
                    link.idle_seen = link.activity
                    link.idle_mark = now
                elif now - link.idle_mark >= idle:
                    self.stats.idle_timeouts += 1
                    link.close()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closing = True
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._pending):
            task.cancel()
        for link in list(self._links):
            link.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        pending = list(self._pending)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        while self._links and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
