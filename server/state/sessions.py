"""Sessions: the session table, session invalidation, and Consul's session validation rules.

Two layers of checks, as in Consul:

* ``validate_session_request`` is what Consul's ``Session.Apply`` RPC endpoint checks before the
  Raft apply (``agent/consul/session_endpoint.go``): ``Must provide ID`` (destroy),
  ``Must provide Node`` (create), ``Invalid Behavior setting '<b>'``, and the TTL:
  ``Session TTL '<ttl>' invalid: <Go's time.ParseDuration error>`` and
  ``Invalid Session TTL '<ns>', must be between [<min>=<max>]`` (min is the agent's
  ``session_ttl_min``, 10s by default; max is ``structs.SessionTTLMax``, 24h; both printed as Go
  durations, e.g. ``[10s=24h0m0s]``; a TTL of 0 is allowed).
* ``SessionTable.create_txn`` is what the state store checks while applying
  (``agent/consul/state/session.go``, ``session_ce.go``): ``Missing session ID``,
  ``Invalid session behavior: <b>`` (an empty behavior becomes ``release``),
  ``Missing node registration``, ``Missing check '<id>' registration`` and
  ``Check '<id>' is in critical state``.

The catalog does not exist yet, so node and check lookups are injected callables:
``node_exists(node) -> bool`` (default: every node exists) and
``check_status(node, check_id) -> status | None`` (default: every check exists and passes).

Destroying (invalidating) a session releases every key it holds, or deletes them for behavior
``delete``, in the same write; then each of those keys gets a lock delay (see ``kvs``). Consul
does not write anything on a session renew: TTL timers live in memory on the leader, so
``session_renew`` here is a read. Session IDs and node names are matched case-insensitively,
as Consul's lowercasing indexes do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from server.filter.strconv import go_quote
from server.state.kvs import MAX_LOCK_DELAY_NS, KVTable, LockDelay, StateError
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = [
    "BEHAVIOR_DELETE",
    "BEHAVIOR_RELEASE",
    "DEFAULT_LOCK_DELAY_NS",
    "SESSION_TTL_MAX_NS",
    "SESSION_TTL_MIN_NS",
    "SESSION_TTL_MULTIPLIER",
    "TABLE_SESSIONS",
    "CheckStatus",
    "NodeExists",
    "ServiceCheck",
    "Session",
    "SessionTable",
    "format_duration",
    "parse_duration",
    "validate_session_request",
]

TABLE_SESSIONS = "sessions"

BEHAVIOR_RELEASE = "release"
BEHAVIOR_DELETE = "delete"

_NS = 1
_US = 1000 * _NS
_MS = 1000 * _US
_S = 1000 * _MS
_M = 60 * _S
_H = 60 * _M

SESSION_TTL_MAX_NS = 24 * _H
"""Consul's ``structs.SessionTTLMax``."""
SESSION_TTL_MIN_NS = 10 * _S
"""Default of the agent's ``session_ttl_min``."""
SESSION_TTL_MULTIPLIER = 2
"""Consul's ``structs.SessionTTLMultiplier``: the leader invalidates a session after TTL × 2."""
DEFAULT_LOCK_DELAY_NS = 15 * _S
"""The lock delay Consul's HTTP endpoint gives a session that does not set one."""

NodeExists = Callable[[str], bool]
CheckStatus = Callable[[str, str], str | None]


def _always_exists(node: str) -> bool:
    return True


def _always_passing(node: str, check_id: str) -> str | None:
    return "passing"


# --- Go durations ------------------------------------------------------------------------

_UNITS = {
    "ns": _NS,
    "us": _US,
    "\u00b5s": _US,  # micro sign
    "\u03bcs": _US,  # Greek small letter mu
    "ms": _MS,
    "s": _S,
    "m": _M,
    "h": _H,
}
_LIMIT = 1 << 63


def _time_quote(text: str) -> str:
    """Go's ``time.quote``: like %q, but every non-ASCII or control character is written as
    ``\\x`` escapes of its UTF-8 bytes."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if code >= 0x80 or code < 0x20:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            if ch in '"\\':
                out.append("\\")
            out.append(ch)
    out.append('"')
    return "".join(out)


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, in nanoseconds. Raises ValueError with Go's message
    (``time: invalid duration "x"``, ``time: missing unit in duration "10"``,
    ``time: unknown unit "d" in duration "1d"``)."""

    def invalid() -> ValueError:
        return ValueError(f"time: invalid duration {_time_quote(text)}")

    s = text
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid()
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise invalid()
        # leading integer
        i = 0
        whole = 0
        while i < len(s) and "0" <= s[i] <= "9":
            if whole > (_LIMIT - 1) // 10:
                raise invalid()
            whole = whole * 10 + ord(s[i]) - 48
            if whole > _LIMIT:
                raise invalid()
            i += 1
        consumed_whole = i > 0
        s = s[i:]
        # optional fraction: digits past the precision of uint64 are dropped, as in Go
        frac = 0
        scale = 1.0
        consumed_frac = False
        if s and s[0] == ".":
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    if frac > (_LIMIT - 1) // 10:
                        overflow = True
                    else:
                        candidate = frac * 10 + ord(s[i]) - 48
                        if candidate > _LIMIT:
                            overflow = True
                        else:
                            frac = candidate
                            scale *= 10
                i += 1
            consumed_frac = i > 0
            s = s[i:]
        if not consumed_whole and not consumed_frac:
            raise invalid()
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {_time_quote(text)}")
        unit_name = s[:i]
        s = s[i:]
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise ValueError(
                f"time: unknown unit {_time_quote(unit_name)} in duration {_time_quote(text)}"
            )
        if whole > _LIMIT // unit:
            raise invalid()
        value = whole * unit
        if frac > 0:
            value += int(float(frac) * (float(unit) / scale))
            if value > _LIMIT:
                raise invalid()
        total += value
        if total > _LIMIT:
            raise invalid()
    if negative:
        return -total
    if total > _LIMIT - 1:
        raise invalid()
    return total


def _fmt_frac(value: int, precision: int) -> tuple[str, int]:
    digits = []
    printed = False
    for _ in range(precision):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        value //= 10
    text = "." + "".join(reversed(digits)) if printed else ""
    return text, value


def format_duration(ns: int) -> str:
    """Go's ``time.Duration.String`` (``10s``, ``1m30s``, ``24h0m0s``, ``1.5ms``, ``0s``)."""
    sign = "-" if ns < 0 else ""
    u = -ns if ns < 0 else ns
    if u < _S:
        if u == 0:
            return "0s"
        if u < _US:
            return f"{sign}{u}ns"
        precision, unit = (3, "\u00b5s") if u < _MS else (6, "ms")
        frac, whole = _fmt_frac(u, precision)
        return f"{sign}{whole}{frac}{unit}"
    frac, seconds = _fmt_frac(u, 9)
    text = f"{seconds % 60}{frac}s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        hours = minutes // 60
        if hours:
            text = f"{hours}h{text}"
    return sign + text


# --- rows --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    """A service health check a session depends on (Consul's ``structs.ServiceCheck``)."""

    id: str
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class Session:
    """A session (Consul's ``structs.Session``). ``lock_delay`` is in nanoseconds, ``ttl`` a Go
    duration string or ``""``. Check lists are ``None`` for Go's nil slice (JSON ``null``).
    ``checks`` is the field deprecated in Consul 1.7 (shown only when non-empty)."""

    id: str
    node: str
    name: str = ""
    lock_delay: int = 0
    behavior: str = BEHAVIOR_RELEASE
    ttl: str = ""
    node_checks: tuple[str, ...] | None = None
    service_checks: tuple[ServiceCheck, ...] | None = None
    checks: tuple[str, ...] | None = None
    create_index: int = 0
    modify_index: int = 0

    def check_ids(self) -> list[str]:
        """Every check the session depends on (Consul's ``Session.CheckIDs``)."""
        ids = list(self.node_checks or ())
        ids.extend(check.id for check in self.service_checks or ())
        ids.extend(self.checks or ())
        return ids

    def to_api(self) -> dict[str, Any]:
        """The session as Consul's HTTP API shows it (``GET /v1/session/info/<id>``)."""
        out: dict[str, Any] = {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay,
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": None if self.node_checks is None else list(self.node_checks),
            "ServiceChecks": (
                None
                if self.service_checks is None
                else [{"ID": c.id, "Namespace": c.namespace} for c in self.service_checks]
            ),
        }
        if self.checks:
            out["Checks"] = list(self.checks)
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


def validate_session_request(
    session: Session, *, op: str = "create", ttl_min_ns: int = SESSION_TTL_MIN_NS
) -> Session:
    """The checks Consul's ``Session.Apply`` endpoint makes before the Raft apply (``op`` is
    ``"create"`` or ``"destroy"``). Returns the session with its behavior defaulted to
    ``release``; raises ``StateError`` with Consul's text."""
    if op == "destroy" and not session.id:
        raise StateError("Must provide ID")
    if op == "create" and not session.node:
        raise StateError("Must provide Node")
    behavior = session.behavior or BEHAVIOR_RELEASE
    if behavior not in (BEHAVIOR_RELEASE, BEHAVIOR_DELETE):
        raise StateError(f"Invalid Behavior setting '{behavior}'")
    if session.ttl:
        try:
            ttl = parse_duration(session.ttl)
        except ValueError as exc:
            raise StateError(f"Session TTL '{session.ttl}' invalid: {exc}") from None
        if ttl != 0 and (ttl < ttl_min_ns or ttl > SESSION_TTL_MAX_NS):
            raise StateError(
                f"Invalid Session TTL '{ttl}', must be between "
                f"[{format_duration(ttl_min_ns)}={format_duration(SESSION_TTL_MAX_NS)}]"
            )
    return session if behavior == session.behavior else replace(session, behavior=behavior)


def _nonzero(index: int) -> int:
    return index if index > 0 else 1


class SessionTable:
    """The ``sessions`` table with its node and check indexes.

    Watches: ``id_watches`` (``session_get``), ``node_watches`` (``node_sessions``) and the
    table channel (``session_list``, in the store's ``IndexTable``).
    """

    __slots__ = (
        "_by_check",
        "_by_node",
        "_indexes",
        "_kvs",
        "_lock_delay",
        "_rows",
        "id_watches",
        "node_watches",
    )

    def __init__(self, indexes: IndexTable, kvs: KVTable, lock_delay: LockDelay) -> None:
        self._indexes = indexes
        self._kvs = kvs
        self._lock_delay = lock_delay
        self._rows: dict[str, Session] = {}
        self._by_node: dict[str, dict[str, None]] = {}
        self._by_check: dict[tuple[str, str], dict[str, None]] = {}
        self.id_watches = ChannelMap()
        self.node_watches = ChannelMap()

    def __len__(self) -> int:
        return len(self._rows)

    def exists(self, session_id: str) -> bool:
        return session_id.lower() in self._rows

    # --- reads ---------------------------------------------------------------------------

    def table_index(self) -> int:
        return self._indexes.get(TABLE_SESSIONS)

    def row(self, session_id: str) -> Session | None:
        return self._rows.get(session_id.lower())

    def get(self, ws: WatchSet | None, session_id: str) -> tuple[int, Session | None]:
        sid = session_id.lower()
        if ws is not None:
            ws.add(self.id_watches.channel(sid))
        return _nonzero(self.table_index()), self._rows.get(sid)

    def list_all(self, ws: WatchSet | None) -> tuple[int, list[Session]]:
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_SESSIONS))
        rows = self._rows
        return _nonzero(self.table_index()), [rows[sid] for sid in sorted(rows)]

    def node_sessions(self, ws: WatchSet | None, node: str) -> tuple[int, list[Session]]:
        key = node.lower()
        if ws is not None:
            ws.add(self.node_watches.channel(key))
        rows = self._rows
        ids = sorted(self._by_node.get(key, ()))
        return _nonzero(self.table_index()), [rows[sid] for sid in ids]

    def check_sessions(self, node: str, check_id: str) -> list[Session]:
        """Sessions that depend on a node's check (for invalidation when it turns critical)."""
        rows = self._rows
        ids = sorted(self._by_check.get((node.lower(), check_id.lower()), ()))
        return [rows[sid] for sid in ids]

    # --- writes --------------------------------------------------------------------------

    def create_txn(
        self,
        tx: WriteTxn,
        session: Session,
        node_exists: NodeExists = _always_exists,
        check_status: CheckStatus = _always_passing,
    ) -> Session:
        """Insert a session (an existing ID is replaced, as in Consul, though endpoints never
        reuse one). Returns the stored row, with Behavior defaulted and both indexes ``idx``."""
        if not session.id:
            raise StateError("Missing session ID")
        behavior = session.behavior or BEHAVIOR_RELEASE
        if behavior not in (BEHAVIOR_RELEASE, BEHAVIOR_DELETE):
            raise StateError(f"Invalid session behavior: {behavior}")
        if not node_exists(session.node):
            raise StateError("Missing node registration")
        for check_id in session.check_ids():
            status = check_status(session.node, check_id)
            if status is None:
                raise StateError(f"Missing check '{check_id}' registration")
            if status == "critical":
                raise StateError(f"Check '{check_id}' is in {status} state")
        row = replace(session, behavior=behavior, create_index=tx.idx, modify_index=tx.idx)
        sid = row.id.lower()
        old = self._rows.get(sid)
        if old is not None:
            self._unindex(sid, old)
        self._rows[sid] = row
        self._index(sid, row)

        def undo() -> None:
            self._unindex(sid, row)
            if old is None:
                del self._rows[sid]
            else:
                self._rows[sid] = old
                self._index(sid, old)

        tx.on_undo(undo)
        self._touch(tx, sid, row, old)
        return row

    def destroy_txn(self, tx: WriteTxn, session_id: str, now: float | None = None) -> bool:
        """Delete a session and invalidate it: release (or delete) every key it holds. Each of
        those keys gets the session's lock delay from ``now`` once the write commits (no lock
        delay is recorded when ``now`` is None). Returns whether the session existed."""
        sid = session_id.lower()
        session = self._rows.get(sid)
        if session is None:
            return False
        if session.behavior not in (BEHAVIOR_RELEASE, BEHAVIOR_DELETE):
            raise StateError(f"unknown session behavior {go_quote(session.behavior)}")
        del self._rows[sid]
        self._unindex(sid, session)

        def undo() -> None:
            self._rows[sid] = session
            self._index(sid, session)

        tx.on_undo(undo)
        self._touch(tx, sid, session, None)
        keys = self._kvs.invalidate_session_txn(
            tx, session.id, delete=session.behavior == BEHAVIOR_DELETE
        )
        delay = min(session.lock_delay, MAX_LOCK_DELAY_NS)
        if keys and delay > 0 and now is not None:
            lock_delay = self._lock_delay
            at = now

            def start_lock_delays() -> None:
                for key in keys:
                    lock_delay.set(key, at, delay)

            tx.after_commit(start_lock_delays)
        return True

    # --- snapshot ------------------------------------------------------------------------

    def dump(self) -> list[Session]:
        """Every session, ordered by (lowercased) ID."""
        rows = self._rows
        return [rows[sid] for sid in sorted(rows)]

    def restore(self, sessions: list[Session]) -> None:
        """Load sessions into an empty table (snapshot restore)."""
        self._rows = {}
        self._by_node = {}
        self._by_check = {}
        for session in sessions:
            sid = session.id.lower()
            self._rows[sid] = session
            self._index(sid, session)

    # --- internals -----------------------------------------------------------------------

    def _touch(self, tx: WriteTxn, sid: str, session: Session, old: Session | None) -> None:
        tx.notify(self.id_watches, sid)
        tx.notify(self.node_watches, session.node.lower())
        if old is not None:
            tx.notify(self.node_watches, old.node.lower())
        self._indexes.bump(tx, TABLE_SESSIONS)

    def _index(self, sid: str, session: Session) -> None:
        node = session.node.lower()
        self._by_node.setdefault(node, {})[sid] = None
        for check_id in session.check_ids():
            self._by_check.setdefault((node, check_id.lower()), {})[sid] = None

    def _unindex(self, sid: str, session: Session) -> None:
        node = session.node.lower()
        _drop(self._by_node, node, sid)
        for check_id in session.check_ids():
            _drop(self._by_check, (node, check_id.lower()), sid)


def _drop(index: dict[Any, dict[str, None]], key: Any, sid: str) -> None:
    members = index.get(key)
    if members is not None:
        members.pop(sid, None)
        if not members:
            del index[key]
