"""Cheap refusals before argon2 (the 16-bit secret check, unknown key ids) and shared store
reads for concurrent cache misses, against the real store."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from tests.helpers.gateway import Gateway, apis_status, wrong_secrets
from tokenward.gateway.store_changes import Change
from tokenward.gateway.tokens import secret_check


async def test_wrong_secrets_cost_no_argon2_and_leave_the_budget_alone(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    auth = gateway.runtime.authenticator
    assert await apis_status(gateway, token) == 200
    before, refused = auth.argon2_verifications, auth.throttle.refused
    flood = wrong_secrets(kid, 2000)
    record = await gateway.runtime.store.get_token(kid)
    assert record is not None
    lucky = sum(
        secret_check(kid, t[len("tw_sat_") + 12 : -6], record.check_key) == record.secret_check for t in flood
    )
    statuses = []
    for start in range(0, len(flood), 200):
        statuses += await asyncio.gather(*(apis_status(gateway, t) for t in flood[start : start + 200]))
    assert set(statuses) == {401}
    # only those that pass the 16-bit check by chance (~2000/65536) cost an argon2
    assert auth.argon2_verifications - before == lucky
    assert auth.prefiltered >= len(flood) - lucky
    # the flood did not empty the failure budget: a brand-new legit token verifies at once
    fresh, _ = await gateway.token("platform", ["read:apis"])
    assert await apis_status(gateway, fresh) == 200
    assert auth.throttle.refused - refused <= 5


async def test_unknown_key_ids_are_refused_without_argon2(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    auth = gateway.runtime.authenticator
    before = auth.argon2_verifications
    # an unknown id's secrets meet the decoy record's keyed check (random per process): leave
    # out the ~1 in 65,536 that pass it by chance, which rightly cost one argon2 each
    decoy = auth._decoy
    unknown = [
        t
        for t in wrong_secrets("ZZZZZZZZZZZZ", 120)
        if secret_check("ZZZZZZZZZZZZ", t[len("tw_sat_") + 12 : -6], decoy.check_key) != decoy.secret_check
    ][:100]
    assert len(unknown) == 100
    statuses = await asyncio.gather(*(apis_status(gateway, t) for t in unknown))
    assert set(statuses) == {401} and auth.argon2_verifications == before


async def test_a_record_without_a_secret_check_is_verified_with_argon2(gateway: Gateway) -> None:
    """Tokens issued before the check existed keep working (and wrong secrets for them are
    still throttled)."""
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    store = gateway.runtime.store
    record = await store.get_token(kid)
    assert record is not None and len(record.secret_check) == 4
    await store.put_token(dataclasses.replace(record, secret_check=""))
    auth = gateway.runtime.authenticator
    before = auth.argon2_verifications
    assert await apis_status(gateway, token) == 200
    assert auth.argon2_verifications == before + 1
    assert await apis_status(gateway, wrong_secrets(kid, 1)[0]) == 401
    assert auth.argon2_verifications == before + 2


async def test_the_secret_check_is_never_shown(gateway: Gateway) -> None:
    admin = await gateway.org_admin()
    await gateway.team("platform", ["read:apis"])
    _, kid = await gateway.token("platform", ["read:apis"])
    url = f"{gateway.admin_url}/v1/orgs/acme/teams/platform/tokens/{kid}"
    async with gateway.session.get(url, headers=gateway.auth(admin)) as r:
        body = await r.text()
    assert r.status == 200 and "secret_check" not in body and "secret_hash" not in body


class CountingReads:
    """Counts (and can hold) the authenticator's token reads; the store behind is real."""

    def __init__(self, gateway: Gateway) -> None:
        self.store = gateway.runtime.store
        self.real = self.store.get_token
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def get_token(self, key_id: str) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return await self.real(key_id)


async def test_concurrent_misses_share_one_store_read(gateway: Gateway, monkeypatch: Any) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    assert await apis_status(gateway, token) == 200
    reads = CountingReads(gateway)
    monkeypatch.setattr(reads.store, "get_token", reads.get_token)
    gateway.runtime.cache.records.pop(kid)  # as when the cached record reaches cache_ttl
    statuses = await asyncio.gather(*(apis_status(gateway, token) for _ in range(50)))
    assert set(statuses) == {200} and reads.calls == 1


async def test_a_miss_after_an_invalidation_never_joins_an_older_read(gateway: Gateway, monkeypatch: Any) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    assert await apis_status(gateway, token) == 200
    reads = CountingReads(gateway)
    monkeypatch.setattr(reads.store, "get_token", reads.get_token)
    cache = gateway.runtime.cache
    cache.records.pop(kid)
    reads.gate = asyncio.Event()
    first = asyncio.create_task(apis_status(gateway, token))  # its read is held at the gate
    while reads.calls < 1:
        await asyncio.sleep(0.01)
    record = await reads.real(kid)
    assert record is not None
    await reads.store.put_token(record.revoked(time.time(), "test"))  # the revoke lands...
    cache.apply(Change("token", kid))  # ...and this process has seen it
    second = asyncio.create_task(apis_status(gateway, token))
    while reads.calls < 2:
        await asyncio.sleep(0.01)
    reads.gate.set()
    assert await second == 401  # its own, fresh read: revoked
    await first
