"""The CLI as a subprocess against a real ``proconsul agent -dev``: KV round trips, snapshot
save/restore, members, catalog, services, raft peers, lock, watch with a handler, and bad input
refused in one line."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers.agentproc import Client, proconsul, start_agent, stop_agent


def cli(
    agent: Client, *args: str, stdin: str | None = None, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    environ.update({"CONSUL_HTTP_ADDR": agent.base, **env})
    return subprocess.run(
        [*proconsul(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )


def ok(agent: Client, *args: str, stdin: str | None = None) -> str:
    res = cli(agent, *args, stdin=stdin)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def one_line_error(res: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert res.returncode == code, (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    return res.stderr.strip()


def test_kv_round_trip(dev_agent: Client, tmp_path: Path) -> None:
    assert ok(dev_agent, "kv", "put", "cli/a", "one") == "Success! Data written to: cli/a\n"
    (tmp_path / "v").write_bytes(b"from\nfile")
    ok(dev_agent, "kv", "put", "-flags=9", "cli/b", f"@{tmp_path / 'v'}")
    ok(dev_agent, "kv", "put", "cli/c", "-", stdin="stdin value")
    assert ok(dev_agent, "kv", "get", "cli/a") == "one\n"
    assert ok(dev_agent, "kv", "get", "cli/b") == "from\nfile\n"
    assert ok(dev_agent, "kv", "get", "-recurse", "cli/") == (
        "cli/a:one\ncli/b:from\nfile\ncli/c:stdin value\n"
    )
    assert ok(dev_agent, "kv", "get", "-keys", "cli/") == "cli/a\ncli/b\ncli/c\n"
    detailed = ok(dev_agent, "kv", "get", "-detailed", "cli/b")
    assert "Flags            9\n" in detailed and "Session          -\n" in detailed

    exported = ok(dev_agent, "kv", "export", "cli/")
    entries = json.loads(exported)
    assert [e["key"] for e in entries] == ["cli/a", "cli/b", "cli/c"]
    assert entries[1] == {"key": "cli/b", "flags": 9, "value": "ZnJvbQpmaWxl"}

    assert ok(dev_agent, "kv", "delete", "-recurse", "cli/") == (
        "Success! Deleted keys with prefix: cli/\n"
    )
    res = cli(dev_agent, "kv", "get", "cli/a")
    assert one_line_error(res) == "Error! No key exists at: cli/a"

    dump = tmp_path / "export.json"
    dump.write_text(exported)
    assert ok(dev_agent, "kv", "import", f"@{dump}") == (
        "Imported: cli/a\nImported: cli/b\nImported: cli/c\n"
    )
    assert json.loads(ok(dev_agent, "kv", "export", "cli/")) == entries
    assert ok(dev_agent, "kv", "import", "-prefix=copy", "-", stdin=exported).count("\n") == 3
    assert ok(dev_agent, "kv", "get", "copy/cli/c") == "stdin value\n"

    # CAS: a stale index is refused, the current one accepted.
    index = dev_agent.get("/v1/kv/cli/a").json()[0]["ModifyIndex"]
    res = cli(dev_agent, "kv", "put", "-cas", f"-modify-index={index - 1}", "cli/a", "x")
    assert one_line_error(res) == "Error! Did not write to cli/a: CAS failed"
    ok(dev_agent, "kv", "put", "-cas", f"-modify-index={index}", "cli/a", "two")
    assert ok(dev_agent, "kv", "get", "cli/a") == "two\n"


def test_snapshot_save_restore(dev_agent: Client, tmp_path: Path) -> None:
    ok(dev_agent, "kv", "put", "snap/k", "before")
    node = {"Node": "snap-node", "Address": "10.1.2.3", "Service": {"Service": "snapsvc"}}
    assert dev_agent.put_json("/v1/catalog/register", node).status == 200
    path = tmp_path / "backup.snap"
    out = ok(dev_agent, "snapshot", "save", str(path))
    assert out.startswith("Saved and verified snapshot to index ")
    assert path.exists() and not Path(str(path) + ".unverified").exists()
    kv_before = dev_agent.get("/v1/kv/?recurse").json()
    nodes_before = sorted(n["Node"] for n in dev_agent.get("/v1/catalog/nodes").json())

    inspect = ok(dev_agent, "snapshot", "inspect", str(path))
    assert " ID " in inspect and " Index " in inspect and "KVS" in inspect
    details = ok(dev_agent, "snapshot", "inspect", "-kvdetails", "-kvfilter=snap", str(path))
    assert [line.split()[:2] for line in details.splitlines() if " snap/" in line] == [
        ["snap/k", "1"]
    ]

    ok(dev_agent, "kv", "put", "snap/k", "after")
    ok(dev_agent, "kv", "put", "snap/new", "x")
    dev_agent.put_json("/v1/catalog/deregister", {"Node": "snap-node"})
    assert ok(dev_agent, "snapshot", "restore", str(path)) == "Restored snapshot\n"
    assert ok(dev_agent, "kv", "get", "snap/k") == "before\n"
    assert dev_agent.get("/v1/kv/?recurse").json() == kv_before
    nodes_after = sorted(n["Node"] for n in dev_agent.get("/v1/catalog/nodes").json())
    assert nodes_after == nodes_before and "snap-node" in nodes_after
    assert "snapsvc" in ok(dev_agent, "catalog", "services").split()

    garbage = tmp_path / "garbage.snap"
    garbage.write_bytes(b"not a snapshot")
    res = cli(dev_agent, "snapshot", "restore", str(garbage))
    assert one_line_error(res).startswith("Error restoring snapshot: Unexpected response code: 400")
    res = cli(dev_agent, "snapshot", "inspect", str(garbage))
    assert one_line_error(res).startswith("Error extracting snapshot data:")


def test_members_catalog_and_peers(dev_agent: Client) -> None:
    self_ = dev_agent.get("/v1/agent/self").json()
    name = self_["Config"]["NodeName"]
    lines = ok(dev_agent, "members").splitlines()
    assert lines[0].split() == [
        "Node",
        "Address",
        "Status",
        "Type",
        "Build",
        "Protocol",
        "DC",
        "Partition",
        "Segment",
    ]
    row = lines[1].split()
    assert row[0] == name and row[2:4] == ["alive", "server"] and row[6] == "dc1"
    assert "role=consul" in ok(dev_agent, "members", "-detailed")
    assert cli(dev_agent, "members", "-status=failed").returncode == 2

    assert ok(dev_agent, "catalog", "datacenters") == "dc1\n"
    nodes = ok(dev_agent, "catalog", "nodes").splitlines()
    assert nodes[0].split() == ["Node", "ID", "Address", "DC"]
    assert any(line.split()[0] == name for line in nodes[1:])
    assert "consul" in ok(dev_agent, "catalog", "services").split()
    assert ok(dev_agent, "catalog", "nodes", "-service=consul").splitlines()[1].split()[0] == name

    peers = ok(dev_agent, "operator", "raft", "list-peers").splitlines()
    assert peers[0].split() == ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
    assert peers[1].split()[0] == name and peers[1].split()[3:] == ["leader", "true", "3"]
    conf = ok(dev_agent, "operator", "autopilot", "get-config")
    assert conf.startswith("CleanupDeadServers = ")
    assert "Healthy:" in ok(dev_agent, "operator", "autopilot", "state")
    info = ok(dev_agent, "info")
    assert "agent:\n" in info and "\tservices = " in info


def test_services_register_deregister(dev_agent: Client, tmp_path: Path) -> None:
    hcl = tmp_path / "web.hcl"
    hcl.write_text(
        'service {\n  name = "cliweb"\n  id = "cliweb1"\n  port = 8080\n'
        '  tags = ["v1"]\n  check {\n    ttl = "30s"\n  }\n}\n'
    )
    assert ok(dev_agent, "services", "register", str(hcl)) == "Registered service: cliweb\n"
    agent_services = dev_agent.get("/v1/agent/services").json()
    assert agent_services["cliweb1"]["Port"] == 8080
    deadline = time.monotonic() + 10
    while "cliweb" not in ok(dev_agent, "catalog", "services") and time.monotonic() < deadline:
        time.sleep(0.2)
    tagged = [line.split() for line in ok(dev_agent, "catalog", "services", "-tags").splitlines()]
    assert ["cliweb", "v1"] in tagged
    js = tmp_path / "api.json"
    js.write_text(json.dumps({"service": {"name": "cliapi", "port": 9000}}))
    ok(dev_agent, "services", "register", str(js))
    ok(dev_agent, "services", "register", "-name=cliflag", "-port=1", "-tag=t")
    assert {"cliweb1", "cliapi", "cliflag"} <= set(dev_agent.get("/v1/agent/services").json())
    assert ok(dev_agent, "services", "deregister", str(hcl)) == "Deregistered service: cliweb1\n"
    ok(dev_agent, "services", "deregister", "-id=cliapi")
    ok(dev_agent, "services", "deregister", "-id=cliflag")
    assert not {"cliweb1", "cliapi", "cliflag"} & set(dev_agent.get("/v1/agent/services").json())


def test_lock_runs_child_while_held(dev_agent: Client) -> None:
    res = cli(
        dev_agent,
        "lock",
        "cli-locks/one",
        f"{' '.join(proconsul())} kv get -detailed cli-locks/one/.lock",
    )
    assert res.returncode == 0, res.stderr
    held = {line[:17].strip(): line[17:] for line in res.stdout.splitlines()}
    assert held["Key"] == "cli-locks/one/.lock"
    assert held["Session"] != "-" and held["Flags"] == str(0x2DDCCBC058A50C18)
    # Released and cleaned up afterwards.
    assert dev_agent.get("/v1/kv/cli-locks/one/.lock").status == 404

    # A second holder times out while the first holds the lock.
    env = {**os.environ, "CONSUL_HTTP_ADDR": dev_agent.base}
    holder = subprocess.Popen(
        [*proconsul(), "lock", "cli-locks/two", "sleep 5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = dev_agent.get("/v1/kv/cli-locks/two/.lock")
            if reply.status == 200 and reply.json()[0].get("Session"):
                break
            time.sleep(0.1)
        res = cli(dev_agent, "lock", "-timeout=1s", "cli-locks/two", "echo never")
        assert one_line_error(res) == "Shutdown triggered or timeout during lock acquisition"
        assert "never" not in res.stdout
    finally:
        holder.terminate()
        holder.wait(timeout=15)
    res = cli(dev_agent, "lock", "-child-exit-code", "cli-locks/three", "exit 3")
    assert res.returncode == 2
    assert ok(dev_agent, "lock", "-n=2", "cli-locks/sem", "echo in") == "in\n"


def test_watch_runs_handler(dev_agent: Client, tmp_path: Path) -> None:
    out = tmp_path / "handler.out"
    ok(dev_agent, "kv", "put", "cli-watch/k", "v1")
    env = {**os.environ, "CONSUL_HTTP_ADDR": dev_agent.base}
    watcher = subprocess.Popen(
        [
            *proconsul(),
            "watch",
            "-type=key",
            "-key=cli-watch/k",
            f'cat >> {out}; echo " $CONSUL_INDEX" >> {out}',
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def lines() -> list[str]:
            return out.read_text().splitlines() if out.exists() else []

        deadline = time.monotonic() + 15
        while len(lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        ok(dev_agent, "kv", "put", "cli-watch/k", "v2")
        while len(lines()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        got = lines()
        assert len(got) == 4, got
        first, second = json.loads(got[0]), json.loads(got[2])
        assert first["Value"] == "djE=" and second["Value"] == "djI="
        assert int(got[3]) == second["ModifyIndex"]
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)

    # Without a handler: the current value as JSON, then exit.
    res = cli(dev_agent, "watch", "-type=key", "-key=cli-watch/k")
    assert res.returncode == 0 and json.loads(res.stdout)["Value"] == "djI="
    res = cli(dev_agent, "watch", "-type=services")
    assert "consul" in json.loads(res.stdout)


def test_event_and_maint(dev_agent: Client) -> None:
    out = ok(dev_agent, "event", "-name=cli-deploy", "payload")
    assert out.startswith("Event ID: ")
    events = json.loads(ok(dev_agent, "watch", "-type=event", "-name=cli-deploy"))
    assert events[-1]["ID"] == out.split()[-1]
    assert ok(dev_agent, "maint", "-enable", "-reason=cli test") == (
        "Node entered maintenance mode\n"
    )
    assert "Reason: cli test" in ok(dev_agent, "maint")
    assert ok(dev_agent, "maint", "-disable") == "Node left maintenance mode\n"
    assert ok(dev_agent, "maint") == ""
    assert len(ok(dev_agent, "keygen").strip()) == 44


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("kv", "get", "-bogus", "x"), "flag provided but not defined: -bogus"),
        (("kv", "put", "-flags=abc", "x"), 'invalid value "abc" for flag -flags: parse error'),
        (("kv", "get"), "Error! Missing KEY argument"),
        (("members", "-status"), "flag needs an argument: -status"),
        (("snapshot", "save"), "Missing FILE argument"),
        (("watch", "-type=nope"), "Unsupported watch type: nope"),
        (("lock", "only-prefix"), "Key prefix and child command must be specified"),
        (
            ("operator", "raft", "remove-peer"),
            "Error removing peer: an address or id is required for the peer to remove",
        ),
        (
            ("kv", "frob"),
            'proconsul kv: unknown subcommand "frob" (run "proconsul kv -h" for the list)',
        ),
    ],
)
def test_bad_input_one_line(dev_agent: Client, args: tuple[str, ...], message: str) -> None:
    assert one_line_error(cli(dev_agent, *args)) == message


def test_unreachable_agent_and_addresses(dev_agent: Client) -> None:
    res = cli(dev_agent, "members", CONSUL_HTTP_ADDR="127.0.0.1:1")
    assert one_line_error(res) == (
        'Error retrieving members: Get "http://127.0.0.1:1/v1/agent/members": '
        "dial tcp 127.0.0.1:1: connect: connection refused"
    )
    # -http-addr beats the environment; http:// and bare host:port both work.
    port = dev_agent.base.rsplit(":", 1)[1]
    res = cli(
        dev_agent,
        "catalog",
        "datacenters",
        f"-http-addr=127.0.0.1:{port}",
        CONSUL_HTTP_ADDR="127.0.0.1:1",
    )
    assert res.stdout == "dc1\n"
    res = cli(dev_agent, "kv", "get", "-datacenter=nowhere", "x")
    assert one_line_error(res).startswith("Error querying Consul agent: Unexpected response code")
    res = cli(dev_agent, "force-leave", "-prune", "no-such-node")
    assert one_line_error(res).startswith("Error force leaving: Unexpected response code: 500")
    res = cli(dev_agent, "keyring", "-list")  # gossip encryption is off: a multi-error
    assert one_line_error(res).startswith("error: Unexpected response code: 500")
    res = cli(dev_agent, "join", "127.0.0.1:1")
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == "Failed to join any nodes."
    res = cli(dev_agent, "kv", "get", "-h")
    assert res.returncode == 0 and res.stdout.startswith("Usage: proconsul kv get")


def test_token_and_datacenter_reach_the_agent(dev_agent: Client) -> None:
    """What the CLI sends, seen by a small HTTP server standing in for the agent."""
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("X-Consul-Token")))
            body = b"[]"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        addr = f"127.0.0.1:{server.server_address[1]}"
        res = cli(
            dev_agent, "catalog", "nodes", CONSUL_HTTP_ADDR=addr, CONSUL_HTTP_TOKEN="env-token"
        )
        assert res.returncode == 0, res.stderr
        res = cli(
            dev_agent,
            "catalog",
            "nodes",
            "-token=flag-token",
            "-datacenter=dc7",
            "-stale",
            CONSUL_HTTP_ADDR=f"http://{addr}",
        )
        assert res.returncode == 0, res.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [
        ("/v1/catalog/nodes", "env-token"),
        ("/v1/catalog/nodes?dc=dc7&stale", "flag-token"),
    ]


def test_monitor_streams_logs(dev_agent: Client) -> None:
    env = {**os.environ, "CONSUL_HTTP_ADDR": dev_agent.base}
    mon = subprocess.Popen(
        [*proconsul(), "monitor", "-log-level=debug"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        ok(dev_agent, "reload")
        assert mon.stdout is not None
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline and "reload" not in line:
            line = mon.stdout.readline()
        assert "reload" in line
    finally:
        mon.terminate()
        mon.wait(timeout=10)


def test_keyring_and_leave(tmp_path: Path) -> None:
    """On an agent of its own: gossip key rotation through the CLI, then a graceful leave."""
    key = subprocess.run([*proconsul(), "keygen"], capture_output=True, text=True).stdout.strip()
    proc, agent = start_agent(tmp_path / "agent.log", "-encrypt", key, "-dns-port", "-1")
    try:
        listed = ok(agent, "keyring", "-list")
        assert listed.startswith("==> Gathering installed encryption keys...\n")
        assert f"  {key} [1/1]" in listed
        new = ok(agent, "keygen").strip()
        assert ok(agent, "keyring", "-install", new) == (
            "==> Installing new gossip encryption key...\n"
        )
        ok(agent, "keyring", "-use", new)
        ok(agent, "keyring", "-remove", key)
        listed = ok(agent, "keyring", "-list")
        assert new in listed and key not in listed
        assert new in ok(agent, "keyring", "-list-primary")
        res = cli(agent, "keyring", "-remove", new)
        assert res.returncode == 1 and res.stderr.startswith("error: ")
        assert "\n" not in res.stderr.strip()
        assert ok(agent, "leave") == "Graceful leave complete\n"
        assert proc.wait(timeout=20) == 0
    finally:
        stop_agent(proc)


def test_snapshot_restore_into_fresh_agent(dev_agent: Client, tmp_path: Path) -> None:
    """Issue 5's acceptance: a snapshot restored into a fresh agent gives the same KV and
    catalog."""
    ok(dev_agent, "kv", "put", "fresh/a", "1")
    ok(dev_agent, "kv", "put", "-flags=3", "fresh/b", "2")
    node = {"Node": "fresh-node", "Address": "10.9.9.9", "Service": {"Service": "freshsvc"}}
    assert dev_agent.put_json("/v1/catalog/register", node).status == 200
    path = tmp_path / "fresh.snap"
    ok(dev_agent, "snapshot", "save", str(path))
    kv = dev_agent.get("/v1/kv/?recurse").json()
    services = dev_agent.get("/v1/catalog/services").json()
    proc, fresh = start_agent(tmp_path / "fresh.log", "-dns-port", "-1")
    try:
        assert fresh.get("/v1/kv/fresh/a").status == 404
        assert ok(fresh, "snapshot", "restore", str(path)) == "Restored snapshot\n"
        assert fresh.get("/v1/kv/?recurse").json() == kv
        assert ok(fresh, "kv", "get", "fresh/b") == "2\n"
        assert fresh.get("/v1/catalog/services").json() == services
        fresh_nodes = {n["Node"]: n["Address"] for n in fresh.get("/v1/catalog/nodes").json()}
        assert fresh_nodes["fresh-node"] == "10.9.9.9"
        assert ok(fresh, "catalog", "nodes", "-service=freshsvc").split()[4] == "fresh-node"
    finally:
        stop_agent(proc)


def test_watch_views(dev_agent: Client) -> None:
    entries = json.loads(ok(dev_agent, "watch", "-type=service", "-service=consul"))
    assert entries[0]["Service"]["Service"] == "consul"
    passing = json.loads(
        ok(dev_agent, "watch", "-type=service", "-service=consul", "-passingonly=true")
    )
    assert len(passing) == len(entries)
    checks = json.loads(ok(dev_agent, "watch", "-type=checks", "-state=passing"))
    assert all(c["Status"] == "passing" for c in checks)
    nodes = json.loads(ok(dev_agent, "watch", "-type=nodes"))
    assert nodes and "Node" in nodes[0]
    ok(dev_agent, "kv", "put", "cli-views/a", "x")
    pairs = json.loads(ok(dev_agent, "watch", "-type=keyprefix", "-prefix=cli-views/"))
    assert [p["Key"] for p in pairs] == ["cli-views/a"]


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_with_ca_file_and_server_name(dev_agent: Client, tmp_path: Path) -> None:
    """``https://`` addresses, ``-ca-file`` and ``-tls-server-name`` (the SNI and the name
    verified), against a stand-in TLS agent."""
    import ssl

    cert, key = _self_signed(tmp_path, "agent.proconsul.test")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'["dc-tls"]'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        addr = f"https://127.0.0.1:{server.server_address[1]}"
        res = cli(
            dev_agent,
            "catalog",
            "datacenters",
            f"-ca-file={cert}",
            "-tls-server-name=agent.proconsul.test",
            CONSUL_HTTP_ADDR=addr,
        )
        assert (res.returncode, res.stdout) == (0, "dc-tls\n"), res.stderr
        res = cli(
            dev_agent,
            "catalog",
            "datacenters",
            CONSUL_HTTP_ADDR=addr,
            CONSUL_CACERT=str(cert),
            CONSUL_TLS_SERVER_NAME="agent.proconsul.test",
        )
        assert res.stdout == "dc-tls\n", res.stderr
        # Without the server name the certificate does not match 127.0.0.1.
        res = cli(dev_agent, "catalog", "datacenters", f"-ca-file={cert}", CONSUL_HTTP_ADDR=addr)
        assert "certificate verify failed" in one_line_error(res)
    finally:
        server.shutdown()
        server.server_close()
