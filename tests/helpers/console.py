"""A real tokenward for the console's browser tests: the in-process Server (proxy listener,
admin listener serving /v1 and /ui/) on the test's Valkey, in front of the demo's echo
upstream recording what reached it; with two teams and the tokens that sign in.

- team `platform` (read:apis, write:apis, admin:team) with service account `deployer`;
- team `payroll` (read:apis), whose token `payroll-secret` no platform admin may see;
- `org_admin` (admin:org), `team_admin` (platform: admin:team, read:apis, write:apis) and
  `reader` (platform: read:apis, no admin rights).

And the steps the browser tests share, driving the console by its accessible names (those the
issue asks to keep stable): what a user and a screen reader see, never CSS classes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Locator, Page, expect

from tests.helpers.browser import Tab
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


# -- driving the console, by the accessible names it keeps stable --------------------------------
async def sign_in(tab: Tab, console: Console, token: str) -> None:
    page = tab.page
    await page.goto(console.ui)
    await page.get_by_label("Token", exact=True).fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def open_platform(tab: Tab, console: Console) -> Locator:
    """Sign in as the org admin, open team `platform` from the teams list; its tokens table."""
    page = tab.page
    await sign_in(tab, console, console.org_admin)
    await expect(page.get_by_role("heading", name="Teams")).to_be_visible()
    await page.get_by_role("link", name="platform", exact=True).click()
    await expect(page.get_by_role("heading", name="platform", exact=True)).to_be_visible()
    table = tokens_table(page)
    await expect(row(table, "reader")).to_be_visible()
    return table


def tokens_table(page: Page) -> Locator:
    return page.get_by_role("table", name="Tokens")


def row(table: Locator, text: str) -> Locator:
    return table.get_by_role("row").filter(has_text=text)


def dialog(page: Page, name: str | re.Pattern[str]) -> Locator:
    return page.get_by_role("dialog", name=name)


def copy_dialog(page: Page) -> Locator:
    return dialog(page, re.compile("Copy"))


async def create_token(page: Page, name: str, *scopes: str) -> Locator:
    """Fill the Create token dialog (name, scopes) and press Create; the dialog."""
    await page.get_by_role("button", name="Create token").click()
    form = dialog(page, "Create token")
    await expect(form).to_be_visible()
    await form.get_by_label("Name", exact=True).fill(name)
    for scope in scopes:
        await form.get_by_role("checkbox", name=scope).check()
    return form


async def new_token_from(page: Page) -> str:
    """The plaintext the copy-once dialog shows."""
    shown = copy_dialog(page)
    await expect(shown).to_be_visible()
    field = shown.get_by_role("textbox", name="New token")
    await expect(field).to_have_value(re.compile(r"^tw_sat_"))
    return await field.input_value()


async def forgotten(page: Page, token: str) -> None:
    """Waits until `token` is nowhere in the page: not in its markup, not in a field's value
    (the copy-once dialog is removed from the page once it has closed)."""
    await page.wait_for_function(
        """(token) => !document.documentElement.outerHTML.includes(token)
          && ![...document.querySelectorAll("input, textarea")].some((e) => e.value.includes(token))""",
        arg=token,
    )
    assert token not in await page.content()


async def beside(alert: Locator, control: Locator) -> str:
    """'' when `alert` belongs to `control`: named by its aria-describedby, or the nearest
    enclosing element of the alert that holds a form control holds this one and no other."""
    handle = await control.element_handle()
    result: Any = await alert.evaluate(
        """(alert, control) => {
          const described = (control.getAttribute("aria-describedby") || "").split(/\\s+/);
          if (alert.id && described.includes(alert.id)) return "";
          let node = alert.parentElement;
          const controls = (n) => [...n.querySelectorAll("input, select, textarea")]
            .filter((c) => c.type !== "hidden");
          while (node && controls(node).length === 0) node = node.parentElement;
          if (!node) return "no form control near the alert";
          const near = controls(node);
          if (near.length === 1 && near[0] === control) return "";
          return "the alert is near " + near.map((c) => c.name || c.id || c.type).join(", ");
        }""",
        handle,
    )
    return str(result)
