"""The admin API against the real store: teams, tokens, delegation, bad input, OpenAPI."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from tests.helpers.gateway import TEAMS, TOKENS, Gateway, LogReader, admin, org_admin_with_team
from tokenward.api import create_admin_app, openapi_document


@pytest.fixture
async def org_admin(gateway: Gateway) -> str:
    """Here the team `platform` may also write specs."""
    return await org_admin_with_team(gateway, ["read:apis", "write:specs", "admin:team"])


@pytest.mark.also_on_cluster
async def test_team_lifecycle(gateway: Gateway, org_admin: str) -> None:
    status, body, _ = await admin(gateway, "GET", TEAMS, org_admin)
    assert status == 200 and [t["name"] for t in body["teams"]] == ["platform"]
    status, body, _ = await admin(gateway, "GET", f"{TEAMS}/platform", org_admin)
    assert body["permissions"] == ["read:apis", "write:specs", "admin:team"]
    status, body, _ = await admin(gateway, "POST", TEAMS, org_admin, {"name": "platform", "permissions": []})
    assert status == 409
    status, body, _ = await admin(
        gateway, "PUT", f"{TEAMS}/platform/permissions", org_admin, {"permissions": ["read:apis"]}
    )
    assert status == 200 and body["permissions"] == ["read:apis"]
    status, body, _ = await admin(gateway, "GET", f"{TEAMS}/nope", org_admin)
    assert status == 404 and body["error"] == "not_found"


async def test_token_create_list_get_revoke(gateway: Gateway, org_admin: str, logs: LogReader) -> None:
    status, created, headers = await admin(
        gateway,
        "POST",
        TOKENS,
        org_admin,
        {
            "name": "ci-publish",
            "description": "publishes specs",
            "scopes": ["read:apis", "write:specs", "read:mocks"],
            "expires_in": "30d",
        },
    )
    assert status == 201
    assert headers["Cache-Control"] == "no-store"
    token = created["token"]
    assert token.startswith("tw_sat_") and created["display_prefix"] == f"tw_sat_{created['id']}"
    assert token.startswith(created["display_prefix"])
    assert created["effective_scopes"] == ["read:apis", "write:specs"]
    assert created["ineffective_scopes"] == ["read:mocks"]
    assert created["status"] == "active"
    expires = datetime.fromisoformat(created["expires_at"]).timestamp()
    assert abs(expires - (time.time() + 30 * 86400)) < 60

    status, listed, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert status == 200
    (row,) = listed["tokens"]
    assert row["id"] == created["id"] and row["last_used_at"] is None
    text = str(listed)
    assert token not in text and "argon2" not in text and "secret" not in text and "hash" not in text

    status, got, _ = await admin(gateway, "GET", f"{TOKENS}/{created['id']}", org_admin)
    assert status == 200 and got["name"] == "ci-publish" and "token" not in got

    status, revoked, _ = await admin(gateway, "POST", f"{TOKENS}/{created['id']}/revoke", org_admin)
    assert status == 200 and revoked["status"] == "revoked" and revoked["revoked_by"]
    status, listed, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert listed["tokens"][0]["status"] == "revoked"

    actions = [e["action"] for e in logs.events() if e.get("event", "").startswith("[Service Token] token.")]
    assert actions == ["token.created", "token.revoked"]
    created_event = logs.events("token.created")[0]
    assert created_event["actor_name"] == "org-admin" and created_event["token_id"] == created["id"]
    assert token not in logs.raw().decode()


@pytest.mark.also_on_cluster
async def test_issued_token_works_through_the_gateway(gateway: Gateway, org_admin: str) -> None:
    _, created, _ = await admin(gateway, "POST", TOKENS, org_admin, {"name": "r", "scopes": ["read:apis"]})
    async with gateway.session.get(
        f"{gateway.url}/orgs/acme/teams/platform/apis", headers=gateway.auth(created["token"])
    ) as r:
        assert r.status == 200


@pytest.mark.also_on_cluster
async def test_whoami(gateway: Gateway, org_admin: str) -> None:
    status, me, _ = await admin(gateway, "GET", "/v1/whoami", org_admin)
    assert status == 200
    assert me["org"] == "acme" and me["team"] is None and me["scopes"] == ["admin:org"]
    assert set(me) >= {"id", "name", "org", "team", "scopes", "effective_scopes", "expires_at"}


async def test_admin_auth_failures(gateway: Gateway, org_admin: str) -> None:
    status, body, headers = await admin(gateway, "GET", TOKENS, None)
    assert status == 401 and body["step"] == "credential" and "WWW-Authenticate" in headers
    status, body, _ = await admin(gateway, "GET", TOKENS, "tw_sat_garbage")
    assert status == 401
    other = await gateway.org_admin("globex")
    status, body, _ = await admin(gateway, "GET", TOKENS, other)
    assert (status, body["message"]) == (403, "token org does not match resource org")


async def test_admin_org_cannot_be_granted_to_a_team_token(gateway: Gateway, org_admin: str) -> None:
    status, body, _ = await admin(gateway, "POST", TOKENS, org_admin, {"name": "x", "scopes": ["admin:org"]})
    assert status == 400 and "admin:org" in body["message"] and body["field"] == "scopes"
    status, body, _ = await admin(
        gateway, "POST", TEAMS, org_admin, {"name": "sneaky", "permissions": ["admin:org"]}
    )
    assert status == 400


@pytest.mark.also_on_cluster
async def test_team_admin_manages_only_its_own_team(gateway: Gateway, org_admin: str) -> None:
    await admin(gateway, "POST", TEAMS, org_admin, {"name": "billing", "permissions": ["read:apis"]})
    _, created, _ = await admin(
        gateway, "POST", TOKENS, org_admin, {"name": "team-admin", "scopes": ["admin:team", "read:apis"]}
    )
    team_admin = created["token"]
    status, _, _ = await admin(gateway, "POST", TOKENS, team_admin, {"name": "ci", "scopes": ["read:apis"]})
    assert status == 201
    status, body, _ = await admin(gateway, "GET", "/v1/orgs/acme/teams/billing/tokens", team_admin)
    assert (status, body["message"]) == (403, "token is not in the same team as the resource")
    status, body, _ = await admin(gateway, "POST", TEAMS, team_admin, {"name": "mine", "permissions": []})
    assert (status, body["message"]) == (403, "token lacks required permission: admin:org")
    status, body, _ = await admin(
        gateway, "PUT", f"{TEAMS}/platform/permissions", team_admin, {"permissions": ["admin:*"]}
    )
    assert status == 403
    status, body, _ = await admin(gateway, "GET", TEAMS, team_admin)
    assert status == 200 and [t["name"] for t in body["teams"]] == ["platform"]
    # a plain team token without admin:team cannot manage anything
    _, reader, _ = await admin(
        gateway, "POST", TOKENS, org_admin, {"name": "reader", "scopes": ["read:apis"]}
    )
    status, body, _ = await admin(gateway, "GET", TOKENS, reader["token"])
    assert (status, body["message"]) == (403, "token lacks required permission: admin:team")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"scopes": ["read:apis"]}, "name"),
        ({"name": "x"}, "scopes"),
        ({"name": 5, "scopes": ["read:apis"]}, "name"),
        ({"name": "x", "scopes": "read:apis"}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["writ:specs"]}, "scopes[0]"),
        ({"name": "x", "scopes": ["read:apis"], "colour": "red"}, "colour"),
        ({"name": "x", "scopes": ["read:apis"], "expires_in": "soon"}, "expires_in"),
        ({"name": "x", "scopes": ["read:apis"], "expires_in": "400d"}, "expires_in"),
        ({"name": "x", "scopes": ["read:apis"], "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "x", "scopes": ["read:apis"], "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        (
            {"name": "x", "scopes": ["read:apis"], "expires_in": "1d", "expires_at": "2099-01-01T00:00:00Z"},
            "expires_in",
        ),
        ({"name": "x", "scopes": ["read:apis"], "allowed_cidrs": ["nope"]}, "allowed_cidrs[0]"),
        ({"name": "x", "scopes": ["read:apis"], "constraints": {"project": 5}}, "constraints.project"),
        ({"name": "x", "scopes": ["read:apis"], "constraints": {"org": "acme"}}, "constraints.org"),
        ({"name": "x", "scopes": ["read:apis"], "service_account": "ghost"}, "service_account"),
        ({"name": "line\nbreak", "scopes": ["read:apis"]}, "name"),
        ([1, 2], "body"),
    ],
)
async def test_bad_token_requests_name_the_field(
    gateway: Gateway, org_admin: str, body: Any, field: str
) -> None:
    status, data, _ = await admin(gateway, "POST", TOKENS, org_admin, body)
    assert status == 400, data
    assert data["error"] == "invalid_request" and data["field"] == field, data


async def test_max_ttl_message_states_the_limit(gateway: Gateway, org_admin: str) -> None:
    status, data, _ = await admin(
        gateway, "POST", TOKENS, org_admin, {"name": "x", "scopes": ["read:apis"], "expires_in": "400d"}
    )
    assert status == 400
    assert data["message"] == "expires_in: exceeds the maximum token lifetime of 365d (tokens.max_ttl)"


async def test_invalid_json_and_oversized_bodies(gateway: Gateway, org_admin: str) -> None:
    status, data, _ = await admin(
        gateway, "POST", TOKENS, org_admin, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and data["message"] == "request body is not valid JSON"
    status, data, _ = await admin(
        gateway, "POST", TOKENS, org_admin, data=b"", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    status, data, _ = await admin(gateway, "POST", TOKENS, org_admin, data=b"x" * (200 * 1024))
    assert status == 413 and data["error"] == "payload_too_large"
    status, data, _ = await admin(gateway, "DELETE", TEAMS, org_admin)
    assert status == 405 and data["error"] == "method_not_allowed"


async def test_unknown_token_id_is_404(gateway: Gateway, org_admin: str) -> None:
    for kid in ("AAAAAAAAAAAA", "not-an-id", "../../etc"):
        status, _data, _ = await admin(gateway, "POST", f"{TOKENS}/{kid}/revoke", org_admin)
        assert status == 404, kid


@pytest.mark.also_on_cluster
async def test_token_from_another_team_is_not_visible(gateway: Gateway, org_admin: str) -> None:
    await admin(gateway, "POST", TEAMS, org_admin, {"name": "billing", "permissions": ["read:apis"]})
    _, created, _ = await admin(
        gateway,
        "POST",
        "/v1/orgs/acme/teams/billing/tokens",
        org_admin,
        {"name": "b", "scopes": ["read:apis"]},
    )
    status, _, _ = await admin(gateway, "GET", f"{TOKENS}/{created['id']}", org_admin)
    assert status == 404


async def test_health_endpoints(gateway: Gateway) -> None:
    assert (await admin(gateway, "GET", "/healthz", None))[0] == 200
    status, body, _ = await admin(gateway, "GET", "/readyz", None)
    assert status == 200 and body["status"] == "ready"


async def test_openapi_documents_every_admin_route(gateway: Gateway) -> None:
    status, doc, _ = await admin(gateway, "GET", "/v1/openapi.json", None)
    assert status == 200 and doc["openapi"].startswith("3.")
    app = create_admin_app(gateway.runtime)
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        if path.startswith("/ui"):
            continue  # the web console's static files (tests/test_console.py), not the API
        for route in resource:
            if route.method == "HEAD":
                continue
            assert route.method.lower() in doc["paths"][path], (route.method, path)
    create = doc["paths"]["/v1/orgs/{org}/teams/{team}/tokens"]["post"]
    assert "requestBody" in create and "201" in create["responses"]
    assert doc == openapi_document()
