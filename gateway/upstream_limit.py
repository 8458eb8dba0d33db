"""The cap on connections to one upstream (`max_connections`, per process): the connections
open at once, whether carrying a request, idle in the keep-alive pool, being opened, or
holding a WebSocket tunnel. A request that finds them all taken waits, first come first
served, for one to go idle or to close, at most `pool_timeout`; then it gets a 503. No
queue grows without bound: every waiter has a deadline, and one that gives up after it was
woken passes the wake-up on. `PoolGauges` shows the pools' figures on `/metrics`. How long
one connection may idle in the pool: `keep_alive_limit`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

IDLE_SECONDS = 15.0  # close a pooled connection idle this long
KEEP_ALIVE_MARGIN = 1.0  # retire a connection this long before the upstream's Keep-Alive timeout


class ConnectionLimit:
    """How many connections one pool has open, and the requests waiting for one."""

    def __init__(self, maximum: int, timeout: float) -> None:
        self.maximum = maximum
        self.timeout = timeout  # pool_timeout: the longest wait for a connection
        self.open = 0  # connections counted against the cap
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Count one more connection, if the cap allows it."""
        if self.open >= self.maximum:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        """A counted connection closed (or was never made)."""
        self.open -= 1
        self.wake()

    def wake(self) -> None:
        """The first waiter looks again: a connection went idle, or one closed."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def busy(self, upstream: str) -> str:
        """Why a request got no connection: the 503's message."""
        return (
            f"upstream {upstream}: all {self.maximum} connections (max_connections) stayed in use "
            f"for pool_timeout ({self.timeout:g}s)"
        )

    def resize(self, maximum: int, timeout: float) -> None:
        """A reload's new `max_connections` and `pool_timeout`: every waiter looks again."""
        self.maximum, self.timeout = maximum, timeout
        for _ in range(len(self.waiters)):
            self.wake()

    async def wait(self, deadline: float, front: bool = False) -> bool:
        """Until woken (True) or the loop time `deadline` (False). `front`: a waiter that
        was woken but found nothing (another request came first) keeps its place."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if front:
            self.waiters.appendleft(waiter)
        else:
            self.waiters.append(waiter)
        woken = False
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
                woken = True
        except TimeoutError:
            pass
        finally:
            if not woken:
                if waiter.done() and not waiter.cancelled():
                    self.wake()  # woken, but gone before it could look: the next one looks
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(waiter)
        return woken


class PoolFigures(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def idle(self) -> Sized: ...
    @property
    def limit(self) -> ConnectionLimit: ...


def connection_counts(pools: Iterable[PoolFigures]) -> dict[str, tuple[int, int, int]]:
    """Per upstream name: connections in use, idle, and requests waiting for one."""
    counts: dict[str, tuple[int, int, int]] = {}
    for pool in pools:
        idle = len(pool.idle)
        in_use, idle_sum, waiting = counts.get(pool.name, (0, 0, 0))
        counts[pool.name] = (in_use + pool.limit.open - idle, idle_sum + idle, waiting + len(pool.limit.waiters))
    return counts


class PoolGauges(Collector):
    """`tokenward_upstream_connections{upstream, state}` (in_use, idle) and
    `tokenward_upstream_waiting{upstream}`, read from the pools at scrape time."""

    def __init__(self, pools: Callable[[], Iterable[PoolFigures]], worker: str) -> None:
        self.pools = pools
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "tokenward_upstream_connections",
            "Connections open to each upstream (max_connections caps them): in use (requests, "
            "WebSocket tunnels) or idle in the keep-alive pool",
            labels=["worker", "upstream", "state"],
        )
        waiting = GaugeMetricFamily(
            "tokenward_upstream_waiting",
            "Requests waiting for a connection to the upstream (all max_connections taken)",
            labels=["worker", "upstream"],
        )
        for name, (in_use, idle, queued) in sorted(connection_counts(self.pools()).items()):
            connections.add_metric([self.worker, name, "in_use"], in_use)
            connections.add_metric([self.worker, name, "idle"], idle)
            waiting.add_metric([self.worker, name], queued)
        yield connections
        yield waiting


def keep_alive_limit(headers: list[tuple[bytes, bytes]]) -> float:
    """How long a connection may idle in the pool, from the response's `Keep-Alive: timeout=N`
    (minus a margin for the request's way there); IDLE_SECONDS if it names no timeout."""
    limit = IDLE_SECONDS
    for name, value in headers:
        if name.lower() != b"keep-alive":
            continue
        for param in value.split(b","):
            key, _, number = param.partition(b"=")
            if key.strip().lower() == b"timeout":
                try:
                    seconds = float(number.strip().strip(b'"'))
                except ValueError:
                    continue
                if seconds == seconds:  # not NaN
                    limit = min(limit, max(0.0, seconds - KEEP_ALIVE_MARGIN))
    return limit
