"""`tokenward demo`: embedded store + a sample upstream + tokenward, with printed tokens.

The sample upstream echoes what it received (method, raw path, query, headers), so the
printed curl lines show exactly what tokenward forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from tokenward.demo_mcp import mcp_endpoint, mcp_route
from tokenward.gateway.settings import load_settings

if TYPE_CHECKING:
    from tokenward.actor import Actor
    from tokenward.service import TokenService

DEMO_ORG = "acme"
DEMO_TEAM = "platform"
DEMO_ACCOUNT = "ci-pipeline"
TEAM_PERMISSIONS = ["read:apis", "write:apis", "read:specs", "write:specs", "admin:team", "delegate"]
DEMO_ADMIN = "demo-org-admin"
DEMO_ADMIN_TTL = "365d"  # expires (tokens.max_ttl), outliving what the README issues with it; the next run revokes and deletes it


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


def echo_app(mcp: bool = False) -> web.Application:
    """The upstream that echoes what it receives (the demo's, the tests'); with `mcp`, the
    demo's MCP server on its MCP route's path too (admin/demo_mcp.py)."""
    app = web.Application(client_max_size=1024**3)
    if mcp:
        app.router.add_post("/orgs/{org}/teams/{team}/mcp", mcp_endpoint)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def port_or_free(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return int(sock.getsockname()[1])  # `preferred`, or the one port 0 picked
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def moved_ports(wanted: dict[str, tuple[int, int]]) -> str:
    """A loud paragraph for each listener that could not have its port (another process holds
    it): the demo never moves one silently (issue 14, item 11). `wanted`: name -> (asked, got)."""
    lines = [
        f"  !! port {asked} is taken: the {name} listens on 127.0.0.1:{got} instead"
        for name, (asked, got) in wanted.items()
        if asked not in (got, 0)  # 0: any free port, as asked
    ]
    if not lines:
        return ""
    return "\n".join(["", *lines, "  !! use the URLs and export lines below, not the defaults", ""])


def demo_routes(upstream: str = "registry") -> list[dict[str, Any]]:
    """The demo's route table: a team's API registry (reads and writes by scope), its WebSocket
    event stream and a public health check. The tests run against the same table
    (tests/helpers/gateway.py `base_config`)."""
    res = {"org": "org", "team": "team"}  # one object: the YAML shows it once, with aliases
    # the spec routes also name the API: a token constrained to `api=pets` works on them only
    per_api = {**res, "api": "api"}

    def team_route(
        methods: list[str], tail: str, scope: str, resource: dict[str, str] = res
    ) -> dict[str, Any]:
        path = "/orgs/{org}/teams/{team}" + tail
        return {"methods": methods, "path": path, "upstream": upstream, "scopes": [scope], "resource": resource}

    return [
        team_route(["GET"], "/apis", "read:apis"),
        team_route(["POST"], "/apis", "write:apis"),
        team_route(["GET"], "/apis/{api}/specs", "read:specs", per_api),
        # publishing is production work: live tokens only (a test token gets 403, step environment)
        {**team_route(["POST"], "/apis/{api}/specs", "write:specs", per_api), "environments": ["live"]},
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
        "routes": [*demo_routes("registry"), mcp_route("registry")],
    }


def demo_lookup_key(data_dir: Path) -> Path:
    """The demo's `tokens.legacy_lookup_key_file` (made once, 0600), so that `token import`
    works against it; a real deployment mounts its own."""
    path = data_dir.resolve() / "legacy-lookup.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    return path


async def run_demo(
    data_dir: Path, port: int, admin_port: int, upstream_port: int, once: bool = False
) -> None:
    from tokenward.accounts import Accounts
    from tokenward.actor import Actor
    from tokenward.gateway.records import TeamRecord
    from tokenward.gateway.scopes import parse_scopes
    from tokenward.gateway.store_records import Conflict
    from tokenward.rules import Lifetime, iso
    from tokenward.server import Server
    from tokenward.service import TokenService

    data_dir.mkdir(parents=True, exist_ok=True)
    asked = {"gateway": port, "admin API": admin_port, "upstream": upstream_port}
    port, admin_port, upstream_port = (port_or_free(p) for p in (port, admin_port, upstream_port))
    moved = moved_ports({name: (p, got) for (name, p), got in zip(asked.items(), (port, admin_port, upstream_port), strict=True)})
    config_path = data_dir / "demo.yaml"
    config = demo_config(data_dir.resolve() / "store", port, admin_port, upstream_port)
    config["tokens"]["legacy_lookup_key_file"] = str(demo_lookup_key(data_dir))  # token import
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    settings = load_settings(config_path)

    upstream = web.AppRunner(echo_app(mcp=True), access_log=None)
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
    server = Server(settings)
    runtime = await server.start()
    try:
        # issued as the admin API issues them, audited as made by the operator ("demo")
        tokens, operator = TokenService(runtime), Actor("demo")
        retired = await retire_demo_admins(tokens, operator)
        admin_plain, admin_record = await tokens.issue(
            operator,
            org=DEMO_ORG,
            team=None,
            name=DEMO_ADMIN,
            scopes=["admin:org"],
            lifetime=Lifetime(expires_in=DEMO_ADMIN_TTL),
        )
        with contextlib.suppress(Conflict):
            await runtime.store.create_team(
                TeamRecord(DEMO_ORG, DEMO_TEAM, parse_scopes(TEAM_PERMISSIONS), time.time(), "demo")
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
        test_plain, _ = await tokens.issue(
            operator,
            org=DEMO_ORG,
            team=DEMO_TEAM,
            name="dev-sandbox",
            scopes=["read:apis", "write:specs"],
            environment="test",
        )
        agent_plain, agent_record = await tokens.issue(  # mints a child token per agent run
            operator, org=DEMO_ORG, team=DEMO_TEAM, name="agent", scopes=["read:apis", "read:specs", "delegate"]
        )
        bin_dir = Path(sys.executable).parent  # the venv's bin: where `tokenward` is
        gw = f"http://127.0.0.1:{port}"
        adm = f"http://127.0.0.1:{admin_port}"
        base = f"{gw}/orgs/{DEMO_ORG}/teams/{DEMO_TEAM}"
        print(
            f"""
tokenward demo is up
  gateway     {gw}        (routes from {config_path})
  admin API   {adm}
  console     {adm}/ui/   (sign in with the org admin token below)
  upstream    http://127.0.0.1:{upstream_port}  (echoes what it receives)
  store       {runtime.store_description}, data in {settings.data_dir}
{moved}
org admin token (org {DEMO_ORG}; shown once; expires {iso(admin_record.expires_at)}{retired}), the
`tokenward` command on your PATH, and the demo's config (for `admin bootstrap`, `config explain`):
  export PATH={shlex.quote(str(bin_dir))}:$PATH
  export TOKENWARD_ADMIN_URL={adm}
  export TOKENWARD_TOKEN={admin_plain}
  export TOKENWARD_CONFIG={shlex.quote(str(config_path.resolve()))}

read-only token for team {DEMO_TEAM} (live; read:apis read:specs; service account {DEMO_ACCOUNT}; shown once):
  export READ_TOKEN={read_plain}

test token for team {DEMO_TEAM} (environment test: its prefix says so; read:apis write:specs):
  export TEST_TOKEN={test_plain}

try:
  curl -s {base}/apis -H "Authorization: Bearer $READ_TOKEN"                  # 200, forwarded
  curl -s -X POST {base}/apis -H "Authorization: Bearer $READ_TOKEN"          # 403 lacks write:apis
  curl -s {gw}/orgs/other/teams/{DEMO_TEAM}/apis -H "Authorization: Bearer $READ_TOKEN"  # 403 org
  curl -s {base}/apis                                                          # 401 missing token
  curl -s {gw}/health                                                          # public
  curl -s {adm}/v1/orgs/{DEMO_ORG}/teams/{DEMO_TEAM}/tokens -H "Authorization: Bearer $TOKENWARD_TOKEN"
  curl -s -X POST {adm}/v1/orgs/{DEMO_ORG}/teams/{DEMO_TEAM}/tokens/{read_record.id}/revoke -H "Authorization: Bearer $TOKENWARD_TOKEN"
  tokenward token list --team {DEMO_TEAM}
  tokenward token get {read_record.id} --team {DEMO_TEAM}        # every field; times in UTC (Z)
  curl -s {adm}/v1/orgs/{DEMO_ORG}/tokens -H "Authorization: Bearer $TOKENWARD_TOKEN"   # every token of the org
  tokenward token list           # every token of org {DEMO_ORG}, org level too (TEAM column)
  tokenward token get {admin_record.id}   # an org-level token by id, no --team
  tokenward sa list                          # service accounts, org-wide: teams, owner, tokens

live and test tokens (a test token's prefix is tw_test_):
  curl -s {base}/apis -H "Authorization: Bearer $TEST_TOKEN"                  # 200: test tokens read
  curl -s -X POST {base}/apis/pets/specs -H "Authorization: Bearer $TEST_TOKEN"  # 403 environment: live only
  tokenward token list --team {DEMO_TEAM} --environment test

who still uses it? (after the revoke, the first curl line gets 401, audited with the token's id)
  tokenward audit --token-id {read_record.id} --action request.denied
  tokenward token usage {read_record.id} --team {DEMO_TEAM}     # by route and day, refusals, unused scopes

metadata and keys from an old system:
  tokenward token create --team {DEMO_TEAM} --name notes --scopes read:apis --metadata owner=alice
  tokenward token list --team {DEMO_TEAM} --metadata owner=alice       # search by metadata
  echo sk_live_demo_7Hq2xK9mWp4Rt8Vz3Lc6Nb5J | tokenward token import --team {DEMO_TEAM} --name old-ci --scopes read:apis
  curl -s {base}/apis -H "Authorization: Bearer sk_live_demo_7Hq2xK9mWp4Rt8Vz3Lc6Nb5J"    # 200: the imported key
  tokenward leaks report sk_live_demo_7Hq2xK9mWp4Rt8Vz3Lc6Nb5J   # leaked? revoked for good (legacy_<ID>)
  (imported keys work on the gateway's routes only: weak keys and admin scopes are refused at import)

agent recipe: a short-lived child token per agent run, never wider than its parent, ended with it:
  export AGENT_TOKEN={agent_plain}   # read:apis read:specs delegate
  CHILD=$(TOKENWARD_TOKEN=$AGENT_TOKEN tokenward token delegate --scopes read:apis --ttl 15m --max-uses 5 --run-id run-1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  curl -s {base}/apis -H "Authorization: Bearer $CHILD"     # 200; the upstream sees X-Tokenward-Run-Id: run-1
  MCP=(-s {base}/mcp -H "Authorization: Bearer $CHILD" -H 'Content-Type: application/json')   # the team's MCP server
  curl "${{MCP[@]}}" -d '{{"jsonrpc":"2.0","id":1,"method":"tools/list"}}'     # lists search_apis only: the tools $CHILD may call
  curl "${{MCP[@]}}" -d '{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"search_apis","arguments":{{"q":"pets"}}}}}}'   # runs
  curl "${{MCP[@]}}" -d '{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"register_api"}}}}'   # 403, JSON-RPC error: lacks write:apis
  for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/apis -H "Authorization: Bearer $CHILD"; done; echo   # 200 200 429: its 5 uses spent
  tokenward token revoke {agent_record.id} --team {DEMO_TEAM}     # the parent: $CHILD gets 401 at once

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


async def retire_demo_admins(tokens: TokenService, operator: Actor) -> str:
    """Revoke and delete the org admin tokens earlier demo runs printed (its audit trail
    stays), so runs don't pile up org admin tokens. What to print about it."""
    from tokenward.gateway.records import ACTIVE

    store = tokens.store
    gone = 0
    for key_id in await store.list_token_ids(DEMO_ORG, None):  # the org level's index
        record = await store.get_token(key_id)
        if record is None or record.created_by != operator.name or record.name != DEMO_ADMIN:
            continue
        if record.status() == ACTIVE:
            await tokens.revoke(operator, DEMO_ORG, None, key_id, "replaced by a new demo run")
        await tokens.delete(operator, DEMO_ORG, None, key_id)
        gone += 1
    return "; the previous run's one is revoked and deleted" if gone else ""

