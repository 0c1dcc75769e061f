#!/usr/bin/env python3
"""Two datacenters federated through mesh gateways on one machine, without root: `make demo`.

The topology of docker-compose.yml on loopback addresses (Linux routes all of 127.0.0.0/8 to
``lo``; nothing is isolated here, the namespace scripts and tests/netns/ prove isolation):

    dc1 servers   127.0.1.1 .. 127.0.1.N   (primary)
    dc2 servers   127.0.2.1 .. 127.0.2.N   (secondary, primary_gateways = dc1's gateways)
    gateways      127.0.3.11, 127.0.3.12 (dc1)   127.0.3.21, 127.0.3.22 (dc2)

Every process also has its own ports (server i of all: HTTP 8500+i, server RPC 8300+10*i,
serf LAN/WAN +1/+2; gateways 8443..8446, admin 19000..19003), so nothing collides with an agent
bound to a wildcard address. Certificates come from gen-certs.sh (``proconsul tls ca create``,
``tls cert create -server -dc <dc> -node <node>``); configs are written as HCL files, as a
Consul user would, in the work directory (a temporary one unless ``--dir``).

The script waits until ``127.0.1.1:8500/v1/catalog/datacenters`` lists both datacenters and a
KV write with ``?dc=dc2`` succeeds, prints what to try, and stays in the foreground. On Ctrl-C,
SIGTERM, or a failure it stops every process it started, by PID (SIGTERM, then SIGKILL after a
grace period), and removes the temporary directory. It uses only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DCS = ("dc1", "dc2")
PRIMARY = "dc1"


def proconsul_cmd() -> list[str]:
    """The CLI next to this interpreter (the venv's), else ``python -m server.cli``."""
    exe = Path(sys.executable).with_name("proconsul")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


@dataclass(frozen=True)
class Server:
    dc: str
    index: int  # 1-based within its datacenter
    offset: int  # 0-based over all servers: picks its ports

    @property
    def node(self) -> str:
        return f"{self.dc}-server{self.index}"

    @property
    def ip(self) -> str:
        return f"127.0.{DCS.index(self.dc) + 1}.{self.index}"

    @property
    def http(self) -> int:
        return 8500 + self.offset

    @property
    def rpc(self) -> int:
        return 8300 + 10 * self.offset

    @property
    def http_addr(self) -> str:
        return f"{self.ip}:{self.http}"


@dataclass(frozen=True)
class Gateway:
    dc: str
    index: int  # 1 or 2
    offset: int  # 0..3

    @property
    def name(self) -> str:
        return f"{self.dc}-gateway{self.index}"

    @property
    def ip(self) -> str:
        return f"127.0.3.{DCS.index(self.dc) + 1}{self.index}"

    @property
    def port(self) -> int:
        return 8443 + self.offset

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def admin(self) -> str:
        return f"{self.ip}:{19000 + self.offset}"


def topology(servers_per_dc: int) -> tuple[list[Server], list[Gateway]]:
    servers = [
        Server(dc, i, d * servers_per_dc + i - 1)
        for d, dc in enumerate(DCS)
        for i in range(1, servers_per_dc + 1)
    ]
    gateways = [Gateway(dc, i, d * 2 + i - 1) for d, dc in enumerate(DCS) for i in (1, 2)]
    return servers, gateways


def hcl_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def server_config(s: Server, servers: list[Server], gateways: list[Gateway], work: Path) -> str:
    """The server's whole config as an HCL file (the same settings as config/<dc>.hcl plus the
    node's own, with loopback addresses and ports)."""
    peers = [f"{p.ip}:{p.rpc + 1}" for p in servers if p.dc == s.dc]
    certs = work / "certs"
    lines = [
        f"# {s.node}: {'primary' if s.dc == PRIMARY else 'secondary'} datacenter {s.dc}",
        f'datacenter         = "{s.dc}"',
        f'primary_datacenter = "{PRIMARY}"',
        f'node_name          = "{s.node}"',
        "server             = true",
        f"bootstrap_expect   = {len(peers)}",
        f'bind_addr          = "{s.ip}"',
        f'client_addr        = "{s.ip}"',
        f'data_dir           = "{work / s.node / "data"}"',
        f"retry_join         = {hcl_list(peers)}",
        'log_level          = "info"',
        "",
        "ports {",
        f"  http     = {s.http}",
        f"  server   = {s.rpc}",
        f"  serf_lan = {s.rpc + 1}",
        f"  serf_wan = {s.rpc + 2}",
        "  dns      = -1",
        "  grpc     = -1",
        "}",
        "",
        "connect {",
        "  enabled                            = true",
        "  enable_mesh_gateway_wan_federation = true",
        "}",
        "",
    ]
    if s.dc != PRIMARY:
        primary_gws = [g.addr for g in gateways if g.dc == PRIMARY]
        lines += [
            f"primary_gateways          = {hcl_list(primary_gws)}",
            'primary_gateways_interval = "5s"',
            'retry_interval_wan        = "5s"',
            "",
        ]
    lines += [
        "tls {",
        "  defaults {",
        f'    ca_file         = "{certs / "consul-agent-ca.pem"}"',
        f'    cert_file       = "{certs / (s.node + ".pem")}"',
        f'    key_file        = "{certs / (s.node + "-key.pem")}"',
        "    verify_incoming = true",
        "    verify_outgoing = true",
        "  }",
        "  internal_rpc {",
        "    verify_server_hostname = true",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def gateway_args(g: Gateway, servers: list[Server]) -> list[str]:
    """Consul's spelling of a mesh gateway that carries server traffic; its agent is the
    server with the same index in its datacenter. With one server both gateways share it, and
    a registration's ID is its service name (``-proxy-id`` is not supported yet), so the second
    takes another name (every service of kind mesh-gateway counts)."""
    local = [s for s in servers if s.dc == g.dc]
    agent = local[(g.index - 1) % len(local)]
    service = "mesh-gateway" if g.index <= len(local) else f"mesh-gateway-{g.index}"
    return [
        "connect",
        "envoy",
        "-gateway=mesh",
        "-register",
        "-service",
        service,
        "-address",
        g.addr,
        "-wan-address",
        g.addr,
        "-expose-servers",
        "-admin-bind",
        g.admin,
        "-http-addr",
        agent.http_addr,
    ]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this script dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Processes:
    """Children started by this script, stopped by PID in reverse order of start."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.logs),
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
                preexec_fn=_die_with_parent,
            )
        self.procs.append((name, proc, log))

    def dead(self) -> list[tuple[str, int, Path]]:
        return [(n, p.returncode, log) for n, p, log in self.procs if p.poll() is not None]

    def stop(self, grace: float = 10.0) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} (pid {proc.pid}) ignored SIGTERM: SIGKILL", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def port_in_use(ip: str, port: int) -> bool:
    """A listener holds ``ip:port`` (SO_REUSEADDR: connections in TIME_WAIT do not count, as
    they do not stop the agents, which set it too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def wait_federated(
    procs: Processes, first: Server, second: Server, timeout: float, quiet: bool
) -> float:
    """Seconds until both datacenters are listed in dc1 and a ``?dc=dc2`` KV write succeeds.
    Raises RuntimeError (with the reason) on timeout or when a process exits."""
    start = time.monotonic()
    deadline = start + timeout
    base = f"http://{first.http_addr}"
    stage, last_error = "datacenters", ""
    while time.monotonic() < deadline:
        dead = procs.dead()
        if dead:
            name, code, log = dead[0]
            raise RuntimeError(f"{name} exited with status {code}; the end of {log}:\n{tail(log)}")
        try:
            if stage == "datacenters":
                dcs = http("GET", f"{base}/v1/catalog/datacenters")
                if isinstance(dcs, list) and set(DCS) <= set(dcs):
                    stage = "kv"
                    if not quiet:
                        print(f"  {base}/v1/catalog/datacenters lists {dcs}", flush=True)
                    continue
                last_error = f"datacenters: {dcs}"
            else:
                ok = http("PUT", f"{base}/v1/kv/demo/hello?dc=dc2", b"from dc1")
                got = http("GET", f"http://{second.http_addr}/v1/kv/demo/hello")
                if ok is True and got:
                    return time.monotonic() - start
                last_error = f"kv put ?dc=dc2: {ok}, get in dc2: {got}"
        except urllib.error.HTTPError as exc:
            last_error = f"{exc.code} {exc.read().decode(errors='replace').strip()}"
        except (OSError, ValueError) as exc:
            last_error = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"not federated after {timeout:.0f} s (waiting for {stage}: {last_error})")


def what_to_try(servers: list[Server], gateways: list[Gateway], cli: str, work: Path) -> str:
    d1 = next(s for s in servers if s.dc == "dc1")
    d2 = next(s for s in servers if s.dc == "dc2")
    a, b = d1.http_addr, d2.http_addr
    lines = [
        "",
        "Two datacenters federated through mesh gateways:",
    ]
    for dc in DCS:
        ss = ", ".join(f"{s.node} http://{s.http_addr}" for s in servers if s.dc == dc)
        gs = ", ".join(f"{g.name} {g.addr}" for g in gateways if g.dc == dc)
        role = "primary" if dc == PRIMARY else "secondary"
        lines.append(f"  {dc} ({role}): {ss}")
        lines.append(f"       gateways: {gs}")
    tries = [
        (f"curl -s {a}/v1/catalog/datacenters", "both, local first"),
        (f"curl -s -X PUT -d world '{a}/v1/kv/hello?dc=dc2'", "written in dc2, from dc1"),
        (f"curl -s '{b}/v1/kv/hello?raw'", "read in dc2"),
        (f"curl -s -i '{a}/v1/kv/hello?dc=dc2'", "its X-Consul-Index is N"),
        (f"curl -s '{a}/v1/kv/hello?dc=dc2&index=N&wait=30s'", "blocks until hello changes"),
        (f"curl -s '{a}/v1/health/service/consul?dc=dc2'", "dc2's servers, from dc1"),
        (f"{cli} members -wan -http-addr={a}", "the WAN pool: <node>.<dc>"),
        (f"{cli} catalog datacenters -http-addr={b}", ""),
        (f"curl -s {a}/v1/internal/federation-states", "each dc's mesh gateways"),
        (f"curl -s {b}/v1/internal/federation-states/mesh-gateways", ""),
        (f"curl -s '{a}/v1/internal/federation-state/dc2'", ""),
    ]
    width = max(len(cmd) for cmd, _ in tries)
    lines += [f"  configs, certificates and logs: {work}", "", "Try:"]
    lines += [f"  {cmd:<{width}}  # {note}" if note else f"  {cmd}" for cmd, note in tries]
    lines += ["", "Ctrl-C stops every agent and gateway."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--servers", type=int, choices=(1, 3), default=3, help="servers per DC")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to federate")
    ap.add_argument(
        "--once", action="store_true", help="exit 0 once federated (for tests), after clean-up"
    )
    args = ap.parse_args(argv)

    servers, gateways = topology(args.servers)
    busy = [
        f"{ip}:{port}"
        for ip, port in [(s.ip, p) for s in servers for p in (s.http, s.rpc, s.rpc + 1, s.rpc + 2)]
        + [(g.ip, g.port) for g in gateways]
        if port_in_use(ip, port)
    ]
    if busy:
        print(f"ports already in use: {', '.join(busy)}; stop what holds them", file=sys.stderr)
        return 1

    temp = args.dir is None
    work = Path(tempfile.mkdtemp(prefix="proconsul-demo-")) if temp else args.dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cli = proconsul_cmd()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PROCONSUL"] = shlex.join(cli)
    procs = Processes(work)

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    code = 0
    try:
        print(f"certificates (tls ca create, tls cert create -server) in {work / 'certs'}")
        subprocess.run(
            ["sh", str(HERE / "gen-certs.sh"), str(work / "certs")]
            + [f"{s.dc}:{s.node}" for s in servers],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for s in servers:
            (work / s.node / "data").mkdir(parents=True, exist_ok=True)
            conf = work / s.node / "server.hcl"
            conf.write_text(server_config(s, servers, gateways, work))
            procs.start(s.node, [*cli, "agent", f"-config-file={conf}"], env)
        print(f"started {len(servers)} servers", flush=True)
        for g in gateways:
            procs.start(g.name, [*cli, *gateway_args(g, servers)], env)
        print(f"started {len(gateways)} mesh gateways; waiting for federation", flush=True)
        took = wait_federated(
            procs,
            next(s for s in servers if s.dc == "dc1"),
            next(s for s in servers if s.dc == "dc2"),
            args.timeout,
            quiet=False,
        )
        print(f"federated in {took:.1f} s; ?dc=dc2 KV write from dc1 works")
        print(what_to_try(servers, gateways, shlex.join(cli), work), flush=True)
        if not args.once:
            while True:
                dead = procs.dead()
                if dead:
                    for name, rc, log in dead:
                        print(f"{name} exited with status {rc}; the end of {log}:\n{tail(log)}")
                    code = 1
                    break
                time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping")
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop()
        if temp and code == 0:
            shutil.rmtree(work, ignore_errors=True)
        elif temp:
            print(f"logs kept in {work}", file=sys.stderr)
        print(f"stopped {len(procs.procs)} processes")
    return code


if __name__ == "__main__":
    sys.exit(main())
