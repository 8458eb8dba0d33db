"""Scopes: `<level>:<resource>`, with `read` < `write` < `admin` on the same resource.

Effective permission of a token is the intersection of its own scopes and its
team's permission set, evaluated with this hierarchy on every request.

The admin-plane rule (one rule, used by the gateway and the admin API alike): the `org` and
`team` resources name admin-plane powers, not API resources, and no wildcard covers them in
any spelling (`admin:*`, `*` forms, any wildcard added later): they are granted only by
naming them. On top of that, nothing on the `org` resource is ever effective for, or may be
held by, a team-bound token or team permission set (`grants_org_power`).

Spellings users bring from other products (issue 14, item 5), all parsed to one meaning and
stored in one canonical spelling:
- a bare level, `read`, `write` or `admin`, is that level on every resource: `read:*` (so bare
  `admin` is `admin:*`, which, like every wildcard, never covers `admin:org` nor `admin:team`);
- `read_write` (envshed's permission) is `write`: `read_write` is `write:*`, `read_write:apis`
  is `write:apis`;
- a capability is a bare name that is not a level (`mcp`, `delegate`): held or not, with no
  hierarchy. Only the exact capability covers it: no wildcard (`read:*`, `admin:*`) and no
  level grants a capability, and a capability grants nothing else. A route may require one
  (`scopes: [mcp]`); a team token exercises it only while its team's permission set holds it.
  Names that look like a mistyped level (`reed`, `wirte`, `read-apis`) are refused with a
  suggestion rather than taken as capabilities, and `org`/`team` are never capabilities.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

LEVELS: tuple[str, ...] = ("read", "write", "admin")
_LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}
RESOURCE = re.compile(r"^(?:[a-z][a-z0-9-]*|\*)\Z")
NAME_PATTERN = r"^[a-z][a-z0-9-]*\Z"
NAME = re.compile(NAME_PATTERN)
#: The level of a capability scope (a bare name): it is held or not, and has no rank.
CAPABILITY = ""
#: Other spellings of a level, as other products write them (envshed's `read_write`).
LEVEL_ALIASES = {"read_write": "write"}
#: Every spelling of a level: bare, it means that level on every resource (`read` = `read:*`).
LEVEL_WORDS = (*LEVELS, *LEVEL_ALIASES)
EXAMPLES = "e.g. 'read:apis', 'write:specs', 'read' (= 'read:*') or a capability such as 'mcp'"

#: The org-wide admin scope. Never held by a team token.
ADMIN_ORG = "admin:org"
ADMIN_TEAM = "admin:team"
#: The resource of org-level powers: nothing on it is ever effective for a team-bound token.
ORG_RESOURCE = "org"
#: Resources that name admin-plane powers. A wildcard never covers them: `admin:*` is admin
#: on every API resource, never `admin:org` (an org admin) nor `admin:team` (a team admin).
RESERVED_RESOURCES = frozenset({ORG_RESOURCE, "team"})


class ScopeError(ValueError):
    """A string that is not a scope; the message says why."""


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    level: str
    resource: str

    @property
    def rank(self) -> int:
        """The level's rank; -1 for a capability (it has no level)."""
        return _LEVEL_RANK.get(self.level, -1)

    @property
    def is_capability(self) -> bool:
        return self.level == CAPABILITY

    def covers(self, required: Scope) -> bool:
        """True when holding `self` permits what `required` asks for."""
        if self.is_capability or required.is_capability:
            return self == required  # a capability is granted by itself only
        if self.rank < required.rank:
            return False
        if self.resource == required.resource:
            return True
        if required.resource in RESERVED_RESOURCES:
            return False  # admin-plane powers are granted by name only, never by a wildcard
        return self.resource == "*"

    def __str__(self) -> str:
        return self.resource if self.is_capability else f"{self.level}:{self.resource}"


def capability(name: str) -> Scope:
    return Scope(CAPABILITY, name)


def _suggest(word: str) -> str:
    """' (did you mean ...?)' for a word close to a level spelling, else ''."""
    close = difflib.get_close_matches(word, LEVEL_WORDS, n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_scope(text: object) -> Scope:
    """One scope in any accepted spelling, to its canonical form (see the module doc).
    The error says what is wrong, with examples, never a regular expression."""
    if not isinstance(text, str):
        raise ScopeError(f"{text!r} is not a scope: expected a string, {EXAMPLES}")
    level, sep, resource = text.partition(":")
    level = LEVEL_ALIASES.get(level, level)
    if not sep:
        return _bare(text, level)
    if level not in _LEVEL_RANK:
        raise ScopeError(
            f"{text!r} is not a scope: level must be read, write or admin{_suggest(level)}; {EXAMPLES}"
        )
    if not RESOURCE.match(resource):
        raise ScopeError(
            f"{text!r} is not a scope: after '{level}:' comes a resource name (lowercase letters, digits "
            "and '-', starting with a letter, e.g. 'apis', 'public-apis') or '*' for every resource"
        )
    return Scope(level, resource)


def _bare(text: str, level: str) -> Scope:
    """A scope written without a colon: a level on every resource, or a capability."""
    if level in _LEVEL_RANK:
        return Scope(level, "*")
    if not NAME.match(text):
        raise ScopeError(
            f"{text!r} is not a scope: write '<level>:<resource>', a bare level ('read', 'write' or "
            "'admin': that level on every resource) or a capability name (lowercase letters, digits "
            f"and '-', starting with a letter); {EXAMPLES}"
        )
    if text in RESERVED_RESOURCES:
        held_by = "org-level tokens only, never a team's" if text == "org" else "a team's admin tokens"
        raise ScopeError(f"{text!r} is not a scope: did you mean 'admin:{text}'? (held by {held_by})")
    if hint := _suggest(text):
        raise ScopeError(f"{text!r} is not a scope: not a level, and too close to one to be a capability{hint}")
    head, dash, rest = text.partition("-")
    if dash and head in LEVEL_WORDS and NAME.match(rest):
        raise ScopeError(f"{text!r} is not a scope: did you mean '{head}:{rest}'? (a level, a colon, a resource)")
    return capability(text)


def parse_scopes(texts: Iterable[object]) -> tuple[Scope, ...]:
    """Parse and de-duplicate, keeping first-seen order."""
    seen: dict[Scope, None] = {}
    for text in texts:
        seen.setdefault(parse_scope(text), None)
    return tuple(seen)


def covers(granted: Iterable[Scope], required: Scope) -> bool:
    return any(scope.covers(required) for scope in granted)


_WEAKEST_ORG_POWER = Scope(LEVELS[0], ORG_RESOURCE)


def is_org_power(required: Scope) -> bool:
    """A power only an org-level token may exercise (anything on the `org` resource)."""
    return required.resource == ORG_RESOURCE


def grants_org_power(scope: Scope) -> bool:
    """True when holding `scope` would cover some org-level power: a team permission set
    and a team token may never hold such a scope, in any spelling. Decided by `covers`
    itself, so a wildcard added later that reached the org would be refused here too."""
    return scope.covers(_WEAKEST_ORG_POWER)


def effective_covers(
    token_scopes: Iterable[Scope], team_scopes: Iterable[Scope] | None, required: Scope
) -> bool:
    """Team ∩ token: both must cover `required`. `team_scopes is None` means an org-level token.

    A team-bound token never exercises an org-level power, whatever its records hold."""
    if team_scopes is not None and is_org_power(required):
        return False
    if not covers(token_scopes, required):
        return False
    return team_scopes is None or covers(team_scopes, required)


def _meet(a: Scope, b: Scope) -> Scope | None:
    """The largest scope both `a` and `b` cover, if any."""
    if a.is_capability or b.is_capability:
        return a if a == b else None
    if a.resource == b.resource:
        resource = a.resource
    elif a.resource == "*" and b.resource not in RESERVED_RESOURCES:
        resource = b.resource
    elif b.resource == "*" and a.resource not in RESERVED_RESOURCES:
        resource = a.resource
    else:
        return None
    return Scope(LEVELS[min(a.rank, b.rank)], resource)


def _levels(scopes: Iterable[Scope]) -> dict[str, int]:
    """The highest rank held on each resource named (`*` included)."""
    best: dict[str, int] = {}
    for scope in scopes:
        if scope.is_capability:
            continue  # see `_capabilities`
        if scope.rank > best.get(scope.resource, -1):
            best[scope.resource] = scope.rank
    return best


def _rank_on(levels: dict[str, int], resource: str) -> int:
    """The highest rank `levels` covers on `resource` (-1: none): by name, or through `*`
    unless the resource is reserved (see `Scope.covers`)."""
    rank = levels.get(resource, -1)
    if resource != "*" and resource not in RESERVED_RESOURCES:
        rank = max(rank, levels.get("*", -1))
    return rank


def effective_scopes(token_scopes: Iterable[Scope], team_scopes: Iterable[Scope] | None) -> tuple[Scope, ...]:
    """What the token can exercise today: maximal elements of token ∩ team (the meets of
    every pair, see `_meet`), computed per resource in time linear in the two lists: a list
    page renders this for every row, and a token and a team may hold 100 scopes each."""
    token_scopes = tuple(token_scopes)
    if team_scopes is None:
        return token_scopes
    team_scopes = tuple(team_scopes)
    held = _capabilities(team_scopes)
    capabilities = sorted({s for s in token_scopes if s.is_capability and s in held})
    token, team = _levels(token_scopes), _levels(team_scopes)
    star = min(token.get("*", -1), team.get("*", -1))  # the meet on `*`, if any (-1: none)
    result = [Scope(LEVELS[star], "*")] if star >= 0 else []
    for resource in token.keys() | team.keys():
        if resource == "*" or resource == ORG_RESOURCE:
            continue  # `*` is above; nothing on the org resource is effective for a team token
        rank = min(_rank_on(token, resource), _rank_on(team, resource))
        if rank < 0 or (resource not in RESERVED_RESOURCES and rank <= star):
            continue  # not held by both, or covered by the meet on `*`
        result.append(Scope(LEVELS[rank], resource))
    return (*sorted(result, key=lambda s: (s.resource, s.rank)), *capabilities)


def _capabilities(scopes: Iterable[Scope]) -> frozenset[Scope]:
    return frozenset(s for s in scopes if s.is_capability)


def ineffective_scopes(
    token_scopes: Iterable[Scope], team_scopes: Iterable[Scope] | None
) -> tuple[Scope, ...]:
    """Token scopes the team does not fully hold (they grant less than asked, or nothing)."""
    if team_scopes is None:
        return ()
    team_scopes = tuple(team_scopes)
    team, held = _levels(team_scopes), _capabilities(team_scopes)

    def lacking(s: Scope) -> bool:
        if s.is_capability:
            return s not in held
        return grants_org_power(s) or _rank_on(team, s.resource) < s.rank

    return tuple(s for s in token_scopes if lacking(s))


def format_scopes(scopes: Iterable[Scope]) -> list[str]:
    return [str(s) for s in scopes]
