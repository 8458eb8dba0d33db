"""The admin listener bounds a request body by `limits.body_timeout`, as the gateway does."""

from __future__ import annotations

import asyncio

from tests.helpers.rawhttp import Env


async def test_a_trickled_admin_body_is_cut_off(env: Env) -> None:
    """The admin listener bounds a request body by limits.body_timeout (1 s here) too: an
    authenticated caller trickling one gets 408, not a handler held for ever."""
    admin_token = await env.gw.org_admin()
    reader, writer = await asyncio.open_connection("127.0.0.1", env.gw.server.admin_port)
    writer.write(
        b"POST /v1/orgs/acme/teams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {admin_token}\r\nContent-Length: 100\r\n\r\n".encode()
        + b'{"name":'
    )
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(65536), 30)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"step"' not in reply or b"request_timeout" in reply
