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
    agent.set_defaults(func=_cmd_agent)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def _cmd_agent(args: argparse.Namespace) -> int:
    print("proconsul agent: not implemented yet", file=sys.stderr)
    return 1


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
