"""One proxied request's walk through tokenward's code (issue 12, item 7).

    .venv/bin/python bench/walk.py             # the walk, then its figures
    .venv/bin/python bench/walk.py --depth 2   # only the handler and what it calls, 2 levels down
    .venv/bin/python bench/walk.py --time 2000 # also this process's CPU time per request
    .venv/bin/python bench/walk.py --depth 0 --time 3000 --tracing otlp   # the same, traced

Starts Valkey, an echo upstream and a gateway in this process, sends one cached-token
`GET /orgs/acme/teams/core/apis` (after a first one that fills the cache), and records every
tokenward function entered on that request's task (each frame once: a coroutine resumed
after an await is the same stop). Prints the stops in order as `module.function`, then how
many stops, how many modules, and how many times the walk went back to a module it had left.
To walk an older tree, put it first on the path (`PYTHONPATH=/tmp/old-tree`, a tree where
`tokenward/` is admin/ and `tokenward/gateway/` is gateway/).

`--tracing none`: tracing on, every span made and sampled, no exporter; `--tracing otlp`:
also exported over OTLP/HTTP (protobuf, in the SDK's batch thread, which this process's CPU
time includes) to a sink in another process. Off by default, as in tokenward.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tokenward.demo import echo_app
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import settings_from_dict

try:
    from tokenward.server import Server
    from tokenward.service import issue_token
except ImportError:  # a tree from before issue 12 (`--` walk it for the before figures)
    from tokenward.api import issue_token  # type: ignore[no-redef]
    from tokenward.gateway.server import Server  # type: ignore[no-redef]

HANDLERS = {"handle"}  # the gateway listener's request handler (ProxyHandler / Pipeline)


def stop_name(frame: types.FrameType) -> str | None:
    module = frame.f_globals.get("__name__", "")
    if not module.startswith("tokenward"):
        return None
    name = frame.f_code.co_qualname
    if name.endswith("__create_fn__.<locals>.__init__"):  # a dataclass's generated __init__
        name = f"{type(frame.f_locals.get('self')).__name__}.__init__"
    return f"{module.removeprefix('tokenward.gateway.').removeprefix('tokenward.')}.{name}"


def handler_depth(frame: types.FrameType) -> int | None:
    """How far below the request handler `frame` is (None: not on a request's path)."""
    depth = 0
    current: types.FrameType | None = frame
    while current is not None:
        if current.f_code.co_name in HANDLERS and stop_name(current) is not None:
            return depth
        if stop_name(current) is not None:
            depth += 1
        current = current.f_back
    return None


# An OTLP/HTTP receiver that reads each batch and answers 200, in its own process.
SINK = """
import sys
from aiohttp import web

async def ok(request):
    await request.read()
    return web.Response(content_type="application/x-protobuf")

app = web.Application()
app.router.add_post("/v1/traces", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    for _ in range(200):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return sink, port
        time.sleep(0.05)
    sink.kill()
    raise RuntimeError("the OTLP sink did not start")


async def walk(max_depth: int, timed: int = 0, tracing: str = "off") -> list[str]:
    sink = None
    if tracing != "off":
        os.environ["OTEL_TRACES_EXPORTER"] = tracing
        if tracing == "otlp":
            sink, sink_port = start_sink()
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
    data = Path(tempfile.mkdtemp(prefix="tokenward-walk-"))
    valkey = EmbeddedServer(data, port=free_port())
    valkey.start()
    upstream = web.AppRunner(echo_app(), access_log=None)
    await upstream.setup()
    upstream_port = free_port()
    await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
    team = "/orgs/{org}/teams/{team}"
    settings = settings_from_dict(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin_listen": {"host": "127.0.0.1", "port": 0},
            "tokens": {"prefix": "tw_sat", "argon2": {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}},
            "upstreams": {"api": {"url": f"http://127.0.0.1:{upstream_port}"}},
            "routes": [
                {
                    "methods": ["GET"],
                    "path": f"{team}/apis",
                    "upstream": "api",
                    "scopes": ["read:apis"],
                    "resource": {"org": "org", "team": "team"},
                }
            ],
        },
        "walk",
    )
    if tracing != "off":  # (off: no `tracing` key, so that an older tree can be walked too)
        settings = replace(settings, tracing=replace(settings.tracing, enabled=True))
    server = Server(settings, redis_url=valkey.url, shutdown_timeout=1.0)
    runtime = await server.start()
    stops: list[str] = []
    try:
        await runtime.store.create_team(TeamRecord("acme", "core", parse_scopes(["read:apis"]), 0.0, "walk"))
        token, _ = await issue_token(
            runtime, org="acme", team="core", name="walk", scopes=parse_scopes(["read:apis"]), created_by="walk"
        )
        url = f"http://127.0.0.1:{server.proxy_port}/orgs/acme/teams/core/apis"
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=headers) as response:  # fills the cache
                assert response.status == 200, response.status
            seen: list[types.FrameType] = []  # kept alive so that no frame id is reused

            def profile(frame: types.FrameType, event: str, arg: Any) -> None:
                if event != "call" or any(f is frame for f in seen):
                    return
                name = stop_name(frame)
                if name is None:
                    return
                depth = handler_depth(frame)
                if depth is None or depth > max_depth:
                    return
                seen.append(frame)
                stops.append(name)

            if timed:
                await cpu_per_request(session, url, headers, timed)
            sys.setprofile(profile)
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
            finally:
                sys.setprofile(None)
            assert response.status == 200, response.status
    finally:
        await server.stop()
        await upstream.cleanup()
        valkey.stop()
        if sink is not None:
            sink.terminate()
            sink.wait()
    return stops


async def cpu_per_request(session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int) -> None:
    """This process's CPU time per request (client, gateway and upstream all run here, so
    only differences between two trees mean something), best of 5 rounds of `count`."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(count):
            async with session.get(url, headers=headers) as response:
                await response.read()
        best = min(best, (time.process_time() - started) / count)
    print(f"CPU per request (best of 5 x {count}): {best * 1e6:.1f} us")


def figures(stops: list[str]) -> tuple[int, int, int, int]:
    """Stops, modules, returns to a module left before, and those returns not counting the
    ones to the handler's own module (an orchestrator taking its next step)."""
    modules = [stop.split(".")[0] for stop in stops]
    returns = elsewhere = 0
    left: set[str] = set()
    for before, after in itertools.pairwise(modules):
        if after != before:
            left.add(before)
            if after in left:
                returns += 1
                elsewhere += after != modules[0]
    return len(stops), len(set(modules)), returns, elsewhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--depth", type=int, default=99, help="levels below the handler (default: all)")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="first, CPU time per request over N requests")
    parser.add_argument(
        "--tracing",
        choices=("off", "none", "otlp"),
        default="off",
        help="tracing on: spans without an exporter (none), or exported to an OTLP sink process (otlp)",
    )
    args = parser.parse_args()
    stops = asyncio.run(walk(args.depth, args.time, args.tracing))
    for n, stop in enumerate(stops, 1):
        print(f"{n:3d}  {stop}")
    count, modules, returns, elsewhere = figures(stops)
    print(
        f"{count} stops in {modules} modules; returned {returns} times to a module it had left "
        f"({elsewhere} of them to a module other than the handler's)"
    )


if __name__ == "__main__":
    main()
