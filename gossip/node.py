"""The asyncio driver of a sans-I/O gossip core (``Memberlist`` or ``Serf``).

``GossipNode(core, transport, keyring, on_event=...)`` owns the clock, the transport and the
keyring, and runs the core:

- One task, ``gossip-loop:<name>``, owns the core: every call into it (ticks, packets,
  push-pull merges, stream-ping results, joins, leaves, queries, reads of its state) happens
  in that task. Everything else queues a callable into the loop's inbox and, if it needs an
  answer, awaits a future the loop resolves. The loop sleeps until ``core.next_deadline()``
  or until something is queued, runs the due timers, and after every input drains the core's
  outputs: ``SendPacket`` is encoded, sealed and sent at once (never blocks); ``OpenPushPull``
  and ``StreamPing`` start a short-lived exchange task; every other output (member events,
  Serf events, snapshot records, ...) goes to ``on_event``, synchronously, in order.
- Exchange tasks (``gossip-pushpull:<addr>``, ``gossip-stream-ping:<addr>``): each owns one
  outbound stream. It connects, writes the request, reads the reply (every step bounded by the
  timeout) and hands the result back to the loop through the inbox. At most
  ``max_outbound_streams`` run at once; more fail at once (and are counted).
- Inbound streams run in the transport's tasks: they read one frame, ask the loop for the
  reply (``local_state`` + ``merge_remote_state`` for a push-pull, ``handle_stream_ping`` for
  a ping) and write it back.

Encryption
    With a keyring, every packet and every stream frame is ``keyring.encrypt(wire.encode(...))``
    and nothing else is accepted. There is no marker byte (the packet budget reserves exactly
    the encryption overhead, ``wire.PACKET_OVERHEAD``): sealed data starts with the keyring's
    version byte (0x01) while a plaintext Packet starts with 0x0a (protobuf field 1,
    length-delimited) or is empty, so the first byte says which kind of drop to count, and
    AES-GCM authentication alone decides what is accepted. Without a keyring, sealed data is
    dropped (and counted) unread.

Hostile input
    Nothing a peer sends can raise out of the node: undecryptable, plaintext (when a keyring
    is set), undecodable or unexpected packets and frames are dropped and counted in
    ``stats``; an exception from the core or from ``on_event`` is logged and counted, and the
    loop goes on. Inbound packets beyond ``max_queued_packets`` waiting for the loop are
    dropped (counted), so a flood cannot grow memory without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from gossip import wire
from gossip.config import GossipConfig
from gossip.core import GossipCore
from gossip.keyring import VERSION as SEALED_VERSION
from gossip.keyring import DecryptError, Keyring
from gossip.memberlist import Memberlist, OpenPushPull, SendPacket, StreamPing
from gossip.messages import Ack, Address, Message, Ping, PushPull
from gossip.serf import QueryId, Serf, SerfState
from gossip.transport.base import GossipTransport, StreamClosed, StreamConn, StreamError

__all__ = [
    "GossipNode",
    "GossipNodeError",
    "JoinError",
    "MemberInfo",
    "NodeStats",
    "NodeStopped",
]

log = structlog.get_logger("gossip.node")

_SEALED_FIRST = bytes((SEALED_VERSION,))
_BATCH = 256  # inbox items handled before the loop checks its timers and yields


C = TypeVar("C", bound=GossipCore)
T = TypeVar("T")


class GossipNodeError(Exception):
    """A request the node cannot carry out."""


class NodeStopped(GossipNodeError):
    """The node is not running (not started yet, or stopped)."""


class JoinError(GossipNodeError):
    """No push-pull of a join succeeded. ``errors`` maps each address to why."""

    def __init__(self, message: str, errors: Mapping[Address, str] | None = None) -> None:
        super().__init__(message)
        self.errors: dict[Address, str] = dict(errors or {})


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A member as the core sees it. ``status``: Serf's (alive, leaving, left, failed) or
    memberlist's (alive, suspect, dead, left) state, lower case."""

    name: str
    addr: Address
    status: str
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(slots=True)
class NodeStats:
    """Counters of a node. Only ever increase."""

    packets_in: int = 0  # packets received from the transport
    packets_accepted: int = 0  # ... handed to the core
    packets_plaintext_dropped: int = 0  # plaintext while a keyring is set
    packets_decrypt_failed: int = 0  # no installed key authenticates it (unknown key, junk)
    packets_encrypted_dropped: int = 0  # sealed, but we have no keyring
    packets_decode_errors: int = 0  # not a valid gossip packet
    packets_queue_full: int = 0  # dropped: too many packets waiting for the loop, or stopped
    packets_out: int = 0
    packets_oversized: int = 0  # sent, but larger than the configured packet_size
    encode_errors: int = 0  # an output the wire cannot carry (a core bug): not sent
    streams_in: int = 0  # inbound streams served
    streams_in_failed: int = 0  # ... that ended without a reply (any reason below)
    stream_plaintext_dropped: int = 0
    stream_decrypt_failed: int = 0
    stream_encrypted_dropped: int = 0
    stream_decode_errors: int = 0
    stream_unexpected: int = 0  # a valid frame that is not one PushPull or one Ping
    stream_io_errors: int = 0  # inbound stream read/write failures (timeout, reset, ...)
    pushpulls_in: int = 0  # push-pulls served
    pushpulls_ok: int = 0  # push-pulls we opened that completed
    pushpulls_failed: int = 0
    stream_pings_in: int = 0
    stream_pings_ok: int = 0
    stream_pings_failed: int = 0
    streams_out_refused: int = 0  # exchanges not started: max_outbound_streams reached
    core_errors: int = 0  # exceptions raised by the core (bugs): logged
    event_errors: int = 0  # exceptions raised by on_event: logged

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _ExchangeError(Exception):
    """An outbound stream exchange got no usable reply."""


@dataclass(slots=True, eq=False)
class _JoinGroup:
    future: asyncio.Future[int]
    pending: int = 0
    ok: int = 0
    errors: dict[Address, str] = field(default_factory=dict)

    def finish(self, addr: Address, error: str | None) -> None:
        self.pending -= 1
        if error is None:
            self.ok += 1
        else:
            self.errors[addr] = error
        if self.pending <= 0 and not self.future.done():
            if self.ok:
                self.future.set_result(self.ok)
            else:
                detail = "; ".join(f"{h}:{p}: {e}" for (h, p), e in self.errors.items())
                self.future.set_exception(
                    JoinError(f"join failed, no push-pull succeeded: {detail}", self.errors)
                )


_NEW, _RUNNING, _STOPPED = 0, 1, 2


class GossipNode(Generic[C]):
    """Runs ``core`` over ``transport``. See the module docstring.

    ``config``: the memberlist settings (timeouts, packet size); taken from the core when it
    is a ``Memberlist`` or a ``Serf``. ``clock`` must be the clock the core was built with.
    """

    def __init__(
        self,
        core: C,
        transport: GossipTransport,
        keyring: Keyring | None,
        *,
        on_event: Callable[[object], None],
        clock: Callable[[], float] = time.monotonic,
        config: GossipConfig | None = None,
        max_outbound_streams: int = 64,
        max_queued_packets: int = 4096,
    ) -> None:
        self.core = core
        self.transport = transport
        self.keyring = keyring
        self.stats = NodeStats()
        self._on_event = on_event
        self._clock = clock
        if config is None:
            if isinstance(core, Serf):
                config = core.memberlist.cfg
            elif isinstance(core, Memberlist):
                config = core.cfg
            else:
                raise TypeError(f"config= is required for a core of type {type(core).__name__}")
        self.config = config
        self.name = config.name
        self.max_outbound_streams = max_outbound_streams
        self.max_queued_packets = max_queued_packets
        self._state = _NEW
        self._inbox: collections.deque[Callable[[float], None]] = collections.deque()
        self._queued_packets = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._exchanges: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Future[Any]] = set()
        self._joins: set[_JoinGroup] = set()
        self._current_join: _JoinGroup | None = None
        self._leave_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def local_address(self) -> Address:
        return self.transport.local_address

    @property
    def running(self) -> bool:
        return self._state == _RUNNING

    async def start(self) -> None:
        """Start the transport and the loop. Raises ``TransportError`` if it cannot listen."""
        if self._state != _NEW:
            raise GossipNodeError("a GossipNode can be started once")
        self._state = _RUNNING
        try:
            await self.transport.start(self._on_packet, self._on_stream)
        except BaseException:
            self._state = _STOPPED
            raise
        self._task = asyncio.create_task(self._run(), name=f"gossip-loop:{self.name}")

    async def stop(self) -> None:
        """Stop at once (no leave): cancel the loop and exchanges, fail pending requests with
        ``NodeStopped``, close the transport. Idempotent."""
        if self._state == _STOPPED:
            return
        self._state = _STOPPED
        me = asyncio.current_task()
        tasks = [t for t in (self._task, *self._exchanges) if t is not None and t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._calls:
            if not fut.done():
                fut.set_exception(NodeStopped("gossip node stopped"))
        for group in self._joins:
            if not group.future.done():
                group.future.set_exception(NodeStopped("gossip node stopped during the join"))
        if self._leave_waiter is not None and not self._leave_waiter.done():
            self._leave_waiter.cancel()
        self._calls.clear()
        self._joins.clear()
        self._inbox.clear()
        await self.transport.close()

    async def leave(self, timeout: float) -> bool:
        """Leave gracefully: tell the core, keep running until the leave has propagated (our
        broadcasts are drained, and for Serf its leave_propagate_delay passed) or
        ``timeout`` seconds, then stop. True if it propagated in time."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def run(now: float) -> None:
            core: object = self.core
            if isinstance(core, Serf | Memberlist):
                core.leave(now)
            else:
                raise GossipNodeError(f"cannot leave with a {type(core).__name__} core")
            self._leave_waiter = waiter

        try:
            await self._call(run)
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(waiter)
                return True
            except TimeoutError:
                return False
        finally:
            await self.stop()

    # ------------------------------------------------------------------ requests

    async def call(self, fn: Callable[[C, float], T]) -> T:
        """Run ``fn(core, now)`` in the loop and return its result (or raise its exception);
        the outputs it produces are carried out as usual."""
        return await self._call(lambda now: fn(self.core, now))

    async def join(self, addresses: Iterable[Address], *, ignore_old: bool = False) -> int:
        """Push-pull with each address; returns how many succeeded. Raises ``JoinError`` if
        none did (or no address other than our own was given). ``ignore_old`` (Serf): user
        events from before the join are not delivered."""
        addrs = list(addresses)
        loop = asyncio.get_running_loop()
        group = _JoinGroup(loop.create_future())

        def run(now: float) -> None:
            core: object = self.core
            self._current_join = group
            try:
                if isinstance(core, Serf):
                    core.join(addrs, ignore_old, now)
                elif isinstance(core, Memberlist):
                    core.join(addrs)
                else:
                    raise GossipNodeError(f"cannot join with a {type(core).__name__} core")
                self._flush()
            finally:
                self._current_join = None
            if group.pending == 0:
                raise JoinError(f"join failed: no address to join other than our own in {addrs}")

        self._joins.add(group)
        try:
            await self._call(run)
            return await group.future
        finally:
            self._joins.discard(group)

    async def members(self) -> list[MemberInfo]:
        """Every member the core knows, ourselves included."""

        def run(now: float) -> list[MemberInfo]:
            core: object = self.core
            if isinstance(core, Serf):
                return [
                    MemberInfo(m.name, m.addr, m.status.name.lower(), dict(m.tags))
                    for m in core.members()
                ]
            if isinstance(core, Memberlist):
                return [
                    MemberInfo(m.name, m.addr, m.state.name.lower()) for m in core.member_list()
                ]
            raise GossipNodeError(f"cannot list members of a {type(core).__name__} core")

        return await self._call(run)

    async def force_leave(self, name: str, prune: bool = False) -> bool:
        """Serf's force-leave of a failed member (see ``Serf.force_leave``); False if this
        node does not know ``name``."""
        return await self._call(lambda now: self._serf().force_leave(name, prune, now))

    async def user_event(self, name: str, payload: bytes, coalesce: bool = False) -> int:
        """Serf: broadcast a user event (delivered here too); returns its Lamport time."""
        serf = self._serf()
        return await self._call(lambda now: serf.user_event(name, payload, coalesce, now))

    async def query(
        self,
        name: str,
        payload: bytes,
        *,
        filter_nodes: Iterable[str] | None = None,
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        timeout: float | None = None,
    ) -> QueryId:
        """Serf: broadcast a query; acks, responses and ``QueryDone`` arrive as events."""
        serf = self._serf()
        nodes = None if filter_nodes is None else list(filter_nodes)
        return await self._call(
            lambda now: serf.query(
                name,
                payload,
                filter_nodes=nodes,
                filter_tags=filter_tags,
                request_ack=request_ack,
                timeout=timeout,
                now=now,
            )
        )

    async def respond(self, query_id: QueryId, payload: bytes) -> None:
        """Serf: answer a ``Query`` event."""
        serf = self._serf()
        await self._call(lambda now: serf.respond(query_id, payload, now))

    async def set_tags(self, tags: Mapping[str, str]) -> None:
        """Serf: replace our tags and announce them."""
        serf = self._serf()
        new = dict(tags)
        await self._call(lambda now: serf.set_tags(new, now))

    def counters(self) -> dict[str, int]:
        """The node's counters and the transport's (prefixed ``transport_``)."""
        out = self.stats.as_dict()
        for key, value in self.transport.stats.as_dict().items():
            out["transport_" + key] = value
        return out

    def _serf(self) -> Serf:
        core: object = self.core
        if not isinstance(core, Serf):
            raise GossipNodeError(f"needs a Serf core, this node runs a {type(core).__name__}")
        return core

    # ------------------------------------------------------------------ the loop

    def _call(self, fn: Callable[[float], T]) -> Awaitable[T]:
        """Queue ``fn(now)`` for the loop; the future gets its result or exception."""
        if self._state != _RUNNING:
            raise NodeStopped("gossip node is not running")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.add(fut)
        fut.add_done_callback(self._calls.discard)

        def item(now: float) -> None:
            if fut.done():
                return  # the caller gave up
            try:
                result = fn(now)
            except Exception as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        self._enqueue(item)
        return fut

    def _enqueue(self, item: Callable[[float], None]) -> None:
        self._inbox.append(item)
        self._wake.set()

    async def _run(self) -> None:
        self._flush()  # what the core produced when it was built (Serf: our own join)
        due_spins = 0
        while True:
            now = self._clock()
            for _ in range(min(len(self._inbox), _BATCH)):
                item = self._inbox.popleft()
                try:
                    item(now)
                except Exception:
                    self.stats.core_errors += 1
                    log.exception("gossip core raised", node=self.name)
                self._flush()
            now = self._clock()
            failed = False
            if self._deadline(now) <= now:
                try:
                    self.core.tick(now)
                except Exception:
                    failed = True
                    self.stats.core_errors += 1
                    log.exception("gossip core tick raised", node=self.name)
                self._flush()
            self._check_leave()
            if self._inbox:
                await asyncio.sleep(0)
                continue
            delay = self._deadline(now) - self._clock()
            if failed or delay <= 0:
                # A timer that stays due after tick (or a failing core) must not spin hot.
                due_spins += 1
                await asyncio.sleep(0.05 if failed else (0 if due_spins < 3 else 0.001))
                continue
            due_spins = 0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _deadline(self, now: float) -> float:
        try:
            deadline = self.core.next_deadline()
        except Exception:
            self.stats.core_errors += 1
            log.exception("gossip core next_deadline raised", node=self.name)
            return now + 0.1
        return deadline if math.isfinite(deadline) else now + 1.0

    def _check_leave(self) -> None:
        waiter = self._leave_waiter
        if waiter is None or waiter.done():
            return
        core: object = self.core
        if isinstance(core, Serf):
            ml = core.memberlist
            done = core.state == SerfState.LEFT and (
                ml.pending_broadcasts() == 0 or ml.num_members() <= 1
            )
        elif isinstance(core, Memberlist):
            done = core.pending_broadcasts() == 0 or core.num_members() <= 1
        else:
            done = True
        if done:
            waiter.set_result(None)

    def _flush(self) -> None:
        """Carry out the core's outputs; hand the rest to the application."""
        try:
            outputs = self.core.take_outputs()
        except Exception:
            self.stats.core_errors += 1
            log.exception("gossip core take_outputs raised", node=self.name)
            return
        for out in outputs:
            if isinstance(out, SendPacket):
                self._send_packet(out)
            elif isinstance(out, OpenPushPull):
                group = self._current_join if out.state.join else None
                self._start_push_pull(out, group)
            elif isinstance(out, StreamPing):
                self._start_stream_ping(out)
            else:
                try:
                    self._on_event(out)
                except Exception:
                    self.stats.event_errors += 1
                    log.exception("gossip on_event raised", node=self.name, event=repr(out))

    # ------------------------------------------------------------------ sealing

    def _seal(self, messages: Sequence[Message]) -> bytes:
        """Encode (and encrypt): raises ``WireError`` for a message the wire cannot carry."""
        data = wire.encode(messages)
        if self.keyring is not None:
            data = self.keyring.encrypt(data)
        return data

    def _open(self, data: bytes) -> tuple[list[Message] | None, str]:
        """Decrypt (if a keyring) and decode; (None, reason) for anything to drop."""
        if self.keyring is not None:
            try:
                data = self.keyring.decrypt(data)
            except DecryptError:
                return None, "decrypt" if data[:1] == _SEALED_FIRST else "plaintext"
        elif data[:1] == _SEALED_FIRST:
            return None, "encrypted"
        try:
            return wire.decode(data), ""
        except wire.WireError:
            return None, "decode"
        except Exception:  # wire.decode promises WireError only: a bug, but not a crash
            log.exception("wire.decode raised other than WireError", node=self.name)
            return None, "decode"

    # ------------------------------------------------------------------ packets

    def _send_packet(self, out: SendPacket) -> None:
        try:
            data = self._seal(out.messages)
        except (wire.WireError, TypeError, ValueError):
            self.stats.encode_errors += 1
            log.exception("gossip packet not encodable", node=self.name, to=out.addr)
            return
        if len(data) > self.config.packet_size:
            self.stats.packets_oversized += 1
        self.stats.packets_out += 1
        self.transport.send_packet(out.addr, data)

    def _on_packet(self, data: bytes, addr: Address) -> None:
        """Transport callback (event loop, outside the core task): open, then queue."""
        stats = self.stats
        stats.packets_in += 1
        msgs, reason = self._open(data)
        if msgs is None:
            if reason == "plaintext":
                stats.packets_plaintext_dropped += 1
            elif reason == "decrypt":
                stats.packets_decrypt_failed += 1
            elif reason == "encrypted":
                stats.packets_encrypted_dropped += 1
            else:
                stats.packets_decode_errors += 1
            return
        if self._state != _RUNNING or self._queued_packets >= self.max_queued_packets:
            stats.packets_queue_full += 1
            return
        self._queued_packets += 1

        def item(now: float) -> None:
            self._queued_packets -= 1
            stats.packets_accepted += 1
            self.core.handle_packet(msgs, now)

        self._enqueue(item)

    # ------------------------------------------------------------------ outbound streams

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> bool:
        if len(self._exchanges) >= self.max_outbound_streams:
            self.stats.streams_out_refused += 1
            coro.close()
            return False
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._exchanges.add(task)
        task.add_done_callback(self._exchanges.discard)
        return True

    async def _exchange(self, addr: Address, request: Message, timeout: float) -> Message:
        """One request frame, one reply frame. Raises ``StreamError`` or ``_ExchangeError``."""
        try:
            data = self._seal([request])
        except (wire.WireError, TypeError, ValueError) as exc:
            self.stats.encode_errors += 1
            raise _ExchangeError(f"request not encodable: {exc}") from None
        conn = await self.transport.open_stream(addr, timeout)
        try:
            await conn.write_frame(data)
            frame = await conn.read_frame()
        finally:
            conn.close()
        msgs, reason = self._open(frame)
        if msgs is None:
            raise _ExchangeError(f"unreadable reply ({reason})")
        if len(msgs) != 1:
            raise _ExchangeError(f"reply holds {len(msgs)} messages, not 1")
        return msgs[0]

    def _start_push_pull(self, out: OpenPushPull, group: _JoinGroup | None) -> None:
        if group is not None:
            group.pending += 1
        host, port = out.addr
        if not self._spawn(self._push_pull(out, group), f"gossip-pushpull:{host}:{port}"):
            self.stats.pushpulls_failed += 1
            if group is not None:
                group.finish(out.addr, "too many streams open")

    async def _push_pull(self, out: OpenPushPull, group: _JoinGroup | None) -> None:
        try:
            reply = await self._exchange(out.addr, out.state, self.config.tcp_timeout)
            if not isinstance(reply, PushPull):
                raise _ExchangeError(f"reply is a {type(reply).__name__}, not a PushPull")
        except (StreamError, _ExchangeError) as exc:
            self.stats.pushpulls_failed += 1
            if group is not None:
                why = str(exc)
                if isinstance(exc, StreamClosed):
                    why = "closed the stream without a reply (another encryption key?)"
                group.finish(out.addr, why)
            return

        def merge(now: float) -> None:
            try:
                self.core.merge_remote_state(reply, now)
            except Exception:
                if group is not None:
                    group.finish(out.addr, "merging the remote state failed")
                raise
            self.stats.pushpulls_ok += 1
            if group is not None:
                group.finish(out.addr, None)

        if self._state == _RUNNING:
            self._enqueue(merge)

    def _start_stream_ping(self, out: StreamPing) -> None:
        host, port = out.addr
        if not self._spawn(self._stream_ping(out), f"gossip-stream-ping:{host}:{port}"):
            self.stats.stream_pings_failed += 1
            seq = out.ping.seq
            self._enqueue(lambda now: self.core.stream_ping_result(seq, False, now))

    async def _stream_ping(self, out: StreamPing) -> None:
        # Past the probe interval the probe is over: no point waiting longer.
        timeout = min(self.config.tcp_timeout, self.config.probe_interval)
        ok = False
        try:
            reply = await self._exchange(out.addr, out.ping, timeout)
            ok = isinstance(reply, Ack) and reply.seq == out.ping.seq
        except (StreamError, _ExchangeError):
            ok = False
        if ok:
            self.stats.stream_pings_ok += 1
        else:
            self.stats.stream_pings_failed += 1
        seq = out.ping.seq
        if self._state == _RUNNING:
            self._enqueue(lambda now: self.core.stream_ping_result(seq, ok, now))

    # ------------------------------------------------------------------ inbound streams

    async def _on_stream(self, conn: StreamConn) -> None:
        """Transport callback: serve one push-pull or one stream ping."""
        self.stats.streams_in += 1
        if not await self._serve(conn):
            self.stats.streams_in_failed += 1

    async def _serve(self, conn: StreamConn) -> bool:
        stats = self.stats
        try:
            frame = await conn.read_frame()
        except StreamError:
            stats.stream_io_errors += 1
            return False
        msgs, reason = self._open(frame)
        if msgs is None:
            if reason == "plaintext":
                stats.stream_plaintext_dropped += 1
            elif reason == "decrypt":
                stats.stream_decrypt_failed += 1
            elif reason == "encrypted":
                stats.stream_encrypted_dropped += 1
            else:
                stats.stream_decode_errors += 1
            return False
        if len(msgs) != 1 or not isinstance(msgs[0], PushPull | Ping):
            stats.stream_unexpected += 1
            return False
        request = msgs[0]
        reply: Message | None
        try:
            if isinstance(request, PushPull):
                stats.pushpulls_in += 1
                reply = await self._call(lambda now: self._serve_push_pull(request, now))
            else:
                stats.stream_pings_in += 1
                ping = request
                reply = await self._call(lambda now: self.core.handle_stream_ping(ping))
        except NodeStopped:
            return False
        except Exception:
            stats.core_errors += 1
            log.exception("gossip core raised serving a stream", node=self.name)
            return False
        if reply is None:
            return False  # a ping meant for another member: no ack
        try:
            data = self._seal([reply])
        except (wire.WireError, TypeError, ValueError):
            stats.encode_errors += 1
            log.exception("gossip stream reply not encodable", node=self.name)
            return False
        try:
            await conn.write_frame(data)
        except StreamError:
            stats.stream_io_errors += 1
            return False
        return True

    def _serve_push_pull(self, remote: PushPull, now: float) -> PushPull:
        """Our state first (as the peer had not yet been merged), then merge theirs."""
        reply = self.core.local_state(remote.join)
        self.core.merge_remote_state(remote, now)
        return reply
