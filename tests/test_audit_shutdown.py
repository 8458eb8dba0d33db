"""Shutdown with a slow store: the audit batch being written when the stop begins is waited
for (bounded), never cancelled and lost; a failed or cancelled write puts its batch back.
Assertions are counts of events in the Redis stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from tests.helpers.gateway import Gateway
from tokenward.gateway.store_keys import Keys


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def test_the_batch_in_flight_at_shutdown_reaches_the_stream(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any], redis_url: str
) -> None:
    gw = await start_gateway(config)
    audit = gw.runtime.audit
    await audit.flush()
    pauser = redis.Redis.from_url(redis_url)
    base = pauser.xlen(Keys.audit)
    # The store stops taking writes for a while, then requests are audited: the next flush
    # takes them and waits on the store; shutdown begins while it does.
    pauser.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
    try:
        for _ in range(120):
            async with gw.session.get(gw.url + "/health") as response:
                assert response.status == 200
        await wait_for(lambda: not audit._pending)  # taken by a flush, which is blocked now
        await gw.server.stop()
    finally:
        pauser.execute_command("CLIENT", "UNPAUSE")
    assert pauser.xlen(Keys.audit) - base == 120
    pauser.close()
