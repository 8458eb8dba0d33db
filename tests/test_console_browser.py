"""The admin console (issue 15) in a real browser: headless Chromium (Debian's package) driven
by Playwright, against a real tokenward (admin listener serving /v1 and /ui/, the proxy and
an upstream) on the test's Valkey. The UI is driven by its accessible names, the ones the
issue asks to keep stable: what a user and a screen reader see, never CSS classes.

One browser for the session, a fresh context (storage, cookies, clipboard grant) per test;
no sleeps and no timing thresholds: Playwright's `expect` waits for what it asserts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Locator, expect
from yarl import URL

from tests.helpers.browser import Tab, read_clipboard
from tests.helpers.console import (
    Console,
    beside,
    copy_dialog,
    create_token,
    dialog,
    forgotten,
    new_token_from,
    open_platform,
    row,
    sign_in,
    tokens_table,
)
from tests.helpers.gateway import ROOT, TOKENS, admin

# The browser and the console live in the session's loop (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")

DOCS = ROOT / "docs" / "console"
# The README's screenshots, docs/console/NAME.png (test_screenshots_of_the_main_screens).
SCREENS = (
    "signin",
    "teams",
    "tokens",
    "create",
    "copy",
    "details",
    "accounts",
    "audit",
)
HTML_NAME = "<img src=x onerror=window.__pwned=1> then <b>bold</b>"


# -- the flows -----------------------------------------------------------------------------------
async def test_org_admin_creates_copies_uses_and_revokes_a_token(tab: Tab, console: Console) -> None:
    page = tab.page
    await sign_in(tab, console, console.org_admin)
    await expect(page.get_by_role("heading", name="Teams")).to_be_visible()
    teams = page.get_by_role("table")
    for team in ("platform", "payroll"):
        await expect(teams.get_by_role("link", name=team, exact=True)).to_be_visible()
    await page.get_by_role("link", name="platform", exact=True).click()
    await expect(page.get_by_role("heading", name="platform", exact=True)).to_be_visible()
    for name in ("Tokens", "Service accounts", "Audit", "Settings"):
        await expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible()

    form = await create_token(page, "ci-deploy", "read:apis")
    await form.get_by_role("button", name="Create", exact=True).click()
    token = await new_token_from(page)
    shown = copy_dialog(page)
    await expect(shown).to_contain_text("It will not be shown again")
    await shown.get_by_role("button", name="Copy", exact=True).click()
    await expect(shown).to_contain_text("Copied")
    assert await read_clipboard(page) == token

    # the copied token works through the gateway, as itself
    assert await console.through(token) == 200
    assert console.seen[-1]["headers"]["X-Tokenward-Token-Name"] == "ci-deploy"

    await shown.get_by_role("button", name="Done").click()
    await expect(shown).to_be_hidden()
    await forgotten(page, token)  # closing the dialog forgot the plaintext

    table = tokens_table(page)
    created = row(table, "ci-deploy")
    await expect(created).to_contain_text("active")
    await created.get_by_role("button", name="Revoke").click()
    confirm = dialog(page, "Revoke token")
    await confirm.get_by_label("Reason").fill("pasted in a chat")
    await confirm.get_by_role("button", name="Revoke token").click()
    await expect(confirm).to_be_hidden()
    await expect(created).to_contain_text("revoked")
    await expect(created).to_contain_text("pasted in a chat")  # the status's reason
    assert await console.through(token) == 401
    assert tab.watch.problems() == []


async def test_a_team_admin_sees_only_its_team(tab: Tab, console: Console) -> None:
    page = tab.page
    await sign_in(tab, console, console.team_admin)
    # straight to its team page, no teams list
    await expect(page.get_by_role("heading", name="platform", exact=True)).to_be_visible()
    table = tokens_table(page)
    await expect(row(table, "reader")).to_be_visible()
    await expect(page.get_by_role("heading", name="Teams", exact=True)).to_have_count(0)
    await expect(page.get_by_role("tab", name="Settings")).to_have_count(0)  # org admins only
    await expect(page.get_by_role("button", name="Create token")).to_be_visible()
    await expect(page.locator("body")).not_to_contain_text("payroll")

    # another team's page by its address: an error, never its tokens
    await page.evaluate("location.hash = '#/teams/payroll/tokens'")
    await expect(page.get_by_role("alert")).to_be_visible()
    await expect(page.locator("body")).not_to_contain_text("payroll-secret")
    await expect(page.get_by_role("button", name="Create token")).to_have_count(0)
    assert tab.watch.problems() == []


async def test_a_token_without_admin_rights_gets_the_refusal_page(tab: Tab, console: Console) -> None:
    page = tab.page
    await sign_in(tab, console, "tw_sat_not-a-token")
    await expect(page.get_by_role("alert")).to_be_visible()  # the API's message
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await expect(page.get_by_label("Token", exact=True)).to_have_attribute("type", "password")
    assert await page.evaluate("sessionStorage.length") == 0  # a refused token is not kept

    await page.get_by_label("Token", exact=True).fill(console.reader)
    await page.get_by_role("button", name="Sign in").click()
    refusal = page.get_by_role("heading", name="This token cannot administer tokens")
    await expect(refusal).to_be_visible()
    await expect(page.get_by_role("button", name="Create token")).to_have_count(0)
    await expect(page.get_by_role("table")).to_have_count(0)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Token", exact=True)).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    assert tab.watch.problems() == []


async def test_names_with_html_are_shown_as_text(tab: Tab, console: Console) -> None:
    """Names are attacker-controlled: every value from the API is rendered as text."""
    await console.issue(name=HTML_NAME, description="<script>window.__pwned = 2</script>")
    page = tab.page
    table = await open_platform(tab, console)
    await expect(table.get_by_text(HTML_NAME, exact=True)).to_be_visible()
    await row(table, HTML_NAME).get_by_role("button", name="Details").click()
    drawer = dialog(page, "Token details")
    await expect(drawer).to_contain_text(HTML_NAME)
    await expect(drawer).to_contain_text("<script>window.__pwned = 2</script>")
    await expect(drawer).to_contain_text(console.ids[HTML_NAME])
    await drawer.get_by_role("button", name="Close").click()
    await expect(drawer).to_be_hidden()
    await page.get_by_role("tab", name="Audit").click()
    await expect(page.get_by_role("table", name="Audit events")).to_be_visible()
    assert await page.locator("img[src='x']").count() == 0
    assert await page.locator("b", has_text="bold").count() == 0
    assert await page.locator("script:not([src])").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert tab.watch.problems() == []


async def test_sign_out_forgets_the_token_which_is_never_in_a_url_or_cookie(
    tab: Tab, console: Console
) -> None:
    page, token = tab.page, console.org_admin
    await sign_in(tab, console, token)
    await expect(page.get_by_role("heading", name="Teams")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('tokenward.token')") == token
    await page.reload()  # kept for the tab
    await expect(page.get_by_role("heading", name="Teams")).to_be_visible()
    await page.get_by_role("link", name="platform", exact=True).click()
    await expect(page.get_by_role("heading", name="platform", exact=True)).to_be_visible()
    api_calls = [(url, h) for url, h in tab.watch.requests if url.startswith(console.origin + "/v1/")]
    assert api_calls and all(h.get("authorization") == f"Bearer {token}" for _, h in api_calls)

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Token", exact=True)).to_be_visible()
    assert await page.evaluate("sessionStorage.length + localStorage.length") == 0
    await page.reload()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    assert await tab.context.cookies() == [] and await page.evaluate("document.cookie") == ""
    assert all(token not in url for url, _ in tab.watch.requests) and token not in page.url
    assert all(token not in line for line in tab.watch.console)  # never logged
    assert tab.watch.problems() == []


async def test_rotate_restore_and_delete_from_the_table(tab: Tab, console: Console) -> None:
    old = (await console.issue(name="rotating"))["token"]
    restorable = await console.issue(name="restorable")
    await console.revoke(restorable["id"])
    await console.revoke((await console.issue(name="deletable"))["id"])
    page = tab.page
    table = await open_platform(tab, console)

    await row(table, "rotating").get_by_role("button", name="Rotate").click()
    rotate = dialog(page, "Rotate token")
    await expect(rotate.get_by_label("Grace period")).to_have_value("24h")
    await rotate.get_by_role("button", name="Rotate token").click()
    new = await new_token_from(page)
    assert new != old
    assert await console.through(new) == 200
    assert await console.through(old) == 200  # within its grace period
    # Done before Copy asks first: the token will not be shown again
    shown = copy_dialog(page)
    await shown.get_by_role("button", name="Done").click()
    await expect(shown.get_by_role("alert")).to_contain_text("not pressed Copy")
    await expect(shown).to_be_visible()
    await shown.get_by_role("button", name="Close anyway").click()
    await expect(shown).to_be_hidden()
    await forgotten(page, new)
    await expect(row(table, "rotating").filter(has_text="grace")).to_have_count(1)
    await expect(row(table, "rotating").filter(has_text="active")).to_have_count(1)

    revoked = row(table, "restorable")
    await expect(revoked).to_contain_text("revoked")
    await expect(revoked.get_by_role("button", name="Rotate")).to_have_count(0)
    await revoked.get_by_role("button", name="Restore").click()
    await expect(revoked).to_contain_text("active")
    await expect(revoked.get_by_role("button", name="Restore")).to_have_count(0)
    assert await console.through(restorable["token"]) == 200

    # Delete: only revoked or expired tokens offer it
    await expect(row(table, "reader").get_by_role("button", name="Delete")).to_have_count(0)
    await row(table, "deletable").get_by_role("button", name="Delete").click()
    confirm = dialog(page, "Delete token")
    await confirm.get_by_role("button", name="Delete token").click()
    await expect(row(table, "deletable")).to_have_count(0)
    status, _, _ = await admin(console.gw, "GET", f"{TOKENS}/{console.ids['deletable']}", console.org_admin)
    assert status == 404
    assert tab.watch.problems() == []


async def test_server_errors_are_shown_beside_their_field(tab: Tab, console: Console) -> None:
    page = tab.page
    await open_platform(tab, console)
    form = await create_token(page, "networked", "read:apis")
    cidrs, constraints = form.get_by_label("Allowed CIDRs"), form.get_by_label("Constraints")

    await cidrs.fill("10.0.0.0/33")
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await form.get_by_role("button", name="Create", exact=True).click()
    assert (await answer.value).status == 400  # the server's refusal, not a check in the page
    alert = form.get_by_role("alert")
    await expect(alert).to_contain_text("not a CIDR")
    assert await beside(alert, cidrs) == ""

    await cidrs.fill("127.0.0.0/8")
    await constraints.fill("team=payroll")
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await form.get_by_role("button", name="Create", exact=True).click()
    assert (await answer.value).status == 400
    await expect(alert).to_have_count(1)  # the CIDR error is gone
    await expect(alert).to_contain_text("constraint names")
    assert await beside(alert, constraints) == ""

    await constraints.fill("")  # (no route of the demo's names a constraint)
    await form.get_by_role("button", name="Create", exact=True).click()
    token = await new_token_from(page)
    assert await console.through(token) == 200  # from 127.0.0.1, inside its allowed network
    assert tab.watch.problems() == []


async def test_the_console_is_usable_with_the_keyboard_alone(tab: Tab, console: Console) -> None:
    page = tab.page
    await page.goto(console.ui)

    async def tab_to(target: Locator) -> None:
        for _ in range(60):
            if await target.evaluate("e => e === document.activeElement"):
                return
            await page.keyboard.press("Tab")
        raise AssertionError(f"Tab never reaches {target}")

    await tab_to(page.get_by_label("Token", exact=True))
    await page.keyboard.type(console.org_admin)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Teams")).to_be_visible()
    await tab_to(page.get_by_role("link", name="platform", exact=True))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="platform", exact=True)).to_be_visible()
    await tab_to(page.get_by_role("button", name="Create token"))
    await page.keyboard.press("Enter")
    form = dialog(page, "Create token")
    await expect(form).to_be_visible()
    assert await form.evaluate("(d) => d.contains(document.activeElement)")  # focus moved in
    await page.keyboard.press("Escape")
    await expect(form).to_be_hidden()

    # create, copy and revoke a token, keys only
    await tab_to(page.get_by_role("button", name="Create token"))
    await page.keyboard.press("Enter")
    await tab_to(form.get_by_label("Name", exact=True))
    await page.keyboard.type("typed")
    await tab_to(form.get_by_role("checkbox", name="read:apis"))
    await page.keyboard.press("Space")
    await tab_to(form.get_by_role("button", name="Create", exact=True))
    await page.keyboard.press("Enter")
    token = await new_token_from(page)
    shown = copy_dialog(page)
    await tab_to(shown.get_by_role("button", name="Copy", exact=True))
    await page.keyboard.press("Enter")
    await expect(shown).to_contain_text("Copied")
    assert await read_clipboard(page) == token
    await tab_to(shown.get_by_role("button", name="Done"))
    await page.keyboard.press("Enter")
    await expect(shown).to_be_hidden()
    typed = row(tokens_table(page), "typed")
    await tab_to(typed.get_by_role("button", name="Revoke"))
    await page.keyboard.press("Enter")
    confirm = dialog(page, "Revoke token")
    await tab_to(confirm.get_by_role("button", name="Revoke token"))
    await page.keyboard.press("Enter")
    await expect(typed).to_contain_text("revoked")
    assert await console.through(token) == 401
    assert tab.watch.problems() == []


# -- security headers ------------------------------------------------------------------------------
def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


async def test_console_responses_carry_the_security_headers(console: Console) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(console.ui) as response:
            assert response.status == 200 and response.content_type == "text/html"
            html, headers = await response.text(), response.headers
        assets = sorted(set(re.findall(r'(?:src|href)="([^"#?]+\.(?:js|css|svg|png|ico))"', html)))
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), html
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # no inline script
        csp = headers["Content-Security-Policy"]
        directives = csp_directives(csp)
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
        assert directives["frame-ancestors"] == ["'none'"], csp
        assert directives["connect-src"] == ["'self'"], csp
        for kind in ("script-src", "style-src"):
            sources = directives.get(kind, directives.get("default-src"))
            assert sources is not None and "*" not in sources and "data:" not in sources, csp
        answers = [(console.ui, headers)]
        for asset in assets:
            url = URL(console.ui).join(URL(asset))
            assert url.origin() == URL(console.origin).origin(), asset  # served here, no CDN
            async with session.get(url) as answer:
                assert answer.status == 200, url
                answers.append((str(url), answer.headers))
        for where, got in answers:
            assert got.get("X-Content-Type-Options") == "nosniff", where
            assert got.get("Referrer-Policy") == "no-referrer", where
        # nothing outside the console's files, however the path is spelled
        for sneaky in ("%2e%2e/%2e%2e/pyproject.toml", "..%2f..%2fpyproject.toml", "..%2fconsole.py"):
            async with session.get(URL(console.ui + sneaky, encoded=True)) as answer:
                body = await answer.read()
                assert b"[build-system]" not in body and b"\ndef " not in body, sneaky
        # the console is the admin listener's: the gateway's request path does not serve it
        async with session.get(console.gw.url + "/ui/") as answer:
            assert answer.status != 200


# -- screenshots ---------------------------------------------------------------------------------
@pytest.mark.screenshots
async def test_screenshots_of_the_main_screens(tab: Tab, console: Console, tmp_path: Path) -> None:
    """Tours the main screens; with TOKENWARD_SCREENSHOTS=1 writes the README's screenshots to
    docs/console/ (commit them), otherwise to a temporary directory."""
    out = DOCS if os.environ.get("TOKENWARD_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    page = tab.page
    await console.issue(name="nightly-backup", scopes=["read:apis", "write:apis"])
    await console.issue(name="grafana", service_account="deployer")

    async def shoot(name: str) -> None:
        assert name in SCREENS
        await page.screenshot(path=str(out / f"{name}.png"), animations="disabled", caret="hide")

    await page.goto(console.ui)
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await shoot("signin")
    await sign_in(tab, console, console.org_admin)
    await expect(page.get_by_role("link", name="payroll", exact=True)).to_be_visible()
    await shoot("teams")
    await page.get_by_role("link", name="platform", exact=True).click()
    table = tokens_table(page)
    await expect(row(table, "grafana")).to_be_visible()
    await shoot("tokens")
    form = await create_token(page, "release-pipeline", "read:apis", "write:apis")
    await form.get_by_label("Description").fill("Publishes API specs from the release job")
    await form.get_by_label("Service account").select_option(label="deployer")
    await shoot("create")
    await form.get_by_role("button", name="Create", exact=True).click()
    await new_token_from(page)
    await shoot("copy")
    await copy_dialog(page).get_by_role("button", name="Copy", exact=True).click()
    await copy_dialog(page).get_by_role("button", name="Done").click()
    await row(table, "release-pipeline").get_by_role("button", name="Details").click()
    await expect(dialog(page, "Token details")).to_contain_text("deployer")
    await expect(dialog(page, "Token details")).to_contain_text("requests")  # its usage report
    await shoot("details")
    await dialog(page, "Token details").get_by_role("button", name="Close").click()
    await page.get_by_role("tab", name="Service accounts").click()
    accounts = page.get_by_role("table", name="Service accounts")
    await expect(accounts.get_by_role("row").filter(has_text="deployer")).to_be_visible()
    await shoot("accounts")
    await page.get_by_role("tab", name="Audit").click()
    audit = page.get_by_role("table", name="Audit events")
    await expect(audit).to_contain_text("token.created")
    await shoot("audit")
    await page.get_by_role("tab", name="Settings").click()
    await expect(page.get_by_label("Permissions")).to_have_value(re.compile("admin:team"))
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(SCREENS)
    assert tab.watch.problems() == []


async def test_the_readme_shows_screenshots_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^##+ .*Console", readme, re.MULTILINE), "the README has no Console section"
    shown = re.findall(r"docs/console/([\w.-]+\.png)", readme)
    assert shown, "the README shows no screenshot of the console"
    for name in shown:
        assert Path(name).stem in SCREENS, f"{name} is no screenshot the tests take"
        assert (DOCS / name).is_file(), f"docs/console/{name} is missing: TOKENWARD_SCREENSHOTS=1"
    # and every screenshot the tests take is shown: none is left behind in docs/
    assert sorted({Path(name).stem for name in shown}) == sorted(SCREENS)
    assert sorted(p.name for p in DOCS.iterdir()) == sorted(f"{name}.png" for name in SCREENS)
