"""A small deterministic harness for tests of the sans-I/O gossip cores.

Members live in one process on a virtual clock; packets are delivered after a fixed latency
(or dropped by a filter); push-pull and stream pings complete in one latency. No sockets,
no sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gossip.config import GossipConfig, default_lan_config
from gossip.memberlist import (
    Member,
    MemberEvent,
    Memberlist,
    OpenPushPull,
    Output,
    SendPacket,
    StreamPing,
    UserMessage,
)
from gossip.messages import Address, MemberState, Message


@dataclass
class SimMember:
    core: Memberlist
    up: bool = True
    events: list[MemberEvent] = field(default_factory=list)
    user: list[bytes] = field(default_factory=list)


class GossipHarness:
    def __init__(
        self,
        n: int,
        seed: int = 1,
        latency: float = 0.002,
        config: Callable[[str, Address], GossipConfig] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.make_config = config or default_lan_config
        self.members: dict[str, SimMember] = {}
        self.by_addr: dict[Address, str] = {}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.drop: Callable[[str, str, tuple[Message, ...]], bool] = lambda s, d, m: False
        self.packets = 0
        for i in range(n):
            self.add(f"m{i}")

    def add(self, name: str, incarnation: int = 0) -> SimMember:
        addr = (f"10.0.0.{len(self.by_addr) + 1}", 7946)
        for a, owner in self.by_addr.items():
            if owner == name:
                addr = a
        cfg = self.make_config(name, addr)
        core = Memberlist(cfg, random.Random(self.rng.random()), self.now, incarnation=incarnation)
        member = SimMember(core)
        self.members[name] = member
        self.by_addr[addr] = name
        self._wake(name)
        return member

    # -- scheduling --------------------------------------------------------------------

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), fn))

    def _wake(self, name: str) -> None:
        member = self.members[name]
        if not member.up:
            return
        core = member.core
        self._at(core.next_deadline(), lambda: self._tick(name, core))

    def _tick(self, name: str, core: Memberlist) -> None:
        member = self.members[name]
        if not member.up or member.core is not core:
            return
        if self.now >= core.next_deadline() - 1e-9:
            core.tick(self.now)
            self._flush(name)
        self._wake(name)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        while self._queue and self._queue[0][0] <= t:
            when, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn()
            if stop is not None and stop():
                return True
        self.now = t
        return False

    # -- I/O -----------------------------------------------------------------------------

    def _flush(self, name: str) -> None:
        member = self.members[name]
        for out in member.core.take_outputs():
            self._perform(name, out)

    def _perform(self, name: str, out: Output) -> None:
        member = self.members[name]
        if isinstance(out, SendPacket):
            dst = self.by_addr.get(out.addr)
            self.packets += 1
            if dst is None or self.drop(name, dst, out.messages):
                return
            to: str = dst
            self._at(self.now + self.latency, lambda: self._deliver(to, out.messages))
        elif isinstance(out, OpenPushPull):
            dst = self.by_addr.get(out.addr)
            if dst is None:
                return
            peer_name: str = dst
            self._at(self.now + self.latency, lambda: self._pushpull(name, peer_name, out))
        elif isinstance(out, StreamPing):
            dst = self.by_addr.get(out.addr)
            if dst is None:
                return

            def answer() -> None:
                peer = self.members.get(dst)
                ok = (
                    peer is not None
                    and peer.up
                    and not self.drop(name, dst, ())
                    and not self.drop(dst, name, ())
                    and peer.core.handle_stream_ping(out.ping) is not None
                )
                if member.up:
                    member.core.stream_ping_result(out.ping.seq, ok, self.now)
                    self._flush(name)
                    self._wake(name)

            self._at(self.now + 2 * self.latency, answer)
        elif isinstance(out, MemberEvent):
            member.events.append(out)
        elif isinstance(out, UserMessage):
            member.user.append(out.payload)

    def _deliver(self, dst: str, messages: tuple[Message, ...]) -> None:
        member = self.members[dst]
        if not member.up:
            return
        member.core.handle_packet(messages, self.now)
        self._flush(dst)
        self._wake(dst)

    def _pushpull(self, src: str, dst: str, out: OpenPushPull) -> None:
        peer = self.members[dst]
        if not peer.up or (self.drop(src, dst, ()) and self.drop(dst, src, ())):
            return
        reply = peer.core.local_state(out.state.join)
        peer.core.merge_remote_state(out.state, self.now)
        self._flush(dst)
        self._wake(dst)

        def back() -> None:
            member = self.members[src]
            if member.up:
                member.core.merge_remote_state(reply, self.now)
                self._flush(src)
                self._wake(src)

        self._at(self.now + self.latency, back)

    # -- actions -------------------------------------------------------------------------

    def join_all(self, seed: str = "m0") -> None:
        seed_addr = self.members[seed].core.cfg.advertise
        for name, member in self.members.items():
            if name != seed:
                member.core.join([seed_addr])
                self._flush(name)

    def crash(self, name: str) -> None:
        self.members[name].up = False

    def view(self, observer: str, about: str) -> Member | None:
        return self.members[observer].core.member(about)

    def states(self, about: str) -> dict[str, MemberState | None]:
        out: dict[str, MemberState | None] = {}
        for name, m in self.members.items():
            if m.up and name != about:
                view = m.core.member(about)
                out[name] = view.state if view else None
        return out

    def converged(self) -> bool:
        live = [n for n, m in self.members.items() if m.up]
        return all(
            all(
                (v := self.members[o].core.member(a)) is not None and v.state == MemberState.ALIVE
                for a in live
            )
            for o in live
        )
