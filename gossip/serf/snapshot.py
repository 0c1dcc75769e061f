"""The Serf snapshot: an append-only log of who we knew and our clocks, so a restarted agent
rejoins the members it knew and does not replay user events or queries it already saw.

The core emits ``SnapshotRecord`` outputs; the driver appends them to a file
(``append_records``), and at start replays the file (``load``) into a ``SnapshotState`` that
it passes to ``Serf(..., snapshot=...)``. When the file grows, ``rewrite`` replaces it with
the records of its current state (``compact``).

File format: JSON lines, one record per line, UTF-8::

    {"t": "alive", "name": "n1", "host": "10.0.0.1", "port": 8301}
    {"t": "not-alive", "name": "n1"}
    {"t": "clock", "member": 12, "event": 3, "query": 7}
    {"t": "leave"}

Replay semantics (as Serf's snapshotter): ``alive`` adds or updates a member, ``not-alive``
removes it, ``clock`` records the three Lamport clocks, ``leave`` (a graceful leave) forgets
every member so a restart does not rejoin, unless ``rejoin_after_leave``. Unlike Serf the
clocks survive a leave: Lamport clocks never need to go back. Lines that cannot be parsed
(a torn last write, a newer record type) are skipped and counted. Appends are not fsynced:
losing the last records costs at most a few rejoin addresses or clock ticks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gossip.messages import Address

MAX_LTIME = (1 << 64) - 1


class SnapshotFormatError(ValueError):
    """A line that is not a snapshot record."""


@dataclass(frozen=True, slots=True)
class SnapshotAlive:
    name: str
    addr: Address


@dataclass(frozen=True, slots=True)
class SnapshotNotAlive:
    name: str


@dataclass(frozen=True, slots=True)
class SnapshotClocks:
    member: int
    event: int
    query: int


@dataclass(frozen=True, slots=True)
class SnapshotLeave:
    pass


SnapshotRecord = SnapshotAlive | SnapshotNotAlive | SnapshotClocks | SnapshotLeave


@dataclass(slots=True)
class SnapshotState:
    """What a snapshot says: members we knew (name → address), the last clocks, whether our
    last act was a graceful leave, and how many unreadable lines were skipped."""

    members: dict[str, Address] = field(default_factory=dict)
    member_clock: int = 0
    event_clock: int = 0
    query_clock: int = 0
    left: bool = False
    skipped: int = 0


# --- records <-> lines ------------------------------------------------------------------------


def encode_record(rec: SnapshotRecord) -> str:
    """One JSON line (without the newline)."""
    obj: dict[str, object]
    if isinstance(rec, SnapshotAlive):
        obj = {"t": "alive", "name": rec.name, "host": rec.addr[0], "port": rec.addr[1]}
    elif isinstance(rec, SnapshotNotAlive):
        obj = {"t": "not-alive", "name": rec.name}
    elif isinstance(rec, SnapshotClocks):
        obj = {"t": "clock", "member": rec.member, "event": rec.event, "query": rec.query}
    elif isinstance(rec, SnapshotLeave):
        obj = {"t": "leave"}
    else:
        raise TypeError(f"not a snapshot record: {type(rec).__name__}")
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _get_str(obj: dict[str, object], key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise SnapshotFormatError(f"field {key!r} must be a non-empty string")
    return v


def _get_int(obj: dict[str, object], key: str, hi: int) -> int:
    v = obj.get(key)
    if type(v) is not int or not 0 <= v <= hi:
        raise SnapshotFormatError(f"field {key!r} must be an integer in 0..{hi}")
    return v


def decode_record(line: str) -> SnapshotRecord:
    """The record on ``line``. Raises ``SnapshotFormatError`` (only) if there is none."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise SnapshotFormatError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SnapshotFormatError("a record must be a JSON object")
    kind = obj.get("t")
    if kind == "alive":
        return SnapshotAlive(
            _get_str(obj, "name"), (_get_str(obj, "host"), _get_int(obj, "port", 65535))
        )
    if kind == "not-alive":
        return SnapshotNotAlive(_get_str(obj, "name"))
    if kind == "clock":
        return SnapshotClocks(
            _get_int(obj, "member", MAX_LTIME),
            _get_int(obj, "event", MAX_LTIME),
            _get_int(obj, "query", MAX_LTIME),
        )
    if kind == "leave":
        return SnapshotLeave()
    raise SnapshotFormatError(f"unknown record type {kind!r}")


# --- replay and compaction --------------------------------------------------------------------


def apply_record(
    state: SnapshotState, rec: SnapshotRecord, rejoin_after_leave: bool = False
) -> None:
    """Fold one record into ``state``."""
    if isinstance(rec, SnapshotAlive):
        state.members[rec.name] = rec.addr
        state.left = False
    elif isinstance(rec, SnapshotNotAlive):
        state.members.pop(rec.name, None)
    elif isinstance(rec, SnapshotClocks):
        state.member_clock = max(state.member_clock, rec.member)
        state.event_clock = max(state.event_clock, rec.event)
        state.query_clock = max(state.query_clock, rec.query)
    elif isinstance(rec, SnapshotLeave) and not rejoin_after_leave:
        state.members.clear()
        state.left = True


def replay(records: Iterable[SnapshotRecord], rejoin_after_leave: bool = False) -> SnapshotState:
    state = SnapshotState()
    for rec in records:
        apply_record(state, rec, rejoin_after_leave)
    return state


def compact(state: SnapshotState) -> list[SnapshotRecord]:
    """The shortest record list that replays to ``state`` (minus its skipped count)."""
    out: list[SnapshotRecord] = [
        SnapshotClocks(state.member_clock, state.event_clock, state.query_clock)
    ]
    if state.left:
        out.append(SnapshotLeave())
    out.extend(SnapshotAlive(name, addr) for name, addr in sorted(state.members.items()))
    return out


def parse_lines(lines: Iterable[str], rejoin_after_leave: bool = False) -> SnapshotState:
    """Replay snapshot lines, skipping (and counting) the ones that cannot be parsed."""
    state = SnapshotState()
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = decode_record(line)
        except SnapshotFormatError:
            state.skipped += 1
            continue
        apply_record(state, rec, rejoin_after_leave)
    return state


# --- files (used by the driver) ---------------------------------------------------------------


def load(path: str | os.PathLike[str], rejoin_after_leave: bool = False) -> SnapshotState | None:
    """The state in the snapshot file at ``path``; None if there is no such file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None
    text = data.decode("utf-8", errors="replace")
    return parse_lines(text.splitlines(), rejoin_after_leave)


def append_records(path: str | os.PathLike[str], records: Iterable[SnapshotRecord]) -> int:
    """Append ``records`` to the file at ``path`` (created if missing); returns the bytes
    written."""
    text = "".join(encode_record(r) + "\n" for r in records)
    if not text:
        return 0
    data = text.encode("utf-8")
    with open(path, "ab+") as f:
        # A torn last line (a crash mid-append) must not swallow the first new record.
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
        f.write(data)
    return len(data)


def rewrite(path: str | os.PathLike[str], state: SnapshotState) -> None:
    """Replace the file at ``path`` with the compacted ``state``: written to a temporary file,
    fsynced, then renamed over the old one, so a crash leaves the old or the new file."""
    p = Path(path)
    tmp = p.with_name(p.name + ".compact")
    data = "".join(encode_record(r) + "\n" for r in compact(state)).encode("utf-8")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
