"""Answering DNS questions: wire bytes in, wire bytes (or nothing) out.

``DnsResolver.handle_wire`` is the whole DNS behaviour without sockets: parse (garbage is
dropped: ``None``), dispatch on the question's name (``server.dns.names``), read the catalog
through ``DnsCatalog``, then render with Consul's size rules (``_render``):

* UDP answers fit 512 bytes, or the EDNS payload size the query advertised; without EDNS at
  most ``udp_answer_limit`` records (3) are returned. Records cut for size set the TC bit;
  records cut only by ``udp_answer_limit`` set it only with ``enable_truncate`` (Consul's
  rule). TCP answers are complete (up to 65,535 bytes).
* Service instances: critical ones never, warning ones unless ``only_passing``; shuffled.
* Unknown names under the domain: NXDOMAIN with the SOA in the authority section; a name
  that exists without records of the type asked: NOERROR with the SOA.
* Names outside the domain: REFUSED (no recursors yet).
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

from server.dns.catalog import (
    CatalogUnavailable,
    DnsCatalog,
    DnsInstance,
    DnsNode,
    NoPathToDatacenter,
)
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
from server.state.sessions import parse_duration

__all__ = ["DnsResolver", "DnsSettings"]

UDP_MIN_SIZE = 512
TCP_MAX_SIZE = 65535
IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
ANY = dns.rdatatype.ANY
CNAME = dns.rdatatype.CNAME
SRV = dns.rdatatype.SRV
TXT = dns.rdatatype.TXT
PTR = dns.rdatatype.PTR
SOA = dns.rdatatype.SOA
NS = dns.rdatatype.NS

Record = tuple[dns.name.Name, int, dns.rdata.Rdata]

# dnspython's rdata constructors are untyped; these aliases keep strict mypy quiet.
_A: Any = dns.rdtypes.IN.A.A
_AAAA: Any = dns.rdtypes.IN.AAAA.AAAA
_SRV: Any = dns.rdtypes.IN.SRV.SRV
_CNAME: Any = dns.rdtypes.ANY.CNAME.CNAME
_PTR: Any = dns.rdtypes.ANY.PTR.PTR
_SOA: Any = dns.rdtypes.ANY.SOA.SOA
_TXT: Any = dns.rdtypes.ANY.TXT.TXT
_NS: Any = dns.rdtypes.ANY.NS.NS


def _seconds(value: Any, default: float = 0.0) -> float:
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float(value)
    return parse_duration(str(value)) / 1e9


def _fqdn(text: str) -> dns.name.Name:
    text = text.strip()
    if not text.endswith("."):
        text += "."
    return dns.name.from_text(text)


@dataclass(frozen=True)
class DnsSettings:
    """The DNS part of the agent's configuration (``domain``, ``alt_domain`` and
    ``dns_config``), with Consul's defaults."""

    datacenter: str = "dc1"
    domain: dns.name.Name = field(default_factory=lambda: dns.name.from_text("consul."))
    alt_domain: dns.name.Name | None = None
    allow_stale: bool = True
    max_stale: float = 87600 * 3600.0  # Consul: 10 years
    node_ttl: float = 0.0
    service_ttl: Mapping[str, float] = field(default_factory=dict)
    only_passing: bool = False
    enable_truncate: bool = False
    udp_answer_limit: int = 3
    a_record_limit: int = 0
    enable_additional_node_meta_txt: bool = True
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    soa_min_ttl: int = 0

    @classmethod
    def from_config(cls, config: Any) -> DnsSettings:
        dc: Mapping[str, Any] = config.dns_config or {}
        soa: Mapping[str, Any] = dc.get("soa") or {}
        alt = str(config.alt_domain or "")
        return cls(
            datacenter=config.datacenter,
            domain=_fqdn(config.domain or "consul."),
            alt_domain=_fqdn(alt) if alt.strip(" .") else None,
            allow_stale=bool(dc.get("allow_stale", True)),
            max_stale=_seconds(dc.get("max_stale"), 87600 * 3600.0),
            node_ttl=_seconds(dc.get("node_ttl")),
            service_ttl={
                str(k).lower(): _seconds(v) for k, v in (dc.get("service_ttl") or {}).items()
            },
            only_passing=bool(dc.get("only_passing", False)),
            enable_truncate=bool(dc.get("enable_truncate", False)),
            udp_answer_limit=int(dc.get("udp_answer_limit", 3)),
            a_record_limit=int(dc.get("a_record_limit", 0)),
            enable_additional_node_meta_txt=bool(dc.get("enable_additional_node_meta_txt", True)),
            soa_refresh=int(soa.get("refresh", 3600)),
            soa_retry=int(soa.get("retry", 600)),
            soa_expire=int(soa.get("expire", 86400)),
            soa_min_ttl=int(soa.get("min_ttl", 0)),
        )

    @property
    def domains(self) -> tuple[dns.name.Name, ...]:
        return (self.domain,) if self.alt_domain is None else (self.domain, self.alt_domain)

    def ttl_for_service(self, service: str) -> int:
        """``service_ttl``: the exact name, else the longest matching ``prefix*``, else
        ``*``, else 0."""
        name = service.lower()
        table = self.service_ttl
        if name in table:
            return int(table[name])
        best: tuple[int, float] | None = None
        for key, value in table.items():
            matches = key.endswith("*") and name.startswith(key[:-1])
            if matches and (best is None or len(key) > best[0]):
                best = (len(key), value)
        return int(best[1]) if best is not None else 0


@dataclass
class _Answer:
    """An answer before rendering: each answer record carries the additional records that
    belong to it (an SRV target's address), so trimming answers trims those too."""

    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    answers: list[tuple[Record, list[Record]]] = field(default_factory=list)
    soa: bool = False  # the SOA in the authority section
    authority: list[Record] = field(default_factory=list)  # NS records (apex SOA answers)
    additional: list[Record] = field(default_factory=list)  # their glue
    domain: dns.name.Name | None = None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _healthy(statuses: Sequence[str], only_passing: bool) -> bool:
    for status in statuses:
        if status == "passing":
            continue
        if status == "warning" and not only_passing:
            continue
        return False
    return True


class DnsResolver:
    def __init__(
        self,
        settings: DnsSettings,
        catalog: DnsCatalog,
        *,
        rng: random.Random | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.rng = rng or random.Random()
        self.now = now
        #: Counters: queries answered, datagrams/frames dropped as garbage, errors.
        self.stats = {"answered": 0, "dropped": 0, "errors": 0}

    # --- entry point --------------------------------------------------------------------

    async def handle_wire(self, data: bytes, transport: str) -> bytes | None:
        """The reply to one query (``transport`` is "udp" or "tcp"), None to drop it."""
        if len(data) >= 12 and not data[2] & 0x80 and (data[2] >> 3) & 0x0F:
            # Another opcode than QUERY (UPDATE, NOTIFY...): NOTIMP from the header alone,
            # as their sections need not parse as a query's.
            self.stats["answered"] += 1
            flags = 0x8000 | (data[2] & 0x78) << 8 | dns.rcode.NOTIMP
            return data[:2] + flags.to_bytes(2, "big") + bytes(8)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            self.stats["dropped"] += 1
            return None
        if query.flags & dns.flags.QR:
            self.stats["dropped"] += 1  # a response, not a query: never answer it
            return None
        try:
            wire = await self.resolve(query, transport)
        except Exception:
            self.stats["errors"] += 1
            try:
                return self._bare(query, dns.rcode.SERVFAIL)
            except Exception:
                return None
        self.stats["answered"] += 1
        return wire

    def _bare(self, query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
        response = dns.message.make_response(query)
        response.question = response.question[:1]
        response.set_rcode(rcode)
        return bytes(response.to_wire(max_size=TCP_MAX_SIZE))

    async def resolve(self, query: dns.message.Message, transport: str) -> bytes:
        if query.opcode() != dns.opcode.QUERY:
            return self._bare(query, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            return self._bare(query, dns.rcode.FORMERR)
        question = query.question[0]
        if question.rdclass not in (IN, dns.rdataclass.ANY):
            return self._bare(query, dns.rcode.REFUSED)
        parsed, domain = parse_name(question.name, self.settings.domains, self.settings.datacenter)
        answer = await self._answer(parsed, question.name, question.rdtype, domain)
        if answer.rcode == dns.rcode.REFUSED:
            return self._bare(query, dns.rcode.REFUSED)
        return self._render(query, answer, transport)

    # --- lookups ------------------------------------------------------------------------

    async def _answer(
        self, parsed: Parsed, qname: dns.name.Name, qtype: int, domain: dns.name.Name | None
    ) -> _Answer:
        s = self.settings
        out = _Answer(domain=domain)
        try:
            if isinstance(parsed, Foreign):
                out.rcode = dns.rcode.REFUSED
            elif isinstance(parsed, Invalid):
                out.rcode, out.soa = dns.rcode.NXDOMAIN, True
            elif isinstance(parsed, Apex):
                assert domain is not None
                ns, glue = await self._nameservers(domain)
                if qtype in (SOA, ANY):
                    out.answers.append(((domain, s.soa_min_ttl, self._soa(domain)), []))
                if qtype in (NS, ANY):
                    out.answers.extend((rec, []) for rec in ns)
                    out.additional.extend(glue)
                elif qtype == SOA:
                    out.authority.extend(ns)
                    out.additional.extend(glue)
            elif isinstance(parsed, ServiceLookup):
                assert domain is not None
                instances = await self.catalog.service_instances(
                    parsed.datacenter, parsed.service, parsed.tag, connect=parsed.connect
                )
                instances = [i for i in instances if _healthy(i.statuses, s.only_passing)]
                ttl = s.ttl_for_service(parsed.service)
                self._instances(out, instances, qname, qtype, ttl, parsed.datacenter, domain)
            elif isinstance(parsed, QueryLookup):
                assert domain is not None
                result = await self.catalog.prepared_query(parsed.datacenter, parsed.query)
                if result is None:
                    out.rcode, out.soa = dns.rcode.NXDOMAIN, True
                else:
                    ttl = (
                        int(result.ttl)
                        if result.ttl is not None
                        else s.ttl_for_service(result.service)
                    )
                    dc = parsed.datacenter
                    self._instances(out, list(result.instances), qname, qtype, ttl, dc, domain)
            elif isinstance(parsed, NodeLookup):
                node = await self.catalog.node(parsed.datacenter, parsed.node)
                if node is None:
                    out.rcode, out.soa = dns.rcode.NXDOMAIN, True
                else:
                    self._node(out, node, qname, qtype)
            elif isinstance(parsed, Addr):
                ip = ipaddress.ip_address(parsed.address)
                for rec in self._address_records(qname, 0, str(ip), qtype):
                    out.answers.append((rec, []))
            elif isinstance(parsed, Ptr):
                nodes = await self.catalog.nodes_by_address(parsed.address)
                if not nodes:
                    out.rcode = dns.rcode.REFUSED  # not ours: a recursor's job
                elif qtype in (PTR, ANY):
                    ttl = int(s.node_ttl)
                    for node in nodes:
                        target = self._node_name(node.name, node.datacenter, s.domain)
                        if target is not None:
                            rdata = _PTR(IN, PTR, target)
                            out.answers.append(((qname, ttl, rdata), []))
        except NoPathToDatacenter:
            out.rcode, out.soa, out.answers = dns.rcode.NXDOMAIN, True, []
        except CatalogUnavailable:
            out.rcode, out.answers = dns.rcode.SERVFAIL, []
        if out.rcode == dns.rcode.NOERROR and not out.answers:
            out.soa = True  # NODATA: the SOA says how long to cache the absence
        return out

    def _instances(
        self,
        out: _Answer,
        instances: list[DnsInstance],
        qname: dns.name.Name,
        qtype: int,
        ttl: int,
        datacenter: str,
        domain: dns.name.Name,
    ) -> None:
        if not instances:
            out.rcode, out.soa = dns.rcode.NXDOMAIN, True
            return
        self.rng.shuffle(instances)
        if qtype == SRV:
            for inst in instances:
                self._srv(out, inst, qname, ttl, datacenter, domain)
            return
        records: list[Record] = []
        cname: Record | None = None
        for inst in instances:
            address = inst.address or inst.node.address
            if _ip(address) is None:
                if cname is None and qtype in (A, AAAA, ANY, CNAME):
                    cname = self._cname(qname, ttl, address)
                continue
            records.extend(self._address_records(qname, ttl, address, qtype))
        if not records and cname is not None:
            records.append(cname)
        limit = self.settings.a_record_limit
        if limit > 0:
            records = records[:limit]
        out.answers.extend((rec, []) for rec in records)

    def _srv(
        self,
        out: _Answer,
        inst: DnsInstance,
        qname: dns.name.Name,
        ttl: int,
        datacenter: str,
        domain: dns.name.Name,
    ) -> None:
        node = inst.node
        extras: list[Record] = []
        if not inst.address or inst.address == node.address:
            target = self._node_name(node.name, datacenter, domain)
            if target is None:
                return
            extras = self._target_records(target, ttl, node.address)
            if self.settings.enable_additional_node_meta_txt:
                extras += self._meta_txt(target, ttl, node)
        elif (ip := _ip(inst.address)) is not None:
            label = ip.packed.hex()
            target = dns.name.Name((label.encode(), b"addr", *self._dc_domain(datacenter, domain)))
            extras = self._address_records(target, ttl, inst.address, ANY)
        else:
            try:
                target = _fqdn(inst.address)
            except Exception:
                return
        healthy = all(st == "passing" for st in inst.statuses)
        weight = inst.weights[0] if healthy else inst.weights[1]
        rdata = _SRV(IN, SRV, 1, max(0, min(weight, 65535)), max(0, min(inst.port, 65535)), target)
        out.answers.append(((qname, ttl, rdata), extras))

    def _node(self, out: _Answer, node: DnsNode, qname: dns.name.Name, qtype: int) -> None:
        ttl = int(self.settings.node_ttl)
        records: list[Record] = []
        if _ip(node.address) is None:
            if node.address and qtype in (A, AAAA, ANY, CNAME):
                records.append(self._cname(qname, ttl, node.address))
        else:
            records.extend(self._address_records(qname, ttl, node.address, qtype))
        meta = self._meta_txt(qname, ttl, node)
        if qtype in (TXT, ANY):
            records.extend(meta)  # Consul: the node's meta answers TXT and ANY questions
            meta = []
        elif not self.settings.enable_additional_node_meta_txt:
            meta = []
        for i, rec in enumerate(records):
            out.answers.append((rec, meta if i == 0 else []))

    async def _nameservers(self, domain: dns.name.Name) -> tuple[list[Record], list[Record]]:
        """NS records for the domain, from up to three healthy servers (the ``consul``
        service), with their addresses as glue (Consul's ``nameservers``)."""
        dc = self.settings.datacenter
        try:
            servers = await self.catalog.service_instances(dc, "consul", None)
        except (NoPathToDatacenter, CatalogUnavailable):
            return [], []
        servers = [i for i in servers if _healthy(i.statuses, self.settings.only_passing)]
        self.rng.shuffle(servers)
        ttl = int(self.settings.node_ttl)
        ns: list[Record] = []
        glue: list[Record] = []
        for inst in servers:
            target = self._node_name(inst.node.name.lower(), dc, domain)
            if target is None:
                continue
            ns.append((domain, ttl, _NS(IN, NS, target)))
            glue.extend(self._target_records(target, ttl, inst.node.address))
            if len(ns) >= 3:
                break
        return ns, glue

    @staticmethod
    def _meta_txt(name: dns.name.Name, ttl: int, node: DnsNode) -> list[Record]:
        """The node's meta as TXT records: ``key=value`` with Consul's escaping (a backtick
        doubles, ``=`` in a key becomes `` `= ``), or the bare value of ``rfc1035-`` keys."""
        out: list[Record] = []
        for key, value in node.meta:
            if key.lower().startswith("rfc1035-"):
                text = value
            else:
                k = key.replace("`", "``").replace("=", "`=")
                text = f"{k}={value.replace('`', '``')}"
            chunks = [text.encode()[i : i + 255] for i in range(0, max(len(text.encode()), 1), 255)]
            out.append((name, ttl, _TXT(IN, TXT, chunks)))
        return out

    # --- records ------------------------------------------------------------------------

    def _dc_domain(self, datacenter: str, domain: dns.name.Name) -> tuple[bytes, ...]:
        return (datacenter.encode(), *domain.labels)

    def _node_name(self, node: str, datacenter: str, domain: dns.name.Name) -> dns.name.Name | None:
        try:
            rel = dns.name.from_text(f"{node}.node.{datacenter}", origin=None)
            return rel.concatenate(domain)
        except Exception:  # a node name that is no DNS name
            return None

    @staticmethod
    def _address_records(name: dns.name.Name, ttl: int, address: str, qtype: int) -> list[Record]:
        ip = _ip(address)
        if isinstance(ip, ipaddress.IPv4Address) and qtype in (A, ANY):
            return [(name, ttl, _A(IN, A, str(ip)))]
        if isinstance(ip, ipaddress.IPv6Address) and qtype in (AAAA, ANY):
            return [(name, ttl, _AAAA(IN, AAAA, str(ip)))]
        return []

    def _target_records(self, target: dns.name.Name, ttl: int, address: str) -> list[Record]:
        if _ip(address) is not None:
            return self._address_records(target, ttl, address, ANY)
        if address:
            return [self._cname(target, ttl, address)]
        return []

    @staticmethod
    def _cname(name: dns.name.Name, ttl: int, hostname: str) -> Record:
        return (name, ttl, _CNAME(IN, CNAME, _fqdn(hostname)))

    def _soa(self, domain: dns.name.Name) -> dns.rdata.Rdata:
        s = self.settings
        rdata: dns.rdata.Rdata = _SOA(
            IN,
            SOA,
            dns.name.Name((b"ns", *domain.labels)),
            dns.name.Name((b"hostmaster", *domain.labels)),
            int(self.now()) & 0xFFFFFFFF,
            s.soa_refresh,
            s.soa_retry,
            s.soa_expire,
            s.soa_min_ttl,
        )
        return rdata

    # --- rendering ----------------------------------------------------------------------

    def _render(self, query: dns.message.Message, answer: _Answer, transport: str) -> bytes:
        udp = transport != "tcp"
        max_size = TCP_MAX_SIZE
        if udp:
            max_size = UDP_MIN_SIZE
            if query.edns >= 0:
                max_size = max(UDP_MIN_SIZE, min(query.payload, TCP_MAX_SIZE))
        count = len(answer.answers)
        limited = False
        if udp and max_size == UDP_MIN_SIZE and 0 < self.settings.udp_answer_limit < count:
            count = self.settings.udp_answer_limit
            limited = True
        wire = self._build(query, answer, count)
        cut = False
        if wire is None or len(wire) > max_size:
            # The largest number of answers that fits (binary search; sizes grow with it).
            lo, hi = 0, count - 1
            best = self._build(query, answer, 0)
            while lo <= hi:
                mid = (lo + hi) // 2
                candidate = self._build(query, answer, mid)
                if candidate is not None and len(candidate) <= max_size:
                    best, lo = candidate, mid + 1
                else:
                    hi = mid - 1
            if best is None:
                return self._bare(query, dns.rcode.SERVFAIL)
            wire, cut = best, True
        if cut or (limited and self.settings.enable_truncate):
            flags = int.from_bytes(wire[2:4], "big") | dns.flags.TC
            wire = wire[:2] + flags.to_bytes(2, "big") + wire[4:]
        return wire

    def _build(self, query: dns.message.Message, answer: _Answer, count: int) -> bytes | None:
        """The response with the first ``count`` answers, None when over 65,535 bytes."""
        response = dns.message.make_response(query, our_payload=4096)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        response.set_rcode(answer.rcode)
        for (name, ttl, rdata), extras in answer.answers[:count]:
            self._add(response, response.answer, name, ttl, rdata)
            for ename, ettl, erdata in extras:
                self._add(response, response.additional, ename, ettl, erdata)
        for name, ttl, rdata in answer.authority:
            self._add(response, response.authority, name, ttl, rdata)
        for name, ttl, rdata in answer.additional:
            self._add(response, response.additional, name, ttl, rdata)
        if answer.soa:
            domain = answer.domain or self.settings.domain
            self._add(
                response,
                response.authority,
                domain,
                self.settings.soa_min_ttl,
                self._soa(domain),
            )
        try:
            return bytes(response.to_wire(max_size=TCP_MAX_SIZE))
        except dns.exception.TooBig:
            return None

    @staticmethod
    def _add(
        response: dns.message.Message,
        section: list[dns.rrset.RRset],
        name: dns.name.Name,
        ttl: int,
        rdata: dns.rdata.Rdata,
    ) -> None:
        rrset = response.find_rrset(section, name, IN, rdata.rdtype, create=True)
        rrset.add(rdata, ttl)
