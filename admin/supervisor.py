"""`serve --workers N`: the supervisor that owns the embedded store and runs N workers (each
a `Server`, see admin/server.py) on the same ports, restarting what crashes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import structlog

from tokenward import version
from tokenward.gateway.embedded import EmbeddedStoreError, start_embedded
from tokenward.gateway.settings import Settings
from tokenward.server import DRAIN_TIMEOUT, Backoff, require_c_parser, run
from tokenward.worker_board import Board

log = structlog.get_logger("tokenward")

SHUTDOWN_GRACE = 5.0  # ... then the audit and last-used flush; a worker still alive after both is killed
WORKER_START_TIMEOUT = 120.0  # a worker neither serving nor dead by then failed to start


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


def _worker_main(
    config_path: str, redis_url: str | None, index: int, drain: float, parent: int, started: Any, slots: list[Any]
) -> None:
    """Entry point of one worker process (spawned, so it starts clean)."""
    die_with_parent(parent)
    from tokenward.gateway.logs import configure_logging
    from tokenward.gateway.settings import load_settings

    settings = load_settings(config_path)
    configure_logging(settings.log)
    try:
        run(settings, redis_url=redis_url, worker=index, config_path=config_path, drain=drain,
            parent=parent, started=started, board=Board(slots, index))
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
        embedded, url = start_embedded(settings.data_dir)
    context = multiprocessing.get_context("spawn")
    # where the workers report to each other, for /readyz and /metrics (tokenward.worker_board)
    slots = Board.allocate(context, workers)
    stopping = False
    pool: list[_Worker] = []
    me = os.getpid()

    def spawn(index: int, backoff: Backoff | None = None) -> _Worker:
        started = context.Event()
        process = context.Process(
            target=_worker_main,
            args=(config_path, url, index, drain, me, started, slots),
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
        version=version(),
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
