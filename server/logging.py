"""Agent logging through structlog: key=value lines for people, JSON with ``-log-json``."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


#: ``/v1/agent/monitor`` listeners: called with (level number, event dict) for every line.
Monitor = Callable[[int, dict[str, Any]], None]
_monitors: list[Monitor] = []


def add_monitor(monitor: Monitor) -> Callable[[], None]:
    """Receive every log event from now on; returns the function that stops it."""
    _monitors.append(monitor)

    def remove() -> None:
        if monitor in _monitors:
            _monitors.remove(monitor)

    return remove


def _fan_out(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _monitors:
        levelno = logging.getLevelNamesMapping().get(
            str(event_dict.get("level", "info")).upper(), 20
        )
        for monitor in list(_monitors):
            with contextlib.suppress(Exception):  # a monitor must never break logging
                monitor(levelno, dict(event_dict))
    return event_dict


def configure(level: str = "info", json_format: bool = False) -> None:
    if level not in LEVELS:
        raise ValueError(f"-log-level: unknown level {level!r} (one of {', '.join(LEVELS)})")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_format
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _fan_out,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
