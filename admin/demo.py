"""`tokenward demo`: embedded store + a sample upstream + tokenward, with printed tokens.

The sample upstream echoes what it received (method, raw path, query, headers), so the
printed curl lines show exactly what tokenward forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tokenward.gateway.settings import load_settings

DEMO_ORG = "acme"
DEMO_TEAM = "platform"
DEMO_ACCOUNT = "ci-pipeline"
TEAM_PERMISSIONS = ["read:apis", "write:apis", "read:specs", "write:specs", "admin:team"]


async def echo_websocket(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket that first says which headers arrived, then echoes every message."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json({"path": request.raw_path, "headers": [[k, v] for k, v in request.headers.items()]})
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def echo(request: web.Request) -> web.StreamResponse:
    """Echo exactly what arrived, for the demo and the tests.

    `?sleep=S` waits S seconds first (a slow upstream); `?bytes=N` answers with N bytes
    streamed in 64 KiB chunks instead of the echo (a large response).
    """
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await echo_websocket(request)
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    sleep = request.query.get("sleep")
    if sleep:
        await asyncio.sleep(float(sleep))
    size = request.query.get("bytes")
    if size:
        remaining = int(size)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = remaining
        await response.prepare(request)
        block = b"x" * 65536
        while remaining > 0:
            await response.write(block[: min(remaining, len(block))])
            remaining -= len(block)
        await response.write_eof()
        return response
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "path": request.raw_path.partition("?")[0],
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_length": total,
        }
    )


def echo_app() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def port_or_free(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def demo_routes(upstream: str = "registry") -> list[dict[str, Any]]:
    """The demo's route table: a team's API registry (reads and writes by scope), its WebSocket
    event stream and a public health check. The tests run against the same table
    (tests/helpers/gateway.py `base_config`)."""
    res = {"org": "org", "team": "team"}  # one object: the YAML shows it once, with aliases

    def team_route(methods: list[str], tail: str, scope: str) -> dict[str, Any]:
        path = "/orgs/{org}/teams/{team}" + tail
        return {"methods": methods, "path": path, "upstream": upstream, "scopes": [scope], "resource": res}

    return [
        team_route(["GET"], "/apis", "read:apis"),
        team_route(["POST"], "/apis", "write:apis"),
        team_route(["GET"], "/apis/{api}/specs", "read:specs"),
        team_route(["POST"], "/apis/{api}/specs", "write:specs"),
        {**team_route(["GET"], "/events", "read:apis"), "websocket": True},
        {"methods": ["GET"], "path": "/health", "upstream": upstream, "public": True},
    ]


def demo_config(data_dir: Path, port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin_listen": {"host": "127.0.0.1", "port": admin_port},
        "data_dir": str(data_dir),
        "tokens": {"prefix": "tw_sat", "default_ttl": "90d", "max_ttl": "365d"},
        "upstreams": {"registry": {"url": f"http://127.0.0.1:{upstream_port}", "timeout": "30s"}},
        "routes": demo_routes("registry"),
    }


async def run_demo(
    data_dir: Path, port: int, admin_port: int, upstream_port: int, once: bool = False
) -> None:
    from tokenward.accounts import Accounts
    from tokenward.actor import Actor
    from tokenward.gateway.records import TeamRecord
    from tokenward.gateway.scopes import parse_scopes
    from tokenward.gateway.store_records import Conflict
    from tokenward.server import Server
    from tokenward.service import TokenService

    data_dir.mkdir(parents=True, exist_ok=True)
    port, admin_port, upstream_port = (port_or_free(p) for p in (port, admin_port, upstream_port))
    config_path = data_dir / "demo.yaml"
    config_path.write_text(
        yaml.safe_dump(
            demo_config(data_dir.resolve() / "store", port, admin_port, upstream_port), sort_keys=False
        )
    )
    settings = load_settings(config_path)

    upstream = web.AppRunner(echo_app(), access_log=None)
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
    server = Server(settings)
    runtime = await server.start()
    try:
        # issued as the admin API issues them, audited as made by the operator ("demo")
        tokens, operator = TokenService(runtime), Actor("demo")
        admin_plain, _ = await tokens.issue(
            operator, org=DEMO_ORG, team=None, name="demo-org-admin", scopes=["admin:org"], lifetime=None
        )
        with contextlib.suppress(Conflict):
            await runtime.store.create_team(
                TeamRecord(DEMO_ORG, DEMO_TEAM, parse_scopes(TEAM_PERMISSIONS), 0.0, "demo")
            )
        with contextlib.suppress(Conflict):  # an org-level service account, member of the team
            await Accounts(runtime).create(
                operator, DEMO_ORG, DEMO_ACCOUNT, description="the demo's CI", owner="demo", teams=[DEMO_TEAM]
            )
        read_plain, read_record = await tokens.issue(
            operator,
            org=DEMO_ORG,
            team=DEMO_TEAM,
            name="ci-readonly",
            scopes=["read:apis", "read:specs"],
            service_account=DEMO_ACCOUNT,
        )
        gw = f"http://127.0.0.1:{port}"
        adm = f"http://127.0.0.1:{admin_port}"
        base = f"{gw}/orgs/{DEMO_ORG}/teams/{DEMO_TEAM}"
        print(
            f"""
tokenward demo is up
  gateway     {gw}        (routes from {config_path})
  admin API   {adm}
  upstream    http://127.0.0.1:{upstream_port}  (echoes what it receives)
  store       {runtime.store_description}, data in {settings.data_dir}

org admin token (org {DEMO_ORG}; shown once):
  export TOKENWARD_ADMIN_URL={adm}
  export TOKENWARD_TOKEN={admin_plain}

read-only token for team {DEMO_TEAM} (read:apis read:specs; service account {DEMO_ACCOUNT}; shown once):
  export READ_TOKEN={read_plain}

try:
  curl -s {base}/apis -H "Authorization: Bearer $READ_TOKEN"                  # 200, forwarded
  curl -s -X POST {base}/apis -H "Authorization: Bearer $READ_TOKEN"          # 403 lacks write:apis
  curl -s {gw}/orgs/other/teams/{DEMO_TEAM}/apis -H "Authorization: Bearer $READ_TOKEN"  # 403 org
  curl -s {base}/apis                                                          # 401 missing token
  curl -s {gw}/health                                                          # public
  curl -s {adm}/v1/orgs/{DEMO_ORG}/teams/{DEMO_TEAM}/tokens -H "Authorization: Bearer $TOKENWARD_TOKEN"
  curl -s -X POST {adm}/v1/orgs/{DEMO_ORG}/teams/{DEMO_TEAM}/tokens/{read_record.id}/revoke -H "Authorization: Bearer $TOKENWARD_TOKEN"
  .venv/bin/tokenward token list --team {DEMO_TEAM}
  .venv/bin/tokenward sa list                          # service accounts, org-wide: teams, owner, tokens

Ctrl-C to stop.
""",
            flush=True,
        )
        if once:
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await server.stop()
        await upstream.cleanup()
