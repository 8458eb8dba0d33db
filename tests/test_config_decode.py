"""The config decoder and the route table checks (issue 12) work without tokenward's Settings:
a section declared once with `setting(...)` is decoded by `decode_section`, and the routes of
a table are checked against the upstream names they are given."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tokenward.gateway.config_decode import (
    Checker,
    DuplicateKeyLoader,
    byte_size,
    decode_section,
    integer,
    one_of,
    rule,
    section,
    setting,
)
from tokenward.gateway.route_config import decode_routes


@dataclass(frozen=True, slots=True)
class Inner:
    size: int = setting(1024, byte_size)


@dataclass(frozen=True, slots=True)
class Example:
    mode: str = setting("fast", one_of("fast", "safe"))
    low: int = setting(1, integer(0, 10))
    high: int = setting(5, integer(0, 10))
    inner: Inner = section(Inner())  # noqa: RUF009 - a field specifier, as in settings.py


@rule(Example)
def _low_below_high(checker: Checker, example: Example, given: Mapping[str, Any], loc: str) -> None:
    if example.low > example.high:
        checker.problem(f"{loc}.low", "is above high")


def test_a_section_declared_once_is_decoded_with_its_defaults() -> None:
    checker = Checker()
    example = decode_section(checker, Example, {"high": 7, "inner": {"size": "2k"}}, "example")
    assert checker.problems == []
    assert example == Example("fast", 1, 7, Inner(2048))


def test_every_problem_is_reported_at_its_location() -> None:
    checker = Checker()
    raw = {"mode": "slow", "low": 9, "high": 3, "inner": {"size": 0, "colour": "red"}, "extra": 1}
    example = decode_section(checker, Example, raw, "example")
    assert checker.problems == [
        "example.extra: unknown key; allowed keys: mode, low, high, inner",
        "example.mode: 'slow' is not allowed: expected one of fast, safe",
        "example.inner.colour: unknown key; allowed keys: size",
        "example.inner.size: 0 is not a size: use bytes or e.g. '64k', '10m', '1g'",
        "example.low: is above high",
    ]
    assert example.mode == "fast" and example.inner == Inner(1024)  # a field with a problem keeps its default


def test_the_yaml_loader_refuses_a_key_given_twice() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'a'"):
        yaml.load("a: 1\na: 2\n", Loader=DuplicateKeyLoader)  # noqa: S506 - safe loader subclass


def test_routes_are_checked_against_the_upstream_names_given() -> None:
    checker = Checker()
    raw = [
        {"path": "/apis/{id}", "upstream": "api", "scopes": ["read:apis"], "resource": {"org": "id"}},
        {"path": "/health", "upstream": "missing", "public": True},
        {"path": "/apis/{name}", "upstream": "api", "scopes": ["read:apis"]},
    ]
    router = decode_routes(checker, raw, "routes", ("api", "web"), frozenset({"web"}))
    assert checker.problems == [
        "routes[1].upstream: 'missing' is not a defined upstream (api, web)",
        "routes[2]: matches the same requests as routes[0] (* /apis/{id}) with equal specificity; "
        "make one more specific or give them different methods",
    ]
    assert [r.path for r in router.routes] == ["/apis/{id}", "/apis/{name}"]
