"""Pure unit tests for tokenward.gateway.scopes: parsing, the read < write < admin hierarchy and
effective permissions (team permission set ∩ token scopes)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenward.gateway.scopes import (
    ADMIN_ORG,
    ADMIN_TEAM,
    LEVELS,
    Scope,
    ScopeError,
    covers,
    effective_covers,
    effective_scopes,
    format_scopes,
    ineffective_scopes,
    parse_scope,
    parse_scopes,
)

RESOURCE_RE = re.compile(r"[a-z][a-z0-9-]*|\*")


def s(text: str) -> Scope:
    return parse_scope(text)


def ss(*texts: str) -> tuple[Scope, ...]:
    return tuple(parse_scope(t) for t in texts)


# --------------------------------------------------------------------------- parse_scope


@pytest.mark.parametrize(
    ("text", "level", "resource"),
    [
        ("read:apis", "read", "apis"),
        ("write:specs", "write", "specs"),
        ("admin:team", "admin", "team"),
        ("admin:org", "admin", "org"),
        ("write:public-apis", "write", "public-apis"),
        ("read:subscribers", "read", "subscribers"),
        ("read:*", "read", "*"),
        ("admin:*", "admin", "*"),
        ("read:a", "read", "a"),
        ("read:a1", "read", "a1"),
        ("read:a-", "read", "a-"),
        ("read:a--b-9", "read", "a--b-9"),
    ],
)
def test_parse_scope_valid(text: str, level: str, resource: str) -> None:
    scope = parse_scope(text)
    assert scope == Scope(level, resource)
    assert scope.level == level
    assert scope.resource == resource
    assert str(scope) == text


LEVEL_MSG = "level must be read, write or admin"
RESOURCE_MSG = "comes a resource name (lowercase letters, digits and '-', starting with a letter"
SHAPE_MSG = "write '<level>:<resource>', a bare level"
TYPE_MSG = "expected a string, e.g. 'read:apis'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("writ:specs", LEVEL_MSG, id="typo-level"),
        pytest.param("READ:apis", LEVEL_MSG, id="upper-level"),
        pytest.param("Read:apis", LEVEL_MSG, id="capitalised-level"),
        pytest.param(" read:apis", LEVEL_MSG, id="leading-space"),
        pytest.param("read :apis", LEVEL_MSG, id="space-before-colon"),
        pytest.param(":apis", LEVEL_MSG, id="empty-level"),
        pytest.param("delete:apis", LEVEL_MSG, id="unknown-level"),
        pytest.param("*:apis", LEVEL_MSG, id="star-level"),
        pytest.param("read:", RESOURCE_MSG, id="empty-resource"),
        pytest.param("read:Apis", RESOURCE_MSG, id="upper-resource"),
        pytest.param("read:1apis", RESOURCE_MSG, id="digit-first"),
        pytest.param("read:-apis", RESOURCE_MSG, id="dash-first"),
        pytest.param("read:api_s", RESOURCE_MSG, id="underscore"),
        pytest.param("read:api s", RESOURCE_MSG, id="inner-space"),
        pytest.param("read: apis", RESOURCE_MSG, id="space-after-colon"),
        pytest.param("read:apis ", RESOURCE_MSG, id="trailing-space"),
        pytest.param("read:apis\n", RESOURCE_MSG, id="trailing-newline"),
        pytest.param("read:apis:x", RESOURCE_MSG, id="two-colons"),
        pytest.param("read:**", RESOURCE_MSG, id="double-star"),
        pytest.param("read:a*", RESOURCE_MSG, id="star-suffix"),
        pytest.param("read:é", RESOURCE_MSG, id="non-ascii"),
        pytest.param("Read", SHAPE_MSG, id="no-colon"),  # bare `read` is `read:*` (test_scope_spellings)
        pytest.param("", SHAPE_MSG, id="empty"),
        pytest.param("api s", SHAPE_MSG, id="resource-only"),  # bare `apis` is a capability
        pytest.param(None, TYPE_MSG, id="none"),
        pytest.param(123, TYPE_MSG, id="int"),
        pytest.param(["read:apis"], TYPE_MSG, id="list"),
        pytest.param(b"read:apis", TYPE_MSG, id="bytes"),
    ],
)
def test_parse_scope_invalid(text: object, message: str) -> None:
    with pytest.raises(ScopeError) as info:
        parse_scope(text)
    text_msg = str(info.value)
    assert message in text_msg
    assert text_msg.startswith(f"{text!r} is not a scope: ")


def test_scope_error_is_value_error() -> None:
    assert issubclass(ScopeError, ValueError)


def test_design_error_message_example() -> None:
    with pytest.raises(
        ScopeError, match=re.escape("'writ:specs' is not a scope: level must be read, write or admin")
    ):
        parse_scope("writ:specs")


def test_parse_scopes_dedups_in_first_seen_order() -> None:
    assert parse_scopes(["write:specs", "read:apis", "write:specs", "read:*", "read:apis"]) == ss(
        "write:specs", "read:apis", "read:*"
    )
    assert parse_scopes([]) == ()


def test_parse_scopes_refuses_any_bad_item() -> None:
    with pytest.raises(ScopeError, match="level must be"):
        parse_scopes(["read:apis", "writ:specs"])


def test_format_scopes() -> None:
    assert format_scopes(ss("read:apis", "admin:*")) == ["read:apis", "admin:*"]


def test_constants() -> None:
    assert LEVELS == ("read", "write", "admin")
    assert parse_scope(ADMIN_ORG) == Scope("admin", "org")
    assert parse_scope(ADMIN_TEAM) == Scope("admin", "team")


# --------------------------------------------------------------------------- covers


@pytest.mark.parametrize(
    ("held", "required", "expected"),
    [
        # same resource: read < write < admin
        ("read:apis", "read:apis", True),
        ("write:apis", "read:apis", True),
        ("admin:apis", "read:apis", True),
        ("admin:apis", "write:apis", True),
        ("write:apis", "write:apis", True),
        ("admin:apis", "admin:apis", True),
        ("read:apis", "write:apis", False),
        ("read:apis", "admin:apis", False),
        ("write:apis", "admin:apis", False),
        # different resource: never, whatever the level
        ("admin:apis", "read:specs", False),
        ("read:apis", "read:specs", False),
        ("admin:api", "read:apis", False),
        ("admin:team", "admin:org", False),
        # '*' resource held
        ("read:*", "read:apis", True),
        ("read:*", "write:apis", False),
        ("write:*", "read:specs", True),
        ("write:*", "write:public-apis", True),
        ("write:*", "admin:specs", False),
        # no wildcard covers an admin-plane power (issue 10, item 1)
        ("admin:*", "admin:org", False),
        ("admin:*", "admin:team", False),
        ("admin:*", "read:org", False),
        ("read:*", "read:team", False),
        ("admin:org", "admin:org", True),
        ("admin:org", "read:org", True),
        ("admin:team", "admin:team", True),
        ("admin:*", "read:*", True),
        ("read:*", "read:*", True),
        ("read:*", "admin:*", False),
        # '*' required: only '*' covers it
        ("admin:apis", "read:*", False),
        ("read:apis", "read:*", False),
    ],
)
def test_scope_covers(held: str, required: str, expected: bool) -> None:
    assert s(held).covers(s(required)) is expected
    assert covers([s(held)], s(required)) is expected


def test_rank() -> None:
    assert [s(f"{lvl}:x").rank for lvl in LEVELS] == [0, 1, 2]


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        ((), "read:apis", False),
        (("read:specs", "read:apis"), "read:apis", True),
        (("read:specs", "write:apis"), "read:apis", True),
        (("read:specs", "read:apis"), "write:apis", False),
        (("read:specs", "write:*"), "write:apis", True),
    ],
)
def test_covers_any_of(granted: tuple[str, ...], required: str, expected: bool) -> None:
    assert covers(ss(*granted), s(required)) is expected


# --------------------------------------------------------------------------- effective permissions


@pytest.mark.parametrize(
    ("token", "team", "required", "expected"),
    [
        pytest.param(("write:specs",), ("read:specs",), "read:specs", True, id="team-caps-level-ok"),
        pytest.param(("write:specs",), ("read:specs",), "write:specs", False, id="team-caps-level"),
        pytest.param(("read:specs",), ("admin:specs",), "write:specs", False, id="token-caps-level"),
        pytest.param(("read:apis",), ("read:specs",), "read:apis", False, id="team-lacks-resource"),
        pytest.param(("read:apis",), (), "read:apis", False, id="empty-team"),
        pytest.param((), ("admin:*",), "read:apis", False, id="empty-token"),
        pytest.param(("write:*",), ("read:apis",), "read:apis", True, id="star-token"),
        pytest.param(("write:*",), ("read:apis",), "read:specs", False, id="star-token-other"),
        pytest.param(("write:apis",), ("admin:*",), "write:apis", True, id="star-team"),
        pytest.param(("write:apis",), ("admin:*",), "admin:apis", False, id="star-team-token-caps"),
        pytest.param(("admin:team",), None, "admin:team", True, id="org-level-token"),
        pytest.param(("read:apis",), None, "write:apis", False, id="org-level-token-still-capped"),
        pytest.param(("admin:*",), None, "admin:org", False, id="org-level-star"),
        pytest.param(("admin:org",), ("admin:org",), "admin:org", False, id="team-never-org"),
        pytest.param(("admin:*",), ("admin:*",), "admin:team", False, id="star-not-team-admin"),
    ],
)
def test_effective_covers(
    token: tuple[str, ...], team: tuple[str, ...] | None, required: str, expected: bool
) -> None:
    team_scopes = None if team is None else ss(*team)
    assert effective_covers(ss(*token), team_scopes, s(required)) is expected


@pytest.mark.parametrize(
    ("token", "team", "effective", "ineffective"),
    [
        pytest.param(
            ("write:specs", "read:apis"),
            ("read:specs", "read:apis"),
            ("read:apis", "read:specs"),
            ("write:specs",),
            id="brief-example",
        ),
        pytest.param(("read:apis",), ("admin:apis",), ("read:apis",), (), id="team-above"),
        pytest.param(("admin:apis",), ("read:apis",), ("read:apis",), ("admin:apis",), id="team-below"),
        pytest.param(("read:apis",), ("read:specs",), (), ("read:apis",), id="disjoint"),
        pytest.param(("read:apis",), (), (), ("read:apis",), id="empty-team"),
        pytest.param((), ("read:apis",), (), (), id="empty-token"),
        pytest.param(
            ("write:*",),
            ("read:apis", "admin:specs"),
            ("read:apis", "write:specs"),
            ("write:*",),
            id="star-token",
        ),
        pytest.param(
            ("write:apis", "admin:specs"),
            ("write:*",),
            ("write:apis", "write:specs"),
            ("admin:specs",),
            id="star-team",
        ),
        pytest.param(("admin:*",), ("read:*",), ("read:*",), ("admin:*",), id="star-star"),
        pytest.param(
            ("read:apis", "write:apis"),
            ("admin:apis",),
            ("write:apis",),
            (),
            id="dominated-dropped",
        ),
        pytest.param(
            ("read:apis", "read:*"),
            ("read:*",),
            ("read:*",),
            (),
            id="star-dominates",
        ),
    ],
)
def test_effective_and_ineffective_scopes(
    token: tuple[str, ...],
    team: tuple[str, ...],
    effective: tuple[str, ...],
    ineffective: tuple[str, ...],
) -> None:
    assert effective_scopes(ss(*token), ss(*team)) == ss(*effective)
    assert ineffective_scopes(ss(*token), ss(*team)) == ss(*ineffective)


def test_org_level_token_effective_is_own_scopes() -> None:
    token = ss("write:specs", "read:apis")
    assert effective_scopes(token, None) == token
    assert ineffective_scopes(token, None) == ()


def test_accepts_generators() -> None:
    token = ss("write:specs", "read:apis")
    team = ss("read:specs", "read:apis")
    assert effective_scopes(iter(token), iter(team)) == ss("read:apis", "read:specs")
    assert ineffective_scopes(iter(token), iter(team)) == ss("write:specs")
    assert effective_covers(iter(token), iter(team), s("read:specs"))


# --------------------------------------------------------------------------- properties

resources = st.one_of(
    st.just("*"),
    st.sampled_from(["apis", "specs", "team", "org", "public-apis"]),
    st.from_regex(re.compile(r"[a-z][a-z0-9-]{0,8}"), fullmatch=True),
)
scopes = st.builds(Scope, st.sampled_from(LEVELS), resources)
# a small universe, so that hierarchies and overlaps actually occur
small_scopes = st.builds(
    Scope, st.sampled_from(LEVELS), st.sampled_from(["*", "apis", "specs", "team", "org"])
)
scope_lists = st.lists(small_scopes, max_size=5)
team_lists = st.one_of(st.none(), scope_lists)


@settings(max_examples=200)
@given(scopes)
def test_str_parse_round_trip(scope: Scope) -> None:
    assert parse_scope(str(scope)) == scope
    assert str(parse_scope(str(scope))) == str(scope)


@settings(max_examples=150)
@given(st.one_of(st.text(max_size=20), st.from_regex(r"(read|write|admin):.{0,6}", fullmatch=True)))
@example("read:apis\n")
@example("read:*\n")
def test_parse_scope_total(text: str) -> None:
    """Any string: either a well-formed scope or ScopeError, nothing else."""
    try:
        scope = parse_scope(text)
    except ScopeError:
        return
    assert scope.level in LEVELS or scope.is_capability  # bare names: test_scope_spellings.py
    assert RESOURCE_RE.fullmatch(scope.resource), repr(scope.resource)
    assert parse_scope(str(scope)) == scope
    assert str(scope) == text or ":" not in text or text.startswith("read_write:")


@settings(max_examples=100)
@given(scopes)
def test_covers_reflexive(scope: Scope) -> None:
    assert scope.covers(scope)


@settings(max_examples=150)
@given(small_scopes, small_scopes, small_scopes)
def test_covers_transitive(a: Scope, b: Scope, c: Scope) -> None:
    if a.covers(b) and b.covers(c):
        assert a.covers(c)


@settings(max_examples=150)
@given(small_scopes, small_scopes)
def test_covers_antisymmetric(a: Scope, b: Scope) -> None:
    if a.covers(b) and b.covers(a):
        assert a == b


@settings(max_examples=150)
@given(scope_lists, team_lists, small_scopes)
def test_effective_covers_is_intersection(
    token: list[Scope], team: list[Scope] | None, required: Scope
) -> None:
    expected = covers(token, required) and (team is None or covers(team, required))
    if team is not None and required.resource == "org":
        expected = False  # a team-bound token never exercises an org-level power
    assert effective_covers(token, team, required) is expected
    # what effective_scopes reports allows exactly what effective_covers allows
    assert covers(effective_scopes(token, team), required) is expected


@settings(max_examples=150)
@given(scope_lists, team_lists)
def test_effective_scopes_covered_by_both(token: list[Scope], team: list[Scope] | None) -> None:
    effective = effective_scopes(token, team)
    for scope in effective:
        assert covers(token, scope)
        if team is not None:
            assert covers(team, scope)
    if team is not None:
        # maximal elements only, no duplicates, deterministic order
        assert len(set(effective)) == len(effective)
        for a in effective:
            assert not any(b != a and b.covers(a) for b in effective)
        assert list(effective) == sorted(effective, key=lambda x: (x.resource, x.rank))


@settings(max_examples=150)
@given(scope_lists, scope_lists)
def test_ineffective_scopes_are_those_team_lacks(token: list[Scope], team: list[Scope]) -> None:
    ineffective = ineffective_scopes(token, team)
    assert list(ineffective) == [t for t in token if t.resource == "org" or not covers(team, t)]
    for t in token:
        if t not in ineffective:
            assert effective_covers(token, team, t)
