"""Session TTL timers (Consul's ``agent/consul/session_ttl.go``).

Consul keeps no TTL state in Raft: the leader holds one in-memory timer per session that has a
TTL, and a session whose timer fires is destroyed through Raft (which releases or deletes its
keys, as any destroy does). Here:

* when this server becomes leader, every session with a TTL gets a timer of TTL x 2 (Consul's
  ``SessionTTLMultiplier``: clients renew at TTL/2 and still have slack);
* while leading, a watch on the sessions table arms a timer for every new TTL session (created
  here or through a follower) and drops the timer of every session that is gone;
* ``renew`` (``PUT /v1/session/renew/<id>``) resets the session's timer to TTL x 2;
* on expiry the session is destroyed with a ``SESSION`` destroy command; a failed apply is
  retried a few times (Consul: ``maxInvalidateAttempts``) while this server still leads;
* losing leadership (or stopping) cancels every timer; the next leader re-arms them all from
  its own state, so a session always gets at least its full TTL x 2 after a leader change.

Followers forward session requests to the leader (``server.endpoints.forward``), so every
renew reaches these timers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from server.commands.session import OP_DESTROY, session_body
from server.commands.types import MessageType
from server.state import SESSION_TTL_MULTIPLIER, Session, WatchSet, parse_duration

__all__ = ["SessionTTLTimers"]

log = structlog.get_logger("session_ttl")

MAX_INVALIDATE_ATTEMPTS = 6
"""Consul's ``maxInvalidateAttempts``."""


class SessionTTLTimers:
    """The leader's session TTL timers; a ``ServerContext`` service (see the module docstring).

    ``ctx`` needs ``store`` (the current ``StateStore``) and ``async apply(kind, body)``."""

    def __init__(
        self,
        ctx: Any,
        *,
        multiplier: float = SESSION_TTL_MULTIPLIER,
        retry_delay: float = 1.0,
    ) -> None:
        self.ctx = ctx
        self.multiplier = multiplier
        self.retry_delay = retry_delay
        self._leading = False
        # lowercased session ID -> (timer, the ID as the session spells it)
        self._timers: dict[str, tuple[asyncio.TimerHandle, str]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- service hooks -------------------------------------------------------------------

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._stop_leading()

    async def leadership_changed(self, is_leader: bool) -> None:
        if is_leader and not self._leading:
            self._leading = True
            self._watcher = asyncio.create_task(self._watch(), name="session-ttl-watch")
        elif not is_leader and self._leading:
            await self._stop_leading()

    # --- API -----------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._leading

    def armed(self) -> dict[str, float]:
        """Session ID (lowercased) -> when its timer fires (event-loop time); for tests."""
        return {sid: handle.when() for sid, (handle, _) in self._timers.items()}

    def reset(self, session: Session) -> bool:
        """(Re)start ``session``'s timer at TTL x multiplier; False when this server does not
        lead or the session has no TTL."""
        if not self._leading or not session.ttl:
            return False
        try:
            ttl_ns = parse_duration(session.ttl)
        except ValueError:
            return False
        if ttl_ns <= 0:
            return False
        sid = session.id.lower()
        self.clear(sid)
        loop = asyncio.get_running_loop()
        delay = ttl_ns / 1e9 * self.multiplier
        handle = loop.call_later(delay, self._expire, sid)
        self._timers[sid] = (handle, session.id)
        return True

    def clear(self, session_id: str) -> None:
        """Forget ``session_id``'s timer (if any)."""
        entry = self._timers.pop(session_id.lower(), None)
        if entry is not None:
            entry[0].cancel()

    # --- internals -----------------------------------------------------------------------

    def _sync(self) -> WatchSet:
        """Arm timers for TTL sessions that have none; drop timers of sessions that are gone.
        Returns the watch set that fires on the next change to the sessions table."""
        store = self.ctx.store
        ws = WatchSet()
        ws.add(store.abandon_channel)
        _, sessions = store.session_list(ws)
        present: set[str] = set()
        for session in sessions:
            sid = session.id.lower()
            present.add(sid)
            if session.ttl and sid not in self._timers:
                self.reset(session)
        for sid in [sid for sid in self._timers if sid not in present]:
            self.clear(sid)
        return ws

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._leading:
            ws = self._sync()
            fired: asyncio.Future[None] = loop.create_future()

            def wake(fut: asyncio.Future[None] = fired) -> None:
                if not fut.done():
                    fut.set_result(None)

            cancel = ws.add_callback(wake)
            try:
                await fired
            finally:
                cancel()

    def _expire(self, sid: str) -> None:
        entry = self._timers.pop(sid, None)
        if entry is None or not self._leading:
            return
        task = asyncio.create_task(self._invalidate(entry[1]), name=f"session-expire-{sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _invalidate(self, session_id: str) -> None:
        body = {"Op": OP_DESTROY, "Session": session_body(Session(id=session_id, node=""))}
        for attempt in range(1, MAX_INVALIDATE_ATTEMPTS + 1):
            if not self._leading:
                return
            try:
                await self.ctx.apply(MessageType.SESSION, body)
            except Exception as exc:  # retried: the next attempt may find a healthy leader
                log.warning(
                    "session_invalidate_failed",
                    session=session_id,
                    attempt=attempt,
                    error=str(exc),
                )
                await asyncio.sleep(self.retry_delay * attempt)
                continue
            log.info("session_expired", session=session_id)
            return
        log.error("session_invalidate_gave_up", session=session_id)

    async def _stop_leading(self) -> None:
        self._leading = False
        for handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        if self._watcher is not None:
            tasks.append(self._watcher)
            self._watcher = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
