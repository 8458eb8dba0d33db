"""One inbound request as the gateway listener (gateway/listener.py) parsed it: the head as
sent (the raw target, every header in order) and its body as a stream. This is what the
pipeline's steps read, in place of aiohttp's request objects: built once per request from
what llhttp reported, with nothing derived that no step reads.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy


class Connection(Protocol):
    """What a request needs of the connection it came on (the listener's protocol)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def drain(self) -> None: ...

    def set_relay(self, relay: Callable[[bytes], None], on_eof: Callable[[], None]) -> None: ...


class Body:
    """The request body as it arrives: chunks queued by the parser, read by the forward step
    (`readany`), with backpressure: above `HIGH_WATER` bytes queued the connection stops
    reading until the reader catches up."""

    HIGH_WATER = 256 * 1024

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof",
        "_error",
        "_paused",
        "_queued",
        "_waiter",
        "discard",
        "total_bytes",
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._paused = False  # this body stopped the connection's reading
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.total_bytes = 0  # received so far
        self.discard = False  # the response is out: what still comes is read and dropped

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        if self.discard:
            return
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued > self.HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The connection broke before the body's end: a waiting reader gets `error`."""
        if not self._eof:
            self._error = error
            self._wake()

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def readany(self) -> bytes:
        """Everything queued (at least one chunk), or b"" at the end of the body."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._queued = 0
        if self._paused and self._queued <= self.HIGH_WATER:
            self._paused = False
            self._conn.resume_reading()
        return chunk

    def drop(self) -> None:
        """Nobody will read the rest: drop what is queued and whatever still comes."""
        if self._paused:
            self._paused = False
            self._conn.resume_reading()
        self.discard = True
        self._chunks.clear()
        self._queued = 0


class Request:
    """One request's head, as sent, and its body. `headers` decodes names and values as
    UTF-8 (undecodable bytes kept as surrogates, as aiohttp did); `raw_headers` are the
    bytes; `raw_path` is the request target exactly as it came."""

    __slots__ = (
        "body_exists",
        "chunked",
        "content",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "protocol",
        "raw_headers",
        "raw_path",
        "remote",
        "sockname",
        "upgrade",
        "version",
    )

    scheme = "http"  # the listener speaks plain HTTP; TLS ends in front of it

    def __init__(
        self,
        protocol: Connection,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        raw_headers: tuple[tuple[bytes, bytes], ...],
        headers: CIMultiDictProxy[str],
        remote: str | None,
        sockname: str,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        upgrade: bool,
    ) -> None:
        self.protocol = protocol
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.headers = headers
        self.remote = remote
        self.sockname = sockname
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade  # a WebSocket upgrade the parser stopped at
        self.body_exists = chunked or (content_length or 0) > 0
        self.content = Body(protocol)
        if not self.body_exists:
            self.content.feed_eof()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.protocol.transport

    @property
    def host(self) -> str:
        """The Host header, else the address the request arrived on."""
        return self.headers.get("Host") or self.sockname


def header_map(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))
