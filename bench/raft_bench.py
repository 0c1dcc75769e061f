"""Raft benchmark: committed proposals/s and latency of a 3-process cluster, against etcd.

Usage (from the repository root, after ``make venv``)::

    .venv/bin/python bench/raft_bench.py [--seconds 10] [--skip-etcd] [--json]

Method
------
Everything runs on this machine, on 127.0.0.1, with fsync on:

* **Ours**: three ``python -m raft.kvnode`` processes (gRPC transport, SQLite storage with
  fsync, KV FSM), bootstrapped as one cluster in a temporary directory (``$TMPDIR``).
* **Peer**: a three-member etcd cluster (Debian's ``etcd-server``, 3.4), also in a temporary
  directory; etcd fsyncs its WAL by default.

Two measurements:

1. *Raft core* (ours only): ``POST /bench`` on our leader runs N proposers inside the leader
   process (no HTTP, no client) for ``--seconds``, at N = 1 and N = 64, after a short warm-up.
   It reports committed proposals/s, p50/p99 proposal latency and entries per fsync. This is
   the number the issue's target (>= 10,000 committed/s at 64 proposers) is about. etcd has
   no equivalent in-process hook, so this row has no peer of its own.
2. *HTTP path* (ours vs etcd, same client): ``wrk`` with a Lua script written by this
   benchmark sends keep-alive ``POST`` requests to each system's leader, with the same 1024
   cycling keys and 100-byte values: ``POST /put {"key", "value"}`` for ours,
   ``POST /v3/kv/put {"key": b64, "value": b64}`` (grpc-gateway) for etcd. ``-t1 -c1`` and
   ``-t2 -c64``, ``--seconds`` each, after a short warm-up of each system; the runs alternate
   (ours, etcd, ours, etcd) so both see similar background load. Both clusters stay up for
   the whole HTTP phase; the idle one only sends heartbeats. Each row gives requests/s
   (2xx only), p50/p99 from wrk's latency histogram, and proposals per fsync on the leader
   (ours: from ``/status``; etcd: from ``etcd_disk_wal_fsync_duration_seconds_count``).
   The printed ratio is ours/etcd requests/s at each concurrency.

Caveats
-------
* wrk, the three servers and the benchmark share the machine's cores (2 on the CI boxes), so
  the client competes with the servers; this affects both systems, which is why only the
  ratio is meaningful. The load average is printed before and after; other jobs on a shared
  machine move the absolute numbers a lot.
* wrk is closed-loop (each connection waits for its answer), like the in-process proposers:
  the latencies are service times under that concurrency, not latencies at a fixed rate.
* The Raft-core row excludes HTTP and JSON parsing, etcd's rows include them; comparing the
  Raft-core row with etcd's HTTP row favours ours.
* fsync cost depends on the filesystem under ``$TMPDIR``; both systems use the same one.

If ``etcd`` or ``wrk`` is missing and we run as root, they are installed with
``apt-get install -y etcd-server wrk`` (``--no-install`` disables that); otherwise the
benchmark says how to install them and exits. Every process it starts is stopped by PID
(SIGTERM, then SIGKILL after a grace period) and its temporary directory removed, also on
Ctrl-C or error (``--keep`` keeps the directory, with every process's log, for debugging).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE = 8.0  # seconds between SIGTERM and SIGKILL (an etcd leader lingers a few seconds)
KEYS = 1024  # distinct keys cycled through by the HTTP load
VALUE_SIZE = 100  # bytes, the same as POST /bench's default payload
CONCURRENCIES = (1, 64)
APT_PACKAGES = ("etcd-server", "wrk")


class BenchError(Exception):
    """A failure that ends the benchmark with a message (and the tails of the logs)."""


def log(msg: str) -> None:
    print(f"[raft_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------------


class Processes:
    """Every child process the benchmark starts; ``stop_all()`` reaps each one by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        # Stopped (and waited for) before the others: an etcd leader whose followers are
        # already gone spends seconds trying to hand its leadership over before it exits.
        self.stop_first: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        logfile = self.root / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with logfile.open("ab") as out:
            # A session of its own: Ctrl-C reaches only the benchmark, which stops the
            # children itself in an orderly way.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        self.procs.append((name, proc, logfile))
        return proc

    def run(self, name: str, args: list[str], timeout: float) -> str:
        """Run a child to completion and return its output (stdout and stderr)."""
        proc = self.start(name, args)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise BenchError(f"{name} did not finish within {timeout:.0f} s") from None
        return (self.root / f"{name}.log").read_text(errors="replace")

    def check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if name.startswith(("ours-", "etcd-")) and proc.poll() is not None:
                raise BenchError(f"{name} (pid {proc.pid}) exited with {proc.returncode}")

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.stop_first:
            self.stop(proc)
        running = [proc for _, proc, _ in self.procs if proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for name, _, path in self.procs:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            if text:
                parts.append(f"----- {name} ({path.name}, last {lines} lines) -----")
                parts.extend(text[-lines:])
        return "\n".join(parts)


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


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One HTTP request; returns (status, decoded JSON body or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def poll(check: Any, timeout: float, what: str, procs: Processes) -> Any:
    """Call ``check()`` until it returns something truthy (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            result = check()
            if result:
                return result
        time.sleep(0.2)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- the two clusters ------------------------------------------------------------------------


@dataclass
class OurCluster:
    """Three ``raft.kvnode`` processes; ``leader_url`` once a leader is agreed."""

    procs: Processes
    root: Path
    http_urls: dict[str, str] = field(default_factory=dict)
    leader_url: str = ""

    def start(self) -> None:
        ports = free_ports(6)
        ids = ["n1", "n2", "n3"]
        raft = {node: f"127.0.0.1:{ports[2 * i]}" for i, node in enumerate(ids)}
        peers = ",".join(f"{node}={addr}" for node, addr in raft.items())
        for i, node in enumerate(ids):
            http_addr = f"127.0.0.1:{ports[2 * i + 1]}"
            self.http_urls[node] = f"http://{http_addr}"
            args = [
                sys.executable, "-m", "raft.kvnode", "--id", node,
                "--raft-addr", raft[node], "--http-addr", http_addr,
                "--data-dir", str(self.root / "ours" / node), "--peers", peers, "--bootstrap",
            ]  # fmt: skip
            self.procs.start(f"ours-{node}", args, cwd=REPO_ROOT)

    def find_leader(self) -> str:
        def agreed() -> str | None:
            stats = [http("GET", url + "/status", timeout=2)[1] for url in self.http_urls.values()]
            leaders = {s["leader"] for s in stats}
            if len(leaders) != 1 or None in leaders:
                return None
            leader = leaders.pop()
            ok = any(s["node"] == leader and s["role"] == "leader" for s in stats)
            return leader if ok else None

        leader: str = poll(agreed, 60, "our cluster to elect a leader", self.procs)
        self.leader_url = self.http_urls[leader]
        return leader

    def leader_stats(self) -> dict[str, Any]:
        status, stats = http("GET", self.leader_url + "/status")
        if status != 200 or stats.get("role") != "leader":
            raise BenchError(f"our leader {self.leader_url} is no longer leading: {stats}")
        result: dict[str, Any] = stats
        return result

    def bench(self, proposers: int, seconds: float) -> dict[str, Any]:
        status, body = http(
            "POST",
            self.leader_url + "/bench",
            {"proposers": proposers, "seconds": seconds, "size": VALUE_SIZE},
            timeout=seconds + 60,
        )
        if status != 200:
            raise BenchError(f"POST /bench answered {status}: {body}")
        result: dict[str, Any] = body
        return result


@dataclass
class EtcdCluster:
    """Three etcd members; ``leader_url`` is the client URL of the member that leads."""

    procs: Processes
    root: Path
    client_urls: dict[str, str] = field(default_factory=dict)
    members: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    leader_url: str = ""
    version: str = ""

    def start(self) -> None:
        ports = free_ports(6)
        names = ["e1", "e2", "e3"]
        peer_urls = {name: f"http://127.0.0.1:{ports[2 * i]}" for i, name in enumerate(names)}
        initial = ",".join(f"{name}={url}" for name, url in peer_urls.items())
        token = f"raft-bench-{os.getpid()}-{time.time_ns()}"
        for i, name in enumerate(names):
            client = f"http://127.0.0.1:{ports[2 * i + 1]}"
            self.client_urls[name] = client
            args = [
                "etcd", "--name", name, "--data-dir", str(self.root / "etcd" / name),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer_urls[name],
                "--initial-advertise-peer-urls", peer_urls[name],
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
            ]  # fmt: skip
            self.members[name] = self.procs.start(f"etcd-{name}", args)

    def status(self, url: str) -> dict[str, Any]:
        code, body = http("POST", url + "/v3/maintenance/status", {}, timeout=2)
        if code != 200:
            raise ValueError(f"status {code}")
        result: dict[str, Any] = body
        return result

    def find_leader(self) -> str:
        def agreed() -> str | None:
            stats = {name: self.status(url) for name, url in self.client_urls.items()}
            leaders = {s.get("leader", "0") for s in stats.values()}
            if len(leaders) != 1 or "0" in leaders:
                return None
            leader_id = leaders.pop()
            for name, s in stats.items():
                if s["header"]["member_id"] == leader_id:
                    self.version = s.get("version", "")
                    return name
            return None

        leader: str = poll(agreed, 60, "etcd to elect a leader", self.procs)
        self.leader_url = self.client_urls[leader]
        self.procs.stop_first.append(self.members[leader])
        # The grpc-gateway path differs between releases (/v3 on 3.4+, /v3beta on 3.3).
        code, body = http("POST", self.leader_url + "/v3/kv/put", etcd_put_body("probe"))
        if code != 200 or "header" not in body:
            raise BenchError(f"etcd POST /v3/kv/put answered {code}: {body}")
        return leader

    def fsyncs(self) -> float:
        """WAL fsyncs done so far by the leader (from its Prometheus metrics)."""
        with urllib.request.urlopen(self.leader_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        m = re.search(r"^etcd_disk_wal_fsync_duration_seconds_count\s+(\S+)$", text, re.M)
        return float(m.group(1)) if m else float("nan")

    def raft_index(self) -> int:
        return int(self.status(self.leader_url)["raftIndex"])


def etcd_put_body(key: str, value: str = "x" * VALUE_SIZE) -> dict[str, str]:
    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    return {"key": b64(key), "value": b64(value)}


# --- wrk -------------------------------------------------------------------------------------

WRK_LUA = """\
-- Written by bench/raft_bench.py: cycles through pre-encoded JSON bodies.
local bodies = {
%(bodies)s
}
local n = #bodies
local i = 0
local headers = { ["Content-Type"] = "application/json" }

function setup(thread)
  thread:set("offset", math.random(0, n - 1))
end

function init(args)
  i = offset or 0
end

function request()
  i = i + 1
  return wrk.format("POST", "%(path)s", headers, bodies[(i %% n) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect_errors":%%d,"read_errors":%%d,' ..
    '"write_errors":%%d,"status_errors":%%d,"timeouts":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"mean_us":%%.1f,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def write_lua(path: Path, url_path: str, bodies: list[str]) -> None:
    for body in bodies:
        if "]]" in body or "\n" in body:
            raise BenchError(f"body cannot be a Lua long string: {body!r}")
    text = WRK_LUA % {"path": url_path, "bodies": ",\n".join(f"  [[{b}]]" for b in bodies)}
    path.write_text(text)


def lua_scripts(root: Path) -> dict[str, Path]:
    keys = [f"wrk-{i:04d}" for i in range(KEYS)]
    value = "x" * VALUE_SIZE
    ours = root / "ours.lua"
    write_lua(ours, "/put", [json.dumps({"key": k, "value": value}) for k in keys])
    etcd = root / "etcd.lua"
    write_lua(etcd, "/v3/kv/put", [json.dumps(etcd_put_body(k, value)) for k in keys])
    return {"ours": ours, "etcd": etcd}


def run_wrk(
    procs: Processes, name: str, url: str, script: Path, connections: int, seconds: float
) -> dict[str, Any]:
    threads = 1 if connections == 1 else 2
    args = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "--latency", "-s", str(script), url,
    ]  # fmt: skip
    out = procs.run(name, args, timeout=seconds + 60)
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            break
    else:
        raise BenchError(f"no WRKJSON line in wrk's output:\n{out}")
    duration = result["duration_us"] / 1e6
    ok = result["requests"] - result["status_errors"]
    errors = sum(result[k] for k in result if k.endswith("_errors")) + result["timeouts"]
    result.update(
        connections=connections,
        threads=threads,
        per_second=ok / duration if duration else 0.0,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=errors,
        ok=ok,
    )
    return result


# --- environment -----------------------------------------------------------------------------


def ensure_tools(need_etcd: bool, install: bool) -> None:
    missing = [
        tool for tool in (["wrk"] + (["etcd"] if need_etcd else [])) if not shutil.which(tool)
    ]
    if not missing:
        return
    packages = ["etcd-server" if tool == "etcd" else tool for tool in missing]
    how = f"apt-get install -y {' '.join(packages)}"
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(
            f"raft_bench: {', '.join(missing)} not found; install with `{how}` (as root), "
            "or run `make bench`, which does"
        )
    log(f"{', '.join(missing)} not found: {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", *packages], check=True, env=env, stdout=sys.stderr)
    still = [tool for tool in missing if not shutil.which(tool)]
    if still:
        raise SystemExit(f"raft_bench: {', '.join(still)} still missing after `{how}`")


def tool_version(args: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else ""
    return ""


def machine_info(tmp: Path) -> dict[str, Any]:
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
    fs = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["df", "--output=source,fstype", str(tmp)], capture_output=True, text=True, timeout=10
        )
        fs = " ".join(out.stdout.split()[2:])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gib": round(mem_gib, 1),
        "tmp_dir_fs": fs,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "etcd": tool_version(["etcd", "--version"]).replace("etcd Version:", "etcd").strip(),
        "wrk": " ".join(tool_version(["wrk", "-v"]).split()[:2]),
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def display_path(path: str) -> str:
    """``path`` relative to the working directory when it is below it (.venv/bin/python)."""
    with contextlib.suppress(ValueError):
        return str(Path(path).absolute().relative_to(Path.cwd()))
    return path


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- the benchmark ---------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM/SIGHUP end the benchmark like Ctrl-C does: through the ``finally`` clauses."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    seconds, warmup = args.seconds, args.warmup
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([display_path(sys.executable), *sys.argv]),
        "seconds": seconds,
        "machine": machine_info(root),
        "load_before": loadavg(),
    }
    ours = OurCluster(procs, root)
    etcd = EtcdCluster(procs, root)
    log(f"starting our 3-node cluster in {root}")
    ours.start()
    if not args.skip_etcd:
        log("starting a 3-member etcd cluster")
        etcd.start()
    leader = ours.find_leader()
    log(f"our leader: {leader} at {ours.leader_url}")
    if not args.skip_etcd:
        log(f"etcd leader: {etcd.find_leader()} at {etcd.leader_url} (etcd {etcd.version})")

    # 1. Raft core: in-process proposers on our leader.
    if warmup > 0:
        log(f"warm-up: POST /bench proposers=64 for {warmup:g} s")
        ours.bench(64, warmup)
    core = []
    for n in CONCURRENCIES:
        log(f"Raft core: POST /bench proposers={n} for {seconds:g} s")
        row = ours.bench(n, seconds)
        row["load"] = loadavg()
        core.append(row)
        log(f"  {row['per_second']:.0f} committed/s, p50 {row['p50_ms']:.2f} ms, "
            f"p99 {row['p99_ms']:.2f} ms, {row['entries_per_fsync']:.1f} entries/fsync")  # fmt: skip
    result["raft_core"] = core

    # 2. HTTP path: the same wrk load against both systems, alternating.
    scripts = lua_scripts(root)
    systems: list[tuple[str, str]] = [("ours", ours.leader_url)]
    if not args.skip_etcd:
        systems.append(("etcd", etcd.leader_url))
    if warmup > 0:
        for system, url in systems:
            log(f"warm-up: wrk -c64 on {system} for {max(1, round(warmup))} s")
            run_wrk(procs, f"wrk-warmup-{system}", url, scripts[system], 64, warmup)
    http_rows = []
    for conns in CONCURRENCIES:
        for system, url in systems:
            procs.check_alive()
            before = ours.leader_stats() if system == "ours" else None
            etcd_before = (etcd.fsyncs(), etcd.raft_index()) if system == "etcd" else None
            log(f"HTTP: wrk -c{conns} on {system} for {max(1, round(seconds))} s")
            row = run_wrk(procs, f"wrk-{system}-c{conns}", url, scripts[system], conns, seconds)
            row["system"] = system
            row["load"] = loadavg()
            if before is not None:
                after = ours.leader_stats()
                saves = after["saves"] - before["saves"]
                entries = after["entries_saved"] - before["entries_saved"]
                row["entries_per_fsync"] = entries / saves if saves else 0.0
            if etcd_before is not None:
                fsyncs = etcd.fsyncs() - etcd_before[0]
                entries = etcd.raft_index() - etcd_before[1]
                row["entries_per_fsync"] = entries / fsyncs if fsyncs else 0.0
            log(f"  {row['per_second']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, {row['errors']} errors")  # fmt: skip
            http_rows.append(row)
    result["http"] = http_rows
    ratios = []
    for conns in CONCURRENCIES:
        by = {r["system"]: r for r in http_rows if r["connections"] == conns}
        if "ours" in by and "etcd" in by and by["etcd"]["per_second"]:
            ratios.append({
                "connections": conns,
                "throughput_ours_over_etcd": by["ours"]["per_second"] / by["etcd"]["per_second"],
                "p50_ours_over_etcd": by["ours"]["p50_ms"] / by["etcd"]["p50_ms"]
                if by["etcd"]["p50_ms"] else None,
                "p99_ours_over_etcd": by["ours"]["p99_ms"] / by["etcd"]["p99_ms"]
                if by["etcd"]["p99_ms"] else None,
            })  # fmt: skip
    result["ratios"] = ratios
    result["load_after"] = loadavg()
    return result


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"date: {result['date']}   command: {result['command']}",
        f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"tmp on {m['tmp_dir_fs']}, Python {m['python']}, {m['etcd']}, {m['wrk']}",
        f"load average before: {result['load_before']}   after: {result['load_after']}",
        "",
        f"Raft core (POST /bench, in-process proposers on our leader, {result['seconds']:g} s "
        "each; target >= 10,000/s at 64):",
        f"  {'proposers':>9} {'committed/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'entries/fsync':>13} {'errors':>6}",
    ]
    for r in result["raft_core"]:
        lines.append(
            f"  {r['proposers']:>9} {r['per_second']:>12.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['entries_per_fsync']:>13.1f} {r['errors']:>6}"
        )
    if result["http"]:
        lines += [
            "",
            "HTTP path (wrk, POST on the leader, same keys and 100-byte values):",
            f"  {'system':<6} {'conns':>5} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'entries/fsync':>13} {'errors':>6}",
        ]
        for r in result["http"]:
            lines.append(
                f"  {r['system']:<6} {r['connections']:>5} {r['per_second']:>11.0f} "
                f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r.get('entries_per_fsync', 0.0):>13.1f} {r['errors']:>6}"
            )
    if result["ratios"]:
        lines.append("")
        for q in result["ratios"]:
            lines.append(
                f"ratio ours/etcd at {q['connections']:>2} connection(s): "
                f"throughput {q['throughput_ours_over_etcd']:.2f}, "
                f"p50 latency {fmt_ratio(q['p50_ours_over_etcd'])}, "
                f"p99 latency {fmt_ratio(q['p99_ours_over_etcd'])}"
            )
    else:
        lines += ["", "no peer measured (--skip-etcd): these numbers are not a result"]
    return "\n".join(lines)


def run_bench(
    prefix: str,
    args: argparse.Namespace,
    run_fn: Callable[[argparse.Namespace, Path, Processes], dict[str, Any]],
    render_fn: Callable[[dict[str, Any]], str],
    log: Callable[[str], None] = log,
) -> int:
    """Run one benchmark in a fresh temp dir: every process it starts is stopped (by PID)
    whatever happens, the result printed as text or ``--json``; returns the exit status."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes(root)
    status = 1
    try:
        with terminate_on_sigterm():
            result = run_fn(args, root, procs)
        print(json.dumps(result, indent=2) if args.json else render_fn(result), flush=True)
        status = 0
    except BenchError as exc:
        log(f"FAILED: {exc}")
        print(procs.log_tails(), file=sys.stderr)
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    finally:
        # Nothing interrupts the clean-up: a second Ctrl-C would leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("stopping every process started")
        procs.stop_all()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return status


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="length of each warm-up run")
    p.add_argument("--skip-etcd", action="store_true", help="measure only our cluster")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--no-install", action="store_true", help="never apt-get install tools")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = p.parse_args()
    if args.seconds <= 0:
        p.error("--seconds must be positive")

    ensure_tools(need_etcd=not args.skip_etcd, install=not args.no_install)
    return run_bench("raft-bench-", args, run, render)


if __name__ == "__main__":
    sys.exit(main())
