"""Prometheus metrics for `/metrics` on the admin listener.

Request counts and latencies are recorded as they happen; counters that live elsewhere
(cache hits, argon2 verifications, throttled attempts, store errors, reloads) are read at
scrape time from sources the composition root registers (`counter`, `gauge`: a name, its
help and a callable), so the hot path only bumps plain integers and this module knows
nothing of what it measures. Each runtime has its own registry. Under `serve --workers N`
each worker serves its own figures (label `worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.bounded import BoundedMap
from tokenward.gateway.records import ACTIVE
from tokenward.gateway.store import Store
from tokenward.gateway.store_link import StoreUnavailable

EXPIRY_WINDOW = 14 * 86400

Read = Callable[[], float]


class Metrics:
    def __init__(self, worker: str = "0") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.worker = worker
        self.requests = Counter(
            "tokenward_requests",
            "Gateway decisions by route, decision step and status",
            ["route", "step", "status"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "tokenward_upstream_seconds",
            "Time to the upstream's response headers",
            ["upstream"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.invalidation_lag = Histogram(
            "tokenward_invalidation_lag_seconds",
            "Time from a store change to its cache invalidation",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.expiring_tokens = 0
        self._request_children: BoundedMap[tuple[str, str, int], Any] = BoundedMap(10_000)
        self._counters: list[tuple[str, str, Read]] = []
        self._gauges: list[tuple[str, str, Read]] = []
        self._lags: list[list[float]] = []
        self._task: asyncio.Task[None] | None = None
        self.registry.register(_SourceCollector(self))

    def count_request(self, route: str, step: str, status: int) -> None:
        """`requests.labels(...).inc()`, with the labelled children remembered."""
        key = (route, step, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(route, step, str(status))
            self._request_children.put(key, child)
        child.inc()

    def counter(self, name: str, doc: str, read: Read) -> None:
        """A counter (label `worker`) whose value `read()` gives at scrape time."""
        self._counters.append((name, doc, read))

    def gauge(self, name: str, doc: str, read: Read) -> None:
        """A gauge (label `worker`) whose level `read()` gives at scrape time."""
        self._gauges.append((name, doc, read))

    def lags(self, recorded: list[float]) -> None:
        """A list of invalidation lags (seconds) its owner appends to; observed and emptied
        at each scrape."""
        self._lags.append(recorded)

    def render(self) -> bytes:
        for recorded in self._lags:  # lags are recorded by their owner as plain floats
            for lag in recorded:
                self.invalidation_lag.observe(lag)
            recorded.clear()
        return generate_latest(self.registry)

    async def start(self, count_expiring: Callable[[], Awaitable[int]], interval: float = 60.0) -> None:
        """Refresh `expiring_tokens` from `count_expiring()` every `interval` seconds."""

        async def refresh() -> None:
            while True:
                with contextlib.suppress(StoreUnavailable):
                    self.expiring_tokens = await count_expiring()
                if self._task is None:  # stopped while the store call ran
                    return
                await asyncio.sleep(interval)

        self._task = asyncio.create_task(refresh(), name="tokenward-metrics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])


EXPIRING_CHUNK = 200  # records decoded between two turns of the event loop


class HasStore(Protocol):
    @property
    def store(self) -> Store: ...


async def count_expiring(runtime: HasStore) -> int:
    """Active tokens expiring within EXPIRY_WINDOW. It reads every token, so in chunks: the
    gateway's requests run between them instead of waiting for the whole store's decoding."""
    store, now = runtime.store, time.time()
    count = 0
    for org in await store.list_orgs():
        ids = await store.list_token_ids(org, all_org=True)
        for start in range(0, len(ids), EXPIRING_CHUNK):
            for token, _ in await store.get_tokens_with_usage(ids[start : start + EXPIRING_CHUNK]):
                if (
                    token.status(now) == ACTIVE
                    and token.expires_at is not None
                    and token.expires_at <= now + EXPIRY_WINDOW
                ):
                    count += 1
    return count


class _SourceCollector(Collector):
    """The registered counters and gauges, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        worker = [self.metrics.worker]
        for name, doc, read in self.metrics._counters:
            family = CounterMetricFamily(name, doc, labels=["worker"])
            family.add_metric(worker, read())
            yield family
        for name, doc, read in self.metrics._gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["worker"])
            gauge.add_metric(worker, read())
            yield gauge


class BuildInfo(Collector):
    """`tokenward_build_info{version="0.1.0"} 1`: the version that serves these figures (the
    package metadata's, `tokenward.gateway.version`), the Prometheus way of exposing it."""

    def __init__(self, version: str) -> None:
        self.version = version

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("tokenward_build_info", "tokenward's version (always 1)", labels=["version"])
        info.add_metric([self.version], 1.0)
        yield info
