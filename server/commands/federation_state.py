"""Raft command ``FEDERATION_STATE`` (Consul's ``FederationStateRequest``).

Body: ``{"Op": "upsert" | "delete", "State": {...}, "Datacenter": <target dc>}`` with Consul's
field names; ``State`` is a ``server.state.federation_states`` record (for a delete only its
``Datacenter`` matters). ``Datacenter`` is where the request was routed (always the primary,
as Consul rewrites it) and is not stored.

The body is complete before it is proposed: the writer stamps ``UpdatedAt``
(``build_request``), so applying it is deterministic. Results: True for both ops (Consul's FSM
returns no value). An unknown op or a body without a State/Datacenter raises
``FederationStateError`` (the proposer's error; the store is unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.state.federation_states import stamp_updated_at

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = [
    "HANDLERS",
    "OP_DELETE",
    "OP_UPSERT",
    "FederationStateError",
    "build_request",
]

OP_UPSERT = "upsert"
OP_DELETE = "delete"


class FederationStateError(ValueError):
    """A federation state write the state refuses."""


def build_request(
    op: str, state: Mapping[str, Any], target_dc: str, *, now_ns: int | None = None
) -> dict[str, Any]:
    """The command body for ``op`` on ``state``; an upsert gets ``UpdatedAt`` = now when it
    has none (``now_ns`` for tests)."""
    if op == OP_UPSERT:
        body_state = stamp_updated_at(state, now_ns)
    else:
        body_state = {"Datacenter": str(state.get("Datacenter") or "")}
    return {"Op": op, "State": body_state, "Datacenter": target_dc}


def apply_federation_state(fsm: ConsulFSM, index: int, body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("State"), dict):
        raise FederationStateError("Invalid federation state request: missing State")
    op = body.get("Op")
    state: dict[str, Any] = body["State"]
    datacenter = str(state.get("Datacenter") or "")
    if not datacenter:
        raise FederationStateError("Invalid federation state request: missing Datacenter")
    store = fsm.store
    table = store.federation_states
    with store.write_txn(index) as tx:
        if op == OP_UPSERT:
            table.upsert_txn(tx, state)
        elif op == OP_DELETE:
            table.delete_txn(tx, datacenter)
        else:
            raise FederationStateError(f"Invalid federation state operation type: {op}")
    return True


HANDLERS: dict[MessageType, Handler] = {MessageType.FEDERATION_STATE: apply_federation_state}
