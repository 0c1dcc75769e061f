"""Configuration for mesh-gateway WAN federation (issue 6): Consul's refusals and ours (TLS
mandatory, no dots in node names, primary_gateways as host:port), each one line naming the
key and where it was set; the flags; unreadable TLS files refused before the agent starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.cli import _build_parser, main
from server.config import ConfigError, RuntimeConfig, load_runtime_config

WANFED = "'connect.enable_mesh_gateway_wan_federation = true'"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """Placeholder paths: the loader only checks the keys are set; files are read by
    ``load_runtime_config`` (see test_unreadable_tls_file_refused_before_start)."""
    return {
        "ca_file": str(tmp_path / "ca.pem"),
        "cert_file": str(tmp_path / "cert.pem"),
        "key_file": str(tmp_path / "key.pem"),
    }


def base(tmp_path: Path, tls_paths: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A valid wanfed server of the primary datacenter; ``extra`` replaces top-level keys."""
    cfg: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server": True,
        "node_name": "s1",
        "datacenter": "dc1",
        "primary_datacenter": "dc1",
        "connect": {"enabled": True, "enable_mesh_gateway_wan_federation": True},
        "tls": {"defaults": dict(tls_paths)},
    }
    cfg.update(extra)
    return cfg


def write(tmp_path: Path, content: dict[str, Any]) -> str:
    path = tmp_path / "wanfed.json"
    path.write_text(json.dumps(content))
    return str(path)


def validate(tmp_path: Path, content: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    """``proconsul validate`` on ``content``: "" when valid, else the one-line refusal."""
    path = write(tmp_path, content)
    code = main(["validate", "-quiet", path])
    err = capsys.readouterr().err
    if code == 0:
        assert err == ""
        return ""
    assert code == 1 and err.count("\n") == 1, err
    prefix = f"Config validation failed: config file {path}: "
    assert err.startswith(prefix), err
    return err[len(prefix) :].rstrip("\n")


def agent(*argv: str) -> RuntimeConfig:
    return load_runtime_config(_build_parser().parse_args(["agent", *argv]))


def test_valid_primary_and_secondary(
    tmp_path: Path, tls_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert validate(tmp_path, base(tmp_path, tls_files), capsys) == ""
    secondary = base(
        tmp_path,
        tls_files,
        datacenter="dc2",
        primary_gateways=["198.18.0.10:443", "gw.example.com:8443", "[2001:db8::1]:443"],
    )
    assert validate(tmp_path, secondary, capsys) == ""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"server": False},
            f"{WANFED} requires 'server = true'",
        ),
        (
            {"connect": {"enable_mesh_gateway_wan_federation": True}},
            "'connect.enable_mesh_gateway_wan_federation=true' requires 'connect.enabled=true'",
        ),
        (
            {"connect": {"enabled": False, "enable_mesh_gateway_wan_federation": True}},
            "'connect.enable_mesh_gateway_wan_federation=true' requires 'connect.enabled=true'",
        ),
        (
            {"node_name": "a/b"},
            f"{WANFED} requires that 'node_name' not contain '/' characters",
        ),
        (
            {"node_name": "s1.example.com"},
            f"{WANFED} requires that 'node_name' not contain '.' characters "
            '(WAN member names are <node>.<datacenter>): "s1.example.com"',
        ),
        (
            {"start_join_wan": ["198.18.0.1"]},
            f"'start_join_wan' is incompatible with {WANFED}",
        ),
        (
            {"retry_join_wan": ["198.18.0.1"]},
            f"'retry_join_wan' is incompatible with {WANFED}",
        ),
        (
            {"tls": {}},
            f"{WANFED} requires TLS for server RPC: set tls.defaults.ca_file (or ca_path), "
            "tls.defaults.cert_file, tls.defaults.key_file",
        ),
        (
            {"tls": {"defaults": {"ca_file": "/ca.pem", "cert_file": "/c.pem"}}},
            f"{WANFED} requires TLS for server RPC: set tls.defaults.key_file",
        ),
    ],
)
def test_wanfed_refusals(
    tmp_path: Path,
    tls_files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    expected: str,
) -> None:
    assert validate(tmp_path, base(tmp_path, tls_files, **change), capsys) == expected


def test_tls_from_legacy_keys_and_internal_rpc(
    tmp_path: Path, tls_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = base(tmp_path, tls_files, tls={}, **tls_files)
    assert validate(tmp_path, legacy, capsys) == ""
    internal = base(tmp_path, tls_files, tls={"internal_rpc": tls_files})
    assert validate(tmp_path, internal, capsys) == ""
    ca_path = dict(tls_files, ca_path=str(tmp_path))
    del ca_path["ca_file"]
    assert validate(tmp_path, base(tmp_path, tls_files, tls={"defaults": ca_path}), capsys) == ""


@pytest.mark.parametrize(
    ("gateways", "expected"),
    [
        (
            ["provider=aws tag_key=gw tag_value=1"],
            'primary_gateways: "provider=aws tag_key=gw tag_value=1": go-discover is not '
            "supported: list the gateways as host:port",
        ),
        (["gw.example.com"], 'primary_gateways: "gw.example.com": expected host:port'),
        (["2001:db8::1"], 'primary_gateways: "2001:db8::1": expected host:port'),
        ([":443"], 'primary_gateways: ":443": expected host:port'),
        (
            ["{{ GetPrivateIP }}:443"],
            'primary_gateways: "{{ GetPrivateIP }}:443": expected host:port',
        ),
        (["gw:http"], 'primary_gateways: "gw:http": invalid port "http"'),
        (["gw:0"], 'primary_gateways: "gw:0": invalid port "0"'),
        (["gw:65536"], 'primary_gateways: "gw:65536": invalid port "65536"'),
        (["198.18.0.1:443", "gw:"], 'primary_gateways: "gw:": invalid port ""'),
    ],
)
def test_primary_gateways_refusals(
    tmp_path: Path,
    tls_files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    gateways: list[str],
    expected: str,
) -> None:
    content = base(tmp_path, tls_files, datacenter="dc2", primary_gateways=gateways)
    assert validate(tmp_path, content, capsys) == expected


def test_primary_gateways_need_server_and_a_secondary(
    tmp_path: Path, tls_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    content = base(tmp_path, tls_files, primary_gateways=["gw:443"])
    assert (
        validate(tmp_path, content, capsys)
        == "'primary_gateways' should only be configured in a secondary datacenter"
    )
    content = {"data_dir": str(tmp_path), "datacenter": "dc2", "primary_gateways": ["gw:443"]}
    assert validate(tmp_path, content, capsys) == "'primary_gateways' requires 'server = true'"


def test_flags(tmp_path: Path, tls_files: dict[str, str]) -> None:
    """``-primary-gateway`` (repeatable), ``-retry-join-wan``, ``-join-wan``,
    ``-serf-wan-port``, ``-retry-interval-wan``; refusals name the flag."""
    cfg = agent(
        "-server",
        "-data-dir",
        str(tmp_path),
        "-datacenter",
        "dc2",
        "-hcl",
        'primary_datacenter = "dc1"',
        "-primary-gateway",
        "198.18.0.10:443",
        "-primary-gateway",
        "198.18.0.11:443",
        "-serf-wan-port",
        "8402",
        "-retry-interval-wan",
        "5s",
        "-retry-join-wan",
        "198.18.0.1",
        "-join-wan",
        "198.18.0.2",
    )
    assert cfg.primary_gateways == ("198.18.0.10:443", "198.18.0.11:443")
    assert cfg.serf_wan_port == 8402 and cfg.retry_interval_wan == 5.0
    assert cfg.retry_join_wan == ("198.18.0.1",) and cfg.start_join_wan == ("198.18.0.2",)

    path = write(tmp_path, base(tmp_path, tls_files))
    with pytest.raises(ConfigError) as err:
        agent("-config-file", path, "-join-wan", "198.18.0.2")
    assert str(err.value) == f"flag -join-wan: 'start_join_wan' is incompatible with {WANFED}"
    with pytest.raises(ConfigError) as err:
        agent("-config-file", path, "-datacenter", "dc2", "-primary-gateway", "provider=k8s")
    assert str(err.value).startswith(
        'flag -primary-gateway: primary_gateways: "provider=k8s": go-discover is not supported'
    )


def test_unreadable_tls_file_refused_before_start(
    tmp_path: Path, tls_files: dict[str, str]
) -> None:
    """The loader checks keys; ``load_runtime_config`` (what ``proconsul agent`` runs) reads
    the files and names the key of one it cannot read."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text(
            "-----BEGIN CERTIFICATE-----\n" if name != "key.pem" else "-----BEGIN PRIVATE KEY-----"
        )
    path = write(tmp_path, base(tmp_path, tls_files))
    agent("-config-file", path)  # all readable
    (tmp_path / "cert.pem").unlink()
    with pytest.raises(ConfigError) as err:
        agent("-config-file", path)
    assert str(err.value).startswith(
        f"config file {path}: tls.defaults.cert_file: cannot read '{tmp_path / 'cert.pem'}'"
    )
