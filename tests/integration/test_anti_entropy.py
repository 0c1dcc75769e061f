"""Anti-entropy of a client agent, with real processes: one server and one client on
loopback, the client's full sync every 1-2 s through the internal ``PROCONSUL_AE_INTERVAL``
knob (Consul's is 1 min and up).

* catalog entries registered for the client's node behind its back (``/v1/catalog/register``
  on the server) are removed by the client's next full sync, and one of its services changed
  behind its back is put back; what is already in sync is never written again (its
  ModifyIndex stays);
* ``check_update_interval``: an output-only change of a check reaches the catalog only when
  its timer runs out (half the interval plus a random stagger below it), a status change at
  once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.cluster import ServerProc, free_ports, make_servers, proconsul

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHECK_UPDATE_INTERVAL = 4.0


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def get(url: str) -> Any:
    status, body = call("GET", url)
    assert status == 200, (url, status, body)
    return body


def put(url: str, body: Any = None) -> Any:
    status, answer = call("PUT", url, body if body is not None else {})
    assert status == 200, (url, status, answer)
    return answer


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError, KeyError, TypeError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, ServerProc]]:
    tmp_path = tmp_path_factory.mktemp("ae")
    (server,) = make_servers(tmp_path, 1, expect=1)
    http, serf = free_ports(2)
    client = ServerProc("c1", http, 0, serf, tmp_path / "c1", tmp_path / "c1.log", args=[])
    client_config = tmp_path / "c1.json"
    client_config.write_text(json.dumps({"check_update_interval": f"{CHECK_UPDATE_INTERVAL}s"}))
    client.args = [
        *proconsul(),
        "agent",
        "-node=c1",
        f"-data-dir={client.data_dir}",
        "-bind=127.0.0.1",
        "-client=127.0.0.1",
        f"-http-port={http}",
        f"-serf-lan-port={serf}",
        "-dns-port=-1",
        f"-config-file={tmp_path / 'dev-timing.json'}",
        f"-config-file={client_config}",
        f"-retry-join=127.0.0.1:{server.serf}",
    ]
    mp = pytest.MonkeyPatch()
    try:
        server.start()
        mp.setenv("PROCONSUL_AE_INTERVAL", "1")  # inherited by the client only
        client.start()
        mp.undo()
        eventually(lambda: get(server.base + "/v1/status/leader"), 40, "a leader")

        def client_in_catalog() -> bool:
            checks = get(server.base + "/v1/health/node/c1")
            return any(c["CheckID"] == "serfHealth" for c in checks or [])

        eventually(client_in_catalog, 30, "the client in the catalog")
        yield server, client
    finally:
        mp.undo()
        for p in (client, server):
            p.terminate()
        for p in (client, server):
            p.kill()


def node_services(server: ServerProc) -> dict[str, Any]:
    listing = get(server.base + "/v1/catalog/node-services/c1")
    return {s["ID"]: s for s in listing.get("Services") or []}


def node_checks(server: ServerProc) -> dict[str, Any]:
    return {c["CheckID"]: c for c in get(server.base + "/v1/health/node/c1") or []}


def raft_index(server: ServerProc) -> int:
    health = get(server.base + "/v1/operator/autopilot/health")
    return int(health["Servers"][0]["LastIndex"])


def test_full_sync_removes_catalog_only_entries_and_skips_what_is_in_sync(
    cluster: tuple[ServerProc, ServerProc],
) -> None:
    server, client = cluster
    put(
        client.base + "/v1/agent/service/register",
        {"Name": "web", "Port": 80, "Check": {"TTL": "60s", "Status": "passing"}},
    )
    eventually(lambda: "web" in node_services(server), 15, "web in the catalog")
    web_index = node_services(server)["web"]["ModifyIndex"]
    check_index = node_checks(server)["service:web"]["ModifyIndex"]

    # Behind the client's back: a service and checks it never had, and web changed.
    node = {"Node": "c1", "Address": "127.0.0.1", "SkipNodeUpdate": True}
    put(
        server.base + "/v1/catalog/register",
        {
            **node,
            "Service": {"ID": "stray", "Service": "stray", "Port": 9},
            "Check": {"CheckID": "stray-check", "Name": "stray", "ServiceID": "stray"},
        },
    )
    put(
        server.base + "/v1/catalog/register",
        {**node, "Check": {"CheckID": "node-stray", "Name": "n"}},
    )
    put(
        server.base + "/v1/catalog/register",
        {**node, "Service": {"ID": "web2", "Service": "web2", "Port": 7}},
    )
    assert {"stray", "web2"} <= set(node_services(server))

    def cleaned() -> bool:
        services, checks = node_services(server), node_checks(server)
        return (
            set(services) == {"web"} and "stray-check" not in checks and "node-stray" not in checks
        )

    eventually(cleaned, 20, "the client's full sync to remove the catalog-only entries")
    checks = node_checks(server)
    assert checks["serfHealth"]["Status"] == "passing"  # the leader's check stays

    # Several more full syncs: web and its check, in sync all along, are never written again
    # (not even as no-op Raft writes: the server's Raft log does not grow).
    time.sleep(1.5)
    before = raft_index(server)
    time.sleep(5)
    assert raft_index(server) == before
    assert node_services(server)["web"]["ModifyIndex"] == web_index
    assert node_checks(server)["service:web"]["ModifyIndex"] == check_index

    # web changed behind the client's back is put back as the client has it.
    put(
        server.base + "/v1/catalog/register",
        {**node, "Service": {"ID": "web", "Service": "web", "Port": 8080}},
    )
    eventually(lambda: node_services(server)["web"]["Port"] == 80, 20, "web's port restored to 80")
    put(client.base + "/v1/agent/service/deregister/web")
    eventually(lambda: "web" not in node_services(server), 10, "web deregistered")


def test_output_only_changes_wait_for_check_update_interval(
    cluster: tuple[ServerProc, ServerProc],
) -> None:
    server, client = cluster
    put(client.base + "/v1/agent/check/register", {"Name": "mem", "TTL": "60s"})
    put(client.base + "/v1/agent/check/update/mem", {"Status": "passing", "Output": "one"})
    eventually(
        lambda: node_checks(server)["mem"]["Output"] == "one", 10, "mem passing in the catalog"
    )

    # Output only: the agent has it at once, the catalog after d/2 + stagger(d).
    changed = time.monotonic()
    put(client.base + "/v1/agent/check/update/mem", {"Status": "passing", "Output": "two"})
    assert get(client.base + "/v1/agent/checks")["mem"]["Output"] == "two"
    time.sleep(CHECK_UPDATE_INTERVAL / 2 - 0.8)  # full syncs run meanwhile: they must wait too
    assert node_checks(server)["mem"]["Output"] == "one"
    eventually(
        lambda: node_checks(server)["mem"]["Output"] == "two",
        CHECK_UPDATE_INTERVAL * 1.5 + 5,
        "the deferred output in the catalog",
    )
    assert time.monotonic() - changed >= CHECK_UPDATE_INTERVAL / 2 - 0.5

    # A status change is synced at once, with its output.
    put(client.base + "/v1/agent/check/update/mem", {"Status": "warning", "Output": "three"})
    check = node_checks(server)["mem"]
    assert (check["Status"], check["Output"]) == ("warning", "three")
    put(client.base + "/v1/agent/check/deregister/mem")
