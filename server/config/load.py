"""Loading an agent's configuration as Consul does.

``load(opts) -> RuntimeConfig`` reads the sources in Consul's order and builds one validated
``RuntimeConfig``:

1. the defaults (the dataclass's field defaults), then Consul's dev-mode defaults under ``-dev``;
2. every ``-config-file`` / ``-config-dir`` in the order given (a directory contributes its
   ``*.json`` and ``*.hcl`` files in lexical order);
3. every ``-hcl`` fragment;
4. the command-line flags.

Each source is parsed (JSON, or HCL through python-hcl2), checked against
``server.config.schema.SCHEMA`` (unknown key or wrong type: an error naming the key and the
source) and merged: a later value replaces an earlier one, lists (``retry_join``, ``services``
...) are appended, objects are merged key by key. Then the merged values are converted
(durations to seconds, ports resolved) and validated as Consul's builder does.

Every failure is a ``ConfigError`` whose text is one line naming the source ("config file
a.json: ...", "flag -http-port: ...").
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.config.runtime import RuntimeConfig
from server.config.schema import APPENDED_LISTS, SCHEMA, Schema
from server.state import parse_duration

__all__ = ["ConfigError", "LoadOptions", "Source", "load", "parse_source", "read_sources"]


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is one line naming the source."""


@dataclass
class Source:
    """One configuration fragment: ``name`` is how messages refer to it."""

    name: str
    format: str  # "json" or "hcl"
    data: str


@dataclass
class LoadOptions:
    dev: bool = False
    config_files: list[str] = field(default_factory=list)  # files and directories, in order
    config_format: str = ""
    hcl: list[str] = field(default_factory=list)
    # Flag values already shaped as a config fragment (``{"ports": {"http": 8500}}``), with the
    # flag that set each top-level path (``{"ports.http": "-http-port"}``) for messages.
    flags: dict[str, Any] = field(default_factory=dict)
    flag_names: dict[str, str] = field(default_factory=dict)
    # For ``proconsul validate``: do not pick free ports or look at the host.
    resolve_ports: bool = True


# --------------------------------------------------------------------------- reading sources


def read_sources(
    paths: Iterable[str], config_format: str = "", warnings: list[str] | None = None
) -> list[Source]:
    """Files and directories, in Consul's order: a directory's ``*.json``/``*.hcl`` files in
    lexical order (other files in it are skipped, with a warning appended to ``warnings``); a
    file with another extension needs ``-config-format``."""
    if config_format not in ("", "json", "hcl"):
        raise ConfigError(f"-config-format must be either 'hcl' or 'json', not {config_format!r}")
    out: list[Source] = []
    for path in paths:
        try:
            is_dir = os.path.isdir(path)
            if is_dir:
                names = sorted(os.listdir(path))
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        if not os.path.exists(path):
            raise ConfigError(f"config file {path}: no such file or directory")
        if is_dir:
            for name in names:
                full = os.path.join(path, name)
                fmt = _format_of(name, config_format)
                if os.path.isdir(full):
                    continue
                if fmt:
                    out.append(Source(f"config file {full}", fmt, _read(full)))
                elif warnings is not None:
                    warnings.append(
                        f"skipping file {full}: the extension must be .hcl or .json, "
                        "or -config-format must be set"
                    )
            continue
        fmt = _format_of(path, config_format)
        if not fmt:
            raise ConfigError(
                f"config file {path}: unknown extension (use .json or .hcl, or -config-format)"
            )
        out.append(Source(f"config file {path}", fmt, _read(path)))
    return out


def _format_of(name: str, forced: str) -> str:
    if name.endswith(".json"):
        return "json"
    if name.endswith(".hcl"):
        return "hcl"
    return forced


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None


def parse_source(src: Source) -> dict[str, Any]:
    """The source's top-level object, checked against the schema (canonical key names)."""
    raw: Any
    if src.format == "json":
        try:
            raw = json.loads(src.data) if src.data.strip() else {}
        except ValueError as exc:
            raise ConfigError(f"{src.name}: invalid JSON: {exc}") from None
    else:
        raw = _parse_hcl(src)
    if not isinstance(raw, dict):
        raise ConfigError(f"{src.name}: the configuration must be an object")
    checked: dict[str, Any] = _check_object(raw, SCHEMA, src.name, "")
    _translate_deprecated(checked)
    return checked


def _parse_hcl(src: Source) -> Any:
    import hcl2
    from hcl2.utils import SerializationOptions

    options = SerializationOptions(
        with_comments=False,
        explicit_blocks=True,
        strip_string_quotes=True,
        preserve_heredocs=False,
        preserve_scientific_notation=False,
    )
    try:
        parsed = hcl2.loads(src.data, serialization_options=options)
    except Exception as exc:  # lark raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # Consul reads HCL 1, which also allows quoted keys and commas inside blocks
        # (``node_meta { "rack-id" = "r1" }``); HCL 2 allows both in object expressions, so
        # try again with every unlabelled block written as one (``node_meta = { ... }``).
        compat = _HCL1_BLOCK.sub(r"\1\2 = {", src.data)
        if compat == src.data:
            raise ConfigError(f"{src.name}: invalid HCL: {first}") from None
        try:
            parsed = hcl2.loads(compat, serialization_options=options)
        except Exception:
            raise ConfigError(f"{src.name}: invalid HCL: {first}") from None
    return _unblock(parsed)


_HCL1_BLOCK = re.compile(r"(?m)^(\s*)([A-Za-z_][\w-]*)\s*\{")


# Keys whose HCL blocks stay a list even when there is one block (lists of definitions).
_LIST_BLOCKS = frozenset(
    {"services", "checks", "upstreams", "paths", "bootstrap", "segments", "watches"}
)


def _is_block(v: Any) -> bool:
    if not isinstance(v, dict):
        return False
    if "__is_block__" in v:
        return True
    # A labelled block: {"label": {...block...}}.
    return len(v) == 1 and _is_block(next(iter(v.values())))


def _unblock(v: Any, key: str = "") -> Any:
    """python-hcl2's output as plain JSON-like values: blocks become objects (a key repeated
    as several blocks becomes a list), labels become nested objects."""
    if isinstance(v, dict):
        return {k: _unblock(x, k) for k, x in v.items() if k != "__is_block__"}
    if isinstance(v, list):
        items = [_unblock(x, key) for x in v]
        if v and all(_is_block(x) for x in v) and len(items) == 1 and key not in _LIST_BLOCKS:
            return items[0]
        return items
    return v


# --------------------------------------------------------------------------- checking values


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {json.dumps(v)}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_object(raw: Mapping[str, Any], schema: Schema, where: str, path: str) -> dict[str, Any]:
    lower = {k.lower(): k for k in schema}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        canonical = key if key in schema else lower.get(str(key).lower())
        if canonical is None:
            raise ConfigError(f'{where}: unknown key "{_join(path, str(key))}"')
        full = _join(path, canonical)
        if value is None:  # an explicit null leaves the default (as a nil pointer in Go)
            continue
        out[canonical] = _check_value(value, schema[canonical], where, full)
    return out


def _single_object(v: Any, where: str, full: str) -> dict[str, Any]:
    # Consul decodes a one-element list into a non-list field (HCL repeats blocks as lists).
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict):
        v = v[0]
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        merged: dict[str, Any] = {}
        for x in v:
            merged.update(x)
        v = merged
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: {full}: expected an object, got {_describe(v)}")
    return v


def _check_value(v: Any, kind: Any, where: str, full: str) -> Any:
    if isinstance(kind, dict):
        return _check_object(_single_object(v, where, full), kind, where, full)
    if kind == "any":
        return v
    if kind == "str":
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        if not isinstance(v, str):
            raise ConfigError(f"{where}: {full}: expected a string, got {_describe(v)}")
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: {full}: expected true or false, got {_describe(v)}")
        return v
    if kind in ("int", "port"):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: {full}: expected a whole number, got {_describe(v)}")
        if kind == "port" and not -1 <= v <= 65535:
            raise ConfigError(f"{where}: {full}: invalid port {v} (0-65535, or -1 to disable)")
        return v
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{where}: {full}: expected a number, got {_describe(v)}")
        return v
    if kind == "dur":
        if not isinstance(v, str):
            raise ConfigError(
                f'{where}: {full}: expected a duration such as "10s", got {_describe(v)}'
            )
        try:
            parse_duration(v)
        except ValueError as exc:
            raise ConfigError(f"{where}: {full}: invalid duration: {exc}") from None
        return v
    if kind == "strs":
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{where}: {full}: expected a list of strings, got {_describe(v)}")
        return list(v)
    if kind in ("strmap", "map"):
        obj = _single_object(v, where, full)
        if kind == "strmap":
            for k, x in obj.items():
                if not isinstance(x, str):
                    raise ConfigError(f"{where}: {full}.{k}: expected a string, got {_describe(x)}")
        return dict(obj)
    if kind in ("maps", "defs"):
        items = v if isinstance(v, list) else [v]
        for x in items:
            if not isinstance(x, dict):
                raise ConfigError(
                    f"{where}: {full}: expected an object or a list of objects, got {_describe(x)}"
                )
        return [dict(x) for x in items]
    raise AssertionError(f"schema kind {kind!r}")


# Deprecated keys and where Consul reads them now: (old path, new path).
_DEPRECATED: tuple[tuple[str, str], ...] = (
    ("acl_datacenter", "primary_datacenter"),
    ("acl_default_policy", "acl.default_policy"),
    ("acl_down_policy", "acl.down_policy"),
    ("acl_enable_key_list_policy", "acl.enable_key_list_policy"),
    ("acl_ttl", "acl.token_ttl"),
    ("acl_disabled_ttl", "acl.disabled_ttl"),
    ("acl_master_token", "acl.tokens.initial_management"),
    ("acl_agent_master_token", "acl.tokens.agent_recovery"),
    ("acl_agent_token", "acl.tokens.agent"),
    ("acl_token", "acl.tokens.default"),
    ("acl_replication_token", "acl.tokens.replication"),
    ("enable_acl_replication", "acl.enable_token_replication"),
    ("acl.tokens.master", "acl.tokens.initial_management"),
    ("acl.tokens.agent_master", "acl.tokens.agent_recovery"),
    ("ca_file", "tls.defaults.ca_file"),
    ("ca_path", "tls.defaults.ca_path"),
    ("cert_file", "tls.defaults.cert_file"),
    ("key_file", "tls.defaults.key_file"),
    ("tls_min_version", "tls.defaults.tls_min_version"),
    ("tls_cipher_suites", "tls.defaults.tls_cipher_suites"),
    ("verify_incoming", "tls.defaults.verify_incoming"),
    ("verify_outgoing", "tls.defaults.verify_outgoing"),
    ("verify_incoming_rpc", "tls.internal_rpc.verify_incoming"),
    ("verify_incoming_https", "tls.https.verify_incoming"),
    ("verify_server_hostname", "tls.internal_rpc.verify_server_hostname"),
    ("ui_dir", "ui_config.dir"),
    ("ui_content_path", "ui_config.content_path"),
)


def _get_path(d: Mapping[str, Any], path: str) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _pop_path(d: dict[str, Any], path: str) -> Any:
    parts = path.split(".")
    cur: Any = d
    for part in parts[:-1]:
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur.pop(parts[-1], None) if isinstance(cur, dict) else None


def _set_path(d: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    cur = d
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def _translate_deprecated(d: dict[str, Any]) -> None:
    """Move deprecated keys to their new place within one source; the new key wins when a
    source sets both, as in Consul."""
    for old, new in _DEPRECATED:
        value = _pop_path(d, old)
        if value is not None and _get_path(d, new) is None:
            _set_path(d, new, value)


# --------------------------------------------------------------------------- merging


def merge(
    into: dict[str, Any],
    new: Mapping[str, Any],
    origin: str,
    sources: dict[str, str],
    schema: Schema = SCHEMA,
    path: str = "",
) -> None:
    """Merge ``new`` into ``into`` in place: scalars replace, lists append, objects merge
    (free-form objects key by key). ``sources`` records which source set each leaf."""
    for key, value in new.items():
        kind = schema.get(key, "any")
        full = _join(path, key)
        if isinstance(kind, dict):
            sub = into.setdefault(key, {})
            merge(sub, value, origin, sources, kind, full)
            continue
        if kind in APPENDED_LISTS and isinstance(value, list):
            before = list(into.get(key, []))
            into[key] = before + list(value)
            if kind == "defs":  # each definition's own source, for messages
                for i in range(len(before), len(before) + len(value)):
                    sources[f"{full}[{i}]"] = origin
        elif kind in ("map", "strmap") and isinstance(value, dict):
            into[key] = {**into.get(key, {}), **value}
        else:
            into[key] = value
        sources[full] = origin


# --------------------------------------------------------------------------- building


# Consul's dev-mode defaults (the ones that mean something here).
DEV_DEFAULTS: dict[str, Any] = {
    "bind_addr": "127.0.0.1",
    "bootstrap": True,
    "server": True,
    "disable_anonymous_signature": True,
    "disable_keyring_file": True,
    "enable_debug": True,
    "ui_config": {"enabled": True},
    "connect": {"enabled": True},
    "performance": {"raft_multiplier": 1},
    "ports": {"grpc": 8502, "grpc_tls": 8503},
}

_BASIC_NAME = re.compile(r"^[a-z0-9_-]+$")
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_LOG_LEVELS = ("trace", "debug", "info", "warn", "error")


def _seconds(value: str | None, default: float) -> float:
    if value is None:
        return default
    return parse_duration(value) / 1e9


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _ip(value: str, key: str, fail: Any) -> str:
    if value.startswith("unix://"):
        raise fail(key, f"{key} cannot be a unix socket")
    if "{{" in value:
        raise fail(key, f"{key}: go-sockaddr templates are not supported: {value!r}")
    if len(value.split()) > 1:
        raise fail(key, f"{key} cannot contain multiple addresses")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise fail(key, f"{key}: {value!r} is not an IP address") from None


def build(
    merged: dict[str, Any],
    sources: dict[str, str],
    *,
    dev: bool,
    files: tuple[str, ...] = (),
    resolve_ports: bool = True,
    hostname: str | None = None,
    require_data_dir: bool = True,
    warnings: list[str] | None = None,
) -> RuntimeConfig:
    """The ``RuntimeConfig`` for merged, schema-checked values; semantic checks as Consul's.
    Problems Consul only warns about are returned in ``RuntimeConfig.warnings``."""
    warn: list[str] = list(warnings or [])

    def fail(key: str, msg: str) -> ConfigError:
        origin = sources.get(key)
        if origin is None:  # a block: name the source of any key inside it
            origin = next((v for k, v in sources.items() if k.startswith(key + ".")), None)
        return ConfigError(f"{origin}: {msg}" if origin else msg)

    g = merged.get
    ports: dict[str, Any] = g("ports", {})
    perf: dict[str, Any] = g("performance", {})
    addrs: dict[str, Any] = g("addresses", {})
    limits: dict[str, Any] = g("limits", {})
    acl: dict[str, Any] = g("acl", {})
    connect: dict[str, Any] = g("connect", {})
    ui_config: dict[str, Any] = dict(g("ui_config", {}))
    if "ui" in merged and "enabled" not in ui_config:
        ui_config["enabled"] = merged["ui"]

    raft_protocol = g("raft_protocol", 3)
    if raft_protocol != 3:
        raise fail(
            "raft_protocol",
            f"raft_protocol version {raft_protocol} is not supported by this version of Consul",
        )

    datacenter = g("datacenter", "dc1").lower()
    if not datacenter:
        raise fail("datacenter", "datacenter cannot be empty")
    if not _BASIC_NAME.match(datacenter):
        raise fail(
            "datacenter",
            "datacenter can only contain lowercase alphanumeric, - or _ characters. "
            f"received: {json.dumps(datacenter)}",
        )
    primary_dc = g("primary_datacenter", "").lower()
    if primary_dc and not _BASIC_NAME.match(primary_dc):
        raise fail(
            "primary_datacenter",
            "primary_datacenter can only contain lowercase alphanumeric, - or _ characters. "
            f"received: {json.dumps(primary_dc)}",
        )

    data_dir = g("data_dir", "")
    if not dev and require_data_dir:
        if not data_dir:
            raise fail("data_dir", "data_dir cannot be empty")
        if os.path.exists(data_dir) and not os.path.isdir(data_dir):
            raise fail("data_dir", f"data_dir {json.dumps(data_dir)} is not a directory")

    node_name = g("node_name", "") or (
        hostname if hostname is not None else (socket.gethostname() or "")
    )
    if not node_name:
        raise fail("node_name", "node_name cannot be empty")
    node_id = g("node_id", "").lower()
    if node_id and not re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", node_id
    ):
        raise fail("node_id", f"node_id {json.dumps(g('node_id'))} is not a valid UUID")

    log_level = g("log_level", "info").lower()
    if log_level == "warning":
        log_level = "warn"
    if log_level not in _LOG_LEVELS:
        raise fail(
            "log_level",
            f"log_level: unknown level {json.dumps(g('log_level'))} "
            f"(one of {', '.join(_LOG_LEVELS)})",
        )

    bind = _ip(g("bind_addr", "0.0.0.0"), "bind_addr", fail) if "bind_addr" in merged else "0.0.0.0"
    if "bind_addr" in merged and not merged["bind_addr"]:
        raise fail("bind_addr", "bind_addr cannot be empty")
    advertise = _ip(g("advertise_addr", ""), "advertise_addr", fail) if g("advertise_addr") else ""
    if advertise and ipaddress.ip_address(advertise).is_unspecified:
        raise fail("advertise_addr", "Advertise address cannot be 0.0.0.0, :: or [::]")
    advertise_wan = (
        _ip(g("advertise_addr_wan", ""), "advertise_addr_wan", fail)
        if g("advertise_addr_wan")
        else ""
    )
    if advertise_wan and ipaddress.ip_address(advertise_wan).is_unspecified:
        raise fail("advertise_addr_wan", "Advertise WAN address cannot be 0.0.0.0, :: or [::]")
    client_addrs = g("client_addr", "127.0.0.1").split()
    if not client_addrs:
        raise fail("client_addr", "client_addr cannot be empty")
    for a in client_addrs:
        _ip(a, "client_addr", fail)
    client = client_addrs[0]

    domain = g("domain", "consul") or "consul"
    if not domain.endswith("."):
        domain += "."
    alt_domain = g("alt_domain", "")
    if alt_domain:
        if not alt_domain.endswith("."):
            alt_domain += "."
        first = alt_domain.split(".", 1)[0]
        if first in ("service", "connect", "node", "query", "addr", datacenter):
            raise fail(
                "alt_domain",
                f"alt_domain cannot start with {{service,connect,node,query,addr,{datacenter}}}",
            )

    server = bool(g("server", False))
    bootstrap = bool(g("bootstrap", False))
    expect = g("bootstrap_expect", 0)
    if bootstrap and not server:
        raise fail("bootstrap", "'bootstrap = true' requires 'server = true'")
    if expect < 0:
        raise fail(
            "bootstrap_expect",
            f"bootstrap_expect cannot be {expect}. Must be greater than or equal to zero",
        )
    if expect > 0 and not server:
        raise fail("bootstrap_expect", "'bootstrap_expect > 0' requires 'server = true'")
    if expect > 0 and dev:
        raise fail("bootstrap_expect", "'bootstrap_expect > 0' not allowed in dev mode")
    if expect > 0 and bootstrap:
        raise fail(
            "bootstrap_expect",
            "'bootstrap_expect > 0' and 'bootstrap = true' are mutually exclusive",
        )
    if expect == 1:  # Consul: the same as bootstrap mode
        bootstrap, expect = True, 0
        warn.append("bootstrap_expect = 1 is the same as bootstrap mode")
    if server and not dev and not bootstrap and expect == 2:
        warn.append("bootstrap_expect = 2: a cluster of 2 servers tolerates no failure")
    elif server and not bootstrap and expect > 2 and expect % 2 == 0:
        warn.append(
            f"bootstrap_expect = {expect}: an even number of servers adds no fault tolerance"
        )
    if server and bootstrap and not dev:
        warn.append("bootstrap = true: do not enable unless necessary")
    if server and not dev and not bootstrap and expect > 1:
        warn.append(f"bootstrap_expect > 0: expecting {expect} servers")
    if re.search(r"[^A-Za-z0-9-]", node_name):
        warn.append(
            f"node name {json.dumps(node_name)} will not be discoverable via DNS: only "
            "letters, digits and dashes are valid there"
        )
    elif len(node_name) > 63:
        warn.append(
            f"node name {json.dumps(node_name)} will not be discoverable via DNS: it is "
            "longer than 63 bytes"
        )

    multiplier = perf.get("raft_multiplier", 5)
    if not 1 <= multiplier <= 10:
        raise fail(
            "performance.raft_multiplier",
            f"performance.raft_multiplier cannot be {multiplier}. Must be between 1 and 10",
        )
    if g("check_output_max_size", 4096) < 1:
        raise fail(
            "check_output_max_size",
            "check_output_max_size must be positive, to discard check output use the "
            "discard_check_output flag",
        )
    max_trailing = g("autopilot", {}).get("max_trailing_logs", 250)
    if max_trailing < 0:
        raise fail(
            "autopilot.max_trailing_logs",
            f"autopilot.max_trailing_logs cannot be {max_trailing}. "
            "Must be greater than or equal to zero",
        )
    dns_config: dict[str, Any] = g("dns_config", {})
    for key in ("udp_answer_limit", "a_record_limit"):
        if dns_config.get(key, 0) < 0:
            raise fail(
                f"dns_config.{key}",
                f"dns_config.{key} cannot be {dns_config[key]}. "
                "Must be greater than or equal to zero",
            )

    node_meta: dict[str, str] = g("node_meta", {})
    _check_node_meta(node_meta, lambda msg: fail("node_meta", f"node_meta invalid: {msg}"))

    encrypt = g("encrypt", "")
    if encrypt:
        try:
            keybytes = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise fail("encrypt", f"encrypt has invalid key: {exc}") from None
        if len(keybytes) not in (16, 24, 32):
            raise fail(
                "encrypt",
                "encrypt has invalid key: key size must be 16, 24 or 32 bytes, "
                f"not {len(keybytes)}",
            )

    for key, allowed in (
        ("default_policy", ("allow", "deny")),
        ("down_policy", ("allow", "deny", "extend-cache", "async-cache")),
    ):
        if key in acl and acl[key] not in allowed:
            raise fail(
                f"acl.{key}",
                f"acl.{key}: invalid value {json.dumps(acl[key])} (one of {', '.join(allowed)})",
            )

    wan_fed = bool(connect.get("enable_mesh_gateway_wan_federation", False))
    if wan_fed:
        _check_wan_federation(g, server, node_name, connect, fail)
    primary_gateways = tuple(g("primary_gateways", []))
    if primary_gateways:
        if not server:
            raise fail("primary_gateways", "'primary_gateways' requires 'server = true'")
        if (primary_dc or datacenter) == datacenter:
            raise fail(
                "primary_gateways",
                "'primary_gateways' should only be configured in a secondary datacenter",
            )
        for entry in primary_gateways:
            _check_gateway_address(entry, fail)
    ca_provider = connect.get("ca_provider", "")
    if ca_provider not in ("", "consul", "vault", "aws-pca"):
        raise fail("connect.ca_provider", f"{ca_provider} is not a valid CA provider")

    # Ports: -1 disables; 0 for the listeners we own means "any free port".
    def port(name: str, default: int, host: str) -> int:
        value = int(ports.get(name, default))
        if value == 0:
            if name not in ("http", "server", "serf_lan", "serf_wan"):
                return -1
            if resolve_ports:
                try:
                    return _free_port(host)
                except OSError as exc:
                    raise fail(f"ports.{name}", f"ports.{name}: no free port: {exc}") from None
        return value

    bind_host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    http_addr = addrs.get("http", "")
    resolved_ports = {
        "http_port": port("http", 8500, http_addr.split()[0] if http_addr else client),
        "https_port": port("https", -1, client),
        "dns_port": port("dns", 8600, client),
        "grpc_port": port("grpc", -1, client),
        "grpc_tls_port": port("grpc_tls", -1, client),
        "server_port": port("server", 8300, bind_host),
        "serf_lan_port": port("serf_lan", 8301, bind_host),
        "serf_wan_port": port("serf_wan", 8302, bind_host),
    }
    for lo, hi, dlo, dhi in (
        ("sidecar_min_port", "sidecar_max_port", 21000, 21255),
        ("expose_min_port", "expose_max_port", 21500, 21755),
    ):
        if ports.get(lo, dlo) > ports.get(hi, dhi):
            raise fail(
                f"ports.{lo}",
                f"ports.{lo} ({ports.get(lo, dlo)}) must be <= ports.{hi} ({ports.get(hi, dhi)})",
            )

    services = tuple(g("service", [])) + tuple(g("services", []))
    checks = tuple(g("check", [])) + tuple(g("checks", []))
    scripts_allowed = bool(g("enable_script_checks", False)) or bool(
        g("enable_local_script_checks", False)
    )
    for key in ("service", "services"):
        for i, svc in enumerate(g(key, [])):
            folded = _fold(svc)
            name = folded.get("name")
            if not isinstance(name, str) or not name:
                raise fail(f"{key}[{i}]", "service definition: missing service name")
            nested = folded.get("checks") or []
            if isinstance(folded.get("check"), dict):
                nested = [folded["check"], *nested]
            for chk in nested if isinstance(nested, list) else [nested]:
                problem = _check_problem(chk, scripts_allowed)
                if problem:
                    raise fail(f"{key}[{i}]", f"service {json.dumps(name)}: {problem}")
    for key in ("check", "checks"):
        for i, chk in enumerate(g(key, [])):
            problem = _check_problem(chk, scripts_allowed)
            if problem:
                label = _fold(chk).get("name") or _fold(chk).get("id") or ""
                raise fail(f"{key}[{i}]", f"check {json.dumps(label)}: {problem}")

    if (
        g("enable_script_checks", False)
        and not acl.get("enabled", False)
        and not g("http_config", {}).get("allow_write_http_from")
    ):
        warn.append(
            "enable_script_checks without ACLs or http_config.allow_write_http_from lets "
            "anyone who reaches the HTTP API run commands here; prefer "
            "enable_local_script_checks"
        )

    tls: dict[str, Any] = g("tls", {})
    return RuntimeConfig(
        node_name=node_name,
        node_id=node_id,
        datacenter=datacenter,
        primary_datacenter=primary_dc,
        domain=domain,
        alt_domain=alt_domain,
        data_dir=data_dir,
        dev=dev,
        server=server,
        bootstrap=bootstrap,
        bootstrap_expect=expect,
        ui=bool(ui_config.get("enabled", False)),
        log_level=log_level,
        log_json=bool(g("log_json", False)),
        pid_file=g("pid_file", ""),
        client_addr=client,
        bind_addr=bind,
        advertise_addr=advertise,
        advertise_addr_wan=advertise_wan,
        http_addr=http_addr.split()[0] if http_addr else "",
        dns_addr=addrs.get("dns", ""),
        retry_join=tuple(g("retry_join", [])),
        start_join=tuple(g("start_join", [])),
        retry_join_wan=tuple(g("retry_join_wan", [])),
        start_join_wan=tuple(g("start_join_wan", [])),
        retry_interval=_seconds(g("retry_interval"), 30.0),
        retry_max=g("retry_max", 0),
        rejoin_after_leave=bool(g("rejoin_after_leave", False)),
        leave_on_terminate=bool(g("leave_on_terminate", not server)),
        skip_leave_on_interrupt=bool(g("skip_leave_on_interrupt", server)),
        encrypt=encrypt,
        raft_multiplier=multiplier,
        rpc_hold_timeout=_seconds(perf.get("rpc_hold_timeout"), 7.0),
        session_ttl_min=_seconds(g("session_ttl_min"), 10.0),
        enable_script_checks=bool(g("enable_script_checks", False)),
        enable_local_script_checks=bool(
            g("enable_local_script_checks", False) or g("enable_script_checks", False)
        ),
        check_update_interval=_seconds(g("check_update_interval"), 300.0),
        kv_max_value_size=limits.get("kv_max_value_size", 512 * 1024),
        txn_max_req_len=limits.get("txn_max_req_len", 512 * 1024),
        acl=acl,
        connect=connect,
        tls=tls,
        dns_config=dns_config,
        autopilot=g("autopilot", {}),
        telemetry=g("telemetry", {}),
        node_meta=node_meta,
        services=services,
        checks=checks,
        sources=dict(sources),
        config_files=files,
        https_addr=addrs.get("https", ""),
        grpc_addr=addrs.get("grpc", ""),
        retry_interval_wan=_seconds(g("retry_interval_wan"), 30.0),
        retry_max_wan=g("retry_max_wan", 0),
        leave_drain_time=_seconds(perf.get("leave_drain_time"), 5.0),
        primary_gateways=primary_gateways,
        primary_gateways_interval=_seconds(g("primary_gateways_interval"), 30.0),
        recursors=tuple(g("recursors", [])),
        encrypt_verify_incoming=bool(g("encrypt_verify_incoming", True)),
        encrypt_verify_outgoing=bool(g("encrypt_verify_outgoing", True)),
        raft_protocol=raft_protocol,
        disable_update_check=bool(g("disable_update_check", False)),
        translate_wan_addrs=bool(g("translate_wan_addrs", False)),
        tagged_addresses=g("tagged_addresses", {}),
        ui_config=ui_config,
        limits=limits,
        http_config=g("http_config", {}),
        sidecar_min_port=ports.get("sidecar_min_port", 21000),
        sidecar_max_port=ports.get("sidecar_max_port", 21255),
        expose_min_port=ports.get("expose_min_port", 21500),
        expose_max_port=ports.get("expose_max_port", 21755),
        default_query_time=_seconds(g("default_query_time"), 300.0),
        max_query_time=_seconds(g("max_query_time"), 600.0),
        disable_remote_exec=bool(g("disable_remote_exec", True)),
        disable_coordinates=bool(g("disable_coordinates", False)),
        raw=merged,
        warnings=tuple(warn),
        **resolved_ports,
    )


_WANFED = "'connect.enable_mesh_gateway_wan_federation = true'"


def _check_wan_federation(
    g: Any, server: bool, node_name: str, connect: Mapping[str, Any], fail: Any
) -> None:
    """Consul's refusals for mesh-gateway WAN federation, and ours: TLS is mandatory (every
    cross-DC connection is mTLS through a gateway that routes on the SNI) and node names
    carry no dot (WAN member names are ``<node>.<dc>``, split at the last dot: Consul issue
    #12614). The order keeps the simplest mistake first: server, node name, joins, Connect,
    TLS (Consul checks Connect before the others; the messages are Consul's)."""
    if not server:
        raise fail(
            "connect.enable_mesh_gateway_wan_federation", f"{_WANFED} requires 'server = true'"
        )
    if "/" in node_name:
        raise fail("node_name", f"{_WANFED} requires that 'node_name' not contain '/' characters")
    if "." in node_name:
        raise fail(
            "node_name",
            f"{_WANFED} requires that 'node_name' not contain '.' characters "
            f"(WAN member names are <node>.<datacenter>): {json.dumps(node_name)}",
        )
    for key in ("start_join_wan", "retry_join_wan"):
        if g(key):
            raise fail(key, f"'{key}' is incompatible with {_WANFED}")
    if not connect.get("enabled", False):
        raise fail(
            "connect.enable_mesh_gateway_wan_federation",
            "'connect.enable_mesh_gateway_wan_federation=true' requires 'connect.enabled=true'",
        )
    tls: Mapping[str, Any] = g("tls", {})
    blocks = [tls.get("internal_rpc") or {}, tls.get("defaults") or {}]

    def has(*keys: str) -> bool:
        return any(block.get(k) for block in blocks for k in keys)

    missing = [
        name
        for name, keys in (
            ("tls.defaults.ca_file (or ca_path)", ("ca_file", "ca_path")),
            ("tls.defaults.cert_file", ("cert_file",)),
            ("tls.defaults.key_file", ("key_file",)),
        )
        if not has(*keys)
    ]
    if missing:
        raise fail(
            "connect.enable_mesh_gateway_wan_federation",
            f"{_WANFED} requires TLS for server RPC: set {', '.join(missing)}",
        )


def _check_gateway_address(entry: str, fail: Any) -> None:
    """A ``primary_gateways`` entry: ``host:port`` (``[v6]:port``). Consul also takes
    go-discover ``provider=...`` strings and address templates; we do not."""
    where = f"primary_gateways: {json.dumps(entry)}"
    if "provider=" in entry:
        raise fail(
            "primary_gateways",
            f"{where}: go-discover is not supported: list the gateways as host:port",
        )
    host, sep, port = entry.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an unbracketed IPv6 address
    if not sep or not host or any(c.isspace() for c in host) or "{" in host:
        raise fail("primary_gateways", f"{where}: expected host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise fail("primary_gateways", f"{where}: invalid port {json.dumps(port)}")


def _fold(d: Mapping[str, Any]) -> dict[str, Any]:
    """Keys compared as Consul's decoder does: case and underscores ignored."""
    return {str(k).lower().replace("_", ""): v for k, v in d.items()}


_SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or "
    "'enable_local_script_checks' to true"
)


def _check_problem(chk: Any, scripts_allowed: bool = True) -> str:
    """What Consul's check-definition validation would refuse, or "". A script check from a
    config file needs ``enable_script_checks`` or ``enable_local_script_checks`` (Consul's
    agent fails to start on it otherwise)."""
    if not isinstance(chk, dict):
        return "a check must be an object"
    f = _fold(chk)
    seconds: dict[str, float] = {}
    for key in ("interval", "ttl", "timeout", "deregistercriticalserviceafter"):
        value = f.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            return f'{key}: expected a duration such as "10s", got {_describe(value)}'
        try:
            seconds[key] = parse_duration(value) / 1e9
        except ValueError as exc:
            return f"{key}: invalid duration: {exc}"
    interval, ttl = seconds.get("interval", 0.0), seconds.get("ttl", 0.0)
    script = bool(f.get("args") or f.get("scriptargs") or f.get("script"))
    interval_kind = script or any(
        f.get(k) for k in ("http", "tcp", "udp", "grpc", "h2ping", "osservice")
    )
    alias = bool(f.get("aliasnode") or f.get("aliasservice"))
    if script and not scripts_allowed:
        return _SCRIPTS_DISABLED
    if interval > 0 and ttl > 0:
        return "Interval and TTL cannot both be specified"
    if interval_kind and interval <= 0:
        return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
    if interval_kind and alias:
        return "Interval cannot be set for Alias checks"
    if alias and ttl > 0:
        return "TTL must be not be set for Alias checks"
    if not interval_kind and not alias and ttl <= 0:
        return "TTL must be > 0 for TTL checks"
    return ""


def _check_node_meta(meta: Mapping[str, str], fail: Any) -> None:
    if len(meta) > 64:
        raise fail("Node metadata cannot contain more than 64 key/value pairs")
    for k, v in meta.items():
        if not k:
            raise fail("Key cannot be blank")
        if not _META_KEY.match(k):
            raise fail(f"Key contains invalid characters: {json.dumps(k)}")
        if len(k) > 128:
            raise fail(f"Key is too long (limit: 128 characters): {json.dumps(k)}")
        if k.startswith("consul-"):
            raise fail(f"Key prefix 'consul-' is reserved for internal use: {json.dumps(k)}")
        if len(v) > 512:
            raise fail(f"Value is too long (limit: 512 characters): {json.dumps(k)}")


def load(
    opts: LoadOptions, *, hostname: str | None = None, require_data_dir: bool = True
) -> RuntimeConfig:
    """Read, merge and validate every source of ``opts`` (see the module docstring)."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if opts.dev:
        merge(merged, DEV_DEFAULTS, "", {})
    warnings: list[str] = []
    files = read_sources(opts.config_files, opts.config_format, warnings)
    fragments = files + [
        Source(f"-hcl fragment {i + 1}", "hcl", text) for i, text in enumerate(opts.hcl)
    ]
    for src in fragments:
        merge(merged, parse_source(src), src.name, sources)
    if opts.flags:
        flag_values = _check_object(opts.flags, SCHEMA, "flags", "")
        flag_sources: dict[str, str] = {}
        merge(merged, flag_values, "flags", flag_sources)
        for key in flag_sources:
            sources[key] = f"flag {opts.flag_names.get(key, key)}"
    return build(
        merged,
        sources,
        dev=opts.dev,
        files=tuple(s.name.removeprefix("config file ") for s in files),
        resolve_ports=opts.resolve_ports,
        hostname=hostname,
        require_data_dir=require_data_dir,
        warnings=warnings,
    )
