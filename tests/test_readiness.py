"""`/readyz`: ready while the store is down but still inside `redis.stale_if_error` (a Redis
outage does not take every replica out of its Service at once), not ready after it; a store
that hangs (paused) never makes /readyz hang; and under `serve --workers N` readiness is
every worker's: one worker hung or dead makes /readyz 503 on every try, whichever worker
the kernel hands the connection to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers.gateway import APIS, Gateway, scrape, value
from tests.helpers.process import serve_config, start_serve, stop, wait_ready
from tokenward.gateway.embedded import EmbeddedServer, free_port


async def readyz(url: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """One try on a new connection (so under --workers the kernel picks any worker)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url + "/readyz") as r,
    ):
        return r.status, await r.json()


async def own_store_gateway(
    start: Callable[..., Awaitable[Gateway]], config: dict[str, Any], tmp_path: Path, stale: str
) -> tuple[Gateway, EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    config["redis"] = {"stale_if_error": stale}
    return await start(config, url=server.url), server


async def until(check: Callable[[], Awaitable[bool]], what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_ready_while_the_store_is_down_inside_stale_if_error(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path
) -> None:
    """The old /readyz pinged the store and said 503 at once: every replica left its
    Service and the stale window never got its chance."""
    gw, server = await own_store_gateway(start_gateway, config, tmp_path, "1h")
    try:
        await gw.team("platform", ["read:apis"])
        token, _ = await gw.token("platform", ["read:apis"])
        async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
            assert r.status == 200  # verified: cached
        assert (await readyz(gw.admin_url))[0] == 200
        server.kill()  # the Valkey process, SIGKILL

        async def noticed() -> bool:
            return (await readyz(gw.admin_url))[1]["store"]["up"] is False

        await until(noticed, "the store outage noticed (without any traffic)")
        for _ in range(10):
            status, body = await readyz(gw.admin_url)
            assert status == 200, body
            assert body["status"] == "ready" and body["reasons"] == []
            assert body["store"]["up"] is False and body["store"]["stale_if_error_s"] == 3600
            assert "persistence" in body["store"]  # the durability details stay
        async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
            assert r.status == 200  # what readiness is for: the cached token still works
        samples = await scrape(gw)
        assert value(samples, "tokenward_store_up", worker="0") == 0.0
        assert value(samples, "tokenward_ready", worker="0") == 1.0
        server.start()

        async def back() -> bool:
            return (await readyz(gw.admin_url))[1]["store"]["up"] is True

        await until(back, "the store back")
    finally:
        server.stop()


async def test_not_ready_once_the_store_is_down_longer_than_stale_if_error(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path
) -> None:
    gw, server = await own_store_gateway(start_gateway, config, tmp_path, "1s")
    try:
        assert (await readyz(gw.admin_url))[0] == 200
        server.kill()
        seen: list[int] = []

        async def not_ready() -> bool:
            status, body = await readyz(gw.admin_url)
            seen.append(status)
            if status == 200:  # ready only inside the window
                assert body["store"]["up"] is True or body["store"]["down_for_s"] <= 1.1, body
            return status == 503

        await until(not_ready, "not ready after stale_if_error")
        for _ in range(5):  # and it stays so while the store is away
            status, body = await readyz(gw.admin_url)
            assert status == 503
            assert body["error"] == "not_ready" and body["status"] == "not_ready"
            assert "stale_if_error" in body["message"] and body["reasons"] == [body["message"]]
            assert body["store"]["up"] is False and body["store"]["down_for_s"] >= 0.9
        assert value(await scrape(gw), "tokenward_ready", worker="0") == 0.0
        server.start()

        async def ready() -> bool:
            return (await readyz(gw.admin_url))[0] == 200

        await until(ready, "ready again once the store is back")
    finally:
        server.stop()


async def test_a_paused_store_is_an_outage_and_readyz_never_waits_for_it(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path
) -> None:
    """SIGSTOP: the store accepts nothing and answers nothing (a hung host). /readyz
    answers from the state the background probe keeps, not from a ping of its own."""
    gw, server = await own_store_gateway(start_gateway, config, tmp_path, "2s")
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    paused = True
    try:
        statuses: list[int] = []

        async def not_ready() -> bool:
            status, _ = await readyz(gw.admin_url, timeout=30)  # answered, never a client timeout
            statuses.append(status)
            return status == 503

        await until(not_ready, "not ready once the paused store is past stale_if_error", tries=1200)
        assert set(statuses) <= {200, 503}
        os.kill(pid, signal.SIGCONT)
        paused = False

        async def ready() -> bool:
            return (await readyz(gw.admin_url))[0] == 200

        await until(ready, "ready again once the store runs again", tries=1200)
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
        server.stop()


async def test_workers_readiness_is_every_workers(tmp_path: Path, upstream: int) -> None:
    """`serve --workers 3`: a hung worker (SIGSTOP) and then a dead one (SIGKILL, its
    supervisor paused so it is not restarted yet) make /readyz not ready on every try;
    each try is a new connection, so the kernel spreads them over the workers."""
    served = serve_config(tmp_path, upstream)
    serve = await start_serve(served.path, "--workers", "3")
    adm = served.admin_url
    paused: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{adm}/readyz", serve)
        for _ in range(15):
            status, body = await readyz(adm)
            assert status == 200, body
            assert [w["status"] for w in body["workers"]] == ["ready"] * 3
        pids = [w["pid"] for w in body["workers"]]
        assert len(set(pids)) == 3 and serve.pid not in pids

        # 1. worker 1 hangs: the others say 503; a try the kernel gives the hung one times out
        os.kill(pids[1], signal.SIGSTOP)
        paused.append(pids[1])

        async def try_once() -> int | None:
            try:
                status, body = await readyz(adm, timeout=2)
            except (TimeoutError, aiohttp.ClientError):
                return None  # what a kubelet counts as a failed probe
            if status == 503:
                assert any(r.startswith("worker 1: no report") for r in body["reasons"]), body
            return status

        async def hung_noticed() -> bool:
            return await try_once() == 503

        await until(hung_noticed, "the hung worker noticed")
        answers = [await try_once() for _ in range(12)]
        assert 200 not in answers and 503 in answers, answers
        os.kill(pids[1], signal.SIGCONT)
        paused.remove(pids[1])

        async def ready_again() -> bool:
            return (await readyz(adm))[0] == 200

        await until(ready_again, "ready once the worker runs again")

        # 2. worker 1 dies and its supervisor (paused) cannot restart it yet
        assert serve.pid is not None
        os.kill(serve.pid, signal.SIGSTOP)
        paused.append(serve.pid)
        os.kill(pids[1], signal.SIGKILL)

        async def dead_noticed() -> bool:
            return (await readyz(adm))[0] == 503

        await until(dead_noticed, "the dead worker noticed", tries=600)
        for _ in range(20):
            status, body = await readyz(adm)
            assert status == 503, body
            assert [w["worker"] for w in body["workers"] if w["status"] == "not_ready"] == [1]
        os.kill(serve.pid, signal.SIGCONT)
        paused.remove(serve.pid)
        await until(ready_again, "ready once the supervisor restarted the worker", tries=1200)
        for _ in range(10):
            status, body = await readyz(adm)
            assert status == 200, body
        assert body["workers"][1]["pid"] not in pids  # a new process
    finally:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert await stop(serve, timeout=60) == 0
