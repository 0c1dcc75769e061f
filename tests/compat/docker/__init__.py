"""A fake ``docker`` package that runs ``proconsul agent -dev`` where py-consul's test-suite
asks Docker for a ``hashicorp/consul`` container.

py-consul 1.8.0's ``conftest.py`` only does this with the docker SDK::

    client = docker.from_env()
    container = client.containers.run("hashicorp/consul:<version>", command=..., ports={8500: None},
                                      environment={"CONSUL_LOCAL_CONFIG": "<json>"}, detach=True,
                                      name=...)
    container.reload()
    container.attrs["NetworkSettings"]["Ports"]["8500/tcp"][0]["HostPort"]
    container.logs(); container.stop(); container.remove()
    client.containers.get(name)    # after an APIError, to clean up

so a "container" here is one agent process:
``proconsul agent -dev -http-port <port> -server-port 0 -config-file <CONSUL_LOCAL_CONFIG as JSON>``.
The process stays in our process group (no new session): whoever kills the group of the
pytest process that imported this package also kills the agents it started.

Environment:
  PROCONSUL_SHIM_HTTP_PORT  HTTP port for every agent (default 0: a free port per agent).
                            Two py-consul tests register HTTP checks on localhost:8500.
  PROCONSUL_SHIM_AGENT      command that starts the agent (split like a shell would), default:
                            the ``proconsul`` script next to sys.executable, else
                            ``python -m server.cli``.
  PROCONSUL_SHIM_READY_TIMEOUT  seconds to wait for the HTTP port to accept connections (20).
"""

from __future__ import annotations

import atexit
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
from pathlib import Path
from typing import Any

from . import errors
from .errors import APIError, NotFound

__all__ = ["APIError", "Container", "DockerClient", "NotFound", "errors", "from_env"]

_running: dict[str, Container] = {}


def _agent_command() -> list[str]:
    override = os.environ.get("PROCONSUL_SHIM_AGENT", "").strip()
    if override:
        return shlex.split(override)
    script = Path(sys.executable).with_name("proconsul")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "server.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Container:
    """One ``proconsul agent -dev`` process, known by its PID."""

    def __init__(self, name: str, image: str, environment: dict[str, str] | None) -> None:
        self.name = name
        self.image = image
        self.workdir = Path(tempfile.mkdtemp(prefix=f"proconsul-{name}-"))
        config = json.loads((environment or {}).get("CONSUL_LOCAL_CONFIG") or "{}")
        config_file = self.workdir / "config.json"
        config_file.write_text(json.dumps(config, indent=1))
        self.log_path = self.workdir / "agent.log"

        self.port = int(os.environ.get("PROCONSUL_SHIM_HTTP_PORT", "0")) or _free_port()
        deadline = time.monotonic() + 10  # the previous test's agent may still be exiting
        while _accepts(self.port):
            if time.monotonic() > deadline:
                shutil.rmtree(self.workdir, ignore_errors=True)
                raise APIError(f"port {self.port} is busy; cannot start {name}")
            time.sleep(0.1)

        argv = [
            *_agent_command(),
            *("agent", "-dev", "-http-port", str(self.port), "-server-port", "0"),
            *("-config-file", str(config_file)),
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

        deadline = time.monotonic() + float(os.environ.get("PROCONSUL_SHIM_READY_TIMEOUT", "20"))
        while not _accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.logs().decode(errors="replace")[-2000:]
                shutil.rmtree(self.workdir, ignore_errors=True)
                raise APIError(f"{shlex.join(argv)} did not listen on {self.port}:\n{tail}")
            time.sleep(0.05)

        self.attrs: dict[str, Any] = {
            "Name": name,
            "NetworkSettings": {
                "Ports": {"8500/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(self.port)}]}
            },
        }

    def reload(self) -> None:
        """The attributes never change."""

    def logs(self, **_kwargs: Any) -> bytes:
        try:
            return self.log_path.read_bytes()
        except FileNotFoundError:
            return b""

    def stop(self, timeout: float = 10, **_kwargs: Any) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()

    def remove(self, force: bool = False, **_kwargs: Any) -> None:
        self.stop()
        _running.pop(self.name, None)
        shutil.rmtree(self.workdir, ignore_errors=True)


class _Containers:
    def run(
        self,
        image: str,
        command: str | None = None,
        *,
        environment: dict[str, str] | None = None,
        name: str | None = None,
        **_kwargs: Any,
    ) -> Container:
        name = name or f"proconsul_{time.time_ns()}"
        if name in _running:
            raise APIError(f"Conflict: the container name {name!r} is already in use")
        container = Container(name, image, environment)
        _running[name] = container
        return container

    def get(self, name: str) -> Container:
        try:
            return _running[name]
        except KeyError:
            raise NotFound(f"No such container: {name}") from None

    def list(self, **_kwargs: Any) -> list[Container]:
        return list(_running.values())


class DockerClient:
    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.containers = _Containers()


def from_env(*_args: Any, **_kwargs: Any) -> DockerClient:
    return DockerClient()


@atexit.register
def _stop_all() -> None:
    for container in list(_running.values()):
        container.remove(force=True)
