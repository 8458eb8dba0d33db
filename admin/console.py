"""The admin console (`/ui/`, on the admin listener): static ES modules and CSS over the `/v1`
API, with nothing of its own on the server but these files and their security headers.

The files are read once, when the admin app is built, into a fixed table: a request can only
name one of them (no path is ever joined to a directory). Every response carries a strict
Content-Security-Policy (scripts and styles from this origin only, no inline code, API calls to
this origin only, never framed), `nosniff` and `no-referrer`. The gateway's request path never
sees any of this: it is served by the admin listener alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from aiohttp import web

from tokenward.endpoints import CALL, api_error
from tokenward.gateway.edge import error_response
from tokenward.gateway.refusal import Refusal

PREFIX = "/ui/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
        # a new release's files are fetched again: a stale app.js against a newer API is worse
        # than one more request
        "Cache-Control": "no-cache",
    }
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> Mapping[str, Asset]:
    """Every file of the console, by name (`index.html`, `app.js`, ...)."""
    folder = resources.files("tokenward") / "console"
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in CONTENT_TYPES:
            assets[entry.name] = Asset(entry.read_bytes(), CONTENT_TYPES[suffix])
    if "index.html" not in assets:
        raise RuntimeError(f"the console's files are missing from {folder}")
    return MappingProxyType(assets)


def asset_response(asset: Asset) -> web.Response:
    return web.Response(body=asset.body, headers={"Content-Type": asset.content_type, **SECURITY_HEADERS})


def refused(request: web.Request, refusal: Refusal) -> web.Response:
    """The API's JSON error, with the console's headers."""
    response = error_response(refusal, request[CALL].request_id)
    response.headers.update(SECURITY_HEADERS)
    return response


def add_console(app: web.Application) -> None:
    """Serve the console at `/ui/` (and `/ui`, redirected) on `app`."""
    assets = load_assets()

    async def index(request: web.Request) -> web.Response:
        return asset_response(assets["index.html"])

    async def redirect(request: web.Request) -> web.Response:
        # relative, so that it holds behind a proxy that publishes the listener under a prefix
        raise web.HTTPPermanentRedirect("ui/", headers=SECURITY_HEADERS)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = assets.get(name)
        if found is None:
            return refused(request, api_error(404, "not_found", f"no console file {name!r}"))
        return asset_response(found)

    async def elsewhere(request: web.Request) -> web.Response:
        """Anything else under /ui: a 404 (or 405) with the same headers as the files."""
        if request.method not in ("GET", "HEAD"):
            message = f"the console's files are read with GET, not {request.method}"
            response = refused(request, api_error(405, "method_not_allowed", message))
            response.headers["Allow"] = "GET, HEAD"
            return response
        name = request.path.removeprefix(PREFIX)
        return refused(request, api_error(404, "not_found", f"no console file {name!r}"))

    app.router.add_get("/ui", redirect)
    app.router.add_get(PREFIX, index)
    app.router.add_get(PREFIX + "{name}", asset)
    app.router.add_route("*", "/ui", elsewhere)
    app.router.add_route("*", PREFIX + "{tail:.*}", elsewhere)
