"""A lean HTTP/1.1 client for the upstreams: keep-alive pools of asyncio protocols, the
request head written as one buffer, the response parsed by llhttp (httptools).

It does what a reverse proxy needs and nothing else: no redirects, cookies, decompression,
proxies or retries of anything that may have reached the upstream. The one retry: a pooled
connection that the upstream closed while it was idle (no byte of a response came back)
is replaced by a new connection (never another pooled one, likely closed as well), for
requests without a body. Connections are retired before the upstream would close them:
`Connection: close` is honoured, `Keep-Alive: timeout=N` shortens a connection's idle life,
and a pool that has seen the upstream close idle connections gives requests that can't be
retried only connections younger than the shortest idle life it saw, and that carried fewer
exchanges than the fewest after which it saw the upstream close one right after a response.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

import httptools
from yarl import URL

from tokenward.gateway.outbox import Outbox
from tokenward.gateway.settings import Upstream
from tokenward.gateway.upstream_limit import IDLE_SECONDS, ConnectionLimit, keep_alive_limit
from tokenward.gateway.upstream_tls import connect_failure, tls_alert

BODY_REUSE_SECONDS = 1.0  # a request that can't be retried gets a fresh connection if the pooled one idled longer
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
HIGH_WATER = 256 * 1024  # response bytes buffered before reading from the upstream pauses
MAX_IDLE = 256  # pooled idle connections per upstream, at most
# A close this soon after a response is for the count of exchanges (nginx keepalive_requests),
# not idling; a busy loop may see it late, and one idle longer carries no body anyway.
CLOSED_AFTER_RESPONSE = BODY_REUSE_SECONDS


class _Desync(Exception):
    """Bytes from the upstream that belong to no response of this exchange."""


class UpstreamFailed(Exception):
    """The exchange with the upstream failed; `timeout` tells a 504 from a 502, `busy` a 503."""

    def __init__(self, message: str, *, timeout: bool = False, stale: bool = False, busy: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.stale = stale  # a pooled connection that was closed before any response byte
        self.busy = busy  # no connection came free within pool_timeout


class Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False  # between begin() and finish()
        self.idle_since = 0.0
        self.idle_limit = IDLE_SECONDS  # from the upstream's Keep-Alive: timeout=N, if it sent one
        self.exchanges = 0  # requests begun on this connection
        self.counted = False  # against the pool's max_connections, until closed
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = False
        self._deadline: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self.last_read = 0.0
        # After a 101: where the upstream's bytes go, and who hears of the end.
        self.relay: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_resume_writing: Callable[[], None] | None = None
        self._reset(False)

    def _reset(self, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive_header = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.upgraded = False
        self.tail = b""
        self.received_any = False
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.error: UpstreamFailed | None = None
        self.reusable = True  # cleared by anything that leaves the connection's state in doubt
        self.sending = False  # request bytes still to go (the deadline covers them too)

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's isn't a subclass

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay(data)
            return
        if not self.busy or self.complete:
            # Bytes nobody asked for (a 408 before an idle close, more after a complete
            # response): they could only be taken for the answer to a later request.
            self.reusable = False
            if not self.busy:
                self.close()
            return
        self.received_any = True
        self.last_read = self.loop.time()
        if self.upgraded:
            self.tail += data
            return
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.upgraded = True
            self.tail = data[offset:]
            self._wake()
        except httptools.HttpParserError as exc:
            self.reusable = False
            if self.complete:
                return  # the response is whole; what followed it just retires the connection
            self._fail(UpstreamFailed(f"invalid response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:  # (None: close the transport)
        if self.transport is not None:
            self.pool.outbox.release(self.transport)  # what is held goes before the close
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.closed and self.keep_alive and self.complete:
            # The upstream closed a connection it said it would keep: how long did it idle?
            idle_for = self.loop.time() - self.idle_since if not self.busy and self.idle_since else 0.0
            self.pool.closed_while_idle(idle_for, self.exchanges)
        self.closed = True
        self.pool.forget(self)
        self.close_deadline()
        if self.headers_done and not self.complete and exc is None and self._until_eof():
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete and self.error is None:  # a TLS alert too (TLS 1.3: after the handshake)
            tls = tls_alert(exc)
            self._fail(UpstreamFailed(tls or "upstream closed the connection", stale=not tls and not self.received_any))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self.on_lost is not None:
            self.on_lost()

    @property
    def paused_writing(self) -> bool:
        return self._paused_writing

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self.on_resume_writing is not None:
            self.on_resume_writing()

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.headers_done or self.complete:
            raise _Desync("a second response for one request")  # -> HttpParserCallbackError

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) == 10 and name.lower() == b"keep-alive":
            self.keep_alive_header = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers.clear()  # an interim response (100, 102, 103, 104, ...): the real one follows
            self.reason = b""
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        if self.keep_alive_header:
            self.idle_limit = keep_alive_limit(self.headers)
            self.keep_alive = self.keep_alive and self.idle_limit > 0
        else:
            self.idle_limit = IDLE_SECONDS
        self.headers_done = True
        if self.head_only:
            # llhttp would wait for the body that Content-Length announces; a HEAD has none.
            self.complete = True
            self._parser = None  # the next exchange starts with a fresh parser
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body after a HEAD's headers: not what HTTP allows
            self.reusable = False
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of an interim (1xx) response
        self.complete = True
        self._wake()

    # -- the exchange ----------------------------------------------------------------------------
    def begin(self, head_only: bool, timeout: float) -> None:
        self._reset(head_only)
        self.busy = True
        self.exchanges += 1
        self._timeout = timeout
        self.last_read = now = self.loop.time()
        # One timer per connection, not per exchange: one left by an earlier exchange checks
        # this one when it fires (and sets itself again), unless it would be late.
        if self._deadline is None or self._deadline.when() > now + timeout:
            self.close_deadline()
            self._deadline = self.loop.call_at(now + timeout, self._check_deadline)

    def _check_deadline(self) -> None:
        """The upstream's silence (no byte read, no request byte accepted) may not exceed
        the timeout; time when *we* are not reading (backpressure) does not count."""
        self._deadline = None
        if not self.busy or (self.complete and not self.sending) or self.closed:
            return  # between exchanges (the next one sets a timer), or done
        now = self.loop.time()
        if self._paused_reading:
            self.last_read = now
        due = self.last_read + self._timeout
        if now >= due:
            self._fail(UpstreamFailed("upstream timed out", timeout=True))
            self.close()
        else:
            self._deadline = self.loop.call_at(due, self._check_deadline)

    def _until_eof(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        framed = self.head_only or self.status in (204, 304) or b"content-length" in names
        return not framed and b"transfer-encoding" not in names

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamFailed) -> None:
        self.error = self.error or error
        self._wake()

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    @property
    def answered(self) -> bool:
        """The upstream's final response has begun (maybe before all of the request went)."""
        return self.headers_done or self.upgraded

    def write(self, data: bytes) -> None:
        if self.answered:
            self.reusable = False  # it answered early: the rest of the body is not sent
            return
        if self.closed or self.transport is None:
            raise self.error or UpstreamFailed("upstream closed the connection", stale=not self.received_any)
        self.pool.outbox.write(self.transport, data)  # with the turn's others (gateway/outbox.py)
        self.last_read = self.loop.time()  # accepted bytes are progress too

    async def drain(self) -> None:
        if self.transport is not None:
            self.pool.outbox.release(self.transport)  # into the transport, where backpressure sees it
        while self._paused_writing and not self.closed and not self.answered and self.error is None:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None
            self.last_read = self.loop.time()
        if self.error is not None and not self.answered:
            raise self.error

    async def response_head(self) -> None:
        """Until the status line and headers are in (or the exchange failed)."""
        while not self.headers_done and not self.upgraded:
            if self.error is not None:
                raise self.error
            await self._wait()

    def take_body(self) -> bytes:
        """Everything buffered so far."""
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        self.buffered = 0
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.last_read = self.loop.time()
            self.transport.resume_reading()
        return data

    async def next_chunk(self) -> bytes:
        """The next piece of the body; b"" once the body is complete."""
        while not self.body:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.take_body()

    def finish(self) -> None:
        """Back to the pool if the exchange ended cleanly and the connection may be reused."""
        self.busy = False  # (the deadline timer stays: see begin)
        clean = self.complete and self.keep_alive and self.reusable and not self.sending
        if clean and not self.closed and not self.upgraded and self.error is None and not self._paused_reading and not self.body:
            self.pool.release(self)
        else:
            self.close()

    def close_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def close(self) -> None:
        self.close_deadline()
        if self.transport is not None and not self.closed:
            self.pool.outbox.release(self.transport)
            self.transport.close()
        self.closed = True
        self.pool.forget(self)


class Pool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop, outbox: Outbox) -> None:
        url = URL(upstream.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"unsupported upstream URL {upstream.url!r}")
        self.loop = loop
        self.outbox = outbox  # request bytes are written at the end of the loop's turn
        self.name = upstream.name
        self.url = upstream.url
        self.host = url.raw_host or url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = (upstream.ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self.server_name = upstream.tls.server_name or self.host  # SNI and the name verified
        self.limit = ConnectionLimit(upstream.max_connections, upstream.pool_timeout)
        self.retired = False  # closed, or replaced by a reload: connections are no longer pooled
        default_port = url.port is None or url.is_default_port()
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.base_path = url.raw_path.rstrip("/")
        self.idle: list[Connection] = []
        # How long a connection may have idled and still carry a request that can't be
        # retried: lowered to half the shortest idle life the upstream allowed, raised again
        # by retryable requests that found an older pooled connection alive.
        self.body_reuse = BODY_REUSE_SECONDS
        # The fewest exchanges after which the upstream closed a connection right after its
        # response: a request that can't be retried gets only connections that carried fewer.
        self.max_exchanges = 1 << 62

    def target(self, path: str, query: str) -> str:
        """The request target on this upstream: its base path, then the authorized path."""
        return self.base_path + path + (f"?{query}" if query else "")

    async def acquire(self, connect_timeout: float, replayable: bool, pooled: bool = True) -> tuple[Connection, bool]:
        """A connection (`pooled=False`: a new one), waiting up to pool_timeout for one under max_connections, and
        whether it came from the pool. A request that may not be sent twice gets only a recently used one."""
        deadline: float | None = None
        while True:
            now = self.loop.time()
            while pooled and self.idle:
                conn = self.idle.pop()
                idle_for = now - conn.idle_since
                if conn.closed or idle_for > conn.idle_limit:
                    conn.close()  # closed, or the upstream is about to close it
                    continue
                if not replayable and (idle_for > self.body_reuse or conn.exchanges >= self.max_exchanges):
                    conn.close()  # it can't be retried if this connection turns out to be stale
                    continue
                return conn, True
            if self.idle and self.limit.open >= self.limit.maximum:
                self.idle[0].close()  # a new one is wanted: the least recently used makes room
            if self.limit.take():
                return await self.connect(connect_timeout), False
            front, deadline = deadline is not None, deadline or now + self.limit.timeout
            if not await self.limit.wait(deadline, front):
                raise UpstreamFailed(self.limit.busy(self.name), busy=True)

    def closed_while_idle(self, idle_for: float, exchanges: int = 0) -> None:
        """The upstream closed a pooled connection that had idled `idle_for` seconds after
        carrying `exchanges` exchanges."""
        self.body_reuse = min(self.body_reuse, idle_for / 2)
        if exchanges > 0 and idle_for < CLOSED_AFTER_RESPONSE:
            self.max_exchanges = min(self.max_exchanges, exchanges)

    def alive_after(self, idle_for: float, exchanges: int = 0) -> None:
        """A pooled connection that had idled `idle_for` seconds carried an exchange, its
        `exchanges`-th (a count learned from a one-off close, say a restart, grows back)."""
        if idle_for > self.body_reuse:
            self.body_reuse = min(idle_for, BODY_REUSE_SECONDS)
        if exchanges > self.max_exchanges:
            self.max_exchanges = exchanges

    async def connect(self, timeout: float) -> Connection:
        protocol: Connection | None = None  # on a place under max_connections the caller took
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_name if self.ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamFailed(f"upstream {self.name} did not accept the connection in time", timeout=True) from None
        except OSError as exc:  # ssl.SSLError among them
            raise UpstreamFailed(connect_failure(self.name, exc, self.ssl is not None)) from None
        finally:
            if protocol is None or protocol.closed:
                self.limit.give_back()  # not made, or lost before it was handed over
        protocol.counted = not protocol.closed
        return protocol

    def release(self, conn: Connection) -> None:
        if len(self.idle) >= MAX_IDLE or self.retired:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self.limit.waiters:  # a request waiting for a connection takes it
            self.limit.wake()

    def forget(self, conn: Connection) -> None:
        if conn.counted:
            conn.counted = False
            self.limit.give_back()
        if conn.closed and conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        self.retired = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


def request_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def decode_header(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
