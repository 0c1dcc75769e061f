"""Agents and gateways running inside network namespaces, and a small HTTP client for them.

Every process is started as ``ip netns exec <ns> <venv>/bin/proconsul ...``: ``ip`` execs the
command, so the ``Popen`` PID is the agent's PID and killing it by PID kills the agent. Logs
go to files under the test's tmp dir; ``tail()`` returns their last lines for failure messages.

The test reaches an agent only through its node's management address (see topology.py); an
agent's ``client_addr`` is ``0.0.0.0``, so its HTTP API also listens on its LAN address (which
is what a gateway's local agent address and the servers' LAN peers use).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from helpers import agentproc
from helpers.cluster import proconsul

T = TypeVar("T")

#: The raft timing the loopback cluster tests use (tests/helpers/cluster.py).
DEV_TIMING = {"performance": {"raft_multiplier": 1}}
HTTP_PORT = 8500
GATEWAY_PORT = 8443
ADMIN_PORT = 19000


# ---------------------------------------------------------------------------------------------
# HTTP


class Client(agentproc.Client):
    """``helpers.agentproc.Client`` for ``http://<host>:<port>`` (a management address). The
    ``no_proxy_env`` fixture (conftest.py) keeps urllib from sending this to a proxy."""

    def __init__(self, host: str, port: int = HTTP_PORT) -> None:
        super().__init__(port)
        self.base = f"http://{host}:{port}"

    def try_json(self, path: str, timeout: float = 3) -> Any:
        """The JSON body of a 200 GET, else None (connection errors included)."""
        try:
            reply = self.get(path, timeout=timeout)
        except OSError:
            return None
        if reply.status != 200:
            return None
        try:
            return reply.json()
        except ValueError:
            return None


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.2,
    on_fail: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy (returned); fail with ``what``, the
    last value or exception and ``on_fail()`` (log tails) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (OSError, AssertionError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            extra = on_fail() if on_fail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s: {what}; last: {last!r}{extra}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class NsProc:
    """One process in namespace ``ns``: an agent or a gateway."""

    name: str
    ns: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        with self.log.open("ab") as out:
            out.write(f"==== start {time.strftime('%H:%M:%S')}: {' '.join(self.args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID and reap (a crash, as far as the others can tell)."""
        if self.alive and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 10) -> int | None:
        """SIGTERM by PID, then SIGKILL after ``timeout``; the exit status (None if killed)."""
        if not self.alive or self.proc is None:
            return self.proc.returncode if self.proc else None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Procs:
    """Every process of a test, stopped together (by PID) in ``stop_all``."""

    def __init__(self) -> None:
        self.all: list[NsProc] = []

    def add(self, p: NsProc) -> NsProc:
        self.all.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.all:
            if p.alive and p.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.proc.pid, signal.SIGKILL)
        for p in self.all:
            if p.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(timeout=10)

    def tails(self, lines: int = 30, only: Iterable[NsProc] | None = None) -> str:
        out = []
        for p in only if only is not None else self.all:
            state = "running" if p.alive else f"exited {p.proc.returncode if p.proc else '-'}"
            out.append(f"\n---- {p.name} (pid {p.pid}, {state}) {p.log}\n{p.tail(lines)}")
        return "".join(out)


# ---------------------------------------------------------------------------------------------
# TLS material


@dataclass
class Certs:
    """A CA and the certificates made with ``proconsul tls`` in ``dir``."""

    dir: Path
    ca: Path = field(init=False)
    made: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run("tls", "ca", "create")
        self.ca = self.dir / "consul-agent-ca.pem"
        assert self.ca.exists(), f"tls ca create wrote no {self.ca}"

    def _run(self, *args: str) -> list[Path]:
        proc = subprocess.run(
            [*proconsul(), *args], cwd=self.dir, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"proconsul {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return [self.dir / m for m in re.findall(r"==> Saved (\S+)", proc.stdout)]

    def server(self, dc: str, node: str) -> tuple[Path, Path]:
        """(cert, key) of a server certificate for ``node`` in ``dc``."""
        return self._cert(f"server:{dc}:{node}", "-server", "-dc", dc, "-node", node)

    def client(self, dc: str) -> tuple[Path, Path]:
        """(cert, key) of a client certificate for ``dc`` (one per dc, shared)."""
        return self._cert(f"client:{dc}", "-client", "-dc", dc)

    def _cert(self, key: str, *args: str) -> tuple[Path, Path]:
        if key not in self.made:
            saved = self._run("tls", "cert", "create", *args)
            keys = [p for p in saved if p.name.endswith("-key.pem")]
            certs = [p for p in saved if not p.name.endswith("-key.pem")]
            assert len(keys) == 1 and len(certs) == 1, f"tls cert create {args}: saved {saved}"
            self.made[key] = (certs[0], keys[0])
        return self.made[key]

    def tls_block(self, cert: Path, key: Path) -> dict[str, Any]:
        return {
            "defaults": {
                "ca_file": str(self.ca),
                "cert_file": str(cert),
                "key_file": str(key),
                "verify_incoming": True,
                "verify_outgoing": True,
            },
            "internal_rpc": {"verify_server_hostname": True},
        }


# ---------------------------------------------------------------------------------------------
# Commands


def agent_proc(name: str, ns: str, workdir: Path, config: dict[str, Any], *flags: str) -> NsProc:
    """``proconsul agent -config-file=<workdir>/<name>.json`` (dev Raft timing, DNS off)."""
    cfg_path = workdir / f"{name}.json"
    cfg_path.write_text(json.dumps({**DEV_TIMING, **config}, indent=2))
    args = [
        *proconsul(),
        "agent",
        f"-config-file={cfg_path}",
        "-dns-port=-1",
        *flags,
    ]
    return NsProc(name=name, ns=ns, args=args, log=workdir / f"{name}.log")


def gateway_proc(
    name: str,
    ns: str,
    workdir: Path,
    lan: str,
    wan: str,
    agent_http: str,
    admin: str,
    service: str = "mesh-gateway",
) -> NsProc:
    """A mesh gateway exposing servers: ``proconsul connect envoy -gateway=mesh -register``."""
    args = [
        *proconsul(),
        "connect",
        "envoy",
        "-gateway=mesh",
        "-register",
        "-service",
        service,
        "-address",
        f"{lan}:{GATEWAY_PORT}",
        "-wan-address",
        f"{wan}:{GATEWAY_PORT}",
        "-expose-servers",
        "-http-addr",
        agent_http,
        "-admin-bind",
        admin,
    ]
    return NsProc(name=name, ns=ns, args=args, log=workdir / f"{name}.log")
