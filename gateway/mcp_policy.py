"""A route's per-tool MCP policy (the route key `mcp`): which scope each tool of an MCP
server needs, what an unlisted tool needs (`default: deny` or a scope), and how large a
JSON-RPC request body the gateway reads to decide. Decoded with the route's other keys
(route_config.py), every problem reported at its YAML location (`routes[2].mcp.tools.deploy`).

The request and response handling that applies the policy is gateway/mcp.py; this module
is the plain data, so that the route table can carry it without importing the request path.

    routes:
      - path: /mcp
        methods: [GET, POST, DELETE]
        upstream: tools
        scopes: [mcp]
        mcp:
          tools: {search_docs: read:docs, deploy: write:deploy, drop_db: deny}
          default: deny          # or a scope every unlisted tool needs
          max_body: 256k         # the largest JSON-RPC request body read (413 beyond)
          max_response: 8m       # the largest response (or SSE event) read to filter tools/list
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tokenward.gateway.config_decode import Checker, Describer, Schema, byte_size
from tokenward.gateway.scopes import Scope, ScopeError, parse_scope

DENY = "deny"  # the keyword: no scope grants the tool
# bytes of JSON-RPC request read before deciding: 413 beyond. Parsed on the event loop (strict,
# with a key hook): a worst-case 256 KiB body costs ~25 ms of CPU, 1 MiB ~100 ms (review of issue 16)
DEFAULT_MAX_BODY = 256 * 1024
DEFAULT_MAX_RESPONSE = 8 * 1024 * 1024  # a filtered JSON response, or one SSE event, at most
MAX_TOOL_NAME = 128  # the MCP spec's own bound on a tool name's length
_KEYS = ("tools", "default", "max_body", "max_response")


@dataclass(frozen=True, slots=True)
class McpPolicy:
    """`tools`: tool name -> the scope it needs (None: denied whatever the token holds);
    `default`: the scope an unlisted tool needs (None: unlisted tools are denied)."""

    tools: Mapping[str, Scope | None] = field(default_factory=dict)
    default: Scope | None = None
    max_body: int = DEFAULT_MAX_BODY
    max_response: int = DEFAULT_MAX_RESPONSE

    def scope_for(self, tool: str) -> Scope | None:
        """The scope that lets a token call `tool`; None: no token may."""
        if tool in self.tools:
            return self.tools[tool]
        return self.default


@dataclass(slots=True)
class McpCalls:
    """One request's JSON-RPC traffic on an MCP route, as the gateway read it: the tools it
    calls (for the audit event and the usage tally), the ids of its `tools/list` requests
    (whose responses are filtered) and whether the response is the server's own stream (a
    GET: replayed `tools/list` responses are filtered by their shape). `can` answers whether
    the caller holds a scope (the principal's effective permissions)."""

    policy: McpPolicy
    can: Callable[[Scope], bool]
    tools: list[str] = field(default_factory=list)  # tools/call names, in order
    refused: list[str] = field(default_factory=list)  # of those, the ones refused
    list_ids: set[tuple[bool, int | str]] = field(default_factory=set)  # (is str, id) of tools/list
    server_stream: bool = False  # a GET: any response carrying result.tools is filtered

    def may_call(self, tool: object) -> bool:
        if not isinstance(tool, str):
            return False
        scope = self.policy.scope_for(tool)
        return scope is not None and self.can(scope)

    @property
    def filters(self) -> bool:
        """Is there a response to filter (a tools/list was asked, or the server's stream)?"""
        return bool(self.list_ids) or self.server_stream


def decode_mcp(checker: Checker, raw: object, loc: str) -> McpPolicy | None:
    """The route's `mcp` mapping; None (with the problems reported) when it is wrong."""
    start = len(checker.problems)
    if not isinstance(raw, dict):
        checker.problem(loc, "expected a mapping like {tools: {search: read:docs}, default: deny}")
        return None
    data = checker.mapping(raw, loc, _KEYS)
    tools: dict[str, Scope | None] = {}
    raw_tools = data.get("tools", {})
    if raw_tools is None:
        raw_tools = {}
    if not isinstance(raw_tools, dict):
        checker.problem(f"{loc}.tools", "expected a mapping of tool name to scope, e.g. {deploy: write:deploy}")
    else:
        for name, scope in raw_tools.items():
            t_loc = f"{loc}.tools.{name}"
            if not isinstance(name, str) or not name or len(name) > MAX_TOOL_NAME or not name.isprintable():
                checker.problem(t_loc, f"a tool name is 1..{MAX_TOOL_NAME} printable characters")
                continue
            tools[name] = _scope_or_deny(checker, scope, t_loc)
    default = _scope_or_deny(checker, data.get("default", DENY), f"{loc}.default")
    if default is None and all(scope is None for scope in tools.values()) and len(checker.problems) == start:
        checker.problem(loc, "allows no tool: list tools under `tools` or give `default` a scope")
    sizes = {"max_body": DEFAULT_MAX_BODY, "max_response": DEFAULT_MAX_RESPONSE}
    for key, fallback in sizes.items():
        if key in data:
            sizes[key] = checker.convert(data[key], f"{loc}.{key}", byte_size, fallback)
    if len(checker.problems) != start:
        return None
    return McpPolicy(tools, default, sizes["max_body"], sizes["max_response"])


def _scope_or_deny(checker: Checker, raw: object, loc: str) -> Scope | None:
    if raw == DENY:
        return None
    try:
        return parse_scope(raw)
    except ScopeError as exc:
        checker.problem(loc, f"{exc}; or `deny`")
        return None


def mcp_schema(d: Describer, scope: Schema) -> Schema:
    """The JSON Schema of a route's `mcp` key; `scope`: the schema of one scope string."""
    scope_or_deny: Schema = {"anyOf": [scope, d.leaf({"const": DENY})]}
    return {
        "type": "object",
        "properties": {
            "tools": {
                "type": ["object", "null"],
                "propertyNames": {"minLength": 1, "maxLength": MAX_TOOL_NAME},
                "additionalProperties": scope_or_deny,
            },
            "default": scope_or_deny,
            "max_body": d.value(byte_size),
            "max_response": d.value(byte_size),
        },
        "additionalProperties": False,
    }
