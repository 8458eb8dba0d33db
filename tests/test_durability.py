"""A token shown to its creator survives a crash of the store the next instant: every admin
write waits for the append-only file (WAITAOF) before the response."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from tests.helpers.gateway import base_config
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.runtime import Runtime
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import settings_from_dict
from tokenward.gateway.store import Store
from tokenward.service import issue_token


async def test_1000_tokens_survive_kill_9_of_the_store(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    config: dict[str, Any] = base_config(9)
    settings = settings_from_dict(config)
    runtime = await Runtime.open(settings, redis_url=server.url)
    assert runtime.store.waitaof_supported, "the embedded store must support WAITAOF"
    try:
        await runtime.store.create_team(TeamRecord("acme", "platform", parse_scopes(["read:apis"]), 0.0, "t"))
        started = time.monotonic()
        issued: list[str] = []
        for batch in range(20):
            results = await asyncio.gather(*(
                issue_token(runtime, org="acme", team="platform", name=f"t{batch}-{i}",
                            scopes=parse_scopes(["read:apis"]), created_by="test")
                for i in range(50)
            ))
            issued += [plaintext for plaintext, _ in results]
        elapsed = time.monotonic() - started
        server.kill()  # SIGKILL right after the last response
    finally:
        await runtime.close()
    assert len(issued) == 1000
    print(f"1000 durable issuances in {elapsed:.1f}s")

    server.start()  # same data dir and port
    try:
        store = Store(aioredis.Redis.from_url(server.url))
        check = await Runtime.open(settings, redis_url=server.url)
        try:
            missing = 0
            for token in issued:
                principal = await check.authenticator.authenticate(token, "127.0.0.1")
                missing += principal.token.org != "acme"
            assert missing == 0
            assert len(await store.list_token_ids("acme", "platform")) == 1000
        finally:
            await check.close()
            await store.close()
    finally:
        server.stop()
