"""A state machine that cannot apply a committed entry stops the node instead of diverging."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raft.core.types import Membership, Server
from raft.node import FatalApplyError, NodeStopped, RaftNode
from raft.storage.memory import MemorySnapshotStore, MemoryStorage
from raft.transport.grpc import GrpcTransport

pytestmark = pytest.mark.integration


class PickyFSM:
    def apply(self, index: int, command: bytes) -> Any:
        if command == b"unknown":
            raise FatalApplyError("unknown command")
        if command == b"bad":
            raise ValueError("an ordinary error")
        return index

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        return None


async def test_fatal_apply_stops_the_node_other_errors_reach_the_proposer() -> None:
    transport = GrpcTransport("solo", "127.0.0.1:0")
    node = RaftNode(
        "solo",
        fsm=PickyFSM(),
        storage=MemoryStorage(),
        snapshots=MemorySnapshotStore(),
        transport=transport,
    )
    await node.bootstrap(Membership((Server("solo", "127.0.0.1:1"),)))
    await node.start()
    try:
        await node.wait_for_leader(10)
        assert await node.propose(b"fine") > 0
        with pytest.raises(ValueError, match="ordinary"):
            await node.propose(b"bad")
        with pytest.raises(NodeStopped):
            await asyncio.wait_for(node.propose(b"unknown"), 10)
        with pytest.raises(NodeStopped):
            await node.propose(b"after")
    finally:
        await node.stop()
