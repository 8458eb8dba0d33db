"""`tokenward serve --workers N` as real processes on one port, each with its own cache kept
coherent by the push channel (and by the change-log poll when the channel is killed)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import redis

from tests.helpers.gateway import APIS, TEAMS, TOKENS
from tests.helpers.process import bootstrap_admin, post_json, serve_config, start_serve, wait_ready


async def statuses(gw: str, token: str, count: int) -> list[int]:
    """`count` requests, each on a new connection so SO_REUSEPORT spreads them over workers."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(gw + APIS, headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def revoke_and_time(
    session: aiohttp.ClientSession, adm: str, auth: dict[str, str], kid: str, gw: str, token: str
) -> float:
    """Seconds from the revoke response until 30 requests in a row (all workers) say 401."""
    await post_json(session, f"{adm}{TOKENS}/{kid}/revoke", auth, expected=200)
    revoked = time.monotonic()
    while True:
        got = await statuses(gw, token, 30)
        if set(got) == {401}:
            return time.monotonic() - revoked
        assert time.monotonic() - revoked < 3, got


async def test_workers_share_the_port_and_revocation_reaches_all(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    path, port, admin_port = served.path, served.port, served.admin_port
    auth = {"Authorization": f"Bearer {await bootstrap_admin(path)}"}

    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        serve = await start_serve(path, "--workers", "3", stdout=log_file)
        gw, adm = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
        try:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, f"{adm}/readyz", serve)
                for _ in range(100):  # all three workers up
                    lines = [
                        orjson.loads(x) for x in log_path.read_bytes().splitlines() if x.startswith(b"{")
                    ]
                    pids = {e["pid"] for e in lines if e.get("event") == "tokenward started"}
                    if len(pids) == 3:
                        break
                    await asyncio.sleep(0.1)
                assert len(pids) == 3
                await post_json(session, adm + TEAMS, auth, {"name": "platform", "permissions": ["read:apis"]})

                async def new_token(name: str) -> tuple[str, str]:
                    data = await post_json(session, adm + TOKENS, auth, {"name": name, "scopes": ["read:apis"]})
                    return data["token"], data["id"]

                token, kid = await new_token("ci")
                assert set(await statuses(gw, token, 60)) == {200}  # cached on every worker
                with_push = await revoke_and_time(session, adm, auth, kid, gw, token)
                assert with_push < 0.5

                # the push channel of every worker is cut: the change-log poll still bounds it
                token2, kid2 = await new_token("ci-2")
                assert set(await statuses(gw, token2, 60)) == {200}
                client = redis.Redis(unix_socket_path=str(tmp_path / "data" / "valkey.sock"))
                assert client.client_kill_filter(_type="pubsub") >= 3
                client.close()
                without_push = await revoke_and_time(session, adm, auth, kid2, gw, token2)
                assert without_push <= 1.0
        finally:
            serve.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(serve.wait(), 60)
    assert code == 0
    assert b"Traceback" not in log_path.read_bytes()
    assert not (tmp_path / "data" / "valkey.sock").exists() or not _alive(tmp_path / "data" / "valkey.sock")


def _alive(socket_path: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except redis.RedisError:
        return False
