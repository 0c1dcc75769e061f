"""Raft command handlers, one module per domain. Each module exports ``HANDLERS``, a dict from
``MessageType`` to a ``Handler``; ``server.fsm.ConsulFSM`` dispatches through their union. A
type that two modules claim is a programming error and fails at import."""

from __future__ import annotations

from server.commands import (
    catalog,
    config_entry,
    connect_ca,
    coordinate,
    federation_state,
    prepared_query,
    session,
    system,
    txn,
)
from server.commands.types import Handler, MessageType

__all__ = ["HANDLERS", "Handler", "MessageType"]


def _merge() -> dict[MessageType, Handler]:
    merged: dict[MessageType, Handler] = {}
    for module in (
        catalog,
        config_entry,
        connect_ca,
        coordinate,
        federation_state,
        prepared_query,
        session,
        system,
        txn,
    ):
        for kind, handler in module.HANDLERS.items():
            if kind in merged:
                raise RuntimeError(f"{kind.name} is handled twice ({module.__name__})")
            merged[kind] = handler
    return merged


HANDLERS = _merge()
