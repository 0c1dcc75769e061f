"""A pytest plugin (``-p pyconsul_shard``) that splits a run into shards: with
``PROCONSUL_SHARD=k/n`` in the environment only every n-th selected test, starting with the
k-th (0-based), is kept. It runs after ``-k`` and ``--deselect``, so the shards share out the
tests that are actually selected. Without the variable it does nothing.

py-consul's tests each start their own agent and mostly wait on it (a Raft election, check
intervals), so shards run side by side finish much sooner than one run, even on 2 cores.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spec = os.environ.get("PROCONSUL_SHARD", "").strip()
    if not spec:
        return
    index, count = (int(part) for part in spec.split("/"))
    if not 0 <= index < count:
        raise pytest.UsageError(f"PROCONSUL_SHARD={spec!r}: want k/n with 0 <= k < n")
    keep = [item for position, item in enumerate(items) if position % count == index]
    dropped = [item for position, item in enumerate(items) if position % count != index]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep
