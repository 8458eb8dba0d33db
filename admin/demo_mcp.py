"""The demo's MCP server: a few tools behind the demo's MCP route (`/orgs/{org}/teams/{team}/mcp`),
answering MCP's streamable HTTP transport in its JSON form, so that the agent recipe `./dev demo`
prints can list tools, call one and be refused another with nothing but curl.

It is the upstream's side only (tokenward authorizes each tool in front of it, README "MCP"): it
runs whatever it is sent. The tests use the real `mcp` SDK server instead (tests/test_mcp_sdk.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PROTOCOL = "2025-06-18"
TOOLS: dict[str, str] = {
    "search_apis": "read:apis",  # the demo route's tool -> scope map (README "MCP")
    "register_api": "write:apis",
    "drop_registry": "deny",
}
DESCRIPTIONS = {
    "search_apis": "Search the team's API registry",
    "register_api": "Register a new API",
    "drop_registry": "Delete every API of the team",
}


def mcp_route(upstream: str) -> dict[str, Any]:
    """The demo's MCP route: tools mapped to the scopes that call them."""
    return {
        "methods": ["POST"],
        "path": "/orgs/{org}/teams/{team}/mcp",
        "upstream": upstream,
        "scopes": ["read:apis"],
        "resource": {"org": "org", "team": "team"},
        "mcp": {"tools": dict(TOOLS), "default": "deny"},
    }


def _answer(message: dict[str, Any]) -> dict[str, Any] | None:
    method, params = message.get("method"), message.get("params") or {}
    if "id" not in message:
        return None  # a notification: nothing to answer
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": PROTOCOL,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "tokenward-demo", "version": "1"},
        }
    elif method == "tools/list":
        result = {
            "tools": [
                {"name": name, "description": DESCRIPTIONS[name], "inputSchema": {"type": "object"}}
                for name in TOOLS
            ]
        }
    elif method == "tools/call":
        name = params.get("name")
        if name not in TOOLS:
            return {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32602, "message": f"no tool {name!r}"}}
        text = f"{name} ran with {orjson.dumps(params.get('arguments') or {}).decode()}"
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        return {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": f"no method {method!r}"}}
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


async def mcp_endpoint(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
    messages = body if isinstance(body, list) else [body]
    answers = [answer for message in messages if isinstance(message, dict) and (answer := _answer(message))]
    if not answers:
        return web.Response(status=202)
    return web.json_response(answers if isinstance(body, list) else answers[0])
