"""Raft command ``PREPARED_QUERY`` (Consul's ``PreparedQueryRequest``).

Body: ``{"Op": "create" | "update" | "delete", "Query": {...}}``; the query is built and
validated by the endpoint (``server.endpoints.query``), the ID generated there. Create and
update store it (the table's name, template and session checks raise
``PreparedQueryError``); delete removes ``Query.ID`` (idempotent). The result is None, as
Consul's FSM answers nothing for these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.state.prepared_queries import PreparedQueryError

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = ["HANDLERS"]


def apply_prepared_query(fsm: ConsulFSM, index: int, body: Any) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("Query"), dict):
        raise PreparedQueryError("prepared query command without a Query")
    op = body.get("Op")
    query: dict[str, Any] = body["Query"]
    store = fsm.store

    def session_exists(session_id: str) -> bool:
        return store.session_get(None, session_id)[1] is not None

    with store.write_txn(index) as tx:
        if op in ("create", "update"):
            store.prepared_queries.set_txn(tx, query, session_exists)
        elif op == "delete":
            store.prepared_queries.delete_txn(tx, str(query.get("ID", "")))
        else:
            raise PreparedQueryError(f"Unknown prepared query operation: {op}")


HANDLERS: dict[MessageType, Handler] = {MessageType.PREPARED_QUERY: apply_prepared_query}
