"""Sessions, KV locks and transactions against a real ``proconsul agent -dev`` process."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from helpers.agentproc import Client


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _create(agent: Client, body: Any = None) -> str:
    reply = agent.put("/v1/session/create", b"" if body is None else json.dumps(body).encode())
    assert reply.status == 200, reply.body
    session_id: str = reply.json()["ID"]
    return session_id


def test_session_lifecycle(dev_agent: Client) -> None:
    sid = _create(dev_agent, {"name": "my-session"})
    reply = dev_agent.get(f"/v1/session/info/{sid}")
    assert reply.status == 200
    assert reply.index >= 1
    [info] = reply.json()
    node = info["Node"]
    assert info["ID"] == sid
    assert info["Name"] == "my-session"
    assert info["LockDelay"] == 15_000_000_000
    assert info["Behavior"] == "release"
    assert info["TTL"] == ""
    assert info["NodeChecks"] == ["serfHealth"]
    assert "Checks" not in info
    assert info["CreateIndex"] == info["ModifyIndex"] == reply.index

    assert sid in [s["ID"] for s in dev_agent.get("/v1/session/list").json()]
    assert sid in [s["ID"] for s in dev_agent.get(f"/v1/session/node/{node}").json()]
    assert dev_agent.get("/v1/session/node/no-such-node").json() == []
    missing = dev_agent.get("/v1/session/info/" + "1" * 36)
    assert (missing.status, missing.json()) == (200, [])

    destroyed = dev_agent.put(f"/v1/session/destroy/{sid}")
    assert (destroyed.status, destroyed.json()) == (200, True)
    assert dev_agent.get(f"/v1/session/info/{sid}").json() == []


def test_session_create_errors(dev_agent: Client) -> None:
    cases = [
        ({"Node": "n2"}, 500, "Missing node registration"),
        ({"Behavior": "explode"}, 500, "Invalid Behavior setting 'explode'"),
        ({"TTL": "5s"}, 500, "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"),
        ({"TTL": "soon"}, 500, "Session TTL 'soon' invalid: time: invalid duration \"soon\""),
        ({"NodeChecks": ["no-such-check"]}, 500, "Missing check 'no-such-check' registration"),
        ({"LockDelay": "x"}, 400, 'Request decode failed: time: invalid duration "x"'),
    ]
    for body, status, text in cases:
        reply = dev_agent.put("/v1/session/create", json.dumps(body).encode())
        assert (reply.status, reply.body.decode()) == (status, text)
    other_dc = dev_agent.put("/v1/session/create?dc=dc2")
    assert (other_dc.status, other_dc.body) == (500, b"No path to datacenter")


def test_session_renew(dev_agent: Client) -> None:
    sid = _create(dev_agent, {"TTL": "20s", "Behavior": "delete", "Checks": []})
    reply = dev_agent.put(f"/v1/session/renew/{sid}")
    assert reply.status == 200
    [session] = reply.json()
    assert (session["TTL"], session["Behavior"], session["NodeChecks"]) == ("20s", "delete", [])
    unknown = dev_agent.put("/v1/session/renew/" + "1" * 36)
    assert unknown.status == 404
    assert unknown.body.decode() == f"Session id '{'1' * 36}' not found"
    dev_agent.put(f"/v1/session/destroy/{sid}")


def test_kv_acquire_release_and_lock_delay(dev_agent: Client) -> None:
    s1 = _create(dev_agent, {"LockDelay": "1s"})
    s2 = _create(dev_agent)
    invalid = dev_agent.put("/v1/kv/lock/a?acquire=nope", b"x")
    assert (invalid.status, invalid.body.decode()) == (500, 'invalid session "nope"')

    assert dev_agent.put(f"/v1/kv/lock/a?acquire={s1}&flags=9", b"1").json() is True
    assert dev_agent.put(f"/v1/kv/lock/a?acquire={s2}", b"2").json() is False
    assert dev_agent.put(f"/v1/kv/lock/a?acquire={s1}", b"1").json() is True
    [entry] = dev_agent.get("/v1/kv/lock/a").json()
    assert (entry["Session"], entry["LockIndex"], entry["Flags"]) == (s1, 1, 0)
    assert dev_agent.put("/v1/kv/lock/a?release=nope", b"x").json() is False
    assert dev_agent.put(f"/v1/kv/lock/a?release={s2}", b"x").json() is False
    conflict = dev_agent.put(f"/v1/kv/lock/a?acquire={s1}&cas=1")
    assert conflict.status == 400
    assert conflict.body.decode() == f"Conflicting flags: acquire={s1}&cas=1"

    # Destroying the holder releases the key and starts its lock delay (1 s).
    dev_agent.put(f"/v1/session/destroy/{s1}")
    [entry] = dev_agent.get("/v1/kv/lock/a").json()
    assert "Session" not in entry and entry["LockIndex"] == 1
    assert dev_agent.put(f"/v1/kv/lock/a?acquire={s2}", b"2").json() is False
    deadline = time.monotonic() + 5
    while dev_agent.put(f"/v1/kv/lock/a?acquire={s2}", b"2").json() is not True:
        assert time.monotonic() < deadline, "lock delay never ended"
        time.sleep(0.1)
    [entry] = dev_agent.get("/v1/kv/lock/a").json()
    assert (entry["Session"], entry["LockIndex"]) == (s2, 2)
    assert dev_agent.put(f"/v1/kv/lock/a?release={s2}", b"3").json() is True
    [entry] = dev_agent.get("/v1/kv/lock/a").json()
    assert "Session" not in entry and base64.b64decode(entry["Value"]) == b"3"
    dev_agent.put(f"/v1/session/destroy/{s2}")


def test_delete_behavior_removes_held_keys(dev_agent: Client) -> None:
    sid = _create(dev_agent, {"Behavior": "delete", "LockDelay": 0})
    assert dev_agent.put(f"/v1/kv/eph?acquire={sid}", b"1").json() is True
    dev_agent.put(f"/v1/session/destroy/{sid}")
    assert dev_agent.get("/v1/kv/eph").status == 404


def test_txn(dev_agent: Client) -> None:
    ops = [
        {"KV": {"Verb": "set", "Key": "txn/a", "Value": _b64(b"1")}},
        {"kv": {"verb": "set", "key": "txn/b", "value": _b64(b"2"), "flags": 5}},
    ]
    reply = dev_agent.put_json("/v1/txn", ops)
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["Errors"] is None
    assert [r["KV"]["Key"] for r in body["Results"]] == ["txn/a", "txn/b"]
    assert all(r["KV"]["Value"] is None for r in body["Results"])
    index = body["Results"][0]["KV"]["ModifyIndex"]

    read = dev_agent.put_json(
        "/v1/txn",
        [{"KV": {"Verb": "get", "Key": "txn/a"}}, {"KV": {"Verb": "get-tree", "Key": "txn/"}}],
    )
    assert read.status == 200
    assert read.headers["X-Consul-KnownLeader"] == "true"
    values = [r["KV"]["Value"] for r in read.json()["Results"]]
    assert values == [_b64(b"1"), _b64(b"1"), _b64(b"2")]

    failed = dev_agent.put_json(
        "/v1/txn",
        [
            {"KV": {"Verb": "set", "Key": "txn/c", "Value": _b64(b"3")}},
            {"KV": {"Verb": "cas", "Key": "txn/a", "Value": _b64(b"x"), "Index": index + 100}},
            {"KV": {"Verb": "check-index", "Key": "txn/b", "Index": index}},
        ],
    )
    assert failed.status == 409
    assert failed.json() == {
        "Results": None,
        "Errors": [{"OpIndex": 1, "What": 'failed to set key "txn/a", index is stale'}],
    }
    assert dev_agent.get("/v1/kv/txn/c").status == 404  # rolled back

    too_many = dev_agent.put_json("/v1/txn", [{"KV": {"Verb": "get", "Key": "k"}}] * 65)
    assert (too_many.status, too_many.body.decode()) == (
        413,
        "Transaction contains too many operations (65 > 64)",
    )
    bad = dev_agent.put("/v1/txn", b"{")
    assert bad.status == 400 and bad.body.startswith(b"Failed to parse body: ")
    no_key = dev_agent.put_json("/v1/txn", [{"KV": {"Verb": "set", "Value": _b64(b"1")}}])
    assert no_key.status == 409
    assert no_key.json()["Errors"] == [{"OpIndex": 0, "What": "Must provide key"}]


def test_txn_locks_and_lock_delay(dev_agent: Client) -> None:
    sid = _create(dev_agent, {"LockDelay": "30s"})
    lock = [{"KV": {"Verb": "lock", "Key": "txnlock", "Value": _b64(b"v"), "Session": sid}}]
    reply = dev_agent.put_json("/v1/txn", lock)
    assert reply.status == 200, reply.body
    assert reply.json()["Results"][0]["KV"]["Session"] == sid
    check = [{"KV": {"Verb": "check-session", "Key": "txnlock", "Session": sid}}]
    assert dev_agent.put_json("/v1/txn", check).status == 200
    dev_agent.put(f"/v1/session/destroy/{sid}")
    other = _create(dev_agent)
    relock = [{"KV": {"Verb": "lock", "Key": "txnlock", "Session": other}}]
    delayed = dev_agent.put_json("/v1/txn", relock)
    assert delayed.status == 409
    assert delayed.json()["Errors"] == [
        {"OpIndex": 0, "What": 'failed to lock key "txnlock" due to lock delay'}
    ]
    dev_agent.put(f"/v1/session/destroy/{other}")


def test_session_ttl_expiry(dev_agent: Client) -> None:
    """A 10 s TTL session that is never renewed is destroyed after TTL x 2 (and its lock
    released); slow by nature: about 20 s."""
    start = time.monotonic()
    sid = _create(dev_agent, {"TTL": "10s", "LockDelay": 0})
    assert dev_agent.put(f"/v1/kv/ttl-lock?acquire={sid}", b"1").json() is True
    time.sleep(12)
    assert dev_agent.get(f"/v1/session/info/{sid}").json() != []  # not at TTL yet
    while dev_agent.get(f"/v1/session/info/{sid}").json() != []:
        assert time.monotonic() - start < 30, "session never expired"
        time.sleep(0.5)
    assert time.monotonic() - start >= 19
    [entry] = dev_agent.get("/v1/kv/ttl-lock").json()
    assert "Session" not in entry


def test_txn_catalog_operations(dev_agent: Client) -> None:
    ops = [
        {"Node": {"Verb": "set", "Node": {"Node": "txn-node", "Address": "10.1.2.3"}}},
        {
            "Service": {
                "Verb": "set",
                "Node": "txn-node",
                "Service": {"ID": "db1", "Service": "db", "Port": 5432, "Tags": ["primary"]},
            }
        },
        {
            "Check": {
                "Verb": "set",
                "Check": {"Node": "txn-node", "Name": "db-alive", "ServiceID": "db1"},
            }
        },
    ]
    reply = dev_agent.put_json("/v1/txn", ops)
    assert reply.status == 200, reply.body
    node, service, check = (r for r in reply.json()["Results"])
    assert node["Node"]["Datacenter"] == "dc1"
    assert service["Service"]["Tags"] == ["primary"]
    assert (check["Check"]["CheckID"], check["Check"]["Status"]) == ("db-alive", "critical")
    assert [s["ServiceID"] for s in dev_agent.get("/v1/catalog/service/db").json()] == ["db1"]

    read = dev_agent.put_json(
        "/v1/txn",
        [{"Service": {"Verb": "get", "Node": "txn-node", "Service": {"ID": "db1"}}}],
    )
    assert read.status == 200
    assert read.json()["Results"][0]["Service"]["Port"] == 5432

    stale = dev_agent.put_json(
        "/v1/txn",
        [
            {"Node": {"Verb": "delete", "Node": {"Node": "txn-node"}}},
            {
                "Node": {
                    "Verb": "cas",
                    "Node": {"Node": "other", "Address": "1.1.1.1", "ModifyIndex": 1},
                }
            },
        ],
    )
    assert stale.status == 409
    assert stale.json()["Errors"] == [
        {"OpIndex": 1, "What": 'failed to set node "other", index is stale'}
    ]
    assert dev_agent.get("/v1/catalog/node/txn-node").status == 200  # rolled back
    gone = dev_agent.put_json(
        "/v1/txn", [{"Node": {"Verb": "delete", "Node": {"Node": "txn-node"}}}]
    )
    assert gone.status == 200
    assert dev_agent.get("/v1/catalog/service/db").json() == []
