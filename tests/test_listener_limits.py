"""The gateway listener's own bounds (gateway/listener.py): a client cannot make it hold an
unbounded number of parsed requests by pipelining thousands in one write."""

from __future__ import annotations

import asyncio

from tests.helpers.gateway import Gateway
from tokenward.gateway.listener import MAX_PIPELINED


async def test_pipelining_beyond_the_bound_answers_what_came_first_then_ends(gateway: Gateway) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * (MAX_PIPELINED * 20))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 20)  # the gateway ends the connection
    writer.close()
    answered = data.count(b"HTTP/1.1 200")
    assert MAX_PIPELINED <= answered < MAX_PIPELINED * 20
    assert data.count(b"HTTP/1.1 400") == 1 and data.rstrip().endswith(b"}")
    assert b"too many pipelined requests" in data
