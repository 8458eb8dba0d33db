"""The whole config as frozen dataclasses, loaded strictly.

`load_settings(path)` reads YAML, checks everything and raises one `ConfigError` listing
every problem with its YAML location (`routes[3].scopes[0]: ...`). Unknown keys are errors;
a misspelled security setting never falls back quietly to a default.

Each field declares its YAML default and parser once, with `setting(...)`; `decode_section`
decodes any section from those declarations, and rules that tie fields together are small
functions registered with `@rule(Section)`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
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


class _Checker:
    """Collects every problem with its location."""

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


# A decoder reads one raw YAML value at a location, reporting its own problems; it also sees
# the fields of its section decoded before it.
Decoder = Callable[[_Checker, Any, str, Mapping[str, Any]], Any]
# A rule checks fields of a decoded section together: (checker, section, raw keys given, loc).
Rule = Callable[[_Checker, Any, Mapping[str, Any], str], None]
_RULES: dict[type, list[Rule]] = {}


def setting(
    default: Any = MISSING,
    parse: Callable[[Any], Any] | None = None,
    *,
    decode: Decoder | None = None,
    required: str | None = None,
    key: str | None = None,
    secret: bool = False,
) -> Any:
    """A config field: its default when the key is absent, and either `parse` (value -> value,
    raising ValueError) or `decode` (for lists and sub-sections). Without a default, an absent
    key is reported with `required`, or else handed to the parser as None."""
    meta = {"parse": parse, "decode": decode, "required": required, "key": key}
    return field(default=default, repr=not secret, metadata={k: v for k, v in meta.items() if v is not None})


def section(default: T) -> Any:
    """A nested section; keys it leaves out keep the values of `default`."""
    return setting(default, decode=lambda c, raw, loc, _: decode_section(c, type(default), raw, loc, default))


def rule(cls: type) -> Callable[[Rule], Rule]:
    def register(check: Rule) -> Rule:
        _RULES.setdefault(cls, []).append(check)
        return check

    return register


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.metadata.get("key", f.name) for f in fields(cls) if f.metadata)


def decode_section(
    checker: _Checker, cls: type[T], raw: object, loc: str, default: T | None = None, **given: Any
) -> T:
    """Decode the mapping `raw` into `cls`: unknown keys, wrong types and parser errors are
    reported at their location, and a field with a problem keeps its default."""
    return _decode_fields(checker, cls, checker.mapping(raw, loc, _keys(cls)), loc, default, given)


def _decode_fields(
    checker: _Checker,
    cls: type[T],
    data: Mapping[str, Any],
    loc: str,
    default: T | None = None,
    given: Mapping[str, Any] | None = None,
) -> T:
    values: dict[str, Any] = dict(given or {})
    for f in fields(cls):  # type: ignore[arg-type]
        if not f.metadata:
            continue
        key = f.metadata.get("key", f.name)
        here = _join(loc, key)
        fallback = getattr(default, f.name) if default is not None else f.default
        if key in data:
            value = data[key]
        elif fallback is not MISSING:
            values[f.name] = fallback
            continue
        elif "required" in f.metadata:
            checker.problem(here, f.metadata["required"])
            values[f.name] = None
            continue
        else:
            value = None
        if "decode" in f.metadata:
            values[f.name] = f.metadata["decode"](checker, value, here, values)
        else:
            values[f.name] = checker.convert(value, here, f.metadata["parse"], None if fallback is MISSING else fallback)
    result = cls(**values)
    for check in _RULES.get(cls, ()):
        check(checker, result, data, loc)
    return result


# -- value parsers: value -> value, or ValueError with the message ------------------------------
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


def _optional(parse: Callable[[object], T]) -> Callable[[object], T | None]:
    return lambda value: None if value is None else parse(value)


def _secret(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError("expected a non-empty string")  # never echo the value: it is a secret
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


def _path(value: object) -> Path:
    return Path(_str(value))


def _ttl(value: object) -> float | None:
    if value in ("never", "none", None):
        return None
    return parse_duration(value)


def _size(value: object) -> int:
    """Bytes: an integer or `64k`, `10m`, `1g` (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)([kmg]?)b?", value.strip().lower())
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]
    raise ValueError(f"{value!r} is not a size: use bytes or e.g. '64k', '10m', '1g'")


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


def _redis_url(value: object) -> str:
    text = _str(value)
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{text!r} is not a Redis URL: expected redis://, rediss:// or unix://")
    return text


def _prefix(value: object) -> str:
    text = _str(value)
    if not valid_prefix(text):
        raise ValueError(f"{text!r} is not a token prefix: expected [a-z][a-z0-9]* parts joined by '_'")
    return text


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'+.^_`|~-]+\*?\Z")
# Set by tokenward itself on every forwarded request (inbound copies are always removed).
_SET_BY_TOKENWARD = frozenset(
    {"host", "content-length", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)


def _strip_header(item: object) -> str:
    """A header name (or prefix, with a trailing `*`) never forwarded upstream; normalized to
    lower case with `_` and `.` as `-`."""
    if not isinstance(item, str) or not _HEADER_NAME.match(item):
        raise ValueError(f"{item!r} is not a header name (letters, digits, '-', '_', '.'; a trailing '*' for a prefix)")
    norm = item.lower().replace("_", "-").replace(".", "-")
    if norm in _SET_BY_TOKENWARD or norm.startswith("x-tokenward-"):
        raise ValueError(f"{item!r} is set by tokenward itself; inbound copies are always removed")
    return norm


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


# -- decoders: lists and mappings whose items have their own locations --------------------------
def _list_of(parse: Callable[[object], T], expected: str) -> Decoder:
    def decode(checker: _Checker, raw: object, loc: str, _: Mapping[str, Any]) -> tuple[T, ...]:
        if not isinstance(raw, list):
            checker.problem(loc, expected)
            return ()
        items = [checker.convert(item, f"{loc}[{i}]", parse, None) for i, item in enumerate(raw)]
        return tuple(item for item in items if item is not None)

    return decode


def _store_nodes(default_port: int) -> Decoder:
    def decode(checker: _Checker, raw: object, loc: str, _: Mapping[str, Any]) -> tuple[StoreNode, ...]:
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

    return decode


def _topology(cls: type[T], empty: str) -> Decoder:
    """An optional store section: absent or null means not used; `{}` is a problem."""

    def decode(checker: _Checker, raw: object, loc: str, _: Mapping[str, Any]) -> T | None:
        if raw is None:
            return None
        data = checker.mapping(raw, loc, _keys(cls))
        if not data:  # not a mapping, or only unknown keys: already reported; or empty
            if raw == {}:
                checker.problem(loc, empty)
            return None
        return _decode_fields(checker, cls, data, loc)

    return decode


# -- the sections -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Listen:
    host: str = setting(parse=_str)
    port: int = setting(parse=_int(0, 65535))


StoreNode = tuple[str, int]  # (host, port)


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    """Redis Sentinel: the sentinels to ask, and the name of the master they watch."""

    master: str = setting(parse=_str, required="is required: the master name the sentinels monitor")
    nodes: tuple[StoreNode, ...] = setting(decode=_store_nodes(26379))
    username: str | None = setting(None, _optional(_str))  # for the master and replicas
    password: str | None = setting(None, _secret, secret=True)
    db: int = setting(0, _int(0, 65535))
    sentinel_username: str | None = setting(None, _optional(_str))  # for the sentinels themselves
    sentinel_password: str | None = setting(None, _secret, secret=True)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Redis Cluster: any few nodes to learn the cluster's layout from."""

    nodes: tuple[StoreNode, ...] = setting(decode=_store_nodes(6379))
    username: str | None = setting(None, _optional(_str))
    password: str | None = setting(None, _secret, secret=True)


@rule(SentinelSettings)
@rule(ClusterSettings)
def _password_with_username(checker: _Checker, store: Any, given: Mapping[str, Any], loc: str) -> None:
    for user_key, password_key in (("username", "password"), ("sentinel_username", "sentinel_password")):
        if getattr(store, user_key, None) is not None and password_key not in given:
            checker.problem(f"{loc}.{password_key}", f"is required with {user_key}")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str | None = setting(None, _optional(_redis_url))  # one server (or a proxy in front of several)
    sentinel: SentinelSettings | None = setting(
        None, decode=_topology(SentinelSettings, "needs master (the name the sentinels monitor) and nodes")
    )
    cluster: ClusterSettings | None = setting(
        None, decode=_topology(ClusterSettings, "needs nodes: a few cluster nodes as host:port")
    )
    # store down: tokens verified this recently keep working
    stale_if_error: float = setting(300.0, parse_duration)

    @property
    def embedded(self) -> bool:
        """No store named: start the embedded server under data_dir."""
        return self.url is None and self.sentinel is None and self.cluster is None


@rule(RedisSettings)
def _one_store(checker: _Checker, redis: RedisSettings, given: Mapping[str, Any], loc: str) -> None:
    named = [key for key in ("url", "sentinel", "cluster") if given.get(key) is not None]
    if len(named) > 1:
        both = f"{', '.join(named[:-1])} and {named[-1]}"
        checker.problem(loc, f"{both} are alternatives: give only one (url, sentinel or cluster)")


@dataclass(frozen=True, slots=True)
class Argon2Settings:
    # OWASP's argon2id recommendation for *passwords* (19 MiB, 2 passes, 1 lane): ample for
    # machine-generated ~190-bit secrets, and a fifth of the work of argon2-cffi's default
    # (64 MiB, 3 passes, 4 lanes), which every new token pays twice (issue, first use).
    time_cost: int = setting(2, _int(1, 100))
    memory_cost: int = setting(19456, _int(8, 4 * 1024 * 1024))  # KiB
    parallelism: int = setting(1, _int(1, 64))


@dataclass(frozen=True, slots=True)
class TokenSettings:
    prefix: str = setting("tw_sat", _prefix)
    legacy_prefixes: tuple[str, ...] = setting((), decode=_list_of(_prefix, "expected a list of prefixes"))
    default_ttl: float | None = setting(90 * 86400.0, _ttl)  # None: never expires
    max_ttl: float | None = setting(365 * 86400.0, _ttl)  # None: no limit
    cache_ttl: float = setting(30.0, parse_duration)
    argon2: Argon2Settings = section(Argon2Settings())
    # Tokens of any status one team (or the org level) may hold: bounds every per-team scan.
    max_per_team: int = setting(10_000, _int(1, 1_000_000))

    @property
    def accepted_prefixes(self) -> frozenset[str]:
        return frozenset((self.prefix, *self.legacy_prefixes))


@rule(TokenSettings)
def _default_ttl_within_max(checker: _Checker, tokens: TokenSettings, given: Mapping[str, Any], loc: str) -> None:
    if tokens.max_ttl is not None and (tokens.default_ttl is None or tokens.default_ttl > tokens.max_ttl):
        checker.problem(f"{loc}.default_ttl", "is longer than tokens.max_ttl; shorten it or raise max_ttl")


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str  # the key in `upstreams`
    url: str = setting(parse=_upstream_url, required="is required")
    timeout: float = setting(30.0, parse_duration)
    connect_timeout: float = setting(5.0, parse_duration)
    # the upstream matches paths case-insensitively (Express default, IIS, ASP.NET): a
    # case variant of a literal route is decided on that route instead of being refused
    case_insensitive: bool = setting(False, _bool)


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = setting("info", _choice("debug", "info", "warning", "error"))
    format: str = setting("auto", _choice("auto", "json", "console"))  # auto: pretty on a TTY, JSON otherwise


@dataclass(frozen=True, slots=True)
class Limits:
    max_url_length: int = setting(8192, _size)  # bytes in the request target: 414 beyond
    max_header_bytes: int = setting(32768, _size)  # all header names and values together: 431 beyond
    max_header_count: int = setting(100, _int(1, 10_000))  # 431 beyond
    max_body_bytes: int = setting(100 * 1024 * 1024, _size)  # 413 beyond
    header_timeout: float = setting(10.0, parse_duration)  # a client must send its request headers within this
    body_timeout: float = setting(60.0, parse_duration)  # longest wait for the next piece of a request body


@dataclass(frozen=True, slots=True)
class AuditSettings:
    stream_maxlen: int = setting(100_000, _int(100, 100_000_000))


def _upstreams(checker: _Checker, raw: object, loc: str, _: Mapping[str, Any]) -> dict[str, Upstream]:
    if not isinstance(raw, dict) or not raw:
        checker.problem(loc, "expected a mapping of upstream names to {url, timeout}")
        return {}
    result = {}
    for name, spec in raw.items():
        here = f"{loc}.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            checker.problem(here, "upstream names must match [a-z][a-z0-9_-]*")
            continue
        result[name] = decode_section(checker, Upstream, spec, here, name=name)
    return result


def _router(checker: _Checker, raw: object, loc: str, siblings: Mapping[str, Any]) -> Router:
    upstreams: Mapping[str, Upstream] = siblings.get("upstreams") or {}
    routes: list[Route] = []
    if not isinstance(raw, list) or not raw:
        checker.problem(loc, "expected a non-empty list of routes")
        raw = []
    for i, item in enumerate(raw):
        route = _route(checker, item, i, upstreams)
        if route is not None:
            routes.append(route)
    for first, second in find_conflicts(routes):
        checker.problem(
            f"routes[{second.index}]",
            f"matches the same requests as routes[{first.index}] ({first.label}) with equal "
            "specificity; make one more specific or give them different methods",
        )
    return Router(routes, frozenset(n for n, u in upstreams.items() if u.case_insensitive))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    listen: Listen = section(Listen("0.0.0.0", 8080))
    admin_listen: Listen = section(Listen("127.0.0.1", 8081))
    redis: RedisSettings = section(RedisSettings())
    data_dir: Path = setting(Path(".tokenward"), _path)  # relative to the config file
    tokens: TokenSettings = section(TokenSettings())
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        (), decode=_list_of(_network, "expected a list of CIDRs like [10.0.0.0/8]")
    )
    forward_authorization: bool = setting(False, _bool)
    upstreams: Mapping[str, Upstream] = setting(decode=_upstreams)
    router: Router = setting(decode=_router, key="routes")
    log: LogSettings = section(LogSettings())
    audit: AuditSettings = section(AuditSettings())
    limits: Limits = section(Limits())
    allow_python_parser: bool = setting(False, _bool)
    source: str = "config"
    # request headers never forwarded upstream, on top of tokenward's built-in list; a
    # trailing `*` makes a prefix (normalized: lower case, `_`/`.` as `-`)
    strip_headers: tuple[str, ...] = setting(
        (), decode=_list_of(_strip_header, "expected a list of header names like [X-Internal-User, X-Legacy-*]")
    )

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.router.routes


@dataclass(frozen=True, slots=True)
class _RouteFlags:
    """The plain fields of a route; `_route` checks the rest against its path and upstreams."""

    public: bool = setting(False, _bool)
    websocket: bool = setting(False, _bool)


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

    flags = _decode_fields(checker, _RouteFlags, data, loc)
    public = flags.public
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
        websocket=flags.websocket,
        shape=shape,
        param_names=names,
    )


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


def settings_from_dict(raw: object, source: str = "config", base_dir: Path | None = None) -> Settings:
    checker = _Checker()
    if isinstance(raw, dict):  # `x-*` keys hold YAML anchors for `<<:` merges, like compose files
        raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}
    if raw is None or raw == {}:
        checker.problem("", "the config is empty: it needs at least upstreams and routes")
    settings = decode_section(checker, Settings, raw, "", source=source)
    if checker.problems:
        raise ConfigError(checker.problems, source)
    if not settings.data_dir.is_absolute() and base_dir is not None:
        settings = replace(settings, data_dir=base_dir / settings.data_dir)
    return settings


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
