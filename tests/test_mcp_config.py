"""The route key `mcp` (per-tool MCP authorization): decoded into the route's `McpPolicy`,
every problem named with its YAML location, and the JSON Schema agreeing with `config check`."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers.gateway import ROOT, base_config
from tokenward.gateway.explain import explain_route
from tokenward.gateway.mcp_policy import DEFAULT_MAX_BODY, McpPolicy
from tokenward.gateway.scopes import parse_scope
from tokenward.gateway.settings import ConfigError, Settings, settings_from_dict

MCP_ROUTE = {"methods": ["GET", "POST", "DELETE"], "path": "/mcp", "upstream": "registry", "scopes": ["mcp"]}


def with_mcp(mcp: Any, **route: Any) -> dict[str, Any]:
    config = base_config(9)
    config["routes"].append({**MCP_ROUTE, "mcp": mcp, **route})
    return config


def load(raw: dict[str, Any]) -> Settings:
    return settings_from_dict(copy.deepcopy(raw), "test")


def policy_of(settings: Settings) -> McpPolicy:
    [route] = [r for r in settings.router.routes if r.path == "/mcp"]
    assert route.mcp is not None
    return route.mcp


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load(raw)
    return str(info.value)


def schema_accepts(raw: dict[str, Any]) -> bool:
    schema = json.loads((ROOT / "config" / "tokenward.schema.json").read_text())
    return not list(jsonschema.Draft7Validator(schema).iter_errors(raw))


def test_a_policy_maps_tools_to_scopes_and_denies_the_rest_by_default() -> None:
    policy = policy_of(load(with_mcp({"tools": {"search": "read:docs", "deploy": "write:deploy", "drop": "deny"}})))
    assert policy.scope_for("search") == parse_scope("read:docs")
    assert policy.scope_for("deploy") == parse_scope("write:deploy")
    assert policy.scope_for("drop") is None  # listed as denied
    assert policy.scope_for("other") is None  # default: deny
    assert policy.max_body == DEFAULT_MAX_BODY


def test_a_default_scope_covers_the_unlisted_tools() -> None:
    policy = policy_of(load(with_mcp({"tools": {"deploy": "write:deploy"}, "default": "read:tools", "max_body": "64k"})))
    assert policy.scope_for("anything") == parse_scope("read:tools")
    assert policy.scope_for("deploy") == parse_scope("write:deploy")
    assert policy.max_body == 64 * 1024


def test_routes_without_the_key_carry_no_policy() -> None:
    settings = load(base_config(9))
    assert all(route.mcp is None for route in settings.router.routes)


@pytest.mark.parametrize(
    ("mcp", "route", "expected"),
    [
        ({"tools": {"deploy": "writ:deploy"}}, {}, "{loc}.mcp.tools.deploy: 'writ:deploy' is not a scope"),
        ({"tools": {"x": "read:docs"}, "default": "admin"}, {}, None),
        ({"tools": {"x": "read:docs"}, "default": "nope:x"}, {}, "{loc}.mcp.default: 'nope:x' is not a scope"),
        ({"tools": {"x": "read:docs"}, "defualt": "deny"}, {}, "{loc}.mcp.defualt: unknown key"),
        ({"tools": ["x"]}, {}, "{loc}.mcp.tools: expected a mapping of tool name to scope"),
        ({"tools": {"x": "deny"}}, {}, "{loc}.mcp: allows no tool"),
        ({}, {}, "{loc}.mcp: allows no tool"),
        ("yes", {}, "{loc}.mcp: expected a mapping"),
        ({"tools": {"x": "read:docs"}, "max_body": "lots"}, {}, "{loc}.mcp.max_body: 'lots' is not a size"),
        ({"tools": {"x" * 129: "read:docs"}}, {}, "is 1..128 printable characters"),
        ({"default": "read:tools"}, {"websocket": True}, "{loc}.mcp: MCP's streamable HTTP transport is no WebSocket"),
        (
            {"default": "read:tools"},
            {"public": True, "scopes": None},
            "{loc}.mcp: a public route takes no token, so no per-tool scopes",
        ),
    ],
)
def test_config_errors_name_the_yaml_location(mcp: Any, route: dict[str, Any], expected: str | None) -> None:
    raw = with_mcp(mcp, **route)
    if expected is None:
        load(raw)
        return
    assert expected.format(loc=f"routes[{len(raw['routes']) - 1}]") in problems(raw)


@pytest.mark.parametrize(
    "mcp",
    [
        {"tools": {"search": "read:docs", "drop": "deny"}},
        {"tools": {"search": "read:docs"}, "default": "deny", "max_body": "1m"},
        {"default": "mcp"},
        {"tools": None, "default": "read:tools"},
    ],
)
def test_the_schema_accepts_what_config_check_accepts(mcp: Any) -> None:
    raw = with_mcp(mcp)
    load(raw)
    assert schema_accepts(raw)


@pytest.mark.parametrize(
    "mcp",
    [
        {"tools": {"search": "writ:docs"}},
        {"tools": {"search": "read:docs"}, "defualt": "deny"},
        {"tools": {"search": "read:docs"}, "max_body": "lots"},
        "yes",
    ],
)
def test_the_schema_refuses_what_config_check_refuses(mcp: Any) -> None:
    raw = with_mcp(mcp)
    problems(raw)
    assert not schema_accepts(raw)


def test_the_examples_commented_mcp_route_loads() -> None:
    """config/example.yaml's commented MCP route, uncommented, is valid config."""
    path = ROOT / "config" / "example.yaml"
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  #   - {methods: [GET, POST, DELETE]"))
    block = [lines[start].replace("#   ", "  ", 1)]
    block += [line.replace("#   ", "  ", 1) for line in lines[start + 1 :] if line.startswith("  #      ")][:3]
    raw = yaml.safe_load(path.read_text())
    raw["routes"] += yaml.safe_load("\n".join(block))
    [route] = [r for r in settings_from_dict(raw, "example").router.routes if r.mcp is not None]
    assert route.mcp is not None and route.mcp.scope_for("deploy") == parse_scope("write:deploy")
    assert route.mcp.scope_for("drop_db") is None and route.mcp.max_response == 8 * 1024 * 1024


def test_config_explain_shows_the_policy() -> None:
    lines, _ = explain_route(load(with_mcp({"tools": {"search": "read:docs", "drop": "deny"}})), "POST", "/mcp")
    assert (
        "mcp: each tools/call needs its tool's scope (step mcp_tool): search=read:docs, drop=deny; other tools: deny"
        in lines
    )
