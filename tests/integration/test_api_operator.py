"""A real dev agent's operator, event, coordinate, snapshot and (disabled) ACL endpoints:
Consul's shapes, status codes and error texts."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
import time

from helpers.agentproc import Client


def _wait_for_own_node(client: Client) -> None:
    """The agent registers its own node shortly after it becomes the leader (bounded wait)."""
    deadline = time.monotonic() + 10
    while not client.get("/v1/catalog/nodes").json():
        assert time.monotonic() < deadline, "the agent never registered its node"
        time.sleep(0.1)


def test_raft_configuration_lists_this_server_as_leader_and_voter(dev_agent: Client) -> None:
    reply = dev_agent.get("/v1/operator/raft/configuration")
    assert reply.status == 200
    config = reply.json()
    assert config["Index"] == 0
    [server] = config["Servers"]
    assert server["Leader"] is True and server["Voter"] is True
    assert server["ProtocolVersion"] == "3"
    assert server["Address"] == dev_agent.get("/v1/status/leader").json()
    assert set(server) == {
        "ID",
        "Node",
        "Address",
        "Leader",
        "Voter",
        "ProtocolVersion",
        "LastIndex",
    }
    assert server["LastIndex"] > 0


def test_raft_peer_removal_and_leadership_transfer_errors(dev_agent: Client) -> None:
    reply = dev_agent.delete("/v1/operator/raft/peer?address=10.255.255.1:8300")
    assert reply.status == 500
    assert reply.body == b'address "10.255.255.1:8300" was not found in the Raft configuration'
    reply = dev_agent.delete("/v1/operator/raft/peer?id=00000000-0000-0000-0000-000000000099")
    assert reply.status == 500
    assert b"was not found in the Raft configuration" in reply.body
    assert dev_agent.delete("/v1/operator/raft/peer").status == 400
    assert dev_agent.delete("/v1/operator/raft/peer?id=a&address=b").status == 400
    # A single server has nobody to hand leadership to.
    assert dev_agent.request("POST", "/v1/operator/raft/transfer-leader").status == 500
    reply = dev_agent.request("POST", "/v1/operator/raft/transfer-leader?id=nope")
    assert reply.status == 500
    assert dev_agent.get("/v1/operator/raft/configuration").json()["Servers"][0]["Leader"]


def test_autopilot_configuration_defaults_and_cas(dev_agent: Client) -> None:
    config = dev_agent.get("/v1/operator/autopilot/configuration").json()
    assert config["CleanupDeadServers"] is True
    assert config["LastContactThreshold"] == "200ms"
    assert config["MaxTrailingLogs"] == 250
    assert config["ServerStabilizationTime"] == "10s"
    assert config["ModifyIndex"] >= config["CreateIndex"] > 0
    stale = config["ModifyIndex"] + 1000
    reply = dev_agent.put_json(
        f"/v1/operator/autopilot/configuration?cas={stale}", {"CleanupDeadServers": False}
    )
    assert (reply.status, reply.json()) == (200, False)
    assert dev_agent.get("/v1/operator/autopilot/configuration").json() == config
    # Field names match case-insensitively; durations as strings or nanoseconds.
    body = {
        "cleanupdeadservers": False,
        "LastContactThreshold": 1_000_000_000,
        "ServerStabilizationTime": "1m30s",
        "MaxTrailingLogs": 100,
    }
    reply = dev_agent.put_json(
        f"/v1/operator/autopilot/configuration?cas={config['ModifyIndex']}", body
    )
    assert reply.json() is True
    updated = dev_agent.get("/v1/operator/autopilot/configuration").json()
    assert updated["CleanupDeadServers"] is False
    assert updated["LastContactThreshold"] == "1s"
    assert updated["ServerStabilizationTime"] == "1m30s"
    assert updated["MaxTrailingLogs"] == 100
    assert updated["CreateIndex"] == config["CreateIndex"]
    assert updated["ModifyIndex"] > config["ModifyIndex"]
    restore = {"CleanupDeadServers": True, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250}
    assert dev_agent.put_json("/v1/operator/autopilot/configuration", restore).json() is True
    bad = dev_agent.put_json("/v1/operator/autopilot/configuration", {"LastContactThreshold": "x"})
    assert bad.status == 400 and bad.body.startswith(b"Error parsing autopilot config")
    assert dev_agent.put("/v1/operator/autopilot/configuration?cas=x", b"{}").status == 400


def test_autopilot_health_and_state(dev_agent: Client) -> None:
    reply = dev_agent.get("/v1/operator/autopilot/health")
    assert reply.status == 200
    health = reply.json()
    assert health["Healthy"] is True and health["FailureTolerance"] == 0
    [server] = health["Servers"]
    assert server["Leader"] and server["Healthy"] and server["Voter"]
    assert server["SerfStatus"] == "alive" and server["LastContact"] == "0s"
    assert server["StableSince"].endswith("Z")
    state = dev_agent.get("/v1/operator/autopilot/state").json()
    assert state["Healthy"] is True
    assert state["Leader"] == server["ID"] and state["Voters"] == [server["ID"]]
    assert state["Servers"][server["ID"]]["Status"] == "leader"


def test_keyring_without_encryption_is_consuls_error(dev_agent: Client) -> None:
    reply = dev_agent.get("/v1/operator/keyring")
    assert reply.status == 500
    assert b"Keyring is empty (encryption not enabled)" in reply.body
    key = json.dumps({"Key": "8CooQRX1+VK7MsQQK6lx2LhumpSfQzUjE63HdAu2hgA="}).encode()
    for method in ("POST", "PUT", "DELETE"):
        reply = dev_agent.request(method, "/v1/operator/keyring", key)
        assert reply.status == 500
        assert b"No keyring to modify (encryption not enabled)" in reply.body
    assert dev_agent.get("/v1/operator/keyring?relay-factor=9").status == 400


def test_usage_counts_the_catalog(dev_agent: Client) -> None:
    # The agent registers its own node shortly after it becomes the leader.
    deadline = time.monotonic() + 10
    while True:
        reply = dev_agent.get("/v1/operator/usage")
        usage = reply.json()
        figures = usage["Usage"]["dc1"]
        if figures["Nodes"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert reply.status == 200 and usage["KnownLeader"] is True
    assert figures["Nodes"] == 1
    assert reply.index >= 1 and usage["Index"] == reply.index
    assert set(figures) >= {"Services", "ServiceInstances", "ConnectServiceInstances", "Nodes"}
    assert dev_agent.get("/v1/operator/usage?global&stale").json()["Usage"].keys() == {"dc1"}


def test_acl_endpoints_answer_disabled(dev_agent: Client) -> None:
    for method, path in (
        ("PUT", "/v1/acl/bootstrap"),
        ("GET", "/v1/acl/tokens"),
        ("GET", "/v1/acl/token/self"),
        ("PUT", "/v1/acl/policy"),
        ("GET", "/v1/acl/policies"),
        ("GET", "/v1/acl/replication"),
        ("POST", "/v1/acl/login"),
    ):
        reply = dev_agent.request(method, path, b"{}" if method != "GET" else None)
        assert (reply.status, reply.body) == (401, b"ACL support disabled"), path


def test_coordinates(dev_agent: Client) -> None:
    _wait_for_own_node(dev_agent)  # coordinates are only stored for catalog nodes
    [dc] = dev_agent.get("/v1/coordinate/datacenters").json()
    assert set(dc) == {"Datacenter", "AreaID", "Coordinates"}
    assert (dc["Datacenter"], dc["AreaID"]) == ("dc1", "wan")
    node = dc["Coordinates"][0]["Node"]
    missing = dev_agent.get(f"/v1/coordinate/node/{node}")
    assert missing.status == 404
    coord = {"Adjustment": 0.1, "Error": 0.75, "Height": 0.001, "Vec": [0.5] + [0.0] * 7}
    reply = dev_agent.put_json("/v1/coordinate/update", {"Node": node, "Coord": coord})
    assert reply.status == 200
    reply = dev_agent.get(f"/v1/coordinate/node/{node}")
    assert reply.status == 200 and reply.index > 1
    assert reply.json() == [{"Node": node, "Segment": "", "Coord": coord}]
    assert {e["Node"] for e in dev_agent.get("/v1/coordinate/nodes").json()} == {node}
    # Unknown nodes are dropped silently, as Consul's state store does.
    assert (
        dev_agent.put_json("/v1/coordinate/update", {"Node": "ghost", "Coord": coord}).status == 200
    )
    assert dev_agent.get("/v1/coordinate/node/ghost").status == 404
    wrong = dev_agent.put_json("/v1/coordinate/update", {"Node": node, "Coord": {"Vec": [1.0]}})
    assert (wrong.status, wrong.body) == (500, b"incompatible coordinate")
    # A blocking read wakes on the next update.
    index = dev_agent.get("/v1/coordinate/nodes").index
    timer = threading.Timer(
        0.3, lambda: dev_agent.put_json("/v1/coordinate/update", {"Node": node, "Coord": coord})
    )
    timer.start()
    started = time.monotonic()
    reply = dev_agent.get(f"/v1/coordinate/nodes?index={index}&wait=5s", timeout=10)
    timer.join()
    assert reply.index > index and time.monotonic() - started < 4


def test_events_fire_list_and_block(dev_agent: Client) -> None:
    reply = dev_agent.put("/v1/event/fire/deploy", b"v1.2.3")
    assert reply.status == 200
    fired = reply.json()
    assert fired["Name"] == "deploy" and fired["Payload"] == "djEuMi4z"
    assert (fired["Version"], fired["NodeFilter"], fired["LTime"]) == (1, "", 0)
    listed = dev_agent.get("/v1/event/list?name=deploy")
    assert fired["ID"] in [e["ID"] for e in listed.json()]
    high = int(fired["ID"][0:8] + fired["ID"][9:13] + fired["ID"][14:18], 16)
    low = int(fired["ID"][19:23] + fired["ID"][24:36], 16)
    assert listed.index == high ^ low
    assert dev_agent.get("/v1/event/list?name=other").json() == []
    assert dev_agent.get("/v1/event/list?name=other").index == 1
    # An event whose node filter excludes this agent is not kept here.
    excluded = dev_agent.put("/v1/event/fire/deploy?node=^no-such-node$").json()
    assert excluded["ID"] not in [e["ID"] for e in dev_agent.get("/v1/event/list").json()]
    assert dev_agent.put("/v1/event/fire/x?tag=a").status == 500
    # Service and tag filters match this agent's own services.
    service = {"Name": "web", "Tags": ["blue"], "Port": 80}
    assert dev_agent.put_json("/v1/agent/service/register", service).status == 200
    kept = [
        dev_agent.put(f"/v1/event/fire/svc?{query}").json()["ID"]
        for query in ("service=^web$", "service=w.b&tag=^bl", "service=api", "service=web&tag=red")
    ]
    ids = [e["ID"] for e in dev_agent.get("/v1/event/list?name=svc").json()]
    assert ids == kept[:2]
    # Blocking: wakes when a new event arrives.
    index = dev_agent.get("/v1/event/list").index
    timer = threading.Timer(0.3, lambda: dev_agent.put("/v1/event/fire/later"))
    timer.start()
    started = time.monotonic()
    reply = dev_agent.get(f"/v1/event/list?index={index}&wait=5s", timeout=10)
    timer.join()
    assert reply.index != index and reply.json()[-1]["Name"] == "later"
    assert time.monotonic() - started < 4


def test_snapshot_save_and_restore(dev_agent: Client) -> None:
    assert dev_agent.put("/v1/kv/snap/key", b"before").json() is True
    saved = dev_agent.get("/v1/snapshot")
    assert saved.status == 200 and saved.index > 1
    archive = saved.body
    assert archive[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        assert sorted(tar.getnames()) == ["SHA256SUMS", "meta.json", "state.bin"]
        meta = json.loads(tar.extractfile("meta.json").read())  # type: ignore[union-attr]
    assert meta["Index"] == saved.index
    dev_agent.put("/v1/kv/snap/key", b"after")
    dev_agent.put("/v1/kv/snap/new", b"x")
    # A blocked read on the key wakes up when the restore replaces the state.
    index = dev_agent.get("/v1/kv/snap/key").index
    results: list[int] = []
    waiter = threading.Thread(
        target=lambda: results.append(
            dev_agent.get(f"/v1/kv/snap/key?index={index}&wait=5s", timeout=10).status
        )
    )
    waiter.start()
    time.sleep(0.3)
    assert dev_agent.request("PUT", "/v1/snapshot", archive).status == 200
    assert dev_agent.get("/v1/kv/snap/key?raw").body == b"before"
    assert dev_agent.get("/v1/kv/snap/new").status == 404
    waiter.join(timeout=10)
    assert results == [200]
    # Bad archives: 400, nothing changes.
    dev_agent.put("/v1/kv/snap/key", b"kept")
    for bad in (b"garbage", gzip.compress(b"not a tar"), archive[:-40]):
        reply = dev_agent.request("PUT", "/v1/snapshot", bad)
        assert reply.status == 400 and reply.body.startswith(b"Error restoring snapshot")
    assert dev_agent.get("/v1/kv/snap/key?raw").body == b"kept"
