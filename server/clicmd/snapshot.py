"""``snapshot save|restore|inspect`` (Consul's ``command/snapshot``). Long transfers show
their progress on stderr once they have run for a second."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson

from server.clicmd.api import APIError
from server.clicmd.base import Command, Context, Fail, columnize, register
from server.clicmd.flags import FlagSet

__all__ = ["Progress", "format_inspect", "human_bytes", "inspect_archive", "kv_details"]


def human_bytes(n: float) -> str:
    """go-humanize's ``Bytes`` (SI units) as Consul's inspect prints sizes."""
    if n < 10:
        return f"{int(n)} B"
    units = ["B", "kB", "MB", "GB", "TB"]
    i = 0
    value = float(n)
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.0f} {units[i]}" if value >= 10 else f"{value:.1f} {units[i]}"


class Progress:
    """Reports bytes moved to ``stream`` at most once per ``interval`` seconds, starting
    after ``delay`` seconds (short transfers print nothing)."""

    def __init__(
        self,
        stream: IO[str],
        verb: str,
        total: int = 0,
        delay: float = 1.0,
        interval: float = 1.0,
    ) -> None:
        self.stream = stream
        self.verb = verb
        self.total = total
        self.delay = delay
        self.interval = interval
        self.start = time.monotonic()
        self.last = 0.0
        self.done = 0
        self.shown = False
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())

    def update(self, moved: int, force: bool = False) -> None:
        self.done += moved
        now = time.monotonic()
        if not force and (now - self.start < self.delay or now - self.last < self.interval):
            return
        self.last = now
        text = f"{self.verb}: {human_bytes(self.done)}"
        if self.total:
            text += f" of {human_bytes(self.total)} ({100 * self.done // max(self.total, 1)}%)"
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.update(0, force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()


@register
class SnapshotSave(Command):
    name = "snapshot save"
    synopsis = "Saves snapshot of Consul server state"
    usage = """
Usage: consul snapshot save [options] FILE

  Retrieves an atomic, point-in-time snapshot of the state of the Consul servers
  which includes key/value entries, service catalog, prepared queries, sessions,
  and ACLs.

  If ACLs are enabled, a management token must be supplied in order to perform
  snapshot operations.

  To create a snapshot from the leader server and save it to "backup.snap":

    $ consul snapshot save backup.snap

  To create a potentially stale snapshot from any available server (useful if no
  leader is available):

    $ consul snapshot save -stale backup.snap

  For a full list of options and examples, please see the Consul documentation.
"""

    def run(self, ctx: Context) -> int:
        if not ctx.args:
            raise Fail("Missing FILE argument")
        if len(ctx.args) > 1:
            raise Fail(f"Too many arguments (expected 1, got {len(ctx.args)})")
        path = ctx.args[0]
        unverified = path + ".unverified"
        client = ctx.client
        progress = Progress(ctx.stderr, "Saving snapshot")
        index = 0
        try:
            resp = client._open("GET", "/v1/snapshot", None, None, None, True)
        except APIError as exc:
            raise Fail(f"Error saving snapshot: {exc}") from None
        try:
            with resp, open(unverified, "wb") as f:
                try:
                    index = int(resp.headers.get("X-Consul-Index", "0"))
                except ValueError:
                    index = 0
                progress.total = int(resp.headers.get("Content-Length", "0") or 0)
                while True:
                    piece = resp.read1(1 << 16)
                    if not piece:
                        break
                    f.write(piece)
                    progress.update(len(piece))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            _unlink(unverified)
            raise Fail(f"Error writing unverified snapshot file: {exc}") from None
        progress.finish()
        try:
            with open(unverified, "rb") as f:
                _verify(f.read())
        except (OSError, ValueError) as exc:
            _unlink(unverified)
            raise Fail(f"Error verifying snapshot file: {exc}") from None
        try:
            os.replace(unverified, path)
        except OSError as exc:
            raise Fail(f"Error renaming unverified snapshot file: {exc}") from None
        ctx.out(f"Saved and verified snapshot to index {index}")
        return 0


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _verify(archive: bytes) -> tuple[dict[str, Any], bytes]:
    from server.endpoints.snapshot import read_archive

    return read_archive(archive)


def _chunks(data: bytes, progress: Progress, size: int = 1 << 16) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        progress.update(len(piece))
        yield piece


@register
class SnapshotRestore(Command):
    name = "snapshot restore"
    synopsis = "Restores snapshot of Consul server state"
    usage = """
Usage: consul snapshot restore [options] FILE

  Restores an atomic, point-in-time snapshot of the state of the Consul servers
  which includes key/value entries, service catalog, prepared queries, sessions,
  and ACLs. The snapshot is read from the given file.

  Restores involve a potentially dangerous low-level Raft operation that is not
  designed to handle server failures during a restore. This command is primarily
  intended to be used when recovering from a disaster, restoring into a fresh
  cluster of Consul servers.

  If ACLs are enabled, a management token must be supplied in order to perform
  snapshot operations.

  To restore a snapshot from the file "backup.snap":

    $ consul snapshot restore backup.snap

  For a full list of options and examples, please see the Consul documentation.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.string(
            "datacenter",
            "",
            "Name of the datacenter to query. If unspecified, this will default to the "
            "datacenter of the queried agent.",
        )

    def run(self, ctx: Context) -> int:
        if not ctx.args:
            raise Fail("Missing FILE argument")
        if len(ctx.args) > 1:
            raise Fail(f"Too many arguments (expected 1, got {len(ctx.args)})")
        try:
            with open(ctx.args[0], "rb") as f:
                data = f.read()
        except OSError as exc:
            raise Fail(f"Error opening snapshot file: {exc.strerror or exc}") from None
        client = ctx.client
        progress = Progress(ctx.stderr, "Restoring snapshot", total=len(data))
        import urllib.request

        req = urllib.request.Request(
            client.url("/v1/snapshot"),
            data=_chunks(data, progress),
            method="PUT",
            headers={
                "Content-Length": str(len(data)),
                "Content-Type": "application/octet-stream",
                **({"X-Consul-Token": client.token} if client.token else {}),
            },
        )
        try:
            client_open(req, client)
        except APIError as exc:
            raise Fail(f"Error restoring snapshot: {exc}") from None
        progress.finish()
        ctx.out("Restored snapshot")
        return 0


def client_open(req: Any, client: Any) -> None:
    import urllib.error
    import urllib.request

    try:
        with client.opener().open(req, timeout=600) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace").strip()
        raise APIError(f"Unexpected response code: {err.code} ({text})", err.code, text) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise APIError(f'PUT "{req.full_url}": dial tcp {client.address}: {reason}') from None


# --- inspect ---------------------------------------------------------------------------------

_TYPE_NAMES = {"kvs": "KVS", "tombstones": "Tombstone", "sessions": "Session"}


def inspect_archive(archive: bytes) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """(meta, [(type, count, size)]) of a snapshot archive, largest first."""
    meta, state = _verify(archive)
    try:
        document = orjson.loads(state)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"failed to decode snapshot state: {exc}") from None
    rows: list[tuple[str, int, int]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("format", "index"):
                continue
            name = str(_TYPE_NAMES.get(key) or key)
            if isinstance(value, dict) and all(isinstance(v, list | dict) for v in value.values()):
                for sub, rows_value in value.items():
                    rows.append((f"{name}.{sub}", len(rows_value), len(orjson.dumps(rows_value))))
            elif isinstance(value, list):
                rows.append((name, len(value), len(orjson.dumps(value))))
            elif value is not None:
                rows.append((name, 1, len(orjson.dumps(value))))
    rows.sort(key=lambda r: (-r[2], r[0]))
    return meta, rows


def kv_details(archive: bytes, depth: int, prefix: str) -> list[tuple[str, int, int]]:
    """Consul's ``-kvdetails``: KV entries counted by their key cut to ``depth`` segments,
    only keys under ``prefix``; largest first."""
    _, state = _verify(archive)
    document = orjson.loads(state)
    totals: dict[str, list[int]] = {}
    rows = document.get("kvs") if isinstance(document, dict) else None
    for row in rows or []:
        key = str(row[0])
        if prefix and not key.startswith(prefix):
            continue
        name = "/".join(key.split("/")[: max(depth, 1)])
        entry = totals.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += len(orjson.dumps(row))
    out = [(k, v[0], v[1]) for k, v in totals.items()]
    out.sort(key=lambda r: (-r[2], r[0]))
    return out


def _table(title: str, rows: list[tuple[str, int, int]]) -> str:
    table: list[list[str]] = [[f" {title}", "Count", "Size"], [" ----", "----", "----"]]
    for name, count, size in rows:
        table.append([f" {name}", str(count), human_bytes(size)])
    table.append([" ----", "----", "----"])
    table.append([" Total", "", human_bytes(sum(r[2] for r in rows))])
    return columnize(table, glue="      ")


def format_inspect(meta: dict[str, Any], rows: list[tuple[str, int, int]]) -> str:
    head = columnize(
        [
            [" ID", str(meta.get("ID", ""))],
            [" Size", str(meta.get("Size", 0))],
            [" Index", str(meta.get("Index", 0))],
            [" Term", str(meta.get("Term", 0))],
            [" Version", str(meta.get("Version", 0))],
        ],
        glue="       ",
    )
    return head + "\n\n" + _table("Type", rows)


@register
class SnapshotInspect(Command):
    name = "snapshot inspect"
    synopsis = "Displays information about a Consul snapshot file"
    usage = """
Usage: consul snapshot inspect [options] FILE

  Displays information about a snapshot file on disk.

  To inspect the file "backup.snap":

    $ consul snapshot inspect backup.snap

  For a full list of options and examples, please see the Consul documentation.
"""
    http = ""

    def setup(self, fs: FlagSet) -> None:
        fs.string("format", "pretty", "Output format {pretty|json}")
        fs.boolean(
            "kvdetails",
            help="Provides a detailed KV space usage breakdown for any KV data that's been stored.",
        )
        fs.integer(
            "kvdepth",
            2,
            "Can only be used with -kvdetails. The key prefix depth used to breakdown KV store data. Defaults to 2.",
        )
        fs.string(
            "kvfilter",
            "",
            "Can only be used with -kvdetails. Limits KV key breakdown using this prefix filter.",
        )

    def run(self, ctx: Context) -> int:
        if not ctx.args:
            raise Fail("Missing FILE argument")
        if len(ctx.args) > 1:
            raise Fail(f"Too many arguments (expected 1, got {len(ctx.args)})")
        if (ctx.fs.was_set("kvdepth") or ctx["kvfilter"]) and not ctx["kvdetails"]:
            raise Fail("Error: -kvdepth and -kvfilter can only be used with -kvdetails")
        if ctx["format"] not in ("pretty", "json"):
            raise Fail(f"Error outputting enhanced snapshot data: Unknown format: {ctx['format']}")
        try:
            with open(ctx.args[0], "rb") as f:
                data = f.read()
        except OSError as exc:
            raise Fail(f"Error opening snapshot file: {exc.strerror or exc}") from None
        try:
            meta, rows = inspect_archive(data)
            kv_rows = kv_details(data, ctx["kvdepth"], ctx["kvfilter"]) if ctx["kvdetails"] else []
        except ValueError as exc:
            raise Fail(f"Error extracting snapshot data: {exc}") from None
        if ctx["format"] == "json":
            doc = {
                "Meta": {k: meta.get(k) for k in ("ID", "Size", "Index", "Term", "Version")},
                "Stats": [{"Name": n, "Count": c, "Sum": s} for n, c, s in rows],
                "TotalSize": sum(r[2] for r in rows),
            }
            if ctx["kvdetails"]:
                doc["StatsKV"] = [{"Name": n, "Count": c, "Sum": s} for n, c, s in kv_rows]
                doc["TotalSizeKV"] = sum(r[2] for r in kv_rows)
            ctx.out(json.dumps(doc, indent=2))
        else:
            text = format_inspect(meta, rows)
            if ctx["kvdetails"]:
                text += "\n\n" + _table("Key Name", kv_rows)
            ctx.out(text)
        return 0
