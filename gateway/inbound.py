"""One inbound request as the gateway listener (gateway/listener.py) parsed it: the head as
sent (the raw target, every header in order) and its body as a stream. This is what the
pipeline's steps read, in place of aiohttp's request objects: built once per request from
what llhttp reported, with nothing derived that no step reads.

Also the checks on a head that llhttp leaves to its user (`read_headers`,
`check_target_form`): what aiohttp's parser checked on top of llhttp, kept.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from tokenward.gateway.refusal import Refusal, Step


class Connection(Protocol):
    """What a request needs of the connection it came on (the listener's protocol)."""

    def writable(self) -> asyncio.Transport | None: ...  # held bytes written first (gateway/outbox.py)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def drain(self) -> None: ...

    def set_relay(self, relay: Callable[[bytes], None], on_eof: Callable[[], None]) -> None: ...

    @property
    def empty_body(self) -> Body: ...  # an ended body, shared by the connection's bodiless requests


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
        self.content = Body(protocol) if self.body_exists else protocol.empty_body

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's transport, to write to directly: what the connection holds (a
        pipelined request's response) is written first."""
        return self.protocol.writable()

    @property
    def host(self) -> str:
        """The Host header, else the address the request arrived on."""
        return self.headers.get("Host") or self.sockname


def header_map(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


# headers a request may carry once (a second copy is read differently by different servers)
_SINGLETONS = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)


class HeadRefused(Exception):
    """A request head refused while it was being parsed (too large, or malformed)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def malformed(message: str) -> HeadRefused:
    return HeadRefused(
        Refusal(400, "invalid_request", Step.FRAMING, f"malformed request: {message}", close=True)
    )


_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0), "0.9": (0, 9)}


def read_request(
    protocol: Connection,
    method: bytes,
    url: bytes,
    version_text: str,
    raw: tuple[tuple[bytes, bytes], ...],
    address: tuple[str | None, str],
    keep_alive: bool,
    upgrade: bool,
) -> Request:
    """The request llhttp parsed (`address`: the peer's and the listening socket's), once
    the checks llhttp leaves to us hold (raises HeadRefused)."""
    version = _VERSIONS.get(version_text, (0, 0))
    if version not in ((1, 1), (1, 0)):
        raise malformed(f"unsupported HTTP version {version_text}")
    pairs, length, chunked = read_headers(raw, version)
    if upgrade and (chunked or (length or 0) > 0):
        # llhttp hands over at the head of a request offering an upgrade: a body would never
        # reach the pipeline, while the upstream would be told one follows
        raise malformed("a request offering a protocol upgrade carries no body")
    if chunked and version < (1, 1):
        keep_alive = False  # RFC 9112 6.1: faulty framing on HTTP/1.0; close after answering
    target = url.decode("utf-8", "surrogateescape")
    text = method.decode("ascii")
    check_target_form(text, target)
    return Request(
        protocol, text, target, version, raw, header_map(pairs), address[0], address[1], keep_alive,
        None if chunked else length, chunked, upgrade,
    )  # fmt: skip


def read_headers(
    raw: tuple[tuple[bytes, bytes], ...], version: tuple[int, int]
) -> tuple[list[tuple[str, str]], int | None, bool]:
    """The decoded headers, the Content-Length and whether the body is chunked; raises
    HeadRefused for a second copy of a singleton header, a Transfer-Encoding other than
    `chunked`, an old WebSocket handshake, or no Host on HTTP/1.1."""
    pairs = []
    seen: set[bytes] = set()
    length: int | None = None
    chunked = False
    for name, value in raw:
        lower = name.lower()
        if lower in _SINGLETONS:
            if lower in seen:
                raise malformed(f"duplicate {name.decode('latin-1')} header")
            seen.add(lower)
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                if value.strip().lower() != b"chunked":  # anything else: two readings of the body
                    raise malformed("unsupported Transfer-Encoding")
                chunked = True
        elif lower == b"sec-websocket-key1":
            raise malformed("old WebSocket handshake")
        pairs.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))
    if version == (1, 1) and b"host" not in seen:
        raise malformed("missing Host header")
    return pairs, length, chunked


def check_target_form(method: str, target: str) -> None:
    """The request target's form (RFC 9112 3.2): origin-form, absolute-form with an
    authority, `*` for OPTIONS only, authority-form for CONNECT only."""
    if target.startswith("/"):
        if method == "CONNECT":
            raise malformed("CONNECT takes an authority-form target")
        return
    if target == "*" and method == "OPTIONS":
        return
    if method == "CONNECT":
        if target and "/" not in target and "@" not in target:
            return
        raise malformed("bad CONNECT target")
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https") and rest and not rest.startswith(("/", "?", "#")):
        return
    raise malformed("invalid request target")
