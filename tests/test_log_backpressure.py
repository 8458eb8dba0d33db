"""A log reader that stalls (a full pipe, a paused log shipper) never blocks the gateway:
lines are written by a thread of their own from a bounded queue; lines beyond it are dropped,
counted in `tokenward_log_dropped_total` and reported once the writer has caught up.
Assertions are counts (lines, drops, requests completed)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.helpers.process import (
    bootstrap_admin,
    serve_config,
    start_serve,
    wait_ready,
)
from tokenward.gateway.logs import LogWriter

F_SETPIPE_SZ = 1031


def fill(fd: int) -> int:
    """Write to `fd` until the pipe is full; returns the bytes written."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    total = 0
    try:
        while True:
            total += os.write(fd, b"#" * 4096)
    except BlockingIOError:
        pass
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return total


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def until(condition: Any) -> None:
    while not condition():
        time.sleep(0.001)


def test_writes_never_block_and_drops_are_counted_then_reported() -> None:
    read_fd, write_fd = os.pipe()
    writer = LogWriter(write_fd, lambda n: b"dropped %d log lines\n" % n, capacity=10)
    try:
        filler = fill(write_fd)
        writer.write(b"first\n")
        writer.flush()
        until(lambda: not writer._lines)  # taken by the thread, which now waits on the full pipe
        for i in range(100):  # never blocks: 10 queued, 90 dropped
            writer.write(b"line %d\n" % i)
            writer.flush()
        assert writer.dropped == 90
        # the reader comes back: everything queued is written, then one line about the drops
        reader = os.fdopen(read_fd, "rb", buffering=0)
        assert reader.read(filler) == b"#" * filler
        writer.close(timeout=10)
        os.close(write_fd)
        rest = read_all(read_fd).splitlines()
    finally:
        writer.close(timeout=0)
    assert rest == [b"first", *(b"line %d" % i for i in range(10)), b"dropped 90 log lines"]
    assert writer.dropped == 90


async def test_a_stalled_stdout_reader_never_stops_requests_or_healthz(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    admin_token = await bootstrap_admin(served.path)
    # stdout: read by nobody until the end
    serve = await start_serve(served.path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert serve.stdout is not None
    pipe = serve.stdout._transport.get_extra_info("pipe")  # type: ignore[attr-defined]
    serve.stdout._transport.pause_reading()  # type: ignore[attr-defined]
    fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, 4096)  # a small pipe fills at once
    requests = healthz = 0
    timeout = aiohttp.ClientTimeout(total=20)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_ready(session, f"{served.admin_url}/readyz", serve)
            auth = {"Authorization": f"Bearer {admin_token}"}
            for _ in range(300):  # ~100 KiB of audit lines (admin denials) into a 4 KiB pipe
                async with session.get(f"{served.admin_url}/v1/orgs/other/teams", headers=auth) as r:
                    assert r.status in (401, 403, 404)
                async with session.get(f"{served.url}/health") as r:
                    assert r.status == 200
                    requests += 1
                async with session.get(f"{served.admin_url}/healthz") as r:
                    assert r.status == 200
                    healthz += 1
            async with session.get(f"{served.admin_url}/metrics") as r:
                metrics = await r.text()
    finally:
        serve.stdout._transport.resume_reading()  # type: ignore[attr-defined]
        serve.terminate()
        out = await serve.stdout.read()
        await serve.wait()
    assert (requests, healthz) == (300, 300)
    assert "tokenward_log_dropped_total" in metrics
    lines = [orjson.loads(line) for line in out.splitlines()]
    allowed = [e for e in lines if e.get("event") == "[Service Token] request.allowed"]
    assert len(allowed) == 300  # under the queue's bound: none dropped, every line intact
    assert lines[-1]["event"] == "tokenward stopped"
