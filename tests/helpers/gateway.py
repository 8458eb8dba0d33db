"""The in-process gateway the tests drive: its config (the demo's route table), the `Gateway`
handle a fixture starts, the audit log reader, and calls through the proxy and the admin API.
The fixtures that start things live in tests/conftest.py and use these.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tokenward.demo import demo_routes
from tokenward.gateway.logs import configure_logging
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.runtime import Runtime
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import LogSettings
from tokenward.gateway.tokens import checksum
from tokenward.server import Server
from tokenward.service import issue_token

ROOT = Path(__file__).resolve().parent.parent.parent
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
APIS = "/orgs/acme/teams/platform/apis"
EVENTS = "/orgs/acme/teams/platform/events"  # the demo's WebSocket route, added by `with_events`
TEAMS = "/v1/orgs/acme/teams"  # admin API
TOKENS = "/v1/orgs/acme/teams/platform/tokens"
# the identity headers tokenward sets for the upstream, as documented (test_deploy pins them)
IDENTITY = (
    "X-Tokenward-Token-Id",
    "X-Tokenward-Token-Name",
    "X-Tokenward-Org",
    "X-Tokenward-Team",
    "X-Tokenward-Service-Account",
    "X-Tokenward-Scopes",
)
# and for a child token (POST /v1/delegate) only: its parent and its agent run
CHILD_IDENTITY = ("X-Tokenward-Parent-Id", "X-Tokenward-Run-Id")

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


def base_config(upstream_port: int) -> dict[str, Any]:
    """The tests' config: the demo's route table (`tokenward.demo.demo_routes`) with spec
    writes also by PUT, and a project/environment route in place of the demo's WebSocket
    stream (`with_events` adds that one back)."""
    routes = [route for route in demo_routes("registry") if not route.get("websocket")]
    routes[3]["methods"] = ["POST", "PUT"]
    routes.insert(
        4,
        {
            "methods": ["GET"],
            "path": "/orgs/{org}/projects/{project}/envs/{environment}/secrets",
            "upstream": "registry",
            "scopes": ["read:secrets"],
            "resource": {"org": "org", "project": "project", "environment": "environment"},
        },
    )
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin_listen": {"host": "127.0.0.1", "port": 0},
        "tokens": {"prefix": "tw_sat", "default_ttl": "90d", "max_ttl": "365d", "argon2": CHEAP_ARGON2},
        "trusted_proxies": ["10.99.0.0/16"],
        "upstreams": {"registry": {"url": f"http://127.0.0.1:{upstream_port}", "timeout": "2s"}},
        "routes": routes,
    }


def with_events(config: dict[str, Any], websocket: bool = True) -> dict[str, Any]:
    """`config` plus the demo's event-stream route (a WebSocket unless told otherwise)."""
    config = copy.deepcopy(config)
    [events] = [route for route in demo_routes("registry") if route.get("websocket")]
    config["routes"].append({**events, "websocket": websocket})
    return config


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


# -- through the proxy ------------------------------------------------------------------------
async def get(gw: Gateway, path: str = "/health", method: str = "GET", **kw: Any) -> tuple[int, Any, bytes]:
    async with gw.session.request(method, gw.url + path, **kw) as response:
        return response.status, response.headers, await response.read()


async def apis_status(gw: Gateway, token: str) -> int:
    """The status of GET on the platform team's APIs with `token`."""
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        await r.read()
        return r.status


def last_char_changed(text: str) -> str:
    """`text` with its last character replaced by a different one (never the same string:
    replacing it with a fixed letter gives the token back when it already ends with it)."""
    return text[:-1] + ("x" if text[-1] != "x" else "y")


def wrong_secrets(kid: str, count: int, offset: int = 0) -> list[str]:
    """Well-formed tokens (valid checksum) for key id `kid` with secrets that are not its own."""
    tokens = []
    for i in range(offset, offset + count):
        head = f"tw_sat_{kid}" + f"{i:032d}"
        tokens.append(head + checksum(head))
    return tokens


# -- the admin API ----------------------------------------------------------------------------
async def admin(
    gw: Gateway, method: str, path: str, token: str | None, body: Any = None, **kw: Any
) -> tuple[int, Any, Any]:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with gw.session.request(method, gw.admin_url + path, headers=headers, json=body, **kw) as r:
        data = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, data, r.headers


async def org_admin_with_team(gw: Gateway, permissions: list[str]) -> str:
    """An org admin's token, after it created the team `platform` with `permissions`."""
    token = await gw.org_admin()
    status, _, _ = await admin(gw, "POST", TEAMS, token, {"name": "platform", "permissions": permissions})
    assert status == 201
    return token


async def issue(gw: Gateway, admin_token: str, **body: Any) -> dict[str, Any]:
    """A token of team `platform` issued through the admin API (read:apis, named ci, by default)."""
    body.setdefault("name", "ci")
    body.setdefault("scopes", ["read:apis"])
    status, data, _ = await admin(gw, "POST", TOKENS, admin_token, body)
    assert status == 201, data
    return dict(data)


# -- metrics ----------------------------------------------------------------------------------
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: Gateway) -> Samples:
    async with gw.session.get(gw.admin_url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return samples.get(key, 0.0)
