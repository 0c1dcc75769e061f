"""``proconsul agent`` with config files, as real processes: the py-consul suite's dev-agent
configs start it; HCL directories and flags land in the running agent; a bad config is
refused with exit status 1 and one line on stderr; ``proconsul validate``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.agentproc import proconsul, start_agent, stop_agent

pytestmark = pytest.mark.integration

SUITE_DEV = {
    "ports": {"https": -1, "dns": -1, "grpc_tls": -1},
    "performance": {"raft_multiplier": 1},
    "enable_script_checks": True,
}
SUITE_ACL = {
    "primary_datacenter": "dc1",
    "acl": {"enabled": True, "tokens": {"initial_management": "8f7c2b8e-root"}},
}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*proconsul(), *argv], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("config", [SUITE_DEV, SUITE_ACL], ids=["dev", "acl"])
def test_agent_starts_with_the_suite_config(tmp_path: Path, config: dict[str, object]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    proc, client = start_agent(tmp_path / "agent.log", "-config-file", str(path))
    try:
        reply = client.get("/v1/agent/self")
        assert reply.status in (200, 403)  # 403 once ACLs are enforced without a token
        assert client.get("/v1/status/leader").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_agent(proc)


def test_agent_reads_an_hcl_config_dir_and_flags(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "10-base.hcl").write_text('datacenter = "east"\nnode_name = "from-file"\n')
    (conf / "20-override.json").write_text(json.dumps({"node_name": "from-dir-json"}))
    proc, client = start_agent(
        tmp_path / "agent.log", "-config-dir", str(conf), "--node", "from-flag"
    )
    try:
        nodes = client.get("/v1/catalog/nodes").json()
        leader_node = client.get("/v1/status/leader")
        assert leader_node.status == 200
        self_info = client.get("/v1/agent/self")
        if self_info.status == 200:
            cfg = self_info.json()["Config"]
            assert cfg["Datacenter"] == "east"
            assert cfg["NodeName"] == "from-flag"
        else:  # /v1/agent/self not served yet: the catalog shows the node name
            assert any(n.get("Node") == "from-flag" for n in nodes)
    finally:
        stop_agent(proc)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.json", '{"servr": true}', 'unknown key "servr"'),
        ("bad.hcl", "ports {\n  http = -5\n}\n", "ports.http: invalid port -5"),
        ("bad.json", '{"bootstrap_expect": 3}', "'bootstrap_expect > 0' not allowed in dev mode"),
        ("bad.json", '{"session_ttl_min": "ten"}', "session_ttl_min: invalid duration"),
    ],
)
def test_agent_refuses_a_bad_config(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = run("agent", "-dev", "-http-port", "0", "-server-port", "0", "-config-file", str(path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"proconsul agent: config file {path}: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_agent_refuses_a_bad_flag(tmp_path: Path) -> None:
    result = run("agent", "-dev", "-http-port", "eighty")
    assert result.returncode == 1
    assert (
        result.stderr == 'proconsul agent: flag -http-port: expected a whole number, got "eighty"\n'
    )


def test_validate_command(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SUITE_DEV))
    result = run("validate", str(good))
    assert (result.returncode, result.stdout) == (0, "Configuration is valid!\n")
    bad = tmp_path / "bad.hcl"
    bad.write_text('datacenter = "a b"\n')
    result = run("validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Config validation failed: config file {bad}: datacenter")
    assert result.stderr.count("\n") == 1
