"""Revocation while the push channel is down.

Gateway A caches a token; its pub/sub connection is killed (CLIENT KILL TYPE pubsub), then
another process (gateway B, same store) revokes the token, or takes a permission away from
its team. The very next request through A after that call returned must be refused: while
the channel is down, A trusts no cached record. Counted over many trials: zero allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis

from tests.helpers.gateway import TEAMS, Gateway, admin, apis_status

TRIALS = 30
PERMISSIONS = f"{TEAMS}/platform/permissions"


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


def kill_subscribers(url: str) -> int:
    with redis.Redis.from_url(url) as conn:
        return int(conn.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))


async def two_gateways(start_gateway: Any, config: dict[str, Any]) -> tuple[Gateway, Gateway, str]:
    config["tokens"]["cache_ttl"] = "5m"  # only invalidation can drop a cached record
    a = await start_gateway(config)
    b = await start_gateway(config)
    await b.team("platform", ["read:apis"])
    return a, b, await b.org_admin()


async def test_a_revocation_made_while_the_channel_is_down_refuses_the_next_request(
    start_gateway: Any, config: dict[str, Any], redis_url: str
) -> None:
    a, b, org_admin = await two_gateways(start_gateway, config)
    allowed = 0
    for _ in range(TRIALS):
        token, key_id = await b.token("platform", ["read:apis"])
        assert await apis_status(a, token) == 200  # cached in A
        await until(lambda: a.runtime.listener.push_connected)
        assert kill_subscribers(redis_url) >= 1
        async with b.session.post(
            f"{b.admin_url}/v1/orgs/acme/teams/platform/tokens/{key_id}/revoke", headers=b.auth(org_admin)
        ) as r:
            assert r.status == 200
        if await apis_status(a, token) != 401:
            allowed += 1
    assert allowed == 0, f"{allowed} of {TRIALS} revoked tokens were allowed right after the revoke"


async def test_a_permission_removed_while_the_channel_is_down_refuses_the_next_request(
    start_gateway: Any, config: dict[str, Any], redis_url: str
) -> None:
    a, b, org_admin = await two_gateways(start_gateway, config)
    token, _ = await b.token("platform", ["read:apis"])
    allowed = 0
    for _ in range(TRIALS):
        assert (await admin(b, "PUT", PERMISSIONS, org_admin, {"permissions": ["read:apis"]}))[0] == 200
        await until(lambda: a.runtime.listener.push_connected)
        assert await apis_status(a, token) == 200  # team record cached in A
        assert kill_subscribers(redis_url) >= 1
        assert (await admin(b, "PUT", PERMISSIONS, org_admin, {"permissions": []}))[0] == 200
        if await apis_status(a, token) != 403:
            allowed += 1
    assert allowed == 0, f"{allowed} of {TRIALS} requests were allowed right after the permission was removed"


async def test_the_cache_is_trusted_again_once_the_channel_is_back(
    start_gateway: Any, config: dict[str, Any], redis_url: str
) -> None:
    """Untrusting is for the outage of the channel only: once it is back, known tokens are
    served from the cache again (no store read per request)."""
    a, b, _ = await two_gateways(start_gateway, config)
    token, _ = await b.token("platform", ["read:apis"])
    clears = a.runtime.cache.stats.clears
    assert kill_subscribers(redis_url) >= 1
    # back: subscribed again, which clears the cache once
    await until(lambda: a.runtime.cache.stats.clears > clears and a.runtime.listener.push_connected)
    assert a.runtime.cache.trusted
    assert await apis_status(a, token) == 200
    hits = a.runtime.cache.stats.hits
    for _ in range(10):
        assert await apis_status(a, token) == 200
    assert a.runtime.cache.stats.hits >= hits + 10
