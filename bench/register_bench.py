"""Catalog registration throughput through client agents, against direct catalog writes.

Usage (from the repository root, after ``make venv``)::

    .venv/bin/python bench/register_bench.py [--services 3000] [--concurrency 32] [--json]
        [--with-check] [--rounds 1] [--profile DIR]

Method
------
Everything runs on this machine, on 127.0.0.1, with fsync on, in one run:

* three ``proconsul agent -server -bootstrap-expect=3`` processes (``bench/kv_bench.py``'s
  ``ProconsulCluster``: ``-retry-join``, ``performance.raft_multiplier = 1``, SQLite Raft log
  with fsync), and
* three client agents (``proconsul agent`` without ``-server``, ``-retry-join`` to the three
  servers), each waited for until it knows the leader and its own node is in the catalog.

Two ways to get ``--services`` N services into the catalog, measured in the same run, one after
the other (``--rounds`` repeats the pair, alternating, each round with fresh service names):

* **agent** (the number the target is about): N ``PUT /v1/agent/service/register`` requests
  (``{"Name": "agent-r<round>-<i>", "Port": ...}``, one service name each) spread round-robin
  over the three clients, ``--concurrency`` requests in flight per client (aiohttp, keep-alive).
  A client answers once its anti-entropy sync has written the service to the catalog through a
  server (client -> server RPC -> leader -> Raft commit), as Consul's agent does.
* **direct** (the peer, no agent): the same N registrations sent to the leader's
  ``PUT /v1/catalog/register`` (``{"Node": "direct-<k>", "Address": ..., "Service": ...}``,
  three synthetic nodes standing for the three clients), with the same total concurrency
  (3 x ``--concurrency``). The ratio agent/direct is the agent layer's cost.

The clock starts just before the first request is sent and stops when a poller sees all N names
in the leader's ``GET /v1/catalog/services``: every ``--poll-ms`` (1 s) while requests are in
flight (each poll serialises the whole, growing catalog on the leader: at 250 ms and ~15,000
services the polls took a quarter of the leader's samples), then back to back (5 ms apart) once
the last answer is in, so the end is found to within one poll of a few ms. Both paths answer only after the Raft apply, so
"visible" lands right after "answered". Each row gives services/s (N over that time), the
time until the last HTTP answer, p50/p99 of the register requests, errors, and the CPU seconds
(user + system, ``/proc/<pid>/stat``) each process used per 1,000 registrations. Consul's own
issue #8990 measured 26.5 registrations/s through one agent: printed as a reference line, not a
peer (it was not measured here). Target: >= 1,000 services/s through the agents.

``--with-check`` gives each service a TTL check (``"Check": {"TTL": "10m", "Status":
"passing"}``) on both paths. ``--profile DIR`` adds an extra agent round (not measured: sampling
slows the processes) with ``py-spy record`` on the first client, the leader and a follower, and writes
the raw stacks and a summary (``bench/kv_bench.py``'s ``profile_summary``) into DIR.

Caveats: the load generator, six agents and the poller share the machine's cores (2 on the CI
boxes); the load average is printed before and after. Every process the benchmark starts is
stopped by PID and its temporary directory removed (``--keep`` keeps it, with the logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kv_bench import (  # bench/ is not a package: found through sys.path
    ConsulServer,
    ProconsulCluster,
    cpu_seconds,
    free_ports,
    profile_summary,
    py_spy,
)
from raft_bench import (
    BenchError,
    Processes,
    display_path,
    http,
    loadavg,
    machine_info,
    poll,
    run_bench,
)

CONSUL_8990_PER_SECOND = 26.5  # Consul issue #8990: registrations/s through one agent
TARGET_PER_SECOND = 1000.0
CLIENTS = 3
SETTLE_TIMEOUT = 30.0  # seconds allowed after the last answer for the catalog to show all


def log(msg: str) -> None:
    print(f"[register_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the datacenter --------------------------------------------------------------------------


@dataclass
class Datacenter:
    """Three servers (``ProconsulCluster``) and three client agents."""

    procs: Processes
    root: Path
    cluster: ProconsulCluster
    clients: list[ConsulServer]

    @classmethod
    def start(cls, procs: Processes, root: Path) -> Datacenter:
        cluster = ProconsulCluster(procs, root)
        cluster.start()
        config = root / "proconsul-timing.json"  # written by cluster.start()
        ports = free_ports(2 * CLIENTS)
        clients = []
        for i in range(CLIENTS):
            c = ConsulServer(f"c{i + 1}", http=ports[2 * i], rpc=0, serf=ports[2 * i + 1])
            exe = Path(sys.executable).with_name("proconsul")
            command = [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]
            args = [
                *command, "agent", f"-node={c.name}",
                f"-data-dir={root / 'proconsul' / c.name}", "-bind=127.0.0.1",
                "-client=127.0.0.1", f"-http-port={c.http}", f"-serf-lan-port={c.serf}",
                "-dns-port=-1", f"-config-file={config}", "-log-level=warn",
                *(f"-retry-join=127.0.0.1:{s.serf}" for s in cluster.servers),
            ]  # fmt: skip
            c.proc = procs.start(f"ours-{c.name}", args)
            clients.append(c)
        return cls(procs, root, cluster, clients)

    @property
    def leader(self) -> ConsulServer:
        assert self.cluster.leader is not None
        return self.cluster.leader

    def wait_ready(self) -> None:
        leader = self.cluster.find_leader()
        log(f"leader: {leader.name} at {leader.url}")
        want = f"127.0.0.1:{leader.rpc}"

        def clients_ready() -> bool:
            for c in self.clients:
                if http("GET", c.url + "/v1/status/leader", timeout=2)[1] != want:
                    return False
            code, nodes = http("GET", leader.url + "/v1/catalog/nodes", timeout=5)
            names = {n["Node"] for n in nodes} if code == 200 else set()
            return all(c.name in names for c in self.clients)

        poll(clients_ready, 90, "the clients to join and appear in the catalog", self.procs)

    def pids(self) -> dict[str, int]:
        """Role -> pid: the leader, the two followers, the three clients."""
        out = {f"leader {self.leader.name}": self.leader.proc.pid}  # type: ignore[union-attr]
        for s in self.cluster.servers:
            if s is not self.leader:
                out[f"follower {s.name}"] = s.proc.pid  # type: ignore[union-attr]
        for c in self.clients:
            out[f"client {c.name}"] = c.proc.pid  # type: ignore[union-attr]
        return out


# --- one measured phase ----------------------------------------------------------------------


def service_body(name: str, i: int, with_check: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"Name": name, "ID": name, "Port": 10000 + i % 50000, "Tags": ["b"]}
    if with_check:
        body["Check"] = {"TTL": "10m", "Status": "passing"}
    return body


def requests_for(
    path: str, dc: Datacenter, prefix: str, n: int, with_check: bool
) -> list[tuple[str, list[bytes]]]:
    """(base URL, request bodies) for each of the three targets."""
    per: list[list[bytes]] = [[] for _ in range(CLIENTS)]
    for i in range(n):
        k = i % CLIENTS
        svc = service_body(f"{prefix}-{i:05d}", i, with_check)
        if path == "agent":
            per[k].append(json.dumps(svc).encode())
        else:
            check = svc.pop("Check", None)
            svc["Service"] = svc.pop("Name")  # the catalog's NodeService spelling
            req: dict[str, Any] = {
                "Node": f"direct-{k + 1}",
                "Address": f"127.0.1.{k + 1}",
                "Service": svc,
            }
            if check is not None:
                req["Check"] = {
                    "CheckID": f"service:{svc['ID']}",
                    "Name": f"Service '{svc['Service']}' check",
                    "Status": "passing",
                    "ServiceID": svc["ID"],
                }
            per[k].append(json.dumps(req).encode())
    if path == "agent":
        return [(c.url + "/v1/agent/service/register", per[k]) for k, c in enumerate(dc.clients)]
    return [(dc.leader.url + "/v1/catalog/register", per[k]) for k in range(CLIENTS)]


async def send_all(
    url: str, bodies: list[bytes], concurrency: int, latencies: list[float], errors: list[str]
) -> None:
    queue = list(reversed(bodies))
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                start = time.perf_counter()
                try:
                    async with session.put(url, data=body) as resp:
                        text = await resp.text()
                        if resp.status != 200:
                            errors.append(f"{resp.status}: {text[:200]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def watch_catalog(
    url: str, prefix: str, n: int, poll_s: float, deadline: float, done: asyncio.Event
) -> tuple[float | None, list[tuple[float, int]]]:
    """Poll ``/v1/catalog/services`` until all n names with ``prefix`` show; returns the
    perf_counter time they did (None on timeout) and the (time, count) timeline."""
    timeline: list[tuple[float, int]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while time.perf_counter() < deadline:
            async with session.get(url + "/v1/catalog/services") as resp:
                names = await resp.json() if resp.status == 200 else {}
            now = time.perf_counter()
            count = sum(1 for name in names if name.startswith(prefix + "-"))
            timeline.append((now, count))
            if count >= n:
                return now, timeline
            # Once every answer is in, look again at once: the tail decides the result.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), poll_s)
            if done.is_set():
                poll_s = min(poll_s, 0.005)
                deadline = min(deadline, time.perf_counter() + SETTLE_TIMEOUT)
    return None, timeline


async def phase_async(
    targets: list[tuple[str, list[bytes]]],
    concurrency: int,
    watch_url: str,
    prefix: str,
    n: int,
    poll_s: float,
    timeout: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    done = asyncio.Event()
    t0 = time.perf_counter()
    watcher = asyncio.create_task(watch_catalog(watch_url, prefix, n, poll_s, t0 + timeout, done))
    await asyncio.gather(
        *(send_all(url, bodies, concurrency, latencies, errors) for url, bodies in targets)
    )
    answered = time.perf_counter()
    done.set()
    visible, timeline = await watcher
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "answered_s": answered - t0,
        "visible_s": None if visible is None else visible - t0,
        "per_second": 0.0 if visible is None else n / (visible - t0),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "first_errors": errors[:3],
        "polls": len(timeline),
        # Visible count at 1/4, 1/2 and 3/4 of the run: is the rate steady or does it decay?
        "quartile_counts": [
            next((c for t, c in timeline if t - t0 >= q * (timeline[-1][0] - t0)), 0)
            for q in (0.25, 0.5, 0.75)
        ]
        if timeline
        else [],
    }


def measure(
    dc: Datacenter,
    path: str,
    prefix: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    dc.procs.check_alive()
    n, conc = args.services, args.concurrency
    targets = requests_for(path, dc, prefix, n, args.with_check)
    where = (
        "3 clients' /v1/agent/service/register"
        if path == "agent"
        else ("the leader's /v1/catalog/register")
    )
    log(f"{path}: {n} services through {where}, {conc} in flight per target ({3 * conc} total)")
    pids = dc.pids()
    cpu_before = cpu_seconds(list(pids.values()))
    row = asyncio.run(
        phase_async(targets, conc, dc.leader.url, prefix, n, args.poll_ms / 1000, args.timeout)
    )
    cpu = [b - a for a, b in zip(cpu_before, cpu_seconds(list(pids.values())), strict=True)]
    row["cpu_s_per_1000"] = {
        role: round(1000 * c / n, 3) for role, c in zip(pids, cpu, strict=True)
    }
    row.update(path=path, prefix=prefix, services=n, load=loadavg())
    if row["visible_s"] is None:
        raise BenchError(
            f"{path}: not all {n} services visible within {args.timeout:g} s "
            f"(or {SETTLE_TIMEOUT:g} s after the last answer) "
            f"({row['errors']} errors, e.g. {row['first_errors']})"
        )
    log(f"  {row['per_second']:.0f} services/s (all visible after {row['visible_s']:.2f} s, "
        f"answered after {row['answered_s']:.2f} s), p50 {row['p50_ms']:.1f} ms, "
        f"p99 {row['p99_ms']:.1f} ms, {row['errors']} errors")  # fmt: skip
    log(f"  CPU s per 1000 registrations: {row['cpu_s_per_1000']}")
    return row


def profiled_round(dc: Datacenter, args: argparse.Namespace, out_dir: Path) -> list[str]:
    """An extra agent round while py-spy samples the first client, the leader and a follower
    (which relays a third of the clients' writes to the leader)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [
        ("client", dc.clients[0].proc.pid),  # type: ignore[union-attr]
        ("leader", dc.leader.proc.pid),  # type: ignore[union-attr]
        ("follower", dc.cluster.follower().proc.pid),  # type: ignore[union-attr]
    ]
    spies = []
    for role, pid in targets:
        raw = out_dir / f"agent-{role}.txt"
        spy = subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
             "--nonblocking", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        spies.append((role, pid, raw, spy))
    time.sleep(1.0)  # let py-spy attach
    try:
        row = measure(dc, "agent", "profiled", args)
    finally:
        for _, _, _, spy in spies:
            # SIGINT makes py-spy stop sampling and write its output.
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
        for _, _, _, spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                Processes.stop(spy)
    texts = []
    for role, pid, raw, _ in spies:
        text = (
            f"profile of the {role} (pid {pid}) during agent registrations "
            f"({row['per_second']:.0f} services/s while sampled):\n{profile_summary(raw)}"
        )
        (out_dir / f"agent-{role}-summary.txt").write_text(text + "\n")
        texts.append(text)
    return texts


# --- the benchmark ---------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([display_path(sys.executable), *sys.argv]),
        "services": args.services,
        "concurrency_per_target": args.concurrency,
        "with_check": args.with_check,
        "machine": machine_info(root),
        "load_before": loadavg(),
    }
    log(f"starting 3 servers and 3 client agents in {root}")
    dc = Datacenter.start(procs, root)
    dc.wait_ready()
    if args.warmup:
        log(f"warm-up: {args.warmup} registrations on each path")
        warm = argparse.Namespace(**{**vars(args), "services": args.warmup})
        measure(dc, "agent", "warm-agent", warm)
        measure(dc, "direct", "warm-direct", warm)
    rows = []
    for r in range(args.rounds):
        for path in ("agent", "direct"):
            rows.append(measure(dc, path, f"{path}-r{r + 1}", args))
    result["rows"] = rows
    agent = [r["per_second"] for r in rows if r["path"] == "agent"]
    direct = [r["per_second"] for r in rows if r["path"] == "direct"]
    result["agent_per_second"] = sum(agent) / len(agent)
    result["direct_per_second"] = sum(direct) / len(direct)
    result["ratio_agent_over_direct"] = result["agent_per_second"] / result["direct_per_second"]
    result["ratio_agent_over_consul_8990"] = result["agent_per_second"] / CONSUL_8990_PER_SECOND
    result["target_met"] = result["agent_per_second"] >= TARGET_PER_SECOND
    if args.profile:
        result["profiles"] = profiled_round(dc, args, Path(args.profile))
    result["load_after"] = loadavg()
    return result


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"date: {result['date']}   command: {result['command']}",
        f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"tmp on {m['tmp_dir_fs']}, Python {m['python']}",
        f"load average before: {result['load_before']}   after: {result['load_after']}",
        "",
        f"{result['services']} services per row, {result['concurrency_per_target']} requests "
        f"in flight per target (3 targets), TTL check per service: {result['with_check']}",
        f"  {'path':<7} {'services/s':>10} {'visible s':>9} {'answered s':>10} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6}  CPU s per 1000 registrations",
    ]
    for r in result["rows"]:
        cpu = ", ".join(f"{role} {v:.2f}" for role, v in r["cpu_s_per_1000"].items())
        lines.append(
            f"  {r['path']:<7} {r['per_second']:>10.0f} {r['visible_s']:>9.2f} "
            f"{r['answered_s']:>10.2f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
            f"{r['errors']:>6}  {cpu}"
        )
    lines += [
        "",
        f"ratio agent/direct (peer, same run): {result['ratio_agent_over_direct']:.2f}  "
        f"({result['agent_per_second']:.0f} vs {result['direct_per_second']:.0f} services/s)",
        f"reference (not a peer): Consul issue #8990, {CONSUL_8990_PER_SECOND} services/s "
        f"through one agent: agent path here is {result['ratio_agent_over_consul_8990']:.1f}x",
        f"target >= {TARGET_PER_SECOND:,.0f} services/s through the agents: "
        + ("met" if result["target_met"] else "MISSED"),
    ]
    for text in result.get("profiles", []):
        lines += ["", text]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--services", type=int, default=3000, help="registrations per measured row")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight per target")
    p.add_argument("--rounds", type=int, default=1, help="(agent, direct) pairs to measure")
    p.add_argument("--warmup", type=int, default=300, help="registrations per warm-up row")
    p.add_argument("--with-check", action="store_true", help="a TTL check with each service")
    p.add_argument(
        "--poll-ms", type=float, default=1000.0, help="catalog poll interval while requests run"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per row")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--profile", metavar="DIR", help="py-spy an extra agent round into DIR")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = p.parse_args()
    if args.services <= 0 or args.concurrency <= 0 or args.rounds <= 0:
        p.error("--services, --concurrency and --rounds must be positive")

    return run_bench("register-bench-", args, run, render, log)


if __name__ == "__main__":
    sys.exit(main())
