"""The mesh gateway's ClientHello parser, against real ClientHellos from Python's ssl module
(split at every byte boundary, re-framed over several records) and hand-built malformed ones,
plus hypothesis fuzzing: it answers NEED_MORE, a ClientHello or ClientHelloError, nothing else."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.gateway.clienthello import (
    DEFAULT_MAX_BYTES,
    NEED_MORE,
    ClientHello,
    ClientHelloError,
    ClientHelloParser,
    ErrorReason,
    NeedMore,
    parse_client_hello,
)


def real_hello(
    server_hostname: str | None,
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


NAMES = [
    "server.dc1.consul",
    "node-1.server.dc2.consul",
    "Web.Default.DC1.internal.11111111-2222-3333-4444-555555555555.consul",
    "a",
    "x" * 63 + "." + "y" * 63 + "." + "z" * 63,
]
HELLOS = {
    name: real_hello(name, alpn=["consul/rpc-multi", "h2"] if i % 2 else None)
    for i, name in enumerate(NAMES)
}
TLS12 = real_hello("server.dc1.consul", max_version=ssl.TLSVersion.TLSv1_2)


def records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        ctype, _ver, n = struct.unpack("!BHH", data[pos : pos + 5])
        out.append((ctype, data[pos + 5 : pos + 5 + n]))
        pos += 5 + n
    return out


def reframe(hello: bytes, sizes: list[int]) -> bytes:
    """The same handshake payload carried by records of the given payload sizes (the last
    record takes the rest)."""
    [(ctype, payload)] = records(hello)
    out, pos = b"", 0
    for size in sizes:
        if pos >= len(payload):
            break
        chunk = payload[pos : pos + size]
        out += struct.pack("!BHH", ctype, 0x0301, len(chunk)) + chunk
        pos += len(chunk)
    if pos < len(payload):
        out += struct.pack("!BHH", ctype, 0x0301, len(payload) - pos) + payload[pos:]
    return out


def build_hello(
    extensions: list[tuple[int, bytes]] | None,
    *,
    version: bytes = b"\x03\x03",
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    hs_type: int = 1,
    trailing: bytes = b"",
) -> bytes:
    body = version + b"\x00" * 32
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        ext = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
        body += struct.pack("!H", len(ext)) + ext
    body += trailing
    hs = bytes([hs_type]) + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0301, len(hs)) + hs


def sni_ext(*entries: tuple[int, bytes]) -> tuple[int, bytes]:
    lst = b"".join(bytes([t]) + struct.pack("!H", len(n)) + n for t, n in entries)
    return (0, struct.pack("!H", len(lst)) + lst)


def expect_error(data: bytes, reason: ErrorReason, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    with pytest.raises(ClientHelloError) as info:
        parse_client_hello(data, max_bytes)
    assert info.value.reason is reason, info.value


# -- real ClientHellos -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_real_hello_whole(name: str) -> None:
    hello = HELLOS[name]
    result = parse_client_hello(hello)
    assert isinstance(result, ClientHello)
    assert result.server_name == name  # case preserved
    assert result.length == len(hello)


def test_alpn_reported() -> None:
    result = parse_client_hello(HELLOS[NAMES[1]])
    assert isinstance(result, ClientHello)
    assert result.alpn == ("consul/rpc-multi", "h2")
    result = parse_client_hello(HELLOS[NAMES[0]])
    assert isinstance(result, ClientHello) and result.alpn == ()


def test_tls12_hello() -> None:
    result = parse_client_hello(TLS12)
    assert isinstance(result, ClientHello) and result.server_name == "server.dc1.consul"


@pytest.mark.parametrize("name", NAMES[:3])
def test_split_at_every_boundary(name: str) -> None:
    hello = HELLOS[name]
    for cut in range(len(hello) + 1):
        parser = ClientHelloParser()
        first = parser.feed(hello[:cut])
        if cut < len(hello):
            assert first is NEED_MORE, cut
            assert isinstance(parser.feed(hello[cut:]), ClientHello)
        else:
            assert isinstance(first, ClientHello)
        assert parser.buffered == hello  # kept unchanged, nothing dropped


def test_byte_by_byte() -> None:
    hello = HELLOS[NAMES[2]]
    parser = ClientHelloParser()
    for i in range(len(hello) - 1):
        assert parser.feed(hello[i : i + 1]) is NEED_MORE
        assert not parser.done
    result = parser.feed(hello[-1:])
    assert isinstance(result, ClientHello) and result.server_name == NAMES[2]
    assert parser.done
    # finished: further feeds return the same result and change nothing
    assert parser.feed(b"more") is result
    assert parser.buffered == hello


def test_input_not_altered() -> None:
    hello = bytearray(HELLOS[NAMES[0]])
    copy = bytes(hello)
    parse_client_hello(hello)  # type: ignore[arg-type]
    assert hello == copy


def test_trailing_bytes_ignored() -> None:
    hello = HELLOS[NAMES[0]]
    result = parse_client_hello(hello + b"\x17\x03\x03\x00\x05early")
    assert isinstance(result, ClientHello) and result.length == len(hello)


@pytest.mark.parametrize("sizes", [[1], [3], [4], [5, 7, 100], [200], [1] * 600])
def test_hello_over_several_records(sizes: list[int]) -> None:
    data = reframe(HELLOS[NAMES[2]], sizes)
    result = parse_client_hello(data)
    assert isinstance(result, ClientHello)
    assert result.server_name == NAMES[2] and result.length == len(data)
    parser = ClientHelloParser()
    for i in range(len(data) - 1):
        assert parser.feed(data[i : i + 1]) is NEED_MORE
    assert isinstance(parser.feed(data[-1:]), ClientHello)


def test_empty_feed() -> None:
    assert ClientHelloParser().feed(b"") is NEED_MORE


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x00", b"SSH-2.0-x", b"\x80\x2e\x01"])
def test_not_tls_fails_on_first_byte(data: bytes) -> None:
    expect_error(data[:1], ErrorReason.NOT_TLS)
    expect_error(data, ErrorReason.NOT_TLS)


def test_bad_record_version() -> None:
    expect_error(b"\x16\x02", ErrorReason.NOT_TLS)
    expect_error(b"\x16\x04\x01\x00\x10", ErrorReason.NOT_TLS)


def test_other_content_type_first() -> None:
    expect_error(b"\x15\x03\x03\x00\x02\x02\x28", ErrorReason.NOT_TLS)  # an alert


def test_no_sni() -> None:
    expect_error(real_hello(None), ErrorReason.NO_SNI)
    expect_error(build_hello(None), ErrorReason.NO_SNI)
    expect_error(build_hello([(16, b"\x00\x03\x02h2")]), ErrorReason.NO_SNI)
    expect_error(build_hello([sni_ext((1, b"other"))]), ErrorReason.NO_SNI)


def test_minimal_built_hello() -> None:
    result = parse_client_hello(build_hello([sni_ext((0, b"server.dc1.consul"))]))
    assert isinstance(result, ClientHello) and result.server_name == "server.dc1.consul"
    # an unknown name type next to host_name is skipped
    result = parse_client_hello(build_hello([sni_ext((7, b"zz"), (0, b"a.b"))]))
    assert isinstance(result, ClientHello) and result.server_name == "a.b"


def test_not_client_hello() -> None:
    expect_error(build_hello([sni_ext((0, b"a"))], hs_type=2), ErrorReason.NOT_CLIENT_HELLO)
    # decided as soon as the first handshake byte is known
    expect_error(b"\x16\x03\x01\x00\x01\x02", ErrorReason.NOT_CLIENT_HELLO)


def test_record_lengths() -> None:
    expect_error(b"\x16\x03\x01\x00\x00", ErrorReason.MALFORMED)
    expect_error(b"\x16\x03\x01\x40\x01", ErrorReason.MALFORMED)  # 16385 > 2^14


def test_interleaved_record_type() -> None:
    data = reframe(HELLOS[NAMES[0]], [10])
    bad = data[:15] + b"\x14" + data[16:]  # second record turned into change_cipher_spec
    expect_error(bad, ErrorReason.MALFORMED)
    expect_error(bad[:16], ErrorReason.MALFORMED)  # fails as soon as that byte arrives


@pytest.mark.parametrize(
    "data",
    [
        build_hello([sni_ext((0, b"a"))], version=b"\x02\x00"),
        build_hello([sni_ext((0, b"a"))], session_id=b"x" * 33),
        build_hello([sni_ext((0, b"a"))], suites=b""),
        build_hello([sni_ext((0, b"a"))], suites=b"\x13"),
        build_hello([sni_ext((0, b"a"))], compression=b""),
        build_hello([sni_ext((0, b"a"))], trailing=b"\x00"),
        build_hello([sni_ext((0, b"a")), sni_ext((0, b"b"))]),  # duplicate extension
        build_hello([(0, b"")]),  # empty server_name data
        build_hello([(0, b"\x00\x00")]),  # empty server_name_list
        build_hello([(0, b"\x00\x04\x00\x00\x05abc")]),  # host_name length overruns
        build_hello([(0, b"\x00\x03\x00\x00\x01a")]),  # list length too short for entry
        build_hello([(0, b"\x00\x04\x00\x00\x01a\x00")]),  # bytes after the list
        build_hello([(16, b"\x00\x00")]),  # empty ALPN list
        build_hello([(16, b"\x00\x01\x00")]),  # empty ALPN name
    ],
)
def test_malformed(data: bytes) -> None:
    expect_error(data, ErrorReason.MALFORMED)


def test_extension_block_overruns_body() -> None:
    data = bytearray(build_hello([sni_ext((0, b"abc"))]))
    ext_len_at = 5 + 4 + 2 + 32 + 1 + 2 + 2 + 1 + 1
    data[ext_len_at + 1] += 1
    expect_error(bytes(data), ErrorReason.MALFORMED)


def test_handshake_bytes_after_hello() -> None:
    hello = build_hello([sni_ext((0, b"a"))])
    [(_, payload)] = records(hello)
    more = payload + b"\x10"
    expect_error(struct.pack("!BHH", 22, 0x0301, len(more)) + more, ErrorReason.MALFORMED)


@pytest.mark.parametrize(
    "entries",
    [
        ((0, b""),),
        ((0, b"a" * 256),),
        ((0, b"caf\xc3\xa9"),),
        ((0, b"a b"),),
        ((0, b"a\x00"),),
        ((0, b"a"), (0, b"b")),
    ],
)
def test_bad_server_name(entries: tuple[tuple[int, bytes], ...]) -> None:
    expect_error(build_hello([sni_ext(*entries)]), ErrorReason.BAD_SERVER_NAME)


def test_too_big_declared_handshake_length() -> None:
    # handshake claims 16 MiB: refused at once, long before the bytes could arrive
    expect_error(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", ErrorReason.TOO_BIG)


def test_too_big_record_beyond_bound() -> None:
    hello = HELLOS[NAMES[0]]
    expect_error(hello[:5], ErrorReason.TOO_BIG, max_bytes=len(hello) - 1)
    assert isinstance(parse_client_hello(hello, max_bytes=len(hello)), ClientHello)


def test_too_big_over_many_records() -> None:
    data = reframe(HELLOS[NAMES[0]], [1] * 1000)  # six bytes per payload byte
    expect_error(data, ErrorReason.TOO_BIG, max_bytes=len(data) - 1)
    parser = ClientHelloParser(max_bytes=len(data) - 1)
    with pytest.raises(ClientHelloError) as info:
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    assert info.value.reason is ErrorReason.TOO_BIG
    assert len(parser.buffered) <= len(data) - 1
    assert isinstance(parse_client_hello(data, max_bytes=len(data)), ClientHello)


def test_too_big_when_bound_reached_mid_header() -> None:
    # three 1-byte records (18 bytes) and a partial fourth header fill a 22-byte bound exactly:
    # nothing more can fit, so the parser says so at once instead of waiting
    data = reframe(HELLOS[NAMES[0]], [1] * 10)
    expect_error(data[:22], ErrorReason.TOO_BIG, max_bytes=22)


def test_error_is_sticky() -> None:
    parser = ClientHelloParser()
    with pytest.raises(ClientHelloError):
        parser.feed(b"GET")
    with pytest.raises(ClientHelloError):
        parser.feed(HELLOS[NAMES[0]])
    assert parser.done


def test_max_bytes_too_small() -> None:
    with pytest.raises(ValueError):
        ClientHelloParser(max_bytes=3)


# -- fuzzing -----------------------------------------------------------------------------------


def run_chunks(chunks: list[bytes], max_bytes: int = DEFAULT_MAX_BYTES) -> object:
    parser = ClientHelloParser(max_bytes)
    result: object = NEED_MORE
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
            assert len(parser.buffered) <= max_bytes
    except ClientHelloError as err:
        return err.reason
    return result


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    result = run_chunks(chunks)
    assert isinstance(result, ErrorReason | NeedMore | ClientHello)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.integers(0, 3))
def test_fuzz_handshake_prefixed(chunks: list[bytes], which: int) -> None:
    # random bytes behind a plausible record header go deeper into the parser
    head = [b"\x16\x03\x01", b"\x16\x03\x03\x00\x30\x01", b"\x16\x03\x01\x00\x20\x01\x00\x00"]
    result = run_chunks([head[which % 3], *chunks], max_bytes=256)
    assert isinstance(result, ErrorReason | NeedMore | ClientHello)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NAMES), st.data())
def test_fuzz_truncation_needs_more(name: str, data: st.DataObject) -> None:
    hello = HELLOS[name]
    cut = data.draw(st.integers(0, len(hello) - 1))
    assert parse_client_hello(hello[:cut]) is NEED_MORE


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(NAMES[:3]),
    st.lists(st.integers(1, 300), max_size=10),
    st.lists(st.integers(1, 400), max_size=10),
)
def test_fuzz_reframe_and_chunk(name: str, sizes: list[int], cuts: list[int]) -> None:
    data = reframe(HELLOS[name], sizes)
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(data[pos : pos + c])
        pos += c
    chunks.append(data[pos:])
    result = run_chunks(chunks)
    assert isinstance(result, ClientHello)
    assert result.server_name == name and result.length == len(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(NAMES[:3]), st.data())
def test_fuzz_mutation(name: str, data: st.DataObject) -> None:
    hello = bytearray(HELLOS[name])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(hello) - 1))
        hello[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    result = run_chunks([bytes(hello[:cut]), bytes(hello[cut:])])
    assert isinstance(result, ErrorReason | NeedMore | ClientHello)
    if isinstance(result, ClientHello):
        assert result.length <= len(hello)
