"""``python -m raft.kvnode``: one Raft server with a tiny KV FSM and an HTTP control API.

It is the real-process harness of the Raft library: the integration tests and the benchmark
start three of these on 127.0.0.1 (gRPC transport, SQLite storage, snapshot files) and talk
to them over HTTP:

    POST /put      {"key": k, "value": v}   -> {"index": i} once applied on this (leader) node
    GET  /get?key=k                          -> {"value": v} linearizable (ReadIndex)
    GET  /history                            -> {"keys": [...]} keys in the order applied
    GET  /status                             -> node stats (role, term, indexes, counters)
    POST /transfer {"target": id|null}       -> leadership transfer
    POST /bench    {"proposers": n, "seconds": s, "size": b}
                                             -> proposals committed by n in-process
                                                proposers on this leader, with latencies
A refused request answers 421 with the leader's id when known.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from raft.core.types import Membership, NotLeader, RaftError, Server
from raft.kv import KVStateMachine, encode_put
from raft.node import RaftNode
from raft.storage.snapshots import FileSnapshotStore
from raft.storage.sqlite import SqliteStorage
from raft.timing import Timing
from raft.transport.grpc import GrpcTransport


class RecordingKV(KVStateMachine):
    """A KV FSM that also remembers the order in which keys were first written."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def apply_command(self, cmd: dict[str, Any]) -> Any:
        key = cmd.get("key")
        if key is not None and key not in self.data:
            self.order.append(key)
        return super().apply_command(cmd)

    def snapshot(self) -> bytes:
        return json.dumps(
            {"applied": self.applied_index, "data": self.data, "order": self.order}
        ).encode()

    def restore(self, blob: bytes) -> None:
        super().restore(blob)
        self.order = list(json.loads(blob).get("order", []))


def parse_peers(text: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        node, sep, address = part.partition("=")
        if not sep or not node or ":" not in address:
            raise SystemExit(f"--peers: expected id=host:port, got {part!r}")
        peers[node] = address
    return peers


class KVServer:
    def __init__(self, node: RaftNode, fsm: RecordingKV) -> None:
        self.node = node
        self.fsm = fsm

    def _refused(self, exc: RaftError) -> web.Response:
        leader = exc.leader_id if isinstance(exc, NotLeader) else self.node.leader_id
        return web.json_response({"error": str(exc), "leader": leader}, status=421)

    async def put(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            await self.node.propose(encode_put(str(body["key"]), str(body["value"])))
        except RaftError as exc:
            return self._refused(exc)
        return web.json_response({"index": self.node.applied_index})

    async def get(self, request: web.Request) -> web.Response:
        try:
            await self.node.read_index()
        except RaftError as exc:
            return self._refused(exc)
        return web.json_response({"value": self.fsm.get(request.query["key"])})

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": self.fsm.order, "applied": self.node.applied_index})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.stats())

    async def transfer(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            target = await self.node.transfer_leadership(body.get("target"))
        except RaftError as exc:
            return self._refused(exc)
        return web.json_response({"target": target})

    async def bench(self, request: web.Request) -> web.Response:
        body = await request.json()
        proposers, seconds = int(body.get("proposers", 1)), float(body.get("seconds", 5))
        payload = "x" * int(body.get("size", 100))
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds

        async def proposer(n: int) -> None:
            nonlocal errors
            i = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await self.node.propose(encode_put(f"bench-{n}", payload))
                except RaftError:
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - started)
                i += 1

        before = dict(self.node.stats())
        started = time.perf_counter()
        await asyncio.gather(*(proposer(n) for n in range(proposers)))
        elapsed = time.perf_counter() - started
        after = self.node.stats()
        latencies.sort()

        def pct(p: float) -> float:
            return (
                1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]
                if latencies
                else 0.0
            )

        saves = after["saves"] - before["saves"]
        entries = after["entries_saved"] - before["entries_saved"]
        return web.json_response(
            {
                "proposers": proposers,
                "seconds": elapsed,
                "committed": len(latencies),
                "per_second": len(latencies) / elapsed,
                "p50_ms": pct(0.5),
                "p99_ms": pct(0.99),
                "errors": errors,
                "fsyncs": saves,
                "entries_per_fsync": entries / saves if saves else 0.0,
            }
        )


async def amain(args: argparse.Namespace) -> None:
    structlog.configure(
        processors=[
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "event"]),
        ],
        logger_factory=structlog.PrintLoggerFactory(),
    )
    peers = parse_peers(args.peers)
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = await SqliteStorage(data_dir / "raft.db").open()
    snapshots = FileSnapshotStore(data_dir / "snapshots")
    transport = GrpcTransport(args.id, args.raft_addr)
    fsm = RecordingKV()
    timing = Timing(
        raft_multiplier=args.raft_multiplier,
        snapshot_threshold=args.snapshot_threshold,
        trailing_logs=args.trailing_logs,
        lease_reads=args.lease_reads,
    )
    node = RaftNode(
        args.id,
        fsm=fsm,
        storage=storage,
        snapshots=snapshots,
        transport=transport,
        timing=timing,
        peers=peers,
    )
    if args.bootstrap:
        await node.bootstrap(Membership(tuple(Server(i, a) for i, a in sorted(peers.items()))))
    await node.start()
    server = KVServer(node, fsm)
    app = web.Application()
    app.router.add_post("/put", server.put)
    app.router.add_get("/get", server.get)
    app.router.add_get("/history", server.history)
    app.router.add_get("/status", server.status)
    app.router.add_post("/transfer", server.transfer)
    app.router.add_post("/bench", server.bench)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = args.http_addr.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": args.id, "pid": os.getpid()}), flush=True)
    await stop.wait()
    with contextlib.suppress(Exception):
        await runner.cleanup()
    await node.stop()


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m raft.kvnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--id", required=True)
    p.add_argument("--raft-addr", required=True, help="host:port for Raft gRPC")
    p.add_argument("--http-addr", required=True, help="host:port for the control API")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--peers", required=True, help="id=host:port,... every founding server")
    p.add_argument("--bootstrap", action="store_true", help="found the cluster with --peers")
    p.add_argument("--raft-multiplier", type=int, default=1)
    p.add_argument("--snapshot-threshold", type=int, default=16384)
    p.add_argument("--trailing-logs", type=int, default=10240)
    p.add_argument("--lease-reads", action="store_true")
    args = p.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
