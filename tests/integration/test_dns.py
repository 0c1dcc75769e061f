"""The DNS interface of a real ``proconsul agent -dev`` process, queried with dnspython over
UDP and TCP: services registered through /v1/agent/service/register with HTTP and TTL
checks, only healthy instances answered, a failing TTL check removing its instance, UDP
answer limits and full TCP answers, and garbage that does not harm the server. Plus the
``DnsServer`` service in-process: its dev-mode fallback when port 8600 is taken."""

from __future__ import annotations

import contextlib
import errno
import http.server
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from helpers.agentproc import Client, start_agent, stop_agent

from server.config.runtime import RuntimeConfig
from server.dns.server import DnsServer
from server.endpoints.context import ServerContext
from server.fsm import ConsulFSM

pytestmark = pytest.mark.integration


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port: int = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class Agent:
    def __init__(self, client: Client, dns_port: int, log: Path) -> None:
        self.client = client
        self.dns_port = dns_port
        self.log = log

    def udp(self, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)
        return dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=3)

    def tcp(self, name: str, rdtype: str = "A") -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)
        return dns.query.tcp(q, "127.0.0.1", port=self.dns_port, timeout=3)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    log = tmp_path_factory.mktemp("dns") / "agent.log"
    dns_port = free_udp_tcp_port()
    proc, client = start_agent(log, "-dns-port", str(dns_port))
    try:
        yield Agent(client, dns_port, log)
    finally:
        stop_agent(proc)


def wait_for(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def srv_ports(msg: dns.message.Message) -> list[int]:
    return sorted(
        rd.port for rrset in msg.answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset
    )


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def register(agent: Agent, body: dict[str, Any]) -> None:
    reply = agent.client.put_json("/v1/agent/service/register", body)
    assert reply.status == 200, reply.body


def test_services_with_http_and_ttl_checks(agent: Agent, health_server: int) -> None:
    register(
        agent,
        {"Name": "web", "ID": "web-ttl", "Port": 8001, "Check": {"TTL": "30s"}},
    )
    register(
        agent,
        {
            "Name": "web",
            "ID": "web-http",
            "Port": 8002,
            "Address": "127.0.0.2",
            "Tags": ["blue"],
            "Check": {"HTTP": f"http://127.0.0.1:{health_server}/health", "Interval": "1s"},
        },
    )
    # The TTL check starts critical: only the HTTP-checked instance, once its check passed.
    assert wait_for(lambda: srv_ports(agent.udp("web.service.consul", "SRV")) == [8002])
    assert agent.client.put("/v1/agent/check/pass/service:web-ttl").status == 200
    assert wait_for(lambda: srv_ports(agent.udp("web.service.consul", "SRV")) == [8001, 8002])

    msg = agent.udp("web.service.consul", "SRV")
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    node = agent.client.get("/v1/agent/self").json()["Config"]["NodeName"]
    targets = sorted(rd.target.to_text() for rd in msg.answer[0])
    assert targets == sorted([f"{node}.node.dc1.consul.", "7f000002.addr.dc1.consul."])
    extra = {
        rrset.name.to_text(): [rd.to_text() for rd in rrset]
        for rrset in msg.additional
        if rrset.rdtype == dns.rdatatype.A
    }
    assert extra[f"{node}.node.dc1.consul."] == ["127.0.0.1"]
    assert extra["7f000002.addr.dc1.consul."] == ["127.0.0.2"]
    # The node's meta rides along as TXT (dns_config.enable_additional_node_meta_txt).
    txt = [
        rd.to_text()
        for rrset in msg.additional
        if rrset.rdtype == dns.rdatatype.TXT and rrset.name.to_text().startswith(node)
        for rd in rrset
    ]
    assert '"consul-network-segment="' in txt

    assert addresses(agent.udp("web.service.consul")) == ["127.0.0.1", "127.0.0.2"]
    assert addresses(agent.tcp("web.service.consul")) == ["127.0.0.1", "127.0.0.2"]
    assert srv_ports(agent.tcp("_web._tcp.service.consul", "SRV")) == [8001, 8002]
    assert srv_ports(agent.udp("_web._blue.service.dc1.consul", "SRV")) == [8002]
    assert addresses(agent.udp("blue.web.service.consul")) == ["127.0.0.2"]
    assert addresses(agent.udp(f"{node}.node.consul")) == ["127.0.0.1"]
    assert addresses(agent.udp("7f000001.addr.consul")) == ["127.0.0.1"]
    assert addresses(agent.udp("1.0.0.127.in-addr.arpa", "PTR")) == [f"{node}.node.dc1.consul."]

    # A failing TTL check takes its instance out of DNS (and /v1/health's passing view).
    assert agent.client.put("/v1/agent/check/fail/service:web-ttl").status == 200
    assert wait_for(lambda: srv_ports(agent.udp("web.service.consul", "SRV")) == [8002])
    assert addresses(agent.tcp("web.service.consul")) == ["127.0.0.2"]
    passing = agent.client.get("/v1/health/service/web?passing").json()
    assert [n["Service"]["ID"] for n in passing] == ["web-http"]
    # Warning counts as healthy (dns_config.only_passing is off).
    assert agent.client.put("/v1/agent/check/warn/service:web-ttl").status == 200
    assert wait_for(lambda: srv_ports(agent.udp("web.service.consul", "SRV")) == [8001, 8002])


def test_the_domain_apex_names_the_servers(agent: Agent) -> None:
    node = agent.client.get("/v1/agent/self").json()["Config"]["NodeName"]
    target = f"{node.lower()}.node.dc1.consul."
    msg = wait_for(lambda: (m := agent.udp("consul", "NS")).answer and m)
    assert addresses(msg) == [target]
    assert [rd.to_text() for rrset in msg.additional for rd in rrset] == ["127.0.0.1"]
    msg = agent.tcp("consul", "SOA")
    assert [rrset.rdtype for rrset in msg.answer] == [dns.rdatatype.SOA]
    assert [rd.to_text() for rrset in msg.authority for rd in rrset] == [target]


def test_unknown_and_foreign_names(agent: Agent) -> None:
    msg = agent.udp("nope.service.consul")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in msg.authority] == [dns.rdatatype.SOA]
    assert agent.tcp("nope.node.consul").rcode() == dns.rcode.NXDOMAIN
    assert agent.udp("example.com").rcode() == dns.rcode.REFUSED
    assert agent.tcp("example.com").rcode() == dns.rcode.REFUSED


def test_udp_limits_and_full_tcp_answers(agent: Agent) -> None:
    for i in range(40):
        register(
            agent,
            {
                "Name": "many",
                "ID": f"many-{i}",
                "Port": 9000 + i,
                "Address": f"10.77.{i // 200}.{i % 200 + 1}",
            },
        )
    assert wait_for(lambda: len(srv_ports(agent.tcp("many.service.consul", "SRV"))) == 40)
    # UDP without EDNS: Consul's udp_answer_limit (3).
    msg = agent.udp("many.service.consul")
    assert len(addresses(msg)) == 3
    assert len(srv_ports(agent.udp("many.service.consul", "SRV"))) == 3
    # Shuffled: several UDP answers do not always pick the same three.
    picks = {tuple(addresses(agent.udp("many.service.consul"))) for _ in range(10)}
    assert len(picks) > 1
    # EDNS 4096: as many as fit.
    msg = agent.udp("many.service.consul", "SRV", use_edns=0, payload=4096)
    assert len(srv_ports(msg)) == 40 and not msg.flags & dns.flags.TC
    # EDNS 1232: cut to the size with the TC bit; dnspython then retries over TCP.
    msg = agent.udp("many.service.consul", "SRV", use_edns=0, payload=1232)
    assert 3 < len(srv_ports(msg)) < 40 and msg.flags & dns.flags.TC
    q = dns.message.make_query("many.service.consul", "SRV", use_edns=0, payload=1232)
    full, used_tcp = dns.query.udp_with_fallback(q, "127.0.0.1", port=agent.dns_port, timeout=3)
    assert used_tcp and len(srv_ports(full)) == 40
    assert len(addresses(agent.tcp("many.service.consul"))) == 40


def test_several_queries_on_one_tcp_connection(agent: Agent) -> None:
    names = ["nope.service.consul", "example.com", "7f000001.addr.consul"]
    queries = [dns.message.make_query(name, "A") for name in names]
    with socket.create_connection(("127.0.0.1", agent.dns_port), timeout=3) as c:
        c.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)))
        replies = []
        buf = b""
        while len(replies) < len(queries):
            chunk = c.recv(65535)
            assert chunk
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                size = int.from_bytes(buf[:2], "big")
                replies.append(dns.message.from_wire(buf[2 : 2 + size]))
                buf = buf[2 + size :]
    assert [r.id for r in replies] == [q.id for q in queries]
    assert [r.rcode() for r in replies] == [
        dns.rcode.NXDOMAIN,
        dns.rcode.REFUSED,
        dns.rcode.NOERROR,
    ]


def test_garbage_does_not_harm_the_server(agent: Agent) -> None:
    rng = random.Random(5)
    valid = dns.message.make_query("web.service.consul", "SRV").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        for n in range(300):
            if n % 2:
                data = rng.randbytes(rng.randint(0, 700))
            else:
                buf = bytearray(valid)
                for _ in range(rng.randint(1, 4)):
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                data = bytes(buf)
            s.sendto(data, ("127.0.0.1", agent.dns_port))
        with contextlib.suppress(OSError):
            while True:
                s.recv(65535)
    for _ in range(20):  # TCP: garbage frames, oversized lengths, half frames
        with socket.create_connection(("127.0.0.1", agent.dns_port), timeout=3) as c:
            junk = rng.randbytes(rng.randint(1, 300))
            c.sendall(len(junk).to_bytes(2, "big") + junk if rng.random() < 0.7 else junk)
            c.shutdown(socket.SHUT_WR)
            c.settimeout(3)
            with contextlib.suppress(OSError):
                while c.recv(65535):
                    pass
    assert srv_ports(agent.udp("web.service.consul", "SRV"))
    assert srv_ports(agent.tcp("web.service.consul", "SRV"))
    assert agent.client.get("/v1/status/leader").status == 200


# --- DnsServer in-process: binding ---------------------------------------------------------


def _server(**config: Any) -> DnsServer:
    return DnsServer(ServerContext(RuntimeConfig(**config), ConsulFSM(), None))


@contextlib.contextmanager
def occupy_8600() -> Iterator[None]:
    """Hold UDP 127.0.0.1:8600 (or find it already held by someone else)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            s.bind(("127.0.0.1", 8600))
        yield
    finally:
        s.close()


async def test_dev_mode_falls_back_to_a_free_port_when_8600_is_taken() -> None:
    with occupy_8600():
        server = _server(dev=True, dns_port=8600)
        await server.start()
        try:
            assert server.port not in (-1, 8600)
            q = dns.message.make_query("nope.service.consul", "A")
            msg = await dns.asyncquery.udp(q, "127.0.0.1", port=server.port, timeout=3)
            assert msg.rcode() == dns.rcode.NXDOMAIN
            msg = await dns.asyncquery.tcp(q, "127.0.0.1", port=server.port, timeout=3)
            assert msg.rcode() == dns.rcode.NXDOMAIN
        finally:
            await server.stop()
        # Outside dev mode (or with the port asked for explicitly) a busy port is an error.
        for config in (
            {"dns_port": 8600},
            {"dev": True, "dns_port": 8600, "sources": {"ports.dns": "flag -dns-port"}},
        ):
            server = _server(**config)
            with pytest.raises(OSError) as info:
                await server.start()
            assert info.value.errno == errno.EADDRINUSE
            await server.stop()


async def test_port_minus_one_disables_dns() -> None:
    server = _server(dns_port=-1)
    await server.start()
    assert server.port == -1
    await server.stop()
