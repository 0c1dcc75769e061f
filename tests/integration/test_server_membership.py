"""Server membership driven by LAN serf, with real processes: three servers found the cluster
with ``-bootstrap-expect 3``; the leader registers every member in the catalog (``serfHealth``,
the ``consul`` service); a fourth server joins later and is promoted to voter once caught up; a
server that leaves gracefully (``PUT /v1/agent/leave``) is removed from the Raft configuration and
the catalog (SIGTERM alone keeps a server in the cluster, Consul's leave_on_terminate default);
a server killed with SIGKILL turns critical and autopilot's dead-server cleanup removes it from
Raft; writes keep working throughout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.cluster import (
    ServerProc,
    eventually,
    get_json,
    make_servers,
    server_args,
    wait_for_leader,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProc]]:
    first = make_servers(tmp_path, 3)
    [fourth] = make_servers(tmp_path, 1, first=4)
    fourth.args = server_args(
        fourth, tmp_path / "dev-timing.json", 3, [f"-retry-join=127.0.0.1:{first[0].serf}"]
    )
    everyone = [*first, fourth]
    try:
        yield everyone
    finally:
        for s in everyone:
            s.terminate()
        for s in everyone:
            s.kill()


async def raft_servers(session: aiohttp.ClientSession, s: ServerProc) -> dict[str, bool]:
    config = await get_json(session, s.base + "/v1/operator/raft/configuration")
    return {entry["Node"]: entry["Voter"] for entry in (config or {}).get("Servers", [])}


async def scenario(servers: list[ServerProc]) -> None:
    s1, s2, s3, s4 = servers
    for s in (s1, s2, s3):
        s.start()
    async with aiohttp.ClientSession() as session:
        await wait_for_leader(session, [s1, s2, s3], 40)

        async def consul_instances() -> set[str]:
            nodes = await get_json(session, s2.base + "/v1/catalog/service/consul")
            return {n["Node"] for n in nodes or []} if nodes else set()

        assert await eventually(
            lambda: _equals(consul_instances(), {"s1", "s2", "s3"}), 20, "3 consul instances"
        )
        # A follower's stale read says how long ago it heard from the leader.
        for s in (s1, s2, s3):
            async with session.get(s.base + "/v1/kv/none?stale") as resp:
                assert resp.headers["X-Consul-KnownLeader"] == "true"
                assert 0 <= int(resp.headers["X-Consul-LastContact"]) < 2000
                assert resp.headers["X-Consul-Effective-Consistency"] == "stale"
        checks = await get_json(session, s1.base + "/v1/health/node/s3")
        serf = [c for c in checks if c["CheckID"] == "serfHealth"]
        assert serf and serf[0]["Status"] == "passing", checks

        # A fourth server joins an existing cluster: added by the leader, promoted once caught up.
        s4.start()
        await eventually(
            lambda: _equals(
                raft_servers(session, s1), dict.fromkeys(["s1", "s2", "s3", "s4"], True)
            ),
            40,
            "s4 as a voter",
        )
        async with session.put(s4.base + "/v1/kv/through-s4", data=b"1") as resp:
            assert resp.status == 200 and await resp.json() is True

        # A graceful leave (``consul leave``) removes it from Raft and from the catalog.
        async with session.put(s4.base + "/v1/agent/leave") as resp:
            assert resp.status == 200
        assert s4.proc is not None
        await eventually(lambda: _exited(s4), 15, "s4 to exit after leaving")
        assert s4.proc.returncode == 0
        await eventually(
            lambda: _equals(raft_servers(session, s1), dict.fromkeys(["s1", "s2", "s3"], True)),
            30,
            "s4 removed from Raft",
        )
        await eventually(
            lambda: _equals(consul_instances(), {"s1", "s2", "s3"}), 30, "s4 deregistered"
        )

        # A killed server: serfHealth critical, then autopilot removes it from Raft.
        victim = s3
        victim.kill()
        survivors = [s1, s2]

        async def victim_critical() -> bool:
            checks = await get_json(session, s1.base + f"/v1/health/node/{victim.name}")
            return any(
                c["CheckID"] == "serfHealth" and c["Status"] == "critical" for c in checks or []
            )

        await eventually(victim_critical, 40, "serfHealth critical for the killed server")
        await eventually(
            lambda: _equals(raft_servers(session, s1), dict.fromkeys(["s1", "s2"], True)),
            40,
            "the dead server removed by autopilot",
        )
        await wait_for_leader(session, survivors, 20)
        async with session.put(s2.base + "/v1/kv/after-cleanup", data=b"2") as resp:
            assert resp.status == 200 and await resp.json() is True


async def _exited(s: ServerProc) -> bool:
    return s.proc is not None and s.proc.poll() is not None


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


def test_join_leave_and_dead_server_cleanup(servers: list[ServerProc]) -> None:
    try:
        asyncio.run(scenario(servers))
    except BaseException:
        import sys

        for s in servers:
            if s.log.exists():
                sys.stderr.write(f"--- {s.name} log ---\n{s.log.read_text()[-30000:]}\n")
        raise
