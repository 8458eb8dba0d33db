"""The gateway's connections: HTTP/1.1 parsed by llhttp (httptools), as uvicorn and the
upstream client (gateway/upstream.py) do, each request handed to the pipeline and its reply
(gateway/reply.py) written back; the listening socket is `app.Listener`.

Per connection: one parser, one handler task at a time (pipelined requests wait their turn,
with reading paused), a deadline for every request head (`limits.header_timeout`, from the
connection opening, the previous response, or the head's first byte, whichever is latest),
and after an early answer the rest of an unread body read and dropped for at most
`LINGER` seconds. A head the parser cannot read gets a JSON 400, 414 or 431 (audited) and
the connection closes. A WebSocket tunnel (gateway/tunnel.py) takes the connection's bytes
over after its 101 (`set_relay`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

import httptools
import structlog

from tokenward.gateway.inbound import Body, HeadRefused, Request, malformed, read_request
from tokenward.gateway.outbox import Outbox
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.reply import Clock, Reply, StreamReply, Writer, error_reply

if TYPE_CHECKING:
    from tokenward.gateway.pipeline import Pipeline
    from tokenward.gateway.runtime import Runtime

log = structlog.get_logger("tokenward")

LINGER = 2.0  # after an early answer, how long a client's unread body is read and dropped
# pipelined heads parsed ahead of their turn, at most: one read can hold thousands of tiny
# requests, each an object waiting in memory; beyond this the connection answers those and ends
MAX_PIPELINED = 64


class Host(Protocol):
    """What a connection needs of the listener that accepted it (`app.Listener`)."""

    runtime: Runtime
    pipeline: Pipeline
    clock: Clock
    loop: asyncio.AbstractEventLoop
    connections: set[GatewayConnection]
    closing: bool
    outbox: Outbox  # whole replies are written at the end of the loop's turn

    def new_request_id(self) -> str: ...


class GatewayConnection(asyncio.Protocol, Writer):
    """One client connection of the gateway listener."""

    __slots__ = (
        "answered",
        "began",
        "body_seen",
        "clock",
        "closing",
        "deadline",
        "drain_waiter",
        "empty_body",
        "header_bytes",
        "in_head",
        "linger",
        "listener",
        "loop",
        "max_header_bytes",
        "max_headers",
        "max_url",
        "outbox",
        "parser",
        "pauses",
        "peer",
        "queue",
        "raw_headers",
        "reading_paused",
        "refused",
        "relay",
        "relay_eof",
        "request",
        "sockname",
        "task",
        "timeout",
        "timer",
        "transport",
        "unread",
        "upgrade_tail",
        "url",
        "write_paused",
    )

    def __init__(self, listener: Host) -> None:
        self.listener = listener
        self.clock = listener.clock
        self.loop = listener.loop
        self.outbox = listener.outbox
        limits = listener.runtime.settings.limits
        self.timeout = limits.header_timeout
        self.max_url = limits.max_url_length + 1024  # above check_request's precise 414
        self.max_header_bytes = 2 * limits.max_header_bytes + 65536  # above its precise 431
        self.max_headers = limits.max_header_count + 16
        self.parser = httptools.HttpRequestParser(self)
        self.empty_body = Body(self)  # every bodiless request's (nothing in it ever changes)
        self.empty_body.feed_eof()
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.sockname = ""
        # the head being parsed
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        # bytes fed since the current head began (not counting the read it began in), or since
        # a body last gave a byte: llhttp holds a header or trailer line whole until it ends
        self.unread = 0
        self.began = False  # a head began in the read being parsed
        self.body_seen = 0  # body bytes handed on, ever
        self.in_head = False  # between a message's first byte and its complete head
        self.request: Request | None = None  # the request whose body is being parsed
        self.queue: deque[Request] = deque()  # complete heads waiting for the handler
        self.task: asyncio.Task[None] | None = None
        self.relay: Callable[[bytes], None] | None = None  # a tunnel's: bytes go there
        self.relay_eof: Callable[[], None] | None = None
        self.upgrade_tail = b""  # bytes after a WebSocket upgrade head
        self.refused: HeadRefused | None = None  # a head the parser refused, answered after the current reply
        self.answered = False  # the refusal went to the handler reading the body
        self.closing = False
        self.reading_paused = False
        self.pauses = 0  # reasons reading is paused: a full body buffer, queued heads
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.linger: asyncio.Future[None] | None = None

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else None
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            self.sockname = f"[{sockname[0]}]" if len(sockname) == 4 else str(sockname[0])
        self.listener.connections.add(self)
        self.deadline = self.loop.time() + self.timeout
        self.timer = self.loop.call_at(self.deadline, self.head_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closing = True
        self.transport = None
        self.listener.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lost = ConnectionResetError("the client closed the connection")
        if self.request is not None:
            self.request.content.fail(lost)
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(lost)
        if self.linger is not None and not self.linger.done():
            self.linger.set_result(None)
        if self.relay_eof is not None:
            self.relay_eof()
        self.relay = self.relay_eof = None

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay(data)
            return
        if self.closing or self.refused is not None:
            return
        if not self.in_head and self.request is None and self.task is None:
            # the first byte of the next head: it has header_timeout from now
            self.deadline = self.loop.time() + self.timeout
        self.feed(data)

    def feed(self, data: bytes) -> None:
        self.began = False
        in_body = self.request is not None and not self.in_head
        seen = self.body_seen
        try:
            self.parser.feed_data(data)
            # A line llhttp still holds grows with every read: bound it as aiohttp did.
            if self.in_head and not self.began:
                self.unread += len(data)
            elif in_body and self.request is not None and self.body_seen == seen:
                self.unread += len(data)  # chunk extensions or trailers, no body byte
            else:
                self.unread = 0
            if self.unread > self.max_header_bytes:
                raise HeadRefused(
                    Refusal(431, "headers_too_large", Step.LIMITS, "request header too large", close=True)
                )
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self.upgrade_tail = data[offset:]
            self.pause_reading()  # the tunnel, or the close after the reply, takes it from here
        except HeadRefused as refused:
            self.refuse(refused)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self.refuse(cause if isinstance(cause, HeadRefused) else malformed(str(exc) or "unreadable"))
        except httptools.HttpParserError as exc:
            self.refuse(malformed(str(exc).rstrip(".") or "unreadable"))

    def eof_received(self) -> bool | None:
        self.writable()  # a reply held for this turn goes out before the transport closes
        if self.relay_eof is not None:
            self.relay_eof()
            self.relay = self.relay_eof = None
            return None
        if self.request is not None:
            self.request.content.fail(ConnectionResetError("the client ended the request early"))
        # The client's end of stream: at this point a half-close and a client that has gone
        # look the same, and the one that has gone is the common case; like aiohttp, close.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.began = True
        self.unread = 0
        if len(self.queue) >= MAX_PIPELINED:
            raise HeadRefused(
                Refusal(400, "invalid_request", Step.FRAMING, "too many pipelined requests", close=True)
            )
        self.in_head = True
        self.url = b""
        self.raw_headers = []
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_url:
            raise HeadRefused(
                Refusal(414, "uri_too_long", Step.LIMITS, "request target too long", close=True)
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer after a chunked body: never forwarded
        value = value.rstrip(b" \t")
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.max_header_bytes:
            raise HeadRefused(
                Refusal(431, "headers_too_large", Step.LIMITS, "request header too large", close=True)
            )
        if b"\x00" in value:
            raise malformed("invalid header value")
        self.raw_headers.append((name, value))
        if len(self.raw_headers) > self.max_headers:
            raise HeadRefused(
                Refusal(431, "headers_too_large", Step.LIMITS, "too many request headers", close=True)
            )

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        request = read_request(
            self,
            parser.get_method(),
            self.url,
            parser.get_http_version(),
            tuple(self.raw_headers),
            (self.peer, self.sockname),
            parser.should_keep_alive(),
            parser.should_upgrade(),
        )
        self.request = request
        if self.task is None:
            self.task = self.loop.create_task(self.serve(request))
        else:  # pipelined: after the current one; read no further meanwhile
            self.queue.append(request)
            if len(self.queue) == 1:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        self.body_seen += len(body)
        request = self.request
        if request is not None:
            request.content.feed(body)

    def on_message_complete(self) -> None:
        request, self.request = self.request, None
        if request is not None:
            request.content.feed_eof()
        if self.linger is not None and not self.linger.done():
            self.linger.set_result(None)

    # -- serving -------------------------------------------------------------------------------

    async def serve(self, request: Request) -> None:
        """Handle `request`, then each pipelined one after it, in order."""
        handle = self.listener.pipeline.handle
        try:
            while True:
                reply = await handle(request)
                if not await self.finish(request, reply):
                    self.close(linger=self.relay is None)
                    return
                if not self.queue:
                    break
                request = self.queue.popleft()
                if not self.queue:
                    self.resume_reading()
        except Exception:  # a reply that could not be written: never a hung connection
            log.exception("gateway connection failed")
            self.close()
            return
        finally:
            self.task = None
        if self.refused is not None:
            if not self.answered:
                self.answer_refused()
            self.close(linger=True)
            return
        # the response is done: the next head has header_timeout from now
        self.deadline = self.loop.time() + self.timeout

    async def finish(self, request: Request, reply: Reply | StreamReply) -> bool:
        """Send what is left of `reply`; True when the connection serves the next request."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if type(reply) is Reply:
            keep_alive = self.keep_alive_for(request, reply)
            data = reply.render(request.method, request.version, keep_alive, self.clock)
            self.outbox.write(transport, data)  # with the turn's other replies (gateway/outbox.py)
        else:
            assert isinstance(reply, StreamReply)
            if not reply.prepared:
                try:
                    await reply.prepare(request)
                    await reply.write_eof()
                except ConnectionError:
                    return False
            keep_alive = not reply.close and reply.eof and self.keep_alive_for(request, reply)
        if not keep_alive or self.relay is not None:
            return False
        body = request.content
        if not body.at_eof and self.request is request:
            # answered before the body's end: read the rest and drop it, briefly
            body.drop()
            self.linger = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self.linger), LINGER)
            except TimeoutError:
                return False
            finally:
                self.linger = None
            return self.transport is not None and self.refused is None
        body.drop()
        return True

    def keep_alive_for(self, request: Request, reply: Reply | StreamReply) -> bool:
        return (
            request.keep_alive
            and not reply.close
            and not self.closing
            and not self.listener.closing
            and not request.upgrade
        )  # a refused head after this one is answered (then the end) once the queue is done

    def send(self, data: bytes) -> None:
        transport = self.writable()
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    def writable(self) -> asyncio.Transport | None:
        """The transport, to write to or end directly: what the outbox holds for it goes first."""
        if self.transport is not None:
            self.outbox.release(self.transport)
        return self.transport

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        if not self.write_paused:
            return
        waiter = self.drain_waiter
        if waiter is None:
            waiter = self.drain_waiter = self.loop.create_future()
        await asyncio.shield(waiter)

    def set_relay(self, relay: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        """A tunnel takes over: every byte from now (and those already after the upgrade
        head) goes to `relay`; the client's end of stream to `on_eof`."""
        self.relay, self.relay_eof = relay, on_eof
        tail, self.upgrade_tail = self.upgrade_tail, b""
        self.resume_reading()
        if tail:
            relay(tail)

    def pause_reading(self) -> None:
        self.pauses += 1
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.pauses = max(0, self.pauses - 1)
        if self.pauses == 0 and self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self, linger: bool = False) -> None:
        """Close the connection; `linger`: an answer went out, so first stop sending and read
        and drop what the client still sends (for at most LINGER seconds): closing with its
        bytes still arriving would reset the connection before it read the answer."""
        self.closing = True
        transport = self.writable()
        if transport is None or transport.is_closing():
            return
        if not linger or not transport.can_write_eof():
            transport.close()
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        transport.write_eof()
        if self.timer is not None:
            self.timer.cancel()  # no head is awaited any more; this timer ends the linger
        self.timer = self.loop.call_later(LINGER, transport.close)

    # -- refused heads and the head deadline ---------------------------------------------------

    def refuse(self, refused: HeadRefused) -> None:
        """The parser refused a head: answered (after the current reply, if any), then closed."""
        self.refused = refused  # from now on what arrives is read and dropped
        request = self.request
        if request is not None and self.task is not None:
            # a body that breaks the framing: its reader gets the refusal, and the handler
            # answers it (if it has not answered yet); then the connection closes
            self.answered = True
            request.content.fail(refused.refusal)
            if self.linger is not None and not self.linger.done():
                self.linger.set_result(None)
        elif self.task is None:
            self.answer_refused()

    def answer_refused(self) -> None:
        refused = self.refused
        assert refused is not None
        listener = self.listener
        request_id = listener.new_request_id()
        denied = refused.refusal
        listener.runtime.audit.emit(
            "request.denied",
            method=None,
            path=None,
            route=None,
            status=denied.status,
            step=denied.step,
            reason=denied.message,
            client_ip=self.peer,
            request_id=request_id,
            duration_ms=0.0,
        )
        transport = self.writable()
        if transport is None or transport.is_closing():
            return
        transport.write(error_reply(denied, request_id).render("GET", (1, 1), False, self.clock))
        self.close(linger=True)

    def head_deadline(self) -> None:
        self.timer = None
        if self.transport is None or self.closing:
            return
        now = self.loop.time()
        if self.task is not None or self.relay is not None or (self.request is not None and not self.in_head):
            self.timer = self.loop.call_at(now + self.timeout, self.head_deadline)  # busy: look again later
            return
        if now < self.deadline:  # moved on meanwhile
            self.timer = self.loop.call_at(self.deadline, self.head_deadline)
            return
        self.close()  # no complete request head in time
