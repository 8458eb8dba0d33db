"""The admin API's usage report of one token: requests by day and by route over a window,
refusals by step, and the least-privilege report (granted scopes no allowed request needed).

The counts are the gateway's (gateway/usage.py): every process adds its own to the store
within a flush interval (a quarter of a second), so a report lags the requests by about that.
`usage_response(call, record)` answers for a token already found and authorized, so that any
path naming a token (the team's, an org-wide one) can serve it.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from tokenward import schema, schema_reports
from tokenward.api_org_tokens import ORG_TOKEN
from tokenward.api_tokens import TOKEN, token_team
from tokenward.endpoints import Call, Routes, api_error, json_response
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import format_scopes
from tokenward.gateway.store import Store
from tokenward.gateway.usage import ALLOWED, DAY, REFUSED, REQUESTS, ROUTE, SCOPE, TOOL, USAGE_DAYS, day_of
from tokenward.permissions import org_token_admin, team_admin

routes = Routes("tokens")
DEFAULT_DAYS = 30
_DAYS_RE = re.compile(r"[0-9]{1,3}")


@routes(
    "GET",
    TOKEN + "/usage",
    "A token's usage",
    permission=team_admin,
    responses={200: schema_reports.TOKEN_USAGE, 400: schema.ERROR, 404: schema.ERROR},
    query=(("days", "integer"),),
)
async def get_token_usage(call: Call) -> web.Response:
    """Requests with this token over the last `days` UTC days (1..90, default 30; today
    included): by day, by route and refused by decision step, and `unused_scopes`, the
    granted scopes that no allowed request needed in the window (candidates to drop at the
    next rotation). Refusals count once the token is known: revoked, expired or from a
    client address it does not allow, and every later step."""
    record = await call.tokens.token_in_team(call.param("org"), token_team(call), call.param("id"))
    return await usage_response(call, record)


@routes(
    "GET",
    ORG_TOKEN + "/usage",
    "Any token of the org's usage",
    permission=org_token_admin,
    responses={200: schema_reports.TOKEN_USAGE, 400: schema.ERROR, 403: schema.ERROR, 404: schema.ERROR},
    query=(("days", "integer"),),
)
async def get_org_token_usage(call: Call) -> web.StreamResponse:
    """The usage report of any token of the org by id (org admins), as on the team path."""
    return await get_token_usage(call)


async def usage_response(call: Call, record: TokenRecord) -> web.Response:
    """The usage report of `record` (found and authorized by the caller) for `?days=`."""
    return json_response(await token_usage(call.runtime.store, record, usage_days(call)))


def usage_days(call: Call) -> int:
    text = call.query.get("days")
    if text is None:
        return DEFAULT_DAYS
    if not _DAYS_RE.fullmatch(text) or not 1 <= int(text) <= USAGE_DAYS:
        raise api_error(400, "invalid_request", f"days: expected a whole number of days, 1..{USAGE_DAYS}", "days")
    return int(text)


async def token_usage(store: Store, token: TokenRecord, days: int, now: float | None = None) -> dict[str, Any]:
    """The report for the `days` UTC days up to and including today's (one store call)."""
    today = int((time.time() if now is None else now) // DAY)
    names = [day_of((today - back) * DAY) for back in range(days - 1, -1, -1)]  # oldest first
    by_day: dict[str, int] = {}
    by_route: dict[str, int] = {}
    refused: dict[str, int] = {}
    by_tool: dict[str, int] = {}  # allowed MCP tool calls (README "MCP")
    exercised: dict[str, int] = {}
    allowed = 0
    for name, fields in zip(names, await store.read_usage(token.id, names), strict=True):
        by_day[name] = fields.get(REQUESTS, 0)
        allowed += fields.get(ALLOWED, 0)
        for field, n in fields.items():
            for prefix, into in ((ROUTE, by_route), (REFUSED, refused), (SCOPE, exercised), (TOOL, by_tool)):
                if field.startswith(prefix):
                    key = field[len(prefix) :]
                    into[key] = into.get(key, 0) + n
    granted = format_scopes(token.scopes)
    return {
        "token_id": token.id,
        "name": token.name,
        "days": days,
        "since": names[0],
        "requests": sum(by_day.values()),
        "allowed": allowed,
        "by_day": by_day,
        "by_route": dict(sorted(by_route.items(), key=lambda item: -item[1])),
        "refused": dict(sorted(refused.items(), key=lambda item: -item[1])),
        "by_tool": dict(sorted(by_tool.items(), key=lambda item: -item[1])),
        "scopes_used": {scope: exercised.get(scope, 0) for scope in granted},
        "unused_scopes": [scope for scope in granted if not exercised.get(scope)],
    }
