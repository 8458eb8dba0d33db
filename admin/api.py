"""The admin HTTP API (`/v1`, on the admin listener) over the same store as the gateway.

Callers authenticate with a Bearer token through the gateway's own `Authenticator`; each
endpoint declares its permission and body (`tokenward.endpoints`), the token rules live in
the token service (`tokenward.service`, `tokenward.rules`). Every change is durable before
the response, announced to every gateway process, and audited with its actor.

Modules: `api_teams` (teams, service accounts), `api_tokens` (tokens), `api_org_tokens` (an
org's tokens by id, org admins), `api_usage` (a token's usage report), `api_import` (imported
keys), `api_audit` (audit, leaks, whoami), and here the process endpoints, the OpenAPI document
and the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tokenward import (
    api_accounts,
    api_audit,
    api_delegate,
    api_import,
    api_limits,
    api_org_tokens,
    api_teams,
    api_tokens,
    api_usage,
    console,
    health,
    schema_reports,
    version,
)
from tokenward.endpoints import (
    MAX_BODY,
    Call,
    Endpoint,
    Routes,
    errors_middleware,
    json_response,
    serve,
)
from tokenward.gateway.runtime import RUNTIME, Runtime
from tokenward.health import store_details
from tokenward.openapi import body_checks, build_document, operation_key
from tokenward.views import BULK_WORK
from tokenward.worker_board import BOARD

routes = Routes("operations")


@routes("GET", "/v1/openapi.json", "This document", permission=None)
async def openapi(call: Call) -> web.Response:
    """This OpenAPI 3.1 document: clients can be generated from it, and the API checks request
    bodies with its schemas."""
    return json_response(openapi_document())


@routes("GET", "/metrics", "Prometheus metrics", permission=None)
async def metrics(call: Call) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    body = health.metrics_body(call.runtime, call.request.app.get(BOARD))  # under --workers: all of them
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes("GET", "/healthz", "Process is alive", permission=None)
async def healthz(call: Call) -> web.Response:
    """200 while the process serves requests (a liveness probe: it checks nothing else)."""
    return json_response({"status": "ok"})


@routes(
    "GET",
    "/readyz",
    "Ready for traffic: config loaded, listeners serving, store reachable or unreachable for less "
    "than redis.stale_if_error; under --workers, every worker",
    permission=None,
    responses={200: schema_reports.READINESS, 503: schema_reports.NOT_READY},
)
async def readyz(call: Call) -> web.Response:
    return health.readyz_response(call.runtime, call.request.app.get(BOARD), call.request_id)


# Every endpoint of the admin API, in the order the OpenAPI document lists them.
ENDPOINTS: tuple[Endpoint, ...] = (
    *api_teams.routes.endpoints,
    *api_accounts.routes.endpoints,
    *api_tokens.routes.endpoints,
    *api_org_tokens.routes.endpoints,
    *api_usage.routes.endpoints,
    *api_import.routes.endpoints,
    *api_audit.routes.endpoints,
    *api_delegate.routes.endpoints,
    *api_limits.routes.endpoints,
    *routes.endpoints,
)


# -- OpenAPI ---------------------------------------------------------------------------------------
def openapi_document() -> dict[str, Any]:
    """The admin API's OpenAPI document (`tokenward.openapi`); its schemas check the bodies."""
    return build_document(
        ENDPOINTS,
        {"title": "tokenward admin API", "version": version()},
    )


def create_admin_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_middleware])
    app[RUNTIME] = runtime
    app[BULK_WORK] = asyncio.Semaphore(1)
    checks = body_checks(openapi_document(), ENDPOINTS)  # bodies meet the published schemas
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, serve(ep, checks.get(operation_key(ep))))
    console.add_console(app)  # the web console at /ui/, over these endpoints
    return app


__all__ = ["ENDPOINTS", "create_admin_app", "openapi_document", "store_details"]
