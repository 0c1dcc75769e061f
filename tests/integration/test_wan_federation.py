"""Traditional WAN federation on loopback: servers of two datacenters in one WAN serf pool,
``/v1/catalog/datacenters``, ``members?wan=1``, and ``?dc=`` forwarding (blocking queries
included) with Consul's errors. Real processes; every one stopped by PID."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from helpers.cluster import (
    ServerProc,
    eventually,
    free_ports,
    make_client,
    make_servers,
    wait_for_leader,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FAST_WAN = {
    "gossip_wan": {"probe_interval": "500ms", "probe_timeout": "200ms", "suspicion_mult": 2}
}


def _with_wan(s: ServerProc, tmp_path: Path, dc: str, wan_port: int, *extra: str) -> None:
    config = tmp_path / f"{s.name}-wan.json"
    config.write_text(json.dumps({"datacenter": dc, **FAST_WAN}))
    args = [a for a in s.args if not a.startswith("-serf-wan-port")]
    s.args = [*args, f"-serf-wan-port={wan_port}", f"-config-file={config}", *extra]


async def test_two_datacenters_federate_over_the_wan_pool(tmp_path: Path) -> None:
    dc1 = make_servers(tmp_path, 2, expect=2, first=1)
    (tmp_path / "b").mkdir()
    dc2 = make_servers(tmp_path / "b", 1, expect=1, first=3)
    wan = free_ports(3)
    _with_wan(dc1[0], tmp_path, "dc1", wan[0])
    _with_wan(dc1[1], tmp_path, "dc1", wan[1])
    # Only s3 is told where the WAN pool is; s2 gets in through dc1's flooding.
    _with_wan(dc2[0], tmp_path, "dc2", wan[2], f"-retry-join-wan=127.0.0.1:{wan[0]}")
    client = make_client(tmp_path, "c1", dc1)
    procs = [*dc1, *dc2, client]
    try:
        for p in procs:
            p.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            await wait_for_leader(http, dc1, 30)
            await wait_for_leader(http, dc2, 30)
            s1, s2, s3 = dc1[0].base, dc1[1].base, dc2[0].base

            async def wan_members() -> bool:
                async with http.get(s3 + "/v1/agent/members?wan=1") as r:
                    members = {m["Name"]: m["Status"] for m in await r.json()}
                return members == {"s1.dc1": 1, "s2.dc1": 1, "s3.dc2": 1}

            await eventually(wan_members, 30, "all three servers alive in the WAN pool")

            async def dcs(base: str) -> list[str]:
                async with http.get(base + "/v1/catalog/datacenters") as r:
                    return list(await r.json())

            assert await dcs(s1) == ["dc1", "dc2"]

            async def areas() -> bool:
                # Local servers are named once the catalog knows their nodes (a moment after
                # the leader is elected); until then their Raft IDs stand in.
                async with http.get(s1 + "/v1/coordinate/datacenters") as r:
                    seen = {
                        a["Datacenter"]: sorted(c["Node"] for c in a["Coordinates"])
                        for a in await r.json()
                    }
                return seen == {"dc1": ["s1", "s2"], "dc2": ["s3"]}

            await eventually(areas, 10, "coordinate datacenters list both with their servers")
            assert await dcs(s3) == ["dc2", "dc1"]

            # KV both ways, through a follower and a client agent too.
            for base, other, value in ((s2, "dc2", "from-dc1"), (s3, "dc1", "from-dc2")):
                async with http.put(f"{base}/v1/kv/fed?dc={other}", data=value) as r:
                    assert r.status == 200 and await r.json() is True
            async with http.get(f"{s3}/v1/kv/fed?raw") as r:
                assert await r.text() == "from-dc1"
            async with http.get(f"{client.base}/v1/kv/fed?dc=dc2&raw") as r:
                assert r.status == 200 and await r.text() == "from-dc1"
            async with http.get(f"{s1}/v1/kv/fed?dc=dc2&stale") as r:
                assert r.status == 200
                assert r.headers["X-Consul-KnownLeader"] == "true"
                index = int(r.headers["X-Consul-Index"])

            # A blocking query in dc2 asked through dc1 wakes on dc2's write.
            async def blocked() -> tuple[float, str]:
                t0 = time.monotonic()
                async with http.get(f"{s1}/v1/kv/fed?dc=dc2&index={index}&wait=20s&raw") as r:
                    return time.monotonic() - t0, await r.text()

            waiter = asyncio.create_task(blocked())
            await asyncio.sleep(1.0)
            assert not waiter.done()
            async with http.put(f"{s3}/v1/kv/fed", data="woken") as r:
                assert r.status == 200
            took, text = await asyncio.wait_for(waiter, 10)
            assert text == "woken" and 0.9 < took < 10

            # A catalog write naming its datacenter in the body goes there too.
            node = {"Datacenter": "dc2", "Node": "ext-1", "Address": "198.18.9.9"}
            async with http.put(f"{s1}/v1/catalog/register", json=node) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{s3}/v1/catalog/node/ext-1") as r:
                assert r.status == 200 and (await r.json())["Node"]["Address"] == "198.18.9.9"
            async with http.get(f"{s1}/v1/catalog/node/ext-1") as r:
                assert await r.json() is None

            # Status and events are Consul RPCs that take a datacenter too.
            async with http.get(f"{client.base}/v1/status/leader?dc=dc2") as r:
                assert await r.json() == dc2[0].rpc_address
            async with http.get(f"{s1}/v1/status/peers?dc=dc2") as r:
                assert await r.json() == [dc2[0].rpc_address]
            async with http.put(f"{s1}/v1/event/fire/deploy?dc=dc2", data=b"v2") as r:
                assert r.status == 200, await r.text()

            async def fired_in_dc2() -> bool:
                async with http.get(f"{s3}/v1/event/list?name=deploy") as r:
                    return len(await r.json()) == 1

            await eventually(fired_in_dc2, 10, "the event fired in dc2")

            async with http.get(f"{s1}/v1/kv/fed?dc=nowhere") as r:
                assert r.status == 500 and await r.text() == "No path to datacenter"

            # dc2 down: its datacenter is known but no server answers.
            dc2[0].kill()
            async with http.get(f"{s1}/v1/kv/fed?dc=dc2") as r:
                assert r.status == 500
                assert await r.text() == "Remote DC has no server currently reachable"
    finally:
        for p in procs:
            p.kill()


async def test_a_restarted_lone_primary_server_finds_the_wan_pool_again(tmp_path: Path) -> None:
    """Nobody re-joins the only server of a datacenter after its restart (the others still
    see it alive under the same name and address): it rejoins the WAN peers it remembered."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dc1 = make_servers(tmp_path / "a", 1, expect=1, first=1)
    dc2 = make_servers(tmp_path / "b", 1, expect=1, first=2)
    wan = free_ports(2)
    _with_wan(dc1[0], tmp_path, "dc1", wan[0])
    _with_wan(dc2[0], tmp_path, "dc2", wan[1], f"-retry-join-wan=127.0.0.1:{wan[0]}")
    procs = [*dc1, *dc2]
    try:
        for p in procs:
            p.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:

            async def dc1_sees_dc2() -> bool:
                async with http.get(dc1[0].base + "/v1/catalog/datacenters") as r:
                    return r.status == 200 and await r.json() == ["dc1", "dc2"]

            await eventually(dc1_sees_dc2, 30, "dc1 sees dc2")
            await asyncio.sleep(1.5)  # the peer snapshot is written by the router refresh
            dc1[0].terminate()
            dc1[0].start()
            await eventually(dc1_sees_dc2, 20, "the restarted dc1 server sees dc2 again")
            async with http.get(dc1[0].base + "/v1/kv/nothing?dc=dc2") as r:
                assert r.status == 404
    finally:
        for p in procs:
            p.kill()
