"""A query parameter naming another team or org is refused, never silently ignored (review of
issue 14): `GET /v1/orgs/acme/service-accounts?team=billing` by the platform team admin
answered with platform's accounts. On every endpoint declaring a `team` (or `org`) query
parameter, a team admin naming another team gets 403 (step team), another org 403 (step org);
its own team is honoured."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers.gateway import Gateway, admin
from tokenward.api import ENDPOINTS

TEAMS = "/v1/orgs/acme/teams"
NAMING = [ep for ep in ENDPOINTS if {"team", "org"} & {name for name, _ in ep.query}]


@pytest.fixture
async def world(gateway: Gateway) -> dict[str, Any]:
    gw = gateway
    acme = await gw.org_admin()
    for team in ("platform", "billing"):
        body = {"name": team, "permissions": ["read:apis", "admin:team"]}
        assert (await admin(gw, "POST", TEAMS, acme, body))[0] == 201
        assert (await admin(gw, "POST", f"{TEAMS}/{team}/service-accounts", acme, {"name": f"{team}-bot"}))[0] == 201
    body = {"name": "ta", "scopes": ["admin:team", "read:apis"]}
    status, ta, _ = await admin(gw, "POST", f"{TEAMS}/platform/tokens", acme, body)
    assert status == 201
    return {"acme": acme, "platform_admin": ta["token"]}


def test_the_endpoints_naming_a_team_are_found() -> None:
    paths = {ep.path for ep in NAMING}
    assert {"/v1/orgs/{org}/service-accounts", "/v1/orgs/{org}/tokens", "/v1/audit"} <= paths


@pytest.mark.parametrize("ep", NAMING, ids=lambda ep: f"{ep.method} {ep.path}")
async def test_a_team_admin_naming_another_team_or_org_is_refused(
    gateway: Gateway, world: dict[str, Any], ep: Any
) -> None:
    path = re.sub(r"\{org\}", "acme", ep.path)
    declared = {name for name, _ in ep.query}
    if "team" in declared:
        status, body, _ = await admin(gateway, ep.method, f"{path}?team=billing", world["platform_admin"])
        assert status == 403 and body["step"] == "team", (path, body)
    if "org" in declared:
        status, body, _ = await admin(gateway, ep.method, f"{path}?org=globex", world["platform_admin"])
        assert status == 403 and body["step"] == "org", (path, body)


async def test_the_accounts_list_honours_team(gateway: Gateway, world: dict[str, Any]) -> None:
    gw = gateway
    path = "/v1/orgs/acme/service-accounts"
    status, page, _ = await admin(gw, "GET", f"{path}?team=platform", world["platform_admin"])
    assert status == 200 and [a["name"] for a in page["service_accounts"]] == ["platform-bot"]
    status, page, _ = await admin(gw, "GET", f"{path}?team=billing", world["acme"])
    assert status == 200 and [a["name"] for a in page["service_accounts"]] == ["billing-bot"]
