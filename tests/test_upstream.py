"""The upstream client (gateway/upstream.py) against a scripted raw-TCP upstream: keep-alive
reuse, stale pooled connections, framing of both bodies, interim responses, HEAD, errors
and timeouts. Each test says what the upstream sends, byte for byte."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.helpers.gateway import base_config, get
from tests.helpers.scripted import OK, ScriptedUpstream, Seen, send
from tokenward.gateway.embedded import free_port


async def test_keep_alive_connections_are_reused(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(OK))
    gw = await through(upstream)
    for _ in range(5):
        assert (await get(gw))[0] == 200
    assert upstream.connections == 1
    assert [s.target for s in upstream.seen] == ["/health"] * 5
    assert upstream.seen[0].header("Host") == [f"127.0.0.1:{upstream.port}"]


async def test_a_pooled_connection_closed_by_the_upstream_is_replaced(scripted: Any, through: Any) -> None:
    # The upstream says keep-alive, then closes while the connection is idle in the pool.
    upstream = await scripted(send(OK, close=True))
    gw = await through(upstream)
    for _ in range(3):
        status, _, body = await get(gw)
        assert (status, body) == (200, b"ok")
        await asyncio.sleep(0.05)
    assert upstream.connections == 3


async def test_a_request_with_a_body_is_never_replayed(scripted: Any, through: Any) -> None:
    async def close_without_answer(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.close()

    upstream = await scripted(send(OK), close_without_answer)
    gw = await through(upstream)
    await gw.team("team", ["write:apis"], org="org")
    token, _ = await gw.token("team", ["write:apis"], org="org")
    path = "/orgs/org/teams/team/apis"
    assert (await get(gw, path, "POST", data=b"one", headers=gw.auth(token)))[0] == 200
    status, _, body = await get(gw, path, "POST", data=b"two", headers=gw.auth(token))
    assert status == 502 and b"bad_gateway" in body
    assert [s.body for s in upstream.seen] == [b"one", b"two"]  # sent once, not retried


async def test_connection_close_from_the_upstream_is_honoured(scripted: Any, through: Any) -> None:
    upstream = await scripted(
        send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", close=True)
    )
    gw = await through(upstream)
    for _ in range(3):
        assert (await get(gw))[2] == b"ok"
    assert upstream.connections == 3


async def test_a_body_delimited_by_the_end_of_the_connection(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100_000, close=True))
    gw = await through(upstream)
    status, _, body = await get(gw)
    assert status == 200 and body == b"x" * 100_000


async def test_a_large_chunked_response_streams_through_intact(scripted: Any, through: Any) -> None:
    piece = bytes(range(256)) * 256  # 64 KiB

    async def chunked(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(32):  # 2 MiB, in pieces, with pauses: streamed, not buffered whole
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")

    upstream = await scripted(chunked, send(OK))
    gw = await through(upstream)
    status, headers, body = await get(gw)
    assert status == 200 and body == piece * 32
    assert "Transfer-Encoding" not in headers or headers["Transfer-Encoding"] == "chunked"
    assert (await get(gw))[2] == b"ok"
    assert upstream.connections == 1  # the chunked body ended cleanly: connection reused


async def test_head_keeps_content_length_and_the_connection(scripted: Any, start_gateway: Any) -> None:
    upstream = await scripted(send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), send(OK))
    config = copy.deepcopy(base_config(upstream.port))
    config["routes"].append({"methods": ["HEAD"], "path": "/health", "upstream": "registry", "public": True})
    gw = await start_gateway(config)
    status, headers, body = await get(gw, method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, "10", b"")
    assert (await get(gw))[2] == b"ok"
    assert upstream.connections == 1  # no phantom body was waited for


async def test_interim_responses_are_skipped(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK))
    gw = await through(upstream)
    status, headers, body = await get(gw)
    assert (status, body) == (200, b"ok") and "Link" not in headers


async def test_no_content_and_not_modified_have_no_body(scripted: Any, through: Any) -> None:
    upstream = await scripted(
        send(b"HTTP/1.1 204 No Content\r\n\r\n"),
        send(b"HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n"),
        send(OK),
    )
    gw = await through(upstream)
    assert (await get(gw))[:1] == (204,)
    status, headers, _ = await get(gw)
    assert status == 304 and headers["ETag"] == '"1"'
    assert (await get(gw))[2] == b"ok"
    assert upstream.connections == 1


async def test_a_garbled_response_is_a_502(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(b"SMTP ready\r\n\r\n", close=True))
    gw = await through(upstream)
    status, headers, body = await get(gw)
    assert status == 502 and headers["Content-Type"] == "application/json" and b"bad_gateway" in body


async def test_slow_response_headers_are_a_504(scripted: Any, through: Any) -> None:
    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.5)
        writer.write(OK)

    upstream = await scripted(slow)
    gw = await through(upstream, timeout="500ms")
    status, _, body = await get(gw)
    assert status == 504 and b"gateway_timeout" in body


async def test_a_pooled_connection_times_out_its_later_exchanges(scripted: Any, through: Any) -> None:
    """One deadline timer per connection: the one left by earlier exchanges still times out
    a later exchange on the same pooled connection, on time (within the timeout, not
    the timeout plus the age of the timer)."""

    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2.0)
        writer.write(OK)

    upstream = await scripted(send(OK), send(OK), slow, send(OK))
    gw = await through(upstream, timeout="800ms")
    for _ in range(2):
        assert (await get(gw))[0] == 200
        await asyncio.sleep(0.5)  # the first exchange's timer is due during the third
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, body = await get(gw)
    assert status == 504 and b"gateway_timeout" in body
    assert 0.75 < loop.time() - started < 1.8
    assert upstream.connections == 1  # the slow exchange was on the pooled connection
    assert (await get(gw))[0] == 200  # and a new connection serves the next


async def test_a_slow_but_steady_body_is_not_timed_out(scripted: Any, through: Any) -> None:
    async def trickle(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):  # 8 x 0.2 s > the 0.5 s timeout, but never 0.5 s without a byte
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"x")

    upstream = await scripted(trickle)
    gw = await through(upstream, timeout="500ms")
    status, _, body = await get(gw)
    assert (status, body) == (200, b"x" * 8)


async def test_an_upstream_cut_mid_body_cuts_the_client(scripted: Any, through: Any) -> None:
    async def cut(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300_000)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    upstream = await scripted(cut, send(OK))
    gw = await through(upstream)
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(gw)
    assert (await get(gw))[2] == b"ok"


async def test_a_chunked_request_body_is_forwarded_chunked(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(OK))
    gw = await through(upstream)
    await gw.team("team", ["write:apis"], org="org")
    token, _ = await gw.token("team", ["write:apis"], org="org")

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(5):
            yield b"piece-%d;" % i

    status, _, _ = await get(gw, "/orgs/org/teams/team/apis", "POST", data=pieces(), headers=gw.auth(token))
    assert status == 200
    [seen] = upstream.seen
    assert seen.header("Transfer-Encoding") == ["chunked"] and not seen.header("Content-Length")
    assert seen.body == b"piece-0;piece-1;piece-2;piece-3;piece-4;"


async def test_hop_by_hop_response_headers_are_dropped(scripted: Any, through: Any) -> None:
    upstream = await scripted(
        send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Secret\r\nX-Secret: 1\r\n"
            b"Keep-Alive: timeout=5\r\nX-Kept: yes\r\nX-Request-Id: from-upstream\r\n\r\nok"
        )
    )
    gw = await through(upstream)
    status, headers, _ = await get(gw)
    assert status == 200 and headers["X-Kept"] == "yes"
    assert "X-Secret" not in headers and "Keep-Alive" not in headers
    assert headers.getall("X-Request-Id") != ["from-upstream"] and len(headers.getall("X-Request-Id")) == 1


async def test_the_upstream_url_path_is_a_prefix(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(OK))
    gw = await through(upstream, url=f"http://127.0.0.1:{upstream.port}/base/")
    assert (await get(gw, "/health?x=1"))[0] == 200
    assert upstream.seen[0].target == "/base/health?x=1"


async def test_an_upstream_that_refuses_connections_is_a_502(through: Any) -> None:
    gw = await through(ScriptedUpstream([], free_port()))
    status, _, body = await get(gw)
    assert status == 502 and b"unreachable" in body


async def test_bytes_on_an_idle_connection_retire_it(scripted: Any, through: Any) -> None:
    async def then_unsolicited(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")

    upstream = await scripted(then_unsolicited, send(OK))
    gw = await through(upstream)
    assert (await get(gw))[:1] == (200,)
    await asyncio.sleep(0.2)  # the 408 arrives while the connection idles in the pool
    status, _, body = await get(gw)
    assert (status, body) == (200, b"ok")  # not the stray 408
    assert upstream.connections == 2
