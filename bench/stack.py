"""The system under test: Valkey, the upstream, the bare proxy, `tokenward serve`, a second
(in-process) tokenward gateway, and the tokens the scenarios use."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tokenward.gateway.embedded import EmbeddedServer, free_ports
from tokenward.gateway.logs import configure_logging
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import LogSettings, settings_from_dict
from tokenward.gateway.tokens import BASE62, SECRET_LEN, checksum
from tokenward.server import Server
from tokenward.service import issue_token

from services import (
    BENCH,
    CLIENT_CORE,
    PYTHON,
    SERVER_CORE,
    TOKENWARD,
    Processes,
    free_port,
    pin_all_threads,
    wait_http,
)

UPSTREAM_BODY = b'{"apis": ["billing", "search"]}\n'  # what bench/upstream.py answers too
ORG = "acme"
TEAM = "bench"
PREFIX = "tw_sat"
ROUTE_PATH = f"/orgs/{ORG}/teams/{TEAM}/apis"
SUBJECTS = 4  # tokens the revocation trials take turns with (> 0.5 s poll / trial length)


def tokenward_config(
    port: int, admin_port: int, redis_url: str, upstream_port: int, data_dir: Path
) -> dict[str, Any]:
    """Production-like: JSON audit lines, default argon2id parameters, one scoped route.
    127.0.0.1 is a trusted proxy, or forward-auth (/_tokenward/verify) would answer 403; for
    the proxied lines that changes nothing wrk's requests show (see bench/README.md)."""
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin_listen": {"host": "127.0.0.1", "port": admin_port},
        "redis": {"url": redis_url},
        "trusted_proxies": ["127.0.0.1/32"],
        "data_dir": str(data_dir),
        "tokens": {"prefix": PREFIX, "default_ttl": "90d", "max_ttl": "365d", "cache_ttl": "30s"},
        "log": {"level": "info", "format": "json"},
        "upstreams": {"registry": {"url": f"http://127.0.0.1:{upstream_port}", "timeout": "30s"}},
        "routes": [
            {
                "methods": ["GET"],
                "path": "/orgs/{org}/teams/{team}/apis",
                "upstream": "registry",
                "scopes": ["read:apis"],
                "resource": {"org": "org", "team": "team"},
            }
        ],
    }


@dataclass
class Credentials:
    admin: str = ""
    legit: str = ""
    legit_id: str = ""
    subjects: list[tuple[str, str]] = field(default_factory=list)  # (token, id) revoked in turn
    cold: list[str] = field(default_factory=list)
    cold_ids: list[str] = field(default_factory=list)
    spare: list[str] = field(default_factory=list)  # never sent before the memory lines


@dataclass
class Stack:
    workdir: Path
    processes: Processes
    valkey: EmbeddedServer | None = None
    upstream_port: int = 0
    bare_port: int = 0
    bare: subprocess.Popen[bytes] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tokenward: subprocess.Popen[bytes] | None = None
    tokenward_log: Path | None = None
    inproc: Server | None = None
    creds: Credentials = field(default_factory=Credentials)
    inproc_log: IO[bytes] | None = None
    upstream_kind: str = ""

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def bare_url(self) -> str:
        return f"http://127.0.0.1:{self.bare_port}"

    @property
    def tokenward_url(self) -> str:
        return f"http://127.0.0.1:{self.config['listen']['port']}"

    @property
    def tokenward_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config['admin_listen']['port']}"

    @property
    def inproc_url(self) -> str:
        assert self.inproc is not None
        return f"http://127.0.0.1:{self.inproc.proxy_port}"

    async def stop_inproc(self) -> None:
        if self.inproc is not None:
            with contextlib.suppress(Exception):
                await self.inproc.stop()
            self.inproc = None
        if self.inproc_log is not None:
            self.inproc_log.close()
            self.inproc_log = None

    async def close(self) -> None:
        await self.stop_inproc()
        self.processes.stop_all()
        if self.valkey is not None:
            self.valkey.stop()
            self.valkey = None


def start_valkey(stack: Stack) -> None:
    stack.valkey = EmbeddedServer(stack.workdir / "valkey", port=free_port())
    stack.valkey.start()
    assert stack.valkey.process is not None
    pin_all_threads(stack.valkey.process.pid, SERVER_CORE)
    stack.processes.adopt("valkey", stack.valkey.process)


NGINX_UPSTREAM = """worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    keepalive_requests 10000000;
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}
}}
"""


def start_upstream(stack: Stack) -> None:
    """The upstream: a tiny nginx (one worker) on the load core beside wrk, so the proxies
    measured on the server core have it to themselves (as issue 17 measured); without nginx,
    bench/upstream.py (aiohttp) on the server core, which then shares it with the proxies."""
    stack.upstream_port = free_port()
    nginx = shutil.which("nginx")
    if nginx is not None:
        conf = stack.workdir / "nginx-upstream.conf"
        body = UPSTREAM_BODY.decode().replace("\n", "")
        conf.write_text(NGINX_UPSTREAM.format(d=stack.workdir, port=stack.upstream_port, body=body))
        upstream = stack.processes.spawn("upstream (nginx)", [nginx, "-c", str(conf)], CLIENT_CORE)
        stack.upstream_kind = "nginx on the load core"
    else:
        upstream = stack.processes.spawn(
            "upstream", [PYTHON, str(BENCH / "upstream.py"), "--port", str(stack.upstream_port)], SERVER_CORE
        )
        stack.upstream_kind = "bench/upstream.py (aiohttp) on the server core"
    wait_http(stack.upstream_url + "/", upstream, "upstream")


def start_helpers(stack: Stack) -> None:
    """The upstream and the bare reference proxy, each in its own process on the server core."""
    start_upstream(stack)
    stack.bare_port = free_port()
    bare_argv = [PYTHON, str(BENCH / "bare_proxy.py"), "--port", str(stack.bare_port)]
    bare = stack.processes.spawn("bare proxy", [*bare_argv, "--upstream", stack.upstream_url], SERVER_CORE)
    wait_http(stack.bare_url + "/", bare, "bare proxy")
    stack.bare = bare


def write_config(stack: Stack, name: str, config: dict[str, Any]) -> Path:
    path = stack.workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_tokenward(stack: Stack) -> None:
    """`tokenward serve --config FILE`, audit lines to a file, on the server core."""
    assert stack.valkey is not None
    port, admin_port = free_ports(2)
    stack.config = tokenward_config(port, admin_port, stack.valkey.url, stack.upstream_port, stack.workdir / "tw-data")
    config_path = write_config(stack, "tokenward.yaml", stack.config)
    stack.tokenward_log = stack.workdir / "tokenward.log"
    with stack.tokenward_log.open("wb") as log, (stack.workdir / "tokenward.err").open("wb") as err:
        stack.tokenward = stack.processes.spawn(
            "tokenward", [TOKENWARD, "serve", "--config", str(config_path)], SERVER_CORE, log, err
        )
    wait_http(stack.tokenward_admin_url + "/readyz", stack.tokenward, "tokenward serve")


def start_workers_gateway(stack: Stack, workers: int) -> tuple[str, str]:
    """`tokenward serve --workers N` on its own ports (only when serve has --workers)."""
    config = copy.deepcopy(stack.config)
    config["listen"]["port"], config["admin_listen"]["port"] = free_ports(2)
    path = write_config(stack, "tokenward-workers.yaml", config)
    argv = [TOKENWARD, "serve", "--config", str(path), "--workers", str(workers)]
    process = stack.processes.spawn("tokenward workers", argv, SERVER_CORE)
    admin = f"http://127.0.0.1:{config['admin_listen']['port']}"
    wait_http(admin + "/readyz", process, "tokenward serve --workers")
    return f"http://127.0.0.1:{config['listen']['port']}", admin


async def start_inproc_gateway(stack: Stack) -> None:
    """A second gateway in this process (its push task can be stopped for the no-push trials)."""
    assert stack.valkey is not None
    config = copy.deepcopy(stack.config)
    config["listen"]["port"] = config["admin_listen"]["port"] = 0
    stack.inproc_log = (stack.workdir / "inproc.log").open("wb")
    configure_logging(LogSettings(level="info", format="json"), stack.inproc_log)
    stack.inproc = Server(
        settings_from_dict(config, "bench"), redis_url=stack.valkey.url, shutdown_timeout=1.0
    )
    await stack.inproc.start()


async def seed(stack: Stack, cold_tokens: int, spare_tokens: int = 0) -> None:
    """The team, an org admin token, the tokens of the scenarios (default argon2id parameters)."""
    assert stack.inproc is not None and stack.inproc.runtime is not None
    runtime = stack.inproc.runtime
    await runtime.store.create_team(TeamRecord(ORG, TEAM, parse_scopes(["read:apis"]), time.time(), "bench"))

    async def mint(name: str, scopes: list[str], team: str | None = TEAM) -> tuple[str, str]:
        token, record = await issue_token(
            runtime, org=ORG, team=team, name=name, scopes=parse_scopes(scopes), created_by="bench"
        )
        return token, record.id

    creds = stack.creds
    creds.admin, _ = await mint("bench-admin", ["admin:org"], team=None)
    creds.legit, creds.legit_id = await mint("bench-legit", ["read:apis"])
    creds.subjects = list(
        await asyncio.gather(*(mint(f"bench-revocation-{i}", ["read:apis"]) for i in range(SUBJECTS)))
    )
    minted = await asyncio.gather(*(mint(f"bench-cold-{i}", ["read:apis"]) for i in range(cold_tokens)))
    creds.cold = [token for token, _ in minted]
    creds.cold_ids = [key_id for _, key_id in minted]
    spare = await asyncio.gather(*(mint(f"bench-spare-{i}", ["read:apis"]) for i in range(spare_tokens)))
    creds.spare = [token for token, _ in spare]


def wrong_secret(key_id: str) -> str:
    """Well-formed, valid checksum, the real key id, a random (wrong) secret."""
    secret = "".join(secrets.choice(BASE62) for _ in range(SECRET_LEN))
    head = f"{PREFIX}_{key_id}{secret}"
    return head + checksum(head)


def bad_checksum(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


def write_tokens(path: Path, tokens: list[str]) -> Path:
    path.write_text("\n".join(tokens) + "\n")
    return path
