"""Bounded admin work (issue 10, item 5): every list pages (limit, cursor, next) through a
sorted index, whatever its size and filters; a per-team token quota; leak reports go through
the gateway's cheap secret check and failure throttle in bounded batches. Real store."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

import tokenward.accounts as accounts
import tokenward.api_audit as api_audit
import tokenward.api_tokens as api_tokens
import tokenward.views as views
from tests.helpers.gateway import TEAMS, TOKENS, Gateway, admin, wrong_secrets
from tests.helpers.openapi_lint import resolve
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.api import openapi_document
from tokenward.gateway.records import ServiceAccountRecord, TokenRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import ConfigError, settings_from_dict
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.tokens import BASE62, KEY_ID_LEN, secret_check

SAS = "/v1/orgs/acme/teams/platform/service-accounts"


def new_id() -> str:
    return "".join(secrets.choice(BASE62) for _ in range(KEY_ID_LEN))


async def bulk_tokens(
    gw: Gateway, count: int, team: str = "platform", created_at: float | None = None, **fields: Any
) -> list[str]:
    """`count` token records written through the store's own create path (no argon2: these
    are only listed, never presented), 1 µs apart. Returns their ids, oldest first."""
    await asyncio.sleep(0.002)  # after every earlier batch
    base = time.time()
    records = [
        TokenRecord(
            id=new_id(),
            prefix="tw_sat",
            org="acme",
            team=team,
            name=f"bulk-{i}",
            description="",
            scopes=parse_scopes(["read:apis"]),
            secret_hash="not-a-hash",
            created_at=created_at if created_at is not None else base + i / 1_000_000,
            created_by="test",
            **fields,
        )
        for i in range(count)
    ]
    store = gw.runtime.store
    for start in range(0, count, 50):
        await asyncio.gather(
            *(store.create_token_in_quota(r, 1_000_000) for r in records[start : start + 50])
        )
    return [r.id for r in records]


async def walk(
    gw: Gateway, token: str, path: str, key: str, limit: int | None = None, query: str = ""
) -> tuple[list[dict[str, Any]], int]:
    """Every row of a paginated list, following `next`; and how many pages that took."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = [
            p for p in (query, f"limit={limit}" if limit else "", f"cursor={cursor}" if cursor else "") if p
        ]
        status, data, _ = await admin(gw, "GET", path + ("?" + "&".join(params) if params else ""), token)
        assert status == 200, data
        pages += 1
        assert set(data) >= {key, "next"}
        rows += data[key]
        cursor = data["next"]
        if cursor is None:
            return rows, pages
        assert pages < 10_000


# -- tokens -------------------------------------------------------------------------------
async def test_a_token_walk_sees_every_token_exactly_once_oldest_first(
    gateway: Gateway, org_admin: str
) -> None:
    ids = await bulk_tokens(gateway, 250)
    rows, pages = await walk(gateway, org_admin, TOKENS, "tokens", limit=7)
    assert [r["id"] for r in rows] == ids
    assert pages == 36  # 35 full pages and the last one
    for row in rows:
        assert "secret_hash" not in row and "secret_check" not in row


async def test_the_first_page_holds_100_rows_by_default_and_says_next(
    gateway: Gateway, org_admin: str
) -> None:
    ids = await bulk_tokens(gateway, 130)
    status, data, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert status == 200 and len(data["tokens"]) == 100 and isinstance(data["next"], str)
    status, rest, _ = await admin(gateway, "GET", f"{TOKENS}?cursor={data['next']}", org_admin)
    assert [r["id"] for r in data["tokens"] + rest["tokens"]] == ids and rest["next"] is None
    status, big, _ = await admin(gateway, "GET", f"{TOKENS}?limit=500", org_admin)
    assert len(big["tokens"]) == 130 and big["next"] is None


async def test_a_short_list_is_one_page_with_a_null_next(gateway: Gateway, org_admin: str) -> None:
    status, data, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert status == 200 and data == {"tokens": [], "next": None}
    await bulk_tokens(gateway, 3)
    status, data, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert len(data["tokens"]) == 3 and data["next"] is None


@pytest.mark.parametrize(
    "path", [TOKENS, TEAMS, SAS, "/v1/audit"], ids=["tokens", "teams", "service-accounts", "audit"]
)
@pytest.mark.parametrize("limit", ["0", "-1", "501", "1000001", "abc", "1e3", "%205", "+5", "5.0", "", "٣"])
async def test_limit_out_of_bounds_is_400_naming_the_field(
    gateway: Gateway, org_admin: str, path: str, limit: str
) -> None:
    if path == "/v1/audit" and limit == "501":
        limit = "1001"  # the audit's largest page is 1000
    status, data, _ = await admin(gateway, "GET", f"{path}?limit={limit}", org_admin)
    assert status == 400, data
    assert data["field"] == "limit" and "limit" in data["message"]


@pytest.mark.parametrize("path", [TOKENS, TEAMS, SAS, "/v1/audit"], ids=["tokens", "teams", "sas", "audit"])
@pytest.mark.parametrize(
    "cursor",
    [
        "x",
        "!!!",
        base64.urlsafe_b64encode(b"t\n1.0\nshort").decode(),
        base64.urlsafe_b64encode(b"t\nnan\nAAAAAAAAAAAA").decode(),
        base64.urlsafe_b64encode(b"n\nBad Name").decode(),
        base64.urlsafe_b64encode(b"a\n1-x").decode(),
        base64.urlsafe_b64encode(b"a\n99999999999999999999-0").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "A" * 400,
    ],
)
async def test_a_cursor_not_from_next_is_400(
    gateway: Gateway, org_admin: str, path: str, cursor: str
) -> None:
    status, data, _ = await admin(gateway, "GET", f"{path}?cursor={cursor}", org_admin)
    assert status == 400 and data["field"] == "cursor"


async def test_a_cursor_still_works_when_its_row_is_deleted(gateway: Gateway, org_admin: str) -> None:
    """Rows deleted between pages are gone; every other row is still seen exactly once."""
    ids = await bulk_tokens(gateway, 40)
    seen: list[str] = []
    skipped: set[str] = set()
    cursor = ""
    store = gateway.runtime.store
    while True:
        status, data, _ = await admin(gateway, "GET", f"{TOKENS}?limit=5{cursor}", org_admin)
        assert status == 200
        seen += [r["id"] for r in data["tokens"]]
        if data["next"] is None:
            break
        cursor = f"&cursor={data['next']}"
        last = await store.get_token(seen[-1])  # delete the cursor's own row and the next one
        assert last is not None
        await store.delete_token(last)
        following = ids[ids.index(seen[-1]) + 1 : ids.index(seen[-1]) + 2]
        for kid in following:
            record = await store.get_token(kid)
            assert record is not None
            await store.delete_token(record)
            skipped.add(kid)
    deleted_unseen = {kid for kid in ids if kid not in seen}
    assert len(seen) == len(set(seen))
    assert [kid for kid in ids if kid in seen] == seen  # in order
    # exactly the rows deleted before they were reached are missing
    assert deleted_unseen == skipped and len(skipped) == 6


async def test_rows_with_equal_created_at_page_exactly_once_even_after_deletes(
    gateway: Gateway, org_admin: str
) -> None:
    ids = sorted(await bulk_tokens(gateway, 60, created_at=1_700_000_000.25))  # ties: by id, bytewise
    rows, _ = await walk(gateway, org_admin, TOKENS, "tokens", limit=4)
    assert [r["id"] for r in rows] == ids
    store = gateway.runtime.store
    status, first, _ = await admin(gateway, "GET", f"{TOKENS}?limit=10", org_admin)
    cursor_row = await store.get_token(first["tokens"][-1]["id"])
    assert cursor_row is not None
    await store.delete_token(cursor_row)  # the page after it is found by the binary search
    status, second, _ = await admin(gateway, "GET", f"{TOKENS}?limit=10&cursor={first['next']}", org_admin)
    assert status == 200 and [r["id"] for r in second["tokens"]] == ids[10:20]


async def test_filters_keep_working_across_pages(gateway: Gateway, org_admin: str) -> None:
    now = time.time()
    plain = await bulk_tokens(gateway, 30)
    revoked = await bulk_tokens(gateway, 13, revoked_at=now - 5, revoked_by="test")
    soon = await bulk_tokens(gateway, 11, expires_at=now + 3600)
    await bulk_tokens(gateway, 9, expires_at=now - 10)  # expired
    status, _, _ = await admin(gateway, "POST", SAS, org_admin, {"name": "ci"})
    assert status == 201
    in_sa = await bulk_tokens(gateway, 17, service_account="ci")
    more_plain = await bulk_tokens(gateway, 20)
    rows, _ = await walk(gateway, org_admin, TOKENS, "tokens", limit=3, query="status=revoked")
    assert [r["id"] for r in rows] == revoked
    rows, _ = await walk(gateway, org_admin, TOKENS, "tokens", limit=2, query="expiring_within=2h")
    assert [r["id"] for r in rows] == soon
    rows, _ = await walk(gateway, org_admin, TOKENS, "tokens", limit=5, query="service_account=ci")
    assert [r["id"] for r in rows] == in_sa
    rows, _ = await walk(gateway, org_admin, TOKENS, "tokens", limit=4, query="status=active")
    assert [r["id"] for r in rows] == plain + soon + in_sa + more_plain
    rows, _ = await walk(
        gateway, org_admin, TOKENS, "tokens", limit=6, query="service_account=ci&status=revoked"
    )
    assert rows == []


def count_reads(store: Any, monkeypatch: Any) -> list[int]:
    """The number of tokens each `get_tokens_with_usage` call on `store` reads, from now on."""
    real = store.get_tokens_with_usage
    read: list[int] = []

    async def counted(ids: Any) -> Any:
        read.append(len(ids))
        return await real(ids)

    monkeypatch.setattr(store, "get_tokens_with_usage", counted)
    return read


async def test_a_filtered_page_examines_a_bounded_number_of_tokens(
    gateway: Gateway, org_admin: str, monkeypatch: Any
) -> None:
    """A filter that matches nothing in a big team costs at most the scan budget per call,
    answering an empty page with `next` rather than reading the whole team."""
    monkeypatch.setattr(api_tokens, "PAGE_SCAN_BUDGET", 40)
    await bulk_tokens(gateway, 130)
    read = count_reads(gateway.runtime.store, monkeypatch)
    status, data, _ = await admin(gateway, "GET", f"{TOKENS}?status=revoked&limit=20", org_admin)
    assert status == 200 and data["tokens"] == [] and data["next"] is not None
    assert sum(read) <= 40 and max(read) <= views.PAGE_CHUNK
    read.clear()
    rows, pages = await walk(gateway, org_admin, TOKENS, "tokens", limit=10, query="status=revoked")
    assert rows == [] and pages == 4 and max(read) <= 40
    # without a filter a page reads exactly the rows it returns
    read.clear()
    status, data, _ = await admin(gateway, "GET", f"{TOKENS}?limit=500", org_admin)
    assert len(data["tokens"]) == 130 and sum(read) == 130 and max(read) <= views.PAGE_CHUNK


# -- teams and service accounts --------------------------------------------------------------
async def test_a_team_walk_sees_every_team_exactly_once_in_name_order(gateway: Gateway) -> None:
    token = await gateway.org_admin()
    names = [f"team-{i:03d}" for i in range(130)]
    for start in range(0, len(names), 26):
        await asyncio.gather(*(gateway.team(n, ["read:apis"]) for n in names[start : start + 26]))
    status, first, _ = await admin(gateway, "GET", TEAMS, token)
    assert status == 200 and len(first["teams"]) == 100 and first["next"]
    rows, _ = await walk(gateway, token, TEAMS, "teams", limit=9)
    assert [t["name"] for t in rows] == sorted(names)


async def test_teams_written_before_the_name_index_are_listed(gateway: Gateway, redis_url: str) -> None:
    """Teams stored by an older version (the set and records only) appear in the pages."""
    token = await gateway.org_admin()
    await gateway.team("alpha", ["read:apis"])
    client = aioredis.Redis.from_url(redis_url)
    for name in ("legacy-b", "legacy-a"):
        record = {"org": "acme", "name": name, "permissions": [], "created_at": 0.0, "created_by": "old"}
        await client.sadd(Keys.teams("acme"), name)
        await client.set(Keys.team("acme", name), orjson.dumps(record))
    await client.aclose()
    rows, _ = await walk(gateway, token, TEAMS, "teams", limit=2)
    assert [t["name"] for t in rows] == ["alpha", "legacy-a", "legacy-b"]


async def test_a_team_admin_lists_only_its_own_team(gateway: Gateway, org_admin: str) -> None:
    await gateway.team("other", ["read:apis"])
    team_admin, _ = await gateway.token("platform", ["admin:team"])
    status, data, _ = await admin(gateway, "GET", TEAMS, team_admin)
    assert status == 200 and [t["name"] for t in data["teams"]] == ["platform"] and data["next"] is None


async def test_service_accounts_page_and_count_their_active_tokens(gateway: Gateway, org_admin: str) -> None:
    names = [f"sa-{i:02d}" for i in range(23)]
    for name in names:
        status, _, _ = await admin(gateway, "POST", SAS, org_admin, {"name": name})
        assert status == 201
    await bulk_tokens(gateway, 3, service_account="sa-05")
    await bulk_tokens(gateway, 2, service_account="sa-05", revoked_at=time.time() - 1, revoked_by="t")
    rows, pages = await walk(gateway, org_admin, SAS, "service_accounts", limit=5)
    assert [r["name"] for r in rows] == names and pages == 5
    counts = {r["name"]: (r["active_tokens"], r["active_tokens_exact"]) for r in rows}
    assert counts["sa-05"] == (3, True) and counts["sa-06"] == (0, True)


async def test_service_account_counts_and_delete_are_bounded(
    gateway: Gateway, org_admin: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(accounts, "COUNT_CAP", 30)  # the count moved with org-level accounts
    status, _, _ = await admin(gateway, "POST", SAS, org_admin, {"name": "busy"})
    assert status == 201
    await bulk_tokens(gateway, 150, service_account="busy", revoked_at=time.time() - 1, revoked_by="t")
    status, data, _ = await admin(gateway, "GET", SAS, org_admin)
    [row] = data["service_accounts"]
    assert row["active_tokens_exact"] is False and row["active_tokens"] == 0
    status, data, _ = await admin(gateway, "DELETE", f"{SAS}/busy", org_admin)
    assert status == 409 and "revoked and expired tokens" in data["message"]


async def test_a_service_account_with_an_active_token_is_not_deleted(
    gateway: Gateway, org_admin: str
) -> None:
    status, _, _ = await admin(gateway, "POST", SAS, org_admin, {"name": "ci"})
    assert status == 201
    status, created, _ = await admin(
        gateway, "POST", TOKENS, org_admin, {"name": "t", "scopes": ["read:apis"], "service_account": "ci"}
    )
    assert status == 201
    status, _, _ = await admin(gateway, "DELETE", f"{SAS}/ci", org_admin)
    assert status == 409
    for step in ("revoke",):
        status, _, _ = await admin(gateway, "POST", f"{TOKENS}/{created['id']}/{step}", org_admin)
        assert status == 200
    status, _, _ = await admin(gateway, "DELETE", f"{TOKENS}/{created['id']}", org_admin)
    assert status == 204
    assert await gateway.runtime.store.token_index_page(
        "acme", "platform", None, 10, service_account="ci"
    ) == (api_page_empty())
    status, _, _ = await admin(gateway, "DELETE", f"{SAS}/ci", org_admin)
    assert status == 204
    status, data, _ = await admin(gateway, "GET", SAS, org_admin)
    assert data == {"service_accounts": [], "next": None}


def api_page_empty() -> Any:
    from tokenward.gateway.store_pages import IndexPage

    return IndexPage([], False)


# -- audit ---------------------------------------------------------------------------------
async def test_an_audit_walk_sees_every_event_exactly_once_newest_first(
    gateway: Gateway, org_admin: str
) -> None:
    for i in range(25):
        status, _, _ = await admin(gateway, "POST", SAS, org_admin, {"name": f"sa-{i:02d}"})
        assert status == 201
    await gateway.runtime.audit.flush()
    query = "action=service_account.created"
    rows, pages = await walk(gateway, org_admin, "/v1/audit", "events", limit=4, query=query)
    assert [e["service_account"] for e in rows] == [f"sa-{i:02d}" for i in reversed(range(25))]
    assert len({e["id"] for e in rows}) == 25 and pages == 7


async def test_an_audit_page_examines_a_bounded_number_of_entries(
    gateway: Gateway, org_admin: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(api_audit, "AUDIT_SCAN_BUDGET", 10)
    monkeypatch.setattr(api_audit, "AUDIT_CHUNK", 5)
    for i in range(30):
        status, _, _ = await admin(gateway, "POST", SAS, org_admin, {"name": f"sa-{i:02d}"})
        assert status == 201
    await gateway.runtime.audit.flush()
    status, data, _ = await admin(gateway, "GET", "/v1/audit?action=no.such.action&limit=1000", org_admin)
    assert status == 200 and data["events"] == [] and data["next"] is not None


# -- quota ---------------------------------------------------------------------------------
@pytest.fixture
async def small_quota(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    config["tokens"]["max_per_team"] = 5
    return await start_gateway(config)


async def test_creating_beyond_the_team_quota_is_409_naming_the_limit(
    small_quota: Gateway, monkeypatch: Any
) -> None:
    gw = small_quota
    hashed: list[int] = []
    real_hash = gw.runtime.hasher.hash

    async def counted_hash(secret: str) -> str:
        hashed.append(1)
        return await real_hash(secret)

    monkeypatch.setattr(gw.runtime.hasher, "hash", counted_hash)
    token = await gw.org_admin()
    await gw.team("platform", ["read:apis", "admin:team"])
    created = []
    for i in range(5):
        status, data, _ = await admin(gw, "POST", TOKENS, token, {"name": f"t{i}", "scopes": ["read:apis"]})
        assert status == 201
        created.append(data["id"])
    assert len(hashed) == 6  # the org admin's and five
    status, data, _ = await admin(gw, "POST", TOKENS, token, {"name": "t5", "scopes": ["read:apis"]})
    assert status == 409 and data["error"] == "quota_exceeded"
    assert "tokens.max_per_team" in data["message"] and "5" in data["message"]
    assert len(hashed) == 6  # refused before any argon2 work
    # rotation mints a token too
    status, data, _ = await admin(gw, "POST", f"{TOKENS}/{created[0]}/rotate", token, {})
    assert status == 409 and data["error"] == "quota_exceeded"
    # another team has its own quota
    await gw.team("other", ["read:apis"])
    status, _, _ = await admin(
        gw, "POST", "/v1/orgs/acme/teams/other/tokens", token, {"name": "x", "scopes": ["read:apis"]}
    )
    assert status == 201
    # revoked tokens still count; deleted ones no longer do
    status, _, _ = await admin(gw, "POST", f"{TOKENS}/{created[0]}/revoke", token)
    status, data, _ = await admin(gw, "POST", TOKENS, token, {"name": "t5", "scopes": ["read:apis"]})
    assert status == 409
    status, _, _ = await admin(gw, "DELETE", f"{TOKENS}/{created[0]}", token)
    assert status == 204
    status, _, _ = await admin(gw, "POST", TOKENS, token, {"name": "t5", "scopes": ["read:apis"]})
    assert status == 201


async def test_concurrent_creations_never_pass_the_quota(small_quota: Gateway) -> None:
    gw = small_quota
    token = await gw.org_admin()
    await gw.team("platform", ["read:apis"])
    for trial in range(3):
        results = await asyncio.gather(
            *(
                admin(gw, "POST", TOKENS, token, {"name": f"c{trial}-{i}", "scopes": ["read:apis"]})
                for i in range(12)
            )
        )
        statuses = [status for status, _, _ in results]
        assert statuses.count(201) == (5 if trial == 0 else 0) and statuses.count(409) == 12 - statuses.count(
            201
        )
        assert await gw.runtime.store.token_count("acme", "platform") == 5


async def test_the_store_refuses_past_the_quota_atomically(gateway: Gateway) -> None:
    """Directly at the store: many creations at once, exactly `limit` land in the index."""
    from tokenward.gateway.store import QuotaExceeded

    store = gateway.runtime.store
    records = [
        TokenRecord(
            id=new_id(),
            prefix="tw_sat",
            org="acme",
            team="q",
            name="r",
            description="",
            scopes=(),
            secret_hash="x",
            created_at=time.time(),
            created_by="t",
        )
        for _ in range(40)
    ]
    outcomes = await asyncio.gather(
        *(store.create_token_in_quota(r, 17) for r in records), return_exceptions=True
    )
    assert sum(o is None for o in outcomes) == 17
    assert all(isinstance(o, QuotaExceeded) for o in outcomes if o is not None)
    assert await store.token_count("acme", "q") == 17


@pytest.mark.parametrize("value", [0, -1, "10", 1.5, True, 10_000_001])
def test_max_per_team_is_validated_with_its_location(config: dict[str, Any], value: Any) -> None:
    config["tokens"]["max_per_team"] = value
    with pytest.raises(ConfigError) as exc:
        settings_from_dict(config, "test.yaml")
    assert "tokens.max_per_team" in str(exc.value)


def test_max_per_team_defaults_to_ten_thousand(config: dict[str, Any]) -> None:
    assert settings_from_dict(config, "t").tokens.max_per_team == 10_000


# -- leaks ---------------------------------------------------------------------------------
async def test_a_leak_batch_is_bounded(gateway: Gateway, org_admin: str) -> None:
    status, data, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": ["x"] * 101})
    assert status == 400 and data["field"] == "tokens" and "100" in data["message"]
    big = {"tokens": ["tw_sat_" + "A" * 190] * 100, "pad": "x" * 70_000}
    status, _, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, big)
    assert status == 413
    status, data, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": ["x"] * 100})
    assert status == 200 and {r["result"] for r in data["results"]} == {"not_a_token"}


def count_argon2(gw: Gateway, monkeypatch: Any) -> list[int]:
    """Every argon2 verification of the process, whichever path asks for it."""
    calls: list[int] = []
    real = gw.runtime.hasher.verify

    async def counted(stored_hash: Any, secret: str) -> bool:
        calls.append(1)
        return await real(stored_hash, secret)

    monkeypatch.setattr(gw.runtime.hasher, "verify", counted)
    return calls


async def test_wrong_secret_leak_reports_cost_no_argon2(
    gateway: Gateway, org_admin: str, monkeypatch: Any
) -> None:
    verified = count_argon2(gateway, monkeypatch)
    _, kid = await gateway.token("platform", ["read:apis"])
    record = await gateway.runtime.store.get_token(kid)
    assert record is not None and record.secret_check
    auth = gateway.runtime.authenticator
    # Leave out the ~1 in 65,536 wrong secrets that pass this record's keyed check (its key
    # is random, so which ones differs from run to run): those rightly cost one argon2 each.
    flood = [
        t
        for t in wrong_secrets(kid, 320)
        if secret_check(kid, t[len("tw_sat_") + 12 : -6], record.check_key) != record.secret_check
    ][:300]
    assert len(flood) == 300
    # the same for an unknown id, whose secrets are checked against the decoy record's keyed
    # check (random per process): the ~1 in 65,536 that pass it rightly cost one argon2 each
    decoy = auth._decoy
    unknown_ids = [
        t
        for t in wrong_secrets("ZZZZZZZZZZZZ", 120)
        if secret_check("ZZZZZZZZZZZZ", t[len("tw_sat_") + 12 : -6], decoy.check_key) != decoy.secret_check
    ][:100]
    assert len(unknown_ids) == 100
    before = auth.argon2_verifications
    results: list[dict[str, Any]] = []
    for start in range(0, len(flood), 100):
        status, data, _ = await admin(
            gateway, "POST", "/v1/leaks", org_admin, {"tokens": flood[start : start + 100]}
        )
        assert status == 200
        results += data["results"]
    status, data, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": unknown_ids})
    results += data["results"]
    assert {r["result"] for r in results} <= {"unknown", "throttled"}
    assert auth.argon2_verifications - before == 0
    assert verified == []
    after = await gateway.runtime.store.get_token(kid)
    assert after is not None and after.status() == "active"


async def test_leak_reports_share_the_failure_throttle(
    gateway: Gateway, org_admin: str, monkeypatch: Any
) -> None:
    """Failed verifications behind leak reports drain the same per-key bucket as requests:
    past it, reports are deferred (`throttled`, Retry-After) without argon2 work."""
    _, kid = await gateway.token("platform", ["read:apis"])
    store = gateway.runtime.store
    record = await store.get_token(kid)
    assert record is not None
    await store.put_token(dataclasses.replace(record, secret_check=""))  # every wrong secret → argon2
    auth = gateway.runtime.authenticator
    burst = int(auth.throttle.per_key[0])
    before = auth.argon2_verifications
    verified = count_argon2(gateway, monkeypatch)
    status, data, headers = await admin(
        gateway, "POST", "/v1/leaks", org_admin, {"tokens": wrong_secrets(kid, burst + 10)}
    )
    assert status == 200
    results = [r["result"] for r in data["results"]]
    assert auth.argon2_verifications - before == burst == len(verified)
    assert results.count("unknown") == burst and results.count("throttled") == 10
    assert headers.get("Retry-After") == "1"
    after = await store.get_token(kid)
    assert after is not None and after.status() == "active"


async def test_a_real_leaked_token_is_still_revoked(gateway: Gateway, org_admin: str) -> None:
    leaked, kid = await gateway.token("platform", ["read:apis"])
    auth = gateway.runtime.authenticator
    before = auth.argon2_verifications
    status, data, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": [leaked, leaked]})
    assert status == 200 and [r["result"] for r in data["results"]] == ["revoked", "already_revoked"]
    assert auth.argon2_verifications - before <= 1  # the second report uses the proof
    record = await gateway.runtime.store.get_token(kid)
    assert record is not None and record.status() == "revoked" and record.revoke_reason == "leaked"


# -- OpenAPI and CLI ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/orgs/{org}/teams", "teams"),
        ("/v1/orgs/{org}/teams/{team}/tokens", "tokens"),
        ("/v1/orgs/{org}/teams/{team}/service-accounts", "service_accounts"),
        ("/v1/audit", "events"),
    ],
)
def test_openapi_describes_limit_cursor_and_next(path: str, key: str) -> None:
    document = openapi_document()
    op = document["paths"][path]["get"]
    params = {p["name"]: p for p in (resolve(document, p) for p in op["parameters"])}  # $refs
    assert params["limit"]["schema"]["type"] == "integer"
    assert params["limit"]["schema"]["minimum"] == 1 and params["limit"]["schema"]["maximum"] in (500, 1000)
    assert "cursor" in params
    body = resolve(document, op["responses"]["200"]["content"]["application/json"]["schema"])
    assert "next" in body["properties"] and "next" in body["required"] and key in body["properties"]
    assert "400" in op["responses"]


async def test_cli_lists_follow_next_to_the_end(gateway: Gateway, org_admin: str) -> None:
    env = {
        **env_for_subprocess(),
        "TOKENWARD_ADMIN_URL": gateway.admin_url,
        "TOKENWARD_TOKEN": org_admin,
    }
    ids = await bulk_tokens(gateway, 523)
    code, out, err = await run_cli("token", "list", "--team", "platform", "--json", env=env)
    assert code == 0, err
    data = orjson.loads(out)
    assert [t["id"] for t in data["tokens"]] == ids and data["next"] is None
    code, out, err = await run_cli("token", "list", "--team", "platform", "--json", "--limit", "7", env=env)
    assert code == 0, err
    data = orjson.loads(out)
    assert [t["id"] for t in data["tokens"]] == ids[:7] and data["next"]
    code, out, err = await run_cli("token", "list", "--team", "platform", "--limit", "0", env=env)
    assert code != 0
    for i in range(3):
        await gateway.team(f"t{i}", [])
    code, out, err = await run_cli("team", "list", "--json", env=env)
    assert code == 0, err
    assert [t["name"] for t in orjson.loads(out)["teams"]] == ["platform", "t0", "t1", "t2"]
    code, out, err = await run_cli("team", "list", "--json", "--limit", "2", env=env)
    assert [t["name"] for t in orjson.loads(out)["teams"]] == ["platform", "t0"]
    code, out, err = await run_cli("sa", "list", "--team", "platform", "--json", env=env)
    assert code == 0, err and orjson.loads(out)["service_accounts"] == []


async def test_the_expiring_tokens_metric_reads_the_store_in_chunks(
    gateway: Gateway, monkeypatch: Any
) -> None:
    """The metric's periodic count reads every token: in chunks, never all of them at once."""
    from tokenward.gateway import metrics

    await bulk_tokens(gateway, 450, expires_at=time.time() + 3600)
    read = count_reads(gateway.runtime.store, monkeypatch)
    assert await metrics.count_expiring(gateway.runtime) == 450
    assert sum(read) == 450 and max(read) <= metrics.EXPIRING_CHUNK


async def test_tokens_issued_before_the_service_account_index_are_counted(
    gateway: Gateway, org_admin: str
) -> None:
    """Tokens written by the older create path (team and org indexes only) are found by the
    service-account filter, counts and delete check: the team's index is backfilled once (and,
    since issue 14, merged into the org-level account the team's old account becomes)."""
    store = gateway.runtime.store
    await store.create_service_account(ServiceAccountRecord("acme", "platform", "ci", "", 0.0, "old"))
    legacy = [
        TokenRecord(
            id=new_id(),
            prefix="tw_sat",
            org="acme",
            team="platform",
            name=f"old-{i}",
            description="",
            scopes=parse_scopes(["read:apis"]),
            secret_hash="x",
            created_at=time.time() + i / 1e6,
            created_by="old",
            service_account="ci",
        )
        for i in range(3)
    ]
    for record in legacy:
        await store.create_token(record)
    rows, _ = await walk(gateway, org_admin, TOKENS, "tokens", limit=2, query="service_account=ci")
    assert [r["id"] for r in rows] == [r.id for r in legacy]
    status, data, _ = await admin(gateway, "GET", SAS, org_admin)
    assert data["service_accounts"][0]["active_tokens"] == 3
    status, _, _ = await admin(gateway, "DELETE", f"{SAS}/ci", org_admin)
    assert status == 409


async def test_pages_quota_and_backfill_on_a_cluster(config: dict[str, Any], tmp_path: Any) -> None:
    """The page, quota and name-index scripts and the backfill touch one slot each: they run
    on Redis Cluster as on one server."""
    from tests.helpers.topology import Cluster, start_gateway, stop_gateway

    cluster = Cluster(tmp_path / "cluster")
    cluster.start()
    gw: Gateway | None = None
    try:
        config["tokens"]["max_per_team"] = 30
        gw = await start_gateway({**config, "redis": {"cluster": {"nodes": cluster.seeds}}})
        token = await gw.org_admin()
        for name in ("platform", "b-team", "a-team"):
            await gw.team(name, ["read:apis"])
        rows, _ = await walk(gw, token, TEAMS, "teams", limit=2)
        assert [t["name"] for t in rows] == ["a-team", "b-team", "platform"]
        status, _, _ = await admin(gw, "POST", SAS, token, {"name": "ci"})
        assert status == 201
        ids = await bulk_tokens(gw, 25, service_account="ci")
        rows, _ = await walk(gw, token, TOKENS, "tokens", limit=4)
        assert [r["id"] for r in rows] == ids
        rows, _ = await walk(gw, token, TOKENS, "tokens", limit=4, query="service_account=ci&status=active")
        assert [r["id"] for r in rows] == ids
        for i in range(5):
            status, _, _ = await admin(gw, "POST", TOKENS, token, {"name": f"q{i}", "scopes": ["read:apis"]})
            assert status == 201
        status, data, _ = await admin(gw, "POST", TOKENS, token, {"name": "over", "scopes": ["read:apis"]})
        assert status == 409 and data["error"] == "quota_exceeded"
        status, data, _ = await admin(gw, "GET", SAS, token)
        assert data["service_accounts"][0]["active_tokens"] == 25
    finally:
        if gw is not None:
            await stop_gateway(gw)
        cluster.stop()


@pytest.mark.parametrize("seed", range(6))
async def test_index_walks_under_concurrent_inserts_and_deletes(
    gateway: Gateway, redis_url: str, seed: int
) -> None:
    """The page script against random churn between pages (many equal scores, deleted cursor
    rows, rows inserted before and after the cursor): every row present for the whole walk is
    seen exactly once, rows come in (score, id) order, nothing is seen twice."""
    import random

    rng = random.Random(seed)
    key = Keys.team_tokens("acme", "churn")
    client = aioredis.Redis.from_url(redis_url)

    def row() -> tuple[str, float]:
        return new_id(), float(rng.choice([1.0, 2.0, 2.0, 3.5, rng.uniform(0, 5)]))

    initial = dict(row() for _ in range(300))
    await client.zadd(key, initial)
    present = dict(initial)
    deleted: set[str] = set()
    seen: list[tuple[float, str]] = []
    position: tuple[float, str] | None = None
    store = gateway.runtime.store
    while True:
        page = await store.token_index_page("acme", "churn", position, rng.randint(1, 17))
        seen += [(score, member) for member, score in page.rows]
        if page.rows:
            position = (page.rows[-1][1], page.rows[-1][0])
        if not page.more:
            break
        victims = rng.sample(sorted(present), k=min(len(present), rng.randint(0, 4)))
        if position is not None and rng.random() < 0.5 and position[1] in present:
            victims.append(position[1])  # the cursor's own row
        for member in set(victims):
            await client.zrem(key, member)
            present.pop(member)
            deleted.add(member)
        added = dict(row() for _ in range(rng.randint(1, 4)))
        await client.zadd(key, added)
        present.update(added)
    await client.aclose()
    members = [m for _, m in seen]
    assert len(members) == len(set(members))
    assert seen == sorted(seen, key=lambda r: (r[0], r[1].encode()))
    survivors = set(initial) - deleted
    assert survivors <= set(members)
