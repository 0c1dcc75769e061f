"""Restarting servers must not lose what the cluster knows (review findings, as regressions):

* SIGTERM on a server does not leave the cluster (Consul's ``leave_on_terminate`` default for
  servers): it stays in the Raft configuration and comes back on restart;
* a restarted leader does not deregister the nodes its serf has not heard from yet (their
  sessions and locks survive).
"""

from __future__ import annotations

import asyncio
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
def procs(tmp_path: Path) -> Iterator[tuple[list[ServerProc], ServerProc]]:
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
    for p in [*servers, client]:
        p.start()
    async with aiohttp.ClientSession() as session:
        leader_addr = await wait_for_leader(session, servers, 40)

        async def raft_nodes() -> set[str]:
            config = await get_json(
                session, servers[0].base + "/v1/operator/raft/configuration?stale"
            )
            return {s["Node"] for s in config["Servers"]}

        async def client_ready() -> bool:
            return bool(await get_json(session, client.base + "/v1/status/leader"))

        await eventually(client_ready, 20, "the client to reach a server")
        async with session.put(client.base + "/v1/session/create", data=b"{}") as resp:
            assert resp.status == 200, await resp.text()
            sid = (await resp.json())["ID"]
        async with session.put(client.base + f"/v1/kv/lock?acquire={sid}", data=b"me") as resp:
            assert await resp.json() is True

        # Restart the whole server side, leader first; none of them leaves on SIGTERM.
        order = sorted(servers, key=lambda s: s.rpc_address != leader_addr)
        for s in order:
            s.terminate()
            assert s.proc is not None and s.proc.returncode == 0
        for s in order:
            s.start()
        await wait_for_leader(session, servers, 40)
        assert await raft_nodes() == {"s1", "s2", "s3"}

        # Nothing the cluster knew about c1 is gone, even while serf re-learns its members.
        for _ in range(20):
            entry = await get_json(session, servers[1].base + "/v1/kv/lock")
            assert entry and entry[0]["Session"] == sid, entry
            info = await get_json(session, servers[1].base + f"/v1/session/info/{sid}")
            assert info and info[0]["Node"] == "c1"
            await asyncio.sleep(0.25)

        async def c1_passing() -> bool:
            checks = await get_json(session, servers[2].base + "/v1/health/node/c1")
            return any(c["CheckID"] == "serfHealth" and c["Status"] == "passing" for c in checks)

        await eventually(c1_passing, 30, "c1 passing again")
        assert await raft_nodes() == {"s1", "s2", "s3"}


def test_server_restarts_keep_membership_and_sessions(
    procs: tuple[list[ServerProc], ServerProc],
) -> None:
    servers, client = procs
    try:
        asyncio.run(scenario(servers, client))
    except BaseException:
        import sys

        for p in [*servers, client]:
            if p.log.exists():
                sys.stderr.write(f"--- {p.name} log ---\n{p.log.read_text()[-6000:]}\n")
        raise
