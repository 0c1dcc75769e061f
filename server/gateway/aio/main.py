"""The mesh gateway process: listeners, admin server, watches and registration, until SIGTERM
or SIGINT.

Start-up order: the admin server, then the listeners (at once when ``-address`` is given;
otherwise after the agent said its advertise address), then the watches and the registration
(both retry while the agent is unreachable, so the gateway may start before its agent).
Connections are accepted from the start and refused as ``not_ready`` until the first routing
table exists. Shutdown: deregister (when registered), stop accepting, close every connection,
stop the admin server; exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import signal

import structlog

from server.clicmd.api import Client
from server.gateway.aio.admin import start_admin
from server.gateway.aio.proxy import Proxy, ProxySettings
from server.gateway.aio.registration import deregister, keep_registered
from server.gateway.aio.watch import AgentClient, Watcher, agent_info
from server.gateway.config import DEFAULT_PORT, DataPath, GatewayConfig, listen_addresses
from server.gateway.config import registration as registration_body
from server.gateway.routes import Address, Router, RoutingTable
from server.gateway.stats import Stats

__all__ = ["run_gateway"]

log = structlog.get_logger("gateway")


def raise_fd_limit(connections: int, data_path: DataPath) -> None:
    """Raise the soft RLIMIT_NOFILE (up to the hard limit) to fit ``connections`` links: 2 fds
    each, 6 with splice (two pipes)."""
    per = 6 if data_path is DataPath.SPLICE else 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections * per + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


async def run_gateway(cfg: GatewayConfig, stop: asyncio.Event | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    raise_fd_limit(cfg.max_connections, cfg.data_path)

    stats = Stats()
    router: Router | None = None

    def on_table(table: RoutingTable) -> None:
        nonlocal router
        if router is None:
            router = Router(table, random.Random())
        else:
            router.update(table)
        stats.table = table
        if not stats.ready:
            stats.ready = True
            log.info("routing table ready", servers=len(table.servers), datacenters=sorted(table.remote_gateways))  # fmt: skip
        else:
            log.debug("routing table updated")

    proxy = Proxy(
        stats,
        lambda: router,
        ProxySettings(
            data_path=cfg.data_path,
            hello_timeout=cfg.hello_timeout,
            hello_max_bytes=cfg.hello_max_bytes,
            connect_timeout=cfg.connect_timeout,
            idle_timeout=cfg.idle_timeout,
            max_connections=cfg.max_connections,
            domain=cfg.domain,
            trust_domain=cfg.trust_domain,
        ),
    )
    client = AgentClient(cfg.agent or Client())
    tasks: list[asyncio.Task[None]] = []
    registered = asyncio.Event()
    runner = None
    bound: set[Address] = set()

    async def bind(lan: Address, wan: Address | None) -> bool:
        for name, addr in listen_addresses(lan, wan, cfg.bind_addresses):
            if addr in bound:
                continue
            try:
                actual = await proxy.listen(addr)
            except OSError as err:
                if not bound:
                    log.error("cannot listen", listener=name, address=str(addr), error=str(err))
                    return False
                log.warning("cannot listen; continuing", listener=name, address=str(addr), error=str(err))  # fmt: skip
                continue
            bound.add(addr)
            log.info("listening", listener=name, address=str(actual), data_path=cfg.data_path.value)  # fmt: skip
        return True

    try:
        try:
            runner, admin = await start_admin(stats, cfg.admin_bind)
        except OSError as err:
            log.error("cannot start the admin server", address=str(cfg.admin_bind), error=str(err))
            return 1
        log.info("admin listening", address=str(admin))
        if cfg.lan is not None and not await bind(cfg.lan, cfg.wan):
            return 1
        info = await agent_info(client, stop)
        if info is None:
            return 0
        lan = cfg.lan or Address(info.lan_address, DEFAULT_PORT)
        wan = cfg.wan or Address(info.wan_address, lan.port)
        if cfg.lan is None and not await bind(lan, wan):
            return 1
        log.info("agent found", datacenter=info.datacenter)
        watcher = Watcher(
            client,
            info.datacenter,
            domain=cfg.domain,
            trust_domain=cfg.trust_domain,
            expose_servers=cfg.expose_servers,
            on_table=on_table,
            stop=stop,
        )
        tasks.append(loop.create_task(watcher.run()))
        if cfg.register:
            body = registration_body(cfg, lan, wan)
            tasks.append(loop.create_task(keep_registered(client, body, stop, registered)))
        await stop.wait()
        log.info("shutting down")
        return 0
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if registered.is_set():
            await deregister(client, cfg.service_id)
        proxy.close()
        await proxy.wait_closed()
        if runner is not None:
            await runner.cleanup()
        await client.close()
