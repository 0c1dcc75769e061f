"""The CLI's Go-style flag parsing, address/env handling and output formatting (no sockets)."""

from __future__ import annotations

import io

import pytest

from server.cli import main
from server.clicmd import COMMANDS, dispatch
from server.clicmd.agent import format_info, format_members, member_status
from server.clicmd.api import APIError, client_from_flags, parse_address
from server.clicmd.base import columnize
from server.clicmd.catalog import format_nodes, format_services, to_api_keys
from server.clicmd.flags import (
    FlagSet,
    HelpRequested,
    UsageError,
    format_duration,
    http_flags,
    parse_duration,
)
from server.clicmd.kv import go_json, pretty_kv_pair
from server.clicmd.operator import format_autopilot_config, format_peers
from server.clicmd.snapshot import human_bytes
from server.clicmd.watch import event_id_to_index


def fs_with(*setup: str) -> FlagSet:
    fs = FlagSet(usage="Usage: consul thing [options]")
    fs.boolean("recurse")
    fs.string("separator", "/")
    fs.integer("flags", 0, unsigned=True)
    fs.duration("timeout")
    fs.repeated("tag")
    fs.mapping("node-meta")
    return fs


def test_go_flag_forms() -> None:
    fs = fs_with()
    rest = fs.parse(["-recurse", "--separator=:", "-flags", "7", "-tag=a", "-tag", "b", "key"])
    assert rest == ["key"]
    assert fs["recurse"] is True and fs["separator"] == ":" and fs["flags"] == 7
    assert fs["tag"] == ["a", "b"]
    assert fs.was_set("flags") and not fs.was_set("timeout")


def test_parsing_stops_at_first_positional_and_double_dash() -> None:
    fs = fs_with()
    assert fs.parse(["prefix", "cmd", "-recurse"]) == ["prefix", "cmd", "-recurse"]
    assert fs["recurse"] is False
    fs = fs_with()
    assert fs.parse(["--", "-recurse"]) == ["-recurse"]
    fs = fs_with()
    assert fs.parse(["-recurse=false", "-"]) == ["-"]  # a lone "-" is an argument (stdin)
    assert fs["recurse"] is False


def test_bool_does_not_take_next_word() -> None:
    fs = fs_with()
    assert fs.parse(["-recurse", "false"]) == ["false"]
    assert fs["recurse"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-bogus"], "flag provided but not defined: -bogus"),
        (["-separator"], "flag needs an argument: -separator"),
        (["-flags=x"], 'invalid value "x" for flag -flags: parse error'),
        (["-flags=-1"], 'invalid value "-1" for flag -flags: parse error'),
        (["-timeout=5"], 'invalid value "5" for flag -timeout: parse error'),
        (["-recurse=maybe"], 'invalid value "maybe" for flag -recurse: parse error: '),
        (["-node-meta=novalue"], 'invalid value "novalue" for flag -node-meta: Missing ='),
        (["---x"], "bad flag syntax: ---x"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        fs_with().parse(argv)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_help_flag() -> None:
    for flag in ("-h", "-help", "--help"):
        with pytest.raises(HelpRequested):
            fs_with().parse([flag])
    text = fs_with().help_text()
    assert text.startswith("Usage: proconsul thing [options]\n")
    assert "  -recurse\n" in text and "  -separator=<value>\n" in text


def test_durations() -> None:
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("200ms") == pytest.approx(0.2)
    assert parse_duration("0") == 0
    with pytest.raises(ValueError, match='time: invalid duration "5"'):
        parse_duration("5")
    assert format_duration(0.2) == "200ms"
    assert format_duration(10) == "10s"
    assert format_duration(3723.5) == "1h2m3.5s"
    assert format_duration(0) == "0s"
    assert format_duration(90) == "1m30s"


def test_addresses_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_address("127.0.0.1:8500") == ("http", "127.0.0.1:8500")
    assert parse_address("https://h:8501/") == ("https", "h:8501")
    assert parse_address("h:8501", ssl_default=True) == ("https", "h:8501")
    with pytest.raises(APIError, match="Unknown protocol scheme: ftp"):
        parse_address("ftp://x")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "http://10.0.0.1:1234")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "env-token")
    fs = FlagSet()
    http_flags(fs)
    fs.parse([])
    c = client_from_flags(fs)
    assert (c.scheme, c.address, c.token) == ("http", "10.0.0.1:1234", "env-token")
    fs = FlagSet()
    http_flags(fs)
    fs.parse(["-http-addr=https://h:9", "-token=flag-token", "-datacenter=dc2", "-stale"])
    c = client_from_flags(fs)
    assert (c.scheme, c.address, c.token) == ("https", "h:9", "flag-token")
    assert c.url("/v1/kv/a", {"recurse": True}) == "https://h:9/v1/kv/a?dc=dc2&stale&recurse"


def test_token_file(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tok"
    path.write_text("file-token\n")
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    fs = FlagSet()
    http_flags(fs)
    fs.parse([f"-token-file={path}"])
    assert client_from_flags(fs).token == "file-token"


def test_columnize_pads_all_but_last_column() -> None:
    assert columnize([["a", "bb", "c"], ["ddd", "e", "ffff"]]) == "a    bb  c\nddd  e   ffff"


MEMBERS = [
    {
        "Name": "client-1",
        "Addr": "127.0.0.2",
        "Port": 8301,
        "Status": 1,
        "Tags": {"role": "node", "dc": "dc1", "build": "1.22.0:abc", "vsn": "2"},
    },
    {
        "Name": "srv-b",
        "Addr": "127.0.0.1",
        "Port": 8301,
        "Status": 4,
        "Tags": {"role": "consul", "dc": "dc1", "build": "1.22.0:abc", "vsn": "2"},
    },
    {"Name": "odd", "Addr": "::1", "Port": 1, "Status": 3, "Tags": {}},
]


def test_members_table() -> None:
    text, code = format_members(MEMBERS)
    assert code == 0
    assert [line.rstrip() for line in text.splitlines()] == [
        "Node      Address         Status  Type     Build   Protocol  DC   Partition  Segment",
        "srv-b     127.0.0.1:8301  failed  server   1.22.0  2         dc1  default    <all>",
        "client-1  127.0.0.2:8301  alive   client   1.22.0  2         dc1  default    <default>",
        "odd       [::1]:1         left    unknown",
    ]
    text, code = format_members(MEMBERS, status="alive|left")
    assert [line.split()[0] for line in text.splitlines()] == ["Node", "client-1", "odd"]
    assert format_members(MEMBERS, status="leaving") == ("", 2)
    detailed, _ = format_members(MEMBERS[:1], detailed=True)
    assert detailed.splitlines()[1].endswith(
        "ap=default,build=1.22.0:abc,dc=dc1,role=node,segment=<default>,vsn=2"
    )
    assert member_status(2) == "leaving" and member_status("x") == "unknown"


def test_catalog_formats() -> None:
    nodes = [
        {
            "Node": "n1",
            "ID": "abcd1234-0000-0000-0000-000000000000",
            "Address": "10.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"wan": "1.2.3.4", "lan": "10.0.0.1"},
            "Meta": {"rack": "r1"},
        }
    ]
    assert (
        format_nodes(nodes, False) == "Node  ID        Address   DC\nn1    abcd1234  10.0.0.1  dc1"
    )
    detailed = format_nodes(nodes, True).splitlines()
    assert detailed[0].split() == ["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"]
    assert detailed[1].endswith("lan=10.0.0.1, wan=1.2.3.4  rack=r1")
    services = {"web": ["v2", "v1"], "consul": []}
    assert format_services(services, False) == "consul\nweb"
    assert format_services(services, True) == "consul\nweb         v1,v2"


def test_kv_formats() -> None:
    pair = {
        "Key": "a<b",
        "Value": "aGk=",
        "Flags": 3,
        "CreateIndex": 5,
        "ModifyIndex": 6,
        "LockIndex": 0,
        "Session": "",
    }
    assert pretty_kv_pair(pair, False).splitlines() == [
        "CreateIndex      5",
        "Flags            3",
        "Key              a<b",
        "LockIndex        0",
        "ModifyIndex      6",
        "Session          -",
        "Value            hi",
    ]
    assert pretty_kv_pair(pair, True).endswith("Value            aGk=")
    assert go_json([{"key": "a<b&c", "flags": 0, "value": ""}]) == (
        '[\n\t{\n\t\t"key": "a\\u003cb\\u0026c",\n\t\t"flags": 0,\n\t\t"value": ""\n\t}\n]'
    )
    assert go_json([]) == "[]"


def test_operator_formats() -> None:
    peers = [
        {
            "Node": "s1",
            "ID": "id-1",
            "Address": "10.0.0.1:8300",
            "Leader": True,
            "Voter": True,
            "ProtocolVersion": "3",
        },
        {
            "Node": "s2",
            "ID": "id-2",
            "Address": "10.0.0.2:8300",
            "Leader": False,
            "Voter": False,
            "ProtocolVersion": "",
        },
    ]
    assert format_peers(peers).splitlines() == [
        "Node  ID    Address        State     Voter  RaftProtocol",
        "s1    id-1  10.0.0.1:8300  leader    true   3",
        "s2    id-2  10.0.0.2:8300  follower  false  <=1",
    ]
    conf = {
        "CleanupDeadServers": True,
        "LastContactThreshold": "200ms",
        "MaxTrailingLogs": 250,
        "MinQuorum": 0,
        "ServerStabilizationTime": "10s",
        "RedundancyZoneTag": "",
        "DisableUpgradeMigration": False,
        "UpgradeVersionTag": "",
    }
    assert format_autopilot_config(conf).splitlines()[:3] == [
        "CleanupDeadServers = true",
        "LastContactThreshold = 200ms",
        "MaxTrailingLogs = 250",
    ]
    assert 'RedundancyZoneTag = ""' in format_autopilot_config(conf)


def test_misc_formats() -> None:
    assert format_info({"b": {"y": "2", "x": "1"}, "a": {}}) == "a:\nb:\n\tx = 1\n\ty = 2"
    assert (
        human_bytes(5) == "5 B" and human_bytes(1500) == "1.5 kB" and human_bytes(2e6) == "2.0 MB"
    )
    assert event_id_to_index("00000000-0000-0001-0000-000000000001") == 0
    assert event_id_to_index("00000000-0000-0001-0000-000000000003") == 2


def test_service_definition_keys() -> None:
    svc = {
        "name": "web",
        "id": "web1",
        "enable_tag_override": True,
        "meta": {"some_key": "v"},
        "tagged_addresses": {"lan_ipv4": {"address": "10.0.0.1", "port": 80}},
        "check": {"http": "http://x", "tls_skip_verify": True, "header": {"x_y": ["1"]}},
    }
    assert to_api_keys(svc) == {
        "Name": "web",
        "ID": "web1",
        "EnableTagOverride": True,
        "Meta": {"some_key": "v"},
        "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.1", "Port": 80}},
        "Check": {"HTTP": "http://x", "TLSSkipVerify": True, "Header": {"x_y": ["1"]}},
    }


def test_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    assert "kv get" in COMMANDS and "operator raft list-peers" in COMMANDS
    assert main(["nosuch"]) == 127
    assert capsys.readouterr().err == 'proconsul: unknown command "nosuch"\n'
    assert main(["kv", "frob"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["kv"]) == 1
    assert "Subcommands:" in capsys.readouterr().err
    assert main(["operator", "raft", "-h"]) == 0
    assert "list-peers" in capsys.readouterr().out
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert "members" in out and "agent" in out and "snapshot" in out
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("Proconsul v")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert dispatch([*name.split(), "-h"], out, err) == 0
    assert out.getvalue().startswith("Usage: proconsul " + name)
    assert err.getvalue() == ""


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_refuses_unknown_flags(name: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert dispatch([*name.split(), "-no-such-flag"], out, err) == 1
    assert err.getvalue() == "flag provided but not defined: -no-such-flag\n"


def test_progress_reports_only_long_transfers() -> None:
    from server.clicmd.snapshot import Progress

    quiet = io.StringIO()
    p = Progress(quiet, "Saving snapshot", delay=60)
    p.update(1000)
    p.finish()
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    p = Progress(shown, "Restoring snapshot", total=4000, delay=0, interval=0)
    p.update(1000)
    p.update(3000)
    p.finish()
    assert shown.getvalue().splitlines() == [
        "Restoring snapshot: 1.0 kB of 4.0 kB (25%)",
        "Restoring snapshot: 4.0 kB of 4.0 kB (100%)",
        "Restoring snapshot: 4.0 kB of 4.0 kB (100%)",
    ]
