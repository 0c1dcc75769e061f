"""PROCONSUL_REGISTER_BATCH: many RegisterRequests in one Raft entry, each on its own."""

from __future__ import annotations

from server.commands.types import MessageType
from server.fsm import ConsulFSM, encode_command


def test_batch_applies_each_request_on_its_own() -> None:
    fsm = ConsulFSM()
    requests = [
        {"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": 80}},
        {"Node": "n1", "SkipNodeUpdate": True, "Service": {"ID": "x", "Port": 1}},  # no name
        {"node": "n1", "address": "10.0.0.1", "service": {"service": "db", "port": 5432}},
    ]
    command = encode_command(MessageType.PROCONSUL_REGISTER_BATCH, {"Requests": requests})
    results = fsm.apply(7, command)
    assert results[0] is None and results[2] is None
    assert results[1] is not None and "service name" in results[1]
    index, services = fsm.store.catalog.list_services(None)
    assert index == 7
    assert {row.service for row in services} == {"web", "db"}
    fsm.store.check_invariants()
