"""Prepared queries: body decoding and Consul's validation, the table's checks, templates, and
the PREPARED_QUERY command. Pure: no sockets."""

from __future__ import annotations

from typing import Any

import pytest

# server.endpoints imported first hits an import cycle through server.agent (not ours); the
# agent package imported first resolves it.
from server.endpoints.query import decode_query, ordered_query, validate_query
from server.fsm import ConsulFSM, MessageType, encode_command
from server.state import Session, StateStore
from server.state.prepared_queries import PreparedQueryError, render_template

QID = "aaaaaaaa-0000-0000-0000-000000000001"
QID2 = "aaaaaaaa-0000-0000-0000-000000000002"


def _query(query_id: str = QID, **fields: Any) -> dict[str, Any]:
    if not any(k in fields for k in ("Name", "Template", "Session")):
        fields["Name"] = f"q-{query_id}"
    query = decode_query({"Service": {"Service": "redis"}, **fields})
    query["ID"] = query_id
    validate_query(query)
    return query


def _apply(fsm: ConsulFSM, index: int, op: str, query: dict[str, Any]) -> Any:
    return fsm.apply(index, encode_command(MessageType.PREPARED_QUERY, {"Op": op, "Query": query}))


def test_decode_accepts_py_consul_lowercase_body() -> None:
    body = {
        "name": "fooquery",
        "service": {
            "service": "foo",
            "onlypassing": True,
            "tags": ["a", "!b"],
            "failover": {"nearestn": 2, "datacenters": ["dc2"]},
        },
        "dns": {"ttl": "10s"},
        "template": {"type": "name_prefix_match"},
    }
    query = decode_query(body)
    assert query["Name"] == "fooquery"
    assert query["Service"]["Service"] == "foo"
    assert query["Service"]["OnlyPassing"] is True
    assert query["Service"]["Failover"] == {"NearestN": 2, "Datacenters": ["dc2"], "Targets": None}
    assert query["DNS"] == {"TTL": "10s"}
    assert query["Template"] == {
        "Type": "name_prefix_match",
        "Regexp": "",
        "RemoveEmptyTags": False,
    }
    validate_query(query)
    # Go's field order for the API.
    assert list(ordered_query({**query, "ModifyIndex": 2, "CreateIndex": 2})) == [
        "ID",
        "Name",
        "Session",
        "Token",
        "Template",
        "Service",
        "DNS",
        "CreateIndex",
        "ModifyIndex",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Service": {"Service": "x"}}, "Must be bound to a session"),
        ({"Name": "q", "Service": {}}, "Must provide a Service name to query"),
        (
            {"Name": "q", "Service": {"Service": "x", "Failover": {"NearestN": -1}}},
            "Bad NearestN '-1', must be >= 0",
        ),
        (
            {
                "Name": "q",
                "Service": {
                    "Service": "x",
                    "Failover": {"NearestN": 1, "Targets": [{"Datacenter": "dc2"}]},
                },
            },
            "Targets cannot be populated with NearestN or Datacenters",
        ),
        ({"Name": "q", "Service": {"Service": "x"}, "DNS": {"TTL": "soon"}}, "Bad DNS TTL 'soon'"),
        (
            {"Name": "q", "Service": {"Service": "x"}, "Token": "<hidden>"},
            "it looks like a query definition with a redacted token",
        ),
    ],
)
def test_validation_messages(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        validate_query(decode_query(body))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("template", "service", "message"),
    [
        ({"Type": "other"}, "x", "failed compiling template: Bad Template.Type 'other'"),
        (
            {"Type": "name_prefix_match", "Regexp": "("},
            "x",
            "failed compiling template: Bad Regexp",
        ),
        (
            {"Type": "name_prefix_match"},
            "${nope}",
            "failed compiling template: Bad format '${nope}' in template: unknown variable accessed: nope",
        ),
    ],
)
def test_template_errors_come_from_the_state(
    template: dict[str, Any], service: str, message: str
) -> None:
    fsm = ConsulFSM(StateStore())
    query = _query(Template=template, Service={"Service": service})
    with pytest.raises(PreparedQueryError) as err:
        _apply(fsm, 5, "create", query)
    assert message in str(err.value)


def test_wrong_types_are_decode_errors() -> None:
    with pytest.raises(ValueError, match=r"Service\.OnlyPassing"):
        decode_query({"Service": {"Service": "x", "OnlyPassing": "yes"}})


def test_create_update_delete_and_name_rules() -> None:
    fsm = ConsulFSM(StateStore(node_exists=lambda node: True))
    store = fsm.store
    _apply(fsm, 5, "create", _query(Name="geo"))
    index, rows = store.prepared_queries.list_all(None)
    assert index == 5 and [r["ID"] for r in rows] == [QID]
    with pytest.raises(PreparedQueryError, match="name 'geo' aliases an existing query name"):
        _apply(fsm, 6, "create", _query(QID2, Name="geo"))
    with pytest.raises(PreparedQueryError, match=f"name '{QID}' aliases an existing query ID"):
        _apply(fsm, 6, "create", _query(QID2, Name=QID))
    with pytest.raises(PreparedQueryError, match='invalid session "nope"'):
        _apply(fsm, 6, "create", _query(QID2, Session="nope"))
    assert store.max_index("prepared-queries") == 5
    # Updating keeps CreateIndex and may keep its own name.
    _apply(fsm, 7, "update", _query(Name="geo", DNS={"TTL": "5s"}))
    _, row = store.prepared_queries.get(None, QID)
    assert row is not None
    assert (row["DNS"]["TTL"], row["CreateIndex"], row["ModifyIndex"]) == ("5s", 5, 7)
    # A name freed by a rename can be taken.
    _apply(fsm, 8, "update", _query(Name="geo2"))
    _apply(fsm, 9, "create", _query(QID2, Name="geo"))
    _apply(fsm, 10, "delete", {"ID": QID})
    assert store.prepared_queries.get(None, QID)[1] is None
    assert store.prepared_queries.resolve(None, "geo")[1]["ID"] == QID2  # type: ignore[index]
    store.check_invariants()
    restored = StateStore.restore(store.snapshot())
    assert restored.prepared_queries.list_all(None) == store.prepared_queries.list_all(None)
    restored.check_invariants()


def test_session_binding_checks_the_session() -> None:
    fsm = ConsulFSM(StateStore(node_exists=lambda node: True, check_status=lambda n, c: "passing"))
    fsm.store.session_create(3, Session(id="s1", node="n1"))
    _apply(fsm, 5, "create", _query(Session="s1"))
    assert fsm.store.prepared_queries.get(None, QID)[1]["Session"] == "s1"  # type: ignore[index]


def test_resolve_by_id_name_and_template_prefix() -> None:
    fsm = ConsulFSM(StateStore())
    store = fsm.store
    _apply(fsm, 5, "create", _query(Name="exact"))
    template = _query(
        QID2,
        Name="geo-",
        Template={
            "Type": "name_prefix_match",
            "Regexp": "^geo-(.*?)-(.*)$",
            "RemoveEmptyTags": True,
        },
        Service={"Service": "${match(1)}", "Tags": ["${match(2)}", "", "${name.suffix}"]},
    )
    _apply(fsm, 6, "create", template)
    assert store.prepared_queries.resolve(None, QID)[1]["Name"] == "exact"  # type: ignore[index]
    assert store.prepared_queries.resolve(None, "exact")[1]["ID"] == QID  # type: ignore[index]
    _, rendered = store.prepared_queries.resolve(None, "geo-db-primary")
    assert rendered is not None
    assert rendered["Service"]["Service"] == "db"
    assert rendered["Service"]["Tags"] == ["primary", "db-primary"]
    assert rendered["ID"] == QID2
    with pytest.raises(PreparedQueryError, match="templates can only be resolved up by name"):
        store.prepared_queries.resolve(None, QID2)
    assert store.prepared_queries.resolve(None, "other")[1] is None
    # Only one template may have an empty name.
    _apply(
        fsm,
        7,
        "create",
        _query("aaaaaaaa-0000-0000-0000-000000000003", Template={"Type": "name_prefix_match"}),
    )
    with pytest.raises(
        PreparedQueryError, match="a query template with an empty name already exists"
    ):
        _apply(
            fsm,
            8,
            "create",
            _query("aaaaaaaa-0000-0000-0000-000000000004", Template={"Type": "name_prefix_match"}),
        )
    # The empty-name template catches everything the others do not.
    assert store.prepared_queries.resolve(None, "other")[1]["ID"].endswith("3")  # type: ignore[index]


def test_render_name_variables() -> None:
    query = _query(
        Name="web-",
        Template={"Type": "name_prefix_match"},
        Service={"Service": "${name.prefix}x", "Tags": ["${name.full}", "${ name.suffix }"]},
    )
    rendered = render_template(query, "web-blue")
    assert rendered["Service"]["Service"] == "web-x"
    assert rendered["Service"]["Tags"] == ["web-blue", "blue"]


def test_destroying_the_session_deletes_its_queries() -> None:
    fsm = ConsulFSM(StateStore(node_exists=lambda node: True, check_status=lambda n, c: "passing"))
    fsm.store.session_create(3, Session(id="s1", node="n1"))
    _apply(fsm, 5, "create", _query(Session="s1"))
    _apply(fsm, 6, "create", _query(QID2))
    assert fsm.store.session_destroy(7, "s1") is True
    assert [q["ID"] for q in fsm.store.prepared_queries.list_all(None)[1]] == [QID2]
    assert fsm.store.max_index("prepared-queries") == 7
    fsm.store.check_invariants()
