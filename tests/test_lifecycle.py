"""The token lifecycle through the admin API and the gateway, against the real store:
service accounts, restore, delete, rotate (with grace), expiry policy, audit, leaks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.helpers.gateway import APIS, TEAMS, TOKENS, Gateway, admin, issue

SAS = "/v1/orgs/acme/teams/platform/service-accounts"


async def through(gw: Gateway, token: str) -> tuple[int, Any]:
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        return r.status, await r.json()


@pytest.mark.also_on_cluster
async def test_service_accounts(gateway: Gateway, org_admin: str) -> None:
    status, sa, _ = await admin(
        gateway, "POST", SAS, org_admin, {"name": "github-actions", "description": "CI"}
    )
    assert status == 201 and sa["active_tokens"] == 0
    assert (await admin(gateway, "POST", SAS, org_admin, {"name": "github-actions"}))[0] == 409
    prod = await issue(gateway, org_admin, name="prod", service_account="github-actions")
    await issue(gateway, org_admin, name="staging", service_account="github-actions")
    assert prod["service_account"] == "github-actions"
    status, listed, _ = await admin(gateway, "GET", SAS, org_admin)
    assert listed["service_accounts"][0]["active_tokens"] == 2
    # identity header and audit name it
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(prod["token"])) as r:
        seen = {k.lower(): v for k, v in (await r.json())["headers"]}
    assert seen["x-tokenward-service-account"] == "github-actions"
    # only the service account's tokens
    _, only, _ = await admin(gateway, "GET", f"{TOKENS}?service_account=github-actions", org_admin)
    assert {t["name"] for t in only["tokens"]} == {"prod", "staging"}
    status, body, _ = await admin(gateway, "DELETE", f"{SAS}/github-actions", org_admin)
    assert status == 409 and "revoke them first" in body["message"]
    for token in only["tokens"]:
        await admin(gateway, "POST", f"{TOKENS}/{token['id']}/revoke", org_admin)
    assert (await admin(gateway, "DELETE", f"{SAS}/github-actions", org_admin))[0] == 204
    assert (await admin(gateway, "DELETE", f"{SAS}/github-actions", org_admin))[0] == 404
    assert (await admin(gateway, "GET", SAS, org_admin))[1]["service_accounts"] == []


@pytest.mark.also_on_cluster
async def test_restore_and_delete(gateway: Gateway, org_admin: str) -> None:
    created = await issue(gateway, org_admin)
    kid = created["id"]
    status, body, _ = await admin(gateway, "DELETE", f"{TOKENS}/{kid}", org_admin)
    assert status == 409 and "revoke it first" in body["message"]
    assert (await admin(gateway, "POST", f"{TOKENS}/{kid}/restore", org_admin))[0] == 409  # not revoked
    await admin(gateway, "POST", f"{TOKENS}/{kid}/revoke", org_admin)
    assert (await through(gateway, created["token"]))[0] == 401
    status, restored, _ = await admin(gateway, "POST", f"{TOKENS}/{kid}/restore", org_admin)
    assert status == 200 and restored["status"] == "active" and restored["revoked_at"] is None
    assert (await through(gateway, created["token"]))[0] == 200
    await admin(gateway, "POST", f"{TOKENS}/{kid}/revoke", org_admin)
    # revoked tokens stay listable with status and last_used_at
    for _ in range(30):
        _, listed, _ = await admin(gateway, "GET", TOKENS, org_admin)
        if listed["tokens"][0]["last_used_at"]:
            break
        await asyncio.sleep(0.1)
    assert listed["tokens"][0]["status"] == "revoked" and listed["tokens"][0]["last_used_at"]
    assert (await admin(gateway, "DELETE", f"{TOKENS}/{kid}", org_admin))[0] == 204
    assert (await admin(gateway, "GET", TOKENS, org_admin))[1]["tokens"] == []
    assert (await admin(gateway, "GET", f"{TOKENS}/{kid}", org_admin))[0] == 404
    assert (await through(gateway, created["token"]))[0] == 401


async def test_expired_token_cannot_be_restored_but_can_be_deleted(gateway: Gateway, org_admin: str) -> None:
    token, kid = await gateway.token("platform", ["read:apis"], expires_at=time.time() - 5)
    status, body = await through(gateway, token)
    assert (status, body["message"]) == (401, "token expired")
    _, listed, _ = await admin(gateway, "GET", f"{TOKENS}?status=expired", org_admin)
    assert [t["id"] for t in listed["tokens"]] == [kid]
    await admin(gateway, "POST", f"{TOKENS}/{kid}/revoke", org_admin)
    status, body, _ = await admin(gateway, "POST", f"{TOKENS}/{kid}/restore", org_admin)
    assert status == 409 and "expired" in body["message"]
    assert (await admin(gateway, "DELETE", f"{TOKENS}/{kid}", org_admin))[0] == 204


@pytest.mark.also_on_cluster
async def test_rotate_now(gateway: Gateway, org_admin: str) -> None:
    await admin(gateway, "POST", SAS, org_admin, {"name": "deployer"})
    old = await issue(
        gateway,
        org_admin,
        name="deploy",
        description="prod deploys",
        scopes=["read:apis"],
        service_account="deployer",
        constraints={"project": "web"},
        allowed_cidrs=["127.0.0.0/8"],
    )
    status, new, headers = await admin(gateway, "POST", f"{TOKENS}/{old['id']}/rotate", org_admin)
    assert status == 201 and headers["Cache-Control"] == "no-store"
    assert new["replaces"] == old["id"] and new["id"] != old["id"] and new["token"] != old["token"]
    for field in ("name", "description", "scopes", "constraints", "allowed_cidrs", "service_account"):
        assert new[field] == old[field], field
    _, old_now, _ = await admin(gateway, "GET", f"{TOKENS}/{old['id']}", org_admin)
    assert old_now["status"] == "revoked"
    assert (await admin(gateway, "POST", f"{TOKENS}/{old['id']}/rotate", org_admin))[0] == 409


@pytest.mark.also_on_cluster
async def test_rotate_with_grace_period(gateway: Gateway, org_admin: str) -> None:
    old = await issue(gateway, org_admin)
    status, new, _ = await admin(
        gateway, "POST", f"{TOKENS}/{old['id']}/rotate", org_admin, {"grace_period": "1h"}
    )
    assert status == 201
    assert (await through(gateway, old["token"]))[0] == 200  # still inside the grace period
    assert (await through(gateway, new["token"]))[0] == 200
    # a short grace period runs out on the clock, with no further store write
    old2 = await issue(gateway, org_admin, name="short")
    await admin(gateway, "POST", f"{TOKENS}/{old2['id']}/rotate", org_admin, {"grace_period": "1s"})
    assert (await through(gateway, old2["token"]))[0] == 200
    await asyncio.sleep(1.2)
    status, body = await through(gateway, old2["token"])
    assert (status, body["message"]) == (401, "token revoked")
    bad = await admin(gateway, "POST", f"{TOKENS}/{new['id']}/rotate", org_admin, {"grace_period": "90d"})
    assert bad[0] == 400 and bad[1]["field"] == "grace_period"


async def test_scopes_cannot_change_in_place(gateway: Gateway, org_admin: str) -> None:
    created = await issue(gateway, org_admin)
    for field, value in (("scopes", ["admin:team"]), ("constraints", {}), ("expires_in", "1d")):
        status, body, _ = await admin(
            gateway, "PATCH", f"{TOKENS}/{created['id']}", org_admin, {field: value}
        )
        assert status == 400 and "rotate" in body["message"] and body["field"] == field
    status, body, _ = await admin(
        gateway, "PATCH", f"{TOKENS}/{created['id']}", org_admin, {"name": "renamed"}
    )
    assert status == 200 and body["name"] == "renamed" and body["scopes"] == ["read:apis"]


async def test_expiry_policy(gateway: Gateway, org_admin: str) -> None:
    default = await issue(gateway, org_admin, name="default")
    assert default["expires_at"] is not None  # tokens.default_ttl = 90d in the test config
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30 * 86400))
    explicit = await issue(gateway, org_admin, name="explicit", expires_at=at)
    assert explicit["expires_at"] == at
    soon = await issue(gateway, org_admin, name="soon", expires_in="5d")
    _, listed, _ = await admin(gateway, "GET", f"{TOKENS}?expiring_within=10d", org_admin)
    assert [t["name"] for t in listed["tokens"]] == [soon["name"]]
    bad = await admin(gateway, "GET", f"{TOKENS}?expiring_within=soon", org_admin)
    assert bad[0] == 400 and bad[1]["field"] == "expiring_within"
    bad = await admin(gateway, "GET", f"{TOKENS}?status=weird", org_admin)
    assert bad[0] == 400 and bad[1]["field"] == "status"


async def test_never_expiring_tokens_when_policy_allows(start_gateway: Any, config: dict[str, Any]) -> None:
    config["tokens"]["default_ttl"] = "never"
    config["tokens"]["max_ttl"] = "never"
    gw = await start_gateway(config)
    token = await gw.org_admin()
    await admin(gw, "POST", TEAMS, token, {"name": "platform", "permissions": ["read:apis"]})
    created = await issue(gw, token)
    assert created["expires_at"] is None


@pytest.mark.also_on_cluster
async def test_audit_endpoint(gateway: Gateway, org_admin: str) -> None:
    created = await issue(gateway, org_admin, name="audited")
    assert (await through(gateway, created["token"]))[0] == 200
    other = await gateway.org_admin("globex")
    await gateway.team("secret-team", ["read:apis"], org="globex")
    await gateway.token("secret-team", ["read:apis"], org="globex")
    await asyncio.sleep(0.6)  # audit is written behind
    status, body, _ = await admin(gateway, "GET", "/v1/audit", org_admin)
    assert status == 200
    actions = [e["action"] for e in body["events"]]
    assert "token.created" in actions and "request.allowed" in actions and "team.created" in actions
    assert all(e.get("org") == "acme" or e.get("actor_org") == "acme" for e in body["events"])
    _, by_token, _ = await admin(
        gateway, "GET", f"/v1/audit?token_id={created['id']}&action=request.allowed", org_admin
    )
    assert [e["token_id"] for e in by_token["events"]] == [created["id"]]
    _, future, _ = await admin(gateway, "GET", "/v1/audit?since=2999-01-01T00:00:00Z", org_admin)
    assert future["events"] == []
    _, recent, _ = await admin(gateway, "GET", "/v1/audit?since=1h&limit=1", org_admin)
    assert len(recent["events"]) == 1
    _, theirs, _ = await admin(gateway, "GET", "/v1/audit", other)
    assert all(e.get("org") != "acme" for e in theirs["events"])
    assert (await admin(gateway, "GET", "/v1/audit?limit=0", org_admin))[0] == 400
    # a team admin sees only its team
    team_admin = await issue(gateway, org_admin, name="ta", scopes=["admin:team"])
    status, body, _ = await admin(gateway, "GET", "/v1/audit?team=other", team_admin["token"])
    assert (status, body["message"]) == (403, "token is not in the same team as the resource")
    status, mine, _ = await admin(gateway, "GET", "/v1/audit", team_admin["token"])
    assert status == 200 and mine["events"]
    assert all("platform" in (e.get("team"), e.get("actor_team")) for e in mine["events"])


async def test_leak_reports_revoke_valid_tokens(gateway: Gateway, org_admin: str, logs: Any) -> None:
    created = await issue(gateway, org_admin, name="leaky")
    from tokenward.gateway.tokens import generate

    unknown, _ = generate("tw_sat")
    status, body, _ = await admin(
        gateway, "POST", "/v1/leaks", org_admin, {"tokens": [created["token"], unknown, "hello"]}
    )
    assert status == 200
    assert [r["result"] for r in body["results"]] == ["revoked", "unknown", "not_a_token"]
    assert created["token"] not in str(body)
    status, denied = await through(gateway, created["token"])
    assert (status, denied["message"]) == (401, "token revoked")
    assert [e["token_id"] for e in logs.events("token.leaked")] == [created["id"]]
    status, body, _ = await admin(gateway, "POST", f"{TOKENS}/{created['id']}/restore", org_admin)
    assert status == 409 and "leaked" in body["message"]
    again = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": [created["token"]]})
    assert again[1]["results"][0]["result"] == "already_revoked"
    plain = await issue(gateway, org_admin, name="plain")
    status, body, _ = await admin(gateway, "POST", "/v1/leaks", plain["token"], {"tokens": [unknown]})
    assert status == 403


@pytest.mark.parametrize(
    "method, path, body, field",
    [
        ("POST", SAS, {"name": "Bad Name"}, "name"),
        ("POST", SAS, {"name": "ok", "extra": 1}, "extra"),
        ("POST", "/v1/leaks", {"tokens": []}, "tokens"),
        ("POST", "/v1/leaks", {"tokens": "x"}, "tokens"),
        ("PUT", f"{TEAMS}/platform/permissions", {"permissions": ["No pe"]}, "permissions[0]"),  # `nope`: a capability
        ("POST", TEAMS, {"name": "UPPER", "permissions": []}, "name"),
        ("POST", TEAMS, {"name": "x", "permissions": [1]}, "permissions[0]"),
    ],
)
async def test_bad_input_on_other_endpoints(
    gateway: Gateway, org_admin: str, method: str, path: str, body: Any, field: str
) -> None:
    status, data, _ = await admin(gateway, method, path, org_admin, body)
    assert status == 400 and data["field"] == field, data


@pytest.mark.also_on_cluster
async def test_a_rotated_token_cannot_be_rotated_again_or_restored(gateway: Gateway, org_admin: str) -> None:
    old = await issue(gateway, org_admin)
    status, new, _ = await admin(
        gateway, "POST", f"{TOKENS}/{old['id']}/rotate", org_admin, {"grace_period": "1m"}
    )
    assert status == 201
    status, body, _ = await admin(
        gateway, "POST", f"{TOKENS}/{old['id']}/rotate", org_admin, {"grace_period": "30d"}
    )
    assert status == 409 and new["id"] in body["message"]
    _, still, _ = await admin(gateway, "GET", f"{TOKENS}/{old['id']}", org_admin)
    assert still["revoked_at"] == new["replaced_revoked_at"]  # the grace period was not extended
    # ending the grace period early keeps the token marked as rotated: it cannot come back
    await admin(gateway, "POST", f"{TOKENS}/{old['id']}/revoke", org_admin)
    status, body, _ = await admin(gateway, "POST", f"{TOKENS}/{old['id']}/restore", org_admin)
    assert status == 409 and "rotated" in body["message"]


async def test_empty_patch_is_refused(gateway: Gateway, org_admin: str) -> None:
    created = await issue(gateway, org_admin)
    status, body, _ = await admin(gateway, "PATCH", f"{TOKENS}/{created['id']}", org_admin, {})
    assert status == 400 and body["field"] == "body"


async def test_leak_of_a_revoked_token_keeps_its_revocation_time(
    gateway: Gateway, org_admin: str, logs: Any
) -> None:
    created = await issue(gateway, org_admin)
    _, revoked, _ = await admin(gateway, "POST", f"{TOKENS}/{created['id']}/revoke", org_admin)
    status, body, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": [created["token"]]})
    assert status == 200 and body["results"][0]["result"] == "already_revoked"
    _, after, _ = await admin(gateway, "GET", f"{TOKENS}/{created['id']}", org_admin)
    assert after["revoked_at"] == revoked["revoked_at"]
    assert (await admin(gateway, "POST", f"{TOKENS}/{created['id']}/restore", org_admin))[0] == 409
    (event,) = logs.events("token.leaked")
    assert event["actor_id"] and event["was_revoked"] is True
