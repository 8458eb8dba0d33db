"""No admin API error echoes a secret (review of issue 14): `tokenward token get sk_live_…`
answered `404 token 'sk_live_…' does not exist`, the full plaintext pasted where an id
belongs. Every path parameter of every endpoint (tokenward.api.ENDPOINTS), given a real token
of ours or an imported-key-like string, is answered without the value (in the body, the
headers and the audit), and the CLI prints none of it either; query and body fields that
quote their value have it redacted when it is token-shaped."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers.gateway import Gateway, admin
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.api import ENDPOINTS
from tokenward.echo import PATH_SHAPES

TEAMS = "/v1/orgs/acme/teams"
WITH_PATH_PARAMS = [ep for ep in ENDPOINTS if "{" in ep.path]
LEGACY_LIKE = ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "Legacy-Key-0042-XyZ")  # Stripe-like; any string


@pytest.fixture
async def world(gateway: Gateway) -> dict[str, Any]:
    gw = gateway
    acme = await gw.org_admin()
    assert (await admin(gw, "POST", TEAMS, acme, {"name": "platform", "permissions": ["read:apis", "admin:team"]}))[0] == 201
    assert (await admin(gw, "POST", f"{TEAMS}/platform/service-accounts", acme, {"name": "ci"}))[0] == 201
    status, token, _ = await admin(gw, "POST", f"{TEAMS}/platform/tokens", acme, {"name": "t", "scopes": ["read:apis"]})
    assert status == 201
    return {"acme": acme, "id": token["id"], "token": token["token"]}


def concrete(path: str, world: dict[str, Any], param: str, value: str) -> str:
    values = {"org": "acme", "team": "platform", "id": world["id"], "name": "ci", "account": "ci", param: value}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def test_every_path_parameter_has_a_shape() -> None:
    params = {name for ep in ENDPOINTS for name in re.findall(r"\{(\w+)\}", ep.path)}
    assert params <= set(PATH_SHAPES), params - set(PATH_SHAPES)


@pytest.mark.parametrize("ep", WITH_PATH_PARAMS, ids=lambda ep: f"{ep.method} {ep.path}")
async def test_no_path_parameter_is_echoed(gateway: Gateway, world: dict[str, Any], ep: Any) -> None:
    gw = gateway
    secrets = (world["token"], *LEGACY_LIKE)
    for param in re.findall(r"\{(\w+)\}", ep.path):
        for secret in secrets:
            path = concrete(ep.path, world, param, secret)
            status, body, headers = await admin(gw, ep.method, path, world["acme"], {})
            text = repr(body) + repr(dict(headers))
            assert secret not in text, (ep.method, path, body)
            assert status in (400, 403, 404), (ep.method, path, status, body)
            if status == 404:
                assert "no such" in body["message"], body
            if param == "id":
                assert "was a token pasted instead?" in body["message"]
    await gw.runtime.audit.flush()
    status, page, _ = await admin(gw, "GET", "/v1/audit?limit=500", world["acme"])
    assert status == 200
    leaked = [e for e in page["events"] if any(s in repr(e) for s in secrets)]
    assert not leaked, leaked


async def test_query_and_body_values_are_not_echoed(gateway: Gateway, world: dict[str, Any]) -> None:
    gw, acme, secret = gateway, world["acme"], world["token"]
    for path in (
        f"/v1/orgs/acme/tokens?team={secret}",
        f"/v1/orgs/acme/teams/platform/tokens?service_account={secret}",
        f"/v1/orgs/acme/tokens?service_account={LEGACY_LIKE[1]}",
        f"/v1/orgs/acme/teams/platform/tokens?expiring_within={secret}",
        f"/v1/orgs/acme/teams/platform/tokens?environment={secret}",
        f"/v1/orgs/acme/teams/platform/tokens?metadata={secret}",
        f"/v1/audit?since={secret}",
    ):
        status, body, _ = await admin(gw, "GET", path, acme)
        assert status == 400 and secret not in repr(body) and LEGACY_LIKE[1] not in repr(body), (path, body)
    for body in (
        {"name": "t", "scopes": [secret]},
        {"name": "t", "scopes": ["read:apis"], "service_account": secret},
        {"name": "t", "scopes": ["read:apis"], "allowed_cidrs": [secret]},
        {"name": "t", "scopes": ["read:apis"], "expires_in": secret},
        {"name": "t", "scopes": ["read:apis"], "environment": secret},
    ):
        status, answer, _ = await admin(gw, "POST", f"{TEAMS}/platform/tokens", acme, body)
        assert status == 400 and secret not in repr(answer), (body, answer)
    status, answer, _ = await admin(gw, "POST", TEAMS, acme, {"name": secret, "permissions": []})
    assert status == 400 and secret not in repr(answer)


async def test_the_cli_prints_no_pasted_token(gateway: Gateway, world: dict[str, Any]) -> None:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = world["acme"]
    for secret in (world["token"], *LEGACY_LIKE):
        for args in (("token", "get", secret), ("token", "usage", secret), ("token", "revoke", secret)):
            code, out, err = await run_cli(*args, env=env)
            assert code != 0 and secret not in out + err, (args, out, err)
            assert "no such token" in err, err
        code, out, err = await run_cli("token", "list", "--team", secret, env=env)
        assert code != 0 and secret not in out + err, (out, err)
