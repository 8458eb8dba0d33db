"""Durability on Redis 7.0 (Debian's `redis-server`): it has an append-only file but no
WAITAOF, so with `appendfsync everysec` a write confirmed to an admin can be ~1 s from the
disk. tokenward must say so at start (a warning line) and in /readyz, and still work.

redis-server is installed with apt-get when missing, as tests/test_nginx.py installs nginx
(CI runs as root on Debian); if that fails the tests fail, they never skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers.debian import installed
from tests.helpers.gateway import APIS, LogReader
from tokenward.gateway.embedded import EmbeddedServer, free_port


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    candidate = "/usr/bin/redis-server"
    return candidate if os.access(candidate, os.X_OK) else None


@pytest.fixture(scope="session")
def redis70_bin() -> str:
    """Debian's redis-server (7.0), installed with apt-get if missing. Fails (never skips) otherwise."""
    return installed("redis-server", find_redis_server)


def start_redis(binary: str, root: Path, *extra: str) -> EmbeddedServer:
    server = EmbeddedServer(root, port=free_port(), binary=binary, extra_args=extra)
    server.start()
    return server


@pytest.fixture
def redis70(redis70_bin: str, tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = start_redis(redis70_bin, tmp_path / "redis70")
    with redis.Redis.from_url(server.url) as conn:
        version = str(conn.info("server")["redis_version"])
        assert version.startswith("7.0"), f"expected Redis 7.0, got {version}"
        with pytest.raises(redis.ResponseError):
            conn.execute_command("WAITAOF", 1, 0, 10)  # the point of these tests
    yield server
    server.stop()


async def test_redis_7_0_is_reported_as_not_crash_safe_at_start_and_in_readyz(
    start_gateway: Any, config: dict[str, Any], redis70: EmbeddedServer, logs: LogReader
) -> None:
    gw = await start_gateway(config, url=redis70.url)
    assert gw.runtime.store_description.endswith("(persistence: aof without waitaof, appendfsync everysec)")
    warnings = [e for e in logs.events() if e["event"].startswith("store durability")]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert "WAITAOF" in warnings[0]["detail"] and "everysec" in warnings[0]["detail"]
    async with gw.session.get(gw.admin_url + "/readyz") as r:
        assert r.status == 200
        store = (await r.json())["store"]
    assert store["crash_safe_writes"] is False
    assert store["persistence"] == "aof without waitaof, appendfsync everysec"
    assert "WAITAOF" in store["warning"]
    # and it still works: issue, verify, revoke (admin writes just don't wait for a disk)
    await gw.team("platform", ["read:apis"])
    token, key_id = await gw.token("platform", ["read:apis"])
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        assert r.status == 200
    admin = await gw.org_admin()
    async with gw.session.post(
        f"{gw.admin_url}/v1/orgs/acme/teams/platform/tokens/{key_id}/revoke", headers=gw.auth(admin)
    ) as r:
        assert r.status == 200
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        assert r.status == 401


async def test_redis_7_0_with_appendfsync_always_is_crash_safe(
    start_gateway: Any, config: dict[str, Any], redis70_bin: str, tmp_path: Path, logs: LogReader
) -> None:
    server = start_redis(redis70_bin, tmp_path / "always", "--appendfsync", "always")
    try:
        gw = await start_gateway(config, url=server.url)
        assert gw.runtime.store_description.endswith("(persistence: aof, appendfsync always)")
        assert not [e for e in logs.events() if e["event"].startswith("store durability")]
        async with gw.session.get(gw.admin_url + "/readyz") as r:
            store = (await r.json())["store"]
        durability = {k: v for k, v in store.items() if k not in ("up", "down_for_s", "stale_if_error_s")}
        assert durability == {"persistence": "aof, appendfsync always", "crash_safe_writes": True}
    finally:
        server.stop()


async def test_valkey_with_waitaof_is_crash_safe(logs: LogReader, gateway: Any) -> None:
    assert gateway.runtime.store_description.endswith("(persistence: aof+waitaof)")
    async with gateway.session.get(gateway.admin_url + "/readyz") as r:
        store = (await r.json())["store"]
    assert store == {"persistence": "aof+waitaof", "crash_safe_writes": True,
                     "up": True, "down_for_s": 0.0, "stale_if_error_s": 300.0}  # reachability beside it
    assert not [e for e in logs.events() if e["event"].startswith("store durability")]


async def test_a_store_without_aof_is_flagged_in_readyz(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path
) -> None:
    server = EmbeddedServer(tmp_path / "noaof", port=free_port(), appendonly=False)
    server.start()
    try:
        gw = await start_gateway(config, url=server.url)
        async with gw.session.get(gw.admin_url + "/readyz") as r:
            store = (await r.json())["store"]
        assert store["crash_safe_writes"] is False and "append-only" in store["warning"]
    finally:
        server.stop()
