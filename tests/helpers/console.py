"""A real tokenward for the console's browser tests: the in-process Server (proxy listener,
admin listener serving /v1 and /ui/) on the test's Valkey, in front of the demo's echo
upstream recording what reached it; with two teams and the tokens that sign in.

- team `platform` (read:apis, write:apis, admin:team) with service account `deployer`;
- team `payroll` (read:apis), whose token `payroll-secret` no platform admin may see;
- `org_admin` (admin:org), `team_admin` (platform: admin:team, read:apis, write:apis) and
  `reader` (platform: read:apis, no admin rights).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.helpers.gateway import TEAMS, TOKENS, Gateway, admin, apis_status, base_config, issue
from tokenward.demo import echo_app
from tokenward.gateway.embedded import free_port
from tokenward.gateway.settings import settings_from_dict
from tokenward.server import Server

PLATFORM = ["read:apis", "write:apis", "admin:team"]
ACCOUNTS = "/v1/orgs/acme/teams/platform/service-accounts"
PAYROLL_TOKENS = "/v1/orgs/acme/teams/payroll/tokens"


@dataclass
class Console:
    gw: Gateway
    upstream: web.AppRunner
    seen: list[dict[str, Any]]  # the requests that reached the upstream
    org_admin: str = ""
    team_admin: str = ""
    reader: str = ""
    ids: dict[str, str] = field(default_factory=dict)  # token name -> id, of those made here

    @property
    def origin(self) -> str:
        return self.gw.admin_url

    @property
    def ui(self) -> str:
        return self.gw.admin_url + "/ui/"

    async def issue(self, **body: Any) -> dict[str, Any]:
        """A platform token issued by the org admin through the API (read:apis by default)."""
        created = await issue(self.gw, self.org_admin, **body)
        self.ids[created["name"]] = created["id"]
        return created

    async def revoke(self, token_id: str) -> None:
        status, body, _ = await admin(self.gw, "POST", f"{TOKENS}/{token_id}/revoke", self.org_admin)
        assert status == 200, body

    async def through(self, token: str) -> int:
        """The gateway's status for GET on the platform team's APIs with `token`."""
        return await apis_status(self.gw, token)

    async def stop(self) -> None:
        await self.gw.session.close()
        await self.gw.server.stop()
        await self.upstream.cleanup()


async def recording_echo() -> tuple[web.AppRunner, int, list[dict[str, Any]]]:
    """tokenward.demo's echo upstream on a free port, recording each request's headers."""
    seen: list[dict[str, Any]] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append({"method": request.method, "path": request.path, "headers": request.headers.copy()})
        return await handler(request)

    app = echo_app()
    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port, seen


async def start_console(redis_url: str) -> Console:
    runner, port, seen = await recording_echo()
    settings = settings_from_dict(copy.deepcopy(base_config(port)), "test")
    server = Server(settings, redis_url=redis_url, shutdown_timeout=1.0)
    runtime = await server.start()
    gw = Gateway(
        server,
        runtime,
        f"http://127.0.0.1:{server.proxy_port}",
        f"http://127.0.0.1:{server.admin_port}",
        aiohttp.ClientSession(auto_decompress=False),
    )
    console = Console(gw, runner, seen)
    try:
        await populate(console)
    except BaseException:
        await console.stop()
        raise
    return console


async def populate(console: Console) -> None:
    gw = console.gw
    console.org_admin = await gw.org_admin()
    for team, permissions in (("platform", PLATFORM), ("payroll", ["read:apis"])):
        status, body, _ = await admin(
            gw, "POST", TEAMS, console.org_admin, {"name": team, "permissions": permissions}
        )
        assert status == 201, body
    status, body, _ = await admin(
        gw, "POST", ACCOUNTS, console.org_admin, {"name": "deployer", "description": "CI deploys"}
    )
    assert status == 201, body
    console.team_admin = (await console.issue(name="platform-admin", scopes=PLATFORM))["token"]
    console.reader = (await console.issue(name="reader", scopes=["read:apis"]))["token"]
    status, body, _ = await admin(
        gw, "POST", PAYROLL_TOKENS, console.org_admin, {"name": "payroll-secret", "scopes": ["read:apis"]}
    )
    assert status == 201, body
