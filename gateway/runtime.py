"""The runtime: what one tokenward process (or one worker) shares between the proxy and the
admin API, opened as one lifecycle.

`open_runtime(settings)` (or `Runtime.open` / `Runtime.close` for an owner whose start and
stop are separate calls) opens each resource in order on one AsyncExitStack: the runtime's
own log output (when given a stream), the embedded store, the store connection, the
upstream pools, the tracer (when tracing is on: gateway/tracing.py), the tunnel watch, the
audit writer, the change listener, the metrics refresher and the readiness probe. They are
closed in the reverse order, and so are those already open when a later step fails. This is
also the composition root of the metrics: it registers their sources.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from aiohttp import web

from tokenward.gateway.audit import AuditLog
from tokenward.gateway.cache import ChangeListener, VerificationCache
from tokenward.gateway.decision import Authenticator
from tokenward.gateway.embedded import EmbeddedServer, start_embedded
from tokenward.gateway.limiter import Limiter
from tokenward.gateway.logs import LogOutput, process_output
from tokenward.gateway.metrics import Metrics, count_expiring
from tokenward.gateway.proxy import Forwarder
from tokenward.gateway.readiness import Readiness
from tokenward.gateway.settings import ConfigError, Settings, load_settings
from tokenward.gateway.store import Store
from tokenward.gateway.store_connect import connect
from tokenward.gateway.tokens import SecretHasher
from tokenward.gateway.tracing import Tracing, open_tracing
from tokenward.gateway.tunnel import TunnelWatch
from tokenward.gateway.upstream_limit import PoolGauges
from tokenward.gateway.upstream_tls import warn_unverified
from tokenward.gateway.version import version

log = structlog.get_logger("tokenward")

WEAK_PERSISTENCE = ("off", "rdb-only", "aof on some masters only")


@dataclass(eq=False)
class Runtime:
    """Everything a tokenward process shares between the proxy and the admin API. Built
    whole by `open`; nothing is filled in later."""

    settings: Settings
    store: Store
    cache: VerificationCache
    hasher: SecretHasher
    authenticator: Authenticator
    audit: AuditLog
    listener: ChangeListener
    metrics: Metrics
    forwarder: Forwarder
    tunnels: TunnelWatch
    readiness: Readiness
    log: LogOutput | None  # where this runtime logs (None: structlog's own set-up)
    embedded: EmbeddedServer | None  # the embedded store this runtime started (None: not ours)
    store_description: str
    limiter: Limiter  # the rate_limit step (gateway/limiter.py)
    resources: AsyncExitStack = field(repr=False)  # closes what `open` opened, in reverse
    started_at: float = field(default_factory=time.time)
    tracing: Tracing | None = None  # None: tracing is off (gateway/tracing.py)
    reloads: int = 0
    reload_failures: int = 0

    @classmethod
    async def open(
        cls,
        settings: Settings,
        redis_url: str | None = None,
        *,
        worker: int | None = None,
        log_stream: Any = None,
        tracing: Tracing | None = None,
    ) -> Runtime:
        """Open every resource (starting the embedded store if needed); on any failure,
        close those already open before raising.

        `redis_url`: one server given by the caller (tests, `serve --workers`), instead of
        the config's. `worker`: the metrics' `worker` label. `log_stream`: this runtime's own
        log output (opened and closed with it) instead of the process's (configure_logging).
        `tracing`: this runtime's tracer (tests), instead of the one `settings.tracing` and the
        OTEL_* environment ask for; closed with the runtime either way."""
        stack = AsyncExitStack()
        try:
            return await _open(stack, settings, redis_url, worker, log_stream, tracing)
        except BaseException:
            await stack.aclose()
            raise

    async def close(self) -> None:
        """Close everything `open` opened, in the reverse order."""
        await self.resources.aclose()

    def reload(self, path: str) -> bool:
        """Swap in routes, upstreams and policies from `path` atomically; keep the old
        settings (and log every problem) when the file is bad. Requests in flight finish on
        the settings they started with."""
        try:
            new = load_settings(path)
        except ConfigError as exc:
            self.reload_failures += 1
            log.error("config reload failed; keeping the current config", problems=exc.problems)
            return False
        old = self.settings
        fixed = ("listen", "admin_listen", "redis", "data_dir", "allow_python_parser", "tracing")
        changed = [name for name in fixed if getattr(new, name) != getattr(old, name)]
        if changed:
            log.warning("config reload: these settings need a restart and were not applied", settings=changed)
        new = replace(new, **{name: getattr(old, name) for name in fixed})
        self.authenticator.accepted_prefixes = new.tokens.accepted_prefixes
        if old.tokens.legacy_lookup_key not in (None, new.tokens.legacy_lookup_key):
            log.warning("config reload: tokens.legacy_lookup_key changed; keys imported under the old one no longer work")
        self.authenticator.legacy_lookup_key = new.tokens.legacy_lookup_key
        self.cache.ttl = new.tokens.cache_ttl
        self.audit.stream_maxlen = new.audit.stream_maxlen
        self.limiter.settings = new.rate_limits
        self.settings = new  # one reference swap: each request reads it once
        self.forwarder.reconfigure(new.upstreams)
        warn_unverified(new.upstreams)
        self.reloads += 1
        log.info("config reloaded", routes=len(new.routes), upstreams=len(new.upstreams))
        return True


RUNTIME = web.AppKey("runtime", Runtime)


@asynccontextmanager
async def open_runtime(
    settings: Settings, redis_url: str | None = None, *, worker: int | None = None, log_stream: Any = None
) -> AsyncIterator[Runtime]:
    """`async with open_runtime(settings) as runtime:` (see Runtime.open)."""
    runtime = await Runtime.open(settings, redis_url, worker=worker, log_stream=log_stream)
    try:
        yield runtime
    finally:
        await runtime.close()


async def _open(
    stack: AsyncExitStack,
    settings: Settings,
    redis_url: str | None,
    worker: int | None,
    log_stream: Any,
    tracing: Tracing | None = None,
) -> Runtime:
    output = process_output()
    if log_stream is not None:
        output = LogOutput(settings.log, log_stream)
        stack.callback(output.close)
    embedded = None
    store_settings = settings.redis
    if redis_url is not None:  # one server: no Sentinel or Cluster discovery
        store_settings = replace(store_settings, url=redis_url, sentinel=None, cluster=None)
    elif store_settings.embedded:
        embedded, url = start_embedded(settings.data_dir)
        if embedded is not None:
            stack.callback(embedded.stop)
        store_settings = replace(store_settings, url=url)
    store = Store(connect(store_settings))
    stack.push_async_callback(store.close)
    persistence = await store.check_durability()
    unix = (store_settings.url or "").startswith("unix://")
    where = "embedded" if unix else await store.location()

    cache = VerificationCache(ttl=settings.tokens.cache_ttl)
    a2 = settings.tokens.argon2
    hasher = SecretHasher(a2.time_cost, a2.memory_cost, a2.parallelism)
    authenticator = Authenticator(store, cache, hasher, settings.tokens.accepted_prefixes)
    authenticator.stale_if_error = settings.redis.stale_if_error
    authenticator.legacy_lookup_key = settings.tokens.legacy_lookup_key
    metrics = Metrics(str(worker or 0))
    forwarder = Forwarder(metrics.upstream_latency)
    stack.callback(forwarder.close)
    if tracing is None:
        tracing = open_tracing(settings.tracing)
    if tracing is not None:
        stack.push_async_callback(tracing.close)
    tunnels = TunnelWatch(cache)
    stack.push_async_callback(tunnels.stop)
    audit = AuditLog(store, settings.audit.stream_maxlen, output=output)
    listener = ChangeListener(store, cache)
    runtime = Runtime(
        settings=settings,
        store=store,
        cache=cache,
        hasher=hasher,
        authenticator=authenticator,
        audit=audit,
        listener=listener,
        metrics=metrics,
        forwarder=forwarder,
        tunnels=tunnels,
        readiness=Readiness(store, settings.redis.stale_if_error),
        log=output,
        embedded=embedded,
        store_description=f"{where} (persistence: {persistence})",
        limiter=Limiter(store, settings.rate_limits, cache=cache),
        resources=stack,
        tracing=tracing,
    )
    if persistence in WEAK_PERSISTENCE:
        log.warning(
            "store persistence is not append-only: a token shown to its creator could be "
            "lost in a crash; enable appendonly yes on the store (on every master and replica)",
            persistence=persistence,
        )
    if store.durability_warning is not None:
        log.warning("store durability: confirmed admin writes can be lost in a crash of the store",
                    persistence=persistence, detail=store.durability_warning)
    await audit.start()
    stack.push_async_callback(audit.stop)
    stack.push_async_callback(runtime.limiter.close)  # before the store closes: the last sync
    await listener.start()
    stack.push_async_callback(listener.stop)
    register_metrics(runtime)
    metrics.registry.register(PoolGauges(lambda: forwarder.pools.values(), metrics.worker))
    warn_unverified(settings.upstreams)
    await metrics.start(lambda: count_expiring(runtime))
    stack.push_async_callback(metrics.stop)
    await runtime.readiness.start()
    stack.push_async_callback(runtime.readiness.stop)
    return runtime


def register_metrics(runtime: Runtime) -> None:
    """The scrape-time sources of the runtime's metrics (read through `runtime`, so a
    reload's new settings are what `tokenward_routes` shows)."""
    metrics, stats, output = runtime.metrics, runtime.cache.stats, runtime.log
    counter, gauge = metrics.counter, metrics.gauge
    metrics.info("tokenward_build", "tokenward's version (value 1)", {"version": version()})
    counter("tokenward_cache_hits", "Verification cache hits", lambda: stats.hits)
    counter("tokenward_cache_misses", "Verification cache misses", lambda: stats.misses)
    counter("tokenward_cache_invalidations", "Cache entries dropped on change notifications",
            lambda: stats.invalidations)
    counter("tokenward_cache_clears", "Whole-cache clears (reconnects, change-log gaps)", lambda: stats.clears)
    counter("tokenward_argon2_verifications", "argon2id secret verifications",
            lambda: runtime.authenticator.argon2_verifications)
    counter("tokenward_throttled_attempts", "Unproven tokens refused without verification (flood throttle)",
            lambda: runtime.authenticator.throttle.refused)
    counter("tokenward_legacy_lookups_throttled",
            "Lookups of credentials not in our format (imported keys) refused without a store read: "
            "too many found nothing", lambda: runtime.authenticator.lookups.refused)
    counter("tokenward_store_errors", "Store errors", lambda: runtime.store.errors)
    counter("tokenward_store_outages",
            "Times the store became unreachable (one per outage, however many calls failed)",
            lambda: runtime.store.outages)
    counter("tokenward_log_dropped",
            "Log lines dropped because the log's reader did not keep up (the log says how many)",
            lambda: output.dropped if output is not None else 0)
    counter("tokenward_audit_dropped",
            "Audit events not queued for the audit stream because its buffer was full (logged all the same)",
            lambda: runtime.audit.dropped)
    counter("tokenward_usage_dropped",
            "Requests not counted in usage per token because the tally was full between two flushes",
            lambda: runtime.audit.usage.dropped)
    counter("tokenward_config_reloads", "Successful config reloads", lambda: runtime.reloads)
    counter("tokenward_config_reload_failures", "Config reloads refused (bad file)", lambda: runtime.reload_failures)
    gauge("tokenward_store_up",
          "1 while the store answers; 0 from its first failure until calls have succeeded for a second",
          lambda: float(runtime.store.up))
    gauge("tokenward_push_channel_connected", "1 while the change notification channel is connected",
          lambda: float(runtime.listener.push_connected))
    gauge("tokenward_tokens_expiring_soon", "Active tokens expiring within 14 days",
          lambda: float(metrics.expiring_tokens))
    gauge("tokenward_routes", "Routes in the loaded config", lambda: float(len(runtime.settings.routes)))
    gauge("tokenward_requests_in_flight", "Gateway requests being handled (open WebSocket tunnels included)",
          lambda: float(metrics.in_flight))
    gauge("tokenward_tunnels_open", "Open WebSocket tunnels", lambda: float(len(runtime.tunnels.open)))
    gauge("tokenward_ready", "1 while this process is ready (what /readyz says of it)",
          lambda: float(not runtime.readiness.reasons()))
    metrics.lags(runtime.listener.lags)
