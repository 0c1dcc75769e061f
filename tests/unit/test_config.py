"""Agent configuration: flags, JSON/HCL files and directories, Consul's merge order, and every
refusal (one line naming the key and the file or flag)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.cli import _build_parser, main
from server.config import ConfigError, LoadOptions, RuntimeConfig, load, load_runtime_config
from server.config.flags import AGENT_FLAGS

SUITE_DEV = {
    "ports": {"https": -1, "dns": -1, "grpc_tls": -1},
    "performance": {"raft_multiplier": 1},
    "enable_script_checks": True,
}
SUITE_ACL = {
    "primary_datacenter": "dc1",
    "acl": {"enabled": True, "tokens": {"initial_management": "root-token"}},
}


def write(tmp: Path, name: str, content: Any) -> str:
    path = tmp / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def agent(*argv: str) -> RuntimeConfig:
    args = _build_parser().parse_args(["agent", *argv])
    return load_runtime_config(args)


def refused(*argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        agent(*argv)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- dev and the suite


def test_dev_defaults() -> None:
    c = agent("-dev")
    assert c.dev and c.server and c.bootstrap
    assert c.bind_addr == "127.0.0.1"
    assert c.raft_multiplier == 1
    assert c.ui
    assert c.node_name  # the hostname
    assert c.datacenter == "dc1"
    assert c.http_port == 8500 and c.dns_port == 8600 and c.server_port == 8300
    assert c.client_addr == "127.0.0.1"


def test_dev_node_name_is_hostname() -> None:
    c = load(LoadOptions(dev=True), hostname="box-1")
    assert c.node_name == "box-1"


def test_suite_dev_config_starts_unchanged(tmp_path: Path) -> None:
    cfg = write(tmp_path, "dev.json", SUITE_DEV)
    c = agent("-dev", "-http-port", "18500", "-server-port", "0", "-config-file", cfg)
    assert c.https_port == -1 and c.dns_port == -1 and c.grpc_tls_port == -1
    assert c.enable_script_checks and c.enable_local_script_checks
    assert c.http_port == 18500
    assert c.server_port > 0  # 0: a free port was picked
    assert c.config_files == (cfg,)


def test_suite_acl_config(tmp_path: Path) -> None:
    cfg = write(tmp_path, "acl.json", SUITE_ACL)
    c = agent("-dev", "-config-file", cfg)
    assert c.primary_datacenter == "dc1"
    assert c.acl["enabled"] is True
    assert c.acl["tokens"]["initial_management"] == "root-token"


# --------------------------------------------------------------------------- formats


HCL_FULL = """
datacenter = "east-1"
node_name = "n1"
server = true
bootstrap_expect = 3
data_dir = "/tmp/x"
retry_join = ["10.0.0.1", "10.0.0.2"]
session_ttl_min = "30s"
ports {
  http = 8501
  dns = -1
}
performance {
  raft_multiplier = 2
  rpc_hold_timeout = "9s"
}
acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = "t"
  }
}
node_meta {
  rack = "r1"
}
service {
  name = "web"
  port = 80
  check {
    http = "http://localhost/health"
    interval = "10s"
  }
}
service {
  name = "db"
}
"""

JSON_FULL = {
    "datacenter": "east-1",
    "node_name": "n1",
    "server": True,
    "bootstrap_expect": 3,
    "data_dir": "/tmp/x",
    "retry_join": ["10.0.0.1", "10.0.0.2"],
    "session_ttl_min": "30s",
    "ports": {"http": 8501, "dns": -1},
    "performance": {"raft_multiplier": 2, "rpc_hold_timeout": "9s"},
    "acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": "t"}},
    "node_meta": {"rack": "r1"},
    "services": [
        {
            "name": "web",
            "port": 80,
            "check": {"http": "http://localhost/health", "interval": "10s"},
        },
        {"name": "db"},
    ],
}


def test_hcl_and_json_give_the_same_config(tmp_path: Path) -> None:
    h = agent("-config-file", write(tmp_path, "a.hcl", HCL_FULL))
    j = agent("-config-file", write(tmp_path, "a.json", JSON_FULL))
    for c in (h, j):
        assert c.datacenter == "east-1" and c.node_name == "n1"
        assert c.server and c.bootstrap_expect == 3 and not c.dev
        assert c.retry_join == ("10.0.0.1", "10.0.0.2")
        assert c.session_ttl_min == 30.0
        assert c.http_port == 8501 and c.dns_port == -1
        assert c.raft_multiplier == 2 and c.rpc_hold_timeout == 9.0
        assert c.acl == {
            "enabled": True,
            "default_policy": "deny",
            "tokens": {"initial_management": "t"},
        }
        assert c.node_meta == {"rack": "r1"}
        assert [s["name"] for s in c.services] == ["web", "db"]
        assert c.services[0]["check"]["interval"] == "10s"


def test_hcl_services_block_stays_a_list(tmp_path: Path) -> None:
    c = agent("-dev", "-config-file", write(tmp_path, "s.hcl", 'services {\n name = "a"\n}\n'))
    assert c.services == ({"name": "a"},)


def test_keys_match_case_insensitively(tmp_path: Path) -> None:
    c = agent(
        "-dev",
        "-config-file",
        write(tmp_path, "c.json", {"Datacenter": "x", "Ports": {"HTTP": 1234}}),
    )
    assert c.datacenter == "x" and c.http_port == 1234


def test_datacenter_is_lowercased(tmp_path: Path) -> None:
    assert agent("-dev", "-datacenter", "EAST").datacenter == "east"


def test_config_format_for_other_extensions(tmp_path: Path) -> None:
    path = write(tmp_path, "agent.conf", 'datacenter = "zz"\n')
    msg = refused("-dev", "-config-file", path)
    assert msg.startswith(f"config file {path}: unknown extension")
    assert agent("-dev", "-config-format", "hcl", "-config-file", path).datacenter == "zz"
    assert "-config-format must be either 'hcl' or 'json'" in refused(
        "-dev", "-config-format", "yaml", "-config-file", path
    )


def test_hcl_flag_fragments() -> None:
    c = agent("-dev", "-hcl", 'datacenter = "h1"', "-hcl", "ports {\n dns = -1\n}")
    assert c.datacenter == "h1" and c.dns_port == -1


def test_durations(tmp_path: Path) -> None:
    c = agent(
        "-dev",
        "-config-file",
        write(tmp_path, "d.json", {"check_update_interval": "1m30s", "retry_interval": "250ms"}),
    )
    assert c.check_update_interval == 90.0 and c.retry_interval == 0.25


def test_deprecated_keys_move_to_their_new_place(tmp_path: Path) -> None:
    cfg = {
        "acl_master_token": "m",
        "acl_datacenter": "dc9",
        "acl_default_policy": "deny",
        "verify_incoming": True,
        "ca_file": "/ca.pem",
        "acl": {"tokens": {"agent_master": "r"}},
    }
    c = agent("-dev", "-config-file", write(tmp_path, "old.json", cfg))
    assert c.acl["tokens"] == {"initial_management": "m", "agent_recovery": "r"}
    assert c.acl["default_policy"] == "deny"
    assert c.primary_datacenter == "dc9"
    assert c.tls["defaults"] == {"verify_incoming": True, "ca_file": "/ca.pem"}


def test_bootstrap_expect_one_means_bootstrap(tmp_path: Path) -> None:
    c = agent("-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path))
    assert c.bootstrap and c.bootstrap_expect == 0


def test_port_zero_picks_a_free_port_and_minus_one_disables() -> None:
    c = agent("-dev", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "-1")
    assert c.http_port > 0 and c.serf_lan_port > 0
    assert c.dns_port == -1


# --------------------------------------------------------------------------- merging


def test_merge_order_files_then_hcl_then_flags(tmp_path: Path) -> None:
    a = write(tmp_path, "a.json", {"datacenter": "a", "node_name": "na", "retry_join": ["1"]})
    b = write(tmp_path, "b.json", {"datacenter": "b", "retry_join": ["2"], "node_meta": {"x": "1"}})
    c = agent(
        "-dev",
        "-config-file",
        a,
        "-config-file",
        b,
        "-hcl",
        'node_meta = { y = "2" }',
        "-retry-join",
        "3",
        "-node",
        "flagnode",
    )
    assert c.datacenter == "b"  # the later file wins
    assert c.node_name == "flagnode"  # flags win over files
    assert c.retry_join == ("1", "2", "3")  # lists append, as in Consul
    assert c.node_meta == {"x": "1", "y": "2"}  # maps merge key by key
    assert c.sources["datacenter"] == f"config file {b}"
    assert c.sources["node_name"] == "flag -node"


def test_config_dir_lexical_order_skips_other_files(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    write(d, "20-b.hcl", 'datacenter = "second"\nretry_join = ["b"]\n')
    write(d, "10-a.json", {"datacenter": "first", "retry_join": ["a"]})
    write(d, "README.md", "not config")
    (d / "sub.json").mkdir()
    c = agent("-dev", "-config-dir", str(d))
    assert c.datacenter == "second"
    assert c.retry_join == ("a", "b")
    assert c.config_files == (str(d / "10-a.json"), str(d / "20-b.hcl"))


def test_config_file_and_dir_in_command_line_order(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    write(d, "x.json", {"datacenter": "fromdir"})
    f = write(tmp_path, "f.json", {"datacenter": "fromfile"})
    assert agent("-dev", "-config-dir", str(d), "-config-file", f).datacenter == "fromfile"
    assert agent("-dev", "-config-file", f, "-config-dir", str(d)).datacenter == "fromdir"


# --------------------------------------------------------------------------- flags


def test_every_flag_single_and_double_dash(tmp_path: Path) -> None:
    parser = _build_parser()
    for flag in AGENT_FLAGS:
        for dash in ("-", "--"):
            argv = ["agent", f"{dash}{flag.name}"]
            if flag.kind != "bool":
                argv.append("1")
            parser.parse_args(argv)  # no SystemExit


def test_bool_flags_take_go_forms() -> None:
    assert agent("-dev", "-ui=false").ui is False
    assert agent("-dev=true").dev is True
    assert "flag -ui: invalid boolean value" in refused("-dev", "-ui=maybe")


def test_node_meta_flag(tmp_path: Path) -> None:
    c = agent("-dev", "-node-meta", "rack:r1", "--node-meta", "zone:a:b")
    assert c.node_meta == {"rack": "r1", "zone": "a:b"}


def test_flag_values_reach_the_config(tmp_path: Path) -> None:
    c = agent(
        "-server",
        "-bootstrap",
        "-data-dir",
        str(tmp_path),
        "-node",
        "s1",
        "-node-id",
        "AAAAAAAA-0000-0000-0000-000000000001",
        "-bind",
        "127.0.0.2",
        "-advertise",
        "10.1.1.1",
        "-advertise-wan",
        "10.2.2.2",
        "-client",
        "127.0.0.3",
        "-join",
        "j1",
        "-retry-join-wan",
        "w1",
        "-join-wan",
        "w2",
        "-retry-interval",
        "5s",
        "-retry-max",
        "7",
        "-https-port",
        "8501",
        "-grpc-port",
        "8502",
        "-serf-wan-port",
        "8402",
        "-encrypt",
        "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
        "-log-level",
        "DEBUG",
        "-log-json",
        "-pid-file",
        str(tmp_path / "pid"),
        "-domain",
        "example",
        "-alt-domain",
        "alt.example",
        "-rejoin",
        "-raft-protocol",
        "3",
        "-enable-local-script-checks",
        "-ui",
    )
    assert c.node_name == "s1" and c.node_id == "aaaaaaaa-0000-0000-0000-000000000001"
    assert c.server and c.bootstrap and c.data_dir == str(tmp_path)
    assert (c.bind_addr, c.advertise_addr, c.advertise_addr_wan) == (
        "127.0.0.2",
        "10.1.1.1",
        "10.2.2.2",
    )
    assert c.client_addr == "127.0.0.3"
    assert c.start_join == ("j1",) and c.retry_join_wan == ("w1",) and c.start_join_wan == ("w2",)
    assert c.retry_interval == 5.0 and c.retry_max == 7
    assert (c.https_port, c.grpc_port, c.serf_wan_port) == (8501, 8502, 8402)
    assert c.encrypt.startswith("pUqJ")
    assert c.log_level == "debug" and c.log_json
    assert c.pid_file == str(tmp_path / "pid")
    assert c.domain == "example." and c.alt_domain == "alt.example."
    assert c.rejoin_after_leave and c.enable_local_script_checks and not c.enable_script_checks
    assert c.ui


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"servr": True}, 'unknown key "servr"'),
        ({"ports": {"htp": 1}}, 'unknown key "ports.htp"'),
        ({"acl": {"tokens": {"nope": "x"}}}, 'unknown key "acl.tokens.nope"'),
        ({"server": "yes"}, 'server: expected true or false, got the string "yes"'),
        ({"bootstrap_expect": "3"}, "bootstrap_expect: expected a whole number"),
        ({"bootstrap_expect": 2.5}, "bootstrap_expect: expected a whole number"),
        ({"ports": {"http": -5}}, "ports.http: invalid port -5"),
        ({"ports": {"dns": 70000}}, "ports.dns: invalid port 70000"),
        ({"ports": 8500}, "ports: expected an object, got the number 8500"),
        ({"retry_join": "10.0.0.1"}, "retry_join: expected a list of strings"),
        ({"node_meta": {"a": 1}}, "node_meta.a: expected a string"),
        ({"session_ttl_min": "10x"}, 'session_ttl_min: invalid duration: time: unknown unit "x"'),
        ({"session_ttl_min": 10}, 'session_ttl_min: expected a duration such as "10s"'),
        ({"services": ["web"]}, "services: expected an object or a list of objects"),
    ],
)
def test_file_refusals_name_key_and_file(tmp_path: Path, content: Any, expected: str) -> None:
    path = write(tmp_path, "a.json", content)
    msg = refused("-dev", "-config-file", path)
    assert msg.startswith(f"config file {path}: ")
    assert expected in msg


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"bootstrap": True, "bootstrap_expect": 3, "server": True},
            "'bootstrap_expect > 0' and 'bootstrap = true' are mutually exclusive",
        ),
        ({"bootstrap_expect": 3}, "'bootstrap_expect > 0' requires 'server = true'"),
        ({"bootstrap": True}, "'bootstrap = true' requires 'server = true'"),
        (
            {"bootstrap_expect": -1, "server": True},
            "bootstrap_expect cannot be -1. Must be greater than or equal to zero",
        ),
        (
            {"datacenter": "dc 1"},
            'datacenter can only contain lowercase alphanumeric, - or _ characters. received: "dc 1"',
        ),
        ({"datacenter": ""}, "datacenter cannot be empty"),
        (
            {"primary_datacenter": "a.b"},
            "primary_datacenter can only contain lowercase alphanumeric",
        ),
        (
            {"raft_protocol": 2},
            "raft_protocol version 2 is not supported by this version of Consul",
        ),
        ({"encrypt": "not-base64!"}, "encrypt has invalid key"),
        (
            {"encrypt": "YWJj"},
            "encrypt has invalid key: key size must be 16, 24 or 32 bytes, not 3",
        ),
        ({"node_meta": {"consul-x": "1"}}, "node_meta invalid: Key prefix 'consul-' is reserved"),
        ({"node_meta": {"a b": "1"}}, "node_meta invalid: Key contains invalid characters"),
        (
            {"alt_domain": "service.example"},
            "alt_domain cannot start with {service,connect,node,query,addr,dc1}",
        ),
        (
            {
                "connect": {"enable_mesh_gateway_wan_federation": True},
                "server": True,
                "node_name": "a/b",
            },
            "requires that 'node_name' not contain '/' characters",
        ),
        (
            {
                "connect": {"enable_mesh_gateway_wan_federation": True},
                "server": True,
                "retry_join_wan": ["x"],
            },
            "'retry_join_wan' is incompatible with 'connect.enable_mesh_gateway_wan_federation = true'",
        ),
        (
            {"connect": {"enable_mesh_gateway_wan_federation": True}},
            "'connect.enable_mesh_gateway_wan_federation = true' requires 'server = true'",
        ),
        ({"primary_gateways": ["gw:443"]}, "'primary_gateways' requires 'server = true'"),
        (
            {"primary_gateways": ["gw:443"], "server": True},
            "'primary_gateways' should only be configured in a secondary datacenter",
        ),
        ({"connect": {"ca_provider": "acme"}}, "acme is not a valid CA provider"),
        ({"acl": {"default_policy": "maybe"}}, 'acl.default_policy: invalid value "maybe"'),
        ({"acl": {"down_policy": "x"}}, "acl.down_policy: invalid value"),
        ({"log_level": "loud"}, 'log_level: unknown level "loud"'),
        ({"bind_addr": "1.1.1.1 2.2.2.2"}, "bind_addr cannot contain multiple addresses"),
        ({"bind_addr": "unix:///x"}, "bind_addr cannot be a unix socket"),
        ({"bind_addr": "not-an-ip"}, "bind_addr: 'not-an-ip' is not an IP address"),
        ({"advertise_addr": "0.0.0.0"}, "Advertise address cannot be 0.0.0.0, :: or [::]"),
        ({"performance": {"raft_multiplier": 11}}, "performance.raft_multiplier cannot be 11"),
        ({"node_id": "xyz"}, 'node_id "xyz" is not a valid UUID'),
        ({"services": [{"port": 80}]}, "service definition: missing service name"),
        (
            {"service": {"name": "web", "check": {"http": "http://x"}}},
            'service "web": Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks',
        ),
        (
            {"service": {"Name": "web", "Checks": [{"TTL": "10s", "Interval": "5s"}]}},
            'service "web": Interval and TTL cannot both be specified',
        ),
        ({"check": {"name": "c1"}}, 'check "c1": TTL must be > 0 for TTL checks'),
        (
            {"checks": [{"id": "c2", "tcp": "x:1", "interval": "1x"}]},
            'check "c2": interval: invalid duration',
        ),
        (
            {"check": {"name": "a", "alias_service": "web", "ttl": "1s"}},
            'check "a": TTL must be not be set for Alias checks',
        ),
        (
            {"ports": {"sidecar_min_port": 30000}},
            "ports.sidecar_min_port (30000) must be <= ports.sidecar_max_port (21255)",
        ),
    ],
)
def test_semantic_refusals_name_the_file(tmp_path: Path, content: Any, expected: str) -> None:
    path = write(tmp_path, "s.json", {"data_dir": str(tmp_path), **content})
    msg = refused("-config-file", path)
    assert expected in msg
    assert msg.startswith(f"config file {path}: ")


def test_bootstrap_expect_not_allowed_in_dev() -> None:
    assert "'bootstrap_expect > 0' not allowed in dev mode" in refused(
        "-dev", "-bootstrap-expect", "3"
    )


def test_data_dir_required_outside_dev(tmp_path: Path) -> None:
    assert refused("-server") == "data_dir cannot be empty"
    f = write(tmp_path, "file", "x")
    assert (
        refused("-server", "-data-dir", f) == f'flag -data-dir: data_dir "{f}" is not a directory'
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-http-port", "x"], 'flag -http-port: expected a whole number, got "x"'),
        (["-server-port", "-3"], "flag -server-port: invalid port -3"),
        (
            ["-retry-interval", "5"],
            'flag -retry-interval: invalid duration: time: missing unit in duration "5"',
        ),
        (
            ["-bootstrap-expect", "2"],
            "flag -bootstrap-expect: 'bootstrap_expect > 0' not allowed in dev mode",
        ),
        (["-datacenter", "a.b"], "flag -datacenter: datacenter can only contain"),
        (["-encrypt", "abc"], "flag -encrypt: encrypt has invalid key"),
        (["-log-level", "loud"], 'flag -log-level: log_level: unknown level "loud"'),
        (["-node-meta", "consul-a:b"], "flag -node-meta: node_meta invalid"),
        (["-raft-protocol", "2"], "flag -raft-protocol: raft_protocol version 2 is not supported"),
    ],
)
def test_flag_refusals_name_the_flag(argv: list[str], expected: str) -> None:
    assert expected in refused("-dev", *argv)


def test_invalid_json_and_hcl_are_one_line(tmp_path: Path) -> None:
    j = write(tmp_path, "bad.json", '{"server": tru')
    assert refused("-dev", "-config-file", j).startswith(f"config file {j}: invalid JSON: ")
    h = write(tmp_path, "bad.hcl", "server = \n")
    assert refused("-dev", "-config-file", h).startswith(f"config file {h}: invalid HCL: ")
    top = write(tmp_path, "list.json", "[1]")
    assert (
        refused("-dev", "-config-file", top)
        == f"config file {top}: the configuration must be an object"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.json")
    assert refused("-dev", "-config-file", path) == f"config file {path}: no such file or directory"


# --------------------------------------------------------------------------- the command line


def test_cli_refusal_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.json", {"servr": True})
    assert main(["agent", "-dev", "-config-file", path]) == 1
    err = capsys.readouterr().err
    assert err == f'proconsul agent: config file {path}: unknown key "servr"\n'


def test_cli_unknown_flag_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "-dev", "-bogus"]) == 1
    assert capsys.readouterr().err == "proconsul agent: unknown flag or argument: -bogus\n"
    with pytest.raises(SystemExit) as info:
        main(["agent", "-dev", "-http-port"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-http-port" in err


def test_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.json", SUITE_DEV)
    d = tmp_path / "d"
    d.mkdir()
    write(d, "x.hcl", 'datacenter = "dc2"\n')
    assert main(["validate", good, str(d)]) == 0
    assert capsys.readouterr().out == "Configuration is valid!\n"
    assert main(["validate", "-quiet", good]) == 0
    assert capsys.readouterr().out == ""
    bad = write(tmp_path, "bad.json", {"bootstrap_expect": 3})
    assert main(["validate", bad]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"Config validation failed: config file {bad}: 'bootstrap_expect > 0' requires 'server = true'\n"
    )
    assert main(["validate"]) == 1


def test_hcl1_quoted_keys_and_commas(tmp_path: Path) -> None:
    text = (
        'node_meta {\n  "rack-id" = "r1"\n}\n'
        'telemetry {\n  "disable_compat_1.9" = true\n}\n'
        "ports { http = 8600, dns = -1 }\n"
    )
    c = agent("-dev", "-config-file", write(tmp_path, "one.hcl", text))
    assert c.node_meta == {"rack-id": "r1"}
    assert c.telemetry == {"disable_compat_1.9": True}
    assert (c.http_port, c.dns_port) == (8600, -1)


def test_warnings_as_consul_gives_them(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    write(d, "notes.txt", "x")
    c = agent("-dev", "-config-dir", str(d), "-node", "host.example")
    assert any("skipping file" in w and "notes.txt" in w for w in c.warnings)
    assert any("will not be discoverable via DNS" in w for w in c.warnings)
    one = agent("-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path))
    assert "bootstrap_expect = 1 is the same as bootstrap mode" in one.warnings
    four = agent("-server", "-bootstrap-expect", "4", "-data-dir", str(tmp_path))
    assert any("even number of servers" in w for w in four.warnings)
    assert "bootstrap_expect > 0: expecting 4 servers" in four.warnings
    scripts = agent("-dev", "-enable-script-checks")
    assert any("enable_script_checks without ACLs" in w for w in scripts.warnings)
    assert agent("-dev", "-node", "plain").warnings == ()


def test_a_bad_definition_names_its_own_file(tmp_path: Path) -> None:
    a = write(tmp_path, "a.json", {"services": [{"name": "ok", "check": {"ttl": "5s"}}]})
    b = write(tmp_path, "b.json", {"services": [{"name": "bad", "check": {"tcp": "x:1"}}]})
    msg = refused("-dev", "-config-file", a, "-config-file", b)
    assert msg.startswith(f'config file {b}: service "bad": Interval must be > 0')


def test_script_check_needs_enable_script_checks(tmp_path: Path) -> None:
    check = {"id": "s", "name": "disk", "args": ["/bin/true"], "interval": "10s"}
    path = write(tmp_path, "c.json", {"check": check})
    msg = refused("-dev", "-config-file", path)
    assert "c.json" in msg and 'check "disk"' in msg
    assert "Scripts are disabled on this agent" in msg and "enable_script_checks" in msg
    service = write(tmp_path, "s.json", {"service": {"name": "web", "check": check}})
    assert 'service "web"' in refused("-dev", "-config-file", service)
    local = write(tmp_path, "ok.json", {"check": check, "enable_local_script_checks": True})
    assert agent("-dev", "-config-file", local).enable_local_script_checks
