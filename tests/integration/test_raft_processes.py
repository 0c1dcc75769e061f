"""Three ``python -m raft.kvnode`` processes on 127.0.0.1: gRPC transport, SQLite storage,
snapshot files and the recording KV FSM, driven over their HTTP control API.

The acceptance test of the Raft library: several concurrent clients write unique keys while
the leader is SIGKILLed; every acknowledged write must be on the survivors, in the same order
everywhere, in each client's order and in real-time order; the killed node, restarted on its
data dir after the cluster moved far ahead, must catch up through an InstallSnapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT_THRESHOLD = 200
TRAILING_LOGS = 50
CLIENTS = 8
ACKED_BEFORE_KILL = 400  # the leader is killed mid-way, after this many acknowledged writes
ACKED_AFTER_KILL = 600  # at least this many more before the load stops
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=5)
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL at teardown


# --- processes -------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all sockets held until every port is chosen)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Node:
    id: str
    raft_addr: str
    http_addr: str
    data_dir: Path
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """Owns the node processes; ``stop_all()`` (run by the fixture) reaps every one."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = free_ports(2 * size)
        self.nodes: dict[str, Node] = {}
        for i in range(size):
            node_id = f"n{i + 1}"
            self.nodes[node_id] = Node(
                node_id,
                f"127.0.0.1:{ports[2 * i]}",
                f"127.0.0.1:{ports[2 * i + 1]}",
                root / node_id / "data",
                root / node_id,
            )
        self.peers = ",".join(f"{n.id}={n.raft_addr}" for n in self.nodes.values())
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, node: Node) -> None:
        assert not node.alive, f"{node.id} is already running"
        node.incarnation += 1
        node.log_dir.mkdir(parents=True, exist_ok=True)
        out = node.log_dir / f"run{node.incarnation}.stdout"
        err = node.log_dir / f"run{node.incarnation}.stderr"
        node.logs += [out, err]
        args = [
            sys.executable,
            "-m",
            "raft.kvnode",
            "--id",
            node.id,
            "--raft-addr",
            node.raft_addr,
            "--http-addr",
            node.http_addr,
            "--data-dir",
            str(node.data_dir),
            "--peers",
            self.peers,
            "--bootstrap",
            "--snapshot-threshold",
            str(SNAPSHOT_THRESHOLD),
            "--trailing-logs",
            str(TRAILING_LOGS),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with out.open("wb") as stdout, err.open("wb") as stderr:
            node.proc = subprocess.Popen(
                args, stdout=stdout, stderr=stderr, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL
            )
        self.started.append(node.proc)

    async def wait_ready(self, node: Node, timeout: float = 20.0) -> None:
        """Until the node printed its ``{"ready": id}`` line."""
        out = node.logs[-2]
        async with asyncio.timeout(timeout):
            while True:
                assert node.proc is not None
                for line in out.read_text(errors="replace").splitlines():
                    if line.startswith("{"):
                        with contextlib.suppress(ValueError):
                            if json.loads(line).get("ready") == node.id:
                                return
                if node.proc.poll() is not None:
                    raise AssertionError(
                        f"{node.id} exited with {node.proc.returncode} before it was ready"
                    )
                await asyncio.sleep(0.05)

    def sigkill(self, node: Node) -> None:
        assert node.proc is not None and node.alive
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for node in self.nodes.values():
            for path in node.logs:
                text = path.read_text(errors="replace").splitlines() if path.exists() else []
                parts.append(f"----- {path} (last {lines} of {len(text)} lines) -----")
                parts.extend(text[-lines:])
        return "\n".join(parts)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()
        # Shown by pytest only when the test failed.
        print(c.log_tails())


# --- HTTP helpers ----------------------------------------------------------------------------


async def get_json(session: aiohttp.ClientSession, node: Node, path: str) -> Any:
    async with session.get(node.url + path, timeout=REQUEST_TIMEOUT) as resp:
        assert resp.status == 200, f"{node.id} GET {path}: {resp.status} {await resp.text()}"
        return await resp.json()


async def try_status(session: aiohttp.ClientSession, node: Node) -> dict[str, Any] | None:
    if not node.alive:
        return None
    try:
        result: dict[str, Any] = await get_json(session, node, "/status")
        return result
    except (aiohttp.ClientError, TimeoutError):
        return None


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; that value is returned."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await check()
                if last:
                    return last
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def agreed_leader(session: aiohttp.ClientSession, nodes: list[Node]) -> str | None:
    """The leader every node in ``nodes`` reports, if they agree and it says it leads."""
    stats = [await try_status(session, n) for n in nodes]
    if any(s is None for s in stats):
        return None
    leaders = {s["leader"] for s in stats if s is not None}
    if len(leaders) != 1 or None in leaders:
        return None
    leader = leaders.pop()
    return (
        leader
        if any(s is not None and s["node"] == leader and s["role"] == "leader" for s in stats)
        else None
    )


async def start_cluster(cluster: Cluster, session: aiohttp.ClientSession) -> str:
    for node in cluster.nodes.values():
        cluster.start(node)
    for node in cluster.nodes.values():
        await cluster.wait_ready(node)
    nodes = list(cluster.nodes.values())
    leader: str = await wait_for(lambda: agreed_leader(session, nodes), 20, "a leader")
    return leader


async def converged(session: aiohttp.ClientSession, nodes: list[Node]) -> dict[str, Any] | None:
    """Every node applied the same index, which is its leader's commit and last log index."""
    stats = [await try_status(session, n) for n in nodes]
    if any(s is None for s in stats):
        return None
    applied = {s["applied_index"] for s in stats if s is not None}
    leader = [s for s in stats if s is not None and s["role"] == "leader"]
    if len(applied) != 1 or len(leader) != 1:
        return None
    if not leader[0]["commit_index"] == leader[0]["last_log_index"] == applied.pop():
        return None
    return leader[0]


async def histories(
    session: aiohttp.ClientSession, nodes: list[Node], leader: dict[str, Any]
) -> dict[str, list[str]]:
    """Each node's applied keys, once ``converged()`` returned the leader's stats."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        body = await get_json(session, node, "/history")
        out[node.id] = keys = body["keys"]
        assert body["applied"] == leader["applied_index"], f"{node.id} moved on: {body['applied']}"
        # Every applied entry is a /put of a distinct key (each key is sent once), the
        # bootstrap configuration or an elected leader's no-op (at most one per term).
        others = body["applied"] - len(keys)
        assert 2 <= others <= leader["term"], (
            f"{node.id}: {body['applied']} entries applied for {len(keys)} distinct keys "
            f"in term {leader['term']}"
        )
    return out


# --- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients writing unique keys; each attempt uses a fresh key (a key is sent at most once,
    so an acknowledged key is never re-sent and any duplicate in a history is the cluster's)."""

    cluster: Cluster
    session: aiohttp.ClientSession
    leader: str | None = None
    sent: set[str] = field(default_factory=set)
    acked: dict[int, list[str]] = field(default_factory=dict)  # client -> keys, ack order
    send_time: dict[str, float] = field(default_factory=dict)
    ack_time: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    errors: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acked_count(self) -> int:
        return sum(len(keys) for keys in self.acked.values())

    def _other(self, node_id: str | None) -> str:
        alive = [n.id for n in self.cluster.nodes.values() if n.alive and n.id != node_id]
        ids = alive or list(self.cluster.nodes)
        return ids[int(time.monotonic() * 1000) % len(ids)]

    async def client(self, cid: int) -> None:
        self.acked[cid] = []
        for seq in itertools.count():
            if self.stop.is_set():
                return
            key = f"c{cid}-{seq:06d}"
            target = self.leader or self._other(None)
            node = self.cluster.nodes[target]
            self.sent.add(key)
            self.send_time[key] = time.monotonic()
            try:
                async with self.session.post(
                    node.url + "/put", json={"key": key, "value": key}, timeout=REQUEST_TIMEOUT
                ) as resp:
                    status, text = resp.status, await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                self.errors += 1  # dead, unreachable or slow node: outcome unknown
                if self.leader == target:
                    self.leader = self._other(target)
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                self.ack_time[key] = time.monotonic()
                self.acked[cid].append(key)
                self.leader = target
                continue
            assert status == 421, f"{target} answered /put {key} with {status}: {text}"
            self.refused += 1  # refused, or outcome unknown (e.g. leadership lost)
            hint = json.loads(text).get("leader")
            if hint and hint != target and hint in self.cluster.nodes:
                self.leader = hint
            else:
                if hint != target:
                    self.leader = self._other(target)
                await asyncio.sleep(0.05)


def check_history(load: Load, history: list[str]) -> None:
    position = {key: i for i, key in enumerate(history)}
    assert len(position) == len(history), "a key was applied more than once"
    never_sent = [k for k in history if k not in load.sent]
    assert not never_sent, f"keys applied but never sent: {never_sent[:10]}"
    acked = [k for keys in load.acked.values() for k in keys]
    missing = [k for k in acked if k not in position]
    assert not missing, f"{len(missing)} acknowledged keys lost, e.g. {missing[:10]}"
    for cid, keys in load.acked.items():
        positions = [position[k] for k in keys]
        assert positions == sorted(positions), f"client {cid}'s acked keys applied out of order"
    # Real-time order: a key acknowledged before another was sent is applied before it.
    events = sorted(
        [(load.ack_time[k], 1, k) for k in acked] + [(load.send_time[k], 0, k) for k in acked]
    )
    latest_acked = -1
    latest_key = None
    for _, kind, key in events:
        if kind == 1:
            if position[key] > latest_acked:
                latest_acked, latest_key = position[key], key
        else:
            assert position[key] > latest_acked, (
                f"{key} was sent after {latest_key} was acknowledged but applied before it"
            )


# --- tests -----------------------------------------------------------------------------------


async def test_leader_sigkill_then_restart_catches_up_by_snapshot(cluster: Cluster) -> None:
    started = time.monotonic()
    phases: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, asyncio.timeout(100):
        first_leader = await start_cluster(cluster, session)
        phases["cluster up"] = time.monotonic() - started

        load = Load(cluster, session, leader=first_leader)
        clients = [asyncio.create_task(load.client(i)) for i in range(CLIENTS)]
        try:
            await wait_for(
                lambda: asyncio.sleep(0, load.acked_count >= ACKED_BEFORE_KILL),
                30,
                f"{ACKED_BEFORE_KILL} acknowledged writes before the kill",
            )
            # Kill whoever leads right now (it may have changed).
            alive = list(cluster.nodes.values())
            leader_id = await wait_for(lambda: agreed_leader(session, alive), 10, "a leader")
            before = await try_status(session, cluster.nodes[leader_id])
            assert before is not None
            victim = cluster.nodes[leader_id]
            cluster.sigkill(victim)
            acked_at_kill = load.acked_count
            phases["kill"] = time.monotonic() - started
            survivors = [n for n in cluster.nodes.values() if n is not victim]

            # Keep writing until the new leader compacted its log well past the victim's.
            victim_last = before["last_log_index"] + CLIENTS + 10  # its log ends about here

            async def far_ahead() -> bool:
                leader = await agreed_leader(session, survivors)
                if leader is None:
                    return False
                s = await try_status(session, cluster.nodes[leader])
                return (
                    s is not None
                    and load.acked_count - acked_at_kill >= ACKED_AFTER_KILL
                    and s["snapshot_index"] - TRAILING_LOGS > victim_last + 50
                )

            await wait_for(far_ahead, 40, "the new leader to compact past the killed node")
        finally:
            load.stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
        for task in clients:
            task.result()  # a client's assertion fails the test
        phases["load stopped"] = time.monotonic() - started

        leader_stats = await wait_for(
            lambda: converged(session, survivors), 20, "the survivors to apply the same index"
        )
        hist = await histories(session, survivors, leader_stats)
        a, b = (hist[n.id] for n in survivors)
        assert a == b, "the survivors applied different histories"
        check_history(load, a)
        assert leader_stats["leader"] != victim.id

        # Restart the victim on its data dir: it must catch up through a snapshot.
        cluster.start(victim)
        await cluster.wait_ready(victim)
        everyone = list(cluster.nodes.values())
        caught_up = await wait_for(
            lambda: converged(session, everyone), 30, f"{victim.id} to catch up after its restart"
        )
        hist = await histories(session, everyone, caught_up)
        assert hist[victim.id] == a, f"{victim.id}'s history differs after catching up"
        victim_stats = await try_status(session, victim)
        assert victim_stats is not None
        assert (
            victim_stats["snapshots_received"] >= 1 or victim_stats["core_snapshots_installed"] >= 1
        ), f"{victim.id} caught up without a snapshot: {victim_stats}"
        phases["restarted node caught up"] = time.monotonic() - started

        # The restarted node is a full member again: a few more writes reach everyone.
        extra = Load(cluster, session)
        extra_clients = [asyncio.create_task(extra.client(100 + i)) for i in range(2)]
        try:
            await wait_for(
                lambda: asyncio.sleep(0, extra.acked_count >= 20), 20, "writes after the restart"
            )
        finally:
            extra.stop.set()
            await asyncio.gather(*extra_clients, return_exceptions=True)
        final_stats = await wait_for(
            lambda: converged(session, everyone), 20, "all three to converge"
        )
        final = await histories(session, everyone, final_stats)
        assert len({tuple(h) for h in final.values()}) == 1, "histories differ at the end"
        history = final[victim.id]
        assert history[: len(a)] == a
        check_history(extra, history[len(a) :])

    print(
        f"acked {load.acked_count} (at kill {acked_at_kill}), refused {load.refused}, "
        f"errors {load.errors}, history {len(a)} keys, applied {leader_stats['applied_index']}"
        f", phases {phases}"
    )


async def test_leadership_transfer(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        leader = await start_cluster(cluster, session)
        target = next(n for n in sorted(cluster.nodes) if n != leader)
        async with session.post(
            cluster.nodes[leader].url + "/transfer",
            json={"target": target},
            timeout=REQUEST_TIMEOUT,
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["target"] == target
        nodes = list(cluster.nodes.values())

        async def target_leads() -> bool:
            return await agreed_leader(session, nodes) == target

        await wait_for(target_leads, 10, f"leadership to move to {target}")
        for node in nodes:
            s = await try_status(session, node)
            assert s is not None and s["leader"] == target
            assert s["role"] == ("leader" if node.id == target else "follower")

        load = Load(cluster, session, leader=target)
        clients = [asyncio.create_task(load.client(i)) for i in range(2)]
        try:
            await wait_for(
                lambda: asyncio.sleep(0, load.acked_count >= 20), 20, "writes after the transfer"
            )
        finally:
            load.stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
        for task in clients:
            task.result()
        stats = await wait_for(lambda: converged(session, nodes), 20, "all nodes to converge")
        hist = await histories(session, nodes, stats)
        assert len({tuple(h) for h in hist.values()}) == 1
        check_history(load, hist[target])
        assert await agreed_leader(session, nodes) == target
