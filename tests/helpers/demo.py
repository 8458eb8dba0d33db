"""`tokenward demo` as a user starts it, on free ports and its own data dir, until it has
printed its walkthrough (tests of what the demo prints, and of pasting it into a shell)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from tests.helpers.gateway import ROOT
from tests.helpers.process import CLI, env_for_subprocess
from tokenward.gateway.embedded import free_ports


@contextlib.asynccontextmanager
async def running_demo(data_dir: Path) -> AsyncIterator[str]:
    """A running demo; what it printed up to "Ctrl-C to stop". SIGTERM at the end."""
    port, admin_port, upstream_port = free_ports(3)
    process = await asyncio.create_subprocess_exec(
        *CLI, "demo", "--data-dir", str(data_dir), "--port", str(port), "--admin-port", str(admin_port),
        "--upstream-port", str(upstream_port), cwd=ROOT, env=env_for_subprocess(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    text = ""
    try:
        while "Ctrl-C to stop" not in text:
            line = await asyncio.wait_for(process.stdout.readline(), 120)
            assert line, text
            text += line.decode()
        yield text
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
