"""Snapshot files on disk.

File layout (all integers big-endian)::

    magic      8 bytes   b"PRCNSNAP"
    version    uint16    1
    meta_len   uint32    length of the JSON meta block that follows
    meta_crc   uint32    CRC-32 of the meta block (the sha256 below only covers the data)
    meta       meta_len  UTF-8 JSON object, padded with trailing spaces:
                         {"index": int, "term": int, "membership": [[id, address, suffrage]...],
                          "size": int, "sha256": "<64 hex digits of sha256(data)>"}
    data       size      the FSM snapshot bytes

A file is named ``snapshot-<term:020d>-<index:020d>.snap``. It is written as
``<name>.<random>.tmp`` in the same directory, fsynced, verified, renamed into place and the
directory fsynced, so a ``.snap`` file is either absent or complete. Every read checks the
header, the meta block's CRC-32, the exact file length and the data's sha256: a flipped bit
anywhere, a truncated or extended file, or a damaged header raises ``SnapshotCorrupt``; bad
data is never returned. ``latest()``/``list()`` check everything but the sha256.

All calls block; the driver runs them in a worker thread. One ``FileSnapshotStore`` per
directory: constructing one deletes ``.tmp`` leftovers, including those of another live store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from raft.core.types import Membership, SnapshotMeta
from raft.storage.base import SnapshotCorrupt

MAGIC = b"PRCNSNAP"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sHII")
HEADER_SIZE = _HEADER.size
MAX_META_LEN = 1 << 20  # a meta block is a few hundred bytes per server; this is a sanity bound
_SIZE_DIGITS = 20  # spare room in the meta block for the final size (at most 20 digits)
_NAME = re.compile(r"^snapshot-(\d{20})-(\d{20})\.snap$")
_READ_CHUNK = 1 << 20


class SnapshotNotFound(SnapshotCorrupt):
    """No snapshot with the requested index and term (unusable, like a corrupt one)."""


def snapshot_name(index: int, term: int) -> str:
    return f"snapshot-{term:020d}-{index:020d}.snap"


def encode_meta(meta: SnapshotMeta, size: int, sha256: str) -> bytes:
    membership = json.loads(meta.membership.encode())
    doc = {
        "index": meta.index,
        "term": meta.term,
        "membership": membership,
        "size": size,
        "sha256": sha256,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_meta(block: bytes) -> tuple[SnapshotMeta, int, str]:
    """Parse a meta block into (meta, size, sha256). Raises SnapshotCorrupt."""
    try:
        doc: Any = json.loads(block)
        if not isinstance(doc, dict):
            raise ValueError("meta is not a JSON object")
        index, term, size, digest = doc["index"], doc["term"], doc["size"], doc["sha256"]
        for name, value in (("index", index), ("term", term), ("size", size)):
            if type(value) is not int or value < 0:
                raise ValueError(f"bad {name}: {value!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"bad sha256: {digest!r}")
        if not isinstance(doc["membership"], list):
            raise ValueError("membership is not a list")
        membership = Membership.decode(json.dumps(doc["membership"]).encode())
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise SnapshotCorrupt(f"bad snapshot meta block: {exc}") from exc
    return SnapshotMeta(index, term, membership), size, digest


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SnapshotCorrupt(f"snapshot truncated: wanted {n} bytes, got {len(data)}")
    return data


def _read_header(f: IO[bytes], file_size: int) -> tuple[SnapshotMeta, int, str, int]:
    """Parse header and meta of an open snapshot file positioned at 0.

    Returns (meta, size, sha256, data_offset) and checks that the file is exactly as long as
    the header says. Raises SnapshotCorrupt.
    """
    if file_size < HEADER_SIZE:
        raise SnapshotCorrupt(f"snapshot too short for a header ({file_size} bytes)")
    magic, version, meta_len, meta_crc = _HEADER.unpack(_read_exact(f, HEADER_SIZE))
    if magic != MAGIC:
        raise SnapshotCorrupt(f"bad snapshot magic {magic!r}")
    if version != FORMAT_VERSION:
        raise SnapshotCorrupt(f"unsupported snapshot format version {version}")
    if meta_len > MAX_META_LEN or HEADER_SIZE + meta_len > file_size:
        raise SnapshotCorrupt(f"bad snapshot meta length {meta_len} (file is {file_size} bytes)")
    block = _read_exact(f, meta_len)
    if zlib.crc32(block) != meta_crc:
        raise SnapshotCorrupt("snapshot meta block fails its CRC-32")
    meta, size, digest = decode_meta(block)
    data_offset = HEADER_SIZE + meta_len
    if data_offset + size != file_size:
        raise SnapshotCorrupt(
            f"snapshot size mismatch: header says {size} data bytes, file has "
            f"{file_size - data_offset}"
        )
    return meta, size, digest, data_offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSnapshotSink:
    """A snapshot being written to a ``.tmp`` file. Nothing is visible until ``commit``."""

    def __init__(self, store: FileSnapshotStore, meta: SnapshotMeta) -> None:
        self._store = store
        self._meta = meta
        self._final = store.directory / snapshot_name(meta.index, meta.term)
        self._tmp = self._final.with_name(f"{self._final.name}.{secrets.token_hex(6)}.tmp")
        # Reserve the meta block now (the membership is known, size and sha256 are not) and
        # fill it in at commit time, so the data streams straight to disk exactly once.
        self._meta_len = len(encode_meta(meta, 0, "0" * 64)) + _SIZE_DIGITS
        self._hash = hashlib.sha256()
        self._size = 0
        self._file: IO[bytes] | None = open(self._tmp, "xb")  # noqa: SIM115 (closed in commit)
        try:
            self._file.write(b"\0" * (HEADER_SIZE + self._meta_len))
        except BaseException:
            self._discard()
            raise

    @property
    def path(self) -> Path:
        """Where the snapshot will be once committed."""
        return self._final

    def _open_file(self) -> IO[bytes]:
        if self._file is None:
            raise RuntimeError("snapshot sink is already committed or aborted")
        return self._file

    def write(self, data: bytes) -> None:
        f = self._open_file()
        try:
            f.write(data)
        except BaseException:
            self._discard()
            raise
        self._hash.update(data)
        self._size += len(data)

    def commit(self, expected_sha256: str | None = None) -> str:
        """Verify, fsync, rename into place, fsync the directory, apply the retain policy."""
        f = self._open_file()
        digest = self._hash.hexdigest()
        try:
            if expected_sha256 is not None and digest != expected_sha256.lower():
                raise SnapshotCorrupt(
                    f"snapshot {self._meta.index}/{self._meta.term}: sha256 {digest} does not "
                    f"match the expected {expected_sha256}"
                )
            block = encode_meta(self._meta, self._size, digest)
            if len(block) > self._meta_len:  # cannot happen: size has at most 20 digits
                raise RuntimeError("snapshot meta block outgrew its reservation")
            block = block.ljust(self._meta_len, b" ")
            f.seek(0)
            f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, self._meta_len, zlib.crc32(block)))
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            self._file = None
            os.replace(self._tmp, self._final)
        except BaseException:
            self._discard()
            raise
        _fsync_dir(self._store.directory)
        self._store._apply_retention(keep=self._final)
        return digest

    def abort(self) -> None:
        self._discard()

    def _discard(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> FileSnapshotSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self.abort()


class FileSnapshotStore:
    """``SnapshotStore`` in one directory, keeping the newest ``retain`` snapshots."""

    def __init__(self, directory: str | os.PathLike[str], retain: int = 2) -> None:
        if retain < 1:
            raise ValueError("retain must be at least 1")
        self.directory = Path(directory)
        self.retain = retain
        self.protected: tuple[int, int] | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("snapshot-*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def path(self, index: int, term: int) -> Path:
        return self.directory / snapshot_name(index, term)

    def protect(self, index: int, term: int) -> None:
        """Never delete this snapshot by retention: the log store's snapshot row refers to it
        (snapshots received and then ignored by Raft must not push it out)."""
        self.protected = (index, term)

    def create(self, meta: SnapshotMeta) -> FileSnapshotSink:
        return FileSnapshotSink(self, meta)

    def _named(self) -> list[tuple[int, int, Path]]:
        """(index, term, path) of every file named like a snapshot, newest first."""
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                m = _NAME.match(entry.name)
                if m is not None:
                    found.append((int(m.group(2)), int(m.group(1)), Path(entry.path)))
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return found

    def _complete(self) -> list[tuple[SnapshotMeta, Path]]:
        out = []
        for index, term, path in self._named():
            try:
                with open(path, "rb") as f:
                    meta, _, _, _ = _read_header(f, os.fstat(f.fileno()).st_size)
            except (OSError, SnapshotCorrupt):
                continue
            if (meta.index, meta.term) == (index, term):
                out.append((meta, path))
        return out

    def latest(self) -> SnapshotMeta | None:
        """The newest complete snapshot (header and length checked, checksum not verified)."""
        complete = self._complete()
        return complete[0][0] if complete else None

    def list(self) -> Sequence[SnapshotMeta]:
        """Complete snapshots, newest first (checksums not verified)."""
        return [meta for meta, _ in self._complete()]

    def _apply_retention(self, keep: Path) -> None:
        kept = {path for _, path in self._complete()[: self.retain]}
        kept.add(keep)
        if self.protected is not None:
            kept.add(self.path(*self.protected))
        for _, _, path in self._named():
            if path not in kept:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _open_verified(self, index: int, term: int) -> tuple[IO[bytes], SnapshotMeta, str, int]:
        """Open the snapshot and verify it completely; the file is left at the data start."""
        try:
            f = open(self.path(index, term), "rb")  # noqa: SIM115 (returned to the caller)
        except FileNotFoundError as exc:
            raise SnapshotNotFound(f"no snapshot at index {index}, term {term}") from exc
        try:
            meta, size, digest, offset = _read_header(f, os.fstat(f.fileno()).st_size)
            if (meta.index, meta.term) != (index, term):
                raise SnapshotCorrupt(
                    f"snapshot file for {index}/{term} holds {meta.index}/{meta.term}"
                )
            h = hashlib.sha256()
            remaining = size
            while remaining:
                chunk = _read_exact(f, min(remaining, _READ_CHUNK))
                h.update(chunk)
                remaining -= len(chunk)
            if h.hexdigest() != digest:
                raise SnapshotCorrupt(
                    f"snapshot {index}/{term}: data sha256 {h.hexdigest()} does not match the "
                    f"recorded {digest}"
                )
            f.seek(offset)
        except BaseException:
            f.close()
            raise
        return f, meta, digest, size

    def read(self, index: int, term: int) -> tuple[SnapshotMeta, bytes, str]:
        """The snapshot's meta, data and sha256, verified. Raises SnapshotCorrupt."""
        try:
            f = open(self.path(index, term), "rb")  # noqa: SIM115
        except FileNotFoundError as exc:
            raise SnapshotNotFound(f"no snapshot at index {index}, term {term}") from exc
        with f:
            meta, size, digest, _ = _read_header(f, os.fstat(f.fileno()).st_size)
            if (meta.index, meta.term) != (index, term):
                raise SnapshotCorrupt(
                    f"snapshot file for {index}/{term} holds {meta.index}/{meta.term}"
                )
            data = _read_exact(f, size)
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise SnapshotCorrupt(
                f"snapshot {index}/{term}: data sha256 {actual} does not match the recorded "
                f"{digest}"
            )
        return meta, data, digest

    def iter_chunks(self, index: int, term: int, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        """Yield the snapshot's data in chunks of at most ``chunk_size`` bytes.

        Verify-first: the whole file is checked (header, length, sha256) before the first
        chunk is yielded, so ``SnapshotCorrupt`` comes from the first ``next()`` and a consumer
        never sees bytes of a bad snapshot. The data is read twice; memory stays bounded.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        f, _, _, size = self._open_verified(index, term)
        with f:
            remaining = size
            while remaining:
                chunk = _read_exact(f, min(remaining, chunk_size))
                remaining -= len(chunk)
                yield chunk
