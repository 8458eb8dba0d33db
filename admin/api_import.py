"""The admin API's import endpoint: keys from an old system become tokens of a team
(`tokenward.imports`). The key is in the request only: never in a response."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokenward import schema
from tokenward.endpoints import Body, Call, Routes
from tokenward.gateway import legacy_keys
from tokenward.imports import ImportService
from tokenward.metadata import METADATA_SCHEMA
from tokenward.permissions import team_admin
from tokenward.rules import Lifetime
from tokenward.views import token_response

routes = Routes("tokens")

TOKEN_IMPORT: schema.Schema = {
    "type": "object",
    "description": "a key from an old system to keep working as a token of the team: at most one of "
    "expires_in and expires_at (neither: the default TTL)",
    "properties": {
        "name": schema.TOKEN_CREATE["properties"]["name"],
        "key": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1024,
            "description": "the key as its holders send it (16 to 256 visible ASCII characters, at "
            f"least {legacy_keys.MIN_BITS} bits by a conservative entropy estimate); stored hashed, never "
            "shown again",
        },
        "scopes": schema.SCOPES,
        "description": schema.TOKEN_CREATE["properties"]["description"],
        "expires_in": schema.DURATION,
        "expires_at": schema.EXPIRES_AT,
        "metadata": METADATA_SCHEMA,
        "environment": {
            **schema.ENVIRONMENT,
            "description": "live or test; absent: test for a key labelled as a test key (a word `test` in "
            "its leading label, e.g. sk_test_…), else live",
        },
        "constraints": schema.TOKEN_CREATE["properties"]["constraints"],
        "allowed_cidrs": schema.TOKEN_CREATE["properties"]["allowed_cidrs"],
    },
    "required": ["name", "key", "scopes"],
    "additionalProperties": False,
}


@routes(
    "POST",
    "/v1/orgs/{org}/teams/{team}/tokens/import",
    "Import a key from an old system",
    permission=team_admin,
    body=Body(TOKEN_IMPORT),
    responses={201: schema.TOKEN, **dict.fromkeys((400, 403, 404, 409, 429), schema.ERROR)},
)
async def import_token(call: Call) -> web.Response:
    """Keep a key from an old system (`sk_live_…`, 16 to 256 visible ASCII characters, not too
    easy to guess) working on the gateway's routes: it becomes a token of the team with a key
    id, the scopes, expiry, environment, constraints and client networks given (within the
    team's permissions, the caller's grant and tokens.max_ttl), stored as an argon2id hash and
    verified at the gateway like any token. Never an admin credential: a scope on `team` or
    `org` (`admin:team`) is refused, and the admin API refuses imported keys as callers. The
    answer is the token without its key (`legacy: true`, display prefix `legacy_<id>`); the key
    is never shown again. 409 when the key was imported already (in any org: the same answer).
    Needs `tokens.legacy_lookup_key` on the server (400 otherwise). Rotate it to replace it
    with a token of ours."""
    body: dict[str, Any] = call.body
    record = await ImportService(call.runtime).import_key(
        call.actor,
        org=call.param("org"),
        team=call.param("team"),
        name=body["name"],
        key=body["key"],
        scopes=body["scopes"],
        description=body.get("description", ""),
        lifetime=Lifetime(body.get("expires_in"), body.get("expires_at")),
        metadata=body.get("metadata"),
        environment=body.get("environment"),
        constraints=body.get("constraints") or {},
        allowed_cidrs=body.get("allowed_cidrs", []),
    )
    response = await token_response(call, record, 201)
    response.headers["Cache-Control"] = "no-store"  # the request held a secret: nothing is kept
    return response
