"""``server.agent.checks`` without sockets: the status mapping and output texts of the UDP,
gRPC, H2PING and alias runners, Consul's ``StatusHandler`` thresholds and the 4 KiB output
caps."""

from __future__ import annotations

import asyncio
import errno
import struct
from typing import Any

import grpc
import pytest

from server.agent.checks import (
    CHECK_BUF_SIZE,
    H2_FLAG_ACK,
    H2_GOAWAY,
    H2_PING,
    H2_PREFACE,
    H2_SETTINGS,
    CheckRunners,
    H2ProtocolError,
    StatusHandler,
    TailBuffer,
    alias_status,
    decode_health_response,
    encode_health_request,
    grpc_error_text,
    grpc_result,
    h2_frame,
    h2_ping,
    output_limit,
    truncate_output,
    udp_result,
)
from server.agent.local import CRITICAL, PASSING, WARNING, CheckType, LocalState

# --- StatusHandler ---------------------------------------------------------------------------


def handler(**kw: int) -> tuple[StatusHandler, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    h = StatusHandler(lambda s, o: seen.append((s, o)), **kw)
    return h, seen


def test_status_handler_without_thresholds_reports_every_result() -> None:
    h, seen = handler()
    for status in (PASSING, CRITICAL, WARNING, CRITICAL):
        h.update(status, status)
    assert [s for s, _ in seen] == [PASSING, CRITICAL, WARNING, CRITICAL]


def test_status_handler_success_before_passing() -> None:
    h, seen = handler(success_before_passing=2)
    h.update(PASSING, "1")  # the first result is reported at once
    h.update(CRITICAL, "down")
    h.update(PASSING, "up 1")
    assert seen == [(PASSING, "1"), (CRITICAL, "down")]
    h.update(PASSING, "up 2")
    assert seen[-1] == (PASSING, "up 2")
    # A warning result counts as a success (Consul).
    h.update(CRITICAL, "x")
    h.update(WARNING, "w1")
    h.update(WARNING, "w2")
    assert seen[-2:] == [(CRITICAL, "x"), (WARNING, "w2")]


def test_status_handler_failures_before_warning_and_critical() -> None:
    h, seen = handler(failures_before_warning=1, failures_before_critical=3)
    h.update(PASSING, "ok")
    h.update(CRITICAL, "f1")  # 1 failure: warning
    h.update(CRITICAL, "f2")  # 2: still warning
    h.update(CRITICAL, "f3")  # 3: critical
    assert seen == [(PASSING, "ok"), (WARNING, "f1"), (WARNING, "f2"), (CRITICAL, "f3")]
    h.update(PASSING, "back")
    h.update(CRITICAL, "g1")
    assert seen[-2:] == [(PASSING, "back"), (WARNING, "g1")]


def test_status_handler_failures_before_warning_defaults_to_critical() -> None:
    h, seen = handler(failures_before_critical=2)
    h.update(PASSING, "ok")
    h.update(CRITICAL, "f1")  # below both thresholds: nothing
    assert seen == [(PASSING, "ok")]
    h.update(CRITICAL, "f2")
    assert seen[-1] == (CRITICAL, "f2")


def test_status_handler_first_failure_is_reported() -> None:
    h, seen = handler(failures_before_critical=3)
    h.update(CRITICAL, "f")
    assert seen == [(CRITICAL, "f")]


# --- outputs ---------------------------------------------------------------------------------


def test_output_limit_is_4k_or_smaller() -> None:
    assert output_limit(CheckType()) == CHECK_BUF_SIZE == 4096
    assert output_limit(CheckType(output_max_size=100)) == 100
    assert output_limit(CheckType(output_max_size=10_000)) == 4096


def test_truncate_output_and_tail_buffer() -> None:
    assert truncate_output("abc") == "abc"
    assert truncate_output("x" * 5000) == "x" * 4096 + " ... (captured 4096 of 5000 bytes)"
    buf = TailBuffer(4)
    buf.write(b"hello ")
    buf.write(b"world")
    assert buf.text() == "orld" and buf.total == 11
    assert buf.captured() == "Captured 4 of 11 bytes\n...\norld"
    small = TailBuffer(100)
    small.write(b"fine")
    assert small.captured() == "fine"


# --- UDP ---------------------------------------------------------------------------------------


def test_udp_result_mapping() -> None:
    assert udp_result("127.0.0.1:53", None, ("127.0.0.1", 1), ("127.0.0.1", 53)) == (
        PASSING,
        "UDP connect 127.0.0.1:53: Success",
    )
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert udp_result("127.0.0.1:9", refused, ("127.0.0.1", 40000), ("127.0.0.1", 9)) == (
        CRITICAL,
        "read udp 127.0.0.1:40000->127.0.0.1:9: read: connection refused",
    )
    status, output = udp_result("[::1]:9", refused, ("::1", 5, 0, 0), ("::1", 9, 0, 0))
    assert (status, output) == (CRITICAL, "read udp [::1]:5->[::1]:9: read: connection refused")


# --- gRPC ----------------------------------------------------------------------------------------


def test_grpc_health_messages() -> None:
    assert encode_health_request("") == b""
    assert encode_health_request("web") == b"\x0a\x03web"
    assert encode_health_request("s" * 200)[:3] == b"\x0a\xc8\x01"
    assert decode_health_response(b"") == 0
    assert decode_health_response(b"\x08\x01") == 1
    # Unknown fields of every wire type are skipped.
    extra = b"\x12\x02hi" + b"\x19" + b"\0" * 8 + b"\x25" + b"\0" * 4 + b"\x08\x02"
    assert decode_health_response(extra) == 2
    with pytest.raises(ValueError):
        decode_health_response(b"\x08")
    with pytest.raises(ValueError):
        decode_health_response(b"\x12\x05ab")


def test_grpc_result_mapping() -> None:
    assert grpc_result("127.0.0.1:1", 1) == (PASSING, "gRPC check 127.0.0.1:1: success")
    assert grpc_result("h:1/svc", 2) == (CRITICAL, "gRPC h:1/svc serving status: NOT_SERVING")
    assert grpc_result("h:1", 0) == (CRITICAL, "gRPC h:1 serving status: UNKNOWN")
    assert grpc_result("h:1", 3) == (CRITICAL, "gRPC h:1 serving status: SERVICE_UNKNOWN")
    assert grpc_error_text(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") == (
        "rpc error: code = DeadlineExceeded desc = Deadline Exceeded"
    )
    assert grpc_error_text(grpc.StatusCode.NOT_FOUND, None) == (
        "rpc error: code = NotFound desc = "
    )


# --- H2PING ----------------------------------------------------------------------------------


class FakeWriter:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], bytes(data[pos + 9 : pos + 9 + length])))
        pos += 9 + length
    return out


async def ping_with(server_frames: list[bytes], *, echo: bool = True) -> FakeWriter:
    """Run ``h2_ping`` against scripted server bytes (a PING ack echoing the client's data
    is appended when ``echo``)."""
    reader = asyncio.StreamReader()
    writer = FakeWriter()

    async def serve() -> None:
        for frame in server_frames:
            reader.feed_data(frame)
        if echo:
            await asyncio.sleep(0)
            sent = frames(bytes(writer.data[len(H2_PREFACE) :]))
            opaque = next(p for k, f, p in sent if k == H2_PING and not f & H2_FLAG_ACK)
            reader.feed_data(h2_frame(H2_PING, H2_FLAG_ACK, 0, opaque))
        else:
            reader.feed_eof()

    task = asyncio.get_running_loop().create_task(serve())
    try:
        await asyncio.wait_for(h2_ping(reader, writer), 2)  # type: ignore[arg-type]
    finally:
        await task
    return writer


async def test_h2_ping_exchange() -> None:
    writer = await ping_with([h2_frame(H2_SETTINGS, 0, 0, struct.pack(">HI", 3, 100))])
    assert bytes(writer.data).startswith(H2_PREFACE)
    sent = frames(bytes(writer.data[len(H2_PREFACE) :]))
    kinds = [(k, f) for k, f, _ in sent]
    assert kinds[:2] == [(H2_SETTINGS, 0), (H2_PING, 0)]
    assert (H2_SETTINGS, H2_FLAG_ACK) in kinds  # the server's SETTINGS acknowledged
    assert len(sent[1][2]) == 8


async def test_h2_ping_answers_the_servers_ping_and_ignores_a_wrong_ack() -> None:
    writer = await ping_with(
        [
            h2_frame(H2_SETTINGS, 0, 0),
            h2_frame(H2_PING, 0, 0, b"12345678"),
            h2_frame(H2_PING, H2_FLAG_ACK, 0, b"otherack"),
        ]
    )
    sent = frames(bytes(writer.data[len(H2_PREFACE) :]))
    assert (H2_PING, H2_FLAG_ACK, b"12345678") in sent


@pytest.mark.parametrize(
    ("server", "text"),
    [
        ([], "EOF"),
        ([h2_frame(H2_SETTINGS, 0, 0)[:5]], "unexpected EOF"),
        ([b"HTTP/1.1 400 Bad Request\r\n\r\n"], "http2: frame too large"),
        (
            [h2_frame(H2_PING, 0, 0, b"12345678")],
            "connection error: PROTOCOL_ERROR (received PING before a SETTINGS frame)",
        ),
        (
            [h2_frame(H2_SETTINGS, 0, 0), h2_frame(H2_GOAWAY, 0, 0, struct.pack(">II", 0, 11))],
            "http2: server sent GOAWAY and closed the connection; "
            'ErrCode=ENHANCE_YOUR_CALM, debug=""',
        ),
    ],
)
async def test_h2_ping_failures(server: list[bytes], text: str) -> None:
    with pytest.raises(H2ProtocolError) as info:
        await ping_with(server, echo=False)
    assert str(info.value) == text


# --- alias -----------------------------------------------------------------------------------


def chk(cid: str, status: str, sid: str = "", node: str = "n2", output: str = "") -> dict[str, Any]:
    return {
        "Node": node,
        "CheckID": cid,
        "Name": f"name-{cid}",
        "Status": status,
        "ServiceID": sid,
        "Output": output,
    }


def test_alias_status_node_and_service() -> None:
    def yes() -> bool:
        return True

    def no() -> bool:
        return False

    node_ok = chk("serfHealth", PASSING)
    assert alias_status([node_ok], "n2", "", no) == (PASSING, "All checks passing.")
    # Node-level checks count for a service alias; other services' checks do not.
    checks = [node_ok, chk("w", PASSING, "web"), chk("db", CRITICAL, "db")]
    assert alias_status(checks, "n2", "web", no) == (PASSING, "All checks passing.")
    checks.append(chk("w2", WARNING, "web", output="slow"))
    assert alias_status(checks, "n2", "web", no) == (
        WARNING,
        'Aliased check "name-w2" failing: slow',
    )
    checks.append(chk("node", CRITICAL, output="down"))
    assert alias_status(checks, "n2", "web", no) == (
        CRITICAL,
        'Aliased check "name-node" failing: down',
    )
    # Another node's checks are ignored.
    assert alias_status([chk("x", CRITICAL, node="n3")], "n2", "", yes) == (
        PASSING,
        "No checks found.",
    )
    # A service without checks: passing when it exists, critical when it does not.
    assert alias_status([node_ok], "n2", "api", yes) == (PASSING, "All checks passing.")
    assert alias_status([node_ok], "n2", "api", no) == (
        CRITICAL,
        "Service api could not be found on node n2",
    )


async def test_local_alias_uses_consuls_texts() -> None:
    local = LocalState("node1")
    runners = CheckRunners(local)
    runners.running = True
    local.add_check("a", CheckType(name="a", alias_service="web"))
    assert local.check("a")["Status"] == CRITICAL  # type: ignore[index]
    assert local.check("a")["Output"] == "Service web could not be found on node "  # type: ignore[index]
    local.add_service({"ID": "web", "Service": "web"}, [CheckType(check_id="w", ttl=10)])
    # The service's TTL check starts critical.
    assert local.check("a")["Output"] == "Aliased check \"Service 'web' check\" failing: "  # type: ignore[index]
    local.update_check("w", PASSING, "ok")
    assert (local.check("a")["Status"], local.check("a")["Output"]) == (  # type: ignore[index]
        PASSING,
        "All checks passing.",
    )
    runners.stop()


async def test_alias_node_runner_follows_a_source() -> None:
    from server.agent.checks import AliasSource

    class Source(AliasSource):
        def __init__(self) -> None:
            self.calls: list[int] = []
            self.replies: asyncio.Queue[Any] = asyncio.Queue()
            self.closed = False

        async def node_checks(self, node: str, index: int) -> tuple[list[dict[str, Any]], int]:
            self.calls.append(index)
            reply = await self.replies.get()
            if isinstance(reply, Exception):
                raise reply
            return reply  # type: ignore[no-any-return]

        async def service_exists(self, node: str, service_id: str) -> bool:
            return False

        async def close(self) -> None:
            self.closed = True

    local = LocalState("node1")
    source = Source()
    runners = CheckRunners(local, alias_source=lambda: source)
    runners.start()
    local.add_check("al", CheckType(name="al", alias_node="n2", alias_service="web"))
    try:
        await source.replies.put(([chk("w", PASSING, "web")], 7))
        for _ in range(50):
            if local.check("al")["Status"] == PASSING:  # type: ignore[index]
                break
            await asyncio.sleep(0)
        assert local.check("al")["Output"] == "All checks passing."  # type: ignore[index]
        await source.replies.put(([chk("w", CRITICAL, "web", output="boom")], 9))
        for _ in range(50):
            if local.check("al")["Status"] == CRITICAL:  # type: ignore[index]
                break
            await asyncio.sleep(0)
        assert local.check("al")["Output"] == 'Aliased check "name-w" failing: boom'  # type: ignore[index]
        assert source.calls[:3] == [0, 7, 9]  # blocking on the last index seen
        await source.replies.put(([], 10))
        for _ in range(50):
            if "could not be found" in local.check("al")["Output"]:  # type: ignore[index]
                break
            await asyncio.sleep(0)
        assert local.check("al")["Output"] == "Service web could not be found on node n2"  # type: ignore[index]
    finally:
        runners.stop()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert source.closed
