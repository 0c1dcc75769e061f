"""A routed connection's data path: the :class:`Link` contract and the asyncio Protocol pair.

The contract (both data paths, :class:`ProtocolLink` here and
:class:`~server.gateway.aio.splice.SpliceLink`):

- the link owns both sockets from construction; :meth:`Link.start` never raises ``OSError``
  (a failure closes both sockets and ends the link);
- flow control: a side is read only while the other side can take the bytes (the Protocol
  pair pauses reading above ``WRITE_HIGH`` buffered bytes and resumes below ``WRITE_LOW``);
- half-close: EOF read from one side becomes ``shutdown(SHUT_WR)`` of the other side, after
  every byte read before it was written; the link ends when both directions ended, or at once on
  the first error (the other side is then aborted);
- ``activity`` grows on every transfer (the idle sweeper watches it); bytes are counted in
  ``stats``/``suffix`` as ``bytes_in`` (client → upstream) and ``bytes_out``;
- ``on_done`` is called exactly once, after both sockets are closed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from server.gateway.stats import Stats, SuffixStats

__all__ = ["Link", "ProtocolLink"]

WRITE_HIGH = 1 << 20
READ_BUFFER = 256 << 10
WRITE_LOW = 1 << 18


class Link:
    """One routed connection after the dial."""

    def __init__(
        self,
        stats: Stats,
        suffix: SuffixStats,
        on_done: Callable[[Link], None],
        client: socket.socket,
        upstream: socket.socket,
    ) -> None:
        self.stats = stats
        self.suffix = suffix
        self.client_sock = client
        self.upstream_sock = upstream
        self.activity = 0
        self.idle_mark = 0.0  # loop time at which the sweeper last saw ``activity`` move
        self.idle_seen = -1
        self._on_done: Callable[[Link], None] | None = on_done
        self._setup()

    def _setup(self) -> None:
        """Subclasses' own state (called at the end of ``__init__``)."""

    def moved(self, n: int, inbound: bool) -> None:
        """Count ``n`` bytes read from the client (``inbound``) or from the upstream."""
        self.activity += 1
        if inbound:
            self.stats.bytes_in += n
            self.suffix.bytes_in += n
        else:
            self.stats.bytes_out += n
            self.suffix.bytes_out += n

    async def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """End the link now (idle timeout, shutdown): both sides aborted."""
        raise NotImplementedError

    def done(self) -> None:
        cb, self._on_done = self._on_done, None
        if cb is not None:
            cb(self)


class _Side(asyncio.BufferedProtocol):
    """One socket of a :class:`ProtocolLink`; what it reads goes to ``peer``'s transport.

    A buffered protocol: the transport reads into this side's own buffer (``recv_into``, no
    new ``bytes`` per read), and ``buffer_updated`` hands a view of it to the peer's
    ``write``, which sends at once; when the socket did not take everything, the side moves
    to a fresh buffer (the transport may still refer to the old one)."""

    def __init__(self, link: ProtocolLink, inbound: bool) -> None:
        self.link = link
        self.inbound = inbound  # reads the client: bytes in
        self.peer: _Side = self
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False
        self.view = memoryview(bytearray(READ_BUFFER))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        transport.pause_reading()  # until both sides exist (ProtocolLink.start)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.link.moved(nbytes, self.inbound)
        peer = self.peer.transport
        if peer is not None:
            peer.write(self.view[:nbytes])
            if peer.get_write_buffer_size():
                # Python 3.12+ keeps a view of unsent bytes instead of copying them: never
                # overwrite what the peer still holds.
                self.view = memoryview(bytearray(READ_BUFFER))

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer.transport is not None and not peer.lost:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()  # asyncio shuts down after the buffered bytes
            if peer.eof:
                self.link.close_sides(abort=False)
        return True  # keep the transport: the other direction may still be flowing

    def pause_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer.transport is not None and not self.peer.eof:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if peer.transport is not None and not peer.lost:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()
        else:
            self.link.done()


class ProtocolLink(Link):
    """The asyncio Protocol pair data path: each side's ``data_received`` writes to the other
    side's transport; ``pause_writing``/``resume_writing`` pause and resume the other side's
    reading."""

    def _setup(self) -> None:
        self.client = _Side(self, inbound=True)
        self.upstream = _Side(self, inbound=False)
        self.client.peer, self.upstream.peer = self.upstream, self.client

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: self.client, sock=self.client_sock)
            await loop.create_connection(lambda: self.upstream, sock=self.upstream_sock)
        except OSError:
            self._fail_start()
            return
        except BaseException:
            self._fail_start()
            raise
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.lost:
                side.transport.resume_reading()

    def _fail_start(self) -> None:
        made = [s for s in (self.client, self.upstream) if s.transport is not None]
        for sock, side in ((self.client_sock, self.client), (self.upstream_sock, self.upstream)):
            if side.transport is None:
                sock.close()
        if made:
            self.close_sides(abort=True)  # connection_lost ends the link
        else:
            self.done()

    def close_sides(self, abort: bool) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.lost:
                if abort:
                    side.transport.abort()
                else:
                    side.transport.close()

    def close(self) -> None:
        self.close_sides(abort=True)
