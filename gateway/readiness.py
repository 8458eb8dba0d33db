"""Is this process ready for traffic? (`/readyz`, and each worker's report under --workers)

Ready means: the config is loaded (a runtime exists only with one), both listeners are
serving (the server says so; not yet at start, no longer once a shutdown began), and the
store is reachable or has been unreachable for less than `redis.stale_if_error`, the window
in which recently verified tokens keep working from the cache. A store outage alone does not
take every replica out of its Service at once; one longer than that window does.

The store is pinged in the background every PROBE_INTERVAL when nothing else reached it
meanwhile (or while it is down), so an outage is noticed without traffic and `/readyz`
answers from the state at once, never waiting on a store that hangs. Under traffic the
probe stays out of the way: the requests' own store calls keep the state.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.store_link import StoreUnavailable

PROBE_INTERVAL = 1.0  # seconds between two background pings of the store


class Pingable(Protocol):
    @property
    def up(self) -> bool: ...
    @property
    def answered(self) -> int: ...
    def down_for(self) -> float: ...
    async def ping(self) -> bool: ...


class Readiness:
    """One process's readiness: `state()` is the report, `reasons()` empty when ready."""

    def __init__(self, store: Pingable, stale_if_error: float, interval: float = PROBE_INTERVAL) -> None:
        self.store = store
        self.stale_if_error = stale_if_error
        self.interval = interval
        self.serving = False  # both listeners accept connections (set by the server)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # redis-py can swallow a cancellation: the loop watches this too

    async def start(self) -> None:
        async def probe() -> None:
            store, seen = self.store, -1
            while not self._stopping:
                if store.answered == seen or not store.up:  # idle, or down: see for ourselves
                    with contextlib.suppress(StoreUnavailable):
                        await store.ping()  # a failure is recorded by the store link itself
                seen = store.answered
                await asyncio.sleep(self.interval)

        self._task = asyncio.create_task(probe(), name="tokenward-readiness")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        await cancel_and_wait([task])

    def reasons(self) -> list[str]:
        """Why this process is not ready (empty: it is)."""
        reasons: list[str] = []
        if not self.serving:
            reasons.append("listeners not serving (starting or shutting down)")
        store = self.store
        if not store.up:
            down_for = store.down_for()
            if down_for >= self.stale_if_error:
                reasons.append(
                    f"store unreachable for {down_for:.0f}s, beyond redis.stale_if_error ({self.stale_if_error:g}s)"
                )
        return reasons

    def state(self) -> dict[str, Any]:
        """The report: status, reasons, and the store's reachability."""
        reasons = self.reasons()
        store = self.store
        return {
            "status": "not_ready" if reasons else "ready",
            "reasons": reasons,
            "store": {
                "up": store.up,
                "down_for_s": round(store.down_for(), 1),
                "stale_if_error_s": self.stale_if_error,
            },
        }
