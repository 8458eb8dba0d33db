"""Rotation papercuts (review of issue 14): a replacement that lives shorter than the old
token's original length says so and why (API `warnings`, CLI stderr), never silently; a grace
period longer than the old token has left ends at its expiry (and says so), so `grace_until`
is never after `expires_at`; a team admin's PATCH of a wider token says "change", not "rename"."""

from __future__ import annotations

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


async def aged(gw: Gateway, lifetime: float, age: float) -> str:
    created = time.time() - age
    _, kid = await gw.token("platform", ["read:apis"], expires_at=created + lifetime)
    record = await gw.runtime.store.get_token(kid)
    assert record is not None
    await gw.runtime.store.put_token(replace(record, created_at=created))
    return kid


async def rotate(gw: Gateway, by: str, kid: str, **body: Any) -> dict[str, Any]:
    status, data, _ = await admin(gw, "POST", f"{TOKENS}/{kid}/rotate", by, body or None)
    assert status == 201, data
    return dict(data)


async def test_a_rotation_cut_to_the_admins_own_expiry_warns(gateway: Gateway, acme: str) -> None:
    team_admin = await issue(gateway, acme, name="ta", scopes=["admin:team", "read:apis"], expires_in="30d")
    kid = await aged(gateway, 90 * DAY, 1 * DAY)
    new = await rotate(gateway, team_admin["token"], kid)
    assert new["expires_at"] == team_admin["expires_at"]
    (warning,) = new["warnings"]
    assert "90 days" in warning and "own expiry" in warning, warning
    # the same length again: nothing to say
    same = await rotate(gateway, acme, await aged(gateway, 30 * DAY, 1 * DAY))
    assert same["warnings"] == []
    # an explicit expiry is what was asked: no warning
    asked = await rotate(gateway, acme, await aged(gateway, 90 * DAY, 1 * DAY), expires_in="10d")
    assert asked["warnings"] == []


async def test_a_rotation_cut_by_max_ttl_warns(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    raw = copy.deepcopy(config)
    raw["tokens"].update(default_ttl="7d", max_ttl="30d")
    gw = await start_gateway(raw)
    acme = await gw.org_admin()
    await gw.team("platform", ["read:apis"])
    new = await rotate(gw, acme, await aged(gw, 365 * DAY, 1 * DAY))
    (warning,) = new["warnings"]
    assert "tokens.max_ttl" in warning and "365 days" in warning, warning


async def test_a_grace_period_ends_at_the_old_tokens_expiry(gateway: Gateway, acme: str) -> None:
    kid = await aged(gateway, 10 * DAY, 9 * DAY)  # one day left
    new = await rotate(gateway, acme, kid, grace_period="7d")
    assert any("grace_period" in w for w in new["warnings"]), new["warnings"]
    _, old, _ = await admin(gateway, "GET", f"{TOKENS}/{kid}", acme)
    assert old["status"] == "grace" and ts(old["grace_until"]) <= ts(old["expires_at"]), old
    assert ts(new["replaced_revoked_at"]) <= ts(old["expires_at"])
    short = await rotate(gateway, acme, await aged(gateway, 10 * DAY, 1 * DAY), grace_period="1h")
    assert short["warnings"] == []


async def test_the_cli_prints_rotation_warnings(gateway: Gateway, acme: str) -> None:
    team_admin = await issue(gateway, acme, name="ta", scopes=["admin:team", "read:apis"], expires_in="30d")
    kid = await aged(gateway, 90 * DAY, 1 * DAY)
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = team_admin["token"]
    code, _, err = await run_cli("token", "rotate", kid, "--team", "platform", env=env)
    assert code == 0, err
    assert "warning: expires_at: the replacement lives" in err and "own expiry" in err, err


async def test_a_wider_tokens_patch_says_change(gateway: Gateway, acme: str) -> None:
    wide = await issue(gateway, acme, name="wide", scopes=["read:apis", "write:specs"])
    narrow = await issue(gateway, acme, name="ta", scopes=["admin:team", "read:apis"])
    for body in ({"description": "x"}, {"metadata": {"a": "b"}}, {"name": "y"}):
        status, refused, _ = await admin(gateway, "PATCH", f"{TOKENS}/{wide['id']}", narrow["token"], body)
        assert status == 403 and "can only change tokens" in refused["message"], refused
