"""Go-style command-line flags, as Consul's CLI parses them (Go's ``flag`` package).

- ``-name value``, ``-name=value``, and the same with ``--``; a boolean is ``-name`` or
  ``-name=true|false`` (never ``-name false``).
- Parsing stops at the first argument that is not a flag, and after ``--``; the rest are the
  positional arguments (so ``lock prefix cmd -x`` passes ``-x`` to the child).
- ``-h``/``-help`` asks for the command's help.

Errors are ``UsageError`` with Go's one-line messages (``flag provided but not defined: -x``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FlagSet",
    "HelpRequested",
    "UsageError",
    "http_flags",
    "parse_duration",
]


class UsageError(Exception):
    """A command line that cannot be parsed; ``str()`` is one line."""


class HelpRequested(Exception):
    """``-h`` or ``-help`` was given."""


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` in seconds (``ValueError`` with Go's message)."""
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if not m:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` for a number of seconds."""
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    ns = round(abs(seconds) * 1e9)
    if ns < 1000:
        out = f"{ns}ns"
    elif ns < 1_000_000:
        out = _trim(ns / 1e3) + "µs"
    elif ns < 1_000_000_000:
        out = _trim(ns / 1e6) + "ms"
    else:
        h, rem = divmod(ns, 3600 * 10**9)
        m, rem = divmod(rem, 60 * 10**9)
        sec = _trim(rem / 1e9) + "s"
        out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + sec
    return ("-" if neg else "") + out


def _trim(x: float) -> str:
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "t", "true"):
        return True
    if low in ("0", "f", "false"):
        return False
    raise ValueError(f'parse error: strconv.ParseBool: parsing "{text}": invalid syntax')


@dataclass
class _Flag:
    name: str
    kind: str  # "str", "bool", "int", "uint", "duration", "list", "map"
    default: Any
    help: str
    metavar: str = ""
    env: str = ""


@dataclass
class FlagSet:
    """A command's flags; ``parse(args)`` returns the positional arguments and fills
    ``values`` (read with ``fs[name]`` / ``fs.was_set(name)``)."""

    usage: str = ""
    flags: dict[str, _Flag] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    set_names: set[str] = field(default_factory=set)
    validators: list[Callable[[FlagSet], None]] = field(default_factory=list)

    def _add(self, flag: _Flag) -> None:
        self.flags[flag.name] = flag
        self.values[flag.name] = (
            list(flag.default)
            if flag.kind in ("list",)
            else (dict(flag.default) if flag.kind == "map" else flag.default)
        )

    def string(self, name: str, default: str = "", help: str = "", metavar: str = "") -> None:
        self._add(_Flag(name, "str", default, help, metavar or "<value>"))

    def boolean(self, name: str, default: bool = False, help: str = "") -> None:
        self._add(_Flag(name, "bool", default, help))

    def integer(self, name: str, default: int = 0, help: str = "", unsigned: bool = False) -> None:
        self._add(_Flag(name, "uint" if unsigned else "int", default, help, "<int>"))

    def duration(self, name: str, default: float = 0.0, help: str = "") -> None:
        self._add(_Flag(name, "duration", default, help, "<duration>"))

    def repeated(self, name: str, help: str = "", metavar: str = "<value>") -> None:
        self._add(_Flag(name, "list", [], help, metavar))

    def mapping(self, name: str, help: str = "") -> None:
        self._add(_Flag(name, "map", {}, help, "<key=value>"))

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def was_set(self, name: str) -> bool:
        return name in self.set_names

    def _set(self, flag: _Flag, raw: str) -> None:
        name = flag.name
        try:
            if flag.kind == "str":
                self.values[name] = raw
            elif flag.kind == "bool":
                self.values[name] = _parse_bool(raw)
            elif flag.kind in ("int", "uint"):
                try:
                    value = int(raw, 0)
                except ValueError:
                    raise ValueError("parse error") from None
                if flag.kind == "uint" and value < 0:
                    raise ValueError("parse error")
                self.values[name] = value
            elif flag.kind == "duration":
                try:
                    self.values[name] = parse_duration(raw)
                except ValueError:
                    raise ValueError("parse error") from None
            elif flag.kind == "list":
                self.values[name].append(raw)
            elif flag.kind == "map":
                mkey, sep, mval = raw.partition("=")
                if not sep:
                    raise ValueError(f"Missing = in argument: {raw}")
                self.values[name][mkey] = mval
        except ValueError as exc:
            raise UsageError(f'invalid value "{raw}" for flag -{name}: {exc}') from None
        self.set_names.add(name)

    def parse(self, args: Sequence[str]) -> list[str]:
        rest = list(args)
        while rest:
            arg = rest[0]
            if len(arg) < 2 or arg[0] != "-":
                break
            if arg == "--":
                rest.pop(0)
                break
            rest.pop(0)
            body = arg[2:] if arg.startswith("--") else arg[1:]
            if not body or body[0] in "-=":
                raise UsageError(f"bad flag syntax: {arg}")
            name, has_value, value = body.partition("=")
            flag = self.flags.get(name)
            if flag is None:
                if name in ("h", "help"):
                    raise HelpRequested()
                raise UsageError(f"flag provided but not defined: -{name}")
            if flag.kind == "bool":
                self._set(flag, value if has_value else "true")
                continue
            if not has_value:
                if not rest:
                    raise UsageError(f"flag needs an argument: -{name}")
                value = rest.pop(0)
            self._set(flag, value)
        for check in self.validators:
            check(self)
        return rest

    def help_text(self) -> str:
        """The usage text followed by the flags, as Consul's ``flags.Usage`` prints them."""
        usage = self.usage.strip("\n")
        usage = usage.replace("Usage: consul ", "Usage: proconsul ").replace(
            "$ consul ", "$ proconsul "
        )
        lines = [usage, ""]
        for name in sorted(self.flags):
            flag = self.flags[name]
            head = f"  -{name}" if flag.kind == "bool" else f"  -{name}={flag.metavar}"
            lines.append(head)
            if flag.help:
                lines.extend(_wrap(flag.help, "     "))
            lines.append("")
        return "\n".join(lines).rstrip("\n") + "\n"


def _wrap(text: str, indent: str, width: int = 80) -> list[str]:
    words = text.split()
    out: list[str] = []
    line = indent
    for word in words:
        if len(line) + len(word) + 1 > width and line.strip():
            out.append(line.rstrip())
            line = indent
        line += word + " "
    if line.strip():
        out.append(line.rstrip())
    return out


def http_flags(fs: FlagSet, server: bool = True) -> None:
    """Consul's ``HTTPFlags``: the client flags and, for commands that read server state, the
    server flags (``-datacenter``, ``-stale``)."""
    fs.string(
        "http-addr",
        os.environ.get("CONSUL_HTTP_ADDR", ""),
        "The `address` and port of the Consul HTTP agent. The value can be an IP address or "
        "DNS address, but it must also include the port. This can also be specified via the "
        "CONSUL_HTTP_ADDR environment variable. The default value is http://127.0.0.1:8500. "
        "The scheme can also be set to HTTPS by setting the environment variable "
        "CONSUL_HTTP_SSL=true.",
        "<address>",
    )
    fs.string(
        "token",
        "",
        "ACL token to use in the request. This can also be specified via the "
        "CONSUL_HTTP_TOKEN environment variable. If unspecified, the query will default to "
        "the token of the Consul agent at the HTTP address.",
    )
    fs.string(
        "token-file",
        "",
        "File containing the ACL token to use in the request instead of one specified via "
        "the -token argument or CONSUL_HTTP_TOKEN environment variable. This can also be "
        "specified via the CONSUL_HTTP_TOKEN_FILE environment variable.",
    )
    fs.string("ca-file", "", "Path to a CA file to use for TLS when communicating with Consul.")
    fs.string("ca-path", "", "Path to a directory of CA certificates to use for TLS.")
    fs.string("client-cert", "", "Path to a client cert file to use for TLS.")
    fs.string("client-key", "", "Path to a client key file to use for TLS.")
    fs.string("tls-server-name", "", "The server name to use as the SNI host for TLS.")
    if server:
        fs.string(
            "datacenter",
            "",
            "Name of the datacenter to query. If unspecified, this will default to the "
            "datacenter of the queried agent.",
        )
        fs.string(
            "namespace",
            "",
            "(Enterprise-only) Specifies the namespace to query. If not provided, the "
            "namespace will be inferred from the request's ACL token, or will default to the "
            "`default` namespace.",
        )
        fs.string(
            "partition",
            "",
            "(Enterprise-only) Specifies the admin partition to query. If not provided, the "
            "admin partition will be inferred from the request's ACL token, or will default "
            "to the `default` admin partition.",
        )
        fs.boolean(
            "stale",
            False,
            "Permit any Consul server (non-leader) to respond to this request. This allows "
            "for lower latency and higher throughput, but can result in stale data.",
        )
