"""The admin API's org-level service-account endpoints (their changes: `tokenward.accounts`).

`/v1/orgs/{org}/service-accounts`: an org admin manages every account of the org; a team admin
(unconstrained) sees the accounts its team is a member of and changes only those of its team
alone (see `Accounts` for the rules). The team-level endpoints (`api_teams`) act on the same
accounts.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokenward import schema, schema_accounts
from tokenward.accounts import Accounts
from tokenward.endpoints import Body, Call, Routes, json_response
from tokenward.gateway.records import AccountRecord
from tokenward.permissions import team_lister
from tokenward.rules import iso
from tokenward.views import PAGE_QUERY, bulk_work, name_cursor, next_name, page_limit, page_response

routes = Routes("service accounts")
ACCOUNTS = "/v1/orgs/{org}/service-accounts"
ACCOUNT = ACCOUNTS + "/{account}"


def account_view(account: AccountRecord, active: int | None = None, exact: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": account.id,
        "org": account.org,
        "name": account.name,
        "description": account.description,
        "owner": account.owner,
        "teams": list(account.teams),
        "former_names": list(account.former_names),
        "created_at": iso(account.created_at),
        "created_by": account.created_by,
        "updated_at": iso(account.updated_at),
        "updated_by": account.updated_by,
        "rate_limits": [limit.to_json() for limit in account.rate_limits],
    }
    if active is not None:
        view.update(active_tokens=active, active_tokens_exact=exact)
    return view


async def counted(accounts: Accounts, account: AccountRecord, team: str | None = None) -> dict[str, Any]:
    active, exact = await accounts.active_tokens(account, team)
    return account_view(account, active, exact)


@routes(
    "POST",
    ACCOUNTS,
    "Create an org-level service account",
    permission=team_lister,
    body=Body(schema_accounts.ACCOUNT_CREATE),
    responses={201: schema_accounts.ACCOUNT, 400: schema.ERROR, 403: schema.ERROR, 409: schema.ERROR},
)
async def create_account(call: Call) -> web.Response:
    """Create a service account with memberships in `teams` (its tokens are each bound to one of
    them), a description and an owner. Names are unique in the org (409). A team admin creates
    accounts of its own team only."""
    body, org = call.body, call.param("org")
    account = await Accounts(call.runtime).create(
        call.actor,
        org,
        body["name"],
        description=body.get("description", ""),
        owner=body.get("owner", ""),
        teams=body["teams"],
    )
    where = ACCOUNTS.replace("{org}", org)
    return json_response(account_view(account, 0), 201, Location=f"{where}/{account.name}")


@routes(
    "GET",
    ACCOUNTS,
    "List org-level service accounts",
    permission=team_lister,
    responses={200: schema_accounts.ACCOUNT_LIST, 400: schema.ERROR},
    query=(("team", "string"), *PAGE_QUERY),
)
async def list_accounts(call: Call) -> web.Response:
    """The org's service accounts in name order, one page at a time, with their active token
    counts (exact up to 1000 tokens examined per account); `team`: only that team's members. A
    team admin sees its own team's members."""
    org, accounts = call.param("org"), Accounts(call.runtime)
    own = call.caller.token.team
    team = own if own is not None else call.query.get("team")
    limit, after = page_limit(call), name_cursor(call)
    rows = []
    async with bulk_work(call):
        await accounts.migrate_org(org, team)
        names, found, more = await call.runtime.store.account_page(org, team, after, limit)
        for account in found:
            rows.append(await counted(accounts, account))
    return page_response("service_accounts", rows, next_name(names, more))


@routes(
    "GET",
    ACCOUNT,
    "Get an org-level service account",
    permission=team_lister,
    responses={200: schema_accounts.ACCOUNT, 404: schema.ERROR},
)
async def get_account(call: Call) -> web.Response:
    """One account by name or id, with its teams, former names and active token count."""
    org, accounts = call.param("org"), Accounts(call.runtime)
    await accounts.migrate_org(org, call.caller.token.team)
    account = await accounts.visible(call.actor, org, call.param("account"))
    async with bulk_work(call):
        return json_response(await counted(accounts, account))


@routes(
    "PATCH",
    ACCOUNT,
    "Update an org-level service account",
    permission=team_lister,
    body=Body(schema_accounts.ACCOUNT_UPDATE),
    responses={200: schema_accounts.ACCOUNT, 400: schema.ERROR, 403: schema.ERROR, 404: schema.ERROR, 409: schema.ERROR},
)
async def update_account(call: Call) -> web.Response:
    """Rename (the id stays: its tokens, identity headers and audit history follow the new
    name), re-describe, change the owner, add or remove teams in one atomic change. Removing a
    team that still has active tokens of the account is refused (409)."""
    org, body, accounts = call.param("org"), call.body, Accounts(call.runtime)
    await accounts.migrate_org(org, call.caller.token.team)
    async with bulk_work(call):  # a removed team's active tokens are counted
        account = await accounts.update(
            call.actor,
            org,
            call.param("account"),
            name=body.get("name"),
            description=body.get("description"),
            owner=body.get("owner"),
            add_teams=body.get("add_teams", ()),
            remove_teams=body.get("remove_teams", ()),
        )
        return json_response(await counted(accounts, account))


@routes(
    "DELETE",
    ACCOUNT,
    "Delete an org-level service account",
    permission=team_lister,
    responses={204: None, 403: schema.ERROR, 404: schema.ERROR, 409: schema.ERROR},
)
async def delete_account(call: Call) -> web.Response:
    """Delete an account that has no active tokens (409 otherwise: revoke them first)."""
    org, accounts = call.param("org"), Accounts(call.runtime)
    await accounts.migrate_org(org, call.caller.token.team)
    async with bulk_work(call):
        await accounts.delete(call.actor, org, call.param("account"))
    return call.no_content()
