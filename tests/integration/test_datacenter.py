"""A whole datacenter of real processes on 127.0.0.1: 3 servers and 3 client agents (issue 5,
first acceptance point).

* c1 registers ``web`` (an HTTP check against a tiny HTTP server run by this test, whose answer
  the test switches between 200 and 500) and ``api`` (a TTL check) from a JSON config file, and
  ``cache`` through the agent API; c2 registers another ``web`` with a passing check, c3 one
  with a critical check.
* DNS (dnspython, UDP) on c1 (a client: its answers come from the servers over server RPC) and
  on s1: ``web.service.consul SRV`` lists only the passing instances (c1's and c2's).
* c1's web check failing removes that instance from DNS and from
  ``/v1/health/service/web?passing`` within one check interval plus the sync
  (``CHECK_BOUND``); passing again brings it back.
* c1 killed with SIGKILL: ``serfHealth`` turns critical on every server within the gossip
  bound (``GOSSIP_BOUND``, derived below from the LAN gossip settings), and its instances leave
  the passing results.
* c1 restarted from its data dir: its config services, the API-registered ``cache`` (saved in
  ``<data_dir>/services``) and its checks are back in the catalog without any re-registration.
* ``/v1/agent/members`` on every agent lists all six, with their roles, alive.

Measured times are printed (``pytest -s``) and asserted against the stated bounds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest
from aiohttp import web
from helpers.cluster import (
    ServerProc,
    free_ports,
    get_json,
    make_servers,
    proconsul,
    wait_for_leader,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: The HTTP check's interval and timeout on c1.
CHECK_INTERVAL = 1.0
CHECK_TIMEOUT = 1.0
#: A status change is synced at once (one Raft write relayed to a server) and the DNS and
#: health reads are stale reads on a server: one interval, one check timeout and 2 s for the
#: sync, the replication to the server read and this test's 0.1 s polling.
CHECK_BOUND = CHECK_INTERVAL + CHECK_TIMEOUT + 2.0

#: The LAN gossip defaults (``gossip.config.GossipConfig``: memberlist's DefaultLANConfig):
#: every member probes one member per ``PROBE_INTERVAL``, round-robin over the others, so the
#: dead node is probed within (N - 1) intervals (+ the probe timeout and indirect probes);
#: the suspicion then lasts at most ``SUSPICION_MAX_MULT * SUSPICION_MULT * max(1, log10 N) *
#: PROBE_INTERVAL`` (Lifeguard shortens it towards the minimum with each independent
#: confirmation); then the failure spreads by gossip and the leader's reconcile writes
#: ``serfHealth`` critical through Raft (2 s allowed for both).
N_MEMBERS = 6
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 0.5
SUSPICION_MULT = 4
SUSPICION_MAX_MULT = 6
GOSSIP_BOUND = (
    (N_MEMBERS - 1) * PROBE_INTERVAL
    + PROBE_TIMEOUT
    + SUSPICION_MAX_MULT * SUSPICION_MULT * 1.0 * PROBE_INTERVAL
    + 2.0
)

#: Service ports (all agents share 127.0.0.1: SRV records tell the instances apart by port).
WEB_C1, WEB_C2, WEB_C3, API_C1, CACHE_C1 = 8001, 8002, 8003, 9001, 6379


class Backend:
    """The tiny HTTP server c1's web check probes; ``status`` is what it answers."""

    def __init__(self) -> None:
        self.status = 200
        self.port = 0
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def health(_: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(status=self.status, text=f"status {self.status}")

        app = web.Application()
        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Datacenter:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.servers = make_servers(tmp_path, 3)
        ports = free_ports(1 + 3 * 3 + 1)
        self.server_dns = ports[0]
        s1 = self.servers[0]
        s1.args = [a if a != "-dns-port=-1" else f"-dns-port={self.server_dns}" for a in s1.args]
        self.backend = Backend()
        self.backend.port = ports[-1]
        self.dns: dict[str, int] = {}
        self.clients: list[ServerProc] = []
        c1_config = tmp_path / "c1-services.json"
        c1_config.write_text(
            json.dumps(
                {
                    "services": [
                        {
                            "name": "web",
                            "port": WEB_C1,
                            "tags": ["v1"],
                            "check": {
                                "id": "web-http",
                                "name": "web HTTP",
                                "http": f"http://127.0.0.1:{self.backend.port}/health",
                                "interval": f"{CHECK_INTERVAL:g}s",
                                "timeout": f"{CHECK_TIMEOUT:g}s",
                            },
                        },
                        {
                            "name": "api",
                            "port": API_C1,
                            "check": {"id": "api-ttl", "name": "api TTL", "ttl": "5m"},
                        },
                    ]
                }
            )
        )
        for i in range(3):
            http, serf, dns_port = ports[1 + 3 * i : 4 + 3 * i]
            name = f"c{i + 1}"
            client = ServerProc(
                name, http, 0, serf, tmp_path / name, tmp_path / f"{name}.log", args=[]
            )
            self.dns[name] = dns_port
            client.args = [
                *proconsul(),
                "agent",
                f"-node={name}",
                f"-data-dir={client.data_dir}",
                "-bind=127.0.0.1",
                "-client=127.0.0.1",
                f"-http-port={http}",
                f"-serf-lan-port={serf}",
                f"-dns-port={dns_port}",
                *([f"-config-file={c1_config}"] if name == "c1" else []),
                *(f"-retry-join=127.0.0.1:{s.serf}" for s in self.servers),
            ]
            self.clients.append(client)

    @property
    def everyone(self) -> list[ServerProc]:
        return [*self.servers, *self.clients]

    def stop(self) -> None:
        for p in self.everyone:
            p.terminate()
        for p in self.everyone:
            p.kill()


@pytest.fixture
def datacenter(tmp_path: Path) -> Iterator[Datacenter]:
    dc = Datacenter(tmp_path)
    try:
        yield dc
    finally:
        dc.stop()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, poll: float = 0.1
) -> float:
    """Poll ``check`` until it returns something true; the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            last = exc
        if last is True or (last and not isinstance(last, Exception)):
            return time.monotonic() - start
        await asyncio.sleep(poll)
    raise AssertionError(
        f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r}; seen: {SEEN})"
    )


#: What the last polls observed (for the failure message).
SEEN: dict[str, Any] = {}


async def srv_ports(port: int, name: str = "web.service.consul") -> list[int]:
    """The SRV answer's ports from the DNS server on 127.0.0.1:``port`` (UDP), sorted."""
    query = dns.message.make_query(name, dns.rdatatype.SRV)
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2.0)
    return sorted(rd.port for rrset in reply.answer for rd in rrset)


async def srv_targets(port: int, name: str) -> list[str]:
    query = dns.message.make_query(name, dns.rdatatype.SRV)
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2.0)
    return sorted(rd.target.to_text() for rrset in reply.answer for rd in rrset)


async def put(session: aiohttp.ClientSession, url: str, body: Any = None) -> None:
    data = None if body is None else json.dumps(body)
    async with session.put(url, data=data, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200, f"PUT {url}: {resp.status} {await resp.text()}"


async def passing_nodes(session: aiohttp.ClientSession, base: str, service: str) -> list[str]:
    url = f"{base}/v1/health/service/{service}?passing&stale"
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=4)) as resp:
        if resp.status != 200:
            raise ValueError(f"GET {url}: {resp.status} {await resp.text()}")
        rows = await resp.json()
    return sorted(r["Node"]["Node"] for r in rows)


async def scenario(dc: Datacenter) -> dict[str, float]:
    measured: dict[str, float] = {}
    servers, clients = dc.servers, dc.clients
    c1, c2, c3 = clients
    s1 = servers[0]
    await dc.backend.start()
    for p in dc.everyone:
        p.start()
    async with aiohttp.ClientSession() as session:
        await wait_for_leader(session, servers, 60)

        async def all_alive_in_catalog() -> bool:
            for s in servers:
                checks = await get_json(session, s.base + "/v1/health/state/any?stale")
                alive = {
                    c["Node"]
                    for c in checks or []
                    if c["CheckID"] == "serfHealth" and c["Status"] == "passing"
                }
                if alive != {"s1", "s2", "s3", "c1", "c2", "c3"}:
                    return False
            return True

        await eventually(all_alive_in_catalog, 60, "all six agents passing serfHealth")

        # The services: c1's web and api come from its config file; the rest through the API.
        await put(
            session,
            c1.base + "/v1/agent/service/register",
            {"Name": "cache", "Port": CACHE_C1, "Check": {"TTL": "10m", "Status": "passing"}},
        )
        await put(
            session,
            c2.base + "/v1/agent/service/register",
            {"Name": "web", "Port": WEB_C2, "Check": {"TTL": "10m", "Status": "passing"}},
        )
        await put(
            session,
            c3.base + "/v1/agent/service/register",
            {"Name": "web", "Port": WEB_C3, "Check": {"TTL": "10m", "Status": "critical"}},
        )
        # The applications' heartbeats (TTL checks; the last status set through these
        # endpoints is what a restarted agent restores, as Consul's checks/state files).
        await put(session, c1.base + "/v1/agent/check/pass/api-ttl?note=ready")
        await put(session, c1.base + "/v1/agent/check/pass/service:cache?note=ready")

        both = [WEB_C1, WEB_C2]

        async def web_on_c1_and_c2() -> bool:
            return (
                await srv_ports(dc.dns["c1"]) == both
                and await srv_ports(dc.server_dns) == both
                and await passing_nodes(session, s1.base, "web") == ["c1", "c2"]
            )

        await eventually(web_on_c1_and_c2, 30, "web passing on c1 and c2 (DNS and health)")

        async def same_everywhere() -> bool:
            # Every client's DNS and every agent's API give the same answer (stale reads on
            # the servers: allow them to catch up).
            for name in ("c2", "c3"):
                if await srv_ports(dc.dns[name]) != both:
                    return False
            for p in dc.everyone:
                if await passing_nodes(session, p.base, "web") != ["c1", "c2"]:
                    return False
            c1_node = ["c1.node.dc1.consul."]
            return (
                await srv_targets(dc.dns["c1"], "api.service.consul") == c1_node
                and await srv_targets(dc.dns["c1"], "cache.service.consul") == c1_node
            )

        await eventually(same_everywhere, 10, "the same answers from every agent")
        # Node lookups through a client's DNS too.
        reply = await dns.asyncquery.udp(
            dns.message.make_query("c2.node.consul", "A"), "127.0.0.1", port=dc.dns["c1"]
        )
        assert [rd.to_text() for rr in reply.answer for rd in rr] == ["127.0.0.1"]

        # c1's web check fails: gone from DNS and from ?passing within one interval + sync.
        dc.backend.status = 500
        flipped = time.monotonic()

        async def c1_web_gone() -> bool:
            return (
                await srv_ports(dc.dns["c1"]) == [WEB_C2]
                and await srv_ports(dc.server_dns) == [WEB_C2]
                and await passing_nodes(session, c1.base, "web") == ["c2"]
                and await passing_nodes(session, s1.base, "web") == ["c2"]
            )

        await eventually(c1_web_gone, 20, "c1's failing web instance to leave DNS and ?passing")
        measured["check_fail_to_gone"] = time.monotonic() - flipped
        agent_checks = await get_json(session, c1.base + "/v1/agent/checks")
        assert agent_checks["web-http"]["Status"] == "critical"
        assert "500" in agent_checks["web-http"]["Output"]

        dc.backend.status = 200
        flipped = time.monotonic()

        async def c1_web_back() -> bool:
            return await srv_ports(dc.dns["c1"]) == both

        await eventually(c1_web_back, 20, "c1's web instance back in DNS")
        measured["check_pass_to_back"] = time.monotonic() - flipped

        # SIGKILL c1: serfHealth critical on every server within the gossip bound.
        c1.kill()
        killed = time.monotonic()
        pending = {s.name for s in servers}

        async def critical_everywhere() -> bool:
            for s in servers:
                if s.name not in pending:
                    continue
                checks = await get_json(session, s.base + "/v1/health/node/c1?stale")
                if any(
                    c["CheckID"] == "serfHealth" and c["Status"] == "critical" for c in checks or []
                ):
                    pending.discard(s.name)
                    measured[f"serf_critical_on_{s.name}"] = time.monotonic() - killed
            return not pending

        await eventually(critical_everywhere, GOSSIP_BOUND + 30, "c1's serfHealth critical")
        measured["serf_critical_everywhere"] = time.monotonic() - killed
        for s in servers:
            assert await passing_nodes(session, s.base, "web") == ["c2"], s.name
            assert await passing_nodes(session, s.base, "api") == [], s.name
            assert await passing_nodes(session, s.base, "cache") == [], s.name
        assert await srv_ports(dc.server_dns) == [WEB_C2]
        assert await srv_ports(dc.dns["c2"]) == [WEB_C2]

        # Restart c1 from its data dir: everything comes back, nothing registered again.
        files = sorted(p.name for p in (c1.data_dir / "services").iterdir())
        assert len(files) == 1, files  # cache only: web and api come from the config file
        c1.start()
        restarted = time.monotonic()

        async def c1_restored() -> bool:
            services = await get_json(session, c1.base + "/v1/agent/services")
            SEEN["c1 services"] = sorted(services or {})
            SEEN["c1 checks"] = {
                k: v["Status"]
                for k, v in (await get_json(session, c1.base + "/v1/agent/checks") or {}).items()
            }
            for name in ("web", "api", "cache"):
                SEEN[name] = await passing_nodes(session, s1.base, name)
            SEEN["dns c1"] = await srv_ports(dc.dns["c1"])
            SEEN["dns s1"] = await srv_ports(dc.server_dns)
            return SEEN["c1 services"] == ["api", "cache", "web"] and (
                SEEN["web"] == ["c1", "c2"]
                and SEEN["api"] == ["c1"]
                and SEEN["cache"] == ["c1"]
                and SEEN["dns c1"] == both
                and SEEN["dns s1"] == both
            )

        await eventually(c1_restored, 60, "c1 restored from its data dir")
        measured["restart_to_restored"] = time.monotonic() - restarted
        cache = (await get_json(session, c1.base + "/v1/agent/services"))["cache"]
        assert cache["Port"] == CACHE_C1
        node = await get_json(session, s1.base + "/v1/catalog/node/c1")
        assert set(node["Services"]) == {"web", "api", "cache"}

        # Members, from every agent: all six, their roles, alive.
        want = {f"s{i}": "consul" for i in (1, 2, 3)} | {f"c{i}": "node" for i in (1, 2, 3)}

        async def members_everywhere() -> bool:
            for p in dc.everyone:
                members = await get_json(session, p.base + "/v1/agent/members")
                roles = {m["Name"]: m["Tags"].get("role") for m in members or []}
                if roles != want or any(m["Status"] != 1 for m in members):
                    return False
            return True

        await eventually(members_everywhere, 30, "all six members alive on every agent")

        # The CLI's `members` against a client agent: six rows, each with its type.
        cli = await asyncio.create_subprocess_exec(
            *proconsul(),
            "members",
            f"-http-addr=127.0.0.1:{c2.http}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 0, err
        rows = [line.split() for line in out.decode().splitlines()[1:] if line.strip()]
        types = {row[0]: row[3] for row in rows}
        assert types == {f"s{i}": "server" for i in (1, 2, 3)} | {
            f"c{i}": "client" for i in (1, 2, 3)
        }, out.decode()
        assert all(row[2] == "alive" for row in rows)
    await dc.backend.stop()
    return measured


def test_datacenter_with_client_agents(datacenter: Datacenter) -> None:
    try:
        measured = asyncio.run(scenario(datacenter))
    except BaseException:
        for p in datacenter.everyone:
            if p.log.exists():
                sys.stderr.write(f"--- {p.name} log ---\n{p.log.read_text()[-6000:]}\n")
        raise
    print("\nmeasured (s):", {k: round(v, 2) for k, v in measured.items()})
    print(f"bounds (s): check={CHECK_BOUND:.1f} gossip={GOSSIP_BOUND:.1f}")
    assert measured["check_fail_to_gone"] <= CHECK_BOUND, measured
    assert measured["check_pass_to_back"] <= CHECK_BOUND, measured
    assert measured["serf_critical_everywhere"] <= GOSSIP_BOUND, measured
