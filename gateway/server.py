"""Running tokenward: both listeners in one process, start-up line, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.app import HeadDeadlineHandler, Runtime, create_proxy_server
from tokenward.gateway.embedded import EmbeddedServer, EmbeddedStoreError
from tokenward.gateway.settings import Settings

log = structlog.get_logger("tokenward")

DRAIN_TIMEOUT = 30.0  # seconds SIGTERM gives requests in flight (serve --drain-timeout)
SHUTDOWN_GRACE = 5.0  # ... then the audit and last-used flush; a worker still alive after both is killed
STORE_CHECK_INTERVAL = 0.5  # seconds between checks that the embedded store is alive
RESTART_BACKOFF_MIN = 0.5  # seconds before restarting what crashed (store or worker) ...
RESTART_BACKOFF_MAX = 30.0  # ... doubling per crash in a row, up to this
STABLE_AFTER = 60.0  # up this long: the next crash restarts at once again
WORKER_START_TIMEOUT = 120.0  # a worker neither serving nor dead by then failed to start
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
    ) -> None:
        self.worker = worker
        self.config_path = config_path
        self._watcher: asyncio.Task[None] | None = None  # index under `serve --workers N`, None when alone
        self.settings = settings
        self.redis_url = redis_url
        self.shutdown_timeout = shutdown_timeout
        self.runtime: Runtime | None = None
        self._runners: list[web.BaseRunner] = []
        self._store_watch: asyncio.Task[None] | None = None
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
        from tokenward.api import create_admin_app  # admin depends on gateway, not the reverse

        require_c_parser(self.settings.allow_python_parser)
        runtime = await Runtime.open(self.settings, self.redis_url)
        runtime.metrics.worker = str(self.worker or 0)
        self.runtime = runtime
        await runtime.start_http()
        proxy_runner = web.ServerRunner(
            create_proxy_server(runtime), shutdown_timeout=self.shutdown_timeout, handle_signals=False
        )
        admin_runner = AdminRunner(
            runtime, create_admin_app(runtime), access_log=None, shutdown_timeout=5.0, handle_signals=False
        )
        runners: tuple[web.BaseRunner, ...] = (proxy_runner, admin_runner)
        for runner in runners:
            await runner.setup()
            self._runners.append(runner)
        listen, admin = self.settings.listen, self.settings.admin_listen
        proxy_site = web.TCPSite(proxy_runner, listen.host, listen.port, reuse_port=True)
        # under --workers every worker serves both ports (SO_REUSEPORT); the store is shared
        admin_site = web.TCPSite(admin_runner, admin.host, admin.port, reuse_port=self.worker is not None)
        await proxy_site.start()
        await admin_site.start()
        self.proxy_port = _bound_port(proxy_runner, listen.port)
        self.admin_port = _bound_port(admin_runner, admin.port)
        if runtime.embedded is not None:
            self._store_watch = asyncio.create_task(
                self._watch_store(runtime.embedded), name="tokenward-store-watch"
            )
        if self.on_started is not None:
            self.on_started()
        log.info(
            "tokenward started",
            listen=f"{listen.host}:{self.proxy_port}",
            admin_listen=f"{admin.host}:{self.admin_port}",
            store=runtime.store_description,
            routes=len(self.settings.routes),
            upstreams=len(self.settings.upstreams),
            workers=1 if self.worker is None else f"worker {self.worker}",
            pid=os.getpid(),
        )
        return runtime

    async def _watch_store(self, embedded: EmbeddedServer) -> None:
        """The embedded store is ours: if it dies, start it again (same data dir, same
        socket), with crash-loop backoff, and say so. Meanwhile /readyz is 503 and requests
        get what a store outage gives; the clients reconnect by themselves afterwards."""
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
        """Reload when the config file changes (checked every `interval` seconds)."""
        if self.config_path is None or self._watcher is not None:
            return
        path = self.config_path

        def stamp() -> tuple[float, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_mtime, st.st_size)

        async def watch() -> None:
            last = stamp()
            while True:
                await asyncio.sleep(interval)
                now = stamp()
                if now is not None and now != last:
                    last = now
                    self.reload()

        self._watcher = asyncio.create_task(watch(), name="tokenward-config-watch")

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        store_watch, self._store_watch = self._store_watch, None
        await cancel_and_wait([watcher, store_watch])
        if self.runtime is not None and self.runtime.tunnels is not None:
            self.runtime.tunnels.close_all("shutting down")  # or draining would wait for them
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners = []
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None
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
) -> None:
    """Serve until SIGTERM/SIGINT. Under a supervisor (`parent`): also stop when it is gone,
    and set `started` (a multiprocessing Event) once both ports are bound."""
    server = Server(settings, redis_url=redis_url, worker=worker, config_path=config_path, shutdown_timeout=drain)
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


def die_with_parent(parent: int) -> None:
    """In a worker: get SIGTERM when the supervisor dies, even by SIGKILL (Linux), and exit
    at once if it is already gone (it died before this call)."""
    if sys.platform == "linux":
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        raise SystemExit(1)


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


def run(
    settings: Settings,
    redis_url: str | None = None,
    worker: int | None = None,
    config_path: str | None = None,
    drain: float = DRAIN_TIMEOUT,
    parent: int | None = None,
    started: Any = None,
) -> None:
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        runner.run(serve_forever(settings, redis_url, worker, config_path, drain, parent, started))


def _worker_main(
    config_path: str, redis_url: str | None, index: int, drain: float, parent: int, started: Any
) -> None:
    """Entry point of one worker process (spawned, so it starts clean)."""
    die_with_parent(parent)
    from tokenward.gateway.audit import configure_logging
    from tokenward.gateway.settings import load_settings

    settings = load_settings(config_path)
    configure_logging(settings.log)
    try:
        run(settings, redis_url=redis_url, worker=index, config_path=config_path, drain=drain,
            parent=parent, started=started)
    except Exception as exc:
        # one line, not a traceback per worker: the supervisor logs the failure and exits
        log.error("worker failed", worker=index, error=f"{type(exc).__name__}: {exc}"[:300])
        raise SystemExit(1) from None


@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    started: Any  # multiprocessing Event: set once the worker serves both ports
    spawned_at: float
    backoff: Backoff
    restart_at: float | None = None  # crashed: respawn at this time


class WorkerStartFailed(Exception):
    pass


def supervise(settings: Settings, config_path: str, workers: int, drain: float = DRAIN_TIMEOUT) -> None:
    """`serve --workers N`: own the embedded store, run N workers on the same ports.

    A worker that cannot start (a port taken, bad store credentials) stops everything with
    one log line and exit status 1; a worker that dies later is restarted with crash-loop
    backoff, and so is the embedded store. Workers die with the supervisor (even on SIGKILL).
    On SIGTERM every worker drains for up to `drain` seconds, and is killed if still there
    SHUTDOWN_GRACE seconds later."""
    if 0 in (settings.listen.port, settings.admin_listen.port):
        raise SystemExit("tokenward: --workers needs fixed listen and admin_listen ports")
    require_c_parser(settings.allow_python_parser)
    embedded = None
    url = settings.redis.url  # None for Sentinel and Cluster: each worker connects itself
    if settings.redis.embedded:
        embedded = EmbeddedServer(settings.data_dir)
        if embedded.running_elsewhere():
            embedded = None
        else:
            embedded.start()
        url = f"unix://{(settings.data_dir / 'valkey.sock').resolve()}"
    context = multiprocessing.get_context("spawn")
    stopping = False
    pool: list[_Worker] = []
    me = os.getpid()

    def spawn(index: int, backoff: Backoff | None = None) -> _Worker:
        started = context.Event()
        process = context.Process(
            target=_worker_main,
            args=(config_path, url, index, drain, me, started),
            name=f"tokenward-worker-{index}",
        )
        process.start()
        return _Worker(index, process, started, time.monotonic(), backoff or Backoff())

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    def forward_hup(signum: int, _frame: Any) -> None:
        for worker in pool:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, forward_hup)
    pool.extend(spawn(i) for i in range(workers))
    log.info(
        "tokenward supervisor started",
        workers=workers,
        pid=me,
        store="embedded" if settings.redis.embedded else "external",
    )
    store_backoff = Backoff()
    store_restart_at: float | None = None
    failed = False
    try:
        while not stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for i, worker in enumerate(pool):
                if stopping:
                    break
                if worker.restart_at is not None:
                    if now >= worker.restart_at:
                        pool[i] = spawn(worker.index, worker.backoff)
                        worker.backoff.restarted()
                    continue
                if worker.process.is_alive():
                    if not worker.started.is_set() and now - worker.spawned_at > WORKER_START_TIMEOUT:
                        raise WorkerStartFailed(
                            f"worker {worker.index} did not start within {WORKER_START_TIMEOUT:.0f}s"
                        )
                    continue
                if not worker.started.is_set() and worker.backoff.crashes == 0:
                    raise WorkerStartFailed(
                        f"worker {worker.index} failed to start (exit code {worker.process.exitcode})"
                    )
                delay = worker.backoff.crashed()
                log.error(
                    "worker exited; restarting", worker=worker.index, exitcode=worker.process.exitcode,
                    restart_in_s=delay,
                )
                worker.restart_at = now + delay
            if embedded is not None and not stopping:
                if store_restart_at is None and (code := embedded.exit_code()) is not None:
                    delay = store_backoff.crashed()
                    log.error("embedded store exited; restarting it", exitcode=code, restart_in_s=delay)
                    store_restart_at = now + delay
                elif store_restart_at is not None and now >= store_restart_at:
                    try:
                        embedded.start()
                        store_backoff.restarted()
                        store_restart_at = None
                        log.info("embedded store restarted")
                    except EmbeddedStoreError as exc:
                        delay = store_backoff.crashed()
                        log.error("embedded store restart failed", error=str(exc)[-300:], retry_in_s=delay)
                        store_restart_at = now + delay
    except WorkerStartFailed as exc:
        log.error("worker failed to start; stopping", reason=str(exc))
        failed = True
    finally:
        _stop_workers([w.process for w in pool], drain + SHUTDOWN_GRACE)
        if embedded is not None:
            embedded.stop()
        log.info("tokenward supervisor stopped")
    if failed:
        raise SystemExit(1)


def _stop_workers(processes: list[multiprocessing.process.BaseProcess], limit: float) -> None:
    """SIGTERM every worker, wait for all of them together for at most `limit` seconds,
    then SIGKILL those still there (a hung worker never holds the shutdown up)."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + limit
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            log.error("worker did not stop in time; killed", pid=process.pid)
            process.kill()
            process.join(timeout=5)
