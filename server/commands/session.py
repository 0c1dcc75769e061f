"""Raft commands of the ``session`` domain: ``MessageType.SESSION`` (Consul's
``structs.SessionRequest``).

Body: ``{"Op": "create" | "destroy", "Session": {...}}`` where the session carries Consul's
field names: ``ID``, ``Name``, ``Node``, ``LockDelay`` (nanoseconds), ``Behavior``, ``TTL`` (a
Go duration string), ``NodeChecks`` / ``Checks`` (lists of check IDs or ``null``) and
``ServiceChecks`` (``[{"ID": ..., "Namespace": ...}]`` or ``null``).

* ``create`` inserts the session (the endpoint generated its ID before proposing: an FSM never
  makes up random values) and returns the ID, as Consul's FSM does. The state store checks the
  node and the checks (``Missing node registration``, ``Missing check '<id>' registration``,
  ``Check '<id>' is in critical state``).
* ``destroy`` deletes and invalidates the session: its locks are released (behavior
  ``release``) or its keys deleted (``delete``), and each of those keys gets the session's lock
  delay, counted on this server's clock (lock delays are not replicated state, as in Consul,
  where every server starts them in its own FSM). Destroying an unknown session is a no-op.
* Any other op is refused with Consul's ``Invalid Session operation '<op>'`` (the proposer's
  error; the log entry changes nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.state import ServiceCheck, Session, StateError

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = [
    "HANDLERS",
    "OP_CREATE",
    "OP_DESTROY",
    "apply_session",
    "session_body",
    "session_from_body",
]

OP_CREATE = "create"
OP_DESTROY = "destroy"


def session_body(session: Session) -> dict[str, Any]:
    """``session`` as the ``Session`` object of a SESSION command."""
    return {
        "ID": session.id,
        "Name": session.name,
        "Node": session.node,
        "LockDelay": session.lock_delay,
        "Behavior": session.behavior,
        "TTL": session.ttl,
        "NodeChecks": None if session.node_checks is None else list(session.node_checks),
        "ServiceChecks": (
            None
            if session.service_checks is None
            else [{"ID": c.id, "Namespace": c.namespace} for c in session.service_checks]
        ),
        "Checks": None if session.checks is None else list(session.checks),
    }


def _str_list(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise TypeError("check list is not a list")
    return tuple(str(item) for item in value)


def session_from_body(body: Any) -> Session:
    """The ``Session`` of a SESSION command (``UnknownCommandError`` when malformed)."""
    from server.fsm import UnknownCommandError

    if not isinstance(body, dict):
        raise UnknownCommandError("SESSION command without a Session object")
    try:
        service_checks = body.get("ServiceChecks")
        return Session(
            id=str(body.get("ID", "")),
            node=str(body.get("Node", "")),
            name=str(body.get("Name", "")),
            lock_delay=int(body.get("LockDelay", 0)),
            behavior=str(body.get("Behavior", "")),
            ttl=str(body.get("TTL", "")),
            node_checks=_str_list(body.get("NodeChecks")),
            service_checks=(
                None
                if service_checks is None
                else tuple(
                    ServiceCheck(str(c.get("ID", "")), str(c.get("Namespace", "")))
                    for c in service_checks
                )
            ),
            checks=_str_list(body.get("Checks")),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnknownCommandError(f"malformed SESSION command: {exc}") from exc


def apply_session(fsm: ConsulFSM, index: int, body: Any) -> Any:
    from server.fsm import UnknownCommandError

    if not isinstance(body, dict):
        raise UnknownCommandError("SESSION command body is not an object")
    op = body.get("Op")
    session = session_from_body(body.get("Session"))
    store = fsm.store
    if op == OP_CREATE:
        return store.session_create(index, session).id
    if op == OP_DESTROY:
        store.session_destroy(index, session.id, fsm.now())
        return None
    raise StateError(f"Invalid Session operation '{op}'")


HANDLERS: dict[MessageType, Handler] = {MessageType.SESSION: apply_session}
