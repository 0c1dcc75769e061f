"""Federation states: the table (indexes, watches, snapshot, IsSame) and the FEDERATION_STATE
Raft command. Pure: no sockets."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from server.commands.federation_state import FederationStateError, build_request
from server.fsm import ConsulFSM, MessageType, encode_command
from server.state import StateStore, WatchSet
from server.state.federation_states import GO_ZERO_TIME, format_go_time, is_same


def _gateway(node: str, status: str = "passing", port: int = 8443) -> dict[str, Any]:
    return {
        "Node": {"Node": node, "Address": "198.18.0.1", "CreateIndex": 3, "ModifyIndex": 3},
        "Service": {
            "Kind": "mesh-gateway",
            "ID": "mesh-gateway",
            "Service": "mesh-gateway",
            "Port": port,
            "Meta": {"consul-wan-federation": "1"},
            "CreateIndex": 4,
            "ModifyIndex": 4,
        },
        "Checks": [
            {
                "Node": node,
                "CheckID": "gw-tcp",
                "Status": status,
                "Output": "",
                "Interval": "10s",
                "CreateIndex": 5,
                "ModifyIndex": 5,
            }
        ],
    }


def _apply(fsm: ConsulFSM, index: int, op: str, state: dict[str, Any], now_ns: int = 0) -> Any:
    body = build_request(op, state, "dc1", now_ns=now_ns or 1_700_000_000_123_456_789)
    return fsm.apply(index, encode_command(MessageType.FEDERATION_STATE, body))


def test_format_go_time_trims_fraction_like_go() -> None:
    assert format_go_time(0) == "1970-01-01T00:00:00Z"
    assert format_go_time(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert format_go_time(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert format_go_time(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_upsert_keeps_create_index_sets_modify_and_primary_index() -> None:
    fsm = ConsulFSM(StateStore())
    assert _apply(fsm, 10, "upsert", {"Datacenter": "dc2", "MeshGateways": [_gateway("gw1")]})
    table = fsm.store.federation_states
    index, row = table.get(None, "dc2")
    assert index == 10
    assert row is not None
    assert row["CreateIndex"] == row["ModifyIndex"] == row["PrimaryModifyIndex"] == 10
    assert row["UpdatedAt"] == "2023-11-14T22:13:20.123456789Z"
    assert row["MeshGateways"] == [_gateway("gw1")]
    # Replication carries the primary's index; CreateIndex stays.
    state = {"Datacenter": "dc2", "UpdatedAt": "2024-01-01T00:00:00Z", "PrimaryModifyIndex": 99}
    _apply(fsm, 12, "upsert", state)
    _, row = table.get(None, "dc2")
    assert row is not None
    assert (row["CreateIndex"], row["ModifyIndex"], row["PrimaryModifyIndex"]) == (10, 12, 99)
    assert row["UpdatedAt"] == "2024-01-01T00:00:00Z"  # given: not re-stamped
    assert "MeshGateways" not in row  # Go's omitempty
    fsm.store.check_invariants()


def test_the_command_carries_updated_at_so_replicas_agree() -> None:
    body = build_request("upsert", {"Datacenter": "dc1"}, "dc1", now_ns=5_000_000_000)
    raw = encode_command(MessageType.FEDERATION_STATE, body)
    a, b = ConsulFSM(StateStore()), ConsulFSM(StateStore())
    a.apply(7, raw)
    b.apply(7, raw)
    assert a.store.snapshot() == b.store.snapshot()
    assert a.store.federation_states.get(None, "dc1")[1]["UpdatedAt"] == "1970-01-01T00:00:05Z"  # type: ignore[index]
    # The zero time counts as absent; a missing UpdatedAt in a raw command stays Go's zero.
    stamped = build_request("upsert", {"Datacenter": "x", "UpdatedAt": GO_ZERO_TIME}, "dc1")
    assert stamped["State"]["UpdatedAt"] != GO_ZERO_TIME
    raw = encode_command(
        MessageType.FEDERATION_STATE, {"Op": "upsert", "State": {"Datacenter": "y"}}
    )
    a.apply(8, raw)
    assert a.store.federation_states.get(None, "y")[1]["UpdatedAt"] == GO_ZERO_TIME  # type: ignore[index]


def test_delete_is_idempotent_and_list_is_sorted() -> None:
    fsm = ConsulFSM(StateStore())
    for i, dc in enumerate(("dc3", "dc1", "dc2"), start=5):
        _apply(fsm, i, "upsert", {"Datacenter": dc})
    table = fsm.store.federation_states
    index, rows = table.list_all(None)
    assert index == 7
    assert [r["Datacenter"] for r in rows] == ["dc1", "dc2", "dc3"]
    assert _apply(fsm, 8, "delete", {"Datacenter": "dc2"})
    assert _apply(fsm, 9, "delete", {"Datacenter": "dc2"})
    index, rows = table.list_all(None)
    assert index == 8  # the no-op delete moves nothing
    assert [r["Datacenter"] for r in rows] == ["dc1", "dc3"]
    assert table.get(None, "dc2") == (8, None)


def test_empty_table_index_is_one() -> None:
    store = StateStore()
    assert store.federation_states.list_all(None) == (1, [])
    assert store.federation_states.get(None, "dc1") == (1, None)


def test_bad_commands_are_refused_and_change_nothing() -> None:
    fsm = ConsulFSM(StateStore())
    _apply(fsm, 5, "upsert", {"Datacenter": "dc1"})
    before = fsm.store.snapshot()
    cases: list[tuple[Any, str]] = [
        ({"Op": "frob", "State": {"Datacenter": "dc1"}}, "Invalid federation state operation"),
        ({"Op": "upsert"}, "missing State"),
        ({"Op": "upsert", "State": {"Datacenter": ""}}, "missing Datacenter"),
        ({"Op": "delete", "State": {}}, "missing Datacenter"),
    ]
    for body, message in cases:
        with pytest.raises(FederationStateError, match=message):
            fsm.apply(6, encode_command(MessageType.FEDERATION_STATE, body))
    assert fsm.store.snapshot() == before


def test_watches_fire_per_datacenter_and_for_the_table() -> None:
    fsm = ConsulFSM(StateStore())
    table = fsm.store.federation_states
    ws_dc1, ws_dc2, ws_all = WatchSet(), WatchSet(), WatchSet()
    table.get(ws_dc1, "dc1")
    table.get(ws_dc2, "dc2")
    table.list_all(ws_all)
    _apply(fsm, 5, "upsert", {"Datacenter": "dc1"})
    assert ws_dc1.fired and ws_all.fired and not ws_dc2.fired


def test_snapshot_restore_keeps_records_and_is_deterministic() -> None:
    fsm = ConsulFSM(StateStore())
    _apply(fsm, 5, "upsert", {"Datacenter": "dc2", "MeshGateways": [_gateway("gw")]})
    _apply(fsm, 6, "upsert", {"Datacenter": "dc1"})
    blob = fsm.store.snapshot()
    restored = StateStore.restore(blob)
    assert restored.snapshot() == blob
    assert restored.federation_states.list_all(None) == fsm.store.federation_states.list_all(None)
    assert [r["Datacenter"] for r in orjson.loads(blob)["federation_states"]] == ["dc1", "dc2"]
    restored.check_invariants()
    # A snapshot from before the table existed restores as an empty table.
    document = orjson.loads(blob)
    del document["federation_states"]
    old = StateStore.restore(orjson.dumps(document))
    assert old.federation_states.list_all(None)[1] == []


def test_a_failed_transaction_rolls_the_table_back() -> None:
    store = StateStore()
    with store.write_txn(5) as tx:
        store.federation_states.upsert_txn(tx, {"Datacenter": "dc1"})
    before = store.snapshot()
    with pytest.raises(RuntimeError), store.write_txn(6) as tx:
        store.federation_states.upsert_txn(tx, {"Datacenter": "dc1", "PrimaryModifyIndex": 3})
        store.federation_states.delete_txn(tx, "dc1")
        store.federation_states.upsert_txn(tx, {"Datacenter": "dc9"})
        raise RuntimeError("abort")
    assert store.snapshot() == before


def test_is_same_ignores_updated_at_and_raft_indexes_only() -> None:
    a = {"Datacenter": "dc1", "MeshGateways": [_gateway("gw1")], "UpdatedAt": "x"}
    b = copy.deepcopy(a)
    b["UpdatedAt"] = "y"
    b["ModifyIndex"] = 77
    gw = b["MeshGateways"][0]
    gw["Node"]["ModifyIndex"] = 40
    gw["Service"]["CreateIndex"] = 41
    gw["Checks"][0]["ModifyIndex"] = 42
    gw["Checks"][0]["Interval"] = "30s"  # Consul's HealthCheck.IsSame does not compare it
    assert is_same(a, b)
    for change in (
        lambda s: s.__setitem__("Datacenter", "dc2"),
        lambda s: s["MeshGateways"].append(_gateway("gw2")),
        lambda s: s["MeshGateways"][0]["Checks"][0].__setitem__("Status", "critical"),
        lambda s: s["MeshGateways"][0]["Service"].__setitem__("Port", 9),
        lambda s: s["MeshGateways"][0]["Node"].__setitem__("Address", "198.18.0.2"),
        lambda s: s["MeshGateways"][0]["Checks"].clear(),
    ):
        c = copy.deepcopy(a)
        change(c)
        assert not is_same(a, c)
    assert is_same({"Datacenter": "dc1"}, {"Datacenter": "dc1", "MeshGateways": []})
    assert is_same(None, None) and not is_same(a, None)
