"""An incremental, bounded parser for the first flight of a TLS client: the ClientHello.

The mesh gateway never terminates TLS. It only needs the ``server_name`` (SNI, RFC 6066) of the
ClientHello to choose a backend, and then replays every byte it received, unchanged, to that
backend. Hence this parser:

- is fed bytes as they arrive (:meth:`ClientHelloParser.feed`) and answers
  :data:`NEED_MORE`, a :class:`ClientHello`, or raises :class:`ClientHelloError` — never any other
  exception, whatever the input;
- never alters or consumes the caller's bytes: it keeps its own copy of at most ``max_bytes``
  bytes (:attr:`ClientHelloParser.buffered`), and the caller keeps (and replays) its own;
- never needs more than ``max_bytes`` bytes (default one full TLS record, 16384 + 5): as soon as
  the lengths declared so far imply the ClientHello cannot end within the bound it fails with
  ``TOO_BIG``, and bytes fed past the bound before the hello is complete fail the same way;
- works in linear time over the bytes fed (records are reassembled as they complete; the
  handshake body is parsed once), so feeding one byte at a time is cheap;
- is strict about the framing it relies on (RFC 8446 §5.1, §4.1.2; RFC 5246 §7.4.1.2): records of
  content type handshake (22) with major version 3 and a length of 1..16384; a first handshake
  message of type client_hello (1); lengths of every vector consistent with their containers;
  extensions filling the body exactly; no duplicate extension; a ``server_name`` extension whose
  list holds exactly one ``host_name`` (type 0) entry of 1..255 printable ASCII bytes.

A ClientHello may span several records (all handshake records; nothing else may be interleaved).
Bytes after the record that completes the ClientHello (for instance TLS 1.3 early data) are
allowed and ignored; :attr:`ClientHello.length` tells where the hello's last record ends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_RECORD_PAYLOAD",
    "NEED_MORE",
    "ClientHello",
    "ClientHelloError",
    "ClientHelloParser",
    "ErrorReason",
    "NeedMore",
    "parse_client_hello",
]

RECORD_HEADER: Final = 5
MAX_RECORD_PAYLOAD: Final = 16384  # 2^14, RFC 8446 §5.1 (plaintext records)
DEFAULT_MAX_BYTES: Final = RECORD_HEADER + MAX_RECORD_PAYLOAD

CONTENT_HANDSHAKE: Final = 22
HANDSHAKE_CLIENT_HELLO: Final = 1
EXT_SERVER_NAME: Final = 0
EXT_ALPN: Final = 16
NAME_TYPE_HOST_NAME: Final = 0


class ErrorReason(enum.StrEnum):
    """Why the bytes are not a ClientHello the gateway can route."""

    NOT_TLS = "not_tls"  # first record is not a TLS handshake record (or SSLv2, or plain text)
    NOT_CLIENT_HELLO = "not_client_hello"  # a handshake, but the first message is another type
    MALFORMED = "malformed"  # lengths or fields inconsistent with the TLS grammar
    NO_SNI = "no_sni"  # a valid ClientHello without a host_name server_name
    BAD_SERVER_NAME = "bad_server_name"  # server_name present but not a usable host name
    TOO_BIG = "too_big"  # the ClientHello cannot end within max_bytes


class ClientHelloError(Exception):
    """The only exception the parser raises. ``reason`` is machine-readable (for metrics),
    ``str(err)`` explains it for logs."""

    def __init__(self, reason: ErrorReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not decided yet: feed more bytes."""


NEED_MORE: Final = NeedMore()


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A complete ClientHello.

    ``server_name`` is the host_name exactly as sent (ASCII, case preserved; routing folds
    case). ``length`` is the number of leading bytes of the stream made of the records that
    carry the ClientHello. ``alpn`` lists the offered ALPN protocols (empty when none), decoded
    as latin-1 so that any bytes survive."""

    server_name: str
    length: int
    alpn: tuple[str, ...] = ()


class ClientHelloParser:
    """Feed bytes with :meth:`feed` until it returns a :class:`ClientHello` or raises.

    Once it has returned a result or raised, the parser is finished: further calls return the
    same result or raise the same error, and bytes passed to them are ignored."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < RECORD_HEADER + 4:
            raise ValueError("max_bytes is too small to hold any ClientHello")
        self._max = max_bytes
        self._buf = bytearray()
        self._pos = 0  # start of the next unparsed record in _buf
        self._hs = bytearray()  # reassembled handshake payload
        self._hs_len: int | None = None  # declared ClientHello body length, once known
        self._result: ClientHello | None = None
        self._error: ClientHelloError | None = None

    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def buffered(self) -> bytes:
        """The bytes the parser kept (never more than ``max_bytes``), unchanged."""
        return bytes(self._buf)

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> ClientHello | NeedMore:
        """Add ``data`` (possibly empty) and report progress. Raises only ClientHelloError."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            return self._result
        try:
            room = self._max - len(self._buf)
            chunk = bytes(data)
            self._buf += chunk[:room]
            result = self._advance()
            if isinstance(result, NeedMore) and (len(chunk) > room or len(self._buf) >= self._max):
                raise ClientHelloError(
                    ErrorReason.TOO_BIG,
                    f"no complete ClientHello within the first {self._max} bytes",
                )
        except ClientHelloError as err:
            self._error = err
            raise
        except Exception as err:  # pragma: no cover - defensive: the contract is one error type
            self._error = ClientHelloError(ErrorReason.MALFORMED, f"unparseable input ({err!r})")
            raise self._error from err
        if isinstance(result, ClientHello):
            self._result = result
        return result

    # -- record layer ------------------------------------------------------------------------

    def _advance(self) -> ClientHello | NeedMore:
        buf = self._buf
        while True:
            avail = len(buf) - self._pos
            first = self._pos == 0
            if first and avail >= 1:
                self._check_first_byte(buf[0])
            if avail < RECORD_HEADER:
                self._check_partial_header(buf[self._pos :])
                return NEED_MORE
            ctype = buf[self._pos]
            major, minor = buf[self._pos + 1], buf[self._pos + 2]
            rec_len = (buf[self._pos + 3] << 8) | buf[self._pos + 4]
            if ctype != CONTENT_HANDSHAKE:
                if first:
                    raise ClientHelloError(
                        ErrorReason.NOT_TLS, f"first record has content type {ctype}"
                    )
                raise ClientHelloError(
                    ErrorReason.MALFORMED,
                    f"record of content type {ctype} inside the ClientHello",
                )
            if major != 3:
                raise ClientHelloError(
                    ErrorReason.NOT_TLS, f"record version {major}.{minor} is not TLS"
                )
            if rec_len == 0 or rec_len > MAX_RECORD_PAYLOAD:
                raise ClientHelloError(
                    ErrorReason.MALFORMED, f"handshake record length {rec_len} out of range"
                )
            end = self._pos + RECORD_HEADER + rec_len
            if end > self._max:
                raise ClientHelloError(
                    ErrorReason.TOO_BIG,
                    f"record ending at byte {end} exceeds the {self._max}-byte bound",
                )
            if len(buf) < end:
                return NEED_MORE
            self._hs += buf[self._pos + RECORD_HEADER : end]
            self._pos = end
            done = self._handshake_progress()
            if done is not None:
                return done

    def _check_first_byte(self, b: int) -> None:
        if b != CONTENT_HANDSHAKE:
            if b & 0x80:
                raise ClientHelloError(ErrorReason.NOT_TLS, "SSLv2-style record header")
            raise ClientHelloError(
                ErrorReason.NOT_TLS, f"first byte 0x{b:02x} is not a TLS handshake record"
            )

    def _check_partial_header(self, part: bytearray) -> None:
        # Fail fast on a partial header whose known bytes are already wrong.
        if len(part) >= 1 and part[0] != CONTENT_HANDSHAKE:
            reason = ErrorReason.NOT_TLS if self._pos == 0 else ErrorReason.MALFORMED
            raise ClientHelloError(reason, f"record of content type {part[0]}")
        if len(part) >= 2 and part[1] != 3:
            raise ClientHelloError(ErrorReason.NOT_TLS, f"record major version {part[1]}")

    # -- handshake layer ---------------------------------------------------------------------

    def _handshake_progress(self) -> ClientHello | None:
        hs = self._hs
        if len(hs) >= 1 and hs[0] != HANDSHAKE_CLIENT_HELLO:
            raise ClientHelloError(
                ErrorReason.NOT_CLIENT_HELLO, f"first handshake message has type {hs[0]}"
            )
        if len(hs) < 4:
            return None
        if self._hs_len is None:
            body_len = (hs[1] << 16) | (hs[2] << 8) | hs[3]
            # Fewest bytes the stream must still carry: the rest of the body, plus one record
            # header for every further record (at most 16384 payload bytes each).
            missing = 4 + body_len - len(hs)
            headers = -(-missing // MAX_RECORD_PAYLOAD) if missing > 0 else 0
            needed = self._pos + missing + headers * RECORD_HEADER
            if needed > self._max:
                raise ClientHelloError(
                    ErrorReason.TOO_BIG,
                    f"ClientHello of {body_len} bytes cannot end within {self._max} bytes",
                )
            self._hs_len = body_len
        if len(hs) < 4 + self._hs_len:
            return None
        if len(hs) > 4 + self._hs_len:
            # Only the ClientHello belongs in the client's first handshake flight.
            raise ClientHelloError(
                ErrorReason.MALFORMED, "unexpected handshake bytes after the ClientHello"
            )
        name, alpn = _parse_body(bytes(hs[4:]))
        return ClientHello(server_name=name, length=self._pos, alpn=alpn)


class _Reader:
    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise ClientHelloError(
                ErrorReason.MALFORMED, f"{what}: needs {n} bytes, {self.remaining} left"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def take_all(self) -> bytes:
        return self.take(self.remaining, "rest")

    def vector(self, len_bytes: int, what: str) -> _Reader:
        n = self.uint(len_bytes, f"{what} length")
        if n > self.remaining:
            raise ClientHelloError(
                ErrorReason.MALFORMED, f"{what}: length {n} exceeds the {self.remaining} left"
            )
        sub = _Reader(self._data, self._pos, self._pos + n)
        self._pos += n
        return sub


def _parse_body(body: bytes) -> tuple[str, tuple[str, ...]]:
    """(server name, ALPN protocols) of a ClientHello body, or ClientHelloError.

    The common, well-formed shape goes through :func:`_parse_body_fast` (plain index arithmetic,
    no reader objects: this runs once per gateway connection); anything it does not accept is
    parsed again by :func:`_parse_body_strict`, which decides the outcome and the error. The
    fast path only ever accepts bodies the strict one accepts, with the same result."""
    fast = _parse_body_fast(body)
    if fast is not None:
        return fast
    return _parse_body_strict(body)


def _parse_body_fast(body: bytes) -> tuple[str, tuple[str, ...]] | None:
    """The result of :func:`_parse_body_strict` for a body in the common shape (a server_name
    extension with a single host_name entry), None for anything else (including every error)."""
    n = len(body)
    if n < 35 or body[0] != 3 or body[34] > 32:
        return None
    p = 35 + body[34]  # legacy_version, random, legacy_session_id
    if p + 2 > n:
        return None
    suites = (body[p] << 8) | body[p + 1]
    if suites < 2 or suites % 2:
        return None
    p += 2 + suites
    if p + 1 > n or body[p] < 1:
        return None
    p += 1 + body[p]
    if p + 2 > n or p + 2 + ((body[p] << 8) | body[p + 1]) != n:
        return None
    p += 2
    seen: set[int] = set()
    name: str | None = None
    alpn: tuple[str, ...] = ()
    while p < n:
        if p + 4 > n:
            return None
        ext_type = (body[p] << 8) | body[p + 1]
        end = p + 4 + ((body[p + 2] << 8) | body[p + 3])
        if end > n or ext_type in seen:
            return None
        seen.add(ext_type)
        p += 4
        if ext_type == EXT_SERVER_NAME:
            # server_name_list of exactly one host_name entry filling the extension.
            if end - p < 6 or ((body[p] << 8) | body[p + 1]) != end - p - 2 or body[p + 2] != 0:
                return None
            if ((body[p + 3] << 8) | body[p + 4]) != end - p - 5 or end - p - 5 > 255:
                return None
            host = body[p + 5 : end]
            if not host.isascii():
                return None
            name = host.decode("ascii")
            if not name.isprintable() or " " in name:  # ASCII printable minus space: 0x21-0x7e
                return None
        elif ext_type == EXT_ALPN:
            if end - p < 2 or ((body[p] << 8) | body[p + 1]) != end - p - 2 or end - p == 2:
                return None
            q = p + 2
            protos: list[str] = []
            while q < end:
                plen = body[q]
                if plen == 0 or q + 1 + plen > end:
                    return None
                protos.append(body[q + 1 : q + 1 + plen].decode("latin-1"))
                q += 1 + plen
            alpn = tuple(protos)
        p = end
    if name is None:
        return None
    return name, alpn


def _parse_body_strict(body: bytes) -> tuple[str, tuple[str, ...]]:
    r = _Reader(body)
    major = r.uint(1, "legacy_version")
    r.take(1, "legacy_version")
    if major != 3:
        raise ClientHelloError(ErrorReason.MALFORMED, f"ClientHello version major {major}")
    r.take(32, "random")
    sid = r.vector(1, "legacy_session_id")
    if sid.remaining > 32:
        raise ClientHelloError(ErrorReason.MALFORMED, "session id longer than 32 bytes")
    suites = r.vector(2, "cipher_suites")
    if suites.remaining < 2 or suites.remaining % 2:
        raise ClientHelloError(ErrorReason.MALFORMED, "cipher_suites length invalid")
    comp = r.vector(1, "compression_methods")
    if comp.remaining < 1:
        raise ClientHelloError(ErrorReason.MALFORMED, "no compression methods")
    if r.remaining == 0:
        raise ClientHelloError(ErrorReason.NO_SNI, "ClientHello has no extensions")
    exts = r.vector(2, "extensions")
    if r.remaining:
        raise ClientHelloError(ErrorReason.MALFORMED, "bytes after the extensions")
    seen: set[int] = set()
    name: str | None = None
    alpn: tuple[str, ...] = ()
    while exts.remaining:
        ext_type = exts.uint(2, "extension type")
        data = exts.vector(2, "extension data")
        if ext_type in seen:
            raise ClientHelloError(ErrorReason.MALFORMED, f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            name = _parse_server_name(data)
        elif ext_type == EXT_ALPN:
            alpn = _parse_alpn(data)
    if name is None:
        raise ClientHelloError(ErrorReason.NO_SNI, "no server_name extension")
    return name, alpn


def _parse_server_name(data: _Reader) -> str:
    names = data.vector(2, "server_name_list")
    if data.remaining:
        raise ClientHelloError(ErrorReason.MALFORMED, "bytes after server_name_list")
    if names.remaining == 0:
        raise ClientHelloError(ErrorReason.MALFORMED, "empty server_name_list")
    host: bytes | None = None
    while names.remaining:
        name_type = names.uint(1, "name_type")
        value = names.vector(2, "host_name").take_all()
        if name_type != NAME_TYPE_HOST_NAME:
            continue
        if host is not None:
            raise ClientHelloError(ErrorReason.BAD_SERVER_NAME, "more than one host_name")
        host = value
    if host is None:
        raise ClientHelloError(ErrorReason.NO_SNI, "server_name has no host_name entry")
    if not 1 <= len(host) <= 255:
        raise ClientHelloError(ErrorReason.BAD_SERVER_NAME, f"host_name of {len(host)} bytes")
    if any(b <= 0x20 or b >= 0x7F for b in host):
        raise ClientHelloError(ErrorReason.BAD_SERVER_NAME, "host_name is not printable ASCII")
    return host.decode("ascii")


def _parse_alpn(data: _Reader) -> tuple[str, ...]:
    protos = data.vector(2, "protocol_name_list")
    if data.remaining:
        raise ClientHelloError(ErrorReason.MALFORMED, "bytes after protocol_name_list")
    out: list[str] = []
    while protos.remaining:
        p = protos.vector(1, "protocol_name").take_all()
        if not p:
            raise ClientHelloError(ErrorReason.MALFORMED, "empty ALPN protocol name")
        out.append(p.decode("latin-1"))
    if not out:
        raise ClientHelloError(ErrorReason.MALFORMED, "empty ALPN protocol list")
    return tuple(out)


def parse_client_hello(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ClientHello | NeedMore:
    """One-shot form: parse ``data`` as the start of a stream (see :class:`ClientHelloParser`)."""
    return ClientHelloParser(max_bytes).feed(data)
