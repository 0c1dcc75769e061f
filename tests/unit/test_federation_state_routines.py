"""The federation-state routines (``server.federation.fedstate``): the replication diff, the
pacing helpers, the mesh-gateway dump, and each routine against a fake server context (a real
FSM, no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto import server_rpc_pb2 as pb
from server.config.runtime import RuntimeConfig
from server.federation import fedstate
from server.federation.fedstate import (
    AntiEntropy,
    Backoff,
    LocatorFeed,
    Pruner,
    RateLimiter,
    Replicator,
    diff_states,
    federation_services,
    mesh_gateway_dump,
)
from server.fsm import ConsulFSM, MessageType, decode_command, encode_command
from server.state import StateStore, WatchSet

# --- the diff --------------------------------------------------------------------------------


def _rec(dc: str, modify: int) -> dict[str, Any]:
    return {"Datacenter": dc, "ModifyIndex": modify, "CreateIndex": 1, "UpdatedAt": "t"}


def test_diff_examples() -> None:
    local = [_rec("dc1", 10), _rec("dc3", 4)]
    remote = [_rec("dc2", 12), _rec("dc1", 15), _rec("dc4", 3)]
    upserts, deletes = diff_states(local, remote, 12)
    assert deletes == ["dc3"]
    # dc1 is in both and changed after 12; dc2 and dc4 are new (whatever their index).
    assert [(u["Datacenter"], u["PrimaryModifyIndex"]) for u in upserts] == [
        ("dc1", 15),
        ("dc2", 12),
        ("dc4", 3),
    ]
    assert diff_states(local, [_rec("dc1", 15), _rec("dc3", 4)], 15) == ([], [])
    assert remote[1].get("PrimaryModifyIndex") is None  # the input is not changed


_dcs = st.sets(st.sampled_from([f"dc{i}" for i in range(8)]), max_size=8)


@given(
    local_dcs=_dcs,
    remote=st.dictionaries(st.sampled_from([f"dc{i}" for i in range(8)]), st.integers(1, 50)),
    last=st.integers(0, 60),
)
def test_diff_makes_local_match_remote(
    local_dcs: set[str], remote: dict[str, int], last: int
) -> None:
    local = [_rec(dc, 1) for dc in sorted(local_dcs)]
    remote_rows = [_rec(dc, idx) for dc, idx in remote.items()]
    upserts, deletes = diff_states(local, remote_rows, last)
    assert deletes == sorted(local_dcs - remote.keys())
    names = [u["Datacenter"] for u in upserts]
    assert names == sorted(names)
    for u in upserts:
        assert u["PrimaryModifyIndex"] == remote[u["Datacenter"]]
    expected = {dc for dc, idx in remote.items() if dc not in local_dcs or idx > last}
    assert set(names) == expected
    # Applying the diff leaves exactly the remote datacenters.
    assert (local_dcs - set(deletes)) | set(names) == set(remote)


# --- pacing ------------------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 10.0)
    assert [b.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    b.reset()
    assert b.next() == 0.5


def test_rate_limiter_allows_a_burst_then_one_per_second() -> None:
    limiter = RateLimiter(1.0, 5, now=100.0)
    assert [limiter.delay(100.0) for _ in range(5)] == [0.0] * 5
    assert limiter.delay(100.0) == pytest.approx(1.0)
    assert limiter.delay(100.0) == pytest.approx(2.0)
    limiter = RateLimiter(1.0, 5, now=0.0)
    for _ in range(5):
        limiter.delay(0.0)
    assert limiter.delay(2.0) == 0.0  # two tokens came back
    assert limiter.delay(2.0) == 0.0
    assert limiter.delay(2.0) > 0.0
    limiter = RateLimiter(1.0, 5, now=0.0)
    assert limiter.delay(1000.0) == 0.0  # never more than the burst saved
    for _ in range(4):
        limiter.delay(1000.0)
    assert limiter.delay(1000.0) > 0.0


# --- the catalog dump -------------------------------------------------------------------------


def _register(fsm: ConsulFSM, index: int, node: str, service: dict[str, Any], **extra: Any) -> None:
    body = {"Node": node, "Address": "198.18.0.5", "Service": service, **extra}
    fsm.apply(index, encode_command(MessageType.REGISTER, body))


def _gateway(name: str = "mesh-gateway", sid: str = "mesh-gateway") -> dict[str, Any]:
    return {
        "Kind": "mesh-gateway",
        "ID": sid,
        "Service": name,
        "Port": 8443,
        "Meta": {"consul-wan-federation": "1"},
        "TaggedAddresses": {"wan": {"Address": "198.19.0.1", "Port": 443}},
    }


def test_mesh_gateway_dump_lists_every_gateway_with_checks_in_node_order() -> None:
    fsm = ConsulFSM(StateStore())
    _register(fsm, 5, "node-b", _gateway())
    _register(fsm, 6, "node-a", _gateway("gw-other", "gw2"))
    _register(fsm, 7, "node-a", {"ID": "web", "Service": "web", "Port": 80})
    check = {"CheckID": "gw", "Status": "critical", "ServiceID": "gw2"}
    _register(fsm, 8, "node-a", _gateway("gw-other", "gw2"), Check=check)
    ws = WatchSet()
    index, dump = mesh_gateway_dump(fsm.store, ws)
    assert index >= 8
    assert [(c["Node"]["Node"], c["Service"]["ID"]) for c in dump] == [
        ("node-a", "gw2"),
        ("node-b", "mesh-gateway"),
    ]
    assert [c["CheckID"] for c in dump[0]["Checks"]] == ["gw"]
    assert dump[1]["Service"]["TaggedAddresses"]["wan"] == {"Address": "198.19.0.1", "Port": 443}
    assert not ws.fired
    # A check status change on a gateway wakes the dump's watch.
    check = {"CheckID": "gw", "Status": "passing", "ServiceID": "gw2"}
    _register(fsm, 9, "node-a", _gateway("gw-other", "gw2"), Check=check)
    assert ws.fired


# --- the routines, against a fake context --------------------------------------------------


class FakeRemote:
    def __init__(self) -> None:
        self.applied: list[tuple[str, Any]] = []
        self.replies: asyncio.Queue[pb.HttpResponse | Exception] = asyncio.Queue()
        self.requests: list[pb.HttpRequest] = []

    async def apply(self, dc: str, command: bytes) -> Any:
        self.applied.append((dc, decode_command(command)[1]))
        return True

    async def forward_http(
        self, dc: str, request: pb.HttpRequest, timeout: float
    ) -> pb.HttpResponse:
        self.requests.append(request)
        reply = await self.replies.get()
        if isinstance(reply, Exception):
            raise reply
        return reply


class FakeLocator:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.reports: list[bool] = []

    def update(self, states: dict[str, Any]) -> None:
        self.updates.append(states)

    def report_replication(self, ok: bool) -> None:
        self.reports.append(ok)


class FakeRouter:
    def __init__(self, dcs: list[str]) -> None:
        self.dcs = dcs

    def datacenters(self) -> list[str]:
        return list(self.dcs)


class FakeCtx:
    """What the routines use of a ``ServerContext``: a real FSM, writes applied at once."""

    def __init__(self, dc: str = "dc1", primary: str = "") -> None:
        self.config = RuntimeConfig(datacenter=dc, primary_datacenter=primary, server=True)
        self.fsm = ConsulFSM(StateStore())
        self.raft = None
        self.closed = False
        self.index = 100
        self.remote = FakeRemote()
        self.locator = FakeLocator()
        self.router = FakeRouter([dc])
        self.services: list[Any] = []

    @property
    def store(self) -> StateStore:
        return self.fsm.store

    async def apply(self, kind: MessageType, body: Any) -> Any:
        self.index += 1
        return self.fsm.apply(self.index, encode_command(kind, body))

    def add_service(self, service: Any) -> None:
        self.services.append(service)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_anti_entropy_in_the_primary_writes_its_record_through_raft() -> None:
    ctx = FakeCtx("dc1")
    ae = AntiEntropy(ctx)  # type: ignore[arg-type]
    await ae.leadership_changed(True)
    try:
        table = ctx.store.federation_states
        await _until(lambda: table.peek("dc1") is not None)
        assert "MeshGateways" not in table.peek("dc1")  # type: ignore[operator]
        _register(ctx.fsm, 50, "gw-node", _gateway())
        await _until(lambda: "MeshGateways" in (table.peek("dc1") or {}))
        row = table.peek("dc1")
        assert row is not None and row["UpdatedAt"].endswith("Z")
        assert row["MeshGateways"][0]["Node"]["Node"] == "gw-node"
        writes = ctx.index
        # A change that leaves the gateways as they are writes nothing.
        _register(ctx.fsm, 51, "other", {"ID": "web", "Service": "web"})
        await asyncio.sleep(0.1)
        assert ctx.index == writes
    finally:
        await ae.leadership_changed(False)
    assert ae._task is None
    assert ctx.remote.applied == []


async def test_anti_entropy_in_a_secondary_writes_to_the_primary_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fedstate, "SYNC_INTERVAL", 0.05)
    ctx = FakeCtx("dc2", primary="dc1")
    ae = AntiEntropy(ctx)  # type: ignore[arg-type]
    await ae.start()
    await ae.leadership_changed(True)
    try:
        await _until(lambda: len(ctx.remote.applied) == 1)
        dc, body = ctx.remote.applied[0]
        assert dc == "dc1"
        assert body["Op"] == "upsert" and body["Datacenter"] == "dc1"
        assert body["State"]["Datacenter"] == "dc2" and body["State"]["UpdatedAt"]
        # Replication has not brought the record back: no rewrite loop meanwhile.
        await asyncio.sleep(0.3)
        assert len(ctx.remote.applied) == 1
        # Replication brings it back: still nothing more to write.
        replicated = dict(body["State"], PrimaryModifyIndex=7)
        await ctx.apply(MessageType.FEDERATION_STATE, {"Op": "upsert", "State": replicated})
        await asyncio.sleep(0.2)
        assert len(ctx.remote.applied) == 1
        # A gateway appears: one more write.
        _register(ctx.fsm, 300, "gw-node", _gateway())
        await _until(lambda: len(ctx.remote.applied) == 2)
        assert ctx.remote.applied[1][1]["State"]["MeshGateways"][0]["Node"]["Node"] == "gw-node"
    finally:
        await ae.stop()


async def test_anti_entropy_retries_a_failed_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fedstate, "SYNC_INTERVAL", 0.01)
    ctx = FakeCtx("dc2", primary="dc1")
    calls: list[int] = []

    async def flaky(dc: str, command: bytes) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Remote DC has no server currently reachable")
        return True

    ctx.remote.apply = flaky  # type: ignore[method-assign]
    ae = AntiEntropy(ctx)  # type: ignore[arg-type]
    await ae.leadership_changed(True)
    try:
        await _until(lambda: len(calls) == 2)  # after the first backoff (0.5 s)
    finally:
        await ae.stop()


def _reply(states: list[dict[str, Any]], index: int, status: int = 200) -> pb.HttpResponse:
    return pb.HttpResponse(
        status=status,
        headers=[pb.Header(name="X-Consul-Index", value=str(index))],
        body=orjson.dumps(states),
    )


async def test_replicator_mirrors_the_primary_and_reports_each_fetch() -> None:
    ctx = FakeCtx("dc2", primary="dc1")
    await ctx.apply(MessageType.FEDERATION_STATE, {"Op": "upsert", "State": {"Datacenter": "gone"}})
    rep = Replicator(ctx)  # type: ignore[arg-type]
    primary_rows = [
        {"Datacenter": "dc1", "UpdatedAt": "2024-01-01T00:00:00Z", "CreateIndex": 3,
         "ModifyIndex": 9, "PrimaryModifyIndex": 9},
        {"Datacenter": "dc2", "UpdatedAt": "2024-01-01T00:00:01Z", "CreateIndex": 4,
         "ModifyIndex": 11, "PrimaryModifyIndex": 11,
         "MeshGateways": [{"Node": {"Node": "g"}, "Service": {"ID": "m"}, "Checks": []}]},
    ]  # fmt: skip
    ctx.remote.replies.put_nowait(_reply(primary_rows, 11))
    await rep.replicate_once()
    table = ctx.store.federation_states
    assert table.datacenters() == ["dc1", "dc2"]
    assert table.peek("dc1")["PrimaryModifyIndex"] == 9  # type: ignore[index]
    assert table.peek("dc2")["UpdatedAt"] == "2024-01-01T00:00:01Z"  # type: ignore[index]
    assert rep.last_remote_index == 11
    request = ctx.remote.requests[0]
    assert request.method == "GET"
    assert request.path_qs.startswith("/v1/internal/federation-states?stale&index=0&wait=")
    # Nothing new: no write.
    writes = ctx.index
    ctx.remote.replies.put_nowait(_reply(primary_rows, 11))
    await rep.replicate_once()
    assert ctx.index == writes
    assert "index=11" in ctx.remote.requests[1].path_qs
    # A failed fetch is reported and raised; the index stays.
    ctx.remote.replies.put_nowait(RuntimeError("No path to datacenter"))
    with pytest.raises(RuntimeError):
        await rep.replicate_once()
    ctx.remote.replies.put_nowait(_reply([], 11, status=500))
    with pytest.raises(RuntimeError):
        await rep.replicate_once()
    assert rep.last_remote_index == 11
    assert ctx.locator.reports == [True, True, False, False]
    # The primary's index went backwards (restored): start over, every record is re-upserted.
    primary_rows[0]["ModifyIndex"] = 2
    ctx.remote.replies.put_nowait(_reply(primary_rows[:1], 2))
    await rep.replicate_once()
    assert table.datacenters() == ["dc1"]
    assert table.peek("dc1")["PrimaryModifyIndex"] == 2  # type: ignore[index]
    assert rep.last_remote_index == 2


async def test_replicator_loop_runs_only_while_leader_and_backs_off() -> None:
    ctx = FakeCtx("dc2", primary="dc1")
    rep = Replicator(ctx)  # type: ignore[arg-type]
    ctx.remote.replies.put_nowait(RuntimeError("down"))
    ctx.remote.replies.put_nowait(_reply([{"Datacenter": "dc1", "ModifyIndex": 5}], 5))
    await rep.leadership_changed(True)
    try:
        await _until(lambda: ctx.store.federation_states.peek("dc1") is not None)
        assert ctx.locator.reports[:2] == [False, True]
    finally:
        await rep.leadership_changed(False)
    assert rep._task is None


async def test_pruner_deletes_records_of_unknown_datacenters() -> None:
    ctx = FakeCtx("dc1")
    for dc in ("dc1", "dc2", "dc3"):
        await ctx.apply(MessageType.FEDERATION_STATE, {"Op": "upsert", "State": {"Datacenter": dc}})
    ctx.router.dcs = ["dc1", "dc2"]
    pruner = Pruner(ctx)  # type: ignore[arg-type]
    assert await pruner.prune_once() == ["dc3"]
    assert ctx.store.federation_states.datacenters() == ["dc1", "dc2"]
    ctx.router.dcs = []  # the router forgot even us: our own record stays
    assert await pruner.prune_once() == ["dc2"]
    assert ctx.store.federation_states.datacenters() == ["dc1"]
    ctx.router = None  # type: ignore[assignment]
    assert await pruner.prune_once() == []


async def test_pruner_loop_waits_an_interval_first() -> None:
    ctx = FakeCtx("dc1")
    await ctx.apply(MessageType.FEDERATION_STATE, {"Op": "upsert", "State": {"Datacenter": "x"}})
    ctx.router.dcs = ["dc1"]
    pruner = Pruner(ctx, interval=0.05)  # type: ignore[arg-type]
    await pruner.leadership_changed(True)
    try:
        assert ctx.store.federation_states.datacenters() == ["x"]
        await _until(lambda: ctx.store.federation_states.datacenters() == [])
    finally:
        await pruner.stop()


async def test_locator_feed_follows_the_table_on_every_server() -> None:
    ctx = FakeCtx("dc1")
    feed = LocatorFeed(ctx)  # type: ignore[arg-type]
    await feed.start()  # not leader-only
    try:
        await _until(lambda: ctx.locator.updates == [{}])
        gw = {"Node": {"Node": "g"}, "Service": {"ID": "m"}, "Checks": []}
        state = {"Datacenter": "dc2", "MeshGateways": [gw]}
        await ctx.apply(MessageType.FEDERATION_STATE, {"Op": "upsert", "State": state})
        await _until(lambda: len(ctx.locator.updates) == 2)
        assert ctx.locator.updates[1] == {"dc2": [gw]}
        # A write that leaves the gateways alone is not passed on.
        await ctx.apply(
            MessageType.FEDERATION_STATE, {"Op": "upsert", "State": {"Datacenter": "dc3"}}
        )
        await asyncio.sleep(0.05)
        assert len(ctx.locator.updates) == 2
        await feed.leadership_changed(True)  # ignored
        assert feed._task is not None
    finally:
        await feed.stop()


def test_federation_services_by_role_and_only_once() -> None:
    primary = FakeCtx("dc1")
    kinds = [type(s) for s in federation_services(primary)]  # type: ignore[arg-type]
    assert kinds == [AntiEntropy, LocatorFeed, Pruner]
    assert federation_services(primary) == []  # type: ignore[arg-type]
    secondary = FakeCtx("dc2", primary="dc1")
    kinds = [type(s) for s in federation_services(secondary)]  # type: ignore[arg-type]
    assert kinds == [AntiEntropy, LocatorFeed, Replicator]
    client = FakeCtx("dc1")
    client.fsm = None  # type: ignore[assignment]
    assert federation_services(client) == []  # type: ignore[arg-type]
