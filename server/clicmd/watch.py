"""``consul watch``: a blocking-query loop over one view (key, keyprefix, services, nodes,
service, checks, event) that prints the first result as JSON and exits when no handler is
given, or runs the handler command with each changed result as JSON on stdin (and
``CONSUL_INDEX`` in its environment) until interrupted, as Consul's watch plans do."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from server.clicmd.api import APIError, Client
from server.clicmd.base import Command, Context, Fail, register, sigterm_as_interrupt
from server.clicmd.flags import FlagSet
from server.clicmd.kv import go_json

__all__ = ["WatchPlan", "event_id_to_index", "make_plan"]

WATCH_TYPES = ("key", "keyprefix", "services", "nodes", "service", "checks", "event")

#: (index, result, changed?) — ``result is _NOTHING`` means "nothing to report" (a key that
#: does not exist yet), as Consul's watch funcs return an untyped nil.
_NOTHING = object()


def event_id_to_index(uuid: str) -> int:
    """Consul's ``Event.IDToIndex``: the two halves of the UUID XORed."""
    try:
        lower = int(uuid[0:8] + uuid[9:13] + uuid[14:18], 16)
        upper = int(uuid[19:23] + uuid[24:36], 16)
    except ValueError:
        return 0
    return lower ^ upper


@dataclass
class WatchPlan:
    kind: str
    fetch: Callable[[Client, int], tuple[int, Any]]


def _blocking(index: int) -> dict[str, Any]:
    return {"index": index} if index > 0 else {}


def make_plan(kind: str, fs: FlagSet) -> WatchPlan:
    """The watch for ``-type`` and its flags; ``Fail`` with Consul's message when they do not
    fit together."""
    key = fs["key"]
    prefix = fs["prefix"]
    service = fs["service"]
    tags: list[str] = list(fs["tag"])
    state = fs["state"]
    name = fs["name"]
    passing = fs["passingonly"]
    if kind not in WATCH_TYPES:
        raise Fail(f"Unsupported watch type: {kind}")

    def extra(allowed: set[str]) -> None:
        given = {
            "key": bool(key),
            "prefix": bool(prefix),
            "service": bool(service),
            "tag": bool(tags),
            "state": bool(state),
            "name": bool(name),
            "passingonly": fs.was_set("passingonly"),
        }
        for flag, present in given.items():
            if present and flag not in allowed:
                raise Fail(f"Invalid parameters: [{flag}]")

    if kind == "key":
        extra({"key"})
        if not key:
            raise Fail("Must specify a single key to watch")

        def fetch_key(client: Client, index: int) -> tuple[int, Any]:
            resp = client.get("/v1/kv/" + quote(key, safe="/"), _blocking(index), allow=(404,))
            if resp.status == 404:
                return resp.index, _NOTHING
            pairs = resp.json() or []
            return resp.index, (pairs[0] if pairs else _NOTHING)

        return WatchPlan(kind, fetch_key)
    if kind == "keyprefix":
        extra({"prefix"})
        if not prefix:
            raise Fail("Must specify a single prefix to watch")

        def fetch_prefix(client: Client, index: int) -> tuple[int, Any]:
            params = {"recurse": True, **_blocking(index)}
            resp = client.get("/v1/kv/" + quote(prefix, safe="/"), params, allow=(404,))
            return resp.index, (None if resp.status == 404 else resp.json())

        return WatchPlan(kind, fetch_prefix)
    if kind == "services":
        extra(set())

        def fetch_services(client: Client, index: int) -> tuple[int, Any]:
            resp = client.get("/v1/catalog/services", _blocking(index))
            return resp.index, resp.json()

        return WatchPlan(kind, fetch_services)
    if kind == "nodes":
        extra(set())

        def fetch_nodes(client: Client, index: int) -> tuple[int, Any]:
            resp = client.get("/v1/catalog/nodes", _blocking(index))
            return resp.index, resp.json()

        return WatchPlan(kind, fetch_nodes)
    if kind == "service":
        extra({"service", "tag", "passingonly"})
        if not service:
            raise Fail("Must specify a single service to watch")

        def fetch_service(client: Client, index: int) -> tuple[int, Any]:
            params: dict[str, Any] = {"tag": tags, "passing": passing, **_blocking(index)}
            resp = client.get("/v1/health/service/" + quote(service, safe=""), params)
            return resp.index, resp.json()

        return WatchPlan(kind, fetch_service)
    if kind == "checks":
        extra({"service", "state"})
        if service and state:
            raise Fail("Cannot specify service and state")
        path = (
            "/v1/health/checks/" + quote(service, safe="")
            if service
            else "/v1/health/state/" + quote(state or "any", safe="")
        )

        def fetch_checks(client: Client, index: int) -> tuple[int, Any]:
            resp = client.get(path, _blocking(index))
            return resp.index, resp.json()

        return WatchPlan(kind, fetch_checks)
    # event
    extra({"name"})

    def fetch_events(client: Client, index: int) -> tuple[int, Any]:
        params: dict[str, Any] = {"name": name or None, **_blocking(index)}
        resp = client.get("/v1/event/list", params)
        events = list(resp.json() or [])
        for i, ev in enumerate(events):
            if event_id_to_index(ev.get("ID", "")) == index:
                events = events[i + 1 :]
                break
        new_index = event_id_to_index(events[-1].get("ID", "")) if events else index
        return new_index, events

    return WatchPlan(kind, fetch_events)


def _compact(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    return text + "\n"


@register
class Watch(Command):
    name = "watch"
    synopsis = "Watch for changes in Consul"
    usage = """
Usage: consul watch [options] [child...]

  Watches for changes in a given data view from Consul. If a child process
  is specified, it will be invoked with the latest results on changes. Otherwise,
  the latest values are dumped to stdout and the watch terminates.

  Providing the watch type is required, and other parameters may be required
  or supported depending on the watch type.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string("key", "", "Specifies the key to watch. Only for 'key' type.")
        fs.string("name", "", "Specifies an event name to watch. Only for 'event' type.")
        fs.string(
            "passingonly",
            "",
            "Specifies if only hosts passing all checks are displayed. Optional for "
            "'service' type, must be one of `[true|false]`. Defaults false.",
        )
        fs.string("prefix", "", "Specifies the key prefix to watch. Only for 'keyprefix' type.")
        fs.string(
            "service",
            "",
            "Specifies the service to watch. Required for 'service' type, optional for 'checks' type.",
        )
        fs.boolean(
            "shell",
            True,
            "Use a shell to run the command (can set a custom shell via the SHELL environment variable).",
        )
        fs.string("state", "", "Specifies the states to watch. Optional for 'checks' type.")
        fs.repeated(
            "tag",
            "Specifies the service tag(s) to filter on. Optional for 'service' type. May be specified multiple times",
        )
        fs.string(
            "type",
            "",
            "Specifies the watch type. One of key, keyprefix, services, nodes, service, "
            "checks, or event.",
        )

    def run(self, ctx: Context) -> int:
        kind = ctx["type"]
        if not kind:
            raise Fail("Watch type must be specified")
        raw_passing = ctx["passingonly"]
        if raw_passing:
            low = raw_passing.lower()
            if low not in ("1", "t", "true", "0", "f", "false"):
                raise Fail(
                    "Failed to parse passingonly flag: strconv.ParseBool: parsing "
                    f'"{raw_passing}": invalid syntax'
                )
            ctx.fs.values["passingonly"] = low in ("1", "t", "true")
        else:
            ctx.fs.values["passingonly"] = False
        plan = make_plan(kind, ctx.fs)
        client = ctx.client
        try:
            client.get("/v1/agent/self", dc=False)
        except APIError as exc:
            raise Fail(f"Error querying Consul agent: {exc}") from None
        sigterm_as_interrupt()
        try:
            return self._loop(ctx, plan, client)
        except KeyboardInterrupt:
            return 0

    def _loop(self, ctx: Context, plan: WatchPlan, client: Client) -> int:
        kind = plan.kind
        handler = list(ctx.args)
        last_index = 0
        last_result: Any = _NOTHING
        failures = 0
        while True:
            try:
                index, result = plan.fetch(client, last_index)
                failures = 0
            except APIError as exc:
                failures += 1
                wait = min(5.0 * (2 ** (failures - 1)), 60.0)
                ctx.err(f"Watch (type: {kind}) errored: {exc}, retry in {wait:g}s")
                time.sleep(wait)
                continue
            old = last_index
            last_index = index if index >= old else 0
            if index and old and index == old:
                continue
            if result is _NOTHING or result == last_result:
                continue
            last_result = result
            if not handler:
                ctx.out(go_json(result, indent="    "))
                return 0
            if not self._run_handler(ctx, handler, index, result):
                return 1

    def _run_handler(self, ctx: Context, handler: list[str], index: int, data: Any) -> bool:
        env = dict(os.environ, CONSUL_INDEX=str(index))
        if ctx["shell"]:
            shell = os.environ.get("SHELL") or "/bin/sh"
            argv = [shell, "-c", " ".join(handler)]
        else:
            argv = handler
        ctx.stdout.flush()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env)
        except OSError as exc:
            ctx.err(f"Error starting handler: {exc}")
            return False
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(_compact(data).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        if code != 0:
            ctx.err(f"Error executing handler: exit status {code}")
            return False
        return True
