"""Consul's CLI verbs beyond ``agent``/``validate``/``version``: every command talks to the
agent's HTTP API (``server.clicmd.api``), parses its flags Go-style (``server.clicmd.flags``)
and prints and exits as Consul's does (``server.clicmd.base``).

One module per command group: ``agent`` (members, join, leave, force-leave, reload, info,
monitor, maint, keygen, keyring, event), ``kv``, ``catalog`` (catalog and services),
``operator``, ``snapshot``, ``watch``, ``lock``, ``tls``.

``dispatch(argv)`` runs the longest command name that prefixes ``argv`` (``operator raft
list-peers``), as mitchellh/cli does; a group name alone prints the group's subcommands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

from server.clicmd import (  # noqa: F401
    agent,
    catalog,
    connect,
    kv,
    lock,
    operator,
    snapshot,
    tls,
    watch,
)
from server.clicmd.base import COMMANDS, run_command

__all__ = ["GROUPS", "dispatch", "main_help", "owns"]

#: Command groups and their synopses (Consul's texts).
GROUPS = {
    "kv": "Interact with the key-value store",
    "catalog": "Interact with the catalog",
    "services": "Interact with services",
    "operator": "Provides cluster-level tools for Consul operators",
    "operator raft": "Provides cluster-level tools for Consul operators",
    "operator autopilot": "Provides tools for modifying Autopilot configuration",
    "snapshot": "Saves, restores and inspects snapshots of Consul server state",
    "tls": "Builtin helpers for creating CAs and certificates",
    "tls ca": "Helpers for CAs",
    "tls cert": "Helpers for certificates",
    "connect": "Interact with Consul Connect",
}

#: Commands ``server.cli`` implements itself.
LOCAL = {
    "agent": "Runs a Consul agent",
    "validate": "Validate config files/directories",
    "version": "Prints the Consul version",
}


def owns(argv: Sequence[str]) -> bool:
    """Whether ``argv`` names a command (or group) this package runs."""
    return bool(argv) and (argv[0] in COMMANDS or argv[0] in GROUPS)


def _resolve(argv: Sequence[str]) -> tuple[str, list[str]]:
    words = list(argv)
    for n in range(min(3, len(words)), 0, -1):
        name = " ".join(words[:n])
        if name in COMMANDS or name in GROUPS:
            return name, words[n:]
    return "", words


def _group_help(group: str) -> str:
    subs = {
        name[len(group) + 1 :]: cls.synopsis
        for name, cls in ((n, COMMANDS[n]) for n in COMMANDS)
        if name.startswith(group + " ")
    }
    for g, syn in GROUPS.items():
        if g.startswith(group + " "):
            subs[g[len(group) + 1 :]] = syn
    direct = {k: v for k, v in subs.items() if " " not in k}
    width = max(len(k) for k in direct) if direct else 0
    lines = [
        f"Usage: proconsul {group} <subcommand> [options] [args]",
        "",
        f"  {GROUPS[group]}.",
        "",
        "Subcommands:",
    ]
    lines += [f"    {k.ljust(width)}    {direct[k]}" for k in sorted(direct)]
    return "\n".join(lines) + "\n"


def main_help() -> str:
    top = {n: COMMANDS[n].synopsis for n in COMMANDS if " " not in n}
    top.update({g: s for g, s in GROUPS.items() if " " not in g})
    top.update(LOCAL)
    width = max(len(k) for k in top)
    lines = [
        "Usage: proconsul [--version] [--help] <command> [<args>]",
        "",
        "Available commands are:",
    ]
    lines += [f"    {k.ljust(width)}    {top[k]}" for k in sorted(top)]
    return "\n".join(lines) + "\n"


def dispatch(
    argv: Sequence[str],
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    stdin: IO[str] | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    name, rest = _resolve(argv)
    if not name:
        err.write(f'proconsul: unknown command "{argv[0] if argv else ""}"\n')
        return 127
    if name in COMMANDS:
        return run_command(COMMANDS[name](), rest, out, err, stdin)
    # A group: help on request, otherwise a one-line refusal naming what is missing.
    if not rest or rest[0] in ("-h", "-help", "--help"):
        if rest:
            out.write(_group_help(name))
            return 0
        err.write(_group_help(name))
        return 1
    err.write(
        f'proconsul {name}: unknown subcommand "{rest[0]}" (run "proconsul {name} -h" for the list)\n'
    )
    return 1
