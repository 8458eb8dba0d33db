"""Replies held to the end of the loop's turn (gateway/outbox.py): the bytes of one
connection keep their order whatever writes them, and one connection's failure is its own."""

from __future__ import annotations

import asyncio

import orjson

from tests.helpers.gateway import APIS
from tests.helpers.rawhttp import Env, raw, request
from tokenward.gateway.outbox import Outbox


class FakeTransport:
    """What the outbox uses of a transport, recording the bytes written."""

    def __init__(self, fail: bool = False) -> None:
        self.out: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.fail = fail

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("Cannot call write() after write_eof()")
        self.out.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def abort(self) -> None:
        self.aborted = self.closing = True


async def test_writes_wait_for_the_turns_end_in_order_and_release_sends_at_once() -> None:
    outbox = Outbox(asyncio.get_running_loop())
    a, b = FakeTransport(), FakeTransport()
    outbox.write(a, b"1")  # type: ignore[arg-type]
    outbox.write(b, b"x")  # type: ignore[arg-type]
    outbox.write(a, b"2")  # type: ignore[arg-type]
    assert a.out == [] and b.out == []
    outbox.release(b)  # type: ignore[arg-type]  # someone writes to b directly next
    assert b.out == [b"x"] and a.out == []
    await asyncio.sleep(0)
    assert a.out == [b"1", b"2"] and b.out == [b"x"]
    outbox.write(a, b"3")  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert a.out == [b"1", b"2", b"3"]


async def test_a_closed_or_failing_transport_costs_the_others_nothing() -> None:
    outbox = Outbox(asyncio.get_running_loop())
    gone, broken, fine = FakeTransport(), FakeTransport(fail=True), FakeTransport()
    for transport in (gone, broken, fine):
        outbox.write(transport, b"reply")  # type: ignore[arg-type]
    gone.closing = True  # the client left before the turn ended
    await asyncio.sleep(0)
    assert gone.out == [] and not gone.aborted
    assert broken.aborted  # its fault ends it ...
    assert fine.out == [b"reply"]  # ... and the others are written all the same


async def read_until(reader: asyncio.StreamReader, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, data
        data += chunk
    return data


async def test_a_pipelined_100_continue_comes_after_the_held_reply(env: Env) -> None:
    """Request 2's 100 Continue is written directly, in the turn request 1's reply is held:
    the reply goes first."""
    first = f"GET /api HTTP/1.1\r\nHost: {env.host}\r\n\r\n".encode()
    second = (
        f"POST {APIS} HTTP/1.1\r\nHost: {env.host}\r\n"
        f"Authorization: Bearer {env.token}\r\nContent-Type: application/json\r\n"
        "Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    ).encode()
    status, _, _ = await raw(env.gw.server.proxy_port, request(APIS, env.host, env.token))
    assert status == 200  # the token is in the cache now: request 2 is decided without a wait
    reader, writer = await asyncio.open_connection("127.0.0.1", env.gw.server.proxy_port)
    try:
        writer.write(first + second)
        data = await read_until(reader, b"100 Continue")
        assert data.startswith(b"HTTP/1.1 200 ")  # request 1's whole reply came first
        assert data.index(b"HTTP/1.1 100 Continue") > data.index(b"\r\n\r\n")
        writer.write(b"{}")
        data = await read_until(reader, b"HTTP/1.1 200 ", data.partition(b"100 Continue\r\n\r\n")[2])
    finally:
        writer.close()
    assert [seen["method"] for seen in env.rec.seen] == ["GET", "GET", "POST"]
    assert env.rec.seen[2]["body"] == b"{}"


async def test_many_connections_answered_in_one_turn_each_get_their_own(env: Env) -> None:
    """Requests of many connections decided in the same turns: each reply reaches its own
    client, whole (the recording upstream echoes the target it got)."""

    async def ask(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.gw.server.proxy_port)
        try:
            for turn in range(3):  # keep-alive: the next request after each held reply
                target = f"/orgs/acme/teams/platform/apis?n={n}&turn={turn}"
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: {env.host}\r\nAuthorization: Bearer {env.token}\r\n\r\n".encode()
                )
                head = await read_until(reader, b"\r\n\r\n")
                head, _, body = head.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                body += await asyncio.wait_for(reader.readexactly(length - len(body)), 5)
                assert orjson.loads(body)["raw_path"] == target
        finally:
            writer.close()

    await asyncio.gather(*(ask(n) for n in range(40)))
    assert len(env.rec.seen) == 120


async def test_a_reply_held_when_the_client_half_closes_still_reaches_it(env: Env) -> None:
    """The client sends its request and at once its end of stream: the gateway's own answer
    (held for the turn) goes out before the connection closes, as it did when written at once."""
    asks = {
        401: f"GET {APIS} HTTP/1.1\r\nHost: {env.host}\r\n\r\n",
        404: f"GET /nope HTTP/1.1\r\nHost: {env.host}\r\nAuthorization: Bearer {env.token}\r\n\r\n",
    }
    for status, ask in asks.items():
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", env.gw.server.proxy_port)
            try:
                writer.write(ask.encode())
                writer.write_eof()  # no delay: the end of stream arrives with the request
                data = await asyncio.wait_for(reader.read(-1), 5)
            finally:
                writer.close()
            assert data.startswith(b"HTTP/1.1 %d " % status), (status, data)
