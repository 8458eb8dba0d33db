"""Recovery figures: what a fault costs once it is over.

    .venv/bin/python bench/recovery.py                 # both parts, defaults below
    .venv/bin/python bench/recovery.py --without-fix   # part 1 with the old connection options

1. Store restart with a full connection pool. One tokenward (in this process, cache off so
   every request reads the store, `stale_if_error: 0s`) over a Valkey on a loopback port;
   `--concurrency` request loops run throughout (valid and unknown tokens, so the pool is
   at its 32 connections). The store is stopped and started again (same port, same data);
   `up` is when it answers PING. Reported per restart: requests failed after `up`, and the
   time from `up` to the last failed request (0: none failed after `up`).
2. Revocation window with the push channel cut. Gateway A caches a token; every pub/sub
   connection is killed (CLIENT KILL TYPE pubsub); gateway B (same store) revokes the token;
   from the revoke call's response, A is asked back to back until it refuses. Reported:
   requests allowed after the revoke returned (must be 0), and the window until the first
   401.

Everything runs on 127.0.0.1 and stops with the script.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiohttp import web

from tokenward.demo import echo_app
from tokenward.gateway import store_connect
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.logs import configure_logging
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import LogSettings, settings_from_dict
from tokenward.gateway.tokens import generate
from tokenward.server import Server
from tokenward.service import issue_token

APIS = "/orgs/acme/teams/platform/apis"
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


def config(upstream_port: int, cache_ttl: str) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin_listen": {"host": "127.0.0.1", "port": 0},
        "tokens": {"prefix": "tw_sat", "cache_ttl": cache_ttl, "argon2": CHEAP_ARGON2},
        "redis": {"stale_if_error": "0s"},
        "upstreams": {"registry": {"url": f"http://127.0.0.1:{upstream_port}", "timeout": "5s"}},
        "routes": [
            {
                "methods": ["GET"],
                "path": "/orgs/{org}/teams/{team}/apis",
                "upstream": "registry",
                "scopes": ["read:apis"],
                "resource": {"org": "org", "team": "team"},
            }
        ],
    }


async def gateway(raw: dict[str, Any], url: str) -> Server:
    server = Server(settings_from_dict(copy.deepcopy(raw), "bench"), redis_url=url, shutdown_timeout=1.0)
    await server.start()
    return server


async def mint(server: Server, count: int) -> list[str]:
    assert server.runtime is not None
    tokens = []
    for i in range(count):
        token, _ = await issue_token(
            server.runtime, org="acme", team="platform", name=f"b{i}",
            scopes=parse_scopes(["read:apis"]), created_by="bench",
        )  # fmt: skip
        tokens.append(token)
    return tokens


async def status_of(session: aiohttp.ClientSession, url: str, token: str) -> int:
    try:
        async with session.get(url + APIS, headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError:
        return 599


# -- 1. store restart --------------------------------------------------------------------------
async def store_restarts(args: argparse.Namespace, upstream_port: int, root: Path) -> list[dict[str, Any]]:
    valkey = EmbeddedServer(root / "store", port=free_port())
    valkey.start()
    server = await gateway(config(upstream_port, "0s"), valkey.url)
    assert server.runtime is not None
    await server.runtime.store.create_team(
        TeamRecord("acme", "platform", parse_scopes(["read:apis"]), 0.0, "b")
    )
    valid = await mint(server, 4)
    unknown = [generate("tw_sat")[0] for _ in range(args.concurrency)]
    url = f"http://127.0.0.1:{server.proxy_port}"
    outcomes: list[tuple[float, float, bool]] = []  # started, ended, ok
    running = True
    paused = asyncio.Event()
    paused.set()

    async def loop(i: int, session: aiohttp.ClientSession) -> None:
        n = i
        while running:
            await paused.wait()
            token = valid[n % len(valid)] if n % 2 else unknown[n % len(unknown)]
            expected = 200 if n % 2 else 401
            started = time.monotonic()
            status = await status_of(session, url, token)
            outcomes.append((started, time.monotonic(), status == expected))
            n += 1

    results = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(loop(i, session)) for i in range(args.concurrency)]
        try:
            for _ in range(args.restarts):
                await asyncio.sleep(args.settle)
                with redis.Redis.from_url(valkey.url) as probe:
                    clients = int(probe.info("clients")["connected_clients"])
                if args.idle_restart:
                    paused.clear()
                    await asyncio.sleep(0.2)  # the requests in flight finish
                await asyncio.to_thread(valkey.stop)
                await asyncio.sleep(args.down)
                await asyncio.to_thread(valkey.start)  # returns once it answers PING
                up = time.monotonic()
                paused.set()
                await asyncio.sleep(args.after)
                after = [o for o in outcomes if o[0] >= up]
                failed = [o for o in after if not o[2]]
                last = max((o[1] for o in failed), default=up)
                results.append({
                    "connections_before": clients,
                    "requests_after_up": len(after),
                    "failed_after_up": len(failed),
                    "time_to_zero_failures_s": round(last - up, 3),
                })  # fmt: skip
        finally:
            running = False
            await asyncio.gather(*tasks)
    await server.stop()
    valkey.stop()
    return results


# -- 2. revocation with the channel cut --------------------------------------------------------
async def revocation_window(args: argparse.Namespace, upstream_port: int, root: Path) -> dict[str, Any]:
    valkey = EmbeddedServer(root / "store2", port=free_port())
    valkey.start()
    raw = config(upstream_port, "5m")
    a = await gateway(raw, valkey.url)
    b = await gateway(raw, valkey.url)
    assert a.runtime is not None and b.runtime is not None
    await b.runtime.store.create_team(TeamRecord("acme", "platform", parse_scopes(["read:apis"]), 0.0, "b"))
    (admin, _) = await issue_token(
        b.runtime, org="acme", team=None, name="admin", scopes=parse_scopes(["admin:org"]), created_by="bench"
    )
    a_url, b_admin = f"http://127.0.0.1:{a.proxy_port}", f"http://127.0.0.1:{b.admin_port}"
    allowed, windows = 0, []
    async with aiohttp.ClientSession() as session:
        for _ in range(args.trials):
            token, record = await issue_token(
                b.runtime, org="acme", team="platform", name="t",
                scopes=parse_scopes(["read:apis"]), created_by="bench",
            )  # fmt: skip
            assert await status_of(session, a_url, token) == 200
            while not a.runtime.listener.push_connected:
                await asyncio.sleep(0.005)
            with redis.Redis.from_url(valkey.url) as conn:
                conn.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            async with session.post(
                f"{b_admin}/v1/orgs/acme/teams/platform/tokens/{record.id}/revoke",
                headers={"Authorization": f"Bearer {admin}"},
            ) as r:
                assert r.status == 200
            revoked = time.monotonic()
            while (status := await status_of(session, a_url, token)) != 401:
                assert status == 200, status
                allowed += 1
            windows.append(time.monotonic() - revoked)
    for server in (a, b):
        await server.stop()
    valkey.stop()
    windows.sort()
    return {
        "trials": args.trials,
        "allowed_after_revoke": allowed,
        "window_p50_ms": round(statistics.median(windows) * 1000, 2),
        "window_max_ms": round(windows[-1] * 1000, 2),
    }


def old_connection_options() -> dict[str, Any]:
    """What connect() used before the fix: redis-py's defaults (RESP3 and maintenance
    notifications under redis-py 8, no retry)."""
    return {
        "health_check_interval": 10,
        "socket_timeout": store_connect.SOCKET_TIMEOUT,
        "socket_connect_timeout": store_connect.SOCKET_TIMEOUT,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64, help="request loops during the restarts")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of load before each restart")
    parser.add_argument("--down", type=float, default=0.5, help="seconds the store stays stopped")
    parser.add_argument(
        "--idle-restart",
        action="store_true",
        help="no traffic while the store is down (every pooled connection dies idle)",
    )
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load counted after `up`")
    parser.add_argument("--trials", type=int, default=100, help="revocations with the channel cut")
    parser.add_argument("--without-fix", action="store_true", help="part 1 with the old connection options")
    parser.add_argument("--only", choices=["restart", "revocation"])
    args = parser.parse_args()
    configure_logging(LogSettings(level="error", format="json"))
    if args.without_fix:
        store_connect.connection_options = old_connection_options  # type: ignore[assignment]
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "restart"):
            rows = await store_restarts(args, upstream_port, Path(tmp))
            label = ("old options" if args.without_fix else "fixed") + (
                ", idle restart" if args.idle_restart else ""
            )
            print(f"store restart, {args.concurrency} request loops ({label}):")
            for i, row in enumerate(rows, 1):
                print(f"  restart {i}: {row}")
        if args.only in (None, "revocation"):
            print(
                f"revocation with the push channel cut: {await revocation_window(args, upstream_port, Path(tmp))}"
            )
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
