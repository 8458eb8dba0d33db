"""Rotation keeps what the token had (issue 14, item 10): the successor's lifetime follows the
rotation policy (the old token's lifetime length again, within tokens.max_ttl and the
rotating admin's own end; never silently tokens.default_ttl), and the grace window is
visible (`status: grace`, `grace_until`, `replaced_by`); revocations show who and why."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from tests.helpers.gateway import TOKENS, Gateway, admin, issue, org_admin_with_team
from tests.helpers.process import env_for_subprocess, run_cli

DAY = 86400.0
TEAMS = "/v1/orgs/acme/teams"


def ts(text: str | None) -> float:
    assert text is not None
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture
async def acme(gateway: Gateway) -> str:
    return await org_admin_with_team(gateway, ["read:apis", "write:specs", "admin:team"])


async def aged(gw: Gateway, lifetime: float | None, age: float, **kw: Any) -> str:
    """A platform token issued `age` seconds ago with `lifetime` (None: never expires)."""
    created = time.time() - age
    _, kid = await gw.token(
        "platform", ["read:apis"], expires_at=None if lifetime is None else created + lifetime, **kw
    )
    record = await gw.runtime.store.get_token(kid)
    assert record is not None
    await gw.runtime.store.put_token(replace(record, created_at=created))
    return kid


async def rotate(gw: Gateway, by: str, kid: str, **body: Any) -> dict[str, Any]:
    status, data, _ = await admin(gw, "POST", f"{TOKENS}/{kid}/rotate", by, body or None)
    assert status == 201, data
    return dict(data)


def lifetime_of(view: dict[str, Any]) -> float:
    return ts(view["expires_at"]) - time.time()


@pytest.mark.also_on_cluster
async def test_a_30_day_token_rotated_on_day_29_gets_30_days(gateway: Gateway, acme: str) -> None:
    kid = await aged(gateway, 30 * DAY, 29 * DAY)
    new = await rotate(gateway, acme, kid)
    assert 30 * DAY - 120 < lifetime_of(new) <= 30 * DAY  # not the 90-day default, not 1 day


@pytest.mark.parametrize(
    ("lifetime", "age", "expected"),
    [
        (7 * DAY, 0.0, 7 * DAY),
        (1 * DAY, 12 * 3600.0, 1 * DAY),
        (200 * DAY, 150 * DAY, 200 * DAY),
        (400 * DAY, 10 * DAY, 365 * DAY),  # issued under a longer max_ttl: cut to today's (365d)
        (None, 0.0, 365 * DAY),  # never expired: max_ttl allows no such successor
    ],
)
async def test_the_successor_keeps_the_lifetime_length(
    gateway: Gateway, acme: str, lifetime: float | None, age: float, expected: float
) -> None:
    kid = await aged(gateway, lifetime, age)
    assert expected - 120 < lifetime_of(await rotate(gateway, acme, kid)) <= expected


async def test_an_explicit_expiry_wins(gateway: Gateway, acme: str) -> None:
    kid = await aged(gateway, 30 * DAY, 1 * DAY)
    assert 10 * DAY - 120 < lifetime_of(await rotate(gateway, acme, kid, expires_in="10d")) <= 10 * DAY
    kid = await aged(gateway, 30 * DAY, 1 * DAY)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 100 * DAY))
    assert abs(lifetime_of(await rotate(gateway, acme, kid, expires_at=at)) - 100 * DAY) < 120
    kid = await aged(gateway, 30 * DAY, 1 * DAY)
    status, body, _ = await admin(gateway, "POST", f"{TOKENS}/{kid}/rotate", acme, {"expires_in": "400d"})
    assert status == 400 and body["field"] == "expires_in"


async def test_never_stays_never_where_max_ttl_allows(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    raw = copy.deepcopy(config)
    raw["tokens"].update(default_ttl="never", max_ttl="never")
    gw = await start_gateway(raw)
    acme = await gw.org_admin()
    await gw.team("platform", ["read:apis"])
    kid = await aged(gw, None, 5 * DAY)
    assert (await rotate(gw, acme, kid))["expires_at"] is None
    kid = await aged(gw, 30 * DAY, 5 * DAY)
    assert 30 * DAY - 120 < lifetime_of(await rotate(gw, acme, kid)) <= 30 * DAY


async def test_a_team_admin_rotation_ends_no_later_than_its_own(gateway: Gateway, acme: str) -> None:
    team_admin = await issue(gateway, acme, name="ta", scopes=["admin:team", "read:apis"], expires_in="5d")
    kid = await aged(gateway, 30 * DAY, 1 * DAY)
    new = await rotate(gateway, team_admin["token"], kid)
    assert new["expires_at"] == team_admin["expires_at"]


async def test_the_grace_window_is_visible(gateway: Gateway, acme: str) -> None:
    gw = gateway
    old = await issue(gw, acme, name="deploy")
    new = await rotate(gw, acme, old["id"], grace_period="1h")
    _, view, _ = await admin(gw, "GET", f"{TOKENS}/{old['id']}", acme)
    assert view["status"] == "grace" and view["replaced_by"] == new["id"]
    assert abs(ts(view["grace_until"]) - (time.time() + 3600)) < 120
    assert view["revoke_reason"] == "rotated" and view["revoked_by"].startswith("token:")
    _, successor, _ = await admin(gw, "GET", f"{TOKENS}/{new['id']}", acme)
    assert successor["status"] == "active" and successor["grace_until"] is None
    for status_filter, expected in (("grace", [old["id"]]), ("active", [new["id"]]), ("revoked", [])):
        _, page, _ = await admin(gw, "GET", f"{TOKENS}?status={status_filter}", acme)
        assert [t["id"] for t in page["tokens"]] == expected, status_filter
    # the CLI shows it too
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"], env["TOKENWARD_TOKEN"] = gw.admin_url, acme
    code, out, err = await run_cli("token", "list", "--team", "platform", env=env)
    assert code == 0 and "grace (until" in out, err
    # revoking ends the grace period: revoked, with who and why
    _, view, _ = await admin(gw, "POST", f"{TOKENS}/{old['id']}/revoke", acme)
    assert view["status"] == "revoked" and view["grace_until"] is None and view["revoke_reason"] == "rotated"


async def test_a_short_grace_period_runs_out(gateway: Gateway, acme: str) -> None:
    old = await issue(gateway, acme)
    await rotate(gateway, acme, old["id"], grace_period="1s")
    for _ in range(50):
        _, view, _ = await admin(gateway, "GET", f"{TOKENS}/{old['id']}", acme)
        if view["status"] == "revoked":
            break
        assert view["status"] == "grace"
        await asyncio.sleep(0.1)
    assert view["status"] == "revoked" and view["grace_until"] is None and view["replaced_by"]


async def test_revocations_show_who_and_why(gateway: Gateway, acme: str) -> None:
    gw = gateway
    token = await issue(gw, acme)
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"], env["TOKENWARD_TOKEN"] = gw.admin_url, acme
    code, out, err = await run_cli(
        "token", "revoke", token["id"], "--team", "platform", "--reason", "laptop stolen", env=env
    )
    assert code == 0, err
    assert "Reason:      laptop stolen" in out and "Revoked by:  token:" in out and "(an org admin)" in out
    _, view, _ = await admin(gw, "GET", f"{TOKENS}/{token['id']}", acme)
    assert view["revoke_reason"] == "laptop stolen" and view["revoked_by"].startswith("token:")
    code, out, _ = await run_cli("token", "list", "--team", "platform", env=env)
    assert "revoked (org: laptop stolen)" in out
