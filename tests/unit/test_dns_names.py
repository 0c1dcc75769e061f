"""Question names -> lookups (server/dns/names.py): Consul's dispatch on the type label,
datacenters, RFC 2782, tags with dots, addr in hex and dotted form, PTR names, domains."""

from __future__ import annotations

import dns.name
import pytest

from server.dns.names import (
    Addr,
    Apex,
    Foreign,
    Invalid,
    NodeLookup,
    Parsed,
    Ptr,
    QueryLookup,
    ServiceLookup,
    parse_name,
)

CONSUL = dns.name.from_text("consul.")
ALT = dns.name.from_text("example.internal.")


def parse(text: str) -> Parsed:
    return parse_name(dns.name.from_text(text), (CONSUL, ALT), "dc1")[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web.service.consul.", ServiceLookup("web", None, "dc1")),
        ("WEB.Service.CONSUL.", ServiceLookup("WEB", None, "dc1")),
        ("web.service.dc2.consul.", ServiceLookup("web", None, "dc2")),
        ("web.service.dc2.dc.consul.", ServiceLookup("web", None, "dc2")),
        ("v1.web.service.consul.", ServiceLookup("web", "v1", "dc1")),
        ("a.b.web.service.consul.", ServiceLookup("web", "a.b", "dc1")),
        ("_web._tcp.service.consul.", ServiceLookup("web", None, "dc1", rfc2782=True)),
        ("_web._v1.service.dc1.consul.", ServiceLookup("web", "v1", "dc1", rfc2782=True)),
        ("web.service.example.internal.", ServiceLookup("web", None, "dc1")),
        ("db.connect.consul.", ServiceLookup("db", None, "dc1", connect=True)),
        ("db.connect.dc2.consul.", ServiceLookup("db", None, "dc2", connect=True)),
        ("n1.node.consul.", NodeLookup("n1", "dc1")),
        ("n1.node.dc3.consul.", NodeLookup("n1", "dc3")),
        ("my.host.node.consul.", NodeLookup("my.host", "dc1")),
        ("q1.query.consul.", QueryLookup("q1", "dc1")),
        ("7f000001.addr.consul.", Addr("127.0.0.1")),
        ("7F000001.addr.dc1.consul.", Addr("127.0.0.1")),
        ("10.1.2.3.addr.consul.", Addr("10.1.2.3")),
        ("20010db8000000000000000000000001.addr.consul.", Addr("2001:db8::1")),
        ("1.0.0.127.in-addr.arpa.", Ptr("127.0.0.1")),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
            Ptr("2001:db8::1"),
        ),
        ("consul.", Apex()),
        ("example.com.", Foreign()),
        ("consul.example.com.", Foreign()),
        ("in-addr.arpa.", Foreign()),
        ("x.in-addr.arpa.", Foreign()),
    ],
)
def test_names(name: str, expected: Parsed) -> None:
    assert parse(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "foo.consul.",
        "service.consul.",
        "node.consul.",
        "query.consul.",
        "addr.consul.",
        "web.service.a.b.c.consul.",
        "v1.db.connect.consul.",
        "xyz.addr.consul.",
        "7f0000.addr.consul.",
        "1.2.3.addr.consul.",
        "_._tcp.service.consul.",
    ],
)
def test_invalid_names_under_the_domain(name: str) -> None:
    assert isinstance(parse(name), Invalid)


def test_the_matched_domain_is_returned() -> None:
    assert parse_name(dns.name.from_text("web.service.consul."), (CONSUL, ALT), "dc1")[1] == CONSUL
    got = parse_name(dns.name.from_text("web.service.example.internal."), (CONSUL, ALT), "dc1")
    assert got[1] == ALT
    assert parse_name(dns.name.from_text("example.com."), (CONSUL,), "dc1")[1] is None
