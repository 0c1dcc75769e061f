"""Check runners (Consul's ``agent/checks``): TTL, HTTP, TCP, script (``args``) and alias.

``CheckRunners`` follows a ``LocalState``: when a check with a definition is added it starts
the matching runner, when the check goes it stops it, and every result goes back through
``LocalState.update_check`` (which marks the check for syncing to the catalog).

Consul's behaviour kept:

* TTL: the check turns ``critical`` with ``TTL expired`` when no update arrives within the
  TTL; every pass/warn/fail/update resets the timer.
* HTTP: ``Method`` (default GET), ``Header``, ``Body``, ``TLSSkipVerify``, ``TLSServerName``,
  ``DisableRedirects``; 2xx is passing, 429 warning, anything else critical; the output is
  ``HTTP GET <url>: 200 OK Output: <body>`` with the body cut at 4 KiB; default timeout 10 s.
* TCP: a connect within the timeout (default 10 s) is passing
  (``TCP connect <addr>: Success``), else critical with the error.
* Script (``args``): exit 0 passing, 1 warning, anything else critical; output is stdout and
  stderr together, cut at 4 KiB; default timeout 30 s, then the process is killed.
* Alias: the aggregated status of a local service's checks (or critical when the service
  does not exist on this agent); re-evaluated on every local change.
* The first run of an interval check waits a random part of the interval (Consul's
  stagger), capped here at one second so that fresh checks report quickly.

Not run yet (registered, status stays as given): docker, gRPC, H2PING, UDP, OS service, and
alias checks of another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
from typing import Any

import aiohttp
import structlog

from server.agent.local import (
    CRITICAL,
    PASSING,
    WARNING,
    CheckType,
    LocalState,
    aggregated_status,
    format_duration,
)

__all__ = ["CHECK_BUF_SIZE", "CheckRunners", "http_status_for", "truncate_output"]

log = structlog.get_logger("checks")

#: Consul's ``CheckBufSize``: outputs are cut at 4 KiB.
CHECK_BUF_SIZE = 4 * 1024
HTTP_DEFAULT_TIMEOUT = 10.0
TCP_DEFAULT_TIMEOUT = 10.0
SCRIPT_DEFAULT_TIMEOUT = 30.0
USER_AGENT = "Consul Health Check"


def truncate_output(text: str, limit: int = CHECK_BUF_SIZE) -> str:
    """``text`` cut as Consul's check buffers do: ``<first limit bytes> ... (captured N of M
    bytes)``."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    head = raw[:limit].decode(errors="ignore")
    return f"{head} ... (captured {limit} of {len(raw)} bytes)"


def http_status_for(code: int) -> str:
    """2xx passing, 429 warning, anything else critical."""
    if 200 <= code <= 299:
        return PASSING
    if code == 429:
        return WARNING
    return CRITICAL


class _Runner:
    def __init__(self, runners: CheckRunners, check_id: str, ct: CheckType) -> None:
        self.runners = runners
        self.check_id = check_id
        self.ct = ct
        self.task: asyncio.Task[None] | None = None

    def report(self, status: str, output: str) -> None:
        self.runners.local.update_check(self.check_id, status, output)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"check:{self.check_id}"
        )

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        interval = max(self.ct.interval, 1.0)
        await asyncio.sleep(random.uniform(0, min(interval, 1.0)))
        while True:
            try:
                status, output = await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a runner must never die
                status, output = CRITICAL, str(exc) or type(exc).__name__
            self.report(status, output)
            await asyncio.sleep(interval)

    async def probe(self) -> tuple[str, str]:
        raise NotImplementedError


class TTLRunner(_Runner):
    """No probe: a timer that turns the check critical unless ``set_status`` comes first."""

    def __init__(self, runners: CheckRunners, check_id: str, ct: CheckType) -> None:
        super().__init__(runners, check_id, ct)
        self._timer: asyncio.TimerHandle | None = None
        self._last_output = ""

    def start(self) -> None:
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.ct.ttl, self._expire)

    def _expire(self) -> None:
        self._timer = None
        output = "TTL expired"
        if self._last_output:
            output += f" (last output before timeout follows): {self._last_output}"
        self.report(CRITICAL, output)

    def set_status(self, status: str, output: str) -> None:
        limit = self.ct.output_max_size or CHECK_BUF_SIZE
        output = truncate_output(output, limit)
        self._last_output = output
        self.report(status, output)
        self._arm()


class HTTPRunner(_Runner):
    async def probe(self) -> tuple[str, str]:
        ct = self.ct
        method = ct.method or "GET"
        headers: list[tuple[str, str]] = []
        names = set()
        for key, values in ct.header.items():
            names.add(key.lower())
            for value in values:
                headers.append((key, value))
        if "user-agent" not in names:
            headers.append(("User-Agent", USER_AGENT))
        if "accept" not in names:
            headers.append(("Accept", "text/plain, text/*, */*"))
        ssl_ctx: ssl.SSLContext | bool = True
        if ct.http.startswith("https://") and ct.tls_skip_verify:
            ssl_ctx = False
        timeout = aiohttp.ClientTimeout(total=ct.timeout or HTTP_DEFAULT_TIMEOUT)
        limit = ct.output_max_size or CHECK_BUF_SIZE
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    method,
                    ct.http,
                    headers=headers,
                    data=ct.body.encode() if ct.body else None,
                    ssl=ssl_ctx,
                    server_hostname=ct.tls_server_name or None,
                    allow_redirects=not ct.disable_redirects,
                ) as resp,
            ):
                body = await resp.content.read(limit + 1)
                text = body[:limit].decode(errors="replace")
                if len(body) > limit:
                    text += f" ... (captured {limit} bytes)"
                status_line = f"{resp.status} {resp.reason or ''}".strip()
                output = f"HTTP {method} {ct.http}: {status_line} Output: {text}"
                return http_status_for(resp.status), output
        except TimeoutError:
            return CRITICAL, (
                f'Get "{ct.http}": context deadline exceeded (Client.Timeout exceeded while '
                "awaiting headers)"
            )
        except aiohttp.ClientError as exc:
            return CRITICAL, f'{method.capitalize()} "{ct.http}": {exc}'


class TCPRunner(_Runner):
    async def probe(self) -> tuple[str, str]:
        target = self.ct.tcp
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        try:
            async with asyncio.timeout(self.ct.timeout or TCP_DEFAULT_TIMEOUT):
                _reader, writer = await asyncio.open_connection(host, int(port))
        except TimeoutError:
            return CRITICAL, f"dial tcp {target}: i/o timeout"
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno:
                reason = os.strerror(exc.errno).lower()
            else:
                reason = str(exc)
            return CRITICAL, f"dial tcp {target}: connect: {reason}"
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return PASSING, f"TCP connect {target}: Success"


class ScriptRunner(_Runner):
    async def probe(self) -> tuple[str, str]:
        args = self.ct.script_args
        timeout = self.ct.timeout or SCRIPT_DEFAULT_TIMEOUT
        limit = self.ct.output_max_size or CHECK_BUF_SIZE
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return CRITICAL, f"Failed to start check: {exc}"
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
            return CRITICAL, f"Timed out ({format_duration(timeout)}) running check"
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        output = truncate_output(out.decode(errors="replace"), limit)
        code = proc.returncode
        if code == 0:
            return PASSING, output
        if code == 1:
            return WARNING, output
        return CRITICAL, output


class CheckRunners:
    """Starts and stops one runner per check of ``local`` that has a definition."""

    def __init__(self, local: LocalState) -> None:
        self.local = local
        self.runners: dict[str, _Runner] = {}
        self.aliases: dict[str, CheckType] = {}
        self.running = False
        self._evaluating = False
        local.listeners.append(self._on_change)

    # --- lifecycle ---

    def start(self) -> None:
        """Start runners for every check already registered (and every one added later)."""
        self.running = True
        for cid, entry in list(self.local.checks.items()):
            if not entry.deleted and entry.check_type is not None:
                self._start(cid, entry.check_type)
        self._evaluate_aliases()

    def stop(self) -> None:
        self.running = False
        for runner in self.runners.values():
            runner.stop()
        self.runners.clear()
        self.aliases.clear()

    # --- TTL updates (the pass/warn/fail/update endpoints) ---

    def ttl(self, check_id: str) -> TTLRunner | None:
        runner = self.runners.get(check_id)
        return runner if isinstance(runner, TTLRunner) else None

    # --- following the local state ---

    def _on_change(self, kind: str, ident: str) -> None:
        if not self.running:
            return
        if kind == "check-added":
            entry = self.local.check_entry(ident)
            self._stop(ident)
            if entry is not None and entry.check_type is not None:
                self._start(ident, entry.check_type)
        elif kind == "check-removed":
            self._stop(ident)
        self._evaluate_aliases()

    def _start(self, check_id: str, ct: CheckType) -> None:
        kind = ct.type()
        runner: _Runner | None
        if kind == "ttl":
            runner = TTLRunner(self, check_id, ct)
        elif kind == "http":
            runner = HTTPRunner(self, check_id, ct)
        elif kind == "tcp":
            runner = TCPRunner(self, check_id, ct)
        elif kind == "script":
            runner = ScriptRunner(self, check_id, ct)
        elif kind == "alias" and not ct.alias_node:
            self.aliases[check_id] = ct
            return
        else:
            log.warning("check_type_not_supported", check=check_id, type=kind)
            return
        self.runners[check_id] = runner
        runner.start()

    def _stop(self, check_id: str) -> None:
        runner = self.runners.pop(check_id, None)
        if runner is not None:
            runner.stop()
        self.aliases.pop(check_id, None)

    def _evaluate_aliases(self) -> None:
        if self._evaluating or not self.aliases:
            return
        self._evaluating = True
        try:
            for cid, ct in list(self.aliases.items()):
                status, output = self._alias_result(cid, ct)
                self.local.update_check(cid, status, output)
        finally:
            self._evaluating = False

    def _alias_result(self, check_id: str, ct: CheckType) -> tuple[str, str]:
        if self.local.service(ct.alias_service) is None:
            return (
                CRITICAL,
                f"Service {ct.alias_service} could not be found on node {self.local.node_name}",
            )
        checks: list[dict[str, Any]] = [
            c
            for c in self.local.checks_for_service(ct.alias_service, include_node=True)
            if c.get("CheckID") != check_id
        ]
        status = aggregated_status(checks)
        if status == PASSING:
            return PASSING, "All checks passing."
        if status == WARNING:
            return WARNING, "One or more checks warning."
        return CRITICAL, "One or more checks critical."
