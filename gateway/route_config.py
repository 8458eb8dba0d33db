"""The `routes` section of the config: every route checked by hand against its path
template, its methods, the defined upstreams, its scopes and its resource mapping, and the
routes checked against each other (two routes that match the same requests with equal
specificity are refused). `decode_routes` builds the `Router`; every problem is reported
with its location (`routes[3].scopes[0]: ...`) through the config decoder's `Checker`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokenward.gateway.config_decode import NAME, Checker, Describer, Schema, boolean, decode_fields, setting
from tokenward.gateway.environments import ENVIRONMENTS, combine, decode_environments
from tokenward.gateway.limit_config import LIMITS_SCHEMA, decode_route_limits
from tokenward.gateway.mcp_policy import McpPolicy, decode_mcp, mcp_schema
from tokenward.gateway.routes import (
    HTTP_METHODS,
    Route,
    Router,
    TemplateError,
    find_conflicts,
    parse_template,
)
from tokenward.gateway.scopes import LEVEL_WORDS, NAME_PATTERN, RESOURCE, ScopeError, parse_scope


def decode_routes(
    checker: Checker,
    raw: object,
    loc: str,
    upstreams: Sequence[str],
    case_insensitive: frozenset[str],
    environments: Mapping[str, frozenset[str] | None] | None = None,
) -> Router:
    """The route table from the raw `routes` list; `upstreams`: the defined upstream names,
    `case_insensitive`: those that match paths case-insensitively, `environments`: the token
    environments each upstream accepts (absent or None: all)."""
    routes: list[Route] = []
    if not isinstance(raw, list) or not raw:
        checker.problem(loc, "expected a non-empty list of routes")
        raw = []
    for i, item in enumerate(raw):
        route = _route(checker, item, i, upstreams, environments or {})
        if route is not None:
            routes.append(route)
    for first, second in find_conflicts(routes):
        checker.problem(
            f"routes[{second.index}]",
            f"matches the same requests as routes[{first.index}] ({first.label}) with equal "
            "specificity; make one more specific or give them different methods",
        )
    return Router(routes, case_insensitive)


@dataclass(frozen=True, slots=True)
class _RouteFlags:
    """The plain fields of a route; `_route` checks the rest against its path and upstreams."""

    public: bool = setting(False, boolean)
    websocket: bool = setting(False, boolean)


_ROUTE_KEYS: tuple[str, ...] = ("methods", "path", "upstream", "scopes", "public", "resource", "websocket", "environments")
_ROUTE_KEYS += ("mcp",)  # per-tool MCP authorization (gateway/mcp_policy.py)
_ROUTE_KEYS += ("rate_limits",)  # defaults per token on the route (gateway/limit_config.py)


def routes_schema(d: Describer) -> Schema:
    """The JSON Schema of the `routes` list: what `_route` checks one route at a time (not
    the checks against the upstreams, the path's parameters or the other routes)."""
    resource = RESOURCE.pattern.removeprefix("^").removesuffix(chr(92) + "Z")
    name = NAME_PATTERN.removeprefix("^").removesuffix(chr(92) + "Z")
    # a level and a resource, a bare level (`read` = `read:*`) or a capability (`mcp`)
    scope = f"^(?:(?:{'|'.join(LEVEL_WORDS)}):{resource}|{name}|read_write)$"
    scopes: Schema = {"type": "array", "minItems": 1, "items": d.leaf({"type": "string", "pattern": scope})}
    no_scopes: Schema = {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    names = NAME.pattern.removesuffix(chr(92) + "Z") + "$"
    properties: Schema = {
        "methods": {"type": "array", "minItems": 1, "items": d.leaf({"enum": list(HTTP_METHODS)})},
        "path": d.leaf({"type": "string", "pattern": "^/"}),
        "upstream": {"type": "string"},
        "scopes": {"anyOf": [scopes, no_scopes]},
        "environments": {"type": "array", "minItems": 1, "items": d.leaf({"enum": list(ENVIRONMENTS)})},
        "resource": {
            "type": ["object", "null"],
            "propertyNames": {"pattern": names},
            "additionalProperties": {"type": "string"},
        },
        **d.section(_RouteFlags)["properties"],
        "mcp": mcp_schema(d, scopes["items"]),
        "rate_limits": LIMITS_SCHEMA,
    }
    route: Schema = {
        "type": "object",
        "properties": properties,
        "required": ["path", "upstream"],
        "additionalProperties": False,
        # public: true takes no scopes and no resource; any other route names its scopes
        "if": {"properties": {"public": {"const": True}}, "required": ["public"]},
        "then": {"properties": {"scopes": no_scopes, "resource": {"maxProperties": 0}}, "not": {"required": ["environments"]}},
        "else": {"properties": {"scopes": scopes}, "required": ["scopes"]},
    }
    return {"type": "array", "minItems": 1, "items": route}


def _route(
    checker: Checker,
    raw: object,
    index: int,
    upstreams: Sequence[str],
    upstream_environments: Mapping[str, frozenset[str] | None],
) -> Route | None:
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

    flags = decode_fields(checker, _RouteFlags, data, loc)
    public = flags.public
    scopes = []
    raw_scopes = data.get("scopes")
    if public:
        if raw_scopes:
            checker.problem(f"{loc}.scopes", "a public route takes no scopes")
        if data.get("resource"):
            checker.problem(f"{loc}.resource", "a public route takes no resource")
        if "environments" in data:
            checker.problem(f"{loc}.environments", "a public route takes no token, so no environments")
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
            if not isinstance(role, str) or not NAME.match(role):
                checker.problem(r_loc, "names must match [a-z][a-z0-9_-]*")
            elif param not in names:
                have = ", ".join(names) or "none"
                checker.problem(r_loc, f"{param!r} is not a parameter of the path (parameters: {have})")
            else:
                resource[role] = param

    mcp = _mcp(checker, data, loc, public, flags.websocket)
    rate_limits = decode_route_limits(checker, data.get("rate_limits"), f"{loc}.rate_limits")
    if rate_limits and public:
        checker.problem(f"{loc}.rate_limits", "a public route takes no token, so no per-token rate limits")
    environments = decode_environments(checker, data.get("environments"), f"{loc}.environments")
    environments = combine(environments, upstream_environments.get(str(upstream)))
    if environments is not None and not environments:
        checker.problem(f"{loc}.environments", f"no environment is accepted by both the route and upstream {upstream}")
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
        environments=None if public else environments,
        mcp=mcp,
        rate_limits=rate_limits,
    )


def _mcp(checker: Checker, data: dict[str, object], loc: str, public: bool, websocket: bool) -> McpPolicy | None:
    """The route's `mcp` policy: a route that carries MCP's streamable HTTP transport."""
    if "mcp" not in data:
        return None
    if public:
        checker.problem(f"{loc}.mcp", "a public route takes no token, so no per-tool scopes")
    if websocket:
        checker.problem(f"{loc}.mcp", "MCP's streamable HTTP transport is no WebSocket: drop websocket: true")
    return decode_mcp(checker, data["mcp"], f"{loc}.mcp")

