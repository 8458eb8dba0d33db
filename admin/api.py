"""The admin HTTP API (`/v1`, on the admin listener) over the same store as the gateway.

Callers authenticate with a Bearer token through the gateway's own `Authenticator`.
`admin:org` manages every team of its org; `admin:team` manages only its own team (and
only while the team's permission set holds `admin:team`); no wildcard grants either. A
token only hands out tokens that can do no more than itself (`check_grant`). Every change is durable before
the response, announced to every gateway process, and audited with its actor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from tokenward import schema
from tokenward.gateway.audit import redact
from tokenward.gateway.decision import Principal, Throttled, bearer_token
from tokenward.gateway.durations import format_duration, parse_duration
from tokenward.gateway.edge import error_response, request_id_for
from tokenward.gateway.records import (
    ACTIVE,
    EXPIRED,
    FINAL_REASONS,
    LEVEL_ORG,
    LEVEL_TEAM,
    REVOKED,
    ServiceAccountRecord,
    TeamRecord,
    TokenRecord,
    revoker_rank,
)
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.runtime import RUNTIME, Runtime
from tokenward.gateway.scopes import (
    ADMIN_ORG,
    ADMIN_TEAM,
    Scope,
    ScopeError,
    effective_scopes,
    format_scopes,
    grants_org_power,
    ineffective_scopes,
    parse_scope,
    parse_scopes,
)
from tokenward.gateway.store import (
    ActorFence,
    AuditEntry,
    Conflict,
    Keys,
    QuotaExceeded,
    StoreUnavailable,
    TokenEdit,
)
from tokenward.gateway.text import all_shown
from tokenward.gateway.tokens import (
    BASE62,
    KEY_ID_LEN,
    KEY_ID_RE,
    TokenFormatError,
    checksum,
    generate,
    new_check_key,
    secret_check,
)
from tokenward.gateway.tokens import parse as parse_token

log = structlog.get_logger("tokenward.admin")
MAX_BODY = 64 * 1024
_ORG_RE = schema.SLUG


def api_error(status: int, error: str, message: str, field: str | None = None) -> Refusal:
    """A request refused before any decision step (a bad body, a missing record, a state
    conflict): its JSON body names no `step`, and it is not audited as `admin.denied`."""
    return Refusal(status, error, None, message, field=field)


def json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str, field: str) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise api_error(400, "invalid_request", f"{field}: {text!r} is not an RFC 3339 time", field) from None
    if parsed.tzinfo is None:
        raise api_error(400, "invalid_request", f"{field}: needs a time zone (e.g. 'Z')", field)
    return parsed.timestamp()


# -- endpoint registry (drives routing and the OpenAPI document) ------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    request: schema.Schema | None
    responses: dict[int, schema.Schema | None]
    auth: bool = True
    query: tuple[tuple[str, str], ...] = ()


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    summary: str,
    request: schema.Schema | None = None,
    responses: dict[int, schema.Schema | None] | None = None,
    auth: bool = True,
    query: tuple[tuple[str, str], ...] = (),
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ENDPOINTS.append(
            Endpoint(method, path, handler, summary, request, responses or {200: None}, auth, query)
        )
        return handler

    return register


async def read_body(request: web.Request, body_schema: schema.Schema) -> dict[str, Any]:
    # a body (at most MAX_BODY) must arrive within limits.body_timeout, as at the gateway: a
    # caller trickling one would otherwise hold a connection and a handler for ever
    timeout = ctx(request).runtime.settings.limits.body_timeout
    try:
        raw = await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise api_error(
            408, "request_timeout", "request body not received in time (limits.body_timeout)", "body"
        ) from None
    if not raw:
        raise api_error(400, "invalid_request", "request body is required (JSON object)", "body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise api_error(400, "invalid_request", "request body is not valid JSON", "body") from None
    try:
        schema.validate(body_schema, data)
    except schema.ValidationError as exc:
        raise api_error(400, "invalid_request", str(exc), exc.field) from None
    return data  # type: ignore[no-any-return]


# -- authorization --------------------------------------------------------------------
def actor(principal: Principal) -> str:
    return f"token:{principal.token.id}"


def _forbid(message: str, scope: str | None = None) -> Refusal:
    return Refusal(
        403, "insufficient_scope" if scope else "forbidden", Step.SCOPE if scope else Step.ORG, message, scope
    )


def is_org_admin(principal: Principal) -> bool:
    """An org-level token holding `admin:org` by name. A team-bound token never is one, whatever
    its scopes or its team's permission set say (see `tokenward.gateway.scopes`: no wildcard covers
    `admin:org`, and nothing on the org resource is effective for a team token)."""
    return principal.token.team is None and principal.can(parse_scope(ADMIN_ORG))


def require_org_admin(principal: Principal, org: str) -> None:
    if principal.token.org != org:
        raise _forbid("token org does not match resource org")
    if not is_org_admin(principal):
        raise _forbid(f"token lacks required permission: {ADMIN_ORG}", ADMIN_ORG)


def require_team_admin(principal: Principal, org: str, team: str) -> None:
    """Org admins manage every team of their org; team admins only their own."""
    token = principal.token
    if token.org != org:
        raise _forbid("token org does not match resource org")
    if is_org_admin(principal):
        return
    if token.team != team:
        raise Refusal(403, "forbidden", Step.TEAM, "token is not in the same team as the resource")
    if not principal.can(parse_scope(ADMIN_TEAM)):
        raise _forbid(f"token lacks required permission: {ADMIN_TEAM}", ADMIN_TEAM)


# -- no escalation through the admin plane (issue 10, items 1 and 3) -------------------------
def refuse_org_powers(scopes: tuple[Scope, ...], field: str) -> None:
    """400 for any scope a team may not hold: one that covers an org-level power."""
    for scope in scopes:
        if grants_org_power(scope):
            raise api_error(
                400,
                "invalid_request",
                f"{field}: {scope} covers an org-level power ({ADMIN_ORG}), which a team cannot hold",
                field,
            )


def _pinned(constraints: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(dict(constraints).items())) or "(none)"


def within_constraints(principal: Principal, record: TokenRecord) -> bool:
    """A constrained admin token reaches only tokens pinned to at least its own constraints."""
    return all(record.constraints.get(k) == v for k, v in principal.token.constraints.items())


def require_within_constraints(principal: Principal, record: TokenRecord) -> None:
    if not within_constraints(principal, record):
        raise Refusal(
            403,
            "forbidden",
            Step.CONSTRAINTS,
            f"token is constrained to {_pinned(principal.token.constraints)}; token {record.id} is "
            f"pinned to {_pinned(record.constraints)}",
        )


def require_unconstrained(principal: Principal, what: str) -> None:
    """Team-wide resources (service accounts, the team, its audit) carry no constraint
    parameter, so a constrained token may not act on them: as at the gateway, where a route
    that does not name a constrained parameter is refused."""
    if principal.token.constraints:
        raise Refusal(
            403,
            "forbidden",
            Step.CONSTRAINTS,
            f"token is constrained to {_pinned(principal.token.constraints)} and {what} "
            "are not bound to it",
        )


def _cidrs_inside(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    if not outer:
        return True
    if not inner:
        return False  # unrestricted is wider than any restriction
    nets = [ipaddress.ip_network(c, strict=False) for c in outer]
    for text in inner:
        net = ipaddress.ip_network(text, strict=False)
        if not any(
            net.version == o.version and net.subnet_of(o)  # type: ignore[arg-type]
            for o in nets
        ):
            return False
    return True


def lifetime_end(token: TokenRecord) -> float | None:
    """When `token` stops working: its expiry, or a revocation already scheduled (a rotation's
    grace period), whichever comes first. None: never."""
    ends = [t for t in (token.expires_at, token.revoked_at) if t is not None]
    return min(ends) if ends else None


def grant_expiry(
    principal: Principal, runtime: Runtime, body: dict[str, Any], issued: float
) -> float | None:
    """The expiry asked for in `body`; without one, the default TTL, but never later than the
    caller's own expiry (an explicit later one is refused by `check_grant`)."""
    expires_at = _expiry(runtime, body, issued)
    limit = lifetime_end(principal.token)
    explicit = "expires_in" in body or "expires_at" in body
    if limit is not None and not explicit and (expires_at is None or expires_at > limit):
        return limit
    return expires_at


def check_grant(
    principal: Principal,
    *,
    team: str | None,
    scopes: tuple[Scope, ...],
    constraints: Any,
    allowed_cidrs: tuple[str, ...],
    expires_at: float | None,
) -> None:
    """A token may only create or rotate tokens that can do no more than it can itself:
    effective scopes a subset of its own (so also whatever its team gains later), its
    constraints included, `allowed_cidrs` inside its own, expiry no later than its own.
    An org admin may grant any scope in its org; the other three bounds apply to it too
    (the bootstrap token has none of them, so it is unconstrained)."""
    if team is not None:
        refuse_org_powers(scopes, "scopes")
    if not is_org_admin(principal):
        for scope in scopes:
            if not principal.can(scope):
                raise Refusal(
                    403,
                    "insufficient_scope",
                    Step.GRANT,
                    f"scopes: a token can only grant scopes it holds itself; it lacks {scope}",
                    str(scope),
                )
    own = principal.token
    missing = {k: v for k, v in own.constraints.items() if dict(constraints).get(k) != v}
    if missing:
        raise Refusal(
            403,
            "forbidden",
            Step.GRANT,
            f"constraints: the token is constrained to {_pinned(own.constraints)}; "
            f"what it grants must be too (add {_pinned(missing)})",
        )
    if not _cidrs_inside(allowed_cidrs, own.allowed_cidrs):
        raise Refusal(
            403,
            "forbidden",
            Step.GRANT,
            "allowed_cidrs: must lie inside the token's own allowed_cidrs "
            f"({', '.join(own.allowed_cidrs)})",
        )
    own_end = lifetime_end(own)
    if own_end is not None and (expires_at is None or expires_at > own_end):
        raise Refusal(
            403,
            "forbidden",
            Step.GRANT,
            f"expires_at: must be no later than the token's own expiry ({iso(own_end)}"
            + (", when its rotation's grace period ends)" if own_end != own.expires_at else ")"),
        )


def _token_fields(record: TokenRecord) -> dict[str, Any]:
    """The token an admin event is about: it and its org, team and service account."""
    return {
        "org": record.org,
        "team": record.team,
        "token_id": record.id,
        "token_name": record.name,
        "service_account": record.service_account,
    }


class AdminContext:
    """Per-request state: the runtime, the caller and the request id."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.runtime: Runtime = request.app[RUNTIME]
        self.request_id = request_id_for(request, self.runtime.settings.trusted_proxies)
        self.principal: Principal | None = None

    @property
    def principal_required(self) -> Principal:
        assert self.principal is not None, "authenticate() first"
        return self.principal

    async def authenticate(self) -> Principal:
        token = bearer_token(self.request.headers.getall("Authorization", ()))
        self.principal = await self.runtime.authenticator.authenticate(token, self.request.remote)
        self.runtime.audit.mark_used(self.principal.token.id, time.time())
        return self.principal

    def fence(self) -> ActorFence:
        """The caller's own record must still be active when its change is written: a
        revocation of the caller confirmed before then stops the change (401), even one
        that landed while the change was being prepared (see Store.ActorFence)."""
        key_id = self.principal_required.token.id

        def check(record: TokenRecord | None) -> None:
            if record is None:
                raise Refusal(401, "invalid_token", Step.TOKEN, "invalid token")
            status = record.status(time.time())
            if status != ACTIVE:
                raise Refusal(401, "invalid_token", Step.STATUS, f"token {status}")

        return ActorFence(key_id, check)

    async def still_authorized(self) -> None:
        """The fence's check, read fresh just before a write that cannot carry it atomically
        (team and service-account writes)."""
        await self.runtime.store.fence_version(self.fence())

    def token_event(self, action: str, record: TokenRecord, **fields: Any) -> None:
        """An admin event about one token, naming it and its org, team and service account."""
        self.audit(action, **_token_fields(record), **fields)

    def _actor(self) -> dict[str, Any]:
        """Who made an admin change, and from where."""
        assert self.principal is not None
        token = self.principal.token
        return {
            "actor_id": token.id,
            "actor_name": token.name,
            "actor_org": token.org,
            "actor_team": token.team,
            "client_ip": self.request.remote,
            "request_id": self.request_id,
        }

    def audit(self, action: str, **fields: Any) -> None:
        self.runtime.audit.emit(action, **self._actor(), **fields)

    # An admin change's audit event is written by the store in the same atomic, durable
    # write as the change (`entry`), then logged here once the change is committed.
    def entry(self, action: str, **fields: Any) -> AuditEntry:
        event = {**self._actor(), **fields, "action": action, "ts": time.time()}
        return AuditEntry(orjson.dumps(event), self.runtime.audit.stream_maxlen)

    def token_entry(self, action: str, record: TokenRecord, **fields: Any) -> AuditEntry:
        return self.entry(action, **_token_fields(record), **fields)

    def committed(self, entry: AuditEntry | None) -> None:
        """Log (JSON line) an event the store has written to the audit stream with its change."""
        if entry is None:
            return
        fields = orjson.loads(entry.payload)
        action = fields.pop("action")
        fields.pop("ts", None)
        self.runtime.audit.emit(action, in_stream=True, **fields)


CONTEXT = web.RequestKey("admin_context", AdminContext)


def ctx(request: web.Request) -> AdminContext:
    return request[CONTEXT]


async def principal_of(request: web.Request) -> Principal:
    context = ctx(request)
    return context.principal or await context.authenticate()


def _match(request: web.Request, name: str) -> str:
    return request.match_info[name]


async def _team_or_404(runtime: Runtime, org: str, team: str) -> TeamRecord:
    record = await runtime.store.get_team(org, team)
    if record is None:
        raise api_error(404, "not_found", f"team {team!r} does not exist in org {org!r}")
    return record


async def _token_or_404(runtime: Runtime, org: str, team: str, key_id: str) -> TokenRecord:
    record = await runtime.store.get_token(key_id) if KEY_ID_RE.match(key_id) else None
    if record is None or record.org != org or record.team != team:
        raise api_error(404, "not_found", f"token {key_id!r} does not exist in team {team!r}")
    return record


def team_view(team: TeamRecord) -> dict[str, Any]:
    return {
        "org": team.org,
        "name": team.name,
        "permissions": format_scopes(team.permissions),
        "created_at": iso(team.created_at),
        "created_by": team.created_by,
    }


def token_view(token: TokenRecord, team: TeamRecord | None, last_used: float | None) -> dict[str, Any]:
    permissions = None if token.team is None else (team.permissions if team else ())
    return {
        "id": token.id,
        "name": token.name,
        "description": token.description,
        "display_prefix": token.display_prefix,
        "org": token.org,
        "team": token.team,
        "service_account": token.service_account,
        "scopes": format_scopes(token.scopes),
        "effective_scopes": format_scopes(effective_scopes(token.scopes, permissions)),
        "ineffective_scopes": format_scopes(ineffective_scopes(token.scopes, permissions)),
        "constraints": dict(token.constraints),
        "allowed_cidrs": list(token.allowed_cidrs),
        "created_at": iso(token.created_at),
        "created_by": token.created_by,
        "last_used_at": iso(last_used),
        "expires_at": iso(token.expires_at),
        "status": token.status(),
        "revoked_at": iso(token.revoked_at),
        "revoked_by": token.revoked_by,
        "revoked_by_level": token.revoked_level if token.revoked_at is not None else None,
        "revoke_reason": token.revoke_reason,
        "replaced_by": token.replaced_by,
    }


# -- pagination ----------------------------------------------------------------------------
# Every list answers one page: at most `limit` rows (default 100, at most 500) and `next`, an
# opaque cursor to pass back as `cursor` (null on the last page). A page reads its rows from
# a sorted index after the cursor, so its cost does not grow with the size of the list; with
# a filter it examines at most PAGE_SCAN_BUDGET index rows and may hold fewer than `limit`
# rows (even none) with a `next`. Work is done in chunks of PAGE_CHUNK records, each one a
# store round trip, so requests on the same event loop run between them.
# Bulk reads (list pages, service-account counts, audit pages) also run one at a time per
# process (BULK_WORK): however many admin clients list at once, at most one slice of admin
# work waits ahead of a gateway request on the shared event loop.
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 500
PAGE_SCAN_BUDGET = 1000
PAGE_CHUNK = 50
VIEW_SLICE = 10  # rows turned into views between two turns of the event loop
BULK_WORK = web.AppKey("bulk_work", asyncio.Semaphore)
PAGE_QUERY: tuple[tuple[str, str], ...] = (("limit", "integer"), ("cursor", "string"))
_LIMIT_RE = re.compile(r"[0-9]{1,7}")


def page_limit(request: web.Request, maximum: int = MAX_PAGE_LIMIT, default: int = DEFAULT_PAGE_LIMIT) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    if not _LIMIT_RE.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise api_error(400, "invalid_request", f"limit: expected an integer 1..{maximum}", "limit")
    return int(text)


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("\n".join(parts).encode()).decode().rstrip("=")


def _cursor_parts(request: web.Request, count: int) -> list[str] | None:
    text = request.query.get("cursor")
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
        raise _bad_cursor() from None
    return parts


def _bad_cursor() -> Refusal:
    return api_error(400, "invalid_request", "cursor: not a cursor from this list's `next`", "cursor")


def token_cursor(request: web.Request) -> tuple[float, str] | None:
    parts = _cursor_parts(request, 3)
    if parts is None:
        return None
    kind, score, key_id = parts
    try:
        value = float(score)
    except ValueError:
        raise _bad_cursor() from None
    if kind != "t" or not math.isfinite(value) or not KEY_ID_RE.fullmatch(key_id):
        raise _bad_cursor()
    return value, key_id


def name_cursor(request: web.Request) -> str | None:
    parts = _cursor_parts(request, 2)
    if parts is None:
        return None
    kind, name = parts
    if kind != "n" or not re.fullmatch(schema.SLUG, name):
        raise _bad_cursor()
    return name


@contextlib.asynccontextmanager
async def bulk_work(request: web.Request) -> AsyncIterator[None]:
    async with request.app[BULK_WORK]:
        yield


def page_response(key: str, rows: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    return json_response({key: rows, "next": next_cursor})


# -- teams ------------------------------------------------------------------------------
@endpoint(
    "POST",
    "/v1/orgs/{org}/teams",
    "Create a team with a permission set",
    schema.TEAM_CREATE,
    {201: schema.TEAM, 409: schema.ERROR},
)
async def create_team(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    org = _match(request, "org")
    require_org_admin(principal, org)
    body = await read_body(request, schema.TEAM_CREATE)
    permissions = _scopes(body["permissions"], "permissions")
    refuse_org_powers(permissions, "permissions")
    team = TeamRecord(org, body["name"], permissions, time.time(), actor(principal))
    runtime = ctx(request).runtime
    entry = ctx(request).entry(
        "team.created", org=org, team=team.name, permissions=format_scopes(permissions)
    )
    await ctx(request).still_authorized()
    await runtime.store.create_team(team, entry)  # Conflict: 409 (see DOMAIN_ERRORS)
    ctx(request).committed(entry)
    return json_response(team_view(team), 201)


@endpoint(
    "GET",
    "/v1/orgs/{org}/teams",
    "List the teams of an org in name order, one page at a time (a team admin sees its own)",
    None,
    {200: schema.TEAM_LIST, 400: schema.ERROR},
    query=PAGE_QUERY,
)
async def list_teams(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    org = _match(request, "org")
    runtime = ctx(request).runtime
    limit, after = page_limit(request), name_cursor(request)
    if principal.token.team is not None and principal.token.org == org:
        require_team_admin(principal, org, principal.token.team)
        require_unconstrained(principal, "teams")
        team = await runtime.store.get_team(org, principal.token.team)
        own = [team] if team and (after is None or team.name > after) else []
        return page_response("teams", [team_view(t) for t in own], None)
    require_org_admin(principal, org)
    names, teams, more = await runtime.store.team_page(org, after, limit)
    return page_response(
        "teams", [team_view(t) for t in teams], encode_cursor("n", names[-1]) if more and names else None
    )


@endpoint("GET", "/v1/orgs/{org}/teams/{team}", "Get a team", None, {200: schema.TEAM, 404: schema.ERROR})
async def get_team(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    org, team = _match(request, "org"), _match(request, "team")
    require_team_admin(principal, org, team)
    require_unconstrained(principal, "teams")
    return json_response(team_view(await _team_or_404(ctx(request).runtime, org, team)))


@endpoint(
    "PUT",
    "/v1/orgs/{org}/teams/{team}/permissions",
    "Replace a team's permission set (org admins only); takes effect on the next request",
    schema.TEAM_PERMISSIONS,
    {200: schema.TEAM, 404: schema.ERROR},
)
async def set_team_permissions(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    org, team_name = _match(request, "org"), _match(request, "team")
    require_org_admin(principal, org)
    body = await read_body(request, schema.TEAM_PERMISSIONS)
    permissions = _scopes(body["permissions"], "permissions")
    refuse_org_powers(permissions, "permissions")
    runtime = ctx(request).runtime
    team = await _team_or_404(runtime, org, team_name)
    updated = replace(team, permissions=permissions)
    entry = ctx(request).entry(
        "team.permissions_changed",
        org=org,
        team=team_name,
        before=format_scopes(team.permissions),
        after=format_scopes(permissions),
    )
    await ctx(request).still_authorized()
    await runtime.store.put_team(updated, entry)
    ctx(request).committed(entry)
    return json_response(team_view(updated))


def _scopes(texts: list[str], field: str) -> tuple[Any, ...]:
    try:
        return parse_scopes(texts)
    except ScopeError as exc:
        raise api_error(400, "invalid_request", f"{field}: {exc}", field) from None


# -- tokens -------------------------------------------------------------------------------
def _expiry(runtime: Runtime, body: dict[str, Any], issued: float) -> float | None:
    policy = runtime.settings.tokens
    if "expires_in" in body and "expires_at" in body:
        raise api_error(400, "invalid_request", "give expires_in or expires_at, not both", "expires_in")
    if "expires_in" in body:
        ttl: float | None = _duration(body["expires_in"], "expires_in")
        field = "expires_in"
    elif "expires_at" in body:
        at = parse_time(body["expires_at"], "expires_at")
        ttl = at - issued
        field = "expires_at"
        if ttl <= 0:
            raise api_error(400, "invalid_request", "expires_at: is in the past", field)
    else:
        ttl = policy.default_ttl
        field = "expires_in"
    if ttl is not None and ttl <= 0:
        raise api_error(400, "invalid_request", f"{field}: must be in the future", field)
    if policy.max_ttl is not None and (ttl is None or ttl > policy.max_ttl + 1):
        raise api_error(
            400,
            "invalid_request",
            f"{field}: exceeds the maximum token lifetime of {format_duration(policy.max_ttl)} "
            "(tokens.max_ttl)",
            field,
        )
    if ttl is not None and issued + ttl > MAX_EXPIRES_AT:
        raise api_error(400, "invalid_request", f"{field}: is after {iso(MAX_EXPIRES_AT)}", field)
    return None if ttl is None else issued + ttl


def _duration(text: str, field: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise api_error(400, "invalid_request", f"{field}: {exc}", field) from None
    except OverflowError:  # int * unit overflows a float
        raise api_error(400, "invalid_request", f"{field}: {text!r} is too long", field) from None


# The latest expiry a token can have: its views print it as an RFC 3339 time.
MAX_EXPIRES_AT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def _cidrs(texts: list[str]) -> tuple[str, ...]:
    result = []
    for i, text in enumerate(texts):
        try:
            if "%" in text:  # an IPv6 zone id is no part of a network, and may hold any text
                raise ValueError("zone id")
            result.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            field = f"allowed_cidrs[{i}]"
            raise api_error(400, "invalid_request", f"{field}: {text!r} is not a CIDR", field) from None
    return tuple(result)


async def issue_token(
    runtime: Runtime,
    *,
    org: str,
    team: str | None,
    name: str,
    scopes: tuple[Any, ...],
    created_by: str,
    description: str = "",
    expires_at: float | None = None,
    service_account: str | None = None,
    constraints: dict[str, str] | None = None,
    allowed_cidrs: tuple[str, ...] = (),
    replaces: str | None = None,
    audit: Callable[[TokenRecord], AuditEntry] | None = None,
    fence: ActorFence | None = None,
) -> tuple[str, TokenRecord]:
    """Mint a token: hash off the event loop, store durably (with `audit(record)`'s event in
    the same write), return the plaintext once. Refused with 409 once the team (or the org
    level) holds `tokens.max_per_team` tokens: counted before the argon2 work, and again
    atomically with the index write."""
    quota = runtime.settings.tokens.max_per_team
    held = await runtime.store.token_count(org, team)
    if held >= quota:
        raise QuotaExceeded(held, quota, org, team)
    plaintext, parsed = generate(runtime.settings.tokens.prefix)
    check_key = new_check_key()  # per record: nobody can compute its secret check offline
    record = TokenRecord(
        id=parsed.key_id,
        prefix=parsed.prefix,
        org=org,
        team=team,
        name=name,
        description=description,
        scopes=scopes,
        secret_hash=await runtime.hasher.hash(parsed.secret),
        secret_check=secret_check(parsed.key_id, parsed.secret, check_key),
        check_key=check_key,
        created_at=time.time(),
        created_by=created_by,
        expires_at=expires_at,
        service_account=service_account,
        constraints=constraints or {},
        allowed_cidrs=allowed_cidrs,
        replaces=replaces,
    )
    # QuotaExceeded: 409 (see DOMAIN_ERRORS)
    await runtime.store.create_token_in_quota(record, quota, audit(record) if audit else None, fence)
    return plaintext, record


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens",
    "Issue a token; the plaintext is in this response only",
    schema.TOKEN_CREATE,
    {201: schema.TOKEN_CREATED, 400: schema.ERROR, 403: schema.ERROR, 404: schema.ERROR},
)
async def create_token(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    org, team_name = _match(request, "org"), _match(request, "team")
    require_team_admin(principal, org, team_name)
    body = await read_body(request, schema.TOKEN_CREATE)
    runtime = ctx(request).runtime
    team = await _team_or_404(runtime, org, team_name)
    scopes = _scopes(body["scopes"], "scopes")
    refuse_org_powers(scopes, "scopes")
    service_account = body.get("service_account")
    if service_account is not None:
        sa = await runtime.store.get_service_account(org, team_name, service_account)
        if sa is None:
            raise api_error(
                400,
                "invalid_request",
                f"service_account: {service_account!r} does not exist in team {team_name!r}",
                "service_account",
            )
    constraints = body.get("constraints") or {}
    for key in constraints:
        if key in ("org", "team") or not _is_name(key):
            field = f"constraints.{key}" if len(key) <= MAX_CONSTRAINT_NAME else "constraints"
            raise api_error(
                400,
                "invalid_request",
                f"{field}: constraint names match [a-z][a-z0-9_-]{{0,{MAX_CONSTRAINT_NAME - 1}}} "
                "and are not org or team",
                field,
            )
    issued = time.time()
    expires_at = grant_expiry(principal, runtime, body, issued)
    allowed_cidrs = _cidrs(body.get("allowed_cidrs", []))
    check_grant(
        principal,
        team=team_name,
        scopes=scopes,
        constraints=constraints,
        allowed_cidrs=allowed_cidrs,
        expires_at=expires_at,
    )
    entries: list[AuditEntry] = []

    def created_event(record: TokenRecord) -> AuditEntry:
        entries.append(
            ctx(request).token_entry(
                "token.created",
                record,
                scopes=format_scopes(record.scopes),
                expires_at=iso(record.expires_at),
            )
        )
        return entries[-1]

    plaintext, record = await issue_token(
        runtime,
        org=org,
        team=team_name,
        name=body["name"],
        description=body.get("description", ""),
        scopes=scopes,
        created_by=actor(principal),
        expires_at=expires_at,
        service_account=service_account,
        constraints=constraints,
        allowed_cidrs=allowed_cidrs,
        audit=created_event,
        fence=ctx(request).fence(),
    )
    view = token_view(record, team, None)
    ctx(request).committed(entries[-1])
    return json_response({**view, "token": plaintext}, 201, **{"Cache-Control": "no-store"})


# A constraint name is a route's path parameter name: bounded like every other stored field,
# so a record (cached by every gateway process, rendered in every list row) stays small.
MAX_CONSTRAINT_NAME = 64


def _is_name(text: str) -> bool:
    return len(text) <= MAX_CONSTRAINT_NAME and bool(re.fullmatch(r"[a-z][a-z0-9_-]*", text))


async def team_request(request: web.Request) -> tuple[AdminContext, str, str]:
    """Authenticate, and require admin rights over the team named in the path (and, for a
    constrained caller, over the token named in the path: see `require_within_constraints`)."""
    context = ctx(request)
    principal = await principal_of(request)
    org, team = _match(request, "org"), _match(request, "team")
    require_team_admin(principal, org, team)
    key_id = request.match_info.get("id")
    if principal.token.constraints and key_id is not None and KEY_ID_RE.match(key_id):
        # constraints are fixed at issuance, so this read cannot race with the handler's
        record = await context.runtime.store.get_token(key_id)
        if record is not None and record.org == org and record.team == team:
            require_within_constraints(principal, record)
    return context, org, team


async def token_response(runtime: Runtime, record: TokenRecord, **extra: Any) -> web.Response:
    team = await runtime.store.get_team(record.org, record.team) if record.team else None
    view = token_view(record, team, await runtime.store.last_used(record.id))
    return json_response({**view, **extra})


_STATUSES = (ACTIVE, REVOKED, EXPIRED)


@endpoint(
    "GET",
    "/v1/orgs/{org}/teams/{team}/tokens",
    "List a team's tokens, oldest first, one page at a time (never a hash or secret); deleted "
    "tokens are gone, revoked and expired ones stay with their status. With a status or "
    "expiring_within filter a page examines at most 1000 tokens and may hold fewer than "
    "`limit` rows: follow `next` until it is null",
    None,
    {200: schema.TOKEN_LIST, 400: schema.ERROR, 404: schema.ERROR},
    query=(("status", "string"), ("expiring_within", "string"), ("service_account", "string"), *PAGE_QUERY),
)
async def list_tokens(request: web.Request) -> web.Response:
    context, org, team_name = await team_request(request)
    runtime = context.runtime
    status = request.query.get("status")
    if status is not None and status not in _STATUSES:
        raise api_error(400, "invalid_request", f"status: expected one of {', '.join(_STATUSES)}", "status")
    within: float | None = None
    if "expiring_within" in request.query:
        within = _duration(request.query["expiring_within"], "expiring_within")
    sa = request.query.get("service_account")
    if sa is not None and not re.fullmatch(schema.SLUG, sa):
        raise api_error(400, "invalid_request", f"service_account: {sa!r} is not a name", "service_account")
    limit, position = page_limit(request), token_cursor(request)
    team = await _team_or_404(runtime, org, team_name)
    principal = context.principal_required
    filtered = status is not None or within is not None or bool(principal.token.constraints)
    now = time.time()

    def wanted(token: TokenRecord) -> bool:
        if not within_constraints(principal, token):
            return False  # a constrained admin sees only the tokens it can reach
        if status is not None and token.status(now) != status:
            return False
        if within is not None and (
            token.status(now) != ACTIVE or token.expires_at is None or token.expires_at > now + within
        ):
            return False
        return sa is None or token.service_account == sa

    async with bulk_work(request):
        if sa is not None:
            await runtime.store.ensure_service_account_indexes(org, team_name)
        rows, position, more = await _token_page(runtime, org, team, position, limit, filtered, wanted, sa)
    next_cursor = encode_cursor("t", repr(position[0]), position[1]) if more and position else None
    return page_response("tokens", rows, next_cursor)


async def _token_page(
    runtime: Runtime,
    org: str,
    team: TeamRecord,
    position: tuple[float, str] | None,
    limit: int,
    filtered: bool,
    wanted: Callable[[TokenRecord], bool],
    sa: str | None,
) -> tuple[list[dict[str, Any]], tuple[float, str] | None, bool]:
    """Up to `limit` rows after `position` that `wanted` keeps, reading at most
    max(PAGE_SCAN_BUDGET, limit) index rows in chunks; the last row examined; more follow."""
    team_name = team.name
    rows: list[dict[str, Any]] = []
    scanned, more = 0, True
    budget = max(PAGE_SCAN_BUDGET, limit)
    # a service account's tokens come from its own index: that filter costs no scanning
    while more and len(rows) < limit and scanned < budget:
        want = min(PAGE_CHUNK, budget - scanned if filtered else limit - len(rows))
        page = await runtime.store.token_index_page(org, team_name, position, want, service_account=sa)
        found = {
            t.id: (t, used)
            for t, used in await runtime.store.get_tokens_with_usage([m for m, _ in page.rows])
        }
        more = page.more
        for i, (member, score) in enumerate(page.rows):
            position, scanned = (score, member), scanned + 1
            hit = found.get(member)
            if hit is not None and wanted(hit[0]):
                rows.append(token_view(hit[0], team, hit[1]))
                if len(rows) >= limit:
                    more = more or i < len(page.rows) - 1
                    break
                if len(rows) % VIEW_SLICE == 0:
                    await asyncio.sleep(0)  # let requests waiting on the loop run
    return rows, position, more


@endpoint(
    "GET",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}",
    "Get one token",
    None,
    {200: schema.TOKEN, 404: schema.ERROR},
)
async def get_token(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    record = await _token_or_404(context.runtime, org, team, _match(request, "id"))
    return await token_response(context.runtime, record)


@endpoint(
    "PATCH",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}",
    "Rename or re-describe a token. Scopes, constraints and expiry are fixed at issuance: rotate instead",
    schema.TOKEN_UPDATE,
    {200: schema.TOKEN, 400: schema.ERROR, 404: schema.ERROR},
)
async def update_token(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise api_error(400, "invalid_request", "request body is not valid JSON", "body") from None
    if isinstance(data, dict):
        for fixed in (
            "scopes",
            "constraints",
            "expires_in",
            "expires_at",
            "service_account",
            "allowed_cidrs",
        ):
            if fixed in data:
                raise api_error(
                    400,
                    "invalid_request",
                    f"{fixed}: a token's {fixed.replace('_', ' ')} cannot be changed in place; "
                    "rotate the token (POST .../rotate) or issue a new one",
                    fixed,
                )
    try:
        schema.validate(schema.TOKEN_UPDATE, data)
    except schema.ValidationError as exc:
        raise api_error(400, "invalid_request", str(exc), exc.field) from None
    assert isinstance(data, dict)
    if not data:
        raise api_error(400, "invalid_request", "nothing to change: give name and/or description", "body")
    runtime = context.runtime

    def rename(record: TokenRecord) -> TokenEdit:
        # decided on the record as it is now: a revocation that landed first stays
        updated = replace(
            record,
            name=data.get("name", record.name),
            description=data.get("description", record.description),
        )
        return TokenEdit(updated, context.token_entry("token.updated", updated))

    record = await change_token(context, org, team, _match(request, "id"), rename)
    return await token_response(runtime, record)


# -- lifecycle transitions: each one decided and written atomically (Store.change_token) ---------
def require_within_grant(principal: Principal, record: TokenRecord, verb: str) -> None:
    """Bringing a token back into force is granting its scopes again: unless the caller is an
    org admin, it may do so only for a token whose scopes it holds itself (as `check_grant`
    asks of a create or rotate). A team admin can revoke a wider token, never revive one."""
    if is_org_admin(principal):
        return
    for scope in record.scopes:
        if not principal.can(scope):
            raise Refusal(
                403,
                "insufficient_scope",
                Step.GRANT,
                f"scopes: a token can only {verb} tokens whose scopes it holds itself; it lacks {scope}",
                str(scope),
            )


def actor_level(principal: Principal) -> str:
    """The privilege a revocation records and a restore is measured by: "org" for an org-level
    token holding admin:org, "team" for any token of a team, whatever its scopes."""
    if principal.token.team is None and principal.can(parse_scope(ADMIN_ORG)):
        return LEVEL_ORG
    return LEVEL_TEAM


async def change_token(
    context: AdminContext,
    org: str,
    team: str | None,
    key_id: str,
    decide: Callable[[TokenRecord], TokenEdit | None],
) -> TokenRecord:
    """Run one transition on a token of `team` (404 otherwise); log its audit event once
    committed. The token as it is afterwards."""

    def in_team(record: TokenRecord) -> TokenEdit | None:
        if record.org != org or record.team != team:
            raise api_error(404, "not_found", f"token {key_id!r} does not exist in team {team!r}")
        return decide(record)

    result = (
        await context.runtime.store.change_token(key_id, in_team, context.fence())
        if KEY_ID_RE.match(key_id)
        else None
    )
    if result is None:
        raise api_error(404, "not_found", f"token {key_id!r} does not exist in team {team!r}")
    before, edit = result
    if edit is None:
        return before
    context.committed(edit.audit)
    return edit.record or before


def _revoke_reason(request_body: dict[str, Any]) -> str | None:
    reason = request_body.get("reason")
    if reason is None:
        return None
    if (
        not isinstance(reason, str)
        or not reason.strip()
        or len(reason) > MAX_REASON
        or not all_shown(reason)
    ):
        raise api_error(400, "invalid_request", f"reason: 1 to {MAX_REASON} printable characters", "reason")
    if reason == "rotated":
        raise api_error(400, "invalid_request", "reason: 'rotated' is recorded by rotation only", "reason")
    return reason


MAX_REASON = 200


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}/revoke",
    'Revoke a token; its next request fails with 401. Optional body {"reason": "..."}; the '
    "revocation records who made it and at which level (org or team admin)",
    schema.TOKEN_REVOKE,
    {200: schema.TOKEN, 404: schema.ERROR},
)
async def revoke_token(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    runtime = context.runtime
    raw = await request.read()
    reason = _revoke_reason(await read_body(request, schema.TOKEN_REVOKE) if raw.strip() else {})
    principal = context.principal_required
    level, by = actor_level(principal), actor(principal)

    def revoke(record: TokenRecord) -> TokenEdit | None:
        now = time.time()
        if record.status(now) == REVOKED:
            if revoker_rank(level) <= revoker_rank(record.revoked_level):
                return None  # already revoked by someone at least as privileged: nothing to do
            # an org admin takes a team admin's revocation over: only an org admin undoes it now
            updated = replace(
                record,
                revoked_by=by,
                revoked_level=level,
                revoke_reason=record.revoke_reason if record.revoke_reason in FINAL_REASONS else reason,
            )
        else:  # also ends a rotation grace period at once (the reason stays "rotated")
            updated = record.revoked(now, by, record.revoke_reason or reason, level)
        return TokenEdit(updated, context.token_entry("token.revoked", updated, reason=updated.revoke_reason))

    record = await change_token(context, org, team, _match(request, "id"), revoke)
    return await token_response(runtime, record)


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}/restore",
    "Restore a revoked token that has not expired; only an admin at least as privileged as the "
    "revoker may (a team admin cannot undo an org admin's revocation); leaked and rotated tokens "
    "never come back (409)",
    None,
    {200: schema.TOKEN, 403: schema.ERROR, 404: schema.ERROR, 409: schema.ERROR},
)
async def restore_token(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    runtime = context.runtime
    level = actor_level(context.principal_required)

    def restore(record: TokenRecord) -> TokenEdit:
        now = time.time()
        if record.expires_at is not None and record.expires_at <= now:
            raise api_error(409, "conflict", "token has expired and cannot be restored; issue a new token")
        if record.revoke_reason == "leaked":
            raise api_error(
                409, "conflict", "token was reported leaked and can never be restored; issue a new token"
            )
        if record.replaced_by is not None or record.revoke_reason == "rotated":
            raise api_error(
                409,
                "conflict",
                f"token was rotated (replaced by {record.replaced_by}) and can never be restored",
            )
        if record.status(now) != REVOKED:
            raise api_error(409, "conflict", "token is not revoked")
        if revoker_rank(level) < revoker_rank(record.revoked_level):
            raise Refusal(
                403,
                "insufficient_scope",
                Step.SCOPE,
                f"token was revoked by an org admin ({record.revoked_by}); only an org admin "
                f"can restore it: token lacks required permission: {ADMIN_ORG}",
                ADMIN_ORG,
            )
        require_within_grant(context.principal_required, record, "restore")
        restored = record.restored()
        return TokenEdit(
            restored,
            context.token_entry(
                "token.restored", restored, was_revoked_by=record.revoked_by, was_reason=record.revoke_reason
            ),
        )

    record = await change_token(context, org, team, _match(request, "id"), restore)
    return await token_response(runtime, record)


@endpoint(
    "DELETE",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}",
    "Delete a revoked or expired token (409 while it is active: revoke it first)",
    None,
    {204: None, 404: schema.ERROR, 409: schema.ERROR},
)
async def delete_token(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    runtime = context.runtime

    def delete(record: TokenRecord) -> TokenEdit:
        if record.status() == ACTIVE:
            raise api_error(409, "conflict", "token is active; revoke it first, then delete it")
        return TokenEdit(None, context.token_entry("token.deleted", record))

    record = await change_token(context, org, team, _match(request, "id"), delete)
    await runtime.store.unindex_token(record)  # the record first, then the index entries (the service account's too)
    return web.Response(status=204, headers={"X-Request-Id": context.request_id})


def _key_id_in_slot_of(key_id: str) -> str:
    """A fresh random key id whose record is in the same cluster slot as `key_id`'s, so that a
    rotation creates the successor and retires the old token in one script (~16k draws of a
    public id; only in a cluster)."""

    def slot(kid: str) -> int:
        return binascii.crc_hqx(kid.encode(), 0) % 16384  # the record key's hash tag is the id

    assert Keys.token(key_id).endswith("{" + key_id + "}")
    target = slot(key_id)
    space = len(BASE62) ** KEY_ID_LEN
    while True:
        pool = os.urandom(10 * 1024)
        for start in range(0, len(pool), 10):
            number = int.from_bytes(pool[start : start + 10], "big") % space
            digits = []
            for _ in range(KEY_ID_LEN):
                number, rem = divmod(number, 62)
                digits.append(BASE62[rem])
            kid = "".join(digits)
            if slot(kid) == target:
                return kid


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}/rotate",
    "Issue a replacement with the same name, description, scopes, constraints, CIDRs and service "
    "account; the old token is revoked now, or after grace_period. Atomic: the replacement exists "
    "only if the old token was active and not already rotated when it was retired",
    schema.TOKEN_ROTATE,
    {201: schema.TOKEN_ROTATED, 404: schema.ERROR, 409: schema.ERROR},
)
async def rotate_token(request: web.Request) -> web.Response:
    context, org, team_name = await team_request(request)
    runtime = context.runtime
    raw = await request.read()
    body = await read_body(request, schema.TOKEN_ROTATE) if raw.strip() else {}
    old = await _token_or_404(runtime, org, team_name, _match(request, "id"))
    _check_rotatable(old)  # early, before hashing a secret for nothing; decided again below
    grace = 0.0
    if "grace_period" in body:
        grace = _duration(body["grace_period"], "grace_period")
        if grace > MAX_GRACE:
            raise api_error(
                400, "invalid_request", f"grace_period: at most {format_duration(MAX_GRACE)}", "grace_period"
            )
    issued = time.time()
    expiry_body: dict[str, Any] = {k: body[k] for k in ("expires_in", "expires_at") if k in body}
    expires_at = _expiry(runtime, expiry_body, issued)
    principal = context.principal_required
    expires_at = grant_expiry(principal, runtime, expiry_body, issued)
    check_grant(
        principal,
        team=team_name,
        scopes=old.scopes,
        constraints=old.constraints,
        allowed_cidrs=old.allowed_cidrs,
        expires_at=expires_at,
    )
    by, level = actor(principal), actor_level(principal)
    plaintext, parsed = generate(runtime.settings.tokens.prefix)
    if runtime.store.cluster:
        head = f"{parsed.prefix}_{_key_id_in_slot_of(old.id)}{parsed.secret}"
        plaintext = head + checksum(head)
        parsed = parse_token(plaintext, frozenset({parsed.prefix}))
    secret_hash = await runtime.hasher.hash(parsed.secret)
    check_key = new_check_key()

    def rotate(current: TokenRecord) -> TokenEdit:
        _check_rotatable(current)
        new = TokenRecord(
            id=parsed.key_id,
            prefix=parsed.prefix,
            org=org,
            team=team_name,
            name=current.name,
            description=current.description,
            scopes=current.scopes,
            secret_hash=secret_hash,
            secret_check=secret_check(parsed.key_id, parsed.secret, check_key),
            check_key=check_key,
            created_at=issued,
            created_by=by,
            expires_at=expires_at,
            service_account=current.service_account,
            constraints=dict(current.constraints),
            allowed_cidrs=current.allowed_cidrs,
            replaces=current.id,
        )
        retired = replace(current.revoked(issued + grace, by, "rotated", level), replaced_by=new.id)
        entry = context.token_entry(
            "token.rotated", new, replaces=current.id, old_revoked_at=iso(retired.revoked_at)
        )
        return TokenEdit(retired, entry, successor=new)

    placeholder = replace(
        old, id=parsed.key_id, created_at=issued
    )  # the successor's index entries: org, team and service account, within the quota
    # QuotaExceeded: 409 (see DOMAIN_ERRORS)
    await runtime.store.index_token(placeholder, runtime.settings.tokens.max_per_team)
    try:
        retired = await change_token(context, org, team_name, old.id, rotate)
    except BaseException:
        # only if the successor was not created (a failure after the commit keeps its entries;
        # a store that can't answer leaves a dangling entry, which lists skip)
        with contextlib.suppress(Exception):
            if await runtime.store.get_token(parsed.key_id) is None:
                await runtime.store.unindex_token(placeholder)
        raise
    team = await runtime.store.get_team(org, team_name)
    new_record = await runtime.store.get_token(parsed.key_id)
    assert new_record is not None
    view = token_view(new_record, team, None)
    return json_response(
        {**view, "token": plaintext, "replaces": old.id, "replaced_revoked_at": iso(retired.revoked_at)},
        201,
        **{"Cache-Control": "no-store"},
    )


def _check_rotatable(old: TokenRecord) -> None:
    if old.replaced_by is not None:
        raise api_error(
            409,
            "conflict",
            f"token was already rotated (replaced by {old.replaced_by}); rotate the replacement instead",
        )
    if old.status() != ACTIVE:
        raise api_error(409, "conflict", f"token is {old.status()}; only an active token can be rotated")


MAX_GRACE = 30 * 86400.0


# -- service accounts ---------------------------------------------------------------------------
def sa_view(sa: ServiceAccountRecord, active_tokens: int) -> dict[str, Any]:
    return {
        "org": sa.org,
        "team": sa.team,
        "name": sa.name,
        "description": sa.description,
        "created_at": iso(sa.created_at),
        "created_by": sa.created_by,
        "active_tokens": active_tokens,
    }


ACTIVE_COUNT_CAP = 1000  # tokens of one service account examined per count (per call)


async def _active_tokens(runtime: Runtime, org: str, team: str, name: str, stop_at: int) -> tuple[int, bool]:
    """Active tokens of a service account, read from its own index in chunks: stops after
    `stop_at` active ones or ACTIVE_COUNT_CAP tokens examined. (count, exact)."""
    active, examined = 0, 0
    position: tuple[float, str] | None = None
    while True:
        page = await runtime.store.token_index_page(org, team, position, PAGE_CHUNK, service_account=name)
        now = time.time()
        for token, _ in await runtime.store.get_tokens_with_usage([m for m, _ in page.rows]):
            if token.service_account == name and token.status(now) == ACTIVE:
                active += 1
        examined += len(page.rows)
        if page.rows:
            position = (page.rows[-1][1], page.rows[-1][0])
        if not page.more:
            return active, True
        if active >= stop_at or examined >= ACTIVE_COUNT_CAP:
            return active, False


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/service-accounts",
    "Create a service account (a named non-human identity that groups tokens)",
    schema.SA_CREATE,
    {201: schema.SERVICE_ACCOUNT, 404: schema.ERROR, 409: schema.ERROR},
)
async def create_service_account(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    require_unconstrained(context.principal_required, "service accounts")
    body = await read_body(request, schema.SA_CREATE)
    await _team_or_404(context.runtime, org, team)
    sa = ServiceAccountRecord(
        org, team, body["name"], body.get("description", ""), time.time(), actor(context.principal_required)
    )
    entry = context.entry("service_account.created", org=org, team=team, service_account=sa.name)
    await context.still_authorized()
    await context.runtime.store.create_service_account(sa, entry)  # Conflict: 409 (see DOMAIN_ERRORS)
    context.committed(entry)
    return json_response(sa_view(sa, 0), 201)


@endpoint(
    "GET",
    "/v1/orgs/{org}/teams/{team}/service-accounts",
    "List a team's service accounts in name order, one page at a time, with their active token "
    "counts (exact up to 1000 tokens examined per account; active_tokens_exact says)",
    None,
    {200: schema.SA_LIST, 400: schema.ERROR, 404: schema.ERROR},
    query=PAGE_QUERY,
)
async def list_service_accounts(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    require_unconstrained(context.principal_required, "service accounts")
    limit, after = page_limit(request), name_cursor(request)
    await _team_or_404(context.runtime, org, team)
    names, sas, more = await context.runtime.store.service_account_page(org, team, after, limit)
    rows = []
    async with bulk_work(request):
        await context.runtime.store.ensure_service_account_indexes(org, team)
        for sa in sas:
            active, exact = await _active_tokens(context.runtime, org, team, sa.name, ACTIVE_COUNT_CAP)
            rows.append({**sa_view(sa, active), "active_tokens_exact": exact})
    return page_response("service_accounts", rows, encode_cursor("n", names[-1]) if more and names else None)


@endpoint(
    "DELETE",
    "/v1/orgs/{org}/teams/{team}/service-accounts/{name}",
    "Delete a service account that has no active tokens (409 otherwise)",
    None,
    {204: None, 404: schema.ERROR, 409: schema.ERROR},
)
async def delete_service_account(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    require_unconstrained(context.principal_required, "service accounts")
    name = _match(request, "name")
    runtime = context.runtime
    if await runtime.store.get_service_account(org, team, name) is None:
        raise api_error(404, "not_found", f"service account {name!r} does not exist in team {team!r}")
    async with bulk_work(request):
        await runtime.store.ensure_service_account_indexes(org, team)
        active, exact = await _active_tokens(runtime, org, team, name, 1)
    if active:
        raise api_error(
            409,
            "conflict",
            f"service account {name!r} has active tokens; revoke them first",
        )
    if not exact:
        raise api_error(
            409,
            "conflict",
            f"service account {name!r} has more than {ACTIVE_COUNT_CAP} tokens to check; "
            "delete its revoked and expired tokens first",
        )
    entry = context.entry("service_account.deleted", org=org, team=team, service_account=name)
    await context.still_authorized()
    await runtime.store.delete_service_account(org, team, name, entry)
    context.committed(entry)
    return web.Response(status=204, headers={"X-Request-Id": context.request_id})


# -- audit and leaks --------------------------------------------------------------------------------
AUDIT_SCAN_BUDGET = 5000  # stream entries one call examines (in chunks of AUDIT_CHUNK)
AUDIT_CHUNK = 500
AUDIT_MAX_LIMIT = 1000
_STREAM_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@endpoint(
    "GET",
    "/v1/audit",
    "Recent audit events of the caller's org (a team admin sees its own team's), newest first, "
    "one page at a time: a page examines at most 5000 stream entries, so with filters it may "
    "hold fewer than `limit` events; follow `next` until it is null",
    None,
    {200: schema.AUDIT_LIST, 400: schema.ERROR},
    query=(
        ("token_id", "string"),
        ("team", "string"),
        ("action", "string"),
        ("since", "string"),
        ("until", "string"),
        ("limit", "integer"),
        ("cursor", "string"),
    ),
)
async def read_audit(request: web.Request) -> web.Response:
    context = ctx(request)
    principal = await principal_of(request)
    org = principal.token.org
    query = request.query
    team = query.get("team")
    if principal.token.team is not None:
        team = team or principal.token.team
        require_team_admin(principal, org, team)
        require_unconstrained(principal, "audit events")
    else:
        require_org_admin(principal, org)
    limit = page_limit(request, maximum=AUDIT_MAX_LIMIT)
    start, end = "-", "+"
    cursor: str | None = end
    for field in ("since", "until"):
        if field in query:
            millis = max(int(_time_or_ago(query[field], field) * 1000), 0)  # ids start at 0
            if field == "since":
                start = f"{millis}-0"
            else:
                end = f"{millis}-18446744073709551615"
    cursor_parts = _cursor_parts(request, 2)
    if cursor_parts is not None:
        kind, last_seen = cursor_parts
        if kind != "a" or not _STREAM_ID_RE.fullmatch(last_seen) or max(_parse_stream_id(last_seen)) >= 2**64:
            raise _bad_cursor()
        cursor = _stream_id_before(last_seen)
        if cursor is not None and end != "+" and _parse_stream_id(end) < _parse_stream_id(cursor):
            cursor = end
    elif end != "+":
        cursor = end
    wanted = {k: query[k] for k in ("token_id", "action") if k in query}
    events: list[dict[str, Any]] = []
    scanned = 0
    last: str | None = None  # the oldest entry examined
    more = cursor is not None
    async with bulk_work(request):
        while more and len(events) < limit and scanned < AUDIT_SCAN_BUDGET:
            assert cursor is not None
            page = await context.runtime.store.read_audit(start, cursor, count=AUDIT_CHUNK)
            more = len(page) == AUDIT_CHUNK
            for i, (stream_id, event) in enumerate(page):
                last, scanned = stream_id, scanned + 1
                if not _audit_visible(event, org, team):
                    continue
                if any(event.get(k) != v for k, v in wanted.items()):
                    continue
                events.append({"id": stream_id, "time": iso(event.get("ts")), **_audit_seen_from(event, org)})
                if len(events) >= limit:
                    more = more or i < len(page) - 1
                    break
            if last is not None:
                cursor = _stream_id_before(last)
                more = more and cursor is not None
    next_cursor = encode_cursor("a", last) if more and last is not None else None
    return json_response({"events": events, "next": next_cursor})


def _audit_visible(event: dict[str, Any], org: str, team: str | None) -> bool:
    """An event is about its subject (org, team) and made by its actor (actor_org, actor_team):
    each pair is matched whole. A leak report crosses orgs, so subject and actor can be in
    different orgs (or teams of the same name): matching org on one side and team on the
    other would show a team another team's events."""
    for event_org, event_team in (
        (event.get("org"), event.get("team")),
        (event.get("actor_org"), event.get("actor_team")),
    ):
        if event_org == org and (team is None or event_team == team):
            return True
    return False


_SUBJECT_FIELDS = ("org", "team", "token_name", "service_account")
_ACTOR_FIELDS = ("actor_id", "actor_name", "actor_org", "actor_team", "client_ip", "request_id")


def _audit_seen_from(event: dict[str, Any], org: str) -> dict[str, Any]:
    """`event` as a reader in `org` may see it: nothing crosses orgs. The side of a cross-org
    event (a leak report) that is in another org shows no names, addresses or ids beyond the
    token id the reporter already holds."""
    if event.get("org") not in (org, None):
        event = {k: v for k, v in event.items() if k not in _SUBJECT_FIELDS}
    if event.get("actor_org") not in (org, None):
        event = {k: v for k, v in event.items() if k not in _ACTOR_FIELDS}
    return event


def _parse_stream_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


def _stream_id_before(stream_id: str) -> str | None:
    """The greatest stream id below `stream_id` (None: there is none)."""
    ms, _, seq = stream_id.partition("-")
    if int(seq) > 0:
        return f"{ms}-{int(seq) - 1}"
    if int(ms) > 0:
        return f"{int(ms) - 1}-18446744073709551615"
    return None


def _time_or_ago(text: str, field: str) -> float:
    """An RFC 3339 time, or a duration meaning that long ago (`since=1h`)."""
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        return parse_time(text, field)
    except OverflowError:
        raise api_error(400, "invalid_request", f"{field}: {text!r} is too long ago", field) from None


@endpoint(
    "POST",
    "/v1/leaks",
    "Report leaked plaintext tokens (at most 100 per call): each valid one is revoked at once and "
    "audited as token.leaked; `throttled` results (the failed-verification throttle is empty) "
    "should be reported again after Retry-After",
    schema.LEAKS,
    {200: schema.LEAKS_RESULT},
)
async def report_leaks(request: web.Request) -> web.Response:
    context = ctx(request)
    principal = await principal_of(request)
    if not (principal.can(parse_scope(ADMIN_ORG)) or principal.can(parse_scope(ADMIN_TEAM))):
        raise _forbid(f"token lacks required permission: {ADMIN_TEAM}", ADMIN_TEAM)
    body = await read_body(request, schema.LEAKS)
    runtime = context.runtime
    results = []
    for text in body["tokens"]:
        results.append(await _revoke_leaked(context, runtime, text))
    if any(r["result"] == "throttled" for r in results):
        return json_response({"results": results}, 200, **{"Retry-After": "1"})
    return json_response({"results": results})


async def _revoke_leaked(context: AdminContext, runtime: Runtime, text: str) -> dict[str, Any]:
    """Holding the plaintext is the authority to kill it, whichever org it belongs to.
    The secret is proven as at the gateway (`Authenticator.prove`): a wrong secret that fails
    the cheap secret check costs no argon2, and failed verifications drain the same failure
    throttle as requests do; a report the throttle defers answers `throttled` (retry)."""
    try:
        parsed = parse_token(text, runtime.settings.tokens.accepted_prefixes)
        proven = await runtime.authenticator.prove(parsed, bind_prefix=False)
    except TokenFormatError:
        return {"token": _redacted(text), "result": "not_a_token"}
    except Throttled:
        return {"token": parsed.display_prefix, "result": "throttled"}
    # the revocation itself works on the store's current record, as an admin revoke does
    record = await runtime.store.get_token(parsed.key_id) if proven is not None else None
    if record is None:
        return {"token": parsed.display_prefix, "result": "unknown"}
    principal = context.principal_required
    by, level = actor(principal), actor_level(principal)
    outcome = "already_revoked"

    def leaked(current: TokenRecord) -> TokenEdit | None:
        nonlocal outcome
        if current.revoke_reason == "leaked":
            outcome = "already_revoked"
            return None
        already = current.status() == REVOKED
        outcome = "already_revoked" if already else "revoked"
        revoked_at = current.revoked_at if already and current.revoked_at is not None else time.time()
        # final: whoever reported it, no restore brings a leaked secret back
        updated = current.revoked(revoked_at, by, "leaked", level)
        return TokenEdit(updated, context.token_entry("token.leaked", updated, was_revoked=already))

    result = await runtime.store.change_token(parsed.key_id, leaked, context.fence())
    if result is None:  # deleted meanwhile
        return {"token": parsed.display_prefix, "result": "unknown"}
    _, edit = result
    if edit is not None:
        context.committed(edit.audit)
    return {"token": parsed.display_prefix, "result": outcome}


def _redacted(text: str) -> str:
    return (text[:10] + "…") if len(text) > 10 else "…"


@endpoint("GET", "/v1/whoami", "Who the calling token is", None, {200: schema.WHOAMI})
async def whoami(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    token = principal.token
    return json_response(
        {
            "id": token.id,
            "name": token.name,
            "org": token.org,
            "team": token.team,
            "service_account": token.service_account,
            "scopes": format_scopes(token.scopes),
            "effective_scopes": format_scopes(principal.effective_scopes),
            "expires_at": iso(token.expires_at),
        }
    )


# -- OpenAPI, health -------------------------------------------------------------------------
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in ep.path.split("/")
            if part.startswith("{")
        ]
        params += [_query_parameter(ep, name, kind) for name, kind in ep.query]
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": ep.handler.__name__,
            "parameters": params,
            "responses": {
                str(code): (
                    {
                        "description": "ok" if code < 400 else "error",
                        "content": {"application/json": {"schema": _openapi_schema(s)}},
                    }
                    if s is not None
                    else {"description": "no content" if code == 204 else "ok"}
                )
                for code, s in ep.responses.items()
            },
        }
        if ep.auth:
            op["security"] = [{"bearer": []}]
            op["responses"].setdefault("401", _error_ref())
            op["responses"].setdefault("403", _error_ref())
            op["responses"].setdefault("503", _error_ref())  # store unavailable
        if ep.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _openapi_schema(ep.request)}},
            }
            op["responses"].setdefault("400", _error_ref())
            op["responses"].setdefault("413", _error_ref())  # body over MAX_BODY
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "tokenward admin API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _query_parameter(ep: Endpoint, name: str, kind: str) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
    if name == "limit":
        maximum = AUDIT_MAX_LIMIT if ep.handler is read_audit else MAX_PAGE_LIMIT
        param["schema"] = {"type": "integer", "minimum": 1, "maximum": maximum, "default": DEFAULT_PAGE_LIMIT}
        param["description"] = f"rows per page, 1..{maximum} (400 beyond); the response's `next` continues"
    elif name == "cursor":
        param["description"] = "the `next` of the previous page (opaque); omit for the first page"
    return param


def _error_ref() -> dict[str, Any]:
    return {"description": "error", "content": {"application/json": {"schema": schema.ERROR}}}


def _openapi_schema(s: schema.Schema) -> schema.Schema:
    """`s` as published: `validate()` full-matches a `pattern`, JSON Schema only searches for
    it, so each pattern is anchored to say what the validator accepts."""
    out: schema.Schema = {}
    for key, value in s.items():
        if key == "pattern" and isinstance(value, str):
            out[key] = f"^(?:{value})$"
        elif isinstance(value, dict):
            out[key] = _openapi_schema(value)
        else:
            out[key] = value
    return out


@endpoint("GET", "/v1/openapi.json", "This document", None, {200: None}, auth=False)
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


@endpoint("GET", "/metrics", "Prometheus metrics", None, {200: None}, auth=False)
async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    body = ctx(request).runtime.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@endpoint("GET", "/healthz", "Process is alive", None, {200: None}, auth=False)
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@endpoint(
    "GET", "/readyz", "Store reachable and config loaded", None, {200: None, 503: schema.ERROR}, auth=False
)
async def readyz(request: web.Request) -> web.Response:
    runtime = ctx(request).runtime
    try:
        await runtime.store.ping()
    except StoreUnavailable:
        return error_response(api_error(503, "not_ready", "store unreachable"), ctx(request).request_id)
    return json_response(
        {"status": "ready", "routes": len(runtime.settings.routes), "store": store_details(runtime)}
    )


def store_details(runtime: Runtime) -> dict[str, Any]:
    """/readyz's word on the store: its persistence, and whether a write confirmed to an
    admin survives a crash of the store (with the reason when it may not)."""
    store = runtime.store
    appendonly = store.persistence.startswith("aof") and store.persistence != "aof on some masters only"
    warning = store.durability_warning
    if not appendonly:
        warning = "persistence is not append-only on every master: a crash of the store loses recent writes"
    details: dict[str, Any] = {"persistence": store.persistence, "crash_safe_writes": warning is None}
    if warning is not None:
        details["warning"] = warning
    return details


# -- the app ---------------------------------------------------------------------------------
@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    context = AdminContext(request)
    request[CONTEXT] = context
    try:
        response = await handler(request)
    except Refusal as refusal:
        if refusal.step is not None:  # a decision step refused it (not a validation error)
            _audit_denied(context, refusal)
        return error_response(refusal, context.request_id)
    except DOMAIN_ERRORS as exc:
        return error_response(domain_refusal(exc), context.request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(api_error(exc.status, _http_error_code(exc.status), exc.reason), context.request_id)
    except Exception:
        log.exception("admin request failed", request_id=context.request_id)
        return error_response(api_error(500, "internal_error", "internal error"), context.request_id)
    response.headers.setdefault("X-Request-Id", context.request_id)
    return response


def _quota_message(exc: QuotaExceeded) -> str:
    where = f"team {exc.team!r}" if exc.team is not None else f"org {exc.org!r} (org-level tokens)"
    return (
        f"{where} holds {exc.held} tokens; the limit is {exc.limit} (tokens.max_per_team): "
        "delete revoked or expired tokens first"
    )


# The store's domain errors as the admin API answers them: the one table of the HTTP edge.
DOMAIN_ERRORS_TABLE: dict[type[Exception], Callable[[Any], Refusal]] = {
    StoreUnavailable: lambda exc: api_error(503, "store_unavailable", "token store unavailable; retry shortly"),
    Conflict: lambda exc: api_error(409, "conflict", str(exc)),
    QuotaExceeded: lambda exc: api_error(409, "quota_exceeded", _quota_message(exc)),
}
DOMAIN_ERRORS: tuple[type[Exception], ...] = tuple(DOMAIN_ERRORS_TABLE)


def domain_refusal(exc: Exception) -> Refusal:
    """The refusal the table gives a domain error (its class or nearest listed base)."""
    kind = next(kind for kind in type(exc).__mro__ if kind in DOMAIN_ERRORS_TABLE)
    return DOMAIN_ERRORS_TABLE[kind](exc)


def _audit_denied(context: AdminContext, denied: Refusal) -> None:
    principal = context.principal
    context.runtime.audit.emit(
        "admin.denied",
        method=context.request.method,
        path=redact(context.request.path),
        status=denied.status,
        step=denied.step,
        reason=denied.message,
        client_ip=context.request.remote,
        request_id=context.request_id,
        token_id=principal.token.id if principal else None,
        org=principal.token.org if principal else None,
        team=principal.token.team if principal else None,
    )


def _http_error_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(status, "http_error")


def create_admin_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_middleware])
    app[RUNTIME] = runtime
    app[BULK_WORK] = asyncio.Semaphore(1)
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, ep.handler)
    return app


__all__ = ["ACTIVE", "ENDPOINTS", "create_admin_app", "issue_token", "openapi_document"]
