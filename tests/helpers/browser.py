"""A real browser for the console's tests: Debian's `chromium` (installed by the test run
like nginx, see tests/helpers/debian.py), driven by Playwright's async API on the system
binary. Playwright never downloads a browser here: `executable_path` names the system one,
and nothing runs `playwright install`.

The async API, because the tests run in pytest-asyncio's loop and the sync API refuses to
start inside a running loop. A browser belongs to the loop that launched it: the one browser
of the session is launched in the session's loop, so the tests that use it run there too
(`pytest.mark.asyncio(loop_scope="session")`, see tests/test_console_browser.py).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, Request

# Fixed, so screenshots are stable and the layout is the laptop-sized one the issue asks for.
VIEWPORT = {"width": 1280, "height": 800}
# --no-sandbox: the tests run as root (CI does), where Chromium's sandbox refuses to start; the
# browser only ever visits the console the test started on 127.0.0.1.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
CLIPBOARD = ["clipboard-read", "clipboard-write"]
# How long an `expect` waits for what it asserts (Playwright's default, 5 s, is short on a busy
# two-core CI machine); a passing assertion returns as soon as it holds.
EXPECT_TIMEOUT_MS = 20_000

# Reports every Content-Security-Policy violation of the page to the test (`Watch.csp`).
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__tokenwardCspViolation(
    `${event.violatedDirective} blocked ${event.blockedURI || "(inline)"} at ${event.sourceFile}:${event.lineNumber}`
  );
}, true);
"""


def find_chromium() -> str | None:
    """Debian's chromium (a wrapper script in /usr/bin that runs /usr/lib/chromium/chromium)."""
    found = shutil.which("chromium")
    if found:
        return found
    for candidate in ("/usr/bin/chromium", "/usr/lib/chromium/chromium"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


async def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    """Headless Chromium from the system binary."""
    return await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)


@dataclass
class Watch:
    """What a page did that a test may check afterwards: console messages, uncaught errors,
    CSP violations and every request it made (URL and headers)."""

    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.csp.append(message.text)

    def on_request(self, request: Request) -> None:
        self.requests.append((request.url, dict(request.headers)))

    def on_error(self, error: Exception) -> None:
        self.errors.append(str(error))

    def on_csp(self, report: str) -> None:
        self.csp.append(report)

    def problems(self) -> list[str]:
        """CSP violations and uncaught script errors: a clean page has none. (Console errors
        are not among them: Chromium logs every 4xx answer to a fetch as one, and the
        console gets some on purpose, e.g. a refused sign-in.)"""
        return [*self.csp, *self.errors]


@dataclass
class Tab:
    """One test's browser context (its own storage and cookies) and its page, watched."""

    context: BrowserContext
    page: Page
    watch: Watch


async def new_tab(browser: Browser, origin: str) -> Tab:
    """A fresh context (no cookies, no storage) with the clipboard granted for `origin`, and
    its one page, watched."""
    context = await browser.new_context(
        viewport=VIEWPORT,  # type: ignore[arg-type]  # a ViewportSize TypedDict
        device_scale_factor=1,
        locale="en-US",
        timezone_id="UTC",
        color_scheme="light",
    )
    await grant_clipboard(context, origin)
    watch = Watch()
    await context.expose_function("__tokenwardCspViolation", watch.on_csp)
    await context.add_init_script(CSP_LISTENER)
    page = await context.new_page()
    page.on("console", watch.on_console)
    page.on("pageerror", watch.on_error)
    page.on("request", watch.on_request)
    return Tab(context, page, watch)


async def grant_clipboard(context: BrowserContext, origin: str) -> None:
    """Lets pages of `origin` write and read the clipboard (the copy-once dialog's Copy button,
    and the test reading back what it copied)."""
    await context.grant_permissions(CLIPBOARD, origin=origin)


async def read_clipboard(page: Page) -> str:
    text: Any = await page.evaluate("navigator.clipboard.readText()")
    assert isinstance(text, str)
    return text
