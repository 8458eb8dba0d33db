"""The org-wide token endpoints: every token of an org (team tokens and org-level tokens,
such as the bootstrap org admin) listed, shown and changed by id without naming its team.

Org admins only (`permissions.org_token_admin`): a team admin gets 403 here and keeps the
team paths (`/v1/orgs/{org}/teams/{team}/tokens`), which these share their rules with; the
handlers are the team paths' own (`api_tokens`), with the team taken as "any team of the
org" (`service.ANY_TEAM`). Key ids are unique, so an id names one token of the org.
"""

from __future__ import annotations

import re

from aiohttp import web

from tokenward import api_tokens, schema
from tokenward.accounts import account_filter
from tokenward.endpoints import Body, Call, Routes, api_error
from tokenward.gateway.records import TeamRecord
from tokenward.permissions import org_token_admin
from tokenward.rules import refuse_fixed_fields
from tokenward.service import ANY_TEAM, TeamSel
from tokenward.views import bulk_work, encode_cursor, page_limit, page_response, token_cursor

routes = Routes("tokens")
ORG_TOKENS = "/v1/orgs/{org}/tokens"
ORG_TOKEN = ORG_TOKENS + "/{id}"
_ERRORS = {400: schema.ERROR, 403: schema.ERROR, 404: schema.ERROR}


def team_list_query() -> tuple[tuple[str, str], ...]:
    """The team list's query parameters (its filters, read by `api_tokens.token_filter`, and
    paging), as it declares them: a filter added there is taken here too."""
    [team_list] = [ep for ep in api_tokens.routes.endpoints if ep.handler is api_tokens.list_tokens]
    return team_list.query


@routes(
    "GET",
    ORG_TOKENS,
    "List every token of the org",
    permission=org_token_admin,
    responses={200: schema.TOKEN_LIST, **_ERRORS},
    query=(("team", "string"), *team_list_query()),
)
async def list_org_tokens(call: Call) -> web.Response:
    """Every token of the org, team tokens and org-level tokens (`team` null), oldest first,
    one page at a time, with the team list's filters plus `team` (only that team's tokens);
    `expiring_within` spans the whole org. With a filter a page examines at most 1000 tokens
    and may hold fewer than `limit` rows: follow `next` until it is null."""
    org = call.param("org")
    wanted, filtered, sa = api_tokens.token_filter(call)
    team_name = call.query.get("team")
    limit, position = page_limit(call), token_cursor(call)
    teams: dict[str | None, TeamRecord | None] = {}
    where: TeamSel = ANY_TEAM
    if team_name is not None:
        if not re.fullmatch(schema.SLUG, team_name):
            raise api_error(400, "invalid_request", "team: not a team name (lower-case letters, digits and '-')", "team")
        teams[team_name] = await call.tokens.team(org, team_name)  # 404 if it does not exist
        where = team_name
    async with bulk_work(call):
        account_id = None
        if sa is not None:  # its tokens come from the account's index (all its teams): filter
            account = await account_filter(call.runtime, org, team_name, sa)
            wanted, filtered, account_id = account.wanted(wanted), True, account.id
        rows, position, more = await api_tokens.token_page(
            call, org, where, position, limit, filtered, wanted, account_id, teams
        )
    next_cursor = encode_cursor("t", repr(position[0]), position[1]) if more and position else None
    return page_response("tokens", rows, next_cursor)


@routes(
    "GET",
    ORG_TOKEN,
    "Get any token of the org",
    permission=org_token_admin,
    responses={200: schema.TOKEN, **_ERRORS},
)
async def get_org_token(call: Call) -> web.StreamResponse:
    """A token of the org by id, whatever its team (or an org-level token), with its status,
    effective scopes and last use (never its secret)."""
    return await api_tokens.get_token(call)


@routes(
    "PATCH",
    ORG_TOKEN,
    "Rename a token of the org by id",
    permission=org_token_admin,
    body=Body(schema.TOKEN_UPDATE, check=refuse_fixed_fields),
    responses={200: schema.TOKEN, **_ERRORS},
)
async def update_org_token(call: Call) -> web.StreamResponse:
    """Change the name or description of a token of the org by id (scopes, constraints and
    expiry are fixed at issuance: rotate instead)."""
    return await api_tokens.update_token(call)


@routes(
    "POST",
    ORG_TOKEN + "/revoke",
    "Revoke any token of the org",
    permission=org_token_admin,
    body=Body(schema.TOKEN_REVOKE, optional=True),
    responses={200: schema.TOKEN, **_ERRORS},
)
async def revoke_org_token(call: Call) -> web.StreamResponse:
    """Revoke a token of the org by id, an org-level one too (a bootstrap org admin's token
    is revoked like any other). Optional body `{"reason": "..."}`."""
    return await api_tokens.revoke_token(call)


@routes(
    "POST",
    ORG_TOKEN + "/restore",
    "Restore any revoked token of the org",
    permission=org_token_admin,
    responses={200: schema.TOKEN, **_ERRORS, 409: schema.ERROR},
)
async def restore_org_token(call: Call) -> web.StreamResponse:
    """Restore a revoked, unexpired token of the org by id; leaked and rotated tokens never
    come back (409)."""
    return await api_tokens.restore_token(call)


@routes(
    "DELETE",
    ORG_TOKEN,
    "Delete a token of the org by id",
    permission=org_token_admin,
    responses={204: None, **_ERRORS, 409: schema.ERROR},
)
async def delete_org_token(call: Call) -> web.StreamResponse:
    """Delete a revoked or expired token of the org by id (409 while it is active)."""
    return await api_tokens.delete_token(call)


@routes(
    "POST",
    ORG_TOKEN + "/rotate",
    "Rotate any token of the org",
    permission=org_token_admin,
    body=Body(schema.TOKEN_ROTATE, optional=True),
    responses={201: schema.TOKEN_ROTATED, **_ERRORS, 409: schema.ERROR},
)
async def rotate_org_token(call: Call) -> web.StreamResponse:
    """Rotate a token of the org by id, an org-level one too: the replacement keeps its team,
    name, scopes, constraints and CIDRs, and its lifetime length unless `expires_in` or
    `expires_at` is given (see the team path's rotate)."""
    return await api_tokens.rotate_token(call)
