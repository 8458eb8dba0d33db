"""What an admin endpoint requires of its caller, declared with `@routes(permission=...)` and
enforced by `endpoints.serve` before the handler runs. Each one is the gateway's steps
(`tokenward.rules.require_*` over `tokenward.gateway.decision`) applied to the path."""

from __future__ import annotations

from tokenward.endpoints import Call, Permission
from tokenward.gateway.decision import require_org
from tokenward.rules import (
    is_key_id,
    require_any_admin,
    require_org_admin,
    require_team_admin,
    require_unconstrained,
    require_within_constraints,
)


async def authenticated(call: Call) -> None:
    """Any valid token (whoami)."""


async def org_admin(call: Call) -> None:
    """An org admin of the org in the path."""
    require_org_admin(call.caller, call.param("org"))


async def team_admin(call: Call) -> None:
    """An admin of the team in the path (its org's admin, or its own team admin) and, for a
    constrained caller, of the token in the path (see `require_within_constraints`)."""
    principal = call.caller
    org, team = call.param("org"), call.param("team")
    require_team_admin(principal, org, team)
    key_id = call.request.match_info.get("id")
    if principal.token.constraints and key_id is not None and is_key_id(key_id):
        # constraints are fixed at issuance, so this read cannot race with the handler's
        record = await call.runtime.store.get_token(key_id)
        if record is not None and record.org == org and record.team == team:
            require_within_constraints(principal, record)


def team_wide(what: str) -> Permission:
    """A team admin acting on something of the whole team (`what`): no constrained token."""

    async def check(call: Call) -> None:
        await team_admin(call)
        require_unconstrained(call.caller, what)

    check.__doc__ = f"An unconstrained admin of the team in the path ({what})."
    return check


async def team_lister(call: Call) -> None:
    """An org admin of the org in the path; a team token of that org: its own team's admin."""
    principal, org = call.caller, call.param("org")
    if principal.token.team is not None and principal.token.org == org:
        require_team_admin(principal, org, principal.token.team)
        require_unconstrained(principal, "teams")
    else:
        require_org_admin(principal, org)


def audit_team(call: Call) -> str | None:
    """The team whose audit events a caller reads: a team token's own unless it names one."""
    team = call.query.get("team")
    own = call.caller.token.team
    return (team or own) if own is not None else team


async def audit_reader(call: Call) -> None:
    """An org admin of its own org; a team admin (unconstrained) of the team it reads. An
    `org` query parameter, if given, must be the caller's own org (403 otherwise)."""
    principal = call.caller
    if "org" in call.query:
        require_org(principal, call.query["org"])
    team = audit_team(call)
    if principal.token.team is not None:
        assert team is not None
        require_team_admin(principal, principal.token.org, team)
        require_unconstrained(principal, "audit events")
    else:
        require_org_admin(principal, principal.token.org)


async def any_admin(call: Call) -> None:
    """Any org or team admin token, whatever its org (leak reports)."""
    require_any_admin(call.caller)


async def org_token_admin(call: Call) -> None:
    """The org-wide token paths (`/v1/orgs/{org}/tokens[/{id}]`): an org admin of the org in
    the path only (a team admin is refused with 403 even for its own team's tokens: it has the
    team paths); a constrained one reaches only tokens pinned to its constraints."""
    principal = call.caller
    require_org_admin(principal, call.param("org"))
    key_id = call.request.match_info.get("id")
    if principal.token.constraints and key_id is not None and is_key_id(key_id):
        record = await call.runtime.store.get_token(key_id)
        if record is not None and record.org == call.param("org"):
            require_within_constraints(principal, record)
