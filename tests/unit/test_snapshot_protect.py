"""Retention never deletes the snapshot the log store refers to (received snapshots that Raft
then ignored must not push it out, or the node could not restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raft.core.types import SnapshotMeta
from raft.storage.memory import MemorySnapshotStore
from raft.storage.snapshots import FileSnapshotStore


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_protected_snapshot_survives_retention(kind: str, tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path, retain=2) if kind == "file" else MemorySnapshotStore(2)
    for index in (100, 200, 250, 300):
        sink = store.create(SnapshotMeta(index, 3))
        sink.write(f"state@{index}".encode())
        sink.commit()
        if index == 100:
            store.protect(100, 3)
    kept = {m.index for m in store.list()}
    assert 100 in kept and {250, 300} <= kept
    _, data, _ = store.read(100, 3)
    assert data == b"state@100"
