"""Fixtures for integration tests (helpers live in ``tests/helpers/agentproc.py``:
``from helpers.agentproc import Client, start_agent, stop_agent``)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from helpers.agentproc import Client, start_agent, stop_agent


@pytest.fixture(scope="module")
def dev_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    proc, client = start_agent(tmp_path_factory.mktemp("agent") / "agent.log")
    try:
        yield client
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_agent(proc)
