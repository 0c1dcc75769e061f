"""Parsing a question's name into what it asks for (Consul's ``dns.go`` dispatch).

Pure and synchronous. Under the agent's ``domain`` (or ``alt_domain``), the labels are read
from the right: an optional datacenter (``<dc>`` or ``<dc>.dc``), then the lookup type, then
what the type needs::

    <service>.service[.<dc>]          <tag>.<service>.service[.<dc>]
    <service>.connect[.<dc>]          (Connect proxies and native instances)
    _<service>._<tag|tcp>.service[.<dc>]                          (RFC 2782)
    <node>.node[.<dc>]                <query>.query[.<dc>]
    <8 or 32 hex digits>.addr[.<dc>]  <dotted IPv4>.addr[.<dc>]
    in-addr.arpa / ip6.arpa names     (PTR)

A name under the domain that fits none of these is ``Invalid`` (NXDOMAIN); a name outside
every domain we serve is ``Foreign`` (REFUSED until recursors exist).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.name
import dns.reversename

__all__ = [
    "Addr",
    "Apex",
    "Foreign",
    "Invalid",
    "NodeLookup",
    "Parsed",
    "Ptr",
    "QueryLookup",
    "ServiceLookup",
    "parse_name",
]


@dataclass(frozen=True, slots=True)
class ServiceLookup:
    service: str
    tag: str | None
    datacenter: str
    rfc2782: bool = False
    connect: bool = False  # ``<service>.connect``: its Connect proxies and native instances


@dataclass(frozen=True, slots=True)
class NodeLookup:
    node: str
    datacenter: str


@dataclass(frozen=True, slots=True)
class QueryLookup:
    query: str
    datacenter: str


@dataclass(frozen=True, slots=True)
class Addr:
    address: str  # an IPv4 or IPv6 address in text form


@dataclass(frozen=True, slots=True)
class Ptr:
    address: str


@dataclass(frozen=True, slots=True)
class Apex:
    """The domain itself."""


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


@dataclass(frozen=True, slots=True)
class Foreign:
    """Not a name we are authoritative for."""


Parsed = ServiceLookup | NodeLookup | QueryLookup | Addr | Ptr | Apex | Invalid | Foreign

_ARPA = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))
_TYPES = ("service", "connect", "node", "query", "addr")


def _text(label: bytes) -> str:
    return label.decode("ascii", "replace")


def parse_name(
    qname: dns.name.Name, domains: Sequence[dns.name.Name], local_dc: str
) -> tuple[Parsed, dns.name.Name | None]:
    """What ``qname`` asks for, and the domain it fell under (None when none)."""
    for arpa in _ARPA:
        if qname.is_subdomain(arpa) and qname != arpa:
            try:
                return Ptr(dns.reversename.to_address(qname)), None
            except Exception:  # malformed reverse name: not one we can answer
                return Foreign(), None
    domain = next((d for d in domains if qname.is_subdomain(d)), None)
    if domain is None:
        return Foreign(), None
    if qname == domain:
        return Apex(), domain
    rel = qname.relativize(domain)
    labels = [_text(label) for label in rel.labels]
    return _parse_labels(labels, local_dc), domain


def _parse_labels(labels: list[str], local_dc: str) -> Parsed:
    lowered = [label.lower() for label in labels]
    # Find the type label, scanning from the right; what follows it is the datacenter.
    for i in range(len(labels) - 1, -1, -1):
        if lowered[i] in _TYPES:
            kind = lowered[i]
            suffix = labels[i + 1 :]
            break
    else:
        return Invalid("no lookup type")
    if len(suffix) == 0:
        datacenter = local_dc
    elif len(suffix) == 1 or (len(suffix) == 2 and suffix[1].lower() == "dc"):
        datacenter = suffix[0]
    else:
        return Invalid("too many labels after the lookup type")
    head = labels[:i]
    if not head:
        return Invalid(f"nothing before .{kind}")
    if kind == "service":
        if len(head) == 2 and head[0].startswith("_") and head[1].startswith("_"):
            tag = head[1][1:]
            if tag.lower() == "tcp":
                tag = ""
            if not head[0][1:]:
                return Invalid("empty RFC 2782 service")
            return ServiceLookup(head[0][1:], tag or None, datacenter, rfc2782=True)
        tag = ".".join(head[:-1])
        return ServiceLookup(head[-1], tag or None, datacenter)
    if kind == "connect":
        if len(head) != 1:
            return Invalid("tags are not supported in .connect lookups")
        return ServiceLookup(head[0], None, datacenter, connect=True)
    if kind == "node":
        return NodeLookup(".".join(head), datacenter)
    if kind == "query":
        return QueryLookup(".".join(head), datacenter)
    # addr
    address = _parse_addr(head)
    if address is None:
        return Invalid("bad address")
    return Addr(address)


def _parse_addr(head: list[str]) -> str | None:
    if len(head) == 1:
        text = head[0]
        if len(text) in (8, 32):
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                return None
            return str(ipaddress.ip_address(raw))
    try:
        return str(ipaddress.IPv4Address(".".join(head)))
    except ValueError:
        return None
