"""A tiny key-value state machine: the FSM used by the simulator, tests and benchmarks.

Commands are JSON objects: ``{"op": "put", "key": k, "value": v}`` and
``{"op": "cas", "key": k, "expected": old_or_null, "value": v}``. Applying returns the result
(None for put, a bool for cas). Snapshots are the whole map as JSON.
"""

from __future__ import annotations

import json
from typing import Any


def encode_put(key: str, value: str) -> bytes:
    return json.dumps({"op": "put", "key": key, "value": value}).encode()


def encode_cas(key: str, expected: str | None, value: str) -> bytes:
    return json.dumps({"op": "cas", "key": key, "expected": expected, "value": value}).encode()


class KVStateMachine:
    """Invariant: ``applied_index`` is the index of the last entry applied (or restored)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied_index = 0

    def apply(self, index: int, command: bytes) -> Any:
        self.applied_index = index
        if not command:
            return None
        return self.apply_command(json.loads(command))

    def apply_command(self, cmd: dict[str, Any]) -> Any:
        """Apply one decoded command (subclasses may extend this)."""
        op = cmd.get("op")
        if op == "put":
            self.data[cmd["key"]] = cmd["value"]
            return None
        if op == "cas":
            if self.data.get(cmd["key"]) == cmd["expected"]:
                self.data[cmd["key"]] = cmd["value"]
                return True
            return False
        raise ValueError(f"unknown kv command: {op!r}")

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return json.dumps(
            {"applied": self.applied_index, "data": self.data}, sort_keys=True
        ).encode()

    def restore(self, blob: bytes) -> None:
        state = json.loads(blob)
        self.data = dict(state["data"])
        self.applied_index = int(state["applied"])
