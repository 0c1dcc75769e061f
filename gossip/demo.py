"""A small gossip agent for trying the library out and for the real-process tests.

    python -m gossip.demo --name N --bind 127.0.0.1:PORT [--join HOST:PORT,...]
                          [--encrypt KEY_B64] [--config local|lan|wan] [--core serf|memberlist]
                          [--snapshot PATH]

It runs a ``GossipNode`` (a ``Serf`` core by default, or a bare ``Memberlist``) over a
``NetTransport`` and prints one JSON object per line on stdout:

    {"ready": "n1", "addr": "127.0.0.1:7946"}              listening (printed before joining)
    {"joined": 1} / {"join_error": "..."}                  outcome of --join (or of a rejoin)
    {"rejoining": ["127.0.0.1:7947", ...]}                 no --join: rejoining the snapshot's members
    {"event": "member-join", "name": "n2", "addr": "127.0.0.1:7947", "status": "alive"}
        (also member-leave, member-failed, member-update, member-reap, member-conflict)
    {"event": "user", "name": "deploy", "payload": "v1", "ltime": 3}
    {"event": "query", "name": ..., "payload": ..., "source": ...}  (answered with our name)
    {"event": "query-ack" | "query-response" | "query-done", ...}
    {"members": [{"name": ..., "addr": ..., "status": ...}, ...]}  answer to `members`
    {"stats": {...}}                                       answer to `stats`
    {"left": "n1", "propagated": true}                     after a graceful leave; then exit 0
    {"error": "..."}                                       a command failed

Commands on stdin, one per line: ``event NAME [PAYLOAD]``, ``query NAME [PAYLOAD]``,
``members``, ``stats``, ``join HOST:PORT[,...]``, ``leave``. SIGTERM or SIGINT leave
gracefully, like ``leave``. With ``--exit-on-eof`` the end of stdin does too (so agents
started by a test do not outlive it). Logs go to stderr.

The ``local`` configuration (probe 1 s, probe timeout 200 ms, suspicion_mult 3, ...) is the
default, so a cluster on one machine converges and detects failures in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from gossip.config import (
    GossipConfig,
    default_lan_config,
    default_local_config,
    default_wan_config,
)
from gossip.keyring import Keyring
from gossip.memberlist import MemberEvent as MLMemberEvent
from gossip.memberlist import Memberlist, UserMessage
from gossip.messages import Address, MemberState
from gossip.node import GossipNode, JoinError
from gossip.serf import (
    MemberConflict,
    MemberEvent,
    Query,
    QueryAck,
    QueryDone,
    QueryResponse,
    Serf,
    SerfConfig,
    UserEvent,
)
from gossip.serf import snapshot as serf_snapshot
from gossip.transport import NetTransport, TransportError

CONFIGS: dict[str, Callable[[str, Address], GossipConfig]] = {
    "local": default_local_config,
    "lan": default_lan_config,
    "wan": default_wan_config,
}

LEAVE_TIMEOUT = 5.0  # s a graceful leave may take before we stop anyway

_ML_KINDS = {"join": "member-join", "update": "member-update", "conflict": "member-conflict"}


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port``; ``ValueError`` naming the problem."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address {text!r}: port {port} is outside 0..65535")
    return (host, port)


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout. A closed stdout (the reader went away) is ignored: the agent
    keeps gossiping and still leaves on SIGTERM."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name: str = args.name
        self.node: GossipNode[Any] | None = None
        self.done = asyncio.Event()
        self.leaving = False
        self.tasks: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------- events

    def on_event(self, ev: object) -> None:
        if isinstance(ev, MemberEvent):
            for m in ev.members:
                emit(
                    {
                        "event": ev.kind.value,
                        "name": m.name,
                        "addr": format_address(m.addr),
                        "status": m.status.name.lower(),
                    }
                )
        elif isinstance(ev, MLMemberEvent):
            kind = _ML_KINDS.get(ev.kind)
            if kind is None:  # "leave": a graceful leave or a failure
                kind = "member-leave" if ev.member.state == MemberState.LEFT else "member-failed"
            emit(
                {
                    "event": kind,
                    "name": ev.member.name,
                    "addr": format_address(ev.member.addr),
                    "status": ev.member.state.name.lower(),
                }
            )
        elif isinstance(ev, UserEvent):
            emit(
                {"event": "user", "name": ev.name, "payload": _text(ev.payload), "ltime": ev.ltime}
            )
        elif isinstance(ev, UserMessage):
            emit({"event": "user-message", "payload": _text(ev.payload)})
        elif isinstance(ev, MemberConflict):
            emit(
                {
                    "event": "member-conflict",
                    "name": ev.name,
                    "addr": format_address(ev.other_addr),
                    "local": ev.local,
                }
            )
        elif isinstance(ev, Query):
            emit(
                {
                    "event": "query",
                    "name": ev.name,
                    "payload": _text(ev.payload),
                    "source": ev.source,
                }
            )
            self._spawn(self._respond(ev))
        elif isinstance(ev, QueryAck):
            emit({"event": "query-ack", "from": ev.source})
        elif isinstance(ev, QueryResponse):
            emit({"event": "query-response", "from": ev.source, "payload": _text(ev.payload)})
        elif isinstance(ev, QueryDone):
            emit({"event": "query-done", "acks": list(ev.acks), "responses": list(ev.responses)})
        elif isinstance(ev, SnapshotRecordTypes) and self.args.snapshot:
            # Serf's snapshot: a restarted agent rejoins the members it knew.
            try:
                serf_snapshot.append_records(self.args.snapshot, [ev])
            except OSError as exc:
                emit({"error": f"snapshot: {exc}"})

    async def _respond(self, q: Query) -> None:
        assert self.node is not None
        with contextlib.suppress(Exception):
            await self.node.respond(q.id, self.name.encode())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -------------------------------------------------------------- commands

    async def command(self, line: str) -> None:
        node = self.node
        assert node is not None
        words = line.strip().split(" ", 2)
        cmd = words[0]
        try:
            if cmd == "":
                return
            if cmd in ("event", "query"):
                if len(words) < 2 or not words[1]:
                    raise ValueError(f"usage: {cmd} NAME [PAYLOAD]")
                payload = words[2].encode() if len(words) > 2 else b""
                if cmd == "event":
                    ltime = await node.user_event(words[1], payload)
                    emit({"sent_event": words[1], "ltime": ltime})
                else:
                    qid = await node.query(words[1], payload)
                    emit({"sent_query": words[1], "ltime": qid.ltime, "id": qid.id})
            elif cmd == "members":
                members = await node.members()
                emit(
                    {
                        "members": [
                            {"name": m.name, "addr": format_address(m.addr), "status": m.status}
                            for m in members
                        ]
                    }
                )
            elif cmd == "stats":
                emit({"stats": node.counters()})
            elif cmd == "join":
                if len(words) < 2:
                    raise ValueError("usage: join HOST:PORT[,HOST:PORT...]")
                await self.join([parse_address(a) for a in words[1].split(",") if a.strip()], 1)
            elif cmd == "leave":
                await self.leave()
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as exc:
            emit({"error": f"{cmd}: {exc}"})

    async def join(self, seeds: Sequence[Address], attempts: int) -> None:
        assert self.node is not None
        for attempt in range(1, attempts + 1):
            try:
                n = await self.node.join(seeds, ignore_old=True)
            except JoinError as exc:
                if attempt == attempts:
                    emit({"join_error": str(exc)})
                    return
                await asyncio.sleep(0.5)
            else:
                emit({"joined": n})
                return

    async def leave(self) -> None:
        if self.leaving or self.node is None:
            return
        self.leaving = True
        try:
            propagated = await self.node.leave(LEAVE_TIMEOUT)
            emit({"left": self.name, "propagated": propagated})
        finally:
            self.done.set()

    # -------------------------------------------------------------- main

    async def run(self) -> int:
        args = self.args
        bind = parse_address(args.bind)
        template = CONFIGS[args.config](self.name, bind)
        keyring = Keyring.from_b64(args.encrypt) if args.encrypt else None
        transport = NetTransport(bind, tcp_timeout=template.tcp_timeout)
        advertise = await transport.bind()
        cfg = template.replace(advertise=advertise)
        rng = random.Random()
        core: Serf | Memberlist
        previous: list[Address] = []
        if args.core == "serf":
            state = serf_snapshot.load(args.snapshot) if args.snapshot else None
            serf = Serf(SerfConfig(), cfg, rng, time.monotonic(), {}, snapshot=state)
            previous = [a for a in serf.previous_members() if a != advertise]
            if state is not None and args.snapshot:
                serf_snapshot.rewrite(args.snapshot, state)  # compact what we replayed
            core = serf
        else:
            core = Memberlist(cfg, rng, time.monotonic())
        node: GossipNode[Any] = GossipNode(core, transport, keyring, on_event=self.on_event)
        self.node = node
        await node.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: self._spawn(self.leave()))
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(
            target=_read_stdin, args=(loop, lines), name="gossip-demo-stdin", daemon=True
        ).start()
        emit({"ready": self.name, "addr": format_address(advertise)})
        if args.join:
            seeds = [parse_address(a) for a in args.join.split(",") if a.strip()]
            self._spawn(self.join(seeds, args.join_attempts))
        elif previous:
            emit({"rejoining": [format_address(a) for a in previous]})
            self._spawn(self.join(previous, args.join_attempts))
        self._spawn(self._commands(lines))
        await self.done.wait()
        await node.stop()
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        return 0

    async def _commands(self, lines: asyncio.Queue[str | None]) -> None:
        while True:
            line = await lines.get()
            if line is None:
                if self.args.exit_on_eof:
                    await self.leave()
                return
            await self.command(line)


SnapshotRecordTypes = (
    serf_snapshot.SnapshotAlive,
    serf_snapshot.SnapshotNotAlive,
    serf_snapshot.SnapshotClocks,
    serf_snapshot.SnapshotLeave,
)


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """A daemon thread: blocking reads of stdin, handed to the event loop."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
    except (OSError, ValueError, RuntimeError):
        pass
    with contextlib.suppress(RuntimeError):  # the loop may be closed already
        loop.call_soon_threadsafe(lines.put_nowait, None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gossip.demo", description="A small gossip agent.")
    p.add_argument("--name", required=True, help="node name (unique in the cluster)")
    p.add_argument("--bind", required=True, help="host:port for UDP and TCP (port 0: any)")
    p.add_argument("--join", default="", help="comma-separated host:port of members to join")
    p.add_argument("--join-attempts", type=int, default=1, help="tries of --join, 0.5 s apart")
    p.add_argument("--encrypt", default="", help="gossip encryption key (base64, 16/24/32 bytes)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="local")
    p.add_argument("--core", choices=("serf", "memberlist"), default="serf")
    p.add_argument("--exit-on-eof", action="store_true", help="leave when stdin ends")
    p.add_argument(
        "--snapshot",
        default="",
        help="Serf snapshot file: members and clocks survive a restart (rejoined without --join)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        return asyncio.run(Agent(args).run())
    except (ValueError, OSError, TransportError) as exc:
        print(f"gossip.demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
