"""``connect envoy`` / ``connect mesh-gateway`` flag handling (no gateway is started: every
case here is refused before, or stops at the config)."""

from __future__ import annotations

import io

import pytest

from server.clicmd import dispatch
from server.clicmd.base import COMMANDS, Context
from server.clicmd.connect import config_from_flags
from server.gateway.config import DataPath
from server.gateway.routes import Address


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = dispatch(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["connect", "envoy", "-gateway=ingress"], '-gateway="ingress" is not supported'),
        (["connect", "envoy", "-register"], "-gateway=mesh is required"),
        (["connect", "envoy", "-sidecar-for", "web"], "-sidecar-for is not supported"),
        (["connect", "envoy", "-gateway=mesh", "-bootstrap"], "-bootstrap is not supported"),
        (["connect", "mesh-gateway", "-address", "nope"], "invalid -address"),
        (["connect", "mesh-gateway", "-data-path", "fast"], '-data-path must be "splice"'),
        (["connect", "mesh-gateway", "-max-connections", "0"], "-max-connections must be"),
        (["connect", "mesh-gateway", "-bind-address", "x=1.2.3.4"], "invalid -bind-address x"),
        (["connect", "mesh-gateway", "-gateway=mesh"], "flag provided but not defined: -gateway"),
    ],
)
def test_refusals_exit_1_with_one_line(argv: list[str], message: str) -> None:
    code, out, err = run(*argv)
    assert code == 1
    assert message in err and err.count("\n") == 1, err
    assert out == ""


def test_help_and_group() -> None:
    code, out, _ = run("connect", "envoy", "-h")
    assert code == 0 and "-expose-servers" in out and "-wan-address" in out
    code, out, _ = run("connect", "-h")
    assert code == 0 and "mesh-gateway" in out and "envoy" in out


def test_config_from_flags_consul_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    cmd = COMMANDS["connect envoy"]()
    fs = cmd.flagset()
    args = fs.parse(
        [
            "--gateway=mesh",
            "-register",
            "-service",
            "gw-1",
            "-proxy-id",
            "gw-1-a",
            "-address",
            "10.0.0.1:8443",
            "--wan-address=203.0.113.1:443",
            "-expose-servers",
            "-token",
            "secret",
            "-admin-bind",
            "127.0.0.1:0",
            "-bind-address",
            "lan=0.0.0.0:8443",
            "-data-path=protocol",
            "-idle-timeout=90s",
            "-http-addr",
            "https://127.0.0.1:8501",
        ]
    )
    cfg = config_from_flags(Context(fs, args), fs["gateway"])
    assert cfg.service == "gw-1" and cfg.register and cfg.expose_servers
    assert cfg.proxy_id == "gw-1-a" and cfg.service_id == "gw-1-a"
    assert cfg.lan == Address("10.0.0.1", 8443) and cfg.wan == Address("203.0.113.1", 443)
    assert cfg.admin_bind == Address("127.0.0.1", 0)
    assert cfg.bind_addresses == {"lan": Address("0.0.0.0", 8443)}
    assert cfg.data_path is DataPath.PROTOCOL and cfg.idle_timeout == 90.0
    assert cfg.agent is not None
    assert cfg.agent.base == "https://127.0.0.1:8501" and cfg.agent.token == "secret"


def test_http_addr_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.9:18500")
    fs = COMMANDS["connect mesh-gateway"]().flagset()
    args = fs.parse([])
    cfg = config_from_flags(Context(fs, args), "mesh")
    assert cfg.agent is not None and cfg.agent.base == "http://127.0.0.9:18500"
    assert cfg.lan is None and cfg.wan is None and not cfg.register
    assert cfg.service_id == "mesh-gateway"  # Consul's default ID: the service name
