"""``GET``/``PUT /v1/snapshot``: save and restore the whole server state (Consul's
``agent/snapshot_endpoint.go`` and ``snapshot/archive.go``).

The archive is a gzip'd tar holding, as Consul's does:

* ``meta.json``: the Raft snapshot metadata (``Version``, ``ID``, ``Index``, ``Term``,
  ``Size``, ``Configuration``);
* ``state.bin``: the state store's snapshot, taken right after a Raft barrier so it holds every
  write committed before the request;
* ``SHA256SUMS``: ``<sha256 hex>  <file name>`` for the two files above.

``GET`` answers the archive with ``X-Consul-Index`` (the Raft index it was taken at); ``?stale``
lets a follower answer from its own state. ``PUT`` checks the archive (gzip, tar, members,
checksums, a state that decodes) and answers 400 with the reason when it is bad, leaving the
state untouched; otherwise every server replaces its state through one Raft command
(``PROCONSUL_RESTORE``), which also wakes every blocked query.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
import time
import zlib
from typing import Any

import orjson
from aiohttp import web

from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.http import HTTPError, read_body
from server.state import StateStore
from server.state.kvs import StateError

__all__ = ["MAX_RESTORE_COMMAND", "MAX_SNAPSHOT_SIZE", "build_archive", "read_archive", "register"]

MAX_SNAPSHOT_SIZE = 256 * 1024 * 1024
#: The largest restore command (base64 of the zlib'd state): under the Raft transport's
#: 16 MiB message limit with room for the entry's framing.
MAX_RESTORE_COMMAND = 12 * 1024 * 1024
_META = "meta.json"
_STATE = "state.bin"
_SUMS = "SHA256SUMS"


def build_archive(meta: dict[str, Any], state: bytes, mtime: float | None = None) -> bytes:
    """The gzip'd tar of ``meta`` and ``state`` with their checksums."""
    meta_bytes = orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        for name, data in ((_META, meta_bytes), (_STATE, state))
    ).encode()
    stamp = time.time() if mtime is None else mtime
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((_META, meta_bytes), (_STATE, state), (_SUMS, sums)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(stamp)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=int(stamp))


def read_archive(archive: bytes) -> tuple[dict[str, Any], bytes]:
    """(meta, state bytes) from an archive, checksums verified; ``ValueError`` with the
    reason when anything is wrong."""
    try:
        tar_bytes = gzip.decompress(archive)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"failed to decompress snapshot: {exc}") from None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.name not in (_META, _STATE, _SUMS):
                    raise ValueError(f"unexpected file {member.name!r} in snapshot")
                handle = tar.extractfile(member)
                if handle is None:
                    raise ValueError(f"cannot read {member.name!r} in snapshot")
                files[member.name] = handle.read()
    except tarfile.TarError as exc:
        raise ValueError(f"failed to read snapshot archive: {exc}") from None
    for name in (_META, _STATE, _SUMS):
        if name not in files:
            raise ValueError(f"snapshot is missing {name}")
    sums: dict[str, str] = {}
    for line in files[_SUMS].decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1]] = parts[0].lower()
    for name in (_META, _STATE):
        expected = sums.get(name)
        if expected is None:
            raise ValueError(f"failed checking integrity of snapshot: no checksum for {name}")
        if hashlib.sha256(files[name]).hexdigest() != expected:
            raise ValueError(f"failed checking integrity of snapshot: {name} checksum mismatch")
    try:
        meta = orjson.loads(files[_META])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"failed to decode snapshot metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError("failed to decode snapshot metadata: not an object")
    return meta, files[_STATE]


def register(app: web.Application, ctx: ServerContext) -> None:
    async def save(request: web.Request) -> web.Response:
        opts = ctx.options(request)
        consistency = await ctx.barrier(opts)
        fsm = ctx.fsm
        raft = ctx.raft
        if fsm is None or raft is None:
            raise HTTPError(500, "No known Consul servers")
        # No await between these lines: the state is exactly the one at ``index``.
        index = raft.applied_index
        term = raft.term
        state = fsm.snapshot()
        now = time.time()
        meta = {
            "Version": 1,
            "ID": f"{term}-{index}-{int(now * 1000)}",
            "Index": index,
            "Term": term,
            "Size": len(state),
            "Configuration": {
                "Servers": [
                    {
                        "Suffrage": "Voter" if s.id in raft.membership.voters else "Nonvoter",
                        "ID": s.id,
                        "Address": s.address,
                    }
                    for s in raft.membership.servers
                ]
            },
            "ConfigurationIndex": 0,
        }
        archive = build_archive(meta, state, now)
        headers = ctx.headers(ctx.meta(index, consistency))
        return web.Response(body=archive, content_type="application/x-gzip", headers=headers)

    async def restore(request: web.Request) -> web.Response:
        ctx.check_datacenter(request.query.get("dc", ""))
        archive = await read_body(request, MAX_SNAPSHOT_SIZE)
        try:
            _, state = read_archive(archive)
            if not state:
                raise ValueError("snapshot state is empty")
            StateStore.restore(state)  # decodes? (the FSM would refuse it on every server)
        except (ValueError, StateError) as exc:
            raise HTTPError(400, f"Error restoring snapshot: {exc}") from None
        packed = base64.b64encode(zlib.compress(state, 6)).decode()
        if len(packed) > MAX_RESTORE_COMMAND:
            # One Raft entry carries the whole state; beyond the transport's message size it
            # could never reach the followers.
            raise HTTPError(
                413,
                f"Error restoring snapshot: state too large to replicate ({len(packed)} bytes "
                f"compressed, limit {MAX_RESTORE_COMMAND} bytes)",
            )
        await ctx.apply(MessageType.PROCONSUL_RESTORE, {"State": packed, "Compression": "zlib"})
        return web.Response(status=200)

    app.router.add_get("/v1/snapshot", save)
    app.router.add_put("/v1/snapshot", restore)
