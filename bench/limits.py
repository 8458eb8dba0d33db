"""The cost of rate limits and a credit budget on the cached-token path (issue 16).

    .venv/bin/python bench/limits.py                 # 3000 requests a round, best of 5
    .venv/bin/python bench/limits.py --requests 5000 --concurrency 16

Starts Valkey, an echo upstream and a gateway in this process (as bench/walk.py does) and
sends cached-token `GET /orgs/acme/teams/core/apis` requests with two tokens: one with no
limits, one with a rate limit (`burst`, never reached) and a credit budget (`max_uses`,
never spent). The limited token runs in `local` mode and in `exact` mode (the limiter's
settings swapped between rounds); rounds of the three alternate, best of 5 each. Prints,
per variant: this process's CPU time per request (client, gateway and upstream all run
here, so the ratio understates the gateway's own share of a difference), wall time per
request at the given concurrency, their ratios to the same run's no-limit path, and the
store commands per request (INFO commandstats; each of the limiter's is one round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from tokenward.demo import echo_app
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.limits import TokenLimits
from tokenward.gateway.logs import configure_logging
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import LogSettings, settings_from_dict
from tokenward.server import Server
from tokenward.service import issue_token

LIMITS = {"rate_limits": [{"name": "burst", "limit": 1_000_000_000, "per": "1d"}], "max_uses": 1_000_000_000}


async def commands(client: object) -> int:
    stats = await client.info("commandstats")  # type: ignore[attr-defined]
    return sum(int(v["calls"]) for k, v in stats.items() if not k.endswith("info"))


async def one_round(session: aiohttp.ClientSession, url: str, token: str, count: int, concurrency: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {token}"}
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count


async def bench(count: int, concurrency: int, rounds: int) -> None:
    valkey = EmbeddedServer(Path(tempfile.mkdtemp(prefix="tokenward-limits-")), port=free_port())
    valkey.start()
    upstream = web.AppRunner(echo_app(), access_log=None)
    await upstream.setup()
    upstream_port = free_port()
    await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
    settings = settings_from_dict(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin_listen": {"host": "127.0.0.1", "port": 0},
            "tokens": {"prefix": "tw_sat", "argon2": {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}},
            "upstreams": {"api": {"url": f"http://127.0.0.1:{upstream_port}"}},
            "routes": [
                {
                    "methods": ["GET"],
                    "path": "/orgs/{org}/teams/{team}/apis",
                    "upstream": "api",
                    "scopes": ["read:apis"],
                    "resource": {"org": "org", "team": "team"},
                }
            ],
        },
        "bench",
    )
    server = Server(settings, redis_url=valkey.url, shutdown_timeout=1.0)
    runtime = await server.start()
    try:
        await runtime.store.create_team(TeamRecord("acme", "core", parse_scopes(["read:apis"]), 0.0, "bench"))
        scopes = parse_scopes(["read:apis"])
        plain, _ = await issue_token(runtime, org="acme", team="core", name="plain", scopes=scopes, created_by="bench")
        limited, _ = await issue_token(
            runtime, org="acme", team="core", name="limited", scopes=scopes, created_by="bench",
            limits=TokenLimits.from_body(LIMITS),
        )  # fmt: skip
        url = f"http://127.0.0.1:{server.proxy_port}/orgs/acme/teams/core/apis"
        base = runtime.settings.rate_limits
        variants = {"none": (plain, base), "local": (limited, replace(base, mode="local")),
                    "exact": (limited, replace(base, mode="exact")), "none'": (plain, base)}  # fmt: skip
        best: dict[str, tuple[float, float]] = {}
        per_request: dict[str, float] = {}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            for token, mode in variants.values():  # warm up: caches, connections, leases
                runtime.limiter.settings = mode
                await one_round(session, url, token, 200, concurrency)
            for _ in range(rounds):
                for name, (token, mode) in variants.items():
                    runtime.limiter.settings = mode
                    before = await commands(runtime.store.client)
                    cpu, wall = await one_round(session, url, token, count, concurrency)
                    per_request[name] = (await commands(runtime.store.client) - before - 1) / count
                    old = best.get(name, (float("inf"), float("inf")))
                    best[name] = (min(old[0], cpu), min(old[1], wall))
    finally:
        await server.stop()
        await upstream.cleanup()
        valkey.stop()
    cpu0, wall0 = best["none"]
    print(f"cached-token path, {count} requests a round, {concurrency} at a time, best of {rounds}")
    print(f"{'variant':8} {'CPU us/req':>11} {'ratio':>7} {'wall us/req':>12} {'ratio':>7} {'store cmds/req':>15}")
    for name, (cpu, wall) in best.items():
        print(
            f"{name:8} {cpu * 1e6:11.1f} {cpu / cpu0:7.3f} {wall * 1e6:12.1f} {wall / wall0:7.3f} "
            f"{per_request[name]:15.3f}"
        )
    print("none': the no-limit path again, last in each round (the spread between the two is the noise)")
    print("store cmds/req: every command the store ran during the round (background flushes included),")
    print("per request; the limiter's are one EVALSHA each (exact: one a request; local: its syncs and leases)")


def main() -> None:
    # the audit events as JSON lines (as in production), to a sink: every variant writes the same
    configure_logging(LogSettings(level="info", format="json"), open(os.devnull, "wb"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(bench(args.requests, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
