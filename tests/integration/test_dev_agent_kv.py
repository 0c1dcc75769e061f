"""`proconsul agent -dev` as a real process: the KV endpoints end to end (HTTP -> Raft -> FSM)."""

from __future__ import annotations

import base64
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers.agentproc import Client, Reply, start_agent, stop_agent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent(dev_agent: Client) -> Client:
    return dev_agent


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def test_put_get_and_headers(agent: Client) -> None:
    missing = agent.get("/v1/kv/t1/missing")
    assert missing.status == 404 and missing.body == b""
    assert missing.index >= 1
    assert missing.headers["X-Consul-KnownLeader"] == "true"
    assert missing.headers["X-Consul-LastContact"] == "0"

    put = agent.put("/v1/kv/t1/a?flags=42", b"hello")
    assert put.status == 200 and put.json() is True
    got = agent.get("/v1/kv/t1/a")
    assert got.status == 200
    [entry] = got.json()
    assert entry["Key"] == "t1/a" and entry["Flags"] == 42 and entry["Value"] == b64(b"hello")
    assert entry["LockIndex"] == 0 and "Session" not in entry
    assert entry["CreateIndex"] == entry["ModifyIndex"] == got.index

    # another key's write moves the table index, not this key's X-Consul-Index
    assert agent.put("/v1/kv/t1/b", b"bee").json() is True
    again = agent.get("/v1/kv/t1/a")
    assert again.index == got.index
    assert agent.get("/v1/kv/t1/b").index > got.index

    raw = agent.get("/v1/kv/t1/a?raw")
    assert raw.status == 200 and raw.body == b"hello"

    # an empty body stores a nil value
    assert agent.put("/v1/kv/t1/empty").json() is True
    assert agent.get("/v1/kv/t1/empty").json()[0]["Value"] is None


def test_recurse_and_keys(agent: Client) -> None:
    for key in ("t2/a", "t2/b/c", "t2/b/d", "t2/e"):
        assert agent.put(f"/v1/kv/{key}", key.encode()).json() is True
    listing = agent.get("/v1/kv/t2/?recurse")
    assert [e["Key"] for e in listing.json()] == ["t2/a", "t2/b/c", "t2/b/d", "t2/e"]
    assert listing.index == max(e["ModifyIndex"] for e in listing.json())
    assert [base64.b64decode(e["Value"]) for e in listing.json()][1] == b"t2/b/c"

    assert agent.get("/v1/kv/t2/?keys").json() == ["t2/a", "t2/b/c", "t2/b/d", "t2/e"]
    assert agent.get("/v1/kv/t2/?keys&separator=/").json() == ["t2/a", "t2/b/", "t2/e"]

    nothing = agent.get("/v1/kv/t2-none/?recurse")
    assert nothing.status == 404 and nothing.body == b"" and nothing.index >= 1
    assert agent.get("/v1/kv/t2-none/?keys").status == 404


def test_cas(agent: Client) -> None:
    assert agent.put("/v1/kv/t3/k?cas=0", b"first").json() is True
    assert agent.put("/v1/kv/t3/k?cas=0", b"second").json() is False
    index = agent.get("/v1/kv/t3/k").json()[0]["ModifyIndex"]
    assert agent.put(f"/v1/kv/t3/k?cas={index + 1000}", b"x").json() is False
    assert agent.put(f"/v1/kv/t3/k?cas={index}", b"third").json() is True
    assert agent.get("/v1/kv/t3/k?raw").body == b"third"

    index = agent.get("/v1/kv/t3/k").index
    assert agent.delete(f"/v1/kv/t3/k?cas={index - 1}").json() is False
    assert agent.get("/v1/kv/t3/k").status == 200
    assert agent.delete(f"/v1/kv/t3/k?cas={index}").json() is True
    assert agent.get("/v1/kv/t3/k").status == 404


def test_delete_and_recursive_delete(agent: Client) -> None:
    for key in ("t4/a", "t4/b/c", "t4x"):
        assert agent.put(f"/v1/kv/{key}", b"v").json() is True
    assert agent.delete("/v1/kv/t4/a").json() is True
    assert agent.delete("/v1/kv/t4/a").json() is True  # idempotent
    assert agent.get("/v1/kv/t4/a").status == 404
    before = agent.get("/v1/kv/t4/?recurse").index
    assert agent.delete("/v1/kv/t4/?recurse").json() is True
    gone = agent.get("/v1/kv/t4/?recurse")
    assert gone.status == 404
    assert gone.index > before  # tombstones keep the list index moving forward
    assert agent.get("/v1/kv/t4x").status == 200


def test_blocking_get_wakes_on_write(agent: Client) -> None:
    assert agent.put("/v1/kv/t5/w", b"0").json() is True
    index = agent.get("/v1/kv/t5/w").index
    results: list[Reply] = []

    def block() -> None:
        results.append(agent.get(f"/v1/kv/t5/w?index={index}&wait=30s", timeout=40))

    thread = threading.Thread(target=block)
    started = time.monotonic()
    thread.start()
    time.sleep(0.7)
    # writes elsewhere do not wake a single-key query
    assert agent.put("/v1/kv/t5/other", b"x").json() is True
    time.sleep(0.3)
    assert thread.is_alive() and not results
    assert agent.put("/v1/kv/t5/w", b"1").json() is True
    thread.join(timeout=5)
    assert not thread.is_alive()
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 5
    [reply] = results
    assert reply.status == 200 and reply.index > index
    assert reply.json()[0]["Value"] == b64(b"1")


def test_blocking_get_times_out_with_current_result(agent: Client) -> None:
    assert agent.put("/v1/kv/t6/w", b"0").json() is True
    index = agent.get("/v1/kv/t6/w").index
    started = time.monotonic()
    reply = agent.get(f"/v1/kv/t6/w?index={index}&wait=400ms")
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 3  # 400ms plus up to 1/16 jitter
    assert reply.status == 200 and reply.index == index
    # an index already behind answers at once
    started = time.monotonic()
    assert agent.get(f"/v1/kv/t6/w?index={index - 1}&wait=10s").index == index
    assert time.monotonic() - started < 2


def test_too_large_body(agent: Client) -> None:
    reply = agent.put("/v1/kv/t7/big", b"x" * (512 * 1024 + 1))
    assert reply.status == 413
    assert reply.body.decode().startswith(
        "Request body(524289 bytes) too large, max size: 524288 bytes."
    )
    assert agent.get("/v1/kv/t7/big").status == 404
    assert agent.put("/v1/kv/t7/big", b"x" * (512 * 1024)).json() is True


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/kv/t8/k?cas=abc"),
        ("PUT", "/v1/kv/t8/k?flags=-1"),
        ("DELETE", "/v1/kv/t8/k?cas=1x"),
        ("GET", "/v1/kv/t8/k?index=zz"),
        ("GET", "/v1/kv/t8/k?index=1&wait=soon"),
        ("GET", "/v1/kv/"),
        ("PUT", "/v1/kv/"),
    ],
)
def test_bad_params_are_400(agent: Client, method: str, path: str) -> None:
    reply = agent.request(method, path, b"v" if method == "PUT" else None)
    assert reply.status == 400
    text = reply.body.decode()
    assert text and "\n" not in text.strip()


def test_sigterm_answers_blocking_queries_and_exits(tmp_path: Path) -> None:
    proc, client = start_agent(tmp_path / "agent.log")
    try:
        assert client.put("/v1/kv/w", b"v").json() is True
        index = client.get("/v1/kv/w").index
        results: list[Reply] = []
        thread = threading.Thread(
            target=lambda: results.append(client.get(f"/v1/kv/w?index={index}&wait=5m", 30))
        )
        thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        thread.join(timeout=5)
        assert [r.status for r in results] == [200]
        assert results[0].index == index
    finally:
        stop_agent(proc)
