"""Hot reload: SIGHUP and a change of the config file swap routes and upstreams atomically;
a bad file keeps the old map and logs every problem."""

from __future__ import annotations

import asyncio
import copy
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.helpers.gateway import LogReader, base_config
from tests.helpers.process import start_serve, wait_ready
from tokenward.gateway.embedded import free_ports
from tokenward.gateway.settings import load_settings
from tokenward.server import Server

NEW_ROUTE = {"methods": ["GET"], "path": "/status", "upstream": "registry", "public": True}


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        await r.read()
        return r.status


async def test_reload_swaps_routes_and_keeps_the_old_map_on_a_bad_file(
    tmp_path: Path, upstream: int, redis_url: str, logs: LogReader
) -> None:
    config = base_config(upstream)
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config))
    server = Server(load_settings(path), redis_url=redis_url, config_path=str(path))
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.proxy_port}"
        assert await status_of(url + "/status") == 404
        updated = copy.deepcopy(config)
        updated["routes"].append(NEW_ROUTE)
        updated["listen"]["port"] = 1  # needs a restart: kept as it was, with a warning
        path.write_text(yaml.safe_dump(updated))
        assert server.reload()
        assert await status_of(url + "/status") == 200
        assert server.runtime is not None and server.runtime.settings.listen.port == 0
        assert any(
            e.get("event") == "config reload: these settings need a restart and were not applied"
            for e in logs.events()
        )

        path.write_text("routes: [{path: /x, upstream: nowhere, scopes: [writ:x]}]\nupstreams: {}\n")
        assert not server.reload()
        assert await status_of(url + "/status") == 200  # old map kept
        failed = [
            e for e in logs.events() if e.get("event") == "config reload failed; keeping the current config"
        ]
        assert len(failed) == 1 and len(failed[0]["problems"]) >= 2
        assert server.runtime.reload_failures == 1

        # a file change is picked up without a signal
        server.watch_config(interval=0.05)
        await asyncio.sleep(0.1)
        path.write_text(yaml.safe_dump(config))  # back to the original: /status gone again
        for _ in range(100):
            if await status_of(url + "/status") == 404:
                break
            await asyncio.sleep(0.05)
        assert await status_of(url + "/status") == 404
    finally:
        await server.stop()


async def test_sighup_reloads_a_running_serve(tmp_path: Path, upstream: int) -> None:
    config: dict[str, Any] = base_config(upstream)
    port, admin_port = free_ports(2)
    config["listen"]["port"], config["admin_listen"]["port"] = port, admin_port
    config["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = await start_serve(path, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"http://127.0.0.1:{admin_port}/readyz", serve)
        assert await status_of(f"http://127.0.0.1:{port}/status") == 404
        config["routes"].append(NEW_ROUTE)
        # write elsewhere and rename, as config management tools do; then signal at once
        staged = tmp_path / "staged.yaml"
        staged.write_text(yaml.safe_dump(config))
        staged.replace(path)
        serve.send_signal(signal.SIGHUP)
        for _ in range(100):
            if await status_of(f"http://127.0.0.1:{port}/status") == 200:
                break
            await asyncio.sleep(0.05)
        assert await status_of(f"http://127.0.0.1:{port}/status") == 200
    finally:
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.wait(), 30) == 0
