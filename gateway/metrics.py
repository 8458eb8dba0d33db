"""Prometheus metrics for `/metrics` on the admin listener.

Request counts and latencies are recorded as they happen; counters that live elsewhere
(cache hits, argon2 verifications, throttled attempts, store errors, reloads) are read at
scrape time by a collector, so the hot path only bumps plain integers. Each Runtime has its
own registry. Under `serve --workers N` each worker serves its own figures (label `worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.audit import log_dropped
from tokenward.gateway.records import ACTIVE
from tokenward.gateway.store_link import StoreUnavailable

if TYPE_CHECKING:
    from tokenward.gateway.app import Runtime

EXPIRY_WINDOW = 14 * 86400


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
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._runtime: Runtime | None = None
        self._task: asyncio.Task[None] | None = None

    def count_request(self, route: str, step: str, status: int) -> None:
        """`requests.labels(...).inc()`, with the labelled children remembered."""
        key = (route, step, status)
        child = self._request_children.get(key)
        if child is None:
            if len(self._request_children) > 10_000:
                self._request_children.clear()
            child = self._request_children[key] = self.requests.labels(route, step, str(status))
        child.inc()

    def attach(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.registry.register(_RuntimeCollector(runtime, self))

    def render(self) -> bytes:
        runtime = self._runtime
        if runtime is not None:  # lags are recorded by the listener as plain floats
            for lag in runtime.listener.lags:
                self.invalidation_lag.observe(lag)
            runtime.listener.lags.clear()
        return generate_latest(self.registry)

    async def start(self, runtime: Runtime, interval: float = 60.0) -> None:
        async def refresh() -> None:
            while True:
                with contextlib.suppress(StoreUnavailable):
                    self.expiring_tokens = await count_expiring(runtime)
                if self._task is None:  # stopped while the store call ran
                    return
                await asyncio.sleep(interval)

        self._task = asyncio.create_task(refresh(), name="tokenward-metrics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])


EXPIRING_CHUNK = 200  # records decoded between two turns of the event loop


async def count_expiring(runtime: Runtime) -> int:
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


class _RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        stats = runtime.cache.stats
        counters = {
            "tokenward_cache_hits": ("Verification cache hits", stats.hits),
            "tokenward_cache_misses": ("Verification cache misses", stats.misses),
            "tokenward_cache_invalidations": (
                "Cache entries dropped on change notifications",
                stats.invalidations,
            ),
            "tokenward_cache_clears": ("Whole-cache clears (reconnects, change-log gaps)", stats.clears),
            "tokenward_argon2_verifications": (
                "argon2id secret verifications",
                runtime.authenticator.argon2_verifications,
            ),
            "tokenward_throttled_attempts": (
                "Unproven tokens refused without verification (flood throttle)",
                runtime.authenticator.throttle.refused,
            ),
            "tokenward_store_errors": ("Store errors", runtime.store.errors),
            "tokenward_store_outages": (
                "Times the store became unreachable (one per outage, however many calls failed)",
                runtime.store.outages,
            ),
            "tokenward_log_dropped": (
                "Log lines dropped because the log's reader did not keep up (the log says how many)",
                log_dropped(),
            ),
            "tokenward_config_reloads": ("Successful config reloads", runtime.reloads),
            "tokenward_config_reload_failures": (
                "Config reloads refused (bad file)",
                runtime.reload_failures,
            ),
        }
        for name, (doc, value) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["worker"])
            family.add_metric([self.metrics.worker], value)
            yield family
        gauges = {
            "tokenward_store_up": (
                "1 while the store answers; 0 from its first failure until calls have succeeded for a second",
                float(runtime.store.up),
            ),
            "tokenward_push_channel_connected": (
                "1 while the change notification channel is connected",
                float(runtime.listener.push_connected),
            ),
            "tokenward_tokens_expiring_soon": (
                "Active tokens expiring within 14 days",
                float(self.metrics.expiring_tokens),
            ),
            "tokenward_routes": ("Routes in the loaded config", float(len(runtime.settings.routes))),
        }
        for name, (doc, level) in gauges.items():
            gauge = GaugeMetricFamily(name, doc, labels=["worker"])
            gauge.add_metric([self.metrics.worker], level)
            yield gauge
