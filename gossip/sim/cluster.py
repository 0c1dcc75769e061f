"""A seeded, single-process cluster of ``Memberlist`` cores on a virtual clock.

Everything random comes from one ``random.Random(seed)``: it draws a private ``Random`` for
each member, picks the slow members and the members the scenario touches, and draws every
latency, loss and processing delay. Events (member timers, packet arrivals, stream
exchanges, scenario steps) run from one heap ordered by (virtual time, insertion order), so a
seed replays exactly.

Network
    Packets carry the message objects themselves (no serialization); their size is counted
    with ``wire.encoded_size`` plus ``wire.PACKET_OVERHEAD`` per packet. Each packet is lost
    with probability ``loss`` and otherwise arrives after a one-way latency drawn from the
    ``NetworkModel`` (LAN: uniform 0.5-5 ms; WAN: uniform 20-150 ms; 1% of packets get an
    extra exponential delay, mean 25 ms / 200 ms). Streams (push-pull, the TCP fallback ping)
    are lossless; they fail only if the peer has crashed (push-pull: no answer; ping: a
    failure at the deadline) or, for a ping, if the answer comes after the deadline.

Slow members (the CPU-exhaustion case Lifeguard was made for)
    A slow member is alive but handles its inbound traffic late: each packet and each stream
    request it receives is processed ``d`` seconds after its arrival, ``d`` drawn from
    ``slow_delay`` (uniform, default 5-15 s), and never before the packet that arrived before
    it (a FIFO backlog, as in a socket buffer drained by a starved reader). With packets
    arriving several times a second, the FIFO keeps the lag close to the top of the range.
    Its timers fire on time and what it sends leaves at once: like a real starved process
    whose timers wake up but whose acks sit unread, it sees its own probes time out and
    accuses healthy members, and it answers pings and refutes suspicions late. It also reads
    the answer of its own stream pings late, and a stream ping to it is answered after a
    fresh draw of ``d``.

    The default range reaches beyond the LAN suspicion timeout (4 * log10(n) s: 6.8 s for 50
    members, 12 s for 1,000): a lag below it lets every suspicion be refuted in time, and
    neither mode then has false positives at all. Above it, without Lifeguard a slow member
    declares the healthy members it accused dead before their refutations reach it; with
    Lifeguard (a lone accuser waits up to 6x longer, and a member missing nacks slows its
    own probing) it does not. Either way, a member that cannot answer for longer than the
    suspicion timeout is, correctly, declared dead by the others: false positives about slow
    members are reported apart from those about healthy ones.

Bootstrap
    Every member starts at t=0 knowing every other member alive at incarnation 0: one full
    state (a ``PushPull`` listing everyone) is merged into each core. The broadcasts that
    merge would queue (news of 1,000 "new" members) are discarded, so measuring starts from a
    converged, quiet cluster.

Scenario (times are virtual seconds)
    * ``t0 = warmup``: one healthy member changes its metadata (``set_meta``). Dissemination:
      when each other live member first sees it (a "update" or "join" ``MemberEvent`` with
      the new meta); the times at which 50/99/99.99% of them know it.
    * ``t1 = t0 + crash_after``: another healthy member crashes: it stops sending, receiving
      and ticking. Detection: when every live member has emitted a "leave" event with state
      DEAD for it, against the bound ``suspicion_max_timeout_mult * suspicion timeout +
      2 * probe_interval``.
    * False positives, over the whole run: every "leave"/DEAD event whose victim had not
      crashed, counted as events, as distinct (observer, victim) pairs and as distinct
      victims, split by whether the victim is healthy or slow.
    * The run ends at ``duration``, or later if the crash is not yet detected by all (until
      ``t1 + 1.5 * bound`` at most).
    * Bandwidth: bytes each member sent per second of its life (packets; streams separately).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gossip import wire
from gossip.broadcast import BroadcastQueue
from gossip.config import (
    GossipConfig,
    default_lan_config,
    default_local_config,
    default_wan_config,
)
from gossip.math import suspicion_timeout
from gossip.memberlist import MemberEvent, Memberlist, OpenPushPull, SendPacket, StreamPing
from gossip.messages import (
    Ack,
    Address,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
)

CONFIGS: dict[str, Callable[[str, Address], GossipConfig]] = {
    "lan": default_lan_config,
    "wan": default_wan_config,
    "local": default_local_config,
}


@dataclass(frozen=True, slots=True)
class NetworkModel:
    """One-way packet latency: uniform in [min_latency, max_latency], plus, with probability
    ``tail_prob``, an exponential extra delay of mean ``tail_mean`` (seconds)."""

    min_latency: float
    max_latency: float
    tail_prob: float
    tail_mean: float

    def latency(self, rng: random.Random) -> float:
        lat = rng.uniform(self.min_latency, self.max_latency)
        if self.tail_prob > 0 and rng.random() < self.tail_prob:
            lat += rng.expovariate(1.0 / self.tail_mean)
        return lat


NETWORKS: dict[str, NetworkModel] = {
    "lan": NetworkModel(0.0005, 0.005, 0.01, 0.025),
    "wan": NetworkModel(0.020, 0.150, 0.01, 0.200),
}


@dataclass(frozen=True, slots=True)
class SimOptions:
    members: int = 100
    seed: int = 1
    loss: float = 0.0  # probability a packet is lost
    slow: float = 0.0  # fraction of members that are slow
    slow_delay: tuple[float, float] = (5.0, 15.0)  # s a slow member handles inbound traffic late
    lifeguard: bool = True
    config: str = "lan"  # lan | wan | local: memberlist's default tables
    network: str | None = None  # lan | wan latency model; default: "wan" for wan, else "lan"
    duration: float | None = None  # s of virtual time; default: 60 (lan, local), 240 (wan)
    warmup: float | None = None  # s before the update; default: 2 probe intervals
    crash_after: float | None = None  # s from the update to the crash; default: 5 intervals

    def __post_init__(self) -> None:
        if self.members < 3:
            raise ValueError("members must be >= 3")
        if self.config not in CONFIGS:
            raise ValueError(f"config must be one of {sorted(CONFIGS)}")
        if self.network is not None and self.network not in NETWORKS:
            raise ValueError(f"network must be one of {sorted(NETWORKS)}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        if not 0.0 <= self.slow < 1.0:
            raise ValueError("slow must be in [0, 1)")
        lo, hi = self.slow_delay
        if not 0.0 <= lo <= hi:
            raise ValueError("slow_delay must be MIN:MAX with 0 <= MIN <= MAX")


@dataclass(slots=True)
class SimResult:
    members: int
    config: str
    seed: int
    loss: float
    slow: float
    lifeguard: bool
    slow_members: int
    # dissemination, seconds after the update (None: that fraction never learnt it)
    p50: float | None
    p99: float | None
    p9999: float | None
    informed: int  # live members other than the updater that learnt the update
    observers: int  # live members other than the updater
    # detection, seconds after the crash (None: not every live member marked it dead)
    detect_all: float | None
    detect_first: float | None
    detect_bound: float
    detected_by: int
    # false positives: "dead" events about members that had not crashed
    fp_events: int
    fp_pairs: int
    fp_victims: int
    fp_events_healthy: int  # ... of which the victim was a healthy (not slow) member
    fp_victims_healthy: int
    fp_events_by_healthy: int  # ... of which a healthy member declared it
    # bandwidth, bytes per second per member
    bandwidth_mean: float
    bandwidth_max: float
    stream_bandwidth_mean: float
    packets: int
    packets_lost: int
    duration: float  # virtual seconds simulated
    events: int
    stuck_ticks: int  # times the core wanted a tick at or before the one it just had
    wall_seconds: float = field(default=0.0, compare=False)
    cpu_seconds: float = field(default=0.0, compare=False)  # this process's CPU time

    def summary(self) -> str:
        return (
            f"gossip.sim: members={self.members} config={self.config} seed={self.seed} "
            f"loss={self.loss:.2f} slow={self.slow:.2f} "
            f"lifeguard={'on' if self.lifeguard else 'off'} "
            f"p50={fmt_seconds(self.p50)} p99={fmt_seconds(self.p99)} "
            f"p99.99={fmt_seconds(self.p9999)} detect_all={fmt_seconds(self.detect_all)} "
            f"(bound {fmt_seconds(self.detect_bound)}) false_positives={self.fp_events} "
            f"bandwidth={self.bandwidth_mean / 1000:.2f}kB/s/member "
            f"streams={self.stream_bandwidth_mean / 1000:.2f}kB/s/member"
        )


def fmt_seconds(x: float | None) -> str:
    if x is None:
        return "never"
    return f"{x:.2f}s" if x < 10 else f"{x:.1f}s"


def percentile_time(times: list[float], total: int, p: float) -> float | None:
    """When at least a fraction ``p`` of ``total`` observers knew: the k-th smallest time,
    k = ceil(p * total) (with a little slack for float error); None if too few ever knew."""
    if total <= 0:
        return None
    k = max(1, math.ceil(p * total - 1e-9))
    if k > len(times):
        return None
    return sorted(times)[k - 1]


def detection_bound(cfg: GossipConfig, n: int) -> float:
    """The longest a crash may take to be detected by all: the maximal (Lifeguard) suspicion
    timeout, plus two probe intervals for the first failed probe."""
    return (
        cfg.suspicion_max_timeout_mult
        * suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        + 2 * cfg.probe_interval
    )


# event kinds
_TICK = 0
_PACKET = 1  # a packet arrives at a member
_PROCESS = 2  # a slow member gets round to a packet
_PP_REQUEST = 3  # a push-pull stream reaches its peer
_PP_SERVE = 4  # a slow peer gets round to it
_PP_REPLY = 5  # the peer's state reaches the opener
_PP_MERGE = 6  # a slow opener gets round to it
_PING_RESULT = 7  # the outcome of a stream ping reaches the prober
_STEP = 8  # a scenario step

_SIZED_BY_VALUE = (Ping, Ack, Nack, IndirectPing)  # unique per packet: not worth caching


class Simulation:
    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        n = opts.members
        self.rng = random.Random(opts.seed)
        self.net = NETWORKS[opts.network or ("wan" if opts.config == "wan" else "lan")]
        self.names = [f"node-{i:04d}" for i in range(n)]
        self.addrs: list[Address] = [
            (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 7946) for i in range(n)
        ]
        self.index_of_addr = {a: i for i, a in enumerate(self.addrs)}
        self.index_of_name = {name: i for i, name in enumerate(self.names)}
        factory = CONFIGS[opts.config]
        self.configs = [
            factory(self.names[i], self.addrs[i]).replace(lifeguard=opts.lifeguard)
            for i in range(n)
        ]
        cfg = self.configs[0]
        self.cfg = cfg
        self.duration = (
            opts.duration
            if opts.duration is not None
            else (240.0 if opts.config == "wan" else 60.0)
        )
        self.t0 = opts.warmup if opts.warmup is not None else 2 * cfg.probe_interval
        crash_after = opts.crash_after if opts.crash_after is not None else (5 * cfg.probe_interval)
        self.t1 = self.t0 + crash_after
        self.bound = detection_bound(cfg, n)
        self.hard_end = max(self.duration, self.t1 + 1.5 * self.bound)

        # One Random per member, then the scenario's choices, all from the one seed.
        self.members = [
            Memberlist(self.configs[i], random.Random(self.rng.getrandbits(64)), 0.0)
            for i in range(n)
        ]
        n_slow = round(opts.slow * n)
        order = list(range(n))
        self.rng.shuffle(order)
        self.slow = [False] * n
        for i in order[:n_slow]:
            self.slow[i] = True
        healthy = order[n_slow:]
        if len(healthy) < 2:
            raise ValueError("need at least two healthy members (updater and crash victim)")
        self.updater, self.victim = healthy[0], healthy[1]
        self.new_meta = b"v2"

        self.now = 0.0
        self.crashed = [False] * n
        self.crash_time = math.inf
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        self.tick_at = [math.inf] * n
        self.busy_until = [0.0] * n
        self.events = 0

        # measurements
        self.bytes_sent = [0] * n
        self.stream_bytes = [0] * n
        self.packets = 0
        self.packets_lost = 0
        self.informed_at: dict[int, float] = {}
        self.detected_at: dict[int, float] = {}
        self.fp_events: list[tuple[float, int, int]] = []  # (time, observer, victim)
        self._size_cache: dict[Message, int] = {}
        self._node_size_cache: dict[PushNodeState, int] = {}
        self._empty_pp_size = wire.encoded_size(PushPull(False, ()))
        self.stuck_ticks = 0

    # ------------------------------------------------------------------ scheduling

    def _push(self, t: float, kind: int, idx: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, idx, payload))

    def _reschedule(self, i: int) -> None:
        nd = self.members[i].next_deadline()
        if nd < self.tick_at[i]:
            if nd <= self.now:
                nd = self.now
            self.tick_at[i] = nd
            self._push(nd, _TICK, i)

    # ------------------------------------------------------------------ setup

    def bootstrap(self) -> None:
        full = PushPull(
            False,
            tuple(
                PushNodeState(self.names[i], self.addrs[i], b"", 0, MemberState.ALIVE)
                for i in range(self.opts.members)
            ),
        )
        for i, ml in enumerate(self.members):
            # Merge everyone without queueing 'alive' news about them (a converged cluster
            # has none pending); the real queue is put back untouched.
            real = ml.broadcasts
            ml.broadcasts = _DiscardQueue()
            ml.merge_remote_state(full, 0.0)
            ml.broadcasts = real
            ml.take_outputs()
            self._reschedule(i)
        self._push(self.t0, _STEP, 0, "update")
        self._push(self.t1, _STEP, 0, "crash")

    # ------------------------------------------------------------------ the run

    def run(self) -> SimResult:
        started, cpu_started = time.perf_counter(), time.process_time()
        self.bootstrap()
        heap = self._heap
        members = self.members
        crashed = self.crashed
        n_observers = self.opts.members - 1  # every live member but the crashed one
        while heap:
            t, _, kind, i, payload = heapq.heappop(heap)
            if t > self.duration and (len(self.detected_at) >= n_observers or t > self.hard_end):
                # Stop here: the run covered [0, max(duration, last event handled)].
                self.now = max(self.duration, self.now)
                break
            self.now = t
            self.events += 1
            if kind == _STEP:
                self._step(str(payload))
                continue
            if crashed[i]:
                continue
            if kind == _TICK:
                if t != self.tick_at[i]:
                    continue  # superseded by an earlier deadline
                self.tick_at[i] = math.inf
                members[i].tick(t)
                self._after_input(i)
                if self.tick_at[i] == t:
                    # The core still wants a tick now: step past it rather than spin.
                    self.stuck_ticks += 1
                    self.tick_at[i] = t + 0.001
                    self._push(t + 0.001, _TICK, i)
            elif kind == _PACKET:
                if self.slow[i]:
                    self._push(self._slow_time(i, t), _PROCESS, i, payload)
                else:
                    members[i].handle_packet(payload, t)
                    self._after_input(i)
            elif kind == _PROCESS:
                members[i].handle_packet(payload, t)
                self._after_input(i)
            elif kind == _PP_REQUEST:
                if self.slow[i]:
                    self._push(self._slow_time(i, t), _PP_SERVE, i, payload)
                else:
                    self._serve_pushpull(i, payload[0], payload[1])
            elif kind == _PP_SERVE:
                self._serve_pushpull(i, payload[0], payload[1])
            elif kind == _PP_REPLY:
                if self.slow[i]:
                    self._push(self._slow_time(i, t), _PP_MERGE, i, payload)
                else:
                    members[i].merge_remote_state(payload, t)
                    self._after_input(i)
            elif kind == _PP_MERGE:
                members[i].merge_remote_state(payload, t)
                self._after_input(i)
            elif kind == _PING_RESULT:
                seq, ok = payload
                members[i].stream_ping_result(seq, ok, t)
                self._after_input(i)
        return self._result(time.perf_counter() - started, time.process_time() - cpu_started)

    def _slow_time(self, i: int, arrival: float) -> float:
        lo, hi = self.opts.slow_delay
        at = max(arrival + self.rng.uniform(lo, hi), self.busy_until[i])
        self.busy_until[i] = at
        return at

    def _step(self, what: str) -> None:
        if what == "update":
            self.members[self.updater].set_meta(self.new_meta, self.now)
            self._after_input(self.updater)
        elif what == "crash":
            self.crashed[self.victim] = True
            self.crash_time = self.now

    # ------------------------------------------------------------------ outputs

    def _after_input(self, i: int) -> None:
        ml = self.members[i]
        for out in ml.take_outputs():
            if type(out) is SendPacket:
                self._send_packet(i, out)
            elif type(out) is MemberEvent:
                self._member_event(i, out)
            elif type(out) is OpenPushPull:
                self._open_pushpull(i, out)
            elif type(out) is StreamPing:
                self._stream_ping(i, out)
            # UserMessage: nothing above memberlist here
        self._reschedule(i)

    def _send_packet(self, i: int, out: SendPacket) -> None:
        size = wire.PACKET_OVERHEAD
        cache = self._size_cache
        for m in out.messages:
            if isinstance(m, _SIZED_BY_VALUE):
                size += wire.encoded_size(m)
            else:
                s = cache.get(m)
                if s is None:
                    s = cache[m] = wire.encoded_size(m)
                size += s
        self.bytes_sent[i] += size
        self.packets += 1
        dest = self.index_of_addr.get(out.addr)
        if dest is None:
            return
        if self.opts.loss > 0 and self.rng.random() < self.opts.loss:
            self.packets_lost += 1
            return
        self._push(self.now + self.net.latency(self.rng), _PACKET, dest, out.messages)

    def _pushpull_size(self, state: PushPull) -> int:
        """Bytes of a push-pull stream frame, to within a few bytes: the empty message plus
        each node entry (cached per entry); the outer varint lengths are not recomputed."""
        cache = self._node_size_cache
        total = wire.FRAME_HEADER_BYTES + self._empty_pp_size
        for ns in state.nodes:
            s = cache.get(ns)
            if s is None:
                s = cache[ns] = wire.encoded_size(PushPull(False, (ns,))) - self._empty_pp_size
            total += s
        return total

    def _serve_pushpull(self, i: int, opener: int, state: PushPull) -> None:
        """The peer's side of a push-pull (as memberlist: read, answer, then merge)."""
        ml = self.members[i]
        reply = ml.local_state(join=state.join)
        ml.merge_remote_state(state, self.now)
        self._after_input(i)
        self.stream_bytes[i] += self._pushpull_size(reply)
        self._push(self.now + self.net.latency(self.rng), _PP_REPLY, opener, reply)

    def _open_pushpull(self, i: int, out: OpenPushPull) -> None:
        self.stream_bytes[i] += self._pushpull_size(out.state)
        dest = self.index_of_addr.get(out.addr)
        if dest is None:
            return
        # A crashed peer never answers: the opener just gets nothing back.
        self._push(self.now + self.net.latency(self.rng), _PP_REQUEST, dest, (i, out.state))

    def _stream_ping(self, i: int, out: StreamPing) -> None:
        self.stream_bytes[i] += wire.FRAME_HEADER_BYTES + wire.encoded_size(out.ping)
        deadline = self.now + max(0.0, self.cfg.probe_interval - self.cfg.probe_timeout)
        dest = self.index_of_addr.get(out.addr)
        answer_at = self.now + self.net.latency(self.rng)
        ok = dest is not None and not self.crashed[dest]
        if ok and dest is not None:
            if self.slow[dest]:
                answer_at += self.rng.uniform(*self.opts.slow_delay)
            crashes_first = dest == self.victim and answer_at >= self.t1
            if crashes_first or self.members[dest].handle_stream_ping(out.ping) is None:
                ok = False
            answer_at += self.net.latency(self.rng)
            if self.slow[i]:
                answer_at += self.rng.uniform(*self.opts.slow_delay)  # read late, too
        if not ok or answer_at > deadline:
            self._push(deadline, _PING_RESULT, i, (out.ping.seq, False))
        else:
            self._push(answer_at, _PING_RESULT, i, (out.ping.seq, True))

    def _member_event(self, i: int, ev: MemberEvent) -> None:
        m = ev.member
        if ev.kind == "leave":
            if m.state != MemberState.DEAD:
                return
            v = self.index_of_name.get(m.name)
            if v is None:
                return
            if v == self.victim and self.now >= self.crash_time:
                self.detected_at.setdefault(i, self.now)
            else:
                self.fp_events.append((self.now, i, v))
        elif (
            ev.kind in ("update", "join")
            and m.name == self.names[self.updater]
            and m.meta == self.new_meta
        ):
            self.informed_at.setdefault(i, self.now)

    # ------------------------------------------------------------------ results

    def _result(self, wall: float, cpu: float) -> SimResult:
        n = self.opts.members
        victim = self.victim
        observers = n - 2  # neither the updater nor the crashed member
        times = [t - self.t0 for i, t in self.informed_at.items() if i != victim]
        detect = [t - self.crash_time for t in self.detected_at.values()]
        end = self.now
        rates = []
        stream_rates = []
        for i in range(n):
            life = self.crash_time if self.crashed[i] else end
            if life > 0:
                rates.append(self.bytes_sent[i] / life)
                stream_rates.append(self.stream_bytes[i] / life)
        fp_pairs = {(o, v) for _, o, v in self.fp_events}
        fp_victims = {v for _, _, v in self.fp_events}
        healthy_events = [(o, v) for _, o, v in self.fp_events if not self.slow[v]]
        return SimResult(
            members=n,
            config=self.opts.config,
            seed=self.opts.seed,
            loss=self.opts.loss,
            slow=self.opts.slow,
            lifeguard=self.opts.lifeguard,
            slow_members=sum(self.slow),
            p50=percentile_time(times, observers, 0.50),
            p99=percentile_time(times, observers, 0.99),
            p9999=percentile_time(times, observers, 0.9999),
            informed=len(times),
            observers=observers,
            detect_all=max(detect) if len(detect) >= n - 1 else None,
            detect_first=min(detect) if detect else None,
            detect_bound=self.bound,
            detected_by=len(detect),
            fp_events=len(self.fp_events),
            fp_pairs=len(fp_pairs),
            fp_victims=len(fp_victims),
            fp_events_healthy=len(healthy_events),
            fp_victims_healthy=len({v for _, v in healthy_events}),
            fp_events_by_healthy=sum(1 for _, o, _ in self.fp_events if not self.slow[o]),
            bandwidth_mean=sum(rates) / len(rates) if rates else 0.0,
            bandwidth_max=max(rates, default=0.0),
            stream_bandwidth_mean=sum(stream_rates) / len(stream_rates) if stream_rates else 0.0,
            packets=self.packets,
            packets_lost=self.packets_lost,
            duration=end,
            events=self.events,
            stuck_ticks=self.stuck_ticks,
            wall_seconds=wall,
            cpu_seconds=cpu,
        )


class _DiscardQueue(BroadcastQueue):
    """A broadcast queue that drops everything (used only while bootstrapping)."""

    def __init__(self) -> None:
        super().__init__(lambda m: 0)

    def queue(self, msg: Message, key: str | None) -> None:
        pass


def run_simulation(opts: SimOptions) -> SimResult:
    return Simulation(opts).run()
