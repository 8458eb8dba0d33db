"""The admin API's team and service-account endpoints (their changes: `tokenward.directory`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokenward import schema
from tokenward.accounts import Accounts
from tokenward.api_accounts import account_view
from tokenward.endpoints import Body, Call, Routes, json_response
from tokenward.gateway.records import AccountRecord
from tokenward.permissions import org_admin, team_lister, team_wide
from tokenward.views import (
    PAGE_QUERY,
    bulk_work,
    name_cursor,
    next_name,
    page_limit,
    page_response,
    team_view,
)

routes = Routes("teams")
TEAMS = "/v1/orgs/{org}/teams"
SERVICE_ACCOUNTS = "/v1/orgs/{org}/teams/{team}/service-accounts"


@routes(
    "POST",
    TEAMS,
    "Create a team",
    permission=org_admin,
    body=Body(schema.TEAM_CREATE),
    responses={201: schema.TEAM, 409: schema.ERROR},
)
async def create_team(call: Call) -> web.Response:
    """Create a team of the org with a permission set: the scopes its tokens may hold (org
    admins only; 409 when the name is taken). Location names the new team."""
    body = call.body
    team = await call.directory.create_team(call.actor, call.param("org"), body["name"], body["permissions"])
    return json_response(team_view(team), 201, Location=f"{TEAMS.replace('{org}', team.org)}/{team.name}")


@routes(
    "GET",
    TEAMS,
    "List teams",
    permission=team_lister,
    responses={200: schema.TEAM_LIST, 400: schema.ERROR},
    query=PAGE_QUERY,
)
async def list_teams(call: Call) -> web.Response:
    """List the teams of an org in name order, one page at a time (a team admin sees its own)."""
    org, own = call.param("org"), call.caller.token
    limit, after = page_limit(call), name_cursor(call)
    store = call.runtime.store
    if own.team is not None:  # a team admin of this org (team_lister): its own team only
        team = await store.get_team(org, own.team)
        mine = [team] if team and (after is None or team.name > after) else []
        return page_response("teams", [team_view(t) for t in mine], None)
    names, teams, more = await store.team_page(org, after, limit)
    return page_response("teams", [team_view(t) for t in teams], next_name(names, more))


@routes(
    "GET",
    TEAMS + "/{team}",
    "Get a team",
    permission=team_wide("teams"),
    responses={200: schema.TEAM, 404: schema.ERROR},
)
async def get_team(call: Call) -> web.Response:
    """A team and its permission set (an org admin, or an admin of that team)."""
    return json_response(team_view(await call.directory.team(call.param("org"), call.param("team"))))


@routes(
    "PUT",
    TEAMS + "/{team}/permissions",
    "Replace a team's permissions",
    permission=org_admin,
    body=Body(schema.TEAM_PERMISSIONS),
    responses={200: schema.TEAM, 404: schema.ERROR},
)
async def set_team_permissions(call: Call) -> web.Response:
    """Replace a team's permission set (org admins only); it takes effect on the team's tokens'
    next request: a scope the team no longer holds is no longer effective."""
    org, team, permissions = call.param("org"), call.param("team"), call.body["permissions"]
    return json_response(team_view(await call.directory.set_permissions(call.actor, org, team, permissions)))


def team_sa_view(account: AccountRecord, team: str, active: int, exact: bool = True) -> dict[str, Any]:
    """An org-level account as the team-level endpoints show it (their fields, and the new)."""
    return {**account_view(account, active, exact), "team": team}


@routes(
    "POST",
    SERVICE_ACCOUNTS,
    "Create a service account",
    permission=team_wide("service accounts"),
    body=Body(schema.SA_CREATE),
    responses={201: schema.SERVICE_ACCOUNT, 404: schema.ERROR, 409: schema.ERROR},
    tag="service accounts",
)
async def create_service_account(call: Call) -> web.Response:
    """Create a service account that is a member of this team (an org-level account: see
    /v1/orgs/{org}/service-accounts); names are unique in the org (409 when taken). Location
    names it."""
    org, team, body = call.param("org"), call.param("team"), call.body
    await call.directory.team(org, team)
    account = await Accounts(call.runtime).create(
        call.actor, org, body["name"], description=body.get("description", ""), owner="", teams=[team]
    )
    where = SERVICE_ACCOUNTS.replace("{org}", org).replace("{team}", team)
    return json_response(team_sa_view(account, team, 0), 201, Location=f"{where}/{account.name}")


@routes(
    "GET",
    SERVICE_ACCOUNTS,
    "List service accounts",
    permission=team_wide("service accounts"),
    responses={200: schema.SA_LIST, 400: schema.ERROR, 404: schema.ERROR},
    query=PAGE_QUERY,
    tag="service accounts",
)
async def list_service_accounts(call: Call) -> web.Response:
    """List the service accounts that are members of a team in name order, one page at a time,
    with their active token counts in this team (exact up to 1000 tokens examined per account;
    active_tokens_exact says)."""
    org, team, accounts = call.param("org"), call.param("team"), Accounts(call.runtime)
    limit, after = page_limit(call), name_cursor(call)
    await call.directory.team(org, team)
    rows = []
    async with bulk_work(call):
        await accounts.migrate_team(org, team)
        names, found, more = await call.runtime.store.account_page(org, team, after, limit)
        for account in found:
            active, exact = await accounts.active_tokens(account, team)
            rows.append(team_sa_view(account, team, active, exact))
    return page_response("service_accounts", rows, next_name(names, more))


@routes(
    "DELETE",
    SERVICE_ACCOUNTS + "/{name}",
    "Delete a service account",
    permission=team_wide("service accounts"),
    responses={204: None, 404: schema.ERROR, 409: schema.ERROR},
    tag="service accounts",
)
async def delete_service_account(call: Call) -> web.Response:
    """Delete a service account of this team alone that has no active tokens; one shared with
    other teams leaves this team (no active tokens of it in this team). 409 otherwise."""
    async with bulk_work(call):  # its active tokens are counted: bulk work
        await Accounts(call.runtime).leave_or_delete(
            call.actor, call.param("org"), call.param("team"), call.param("name")
        )
    return call.no_content()
