"""``RelayCatalog`` (a client agent's DNS catalog over server RPC) without sockets: a fake
server RPC answers the relayed GETs from a real store with the real endpoints' JSON
serializers, and the resolver over ``RelayCatalog`` must answer exactly as the resolver over
``StoreCatalog`` (the server's own) for the same questions. Plus fail-over between servers,
no servers (SERVFAIL), an unknown datacenter (NXDOMAIN) and the too-stale retry."""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import dns.message
import dns.rcode
import pytest

from proto import server_rpc_pb2 as pb
from server.agent.servers import ServerPool
from server.commands.types import MessageType
from server.config.runtime import RuntimeConfig
from server.dns.catalog import StoreCatalog
from server.dns.relay import RelayCatalog
from server.dns.resolver import DnsResolver, DnsSettings
from server.endpoints.context import ServerContext
from server.endpoints.health import check_service_node_api
from server.fsm import ConsulFSM, encode_command
from server.rpc.errors import NotSentError

QID = "aaaaaaaa-0000-0000-0000-000000000001"


class FakeServers:
    """The servers' side of ``ForwardHTTP``: GETs answered from one store with the JSON the
    real endpoints produce. ``down`` servers are unreachable (``NotSentError``)."""

    def __init__(self) -> None:
        self.fsm = ConsulFSM()
        self.index = 0
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.last_contact_ms = 0
        self.status_override: tuple[int, str] | None = None

    def apply(self, kind: MessageType, body: Any) -> Any:
        self.index += 1
        return self.fsm.apply(self.index, encode_command(kind, body))

    def service(self, node: str, address: str, name: str, sid: str, port: int, **kw: Any) -> None:
        status = kw.pop("status", "passing")
        body: dict[str, Any] = {
            "Node": node,
            "Address": address,
            "Service": {"Service": name, "ID": sid, "Port": port, **kw},
        }
        if status is not None:
            body["Check"] = {"CheckID": f"c-{sid}", "Name": "c", "Status": status, "ServiceID": sid}
        self.apply(MessageType.REGISTER, body)

    async def forward_http(
        self, address: str, request: pb.HttpRequest, timeout: float
    ) -> pb.HttpResponse:
        self.calls.append((address, request.path_qs))
        assert request.relay and request.method == "GET"
        if address in self.down:
            raise NotSentError("connection refused")
        if self.status_override is not None:
            status, text = self.status_override
            return pb.HttpResponse(status=status, body=text.encode())
        url = urlsplit(request.path_qs)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if query.get("dc", "dc1") != "dc1":
            return pb.HttpResponse(status=500, body=b"No path to datacenter")
        status, body = self._route(unquote(url.path), query)
        headers = [
            pb.Header(name="X-Consul-LastContact", value=str(self.last_contact_ms)),
            pb.Header(name="Content-Type", value="application/json"),
        ]
        return pb.HttpResponse(status=status, headers=headers, body=json.dumps(body).encode())

    def _route(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        catalog = self.fsm.store.catalog
        for kind in ("service", "connect"):
            prefix = f"/v1/health/{kind}/"
            if path.startswith(prefix):
                tag = query.get("tag")
                _, rows = catalog.check_service_nodes(
                    None,
                    path[len(prefix) :],
                    tags=[tag] if tag else None,
                    connect=kind == "connect",
                )
                return 200, [check_service_node_api(r) for r in rows]
        if path.startswith("/v1/catalog/node/"):
            _, found = catalog.node_services(None, path[len("/v1/catalog/node/") :])
            if found is None:
                return 200, None
            node, services = found
            return 200, {
                "Node": node.to_api(),
                "Services": {s.id: s.to_node_service() for s in services},
            }
        if path == "/v1/catalog/nodes":
            _, nodes = catalog.list_nodes(None)
            return 200, [n.to_api() for n in nodes]
        if path.startswith("/v1/query/") and path.endswith("/execute"):
            name = path[len("/v1/query/") : -len("/execute")]
            _, q = self.fsm.store.prepared_queries.resolve(None, name)
            if q is None:
                return 404, "Query not found"
            svc = q["Service"]
            _, rows = catalog.check_service_nodes(None, svc["Service"])
            nodes = [
                check_service_node_api(r)
                for r in rows
                if not svc.get("OnlyPassing") or all(c.status == "passing" for c in r[2])
            ]
            return 200, {"Service": svc["Service"], "Nodes": nodes, "DNS": q.get("DNS") or {}}
        return 404, None


def _ctx(servers: FakeServers, addresses: list[str], **dns_config: Any) -> ServerContext:
    config = RuntimeConfig(node_name="c1", dns_config=dns_config)
    ctx = ServerContext(config, None, None)
    pool = ServerPool("dc1", rng=random.Random(3))
    for i, address in enumerate(addresses):
        pool.update(f"s{i + 1}", address, "dc1", True)
    ctx.server_pool = pool
    ctx.leader_rpc = servers  # type: ignore[assignment]
    return ctx


def relay_resolver(servers: FakeServers, addresses: list[str], **dns_config: Any) -> DnsResolver:
    ctx = _ctx(servers, addresses, **dns_config)
    catalog = RelayCatalog.for_agent(ctx)
    catalog.total_timeout = 0.5
    return DnsResolver(
        DnsSettings.from_config(ctx.config), catalog, rng=random.Random(1), now=lambda: 1e9
    )


def store_resolver(servers: FakeServers, **dns_config: Any) -> DnsResolver:
    config = RuntimeConfig(node_name="s1", dns_config=dns_config)
    ctx = ServerContext(config, servers.fsm, None)
    return DnsResolver(
        DnsSettings.from_config(config), StoreCatalog(ctx), rng=random.Random(1), now=lambda: 1e9
    )


async def ask(resolver: DnsResolver, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    query.id = 4242
    wire = await resolver.handle_wire(query.to_wire(), "tcp")
    assert wire is not None
    return dns.message.from_wire(wire)


@pytest.fixture
def servers() -> FakeServers:
    s = FakeServers()
    s.service("n1", "10.0.0.1", "web", "web1", 8080, Tags=["v1"])
    s.service("n2", "10.0.0.2", "web", "web2", 8081, status="warning", Tags=["v2"])
    s.service("n3", "10.0.0.3", "web", "web3", 8082, status="critical", Tags=["v1"])
    s.service("n4", "10.0.0.4", "web", "web4", 8083, status=None, Address="192.168.1.4")
    s.service("n5", "2001:db8::5", "v6", "v6a", 9000, Weights={"Passing": 7, "Warning": 2})
    s.apply(MessageType.REGISTER, {"Node": "n6", "Address": "10.0.0.6", "NodeMeta": {"rack": "r1"}})
    s.apply(
        MessageType.PREPARED_QUERY,
        {
            "Op": "create",
            "Query": {
                "ID": QID,
                "Name": "pq",
                "Service": {"Service": "web", "OnlyPassing": True},
                "DNS": {"TTL": "7s"},
            },
        },
    )
    return s


QUESTIONS = [
    ("web.service.consul", "A"),
    ("web.service.consul", "SRV"),
    ("v1.web.service.consul", "SRV"),
    ("_web._v2.service.consul", "SRV"),
    ("web.service.dc1.consul", "ANY"),
    ("v6.service.consul", "AAAA"),
    ("v6.service.consul", "SRV"),
    ("nope.service.consul", "A"),
    ("n6.node.consul", "A"),
    ("n6.node.consul", "TXT"),
    ("n1.node.dc1.consul", "ANY"),
    ("missing.node.consul", "A"),
    ("1.0.0.10.in-addr.arpa", "PTR"),
    ("pq.query.consul", "SRV"),
    (f"{QID}.query.consul", "A"),
    ("unknown-query.query.consul", "A"),
]


@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS)
async def test_relay_answers_as_the_store(servers: FakeServers, name: str, rdtype: str) -> None:
    via_relay = await ask(relay_resolver(servers, ["127.0.0.1:1"]), name, rdtype)
    via_store = await ask(store_resolver(servers), name, rdtype)
    assert normalized(via_relay) == normalized(via_store)


def normalized(msg: dns.message.Message) -> tuple[Any, ...]:
    """The message with each section's records sorted (answers are shuffled)."""

    def section(rrsets: list[Any]) -> list[str]:
        return sorted(line for rrset in rrsets for line in rrset.to_text().splitlines())

    return (
        msg.rcode(),
        msg.flags,
        section(msg.answer),
        section(msg.authority),
        section(msg.additional),
    )


async def test_only_passing_instances_and_reads_are_stale(servers: FakeServers) -> None:
    msg = await ask(
        relay_resolver(servers, ["127.0.0.1:1"], only_passing=True), "web.service.consul"
    )
    assert sorted(rd.to_text() for rr in msg.answer for rd in rr) == ["10.0.0.1", "192.168.1.4"]
    assert all("stale" in path for _, path in servers.calls)


async def test_fails_over_to_the_next_server(servers: FakeServers) -> None:
    servers.down = {"127.0.0.1:1"}
    resolver = relay_resolver(servers, ["127.0.0.1:1", "127.0.0.1:2"])
    msg = await ask(resolver, "web.service.consul")
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer
    assert [a for a, _ in servers.calls] == ["127.0.0.1:1", "127.0.0.1:2"]
    servers.calls.clear()
    await ask(resolver, "web.service.consul")
    assert [a for a, _ in servers.calls] == ["127.0.0.1:2"]  # the failed one is no longer first


async def test_no_servers_is_servfail(servers: FakeServers) -> None:
    msg = await ask(relay_resolver(servers, []), "web.service.consul")
    assert msg.rcode() == dns.rcode.SERVFAIL
    servers.down = {"127.0.0.1:1"}
    msg = await ask(relay_resolver(servers, ["127.0.0.1:1"]), "web.service.consul")
    assert msg.rcode() == dns.rcode.SERVFAIL


async def test_no_leader_is_servfail(servers: FakeServers) -> None:
    servers.status_override = (500, "No cluster leader")
    msg = await ask(relay_resolver(servers, ["127.0.0.1:1"]), "pq.query.consul")
    assert msg.rcode() == dns.rcode.SERVFAIL


async def test_unknown_datacenter_is_nxdomain(servers: FakeServers) -> None:
    msg = await ask(relay_resolver(servers, ["127.0.0.1:1"]), "web.service.dc9.consul")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert servers.calls and "dc=dc9" in servers.calls[0][1]


async def test_too_stale_answer_is_read_again_consistently(servers: FakeServers) -> None:
    servers.last_contact_ms = 5000
    resolver = relay_resolver(servers, ["127.0.0.1:1"], max_stale="2s")
    msg = await ask(resolver, "web.service.consul")
    assert msg.answer
    paths = [p for _, p in servers.calls]
    assert len(paths) == 2 and "stale" in paths[0] and "stale" not in paths[1]


async def test_allow_stale_false_reads_consistently(servers: FakeServers) -> None:
    await ask(relay_resolver(servers, ["127.0.0.1:1"], allow_stale=False), "web.service.consul")
    assert servers.calls and all("stale" not in p for _, p in servers.calls)
