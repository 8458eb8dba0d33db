"""Prometheus /metrics on the admin listener, and the health endpoints."""

from __future__ import annotations

import asyncio

from tests.helpers.gateway import APIS, Gateway, scrape, value


async def test_metrics(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    for _ in range(3):
        async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
            assert r.status == 200
    async with gateway.session.post(gateway.url + APIS, headers=gateway.auth(token)) as r:
        assert r.status == 403
    async with gateway.session.get(gateway.url + "/nope") as r:
        assert r.status == 404
    record = await gateway.runtime.store.get_token(kid)
    assert record is not None
    await gateway.runtime.store.put_token(record.revoked(0.0, "test"))
    await asyncio.sleep(0.1)
    await gateway.runtime.metrics.stop()
    gateway.runtime.metrics.expiring_tokens = 0
    from tokenward.gateway.metrics import count_expiring

    assert await count_expiring(gateway.runtime) == 0  # the only token is revoked
    samples = await scrape(gateway)
    route = "/orgs/{org}/teams/{team}/apis"
    ok = {"method": "GET", "route": route, "upstream": "registry", "step": "forward", "status": "200"}
    assert value(samples, "tokenward_requests_total", **ok) == 3
    denied = {"method": "POST", "route": route, "upstream": "registry", "step": "scope", "status": "403"}
    assert value(samples, "tokenward_requests_total", **denied) == 1
    unrouted = {"method": "GET", "route": "-", "upstream": "-", "step": "route", "status": "404"}
    assert value(samples, "tokenward_requests_total", **unrouted) == 1
    assert value(samples, "tokenward_cache_hits_total") >= 2  # counters: no worker label
    assert value(samples, "tokenward_argon2_verifications_total") == 1
    assert value(samples, "tokenward_push_channel_connected", worker="0") == 1
    assert value(samples, "tokenward_upstream_seconds_count", upstream="registry") == 3
    assert value(samples, "tokenward_invalidation_lag_seconds_count") >= 1
    assert value(samples, "tokenward_routes", worker="0") == len(gateway.runtime.settings.routes)


async def test_expiring_tokens_gauge(gateway: Gateway) -> None:
    import time

    from tokenward.gateway.metrics import count_expiring

    await gateway.team("platform", ["read:apis"])
    await gateway.token("platform", ["read:apis"], expires_at=time.time() + 3 * 86400)
    await gateway.token("platform", ["read:apis"], expires_at=time.time() + 60 * 86400)
    await gateway.token("platform", ["read:apis"])
    assert await count_expiring(gateway.runtime) == 1
