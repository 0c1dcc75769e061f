"""`proconsul agent -dev` as a real process: the catalog and health endpoints end to end
(HTTP -> validation -> Raft -> catalog table -> blocking reads)."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import quote

import pytest
from helpers.agentproc import Client, Reply

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent(dev_agent: Client) -> Client:
    return dev_agent


def register(agent: Client, body: dict[str, Any]) -> Reply:
    return agent.put_json("/v1/catalog/register", body)


def test_register_and_read_back_in_consul_shapes(agent: Client) -> None:
    reply = register(
        agent,
        {
            "node": "t1-n1",
            "address": "10.1.0.1",
            "NodeMeta": {"rack": "r1"},
            "service": {"service": "t1-web", "tags": ["v1"], "port": 8080},
            "check": {"name": "t1-c1", "status": "passing"},
        },
    )
    assert reply.status == 200 and reply.json() is True

    nodes = agent.get("/v1/catalog/nodes?node-meta=rack:r1")
    assert [n["Node"] for n in nodes.json()] == ["t1-n1"]
    node = nodes.json()[0]
    assert set(node) == {
        "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta",
        "CreateIndex", "ModifyIndex",
    }  # fmt: skip
    assert node["Datacenter"] == "dc1" and node["Meta"] == {"rack": "r1"}

    [svc] = agent.get("/v1/catalog/service/t1-web").json()
    assert svc["ServiceID"] == "t1-web" and svc["ServicePort"] == 8080
    assert svc["Address"] == "10.1.0.1" and svc["NodeMeta"] == {"rack": "r1"}
    assert svc["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert svc["ServiceProxy"] == {"Mode": "", "MeshGateway": {}, "Expose": {}}
    assert svc["ServiceMeta"] == {} and svc["ServiceConnect"] == {}

    services = agent.get("/v1/catalog/services").json()
    assert services["t1-web"] == ["v1"]

    got = agent.get("/v1/catalog/node/t1-n1")
    body = got.json()
    assert body["Node"]["Node"] == "t1-n1"
    assert body["Services"]["t1-web"]["Port"] == 8080
    assert got.index == body["Services"]["t1-web"]["ModifyIndex"]

    [entry] = agent.get("/v1/health/service/t1-web?passing").json()
    assert set(entry) == {"Node", "Service", "Checks"}
    assert [c["CheckID"] for c in entry["Checks"]] == ["t1-c1"]
    assert entry["Checks"][0]["ServiceTags"] == [] and entry["Checks"][0]["Definition"] == {}


def test_missing_things_answer_as_consul(agent: Client) -> None:
    missing = agent.get("/v1/catalog/node/t2-nope")
    assert missing.status == 200 and missing.json() is None and missing.index >= 1
    listing = agent.get("/v1/catalog/node-services/t2-nope")
    assert listing.status == 200 and listing.json() == {"Node": None, "Services": None}
    assert agent.get("/v1/catalog/service/t2-nope").json() == []
    assert agent.get("/v1/health/service/t2-nope").json() == []
    assert agent.get("/v1/health/checks/t2-nope").json() == []
    assert agent.get("/v1/catalog/gateway-services/t2-gw").json() == []
    assert agent.get("/v1/health/ingress/t2-nope").json() == []
    assert agent.get("/v1/catalog/datacenters").json() == ["dc1"]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"Node": "x", "Address": "a", "Datacenter": "dc2"}, 500, "No path to datacenter"),
        ({"Address": "a"}, 500, "Must provide node"),
        ({"Node": "x"}, 500, "Must provide address if SkipNodeUpdate is not set"),
        ({"Node": "x", "Address": "a", "Service": {"ID": "s"}}, 500, "Must provide service name"),
        ({"Node": "x", "Address": "a", "Service": {"Service": "s", "Port": "80"}}, 400,
         "Request decode failed"),
    ],
)  # fmt: skip
def test_register_errors(agent: Client, body: dict[str, Any], status: int, text: str) -> None:
    reply = register(agent, body)
    assert reply.status == status
    assert reply.body.decode().startswith(text)
    assert agent.get("/v1/catalog/node/x").json() is None


def test_filters_tags_and_states(agent: Client) -> None:
    for i, tag in ((1, "prod"), (2, "staging")):
        body = {
            "Node": f"t3-n{i}",
            "Address": f"10.3.0.{i}",
            "Service": {"Service": "t3-api", "Tags": [tag]},
            "Check": {"CheckID": "t3-chk", "ServiceID": "t3-api", "Status": "passing"},
        }
        assert register(agent, body).json() is True
    by_tag = agent.get("/v1/health/service/t3-api?tag=PROD").json()
    assert [e["Node"]["Node"] for e in by_tag] == ["t3-n1"]
    filtered = agent.get('/v1/health/service/t3-api?filter="staging"+in+Service.Tags').json()
    assert [e["Node"]["Node"] for e in filtered] == ["t3-n2"]
    bad = agent.get("/v1/catalog/nodes?filter=not+valid((")
    assert bad.status == 400
    expr = quote('ServiceName == "t3-api"')
    passing = agent.get(f"/v1/health/state/passing?filter={expr}").json()
    assert sorted(c["Node"] for c in passing) == ["t3-n1", "t3-n2"]
    assert agent.get("/v1/health/state/nonsense").json() == []
    assert agent.get("/v1/health/service/t3-api?passing=maybe").status == 400
    # A critical check takes its instance out of ?passing.
    register(
        agent,
        {
            "Node": "t3-n2",
            "Address": "10.3.0.2",
            "Check": {"CheckID": "t3-chk", "ServiceID": "t3-api", "Status": "critical"},
        },
    )
    passing_nodes = agent.get("/v1/health/service/t3-api?passing").json()
    assert [e["Node"]["Node"] for e in passing_nodes] == ["t3-n1"]


def blocking_get(agent: Client, path: str, results: list[Reply]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(agent.get(path, timeout=15)))
    thread.start()
    return thread


def test_blocking_health_query_wakes_only_for_its_service(agent: Client) -> None:
    register(agent, {"Node": "t4-n1", "Address": "10.4.0.1", "Service": {"Service": "t4-web"}})
    register(agent, {"Node": "t4-n2", "Address": "10.4.0.2", "Service": {"Service": "t4-db"}})
    first = agent.get("/v1/health/service/t4-web")
    results: list[Reply] = []
    thread = blocking_get(agent, f"/v1/health/service/t4-web?index={first.index}&wait=10s", results)
    time.sleep(0.3)
    # Another service's change: the query keeps blocking.
    register(
        agent,
        {"Node": "t4-n2", "Address": "10.4.0.2", "Service": {"Service": "t4-db", "Port": 1}},
    )
    time.sleep(0.5)
    assert thread.is_alive() and not results
    changed = register(
        agent,
        {"Node": "t4-n1", "Address": "10.4.0.1", "Service": {"Service": "t4-web", "Port": 2}},
    )
    assert changed.json() is True
    thread.join(timeout=10)
    assert not thread.is_alive()
    [reply] = results
    [entry] = reply.json()
    assert entry["Service"]["Port"] == 2
    assert reply.index == entry["Service"]["ModifyIndex"] > first.index


def test_deregister_cascades(agent: Client) -> None:
    register(
        agent,
        {
            "Node": "t5-n1",
            "Address": "10.5.0.1",
            "Service": {"ID": "t5-s", "Service": "t5-svc"},
            "Checks": [{"CheckID": "t5-svc-chk", "ServiceID": "t5-s"}, {"CheckID": "t5-node"}],
        },
    )
    assert agent.put_json("/v1/catalog/deregister", {"node": "t5-n1", "serviceid": "t5-s"}).json()
    checks = agent.get("/v1/health/node/t5-n1").json()
    assert [c["CheckID"] for c in checks] == ["t5-node"]
    assert agent.get("/v1/catalog/service/t5-svc").json() == []
    assert agent.put_json("/v1/catalog/deregister", {"Node": "t5-n1"}).json() is True
    assert agent.get("/v1/catalog/node/t5-n1").json() is None
    assert agent.get("/v1/health/node/t5-n1").json() == []
    reply = agent.put_json("/v1/catalog/deregister", {"ServiceID": "x"})
    assert reply.status == 500 and reply.body == b"Must provide node"


def test_near_sorts_by_network_distance(agent: Client) -> None:
    def coord(x: float) -> dict[str, Any]:
        return {"Vec": [x] + [0.0] * 7, "Error": 0.5, "Adjustment": 0.0, "Height": 1e-5}

    for name, x in (("t6-a", 0.0), ("t6-far", 0.9), ("t6-mid", 0.3), ("t6-none", None)):
        body = {"Node": name, "Address": "10.6.0.1", "Service": {"Service": "t6-svc"}}
        assert register(agent, body).json() is True
        if x is not None:
            update = {"Node": name, "Segment": "", "Coord": coord(x)}
            assert agent.put_json("/v1/coordinate/update", update).status == 200
    deadline = time.monotonic() + 10
    while len(agent.get("/v1/coordinate/nodes").json() or []) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    order = [s["Node"] for s in agent.get("/v1/catalog/service/t6-svc?near=t6-far").json()]
    assert order == ["t6-far", "t6-mid", "t6-a", "t6-none"]
    health = agent.get("/v1/health/service/t6-svc?near=t6-a").json()
    assert [e["Node"]["Node"] for e in health] == ["t6-a", "t6-mid", "t6-far", "t6-none"]
    # No coordinate for the source: Consul's order (by node name) is kept.
    plain = [s["Node"] for s in agent.get("/v1/catalog/service/t6-svc?near=t6-none").json()]
    assert plain == ["t6-a", "t6-far", "t6-mid", "t6-none"]


def test_methods_are_checked_as_consul(agent: Client) -> None:
    wrong = agent.get("/v1/catalog/register")
    assert wrong.status == 405 and wrong.body == b"method GET not allowed"
    assert wrong.headers["Allow"] == "OPTIONS,PUT"
    assert agent.request("DELETE", "/v1/health/service/x").status == 405
    options = agent.request("OPTIONS", "/v1/catalog/nodes")
    assert options.status == 200 and options.headers["Allow"] == "OPTIONS,GET"


def test_gateways_from_config_entries(agent: Client) -> None:
    tgw = {"Kind": "terminating-gateway", "Name": "t7-tgw", "Services": [{"Name": "t7-ext"}]}
    igw = {
        "Kind": "ingress-gateway",
        "Name": "t7-igw",
        "Listeners": [{"Port": 8080, "Protocol": "tcp", "Services": [{"Name": "t7-web"}]}],
    }
    for entry in (tgw, igw):
        reply = agent.put_json("/v1/config", entry)
        assert reply.status == 200, reply.body
    gateways = (
        ("t7-tgw", "terminating-gateway", 8443),
        ("t7-igw", "ingress-gateway", 8080),
    )
    for name, kind, port in gateways:
        body = {
            "Node": "t7-n1",
            "Address": "10.7.0.1",
            "Service": {"Service": name, "Kind": kind, "Port": port},
        }
        assert register(agent, body).json() is True

    [linked] = agent.get("/v1/catalog/gateway-services/t7-tgw").json()
    assert linked["Service"] == {"Name": "t7-ext"}
    assert (linked["GatewayKind"], linked["Port"], linked["FromWildcard"]) == (
        "terminating-gateway",
        0,
        False,
    )
    [routed] = agent.get("/v1/catalog/gateway-services/t7-igw").json()
    assert (routed["Service"]["Name"], routed["Port"], routed["Protocol"]) == (
        "t7-web",
        8080,
        "tcp",
    )

    connect = agent.get("/v1/catalog/connect/t7-ext").json()
    assert [(s["ServiceName"], s["ServiceKind"]) for s in connect] == [
        ("t7-tgw", "terminating-gateway")
    ]
    health = agent.get("/v1/health/connect/t7-ext").json()
    assert [e["Service"]["Service"] for e in health] == ["t7-tgw"]
    ingress = agent.get("/v1/health/ingress/t7-web").json()
    assert [(e["Service"]["Service"], e["Service"]["Port"]) for e in ingress] == [("t7-igw", 8080)]
    assert agent.get("/v1/health/ingress/t7-ext").json() == []
