"""The ``proconsul agent`` flags, spelled as Consul's (``-http-port``; ``--http-port`` too), and
``load_runtime_config(args)``: the agent's ``RuntimeConfig`` from parsed flags.

argparse only collects the raw strings; each flag is then converted and checked here so that a
bad value gives one line naming the flag (``flag -http-port: expected a whole number, got
"x"``). A flag is a config fragment merged after every file, as Consul's flags are.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from server.config.load import ConfigError, LoadOptions, _set_path, load
from server.config.runtime import RuntimeConfig
from server.config.schema import SCHEMA
from server.state import parse_duration

__all__ = ["AGENT_FLAGS", "add_agent_flags", "load_runtime_config", "options_from_args"]


@dataclass(frozen=True)
class Flag:
    name: str  # without the dash
    path: str  # config key it sets ("" for the loader's own flags)
    kind: str  # "bool", "int", "str", "dur", "list", "meta"
    metavar: str
    help: str


def _f(name: str, path: str, kind: str, help: str, metavar: str = "") -> Flag:
    return Flag(name, path, kind, metavar or kind.upper(), help)


AGENT_FLAGS: tuple[Flag, ...] = (
    _f("dev", "", "bool", "development mode: one in-memory server with Consul's dev defaults"),
    _f("server", "server", "bool", "run as a server"),
    _f("bootstrap", "bootstrap", "bool", "bootstrap the cluster alone (one server)"),
    _f("bootstrap-expect", "bootstrap_expect", "int", "servers to wait for before bootstrapping"),
    _f("node", "node_name", "str", "name of this node (default: the hostname)", "NAME"),
    _f("node-id", "node_id", "str", "a UUID identifying this node", "UUID"),
    _f("datacenter", "datacenter", "str", "datacenter of this agent (default: dc1)", "NAME"),
    _f("data-dir", "data_dir", "str", "directory for the agent's state", "PATH"),
    _f("bind", "bind_addr", "str", "address of server RPC and gossip", "ADDR"),
    _f("advertise", "advertise_addr", "str", "address told to other agents", "ADDR"),
    _f("advertise-wan", "advertise_addr_wan", "str", "address told to other datacenters", "ADDR"),
    _f("client", "client_addr", "str", "address(es) of HTTP and DNS (default: 127.0.0.1)", "ADDR"),
    _f("serf-lan-bind", "serf_lan", "str", "address of LAN gossip", "ADDR"),
    _f("serf-wan-bind", "serf_wan", "str", "address of WAN gossip", "ADDR"),
    _f("retry-join", "retry_join", "list", "address to join, retried (repeatable)", "ADDR"),
    _f("join", "start_join", "list", "address to join at start (repeatable)", "ADDR"),
    _f("retry-join-wan", "retry_join_wan", "list", "WAN address to join, retried", "ADDR"),
    _f("join-wan", "start_join_wan", "list", "WAN address to join at start", "ADDR"),
    _f("retry-interval", "retry_interval", "dur", "time between join attempts", "DURATION"),
    _f("retry-interval-wan", "retry_interval_wan", "dur", "time between WAN join attempts"),
    _f("retry-max", "retry_max", "int", "join attempts before giving up (0: forever)"),
    _f("retry-max-wan", "retry_max_wan", "int", "WAN join attempts before giving up"),
    _f("config-file", "", "list", "a JSON or HCL config file (repeatable)", "PATH"),
    _f("config-dir", "", "list", "a directory of *.json/*.hcl config files (repeatable)", "DIR"),
    _f("config-format", "", "str", "format of config files without .json/.hcl", "json|hcl"),
    _f("hcl", "", "list", "an HCL config fragment (repeatable)", "HCL"),
    _f("http-port", "ports.http", "int", "HTTP API port (0: any free port)", "PORT"),
    _f("https-port", "ports.https", "int", "HTTPS API port (-1: off)", "PORT"),
    _f("dns-port", "ports.dns", "int", "DNS port (-1: off)", "PORT"),
    _f("grpc-port", "ports.grpc", "int", "gRPC port (-1: off)", "PORT"),
    _f("grpc-tls-port", "ports.grpc_tls", "int", "gRPC TLS port (-1: off)", "PORT"),
    _f("server-port", "ports.server", "int", "server RPC port (0: any free port)", "PORT"),
    _f("serf-lan-port", "ports.serf_lan", "int", "LAN gossip port (0: any free port)", "PORT"),
    _f("serf-wan-port", "ports.serf_wan", "int", "WAN gossip port (0: any free port)", "PORT"),
    _f("encrypt", "encrypt", "str", "gossip encryption key (base64)", "KEY"),
    _f("log-level", "log_level", "str", "trace, debug, info, warn or error", "LEVEL"),
    _f("log-json", "log_json", "bool", "write logs as JSON"),
    _f("log-file", "log_file", "str", "also write logs to this file", "PATH"),
    _f("pid-file", "pid_file", "str", "write the agent's PID to this file", "PATH"),
    _f("ui", "ui_config.enabled", "bool", "serve the web UI"),
    _f("ui-dir", "ui_config.dir", "str", "serve the web UI from this directory", "DIR"),
    _f("ui-content-path", "ui_config.content_path", "str", "URL path of the web UI", "PATH"),
    _f("domain", "domain", "str", "DNS domain (default: consul.)", "DOMAIN"),
    _f("alt-domain", "alt_domain", "str", "alternative DNS domain", "DOMAIN"),
    _f("recursor", "recursors", "list", "upstream DNS server (repeatable)", "ADDR"),
    _f("node-meta", "node_meta", "meta", "node metadata key:value (repeatable)", "KEY:VALUE"),
    _f("primary-gateway", "primary_gateways", "list", "mesh gateway of the primary DC", "ADDR"),
    _f("rejoin", "rejoin_after_leave", "bool", "rejoin the cluster after a leave"),
    _f("raft-protocol", "raft_protocol", "int", "Raft protocol version (3)"),
    _f("protocol", "protocol", "int", "RPC protocol version (accepted)"),
    _f("enable-script-checks", "enable_script_checks", "bool", "allow script checks"),
    _f(
        "enable-local-script-checks",
        "enable_local_script_checks",
        "bool",
        "allow script checks from config files only",
    ),
    _f("disable-host-node-id", "disable_host_node_id", "bool", "random node ID, not the host's"),
    _f("disable-keyring-file", "disable_keyring_file", "bool", "keep the keyring in memory"),
    _f("default-query-time", "default_query_time", "dur", "blocking query default wait"),
    _f("max-query-time", "max_query_time", "dur", "blocking query maximum wait"),
    _f("syslog", "enable_syslog", "bool", "log to syslog"),
    _f("non-voting-server", "non_voting_server", "bool", "(Enterprise; accepted)"),
    _f("auto-reload-config", "auto_reload_config", "bool", "reload config files on change"),
)


def _dest(flag: Flag) -> str:
    return "flag_" + flag.name.replace("-", "_")


def add_agent_flags(parser: argparse.ArgumentParser) -> None:
    """Every agent flag, single and double dash; values are kept as given (strings)."""
    for flag in AGENT_FLAGS:
        names = [f"-{flag.name}", f"--{flag.name}"]
        if flag.kind == "bool":
            # Go's flag package: -dev, -dev=true, -dev=false.
            parser.add_argument(
                *names, dest=_dest(flag), nargs="?", const="true", default=None, help=flag.help
            )
        elif flag.kind in ("list", "meta") or flag.name in ("config-file", "config-dir"):
            parser.add_argument(
                *names,
                dest="config_paths" if flag.name in ("config-file", "config-dir") else _dest(flag),
                action="append",
                default=None,
                metavar=flag.metavar,
                help=flag.help,
            )
        else:
            parser.add_argument(
                *names, dest=_dest(flag), default=None, metavar=flag.metavar, help=flag.help
            )


def _kind_at(path: str) -> Any:
    kind: Any = SCHEMA
    for part in path.split("."):
        kind = kind[part]
    return kind


def _convert(flag: Flag, raw: Any) -> Any:
    where = f"flag -{flag.name}"
    if flag.kind == "bool":
        text = str(raw).lower()
        if text in ("1", "t", "true"):
            return True
        if text in ("0", "f", "false"):
            return False
        raise ConfigError(f'{where}: invalid boolean value "{raw}"')
    if flag.kind == "int":
        try:
            value = int(raw, 10)
        except ValueError:
            raise ConfigError(f'{where}: expected a whole number, got "{raw}"') from None
        if _kind_at(flag.path) == "port" and not -1 <= value <= 65535:
            raise ConfigError(f"{where}: invalid port {value} (0-65535, or -1 to disable)")
        return value
    if flag.kind == "meta":
        meta: dict[str, str] = {}
        for pair in raw:
            key, _, val = pair.partition(":")
            meta[key] = val
        return meta
    if flag.kind == "list":
        return list(raw)
    if flag.kind == "dur":
        try:
            parse_duration(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: invalid duration: {exc}") from None
    return raw


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    """The loader's options from the flags ``add_agent_flags`` declared."""
    opts = LoadOptions()
    opts.config_files = list(getattr(args, "config_paths", None) or [])
    for flag in AGENT_FLAGS:
        raw = getattr(args, _dest(flag), None)
        if raw is None:
            continue
        if flag.name == "dev":
            opts.dev = _convert(flag, raw)
        elif flag.name == "config-format":
            opts.config_format = raw
        elif flag.name == "hcl":
            opts.hcl = list(raw)
        elif flag.path:
            _set_path(opts.flags, flag.path, _convert(flag, raw))
            opts.flag_names[flag.path] = f"-{flag.name}"
    return opts


def load_runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    """The agent's ``RuntimeConfig`` from parsed ``proconsul agent`` flags: dev defaults, then
    config files/dirs, then ``-hcl`` fragments, then flags. Raises ``ConfigError``, also for
    TLS files that cannot be read (the agent reads them again when it starts)."""
    cfg = load(options_from_args(args))
    from server.tlsutil import TLSSettings, raft_tls_config  # imports grpc: only for agents

    tls = TLSSettings.from_config(cfg)
    if tls is not None and cfg.server:
        raft_tls_config(tls, cfg.datacenter, cfg.domain)  # refuses a ca_path without ca_file
    return cfg
