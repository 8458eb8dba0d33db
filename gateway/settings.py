"""The whole config as frozen dataclasses, loaded strictly.

`load_settings(path)` reads YAML, checks everything and raises one `ConfigError` listing
every problem with its YAML location (`routes[3].scopes[0]: ...`). Unknown keys are errors;
a misspelled security setting never falls back quietly to a default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from tokenward.gateway.durations import parse_duration
from tokenward.gateway.routes import (
    HTTP_METHODS,
    Route,
    Router,
    TemplateError,
    find_conflicts,
    parse_template,
)
from tokenward.gateway.scopes import ScopeError, parse_scope
from tokenward.gateway.tokens import valid_prefix

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAME = re.compile(r"^[a-z][a-z0-9_-]*\Z")
T = TypeVar("T")


class ConfigError(Exception):
    """Every problem found in a config file, each with its location."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


StoreNode = tuple[str, int]  # (host, port)


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    """Redis Sentinel: the sentinels to ask, and the name of the master they watch."""

    master: str
    nodes: tuple[StoreNode, ...]
    username: str | None = None  # for the master and replicas
    password: str | None = field(default=None, repr=False)
    db: int = 0
    sentinel_username: str | None = None  # for the sentinels themselves
    sentinel_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Redis Cluster: any few nodes to learn the cluster's layout from."""

    nodes: tuple[StoreNode, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str | None = None  # one server (or a proxy in front of several)
    stale_if_error: float = 300.0  # store down: tokens verified this recently keep working
    sentinel: SentinelSettings | None = None
    cluster: ClusterSettings | None = None

    @property
    def embedded(self) -> bool:
        """No store named: start the embedded server under data_dir."""
        return self.url is None and self.sentinel is None and self.cluster is None


@dataclass(frozen=True, slots=True)
class Argon2Settings:
    # OWASP's argon2id recommendation for *passwords* (19 MiB, 2 passes, 1 lane): ample for
    # machine-generated ~190-bit secrets, and a fifth of the work of argon2-cffi's default
    # (64 MiB, 3 passes, 4 lanes), which every new token pays twice (issue, first use).
    time_cost: int = 2
    memory_cost: int = 19456  # KiB
    parallelism: int = 1


@dataclass(frozen=True, slots=True)
class TokenSettings:
    prefix: str = "tw_sat"
    legacy_prefixes: tuple[str, ...] = ()
    default_ttl: float | None = 90 * 86400  # None: never expires
    max_ttl: float | None = 365 * 86400  # None: no limit
    cache_ttl: float = 30.0
    argon2: Argon2Settings = field(default_factory=Argon2Settings)
    # Tokens of any status one team (or the org level) may hold: bounds every per-team scan.
    max_per_team: int = 10_000

    @property
    def accepted_prefixes(self) -> frozenset[str]:
        return frozenset((self.prefix, *self.legacy_prefixes))


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    timeout: float = 30.0
    connect_timeout: float = 5.0
    # the upstream matches paths case-insensitively (Express default, IIS, ASP.NET): a
    # case variant of a literal route is decided on that route instead of being refused
    case_insensitive: bool = False


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"  # auto: pretty on a TTY, JSON otherwise


@dataclass(frozen=True, slots=True)
class Limits:
    max_url_length: int = 8192  # bytes in the request target: 414 beyond
    max_header_bytes: int = 32768  # all header names and values together: 431 beyond
    max_header_count: int = 100  # 431 beyond
    max_body_bytes: int = 100 * 1024 * 1024  # 413 beyond
    header_timeout: float = 10.0  # a client must send its request headers within this
    body_timeout: float = 60.0  # longest wait for the next piece of a request body


@dataclass(frozen=True, slots=True)
class AuditSettings:
    stream_maxlen: int = 100_000


@dataclass(frozen=True, slots=True)
class Settings:
    listen: Listen
    admin_listen: Listen
    redis: RedisSettings
    data_dir: Path
    tokens: TokenSettings
    trusted_proxies: tuple[IPNetwork, ...]
    forward_authorization: bool
    upstreams: Mapping[str, Upstream]
    router: Router
    log: LogSettings
    audit: AuditSettings
    limits: Limits = field(default_factory=Limits)
    allow_python_parser: bool = False
    source: str = "config"
    # request headers never forwarded upstream, on top of tokenward's built-in list; a
    # trailing `*` makes a prefix (normalized: lower case, `_`/`.` as `-`)
    strip_headers: tuple[str, ...] = ()

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.router.routes


class _DuplicateKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        mark = key_node.start_mark
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"found unhashable key (line {mark.line + 1})", mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen.add(key)
    return dict(loader.construct_pairs(node))


_DuplicateKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


class _Checker:
    """Walks the raw YAML, converts values and records every problem with its location."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, loc: str, message: str) -> None:
        self.problems.append(f"{loc}: {message}" if loc else message)

    def mapping(self, value: object, loc: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(loc, f"expected a mapping with keys {', '.join(allowed)}")
            return {}
        for key in value:
            if key not in allowed:
                self.problem(_join(loc, str(key)), f"unknown key; allowed keys: {', '.join(allowed)}")
        return {k: v for k, v in value.items() if k in allowed}

    def convert(self, value: object, loc: str, parse: Callable[[Any], T], default: T) -> T:
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            self.problem(loc, str(exc))
            return default


def _join(loc: str, key: str) -> str:
    return f"{loc}.{key}" if loc else key


def _int(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{value!r} is not allowed: expected an integer {low}..{high}")
        return value

    return parse


def _str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not allowed: expected a non-empty string")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not allowed: expected true or false")
    return value


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not allowed: expected one of {', '.join(options)}")
        return str(value)

    return parse


def _ttl(value: object) -> float | None:
    if value in ("never", "none", None):
        return None
    return parse_duration(value)


def _network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a CIDR like '10.0.0.0/8'")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR like '10.0.0.0/8'") from None


def _upstream_url(value: object) -> str:
    text = _str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an upstream URL: expected http(s)://host[:port][/base]")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: an upstream URL cannot have a query or fragment")
    return text.rstrip("/")


def _prefix(value: object) -> str:
    text = _str(value)
    if not valid_prefix(text):
        raise ValueError(f"{text!r} is not a token prefix: expected [a-z][a-z0-9]* parts joined by '_'")
    return text


def _listen(checker: _Checker, raw: object, loc: str, default: Listen) -> Listen:
    data = checker.mapping(raw, loc, ("host", "port"))
    host = checker.convert(data.get("host", default.host), _join(loc, "host"), _str, default.host)
    port = checker.convert(data.get("port", default.port), _join(loc, "port"), _int(0, 65535), default.port)
    return Listen(host, port)


def _tokens(checker: _Checker, raw: object) -> TokenSettings:
    loc = "tokens"
    keys = ("prefix", "legacy_prefixes", "default_ttl", "max_ttl", "cache_ttl", "argon2", "max_per_team")
    data = checker.mapping(raw, loc, keys)
    d = TokenSettings()
    prefix = checker.convert(data.get("prefix", d.prefix), f"{loc}.prefix", _prefix, d.prefix)
    legacy: list[str] = []
    raw_legacy = data.get("legacy_prefixes", [])
    if not isinstance(raw_legacy, list):
        checker.problem(f"{loc}.legacy_prefixes", "expected a list of prefixes")
        raw_legacy = []
    for i, item in enumerate(raw_legacy):
        legacy.append(checker.convert(item, f"{loc}.legacy_prefixes[{i}]", _prefix, ""))
    default_ttl = checker.convert(data.get("default_ttl", "90d"), f"{loc}.default_ttl", _ttl, d.default_ttl)
    max_ttl = checker.convert(data.get("max_ttl", "365d"), f"{loc}.max_ttl", _ttl, d.max_ttl)
    if max_ttl is not None and (default_ttl is None or default_ttl > max_ttl):
        checker.problem(f"{loc}.default_ttl", "is longer than tokens.max_ttl; shorten it or raise max_ttl")
    cache_ttl = checker.convert(data.get("cache_ttl", "30s"), f"{loc}.cache_ttl", parse_duration, d.cache_ttl)
    a_loc = f"{loc}.argon2"
    a_data = checker.mapping(data.get("argon2"), a_loc, ("time_cost", "memory_cost", "parallelism"))
    a = Argon2Settings()
    argon = Argon2Settings(
        time_cost=checker.convert(
            a_data.get("time_cost", a.time_cost), f"{a_loc}.time_cost", _int(1, 100), a.time_cost
        ),
        memory_cost=checker.convert(
            a_data.get("memory_cost", a.memory_cost),
            f"{a_loc}.memory_cost",
            _int(8, 4 * 1024 * 1024),
            a.memory_cost,
        ),
        parallelism=checker.convert(
            a_data.get("parallelism", a.parallelism),
            f"{a_loc}.parallelism",
            _int(1, 64),
            a.parallelism,
        ),
    )
    max_per_team = checker.convert(
        data.get("max_per_team", d.max_per_team), f"{loc}.max_per_team", _int(1, 1_000_000), d.max_per_team
    )
    return TokenSettings(
        prefix, tuple(legacy), default_ttl, max_ttl, cache_ttl, argon, max_per_team=max_per_team
    )


def _upstreams(checker: _Checker, raw: object) -> dict[str, Upstream]:
    if not isinstance(raw, dict) or not raw:
        checker.problem("upstreams", "expected a mapping of upstream names to {url, timeout}")
        return {}
    result = {}
    for name, spec in raw.items():
        loc = f"upstreams.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            checker.problem(loc, "upstream names must match [a-z][a-z0-9_-]*")
            continue
        data = checker.mapping(spec, loc, ("url", "timeout", "connect_timeout", "case_insensitive"))
        if "url" not in data:
            checker.problem(f"{loc}.url", "is required")
        url = checker.convert(data.get("url", "http://invalid"), f"{loc}.url", _upstream_url, "")
        timeout = checker.convert(data.get("timeout", "30s"), f"{loc}.timeout", parse_duration, 30.0)
        connect = checker.convert(
            data.get("connect_timeout", "5s"), f"{loc}.connect_timeout", parse_duration, 5.0
        )
        insensitive = checker.convert(
            data.get("case_insensitive", False), f"{loc}.case_insensitive", _bool, False
        )
        result[name] = Upstream(name, url, timeout, connect, insensitive)
    return result


_ROUTE_KEYS = ("methods", "path", "upstream", "scopes", "public", "resource", "websocket")


def _route(checker: _Checker, raw: object, index: int, upstreams: Mapping[str, Upstream]) -> Route | None:
    loc = f"routes[{index}]"
    data = checker.mapping(raw, loc, _ROUTE_KEYS)
    if not data:
        if raw is not None and not isinstance(raw, dict):
            return None
        checker.problem(loc, "a route needs at least path, upstream and scopes (or public: true)")
        return None
    start = len(checker.problems)

    path = data.get("path")
    shape: tuple[tuple[int, str], ...] = ()
    names: tuple[str, ...] = ()
    if not isinstance(path, str):
        checker.problem(f"{loc}.path", "is required: a template like /orgs/{org}/apis")
        path = ""
    else:
        try:
            shape, names = parse_template(path)
        except TemplateError as exc:
            checker.problem(f"{loc}.path", f"{path!r} {exc}")

    methods: frozenset[str] | None = None
    if "methods" in data:
        raw_methods = data["methods"]
        if not isinstance(raw_methods, list) or not raw_methods:
            checker.problem(f"{loc}.methods", "expected a non-empty list, e.g. [GET, POST]")
        else:
            found = set()
            for i, method in enumerate(raw_methods):
                if method not in HTTP_METHODS:
                    checker.problem(
                        f"{loc}.methods[{i}]",
                        f"{method!r} is not a method: expected one of {', '.join(HTTP_METHODS)}",
                    )
                else:
                    found.add(method)
            methods = frozenset(found)

    upstream = data.get("upstream")
    if not isinstance(upstream, str) or upstream not in upstreams:
        known = ", ".join(upstreams) or "none defined"
        checker.problem(f"{loc}.upstream", f"{upstream!r} is not a defined upstream ({known})")

    public = checker.convert(data.get("public", False), f"{loc}.public", _bool, False)
    websocket = checker.convert(data.get("websocket", False), f"{loc}.websocket", _bool, False)
    scopes = []
    raw_scopes = data.get("scopes")
    if public:
        if raw_scopes:
            checker.problem(f"{loc}.scopes", "a public route takes no scopes")
        if data.get("resource"):
            checker.problem(f"{loc}.resource", "a public route takes no resource")
    elif raw_scopes is None:
        checker.problem(loc, "every route names its scopes or says public: true")
    elif not isinstance(raw_scopes, list) or not raw_scopes:
        checker.problem(f"{loc}.scopes", "expected a non-empty list of scopes like [read:apis]")
    else:
        for i, text in enumerate(raw_scopes):
            try:
                scopes.append(parse_scope(text))
            except ScopeError as exc:
                checker.problem(f"{loc}.scopes[{i}]", str(exc))

    resource: dict[str, str] = {}
    raw_resource = data.get("resource") or {}
    if not isinstance(raw_resource, dict):
        checker.problem(f"{loc}.resource", "expected a mapping like {org: org, team: team}")
    else:
        for role, param in raw_resource.items():
            r_loc = f"{loc}.resource.{role}"
            if not isinstance(role, str) or not _NAME.match(role):
                checker.problem(r_loc, "names must match [a-z][a-z0-9_-]*")
            elif param not in names:
                have = ", ".join(names) or "none"
                checker.problem(r_loc, f"{param!r} is not a parameter of the path (parameters: {have})")
            else:
                resource[role] = param

    if len(checker.problems) != start:
        return None
    return Route(
        index=index,
        path=path,
        methods=methods,
        upstream=str(upstream),
        scopes=tuple(scopes),
        public=public,
        resource=resource,
        websocket=websocket,
        shape=shape,
        param_names=names,
    )


_TOP_KEYS = (
    "listen",
    "admin_listen",
    "redis",
    "data_dir",
    "tokens",
    "trusted_proxies",
    "forward_authorization",
    "upstreams",
    "routes",
    "log",
    "audit",
    "limits",
    "allow_python_parser",
    "strip_headers",
)


def settings_from_dict(raw: object, source: str = "config", base_dir: Path | None = None) -> Settings:
    checker = _Checker()
    if isinstance(raw, dict):  # `x-*` keys hold YAML anchors for `<<:` merges, like compose files
        raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}
    data = checker.mapping(raw, "", _TOP_KEYS)
    if raw is None or (isinstance(raw, dict) and not raw):
        checker.problem("", "the config is empty: it needs at least upstreams and routes")
    listen = _listen(checker, data.get("listen"), "listen", Listen("0.0.0.0", 8080))
    admin_listen = _listen(checker, data.get("admin_listen"), "admin_listen", Listen("127.0.0.1", 8081))

    redis_settings = _redis(checker, data.get("redis"))

    data_dir_raw = checker.convert(data.get("data_dir", ".tokenward"), "data_dir", _str, ".tokenward")
    data_dir = Path(data_dir_raw)
    if not data_dir.is_absolute() and base_dir is not None:
        data_dir = base_dir / data_dir

    tokens = _tokens(checker, data.get("tokens"))

    proxies = []
    raw_proxies = data.get("trusted_proxies", [])
    if not isinstance(raw_proxies, list):
        checker.problem("trusted_proxies", "expected a list of CIDRs like [10.0.0.0/8]")
        raw_proxies = []
    for i, item in enumerate(raw_proxies):
        net = checker.convert(item, f"trusted_proxies[{i}]", _network, None)
        if net is not None:
            proxies.append(net)

    forward_auth = checker.convert(
        data.get("forward_authorization", False), "forward_authorization", _bool, False
    )
    upstreams = _upstreams(checker, data.get("upstreams"))

    routes: list[Route] = []
    raw_routes = data.get("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        checker.problem("routes", "expected a non-empty list of routes")
        raw_routes = []
    for i, item in enumerate(raw_routes):
        route = _route(checker, item, i, upstreams)
        if route is not None:
            routes.append(route)
    for first, second in find_conflicts(routes):
        checker.problem(
            f"routes[{second.index}]",
            f"matches the same requests as routes[{first.index}] ({first.label}) with equal "
            "specificity; make one more specific or give them different methods",
        )

    log_data = checker.mapping(data.get("log"), "log", ("level", "format"))
    log = LogSettings(
        level=checker.convert(
            log_data.get("level", "info"),
            "log.level",
            _choice("debug", "info", "warning", "error"),
            "info",
        ),
        format=checker.convert(
            log_data.get("format", "auto"), "log.format", _choice("auto", "json", "console"), "auto"
        ),
    )
    audit_data = checker.mapping(data.get("audit"), "audit", ("stream_maxlen",))
    audit = AuditSettings(
        stream_maxlen=checker.convert(
            audit_data.get("stream_maxlen", 100_000),
            "audit.stream_maxlen",
            _int(100, 100_000_000),
            100_000,
        )
    )

    limits = _limits(checker, data.get("limits"))
    allow_python_parser = checker.convert(
        data.get("allow_python_parser", False), "allow_python_parser", _bool, False
    )

    strip_headers = _strip_headers(checker, data.get("strip_headers", []))

    if checker.problems:
        raise ConfigError(checker.problems, source)
    return Settings(
        listen=listen,
        admin_listen=admin_listen,
        redis=redis_settings,
        data_dir=data_dir,
        tokens=tokens,
        trusted_proxies=tuple(proxies),
        forward_authorization=forward_auth,
        upstreams=upstreams,
        router=Router(routes, frozenset(n for n, u in upstreams.items() if u.case_insensitive)),
        log=log,
        audit=audit,
        limits=limits,
        allow_python_parser=allow_python_parser,
        source=source,
        strip_headers=strip_headers,
    )


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'+.^_`|~-]+\*?\Z")
# Set by tokenward itself on every forwarded request (inbound copies are always removed).
_SET_BY_TOKENWARD = frozenset(
    {"host", "content-length", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)


def _strip_headers(checker: _Checker, raw: object) -> tuple[str, ...]:
    """`strip_headers: [X-Internal-User, X-Legacy-*]`: names (or prefixes, with a trailing
    `*`) never forwarded upstream; stored normalized (lower case, `_` and `.` as `-`)."""
    if not isinstance(raw, list):
        checker.problem("strip_headers", "expected a list of header names like [X-Internal-User, X-Legacy-*]")
        return ()
    names: list[str] = []
    for i, item in enumerate(raw):
        loc = f"strip_headers[{i}]"
        if not isinstance(item, str) or not _HEADER_NAME.match(item):
            checker.problem(
                loc, f"{item!r} is not a header name (letters, digits, '-', '_', '.'; a trailing '*' for a prefix)"
            )
            continue
        norm = item.lower().replace("_", "-").replace(".", "-")
        if norm in _SET_BY_TOKENWARD or norm.startswith("x-tokenward-"):
            checker.problem(loc, f"{item!r} is set by tokenward itself; inbound copies are always removed")
            continue
        names.append(norm)
    return tuple(names)


def _size(value: object) -> int:
    """Bytes: an integer or `64k`, `10m`, `1g` (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)([kmg]?)b?", value.strip().lower())
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]
    raise ValueError(f"{value!r} is not a size: use bytes or e.g. '64k', '10m', '1g'")


def _limits(checker: _Checker, raw: object) -> Limits:
    d = Limits()
    keys = (
        "max_url_length",
        "max_header_bytes",
        "max_header_count",
        "max_body_bytes",
        "header_timeout",
        "body_timeout",
    )
    data = checker.mapping(raw, "limits", keys)
    return Limits(
        max_url_length=checker.convert(
            data.get("max_url_length", d.max_url_length), "limits.max_url_length", _size, d.max_url_length
        ),
        max_header_bytes=checker.convert(
            data.get("max_header_bytes", d.max_header_bytes),
            "limits.max_header_bytes",
            _size,
            d.max_header_bytes,
        ),
        max_header_count=checker.convert(
            data.get("max_header_count", d.max_header_count),
            "limits.max_header_count",
            _int(1, 10_000),
            d.max_header_count,
        ),
        max_body_bytes=checker.convert(
            data.get("max_body_bytes", d.max_body_bytes), "limits.max_body_bytes", _size, d.max_body_bytes
        ),
        header_timeout=checker.convert(
            data.get("header_timeout", "10s"), "limits.header_timeout", parse_duration, d.header_timeout
        ),
        body_timeout=checker.convert(
            data.get("body_timeout", "60s"), "limits.body_timeout", parse_duration, d.body_timeout
        ),
    )


def _redis(checker: _Checker, raw: object) -> RedisSettings:
    data = checker.mapping(raw, "redis", ("url", "sentinel", "cluster", "stale_if_error"))
    given = [key for key in ("url", "sentinel", "cluster") if data.get(key) is not None]
    if len(given) > 1:
        named = f"{', '.join(given[:-1])} and {given[-1]}"
        checker.problem("redis", f"{named} are alternatives: give only one (url, sentinel or cluster)")
    url = data.get("url")
    if url is not None:
        url = checker.convert(url, "redis.url", _redis_url, None)
    sentinel = None
    if data.get("sentinel") is not None:
        sentinel = _sentinel(checker, data["sentinel"], "redis.sentinel")
    cluster = None
    if data.get("cluster") is not None:
        cluster = _cluster(checker, data["cluster"], "redis.cluster")
    stale = checker.convert(data.get("stale_if_error", "5m"), "redis.stale_if_error", parse_duration, 300.0)
    return RedisSettings(url, stale, sentinel, cluster)


_CREDENTIAL_KEYS = ("username", "password")


def _sentinel(checker: _Checker, raw: object, loc: str) -> SentinelSettings | None:
    keys = ("master", "nodes", *_CREDENTIAL_KEYS, "db", "sentinel_username", "sentinel_password")
    data = checker.mapping(raw, loc, keys)
    if not data:  # not a mapping, or only unknown keys: already reported; or empty
        if raw == {}:
            checker.problem(loc, "needs master (the name the sentinels monitor) and nodes")
        return None
    master = ""
    if "master" not in data:
        checker.problem(f"{loc}.master", "is required: the master name the sentinels monitor")
    else:
        master = checker.convert(data["master"], f"{loc}.master", _str, "")
    nodes = _store_nodes(checker, data.get("nodes"), f"{loc}.nodes", default_port=26379)
    credentials = _credentials(checker, data, loc, *_CREDENTIAL_KEYS)
    sentinel_credentials = _credentials(checker, data, loc, "sentinel_username", "sentinel_password")
    db = checker.convert(data.get("db", 0), f"{loc}.db", _int(0, 65535), 0)
    return SentinelSettings(master, nodes, *credentials, db, *sentinel_credentials)


def _cluster(checker: _Checker, raw: object, loc: str) -> ClusterSettings | None:
    data = checker.mapping(raw, loc, ("nodes", *_CREDENTIAL_KEYS))
    if not data:
        if raw == {}:
            checker.problem(loc, "needs nodes: a few cluster nodes as host:port")
        return None
    nodes = _store_nodes(checker, data.get("nodes"), f"{loc}.nodes", default_port=6379)
    return ClusterSettings(nodes, *_credentials(checker, data, loc, *_CREDENTIAL_KEYS))


def _credentials(
    checker: _Checker, data: dict[str, Any], loc: str, user_key: str, password_key: str
) -> tuple[str | None, str | None]:
    user = data.get(user_key)
    password = data.get(password_key)
    if user is not None:
        user = checker.convert(user, f"{loc}.{user_key}", _str, None)
    if password is not None:
        # never echo the value: it is a secret
        if not isinstance(password, str) or not password:
            checker.problem(f"{loc}.{password_key}", "expected a non-empty string")
            password = None
    if user is not None and password_key not in data:
        checker.problem(f"{loc}.{password_key}", f"is required with {user_key}")
    return user, password


def _store_nodes(checker: _Checker, raw: object, loc: str, default_port: int) -> tuple[StoreNode, ...]:
    if not isinstance(raw, list) or not raw:
        checker.problem(loc, "expected a non-empty list of host:port (or {host, port})")
        return ()
    nodes: list[StoreNode] = []
    for i, item in enumerate(raw):
        node_loc = f"{loc}[{i}]"
        if isinstance(item, dict):
            spec = checker.mapping(item, node_loc, ("host", "port"))
            if "host" not in spec:
                checker.problem(f"{node_loc}.host", "is required")
                continue
            host = checker.convert(spec["host"], f"{node_loc}.host", _str, "")
            port = checker.convert(
                spec.get("port", default_port), f"{node_loc}.port", _int(1, 65535), default_port
            )
            if host:
                nodes.append((host, port))
        else:
            node = checker.convert(item, node_loc, _host_port(default_port), None)
            if node is not None:
                nodes.append(node)
    if len(set(nodes)) != len(nodes):
        checker.problem(loc, "lists the same node twice")
    return tuple(nodes)


def _host_port(default_port: int) -> Callable[[object], StoreNode]:
    def parse(value: object) -> StoreNode:
        bad = ValueError(f"{value!r} is not a node: expected host:port, e.g. 10.0.0.5:{default_port}")
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise bad
        if value.startswith("["):  # [IPv6]:port
            host, _, rest = value[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise bad
            port_text = rest[1:]
        elif value.count(":") > 1:  # a bare IPv6 address
            host, port_text = value, ""
        else:
            host, _, port_text = value.partition(":")
        if not host:
            raise bad
        if not port_text:
            return host, default_port
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise bad
        return host, int(port_text)

    return parse


def _redis_url(value: object) -> str:
    text = _str(value)
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{text!r} is not a Redis URL: expected redis://, rediss:// or unix://")
    return text


def load_settings(path: str | Path) -> Settings:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read config: {exc.strerror}"], str(path)) from None
    try:
        raw = yaml.load(text, Loader=_DuplicateKeyLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {problem}"], str(path)) from None
    return settings_from_dict(raw, str(path), base_dir=path.resolve().parent)
