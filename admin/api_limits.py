"""Rate limits on a team and on an org-level service account: shared by all their tokens
together (gateway/limiter.py). Org admins replace the whole list, as a team's permissions
are replaced; `[]` removes them. Each change is audited and reaches the gateways through the
change feed (their caches drop the record, the next request reads the new limits)."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from tokenward import schema, schema_accounts
from tokenward.accounts import WRITE_ATTEMPTS, Accounts
from tokenward.actor import Actor, Changes
from tokenward.api_accounts import ACCOUNT, counted
from tokenward.endpoints import Body, Call, Routes, json_response
from tokenward.gateway.limits import LimitError, RateLimit, parse_rate_limits
from tokenward.gateway.records import AccountRecord, TeamRecord
from tokenward.gateway.store_accounts import AccountWrite
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.permissions import org_admin
from tokenward.rules import Invalid
from tokenward.schema_limits import LIMITS_BODY
from tokenward.views import bulk_work, team_view

routes = Routes("rate limits")


def limits_body(call: Call) -> tuple[RateLimit, ...]:
    try:
        return parse_rate_limits(call.body["rate_limits"])
    except LimitError as exc:
        raise Invalid(str(exc), "rate_limits") from None


class HolderLimits(Changes):
    async def set_team(self, actor: Actor, org: str, name: str, limits: tuple[RateLimit, ...]) -> TeamRecord:
        team = await self.team(org, name)
        updated = replace(team, rate_limits=limits)
        entry = self.entry(
            actor, "team.rate_limits_changed", org=org, team=name,
            before=[x.to_json() for x in team.rate_limits], after=[x.to_json() for x in limits],
        )  # fmt: skip
        await self.still_authorized(actor)
        await self.store.put_team(updated, entry)
        self.committed(entry)
        return updated

    async def set_account(self, actor: Actor, org: str, ref: str, limits: tuple[RateLimit, ...]) -> AccountRecord:
        accounts = Accounts(self.runtime)
        for _ in range(WRITE_ATTEMPTS):
            account, raw = await accounts.find(org, ref)
            after = replace(account, rate_limits=limits)
            entry = self.entry(
                actor, "service_account.rate_limits_changed", org=org, service_account=account.name,
                service_account_id=account.id,
                before=[x.to_json() for x in account.rate_limits], after=[x.to_json() for x in limits],
            )  # fmt: skip
            await self.still_authorized(actor)
            if await self.store.put_account(AccountWrite(account, raw, after, audit=entry)) == 1:
                self.committed(entry)
                return after
        raise StoreUnavailable("service account kept changing; retry")


@routes(
    "PUT",
    "/v1/orgs/{org}/teams/{team}/rate-limits",
    "Replace a team's rate limits",
    permission=org_admin,
    body=Body(LIMITS_BODY),
    responses={200: schema.TEAM, 400: schema.ERROR, 404: schema.ERROR},
)
async def set_team_limits(call: Call) -> web.Response:
    """Replace the team's rate limits (org admins only): every token of the team counts
    against them together, on top of its own limits."""
    team = await HolderLimits(call.runtime).set_team(call.actor, call.param("org"), call.param("team"), limits_body(call))
    return json_response(team_view(team))


@routes(
    "PUT",
    ACCOUNT + "/rate-limits",
    "Replace a service account's rate limits",
    permission=org_admin,
    body=Body(LIMITS_BODY),
    responses={200: schema_accounts.ACCOUNT, 400: schema.ERROR, 404: schema.ERROR},
)
async def set_account_limits(call: Call) -> web.Response:
    """Replace the service account's rate limits (org admins only): every token of the account,
    in all its teams, counts against them together, on top of its own limits."""
    org = call.param("org")
    account = await HolderLimits(call.runtime).set_account(call.actor, org, call.param("account"), limits_body(call))
    async with bulk_work(call):
        return json_response(await counted(Accounts(call.runtime), account))
