"""Sessions in the state store: creation checks, reads, invalidation behaviors, Consul's
endpoint validation texts and Go duration parsing/formatting."""

from __future__ import annotations

import pytest

from server.state import (
    SESSION_TTL_MAX_NS,
    TABLE_KVS,
    TABLE_SESSIONS,
    DirEntry,
    ServiceCheck,
    Session,
    StateError,
    StateStore,
    format_duration,
    parse_duration,
    validate_session_request,
)


def _store() -> StateStore:
    """A store whose catalog hooks accept any node and check (these tests are about sessions)."""
    return StateStore(node_exists=lambda node: True, check_status=lambda node, check: "passing")


S1 = "11111111-2222-3333-4444-555555555555"
S2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
S3 = "00000000-0000-0000-0000-000000000003"
SECOND = 1_000_000_000


# --- create ------------------------------------------------------------------------------


def test_create_sets_indexes_and_defaults_the_behavior() -> None:
    store = _store()
    row = store.session_create(3, Session(id=S1, node="node1", behavior=""))
    assert (row.create_index, row.modify_index, row.behavior) == (3, 3, "release")
    assert store.session_get(None, S1) == (3, row)
    assert store.max_index(TABLE_SESSIONS) == 3


@pytest.mark.parametrize(
    ("session", "text"),
    [
        (Session(id="", node="n"), "Missing session ID"),
        (Session(id=S1, node="n", behavior="nope"), "Invalid session behavior: nope"),
        (Session(id=S1, node="ghost"), "Missing node registration"),
        (
            Session(id=S1, node="n", node_checks=("serfHealth", "missing")),
            "Missing check 'missing' registration",
        ),
        (
            Session(id=S1, node="n", service_checks=(ServiceCheck("web-check"),)),
            "Check 'web-check' is in critical state",
        ),
        (Session(id=S1, node="n", checks=("missing",)), "Missing check 'missing' registration"),
    ],
)
def test_create_checks_use_consuls_texts(session: Session, text: str) -> None:
    statuses = {("n", "serfHealth"): "passing", ("n", "web-check"): "critical"}
    store = StateStore(
        node_exists=lambda node: node == "n",
        check_status=lambda node, check: statuses.get((node, check)),
    )
    with pytest.raises(StateError) as err:
        store.session_create(1, session)
    assert str(err.value) == text
    assert store.max_index(TABLE_SESSIONS) == 0
    assert store.session_list(None) == (1, [])


def test_default_catalog_hooks_need_a_registered_node() -> None:
    store = StateStore()  # the real catalog: nothing is registered
    with pytest.raises(StateError, match="Missing node registration"):
        store.session_create(1, Session(id=S1, node="anything", node_checks=("whatever",)))


# --- reads -------------------------------------------------------------------------------


def test_list_node_sessions_and_case_insensitive_lookups() -> None:
    store = _store()
    store.session_create(1, Session(id=S2, node="Node1"))
    store.session_create(2, Session(id=S1, node="node1"))
    store.session_create(3, Session(id=S3, node="node2"))
    index, sessions = store.session_list(None)
    assert index == 3
    assert [s.id for s in sessions] == [S3, S1, S2]
    assert [s.id for s in store.node_sessions(None, "NODE1")[1]] == [S1, S2]
    assert store.node_sessions(None, "node3") == (3, [])
    assert store.session_get(None, S1.upper())[1] == store.session_get(None, S1)[1]
    assert store.session_get(None, "missing") == (3, None)
    assert _store().session_get(None, S1) == (1, None)


def test_renew_is_a_read() -> None:
    store = _store()
    store.session_create(4, Session(id=S1, node="n", ttl="30s"))
    before = store.snapshot()
    index, session = store.session_renew(S1)
    assert index == 4 and session is not None and session.ttl == "30s"
    assert store.session_renew(S2) == (4, None)
    assert store.snapshot() == before


def test_check_sessions_index() -> None:
    store = _store()
    store.session_create(1, Session(id=S1, node="n", node_checks=("serfHealth",)))
    store.session_create(
        2,
        Session(id=S2, node="n", node_checks=("serfHealth",), service_checks=(ServiceCheck("w"),)),
    )
    assert [s.id for s in store.check_sessions("N", "serfhealth")] == [S1, S2]
    assert [s.id for s in store.check_sessions("n", "w")] == [S2]
    store.session_destroy(3, S2)
    assert [s.id for s in store.check_sessions("n", "serfHealth")] == [S1]
    assert store.check_sessions("n", "w") == []


# --- destroy / invalidate ----------------------------------------------------------------


def test_destroy_with_behavior_release_releases_every_key() -> None:
    store = _store()
    store.session_create(1, Session(id=S1, node="n"))
    store.session_create(2, Session(id=S2, node="n"))
    assert store.kvs_lock(3, DirEntry("a", b"1", session=S1))
    assert store.kvs_lock(4, DirEntry("b", b"2", flags=9, session=S1))
    assert store.kvs_lock(5, DirEntry("c", b"3", session=S2))
    assert store.session_destroy(6, S1)
    assert store.session_get(None, S1) == (6, None)
    assert store.kvs_get(None, "a")[1] == DirEntry("a", b"1", 0, "", 1, 3, 6)
    assert store.kvs_get(None, "b")[1] == DirEntry("b", b"2", 9, "", 1, 4, 6)
    assert store.kvs_get(None, "c")[1] == DirEntry("c", b"3", 0, S2, 1, 5, 5)
    assert store.max_index(TABLE_KVS) == 6
    # Released keys can be taken by another session, with a new LockIndex.
    assert store.kvs_lock(7, DirEntry("a", b"x", session=S2))
    assert store.kvs_get(None, "a")[1] == DirEntry("a", b"x", 0, S2, 2, 3, 7)
    store.check_invariants()


def test_destroy_with_behavior_delete_deletes_every_key() -> None:
    store = _store()
    store.session_create(1, Session(id=S1, node="n", behavior="delete"))
    store.kvs_lock(2, DirEntry("lock/a", b"1", session=S1))
    store.kvs_lock(3, DirEntry("lock/b", b"2", session=S1))
    store.kvs_set(4, DirEntry("lock/c", b"3"))
    assert store.session_destroy(5, S1)
    assert [e.key for e in store.kvs_list(None, "lock/")[1]] == ["lock/c"]
    # The deletes left tombstones: the listing index does not go back.
    assert store.kvs_list(None, "lock/")[0] == 5
    assert store.kvs_get(None, "lock/a") == (5, None)
    store.check_invariants()


def test_destroy_of_an_unknown_session_is_a_noop() -> None:
    store = _store()
    store.session_create(1, Session(id=S1, node="n"))
    assert not store.session_destroy(2, S2)
    assert store.max_index(TABLE_SESSIONS) == 1


def test_destroy_is_case_insensitive_and_releases_locks_taken_with_any_case() -> None:
    store = _store()
    store.session_create(1, Session(id=S2, node="n"))
    assert store.kvs_lock(2, DirEntry("k", b"", session=S2.upper()))
    assert store.session_destroy(3, S2)
    entry = store.kvs_get(None, "k")[1]
    assert entry is not None and entry.session == ""


def test_a_session_can_be_recreated_with_the_same_id() -> None:
    store = _store()
    store.session_create(1, Session(id=S1, node="a"))
    store.session_create(2, Session(id=S1, node="b"))
    assert store.node_sessions(None, "a")[1] == []
    assert [s.node for s in store.node_sessions(None, "b")[1]] == ["b"]


# --- snapshot and API shape --------------------------------------------------------------


def test_sessions_survive_a_snapshot_round_trip() -> None:
    store = _store()
    store.session_create(
        1,
        Session(
            id=S1,
            node="n",
            name="lock",
            lock_delay=15 * SECOND,
            behavior="delete",
            ttl="10s",
            node_checks=("serfHealth",),
            service_checks=(ServiceCheck("web", "ns"),),
            checks=("old",),
        ),
    )
    store.session_create(2, Session(id=S2, node="m"))
    blob = store.snapshot()
    restored = StateStore.restore(blob)
    assert restored.session_list(None) == store.session_list(None)
    assert restored.snapshot() == blob
    assert [s.id for s in restored.check_sessions("n", "web")] == [S1]
    assert [s.id for s in restored.node_sessions(None, "m")[1]] == [S2]


def test_to_api_shape() -> None:
    session = Session(
        id=S1,
        node="node1",
        name="test",
        lock_delay=15 * SECOND,
        ttl="30s",
        node_checks=("serfHealth",),
        create_index=5,
        modify_index=5,
    )
    assert session.to_api() == {
        "ID": S1,
        "Name": "test",
        "Node": "node1",
        "LockDelay": 15_000_000_000,
        "Behavior": "release",
        "TTL": "30s",
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": None,
        "CreateIndex": 5,
        "ModifyIndex": 5,
    }
    api = Session(
        id=S1, node="n", service_checks=(ServiceCheck("w", "default"),), checks=("c",)
    ).to_api()
    assert api["ServiceChecks"] == [{"ID": "w", "Namespace": "default"}]
    assert api["Checks"] == ["c"]
    assert list(api)[-3:] == ["Checks", "CreateIndex", "ModifyIndex"]


# --- endpoint validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "op", "text"),
    [
        (Session(id="", node="n"), "destroy", "Must provide ID"),
        (Session(id=S1, node=""), "create", "Must provide Node"),
        (Session(id=S1, node="n", behavior="bogus"), "create", "Invalid Behavior setting 'bogus'"),
        (
            Session(id=S1, node="n", ttl="abc"),
            "create",
            "Session TTL 'abc' invalid: time: invalid duration \"abc\"",
        ),
        (
            Session(id=S1, node="n", ttl="10"),
            "create",
            "Session TTL '10' invalid: time: missing unit in duration \"10\"",
        ),
        (
            Session(id=S1, node="n", ttl="5s"),
            "create",
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]",
        ),
        (
            Session(id=S1, node="n", ttl="25h"),
            "create",
            "Invalid Session TTL '90000000000000', must be between [10s=24h0m0s]",
        ),
    ],
)
def test_validate_session_request_texts(session: Session, op: str, text: str) -> None:
    with pytest.raises(StateError) as err:
        validate_session_request(session, op=op)
    assert str(err.value) == text


def test_validate_session_request_accepts_valid_sessions() -> None:
    base = Session(id=S1, node="n", behavior="")
    assert validate_session_request(base).behavior == "release"
    for ttl in ["", "0", "0s", "10s", "24h", "1h30m", "86400s"]:
        session = Session(id=S1, node="n", ttl=ttl)
        assert validate_session_request(session) is session
    assert (
        validate_session_request(Session(id=S1, node="n", behavior="delete")).behavior == "delete"
    )
    # The minimum is the agent's session_ttl_min.
    with pytest.raises(StateError) as err:
        validate_session_request(Session(id=S1, node="n", ttl="30s"), ttl_min_ns=60 * SECOND)
    assert str(err.value) == "Invalid Session TTL '30000000000', must be between [1m0s=24h0m0s]"
    validate_session_request(Session(id=S1, node="n", ttl="2s"), ttl_min_ns=SECOND)


# --- Go durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("5s", 5 * SECOND),
        ("30s", 30 * SECOND),
        ("1478s", 1478 * SECOND),
        ("-5s", -5 * SECOND),
        ("+5s", 5 * SECOND),
        ("-0s", 0),
        ("5.6s", 5_600_000_000),
        ("5.s", 5 * SECOND),
        (".5s", 500_000_000),
        ("1.0s", SECOND),
        ("1.004s", 1_004_000_000),
        ("100.00100s", 100_001_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12\u00b5s", 12_000),
        ("12\u03bcs", 12_000),
        ("13ms", 13_000_000),
        ("14s", 14 * SECOND),
        ("15m", 15 * 60 * SECOND),
        ("16h", 16 * 3600 * SECOND),
        ("3h30m", (3 * 3600 + 30 * 60) * SECOND),
        ("10.5s4m", 4 * 60 * SECOND + 10_500_000_000),
        ("-2m3.4s", -(2 * 60 * SECOND + 3_400_000_000)),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("39h9m14.425s", 140_954_425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 1_200_000_000_000),
        ("9007199254740993ns", 9_007_199_254_740_993),
        ("9223372036854775807ns", 9_223_372_036_854_775_807),
        ("9223372036854775.807us", 9_223_372_036_854_775_807),
        ("-9223372036854775808ns", -9_223_372_036_854_775_808),
        ("0.100000000000000000000h", 360 * SECOND),
        ("0.830103483285477580700h", 2_988_372_539_827),
    ],
)
def test_parse_duration_matches_go(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("3", 'time: missing unit in duration "3"'),
        ("-", 'time: invalid duration "-"'),
        ("s", 'time: invalid duration "s"'),
        (".", 'time: invalid duration "."'),
        ("-.", 'time: invalid duration "-."'),
        (".s", 'time: invalid duration ".s"'),
        ("+.s", 'time: invalid duration "+.s"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("1\u00e9", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"'),
        ('1"s', 'time: unknown unit "\\"s" in duration "1\\"s"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("9223372036854775.808us", 'time: invalid duration "9223372036854775.808us"'),
        ("9223372036854ms775us808ns", 'time: invalid duration "9223372036854ms775us808ns"'),
        ("-9223372036854775809ns", 'time: invalid duration "-9223372036854775809ns"'),
    ],
)
def test_parse_duration_errors_match_go(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1100, "1.1\u00b5s"),
        (2_200_000, "2.2ms"),
        (3_300_000_000, "3.3s"),
        (4 * 60 * SECOND + 5 * SECOND, "4m5s"),
        (4 * 60 * SECOND + 5_001_000_000, "4m5.001s"),
        (5 * 3600 * SECOND + 6 * 60 * SECOND + 7_001_000_000, "5h6m7.001s"),
        (8 * 60 * SECOND + 1, "8m0.000000001s"),
        (10 * SECOND, "10s"),
        (60 * SECOND, "1m0s"),
        (SESSION_TTL_MAX_NS, "24h0m0s"),
        ((1 << 63) - 1, "2562047h47m16.854775807s"),
        (-(1 << 63), "-2562047h47m16.854775808s"),
        (-1100, "-1.1\u00b5s"),
    ],
)
def test_format_duration_matches_go(ns: int, text: str) -> None:
    assert format_duration(ns) == text
