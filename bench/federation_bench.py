"""Federation benchmark: cross-datacenter reads through two mesh gateways, and secondary cold start.

Usage (from the repository root, after ``make venv``)::

    .venv/bin/python bench/federation_bench.py [--requests 2000] [--reps 5] [--json] [--keep]

Method
------
Everything runs on this machine, on loopback addresses of its own (Linux routes all of
127.0.0.0/8 to ``lo``) and uncommon ports (HTTP 28500, server RPC 28300, serf 28301/28302,
gateways 28443, gateway admin 29000), so it never collides with a running agent; every
address:port is checked free before anything starts. One server per datacenter, each
bootstrapping itself, ``performance.raft_multiplier = 1``, fast ``gossip_wan`` timing
(probe 1 s, timeout 500 ms), and a fresh data directory under ``$TMPDIR``.

Two federations run side by side in one run, each with a primary ``dc1`` that stays up and a
secondary started afresh for every repetition r, in a datacenter of its own (``wf<r>`` /
``tr<r>``), so that nothing the primary remembers of an earlier repetition (failed WAN members,
an old federation state) applies to it:

* **wanfed** (through mesh gateways): TLS on the server port (``proconsul tls ca create``,
  ``tls cert create -server -dc <dc> -node <node>``; verify_incoming/outgoing,
  verify_server_hostname), ``connect.enable_mesh_gateway_wan_federation``. dc1: server
  127.0.11.1 and a gateway (``proconsul connect envoy -gateway=mesh -register
  -expose-servers``) LAN 127.0.11.10, WAN 127.0.13.1. ``wf<r>``: server 127.0.12.r and its
  gateway LAN 127.0.12.(100+r), WAN 127.0.13.(10+r); ``primary_gateways =
  ["127.0.13.1:28443"]``, ``primary_gateways_interval`` and ``retry_interval_wan`` 1 s.
* **traditional** (the peer): no TLS, no gateways; dc1 server 127.0.14.1, ``tr<r>`` server
  127.0.15.r with ``retry_join_wan = ["127.0.14.1:28302"]``, ``retry_interval_wan = "1s"``.

Two measurements:

1. *Cold start of a secondary*: with both primaries up (the wanfed primary's gateway
   registered and in dc1's federation state), spawn the secondary at t0 — wanfed: its server
   and its gateway together; traditional: its server — and poll ``GET /v1/kv/x?dc=dc1`` on its
   server every 50 ms until it answers 200 or 404 (404 is an answer from dc1's store: the
   request reached the primary). Also recorded: when its HTTP API first answered anything (the
   process is up), and when ``/v1/catalog/datacenters`` first lists dc1 (its WAN join is done;
   polled after the first answer). ``--reps`` repetitions of each mode, alternating (wanfed,
   traditional, ...); the previous repetition's processes are stopped before the next starts.
   Min, median and max, and the ratio of the medians wanfed/traditional.
2. *Cross-datacenter KV read latency*: the last repetition's secondaries stay up. A 100-byte
   value is written under ``fedbench/key`` in each, then ``--requests`` sequential GETs per row
   (after 200 warm-up GETs), one keep-alive connection per row (``http.client``), in
   ``--rounds`` rounds that alternate the rows so they share background load:

   - ``local``: ``GET /v1/kv/fedbench/key`` on the wanfed secondary's server (the peer of the
     headline ratio; answered by the lean KV front end, ``server/http/lean.py``),
   - ``local ?dc=own``: the same with ``?dc=<its own dc>`` (still local, but any query string
     sends it through aiohttp, as every ``?dc=`` request is — the peer without that
     front-end difference),
   - ``cross via gateways``: ``?dc=wf<r>`` on dc1's server: dc1's server -> dc1's gateway
     (SNI ``<node>.server.wf<r>.consul``) -> wf<r>'s gateway -> wf<r>'s server, gRPC
     ``ForwardHTTP`` over mTLS on a pooled channel; the server replays the request on its API,
   - ``cross traditional``: ``?dc=tr<r>`` on the traditional dc1 (direct gRPC, no TLS),
   - ``?stale`` variants of ``local ?dc=own`` and ``cross via gateways``.

   p50/p99 (nearest rank)/mean per row, and ratios. Both gateways' ``/stats`` are read before
   and after each row: the bytes counted under the SNI suffix ``server.wf<r>.consul`` per GET
   show that the cross rows went through both gateways (WAN gossip crosses them too: the
   local rows show that background, about 0 bytes per GET).

Caveats: the servers, gateways and the client share the machine's cores; only ratios are
meaningful, the load average is printed before and after. Loopback has no network latency:
the cross-DC rows measure the software path (two extra hops through the gateways, TLS, the
RPC and the replay), which is the whole cost here, but only a floor for a real WAN. Every
process is stopped by PID (SIGTERM, then SIGKILL), the temporary directory removed
(``--keep`` keeps it, with every process's log).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raft_bench import (  # bench/ is not a package: found through sys.path
    BenchError,
    Processes,
    display_path,
    http,
    loadavg,
    machine_info,
    poll,
    run_bench,
)

HTTP_PORT, RPC_PORT, SERF_LAN, SERF_WAN = 28500, 28300, 28301, 28302
GW_PORT, ADMIN_PORT = 28443, 29000
PRIMARY = "dc1"
KEY = "fedbench/key"
VALUE = "v" * 100
POLL_INTERVAL = 0.05
COLD_START_LIMIT = 60.0
WARMUP = 200


def log(msg: str) -> None:
    print(f"[federation_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proconsul() -> list[str]:
    exe = Path(sys.executable).with_name("proconsul")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


def check_free(ip: str, tcp: list[int], udp: list[int]) -> None:
    """Raise BenchError when one of these ports is taken on ``ip`` (or on a wildcard)."""
    for kind, ports in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        for port in ports:
            with socket.socket(socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:  # as the agents bind: TIME_WAIT is no conflict
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((ip, port))
                except OSError as exc:
                    proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
                    raise BenchError(f"{ip}:{port}/{proto} is not free: {exc}") from None


# --- agents and gateways ---------------------------------------------------------------------


@dataclass
class Agent:
    """One server agent (one per datacenter here) and, in wanfed mode, its gateway."""

    name: str  # node name, also the log name
    dc: str
    ip: str
    wanfed: bool
    gw_lan: str = ""  # gateway LAN ip (wanfed only)
    gw_wan: str = ""  # gateway WAN ip
    proc: subprocess.Popen[bytes] | None = None
    gw_proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{HTTP_PORT}"

    @property
    def admin(self) -> str:
        return f"http://{self.gw_lan}:{ADMIN_PORT}"

    def check_ports(self) -> None:
        check_free(self.ip, [HTTP_PORT, RPC_PORT, SERF_LAN, SERF_WAN], [SERF_LAN, SERF_WAN])
        if self.wanfed:
            check_free(self.gw_lan, [GW_PORT, ADMIN_PORT], [])
            check_free(self.gw_wan, [GW_PORT], [])

    def config(self, root: Path) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "node_name": self.name,
            "datacenter": self.dc,
            "primary_datacenter": PRIMARY,
            "server": True,
            "bootstrap": True,
            "bind_addr": self.ip,
            "client_addr": self.ip,
            "data_dir": str(root / "data" / self.name),
            "log_level": "info",
            "ports": {
                "dns": -1,
                "http": HTTP_PORT,
                "server": RPC_PORT,
                "serf_lan": SERF_LAN,
                "serf_wan": SERF_WAN,
            },
            "gossip_wan": {"probe_interval": "1s", "probe_timeout": "500ms", "suspicion_mult": 3},
            "performance": {"raft_multiplier": 1},
            **self.extra,
        }
        if self.wanfed:
            cfg["tls"] = {
                "defaults": {
                    "ca_file": str(root / "consul-agent-ca.pem"),
                    "cert_file": str(root / f"{self.name}.pem"),
                    "key_file": str(root / f"{self.name}-key.pem"),
                    "verify_incoming": True,
                    "verify_outgoing": True,
                },
                "internal_rpc": {"verify_server_hostname": True},
            }
            cfg["connect"] = {"enabled": True, "enable_mesh_gateway_wan_federation": True}
        return cfg

    def make_cert(self, root: Path) -> None:
        """A server certificate for this node (SANs <node>.server.<dc>.consul, server.<dc>...)."""
        before = set(root.glob(f"{self.dc}-server-consul-*.pem"))
        create = ["tls", "cert", "create", "-server", "-dc", self.dc, "-node", self.name]
        args = [*proconsul(), *create]
        proc = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise BenchError(f"tls cert create for {self.name} failed: {proc.stderr}")
        new = [p for p in set(root.glob(f"{self.dc}-server-consul-*.pem")) - before]
        cert = next(p for p in new if not p.name.endswith("-key.pem"))
        cert.rename(root / f"{self.name}.pem")
        cert.with_name(cert.name.replace(".pem", "-key.pem")).rename(root / f"{self.name}-key.pem")

    def start(self, procs: Processes, root: Path) -> None:
        path = root / f"{self.name}.json"
        path.write_text(json.dumps(self.config(root)))
        self.proc = procs.start(self.name, [*proconsul(), "agent", f"-config-file={path}"])
        if self.wanfed:
            args = [
                *proconsul(), "connect", "envoy", "-gateway=mesh", "-register",
                "-expose-servers", "-service", "mesh-gateway",
                "-address", f"{self.gw_lan}:{GW_PORT}", "-wan-address", f"{self.gw_wan}:{GW_PORT}",
                "-http-addr", self.url, "-admin-bind", f"{self.gw_lan}:{ADMIN_PORT}",
            ]  # fmt: skip
            self.gw_proc = procs.start(f"{self.name}-gateway", args)

    def alive(self) -> None:
        for what, p in (("server", self.proc), ("gateway", self.gw_proc)):
            if p is not None and p.poll() is not None:
                raise BenchError(f"{self.name}'s {what} (pid {p.pid}) exited with {p.returncode}")

    def stop(self) -> None:
        # The gateway first: it deregisters through its agent on the way out.
        for p in (self.gw_proc, self.proc):
            if p is not None:
                Processes.stop(p)

    def stats(self) -> dict[str, Any]:
        code, body = http("GET", self.admin + "/stats", timeout=5)
        if code != 200 or not isinstance(body, dict):
            raise BenchError(f"{self.name}'s gateway /stats answered {code}: {body}")
        return body


def wait_for(
    procs: Processes, check: Callable[[], Any], timeout: float, what: str, agents: list[Agent]
) -> Any:
    """raft_bench's ``poll``, failing as soon as one of ``agents``' processes has exited."""

    def checked() -> Any:
        for a in agents:
            a.alive()  # BenchError: not one of the exceptions poll() retries on
        return check()

    return poll(checked, timeout, what, procs)


def leader_ready(a: Agent) -> bool:
    code, body = http("PUT", f"{a.url}/v1/kv/fedbench/probe", "x", timeout=3)
    return code == 200 and body is True


def primary_gateway_known(a: Agent) -> bool:
    """dc1's federation state lists its own gateway (what a secondary learns from)."""
    code, body = http("GET", f"{a.url}/v1/internal/federation-states/mesh-gateways", timeout=3)
    return code == 200 and bool(body.get(PRIMARY))


def secondary_gateway_known(dc1: Agent, dc2: Agent) -> bool:
    """wanfed dc1 knows dc2's gateway (so ?dc=<dc2> goes through both gateways)."""
    code, body = http("GET", f"{dc1.url}/v1/internal/federation-states/mesh-gateways", timeout=3)
    if code != 200:
        return False
    want = f"{dc2.gw_wan}"
    for csn in body.get(dc2.dc, []):
        wan = csn["Service"].get("TaggedAddresses", {}).get("wan", {})
        if wan.get("Address") == want:
            return True
    return False


# --- 1. cold start ---------------------------------------------------------------------------


def lists_primary(a: Agent) -> bool:
    code, body = http("GET", f"{a.url}/v1/catalog/datacenters", timeout=3)
    return code == 200 and PRIMARY in body


def cold_start(procs: Processes, root: Path, a: Agent) -> dict[str, Any]:
    """Start ``a`` (server, and gateway in wanfed) and time its first answered ?dc=dc1 GET,
    then the moment ``/v1/catalog/datacenters`` lists dc1 (its WAN join is done)."""
    a.check_ports()
    if a.wanfed:
        a.make_cert(root)  # before t0: an operator has the certificate already
    url = f"{a.url}/v1/kv/x?dc={PRIMARY}"
    wall, t0 = time.time(), time.monotonic()
    a.start(procs, root)
    http_up: float | None = None
    answered: dict[str, Any] | None = None
    last = ""
    attempts = 0
    while True:
        tick = time.monotonic()
        if tick - t0 > COLD_START_LIMIT:
            what = "an answer from dc1" if answered is None else "dc1 in /v1/catalog/datacenters"
            raise BenchError(f"{a.name}: no {what} within {COLD_START_LIMIT:.0f} s (last: {last})")
        a.alive()
        try:
            if answered is None:
                attempts += 1
                code, body = http("GET", url, timeout=5)
                now = time.monotonic() - t0
                http_up = now if http_up is None else http_up
                last = f"GET {url}: {code} {str(body)[:160]}"
                if code in (200, 404):
                    answered = {"seconds": round(now, 3), "status": code, "attempts": attempts}
            if answered is not None and lists_primary(a):
                assert http_up is not None
                return {
                    "node": a.name,
                    "dc": a.dc,
                    "t0_unix": round(wall, 3),
                    **answered,
                    "http_up_s": round(http_up, 3),
                    "wan_join_s": round(time.monotonic() - t0, 3),
                }
        except OSError as exc:
            last = f"GET {url}: {exc!r}"
        time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - tick)))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


# --- 2. read latency -------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP connection; ``get`` returns the latency in seconds (200 only)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn = HTTPConnection(self.host, self.port, timeout=10)

    def get(self, path: str) -> float:
        t = time.perf_counter()
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, HTTPException) as exc:
            self.conn.close()
            raise BenchError(f"GET {self.host}:{self.port}{path}: {exc!r}") from None
        dt = time.perf_counter() - t
        if resp.status != 200:
            raise BenchError(f"GET {self.host}:{self.port}{path} answered {resp.status}: {body!r}")
        return dt


def pct(sorted_ms: list[float], p: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    i = min(len(sorted_ms) - 1, max(0, math.ceil(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[i]


def suffix_bytes(stats: dict[str, Any], suffix: str) -> int:
    s = stats.get("sni_suffixes", {}).get(suffix, {})
    return int(s.get("bytes_in", 0)) + int(s.get("bytes_out", 0))


def latency(
    args: argparse.Namespace, w1: Agent, w2: Agent, t1: Agent, t2: Agent
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    path = f"/v1/kv/{KEY}"
    wq, tq = f"?dc={w2.dc}", f"?dc={t2.dc}"
    suffix = f"server.{w2.dc}.consul"  # the gateways' label for connections to w2's servers
    rows = [
        ("local", w2, path),
        ("local ?dc=own", w2, path + wq),
        ("cross via gateways", w1, path + wq),
        ("cross traditional", t1, path + tq),
        ("local ?dc=own&stale", w2, path + wq + "&stale"),
        ("cross via gateways ?stale", w1, path + wq + "&stale"),
    ]
    clients = {name: Client(a.url) for name, a, _ in rows}
    samples: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    gw_bytes: dict[str, list[int]] = {name: [0, 0] for name, _, _ in rows}
    for name, _, p in rows:
        for _ in range(WARMUP):
            clients[name].get(p)
    per_round = args.requests // args.rounds
    for rnd in range(args.rounds):
        for name, a, p in rows:
            for agent in (w1, w2, t1, t2):
                agent.alive()
            log(f"round {rnd + 1}/{args.rounds}: {per_round} x GET {a.url}{p}  ({name})")
            before = [suffix_bytes(w1.stats(), suffix), suffix_bytes(w2.stats(), suffix)]
            client = clients[name]
            samples[name] += [client.get(p) for _ in range(per_round)]
            after = [suffix_bytes(w1.stats(), suffix), suffix_bytes(w2.stats(), suffix)]
            for i in range(2):
                gw_bytes[name][i] += after[i] - before[i]
    out: list[dict[str, Any]] = []
    for name, a, p in rows:
        ms = sorted(1000 * s for s in samples[name])
        n = len(ms)
        out.append({
            "row": name,
            "url": a.url + p,
            "requests": n,
            "p50_ms": round(pct(ms, 50), 3),
            "p99_ms": round(pct(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3),
            "dc1_gateway_bytes_per_request": round(gw_bytes[name][0] / n, 1),
            "dc2_gateway_bytes_per_request": round(gw_bytes[name][1] / n, 1),
        })  # fmt: skip
    by = {r["row"]: r for r in out}
    ratios = []
    for num, den in (
        ("cross via gateways", "local"),
        ("cross via gateways", "local ?dc=own"),
        ("cross via gateways", "cross traditional"),
        ("cross via gateways ?stale", "local ?dc=own&stale"),
        ("cross traditional", "local ?dc=own"),
    ):
        ratios.append({
            "of": num,
            "over": den,
            "p50": round(by[num]["p50_ms"] / by[den]["p50_ms"], 2),
            "p99": round(by[num]["p99_ms"] / by[den]["p99_ms"], 2),
        })  # fmt: skip
    return out, ratios


# --- the benchmark ---------------------------------------------------------------------------


def secondary(mode: str, r: int, w1: Agent, t1: Agent) -> Agent:
    """Rep r's secondary: a datacenter of its own (wf<r> / tr<r>), fresh everything."""
    if mode == "wanfed":
        extra = {
            "primary_gateways": [f"{w1.gw_wan}:{GW_PORT}"],
            "primary_gateways_interval": "1s",
            "retry_interval_wan": "1s",
        }
        return Agent(
            f"wf{r}s", f"wf{r}", f"127.0.12.{r}", True,
            gw_lan=f"127.0.12.{100 + r}", gw_wan=f"127.0.13.{10 + r}", extra=extra,
        )  # fmt: skip
    join = {"retry_join_wan": [f"{t1.ip}:{SERF_WAN}"], "retry_interval_wan": "1s"}
    return Agent(f"tr{r}s", f"tr{r}", f"127.0.15.{r}", False, extra=join)


def run(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    m = machine_info(root)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([display_path(sys.executable), *sys.argv]),
        "machine": {k: m[k] for k in ("nproc", "cpu_model", "memory_gib", "python", "kernel")},
        "load_before": loadavg(),
    }
    ca = subprocess.run([*proconsul(), "tls", "ca", "create"], cwd=root, capture_output=True)
    if ca.returncode != 0:
        raise BenchError(f"tls ca create failed: {ca.stderr.decode(errors='replace')}")

    w1 = Agent("w1", PRIMARY, "127.0.11.1", True, gw_lan="127.0.11.10", gw_wan="127.0.13.1")
    t1 = Agent("t1", PRIMARY, "127.0.14.1", False)
    for a in (w1, t1):
        a.check_ports()
    w1.make_cert(root)
    log(f"starting the primaries in {root}: wanfed dc1 (server + gateway) and traditional dc1")
    w1.start(procs, root)
    t1.start(procs, root)
    wait_for(
        procs, lambda: leader_ready(w1) and leader_ready(t1), 60, "the primaries' leaders", [w1, t1]
    )
    wait_for(procs, lambda: w1.stats()["ready"], 30, "dc1's gateway routing table", [w1])
    wait_for(procs, lambda: primary_gateway_known(w1), 60, "dc1's own federation state", [w1])

    cold: dict[str, list[dict[str, Any]]] = {"wanfed": [], "traditional": []}
    last: dict[str, Agent] = {}
    for r in range(1, args.reps + 1):
        for mode in ("wanfed", "traditional"):
            if mode in last:
                last.pop(mode).stop()
            for p in (w1, t1):
                p.alive()
            a = secondary(mode, r, w1, t1)
            row = cold_start(procs, root, a)
            row["load"] = loadavg()
            log(f"cold start {mode} rep {r} ({a.dc}): answer from dc1 ({row['status']}) at "
                f"{row['seconds']:.2f} s, HTTP up at {row['http_up_s']:.2f} s, dc1 listed at "
                f"{row['wan_join_s']:.2f} s")  # fmt: skip
            cold[mode].append(row)
            last[mode] = a
    result["cold_start"] = cold
    result["cold_start_summary"] = {
        mode: {k: summary([r[k] for r in rows]) for k in ("seconds", "http_up_s", "wan_join_s")}
        for mode, rows in cold.items()
    }
    med = {k: v["seconds"]["median"] for k, v in result["cold_start_summary"].items()}
    result["cold_start_ratio_median"] = round(med["wanfed"] / med["traditional"], 2)

    w2, t2 = last["wanfed"], last["traditional"]
    for a in (w2, t2):
        wait_for(procs, functools.partial(leader_ready, a), 30, f"{a.name}'s leader", [a])
        code, body = http("PUT", f"{a.url}/v1/kv/{KEY}", VALUE, timeout=5)
        if code != 200 or body is not True:
            raise BenchError(f"PUT {KEY} on {a.name} answered {code}: {body}")
    wait_for(
        procs, lambda: secondary_gateway_known(w1, w2), 60, f"dc1 to know {w2.dc}'s gateway", [w2]
    )
    wait_for(procs, lambda: w2.stats()["ready"], 30, f"{w2.dc}'s gateway routing table", [w2])
    rows, ratios = latency(args, w1, w2, t1, t2)
    result["latency_secondaries"] = {"wanfed": w2.dc, "traditional": t2.dc}
    result["latency"] = rows
    result["latency_ratios"] = ratios
    result["gateway_stats"] = {
        name: {k: s[k] for k in ("data_path", "routes", "refusals", "upstream_connect_errors")}
        | {"sni_suffixes": s["sni_suffixes"]}
        for name, s in ((w1.dc, w1.stats()), (w2.dc, w2.stats()))
    }
    result["load_after"] = loadavg()
    return result


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"date: {result['date']}   command: {result['command']}",
        f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, kernel {m['kernel']}",
        f"load average before: {result['load_before']}   after: {result['load_after']}",
        "",
        "Cold start of a new secondary, seconds from spawning it: first answered",
        "GET /v1/kv/x?dc=dc1 (200/404); [HTTP up = its API first answered anything;",
        "dc1 listed = /v1/catalog/datacenters lists dc1, i.e. WAN join done]:",
    ]
    for mode, rows in result["cold_start"].items():
        s = result["cold_start_summary"][mode]
        lines.append(
            f"  {mode:<12} answer: min {s['seconds']['min']:.2f}  median "
            f"{s['seconds']['median']:.2f}  max {s['seconds']['max']:.2f}   dc1 listed: median "
            f"{s['wan_join_s']['median']:.2f}  max {s['wan_join_s']['max']:.2f}"
        )
        reps = ", ".join(
            f"{r['seconds']:.2f}/{r['http_up_s']:.2f}/{r['wan_join_s']:.2f}" for r in rows
        )
        lines.append(f"  {'':<12} reps (answer/HTTP up/dc1 listed): {reps}")
    lines.append(f"  ratio of medians wanfed/traditional: {result['cold_start_ratio_median']:.2f}")
    sec = result["latency_secondaries"]
    lines += [
        "",
        f"KV read latency (secondaries {sec['wanfed']} / {sec['traditional']}; sequential GETs,",
        "one keep-alive connection per row; gateway bytes under server.<dc>.consul per GET):",
        f"  {'row':<26} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
        f"{'gw1 B/req':>9} {'gw2 B/req':>9}",
    ]
    for r in result["latency"]:
        lines.append(
            f"  {r['row']:<26} {r['requests']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['mean_ms']:>8.2f} {r['dc1_gateway_bytes_per_request']:>9.0f} "
            f"{r['dc2_gateway_bytes_per_request']:>9.0f}"
        )
    lines.append("")
    for q in result["latency_ratios"]:
        lines.append(f"ratio {q['of']} / {q['over']}: p50 {q['p50']:.2f}, p99 {q['p99']:.2f}")
    lines += ["", f"gateways' counters at the end: {json.dumps(result['gateway_stats'])}"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=2000, help="measured GETs per latency row")
    p.add_argument("--rounds", type=int, default=2, help="rounds the GETs of each row are split in")
    p.add_argument("--reps", type=int, default=5, help="cold starts of each mode")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = p.parse_args()
    if args.requests < args.rounds or args.rounds < 1 or not 1 <= args.reps <= 50:
        p.error("need --requests >= --rounds >= 1 and 1 <= --reps <= 50")
    return run_bench("federation-bench-", args, run, render, log)


if __name__ == "__main__":
    sys.exit(main())
