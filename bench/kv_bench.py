"""KV benchmark: Consul KV API writes and reads on a 3-server Proconsul cluster, against etcd.

Usage (from the repository root, after ``make venv``)::

    .venv/bin/python bench/kv_bench.py [--seconds 10] [--skip-etcd] [--json] [--profile DIR]

Method
------
Everything runs on this machine, on 127.0.0.1, with fsync on, in one run:

* **Ours**: three ``proconsul agent -server -bootstrap-expect=3`` processes formed through
  ``-retry-join`` (LAN serf) with ``performance.raft_multiplier = 1``, each with its own data
  directory under ``$TMPDIR`` (SQLite Raft log with fsync).
* **Peer**: a three-member etcd cluster (Debian's ``etcd-server``) started by
  ``bench/raft_bench.py``'s ``EtcdCluster``, reached through its HTTP/JSON grpc-gateway.

The load generator is ``wrk`` (keep-alive connections, closed loop) with a Lua script written by
this benchmark; the same 1024 keys (``kvbench/0000`` .. ``kvbench/1023``) and 100-byte values
on both systems, ``-t1 -c1`` and ``-t2 -c64``, ``--seconds`` each, after a warm-up; runs
alternate (ours, etcd) so both see similar background load:

* **write**: ``PUT /v1/kv/<key>`` (raw value body) on our Raft leader, against
  ``POST /v3/kv/put {"key": b64, "value": b64}`` on etcd's leader. Both answer only once the
  write is committed by a quorum and applied.
* **read**: ``GET /v1/kv/<key>`` (Consul's default consistency: the leader answers from its
  state store) on our leader, against etcd's linearizable range ``POST /v3/kv/range
  {"key": b64}`` (the default, ``serializable: false``) on etcd's leader. Every key is written
  before the reads.
* **write via follower** (ours only, at 64 connections): the same PUTs sent to a follower,
  which forwards each one to the leader over gRPC (``ForwardHTTP``), as Consul's servers
  forward writes over RPC; shows the forwarding cost.

Each row gives requests/s (2xx only), p50/p99 from wrk's latency histogram, errors, and the CPU
time (user + system, from ``/proc/<pid>/stat``) that the system's three server processes used
per request during the run, in total and for the leader alone. The ratios printed are ours/etcd
throughput and p99 latency for each operation and concurrency, checked against the targets
(writes at c=64 >= 1.2x with p99 <= etcd's; writes at c=1 >= 1.0x; reads at c=64 >= 1.2x).

Our servers answer plain KV GETs and PUTs on the leader with the lean front end
(``server/http/lean.py``) and everything else with aiohttp; ``--no-lean`` starts them with
``PROCONSUL_LEAN_HTTP=0`` (aiohttp only) to measure what the front end changes.

``--profile DIR`` also runs ``py-spy record`` (``pip install py-spy`` into the venv; not a
dependency) on our leader during extra runs (writes at 64 and 1 connections, reads at 64; not
the measured ones: sampling slows the leader a little), and on a follower too during writes at
1 connection (where a write is a chain through both), writes the collapsed stacks and a
summary into DIR and prints the summary: samples by layer (the innermost frame that belongs to
a known layer: SQLite/aiosqlite, gRPC, the Raft core and driver, the state store, the endpoints,
the lean front end, aiohttp, the asyncio loop) and the top functions by self and inclusive time.
py-spy may count a thread blocked in ``fsync`` as busy, so the aiosqlite thread's share is not
all CPU; the CPU column of the table is.

Caveats: wrk, six servers and the benchmark share the machine's cores (2 on the CI boxes), so
only the ratio is meaningful; the load average is printed before and after. Every process the
benchmark starts is stopped by PID, and its temporary directory removed (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raft_bench import (  # bench/ is not a package: found through sys.path
    BenchError,
    EtcdCluster,
    Processes,
    display_path,
    ensure_tools,
    http,
    loadavg,
    machine_info,
    poll,
    run_bench,
    run_wrk,
)

KEYS = 1024
VALUE_SIZE = 100
VALUE = "v" * VALUE_SIZE
CONCURRENCIES = (1, 64)
KEY_NAMES = [f"kvbench/{i:04d}" for i in range(KEYS)]
TARGETS = {  # (op, connections) -> minimum throughput ratio ours/etcd
    ("write", 64): 1.2,
    ("write", 1): 1.0,
    ("read", 64): 1.2,
}


def log(msg: str) -> None:
    print(f"[kv_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 for both TCP and UDP (serf uses both)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("127.0.0.1", s.getsockname()[1]))
            except OSError:
                s.close()
                u.close()
                continue
            held += [s, u]
            ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in held:
            s.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- our cluster -----------------------------------------------------------------------------


@dataclass
class ConsulServer:
    name: str
    http: int
    rpc: int
    serf: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"


@dataclass
class ProconsulCluster:
    """Three ``proconsul agent -server`` processes; ``leader`` once they agree on one."""

    procs: Processes
    root: Path
    servers: list[ConsulServer] = field(default_factory=list)
    leader: ConsulServer | None = None
    no_lean: bool = False

    def start(self) -> None:
        ports = free_ports(9)
        config = self.root / "proconsul-timing.json"
        config.write_text(json.dumps({"performance": {"raft_multiplier": 1}}))
        exe = Path(sys.executable).with_name("proconsul")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]
        self.servers = [ConsulServer(f"s{i + 1}", *ports[3 * i : 3 * i + 3]) for i in range(3)]
        if self.no_lean:
            os.environ["PROCONSUL_LEAN_HTTP"] = "0"  # inherited by the servers only
        for s in self.servers:
            joins = [f"-retry-join=127.0.0.1:{o.serf}" for o in self.servers if o is not s]
            args = [
                *command, "agent", "-server", "-bootstrap-expect=3", f"-node={s.name}",
                f"-data-dir={self.root / 'proconsul' / s.name}", "-bind=127.0.0.1",
                "-client=127.0.0.1", f"-http-port={s.http}", f"-server-port={s.rpc}",
                f"-serf-lan-port={s.serf}", "-serf-wan-port=0", "-dns-port=-1",
                f"-config-file={config}", "-log-level=warn", *joins,
            ]  # fmt: skip
            s.proc = self.procs.start(f"ours-{s.name}", args)
        os.environ.pop("PROCONSUL_LEAN_HTTP", None)

    def find_leader(self, timeout: float = 90) -> ConsulServer:
        def agreed() -> ConsulServer | None:
            seen = {
                str(http("GET", s.url + "/v1/status/leader", timeout=2)[1]) for s in self.servers
            }
            if len(seen) != 1:
                return None
            (addr,) = seen
            for s in self.servers:
                if addr == f"127.0.0.1:{s.rpc}":
                    # The leader must also accept a write (it has applied its first entry).
                    code, body = http("PUT", s.url + "/v1/kv/kvbench-probe", None, timeout=5)
                    return s if code == 200 and body is True else None
            return None

        leader: ConsulServer = poll(
            agreed, timeout, "the Proconsul servers to elect a leader", self.procs
        )
        self.leader = leader
        return leader

    def follower(self) -> ConsulServer:
        return next(s for s in self.servers if s is not self.leader)

    def check_leader(self) -> None:
        assert self.leader is not None
        code, addr = http("GET", self.leader.url + "/v1/status/leader", timeout=5)
        if code != 200 or addr != f"127.0.0.1:{self.leader.rpc}":
            raise BenchError(f"our leader {self.leader.name} is no longer leading ({addr!r})")


# --- wrk scripts -----------------------------------------------------------------------------

WRK_LUA = """\
-- Written by bench/kv_bench.py: cycles through (path, body) pairs.
local paths = {
%(paths)s
}
local bodies = {
%(bodies)s
}
local n = #paths
local i = 0
local headers = { %(headers)s }

function setup(thread)
  thread:set("offset", math.random(0, n - 1))
end

function init(args)
  i = offset or 0
end

function request()
  i = i + 1
  local k = (i %% n) + 1
  return wrk.format("%(method)s", paths[k], headers, bodies[k])
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


def lua_string(text: str) -> str:
    if "]]" in text or "\n" in text:
        raise BenchError(f"cannot be a Lua long string: {text!r}")
    return f"[[{text}]]"


def write_lua(path: Path, method: str, paths: list[str], bodies: list[str] | None) -> Path:
    headers = '["Content-Type"] = "application/json"' if bodies is not None else ""
    text = WRK_LUA % {
        "method": method,
        "paths": ",\n".join(f"  {lua_string(p)}" for p in paths),
        # nil entries would shorten a Lua table: a GET gets an empty table and nil bodies.
        "bodies": ",\n".join(f"  {lua_string(b)}" for b in bodies) if bodies is not None else "",
        "headers": headers,
    }
    path.write_text(text)
    return path


def lua_scripts(root: Path) -> dict[tuple[str, str], Path]:
    """(system, op) -> script."""
    return {
        ("ours", "write"): write_lua(
            root / "ours-write.lua", "PUT", [f"/v1/kv/{k}" for k in KEY_NAMES], [VALUE] * KEYS
        ),
        ("ours", "read"): write_lua(
            root / "ours-read.lua", "GET", [f"/v1/kv/{k}" for k in KEY_NAMES], None
        ),
        ("etcd", "write"): write_lua(
            root / "etcd-write.lua",
            "POST",
            ["/v3/kv/put"] * KEYS,
            [json.dumps({"key": b64(k), "value": b64(VALUE)}) for k in KEY_NAMES],
        ),
        ("etcd", "read"): write_lua(
            root / "etcd-read.lua",
            "POST",
            ["/v3/kv/range"] * KEYS,
            [json.dumps({"key": b64(k)}) for k in KEY_NAMES],
        ),
    }


def prefill(ours: ProconsulCluster, etcd: EtcdCluster | None) -> None:
    """Write every key once on both systems (and check that a read finds it)."""
    assert ours.leader is not None
    for k in KEY_NAMES:
        code, body = http("PUT", ours.leader.url + f"/v1/kv/{k}", VALUE)
        if code != 200:
            raise BenchError(f"prefill PUT {k} on ours answered {code}: {body}")
        if etcd is not None:
            code, body = http(
                "POST", etcd.leader_url + "/v3/kv/put", {"key": b64(k), "value": b64(VALUE)}
            )
            if code != 200:
                raise BenchError(f"prefill put {k} on etcd answered {code}: {body}")
    code, body = http("GET", ours.leader.url + f"/v1/kv/{KEY_NAMES[0]}")
    if code != 200 or not isinstance(body, list):
        raise BenchError(f"GET /v1/kv/{KEY_NAMES[0]} answered {code}: {body}")
    if etcd is not None:
        code, body = http("POST", etcd.leader_url + "/v3/kv/range", {"key": b64(KEY_NAMES[0])})
        if code != 200 or body.get("count") != "1":
            raise BenchError(f"etcd range {KEY_NAMES[0]} answered {code}: {body}")


# --- profiling -------------------------------------------------------------------------------

LAYERS = (  # first match wins, tested against "file:function" of each frame, innermost first
    ("sqlite / fsync (raft storage)", ("sqlite", "aiosqlite")),
    ("grpc (raft transport, forwarding)", ("grpc", "_pb2", "protobuf")),
    ("raft core + driver", ("raft/",)),
    ("state store + fsm", ("server/state", "server/fsm")),
    ("KV endpoint + context", ("server/endpoints",)),
    ("lean HTTP front end (server/http)", ("server/http/",)),
    ("HTTP framework (aiohttp, multidict, yarl)", ("aiohttp", "multidict", "yarl")),
    ("JSON (orjson/json)", ("orjson", "json/")),
    ("gossip", ("gossip/",)),
    ("asyncio event loop + sockets", ("asyncio", "selectors", "socket")),
    ("logging", ("structlog", "logging")),
)


def profile_summary(collapsed: Path, top: int = 25) -> str:
    """Where the samples of a ``py-spy record --format raw`` file went."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        # A frame reads "function (path/file.py:line)"; drop the line number.
        names = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in frames]
        self_time[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
        layer = "other"
        for frame in reversed(frames):
            hit = next((lay for lay, pats in LAYERS if any(p in frame for p in pats)), None)
            if hit is not None:
                layer = hit
                break
        layers[layer] += count
    if not total:
        return "  (no samples)"
    out = [f"  {total} samples; self time by layer (innermost recognised frame):"]
    for name, n in layers.most_common():
        out.append(f"    {100 * n / total:5.1f}%  {name}")
    out.append(f"  top {top} functions by self time:")
    for name, n in self_time.most_common(top):
        out.append(f"    {100 * n / total:5.1f}%  {name}")
    out.append(f"  top {top} functions by inclusive time:")
    for name, n in inclusive.most_common(top):
        out.append(f"    {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)


def py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    if exe.exists():
        return str(exe)
    found = shutil.which("py-spy")
    if not found:
        raise SystemExit("kv_bench: --profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def profiled_run(
    procs: Processes,
    out_dir: Path,
    op: str,
    conns: int,
    targets: list[tuple[str, int]],
    url: str,
    script: Path,
    seconds: float,
) -> list[str]:
    """One wrk run against ``url`` while py-spy samples each (role, pid) of ``targets``."""
    name = f"{op}-c{conns}"
    spies = []
    for role, pid in targets:
        raw = out_dir / f"{name}-{role}.txt"
        spy = subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
             "--duration", str(max(1, round(seconds))), "--nonblocking", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        spies.append((role, pid, raw, spy))
    try:
        row = run_wrk(procs, f"wrk-profile-{name}", url, script, conns, seconds)
        for _, _, _, spy in spies:
            spy.wait(timeout=seconds + 30)
    finally:
        for _, _, _, spy in spies:
            Processes.stop(spy)
    texts = []
    for role, pid, raw, _ in spies:
        text = (
            f"profile of our {role} (pid {pid}) during {op}s at {conns} connection(s) "
            f"({row['per_second']:.0f} req/s while sampled):\n{profile_summary(raw)}"
        )
        (out_dir / f"{name}-{role}-summary.txt").write_text(text + "\n")
        texts.append(text)
    return texts


# --- the benchmark ---------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> list[float]:
    """User + system CPU time used so far by each of these processes (all their threads)."""
    times = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime (fields 14 and 15 of proc(5)), in clock ticks
        times.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return times


def measure(
    procs: Processes,
    system: str,
    op: str,
    url: str,
    script: Path,
    conns: int,
    seconds: float,
    pids: list[int],
) -> dict[str, Any]:
    procs.check_alive()
    log(f"{op}: wrk -c{conns} on {system} for {max(1, round(seconds))} s")
    # A log name of its own: run_wrk reads the first result line of the whole log file.
    name = f"wrk-{system.replace(' ', '-')}-{op}-c{conns}"
    cpu_before = cpu_seconds(pids)
    row = run_wrk(procs, name, url, script, conns, seconds)
    cpu = [after - before for before, after in zip(cpu_before, cpu_seconds(pids), strict=True)]
    # CPU of the system's three server processes per successful request (wrk's own excluded);
    # the leader (the process the requests were sent to, first in pids) and the others.
    per = [1000 * c / row["ok"] if row["ok"] else 0.0 for c in cpu]
    row["cpu_ms_per_request"] = sum(per)
    row["cpu_ms_per_request_by_process"] = [round(x, 3) for x in per]
    row.update(system=system, op=op, load=loadavg())
    log(f"  {row['per_second']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
        f"p99 {row['p99_ms']:.2f} ms, {row['cpu_ms_per_request']:.3f} CPU ms/request "
        f"{row['cpu_ms_per_request_by_process']}, "
        f"{row['errors']} errors")  # fmt: skip
    return row


def run(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    seconds, warmup = args.seconds, args.warmup
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([display_path(sys.executable), *sys.argv]),
        "seconds": seconds,
        "http_front_end": "aiohttp only" if args.no_lean else "lean KV front end + aiohttp",
        "machine": machine_info(root),
        "load_before": loadavg(),
    }
    ours = ProconsulCluster(procs, root, no_lean=args.no_lean)
    etcd = None if args.skip_etcd else EtcdCluster(procs, root)
    log(f"starting 3 Proconsul servers in {root}")
    ours.start()
    if etcd is not None:
        log("starting a 3-member etcd cluster")
        etcd.start()
    leader = ours.find_leader()
    log(f"our leader: {leader.name} at {leader.url}")
    if etcd is not None:
        log(f"etcd leader: {etcd.find_leader()} at {etcd.leader_url} (etcd {etcd.version})")
    log(f"writing {KEYS} keys on each system")
    prefill(ours, etcd)

    scripts = lua_scripts(root)
    systems: list[tuple[str, str]] = [("ours", leader.url)]
    if etcd is not None:
        systems.append(("etcd", etcd.leader_url))
    if warmup > 0:
        for system, url in systems:
            for op in ("write", "read"):
                log(f"warm-up: {op} wrk -c64 on {system} for {max(1, round(warmup))} s")
                run_wrk(procs, f"wrk-warmup-{system}-{op}", url, scripts[(system, op)], 64, warmup)

    # The leader first: the process the requests go to.
    pids = {
        "ours": [s.proc.pid for s in sorted(ours.servers, key=lambda s: s is not leader) if s.proc]
    }
    if etcd is not None:
        names = sorted(etcd.members, key=lambda n: etcd.client_urls[n] != etcd.leader_url)
        pids["etcd"] = [etcd.members[name].pid for name in names]
    rows = []
    for op in ("write", "read"):
        for conns in CONCURRENCIES:
            for system, url in systems:
                script = scripts[(system, op)]
                rows.append(measure(procs, system, op, url, script, conns, seconds, pids[system]))
                if system == "ours":
                    ours.check_leader()
    if not args.skip_follower:
        follower = ours.follower()
        script = scripts[("ours", "write")]
        row = measure(
            procs, "ours via follower", "write", follower.url, script, 64, seconds, pids["ours"]
        )
        rows.append(row)
        ours.check_leader()
    result["rows"] = rows

    ratios = []
    for op in ("write", "read"):
        for conns in CONCURRENCIES:
            by = {r["system"]: r for r in rows if r["op"] == op and r["connections"] == conns}
            if "ours" in by and "etcd" in by and by["etcd"]["per_second"]:
                o, e = by["ours"], by["etcd"]
                ratios.append({
                    "op": op,
                    "connections": conns,
                    "throughput_ours_over_etcd": o["per_second"] / e["per_second"],
                    "p99_ours_over_etcd": o["p99_ms"] / e["p99_ms"] if e["p99_ms"] else None,
                    "target": TARGETS.get((op, conns)),
                })  # fmt: skip
    result["ratios"] = ratios

    if args.profile:
        out_dir = Path(args.profile).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        assert leader.proc is not None
        profiles = []
        follower = ours.follower()
        assert follower.proc is not None
        leader_only = [("leader", leader.proc.pid)]
        # At one connection a write is a chain through the leader and a follower: both.
        both = [*leader_only, ("follower", follower.proc.pid)]
        for op, conns, targets in (("write", 64, leader_only), ("read", 64, leader_only),
                                   ("write", 1, both)):  # fmt: skip
            log(f"profiling our {'/'.join(r for r, _ in targets)} during {op}s at c={conns}")
            script = scripts[("ours", op)]
            profiles += profiled_run(
                procs, out_dir, op, conns, targets, leader.url, script, seconds
            )
        result["profiles"] = profiles
        result["profile_dir"] = str(out_dir)
    result["load_after"] = loadavg()
    return result


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"date: {result['date']}   command: {result['command']}",
        f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"tmp on {m['tmp_dir_fs']}, Python {m['python']}, {m['etcd']}, {m['wrk']}",
        f"load average before: {result['load_before']}   after: {result['load_after']}",
        f"our HTTP front end: {result['http_front_end']}",
        "",
        "KV over HTTP (wrk; ours: PUT/GET /v1/kv/<key> on the leader, default consistency;",
        "etcd: POST /v3/kv/put and linearizable /v3/kv/range on the leader; 1024 keys,",
        f"100-byte values, {result['seconds']:g} s each):",
        f"  {'op':<6} {'system':<18} {'conns':>5} {'requests/s':>11} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'CPU ms/req: all (leader)':>24} {'errors':>6}",
    ]
    for r in result["rows"]:
        lines.append(
            f"  {r['op']:<6} {r['system']:<18} {r['connections']:>5} {r['per_second']:>11.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['cpu_ms_per_request']:>15.3f} "
            f"({r['cpu_ms_per_request_by_process'][0]:.3f}) {r['errors']:>6}"
        )
    lines.append("")
    if result["ratios"]:
        for q in result["ratios"]:
            p99 = q["p99_ours_over_etcd"]
            verdict = ""
            if q["target"] is not None:
                ok = q["throughput_ours_over_etcd"] >= q["target"]
                want = f"target >= {q['target']:.1f}x"
                if q["op"] == "write" and q["connections"] == 64:
                    ok = ok and p99 is not None and p99 <= 1.0
                    want += ", p99 <= etcd's"
                verdict = f"  [{want}: {'met' if ok else 'MISSED'}]"
            lines.append(
                f"ratio ours/etcd {q['op']:<5} at {q['connections']:>2} connection(s): "
                f"throughput {q['throughput_ours_over_etcd']:.2f}, "
                f"p99 latency {'n/a' if p99 is None else f'{p99:.2f}'}{verdict}"
            )
    else:
        lines.append("no peer measured (--skip-etcd): these numbers are not a result")
    for text in result.get("profiles", []):
        lines += ["", text]
    if "profile_dir" in result:
        lines.append(f"(collapsed stacks in {result['profile_dir']})")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="length of each warm-up run")
    p.add_argument("--skip-etcd", action="store_true", help="measure only our cluster")
    p.add_argument("--skip-follower", action="store_true", help="no write-via-follower row")
    p.add_argument(
        "--no-lean",
        action="store_true",
        help="serve every request through aiohttp (PROCONSUL_LEAN_HTTP=0), for comparison",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy our leader; stacks and summary here")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--no-install", action="store_true", help="never apt-get install tools")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = p.parse_args()
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    if args.profile:
        py_spy()

    ensure_tools(need_etcd=not args.skip_etcd, install=not args.no_install)
    return run_bench("kv-bench-", args, run, render, log)


if __name__ == "__main__":
    sys.exit(main())
