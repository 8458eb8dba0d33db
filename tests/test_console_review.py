"""What two outside reviews of the console found, in a real browser (issue 15): slow or failed
answers that belong to a page no longer shown, dialogs outliving their page, the copy-once
dialog surviving a sign-out, a transient failure that must not forget the token, and scopes
the signed-in token cannot grant."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import Route, expect

from tests.helpers.browser import Tab
from tests.helpers.console import Console, copy_dialog, dialog, new_token_from, open_platform, row, sign_in

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def settled(tab: Tab) -> None:
    """The page has run what an answer that just arrived set off (a task turn after it)."""
    await tab.page.evaluate("() => new Promise((done) => setTimeout(done, 0))")


async def test_a_failure_of_an_older_filter_does_not_replace_the_newer_page(tab: Tab, console: Console) -> None:
    page = tab.page
    table = await open_platform(tab, console)
    release = asyncio.Event()

    async def slow_failure(route: Route) -> None:
        await release.wait()
        await route.fulfill(status=503, json={"error": "store_unavailable", "message": "store busy"})

    await page.route(re.compile(r"/tokens\?.*status=revoked"), slow_failure)
    status = page.get_by_label("Status", exact=True)
    await status.select_option("revoked")  # held, and it will fail
    await status.select_option("active")
    await expect(row(table, "reader")).to_be_visible()
    async with page.expect_event("requestfinished", lambda request: "status=revoked" in request.url):
        release.set()
    await settled(tab)
    await expect(page.get_by_role("heading", name="Something went wrong")).to_have_count(0)
    await expect(row(table, "reader")).to_be_visible()


async def test_a_failure_of_an_older_navigation_does_not_replace_the_newer_page(tab: Tab, console: Console) -> None:
    page = tab.page
    await open_platform(tab, console)
    release = asyncio.Event()

    async def slow_404(route: Route) -> None:
        await release.wait()
        await route.fulfill(status=404, json={"error": "not_found", "message": "team 'gone' does not exist"})

    await page.route(re.compile(r"/v1/orgs/acme/teams/gone$"), slow_404)
    await page.evaluate("location.hash = '#/teams/gone/tokens'")
    await page.evaluate("location.hash = '#/teams/payroll/tokens'")
    await expect(page.get_by_role("heading", name="payroll", exact=True)).to_be_visible()
    async with page.expect_event("requestfinished", lambda request: request.url.endswith("/teams/gone")):
        release.set()
    await settled(tab)
    await expect(page.get_by_role("heading", name="Something went wrong")).to_have_count(0)
    await expect(page.get_by_role("heading", name="payroll", exact=True)).to_be_visible()


async def test_a_dialog_closes_when_its_page_does(tab: Tab, console: Console) -> None:
    page = tab.page
    await open_platform(tab, console)
    await page.get_by_role("button", name="Create token").click()
    await expect(dialog(page, "Create token")).to_be_visible()
    await page.evaluate("location.hash = '#/teams/payroll/tokens'")
    await expect(page.get_by_role("heading", name="payroll", exact=True)).to_be_visible()
    await expect(dialog(page, "Create token")).to_have_count(0)


async def test_rotating_the_signed_in_token_keeps_its_replacement_on_screen(tab: Tab, console: Console) -> None:
    """Grace 0s ends the signed-in token at once: the next call gets 401 and signs out, but the
    copy-once dialog with the replacement stays until it is closed."""
    page = tab.page
    await sign_in(tab, console, console.team_admin)
    table = page.get_by_role("table", name="Tokens")
    await row(table, "platform-admin").get_by_role("button", name="Rotate").click()
    rotate = dialog(page, "Rotate token")
    await expect(rotate).to_contain_text("the token you are signed in with")
    await rotate.get_by_label("Grace period").fill("0s")
    await rotate.get_by_role("button", name="Rotate token").click()
    replacement = await new_token_from(page)
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()  # signed out meanwhile
    await expect(copy_dialog(page)).to_be_visible()
    await copy_dialog(page).get_by_role("button", name="Copy").click()
    await copy_dialog(page).get_by_role("button", name="Done").click()
    assert await console.through(replacement) == 200


async def test_a_transient_failure_at_start_keeps_the_token(tab: Tab, console: Console) -> None:
    page = tab.page
    await open_platform(tab, console)

    async def unavailable(route: Route) -> None:
        await route.fulfill(status=503, json={"error": "store_unavailable", "message": "store restarting"})

    await page.route(re.compile(r"/v1/whoami$"), unavailable)
    await page.reload()
    await expect(page.get_by_role("heading", name="Cannot reach the admin API")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('tokenward.token')") == console.org_admin
    await page.unroute(re.compile(r"/v1/whoami$"))
    await page.get_by_role("button", name="Try again").click()
    await expect(page.get_by_role("heading", name="platform", exact=True)).to_be_visible()  # where it was


async def test_a_team_admin_is_not_offered_scopes_it_cannot_grant(tab: Tab, console: Console) -> None:
    narrow = (await console.issue(name="narrow-admin", scopes=["admin:team"]))["token"]
    page = tab.page
    await sign_in(tab, console, narrow)
    table = page.get_by_role("table", name="Tokens")
    await expect(row(table, "reader")).to_be_visible()
    await expect(row(table, "reader").get_by_role("button", name="Rotate")).to_have_count(0)
    await page.get_by_role("button", name="Create token").click()
    form = dialog(page, "Create token")
    await expect(form.get_by_role("checkbox", name="read:apis")).to_be_disabled()
    await expect(form.get_by_role("checkbox", name="admin:team")).to_be_enabled()
    assert tab.watch.problems() == []
