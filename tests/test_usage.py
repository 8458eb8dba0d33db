"""Usage per token (issue 14, item 4): counted in the process without a store write per
request, flushed in batches (forced here through `AuditLog.flush`, never waited for), summed
across `serve --workers N`, reported by `GET …/tokens/{id}/usage` and `tokenward token usage`.
Real gateway, real store; every count is exact."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.helpers.gateway import APIS, TEAMS, TOKENS, Gateway, admin, issue, org_admin_with_team
from tests.helpers.process import (
    bootstrap_admin,
    env_for_subprocess,
    post_json,
    run_cli,
    serve_config,
    start_serve,
    wait_ready,
)
from tokenward.api_usage import token_usage
from tokenward.gateway.audit import AuditLog
from tokenward.gateway.embedded import free_port
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import parse_scope, parse_scopes
from tokenward.gateway.settings import RedisSettings
from tokenward.gateway.store import Store
from tokenward.gateway.store_connect import connect
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.usage import DAY, USAGE_TTL, UsageTally, covering, day_of

SPECS = "/orgs/acme/teams/platform/apis/web/specs"
OTHER_TEAM = "/orgs/acme/teams/billing/apis"
LIST_APIS = "GET /orgs/{org}/teams/{team}/apis"
WRITE_SPECS = "POST,PUT /orgs/{org}/teams/{team}/apis/{api}/specs"
PERMISSIONS = ["read:apis", "write:specs", "read:secrets", "admin:team"]


async def call(gw: Gateway, token: str, path: str = APIS, method: str = "GET") -> int:
    async with gw.session.request(method, gw.url + path, headers=gw.auth(token)) as r:
        await r.read()
        return r.status


async def usage(gw: Gateway, admin_token: str, key_id: str, query: str = "") -> dict[str, Any]:
    await gw.runtime.audit.flush()  # what this process counted is in the store now
    status, data, _ = await admin(gw, "GET", f"{TOKENS}/{key_id}/usage{query}", admin_token)
    assert status == 200, data
    return dict(data)


async def test_counts_by_day_route_and_step_and_the_unused_scopes(gateway: Gateway) -> None:
    started = time.time()
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    token = await issue(gateway, org_admin, name="ci", scopes=["read:apis", "write:specs", "read:secrets"])
    other = await issue(gateway, org_admin, name="other")
    plaintext = token["token"]
    assert [await call(gateway, plaintext) for _ in range(5)] == [200] * 5
    assert [await call(gateway, plaintext, OTHER_TEAM) for _ in range(2)] == [403] * 2
    assert await call(gateway, other["token"]) == 200  # another token's use is not this one's
    await gateway.runtime.audit.flush()
    status, _, _ = await admin(gateway, "POST", f"{TOKENS}/{token['id']}/revoke", org_admin)
    assert status == 200
    assert await call(gateway, plaintext) == 401

    report = await usage(gateway, org_admin, token["id"])
    assert report["token_id"] == token["id"] and report["name"] == "ci" and report["days"] == 30
    assert (report["requests"], report["allowed"]) == (8, 5)
    assert report["refused"] == {"team": 2, "status": 1}
    assert report["by_route"] == {LIST_APIS: 8}
    assert len(report["by_day"]) == 30 and sum(report["by_day"].values()) == 8
    assert list(report["by_day"]) == sorted(report["by_day"]) and report["since"] == min(report["by_day"])
    assert report["scopes_used"] == {"read:apis": 5, "write:specs": 0, "read:secrets": 0}
    assert report["unused_scopes"] == ["write:specs", "read:secrets"]

    assert (await usage(gateway, org_admin, other["id"]))["requests"] == 1
    one_day = await usage(gateway, org_admin, token["id"], "?days=1")
    assert list(one_day["by_day"]) == [day_of(time.time())] == [one_day["since"]]
    if day_of(started) == one_day["since"]:  # (unless UTC midnight passed during the test)
        assert one_day["requests"] == 8


async def test_requests_write_no_usage_until_a_flush(gateway: Gateway, redis_url: str) -> None:
    """No store write per request: with the periodic writer stopped, 20 requests leave no
    usage in the store; one flush writes them, in one hash for the token's day."""
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    token = await issue(gateway, org_admin)
    audit = gateway.runtime.audit
    await audit.stop()  # flushes what there is, then no more periodic flushes
    client = redis.Redis.from_url(redis_url)
    try:
        assert [await call(gateway, token["token"]) for _ in range(20)] == [200] * 20
        assert client.keys("tw:usage:*") == [] and audit.usage.waiting == 1
        await audit.flush()
        [key] = client.keys("tw:usage:*")
        assert key.decode().startswith(f"tw:usage:{{{token['id']}}}:")
        assert int(client.hget(key, "n") or 0) == 20
    finally:
        client.close()


@pytest.mark.also_on_cluster
async def test_a_scope_counts_when_it_covered_a_route(gateway: Gateway) -> None:
    """The exercised scope is the granted one that covered the route's requirement: write:specs
    on a spec upload; an allowed request through another route leaves it unused. (Also on a
    Redis Cluster: there the flush is one script call per day hash, in the token's slot.)"""
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    token = await issue(gateway, org_admin, scopes=["read:apis", "write:specs"])
    assert await call(gateway, token["token"], SPECS, "POST") == 200
    assert await call(gateway, token["token"], SPECS, "PUT") == 200
    report = await usage(gateway, org_admin, token["id"])
    assert report["by_route"] == {WRITE_SPECS: 2}
    assert report["scopes_used"] == {"read:apis": 0, "write:specs": 2}
    assert report["unused_scopes"] == ["read:apis"]


def test_the_narrowest_covering_scope_is_the_one_exercised() -> None:
    """Of several granted scopes that cover a requirement, the one every other covers too: the
    report then says the broader one could go."""
    granted = parse_scopes(["admin:*", "write:apis", "read:apis", "read:specs"])
    assert covering(granted, parse_scope("read:apis")) == parse_scope("read:apis")
    assert covering(granted, parse_scope("write:apis")) == parse_scope("write:apis")
    assert covering(granted, parse_scope("read:keys")) == parse_scope("admin:*")
    assert covering(granted, parse_scope("admin:team")) is None  # no wildcard covers it


def record(key_id: str, scopes: list[str]) -> TokenRecord:
    return TokenRecord(
        id=key_id, prefix="tw_sat", org="acme", team="platform", name="t", description="",
        scopes=parse_scopes(scopes), secret_hash="", created_at=0.0, created_by="test",
    )  # fmt: skip


def test_the_tally_is_bounded_and_counts_what_it_drops() -> None:
    tally = UsageTally(max_entries=2)
    now = 10 * DAY + 5.0
    for key_id in ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "aaaaaaaaaaaa"):
        tally.count(record(key_id, ["read:apis"]), LIST_APIS, parse_scopes(["read:apis"]), True, "forward", now)
    assert tally.waiting == 2 and tally.dropped == 1  # a counted token keeps counting
    tally.count(record("aaaaaaaaaaaa", ["read:apis"]), LIST_APIS, (), True, "forward", now + DAY)
    assert tally.dropped == 2  # a new day is a new entry
    batch = tally.take()
    assert batch is not None and tally.waiting == 0 and tally.take() is None
    rows = {key_id: dict(fields) for key_id, _, fields in batch.rows}
    assert rows["aaaaaaaaaaaa"] == {"n": 2, "a": 2, f"r:{LIST_APIS}": 2, "s:read:apis": 2}
    assert rows["bbbbbbbbbbbb"] == {"n": 1, "a": 1, f"r:{LIST_APIS}": 1, "s:read:apis": 1}
    assert {day for _, day, _ in batch.rows} == {day_of(now)}


def test_each_request_counts_on_its_own_utc_day() -> None:
    tally = UsageTally()
    token = record("aaaaaaaaaaaa", ["read:apis"])
    midnight = 20_000 * DAY
    for at in (midnight - 0.001, midnight, midnight + 1, midnight - 1):
        tally.count(token, LIST_APIS, token.scopes, True, "forward", at)
    batch = tally.take()
    assert batch is not None and batch.seq == 1
    assert sorted((day, dict(fields)["n"]) for _, day, fields in batch.rows) == [
        (day_of(midnight - 1), 2),
        (day_of(midnight), 2),
    ]
    tally.count(token, LIST_APIS, token.scopes, False, "status", midnight)  # after a take: counted again
    again = tally.take()
    assert again is not None and again.seq == 2
    assert [(day, dict(fields)) for _, day, fields in again.rows] == [
        (day_of(midnight), {"n": 1, f"r:{LIST_APIS}": 1, "x:status": 1})
    ]


async def test_a_batch_sent_twice_counts_once(redis_url: str) -> None:
    """The write is idempotent per batch: a flush whose outcome was unknown (the connection
    dropped after the store ran it) is sent again as it was, and counts once. Two tallies
    (two workers) add up; each day hash expires after the widest window."""
    store = Store(connect(RedisSettings(url=redis_url)))
    try:
        first, second = UsageTally(), UsageTally()
        token = record("aaaaaaaaaaaa", ["read:apis"])
        now = time.time()
        for tally, n in ((first, 3), (second, 4)):
            for _ in range(n):
                tally.count(token, LIST_APIS, token.scopes, True, "forward", now)
            tally.count(token, LIST_APIS, token.scopes, False, "scope", now)
        batch = first.take()
        assert batch is not None
        await store.add_usage(batch)
        await store.add_usage(batch)  # again: nothing added
        second_batch = second.take()
        assert second_batch is not None
        await store.add_usage(second_batch)
        [fields] = await store.read_usage(token.id, [day_of(now)])
        assert fields == {"n": 9, "a": 7, f"r:{LIST_APIS}": 9, "x:scope": 2, "s:read:apis": 7}
        client = redis.Redis.from_url(redis_url)
        ttl = client.ttl(Keys.usage(token.id, day_of(now)))
        client.close()
        assert USAGE_TTL - 60 < ttl <= USAGE_TTL
    finally:
        await store.close()


async def test_a_failed_flush_is_sent_again_and_counts_once(redis_url: str) -> None:
    """A flush that fails keeps its batch and sends it again, as it was, before anything newer;
    if the failed write had in fact reached the store, the second one adds nothing."""
    unreachable = Store(connect(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")))
    store = Store(connect(RedisSettings(url=redis_url)))
    try:
        audit = AuditLog(unreachable, 1000, flush_interval=3600)  # never started: flushed by hand
        token = record("aaaaaaaaaaaa", ["read:apis"])
        now = time.time()
        for _ in range(3):
            audit.usage.count(token, LIST_APIS, token.scopes, True, "forward", now)
        with pytest.raises(StoreUnavailable):
            await audit.flush()
        lost = audit.usage.unsent
        assert lost is not None and audit.usage.waiting == 1
        for _ in range(2):
            audit.usage.count(token, LIST_APIS, token.scopes, False, "scope", now)
        await store.add_usage(lost)  # the "failed" write had landed after all
        audit.store = store
        await audit.flush()
        assert audit.usage.unsent is None and audit.usage.waiting == 0
        [fields] = await store.read_usage(token.id, [day_of(now)])
        assert (fields["n"], fields["a"], fields["x:scope"]) == (5, 3, 2)
    finally:
        await unreachable.close()
        await store.close()


async def test_what_is_counted_is_written_at_shutdown(redis_url: str) -> None:
    """The audit writer's stop flushes the usage tally too, whatever its flush interval."""
    store = Store(connect(RedisSettings(url=redis_url)))
    try:
        audit = AuditLog(store, 1000, flush_interval=3600)
        await audit.start()
        token = record("aaaaaaaaaaaa", ["read:apis"])
        now = time.time()
        for _ in range(7):
            audit.usage.count(token, LIST_APIS, token.scopes, True, "forward", now)
        await audit.stop()
        [fields] = await store.read_usage(token.id, [day_of(now)])
        assert fields["n"] == 7 and audit.usage.waiting == 0
    finally:
        await store.close()


@pytest.mark.parametrize("days", ["0", "91", "x", "-1", "1.5"])
async def test_days_out_of_range_is_refused(gateway: Gateway, days: str) -> None:
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    token = await issue(gateway, org_admin)
    status, data, _ = await admin(gateway, "GET", f"{TOKENS}/{token['id']}/usage?days={days}", org_admin)
    assert status == 400 and data["field"] == "days" and "1..90" in data["message"]


async def test_usage_of_another_teams_token_is_not_found(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    status, _, _ = await admin(gateway, "POST", TEAMS, org_admin, {"name": "billing", "permissions": ["read:apis"]})
    assert status == 201
    token = await issue(gateway, org_admin)
    path = f"/v1/orgs/acme/teams/billing/tokens/{token['id']}/usage"
    status, _, _ = await admin(gateway, "GET", path, org_admin)
    assert status == 404


async def test_the_org_wide_path_reports_any_token_of_the_org(gateway: Gateway) -> None:
    """`/v1/orgs/{org}/tokens/{id}/usage`: an org admin's report without naming the team; a
    team admin gets 403 there, as on every org-wide token path."""
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    token = await issue(gateway, org_admin, name="ci")
    assert await call(gateway, token["token"]) == 200
    await gateway.runtime.audit.flush()
    path = f"/v1/orgs/acme/tokens/{token['id']}/usage?days=7"
    status, data, _ = await admin(gateway, "GET", path, org_admin)
    assert status == 200 and data["token_id"] == token["id"] and data["requests"] == 1 and data["days"] == 7
    team_admin = await issue(gateway, org_admin, name="team-admin", scopes=["admin:team"])
    status, _, _ = await admin(gateway, "GET", path, team_admin["token"])
    assert status == 403
    status, _, _ = await admin(gateway, "GET", "/v1/orgs/acme/tokens/AAAAAAAAAAAA/usage", org_admin)
    assert status == 404


async def test_token_usage_and_token_get_in_the_cli(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    token = await issue(gateway, org_admin, name="ci", scopes=["read:apis", "write:specs"])
    assert [await call(gateway, token["token"]) for _ in range(3)] == [200] * 3
    assert await call(gateway, token["token"], OTHER_TEAM) == 403
    await gateway.runtime.audit.flush()
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"], env["TOKENWARD_TOKEN"] = gateway.admin_url, org_admin

    code, out, err = await run_cli("token", "usage", token["id"], "--team", "platform", "--days", "7", "--json", env=env)
    assert code == 0, err
    data = json.loads(out)
    assert (data["days"], data["requests"], data["refused"]) == (7, 4, {"team": 1})
    code, out, err = await run_cli("token", "usage", token["id"], "--team", "platform", env=env)
    assert code == 0, err
    assert "the last 30 days" in out
    assert "Usage (30 days): 4 requests, 1 refused (team: 1)" in out
    assert "Unused scopes: write:specs" in out
    assert any(line.split()[-1:] == ["4"] and LIST_APIS in line for line in out.splitlines())

    code, out, err = await run_cli("token", "get", token["id"], "--team", "platform", env=env)
    assert code == 0, err
    assert "Usage (30 days): 4 requests, 1 refused (team: 1)" in out and "Unused scopes: write:specs" in out
    code, out, err = await run_cli("token", "get", token["id"], "--team", "platform", "--json", env=env)
    assert code == 0, err and json.loads(out)["id"] == token["id"]


async def _statuses(url: str, token: str, count: int) -> list[int]:
    """`count` requests, each on a new connection so SO_REUSEPORT spreads them over workers."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

        async def one() -> int:
            async with session.get(url + APIS, headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_workers_add_up_in_the_store(tmp_path: Path, upstream: int, redis_url: str) -> None:
    """`serve --workers 2` on the test's store: each worker counts its own share and writes it
    (at the latest when it stops); the report is the sum, exactly."""
    served = serve_config(tmp_path, upstream, redis={"url": redis_url})
    auth = {"Authorization": f"Bearer {await bootstrap_admin(served.path)}"}
    serve = await start_serve(served.path, "--workers", "2")
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, served.admin_url + "/readyz", serve)
            await post_json(session, served.admin_url + TEAMS, auth, {"name": "platform", "permissions": ["read:apis"]})
            data = await post_json(session, served.admin_url + TOKENS, auth, {"name": "ci", "scopes": ["read:apis"]})
            assert await _statuses(served.url, data["token"], 60) == [200] * 60
    finally:
        serve.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(serve.wait(), 60)
    assert code == 0
    store = Store(connect(RedisSettings(url=redis_url)))
    try:
        token = await store.get_token(data["id"])
        assert token is not None
        report = await token_usage(store, token, 2)
    finally:
        await store.close()
    assert (report["requests"], report["allowed"], report["by_route"]) == (60, 60, {LIST_APIS: 60})
    client = redis.Redis.from_url(redis_url)
    writers = {
        field
        for day in report["by_day"]
        for field in client.hkeys(Keys.usage(data["id"], day))
        if field.startswith(b"w:")
    }
    client.close()
    assert len(writers) == 2  # both workers served some of the 60 and wrote their counts

