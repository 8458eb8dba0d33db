"""A real MCP server (the `mcp` SDK's MCPServer over streamable HTTP, tests/mcp_server.py in
its own process) behind tokenward, driven by the SDK's own client
(`mcp.client.streamable_http`): the agent lists only the tools its token may call, an
allowed call works, a forbidden one gets the gateway's JSON-RPC error (issue 16 item 4)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.helpers.gateway import ROOT, Gateway, LogReader
from tests.helpers.mcp import MCP_PATH, mcp_config
from tests.helpers.process import env_for_subprocess, stop, wait_http
from tokenward.gateway.embedded import free_port


@pytest.fixture(params=["sse", "json"])
async def mcp_server(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """The SDK's server on a free port, answering POSTs with SSE streams or JSON."""
    port = free_port()
    mode = ["json"] if request.param == "json" else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.mcp_server", str(port), *mode,
        cwd=ROOT, env=env_for_subprocess(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            await wait_http(session, f"http://127.0.0.1:{port}/ready", process)  # any answer: it serves
        yield port
    finally:
        await stop(process)


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, mcp_server: int) -> Gateway:
    gateway = await start_gateway(mcp_config(upstream, mcp_server))
    await gateway.team("platform", ["mcp", "read:docs", "write:deploy"])
    return gateway


def agent(gw: Gateway, token: str) -> Client:
    """The SDK's client, through tokenward, with `token`."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(gw.url + MCP_PATH, http_client=http), read_timeout_seconds=30)


async def test_an_agent_sees_and_calls_only_its_tools(gw: Gateway, logs: LogReader) -> None:
    token, _ = await gw.token("platform", ["mcp", "read:docs"], name="agent")
    async with agent(gw, token) as client:
        listed = await client.list_tools()
        assert [tool.name for tool in listed.tools] == ["search"]

        result = await client.call_tool("search", {"query": "rate limits"})
        assert not result.is_error and result.content[0].text == "found rate limits"  # type: ignore[union-attr]

        with pytest.raises(MCPError) as refused:
            await client.call_tool("deploy", {"environment": "production"})
        assert refused.value.code == -32003
        assert "token lacks required permission: write:deploy" in refused.value.message

    denied = [e for e in logs.events("request.denied") if e["path"] == MCP_PATH]
    assert [(e["step"], e["mcp_refused"]) for e in denied] == [("mcp_tool", ["deploy"])]
    allowed = [e for e in logs.events("request.allowed") if e.get("mcp_tools")]
    assert [e["mcp_tools"] for e in allowed] == [["search"]]


async def test_a_wider_token_sees_more_and_a_denied_tool_stays_hidden(gw: Gateway) -> None:
    token, _ = await gw.token("platform", ["mcp", "read:docs", "write:deploy"], name="deployer")
    async with agent(gw, token) as client:
        listed = await client.list_tools()
        assert [tool.name for tool in listed.tools] == ["search", "deploy"]  # `drop` is denied to all
        result = await client.call_tool("deploy", {"environment": "staging"})
        assert result.content[0].text == "deployed to staging"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:
            await client.call_tool("drop", {})
        assert refused.value.code == -32003 and "MCP tool 'drop' is not allowed here" in refused.value.message
