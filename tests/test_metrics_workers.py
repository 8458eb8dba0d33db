"""Metrics that are right under `serve --workers N`, and the metrics of issue 13.

Under --workers every scrape, whichever worker answers it, is the sum over every worker
(counters, histograms) and every live worker's gauges (label `worker`): scraped many times
while traffic flows, no counter ever goes back, not even across a worker killed and
restarted, and once traffic stops the sum is exactly what was sent. One process exposes
the same names and labels: method and route apart, upstream, the gateway's own time beside
the upstream's, build info, process metrics, dropped audit events, requests in flight, open
tunnels, and no `_created` series.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import os
import signal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.board import publish_and_exit
from tests.helpers.gateway import APIS, EVENTS, TEAMS, TOKENS, Gateway, scrape, value, with_events
from tests.helpers.process import bootstrap_admin, post_json, serve_config, start_serve, stop, wait_ready
from tests.helpers.promql import (
    alert_rules,
    dashboard,
    dashboard_expressions,
    exposed,
    missing,
    template_uses,
)
from tokenward.gateway.metrics import Family, merge
from tokenward.gateway.settings import settings_from_dict
from tokenward.server import Server
from tokenward.worker_board import Board

Key = tuple[str, tuple[tuple[str, str], ...]]


async def get_text(url: str) -> str:
    """One scrape on a new connection (any worker may answer). A scrape that a worker killed
    under it never answered is tried again, as the next scrape interval would."""
    for _ in range(5):
        connector = aiohttp.TCPConnector(force_close=True)
        try:
            async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as r:
                assert r.status == 200
                return await r.text()
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


async def replaced(admin_url: str, index: int, old_pid: int) -> None:
    """Until /readyz is 200 with worker `index` a new process (the supervisor restarted it)."""
    for _ in range(1200):
        with contextlib.suppress(aiohttp.ClientError):
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session, session.get(admin_url + "/readyz") as r:
                body = await r.json()
                if r.status == 200 and body["workers"][index]["pid"] != old_pid:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker {index} was not replaced")


def parse(text: str) -> tuple[dict[Key, float], dict[Key, float]]:
    """(counter and histogram samples, gauge samples) of one scrape."""
    summed: dict[Key, float] = {}
    gauges: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        into = summed if family.type in ("counter", "histogram") else gauges
        for sample in family.samples:
            into[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return summed, gauges


def requests_ok(summed: dict[Key, float]) -> float:
    return sum(
        v for (name, labels), v in summed.items()
        if name == "tokenward_requests_total" and dict(labels)["status"] == "200"
    )  # fmt: skip


class Traffic:
    """Requests in a loop, each on a new connection (spread over the workers)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.ok = 0
        self.failed = 0
        self.running = True

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while self.running:
                try:
                    async with session.get(self.url, headers={"Authorization": f"Bearer {self.token}"}) as r:
                        await r.read()
                        self.ok += r.status == 200
                        self.failed += r.status != 200
                except aiohttp.ClientError:
                    self.failed += 1  # a worker killed under it
                await asyncio.sleep(0.005)


async def scrapes_never_go_back(url: str, count: int, before: dict[Key, float]) -> dict[Key, float]:
    """`count` scrapes; every counter and histogram sample is >= its value in every earlier one."""
    last = dict(before)
    for _ in range(count):
        summed, gauges = parse(await get_text(url))
        for key, new in summed.items():
            assert new >= last.get(key, 0.0), f"{key} went back: {last[key]} -> {new}"
        missing_now = [key for key in last if key not in summed]
        assert not missing_now, f"series gone: {missing_now[:3]}"
        last = summed
        assert not [k for k in (*summed, *gauges) if k[0].endswith("_created")]
        await asyncio.sleep(0.1)
    return last


async def test_under_workers_counters_never_go_back_and_add_up(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    auth = {"Authorization": f"Bearer {await bootstrap_admin(served.path)}"}
    serve = await start_serve(served.path, "--workers", "3")
    metrics_url = served.admin_url + "/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, served.admin_url + "/readyz", serve)
            await post_json(session, served.admin_url + TEAMS, auth, {"name": "platform", "permissions": ["read:apis"]})
            data = await post_json(session, served.admin_url + TOKENS, auth, {"name": "ci", "scopes": ["read:apis"]})
            async with session.get(served.admin_url + "/readyz") as r:
                pids = [w["pid"] for w in (await r.json())["workers"]]
        traffic = Traffic(served.url + APIS, data["token"])
        task = asyncio.create_task(traffic.run())
        try:
            last = await scrapes_never_go_back(metrics_url, 30, {})
            assert requests_ok(last) > 0
            _, gauges = parse(await get_text(metrics_url))
            workers = {dict(labels)["worker"] for name, labels in gauges if name == "tokenward_ready"}
            assert workers == {"0", "1", "2"}  # every worker's gauges in one scrape
            assert {dict(labels)["worker"] for name, labels in gauges if name == "process_resident_memory_bytes"} == workers
        finally:
            traffic.running = False
            await task
        assert traffic.failed == 0

        async def adds_up() -> bool:
            return requests_ok(parse(await get_text(metrics_url))[0]) == traffic.ok

        for _ in range(100):  # every worker publishes within a second
            if await adds_up():
                break
            await asyncio.sleep(0.1)
        assert requests_ok(parse(await get_text(metrics_url))[0]) == traffic.ok

        # a worker killed under traffic and restarted: its successor carries its counts on
        summed, _ = parse(await get_text(metrics_url))
        traffic = Traffic(served.url + APIS, data["token"])
        task = asyncio.create_task(traffic.run())
        try:
            last = await scrapes_never_go_back(metrics_url, 5, summed)
            os.kill(pids[1], signal.SIGKILL)
            last = await scrapes_never_go_back(metrics_url, 30, last)
            await replaced(served.admin_url, 1, pids[1])
            last = await scrapes_never_go_back(metrics_url, 10, last)
        finally:
            traffic.running = False
            await task
        assert requests_ok(last) > requests_ok(summed)  # the traffic after the kill counted on top
        # the names the shipped dashboard and alert rules use are all there under --workers too
        scrape_names = exposed(await get_text(metrics_url))
        board = dashboard()
        expressions = dashboard_expressions(board) + [rule["expr"] for rule in alert_rules()]
        assert missing(expressions, template_uses(board), scrape_names) == []
    finally:
        assert await stop(serve, timeout=60) == 0


async def test_the_metrics_of_one_process(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])
    for _ in range(3):
        async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
            assert r.status == 200
    async with gateway.session.request("PROPFIND", gateway.url + APIS, headers=gateway.auth(token)) as r:
        assert r.status >= 400
    samples = await scrape(gateway)
    route = "/orgs/{org}/teams/{team}/apis"
    labels = {"method": "GET", "route": route, "upstream": "registry", "step": "forward", "status": "200"}
    assert value(samples, "tokenward_requests_total", **labels) == 3
    # a made-up method is counted as "other", never as a label value of its own
    assert not [k for k in samples if ("method", "PROPFIND") in k[1]]
    assert sum(v for (name, lab), v in samples.items() if name == "tokenward_requests_total" and ("method", "other") in lab) == 1
    # the gateway's own time, per method and route, beside the upstream's
    assert value(samples, "tokenward_gateway_seconds_count", method="GET", route=route) == 3
    assert value(samples, "tokenward_gateway_seconds_bucket", method="GET", route=route, le="+Inf") == 3
    assert value(samples, "tokenward_upstream_seconds_count", upstream="registry") == 3
    assert value(samples, "tokenward_build_info", version=version("tokenward"), worker="0") == 1
    assert value(samples, "process_cpu_seconds_total") > 0  # a counter: no worker label
    assert value(samples, "process_resident_memory_bytes", worker="0") > 0
    assert value(samples, "tokenward_cache_hits_total") >= 2
    assert not [k for k in samples if k[0].endswith("_created")]
    assert value(samples, "tokenward_requests_in_flight", worker="0") == 0
    assert value(samples, "tokenward_tunnels_open", worker="0") == 0
    assert value(samples, "tokenward_audit_dropped_total") == 0


async def test_in_flight_requests_and_open_tunnels(start_gateway: Any, config: dict[str, Any]) -> None:
    gw = await start_gateway(with_events(config))
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])

    async def slow_request() -> int:
        async with gw.session.get(gw.url + APIS + "?sleep=1", headers=gw.auth(token)) as r:
            await r.read()
            return r.status

    slow = asyncio.create_task(slow_request())
    for _ in range(200):
        if gw.runtime.metrics.in_flight == 1:
            break
        await asyncio.sleep(0.01)
    assert value(await scrape(gw), "tokenward_requests_in_flight", worker="0") == 1
    assert await slow == 200
    assert value(await scrape(gw), "tokenward_requests_in_flight", worker="0") == 0
    ws = await gw.session.ws_connect(gw.url + EVENTS, headers=gw.auth(token))
    try:
        await ws.receive_json(timeout=5)
        samples = await scrape(gw)
        assert value(samples, "tokenward_tunnels_open", worker="0") == 1
        assert value(samples, "tokenward_requests_in_flight", worker="0") == 1  # a tunnel is in flight too
    finally:
        await ws.close()
    for _ in range(200):
        if not gw.runtime.tunnels.open:
            break
        await asyncio.sleep(0.01)
    assert value(await scrape(gw), "tokenward_tunnels_open", worker="0") == 0


async def test_dropped_audit_events_are_counted(config: dict[str, Any], redis_url: str) -> None:
    """`AuditLog.dropped` (events not queued for the audit stream: its buffer of 100 000 was
    full) was invisible; it is `tokenward_audit_dropped_total`. (Logged at level warning into a
    buffer of its own, so the 100 005 events cost no log lines.)"""
    config = {**config, "log": {"level": "warning"}}
    server = Server(settings_from_dict(config, "test"), redis_url=redis_url, shutdown_timeout=1.0,
                    log_stream=io.BytesIO())
    runtime = await server.start()
    try:
        audit = runtime.audit
        await audit.stop()  # no writer: the buffer only fills
        for i in range(100_005):
            audit.emit("test.event", n=i)
        assert audit.dropped == 5
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.admin_port}/metrics") as r:
                text = await r.text()
        assert "tokenward_audit_dropped_total 5.0" in text.splitlines()
    finally:
        await server.stop()


def counter(name: str, value: float, **labels: str) -> Family:
    return (name, "counter", "help", [(f"{name}_total", labels, value)])


def gauge(name: str, value: float, worker: str) -> Family:
    return (name, "gauge", "help", [(name, {"worker": worker}, value)])


def test_merge_sums_counters_over_every_report_and_keeps_live_gauges() -> None:
    live = [counter("hits", 2, route="/a"), counter("hits", 5, route="/b"), gauge("up", 1, "0")]
    dead = [counter("hits", 3, route="/a"), gauge("up", 0, "1")]
    merged = {name: samples for name, _, _, samples in merge([(live, True), (dead, False)])}
    assert {(s, tuple(sorted(labels.items())), v) for s, labels, v in merged["hits"]} == {
        ("hits_total", (("route", "/a"),), 5.0),
        ("hits_total", (("route", "/b"),), 5.0),
    }
    assert merged["up"] == [("up", {"worker": "0"}, 1.0)]  # a dead worker's gauges are left out


def test_a_board_slot_keeps_the_last_complete_report_of_a_dead_worker() -> None:
    """A worker writes its report and dies: any worker reads that report (never a half-written
    one), knows the process is gone, and the worker's successor finds it as its predecessor's."""
    context = multiprocessing.get_context("spawn")
    slots = Board.allocate(context, 2)
    reader = Board(slots, 1)
    assert reader.read(0) is None  # nothing written yet
    figures = [counter("tokenward_requests", 7, route="/a")]
    child = context.Process(target=publish_and_exit, args=(slots, 0, {"status": "ready"}, figures))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    report = reader.read(0)
    assert report is not None and report.pid == child.pid and report.worker == 0
    assert report.readiness == {"status": "ready"} and not report.alive()
    assert [tuple(s) for s in report.metrics[0][3]] == [("tokenward_requests_total", {"route": "/a"}, 7)]
    successor = Board(slots, 0)  # the restarted worker 0, in this process
    found = successor.predecessor()
    assert found is not None and found.pid == child.pid
    successor.publish({"status": "ready"}, [counter("tokenward_requests", 8, route="/a")])
    assert successor.predecessor() is None  # its own report now
    again = reader.read(0)
    assert again is not None and again.pid == os.getpid() and again.metrics[0][3][0][2] == 8
