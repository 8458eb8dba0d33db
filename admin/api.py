"""The admin HTTP API (`/v1`, on the admin listener) over the same store as the gateway.

Callers authenticate with a Bearer token through the gateway's own `Authenticator`; each
endpoint declares its permission and body (`tokenward.endpoints`), the token rules live in
the token service (`tokenward.service`, `tokenward.rules`). Every change is durable before
the response, announced to every gateway process, and audited with its actor.

Modules: `api_teams` (teams, service accounts), `api_tokens` (tokens), `api_audit` (audit,
leaks, whoami), and here the process endpoints, the OpenAPI document and the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tokenward import api_audit, api_teams, api_tokens, health, schema
from tokenward.endpoints import (
    DEFAULT_PAGE_LIMIT,
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
from tokenward.views import BULK_WORK
from tokenward.worker_board import BOARD

routes = Routes()


@routes("GET", "/v1/openapi.json", "This document", permission=None)
async def openapi(call: Call) -> web.Response:
    return json_response(openapi_document())


@routes("GET", "/metrics", "Prometheus metrics", permission=None)
async def metrics(call: Call) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    body = health.metrics_body(call.runtime, call.request.app.get(BOARD))  # under --workers: all of them
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes("GET", "/healthz", "Process is alive", permission=None)
async def healthz(call: Call) -> web.Response:
    return json_response({"status": "ok"})


@routes(
    "GET",
    "/readyz",
    "Ready for traffic: config loaded, listeners serving, store reachable or unreachable for less "
    "than redis.stale_if_error; under --workers, every worker",
    permission=None,
    responses={200: health.READINESS, 503: health.NOT_READY},
)
async def readyz(call: Call) -> web.Response:
    return health.readyz_response(call.runtime, call.request.app.get(BOARD), call.request_id)


# Every endpoint of the admin API, in the order the OpenAPI document lists them.
ENDPOINTS: tuple[Endpoint, ...] = (
    *api_teams.routes.endpoints,
    *api_tokens.routes.endpoints,
    *api_audit.routes.endpoints,
    *routes.endpoints,
)


# -- OpenAPI ---------------------------------------------------------------------------------------
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tokenward admin API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(ep: Endpoint) -> dict[str, Any]:
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
        "responses": {str(code): _response(code, s) for code, s in ep.responses.items()},
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
    return op


def _response(code: int, s: schema.Schema | None) -> dict[str, Any]:
    if s is None:
        return {"description": "no content" if code == 204 else "ok"}
    return {
        "description": "ok" if code < 400 else "error",
        "content": {"application/json": {"schema": _openapi_schema(s)}},
    }


def _query_parameter(ep: Endpoint, name: str, kind: str) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
    if name == "limit":
        maximum = ep.max_limit
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


def create_admin_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_middleware])
    app[RUNTIME] = runtime
    app[BULK_WORK] = asyncio.Semaphore(1)
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, serve(ep))
    return app


__all__ = ["ENDPOINTS", "create_admin_app", "openapi_document", "store_details"]
