"""The admin API's token endpoints: each declares who may call it and what body it takes, and
hands the token service (`tokenward.service`) plain values."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tokenward import metadata, schema
from tokenward.accounts import account_filter, account_names
from tokenward.delegate import with_ended_children
from tokenward.endpoints import REPEATABLE, Body, Call, Routes, api_error
from tokenward.gateway.environments import LIVE, environment_field
from tokenward.gateway.records import ACTIVE, EXPIRED, REVOKED, TeamRecord, TokenRecord
from tokenward.permissions import team_admin
from tokenward.rules import Lifetime, iso, lifetime_field, refuse_fixed_fields, within_constraints
from tokenward.service import ANY_TEAM, TeamSel
from tokenward.token_limits import limits_field, remaining
from tokenward.views import (
    GRACE,
    PAGE_CHUNK,
    PAGE_QUERY,
    VIEW_SLICE,
    bulk_work,
    encode_cursor,
    page_limit,
    page_response,
    shown_status,
    token_cursor,
    token_response,
    token_view,
)

routes = Routes("tokens")
PAGE_SCAN_BUDGET = 1000  # index rows a filtered page examines
_STATUSES = (ACTIVE, GRACE, REVOKED, EXPIRED)
TOKEN = "/v1/orgs/{org}/teams/{team}/tokens/{id}"  # noqa: S105 - a path, not a secret


def lifetime(body: dict[str, Any]) -> Lifetime:
    return Lifetime(body.get("expires_in"), body.get("expires_at"))


def token_team(call: Call) -> TeamSel:
    """The team in the path; on the org-wide paths (`/v1/orgs/{org}/tokens/{id}`, org admins
    only) any team of the org, or the org level."""
    team: str | None = call.request.match_info.get("team")
    return ANY_TEAM if team is None else team


@routes(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens",
    "Issue a token",
    permission=team_admin,
    body=Body(schema.TOKEN_CREATE),
    responses={201: schema.TOKEN_CREATED, 400: schema.ERROR, 403: schema.ERROR, 404: schema.ERROR},
)
async def create_token(call: Call) -> web.Response:
    """Issue a token of the team with scopes within the team's permissions (and the caller's),
    an expiry within the policy (tokens.max_ttl), optionally a service account, constraints
    and client networks. The plaintext `token` is in this response only: it is never stored.
    Location names the new token."""
    body = call.body
    plaintext, record = await call.tokens.issue(
        call.actor,
        org=call.param("org"),
        team=call.param("team"),
        name=body["name"],
        description=body.get("description", ""),
        scopes=body["scopes"],
        lifetime=lifetime(body),
        service_account=body.get("service_account"),
        constraints=body.get("constraints") or {},
        allowed_cidrs=body.get("allowed_cidrs", []),
        environment=body.get("environment", LIVE),
        metadata=body.get("metadata"),
        limits=limits_field(body),
    )
    return await token_response(call, record, 201, token=plaintext)


@routes(
    "GET",
    "/v1/orgs/{org}/teams/{team}/tokens",
    "List tokens",
    permission=team_admin,
    responses={200: schema.TOKEN_LIST, 400: schema.ERROR, 404: schema.ERROR},
    query=(
        ("status", "string"),
        ("expiring_within", "string"),
        ("service_account", "string"),
        ("environment", "string"),
        ("metadata", REPEATABLE),
        *PAGE_QUERY,
    ),
)
async def list_tokens(call: Call) -> web.Response:
    """List a team's tokens, oldest first, one page at a time (never a hash or secret); deleted
    tokens are gone, revoked and expired ones stay with their status. With a status,
    expiring_within or metadata filter a page examines at most 1000 tokens and may hold fewer
    than `limit` rows: follow `next` until it is null. `metadata=KEY=VALUE` (repeatable, all
    must match) keeps the tokens whose metadata holds that exact value."""
    org, team_name = call.param("org"), call.param("team")
    wanted, filtered, sa = token_filter(call)
    limit, position = page_limit(call), token_cursor(call)
    team = await call.tokens.team(org, team_name)
    async with bulk_work(call):
        if sa is not None:  # its tokens come from the account's index (all its teams): filter
            account = await account_filter(call.runtime, org, team_name, sa)
            wanted, filtered, sa = account.wanted(wanted), True, account.id
        rows, position, more = await _token_page(call, team, position, limit, filtered, wanted, sa)
    next_cursor = encode_cursor("t", repr(position[0]), position[1]) if more and position else None
    return page_response("tokens", rows, next_cursor)


def environment_query(call: Call) -> str | None:
    """`?environment=live|test`: only the tokens of that environment."""
    value = call.query.get("environment")
    try:
        return None if value is None else environment_field(value)
    except ValueError as exc:
        raise api_error(400, "invalid_request", str(exc), "environment") from None


def token_filter(call: Call) -> tuple[Callable[[TokenRecord], bool], bool, str | None]:
    """The list's filter from the query: (keeps a token, filters at all, service account)."""
    status = call.query.get("status")
    if status is not None and status not in _STATUSES:
        raise api_error(400, "invalid_request", f"status: expected one of {', '.join(_STATUSES)}", "status")
    within: float | None = None
    if "expiring_within" in call.query:
        within = lifetime_field(call.query["expiring_within"], "expiring_within")  # `14`: days
    sa = call.query.get("service_account")
    if sa is not None and not re.fullmatch(schema.SLUG, sa):
        raise api_error(400, "invalid_request", "service_account: not a service account name (lower-case letters, digits and '-')", "service_account")
    environment = environment_query(call)
    notes = metadata_query(call)
    principal = call.caller
    now = time.time()

    def wanted(token: TokenRecord) -> bool:
        if not within_constraints(principal, token):
            return False  # a constrained admin sees only the tokens it can reach
        if status is not None and shown_status(token, now) != status:
            return False
        if within is not None and (
            token.status(now) != ACTIVE or token.expires_at is None or token.expires_at > now + within
        ):
            return False
        if environment is not None and token.environment != environment:
            return False
        return not notes or metadata.matches(token.metadata, notes)  # a service account: see account_filter

    filtered = status is not None or within is not None or environment is not None or bool(notes)
    return wanted, filtered or bool(principal.token.constraints), sa


def metadata_query(call: Call) -> tuple[tuple[str, str], ...]:
    """The `metadata=KEY=VALUE` filters of a list (Invalid, a 400, with an example)."""
    return metadata.metadata_filters(call.query.getall("metadata", ()))


async def _token_page(
    call: Call,
    team: TeamRecord,
    position: tuple[float, str] | None,
    limit: int,
    filtered: bool,
    wanted: Callable[[TokenRecord], bool],
    sa: str | None,
) -> tuple[list[dict[str, Any]], tuple[float, str] | None, bool]:
    """A page of the team's index (see `token_page`)."""
    return await token_page(call, team.org, team.name, position, limit, filtered, wanted, sa, {team.name: team})


async def token_page(
    call: Call,
    org: str,
    team: TeamSel,
    position: tuple[float, str] | None,
    limit: int,
    filtered: bool,
    wanted: Callable[[TokenRecord], bool],
    account_id: str | None,
    teams: dict[str | None, TeamRecord | None],
) -> tuple[list[dict[str, Any]], tuple[float, str] | None, bool]:
    """Up to `limit` rows after `position` that `wanted` keeps, reading at most
    max(PAGE_SCAN_BUDGET, limit) index rows in chunks; the last row examined; more follow.
    `team`: a team's index (ANY_TEAM: the org's index of every token); `teams`: the team
    records known so far (the views show effective scopes), filled as rows need them;
    `account_id`: a service account's index instead (its tokens in all its teams)."""
    store = call.runtime.store
    rows: list[dict[str, Any]] = []
    scanned, more = 0, True
    budget = max(PAGE_SCAN_BUDGET, limit)
    org_wide = team is ANY_TEAM
    index_team = team if isinstance(team, str) else None
    # a service account's tokens come from its own index: that filter costs no scanning
    while more and len(rows) < limit and scanned < budget:
        want = min(PAGE_CHUNK, budget - scanned if filtered else limit - len(rows))
        page = await store.token_index_page(org, index_team, position, want, account_id=account_id, all_org=org_wide)
        found = {t.id: (t, used) for t, used in await store.get_tokens_with_usage([m for m, _ in page.rows])}
        found = await with_ended_children(store, found)  # a child ends with its ancestors (delegate.py)
        names = await account_names(store, org, [t for t, _ in found.values()])
        more = page.more
        for i, (member, score) in enumerate(page.rows):
            position, scanned = (score, member), scanned + 1
            hit = found.get(member)
            if hit is not None and wanted(hit[0]):
                token = hit[0]
                if token.team is not None and token.team not in teams:
                    teams[token.team] = await store.get_team(org, token.team)
                rows.append(token_view(token, teams.get(token.team), hit[1], names.get(token.service_account_id or "")))
                if token.max_uses is not None:
                    rows[-1]["remaining"] = await remaining(store, token)
                if len(rows) >= limit:
                    more = more or i < len(page.rows) - 1
                    break
                if len(rows) % VIEW_SLICE == 0:
                    await asyncio.sleep(0)  # let requests waiting on the loop run
    return rows, position, more


@routes(
    "GET", TOKEN, "Get a token", permission=team_admin, responses={200: schema.TOKEN, 404: schema.ERROR}
)
async def get_token(call: Call) -> web.Response:
    """A token of the team with its status, effective scopes and last use (never its secret)."""
    record = await call.tokens.token_in_team(call.param("org"), token_team(call), call.param("id"))
    return await token_response(call, record)


@routes(
    "PATCH",
    TOKEN,
    "Change a token's name or metadata",
    permission=team_admin,
    body=Body(schema.TOKEN_UPDATE, check=refuse_fixed_fields),
    responses={200: schema.TOKEN, 400: schema.ERROR, 404: schema.ERROR},
)
async def update_token(call: Call) -> web.Response:
    """Change a token's name, description or metadata (`metadata` replaces the whole object;
    `{}` clears it). Scopes, constraints and expiry are fixed at issuance (a body naming one
    is refused): rotate instead."""
    body = call.body
    record = await call.tokens.update(
        call.actor,
        call.param("org"),
        token_team(call),
        call.param("id"),
        name=body.get("name"),
        description=body.get("description"),
        metadata=body.get("metadata"),
    )
    return await token_response(call, record)


@routes(
    "POST",
    TOKEN + "/revoke",
    "Revoke a token",
    permission=team_admin,
    body=Body(schema.TOKEN_REVOKE, optional=True),
    responses={200: schema.TOKEN, 404: schema.ERROR},
)
async def revoke_token(call: Call) -> web.Response:
    """Revoke a token: its next request fails with 401. Optional body `{"reason": "..."}`; the
    revocation records who made it and at which level (org or team admin)."""
    reason = call.body.get("reason")
    record = await call.tokens.revoke(
        call.actor, call.param("org"), token_team(call), call.param("id"), reason
    )
    return await token_response(call, record)


@routes(
    "POST",
    TOKEN + "/restore",
    "Restore a revoked token",
    permission=team_admin,
    responses={200: schema.TOKEN, 403: schema.ERROR, 404: schema.ERROR, 409: schema.ERROR},
)
async def restore_token(call: Call) -> web.Response:
    """Restore a revoked token that has not expired; only an admin at least as privileged as the
    revoker may (a team admin cannot undo an org admin's revocation); leaked and rotated tokens
    never come back (409)."""
    record = await call.tokens.restore(call.actor, call.param("org"), token_team(call), call.param("id"))
    return await token_response(call, record)


@routes(
    "DELETE",
    TOKEN,
    "Delete a token",
    permission=team_admin,
    responses={204: None, 404: schema.ERROR, 409: schema.ERROR},
)
async def delete_token(call: Call) -> web.Response:
    """Delete a revoked or expired token (409 while it is active: revoke it first)."""
    await call.tokens.delete(call.actor, call.param("org"), token_team(call), call.param("id"))
    return call.no_content()


@routes(
    "POST",
    TOKEN + "/rotate",
    "Rotate a token",
    permission=team_admin,
    body=Body(schema.TOKEN_ROTATE, optional=True),
    responses={201: schema.TOKEN_ROTATED, 404: schema.ERROR, 409: schema.ERROR},
)
async def rotate_token(call: Call) -> web.Response:
    """Issue a replacement with the same name, description, scopes, constraints, CIDRs and
    service account; the old token is revoked now, or after grace_period. Atomic: the
    replacement exists only if the old token was active and not already rotated when it was
    retired. Location names the replacement."""
    org, team, key_id = call.param("org"), token_team(call), call.param("id")
    grace = call.body.get("grace_period")
    rotated = await call.tokens.rotate(call.actor, org, team, key_id, lifetime(call.body), grace)
    return await token_response(
        call,
        rotated.record,
        201,
        token=rotated.plaintext,
        replaces=rotated.retired.id,
        replaced_revoked_at=iso(rotated.retired.revoked_at),
        warnings=list(rotated.warnings),
    )
