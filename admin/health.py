"""`/readyz` and `/metrics` for one process, or for every worker of `serve --workers N`.

One process answers for itself: its readiness (`tokenward.gateway.readiness`) and its
registry. Under --workers, whichever worker the kernel hands the connection to answers for
all of them from the reports on the shared board (`tokenward.worker_board`):

- `/readyz` is 200 only if every worker is ready: the answering worker publishes its own
  state first, then reads every worker's last report (at most PUBLISH_INTERVAL old, and
  published at once when a worker starts or stops serving); a worker that has not reported
  yet (starting), whose process is gone (being restarted), or whose last report is older than
  STALE_AFTER (hung) is not ready. The body lists each worker.
- `/metrics` publishes this worker's report first, then sums counters and histograms over
  every report (a crashed worker's last counts included, and carried on by its successor,
  so no counter ever goes back) and lists gauges per live worker (label `worker`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from aiohttp import web

from tokenward.gateway.metrics import exposition, merge
from tokenward.gateway.refusal import Refusal, error_body, error_headers
from tokenward.gateway.runtime import Runtime
from tokenward.worker_board import STALE_AFTER, Board


def store_details(runtime: Runtime) -> dict[str, Any]:
    """/readyz's word on the store: its persistence, and whether a write confirmed to an
    admin survives a crash of the store (with the reason when it may not)."""
    store = runtime.store
    appendonly = store.persistence.startswith("aof") and store.persistence != "aof on some masters only"
    warning = store.durability_warning
    if not appendonly:
        warning = "persistence is not append-only on every master: a crash of the store loses recent writes"
    details: dict[str, Any] = {"persistence": store.persistence, "crash_safe_writes": warning is None}
    if warning is not None:
        details["warning"] = warning
    return details


def readiness_report(runtime: Runtime) -> dict[str, Any]:
    """This process's readiness, as /readyz shows it and as a worker reports it."""
    report = runtime.readiness.state()
    report["routes"] = len(runtime.settings.routes)
    report["store"].update(store_details(runtime))
    return report


def publish(runtime: Runtime, board: Board) -> None:
    """This worker's report onto the board (every PUBLISH_INTERVAL, and before answering)."""
    board.publish(readiness_report(runtime), runtime.metrics.snapshot())


def readiness(runtime: Runtime, board: Board | None) -> dict[str, Any]:
    """The /readyz body: this process's, or under --workers every worker's."""
    own = readiness_report(runtime)
    if board is None:
        return own
    board.publish(own, runtime.metrics.snapshot())  # what we say of ourselves, the others say too
    now = time.monotonic()
    workers: list[dict[str, Any]] = []
    reasons: list[str] = []
    for index in range(board.workers):
        entry = _worker_entry(board, index, own, now)
        workers.append(entry)
        reasons += [f"worker {index}: {reason}" for reason in entry["reasons"]]
    return {**own, "status": "not_ready" if reasons else "ready", "reasons": reasons, "workers": workers}


def _worker_entry(board: Board, index: int, own: dict[str, Any], now: float) -> dict[str, Any]:
    if index == board.index:
        return {"worker": index, "pid": os.getpid(), "status": own["status"], "reasons": own["reasons"],
                "report_age_s": 0.0, "store": own["store"]}
    report = board.read(index)
    if report is None:
        return {"worker": index, "status": "not_ready", "reasons": ["no report yet (starting)"]}
    entry: dict[str, Any] = {"worker": index, "pid": report.pid, "report_age_s": round(report.age(now), 1),
                             "store": report.readiness.get("store", {})}
    if not report.alive():
        problems = ["process gone (being restarted)"]
    elif report.age(now) > STALE_AFTER:
        problems = [f"no report for {report.age(now):.0f}s (hung or overloaded)"]
    else:
        problems = list(report.readiness.get("reasons", []))
    return {**entry, "status": "not_ready" if problems else "ready", "reasons": problems}


def readyz_response(runtime: Runtime, board: Board | None, request_id: str) -> web.Response:
    """200 with the readiness report, or 503 with it and the one error body's fields."""
    body = readiness(runtime, board)
    headers = {"Cache-Control": "no-store"}
    if body["status"] != "ready":
        refusal = Refusal(503, "not_ready", None, "; ".join(body["reasons"]))
        body = {**orjson.loads(error_body(refusal, request_id)), **body}
        headers = error_headers(refusal, request_id)  # Retry-After, X-Request-Id, no-store
    return web.Response(
        status=200 if body["status"] == "ready" else 503,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def metrics_body(runtime: Runtime, board: Board | None) -> bytes:
    """The /metrics exposition: this process's, or under --workers the whole server's."""
    if board is None:
        return runtime.metrics.render()
    publish(runtime, board)  # ours first: what this scrape shows of us, later ones show at least
    now = time.monotonic()
    parts = [(report.metrics, report.live(now)) for report in board.reports() if report is not None]
    return exposition(merge(parts))
