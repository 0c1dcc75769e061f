"""Three ``proconsul agent -server -bootstrap-expect 3`` processes on 127.0.0.1, formed through
``-retry-join`` (LAN serf), with dev Raft timing (``performance.raft_multiplier = 1``).

Acceptance test of the server agent: 16 clients PUT, GET and CAS KV keys through different
servers (followers forward to the leader) while the leader is SIGKILLed. The history is checked
for linearizability with ``raft.sim.lincheck``; every acknowledged write is therefore visible
to later reads (none lost); writes resume within 3 s of the kill; the killed server restarts
from its data dir and rejoins (it serves the final values on a stale read).

CAS maps onto the register model because every written value is unique: ``?cas=<index>`` of a
value just read succeeds exactly when the key still holds that value (the write that made it
is still the last one), so it is ``CAS(expected=<value read>, new)``; ``?cas=0`` on a key never
written is ``CAS(expected=None, new)``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.cluster import ServerProc, make_servers, wait_for_leader

from raft.sim.lincheck import Operation, OpKind, check_history

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

CLIENTS = 16
KEYS = 6
OPS_BEFORE_KILL = 300
OPS_AFTER_KILL = 400
RESUME_BOUND = 3.0  # seconds from the kill to the first acknowledged write after it
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=4)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[ServerProc]]:
    servers = make_servers(tmp_path, 3)
    for s in servers:
        s.start()
    try:
        yield servers
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.kill()


class Recorder:
    """The shared history: operations with monotonic-nanosecond call/return times."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []
        self.acked_writes = 0
        self.kill_at: int | None = None
        self.first_write_after_kill: int | None = None
        self.counter = 0

    def unique(self, client: int) -> str:
        self.counter += 1
        return f"c{client}-{self.counter}"

    def record(self, op: Operation) -> None:
        self.ops.append(op)
        if op.ret is not None and op.kind in (OpKind.PUT, OpKind.CAS):
            self.acked_writes += 1
            if (
                self.kill_at is not None
                and op.call > self.kill_at
                and (self.first_write_after_kill is None or op.ret < self.first_write_after_kill)
            ):
                self.first_write_after_kill = op.ret


async def client_loop(
    cid: int,
    session: aiohttp.ClientSession,
    servers: list[ServerProc],
    rec: Recorder,
    stop: asyncio.Event,
) -> None:
    rng = random.Random(cid)
    target = cid % len(servers)
    while not stop.is_set():
        server = servers[target]
        key = f"lin/k{rng.randrange(KEYS)}"
        url = f"{server.base}/v1/kv/{key}"
        choice = rng.random()
        try:
            if choice < 0.4:
                value = rec.unique(cid)
                call = time.monotonic_ns()
                try:
                    async with session.put(url, data=value, timeout=REQUEST_TIMEOUT) as resp:
                        body = await resp.read()
                        ok = resp.status == 200 and json.loads(body) is True
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    ok = False
                ret = time.monotonic_ns() if ok else None
                rec.record(Operation(cid, key, OpKind.PUT, value, None, call, ret, None))
                if not ok:
                    target = (target + 1) % len(servers)
            else:
                call = time.monotonic_ns()
                async with session.get(url, timeout=REQUEST_TIMEOUT) as resp:
                    if resp.status == 404:
                        current, index = None, 0
                    elif resp.status == 200:
                        [entry] = await resp.json()
                        current = base64.b64decode(entry["Value"] or "").decode()
                        index = entry["ModifyIndex"]
                    else:
                        raise aiohttp.ClientError(f"GET {resp.status}")
                rec.record(
                    Operation(cid, key, OpKind.GET, None, None, call, time.monotonic_ns(), current)
                )
                if choice < 0.75:
                    continue
                new = rec.unique(cid)
                call = time.monotonic_ns()
                try:
                    async with session.put(
                        f"{url}?cas={index}", data=new, timeout=REQUEST_TIMEOUT
                    ) as resp:
                        body = await resp.read()
                        known = resp.status == 200
                        swapped = known and json.loads(body) is True
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    known, swapped = False, False
                ret = time.monotonic_ns() if known else None
                rec.record(
                    Operation(
                        cid, key, OpKind.CAS, new, current, call, ret, swapped if known else None
                    )
                )
                if not known:
                    target = (target + 1) % len(servers)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            # A failed read has no effect: nothing to record. Try another server.
            target = (target + 1) % len(servers)
            await asyncio.sleep(0.05)


async def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def scenario(servers: list[ServerProc]) -> None:
    async with aiohttp.ClientSession() as session:
        leader_addr = await wait_for_leader(session, servers, 40)
        rec = Recorder()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(client_loop(i, session, servers, rec, stop)) for i in range(CLIENTS)
        ]
        try:
            await wait_until(lambda: rec.acked_writes >= OPS_BEFORE_KILL, 60)
            leader = next(s for s in servers if s.rpc_address == leader_addr)
            rec.kill_at = time.monotonic_ns()
            leader.kill()
            await wait_until(lambda: rec.acked_writes >= OPS_BEFORE_KILL + OPS_AFTER_KILL, 60)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert rec.first_write_after_kill is not None
        resume = (rec.first_write_after_kill - rec.kill_at) / 1e9
        assert resume <= RESUME_BOUND, f"writes resumed {resume:.2f} s after the kill"

        survivors = [s for s in servers if s is not leader]
        # Final reads through a survivor, recorded as operations of a last "client".
        for k in range(KEYS):
            key = f"lin/k{k}"
            call = time.monotonic_ns()
            async with session.get(f"{survivors[0].base}/v1/kv/{key}") as resp:
                if resp.status == 404:
                    value = None
                else:
                    [entry] = await resp.json()
                    value = base64.b64decode(entry["Value"] or "").decode()
            rec.record(Operation(99, key, OpKind.GET, None, None, call, time.monotonic_ns(), value))
        result = check_history(rec.ops)
        assert not result.timed_out, result.detail
        assert result.ok, result.detail

        # The killed server restarts from its data dir and rejoins.
        leader.start()
        final = {}
        for k in range(KEYS):
            async with session.get(f"{survivors[0].base}/v1/kv/lin/k{k}") as resp:
                final[k] = (await resp.json())[0]["Value"] if resp.status == 200 else None
        deadline = time.monotonic() + 30
        while True:
            try:
                got = {}
                for k in range(KEYS):
                    async with session.get(
                        f"{leader.base}/v1/kv/lin/k{k}?stale", timeout=REQUEST_TIMEOUT
                    ) as resp:
                        got[k] = (await resp.json())[0]["Value"] if resp.status == 200 else None
                if got == final:
                    break
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            assert time.monotonic() < deadline, "the restarted server did not catch up"
            await asyncio.sleep(0.2)
        await wait_for_leader(session, servers, 20)


def test_leader_kill_under_load_is_linearizable(cluster: list[ServerProc]) -> None:
    try:
        asyncio.run(scenario(cluster))
    except BaseException:
        for s in cluster:
            with contextlib.suppress(OSError):
                sys.stderr.write(f"--- {s.name} log ---\n{s.log.read_text()[-6000:]}\n")
        raise
