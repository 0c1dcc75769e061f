"""The WAN peers a server knew, kept in ``<data_dir>/serf/remote.peers`` so that a restarted
server finds the WAN pool again by itself (the role of Consul's serf ``remote.snapshot``,
reduced to what a rejoin needs: member names and addresses).

Invariants: the file is JSON ``{"<node>.<dc>": "host:port", ...}`` of the members last seen
alive, ourselves excluded; it is replaced atomically (temporary file + ``os.replace``) and
only written when the set changed; a missing or unreadable file is an empty snapshot (logged),
never an error.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import structlog

__all__ = ["PeerSnapshot"]

log = structlog.get_logger("wan")


class PeerSnapshot:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: dict[str, str] | None = None

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("peer_snapshot_unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(data, dict):
            return {}
        peers = {str(k): str(v) for k, v in data.items() if isinstance(v, str)}
        self._saved = dict(peers)
        return peers

    async def save(self, peers: dict[str, str]) -> None:
        if peers == self._saved:
            return
        self._saved = dict(peers)
        try:
            await asyncio.to_thread(self._write, dict(peers))
        except OSError as exc:
            log.warning("peer_snapshot_write_failed", path=str(self.path), error=str(exc))

    def _write(self, peers: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(peers, sort_keys=True))
        os.replace(tmp, self.path)
