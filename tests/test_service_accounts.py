"""Org-level service accounts (issue 14, item 9), end to end against the real store and a real
gateway: memberships in several teams, tokens bound to one member team, description and owner,
renames that keep history (headers, token views and audit follow the stable id), refusals
while tokens are active, team admins kept to their own team, and accounts from before."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.helpers.gateway import TEAMS, Gateway, admin, base_config
from tokenward.gateway.records import ServiceAccountRecord

ACCOUNTS = "/v1/orgs/acme/service-accounts"
TEAM_SAS = "/v1/orgs/acme/teams/{team}/service-accounts"


def tokens_of(team: str) -> str:
    return f"/v1/orgs/acme/teams/{team}/tokens"


async def setup(gw: Gateway) -> str:
    """An org admin; teams platform, billing and other, each read:apis and admin:team."""
    org = await gw.org_admin()
    for team in ("platform", "billing", "other"):
        status, data, _ = await admin(gw, "POST", TEAMS, org, {"name": team, "permissions": ["read:apis", "admin:team"]})
        assert status == 201, data
    return org


async def issue(gw: Gateway, by: str, team: str, account: str | None, **body: Any) -> tuple[int, Any]:
    body = {"name": "t", "scopes": ["read:apis"], **body}
    if account is not None:
        body["service_account"] = account
    status, data, _ = await admin(gw, "POST", tokens_of(team), by, body)
    return status, data


async def team_admin(gw: Gateway, org: str, team: str) -> str:
    status, data = await issue(gw, org, team, None, scopes=["admin:team", "read:apis"], name="team-admin")
    assert status == 201, data
    return str(data["token"])


async def forwarded_account(gw: Gateway, token: str, team: str = "platform") -> str | None:
    async with gw.session.get(f"{gw.url}/orgs/acme/teams/{team}/apis", headers=gw.auth(token)) as r:
        assert r.status == 200, await r.text()
        data = await r.json()
    headers = {k.lower(): v for k, v in data["headers"]}
    return headers.get("x-tokenward-service-account")


@pytest.fixture
async def recorded(start_gateway: Callable[..., Awaitable[Gateway]], recorder: Any) -> Gateway:
    """A gateway in front of the recorder (it answers with the headers it received)."""
    return await start_gateway(base_config(recorder.port))


async def test_an_account_in_several_teams_with_several_tokens(recorded: Gateway) -> None:
    gw = recorded
    org = await setup(gw)
    body = {"name": "deployer", "teams": ["platform", "billing"], "description": "CD", "owner": "sre@acme"}
    status, account, headers = await admin(gw, "POST", ACCOUNTS, org, body)
    assert status == 201, account
    assert account["teams"] == ["platform", "billing"] and account["owner"] == "sre@acme"
    assert account["id"].startswith("sa_") and headers["Location"].endswith("/deployer")
    for ref in ("deployer", account["id"]):
        status, got, _ = await admin(gw, "GET", f"{ACCOUNTS}/{ref}", org)
        assert status == 200 and got["id"] == account["id"] and got["description"] == "CD"
    # one token per member team; a team it is not a member of is refused with an explanation
    status, prod = await issue(gw, org, "platform", "deployer", name="prod")
    assert status == 201, prod
    status, bill = await issue(gw, org, "billing", "deployer", name="billing")
    assert status == 201, bill
    status, refused = await issue(gw, org, "other", "deployer")
    assert status == 400 and "not a member of team 'other'" in refused["message"]
    status, unknown = await issue(gw, org, "other", "nobody")
    assert status == 400 and "does not exist" in unknown["message"]
    status, listed, _ = await admin(gw, "GET", ACCOUNTS, org)
    assert status == 200
    [row] = listed["service_accounts"]
    assert row["name"] == "deployer" and row["active_tokens"] == 2
    status, page, _ = await admin(gw, "GET", tokens_of("platform") + "?service_account=deployer", org)
    assert status == 200 and [t["id"] for t in page["tokens"]] == [prod["id"]]
    assert await forwarded_account(gw, prod["token"]) == "deployer"
    assert await forwarded_account(gw, bill["token"], "billing") == "deployer"


async def test_a_rename_keeps_tokens_headers_and_audit_history(recorded: Gateway) -> None:
    gw = recorded
    org = await setup(gw)
    status, account, _ = await admin(gw, "POST", ACCOUNTS, org, {"name": "deployer", "teams": ["platform"]})
    assert status == 201
    _, token = await issue(gw, org, "platform", "deployer")
    assert await forwarded_account(gw, token["token"]) == "deployer"  # cached by the gateway now
    status, renamed, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/deployer", org, {"name": "release-bot"})
    assert status == 200, renamed
    assert renamed["id"] == account["id"] and renamed["former_names"] == ["deployer"]
    # the gateway forwards the new name at once (the rename is announced), for the old token
    assert await forwarded_account(gw, token["token"]) == "release-bot"
    status, view, _ = await admin(gw, "GET", f"{tokens_of('platform')}/{token['id']}", org)
    assert view["service_account"] == "release-bot" and view["service_account_id"] == account["id"]
    _, after = await issue(gw, org, "platform", "release-bot", name="after")
    assert await forwarded_account(gw, after["token"]) == "release-bot"
    # the old name is free again, and a token names the account by its current name only
    status, _ = await issue(gw, org, "platform", "deployer")
    assert status == 400
    await gw.runtime.audit.flush()
    for ref in ("release-bot", "deployer", account["id"]):
        status, audit, _ = await admin(gw, "GET", f"/v1/audit?service_account={ref}&limit=1000", org)
        assert status == 200
        requests = [e for e in audit["events"] if e.get("action") == "request.allowed"]
        names = sorted(e["service_account"] for e in requests)
        assert names == ["deployer", "release-bot", "release-bot"], (ref, names)
        actions = {e["action"] for e in audit["events"]}
        assert {"service_account.created", "service_account.renamed", "token.created"} <= actions
    status, audit, _ = await admin(gw, "GET", "/v1/audit?action=service_account.renamed", org)
    [event] = audit["events"]
    assert event["renamed_from"] == "deployer" and event["service_account_id"] == account["id"]


@pytest.mark.also_on_cluster
async def test_memberships_and_deletion_wait_for_active_tokens(gateway: Gateway) -> None:
    gw = gateway
    org = await setup(gw)
    await admin(gw, "POST", ACCOUNTS, org, {"name": "ci", "teams": ["platform"]})
    status, account, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/ci", org, {"add_teams": ["billing"], "owner": "ana"})
    assert status == 200 and account["teams"] == ["platform", "billing"] and account["owner"] == "ana"
    _, token = await issue(gw, org, "billing", "ci")
    status, refused, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/ci", org, {"remove_teams": ["billing"]})
    assert status == 409 and "active tokens in team 'billing' (1)" in refused["message"]
    status, refused, _ = await admin(gw, "DELETE", f"{ACCOUNTS}/ci", org)
    assert status == 409 and "active token" in refused["message"]
    status, kept, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/ci", org, {"remove_teams": ["platform"]})
    assert status == 200 and kept["teams"] == ["billing"]  # no tokens there: it may go
    status, _, _ = await admin(gw, "POST", f"{tokens_of('billing')}/{token['id']}/revoke", org)
    assert status == 200
    status, _, _ = await admin(gw, "DELETE", f"{ACCOUNTS}/ci", org)
    assert status == 204
    status, _, _ = await admin(gw, "GET", f"{ACCOUNTS}/ci", org)
    assert status == 404
    status, _ = await issue(gw, org, "billing", "ci")
    assert status == 400  # gone: no token can name it


async def test_team_admins_stay_in_their_own_team(gateway: Gateway) -> None:
    gw = gateway
    org = await setup(gw)
    mine = await team_admin(gw, org, "platform")
    # creating: its own team only
    for teams in (["billing"], ["platform", "billing"]):
        status, refused, _ = await admin(gw, "POST", ACCOUNTS, mine, {"name": "x", "teams": teams})
        assert status == 403, refused
    status, own, _ = await admin(gw, "POST", ACCOUNTS, mine, {"name": "own", "teams": ["platform"]})
    assert status == 201, own
    # ... it may describe and rename it, never add another team to it
    status, _, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/own", mine, {"description": "ours", "name": "own2"})
    assert status == 200
    status, refused, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/own2", mine, {"add_teams": ["billing"]})
    assert status == 403 and "another team" in refused["message"]
    # an account shared with a team it does not administer: no edit, no delete, no other team
    await admin(gw, "POST", ACCOUNTS, org, {"name": "shared", "teams": ["platform", "billing"]})
    await admin(gw, "POST", ACCOUNTS, org, {"name": "theirs", "teams": ["billing"]})
    for method, path, body in (
        ("PATCH", "shared", {"description": "mine now"}),
        ("PATCH", "shared", {"name": "hijacked"}),
        ("PATCH", "shared", {"owner": "me"}),
        ("PATCH", "shared", {"remove_teams": ["billing"]}),
        ("DELETE", "shared", None),
    ):
        status, refused, _ = await admin(gw, method, f"{ACCOUNTS}/{path}", mine, body)
        assert status == 403, (method, body, refused)
    # another team's account: as if it did not exist
    for method, body in (("GET", None), ("PATCH", {"add_teams": ["platform"]}), ("DELETE", None)):
        status, _, _ = await admin(gw, method, f"{ACCOUNTS}/theirs", mine, body)
        assert status == 404, method
    status, _ = await issue(gw, mine, "platform", "theirs")
    assert status == 400  # not a member of platform
    status, refused, _ = await admin(gw, "GET", f"{ACCOUNTS}?team=billing", mine)
    assert status == 403 and refused["step"] == "team"  # never silently its own (tests/test_query_scope.py)
    status, listed, _ = await admin(gw, "GET", ACCOUNTS, mine)
    assert status == 200 and sorted(a["name"] for a in listed["service_accounts"]) == ["own2", "shared"]
    # the team-level endpoints of another team stay closed to it
    status, _, _ = await admin(gw, "POST", TEAM_SAS.format(team="billing"), mine, {"name": "evil"})
    assert status == 403
    # leaving a shared account is its own team's decision
    status, left, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/shared", mine, {"remove_teams": ["platform"]})
    assert status == 200 and left["teams"] == ["billing"]
    status, _, _ = await admin(gw, "GET", f"{ACCOUNTS}/shared", org)
    assert status == 200
    status, audit, _ = await admin(gw, "GET", "/v1/audit?action=service_account.updated", org)
    assert all(e["actor_team"] == "platform" for e in audit["events"] if e["service_account"] == "shared")


async def test_team_level_endpoints_work_on_org_accounts(gateway: Gateway) -> None:
    gw = gateway
    org = await setup(gw)
    mine = await team_admin(gw, org, "platform")
    status, created, _ = await admin(gw, "POST", TEAM_SAS.format(team="platform"), mine, {"name": "ci"})
    assert status == 201 and created["team"] == "platform" and created["teams"] == ["platform"]
    status, taken, _ = await admin(gw, "POST", TEAM_SAS.format(team="billing"), org, {"name": "ci"})
    assert status == 409 and "unique in the org" in taken["message"]
    _, token = await issue(gw, mine, "platform", "ci")
    status, page, _ = await admin(gw, "GET", TEAM_SAS.format(team="platform"), mine)
    assert [(a["name"], a["active_tokens"]) for a in page["service_accounts"]] == [("ci", 1)]
    status, _, _ = await admin(gw, "DELETE", TEAM_SAS.format(team="platform") + "/ci", mine)
    assert status == 409
    # shared with billing by the org admin: the team-level delete takes platform out
    await admin(gw, "PATCH", f"{ACCOUNTS}/ci", org, {"add_teams": ["billing"]})
    await admin(gw, "POST", f"{tokens_of('platform')}/{token['id']}/revoke", mine)
    status, _, _ = await admin(gw, "DELETE", TEAM_SAS.format(team="platform") + "/ci", mine)
    assert status == 204
    status, left, _ = await admin(gw, "GET", f"{ACCOUNTS}/ci", org)
    assert status == 200 and left["teams"] == ["billing"]
    status, _, _ = await admin(gw, "DELETE", TEAM_SAS.format(team="billing") + "/ci", org)
    assert status == 204
    status, _, _ = await admin(gw, "GET", f"{ACCOUNTS}/ci", org)
    assert status == 404


async def test_accounts_from_before_are_migrated_and_keep_their_tokens(recorded: Gateway) -> None:
    """Records written by the team-level model (one account per team, tokens naming it):
    read through every endpoint, merged by name across teams, and renamed with their tokens."""
    gw = recorded
    org = await setup(gw)
    store = gw.runtime.store
    for team in ("platform", "billing"):
        await store.create_service_account(ServiceAccountRecord("acme", team, "ci", f"old {team}", 1.0, "test"))
    legacy, _ = await gw.token("platform", ["read:apis"], service_account="ci")
    status, page, _ = await admin(gw, "GET", TEAM_SAS.format(team="platform"), org)
    assert status == 200 and [(a["name"], a["active_tokens"]) for a in page["service_accounts"]] == [("ci", 1)]
    status, account, _ = await admin(gw, "GET", f"{ACCOUNTS}/ci", org)
    assert status == 200 and sorted(account["teams"]) == ["billing", "platform"]
    assert account["description"] == "old platform" and account["created_by"] == "test"
    assert await forwarded_account(gw, legacy) == "ci"
    status, _, _ = await admin(gw, "DELETE", f"{ACCOUNTS}/ci", org)
    assert status == 409  # its legacy token counts
    status, _, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/ci", org, {"name": "ci-bot"})
    assert status == 200
    assert await forwarded_account(gw, legacy) == "ci-bot"
    assert await store.get_service_account("acme", "platform", "ci") is not None  # left in place


async def test_one_name_per_org_under_concurrent_creates(gateway: Gateway) -> None:
    org = await setup(gateway)
    results = await asyncio.gather(
        *(
            admin(gateway, "POST", ACCOUNTS, org, {"name": "race", "teams": [team]})
            for team in ("platform", "billing", "other") * 4
        )
    )
    assert sorted(status for status, _, _ in results) == [201] + [409] * 11


async def test_no_token_outlives_its_membership_under_races(gateway: Gateway) -> None:
    """Issuing a token of an account in a team while that team is removed from it: over many
    trials, never an active token in a team the account is not a member of."""
    gw = gateway
    org = await setup(gw)
    stranded = 0
    for trial in range(15):
        name = f"racer-{trial}"
        await admin(gw, "POST", ACCOUNTS, org, {"name": name, "teams": ["platform", "billing"]})
        issued, removed = await asyncio.gather(
            issue(gw, org, "billing", name),
            admin(gw, "PATCH", f"{ACCOUNTS}/{name}", org, {"remove_teams": ["billing"]}),
        )
        _, account, _ = await admin(gw, "GET", f"{ACCOUNTS}/{name}", org)
        if issued[0] == 201 and "billing" not in account["teams"]:
            stranded += 1
        assert issued[0] in (201, 400, 409) and removed[0] in (200, 409)
    assert stranded == 0


async def test_no_active_token_outlives_its_account_under_races(gateway: Gateway) -> None:
    """Issuing a token of an account while the account is deleted: over many trials, never an
    active token of an account that no longer exists."""
    gw = gateway
    org = await setup(gw)
    orphans = 0
    for trial in range(15):
        name = f"doomed-{trial}"
        await admin(gw, "POST", ACCOUNTS, org, {"name": name, "teams": ["platform"]})
        issued, deleted = await asyncio.gather(
            issue(gw, org, "platform", name), admin(gw, "DELETE", f"{ACCOUNTS}/{name}", org)
        )
        assert issued[0] in (201, 400, 409) and deleted[0] in (204, 409), (issued, deleted)
        orphans += issued[0] == 201 and deleted[0] == 204
    assert orphans == 0


def test_the_account_schemas_restate_the_shared_pieces_exactly() -> None:
    from tokenward import schema, schema_accounts

    assert schema_accounts.NAME == schema.NAME and schema_accounts.TIMESTAMP == schema.TIMESTAMP
    assert schema_accounts.NEXT_CURSOR == schema.NEXT_CURSOR


async def test_the_sa_commands(gateway: Gateway) -> None:
    """`tokenward sa …` end to end: create in two teams, list org-wide, get, rename, add and
    remove teams, refusals in one line, delete."""
    import json

    from tests.helpers.process import env_for_subprocess, run_cli

    org = await setup(gateway)
    env = {**env_for_subprocess(), "TOKENWARD_ADMIN_URL": gateway.admin_url, "TOKENWARD_TOKEN": org}

    async def ok(*args: str) -> str:
        code, out, err = await run_cli(*args, env=env)
        assert code == 0, f"tokenward {' '.join(args)}: {err}"
        return out

    async def refused(*args: str) -> str:
        code, out, err = await run_cli(*args, env=env)
        assert code != 0 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (out, err)
        return err

    out = await ok(
        "sa", "create", "deployer", "--teams", "platform,billing", "--description", "CD", "--owner", "sre@acme"
    )
    assert "'deployer'" in out and "platform, billing" in out
    lines = (await ok("sa", "list")).splitlines()
    assert lines[0].split() == ["NAME", "TEAMS", "OWNER", "DESCRIPTION", "ACTIVE", "TOKENS", "CREATED"]
    assert lines[1].split()[:5] == ["deployer", "platform,billing", "sre@acme", "CD", "0"]
    code, out, err = await run_cli(
        "token", "create", "--team", "billing", "--name", "b", "--scopes", "read:apis",
        "--service-account", "deployer", "--json", env=env,
    )
    assert code == 0, err
    out = await ok("sa", "rename", "deployer", "release-bot")
    assert "name deployer → release-bot" in out
    got = json.loads(await ok("sa", "get", "release-bot", "--json"))
    assert got["former_names"] == ["deployer"] and got["active_tokens"] == 1
    assert "Former names:  deployer" in await ok("sa", "get", got["id"])
    out = await ok("sa", "add-team", "release-bot", "other")
    assert "teams platform, billing → platform, billing, other" in out
    assert "409" in await refused("sa", "remove-team", "release-bot", "billing")
    out = await ok("sa", "update", "release-bot", "--remove-teams", "platform,other", "--owner", "ana")
    assert "owner sre@acme → ana" in out and "→ billing" in out
    assert "nothing to update" in await refused("sa", "update", "release-bot")
    assert "409" in await refused("sa", "delete", "release-bot")
    listed = json.loads(await ok("sa", "list", "--team", "billing", "--json"))["service_accounts"]
    assert [(a["name"], a["active_tokens"]) for a in listed] == [("release-bot", 1)]
    events = json.loads(await ok("audit", "--service-account", "deployer", "--json"))["events"]
    assert {"service_account.created", "service_account.renamed", "token.created"} <= {e["action"] for e in events}


async def test_the_demo_issues_its_token_for_a_service_account(tmp_path: Any) -> None:
    """`demo --once`, twice on the same data dir (the account is there the second time)."""
    from tests.helpers.process import run_cli
    from tokenward.gateway.embedded import free_port

    for _ in range(2):
        ports = [str(free_port()) for _ in range(3)]
        code, out, err = await run_cli(
            "demo", "--once", "--data-dir", str(tmp_path / "demo"), "--port", ports[0],
            "--admin-port", ports[1], "--upstream-port", ports[2], timeout=90,
        )
        assert code == 0, err
        assert "service account ci-pipeline" in out and "tokenward sa list" in out


async def test_a_rename_reaches_every_gateway_process(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Any
) -> None:
    """Two gateways on one store: the one that did not make the rename drops its cached
    account on the change channel, and forwards the new name."""
    first = await start_gateway(base_config(recorder.port))
    second = await start_gateway(base_config(recorder.port))
    org = await setup(first)
    await admin(first, "POST", ACCOUNTS, org, {"name": "deployer", "teams": ["platform"]})
    _, token = await issue(first, org, "platform", "deployer")
    assert await forwarded_account(second, token["token"]) == "deployer"  # cached there now
    status, _, _ = await admin(first, "PATCH", f"{ACCOUNTS}/deployer", org, {"name": "shipper"})
    assert status == 200
    seen = None
    for _ in range(200):  # the channel's bound is 50 ms; this only waits for it, at most 10 s
        seen = await forwarded_account(second, token["token"])
        if seen == "shipper":
            break
        await asyncio.sleep(0.05)
    assert seen == "shipper"


async def test_a_new_account_never_takes_the_name_of_an_unmigrated_one(gateway: Gateway) -> None:
    """A legacy account of team platform, not yet read by anyone: creating or renaming to its
    name elsewhere is refused (it is migrated first), never merged into the new account."""
    org = await setup(gateway)
    await gateway.runtime.store.create_service_account(
        ServiceAccountRecord("acme", "platform", "ci", "", 1.0, "test")
    )
    status, _, _ = await admin(gateway, "POST", ACCOUNTS, org, {"name": "ci", "teams": ["billing"]})
    assert status == 409
    status, _, _ = await admin(gateway, "POST", ACCOUNTS, org, {"name": "other-ci", "teams": ["billing"]})
    assert status == 201
    status, _, _ = await admin(gateway, "PATCH", f"{ACCOUNTS}/other-ci", org, {"name": "ci"})
    assert status == 409
    status, account, _ = await admin(gateway, "GET", f"{ACCOUNTS}/ci", org)
    assert account["teams"] == ["platform"]
