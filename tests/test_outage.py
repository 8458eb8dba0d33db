"""Store outages: tokens verified within `redis.stale_if_error` keep working, anything else
gets 503 with Retry-After, /readyz stays ready inside that window (tests/test_readiness.py), and
everything recovers when the store is back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.helpers.gateway import APIS, Gateway, LogReader, scrape, value
from tokenward.gateway.embedded import EmbeddedServer, free_port


async def get(gw: Gateway, token: str) -> tuple[int, Any]:
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        return r.status, r.headers


async def outage_gateway(start: Callable[..., Awaitable[Gateway]], config: dict[str, Any], tmp_path: Path, stale: str) -> tuple[Gateway, EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    config["tokens"]["cache_ttl"] = "200ms"
    config["redis"] = {"stale_if_error": stale}
    gw = await start(config, url=server.url)
    await gw.team("platform", ["read:apis"])
    return gw, server


async def test_recent_tokens_survive_an_outage_and_others_get_503(start_gateway: Any, config: dict[str, Any], tmp_path: Path) -> None:
    gw, server = await outage_gateway(start_gateway, config, tmp_path, "5m")
    try:
        warm, _ = await gw.token("platform", ["read:apis"])
        cold, _ = await gw.token("platform", ["read:apis"])
        assert (await get(gw, warm))[0] == 200
        server.stop()
        await asyncio.sleep(0.3)  # past cache_ttl: only the stale window keeps it
        assert (await get(gw, warm))[0] == 200
        status, headers = await get(gw, cold)
        assert status == 503 and headers["Retry-After"]
        async with gw.session.get(gw.admin_url + "/readyz") as r:
            assert r.status == 200  # inside stale_if_error: still ready
        async with gw.session.post(gw.admin_url + "/v1/orgs/acme/teams", json={"name": "x", "permissions": []},
                                   headers=gw.auth(warm)) as r:
            assert r.status in (403, 503)  # a team token can't create teams; never a 500
        server.start()  # back, same port and data
        for _ in range(100):
            if (await get(gw, cold))[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert (await get(gw, cold))[0] == 200
        async with gw.session.get(gw.admin_url + "/readyz") as r:
            assert r.status == 200
    finally:
        server.stop()


async def test_no_stale_window_means_503(start_gateway: Any, config: dict[str, Any], tmp_path: Path) -> None:
    gw, server = await outage_gateway(start_gateway, config, tmp_path, "0s")
    try:
        warm, _ = await gw.token("platform", ["read:apis"])
        assert (await get(gw, warm))[0] == 200
        server.stop()
        await asyncio.sleep(0.3)
        assert (await get(gw, warm))[0] == 503
    finally:
        server.stop()


async def test_one_log_line_and_a_gauge_per_store_state_change(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path, logs: LogReader
) -> None:
    """However many calls fail while the store is away: `store unreachable` once,
    `store reachable again` once, tokenward_store_up 1 → 0 → 1, one outage counted."""
    gw, server = await outage_gateway(start_gateway, config, tmp_path, "0s")
    try:
        token, _ = await gw.token("platform", ["read:apis"])
        assert (await get(gw, token))[0] == 200
        assert value(await scrape(gw), "tokenward_store_up", worker="0") == 1.0
        server.stop()
        await asyncio.sleep(0.3)  # past cache_ttl
        for _ in range(20):
            assert (await get(gw, token))[0] == 503
        samples = await scrape(gw)
        assert value(samples, "tokenward_store_up", worker="0") == 0.0
        assert value(samples, "tokenward_store_outages_total") == 1.0
        server.start()
        for _ in range(100):  # back after a second without failures
            if gw.runtime.store.up:
                break
            await asyncio.sleep(0.05)
        assert (await get(gw, token))[0] == 200
        samples = await scrape(gw)
        assert value(samples, "tokenward_store_up", worker="0") == 1.0
        assert value(samples, "tokenward_store_outages_total") == 1.0
        events = [e["event"] for e in logs.events()]
        assert events.count("store unreachable") == 1
        assert events.count("store reachable again") == 1
        again = next(e for e in logs.events() if e["event"] == "store reachable again")
        assert again["down_for_s"] >= 1.0
    finally:
        server.stop()


async def test_the_stale_window_counts_from_the_last_verification(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path
) -> None:
    """With `cache_ttl` longer than `stale_if_error`, a token verified from the cache a moment
    before the outage (from a record read earlier) keeps working: the window runs from the
    verification, so a cached record may be up to cache_ttl + stale_if_error old. (It was
    counted from the read: such a token got 503 while /readyz still said ready.)"""
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    config["tokens"]["cache_ttl"] = "4s"
    config["redis"] = {"stale_if_error": "1s"}
    gw = await start_gateway(config, url=server.url)
    try:
        await gw.team("platform", ["read:apis"])
        token, _ = await gw.token("platform", ["read:apis"])
        assert (await get(gw, token))[0] == 200  # the record is read now
        await asyncio.sleep(1.5)  # older than stale_if_error, younger than cache_ttl
        assert (await get(gw, token))[0] == 200  # verified again, from the cache
        server.stop()
        for _ in range(200):  # until the cache stops trusting itself (the push channel is down)
            if not gw.runtime.listener.push_connected:
                break
            await asyncio.sleep(0.025)
        assert not gw.runtime.listener.push_connected
        assert (await get(gw, token))[0] == 200
    finally:
        server.stop()
