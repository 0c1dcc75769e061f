"""Check runners (Consul's ``agent/checks``): TTL, HTTP, TCP, UDP, gRPC, H2PING, script
(``args``) and alias (of a local service, or of another node and its services).

``CheckRunners`` follows a ``LocalState``: when a check with a definition is added it starts
the matching runner, when the check goes it stops it, and every result goes back through
``LocalState.update_check`` (which marks the check for syncing to the catalog).

Consul's behaviour kept:

* TTL: the check turns ``critical`` with ``TTL expired`` when no update arrives within the
  TTL; every pass/warn/fail/update resets the timer; outputs are cut at the check's limit as
  ``<head> ... (captured N of M bytes)``.
* HTTP: ``Method`` (default GET), ``Header``, ``Body``, ``TLSSkipVerify``, ``TLSServerName``,
  ``DisableRedirects``; 2xx is passing, 429 warning, anything else critical; the output is
  ``HTTP GET <url>: 200 OK Output: <body>`` keeping the last 4 KiB of the body (Consul reads
  it into a circular buffer); default timeout 10 s.
* TCP: a connect within the timeout (default 10 s) is passing
  (``TCP connect <addr>: Success``; with ``TCPUseTLS`` a TLS handshake too,
  ``TCP+TLS connect <addr>: Success``), else critical with Go's dial error.
* UDP: an (empty) datagram is sent to the address; an error coming back within the timeout
  (default 10 s) — an ICMP port unreachable shows as ``read udp a->b: read: connection
  refused`` — is critical; a reply, or silence until the timeout, is passing
  (``UDP connect <addr>: Success``).
* gRPC: the standard ``grpc.health.v1.Health/Check`` call (``GRPC`` is ``host:port`` or
  ``host:port/service``), plaintext or with ``GRPCUseTLS`` (``TLSSkipVerify``,
  ``TLSServerName``); ``SERVING`` is passing (``gRPC check <target>: success``), another
  status (``gRPC <target> serving status: NOT_SERVING``) or an RPC error
  (``rpc error: code = Unavailable desc = ...``) critical; default timeout 10 s.
* H2PING: an HTTP/2 connection (TLS with ALPN ``h2`` unless ``H2PingUseTLS`` is false, then
  h2c with prior knowledge): connection preface, SETTINGS, one PING; its ACK within the
  timeout (default 10 s) is passing (``HTTP2 ping was successful``), else critical
  (``Failed to dial to <addr>: ...`` / ``HTTP2 ping failed: ...``). The few frames are written
  by hand (the ``h2`` library is not a dependency).
* Script (``args``): exit 0 passing, 1 warning, anything else critical; output is stdout and
  stderr together, its last 4 KiB kept as ``Captured N of M bytes\\n...\\n<tail>``; default
  timeout 30 s, then the process is killed (``Timed out (30s) running check``).
* Interval checks (all of the above but TTL) go through Consul's ``StatusHandler``:
  ``SuccessBeforePassing``, ``FailuresBeforeWarning`` (defaults to
  ``FailuresBeforeCritical``) and ``FailuresBeforeCritical`` consecutive results before a
  status is reported; the first result is always reported.
* Outputs never exceed 4 KiB (``CHECK_BUF_SIZE``, lowered by a check's ``OutputMaxSize``).
* Alias of a local service (``AliasService`` alone): the status of the service's and the
  node's checks on this agent, re-evaluated on every local change.
* Alias of another node (``AliasNode``, optional ``AliasService``): the node's checks read
  from the catalog by blocking queries (``/v1/health/node/<node>?stale&index=``, 1 min wait)
  through this agent's own HTTP API, so servers and client agents (which relay to a server)
  share one path; errors after the first one turn the check critical with
  ``Failure checking aliased node or service: ...``, with Consul's back-off. Both alias forms
  use Consul's ``processChecks`` texts (``All checks passing.``, ``No checks found.``,
  ``Aliased check "<name>" failing: <output>``, ``Service <id> could not be found on node
  <node>``).
* The first run of an interval check waits a random part of the interval (Consul's
  stagger), capped here at one second so that fresh checks report quickly.

Not run yet (registered, status stays as given): docker and OS service checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import structlog

from server.agent.local import (
    CRITICAL,
    PASSING,
    WARNING,
    CheckType,
    LocalState,
    format_duration,
)

__all__ = [
    "CHECK_BUF_SIZE",
    "AliasSource",
    "CheckRunners",
    "HTTPAliasSource",
    "StatusHandler",
    "TailBuffer",
    "alias_status",
    "decode_health_response",
    "encode_health_request",
    "grpc_error_text",
    "grpc_result",
    "h2_ping",
    "http_status_for",
    "output_limit",
    "truncate_output",
    "udp_result",
]

log = structlog.get_logger("checks")

#: Consul's ``CheckBufSize``: outputs are cut at 4 KiB.
CHECK_BUF_SIZE = 4 * 1024
HTTP_DEFAULT_TIMEOUT = 10.0
TCP_DEFAULT_TIMEOUT = 10.0
UDP_DEFAULT_TIMEOUT = 10.0
GRPC_DEFAULT_TIMEOUT = 10.0
H2PING_DEFAULT_TIMEOUT = 10.0
SCRIPT_DEFAULT_TIMEOUT = 30.0
USER_AGENT = "Consul Health Check"

#: Alias checks of another node: blocking-query wait and back-off (Consul's
#: ``checkAliasBackoffMin`` attempts, then doubling up to ``checkAliasBackoffMaxWait``).
ALIAS_QUERY_WAIT = 60.0
ALIAS_BACKOFF_MIN = 3
ALIAS_BACKOFF_MAX = 60.0


# --- outputs ----------------------------------------------------------------------------


def output_limit(ct: CheckType) -> int:
    """The check's output limit: 4 KiB, or its ``OutputMaxSize`` when smaller (Consul: the
    agent's ``check_output_max_size`` can only be lowered by a check)."""
    if 0 < ct.output_max_size < CHECK_BUF_SIZE:
        return ct.output_max_size
    return CHECK_BUF_SIZE


def truncate_output(text: str, limit: int = CHECK_BUF_SIZE) -> str:
    """``text`` cut as Consul's TTL updates are: ``<first limit bytes> ... (captured N of M
    bytes)``."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    head = raw[:limit].decode(errors="ignore")
    return f"{head} ... (captured {limit} of {len(raw)} bytes)"


class TailBuffer:
    """Consul's ``circbuf``: keeps the last ``size`` bytes written and counts them all."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.total = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self._buf += data
        if len(self._buf) > self.size:
            del self._buf[: len(self._buf) - self.size]

    def text(self) -> str:
        return bytes(self._buf).decode(errors="replace")

    def captured(self) -> str:
        """The script-check rendering: ``Captured N of M bytes\\n...\\n<tail>`` when cut."""
        out = self.text()
        if self.total > len(self._buf):
            out = f"Captured {len(self._buf)} of {self.total} bytes\n...\n{out}"
        return out


def http_status_for(code: int) -> str:
    """2xx passing, 429 warning, anything else critical."""
    if 200 <= code <= 299:
        return PASSING
    if code == 429:
        return WARNING
    return CRITICAL


def _split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {target}: missing port in address")
    return host.strip("[]"), int(port)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _dial_error(network: str, target: str, exc: BaseException) -> str:
    """Go's ``net.Dial`` error text: ``dial tcp 127.0.0.1:1: connect: connection refused``."""
    if isinstance(exc, TimeoutError):
        return f"dial {network} {target}: i/o timeout"
    if isinstance(exc, socket.gaierror):
        host = target.rpartition(":")[0].strip("[]")
        return f"dial {network}: lookup {host}: no such host"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: failed to verify certificate: x509: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, ValueError):
        return f"dial {network} {target}: {exc}"
    return f"dial {network} {target}: connect: {_os_reason(exc)}"


# --- status thresholds ------------------------------------------------------------------


class StatusHandler:
    """Consul's ``StatusHandler``: a status reaches the check only after
    ``success_before_passing`` consecutive successes (passing or warning results) or
    ``failures_before_warning`` / ``failures_before_critical`` consecutive failures; the
    counters start at their thresholds so that the first result is reported at once."""

    def __init__(
        self,
        notify: Callable[[str, str], None],
        success_before_passing: int = 0,
        failures_before_warning: int = 0,
        failures_before_critical: int = 0,
    ) -> None:
        if failures_before_warning == 0:
            failures_before_warning = failures_before_critical
        self.notify = notify
        self.success_before_passing = success_before_passing
        self.failures_before_warning = failures_before_warning
        self.failures_before_critical = failures_before_critical
        self.success_counter = success_before_passing
        self.failures_counter = failures_before_critical

    @classmethod
    def for_check(cls, notify: Callable[[str, str], None], ct: CheckType) -> StatusHandler:
        return cls(
            notify,
            ct.success_before_passing,
            ct.failures_before_warning,
            ct.failures_before_critical,
        )

    def update(self, status: str, output: str) -> None:
        if status in (PASSING, WARNING):
            self.success_counter += 1
            self.failures_counter = 0
            if self.success_counter >= self.success_before_passing:
                self.notify(status, output)
            return
        self.failures_counter += 1
        self.success_counter = 0
        if self.failures_counter >= self.failures_before_critical:
            self.notify(status, output)
        elif self.failures_counter >= self.failures_before_warning:
            self.notify(WARNING, output)


# --- runners ----------------------------------------------------------------------------


class _Runner:
    #: Runners whose probe already renders a capped capture (HTTP, script) skip the final cut.
    captures_output = False

    def __init__(self, runners: CheckRunners, check_id: str, ct: CheckType) -> None:
        self.runners = runners
        self.check_id = check_id
        self.ct = ct
        self.task: asyncio.Task[None] | None = None
        self.status = StatusHandler.for_check(self.report, ct)

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

    async def run_once(self) -> tuple[str, str]:
        """One probe, never raising (but for cancellation), its output within the limit."""
        try:
            status, output = await self.probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a runner must never die
            status, output = CRITICAL, str(exc) or type(exc).__name__
            return status, truncate_output(output, output_limit(self.ct))
        if not self.captures_output:
            output = truncate_output(output, output_limit(self.ct))
        return status, output

    async def _run(self) -> None:
        interval = max(self.ct.interval, 1.0)
        await asyncio.sleep(random.uniform(0, min(interval, 1.0)))
        while True:
            status, output = await self.run_once()
            self.status.update(status, output)
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
        output = truncate_output(output, output_limit(self.ct))
        self._last_output = output
        self.report(status, output)
        self._arm()


class HTTPRunner(_Runner):
    captures_output = True

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
        verb = method.capitalize()
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
                body = TailBuffer(output_limit(ct))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        body.write(chunk)
                status_line = f"{resp.status} {resp.reason or ''}".strip()
                output = f"HTTP {method} {ct.http}: {status_line} Output: {body.text()}"
                return http_status_for(resp.status), output
        except TimeoutError:
            return CRITICAL, truncate_output(
                f'{verb} "{ct.http}": context deadline exceeded (Client.Timeout exceeded '
                "while awaiting headers)"
            )
        except aiohttp.ClientConnectorError as exc:
            target = f"{exc.host}:{exc.port}"
            reason = _dial_error("tcp", target, exc.os_error)
            return CRITICAL, truncate_output(f'{verb} "{ct.http}": {reason}')
        except aiohttp.ClientError as exc:
            return CRITICAL, truncate_output(f'{verb} "{ct.http}": {exc}')


def _client_tls(ct: CheckType, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Consul's ``OutgoingTLSConfigForCheck``: system roots, ``TLSSkipVerify``."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if ct.tls_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TCPRunner(_Runner):
    """A connect (a TLS handshake too with ``TCPUseTLS``) within the timeout."""

    async def probe(self) -> tuple[str, str]:
        target = self.ct.tcp
        tls = _client_tls(self.ct) if self.ct.tcp_use_tls else None
        try:
            host, port = _split_host_port(target)
            async with asyncio.timeout(self.ct.timeout or TCP_DEFAULT_TIMEOUT):
                _reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=tls,
                    server_hostname=(self.ct.tls_server_name or host) if tls else None,
                )
        except (OSError, ValueError, TimeoutError) as exc:
            return CRITICAL, _dial_error("tcp", target, exc)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        kind = "TCP+TLS" if tls else "TCP"
        return PASSING, f"{kind} connect {target}: Success"


class _UDPProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.result: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.result.done():
            self.result.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if not self.result.done():
            self.result.set_result(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_result(exc)


class UDPRunner(_Runner):
    """Consul's ``CheckUDP``: send, then wait for an error (critical) until the timeout."""

    async def probe(self) -> tuple[str, str]:
        target = self.ct.udp
        timeout = self.ct.timeout or UDP_DEFAULT_TIMEOUT
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            host, port = _split_host_port(target)
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, kind, proto_no, _, addr = infos[0]
            sock = socket.socket(family, kind, proto_no)
            sock.setblocking(False)
            sock.connect(addr)
            # asyncio's transports drop empty datagrams: send Consul's (empty) message here.
            sock.send(b"")
            transport, proto = await loop.create_datagram_endpoint(_UDPProbe, sock=sock)
        except (OSError, ValueError) as exc:
            if sock is not None:
                sock.close()
            return CRITICAL, _dial_error("udp", target, exc)
        try:
            local = transport.get_extra_info("sockname")
            peer = transport.get_extra_info("peername")
            error: Exception | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    error = await proto.result
            return udp_result(target, error, local, peer)
        finally:
            transport.close()


def udp_result(target: str, error: Exception | None, local: Any, peer: Any) -> tuple[str, str]:
    """A UDP check's outcome: ``error`` is what came back on the socket within the timeout
    (None for a reply or silence, both passing)."""
    if error is None:
        return PASSING, f"UDP connect {target}: Success"
    return CRITICAL, f"read udp {_addr(local)}->{_addr(peer)}: read: {_os_reason(error)}"


def _addr(sockaddr: Any) -> str:
    if not sockaddr:
        return "?"
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- gRPC ---------------------------------------------------------------------------------

GRPC_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
#: ``grpc.health.v1.HealthCheckResponse.ServingStatus`` names (Go's ``String()``).
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_health_request(service: str) -> bytes:
    """``HealthCheckRequest{service}`` in protobuf wire format (field 1, a string)."""
    raw = service.encode()
    if not raw:
        return b""
    return b"\x0a" + _varint(len(raw)) + raw


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_health_response(data: bytes) -> int:
    """The ``status`` (field 1, an enum) of a ``HealthCheckResponse``; 0 (UNKNOWN) when
    absent. ``ValueError`` on malformed bytes."""
    pos, status = 0, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field_no == 1:
                status = value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
    return status


def grpc_error_text(code: grpc.StatusCode, details: str | None) -> str:
    """Go's ``status.Error`` text: ``rpc error: code = Unavailable desc = ...``."""
    name = "".join(part.capitalize() for part in code.name.split("_"))
    if code == grpc.StatusCode.OK:
        name = "OK"
    return f"rpc error: code = {name} desc = {details or ''}"


async def _peer_certificate(host: str, port: int, server_name: str, timeout: float) -> bytes:
    """The server's leaf certificate (DER), fetched without verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(timeout):
        _reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=server_name or host
        )
    try:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not der:
        raise ssl.SSLError("no peer certificate")
    return bytes(der)


def _certificate_name(der: bytes) -> str:
    """A name the certificate is valid for (first DNS SAN, else the subject CN)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
        if names:
            return str(names[0])
        ips = san.value.get_values_for_type(x509.IPAddress)
        if ips:
            return str(ips[0])
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


class GRPCRunner(_Runner):
    """Consul's ``CheckGRPC``: one ``Health/Check`` call on a fresh channel per run.

    With ``GRPCUseTLS`` the server is verified against the system roots (and
    ``TLSServerName``); with ``TLSSkipVerify`` (grpcio cannot skip verification) the server's
    own certificate is fetched first and trusted for this one call, which accepts
    self-signed certificates."""

    async def probe(self) -> tuple[str, str]:
        target = self.ct.grpc
        server, _, service = target.partition("/")
        timeout = self.ct.timeout or GRPC_DEFAULT_TIMEOUT
        options: list[tuple[str, Any]] = [("grpc.enable_retries", 0)]
        channel: grpc.aio.Channel
        if self.ct.grpc_use_tls:
            root: bytes | None = None
            name = self.ct.tls_server_name
            if self.ct.tls_skip_verify:
                try:
                    host, port = _split_host_port(server)
                    der = await _peer_certificate(host, port, name, timeout)
                except (OSError, ValueError, TimeoutError) as exc:
                    return CRITICAL, grpc_error_text(
                        grpc.StatusCode.UNAVAILABLE,
                        f'connection error: desc = "transport: Error while dialing: '
                        f'{_dial_error("tcp", server, exc)}"',
                    )
                root = ssl.DER_cert_to_PEM_cert(der).encode()
                name = name or _certificate_name(der)
            if name:
                options.append(("grpc.ssl_target_name_override", name))
            creds = grpc.ssl_channel_credentials(root_certificates=root)
            channel = grpc.aio.secure_channel(server, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(server, options=options)
        try:
            call = channel.unary_unary(GRPC_HEALTH_METHOD)
            reply = await call(encode_health_request(service), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return CRITICAL, grpc_error_text(exc.code(), exc.details())
        finally:
            await channel.close()
        return grpc_result(target, decode_health_response(bytes(reply)))


def grpc_result(target: str, serving_status: int) -> tuple[str, str]:
    """A gRPC check's outcome for the ``ServingStatus`` the server answered."""
    if serving_status != 1:
        name = SERVING_STATUS.get(serving_status, str(serving_status))
        return CRITICAL, f"gRPC {target} serving status: {name}"
    return PASSING, f"gRPC check {target}: success"


# --- H2PING -------------------------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_SETTINGS, H2_PING, H2_GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
H2_FLAG_ACK = 0x1
H2_MAX_FRAME = 16384
_H2_FRAME_NAMES = {
    0x0: "DATA",
    0x1: "HEADERS",
    0x2: "PRIORITY",
    0x3: "RST_STREAM",
    0x4: "SETTINGS",
    0x5: "PUSH_PROMISE",
    0x6: "PING",
    0x7: "GOAWAY",
    0x8: "WINDOW_UPDATE",
    0x9: "CONTINUATION",
}
_H2_ERROR_CODES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream & 0x7FFFFFFF)
        + payload
    )


class H2ProtocolError(Exception):
    pass


async def h2_ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speak just enough HTTP/2 on an open connection to have one PING acknowledged:
    preface and SETTINGS out, the server's SETTINGS acknowledged, a PING out and its ACK
    awaited. ``H2ProtocolError`` (Go's texts) when the peer misbehaves or goes away."""
    opaque = os.urandom(8)
    writer.write(H2_PREFACE + h2_frame(H2_SETTINGS, 0, 0) + h2_frame(H2_PING, 0, 0, opaque))
    await writer.drain()
    first = True
    while True:
        try:
            header = await reader.readexactly(9)
        except asyncio.IncompleteReadError as exc:
            raise H2ProtocolError("unexpected EOF" if exc.partial else "EOF") from None
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        if length > H2_MAX_FRAME:
            raise H2ProtocolError("http2: frame too large")
        try:
            payload = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise H2ProtocolError("unexpected EOF") from None
        if first and kind != H2_SETTINGS:
            name = _H2_FRAME_NAMES.get(kind, f"UNKNOWN_FRAME_TYPE_{kind}")
            raise H2ProtocolError(
                f"connection error: PROTOCOL_ERROR (received {name} before a SETTINGS frame)"
            )
        first = False
        if kind == H2_SETTINGS and not flags & H2_FLAG_ACK:
            writer.write(h2_frame(H2_SETTINGS, H2_FLAG_ACK, 0))
            await writer.drain()
        elif kind == H2_PING and length == 8:
            if flags & H2_FLAG_ACK:
                if payload == opaque:
                    return
            else:
                writer.write(h2_frame(H2_PING, H2_FLAG_ACK, 0, payload))
                await writer.drain()
        elif kind == H2_GOAWAY and length >= 8:
            code = int.from_bytes(payload[4:8], "big")
            debug = payload[8:].decode(errors="replace")
            text = f"http2: server sent GOAWAY and closed the connection; ErrCode={_H2_ERROR_CODES.get(code, code)}"
            raise H2ProtocolError(text + (f', debug="{debug}"' if debug else ', debug=""'))


class H2PingRunner(_Runner):
    async def probe(self) -> tuple[str, str]:
        target = self.ct.h2ping
        timeout = self.ct.timeout or H2PING_DEFAULT_TIMEOUT
        ssl_ctx = _client_tls(self.ct, ["h2"]) if self.ct.h2ping_use_tls else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            host, port = _split_host_port(target)
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=ssl_ctx,
                    server_hostname=(self.ct.tls_server_name or host) if ssl_ctx else None,
                )
        except (OSError, ValueError, TimeoutError) as exc:
            return CRITICAL, f"Failed to dial to {target}: {_dial_error('tcp', target, exc)}"
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await h2_ping(reader, writer)
            except TimeoutError:
                return CRITICAL, "HTTP2 ping failed: context deadline exceeded"
            except H2ProtocolError as exc:
                return CRITICAL, f"HTTP2 ping failed: {exc}"
            except OSError as exc:
                return CRITICAL, f"HTTP2 ping failed: {_os_reason(exc)}"
            with contextlib.suppress(Exception):
                writer.write(h2_frame(H2_GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
            return PASSING, "HTTP2 ping was successful"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


# --- script ---------------------------------------------------------------------------------


class ScriptRunner(_Runner):
    captures_output = True

    async def probe(self) -> tuple[str, str]:
        args = self.ct.script_args
        timeout = self.ct.timeout or SCRIPT_DEFAULT_TIMEOUT
        out = TailBuffer(output_limit(self.ct))
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Consul's Setpgid: the whole subtree is killed
            )
        except OSError as exc:
            return CRITICAL, truncate_output(f"Failed to start check: {exc}", out.size)

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

        async def collect() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(64 * 1024):
                out.write(chunk)
            await proc.wait()

        try:
            async with asyncio.timeout(timeout):
                await collect()
        except TimeoutError:
            kill()
            with contextlib.suppress(Exception):
                await proc.wait()
            msg = f"Timed out ({format_duration(timeout)}) running check"
            captured = out.captured()
            if captured:
                msg += "\n\n" + captured
            return CRITICAL, msg
        except asyncio.CancelledError:
            kill()
            raise
        output = out.captured()
        code = proc.returncode
        if code == 0:
            return PASSING, output
        if code == 1:
            return WARNING, output
        return CRITICAL, output


# --- alias ----------------------------------------------------------------------------------


def alias_status(
    checks: list[dict[str, Any]],
    node: str,
    service_id: str,
    service_exists: Callable[[], bool],
) -> tuple[str, str]:
    """Consul's ``CheckAlias.processChecks``: the status and output of an alias of
    ``service_id`` (node-level checks count too; with ``node`` set, only that node's)."""
    health, msg = PASSING, "No checks found."
    found = False
    for chk in checks:
        if node and node != chk.get("Node"):
            continue
        sid = chk.get("ServiceID") or ""
        match = sid == service_id
        if sid and not match:
            continue
        if match:
            found = True
        status = chk.get("Status")
        if status in (CRITICAL, WARNING):
            health = str(status)
            msg = f'Aliased check "{chk.get("Name", "")}" failing: {chk.get("Output", "")}'
            if status == CRITICAL:
                break
        elif health == PASSING:
            msg = "All checks passing."
    if not found and not service_exists():
        return CRITICAL, f"Service {service_id} could not be found on node {node}"
    return health, msg


class AliasSource:
    """Where alias checks of another node read the catalog."""

    async def node_checks(self, node: str, index: int) -> tuple[list[dict[str, Any]], int]:
        """The node's checks once the catalog's index passes ``index`` (a blocking query)."""
        raise NotImplementedError

    async def service_exists(self, node: str, service_id: str) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class HTTPAliasSource(AliasSource):
    """The catalog through an agent's HTTP API (``base_url`` like ``http://127.0.0.1:8500``
    or ``unix:///path``): on a server it is read locally (``stale``), a client agent relays
    it to a server."""

    def __init__(self, base_url: str, token: str = "", wait: float = ALIAS_QUERY_WAIT) -> None:
        self.base_url = base_url
        self.token = token
        self.wait = wait
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> tuple[aiohttp.ClientSession, str]:
        base = self.base_url
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector | None = None
            if base.startswith("unix://"):
                connector = aiohttp.UnixConnector(path=base[len("unix://") :])
            headers = {"X-Consul-Token": self.token} if self.token else {}
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        if base.startswith("unix://"):
            base = "http://localhost"
        return self._session, base

    async def _get(self, path: str, params: dict[str, str], timeout: float) -> tuple[Any, int]:
        session, base = self._client()
        async with session.get(
            base + path, params=params, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                text = (await resp.text()).strip()
                raise RuntimeError(f"Unexpected response code: {resp.status} ({text})")
            index = int(resp.headers.get("X-Consul-Index") or 0)
            return await resp.json(), index

    async def node_checks(self, node: str, index: int) -> tuple[list[dict[str, Any]], int]:
        params = {"stale": "", "index": str(index), "wait": format_duration(self.wait)}
        body, new_index = await self._get(
            f"/v1/health/node/{quote(node, safe='')}", params, self.wait * 1.25 + 10
        )
        return list(body or []), new_index

    async def service_exists(self, node: str, service_id: str) -> bool:
        body, _ = await self._get(f"/v1/catalog/node/{quote(node, safe='')}", {"stale": ""}, 15)
        services = (body or {}).get("Services") or {}
        return any(s.get("ID") == service_id for s in services.values())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AliasNodeRunner(_Runner):
    """Consul's ``CheckAlias.runQuery``: follows ``AliasNode`` (and ``AliasService``) through
    blocking reads of the node's checks."""

    def __init__(
        self, runners: CheckRunners, check_id: str, ct: CheckType, source: AliasSource
    ) -> None:
        super().__init__(runners, check_id, ct)
        self.source = source

    async def _run(self) -> None:
        ct = self.ct
        index, attempt = 0, 0
        try:
            while True:
                if attempt > ALIAS_BACKOFF_MIN:
                    shift = min(attempt - ALIAS_BACKOFF_MIN, 31)
                    await asyncio.sleep(min(float(1 << shift), ALIAS_BACKOFF_MAX))
                elif attempt:
                    await asyncio.sleep(0.2)
                try:
                    checks, new_index = await self.source.node_checks(ct.alias_node, index)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    attempt += 1
                    if attempt > 1:
                        self.report(
                            CRITICAL,
                            truncate_output(
                                f"Failure checking aliased node or service: {exc}",
                                output_limit(ct),
                            ),
                        )
                    continue
                attempt = 0
                index = max(new_index, 1)
                exists = True
                if ct.alias_service and not any(
                    c.get("ServiceID") == ct.alias_service for c in checks
                ):
                    try:
                        exists = await self.source.service_exists(ct.alias_node, ct.alias_service)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        exists = True  # unknown: assume it exists, as Consul does
                elif not ct.alias_service and not any(
                    not c.get("ServiceID") and c.get("Node") == ct.alias_node for c in checks
                ):
                    exists = False  # no service has an empty ID (Consul's lookup)
                status, output = alias_status(
                    checks, ct.alias_node, ct.alias_service, functools.partial(bool, exists)
                )
                self.report(status, truncate_output(output, output_limit(ct)))
        finally:
            with contextlib.suppress(Exception):
                await self.source.close()


# --- the runners of one agent ---------------------------------------------------------------


class CheckRunners:
    """Starts and stops one runner per check of ``local`` that has a definition.

    ``alias_source`` makes a source for alias checks of other nodes (one per check); without
    it (and without ``ctx`` to build one from) such checks are not run."""

    def __init__(
        self,
        local: LocalState,
        ctx: Any = None,
        *,
        alias_source: Callable[[], AliasSource] | None = None,
    ) -> None:
        self.local = local
        self.ctx = ctx
        self.alias_source = alias_source
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

    def _make_alias_source(self) -> AliasSource | None:
        if self.alias_source is not None:
            return self.alias_source()
        cfg = getattr(self.ctx, "config", None)
        if cfg is None:
            return None
        return HTTPAliasSource(_agent_http_url(cfg), _agent_token(cfg))

    def _start(self, check_id: str, ct: CheckType) -> None:
        kind = ct.type()
        runner: _Runner | None
        if kind == "ttl":
            runner = TTLRunner(self, check_id, ct)
        elif kind == "http":
            runner = HTTPRunner(self, check_id, ct)
        elif kind == "tcp":
            runner = TCPRunner(self, check_id, ct)
        elif kind == "udp":
            runner = UDPRunner(self, check_id, ct)
        elif kind == "grpc":
            runner = GRPCRunner(self, check_id, ct)
        elif kind == "h2ping":
            runner = H2PingRunner(self, check_id, ct)
        elif kind == "script":
            runner = ScriptRunner(self, check_id, ct)
        elif kind == "alias" and not ct.alias_node:
            self.aliases[check_id] = ct
            return
        elif kind == "alias":
            source = self._make_alias_source()
            if source is None:
                log.warning("alias_node_without_catalog", check=check_id)
                return
            runner = AliasNodeRunner(self, check_id, ct, source)
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
                self.local.update_check(cid, status, truncate_output(output, output_limit(ct)))
        finally:
            self._evaluating = False

    def _alias_result(self, check_id: str, ct: CheckType) -> tuple[str, str]:
        """Consul's ``runLocal``: every local check but this one (Consul's checks carry no
        node name here, so the message of a missing service names none)."""
        checks = [c for cid, c in self.local.all_checks().items() if cid != check_id]
        return alias_status(
            checks, "", ct.alias_service, lambda: self.local.service(ct.alias_service) is not None
        )


def _agent_http_url(cfg: Any) -> str:
    """This agent's own HTTP API address (a wildcard bind is reached on loopback)."""
    bind = str(getattr(cfg, "http_addr", "") or getattr(cfg, "client_addr", "") or "127.0.0.1")
    bind = bind.split()[0] if bind.split() else "127.0.0.1"
    if bind.startswith("unix://"):
        return bind
    if bind in ("0.0.0.0", ""):
        bind = "127.0.0.1"
    elif bind == "::":
        bind = "::1"
    port = int(getattr(cfg, "http_port", 8500))
    host = f"[{bind}]" if ":" in bind else bind
    return f"http://{host}:{port}"


def _agent_token(cfg: Any) -> str:
    acl = getattr(cfg, "acl", None) or {}
    tokens = acl.get("tokens") or {} if isinstance(acl, dict) else {}
    if not isinstance(tokens, dict):
        return ""
    return str(tokens.get("agent") or tokens.get("default") or "")
