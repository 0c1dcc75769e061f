"""Blocking-query benchmark: how fast a KV write wakes the blocking queries watching it.

    .venv/bin/python bench/blocking_bench.py [--queries 10000] [--rounds 20] [--json]

1. **Wake latency** (``--rounds`` times): one ``GET /v1/kv/<key>?index=N&wait=30s`` is parked,
   then (after a random 100-300 ms) the key is written; we record the time from sending the write
   to the blocking answer (the write's own Raft commit included), and check the query did not return before the write.
2. **Fan-out**: ``--queries`` connections each park one blocking GET on the same key (raw
   HTTP/1.1 over asyncio streams, so the client stays cheap); once all are parked, one write;
   we record when each answer's status line arrives. Reported: the time until the last one
   and the server's RSS (``/proc/<pid>/status`` VmRSS) before and after.
3. **Peer**, measured in the same run: a bare asyncio server on loopback that parks the same
   number of connections and answers them all when told to (the floor for "wake N sockets and
   write N small responses" in Python on this machine). Printed: ours / peer for the fan-out.

The agent is ``proconsul agent -dev`` (one in-memory server). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench/blocking"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()


def start_agent(port: int, log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("proconsul")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *cmd,
                "agent",
                "-dev",
                "-http-port",
                str(port),
                "-server-port",
                "0",
                "-log-level",
                "warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if json.loads(http("GET", f"http://127.0.0.1:{port}/v1/status/leader")[2]):
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"agent did not start: {log.read_text()}")


async def park(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def fan_out(port: int, path: str, n: int, trigger: Any) -> tuple[float, int]:
    """Park ``n`` requests, call ``trigger()`` (sync) and return (seconds until the last status
    line arrived after the trigger, number answered)."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    batch = 200
    for start in range(0, n, batch):
        conns.extend(
            await asyncio.gather(*(park(port, path) for _ in range(min(batch, n - start))))
        )
    await asyncio.sleep(2.0)  # let the server read and park every request
    arrivals: list[float] = []

    async def wait_one(reader: asyncio.StreamReader) -> None:
        line = await reader.readline()
        if line.startswith(b"HTTP/1.1 200"):
            arrivals.append(time.perf_counter())

    waiters = [asyncio.create_task(wait_one(r)) for r, _ in conns]
    await asyncio.sleep(0.5)
    early = len(arrivals)
    t0 = time.perf_counter()
    await asyncio.to_thread(trigger)
    await asyncio.wait(waiters, timeout=30)
    for _, w in conns:
        w.close()
    if early:
        raise SystemExit(f"{early} blocking queries returned before the write")
    return (max(arrivals) - t0 if arrivals else float("nan")), len(arrivals)


class PeerServer:
    """A bare asyncio HTTP-ish server (run in its own process, ``--peer-server``): parks every
    request until ``GET /release`` arrives, then answers them all with a Consul-sized reply."""

    def __init__(self) -> None:
        self.parked: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /release "):
            self.release()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        self.parked.append(writer)

    def release(self) -> None:
        body = b'[{"Key":"bench/blocking","Value":"eA=="}]'
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 2\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        parked, self.parked = self.parked, []
        for writer in parked:
            writer.write(head + body)


async def serve_peer() -> None:
    peer = PeerServer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


def peer_fan_out(n: int) -> float:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--peer-server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        seconds, answered = asyncio.run(
            fan_out(port, "/", n, lambda: http("GET", f"http://127.0.0.1:{port}/release"))
        )
    finally:
        proc.kill()
        proc.wait()
    if answered != n:
        raise SystemExit(f"peer answered {answered} of {n}")
    return seconds


async def wake_latency(port: int, rounds: int) -> list[float]:
    base = f"http://127.0.0.1:{port}/v1/kv/{KEY}"
    results = []
    for round_no in range(rounds):
        _, headers, _ = await asyncio.to_thread(http, "GET", base)
        index = int(headers["X-Consul-Index"])
        reader, writer = await park(port, f"/v1/kv/{KEY}?index={index}&wait=30s")
        returned = asyncio.create_task(reader.readline())
        await asyncio.sleep(random.uniform(0.1, 0.3))
        if returned.done():
            raise SystemExit("a blocking query returned before the write")
        # A new value each time: a write that changes nothing does not move the index.
        sent = time.perf_counter()
        await asyncio.to_thread(http, "PUT", base, f"x{round_no}".encode())
        await returned
        results.append(time.perf_counter() - sent)
        writer.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--peer-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_server:
        asyncio.run(serve_peer())
        return 0
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"blocking-bench-{os.getpid()}.log"
    proc = start_agent(port, log)
    try:
        base = f"http://127.0.0.1:{port}/v1/kv/{KEY}"
        http("PUT", base, b"0")
        latencies = asyncio.run(wake_latency(port, args.rounds))
        _, headers, _ = http("GET", base)
        index = int(headers["X-Consul-Index"])
        rss_before = rss_mib(proc.pid)
        rss_parked: list[float] = []

        def write() -> None:
            rss_parked.append(rss_mib(proc.pid))
            http("PUT", base, b"1")

        ours, answered = asyncio.run(
            fan_out(port, f"/v1/kv/{KEY}?index={index}&wait=120s", args.queries, write)
        )
        rss_after = rss_mib(proc.pid)
        peer = peer_fan_out(args.queries)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    result = {
        "wake_latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 2),
            "max": round(max(latencies) * 1000, 2),
            "rounds": len(latencies),
        },
        "fan_out": {
            "queries": args.queries,
            "answered": answered,
            "last_answer_s": round(ours, 3),
            "peer_last_answer_s": round(peer, 3),
            "ratio_ours_over_peer": round(ours / peer, 2) if peer else None,
            "rss_mib_idle": round(rss_before, 1),
            "rss_mib_parked": round(rss_parked[0], 1) if rss_parked else None,
            "rss_mib_after": round(rss_after, 1),
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        w, f = result["wake_latency_ms"], result["fan_out"]
        print(
            f"wake latency from sending the write: p50 {w['p50']} ms, max {w['max']} ms ({w['rounds']} rounds)"
        )
        print(
            f"fan-out: {f['answered']}/{f['queries']} answered, last {f['last_answer_s']} s after the "
            f"write (peer: bare asyncio server {f['peer_last_answer_s']} s; ours/peer "
            f"{f['ratio_ours_over_peer']}x)"
        )
        print(
            f"server RSS: {f['rss_mib_idle']} MiB idle, {f['rss_mib_parked']} MiB with all parked, "
            f"{f['rss_mib_after']} MiB after"
        )
    ok = answered == args.queries and ours <= 1.0 and (rss_parked[0] if rss_parked else 0) <= 1024
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
