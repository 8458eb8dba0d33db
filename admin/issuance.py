"""What issuance warns about (issue 14, item 11): a token that is issued but cannot do what it
asks for. The admin API returns these as `warnings` beside a new token (create and rotate);
the CLI prints them on stderr, and `token get` marks the same scope losses.

- A scope the team does not fully hold: it grants less (the team's lower level on that
  resource) or nothing. Decided with the gateway's own `covers`, so the warning says exactly
  what a request will get (a team holding `read:*` covers a token's `read:apis`: no warning).
- A constraint whose name no route's `resource` names: the gateway refuses such a token on
  every route that does not name the constraint, so on this route table it works nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenward.gateway.routes import Route
from tokenward.gateway.scopes import LEVELS, Scope, ScopeError, covers, parse_scope

_ADMIN_PLANE = frozenset({"org", "team"})  # resource roles that are not constraints


def _parsed(texts: Iterable[str]) -> list[Scope]:
    out = []
    for text in texts:
        try:
            out.append(parse_scope(text))
        except ScopeError:
            continue
    return out


def kept_level(scope: str, effective: Sequence[str]) -> str | None:
    """The highest scope on `scope`'s resource, up to its level, that `effective` covers: what a
    token asking for `scope` actually gets (None: nothing)."""
    try:
        asked = parse_scope(scope)
    except ScopeError:
        return None
    granted = _parsed(effective)
    for level in reversed(LEVELS[: asked.rank + 1]):
        if covers(granted, Scope(level, asked.resource)):
            return f"{level}:{asked.resource}"
    return None


def scope_losses(ineffective: Sequence[str], effective: Sequence[str]) -> list[str]:
    """One sentence per scope the team does not fully hold: what is lost, what is kept."""
    out = []
    for scope in ineffective:
        kept = kept_level(scope, effective)
        if kept is None:
            out.append(f"the team does not hold {scope}: it grants nothing")
        else:
            out.append(f"the team holds {kept} only: {scope} acts as {kept}")
    return out


def constraint_warnings(routes: Iterable[Route], constraints: Mapping[str, str]) -> list[str]:
    """One sentence per constraint that no route names in its `resource`."""
    named: set[str] = set()
    for route in routes:
        named.update(role for role in route.resource if role not in _ADMIN_PLANE)
    out = []
    for name, value in sorted(constraints.items()):
        if name in named:
            continue
        known = ", ".join(sorted(named)) or "none"
        out.append(
            f"constraint {name}={value}: no route names a {name!r} parameter, so the gateway refuses"
            f" this token on every route (constraint names the routes use: {known})"
        )
    return out


def issuance_warnings(routes: Iterable[Route], view: Mapping[str, Any]) -> list[str]:
    """The warnings for a token just issued, from its view (`views.token_view`)."""
    return scope_losses(view.get("ineffective_scopes") or [], view.get("effective_scopes") or []) + (
        constraint_warnings(routes, view.get("constraints") or {})
    )
