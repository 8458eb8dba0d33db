"""A plain MCP-shaped upstream for the gateway's MCP tests: it answers JSON-RPC over HTTP as
MCP's streamable HTTP transport does (JSON or SSE, as the test asks), and records the exact
bytes it received. The real SDK's server is in tests/test_mcp_sdk.py; this one lets tests
choose every byte of the answer (line endings, BOMs, replays on the GET stream)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.helpers.gateway import base_config
from tokenward.gateway.embedded import free_port

TOOLS = ["search", "deploy", "drop", "other"]
POLICY = {"tools": {"search": "read:docs", "deploy": "write:deploy", "drop": "deny"}, "default": "deny"}
MCP_PATH = "/mcp"


def mcp_config(upstream_port: int, mcp_port: int, **policy: Any) -> dict[str, Any]:
    """The tests' config plus an MCP route on `mcp_port`'s upstream."""
    config = copy.deepcopy(base_config(upstream_port))
    config["upstreams"]["tools"] = {"url": f"http://127.0.0.1:{mcp_port}", "timeout": "5s"}
    config["routes"].append(
        {
            "methods": ["GET", "POST", "DELETE"],
            "path": MCP_PATH,
            "upstream": "tools",
            "scopes": ["mcp"],
            "mcp": {**copy.deepcopy(POLICY), **policy},
        }
    )
    return config


def tool_list() -> list[dict[str, Any]]:
    return [{"name": name, "inputSchema": {"type": "object"}} for name in TOOLS]


def answer(message: dict[str, Any]) -> dict[str, Any] | None:
    """The upstream's response to one JSON-RPC message (None for a notification)."""
    if "id" not in message or "method" not in message:
        return None
    if message["method"] == "tools/list":
        result: dict[str, Any] = {"tools": tool_list()}
    elif message["method"] == "tools/call":
        result = {"content": [{"type": "text", "text": f"ran {message['params']['name']}"}]}
    else:
        result = {}
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


@dataclass
class McpUpstream:
    """What reached the upstream; `sse`: answer POSTs as an event stream; `stream`: the
    bytes the GET stream sends (in the chunks given)."""

    port: int
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    sse: bool = False
    stream: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, dict(request.headers), body))
        if request.method == "GET":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for chunk in self.stream:
                await response.write(chunk)
            await response.write_eof()
            return response
        if request.method != "POST":
            return web.Response(status=204)
        value = orjson.loads(body)
        messages = value if isinstance(value, list) else [value]
        replies = [reply for reply in map(answer, messages) if reply is not None]
        if not replies:
            return web.Response(status=202)
        if self.sse:
            events = b"".join(b"event: message\r\nid: e%d\r\ndata: %s\r\n\r\n" % (i, orjson.dumps(r)) for i, r in enumerate(replies))
            return web.Response(body=events, headers={"Content-Type": "text/event-stream"})
        out = replies if isinstance(value, list) else replies[0]
        return web.Response(body=orjson.dumps(out), content_type="application/json")


@asynccontextmanager
async def mcp_upstream() -> AsyncIterator[McpUpstream]:
    upstream = McpUpstream(free_port())
    runner = web.ServerRunner(web.Server(upstream.handle))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", upstream.port).start()
    try:
        yield upstream
    finally:
        await runner.cleanup()
