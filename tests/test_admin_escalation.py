"""Admin-plane escalation (issue 10, items 1 and 3), against the real store and admin API.

1. A team whose permission set holds wildcards (`admin:*`, `write:*`, ...) never acts as an org
   admin nor on another team, at any admin endpoint or at the gateway, whatever its records hold.
2. No token creates or rotates a token that can do more than it can itself: scopes, constraints,
   allowed_cidrs and expiry are all bounded by the caller's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.gateway import Gateway
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import (
    LEVELS,
    Scope,
    covers,
    effective_covers,
    effective_scopes,
    parse_scope,
    parse_scopes,
)
from tokenward.service import issue_token

ORG = "/v1/orgs/acme"
TEAMS = f"{ORG}/teams"
VICTIM = f"{TEAMS}/platform"
IN_TEN_DAYS = (datetime.now(UTC) + timedelta(days=10)).isoformat()


async def call(gw: Gateway, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    async with gw.session.request(method, gw.admin_url + path, headers=gw.auth(token), json=body) as r:
        data = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, data


def ts(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time).timestamp()


# ------------------------------------------------------------------------------ the scope rule
resources = st.one_of(
    st.sampled_from(["*", "org", "team", "apis"]), st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True)
)
any_scope = st.builds(Scope, st.sampled_from(LEVELS), resources)


@given(any_scope)
def test_only_a_named_org_scope_covers_an_org_power(scope: Scope) -> None:
    for level in LEVELS:
        assert scope.covers(Scope(level, "org")) is (
            scope.resource == "org" and scope.rank >= LEVELS.index(level)
        )
    from tokenward.gateway.scopes import grants_org_power  # here, so the module imports on older code

    assert grants_org_power(scope) is (scope.resource == "org")


@given(any_scope)
def test_only_a_named_team_scope_covers_admin_team(scope: Scope) -> None:
    assert scope.covers(parse_scope("admin:team")) is (scope == parse_scope("admin:team"))


@given(st.lists(any_scope, max_size=6), st.lists(any_scope, max_size=6), st.sampled_from(LEVELS))
def test_team_bound_token_never_exercises_an_org_power(
    token: list[Scope], team: list[Scope], level: str
) -> None:
    power = Scope(level, "org")
    assert not effective_covers(token, team, power)
    assert not covers(effective_scopes(token, team), power)


@pytest.mark.parametrize("wildcard", ["admin:*", "write:*", "read:*"])
def test_wildcards_cover_api_resources_only(wildcard: str) -> None:
    held = parse_scope(wildcard)
    assert held.covers(Scope(held.level, "apis")) and held.covers(Scope("read", "public-apis"))
    for reserved in ("admin:org", "write:org", "read:org", "admin:team", "read:team"):
        assert not held.covers(parse_scope(reserved))
    # an org-level token holding a wildcard is not an org admin either
    assert not effective_covers([held], None, parse_scope("admin:org"))


# ------------------------------------------------------------------------------ wildcard teams
@dataclass
class Plane:
    gw: Gateway
    org_admin: str
    victim_token: str
    victim_id: str
    victim_revoked_id: str


@pytest.fixture
async def plane(gateway: Gateway) -> Plane:
    org_admin = await gateway.org_admin()
    status, _ = await call(
        gateway, "POST", TEAMS, org_admin, {"name": "platform", "permissions": ["read:apis", "admin:team"]}
    )
    assert status == 201
    status, created = await call(
        gateway, "POST", f"{VICTIM}/tokens", org_admin, {"name": "victim", "scopes": ["read:apis"]}
    )
    assert status == 201
    _, revoked = await call(
        gateway, "POST", f"{VICTIM}/tokens", org_admin, {"name": "old", "scopes": ["read:apis"]}
    )
    await call(gateway, "POST", f"{VICTIM}/tokens/{revoked['id']}/revoke", org_admin)
    status, _ = await call(gateway, "POST", f"{VICTIM}/service-accounts", org_admin, {"name": "deployer"})
    assert status == 201
    return Plane(gateway, org_admin, created["token"], created["id"], revoked["id"])


# (team permission set, token scopes, how the team came to be): "api" sets are accepted by the
# admin API today; "store" sets are written straight into the store (records from before the
# fix, or from a bug elsewhere) and must be just as powerless.
WILDCARD_TEAMS = [
    pytest.param(["admin:*"], ["admin:*"], "api", id="admin-star"),
    pytest.param(["admin:*", "admin:team"], ["admin:*", "admin:team"], "api", id="admin-star-team-admin"),
    pytest.param(["read:*", "write:*", "admin:*"], ["admin:*", "write:*"], "api", id="every-star"),
    pytest.param(["admin:*", "admin:org"], ["admin:*", "admin:org"], "store", id="stored-admin-org"),
    pytest.param(
        ["admin:*", "admin:org", "admin:team", "write:org"],
        ["admin:org", "admin:team", "admin:*"],
        "store",
        id="stored-everything",
    ),
]


async def rogue_token(plane: Plane, permissions: list[str], scopes: list[str], how: str) -> tuple[str, str]:
    gw = plane.gw
    if how == "api":
        status, body = await call(
            gw, "POST", TEAMS, plane.org_admin, {"name": "rogue", "permissions": permissions}
        )
        assert status == 201, body
    else:
        await gw.runtime.store.create_team(
            TeamRecord("acme", "rogue", parse_scopes(permissions), 0.0, "test")
        )
    token, record = await issue_token(
        gw.runtime, org="acme", team="rogue", name="rogue", scopes=parse_scopes(scopes), created_by="test"
    )
    return token, record.id


async def snapshot(plane: Plane) -> Any:
    gw, admin = plane.gw, plane.org_admin
    teams = (await call(gw, "GET", TEAMS, admin))[1]
    tokens = (await call(gw, "GET", f"{VICTIM}/tokens", admin))[1]
    sas = (await call(gw, "GET", f"{VICTIM}/service-accounts", admin))[1]
    strip = ("last_used_at",)
    return (
        teams,
        [{k: v for k, v in t.items() if k not in strip} for t in tokens["tokens"]],
        [{k: v for k, v in s.items() if k != "active_tokens"} for s in sas["service_accounts"]],
    )


@pytest.mark.parametrize(("permissions", "scopes", "how"), WILDCARD_TEAMS)
async def test_wildcard_team_never_acts_outside_its_team(
    plane: Plane, permissions: list[str], scopes: list[str], how: str
) -> None:
    gw = plane.gw
    token, _ = await rogue_token(plane, permissions, scopes, how)
    before = await snapshot(plane)
    vid, rid = plane.victim_id, plane.victim_revoked_id
    outside: list[tuple[str, str, Any]] = [
        ("POST", TEAMS, {"name": "mine", "permissions": ["admin:*"]}),
        ("GET", f"{TEAMS}/platform", None),
        ("PUT", f"{VICTIM}/permissions", {"permissions": ["admin:*"]}),
        ("PUT", f"{TEAMS}/rogue/permissions", {"permissions": ["admin:*", "admin:team"]}),
        ("POST", f"{VICTIM}/service-accounts", {"name": "evil"}),
        ("GET", f"{VICTIM}/service-accounts", None),
        ("DELETE", f"{VICTIM}/service-accounts/deployer", None),
        ("POST", f"{VICTIM}/tokens", {"name": "evil", "scopes": ["read:apis"]}),
        ("GET", f"{VICTIM}/tokens", None),
        ("GET", f"{VICTIM}/tokens/{vid}", None),
        ("PATCH", f"{VICTIM}/tokens/{vid}", {"name": "renamed"}),
        ("POST", f"{VICTIM}/tokens/{vid}/revoke", None),
        ("POST", f"{VICTIM}/tokens/{vid}/rotate", {}),
        ("POST", f"{VICTIM}/tokens/{rid}/restore", None),
        ("DELETE", f"{VICTIM}/tokens/{rid}", None),
        ("GET", "/v1/audit?team=platform", None),
        ("GET", "/v1/orgs/globex/teams", None),
        ("POST", "/v1/orgs/globex/teams", {"name": "x", "permissions": []}),
        ("GET", "/v1/orgs/globex/teams/rogue/tokens", None),
    ]
    for method, path, body in outside:
        status, data = await call(gw, method, path, token, body)
        assert status == 403, (method, path, status, data)

    # what the token may see is its own team, at most
    status, data = await call(gw, "GET", TEAMS, token)
    assert status == 403 or [t["name"] for t in data["teams"]] == ["rogue"], data
    status, data = await call(gw, "GET", "/v1/audit", token)
    if status == 200:
        assert all("platform" not in (e.get("team"), e.get("actor_team")) for e in data["events"])
        assert all("acme" in (e.get("org"), e.get("actor_org")) for e in data["events"])
    else:
        assert status == 403
    status, me = await call(gw, "GET", "/v1/whoami", token)
    assert status == 200 and me["team"] == "rogue"
    effective = parse_scopes(me["effective_scopes"])
    assert not any(s.resource == "org" for s in effective), me
    assert not covers(effective, parse_scope("admin:team")) or "admin:team" in scopes
    # a team-admin token (admin:team held by name) manages its own team, and only by name
    team_admin = "admin:team" in scopes and "admin:team" in permissions
    status, data = await call(gw, "GET", f"{TEAMS}/rogue/tokens", token)
    assert status == (200 if team_admin else 403), data
    status, data = await call(gw, "POST", "/v1/leaks", token, {"tokens": ["not-a-token"]})
    assert status == (200 if team_admin else 403), data
    # it can never hand out an org power, under any spelling
    for spelled in (["admin:org"], ["write:org"], ["read:org"]):
        status, data = await call(
            gw, "POST", f"{TEAMS}/rogue/tokens", token, {"name": "x", "scopes": spelled}
        )
        assert status in (400, 403), (spelled, data)
    assert await snapshot(plane) == before
    async with gw.session.get(
        f"{gw.url}/orgs/acme/teams/platform/apis", headers=gw.auth(plane.victim_token)
    ) as r:
        assert r.status == 200  # the victim's token still works


@pytest.mark.parametrize(
    "permissions",
    [["admin:org"], ["read:org"], ["write:org", "read:apis"], ["admin:org", "admin:*"]],
)
async def test_team_permission_sets_refuse_org_powers(plane: Plane, permissions: list[str]) -> None:
    gw = plane.gw
    status, data = await call(
        gw, "POST", TEAMS, plane.org_admin, {"name": "sneaky", "permissions": permissions}
    )
    assert status == 400 and data["field"] == "permissions", data
    status, data = await call(
        gw, "PUT", f"{VICTIM}/permissions", plane.org_admin, {"permissions": permissions}
    )
    assert status == 400 and data["field"] == "permissions", data
    status, data = await call(
        gw, "POST", f"{VICTIM}/tokens", plane.org_admin, {"name": "x", "scopes": permissions}
    )
    assert status == 400 and data["field"] == "scopes", data


@pytest.mark.parametrize(
    "spelling",
    [
        "*",
        "*:*",
        "*:org",
        "admin:",  # bare `admin` is `admin:*`: accepted, never an org power (test_scope_spellings.py)
        "ADMIN:ORG",
        "admin:Org",
        "admin:org ",
        "admin:**",
        "admin:o*",
        "admin:org:x",
    ],
)
async def test_other_spellings_of_org_power_are_not_scopes(plane: Plane, spelling: str) -> None:
    gw = plane.gw
    status, data = await call(gw, "POST", TEAMS, plane.org_admin, {"name": "odd", "permissions": [spelling]})
    assert status == 400, data
    status, data = await call(
        gw, "PUT", f"{VICTIM}/permissions", plane.org_admin, {"permissions": [spelling]}
    )
    assert status == 400, data
    status, data = await call(
        gw, "POST", f"{VICTIM}/tokens", plane.org_admin, {"name": "x", "scopes": [spelling]}
    )
    assert status == 400, data
    _, teams = await call(gw, "GET", TEAMS, plane.org_admin)
    assert [t["name"] for t in teams["teams"]] == ["platform"]


async def test_admin_star_team_is_accepted_but_only_covers_api_resources(plane: Plane) -> None:
    """`admin:*` stays a legal permission set (admin on every API resource), with no admin powers."""
    gw = plane.gw
    status, team = await call(
        gw, "POST", TEAMS, plane.org_admin, {"name": "apis", "permissions": ["admin:*"]}
    )
    assert status == 201 and team["permissions"] == ["admin:*"]
    status, created = await call(
        gw, "POST", f"{TEAMS}/apis/tokens", plane.org_admin, {"name": "t", "scopes": ["admin:*"]}
    )
    assert status == 201 and created["effective_scopes"] == ["admin:*"]
    async with gw.session.post(
        f"{gw.url}/orgs/acme/teams/apis/apis/x/specs", headers=gw.auth(created["token"])
    ) as r:
        assert r.status == 200


async def test_gateway_routes_requiring_admin_powers_refuse_wildcards(
    start_gateway: Any, config: dict[str, Any]
) -> None:
    config = dict(config)
    config["routes"] = [
        *config["routes"],
        {"methods": ["GET"], "path": "/org-settings", "upstream": "registry", "scopes": ["admin:org"]},
        {
            "methods": ["GET"],
            "path": "/orgs/{org}/teams/{team}/settings",
            "upstream": "registry",
            "scopes": ["admin:team"],
            "resource": {"org": "org", "team": "team"},
        },
    ]
    gw: Gateway = await start_gateway(config)
    await gw.team("rogue", ["admin:*", "read:*", "write:*"])
    await gw.runtime.store.create_team(
        TeamRecord("acme", "legacy", parse_scopes(["admin:org", "admin:*"]), 0.0, "t")
    )
    star, _ = await gw.token("rogue", ["admin:*"])
    legacy, _ = await gw.token("legacy", ["admin:org"])
    org_admin = await gw.org_admin()
    for token, path, expected in [
        (star, "/org-settings", 403),
        (legacy, "/org-settings", 403),
        (star, "/orgs/acme/teams/rogue/settings", 403),
        (star, "/orgs/acme/teams/rogue/apis", 200),
        (org_admin, "/org-settings", 200),
    ]:
        async with gw.session.get(gw.url + path, headers=gw.auth(token)) as r:
            assert r.status == expected, (path, await r.text())


# ------------------------------------------------------------------------------ grants (item 3)
PERMS = ["admin:team", "read:apis", "write:specs", "read:secrets", "read:specs"]


@dataclass
class Granter:
    gw: Gateway
    org_admin: str
    token: str
    id: str
    expires_at: float


@pytest.fixture
async def granter(gateway: Gateway) -> Granter:
    """A short-lived team admin pinned to project=web and to 127.0.0.0/8."""
    org_admin = await gateway.org_admin()
    await call(gateway, "POST", TEAMS, org_admin, {"name": "platform", "permissions": PERMS})
    status, created = await call(
        gateway,
        "POST",
        f"{VICTIM}/tokens",
        org_admin,
        {
            "name": "short-admin",
            "scopes": ["admin:team", "read:apis", "read:secrets"],
            "expires_in": "1h",
            "constraints": {"project": "web"},
            "allowed_cidrs": ["127.0.0.0/8"],
        },
    )
    assert status == 201, created
    return Granter(gateway, org_admin, created["token"], created["id"], ts(created["expires_at"]))


GOOD = {
    "name": "ok",
    "scopes": ["read:apis"],
    "constraints": {"project": "web"},
    "allowed_cidrs": ["127.0.0.1/32"],
}


@pytest.mark.parametrize(
    ("change", "what"),
    [
        pytest.param({"expires_in": "365d"}, "expires_at", id="longer-expiry"),
        pytest.param({"expires_in": "2h"}, "expires_at", id="slightly-longer-expiry"),
        pytest.param({"expires_at": IN_TEN_DAYS}, "expires_at", id="later-expires-at"),
        pytest.param({"scopes": ["write:specs"]}, "scopes", id="scope-team-has"),
        pytest.param({"scopes": ["read:specs"]}, "scopes", id="other-resource"),
        pytest.param({"scopes": ["read:*"]}, "scopes", id="wildcard"),
        pytest.param({"scopes": ["admin:*"]}, "scopes", id="admin-wildcard"),
        pytest.param({"scopes": ["write:apis"]}, "scopes", id="higher-level"),
        pytest.param({"scopes": ["read:mocks"]}, "scopes", id="scope-nobody-has"),
        pytest.param({"constraints": {}}, "constraints", id="no-constraints"),
        pytest.param({"constraints": {"project": "api"}}, "constraints", id="other-project"),
        pytest.param({"constraints": {"environment": "prod"}}, "constraints", id="other-constraint"),
        pytest.param({"allowed_cidrs": []}, "allowed_cidrs", id="no-cidrs"),
        pytest.param({"allowed_cidrs": ["0.0.0.0/0"]}, "allowed_cidrs", id="everywhere"),
        pytest.param({"allowed_cidrs": ["127.0.0.1/32", "10.0.0.0/8"]}, "allowed_cidrs", id="one-outside"),
        pytest.param({"allowed_cidrs": ["126.0.0.0/7"]}, "allowed_cidrs", id="supernet"),
        pytest.param({"allowed_cidrs": ["::/0"]}, "allowed_cidrs", id="ipv6"),
        pytest.param({"allowed_cidrs": ["::ffff:127.0.0.1/128"]}, "allowed_cidrs", id="v4-mapped"),
    ],
)
async def test_team_admin_cannot_mint_wider_than_itself(
    granter: Granter, change: dict[str, Any], what: str
) -> None:
    status, data = await call(granter.gw, "POST", f"{VICTIM}/tokens", granter.token, {**GOOD, **change})
    assert status == 403, data
    assert data["message"].startswith(f"{what}:") and data["step"] == "grant", data
    status, listed = await call(granter.gw, "GET", f"{VICTIM}/tokens", granter.org_admin)
    assert [t["name"] for t in listed["tokens"]] == ["short-admin"]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({}, id="as-granter"),
        pytest.param({"constraints": {"project": "web", "environment": "prod"}}, id="narrower-constraints"),
        pytest.param({"scopes": ["read:apis", "admin:team", "read:secrets"]}, id="all-it-holds"),
        pytest.param({"expires_in": "30m"}, id="shorter"),
        pytest.param({"allowed_cidrs": ["127.0.0.0/16", "127.0.0.0/8"]}, id="cidrs-inside"),
    ],
)
async def test_team_admin_may_mint_within_itself(granter: Granter, change: dict[str, Any]) -> None:
    status, data = await call(granter.gw, "POST", f"{VICTIM}/tokens", granter.token, {**GOOD, **change})
    assert status == 201, data
    assert ts(data["expires_at"]) <= granter.expires_at


async def test_default_expiry_is_clamped_to_the_granters(granter: Granter) -> None:
    status, data = await call(granter.gw, "POST", f"{VICTIM}/tokens", granter.token, GOOD)
    assert status == 201 and ts(data["expires_at"]) == granter.expires_at


async def test_cannot_rotate_itself_into_a_long_lived_token(granter: Granter) -> None:
    gw = granter.gw
    path = f"{VICTIM}/tokens/{granter.id}/rotate"
    for body in ({"expires_in": "365d"}, {"expires_at": IN_TEN_DAYS}, {"expires_in": "61m"}):
        status, data = await call(gw, "POST", path, granter.token, body)
        assert status == 403 and data["step"] == "grant", data
    status, _ = await call(gw, "GET", "/v1/whoami", granter.token)
    assert status == 200  # still itself, not rotated
    status, rotated = await call(gw, "POST", path, granter.token, {})
    assert status == 201, rotated
    assert ts(rotated["expires_at"]) <= granter.expires_at
    assert rotated["constraints"] == {"project": "web"} and rotated["allowed_cidrs"] == ["127.0.0.0/8"]


async def test_cannot_rotate_a_wider_token_to_obtain_it(granter: Granter) -> None:
    """Rotating hands out a plaintext: a token the caller could not mint, it cannot rotate."""
    gw = granter.gw
    wider = [
        {
            "name": "w1",
            "scopes": ["write:specs"],
            "constraints": {"project": "web"},
            "allowed_cidrs": ["127.0.0.1/32"],
            "expires_in": "30m",
        },
        {"name": "w2", "scopes": ["read:apis"], "constraints": {"project": "web"}, "expires_in": "30m"},
    ]
    for body in wider:
        status, created = await call(gw, "POST", f"{VICTIM}/tokens", granter.org_admin, body)
        assert status == 201, created
        path = f"{VICTIM}/tokens/{created['id']}/rotate"
        status, data = await call(gw, "POST", path, granter.token, {"expires_in": "30m"})
        assert status == 403, (body, data)
        status, still = await call(gw, "GET", f"{VICTIM}/tokens/{created['id']}", granter.org_admin)
        assert still["status"] == "active" and still.get("replaced_by") is None
    # w3 is within the granter but for its lifetime: an explicit longer one is refused, and
    # without one the replacement ends when the granter does
    w3_body = {
        "name": "w3",
        "scopes": ["read:apis"],
        "constraints": {"project": "web"},
        "allowed_cidrs": ["127.0.0.1/32"],
        "expires_in": "30d",
    }
    status, created = await call(gw, "POST", f"{VICTIM}/tokens", granter.org_admin, w3_body)
    w3 = created["id"]
    status, data = await call(gw, "POST", f"{VICTIM}/tokens/{w3}/rotate", granter.token, {"expires_in": "2h"})
    assert status == 403 and data["message"].startswith("expires_at:"), data
    status, data = await call(gw, "POST", f"{VICTIM}/tokens/{w3}/rotate", granter.token, {})
    assert status == 201 and ts(data["expires_at"]) == granter.expires_at, data


async def test_minted_tokens_cannot_do_more_at_the_gateway(granter: Granter) -> None:
    gw = granter.gw
    status, data = await call(
        gw, "POST", f"{VICTIM}/tokens", granter.token, {**GOOD, "scopes": ["read:secrets"]}
    )
    assert status == 201
    base = f"{gw.url}/orgs/acme/projects"
    async with gw.session.get(f"{base}/web/envs/prod/secrets", headers=gw.auth(data["token"])) as r:
        assert r.status == 200
    async with gw.session.get(f"{base}/api/envs/prod/secrets", headers=gw.auth(data["token"])) as r:
        assert r.status == 403


async def test_constrained_admin_reaches_only_its_constraint(granter: Granter) -> None:
    gw = granter.gw
    _, other = await call(
        gw,
        "POST",
        f"{VICTIM}/tokens",
        granter.org_admin,
        {"name": "api", "scopes": ["read:apis"], "constraints": {"project": "api"}},
    )
    _, free = await call(
        gw, "POST", f"{VICTIM}/tokens", granter.org_admin, {"name": "free", "scopes": ["read:apis"]}
    )
    _, mine = await call(gw, "POST", f"{VICTIM}/tokens", granter.token, GOOD)
    status, listed = await call(gw, "GET", f"{VICTIM}/tokens", granter.token)
    assert status == 200 and {t["name"] for t in listed["tokens"]} == {"short-admin", "ok"}
    for target in (other["id"], free["id"]):
        for method, suffix, body in [
            ("GET", "", None),
            ("PATCH", "", {"name": "x"}),
            ("POST", "/revoke", None),
            ("POST", "/restore", None),
            ("POST", "/rotate", {}),
            ("DELETE", "", None),
        ]:
            status, data = await call(gw, method, f"{VICTIM}/tokens/{target}{suffix}", granter.token, body)
            assert status == 403 and data["step"] == "constraints", (method, suffix, data)
    for method, path, body in [
        ("GET", f"{VICTIM}/service-accounts", None),
        ("POST", f"{VICTIM}/service-accounts", {"name": "sa"}),
        ("DELETE", f"{VICTIM}/service-accounts/sa", None),
        ("GET", VICTIM, None),
        ("GET", TEAMS, None),
        ("GET", "/v1/audit", None),
        ("PUT", f"{VICTIM}/permissions", {"permissions": ["read:apis"]}),
    ]:
        status, data = await call(gw, method, path, granter.token, body)
        assert status == 403, (method, path, data)
    status, data = await call(gw, "POST", f"{VICTIM}/tokens/{mine['id']}/revoke", granter.token)
    assert status == 200 and data["status"] == "revoked"


async def test_team_admin_cannot_widen_its_teams_permissions(gateway: Gateway) -> None:
    org_admin = await gateway.org_admin()
    await call(
        gateway, "POST", TEAMS, org_admin, {"name": "platform", "permissions": ["admin:team", "read:apis"]}
    )
    _, ta = await call(
        gateway, "POST", f"{VICTIM}/tokens", org_admin, {"name": "ta", "scopes": ["admin:team", "read:apis"]}
    )
    for permissions in (["admin:team", "read:apis", "write:specs"], ["admin:*"], ["admin:team"]):
        status, data = await call(
            gateway, "PUT", f"{VICTIM}/permissions", ta["token"], {"permissions": permissions}
        )
        assert status == 403, data
    _, team = await call(gateway, "GET", VICTIM, org_admin)
    assert team["permissions"] == ["admin:team", "read:apis"]


async def test_allowed_cidrs_apply_to_admin_calls(gateway: Gateway) -> None:
    org_admin = await gateway.org_admin()
    await call(
        gateway, "POST", TEAMS, org_admin, {"name": "platform", "permissions": ["admin:team", "read:apis"]}
    )
    _, far = await call(
        gateway,
        "POST",
        f"{VICTIM}/tokens",
        org_admin,
        {"name": "far", "scopes": ["admin:team", "read:apis"], "allowed_cidrs": ["10.0.0.0/8"]},
    )
    status, data = await call(gateway, "GET", f"{VICTIM}/tokens", far["token"])
    assert status == 401 and data["step"] == "status", data
    status, data = await call(
        gateway, "POST", f"{VICTIM}/tokens", far["token"], {"name": "x", "scopes": ["read:apis"]}
    )
    assert status == 401


async def test_org_admin_is_unconstrained_as_before(gateway: Gateway) -> None:
    org_admin = await gateway.org_admin()
    await call(gateway, "POST", TEAMS, org_admin, {"name": "platform", "permissions": ["read:apis"]})
    status, data = await call(
        gateway,
        "POST",
        f"{VICTIM}/tokens",
        org_admin,
        {"name": "long", "scopes": ["read:apis", "write:mocks"], "expires_in": "365d"},
    )
    assert status == 201 and ts(data["expires_at"]) > time.time() + 364 * 86400
    status, rotated = await call(
        gateway, "POST", f"{VICTIM}/tokens/{data['id']}/rotate", org_admin, {"expires_in": "365d"}
    )
    assert status == 201, rotated
