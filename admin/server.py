"""Running tokenward: both listeners in one process, start-up line, graceful shutdown.

It sits above both halves (the gateway's proxy server and the admin API) and composes them
over one Runtime; `gateway/` imports nothing from here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tokenward import version
from tokenward.api import create_admin_app
from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.app import HeadDeadlineHandler, Listener, create_proxy_server
from tokenward.gateway.embedded import EmbeddedServer, EmbeddedStoreError
from tokenward.gateway.runtime import Runtime
from tokenward.gateway.settings import Settings
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.tracing import Tracing
from tokenward.gateway.upstream_tls import tls_files
from tokenward.health import publish
from tokenward.worker_board import BOARD, PUBLISH_INTERVAL, Board

log = structlog.get_logger("tokenward")

DRAIN_TIMEOUT = 30.0  # seconds SIGTERM gives requests in flight (serve --drain-timeout)
STORE_CHECK_INTERVAL = 0.5  # seconds between checks that the embedded store is alive
RESTART_BACKOFF_MIN = 0.5  # seconds before restarting what crashed (store or worker) ...
RESTART_BACKOFF_MAX = 30.0  # ... doubling per crash in a row, up to this
STABLE_AFTER = 60.0  # up this long: the next crash restarts at once again
PARENT_CHECK_INTERVAL = 1.0  # a worker checks that its supervisor is alive (besides PDEATHSIG)


class Backoff:
    """Crash-loop backoff: RESTART_BACKOFF_MIN, doubling per crash in a row up to
    RESTART_BACKOFF_MAX; a run of STABLE_AFTER seconds starts over."""

    def __init__(self) -> None:
        self.crashes = 0
        self.started = time.monotonic()

    def crashed(self) -> float:
        """Seconds to wait before the restart."""
        if time.monotonic() - self.started >= STABLE_AFTER:
            self.crashes = 0
        self.crashes += 1
        return float(min(RESTART_BACKOFF_MIN * 2.0 ** (self.crashes - 1), RESTART_BACKOFF_MAX))

    def restarted(self) -> None:
        self.started = time.monotonic()


class Server:
    """The proxy and admin listeners over one Runtime; started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str | None = None,
        shutdown_timeout: float = 30.0,
        worker: int | None = None,
        config_path: str | None = None,
        log_stream: Any = None,
        board: Board | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`log_stream`: this server's own log output for its audit events (default: the
        process's, see configure_logging). `board`: under --workers, where the workers
        report to each other (tokenward.worker_board). `tracing`: its tracer (tests;
        default: what the config and the OTEL_* environment ask for)."""
        self.tracing = tracing
        self.worker = worker
        self.board = board
        self.log_stream = log_stream
        self.config_path = config_path
        self._watching = False  # the config file
        self.settings = settings
        self.redis_url = redis_url
        self.shutdown_timeout = shutdown_timeout
        self.runtime: Runtime | None = None  # while started
        self._runners: list[web.BaseRunner] = []  # the admin API's
        self.listener: Listener | None = None  # the gateway's, while started
        self._resources = contextlib.AsyncExitStack()  # what start opened, closed by stop in reverse
        self.store_restarts = 0
        self.on_started: Any = None  # called once both ports are bound, before the start-up line
        self.proxy_port = 0
        self.admin_port = 0

    async def start(self) -> Runtime:
        """Open the runtime and both listeners; on any failure (a port taken, the store
        unreachable) close what was opened before raising, so the process can exit."""
        try:
            return await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start(self) -> Runtime:
        """Each step's undo goes on `_resources`; `stop` runs them in reverse: the watch
        tasks, the tunnels, the proxy listener (draining), the admin listener, the runtime."""
        require_c_parser(self.settings.allow_python_parser)
        stack = self._resources
        runtime = await Runtime.open(
            self.settings, self.redis_url, worker=self.worker, log_stream=self.log_stream, tracing=self.tracing
        )
        stack.push_async_callback(runtime.close)
        self.runtime = runtime
        if self.board is not None:
            self._start_reports(runtime, self.board)
        listener = self.listener = create_proxy_server(runtime)
        admin_app = create_admin_app(runtime)
        if self.board is not None:
            admin_app[BOARD] = self.board
        admin_runner = AdminRunner(runtime, admin_app, access_log=None, shutdown_timeout=5.0, handle_signals=False)
        self._runners = [admin_runner]
        await admin_runner.setup()
        stack.push_async_callback(_cleanup, admin_runner)
        stack.push_async_callback(listener.stop, self.shutdown_timeout)  # so the proxy's drain comes first at stop
        # open tunnels are closed before the drain, or it would wait for them
        stack.callback(runtime.tunnels.close_all, "shutting down")
        listen, admin = self.settings.listen, self.settings.admin_listen
        # under --workers every worker serves both ports (SO_REUSEPORT); the store is shared
        admin_site = web.TCPSite(admin_runner, admin.host, admin.port, reuse_port=self.worker is not None)
        self.proxy_port = await listener.start(listen.host, listen.port)  # SO_REUSEPORT, as under --workers
        await admin_site.start()
        self.admin_port = _bound_port(admin_runner, admin.port)
        runtime.readiness.serving = True
        if self.board is not None:
            publish(runtime, self.board)  # at once: the other workers answer /readyz for us too
        stack.callback(self._not_serving, runtime)  # first thing at stop: not ready while draining
        if runtime.embedded is not None:
            store_watch = asyncio.create_task(self._watch_store(runtime.embedded), name="tokenward-store-watch")
            stack.push_async_callback(cancel_and_wait, [store_watch])
        if self.on_started is not None:
            self.on_started()
        log.info(
            "tokenward started",
            version=version(),
            listen=f"{listen.host}:{self.proxy_port}",
            admin_listen=f"{admin.host}:{self.admin_port}",
            store=runtime.store_description,
            routes=len(self.settings.routes),
            upstreams=len(self.settings.upstreams),
            workers=1 if self.worker is None else f"worker {self.worker}",
            pid=os.getpid(),
        )
        return runtime

    def _start_reports(self, runtime: Runtime, board: Board) -> None:
        """Under --workers: carry on from a crashed predecessor's counts, then report to the
        other workers every PUBLISH_INTERVAL (see tokenward.health)."""
        predecessor = board.predecessor()
        if predecessor is not None:
            runtime.metrics.carry(predecessor.metrics)
        publish(runtime, board)

        async def report() -> None:
            while True:
                await asyncio.sleep(PUBLISH_INTERVAL)
                publish(runtime, board)

        reporter = asyncio.create_task(report(), name="tokenward-worker-report")
        self._resources.push_async_callback(cancel_and_wait, [reporter])

    def _not_serving(self, runtime: Runtime) -> None:
        runtime.readiness.serving = False
        if self.board is not None:
            publish(runtime, self.board)

    async def _watch_store(self, embedded: EmbeddedServer) -> None:
        """The embedded store is ours: if it dies, start it again (same data dir, same
        socket), with crash-loop backoff, and say so. Meanwhile it is a store outage (requests
        and /readyz get what one gives, see tokenward.gateway.readiness); the clients reconnect by themselves afterwards."""
        backoff = Backoff()
        while True:
            await asyncio.sleep(STORE_CHECK_INTERVAL)
            code = embedded.exit_code()
            if code is None:
                continue
            delay = backoff.crashed()
            log.error("embedded store exited; restarting it", exitcode=code, restart_in_s=delay)
            while True:
                await asyncio.sleep(delay)
                try:
                    await embedded.restart()
                except EmbeddedStoreError as exc:
                    delay = backoff.crashed()
                    log.error("embedded store restart failed", error=str(exc)[-300:], retry_in_s=delay)
                    continue
                backoff.restarted()
                self.store_restarts += 1
                log.info("embedded store restarted", restarts=self.store_restarts)
                break

    def reload(self) -> bool:
        if self.runtime is None or self.config_path is None:
            return False
        return self.runtime.reload(self.config_path)

    def watch_config(self, interval: float = 1.0) -> None:
        """Reload when the config file changes, or a certificate or key file its upstreams'
        TLS settings name (a rotation), checked every `interval` seconds."""
        if self.config_path is None or self._watching:
            return
        path = self.config_path
        base = Path(path).resolve().parent

        def stat(name: str | Path) -> tuple[float, int] | None:
            try:
                st = os.stat(name)
            except OSError:
                return None
            return (st.st_mtime, st.st_size)

        def stamp() -> tuple[tuple[float, int] | None, ...]:
            upstreams = self.runtime.settings.upstreams if self.runtime is not None else {}
            return (stat(path), *(stat(name) for name in tls_files(upstreams, base)))

        async def watch() -> None:
            last = stamp()
            while True:
                await asyncio.sleep(interval)
                now = stamp()
                if now[0] is not None and now != last:
                    last = now
                    self.reload()

        self._watching = True
        watcher = asyncio.create_task(watch(), name="tokenward-config-watch")
        self._resources.push_async_callback(cancel_and_wait, [watcher])

    async def stop(self) -> None:
        """Close what `start` opened, in the reverse order."""
        try:
            await self._resources.aclose()
        finally:
            self._runners = []
            self.listener = None
            self.runtime = None
            self._watching = False
        log.info("tokenward stopped")


class AdminServer(web.Server):
    """The admin listener's server: its connections get the same head deadline as the
    gateway's (a slow head there would hold a descriptor of the shared process for ever)."""

    runtime: Runtime

    def __call__(self) -> HeadDeadlineHandler:
        return HeadDeadlineHandler(self, loop=self._loop, **self._kwargs)


class AdminRunner(web.AppRunner):
    def __init__(self, runtime: Runtime, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.runtime = runtime

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = AdminServer  # the same server aiohttp built, with our handler
        assert isinstance(server, AdminServer)
        server.runtime = self.runtime
        return server


def require_c_parser(allow_python: bool) -> None:
    """Refuse to run on aiohttp's pure-Python HTTP parser unless told to, loudly."""
    from aiohttp import http_parser

    if http_parser.HttpRequestParser is getattr(http_parser, "HttpRequestParserC", None):
        return
    if not allow_python:
        raise SystemExit(
            "tokenward: aiohttp's C HTTP parser (llhttp) is not available (AIOHTTP_NO_EXTENSIONS "
            "set, or no binary wheel). Refusing to start: the pure-Python parser has had request "
            "smuggling bugs. Set allow_python_parser: true to run anyway."
        )
    log.warning("RUNNING WITH aiohttp's PURE-PYTHON HTTP PARSER (allow_python_parser: true)")


class _DropClientErrors(logging.Filter):
    """aiohttp logs a traceback for every malformed request; those are audited already."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


logging.getLogger("aiohttp.server").addFilter(_DropClientErrors())


async def _cleanup(runner: web.BaseRunner) -> None:
    with contextlib.suppress(Exception):  # one listener failing to close must not keep the rest open
        await runner.cleanup()


def _bound_port(runner: web.BaseRunner, wanted: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return wanted


async def serve_forever(
    settings: Settings,
    redis_url: str | None = None,
    worker: int | None = None,
    config_path: str | None = None,
    drain: float = DRAIN_TIMEOUT,
    parent: int | None = None,
    started: Any = None,
    board: Board | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT. Under a supervisor (`parent`): also stop when it is gone,
    and set `started` (a multiprocessing Event) once both ports are bound."""
    server = Server(
        settings, redis_url=redis_url, worker=worker, config_path=config_path, shutdown_timeout=drain, board=board
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    if started is not None:
        server.on_started = started.set  # before the start-up line that tests and operators watch
    await server.start()
    orphan_watch = None
    if parent is not None:
        orphan_watch = asyncio.create_task(_stop_when_orphaned(parent, stop), name="tokenward-parent-watch")
    server.watch_config()
    settle_garbage_collector()
    try:
        await stop.wait()
    finally:
        await cancel_and_wait([orphan_watch])
        await server.stop()


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """The fallback for PR_SET_PDEATHSIG (not on every platform): a worker whose supervisor
    is gone (re-parented) shuts down like on SIGTERM."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    log.error("supervisor gone; worker stopping", supervisor=parent)
    stop.set()


def settle_garbage_collector() -> None:
    """Once started: move everything alive into the permanent generation (modules, config,
    routes: never garbage), so full collections stop walking it, and collect the young
    generation less often. Full collections over the start-up heap paused the loop for
    ~70 ms under load before this."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _event_loop_factory() -> Any:
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional
        return None


def run(settings: Settings, **options: Any) -> None:
    """`serve_forever(settings, **options)` on a fresh event loop (uvloop when installed). A
    store it can't reach at start is one log line (in the log's format) and exit status 1,
    not a traceback."""
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        try:
            runner.run(serve_forever(settings, **options))
        except StoreUnavailable as exc:
            log.error("tokenward could not start", error=str(exc))
            raise SystemExit(1) from None
