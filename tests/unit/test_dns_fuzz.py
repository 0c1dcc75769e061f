"""Bounded fuzzing of the DNS resolver's wire entry point: random bytes and random mutations
of valid queries never raise, never answer a response, always produce a reply that parses
and fits the transport, and leave the resolver answering normally afterwards."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.rcode
import pytest

from server.commands.types import MessageType
from server.config.runtime import RuntimeConfig
from server.dns.catalog import StoreCatalog
from server.dns.resolver import DnsResolver, DnsSettings
from server.endpoints.context import ServerContext
from server.fsm import ConsulFSM, encode_command

SEEDS = range(3)
ROUNDS = 2000

NAMES = [
    ("web.service.consul", "A"),
    ("web.service.consul", "SRV"),
    ("_web._tcp.service.dc1.consul", "SRV"),
    ("v1.web.service.consul", "ANY"),
    ("n1.node.consul", "TXT"),
    ("0a000001.addr.consul", "A"),
    ("1.0.0.10.in-addr.arpa", "PTR"),
    ("webq.query.consul", "A"),
    ("consul", "SOA"),
    ("example.com", "A"),
]


def resolver(seed: int) -> DnsResolver:
    fsm = ConsulFSM()
    for i in range(12):
        body = {
            "Node": f"n{i}",
            "Address": f"10.0.0.{i + 1}",
            "NodeMeta": {"k": "v" * i},
            "Service": {"Service": "web", "ID": f"web{i}", "Port": 80 + i, "Tags": ["v1"]},
            "Check": {"CheckID": f"c{i}", "Name": "c", "Status": "passing", "ServiceID": f"web{i}"},
        }
        fsm.apply(i + 1, encode_command(MessageType.REGISTER, body))
    config = RuntimeConfig()
    catalog = StoreCatalog(ServerContext(config, fsm, None))
    return DnsResolver(DnsSettings.from_config(config), catalog, rng=random.Random(seed))


def valid_queries(rng: random.Random) -> list[bytes]:
    out = []
    for name, rdtype in NAMES:
        q = dns.message.make_query(name, rdtype, use_edns=rng.choice([None, 0]))
        out.append(q.to_wire())
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # set a byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # truncate
            del buf[rng.randrange(len(buf) + 1) :]
        elif op == 3:  # insert junk
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif buf:  # duplicate a slice (compression pointers and counts go astray)
            i = rng.randrange(len(buf))
            buf += buf[i : i + rng.randint(1, 32)]
    return bytes(buf)


def check_reply(request: bytes, reply: bytes | None, transport: str) -> None:
    if reply is None:
        return
    assert len(reply) >= 12
    assert reply[:2] == request[:2]  # the query's ID
    assert reply[2] & 0x80  # QR: a response
    msg = dns.message.from_wire(reply) if (reply[2] >> 3) & 0x0F == 0 else None
    if transport == "udp":
        limit = 512
        try:
            query = dns.message.from_wire(request)
            if query.edns >= 0:
                limit = max(512, query.payload)
        except Exception:
            pass
        assert len(reply) <= limit
    if msg is not None:
        assert msg.rcode() in (
            dns.rcode.NOERROR,
            dns.rcode.NXDOMAIN,
            dns.rcode.REFUSED,
            dns.rcode.FORMERR,
            dns.rcode.SERVFAIL,
            dns.rcode.NOTIMP,
        )


@pytest.mark.parametrize("seed", SEEDS)
async def test_fuzz(seed: int) -> None:
    rng = random.Random(seed)
    r = resolver(seed)
    bases = valid_queries(rng)
    for n in range(ROUNDS):
        if n % 4 == 0:
            data = rng.randbytes(rng.randint(0, 600))
        else:
            data = mutate(rng, rng.choice(bases))
        transport = rng.choice(["udp", "tcp"])
        reply = await r.handle_wire(data, transport)
        check_reply(data, reply, transport)
    assert r.stats["errors"] == 0, r.stats
    # Still healthy: a valid query gets its full answer.
    q = dns.message.make_query("web.service.consul", "SRV")
    wire = await r.handle_wire(q.to_wire(), "tcp")
    assert wire is not None
    msg = dns.message.from_wire(wire)
    assert msg.rcode() == dns.rcode.NOERROR and len(msg.answer[0]) == 12
    assert not msg.flags & dns.flags.TC
