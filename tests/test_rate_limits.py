"""Rate limits and usage credits (issue 16, items 1 and 2), against the real store: exact
counts over many requests (concurrent ones included), two gateways sharing one store, the
429's body and headers, route defaults, refill, and the store stopped (open and closed)."""

from __future__ import annotations

import asyncio
import copy
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.gateway import (
    APIS,
    Gateway,
    LogReader,
    admin,
    issue,
    org_admin_with_team,
    scrape,
)
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.limits import Refill, TokenLimits, parse_rate_limits
from tokenward.gateway.settings import ConfigError, settings_from_dict

Start = Callable[..., Awaitable[Gateway]]
BURST = [{"name": "burst", "limit": 5, "per": "1m"}]


async def statuses(gw: Gateway, token: str, n: int, path: str = APIS) -> list[int]:
    """`n` requests at once with `token`: their statuses."""

    async def one() -> int:
        async with gw.session.get(gw.url + path, headers=gw.auth(token)) as r:
            await r.read()
            return r.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def limited_token(gw: Gateway, **limits: Any) -> tuple[str, str]:
    await gw.team("platform", ["read:apis"])
    return await gw.token("platform", ["read:apis"], limits=TokenLimits.from_body(limits))


async def until_cached(gw: Gateway, cached: Callable[[], Any]) -> None:
    """Until the change feed has dropped the gateway's older copy of a record just changed."""
    for _ in range(200):
        record = cached()
        if record is None or record.rate_limits:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the change never reached the gateway's cache")


def with_mode(config: dict[str, Any], mode: str, on_store_error: str = "open", sync: str = "50ms") -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["rate_limits"] = {"mode": mode, "on_store_error": on_store_error, "sync_interval": sync}
    return config


@pytest.mark.also_on_cluster
async def test_a_token_limit_allows_exactly_its_count_even_concurrently(gateway: Gateway, logs: LogReader) -> None:
    token, kid = await limited_token(gateway, rate_limits=BURST)
    got = await statuses(gateway, token, 20)
    assert got.count(200) == 5 and got.count(429) == 15
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
        body = await r.json()
        assert r.status == 429
        assert body["error"] == "rate_limited" and body["step"] == "rate_limit"
        assert "burst" in body["message"]
        assert r.headers["RateLimit-Policy"] == '"burst";q=5;w=60'
        assert r.headers["RateLimit"].startswith('"burst";r=0;t=')
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    await asyncio.sleep(0.1)
    denied = [e for e in logs.events() if e.get("step") == "rate_limit" and e.get("token_id") == kid]
    assert len(denied) == 16 and all(e["status"] == 429 for e in denied)
    samples = await scrape(gateway)
    assert sum(v for (name, labels), v in samples.items() if name == "tokenward_requests_total" and ("step", "rate_limit") in labels) == 16


async def test_several_limits_are_spent_together(gateway: Gateway) -> None:
    token, _ = await limited_token(
        gateway, rate_limits=[{"name": "burst", "limit": 3, "per": "1m"}, {"name": "daily", "limit": 4, "per": "1d"}]
    )
    assert (await statuses(gateway, token, 10)).count(200) == 3
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
        assert r.status == 429
        assert r.headers["RateLimit-Policy"] == '"burst";q=3;w=60, "daily";q=4;w=86400'
        assert '"daily";r=1;' in r.headers["RateLimit"]  # refused by burst: daily not spent


@pytest.mark.also_on_cluster
async def test_credits_are_never_over_spent_and_show_in_views(
    gateway: Gateway, recording_upstream: tuple[int, list[dict[str, Any]]], start_gateway: Start
) -> None:
    org = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    created = await issue(gateway, org, max_uses=7)
    assert created["max_uses"] == 7 and created["remaining"] == 7 and created["rate_limits"] == []
    token = created["token"]
    got = await statuses(gateway, token, 20)
    assert got.count(200) == 7
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
        body = await r.json()
        assert r.status == 429 and body["step"] == "rate_limit"
        assert "usage budget spent" in body["message"]
    status, view, _ = await admin(gateway, "GET", f"/v1/orgs/acme/teams/platform/tokens/{created['id']}", org)
    assert status == 200 and view["remaining"] == 0 and view["max_uses"] == 7
    status, page, _ = await admin(gateway, "GET", "/v1/orgs/acme/teams/platform/tokens", org)
    assert [row["remaining"] for row in page["tokens"] if row["id"] == created["id"]] == [0]


async def test_the_upstream_sees_the_remaining_uses(
    start_gateway: Start, recording_upstream: tuple[int, list[dict[str, Any]]], config: dict[str, Any]
) -> None:
    port, seen = recording_upstream
    config = copy.deepcopy(config)
    config["upstreams"]["registry"]["url"] = f"http://127.0.0.1:{port}"
    gw = await start_gateway(config)
    token, _ = await limited_token(gw, max_uses=3)
    for _ in range(3):
        async with gw.session.get(
            gw.url + APIS, headers={**gw.auth(token), "X-Tokenward-Remaining": "999"}
        ) as r:
            assert r.status == 200
    assert [h.getall("X-Tokenward-Remaining") for h in (s["headers"] for s in seen)] == [["2"], ["1"], ["0"]]


@pytest.mark.parametrize("mode", ["exact", "local"])
async def test_two_gateways_on_one_store_never_over_spend_credits(
    start_gateway: Start, config: dict[str, Any], mode: str
) -> None:
    first = await start_gateway(with_mode(config, mode))
    second = await start_gateway(with_mode(config, mode))
    token, _ = await limited_token(first, max_uses=25)
    got = await asyncio.gather(statuses(first, token, 30), statuses(second, token, 30))
    allowed = got[0].count(200) + got[1].count(200)
    assert allowed <= 25
    if mode == "exact":
        assert allowed == 25
    else:  # leases handed back: what one gateway took ahead the other can then spend
        await first.runtime.limiter.close()
        await second.runtime.limiter.close()
        more = await asyncio.gather(statuses(first, token, 30), statuses(second, token, 30))
        assert allowed + more[0].count(200) + more[1].count(200) == 25


async def test_exact_mode_across_two_gateways_counts_exactly(start_gateway: Start, config: dict[str, Any]) -> None:
    first = await start_gateway(config)
    second = await start_gateway(config)
    token, _ = await limited_token(first, rate_limits=[{"name": "burst", "limit": 10, "per": "1h"}])
    got = await asyncio.gather(statuses(first, token, 15), statuses(second, token, 15))
    assert got[0].count(200) + got[1].count(200) == 10


async def in_one_period(gw: Gateway, token: str, created: float, every: float) -> tuple[int, int]:
    """(the refill period, how many of 5 requests passed), for a batch that started and ended in
    one period (on a slow machine a batch that straddles a boundary is sent again in the next)."""
    for _ in range(20):
        before = math.floor((time.time() - created) / every)
        passed = (await statuses(gw, token, 5)).count(200)
        if math.floor((time.time() - created) / every) == before:
            return before, passed
        await asyncio.sleep(0.05)
    raise AssertionError("no batch fitted in one period")


async def test_refill_gives_the_budget_back_each_period(gateway: Gateway) -> None:
    token, kid = await limited_token(gateway, max_uses=2, refill={"every": "2s", "amount": 3})
    record = await gateway.runtime.store.get_token(kid)
    assert record is not None and record.refill == Refill("2s", 3)
    first, passed = await in_one_period(gateway, token, record.created_at, 2.0)
    assert passed == (2 if first == 0 else 3)  # max_uses at first; the refill amount after
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
        body = await r.json()
        assert r.status == 429 and "usage budget spent" in body["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 2
    while math.floor((time.time() - record.created_at) / 2.0) == first:  # the next period
        await asyncio.sleep(0.05)
    later, passed = await in_one_period(gateway, token, record.created_at, 2.0)
    assert later > first and passed == 3


async def test_route_defaults_apply_per_token(start_gateway: Start, config: dict[str, Any]) -> None:
    config = copy.deepcopy(config)
    [route] = [r for r in config["routes"] if r["path"] == "/orgs/{org}/teams/{team}/apis" and "GET" in r.get("methods", ["GET"])]
    route["rate_limits"] = [{"name": "route", "limit": 2, "per": "1m"}]
    gw = await start_gateway(config)
    await gw.team("platform", ["read:apis"])
    one, _ = await gw.token("platform", ["read:apis"])
    two, _ = await gw.token("platform", ["read:apis"])
    assert (await statuses(gw, one, 5)).count(200) == 2
    assert (await statuses(gw, two, 5)).count(200) == 2  # its own counter


def test_config_names_the_bad_limit(config: dict[str, Any]) -> None:
    config = copy.deepcopy(config)
    config["routes"][0]["rate_limits"] = [{"name": "x", "limit": 0, "per": "1m"}]
    config["rate_limits"] = {"mode": "fast"}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(config)
    text = str(info.value)
    assert "routes[0].rate_limits[0]: limit must be a whole number" in text
    assert "rate_limits.mode" in text


def test_limit_parsing() -> None:
    assert parse_rate_limits([{"limit": 5, "per": "1m"}])[0].name == "default"
    with pytest.raises(ValueError, match="given twice"):
        parse_rate_limits([{"name": "a", "limit": 1, "per": "1s"}, {"name": "a", "limit": 2, "per": "1s"}])
    with pytest.raises(ValueError, match="not a period"):
        parse_rate_limits([{"limit": 1, "per": "soon"}])


async def test_admin_api_refuses_a_bad_limit(gateway: Gateway) -> None:
    org = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, body, _ = await admin(
        gateway, "POST", "/v1/orgs/acme/teams/platform/tokens", org,
        {"name": "x", "scopes": ["read:apis"], "refill": {"every": "1d", "amount": 5}},
    )  # fmt: skip
    assert status == 400 and body["field"] == "refill" and "max_uses" in body["message"]


@pytest.mark.parametrize("mode", ["exact", "local"])
async def test_store_down_open_keeps_limiting_locally_closed_refuses(
    start_gateway: Start, config: dict[str, Any], mode: str, tmp_path: Path
) -> None:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    try:
        config = copy.deepcopy(config)
        config["redis"] = {"stale_if_error": "5m"}  # the token keeps verifying from the cache
        # no background sync in this test (only the one below): each counts what it spent itself
        opened = await start_gateway(with_mode(config, mode, "open", sync="60s"), url=server.url)
        closed = await start_gateway(with_mode(config, mode, "closed", sync="60s"), url=server.url)
        token, _ = await limited_token(opened, rate_limits=[{"name": "burst", "limit": 3, "per": "1h"}])
        budget, _ = await opened.token("platform", ["read:apis"], limits=TokenLimits.from_body({"max_uses": 100}))
        for gw in (opened, closed):
            assert await statuses(gw, token, 1) == [200] and await statuses(gw, budget, 1) == [200]
        server.stop()
        if mode == "local":
            for gw in (opened, closed):
                await gw.runtime.limiter.sync()  # a failed sync: the store is known to be down
        got = await statuses(opened, token, 6)
        # open: this process's own counters, never more than the limit (local mode: it spent
        # 1 of 3 here already; exact mode: its counters start with the outage)
        allowed = 2 if mode == "local" else 3
        assert got.count(200) == allowed and got.count(429) == 6 - allowed
        async with closed.session.get(closed.url + APIS, headers=closed.auth(token)) as r:
            body = await r.json()
            assert r.status == 503 and body["step"] == "rate_limit" and body["error"] == "store_unavailable"
        # a budget is never spent without the store, open or not; local mode spends its lease
        expected = [200, 200] if mode == "local" else [503, 503]
        assert await statuses(opened, budget, 2) == expected
    finally:
        server.stop()


@pytest.mark.also_on_cluster
async def test_team_and_service_account_limits_are_shared_by_their_tokens(gateway: Gateway) -> None:
    org = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, team, _ = await admin(
        gateway, "PUT", "/v1/orgs/acme/teams/platform/rate-limits", org,
        {"rate_limits": [{"name": "team", "limit": 4, "per": "1h"}]},
    )  # fmt: skip
    assert status == 200 and team["rate_limits"] == [{"name": "team", "limit": 4, "per": "1h"}]
    await until_cached(gateway, lambda: gateway.runtime.cache.team("acme", "platform"))
    first, second = (await issue(gateway, org))["token"], (await issue(gateway, org))["token"]
    got = await asyncio.gather(statuses(gateway, first, 5), statuses(gateway, second, 5))
    assert got[0].count(200) + got[1].count(200) == 4
    status, _, _ = await admin(gateway, "PUT", "/v1/orgs/acme/teams/platform/rate-limits", org, {"rate_limits": []})
    assert status == 200
    for _ in range(100):  # the change reaches the gateway's cache through the change feed
        if await statuses(gateway, first, 1) == [200]:
            break
        await asyncio.sleep(0.05)
    assert await statuses(gateway, first, 1) == [200]

    status, account, _ = await admin(
        gateway, "POST", "/v1/orgs/acme/service-accounts", org, {"name": "bot", "teams": ["platform"]}
    )
    assert status == 201
    status, account, _ = await admin(
        gateway, "PUT", "/v1/orgs/acme/service-accounts/bot/rate-limits", org,
        {"rate_limits": [{"name": "bot", "limit": 3, "per": "1h"}]},
    )  # fmt: skip
    assert status == 200 and account["rate_limits"][0]["limit"] == 3
    await until_cached(gateway, lambda: gateway.runtime.cache.account("acme", account["id"]))
    bots = [(await issue(gateway, org, service_account="bot"))["token"] for _ in range(2)]
    got = await asyncio.gather(*(statuses(gateway, t, 4) for t in bots))
    assert got[0].count(200) + got[1].count(200) == 3
    assert await statuses(gateway, first, 2) == [200, 200]  # not the account's: unaffected

    status, body, _ = await admin(
        gateway, "PUT", "/v1/orgs/acme/teams/platform/rate-limits", org,
        {"rate_limits": [{"name": "x", "limit": 1, "per": "never"}]},
    )  # fmt: skip
    assert status == 400 and body["field"].startswith("rate_limits")


async def test_forward_auth_answers_with_remaining_and_the_429(start_gateway: Start, config: dict[str, Any]) -> None:
    config = copy.deepcopy(config)
    config["trusted_proxies"] = ["127.0.0.1/32"]
    gw = await start_gateway(config)
    token, _ = await limited_token(gw, max_uses=2, rate_limits=[{"name": "burst", "limit": 5, "per": "1h"}])
    ask = {"X-Original-URI": APIS, "X-Original-Method": "GET", "Authorization": f"Bearer {token}"}
    seen = []
    for _ in range(3):
        async with gw.session.get(gw.url + "/_tokenward/verify", headers=ask) as r:
            await r.read()
            seen.append((r.status, r.headers.get("X-Tokenward-Remaining")))
    assert seen == [(200, "1"), (200, "0"), (429, None)]


async def test_local_mode_overshoot_is_bounded_and_paid_back(start_gateway: Start, config: dict[str, Any]) -> None:
    """Two processes' worth of local counters (no sync yet): each admits at most the limit, so
    together at most (W - 1) x limit over it; once synced, both refuse until the debt is paid."""
    first = await start_gateway(with_mode(config, "local", sync="60s"))
    second = await start_gateway(with_mode(config, "local", sync="60s"))
    token, _ = await limited_token(first, rate_limits=[{"name": "burst", "limit": 4, "per": "1h"}])
    got = await asyncio.gather(statuses(first, token, 6), statuses(second, token, 6))
    assert got[0].count(200) == 4 and got[1].count(200) == 4  # the bound: 4 + (2 - 1) x 4
    for gw in (first, second, first):  # each sends its spend, then takes back everyone's
        await gw.runtime.limiter.sync()
    assert await statuses(first, token, 2) == [429, 429] and await statuses(second, token, 2) == [429, 429]


def test_a_pool_running_dry_is_not_an_outage() -> None:
    """Review of issue 16: a burst exhausting this process's connection pool was taken for a
    store outage, and exact mode failed open to empty local counters. It is told apart now."""
    import redis.exceptions as redis_errors

    from tokenward.gateway.store_link import StoreUnavailable, pool_exhausted

    def raised(cause: BaseException) -> StoreUnavailable:
        try:
            try:
                raise cause
            except BaseException as exc:
                raise StoreUnavailable("store unreachable: ConnectionError") from exc
        except StoreUnavailable as outer:
            return outer

    assert pool_exhausted(raised(redis_errors.ConnectionError("No connection available.")))
    assert not pool_exhausted(raised(redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:1")))
    assert not pool_exhausted(raised(redis_errors.TimeoutError("Timeout reading from socket")))
    assert pool_exhausted(raised(redis_errors.MaxConnectionsError()))  # a cluster node's pool


async def test_a_budget_spent_for_good_sends_no_retry_after(gateway: Gateway) -> None:
    """Review of issue 16: `Retry-After: 1` told a runaway agent to come back every second for
    a budget that never refills."""
    token, _ = await limited_token(gateway, max_uses=1)
    assert await statuses(gateway, token, 1) == [200]
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
        assert r.status == 429
        assert "Retry-After" not in r.headers
        assert "usage budget spent" in (await r.json())["message"]


def test_limits_the_store_could_not_keep_are_refused() -> None:
    """Review of issue 16: more than one request a microsecond was silently loosened, and
    `--rate-limit =5/1m` quietly named its limit `default`."""
    from tokenward.gateway.limits import LimitError, parse_limit_option, parse_rate_limits

    with pytest.raises(LimitError, match="microsecond"):
        parse_rate_limits([{"name": "huge", "limit": 1_000_000_000, "per": "1s"}])
    assert parse_rate_limits([{"name": "fine", "limit": 1_000_000, "per": "1s"}])[0].limit == 1_000_000
    with pytest.raises(LimitError):
        parse_limit_option("=5/1m")
    assert parse_limit_option("5/1m")["name"] == "default"
