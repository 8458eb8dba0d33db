"""The admin console's team tabs in a real browser (issue 15): the tokens table's filters and
pages, the Service accounts tab, the Audit tab and the Settings tab; driven by accessible names
like tests/test_console_browser.py, on the same session browser.
"""

from __future__ import annotations

import datetime

import pytest
from playwright.async_api import Locator, expect

from tests.helpers.browser import Tab
from tests.helpers.console import (
    ACCOUNTS,
    Console,
    beside,
    create_token,
    dialog,
    open_platform,
    row,
    tokens_table,
)
from tests.helpers.gateway import admin

# The browser and the console live in the session's loop (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


def body_rows(table: Locator) -> Locator:
    return table.locator("tbody").get_by_role("row")


async def test_the_tokens_table_filters_and_pages(tab: Tab, console: Console) -> None:
    # oldest first, 25 a page: platform-admin, reader, grafana, short-lived, bulk-00..20 | bulk-21..25
    await console.issue(name="grafana", service_account="deployer")
    await console.issue(name="short-lived", expires_in="2d")
    for i in range(26):
        await console.issue(name=f"bulk-{i:02d}")
    await console.revoke(console.ids["bulk-03"])
    page = tab.page
    table = await open_platform(tab, console)
    rows = body_rows(table)
    await expect(rows).to_have_count(25)
    await expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
    await page.get_by_role("button", name="Next page").click()
    await expect(rows).to_have_count(5)
    await expect(row(table, "bulk-25")).to_be_visible()
    await expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    await page.get_by_role("button", name="Previous page").click()
    await expect(rows).to_have_count(25)
    await expect(row(table, "bulk-20")).to_be_visible()

    status = page.get_by_label("Status", exact=True)
    await status.select_option("revoked")
    await expect(rows).to_have_count(1)
    await expect(row(table, "bulk-03")).to_contain_text("revoked")
    await status.select_option("")
    await expect(rows).to_have_count(25)

    expiring = page.get_by_label("Expiring within")
    await expiring.select_option("7d")
    await expect(rows).to_have_count(1)
    await expect(row(table, "short-lived")).to_be_visible()
    await expiring.select_option("")
    await expect(rows).to_have_count(25)

    account = page.get_by_label("Service account", exact=True)
    await account.select_option("deployer")
    await expect(rows).to_have_count(1)
    await expect(row(table, "grafana")).to_contain_text("deployer")
    await account.select_option("")
    await expect(rows).to_have_count(25)

    await page.get_by_label("Search").fill("bulk-1")  # the loaded page only
    await expect(rows).to_have_count(10)
    await page.get_by_label("Search").fill("")
    await expect(rows).to_have_count(25)
    assert tab.watch.problems() == []


async def test_the_service_accounts_tab(tab: Tab, console: Console) -> None:
    await console.issue(name="grafana", service_account="deployer")
    page = tab.page
    await open_platform(tab, console)
    await page.get_by_role("tab", name="Service accounts").click()
    accounts = page.get_by_role("table", name="Service accounts")
    await expect(row(accounts, "deployer")).to_contain_text("CI deploys")

    await page.get_by_role("button", name="Create service account").click()
    form = dialog(page, "Create service account")
    name = form.get_by_label("Name", exact=True)
    await name.fill("Not A Name")
    await form.get_by_role("button", name="Create", exact=True).click()
    alert = form.get_by_role("alert")
    await expect(alert).to_be_visible()  # the server's refusal, beside the field it names
    assert await beside(alert, name) == ""
    await name.fill("builder")
    await form.get_by_label("Description").fill("<i>builds</i> images")
    await form.get_by_role("button", name="Create", exact=True).click()
    await expect(form).to_be_hidden()
    await expect(row(accounts, "builder")).to_contain_text("<i>builds</i> images")
    assert await page.locator("i", has_text="builds").count() == 0
    _, listed, _ = await admin(console.gw, "GET", ACCOUNTS, console.org_admin)
    assert {a["name"] for a in listed["service_accounts"]} == {"deployer", "builder"}

    await row(accounts, "builder").get_by_role("button", name="Delete").click()
    confirm = dialog(page, "Delete service account")
    await confirm.get_by_role("button", name="Delete service account").click()
    await expect(row(accounts, "builder")).to_have_count(0)

    # an account's Tokens link: the Tokens tab, filtered by it
    await row(accounts, "deployer").get_by_role("link", name="Tokens").click()
    table = tokens_table(page)
    await expect(row(table, "grafana")).to_be_visible()
    await expect(row(table, "reader")).to_have_count(0)
    await expect(page.get_by_label("Service account", exact=True)).to_have_value("deployer")
    assert tab.watch.problems() == []


async def test_the_audit_tab_filters_and_attributes_refusals(tab: Tab, console: Console) -> None:
    watcher = await console.issue(name="watcher")
    await console.revoke(watcher["id"])
    assert await console.through(watcher["token"]) == 401
    await console.gw.runtime.audit.flush()  # the gateway's events are written behind, batched
    page = tab.page
    await open_platform(tab, console)
    await page.get_by_role("tab", name="Audit").click()
    audit = page.get_by_role("table", name="Audit events")
    await expect(audit).to_contain_text("token.revoked")

    await page.get_by_label("Action").select_option("request.denied")
    await page.get_by_role("button", name="Apply").click()
    refused = body_rows(audit)
    await expect(refused.filter(has_text="token.revoked")).to_have_count(0)
    await expect(refused).to_have_count(1)
    await expect(refused).to_contain_text("request.denied")
    await expect(refused).to_contain_text(watcher["id"])  # attributed to the token

    await page.get_by_label("Action").select_option("")
    await page.get_by_label("Token ID").fill(watcher["id"])
    await page.get_by_role("button", name="Apply").click()
    await expect(body_rows(audit)).to_have_count(3)  # created, revoked, refused
    for action in ("token.created", "token.revoked", "request.denied"):
        await expect(body_rows(audit).filter(has_text=action)).to_have_count(1)
    assert tab.watch.problems() == []


async def test_settings_change_the_scopes_tokens_may_hold(tab: Tab, console: Console) -> None:
    await console.issue(name="nightly", scopes=["read:apis", "write:apis"])
    page = tab.page
    table = await open_platform(tab, console)
    await expect(row(table, "nightly")).not_to_contain_text("not granted by the team")
    await page.get_by_role("tab", name="Settings").click()
    permissions = page.get_by_label("Permissions")
    await expect(permissions).to_have_value("read:apis\nwrite:apis\nadmin:team")
    await permissions.fill("read:apis\nadmin:team")
    await page.get_by_role("button", name="Save").click()
    confirm = dialog(page, "Remove scopes")  # it acts on every token of the team at once
    await expect(confirm).to_contain_text("write:apis")
    await confirm.get_by_role("button", name="Remove scopes").click()
    await expect(page.get_by_role("status")).to_contain_text("Saved")

    await page.get_by_role("tab", name="Tokens").click()
    await expect(row(table, "nightly")).to_contain_text("not granted by the team")
    await page.get_by_role("button", name="Create token").click()
    form = dialog(page, "Create token")
    await expect(form.get_by_role("checkbox", name="read:apis")).to_be_visible()
    await expect(form.get_by_role("checkbox", name="write:apis")).to_have_count(0)
    assert tab.watch.problems() == []


async def test_create_with_a_custom_expiry_date(tab: Tab, console: Console) -> None:
    """Expires: 90 days by default; a date within tokens.max_ttl (365d here) is the token's
    expiry, one beyond it is the server's refusal, shown in the dialog."""
    page = tab.page
    await open_platform(tab, console)
    form = await create_token(page, "dated", "read:apis")
    expires = form.get_by_label("Expires", exact=True)
    await expect(expires.locator("option:checked")).to_have_text("90 days")
    await expires.select_option(label="Custom date")
    today = datetime.datetime.now(datetime.UTC).date()
    date = form.get_by_label("Expiry date")
    await date.fill((today + datetime.timedelta(days=3 * 365)).isoformat())
    await form.get_by_role("button", name="Create", exact=True).click()
    await expect(form.get_by_role("alert")).to_contain_text("max_ttl")
    wanted = (today + datetime.timedelta(days=30)).isoformat()
    await date.fill(wanted)
    await form.get_by_role("button", name="Create", exact=True).click()
    await expect(dialog(page, "Copy your new token")).to_contain_text(f"expires {wanted}T00:00:00Z")
    assert tab.watch.problems() == []


async def test_the_pages_fit_a_small_laptop_screen(tab: Tab, console: Console) -> None:
    """At 1024x640 nothing but the tables' own scrolling boxes is wider than the window, and
    the team page's controls are on screen."""
    page = tab.page
    await page.set_viewport_size({"width": 1024, "height": 640})
    no_overflow = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    await page.goto(console.ui)
    await expect(page.get_by_role("button", name="Sign in")).to_be_in_viewport()
    assert await page.evaluate(no_overflow)
    table = await open_platform(tab, console)
    await expect(page.get_by_role("button", name="Create token")).to_be_in_viewport()
    await expect(page.get_by_role("button", name="Sign out")).to_be_in_viewport()
    assert await page.evaluate(no_overflow)
    await row(table, "reader").get_by_role("button", name="Details").click()
    await expect(dialog(page, "Token details").get_by_role("button", name="Close")).to_be_visible()
    assert await page.evaluate(no_overflow)
    assert tab.watch.problems() == []
