"""Ten ``python -m gossip.demo`` agents (Serf over UDP + TCP, encrypted) as OS processes on
127.0.0.1, driven through their stdin and JSON-lines stdout.

They join through one seed; a SIGKILLed agent is marked failed by every other one within the
bound computed from the config; a SIGTERMed agent leaves gracefully (left, never failed) and,
restarted, is alive again everywhere; an agent with another encryption key cannot join and
harms nobody; a user event reaches every member exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gossip.config import GossipConfig, default_local_config
from gossip.math import suspicion_timeout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 10
CONFIG = default_local_config("any")  # what `python -m gossip.demo --config local` runs
# Gossip reaches most members in a few rounds, but with the local config's retransmit_mult=2
# a member misses a broadcast now and then; the periodic push-pull (anti-entropy, every
# push_pull_interval, the first one up to twice that after start) repairs it. Waits for
# "everyone knows" allow for two push-pull rounds.
ANTI_ENTROPY = 2 * CONFIG.push_pull_interval
CONVERGE_TIMEOUT = ANTI_ENTROPY + 10.0
KILL_GRACE = 5.0


def failure_bound(cfg: GossipConfig, n: int) -> float:
    """Worst case from a crash to everyone's verdict: the longest suspicion (Lifeguard starts
    at suspicion_max_timeout_mult x the suspicion timeout, shrinking with confirmations)
    plus a few probe intervals to notice the silence and spread the news."""
    longest = cfg.suspicion_max_timeout_mult * suspicion_timeout(
        cfg.suspicion_mult, n, cfg.probe_interval
    )
    return longest + 3 * cfg.probe_interval


def free_ports(n: int) -> list[int]:
    """n distinct ports free for both TCP and UDP on 127.0.0.1."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            held.append(tcp)
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                continue
            held.append(udp)
            ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


Line = dict[str, Any]


class Agent:
    """One demo process at a time under a fixed name and port; ``lines`` holds the JSON
    lines (with their arrival time) of the current run."""

    def __init__(self, name: str, port: int, key: str, log_dir: Path) -> None:
        self.name = name
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.key = key
        self.log_dir = log_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[tuple[float, Line]] = []
        self.runs = 0
        self._reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(
        self, join: list[str], procs: list[asyncio.subprocess.Process], extra: tuple[str, ...] = ()
    ) -> None:
        assert not self.running, f"{self.name} is running already"
        self.runs += 1
        self.lines = []
        args = [
            sys.executable,
            "-m",
            "gossip.demo",
            "--name",
            self.name,
            "--bind",
            self.addr,
            "--encrypt",
            self.key,
            "--config",
            "local",
            "--exit-on-eof",
        ]
        if join:
            args += ["--join", ",".join(join), "--join-attempts", "3"]
        args += list(extra)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{self.name}.run{self.runs}.stderr").open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        procs.append(self.proc)
        self._reader = asyncio.create_task(self._read(self.proc), name=f"read-{self.name}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Collect stdout (and copy it to a file next to stderr, for post-mortems)."""
        assert proc.stdout is not None
        lines = self.lines
        with (self.log_dir / f"{self.name}.run{self.runs}.stdout").open("wb") as copy:
            async for raw in proc.stdout:
                copy.write(raw)
                copy.flush()
                with contextlib.suppress(ValueError):
                    obj = json.loads(raw)
                    if isinstance(obj, dict):
                        lines.append((time.monotonic(), obj))

    async def wait_line(
        self, pred: Callable[[Line], bool], timeout: float, start: int = 0, what: str = ""
    ) -> tuple[float, Line]:
        """The first line (from index ``start``) matching ``pred``, with its arrival time."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.lines):
                t, obj = self.lines[i]
                i += 1
                if pred(obj):
                    return t, obj
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what or 'matching line'} in {timeout}s")
            reader = self._reader
            if reader is not None and reader.done() and i >= len(self.lines):
                raise AssertionError(f"{self.name}'s output ended before {what}")
            await asyncio.sleep(0.02)

    async def command(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def members(self) -> dict[str, str]:
        """name -> status, as this agent sees it now."""
        start = len(self.lines)
        await self.command("members")
        _, line = await self.wait_line(lambda o: "members" in o, 5.0, start, "members reply")
        return {m["name"]: m["status"] for m in line["members"]}

    async def stats(self) -> dict[str, int]:
        start = len(self.lines)
        await self.command("stats")
        _, line = await self.wait_line(lambda o: "stats" in o, 5.0, start, "stats reply")
        stats: dict[str, int] = line["stats"]
        return stats

    def events(self, kind: str, name: str | None = None) -> list[Line]:
        return [
            o
            for _, o in self.lines
            if o.get("event") == kind and (name is None or o.get("name") == name)
        ]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, sig)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)
        return code


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = new_key()
        ports = free_ports(N + 1)
        self.agents = [Agent(f"n{i}", ports[i], self.key, root) for i in range(N)]
        self.intruder = Agent("intruder", ports[N], new_key(), root)
        self.procs: list[asyncio.subprocess.Process] = []  # every process ever started

    @property
    def seed(self) -> Agent:
        return self.agents[0]

    async def start(self, agent: Agent) -> None:
        join = [] if agent is self.seed else [self.seed.addr]
        await agent.start(join, self.procs)
        await agent.wait_line(lambda o: o.get("ready") == agent.name, 20.0, what="ready line")

    async def converge(self, observers: list[Agent], want: dict[str, str], timeout: float) -> None:
        """Until every observer sees at least the statuses in ``want``."""
        deadline = time.monotonic() + timeout
        while True:
            views = {a.name: await a.members() for a in observers}
            behind = {
                n: {k: v.get(k) for k in want if v.get(k) != want[k]}
                for n, v in views.items()
                if any(v.get(k) != want[k] for k in want)
            }
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no convergence on {want} in {timeout}s: {behind}")
            await asyncio.sleep(0.2)

    async def kill_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                await asyncio.wait_for(proc.wait(), KILL_GRACE)
        for agent in (*self.agents, self.intruder):
            if agent._reader is not None and not agent._reader.done():
                agent._reader.cancel()
                with contextlib.suppress(BaseException):
                    await agent._reader


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        await c.kill_all()


async def test_ten_agents(cluster: Cluster) -> None:
    agents = cluster.agents
    seed = cluster.seed

    # --- join through one seed --------------------------------------------------------
    await cluster.start(seed)
    await asyncio.gather(*(cluster.start(a) for a in agents[1:]))
    for a in agents[1:]:
        _, line = await a.wait_line(
            lambda o: "joined" in o or "join_error" in o, 15.0, what="join outcome"
        )
        assert line.get("joined") == 1, f"{a.name}: {line}"
    everyone_alive = {a.name: "alive" for a in agents}
    await cluster.converge(agents, everyone_alive, CONVERGE_TIMEOUT)

    # --- SIGKILL: failed everywhere within the bound -------------------------------------
    victim = agents[-1]
    others = agents[:-1]
    bound = failure_bound(CONFIG, N)
    assert bound == pytest.approx(6 * 3 * 1.0 * 1.0 + 3)  # local config: 21 s
    killed_at = time.monotonic()
    victim.signal(signal.SIGKILL)
    marked = await asyncio.gather(
        *(
            a.wait_line(
                lambda o: o.get("event") == "member-failed" and o.get("name") == victim.name,
                bound + 10,
                what=f"member-failed for {victim.name}",
            )
            for a in others
        )
    )
    slowest = max(t for t, _ in marked) - killed_at
    print(f"SIGKILL: every member marked {victim.name} failed after {slowest:.1f}s")
    assert slowest <= bound, f"failure detection took {slowest:.1f}s, bound {bound:.1f}s"
    await cluster.converge(others, {victim.name: "failed"}, 5.0)

    # --- SIGTERM: a graceful leave, seen as left ----------------------------------------
    leaver = agents[-2]
    stayers = agents[:-2]
    leaver.signal(signal.SIGTERM)
    _, bye = await leaver.wait_line(lambda o: "left" in o, 10.0, what="left line")
    assert bye["left"] == leaver.name
    assert await leaver.wait_exit(10.0) == 0
    # A member that missed the leave's gossip may suspect the silent leaver and call it
    # failed before a push-pull tells it the member left (Serf then turns failed into left).
    # What must hold: every member ends up seeing it left, with a member-leave event.
    await cluster.converge(stayers, {leaver.name: "left"}, ANTI_ENTROPY + bound)
    for a in stayers:
        assert a.events("member-leave", leaver.name), a.name
    transient = [a.name for a in stayers if a.events("member-failed", leaver.name)]
    print(f"SIGTERM: left everywhere; first called failed by {transient or 'nobody'}")

    # --- restart it: alive again everywhere ------------------------------------------------
    await cluster.start(leaver)
    _, line = await leaver.wait_line(lambda o: "joined" in o or "join_error" in o, 15.0)
    assert line.get("joined") == 1, line
    live = [*stayers, leaver]
    want = {a.name: "alive" for a in live}
    await cluster.converge(live, want, CONVERGE_TIMEOUT)
    # (The restarted agent never hears of the failed one: push-pull state reports deaths only
    # as suspicions, and nobody suspects a member it does not know. As in memberlist.)
    await cluster.converge(stayers, {victim.name: "failed"}, 1.0)

    # --- another key: cannot join, harms nobody --------------------------------------------
    intruder = cluster.intruder
    await intruder.start([seed.addr], cluster.procs)
    _, outcome = await intruder.wait_line(
        lambda o: "joined" in o or "join_error" in o, 20.0, what="join outcome"
    )
    assert "join_error" in outcome, outcome
    assert await intruder.members() == {intruder.name: "alive"}
    await asyncio.sleep(3 * CONFIG.gossip_interval + CONFIG.probe_interval)
    for a in live:
        view = await a.members()
        assert intruder.name not in view, a.name
        assert {n: view.get(n) for n in want} == want, a.name
    assert (await seed.stats())["stream_decrypt_failed"] >= 1

    # --- a user event reaches every member exactly once ------------------------------------
    sender = agents[3]
    await sender.command("event deploy v42")

    def is_deploy(o: Line) -> bool:
        return o.get("event") == "user" and o.get("name") == "deploy"

    await asyncio.gather(
        *(a.wait_line(is_deploy, ANTI_ENTROPY + 5, what="the user event") for a in live)
    )
    # Let the gossip run on (retransmissions, re-broadcasts, a push-pull or two) ...
    await asyncio.sleep(10 * CONFIG.gossip_interval + 2 * CONFIG.probe_interval)
    for a in live:  # ... and still exactly one delivery each
        got = [(o["name"], o["payload"]) for _, o in a.lines if is_deploy(o)]
        assert got == [("deploy", "v42")], (a.name, got)
    assert not [o for _, o in intruder.lines if is_deploy(o)]
    for a in live:
        stats = await a.stats()
        assert stats["core_errors"] == 0 and stats["event_errors"] == 0, (a.name, stats)


async def test_restarted_agent_rejoins_from_its_snapshot(cluster: Cluster) -> None:
    """Serf's snapshot file: an agent restarted without --join rejoins the members it knew."""
    a, b, c = cluster.agents[:3]
    snap = str(cluster.root / "c.snapshot")
    await cluster.start(a)
    await cluster.start(b)
    await c.start([a.addr], cluster.procs, ("--snapshot", snap))
    await c.wait_line(lambda o: o.get("joined") == 1, 15.0, what="join")
    trio = {x.name: "alive" for x in (a, b, c)}
    await cluster.converge([a, b, c], trio, CONVERGE_TIMEOUT)
    c.signal(signal.SIGKILL)
    await c.wait_exit(10.0)
    # Restart with the snapshot and no --join: it must find a and b by itself.
    await c.start([], cluster.procs, ("--snapshot", snap))
    _, rejoin = await c.wait_line(lambda o: "rejoining" in o, 20.0, what="rejoining line")
    assert set(rejoin["rejoining"]) >= {a.addr, b.addr} - {c.addr}
    _, joined = await c.wait_line(lambda o: "joined" in o or "join_error" in o, 15.0)
    assert joined.get("joined", 0) >= 1, joined
    await cluster.converge([a, b, c], trio, CONVERGE_TIMEOUT)
