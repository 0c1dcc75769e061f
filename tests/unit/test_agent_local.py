"""``server.agent.local``: the agent's services and checks, their Consul shapes, and the sync
plan (pure: no I/O, a fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from server.agent.local import (
    CRITICAL,
    NODE_MAINT,
    PASSING,
    WARNING,
    CheckType,
    LocalError,
    LocalState,
    aggregated_status,
    format_duration,
    parse_check_type,
    parse_duration_value,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def svc(name: str, sid: str = "", **extra: object) -> dict[str, object]:
    return {"ID": sid or name, "Service": name, "Tags": [], "Meta": {}, "Port": 0, **extra}


@pytest.fixture
def local() -> LocalState:
    return LocalState("node1", now=Clock())


# --- durations and definitions --------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (10, "10s"),
        (0.1, "100ms"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (60, "1m0s"),
        (3600, "1h0m0s"),
        (3725.5, "1h2m5.5s"),
        (2e-6, "2µs"),
        (5e-9, "5ns"),
    ],
)
def test_format_duration_matches_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_duration_values_are_go_strings_or_nanoseconds() -> None:
    assert parse_duration_value("10s") == 10.0
    assert parse_duration_value("1m30s") == 90.0
    assert parse_duration_value(10) == pytest.approx(1e-8)  # a bare number is nanoseconds
    assert parse_duration_value(None) == 0.0
    with pytest.raises(ValueError):
        parse_duration_value("ten seconds")
    with pytest.raises(ValueError):
        parse_duration_value(True)


def test_check_definition_fields_fold_case_and_snake_aliases() -> None:
    ct = parse_check_type(
        {
            "name": "web",
            "http": "http://x/",
            "interval": "5s",
            "timeout": "1s",
            "header": {"X-A": ["1"], "X-B": "2"},
            "tls_skip_verify": True,
            "DeregisterCriticalServiceAfter": "2m",
            "service_id": "s1",
        }
    )
    assert (ct.name, ct.http, ct.interval, ct.timeout) == ("web", "http://x/", 5.0, 1.0)
    assert ct.header == {"X-A": ["1"], "X-B": ["2"]}
    assert ct.tls_skip_verify and ct.service_id == "s1"
    assert ct.deregister_critical_service_after == 120.0
    assert ct.type() == "http"
    assert ct.definition() == {
        "HTTP": "http://x/",
        "TLSSkipVerify": True,
        "Header": {"X-A": ["1"], "X-B": ["2"]},
        "Interval": "5s",
        "Timeout": "1s",
        "DeregisterCriticalServiceAfter": "2m0s",
    }
    args = parse_check_type({"args": ["/bin/true"], "interval": "10s"})
    assert args.script_args == ["/bin/true"] and args.type() == "script"
    assert parse_check_type({"ttl": "1s"}).type() == "ttl"
    assert parse_check_type({"AliasService": "web"}).type() == "alias"
    with pytest.raises(ValueError, match="ScriptArgs"):
        parse_check_type({"args": "not a list"})


@pytest.mark.parametrize(
    ("definition", "error"),
    [
        ({"http": "http://x"}, "Interval must be > 0"),
        ({"ttl": "1s", "interval": "1s"}, "Interval and TTL cannot both be specified"),
        ({}, "TTL must be > 0 for TTL checks"),
        ({"AliasService": "x", "ttl": "1s"}, "TTL must be not be set for Alias checks"),
        ({"ttl": "1s"}, None),
    ],
)
def test_check_validation_texts_are_consuls(
    definition: dict[str, object], error: str | None
) -> None:
    result = parse_check_type(definition).validate()
    if error is None:
        assert result is None
    else:
        assert result is not None and result.startswith(error)


# --- services and their checks ------------------------------------------------------------


def test_service_checks_get_consul_ids_names_and_critical_start(local: LocalState) -> None:
    added = local.add_service(
        svc("web", Tags=["a"]), [CheckType(ttl=10), CheckType(tcp="127.0.0.1:1", interval=5)]
    )
    assert [c["CheckID"] for c, _ in added] == ["service:web:1", "service:web:2"]
    check = local.check("service:web:1")
    assert check is not None
    assert check["Name"] == "Service 'web' check"
    assert check["Status"] == CRITICAL
    assert (check["ServiceID"], check["ServiceName"], check["ServiceTags"]) == ("web", "web", ["a"])
    assert check["Type"] == "ttl" and check["Definition"] == {"TTL": "10s"}
    assert local.check("service:web:2")["Interval"] == "5s"  # type: ignore[index]
    # One check alone is "service:<id>", and an explicit status is kept.
    local.add_service(svc("db"), [CheckType(ttl=1, status=PASSING)])
    assert local.check("service:db")["Status"] == PASSING  # type: ignore[index]


def test_reregistering_keeps_check_status_and_replace_drops_others(local: LocalState) -> None:
    local.add_service(svc("web"), [CheckType(ttl=10)])
    local.add_check("extra", CheckType(name="extra", ttl=5, service_id="web"))
    local.update_check("service:web", PASSING, "fine")
    local.add_service(svc("web", Tags=["new"]), [CheckType(ttl=10)])
    check = local.check("service:web")
    assert check is not None and (check["Status"], check["Output"]) == (PASSING, "fine")
    assert local.check("extra")["ServiceTags"] == ["new"]  # type: ignore[index]
    local.add_service(svc("web"), [CheckType(ttl=10)], replace_existing_checks=True)
    assert local.check("extra") is None
    assert local.check("service:web") is not None


def test_remove_service_takes_its_checks_and_sidecar(local: LocalState) -> None:
    local.add_service(svc("web"), [CheckType(ttl=10)])
    local.add_service(svc("web-sidecar-proxy", "web-sidecar-proxy"), [], sidecar_of="web")
    local.add_check("node-check", CheckType(name="node-check", ttl=5))
    removed = local.remove_service("web")
    assert removed == ["service:web"]
    assert local.all_services() == {}
    assert list(local.all_checks()) == ["node-check"]
    with pytest.raises(LocalError) as err:
        local.remove_service("web")
    assert err.value.status == 404
    assert err.value.message == (
        'Unknown service ID "web". Ensure that the service ID is passed, not the service name.'
    )


def test_add_check_errors(local: LocalState) -> None:
    with pytest.raises(LocalError) as err:
        local.add_check("c", CheckType(name="c", ttl=1, service_id="nope"))
    assert (err.value.status, err.value.message) == (404, 'ServiceID "nope" does not exist')
    with pytest.raises(LocalError, match="Missing check name"):
        local.add_check("", CheckType(ttl=1))
    with pytest.raises(LocalError) as err:
        local.remove_check("nope")
    assert err.value.status == 404 and "Unknown check ID" in err.value.message
    # The check ID defaults to the name.
    assert local.add_check("", CheckType(name="by-name", ttl=1))["CheckID"] == "by-name"


def test_sidecar_ports_are_allocated_lowest_first_and_kept(local: LocalState) -> None:
    assert local.sidecar_port("a-sidecar-proxy") == 21000
    local.add_service(svc("a-sidecar-proxy", Port=21000), [])
    assert local.sidecar_port("b-sidecar-proxy") == 21001
    assert local.sidecar_port("a-sidecar-proxy") == 21000  # re-registration keeps its port


def test_maintenance_checks(local: LocalState) -> None:
    local.add_service(svc("web"), [])
    assert local.enable_service_maintenance("web", "upgrade")
    check = local.check("_service_maintenance:web")
    assert check is not None
    assert (check["Status"], check["Notes"], check["ServiceID"]) == (CRITICAL, "upgrade", "web")
    assert not local.enable_service_maintenance("web", "again")  # already on
    assert local.disable_service_maintenance("web")
    assert local.check("_service_maintenance:web") is None
    with pytest.raises(LocalError) as err:
        local.enable_service_maintenance("nope", "")
    assert err.value.status == 404
    assert local.enable_node_maintenance("")
    node = local.check(NODE_MAINT)
    assert node is not None and "no reason was provided" in node["Notes"]
    assert local.disable_node_maintenance()
    assert not local.disable_node_maintenance()


def test_aggregated_status_order() -> None:
    def c(cid: str, status: str) -> dict[str, str]:
        return {"CheckID": cid, "Status": status}

    assert aggregated_status([]) == PASSING
    assert aggregated_status([c("a", PASSING), c("b", WARNING)]) == WARNING
    assert aggregated_status([c("a", WARNING), c("b", CRITICAL)]) == CRITICAL
    assert aggregated_status([c("a", PASSING), c(NODE_MAINT, CRITICAL)]) == "maintenance"


# --- sync plan ------------------------------------------------------------------------------


def test_sync_plan_registers_services_with_their_checks_then_marks_synced(
    local: LocalState,
) -> None:
    local.add_service(svc("web"), [CheckType(ttl=10)])
    local.add_service(svc("db"), [CheckType(ttl=10), CheckType(ttl=20)])
    local.add_check("node", CheckType(name="node", ttl=5))
    ops = local.pending()
    assert [(op, sorted(body)) for op, body, _, _ in ops] == [
        ("register", ["Checks", "Service"]),
        ("register", ["Check", "Service"]),
        ("register", ["Check"]),
    ]
    assert ops[0][1]["Service"]["ID"] == "db"
    for op, _, sids, cids in ops:
        local.mark_synced(op, sids, cids)
    assert local.pending() == []
    # A status change re-sends only that service (with its checks).
    assert local.update_check("service:web", PASSING, "")
    assert not local.update_check("service:web", PASSING, "")  # no change, no sync
    ops = local.pending()
    assert len(ops) == 1 and ops[0][1]["Service"]["ID"] == "web"
    assert ops[0][1]["Check"]["Status"] == PASSING


def test_sync_plan_deregisters_removed_entries(local: LocalState) -> None:
    local.add_service(svc("web"), [CheckType(ttl=10)])
    local.add_check("node", CheckType(name="node", ttl=5))
    for op, _, sids, cids in local.pending():
        local.mark_synced(op, sids, cids)
    local.remove_check("node")
    local.remove_service("web")
    ops = local.pending()
    assert [(op, body) for op, body, _, _ in ops] == [
        ("deregister", {"CheckID": "node"}),
        ("deregister", {"CheckID": "service:web"}),
        ("deregister", {"ServiceID": "web"}),
    ]
    for op, _, sids, cids in ops:
        local.mark_synced(op, sids, cids)
    assert local.pending() == [] and local.services == {} and local.checks == {}
    # Anti-entropy re-registers everything that is in sync.
    local.add_service(svc("api"), [])
    for op, _, sids, cids in local.pending():
        local.mark_synced(op, sids, cids)
    local.mark_all_out_of_sync()
    assert [body["Service"]["ID"] for _, body, _, _ in local.pending()] == ["api"]


def test_critical_services_are_reaped_after_their_deadline() -> None:
    clock = Clock()
    local = LocalState("node1", now=clock)
    local.add_service(svc("web"), [CheckType(ttl=10, deregister_critical_service_after=60)])
    local.add_service(svc("db"), [CheckType(ttl=10)])
    clock.t += 61
    assert local.critical_services_to_reap() == ["web"]
    local.update_check("service:web", PASSING, "")
    assert local.critical_services_to_reap() == []
    local.update_check("service:web", CRITICAL, "")
    clock.t += 30
    assert local.critical_services_to_reap() == []
    clock.t += 31
    assert local.critical_services_to_reap() == ["web"]


def test_listeners_hear_every_change(local: LocalState) -> None:
    events: list[tuple[str, str]] = []
    local.listeners.append(lambda kind, ident: events.append((kind, ident)))
    local.add_service(svc("web"), [CheckType(ttl=10)])
    local.update_check("service:web", CRITICAL, "out")
    local.update_check("service:web", PASSING, "out")
    local.remove_service("web")
    assert events == [
        ("check-added", "service:web"),
        ("service-added", "web"),
        ("check-output", "service:web"),
        ("check-updated", "service:web"),
        ("check-removed", "service:web"),
        ("service-removed", "web"),
    ]


def test_anti_entropy_diff_against_the_catalog() -> None:
    from server.config.runtime import RuntimeConfig
    from server.endpoints.agent import AgentLocal
    from server.endpoints.context import ServerContext
    from server.fsm import ConsulFSM, MessageType, encode_command

    fsm = ConsulFSM()
    ctx = ServerContext(RuntimeConfig(node_name="n1", node_id=""), fsm, None)
    local = LocalState("n1", now=Clock())
    agent = AgentLocal(ctx, local)
    local.add_service(svc("web"), [CheckType(ttl=10)])
    local.add_service(svc("api"), [])
    index = 0

    def apply(kind: MessageType, body: dict[str, object]) -> None:
        nonlocal index
        index += 1
        fsm.apply(index, encode_command(kind, body))

    node = {"Node": "n1", "Address": "127.0.0.1", "Datacenter": "dc1"}
    for _op, body, sids, cids in local.pending():
        apply(MessageType.REGISTER, {**node, **body})
        local.mark_synced("register", sids, cids)
    # Out of band: the catalog loses "api", gains a stray service, and web's check changes.
    apply(MessageType.DEREGISTER, {"Node": "n1", "ServiceID": "api"})
    apply(MessageType.REGISTER, {**node, "Service": {"ID": "stray", "Service": "stray"}})
    apply(
        MessageType.REGISTER,
        {**node, "Check": {"CheckID": "service:web", "ServiceID": "web", "Status": "passing"}},
    )
    assert local.pending() == []
    assert asyncio.run(agent.anti_entropy_diff())
    plan = [
        (op, body.get("ServiceID") or body["Service"]["ID"]) for op, body, _, _ in local.pending()
    ]
    assert plan == [("deregister", "stray"), ("register", "api"), ("register", "web")]
