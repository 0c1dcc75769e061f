"""Mesh gateway benchmark: throughput and new connections per second through the gateway,
against a direct loopback connection, measured in the same run.

Usage (from the repository root, after ``make venv``)::

    .venv/bin/python bench/gateway_bench.py [--seconds 10] [--streams 1,4] [--concurrency 8]
        [--rounds 1] [--pin] [--baseline-tree DIR] [--json] [--keep]

Method
------
Everything runs on this machine, on 127.0.0.1, each party its own process:

* **backends**: a *sink* (a thread per connection, ``recv_into`` a 1 MiB buffer until EOF) and
  an *ack* server (asyncio Protocol: on the first bytes of a connection it answers one byte and
  closes);
* **gateways**: two ``proconsul connect mesh-gateway`` processes, one per data path
  (``-data-path=splice`` and ``-data-path=protocol``), both routing by SNI
  (``sink.server.dc1.consul``, ``ack.server.dc1.consul``) to the backends, learnt from a
  minimal fake agent in the benchmark process (``/v1/health/service/consul`` with blocking
  queries; the federation-states endpoint answers 404);
* **load** (separate processes): *send* opens ``--streams`` connections, writes a real TLS
  ClientHello for the SNI (so the gateway can route; the direct run sends it too) and then
  1 MiB ``sendall`` calls for ``--seconds`` after a warm-up second, counting the bytes sent in
  the measured window; *connect* runs ``--concurrency`` asyncio workers that each connect, send
  the ClientHello, wait for the ack byte and close, counting completions in the window.

* **reference hop** (``--no-relay`` skips it): a minimal threaded relay per backend (blocking
  ``recv_into``/``sendall`` of 1 MiB, two threads per connection, no ClientHello parsing, no
  routing): what one plain user-space hop costs on this machine, to read the gateway's ratios
  against.

Each measurement runs back to back direct to the backend, through the splice gateway, through
the protocol gateway and through the reference relay (``--rounds`` repeats the set) and the
ratios to direct are printed. Targets (issue 6): >= 0.7x direct throughput, >= 0.4x direct new
connections per second.

``--baseline-tree DIR`` adds a row ``baseline``: a splice gateway run from another source tree
(``git archive <commit> | tar -x -C DIR``), so a change to the data path is measured before and
after in the same run.

``--pin`` is the "gateway on its own core" deployment: every endpoint (sink, ack server, sender,
connect client) runs on the first CPU the benchmark may use, every hop (both gateways, the
reference relay) on the second — for the direct rows as for the gateway rows, so the endpoints
get the same CPU in both. A child inherits the affinity of the thread that starts it, so the
benchmark sets its own (``os.sched_setaffinity``) around each start and restores it.

Caveats
-------
* Loopback has no network cost, so "direct" is the most favourable peer: the gateway doubles
  the socket work (two connections per client connection) and adds its own process. On a
  2-core machine the sender, the sink and the gateway compete for the cores; the load average is
  printed before and after.
* Throughput counts bytes accepted by ``sendall`` in the window; with the sink always reading,
  at most the socket buffers (a few MiB) separate sent from received.
* The connection test's client closes first, leaving TIME_WAIT sockets; Linux reuses them on
  loopback (``net.ipv4.tcp_tw_reuse``). Connection errors are counted and printed.

Every process the benchmark starts is stopped by PID and its temporary directory removed
(``--keep`` keeps it, with every process's log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import resource
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kv_bench import cpu_seconds  # bench/ is not a package: found through sys.path
from raft_bench import (
    REPO_ROOT,
    BenchError,
    Processes,
    display_path,
    free_ports,
    http,
    loadavg,
    machine_info,
    poll,
    run_bench,
)

DATA_PATHS = ("splice", "protocol")
TARGET_THROUGHPUT = 0.7
TARGET_CONNS = 0.4
CHUNK = 1 << 20


def log(msg: str) -> None:
    print(f"[gateway_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pin_cpus() -> tuple[set[int], set[int]]:
    """(endpoint CPUs, hop CPUs) for ``--pin``: the first two CPUs this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError(f"--pin needs 2 CPUs, this process may use {cpus}")
    return {cpus[0]}, {cpus[1]}


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cpus`` (None: unchanged)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def client_hello(sni: str) -> bytes:
    """A real TLS ClientHello for ``sni`` (Python's ssl over memory BIOs)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# --- child roles -----------------------------------------------------------------------------


def role_sink(port: int) -> None:
    server = socket.create_server(("127.0.0.1", port), backlog=1024)

    def drain(conn: socket.socket) -> None:
        buf = bytearray(CHUNK)
        with contextlib.suppress(OSError), conn:
            while conn.recv_into(buf):
                pass

    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def role_ack(port: int) -> None:
    class Ack(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(b"k")
            self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Ack, "127.0.0.1", port, backlog=4096)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def role_relay(port: int, upstream: int) -> None:
    """The reference hop: a minimal threaded relay (blocking ``recv_into``/``sendall`` of
    1 MiB, two threads per connection, no routing) — what one user-space hop costs here."""
    server = socket.create_server(("127.0.0.1", port), backlog=1024)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with contextlib.suppress(OSError):
            while n := src.recv_into(buf):
                dst.sendall(view[:n])
            dst.shutdown(socket.SHUT_WR)

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn, socket.create_connection(("127.0.0.1", upstream)) as up:  # fmt: skip
            back = threading.Thread(target=pump, args=(up, conn))
            back.start()
            pump(conn, up)
            back.join()

    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def role_send(target: str, sni: str, streams: int, seconds: float, warmup: float) -> None:
    host, _, port = target.rpartition(":")
    hello = client_hello(sni)
    payload = memoryview(bytes(CHUNK))
    t0 = time.monotonic() + warmup
    t1 = t0 + seconds
    counts = [0] * streams
    errors: list[str] = []

    def stream(i: int) -> None:
        try:
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(hello)
                while True:
                    sock.sendall(payload)
                    now = time.monotonic()
                    if now >= t1:
                        return
                    if now >= t0:
                        counts[i] += CHUNK
        except OSError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counts)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"bytes": total, "mb_per_s": total / seconds / 1e6, "errors": errors,
                      "sender_cpu_s": ru.ru_utime + ru.ru_stime}))  # fmt: skip


def role_connect(target: str, sni: str, concurrency: int, seconds: float, warmup: float) -> None:
    host, _, port_text = target.rpartition(":")
    addr = (host, int(port_text))
    hello = client_hello(sni)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + warmup
        t1 = t0 + seconds
        done = 0
        errors: dict[str, int] = {}

        async def worker() -> None:
            nonlocal done
            while loop.time() < t1:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, addr)
                    await loop.sock_sendall(sock, hello)
                    got = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
                    if got != b"k":
                        raise OSError("no ack")
                    if t0 <= loop.time() < t1:
                        done += 1
                except (OSError, TimeoutError) as err:
                    key = type(err).__name__
                    errors[key] = errors.get(key, 0) + 1
                finally:
                    sock.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"connections": done, "per_second": done / seconds, "errors": errors}

    print(json.dumps(asyncio.run(main())))


# --- the fake agent --------------------------------------------------------------------------


def fake_agent(port: int, servers: dict[str, int]) -> ThreadingHTTPServer:
    """Just enough of an agent for the gateway: ``/v1/agent/self`` and a
    ``/v1/health/service/consul`` that never changes (blocking queries wait 10 s)."""
    entries = [
        {
            "Node": {"Node": name, "Address": "127.0.0.1"},
            "Service": {"Service": "consul", "Address": "127.0.0.1", "Port": p},
            "Checks": [{"Status": "passing"}],
        }
        for name, p in servers.items()
    ]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if "index=" in url.query:
                time.sleep(10)
            body: Any
            if url.path == "/v1/agent/self":
                status, body = 200, {"Config": {"Datacenter": "dc1"}}
            elif url.path == "/v1/health/service/consul":
                status, body = 200, entries
            else:
                status, body = 404, "not found"
            data = json.dumps(body).encode()
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("X-Consul-Index", "5")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- the benchmark ---------------------------------------------------------------------------


def child(script_args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *script_args]


def wait_port(port: int, what: str, procs: Processes) -> None:
    def up() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    poll(up, 20, what, procs)


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise BenchError(f"no result in the load generator's output:\n{text[-2000:]}")


def run(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    seconds, warmup = args.seconds, args.warmup
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([display_path(sys.executable), *sys.argv]),
        "seconds": seconds,
        "machine": {
            k: v for k, v in machine_info(root).items() if k not in ("etcd", "wrk", "tmp_dir_fs")
        },
        "load_before": loadavg(),
    }
    ends: set[int] | None = None
    hops: set[int] | None = None
    if args.pin:
        ends, hops = pin_cpus()
        result["pinned"] = {"endpoints": sorted(ends), "hops": sorted(hops)}
        log(f"pinned: endpoints on CPU {sorted(ends)}, gateways and relay on CPU {sorted(hops)}")
    sink_port, ack_port, agent_port, relay_sink, relay_ack, *gw_ports = free_ports(
        5 + 2 * len(args.gateways)
    )
    with affinity(ends):
        sink = procs.start("sink", child(["--role", "sink", "--port", str(sink_port)]))
        procs.start("ack", child(["--role", "ack", "--port", str(ack_port)]))
    wait_port(sink_port, "the sink", procs)
    wait_port(ack_port, "the ack server", procs)
    agent = fake_agent(agent_port, {"sink": sink_port, "ack": ack_port})
    try:
        targets = {"direct": {"sink": sink_port, "ack": ack_port}}
        if args.relay:
            for name, port, up in (("sink", relay_sink, sink_port), ("ack", relay_ack, ack_port)):
                with affinity(hops):
                    procs.start(f"relay-{name}", child(["--role", "relay", "--port", str(port), "--upstream", str(up)]))  # fmt: skip
                wait_port(port, f"the {name} relay", procs)
            targets["relay"] = {"sink": relay_sink, "ack": relay_ack}
        admins = {}
        gateways = {}
        for i, (path, data_path, tree) in enumerate(args.gateways):
            port, admin = gw_ports[2 * i], gw_ports[2 * i + 1]
            with affinity(hops):
                gateways[path] = procs.start(
                    f"ours-gateway-{path}",
                    [
                        *(proconsul() if tree is None else [sys.executable, "-m", "server.cli"]),
                        "connect",
                        "mesh-gateway",
                        "-expose-servers",
                        f"-address=127.0.0.1:{port}",
                        f"-http-addr=127.0.0.1:{agent_port}",
                        f"-admin-bind=127.0.0.1:{admin}",
                        f"-data-path={data_path}",
                    ],
                    cwd=tree,  # python -m from another tree imports that tree's server/
                )
            targets[path] = {"sink": port, "ack": port}
            admins[path] = admin
        for path, admin in admins.items():
            poll(
                lambda a=admin: http("GET", f"http://127.0.0.1:{a}/ready")[0] == 200,
                30,
                f"the {path} gateway to be ready",
                procs,
            )
        log(f"gateways ready: {admins}")
        throughput: list[dict[str, Any]] = []
        conns: list[dict[str, Any]] = []
        for rnd in range(1, args.rounds + 1):
            for streams in args.streams:
                for path, ports in targets.items():
                    procs.check_alive()
                    log(f"round {rnd}: throughput, {streams} stream(s), {path}, {seconds:g} s")
                    cpu = gateway_cpu(gateways.get(path))
                    sink_cpu = gateway_cpu(sink)
                    with affinity(ends):
                        out = procs.run(
                            f"send-{rnd}-{streams}-{path}",
                            child(["--role", "send", "--target", f"127.0.0.1:{ports['sink']}",
                                   "--sni", "sink.server.dc1.consul", "--streams", str(streams),
                                   "--seconds", str(seconds), "--warmup", str(warmup)]),
                            timeout=seconds + warmup + 60,
                        )  # fmt: skip
                    row = last_json(out) | {"round": rnd, "streams": streams, "path": path}
                    row["load"] = loadavg()
                    row["gateway_cpu_s"] = gateway_cpu(gateways.get(path)) - cpu
                    row["sink_cpu_s"] = gateway_cpu(sink) - sink_cpu
                    log(f"  {row['mb_per_s']:.0f} MB/s, errors {len(row['errors'])}, CPU s: gateway {row['gateway_cpu_s']:.1f}, sender {row['sender_cpu_s']:.1f}, sink {row['sink_cpu_s']:.1f}")  # fmt: skip
                    throughput.append(row)
            # Direct first, then the hops, in reverse order every other round: each run leaves
            # TIME_WAIT sockets that slow the next one's connects, so no row always follows
            # the same one.
            order = list(targets.items())
            if rnd % 2 == 0:
                order = [order[0], *reversed(order[1:])]
            for path, ports in order:
                procs.check_alive()
                log(f"round {rnd}: new connections, concurrency {args.concurrency}, {path}")
                cpu = gateway_cpu(gateways.get(path))
                with affinity(ends):
                    out = procs.run(
                        f"connect-{rnd}-{path}",
                        child(["--role", "connect", "--target", f"127.0.0.1:{ports['ack']}",
                               "--sni", "ack.server.dc1.consul", "--concurrency",
                               str(args.concurrency), "--seconds", str(seconds), "--warmup",
                               str(warmup)]),
                        timeout=seconds + warmup + 60,
                    )  # fmt: skip
                row = last_json(out) | {"round": rnd, "path": path}
                row["load"] = loadavg()
                row["gateway_cpu_s"] = gateway_cpu(gateways.get(path)) - cpu
                log(f"  {row['per_second']:.0f} connections/s, errors {row['errors']}, gateway CPU {row['gateway_cpu_s']:.1f} s")  # fmt: skip
                conns.append(row)
        result["throughput"] = throughput
        result["connections"] = conns
        result["gateway_stats"] = {
            path: http("GET", f"http://127.0.0.1:{admin}/stats")[1]
            for path, admin in admins.items()
        }
    finally:
        agent.shutdown()
        agent.server_close()
    result["ratios"] = ratios(result, args.streams, [g[0] for g in args.gateways])
    result["load_after"] = loadavg()
    return result


def gateway_cpu(proc: Any) -> float:
    """CPU seconds (user + system) a process used so far; 0 without one (direct runs)."""
    return cpu_seconds([proc.pid])[0] if proc is not None else 0.0


def proconsul() -> list[str]:
    exe = Path(sys.executable).with_name("proconsul")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def ratios(result: dict[str, Any], streams: list[int], paths: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in [
        *paths,
        *(["relay"] if any(r["path"] == "relay" for r in result["throughput"]) else []),
    ]:
        for n in streams:
            rows = [r for r in result["throughput"] if r["streams"] == n]
            direct = _mean([r["mb_per_s"] for r in rows if r["path"] == "direct"])
            ours = _mean([r["mb_per_s"] for r in rows if r["path"] == path])
            out[f"throughput_{path}_{n}"] = ours / direct if direct else None
        direct = _mean([r["per_second"] for r in result["connections"] if r["path"] == "direct"])
        ours = _mean([r["per_second"] for r in result["connections"] if r["path"] == path])
        out[f"connections_{path}"] = ours / direct if direct else None
    return out


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"date: {result['date']}   command: {result['command']}",
        f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, kernel {m['kernel']}",
        f"load average before: {result['load_before']}   after: {result['load_after']}",
        "pinned: "
        + (
            f"endpoints on CPU {result['pinned']['endpoints']}, gateways and relay on CPU "
            f"{result['pinned']['hops']}"
            if "pinned" in result
            else "no (--pin not given)"
        ),
        "",
        f"Throughput ({result['seconds']:g} s per run, 1 MiB sendall, MB/s):",
        f"  {'round':>5} {'streams':>7} {'path':<9} {'MB/s':>9} {'gw CPU s':>8} {'errors':>6}",
    ]
    for r in result["throughput"]:
        lines.append(
            f"  {r['round']:>5} {r['streams']:>7} {r['path']:<9} {r['mb_per_s']:>9.0f} "
            f"{r['gateway_cpu_s']:>8.1f} {len(r['errors']):>6}"
        )
    lines += [
        "",
        "New connections (connect, ClientHello, 1-byte ack, close):",
        f"  {'round':>5} {'path':<9} {'conns/s':>9} {'gw CPU s':>8} errors",
    ]
    for r in result["connections"]:
        lines.append(
            f"  {r['round']:>5} {r['path']:<9} {r['per_second']:>9.0f} "
            f"{r['gateway_cpu_s']:>8.1f} {r['errors']}"
        )
    lines.append("")
    q = result["ratios"]
    for key in sorted(q):
        target = TARGET_THROUGHPUT if key.startswith("throughput") else TARGET_CONNS
        value = q[key]
        verdict = "n/a" if value is None else ("meets" if value >= target else "BELOW")
        shown = "n/a" if value is None else f"{value:.2f}"
        if "relay" in key:
            lines.append(f"ratio relay/direct   {key:<26} {shown:>5}  (reference hop, no target)")
        else:
            lines.append(
                f"ratio gateway/direct {key:<26} {shown:>5}  (target >= {target}: {verdict})"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window")
    p.add_argument("--streams", default="1,4", help="comma-separated stream counts")
    p.add_argument("--concurrency", type=int, default=32, help="connect workers")
    p.add_argument("--paths", default=",".join(DATA_PATHS), help="gateway data paths to measure")
    p.add_argument("--rounds", type=int, default=1, help="repeat the direct/splice/protocol triple")
    p.add_argument("--no-relay", dest="relay", action="store_false",
                   help="skip the reference threaded relay")  # fmt: skip
    p.add_argument("--baseline-tree", type=Path, metavar="DIR",
                   help="also measure a splice gateway run from another source tree (e.g. "
                   "`git archive <commit> | tar -x -C DIR`), as the path 'baseline': before/after "
                   "in the same run")  # fmt: skip
    p.add_argument("--pin", action="store_true",
                   help="endpoints on the first CPU, gateways and relay on the second (both rows)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    p.add_argument("--role", choices=("sink", "ack", "relay", "send", "connect"), help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--sni", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "sink":
        role_sink(args.port)
        return 0
    if args.role == "ack":
        role_ack(args.port)
        return 0
    if args.role == "relay":
        role_relay(args.port, args.upstream)
        return 0
    if args.role == "send":
        role_send(args.target, args.sni, int(args.streams), args.seconds, args.warmup)
        return 0
    if args.role == "connect":
        role_connect(args.target, args.sni, args.concurrency, args.seconds, args.warmup)
        return 0
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    args.streams = [int(s) for s in str(args.streams).split(",") if s.strip()]
    args.paths = [s.strip() for s in str(args.paths).split(",") if s.strip()]
    if not set(args.paths) <= set(DATA_PATHS):
        p.error(f"--paths: choose among {', '.join(DATA_PATHS)}")
    # (label, data path, source tree or None for this one)
    args.gateways = [(path, path, None) for path in args.paths]
    if args.baseline_tree is not None:
        tree = args.baseline_tree.resolve()
        if not (tree / "server" / "cli.py").is_file():
            p.error(f"--baseline-tree: {tree} has no server/cli.py")
        args.gateways.append(("baseline", "splice", tree))
    return run_bench("gateway-bench-", args, run, render, log)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
