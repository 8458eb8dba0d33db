"""The verification cache, its invalidation (push and fallback poll), and flood throttling,
against a real store and real gateway processes' worth of state (two Server instances)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from tests.helpers.gateway import Gateway, apis_status
from tokenward.gateway.cache import VerificationCache
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.store_changes import Change
from tokenward.gateway.throttle import FailureThrottle
from tokenward.gateway.tokens import checksum, generate


def record(kid: str = "AAAAAAAAAAAA") -> TokenRecord:
    return TokenRecord(
        id=kid,
        prefix="tw_sat",
        org="acme",
        team="platform",
        name="t",
        description="",
        scopes=parse_scopes(["read:apis"]),
        secret_hash="x",
        created_at=0.0,
        created_by="t",
    )


# -- unit: the cache itself -------------------------------------------------------------------
def test_a_fetch_that_raced_an_invalidation_is_not_cached() -> None:
    cache = VerificationCache(ttl=30)
    epoch = cache.epoch
    cache.apply(Change("token", "AAAAAAAAAAAA"))  # a revoke lands while the fetch is in flight
    cache.store_record(record(), epoch)
    assert cache.record("AAAAAAAAAAAA") is None
    cache.store_record(record(), cache.epoch)
    assert cache.record("AAAAAAAAAAAA") is not None


def test_cache_is_bounded_and_expires() -> None:
    cache = VerificationCache(ttl=0.05, max_entries=10)
    for i in range(50):
        cache.store_record(record(f"{i:012d}"), cache.epoch)
    assert len(cache.records) == 10
    assert cache.record(f"{49:012d}") is not None
    time.sleep(0.06)
    assert cache.record(f"{49:012d}") is None


def test_team_and_global_changes() -> None:
    cache = VerificationCache(ttl=30)
    cache.store_record(record(), cache.epoch)
    cache.apply(Change("team", "acme/platform"))
    assert cache.record("AAAAAAAAAAAA") is not None  # a team change drops the team entry only
    cache.apply(Change("all", ""))
    assert cache.record("AAAAAAAAAAAA") is None


def test_failure_throttle_buckets() -> None:
    throttle = FailureThrottle(per_key_burst=3, per_key_rate=10, suspect_burst=100, suspect_rate=1)
    for _ in range(3):
        assert throttle.allows("k1")
        throttle.failed("k1")
    assert not throttle.allows("k1")
    assert throttle.allows("k2")  # other keys unaffected
    time.sleep(0.15)  # refills at 10/s
    assert throttle.allows("k1")
    tight = FailureThrottle(per_key_burst=100, per_key_rate=0, suspect_burst=2, suspect_rate=0)
    tight.failed("a")
    tight.failed("b")
    assert tight.allows("a") and tight.allows("b")  # the suspects' budget: 2
    assert not tight.allows("a") and not tight.allows("b")
    assert tight.allows("c")  # a key id with no failure is never refused for others' failures


# -- integration: invalidation across processes' caches ---------------------------------------------
async def two_gateways(
    start: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> tuple[Gateway, Gateway]:
    first = await start(config)
    second = await start(config)
    await first.team("platform", ["read:apis"])
    return first, second


async def test_revoke_on_one_gateway_reaches_the_other_at_once(
    start_gateway: Any, config: dict[str, Any]
) -> None:
    a, b = await two_gateways(start_gateway, config)
    token, kid = await a.token("platform", ["read:apis"])
    assert await apis_status(b, token) == 200 and await apis_status(b, token) == 200  # cached in b
    hits = b.runtime.cache.stats.hits
    assert hits >= 1
    record_ = await a.runtime.store.get_token(kid)
    assert record_ is not None
    started = time.monotonic()
    await a.runtime.store.put_token(record_.revoked(time.time(), "test"))
    while await apis_status(b, token) != 401:
        await asyncio.sleep(0.001)
    assert time.monotonic() - started < 0.5
    assert b.runtime.authenticator.argon2_verifications == 1  # the secret was proven once


async def test_poll_fallback_bounds_staleness_without_push(
    start_gateway: Any, config: dict[str, Any]
) -> None:
    a, b = await two_gateways(start_gateway, config)
    token, kid = await a.token("platform", ["read:apis"])
    assert await apis_status(b, token) == 200
    push = b.runtime.listener._tasks[0]
    push.cancel()  # no push channel on b from now on
    await asyncio.sleep(0.05)
    record_ = await a.runtime.store.get_token(kid)
    assert record_ is not None
    started = time.monotonic()
    await a.runtime.store.put_token(record_.revoked(time.time(), "test"))
    assert await apis_status(b, token) == 200  # still cached: only the poll can tell b now
    while await apis_status(b, token) != 401:
        await asyncio.sleep(0.02)
    assert time.monotonic() - started <= 1.0


async def test_cache_is_cleared_when_the_push_link_comes_back(gateway: Gateway, redis_url: str) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])
    assert await apis_status(gateway, token) == 200
    clears = gateway.runtime.cache.stats.clears
    client = redis.Redis.from_url(redis_url)
    assert client.client_kill_filter(_type="pubsub") >= 1
    client.close()
    for _ in range(100):
        if gateway.runtime.cache.stats.clears > clears and gateway.runtime.listener.push_connected:
            break
        await asyncio.sleep(0.02)
    assert gateway.runtime.cache.stats.clears > clears
    assert gateway.runtime.listener.push_connected
    assert await apis_status(gateway, token) == 200


# -- abuse resistance --------------------------------------------------------------------------------
async def test_wrong_secret_flood_is_bounded_and_the_real_token_keeps_working(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    assert await apis_status(gateway, token) == 200
    before = gateway.runtime.authenticator.argon2_verifications

    def wrong(i: int) -> str:
        head = f"tw_sat_{kid}" + f"{i:032d}"
        return head + checksum(head)

    statuses = await asyncio.gather(*(apis_status(gateway, wrong(i)) for i in range(300)))
    assert set(statuses) == {401}
    assert gateway.runtime.authenticator.argon2_verifications - before <= 10
    assert await apis_status(gateway, token) == 200


async def test_unknown_id_flood_is_bounded(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])
    assert await apis_status(gateway, token) == 200
    before = gateway.runtime.authenticator.argon2_verifications
    started = time.monotonic()
    statuses = await asyncio.gather(*(apis_status(gateway, generate("tw_sat")[0]) for _ in range(400)))
    elapsed = time.monotonic() - started
    assert set(statuses) == {401}
    assert gateway.runtime.authenticator.argon2_verifications - before <= 16 + 4 * elapsed + 5
    assert await apis_status(gateway, token) == 200


async def test_a_burst_of_new_legit_tokens_is_never_refused(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    tokens = [(await gateway.token("platform", ["read:apis"]))[0] for _ in range(40)]
    statuses = await asyncio.gather(*(apis_status(gateway, token) for token in tokens))
    assert set(statuses) == {200}


async def test_concurrent_first_requests_share_one_verification(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])
    statuses = await asyncio.gather(*(apis_status(gateway, token) for _ in range(20)))
    assert set(statuses) == {200}
    assert gateway.runtime.authenticator.argon2_verifications == 1
