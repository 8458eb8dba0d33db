"""The whole config as frozen dataclasses, loaded strictly.

`load_settings(path)` reads YAML, checks everything and raises one `ConfigError` listing
every problem with its YAML location (`routes[3].scopes[0]: ...`). Unknown keys are errors;
a misspelled security setting never falls back quietly to a default.

Each field declares its YAML default and parser once, with `setting(...)`; `decode_section`
decodes any section from those declarations, and rules that tie fields together are small
functions registered with `@rule(Section)` (the decoder: config_decode.py). The route table
is checked by route_config.py.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from tokenward.gateway.config_decode import (
    NAME,
    Checker,
    Decoder,
    DuplicateKeyLoader,
    Schema,
    boolean,
    byte_size,
    decode_fields,
    decode_section,
    described,
    duration_or_never,
    field_keys,
    file_path,
    integer,
    list_of,
    one_of,
    optional,
    rule,
    secret_string,
    section,
    setting,
    string,
)
from tokenward.gateway.config_env import interpolate
from tokenward.gateway.delegation import DelegationSettings
from tokenward.gateway.durations import parse_duration
from tokenward.gateway.environments import environments_setting
from tokenward.gateway.legacy_keys import lookup_key_setting
from tokenward.gateway.limit_config import RateLimitSettings
from tokenward.gateway.route_config import decode_routes, routes_schema
from tokenward.gateway.routes import Route, Router
from tokenward.gateway.tokens import PREFIX_PATTERN, valid_prefix
from tokenward.gateway.upstream_tls import UpstreamTls, tls_context

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


class ConfigError(Exception):
    """Every problem found in a config file, each with its location."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


# -- value parsers of tokenward's own fields (the generic ones: config_decode.py) ---------------
@described({"type": "string", "pattern": r"^[0-9A-Fa-f.:]+(/[0-9A-Fa-f.:]+)?$"})  # an address or a CIDR
def _network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a CIDR like '10.0.0.0/8'")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR like '10.0.0.0/8'") from None


@described({"type": "string", "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+[^?#]*$"})
def _upstream_url(value: object) -> str:
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an upstream URL: expected http(s)://host[:port][/base]")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: an upstream URL cannot have a query or fragment")
    return text.rstrip("/")


@described({"type": "string", "pattern": r"^([Rr][Ee][Dd][Ii][Ss][Ss]?|[Uu][Nn][Ii][Xx]):"})
def _redis_url(value: object) -> str:
    text = string(value)
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        shown = re.sub(r"//[^/@]*@", "//***@", text)  # never echo a password it may carry
        raise ValueError(f"{shown!r} is not a Redis URL: expected redis://, rediss:// or unix://")
    return text


@described({"type": "string", "pattern": f"^{PREFIX_PATTERN}$"})
def _prefix(value: object) -> str:
    text = string(value)
    if not valid_prefix(text):
        raise ValueError(f"{text!r} is not a token prefix: expected [a-z][a-z0-9]* parts joined by '_'")
    return text


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'+.^_`|~-]+\*?\Z")
# Set by tokenward itself on every forwarded request (inbound copies are always removed).
_SET_BY_TOKENWARD = frozenset(
    {"host", "content-length", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)


@described({"type": "string", "pattern": _HEADER_NAME.pattern.replace("\\Z", "$")})
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
    @described({"type": "string", "pattern": r"^\S+$"})  # host:port, [v6]:port or a bare host
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
def _store_nodes(default_port: int) -> Decoder:
    port: Schema = {"type": "integer", "minimum": 1, "maximum": 65535, "default": default_port}
    node = {"type": "object", "properties": {"host": {"type": "string", "minLength": 1}, "port": port},
            "required": ["host"], "additionalProperties": False}  # fmt: skip

    @described(lambda d: {"type": "array", "minItems": 1, "items": {"anyOf": [d.value(_host_port(default_port)), node]}})
    def decode(checker: Checker, raw: object, loc: str, _: Mapping[str, Any]) -> tuple[StoreNode, ...]:
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
                host = checker.convert(spec["host"], f"{node_loc}.host", string, "")
                port = checker.convert(
                    spec.get("port", default_port), f"{node_loc}.port", integer(1, 65535), default_port
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

    @described(lambda d: {"anyOf": [{"type": "null"}, {**d.section(cls), "type": "object", "minProperties": 1}]})
    def decode(checker: Checker, raw: object, loc: str, _: Mapping[str, Any]) -> T | None:
        if raw is None:
            return None
        data = checker.mapping(raw, loc, field_keys(cls))
        if not data:  # not a mapping, or only unknown keys: already reported; or empty
            if raw == {}:
                checker.problem(loc, empty)
            return None
        return decode_fields(checker, cls, data, loc)

    return decode


# -- the sections -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Listen:
    host: str = setting(parse=string)
    port: int = setting(parse=integer(0, 65535))


StoreNode = tuple[str, int]  # (host, port)


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    """Redis Sentinel: the sentinels to ask, and the name of the master they watch."""

    master: str = setting(parse=string, required="is required: the master name the sentinels monitor")
    nodes: tuple[StoreNode, ...] = setting(decode=_store_nodes(26379))
    username: str | None = setting(None, optional(string))  # for the master and replicas
    password: str | None = setting(None, secret_string, secret=True)
    db: int = setting(0, integer(0, 65535))
    sentinel_username: str | None = setting(None, optional(string))  # for the sentinels themselves
    sentinel_password: str | None = setting(None, secret_string, secret=True)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Redis Cluster: any few nodes to learn the cluster's layout from."""

    nodes: tuple[StoreNode, ...] = setting(decode=_store_nodes(6379))
    username: str | None = setting(None, optional(string))
    password: str | None = setting(None, secret_string, secret=True)


@rule(SentinelSettings)
@rule(ClusterSettings)
def _password_with_username(checker: Checker, store: Any, given: Mapping[str, Any], loc: str) -> None:
    for user_key, password_key in (("username", "password"), ("sentinel_username", "sentinel_password")):
        if getattr(store, user_key, None) is not None and password_key not in given:
            checker.problem(f"{loc}.{password_key}", f"is required with {user_key}")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str | None = setting(None, optional(_redis_url))  # one server (or a proxy in front of several)
    sentinel: SentinelSettings | None = setting(
        None, decode=_topology(SentinelSettings, "needs master (the name the sentinels monitor) and nodes")
    )
    cluster: ClusterSettings | None = setting(
        None, decode=_topology(ClusterSettings, "needs nodes: a few cluster nodes as host:port")
    )
    # store down: tokens verified this recently keep working
    stale_if_error: float = setting(300.0, parse_duration)
    # credentials for `url`, kept out of it (Sentinel and Cluster have their own)
    username: str | None = setting(None, optional(string))
    password: str | None = setting(None, secret_string, secret=True)

    @property
    def embedded(self) -> bool:
        """No store named: start the embedded server under data_dir."""
        return self.url is None and self.sentinel is None and self.cluster is None


@rule(RedisSettings)
def _one_store(checker: Checker, redis: RedisSettings, given: Mapping[str, Any], loc: str) -> None:
    named = [key for key in ("url", "sentinel", "cluster") if given.get(key) is not None]
    if len(named) > 1:
        both = f"{', '.join(named[:-1])} and {named[-1]}"
        checker.problem(loc, f"{both} are alternatives: give only one (url, sentinel or cluster)")


@rule(RedisSettings)
def _url_credentials(checker: Checker, redis: RedisSettings, given: Mapping[str, Any], loc: str) -> None:
    for key in ("username", "password"):
        if given.get(key) is None:
            continue
        if given.get("url") is None:
            where = next((name for name in ("sentinel", "cluster") if given.get(name) is not None), None)
            hint = f"give it as {loc}.{where}.{key}" if where else "the embedded store has none"
            checker.problem(f"{loc}.{key}", f"is only used with url; {hint}")
        elif key == "password" and redis.url is not None and urlsplit(redis.url).password is not None:
            checker.problem(f"{loc}.{key}", "the url has a password too: give it once")


@dataclass(frozen=True, slots=True)
class Argon2Settings:
    # OWASP's argon2id recommendation for *passwords* (19 MiB, 2 passes, 1 lane): ample for
    # machine-generated ~190-bit secrets, and a fifth of the work of argon2-cffi's default
    # (64 MiB, 3 passes, 4 lanes), which every new token pays twice (issue, first use).
    time_cost: int = setting(2, integer(1, 100))
    memory_cost: int = setting(19456, integer(8, 4 * 1024 * 1024))  # KiB
    parallelism: int = setting(1, integer(1, 64))


@dataclass(frozen=True, slots=True)
class TokenSettings:
    prefix: str = setting("tw_sat", _prefix)
    test_prefix: str = setting("tw_test", _prefix)  # of test tokens (environments.py)
    legacy_prefixes: tuple[str, ...] = setting((), decode=list_of(_prefix, "expected a list of prefixes"))
    default_ttl: float | None = setting(90 * 86400.0, duration_or_never)  # None: never expires
    max_ttl: float | None = setting(365 * 86400.0, duration_or_never)  # None: no limit
    cache_ttl: float = setting(30.0, parse_duration)
    argon2: Argon2Settings = section(Argon2Settings())
    # Tokens of any status one team (or the org level) may hold: bounds every per-team scan.
    max_per_team: int = setting(10_000, integer(1, 1_000_000))
    # the server's key for imported keys' lookup digests (gateway/legacy_keys.py); none: no import
    legacy_lookup_key: str | None = setting(None, lookup_key_setting, secret=True)
    delegation: DelegationSettings = section(DelegationSettings())  # child tokens (gateway/delegation.py)

    @property
    def accepted_prefixes(self) -> frozenset[str]:
        return frozenset((self.prefix, self.test_prefix, *self.legacy_prefixes))


@rule(TokenSettings)
def _default_ttl_within_max(checker: Checker, tokens: TokenSettings, given: Mapping[str, Any], loc: str) -> None:
    if tokens.max_ttl is not None and (tokens.default_ttl is None or tokens.default_ttl > tokens.max_ttl):
        checker.problem(f"{loc}.default_ttl", "is longer than tokens.max_ttl; shorten it or raise max_ttl")
    if tokens.test_prefix == tokens.prefix:
        checker.problem(f"{loc}.test_prefix", f"must differ from tokens.prefix ({tokens.prefix!r}): set e.g. test_prefix: {tokens.prefix}_dev")


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str  # the key in `upstreams`
    url: str = setting(parse=_upstream_url, required="is required")
    timeout: float = setting(30.0, parse_duration)
    connect_timeout: float = setting(5.0, parse_duration)
    # the upstream matches paths case-insensitively (Express default, IIS, ASP.NET): a
    # case variant of a literal route is decided on that route instead of being refused
    case_insensitive: bool = setting(False, boolean)
    tls: UpstreamTls = section(UpstreamTls())  # for an https:// url (upstream_tls.py)
    # connections open to it at once (per process: in use, idle, tunnels); a request that
    # finds them all taken waits up to pool_timeout for one, then gets 503
    max_connections: int = setting(100, integer(1, 100_000))
    pool_timeout: float = setting(5.0, parse_duration)
    environments: frozenset[str] | None = setting(None, decode=environments_setting)  # None: all
    # built from `tls` at load (and at each reload) for an https url: see _upstreams
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)


@rule(Upstream)
def _tls_needs_https(checker: Checker, upstream: Upstream, given: Mapping[str, Any], loc: str) -> None:
    if given.get("tls") is not None and upstream.url and urlsplit(upstream.url).scheme != "https":
        checker.problem(f"{loc}.tls", "applies to an https:// url only")


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = setting("info", one_of("debug", "info", "warning", "error"))
    format: str = setting("auto", one_of("auto", "json", "console"))  # auto: pretty on a TTY, JSON otherwise


@dataclass(frozen=True, slots=True)
class Limits:
    max_url_length: int = setting(8192, byte_size)  # bytes in the request target: 414 beyond
    max_header_bytes: int = setting(32768, byte_size)  # all header names and values together: 431 beyond
    max_header_count: int = setting(100, integer(1, 10_000))  # 431 beyond
    max_body_bytes: int = setting(100 * 1024 * 1024, byte_size)  # 413 beyond
    header_timeout: float = setting(10.0, parse_duration)  # a client must send its request headers within this
    body_timeout: float = setting(60.0, parse_duration)  # longest wait for the next piece of a request body


@dataclass(frozen=True, slots=True)
class AuditSettings:
    stream_maxlen: int = setting(100_000, integer(100, 100_000_000))


@described({"enum": [True, False, "auto"]})
def _on_off_auto(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if value == "auto":
        return None
    raise ValueError(f"{value!r} is not allowed: expected true, false or auto")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry tracing (the `otel` extra; gateway/tracing.py). The exporter, endpoint,
    service name and sampler come from the standard OTEL_* variables."""

    # auto (None): on when OTEL_TRACES_EXPORTER (not none) or an OTLP endpoint is set
    enabled: bool | None = setting(None, _on_off_auto)
    # whose W3C traceparent a request's span continues; from anyone else it is only a link
    inbound_context: str = setting("trusted_proxies", one_of("trusted_proxies", "all", "none"))


@rule(TracingSettings)
def _tracing_installed(checker: Checker, tracing: TracingSettings, given: Mapping[str, Any], loc: str) -> None:
    if tracing.enabled:
        try:
            importlib.metadata.distribution("opentelemetry-sdk")
        except importlib.metadata.PackageNotFoundError:
            checker.problem(f"{loc}.enabled", "tracing needs OpenTelemetry: pip install 'tokenward[otel]'")




@described(lambda d: {"type": "object", "minProperties": 1, "propertyNames": {"pattern": NAME.pattern.replace("\\Z", "$")},
                       "additionalProperties": {**d.section(Upstream), "type": "object"}})  # fmt: skip
def _upstreams(checker: Checker, raw: object, loc: str, _: Mapping[str, Any]) -> dict[str, Upstream]:
    if not isinstance(raw, dict) or not raw:
        checker.problem(loc, "expected a mapping of upstream names to {url, timeout}")
        return {}
    result = {}
    for name, spec in raw.items():
        here = f"{loc}.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            checker.problem(here, "upstream names must match [a-z][a-z0-9_-]*")
            continue
        upstream = decode_section(checker, Upstream, spec, here, name=name)
        if upstream.url and urlsplit(upstream.url).scheme == "https":
            upstream = replace(upstream, ssl_context=tls_context(checker, upstream.tls, f"{here}.tls"))
        result[name] = upstream
    return result


@described(routes_schema)
def _router(checker: Checker, raw: object, loc: str, siblings: Mapping[str, Any]) -> Router:
    upstreams: Mapping[str, Upstream] = siblings.get("upstreams") or {}
    case_insensitive = frozenset(n for n, u in upstreams.items() if u.case_insensitive)
    environments = {n: u.environments for n, u in upstreams.items()}
    return decode_routes(checker, raw, loc, tuple(upstreams), case_insensitive, environments)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    listen: Listen = section(Listen("0.0.0.0", 8080))
    admin_listen: Listen = section(Listen("127.0.0.1", 8081))
    redis: RedisSettings = section(RedisSettings())
    data_dir: Path = setting(Path(".tokenward"), file_path)  # relative to the config file
    tokens: TokenSettings = section(TokenSettings())
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        (), decode=list_of(_network, "expected a list of CIDRs like [10.0.0.0/8]")
    )
    forward_authorization: bool = setting(False, boolean)
    upstreams: Mapping[str, Upstream] = setting(decode=_upstreams)
    router: Router = setting(decode=_router, key="routes")
    log: LogSettings = section(LogSettings())
    audit: AuditSettings = section(AuditSettings())
    limits: Limits = section(Limits())
    allow_python_parser: bool = setting(False, boolean)
    source: str = "config"
    # request headers never forwarded upstream, on top of tokenward's built-in list; a
    # trailing `*` makes a prefix (normalized: lower case, `_`/`.` as `-`)
    strip_headers: tuple[str, ...] = setting(
        (), decode=list_of(_strip_header, "expected a list of header names like [X-Internal-User, X-Legacy-*]")
    )
    tracing: TracingSettings = section(TracingSettings())
    rate_limits: RateLimitSettings = section(RateLimitSettings())  # gateway/limiter.py

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.router.routes


def settings_from_dict(
    raw: object, source: str = "config", base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """`env`: the variables `${NAME}` values are expanded from (config_env.py); None: none are."""
    checker = Checker(base_dir)
    if isinstance(raw, dict):  # `x-*` keys hold YAML anchors for `<<:` merges, like compose files
        raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}
    if env is not None:
        raw = interpolate(raw, env, checker.unresolved)
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
        raw = yaml.load(text, Loader=DuplicateKeyLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {problem}"], str(path)) from None
    return settings_from_dict(raw, str(path), base_dir=path.resolve().parent, env=os.environ)
