"""WebSocket pass-through on routes with `websocket: true`: the handshake is decided like
any request, frames flow both ways untouched, and a tunnel ends when its token would no
longer be allowed (revoked, expired, route changed) or the gateway stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.helpers.gateway import EVENTS, Gateway, LogReader, base_config, with_events
from tests.helpers.scripted import ScriptedUpstream, send


@pytest.fixture
async def ws_gateway(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    gw = await start_gateway(with_events(config))
    await gw.team("platform", ["read:apis"])
    return gw


async def connect(gw: Gateway, token: str | None, path: str = EVENTS) -> aiohttp.ClientWebSocketResponse:
    headers = gw.auth(token) if token else {}
    return await gw.session.ws_connect(gw.url + path, headers=headers)


async def test_frames_flow_both_ways_with_identity_headers(ws_gateway: Gateway, logs: LogReader) -> None:
    token, key_id = await ws_gateway.token("platform", ["read:apis"], name="listener")
    ws = await connect(ws_gateway, token)
    hello = await ws.receive_json(timeout=5)
    seen = {name.lower(): value for name, value in hello["headers"]}
    assert hello["path"] == EVENTS
    assert seen["x-tokenward-token-id"] == key_id and "authorization" not in seen
    await ws.send_str("ping")
    assert await ws.receive_str(timeout=5) == "ping"
    big = bytes(range(256)) * 4096  # 1 MiB, well past every buffer's high-water mark
    for _ in range(3):
        await ws.send_bytes(big)
    for _ in range(3):
        assert await ws.receive_bytes(timeout=10) == big
    await ws.close()
    [opened] = [e for e in logs.events("request.allowed") if e["path"] == EVENTS]
    assert opened["status"] == 101 and opened["mode"] == "websocket" and opened["token_id"] == key_id
    for _ in range(50):
        closed = logs.events("websocket.closed")
        if closed:
            break
        await asyncio.sleep(0.02)
    # after the close handshake, whichever end drops the TCP connection first
    assert closed[0]["reason"] in ("client closed", "upstream closed")
    assert closed[0]["bytes_in"] > 3 * len(big) and closed[0]["bytes_out"] > 3 * len(big)


async def test_the_handshake_is_decided_like_any_request(ws_gateway: Gateway) -> None:
    for token, status in [(None, 401), ("tw_sat_" + "A" * 50, 401)]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await connect(ws_gateway, token)
        assert caught.value.status == status
    writer, _ = await ws_gateway.token("platform", ["read:specs"], name="no-read")
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await connect(ws_gateway, writer)
    assert caught.value.status == 403
    other_team, _ = await ws_gateway.token("platform", ["read:apis"])
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await connect(ws_gateway, other_team, "/orgs/acme/teams/other/events")
    assert caught.value.status == 403


async def test_revoking_the_token_closes_its_open_tunnel(ws_gateway: Gateway, logs: LogReader) -> None:
    token, key_id = await ws_gateway.token("platform", ["read:apis"], name="revoked-later")
    keep, _ = await ws_gateway.token("platform", ["read:apis"], name="kept")
    ws, kept = await connect(ws_gateway, token), await connect(ws_gateway, keep)
    await ws.receive_json(timeout=5)
    await kept.receive_json(timeout=5)
    record = await ws_gateway.runtime.store.get_token(key_id)
    assert record is not None
    await ws_gateway.runtime.store.put_token(record.revoked(time.time(), "test"))
    started = time.monotonic()
    message = await ws.receive(timeout=5)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert time.monotonic() - started < 1.0
    await kept.send_str("still here")  # another token's tunnel is untouched
    assert await kept.receive_str(timeout=5) == "still here"
    await kept.close()
    reasons = [e["reason"] for e in logs.events("websocket.closed") if e.get("token_id") == key_id]
    assert reasons == ["status: token revoked"]


async def test_an_expiring_token_closes_its_tunnel(ws_gateway: Gateway) -> None:
    token, _ = await ws_gateway.token("platform", ["read:apis"], expires_at=time.time() + 1.0)
    ws = await connect(ws_gateway, token)
    await ws.receive_json(timeout=5)
    message = await ws.receive(timeout=5)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_without_websocket_true_the_upgrade_is_not_forwarded(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    gw = await start_gateway(with_events(config, websocket=False))
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    headers = {**gw.auth(token), "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    headers["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
    async with gw.session.get(gw.url + EVENTS, headers=headers) as response:
        assert response.status == 200
        body = await response.json()
    seen = {name.lower() for name, _ in body["headers"]}
    assert "upgrade" not in seen and "connection" not in seen


async def test_an_upstream_that_declines_the_upgrade_is_answered_as_is(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    upstream = ScriptedUpstream([send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")])
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        raw = with_events(config)
        raw["upstreams"]["registry"]["url"] = f"http://127.0.0.1:{upstream.port}"
        gw = await start_gateway(raw)
        await gw.team("platform", ["read:apis"])
        token, _ = await gw.token("platform", ["read:apis"])
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await connect(gw, token)
        assert caught.value.status == 403
        [seen] = upstream.seen
        assert seen.header("Upgrade") == ["websocket"] and seen.header("Connection") == ["Upgrade"]
    finally:
        server.close()


async def test_stopping_the_gateway_closes_tunnels(ws_gateway: Gateway) -> None:
    token, _ = await ws_gateway.token("platform", ["read:apis"])
    ws = await connect(ws_gateway, token)
    await ws.receive_json(timeout=5)
    started = time.monotonic()
    await ws_gateway.server.stop()
    message = await ws.receive(timeout=5)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert time.monotonic() - started < 1.0  # not held until the drain timeout


async def test_the_101_head_follows_the_response_header_rules(
    start_gateway: Callable[..., Awaitable[Gateway]], scripted: Callable[..., Awaitable[ScriptedUpstream]]
) -> None:
    """The upstream's 101 reaches the client by the rules of any response (its header lines
    as sent, minus hop-by-hop and Connection-named ones, our X-Request-Id), then one
    `Connection: Upgrade` and the upstream's `Upgrade`."""
    upstream = await scripted(
        send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
            b"X-Request-Id: theirs\r\nX-Kept: \xe9t\xe9\r\n\r\n"
        )
    )
    gw = await start_gateway(with_events(base_config(upstream.port)))
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    port = int(gw.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    status, *lines = head[:-4].split(b"\r\n")
    names = [line.split(b":", 1)[0].lower() for line in lines]
    assert status == b"HTTP/1.1 101 Switching Protocols"
    assert names.count(b"connection") == 1 and b"Connection: Upgrade" in lines and b"Upgrade: websocket" in lines
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in lines and b"X-Kept: \xe9t\xe9" in lines
    assert b"x-secret" not in names and b"keep-alive" not in names and b"content-length" not in names
    assert [line for line in lines if line.lower().startswith(b"x-request-id")] != [b"X-Request-Id: theirs"]
    assert names.count(b"x-request-id") == 1
