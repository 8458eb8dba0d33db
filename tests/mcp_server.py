"""A small real MCP server (the `mcp` SDK's MCPServer, streamable HTTP transport) for
tests/test_mcp_sdk.py, in its own process:

    python -m tests.mcp_server PORT [json]

`json`: answer POSTs with application/json instead of an SSE stream. Three tools: `search`
(read:docs in the tests' policy), `deploy` (write:deploy) and `drop` (denied).
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("tokenward-test-tools")


@server.tool()
def search(query: str) -> str:
    """Search the docs."""
    return f"found {query}"


@server.tool()
def deploy(environment: str) -> str:
    """Deploy to an environment."""
    return f"deployed to {environment}"


@server.tool()
def drop() -> str:
    """Drop everything."""
    return "dropped"


if __name__ == "__main__":
    server.run(
        "streamable-http", host="127.0.0.1", port=int(sys.argv[1]), json_response=sys.argv[2:] == ["json"]
    )
