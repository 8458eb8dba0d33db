"""Which MCP tools a token called (issue 16 item 5): the usage report's `by_tool`, and the
scopes those calls needed counted in `scopes_used`/`unused_scopes`, through the real gateway,
store and admin API; `tokenward token usage` shows them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from tests.helpers.gateway import TOKENS, Gateway, admin, issue, org_admin_with_team
from tests.helpers.mcp import MCP_PATH, McpUpstream, mcp_config, mcp_upstream
from tokenward.cli_usage import usage_report

PERMISSIONS = ["mcp", "read:docs", "write:deploy", "read:tools", "admin:team"]


@pytest.fixture
async def mcp() -> AsyncIterator[McpUpstream]:
    async with mcp_upstream() as upstream:
        yield upstream


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, mcp: McpUpstream) -> Gateway:
    return await start_gateway(mcp_config(upstream, mcp.port, default="read:tools"))


async def call(gw: Gateway, token: str, body: Any) -> int:
    headers = {**gw.auth(token), "Content-Type": "application/json"}
    async with gw.session.post(gw.url + MCP_PATH, data=orjson.dumps(body), headers=headers) as r:
        await r.read()
        return r.status


def tool(name: str, rpc_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


async def test_the_usage_report_names_the_tools_called_and_the_scopes_they_needed(gw: Gateway) -> None:
    org_admin = await org_admin_with_team(gw, PERMISSIONS)
    token = await issue(gw, org_admin, name="agent", scopes=["mcp", "read:docs", "write:deploy", "read:tools"])
    plaintext = token["token"]
    assert [await call(gw, plaintext, tool("search")) for _ in range(3)] == [200] * 3
    assert await call(gw, plaintext, [tool("search", 1), tool("made-up-1", 2)]) == 200
    assert await call(gw, plaintext, tool("made-up-2")) == 200  # allowed by the default scope
    assert await call(gw, plaintext, tool("drop")) == 403  # refused: counted under its step only
    await gw.runtime.audit.flush()
    status, report, _ = await admin(gw, "GET", f"{TOKENS}/{token['id']}/usage", org_admin)
    assert status == 200, report
    assert report["by_tool"] == {"search": 4, "(unlisted)": 2}
    assert report["refused"] == {"mcp_tool": 1}
    # every allowed request needed `mcp` (the route's scope); the tools needed read:docs and read:tools
    assert report["scopes_used"] == {"mcp": 5, "read:docs": 4, "write:deploy": 0, "read:tools": 2}
    assert report["unused_scopes"] == ["write:deploy"]
    printed = usage_report(report)
    assert "MCP TOOL" in printed and "search" in printed and "(unlisted)" in printed


async def test_a_token_without_mcp_calls_has_no_tools(gw: Gateway) -> None:
    org_admin = await org_admin_with_team(gw, PERMISSIONS)
    token = await issue(gw, org_admin, name="agent", scopes=["mcp"])
    assert await call(gw, token["token"], {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}) == 200
    await gw.runtime.audit.flush()
    _, report, _ = await admin(gw, "GET", f"{TOKENS}/{token['id']}/usage", org_admin)
    assert report["by_tool"] == {} and report["scopes_used"] == {"mcp": 1}
