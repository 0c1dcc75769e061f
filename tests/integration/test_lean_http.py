"""The lean KV front end (``server.http.lean``) on a real ``proconsul agent -dev``: hot-path
answers equal aiohttp's, keep-alive, pipelining in order, hand-over of a connection to aiohttp
mid-stream, ``Connection: close``, requests split across packets, malformed requests."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from helpers.agentproc import Client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def agent(dev_agent: Client) -> Client:
    return dev_agent


@pytest.fixture
def conn(agent: Client) -> Iterator[socket.socket]:
    port = urlsplit(agent.base).port
    assert port is not None
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        yield s
    finally:
        s.close()


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Reader:
    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.s.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed mid-answer: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return Answer(status, headers, body)

    def closed(self) -> bool:
        try:
            return not self._fill() and not self.buf
        except ConnectionResetError:
            return True


def put(key: str, value: bytes, extra: str = "") -> bytes:
    return (
        f"PUT /v1/kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(value)}\r\n{extra}\r\n"
    ).encode() + value


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def test_hot_path_answers_like_aiohttp(conn: socket.socket, agent: Client) -> None:
    r = Reader(conn)
    conn.sendall(put("lean/a", b"hello"))
    a = r.read()
    assert a.status == 200 and a.body == b"true"
    assert a.headers["content-type"].startswith("application/json")
    assert "server" not in a.headers  # answered by the lean front end (aiohttp adds Server)

    conn.sendall(get("/v1/kv/lean/a"))
    lean = r.read()
    # The same read through aiohttp (any query parameter goes there; ?dc=dc1 changes nothing).
    slow = agent.get("/v1/kv/lean/a?dc=dc1")
    assert lean.status == slow.status == 200
    assert "server" not in lean.headers and "Server" in slow.headers
    assert lean.body == slow.body
    [entry] = slow.json()
    assert entry["Key"] == "lean/a" and base64.b64decode(entry["Value"]) == b"hello"
    for name in (
        "X-Consul-Index",
        "X-Consul-KnownLeader",
        "X-Consul-LastContact",
        "X-Consul-Effective-Consistency",
    ):
        assert lean.headers[name.lower()] == slow.headers[name], name

    conn.sendall(get("/v1/kv/lean/missing"))
    missing = r.read()
    slow_missing = agent.get("/v1/kv/lean/missing?dc=dc1")
    assert missing.status == slow_missing.status == 404
    assert missing.body == b""
    assert missing.headers["x-consul-index"] == slow_missing.headers["X-Consul-Index"]

    # An empty body stores a nil value, as through aiohttp.
    conn.sendall(put("lean/empty", b""))
    assert r.read().body == b"true"
    assert agent.get("/v1/kv/lean/empty").json()[0]["Value"] is None


def test_pipelined_with_hand_over_keeps_order(conn: socket.socket, agent: Client) -> None:
    r = Reader(conn)
    conn.sendall(
        put("lean/p/1", b"one")
        + get("/v1/kv/lean/p/1")
        + get("/v1/kv/lean/p/?keys")  # not ours: aiohttp takes the connection here
        + put("lean/p/2", b"two")
        + get("/v1/kv/lean/p/2?raw")
        + get("/v1/kv/lean/p/1")
    )
    answers = [r.read() for _ in range(6)]
    assert [a.status for a in answers] == [200] * 6
    assert answers[0].body == b"true"
    assert base64.b64decode(answers[1].body.split(b'"Value":"')[1].split(b'"')[0]) == b"one"
    assert answers[2].body == b'["lean/p/1"]'
    assert answers[3].body == b"true"
    assert answers[4].body == b"two"
    assert b'"Key":"lean/p/1"' in answers[5].body


def test_split_packets_and_keep_alive(conn: socket.socket) -> None:
    r = Reader(conn)
    request = put("lean/split", b"0123456789" * 50)
    for i in range(0, len(request), 7):
        conn.sendall(request[i : i + 7])
    assert r.read().body == b"true"
    for _ in range(20):
        conn.sendall(get("/v1/kv/lean/split"))
        a = r.read()
        assert a.status == 200 and b'"Key":"lean/split"' in a.body


def test_connection_close(conn: socket.socket) -> None:
    r = Reader(conn)
    conn.sendall(put("lean/close", b"x", "Connection: close\r\n") + get("/v1/kv/lean/close"))
    a = r.read()
    assert a.status == 200 and a.body == b"true"
    assert a.headers.get("connection", "").lower() == "close"
    assert r.closed()


def test_hand_over_then_hot_requests_on_the_same_connection(conn: socket.socket) -> None:
    r = Reader(conn)
    conn.sendall(get("/v1/status/leader"))
    assert r.read().status == 200
    conn.sendall(put("lean/after", b"later"))
    assert r.read().body == b"true"
    conn.sendall(get("/v1/kv/lean/after?raw"))
    assert r.read().body == b"later"


def test_other_methods_and_bad_requests_go_to_aiohttp(conn: socket.socket, agent: Client) -> None:
    r = Reader(conn)
    conn.sendall(b"DELETE /v1/kv/lean/a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.read().body == b"true"
    assert agent.get("/v1/kv/lean/a").status == 404
    conn.sendall(b"GARBAGE\r\n\r\n")
    assert r.read().status == 400


def test_empty_key_and_odd_paths_answer_like_aiohttp(conn: socket.socket) -> None:
    r = Reader(conn)
    conn.sendall(put("", b"x"))
    a = r.read()
    assert a.status == 400 and a.body == b"Missing key name"


def test_http_1_0_goes_to_aiohttp(agent: Client) -> None:
    port = urlsplit(agent.base).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PUT /v1/kv/lean/old HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
        a = Reader(s).read()
        assert a.status == 200 and a.body == b"true"


def test_oversized_header_block_goes_to_aiohttp(conn: socket.socket) -> None:
    r = Reader(conn)
    conn.sendall(
        b"GET /v1/kv/lean/big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    )
    assert r.read().status == 400  # aiohttp's header limit, as before the lean front end


def test_client_gone_mid_write_still_applies(agent: Client) -> None:
    port = urlsplit(agent.base).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(put("lean/gone", b"kept"))
    for _ in range(50):
        got = agent.get("/v1/kv/lean/gone?raw")
        if got.status == 200:
            assert got.body == b"kept"
            return
        time.sleep(0.1)
    raise AssertionError("the write of a client that went away was not applied")
