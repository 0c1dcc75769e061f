"""The UDP, gRPC, H2PING and alias-of-another-node checks, and the success/failure
thresholds, run by a real ``proconsul agent -dev`` against real targets this test runs: a
gRPC health server (the one-method ``grpc.health.v1.Health`` service through a generic
handler, plaintext and TLS), UDP sockets, a hand-written HTTP/2 PING-acknowledging server
(h2c and TLS with ALPN ``h2``) and a node registered in the catalog."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers.agentproc import Client, start_agent, stop_agent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    proc, client = start_agent(
        tmp_path_factory.mktemp("agent") / "agent.log", "-enable-script-checks"
    )
    try:
        yield client
    finally:
        stop_agent(proc)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` / 127.0.0.1 and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def wait_for(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def check_of(agent: Client, check_id: str) -> dict[str, Any]:
    result: dict[str, Any] = agent.get("/v1/agent/checks").json().get(check_id) or {}
    return result


def wait_status(agent: Client, check_id: str, status: str, timeout: float = 10.0) -> Any:
    def ready() -> bool:
        check = check_of(agent, check_id)
        return check.get("Status") == status and bool(check.get("Output"))

    found = wait_for(ready, timeout)
    assert found, check_of(agent, check_id)
    return check_of(agent, check_id)


def register(agent: Client, definition: dict[str, Any]) -> None:
    reply = agent.put_json("/v1/agent/check/register", definition)
    assert (reply.status, reply.body) == (200, b""), reply.body


def deregister(agent: Client, check_id: str) -> None:
    assert agent.put(f"/v1/agent/check/deregister/{check_id}").status == 200


def closed_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- gRPC ---------------------------------------------------------------------------------


class HealthServer:
    """``grpc.health.v1.Health/Check`` answering from ``statuses`` (service -> status
    number; an unknown service is NOT_FOUND, as the standard server does)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.statuses: dict[str, int] = {"": 1}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(self.check)},
        )
        self.server.add_generic_rpc_handlers((handler,))
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([(tls[1].read_bytes(), tls[0].read_bytes())])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        service = request[2:].decode() if request else ""
        if service not in self.statuses:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08" + bytes([self.statuses[service]])

    def stop(self) -> None:
        self.server.stop(0).wait(5)


def test_grpc_check_follows_the_health_service(agent: Client) -> None:
    server = HealthServer()
    server.statuses["web"] = 1
    target = f"127.0.0.1:{server.port}/web"
    try:
        register(agent, {"ID": "grpc", "Name": "grpc", "GRPC": target, "Interval": "1s"})
        check = wait_status(agent, "grpc", "passing")
        assert check["Output"] == f"gRPC check {target}: success"
        assert check["Type"] == "grpc"
        server.statuses["web"] = 2
        check = wait_status(agent, "grpc", "critical")
        assert check["Output"] == f"gRPC {target} serving status: NOT_SERVING"
        del server.statuses["web"]
        check = wait_status(agent, "grpc", "critical")
        assert wait_for(
            lambda: (
                check_of(agent, "grpc")["Output"]
                == "rpc error: code = NotFound desc = unknown service"
            )
        ), check_of(agent, "grpc")
        # The whole server: no service name.
        register(
            agent,
            {
                "ID": "grpc-all",
                "Name": "grpc-all",
                "GRPC": f"127.0.0.1:{server.port}",
                "Interval": "1s",
            },
        )
        wait_status(agent, "grpc-all", "passing")
    finally:
        server.stop()
    check = wait_status(agent, "grpc-all", "critical")
    assert check["Output"].startswith("rpc error: code = Unavailable desc = "), check
    deregister(agent, "grpc")
    deregister(agent, "grpc-all")


def test_grpc_check_over_tls_with_skip_verify(agent: Client, tls_files: tuple[Path, Path]) -> None:
    server = HealthServer(tls_files)
    target = f"127.0.0.1:{server.port}"
    try:
        register(
            agent,
            {
                "ID": "grpc-tls",
                "Name": "grpc-tls",
                "GRPC": target,
                "GRPCUseTLS": True,
                "TLSSkipVerify": True,
                "Interval": "1s",
            },
        )
        check = wait_status(agent, "grpc-tls", "passing")
        assert check["Output"] == f"gRPC check {target}: success"
        # Verified against the system roots, a self-signed certificate fails.
        register(
            agent,
            {
                "ID": "grpc-vfy",
                "Name": "grpc-vfy",
                "GRPC": target,
                "GRPCUseTLS": True,
                "Interval": "1s",
            },
        )
        check = wait_status(agent, "grpc-vfy", "critical")
        assert check["Output"].startswith("rpc error: code = Unavailable"), check
    finally:
        server.stop()
        deregister(agent, "grpc-tls")
        deregister(agent, "grpc-vfy")


# --- UDP ----------------------------------------------------------------------------------


def test_udp_check_passes_on_silence_and_fails_on_port_unreachable(agent: Client) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        target = f"127.0.0.1:{sock.getsockname()[1]}"
        register(
            agent,
            {"ID": "udp", "Name": "udp", "UDP": target, "Interval": "1s", "Timeout": "300ms"},
        )
        data, _ = sock.recvfrom(100)  # the agent's datagram arrives
        assert data == b""
        check = wait_status(agent, "udp", "passing")
        assert check["Output"] == f"UDP connect {target}: Success"
        assert check["Type"] == "udp"
    # The socket is closed: the next datagram draws an ICMP port unreachable.
    check = wait_status(agent, "udp", "critical")
    assert check["Output"].startswith("read udp 127.0.0.1:"), check
    assert check["Output"].endswith(f"->{target}: read: connection refused"), check
    deregister(agent, "udp")


# --- H2PING -------------------------------------------------------------------------------


class H2AckServer:
    """Accepts connections, reads the client preface and answers with SETTINGS, a SETTINGS
    ACK and PING ACKs: the least an HTTP/2 server does for a PING. ``http1`` answers as an
    HTTP/1.1 server instead."""

    def __init__(self, tls: tuple[Path, Path] | None = None, http1: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.http1 = http1
        self.ctx: ssl.SSLContext | None = None
        self.alpn: list[str | None] = []
        if tls is not None:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.ctx.set_alpn_protocols(["h2"])
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
                self.alpn.append(conn.selected_alpn_protocol())  # type: ignore[attr-defined]
            if self.http1:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                return
            preface = self.read(conn, 24)
            assert preface == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # SETTINGS
            while True:
                header = self.read(conn, 9)
                length = int.from_bytes(header[:3], "big")
                payload = self.read(conn, length)
                kind, flags = header[3], header[4]
                if kind == 0x4 and not flags & 1:
                    conn.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                elif kind == 0x6 and not flags & 1:
                    conn.sendall(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + payload)
                elif kind == 0x7:
                    return
        except (OSError, AssertionError, EOFError):
            return
        finally:
            conn.close()

    @staticmethod
    def read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def test_h2ping_check_plaintext_and_failures(agent: Client) -> None:
    server = H2AckServer()
    http1 = H2AckServer(http1=True)
    target = f"127.0.0.1:{server.port}"
    dead = f"127.0.0.1:{closed_port()}"
    try:
        register(
            agent,
            {"ID": "h2", "Name": "h2", "H2PING": target, "H2PingUseTLS": False, "Interval": "1s"},
        )
        check = wait_status(agent, "h2", "passing")
        assert check["Output"] == "HTTP2 ping was successful"
        assert check["Type"] == "h2ping"
        register(
            agent,
            {
                "ID": "h2-dead",
                "Name": "h2-dead",
                "H2PING": dead,
                "H2PingUseTLS": False,
                "Interval": "1s",
            },
        )
        check = wait_status(agent, "h2-dead", "critical")
        assert wait_for(
            lambda: (
                check_of(agent, "h2-dead")["Output"]
                == f"Failed to dial to {dead}: dial tcp {dead}: connect: connection refused"
            )
        ), check_of(agent, "h2-dead")
        register(
            agent,
            {
                "ID": "h2-http1",
                "Name": "h2-http1",
                "H2PING": f"127.0.0.1:{http1.port}",
                "H2PingUseTLS": False,
                "Interval": "1s",
            },
        )
        check = wait_status(agent, "h2-http1", "critical")
        assert wait_for(
            lambda: (
                check_of(agent, "h2-http1")["Output"] == "HTTP2 ping failed: http2: frame too large"
            )
        ), check_of(agent, "h2-http1")
    finally:
        server.close()
        http1.close()
        for cid in ("h2", "h2-dead", "h2-http1"):
            deregister(agent, cid)


def test_h2ping_check_over_tls_by_default(agent: Client, tls_files: tuple[Path, Path]) -> None:
    server = H2AckServer(tls_files)
    target = f"127.0.0.1:{server.port}"
    try:
        # H2PingUseTLS defaults to true: a verified dial fails on the self-signed certificate.
        register(agent, {"ID": "h2s", "Name": "h2s", "H2PING": target, "Interval": "1s"})
        check = wait_status(agent, "h2s", "critical")
        assert wait_for(
            lambda: check_of(agent, "h2s")["Output"].startswith(
                f"Failed to dial to {target}: tls: failed to verify certificate: x509:"
            )
        ), check_of(agent, "h2s")
        register(
            agent,
            {"ID": "h2s", "Name": "h2s", "H2PING": target, "TLSSkipVerify": True, "Interval": "1s"},
        )
        check = wait_status(agent, "h2s", "passing")
        assert check["Output"] == "HTTP2 ping was successful"
        assert "h2" in server.alpn
    finally:
        server.close()
        deregister(agent, "h2s")


# --- alias of another node ----------------------------------------------------------------


def catalog_register(agent: Client, status: str, output: str = "") -> None:
    reply = agent.put_json(
        "/v1/catalog/register",
        {
            "Node": "ext-node",
            "Address": "10.0.0.9",
            "Service": {"ID": "web-ext", "Service": "web"},
            "Checks": [
                {"CheckID": "ext-alive", "Name": "ext alive", "Status": "passing"},
                {
                    "CheckID": "web-ext-check",
                    "Name": "web ext",
                    "ServiceID": "web-ext",
                    "Status": status,
                    "Output": output,
                },
            ],
        },
    )
    assert reply.status == 200, reply.body


def test_alias_check_follows_another_nodes_service(agent: Client) -> None:
    catalog_register(agent, "passing")
    register(agent, {"ID": "al", "Name": "al", "AliasNode": "ext-node", "AliasService": "web-ext"})
    register(agent, {"ID": "al-node", "Name": "al-node", "AliasNode": "ext-node"})
    register(
        agent, {"ID": "al-none", "Name": "al-none", "AliasNode": "ext-node", "AliasService": "nope"}
    )
    check = wait_status(agent, "al", "passing")
    assert check["Output"] == "All checks passing."
    assert wait_status(agent, "al-node", "passing")["Output"] == "All checks passing."
    check = wait_status(agent, "al-none", "critical")
    assert check["Output"] == "Service nope could not be found on node ext-node"
    # A change in the catalog reaches the alias through the blocking query, well within
    # an interval-free second or two.
    catalog_register(agent, "critical", "it broke")
    check = wait_status(agent, "al", "critical", timeout=3)
    assert check["Output"] == 'Aliased check "web ext" failing: it broke'
    # The node alias ignores service checks.
    assert check_of(agent, "al-node")["Status"] == "passing"
    catalog_register(agent, "warning", "slow")
    check = wait_status(agent, "al", "warning", timeout=3)
    assert check["Output"] == 'Aliased check "web ext" failing: slow'
    # The alias check itself syncs to the catalog like any other.
    assert wait_for(
        lambda: any(
            c["CheckID"] == "al" and c["Status"] == "warning"
            for c in agent.get("/v1/health/state/warning").json()
        )
    )
    for cid in ("al", "al-node", "al-none"):
        deregister(agent, cid)
    assert agent.put_json("/v1/catalog/deregister", {"Node": "ext-node"}).status == 200


# --- thresholds ---------------------------------------------------------------------------


def test_failures_before_warning_and_critical(agent: Client) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    target = f"127.0.0.1:{listener.getsockname()[1]}"
    seen: list[str] = []
    try:
        register(
            agent,
            {
                "ID": "thr",
                "Name": "thr",
                "TCP": target,
                "Interval": "1s",
                "FailuresBeforeWarning": 1,
                "FailuresBeforeCritical": 3,
                "SuccessBeforePassing": 2,
            },
        )
        wait_status(agent, "thr", "passing")
    finally:
        listener.close()

    def record() -> bool:
        status = check_of(agent, "thr").get("Status", "")
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == "critical"

    assert wait_for(record, 10), seen
    assert seen == ["passing", "warning", "critical"], seen
    assert check_of(agent, "thr")["Output"] == f"dial tcp {target}: connect: connection refused"
    deregister(agent, "thr")


def test_long_outputs_are_cut_at_4k(agent: Client) -> None:
    # An alias whose aliased check carries a long output: the alias output stays within 4 KiB
    # plus the truncation note.
    catalog_register(agent, "critical", "x" * 10_000)
    register(
        agent,
        {"ID": "al-long", "Name": "al-long", "AliasNode": "ext-node", "AliasService": "web-ext"},
    )
    full = 'Aliased check "web ext" failing: ' + "x" * 10_000
    check = wait_status(agent, "al-long", "critical")
    note = f" ... (captured 4096 of {len(full)} bytes)"
    assert check["Output"] == full[:4096] + note, check["Output"][-60:]
    deregister(agent, "al-long")
    assert agent.put_json("/v1/catalog/deregister", {"Node": "ext-node"}).status == 200


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_script_and_http_outputs_keep_their_last_4k(agent: Client, tmp_path: Path) -> None:
    body = b"".join(b"%05d\n" % i for i in range(2000))  # 12000 bytes, distinct lines

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/big"
    pidfile = tmp_path / "sleep.pid"
    script = "i=0; while [ $i -lt 2000 ]; do printf '%05d\\n' $i; i=$((i+1)); done"
    try:
        register(agent, {"ID": "big-http", "Name": "big-http", "HTTP": url, "Interval": "1s"})
        register(
            agent,
            {"ID": "big-sh", "Name": "big-sh", "Args": ["sh", "-c", script], "Interval": "1s"},
        )
        register(
            agent,
            {
                "ID": "slow-sh",
                "Name": "slow-sh",
                "Args": ["sh", "-c", f"echo started; sleep 30 & echo $! > {pidfile}; wait"],
                "Interval": "1s",
                "Timeout": "300ms",
            },
        )
        check = wait_status(agent, "big-http", "passing")
        assert check["Output"] == f"HTTP GET {url}: 200 OK Output: " + body[-4096:].decode()
        check = wait_status(agent, "big-sh", "passing")
        assert check["Output"] == "Captured 4096 of 12000 bytes\n...\n" + body[-4096:].decode()
        check = wait_status(agent, "slow-sh", "critical")
        assert check["Output"] == "Timed out (300ms) running check\n\nstarted\n", check
        # The script's whole process group was killed, its background child too.
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
        assert wait_for(lambda: not alive(pid), 3), pid
    finally:
        web.shutdown()
        web.server_close()
        for cid in ("big-http", "big-sh", "slow-sh"):
            deregister(agent, cid)


# --- alias of another node on a client agent ----------------------------------------------


@pytest.mark.timeout(90)
def test_alias_node_check_on_a_client_agent(tmp_path: Path) -> None:
    """A client agent has no catalog of its own: its alias check reads the node's checks
    through its HTTP API, which relays the blocking query to a server."""
    from helpers.cluster import make_client, make_servers

    (server,) = make_servers(tmp_path, 1, expect=1)
    client = make_client(tmp_path, "c1", [server])
    try:
        server.start()
        client.start()
        srv, cli = Client(server.http), Client(client.http)

        def leader() -> bool:
            try:
                return bool(cli.get("/v1/status/leader").json())
            except (OSError, ValueError):
                return False

        assert wait_for(leader, 40), client.log.read_text()
        catalog_register(srv, "passing")
        register(
            cli, {"ID": "al", "Name": "al", "AliasNode": "ext-node", "AliasService": "web-ext"}
        )
        assert wait_status(cli, "al", "passing", 15)["Output"] == "All checks passing."
        catalog_register(srv, "critical", "down")
        check = wait_status(cli, "al", "critical", 5)
        assert check["Output"] == 'Aliased check "web ext" failing: down'
        # Synced to the catalog from the client like its other checks.
        assert wait_for(
            lambda: any(
                c["CheckID"] == "al" and c["Node"] == "c1"
                for c in srv.get("/v1/health/state/critical").json()
            ),
            10,
        )
    finally:
        client.terminate()
        server.terminate()
        client.kill()
        server.kill()


def test_tcp_check_with_tls(agent: Client, tls_files: tuple[Path, Path]) -> None:
    server = H2AckServer(tls_files)
    target = f"127.0.0.1:{server.port}"
    try:
        register(
            agent,
            {
                "ID": "tls-vfy",
                "Name": "tls-vfy",
                "TCP": target,
                "TCPUseTLS": True,
                "Interval": "1s",
            },
        )
        check = wait_status(agent, "tls-vfy", "critical")
        assert check["Output"].startswith("tls: failed to verify certificate: x509:"), check
        register(
            agent,
            {
                "ID": "tls-skip",
                "Name": "tls-skip",
                "TCP": target,
                "TCPUseTLS": True,
                "TLSSkipVerify": True,
                "Interval": "1s",
            },
        )
        check = wait_status(agent, "tls-skip", "passing")
        assert check["Output"] == f"TCP+TLS connect {target}: Success"
    finally:
        server.close()
        deregister(agent, "tls-vfy")
        deregister(agent, "tls-skip")
