"""nginx in front of the real `tokenward serve`: deploy/nginx/nginx.conf rendered for a
private working directory, and the command that runs it (the binary and the recording
upstream are fixtures in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.helpers.gateway import ROOT, base_config
from tests.helpers.process import bootstrap_admin, start_serve, stop, wait_http
from tokenward.gateway.embedded import free_ports

NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def render_nginx_conf(workdir: Path, listen_port: int, tokenward_port: int, upstream_port: int) -> Path:
    """deploy/nginx/nginx.conf with its placeholders filled in and every path nginx writes
    moved under `workdir` (nothing under /var, /run or /etc is touched)."""
    text = NGINX_CONF.read_text()
    values = {
        "__LISTEN_PORT__": f"127.0.0.1:{listen_port}",
        "__TOKENWARD__": f"127.0.0.1:{tokenward_port}",
        "__UPSTREAM__": f"127.0.0.1:{upstream_port}",
    }
    for placeholder, value in values.items():
        assert placeholder in text, f"{placeholder} is documented but not used"
        text = text.replace(placeholder, value)
    leftover = re.findall(r"__[A-Z_]+__", text)
    assert not leftover, f"undocumented placeholders: {leftover}"
    for original, local in (
        ("/var/log/nginx/access.log", workdir / "access.log"),
        ("/var/cache/nginx/tokenward", workdir / "cache"),
    ):
        assert original in text, original
        text = text.replace(original, str(local))
    temp_paths = "".join(
        f"    {directive} {workdir / name};\n"
        for directive, name in (
            ("client_body_temp_path", "client_body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        )
    )
    assert text.count("\nhttp {\n") == 1
    text = text.replace("\nhttp {\n", "\nhttp {\n" + temp_paths, 1)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(nginx: str, conf: Path, workdir: Path, *, test: bool = False) -> list[str]:
    main = f"pid {workdir / 'nginx.pid'}; error_log {workdir / 'error.log'} info;"
    if os.geteuid() == 0:
        main += " user root;"  # workers may then write the denial cache under the private tmp dir
    if not test:
        main += " daemon off;"
    command = [nginx, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(conf), "-g", main]
    return [*command, "-t"] if test else command


@dataclass
class NginxStack:
    """nginx (deploy/nginx/nginx.conf) in front of a real `tokenward serve` process, on the
    test's Valkey server; `admin` authorizes the bootstrap org admin on the admin API."""

    port: int  # tokenward's proxy listener (nginx asks it)
    admin_port: int
    nginx_port: int
    admin: dict[str, str]
    serve: asyncio.subprocess.Process
    nginx: asyncio.subprocess.Process
    serve_out: Path  # serve's stdout and stderr (its JSON log)
    workdir: Path  # nginx's: error.log, access.log
    seen: list[dict[str, Any]]  # what reached the app (the recording upstream)

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        await wait_http(session, f"http://127.0.0.1:{self.admin_port}/readyz", self.serve)
        await wait_http(session, f"http://127.0.0.1:{self.nginx_port}/health", self.nginx)

    async def stop(self) -> tuple[int, int]:
        """nginx (graceful SIGQUIT), then serve; their exit codes."""
        return await stop(self.nginx, signal.SIGQUIT), await stop(self.serve)


async def start_nginx_stack(
    nginx_bin: str, workdir: Path, tmp_path: Path, redis_url: str, upstream: tuple[int, list[dict[str, Any]]]
) -> NginxStack:
    """Bootstrap an org admin, check the rendered nginx.conf with `nginx -t`, start both."""
    upstream_port, seen = upstream
    config = base_config(upstream_port)
    port, admin_port, nginx_port = free_ports(3)
    config["listen"]["port"], config["admin_listen"]["port"] = port, admin_port
    config["trusted_proxies"] = ["127.0.0.1/32"]
    config["redis"] = {"url": redis_url}
    config["log"] = {"level": "info", "format": "json"}
    config_path = tmp_path / "tokenward.yaml"
    config_path.write_text(yaml.safe_dump(config))
    admin = {"Authorization": f"Bearer {await bootstrap_admin(config_path)}"}
    conf = render_nginx_conf(workdir, nginx_port, port, upstream_port)
    checked = subprocess.run(nginx_command(nginx_bin, conf, workdir, test=True), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    serve_out = tmp_path / "serve.out"
    with serve_out.open("wb") as serve_log:  # the child keeps its own descriptor
        serve = await start_serve(config_path, stdout=serve_log)
    nginx = await asyncio.create_subprocess_exec(
        *nginx_command(nginx_bin, conf, workdir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return NginxStack(port, admin_port, nginx_port, admin, serve, nginx, serve_out, workdir, seen)
