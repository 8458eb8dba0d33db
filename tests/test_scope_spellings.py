"""Scopes and lifetimes as the reference products write them (issue 14, item 5).

Bare levels (`read` = `read:*`), envshed's `read_write` (= `write`), capability scopes (`mcp`:
held or not, granted by nothing but itself), explained errors (never a regular expression),
lifetimes in days (`--expires-in 90`) and dates (`2027-01-01`): the parsers, their properties,
and the gateway, admin API, config loader and CLI against a real store.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers.gateway import TEAMS, TOKENS, Gateway, admin
from tests.helpers.process import run_cli
from tokenward.gateway.durations import parse_lifetime, parse_time
from tokenward.gateway.scopes import (
    ADMIN_ORG,
    ADMIN_TEAM,
    Scope,
    ScopeError,
    capability,
    covers,
    effective_covers,
    effective_scopes,
    grants_org_power,
    ineffective_scopes,
    parse_scope,
    parse_scopes,
)
from tokenward.gateway.settings import ConfigError, settings_from_dict

# what an error message must never show: the regular expression that checks the value
REGEX_BITS = ("[a-z]", "[0-9]", "\\d", "(?:", ")*", "^", "\\Z")


def no_regex(message: str, given: object = None) -> None:
    """`message` (without the echoed input `given`) shows no regular expression."""
    rest = message.replace(repr(given), "") if given is not None else message
    assert not [bit for bit in REGEX_BITS if bit in rest], message


# -- the parser -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("read", "read:*"),
        ("write", "write:*"),
        ("admin", "admin:*"),
        ("read_write", "write:*"),
        ("read_write:apis", "write:apis"),
        ("read:apis", "read:apis"),
        ("mcp", "mcp"),
        ("delegate", "delegate"),
        ("public-apis", "public-apis"),
    ],
)
def test_spellings_have_one_canonical_form(written: str, canonical: str) -> None:
    scope = parse_scope(written)
    assert str(scope) == canonical
    assert parse_scope(canonical) == scope


def test_bare_levels_are_levels_on_every_resource() -> None:
    assert parse_scope("write").covers(parse_scope("read:specs"))
    assert parse_scope("read_write").covers(parse_scope("write:apis"))
    assert not parse_scope("read").covers(parse_scope("write:apis"))
    assert parse_scopes(["read", "read:*", "read_write", "write:*"]) == (Scope("read", "*"), Scope("write", "*"))


@pytest.mark.parametrize("held", ["admin", "admin:*", "read_write", "write", "read"])
def test_no_bare_level_covers_an_admin_plane_power(held: str) -> None:
    scope = parse_scope(held)
    for power in (ADMIN_ORG, ADMIN_TEAM, "read:org", "read:team"):
        assert not scope.covers(parse_scope(power)), (held, power)
    assert not grants_org_power(scope)
    team = parse_scopes(["admin:*", ADMIN_TEAM])
    assert not effective_covers((scope,), team, parse_scope(ADMIN_ORG))
    assert not effective_covers((scope,), None, parse_scope(ADMIN_ORG))  # org-level too


@pytest.mark.parametrize("held", ["read:*", "write:*", "admin:*", "admin", "admin:mcp", "write:mcp", "delegate"])
def test_only_the_capability_grants_a_capability(held: str) -> None:
    assert not parse_scope(held).covers(capability("mcp"))
    assert capability("mcp").covers(capability("mcp"))
    assert not capability("mcp").covers(parse_scope("read:mcp"))
    assert not capability("mcp").covers(parse_scope("read:apis"))


def test_a_team_must_hold_a_capability_for_its_tokens_to_have_it() -> None:
    token = parse_scopes(["read:apis", "mcp", "delegate"])
    team = parse_scopes(["admin:*", "mcp"])
    assert effective_scopes(token, team) == (Scope("read", "apis"), capability("mcp"))
    assert ineffective_scopes(token, team) == (capability("delegate"),)
    assert effective_covers(token, team, capability("mcp"))
    assert not effective_covers(token, team, capability("delegate"))
    assert not effective_covers(parse_scopes(["admin:*"]), team, capability("mcp"))


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("reed", "did you mean 'read'?"),
        ("wirte", "did you mean 'write'?"),
        ("admn", "did you mean 'admin'?"),
        ("read-write", "did you mean 'read_write'?"),
        ("read-apis", "did you mean 'read:apis'?"),
        ("writ:specs", "did you mean 'write'?"),
        ("org", "did you mean 'admin:org'? (held by org-level tokens only, never"),
        ("team", "did you mean 'admin:team'?"),
        ("READ:apis", "e.g. 'read:apis'"),
        ("Read", "a bare level ('read', 'write' or 'admin': that level on every resource)"),
        ("read:Apis", "e.g. 'apis', 'public-apis'"),
        ("read:api_s", "or '*' for every resource"),
        ("*", "e.g. 'read:apis'"),
        ("", "e.g. 'read:apis'"),
        (5, "expected a string"),
    ],
)
def test_bad_scopes_are_explained_with_examples(text: object, hint: str) -> None:
    with pytest.raises(ScopeError) as info:
        parse_scope(text)
    assert hint in str(info.value)
    no_regex(str(info.value))


names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
spellings = st.one_of(
    names,
    st.builds(lambda lvl, r: f"{lvl}:{r}", st.sampled_from(["read", "write", "admin", "read_write"]), names | st.just("*")),
    st.sampled_from(["read", "write", "admin", "read_write", "mcp", "org", "team", "*"]),
    st.text(max_size=16),
)


@settings(max_examples=300)
@given(spellings)
@example("admin")
@example("read_write")
def test_parse_is_total_and_canonical(text: str) -> None:
    """Any string parses to a scope whose canonical spelling parses to itself, or is refused
    with a message that shows no regular expression."""
    try:
        scope = parse_scope(text)
    except ScopeError as exc:
        no_regex(str(exc), text)
        return
    assert parse_scope(str(scope)) == scope
    assert str(parse_scope(str(scope))) == str(scope)


@settings(max_examples=300)
@given(spellings, spellings)
def test_only_admin_org_covers_admin_org_and_only_a_capability_covers_itself(a: str, b: str) -> None:
    try:
        held, wanted = parse_scope(a), parse_scope(b)
    except ScopeError:
        return
    if held.covers(parse_scope(ADMIN_ORG)):
        assert str(held) == ADMIN_ORG
    if wanted.is_capability:
        assert held.covers(wanted) == (held == wanted)
    if held.is_capability:
        assert held.covers(wanted) == (held == wanted)


@settings(max_examples=200)
@given(st.lists(spellings, max_size=5), st.lists(spellings, max_size=5), spellings)
def test_effective_scopes_agree_with_effective_covers(token: list[str], team: list[str], wanted: str) -> None:
    try:
        token_scopes, team_scopes, required = parse_scopes(token), parse_scopes(team), parse_scope(wanted)
    except ScopeError:
        return
    if required.resource == "org":
        return  # nothing on the org resource is effective for a team token (test_scopes.py)
    effective = effective_scopes(token_scopes, team_scopes)
    assert covers(effective, required) == effective_covers(token_scopes, team_scopes, required)


# -- lifetimes and dates ----------------------------------------------------------------------
DAY = 86400.0


@pytest.mark.parametrize(
    ("given_value", "seconds"),
    [("90", 90 * DAY), (90, 90 * DAY), ("1", DAY), ("90d", 90 * DAY), ("12h", 12 * 3600.0), ("2w", 14 * DAY)],
)
def test_lifetimes_take_days_as_a_bare_number(given_value: object, seconds: float) -> None:
    assert parse_lifetime(given_value) == seconds


@pytest.mark.parametrize("bad", ["1y", "90 days", "-5", "d", "", "1.5", None, True, [90]])
def test_bad_lifetimes_are_explained(bad: object) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90.*'90d'") as info:
        parse_lifetime(bad)
    no_regex(str(info.value))


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=10**6))
def test_a_bare_number_is_that_many_days(days: int) -> None:
    assert parse_lifetime(str(days)) == parse_lifetime(days) == parse_lifetime(f"{days}d") == days * DAY


def test_a_date_is_midnight_utc() -> None:
    assert parse_time("2027-01-01") == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert parse_time("2027-01-01T12:00:00Z") == datetime(2027, 1, 1, 12, tzinfo=UTC).timestamp()
    assert parse_time("2027-01-01T12:00:00+02:00") == datetime(2027, 1, 1, 10, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("tomorrow", "e.g. '2027-01-01' (00:00 UTC)"),
        ("2027-13-01", "e.g. '2027-01-01' (00:00 UTC)"),
        ("2027-01-01T12:00:00", "has no time zone: add one, e.g. 'Z'"),
        (20270101, "is not a date or time"),
    ],
)
def test_bad_times_are_explained(bad: object, hint: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_time(bad)
    assert hint in str(info.value)
    no_regex(str(info.value))


@settings(max_examples=200)
@given(st.dates(min_value=datetime(1971, 1, 1).date(), max_value=datetime(9998, 12, 31).date()))
def test_every_date_is_its_own_midnight(day: Any) -> None:
    assert parse_time(day.isoformat()) == datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


# -- config ---------------------------------------------------------------------------------------
def test_routes_take_every_spelling_and_explain_bad_ones(config: dict[str, Any]) -> None:
    raw = copy.deepcopy(config)
    raw["routes"][0]["scopes"] = ["read", "mcp"]
    settings_ = settings_from_dict(raw)
    assert [str(s) for s in settings_.routes[0].scopes] == ["read:*", "mcp"]
    raw["routes"][0]["scopes"] = ["Read:apis", "reed"]
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    problems = info.value.problems
    assert problems[0].startswith("routes[0].scopes[0]: 'Read:apis' is not a scope: level must be read")
    assert problems[1].startswith("routes[0].scopes[1]: 'reed' is not a scope") and "did you mean 'read'?" in problems[1]
    for problem in problems:
        no_regex(problem)


# -- end to end: the admin API and the gateway, on the real store ---------------------------------
MCP_PATH = "/orgs/acme/teams/platform/mcp"


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    config = copy.deepcopy(config)
    config["routes"].append(
        {
            "methods": ["POST"],
            "path": "/orgs/{org}/teams/{team}/mcp",
            "upstream": "registry",
            "scopes": ["mcp"],
            "resource": {"org": "org", "team": "team"},
        }
    )
    return await start_gateway(config)


async def org_admin(gw: Gateway, permissions: list[str]) -> str:
    token = await gw.org_admin()
    status, data, _ = await admin(gw, "POST", TEAMS, token, {"name": "platform", "permissions": permissions})
    assert status == 201, data
    return token


async def mcp_status(gw: Gateway, token: str) -> tuple[int, dict[str, Any]]:
    async with gw.session.post(gw.url + MCP_PATH, headers=gw.auth(token), json={}) as r:
        return r.status, await r.json() if r.content_type == "application/json" else {}


async def test_team_permissions_are_stored_canonical(gw: Gateway) -> None:
    token = await org_admin(gw, ["read", "read_write:specs", "mcp", "admin:team"])
    status, data, _ = await admin(gw, "GET", f"{TEAMS}/platform", token)
    assert status == 200 and data["permissions"] == ["read:*", "write:specs", "mcp", "admin:team"], data
    stored = await gw.runtime.store.get_team("acme", "platform")
    assert stored is not None and [str(s) for s in stored.permissions] == data["permissions"]


async def test_a_route_requiring_a_capability(gw: Gateway) -> None:
    admin_token = await org_admin(gw, ["read", "mcp", "delegate"])
    status, agent, _ = await admin(gw, "POST", TOKENS, admin_token, {"name": "agent", "scopes": ["read", "mcp"]})
    assert status == 201 and agent["scopes"] == ["read:*", "mcp"] and agent["effective_scopes"] == ["read:*", "mcp"]
    status, plain, _ = await admin(gw, "POST", TOKENS, admin_token, {"name": "ci", "scopes": ["read"]})
    assert status == 201
    assert (await mcp_status(gw, agent["token"]))[0] == 200
    status, body = await mcp_status(gw, plain["token"])  # authenticates, refused by the MCP route
    assert (status, body["step"], body["message"]) == (403, "scope", "token lacks required permission: mcp")
    # the team gives up the capability: the token keeps it on paper, and it grants nothing
    status, data, _ = await admin(gw, "PUT", f"{TEAMS}/platform/permissions", admin_token, {"permissions": ["read"]})
    assert status == 200, data
    status, body = await mcp_status(gw, agent["token"])
    assert (status, body["step"]) == (403, "scope")
    status, view, _ = await admin(gw, "GET", f"{TOKENS}/{agent['id']}", admin_token)
    assert view["ineffective_scopes"] == ["mcp"] and view["effective_scopes"] == ["read:*"]


async def test_wildcards_do_not_grant_capabilities(gw: Gateway) -> None:
    admin_token = await org_admin(gw, ["admin", "mcp"])
    status, data, _ = await admin(gw, "POST", TOKENS, admin_token, {"name": "all", "scopes": ["admin"]})
    assert status == 201 and data["scopes"] == ["admin:*"]
    status, body = await mcp_status(gw, data["token"])
    assert (status, body["step"]) == (403, "scope")


async def test_bare_admin_is_never_an_org_or_team_admin(gw: Gateway) -> None:
    admin_token = await org_admin(gw, ["admin"])
    status, data, _ = await admin(gw, "POST", TOKENS, admin_token, {"name": "bare", "scopes": ["admin"]})
    assert status == 201 and data["scopes"] == ["admin:*"] and data["ineffective_scopes"] == []
    bare = data["token"]
    status, whoami, _ = await admin(gw, "GET", "/v1/whoami", bare)
    assert status == 200 and whoami["effective_scopes"] == ["admin:*"]
    for method, path, body in (
        ("POST", TEAMS, {"name": "x", "permissions": ["read"]}),
        ("POST", TOKENS, {"name": "y", "scopes": ["read"]}),
        ("GET", TOKENS, None),
    ):
        status, refused, _ = await admin(gw, method, path, bare, body)
        assert status == 403, (method, path, refused)
    status, refused, _ = await admin(gw, "POST", TEAMS, admin_token, {"name": "z", "permissions": ["admin", ADMIN_ORG]})
    assert status == 400 and refused["field"] == "permissions", refused


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ({"scopes": ["reed"]}, "scopes", "did you mean 'read'?"),
        ({"scopes": ["read-apis"]}, "scopes", "did you mean 'read:apis'?"),
        ({"scopes": ["READ:apis"]}, "scopes[0]", "e.g. `read:apis`"),
        ({"scopes": ["read"], "expires_in": "1y"}, "expires_in", "(`90` = `90d`)"),
        ({"scopes": ["read"], "expires_in": "90 days"}, "expires_in", "e.g. `90d`"),
        ({"scopes": ["read"], "expires_at": "next week"}, "expires_at", "`2027-01-01`"),
        ({"scopes": ["read"], "expires_at": "2027-01-01T00:00:00"}, "expires_at", "`2027-01-01`"),
        ({"scopes": ["read"], "environment": "prod"}, "environment", "live"),
    ],
)
async def test_bad_input_is_explained_by_the_api(gw: Gateway, body: dict[str, Any], field: str, hint: str) -> None:
    admin_token = await org_admin(gw, ["read"])
    status, data, _ = await admin(gw, "POST", TOKENS, admin_token, {"name": "t", **body})
    assert status == 400 and data["field"] == field and hint in data["message"], data
    no_regex(data["message"])


async def test_lifetimes_in_days_and_dates(gw: Gateway) -> None:
    admin_token = await org_admin(gw, ["read"])
    for expires_in in ("90", 90):
        status, data, _ = await admin(gw, "POST", TOKENS, admin_token, {"name": "d", "scopes": ["read"], "expires_in": expires_in})
        assert status == 201, data
        left = datetime.fromisoformat(data["expires_at"]) - datetime.now(UTC)
        assert timedelta(days=89, hours=23) < left <= timedelta(days=90), data["expires_at"]
    day = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    status, data, _ = await admin(gw, "POST", TOKENS, admin_token, {"name": "d", "scopes": ["read"], "expires_at": day})
    assert status == 201 and data["expires_at"] == f"{day}T00:00:00Z", data


async def test_cli_explains_and_takes_days(gw: Gateway, tmp_path: Path) -> None:
    admin_token = await org_admin(gw, ["read", "mcp"])
    env = {"TOKENWARD_ADMIN_URL": gw.admin_url, "TOKENWARD_TOKEN": admin_token}
    team = ("--org", "acme", "--team", "platform")
    code, out, err = await run_cli("token", "create", *team, "--name", "x", "--scopes", "reed", env=env)
    assert code != 0 and "did you mean 'read'?" in err and len(err.strip().splitlines()) == 1, err
    no_regex(err)
    code, out, err = await run_cli(
        "token", "create", *team, "--name", "x", "--scopes", "read,mcp", "--expires-in", "90", "--json", env=env
    )
    assert code == 0, err
    created = yaml.safe_load(out)
    assert created["scopes"] == ["read:*", "mcp"]
    left = datetime.fromisoformat(created["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89, hours=23) < left <= timedelta(days=90)
    assert re.match(r"^tw_sat_", created["token"])


async def test_a_team_admin_grants_only_capabilities_it_holds(gw: Gateway) -> None:
    org_token = await org_admin(gw, ["read", "mcp", "delegate", "admin:team"])
    status, data, _ = await admin(gw, "POST", TOKENS, org_token, {"name": "lead", "scopes": ["read", "mcp", "admin:team"]})
    assert status == 201, data
    lead = data["token"]
    status, data, _ = await admin(gw, "POST", TOKENS, lead, {"name": "agent", "scopes": ["read:apis", "mcp"]})
    assert status == 201 and data["effective_scopes"] == ["read:apis", "mcp"], data
    status, data, _ = await admin(gw, "POST", TOKENS, lead, {"name": "agent", "scopes": ["delegate"]})
    assert (status, data["step"]) == (403, "grant") and "it lacks delegate" in data["message"], data
