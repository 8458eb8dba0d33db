"""Outside review, issue 14 hole (a): a team admin acting on a token above its level. Every
mutating token endpoint is checked against tokens of higher privilege (scopes the team admin
does not hold), of other teams, and of the org level, on the team paths and the org-wide
paths. The rule (SECURITY.md, "Who may change which token"): a team admin may revoke any
token of its own team (revoking takes power away); renaming, restoring, rotating and deleting
need a token within its own grant; other teams' and org-level tokens are out of reach (404 on
its team paths, 403 on the org-wide paths)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.gateway import Gateway, admin

TEAMS = "/v1/orgs/acme/teams"
ORG_TOKENS = "/v1/orgs/acme/tokens"


async def mint(gw: Gateway, by: str, team: str = "platform", **body: Any) -> dict[str, Any]:
    body.setdefault("name", "t")
    body.setdefault("scopes", ["read:apis"])
    status, data, _ = await admin(gw, "POST", f"{TEAMS}/{team}/tokens", by, body)
    assert status == 201, data
    return dict(data)


@pytest.fixture
async def setup(gateway: Gateway) -> dict[str, Any]:
    gw = gateway
    acme = await gw.org_admin()
    for team in ("platform", "other"):
        body = {"name": team, "permissions": ["read:apis", "write:specs", "admin:team"]}
        assert (await admin(gw, "POST", TEAMS, acme, body))[0] == 201
    ta = await mint(gw, acme, name="ta", scopes=["admin:team", "read:apis"])
    return {"acme": acme, "ta": ta["token"], "ta_id": ta["id"]}


async def test_a_team_admin_cannot_rename_a_wider_token(gateway: Gateway, setup: dict[str, Any]) -> None:
    """The reported hole: PATCH by a team admin on a token it could not have issued."""
    gw, acme, ta = gateway, setup["acme"], setup["ta"]
    wide = await mint(gw, acme, name="deploy-prod", scopes=["read:apis", "write:specs"])
    path = f"{TEAMS}/platform/tokens/{wide['id']}"
    status, body, _ = await admin(gw, "PATCH", path, ta, {"name": "harmless-readonly"})
    assert status == 403 and body["step"] == "grant" and "write:specs" in body["message"]
    assert (await admin(gw, "GET", path, acme))[1]["name"] == "deploy-prod"
    # a token within its grant: renamed as before
    narrow = await mint(gw, acme, name="ci", scopes=["read:apis"])
    status, view, _ = await admin(gw, "PATCH", f"{TEAMS}/platform/tokens/{narrow['id']}", ta, {"name": "ci-2"})
    assert status == 200 and view["name"] == "ci-2"


@pytest.mark.parametrize("wider", [["write:specs"], ["admin:team", "write:specs"], ["read:*"]])
async def test_every_verb_on_a_wider_token_of_its_team(
    gateway: Gateway, setup: dict[str, Any], wider: list[str]
) -> None:
    gw, acme, ta = gateway, setup["acme"], setup["ta"]
    wide = await mint(gw, acme, name="wide", scopes=wider)
    path = f"{TEAMS}/platform/tokens/{wide['id']}"
    assert (await admin(gw, "PATCH", path, ta, {"description": "x"}))[0] == 403
    assert (await admin(gw, "POST", f"{path}/rotate", ta))[0] == 403
    # revoke: allowed (takes power away), recorded at the team level
    status, view, _ = await admin(gw, "POST", f"{path}/revoke", ta, {"reason": "suspicious"})
    assert status == 200 and view["status"] == "revoked" and view["revoked_by_level"] == "team"
    assert (await admin(gw, "POST", f"{path}/restore", ta))[0] == 403  # can't grant it again
    assert (await admin(gw, "DELETE", path, ta))[0] == 403  # nor erase the record
    # the org admin can do each
    assert (await admin(gw, "POST", f"{path}/restore", acme))[0] == 200
    assert (await admin(gw, "PATCH", path, acme, {"description": "x"}))[0] == 200


async def test_other_teams_and_the_org_level_are_out_of_reach(gateway: Gateway, setup: dict[str, Any]) -> None:
    gw, acme, ta = gateway, setup["acme"], setup["ta"]
    acme_id = (await admin(gw, "GET", "/v1/whoami", acme))[1]["id"]
    theirs = (await mint(gw, acme, "other", name="theirs"))["id"]
    for kid in (acme_id, theirs):
        for base in (f"{TEAMS}/platform/tokens", f"{TEAMS}/other/tokens", ORG_TOKENS):
            for method, tail, body in (
                ("GET", "", None),
                ("PATCH", "", {"name": "mine-now"}),
                ("POST", "/revoke", None),
                ("POST", "/restore", None),
                ("POST", "/rotate", None),
                ("DELETE", "", None),
            ):
                status, data, _ = await admin(gw, method, f"{base}/{kid}{tail}", ta, body)
                # its own team's path: not found there; another team's or the org's: forbidden
                expected = 404 if base.startswith(f"{TEAMS}/platform") else 403
                assert status == expected, (method, base, tail, data)
    assert (await admin(gw, "GET", "/v1/whoami", acme))[0] == 200
    _, view, _ = await admin(gw, "GET", f"{ORG_TOKENS}/{acme_id}", acme)
    assert view["status"] == "active" and view["name"] == "org-admin"
    _, view, _ = await admin(gw, "GET", f"{ORG_TOKENS}/{theirs}", acme)
    assert view["status"] == "active" and view["name"] == "theirs"


async def test_an_org_admin_changes_any_token_of_its_org(gateway: Gateway, setup: dict[str, Any]) -> None:
    gw, acme = gateway, setup["acme"]
    second = await gw.org_admin()
    second_id = (await admin(gw, "GET", "/v1/whoami", second))[1]["id"]
    status, view, _ = await admin(gw, "PATCH", f"{ORG_TOKENS}/{second_id}", acme, {"name": "break-glass"})
    assert status == 200 and view["name"] == "break-glass"
