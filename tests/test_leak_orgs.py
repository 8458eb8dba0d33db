"""A leak report across orgs is recorded in the token's org (review of issue 14): the globex
org admin reports acme's plaintext token; it is revoked for good (the plaintext proves the
leak), but acme's records name no globex token id (revoked_by "leak report from another
org", no level: final anyway) and the `token.leaked` event is in acme's audit only; globex
gets a `token.leak_reported` event with no id or name of acme's token."""

from __future__ import annotations

from tests.helpers.gateway import TEAMS, Gateway, admin

PLATFORM = "/v1/orgs/acme/teams/platform/tokens"


async def test_a_leak_reported_from_another_org_is_recorded_in_the_tokens_org(gateway: Gateway) -> None:
    gw = gateway
    acme, globex = await gw.org_admin(), await gw.org_admin("globex")
    assert (await admin(gw, "POST", TEAMS, acme, {"name": "platform", "permissions": ["read:apis"]}))[0] == 201
    status, token, _ = await admin(gw, "POST", PLATFORM, acme, {"name": "acme-secret", "scopes": ["read:apis"]})
    assert status == 201
    status, body, _ = await admin(gw, "POST", "/v1/leaks", globex, {"tokens": [token["token"]]})
    assert status == 200 and body["results"][0]["result"] == "revoked", body
    _, view, _ = await admin(gw, "GET", f"{PLATFORM}/{token['id']}", acme)
    assert view["status"] == "revoked" and view["revoke_reason"] == "leaked"
    assert view["revoked_by"] == "leak report from another org" and view["revoked_by_level"] is None, view
    assert (await admin(gw, "POST", f"{PLATFORM}/{token['id']}/restore", acme))[0] == 409  # final
    globex_record = (await admin(gw, "GET", "/v1/whoami", globex))[1]
    await gw.runtime.audit.flush()
    _, mine, _ = await admin(gw, "GET", "/v1/audit?limit=500", acme)
    (leaked,) = [e for e in mine["events"] if e["action"] == "token.leaked"]
    assert leaked["token_id"] == token["id"] and leaked["actor_id"] == "leak report from another org"
    assert "globex" not in repr(mine) and str(globex_record.get("id")) not in repr(mine)
    _, theirs, _ = await admin(gw, "GET", "/v1/audit?limit=500", globex)
    assert token["id"] not in repr(theirs) and "acme-secret" not in repr(theirs), theirs
    (reported,) = [e for e in theirs["events"] if e["action"] == "token.leak_reported"]
    assert reported["result"] == "revoked" and reported["actor_org"] == "globex"


async def test_a_leak_reported_in_its_own_org_names_the_reporter(gateway: Gateway) -> None:
    gw = gateway
    acme = await gw.org_admin()
    assert (await admin(gw, "POST", TEAMS, acme, {"name": "platform", "permissions": ["read:apis"]}))[0] == 201
    _, token, _ = await admin(gw, "POST", PLATFORM, acme, {"name": "t", "scopes": ["read:apis"]})
    _, me, _ = await admin(gw, "GET", "/v1/whoami", acme)
    assert (await admin(gw, "POST", "/v1/leaks", acme, {"tokens": [token["token"]]}))[0] == 200
    _, view, _ = await admin(gw, "GET", f"{PLATFORM}/{token['id']}", acme)
    assert view["revoked_by"] == f"token:{me['id']}" and view["revoked_by_level"] == "org", view
