"""`proconsul agent -dev` (what `make run` starts): a real process answering the status API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proconsul() -> list[str]:
    exe = Path(sys.executable).with_name("proconsul")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def test_dev_agent_elects_itself_and_answers_status(tmp_path: Path) -> None:
    http, rpc = free_port(), free_port()
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [*proconsul(), "agent", "-dev", "-http-port", str(http), "-server-port", str(rpc)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        leader: object = ""
        while time.monotonic() < deadline:
            try:
                leader = get_json(f"http://127.0.0.1:{http}/v1/status/leader")
                if leader:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert leader == f"127.0.0.1:{rpc}"
        assert get_json(f"http://127.0.0.1:{http}/v1/status/peers") == [f"127.0.0.1:{rpc}"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/", timeout=2) as resp:
            assert resp.status == 200  # a health URL for clients
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    text = (tmp_path / "agent.log").read_text()
    assert "became_leader" in text and "agent_stopped" in text


def test_bad_port_is_a_clear_error() -> None:
    proc = subprocess.run(
        [*proconsul(), "agent", "-dev", "-http-port", "70000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "-http-port" in proc.stderr and "70000" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def test_server_port_zero_picks_a_free_port(tmp_path: Path) -> None:
    http = free_port()
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [*proconsul(), "agent", "-dev", "-http-port", str(http), "-server-port", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        leader: object = ""
        while time.monotonic() < deadline and not leader:
            with contextlib.suppress(OSError):
                leader = get_json(f"http://127.0.0.1:{http}/v1/status/leader")
            time.sleep(0.1)
        assert isinstance(leader, str) and leader.startswith("127.0.0.1:")
        assert int(leader.rsplit(":", 1)[1]) > 0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()
