"""The audit event says what the client got: a response cut off mid-body (by the upstream,
or by the client leaving) is recorded with the status that was sent, the bytes that were
sent and which side cut it, not as a plain allowed 200."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.helpers.gateway import LogReader
from tests.helpers.scripted import OK, Seen, send


async def audited(logs: LogReader, request_id: str) -> dict[str, Any]:
    for _ in range(200):
        # the client's X-Request-Id is kept apart from the id tokenward gives the request
        events = [e for e in logs.events() if e.get("client_request_id") == request_id and "status" in e]
        if events:
            (event,) = events
            return event
        await asyncio.sleep(0.01)
    raise AssertionError("no audit event")


@pytest.mark.parametrize("delimiter", [b"Content-Length: 1000", b"Transfer-Encoding: chunked"])
async def test_a_response_cut_by_the_upstream_is_audited_as_cut(
    scripted: Any, through: Any, logs: LogReader, delimiter: bytes
) -> None:
    body = b"0123456789" if delimiter.startswith(b"Content") else b"a\r\n0123456789\r\n"

    async def cut(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + delimiter + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    upstream = await scripted(cut, send(OK))
    gw = await through(upstream)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with gw.session.get(gw.url + "/health", headers={"X-Request-Id": "cut-1"}) as response:
            assert response.status == 200
            await response.read()
    event = await audited(logs, "cut-1")
    assert event["status"] == 200
    assert event["upstream_aborted"] is True
    assert event["bytes_sent"] == 10
    assert event["step"] == "upstream" and "cut off" in event["reason"]
    async with gw.session.get(gw.url + "/health", headers={"X-Request-Id": "whole-1"}) as response:
        assert await response.read() == b"ok"
    whole = await audited(logs, "whole-1")
    assert "upstream_aborted" not in whole and "bytes_sent" not in whole  # the usual line, unchanged


async def test_a_client_leaving_mid_body_is_audited_as_cut(scripted: Any, through: Any, logs: LogReader) -> None:
    left = asyncio.Event()

    async def trickle(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        await left.wait()
        for _ in range(100):  # the gateway writes these to a client that is gone
            writer.write(b"y" * 100)
            await writer.drain()
            await asyncio.sleep(0.01)

    upstream = await scripted(trickle)
    gw = await through(upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: left-1\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    got = 0
    while got < 100:
        got += len(await reader.read(100 - got))
    writer.transport.abort()
    left.set()
    event = await audited(logs, "left-1")
    assert event["status"] == 200 and event["client_aborted"] is True
    assert event["bytes_sent"] >= 100 and event["action"] == "request.allowed"
