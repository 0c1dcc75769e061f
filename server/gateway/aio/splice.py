"""The ``os.splice`` data path: bytes move socket → pipe → socket inside the kernel, never
through Python buffers.

Each direction is a :class:`_Pump` with its own non-blocking pipe (1 MiB when the kernel allows
it). It reads (splices) from its source only while its pipe is empty, and drains the pipe into its
destination; when the destination would block it stops watching the source and watches the
destination for writability instead — that is the flow control: at most one pipe's worth of
bytes is in flight per direction. All waiting is done by the event loop (``add_reader`` /
``add_writer``), so a link costs no thread.

Half-close: a source EOF (``splice`` returns 0) is turned into ``shutdown(SHUT_WR)`` on the
destination once the pipe is drained; the link ends when both pumps ended. Any other error
(reset, broken pipe) ends the link at once: both sockets and all four pipe ends are closed.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import socket
import termios

from server.gateway.aio.link import Link

__all__ = ["PIPE_SIZE", "SpliceLink", "splice_supported"]

PIPE_SIZE = 1 << 20
READS_PER_EVENT = 4
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def splice_supported() -> bool:
    return hasattr(os, "splice")


#: Empty pipes of ended links, reused by new ones (saves pipe2 + fcntl + 2 close per link).
_FREE_PIPES: list[tuple[int, int, int]] = []
MAX_FREE_PIPES = 256


def _take_pipe() -> tuple[int, int, int]:
    """(read fd, write fd, capacity) of an empty non-blocking pipe."""
    if _FREE_PIPES:
        return _FREE_PIPES.pop()
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    capacity = 65536
    with contextlib.suppress(OSError):
        capacity = fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    return r, w, capacity


def _give_pipe(r: int, w: int, capacity: int, reusable: bool) -> None:
    """Pool the pipe when it is provably empty (FIONREAD says 0 bytes: a pipe that still held
    a byte of one connection must never serve another); close it otherwise."""
    if reusable and len(_FREE_PIPES) < MAX_FREE_PIPES:
        buf = array.array("i", [1])
        with contextlib.suppress(OSError):
            fcntl.ioctl(r, termios.FIONREAD, buf, True)
        if buf[0] == 0:
            _FREE_PIPES.append((r, w, capacity))
            return
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


class _Pump:
    """One direction: ``src`` → pipe → ``dst``."""

    def __init__(self, link: SpliceLink, src: int, dst: int, inbound: bool) -> None:
        self.link = link
        self.src = src
        self.dst = dst
        self.inbound = inbound
        self.rpipe, self.wpipe, self.capacity = _take_pipe()
        self.pending = 0  # bytes in the pipe
        self.eof = False
        self.ended = False
        self.reading = False
        self.writing = False

    def start(self) -> None:
        self.link.loop.add_reader(self.src, self.on_readable)
        self.reading = True

    def on_readable(self) -> None:
        # A full pipe's worth read means the socket may hold more: read again at once (up to
        # READS_PER_EVENT times) instead of going back through the selector.
        for _ in range(READS_PER_EVENT):
            try:
                n = os.splice(self.src, self.wpipe, self.capacity, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.link.fail()
                return
            if n == 0:
                self.eof = True
                self.link.loop.remove_reader(self.src)
                self.reading = False
                self.flush()
                return
            self.pending += n
            self.link.moved(n, self.inbound)
            self.flush()
            if n < self.capacity or not self.reading or self.link.closed:
                return

    def flush(self) -> None:
        loop = self.link.loop
        while self.pending:
            try:
                self.pending -= os.splice(self.rpipe, self.dst, self.pending, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                if self.reading:
                    loop.remove_reader(self.src)
                    self.reading = False
                if not self.writing:
                    loop.add_writer(self.dst, self.flush)
                    self.writing = True
                return
            except OSError:
                self.link.fail()
                return
        if self.writing:
            loop.remove_writer(self.dst)
            self.writing = False
        if self.eof:
            if not self.ended:
                self.ended = True
                self.link.shutdown_write(self.dst)
                self.link.pump_ended()
        elif not self.reading:
            loop.add_reader(self.src, self.on_readable)
            self.reading = True

    def stop(self) -> None:
        loop = self.link.loop
        if self.reading:
            loop.remove_reader(self.src)
            self.reading = False
        if self.writing:
            loop.remove_writer(self.dst)
            self.writing = False

    def close_pipe(self) -> None:
        _give_pipe(self.rpipe, self.wpipe, self.capacity, reusable=self.pending == 0)


class SpliceLink(Link):
    """The ``os.splice`` data path (see the module docstring)."""

    def _setup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.pumps: list[_Pump] = []
        self.closed = False

    async def start(self) -> None:
        c, u = self.client_sock.fileno(), self.upstream_sock.fileno()
        try:
            self.pumps.append(_Pump(self, c, u, inbound=True))
            self.pumps.append(_Pump(self, u, c, inbound=False))
        except OSError:  # out of file descriptors for the pipes
            self.fail()
            return
        for pump in self.pumps:
            pump.start()

    def shutdown_write(self, fd: int) -> None:
        sock = self.client_sock if fd == self.client_sock.fileno() else self.upstream_sock
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def pump_ended(self) -> None:
        if all(p.ended for p in self.pumps):
            self._close()

    def fail(self) -> None:
        self._close()

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pump in self.pumps:
            pump.stop()
        for pump in self.pumps:
            pump.close_pipe()
        self.client_sock.close()
        self.upstream_sock.close()
        self.done()
