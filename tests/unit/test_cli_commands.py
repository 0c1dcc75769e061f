"""CLI commands against a fake HTTP client (no sockets): the requests they make, what they
print and their exit codes."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from server.clicmd import COMMANDS
from server.clicmd.api import APIError, Client, Response
from server.clicmd.base import run_command

Handler = Callable[[str, str, Mapping[str, Any], bytes | None], tuple[int, Any]]


class FakeClient(Client):
    """Answers from ``routes[(method, path)]``; records every request."""

    def __init__(self, routes: dict[tuple[str, str], Any] | None = None) -> None:
        super().__init__()
        self.routes = routes or {}
        self.calls: list[tuple[str, str, dict[str, Any], bytes | None]] = []

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        timeout: float | None = 600,
        dc: bool = True,
        allow: tuple[int, ...] = (),
    ) -> Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
        self.calls.append((method, path, clean, body))
        answer = self.routes.get((method, path), (404, ""))
        if callable(answer):
            answer = answer(clean, body)
        status, data = answer
        raw = data if isinstance(data, bytes) else json.dumps(data).encode() if data != "" else b""
        if status >= 400 and status not in allow:
            text = raw.decode()
            msg = f"Unexpected response code: {status}" + (f" ({text})" if text else "")
            raise APIError(msg, status, text)
        return Response(status, {"X-Consul-Index": "9"}, raw)


def run(argv: list[str], client: FakeClient, stdin: str = "") -> tuple[int, str, str]:
    words = argv
    for n in (3, 2, 1):
        name = " ".join(words[:n])
        if name in COMMANDS:
            break
    out, err = io.StringIO(), io.StringIO()
    code = run_command(COMMANDS[name](), words[n:], out, err, io.StringIO(stdin), client)
    return code, out.getvalue(), err.getvalue()


def pair(key: str, value: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "Key": key,
        "Value": base64.b64encode(value).decode(),
        "Flags": 0,
        "CreateIndex": 1,
        "ModifyIndex": 2,
        "LockIndex": 0,
        **extra,
    }


# --- kv -----------------------------------------------------------------------------------


def test_kv_put_forms(tmp_path: Path) -> None:
    c = FakeClient({("PUT", "/v1/kv/a"): (200, True)})
    assert run(["kv", "put", "a", "v"], c) == (0, "Success! Data written to: a\n", "")
    assert c.calls[-1] == ("PUT", "/v1/kv/a", {}, b"v")
    f = tmp_path / "data"
    f.write_bytes(b"from file")
    assert run(["kv", "put", "-flags=5", "a", f"@{f}"], c)[0] == 0
    assert c.calls[-1] == ("PUT", "/v1/kv/a", {"flags": 5}, b"from file")
    assert run(["kv", "put", "a", "-"], c, stdin="piped")[0] == 0
    assert c.calls[-1][3] == b"piped"
    assert run(["kv", "put", "-base64", "a", "aGk="], c)[0] == 0
    assert c.calls[-1][3] == b"hi"
    assert run(["kv", "put", "a"], c)[0] == 0
    assert c.calls[-1][3] == b""


def test_kv_put_refusals() -> None:
    c = FakeClient({("PUT", "/v1/kv/a"): (200, False)})
    assert run(["kv", "put"], c) == (1, "", "Error! Missing KEY argument\n")
    assert run(["kv", "put", "a", "b", "c"], c)[2] == (
        "Error! Too many arguments (expected 1 or 2, got 3)\n"
    )
    assert run(["kv", "put", "-acquire", "a"], c)[2] == (
        "Error! Missing -session (required with -acquire and -release)\n"
    )
    assert run(["kv", "put", "-cas", "a", "x"], c)[2] == "Must specify -modify-index with -cas!\n"
    assert run(["kv", "put", "-cas", "-modify-index=3", "a", "x"], c) == (
        1,
        "",
        "Error! Did not write to a: CAS failed\n",
    )
    assert c.calls[-1][2] == {"cas": 3}
    assert run(["kv", "put", "-acquire", "-session=s1", "a"], c)[2] == (
        "Error! Did not acquire lock\n"
    )
    assert run(["kv", "put", "-base64", "a", "!!"], c)[2].startswith(
        "Error! Cannot base 64 decode data:"
    )
    assert run(["kv", "put", "a", "@/no/such/file"], c)[2].startswith("Error! Failed to read file:")


def test_kv_put_lock_success() -> None:
    c = FakeClient({("PUT", "/v1/kv/a"): (200, True)})
    assert run(["kv", "put", "-acquire", "-session=s1", "a"], c)[1] == (
        "Success! Lock acquired on: a\n"
    )
    assert c.calls[-1][2] == {"acquire": "s1"}
    assert run(["kv", "put", "-release", "-session=s1", "a"], c)[1] == (
        "Success! Lock released on: a\n"
    )


def test_kv_get() -> None:
    c = FakeClient(
        {
            ("GET", "/v1/kv/a"): lambda p, b: (
                (200, [pair("a", b"1"), pair("a/b", b"2")])
                if p.get("recurse")
                else (200, ["a", "a/"])
                if p.get("keys")
                else (200, [pair("a", b"1")])
            ),
        }
    )
    assert run(["kv", "get", "a"], c) == (0, "1\n", "")
    assert run(["kv", "get", "/a"], c) == (0, "1\n", "")
    assert run(["kv", "get", "-base64", "a"], c)[1] == "MQ==\n"
    assert run(["kv", "get", "-recurse", "a"], c)[1] == "a:1\na/b:2\n"
    assert run(["kv", "get", "-keys", "a"], c)[1] == "a\na/\n"
    assert c.calls[-1][2] == {"keys": True, "separator": "/"}
    detailed = run(["kv", "get", "-recurse", "-detailed", "a"], c)[1]
    assert detailed.count("CreateIndex") == 2 and "\n\nCreateIndex" in detailed
    assert run(["kv", "get", "nope"], c) == (1, "", "Error! No key exists at: nope\n")
    assert run(["kv", "get"], c) == (1, "", "Error! Missing KEY argument\n")
    assert run(["kv", "get", "a", "b"], c)[2] == "Too many arguments (expected 1, got 2)\n"


def test_kv_get_error_is_one_line() -> None:
    c = FakeClient({("GET", "/v1/kv/a"): (500, b"rpc error:\nsecond line")})
    code, out, err = run(["kv", "get", "a"], c)
    assert code == 1 and out == ""
    assert err.startswith("Error querying Consul agent: Unexpected response code: 500")


def test_kv_delete() -> None:
    c = FakeClient({("DELETE", "/v1/kv/a"): (200, True)})
    assert run(["kv", "delete", "a"], c)[1] == "Success! Deleted key: a\n"
    assert run(["kv", "delete", "-recurse", "a"], c)[1] == (
        "Success! Deleted keys with prefix: a\n"
    )
    assert c.calls[-1][2] == {"recurse": True}
    assert run(["kv", "delete", "-cas", "-modify-index=4", "a"], c)[0] == 0
    assert c.calls[-1][2] == {"cas": 4}
    assert run(["kv", "delete"], c)[2] == "Error! Missing KEY argument\n"
    assert run(["kv", "delete", "-cas", "-recurse", "-modify-index=1", "a"], c)[2] == (
        "Cannot specify both -cas and -recurse!\n"
    )
    assert run(["kv", "delete", "-recurse", "-modify-index=1", "a"], c)[2] == (
        "Cannot specify both -modify-index and -recurse!\n"
    )


def test_kv_export_import(tmp_path: Path) -> None:
    c = FakeClient({("GET", "/v1/kv/"): (200, [pair("x", b"1", Flags=7)])})
    code, out, _ = run(["kv", "export"], c)
    assert code == 0
    assert json.loads(out) == [{"key": "x", "flags": 7, "value": "MQ=="}]
    assert out.startswith('[\n\t{\n\t\t"key": "x",')
    c = FakeClient({("PUT", "/v1/kv/p/x"): (200, True), ("PUT", "/v1/kv/x"): (200, True)})
    path = tmp_path / "e.json"
    path.write_text(out)
    assert run(["kv", "import", f"@{path}"], c) == (0, "Imported: x\n", "")
    assert c.calls[-1] == ("PUT", "/v1/kv/x", {"flags": 7}, b"1")
    assert run(["kv", "import", "-prefix=p", "-"], c, stdin=out)[1] == "Imported: p/x\n"
    assert run(["kv", "import", out], c)[1] == "Imported: x\n"
    assert run(["kv", "import", str(path)], c)[1] == "Imported: x\n"
    assert run(["kv", "import"], c)[2] == "Error! Missing DATA argument\n"
    assert run(["kv", "import", "{nope"], c)[2].startswith("Cannot unmarshal data:")
    bad = json.dumps([{"key": "x", "flags": 0, "value": "!!"}])
    assert run(["kv", "import", bad], c)[2].startswith("Error base 64 decoding value:")


# --- services, catalog ---------------------------------------------------------------------


def test_services_register_from_files(tmp_path: Path) -> None:
    hcl = tmp_path / "web.hcl"
    hcl.write_text(
        'service {\n  name = "web"\n  port = 80\n  tags = ["a"]\n'
        '  check {\n    ttl = "10s"\n  }\n}\n'
    )
    js = tmp_path / "db.json"
    js.write_text(json.dumps({"services": [{"name": "db", "id": "db1"}, {"Name": "db2"}]}))
    c = FakeClient({("PUT", "/v1/agent/service/register"): (200, "")})
    code, out, err = run(["services", "register", str(hcl), str(js)], c)
    assert (code, err) == (0, "")
    assert out == "Registered service: web\nRegistered service: db\nRegistered service: db2\n"
    bodies = [json.loads(call[3] or b"") for call in c.calls]
    assert bodies[0] == {"Name": "web", "Port": 80, "Tags": ["a"], "Check": {"TTL": "10s"}}
    assert bodies[1] == {"Name": "db", "ID": "db1"}
    c = FakeClient({("PUT", "/v1/agent/service/deregister/db1"): (200, "")})
    c.routes[("PUT", "/v1/agent/service/deregister/db2")] = (200, "")
    assert run(["services", "deregister", str(js)], c)[1] == (
        "Deregistered service: db1\nDeregistered service: db2\n"
    )


def test_services_register_flags_and_refusals(tmp_path: Path) -> None:
    c = FakeClient({("PUT", "/v1/agent/service/register"): (200, "")})
    code, out, _ = run(
        ["services", "register", "-name=api", "-port=9", "-tag=x", "-meta=k=v", "-id=api1"], c
    )
    assert (code, out) == (0, "Registered service: api\n")
    assert json.loads(c.calls[-1][3] or b"") == {
        "Name": "api",
        "ID": "api1",
        "Port": 9,
        "Tags": ["x"],
        "Meta": {"k": "v"},
    }
    assert run(["services", "register"], c)[2] == (
        "Service registration requires at least one argument or flags.\n"
    )
    empty = tmp_path / "e.json"
    empty.write_text("{}")
    assert run(["services", "register", str(empty)], c) == (0, "", "")
    bad = tmp_path / "bad.hcl"
    bad.write_text("service {")
    assert run(["services", "register", str(bad)], c)[2].startswith(
        f"Error: config file {bad}: invalid HCL"
    )
    nameless = tmp_path / "nameless.json"
    nameless.write_text('{"service": {"port": 80}}')
    assert run(["services", "register", str(nameless)], c)[2] == (
        f"Error: config file {nameless}: service definition: missing service name\n"
    )
    assert run(["services", "deregister"], c)[2] == (
        "Service deregistration requires at least one argument or -id.\n"
    )
    c = FakeClient({("PUT", "/v1/agent/service/register"): (400, b"Invalid service")})
    assert run(["services", "register", "-name=x"], c)[2] == (
        'Error registering service "x": Unexpected response code: 400 (Invalid service)\n'
    )


def test_catalog_nodes_params_and_empty() -> None:
    c = FakeClient({("GET", "/v1/catalog/nodes"): (200, [])})
    code, out, err = run(["catalog", "nodes", "-node-meta=rack=r1", "-datacenter=dc2"], c)
    assert (code, out) == (0, "")
    assert err == "No nodes match the given query - try expanding your search.\n"
    assert c.calls[-1][2] == {"node-meta": ["rack:r1"]}
    assert run(["catalog", "nodes", "x"], c)[2] == "Too many arguments (expected 0, got 1)\n"


# --- agent commands -------------------------------------------------------------------------


def test_members_exit_2_when_nothing_matches() -> None:
    members = [{"Name": "a", "Addr": "1.2.3.4", "Port": 1, "Status": 1, "Tags": {"role": "node"}}]
    c = FakeClient({("GET", "/v1/agent/members"): (200, members)})
    assert run(["members", "-status=failed"], c) == (2, "", "")
    assert run(["members", "-status=("], c)[2].startswith("Failed to compile status regexp:")
    assert run(["members", "-wan"], c)[0] == 0
    assert c.calls[-1][2] == {"wan": "1"}


def test_maint_and_keyring_and_event_refusals() -> None:
    c = FakeClient()
    assert run(["maint", "-enable", "-disable"], c)[2] == (
        "Only one of -enable or -disable may be provided\n"
    )
    assert run(["maint", "-reason=x"], c)[2] == "Reason may only be provided with -enable\n"
    assert run(["maint", "-service=web"], c)[2] == "Service requires either -enable or -disable\n"
    assert run(["keyring"], c)[2] == "Only a single action is allowed\n"
    assert run(["keyring", "-list", "-install=k"], c)[2] == "Only a single action is allowed\n"
    assert run(["keyring", "-install=k", "-local-only"], c)[2] == (
        "Local-only can only be used with -list\n"
    )
    assert run(["event"], c)[2] == "Event name must be specified\n"
    assert run(["event", "-name=x", "-tag=t"], c)[2] == (
        "Cannot provide tag filter without service filter.\n"
    )


def test_maint_enable_service() -> None:
    c = FakeClient({("PUT", "/v1/agent/service/maintenance/web"): (200, "")})
    assert run(["maint", "-enable", "-service=web", "-reason=r"], c)[1] == (
        "Service entered maintenance mode: web\n"
    )
    assert c.calls[-1][2] == {"enable": "true", "reason": "r"}


def test_keyring_list_format() -> None:
    responses = [
        {"WAN": True, "Datacenter": "dc1", "Keys": {"k1=": 2}, "NumNodes": 2, "Messages": {}},
        {"WAN": False, "Datacenter": "dc1", "Keys": {"k1=": 3}, "NumNodes": 3, "Messages": {}},
    ]
    c = FakeClient({("GET", "/v1/operator/keyring"): (200, responses)})
    code, out, _ = run(["keyring", "-list"], c)
    assert code == 0
    assert out == (
        "==> Gathering installed encryption keys...\n\nWAN:\n  k1= [2/2]\n\ndc1 (LAN):\n"
        "  k1= [3/3]\n"
    )


def test_keygen() -> None:
    code, out, _ = run(["keygen"], FakeClient())
    assert code == 0 and len(base64.b64decode(out.strip())) == 32


# --- operator ------------------------------------------------------------------------------


def test_raft_remove_peer() -> None:
    c = FakeClient({("DELETE", "/v1/operator/raft/peer"): (200, "")})
    assert run(["operator", "raft", "remove-peer", "-address=1.2.3.4:8300"], c)[1] == (
        'Removed peer with address "1.2.3.4:8300"\n'
    )
    assert run(["operator", "raft", "remove-peer", "-address=a", "-id=b"], c)[2] == (
        "Error removing peer: cannot give both an address and id\n"
    )


def test_autopilot_set_config_cas() -> None:
    conf = {
        "CleanupDeadServers": True,
        "LastContactThreshold": "200ms",
        "MaxTrailingLogs": 250,
        "MinQuorum": 0,
        "ServerStabilizationTime": "10s",
        "RedundancyZoneTag": "",
        "DisableUpgradeMigration": False,
        "UpgradeVersionTag": "",
        "ModifyIndex": 12,
    }
    c = FakeClient(
        {
            ("GET", "/v1/operator/autopilot/configuration"): (200, conf),
            ("PUT", "/v1/operator/autopilot/configuration"): (200, True),
        }
    )
    argv = ["operator", "autopilot", "set-config", "-cleanup-dead-servers=false"]
    argv += ["-last-contact-threshold=1s", "-min-quorum=3"]
    assert run(argv, c) == (0, "Configuration updated!\n", "")
    _, _, params, body = c.calls[-1]
    sent = json.loads(body or b"")
    assert params == {"cas": 12}
    assert sent["CleanupDeadServers"] is False and sent["LastContactThreshold"] == "1s"
    assert sent["MinQuorum"] == 3 and sent["MaxTrailingLogs"] == 250
    bad = ["operator", "autopilot", "set-config", "-cleanup-dead-servers=maybe"]
    assert run(bad, c)[2].startswith('invalid value "maybe" for flag -cleanup-dead-servers')


# --- watch, lock ---------------------------------------------------------------------------


def test_watch_refusals() -> None:
    c = FakeClient()
    assert run(["watch"], c)[2] == "Watch type must be specified\n"
    assert run(["watch", "-type=key"], c)[2] == ("Must specify a single key to watch\n")
    assert run(["watch", "-type=keyprefix"], c)[2] == ("Must specify a single prefix to watch\n")
    assert run(["watch", "-type=service"], c)[2] == ("Must specify a single service to watch\n")
    assert run(["watch", "-type=nodes", "-key=x"], c)[2] == ("Invalid parameters: [key]\n")
    assert run(["watch", "-type=service", "-service=x", "-passingonly=maybe"], c)[2] == (
        'Failed to parse passingonly flag: strconv.ParseBool: parsing "maybe": invalid syntax\n'
    )


def test_watch_prints_first_result() -> None:
    c = FakeClient(
        {
            ("GET", "/v1/agent/self"): (200, {}),
            ("GET", "/v1/catalog/services"): (200, {"web": ["<a>"]}),
        }
    )
    assert run(["watch", "-type=services"], c) == (
        0,
        '{\n    "web": [\n        "\\u003ca\\u003e"\n    ]\n}\n',
        "",
    )


def test_lock_refusals() -> None:
    c = FakeClient()
    assert run(["lock", "prefix"], c)[2] == "Key prefix and child command must be specified\n"
    assert run(["lock", "-n=0", "p", "true"], c)[2] == "Lock holder limit must be positive\n"
