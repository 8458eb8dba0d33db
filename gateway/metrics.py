"""Prometheus metrics for `/metrics` on the admin listener.

Request counts and latencies are recorded as they happen, as plain integer bumps on
remembered cells (no lock, no label lookup beyond one dict read); counters that live
elsewhere (cache hits, argon2 verifications, throttled attempts, store errors, reloads) are
read at scrape time from sources the composition root registers (`counter`, `gauge`: a
name, its help and a callable), so this module knows nothing of what it measures. Each
runtime has its own registry.

The label rule, the same for one process and for `serve --workers N`: counters and
histograms carry no `worker` label (under --workers a scrape gives the sum over every
worker, see `merge`); gauges carry `worker`, one series per live worker. prometheus_client's
own instruments are not used, so no `_created` series is exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import accumulate
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.records import ACTIVE
from tokenward.gateway.routes import HTTP_METHODS
from tokenward.gateway.store import Store
from tokenward.gateway.store_link import StoreUnavailable

EXPIRY_WINDOW = 14 * 86400

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
GATEWAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
METHODS = frozenset((*HTTP_METHODS, "CONNECT", "TRACE"))  # any other method is counted as "other"
SUMMED = frozenset(("counter", "histogram"))  # summed over workers; every other type is per worker

Read = Callable[[], float]
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
# One metric family as it crosses processes (JSON): name, type, help, [sample name, labels, value]...
Family = tuple[str, str, str, list[tuple[str, dict[str, str], float | str]]]


class HistogramRow:
    """One labelled row of a `Histogram`: a count per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # `le` is inclusive, as bisect_left finds
        self.total += value


class Histogram:
    """A histogram with plain integer buckets: `labels(...)` remembers each row."""

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.labelnames, self.bounds = name, doc, labelnames, bounds
        self.rows: dict[tuple[str, ...], HistogramRow] = {}
        self._les = [repr(float(b)) for b in bounds] + ["+Inf"]  # as prometheus_client writes `le`

    def labels(self, *values: str) -> HistogramRow:
        row = self.rows.get(values)
        if row is None:
            row = self.rows[values] = HistogramRow(self.bounds)
        return row

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labelnames))
        for values, row in self.rows.items():
            buckets = list(zip(self._les, accumulate(row.counts), strict=True))
            family.add_metric(list(values), buckets, row.total)
        return family


class RequestCell:
    """One label set of `tokenward_requests_total`, with its row of the gateway-time histogram."""

    __slots__ = ("count", "labels", "latency")

    def __init__(self, labels: tuple[str, str, str, str, str], latency: HistogramRow) -> None:
        self.labels = labels
        self.count = 0
        self.latency = latency


class Metrics:
    def __init__(self, worker: str = "0") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.worker = worker
        self.gateway_latency = Histogram(
            "tokenward_gateway_seconds",
            "The gateway's own time on a request: from its arrival until it was forwarded, "
            "answered or refused (the upstream's time is tokenward_upstream_seconds)",
            ("method", "route"),
            GATEWAY_BUCKETS,
        )
        self.upstream_latency = Histogram(
            "tokenward_upstream_seconds", "Time to the upstream's response headers", ("upstream",), LATENCY_BUCKETS
        )
        self.invalidation_lag = Histogram(
            "tokenward_invalidation_lag_seconds", "Time from a store change to its cache invalidation", (), LAG_BUCKETS
        )
        self.in_flight = 0  # requests being handled (the pipeline bumps it)
        self.expiring_tokens = 0
        self._requests: dict[tuple[str, str, str, str, int], RequestCell] = {}  # as recorded -> cell
        self._cells: dict[tuple[str, str, str, str, str], RequestCell] = {}  # by its labels
        self._counters: list[tuple[str, str, Read]] = []
        self._gauges: list[tuple[str, str, Read]] = []
        self._infos: list[tuple[str, str, dict[str, str]]] = []
        self._lags: list[list[float]] = []
        self._carried: list[Family] = []  # a restarted worker's predecessor's counts
        self._task: asyncio.Task[None] | None = None
        self.registry.register(_SourceCollector(self))
        self.registry.register(_PerWorker(ProcessCollector(registry=None), worker))

    def count_request(self, method: str, route: str, upstream: str, step: str, status: int, seconds: float) -> None:
        """One request: +1 on its `tokenward_requests_total` cell and `seconds` of the
        gateway's own time observed, on cells remembered by what the pipeline passes."""
        cell = self._requests.get((method, route, upstream, step, status))
        if cell is None:
            cell = self._cell(method, route, upstream, step, status)
        cell.count += 1
        row = cell.latency
        row.counts[bisect_left(row.bounds, seconds)] += 1
        row.total += seconds

    def _cell(self, method: str, route: str, upstream: str, step: str, status: int) -> RequestCell:
        known = method in METHODS
        # the route label is the route's path: "GET,POST /x" -> "/x" (the method is a label of its own)
        labels = (method if known else "other", route.partition(" ")[2] or route, upstream or "-", str(step), str(status))
        cell = self._cells.get(labels)
        if cell is None:
            row = self.gateway_latency.labels(labels[0], labels[1])
            cell = self._cells[labels] = RequestCell(labels, row)
        if known:  # a made-up method is not remembered: the map stays as small as the config
            self._requests[(method, route, upstream, step, status)] = cell
        return cell

    def counter(self, name: str, doc: str, read: Read) -> None:
        """A counter whose value `read()` gives at scrape time."""
        self._counters.append((name, doc, read))

    def gauge(self, name: str, doc: str, read: Read) -> None:
        """A gauge (label `worker`) whose level `read()` gives at scrape time."""
        self._gauges.append((name, doc, read))

    def info(self, name: str, doc: str, labels: dict[str, str]) -> None:
        """A constant `NAME_info{labels..., worker} 1` (e.g. the build's version)."""
        self._infos.append((name, doc, labels))

    def lags(self, recorded: list[float]) -> None:
        """A list of invalidation lags (seconds) its owner appends to; observed and emptied
        at each scrape."""
        self._lags.append(recorded)

    def _observe_lags(self) -> None:
        row = self.invalidation_lag.labels()
        for recorded in self._lags:  # lags are recorded by their owner as plain floats
            for lag in recorded:
                row.observe(lag)
            recorded.clear()

    def render(self) -> bytes:
        """This process's exposition (one process; see `merge` for --workers)."""
        if self._carried:
            return exposition(self.snapshot())
        self._observe_lags()
        return generate_latest(self.registry)

    def snapshot(self) -> list[Family]:
        """Every family as plain data, with the counts carried from a predecessor added."""
        self._observe_lags()
        own = families(self.registry.collect())
        return merge([(own, True), (self._carried, False)]) if self._carried else own

    def carry(self, predecessor: list[Family]) -> None:
        """Start from a restarted worker's predecessor's last counts, so that the sum over
        workers never goes back (its gauges are not carried)."""
        self._carried = [f for f in predecessor if f[1] in SUMMED]

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


def families(collected: Iterable[Metric]) -> list[Family]:
    """Metric families as plain data (a value that is not finite travels as its text)."""
    out: list[Family] = []
    for metric in collected:
        samples: list[tuple[str, dict[str, str], float | str]] = [
            (s.name, dict(s.labels), s.value if math.isfinite(s.value) else _not_finite(s.value))
            for s in metric.samples
        ]
        out.append((metric.name, metric.type, metric.documentation, samples))
    return out


def merge(parts: Iterable[tuple[Iterable[Family], bool]]) -> list[Family]:
    """One set of families from several (each with whether its process is live): counters
    and histograms summed sample by sample over all of them, dead ones included (their
    counts happened); gauges from live ones only (they carry `worker`, so none collide)."""
    merged: dict[str, tuple[str, str, dict[SampleKey, tuple[dict[str, str], float]]]] = {}
    for found, live in parts:
        for name, kind, doc, samples in found:
            summed = kind in SUMMED
            if not (summed or live):
                continue
            entry = merged.setdefault(name, (kind, doc, {}))
            values = entry[2]
            for sample, labels, value in samples:
                key = (sample, tuple(sorted(labels.items())))
                number = float(value)
                before = values.get(key)
                values[key] = (labels, before[1] + number if summed and before is not None else number)
    return [
        (name, kind, doc, [(key[0], labels, value) for key, (labels, value) in values.items()])
        for name, (kind, doc, values) in merged.items()
    ]


def _not_finite(value: float) -> str:
    """How a value JSON cannot carry travels (float() reads it back)."""
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def exposition(found: Iterable[Family]) -> bytes:
    """The text exposition of `found`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(found))
    return generate_latest(registry)


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
    """The recorded requests and histograms, and the registered sources read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "tokenward_requests",
            "Gateway requests by method, route, upstream, decision step and status",
            labels=["method", "route", "upstream", "step", "status"],
        )
        for cell in list(m._cells.values()):
            requests.add_metric(list(cell.labels), cell.count)
        yield requests
        yield m.gateway_latency.collect()
        yield m.upstream_latency.collect()
        yield m.invalidation_lag.collect()
        worker = [m.worker]
        for name, doc, read in m._counters:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], read())
            yield family
        for name, doc, read in m._gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["worker"])
            gauge.add_metric(worker, read())
            yield gauge
        for name, doc, labels in m._infos:
            info = GaugeMetricFamily(f"{name}_info", doc, labels=[*labels, "worker"])
            info.add_metric([*labels.values(), m.worker], 1.0)
            yield info


class _PerWorker(Collector):
    """Another collector's families with `worker` added to its gauges (our label rule)."""

    def __init__(self, inner: Collector, worker: str) -> None:
        self.inner, self.worker = inner, worker

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            if metric.type not in SUMMED:
                labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                for s in metric.samples:
                    labelled.add_sample(s.name, {**s.labels, "worker": self.worker}, s.value)
                metric = labelled
            yield metric


class _Fixed(Collector):
    """Families given as plain data."""

    def __init__(self, found: Iterable[Family]) -> None:
        self.found = list(found)

    def collect(self) -> Iterator[Metric]:
        for name, kind, doc, samples in self.found:
            metric = Metric(name, doc, kind)
            for sample, labels, value in samples:
                metric.add_sample(sample, labels, float(value))
            yield metric
