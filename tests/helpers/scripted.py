"""A scripted raw-TCP upstream for tests: each reply is the exact bytes it sends, so tests
can play misbehaving upstreams (stray bytes, early answers, bad framing)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Reply = Callable[["Seen", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Seen:
    """One request as the upstream received it."""

    connection: int
    head: list[str]
    body: bytes

    @property
    def target(self) -> str:
        return self.head[0].split(" ")[1]

    def header(self, name: str) -> list[str]:
        prefix = name.lower() + ":"
        return [line.split(":", 1)[1].strip() for line in self.head[1:] if line.lower().startswith(prefix)]


@dataclass
class ScriptedUpstream:
    """Answers request N with replies[min(N, len - 1)]."""

    replies: list[Reply]
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                head = raw.decode("latin-1").split("\r\n")[:-2]
                seen = Seen(number, head, b"")
                if seen.header("Content-Length"):
                    seen.body = await reader.readexactly(int(seen.header("Content-Length")[0]))
                elif seen.header("Transfer-Encoding") == ["chunked"]:
                    seen.body = await read_chunked(reader)
                self.seen.append(seen)
                reply = self.replies[min(len(self.seen) - 1, len(self.replies) - 1)]
                await reply(seen, writer)
                await writer.drain()
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]


def send(raw: bytes, close: bool = False) -> Reply:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        if close:
            await writer.drain()
            writer.close()

    return reply


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
