"""Three ``proconsul agent -server`` processes with TLS on the server port (Raft + server
RPC), certificates made by our own ``proconsul tls ca create`` / ``tls cert create -server
-dc dc1 -node sN``, ``verify_incoming`` and ``verify_server_hostname`` on.

- the cluster forms (Raft over mTLS) and a KV write through a follower works (the follower
  forwards it to the leader over server RPC, mTLS, name ``server.dc1.consul``);
- the server port refuses a plaintext gRPC client and a client whose certificate comes from
  another CA (same names), and serves one with a certificate from ours.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers.cluster import ServerProc, get_json, make_servers, proconsul, wait_for_leader

from server.config.runtime import RuntimeConfig
from server.endpoints.http import HTTPError
from server.rpc.client import LeaderClient
from server.rpc.errors import NotSentError
from server.tlsutil import TLSSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FORM_BOUND = 30.0


def tls_cli(cwd: Path, *argv: str) -> None:
    subprocess.run(
        [*proconsul(), "tls", *argv], cwd=cwd, check=True, capture_output=True, timeout=30
    )


def make_ca(directory: Path, nodes: list[str]) -> dict[str, dict[str, str]]:
    """A CA in ``directory`` and a server certificate per node: node -> tls.defaults block."""
    directory.mkdir()
    tls_cli(directory, "ca", "create")
    blocks = {}
    for i, node in enumerate(nodes):
        tls_cli(directory, "cert", "create", "-server", "-dc", "dc1", "-node", node)
        blocks[node] = {
            "ca_file": str(directory / "consul-agent-ca.pem"),
            "cert_file": str(directory / f"dc1-server-consul-{i}.pem"),
            "key_file": str(directory / f"dc1-server-consul-{i}-key.pem"),
        }
    return blocks


def settings(block: dict[str, str]) -> TLSSettings:
    s = TLSSettings.from_config(RuntimeConfig(node_name="t", tls={"defaults": block}))
    assert s is not None
    return s


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[list[ServerProc], dict[str, dict[str, str]]]]:
    servers = make_servers(tmp_path, 3)
    blocks = make_ca(tmp_path / "pki", [s.name for s in servers])
    for s in servers:
        conf = tmp_path / f"{s.name}-tls.json"
        conf.write_text(
            json.dumps(
                {
                    "tls": {
                        "defaults": {**blocks[s.name], "verify_incoming": True},
                        "internal_rpc": {"verify_server_hostname": True},
                    }
                }
            )
        )
        s.args.append(f"-config-file={conf}")
        s.start()
    try:
        yield servers, blocks
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.kill()


async def test_cluster_forms_and_forwards_over_tls(
    tls_cluster: tuple[list[ServerProc], dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    servers, blocks = tls_cluster
    async with aiohttp.ClientSession() as session:
        leader = await wait_for_leader(session, servers, FORM_BOUND)
        follower = next(s for s in servers if s.rpc_address != leader)
        # A write through a follower: forwarded to the leader over server RPC (mTLS).
        deadline = time.monotonic() + 10
        while True:
            async with session.put(follower.base + "/v1/kv/tls-key", data=b"v1") as resp:
                body = await resp.text()
                if resp.status == 200:
                    assert body.strip() == "true"
                    break
            assert time.monotonic() < deadline, (resp.status, body)
            await asyncio.sleep(0.2)
        for s in servers:  # replicated everywhere (stale read on each server)
            deadline = time.monotonic() + 10
            while (await get_json(session, s.base + "/v1/kv/tls-key?stale")) is None:
                assert time.monotonic() < deadline, s.name
                await asyncio.sleep(0.1)

    ours = LeaderClient(settings(blocks["s1"]), "consul.", "dc1")
    plain = LeaderClient()
    foreign_blocks = make_ca(tmp_path / "other-pki", ["s1"])
    foreign = LeaderClient(settings(foreign_blocks["s1"]), "consul.", "dc1")
    try:
        assert await ours.read_index(leader) > 0
        with pytest.raises((NotSentError, HTTPError)):
            await plain.read_index(leader)
        with pytest.raises((NotSentError, HTTPError)):
            await foreign.read_index(leader)
        # The name checked is server.dc1.consul by default; a name the certificate lacks fails.
        with pytest.raises((NotSentError, HTTPError)):
            await ours.read_index(leader, sni="s1.server.dc2.consul")
    finally:
        for client in (ours, plain, foreign):
            await client.close()
