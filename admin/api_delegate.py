"""The admin API's child tokens: `POST /v1/delegate` (admin/delegate.py decides)."""

from __future__ import annotations

from aiohttp import web

from tokenward import schema, schema_delegate
from tokenward.delegate import Delegation
from tokenward.endpoints import Body, Call, Routes, api_error, json_response
from tokenward.gateway.scopes import format_scopes
from tokenward.gateway.store_children import TooManyChildren
from tokenward.permissions import authenticated
from tokenward.rules import iso

routes = Routes("tokens")


@routes(
    "POST",
    "/v1/delegate",
    "Mint a child token",
    permission=authenticated,
    body=Body(schema_delegate.DELEGATE),
    responses={
        201: schema_delegate.DELEGATED,
        400: schema.ERROR,
        403: schema.ERROR,
        409: schema.ERROR,
    },
)
async def delegate(call: Call) -> web.Response:
    """Mint a child of the calling token (which must hold the capability `delegate`) for one agent
    run: scopes within the caller's effective scopes (never an admin-plane scope), a TTL (default
    15m) within tokens.delegation.max_ttl and the caller's own expiry, the caller's constraints and
    networks at least. The child ends when the caller (or any ancestor) is revoked, expires or is
    deleted. 409 `quota_exceeded` once the caller has tokens.delegation.max_children unexpired
    children. The plaintext `token` is in this response only."""
    try:
        plaintext, record = await Delegation(call.runtime).delegate(call.actor, call.body)
    except TooManyChildren as exc:
        raise api_error(409, "quota_exceeded", str(exc)) from None
    view = {
        "id": record.id,
        "token": plaintext,
        "parent_id": record.parent_id,
        "ancestors": list(record.ancestors),
        "run_id": record.run_id,
        "name": record.name,
        "display_prefix": record.display_prefix,
        "org": record.org,
        "team": record.team,
        "scopes": format_scopes(record.scopes),
        "effective_scopes": format_scopes(record.scopes),  # within the parent's effective ones
        "constraints": dict(record.constraints),
        "allowed_cidrs": list(record.allowed_cidrs),
        "expires_at": iso(record.expires_at),
        "max_uses": record.max_uses,
        "status": "active",
    }
    team_part = f"/teams/{record.team}" if record.team is not None else ""
    headers = {"Cache-Control": "no-store", "Location": f"/v1/orgs/{record.org}{team_part}/tokens/{record.id}"}
    return json_response(view, 201, **headers)
