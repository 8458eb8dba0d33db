"""What the gateway listener sends back: a `Reply` sent whole (one write: head and body), or
a `StreamReply` whose head goes first and whose body follows in pieces (chunked when its
length is unknown). Framing follows RFC 9112 as aiohttp's responses did: no body for HEAD,
1xx, 204 and 304; `Content-Length` from what is sent; `Connection` only where the version
needs it; a `Date` on every response.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from email.utils import formatdate
from http import HTTPStatus

from tokenward.gateway.inbound import Request
from tokenward.gateway.refusal import Refusal, error_headers

Headers = Mapping[str, str] | Iterable[tuple[str, str]]

_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_NO_BODY_STATUS = frozenset((204, 304, *range(100, 200)))
_NO_LENGTH_STATUS = _NO_BODY_STATUS  # Content-Length is dropped from these
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class Clock:
    """The `Date` header's value, formatted once a second (one per listener)."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


class Block:
    """Header lines already rendered (an upstream's, as it sent them: gateway/headers.py
    `ResponseHeaders`), and whether they carry a Date, a Content-Type and a Connection."""

    __slots__ = ("connection", "data", "date", "typed")

    def __init__(self, data: bytes, date: bool, typed: bool, connection: bool = False) -> None:
        self.data, self.date, self.typed, self.connection = data, date, typed, connection


def _pairs(headers: Headers | Block) -> list[tuple[str, str]] | Block:
    if isinstance(headers, Block):
        return headers
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


class Reply:
    """A response sent whole: status, headers and the body in one write."""

    __slots__ = ("body", "close", "headers", "reason", "status")

    prepared = False
    streamed = False

    def __init__(
        self,
        status: int,
        headers: Headers | Block = (),
        body: bytes = b"",
        reason: str | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = _pairs(headers)
        if content_type is not None:
            assert not isinstance(self.headers, Block)
            self.headers.append(("Content-Type", content_type))
        self.body = body
        self.close = False  # the connection closes after it

    @property
    def content_length(self) -> int:
        return len(self.body)

    def force_close(self) -> None:
        self.close = True

    def render(self, method: str, version: tuple[int, int], keep_alive: bool, clock: Clock) -> bytes:
        """Head and body, framed as the answer to a `method` request of HTTP `version`;
        `keep_alive`: the connection stays open after it."""
        status = self.status
        method_head = method == "HEAD"
        empty = status in _NO_BODY_STATUS or method_head
        body = self.body
        length: int | None = len(body)
        if status in _NO_LENGTH_STATUS or (method_head and not body) or (status == 304 and not body):
            length = None
        typed = not empty and len(body) > 0
        head = render_head(
            version, status, self.reason, self.headers, length, False, keep_alive, clock, typed
        )
        return head if empty else head + body


class StreamReply:
    """A response whose head goes first (`prepare`) and whose body follows (`write`,
    `write_eof`): with `content_length` set, exactly that many bytes; without, chunked
    (HTTP/1.1) or until the connection closes (HTTP/1.0)."""

    __slots__ = (
        "_chunked",
        "_conn",
        "close",
        "content_length",
        "eof",
        "headers",
        "prepared",
        "reason",
        "status",
    )

    streamed = True

    def __init__(self, status: int, headers: Headers | Block = (), reason: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = _pairs(headers)
        self.content_length: int | None = None
        self.close = False
        self.prepared = False
        self.eof = False
        self._chunked = False
        self._conn: Writer | None = None

    def force_close(self) -> None:
        self.close = True

    async def prepare(self, request: Request) -> None:
        """Send the head (once)."""
        if self.prepared:
            return
        conn = request.protocol
        assert isinstance(conn, Writer)
        self.prepared = True
        self._conn = conn
        method_head = request.method == "HEAD"
        status = self.status
        empty = status in _NO_BODY_STATUS or method_head
        length = self.content_length
        chunked = False
        keep_alive = conn.keep_alive_for(request, self)
        if empty:
            self.eof = status < 200 and status != 101  # an interim head has no body of its own
        elif length is None:
            if request.version >= (1, 1):
                chunked = True
            else:
                keep_alive = False  # the body ends when the connection does
        if keep_alive is False:
            self.close = True
        self._chunked = chunked
        typed = not empty and length != 0
        head = render_head(
            request.version, status, self.reason, self.headers, length, chunked, keep_alive, conn.clock, typed
        )
        conn.send(head)
        await conn.drain()

    async def write(self, data: bytes) -> None:
        conn = self._conn
        assert conn is not None
        if not data:
            return
        conn.send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        await conn.drain()

    async def write_eof(self) -> None:
        if self.eof:
            return
        self.eof = True
        conn = self._conn
        if conn is not None and self._chunked:
            conn.send(b"0\r\n\r\n")
            await conn.drain()


class Writer:
    """What a reply writes to: the listener's connection (gateway/listener.py)."""

    __slots__ = ()
    clock: Clock

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    def keep_alive_for(self, request: Request, reply: Reply | StreamReply) -> bool:
        raise NotImplementedError


def render_head(
    version: tuple[int, int],
    status: int,
    reason: str | None,
    headers: list[tuple[str, str]] | Block,
    length: int | None,
    chunked: bool,
    keep_alive: bool,
    clock: Clock,
    typed: bool,
) -> bytes:
    """The status line and headers; `typed`: a body may follow, so it gets a Content-Type
    (application/octet-stream unless `headers` name one)."""
    major, minor = version
    if reason and not reason.isprintable():  # an upstream's control bytes never reach the client
        reason = None
    out = [
        b"HTTP/%d.%d %d %b\r\n"
        % (major, minor, status, (reason or _PHRASES.get(status, "")).encode("utf-8", "surrogateescape"))
    ]
    if isinstance(headers, Block):
        has_date, has_type, has_connection = headers.date, headers.typed, headers.connection
        out.append(headers.data)
    else:
        has_date = has_type = has_connection = False
        lines = []
        for name, value in headers:
            lower = name.lower()
            if lower in _FRAMING:
                continue
            if lower == "date":
                has_date = True
            elif lower == "content-type":
                has_type = True
            elif lower == "connection":
                has_connection = True
            lines.append(f"{name}: {value}\r\n")
        out.append("".join(lines).encode("utf-8", "surrogateescape"))
    if length is not None:
        out.append(b"Content-Length: %d\r\n" % length)
    elif chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if typed and not has_type:
        out.append(b"Content-Type: application/octet-stream\r\n")
    if not has_connection:
        if keep_alive and minor == 0:
            out.append(b"Connection: keep-alive\r\n")
        elif not keep_alive and (major, minor) >= (1, 1):
            out.append(b"Connection: close\r\n")
    if not has_date:
        out.append(b"Date: %b\r\n" % clock.date())
    out.append(b"\r\n")
    return b"".join(out)


def error_reply(refusal: Refusal, request_id: str) -> Reply:
    """The gateway's JSON error (see `refusal.error_body`), closing the connection when the
    refusal says the client's body was not read."""
    reply = Reply(
        refusal.status,
        error_headers(refusal, request_id),
        refusal.render(request_id),
        content_type="application/json",
    )
    if refusal.close:
        reply.close = True
    return reply
