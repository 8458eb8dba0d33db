"""Live and test tokens (issue 14, item 6): every token belongs to one environment, `live` (the
default) or `test`, fixed at issuance and shown in its prefix (`tokens.prefix`, default
`tw_sat`, for live tokens; `tokens.test_prefix`, default `tw_test`, for test tokens).

The environment is a field of the stored record, not read back from the prefix: the gateway
accepts a token only under the prefix it was issued with (`Authenticator` binds it), so a test
token re-labelled with the live prefix is an unknown token, and changing a prefix in the config
later never moves a token to another environment. A route or an upstream may accept only some
environments (`environments: [live]`): other tokens are refused with 403 at step `environment`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from tokenward.gateway.config_decode import Checker, described

LIVE, TEST = "live", "test"
ENVIRONMENTS: tuple[str, ...] = (LIVE, TEST)


class Prefixes(Protocol):
    @property
    def prefix(self) -> str: ...

    @property
    def test_prefix(self) -> str: ...


def environment_field(value: object, field: str = "environment") -> str:
    """An environment as a request or a query gives it; ValueError says what is accepted."""
    if value not in ENVIRONMENTS:
        shown = value if isinstance(value, str) and len(value) <= 40 else type(value).__name__
        raise ValueError(f"{field}: {shown!r} is not an environment: expected live or test")
    return str(value)


def prefix_for(tokens: Prefixes, environment: str) -> str:
    """The prefix new tokens of `environment` are issued with."""
    return tokens.test_prefix if environment == TEST else tokens.prefix


def decode_environments(checker: Checker, raw: object, loc: str) -> frozenset[str] | None:
    """`environments: [live]` on a route or an upstream; None: absent (every environment)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        checker.problem(loc, "expected a non-empty list of environments, e.g. [live] or [live, test]")
        return None
    found = set()
    for i, item in enumerate(raw):
        if item not in ENVIRONMENTS:
            checker.problem(f"{loc}[{i}]", f"{item!r} is not an environment: expected live or test")
        else:
            found.add(str(item))
    return frozenset(found)


@described({"type": "array", "minItems": 1, "items": {"enum": list(ENVIRONMENTS)}})
def environments_setting(checker: Checker, raw: object, loc: str, _: Mapping[str, Any]) -> frozenset[str] | None:
    """The decoder of an upstream's `environments` key."""
    return decode_environments(checker, raw, loc)


def combine(*accepted: frozenset[str] | None) -> frozenset[str] | None:
    """What both a route and its upstream accept (None: no restriction)."""
    given = [a for a in accepted if a is not None]
    if not given:
        return None
    result = frozenset(ENVIRONMENTS)
    for a in given:
        result &= a
    return result


def describe(accepted: Iterable[str]) -> str:
    return " and ".join(e for e in ENVIRONMENTS if e in set(accepted)) or "no"
