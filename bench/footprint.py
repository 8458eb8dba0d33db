"""Memory per idle keep-alive connection and per cached token: the resident set (VmRSS) of
one server process before and after, divided by the count. See bench/README.md.

- idle connections: `count` connections, each one GET answered in full (so the server built
  all its per-connection state) and then left open, idle, kept alive;
- cached tokens: `count` valid tokens never sent before, one request each, so each one is
  verified once (argon2) and then held by the verification cache.

Each reading waits until the process is idle, then a second, and takes the median of three
samples: `tokenward serve` collects cyclic garbage only every 20 000 container allocations
(admin/server.py), so what is read is what the process holds, not its garbage being freed.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httptools

from observe import open_fds, rss_bytes, tokenward_counters
from services import say, wait_quiet
from stack import ROUTE_PATH, Stack

IDLE_BATCH = 32  # connections opened at once: fewer than the loads' 64, so no upstream pool grows
TOKEN_CONCURRENCY = 4  # requests at once while the cache fills (as on the cold-cache line)
FD_MARGIN = 256  # file descriptors a server needs beyond the idle connections
ARGON2 = "tokenward_argon2_verifications_total"


@dataclass(frozen=True)
class Footprint:
    key: str
    label: str
    count: int
    rss_before: int
    rss_after: int
    check: str  # what shows the count held: connections seen open, verifications done

    @property
    def per_unit_bytes(self) -> float:
        return per_unit(self.rss_before, self.rss_after, self.count)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_unit_bytes": round(self.per_unit_bytes)}


def per_unit(before: int, after: int, count: int) -> float:
    """Bytes of resident memory per unit: the growth over `count` units (0 units: 0)."""
    return (after - before) / count if count > 0 else 0.0


def raise_fd_limit(needed: int) -> int:
    """This process's soft RLIMIT_NOFILE raised to `needed` (at most the hard limit); the
    servers started after this inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def fd_limit(pid: int) -> int:
    """A process's soft limit on open files, from /proc (a large number for unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return 1 << 40 if soft == "unlimited" else int(soft)
    return 1 << 40


async def settled_rss(pid: int) -> int:
    """VmRSS once the process has been idle a while: median of three samples."""
    await wait_quiet(pid)
    await asyncio.sleep(1.0)
    samples = []
    for _ in range(3):
        samples.append(rss_bytes([pid]))
        await asyncio.sleep(0.2)
    return int(statistics.median(samples))


class _Response:
    """httptools callbacks: the status, whether it keeps the connection, whether it is all in."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.keep_alive = False
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


async def _one_request(host: str, port: int, request: bytes) -> asyncio.StreamWriter:
    """A new connection, one request answered 200 in full; the connection is left open."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    response = _Response()
    while not response.complete:
        data = await reader.read(65536)
        if not data:
            raise RuntimeError(f"127.0.0.1:{port} closed the connection before its response")
        response.parser.feed_data(data)
    if response.status != 200 or not response.keep_alive:
        raise RuntimeError(f"127.0.0.1:{port} answered {response.status} (keep-alive: {response.keep_alive})")
    return writer


def _request_bytes(url: str, authorization: str | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if authorization:
        head += f"Authorization: {authorization}\r\n"
    return host, port, (head + "\r\n").encode()


async def _open(host: str, port: int, request: bytes, count: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    try:
        for start in range(0, count, IDLE_BATCH):
            batch = min(IDLE_BATCH, count - start)
            writers += await asyncio.wait_for(
                asyncio.gather(*(_one_request(host, port, request) for _ in range(batch))), 60.0
            )
    except BaseException:
        await _close(writers)
        raise
    return writers


async def _close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)


def _client_fds(pid: int, port: int) -> int:
    return open_fds([pid], {"clients": port})["clients"]


async def idle_connections(
    key: str, label: str, pid: int, url: str, authorization: str | None, count: int
) -> Footprint:
    """RSS growth of `pid` (serving `url`) with `count` idle keep-alive connections open."""
    host, port, request = _request_bytes(url, authorization)
    limit = fd_limit(pid)
    if limit < count + FD_MARGIN:
        return Footprint(key, label, 0, 0, 0, f"skipped: the server's open-file limit is {limit} (ulimit -n)")
    say(f"memory: {label}: {count} idle keep-alive connections")
    await _close(await _open(host, port, request, IDLE_BATCH))  # any pool the load grows, grown
    fds = _client_fds(pid, port)
    before = await settled_rss(pid)
    writers = await _open(host, port, request, count)
    try:
        after = await settled_rss(pid)
        still_open = _client_fds(pid, port) - fds
    finally:
        await _close(writers)
    return Footprint(key, label, count, before, after, f"{still_open} of {count} open when read")


async def _send_each(session: aiohttp.ClientSession, url: str, tokens: list[str]) -> None:
    """One request per token (`TOKEN_CONCURRENCY` at a time), each answered 200."""
    todo: Iterator[str] = iter(tokens)

    async def worker() -> None:
        for token in todo:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"memory: a token got {response.status} from {url}, expected 200")

    await asyncio.gather(*(worker() for _ in range(TOKEN_CONCURRENCY)))


async def cached_tokens(
    pid: int, url: str, admin_url: str, cached: str, warm: list[str], tokens: list[str]
) -> Footprint:
    """RSS growth of `tokenward serve` (pid) once `tokens` (never sent before) are cached.

    First `warm` new tokens (every argon2 thread has hashed, so its arena holds its buffer),
    then as many requests as `tokens` with the already cached token `cached` (the request
    path's own allocations are made, so freed ones are not counted as the cache's), then the
    reading before; then one request per new token, and the reading after."""
    say(f"memory: tokenward serve: {len(tokens)} new tokens, each verified once and cached")
    connector = aiohttp.TCPConnector(limit=TOKEN_CONCURRENCY, keepalive_timeout=300)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _send_each(session, url, warm)
        await _send_each(session, url, [cached] * len(tokens))
        before = await settled_rss(pid)
        verified = (await tokenward_counters(admin_url, [ARGON2])).get(ARGON2, 0.0)
        await _send_each(session, url, tokens)
        after = await settled_rss(pid)
        verified = (await tokenward_counters(admin_url, [ARGON2])).get(ARGON2, 0.0) - verified
    label = "tokenward serve, per cached token"
    return Footprint("cached_token", label, len(tokens), before, after, f"{verified:.0f} argon2 verifications")


def footprint_table(rows: list[Footprint]) -> list[list[str]]:
    """Cells for rows.table: what, how many, RSS before and after (MiB), bytes each, check."""
    return [
        [
            f.label,
            str(f.count),
            f"{f.rss_before / 2**20:.1f}",
            f"{f.rss_after / 2**20:.1f}",
            f"{f.per_unit_bytes:,.0f}",
            f.check,
        ]
        for f in rows
    ]


FOOTPRINT_HEADERS = ["memory: VmRSS growth", "count", "before MiB", "after MiB", "bytes each", "check"]


async def measure(stack: Stack, connections: int, warm: int) -> list[Footprint]:
    """Per cached token (the spare tokens), then per idle connection: tokenward, bare proxy."""
    assert stack.tokenward is not None and stack.bare is not None
    url, bearer = stack.tokenward_url + ROUTE_PATH, f"Bearer {stack.creds.legit}"
    spare = stack.creds.spare
    tw, bare = stack.tokenward.pid, stack.bare.pid
    return [
        await cached_tokens(tw, url, stack.tokenward_admin_url, stack.creds.legit, spare[:warm], spare[warm:]),
        await idle_connections("idle_connection", "tokenward serve, per idle connection", tw, url, bearer, connections),
        await idle_connections(
            "bare_idle_connection", "bare aiohttp proxy, per idle connection", bare, stack.bare_url + ROUTE_PATH, None, connections
        ),
    ]
