"""Scopes: `<level>:<resource>`, with `read` < `write` < `admin` on the same resource.

Effective permission of a token is the intersection of its own scopes and its
team's permission set, evaluated with this hierarchy on every request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LEVELS: tuple[str, ...] = ("read", "write", "admin")
_LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}
_RESOURCE = re.compile(r"^(?:[a-z][a-z0-9-]*|\*)\Z")

#: The org-wide admin scope. Never held by a team token.
ADMIN_ORG = "admin:org"
ADMIN_TEAM = "admin:team"


class ScopeError(ValueError):
    """A string that is not a scope; the message says why."""


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    level: str
    resource: str

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self.level]

    def covers(self, required: Scope) -> bool:
        """True when holding `self` permits what `required` asks for."""
        if self.rank < required.rank:
            return False
        return self.resource == "*" or self.resource == required.resource

    def __str__(self) -> str:
        return f"{self.level}:{self.resource}"


def parse_scope(text: object) -> Scope:
    if not isinstance(text, str):
        raise ScopeError(f"{text!r} is not a scope: expected a string like 'read:apis'")
    level, sep, resource = text.partition(":")
    if not sep:
        raise ScopeError(f"{text!r} is not a scope: expected '<level>:<resource>', e.g. 'read:apis'")
    if level not in _LEVEL_RANK:
        raise ScopeError(f"{text!r} is not a scope: level must be read, write or admin")
    if not _RESOURCE.match(resource):
        raise ScopeError(f"{text!r} is not a scope: resource must match [a-z][a-z0-9-]* or be '*'")
    return Scope(level, resource)


def parse_scopes(texts: Iterable[object]) -> tuple[Scope, ...]:
    """Parse and de-duplicate, keeping first-seen order."""
    seen: dict[Scope, None] = {}
    for text in texts:
        seen.setdefault(parse_scope(text), None)
    return tuple(seen)


def covers(granted: Iterable[Scope], required: Scope) -> bool:
    return any(scope.covers(required) for scope in granted)


def effective_covers(
    token_scopes: Iterable[Scope], team_scopes: Iterable[Scope] | None, required: Scope
) -> bool:
    """Team ∩ token: both must cover `required`. `team_scopes is None` means an org-level token."""
    if not covers(token_scopes, required):
        return False
    return team_scopes is None or covers(team_scopes, required)


def _meet(a: Scope, b: Scope) -> Scope | None:
    """The largest scope both `a` and `b` cover, if any."""
    if a.resource == "*":
        resource = b.resource
    elif b.resource in ("*", a.resource):
        resource = a.resource
    else:
        return None
    return Scope(LEVELS[min(a.rank, b.rank)], resource)


def effective_scopes(token_scopes: Iterable[Scope], team_scopes: Iterable[Scope] | None) -> tuple[Scope, ...]:
    """What the token can exercise today: maximal elements of token ∩ team."""
    token_scopes = tuple(token_scopes)
    if team_scopes is None:
        return token_scopes
    team_scopes = tuple(team_scopes)
    meets = {m for t in token_scopes for p in team_scopes if (m := _meet(t, p)) is not None}
    maximal = [m for m in meets if not any(o != m and o.covers(m) for o in meets)]
    return tuple(sorted(maximal, key=lambda s: (s.resource, s.rank)))


def ineffective_scopes(
    token_scopes: Iterable[Scope], team_scopes: Iterable[Scope] | None
) -> tuple[Scope, ...]:
    """Token scopes the team does not fully hold (they grant less than asked, or nothing)."""
    if team_scopes is None:
        return ()
    team = tuple(team_scopes)
    return tuple(s for s in token_scopes if not covers(team, s))


def format_scopes(scopes: Iterable[Scope]) -> list[str]:
    return [str(s) for s in scopes]
