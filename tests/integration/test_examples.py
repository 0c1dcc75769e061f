"""examples/federation/: the Docker Compose file, its configs and its scripts, checked without
Docker (no daemon is needed).

- ``docker-compose config`` (Debian's ``docker-compose``, installed by ``make test`` when
  root) accepts the compose file; the topology it describes is asserted on the parsed result:
  the per-datacenter networks are internal, no server is on another datacenter's network
  (dc2's servers have an egress address on ``wan`` to dial the primary's gateways, as Consul's
  secondaries must), each mesh gateway is on its datacenter's network and on ``wan``, every
  address is static and inside its network's subnet, and dc2's ``primary_gateways`` are
  exactly dc1's gateways' WAN addresses.
- Every HCL config file of the example passes ``proconsul validate`` together with what each
  server adds through ``CONSUL_LOCAL_CONFIG``, with certificates made by the example's own
  ``gen-certs.sh`` in a temporary directory (``/consul/certs`` rewritten to it).
- The image's entry point writes ``CONSUL_LOCAL_CONFIG`` to ``local.json`` and runs proconsul
  verbs, as Consul's image does.
- ``loopback.py`` (``make demo``) federates two datacenters through four gateways on
  127.0.0.0/8 and stops every process on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from helpers.agentproc import proconsul

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "federation"
COMPOSE = EXAMPLE / "docker-compose.yml"
DCS = ("dc1", "dc2")


def _compose_exe() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.geteuid() != 0:
            pytest.skip("docker-compose is not installed (`make test` installs it when root)")
        pytest.fail("docker-compose is not installed: `make test` installs it (apt-get) as root")
    return exe


def _yaml_to_json(text: str, compose_exe: str) -> Any:
    """Parse YAML with PyYAML: ours if installed, else the interpreter docker-compose runs on
    (Debian's docker-compose is a Python program that depends on PyYAML)."""
    try:
        import yaml  # type: ignore[import-untyped]

        return yaml.safe_load(text)
    except ImportError:
        pass
    with open(compose_exe, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if not first.startswith("#!") or "python" not in first:
        pytest.skip("no PyYAML to parse `docker-compose config` output")
    interp = first[2:].split()
    res = subprocess.run(
        [*interp, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    exe = _compose_exe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    res = subprocess.run(
        [exe, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    parsed: dict[str, Any] = _yaml_to_json(res.stdout, exe)
    return parsed


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _servers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if _command(s)[:1] == ["agent"]}


def _gateways(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if _command(s)[:1] == ["connect"]}


def _flag(cmd: list[str], name: str) -> str:
    for i, arg in enumerate(cmd):
        if arg == name:
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {cmd}")


def _local_config(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    local: dict[str, Any] = json.loads(env["CONSUL_LOCAL_CONFIG"])
    return local


def _dc_of(name: str) -> str:
    dc = name.split("-", 1)[0]
    assert dc in DCS, name
    return dc


def test_networks_internal_per_datacenter(compose: dict[str, Any]) -> None:
    nets = compose["networks"]
    assert set(nets) == {"dc1", "dc2", "wan"}
    assert nets["dc1"].get("internal") is True
    assert nets["dc2"].get("internal") is True
    assert not nets["wan"].get("internal", False)
    subnets = [ip_network(n["ipam"]["config"][0]["subnet"]) for n in nets.values()]
    for s in subnets:
        assert s.subnet_of(ip_network("198.18.0.0/15")), s
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1 :])


def test_servers_only_on_their_datacenter_network(compose: dict[str, Any]) -> None:
    servers = _servers(compose)
    assert sorted(servers) == [f"{dc}-server{i}" for dc in DCS for i in (1, 2, 3)]
    subnet = {
        n: ip_network(v["ipam"]["config"][0]["subnet"]) for n, v in compose["networks"].items()
    }
    for name, svc in servers.items():
        dc = _dc_of(name)
        # A secondary's servers also have an egress address on wan: like Consul's, they dial
        # the primary's gateways themselves (primary_gateways, and the leader's fallback).
        # The primary's servers are on their own network only.
        assert set(svc["networks"]) == ({dc} if dc == "dc1" else {dc, "wan"}), name
        ip = ip_address(svc["networks"][dc]["ipv4_address"])
        assert ip in subnet[dc]
        for net, attach in svc["networks"].items():
            assert ip_address(attach["ipv4_address"]) in subnet[net]
        local = _local_config(svc)
        assert local["node_name"] == name
        assert "." not in name  # wanfed: node names must not contain dots
        assert local["bind_addr"] == str(ip)
        assert any(f"config/{dc}.hcl" in str(v) for v in svc["volumes"]), svc["volumes"]
        assert svc["depends_on"]["certs"]["condition"] == "service_completed_successfully"


def test_gateways_on_datacenter_network_and_wan(compose: dict[str, Any]) -> None:
    gateways = _gateways(compose)
    assert sorted(gateways) == [f"{dc}-gateway{i}" for dc in DCS for i in (1, 2)]
    subnet = {
        n: ip_network(v["ipam"]["config"][0]["subnet"]) for n, v in compose["networks"].items()
    }
    server_ips = {s["networks"][_dc_of(n)]["ipv4_address"] for n, s in _servers(compose).items()}
    for name, svc in gateways.items():
        dc = _dc_of(name)
        assert set(svc["networks"]) == {dc, "wan"}, name
        lan_ip = svc["networks"][dc]["ipv4_address"]
        wan_ip = svc["networks"]["wan"]["ipv4_address"]
        assert ip_address(lan_ip) in subnet[dc]
        assert ip_address(wan_ip) in subnet["wan"]
        cmd = _command(svc)
        assert cmd[:2] == ["connect", "envoy"]
        assert "-gateway=mesh" in cmd and "-register" in cmd and "-expose-servers" in cmd
        assert _flag(cmd, "-service") == "mesh-gateway"
        assert _flag(cmd, "-address").rsplit(":", 1)[0] == lan_ip
        assert _flag(cmd, "-wan-address").rsplit(":", 1)[0] == wan_ip
        # The gateway's agent is a server of its own datacenter, reachable on the dc network.
        http_host = _flag(cmd, "-http-addr").split("//")[-1].rsplit(":", 1)[0]
        assert http_host in server_ips and ip_address(http_host) in subnet[dc]


def test_all_addresses_unique(compose: dict[str, Any]) -> None:
    seen: list[str] = []
    for svc in compose["services"].values():
        for net in (svc.get("networks") or {}).values():
            seen.append(net["ipv4_address"])
    assert len(seen) == len(set(seen)) == 6 + 3 + 4 * 2


def _hcl(path: Path) -> dict[str, Any]:
    from server.config.load import Source, parse_source

    return parse_source(Source(str(path), "hcl", path.read_text()))


def test_primary_gateways_are_the_primarys_gateway_wan_addresses(
    compose: dict[str, Any],
) -> None:
    dc1 = _hcl(EXAMPLE / "config" / "dc1.hcl")
    dc2 = _hcl(EXAMPLE / "config" / "dc2.hcl")
    assert dc1["primary_datacenter"] == dc2["primary_datacenter"] == "dc1"
    assert "primary_gateways" not in dc1
    wan = sorted(
        _flag(_command(s), "-wan-address")
        for n, s in _gateways(compose).items()
        if _dc_of(n) == "dc1"
    )
    assert sorted(dc2["primary_gateways"]) == wan
    for cfg in (dc1, dc2):
        assert cfg["connect"]["enable_mesh_gateway_wan_federation"] is True
        assert "retry_join_wan" not in cfg
    # Every server of a datacenter is in its retry_join list.
    for cfg, dc in ((dc1, "dc1"), (dc2, "dc2")):
        ips = {
            s["networks"][dc]["ipv4_address"]
            for n, s in _servers(compose).items()
            if _dc_of(n) == dc
        }
        assert set(cfg["retry_join"]) == ips


def _env_without_consul() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PROCONSUL"] = " ".join(proconsul())
    return env


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("certs")
    specs = [f"{dc}:{dc}-server{i}" for dc in DCS for i in (1, 2, 3)]
    snapshots = []
    for _ in range(2):  # a second run (a restarted one-shot container) must change nothing
        res = subprocess.run(
            ["sh", str(EXAMPLE / "gen-certs.sh"), str(out), *specs],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env_without_consul(),
        )
        assert res.returncode == 0, (res.stdout, res.stderr)
        snapshots.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert snapshots[0] == snapshots[1]
    yield out


def test_gen_certs_server_names(certs: Path) -> None:
    for dc in DCS:
        for i in (1, 2, 3):
            node = f"{dc}-server{i}"
            cert = x509.load_pem_x509_certificate((certs / f"{node}.pem").read_bytes())
            names = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
            assert f"server.{dc}.consul" in names
            assert f"{node}.server.{dc}.consul" in names
            assert (certs / f"{node}-key.pem").exists()
    # The CLI's numbered names were all renamed to the node names.
    assert [p.name for p in certs.iterdir() if "server-consul" in p.name] == []


def test_every_hcl_file_validates(compose: dict[str, Any], certs: Path, tmp_path: Path) -> None:
    """Each server's config as its container sees it: the mounted HCL files (certificate
    paths pointed at ``certs``) plus its CONSUL_LOCAL_CONFIG as local.json."""
    used: set[str] = set()
    for name, svc in _servers(compose).items():
        conf = tmp_path / name
        conf.mkdir()
        for vol in svc["volumes"]:
            src, target = (
                (vol["source"], vol["target"]) if isinstance(vol, dict) else vol.split(":")[:2]
            )
            if not target.startswith("/consul/config/"):
                continue
            text = Path(src).read_text().replace("/consul/certs", str(certs))
            (conf / Path(target).name).write_text(text)
            used.add(Path(src).name)
        local = json.dumps(_local_config(svc)).replace("/consul/certs", str(certs))
        (conf / "local.json").write_text(local)
        res = subprocess.run(
            [*proconsul(), "validate", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env_without_consul(),
        )
        assert res.returncode == 0, (name, res.stdout, res.stderr)
        assert res.stdout == "Configuration is valid!\n"
    assert used == {p.name for p in (EXAMPLE / "config").glob("*.hcl")}


def test_entrypoint_writes_local_config_and_runs_proconsul(tmp_path: Path) -> None:
    env = _env_without_consul()
    env["CONSUL_CONFIG_DIR"] = str(tmp_path / "config")
    env["CONSUL_DATA_DIR"] = str(tmp_path / "data")
    env["CONSUL_LOCAL_CONFIG"] = '{"datacenter": "dc7", "server": true}'
    # The entry point runs `proconsul`: put one on PATH that runs ours.
    shim = tmp_path / "bin" / "proconsul"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\nexec " + " ".join(proconsul()) + ' "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = f"{shim.parent}{os.pathsep}{env['PATH']}"
    entry = str(EXAMPLE / "docker-entrypoint.sh")
    res = subprocess.run(
        ["sh", entry, "validate", str(tmp_path / "config")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "Configuration is valid!\n"
    local = json.loads((tmp_path / "config" / "local.json").read_text())
    assert local == {"datacenter": "dc7", "server": True}
    # A program on PATH runs as it is.
    res = subprocess.run(
        ["sh", entry, "sh", "-c", "echo plain"], capture_output=True, text=True, env=env
    )
    assert (res.returncode, res.stdout) == (0, "plain\n")


def test_loopback_demo_federates_and_cleans_up(tmp_path: Path) -> None:
    """`make demo`'s script, one server per datacenter: it reports federation (both
    datacenters listed, a ``?dc=dc2`` KV write from dc1 read back in dc2), stays up, and on
    SIGINT (Ctrl-C) stops every process it started: their ports are free again."""
    script = EXAMPLE / "loopback.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--servers", "1", "--timeout", "60", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env_without_consul(),
    )
    out: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        text = "".join(out)
        assert "federated in" in text, text
        assert "curl -s '127.0.1.1:8500/v1/health/service/consul?dc=dc2'" in text
        # Still serving while in the foreground.
        with urllib.request.urlopen("http://127.0.1.1:8500/v1/kv/demo/hello?raw&dc=dc2") as r:
            assert r.read() == b"from dc1"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(out) + rest
    assert "stopped 6 processes" in rest
    for ip, port in [("127.0.1.1", 8500), ("127.0.1.1", 8300), ("127.0.2.1", 8501)] + [
        (f"127.0.3.{n}", 8443 + i) for i, n in enumerate((11, 12, 21, 22))
    ]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            s.bind((ip, port))  # nothing of the demo is left listening
