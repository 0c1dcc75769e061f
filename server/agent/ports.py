"""Port helpers for ``-dev`` agents, which fall back to free ports instead of colliding with
another agent on the same machine. A port found free can still be taken by another process
before we bind it: callers retry on a fresh one when the bind fails."""

from __future__ import annotations

import socket

__all__ = ["free_port", "port_free"]


def free_port(host: str) -> int:
    """A TCP port the kernel picks as free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound for TCP on ``host`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
