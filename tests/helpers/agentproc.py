"""Shared helpers for integration tests: a real ``proconsul agent -dev`` process and a small
HTTP client for it.

``dev_agent`` (module scope) starts one agent per test module on free ports and stops it with
SIGTERM (exit 0 expected), falling back to SIGKILL by PID. ``start_agent(log_path, *extra_args)``
starts one more (stop it with ``stop_agent``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proconsul() -> list[str]:
    exe = Path(sys.executable).with_name("proconsul")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def index(self) -> int:
        return int(self.headers["X-Consul-Index"])


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 5
    ) -> Reply:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.headers, err.read())

    def get(self, path: str, timeout: float = 5) -> Reply:
        return self.request("GET", path, timeout=timeout)

    def put(self, path: str, body: bytes = b"") -> Reply:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)

    def put_json(self, path: str, data: Any) -> Reply:
        return self.request("PUT", path, json.dumps(data).encode())


def start_agent(log_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Client]:
    http, rpc = free_port(), free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                *proconsul(),
                "agent",
                "-dev",
                "-http-port",
                str(http),
                "-server-port",
                str(rpc),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = Client(http)
    deadline = time.monotonic() + 20
    leader: object = ""
    while time.monotonic() < deadline and not leader:
        try:
            leader = client.get("/v1/status/leader").json()
        except OSError:
            time.sleep(0.1)
    if leader != f"127.0.0.1:{rpc}":
        stop_agent(proc)
        pytest.fail(f"no leader: {leader!r}\n{log_path.read_text()}")
    return proc, client


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
