"""Two federated datacenters of real processes in network namespaces, and the assertions of
issue 6's proof that both federation tests (through gateways, traditional) share.

``Federation.start_wanfed`` runs, per datacenter, the servers (TLS, ``connect``'s
``enable_mesh_gateway_wan_federation``; the secondary's with ``primary_gateways``) and per
gateway namespace a *client agent* plus the gateway process, which registers with and learns
from that local agent (``-http-addr http://127.0.0.1:8500``). A local agent per gateway is how
Consul runs gateways, and it is needed here: the gateway registers with ID = its service name
("mesh-gateway"), so two gateways sharing one agent would overwrite each other's
registration; it also keeps the gateway's registration and health check off the servers the
fault tests restart. ``Federation.start_traditional`` runs only servers, the secondary's with
``retry_join_wan`` to a primary server.

Every ``check_*`` method makes one attempt and raises ``AssertionError`` saying what is wrong;
``wait(what, check, timeout)`` retries one until it passes and adds the log tails on failure.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns.procs import (
    ADMIN_PORT,
    GATEWAY_PORT,
    HTTP_PORT,
    Certs,
    Client,
    NsProc,
    Procs,
    agent_proc,
    gateway_proc,
    wait_until,
)
from netns.topology import DC, Node, Topology, build_routable, build_wanfed

SERF_WAN_PORT = 8302


@dataclass
class Server:
    dc: str
    node: Node
    proc: NsProc
    http: Client

    @property
    def name(self) -> str:
        return self.node.name


@dataclass
class Gateway:
    dc: str
    node: Node
    agent: NsProc  # the client agent in the gateway's namespace
    proc: NsProc  # the gateway
    admin: Client
    wan: str  # current WAN address "ip:port"

    @property
    def name(self) -> str:
        return self.node.name

    def stats(self) -> dict[str, Any]:
        reply = self.admin.get("/stats", timeout=3)
        assert reply.status == 200, f"{self.name} /stats: {reply.status} {reply.body[:200]!r}"
        data: dict[str, Any] = reply.json()
        return data

    def traffic(self, suffix: str | None = None) -> int:
        """Bytes both ways through this gateway (for one SNI suffix, e.g.
        ``server.dc1.consul``, when given); 0 when its admin endpoint is not up."""
        try:
            s = self.stats()
        except (OSError, AssertionError, ValueError):
            return 0
        if suffix is None:
            return int(s.get("bytes_in", 0)) + int(s.get("bytes_out", 0))
        per = (s.get("sni_suffixes") or {}).get(suffix) or {}
        return int(per.get("bytes_in", 0)) + int(per.get("bytes_out", 0))


@dataclass
class Federation:
    topo: Topology
    procs: Procs
    workdir: Path
    dcs: list[DC]
    wanfed: bool
    servers: dict[str, list[Server]] = field(default_factory=dict)
    gateways: dict[str, list[Gateway]] = field(default_factory=dict)
    certs: Certs | None = None
    last_start: float = 0.0  # monotonic time of the last start_all start

    # -- building ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [dc.name for dc in self.dcs]

    @property
    def primary(self) -> str:
        return self.dcs[0].name

    def _server_config(self, dc: DC, node: Node) -> dict[str, Any]:
        lan = node.ip_on("lan")
        config: dict[str, Any] = {
            "node_name": node.name,
            "datacenter": dc.name,
            "primary_datacenter": self.primary,
            "server": True,
            "bootstrap_expect": len(dc.servers),
            "retry_join": [s.ip_on("lan") for s in dc.servers if s is not node],
            "retry_interval": "1s",
            "bind_addr": lan,
            "client_addr": "0.0.0.0",
            "data_dir": str(self.workdir / node.name / "data"),
            "log_level": "debug",
        }
        if self.wanfed:
            assert self.certs is not None
            config["tls"] = self.certs.tls_block(*self.certs.server(dc.name, node.name))
            config["connect"] = {"enabled": True, "enable_mesh_gateway_wan_federation": True}
            if dc.name != self.primary:
                config["primary_gateways"] = [
                    f"{g.ip_on('wan')}:{GATEWAY_PORT}" for g in self.dcs[0].gateways
                ]
                config["primary_gateways_interval"] = "1s"
                config["retry_interval_wan"] = "1s"
        elif dc.name != self.primary:
            config["retry_join_wan"] = [f"{self.dcs[0].servers[0].ip_on('lan')}:{SERF_WAN_PORT}"]
            config["retry_interval_wan"] = "1s"
        return config

    def _gateway_agent_config(self, dc: DC, node: Node) -> dict[str, Any]:
        assert self.certs is not None
        return {
            "node_name": node.name,
            "datacenter": dc.name,
            "primary_datacenter": self.primary,
            "retry_join": [s.ip_on("lan") for s in dc.servers],
            "retry_interval": "1s",
            "bind_addr": node.ip_on("lan"),
            "client_addr": "0.0.0.0",
            "data_dir": str(self.workdir / node.name / "data"),
            "log_level": "debug",
            "tls": self.certs.tls_block(*self.certs.client(dc.name)),
        }

    def prepare(self) -> None:
        """Write configs and create (not start) every process."""
        if self.wanfed:
            self.certs = Certs(self.workdir / "certs")
        for dc in self.dcs:
            self.servers[dc.name] = []
            for node in dc.servers:
                proc = self.procs.add(
                    agent_proc(node.name, node.ns, self.workdir, self._server_config(dc, node))
                )
                self.servers[dc.name].append(Server(dc.name, node, proc, Client(node.mgmt_ip)))
            self.gateways[dc.name] = []
            if not self.wanfed:
                continue
            for node in dc.gateways:
                agent = self.procs.add(
                    agent_proc(
                        f"{node.name}-agent",
                        node.ns,
                        self.workdir,
                        self._gateway_agent_config(dc, node),
                    )
                )
                wan = f"{node.ip_on('wan')}:{GATEWAY_PORT}"
                gw = self.procs.add(self._gateway_proc(node, wan))
                self.gateways[dc.name].append(
                    Gateway(dc.name, node, agent, gw, Client(node.mgmt_ip, ADMIN_PORT), wan)
                )

    def _gateway_proc(self, node: Node, wan: str) -> NsProc:
        return gateway_proc(
            f"{node.name}-gw",
            node.ns,
            self.workdir,
            lan=node.ip_on("lan"),
            wan=wan.rsplit(":", 1)[0],
            agent_http="http://127.0.0.1:8500",
            admin=f"{node.mgmt_ip}:{ADMIN_PORT}",
        )

    def start_all(self, ready_timeout: float = 60.0) -> float:
        """Start servers, then gateway agents, then gateways, one at a time: each process is
        started once the previous one answers on its endpoint (spawning ten Python processes
        at once on a 2-core machine takes many seconds before any of them runs, which would
        measure the machine, not the federation). Returns the monotonic time of the last
        start: the cold-start budget counts from it."""
        where = {id(p): (host, port) for p, host, port in self.endpoints()}
        order = [s.proc for servers in self.servers.values() for s in servers]
        order += [g.agent for gws in self.gateways.values() for g in gws]
        order += [g.proc for gws in self.gateways.values() for g in gws]
        for i, proc in enumerate(order):
            proc.start()
            if i == len(order) - 1:
                break
            host, port = where[id(proc)]
            deadline = time.monotonic() + ready_timeout
            while True:
                assert proc.alive, f"{proc.name} exited: {proc.tail()}"
                try:
                    socket.create_connection((host, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{proc.name} not answering{self.tails()}") from None
                    time.sleep(0.05)
        return max(p.started_at for p in self.procs.all)

    def endpoints(self) -> list[tuple[NsProc, str, int]]:
        """Every process with the address and port at which it answers once started: agents'
        HTTP APIs, gateways' admin endpoints (management addresses)."""
        out = [(s.proc, s.node.mgmt_ip, HTTP_PORT) for s in self.all_servers()]
        for gws in self.gateways.values():
            for g in gws:
                out.append((g.agent, g.node.mgmt_ip, HTTP_PORT))
                out.append((g.proc, g.node.mgmt_ip, ADMIN_PORT))
        return out

    def wait_started(self, timeout: float) -> float:
        """Wait until every process accepts connections on its endpoint; the monotonic time
        at which the last one first did. (Spawning ten Python processes at once on a small
        machine takes seconds before any of them runs; the cold-start budget counts from
        here.)"""
        pending = {id(p): (p, host, port) for p, host, port in self.endpoints()}
        last = 0.0
        deadline = time.monotonic() + timeout
        while pending:
            for key, (p, host, port) in list(pending.items()):
                assert p.alive, f"{p.name} exited: {p.tail()}"
                try:
                    socket.create_connection((host, port), timeout=0.5).close()
                except OSError:
                    continue
                last = time.monotonic()
                del pending[key]
            if pending and time.monotonic() > deadline:
                names = [p.name for p, _, _ in pending.values()]
                raise AssertionError(f"not answering after {timeout:.0f}s: {names}{self.tails()}")
            time.sleep(0.05)
        return last

    def readdress_gateway(self, g: Gateway, wan_ip: str) -> None:
        """Stop ``g``'s gateway, give its namespace the WAN address ``wan_ip`` and start it
        again with ``-wan-address <wan_ip>:8443`` (its agent keeps running)."""
        g.proc.kill()
        self.topo.readdress(g.node, "wan", f"{wan_ip}/24")
        g.wan = f"{wan_ip}:{GATEWAY_PORT}"
        fresh = self._gateway_proc(g.node, g.wan)
        fresh.log = g.proc.log  # one log per gateway, restarts appended
        self.procs.all[self.procs.all.index(g.proc)] = fresh
        g.proc = fresh
        g.proc.start()

    # -- reporting -----------------------------------------------------------------------------

    def tails(self, lines: int = 25) -> str:
        return self.procs.tails(lines)

    def wait(self, what: str, check: Callable[[], object], timeout: float) -> None:
        """Retry ``check`` (which raises AssertionError or returns) until it passes. (Log
        tails of a failed test come from conftest's report hook.)"""

        def probe() -> bool:
            check()
            return True

        wait_until(what, probe, timeout=timeout, interval=0.25)

    # -- checks (one attempt each) -------------------------------------------------------------

    def all_servers(self) -> list[Server]:
        return [s for servers in self.servers.values() for s in servers]

    def running_servers(self, dc: str) -> list[Server]:
        return [s for s in self.servers[dc] if s.proc.alive]

    def check_datacenters(self) -> None:
        """``/v1/catalog/datacenters`` on every running server: both dcs, its own first."""
        for s in self.all_servers():
            if not s.proc.alive:
                continue
            got = s.http.try_json("/v1/catalog/datacenters")
            assert isinstance(got, list), f"{s.name}: /v1/catalog/datacenters -> {got!r}"
            assert sorted(got) == sorted(self.names) and got[0] == s.dc, (
                f"{s.name}: /v1/catalog/datacenters -> {got!r}"
            )

    def check_wan_members(self) -> None:
        """``/v1/agent/members?wan=1`` on every running server: every running server of both
        dcs, named ``<node>.<dc>``, alive (Status 1)."""
        expected = {f"{s.name}.{s.dc}" for s in self.all_servers() if s.proc.alive}
        for s in self.all_servers():
            if not s.proc.alive:
                continue
            got = s.http.try_json("/v1/agent/members?wan=1")
            assert isinstance(got, list), f"{s.name}: members?wan=1 -> {got!r}"
            alive = {m.get("Name") for m in got if m.get("Status") == 1}
            missing = expected - alive
            assert not missing, (
                f"{s.name}: members?wan=1 lacks alive {sorted(missing)}: "
                f"{[(m.get('Name'), m.get('Status'), m.get('Addr')) for m in got]}"
            )

    def kv_put(self, s: Server, key: str, value: str, dc: str | None = None) -> None:
        q = f"?dc={dc}" if dc else ""
        reply = s.http.request("PUT", f"/v1/kv/{key}{q}", value.encode(), timeout=8)
        assert reply.status == 200 and reply.body.strip() == b"true", (
            f"{s.name}: PUT /v1/kv/{key}{q} -> {reply.status} {reply.body[:300]!r}"
        )

    def kv_get(self, s: Server, key: str, dc: str | None = None) -> tuple[str | None, int]:
        """(value or None when absent, X-Consul-Index)."""
        q = f"?dc={dc}" if dc else ""
        reply = s.http.get(f"/v1/kv/{key}{q}", timeout=8)
        if reply.status == 404:
            return None, reply.index
        assert reply.status == 200, (
            f"{s.name}: GET /v1/kv/{key}{q} -> {reply.status} {reply.body[:300]!r}"
        )
        value = reply.json()[0]["Value"]
        return (base64.b64decode(value).decode() if value else ""), reply.index

    def check_kv_cross(self, src: str, dst: str) -> None:
        """A PUT ``?dc=<dst>`` through a server of ``src`` is read back in ``dst`` locally and
        through ``src`` with ``?dc=<dst>``."""
        a = self.running_servers(src)[0]
        b = self.running_servers(dst)[0]
        key = f"netns/{src}-to-{dst}/{time.monotonic_ns()}"
        value = f"from {a.name}"
        self.kv_put(a, key, value, dc=dst)
        got, _ = self.kv_get(b, key)
        assert got == value, f"{b.name}: local GET {key} -> {got!r}, wanted {value!r}"
        got, _ = self.kv_get(a, key, dc=dst)
        assert got == value, f"{a.name}: GET {key}?dc={dst} -> {got!r}, wanted {value!r}"

    def check_kv_both_ways(self) -> None:
        self.check_kv_cross(self.names[0], self.names[1])
        self.check_kv_cross(self.names[1], self.names[0])

    def check_blocking_cross(self, src: str, dst: str) -> None:
        """A blocking ``GET ?dc=<dst>&index=N`` through ``src`` stays blocked, then returns
        the new value soon after a PUT made locally in ``dst``."""
        a = self.running_servers(src)[0]
        b = self.running_servers(dst)[0]
        key = f"netns/blocking/{src}-{dst}-{time.monotonic_ns()}"
        self.kv_put(b, key, "v1")
        _, index = self.kv_get(a, key, dc=dst)
        path = f"/v1/kv/{key}?dc={dst}&index={index}&wait=20s"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            blocked = pool.submit(a.http.get, path, 25)
            time.sleep(1.0)
            assert not blocked.done(), (
                f"{a.name}: GET {path} returned at once: {_describe(blocked.result())}"
            )
            self.kv_put(b, key, "v2")
            put_at = time.monotonic()
            reply = blocked.result(timeout=25)
            woke = time.monotonic()
        assert reply.status == 200, f"{a.name}: GET {path} -> {_describe(reply)}"
        value = base64.b64decode(reply.json()[0]["Value"]).decode()
        assert value == "v2" and reply.index > index, (
            f"{a.name}: GET {path} -> {value!r} index {reply.index} (blocked at {index})"
        )
        assert woke - put_at < 5, (
            f"{a.name}: blocking GET ?dc={dst} woke {woke - put_at:.1f}s after the PUT "
            f"(started {put_at - started:.1f}s before it)"
        )

    def check_federation_states(self) -> None:
        """``/v1/internal/federation-states`` in every dc lists, as healthy (federation meta,
        a WAN address, no critical check), exactly every dc's running gateways (node names,
        WAN addresses): a stopped gateway must have turned critical or gone."""
        expected = {
            dc: {g.name: g.wan for g in gws if g.proc.alive} for dc, gws in self.gateways.items()
        }
        for dc in self.names:
            s = self.running_servers(dc)[0]
            got = s.http.try_json("/v1/internal/federation-states")
            assert isinstance(got, list), f"{s.name}: federation-states -> {got!r}"
            by_dc = {rec.get("Datacenter"): rec for rec in got}
            for want_dc, want in expected.items():
                rec = by_dc.get(want_dc)
                assert rec is not None, f"{s.name}: federation-states has no {want_dc}: {got!r}"
                seen: dict[str, str] = {}
                for csn in rec.get("MeshGateways") or []:
                    node = (csn.get("Node") or {}).get("Node")
                    service = csn.get("Service") or {}
                    wan = (service.get("TaggedAddresses") or {}).get("wan")
                    meta = (service.get("Meta") or {}).get("consul-wan-federation")
                    critical = any(c.get("Status") == "critical" for c in csn.get("Checks") or [])
                    if wan and meta == "1" and not critical:
                        seen[node] = f"{wan.get('Address')}:{wan.get('Port')}"
                assert seen == want, (
                    f"{s.name}: federation state of {want_dc}: healthy gateways {seen}, "
                    f"wanted exactly the running ones {want}"
                )

    def check_formed(self) -> None:
        """Everything point 2 of the issue lists, except blocking queries."""
        self.check_datacenters()
        self.check_wan_members()
        if self.wanfed:
            self.check_federation_states()
        self.check_kv_both_ways()

    def check_cross_ok(self, src: str, dst: str, times: int = 5) -> None:
        """``times`` consecutive ``?dc=<dst>`` reads through ``src`` succeed."""
        a = self.running_servers(src)[0]
        for _ in range(times):
            reply = a.http.get(f"/v1/kv/netns/none?dc={dst}", timeout=8)
            assert reply.status in (200, 404) and "X-Consul-Index" in reply.headers, (
                f"{a.name}: GET ?dc={dst} -> {_describe(reply)}"
            )


@contextlib.contextmanager
def running_federation(workdir: Path, wanfed: bool, servers_per_dc: int) -> Iterator[Federation]:
    """A started federation (wanfed: through gateways on isolated networks; else traditional
    on a routable network), its processes killed by PID and its namespaces removed on exit."""
    topo = Topology()
    procs = Procs()
    try:
        if wanfed:
            dcs = build_wanfed(topo, servers_per_dc=servers_per_dc, gateways_per_dc=2)
        else:
            dcs = build_routable(topo, servers_per_dc=servers_per_dc)
        fed = Federation(topo, procs, workdir, dcs, wanfed=wanfed)
        fed.prepare()
        fed.last_start = fed.start_all()
        yield fed
    finally:
        procs.stop_all()
        topo.teardown()


def heal(fed: Federation, timeout: float) -> None:
    """Start whatever is not running and wait for a formed federation."""
    for p in fed.procs.all:
        if not p.alive:
            p.start()
    fed.wait("the federation forms", fed.check_formed, timeout=timeout)


def check_cold_start(fed: Federation, budget: float) -> None:
    """Issue 6, point 2: formed within ``budget`` seconds of the last process start (the
    last spawn; ``start_all`` starts the processes one after another), blocking ``?dc=``
    queries both ways included."""
    fed.wait(
        f"federation formed within {budget:.0f}s of the last process start",
        fed.check_formed,
        timeout=max(0.5, fed.last_start + budget - time.monotonic()),
    )
    formed = time.monotonic() - fed.last_start
    started = fed.wait_started(timeout=60)
    print(f"formed {formed:.1f}s after the last process started")
    assert started - fed.last_start < budget
    fed.check_blocking_cross("dc1", "dc2")
    fed.check_blocking_cross("dc2", "dc1")


def check_primary_server_restart(fed: Federation, timeout: float) -> None:
    """A primary server stops (SIGTERM) and starts again; the federation recovers."""
    s = fed.servers["dc1"][0]
    assert s.proc.terminate() is not None, f"{s.name} did not stop on SIGTERM"
    s.proc.start()
    fed.wait("the federation recovers after a primary server restart", fed.check_formed, timeout)
    fed.check_blocking_cross("dc2", "dc1")


def _describe(reply: Any) -> str:
    return f"{reply.status} {reply.body[:300]!r}"
