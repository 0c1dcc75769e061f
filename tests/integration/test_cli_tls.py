"""``proconsul tls ca create`` and ``tls cert create`` as subprocesses, then the certificates
they wrote proven with real TLS handshakes on loopback (Python's ``ssl``): mutual
authentication with hostname verification of ``server.dc1.consul``, and the handshakes that
must fail (wrong datacenter name, no client certificate, a certificate from another CA)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.agentproc import proconsul

pytestmark = pytest.mark.integration


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    return subprocess.run(
        [*proconsul(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )


def ok(cwd: Path, *args: str) -> str:
    res = cli(cwd, *args)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    assert res.stderr == ""
    return res.stdout


@dataclass
class Pki:
    root: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    assert ok(d, "tls", "ca", "create") == (
        "==> Saved consul-agent-ca.pem\n==> Saved consul-agent-ca-key.pem\n"
    )
    out = ok(d, "tls", "cert", "create", "-server", "-dc", "dc1", "-node", "pri")
    assert out.endswith(
        "==> Using consul-agent-ca.pem and consul-agent-ca-key.pem\n"
        "==> Saved dc1-server-consul-0.pem\n"
        "==> Saved dc1-server-consul-0-key.pem\n"
    )
    assert out.startswith("==> WARNING: Server Certificates grants authority")
    out = ok(d, "tls", "cert", "create", "-client", "-dc", "dc1")
    assert out == (
        "==> Using consul-agent-ca.pem and consul-agent-ca-key.pem\n"
        "==> Saved dc1-client-consul-0.pem\n"
        "==> Saved dc1-client-consul-0-key.pem\n"
    )
    return Pki(
        d,
        d / "consul-agent-ca.pem",
        d / "dc1-server-consul-0.pem",
        d / "dc1-server-consul-0-key.pem",
        d / "dc1-client-consul-0.pem",
        d / "dc1-client-consul-0-key.pem",
    )


@dataclass
class EchoServer:
    """A TLS server on 127.0.0.1 requiring a client certificate from ``ca``; it records the
    subject of each verified peer and every handshake error, and echoes one message."""

    context: ssl.SSLContext
    sock: socket.socket = field(default_factory=socket.socket)
    peers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def wait_error(self, text: str, timeout: float = 5.0) -> None:
        """Wait until a handshake error containing ``text`` (case-insensitive) was seen."""
        for _ in range(int(timeout / 0.05)):
            if any(text.lower() in e.lower() for e in self.errors):
                return
            self.stopping.wait(0.05)
        raise AssertionError(f"no handshake error with {text!r}: {self.errors}")

    def start(self) -> int:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        port: int = self.sock.getsockname()[1]
        return port

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    cert = conn.getpeercert()
                    subject: Any = (cert or {}).get("subject", ())
                    names = [
                        str(value) for rdn in subject for key, value in rdn if key == "commonName"
                    ]
                    self.peers.append(names[0] if names else "")
                    data = conn.recv(100)
                    conn.sendall(b"echo:" + data)
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                raw.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(timeout=10)
        self.sock.close()


def server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # verify_incoming
    return ctx


def client_context(pki: Pki, with_cert: bool = True, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(ca or pki.ca)
    if with_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def server(pki: Pki) -> Iterator[tuple[EchoServer, int]]:
    srv = EchoServer(server_context(pki))
    port = srv.start()
    try:
        yield srv, port
    finally:
        srv.stop()


def exchange(ctx: ssl.SSLContext, port: int, server_name: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as conn,
    ):
        conn.sendall(b"ping")
        data = b""
        while chunk := conn.recv(100):
            data += chunk
        return data


@pytest.mark.parametrize("name", ["server.dc1.consul", "pri.server.dc1.consul", "localhost"])
def test_mutual_tls_with_hostname_verification(
    pki: Pki, server: tuple[EchoServer, int], name: str
) -> None:
    srv, port = server
    assert exchange(client_context(pki), port, name) == b"echo:ping"
    assert srv.peers == ["client.dc1.consul"]
    assert srv.errors == []


def test_server_certificate_also_authenticates_as_a_client(
    pki: Pki, server: tuple[EchoServer, int]
) -> None:
    """Servers dial each other with their server certificate (serverAuth + clientAuth)."""
    srv, port = server
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    assert exchange(ctx, port, "server.dc1.consul") == b"echo:ping"
    assert srv.peers == ["server.dc1.consul"]


def test_wrong_datacenter_name_is_refused(pki: Pki, server: tuple[EchoServer, int]) -> None:
    _, port = server
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        exchange(client_context(pki), port, "server.dc2.consul")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        exchange(client_context(pki), port, "other.server.dc1.consul")


def test_client_without_certificate_is_refused(pki: Pki, server: tuple[EchoServer, int]) -> None:
    srv, port = server
    with pytest.raises((ssl.SSLError, ConnectionError)):
        exchange(client_context(pki, with_cert=False), port, "server.dc1.consul")
    srv.wait_error("certificate")
    assert srv.peers == []


def test_certificates_of_another_ca_are_refused(
    pki: Pki, server: tuple[EchoServer, int], tmp_path: Path
) -> None:
    ok(tmp_path, "tls", "ca", "create")
    ok(tmp_path, "tls", "cert", "create", "-server")
    # The client trusts only the other CA: our server's certificate does not verify.
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        exchange(
            client_context(pki, ca=tmp_path / "consul-agent-ca.pem"),
            port=server[1],
            server_name="server.dc1.consul",
        )
    # A client presenting the other CA's certificate is refused by our server.
    srv, port = server
    srv.wait_error("unknown ca")  # the client above aborted on our certificate
    srv.errors.clear()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(
        tmp_path / "dc1-server-consul-0.pem", tmp_path / "dc1-server-consul-0-key.pem"
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        exchange(ctx, port, "server.dc1.consul")
    srv.wait_error("certificate verify failed")
    assert srv.peers == []


def test_openssl_accepts_the_chain_strictly(pki: Pki) -> None:
    """OpenSSL's own verifier in strict X.509 mode, for both purposes, when it is installed."""
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    for cert, purpose in ((pki.server_cert, "sslserver"), (pki.client_cert, "sslclient")):
        res = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                str(pki.ca),
                str(cert),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-verify_hostname",
            "server.dc1.consul",
            "-CAfile",
            str(pki.ca),
            str(pki.server_cert),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_refusals_are_one_line(pki: Pki) -> None:
    res = cli(pki.root, "tls", "ca", "create")
    assert res.returncode == 1
    assert res.stderr == "consul-agent-ca.pem already exists.\n"
    res = cli(pki.root, "tls", "cert", "create")
    assert (res.returncode, res.stderr) == (1, "Please provide either -server, -client, or -cli\n")
    res = cli(pki.root, "tls", "cert", "create", "-client", "-ca", "missing.pem")
    assert res.returncode == 1
    assert res.stderr == "Error reading CA: open missing.pem: no such file or directory\n"
    assert "Traceback" not in res.stderr
