"""A compressed request body goes upstream exactly as the client sent it.

aiohttp's server inflates `Content-Encoding: gzip`/`deflate` request bodies by default; the
forwarder then sent the inflated bytes under the client's Content-Length and Content-Encoding,
so the upstream read the tail of the inflated body as a second, unauthorized request on the
pooled connection. Checked with a raw-socket upstream that records every byte it receives.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.helpers.gateway import APIS, Gateway
from tests.helpers.rawhttp import hardening_config, raw, request
from tokenward.gateway.embedded import free_port

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
async def wire() -> AsyncIterator[tuple[int, bytearray]]:
    """An upstream that answers one 200 per connection after recording all it received."""
    got = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 0.5):
                got.extend(chunk)
        except TimeoutError:
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    yield port, got
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    "coding, compress",
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)],
)
async def test_compressed_body_is_forwarded_as_sent(
    start_gateway: Callable[..., Awaitable[Gateway]],
    wire: tuple[int, bytearray],
    coding: str,
    compress: Callable[[bytes], bytes],
) -> None:
    port, got = wire
    gw = await start_gateway(hardening_config(port))
    await gw.team("platform", ["read:apis", "write:apis"])
    token, _ = await gw.token("platform", ["read:apis", "write:apis"])
    body = compress(b"x" * 5000 + SMUGGLED)
    data = request(
        APIS,
        f"127.0.0.1:{gw.server.proxy_port}",
        token,
        "Content-Type: application/octet-stream",
        f"Content-Encoding: {coding}",
        method="POST",
        body=body,
    )
    status, _, _ = await raw(gw.server.proxy_port, data)
    assert status == 200
    head, _, sent = bytes(got).partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert sent == body  # the compressed bytes, nothing more
    assert b"/smuggled" not in got
