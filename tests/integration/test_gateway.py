"""The mesh gateway as a real process (``proconsul connect mesh-gateway`` / ``connect envoy
-gateway=mesh``), with real TLS end to end.

Set-up: a CA and server certificates (``server.clicmd.tls``), TLS echo servers on 127.0.0.x
standing in for local servers ``s1``, ``s2``, ``s3`` (critical) and for a gateway of ``dc2``,
a plain TCP backend ``raw`` (half-close), and a fake agent (HTTP, real blocking queries) that
serves ``/v1/health/service/consul``, ``/v1/agent/self`` and the federation states. Clients
connect to the gateway with an SNI and complete a mutual-TLS handshake with the backend's own
certificate: the gateway routes by the ClientHello and never terminates TLS. Both data paths
(splice, protocol) run the same tests.

The last test runs a real ``proconsul agent -dev``: registration (kind, tagged addresses, meta,
check), routes to the dev server, deregistration on SIGTERM.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers.agentproc import free_port, proconsul, start_agent, stop_agent

from server.clicmd.tls import CAOptions, CertOptions, generate_ca, generate_cert, parse_signer

pytestmark = pytest.mark.integration

HOSTS = {"s1": "127.0.0.11", "s2": "127.0.0.12", "s3": "127.0.0.13", "raw": "127.0.0.14"}
DC2_GATEWAY_HOST = "127.0.0.21"
DEADLINE = 15.0


# --- PKI -------------------------------------------------------------------------------------


@dataclass
class Pki:
    root: Path
    ca: Path
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def issue(self, name: str, dns: list[str]) -> tuple[Path, Path]:
        ca_pem = self.ca.read_text()
        signer = parse_signer((self.root / "ca-key.pem").read_text())
        cert, key = generate_cert(
            CertOptions(
                signer=signer,
                ca=ca_pem,
                name=dns[0],
                dns_names=dns,
                ip_addresses=[ipaddress.ip_address("127.0.0.1")],
                ext_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            )
        )
        cp, kp = self.root / f"{name}.pem", self.root / f"{name}-key.pem"
        cp.write_text(cert)
        kp.write_text(key)
        self.certs[name] = (cp, kp)
        return cp, kp

    def server_context(self, name: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.certs[name])
        ctx.load_verify_locations(self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as server RPC through gateways
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(*self.certs["client"])
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, key = generate_ca(CAOptions())
    (root / "ca.pem").write_text(ca)
    (root / "ca-key.pem").write_text(key)
    p = Pki(root, root / "ca.pem")
    for node in ("s1", "s2", "s3"):
        p.issue(node, [f"{node}.server.dc1.consul", "server.dc1.consul"])
    p.issue("dc2gw", ["s9.server.dc2.consul", "server.dc2.consul"])
    p.issue("client", ["client.dc1.consul"])
    return p


# --- backends --------------------------------------------------------------------------------


class Backend:
    """A threaded TCP server on ``host``; ``handle(conn)`` runs per connection."""

    def __init__(self, host: str, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server((host, 0))
        self.address = self.sock.getsockname()
        self.handle = handle
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(DEADLINE)
        with contextlib.suppress(OSError), conn:
            self.handle(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def tls_echo(ctx: ssl.SSLContext) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(data)

    return handle


def raw_digest(conn: socket.socket) -> None:
    """Read to EOF, then answer the SHA-256 of everything read: proves half-close."""
    h = hashlib.sha256()
    total = 0
    while data := conn.recv(65536):
        h.update(data)
        total += len(data)
    conn.sendall(f"{total} {h.hexdigest()}".encode())


# --- the fake agent --------------------------------------------------------------------------


def csn(node: str, host: str, port: int, status: str = "passing") -> dict[str, Any]:
    return {
        "Node": {"Node": node, "Address": host, "Datacenter": "dc1"},
        "Service": {"ID": "consul", "Service": "consul", "Address": "", "Port": port},
        "Checks": [{"CheckID": "serfHealth", "Status": status}],
    }


class FakeAgent:
    """Answers the gateway's queries; blocking queries wait for ``bump()``."""

    def __init__(self, port: int = 0) -> None:
        self.index = 10
        self.cond = threading.Condition()
        self.servers: list[dict[str, Any]] = []
        self.gateways: dict[str, list[dict[str, Any]]] | None = {}
        self.failing = False
        self.requests: list[str] = []
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                agent.handle(self)

            def do_PUT(self) -> None:
                agent.handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bump(self) -> None:
        with self.cond:
            self.index += 1
            self.cond.notify_all()

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(req.path)
        query = urllib.parse.parse_qs(url.query)
        self.requests.append(url.path)
        want = int(query.get("index", ["0"])[0])
        with self.cond:
            if want >= self.index:
                self.cond.wait(timeout=2.0)
            index = self.index
            failing = self.failing
        if failing:
            body: Any = "agent on fire"
            status = 500
        elif url.path == "/v1/agent/self":
            body, status = {"Config": {"Datacenter": "dc1"}, "Member": {"Addr": "127.0.0.1"}}, 200
        elif url.path == "/v1/health/service/consul":
            body, status = self.servers, 200
        elif url.path == "/v1/internal/federation-states/mesh-gateways":
            body, status = (self.gateways, 200) if self.gateways is not None else ("", 404)
        else:
            body, status = "not found", 404
        data = json.dumps(body).encode()
        with contextlib.suppress(OSError):  # the gateway may be gone (shutdown)
            req.send_response(status)
            req.send_header("X-Consul-Index", str(index))
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the gateway process ---------------------------------------------------------------------


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    log: Path

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    def wait(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                last = self.stats()
                if pred(last):
                    return last
            time.sleep(0.05)
        pytest.fail(f"{what}: {json.dumps(last, indent=1)}\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return -9


def start_gateway(tmp: Path, agent_port: int, *flags: str, name: str = "gw") -> Gateway:
    port, admin = free_port(), free_port()
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *proconsul(),
                "connect",
                "mesh-gateway",
                "-expose-servers",
                f"-address=127.0.0.1:{port}",
                f"-wan-address=127.0.0.1:{port}",
                f"-http-addr=127.0.0.1:{agent_port}",
                f"-admin-bind=127.0.0.1:{admin}",
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(proc, port, admin, log)
    try:
        gw.wait(lambda s: bool(s.get("ready")), "gateway never ready")
    except BaseException:
        gw.stop()
        raise
    return gw


@dataclass
class World:
    pki: Pki
    agent: FakeAgent
    backends: dict[str, Backend]
    gw: Gateway
    tmp: Path


@pytest.fixture(scope="module", params=["splice", "protocol"])
def world(request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:  # fmt: skip
    tmp = tmp_path_factory.mktemp(f"gw-{request.param}")
    backends = {n: Backend(HOSTS[n], tls_echo(pki.server_context(n))) for n in ("s1", "s2", "s3")}
    backends["raw"] = Backend(HOSTS["raw"], raw_digest)
    backends["dc2"] = Backend(DC2_GATEWAY_HOST, tls_echo(pki.server_context("dc2gw")))
    agent = FakeAgent()
    agent.servers = [
        csn("s1", HOSTS["s1"], backends["s1"].address[1]),
        csn("s2", HOSTS["s2"], backends["s2"].address[1]),
        csn("s3", HOSTS["s3"], backends["s3"].address[1], status="critical"),
        csn("raw", HOSTS["raw"], backends["raw"].address[1], status="critical"),  # not TLS
        csn("dead", "127.0.0.15", free_port(), status="critical"),
    ]
    gw_port = backends["dc2"].address[1]
    agent.gateways = {
        "dc2": [
            {
                "Node": {"Node": "gw-a", "Address": "10.9.9.9"},
                "Service": {
                    "Service": "mesh-gateway",
                    "Port": 1,
                    "Meta": {"consul-wan-federation": "1"},
                    "TaggedAddresses": {"wan": {"Address": DC2_GATEWAY_HOST, "Port": gw_port}},
                },
                "Checks": [{"Status": "passing"}],
            },
            {  # no federation meta: never picked
                "Node": {"Node": "gw-b", "Address": "127.0.0.22"},
                "Service": {"Service": "mesh-gateway", "Port": 9},
                "Checks": [],
            },
        ]
    }
    gw = start_gateway(tmp, agent.port, f"-data-path={request.param}", "-hello-timeout=1s")
    try:
        yield World(pki, agent, backends, gw, tmp)
        assert gw.stop() == 0, gw.log.read_text()
    finally:
        gw.stop()
        agent.close()
        for b in backends.values():
            b.close()


# --- client helpers --------------------------------------------------------------------------


def tls_connect(w: World, sni: str, port: int | None = None) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port or w.gw.port), timeout=DEADLINE)
    return w.pki.client_context().wrap_socket(sock, server_hostname=sni)


def echo_roundtrip(tls: ssl.SSLSocket, size: int) -> None:
    """Send ``size`` random bytes in 256 KiB steps, each echoed back before the next (an
    SSLSocket must not be read and written from two threads at once)."""
    payload = os.urandom(size)
    got = bytearray()
    step = 256 << 10
    for start in range(0, size, step):
        tls.sendall(payload[start : start + step])
        want = min(size, start + step)
        while len(got) < want:
            chunk = tls.recv(65536)
            assert chunk, f"closed after {len(got)} of {size} bytes"
            got += chunk
    assert bytes(got) == payload


def peer_names(tls: ssl.SSLSocket) -> list[str]:
    cert = tls.getpeercert()
    assert cert is not None
    return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


def expect_closed(sock: socket.socket, timeout: float = DEADLINE) -> float:
    """Wait for the gateway to close ``sock``; returns the seconds it took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def client_hello(sni: str) -> bytes:
    """A real ClientHello for ``sni`` (Python's ssl, memory BIOs)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# --- tests -----------------------------------------------------------------------------------


def test_named_server_reached_through_gateway_with_end_to_end_tls(world: World) -> None:
    for node in ("s1", "s2", "s3"):  # s3 is critical: a named server is routed anyway
        with tls_connect(world, f"{node}.server.dc1.consul") as tls:
            assert f"{node}.server.dc1.consul" in peer_names(tls)
            echo_roundtrip(tls, 3 << 20)
    s = world.gw.stats()
    assert s["routes"]["local_server"] >= 3
    suffix = s["sni_suffixes"]["server.dc1.consul"]
    assert suffix["bytes_in"] >= 9 << 20 and suffix["bytes_out"] >= 9 << 20


def test_any_server_picks_only_healthy_servers(world: World) -> None:
    seen = set()
    for _ in range(12):
        with tls_connect(world, "server.dc1.consul") as tls:
            names = peer_names(tls)
            seen.add(names[0].split(".")[0])
            echo_roundtrip(tls, 1000)
    assert seen <= {"s1", "s2"} and seen, seen


def test_remote_datacenter_goes_to_its_gateway(world: World) -> None:
    with tls_connect(world, "s9.server.dc2.consul") as tls:
        assert "s9.server.dc2.consul" in peer_names(tls)
        echo_roundtrip(tls, 100_000)
    s = world.gw.stats()
    assert s["routes"]["remote_server_gateway"] >= 1
    assert s["routing_table"]["RemoteGateways"] == {
        "dc2": [f"{DC2_GATEWAY_HOST}:{world.backends['dc2'].address[1]}"]
    }


def test_refused_names_are_closed_and_counted(world: World) -> None:
    before = world.gw.stats()["refusals"]
    for sni in ("evil.example.com", "s1.server.dc7.consul", "nobody.server.dc1.consul"):
        sock = socket.create_connection(("127.0.0.1", world.gw.port), timeout=DEADLINE)
        with sock:
            sock.sendall(client_hello(sni))
            expect_closed(sock)
    with socket.create_connection(("127.0.0.1", world.gw.port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        expect_closed(sock)
    after = world.gw.wait(
        lambda s: s["refusals"].get("not_tls", 0) > before.get("not_tls", 0), "not_tls counted"
    )["refusals"]
    for reason in ("unknown_name", "unknown_datacenter", "unknown_server"):
        assert after.get(reason, 0) == before.get(reason, 0) + 1, (reason, after)
    # Only a known datacenter mints a suffix label; unknown ones count under "other".
    assert "server.dc7.consul" not in world.gw.stats()["sni_suffixes"]


def test_slow_client_hello_is_closed_at_the_bound(world: World) -> None:
    hello = client_hello("s1.server.dc1.consul")
    with socket.create_connection(("127.0.0.1", world.gw.port), timeout=DEADLINE) as sock:
        sock.sendall(hello[:20])  # then nothing: the bound is -hello-timeout=1s
        took = expect_closed(sock)
    assert 0.8 <= took < 4.0, took
    world.gw.wait(lambda s: s["refusals"].get("hello_timeout", 0) >= 1, "hello_timeout")


def test_half_close_and_bytes_unchanged(world: World) -> None:
    hello = client_hello("raw.server.dc1.consul")
    body = os.urandom(2 << 20)
    with socket.create_connection(("127.0.0.1", world.gw.port), timeout=DEADLINE) as sock:
        sock.sendall(hello + body)
        sock.shutdown(socket.SHUT_WR)  # EOF must reach the backend, the answer still come back
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    sent = hello + body
    assert answer.decode() == f"{len(sent)} {hashlib.sha256(sent).hexdigest()}"


def test_dead_upstream_counts_connect_errors(world: World) -> None:
    before = world.gw.stats()["upstream_connect_errors"]
    with socket.create_connection(("127.0.0.1", world.gw.port), timeout=DEADLINE) as sock:
        sock.sendall(client_hello("dead.server.dc1.consul"))
        expect_closed(sock)
    s = world.gw.wait(lambda s: s["upstream_connect_errors"] > before, "connect error counted")
    assert s["sni_suffixes"]["server.dc1.consul"]["upstream_connect_errors"] >= 1


def test_metrics_endpoint_is_prometheus_text(world: World) -> None:
    text = world.gw.metrics()
    assert "# TYPE proconsul_gateway_connections_total counter" in text
    assert 'proconsul_gateway_routes_total{kind="local_server"}' in text
    assert 'proconsul_gateway_sni_bytes_in_total{suffix="server.dc1.consul"}' in text
    with urllib.request.urlopen(f"http://127.0.0.1:{world.gw.admin}/ready", timeout=5) as r:
        assert r.status == 200


def test_routes_survive_an_unavailable_agent_and_follow_changes(world: World) -> None:
    agent = world.agent
    agent.failing = True
    agent.bump()  # the blocking queries return 500 now: the gateway keeps its table
    time.sleep(0.5)
    with tls_connect(world, "s1.server.dc1.consul") as tls:
        echo_roundtrip(tls, 1000)
    agent.failing = False
    agent.servers = [s for s in agent.servers if s["Node"]["Node"] != "s2"]
    agent.bump()
    world.gw.wait(lambda s: "s2" not in s["routing_table"]["Servers"], "s2 dropped")
    with socket.create_connection(("127.0.0.1", world.gw.port), timeout=DEADLINE) as sock:
        sock.sendall(client_hello("s2.server.dc1.consul"))
        expect_closed(sock)


def test_connection_limit_and_idle_timeout(world: World) -> None:
    gw = start_gateway(
        world.tmp,
        world.agent.port,
        "-max-connections=2",
        "-idle-timeout=1s",
        f"-data-path={world.gw.stats()['data_path']}",
        name="gw-limit",
    )
    try:
        a = tls_connect(world, "s1.server.dc1.consul", gw.port)
        b = tls_connect(world, "s1.server.dc1.consul", gw.port)
        echo_roundtrip(a, 100)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=DEADLINE) as c:
            assert expect_closed(c) < 2.0
        gw.wait(lambda s: s["refusals"].get("max_connections", 0) == 1, "limit counted")
        # Both idle now: closed by the idle timeout (1 s, swept every 0.25 s).
        assert expect_closed(a) < 3.0
        assert expect_closed(b) < 3.0
        s = gw.wait(lambda s: s["connections_active"] == 0, "idle links closed")
        assert s["idle_timeouts"] == 2
        with tls_connect(world, "s1.server.dc1.consul", gw.port) as d:
            echo_roundtrip(d, 100)
        a.close()
        b.close()
    finally:
        assert gw.stop() == 0, gw.log.read_text()


# --- with a real agent -----------------------------------------------------------------------


def test_registration_routes_and_deregistration_with_a_dev_agent(tmp_path: Path) -> None:
    proc, client = start_agent(tmp_path / "agent.log")
    http_port = int(client.base.rsplit(":", 1)[1])
    try:
        node = client.get("/v1/agent/self").json()["Config"]["NodeName"]
        lan, wan = free_port(), free_port()
        gw = registering_gateway(tmp_path, http_port, lan, wan, "-service", "gw-one")
        log = gw.log
        try:
            s = gw.wait(lambda s: s["ready"] and bool(s["routing_table"]["Servers"]), "routes")
            rpc = client.get("/v1/agent/self").json()["DebugConfig"]["ServerPort"]
            assert s["routing_table"]["Servers"] == {node: f"127.0.0.1:{rpc}"}
            assert sorted(s["listeners"]) == [f"127.0.0.1:{lan}", f"127.0.0.2:{wan}"]
            entry = _wait_for_service(client, "gw-one")
            svc = entry["Service"]
            assert svc["Kind"] == "mesh-gateway"
            assert svc["Port"] == lan and svc["Address"] == "127.0.0.1"
            assert svc["TaggedAddresses"] == {
                "lan": {"Address": "127.0.0.1", "Port": lan},
                "wan": {"Address": "127.0.0.2", "Port": wan},
            }
            assert svc["Meta"] == {"consul-wan-federation": "1"}
            checks = [c for c in entry["Checks"] if c["ServiceID"] == "gw-one"]
            assert len(checks) == 1 and checks[0]["Type"] == "tcp", checks
            # The dev agent's server port speaks gRPC without TLS, so the handshake fails, but
            # the ClientHello crosses the gateway to it (both listeners route the same).
            for port, host in ((lan, "127.0.0.1"), (wan, "127.0.0.2")):
                with socket.create_connection((host, port), timeout=DEADLINE) as sock:
                    sock.sendall(client_hello(f"{node}.server.dc1.consul"))
                    expect_closed(sock, 10.0)
            s = gw.wait(lambda s: s["routes"].get("local_server", 0) == 2, "routed to the agent")
            assert s["upstream_connect_errors"] == 0
            assert s["sni_suffixes"]["server.dc1.consul"]["bytes_in"] > 0
        finally:
            assert gw.stop() == 0, log.read_text()
        deadline = time.monotonic() + DEADLINE  # the agent syncs the removal to the catalog
        while client.get("/v1/health/service/gw-one").json() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/v1/health/service/gw-one").json() == []
        assert client.get("/v1/agent/service/gw-one").status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        stop_agent(proc)


def registering_gateway(
    tmp: Path, http_port: int, lan: int, wan: int, *flags: str, name: str = "gw"
) -> Gateway:
    """``connect envoy -gateway=mesh -register -expose-servers`` on 127.0.0.1:``lan`` (WAN
    127.0.0.2:``wan``) against the agent at ``http_port``; not waited for."""
    admin = free_port()
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*proconsul(), "connect", "envoy", "-gateway=mesh", "-register", "-expose-servers",
             "-address", f"127.0.0.1:{lan}", "-wan-address", f"127.0.0.2:{wan}",
             "-http-addr", f"127.0.0.1:{http_port}", "-admin-bind", f"127.0.0.1:{admin}", *flags],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Gateway(proc, lan, admin, log)


def test_two_gateways_with_distinct_proxy_ids_on_one_agent(tmp_path: Path) -> None:
    """Consul's ``-proxy-id`` is the registration's ID: two gateways of one service name on one
    agent are both in the catalog, and each deregisters only itself."""
    proc, client = start_agent(tmp_path / "agent.log")
    http_port = int(client.base.rsplit(":", 1)[1])
    gws: list[Gateway] = []
    try:
        for pid in ("gw-a", "gw-b"):
            gws.append(registering_gateway(tmp_path, http_port, free_port(), free_port(), "-proxy-id", pid, name=pid))  # fmt: skip
        deadline = time.monotonic() + DEADLINE
        ids: list[str] = []
        while time.monotonic() < deadline:
            found = client.get("/v1/health/service/mesh-gateway").json()
            ids = sorted(e["Service"]["ID"] for e in found)
            if len(ids) == 2:
                break
            time.sleep(0.1)
        assert ids == ["gw-a", "gw-b"], [g.log.read_text() for g in gws]
        assert gws[0].stop() == 0, gws[0].log.read_text()
        while time.monotonic() < deadline and len(client.get("/v1/health/service/mesh-gateway").json()) != 1:  # fmt: skip
            time.sleep(0.1)
        left = client.get("/v1/health/service/mesh-gateway").json()
        assert [e["Service"]["ID"] for e in left] == ["gw-b"]
    finally:
        for gw in gws:
            gw.stop()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        stop_agent(proc)


def _wait_for_service(client: Any, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = client.get(f"/v1/health/service/{name}").json()
        if found:
            entry: dict[str, Any] = found[0]
            return entry
        time.sleep(0.1)
    pytest.fail(f"service {name} never registered")


def test_gateway_starts_before_its_agent_and_404_federation_is_empty(
    tmp_path: Path, pki: Pki
) -> None:
    # Nothing listens on the agent port yet: the gateway retries until it appears.
    agent_port = free_port()
    port, admin = free_port(), free_port()
    log = tmp_path / "gw.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*proconsul(), "connect", "mesh-gateway", "-expose-servers", f"-address=127.0.0.1:{port}",
             f"-http-addr=127.0.0.1:{agent_port}", f"-admin-bind=127.0.0.1:{admin}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    gw = Gateway(proc, port, admin, log)
    agent: FakeAgent | None = None
    try:
        gw.wait(lambda s: not s["ready"], "admin up, not ready")
        time.sleep(0.5)
        agent = FakeAgent(agent_port)
        agent.gateways = None  # the federation-states endpoint answers 404
        backend = Backend(HOSTS["s1"], tls_echo(pki.server_context("s1")))
        agent.servers = [csn("s1", HOSTS["s1"], backend.address[1])]
        agent.bump()
        s = gw.wait(lambda s: s["ready"], "ready once the agent answers")
        assert s["routing_table"]["RemoteGateways"] == {}
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        with pki.client_context().wrap_socket(sock, server_hostname="s1.server.dc1.consul") as tls:
            echo_roundtrip(tls, 1000)
        backend.close()
    finally:
        assert gw.stop() == 0, log.read_text()
        if agent is not None:
            agent.close()
