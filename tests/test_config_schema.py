"""The config file's JSON Schema: generated from the settings' declarations, committed as
config/tokenward.schema.json (and kept equal to the generator's output), valid for every config
in the repository, and in agreement with `tokenward config check` on good and bad configs."""

# ruff: noqa: RUF009 - a settings section declared in a test, as settings.py declares them
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.gateway import ROOT, base_config, with_events
from tests.helpers.process import run_cli
from tokenward.demo import demo_config
from tokenward.gateway.config_decode import boolean, file_path, integer, optional, secret_string, setting
from tokenward.gateway.config_schema import INTERPOLATED, SchemaWriter, config_schema, schema_json
from tokenward.gateway.route_config import _ROUTE_KEYS
from tokenward.gateway.settings import ConfigError, settings_from_dict

SCHEMA_FILE = ROOT / "config" / "tokenward.schema.json"
REGENERATE = ".venv/bin/tokenward config schema > config/tokenward.schema.json"


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(raw: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(raw)]


def config_check_accepts(raw: object, env: dict[str, str] | None = None) -> bool:
    try:
        settings_from_dict(copy.deepcopy(raw), "test", env=env or {})
    except ConfigError:
        return False
    return True


# -- the file is the generator's output ----------------------------------------------------------
def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == schema_json(), f"the schema is out of date: {REGENERATE}"


async def test_tokenward_config_schema_prints_it() -> None:
    code, out, err = await run_cli("config", "schema")
    assert code == 0, err
    assert out == SCHEMA_FILE.read_text()


def test_it_is_a_draft_7_schema_for_editors() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    validator()  # check_schema passes
    example = (ROOT / "config" / "example.yaml").read_text()
    (line,) = [line for line in example.splitlines() if "yaml-language-server" in line]
    assert line.startswith("# yaml-language-server: $schema=")
    target = (ROOT / "config" / line.partition("$schema=")[2].strip()).resolve()
    assert target == SCHEMA_FILE


# -- every field is described, new ones included ----------------------------------------------
def _properties(schema: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(schema, dict):
        for key, sub in schema.get("properties", {}).items():
            yield f"{where}.{key}", sub
            yield from _properties(sub, f"{where}.{key}")
        for key in ("items", "additionalProperties", "then", "else"):
            if isinstance(schema.get(key), dict):
                yield from _properties(schema[key], f"{where}.{key}")
        for key in ("anyOf", "allOf"):
            for sub in schema.get(key, []):
                yield from _properties(sub, where)


def test_every_setting_has_a_schema() -> None:
    writer = SchemaWriter()
    schema = config_schema(writer)
    anything = [where for where, sub in _properties(schema) if not set(sub) - {"default", "description"}]
    assert anything == []
    # the top level lists every section and field Settings declares, routes included
    assert {"listen", "admin_listen", "redis", "tokens", "upstreams", "routes", "limits", "log"} <= set(schema["properties"])
    assert schema["required"] == ["upstreams", "routes"]


def test_the_route_schema_names_every_route_key() -> None:
    (route,) = [config_schema()["properties"]["routes"]["items"]]
    assert set(route["properties"]) == set(_ROUTE_KEYS)


@dataclass(frozen=True)
class _Pool:
    size: int = setting(10, integer(1, 100))


def test_a_new_section_is_described_from_its_declarations_alone() -> None:
    """What another section or field (TLS options, tracing) gets without touching the writer."""

    @dataclass(frozen=True)
    class Tls:
        ca_file: Path | None = setting(None, optional(file_path))
        verify: bool = setting(True, boolean)
        max_connections: int = setting(100, integer(1, 10_000))
        key_password: str | None = setting(None, secret_string, secret=True)
        server_name: str | None = setting(None, lambda value: value)  # says nothing: from the annotation
        pool: _Pool | None = setting(None, decode=lambda checker, raw, loc, values: None)

    schema = SchemaWriter().section(Tls, Tls())
    properties = schema["properties"]
    assert list(properties) == [
        "ca_file", "verify", "max_connections", "key_password", "key_password_file", "server_name", "pool"
    ]  # fmt: skip
    assert properties["pool"]["properties"]["size"]["default"] == 10
    assert properties["verify"]["default"] is True and properties["max_connections"]["default"] == 100
    # its comment is its description
    assert properties["server_name"] == {"description": "says nothing: from the annotation", "type": ["string", "null"]}
    assert {"not": {"required": ["key_password", "key_password_file"]}} in schema["allOf"]
    check = jsonschema.Draft7Validator({**schema, "definitions": {"interpolated": INTERPOLATED}})
    assert check.is_valid({"verify": False, "ca_file": "/etc/ca.pem", "key_password_file": "/run/k"})
    assert not check.is_valid({"verify": "no"}) and not check.is_valid({"max_connections": 0})
    assert not check.is_valid({"key_password": "a", "key_password_file": "/run/k"})
    assert check.is_valid({"pool": {"size": 5}}) and not check.is_valid({"pool": {"size": 500}})


# -- every config in the repository ---------------------------------------------------------------
def _bench_module(name: str) -> ModuleType:
    bench = str(ROOT / "bench")
    added = bench not in sys.path
    if added:
        sys.path.append(bench)  # bench modules import each other by name
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        if added:
            sys.path.remove(bench)


def _k8s_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["kind"] == "ConfigMap":
                for key, text in document["data"].items():
                    yield f"{path.name}:{document['metadata']['name']}:{key}", yaml.safe_load(text)


def repo_configs() -> dict[str, Callable[[], Any]]:
    configs: dict[str, Callable[[], Any]] = {}
    for path in [*sorted((ROOT / "config").glob("*.yaml")), ROOT / "deploy" / "tokenward.yaml"]:
        configs[str(path.relative_to(ROOT))] = lambda path=path: yaml.safe_load(path.read_text())
    for name, raw in _k8s_configs():
        configs[name] = lambda raw=raw: raw
    configs["tokenward demo (demo.yaml)"] = lambda: demo_config(Path("/tmp/demo"), 8080, 8081, 9000)
    configs["tests base_config"] = lambda: with_events(base_config(9000))
    configs["bench/stack.py"] = lambda: _bench_module("stack").tokenward_config(
        8080, 8081, "redis://127.0.0.1:6379/0", 9000, Path("/tmp/bench")
    )
    configs["bench/recovery.py"] = lambda: _bench_module("recovery").config(9000, "30s")
    return configs


@pytest.mark.parametrize("name", sorted(repo_configs()))
def test_every_config_in_the_repository_validates(name: str) -> None:
    raw = repo_configs()[name]()
    assert schema_errors(raw) == []
    if isinstance(raw.get("redis"), dict):
        raw["redis"].pop("password_file", None)  # a file in the pod (tests/test_deploy.py reads it)
    assert config_check_accepts(raw, {"REDIS_PASSWORD": "pw"})


# -- the schema agrees with `config check` --------------------------------------------------------
BASE: dict[str, Any] = {
    "upstreams": {"registry": {"url": "http://127.0.0.1:9000"}},
    "routes": [
        {"methods": ["GET"], "path": "/orgs/{org}/apis", "upstream": "registry", "scopes": ["read:apis"], "resource": {"org": "org"}},
        {"path": "/health", "upstream": "registry", "public": True},
    ],
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path (`routes.0.scopes`) set; `...` deletes it."""
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return raw


GOOD = {
    "the base": BASE,
    "every section at its defaults": {**BASE, "listen": None, "tokens": {}, "limits": {}},
    "an x- anchor key": {**BASE, "x-defaults": {"timeout": "5s"}},
    "a port from the environment": changed("listen", {"host": "0.0.0.0", "port": "${PORT:-8080}"}),
    "a boolean from the environment": changed("forward_authorization", "${FORWARD:-false}"),
    "a duration in seconds": changed("tokens.cache_ttl", 30),
    "tokens that never expire": changed("tokens", {"default_ttl": "never", "max_ttl": "never"}),
    "sizes in units": changed("limits", {"max_body_bytes": "10m", "max_url_length": 4096}),
    "a public route with an empty scope list": changed("routes.1.scopes", []),
    "a route for any method": changed("routes.0.methods", ...),
    "sentinel nodes in both forms": changed(
        "redis", {"sentinel": {"master": "m", "nodes": ["h:26379", {"host": "h2"}], "username": "u", "password": "p"}}
    ),
    "a cluster": changed("redis", {"cluster": {"nodes": ["10.0.0.1:7000"]}}),
    "url credentials": changed("redis", {"url": "redis://h:6379/0", "username": "u", "password": "${PW:-x}"}),
    "trusted proxies": changed("trusted_proxies", ["10.0.0.0/8", "::1", "fd00::/8"]),
    "stripped headers": changed("strip_headers", ["X-Internal-User", "X-Legacy-*"]),
    "legacy prefixes": changed("tokens.legacy_prefixes", ["tw_test", "old_tok"]),
}

BAD = {
    "an empty config": {},
    "no routes": changed("routes", ...),
    "no upstreams": changed("upstreams", ...),
    "an empty route list": changed("routes", []),
    "an unknown top-level key": {**BASE, "colour": "blue"},
    "an unknown section key": changed("tokens.colour", "blue"),
    "a port out of range": changed("listen", {"host": "h", "port": 70000}),
    "a port as a quoted string": changed("listen", {"host": "h", "port": "8080"}),
    "a log level not offered": changed("log.level", "verbose"),
    "a prefix with capitals": changed("tokens.prefix", "TW_sat"),
    "a duration without a unit": changed("tokens.cache_ttl", "30"),
    "a duration as a boolean": changed("redis.stale_if_error", True),
    "a zero size": changed("limits.max_body_bytes", "0k"),
    "a size as a boolean": changed("limits.max_body_bytes", True),
    "argon2 memory too small": changed("tokens.argon2", {"memory_cost": 1}),
    "trusted proxies not a list": changed("trusted_proxies", "10.0.0.0/8"),
    "a trusted proxy that is not an address": changed("trusted_proxies", ["office"]),
    "a header name with a space": changed("strip_headers", ["X Internal"]),
    "forward_authorization as a string": changed("forward_authorization", "yes"),
    "an empty data_dir": changed("data_dir", ""),
    "an upstream name with capitals": changed("upstreams", {"Registry": {"url": "http://h:1"}}),
    "an upstream without a url": changed("upstreams.registry", {"timeout": "5s"}),
    "an upstream URL that is not http": changed("upstreams.registry.url", "ftp://h/x"),
    "an unknown upstream key": changed("upstreams.registry.retries", 3),
    "a route without scopes": changed("routes.0.scopes", ...),
    "a route with null scopes": changed("routes.0.scopes", None),
    "a public route with scopes": changed("routes.1.scopes", ["read:apis"]),
    "a public route with a resource": changed("routes.1.resource", {"org": "org"}),
    "a misspelt scope": changed("routes.0.scopes", ["writ:specs"]),
    "a method that is not one": changed("routes.0.methods", ["FETCH"]),
    "an empty method list": changed("routes.0.methods", []),
    "a path without a leading slash": changed("routes.0.path", "orgs/{org}/apis"),
    "a route without a path": changed("routes.0.path", ...),
    "an unknown route key": changed("routes.0.timeout", "5s"),
    "a resource that is not a mapping": changed("routes.0.resource", ["org"]),
    "public as a string": changed("routes.1.public", "true"),
    "a route that is not a mapping": changed("routes.1", "/health"),
    "a Redis URL that is not one": changed("redis.url", "http://h:6379"),
    "an empty sentinel": changed("redis.sentinel", {}),
    "a sentinel without a master": changed("redis.sentinel", {"nodes": ["h:26379"]}),
    "a cluster without nodes": changed("redis.cluster", {"nodes": []}),
    "a node with an unknown key": changed("redis.cluster", {"nodes": [{"host": "h", "tls": True}]}),
    "a password that is not a string": changed("redis", {"url": "redis://h", "password": 1234}),
    "a password and its file": changed("redis", {"url": "redis://h", "password": "a", "password_file": "/run/pw"}),
    "a sentinel password and its file": changed(
        "redis.sentinel", {"master": "m", "nodes": ["h"], "sentinel_password": "a", "sentinel_password_file": "/run/pw"}
    ),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_good_config_is_accepted_by_both(name: str) -> None:
    assert schema_errors(GOOD[name]) == []
    assert config_check_accepts(GOOD[name])


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_config_is_refused_by_both(name: str) -> None:
    assert schema_errors(BAD[name]) != [], "the schema accepts it"
    assert not config_check_accepts(BAD[name]), "config check accepts it"


# -- and on random edits: whatever `config check` accepts, the schema accepts -------------------
def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list) and node:
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))
    else:
        yield path


EXAMPLE = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
LEAVES = sorted(_leaves(EXAMPLE), key=repr)
VALUES = st.one_of(
    st.integers(-2, 70_000),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.sampled_from(["30s", "0s", "never", "none", "64k", "0k", "10.0.0.0/8", "::1", "http://h:1", "redis://h",
                     "read:apis", "admin:*", "GET", "/x/{y}", "tw_test", "json", "X-Foo-*", "${X:-1}", "${X}"]),
    st.lists(st.sampled_from(["read:apis", "GET", "10.0.0.0/8", "tw_x", "X-A", "", "h:1"]), max_size=2),
)  # fmt: skip


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(LEAVES), value=VALUES)
def test_the_schema_accepts_whatever_config_check_accepts(path: tuple[Any, ...], value: Any) -> None:
    raw = copy.deepcopy(EXAMPLE)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    if config_check_accepts(raw, {"X": "2"}):
        assert schema_errors(raw) == []
