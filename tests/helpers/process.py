"""tokenward as a user runs it: the `tokenward` CLI in a subprocess, a config file for a real
`tokenward serve` process, bootstrap, and waiting for a process to answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from tests.helpers.gateway import ROOT, base_config
from tokenward.gateway.embedded import free_ports

CLI = [sys.executable, "-c", "from tokenward.cli import main; main()"]


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


async def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, stdin: str | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=ROOT,
        env=env or env_for_subprocess(),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(
        process.communicate(stdin.encode() if stdin is not None else None), timeout
    )
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


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
        self.path.write_text(yaml.safe_dump(self.config))


def serve_config(tmp_path: Path, upstream_port: int, **top: Any) -> ServeConfig:
    config = base_config(upstream_port)
    port, admin_port = free_ports(2)
    config["listen"]["port"], config["admin_listen"]["port"] = port, admin_port
    config["data_dir"] = str(tmp_path / "data")
    config.update(top)
    result = ServeConfig(tmp_path / "tokenward.yaml", config, port, admin_port)
    result.write()
    return result


async def bootstrap_admin(path: Path, org: str = "acme") -> str:
    """`tokenward admin bootstrap --json` as a user runs it; returns the org-admin token."""
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


async def wait_ready(session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process) -> None:
    """Until `url` answers 200; fails if the process exits first. (Under --workers /readyz
    is 200 once every worker serves: spawning them all can take a while on a busy machine.)"""
    for _ in range(600):
        if process.returncode is not None:
            raise AssertionError(f"serve exited with {process.returncode}")
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("serve did not become ready")


async def wait_http(session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process) -> None:
    """Until `url` answers below 500; fails if the process exits first."""
    for _ in range(300):
        if process.returncode is not None:
            raise AssertionError(f"{url}: process exited with {process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as response:
                if response.status < 500:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


async def stop(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal the process (unless it has exited), wait, kill after `timeout`; its exit code."""
    if process.returncode is None:
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


async def start_serve(
    config: Path,
    *args: str,
    stdout: Any = asyncio.subprocess.DEVNULL,
    stderr: Any = asyncio.subprocess.STDOUT,
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """`tokenward serve --config CONFIG ARGS...` in a subprocess, as a user runs it."""
    return await asyncio.create_subprocess_exec(
        *CLI, "serve", "--config", str(config), *args,
        cwd=ROOT, env=env or env_for_subprocess(), stdout=stdout, stderr=stderr,
    )  # fmt: skip


async def post_json(
    session: aiohttp.ClientSession, url: str, auth: dict[str, str], body: Any = None, expected: int = 201
) -> Any:
    """POST `body` to a running process's admin API; asserts the status, returns the JSON."""
    async with session.post(url, headers=auth, json=body) as r:
        assert r.status == expected, await r.text()
        return await r.json()
