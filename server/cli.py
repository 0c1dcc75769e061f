"""The ``proconsul`` command line: Consul's verbs and flags.

Flags are spelled as Consul spells them (``-dev``, ``-http-port``); the double-dash forms are
accepted too, as Consul's flag parser does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from server import __version__


def _version_text() -> str:
    return f"Proconsul v{__version__}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proconsul",
        description="A Consul-compatible service-networking server.",
    )
    parser.add_argument("-v", "-version", "--version", action="version", version=_version_text())
    commands = parser.add_subparsers(dest="command", metavar="<command>")

    agent = commands.add_parser("agent", help="run a Proconsul agent")
    agent.add_argument(
        "-dev",
        "--dev",
        action="store_true",
        help="development mode: a single in-memory server, HTTP on the -client address",
    )
    agent.add_argument(
        "-http-port",
        "--http-port",
        dest="http_port",
        type=int,
        default=8500,
        metavar="PORT",
        help="port of the HTTP API (default: 8500)",
    )
    agent.add_argument(
        "-client",
        "--client",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the client interfaces (HTTP, DNS) bind to (default: 127.0.0.1)",
    )
    agent.add_argument(
        "-data-dir",
        "--data-dir",
        dest="data_dir",
        default=None,
        metavar="PATH",
        help="directory for the agent's state",
    )
    agent.add_argument(
        "-node",
        "--node",
        default=None,
        metavar="NAME",
        help="name of this node (default: the hostname)",
    )
    agent.add_argument(
        "-server-port",
        "--server-port",
        dest="server_port",
        type=int,
        default=8300,
        metavar="PORT",
        help="port of server RPC (Raft) (default: 8300)",
    )
    agent.add_argument(
        "-datacenter",
        "--datacenter",
        default="dc1",
        metavar="NAME",
        help="datacenter of this agent (default: dc1)",
    )
    agent.add_argument(
        "-log-level",
        "--log-level",
        dest="log_level",
        default="info",
        metavar="LEVEL",
        help="trace, debug, info, warn or error (default: info)",
    )
    agent.add_argument(
        "-log-json",
        "--log-json",
        dest="log_json",
        action="store_true",
        help="write logs as JSON",
    )
    agent.add_argument(
        "-config-file",
        "--config-file",
        dest="config_file",
        action="append",
        default=[],
        metavar="PATH",
        help="a JSON config file to load (repeatable)",
    )
    agent.set_defaults(func=_cmd_agent)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def _cmd_agent(args: argparse.Namespace) -> int:
    import asyncio

    from server.agent import default_node_name, run_agent
    from server.config.runtime import RuntimeConfig
    from server.logging import configure

    if not args.dev:
        print(
            "proconsul agent: only -dev mode exists so far; run 'proconsul agent -dev'",
            file=sys.stderr,
        )
        return 1
    import json

    for path in args.config_file:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"proconsul agent: config file {path}: {exc}", file=sys.stderr)
            return 1
        if not isinstance(loaded, dict):
            print(f"proconsul agent: config file {path}: not a JSON object", file=sys.stderr)
            return 1
    if args.server_port == 0:
        args.server_port = _free_port(args.client)  # 0: any free port, as for a listener
    for flag, port in (("-http-port", args.http_port), ("-server-port", args.server_port)):
        if not 0 < port < 65536:
            print(f"proconsul agent: {flag}={port} is not a valid port", file=sys.stderr)
            return 1
    try:
        configure(args.log_level, args.log_json)
    except ValueError as exc:
        print(f"proconsul agent: {exc}", file=sys.stderr)
        return 1
    config = RuntimeConfig(
        node_name=args.node or default_node_name(),
        datacenter=args.datacenter,
        client_addr=args.client,
        bind_addr="127.0.0.1",
        http_port=args.http_port,
        server_port=args.server_port,
        dev=True,
        server=True,
        raft_multiplier=1,
    )
    try:
        asyncio.run(run_agent(config))
    except OSError as exc:
        print(f"proconsul agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _cmd_version(args: argparse.Namespace) -> int:
    print(_version_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 1
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
