"""Running tokenward: both listeners in one process, start-up line, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import time
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.aio import cancel_and_wait
from gateway.app import HeadDeadlineHandler, Runtime, create_proxy_server
from gateway.settings import Settings

log = structlog.get_logger("tokenward")


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
        self.proxy_port = 0
        self.admin_port = 0

    async def start(self) -> Runtime:
        from admin.api import create_admin_app  # admin depends on gateway, not the reverse

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
        await cancel_and_wait([watcher])
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
) -> None:
    server = Server(settings, redis_url=redis_url, worker=worker, config_path=config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start()
    server.watch_config()
    settle_garbage_collector()
    try:
        await stop.wait()
    finally:
        await server.stop()


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
) -> None:
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        runner.run(serve_forever(settings, redis_url, worker, config_path))


def _worker_main(config_path: str, redis_url: str | None, index: int) -> None:
    """Entry point of one worker process (spawned, so it starts clean)."""
    from gateway.audit import configure_logging
    from gateway.settings import load_settings

    settings = load_settings(config_path)
    configure_logging(settings.log)
    run(settings, redis_url=redis_url, worker=index, config_path=config_path)


def supervise(settings: Settings, config_path: str, workers: int) -> None:
    """`serve --workers N`: own the embedded store, run N workers on the same ports, restart
    a worker that dies, and on SIGTERM stop them all (each drains its in-flight requests)."""
    if 0 in (settings.listen.port, settings.admin_listen.port):
        raise SystemExit("tokenward: --workers needs fixed listen and admin_listen ports")
    require_c_parser(settings.allow_python_parser)
    embedded = None
    url = settings.redis.url  # None for Sentinel and Cluster: each worker connects itself
    if settings.redis.embedded:
        from gateway.embedded import EmbeddedServer

        embedded = EmbeddedServer(settings.data_dir)
        if embedded.running_elsewhere():
            embedded = None
        else:
            embedded.start()
        url = f"unix://{(settings.data_dir / 'valkey.sock').resolve()}"
    context = multiprocessing.get_context("spawn")
    stopping = False
    processes: list[multiprocessing.process.BaseProcess] = []

    def spawn(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker_main, args=(config_path, url, index), name=f"tokenward-worker-{index}"
        )
        process.start()
        return process

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    def forward_hup(signum: int, _frame: Any) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, forward_hup)
    processes.extend(spawn(i) for i in range(workers))
    log.info(
        "tokenward supervisor started",
        workers=workers,
        pid=os.getpid(),
        store="embedded" if settings.redis.embedded else "external",
    )
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error("worker exited; restarting", worker=index, exitcode=process.exitcode)
                    processes[index] = spawn(index)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=40)
            if process.is_alive():
                process.kill()
        if embedded is not None:
            embedded.stop()
        log.info("tokenward supervisor stopped")
