"""The admin API's HTTP edge: each endpoint declares its authorization and its body once
(`Routes.__call__`), and `serve` enforces what it declares before the handler runs:
authenticate (the gateway's `Authenticator`), the declared query parameters (any other, or
one given twice, is a 400), the declared permission, the body read within
`limits.body_timeout` and validated against its schema. Errors become responses in one
place (`errors_middleware`): a `Refusal` as it is (audited as `admin.denied` when a decision
step refused it), a domain error through `DOMAIN_ERRORS_TABLE`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from tokenward import schema
from tokenward.actor import Actor
from tokenward.directory import Directory
from tokenward.echo import check_path, redact_message
from tokenward.gateway import legacy_keys
from tokenward.gateway.audit import redact
from tokenward.gateway.decision import Principal, TokenRefused, bearer_token, require_org, require_team
from tokenward.gateway.edge import error_response, request_id_for
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.runtime import RUNTIME, Runtime
from tokenward.gateway.store import QuotaExceeded
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.store_records import Conflict
from tokenward.rules import Invalid, NotFound
from tokenward.service import TokenService

log = structlog.get_logger("tokenward.admin")
MAX_BODY = 64 * 1024
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 500


def api_error(status: int, error: str, message: str, field: str | None = None) -> Refusal:
    """A request refused before any decision step (a bad body, a missing record, a state
    conflict): its JSON body names no `step`, and it is not audited as `admin.denied`."""
    return Refusal(status, error, None, message, field=field)


def json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


class Call:
    """One admin request: the runtime, the caller, its request id, its checked body."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.runtime: Runtime = request.app[RUNTIME]
        self.request_id = request_id_for(request, self.runtime.settings.trusted_proxies)
        self.principal: Principal | None = None
        self.body: dict[str, Any] = {}

    async def authenticate(self) -> Principal:
        token = bearer_token(self.request.headers.getall("Authorization", ()))
        # an imported key is never looked up here: it is a credential for the gateway's routes
        self.principal = await self.runtime.authenticator.authenticate(token, self.request.remote, imported=False)
        if self.principal.token.legacy:  # (defense in depth: such a record proves nothing here)
            raise Refusal(403, "forbidden", Step.TOKEN, legacy_keys.NOT_FOR_ADMIN)
        self.runtime.audit.mark_used(self.principal.token.id, time.time())
        return self.principal

    @property
    def caller(self) -> Principal:
        assert self.principal is not None, "an endpoint with a permission authenticates first"
        return self.principal

    @property
    def actor(self) -> Actor:
        return Actor.of(self.caller, self.request.remote, self.request_id)

    @property
    def tokens(self) -> TokenService:
        return TokenService(self.runtime)

    @property
    def directory(self) -> Directory:
        return Directory(self.runtime)

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def query(self) -> Any:
        return self.request.query

    def no_content(self) -> web.Response:
        return web.Response(status=204, headers={"X-Request-Id": self.request_id})


CALL = web.RequestKey("admin_call", Call)
Handler = Callable[[Call], Awaitable[web.StreamResponse]]
Permission = Callable[[Call], Awaitable[None]]


@dataclass(frozen=True)
class Body:
    """An endpoint's JSON body: validated against `schema`; `optional`: an empty body reads as
    {}; `check`: a rule on the raw value run before the schema (PATCH's fixed fields)."""

    schema: schema.Schema
    optional: bool = False
    check: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    permission: Permission | None  # None: public (no token)
    body: Body | None
    responses: dict[int, schema.Schema | None]
    query: tuple[tuple[str, str], ...] = ()
    max_limit: int = MAX_PAGE_LIMIT  # the `limit` query parameter's maximum, when it has one
    tag: str = ""  # the group the OpenAPI document lists it in

    @property
    def auth(self) -> bool:
        return self.permission is not None

    @property
    def description(self) -> str:
        """What the OpenAPI document says of it: its handler's docstring, else its summary."""
        return inspect.getdoc(self.handler) or self.summary

    @property
    def request(self) -> schema.Schema | None:
        return self.body.schema if self.body else None


class Routes:
    """One module's endpoints, each registered by decorating its handler; `tag`: the group
    they are listed in (an endpoint may name another)."""

    def __init__(self, tag: str = "") -> None:
        self.endpoints: list[Endpoint] = []
        self.tag = tag

    def __call__(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        permission: Permission | None,
        body: Body | None = None,
        responses: dict[int, schema.Schema | None] | None = None,
        query: tuple[tuple[str, str], ...] = (),
        max_limit: int = MAX_PAGE_LIMIT,
        tag: str | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    summary,
                    permission,
                    body,
                    responses or {200: None},
                    query,
                    max_limit,
                    self.tag if tag is None else tag,
                )
            )
            return handler

        return register


BodyCheck = Callable[[Any], None]


def serve(
    ep: Endpoint, check: BodyCheck | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of `ep`: what it declares is enforced here, in this order.
    `check`: validates the body (raises `schema.ValidationError`); by default against the
    body's schema (the admin app passes the published document's, `tokenward.openapi`)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        call = request[CALL]
        if ep.permission is not None:
            await call.authenticate()
            check_query(call, ep)  # before the permission, which may read the query
            check_query_scope(call)
            check_path(call.request.match_info)  # a pasted token is never echoed (tokenward.echo)
            await ep.permission(call)
        if ep.body is not None:
            call.body = await read_body(call, ep.body, check)
        return await ep.handler(call)

    handle.__name__ = ep.handler.__name__
    return handle


REPEATABLE = "array"  # a query parameter declared with this kind may be given several times


def check_query(call: Call, ep: Endpoint) -> None:
    """Default deny for query parameters: a parameter the endpoint does not declare, or one
    given twice (unless declared REPEATABLE), is refused with 400 naming it, never silently ignored (`?org=other` on an
    endpoint that reads the caller's org must not look as if it had been honoured)."""
    declared = dict(ep.query)
    for name in call.query:
        if name not in declared:
            takes = ", ".join(declared) if declared else "none"
            raise api_error(
                400, "invalid_request", f"{name}: not a query parameter of this endpoint (it takes: {takes})", name
            )
        if declared[name] != REPEATABLE and len(call.query.getall(name)) > 1:
            raise api_error(400, "invalid_request", f"{name}: given more than once", name)


def check_query_scope(call: Call) -> None:
    """A query parameter naming an org or a team is authorized as a path would be, on every
    endpoint, before its permission: another org is a 403 (step org), and a team token
    naming another team than its own a 403 (step team): never silently read as its own."""
    principal = call.caller
    if "org" in call.query:
        require_org(principal, call.query["org"])
    team = call.query.get("team")
    if team is not None and principal.token.team is not None:
        require_team(principal, team)


async def read_body(call: Call, body: Body, check: BodyCheck | None = None) -> dict[str, Any]:
    # a body (at most MAX_BODY) must arrive within limits.body_timeout, as at the gateway: a
    # caller trickling one would otherwise hold a connection and a handler for ever
    timeout = call.runtime.settings.limits.body_timeout
    try:
        raw = await asyncio.wait_for(call.request.read(), timeout)
    except TimeoutError:
        raise api_error(
            408, "request_timeout", "request body not received in time (limits.body_timeout)", "body"
        ) from None
    if body.optional and not raw.strip():
        return {}
    if not raw and body.check is None:
        raise api_error(400, "invalid_request", "request body is required (JSON object)", "body")
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise api_error(400, "invalid_request", "request body is not valid JSON", "body") from None
    if body.check is not None:
        body.check(data)
    try:
        if check is not None:
            check(data)
        else:
            schema.validate(body.schema, data)
    except schema.ValidationError as exc:
        raise api_error(400, "invalid_request", str(exc), exc.field) from None
    assert isinstance(data, dict)  # the schemas describe objects
    return data


# -- errors: the one place they become responses -------------------------------------------------
@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    call = Call(request)
    request[CALL] = call
    try:
        response = await handler(request)
    except Refusal as refusal:
        redact_message(refusal)  # nothing token-shaped echoed
        if refusal.step is not None:  # a decision step refused it (not a validation error)
            _audit_denied(call, refusal)
        return error_response(refusal, call.request_id)
    except DOMAIN_ERRORS as exc:
        return error_response(redact_message(domain_refusal(exc)), call.request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(
            api_error(exc.status, _http_error_code(exc.status), exc.reason), call.request_id
        )
    except Exception:
        log.exception("admin request failed", request_id=call.request_id)
        return error_response(api_error(500, "internal_error", "internal error"), call.request_id)
    response.headers.setdefault("X-Request-Id", call.request_id)
    response.headers.setdefault("Cache-Control", "no-store")  # admin answers are never cached
    return response


def _quota_message(exc: QuotaExceeded) -> str:
    where = f"team {exc.team!r}" if exc.team is not None else f"org {exc.org!r} (org-level tokens)"
    return (
        f"{where} holds {exc.held} tokens; the limit is {exc.limit} (tokens.max_per_team): "
        "delete revoked or expired tokens first"
    )


# The domain errors as the admin API answers them: the one table of the HTTP edge.
DOMAIN_ERRORS_TABLE: dict[type[Exception], Callable[[Any], Refusal]] = {
    StoreUnavailable: lambda exc: api_error(
        503, "store_unavailable", "token store unavailable; retry shortly"
    ),
    Conflict: lambda exc: api_error(409, "conflict", str(exc)),
    QuotaExceeded: lambda exc: api_error(409, "quota_exceeded", _quota_message(exc)),
    Invalid: lambda exc: api_error(400, "invalid_request", exc.message, exc.field),
    NotFound: lambda exc: api_error(404, "not_found", str(exc)),
}
DOMAIN_ERRORS: tuple[type[Exception], ...] = tuple(DOMAIN_ERRORS_TABLE)


def domain_refusal(exc: Exception) -> Refusal:
    """The refusal the table gives a domain error (its class or nearest listed base)."""
    kind = next(kind for kind in type(exc).__mro__ if kind in DOMAIN_ERRORS_TABLE)
    return DOMAIN_ERRORS_TABLE[kind](exc)


def _audit_denied(call: Call, denied: Refusal) -> None:
    principal = call.principal
    token = principal.token if principal else None
    claimed: dict[str, Any] = {}
    if token is None and isinstance(denied, TokenRefused):  # a revoked, expired, ... token
        token = denied.token
        if token is None:  # an unproven key id: never a token_id (see SECURITY.md)
            claimed["claimed_token_id"] = denied.claimed_id
    call.runtime.audit.emit(
        "admin.denied",
        method=call.request.method,
        path=redact(call.request.path),
        status=denied.status,
        step=denied.step,
        reason=denied.message,
        client_ip=call.request.remote,
        request_id=call.request_id,
        token_id=token.id if token else None,
        token_name=token.name if token else None,
        org=token.org if token else None,
        team=token.team if token else None,
        service_account=token.service_account if token else None,
        **claimed,
    )


def _http_error_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(status, "http_error")
