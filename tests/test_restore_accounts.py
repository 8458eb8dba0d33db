"""A restore never brings back a token whose service account is gone (review of issue 14):
refused with 409 when the account was deleted or no longer holds the token's team, decided
atomically with the account's delete and team removal (a restore racing them never leaves an
active token of a deleted account), and a gateway never forwards a name for a token whose
account record is missing: such a token (restored in a store from before the check) is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from tests.helpers.gateway import TEAMS, Gateway, admin, base_config
from tokenward.accounts import Accounts
from tokenward.gateway.store import TokenEdit
from tokenward.gateway.store_accounts import AccountWrite

ACCOUNTS = "/v1/orgs/acme/service-accounts"
PLATFORM_SAS = "/v1/orgs/acme/teams/platform/service-accounts"
PLATFORM = "/v1/orgs/acme/teams/platform/tokens"


async def setup(gw: Gateway) -> tuple[str, str, str]:
    """An org admin, and team admins of platform and billing."""
    org = await gw.org_admin()
    admins = []
    for team in ("platform", "billing"):
        status, data, _ = await admin(gw, "POST", TEAMS, org, {"name": team, "permissions": ["read:apis", "admin:team"]})
        assert status == 201, data
        body = {"name": "team-admin", "scopes": ["admin:team", "read:apis"]}
        status, data, _ = await admin(gw, "POST", f"/v1/orgs/acme/teams/{team}/tokens", org, body)
        assert status == 201, data
        admins.append(str(data["token"]))
    return org, admins[0], admins[1]


async def revoked_token_of(gw: Gateway, by: str, account: str) -> dict[str, Any]:
    status, token, _ = await admin(gw, "POST", PLATFORM, by, {"name": "t", "scopes": ["read:apis"], "service_account": account})
    assert status == 201, token
    status, _, _ = await admin(gw, "POST", f"{PLATFORM}/{token['id']}/revoke", by)
    assert status == 200
    return dict(token)


async def forwarded(gw: Gateway, token: str) -> tuple[int, str | None]:
    async with gw.session.get(f"{gw.url}/orgs/acme/teams/platform/apis", headers=gw.auth(token)) as r:
        if r.status != 200:
            return r.status, None
        data = await r.json()
    return 200, {k.lower(): v for k, v in data["headers"]}.get("x-tokenward-service-account")


@pytest.fixture
async def recorded(start_gateway: Callable[..., Awaitable[Gateway]], recorder: Any) -> Gateway:
    return await start_gateway(base_config(recorder.port))


async def test_a_token_of_a_deleted_account_is_never_restored(recorded: Gateway) -> None:
    gw = recorded
    _, platform, billing = await setup(gw)
    status, _, _ = await admin(gw, "POST", PLATFORM_SAS, platform, {"name": "tb-bot"})
    assert status == 201
    token = await revoked_token_of(gw, platform, "tb-bot")
    status, _, _ = await admin(gw, "DELETE", f"{PLATFORM_SAS}/tb-bot", platform)
    assert status == 204
    status, refused, _ = await admin(gw, "POST", f"{PLATFORM}/{token['id']}/restore", platform)
    assert status == 409 and "no longer exists" in refused["message"], refused
    # another team's account of the same name changes nothing
    status, _, _ = await admin(gw, "POST", "/v1/orgs/acme/teams/billing/service-accounts", billing, {"name": "tb-bot"})
    assert status == 201
    status, refused, _ = await admin(gw, "POST", f"{PLATFORM}/{token['id']}/restore", platform)
    assert status == 409, refused
    assert await forwarded(gw, token["token"]) == (401, None)
    status, view, _ = await admin(gw, "GET", f"{PLATFORM}/{token['id']}", platform)
    assert view["status"] == "revoked"


@pytest.mark.also_on_cluster
async def test_a_token_of_a_team_the_account_left_is_never_restored(gateway: Gateway) -> None:
    gw = gateway
    org, _, _ = await setup(gw)
    status, _, _ = await admin(gw, "POST", ACCOUNTS, org, {"name": "shared", "teams": ["platform", "billing"]})
    assert status == 201
    token = await revoked_token_of(gw, org, "shared")
    status, _, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/shared", org, {"remove_teams": ["platform"]})
    assert status == 200
    status, refused, _ = await admin(gw, "POST", f"{PLATFORM}/{token['id']}/restore", org)
    assert status == 409 and "no longer a member of team 'platform'" in refused["message"], refused
    status, _, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/shared", org, {"add_teams": ["platform"]})
    assert status == 200
    status, restored, _ = await admin(gw, "POST", f"{PLATFORM}/{token['id']}/restore", org)
    assert status == 200 and restored["status"] == "active"


@pytest.mark.also_on_cluster
async def test_no_restored_token_outlives_its_account_under_races(gateway: Gateway) -> None:
    """Restoring a token of an account while the account is deleted (or its team removed):
    over many trials, never an active token of an account that is gone or left the team."""
    gw = gateway
    org, _, _ = await setup(gw)
    orphans = 0
    for trial in range(12):
        name = f"racer-{trial}"
        await admin(gw, "POST", ACCOUNTS, org, {"name": name, "teams": ["platform", "billing"]})
        token = await revoked_token_of(gw, org, name)
        change = (
            admin(gw, "DELETE", f"{ACCOUNTS}/{name}", org)
            if trial % 2
            else admin(gw, "PATCH", f"{ACCOUNTS}/{name}", org, {"remove_teams": ["platform"]})
        )
        restored, changed = await asyncio.gather(admin(gw, "POST", f"{PLATFORM}/{token['id']}/restore", org), change)
        assert restored[0] in (200, 409) and changed[0] in (200, 204, 409), (restored, changed)
        orphans += restored[0] == 200 and changed[0] in (200, 204)
        _, view, _ = await admin(gw, "GET", f"{PLATFORM}/{token['id']}", org)
        assert (view["status"] == "active") == (restored[0] == 200)
    assert orphans == 0


async def test_a_gateway_forwards_no_name_for_a_token_whose_account_is_gone(recorded: Gateway) -> None:
    """A token restored (in a store from before the check) after its account was deleted, and
    a new account of the same name in another team: the token is refused, never forwarded
    with the name the other team's account now holds."""
    gw = recorded
    _, platform, billing = await setup(gw)
    await admin(gw, "POST", PLATFORM_SAS, platform, {"name": "tb-bot"})
    token = await revoked_token_of(gw, platform, "tb-bot")
    status, _, _ = await admin(gw, "DELETE", f"{PLATFORM_SAS}/tb-bot", platform)
    assert status == 204
    await gw.runtime.store.change_token(token["id"], lambda r: TokenEdit(r.restored()))  # as an old restore did
    assert await forwarded(gw, token["token"]) == (401, None)
    await admin(gw, "POST", "/v1/orgs/acme/teams/billing/service-accounts", billing, {"name": "tb-bot"})
    assert await forwarded(gw, token["token"]) == (401, None)


async def test_a_gateway_forwards_the_account_name_while_it_holds_the_team(recorded: Gateway) -> None:
    gw = recorded
    org, _, _ = await setup(gw)
    await admin(gw, "POST", ACCOUNTS, org, {"name": "shared", "teams": ["platform", "billing"]})
    status, token, _ = await admin(gw, "POST", PLATFORM, org, {"name": "t", "scopes": ["read:apis"], "service_account": "shared"})
    assert status == 201
    assert await forwarded(gw, token["token"]) == (200, "shared")
    record = await gw.runtime.store.get_token(token["id"])
    assert record is not None
    # the account left the team behind the check's back (a store from before): refused
    account = await gw.runtime.store.get_account("acme", str(record.service_account_id))
    assert account is not None
    raw = await gw.runtime.store.get_account_raw("acme", account.id)
    assert await gw.runtime.store.put_account(AccountWrite(account, raw, replace(account, teams=("billing",)))) == 1
    assert await forwarded(gw, token["token"]) == (401, None)


async def test_a_token_being_restored_counts_as_active(gateway: Gateway) -> None:
    """The window between a restore's check and its write: a delete or a team removal landing
    there counts the token as active (409), and goes through once the mark is gone."""
    gw = gateway
    org, _, _ = await setup(gw)
    await admin(gw, "POST", ACCOUNTS, org, {"name": "held", "teams": ["platform", "billing"]})
    token = await revoked_token_of(gw, org, "held")
    record = await gw.runtime.store.get_token(token["id"])
    assert record is not None
    accounts = Accounts(gw.runtime)
    await accounts.hold_for_restore(record)
    status, refused, _ = await admin(gw, "DELETE", f"{ACCOUNTS}/held", org)
    assert status == 409 and "active tokens (1)" in refused["message"], refused
    status, refused, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/held", org, {"remove_teams": ["platform"]})
    assert status == 409, refused
    status, _, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/held", org, {"remove_teams": ["billing"]})
    assert status == 200  # the mark is for the token's team only
    await accounts.release_restore(record)
    status, _, _ = await admin(gw, "DELETE", f"{ACCOUNTS}/held", org)
    assert status == 204


async def test_a_stale_cached_account_does_not_refuse_a_new_member_teams_token(recorded: Gateway) -> None:
    """The membership check reads the account again before refusing: a cached copy from
    before the token's team was added never refuses its token."""
    gw = recorded
    org, _, _ = await setup(gw)
    await admin(gw, "POST", ACCOUNTS, org, {"name": "grown", "teams": ["platform"]})
    body = {"name": "t", "scopes": ["read:apis"], "service_account": "grown"}
    status, token, _ = await admin(gw, "POST", PLATFORM, org, body)
    assert status == 201 and await forwarded(gw, token["token"]) == (200, "grown")
    record = await gw.runtime.store.get_token(token["id"])
    assert record is not None and record.service_account_id is not None
    account = await gw.runtime.store.get_account("acme", record.service_account_id)
    assert account is not None
    cache = gw.runtime.authenticator.cache
    cache.store_account(replace(account, teams=("billing",)), cache.epoch)  # as if from before
    assert await forwarded(gw, token["token"]) == (200, "grown")
