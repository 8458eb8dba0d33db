"""Outside review, issue 14 hole (b): `GET /v1/audit?org=other` ignored its `org` parameter.
The class: a query parameter an endpoint does not read looks honoured when it is not. Now
every authenticated endpoint refuses (400, naming it) a parameter it does not declare, or one
given twice, before doing anything; `/v1/audit` honours `org` and authorizes it (403 for
another org). The declared ones are in the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers.gateway import Gateway, admin
from tokenward.api import ENDPOINTS, openapi_document
from tokenward.endpoints import REPEATABLE

TEAMS = "/v1/orgs/acme/teams"
AUTHENTICATED = [ep for ep in ENDPOINTS if ep.permission is not None]


@pytest.fixture
async def world(gateway: Gateway) -> dict[str, Any]:
    gw = gateway
    acme = await gw.org_admin()
    body = {"name": "platform", "permissions": ["read:apis", "admin:team"]}
    assert (await admin(gw, "POST", TEAMS, acme, body))[0] == 201
    assert (await admin(gw, "POST", f"{TEAMS}/platform/service-accounts", acme, {"name": "ci"}))[0] == 201
    status, token, _ = await admin(gw, "POST", f"{TEAMS}/platform/tokens", acme, {"name": "t", "scopes": ["read:apis"]})
    assert status == 201
    return {"acme": acme, "id": token["id"], "token": token["token"]}


def concrete(path: str, world: dict[str, Any]) -> str:
    values = {"org": "acme", "team": "platform", "id": world["id"], "name": "ci"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)


@pytest.mark.parametrize("ep", AUTHENTICATED, ids=lambda ep: f"{ep.method} {ep.path}")
async def test_an_undeclared_parameter_is_refused(gateway: Gateway, world: dict[str, Any], ep: Any) -> None:
    path = concrete(ep.path, world)
    for query, bad in (("org=globex", "org"), ("bogus=1", "bogus"), ("teams=other", "teams")):
        if bad in {name for name, _ in ep.query}:
            continue
        status, body, _ = await admin(gateway, ep.method, f"{path}?{query}", world["acme"], {})
        assert status == 400 and body["field"] == bad, (ep.method, path, query, body)
        assert "not a query parameter" in body["message"]
    for name, kind in ep.query:  # a declared one, twice (unless it may repeat)
        if kind == REPEATABLE:
            continue
        status, body, _ = await admin(gateway, ep.method, f"{path}?{name}=1&{name}=2", world["acme"], {})
        assert status == 400 and body["field"] == name and "more than once" in body["message"]
    # nothing happened: the token is as it was, and still works
    _, view, _ = await admin(gateway, "GET", f"{TEAMS}/platform/tokens/{world['id']}", world["acme"])
    assert view["status"] == "active" and view["name"] == "t"


async def test_audit_honours_org(gateway: Gateway, world: dict[str, Any]) -> None:
    gw, acme = gateway, world["acme"]
    globex = await gw.org_admin("globex")
    assert (await admin(gw, "POST", "/v1/orgs/globex/teams", globex, {"name": "platform", "permissions": []}))[0] == 201
    await gw.runtime.audit.flush()
    status, page, _ = await admin(gw, "GET", "/v1/audit?org=acme", acme)
    assert status == 200 and page["events"] and {e.get("org") for e in page["events"]} <= {"acme", None}
    status, body, _ = await admin(gw, "GET", "/v1/audit?org=globex", acme)
    assert status == 403 and body["step"] == "org"
    status, body, _ = await admin(gw, "GET", "/v1/audit?org=acme", globex)
    assert status == 403 and body["step"] == "org"
    # a team admin: its own org only, too
    status, ta, _ = await admin(
        gw, "POST", f"{TEAMS}/platform/tokens", acme, {"name": "ta", "scopes": ["admin:team"]}
    )
    assert (await admin(gw, "GET", "/v1/audit?org=acme", ta["token"]))[0] == 200
    assert (await admin(gw, "GET", "/v1/audit?org=globex", ta["token"]))[0] == 403


def test_the_document_lists_every_parameter_an_endpoint_takes() -> None:
    document = openapi_document()
    for ep in AUTHENTICATED:
        op = document["paths"][ep.path][ep.method.lower()]
        listed = set()
        for parameter in op.get("parameters", []):
            if "$ref" in parameter:
                name = document["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
            else:
                name = parameter
            if name["in"] == "query":
                listed.add(name["name"])
        assert listed == {name for name, _ in ep.query}, (ep.method, ep.path)
    audit = document["paths"]["/v1/audit"]["get"]
    assert any("org" in str(p) for p in audit["parameters"])
