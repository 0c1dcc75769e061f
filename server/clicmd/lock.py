"""``consul lock``: hold a KV lock (``-n 1``, the ``api.Lock`` recipe) or a semaphore slot
(``-n N``, the ``api.Semaphore`` recipe) under a prefix through a session, and run the child
command while it is held. The child is killed when the lock is lost or on interrupt; the lock is
released and cleaned up afterwards."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
import signal
import subprocess
import threading
import time
from typing import Any
from urllib.parse import quote

from server.clicmd.api import APIError, Client
from server.clicmd.base import Command, Context, Fail, register
from server.clicmd.flags import FlagSet, format_duration

__all__ = ["LOCK_FLAG_VALUE", "SEMAPHORE_FLAG_VALUE", "KVLock", "Semaphore"]

#: Consul's ``api.LockFlagValue`` and ``api.SemaphoreFlagValue``: the Flags marking a key as
#: used by the lock / semaphore recipe.
LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18
SEMAPHORE_FLAG_VALUE = 0xE0F69A2BAA414DE0
SESSION_TTL = "15s"
RETRY = 1.0
#: Consul's ``lockKillGracePeriod``: SIGTERM, then SIGKILL after this long.
LOCK_KILL_GRACE = 5.0


class LockError(Exception):
    pass


class InUse(LockError):
    pass


def _kv(key: str) -> str:
    return "/v1/kv/" + quote(key, safe="/")


class _Session:
    """A session with a TTL, renewed in a thread until destroyed."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        try:
            reply = client.put_json("/v1/session/create", {"Name": name, "TTL": SESSION_TTL})
        except APIError as exc:
            raise LockError(f"failed to create session: {exc}") from None
        self.id: str = (reply.json() or {}).get("ID", "")
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        while not self.stop.wait(7.5):
            try:
                resp = self.client.put(
                    "/v1/session/renew/" + self.id, None, timeout=10, allow=(404,)
                )
                if resp.status == 404:
                    self.lost.set()
                    return
            except APIError:
                continue

    def destroy(self) -> None:
        self.stop.set()
        with contextlib.suppress(APIError):
            self.client.put("/v1/session/destroy/" + self.id, None, timeout=10)


class KVLock:
    """``api.Lock``: the key ``<prefix>/.lock`` acquired by our session."""

    def __init__(self, client: Client, prefix: str, name: str) -> None:
        self.client = client
        self.key = posixpath.join(prefix, ".lock") if prefix else ".lock"
        self.name = name
        self.session: _Session | None = None

    def acquire(self, deadline: float | None, stop: threading.Event) -> bool:
        self.session = _Session(self.client, self.name)
        sid = self.session.id
        index = 0
        while not stop.is_set():
            wait = 15.0
            if deadline is not None:
                wait = max(0.0, deadline - time.monotonic())
                if wait <= 0:
                    return False
            params: dict[str, Any] = {"index": index, "wait": f"{max(int(wait * 1000), 1)}ms"}
            if not index:
                params = {}
            try:
                resp = self.client.get(_kv(self.key), params, allow=(404,), timeout=wait + 30)
            except APIError as exc:
                raise LockError(f"failed to read lock: {exc}") from None
            pair = (resp.json() or [None])[0] if resp.status != 404 else None
            if pair is not None and int(pair.get("Flags") or 0) != LOCK_FLAG_VALUE:
                raise LockError("Existing key does not match lock use")
            if pair is not None and pair.get("Session") == sid:
                return True
            if pair is not None and pair.get("Session"):
                index = resp.index
                continue
            try:
                ok = self.client.put(
                    _kv(self.key), b"", {"acquire": sid, "flags": LOCK_FLAG_VALUE}
                ).json()
            except APIError as exc:
                raise LockError(f"failed to acquire lock: {exc}") from None
            if ok:
                return True
            index = 0
            if stop.wait(RETRY):
                break
        return False

    def monitor(self, lost: threading.Event, stop: threading.Event, retries: int = 3) -> None:
        """Sets ``lost`` when the key is no longer held by our session (after ``retries``
        failed reads in a row, a second apart, as ``-monitor-retry`` asks)."""
        assert self.session is not None
        sid = self.session.id
        index = 0
        failures = 0
        while not stop.is_set():
            try:
                params = {"index": index, "wait": "5s"} if index else {}
                resp = self.client.get(_kv(self.key), params, allow=(404,), timeout=60)
                failures = 0
            except APIError:
                failures += 1
                if failures > retries:
                    lost.set()
                    return
                stop.wait(1.0)
                continue
            pair = (resp.json() or [None])[0] if resp.status != 404 else None
            if pair is None or pair.get("Session") != sid or self.session.lost.is_set():
                lost.set()
                return
            index = resp.index

    def release(self) -> None:
        if self.session is None:
            return
        try:
            self.client.put(
                _kv(self.key), b"", {"release": self.session.id, "flags": LOCK_FLAG_VALUE}
            )
        finally:
            self.session.destroy()

    def cleanup(self) -> None:
        resp = self.client.get(_kv(self.key), allow=(404,))
        if resp.status == 404:
            return
        pair = (resp.json() or [None])[0]
        if pair is None:
            return
        if int(pair.get("Flags") or 0) != LOCK_FLAG_VALUE:
            raise LockError("Existing key does not match lock use")
        if pair.get("Session"):
            raise InUse("Lock in use")
        self.client.delete(_kv(self.key), {"cas": pair.get("ModifyIndex", 0)})


class Semaphore:
    """``api.Semaphore``: contender keys ``<prefix>/<session>`` and the lock key
    ``<prefix>/.lock`` holding ``{"Limit": N, "Holders": {session: true}}``."""

    def __init__(self, client: Client, prefix: str, name: str, limit: int) -> None:
        self.client = client
        self.prefix = prefix
        self.lock_key = posixpath.join(prefix, ".lock")
        self.name = name
        self.limit = limit
        self.session: _Session | None = None

    def _contender(self) -> str:
        assert self.session is not None
        return posixpath.join(self.prefix, self.session.id)

    def _read(self, index: int, wait: float) -> tuple[int, list[dict[str, Any]]]:
        params: dict[str, Any] = {"recurse": True}
        if index:
            params.update(index=index, wait=f"{max(int(wait * 1000), 1)}ms")
        resp = self.client.get(
            _kv(self.prefix.rstrip("/") + "/"), params, allow=(404,), timeout=wait + 30
        )
        return resp.index, ([] if resp.status == 404 else list(resp.json() or []))

    def _decode(self, pairs: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        lock = next((p for p in pairs if p.get("Key") == self.lock_key), None)
        if lock is None:
            return None, {"Limit": self.limit, "Holders": {}}
        if int(lock.get("Flags") or 0) != SEMAPHORE_FLAG_VALUE:
            raise LockError("Existing key does not match semaphore use")
        raw = base64.b64decode(lock.get("Value") or "") or b"{}"
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise LockError(f"Failed to decode semaphore: {exc}") from None
        if int(doc.get("Limit") or 0) != self.limit:
            raise LockError(
                f"Semaphore limit conflict (lock: {doc.get('Limit')}, local: {self.limit})"
            )
        doc.setdefault("Holders", {})
        return lock, doc

    def acquire(self, deadline: float | None, stop: threading.Event) -> bool:
        self.session = _Session(self.client, self.name)
        sid = self.session.id
        ok = self.client.put(
            _kv(self._contender()), b"", {"acquire": sid, "flags": SEMAPHORE_FLAG_VALUE}
        ).json()
        if not ok:
            raise LockError("failed to make contender entry")
        index = 0
        while not stop.is_set():
            wait = 15.0
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return False
            index, pairs = self._read(index, wait)
            lock, doc = self._decode(pairs)
            alive = {p["Key"].rsplit("/", 1)[-1] for p in pairs if p.get("Session")}
            holders = {h: True for h in doc["Holders"] if h in alive}
            if sid in holders:
                return True
            if len(holders) >= self.limit:
                continue
            holders[sid] = True
            body = json.dumps({"Limit": self.limit, "Holders": holders}).encode()
            params = {"cas": lock.get("ModifyIndex", 0) if lock else 0}
            params["flags"] = SEMAPHORE_FLAG_VALUE
            if self.client.put(_kv(self.lock_key), body, params).json():
                return True
            index = 0
        return False

    def monitor(self, lost: threading.Event, stop: threading.Event, retries: int = 3) -> None:
        assert self.session is not None
        sid = self.session.id
        index = 0
        failures = 0
        while not stop.is_set():
            try:
                index, pairs = self._read(index, 5.0)
                _, doc = self._decode(pairs)
                failures = 0
            except (APIError, LockError):
                failures += 1
                if failures > retries:
                    lost.set()
                    return
                stop.wait(1.0)
                continue
            if sid not in doc["Holders"] or self.session.lost.is_set():
                lost.set()
                return

    def release(self) -> None:
        if self.session is None:
            return
        sid = self.session.id
        try:
            for _ in range(10):
                _, pairs = self._read(0, 0)
                lock, doc = self._decode(pairs)
                if lock is None or sid not in doc["Holders"]:
                    break
                holders = {h: True for h in doc["Holders"] if h != sid}
                body = json.dumps({"Limit": self.limit, "Holders": holders}).encode()
                params = {"cas": lock.get("ModifyIndex", 0), "flags": SEMAPHORE_FLAG_VALUE}
                if self.client.put(_kv(self.lock_key), body, params).json():
                    break
            self.client.delete(_kv(self._contender()))
        finally:
            self.session.destroy()

    def cleanup(self) -> None:
        _, pairs = self._read(0, 0)
        lock, doc = self._decode(pairs)
        if lock is None:
            return
        if doc["Holders"] or any(p.get("Key") != self.lock_key for p in pairs):
            raise InUse("Semaphore in use")
        self.client.delete(_kv(self.lock_key), {"cas": lock.get("ModifyIndex", 0)})


@register
class Lock(Command):
    name = "lock"
    synopsis = "Execute a command holding a lock"
    usage = """
Usage: consul lock [options] prefix child...

  Acquires a lock or semaphore at a given path, and invokes a child process
  when successful. The child process can assume the lock is held while it
  executes. If the lock is lost or communication is disrupted the child
  process will be sent a SIGTERM signal and given time to gracefully exit.
  After the grace period expires the process will be hard terminated.

  For Consul agents on Windows, the child process is always hard terminated
  with a SIGKILL, since Windows has no POSIX compatible notion for SIGTERM.

  When -n=1, only a single lock holder or leader exists providing mutual
  exclusion. Setting a higher value switches to a semaphore allowing multiple
  holders to coordinate.

  The prefix provided must have write privileges.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.boolean(
            "child-exit-code",
            help="Exit 2 if the child process exited with an error if this is true, "
            "otherwise this doesn't propagate an error from the child. The default value "
            "is false.",
        )
        fs.integer(
            "monitor-retry",
            3,
            "Number of times to retry if Consul returns a 500 error while monitoring the "
            "lock. This allows riding out brief periods of unavailability without causing "
            "leader elections, but increases the amount of time required to detect a lost "
            "lock in some cases. Defaults to 3, with a 1s wait between retries. Set to 0 to "
            "disable.",
        )
        fs.integer(
            "n",
            1,
            "Optional limit on the number of concurrent lock holders. The underlying "
            "implementation switches from a lock to a semaphore when the value is greater "
            "than 1. The default value is 1.",
        )
        fs.string(
            "name",
            "",
            "Optional name to associate with the lock session. It not provided, one is generated based on the provided child command.",
        )
        fs.boolean("pass-stdin", help="Pass stdin to the child process.")
        fs.boolean(
            "shell",
            True,
            "Use a shell to run the command (can set a custom shell via the SHELL environment variable).",
        )
        fs.duration(
            "timeout",
            0,
            "Maximum amount of time to wait to acquire the lock, specified as a duration "
            'like "1s" or "3h". The default value is 0.',
        )
        fs.boolean("verbose", help="Enable verbose (debugging) output.")
        fs.duration("try", 0, "DEPRECATED. Use -timeout instead.")

    def run(self, ctx: Context) -> int:
        limit = ctx["n"]
        if limit <= 0:
            raise Fail("Lock holder limit must be positive")
        if len(ctx.args) < 2:
            raise Fail("Key prefix and child command must be specified")
        prefix = ctx.args[0].lstrip("/")
        child = ctx.args[1:]
        timeout = ctx["timeout"] or ctx["try"]
        if timeout < 0:
            raise Fail("Timeout must be positive")
        name = ctx["name"] or f"Consul lock for '{' '.join(child)}' at '{prefix}'"
        if ctx["monitor-retry"] < 0:
            raise Fail("Number for 'monitor-retry' must be >= 0")
        verbose = ctx["verbose"]
        client = ctx.client
        try:
            client.get("/v1/agent/self", dc=False)
        except APIError as exc:
            raise Fail(f"Error querying Consul agent: {exc}") from None
        locker: KVLock | Semaphore
        if limit == 1:
            locker = KVLock(client, prefix, name)
            if verbose:
                ctx.out(f"Setting up lock at path: {locker.key}")
        else:
            locker = Semaphore(client, prefix, name, limit)
            if verbose:
                ctx.out(f"Setting up semaphore (limit {limit}) at prefix: {prefix}")
        stop = threading.Event()
        self._install_signals(stop)
        if verbose:
            ctx.out("Attempting lock acquisition")
        deadline = time.monotonic() + timeout if timeout > 0 else None
        try:
            held = locker.acquire(deadline, stop)
        except (LockError, APIError) as exc:
            if locker.session is not None:
                locker.session.destroy()
            raise Fail(f"Lock acquisition failed: {exc}") from None
        if not held:
            if locker.session is not None:
                locker.session.destroy()
            if timeout > 0 and verbose:
                ctx.err(f"Lock not acquired within {format_duration(timeout)}")
            raise Fail("Shutdown triggered or timeout during lock acquisition")
        lost = threading.Event()
        retries = max(ctx["monitor-retry"], 0)
        watcher = threading.Thread(target=locker.monitor, args=(lost, stop, retries), daemon=True)
        watcher.start()
        code = 0
        try:
            code = self._run_child(ctx, child, stop, lost)
        finally:
            stop.set()
            try:
                locker.release()
            except (APIError, LockError) as exc:
                ctx.err(f"Lock release failed: {exc}")
                return 1
            try:
                locker.cleanup()
                if verbose:
                    ctx.out("Cleanup succeeded")
            except InUse:
                if verbose:
                    ctx.out("Cleanup aborted, lock in use")
            except (APIError, LockError) as exc:
                ctx.err(f"Lock cleanup failed: {exc}")
                return 1
        return code if ctx["child-exit-code"] else 0

    @staticmethod
    def _install_signals(stop: threading.Event) -> None:
        def handler(signum: int, frame: Any) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (tests)
                signal.signal(sig, handler)

    def _run_child(
        self, ctx: Context, child: list[str], stop: threading.Event, lost: threading.Event
    ) -> int:
        """Run the child until it exits (2 when it failed, as Consul's ``childCode``) or the
        lock is lost or a shutdown asked (SIGTERM, then SIGKILL after a grace period; 0)."""
        verbose = ctx["verbose"]
        if verbose:
            ctx.out("Starting handler")
        if ctx["shell"]:
            argv = [os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(child)]
        else:
            argv = child
        env = dict(os.environ, CONSUL_LOCK_HELD="true")
        if ctx["pass-stdin"] and verbose:
            ctx.out("Stdin passed to handler process")
        ctx.stdout.flush()
        try:
            proc = subprocess.Popen(
                argv, stdin=None if ctx["pass-stdin"] else subprocess.DEVNULL, env=env
            )
        except OSError as exc:
            ctx.err(f"Error starting handler: {exc}")
            return 2
        while True:
            code = proc.poll()
            if code is not None:
                if code != 0:
                    ctx.err(f"Error running handler: exit status {code}")
                if verbose:
                    ctx.out("Child terminated, releasing lock")
                return 2 if code != 0 else 0
            if stop.is_set() or lost.is_set():
                if verbose:
                    ctx.out(
                        "Lock lost, killing child"
                        if lost.is_set()
                        else "Shutdown triggered, killing child"
                    )
                    ctx.out(f"Terminating child pid {proc.pid}")
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=LOCK_KILL_GRACE)
                    if verbose:
                        ctx.out("Child terminated")
                except subprocess.TimeoutExpired:
                    if verbose:
                        ctx.out(
                            "Child did not exit after grace period of "
                            f"{format_duration(LOCK_KILL_GRACE)}"
                        )
                        ctx.out(f"Killing child pid {proc.pid}")
                    proc.kill()
                    proc.wait()
                return 0
            time.sleep(0.05)
