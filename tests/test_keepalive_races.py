"""Upstreams that close idle keep-alive connections, under concurrent load: the gateway
must never turn the race into a 502 (a stale pooled connection is retried on a new
connection, never on another pooled one), and connections are retired before the upstream
would close them (`Connection: close`, `Keep-Alive: timeout=N`). Assertions are counts."""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.helpers.gateway import ROOT, Gateway
from tests.helpers.scripted import OK, send
from tokenward.gateway.embedded import free_port
from tokenward.gateway.upstream import BODY_REUSE_SECONDS

PATH = "/orgs/org/teams/team/apis"


class IdleClosingUpstream:
    """tests/closing_upstream.py in its own process; `requests()` lists what it received."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[bytes] = []

    async def requests(self) -> list[tuple[int, bytes]]:
        """Every request it answered, as (connection, body), once it has been stopped."""
        if self.process.returncode is None:
            self.process.terminate()
            assert self.process.stdout is not None
            self.lines += (await self.process.stdout.read()).splitlines()
            await self.process.wait()
        return [(int(c), b) for c, b in (line.split(b" ", 1) for line in self.lines)]


@pytest.fixture
async def idle_closing() -> AsyncIterator[Callable[..., Awaitable[IdleClosingUpstream]]]:
    started: list[IdleClosingUpstream] = []

    async def start(idle: float, extra: str = "") -> IdleClosingUpstream:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.closing_upstream", str(port), str(idle), extra,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        assert await process.stdout.readline() == b"ready\n"
        upstream = IdleClosingUpstream(process, port)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        if upstream.process.returncode is None:
            upstream.process.kill()
            await upstream.process.wait()


async def load(gw: Gateway, requests: int, concurrency: int, pause: float = 0.0, **kw: Any) -> Counter[int]:
    """`requests` requests from `concurrency` clients; each client pauses up to `pause`
    seconds between its requests (so pooled connections idle for varied times)."""
    statuses: Counter[int] = Counter()
    todo = iter(range(requests))
    rng = random.Random(11)
    method = kw.pop("method", "GET")

    async def client() -> None:
        for _ in todo:
            async with gw.session.request(method, gw.url + kw.get("path", "/health"), **kw.get("args", {})) as r:
                await r.read()
                statuses[r.status] += 1
            if pause:
                await asyncio.sleep(rng.uniform(0, pause))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


async def test_an_upstream_closing_after_each_response_gets_no_502(idle_closing: Any, through: Any) -> None:
    upstream = await idle_closing(0)
    gw = await through(upstream)
    statuses = await load(gw, 1000, 32)
    assert statuses == Counter({200: 1000})
    assert len(await upstream.requests()) == 1000


async def test_an_upstream_with_a_short_idle_timeout_gets_no_502(idle_closing: Any, through: Any) -> None:
    upstream = await idle_closing(0.02)
    gw = await through(upstream)
    statuses = await load(gw, 600, 32, pause=0.04)
    assert statuses == Counter({200: 600})


async def test_requests_with_a_body_are_never_replayed_under_idle_closes(
    idle_closing: Any, through: Any
) -> None:
    upstream = await idle_closing(0)
    gw = await through(upstream)
    await gw.team("team", ["write:apis"], org="org")
    token, _ = await gw.token("team", ["write:apis"], org="org")
    assert (await load(gw, 1, 1)) == Counter({200: 1})
    assert gw.runtime.forwarder is not None
    pool = next(iter(gw.runtime.forwarder.pools.values()))
    while pool.idle or pool.body_reuse == BODY_REUSE_SECONDS:
        await asyncio.sleep(0.01)  # until the pool has seen the upstream close a kept connection
    bodies = [b"body-%d" % i for i in range(60)]
    it = iter(bodies)
    statuses: Counter[int] = Counter()

    async def client() -> None:
        for body in it:
            async with gw.session.post(gw.url + PATH, data=body, headers=gw.auth(token)) as r:
                await r.read()
                statuses[r.status] += 1

    await asyncio.gather(*(client() for _ in range(8)))
    assert statuses == Counter({200: 60})
    received = [body for _, body in await upstream.requests()]
    assert sorted(received[1:]) == sorted(bodies)  # each sent exactly once


async def test_keep_alive_timeout_retires_the_connection_first(scripted: Any, through: Any) -> None:
    # The upstream announces a 2 s idle timeout; a connection idle longer than 1 s (2 s minus
    # the margin) is not offered again, so no request is ever written to one it is closing.
    upstream = await scripted(send(OK.replace(b"\r\n\r\n", b"\r\nKeep-Alive: timeout=2, max=100\r\n\r\n", 1)))
    gw = await through(upstream)
    async with gw.session.get(gw.url + "/health") as r:
        assert r.status == 200
    async with gw.session.get(gw.url + "/health") as r:
        assert r.status == 200
    assert upstream.connections == 1  # reused while young
    assert gw.runtime.forwarder is not None
    for pool in gw.runtime.forwarder.pools.values():
        for conn in pool.idle:
            conn.idle_since -= 1.2  # as if it had idled 1.2 s (no sleeping in tests)
    async with gw.session.get(gw.url + "/health") as r:
        assert r.status == 200
    assert upstream.connections == 2 and len(upstream.seen) == 3  # new connection, nothing wasted


async def test_keep_alive_timeout_below_the_margin_is_not_pooled(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(OK.replace(b"\r\n\r\n", b"\r\nKeep-Alive: timeout=1\r\n\r\n", 1)))
    gw = await through(upstream)
    for _ in range(3):
        async with gw.session.get(gw.url + "/health") as r:
            assert r.status == 200
    assert upstream.connections == 3
