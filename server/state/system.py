"""State table ``system``: cluster-wide settings that are not catalog data — today the
Autopilot configuration (Consul's ``autopilot-config`` table) and the system metadata
key/values (Consul's ``system-metadata`` table).

Autopilot configuration rules (``agent/consul/state/autopilot.go``):

* one row; ``set`` keeps its CreateIndex and moves its ModifyIndex to the write's index;
* ``cas(index)`` writes only if the stored row's ModifyIndex is ``index`` (with no row yet it
  always writes) and says whether it wrote;
* durations are kept as integer nanoseconds (as Go's ``time.Duration``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from server.state.tables import StateTable
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = [
    "TABLE_AUTOPILOT",
    "TABLE_SYSTEM_METADATA",
    "AutopilotConfig",
    "SystemTable",
]

TABLE_AUTOPILOT = "autopilot-config"
TABLE_SYSTEM_METADATA = "system-metadata"


@dataclass(frozen=True, slots=True)
class AutopilotConfig:
    """Consul's ``structs.AutopilotConfig`` with its defaults (durations in nanoseconds)."""

    cleanup_dead_servers: bool = True
    last_contact_threshold: int = 200_000_000  # 200ms
    max_trailing_logs: int = 250
    min_quorum: int = 0
    server_stabilization_time: int = 10_000_000_000  # 10s
    redundancy_zone_tag: str = ""
    disable_upgrade_migration: bool = False
    upgrade_version_tag: str = ""
    create_index: int = 0
    modify_index: int = 0

    def to_document(self) -> dict[str, Any]:
        return {
            "CleanupDeadServers": self.cleanup_dead_servers,
            "LastContactThreshold": self.last_contact_threshold,
            "MaxTrailingLogs": self.max_trailing_logs,
            "MinQuorum": self.min_quorum,
            "ServerStabilizationTime": self.server_stabilization_time,
            "RedundancyZoneTag": self.redundancy_zone_tag,
            "DisableUpgradeMigration": self.disable_upgrade_migration,
            "UpgradeVersionTag": self.upgrade_version_tag,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    @staticmethod
    def from_document(doc: dict[str, Any]) -> AutopilotConfig:
        """From ``to_document``'s shape; missing fields take the defaults. Raises
        ``TypeError``/``ValueError`` for a field of the wrong type."""
        base = AutopilotConfig()
        return AutopilotConfig(
            cleanup_dead_servers=_bool(doc.get("CleanupDeadServers", base.cleanup_dead_servers)),
            last_contact_threshold=_uint(
                doc.get("LastContactThreshold", base.last_contact_threshold)
            ),
            max_trailing_logs=_uint(doc.get("MaxTrailingLogs", base.max_trailing_logs)),
            min_quorum=_uint(doc.get("MinQuorum", base.min_quorum)),
            server_stabilization_time=_uint(
                doc.get("ServerStabilizationTime", base.server_stabilization_time)
            ),
            redundancy_zone_tag=_str(doc.get("RedundancyZoneTag", "")),
            disable_upgrade_migration=_bool(doc.get("DisableUpgradeMigration", False)),
            upgrade_version_tag=_str(doc.get("UpgradeVersionTag", "")),
            create_index=_uint(doc.get("CreateIndex", 0)),
            modify_index=_uint(doc.get("ModifyIndex", 0)),
        )


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not a bool")
    return value


def _uint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{value!r} is not an unsigned integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


class SystemTable(StateTable):
    name = "system"

    def __init__(self, indexes: IndexTable) -> None:
        super().__init__(indexes)
        self._autopilot: AutopilotConfig | None = None
        self._metadata: dict[str, str] = {}
        self.watches = ChannelMap()  # keys: "autopilot", "metadata"

    # --- autopilot -------------------------------------------------------------------

    def autopilot_config(self, ws: WatchSet | None) -> tuple[int, AutopilotConfig | None]:
        """The stored configuration (None before the leader wrote one)."""
        if ws is not None:
            ws.add(self.watches.channel("autopilot"))
        return max(self._indexes.get(TABLE_AUTOPILOT), 1), self._autopilot

    def autopilot_set_txn(self, tx: WriteTxn, config: AutopilotConfig) -> AutopilotConfig:
        old = self._autopilot
        row = replace(
            config,
            create_index=old.create_index if old is not None else tx.idx,
            modify_index=tx.idx,
        )
        self._autopilot = row
        tx.on_undo(lambda: setattr(self, "_autopilot", old))
        tx.notify(self.watches, "autopilot")
        self._indexes.bump(tx, TABLE_AUTOPILOT)
        return row

    def autopilot_cas_txn(self, tx: WriteTxn, cas_index: int, config: AutopilotConfig) -> bool:
        """Write only if the stored ModifyIndex is ``cas_index`` (always with no row)."""
        old = self._autopilot
        if old is not None and old.modify_index != cas_index:
            return False
        self.autopilot_set_txn(tx, config)
        return True

    # --- system metadata ---------------------------------------------------------------

    def metadata(self, ws: WatchSet | None, key: str = "") -> tuple[int, dict[str, str]]:
        """All entries, or the one named ``key``."""
        if ws is not None:
            ws.add(self.watches.channel("metadata"))
        index = max(self._indexes.get(TABLE_SYSTEM_METADATA), 1)
        if key:
            return index, {key: self._metadata[key]} if key in self._metadata else {}
        return index, dict(sorted(self._metadata.items()))

    def metadata_set_txn(self, tx: WriteTxn, entries: dict[str, str]) -> None:
        for key, value in entries.items():
            had = key in self._metadata
            old = self._metadata.get(key, "")
            self._metadata[key] = value
            tx.on_undo(self._meta_undo(key, had, old))
        tx.notify(self.watches, "metadata")
        self._indexes.bump(tx, TABLE_SYSTEM_METADATA)

    def metadata_delete_txn(self, tx: WriteTxn, keys: list[str]) -> None:
        for key in keys:
            if key in self._metadata:
                tx.on_undo(self._meta_undo(key, True, self._metadata.pop(key)))
        tx.notify(self.watches, "metadata")
        self._indexes.bump(tx, TABLE_SYSTEM_METADATA)

    def _meta_undo(self, key: str, had: bool, old: str) -> Callable[[], None]:
        def undo() -> None:
            if had:
                self._metadata[key] = old
            else:
                self._metadata.pop(key, None)

        return undo

    # --- snapshot --------------------------------------------------------------------

    def dump(self) -> Any:
        return {
            "autopilot": None if self._autopilot is None else self._autopilot.to_document(),
            "metadata": dict(sorted(self._metadata.items())),
        }

    def restore(self, document: Any) -> None:
        self._autopilot = None
        self._metadata = {}
        if not document:
            return
        autopilot = document.get("autopilot")
        if autopilot is not None:
            self._autopilot = AutopilotConfig.from_document(autopilot)
        self._metadata = {str(k): str(v) for k, v in (document.get("metadata") or {}).items()}

    def channel_maps(self) -> Sequence[ChannelMap]:
        return (self.watches,)

    def check_invariants(self) -> None:
        if self._autopilot is not None:
            assert self._autopilot.create_index <= self._autopilot.modify_index
            assert self._indexes.get(TABLE_AUTOPILOT) >= self._autopilot.modify_index
