"""Per-tool MCP authorization: the request side.

On a route with an `mcp` policy (gateway/mcp_policy.py), after the route's own scopes are
checked, the decision reads the JSON-RPC request body (at most the policy's `max_body`,
413 beyond; 408 when the client stalls), parses it strictly and requires, for every
`tools/call` in it (a request or a notification, alone or in a batch), the scope the policy
maps the tool to. Nothing the gateway cannot read with one meaning is forwarded: a body
that is not UTF-8 JSON (or repeats a key in an object), a message that is not JSON-RPC 2.0,
a `tools/call` whose `params.name` is not one plain string, a method spelled like `tools/call`
or `tools/list` in another case: 400. A batch with any refused call is refused whole (403),
nothing of it runs. The forwarded body is exactly the bytes that were authorized (the
forwarder sends `Exchange.body`, not the client's stream).

Every refusal here answers with a JSON-RPC error (`JsonRpcRefusal`, SECURITY.md and README
"MCP"): for a batch, an array with one error per request in it; the gateway's own fields
(`error`, `step`, `request_id`, and `tool`/`scope` for a refused call) are in `error.data`.

GET (the server's SSE stream) and DELETE (end of session) carry no body: they pass with the
route's scopes, and the GET stream's `tools/list` results are filtered (gateway/mcp_stream.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
from multidict import CIMultiDictProxy

from tokenward.gateway.exchange import Exchange
from tokenward.gateway.mcp_policy import MAX_TOOL_NAME, McpCalls, McpPolicy
from tokenward.gateway.redaction import redact_token_shaped
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.scopes import Scope
from tokenward.gateway.usage import UNLISTED_TOOL

TOOLS_CALL, TOOLS_LIST = "tools/call", "tools/list"
# JSON-RPC error codes: the spec's, and one from its implementation-defined server range
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
FORBIDDEN = -32003  # the gateway refused the call: the token may not use this tool
_MEMBERS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})
METHOD_HEADER, NAME_HEADER = "Mcp-Method", "Mcp-Name"  # MCP's routing headers (2026-07-28)
_BASE64_SENTINEL = re.compile(r"=\?base64\?(.*)\?=")
AUDITED_TOOLS = 32  # tool names in one audit event, at most (a batch may hold many)

RpcId = int | str | None


class JsonRpcRefusal(Refusal):
    """A refusal on an MCP route, answered as JSON-RPC: one error object, or for a batch an
    array of them. `replies`: (id, code, message, extra data) per error; `batch`: answer an
    array. The HTTP status, audit step and reason are the wrapped refusal's."""

    def __init__(
        self, refusal: Refusal, replies: list[tuple[RpcId, int, str, dict[str, str]]], batch: bool = False
    ) -> None:
        super().__init__(
            refusal.status, refusal.error, refusal.step, refusal.message, refusal.scope, close=refusal.close
        )
        self.replies = replies
        self.batch = batch

    def render(self, request_id: str) -> bytes:
        step = self.step.value if self.step is not None else None
        out = []
        for rpc_id, code, message, extra in self.replies:
            data = {"error": self.error, "step": step, "request_id": request_id, **extra}
            out.append(
                {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message, "data": data}}
            )
        return orjson.dumps(out if self.batch else out[0])


def _unreadable(
    status: int, error: str, step: Step, message: str, code: int, close: bool = False
) -> JsonRpcRefusal:
    """A body the gateway cannot decide on: one JSON-RPC error with id null."""
    return JsonRpcRefusal(Refusal(status, error, step, message, close=close), [(None, code, message, {})])


def _invalid(message: str, code: int = INVALID_REQUEST) -> JsonRpcRefusal:
    return _unreadable(400, "invalid_request", Step.REQUEST, message, code)


async def authorize_mcp(ex: Exchange, policy: McpPolicy) -> None:
    """The per-tool step of the decision for `ex` on an MCP route (after the route's scopes
    were checked). Sets ex.mcp (what was called, what to filter) and, for a POST, ex.body
    (the bytes to forward). Raises a JsonRpcRefusal."""
    principal = ex.principal
    assert principal is not None  # an mcp route is never public (route_config refuses it)
    calls = ex.mcp = McpCalls(policy, principal.can)
    if ex.mode != "proxy":
        raise _unreadable(
            403,
            "forbidden",
            Step.MCP_TOOL,
            "an MCP route is decided on its request body: forward-auth cannot answer for it",
            FORBIDDEN,
        )
    request = ex.request
    if ex.method != "POST":
        if request.body_exists or (request.content_length or 0) > 0:
            raise _invalid(f"an MCP {ex.method} request carries no body; JSON-RPC messages come by POST")
        calls.server_stream = ex.method == "GET"
        return
    check_headers(ex)
    body = await read_body(ex, policy.max_body)
    messages, batch = parse_messages(body)
    check_routing_headers(request.headers, messages, batch)
    authorize_calls(calls, messages, batch)
    ex.body = body


def check_headers(ex: Exchange) -> None:
    """A JSON body, in UTF-8, not compressed: the one reading the upstream will also make."""
    headers = ex.request.headers
    types = headers.getall("Content-Type", [])
    if len(types) != 1:
        raise _invalid("an MCP message is sent with one Content-Type: application/json")
    media, _, params = types[0].partition(";")
    if media.strip().lower() != "application/json":
        raise _invalid("an MCP message is sent as application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise _invalid("an MCP message is UTF-8")
    for encoding in headers.getall("Content-Encoding", []):
        if encoding.strip().lower() not in ("", "identity"):
            raise _invalid("a compressed MCP message is not accepted: send it without Content-Encoding")


async def read_body(ex: Exchange, max_body: int) -> bytes:
    """The whole request body, at most `max_body` bytes (and the gateway's own limit)."""
    request = ex.request
    limits = ex.view.settings.limits
    limit = min(max_body, limits.max_body_bytes)
    too_large = _unreadable(
        413,
        "payload_too_large",
        Step.LIMITS,
        f"an MCP request body is at most {limit} bytes here",
        INVALID_REQUEST,
        True,
    )
    if (request.content_length or 0) > limit:
        raise too_large
    if (
        request.headers.get("Expect", "").lower() == "100-continue"
        and request.transport is not None
        and request.version >= (1, 1)
    ):
        request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the decision needs the body
    stream = request.content
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await asyncio.wait_for(stream.readany(), limits.body_timeout)
        except TimeoutError:
            raise _unreadable(
                408,
                "request_timeout",
                Step.LIMITS,
                "client sent the request body too slowly",
                INVALID_REQUEST,
                True,
            ) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)


class _Unreadable(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        # parsers disagree on which copy wins: the gateway and the server could read two calls
        raise _Unreadable("a JSON object repeats a key")
    return found


def _constant(name: str) -> Any:
    raise _Unreadable(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)


def parse_messages(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON-RPC messages of `body` and whether it was a batch. Raises a JsonRpcRefusal
    (400) for anything that is not strict UTF-8 JSON holding JSON-RPC 2.0 messages."""
    try:
        value = _DECODER.decode(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = str(exc) if isinstance(exc, _Unreadable) else "not UTF-8 JSON"
        raise _invalid(f"the MCP request body is unreadable: {reason}", PARSE_ERROR) from None
    try:  # a lone surrogate escape (`"\ud800"`): one reading here, none in orjson and the audit
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise _invalid(
            "the MCP request body is unreadable: a string holds a lone surrogate escape", PARSE_ERROR
        ) from None
    batch = isinstance(value, list)
    messages = value if batch else [value]
    if not messages:
        raise _invalid("an empty JSON-RPC batch")
    for message in messages:
        check_message(message)
    return messages, batch


def check_message(message: object) -> None:
    """One JSON-RPC 2.0 message (request, notification or response) with one reading."""
    if not isinstance(message, dict):
        raise _invalid("a JSON-RPC message is an object")
    for key in message:
        if key not in _MEMBERS:
            raise _invalid(f"a JSON-RPC message has no member {key[:64]!r}")
    if message.get("jsonrpc") != "2.0":
        raise _invalid('a JSON-RPC message says "jsonrpc": "2.0"')
    if "id" in message and (type(message["id"]) not in (int, str)):
        raise _invalid("a JSON-RPC id is a string or an integer")
    if "method" not in message:  # a response to the server's request
        if "id" not in message or ("result" in message) == ("error" in message):
            raise _invalid("a JSON-RPC response has an id and either a result or an error")
        return
    method, params = message["method"], message.get("params")
    if not isinstance(method, str) or "result" in message or "error" in message:
        raise _invalid("a JSON-RPC request has a method name and no result or error")
    if params is not None and not isinstance(params, dict | list):
        raise _invalid("JSON-RPC params are an object or an array")
    folded = method.strip().lower()
    if folded in (TOOLS_CALL, TOOLS_LIST) and method != folded:
        raise _invalid(f"the method is spelled {folded!r}")
    if method == TOOLS_CALL:
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            raise _invalid("a tools/call names its tool in params.name, a string")
        if any(key != "name" and key.casefold() == "name" for key in params):
            raise _invalid("a tools/call has one params.name")


def check_routing_headers(
    headers: CIMultiDictProxy[str], messages: list[dict[str, Any]], batch: bool
) -> None:
    """MCP's routing headers (`Mcp-Method`, `Mcp-Name`: what the message is, for whoever
    routes without reading the body) must say what the body says: a server or proxy that
    trusted them could otherwise run another tool than the one authorized."""
    methods, names = headers.getall(METHOD_HEADER, []), headers.getall(NAME_HEADER, [])
    if not methods and not names:
        return
    if len(methods) > 1 or len(names) > 1:
        raise _invalid("an MCP routing header (Mcp-Method, Mcp-Name) appears more than once")
    if batch:
        raise _invalid("MCP routing headers describe one message, not a batch")
    message = messages[0]
    if methods and methods[0] != message.get("method"):
        raise _invalid("the Mcp-Method header does not match the body's method")
    if names and header_value(names[0]) != _named(message):
        # the name a tools/call or prompts/get gives, the uri of a resources/read; on any other
        # method an Mcp-Name names nothing in the body, and a router trusting it could be misled
        raise _invalid("the Mcp-Name header does not match what the body names")


def _named(message: dict[str, Any]) -> str | None:
    """What MCP's Mcp-Name header carries for `message`, or None when it carries nothing."""
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    field = {TOOLS_CALL: "name", "prompts/get": "name", "resources/read": "uri"}.get(
        message.get("method", "")
    )
    value = params.get(field) if field else None
    return value if isinstance(value, str) else None


def header_value(value: str) -> str | None:
    """An MCP header's value: verbatim, or the UTF-8 text of a `=?base64?...?=` (canonical
    base64 only: None for anything else, which then matches nothing)."""
    found = _BASE64_SENTINEL.fullmatch(value)
    if found is None:
        return value
    payload = found.group(1)
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def authorize_calls(calls: McpCalls, messages: list[dict[str, Any]], batch: bool) -> None:
    """Every tools/call in `messages` against the policy: all allowed, or a JsonRpcRefusal
    (403) naming each refused call; notes the tools/list ids whose results get filtered."""
    policy = calls.policy
    errors: dict[int, Refusal] = {}
    for index, message in enumerate(messages):
        method = message.get("method")
        if method == TOOLS_CALL:
            name: str = message["params"]["name"]
            calls.tools.append(name)
            scope = policy.scope_for(name)
            if scope is None:
                errors[index] = Refusal(
                    403, "forbidden", Step.MCP_TOOL, f"MCP tool {_shown(name)} is not allowed here"
                )
            elif not calls.can(scope):
                errors[index] = Refusal(
                    403,
                    "insufficient_scope",
                    Step.MCP_TOOL,
                    f"token lacks required permission: {scope} (MCP tool {_shown(name)})",
                    scope=str(scope),
                )
            if index in errors:
                calls.refused.append(name)
        elif method == TOOLS_LIST and "id" in message:
            calls.list_ids.add((type(message["id"]) is str, message["id"]))
    if not errors:
        return
    first = next(iter(errors.values()))
    if len(errors) > 1:
        first = Refusal(
            first.status, first.error, first.step, f"{first.message} and {len(errors) - 1} more", first.scope
        )
    replies: list[tuple[RpcId, int, str, dict[str, str]]] = []
    for index, message in enumerate(messages):
        refusal = errors.get(index)
        if "method" not in message or (refusal is None and "id" not in message):
            continue  # a notification or a response: nothing answers it
        extra = (
            {"error": refusal.error, "tool": _cut(message["params"]["name"])}
            if refusal
            else {"error": "batch_refused"}
        )
        if refusal is not None and refusal.scope:
            extra["scope"] = refusal.scope
        text = refusal.message if refusal else "not run: another call in this batch was refused"
        replies.append((message.get("id"), FORBIDDEN, text, extra))
    if not replies:  # only notifications were refused: one error, for no id
        replies.append((None, FORBIDDEN, first.message, {"tool": _cut(calls.refused[0])}))
    raise JsonRpcRefusal(first, replies, batch)


def _shown(name: str) -> str:
    """A client-chosen tool name as messages show it: quoted, cut to the spec's bound, with
    anything token-shaped redacted (a pasted credential is never echoed)."""
    return repr(_cut(name))


def _cut(name: str) -> str:
    return redact_token_shaped(name[:MAX_TOOL_NAME])


def audit_fields(calls: McpCalls, redact: Callable[[str], str]) -> dict[str, Any]:
    """The audit event's MCP fields: the tools called (and refused), in order, bounded and
    redacted (a tool name is the client's text)."""
    fields: dict[str, Any] = {}
    if calls.tools:
        fields["mcp_tools"] = [redact(name[:MAX_TOOL_NAME]) for name in calls.tools[:AUDITED_TOOLS]]
        if len(calls.tools) > AUDITED_TOOLS:
            fields["mcp_tools_count"] = len(calls.tools)
    if calls.refused:
        fields["mcp_refused"] = [redact(name[:MAX_TOOL_NAME]) for name in calls.refused[:AUDITED_TOOLS]]
    return fields


def usage_tools(calls: McpCalls) -> list[tuple[str, Scope]]:
    """An allowed request's tool calls for the usage tally: (label, the scope it needed). A
    tool the policy lists keeps its name; one its `default` allowed is UNLISTED_TOOL (names
    the client makes up must not grow the store's counts without bound)."""
    policy = calls.policy
    out = []
    for name in calls.tools:
        scope = policy.scope_for(name)
        if scope is not None:
            out.append((name if name in policy.tools else UNLISTED_TOOL, scope))
    return out
