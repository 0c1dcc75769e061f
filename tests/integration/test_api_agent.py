"""`/v1/agent/*` against a real ``proconsul agent -dev`` process: local services and checks,
their sync to the catalog, the check runners (TTL, HTTP, TCP, script, alias), maintenance,
and the agent's own endpoints."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers.agentproc import Client, start_agent, stop_agent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    proc, client = start_agent(log, "-enable-script-checks")
    try:
        yield client
    finally:
        stop_agent(proc)


def wait_for(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def checks(agent: Client) -> dict[str, Any]:
    reply = agent.get("/v1/agent/checks")
    assert reply.status == 200
    result: dict[str, Any] = reply.json()
    return result


def status_of(agent: Client, check_id: str) -> str | None:
    check = checks(agent).get(check_id)
    return None if check is None else str(check["Status"])


def catalog_check_ids(agent: Client, service: str) -> set[str]:
    nodes = agent.get(f"/v1/health/service/{urllib.parse.quote(service)}").json()
    return {c["CheckID"] for n in nodes for c in n["Checks"]}


def test_service_register_shapes_and_catalog_sync(agent: Client) -> None:
    reply = agent.put_json(
        "/v1/agent/service/register",
        {
            "name": "web",
            "id": "web-1",
            "port": 8080,
            "tags": ["v1"],
            "meta": {"team": "a"},
            "tagged_addresses": {"lan": {"address": "10.0.0.1", "port": 80}},
            "enable_tag_override": True,
            "check": {"ttl": "30s", "status": "passing"},
        },
    )
    assert (reply.status, reply.body) == (200, b"")
    svc = agent.get("/v1/agent/services").json()["web-1"]
    assert svc == {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["v1"],
        "Meta": {"team": "a"},
        "Port": 8080,
        "Address": "",
        "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80}},
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": True,
        "Datacenter": "dc1",
    }
    one = agent.get("/v1/agent/service/web-1")
    assert one.status == 200
    assert one.json()["ContentHash"] == one.headers["X-Consul-ContentHash"]
    missing = agent.get("/v1/agent/service/nope")
    assert (missing.status, missing.body) == (404, b"unknown service ID: nope")
    # Synced before the answer: the catalog has it with its check.
    nodes = agent.get("/v1/health/service/web").json()
    assert [n["Service"]["ID"] for n in nodes] == ["web-1"]
    assert "service:web-1" in catalog_check_ids(agent, "web")
    check = checks(agent)["service:web-1"]
    assert (check["Name"], check["Status"], check["Type"]) == (
        "Service 'web' check",
        "passing",
        "ttl",
    )
    assert check["ServiceTags"] == ["v1"] and check["Definition"] == {"TTL": "30s"}

    assert agent.put("/v1/agent/service/deregister/web-1").status == 200
    assert agent.get("/v1/agent/services").json() == {}
    assert agent.get("/v1/health/service/web").json() == []
    again = agent.put("/v1/agent/service/deregister/web-1")
    assert again.status == 404
    assert again.body == (
        b'Unknown service ID "web-1". Ensure that the service ID is passed, not the service name.'
    )


def test_register_validation_errors(agent: Client) -> None:
    cases = [
        ("/v1/agent/service/register", {"port": 1}, 400, b"Missing service name"),
        ("/v1/agent/service/register", {"name": "x", "address": "0.0.0.0"}, 400,
         b"Invalid service address"),
        ("/v1/agent/service/register", {"name": "x", "check": {"http": "http://x"}}, 400,
         b"Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"),
        ("/v1/agent/service/register", {"name": "x", "check": {"ttl": "1s", "status": "bad"}},
         400, b"Status for checks must 'passing', 'warning', 'critical'"),
        ("/v1/agent/check/register", {"ttl": "1s"}, 400, b"Missing check name"),
        ("/v1/agent/check/register", {"name": "c", "ttl": "1s", "status": "meh"}, 400,
         b"Bad check status"),
        ("/v1/agent/check/register", {"name": "c"}, 400,
         b"Invalid check: TTL must be > 0 for TTL checks"),
        ("/v1/agent/check/register", {"name": "c", "ttl": "1s", "service_id": "nope"}, 404,
         b'ServiceID "nope" does not exist'),
    ]  # fmt: skip
    for path, body, status, text in cases:
        reply = agent.put_json(path, body)
        assert (reply.status, reply.body) == (status, text), body
    bad = agent.put("/v1/agent/service/register", b"{nope")
    assert bad.status == 400 and bad.body.startswith(b"Request decode failed:")


def test_ttl_check_updates_and_expiry(agent: Client) -> None:
    assert agent.put_json("/v1/agent/check/register", {"name": "ttl", "ttl": "1s"}).status == 200
    assert status_of(agent, "ttl") == "critical"  # Consul's initial status
    assert agent.put("/v1/agent/check/warn/ttl?note=hmm").status == 200
    check = checks(agent)["ttl"]
    assert (check["Status"], check["Output"]) == ("warning", "hmm")
    assert (
        agent.put_json(
            "/v1/agent/check/update/ttl", {"status": "passing", "output": "all good"}
        ).status
        == 200
    )
    check = checks(agent)["ttl"]
    assert (check["Status"], check["Output"]) == ("passing", "all good")
    # The node-level check reaches the catalog too.
    node_checks = agent.get("/v1/health/state/passing").json()
    assert "ttl" in {c["CheckID"] for c in node_checks}
    bad = agent.put_json("/v1/agent/check/update/ttl", {"Status": "nope"})
    assert (bad.status, bad.body) == (400, b"Invalid check status: 'nope'")
    missing = agent.put("/v1/agent/check/pass/nope")
    assert missing.status == 404
    assert missing.body == (
        b'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.'
    )
    # No update within the TTL: critical, with the last output.
    expired = wait_for(lambda: status_of(agent, "ttl") == "critical", 3.0)
    assert expired
    output = checks(agent)["ttl"]["Output"]
    assert output == "TTL expired (last output before timeout follows): all good"
    assert agent.put("/v1/agent/check/deregister/ttl").status == 200
    assert "ttl" not in checks(agent)
    assert agent.put("/v1/agent/check/deregister/ttl").status == 404


class _Handler(http.server.BaseHTTPRequestHandler):
    seen_headers: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        code = int(self.path.strip("/") or "200")
        _Handler.seen_headers.append(self.headers.get("X-Test", ""))
        body = b"" if code == 204 else f"code {code}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_target() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_checks_map_status_codes(agent: Client, http_target: str) -> None:
    want = {"h-200": "passing", "h-204": "passing", "h-429": "warning", "h-500": "critical"}
    for name in want:
        code = name.split("-")[1]
        body = {
            "name": name,
            "http": f"{http_target}/{code}",
            "interval": "1s",
            "header": {"X-Test": ["yes"]},
        }
        assert agent.put_json("/v1/agent/check/register", body).status == 200
    ok = wait_for(lambda: {n: status_of(agent, n) for n in want} == want, 6.0)
    assert ok, {n: checks(agent)[n]["Output"] for n in want}
    out = checks(agent)["h-200"]["Output"]
    assert out == f"HTTP GET {http_target}/200: 200 OK Output: code 200"
    assert checks(agent)["h-429"]["Definition"]["Header"] == {"X-Test": ["yes"]}
    assert "yes" in _Handler.seen_headers
    for name in want:
        agent.put(f"/v1/agent/check/deregister/{name}")


def test_tcp_and_script_checks(agent: Client) -> None:
    port = int(agent.base.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    defs = {
        "tcp-up": {"tcp": f"127.0.0.1:{port}", "interval": "1s"},
        "tcp-down": {"tcp": f"127.0.0.1:{closed}", "interval": "1s", "timeout": "1s"},
        "script-0": {"args": ["sh", "-c", "echo fine"], "interval": "1s"},
        "script-1": {"args": ["sh", "-c", "echo meh; exit 1"], "interval": "1s"},
        "script-2": {"args": ["sh", "-c", "exit 3"], "interval": "1s"},
    }
    for name, body in defs.items():
        assert agent.put_json("/v1/agent/check/register", {"name": name, **body}).status == 200
    want = {
        "tcp-up": "passing",
        "tcp-down": "critical",
        "script-0": "passing",
        "script-1": "warning",
        "script-2": "critical",
    }
    assert wait_for(lambda: {n: status_of(agent, n) for n in want} == want, 6.0)
    # Critical is also the initial status: wait until every check has run once (has output).
    assert wait_for(lambda: all(checks(agent)[n]["Output"] for n in want if n != "script-2"), 6.0)
    all_checks = checks(agent)
    assert all_checks["tcp-up"]["Output"] == f"TCP connect 127.0.0.1:{port}: Success"
    assert all_checks["tcp-down"]["Output"].startswith(f"dial tcp 127.0.0.1:{closed}:")
    assert all_checks["script-0"]["Output"] == "fine\n"
    assert all_checks["script-1"]["Type"] == "script"
    for name in defs:
        agent.put(f"/v1/agent/check/deregister/{name}")


def test_multiple_service_checks_and_agent_health(agent: Client) -> None:
    body = {
        "name": "api",
        "checks": [{"ttl": "60s", "status": "passing"}, {"ttl": "60s", "status": "passing"}],
    }
    assert agent.put_json("/v1/agent/service/register", body).status == 200
    ids = {"service:api:1", "service:api:2"}
    assert ids <= catalog_check_ids(agent, "api")
    by_id = agent.get("/v1/agent/health/service/id/api")
    assert by_id.status == 200
    assert by_id.json()["AggregatedStatus"] == "passing"
    assert {c["CheckID"] for c in by_id.json()["Checks"]} == ids
    agent.put("/v1/agent/check/warn/service:api:2")
    assert agent.get("/v1/agent/health/service/name/api").status == 429
    agent.put("/v1/agent/check/fail/service:api:1")
    text = agent.get("/v1/agent/health/service/name/api?format=text")
    assert (text.status, text.body) == (503, b"critical")
    missing = agent.get("/v1/agent/health/service/id/nope?format=text")
    assert (missing.status, missing.body) == (404, b"ServiceId nope not found")
    nojson = agent.get("/v1/agent/health/service/name/nope")
    assert (nojson.status, nojson.json()) == (404, [])
    # replace-existing-checks drops the checks not in the new definition.
    body = {"name": "api", "checks": [{"ttl": "60s"}]}
    agent.put_json("/v1/agent/service/register?replace-existing-checks", body)
    assert {c for c in checks(agent) if "api" in c} == {"service:api"}
    assert wait_for(lambda: catalog_check_ids(agent, "api") - {"serfHealth"} == {"service:api"})
    agent.put("/v1/agent/service/deregister/api")


def test_maintenance_modes(agent: Client) -> None:
    agent.put_json("/v1/agent/service/register", {"name": "maint"})
    bad = agent.put("/v1/agent/service/maintenance/maint")
    assert (bad.status, bad.body) == (400, b"Missing value for enable")
    assert agent.put("/v1/agent/service/maintenance/maint?enable=true&reason=fix").status == 200
    check = checks(agent)["_service_maintenance:maint"]
    assert (check["Status"], check["Notes"], check["ServiceID"]) == ("critical", "fix", "maint")
    assert "_service_maintenance:maint" in catalog_check_ids(agent, "maint")
    assert agent.get("/v1/agent/health/service/id/maint?format=text").body == b"maintenance"
    assert agent.put("/v1/agent/service/maintenance/maint?enable=false").status == 200
    assert "_service_maintenance:maint" not in checks(agent)
    unknown = agent.put("/v1/agent/service/maintenance/nope?enable=true")
    assert unknown.status == 404
    assert agent.put("/v1/agent/maintenance?enable=True").status == 200
    assert checks(agent)["_node_maintenance"]["Name"] == "Node Maintenance Mode"
    assert agent.put("/v1/agent/maintenance?enable=false").status == 200
    assert "_node_maintenance" not in checks(agent)
    agent.put("/v1/agent/service/deregister/maint")


def test_sidecar_service_and_filters(agent: Client) -> None:
    body = {"name": "shop", "port": 9000, "tags": ["x"], "connect": {"sidecar_service": {}}}
    assert agent.put_json("/v1/agent/service/register", body).status == 200
    services = agent.get("/v1/agent/services").json()
    sidecar = services["shop-sidecar-proxy"]
    assert sidecar["Kind"] == "connect-proxy"
    assert sidecar["Service"] == "shop-sidecar-proxy"
    assert 21000 <= sidecar["Port"] <= 21255
    assert sidecar["Tags"] == ["x"]
    assert sidecar["Proxy"]["DestinationServiceName"] == "shop"
    assert sidecar["Proxy"]["LocalServicePort"] == 9000
    names = {c["Name"] for c in checks(agent).values() if c["ServiceID"] == "shop-sidecar-proxy"}
    assert names == {"Connect Sidecar Listening", "Connect Sidecar Aliasing shop"}
    filtered = agent.get(
        "/v1/agent/services?filter=" + urllib.parse.quote('Kind == "connect-proxy"')
    )
    assert set(filtered.json()) == {"shop-sidecar-proxy"}
    bad = agent.get("/v1/agent/checks?filter=" + urllib.parse.quote("Status ==="))
    assert bad.status == 400
    # Deregistering the service takes its sidecar along.
    assert agent.put("/v1/agent/service/deregister/shop").status == 200
    assert agent.get("/v1/agent/services").json() == {}


def test_agent_self_members_and_misc(agent: Client) -> None:
    me = agent.get("/v1/agent/self").json()
    assert set(me) == {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"}
    assert me["Config"]["Version"] == "1.22.0" and me["Config"]["Revision"] == "proconsul"
    assert me["Config"]["Datacenter"] == "dc1" and me["Config"]["Server"] is True
    members = agent.get("/v1/agent/members").json()
    assert me["Member"] in members
    assert all(m["Status"] == 1 for m in members)
    wan = agent.get("/v1/agent/members?wan=1").json()
    assert wan and all(m["Name"].endswith(".dc1") for m in wan)
    seg = agent.get("/v1/agent/members?wan=1&segment=alpha")
    assert (seg.status, seg.body) == (400, b"Cannot provide a segment with wan=true")
    metrics = agent.get("/v1/agent/metrics").json()
    assert {"Timestamp", "Gauges", "Points", "Counters", "Samples"} <= set(metrics)
    prom = agent.get("/v1/agent/metrics?format=prometheus")
    assert prom.status == 200 and "X-Consul-Reason" in prom.headers
    monitor = agent.get("/v1/agent/monitor?loglevel=loud")
    assert (monitor.status, monitor.body) == (400, b"Unknown log level: loud")
    token = agent.put_json("/v1/agent/token/default", {"Token": "x"})
    assert (token.status, token.body) == (401, b"ACL support disabled")
    assert agent.put("/v1/agent/reload").status == 200
    assert agent.get("/v1/agent/version").json()["HumanVersion"] == "1.22.0"
    assert "Memory" in agent.get("/v1/agent/host").json()
    gone = agent.put("/v1/agent/force-leave/nobody?prune=1")
    assert gone.status == 500


def test_monitor_streams_log_lines(agent: Client) -> None:
    host, port = agent.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/v1/agent/monitor?loglevel=debug")
        resp = conn.getresponse()
        assert resp.status == 200
        # A check of a type this agent does not run (OSService: Windows services) makes
        # the agent log a warning.
        agent.put_json(
            "/v1/agent/check/register", {"Name": "oss", "OSService": "sshd", "Interval": "5s"}
        )
        data = b""
        deadline = time.monotonic() + 5
        while b"check_type_not_supported" not in data and time.monotonic() < deadline:
            data += resp.read1(4096)
        assert b"[WARN]" in data and b"check_type_not_supported check=oss" in data
    finally:
        conn.close()
        agent.put("/v1/agent/check/deregister/oss")


def test_script_checks_are_refused_unless_enabled(tmp_path: Path) -> None:
    proc, client = start_agent(tmp_path / "noscript.log")
    try:
        body = {"name": "s", "args": ["/bin/true"], "interval": "10s"}
        reply = client.put_json("/v1/agent/check/register", body)
        assert (reply.status, reply.body) == (
            500,
            b"Scripts are disabled on this agent; to enable, configure 'enable_script_checks' "
            b"to true",
        )
        service = {"name": "x", "check": {"args": ["/bin/true"], "interval": "10s"}}
        assert client.put_json("/v1/agent/service/register", service).status == 500
        assert client.get("/v1/agent/checks").json() == {}
        assert client.get("/v1/agent/services").json() == {}
        # A TTL check is fine.
        ttl = client.put_json("/v1/agent/check/register", {"name": "t", "ttl": "5s"})
        assert ttl.status == 200
    finally:
        stop_agent(proc)


def test_leave_stops_the_agent(tmp_path: Path) -> None:
    proc, client = start_agent(tmp_path / "leave.log")
    try:
        assert client.put("/v1/agent/leave").status == 200
        assert proc.wait(timeout=10) == 0
    finally:
        stop_agent(proc)
