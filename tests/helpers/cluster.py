"""Real ``proconsul agent -server`` processes on 127.0.0.1 for integration tests.

``ServerProc`` is one server (ports, data dir, log, start/kill/terminate by PID);
``make_servers(tmp_path, n)`` builds ``n`` of them that form a cluster with
``-bootstrap-expect=<expect>`` and ``-retry-join`` to each other, with dev Raft timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

#: Ports this test process already handed out: a later call never returns them again (the
#: kernel may, once the probe socket is closed and before the agent binds it).
_HANDED_OUT: set[int] = set()


def free_ports(n: int) -> list[int]:
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in _HANDED_OUT:
                sockets.append(s)  # keep it bound so the kernel offers another
                continue
            # The serf port is also bound for UDP: make sure that one is free too.
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("127.0.0.1", s.getsockname()[1]))
            except OSError:
                s.close()
                u.close()
                continue
            sockets.append(s)
            sockets.append(u)
            ports.append(s.getsockname()[1])
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for s in sockets:
            s.close()


def proconsul() -> list[str]:
    exe = Path(sys.executable).with_name("proconsul")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


@dataclass
class ServerProc:
    name: str
    http: int
    rpc: int
    serf: int
    data_dir: Path
    log: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.rpc}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def make_servers(tmp_path: Path, n: int, expect: int = 3, first: int = 1) -> list[ServerProc]:
    """``n`` servers named s<first>..; each retry-joins the others of this batch (and
    ``join`` more with ``extra_joins``)."""
    ports = free_ports(3 * n)
    config = tmp_path / "dev-timing.json"
    config.write_text(json.dumps({"performance": {"raft_multiplier": 1}}))
    servers = []
    for i in range(n):
        http, rpc, serf = ports[3 * i : 3 * i + 3]
        name = f"s{first + i}"
        servers.append(
            ServerProc(name, http, rpc, serf, tmp_path / name, tmp_path / f"{name}.log", args=[])
        )
    for s in servers:
        joins = [f"-retry-join=127.0.0.1:{o.serf}" for o in servers if o is not s]
        s.args = server_args(s, config, expect, joins)
    return servers


def make_client(tmp_path: Path, name: str, servers: list[ServerProc], *extra: str) -> ServerProc:
    """A client agent (no ``-server``) retry-joining ``servers``, with dev Raft timing (the
    config file ``make_servers`` wrote) and DNS off; ``extra`` flags are appended."""
    http, serf = free_ports(2)
    client = ServerProc(name, http, 0, serf, tmp_path / name, tmp_path / f"{name}.log", args=[])
    client.args = [
        *proconsul(),
        "agent",
        f"-node={name}",
        f"-data-dir={client.data_dir}",
        "-bind=127.0.0.1",
        "-client=127.0.0.1",
        f"-http-port={http}",
        f"-serf-lan-port={serf}",
        "-dns-port=-1",
        f"-config-file={tmp_path / 'dev-timing.json'}",
        *(f"-retry-join=127.0.0.1:{s.serf}" for s in servers),
        *extra,
    ]
    return client


def server_args(s: ServerProc, config: Path, expect: int, joins: list[str]) -> list[str]:
    return [
        *proconsul(),
        "agent",
        "-server",
        *([f"-bootstrap-expect={expect}"] if expect else []),
        f"-node={s.name}",
        f"-data-dir={s.data_dir}",
        "-bind=127.0.0.1",
        "-client=127.0.0.1",
        f"-http-port={s.http}",
        f"-server-port={s.rpc}",
        f"-serf-lan-port={s.serf}",
        "-serf-wan-port=0",
        "-dns-port=-1",
        f"-config-file={config}",
        *joins,
    ]


REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=4)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=REQUEST_TIMEOUT) as resp:
        if resp.status != 200:
            return None
        return await resp.json()


async def wait_for_leader(
    session: aiohttp.ClientSession, servers: list[ServerProc], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = set()
        for s in servers:
            try:
                seen.add(await get_json(session, s.base + "/v1/status/leader"))
            except (aiohttp.ClientError, TimeoutError):
                seen.add(None)
        if len(seen) == 1:
            (leader,) = seen
            if leader:
                return str(leader)
        await asyncio.sleep(0.2)
    raise AssertionError("the servers did not agree on a leader")


#: What a poll of a real process may raise while it is not there yet.
POLL_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, IndexError)


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, poll: float = 0.25
) -> Any:
    """Poll ``check`` until it returns something true (not an exception), and return it;
    ``AssertionError`` naming ``what`` and the last result after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except POLL_ERRORS as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(poll)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
