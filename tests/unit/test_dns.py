"""The DNS resolver (server/dns/resolver.py) answering from a state store filled through the
catalog commands, read through ``StoreCatalog``: service, tag, RFC 2782, node, addr, query
and PTR lookups; Consul's health rules; TTLs; NXDOMAIN/NODATA with the SOA; REFUSED for
foreign names; UDP truncation and full TCP answers; bad input. No sockets."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from server.commands.types import MessageType
from server.config.runtime import RuntimeConfig
from server.dns.catalog import StoreCatalog
from server.dns.resolver import DnsResolver, DnsSettings
from server.endpoints.context import ServerContext
from server.endpoints.query import decode_query, validate_query
from server.fsm import ConsulFSM, encode_command

QID = "aaaaaaaa-0000-0000-0000-000000000001"


class Cluster:
    """A store filled through Raft commands, and resolvers over it."""

    def __init__(self) -> None:
        self.fsm = ConsulFSM()
        self.index = 0

    def apply(self, kind: MessageType, body: Any) -> Any:
        self.index += 1
        return self.fsm.apply(self.index, encode_command(kind, body))

    def node(self, name: str, address: str, **extra: Any) -> None:
        self.apply(MessageType.REGISTER, {"Node": name, "Address": address, **extra})

    def service(
        self,
        node: str,
        address: str,
        name: str,
        sid: str,
        port: int,
        status: str | None = "passing",
        **svc: Any,
    ) -> None:
        body: dict[str, Any] = {
            "Node": node,
            "Address": address,
            "Service": {"Service": name, "ID": sid, "Port": port, **svc},
        }
        if status is not None:
            body["Check"] = {
                "CheckID": f"check-{sid}",
                "Name": "c",
                "Status": status,
                "ServiceID": sid,
            }
        self.apply(MessageType.REGISTER, body)

    def resolver(self, seed: int = 1, **dns_config: Any) -> DnsResolver:
        config = RuntimeConfig(
            dns_config=dns_config.pop("dns_config", dns_config),
            alt_domain=dns_config.pop("alt_domain", ""),
        )
        ctx = ServerContext(config, self.fsm, None)
        settings = DnsSettings.from_config(config)
        catalog = StoreCatalog(ctx, allow_stale=settings.allow_stale)
        return DnsResolver(settings, catalog, rng=random.Random(seed), now=lambda: 1_700_000_000)


async def ask(
    resolver: DnsResolver,
    name: str,
    rdtype: str = "A",
    transport: str = "udp",
    **kw: Any,
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)
    wire = await resolver.handle_wire(query.to_wire(), transport)
    assert wire is not None
    if transport == "udp":
        limit = max(512, query.payload) if query.edns >= 0 else 512
        assert len(wire) <= limit
    return dns.message.from_wire(wire)


def values(msg: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(rd.to_text() for rrset in getattr(msg, section) for rd in rrset)


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster()
    c.service("n1", "10.0.0.1", "web", "web1", 8080, tags=["v1", "primary"])
    c.service("n2", "10.0.0.2", "web", "web2", 8081, status="warning", tags=["v2"])
    c.service("n3", "10.0.0.3", "web", "web3", 8082, status="critical", tags=["v1"])
    c.service("n4", "10.0.0.4", "web", "web4", 8083, status=None, Address="192.168.1.4")
    c.service("n5", "2001:db8::5", "v6", "v6a", 9000)
    c.node("n6", "10.0.0.6", NodeMeta={"rack": "r1", "flag": ""})
    return c


async def test_service_a_records_exclude_critical_and_include_warning(cluster: Cluster) -> None:
    msg = await ask(cluster.resolver(), "web.service.consul")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA and msg.flags & dns.flags.QR
    assert values(msg) == ["10.0.0.1", "10.0.0.2", "192.168.1.4"]
    msg = await ask(cluster.resolver(only_passing=True), "web.service.consul")
    assert values(msg) == ["10.0.0.1", "192.168.1.4"]


async def test_a_node_check_critical_removes_its_instances(cluster: Cluster) -> None:
    cluster.apply(
        MessageType.REGISTER,
        {
            "Node": "n1",
            "Address": "10.0.0.1",
            "Check": {"CheckID": "serfHealth", "Name": "Serf", "Status": "critical"},
        },
    )
    assert values(await ask(cluster.resolver(), "web.service.consul")) == [
        "10.0.0.2",
        "192.168.1.4",
    ]


async def test_srv_targets_and_additional_addresses(cluster: Cluster) -> None:
    msg = await ask(cluster.resolver(), "web.service.consul", "SRV", transport="tcp")
    assert values(msg) == [
        "1 1 8080 n1.node.dc1.consul.",
        "1 1 8081 n2.node.dc1.consul.",
        "1 1 8083 c0a80104.addr.dc1.consul.",
    ]
    extra = {
        rrset.name.to_text(): values_of(rrset)
        for rrset in msg.additional
        if rrset.rdtype != dns.rdatatype.TXT
    }
    assert extra == {
        "n1.node.dc1.consul.": ["10.0.0.1"],
        "n2.node.dc1.consul.": ["10.0.0.2"],
        "c0a80104.addr.dc1.consul.": ["192.168.1.4"],
    }


def values_of(rrset: Any) -> list[str]:
    return sorted(rd.to_text() for rd in rrset)


async def test_srv_weights_follow_the_health(cluster: Cluster) -> None:
    cluster.service("n7", "10.0.0.7", "api", "api1", 1, Weights={"Passing": 10, "Warning": 2})
    cluster.service(
        "n8", "10.0.0.8", "api", "api2", 2, status="warning", Weights={"Passing": 10, "Warning": 2}
    )
    msg = await ask(cluster.resolver(), "api.service.consul", "SRV")
    assert values(msg) == ["1 10 1 n7.node.dc1.consul.", "1 2 2 n8.node.dc1.consul."]


async def test_connect_lookups(cluster: Cluster) -> None:
    cluster.service("n1", "10.0.0.1", "db", "db1", 5432)
    cluster.service(
        "n1",
        "10.0.0.1",
        "db-sidecar-proxy",
        "db1-proxy",
        21000,
        Kind="connect-proxy",
        Proxy={"DestinationServiceName": "db"},
    )
    cluster.service("n2", "10.0.0.2", "db", "db2", 5433, Connect={"Native": True})
    msg = await ask(cluster.resolver(), "db.connect.consul", "SRV")
    assert values(msg) == ["1 1 21000 n1.node.dc1.consul.", "1 1 5433 n2.node.dc1.consul."]
    msg = await ask(cluster.resolver(), "web.connect.consul")
    assert msg.rcode() == dns.rcode.NXDOMAIN


async def test_tags_and_rfc2782(cluster: Cluster) -> None:
    r = cluster.resolver()
    assert values(await ask(r, "v1.web.service.consul")) == ["10.0.0.1"]  # web3 is critical
    assert values(await ask(r, "V2.web.service.consul")) == ["10.0.0.2"]
    msg = await ask(r, "_web._v1.service.consul", "SRV")
    assert values(msg) == ["1 1 8080 n1.node.dc1.consul."]
    msg = await ask(r, "_web._tcp.service.consul", "SRV")
    assert len(values(msg)) == 3
    msg = await ask(r, "nope.web.service.consul")
    assert msg.rcode() == dns.rcode.NXDOMAIN


async def test_ipv6_instances_answer_aaaa_and_nodata_for_a(cluster: Cluster) -> None:
    r = cluster.resolver()
    assert values(await ask(r, "v6.service.consul", "AAAA")) == ["2001:db8::5"]
    msg = await ask(r, "v6.service.consul", "A")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
    assert [rrset.rdtype for rrset in msg.authority] == [dns.rdatatype.SOA]
    msg = await ask(r, "v6.service.consul", "ANY")
    assert values(msg) == ["2001:db8::5"]
    msg = await ask(r, "v6.service.consul", "SRV")
    assert values(msg, "additional") == ["2001:db8::5"]


async def test_unknown_names_are_nxdomain_with_the_soa(cluster: Cluster) -> None:
    r = cluster.resolver()
    for name in (
        "nope.service.consul",
        "nope.node.consul",
        "nope.query.consul",
        "bogus.consul",
        "web.service.dc9.consul",  # no path to that datacenter
        "web.service.too.many.labels.consul",
    ):
        msg = await ask(r, name)
        assert msg.rcode() == dns.rcode.NXDOMAIN, name
        assert not msg.answer
        (soa,) = msg.authority
        assert soa.name == dns.name.from_text("consul.")
        assert soa[0].to_text() == "ns.consul. hostmaster.consul. 1700000000 3600 600 86400 0"


async def test_a_service_with_only_critical_instances_is_nxdomain(cluster: Cluster) -> None:
    cluster.service("n9", "10.0.0.9", "down", "down1", 1, status="critical")
    msg = await ask(cluster.resolver(), "down.service.consul")
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority


async def test_foreign_names_are_refused(cluster: Cluster) -> None:
    msg = await ask(cluster.resolver(), "example.com")
    assert msg.rcode() == dns.rcode.REFUSED and not msg.answer and not msg.authority
    msg = await ask(cluster.resolver(), "9.9.9.9.in-addr.arpa", "PTR")
    assert msg.rcode() == dns.rcode.REFUSED


async def test_nodes(cluster: Cluster) -> None:
    r = cluster.resolver(node_ttl="30s")
    msg = await ask(r, "n6.node.consul")
    assert values(msg) == ["10.0.0.6"]
    assert msg.answer[0].ttl == 30
    assert values(await ask(r, "n6.node.dc1.consul")) == ["10.0.0.6"]
    assert values(await ask(r, "n6.node.consul", "TXT")) == ['"flag="', '"rack=r1"']
    assert values(await ask(r, "n6.node.consul", "ANY")) == ['"flag="', '"rack=r1"', "10.0.0.6"]
    # With A questions the meta goes to the additional section (unless turned off).
    assert values(await ask(r, "n6.node.consul"), "additional") == ['"flag="', '"rack=r1"']
    off = cluster.resolver(enable_additional_node_meta_txt=False)
    assert values(await ask(off, "n6.node.consul"), "additional") == []
    assert values(await ask(off, "n6.node.consul", "TXT")) == ['"flag="', '"rack=r1"']
    msg = await ask(r, "n6.node.consul", "AAAA")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer and msg.authority
    assert values(await ask(r, "n5.node.consul", "AAAA")) == ["2001:db8::5"]


async def test_addr_and_ptr(cluster: Cluster) -> None:
    r = cluster.resolver()
    assert values(await ask(r, "0a000001.addr.consul")) == ["10.0.0.1"]
    assert values(await ask(r, "10.0.0.1.addr.dc1.consul")) == ["10.0.0.1"]
    v6 = "20010db8000000000000000000000005.addr.consul"
    assert values(await ask(r, v6, "AAAA")) == ["2001:db8::5"]
    assert values(await ask(r, "1.0.0.10.in-addr.arpa", "PTR")) == ["n1.node.dc1.consul."]
    rev = dns.reversename.from_address("2001:db8::5").to_text()
    assert values(await ask(r, rev, "PTR")) == ["n5.node.dc1.consul."]


async def test_apex(cluster: Cluster) -> None:
    r = cluster.resolver()
    msg = await ask(r, "consul", "SOA")
    assert [rrset.rdtype for rrset in msg.answer] == [dns.rdatatype.SOA]
    assert not msg.authority  # no servers registered yet
    msg = await ask(r, "consul", "A")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer and msg.authority
    # Servers are the instances of the `consul` service: up to three, with glue.
    for i in range(4):
        cluster.service(f"Srv{i}", f"10.9.0.{i}", "consul", "consul", 8300)
    cluster.service("srv-bad", "10.9.0.9", "consul", "consul", 8300, status="critical")
    msg = await ask(r, "consul", "NS")
    names = values(msg)
    assert len(names) == 3 and all(n.startswith("srv") for n in names)
    assert "srv-bad.node.dc1.consul." not in names
    assert len(values(msg, "additional")) == 3
    msg = await ask(r, "consul", "SOA")
    assert len(values(msg, "authority")) == 3 and len(values(msg, "additional")) == 3


async def test_alt_domain(cluster: Cluster) -> None:
    r = cluster.resolver(alt_domain="example.internal")
    msg = await ask(r, "web.service.example.internal", "SRV", transport="tcp")
    assert "1 1 8080 n1.node.dc1.example.internal." in values(msg)
    assert values(await ask(r, "web.service.consul")) == ["10.0.0.1", "10.0.0.2", "192.168.1.4"]
    msg = await ask(r, "nope.service.example.internal")
    assert msg.authority[0].name == dns.name.from_text("example.internal.")


async def test_service_ttls(cluster: Cluster) -> None:
    r = cluster.resolver(service_ttl={"*": "5s", "we*": "7s", "web": "11s"})
    assert (await ask(r, "web.service.consul")).answer[0].ttl == 11
    cluster.service("n1", "10.0.0.1", "webby", "webby1", 1)
    cluster.service("n1", "10.0.0.1", "db", "db1", 1)
    assert (await ask(r, "webby.service.consul")).answer[0].ttl == 7
    assert (await ask(r, "db.service.consul")).answer[0].ttl == 5
    assert (await ask(cluster.resolver(), "db.service.consul")).answer[0].ttl == 0


async def test_answers_are_shuffled() -> None:
    c = Cluster()
    for i in range(8):
        c.service(f"n{i}", f"10.0.1.{i}", "many", f"m{i}", 1000 + i)
    r = c.resolver(seed=7)
    orders = set()
    for _ in range(10):
        msg = await ask(r, "many.service.consul", "SRV", transport="tcp")
        orders.add(tuple(rd.port for rd in msg.answer[0]))
    assert len(orders) > 1


async def test_prepared_queries(cluster: Cluster) -> None:
    query = decode_query(
        {"Name": "webq", "Service": {"Service": "web", "OnlyPassing": True}, "DNS": {"TTL": "9s"}}
    )
    query["ID"] = QID
    validate_query(query)
    cluster.apply(MessageType.PREPARED_QUERY, {"Op": "create", "Query": query})
    r = cluster.resolver()
    msg = await ask(r, "webq.query.consul")
    assert values(msg) == ["10.0.0.1", "192.168.1.4"]
    assert msg.answer[0].ttl == 9
    msg = await ask(r, f"{QID}.query.consul", "SRV", transport="tcp")
    assert len(values(msg)) == 2
    assert (await ask(r, "other.query.consul")).rcode() == dns.rcode.NXDOMAIN


def big_cluster(n: int) -> Cluster:
    c = Cluster()
    for i in range(n):
        c.service(
            f"node-with-a-longish-name-{i:03d}", f"10.1.{i // 250}.{i % 250}", "big", f"b{i}", i
        )
    return c


async def test_udp_answer_limit_without_edns() -> None:
    c = big_cluster(20)
    msg = await ask(c.resolver(), "big.service.consul")
    assert len(values(msg)) == 3
    assert not msg.flags & dns.flags.TC  # Consul: only with enable_truncate
    msg = await ask(c.resolver(enable_truncate=True), "big.service.consul")
    assert len(values(msg)) == 3 and msg.flags & dns.flags.TC
    msg = await ask(c.resolver(udp_answer_limit=5), "big.service.consul")
    assert len(values(msg)) == 5
    # With EDNS the answer limit does not apply: as many as fit.
    msg = await ask(c.resolver(), "big.service.consul", use_edns=0, payload=4096)
    assert len(values(msg)) == 20 and not msg.flags & dns.flags.TC
    # TCP: everything.
    msg = await ask(c.resolver(), "big.service.consul", transport="tcp")
    assert len(values(msg)) == 20


async def test_udp_answers_over_512_bytes_are_cut_with_tc() -> None:
    c = big_cluster(60)
    r = c.resolver(udp_answer_limit=0)
    msg = await ask(r, "big.service.consul", "SRV")
    got = len(values(msg))
    assert 0 < got < 60
    assert msg.flags & dns.flags.TC
    # Each SRV kept has its target's address.
    assert len(values(msg, "additional")) == got
    msg = await ask(r, "big.service.consul", "SRV", use_edns=0, payload=1232)
    assert got < len(values(msg)) < 60 and msg.flags & dns.flags.TC
    msg = await ask(r, "big.service.consul", "SRV", transport="tcp")
    assert len(values(msg)) == 60 and not msg.flags & dns.flags.TC
    assert len(values(msg, "additional")) == 60


async def test_tcp_answers_are_capped_at_64k() -> None:
    c = big_cluster(1500)
    msg = await ask(c.resolver(), "big.service.consul", "SRV", transport="tcp")
    assert 0 < len(values(msg)) < 1500


async def test_a_record_limit(cluster: Cluster) -> None:
    msg = await ask(cluster.resolver(a_record_limit=1), "web.service.consul", transport="tcp")
    assert len(values(msg)) == 1


async def test_edns_queries_get_edns_answers(cluster: Cluster) -> None:
    msg = await ask(cluster.resolver(), "web.service.consul", use_edns=0, payload=1232)
    assert msg.edns == 0


async def test_garbage_and_odd_messages() -> None:
    r = Cluster().resolver()
    assert await r.handle_wire(b"", "udp") is None
    assert await r.handle_wire(b"\x00" * 5, "udp") is None
    assert await r.handle_wire(b"\xff" * 40, "tcp") is None
    # A response is never answered (no reflection loops).
    reply = dns.message.make_response(dns.message.make_query("web.service.consul", "A"))
    assert await r.handle_wire(reply.to_wire(), "udp") is None
    # Opcodes other than QUERY: NOTIMP; no question: FORMERR.
    update = dns.message.make_query("web.service.consul", "A")
    update.set_opcode(dns.opcode.UPDATE)
    wire = await r.handle_wire(update.to_wire(), "udp")
    assert wire is not None
    answer = dns.message.from_wire(wire)
    assert answer.rcode() == dns.rcode.NOTIMP and answer.id == update.id
    assert answer.opcode() == dns.opcode.UPDATE and answer.flags & dns.flags.QR
    empty = dns.message.Message()
    wire = await r.handle_wire(empty.to_wire(), "udp")
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.FORMERR
    assert r.stats["dropped"] == 4, r.stats


async def test_consistent_reads_without_a_leader_are_servfail(cluster: Cluster) -> None:
    msg = await ask(cluster.resolver(allow_stale=False), "web.service.consul")
    assert msg.rcode() == dns.rcode.SERVFAIL


def test_settings_from_config() -> None:
    config = RuntimeConfig(
        domain="corp",
        alt_domain="alt.example.",
        dns_config={
            "allow_stale": False,
            "max_stale": "30s",
            "node_ttl": "1m",
            "service_ttl": {"*": "10s"},
            "only_passing": True,
            "enable_truncate": True,
            "udp_answer_limit": 5,
            "soa": {"min_ttl": 60},
        },
    )
    s = DnsSettings.from_config(config)
    assert s.domains == (dns.name.from_text("corp."), dns.name.from_text("alt.example."))
    assert (s.allow_stale, s.max_stale, s.node_ttl) == (False, 30.0, 60.0)
    assert s.ttl_for_service("anything") == 10
    assert (s.only_passing, s.enable_truncate, s.udp_answer_limit, s.soa_min_ttl) == (
        True,
        True,
        5,
        60,
    )
    defaults = DnsSettings.from_config(RuntimeConfig())
    assert defaults == dataclasses.replace(defaults, udp_answer_limit=3, allow_stale=True)
    assert defaults.domains == (dns.name.from_text("consul."),)


class _Core:
    election_elapsed = 0


class _Timing:
    tick_seconds = 0.1


class _Raft:
    def __init__(self, leader: bool, leader_id: str | None, elapsed: int) -> None:
        self.is_leader = leader
        self.leader_id = leader_id
        self.core = _Core()
        self.core.election_elapsed = elapsed
        self.timing = _Timing()


class _Ctx:
    """What StoreCatalog uses of a ServerContext, with barriers counted."""

    def __init__(self, fsm: ConsulFSM, raft: _Raft) -> None:
        self.config = RuntimeConfig()
        self.raft = raft
        self.store = fsm.store
        self.barriers = 0

    async def barrier(self, opts: Any) -> str:
        self.barriers += 1
        return "leader"


async def test_stale_reads_and_max_stale(cluster: Cluster) -> None:
    # A follower that heard from the leader 2 s ago: stale reads while max_stale allows.
    ctx = _Ctx(cluster.fsm, _Raft(False, "leader-id", 20))
    catalog = StoreCatalog(ctx, allow_stale=True, max_stale=5.0)  # type: ignore[arg-type]
    assert catalog.last_contact() == pytest.approx(2.0)
    assert len(await catalog.service_instances("dc1", "web", None)) == 4
    assert ctx.barriers == 0
    catalog.max_stale = 1.0  # too stale: a consistent read first
    assert len(await catalog.service_instances("", "web", None)) == 4
    assert ctx.barriers == 1
    # No known leader: infinitely stale.
    ctx.raft = _Raft(False, None, 0)
    assert catalog.last_contact() == float("inf")
    # allow_stale off: always a consistent read; on the leader last contact is 0.
    ctx.raft = _Raft(True, "me", 0)
    assert catalog.last_contact() == 0.0
    catalog = StoreCatalog(ctx, allow_stale=False)  # type: ignore[arg-type]
    assert await catalog.node("dc1", "n1") is not None
    assert ctx.barriers == 2
