"""Federation states on a real dev agent: the leader's anti-entropy keeps the datacenter's
record in step with the catalog's mesh gateways, the three internal endpoints answer (blocking
included), and a snapshot restore brings the records back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from helpers.agentproc import Client

GATEWAY = {
    "Node": "gw-node-1",
    "Address": "198.18.1.10",
    "Service": {
        "Kind": "mesh-gateway",
        "ID": "mesh-gateway",
        "Service": "mesh-gateway",
        "Port": 8443,
        "Meta": {"consul-wan-federation": "1"},
        "TaggedAddresses": {
            "lan": {"Address": "198.18.1.10", "Port": 8443},
            "wan": {"Address": "198.19.0.10", "Port": 443},
        },
    },
    "Check": {
        "CheckID": "mesh-gateway-alive",
        "Name": "Mesh Gateway Listening",
        "Status": "passing",
        "ServiceID": "mesh-gateway",
    },
}


def _until(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _gateways(client: Client) -> list[dict[str, Any]]:
    reply = client.get("/v1/internal/federation-state/dc1")
    assert reply.status == 200
    state = reply.json()["State"]
    return list(state.get("MeshGateways") or [])


def test_empty_answers_and_the_leaders_own_record(dev_agent: Client) -> None:
    assert dev_agent.get("/v1/internal/federation-state/").status == 400
    missing = dev_agent.get("/v1/internal/federation-state/dc-nowhere")
    assert missing.status == 404 and missing.body == b""
    assert int(missing.headers["X-Consul-Index"]) >= 1
    # The leader writes its datacenter's record (no gateways yet) soon after it starts.
    states = _until(lambda: dev_agent.get("/v1/internal/federation-states").json())
    assert [s["Datacenter"] for s in states] == ["dc1"]
    assert "MeshGateways" not in states[0]
    assert states[0]["UpdatedAt"].endswith("Z")
    assert dev_agent.get("/v1/internal/federation-states/mesh-gateways").json() == {}
    reply = dev_agent.get("/v1/internal/federation-state/dc1")
    body = reply.json()
    assert body["Index"] == reply.index and body["KnownLeader"] is True
    assert body["State"]["Datacenter"] == "dc1"


def test_registered_gateway_appears_with_checks_and_goes(dev_agent: Client) -> None:
    _until(lambda: dev_agent.get("/v1/internal/federation-states").json())
    listing = dev_agent.get("/v1/internal/federation-states")
    results: list[tuple[float, Any]] = []

    def blocked() -> None:
        reply = dev_agent.get(
            f"/v1/internal/federation-states?index={listing.index}&wait=10s", timeout=15
        )
        results.append((time.monotonic(), reply.json()))

    waiter = threading.Thread(target=blocked)
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert dev_agent.put_json("/v1/catalog/register", GATEWAY).status == 200
    waiter.join(timeout=15)
    # The blocking list woke on the change, well before its wait, with the gateway in it.
    woke_at, states = results[0]
    assert woke_at - started < 5
    assert states[0]["MeshGateways"][0]["Node"]["Node"] == "gw-node-1"

    gateways = _gateways(dev_agent)
    assert len(gateways) == 1
    gw = gateways[0]
    assert gw["Service"]["Kind"] == "mesh-gateway"
    assert gw["Service"]["Meta"] == {"consul-wan-federation": "1"}
    assert gw["Service"]["TaggedAddresses"]["wan"] == {"Address": "198.19.0.10", "Port": 443}
    assert [(c["CheckID"], c["Status"]) for c in gw["Checks"]] == [
        ("mesh-gateway-alive", "passing")
    ]
    by_dc = dev_agent.get("/v1/internal/federation-states/mesh-gateways").json()
    assert list(by_dc) == ["dc1"] and by_dc["dc1"][0]["Node"]["Node"] == "gw-node-1"

    # A check turning critical is carried into the record.
    critical = {**GATEWAY, "Check": {**GATEWAY["Check"], "Status": "critical"}}  # type: ignore[dict-item]
    assert dev_agent.put_json("/v1/catalog/register", critical).status == 200
    _until(lambda: _gateways(dev_agent)[0]["Checks"][0]["Status"] == "critical")

    # Deregistered: the record has no gateways any more.
    assert dev_agent.put_json("/v1/catalog/deregister", {"Node": "gw-node-1"}).status == 200
    _until(lambda: _gateways(dev_agent) == [])
    assert dev_agent.get("/v1/internal/federation-states/mesh-gateways").json() == {}


def test_snapshot_restore_keeps_the_records(dev_agent: Client) -> None:
    assert dev_agent.put_json("/v1/catalog/register", GATEWAY).status == 200
    _until(lambda: _gateways(dev_agent))
    before = dev_agent.get("/v1/internal/federation-states").json()
    saved = dev_agent.get("/v1/snapshot")
    assert saved.status == 200
    assert dev_agent.put_json("/v1/catalog/deregister", {"Node": "gw-node-1"}).status == 200
    _until(lambda: _gateways(dev_agent) == [])
    assert dev_agent.request("PUT", "/v1/snapshot", saved.body).status == 200
    # The record is the snapshot's, byte for byte (same indexes and UpdatedAt): the restored
    # catalog has the gateway again, so anti-entropy has nothing to rewrite.
    assert dev_agent.get("/v1/internal/federation-states").json() == before
    time.sleep(1.5)
    assert dev_agent.get("/v1/internal/federation-states").json() == before
