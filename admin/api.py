"""The admin HTTP API (`/v1`, on the admin listener) over the same store as the gateway.

Callers authenticate with a Bearer token through the gateway's own `Authenticator`.
`admin:org` manages every team of its org; `admin:team` manages only its own team (and
only while the team's permission set holds `admin:team`). Every change is durable before
the response, announced to every gateway process, and audited with its actor.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from admin import schema
from gateway.app import REALM, RUNTIME, Runtime, error_response, request_id_for
from gateway.decision import Denied, Principal, bearer_token
from gateway.durations import format_duration, parse_duration
from gateway.records import ACTIVE, EXPIRED, REVOKED, ServiceAccountRecord, TeamRecord, TokenRecord
from gateway.scopes import (
    ADMIN_ORG,
    ADMIN_TEAM,
    ScopeError,
    effective_scopes,
    format_scopes,
    ineffective_scopes,
    parse_scope,
    parse_scopes,
)
from gateway.store import Conflict, StoreUnavailable
from gateway.tokens import KEY_ID_RE, TokenFormatError, generate, secret_check
from gateway.tokens import parse as parse_token

log = structlog.get_logger("tokenward.admin")
MAX_BODY = 64 * 1024
_ORG_RE = schema.SLUG


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field


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
        raise ApiError(400, "invalid_request", f"{field}: {text!r} is not an RFC 3339 time", field) from None
    if parsed.tzinfo is None:
        raise ApiError(400, "invalid_request", f"{field}: needs a time zone (e.g. 'Z')", field)
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
    raw = await request.read()
    if not raw:
        raise ApiError(400, "invalid_request", "request body is required (JSON object)", "body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_request", "request body is not valid JSON", "body") from None
    try:
        schema.validate(body_schema, data)
    except schema.ValidationError as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None
    return data  # type: ignore[no-any-return]


# -- authorization --------------------------------------------------------------------
def actor(principal: Principal) -> str:
    return f"token:{principal.token.id}"


def _forbid(message: str, scope: str | None = None) -> Denied:
    return Denied(
        403, "insufficient_scope" if scope else "forbidden", "scope" if scope else "org", message, scope
    )


def require_org_admin(principal: Principal, org: str) -> None:
    if principal.token.org != org:
        raise _forbid("token org does not match resource org")
    if not principal.can(parse_scope(ADMIN_ORG)):
        raise _forbid(f"token lacks required permission: {ADMIN_ORG}", ADMIN_ORG)


def require_team_admin(principal: Principal, org: str, team: str) -> None:
    """Org admins manage every team of their org; team admins only their own."""
    token = principal.token
    if token.org != org:
        raise _forbid("token org does not match resource org")
    if principal.can(parse_scope(ADMIN_ORG)):
        return
    if token.team != team:
        raise Denied(403, "forbidden", "team", "token is not in the same team as the resource")
    if not principal.can(parse_scope(ADMIN_TEAM)):
        raise _forbid(f"token lacks required permission: {ADMIN_TEAM}", ADMIN_TEAM)


class AdminContext:
    """Per-request state: the runtime, the caller and the request id."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.runtime: Runtime = request.app[RUNTIME]
        self.request_id = request_id_for(request)
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

    def token_event(self, action: str, record: TokenRecord, **fields: Any) -> None:
        """An admin event about one token, naming it and its org, team and service account."""
        self.audit(
            action,
            org=record.org,
            team=record.team,
            token_id=record.id,
            token_name=record.name,
            service_account=record.service_account,
            **fields,
        )

    def audit(self, action: str, **fields: Any) -> None:
        assert self.principal is not None
        self.runtime.audit.emit(
            action,
            actor_id=self.principal.token.id,
            actor_name=self.principal.token.name,
            actor_org=self.principal.token.org,
            actor_team=self.principal.token.team,
            client_ip=self.request.remote,
            request_id=self.request_id,
            **fields,
        )


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
        raise ApiError(404, "not_found", f"team {team!r} does not exist in org {org!r}")
    return record


async def _token_or_404(runtime: Runtime, org: str, team: str, key_id: str) -> TokenRecord:
    record = await runtime.store.get_token(key_id) if KEY_ID_RE.match(key_id) else None
    if record is None or record.org != org or record.team != team:
        raise ApiError(404, "not_found", f"token {key_id!r} does not exist in team {team!r}")
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
    }


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
    if parse_scope(ADMIN_ORG) in permissions:
        raise ApiError(
            400, "invalid_request", "permissions: admin:org cannot be held by a team", "permissions"
        )
    team = TeamRecord(org, body["name"], permissions, time.time(), actor(principal))
    runtime = ctx(request).runtime
    try:
        await runtime.store.create_team(team)
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    ctx(request).audit("team.created", org=org, team=team.name, permissions=format_scopes(permissions))
    return json_response(team_view(team), 201)


@endpoint(
    "GET",
    "/v1/orgs/{org}/teams",
    "List the teams of an org (a team admin sees its own)",
    None,
    {200: schema.TEAM_LIST},
)
async def list_teams(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    org = _match(request, "org")
    runtime = ctx(request).runtime
    if principal.token.team is not None and principal.token.org == org:
        require_team_admin(principal, org, principal.token.team)
        team = await runtime.store.get_team(org, principal.token.team)
        teams = [team] if team else []
    else:
        require_org_admin(principal, org)
        teams = await runtime.store.list_teams(org)
    return json_response({"teams": [team_view(t) for t in teams]})


@endpoint("GET", "/v1/orgs/{org}/teams/{team}", "Get a team", None, {200: schema.TEAM, 404: schema.ERROR})
async def get_team(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    org, team = _match(request, "org"), _match(request, "team")
    require_team_admin(principal, org, team)
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
    if parse_scope(ADMIN_ORG) in permissions:
        raise ApiError(
            400, "invalid_request", "permissions: admin:org cannot be held by a team", "permissions"
        )
    runtime = ctx(request).runtime
    team = await _team_or_404(runtime, org, team_name)
    updated = replace(team, permissions=permissions)
    await runtime.store.put_team(updated)
    ctx(request).audit(
        "team.permissions_changed",
        org=org,
        team=team_name,
        before=format_scopes(team.permissions),
        after=format_scopes(permissions),
    )
    return json_response(team_view(updated))


def _scopes(texts: list[str], field: str) -> tuple[Any, ...]:
    try:
        return parse_scopes(texts)
    except ScopeError as exc:
        raise ApiError(400, "invalid_request", f"{field}: {exc}", field) from None


# -- tokens -------------------------------------------------------------------------------
def _expiry(runtime: Runtime, body: dict[str, Any], issued: float) -> float | None:
    policy = runtime.settings.tokens
    if "expires_in" in body and "expires_at" in body:
        raise ApiError(400, "invalid_request", "give expires_in or expires_at, not both", "expires_in")
    if "expires_in" in body:
        ttl: float | None = _duration(body["expires_in"], "expires_in")
        field = "expires_in"
    elif "expires_at" in body:
        at = parse_time(body["expires_at"], "expires_at")
        ttl = at - issued
        field = "expires_at"
        if ttl <= 0:
            raise ApiError(400, "invalid_request", "expires_at: is in the past", field)
    else:
        ttl = policy.default_ttl
        field = "expires_in"
    if ttl is not None and ttl <= 0:
        raise ApiError(400, "invalid_request", f"{field}: must be in the future", field)
    if policy.max_ttl is not None and (ttl is None or ttl > policy.max_ttl + 1):
        raise ApiError(
            400,
            "invalid_request",
            f"{field}: exceeds the maximum token lifetime of {format_duration(policy.max_ttl)} "
            "(tokens.max_ttl)",
            field,
        )
    if ttl is not None and issued + ttl > MAX_EXPIRES_AT:
        raise ApiError(400, "invalid_request", f"{field}: is after {iso(MAX_EXPIRES_AT)}", field)
    return None if ttl is None else issued + ttl


def _duration(text: str, field: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{field}: {exc}", field) from None
    except OverflowError:  # int * unit overflows a float
        raise ApiError(400, "invalid_request", f"{field}: {text!r} is too long", field) from None


# The latest expiry a token can have: its views print it as an RFC 3339 time.
MAX_EXPIRES_AT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def _cidrs(texts: list[str]) -> tuple[str, ...]:
    result = []
    for i, text in enumerate(texts):
        try:
            result.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            field = f"allowed_cidrs[{i}]"
            raise ApiError(400, "invalid_request", f"{field}: {text!r} is not a CIDR", field) from None
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
) -> tuple[str, TokenRecord]:
    """Mint a token: hash off the event loop, store durably, return the plaintext once."""
    plaintext, parsed = generate(runtime.settings.tokens.prefix)
    record = TokenRecord(
        id=parsed.key_id,
        prefix=parsed.prefix,
        org=org,
        team=team,
        name=name,
        description=description,
        scopes=scopes,
        secret_hash=await runtime.hasher.hash(parsed.secret),
        secret_check=secret_check(parsed.key_id, parsed.secret),
        created_at=time.time(),
        created_by=created_by,
        expires_at=expires_at,
        service_account=service_account,
        constraints=constraints or {},
        allowed_cidrs=allowed_cidrs,
        replaces=replaces,
    )
    await runtime.store.create_token(record)
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
    if parse_scope(ADMIN_ORG) in scopes:
        raise ApiError(
            400,
            "invalid_request",
            "scopes: admin:org cannot be granted to a team token",
            "scopes",
        )
    service_account = body.get("service_account")
    if service_account is not None:
        sa = await runtime.store.get_service_account(org, team_name, service_account)
        if sa is None:
            raise ApiError(
                400,
                "invalid_request",
                f"service_account: {service_account!r} does not exist in team {team_name!r}",
                "service_account",
            )
    constraints = body.get("constraints") or {}
    for key in constraints:
        if key in ("org", "team") or not _is_name(key):
            raise ApiError(
                400,
                "invalid_request",
                f"constraints.{key}: constraint names match [a-z][a-z0-9_-]* and are not org or team",
                f"constraints.{key}",
            )
    issued = time.time()
    plaintext, record = await issue_token(
        runtime,
        org=org,
        team=team_name,
        name=body["name"],
        description=body.get("description", ""),
        scopes=scopes,
        created_by=actor(principal),
        expires_at=_expiry(runtime, body, issued),
        service_account=service_account,
        constraints=constraints,
        allowed_cidrs=_cidrs(body.get("allowed_cidrs", [])),
    )
    view = token_view(record, team, None)
    ctx(request).token_event("token.created", record, scopes=view["scopes"], expires_at=view["expires_at"])
    return json_response({**view, "token": plaintext}, 201, **{"Cache-Control": "no-store"})


def _is_name(text: str) -> bool:
    return bool(re.fullmatch(r"[a-z][a-z0-9_-]*", text))


async def team_request(request: web.Request) -> tuple[AdminContext, str, str]:
    """Authenticate, and require admin rights over the team named in the path."""
    context = ctx(request)
    principal = await principal_of(request)
    org, team = _match(request, "org"), _match(request, "team")
    require_team_admin(principal, org, team)
    return context, org, team


async def token_response(runtime: Runtime, record: TokenRecord, **extra: Any) -> web.Response:
    team = await runtime.store.get_team(record.org, record.team) if record.team else None
    view = token_view(record, team, await runtime.store.last_used(record.id))
    return json_response({**view, **extra})


_STATUSES = (ACTIVE, REVOKED, EXPIRED)


@endpoint(
    "GET",
    "/v1/orgs/{org}/teams/{team}/tokens",
    "List a team's tokens (never a hash or secret); deleted tokens are gone, revoked and "
    "expired ones stay with their status",
    None,
    {200: schema.TOKEN_LIST, 400: schema.ERROR, 404: schema.ERROR},
    query=(("status", "string"), ("expiring_within", "string"), ("service_account", "string")),
)
async def list_tokens(request: web.Request) -> web.Response:
    context, org, team_name = await team_request(request)
    runtime = context.runtime
    status = request.query.get("status")
    if status is not None and status not in _STATUSES:
        raise ApiError(400, "invalid_request", f"status: expected one of {', '.join(_STATUSES)}", "status")
    within: float | None = None
    if "expiring_within" in request.query:
        within = _duration(request.query["expiring_within"], "expiring_within")
    sa = request.query.get("service_account")
    team = await _team_or_404(runtime, org, team_name)
    ids = await runtime.store.list_token_ids(org, team_name)
    now = time.time()
    rows = []
    for token, used in await runtime.store.get_tokens_with_usage(ids):
        if status is not None and token.status(now) != status:
            continue
        if within is not None and (
            token.status(now) != ACTIVE or token.expires_at is None or token.expires_at > now + within
        ):
            continue
        if sa is not None and token.service_account != sa:
            continue
        rows.append(token_view(token, team, used))
    return json_response({"tokens": rows})


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
        raise ApiError(400, "invalid_request", "request body is not valid JSON", "body") from None
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
                raise ApiError(
                    400,
                    "invalid_request",
                    f"{fixed}: a token's {fixed.replace('_', ' ')} cannot be changed in place; "
                    "rotate the token (POST .../rotate) or issue a new one",
                    fixed,
                )
    try:
        schema.validate(schema.TOKEN_UPDATE, data)
    except schema.ValidationError as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None
    assert isinstance(data, dict)
    if not data:
        raise ApiError(400, "invalid_request", "nothing to change: give name and/or description", "body")
    runtime = context.runtime
    record = await _token_or_404(runtime, org, team, _match(request, "id"))
    record = replace(
        record, name=data.get("name", record.name), description=data.get("description", record.description)
    )
    await runtime.store.put_token(record)
    context.token_event("token.updated", record)
    return await token_response(runtime, record)


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}/revoke",
    "Revoke a token; its next request fails with 401",
    None,
    {200: schema.TOKEN, 404: schema.ERROR},
)
async def revoke_token(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    runtime = context.runtime
    record = await _token_or_404(runtime, org, team, _match(request, "id"))
    if record.status() != REVOKED:  # also ends a rotation grace period at once
        record = record.revoked(time.time(), actor(context.principal_required), record.revoke_reason)
        await runtime.store.put_token(record)
        context.token_event("token.revoked", record)
    return await token_response(runtime, record)


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}/restore",
    "Restore a revoked token that has not expired",
    None,
    {200: schema.TOKEN, 404: schema.ERROR, 409: schema.ERROR},
)
async def restore_token(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    runtime = context.runtime
    record = await _token_or_404(runtime, org, team, _match(request, "id"))
    now = time.time()
    if record.expires_at is not None and record.expires_at <= now:
        raise ApiError(409, "conflict", "token has expired and cannot be restored; issue a new token")
    if record.status(now) != REVOKED:
        raise ApiError(409, "conflict", "token is not revoked")
    if record.revoke_reason == "leaked":
        raise ApiError(409, "conflict", "token was reported leaked and cannot be restored; issue a new token")
    if record.replaced_by is not None:
        raise ApiError(
            409, "conflict", f"token was rotated (replaced by {record.replaced_by}) and cannot be restored"
        )
    record = record.restored()
    await runtime.store.put_token(record)
    context.token_event("token.restored", record)
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
    record = await _token_or_404(runtime, org, team, _match(request, "id"))
    if record.status() == ACTIVE:
        raise ApiError(409, "conflict", "token is active; revoke it first, then delete it")
    await runtime.store.delete_token(record)
    context.token_event("token.deleted", record)
    return web.Response(status=204, headers={"X-Request-Id": context.request_id})


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens/{id}/rotate",
    "Issue a replacement with the same name, description, scopes, constraints, CIDRs and service "
    "account; the old token is revoked now, or after grace_period",
    schema.TOKEN_ROTATE,
    {201: schema.TOKEN_ROTATED, 404: schema.ERROR, 409: schema.ERROR},
)
async def rotate_token(request: web.Request) -> web.Response:
    context, org, team_name = await team_request(request)
    runtime = context.runtime
    raw = await request.read()
    body = await read_body(request, schema.TOKEN_ROTATE) if raw.strip() else {}
    old = await _token_or_404(runtime, org, team_name, _match(request, "id"))
    if old.replaced_by is not None or old.revoked_at is not None:
        raise ApiError(
            409,
            "conflict",
            f"token was already rotated (replaced by {old.replaced_by}); rotate the replacement instead",
        )
    if old.status() != ACTIVE:
        raise ApiError(409, "conflict", f"token is {old.status()}; only an active token can be rotated")
    grace = 0.0
    if "grace_period" in body:
        grace = _duration(body["grace_period"], "grace_period")
        if grace > MAX_GRACE:
            raise ApiError(
                400, "invalid_request", f"grace_period: at most {format_duration(MAX_GRACE)}", "grace_period"
            )
    issued = time.time()
    expiry_body: dict[str, Any] = {k: body[k] for k in ("expires_in", "expires_at") if k in body}
    principal = context.principal_required
    plaintext, new = await issue_token(
        runtime,
        org=org,
        team=team_name,
        name=old.name,
        description=old.description,
        scopes=old.scopes,
        created_by=actor(principal),
        expires_at=_expiry(runtime, expiry_body, issued),
        service_account=old.service_account,
        constraints=dict(old.constraints),
        allowed_cidrs=old.allowed_cidrs,
        replaces=old.id,
    )
    retired = replace(old.revoked(issued + grace, actor(principal), "rotated"), replaced_by=new.id)
    await runtime.store.put_token(retired)
    context.token_event("token.rotated", new, replaces=old.id, old_revoked_at=iso(retired.revoked_at))
    team = await runtime.store.get_team(org, team_name)
    view = token_view(new, team, None)
    return json_response(
        {**view, "token": plaintext, "replaces": old.id, "replaced_revoked_at": iso(retired.revoked_at)},
        201,
        **{"Cache-Control": "no-store"},
    )


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


async def _active_tokens_by_sa(runtime: Runtime, org: str, team: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    ids = await runtime.store.list_token_ids(org, team)
    now = time.time()
    for token, _ in await runtime.store.get_tokens_with_usage(ids):
        if token.service_account and token.status(now) == ACTIVE:
            counts[token.service_account] = counts.get(token.service_account, 0) + 1
    return counts


@endpoint(
    "POST",
    "/v1/orgs/{org}/teams/{team}/service-accounts",
    "Create a service account (a named non-human identity that groups tokens)",
    schema.SA_CREATE,
    {201: schema.SERVICE_ACCOUNT, 404: schema.ERROR, 409: schema.ERROR},
)
async def create_service_account(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    body = await read_body(request, schema.SA_CREATE)
    await _team_or_404(context.runtime, org, team)
    sa = ServiceAccountRecord(
        org, team, body["name"], body.get("description", ""), time.time(), actor(context.principal_required)
    )
    try:
        await context.runtime.store.create_service_account(sa)
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    context.audit("service_account.created", org=org, team=team, service_account=sa.name)
    return json_response(sa_view(sa, 0), 201)


@endpoint(
    "GET",
    "/v1/orgs/{org}/teams/{team}/service-accounts",
    "List a team's service accounts with their active token counts",
    None,
    {200: schema.SA_LIST, 404: schema.ERROR},
)
async def list_service_accounts(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    await _team_or_404(context.runtime, org, team)
    counts = await _active_tokens_by_sa(context.runtime, org, team)
    sas = await context.runtime.store.list_service_accounts(org, team)
    return json_response({"service_accounts": [sa_view(sa, counts.get(sa.name, 0)) for sa in sas]})


@endpoint(
    "DELETE",
    "/v1/orgs/{org}/teams/{team}/service-accounts/{name}",
    "Delete a service account that has no active tokens (409 otherwise)",
    None,
    {204: None, 404: schema.ERROR, 409: schema.ERROR},
)
async def delete_service_account(request: web.Request) -> web.Response:
    context, org, team = await team_request(request)
    name = _match(request, "name")
    runtime = context.runtime
    if await runtime.store.get_service_account(org, team, name) is None:
        raise ApiError(404, "not_found", f"service account {name!r} does not exist in team {team!r}")
    active = (await _active_tokens_by_sa(runtime, org, team)).get(name, 0)
    if active:
        raise ApiError(
            409,
            "conflict",
            f"service account {name!r} has {active} active token(s); revoke them first",
        )
    await runtime.store.delete_service_account(org, team, name)
    context.audit("service_account.deleted", org=org, team=team, service_account=name)
    return web.Response(status=204, headers={"X-Request-Id": context.request_id})


# -- audit and leaks --------------------------------------------------------------------------------
AUDIT_SCAN_LIMIT = 100_000


@endpoint(
    "GET",
    "/v1/audit",
    "Recent audit events of the caller's org (a team admin sees its own team's), newest first",
    None,
    {200: schema.AUDIT_LIST, 400: schema.ERROR},
    query=(
        ("token_id", "string"),
        ("team", "string"),
        ("action", "string"),
        ("since", "string"),
        ("until", "string"),
        ("limit", "integer"),
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
    else:
        require_org_admin(principal, org)
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "invalid_request", "limit: expected an integer", "limit") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, "invalid_request", "limit: expected 1..1000", "limit")
    start, end = "-", "+"
    for field in ("since", "until"):
        if field in query:
            millis = max(int(_time_or_ago(query[field], field) * 1000), 0)  # ids start at 0
            if field == "since":
                start = f"{millis}-0"
            else:
                end = f"{millis}-18446744073709551615"
    wanted = {k: query[k] for k in ("token_id", "action") if k in query}
    events: list[dict[str, Any]] = []
    scanned = 0
    cursor = end
    while len(events) < limit and scanned < AUDIT_SCAN_LIMIT:
        page = await context.runtime.store.read_audit(start, cursor, count=1000)
        if not page:
            break
        for stream_id, event in page:
            if event.get("org") != org and event.get("actor_org") != org:
                continue
            if team is not None and team not in (event.get("team"), event.get("actor_team")):
                continue
            if any(event.get(k) != v for k, v in wanted.items()):
                continue
            events.append({"id": stream_id, "time": iso(event.get("ts")), **event})
            if len(events) >= limit:
                break
        scanned += len(page)
        last = page[-1][0]
        ms, _, seq = last.partition("-")
        cursor = f"{ms}-{int(seq) - 1}" if int(seq) > 0 else f"{int(ms) - 1}-18446744073709551615"
        if len(page) < 1000:
            break
    return json_response({"events": events})


def _time_or_ago(text: str, field: str) -> float:
    """An RFC 3339 time, or a duration meaning that long ago (`since=1h`)."""
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        return parse_time(text, field)
    except OverflowError:
        raise ApiError(400, "invalid_request", f"{field}: {text!r} is too long ago", field) from None


@endpoint(
    "POST",
    "/v1/leaks",
    "Report leaked plaintext tokens: each valid one is revoked at once and audited as token.leaked",
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
    return json_response({"results": results})


async def _revoke_leaked(context: AdminContext, runtime: Runtime, text: str) -> dict[str, Any]:
    """Holding the plaintext is the authority to kill it, whichever org it belongs to."""
    try:
        parsed = parse_token(text, runtime.settings.tokens.accepted_prefixes)
    except TokenFormatError:
        return {"token": _redacted(text), "result": "not_a_token"}
    record = await runtime.store.get_token(parsed.key_id)
    if record is None or not await runtime.hasher.verify(record.secret_hash, parsed.secret):
        return {"token": parsed.display_prefix, "result": "unknown"}
    if record.revoke_reason == "leaked":
        return {"token": parsed.display_prefix, "result": "already_revoked"}
    already = record.status() == REVOKED
    revoked_at = record.revoked_at if already and record.revoked_at is not None else time.time()
    record = record.revoked(revoked_at, actor(context.principal_required), "leaked")
    await runtime.store.put_token(record)
    context.token_event("token.leaked", record, was_revoked=already)
    return {"token": parsed.display_prefix, "result": "already_revoked" if already else "revoked"}


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
        params += [
            {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
            for name, kind in ep.query
        ]
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
        return json_response({"error": "not_ready", "message": "store unreachable"}, 503)
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
    except Denied as denied:
        _audit_denied(context, denied)
        return error_response(denied, context.request_id)
    except ApiError as exc:
        body: dict[str, Any] = {"error": exc.error, "message": exc.message, "request_id": context.request_id}
        if exc.field:
            body["field"] = exc.field
        return json_response(body, exc.status, **{"X-Request-Id": context.request_id})
    except StoreUnavailable:
        return json_response(
            {
                "error": "store_unavailable",
                "message": "token store unavailable; retry shortly",
                "request_id": context.request_id,
            },
            503,
            **{"Retry-After": "1"},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response(
            {"error": _http_error_code(exc.status), "message": exc.reason, "request_id": context.request_id},
            exc.status,
        )
    except Exception:
        log.exception("admin request failed", request_id=context.request_id)
        return json_response(
            {"error": "internal_error", "message": "internal error", "request_id": context.request_id}, 500
        )
    response.headers.setdefault("X-Request-Id", context.request_id)
    return response


def _audit_denied(context: AdminContext, denied: Denied) -> None:
    principal = context.principal
    context.runtime.audit.emit(
        "admin.denied",
        method=context.request.method,
        path=context.request.path,
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
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, ep.handler)
    return app


__all__ = ["ACTIVE", "ENDPOINTS", "REALM", "create_admin_app", "issue_token", "openapi_document"]
