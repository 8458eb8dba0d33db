"""An admin change confirmed to the caller has its audit event in the Redis audit stream, even
when the store is killed (-9) the instant after the last response: the event is written in the
same atomic, durable write as the change (SECURITY.md "lifecycle races and who may restore")."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import settings_from_dict
from tokenward.gateway.store_keys import Keys
from tokenward.server import Server
from tokenward.service import issue_token

ROUNDS = 4


async def test_no_confirmed_admin_change_is_missing_from_the_audit_stream_after_kill_9(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    store_server = EmbeddedServer(tmp_path / "store", port=free_port())
    store_server.start()
    server = Server(
        settings_from_dict(copy.deepcopy(config), "test"), redis_url=store_server.url, shutdown_timeout=1.0
    )
    runtime = await server.start()
    assert runtime.store.waitaof_supported
    base = f"http://127.0.0.1:{server.admin_port}"
    confirmed: Counter[tuple[str, str]] = Counter()  # (request id, action) -> events expected
    try:
        org_admin, _ = await issue_token(
            runtime,
            org="acme",
            team=None,
            name="org-admin",
            scopes=parse_scopes(["admin:org"]),
            created_by="t",
        )
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {org_admin}"}) as http:

            async def call(method: str, path: str, action: str, body: Any = None) -> Any:
                async with http.request(method, base + path, json=body) as r:
                    data = await r.json() if r.content_type == "application/json" else None
                    assert r.status in (200, 201, 204), (method, path, r.status, data)
                    confirmed[(r.headers["X-Request-Id"], action)] += 1
                    return data

            teams = "/v1/orgs/acme/teams"
            for round_ in range(ROUNDS):
                team = f"t{round_}"
                tokens = f"{teams}/{team}/tokens"
                await call("POST", teams, "team.created", {"name": team, "permissions": ["read:apis"]})
                await call(
                    "PUT",
                    f"{teams}/{team}/permissions",
                    "team.permissions_changed",
                    {"permissions": ["read:apis", "write:specs"]},
                )
                await call(
                    "POST", f"{teams}/{team}/service-accounts", "service_account.created", {"name": "ci"}
                )
                created = await asyncio.gather(
                    *(
                        call("POST", tokens, "token.created", {"name": f"n{i}", "scopes": ["read:apis"]})
                        for i in range(12)
                    )
                )
                ids = [c["id"] for c in created]
                await asyncio.gather(
                    *(
                        call("PATCH", f"{tokens}/{kid}", "token.updated", {"description": "d"})
                        for kid in ids[:3]
                    ),
                    *(call("POST", f"{tokens}/{kid}/revoke", "token.revoked") for kid in ids[3:9]),
                    *(call("POST", f"{tokens}/{kid}/rotate", "token.rotated") for kid in ids[9:11]),
                    call("POST", "/v1/leaks", "token.leaked", {"tokens": [created[11]["token"]]}),
                )
                await asyncio.gather(
                    *(call("POST", f"{tokens}/{kid}/restore", "token.restored") for kid in ids[3:5]),
                    *(call("DELETE", f"{tokens}/{kid}", "token.deleted") for kid in ids[5:9]),
                    call("DELETE", f"{teams}/{team}/service-accounts/ci", "service_account.deleted"),
                )
        store_server.kill()  # SIGKILL right after the last confirmed change
    finally:
        await server.stop()  # its write-behind buffer, if any, dies with it
    store_server.start()  # same data dir and port
    client = aioredis.Redis.from_url(store_server.url)
    try:
        rows = await client.xrange(Keys.audit, "-", "+")
        seen: Counter[tuple[str, str]] = Counter()
        for _, fields in rows:
            event = orjson.loads(fields[b"e"])
            if event.get("request_id") and event["action"] != "admin.denied":
                seen[(event["request_id"], event["action"])] += 1
    finally:
        await client.aclose()
        store_server.stop()
    missing = sum((confirmed - seen).values())
    duplicated = sum((seen - confirmed).values())
    print(f"{sum(confirmed.values())} confirmed admin changes, {missing} missing, {duplicated} extra")
    assert sum(confirmed.values()) == ROUNDS * 34
    assert (missing, duplicated) == (0, 0)
