"""Config declared once: a key left out of the YAML takes the dataclass default, and every
declared key is decoded by the one generic `decode_section` (issue 12 item 5)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from tokenward.gateway.settings import (
    Argon2Settings,
    AuditSettings,
    ConfigError,
    Limits,
    LogSettings,
    RedisSettings,
    Settings,
    TokenSettings,
    settings_from_dict,
)

MINIMAL: dict[str, Any] = {
    "upstreams": {"registry": {"url": "http://127.0.0.1:9000"}},
    "routes": [{"path": "/a", "upstream": "registry", "scopes": ["read:a"]}],
}


def test_absent_sections_are_the_dataclass_defaults() -> None:
    settings = settings_from_dict(MINIMAL)
    assert settings.tokens == TokenSettings()
    assert settings.tokens.argon2 == Argon2Settings()
    assert settings.redis == RedisSettings() and settings.redis.embedded
    assert settings.log == LogSettings()
    assert settings.audit == AuditSettings()
    assert settings.limits == Limits()
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 8080)
    assert (settings.admin_listen.host, settings.admin_listen.port) == ("127.0.0.1", 8081)
    assert settings.data_dir == Path(".tokenward")
    assert settings.trusted_proxies == () and settings.strip_headers == ()
    assert settings.forward_authorization is False and settings.allow_python_parser is False
    upstream = settings.upstreams["registry"]
    assert (upstream.timeout, upstream.connect_timeout, upstream.case_insensitive) == (30.0, 5.0, False)


def test_a_partial_section_keeps_the_other_defaults() -> None:
    settings = settings_from_dict(MINIMAL | {"listen": {"port": 9000}, "tokens": {"argon2": {"time_cost": 3}}})
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 9000)
    assert settings.tokens.argon2 == Argon2Settings(time_cost=3)
    assert settings.tokens.prefix == TokenSettings().prefix


@pytest.mark.parametrize(
    ("section", "cls"),
    [("tokens", TokenSettings), ("log", LogSettings), ("audit", AuditSettings), ("limits", Limits)],
)
def test_every_declared_key_is_decoded(section: str, cls: type) -> None:
    """A wrong type under any declared key is reported at that key: nothing is skipped."""
    keys = [f.name for f in fields(cls)]
    with pytest.raises(ConfigError) as info:
        settings_from_dict(MINIMAL | {section: dict.fromkeys(keys, True)})
    located = {p.split(":")[0] for p in info.value.problems}
    assert {f"{section}.{key}" for key in keys} <= located, info.value.problems


def test_settings_keys_are_the_documented_ones() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(MINIMAL | {"colour": 1})
    assert info.value.problems == [
        "colour: unknown key; allowed keys: listen, admin_listen, redis, data_dir, tokens, trusted_proxies, "
        "forward_authorization, upstreams, routes, log, audit, limits, allow_python_parser, strip_headers, "
        "tracing, rate_limits"
    ]
    assert "source" not in {f.metadata.get("key", f.name) for f in fields(Settings) if f.metadata}
