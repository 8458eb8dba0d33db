"""Refusal attribution (issue 14, item 3): once a request proves which token it holds, every
refusal names it (`token_id`, token name, org, team, service account) in its audit event,
and `GET /v1/audit?token_id=` / `tokenward audit --token-id` find them: "is anything still
using the leaked token?" has an answer. A key id that was only claimed (unknown id, wrong
secret) is recorded as `claimed_token_id`, never as `token_id`, and is attributed to no org.
Real gateway, real store; audit events are flushed through `AuditLog.flush`, never waited for."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from tests.helpers.gateway import (
    APIS,
    TOKENS,
    Gateway,
    LogReader,
    admin,
    issue,
    org_admin_with_team,
    wrong_secrets,
)
from tests.helpers.process import env_for_subprocess, run_cli

SAS = "/v1/orgs/acme/teams/platform/service-accounts"
SPECS = "/orgs/acme/teams/platform/apis/web/specs"
OTHER_TEAM = "/orgs/acme/teams/billing/apis"
OTHER_ORG = "/orgs/globex/teams/platform/apis"
SECRETS = "/orgs/acme/projects/{project}/envs/production/secrets"
PERMISSIONS = ["read:apis", "write:specs", "read:secrets", "admin:team"]


async def call(gw: Gateway, token: str, path: str = APIS, method: str = "GET") -> int:
    async with gw.session.request(method, gw.url + path, headers=gw.auth(token)) as r:
        await r.read()
        return r.status


async def denied_events(gw: Gateway, admin_token: str, token_id: str) -> list[dict[str, Any]]:
    """`GET /v1/audit?token_id=...&action=request.denied` after a flush, newest first."""
    await gw.runtime.audit.flush()
    status, data, _ = await admin(
        gw, "GET", f"/v1/audit?token_id={token_id}&action=request.denied", admin_token
    )
    assert status == 200, data
    return list(data["events"])


def attributed(event: dict[str, Any], token: dict[str, Any], service_account: str | None = None) -> bool:
    return (
        event["token_id"] == token["id"]
        and event["token_name"] == token["name"]
        and event["org"] == "acme"
        and event["team"] == "platform"
        and event.get("service_account") == service_account
    )


async def test_is_anything_still_using_the_leaked_token(gateway: Gateway) -> None:
    """The leaked-token question end to end: a token of a service account is used, revoked as
    leaked, and used again; the audit API and the CLI name every refused use."""
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    status, _, _ = await admin(gateway, "POST", SAS, org_admin, {"name": "github-actions"})
    assert status == 201
    token = await issue(gateway, org_admin, name="deploy", service_account="github-actions")
    assert await call(gateway, token["token"]) == 200
    status, _, _ = await admin(
        gateway, "POST", f"{TOKENS}/{token['id']}/revoke", org_admin, {"reason": "leaked"}
    )
    assert status == 200
    assert [await call(gateway, token["token"]) for _ in range(3)] == [401, 401, 401]

    events = await denied_events(gateway, org_admin, token["id"])
    assert len(events) == 3
    for event in events:
        assert attributed(event, token, "github-actions")
        assert (event["step"], event["reason"], event["status"]) == ("status", "token revoked", 401)
        assert event["client_ip"] == "127.0.0.1" and event["route"] == "GET /orgs/{org}/teams/{team}/apis"

    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"], env["TOKENWARD_TOKEN"] = gateway.admin_url, org_admin
    code, out, err = await run_cli(
        "audit", "--token-id", token["id"], "--action", "request.denied", "--json", env=env
    )
    assert code == 0, err
    assert [e["request_id"] for e in json.loads(out)["events"]] == [e["request_id"] for e in events]
    code, out, err = await run_cli("audit", "--token-id", token["id"], "--action", "request.denied", env=env)
    assert code == 0, err
    rows = out.splitlines()[1:]
    assert len(rows) == 3 and all(token["id"] in row and "status: token revoked" in row for row in rows)


async def test_expired_and_cidr_refused_tokens_are_attributed(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    expiring = await issue(gateway, org_admin, name="expiring")
    record = await gateway.runtime.store.get_token(expiring["id"])
    assert record is not None
    await gateway.runtime.store.put_token(dataclasses.replace(record, expires_at=time.time() - 1))
    fenced = await issue(gateway, org_admin, name="fenced", allowed_cidrs=["10.0.0.0/8"])

    assert await call(gateway, expiring["token"]) == 401
    assert await call(gateway, fenced["token"]) == 401

    [expired] = await denied_events(gateway, org_admin, expiring["id"])
    assert attributed(expired, expiring) and (expired["step"], expired["reason"]) == ("status", "token expired")
    [refused] = await denied_events(gateway, org_admin, fenced["id"])
    assert attributed(refused, fenced)
    assert (refused["step"], refused["reason"]) == ("status", "client address not allowed for this token")


async def test_every_later_refusal_names_the_token(gateway: Gateway) -> None:
    """Org, team, constraint and scope refusals: the token is known, and named."""
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    token = await issue(gateway, org_admin, name="pinned", scopes=["read:apis", "read:secrets"],
                        constraints={"project": "web"})  # fmt: skip
    cases = [
        (OTHER_ORG, "org"),
        (OTHER_TEAM, "team"),
        (SECRETS.format(project="api"), "constraints"),
        (APIS, "constraints"),  # the route names no project: a constrained token is refused
    ]
    plain = await issue(gateway, org_admin, name="plain", scopes=["read:apis"])
    for path, _ in cases:
        assert await call(gateway, token["token"], path) == 403
    assert await call(gateway, plain["token"], SPECS, "POST") == 403

    events = await denied_events(gateway, org_admin, token["id"])
    assert sorted(e["step"] for e in events) == sorted(step for _, step in cases)
    assert all(attributed(e, token) for e in events)
    [scope] = await denied_events(gateway, org_admin, plain["id"])
    assert attributed(scope, plain) and scope["step"] == "scope"


async def test_a_claimed_key_id_is_never_a_token_id(gateway: Gateway, logs: LogReader) -> None:
    """Anyone can put any key id in a well-formed token: an unknown id, or a real one with a
    wrong secret, is recorded as claimed_token_id, attributed to no org, and not found by
    `?token_id=` (nor shown to the real token's org)."""
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    real = await issue(gateway, org_admin, name="real")
    [wrong] = wrong_secrets(real["id"], 1)
    [unknown] = wrong_secrets("ZZZZZZZZZZZZ", 1)
    assert await call(gateway, wrong) == 401
    assert await call(gateway, unknown) == 401

    claimed = [e for e in logs.events("request.denied") if e.get("step") == "token"]
    assert sorted(e["claimed_token_id"] for e in claimed) == sorted([real["id"], "ZZZZZZZZZZZZ"])
    for event in claimed:
        assert not {"token_id", "token_name", "org", "team"} & event.keys()
    assert await denied_events(gateway, org_admin, real["id"]) == []
    await gateway.runtime.audit.flush()
    status, data, _ = await admin(gateway, "GET", "/v1/audit?action=request.denied", org_admin)
    assert status == 200 and data["events"] == []  # no org: in no org's audit view


async def test_the_admin_api_names_a_revoked_caller(gateway: Gateway) -> None:
    """A revoked admin token calling the admin API: admin.denied names it too."""
    org_admin = await org_admin_with_team(gateway, PERMISSIONS)
    team_admin = await issue(gateway, org_admin, name="team-admin", scopes=["admin:team"])
    status, _, _ = await admin(gateway, "POST", f"{TOKENS}/{team_admin['id']}/revoke", org_admin)
    assert status == 200
    status, _, _ = await admin(gateway, "GET", TOKENS, team_admin["token"])
    assert status == 401
    await gateway.runtime.audit.flush()
    status, data, _ = await admin(
        gateway, "GET", f"/v1/audit?token_id={team_admin['id']}&action=admin.denied", org_admin
    )
    assert status == 200
    [event] = data["events"]
    assert attributed(event, team_admin) and event["step"] == "status"
