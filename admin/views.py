"""How the admin API shows records (never a hash or a secret), and how its lists page.

Every list answers one page: at most `limit` rows (default 100, at most 500) and `next`, an
opaque cursor to pass back as `cursor` (null on the last page). A page reads its rows from a
sorted index after the cursor, so its cost does not grow with the size of the list; with a
filter it examines at most PAGE_SCAN_BUDGET index rows and may hold fewer than `limit` rows
(even none) with a `next`. Work is done in chunks of PAGE_CHUNK records, each one a store
round trip, so requests on the same event loop run between them. Bulk reads (list pages,
service-account counts, audit pages) also run one at a time per process (BULK_WORK):
however many admin clients list at once, at most one slice of admin work waits ahead of a
gateway request on the shared event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tokenward import schema
from tokenward.accounts import account_names
from tokenward.delegate import ended_by_ancestor
from tokenward.endpoints import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, Call, api_error, json_response
from tokenward.gateway.records import ACTIVE, TeamRecord, TokenRecord
from tokenward.gateway.refusal import Refusal
from tokenward.gateway.scopes import effective_scopes, format_scopes, ineffective_scopes
from tokenward.gateway.tokens import KEY_ID_RE
from tokenward.issuance import issuance_warnings
from tokenward.rules import iso
from tokenward.token_limits import limit_fields, remaining

PAGE_CHUNK = 50
VIEW_SLICE = 10  # rows turned into views between two turns of the event loop
BULK_WORK = web.AppKey("bulk_work", asyncio.Semaphore)
PAGE_QUERY: tuple[tuple[str, str], ...] = (("limit", "integer"), ("cursor", "string"))
_LIMIT_RE = re.compile(r"[0-9]{1,7}")


def team_view(team: TeamRecord) -> dict[str, Any]:
    return {
        "org": team.org,
        "name": team.name,
        "permissions": format_scopes(team.permissions),
        "created_at": iso(team.created_at),
        "created_by": team.created_by,
        "rate_limits": [limit.to_json() for limit in team.rate_limits],
    }


GRACE = "grace"  # a view's status: active only until its scheduled revocation (a rotation's grace)


def in_grace(token: TokenRecord, now: float) -> bool:
    """The token works only because its revocation is scheduled for later: the grace period
    of a rotation (`replaced_by` names the successor)."""
    return token.revoked_at is not None and token.status(now) == ACTIVE


def grace_until(token: TokenRecord) -> float | None:
    """When a token in grace stops working: never after its expiry (a rotation caps the
    grace period at it; records from before were not capped)."""
    ends = [t for t in (token.revoked_at, token.expires_at) if t is not None]
    return min(ends) if ends else None


def shown_status(token: TokenRecord, now: float) -> str:
    """The status a view shows: the stored status, with `grace` for a token in grace."""
    return GRACE if in_grace(token, now) else token.status(now)


def token_view(
    token: TokenRecord, team: TeamRecord | None, last_used: float | None, account_name: str | None = None
) -> dict[str, Any]:
    """`account_name`: its service account's name now (a rename since issuance shows)."""
    now = time.time()
    permissions = None if token.team is None else (team.permissions if team else ())
    return {
        "id": token.id,
        "name": token.name,
        "description": token.description,
        "display_prefix": token.display_prefix,
        "org": token.org,
        "team": token.team,
        "service_account": account_name or token.service_account,
        "service_account_id": token.service_account_id,
        "scopes": format_scopes(token.scopes),
        "effective_scopes": format_scopes(effective_scopes(token.scopes, permissions)),
        "ineffective_scopes": format_scopes(ineffective_scopes(token.scopes, permissions)),
        "constraints": dict(token.constraints),
        "allowed_cidrs": list(token.allowed_cidrs),
        "created_at": iso(token.created_at),
        "created_by": token.created_by,
        "last_used_at": iso(last_used),
        "expires_at": iso(token.expires_at),
        "status": shown_status(token, now),
        "grace_until": iso(grace_until(token)) if in_grace(token, now) else None,
        "environment": token.environment,
        "revoked_at": iso(token.revoked_at),
        "revoked_by": token.revoked_by,
        "revoked_by_level": token.revoked_level if token.revoked_at is not None else None,
        "revoke_reason": token.revoke_reason,
        "replaced_by": token.replaced_by,
        "metadata": dict(token.metadata),
        "legacy": token.legacy,
        "parent_id": token.parent_id,  # a child token's (admin/delegate.py)
        "run_id": token.run_id,
        **limit_fields(token),
    }


async def token_response(call: Call, record: TokenRecord, status: int = 200, **extra: Any) -> web.Response:
    """A token as it is now, with its team's permissions and its last use."""
    store = call.runtime.store
    team = await store.get_team(record.org, record.team) if record.team else None
    names = await account_names(store, record.org, [record])
    view = token_view(record, team, await store.last_used(record.id), names.get(record.service_account_id or ""))
    if record.parent_id is not None and view["status"] == ACTIVE:  # a child ends with any ancestor
        view.update(await ended_by_ancestor(store, record))
    if record.max_uses is not None:  # its usage budget left
        view["remaining"] = await remaining(store, record)
    if status == 201:  # issued: what it asks for and cannot do (issue 14, item 11); a rotation's
        view["warnings"] = issuance_warnings(call.runtime.settings.routes, view) + list(extra.pop("warnings", ()))
    headers = {"Cache-Control": "no-store"} if "token" in extra else {}  # a plaintext: shown once
    if status == 201:  # issued (or a replacement): where it lives
        team_part = f"/teams/{record.team}" if record.team is not None else ""  # org level: org-wide path
        headers["Location"] = f"/v1/orgs/{record.org}{team_part}/tokens/{record.id}"
    return json_response({**view, **extra}, status, **headers)


# -- pagination ----------------------------------------------------------------------------------
def page_limit(call: Call, maximum: int = MAX_PAGE_LIMIT, default: int = DEFAULT_PAGE_LIMIT) -> int:
    text = call.query.get("limit")
    if text is None:
        return default
    if not _LIMIT_RE.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise api_error(400, "invalid_request", f"limit: expected an integer 1..{maximum}", "limit")
    return int(text)


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("\n".join(parts).encode()).decode().rstrip("=")


def cursor_parts(call: Call, count: int) -> list[str] | None:
    text = call.query.get("cursor")
    if text is None:
        return None
    try:
        if len(text) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        parts = raw.split("\n")
        if len(parts) != count:
            raise ValueError("shape")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_cursor() from None
    return parts


def bad_cursor() -> Refusal:
    return api_error(400, "invalid_request", "cursor: not a cursor from this list's `next`", "cursor")


def token_cursor(call: Call) -> tuple[float, str] | None:
    parts = cursor_parts(call, 3)
    if parts is None:
        return None
    kind, score, key_id = parts
    try:
        value = float(score)
    except ValueError:
        raise bad_cursor() from None
    if kind != "t" or not math.isfinite(value) or not KEY_ID_RE.fullmatch(key_id):
        raise bad_cursor()
    return value, key_id


def name_cursor(call: Call) -> str | None:
    parts = cursor_parts(call, 2)
    if parts is None:
        return None
    kind, name = parts
    if kind != "n" or not re.fullmatch(schema.SLUG, name):
        raise bad_cursor()
    return name


def next_name(names: list[str], more: bool) -> str | None:
    return encode_cursor("n", names[-1]) if more and names else None


@contextlib.asynccontextmanager
async def bulk_work(call: Call) -> AsyncIterator[None]:
    async with call.request.app[BULK_WORK]:
        yield


def page_response(key: str, rows: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    return json_response({key: rows, "next": next_cursor})
