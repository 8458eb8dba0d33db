"""`authorize(match, principal)`, the decision steps after the token is known (org, team,
constraints, scope), as one table: a request on the tests' route table (the demo's), the
calling token and its team's permissions, and the outcome.

Each row runs twice: against `authorize` itself (no HTTP, no store) and end to end through
the real gateway on the real store, where the refusal is the JSON body and status the
client gets (and, for a missing scope, the RFC 6750 challenge naming it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers.gateway import APIS, Gateway, base_config
from tokenward.gateway.decision import Principal, authorize
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.refusal import Refusal
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import settings_from_dict

ROUTER = settings_from_dict(base_config(9), "authorize table").router
TEAM_PERMISSIONS = {
    "platform": ["read:apis", "write:apis", "read:specs"],
    "billing": ["read:apis", "write:apis"],
    "ops": ["read:secrets"],
    "ops2": ["read:apis"],
}
SPECS = f"{APIS}/petstore/specs"
SECRETS = "/orgs/acme/projects/{project}/envs/{env}/secrets"
PINNED = {"project": "web", "environment": "production"}


@dataclass(frozen=True)
class Caller:
    """A token: its scopes, team (None: org-level), org and constraints."""

    scopes: list[str]
    team: str | None = "platform"
    org: str = "acme"
    constraints: dict[str, str] = field(default_factory=dict)

    @property
    def team_permissions(self) -> list[str] | None:
        return None if self.team is None else TEAM_PERMISSIONS[self.team]


READER = Caller(["read:apis"])
SECRET_READER = Caller(["read:secrets"], team="ops", constraints=PINNED)
WRITER = Caller(["write:specs", "write:apis"])  # its team holds read:specs only, no write:specs

# (method, path, caller, expected): None for allowed, else (step, message)
TABLE = [
    pytest.param("GET", APIS, READER, None, id="allowed"),
    pytest.param(
        "GET", "/orgs/other/teams/platform/apis", READER,
        ("org", "token org does not match resource org"), id="other-org",
    ),
    pytest.param(
        "GET", "/orgs/acme/teams/billing/apis", READER,
        ("team", "token is not in the same team as the resource"), id="other-team",
    ),
    pytest.param(
        "POST", APIS, READER, ("scope", "token lacks required permission: write:apis"), id="missing-scope",
    ),
    # the first failing step is the one reported
    pytest.param(
        "POST", "/orgs/other/teams/platform/apis", READER,
        ("org", "token org does not match resource org"), id="other-org-and-missing-scope",
    ),
    pytest.param(
        "POST", "/orgs/acme/teams/billing/apis", READER,
        ("team", "token is not in the same team as the resource"), id="other-team-and-missing-scope",
    ),
    # constraints pin route parameters
    pytest.param(
        "GET", SECRETS.format(project="web", env="production"), SECRET_READER, None, id="constraints-met",
    ),
    pytest.param(
        "GET", SECRETS.format(project="web", env="staging"), SECRET_READER,
        ("constraints", "token is constrained to environment=production; this request is for environment=staging"),
        id="constraint-environment",
    ),
    pytest.param(
        "GET", SECRETS.format(project="api", env="production"), SECRET_READER,
        ("constraints", "token is constrained to project=web; this request is for project=api"),
        id="constraint-project",
    ),
    pytest.param(
        "GET", "/orgs/acme/teams/ops2/apis", Caller(["read:apis"], team="ops2", constraints={"project": "web"}),
        ("constraints", "token is constrained to project=web and this route does not name a project"),
        id="constraint-on-a-route-without-it",
    ),
    pytest.param(
        "GET", "/orgs/acme/teams/billing/apis", Caller(["read:apis"], constraints={"project": "web"}),
        ("team", "token is not in the same team as the resource"), id="other-team-before-constraints",
    ),
    # effective scopes: the token's, as far as its team holds them; write covers read
    pytest.param("GET", SPECS, WRITER, None, id="write-covers-read-the-team-holds"),
    pytest.param(
        "POST", SPECS, WRITER, ("scope", "token lacks required permission: write:specs"),
        id="scope-the-team-lacks",
    ),
    pytest.param("GET", APIS, WRITER, None, id="write-apis-covers-read-apis"),
    pytest.param("POST", APIS, WRITER, None, id="write-apis"),
]  # fmt: skip

ORG_LEVEL = [
    # an org-level token (no team) is not held to a team, only to its org and scopes
    pytest.param("GET", "/orgs/acme/teams/billing/apis", Caller(["read:apis"], team=None), None, id="org-token"),
    pytest.param(
        "GET", "/orgs/other/teams/billing/apis", Caller(["read:apis"], team=None),
        ("org", "token org does not match resource org"), id="org-token-other-org",
    ),
    pytest.param(
        "POST", APIS, Caller(["read:apis"], team=None),
        ("scope", "token lacks required permission: write:apis"), id="org-token-missing-scope",
    ),
]  # fmt: skip


def principal(caller: Caller) -> Principal:
    record = TokenRecord(
        id="AAAAAAAAAAAA",
        prefix="tw_sat",
        org=caller.org,
        team=caller.team,
        name="t",
        description="",
        scopes=parse_scopes(caller.scopes),
        secret_hash="x",
        created_at=0.0,
        created_by="t",
        constraints=caller.constraints,
    )
    permissions = caller.team_permissions
    return Principal(record, None if permissions is None else parse_scopes(permissions))


@pytest.mark.parametrize("method, path, caller, expected", TABLE + ORG_LEVEL)
def test_authorize(method: str, path: str, caller: Caller, expected: tuple[str, str] | None) -> None:
    match = ROUTER.match(method, path)
    assert match is not None
    if expected is None:
        authorize(match, principal(caller))
        return
    with pytest.raises(Refusal) as refused:
        authorize(match, principal(caller))
    step, message = expected
    assert refused.value.status == 403
    assert refused.value.step is not None and (refused.value.step.value, refused.value.message) == expected
    if step == "scope":
        assert refused.value.error == "insufficient_scope"
        assert refused.value.scope == message.rpartition(": ")[2]
    else:
        assert (refused.value.error, refused.value.scope) == ("forbidden", None)


@pytest.fixture
async def teams(gateway: Gateway) -> Gateway:
    for name, permissions in TEAM_PERMISSIONS.items():
        await gateway.team(name, permissions)
    return gateway


@pytest.mark.parametrize("method, path, caller, expected", TABLE)
async def test_authorize_through_the_gateway(
    teams: Gateway, method: str, path: str, caller: Caller, expected: tuple[str, str] | None
) -> None:
    gw = teams
    assert caller.team is not None
    token, _ = await gw.token(caller.team, caller.scopes, org=caller.org, constraints=caller.constraints)
    async with gw.session.request(method, gw.url + path, headers=gw.auth(token)) as r:
        body: Any = await r.json()
        status, challenge = r.status, r.headers.get("WWW-Authenticate")
    if expected is None:
        assert status == 200, body
        return
    step, message = expected
    assert (status, body["step"], body["message"]) == (403, step, message)
    if step == "scope":
        scope = message.rpartition(": ")[2]
        assert challenge == f'Bearer realm="tokenward", error="insufficient_scope", scope="{scope}"'
