"""Request framing and connection reuse under hostile clients and misbehaving upstreams:
nothing a client sends can change how the upstream frames the forwarded request, and no
byte of one exchange can ever be read as part of another. (Regressions from a review of
the upstream client; each test names the attack or failure it pins down.)"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.helpers.gateway import EVENTS, Gateway, base_config, get, with_events
from tests.helpers.scripted import OK, ScriptedUpstream, Seen, send
from tokenward.gateway.embedded import free_port
from tokenward.gateway.tunnel import TunnelWatch

Start = Callable[..., Awaitable[Gateway]]


async def raw_request(gw: Gateway, data: bytes, read_for: float = 1.0) -> bytes:
    """Bytes on a fresh connection, and whatever comes back within `read_for` seconds."""
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), read_for):
            out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


def public_post_config(port: int) -> dict[str, Any]:
    config = copy.deepcopy(base_config(port))
    config["routes"].append({"methods": ["POST"], "path": "/public/upload", "upstream": "registry", "public": True})
    return config


async def test_connection_cannot_drop_content_length_to_smuggle_a_request(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(OK))
    gw = await through(upstream)
    smuggled = (
        b"DELETE /orgs/acme/teams/platform/apis/everything HTTP/1.1\r\nHost: x\r\n"
        b"X-Tokenward-Org: acme\r\nX-Tokenward-Scopes: admin:*\r\n\r\n"
    )
    request = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n"
        b"Content-Length: %d\r\n\r\n" % len(smuggled)
    ) + smuggled
    await raw_request(gw, request, 0.5)
    assert [s.head[0] for s in upstream.seen] == ["GET /health HTTP/1.1"]
    assert upstream.seen[0].header("Content-Length") == [str(len(smuggled))]
    assert upstream.seen[0].body == smuggled  # framed as the body it is, never as a request


async def test_an_upgrade_request_with_a_body_is_refused(start_gateway: Start) -> None:
    upstream = ScriptedUpstream([send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")], free_port())
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", upstream.port)
    try:
        gw = await start_gateway(with_events(base_config(upstream.port)))
        await gw.team("platform", ["read:apis"])
        token, _ = await gw.token("platform", ["read:apis"])
        out = await raw_request(
            gw,
            b"GET " + EVENTS.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
            + b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 5\r\n\r\nhello",
            0.5,
        )
        assert out.startswith(b"HTTP/1.1 400") and upstream.seen == []
    finally:
        server.close()


async def test_bytes_after_a_complete_response_never_reach_the_next_request(scripted: Any, through: Any) -> None:
    async def one_and_a_half(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSEC")

    upstream = await scripted(one_and_a_half, send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nr2"))
    gw = await through(upstream)
    assert (await get(gw))[2] == b"ok"
    assert (await get(gw))[2] == b"r2"
    assert upstream.connections == 2  # the first connection was retired, not reused


async def test_any_interim_1xx_is_skipped(scripted: Any, through: Any) -> None:
    async def slow_final(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 104 Upload Resumption Supported\r\n\r\nHTTP/1.1 150 Working\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")

    upstream = await scripted(slow_final, send(OK))
    gw = await through(upstream)
    status, _, body = await get(gw)
    assert (status, body) == (200, b"final")
    assert (await get(gw))[2] == b"ok"


async def test_a_101_to_a_plain_request_is_a_502(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"))
    gw = await through(upstream)
    assert (await get(gw))[0] == 502


async def pieces(count: int, size: int = 65536, pause: float = 0.0) -> AsyncIterator[bytes]:
    for _ in range(count):
        if pause:
            await asyncio.sleep(pause)
        yield b"x" * size


async def test_an_early_answer_then_close_is_passed_on(start_gateway: Start) -> None:
    port = free_port()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        gw = await start_gateway(public_post_config(port))
        status, _, body = await get(gw, "/public/upload", "POST", data=pieces(20, pause=0.02))
        assert (status, body) == (413, b"too big!")
    finally:
        server.close()


async def test_an_early_answer_from_an_upstream_that_stops_reading_does_not_hang(start_gateway: Start) -> None:
    port = free_port()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        await asyncio.sleep(30)  # neither reads the body nor closes

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        config = public_post_config(port)
        config["upstreams"]["registry"]["timeout"] = "1s"
        gw = await start_gateway(config)
        status, _, body = await asyncio.wait_for(get(gw, "/public/upload", "POST", data=pieces(400)), 8)
        assert (status, body) == (401, b"nope")
    finally:
        server.close()


async def test_a_slow_steady_upload_is_not_an_upstream_timeout(scripted: Any, through: Any) -> None:
    upstream = await scripted(send(OK))
    gw = await through(upstream, timeout="500ms")
    await gw.team("team", ["write:apis"], org="org")
    token, _ = await gw.token("team", ["write:apis"], org="org")
    path = "/orgs/org/teams/team/apis"
    status, _, _ = await get(gw, path, "POST", data=pieces(8, 1000, pause=0.2), headers=gw.auth(token))
    assert status == 200 and len(upstream.seen[0].body) == 8000


async def test_expect_100_continue_is_answered_after_the_decision(scripted: Any, start_gateway: Start) -> None:
    upstream = await scripted(send(OK))
    gw = await start_gateway(public_post_config(upstream.port))
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /public/upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)).startswith(b"HTTP/1.1 200")
    writer.close()
    assert upstream.seen[0].body == b"hello" and not upstream.seen[0].header("Expect")
    # refused requests get their refusal instead, and never a 100
    out = await raw_request(
        gw, b"POST /orgs/acme/teams/platform/apis HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 401")


async def test_a_bodiless_post_is_not_retried_on_a_stale_connection(scripted: Any, through: Any) -> None:
    async def close_without_answer(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.close()

    upstream = await scripted(send(OK), close_without_answer, send(OK))
    gw = await through(upstream)
    await gw.team("team", ["write:apis"], org="org")
    token, _ = await gw.token("team", ["write:apis"], org="org")
    path = "/orgs/org/teams/team/apis"
    assert (await get(gw, path, "POST", headers=gw.auth(token)))[0] == 200
    assert (await get(gw, path, "POST", headers=gw.auth(token)))[0] == 502
    assert len(upstream.seen) == 2  # the upstream may have acted on it: never sent twice


def accept(key: str) -> bytes:
    magic = (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
    return base64.b64encode(hashlib.sha1(magic, usedforsecurity=False).digest())


async def test_a_token_revoked_during_the_handshake_gets_no_tunnel(scripted: Any, start_gateway: Start) -> None:
    asked, revoked = asyncio.Event(), asyncio.Event()

    async def slow_101(seen: Seen, writer: asyncio.StreamWriter) -> None:
        asked.set()
        await revoked.wait()  # the token is revoked while the upstream thinks
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept(seen.header("Sec-WebSocket-Key")[0]) + b"\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(5)

    upstream = await scripted(slow_101)
    gw = await start_gateway(with_events(base_config(upstream.port)))
    await gw.team("platform", ["read:apis"])
    token, key_id = await gw.token("platform", ["read:apis"])

    async def revoke() -> None:
        await asked.wait()
        record = await gw.runtime.store.get_token(key_id)
        assert record is not None
        await gw.runtime.store.put_token(record.revoked(time.time(), "test"))
        while gw.runtime.cache.records.get(key_id) is not None:  # until this process has seen it
            await asyncio.sleep(0.01)
        revoked.set()

    task = asyncio.create_task(revoke())


    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await gw.session.ws_connect(gw.url + EVENTS, headers=gw.auth(token))
    assert caught.value.status == 401
    await task


class _Tunnel:
    def __init__(self) -> None:
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.next_check = 0.0
        self.epoch = 0

    def close(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


async def test_a_cancelled_caller_leaves_shared_work_to_the_others(gateway: Gateway, monkeypatch: Any) -> None:
    runtime = gateway.runtime
    await gateway.team("platform", ["read:apis"])
    token, key_id = await gateway.token("platform", ["read:apis"])
    runtime.cache.clear()
    runtime.cache.proofs.clear()
    real = runtime.store.get_token

    async def slow(key: str) -> Any:
        await asyncio.sleep(0.5)
        return await real(key)

    monkeypatch.setattr(runtime.store, "get_token", slow)
    watch = TunnelWatch(runtime.cache, interval=0.05, every=0.2)
    tunnel = _Tunnel()

    async def recheck() -> float | None:
        return (await runtime.authenticator.authenticate(token, None)).token.expires_at

    leader = asyncio.create_task(runtime.authenticator.authenticate(token, None))
    await asyncio.sleep(0.01)
    watch.add(tunnel, recheck, None, -1)  # type: ignore[arg-type]  # its re-check joins the leader's read
    await asyncio.sleep(0.2)
    leader.cancel()  # say, a handler cancelled at shutdown
    await asyncio.sleep(0.6)
    assert watch._task is not None and not watch._task.done()
    monkeypatch.setattr(runtime.store, "get_token", real)
    record = await real(key_id)
    assert record is not None
    await runtime.store.put_token(record.revoked(time.time(), "test"))
    for _ in range(100):
        if tunnel.done.done():
            break
        await asyncio.sleep(0.02)
    assert tunnel.done.result() == "status: token revoked"
    await watch.stop()
