"""The ``proconsul`` command line: Consul's verbs and flags.

Flags are spelled as Consul spells them (``-dev``, ``-http-port``); the double-dash forms are
accepted too, as Consul's flag parser does. ``proconsul agent`` builds its ``RuntimeConfig``
through ``server.config.load_runtime_config`` (flags, ``-config-file``/``-config-dir``/``-hcl``
merged as Consul merges them); ``proconsul validate`` checks config files the same way.
Every other verb (``members``, ``kv get``, ``operator raft list-peers`` …) is dispatched to
``server.clicmd``, which talks to the agent's HTTP API.
Every refusal is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from server import __version__


def _version_text() -> str:
    return f"Proconsul v{__version__}"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line and exits 1 (not 2 with usage)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(1)


def _build_parser() -> argparse.ArgumentParser:
    from server.config import add_agent_flags

    parser = _Parser(
        prog="proconsul",
        description="A Consul-compatible service-networking server.",
        allow_abbrev=False,
    )
    parser.add_argument("-v", "-version", "--version", action="version", version=_version_text())
    commands = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)

    agent = commands.add_parser("agent", help="run a Proconsul agent", allow_abbrev=False)
    add_agent_flags(agent)
    agent.set_defaults(func=_cmd_agent)

    validate = commands.add_parser(
        "validate", help="check config files and directories", allow_abbrev=False
    )
    validate.add_argument(
        "-config-format",
        "--config-format",
        dest="config_format",
        default="",
        metavar="json|hcl",
        help="format of files without a .json or .hcl extension",
    )
    validate.add_argument(
        "-quiet", "--quiet", action="store_true", help="print nothing when the config is valid"
    )
    validate.add_argument("paths", nargs="*", metavar="FILE_OR_DIR")
    validate.set_defaults(func=_cmd_validate)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def _cmd_agent(args: argparse.Namespace) -> int:
    import asyncio

    import structlog

    from server.agent.process import run_agent
    from server.config import ConfigError, load_runtime_config
    from server.logging import configure

    try:
        config = load_runtime_config(args)
    except ConfigError as exc:
        print(f"proconsul agent: {exc}", file=sys.stderr)
        return 1
    try:
        configure(config.log_level, config.log_json)
    except ValueError as exc:
        print(f"proconsul agent: {exc}", file=sys.stderr)
        return 1
    log = structlog.get_logger("config")
    for warning in config.warnings:
        log.warning("config_warning", message=warning)
    try:
        code: int = asyncio.run(run_agent(config, lambda: load_runtime_config(args)))
    except OSError as exc:
        print(f"proconsul agent: {exc}", file=sys.stderr)
        return 1
    return code


def _cmd_validate(args: argparse.Namespace) -> int:
    from server.config import ConfigError, LoadOptions, load

    if not args.paths:
        print("Must specify at least one config file or directory", file=sys.stderr)
        return 1
    opts = LoadOptions(
        config_files=list(args.paths), config_format=args.config_format, resolve_ports=False
    )
    try:
        load(opts, require_data_dir=False)
    except ConfigError as exc:
        print(f"Config validation failed: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("Configuration is valid!")
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    print(_version_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("-h", "-help", "--help"):
        from server.clicmd import main_help

        print(main_help(), end="")
        return 0
    if not args_list:
        from server.clicmd import main_help

        print(main_help(), end="", file=sys.stderr)
        return 1
    if not args_list[0].startswith("-") and args_list[0] not in ("agent", "validate", "version"):
        from server.clicmd import dispatch

        return dispatch(args_list)
    parser = _build_parser()
    args, extra = parser.parse_known_args(args_list)
    if extra:
        where = f"proconsul {args.command}" if args.command else "proconsul"
        print(f"{where}: unknown flag or argument: {' '.join(extra)}", file=sys.stderr)
        return 1
    if args.command is None:
        parser.print_help(sys.stderr)
        return 1
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
