"""What per-tool MCP authorization costs (issue 16): a `tools/call` with a 10 KiB body
through an `mcp` route against the same request on a plain route (same scopes, same
upstream, body streamed as usual).

    .venv/bin/python bench/mcp_cost.py                 # 2000 requests per round, best of 10 (5 per route, twice, interleaved)
    .venv/bin/python bench/mcp_cost.py --count 500 --size 10240

Starts Valkey, a JSON-RPC upstream and a gateway in this process. Per request it prints this
process's CPU time (client, gateway and upstream all run here, so only the difference between
the two routes means something) and the wall time of sequential requests, for each route and
as a ratio; then the CPU of the MCP step alone (parse + authorize of the same body, and the
filter of a 50-tool `tools/list` answer, outside the server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import timeit
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.logs import configure_logging
from tokenward.gateway.mcp import authorize_calls, parse_messages
from tokenward.gateway.mcp_policy import McpCalls, McpPolicy
from tokenward.gateway.mcp_stream import JsonFilter
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import parse_scope, parse_scopes
from tokenward.gateway.settings import LogSettings, settings_from_dict
from tokenward.server import Server
from tokenward.service import issue_token

RESULT = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "ok"}]}})


async def answer(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=RESULT, content_type="application/json")


def call_body(size: int) -> bytes:
    """A tools/call of `search` whose arguments make the body `size` bytes long."""
    head = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"q": ""}}}
    filler = "x" * (size - len(orjson.dumps(head)))
    head["params"]["arguments"]["q"] = filler  # type: ignore[index]
    body = orjson.dumps(head)
    assert len(body) == size, len(body)
    return body


async def rounds(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, count: int) -> tuple[float, float]:
    """Best of 5 rounds of `count` sequential POSTs: (CPU seconds, wall seconds) per request."""
    best_cpu = best_wall = float("inf")
    for _ in range(5):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
        best_cpu = min(best_cpu, (time.process_time() - cpu) / count)
        best_wall = min(best_wall, (time.perf_counter() - wall) / count)
    return best_cpu, best_wall


def step_alone(body: bytes, count: int) -> None:
    policy = McpPolicy({"search": parse_scope("read:docs")}, None)
    granted = parse_scope("read:docs")

    def decide() -> None:
        messages, batch = parse_messages(body)
        authorize_calls(McpCalls(policy, lambda scope: scope == granted), messages, batch)

    per = min(timeit.repeat(decide, number=count, repeat=5)) / count
    print(f"MCP step alone (parse + authorize, {len(body)} B): {per * 1e6:.1f} us")
    listing = orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": f"tool{i}", "inputSchema": {"type": "object"}} for i in range(50)]}}
    )

    def filtered() -> None:
        calls = McpCalls(policy, lambda scope: scope == granted, list_ids={(False, 1)})
        JsonFilter(calls).body(listing)

    per = min(timeit.repeat(filtered, number=count, repeat=5)) / count
    print(f"tools/list filter alone (50 tools, {len(listing)} B JSON): {per * 1e6:.1f} us")


async def main(count: int, size: int) -> None:
    configure_logging(LogSettings(format="json"), open(os.devnull, "wb"))  # audit lines cost, unseen
    valkey = EmbeddedServer(Path(tempfile.mkdtemp(prefix="tokenward-mcp-bench-")), port=free_port())
    valkey.start()
    upstream = web.ServerRunner(web.Server(answer), access_log=None)
    await upstream.setup()
    upstream_port = free_port()
    await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
    route = {"methods": ["POST"], "upstream": "tools", "scopes": ["mcp"]}
    settings = settings_from_dict(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin_listen": {"host": "127.0.0.1", "port": 0},
            "tokens": {"prefix": "tw_sat", "argon2": {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}},
            "upstreams": {"tools": {"url": f"http://127.0.0.1:{upstream_port}"}},
            "routes": [
                {**route, "path": "/mcp", "mcp": {"tools": {"search": "read:docs"}, "default": "deny"}},
                {**route, "path": "/plain"},
            ],
        },
        "mcp-bench",
    )
    server = Server(settings, redis_url=valkey.url, shutdown_timeout=1.0)
    runtime = await server.start()
    try:
        await runtime.store.create_team(TeamRecord("acme", "core", parse_scopes(["mcp", "read:docs"]), 0.0, "bench"))
        token, _ = await issue_token(
            runtime, org="acme", team="core", name="bench", scopes=parse_scopes(["mcp", "read:docs"]), created_by="bench"
        )
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = call_body(size)
        base = f"http://127.0.0.1:{server.proxy_port}"
        async with aiohttp.ClientSession() as session:
            for path in ("/plain", "/mcp"):  # warm: the token's cache entry, the pools
                await rounds(session, base + path, headers, body, 20)
            plain, mcp = (1.0, 1.0), (1.0, 1.0)
            for _ in range(2):  # interleaved, so that a busy moment does not favour one route
                plain = min(plain, await rounds(session, base + "/plain", headers, body, count))
                mcp = min(mcp, await rounds(session, base + "/mcp", headers, body, count))
    finally:
        await server.stop()
        await upstream.cleanup()
        valkey.stop()
    print(f"tools/call, {size} B body, {count} sequential requests per round, best of 10 (interleaved):")
    print(f"  plain route: CPU {plain[0] * 1e6:.1f} us, wall {plain[1] * 1e6:.1f} us per request")
    print(f"  mcp route:   CPU {mcp[0] * 1e6:.1f} us, wall {mcp[1] * 1e6:.1f} us per request")
    print(f"  ratio mcp/plain: CPU {mcp[0] / plain[0]:.3f}, wall {mcp[1] / plain[1]:.3f}")
    step_alone(body, count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="requests per round (default 2000)")
    parser.add_argument("--size", type=int, default=10 * 1024, help="the tools/call body in bytes (default 10240)")
    options = parser.parse_args()
    asyncio.run(main(options.count, options.size))
