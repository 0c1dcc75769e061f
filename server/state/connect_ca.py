"""State table ``connect_ca``: the Connect CA configuration and the CA roots (Consul's
``connect-ca-config`` and ``connect-ca-roots`` tables).

The configuration row is Consul's ``CAConfiguration`` as the HTTP API shows it (``Provider``,
``Config``, ``State``, ``ForceWithoutCrossSigning``, ``CreateIndex``, ``ModifyIndex``) plus the
cluster ID, which Consul keeps out of the JSON (``ClusterID`` is ``json:"-"``) and which names
the trust domain ``<cluster-id>.consul``.

Roots are Consul's ``CARoot`` objects in API shape; each may carry a ``SigningKey`` (the PEM
private key of the built-in provider) and ``RotatedOutAt``, which ``api_root`` strips as
Consul's API never shows them.

Writes: ``set_config_txn`` (with an optional CAS index, Consul's ``CACheckAndSetConfig``) and
``set_roots_txn`` (CAS on the roots table index, 0 = unconditional, Consul's ``CARootSetCAS``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from server.state.tables import StateTable
from server.state.watch import ChannelMap, WatchSet

if TYPE_CHECKING:
    from server.state.store import IndexTable, WriteTxn

__all__ = ["TABLE_CA_CONFIG", "TABLE_CA_ROOTS", "ConnectCATable", "api_root"]

TABLE_CA_CONFIG = "connect-ca-config"
TABLE_CA_ROOTS = "connect-ca-roots"

_PRIVATE = ("SigningKey", "RotatedOutAt")  # Consul: SigningKey redacted, RotatedOutAt json:"-"


def api_root(root: dict[str, Any]) -> dict[str, Any]:
    """A stored root without its private parts."""
    return {k: copy.deepcopy(v) for k, v in root.items() if k not in _PRIVATE}


class ConnectCATable(StateTable):
    name = "connect_ca"

    def __init__(self, indexes: IndexTable) -> None:
        super().__init__(indexes)
        self._config: dict[str, Any] | None = None
        self._cluster_id = ""
        self._roots: list[dict[str, Any]] = []

    # --- reads -------------------------------------------------------------------------

    def config(self, ws: WatchSet | None) -> tuple[int, dict[str, Any] | None]:
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_CA_CONFIG))
        index = max(self._indexes.get(TABLE_CA_CONFIG), 1)
        return index, copy.deepcopy(self._config)

    def cluster_id(self) -> str:
        return self._cluster_id

    def trust_domain(self) -> str:
        """``<cluster-id>.consul``; "" before the CA is initialised."""
        return f"{self._cluster_id}.consul" if self._cluster_id else ""

    def roots(self, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
        """Every root (with private parts: use ``api_root`` before showing one)."""
        if ws is not None:
            ws.add(self._indexes.channel(TABLE_CA_ROOTS))
        index = max(self._indexes.get(TABLE_CA_ROOTS), 1)
        return index, copy.deepcopy(self._roots)

    def active_root(self) -> dict[str, Any] | None:
        for root in self._roots:
            if root.get("Active"):
                return copy.deepcopy(root)
        return None

    def roots_index(self) -> int:
        return self._indexes.get(TABLE_CA_ROOTS)

    # --- writes ------------------------------------------------------------------------

    def set_config_txn(
        self, tx: WriteTxn, config: dict[str, Any], cluster_id: str, cas: int | None = None
    ) -> bool:
        """Store ``config`` (its CreateIndex kept across updates). With ``cas``, only if the
        current ModifyIndex is ``cas`` (0: only when there is no configuration yet)."""
        old, old_cluster = self._config, self._cluster_id
        if cas is not None:
            current = 0 if old is None else int(old.get("ModifyIndex", 0))
            if current != cas:
                return False
        row = copy.deepcopy(config)
        row["CreateIndex"] = old["CreateIndex"] if old is not None else tx.idx
        row["ModifyIndex"] = tx.idx
        self._config = row
        self._cluster_id = cluster_id or old_cluster

        def undo() -> None:
            self._config, self._cluster_id = old, old_cluster

        tx.on_undo(undo)
        self._indexes.bump(tx, TABLE_CA_CONFIG)
        return True

    def set_roots_txn(self, tx: WriteTxn, roots: list[dict[str, Any]], cas: int = 0) -> bool:
        """Replace the roots; with ``cas`` != 0 only if the roots index is still ``cas``.
        Roots keep their CreateIndex when their ID was already stored."""
        if cas and self._indexes.get(TABLE_CA_ROOTS) != cas:
            return False
        if sum(1 for root in roots if root.get("Active")) > 1:
            raise ValueError("Multiple active CA roots found")
        old = self._roots
        by_id = {root["ID"]: root for root in old}
        new: list[dict[str, Any]] = []
        for root in roots:
            row = copy.deepcopy(root)
            previous = by_id.get(row["ID"])
            row["CreateIndex"] = previous["CreateIndex"] if previous is not None else tx.idx
            row["ModifyIndex"] = tx.idx
            new.append(row)
        self._roots = new

        def undo() -> None:
            self._roots = old

        tx.on_undo(undo)
        self._indexes.bump(tx, TABLE_CA_ROOTS)
        return True

    # --- snapshot ----------------------------------------------------------------------

    def dump(self) -> Any:
        if self._config is None and not self._roots:
            return None
        return {
            "config": copy.deepcopy(self._config),
            "cluster_id": self._cluster_id,
            "roots": copy.deepcopy(self._roots),
        }

    def restore(self, document: Any) -> None:
        self._config, self._cluster_id, self._roots = None, "", []
        if not document:
            return
        self._config = document.get("config")
        self._cluster_id = str(document.get("cluster_id", ""))
        self._roots = list(document.get("roots") or [])

    def channel_maps(self) -> Sequence[ChannelMap]:
        return ()

    def check_invariants(self) -> None:
        assert sum(1 for root in self._roots if root.get("Active")) <= 1
        for root in self._roots:
            assert root["ModifyIndex"] <= self._indexes.get(TABLE_CA_ROOTS)
