"""SESSION and TXN Raft commands, the session create body decoding, and the leader's session
TTL timers (pure or with a fake context: no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

# server.agent first: importing server.endpoints on its own currently hits an import cycle
# (server.endpoints.agent -> server.agent.checks -> server.agent -> server.endpoints).
from server.commands.session import session_body, session_from_body
from server.commands.txn import encode_op, run_ops
from server.endpoints.http import HTTPError
from server.endpoints.session import decode_session
from server.fsm import ConsulFSM, MessageType, UnknownCommandError, encode_command, encode_entry
from server.leader.session_ttl import SessionTTLTimers
from server.state import (
    DirEntry,
    ServiceCheck,
    Session,
    StateError,
    StateStore,
)


def _fsm() -> ConsulFSM:
    return ConsulFSM(StateStore(node_exists=lambda node: node != "ghost", check_status=_status))


def _status(node: str, check_id: str) -> str | None:
    return {"serfHealth": "passing", "bad": "critical"}.get(check_id)


def _create(fsm: ConsulFSM, index: int, session: Session) -> Any:
    body = {"Op": "create", "Session": session_body(session)}
    return fsm.apply(index, encode_command(MessageType.SESSION, body))


def _destroy(fsm: ConsulFSM, index: int, session_id: str) -> Any:
    body = {"Op": "destroy", "Session": session_body(Session(id=session_id, node=""))}
    return fsm.apply(index, encode_command(MessageType.SESSION, body))


def _txn(fsm: ConsulFSM, index: int, *ops: tuple[str, DirEntry]) -> Any:
    body = {"Ops": [{"KV": {"Verb": verb, "DirEnt": encode_entry(e)}} for verb, e in ops]}
    return fsm.apply(index, encode_command(MessageType.TXN, body))


SID = "adf4238a-882b-9ddc-4a9d-5b6758e4159e"


# --- SESSION -------------------------------------------------------------------------------


def test_session_body_round_trips() -> None:
    session = Session(
        id=SID,
        node="n1",
        name="lock",
        lock_delay=15_000_000_000,
        behavior="delete",
        ttl="30s",
        node_checks=("serfHealth",),
        service_checks=(ServiceCheck("web-check", "default"),),
        checks=None,
    )
    assert session_from_body(session_body(session)) == session
    with pytest.raises(UnknownCommandError):
        session_from_body({"NodeChecks": 7})


def test_create_returns_the_id_and_stores_the_session() -> None:
    fsm = _fsm()
    session = Session(id=SID, node="n1", name="s", ttl="10s", node_checks=("serfHealth",))
    assert _create(fsm, 5, session) == SID
    index, stored = fsm.store.session_get(None, SID)
    assert index == 5
    assert stored is not None
    assert stored.to_api() == {
        "ID": SID,
        "Name": "s",
        "Node": "n1",
        "LockDelay": 0,
        "Behavior": "release",
        "TTL": "10s",
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": None,
        "CreateIndex": 5,
        "ModifyIndex": 5,
    }


def test_create_errors_are_consuls_and_change_nothing() -> None:
    fsm = _fsm()
    with pytest.raises(StateError, match=r"^Missing node registration$"):
        _create(fsm, 5, Session(id=SID, node="ghost"))
    with pytest.raises(StateError, match=r"^Missing check 'nope' registration$"):
        _create(fsm, 6, Session(id=SID, node="n1", node_checks=("nope",)))
    with pytest.raises(StateError, match=r"^Check 'bad' is in critical state$"):
        _create(fsm, 7, Session(id=SID, node="n1", checks=("bad",)))
    assert fsm.store.session_list(None) == (1, [])
    body = {"Op": "frob", "Session": session_body(Session(id=SID, node="n1"))}
    with pytest.raises(StateError, match=r"^Invalid Session operation 'frob'$"):
        fsm.apply(8, encode_command(MessageType.SESSION, body))


def test_destroy_releases_or_deletes_locks_and_starts_lock_delay() -> None:
    fsm = _fsm()
    other = "11111111-2222-3333-4444-555555555555"
    _create(fsm, 2, Session(id=SID, node="n1", lock_delay=10_000_000_000))
    _create(fsm, 3, Session(id=other, node="n1", behavior="delete"))
    assert fsm.store.kvs_lock(4, DirEntry("a", b"1", session=SID)) is True
    assert fsm.store.kvs_lock(5, DirEntry("b", b"2", session=other)) is True
    assert _destroy(fsm, 6, SID) is None
    row = fsm.store.kvs_get(None, "a")[1]
    assert row is not None and row.session == "" and row.lock_index == 1
    expires = fsm.store.kvs_lock_delay("a")
    assert expires is not None and expires > fsm.now() + 9
    _destroy(fsm, 7, other)
    assert fsm.store.kvs_get(None, "b")[1] is None
    assert fsm.store.session_list(None)[1] == []
    _destroy(fsm, 8, SID)  # unknown: a no-op


# --- TXN -----------------------------------------------------------------------------------


def test_txn_applies_everything_and_answers_consuls_shape() -> None:
    fsm = _fsm()
    result = _txn(
        fsm,
        3,
        ("set", DirEntry("k/a", b"1", 4)),
        ("set", DirEntry("k/b", b"2")),
        ("get", DirEntry("k/a")),
        ("check-not-exists", DirEntry("k/c")),
        ("get-tree", DirEntry("k/")),
    )
    assert result["Errors"] is None
    kv = [r["KV"] for r in result["Results"]]
    assert [(e["Key"], e["Value"]) for e in kv] == [
        ("k/a", None),  # writes answer without the value
        ("k/b", None),
        ("k/a", "MQ=="),
        ("k/a", "MQ=="),
        ("k/b", "Mg=="),
    ]
    assert kv[0] == {
        "LockIndex": 0,
        "Key": "k/a",
        "Flags": 4,
        "Value": None,
        "CreateIndex": 3,
        "ModifyIndex": 3,
    }


def test_txn_failure_rolls_back_and_reports_every_failed_op() -> None:
    fsm = _fsm()
    _txn(fsm, 3, ("set", DirEntry("k", b"v")))
    result = _txn(
        fsm,
        4,
        ("set", DirEntry("new", b"x")),
        ("cas", DirEntry("k", b"y", modify_index=99)),
        ("delete-cas", DirEntry("k", modify_index=98)),
        ("check-index", DirEntry("k", modify_index=97)),
        ("check-session", DirEntry("k", session="s")),
        ("lock", DirEntry("k", session="s")),
        ("unlock", DirEntry("k", session="s")),
        ("get", DirEntry("missing")),
        ("check-not-exists", DirEntry("k")),
        ("frob", DirEntry("k")),
    )
    assert result["Results"] is None
    assert result["Errors"] == [
        {"OpIndex": 1, "What": 'failed to set key "k", index is stale'},
        {"OpIndex": 2, "What": 'failed to delete key "k", index is stale'},
        {"OpIndex": 3, "What": 'failed index check for key "k", current modify index 3 != 97'},
        {"OpIndex": 4, "What": 'failed session check for key "k", current session "" != "s"'},
        {"OpIndex": 5, "What": 'invalid session "s"'},
        {
            "OpIndex": 6,
            "What": 'failed to unlock key "k", lock isn\'t held, or is held by another session',
        },
        {"OpIndex": 7, "What": 'key "missing" doesn\'t exist'},
        {"OpIndex": 8, "What": 'key "k" exists'},
        {"OpIndex": 9, "What": 'unknown KV verb "frob"'},
    ]
    assert fsm.store.kvs_get(None, "new") == (3, None)
    fsm.store.check_invariants()


def test_txn_locks_and_session_checks() -> None:
    fsm = _fsm()
    _create(fsm, 2, Session(id=SID, node="n1"))
    result = _txn(
        fsm,
        3,
        ("lock", DirEntry("l", b"v", 1, session=SID)),
        ("check-session", DirEntry("l", session=SID)),
    )
    assert result["Errors"] is None
    first = result["Results"][0]["KV"]
    assert (first["Session"], first["LockIndex"], first["Value"]) == (SID, 1, None)
    second = _txn(fsm, 4, ("lock", DirEntry("l", b"w", session="other")))
    assert second["Errors"] == [{"OpIndex": 0, "What": 'invalid session "other"'}]
    third = _txn(fsm, 5, ("unlock", DirEntry("l", b"u", session=SID)))
    assert third["Errors"] is None
    row = fsm.store.kvs_get(None, "l")[1]
    assert row is not None and (row.session, row.value) == ("", b"u")


def test_read_only_ops_never_write() -> None:
    fsm = _fsm()
    _txn(fsm, 3, ("set", DirEntry("k", b"v")))
    results, errors = run_ops(
        fsm.store, None, [("KV", "get", DirEntry("k")), ("KV", "set", DirEntry("x"))]
    )
    assert [r["KV"]["Key"] for r in results] == ["k"]
    assert errors == [{"OpIndex": 1, "What": 'unknown KV verb "set"'}]
    results, errors = run_ops(fsm.store, None, [None])
    assert errors == [{"OpIndex": 0, "What": "no operation specified"}]


def _catalog_txn(fsm: ConsulFSM, index: int, *ops: tuple[str, str, Any]) -> Any:
    body = {"Ops": [encode_op(op) for op in ops]}
    return fsm.apply(index, encode_command(MessageType.TXN, body))


def test_txn_catalog_verbs() -> None:
    fsm = ConsulFSM()  # the real catalog
    node = {"ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1", "ModifyIndex": 0}
    web = {"Node": "n1", "Service": {"ID": "web1", "Service": "web", "Port": 80}}
    check = {"Node": "n1", "CheckID": "c1", "Name": "c1", "Status": "passing", "ServiceID": "web1"}
    result = _catalog_txn(
        fsm,
        5,
        ("Node", "set", node),
        ("Service", "set", web),
        ("Check", "set", check),
        ("Node", "get", {"Node": "n1"}),
    )
    assert result["Errors"] is None, result
    kinds = [next(iter(r)) for r in result["Results"]]
    assert kinds == ["Node", "Service", "Check", "Node"]
    assert result["Results"][0]["Node"]["Address"] == "10.0.0.1"
    assert result["Results"][1]["Service"]["Port"] == 80
    assert result["Results"][2]["Check"]["ServiceName"] == "web"
    assert fsm.store.catalog.node_service("n1", "web1") is not None

    # CAS: 0 means "only if absent"; a stale index fails; errors are Consul's texts.
    failed = _catalog_txn(
        fsm,
        6,
        ("Node", "cas", {**node, "ModifyIndex": 0}),
        ("Service", "cas", {"Node": "n1", "Service": {**web["Service"], "ModifyIndex": 1}}),
        ("Check", "delete-cas", {**check, "ModifyIndex": 1}),
        ("Service", "get", {"Node": "n1", "Service": {"ID": "nope"}}),
        ("Check", "get", {"Node": "n1", "CheckID": "nope"}),
        ("Node", "get", {"Node": "ghost"}),
        ("Node", "frob", {"Node": "n1"}),
    )
    assert failed["Errors"] == [
        {"OpIndex": 0, "What": 'failed to set node "n1", index is stale'},
        {"OpIndex": 1, "What": 'failed to set service "web1" on node "n1", index is stale'},
        {"OpIndex": 2, "What": 'failed to delete check "c1" on node "n1", index is stale'},
        {"OpIndex": 3, "What": 'service "nope" on node "n1" doesn\'t exist'},
        {"OpIndex": 4, "What": 'check "c1" on node "n1" doesn\'t exist'.replace("c1", "nope")},
        {"OpIndex": 5, "What": 'node "ghost" doesn\'t exist'},
        {"OpIndex": 6, "What": 'unknown Node verb "frob"'},
    ]
    stored = fsm.store.catalog.node("n1")
    assert stored is not None and stored.modify_index == 5
    deleted = _catalog_txn(fsm, 7, ("Node", "delete-cas", {**node, "ModifyIndex": 5}))
    assert deleted == {"Results": [], "Errors": None}
    assert fsm.store.catalog.node("n1") is None
    assert fsm.store.catalog.node_service("n1", "web1") is None
    fsm.store.check_invariants()


# --- /v1/session/create bodies ---------------------------------------------------------------


def test_create_defaults_are_consuls() -> None:
    session = decode_session(None, "node1")
    assert session.node == "node1"
    assert session.node_checks == ("serfHealth",)
    assert session.checks is None
    assert session.lock_delay == 15_000_000_000
    assert session.behavior == "release"
    assert session.ttl == ""


def test_create_body_is_case_insensitive_and_converts_lock_delay() -> None:
    session = decode_session(
        {"name": "n", "lockdelay": "5s", "behavior": "delete", "ttl": "20s", "NODE": "x"}, "me"
    )
    assert (session.name, session.node, session.behavior, session.ttl) == (
        "n",
        "x",
        "delete",
        "20s",
    )
    assert session.lock_delay == 5_000_000_000
    assert decode_session({"LockDelay": 7}, "me").lock_delay == 7_000_000_000
    assert decode_session({"LockDelay": 2_000_000_000}, "me").lock_delay == 2_000_000_000
    assert decode_session({"LockDelay": "300ns"}, "me").lock_delay == 300_000_000_000
    with pytest.raises(HTTPError, match='time: invalid duration "soon"'):
        decode_session({"LockDelay": "soon"}, "me")
    with pytest.raises(
        HTTPError, match=r"cannot unmarshal number into Go struct field Session\.Name"
    ):
        decode_session({"Name": 3}, "me")
    with pytest.raises(HTTPError, match="cannot unmarshal array into Go value of type"):
        decode_session([], "me")


def test_create_checks_fixup_follows_consul() -> None:
    # An empty Checks list means "no checks at all".
    bare = decode_session({"Checks": []}, "me")
    assert (bare.node_checks, bare.checks) == ((), ())
    # Checks naming only serfHealth defers to NodeChecks.
    only_serf = decode_session({"Checks": ["serfHealth"], "NodeChecks": ["a"]}, "me")
    assert (only_serf.node_checks, only_serf.checks) == (("a",), None)
    # Custom Checks are kept next to the default NodeChecks.
    custom = decode_session({"Checks": ["serfHealth", "web"]}, "me")
    assert (custom.node_checks, custom.checks) == (("serfHealth",), ("serfHealth", "web"))
    # An empty NodeChecks list drops the default Checks.
    none = decode_session({"NodeChecks": []}, "me")
    assert (none.node_checks, none.checks) == ((), None)
    svc = decode_session({"ServiceChecks": [{"id": "c1", "namespace": ""}]}, "me")
    assert svc.service_checks == (ServiceCheck("c1", ""),)
    assert svc.check_ids() == ["serfHealth", "c1"]


# --- TTL timers ----------------------------------------------------------------------------


class _FakeContext:
    """What the TTL timers use of a ``ServerContext``: the store and Raft applies."""

    def __init__(self, fsm: ConsulFSM) -> None:
        self.fsm = fsm
        self.index = 100
        self.applied: list[Any] = []

    @property
    def store(self) -> StateStore:
        return self.fsm.store

    async def apply(self, kind: MessageType, body: Any) -> Any:
        self.index += 1
        self.applied.append(body)
        return self.fsm.apply(self.index, encode_command(kind, body))


def test_ttl_timers_expire_renew_and_stop_with_leadership() -> None:
    async def scenario() -> None:
        fsm = _fsm()
        ctx = _FakeContext(fsm)
        timers = SessionTTLTimers(ctx, multiplier=2)
        short, long_, plain = (
            "00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-000000000002",
            "00000000-0000-0000-0000-000000000003",
        )
        _create(fsm, 2, Session(id=short, node="n1", ttl="50ms"))
        _create(fsm, 3, Session(id=plain, node="n1"))
        assert timers.reset(fsm.store.session_get(None, short)[1]) is False  # not leading
        await timers.leadership_changed(True)
        await asyncio.sleep(0)
        assert set(timers.armed()) == {short}  # armed on leadership; no TTL, no timer
        # A session created later (through any server) is armed by the table watch.
        _create(fsm, 4, Session(id=long_, node="n1", ttl="150ms"))
        await asyncio.sleep(0.01)
        assert set(timers.armed()) == {short, long_}
        # Renewing resets to TTL x 2 from now.
        await asyncio.sleep(0.06)
        renewed = fsm.store.session_get(None, short)[1]
        assert renewed is not None and timers.reset(renewed) is True
        await asyncio.sleep(0.07)  # 130 ms after start: the renewed timer still runs
        assert fsm.store.session_get(None, short)[1] is not None
        await asyncio.sleep(0.1)  # 230 ms: renewed at 70 ms + 100 ms has passed
        assert fsm.store.session_get(None, short)[1] is None
        assert fsm.store.session_get(None, long_)[1] is not None
        # A destroyed session loses its timer.
        _destroy(fsm, 50, long_)
        await asyncio.sleep(0.01)
        assert timers.armed() == {}
        # Losing leadership cancels everything.
        _create(fsm, 51, Session(id=long_, node="n1", ttl="50ms"))
        await asyncio.sleep(0.01)
        assert set(timers.armed()) == {long_}
        await timers.leadership_changed(False)
        assert timers.armed() == {}
        await asyncio.sleep(0.15)
        assert fsm.store.session_get(None, long_)[1] is not None
        assert [body["Op"] for body in ctx.applied] == ["destroy"]
        await timers.stop()

    asyncio.run(asyncio.wait_for(scenario(), 5))
