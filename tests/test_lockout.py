"""No flood of wrong secrets locks out a token that is not under attack (issue 10, item 16).

The legacy secret check is a plain SHA-256(key id:secret) cut to 16 bits: whoever holds a
token (even a revoked one), or learns a record's 16 bits by probing, can compute wrong secrets
that pass it offline, and each of those costs an argon2 verification and a failure. The
flood below crafts such secrets against the *legacy* scheme (as the old code computed it)
and sends them across many key ids, while brand-new tokens make their first request and a
new org admin logs in. Counts, not timings.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

import tokenward.service
from tests.helpers.gateway import Gateway, apis_status
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.tokens import KEY_ID_LEN, ParsedToken, checksum, generate, secret_check

PREFIX = "tw_sat"


def legacy_check(key_id: str, secret: str) -> str:
    """The check as the old code computed and stored it."""
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()[:4]


def colliding_secrets(key_id: str) -> tuple[str, str]:
    """Two different secrets with the same legacy check (a birthday search, ~320 hashes):
    one is the token's real secret, the other a crafted wrong one that passes the check."""
    seen: dict[str, str] = {}
    for i in range(1_000_000):
        secret = f"{i:032d}"
        check = legacy_check(key_id, secret)
        if check in seen:
            return seen[check], secret
        seen[check] = secret
    raise AssertionError("no collision")


def token_for(key_id: str, secret: str) -> str:
    head = f"{PREFIX}_{key_id}{secret}"
    return head + checksum(head)


def key_ids(count: int) -> list[str]:
    return [generate(PREFIX)[1].key_id for _ in range(count)]


async def whoami(gw: Gateway, token: str) -> int:
    async with gw.session.get(gw.admin_url + "/v1/whoami", headers=gw.auth(token)) as r:
        await r.read()
        return r.status


def legacy_record(kid: str, secret: str, secret_hash: str, name: str = "old") -> bytes:
    """A token record exactly as the old code stored it (legacy check, no check key)."""
    record = TokenRecord(
        id=kid,
        prefix=PREFIX,
        org="acme",
        team="platform",
        name=name,
        description="",
        scopes=parse_scopes(["read:apis"]),
        secret_hash=secret_hash,
        created_at=time.time(),
        created_by="test",
        secret_check=legacy_check(kid, secret),
    )
    data = record.to_json()
    data.pop("check_key", None)
    return orjson.dumps(data)


async def legacy_records(gw: Gateway, count: int, secret_hash: str) -> list[tuple[str, str, str]]:
    """`count` legacy records written straight into the store; (key id, real secret, crafted
    wrong secret) each."""
    rows = []
    pipe = gw.runtime.store.client.pipeline(transaction=False)
    for kid in key_ids(count):
        real, crafted = colliding_secrets(kid)
        pipe.hset(Keys.token(kid), "data", legacy_record(kid, real, secret_hash))
        rows.append((kid, real, crafted))
    await pipe.execute()
    return rows


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    gateway = await start_gateway(config)
    await gateway.team("platform", ["read:apis"])
    return gateway


class Flood:
    """Sends every token once, `concurrency` at a time; counts the statuses."""

    def __init__(self, gw: Gateway, tokens: list[str], concurrency: int = 32) -> None:
        self.gw, self.tokens, self.concurrency = gw, tokens, concurrency
        self.statuses: dict[int, int] = {}
        self.sent = 0

    async def run(self) -> None:
        queue = iter(self.tokens)

        async def worker() -> None:
            for token in queue:
                self.sent += 1
                status = await apis_status(self.gw, token)
                self.statuses[status] = self.statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def until(self, share: float) -> None:
        while self.sent < share * len(self.tokens):
            await asyncio.sleep(0.005)


async def test_crafted_wrong_secrets_across_many_key_ids_lock_out_nobody(gw: Gateway) -> None:
    # 1 000 key ids of tokens issued before this fix (legacy check): one crafted wrong
    # secret each, which passes the legacy check and so costs an argon2 verification.
    stale_hash = gw.runtime.hasher.hash_sync("0" * 32)
    rows = await legacy_records(gw, 1000, stale_hash)
    # Tokens that are not under attack: brand new ones, new org admins, and an old
    # (legacy-check) token whose holder shows up for the first time during the flood.
    fresh = [(await gw.token("platform", ["read:apis"]))[0] for _ in range(6)]
    admins = [await gw.org_admin() for _ in range(3)]
    old_kid = key_ids(1)[0]
    old_secret = "7" * 32
    old = legacy_record(old_kid, old_secret, gw.runtime.hasher.hash_sync(old_secret), name="old-legit")
    await gw.runtime.store.client.hset(Keys.token(old_kid), "data", old)

    auth = gw.runtime.authenticator
    flood = Flood(gw, [token_for(kid, crafted) for kid, _, crafted in rows])
    flooding = asyncio.create_task(flood.run())
    outcomes: list[int] = []
    for i, token in enumerate(fresh):
        await flood.until(0.1 + 0.12 * i)
        outcomes.append(await apis_status(gw, token))
        if i < len(admins):
            outcomes.append(await whoami(gw, admins[i]))
    await flood.until(0.85)
    in_flight = not flooding.done()
    outcomes.append(await apis_status(gw, token_for(old_kid, old_secret)))
    await flooding
    assert in_flight, "the flood ended before every legitimate request was made"
    assert flood.statuses == {401: len(rows)}
    assert outcomes == [200] * (len(fresh) + len(admins) + 1)
    assert auth.argon2_verifications >= 1  # the crafted secrets did pass the legacy check


async def test_secrets_crafted_against_the_old_check_cost_nothing_on_new_tokens(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder of tokens issued now knows their real secrets; wrong secrets with the same
    legacy check pass the new (keyed) check only by chance, 1 in 65 536."""
    chosen: Iterator[tuple[str, str, str]] = iter([])
    pairs = []
    for kid in key_ids(300):
        real, crafted = colliding_secrets(kid)
        pairs.append((kid, real, crafted))
    chosen = iter(pairs)

    def generate_chosen(prefix: str) -> tuple[str, ParsedToken]:
        kid, real, _ = next(chosen)
        return token_for(kid, real), ParsedToken(prefix, kid, real)

    monkeypatch.setattr(tokenward.service, "generate", generate_chosen)
    issued = [await gw.token("platform", ["read:apis"]) for _ in pairs]
    assert [kid for _, kid in issued] == [kid for kid, _, _ in pairs]
    auth = gw.runtime.authenticator
    before, refused = auth.argon2_verifications, auth.throttle.refused
    flood = Flood(gw, [token_for(kid, crafted) for kid, _, crafted in pairs])
    await flood.run()
    assert flood.statuses == {401: len(pairs)}
    # 300 crafted secrets: the chance that 3 pass a random 16-bit check is ~1e-8
    assert auth.argon2_verifications - before <= 2
    assert auth.throttle.refused == refused
    assert await apis_status(gw, issued[0][0]) == 200


async def test_a_legacy_record_gets_a_keyed_check_on_its_first_verification(gw: Gateway) -> None:
    store = gw.runtime.store
    kid = key_ids(1)[0]
    real, crafted = colliding_secrets(kid)
    stored = legacy_record(kid, real, gw.runtime.hasher.hash_sync(real))
    await store.client.hset(Keys.token(kid), "data", stored)
    assert await apis_status(gw, token_for(kid, real)) == 200
    for _ in range(200):  # written in the background
        upgraded = await store.get_token(kid)
        if upgraded is not None and upgraded.check_key:
            break
        await asyncio.sleep(0.02)
    assert upgraded is not None and len(upgraded.check_key) == 32
    assert upgraded.secret_check == secret_check(kid, real, upgraded.check_key)
    assert dict(upgraded.to_json(), check_key="", secret_check="") == dict(
        orjson.loads(stored), check_key="", secret_check=""
    )  # nothing else changed
    auth = gw.runtime.authenticator
    before = auth.argon2_verifications
    assert await apis_status(gw, token_for(kid, crafted)) == 401  # no longer passes the check
    assert auth.argon2_verifications == before
    assert await apis_status(gw, token_for(kid, real)) == 200


async def test_keying_a_check_never_undoes_a_concurrent_write(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A revoke that lands between the read and the write of `key_secret_check` wins."""
    store = gw.runtime.store
    token, kid = await gw.token("platform", ["read:apis"])
    record = await store.get_token(kid)
    assert record is not None
    legacy = record.to_json()
    legacy.pop("check_key")
    await store.client.hset(Keys.token(kid), "data", orjson.dumps(legacy))
    revoked = dict(legacy, revoked_at=time.time(), revoked_by="test")
    real_hget = store.client.hget

    async def racing_hget(key: str, field: str) -> Any:
        raw = await real_hget(key, field)
        await store.client.hset(key, "data", orjson.dumps(revoked))  # the revoke lands here
        return raw

    monkeypatch.setattr(store.client, "hget", racing_hget)
    assert not await store.key_secret_check(kid, record.secret_hash, "00" * 16, "abcd")
    monkeypatch.undo()
    after = await store.get_token(kid)
    assert after is not None and after.revoked_at is not None and after.check_key == ""
    await store.publish([])
    gw.runtime.cache.clear()
    assert await apis_status(gw, token) == 401


def test_legacy_check_matches_the_modules_legacy_scheme() -> None:
    kid = "A" * KEY_ID_LEN
    assert secret_check(kid, "b" * 32) == legacy_check(kid, "b" * 32)


async def test_the_gate_serves_clean_key_ids_first_and_keeps_a_slot_for_them() -> None:
    from tokenward.gateway.throttle import CLEAN, CLEAN_LEGACY, SUSPECT, PriorityGate

    gate = PriorityGate(2, reserved=1, reserved_for=CLEAN)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, priority: int) -> None:
        async with gate.slot(priority):
            order.append(name)
            await release.wait()

    flood = [asyncio.create_task(hold(f"suspect{i}", SUSPECT)) for i in range(3)]
    flood += [asyncio.create_task(hold(f"legacy{i}", CLEAN_LEGACY)) for i in range(2)]
    await asyncio.sleep(0.01)
    assert order == ["suspect0"]  # the second slot is kept for clean key ids
    clean = asyncio.create_task(hold("clean", CLEAN))
    await asyncio.sleep(0.01)
    assert order == ["suspect0", "clean"]  # at once, ahead of four waiting flood requests
    cancelled = flood[1]
    cancelled.cancel()  # a waiter that goes away is skipped
    release.set()
    await asyncio.gather(*flood, clean, return_exceptions=True)
    assert order == ["suspect0", "clean", "legacy0", "legacy1", "suspect2"]


async def test_the_check_key_is_never_shown(gw: Gateway) -> None:
    admin = await gw.org_admin()
    _, kid = await gw.token("platform", ["read:apis"])
    record = await gw.runtime.store.get_token(kid)
    assert record is not None and record.check_key and record.check_key not in repr(record)
    base = f"{gw.admin_url}/v1/orgs/acme/teams/platform/tokens"
    for url in (base, f"{base}/{kid}", f"{gw.admin_url}/v1/audit"):
        async with gw.session.get(url, headers=gw.auth(admin)) as r:
            body = await r.text()
        assert r.status == 200
        assert record.check_key not in body and "check_key" not in body and "secret_check" not in body


async def test_a_rotated_successor_has_a_keyed_check(gateway: Gateway) -> None:
    """Rotation mints through its own path: the successor's check is keyed too."""
    org_admin = await gateway.org_admin()
    base = "/v1/orgs/acme/teams"
    async with gateway.session.post(
        gateway.admin_url + base,
        headers=gateway.auth(org_admin),
        json={"name": "rot", "permissions": ["read:apis"]},
    ) as r:
        assert r.status == 201
    async with gateway.session.post(
        gateway.admin_url + f"{base}/rot/tokens",
        headers=gateway.auth(org_admin),
        json={"name": "ci", "scopes": ["read:apis"]},
    ) as r:
        old = await r.json()
    async with gateway.session.post(
        gateway.admin_url + f"{base}/rot/tokens/{old['id']}/rotate", headers=gateway.auth(org_admin), json={}
    ) as r:
        assert r.status == 201
        new = await r.json()
    record = await gateway.runtime.store.get_token(new["id"])
    assert record is not None and record.check_key
    assert record.secret_check == secret_check(new["id"], new["token"][-38:-6], record.check_key)
