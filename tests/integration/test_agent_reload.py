"""SIGHUP and ``PUT /v1/agent/reload`` re-read the configuration files: new services appear,
and a configuration that no longer loads is refused with its message while nothing changes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers.agentproc import start_agent, stop_agent

pytestmark = pytest.mark.integration


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_reload_adds_config_services(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"service": {"name": "web", "port": 80}}))
    proc, client = start_agent(tmp_path / "agent.log", "-config-file", str(config))
    try:
        wait_for(lambda: "web" in client.get("/v1/agent/services").json())
        config.write_text(
            json.dumps({"services": [{"name": "web", "port": 80}, {"name": "db", "port": 5432}]})
        )
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: "db" in client.get("/v1/agent/services").json())
        wait_for(lambda: client.get("/v1/catalog/service/db").json() != [])

        config.write_text(json.dumps({"servce": {"name": "cache", "port": 6379}}))
        reply = client.put("/v1/agent/reload")
        assert reply.status == 500
        assert b"agent.json" in reply.body
        services = client.get("/v1/agent/services").json()
        assert {"web", "db"} <= set(services) and "cache" not in services

        config.write_text(json.dumps({"service": {"name": "cache", "port": 6379}}))
        assert client.put("/v1/agent/reload").status == 200
        assert "cache" in client.get("/v1/agent/services").json()
        assert proc.poll() is None
    finally:
        stop_agent(proc)
