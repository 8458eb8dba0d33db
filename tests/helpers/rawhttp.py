"""Raw HTTP over a socket, for requests aiohttp's client would normalise: the bytes of a
request, the parsed first response, slow and unfinished writes; the recording upstream's
record; and the configs of the hardening and path-confusion suites (their fixtures are in
tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.helpers.gateway import Gateway, base_config

TEAM = "/orgs/acme/teams/platform"
GENEROUS = 15.0  # seconds: many times header_timeout (1 s), far below the 75 s keep-alive


@dataclass
class Recorder:
    """An upstream that records every request it receives (method, raw target, headers)."""

    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)


def hardening_config(port: int) -> dict[str, Any]:
    config = base_config(port)
    config["routes"] += [
        {"methods": ["GET"], "path": "/files/{rest:*}", "upstream": "registry", "scopes": ["read:apis"]},
        {"methods": ["GET"], "path": "/api", "upstream": "registry", "public": True},
    ]
    config["limits"] = {
        "max_url_length": 2048,
        "max_header_count": 40,
        "max_header_bytes": "8k",
        "max_body_bytes": "1m",
        "header_timeout": "1s",
        "body_timeout": "1s",
    }
    return config


@dataclass
class Env:
    """The hardening suite's gateway: `token` reads and writes the platform team's APIs."""

    gw: Gateway
    rec: Recorder
    token: str
    host: str


async def raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes, read until the server closes; parse the first response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    out = b"".join(chunks)
    if not out:
        return 0, {}, b""
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def request(
    target: str, host: str, token: str | None, *extra: str, method: str = "GET", body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += list(extra)
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One Content-Length-framed response."""
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return data + await asyncio.wait_for(reader.readexactly(length), 5)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after `seconds`."""
    chunks = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        left = end - loop.time()
        if left <= 0:
            raise AssertionError(f"connection still open after {seconds} s")
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            raise AssertionError(f"connection still open after {seconds} s") from None
        except ConnectionError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send `data` one byte at a time until it is all sent or the connection is gone."""
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)


# -- path confusion (issue 10, items 7-9) ----------------------------------------------------
def confusion_config(port: int) -> dict[str, Any]:
    config = base_config(port)
    res = {"org": "org", "team": "team"}
    team = "/orgs/{org}/teams/{team}"
    config["trusted_proxies"] = ["127.0.0.1/32"]  # forward-auth answers the test client
    config["upstreams"]["ci"] = {"url": f"http://127.0.0.1:{port}", "timeout": "2s", "case_insensitive": True}
    config["routes"] += [
        # a protected literal beside a parameter route (the example)
        {
            "methods": ["GET"],
            "path": f"{team}/apis/internal",
            "upstream": "registry",
            "scopes": ["admin:apis"],
            "resource": res,
        },
        {
            "methods": ["GET"],
            "path": f"{team}/apis/{{api}}",
            "upstream": "registry",
            "scopes": ["read:apis"],
            "resource": res,
        },
        {
            "methods": ["POST"],
            "path": f"{team}/apis/{{api}}",
            "upstream": "registry",
            "scopes": ["write:apis"],
            "resource": res,
        },
        {
            "methods": ["DELETE"],
            "path": f"{team}/apis/{{api}}",
            "upstream": "registry",
            "scopes": ["admin:apis"],
            "resource": res,
        },
        # a literal with a reserved character beside a parameter
        {
            "methods": ["GET"],
            "path": f"{team}/jobs/run:all",
            "upstream": "registry",
            "scopes": ["admin:apis"],
            "resource": res,
        },
        {
            "methods": ["GET"],
            "path": f"{team}/jobs/{{job}}",
            "upstream": "registry",
            "scopes": ["read:apis"],
            "resource": res,
        },
        # a tail parameter beside protected literals
        {"methods": ["GET"], "path": "/files/secret", "upstream": "registry", "scopes": ["admin:apis"]},
        {"methods": ["GET"], "path": "/files/vault/{name}", "upstream": "registry", "scopes": ["admin:apis"]},
        {"methods": ["GET"], "path": "/files/{rest:*}", "upstream": "registry", "scopes": ["read:apis"]},
        # HEAD: a GET route beside an any-method route
        {"methods": ["GET"], "path": "/reports", "upstream": "registry", "scopes": ["admin:apis"]},
        {"path": "/reports", "upstream": "registry", "scopes": ["read:apis"]},
        # the same pair on an upstream declared case-insensitive
        {"methods": ["GET"], "path": "/ci/apis/internal", "upstream": "ci", "scopes": ["admin:apis"]},
        {"methods": ["GET"], "path": "/ci/apis/{api}", "upstream": "ci", "scopes": ["read:apis"]},
    ]
    return config


@dataclass
class Confusion:
    """The path-confusion suite's gateway (`confusion_config`) and its two tokens."""

    gw: Gateway
    rec: Recorder
    reader: str  # read:apis + write:apis
    admin: str  # admin:apis
    host: str

    @property
    def port(self) -> int:
        return self.gw.server.proxy_port


async def refused_at(confusion: Confusion, data: bytes) -> tuple[int, str]:
    """The status and the refusal's step (empty when the answer is no refusal)."""
    status, _, body = await raw(confusion.port, data)
    if not body.startswith(b"{"):
        return status, ""
    return status, orjson.loads(body).get("step", "")


def multipart(boundary: str, *parts: tuple[str, bytes], eol: bytes = b"\r\n") -> bytes:
    out = b""
    for disposition, data in parts:
        out += b"--" + boundary.encode() + eol + b"Content-Disposition: " + disposition.encode() + eol + eol
        out += data + eol
    return out + b"--" + boundary.encode() + b"--" + eol


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


async def exchange(port: int, *parts: bytes | float, half_close: bool = False, idle: float = 5.0) -> bytes:
    """Send `parts` (a float: pause that long), then read until the server closes (or is
    idle for `idle` seconds); everything it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for part in parts:
        if isinstance(part, float):
            await asyncio.sleep(part)
        else:
            writer.write(part)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
    if half_close:
        writer.write_eof()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), idle):
            out += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return out


def statuses(out: bytes) -> list[int]:
    return [int(code) for code in STATUS_LINE.findall(out)]
