"""`tokenward serve` as a real process on its embedded store: the whole flow, its logs, and a
search of every log line and every byte the store keeps for plaintext tokens.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from tests.helpers.gateway import TEAMS, TOKENS, last_char_changed
from tests.helpers.process import bootstrap_admin, post_json, serve_config, start_serve, wait_ready
from tokenward.gateway.embedded import EmbeddedServer, free_port


def store_dump(data_dir: Path) -> bytes:
    """Every key and value in the store, read back through a server on the same data dir."""
    server = EmbeddedServer(data_dir, port=free_port())
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        out = []
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            value: Any
            if kind == "string":
                value = client.get(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = client.xrange(key)
            else:
                value = client.dump(key)
            out.append(repr((key, value)).encode())
        client.close()
        return b"\n".join(out)
    finally:
        server.stop()


async def test_serve_flow_and_no_plaintext_anywhere(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    config, path, port, admin_port = served.config, served.path, served.port, served.admin_port
    admin_token = await bootstrap_admin(path)

    log_out = (tmp_path / "serve.out").open("wb")
    log_err = (tmp_path / "serve.err").open("wb")
    serve = await start_serve(path, stdout=log_out, stderr=log_err)
    plaintexts = [admin_token]
    gw, adm = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{adm}/readyz", serve)
            auth = {"Authorization": f"Bearer {admin_token}"}
            await post_json(session, adm + TEAMS, auth, {"name": "platform", "permissions": ["read:apis"]})
            created = await post_json(session, adm + TOKENS, auth, {"name": "ci", "scopes": ["read:apis", "write:apis"]})
            token = created["token"]
            plaintexts.append(token)
            apis = f"{gw}/orgs/acme/teams/platform/apis"
            bearer = {"Authorization": f"Bearer {token}"}
            async with session.get(apis, headers=bearer) as r:
                assert r.status == 200
            async with session.post(apis, headers=bearer) as r:
                assert r.status == 403  # team lacks write:apis
            async with session.get(apis, headers={"Authorization": f"Bearer {last_char_changed(token)}"}) as r:
                assert r.status == 401
            await post_json(session, f"{adm}{TOKENS}/{created['id']}/revoke", auth, expected=200)
            async with session.get(apis, headers=bearer) as r:
                assert r.status == 401
                assert (await r.json())["message"] == "token revoked"
            for _ in range(50):  # last_used_at is written behind, within a few seconds
                async with session.get(f"{adm}/v1/orgs/acme/teams/platform/tokens", headers=auth) as r:
                    listed = await r.json()
                if listed["tokens"][0]["last_used_at"] is not None:
                    break
                await asyncio.sleep(0.1)
            assert listed["tokens"][0]["last_used_at"] is not None
    finally:
        serve.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(serve.wait(), 30)
        log_out.close()
        log_err.close()
    assert code == 0

    logs = (tmp_path / "serve.out").read_bytes() + (tmp_path / "serve.err").read_bytes()
    lines = [orjson.loads(line) for line in (tmp_path / "serve.out").read_bytes().splitlines()]
    started = next(e for e in lines if e["event"] == "tokenward started")
    assert started["routes"] == len(config["routes"]) and "embedded" in started["store"]
    actions = [e.get("action") for e in lines if e["event"].startswith("[Service Token]")]
    assert actions.count("request.allowed") == 1
    assert actions.count("request.denied") == 3
    assert "team.created" in actions and "token.created" in actions and "token.revoked" in actions

    on_disk = b"".join(p.read_bytes() for p in Path(config["data_dir"]).rglob("*") if p.is_file())
    stored = store_dump(Path(config["data_dir"]))
    assert b"tw_sat_" + created["id"].encode() not in stored  # only the bare key id is a key
    for plaintext in plaintexts:
        secret = plaintext[-38:-6].encode()
        for where, blob in (("logs", logs), ("store files", on_disk), ("store", stored)):
            assert plaintext.encode() not in blob, where
            assert secret not in blob, where
    assert os.path.getsize(tmp_path / "serve.err") == 0 or b"Traceback" not in logs
