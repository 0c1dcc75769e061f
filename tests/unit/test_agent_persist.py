"""Services and checks registered through the agent API are saved in the data dir and come
back when the agent starts again (``server.endpoints.agent.LocalPersistence``); ones from the
configuration files are not saved, and the configuration wins over a saved one with the same
ID; removed ones lose their files; ``-dev`` agents save nothing. No sockets: the agent's local
state service is driven directly, as its HTTP handlers drive it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from server.agent.local import CRITICAL, PASSING, WARNING, LocalState
from server.config.runtime import RuntimeConfig
from server.endpoints.agent import (
    AgentEndpoint,
    AgentLocal,
    LocalPersistence,
    _decode_check,
    add_service,
    decode_service_definition,
)
from server.endpoints.context import ServerContext


@pytest.fixture(autouse=True)
def synchronous_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are checked right after each change: write them inline."""
    monkeypatch.setattr(LocalPersistence, "synchronous", True)


def make_agent(data_dir: Path | str, **config: Any) -> AgentLocal:
    cfg = RuntimeConfig(node_name="c1", data_dir=str(data_dir), **config)
    ctx = ServerContext(cfg, None, None)
    local = LocalState("c1")
    ctx.local = local
    return AgentLocal(ctx, local)


def boot(agent: AgentLocal) -> AgentLocal:
    """What ``AgentLocal.start`` does to the local state (without its loops)."""
    agent._load_config()
    agent._load_persisted()
    return agent


def api_register(agent: AgentLocal, definition: dict[str, Any], token: str = "") -> None:
    ns, checks, sidecar = decode_service_definition(definition)
    add_service(agent, ns, checks, sidecar, token=token, replace=False)


def files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)).split("/")[0] + "/" + ("state/" if "state" in p.parts else "")
        for p in root.rglob("*")
        if p.is_file()
    )


def test_api_service_with_checks_survives_a_restart(tmp_path: Path) -> None:
    agent = boot(make_agent(tmp_path))
    api_register(
        agent,
        {
            "Name": "api",
            "ID": "api-1",
            "Port": 9000,
            "Tags": ["v1"],
            "Meta": {"team": "a"},
            "Weights": {"Passing": 3, "Warning": 1},
            "Checks": [
                {"Name": "ttl", "TTL": "30s"},
                {"Name": "http", "HTTP": "http://127.0.0.1:1/h", "Interval": "5s"},
            ],
        },
        token="tok",
    )
    agent.local.add_check("node-ttl", _decode_check({"Name": "node ttl", "TTL": "10s"}))
    assert files(tmp_path) == ["checks/"] * 3 + ["services/"]
    before_services = agent.local.all_services()
    before_checks = agent.local.all_checks()

    again = boot(make_agent(tmp_path))
    assert again.local.all_services() == before_services
    after = again.local.all_checks()
    assert after.keys() == before_checks.keys()
    for cid, check in after.items():
        old = before_checks[cid]
        for key in ("Name", "ServiceID", "ServiceName", "ServiceTags", "Type", "Interval"):
            assert check[key] == old[key], (cid, key)
        assert check["Status"] == CRITICAL  # until the check reports again
    http = again.local.check_entry("service:api-1:2")
    assert http is not None and http.check_type is not None
    assert http.check_type.http == "http://127.0.0.1:1/h" and http.check_type.interval == 5.0
    assert again.local.services["api-1"].token == "tok"
    assert again.local.checks["service:api-1:1"].token == "tok"
    # Restoring writes nothing new and leaves no temporary files.
    assert files(tmp_path) == ["checks/"] * 3 + ["services/"]


def test_config_services_are_not_saved_and_win_over_saved_ones(tmp_path: Path) -> None:
    config = {
        "services": ({"name": "web", "port": 80, "check": {"ttl": "10s"}},),
        "checks": ({"name": "disk", "ttl": "1m"},),
    }
    agent = boot(make_agent(tmp_path, **config))
    assert set(agent.local.all_services()) == {"web"}
    assert files(tmp_path) == []
    # Redefined through the API: saved ...
    api_register(agent, {"Name": "web", "Port": 81})
    assert files(tmp_path) == ["services/"]
    # ... but on the next start the configuration's definition wins, and the file goes.
    again = boot(make_agent(tmp_path, **config))
    assert again.local.service("web")["Port"] == 80  # type: ignore[index]
    assert files(tmp_path) == []


def test_removed_services_and_checks_lose_their_files(tmp_path: Path) -> None:
    agent = boot(make_agent(tmp_path))
    api_register(agent, {"Name": "a", "Check": {"TTL": "10s"}})
    api_register(agent, {"Name": "b", "Check": {"TTL": "10s"}})
    agent.local.add_check("solo", _decode_check({"Name": "solo", "TTL": "10s"}))
    assert len(files(tmp_path)) == 5
    agent.local.remove_service("a")
    agent.local.remove_check("solo")
    assert files(tmp_path) == ["checks/", "services/"]
    again = boot(make_agent(tmp_path))
    assert set(again.local.all_services()) == {"b"}
    assert set(again.local.all_checks()) == {"service:b"}


def test_maintenance_mode_is_kept(tmp_path: Path) -> None:
    agent = boot(make_agent(tmp_path))
    api_register(agent, {"Name": "a"})
    agent.local.enable_service_maintenance("a", "deploying")
    agent.local.enable_node_maintenance("")
    again = boot(make_agent(tmp_path))
    assert set(again.local.all_checks()) == {"_node_maintenance", "_service_maintenance:a"}
    check = again.local.check("_service_maintenance:a")
    assert check is not None and check["Notes"] == "deploying"
    again.local.disable_service_maintenance("a")
    assert set(boot(make_agent(tmp_path)).local.all_checks()) == {"_node_maintenance"}


def test_dev_agents_save_nothing(tmp_path: Path) -> None:
    agent = boot(make_agent(tmp_path, dev=True))
    assert agent.persistence is None
    api_register(agent, {"Name": "a", "Check": {"TTL": "10s"}})
    assert files(tmp_path) == []
    assert boot(make_agent("")).persistence is None


def test_unreadable_and_orphan_files_are_skipped(tmp_path: Path) -> None:
    agent = boot(make_agent(tmp_path))
    api_register(agent, {"Name": "a", "Check": {"TTL": "10s"}})
    (tmp_path / "services" / "garbage").write_bytes(b"{not json")
    orphan = {"Check": {"CheckID": "x", "Name": "x", "ServiceID": "gone"}, "ChkType": None}
    (tmp_path / "checks" / "orphan").write_text(json.dumps(orphan))
    again = boot(make_agent(tmp_path))
    assert set(again.local.all_services()) == {"a"}
    assert set(again.local.all_checks()) == {"service:a"}
    assert not (tmp_path / "checks" / "orphan").exists()


def test_the_saved_file_is_json_with_the_service(tmp_path: Path) -> None:
    agent = boot(make_agent(tmp_path))
    api_register(agent, {"Name": "a", "Port": 7})
    (path,) = (tmp_path / "services").iterdir()
    body = orjson.loads(path.read_bytes())
    assert body["Service"]["ID"] == "a" and body["Service"]["Port"] == 7
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


async def ttl_update(agent: AgentLocal, verb: str, check_id: str) -> None:
    endpoint = AgentEndpoint(agent.ctx, agent)
    request = make_mocked_request(
        "PUT", f"/v1/agent/check/{verb}/{check_id}", match_info={"check_id": check_id}
    )
    handler = {"pass": endpoint.check_pass, "warn": endpoint.check_warn}[verb]
    await handler(request)


@pytest.mark.parametrize("verb", ["pass", "warn"])
async def test_ttl_status_set_through_the_api_is_restored_until_it_expires(
    tmp_path: Path, verb: str
) -> None:
    agent = boot(make_agent(tmp_path))
    api_register(agent, {"Name": "a", "Check": {"TTL": "30s"}})
    agent.runners.start()
    try:
        await ttl_update(agent, verb, "service:a")
    finally:
        agent.runners.stop()
    want = PASSING if verb == "pass" else WARNING
    assert agent.local.check("service:a")["Status"] == want  # type: ignore[index]
    again = boot(make_agent(tmp_path))
    assert again.local.check("service:a")["Status"] == want  # type: ignore[index]
    # Expired: the saved status is dropped, the check starts critical.
    (state,) = (tmp_path / "checks" / "state").iterdir()
    body = orjson.loads(state.read_bytes())
    body["Expires"] = time.time() - 1
    state.write_bytes(orjson.dumps(body))
    third = boot(make_agent(tmp_path))
    assert third.local.check("service:a")["Status"] == CRITICAL  # type: ignore[index]
    assert not state.exists()


async def test_ttl_status_of_a_config_check_is_restored(tmp_path: Path) -> None:
    config = {"services": ({"name": "api", "check": {"id": "api-ttl", "ttl": "5m"}},)}
    agent = boot(make_agent(tmp_path, **config))
    agent.runners.start()
    try:
        await ttl_update(agent, "pass", "api-ttl")
    finally:
        agent.runners.stop()
    again = boot(make_agent(tmp_path, **config))
    assert again.local.check("api-ttl")["Status"] == PASSING  # type: ignore[index]


def test_a_change_during_an_in_flight_sync_is_not_lost(tmp_path: Path) -> None:
    """A check that changes status while the write registering its old status is in flight
    stays out of sync (the next sync sends the new status)."""
    agent = boot(make_agent(tmp_path))
    api_register(agent, {"Name": "a", "Check": {"TTL": "10s"}})
    local = agent.local
    as_of = local.version
    ops = local.pending()
    assert [op for op, *_ in ops] == ["register"]
    local.update_check("service:a", PASSING, "ok")  # meanwhile
    for op, _, sids, cids in ops:
        local.mark_synced(op, sids, cids, as_of)
    assert local.services["a"].in_sync
    assert not local.checks["service:a"].in_sync
    ((op, body, _, _),) = local.pending()
    assert body["Check"]["Status"] == PASSING
    # A service removed and re-added while its deregistration is in flight is kept.
    local.remove_service("a")
    as_of = local.version
    ops = local.pending()
    api_register(agent, {"Name": "a", "Port": 5})
    for op, _, sids, cids in ops:
        local.mark_synced(op, sids, cids, as_of)
    assert local.service("a") is not None and not local.services["a"].in_sync
