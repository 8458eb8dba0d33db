"""Strict config loading: every problem at once, each with its YAML location."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.gateway import ROOT
from tokenward.gateway.routes import HTTP_METHODS
from tokenward.gateway.settings import ConfigError, Settings, load_settings, settings_from_dict

EXAMPLE = ROOT / "config" / "example.yaml"
EXAMPLE_ROUTE_COUNT = 9

BASE: dict[str, Any] = {
    "upstreams": {"registry": {"url": "http://127.0.0.1:9000"}},
    "routes": [{"methods": ["GET"], "path": "/a", "upstream": "registry", "scopes": ["read:a"]}],
}


def base(**top: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(top)
    return raw


def route(path: str = "/a", methods: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"path": path, "upstream": "registry"}
    if methods is not None:
        spec["methods"] = methods
    if "public" not in extra:
        spec["scopes"] = ["read:a"]
    spec.update(extra)
    return spec


def with_routes(*routes: dict[str, Any]) -> dict[str, Any]:
    return base(routes=list(routes))


def problems(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


def at(problem_list: list[str], location: str) -> list[str]:
    """The problems reported at exactly `location`."""
    return [p for p in problem_list if p.startswith(f"{location}: ")]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from tokenward.cli import main; main()", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- the example config and `tokenward config check` ----------------------------------------
def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert isinstance(settings, Settings)
    assert len(settings.routes) == EXAMPLE_ROUTE_COUNT
    assert set(settings.upstreams) == {"registry"}
    assert settings.tokens.default_ttl == 90 * 86400
    assert settings.tokens.max_ttl == 365 * 86400
    assert settings.redis.url is None
    assert settings.data_dir == EXAMPLE.parent / ".tokenward"
    assert sum(r.public for r in settings.routes) == 1


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_example_store_alternatives_load(topology: str) -> None:
    """The commented `redis:` blocks of the example, uncommented, are valid config."""
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"#   {topology}:"))
    block = ["redis:"]
    for line in lines[start:]:
        if not line.startswith("#  "):
            break
        block.append(line[1:])
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["redis"] = yaml.safe_load("\n".join(block))["redis"]
    redis = settings_from_dict(raw).redis
    assert getattr(redis, topology) is not None and redis.url is None and not redis.embedded


# A bad file with many different problems: (YAML location, an excerpt of the message).
BAD_YAML = """\
listen: {host: 0.0.0.0, port: 99999}
colour: blue
tokens: {default_ttl: 90days}
upstreams:
  registry: {url: "http://127.0.0.1:9000"}
routes:
  - {methods: [GET], path: /ok, upstream: registry, scopes: [read:ok]}
  - {methods: [GET], path: /no-scopes, upstream: registry}
  - {methods: [GET], path: /nowhere, upstream: nowhere, scopes: [read:x]}
  - {methods: [POST], path: /specs, upstream: registry, scopes: [writ:specs]}
  - {methods: [GET], path: /extra, upstream: registry, scopes: [read:x], timeout: 5s}
"""
BAD_EXPECTED: list[tuple[str, str]] = [
    ("listen.port", "99999 is not allowed"),
    ("colour", "unknown key"),
    ("tokens.default_ttl", "'90days' is not a duration"),
    ("routes[1]", "every route names its scopes or says public: true"),
    ("routes[2].upstream", "'nowhere' is not a defined upstream (registry)"),
    ("routes[3].scopes[0]", "'writ:specs' is not a scope: level must be read, write or admin"),
    ("routes[4].timeout", "unknown key"),
]


def test_bad_file_lists_every_problem_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, BAD_YAML)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    found = info.value.problems
    for location, excerpt in BAD_EXPECTED:
        here = at(found, location)
        assert here, f"no problem at {location}: {found}"
        assert any(excerpt in p for p in here), (location, here)
    assert len(found) == len(BAD_EXPECTED), found
    design = "routes[3].scopes[0]: 'writ:specs' is not a scope: level must be read, write or admin"
    assert any(p.startswith(design) for p in found)  # DESIGN's words, then a suggestion and examples
    assert info.value.source == str(path)
    for problem in found:
        assert problem in str(info.value)


def test_cli_config_check_ok() -> None:
    result = run_cli("config", "check", "config/example.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert f"{EXAMPLE_ROUTE_COUNT} routes" in result.stdout


def test_cli_config_check_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, BAD_YAML)
    result = run_cli("config", "check", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for location, excerpt in BAD_EXPECTED:
        assert f"{location}: " in result.stderr, (location, result.stderr)
        assert excerpt in result.stderr
    assert str(path) in result.stderr


# -- unknown keys at every level ----------------------------------------------------------------
def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[last] = value


@pytest.mark.parametrize(
    ("where", "location", "allowed"),
    [
        ("colour", "colour", "listen, admin_listen, redis, data_dir, tokens, trusted_proxies"),
        ("listen.colour", "listen.colour", "host, port"),
        ("admin_listen.colour", "admin_listen.colour", "host, port"),
        ("redis.colour", "redis.colour", "url, sentinel, cluster, stale_if_error"),
        ("redis.sentinel.colour", "redis.sentinel.colour", "master, nodes, username, password, db"),
        ("redis.cluster.colour", "redis.cluster.colour", "nodes, username, password"),
        ("tokens.colour", "tokens.colour", "prefix, legacy_prefixes, default_ttl, max_ttl"),
        ("tokens.argon2.colour", "tokens.argon2.colour", "time_cost, memory_cost, parallelism"),
        ("upstreams.registry.colour", "upstreams.registry.colour", "url, timeout, connect_timeout"),
        ("routes.0.colour", "routes[0].colour", "methods, path, upstream, scopes, public, resource"),
        ("log.colour", "log.colour", "level, format"),
        ("audit.colour", "audit.colour", "stream_maxlen"),
    ],
)
def test_unknown_keys_are_errors_naming_allowed_keys(where: str, location: str, allowed: str) -> None:
    raw = base()
    _set(raw, where, "x")
    found = problems(raw)
    assert len(found) == 1, found
    assert found[0].startswith(f"{location}: unknown key; allowed keys: ")
    assert allowed in found[0]


def test_misspelled_security_key_does_not_fall_back_to_default() -> None:
    found = problems(base(forward_authorisation=True))
    assert at(found, "forward_authorisation")
    assert "forward_authorization" in found[0]


# -- route conflicts ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "second", "conflict"),
    [
        (route("/a/{x}", ["GET"]), route("/a/{y}", ["GET"]), True),
        (route("/a/{x}"), route("/a/{y}"), True),  # both "any method"
        (route("/a/{x}", ["GET", "POST"]), route("/a/{y}", ["POST"]), True),
        (route("/a/b", ["GET"]), route("/a/b", ["GET"]), True),
        (route("/f/{p:*}", ["GET"]), route("/f/{q:*}", ["GET"]), True),
        (route("/a/{x}", ["GET"]), route("/a/{x}", ["POST"]), False),
        (route("/a/{x}", ["GET"]), route("/a/{x}"), False),  # listed method beats any
        (route("/a/b", ["GET"]), route("/a/{x}", ["GET"]), False),  # literal beats param
        (route("/a/{x}", ["GET"]), route("/a/{x:*}", ["GET"]), False),  # param beats tail
        (route("/a/{x}/c", ["GET"]), route("/a/b/{y}", ["GET"]), False),  # left-to-right
        (route("/a", ["GET"]), route("/a/", ["GET"]), False),  # trailing slash matters
        (route("/A", ["GET"]), route("/a", ["GET"]), False),  # case-sensitive
    ],
)
def test_equal_specificity_conflicts(first: dict[str, Any], second: dict[str, Any], conflict: bool) -> None:
    raw = with_routes(first, second)
    if not conflict:
        settings_from_dict(raw)
        return
    found = problems(raw)
    assert len(found) == 1, found
    assert found[0].startswith("routes[1]: ")
    assert "routes[0]" in found[0]
    assert first["path"] in found[0]
    assert "equal specificity" in found[0]


def test_conflict_names_both_routes_among_others() -> None:
    raw = with_routes(
        route("/x", ["GET"]),
        route("/a/{x}", ["GET"]),
        route("/y", ["GET"]),
        route("/a/{y}", ["GET"]),
    )
    assert problems(raw) == [
        "routes[3]: matches the same requests as routes[1] (GET /a/{x}) with equal "
        "specificity; make one more specific or give them different methods"
    ]


# -- resource, public ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resource", "location"),
    [
        ({"org": "organisation"}, "routes[0].resource.org"),
        ({"org": "org", "team": "tem"}, "routes[0].resource.team"),
        ({"org": "org", "project": "project"}, "routes[0].resource.project"),
    ],
)
def test_resource_must_name_a_path_parameter(resource: dict[str, str], location: str) -> None:
    found = problems(with_routes(route("/orgs/{org}/teams/{team}", ["GET"], resource=resource)))
    assert len(found) == 1, found
    assert found[0].startswith(f"{location}: ")
    assert "is not a parameter of the path (parameters: org, team)" in found[0]


def test_resource_with_path_parameters_loads() -> None:
    settings = settings_from_dict(
        with_routes(route("/orgs/{org}/teams/{team}", ["GET"], resource={"org": "org", "team": "team"}))
    )
    assert dict(settings.routes[0].resource) == {"org": "org", "team": "team"}


@pytest.mark.parametrize(
    ("spec", "location", "excerpt"),
    [
        (route("/h", ["GET"], public=True, scopes=["read:a"]), "routes[0].scopes", "takes no scopes"),
        (
            route("/h/{org}", ["GET"], public=True, resource={"org": "org"}),
            "routes[0].resource",
            "public route takes no resource",
        ),
        (route("/h", ["GET"], public="yes"), "routes[0].public", "expected true or false"),
        (route("/h", ["GET"], public=1), "routes[0].public", "expected true or false"),
        (route("/h", ["GET"], public=False), "routes[0]", "names its scopes or says public: true"),
        (route("/h", ["GET"], scopes=[]), "routes[0].scopes", "non-empty list"),
        (route("/h", ["GET"], scopes="read:a"), "routes[0].scopes", "non-empty list"),
        (route("/h", ["GET"], websocket="on"), "routes[0].websocket", "expected true or false"),
    ],
)
def test_public_and_scopes(spec: dict[str, Any], location: str, excerpt: str) -> None:
    found = problems(with_routes(spec))
    here = at(found, location)
    assert here, found
    assert any(excerpt in p for p in here), here


def test_public_route_loads_without_scopes() -> None:
    settings = settings_from_dict(with_routes(route("/health", ["GET"], public=True)))
    assert settings.routes[0].public is True
    assert settings.routes[0].scopes == ()


# -- routes: upstream, path, methods ------------------------------------------------------------
@pytest.mark.parametrize(
    "upstream",
    ["nowhere", None, 5, ["registry"], {"name": "registry"}],
    ids=["unknown", "missing", "int", "list", "mapping"],
)
def test_route_upstream_must_be_defined(upstream: object) -> None:
    spec = route("/a", ["GET"])
    if upstream is None:
        del spec["upstream"]
    else:
        spec["upstream"] = upstream
    found = problems(with_routes(spec))
    here = at(found, "routes[0].upstream")
    assert here and "is not a defined upstream (registry)" in here[0], found


@pytest.mark.parametrize(
    ("path", "excerpt"),
    [
        ("a/b", "must start with '/'"),
        ("/a//b", "empty segment"),
        ("/a/{X}", "is not a parameter"),
        ("/a/x{y}", "is not a parameter"),
        ("/a/{p:*}/b", "must be the last segment"),
        ("/a/{x}/{x}", "appears twice"),
        ("/a/../b", "dot segment"),
        ("/a/%7Euser", "not in canonical form"),
    ],
)
def test_bad_path_templates(path: str, excerpt: str) -> None:
    found = problems(with_routes(route(path, ["GET"])))
    here = at(found, "routes[0].path")
    assert here and excerpt in here[0], found


@pytest.mark.parametrize(
    ("methods", "location"),
    [
        (["GETT"], "routes[0].methods[0]"),
        (["GET", "get"], "routes[0].methods[1]"),
        (["POST", "FETCH"], "routes[0].methods[1]"),
    ],
)
def test_bad_methods_list_the_allowed_ones(methods: list[str], location: str) -> None:
    found = problems(with_routes(route("/a", methods)))
    here = at(found, location)
    assert len(here) == 1, found
    assert "is not a method: expected one of " + ", ".join(HTTP_METHODS) in here[0]


@pytest.mark.parametrize("methods", [[], "GET", None])
def test_methods_must_be_a_non_empty_list(methods: object) -> None:
    found = problems(with_routes(route("/a", methods=None) | {"methods": methods}))
    assert at(found, "routes[0].methods"), found


@pytest.mark.parametrize("methods", [list(HTTP_METHODS), ["GET"], ["DELETE", "PATCH"]])
def test_good_methods_load(methods: list[str]) -> None:
    settings = settings_from_dict(with_routes(route("/a", methods)))
    assert settings.routes[0].methods == frozenset(methods)


# -- durations ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tokens", "default_ttl", "max_ttl"),
    [
        ({}, 90 * 86400, 365 * 86400),
        ({"default_ttl": "90d"}, 90 * 86400, 365 * 86400),
        ({"default_ttl": "never", "max_ttl": "never"}, None, None),
        ({"default_ttl": "30d", "max_ttl": "never"}, 30 * 86400, None),
        ({"default_ttl": "2w", "max_ttl": "14d"}, 14 * 86400, 14 * 86400),
        ({"default_ttl": "1h", "max_ttl": "90m"}, 3600, 5400),
    ],
)
def test_good_ttls(tokens: dict[str, Any], default_ttl: float | None, max_ttl: float | None) -> None:
    settings = settings_from_dict(base(tokens=tokens))
    assert settings.tokens.default_ttl == default_ttl
    assert settings.tokens.max_ttl == max_ttl


@pytest.mark.parametrize(
    ("tokens", "location", "excerpt"),
    [
        ({"default_ttl": "400d"}, "tokens.default_ttl", "longer than tokens.max_ttl"),
        ({"default_ttl": "91d", "max_ttl": "90d"}, "tokens.default_ttl", "longer than tokens.max_ttl"),
        ({"default_ttl": "never", "max_ttl": "365d"}, "tokens.default_ttl", "longer than tokens.max_ttl"),
        ({"default_ttl": "90days"}, "tokens.default_ttl", "is not a duration"),
        ({"max_ttl": "1y"}, "tokens.max_ttl", "is not a duration"),
        ({"cache_ttl": "soon"}, "tokens.cache_ttl", "is not a duration"),
        ({"cache_ttl": "never"}, "tokens.cache_ttl", "is not a duration"),
        ({"default_ttl": True}, "tokens.default_ttl", "is not a duration"),
    ],
)
def test_bad_ttls(tokens: dict[str, Any], location: str, excerpt: str) -> None:
    found = problems(base(tokens=tokens))
    here = at(found, location)
    assert here and excerpt in here[0], found


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("timeout", "90s", True),
        ("timeout", "500ms", True),
        ("timeout", "30 seconds", False),
        ("connect_timeout", "2m", True),
        ("connect_timeout", "-1s", False),
    ],
)
def test_upstream_durations(field: str, value: str, ok: bool) -> None:
    raw = base()
    raw["upstreams"]["registry"][field] = value
    if ok:
        settings_from_dict(raw)
    else:
        assert at(problems(raw), f"upstreams.registry.{field}")


def test_ninety_days_is_seconds() -> None:
    settings = settings_from_dict(base(tokens={"default_ttl": "90d", "cache_ttl": "45s"}))
    assert settings.tokens.default_ttl == 90 * 86400
    assert settings.tokens.cache_ttl == 45.0


# -- listen, upstream URLs, redis, proxies ------------------------------------------------------
@pytest.mark.parametrize(
    ("listen", "location"),
    [
        ({"port": 65536}, "listen.port"),
        ({"port": -1}, "listen.port"),
        ({"port": "8080"}, "listen.port"),
        ({"port": True}, "listen.port"),
        ({"host": ""}, "listen.host"),
        ("0.0.0.0:8080", "listen"),
    ],
)
def test_bad_listen(listen: object, location: str) -> None:
    assert at(problems(base(listen=listen)), location)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("rediss://cache.internal:6380/1", True),
        ("unix:///run/valkey.sock", True),
        ("http://127.0.0.1:6379", False),
        ("127.0.0.1:6379", False),
        ("", False),
    ],
)
def test_redis_url(url: str, ok: bool) -> None:
    raw = base(redis={"url": url})
    if ok:
        assert settings_from_dict(raw).redis.url == url
    else:
        here = at(problems(raw), "redis.url")
        assert here, url


def test_redis_http_url_message() -> None:
    found = problems(base(redis={"url": "http://127.0.0.1:6379"}))
    assert found == [
        "redis.url: 'http://127.0.0.1:6379' is not a Redis URL: expected redis://, rediss:// or unix://"
    ]


def test_no_store_named_means_the_embedded_one() -> None:
    assert settings_from_dict(base()).redis.embedded
    assert settings_from_dict(base(redis={"stale_if_error": "1m"})).redis.embedded
    assert not settings_from_dict(base(redis={"url": "redis://h:6379/0"})).redis.embedded


def test_redis_sentinel() -> None:
    raw = base(
        redis={
            "sentinel": {
                "master": "tokenward",
                "nodes": ["10.0.0.1:26379", "sentinel-b", {"host": "10.0.0.3", "port": 26380}, "[fd00::4]:26379"],
                "username": "tokenward",
                "password": "s3cret",
                "db": 2,
                "sentinel_password": "sentinel-s3cret",
            }
        }
    )
    redis = settings_from_dict(raw).redis
    assert redis.url is None and redis.cluster is None and not redis.embedded
    sentinel = redis.sentinel
    assert sentinel is not None
    assert sentinel.master == "tokenward"
    assert sentinel.nodes == (("10.0.0.1", 26379), ("sentinel-b", 26379), ("10.0.0.3", 26380), ("fd00::4", 26379))
    assert (sentinel.username, sentinel.password, sentinel.db) == ("tokenward", "s3cret", 2)
    assert (sentinel.sentinel_username, sentinel.sentinel_password) == (None, "sentinel-s3cret")
    assert "s3cret" not in repr(sentinel)  # passwords stay out of logs


def test_redis_cluster() -> None:
    raw = base(redis={"cluster": {"nodes": ["10.0.0.1:7000", {"host": "10.0.0.2"}], "password": "pw"}})
    cluster = settings_from_dict(raw).redis.cluster
    assert cluster is not None
    assert cluster.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert cluster.password == "pw" and "pw" not in repr(cluster)


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        (
            {"url": "redis://h:6379/0", "cluster": {"nodes": ["h:7000"]}},
            "redis: url and cluster are alternatives: give only one (url, sentinel or cluster)",
        ),
        (
            {"url": "redis://h", "sentinel": {"master": "m", "nodes": ["h"]}, "cluster": {"nodes": ["h"]}},
            "redis: url, sentinel and cluster are alternatives: give only one (url, sentinel or cluster)",
        ),
        ({"sentinel": {"nodes": ["h:26379"]}}, "redis.sentinel.master: is required: the master name the sentinels monitor"),
        ({"sentinel": {"master": "m"}}, "redis.sentinel.nodes: expected a non-empty list of host:port (or {host, port})"),
        ({"sentinel": {"master": "m", "nodes": []}}, "redis.sentinel.nodes: expected a non-empty list of host:port (or {host, port})"),
        ({"sentinel": {}}, "redis.sentinel: needs master (the name the sentinels monitor) and nodes"),
        ({"sentinel": "m@h:26379"}, "redis.sentinel: expected a mapping with keys master, nodes, username, password, db, sentinel_username, sentinel_password, password_file, sentinel_password_file"),
        ({"cluster": {}}, "redis.cluster: needs nodes: a few cluster nodes as host:port"),
        ({"cluster": {"nodes": "h:7000"}}, "redis.cluster.nodes: expected a non-empty list of host:port (or {host, port})"),
        ({"cluster": {"nodes": ["h:7000", "h:99999"]}}, "redis.cluster.nodes[1]: 'h:99999' is not a node: expected host:port, e.g. 10.0.0.5:6379"),
        ({"cluster": {"nodes": ["h:x"]}}, "redis.cluster.nodes[0]: 'h:x' is not a node: expected host:port, e.g. 10.0.0.5:6379"),
        ({"cluster": {"nodes": [":7000"]}}, "redis.cluster.nodes[0]: ':7000' is not a node: expected host:port, e.g. 10.0.0.5:6379"),
        ({"cluster": {"nodes": ["h 1:7000"]}}, "redis.cluster.nodes[0]: 'h 1:7000' is not a node: expected host:port, e.g. 10.0.0.5:6379"),
        ({"cluster": {"nodes": [7000]}}, "redis.cluster.nodes[0]: 7000 is not a node: expected host:port, e.g. 10.0.0.5:6379"),
        ({"cluster": {"nodes": [{"port": 7000}]}}, "redis.cluster.nodes[0].host: is required"),
        ({"cluster": {"nodes": [{"host": "h", "port": 0}]}}, "redis.cluster.nodes[0].port: 0 is not allowed: expected an integer 1..65535"),
        ({"cluster": {"nodes": [{"host": "h", "tls": True}]}}, "redis.cluster.nodes[0].tls: unknown key; allowed keys: host, port"),
        ({"cluster": {"nodes": ["h:7000", {"host": "h", "port": 7000}]}}, "redis.cluster.nodes: lists the same node twice"),
        ({"cluster": {"nodes": ["h"], "username": "u"}}, "redis.cluster.password: is required with username"),
        ({"cluster": {"nodes": ["h"], "password": 1234}}, "redis.cluster.password: expected a non-empty string"),
        ({"cluster": {"nodes": ["h"], "db": 1}}, "redis.cluster.db: unknown key; allowed keys: nodes, username, password, password_file"),
        ({"sentinel": {"master": "m", "nodes": ["h"], "db": -1}}, "redis.sentinel.db: -1 is not allowed: expected an integer 0..65535"),
        ({"sentinel": {"master": "", "nodes": ["h"]}}, "redis.sentinel.master: '' is not allowed: expected a non-empty string"),
    ],
)
def test_bad_store_topology(redis: dict[str, Any], expected: str) -> None:
    assert problems(base(redis=redis)) == [expected]


def test_a_bad_password_is_not_echoed() -> None:
    found = problems(base(redis={"sentinel": {"master": "m", "nodes": ["h"], "password": ["hunter2"]}}))
    assert found == ["redis.sentinel.password: expected a non-empty string"]


def test_every_store_problem_at_once() -> None:
    found = problems(
        base(redis={"cluster": {"nodes": ["h:x", {"port": 1}], "username": "u"}, "stale_if_error": "soon"})
    )
    assert [p.split(":")[0] for p in found] == [
        "redis.cluster.nodes[0]",
        "redis.cluster.nodes[1].host",
        "redis.cluster.password",
        "redis.stale_if_error",
    ]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:9000", True),
        ("https://registry.internal/base/", True),
        ("ftp://127.0.0.1", False),
        ("127.0.0.1:9000", False),
        ("http://", False),
        ("http://h/x?q=1", False),
    ],
)
def test_upstream_url(url: str, ok: bool) -> None:
    raw = base(upstreams={"registry": {"url": url}})
    if ok:
        assert settings_from_dict(raw).upstreams["registry"].url == url.rstrip("/")
    else:
        assert at(problems(raw), "upstreams.registry.url")


def test_upstream_without_url_and_bad_name() -> None:
    found = problems(base(upstreams={"registry": {"timeout": "5s"}, "Bad Name": {"url": "http://h"}}))
    assert at(found, "upstreams.registry.url")
    assert at(found, "upstreams.Bad Name")


@pytest.mark.parametrize(
    ("proxies", "location"),
    [
        (["10.0.0.0/8", "10.0.0.0/33"], "trusted_proxies[1]"),
        (["not-an-ip"], "trusted_proxies[0]"),
        (["10.0.0.0/8", "fd00::/8", "300.1.1.1/32"], "trusted_proxies[2]"),
        ([10], "trusted_proxies[0]"),
        ("10.0.0.0/8", "trusted_proxies"),
    ],
)
def test_bad_trusted_proxies(proxies: object, location: str) -> None:
    found = problems(base(trusted_proxies=proxies))
    assert len(found) == 1, found
    assert found[0].startswith(f"{location}: ")


def test_good_trusted_proxies() -> None:
    settings = settings_from_dict(base(trusted_proxies=["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]))
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]


# -- YAML-level problems ------------------------------------------------------------------------
YamlCheck = Callable[[list[str]], bool]


@pytest.mark.parametrize(
    ("text", "check"),
    [
        pytest.param(
            "listen: {host: 0.0.0.0, port: 8080}\nroutes: [\n  - a\n",
            lambda ps: len(ps) == 1 and "line " in ps[0] and "invalid YAML" in ps[0],
            id="syntax",
        ),
        pytest.param(
            "upstreams:\n  registry: {url: 'http://h'}\n\tbad: 1\n",
            lambda ps: len(ps) == 1 and ps[0].startswith("line 3, ") and "invalid YAML" in ps[0],
            id="tab",
        ),
        pytest.param(
            "listen: {port: 1}\nrouters: []\nlisten: {port: 2}\n",
            lambda ps: len(ps) == 1 and "duplicate key 'listen'" in ps[0] and "line 3" in ps[0],
            id="duplicate-top-level",
        ),
        pytest.param(
            "routes:\n  - {path: /a, path: /b}\n",
            lambda ps: len(ps) == 1 and "duplicate key 'path'" in ps[0] and "line 2" in ps[0],
            id="duplicate-nested",
        ),
        pytest.param("", lambda ps: any("empty" in p for p in ps), id="empty"),
        pytest.param("# only a comment\n", lambda ps: any("empty" in p for p in ps), id="comment-only"),
        pytest.param("{}\n", lambda ps: any("empty" in p for p in ps), id="empty-mapping"),
        pytest.param("--- 1\n--- 2\n", lambda ps: len(ps) == 1 and "invalid YAML" in ps[0], id="two-docs"),
        pytest.param("- a\n- b\n", lambda ps: "expected a mapping" in ps[0], id="top-level-list"),
        pytest.param("? [a, b]\n: 1\n", lambda ps: len(ps) == 1 and "line 1" in ps[0], id="unhashable-key"),
    ],
)
def test_yaml_problems_are_config_errors(tmp_path: Path, text: str, check: YamlCheck) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert check(info.value.problems), info.value.problems
    assert info.value.source == str(path)


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.yaml")
    assert info.value.problems[0].startswith("cannot read config")


def test_yaml_and_dict_agree(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        upstreams:
          registry: {url: "http://127.0.0.1:9000"}
        routes:
          - {methods: [GET], path: /a, upstream: registry, scopes: [read:a]}
        """,
    )
    from_yaml = load_settings(path)
    from_dict = settings_from_dict(base(), base_dir=tmp_path)
    assert from_yaml.routes == from_dict.routes
    assert from_yaml.tokens == from_dict.tokens
    assert from_yaml.data_dir == from_dict.data_dir == tmp_path / ".tokenward"
