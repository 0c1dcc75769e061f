"""The gateway's catalog registration on its local agent.

:func:`keep_registered` registers the service (``PUT /v1/agent/service/register``), retrying
with back-off while the agent is unreachable (the gateway may start before its agent), then
checks every :data:`RECHECK` seconds that the agent still has it (``GET
/v1/agent/service/<id>``) and registers it again when it does not (a restarted dev agent
forgets its services). :func:`deregister` removes it once, bounded in time, at shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import structlog

from server.gateway.aio.watch import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    AgentClient,
    AgentError,
    wait_or_stop,
)

__all__ = ["RECHECK", "deregister", "keep_registered"]

log = structlog.get_logger("gateway")

RECHECK = 10.0


async def keep_registered(
    client: AgentClient, body: dict[str, Any], stop: asyncio.Event, registered: asyncio.Event
) -> None:
    """Register ``body`` and keep it registered until ``stop``; ``registered`` is set after the
    first success."""
    service_id = quote(str(body["ID"]), safe="")
    backoff = BACKOFF_MIN
    have = False
    while not stop.is_set():
        delay = RECHECK
        try:
            if have:
                status, _, _ = await client.request("GET", f"/v1/agent/service/{service_id}")
                if status == 404:
                    log.warning("the agent lost the gateway's registration; registering again")
                    have = False
            if not have:
                status, _, _ = await client.request("PUT", "/v1/agent/service/register", body=body)
                if status == 200:
                    have = True
                    backoff = BACKOFF_MIN
                    registered.set()
                    log.info("registered", service=body["ID"], kind=body["Kind"])
                else:
                    log.warning("registration refused", status=status)
                    delay = backoff
                    backoff = min(backoff * 2, BACKOFF_MAX)
        except AgentError as err:
            log.warning("agent not reachable; registration pending", error=str(err))
            delay = backoff
            backoff = min(backoff * 2, BACKOFF_MAX)
        await wait_or_stop(stop, delay)


async def deregister(client: AgentClient, service_id: str, timeout: float = 5.0) -> bool:
    path = f"/v1/agent/service/deregister/{quote(service_id, safe='')}"
    try:
        status, _, _ = await client.request("PUT", path, timeout=timeout)
    except AgentError as err:
        log.warning("deregistration failed", error=str(err))
        return False
    if status != 200:
        log.warning("deregistration refused", status=status)
        return False
    log.info("deregistered", service=service_id)
    return True
