"""A client agent (``proconsul agent`` without ``-server``) with three servers, all real
processes: the client joins the LAN pool, shows up in the catalog with ``serfHealth`` (the
leader's reconcile), serves KV, catalog and sessions by relaying to a server, registers its own
services into the catalog, keeps working when the server it was using is killed, and turns
critical once killed itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers.cluster import (
    ServerProc,
    eventually,
    get_json,
    make_client,
    make_servers,
    wait_for_leader,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture
def datacenter(tmp_path: Path) -> Iterator[tuple[list[ServerProc], ServerProc]]:
    servers = make_servers(tmp_path, 3)
    client = make_client(tmp_path, "c1", servers)
    everyone = [*servers, client]
    try:
        yield servers, client
    finally:
        for p in everyone:
            p.terminate()
        for p in everyone:
            p.kill()


async def scenario(servers: list[ServerProc], client: ServerProc) -> None:
    for s in servers:
        s.start()
    client.start()
    async with aiohttp.ClientSession() as session:
        leader = await wait_for_leader(session, servers, 40)
        base = client.base

        async def status_leader() -> bool:
            return bool(await get_json(session, base + "/v1/status/leader") == leader)

        await eventually(status_leader, 20, "the client to know the leader")
        members = await get_json(session, base + "/v1/agent/members")
        roles = {m["Name"]: m["Tags"].get("role") for m in members}
        assert roles == {"s1": "consul", "s2": "consul", "s3": "consul", "c1": "node"}, roles
        self_info = await get_json(session, base + "/v1/agent/self")
        assert self_info["Config"]["Server"] is False

        async def serf_passing() -> bool:
            checks = await get_json(session, base + "/v1/health/node/c1")
            return any(
                c["CheckID"] == "serfHealth" and c["Status"] == "passing" for c in checks or []
            )

        await eventually(serf_passing, 20, "c1's serfHealth passing")

        # KV through the client (relayed to a server, forwarded to the leader).
        async with session.put(base + "/v1/kv/from-client", data=b"hello") as resp:
            assert resp.status == 200 and await resp.json() is True
        entry = (await get_json(session, base + "/v1/kv/from-client"))[0]
        assert entry["Value"] == "aGVsbG8="

        # A service registered on the client lands in the catalog under the client's node.
        body = json.dumps({"Name": "web", "Port": 80, "Check": {"TTL": "30s", "Status": "passing"}})
        async with session.put(base + "/v1/agent/service/register", data=body) as resp:
            assert resp.status == 200, await resp.text()

        async def web_in_catalog() -> bool:
            nodes = await get_json(session, servers[0].base + "/v1/health/service/web?passing")
            return [n["Node"]["Node"] for n in nodes or []] == ["c1"]

        await eventually(web_in_catalog, 20, "web on c1 passing in the catalog")

        # A session created through the client belongs to the client's node.
        async with session.put(base + "/v1/session/create", data=b"{}") as resp:
            assert resp.status == 200, await resp.text()
            session_id = (await resp.json())["ID"]
        info = await get_json(session, base + f"/v1/session/info/{session_id}")
        assert info[0]["Node"] == "c1"

        # Kill servers one at a time until the client's preferred one is gone: it fails over.
        victim = next(s for s in servers if s.rpc_address != leader)
        victim.kill()
        for i in range(5):
            async with session.put(base + f"/v1/kv/after-kill-{i}", data=b"x") as resp:
                assert resp.status == 200, await resp.text()

        # The client killed: critical everywhere, its service out of the passing results.
        client.kill()
        survivors = [s for s in servers if s is not victim]

        async def client_critical() -> bool:
            checks = await get_json(session, survivors[0].base + "/v1/health/node/c1")
            return any(
                c["CheckID"] == "serfHealth" and c["Status"] == "critical" for c in checks or []
            )

        await eventually(client_critical, 40, "c1's serfHealth critical")
        passing = await get_json(session, survivors[0].base + "/v1/health/service/web?passing")
        assert passing == []

        # force-leave: the failed client becomes "left" and the leader deregisters it.
        async with session.put(survivors[0].base + "/v1/agent/force-leave/c1") as resp:
            assert resp.status == 200, await resp.text()
        async with session.put(survivors[0].base + "/v1/agent/force-leave/nobody") as resp:
            assert resp.status == 500 and "No node found" in await resp.text()

        async def c1_gone() -> bool:
            nodes = await get_json(session, survivors[1].base + "/v1/catalog/nodes")
            return "c1" not in {n["Node"] for n in nodes}

        await eventually(c1_gone, 30, "c1 deregistered after force-leave")


def test_client_agent_relays_to_servers(datacenter: tuple[list[ServerProc], ServerProc]) -> None:
    servers, client = datacenter
    try:
        asyncio.run(scenario(servers, client))
    except BaseException:
        import sys

        for p in [*servers, client]:
            if p.log.exists():
                sys.stderr.write(f"--- {p.name} log ---\n{p.log.read_text()[-8000:]}\n")
        raise
