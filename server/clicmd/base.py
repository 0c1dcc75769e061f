"""The command framework: every command is a ``Command`` with Consul's name, synopsis, usage
text and flags; ``run_command`` parses its flags Go-style and turns every refusal into one line
on stderr with Consul's exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from server.clicmd.api import APIError, Client, client_from_flags
from server.clicmd.flags import FlagSet, HelpRequested, UsageError, http_flags

__all__ = [
    "COMMANDS",
    "Command",
    "Context",
    "Fail",
    "columnize",
    "register",
    "run_command",
    "sigterm_as_interrupt",
]


def sigterm_as_interrupt() -> None:
    """Long-running commands (watch, monitor) stop on SIGTERM as on Ctrl-C, as Consul's
    shutdown channel makes them."""
    import contextlib
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (tests)
        signal.signal(signal.SIGTERM, handler)


class Fail(Exception):
    """A refusal: ``message`` goes to stderr (one line), ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    fs: FlagSet
    args: list[str]
    stdout: IO[str] = field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    stdin: IO[str] = field(default_factory=lambda: sys.stdin)
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = client_from_flags(self.fs)
        return self._client

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def err(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def __getitem__(self, name: str) -> Any:
        return self.fs[name]


class Command:
    """One CLI command. Subclasses set ``name``, ``synopsis``, ``usage`` and implement
    ``setup`` (flags) and ``run``."""

    name: ClassVar[str] = ""
    synopsis: ClassVar[str] = ""
    usage: ClassVar[str] = ""
    #: "server": client + server HTTP flags; "client": client flags only; "": none.
    http: ClassVar[str] = "server"

    def setup(self, fs: FlagSet) -> None:
        """Add this command's own flags."""

    def run(self, ctx: Context) -> int:
        raise NotImplementedError

    def flagset(self) -> FlagSet:
        fs = FlagSet(usage=self.usage)
        self.setup(fs)
        if self.http:
            http_flags(fs, server=self.http == "server")
        return fs


COMMANDS: dict[str, type[Command]] = {}


def register(cls: type[Command]) -> type[Command]:
    COMMANDS[cls.name] = cls
    return cls


def run_command(
    cmd: Command,
    argv: Sequence[str],
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    stdin: IO[str] | None = None,
    client: Client | None = None,
) -> int:
    """Parse ``argv`` into ``cmd``'s flags and run it; ``client`` replaces the HTTP client the
    flags describe (tests)."""
    fs = cmd.flagset()
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = fs.parse(argv)
    except HelpRequested:
        out.write(fs.help_text())
        return 0
    except UsageError as exc:
        err.write(f"{exc}\n")
        return 1
    ctx = Context(fs, args, out, err, stdin or sys.stdin, client)
    try:
        return cmd.run(ctx)
    except Fail as exc:
        if str(exc):
            ctx.err(str(exc))
        return exc.code
    except APIError as exc:
        ctx.err(f"Error: {exc}")
        return 1
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # An answer of an unexpected shape (not Consul's JSON): one line, no traceback.
        ctx.err(f"Error: unexpected answer from the agent ({type(exc).__name__}: {exc})")
        return 1
    except BrokenPipeError:  # stdout closed (| head): nothing more to say
        return 1
    except OSError as exc:
        ctx.err(f"Error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


def columnize(rows: Sequence[Sequence[str]], glue: str = "  ") -> str:
    """ryanuber/columnize as Consul uses it: every column but the last padded to its widest
    cell, joined by two spaces."""
    if not rows:
        return ""
    ncols = max(len(r) for r in rows)
    widths = [0] * ncols
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in rows:
        parts = [
            cell if i == len(row) - 1 else cell.ljust(widths[i]) + glue
            for i, cell in enumerate(row)
        ]
        lines.append("".join(parts))
    return "\n".join(lines)
