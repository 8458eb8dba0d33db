"""The console's server side (admin/console.py): its files, their security headers, and what
the gateway listener does not serve. The flows run in a real browser in
tests/test_console_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.gateway import ROOT, Gateway

CONSOLE = ROOT / "admin" / "console"
FILES = sorted(path.name for path in CONSOLE.iterdir() if path.suffix in {".html", ".js", ".css"})


@pytest.mark.parametrize("name", ["", *FILES])
async def test_every_file_is_served_with_the_strict_headers(gateway: Gateway, name: str) -> None:
    async with gateway.session.get(f"{gateway.admin_url}/ui/{name}") as response:
        assert response.status == 200
        body = await response.read()
        headers = response.headers
    assert body == (CONSOLE / (name or "index.html")).read_bytes()
    csp = headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    expected = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}[Path(name or "x.html").suffix]
    assert headers["Content-Type"].startswith(expected)


async def test_ui_without_slash_redirects(gateway: Gateway) -> None:
    async with gateway.session.get(f"{gateway.admin_url}/ui", allow_redirects=False) as response:
        assert response.status == 308
        assert response.headers["Location"] == "ui/"  # relative: holds under a path prefix


@pytest.mark.parametrize(
    "name",
    ["missing.js", "..%2Fapi.py", "%2e%2e%2fconsole.py", "console.py", "app.js.map", ".%2Fapp.js", "/", "a/b.js",
     "index.html/", "%5C..%5Capi.py", "app.js%00"],
)  # fmt: skip
async def test_only_the_console_files_are_served(gateway: Gateway, name: str) -> None:
    async with gateway.session.get(f"{gateway.admin_url}/ui/{name}") as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("where", ["/ui", "/ui/", "/ui/app.js", "/ui/x/y"])
async def test_other_methods_get_405_with_the_same_headers(gateway: Gateway, method: str, where: str) -> None:
    async with gateway.session.request(method, f"{gateway.admin_url}{where}") as response:
        assert response.status == 405
        assert (await response.json())["error"] == "method_not_allowed"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_the_gateway_listener_does_not_serve_the_console(gateway: Gateway) -> None:
    async with gateway.session.get(f"{gateway.url}/ui/") as response:
        assert response.status != 200 or b"tokenward console" not in await response.read()


def test_nothing_is_ever_written_as_html() -> None:
    """Names are chosen by callers: the console builds every element with createElement and
    text nodes. No HTML parsing sink, no eval, no inline handler, no inline style anywhere."""
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setAttribute\(\s*[\"']on"
        r"|\.style\.|srcdoc|DOMParser|createContextualFragment"
    )
    for path in CONSOLE.glob("*.js"):
        found = sinks.findall(path.read_text())
        assert not found, f"{path.name}: {found}"
    index = (CONSOLE / "index.html").read_text()
    assert "<script>" not in index
    assert not re.search(r"\s(on[a-z]+|style)\s*=", index)


def test_the_token_lives_in_session_storage_only() -> None:
    """Never a cookie, never localStorage (outlives the tab), never the URL."""
    code = "\n".join(path.read_text() for path in CONSOLE.glob("*.js"))
    assert "sessionStorage" in code
    assert "localStorage" not in code
    assert "document.cookie" not in code
    assert 'credentials: "omit"' in code
