"""Anti-entropy pieces that are pure: Consul's full-sync scaling (``agent/ae``), the deferred
sync of output-only check changes (``check_update_interval``), and the comparison of the
local state with this node's catalog entries (``updateSyncState``). Fake clock, seeded
randomness, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from server.agent.local import (
    CRITICAL,
    PASSING,
    WARNING,
    CheckType,
    LocalState,
    full_sync_delay,
    scale_factor,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def svc(name: str, **extra: object) -> dict[str, object]:
    return {"ID": name, "Service": name, "Tags": [], "Meta": {}, "Port": 0, **extra}


def synced(local: LocalState) -> LocalState:
    """Everything pending marked as written."""
    as_of = local.version
    for op, _body, sids, cids in local.pending():
        local.mark_synced(op, sids, cids, as_of)
    assert local.pending() == []
    return local


def catalog_of(local: LocalState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The catalog's JSON for what the local state holds (as the servers would answer)."""
    services = {
        sid: dict(s, CreateIndex=5, ModifyIndex=5) for sid, s in local.all_services().items()
    }
    checks = {cid: dict(c, CreateIndex=5, ModifyIndex=5) for cid, c in local.all_checks().items()}
    return services, checks


def plan(local: LocalState) -> list[tuple[str, str]]:
    out = []
    for op, body, _sids, _cids in local.pending():
        if op == "deregister":
            out.append((op, body.get("ServiceID") or body["CheckID"]))
        elif "Service" in body:
            out.append((op, body["Service"]["ID"]))
        else:
            out.append((op, body["Check"]["CheckID"]))
    return out


# --- full-sync interval (Consul's agent/ae) ---------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "factor"),
    [(1, 1), (3, 1), (128, 1), (129, 2), (256, 2), (257, 3), (512, 3), (1000, 4), (8192, 7)],
)
def test_scale_factor_matches_consul(nodes: int, factor: int) -> None:
    assert scale_factor(nodes) == factor


def test_full_sync_delay_is_the_interval_plus_a_scaled_stagger() -> None:
    rng = random.Random(7)
    small = [full_sync_delay(60.0, 5, rng) for _ in range(500)]
    assert all(60.0 <= d < 120.0 for d in small)
    assert max(small) > 110 and min(small) < 70  # the stagger spreads over the whole range
    large = [full_sync_delay(60.0, 1000, rng) for _ in range(500)]
    assert all(60.0 <= d < 60.0 + 4 * 60.0 for d in large)
    assert max(large) > 200  # a 1000-node datacenter spreads its syncs over 4 minutes


# --- deferred check output (check_update_interval) --------------------------------------


def deferred_state(interval: float = 300.0) -> tuple[LocalState, Clock]:
    clock = Clock()
    local = LocalState("n1", now=clock, check_update_interval=interval, rng=random.Random(1))
    local.add_service(svc("web"), [CheckType(ttl=30, status=PASSING)])
    return synced(local), clock


def test_output_only_change_waits_for_the_check_update_interval() -> None:
    local, clock = deferred_state()
    events: list[tuple[str, str]] = []
    local.listeners.append(lambda kind, ident: events.append((kind, ident)))
    assert local.update_check("service:web", PASSING, "one")
    assert events == [("check-output", "service:web")]
    assert local.check("service:web")["Output"] == "one"  # the agent's view is current
    assert local.pending() == []  # ... the catalog's waits
    due = local.next_deferred()
    assert due is not None and clock.t + 150 <= due < clock.t + 450  # d/2 + stagger(d)
    local.update_check("service:web", PASSING, "two")
    assert local.next_deferred() == due  # one timer per check, not one per change
    clock.t = due - 1
    assert not local.fire_deferred() and local.pending() == []
    clock.t = due
    assert local.fire_deferred()
    assert local.next_deferred() is None
    [(op, body, _, cids)] = local.pending()
    assert (op, cids, body["Check"]["Output"]) == ("register", ["service:web"], "two")


def test_status_change_syncs_at_once_with_its_output() -> None:
    local, _ = deferred_state()
    local.update_check("service:web", PASSING, "one")
    local.update_check("service:web", WARNING, "two")
    [(_, body, _, _)] = local.pending()
    assert (body["Check"]["Status"], body["Check"]["Output"]) == (WARNING, "two")


def test_a_zero_interval_syncs_output_at_once() -> None:
    local, _ = deferred_state(interval=0)
    local.update_check("service:web", PASSING, "one")
    assert local.next_deferred() is None
    assert plan(local) == [("register", "web")]


def test_deferred_output_change_during_a_write_does_not_cancel_the_write() -> None:
    """The deferral does not touch ``changed_at``: a write planned before it is marked
    synced (the 'as_of' rule), and the timer later sends the new output."""
    local, clock = deferred_state()
    local.update_check("service:web", CRITICAL, "down")
    as_of = local.version
    [(op, _, sids, cids)] = local.pending()
    local.update_check("service:web", CRITICAL, "still down")  # while the write is in flight
    local.mark_synced(op, sids, cids, as_of)
    assert local.pending() == []
    due = local.next_deferred()
    assert due is not None
    clock.t = due
    local.fire_deferred()
    [(_, body, _, _)] = local.pending()
    assert body["Check"]["Output"] == "still down"


def test_status_change_during_a_write_is_still_sent() -> None:
    """The 'as_of' rule of mark_synced is kept for status changes."""
    local, _ = deferred_state()
    local.update_check("service:web", CRITICAL, "down")
    as_of = local.version
    [(op, _, sids, cids)] = local.pending()
    local.update_check("service:web", PASSING, "up")
    local.mark_synced(op, sids, cids, as_of)
    [(_, body, _, _)] = local.pending()
    assert body["Check"]["Status"] == PASSING


def test_a_removed_check_does_not_fire() -> None:
    local, clock = deferred_state()
    local.update_check("service:web", PASSING, "one")
    local.remove_service("web")
    clock.t += 1000
    assert not local.fire_deferred()
    assert plan(local) == [("deregister", "service:web"), ("deregister", "web")]


# --- updateSyncState ---------------------------------------------------------------------


def two_services() -> LocalState:
    local = LocalState("n1", now=Clock())
    local.add_service(svc("web", Port=80), [CheckType(ttl=30, status=PASSING)])
    local.add_service(svc("api", Port=81), [])
    local.add_check("", CheckType(name="mem", ttl=30))
    return local


def test_entries_the_catalog_already_has_are_not_registered_again() -> None:
    local = two_services()
    services, checks = catalog_of(local)
    local.mark_all_out_of_sync()
    local.update_sync_state(services, checks)
    assert local.pending() == []


def test_differences_are_registered_and_catalog_only_entries_removed() -> None:
    local = synced(two_services())
    services, checks = catalog_of(local)
    services["web"]["Port"] = 8080  # changed out of band
    del services["api"]  # lost from the catalog
    checks["mem"]["Status"] = PASSING  # locally it is critical
    services["stray"] = {"ID": "stray", "Service": "stray"}  # the agent never had these
    checks["stray-check"] = {"CheckID": "stray-check", "ServiceID": "stray"}
    checks["node-stray"] = {"CheckID": "node-stray", "ServiceID": ""}
    # Never removed: the servers' own service and the leader's serf check.
    services["consul"] = {"ID": "consul", "Service": "consul", "Port": 8300}
    checks["serfHealth"] = {"CheckID": "serfHealth", "Status": PASSING}
    local.update_sync_state(services, checks)
    assert plan(local) == [
        ("deregister", "node-stray"),
        ("deregister", "stray"),  # takes stray-check with it
        ("register", "api"),
        ("register", "web"),
        ("register", "mem"),
    ]


def test_a_deferred_check_is_compared_without_its_output() -> None:
    clock = Clock()
    local = LocalState("n1", now=clock, check_update_interval=300, rng=random.Random(3))
    local.add_service(svc("web"), [CheckType(ttl=30, status=PASSING)])
    synced(local)
    services, checks = catalog_of(local)
    local.update_check("service:web", PASSING, "new output")
    local.mark_all_out_of_sync()
    local.update_sync_state(services, checks)
    assert local.pending() == []  # the full sync does not bypass the deferral
    clock.t += 1000
    local.fire_deferred()
    local.update_sync_state(services, checks)  # no timer now: the output counts
    assert plan(local) == [("register", "web")]


def test_entries_changed_while_the_catalog_was_read_are_left_alone() -> None:
    local = synced(two_services())
    services, checks = catalog_of(local)
    as_of = local.version
    # Changed and synced after the read: the old catalog copy must not undo "in sync" ...
    local.update_check("mem", PASSING, "")
    synced(local)
    # ... and a change still pending must stay pending even if the old copy matches it.
    local.update_check("service:web", CRITICAL, "x")
    local.update_check("service:web", PASSING, "")
    local.update_sync_state(services, checks, as_of=as_of)
    assert plan(local) == [("register", "web")]


# --- AgentLocal against a server's store --------------------------------------------------


def test_full_sync_on_a_server_writes_only_what_differs() -> None:
    from server.config.runtime import RuntimeConfig
    from server.endpoints.agent import AgentLocal
    from server.endpoints.context import ServerContext
    from server.fsm import ConsulFSM, MessageType, encode_command

    fsm = ConsulFSM()
    ctx = ServerContext(RuntimeConfig(node_name="n1", node_id=""), fsm, None)
    local = two_services()
    agent = AgentLocal(ctx, local)
    writes: list[dict[str, Any]] = []
    index = 0

    async def apply(kind: MessageType, body: dict[str, Any]) -> Any:
        nonlocal index
        index += 1
        writes.append(body)
        return fsm.apply(index, encode_command(kind, body))

    ctx.apply = apply  # type: ignore[method-assign]
    ctx.leader_rpc = None

    async def run() -> None:
        assert await agent.full_sync()
        assert writes  # the node with web, api, mem
        writes.clear()
        assert await agent.full_sync()  # nothing differs now: no write at all
        assert writes == []
        await apply(
            MessageType.REGISTER,
            {
                "Node": "n1",
                "Address": "127.0.0.1",
                "SkipNodeUpdate": True,
                "Service": {"ID": "stray", "Service": "stray"},
            },
        )
        writes.clear()
        assert await agent.full_sync()
        assert writes == [{"Node": "n1", "ServiceID": "stray"}]
        _, found = fsm.store.catalog.node_services(None, "n1")
        assert found is not None
        assert sorted(s.id for s in found[1]) == ["api", "web"]

    asyncio.run(run())


def test_sync_loop_wakes_for_a_deferred_output_before_the_next_full_sync() -> None:
    """The sync loop sleeps until the next full sync (a minute here) unless a deferred
    output comes due earlier: it wakes for it and writes the check."""
    from server.config.runtime import RuntimeConfig
    from server.endpoints.agent import AgentLocal
    from server.endpoints.context import ServerContext
    from server.fsm import ConsulFSM, MessageType, encode_command

    fsm = ConsulFSM()
    ctx = ServerContext(RuntimeConfig(node_name="n1", node_id=""), fsm, None)
    local = LocalState("n1", check_update_interval=0.2, rng=random.Random(5))
    local.add_service(svc("web"), [CheckType(ttl=30, status=PASSING)])
    agent = AgentLocal(ctx, local)
    agent.ae_interval = 60.0
    writes: list[dict[str, Any]] = []
    index = 0

    async def apply(kind: MessageType, body: dict[str, Any]) -> Any:
        nonlocal index
        index += 1
        writes.append(body)
        return fsm.apply(index, encode_command(kind, body))

    ctx.apply = apply  # type: ignore[method-assign]

    async def run() -> None:
        agent._trigger = asyncio.Event()
        agent._changed = asyncio.Event()
        task = asyncio.create_task(agent._sync_loop())
        try:
            while agent.full_syncs < 1:
                await asyncio.sleep(0.01)
            writes.clear()
            local.update_check("service:web", PASSING, "new output")
            await asyncio.sleep(0.05)
            assert writes == []  # deferred: at least 0.1 s
            for _ in range(100):
                if writes:
                    break
                await asyncio.sleep(0.01)
            requests = [r for w in writes for r in w.get("Requests") or [w]]  # batched or not
            assert [r["Check"]["Output"] for r in requests] == ["new output"]
            assert agent.full_syncs == 1  # no full sync was needed for it
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())
