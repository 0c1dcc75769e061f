"""The catalog state table and its Raft commands: registration rules, Consul's indexes and
per-service watches, deregistration cascades, session invalidation, undo on failure and
snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from server.commands.catalog import (
    RequestDecodeError,
    check_type,
    normalize_check,
    normalize_register_request,
)
from server.commands.types import MessageType
from server.fsm import ConsulFSM, encode_command
from server.state import DirEntry, Session, StateError, StateStore, WatchSet
from server.state.catalog import TABLE_CHECKS, TABLE_NODES, TABLE_SERVICES

ID1 = "11111111-2222-3333-4444-555555555555"
ID2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
S1 = "00000000-0000-0000-0000-000000000001"


def apply(fsm: ConsulFSM, index: int, kind: MessageType, body: Any) -> Any:
    return fsm.apply(index, encode_command(kind, body))


def reg(fsm: ConsulFSM, index: int, **body: Any) -> Any:
    body.setdefault("Address", "10.0.0.1")
    return apply(fsm, index, MessageType.REGISTER, body)


def dereg(fsm: ConsulFSM, index: int, **body: Any) -> Any:
    return apply(fsm, index, MessageType.DEREGISTER, body)


def serf_check(node: str, status: str = "passing") -> dict[str, Any]:
    return {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": status, "Node": node}


@pytest.fixture
def fsm() -> ConsulFSM:
    return ConsulFSM()


# --- registration ------------------------------------------------------------------------


def test_register_writes_node_service_and_check_at_one_index(fsm: ConsulFSM) -> None:
    assert reg(fsm, 5, Node="n1", Service={"Service": "web", "Port": 80}, Check={"Name": "c1"})
    catalog = fsm.store.catalog
    index, nodes = catalog.list_nodes(None)
    assert index == 5 and [(n.node, n.create_index, n.modify_index) for n in nodes] == [
        ("n1", 5, 5)
    ]
    _, pairs = catalog.service_nodes(None, "web")
    assert [(n.node, s.id, s.port, s.create_index) for n, s in pairs] == [("n1", "web", 80, 5)]
    check = catalog.node_check("n1", "c1")
    assert check is not None
    assert (check.check_id, check.status, check.service_id) == ("c1", "critical", "")
    for table in (TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS):
        assert fsm.store.max_index(table) == 5
    fsm.store.check_invariants()


def test_registering_the_same_thing_again_writes_nothing(fsm: ConsulFSM) -> None:
    body = {"Node": "n1", "Service": {"Service": "web"}, "Check": {"Name": "c1"}}
    reg(fsm, 5, **body)
    ws = WatchSet()
    fsm.store.catalog.check_service_nodes(ws, "web")
    fsm.store.catalog.list_nodes(ws)
    reg(fsm, 6, **body)
    assert not ws.fired
    assert fsm.store.max_index(TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS) == 5
    assert fsm.store.catalog.service_nodes(None, "web")[0] == 5


def test_names_are_case_insensitive_and_keep_their_spelling(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="Node-A", Service={"ID": "Web-1", "Service": "Web", "Tags": ["Primary"]})
    catalog = fsm.store.catalog
    assert catalog.node_exists("node-a")
    _, pairs = catalog.service_nodes(None, "WEB", tags=["primary"])
    assert [(n.node, s.id, s.service) for n, s in pairs] == [("Node-A", "Web-1", "Web")]
    assert catalog.service_nodes(None, "web", tags=["primary", "other"])[1] == []
    # Re-registering under another case updates the same rows.
    reg(fsm, 6, Node="NODE-A", Service={"ID": "web-1", "Service": "Web", "Port": 1})
    _, found = catalog.node_services(None, "node-a")
    assert found is not None
    assert [(s.id, s.port) for s in found[1]] == [("web-1", 1)]
    fsm.store.check_invariants()


def test_check_copies_service_name_and_tags_and_needs_its_service(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"ID": "w1", "Service": "web", "Tags": ["a"]})
    reg(fsm, 6, Node="n1", Check={"CheckID": "c", "ServiceID": "w1", "Status": "passing"})
    check = fsm.store.catalog.node_check("n1", "c")
    assert check is not None
    assert (check.service_name, check.service_tags) == ("web", ("a",))
    with pytest.raises(StateError, match="Missing service registration"):
        reg(fsm, 7, Node="n1", Check={"CheckID": "d", "ServiceID": "nope"})


def test_skip_node_update_keeps_the_node(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Address="10.0.0.1", TaggedAddresses={"lan": "10.0.0.1"})
    reg(fsm, 6, Node="n1", Address="10.9.9.9", SkipNodeUpdate=True, Service={"Service": "s"})
    node = fsm.store.catalog.node("n1")
    assert node is not None
    assert (node.address, node.modify_index, dict(node.tagged_addresses or {})) == (
        "10.0.0.1",
        5,
        {"lan": "10.0.0.1"},
    )


def test_node_id_renames_and_reserved_names(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="a", ID=ID1, Check=serf_check("a"), Service={"Service": "web"})
    # Same ID, new name: the old node (and what was on it) goes.
    reg(fsm, 6, Node="b", ID=ID1)
    catalog = fsm.store.catalog
    assert [(n.node, n.create_index, n.modify_index) for n in catalog.list_nodes(None)[1]] == [
        ("b", 5, 6)
    ]
    assert catalog.service_nodes(None, "web")[1] == []
    # A name held by a healthy node with another ID is refused.
    reg(fsm, 7, Node="c", ID=ID2, Check=serf_check("c"))
    with pytest.raises(StateError, match=r"Node name c is reserved by node .* with name c"):
        reg(fsm, 8, Node="c", ID="33333333-2222-3333-4444-555555555555")
    # Once its serfHealth is critical the name can be taken.
    reg(fsm, 9, Node="c", ID=ID2, Check=serf_check("c", "critical"))
    reg(fsm, 10, Node="c", ID="33333333-2222-3333-4444-555555555555")
    node = catalog.node("c")
    assert node is not None and node.id.startswith("3333")
    fsm.store.check_invariants()


def test_service_meta_is_validated(fsm: ConsulFSM) -> None:
    with pytest.raises(StateError, match="Invalid Service Meta for node n1 and serviceID s"):
        reg(fsm, 5, Node="n1", Service={"Service": "s", "Meta": {"consul-x": "1"}})


# --- validation (the pre-apply checks) ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"Address": "1.2.3.4"}, "Must provide node"),
        (
            {"Node": "n", "Address": "a", "Service": {"Service": "s", "PeerName": "p"}},
            "cannot register requests with PeerName in them",
        ),
        ({"Node": "n"}, "Must provide address if SkipNodeUpdate is not set"),
        ({"Node": "n", "Address": "a", "ID": "xyz"}, "Bad node ID: uuid string is wrong length"),
        (
            {"Node": "n", "Address": "a", "Service": {"ID": "x"}},
            "Must provide service name (Service.Service) when service ID is provided",
        ),
        (
            {"Node": "n", "Address": "a", "Service": {"Service": "x", "Address": "0.0.0.0"}},
            "Invalid service address",
        ),
        (
            {"Node": "n", "Address": "a", "Service": {"Service": "p", "Kind": "connect-proxy"}},
            "2 errors occurred:\n\t* Port or SocketPath must be set for a connect-proxy\n\t* "
            "Proxy.DestinationServiceName must be non-empty for Connect proxy services\n\n",
        ),
    ],
)
def test_register_validation_texts(body: dict[str, Any], text: str) -> None:
    with pytest.raises(StateError) as info:
        normalize_register_request(body)
    assert str(info.value) == text


def test_register_normalisation() -> None:
    req = normalize_register_request(
        {
            "node": "n",
            "address": "a",
            "service": {"service": "web", "weights": {"passing": 3}},
            "check": {"name": "c", "definition": {"http": "http://x", "interval": 10e9}},
            "checks": [{"CheckID": "t", "Definition": {"TTL": "15s"}}],
        }
    )
    assert req["Service"]["ID"] == "web"
    assert req["Service"]["Weights"] == {"Passing": 3, "Warning": 0}
    first, second = req["Checks"]
    assert (first["CheckID"], first["Node"]) == ("t", "n")
    assert second["CheckID"] == "c" and second["Type"] == "http"
    assert second["Definition"] == {"Interval": "10s", "HTTP": "http://x"}
    assert first["Type"] == "ttl" and first["Definition"] == {"TTL": 15_000_000_000}
    with pytest.raises(RequestDecodeError):
        normalize_register_request({"Node": "n", "Address": "a", "Service": {"Port": "80"}})


def test_check_type_follows_consul_order() -> None:
    assert check_type({"GRPC": "x", "HTTP": "y", "Interval": "1s"}) == "grpc"
    assert check_type({"HTTP": "y"}) == ""
    assert check_type({"AliasService": "db"}) == "alias"
    assert normalize_check({"Name": "x", "Type": "custom"}, "n")["Type"] == "custom"


# --- indexes and watches -----------------------------------------------------------------


def test_service_watch_wakes_only_for_its_service(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"Service": "web"})
    reg(fsm, 6, Node="n2", Address="10.0.0.2", Service={"Service": "db"})
    catalog = fsm.store.catalog
    ws = WatchSet()
    index, _ = catalog.check_service_nodes(ws, "web")
    assert index == 5
    reg(fsm, 7, Node="n2", Address="10.0.0.2", Service={"Service": "db", "Port": 5432})
    reg(fsm, 8, Node="n2", Address="10.0.0.2", Check={"CheckID": "x", "Status": "passing"})
    assert not ws.fired
    assert catalog.check_service_nodes(None, "web")[0] == 5
    # A node-level check on web's node moves web's index (health includes node checks).
    reg(fsm, 9, Node="n1", Check={"CheckID": "x", "Status": "passing"})
    assert ws.fired
    assert catalog.check_service_nodes(None, "web")[0] == 9
    # So does a change to the node itself.
    ws = WatchSet()
    catalog.service_nodes(ws, "web")
    reg(fsm, 10, Node="n1", Address="10.0.0.9")
    assert ws.fired and catalog.service_nodes(None, "web")[0] == 10


def test_missing_service_blocks_on_the_extinction_index(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"Service": "web"})
    reg(fsm, 6, Node="n1", Service={"Service": "db"})
    catalog = fsm.store.catalog
    # Never registered, nothing ever went extinct: the catalog's max index.
    assert catalog.service_nodes(None, "nope")[0] == 6
    ws = WatchSet()
    catalog.service_nodes(ws, "web")
    dereg(fsm, 7, Node="n1", ServiceID="web")
    assert ws.fired
    assert catalog.service_nodes(None, "web") == (7, [])
    assert catalog.service_nodes(None, "nope")[0] == 7
    # Waiting on a missing service wakes when an instance appears.
    ws = WatchSet()
    catalog.service_nodes(ws, "web")
    reg(fsm, 8, Node="n1", Service={"Service": "web"})
    assert ws.fired and catalog.service_nodes(None, "web")[0] == 8
    fsm.store.check_invariants()


def test_node_services_index_and_missing_node(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"Service": "web"})
    reg(fsm, 6, Node="n2", Address="10.0.0.2")
    catalog = fsm.store.catalog
    assert catalog.node_services(None, "n1")[0] == 5
    assert catalog.node_services(None, "zz") == (1, None)
    dereg(fsm, 7, Node="n2")
    assert catalog.node_services(None, "zz") == (7, None)


def test_checks_in_state_and_by_service(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"ID": "w", "Service": "web"})
    reg(fsm, 6, Node="n1", Check={"CheckID": "b", "ServiceID": "w", "Status": "passing"})
    reg(fsm, 7, Node="n1", Check={"CheckID": "a", "Status": "warning"})
    catalog = fsm.store.catalog
    assert [c.check_id for c in catalog.checks_in_state(None, "any")[1]] == ["a", "b"]
    assert [c.check_id for c in catalog.checks_in_state(None, "passing")[1]] == ["b"]
    assert [c.check_id for c in catalog.checks_in_state(None, "PASSING")[1]] == ["b"]
    with pytest.raises(StateError, match="object missing primary index"):
        reg(fsm, 99, Node="n1", Check={"Status": "passing"})
    assert catalog.checks_in_state(None, "maintenance") == (7, [])
    assert [c.check_id for c in catalog.service_checks(None, "WEB")[1]] == ["b"]
    _, items = catalog.check_service_nodes(None, "web")
    assert [[c.check_id for c in checks] for _, _, checks in items] == [["a", "b"]]
    reg(fsm, 8, Node="n1", Check={"CheckID": "b", "ServiceID": "w", "Status": "critical"})
    assert [c.check_id for c in catalog.checks_in_state(None, "critical")[1]] == ["b"]
    fsm.store.check_invariants()


def test_connect_finds_proxies_and_native_instances(fsm: ConsulFSM) -> None:
    proxy = {
        "Kind": "connect-proxy",
        "ID": "web-proxy",
        "Service": "web-sidecar-proxy",
        "Port": 21000,
        "Proxy": {"destination_service_name": "web"},
    }
    reg(fsm, 5, Node="n1", Service={"Service": "web"})
    reg(fsm, 6, Node="n1", Service=proxy)
    reg(
        fsm,
        7,
        Node="n2",
        Address="10.0.0.2",
        Service={"Service": "web", "Port": 1, "Connect": {"Native": True}},
    )
    catalog = fsm.store.catalog
    index, pairs = catalog.service_nodes(None, "web", connect=True)
    assert [(n.node, s.id) for n, s in pairs] == [("n1", "web-proxy"), ("n2", "web")]
    assert index == 7
    view = pairs[0][1].to_service_node(pairs[0][0])
    assert view["ServiceProxy"] == {
        "DestinationServiceName": "web",
        "Mode": "",
        "MeshGateway": {},
        "Expose": {},
    }


def test_services_by_node_meta(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", NodeMeta={"env": "prod"}, Service={"Service": "web"})
    reg(fsm, 6, Node="n2", Address="10.0.0.2", Service={"Service": "db"})
    catalog = fsm.store.catalog
    assert [r.service for r in catalog.list_services(None, {"env": "prod"})[1]] == ["web"]
    assert [n.node for n in catalog.list_nodes(None, {"env": "prod"})[1]] == ["n1"]


# --- deregistration, sessions ------------------------------------------------------------


def test_deregister_service_takes_its_checks(fsm: ConsulFSM) -> None:
    reg(
        fsm,
        5,
        Node="n1",
        Service={"ID": "w", "Service": "web"},
        Checks=[
            {"CheckID": "svc", "ServiceID": "w"},
            {"CheckID": "node"},
        ],
    )
    dereg(fsm, 6, Node="n1", ServiceID="w")
    catalog = fsm.store.catalog
    assert catalog.node_check("n1", "svc") is None
    assert catalog.node_check("n1", "node") is not None
    assert fsm.store.max_index(TABLE_CHECKS) == 6
    # Deregistering what is not there is fine.
    assert dereg(fsm, 7, Node="n1", ServiceID="w") is True
    assert dereg(fsm, 8, Node="ghost") is True
    fsm.store.check_invariants()


def test_deregister_node_destroys_everything_and_its_sessions(fsm: ConsulFSM) -> None:
    store = fsm.store
    reg(fsm, 5, Node="n1", Check=serf_check("n1"), Service={"Service": "web"})
    store.session_create(6, Session(id=S1, node="n1", node_checks=("serfHealth",)))
    store.kvs_lock(7, DirEntry("lock", b"x", session=S1))
    dereg(fsm, 8, Node="n1")
    assert store.session_get(None, S1)[1] is None
    entry = store.kvs_get(None, "lock")[1]
    assert entry is not None and entry.session == ""
    assert store.catalog.list_nodes(None) == (8, [])
    assert store.catalog.checks_in_state(None, "any") == (8, [])
    store.check_invariants()


def test_critical_check_destroys_dependent_sessions(fsm: ConsulFSM) -> None:
    store = fsm.store
    reg(fsm, 5, Node="n1", Check=serf_check("n1"))
    store.session_create(6, Session(id=S1, node="n1", node_checks=("serfHealth",)))
    reg(fsm, 7, Node="n1", Check=serf_check("n1", "warning"))
    assert store.session_get(None, S1)[1] is not None
    reg(fsm, 8, Node="n1", Check=serf_check("n1", "critical"))
    assert store.session_get(None, S1)[1] is None
    # Sessions need their node and checks.
    with pytest.raises(StateError, match="Check 'serfHealth' is in critical state"):
        store.session_create(9, Session(id=S1, node="n1", node_checks=("serfHealth",)))
    with pytest.raises(StateError, match="Missing node registration"):
        store.session_create(9, Session(id=S1, node="ghost"))


def test_deleting_a_check_destroys_its_sessions(fsm: ConsulFSM) -> None:
    store = fsm.store
    reg(fsm, 5, Node="n1", Check=serf_check("n1"))
    store.session_create(6, Session(id=S1, node="n1", node_checks=("serfHealth",)))
    dereg(fsm, 7, Node="n1", CheckID="serfHealth")
    assert store.session_get(None, S1)[1] is None


# --- atomicity and snapshots -------------------------------------------------------------


def test_a_failed_registration_leaves_nothing_behind(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"Service": "web"})
    before = fsm.store.snapshot()
    ws = WatchSet()
    fsm.store.catalog.service_nodes(ws, "web")
    with pytest.raises(StateError):
        reg(
            fsm,
            6,
            Node="n1",
            Address="10.0.0.7",
            Service={"Service": "web", "Port": 9},
            Checks=[{"CheckID": "ok"}, {"CheckID": "bad", "ServiceID": "missing"}],
        )
    assert fsm.store.snapshot() == before
    assert not ws.fired
    fsm.store.check_invariants()


def test_snapshot_round_trip_is_deterministic(fsm: ConsulFSM) -> None:
    reg(
        fsm,
        5,
        Node="n1",
        ID=ID1,
        NodeMeta={"a": "b"},
        TaggedAddresses={"lan": "10.0.0.1"},
        Service={
            "Service": "web",
            "Tags": ["x"],
            "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80}},
            "Weights": {"Passing": 5, "Warning": 1},
        },
        Check={"Name": "c", "Definition": {"TCP": "x:1", "Interval": "5s"}},
    )
    reg(fsm, 6, Node="n2", Address="10.0.0.2", Service={"Service": "db"})
    dereg(fsm, 7, Node="n2")
    blob = fsm.store.snapshot()
    restored = StateStore.restore(blob)
    assert restored.snapshot() == blob
    restored.check_invariants()
    catalog = restored.catalog
    assert catalog.service_nodes(None, "db") == (7, [])
    _, pairs = catalog.service_nodes(None, "web")
    assert pairs == fsm.store.catalog.service_nodes(None, "web")[1]
    assert catalog.node_services(None, "n2") == (7, None)
    assert StateStore.restore(StateStore().snapshot()).catalog.list_nodes(None) == (1, [])


def test_abandon_wakes_catalog_watchers(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"Service": "web"})
    ws = WatchSet()
    fsm.store.catalog.check_service_nodes(ws, "web")
    fsm.store.catalog.node_services(ws, "n1")
    fsm.store.abandon()
    assert all(channel.closed for channel in ws)


def test_leader_probes(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Check=serf_check("n1"), Service={"Service": "consul"})
    reg(fsm, 6, Node="n2", Address="10.0.0.2")
    catalog = fsm.store.catalog
    assert catalog.nodes_with_check("serfHealth") == ["n1"]
    assert catalog.serf_view("n1", "serfHealth", "consul") == ("10.0.0.1", "passing", True)
    assert catalog.serf_view("n2", "serfHealth", "consul") == ("10.0.0.2", None, False)
    assert catalog.serf_view("n3", "serfHealth", "consul") is None


def test_deregistering_a_node_deletes_its_coordinates(fsm: ConsulFSM) -> None:
    from server.state.coordinates import CoordinateEntry, origin_coord

    store = fsm.store
    reg(fsm, 5, Node="n1")
    reg(fsm, 6, Node="n2", Address="10.0.0.2")
    with store.write_txn(7) as tx:
        store.coordinates.batch_update_txn(
            tx,
            [CoordinateEntry("n1", "", origin_coord()), CoordinateEntry("n2", "", origin_coord())],
            store.catalog.node_exists,
        )
    dereg(fsm, 8, Node="n1")
    assert [e.node for e in store.coordinates.list_all(None)[1]] == ["n2"]


def test_a_check_moved_between_services_wakes_both(fsm: ConsulFSM) -> None:
    reg(fsm, 5, Node="n1", Service={"Service": "web"})
    reg(fsm, 6, Node="n2", Address="10.0.0.2", Service={"Service": "db"})
    reg(fsm, 7, Node="n2", Address="10.0.0.2", Check={"CheckID": "c", "ServiceID": "db"})
    ws = WatchSet()
    fsm.store.catalog.check_service_nodes(ws, "db")
    reg(fsm, 8, Node="n2", Address="10.0.0.2", Check={"CheckID": "c"})
    assert ws.fired
    _, items = fsm.store.catalog.check_service_nodes(None, "db")
    assert [[c.check_id for c in checks] for _, _, checks in items] == [["c"]]
    assert fsm.store.catalog.service_checks(None, "db")[1] == []
    fsm.store.check_invariants()
